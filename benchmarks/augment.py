"""Compare the training's own augmentation with MONAI's transforms, on real training heads.

Usage::

    pip install monai==1.6.1   # not a dependency of bidsreface
    python scripts/build_model.py --heads ../shared/heads --prior-only   # makes WORK below
    python benchmarks/augment.py [--work .cache/model] [--samples 20] [--heads 8]

The heads are the training heads of ``scripts/build_model.py`` carried into the packaged
model's box (``WORK/heads/heads.tsv``, cached in ``WORK/run/pairs``). Each augmented head is
made once by ``bidsreface.reface.augment.augment_head`` (a smooth random displacement and a
small rotation and shift, warping the head and its masks with one field; gamma, scale, a
smooth bias field and noise on the head) and once by the nearest MONAI pipeline:
``Rand3DElasticd`` on every key (its rotation and shift ranges the same), then
``RandAdjustContrastd``, ``RandScaleIntensityd``, ``RandBiasFieldd`` and
``RandGaussianNoised`` on the head. Reported: seconds per augmented head (median of
``--samples``) and what each does at the box's edge where the field pulls from outside it:
the share of the edge's tissue voxels made air, and the share kept tissue. MONAI's field:
Gaussian sigma 4-6 voxels, magnitude up to 150 (its own units).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(".cache/model"))
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--heads", type=int, default=8)
    args = parser.parse_args(argv)
    import torch

    try:
        from monai import transforms as mt
    except ImportError:
        print("needs MONAI: pip install monai==1.6.1 (not a dependency of bidsreface)")
        return 2
    from bidsreface.reface.augment import AugmentSettings, augment_head
    from bidsreface.reface.train import cached_heads, find_inputs
    from bidsreface.reface.weights import load_packaged_model

    torch.set_num_threads(2)
    table = args.work / "heads" / "heads.tsv"
    if not table.exists():
        print(f"{table}: no training heads; run scripts/build_model.py --prior-only first")
        return 2
    model = load_packaged_model("T1w")
    heads = find_inputs([str(table)])[: args.heads]
    pairs = cached_heads(heads, model.box, args.work / "run" / "pairs",
                         seed=int(model.training.get("seed", 1)))
    keys = ("original", "brain", "region", "fov")
    tensors = [{k: torch.from_numpy(np.asarray(getattr(p, k), np.float32)) for k in keys}
               for p in pairs]
    s = AugmentSettings()
    rad = math.radians(s.jitter_deg)
    monai = mt.Compose([
        mt.Rand3DElasticd(keys=keys, sigma_range=(4.0, 6.0), magnitude_range=(0.0, 150.0),
                          prob=1.0, rotate_range=(rad, rad, rad),
                          translate_range=(s.jitter_vox,) * 3, mode="bilinear",
                          padding_mode=("border", "zeros", "zeros", "zeros")),
        mt.ScaleIntensityRanged(keys="original", a_min=-1.0, a_max=1.0, b_min=0.0, b_max=1.0),
        mt.RandAdjustContrastd(keys="original", prob=1.0, gamma=s.gamma),
        mt.RandScaleIntensityd(keys="original", prob=1.0,
                               factors=(s.scale[0] - 1, s.scale[1] - 1)),
        mt.RandBiasFieldd(keys="original", prob=1.0, coeff_range=(0.0, 0.1)),
        mt.RandGaussianNoised(keys="original", prob=1.0, std=s.noise[1]),
        mt.ScaleIntensityRanged(keys="original", a_min=0.0, a_max=1.0, b_min=-1.0, b_max=1.0,
                                clip=True),
    ])
    monai.set_random_state(seed=0)
    gen = torch.Generator().manual_seed(0)

    def ours(pair):
        return augment_head(pair, s, gen)

    def theirs(pair):
        out = monai({k: v[None] for k, v in pair.items()})
        return {k: torch.as_tensor(out[k])[0] for k in keys}

    print(f"{len(tensors)} training heads on the box {model.box.shape} at "
          f"{model.box.spacing} mm; {args.samples} augmented heads each way; torch threads 2")
    print(f"{'augmentation':<12}{'s per head':>11}{'edge: air':>11}{'edge: as inside':>17}")
    for label, fn in (("ours", ours), ("MONAI", theirs)):
        seconds, air, kept = [], [], []
        for i in range(args.samples):
            pair = tensors[i % len(tensors)]
            start = time.perf_counter()
            out = fn(pair)
            seconds.append(time.perf_counter() - start)
            # the outermost layer of the box, where the original holds tissue: made air, or
            # kept near the tissue value
            edge = torch.ones_like(pair["original"], dtype=torch.bool)
            edge[1:-1, 1:-1, 1:-1] = False
            tissue = edge & (pair["original"] > -0.5)
            if tissue.any():
                air.append(float((out["original"][tissue] < -0.9).float().mean()))
                kept.append(float((out["original"][tissue] > -0.5).float().mean()))
        print(f"{label:<12}{statistics.median(seconds):>11.3f}"
              f"{statistics.median(air):>11.3f}{statistics.median(kept):>17.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
