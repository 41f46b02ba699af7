"""Can a refaced head be linked back to its person? The group audit on the validation people.

Usage::

    python benchmarks/privacy.py HEADS_DIR [--prepared DIR] [--model LABEL=FILE ...] \\
        [--seeds 3] [--seed-people 12] [--limit N] [--view-deg 30]

On the validation people of ``HEADS_DIR`` (``benchmarks/validation.py``; none of them reached
the model's training), the gallery holds a frontal render of each original; the probes are:
the original turned by 6 degrees (the control: it shows the instrument re-identifies at this
resolution), the defaced image, and the image refaced by each model given (default: the
packaged one) and by the template's face, seed 0. With ``--view-deg`` every probe (the
original too, in place of the 6 degrees) is rendered turned by that many degrees, so that
the ears and the head's outline, which the defacer keeps, show more. Per probe kind: faces
detected, rank-1 identification rate, ROC-AUC, EER and linkability
(:mod:`bidsreface.qc.audit`), with the chance rank-1 (1 / people in the gallery). Then, per
model, how different the faces of different seeds are (``--seeds`` seeds on the first
``--seed-people`` images) against how different two real people are (pairs of the
originals), and how different the faces one seed gives two people are. Renders and
embeddings stay in memory; only distances are printed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from validation import add_arguments, people_pairs, prepare, reface_all  # noqa: E402
from validation import methods as chosen_methods  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed-people", type=int, default=12)
    parser.add_argument("--view-deg", type=float, default=0.0,
                        help="render every probe turned by this many degrees (the gallery "
                        "stays frontal): the ears and the head's outline show more")
    args = parser.parse_args(argv)
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    from bidsreface.qc.audit import AuditImage, face_of, run_audit
    from bidsreface.qc.faces import embedding_distance

    methods = chosen_methods(args)
    if not args.no_template:
        methods["template"] = "template"
    with tempfile.TemporaryDirectory(prefix="bidsreface-privacy-") as tmp:
        rows = prepare(args.heads_dir, args.prepared, Path(tmp), args.nprocs, args.limit,
                       args.region)
        ok = [r for r in rows if r["status"] == "ok"]
        outputs = {r["name"]: {"defaced": r["defaced"]} for r in ok}
        for label, method in methods.items():
            for name, (path, _) in reface_all(ok, method, Path(tmp) / label).items():
                outputs[name][label] = path
        images = [AuditImage(source=r["rel"], participant=r["person"], original=r["original"],
                             outputs=outputs[r["name"]], matrix=r["matrix"]) for r in ok]
        audit = run_audit(images, ("original", "defaced", *methods), view_deg=args.view_deg)
        people = len({r["person"] for r in ok if r["rel"] in audit["gallery"]})
        print(f"{len(ok)} validation images of {len({r['person'] for r in ok})} people; "
              f"gallery {len(audit['gallery'])} images of {people} people "
              f"(no face on the original's render: {len(audit['left_out'])}); "
              f"chance rank-1 {1 / max(people, 1):.3f}")
        print(f"{'probe':<34}{'faces':>9}{'rank-1':>8}{'ROC-AUC':>9}{'EER':>7}{'link':>7}")
        for condition, s in audit["summary"].items():
            label = (f"original turned {audit['pose_deg']:g} deg (control)"
                     if condition == "original" else condition)

            def fmt(v):
                return "   -" if v is None else f"{v:.3f}"

            print(f"{label:<34}{s['faces_detected']:>4}/{s['probes']:<4}{s['rank1']:>8.3f}"
                  f"{fmt(s['roc_auc']):>9}{fmt(s['eer']):>7}{fmt(s['linkability']):>7}")
        # different seeds against different people
        chosen = ok[: args.seed_people]
        between = people_pairs(chosen, [face_of(r["original"], r["matrix"]) for r in chosen])
        print(f"\ntwo real people (originals of {len(chosen)} images): distance median "
              f"{np.median(between):.3f} ({np.percentile(between, 10):.3f}-"
              f"{np.percentile(between, 90):.3f}, 10th-90th percentile)")
        for label, method in methods.items():
            if method == "template" or args.seeds < 2:
                continue
            faces = {r["name"]: [face_of(outputs[r["name"]][label], r["matrix"])]
                     for r in chosen}
            for seed in range(1, args.seeds):
                for name, (path, _) in reface_all(chosen, method, Path(tmp) / f"{label}_s",
                                                  seed=seed).items():
                    faces[name].append(face_of(path, next(
                        r["matrix"] for r in chosen if r["name"] == name)))
            pairs = [embedding_distance(a, b) for found in faces.values()
                     for a, b in itertools.combinations(found, 2)
                     if a is not None and b is not None]
            if pairs:
                print(f"{label}: faces of different seeds of one image ({len(pairs)} pairs): "
                      f"distance median {np.median(pairs):.3f} ({np.percentile(pairs, 10):.3f}-"
                      f"{np.percentile(pairs, 90):.3f})")
            # the same seed on two people: how alike the model's faces are whoever they replace
            people = people_pairs(chosen, [faces[r["name"]][0] for r in chosen])
            if people:
                print(f"{label}: faces of two people, seed 0 ({len(people)} pairs): "
                      f"distance median {np.median(people):.3f} ({np.percentile(people, 10):.3f}-"
                      f"{np.percentile(people, 90):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
