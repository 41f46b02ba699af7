"""Benchmark ``bidsreface-check`` on the real heads of ``../shared/heads``.

Usage::

    python benchmarks/check.py [HEADS] [--nprocs 2] [--limit N] [--deface weak|none]
                               [--shift-mm X,Y,Z] [--validation] [--remnants] [--reference]

The heads (145 IXI T1w at 2 mm, ``ixi/``; the 7 scans of two more people at 0.88 to 2 mm,
``other/``) become a BIDS dataset in a temporary folder (removed afterwards): ``sub-<IXI id>``
with ``participants.tsv`` (age, sex), and ``sub-R``/``sub-X`` with one session per scan
(``--validation``: only the validation people of the packaged models, which the face-remnant
model of the check was not fitted on).
With ``--deface none`` (the default) the images are symbolic links to the originals. With
``--deface weak`` each image is a copy defaced by the template's face mask placed by a
deliberately weak registration: a translation that matches the centres of mass of the
template's head and the image, no rotation and no scaling, moved by ``--shift-mm`` (RAS mm:
``0,0,15`` moves the mask up and leaves the lower face, ``0,0,-15`` down, ``0,15,0``
forwards, ``20,0,0`` to the subject's left). Printed per image: the share of the head
voxels of the unshifted mask that the shifted one leaves ("face left").

:func:`bidsreface.check.check_dataset` then runs on it with ``--nprocs`` processes. Printed:
images per minute (wall time of the whole check, metadata included), the peak resident
memory of the main process and of the largest worker, the verdict counts, and every image
that is not flagged with a face (whole, or in part: ``face-remnant``), by file. With
``--reference`` each such miss is also rendered as the re-identification audit renders
originals (registered to the template, frontal; :func:`bidsreface.qc.audit.face_of`): a miss
whose audit render shows a face is a miss of the check, one whose render shows none is not
counted against it.

Nothing derived from a face is written: renders and detections stay in memory.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

IMAGE_KINDS = ("face", "face-remnant", "face-in-deidentified", "generated-face", "no-face",
               "not-a-head", "unreadable", "not-present")
#: Verdicts that flag an image: a face, whole or in part.
FLAGGED = ("face", "face-remnant", "face-in-deidentified")
DEFAULT_HEADS = Path(__file__).resolve().parents[2] / "shared" / "heads"
#: Other heads: file -> (participant, session).
OTHER = {
    "rorden_trio_b17_T1w_mprage.nii.gz": ("R", "1"),
    "dcm_qa_asl_T1w_mprage_chris.nii.gz": ("R", "2"),
    "chris_t1_niivue.nii.gz": ("R", "3"),
    "brainchop_t1_crop.nii.gz": ("R", "4"),
    "dcm_qa_decubitus_HFS_T1w_2d.nii.gz": ("R", "5"),
    "dcm_qa_xa30_T1w_2mm_s5.nii.gz": ("X", "1"),
    "dcm_qa_xa30_T1w_2mm_s6.nii.gz": ("X", "2"),
}


def validation_heads(heads: Path) -> set[str]:
    """File names of the validation people of the packaged models (``scripts/build_model.py``,
    ``split_people``): every fourth IXI person and the people of ``other/``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from build_model import split_people

    return {path.name for path in split_people(heads)[1]}


def heads_of(heads: Path, limit: int | None, only: set[str] | None = None
             ) -> list[tuple[Path, str]]:
    """(source, BIDS relative path) of every head (whose file name is in *only*, when given),
    IXI first."""
    out = []
    ixi = [p for p in sorted((heads / "ixi").glob("*.nii.gz")) if only is None or p.name in only]
    for path in ixi[:limit]:
        label = path.name.split("_")[0].replace("-", "")
        out.append((path, f"sub-{label}/anat/sub-{label}_T1w.nii.gz"))
    for name, (sub, ses) in OTHER.items():
        if (heads / "other" / name).is_file():
            out.append((heads / "other" / name,
                        f"sub-{sub}/ses-{ses}/anat/sub-{sub}_ses-{ses}_T1w.nii.gz"))
    return out


def weak_matrix(data, affine, template, shift_mm=(0.0, 0.0, 0.0)):
    """Template mm -> native mm: centres of mass matched, moved by *shift_mm* (RAS)."""
    import numpy as np
    from scipy import ndimage

    def centre(values, aff):
        return aff[:3, :3] @ np.array(ndimage.center_of_mass(np.clip(values, 0, None))) \
            + aff[:3, 3]

    matrix = np.eye(4)
    matrix[:3, 3] = centre(data, affine) - centre(template.head.astype(float), template.affine)
    matrix[:3, 3] += np.asarray(shift_mm, dtype=float)
    return matrix


def weak_deface(source: Path, target: Path, shift_mm) -> float:
    """*source* defaced by the template's face mask on a weak registration, to *target*;
    returns the share of the head voxels of the unshifted mask that are left."""
    import nibabel as nb
    import numpy as np

    from bidsreface.deface.mask import face_mask
    from bidsreface.deface.pipeline import write_defaced
    from bidsreface.deface.template import load_template

    img = nb.load(source)
    data = np.asarray(img.dataobj, dtype=np.float32).reshape(img.shape[:3])
    template = load_template()
    mask, _ = face_mask(img.shape[:3], img.affine, weak_matrix(data, img.affine, template,
                                                               shift_mm), template)
    unshifted, _ = face_mask(img.shape[:3], img.affine, weak_matrix(data, img.affine, template),
                             template)
    write_defaced(source, mask, target, target.with_name("mask.nii.gz"))
    target.with_name("mask.nii.gz").unlink()
    from bidsreface.qc.render import head_threshold

    head = unshifted & (data > head_threshold(data))
    return float((head & ~mask).sum() / max(head.sum(), 1))


def build(root: Path, heads: Path, limit: int | None, deface: str, shift_mm=(0, 0, 0),
          left: dict | None = None, only: set[str] | None = None) -> dict:
    """Write the dataset; return {relative path: source}. *left* gets the share of the face
    left in each weakly defaced image."""
    import json

    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "shared heads", "BIDSVersion": "1.9.0"}))
    ages = {}
    with open(heads / "ixi" / "participants.tsv") as fobj:
        for row in csv.DictReader(fobj, delimiter="\t"):
            ages[row["ixi_id"].replace("-", "")] = (row["age"], row["sex"])
    sources, rows = {}, ["participant_id\tage\tsex"]
    for source, rel in heads_of(heads, limit, only):
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if deface == "weak":
            share = weak_deface(source, target, shift_mm)
            if left is not None:
                left[rel] = share
        else:
            target.symlink_to(source)
        sources[rel] = source
        sub = rel.split("/")[0]
        if f"{sub}\t" not in "".join(rows):
            age, sex = ages.get(sub[4:], ("n/a", "n/a"))
            rows.append(f"{sub}\t{age}\t{sex}")
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return sources


def voxel_mm(path: Path) -> float:
    """The smallest voxel side of an image (mm)."""
    import nibabel as nb

    return float(min(nb.load(path).header.get_zooms()[:3]))


class PeakMemory:
    """Peak resident memory (``VmHWM``) of this process and of every process below it (the
    forkserver's workers are its grandchildren), sampled every *every* seconds."""

    def __init__(self, every: float = 0.2):
        import threading

        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self._sample()

    def _sample(self) -> None:
        import os

        parents, peaks = {}, {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            parents[int(entry)] = int(fields.get("PPid", "0"))
            if "VmHWM" in fields:
                peaks[int(entry)] = int(fields["VmHWM"].split()[0]) * 1024
        me = os.getpid()
        for pid, peak in peaks.items():
            ancestor = pid
            while ancestor not in (0, 1, me) and ancestor in parents:
                ancestor = parents[ancestor]
            if ancestor == me:
                self.peaks[pid] = max(self.peaks.get(pid, 0), peak)

    def report(self) -> str:
        import os

        me = os.getpid()
        others = [v for pid, v in self.peaks.items() if pid != me]
        return (f"main {self.peaks.get(me, 0) / 1e9:.2f} GB, largest other process "
                f"{max(others, default=0) / 1e9:.2f} GB, all processes together at most "
                f"{sum(self.peaks.values()) / 1e9:.2f} GB")


def audit_face(path: Path) -> bool:
    """Whether the audit's frontal render of the registered original shows a face."""
    from bidsreface.deface.pipeline import register_file
    from bidsreface.qc.audit import face_of

    reg, _ = register_file(str(path))
    return face_of(path, reg.matrix) is not None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("heads", nargs="?", type=Path, default=DEFAULT_HEADS)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="IXI heads to use (all)")
    parser.add_argument("--deface", choices=("none", "weak"), default="none")
    parser.add_argument("--shift-mm", default="0,0,15",
                        help="RAS shift of the weak registration (default: %(default)s)")
    parser.add_argument("--remnants", action="store_true",
                        help="also score heads with no whole face for a face left in part "
                             "(bidsreface-check --remnants)")
    parser.add_argument("--validation", action="store_true",
                        help="only the validation people of the packaged models (the remnant "
                             "model never saw them)")
    parser.add_argument("--reference", action="store_true",
                        help="render each miss as the audit does (registration: slow)")
    args = parser.parse_args(argv)
    from bidsreface.check import check_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "heads"
        started = time.monotonic()
        shift = tuple(float(v) for v in args.shift_mm.split(","))
        left: dict[str, float] = {}
        only = validation_heads(args.heads) if args.validation else None
        sources = build(root, args.heads, args.limit, args.deface, shift, left, only)
        built = time.monotonic() - started
        cpu = []
        started = time.monotonic()
        load = os.getloadavg()[0]
        with PeakMemory() as memory:
            result = check_dataset(root, nprocs=args.nprocs, remnants=args.remnants,
                                   on_image=lambda v: cpu.append((v.path, v.cpu_s)))
        seconds = time.monotonic() - started
        load = max(load, os.getloadavg()[0])
    images = [f for f in result.findings if f.file in sources and f.kind in IMAGE_KINDS]
    verdicts = Counter(f.kind for f in images)
    print(f"dataset: {len(sources)} images ({args.deface} deface"
          + (", validation people" if args.validation else "")
          + (", face remnants scored" if args.remnants else "")
          + (f", shift {args.shift_mm} mm" if args.deface == "weak" else "")
          + f"), built in {built:.0f} s")
    print(f"check: {seconds:.1f} s on {args.nprocs} processes: "
          f"{len(sources) / seconds * 60:.1f} images/min, {seconds / len(sources):.2f} s per "
          f"image")
    print(f"load average on this machine during the check: {load:.1f}")
    for label, fine in (("all", None), ("finer than 1.5 mm", True), ("1.5 mm or coarser", False)):
        seconds_of = [s for path, s in cpu if fine is None or fine == (voxel_mm(
            sources[path]) < 1.5)]
        if seconds_of:
            mean = statistics.mean(seconds_of)
            print(f"CPU seconds per image, {label} ({len(seconds_of)}): median "
                  f"{statistics.median(seconds_of):.2f}, mean {mean:.2f}, max "
                  f"{max(seconds_of):.2f}; {args.nprocs * 60 / mean:.1f} images/min on "
                  f"{args.nprocs} idle cores")
    print(f"peak memory: {memory.report()}")
    print("verdicts: " + ", ".join(f"{k} {n}" for k, n in sorted(verdicts.items())))
    print("findings: " + ", ".join(f"{k} {n}" for k, n in sorted(
        Counter(f.kind for f in result.findings if f.kind not in IMAGE_KINDS).items())))
    flagged = sum(n for k, n in verdicts.items() if k in FLAGGED)
    print(f"flagged with a face, whole or in part: {flagged}/{len(sources)} "
          f"({100 * flagged / len(sources):.1f} %; part of a face left: "
          f"{verdicts['face-remnant']})")
    if left:
        found = {f.file for f in images if f.kind in FLAGGED}
        shares = sorted(left.values())
        print(f"face left (share of the unshifted mask's head voxels): median "
              f"{statistics.median(shares):.2f}, range {shares[0]:.2f}-{shares[-1]:.2f}")
        for lo, hi in ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.01)):
            group = [rel for rel, share in left.items() if lo <= share < hi]
            if group:
                print(f"  face left {lo:.2f}-{min(hi, 1):.2f}: {sum(r in found for r in group)}"
                      f"/{len(group)} flagged")
    for f in images:
        if left and f.kind in FLAGGED:
            print(f"  flagged: {f.file}: {f.evidence}; face left {left[f.file]:.2f}")
    misses = [] if left else [f for f in images
                              if f.kind not in FLAGGED]
    counted = 0
    for f in misses:
        line = f"  not flagged: {f.file} ({sources[f.file].name}): {f.kind}, {f.evidence}"
        if args.reference and args.deface == "none":
            shown = audit_face(sources[f.file])
            counted += shown
            line += f"; audit render shows a face: {'yes' if shown else 'no'}"
        print(line)
    if args.reference and args.deface == "none":
        reference = len(sources) - (len(misses) - counted)
        print(f"flagged of the images whose audit render shows a face: {flagged}/{reference} "
              f"({100 * flagged / max(reference, 1):.1f} %)")
    errors = sum(n for k, n in verdicts.items() if k in ("unreadable", "not-present"))
    print(f"errors: {errors}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
