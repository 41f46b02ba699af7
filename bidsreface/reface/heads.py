"""Real heads defaced by the project's own defacer, for training and validating refacing.

:func:`deface_head` does to one head what the participant workflow does to a T1w (the same
functions: template registration with its SyN-refined brain distance, the image's own brain
mask, the face mask guarded by both brains, the defaced image), without the QC and reports,
and keeps what refacing needs: the registration matrix, the brain mask, the deface mask and
the defaced image. :func:`deface_heads` runs it over many heads in parallel and lists them in
a table that ``bidsreface-train`` reads (columns :data:`COLUMNS`).
"""

from __future__ import annotations

import csv
import logging
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

LOGGER = logging.getLogger(__name__)
COLUMNS = ("name", "image", "matrix", "mask", "brain", "defaced")


def head_key(path: Path) -> str:
    """A folder name for a head file.

    >>> head_key(Path("/x/IXI002-Guys-0828_T1w.nii.gz"))
    'IXI002-Guys-0828_T1w'
    """
    return re.sub(r"[^A-Za-z0-9_-]", "_", Path(path).name.split(".nii")[0])


def deface_head(path: Path, out_dir: Path, *, seed: int = 0) -> dict:
    """Register, brain-mask and deface one head into ``out_dir``; a row of :data:`COLUMNS`
    (or ``{"name", "image", "error"}`` when the head fails a check)."""
    import nibabel as nb

    from ..deface.pipeline import brain_mask_file, deface_file, register_file
    from ..errors import ImageError

    out_dir.mkdir(parents=True, exist_ok=True)
    row = {"name": Path(path).name, "image": Path(path)}
    done = {k: out_dir / f for k, f in (("matrix", "matrix.txt"), ("mask", "defacemask.nii.gz"),
                                        ("brain", "brain_mask.nii.gz"),
                                        ("defaced", "defaced.nii.gz"))}
    if all(p.exists() for p in done.values()):
        return {**row, **done}
    try:
        reg, distance = register_file(str(path), seed=seed)
        brain_file, _ = brain_mask_file(str(path), out_dir)
        brain = np.asarray(nb.load(brain_file).dataobj) > 0
        deface_file(str(path), reg.matrix, out_dir, brain_distance=distance, own_brain=brain)
    except (ImageError, ValueError, RuntimeError) as err:
        return {**row, "error": str(err).splitlines()[0]}
    np.savetxt(done["matrix"], reg.matrix)
    return {**row, **done}


def head_region_row(row: dict, *, margin_mm: float = 5.0) -> dict:
    """A defaced head's row with the whole non-brain head as its region: the deface mask of
    ``--reface-region head`` made from the kept registration and brain mask, written beside
    them (``headmask.nii.gz``), and the image defaced by it (``headdefaced.nii.gz``). The
    template brain's guard is the affine one (the SyN refinement of the first defacing is not
    kept), the own brain grown by ``margin_mm`` guards as in the App, and the row's face mask
    (guarded through the SyN refinement) is added: near the nasion the affine guard alone
    keeps part of the face."""
    import nibabel as nb

    from ..deface.mask import face_mask
    from ..deface.pipeline import write_defaced
    from ..deface.template import load_template
    from ..image import load_image

    out = Path(row["mask"]).with_name("headmask.nii.gz")
    defaced = out.with_name("headdefaced.nii.gz")
    if not (out.exists() and defaced.exists()):
        img = load_image(row["image"])
        brain = np.asarray(nb.load(row["brain"]).dataobj).reshape(img.shape[:3]) > 0
        mask, _ = face_mask(img.shape[:3], img.affine, np.loadtxt(row["matrix"]),
                            load_template(), head=True, brain_margin_mm=margin_mm,
                            own_brain=brain)
        mask |= np.asarray(nb.load(row["mask"]).dataobj).reshape(mask.shape) > 0
        write_defaced(row["image"], mask, defaced, out)
    return {**row, "mask": out, "defaced": defaced}


def _one(args):
    path, out_dir, seed = args
    return deface_head(path, out_dir, seed=seed)


def deface_heads(paths: list[Path], root: Path, *, nprocs: int = 1, seed: int = 0,
                 ) -> list[dict]:
    """:func:`deface_head` for every head, ``nprocs`` at a time, into ``root/<key>/``; the
    rows (failed heads carry ``error``), also written to ``root/heads.tsv`` (ok heads)."""
    jobs = [(Path(p), Path(root) / head_key(p), seed) for p in paths]
    if nprocs > 1:
        with ProcessPoolExecutor(nprocs) as pool:
            rows = list(pool.map(_one, jobs))
    else:
        rows = [_one(job) for job in jobs]
    for row in rows:
        if "error" in row:
            LOGGER.warning("%s: %s", row["image"], row["error"])
    write_table([r for r in rows if "error" not in r], Path(root) / "heads.tsv")
    return rows


def write_table(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([row[k] for k in COLUMNS])
