"""``--export-bids DIR``: a complete de-identified copy of the input dataset, ready to publish.

The export is made from the per-image records in the output folder, so it can follow the
participant level or a later ``group`` run (after array jobs), and it covers the whole input
dataset:

- every anatomical image (any NIfTI in an ``anat`` folder) is either replaced, under its raw
  name, by the de-identified image of a record that passed QC (refaced where a refaced image
  exists and ``--reface`` is not ``none``, else defaced), checked against the raw image as it
  is now; or left out with its sidecar, and listed;
- sidecars (``*.json`` at the top level and under ``sub-*``) are scrubbed of identifying
  fields, their dates shifted, removed or kept as ``--dates`` says (:mod:`bidsreface.dates`);
  the replaced images' sidecars say what was done (``DeidentificationMethod``);
- rows of left-out files are dropped from ``*_scans.tsv``, and ``acq_time`` is shifted (or
  removed) as the sidecars' dates are;
- ``derivatives/``, ``sourcedata/``, hidden entries (``.git``...) and bidsreface's own output
  and work folders are left out and listed (they may hold the original faces);
- a file whose content is not here (a git-annex file not fetched, a dangling link) is left out
  with its sidecars and its ``*_scans.tsv`` rows, and listed with the reason;
- every other file's content is hard-linked (copied across file systems), never written to;
  symbolic links (git-annex files) are followed: the export never holds a link, which its
  final check verifies.

What was left out, and why, is listed in :data:`LISTING` (under ``code/``, which the BIDS
validator does not check); what the export wrote is listed in :data:`MANIFEST`. The copy is
built in a hidden sibling folder and renamed into place. A folder that is not empty is replaced
only when it holds an earlier export and nothing else (every file in its manifest, unchanged);
anything else (a ``.git`` or ``.datalad``, a file the export did not write) is refused.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nb
import numpy as np

from . import __codeurl__, __version__
from .bids import scrub_sidecar, temporary_path
from .content import content_problem
from .dates import apply_to_cell, dates_key, method_note, shift_days
from .derivatives import read_record, record_paths, verify_defaced
from .errors import UsageError
from .image import changed_voxels, nifti_bytes, read_header, stored_values

#: The listing of what was left out, relative to the export's root.
LISTING = "code/bidsreface/left_out.tsv"

#: What the export wrote (path, size, modification time), relative to the export's root: a
#: later export replaces the folder only if it holds these files and nothing else.
MANIFEST = "code/bidsreface/manifest.tsv"

#: ``GeneratedBy`` note of the export's ``dataset_description.json``.
EXPORT_NOTE = (
    "De-identified copy made by bidsreface --export-bids: anatomical images replaced by their "
    "defaced or refaced images, sidecars scrubbed of identifying fields; what was left out is "
    f"listed in {LISTING}."
)

_ANAT_IMAGE = re.compile(r"^sub-[^/]+/(?:ses-[^/]+/)?anat/([^/]+)\.nii(?:\.gz)?$")
_SCANS = re.compile(r"^sub-[^/]+/(?:ses-[^/]+/)?[^/]+_(?:scans|sessions)\.tsv$")
_SIDECAR = re.compile(r"^(?:sub-[^/]+/.+|[^/]+)\.json$")

_HIDDEN = "hidden: not part of the dataset (it may hold the original images, e.g. .git/annex)"
_FOLDERS = {
    "derivatives": "derivatives of the raw data: they may show the original faces",
    "sourcedata": "source data: holds the original images",
}
_SUBJECT = re.compile(r"^sub-([^/_]+)/")
#: Files that belong to the data file of the same name (left out with it).
_COMPANIONS = (".json", ".bval", ".bvec")
_NO_RECORD = "not de-identified: no bidsreface record of it in the output folder"
_MISSING = "its de-identified image is missing from the output folder"
_STALE = ("its de-identified image does not match the raw image as it is now "
          "(changed since: run bidsreface on it again)")
_UNCHANGED = "its de-identified image differs nowhere from the raw image"
_BAD_JSON = "unreadable JSON: it cannot be scrubbed"
_ERRORS = (OSError, EOFError, ValueError, RuntimeError, zlib.error,
           nb.filebasedimages.ImageFileError)


class _LeftOut(Exception):
    """An anatomical image cannot be exported; the message says why."""


@dataclass
class Plan:
    """What the export holds: ``{relpath: (action, source, extra)}``, and what it leaves out.

    Actions: ``link`` (hard link or copy), ``image`` (a de-identified image; *extra* the
    ``DeidentificationMethod`` entry), ``json`` (scrubbed sidecar), ``scans`` (rows of
    left-out files dropped), ``description`` (``dataset_description.json``, noted).
    """

    files: dict[str, tuple[str, Path | None, str | None]] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)
    #: ``--dates`` (``shift``, ``remove``, ``keep``) and the output folder's secret key the
    #: shifts are drawn from (:func:`bidsreface.dates.dates_key`)
    dates: str = "keep"
    key: str = ""

    def date_mode(self, relpath: str) -> tuple[str, int]:
        """``(dates, days)`` for a file: a participant's files are shifted by that
        participant's days; files of no participant (top-level sidecars) cannot be, so their
        dates are removed when shifting.

        >>> plan = Plan(dates="shift")
        >>> plan.date_mode("sub-01/anat/sub-01_T1w.json")[0], plan.date_mode("T1w.json")
        ('shift', ('remove', 0))
        """
        match = _SUBJECT.match(relpath)
        if self.dates != "shift":
            return self.dates, 0
        if match is None:
            return "remove", 0
        return "shift", shift_days(self.key, match.group(1))

    def scrub(self, meta: dict, relpath: str) -> dict:
        """*meta* scrubbed of identifying fields, its dates as ``--dates`` says."""
        return scrub_sidecar(meta, *self.date_mode(relpath))


def export_dataset(settings) -> dict:
    """Write the de-identified copy of ``settings.bids_dir`` to ``settings.export_bids``.

    Parameters
    ----------
    settings : :class:`bidsreface.config.Settings`
        ``bids_dir``, ``output_dir`` (the records), ``work_dir``, ``reface`` (``none``
        exports the defaced images) and ``export_bids`` (the target folder).

    Returns
    -------
    dict
        ``deidentified`` and ``left_out`` (numbers of anatomical images), ``other`` (other
        paths left out) and ``listing`` (the path of the listing).

    Raises
    ------
    UsageError
        The target is a non-empty folder that holds no earlier export, or cannot be written.
    """
    bids_dir, target = Path(settings.bids_dir), Path(settings.export_bids)
    earlier = check_target(target)
    skip = {Path(settings.output_dir).resolve(): "bidsreface's output folder",
            Path(settings.work_dir).resolve(): "bidsreface's work folder"}
    try:
        plan = plan_export(bids_dir, Path(settings.output_dir),
                           refaced=settings.reface != "none", skip=skip,
                           dates=settings.dates,
                           key=dates_key(settings.output_dir) if settings.dates == "shift"
                           else "")
    except OSError as err:
        raise UsageError(f"--export-bids: cannot read {bids_dir}: {err}") from err
    if not plan.images:
        counts = _reason_counts({p: r for p, r in plan.left_out.items() if _ANAT_IMAGE.match(p)})
        why = "; ".join(f"{count} {reason}" for reason, count in counts) or "no anatomical image"
        raise UsageError(f"--export-bids: no de-identified image to export ({why}); nothing "
                         f"written to {target}")
    for stale in target.parent.glob(f".{target.name}.bidsreface-*"):  # of a killed export
        if stale.is_dir():
            shutil.rmtree(stale)
    tmp = temporary_path(target)
    try:
        build(plan, bids_dir, tmp)
        check_no_links(tmp, target)
        problems = _faces_left_out(plan, bids_dir, tmp, settings)
        if problems:
            kept = tmp.with_name(f".{target.name}.bidsreface-unsafe")
            os.replace(tmp, kept)
            raise UsageError(f"--export-bids: the check of the export found {len(problems)} "
                             f"thing(s) it must not hold, kept in {kept} and not moved to "
                             f"{target}: " + "; ".join(problems[:5]))
        write_manifest(tmp)
        _move_into_place(tmp, target, earlier)
    except OSError as err:
        raise UsageError(f"--export-bids: cannot write {target}: {err}") from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return _report(plan, target)


def _faces_left_out(plan: Plan, bids_dir: Path, tmp: Path, settings) -> list[str]:
    """Check the built export *tmp* (:func:`bidsreface.check.export_findings`); return what it
    must not hold, one line each.

    bidsreface de-identifies anatomical images only: a face found in another image (a
    ``func`` reference, a ``fmap`` magnitude) leaves that image out, with its sidecars and
    table rows, listed with the face's score; the export is then built and checked again.
    Anything else found (a face in a de-identified image, a field left) is returned.
    """
    from .check import describe, export_findings

    while True:
        found = export_findings(tmp, nprocs=settings.nprocs,
                                keep_extensions=settings.keep_nifti_extensions)
        faces = {f.file: f for f in found if f.kind in ("face", "face-in-deidentified")
                 and not _ANAT_IMAGE.match(f.file) and f.file in plan.files}
        if not faces or len(faces) < len(found):
            return [describe(f) for f in found]
        for relpath, finding in faces.items():
            plan.files.pop(relpath)
            plan.left_out[relpath] = (f"shows a face ({finding.evidence.split(';')[0]}): "
                                      f"bidsreface de-identifies anatomical images only")
        owners = {_stem_key(path): path for path in faces}
        for relpath in [p for p in plan.files if p.endswith(_COMPANIONS)]:
            owner = owners.get(_stem_key(relpath) or "")
            if owner is not None:
                plan.files.pop(relpath)
                plan.left_out[relpath] = f"belongs to the left-out {owner.rsplit('/', 1)[-1]}"
        shutil.rmtree(tmp)
        build(plan, bids_dir, tmp)
        check_no_links(tmp, tmp)


def _report(plan: Plan, target: Path) -> dict:
    """Print the summary of an export (one line, then one per reason with its count of
    paths left out); return its figures."""
    left_images = sum(1 for path in plan.left_out if _ANAT_IMAGE.match(path))
    reasons = _reason_counts(plan.left_out)
    summary = {"deidentified": len(plan.images), "left_out": left_images,
               "other": len(plan.left_out) - left_images, "listing": target / LISTING,
               "reasons": dict(reasons)}
    print(f"bidsreface: export: {summary['deidentified']} images de-identified, "
          f"{left_images} left out"
          + (f", {summary['other']} other paths left out" if summary["other"] else "")
          + f" (see {summary['listing']})", file=sys.stderr)
    for reason, count in reasons:
        print(f"bidsreface: export: {count} left out: {reason}", file=sys.stderr)
    return summary


def reason_category(reason: str) -> str:
    """What a left-out path's reason counts under in the summary (no file names, no hint).

    >>> reason_category("content not present (git-annex): run 'datalad get sub-01/x.nii.gz'")
    'content not present (git-annex)'
    >>> reason_category("belongs to the left-out sub-01_T2w.nii.gz")
    'belongs to a left-out file'
    >>> reason_category("de-identification failed: registration failed")
    'de-identification failed'
    """
    if reason.startswith("belongs to the left-out"):
        return "belongs to a left-out file"
    reason = " ".join(reason.split()).split(": run 'datalad get")[0]
    if reason.startswith("dangling symbolic link"):
        return "dangling symbolic link"
    head = reason.split(": ")[0]
    return head if head in ("de-identification failed", "hidden") else reason


def _reason_counts(left_out: dict[str, str]) -> list[tuple[str, int]]:
    """``(reason category, count)`` of left-out paths, most frequent first."""
    counts: dict[str, int] = {}
    for reason in left_out.values():
        category = reason_category(reason)
        counts[category] = counts.get(category, 0) + 1
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def check_target(target: Path) -> bool:
    """Whether *target* holds an earlier export (to replace); raise if it cannot be used.

    A missing or empty folder is fine (``False``). A non-empty one is replaced only when it
    holds an export by bidsreface and nothing else: every file is one its :data:`MANIFEST`
    lists, unchanged since (size and modification time). A ``.git`` or ``.datalad`` (the
    export made a git or DataLad repository), a file the export did not write or one changed
    since means refuse: replacing the folder would delete it.
    """
    target = Path(target)
    if not target.exists():
        return False
    if not target.is_dir():
        raise UsageError(f"--export-bids {target} exists and is not a directory")
    try:
        entries = sorted(p.name for p in target.iterdir())
    except OSError as err:
        raise UsageError(f"--export-bids {target} cannot be read: {err}") from err
    if not entries:
        return False
    refuse = (f"--export-bids {target}: an export replaces only a folder it made that holds "
              f"nothing else, and this one")
    for name in (".git", ".datalad"):
        if name in entries:
            kind = "a git or DataLad repository" if name == ".git" else "a DataLad dataset"
            raise UsageError(f"{refuse} holds {name} (it is {kind}); give a new or empty "
                             f"directory (publish the export from there)")
    manifest = _read_manifest(target)
    if manifest is None:
        raise UsageError(f"--export-bids {target} is not empty and holds no earlier export by "
                         f"bidsreface (no {MANIFEST}); give a new or empty directory")
    foreign, changed = [], []
    for folder, dirnames, filenames in os.walk(target):
        here = Path(folder)
        for name in sorted(dirnames):
            if (here / name).is_symlink():
                foreign.append((here / name).relative_to(target).as_posix())
                dirnames.remove(name)
        for name in sorted(filenames):
            relpath = (here / name).relative_to(target).as_posix()
            if relpath == MANIFEST:
                continue
            if relpath not in manifest or (here / name).is_symlink():
                foreign.append(relpath)
            elif _file_state(here / name) != manifest[relpath]:
                changed.append(relpath)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise UsageError(f"{refuse} holds {foreign[0]}{more}, not written by the export; give "
                         f"a new or empty directory")
    if changed:
        more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
        raise UsageError(f"{refuse} holds {changed[0]}{more}, changed since the export wrote "
                         f"it; give a new or empty directory")
    return True


def _file_state(path: Path) -> str:
    """What the manifest records of a file: its size and modification time (ns)."""
    stat = path.lstat()
    return f"{stat.st_size}\t{stat.st_mtime_ns}"


def write_manifest(root: Path) -> None:
    """Write :data:`MANIFEST`: every file under *root* with :func:`_file_state`."""
    lines = ["path\tsize\tmtime_ns"]
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        lines.append(f"{path.relative_to(root).as_posix()}\t{_file_state(path)}")
    (root / MANIFEST).parent.mkdir(parents=True, exist_ok=True)
    _write_new(root / MANIFEST, ("\n".join(lines) + "\n").encode())


def _read_manifest(target: Path) -> dict[str, str] | None:
    """``{relpath: state}`` of an export's manifest; None when there is none to trust."""
    path = target / MANIFEST
    if path.is_symlink() or not path.is_file():
        return None
    try:
        lines = path.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    if not lines or lines[0] != "path\tsize\tmtime_ns":
        return None
    entries = {}
    for line in lines[1:]:
        relpath, _, state = line.partition("\t")
        entries[relpath] = state
    return entries


def check_no_links(root: Path, target: Path) -> None:
    """Raise if the built export *root* holds a symbolic link (it never should: a link would
    point into the source dataset, or nowhere once published)."""
    for folder, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            if (Path(folder) / name).is_symlink():
                relpath = (Path(folder) / name).relative_to(root).as_posix()
                raise UsageError(f"--export-bids: {relpath} would be a symbolic link in the "
                                 f"export; nothing written to {target}")


# --------------------------------------------------------------------------- planning


def plan_export(bids_dir: Path, output_dir: Path, *, refaced: bool = True,
                skip: dict[Path, str] | None = None, dates: str = "keep",
                key: str = "") -> Plan:
    """Decide what becomes of every file of *bids_dir* (nothing is written).

    Parameters
    ----------
    bids_dir : Path
        The raw dataset.
    output_dir : Path
        bidsreface's outputs: the per-image records and de-identified images.
    refaced : bool
        Export the refaced image where there is one (else always the defaced one).
    skip : dict
        ``{resolved folder: reason}``: folders under *bids_dir* to leave out.
    dates, key : str, str
        ``--dates`` and the output folder's date-shift key (see :mod:`bidsreface.dates`).
    """
    plan = Plan(dates=dates, key=key)
    files = _walk(Path(bids_dir), skip or {}, plan.left_out)
    records = _records(Path(output_dir))
    for relpath in files:
        if _ANAT_IMAGE.match(relpath):
            _plan_image(plan, relpath, Path(bids_dir), Path(output_dir), records.get(relpath),
                        refaced)
    owners = {_stem_key(path): path for path in plan.left_out if _stem_key(path)
              and not path.endswith(_COMPANIONS)}
    for relpath in files:
        if not _ANAT_IMAGE.match(relpath):
            _plan_other(plan, relpath, Path(bids_dir), owners)
    return plan


def _stem_key(relpath: str) -> str | None:
    """``folder/stem`` of a participant's file (its name up to the first dot), else None.

    >>> _stem_key("sub-01/func/sub-01_task-rest_bold.nii.gz"), _stem_key("README")
    ('sub-01/func/sub-01_task-rest_bold', None)
    """
    folder, _, name = relpath.rpartition("/")
    stem, dot, _ = name.partition(".")
    return f"{folder}/{stem}" if folder.startswith("sub-") and dot else None


def _walk(bids_dir: Path, skip: dict[Path, str], left_out: dict[str, str]) -> list[str]:
    """Relative paths of the files to consider; folders and files to leave out go to
    *left_out* (a folder once, as ``name/``)."""

    def fail(err: OSError):
        raise err

    files = []
    for folder, dirnames, filenames in os.walk(bids_dir, onerror=fail):
        here = Path(folder)
        rel = here.relative_to(bids_dir)
        for name in sorted(dirnames):
            reason = _folder_reason(rel / name, here / name, skip)
            if reason:
                left_out[f"{(rel / name).as_posix()}/"] = reason
                dirnames.remove(name)
        for name in filenames:
            relpath = (rel / name).as_posix()
            if name.startswith(".") and relpath != ".bidsignore":
                left_out[relpath] = _HIDDEN
            elif problem := content_problem(here / name, bids_dir):
                left_out[relpath] = problem  # not fetched, a dangling link...
            else:
                files.append(relpath)
    return sorted(files)


def _folder_reason(rel: Path, path: Path, skip: dict[Path, str]) -> str | None:
    """Why a folder of the dataset is left out (None: it is not)."""
    if rel.name.startswith("."):
        return _HIDDEN
    if rel.as_posix() in _FOLDERS:
        return _FOLDERS[rel.as_posix()]
    if path.is_symlink():
        return "symbolic link to a folder"
    return skip.get(path.resolve())


def _records(output_dir: Path) -> dict[str, dict]:
    """The readable per-image records of *output_dir* by raw relpath (a failure wins); one
    that cannot be read (not fetched, damaged) is skipped with a line on stderr (its image is
    then left out as not de-identified)."""
    records: dict[str, dict] = {}
    for path in record_paths(output_dir):
        record = read_record(path, output_dir)
        if isinstance(record, str):
            print(f"bidsreface: export: {path}: record skipped: {record}", file=sys.stderr)
            continue
        source = record["source"]
        if records.get(source, {}).get("status") != "failed":
            records[source] = record
    return records


def _plan_image(plan: Plan, relpath: str, bids_dir: Path, output_dir: Path,
                record: dict | None, refaced: bool) -> None:
    """Replace an anatomical image by its de-identified one, or leave it out."""
    try:
        image, mask, kind = _chosen_output(record, output_dir, refaced)
        _check_output(bids_dir / relpath, image, mask)
    except _LeftOut as err:
        plan.left_out[relpath] = str(err)
        return
    plan.files[relpath] = ("image", image,
                           deidentification_method(record, kind) + method_note(plan.dates))
    plan.images[relpath] = kind


def _chosen_output(record: dict | None, output_dir: Path,
                   refaced: bool) -> tuple[Path, Path, str]:
    """``(image, face mask, "refaced" | "defaced")`` of a record that passed QC."""
    if record is None:
        raise _LeftOut(_NO_RECORD)
    if record.get("status") != "ok":
        reason = " ".join(str(record.get("reason") or "no reason recorded").split())
        raise _LeftOut(f"de-identification failed: {reason}")
    outputs = record.get("outputs") or {}
    kind = "refaced" if refaced and outputs.get("refaced") else "defaced"
    subject_dir = Path(os.path.abspath(output_dir / record["source"].split("/")[0]))
    paths = []
    for key in (kind, "mask"):
        # inside the subject's folder as named (a saved output is a git-annex link whose
        # content lies elsewhere: its final link is followed only to read it)
        path = Path(os.path.normpath(subject_dir / str(outputs.get(key) or "")))
        if subject_dir not in path.parents:
            raise _LeftOut(_MISSING)
        problem = content_problem(path, output_dir)
        if problem == "no such file" or (problem is None and not path.is_file()):
            raise _LeftOut(_MISSING)
        if problem:
            raise _LeftOut(f"its de-identified {'image' if key == kind else 'face mask'}: "
                           f"{problem}")
        paths.append(path)
    return paths[0], paths[1], kind


def _check_output(raw: Path, image: Path, mask: Path) -> None:
    """Check *image* against the raw image as it is now: same grid, dtype and voxels outside
    the face *mask*, and some voxel changed inside it."""
    try:
        face = np.asarray(nb.load(mask).dataobj) > 0
        checks = verify_defaced(raw, image, face)
    except _ERRORS as err:
        raise _LeftOut(_STALE) from err
    if checks["changed_inside_mask"] == 0:
        raise _LeftOut(_UNCHANGED)


def deidentification_method(record: dict, kind: str) -> str:
    """The ``DeidentificationMethod`` entry of an exported image.

    >>> deidentification_method({"version": "0.1.0", "reface": {"reface_method": "none"}},
    ...                         "defaced")
    'Defaced by bidsreface 0.1.0: the voxels of the face mask set to background.'
    """
    text = (f"Defaced by bidsreface {record.get('version', __version__)}: the voxels of the "
            f"face mask set to background")
    if kind == "defaced":
        return text + "." + _header_note(record)
    reface = record.get("reface") or {}
    if reface.get("reface_method") == "cgan":
        filler = (f"a synthetic face from a 3D conditional GAN (model {reface.get('model')}, "
                  f"sha256 {reface.get('model_sha256')}, seed {reface.get('seed')})")
    elif reface.get("reface_method") == "prior":
        filler = (f"a synthetic head drawn from a population prior (model {reface.get('model')}, "
                  f"sha256 {reface.get('model_sha256')}, seed {reface.get('seed')})")
    else:
        filler = "the template's face, intensity-matched"
    return (f"{text}, then refilled with {filler}; every other voxel is the original's."
            + _header_note(record))


def _header_note(record: dict) -> str:
    """What the image's NIfTI header lost, for ``DeidentificationMethod``.

    >>> _header_note({"nifti_header": {"extensions_removed": [{"code": 4, "name": "afni"}],
    ...               "extensions_kept": [], "text_fields_cleared": ["descrip"]}})
    ' NIfTI header: extensions removed (4 afni); free-text fields cleared (descrip).'
    """
    header = record.get("nifti_header") or {}
    parts = []
    if header.get("extensions_removed"):
        codes = ", ".join(f"{e['code']} {e['name']}" for e in header["extensions_removed"])
        parts.append(f"extensions removed ({codes})")
    if header.get("text_fields_cleared"):
        parts.append(f"free-text fields cleared ({', '.join(header['text_fields_cleared'])})")
    return f" NIfTI header: {'; '.join(parts)}." if parts else ""


def _plan_other(plan: Plan, relpath: str, bids_dir: Path, owners: dict[str, str]) -> None:
    """What becomes of a file that is not an anatomical image (*owners*: the left-out data
    files by :func:`_stem_key`; their sidecars go with them)."""
    image = _image_of(relpath, plan)
    owner = image if image in plan.left_out else (
        owners.get(_stem_key(relpath) or "") if relpath.endswith(_COMPANIONS) else None)
    if owner is not None:
        plan.left_out[relpath] = f"belongs to the left-out {owner.rsplit('/', 1)[-1]}"
    elif image is not None and relpath.endswith(".json"):
        if not _readable_json(bids_dir / relpath):
            plan.left_out[relpath] = _BAD_JSON  # the image's new sidecar holds only the note
    elif relpath == "dataset_description.json":
        plan.files[relpath] = ("description", bids_dir / relpath, None)
    elif _SCANS.match(relpath):
        plan.files[relpath] = ("scans", bids_dir / relpath, None)
    elif _SIDECAR.match(relpath):
        _plan_sidecar(plan, relpath, bids_dir / relpath)
    else:
        plan.files[relpath] = ("link", bids_dir / relpath, None)


def _image_of(relpath: str, plan: Plan) -> str | None:
    """The anatomical image (planned or left out) whose same-stem file *relpath* is."""
    folder, _, name = relpath.rpartition("/")
    if not folder.endswith("/anat") or "." not in name:
        return None
    stem = f"{folder}/{name.split('.')[0]}"
    for ext in (".nii.gz", ".nii"):
        if stem + ext in plan.files or stem + ext in plan.left_out:
            return stem + ext
    return None


def _plan_sidecar(plan: Plan, relpath: str, path: Path) -> None:
    """Scrub a sidecar (linked when there is nothing to scrub); leave out an unreadable one."""
    meta = _readable_json(path)
    if meta is None:
        plan.left_out[relpath] = _BAD_JSON
        return
    scrubbed = isinstance(meta, dict) and plan.scrub(meta, relpath) != meta
    plan.files[relpath] = ("json" if scrubbed else "link", path, None)


def _readable_json(path: Path):
    """The content of a JSON file, None when it cannot be read as JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


# --------------------------------------------------------------------------- writing


def build(plan: Plan, bids_dir: Path, root: Path) -> None:
    """Write the export of *plan* to the new folder *root*: files, then the listing."""
    root.mkdir(parents=True)
    writers = {"link": _link, "image": _write_image, "json": _write_scrubbed,
               "scans": _write_scans, "description": _write_description}
    for relpath, (action, source, extra) in sorted(plan.files.items()):
        target = root / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        writers[action](source, target, extra=extra, plan=plan, relpath=relpath,
                        bids_dir=bids_dir)
    lines = ["path\treason"] + [f"{path}\t{' '.join(reason.split())}"
                                for path, reason in sorted(plan.left_out.items())]
    (root / LISTING).parent.mkdir(parents=True, exist_ok=True)
    _write_new(root / LISTING, ("\n".join(lines) + "\n").encode())


def _write_new(path: Path, content: bytes) -> None:
    """Create *path* with *content*; never opens an existing (maybe hard-linked) file."""
    with open(path, "xb") as fobj:
        fobj.write(content)


def _json_bytes(meta) -> bytes:
    return (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode()


def _link(source: Path, target: Path, **_) -> None:
    """Hard-link the content of *source* to *target*, or copy it where the file system
    refuses; a symbolic link (a git-annex file) is followed, never linked itself."""
    content = os.path.realpath(source)
    try:
        os.link(content, target, follow_symlinks=False)
    except OSError:
        shutil.copyfile(content, target, follow_symlinks=True)
        shutil.copystat(content, target)


def _write_scrubbed(source: Path, target: Path, *, plan: Plan, relpath: str, **_) -> None:
    _write_new(target, _json_bytes(plan.scrub(json.loads(source.read_text("utf-8")), relpath)))


def _write_image(source: Path, target: Path, *, extra: str, relpath: str, bids_dir: Path,
                 plan: Plan, **_) -> None:
    """The de-identified image under the raw name (3D, compressed as the raw name says), and
    its scrubbed, noted sidecar."""
    img = nb.load(source)
    compress = target.name.endswith(".gz")
    if len(img.shape) > 3 and all(size == 1 for size in img.shape[3:]):
        _write_new(target, _as_3d(source, compress))
    elif compress != source.name.endswith(".gz"):  # a raw .nii gets an uncompressed file
        content = nifti_bytes(read_header(source), stored_values(source))
        _write_new(target, gzip.compress(content, compresslevel=1, mtime=0) if compress
                   else content)
    else:
        _link(source, target)
        return _write_image_sidecar(target, extra, relpath, bids_dir, plan)
    counts = changed_voxels(source, target, np.zeros(img.shape[:3], bool))
    if counts["changed_outside_mask"]:
        raise RuntimeError(f"{target}: the copy of {source} differs from it in "
                           f"{counts['changed_outside_mask']} voxels")
    _write_image_sidecar(target, extra, relpath, bids_dir, plan)


def _write_image_sidecar(target: Path, extra: str, relpath: str, bids_dir: Path,
                         plan: Plan) -> None:
    """The raw sidecar of an exported image, scrubbed, with ``DeidentificationMethod``."""
    stem = relpath.removesuffix(".gz").removesuffix(".nii")
    raw_sidecar = bids_dir / f"{stem}.json"
    readable = raw_sidecar.is_file() and f"{stem}.json" not in plan.left_out
    meta = json.loads(raw_sidecar.read_text("utf-8")) if readable else {}
    meta = plan.scrub(meta, relpath) if isinstance(meta, dict) else {}
    method = meta.get("DeidentificationMethod", [])
    meta["DeidentificationMethod"] = [*([method] if isinstance(method, str) else method), extra]
    _write_new(target.parent / f"{Path(stem).name}.json", _json_bytes(meta))


def _as_3d(source: Path, compress: bool) -> bytes:
    """The file of a one-volume 4D image as 3D: only the header's ``dim[0]`` changes.

    The BIDS validator refuses a 4D T1w; the stored values, the header as the file stores it
    (scaling included) and the affine stay as they are.
    """
    header = read_header(source)
    dim = header["dim"].copy()
    dim[0] = 3
    header["dim"] = dim
    content = nifti_bytes(header, stored_values(source))
    return gzip.compress(content, compresslevel=1, mtime=0) if compress else content


def _write_scans(source: Path, target: Path, *, plan: Plan, relpath: str, **_) -> None:
    """Copy a ``*_scans.tsv`` (or ``*_sessions.tsv``) without the rows of left-out files,
    its ``acq_time`` shifted or removed as ``--dates`` says (linked if nothing changes)."""
    lines = source.read_text("utf-8").splitlines()
    header = lines[0].split("\t") if lines else []
    kept = lines[1:]
    if "filename" in header:
        column, folder = header.index("filename"), relpath.rpartition("/")[0]
        kept = [line for line in kept if f"{folder}/{_cell(line, column)}" not in plan.left_out]
    if "acq_time" in header:
        dates, days = plan.date_mode(relpath)
        column = header.index("acq_time")
        kept = [_with_cell(line, column, apply_to_cell(_cell(line, column), dates, days))
                for line in kept]
    if kept == lines[1:]:
        _link(source, target)
        return
    _write_new(target, ("\n".join([lines[0], *kept]) + "\n").encode())


def _with_cell(line: str, column: int, value: str) -> str:
    r"""*line* of a TSV with its *column* set to *value*.

    >>> _with_cell("a\tb\tc", 1, "x")
    'a\tx\tc'
    """
    cells = line.split("\t")
    if column < len(cells):
        cells[column] = value
    return "\t".join(cells)


def _cell(line: str, column: int) -> str:
    cells = line.split("\t")
    return cells[column] if column < len(cells) else ""


def _write_description(source: Path, target: Path, *, plan: Plan, **_) -> None:
    """``dataset_description.json`` with bidsreface added to ``GeneratedBy``."""
    description = json.loads(source.read_text("utf-8"))
    generated = description.get("GeneratedBy")
    description["GeneratedBy"] = [*(generated if isinstance(generated, list) else []), {
        "Name": "bidsreface", "Version": __version__, "CodeURL": __codeurl__,
        "Description": EXPORT_NOTE + method_note(plan.dates)}]
    _write_new(target, _json_bytes(description))


def _move_into_place(tmp: Path, target: Path, earlier: bool) -> None:
    """Rename the built export to *target*; an earlier export there is replaced."""
    if not earlier:
        os.replace(tmp, target)  # a missing or empty target
        return
    old = target.with_name(f".{target.name}.bidsreface-old-{os.getpid()}")
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except OSError:
        os.replace(old, target)
        raise
    shutil.rmtree(old)
