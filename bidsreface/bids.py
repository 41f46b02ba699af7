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


#: What a BIDS label (an entity's value, a participant's or a session's) may hold.
_LABEL = re.compile(r"^[0-9A-Za-z]+$")


def name_problem(image: AnatImage, suffixes=ANAT_SUFFIXES) -> str | None:
    """Why an anatomical image's name cannot name BIDS derivatives; None when it can.

    An image is de-identified under its own name (its outputs take its entities), so its
    participant and session must match its folders, every part of its name must be a known
    entity with a label of letters and digits (what BIDS allows), and its suffix one of
    *suffixes*.

    >>> img = AnatImage.from_path("/d/sub-01/anat/sub-01_run-1_acq-fast_T1w.nii.gz")
    >>> name_problem(img) is None
    True
    >>> name_problem(AnatImage.from_path("/d/sub-01/anat/sub-01_acq-\u00e9t\u00e9_T1w.nii.gz"))
    "file name not valid BIDS: the acq label '\u00e9t\u00e9' holds characters other than \
letters and digits; rename the file (and its sidecar) and run again"
    >>> name_problem(AnatImage.from_path("/d/sub-01/anat/sub-01_T1.nii.gz"))
    "file name not valid BIDS: 'T1' is not an anatomical suffix; rename the file (and its \
sidecar) and run again"
    """
    folders = [part for part in image.path.parent.parts[-3:-1]
               if part.startswith(("sub-", "ses-"))]
    problem = None
    if not _LABEL.match(image.subject):
        problem = f"the participant label {image.subject!r} holds characters other than " \
                  f"letters and digits"
    elif image.session is not None and not _LABEL.match(image.session):
        problem = f"the session label {image.session!r} holds characters other than " \
                  f"letters and digits"
    elif f"sub-{image.entities.get('sub')}" != (folders[0] if folders else None):
        problem = f"it does not start with {folders[0] + '_' if folders else 'sub-<label>_'!r}"
    elif image.session is not None and f"ses-{image.entities.get('ses')}" != folders[-1]:
        problem = f"its session entity does not match its folder {folders[-1]!r}"
    else:
        for key, value in image.entities.items():
            if key not in ENTITY_ORDER:
                problem = f"{key + '-' + value if value else key!r} is not a BIDS entity"
            elif not _LABEL.match(value):
                problem = f"the {key} label {value!r} holds characters other than letters " \
                          f"and digits"
            if problem:
                break
        else:
            if image.suffix not in suffixes:
                problem = f"{image.suffix!r} is not an anatomical suffix"
    if problem is None:
        return None
    return f"file name not valid BIDS: {problem}; rename the file (and its sidecar) and run again"


def _looks_like_image(path: Path) -> bool:
    """A NIfTI file by its name (any case), not hidden."""
    name = path.name
    return not name.startswith(".") and name.lower().endswith(_NIFTI_EXTENSIONS)


def unindexed_images(bids_dir: Path, indexed: set[Path],
                     skip: tuple[Path, ...] = ()) -> list[AnatImage]:
    """The files under ``sub-*/[ses-*/]anat/`` that look like images (``.nii``, ``.nii.gz``)
    but that the layout did not index (*indexed*: the paths it did); sorted.

    Their participant and session are read from their folders, not from their names, so
    that a name pybids rejects still says whose image it is (see :func:`name_problem`).
    Files under *skip* (the output and work folders) are left out.
    """
    found = []
    for folder in sorted(Path(bids_dir).glob("sub-*/anat")) + sorted(
            Path(bids_dir).glob("sub-*/ses-*/anat")):
        absolute = Path(os.path.abspath(folder))
        if not folder.is_dir() or any(s == absolute or s in absolute.parents for s in skip):
            continue
        session_folder = folder.parent.name if folder.parent.name.startswith("ses-") else None
        subject_folder = folder.parent.parent.name if session_folder else folder.parent.name
        for path in sorted(folder.iterdir()):
            if (not _looks_like_image(path) or Path(os.path.abspath(path)) in indexed
                    or path.is_dir()):
                continue
            entities, suffix, ext = _split_name(path.name)
            sidecar = path.with_name(path.name[: -len(ext)] + ".json") if ext else None
            found.append(AnatImage(
                path=path, subject=subject_folder[len("sub-"):],
                session=session_folder[len("ses-"):] if session_folder else None,
                suffix=suffix, entities=entities,
                sidecar=sidecar if sidecar is not None and sidecar.is_file() else None,
                bids_dir=Path(bids_dir)))
    return found


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
        lacking every selected suffix, one per ignored filter, and one listing the images
        the layout does not index.

    With no ``settings.suffixes``, every anatomical suffix (:data:`ANAT_SUFFIXES`) that
    the selected participants have is selected.

    A file under ``sub-*/[ses-*/]anat/`` that looks like an image but that pybids does not
    index (its name is not valid BIDS) is selected too, by its folders' participant and
    session (:func:`unindexed_images`), when its suffix is selected or is no anatomical
    suffix at all (it may hold a face); ``--bids-filter-file`` does not apply to it. It is
    de-identified when its name can name the outputs, else it fails with the reason
    (:func:`name_problem`, checked before the run): never dropped in silence.

    Raises
    ------
    UsageError
        ``bids_dir`` is not a readable BIDS dataset, has no participants, a requested
        participant or session does not exist, or no image matches at all.
    """
    bids_dir = Path(settings.bids_dir)
    layout = _layout(settings)
    warnings: list[str] = []
    indexed = {Path(os.path.abspath(f)) for f in layout.get(return_type="filename")}
    skip = tuple(Path(os.path.abspath(d)) for d in (settings.output_dir, settings.work_dir))
    unindexed = unindexed_images(bids_dir, indexed, skip)

    subjects = sorted(set(layout.get_subjects()) | {img.subject for img in unindexed})
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
        sessions = set(layout.get_sessions(subject=subjects)) | {
            img.session for img in unindexed if img.subject in subjects}
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

    def selected(img: AnatImage) -> bool:  # an unindexed image
        if settings.session_label and img.session not in settings.session_label:
            return False
        wanted = settings.suffixes or ANAT_SUFFIXES
        return img.suffix in wanted or img.suffix not in ANAT_SUFFIXES

    outside = [img for img in unindexed if img.subject in subjects and selected(img)]
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
        found.extend(img for img in outside if img.subject == subject)
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
    if outside:
        names = [img.relpath for img in outside]
        listed = ", ".join(names[:_LISTED]) + (", ..." if len(names) > _LISTED else "")
        files = "image file" + ("s" if len(outside) > 1 else "")
        warnings.append(f"{len(outside)} {files} not indexed as BIDS (names pybids "
                        f"rejects): selected all the same, each de-identified or failed with "
                        f"the reason: {listed}")
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


def metadata_files(image: AnatImage) -> list[Path]:
    """The sidecars that apply to ``image`` (BIDS inheritance principle), least specific first.

    Sidecars with the image's suffix, whose entities are a subset of the image's, from the
    dataset root down to the image's folder; without a known ``bids_dir`` only the same-stem
    sidecar. Links are listed whether or not their content is present.
    """
    if image.bids_dir is None:
        return [image.sidecar] if image.sidecar is not None else []
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
    return candidates


def load_metadata(image: AnatImage) -> dict:
    """Raw metadata of ``image`` following the BIDS inheritance principle: the sidecars of
    :func:`metadata_files` merged in order (more specific ones win)."""
    candidates = metadata_files(image)
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
