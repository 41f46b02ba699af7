"""Can a refaced head be linked back to its person? The group audit on the validation people.

Usage::

    python benchmarks/privacy.py HEADS_DIR [--prepared DIR] [--model LABEL=FILE ...] \\
        [--seeds 3] [--seed-people 12] [--limit N] [--view-deg 30] [--memorisation]

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
originals), and how different the faces one run seed gives two people are (each person gets
the seed the App gives that participant). A model given as ``prior`` (or ``prior:FILE``) is
the population prior as ``--reface prior`` uses it.

``--memorisation`` checks that no model gives back a face it learnt from: the faces of the
training people (every training IXI person of the split, which holds the refacing model's
and the prior's people; registered as the App registers, matrices kept in
``--prepared``/training) are rendered, the 5th percentile of the distances between two of them
taken, and every refaced face of the run (all seeds) must be further than that from every
training person. The validation people's originals, real people the training never saw, are
measured alike as the control: the nearest of 108 people is closer than the 5th percentile of
pairs for most real faces too, so a model's faces are compared with theirs as well. Renders
and embeddings stay in memory; only distances are printed.
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
    parser.add_argument("--memorisation", action="store_true",
                        help="check every refaced face against the training people's faces")
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
        refaced_faces = {label: [face_of(outputs[r["name"]][label], r["matrix"]) for r in ok]
                         for label in methods} if args.memorisation else {}
        if args.memorisation:  # the control: real people the training never saw
            refaced_faces["originals (control)"] = [face_of(r["original"], r["matrix"])
                                                    for r in ok]
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
            if args.memorisation:
                refaced_faces[label] += [f for found in faces.values() for f in found[1:]]
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
        if args.memorisation:
            memorisation(args.heads_dir, args.prepared or Path(tmp), refaced_faces,
                         args.nprocs)
    return 0


def training_face(path: Path, cache: Path):
    """The face embedding of a training head's frontal render (None without a face), its
    registration to the template kept in ``cache``."""
    from bidsreface.deface.register import register_to_template
    from bidsreface.deface.template import load_template
    from bidsreface.image import load_image
    from bidsreface.qc.audit import face_of
    from bidsreface.reface.heads import head_key

    matrix_file = cache / f"{head_key(path)}.matrix.txt"
    if not matrix_file.exists():
        img = load_image(path)
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(img.shape[:3])
        reg = register_to_template(data, img.affine, load_template(), seed=0)
        if not reg.ok:
            return None
        np.savetxt(matrix_file, reg.matrix)
    return face_of(path, np.loadtxt(matrix_file))


def memorisation(heads_dir: Path, prepared: Path, refaced: dict, nprocs: int) -> None:
    """Print, per model, how many refaced faces are closer to a training person than the 5th
    percentile of the distances between two training people (0 passes)."""
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    from build_model import person_of, split_people

    from bidsreface.qc.faces import embedding_distance

    training, _ = split_people(heads_dir)
    training = [p for p in training if person_of(p).startswith("IXI")]
    cache = prepared / "training"
    cache.mkdir(parents=True, exist_ok=True)
    import multiprocessing as mp

    # forkserver: a forked child of this process (torch and ITK threads running) can hang
    with ProcessPoolExecutor(max(1, nprocs), mp_context=mp.get_context("forkserver")) as pool:
        faces = list(pool.map(partial(training_face, cache=cache), training))
    known = [f for f in faces if f is not None]
    between = [embedding_distance(a, b) for a, b in itertools.combinations(known, 2)]
    floor = float(np.percentile(between, 5))
    print(f"\nmemorisation: {len(known)} of {len(training)} training people show a face; two "
          f"training people: 5th percentile {floor:.3f}, median {np.median(between):.3f}")
    for label, found in refaced.items():
        nearest = [min(embedding_distance(f, k) for k in known) for f in found if f is not None]
        if not nearest:
            continue
        close = sum(d < floor for d in nearest)
        verdict = "" if "control" in label else f" ({'passed' if close == 0 else 'FAILED'})"
        print(f"{label}: {len(nearest)} faces; nearest training person median "
              f"{np.median(nearest):.3f}, lowest {min(nearest):.3f}; closer than the 5th "
              f"percentile: {close}{verdict}")


if __name__ == "__main__":
    sys.exit(main())
