"""Benchmark the progress of a participant-level run: when the images' lines come, and how
good the first time-left estimate is.

Usage::

    python benchmarks/progress.py [--images 10] [--nprocs 2] [--reface cgan]
                                  [--heads /work/shared/heads/ixi] [--keep DIR]

The dataset has one T1w per participant, the first *images* real IXI heads of the shared
folder (2 mm), copied into a BIDS dataset in a temporary folder. ``bidsreface bids out
participant --nprocs N`` runs as a child process (the code on ``PYTHONPATH``, so that two
versions can be compared); every stderr line is stamped as it comes. Reported:

- one image alone: the wall time of a run of the first participant only (same settings);
- the first image's line: when the first ``[k/N]`` line came, and its ratio to one image
  alone (the issue's target: within 3x);
- the time left printed on the first line at or after 10 % of the images, against the true
  time left (the run's end minus that line's time; target: within 30 %);
- the wall time of the whole run, and when each line came.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

IXI = Path(__file__).resolve().parents[2] / "shared" / "heads" / "ixi"
LINE = re.compile(r"^bidsreface: \[(\d+)/(\d+)\] (.*?): (ok|failed)")
LEFT = re.compile(r"about ((?:(\d+) h )?(\d+) (s|min)) left")


def build_dataset(heads: Path, root: Path, n_images: int) -> Path:
    """``root/bids``: one T1w per participant, the first *n_images* heads (sorted)."""
    files = sorted(heads.glob("IXI*_T1w.nii.gz"))[:n_images]
    if len(files) < n_images:
        raise SystemExit(f"{heads} has {len(files)} heads, fewer than {n_images}")
    bids = root / "bids"
    rows = ["participant_id\tsource"]
    for index, path in enumerate(files, start=1):
        label = f"{index:02d}"
        anat = bids / f"sub-{label}" / "anat"
        anat.mkdir(parents=True)
        shutil.copyfile(path, anat / f"sub-{label}_T1w.nii.gz")
        rows.append(f"sub-{label}\t{path.name.split('_')[0]}")
    (bids / "participants.tsv").write_text("\n".join(rows) + "\n")
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "bidsreface progress benchmark", "BIDSVersion": "1.9.0",
         "DatasetType": "raw"}))
    (bids / "README").write_text("Real IXI heads (2 mm), one per participant.\n")
    return bids


def left_seconds(line: str) -> float | None:
    """The time left a progress line prints, in seconds (None: it prints none).

    >>> left_seconds("bidsreface: [1/10] sub-01 T1w: ok, 40 s; about 6 min left")
    360.0
    >>> left_seconds("bidsreface: [2/10] sub-02 T1w: ok, 40 s; about 1 h 05 min left")
    3900.0
    """
    found = LEFT.search(line)
    if not found:
        return None
    hours, value, unit = int(found.group(2) or 0), int(found.group(3)), found.group(4)
    return float(hours * 3600 + value * (60 if unit == "min" else 1))


def timed_lines(command: list[str], log: Path) -> tuple[float, list[tuple[float, str]], int]:
    """Run *command*; return its wall time, its stderr lines with the seconds from the start
    at which each came, and its exit code (everything also written to *log*)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, bufsize=1)
    lines: list[tuple[float, str]] = []

    def read():
        for line in proc.stderr:
            lines.append((time.perf_counter() - start, line.rstrip("\n")))

    reader = threading.Thread(target=read)
    reader.start()
    proc.wait()
    reader.join()
    seconds = time.perf_counter() - start
    log.write_text("".join(f"{t:8.1f} {line}\n" for t, line in lines))
    return seconds, lines, proc.returncode


def load() -> str:
    """The machine's load averages (1, 5, 15 min)."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--reface", default="cgan", choices=("cgan", "template", "none"))
    parser.add_argument("--heads", type=Path, default=IXI)
    parser.add_argument("--keep", type=Path, help="build and run here, and keep it")
    opts = parser.parse_args(argv)

    bidsreface = str(Path(sys.executable).with_name("bidsreface"))
    print(f"code: {os.environ.get('PYTHONPATH', '(installed)')}; "
          f"{os.cpu_count()} CPUs; load before: {load()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = opts.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        bids = build_dataset(opts.heads, root, opts.images)

        def command(name: str, *extra: str) -> list[str]:
            return [bidsreface, str(bids), str(root / f"out_{name}"), "participant",
                    "--nprocs", str(opts.nprocs), "-w", str(root / f"work_{name}"),
                    "--reface", opts.reface, *extra]

        print("command:", " ".join(command("all")[1:]).replace(str(root), "<tmp>"))
        alone, _, code = timed_lines(command("one", "--participant-label", "01"),
                                     root / "one.log")
        print(f"one image alone: {alone:.1f} s (exit code {code})")

        total, lines, code = timed_lines(command("all"), root / "all.log")
        progress = [(t, line, LINE.match(line)) for t, line in lines]
        progress = [(t, line, int(m.group(1))) for t, line, m in progress if m]
        print(f"whole run: {total:.1f} s for {opts.images} images (exit code {code}); "
              f"{len(progress)} progress lines")
        if not progress:
            print("no progress line: nothing to measure")
            return 1
        first_t = progress[0][0]
        print(f"first image's line after {first_t:.1f} s: {first_t / alone:.2f}x one image "
              f"alone (target <= 3x)")
        tenth = math.ceil(0.1 * opts.images)
        at, line, done = next((p for p in progress if p[2] >= tenth), progress[-1])
        estimate, truth = left_seconds(line), total - at
        if estimate is None:
            print(f"line {done}/{opts.images} (at {at:.1f} s) prints no time left")
        else:
            error = (estimate - truth) / truth if truth > 0 else float("nan")
            print(f"time left printed at {done}/{opts.images} images ({at:.1f} s): "
                  f"{estimate:.0f} s; true time left {truth:.1f} s; error {100 * error:+.0f}% "
                  f"(target within 30%)")
        print("lines at (s): " + ", ".join(f"{t:.0f}" for t, _, _ in progress))
        print(f"load after: {load()}")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
