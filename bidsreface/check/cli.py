"""``bidsreface-check DATASET [--out DIR] [--nprocs N] [--show-faces] [--remnants]``.

Exit codes: 0 nothing identifying was found and every file was checked, 1 something
identifying was found (or some file could not be checked: nothing says it is safe), 2 usage
error (nothing was checked).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..errors import UsageError

PROG = "bidsreface-check"


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog=PROG, description="Is this dataset safe to share? Finds every face and every "
        "identifying field of a BIDS dataset, without writing into it.")
    parser.add_argument("dataset", type=Path, help="the dataset's root folder")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for findings.tsv and check.html, outside the dataset "
                        "(default: ./bidsreface-check-<dataset name>)")
    parser.add_argument("--nprocs", type=int, default=_cpus(),
                        help="images checked side by side (default: the CPUs available, "
                        "%(default)s)")
    parser.add_argument("--show-faces", action="store_true",
                        help="put the render of each face found in check.html (identifying: "
                        "do not share the page)")
    parser.add_argument("--remnants", action="store_true",
                        help="also flag heads in which part of a face is left (a weak "
                        "defacing: face-remnant); it flags some properly defaced heads too")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


def output_folder(dataset: Path, out: Path | None) -> Path:
    """The folder the answer is written to; raise :class:`UsageError` when it lies inside the
    dataset or holds anything but an earlier answer.

    >>> output_folder(Path("/data/ds001"), Path("/tmp/x")).as_posix()
    '/tmp/x'
    >>> output_folder(Path("/data/ds001"), Path("/data/ds001/derivatives/check"))
    Traceback (most recent call last):
    ...
    bidsreface.errors.UsageError: --out /data/ds001/derivatives/check is inside the dataset \
/data/ds001: the check never writes into it; give --out
    """
    default = out is None
    if default:
        out = Path.cwd() / f"{PROG}-{dataset.name}"
    out = Path(os.path.abspath(out))
    real = Path(os.path.realpath(out))
    if real == dataset or dataset in real.parents or out == dataset or dataset in out.parents:
        raise UsageError(f"--out {out}{' (the default)' if default else ''} is inside the "
                         f"dataset {dataset}: the check never writes into it; give --out")
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"--out {out} exists and is not a folder")
        others = [p.name for p in out.iterdir() if p.name not in ("findings.tsv", "check.html")]
        if others:
            raise UsageError(f"--out {out} holds other files than an earlier answer "
                             f"({others[0]}...); give a new or empty folder")
    return out


def progress_line(done: int, total: int, verdict) -> str:
    """``bidsreface-check: [12/152] sub-012 T1w: face (score 1.02, frontal)``.

    >>> from bidsreface.check.images import ImageVerdict
    >>> progress_line(12, 152, ImageVerdict("sub-012/anat/sub-012_T1w.nii.gz", "face", 1.02,
    ...                                     "frontal"))
    'bidsreface-check: [12/152] sub-012 T1w: face (score 1.02, frontal)'
    """
    label = verdict.path.rsplit("/", 1)[-1].split(".")[0].replace("_", " ")
    evidence = verdict.evidence
    return (f"{PROG}: [{done}/{total}] {label}: {verdict.verdict}"
            + (f" ({evidence})" if evidence else ""))


def main(argv: list[str] | None = None) -> int:
    """Run the check; return the exit code."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help, --version (0) or a usage error (2)
        return int(exc.code or 0)
    from . import check_dataset
    from .metadata import dataset_files, is_nifti
    from .report import summary_lines, write_answer

    try:
        dataset = Path(os.path.realpath(args.dataset))
        if not dataset.is_dir():
            raise UsageError(f"{args.dataset}: not a folder")
        if args.nprocs < 1:
            raise UsageError(f"--nprocs {args.nprocs}: give 1 or more")
        out = output_folder(dataset, args.out)
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    total = sum(1 for f in dataset_files(dataset) if is_nifti(f))
    done = 0
    start = time.monotonic()

    def on_image(verdict) -> None:
        nonlocal done
        done += 1
        print(progress_line(done, total, verdict), file=sys.stderr, flush=True)

    result = check_dataset(dataset, nprocs=args.nprocs, keep_renders=args.show_faces,
                           on_image=on_image, remnants=args.remnants)
    tsv, page = write_answer(out, dataset, result.findings, images=result.images,
                             files=result.files,
                             renders=result.renders if args.show_faces else None)
    for line in summary_lines(result.findings):
        print(f"{PROG}: {line}", file=sys.stderr)
    seconds = time.monotonic() - start
    if result.identifying:
        answer = f"NOT safe to share: {len(result.identifying)} identifying finding(s)"
    elif result.unchecked:
        answer = (f"not known: nothing identifying found, but {len(result.unchecked)} "
                  "file(s) could not be checked")
    else:
        answer = "nothing identifying found"
    print(f"{PROG}: {answer} ({result.images} images, {result.files} files, {seconds:.0f} s); "
          f"see {page} and {tsv}", file=sys.stderr)
    return 1 if result.identifying or result.unchecked else 0


if __name__ == "__main__":
    sys.exit(main())
