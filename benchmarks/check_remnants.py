"""Can a second, more permissive face detector flag the face left by a weak defacing?

Usage::

    python benchmarks/check_remnants.py [HEADS] [--calibrate 10] [--report 11] [--nprocs 2]

dlib's CNN (MMOD) detector, which ``bidsreface-check`` uses, finds whole faces only, and its
Python call takes no threshold. dlib's HOG frontal detector does:
``get_frontal_face_detector().run(image, upsample, adjust_threshold)`` reports every window
scoring above *adjust_threshold*, negative ones included. This benchmark renders each head as
the check does (:data:`bidsreface.check.images.VIEWS`) and takes the best HOG score over the
views (with no upsampling and with one), for four versions of each of the first
``--calibrate + --report`` IXI heads of ``HEADS/ixi``:

- the original;
- properly defaced: bidsreface's own defacing (the registration to the template, its check,
  the brain guard: :func:`bidsreface.deface.pipeline.register_file` and
  :func:`~bidsreface.deface.pipeline.deface_file`);
- defaced by the template's face mask placed by centres of mass alone (``benchmarks/check.py
  --deface weak --shift-mm 0,0,0``);
- weakly defaced: the same mask moved 15 mm down, forwards, up, and 20 mm to either side
  (``--shift-mm``), with the share of the face it leaves.

A threshold is chosen on the first ``--calibrate`` heads (the smallest of a grid at which
no properly defaced image is flagged) and the rates are reported on the other ``--report``
heads, other people: false flags on properly defaced images, hits on weakly defaced ones.
For each threshold of the grid, both groups' rates are printed too.

Nothing derived from a face is written: the defaced copies live in a temporary folder,
renders stay in memory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import check as bench  # noqa: E402  (benchmarks/check.py: the weak defacing)

SHIFTS = ((0, 0, -15), (0, 15, 0), (0, 0, 15), (20, 0, 0), (-20, 0, 0))
THRESHOLDS = (-0.25, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
#: Lowest window score the HOG detector is asked for.
FLOOR = -1.5


def hog_scores(path: Path) -> tuple[float, float, bool]:
    """Best HOG score over the check's views (upsample 0, 1; ``FLOOR`` when none), and
    whether the check's own detector finds a face in a view."""
    import dlib

    from bidsreface.check.images import RENDER_SIZE, VIEWS, first_volume, view_matrix
    from bidsreface.qc.faces import as_rgb, detect_faces
    from bidsreface.qc.render import render_head

    hog = dlib.get_frontal_face_detector()
    data, affine, _ = first_volume(path)
    best, face = [FLOOR, FLOOR], False
    for _, view, turn, tilt in VIEWS:
        matrix = view_matrix(turn, tilt) if turn or tilt else None
        try:
            rgb = as_rgb(render_head(data, affine, view=view, size=RENDER_SIZE, matrix=matrix))
        except ValueError:
            continue
        face = face or bool(detect_faces(rgb))
        for upsample in (0, 1):
            _, scores, _ = hog.run(rgb, upsample, FLOOR)
            best[upsample] = max([best[upsample], *scores])
    return best[0], best[1], face


def one_head(source: Path) -> dict:
    """The scores of the four versions of one head."""
    from bidsreface.deface.pipeline import deface_file, register_file

    out = {"head": source.name.split("_")[0], "original": hog_scores(source), "weak": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        reg, distance = register_file(str(source))
        (tmp / "proper").mkdir()
        defaced, _, _ = deface_file(str(source), reg.matrix, tmp / "proper",
                                    brain_distance=distance)
        out["proper"] = hog_scores(defaced)
        target = tmp / "centres" / "x.nii.gz"
        target.parent.mkdir()
        bench.weak_deface(source, target, (0.0, 0.0, 0.0))
        out["centres"] = hog_scores(target)
        for i, shift in enumerate(SHIFTS):
            target = tmp / f"weak{i}" / "x.nii.gz"
            target.parent.mkdir()
            left = bench.weak_deface(source, target, shift)
            out["weak"].append((shift, left, hog_scores(target)))
    return out


def rates(heads: list[dict], which: int, threshold: float) -> dict[str, tuple[int, int]]:
    """(flagged, images) per group at *threshold* (score index *which*: 0 or 1 upsample)."""
    weak = [s for h in heads for _, _, s in h["weak"]]
    big = [s for h in heads for _, left, s in h["weak"] if left >= 0.25]
    groups = {"original": [h["original"] for h in heads],
              "proper": [h["proper"] for h in heads],
              "centres": [h["centres"] for h in heads],
              "weak": weak, "weak, face left >= 0.25": big}
    return {k: (sum(s[which] > threshold for s in v), len(v)) for k, v in groups.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("heads", nargs="?", type=Path, default=bench.DEFAULT_HEADS)
    parser.add_argument("--calibrate", type=int, default=10)
    parser.add_argument("--report", type=int, default=11)
    parser.add_argument("--nprocs", type=int, default=2)
    args = parser.parse_args(argv)
    import multiprocessing as mp
    import statistics
    from concurrent.futures import ProcessPoolExecutor

    sources = sorted((args.heads / "ixi").glob("*.nii.gz"))[:args.calibrate + args.report]
    with ProcessPoolExecutor(args.nprocs, mp_context=mp.get_context("forkserver")) as pool:
        heads = list(pool.map(one_head, sources))
    calibrate, report = heads[:args.calibrate], heads[args.calibrate:]
    lefts = [left for h in heads for _, left, _ in h["weak"]]
    print(f"heads: calibrate {calibrate[0]['head']}..{calibrate[-1]['head']} "
          f"({len(calibrate)}), report {report[0]['head']}..{report[-1]['head']} "
          f"({len(report)}); weakly defaced images {len(lefts)}, face left median "
          f"{statistics.median(lefts):.2f}, range {min(lefts):.2f}-{max(lefts):.2f}")
    mmod = sum(s[2] for h in heads for _, _, s in h["weak"])
    print(f"the check's detector (MMOD) finds a face in {mmod}/{len(lefts)} weakly defaced")
    for which, label in ((0, "HOG, no upsampling"), (1, "HOG, upsampled once")):
        print(f"== {label}: flagged (best score over the views above the threshold)")
        for name, group in (("calibrate", calibrate), ("report", report)):
            for t in THRESHOLDS:
                row = rates(group, which, t)
                print(f"  {name} t={t:+.2f}: " + ", ".join(
                    f"{k} {n}/{m}" for k, (n, m) in row.items()))
        chosen = next((t for t in THRESHOLDS if rates(calibrate, which, t)["proper"][0] == 0),
                      None)
        if chosen is None:
            print("  no threshold of the grid leaves every properly defaced image unflagged")
            continue
        row = rates(report, which, chosen)
        print(f"  calibrated t={chosen:+.2f} (no false flag on the calibration heads); on the "
              f"report heads: false flags on proper defacing {row['proper'][0]}/"
              f"{row['proper'][1]}, hits on weak defacing {row['weak'][0]}/{row['weak'][1]} "
              f"(face left >= 0.25: {row['weak, face left >= 0.25'][0]}/"
              f"{row['weak, face left >= 0.25'][1]})")
        pairs = [(w[which], p["proper"][which]) for p in heads for _, _, w in p["weak"]]
        above = sum(w > p for w, p in pairs)
        print(f"  weakly defaced image scoring above the same head properly defaced: "
              f"{above}/{len(pairs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
