"""How far apart are the faces of different seeds, against two real people? With variants.

Usage::

    python benchmarks/seed_spread.py HEADS_DIR [--prepared DIR] [--model FILE] \\
        [--warp CONTROL_MM:AMPLITUDE_MM[:mirror] ...] [--seeds 3] [--seed-people 8] \\
        [--blur-originals 1,2,3]

On the validation people of ``HEADS_DIR`` (``benchmarks/validation.py``), per variant of the
model (default: the packaged face model), each image is refaced with seed 0 and its frontal
render searched for a face (faces detected of all images; the audit asks for 95 %); the first
``--seed-people`` images are refaced with seeds 1 to ``--seeds`` - 1 too. It prints the median
face-embedding distance between the faces of different seeds of one image, and between the
faces one seed gives two people, against two real people (the originals of the same images),
and how much the seed's code moves the generator's own head against the prior's modes.

The variants reshape the generated head on the box after the model's prior, each seed its own
way (a test of whether the faces' proportions are what the seeds lack; none of this is in the
package): ``--warp 60:4`` displaces it by a smooth field, standard normal displacements of
4 mm on control points 60 mm apart interpolated by cubic splines and faded to nothing within
10 mm of the region's border; ``:mirror`` makes the field symmetric about the template's
mid-sagittal plane (x = 0). ``--blur-originals`` also gives two real people's distance with
the originals blurred by a Gaussian of that many mm: whether the renders' detail is what the
seeds lack. Renders and embeddings stay in memory; only figures are printed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))

from validation import people_pairs, prepare, reface_all  # noqa: E402

#: Within this distance of the region's border a warp fades to nothing.
TAPER_MM = 10.0


def warp_head(head: np.ndarray, region: np.ndarray, origin_x: float, spacing: float,
              warp: tuple[float, float, bool], seed: int) -> np.ndarray:
    """``head`` (the box) moved inside ``region`` by the seed's smooth displacement field
    (``warp``: control spacing mm, amplitude mm, mirror-symmetric); unchanged outside it.

    >>> head = np.random.default_rng(0).uniform(-1, 1, (20, 20, 20)).astype(np.float32)
    >>> region = np.zeros(head.shape, bool); region[4:16, 4:16, 4:16] = True
    >>> a = warp_head(head, region, -20.0, 2.0, (20.0, 3.0, True), 1)
    >>> bool(np.array_equal(a[~region], head[~region])), bool(np.array_equal(a, head))
    (True, False)
    """
    from bidsreface.reface.space import mask_box

    control_mm, amplitude_mm, mirror = warp
    box = mask_box(region)
    sub = region[box]
    x_mm = origin_x + spacing * np.arange(box[0].start, box[0].stop)
    if mirror:  # a control grid symmetric about x = 0, with a point on it
        half = float(np.abs(x_mm).max())
        lo_x, hi_x = -half, half
    else:
        lo_x, hi_x = float(x_mm[0]), float(x_mm[-1])
    count = [max(2, int(np.ceil((hi_x - lo_x) / control_mm)) + 1)]
    count += [max(2, int(np.ceil(n * spacing / control_mm)) + 1) for n in sub.shape[1:]]
    if mirror and count[0] % 2 == 0:
        count[0] += 1
    rng = np.random.default_rng([int(seed), 13])
    control = rng.standard_normal((3, *count)) * (amplitude_mm / spacing)
    if mirror:  # x displacements change sign in the mirror, the others do not
        control = (control + control[:, ::-1] * np.array([-1.0, 1.0, 1.0])[:, None, None, None]
                   ) / np.sqrt(2)
    grid = np.meshgrid((x_mm - lo_x) / max(hi_x - lo_x, 1e-6) * (count[0] - 1),
                       *(np.linspace(0, c - 1, n) for c, n in zip(count[1:], sub.shape[1:],
                                                                   strict=True)),
                       indexing="ij")
    taper = np.clip(ndimage.distance_transform_edt(sub) * spacing / TAPER_MM, 0, 1)
    taper = taper * taper * (3 - 2 * taper)
    where = np.indices(sub.shape, dtype=np.float64)
    for axis in range(3):
        shift = ndimage.map_coordinates(control[axis], grid, order=3, mode="nearest")
        where[axis] += box[axis].start + shift * taper
    moved = ndimage.map_coordinates(np.asarray(head, np.float32), where, order=3,
                                    mode="nearest")
    out = np.array(head, np.float32, copy=True)
    out[box] = np.where(sub, np.clip(moved, -1.0, 1.0), out[box])
    return out


def refaced_face(job: tuple) -> np.ndarray | None:
    """The face embedding of one image refaced by one variant and seed (in a worker)."""
    row, model_file, warp, seed, tmp = job
    import torch

    import bidsreface.reface.infer as infer
    from bidsreface.qc.audit import face_of
    from bidsreface.reface.privacy import CHANNELS

    torch.set_num_threads(1)
    generate = infer.generate

    def warped(model, inputs, *, seed, device="cpu"):
        head = generate(model, inputs, seed=seed, device=device)
        return warp_head(head, np.asarray(inputs)[CHANNELS.index("region")] > 0.5,
                         model.box.origin[0], model.box.spacing, warp, seed)

    infer.generate = warped if warp else generate
    try:
        (out, _), = reface_all([row], model_file, Path(tmp) / "refaced", seed=seed).values()
        return face_of(out, row["matrix"])
    finally:
        infer.generate = generate


def code_effect(job: tuple) -> tuple[float, float]:
    """How much the seed's code moves the generator's own head (no prior, no truncation) in
    one image's region: the standard deviation over ``seeds`` seeds, averaged over the
    region's voxels (network units), and that of the model's prior modes (in a worker)."""
    row, model_file, seeds = job
    import dataclasses

    import nibabel as nb
    import torch

    from bidsreface.reface.infer import generate
    from bidsreface.reface.privacy import CHANNELS, privacy_inputs
    from bidsreface.reface.weights import load_model

    torch.set_num_threads(1)
    model = load_model(model_file)
    img = nb.load(row["defaced"])
    data = np.asanyarray(img.dataobj).astype(np.float32).reshape(img.shape[:3])
    mask = np.asanyarray(nb.load(row["mask"]).dataobj).reshape(data.shape) > 0
    brain = np.asanyarray(nb.load(row["brain"]).dataobj).reshape(data.shape) > 0
    inputs, _ = privacy_inputs(data, img.affine, row["matrix"], mask, brain & ~mask, model.box)
    region = inputs[CHANNELS.index("region")] > 0.5
    raw = dataclasses.replace(model, prior=None)
    heads = np.stack([generate(raw, inputs, seed=s)[region] for s in range(seeds)])
    modes = (0.0 if model.prior_modes is None else
             float(np.sqrt((model.prior_modes.numpy()[:, region] ** 2).sum(0)).mean()))
    return float(heads.std(0).mean()), modes * model.prior_scale


def original_face(job: tuple) -> np.ndarray | None:
    """The face embedding of one original, blurred by ``sigma_mm`` (in a worker)."""
    row, sigma_mm = job
    import nibabel as nb

    from bidsreface.qc.audit import face_of_data

    img = nb.load(row["original"])
    data = np.asanyarray(img.dataobj).astype(np.float32).reshape(img.shape[:3])
    if sigma_mm:
        zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(0))
        data = ndimage.gaussian_filter(data, sigma_mm / zooms)
    return face_of_data(data, img.affine, row["matrix"])


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return (f"{np.median(values):.3f} ({np.percentile(values, 10):.3f}-"
            f"{np.percentile(values, 90):.3f}, {len(values)} pairs)")


def parse_warp(text: str) -> tuple[float, float, bool]:
    """``CONTROL_MM:AMPLITUDE_MM[:mirror]``.

    >>> parse_warp("60:4"), parse_warp("60:4:mirror")
    ((60.0, 4.0, False), (60.0, 4.0, True))
    """
    parts = text.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "mirror"):
        raise argparse.ArgumentTypeError(f"--warp {text}: CONTROL_MM:AMPLITUDE_MM[:mirror]")
    return float(parts[0]), float(parts[1]), len(parts) == 3


def main(argv: list[str] | None = None) -> int:
    from bidsreface.reface.weights import packaged_model_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("heads_dir", type=Path)
    parser.add_argument("--prepared", type=Path,
                        help="keep (or reuse) the defaced validation heads here")
    parser.add_argument("--model", default=str(packaged_model_path("T1w")))
    parser.add_argument("--warp", type=parse_warp, action="append", default=[])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed-people", type=int, default=8)
    parser.add_argument("--blur-originals", default="",
                        help="comma-separated Gaussian sigmas (mm) for the originals")
    parser.add_argument("--nprocs", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    from bidsreface.qc.faces import embedding_distance

    with tempfile.TemporaryDirectory(prefix="bidsreface-seeds-") as tmp:
        rows = [r for r in prepare(args.heads_dir, args.prepared, Path(tmp), args.nprocs)
                if r["status"] == "ok"]
        chosen = rows[: args.seed_people]
        with ProcessPoolExecutor(max(1, args.nprocs)) as pool:
            for sigma in [0.0, *(float(s) for s in args.blur_originals.split(",") if s)]:
                faces = list(pool.map(original_face, [(r, sigma) for r in chosen]))
                label = "as scanned" if not sigma else f"blurred {sigma:g} mm"
                seen = sum(f is not None for f in faces)
                print(f"two real people, originals {label}: faces {seen}/{len(chosen)}, "
                      f"distance {spread(people_pairs(chosen, faces))}", flush=True)
            effects = list(pool.map(code_effect, [(r, args.model, 4) for r in chosen[:2]]))
            print("the seed's code on the generator's own head (sd over 4 seeds, network "
                  "units, first 2 images): "
                  + ", ".join(f"{code:.3f}" for code, _ in effects)
                  + "; the prior modes: " + ", ".join(f"{m:.3f}" for _, m in effects),
                  flush=True)
            for warp in [None, *args.warp]:
                start = time.perf_counter()
                jobs = [(r, args.model, warp, 0, tmp) for r in rows]
                jobs += [(r, args.model, warp, s, tmp) for s in range(1, args.seeds)
                         for r in chosen]
                found = list(pool.map(refaced_face, jobs))
                first, rest = found[:len(rows)], found[len(rows):]
                per_image = [[first[i], *rest[i::len(chosen)]] for i in range(len(chosen))]
                seeds = [embedding_distance(a, b) for faces in per_image
                         for a, b in itertools.combinations(faces, 2)
                         if a is not None and b is not None]
                label = ("the model" if warp is None else
                         f"warp {warp[0]:g} mm apart, {warp[1]:g} mm"
                         + (", mirrored" if warp[2] else ""))
                print(f"{label}: faces {sum(f is not None for f in first)}/{len(rows)}; "
                      f"seeds of one image {spread(seeds)}; two people, seed 0 "
                      f"{spread(people_pairs(chosen, first[:len(chosen)]))} "
                      f"[{time.perf_counter() - start:.0f} s]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
