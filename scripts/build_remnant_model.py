"""Build the packaged face-remnant model ``bidsreface/data/models/remnant.npz`` of
``bidsreface-check`` (:mod:`bidsreface.check.remnant`) from a folder of real heads.

Usage::

    python scripts/build_remnant_model.py --heads ../shared/heads [--work DIR] \\
        [--train-people 48] [--weak 8] [--nprocs 2] [--seed 0] [--min-left 0.15] [--no-write]

People are split as the refacing model splits them (``scripts/build_model.py``,
:func:`split_people`): every fourth IXI person and every person of ``other/`` are validation
people, never fitted on. ``--train-people`` of the other IXI people (evenly spaced in the
order of their numbers) and every validation head are made into versions:

- ``original``: the head as it is;
- ``proper``: defaced by bidsreface (the registration to the template, its check, the brain
  guard: :func:`bidsreface.deface.pipeline.register_file`, :func:`~.deface_file`);
- ``centres``: defaced by the template's face mask placed by centres of mass alone
  (``benchmarks/check.py --deface weak --shift-mm 0,0,0``);
- ``weak``: ``--weak`` defacings by the same mask on a weak registration: half of them the
  centres of mass, half of them bidsreface's own registration, moved by a seeded random
  shift (5 to 40 mm, along an axis, a diagonal of two axes or of three).

Each version's "face left" is the share of the head voxels inside bidsreface's own face mask
(the proper defacing's) that the version keeps: 1 for the original, 0 for the proper
defacing. A version is a remnant, to be flagged, when it leaves at least ``--min-left``.

Each version is rendered as ``bidsreface-check`` renders it
(:func:`bidsreface.check.images.view_renders`), the renders reduced to 64 x 64
(:func:`bidsreface.check.remnant.reduce`) and kept with dlib's detections in
``WORK/people/<person>.npz`` (a rerun reads them: it resumes). Renders show faces: the work
folder defaults to the system's temporary folder and must never be inside a repository.

The model: :func:`bidsreface.check.remnant.image_features`, standardised, and an L2 logistic
regression (scikit-learn, at build time only) fitted on the training people's versions with no
face found by dlib, remnants against properly defaced heads (the originals without a found
face are positives too). The penalty is chosen by 5-fold cross-validation grouped by person on
the training people, and the threshold is the lowest at which no properly defaced training
head is flagged in its cross-validation fold (times ``--margin``). Then the figures on the
validation people are printed, and the model and its summary (``remnant.json``) written
into the package unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "bidsreface" / "data" / "models"
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: Shift directions (RAS): the six axes, the diagonals of two axes and of three.
DIRECTIONS = np.array([d for d in np.ndindex(3, 3, 3) if d != (1, 1, 1)], dtype=float) - 1
#: Shift lengths (mm), drawn uniformly.
SHIFT_MM = (5.0, 40.0)
#: Penalties (inverse: scikit-learn's C) tried by cross-validation.
PENALTIES = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
#: Bins of the face left, for the figures.
BINS = (0.0, 0.05, 0.15, 0.3, 0.5, 1.01)


def person_seed(person: str, seed: int) -> int:
    """A seed of its own for each person.

    >>> person_seed("IXI002", 0) == person_seed("IXI002", 0) != person_seed("IXI012", 0)
    True
    """
    return seed * 100003 + sum(ord(c) * 31 ** i for i, c in enumerate(person)) % 1000003


def shifts_for(person: str, n: int, seed: int) -> np.ndarray:
    """*n* seeded shifts (mm, RAS) for *person*."""
    rng = np.random.default_rng(person_seed(person, seed))
    directions = DIRECTIONS[rng.integers(0, len(DIRECTIONS), n)]
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return directions * rng.uniform(*SHIFT_MM, n)[:, None]


def render_file(path: Path, detect: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reduced renders (views x 64 x 64, float16; zeros where a view failed), which views
    rendered, and dlib's best face score per view (NaN: no face; not looked for unless
    *detect*)."""
    from bidsreface.check.images import first_volume, view_renders
    from bidsreface.check.remnant import SMALL_SIDE, reduce
    from bidsreface.qc.faces import detect_faces

    data, affine, _ = first_volume(path)
    renders = view_renders(data, affine)
    smalls = np.zeros((len(renders), SMALL_SIDE, SMALL_SIDE), np.float16)
    ok = np.zeros(len(renders), bool)
    faces = np.full(len(renders), np.nan, np.float32)
    for i, render in enumerate(renders):
        if render is None:
            continue
        ok[i] = True
        smalls[i] = reduce(render)
        if not detect:
            continue
        found = [d.score for d in detect_faces(render) if d.score > 0]
        if found:
            faces[i] = max(found)
    return smalls, ok, faces


def person_versions(args: tuple) -> Path:
    """Make, render and keep the versions of one head (see the module's docstring); returns
    the kept file (already there: nothing is done)."""
    source, person, out, weak, seed, detect = args
    if out.is_file():
        return out
    import check as bench
    import nibabel as nb

    from bidsreface.deface.mask import face_mask
    from bidsreface.deface.pipeline import deface_file, register_file, write_defaced
    from bidsreface.deface.template import load_template
    from bidsreface.qc.render import head_threshold

    img = nb.load(source)
    data = np.asarray(img.dataobj, dtype=np.float32).reshape(img.shape[:3])
    template = load_template()
    rows = {"kind": [], "left": [], "shift": [], "smalls": [], "ok": [], "faces": []}

    def keep(kind, left, shift, path):
        smalls, ok, faces = render_file(path, detect)
        for key, value in zip(rows, (kind, left, shift, smalls, ok, faces), strict=True):
            rows[key].append(value)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        reg, distance = register_file(str(source))
        defaced, mask_file, _ = deface_file(str(source), reg.matrix, tmp,
                                            brain_distance=distance)
        proper = np.asanyarray(nb.load(mask_file).dataobj).reshape(img.shape[:3]) > 0
        face = proper & (data > head_threshold(data))
        total = max(int(face.sum()), 1)
        keep("original", 1.0, (0.0, 0.0, 0.0), source)
        keep("proper", 0.0, (0.0, 0.0, 0.0), defaced)
        centres = bench.weak_matrix(data, img.affine, template)
        shifts = shifts_for(person, weak, seed)
        plans = [("centres", centres, np.zeros(3))]
        plans += [("weak-centres" if i % 2 == 0 else "weak-registered",
                   centres if i % 2 == 0 else reg.matrix, shift)
                  for i, shift in enumerate(shifts)]
        for i, (kind, matrix, shift) in enumerate(plans):
            moved = np.array(matrix, dtype=float)
            moved[:3, 3] += shift
            mask, _ = face_mask(img.shape[:3], img.affine, moved, template)
            target = tmp / f"v{i}.nii.gz"
            write_defaced(source, mask, target, tmp / f"m{i}.nii.gz")
            keep(kind, float((face & ~mask).sum() / total), tuple(shift), target)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".part.npz")
    np.savez_compressed(partial, person=person, source=str(source), detect=detect,
                        **{k: np.array(v) for k, v in rows.items()})
    partial.replace(out)
    print(f"{person}: {len(rows['kind'])} versions, face left "
          + " ".join(f"{x:.2f}" for x in rows["left"]), flush=True)
    return out


def load_people(files: list[Path]) -> dict:
    """The kept versions of *files*, stacked: one entry per version."""
    table = {"person": [], "kind": [], "left": [], "smalls": [], "ok": [], "faces": []}
    for path in files:
        with np.load(path, allow_pickle=False) as npz:
            n = len(npz["kind"])
            table["person"] += [str(npz["person"])] * n
            for key in ("kind", "left", "smalls", "ok", "faces"):
                table[key] += list(npz[key])
    return {k: np.array(v) for k, v in table.items()}


def features_of(table: dict, side: int) -> np.ndarray:
    from bidsreface.check.remnant import image_features

    return np.stack([image_features([s.astype(np.float32) if ok else None
                                     for s, ok in zip(smalls, oks, strict=True)], side)
                     for smalls, oks in zip(table["smalls"], table["ok"], strict=True)])


def grouped_scores(x: np.ndarray, y: np.ndarray, groups: np.ndarray, penalty: float,
                   folds: int = 5) -> np.ndarray:
    """Out-of-fold probabilities of a logistic regression, folds grouped by person."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    out = np.zeros(len(y))
    for train, test in GroupKFold(folds).split(x, y, groups):
        mean, scale = x[train].mean(axis=0), x[train].std(axis=0) + 1e-3
        model = LogisticRegression(C=penalty, max_iter=2000)
        model.fit((x[train] - mean) / scale, y[train])
        out[test] = model.predict_proba((x[test] - mean) / scale)[:, 1]
    return out


def remnant_rows(table: dict, flagged: np.ndarray, min_left: float) -> list[str]:
    """Lines of figures: weak defacings flagged by bins of the face left, proper defacings
    and originals flagged."""
    lines = []
    kinds = table["kind"]
    weak = np.isin(kinds, ("centres", "weak-centres", "weak-registered"))
    for lo, hi in zip(BINS[:-1], BINS[1:], strict=True):
        sel = weak & (table["left"] >= lo) & (table["left"] < hi)
        tag = " (remnants)" if lo >= min_left else ""
        lines.append(f"  weak, face left {lo:.2f}-{min(hi, 1):.2f}{tag}: "
                     f"{int(flagged[sel].sum())}/{int(sel.sum())}")
    for kind in ("proper", "original"):
        sel = kinds == kind
        lines.append(f"  {kind}: {int(flagged[sel].sum())}/{int(sel.sum())}")
    return lines


def fit_and_report(train_files: list[Path], validation_files: list[Path], args,
                   models: Path | None) -> int:
    """Fit the model on the training people, print the figures on the validation people,
    write the model into *models* (unless None)."""
    from sklearn.linear_model import LogisticRegression

    from bidsreface.check.images import VIEWS
    from bidsreface.check.remnant import RemnantModel

    train = load_people(train_files)
    y = (train["left"] >= args.min_left).astype(int)
    groups = train["person"]
    proper = train["kind"] == "proper"
    remnant = y.astype(bool) & (train["kind"] != "original")
    best = None
    for side in args.sides:
        x = features_of(train, side)
        for penalty in PENALTIES:
            oof = grouped_scores(x, y, groups, penalty)
            threshold = float(oof[proper].max()) * args.margin
            hits = int((oof[remnant] > threshold).sum())
            print(f"side {side}, C={penalty:g}: cross-validated threshold {threshold:.3f} (no "
                  f"proper defacing flagged), remnants flagged {hits}/{int(remnant.sum())}",
                  flush=True)
            if best is None or hits > best[0]:
                best = (hits, side, penalty, threshold, oof)
    _, side, penalty, threshold, oof = best
    x = features_of(train, side)
    print(f"chosen: side {side}, C={penalty:g}, threshold {threshold:.3f}; training people, "
          "out of fold:")
    print("\n".join(remnant_rows(train, oof > threshold, args.min_left)))
    top = np.argsort(np.where(proper, oof, -1.0))[::-1][:3]
    print("  highest properly defaced: " + ", ".join(
        f"{train['person'][i]} {oof[i]:.3f}" for i in top))
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-3
    fitted = LogisticRegression(C=penalty, max_iter=2000).fit((x - mean) / scale, y)
    model = RemnantModel(mean=mean, scale=scale, weights=fitted.coef_[0],
                         bias=float(fitted.intercept_[0]), threshold=threshold,
                         views=tuple(v[0] for v in VIEWS), side=side)
    summary = {"training_people": sorted(set(groups.tolist())), "penalty": penalty, "side": side,
               "threshold": threshold, "min_left": args.min_left, "weak": args.weak,
               "seed": args.seed, "training_versions": len(y), "training_remnants": int(y.sum())}
    if validation_files:
        val = load_people(validation_files)
        xv = features_of(val, side)
        scores = np.array([model.score(f)[0] for f in xv])
        remnant_flag = scores > threshold
        face = np.isfinite(val["faces"]).any(axis=1)
        print(f"validation people ({len(set(val['person'].tolist()))}, {len(scores)} versions):")
        for label, flagged in (("dlib's detector (a face)", face),
                               ("remnant model (no face found)", remnant_flag & ~face),
                               ("the check (face or remnant)", face | remnant_flag)):
            print(f" {label}:")
            print("\n".join(remnant_rows(val, flagged, args.min_left)))
        summary["validation_people"] = sorted(set(val["person"].tolist()))
    if models is not None:
        model.save(models / "remnant.npz", penalty=penalty, min_left=args.min_left)
        (models / "remnant.json").write_text(json.dumps(summary, indent=1) + "\n")
        print(f"wrote {models / 'remnant.npz'}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--heads", type=Path, required=True, help="folder of real heads")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir())
                   / "bidsreface-remnant", help="renders are kept here (never in a repository)")
    p.add_argument("--train-people", type=int, default=48)
    p.add_argument("--validation-people", type=int, default=None,
                   help="only the first N validation heads (default: all)")
    p.add_argument("--weak", type=int, default=8, help="weak defacings per head")
    p.add_argument("--nprocs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-left", type=float, default=0.15,
                   help="share of the face left from which a version is a remnant")
    p.add_argument("--margin", type=float, default=1.0,
                   help="the threshold is the highest cross-validated proper score times this")
    p.add_argument("--sides", type=lambda v: [int(n) for n in v.split(",")], default=[4, 8],
                   help="feature map sides tried by cross-validation (default: 4,8)")
    p.add_argument("--no-write", action="store_true", help="print the figures only")
    p.add_argument("--make-only", action="store_true", help="make the versions, fit nothing")
    args = p.parse_args(argv)
    from build_model import person_of, split_people

    if str(args.work.resolve()).startswith(str(ROOT)):
        p.error(f"--work {args.work} is inside the repository: renders show faces")
    training, validation = split_people(args.heads)
    step = max(len(training) / max(args.train_people, 1), 1.0)
    training = [training[int(i * step)] for i in range(min(args.train_people, len(training)))]
    validation = validation[:args.validation_people]
    jobs = [(path, person_of(path) if "ixi" in path.parts else path.name.split(".")[0],
             args.work / "people" / f"{path.name.split('.')[0]}.npz", args.weak, args.seed,
             path in validation)
            for path in training + validation]
    print(f"{len(training)} training heads, {len(validation)} validation heads", flush=True)
    if args.nprocs > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.nprocs, mp_context=mp.get_context("forkserver")) as pool:
            files = list(pool.map(person_versions, jobs))
    else:
        files = [person_versions(job) for job in jobs]
    if args.make_only:
        return 0
    return fit_and_report(files[:len(training)], files[len(training):], args,
                          None if args.no_write else MODELS)


if __name__ == "__main__":
    sys.exit(main())
