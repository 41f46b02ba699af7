"""BIDS input queries (pybids), derivative names, sidecars and ``dataset_description.json``.

The input dataset is read-only: pybids indexes it in memory and nothing is written under it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from bidsreface import __codeurl__, __version__
from bidsreface.config import Settings
from bidsreface.deid import is_identifying
from bidsreface.errors import UsageError

#: BIDS version of the derivatives written by bidsreface.
BIDS_VERSION = "1.9.0"

#: Order of entities in file names (BIDS entity table, the subset that anatomical images use).
ENTITY_ORDER = (
    "sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "mod", "echo", "flip", "inv", "mt",
    "part", "proc", "chunk", "space", "desc",
)  # fmt: skip

#: Folders of a raw dataset that never hold images to de-identify.
_IGNORE = (
    re.compile(r"^/(code|models|sourcedata|stimuli|derivatives|phenotype)(/|$)"),
    re.compile(
        r"^/sub-[^/]+/(ses-[^/]+/)?"
        r"(func|dwi|fmap|perf|meg|eeg|ieeg|beh|pet|micr|nirs|motion|mrs)(/|$)"
    ),
)

_NIFTI_EXTENSIONS = (".nii.gz", ".nii")

#: Anatomical suffixes of BIDS 1.9 (non-parametric, parametric and file collections): what
#: is de-identified when ``--suffixes`` is not given.
ANAT_SUFFIXES = (
    "T1w", "T2w", "PDw", "T2starw", "FLAIR", "inplaneT1", "inplaneT2", "PDT2", "angio",
    "T2star", "FLASH", "PD",
    "T1map", "R1map", "T2map", "R2map", "T2starmap", "R2starmap", "PDmap", "MTRmap", "MTsat",
    "UNIT1", "T1rho", "MWFmap", "MTVmap", "Chimap", "S0map", "M0map",
    "MP2RAGE", "MPM", "MTS", "MTR", "VFA", "IRT1", "MESE", "MEGRE",
)  # fmt: skip

#: Participants named in a warning line before it ends with "...".
_LISTED = 10


def _split_name(name: str) -> tuple[dict[str, str], str, str]:
    """Split a BIDS file name into its raw entities, suffix and extension.

    >>> _split_name("sub-01_ses-1_acq-mp2_run-02_T1w.nii.gz")
    ({'sub': '01', 'ses': '1', 'acq': 'mp2', 'run': '02'}, 'T1w', '.nii.gz')
    """
    stem, ext = name, ""
    for candidate in (*_NIFTI_EXTENSIONS, ".json"):
        if name.endswith(candidate):
            stem, ext = name[: -len(candidate)], candidate
            break
    *pairs, suffix = stem.split("_")
    entities = {}
    for pair in pairs:
        key, _, value = pair.partition("-")
        entities[key] = value
    return entities, suffix, ext


@dataclass(frozen=True)
class AnatImage:
    """One raw anatomical image selected for de-identification.

    ``entities`` holds the raw key-value pairs of the file name (``sub``, ``ses``, ``acq``,
    ``run``...), values exactly as written (``run-02`` stays ``"02"``).

    >>> img = AnatImage.from_path("/data/sub-01/ses-1/anat/sub-01_ses-1_run-02_T1w.nii.gz")
    >>> img.subject, img.session, img.suffix, img.entities["run"]
    ('01', '1', 'T1w', '02')
    >>> img.relpath
    'sub-01/ses-1/anat/sub-01_ses-1_run-02_T1w.nii.gz'
    """

    path: Path
    subject: str
    session: str | None
    suffix: str
    entities: dict = field(hash=False)
    sidecar: Path | None = None
    bids_dir: Path | None = None

    @classmethod
    def from_path(cls, path: str | Path, bids_dir: str | Path | None = None) -> AnatImage:
        """Describe the image at ``path`` from its file name (sidecar: same stem ``.json``)."""
        path = Path(path)
        entities, suffix, ext = _split_name(path.name)
        sidecar = path.with_name(path.name[: -len(ext)] + ".json") if ext else None
        return cls(
            path=path,
            subject=entities.get("sub", ""),
            session=entities.get("ses"),
            suffix=suffix,
            entities=entities,
            sidecar=sidecar if sidecar is not None and sidecar.is_file() else None,
            bids_dir=Path(bids_dir) if bids_dir is not None else None,
        )

    @property
    def relpath(self) -> str:
        """Path relative to the dataset root, with ``/`` separators."""
        if self.bids_dir is not None:
            return self.path.relative_to(self.bids_dir).as_posix()
        parts = [f"sub-{self.subject}"]
        if self.session:
            parts.append(f"ses-{self.session}")
        return "/".join([*parts, "anat", self.path.name])


def _layout(settings: Settings):
    """Index ``settings.bids_dir`` in memory with pybids; one-line :class:`UsageError`."""
    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    bids_dir = Path(settings.bids_dir)
    if not bids_dir.is_dir():
        raise UsageError(f"{bids_dir} is not a directory")
    description = bids_dir / "dataset_description.json"
    if not description.is_symlink() and not description.exists():
        raise UsageError(
            f"{bids_dir} is not a BIDS dataset: dataset_description.json is missing"
        )
    from bidsreface.content import content_problem

    problem = content_problem(description, bids_dir)
    if problem:
        raise UsageError(f"{description}: {problem}")
    ignore = list(_IGNORE)
    for extra in (settings.output_dir, settings.work_dir):
        extra = Path(extra)
        if extra != bids_dir and bids_dir in extra.parents:
            ignore.append(re.compile("^/" + re.escape(extra.relative_to(bids_dir).as_posix())))
    validate = not settings.skip_bids_validation
    indexer = BIDSLayoutIndexer(validate=validate, ignore=ignore, index_metadata=False)
    try:
        return BIDSLayout(
            str(bids_dir), validate=validate, indexer=indexer, database_path=None
        )
    except Exception as err:  # pybids raises many types; all mean "cannot index"
        problem = str(err).strip().splitlines()[0].strip() if str(err).strip() else repr(err)
        raise UsageError(f"{bids_dir} cannot be read as a BIDS dataset: {problem}") from err


def _query_filters(filters: dict) -> dict:
    """Turn JSON filter values into pybids queries (``null`` -> none, ``"*"`` -> any)."""
    from bids.layout import Query

    converted = {}
    for key, value in filters.items():
        if value is None:
            converted[key] = Query.NONE
        elif value == "*":
            converted[key] = Query.REQUIRED
        else:
            converted[key] = value
    return converted


def collect_images(settings: Settings) -> tuple[dict[str, list[AnatImage]], list[str]]:
    """Find the anatomical images to de-identify.

    Returns
    -------
    images : dict
        ``{subject label: [AnatImage, ...]}``, subjects and images sorted; participants
        without any selected image are left out.
    warnings : list of str
        One line per suffix of ``settings.suffixes`` that some participants lack ("T2w:
        found for 1 of 45 participants"), one line listing the participants skipped for
        lacking every selected suffix, and one per ignored filter.

    With no ``settings.suffixes``, every anatomical suffix (:data:`ANAT_SUFFIXES`) that
    the selected participants have is selected.

    Raises
    ------
    UsageError
        ``bids_dir`` is not a readable BIDS dataset, has no participants, a requested
        participant or session does not exist, or no image matches at all.
    """
    bids_dir = Path(settings.bids_dir)
    layout = _layout(settings)
    warnings: list[str] = []

    subjects = sorted(layout.get_subjects())
    if not subjects:
        raise UsageError(f"no participants found in {bids_dir}")
    if settings.participant_label:
        missing = [s for s in settings.participant_label if s not in subjects]
        if missing:
            names = ", ".join(f"sub-{s}" for s in missing)
            raise UsageError(f"participant(s) not found in {bids_dir}: {names}")
        subjects = [s for s in subjects if s in settings.participant_label]

    query: dict = {"datatype": "anat", "extension": list(_NIFTI_EXTENSIONS)}
    if settings.session_label:
        sessions = set(layout.get_sessions(subject=subjects))
        missing = [s for s in settings.session_label if s not in sessions]
        if missing:
            names = ", ".join(f"ses-{s}" for s in missing)
            raise UsageError(
                f"session(s) not found in {bids_dir} for the selected participants: {names}"
            )
        query["session"] = list(settings.session_label)

    filters = {key.lower(): value for key, value in settings.bids_filters.items()}
    if settings.suffixes:
        suffixes = list(settings.suffixes)
    else:  # every anatomical suffix the selected participants have
        present = set(layout.get(return_type="id", target="suffix",
                                 **{**query, "subject": subjects}))
        suffixes = [s for s in ANAT_SUFFIXES if s in present]
    selectable = {s.lower() for s in (settings.suffixes or ANAT_SUFFIXES)}
    for key in sorted(set(filters) - selectable):
        warnings.append(f"--bids-filter-file: filters for {key!r} ignored (not a selected suffix)")

    images: dict[str, list[AnatImage]] = {}
    having: dict[str, int] = dict.fromkeys(suffixes, 0)
    skipped: list[str] = []
    for subject in subjects:
        found: list[AnatImage] = []
        for suffix in suffixes:
            extra = _query_filters(filters.get(suffix.lower(), {}))
            try:
                files = layout.get(
                    return_type="filename",
                    **{**query, **extra, "subject": subject, "suffix": suffix},
                )
            except (ValueError, TypeError) as err:
                raise UsageError(
                    f"--bids-filter-file: invalid filter for {suffix}: {err}"
                ) from err
            having[suffix] += bool(files)
            found.extend(AnatImage.from_path(f, bids_dir=bids_dir) for f in files)
        if not found:
            skipped.append(f"sub-{subject}")
            continue
        images[subject] = sorted(found, key=lambda img: img.relpath)

    wanted = " or ".join(settings.suffixes) if settings.suffixes else "anatomical"
    if not images:
        raise UsageError(
            f"no {wanted} image found in {bids_dir} for the selected participants, sessions "
            f"and filters"
        )
    if settings.suffixes:  # asked for: say which participants lack them
        warnings.extend(f"{suffix}: found for {count} of {len(subjects)} participants"
                        for suffix, count in having.items() if count < len(subjects))
    if skipped:
        listed = ", ".join(skipped[:_LISTED]) + (", ..." if len(skipped) > _LISTED else "")
        warnings.append(f"{len(skipped)} of {len(subjects)} participants have no {wanted} "
                        f"image and are skipped: {listed}")
    return images, warnings


def derivative_path(
    output_dir: Path,
    image: AnatImage,
    *,
    suffix: str | None = None,
    desc: str | None = None,
    mod: str | None = None,
    extension: str = ".nii.gz",
) -> Path:
    """Path of a derivative of ``image`` under ``output_dir``, entities in BIDS order.

    >>> img = AnatImage.from_path("/raw/sub-01/ses-1/anat/sub-01_ses-1_run-2_T1w.nii.gz")
    >>> derivative_path(Path("/out"), img, desc="defaced").as_posix()
    '/out/sub-01/ses-1/anat/sub-01_ses-1_run-2_desc-defaced_T1w.nii.gz'
    >>> img = AnatImage.from_path("/raw/sub-01/anat/sub-01_acq-fast_T1w.nii")
    >>> derivative_path(Path("/out"), img, mod="T1w", suffix="defacemask").name
    'sub-01_acq-fast_mod-T1w_defacemask.nii.gz'
    >>> derivative_path(Path("/out"), img, desc="defaced", extension=".json").name
    'sub-01_acq-fast_desc-defaced_T1w.json'
    """
    entities = {k: v for k, v in image.entities.items() if k not in ("mod", "desc")}
    if mod is not None:
        entities["mod"] = mod
    if desc is not None:
        entities["desc"] = desc
    known = [k for k in ENTITY_ORDER if k in entities]
    unknown = [k for k in entities if k not in ENTITY_ORDER]
    if "desc" in known:  # desc stays last, after entities bidsreface does not know
        known.remove("desc")
        unknown.append("desc")
    name = "_".join(f"{k}-{entities[k]}" for k in known + unknown)
    folder = Path(output_dir) / f"sub-{image.subject}"
    if image.session:
        folder = folder / f"ses-{image.session}"
    return folder / "anat" / f"{name}_{suffix or image.suffix}{extension}"


def scrub_sidecar(meta: dict, dates: str = "keep", shift_days: int = 0) -> dict:
    """Return a copy of ``meta`` without identifying fields (and any ``Patient*`` key); the
    date and time fields left are shifted by *shift_days*, removed or kept, as *dates*
    (``shift``, ``remove``, ``keep``) says (see :mod:`bidsreface.dates`).

    >>> scrub_sidecar({"RepetitionTime": 2.3, "PatientName": "X", "StationName": "MR1"})
    {'RepetitionTime': 2.3}
    >>> scrub_sidecar({"ScanTime": "10:11:12", "ScanDate": "2020-01-02"}, "shift", -36525)
    {'ScanTime': '10:11:12', 'ScanDate': '1920-01-02'}
    """
    from bidsreface.dates import apply_to_sidecar

    scrubbed = {
        key: value
        for key, value in meta.items()
        if not is_identifying(key) and not key.startswith("Patient")
    }
    return apply_to_sidecar(scrubbed, dates, shift_days)


#: Marks the temporary files that outputs are written to before their rename into place.
TEMPORARY_MARK = ".bidsreface-tmp-"


def temporary_path(path: Path) -> Path:
    """The hidden temporary name *path* is written to before :func:`os.replace`.

    >>> temporary_path(Path("/o/sub-1/x.json")).name.startswith(".x.json.bidsreface-tmp-")
    True
    """
    return path.with_name(f".{path.name}{TEMPORARY_MARK}{os.getpid()}")


def remove_temporaries(folder: Path) -> int:
    """Delete the temporary files a killed run left under *folder*; return how many."""
    stale = [p for p in Path(folder).rglob(f".*{TEMPORARY_MARK}*") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def write_json_atomic(path: Path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and :func:`os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    tmp = temporary_path(path)
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_metadata(image: AnatImage) -> dict:
    """Raw metadata of ``image`` following the BIDS inheritance principle.

    Sidecars with the image's suffix, whose entities are a subset of the image's, are merged
    from the dataset root down to the image's folder (more specific ones win). Without a
    known ``bids_dir`` only the same-stem sidecar is read.
    """
    if image.bids_dir is None:
        candidates = [image.sidecar] if image.sidecar is not None else []
    else:
        folders = [image.path.parent]
        while folders[-1] != image.bids_dir and image.bids_dir in folders[-1].parents:
            folders.append(folders[-1].parent)
        candidates = []
        for folder in reversed(folders):
            level = []
            for json_file in folder.glob(f"*{image.suffix}.json"):
                entities, suffix, _ = _split_name(json_file.name)
                matches = all(image.entities.get(k) == v for k, v in entities.items())
                if suffix == image.suffix and matches:
                    level.append((len(entities), json_file.name, json_file))
            candidates.extend(item[2] for item in sorted(level))
    meta: dict = {}
    for json_file in candidates:
        try:
            content = json.loads(Path(json_file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UsageError(f"{json_file}: unreadable JSON sidecar ({err})") from err
        if not isinstance(content, dict):
            raise UsageError(f"{json_file}: JSON sidecar is not an object")
        meta.update(content)
    return meta


def write_sidecar(path: Path, image: AnatImage, extra: dict, *, dates: str = "keep",
                  key: str = "") -> None:
    """Write the derivative sidecar: raw metadata scrubbed (dates as *dates* says, shifted by
    the participant's days drawn from the output folder's secret *key*, see
    :func:`bidsreface.dates.dates_key`), ``Sources``, then ``extra``."""
    from bidsreface.dates import shift_days

    days = shift_days(key, image.subject) if dates == "shift" else 0
    meta = scrub_sidecar(load_metadata(image), dates, days)
    meta["Sources"] = [f"bids:raw:{image.relpath}"]
    meta.update(extra)
    write_json_atomic(path, meta)


def write_dataset_description(
    output_dir: Path, bids_dir: Path, extra_generated_by: dict | None = None
) -> None:
    """Write ``<output_dir>/dataset_description.json`` (left alone if already identical)."""
    output_dir, bids_dir = Path(output_dir), Path(bids_dir)
    description: dict = {
        "Name": "bidsreface: de-identified anatomical images",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "bidsreface",
                "Version": __version__,
                "CodeURL": __codeurl__,
                **(extra_generated_by or {}),
            }
        ],
    }
    if output_dir.parent.resolve() == (bids_dir / "derivatives").resolve():
        description["DatasetLinks"] = {"raw": "../.."}
    target = output_dir / "dataset_description.json"
    if target.is_file():
        try:
            if json.loads(target.read_text(encoding="utf-8")) == description:
                return
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass  # a damaged file from an earlier run is replaced below
    write_json_atomic(target, description)
