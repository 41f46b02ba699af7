"""``--export-bids DIR``: a complete de-identified copy of the input dataset, ready to publish.

The export is made from the per-image records in the output folder, so it can follow the
participant level or a later ``group`` run (after array jobs), and it covers the whole input
dataset:

- every anatomical image (any NIfTI in an ``anat`` folder) is either replaced, under its raw
  name, by the de-identified image of a record that passed QC (refaced where a refaced image
  exists and ``--reface`` is not ``none``, else defaced), checked against the raw image as it
  is now; or left out with its sidecar, and listed;
- sidecars (``*.json`` at the top level and under ``sub-*``) are scrubbed of identifying
  fields; the replaced images' sidecars say what was done (``DeidentificationMethod``);
- rows of left-out files are dropped from ``*_scans.tsv``;
- ``derivatives/``, ``sourcedata/``, hidden entries (``.git``...) and bidsreface's own output
  and work folders are left out and listed (they may hold the original faces);
- every other file is hard-linked (copied across file systems), never written to.

What was left out, and why, is listed in :data:`LISTING` (under ``code/``, which the BIDS
validator does not check). The copy is built in a hidden sibling folder and renamed into place;
a non-empty folder that holds no earlier export is refused.
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
from .derivatives import record_paths, verify_defaced
from .errors import UsageError
from .image import changed_voxels, nifti_bytes, read_header, stored_values

#: The listing of what was left out, relative to the export's root.
LISTING = "code/bidsreface/left_out.tsv"

#: ``GeneratedBy`` note of the export's ``dataset_description.json``.
EXPORT_NOTE = (
    "De-identified copy made by bidsreface --export-bids: anatomical images replaced by their "
    "defaced or refaced images, sidecars scrubbed of identifying fields; what was left out is "
    f"listed in {LISTING}."
)

_ANAT_IMAGE = re.compile(r"^sub-[^/]+/(?:ses-[^/]+/)?anat/([^/]+)\.nii(?:\.gz)?$")
_SCANS = re.compile(r"^sub-[^/]+/(?:ses-[^/]+/)?[^/]+_scans\.tsv$")
_SIDECAR = re.compile(r"^(?:sub-[^/]+/.+|[^/]+)\.json$")

_HIDDEN = "hidden: not part of the dataset (it may hold the original images, e.g. .git/annex)"
_FOLDERS = {
    "derivatives": "derivatives of the raw data: they may show the original faces",
    "sourcedata": "source data: holds the original images",
}
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
                           refaced=settings.reface != "none", skip=skip)
    except OSError as err:
        raise UsageError(f"--export-bids: cannot read {bids_dir}: {err}") from err
    for stale in target.parent.glob(f".{target.name}.bidsreface-*"):  # of a killed export
        if stale.is_dir():
            shutil.rmtree(stale)
    tmp = temporary_path(target)
    try:
        build(plan, bids_dir, tmp)
        from .check import verify_export  # faces and identifying fields left: refuse

        problems = verify_export(tmp, nprocs=getattr(settings, "nprocs", 1),
                                 keep_extensions=getattr(settings, "keep_nifti_extensions", False))
        if problems:
            kept = tmp.with_name(f".{target.name}.bidsreface-unsafe")
            os.replace(tmp, kept)
            raise UsageError(f"--export-bids: the check of the export found {len(problems)} "
                             f"thing(s) it must not hold, kept in {kept} and not moved to "
                             f"{target}: " + "; ".join(problems[:5]))
        _move_into_place(tmp, target, earlier)
    except OSError as err:
        raise UsageError(f"--export-bids: cannot write {target}: {err}") from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return _report(plan, target)


def _report(plan: Plan, target: Path) -> dict:
    """Print the one-line summary of an export; return its figures."""
    left_images = sum(1 for path in plan.left_out if _ANAT_IMAGE.match(path))
    summary = {"deidentified": len(plan.images), "left_out": left_images,
               "other": len(plan.left_out) - left_images, "listing": target / LISTING}
    print(f"bidsreface: export: {summary['deidentified']} images de-identified, "
          f"{left_images} left out"
          + (f", {summary['other']} other paths left out" if summary["other"] else "")
          + f" (see {summary['listing']})", file=sys.stderr)
    return summary


def check_target(target: Path) -> bool:
    """Whether *target* holds an earlier export (to replace); raise if it cannot be used.

    A missing or empty folder is fine (``False``); a non-empty one must hold an export by
    bidsreface: its ``dataset_description.json`` names bidsreface and :data:`LISTING` exists.
    """
    target = Path(target)
    if not target.exists():
        return False
    if not target.is_dir():
        raise UsageError(f"--export-bids {target} exists and is not a directory")
    if not any(target.iterdir()):
        return False
    try:
        description = json.loads((target / "dataset_description.json").read_text("utf-8"))
        generated = description.get("GeneratedBy", [])
        ours = any(entry.get("Name") == "bidsreface" for entry in generated)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError):
        ours = False
    if not (ours and (target / LISTING).is_file()):
        raise UsageError(f"--export-bids {target} is not empty and holds no earlier export by "
                         f"bidsreface; give a new or empty directory")
    return True


# --------------------------------------------------------------------------- planning


def plan_export(bids_dir: Path, output_dir: Path, *, refaced: bool = True,
                skip: dict[Path, str] | None = None) -> Plan:
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
    """
    plan = Plan()
    files = _walk(Path(bids_dir), skip or {}, plan.left_out)
    records = _records(Path(output_dir))
    for relpath in files:
        if _ANAT_IMAGE.match(relpath):
            _plan_image(plan, relpath, Path(bids_dir), Path(output_dir), records.get(relpath),
                        refaced)
    for relpath in files:
        if not _ANAT_IMAGE.match(relpath):
            _plan_other(plan, relpath, Path(bids_dir))
    return plan


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
            elif not (here / name).exists():
                left_out[relpath] = "content not available (broken symbolic link)"
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
    """The readable per-image records of *output_dir* by raw relpath (a failure wins)."""
    records: dict[str, dict] = {}
    for path in record_paths(output_dir):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            source = record["source"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            continue  # its image is left out as not de-identified
        if isinstance(source, str) and records.get(source, {}).get("status") != "failed":
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
    plan.files[relpath] = ("image", image, deidentification_method(record, kind))
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
    subject_dir = (output_dir / record["source"].split("/")[0]).resolve()
    paths = []
    for key in (kind, "mask"):
        path = (subject_dir / str(outputs.get(key) or "")).resolve()
        if subject_dir not in path.parents or not path.is_file():
            raise _LeftOut(_MISSING)
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


def _plan_other(plan: Plan, relpath: str, bids_dir: Path) -> None:
    """What becomes of a file that is not an anatomical image."""
    image = _image_of(relpath, plan)
    if image in plan.left_out:
        plan.left_out[relpath] = f"belongs to the left-out {image.rsplit('/', 1)[-1]}"
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
    scrubbed = isinstance(meta, dict) and scrub_sidecar(meta) != meta
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
    """Hard-link *source* to *target*, or copy it where the file system refuses."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _write_scrubbed(source: Path, target: Path, **_) -> None:
    _write_new(target, _json_bytes(scrub_sidecar(json.loads(source.read_text("utf-8")))))


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
    meta = scrub_sidecar(meta) if isinstance(meta, dict) else {}
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
    """Copy a ``*_scans.tsv`` without the rows of left-out files (linked if none is)."""
    lines = source.read_text("utf-8").splitlines()
    header = lines[0].split("\t") if lines else []
    if "filename" not in header:
        _link(source, target)
        return
    column, folder = header.index("filename"), relpath.rpartition("/")[0]
    kept = [line for line in lines[1:]
            if f"{folder}/{_cell(line, column)}" not in plan.left_out]
    if len(kept) == len(lines) - 1:
        _link(source, target)
        return
    _write_new(target, ("\n".join([lines[0], *kept]) + "\n").encode())


def _cell(line: str, column: int) -> str:
    cells = line.split("\t")
    return cells[column] if column < len(cells) else ""


def _write_description(source: Path, target: Path, **_) -> None:
    """``dataset_description.json`` with bidsreface added to ``GeneratedBy``."""
    description = json.loads(source.read_text("utf-8"))
    generated = description.get("GeneratedBy")
    description["GeneratedBy"] = [*(generated if isinstance(generated, list) else []), {
        "Name": "bidsreface", "Version": __version__, "CodeURL": __codeurl__,
        "Description": EXPORT_NOTE}]
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
