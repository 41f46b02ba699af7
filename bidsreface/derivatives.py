"""Write the derivatives of one image, checked and atomically; the QC record comes last."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import nibabel as nb
import numpy as np

from . import __version__
from .bids import AnatImage, derivative_path, temporary_path, write_json_atomic, write_sidecar
from .dates import dates_key
from .image import changed_voxels, header_identifiers, read_header, scaling


def qc_path(output_dir: Path, image: AnatImage) -> Path:
    """The per-image record whose presence marks the image's outputs complete."""
    return derivative_path(output_dir, image, desc="qc", extension=".json")


#: The reportlets of an image (the ``desc`` of their files); see :mod:`bidsreface.qc.reportlets`.
FIGURES = ("defacedmosaic", "defacedrender", "refacedmosaic", "refacedrender")


def figure_path(output_dir: Path, image: AnatImage, name: str) -> Path:
    """Where reportlet *name* of an image goes: ``sub-<label>/figures/<stem>_desc-<name>``.

    >>> img = AnatImage.from_path("/raw/sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz")
    >>> figure_path(Path("/out"), img, "defacedrender").as_posix()
    '/out/sub-01/figures/sub-01_ses-1_desc-defacedrender_T1w.png'
    """
    name = derivative_path(Path(output_dir), image, desc=name, extension=".png").name
    return Path(output_dir) / f"sub-{image.subject}" / "figures" / name


def failure_path(output_dir: Path, image: AnatImage) -> Path:
    """Where a failed image's reason is recorded (never beside real outputs)."""
    return Path(output_dir) / f"sub-{image.subject}" / "log" / (
        image.path.name.split(".")[0] + "_failed.json")


def verify_defaced(raw_file: str | Path, defaced_file: str | Path, mask: np.ndarray,
                   kind: str = "defaced") -> dict:
    """Check a de-identified image against its input; raise if anything outside the mask
    changed, as stored or as read (scaled), or if its grid, dtype or scaling differ (``kind``
    names the output in the message)."""
    raw, out = nb.load(raw_file), nb.load(defaced_file)
    problems = []
    if raw.shape != out.shape:
        problems.append(f"shape {out.shape} != {raw.shape}")
    if raw.get_data_dtype() != out.get_data_dtype():
        problems.append(f"dtype {out.get_data_dtype()} != {raw.get_data_dtype()}")
    if not np.array_equal(raw.affine, out.affine):
        problems.append("affine differs")
    raw_scaling, out_scaling = scaling(read_header(raw_file)), scaling(read_header(defaced_file))
    if raw_scaling != out_scaling:
        problems.append(f"scaling (slope, inter) {out_scaling} != {raw_scaling}")
    counts = changed_voxels(raw_file, defaced_file, mask) if raw.shape == out.shape else {}
    if counts.get("changed_outside_mask"):
        problems.append(f"{counts['changed_outside_mask_stored']} voxels changed outside the "
                        f"deface mask as stored, {counts['changed_outside_mask_values']} as "
                        f"read (scaled)")
    if problems:
        raise RuntimeError(f"{raw_file}: {kind} output failed verification: "
                           + "; ".join(problems))
    return counts


def header_record(raw_file: str | Path, out_file: str | Path, keep_extensions: bool) -> dict:
    """What the output's NIfTI header dropped from the input's; raise if an extension or a
    free-text field that should be gone is still there."""
    raw, out = header_identifiers(raw_file), header_identifiers(out_file)
    left = [field for field in out["text_fields"] if field != "descrip"]
    if not keep_extensions and out["extensions"]:
        left += [f"extension {ext['code']} ({ext['name']})" for ext in out["extensions"]]
    if left:
        raise RuntimeError(f"{out_file}: header still holds {', '.join(left)}")
    return {"extensions_removed": [] if keep_extensions else raw["extensions"],
            "extensions_kept": raw["extensions"] if keep_extensions else [],
            "text_fields_cleared": raw["text_fields"]}


def header_sidecar(record: dict) -> dict:
    """The sidecar's account of what the NIfTI header lost (see :func:`header_record`).

    >>> header_sidecar({"extensions_removed": [{"code": 4, "name": "afni"}],
    ...                 "extensions_kept": [], "text_fields_cleared": ["descrip"]})
    {'NiftiHeaderScrubbed': {'ExtensionsRemoved': ['4 (afni)'], 'FieldsCleared': ['descrip']}}
    """
    entry = {"ExtensionsRemoved": [f"{e['code']} ({e['name']})"
                                   for e in record["extensions_removed"]],
             "FieldsCleared": list(record["text_fields_cleared"])}
    if record["extensions_kept"]:
        entry["ExtensionsKept"] = [f"{e['code']} ({e['name']})" for e in record["extensions_kept"]]
    return {"NiftiHeaderScrubbed": entry}


def _copy_atomic(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(dst)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def write_image_outputs(image: AnatImage, output_dir: Path, *, defaced_file: str,
                        mask_file: str, registration: dict, mask_info: dict,
                        settings: dict, refaced_file: str | None = None,
                        reface_info: dict | None = None, qc: dict | None = None,
                        figures: list[str] | None = None,
                        fingerprint: str | None = None) -> dict:
    """Verify and write ``desc-defaced``, ``defacemask``, ``desc-refaced`` (when refaced),
    their sidecars, the reportlets, then the QC record.

    *qc* (the figures of :func:`bidsreface.qc.metrics.image_qc`) sets the record's status;
    *figures* are PNG files named ``<desc>.png`` (one of :data:`FIGURES`), copied to
    ``sub-<label>/figures``. *fingerprint* (:func:`bidsreface.resume.fingerprint`) lets a
    rerun skip the image while nothing it depends on changed.
    """
    output_dir = Path(output_dir)
    mask = np.asarray(nb.load(mask_file).dataobj) > 0
    checks = verify_defaced(image.path, defaced_file, mask)
    keep_extensions = bool(settings.get("keep_nifti_extensions", False))
    header = header_record(image.path, defaced_file, keep_extensions)
    if refaced_file is not None:
        refaced_checks = verify_defaced(image.path, refaced_file, mask, kind="refaced")
        checks["refaced_changed_outside_mask"] = refaced_checks["changed_outside_mask"]
        header_record(image.path, refaced_file, keep_extensions)
    defaced = derivative_path(output_dir, image, desc="defaced")
    mask_out = derivative_path(output_dir, image, mod=image.suffix, suffix="defacemask")
    _copy_atomic(Path(defaced_file), defaced)
    _copy_atomic(Path(mask_file), mask_out)
    rel = lambda p: p.relative_to(output_dir / f"sub-{image.subject}").as_posix()  # noqa: E731
    dates = {"dates": settings.get("dates", "keep")}
    if dates["dates"] == "shift":
        dates["key"] = dates_key(output_dir)
    write_sidecar(derivative_path(output_dir, image, desc="defaced", extension=".json"), image, {
        "Description": "Defaced by bidsreface: face-mask voxels set to background.",
        "DefaceMask": rel(mask_out),
        "DefacedBy": {"Name": "bidsreface", "Version": __version__},
        **header_sidecar(header),
    }, **dates)
    outputs = {"defaced": rel(defaced), "mask": rel(mask_out)}
    if refaced_file is not None:
        refaced = derivative_path(output_dir, image, desc="refaced")
        _copy_atomic(Path(refaced_file), refaced)
        write_sidecar(derivative_path(output_dir, image, desc="refaced", extension=".json"),
                      image, {**refaced_sidecar(reface_info or {}, rel(mask_out)),
                              **header_sidecar(header)}, **dates)
        outputs["refaced"] = rel(refaced)
    outputs["figures"] = _write_figures(output_dir, image, figures or [], rel)
    qc = qc or {}
    reasons = qc.get("reasons", [])
    record = {
        "source": image.relpath,
        "suffix": image.suffix,
        "status": "failed" if reasons else "ok",
        **({"reason": "; ".join(reasons)} if reasons else {}),
        "outputs": outputs,
        "registration": registration,
        "mask": mask_info,
        "reface": reface_info or {"reface_method": "none"},
        "checks": checks,
        "nifti_header": header,
        "qc": qc,
        "settings": settings,
        "version": __version__,
        **({"fingerprint": fingerprint} if fingerprint else {}),
    }
    failure_path(output_dir, image).unlink(missing_ok=True)
    write_json_atomic(qc_path(output_dir, image), record)
    return record


def _write_figures(output_dir: Path, image: AnatImage, figures: list[str], rel) -> dict:
    """Copy the reportlets into place (atomically), remove stale ones; ``{name: relpath}``."""
    written = {}
    for source in figures:
        name = Path(source).name.removesuffix(".png")
        if name not in FIGURES:
            raise ValueError(f"unknown reportlet {source}")
        target = figure_path(output_dir, image, name)
        _copy_atomic(Path(source), target)
        written[name] = rel(target)
    for name in set(FIGURES) - set(written):  # withheld now, or not made any more
        figure_path(output_dir, image, name).unlink(missing_ok=True)
    return written


def refaced_sidecar(info: dict, mask_rel: str) -> dict:
    """The fields a ``desc-refaced`` sidecar adds to the scrubbed raw one."""
    meta = {"DefaceMask": mask_rel,
            "RefacedBy": {"Name": "bidsreface", "Version": __version__,
                          "Method": info.get("reface_method")}}
    if info.get("reface_method") == "cgan":
        region = info.get("reface_region", "face")
        removed = ("the face" if region == "face"
                   else "the whole head outside the brain and its margin")
        meta["Description"] = (f"Defaced by bidsreface ({removed} removed), then the removed "
                               f"voxels filled by a 3D conditional GAN, the {region} drawn "
                               f"from the seed; every other voxel is the input's.")
        meta["RefacedBy"].update(Model=info.get("model"), ModelSHA256=info.get("model_sha256"),
                                 Seed=info.get("seed"), Region=region)
    elif info.get("reface_method") == "prior":
        meta["Description"] = ("Defaced by bidsreface, then the removed voxels filled with a "
                               "head drawn from a population prior by the seed, carried by the "
                               "registration and intensity-matched; every other voxel is the "
                               "input's.")
        meta["RefacedBy"].update(Model=info.get("model"), ModelSHA256=info.get("model_sha256"),
                                 Seed=info.get("seed"))
    else:
        meta["Description"] = ("Defaced by bidsreface, then the removed voxels filled with the "
                               "template's, carried by the registration and "
                               "intensity-matched; every other voxel is the input's.")
    return meta


def write_failure(image: AnatImage, output_dir: Path, reason: str) -> Path:
    """Record a failed image; remove any outputs of it left by an earlier run."""
    output_dir = Path(output_dir)
    for path in (qc_path(output_dir, image),
                 derivative_path(output_dir, image, desc="defaced"),
                 derivative_path(output_dir, image, desc="defaced", extension=".json"),
                 derivative_path(output_dir, image, desc="refaced"),
                 derivative_path(output_dir, image, desc="refaced", extension=".json"),
                 derivative_path(output_dir, image, mod=image.suffix, suffix="defacemask"),
                 *(figure_path(output_dir, image, name) for name in FIGURES)):
        path.unlink(missing_ok=True)
    target = failure_path(output_dir, image)
    write_json_atomic(target, {"source": image.relpath, "suffix": image.suffix,
                               "status": "failed", "reason": reason, "version": __version__})
    return target


def record_paths(output_dir: Path, subject: str | None = None) -> list[Path]:
    """The per-image records (completed and failed) under ``output_dir`` (of participant
    *subject* only, when given), sorted."""
    pattern = f"sub-{subject}/**/*.json" if subject is not None else "sub-*/**/*.json"
    return [path for path in sorted(Path(output_dir).glob(pattern))
            if path.name.endswith("_failed.json") or "_desc-qc_" in path.name]


def read_record(path: Path, output_dir: Path) -> dict | str:
    """The record at *path*, or why it cannot be read (one line: content not present, with
    the ``datalad get`` hint; not JSON; not a record)."""
    from .content import content_problem

    problem = content_problem(path, output_dir)
    if problem:
        return problem
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        return f"cannot be read ({err.__class__.__name__}: {err})"
    except json.JSONDecodeError as err:
        return f"not valid JSON ({err})"
    if not isinstance(record, dict) or not isinstance(record.get("source"), str):
        return "not a bidsreface record (no source)"
    return record


def read_records(output_dir: Path, subject: str | None = None) -> list[dict]:
    """Every readable per-image record (completed and failed) under ``output_dir`` (of
    participant *subject* only, when given); a record that cannot be read (an unfetched
    git-annex file, a damaged file) is skipped with one line on stderr."""
    records = []
    for path in record_paths(output_dir, subject):
        record = read_record(path, output_dir)
        if isinstance(record, str):
            print(f"bidsreface: {path}: record skipped: {record}", file=sys.stderr)
        else:
            records.append(record)
    return records
