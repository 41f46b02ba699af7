"""Build the packaged population prior of the face region ``bidsreface/data/models/prior_T1w.npz``
from the training people of a folder of real heads.

Usage::

    python scripts/build_prior.py --heads ../shared/heads --work /tmp/prior-work \\
        [--people 24] [--iterations 4] [--spacing 2] [--modes 4] [--threads 2]

Only training people reach it: the people are split as the refacing model's were
(``scripts/build_model.py``: :func:`split_people`), and ``--people`` of the training IXI people,
evenly spread over their numbers, are used. Each head is registered affinely to the packaged
template as the participant workflow registers it
(:func:`bidsreface.deface.register.register_to_template`), resampled into a box of template
space around the face region (:func:`bidsreface.reface.space.face_box` grown by ``--pad-mm``)
and scaled as the refacing networks see it (:func:`bidsreface.reface.space.intensity_scaling`,
then to 0-1). The affine mean of the heads starts a groupwise non-linear template: each
iteration registers every head to the current template with SyN (ANTs, symmetric
normalisation; no affine part, the heads being aligned already), averages the warped heads,
moves the average against the mean of the warps (``--gradient-step``, as
``ants.build_template`` does) and sharpens it a little (its Laplacian sharpening blended in).
A last pass registers every head to the final template: the principal modes of their
displacement fields (template space to the head, on the box's grid) are the shape modes, those
of their intensities warped into the template the appearance modes, each one standard
deviation long.

Everything is checkpointed in ``--work`` (each head's box image, each pass's warps and
template), so an interrupted run resumes where it stopped. The result holds the template, its
box, the modes (float16) and a card (``prior_T1w.json``) that says what made it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from build_model import person_of, split_people  # noqa: E402

OUT = ROOT / "bidsreface" / "data" / "models" / "prior_T1w.npz"
#: The shape modes keep every SHAPE_STRIDE-th voxel of the box along each axis.
SHAPE_STRIDE = 2
ATTRIBUTION = ('IXI Dataset, Information eXtraction from Images (EPSRC GR/S21533/02), '
               'CC BY-SA 3.0')


def spread(items: list, count: int) -> list:
    """``count`` items evenly spread over ``items`` (all of them when there are fewer).

    >>> spread(list(range(10)), 3)
    [0, 4, 9]
    """
    if count >= len(items):
        return list(items)
    return [items[int(round(i))] for i in np.linspace(0, len(items) - 1, count)]


def training_people(heads_dir: Path, count: int) -> list[Path]:
    """``count`` training IXI heads, evenly spread over the training people's numbers."""
    training, _ = split_people(heads_dir)
    ixi = sorted((p for p in training if person_of(p).startswith("IXI")),
                 key=lambda p: int(person_of(p)[3:]))
    return spread(ixi, count)


def boxed_head(path: Path, box, work: Path, seed: int = 0) -> Path:
    """The head affinely registered and resampled into ``box`` (0-1 scaled), cached in
    ``work/box``."""
    import nibabel as nb

    from bidsreface.deface.register import register_to_template
    from bidsreface.deface.template import load_template
    from bidsreface.image import load_image
    from bidsreface.reface.heads import head_key
    from bidsreface.reface.space import intensity_scaling, sample_into_box

    out = work / "box" / f"{head_key(path)}.nii.gz"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    img = load_image(path)
    data = np.asarray(img.dataobj, dtype=np.float32).reshape(img.shape[:3])
    reg = register_to_template(data, img.affine, load_template(), seed=seed)
    if not reg.ok:
        raise RuntimeError(f"{path}: registration refused: {reg.reason}")
    scaling = intensity_scaling(data, float(data.min()))
    values = (scaling.forward(sample_into_box(data, img.affine, reg.matrix, box,
                                              cval=float(data.min()))) + 1.0) / 2.0
    np.savetxt(out.with_suffix("").with_suffix(".matrix.txt"), reg.matrix)
    nb.save(nb.Nifti1Image(values.astype(np.float32), box.affine), out)
    return out


def read_ants(path: Path):
    import ants

    return ants.image_read(str(path))


def register_pass(template_path: Path, heads: list[Path], out_dir: Path, threads: int,
                  iterations: tuple, metric: str) -> list[dict]:
    """SyN of every head to the template, each kept in ``out_dir`` (skipped when there):
    the warped head, the forward warp (template to head) and the inverse warp."""
    import shutil

    import ants

    out_dir.mkdir(parents=True, exist_ok=True)
    fixed = read_ants(template_path)
    done = []
    for head in heads:
        key = head.name.split(".nii")[0]
        files = {"warped": out_dir / f"{key}_warped.nii.gz",
                 "fwd": out_dir / f"{key}_fwd.nii.gz", "inv": out_dir / f"{key}_inv.nii.gz"}
        if not all(p.exists() for p in files.values()):
            start = time.perf_counter()
            reg = ants.registration(fixed, read_ants(head), type_of_transform="SyNOnly",
                                    syn_metric=metric, syn_sampling=2 if metric == "CC" else 32,
                                    reg_iterations=iterations, flow_sigma=3, total_sigma=0,
                                    initial_transform="Identity", random_seed=1)
            ants.image_write(reg["warpedmovout"], str(files["warped"]))
            warp_f = [t for t in reg["fwdtransforms"] if t.endswith(".nii.gz")][0]
            warp_i = [t for t in reg["invtransforms"] if t.endswith(".nii.gz")][0]
            shutil.copy(warp_f, files["fwd"])
            shutil.copy(warp_i, files["inv"])
            print(f"  {key}: {time.perf_counter() - start:.0f} s", flush=True)
        done.append(files)
    return done


def update_template(done: list[dict], template_path: Path, out: Path, step: float,
                    blend: float) -> None:
    """The mean of the warped heads, moved against the mean forward warp by ``step`` and
    blended with its sharpened self (``blend`` of the plain mean), as ants.build_template."""
    import ants

    mean = read_ants(done[0]["warped"]) * 0
    warp = read_ants(done[0]["fwd"]) * 0
    for files in done:
        mean = mean + read_ants(files["warped"]) / len(done)
        warp = warp + read_ants(files["fwd"]) / len(done)
    warp_file = out.with_name("mean_warp.nii.gz")
    ants.image_write(warp * (-step), str(warp_file))
    moved = ants.apply_transforms(fixed=mean, moving=mean, transformlist=[str(warp_file)])
    sharp = moved * blend + ants.iMath(moved, "Sharpen") * (1.0 - blend)
    ants.image_write(sharp, str(out))


def principal_modes(rows: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``(modes, share)``: the first ``count`` principal components of ``rows`` (people x
    features, centred here), each one standard deviation long, and the share of the variance
    each explains.

    >>> rows = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.1], [0.0, -0.1]])
    >>> modes, share = principal_modes(rows, 1)
    >>> np.round(np.abs(modes), 3).tolist(), round(float(share[0]), 3)
    ([[0.816, 0.0]], 0.99)
    """
    centred = rows - rows.mean(0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    sd = sv / np.sqrt(max(len(rows) - 1, 1))
    count = min(count, len(sv))
    return (vt[:count] * sd[:count, None]), (sv**2 / max((sv**2).sum(), 1e-12))[:count]


def quantised(modes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(int8 modes, float32 scale per mode)``: each mode's largest magnitude maps to 127
    (rounding moves a value by at most half a step, 0.4 % of that magnitude).

    >>> q, s = quantised(np.array([[0.5, -1.0], [2.0, 0.0]]))
    >>> q.tolist(), [round(float(v), 4) for v in s]
    ([[64, -127], [127, 0]], [0.0079, 0.0157])
    """
    scale = np.maximum(np.abs(modes).max(axis=tuple(range(1, modes.ndim))), 1e-12) / 127.0
    shaped = scale.reshape((-1,) + (1,) * (modes.ndim - 1))
    return np.round(modes / shaped).astype(np.int8), scale.astype(np.float32)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--heads", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--people", type=int, default=24)
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--spacing", type=float, default=2.0)
    p.add_argument("--pad-mm", type=float, default=18.0)
    p.add_argument("--modes", type=int, default=4, help="appearance modes")
    p.add_argument("--shape-modes", type=int, help="shape modes (default: --modes)")
    p.add_argument("--draw-scale", type=float, default=1.0,
                   help="a seed's coefficients are standard normal amounts times this")
    p.add_argument("--mode-people", type=int,
                   help="training people of the last pass, whose differences from the "
                        "template make the modes (default: --people); the template's people "
                        "are among them when it is all of them")
    p.add_argument("--gradient-step", type=float, default=0.2)
    p.add_argument("--blend", type=float, default=0.75)
    p.add_argument("--metric", choices=("mattes", "CC"), default="mattes")
    p.add_argument("--syn-iterations", default="40,20,10",
                   help="SyN iterations per level (coarse to fine)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--note", default="", help="a note for the card (how the run went)")
    args = p.parse_args(argv)
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    import nibabel as nb

    from bidsreface.deface.template import load_template
    from bidsreface.reface.space import face_box

    started = time.perf_counter()
    syn_iterations = tuple(int(v) for v in args.syn_iterations.split(","))
    box = face_box(load_template(), args.spacing, multiple=8, pad_mm=args.pad_mm)
    people = training_people(args.heads, args.people)
    _, validation = split_people(args.heads)
    held = {person_of(v) for v in validation}
    if held & {person_of(p) for p in people}:
        raise RuntimeError("a validation person reached the prior's people")
    print(f"{len(people)} training people, box {box.shape} at {box.spacing} mm", flush=True)
    mode_people = training_people(args.heads, args.mode_people or args.people)
    if held & {person_of(p) for p in mode_people}:
        raise RuntimeError("a validation person reached the prior's people")
    heads = [boxed_head(path, box, args.work) for path in people]
    template = args.work / "template_00.nii.gz"
    if not template.exists():
        mean = np.mean([nb.load(h).get_fdata(dtype=np.float32) for h in heads], axis=0)
        nb.save(nb.Nifti1Image(mean, box.affine), template)
    for it in range(1, args.iterations + 1):
        following = args.work / f"template_{it:02d}.nii.gz"
        if following.exists():
            template = following
            continue
        print(f"iteration {it}", flush=True)
        done = register_pass(template, heads, args.work / f"pass_{it:02d}", args.threads,
                             syn_iterations, args.metric)
        update_template(done, template, following, args.gradient_step, args.blend)
        template = following
    print(f"modes pass: {len(mode_people)} people", flush=True)
    mode_heads = [boxed_head(path, box, args.work) for path in mode_people]
    done = register_pass(template, mode_heads, args.work / "pass_modes", args.threads,
                         syn_iterations, args.metric)
    mean = nb.load(template).get_fdata(dtype=np.float32)
    warped = np.stack([nb.load(f["warped"]).get_fdata(dtype=np.float32).ravel()
                       for f in done])
    # the displacements are smooth (SyN's flow_sigma): every SHAPE_STRIDE-th voxel is kept
    shift = np.stack([nb.load(f["inv"]).get_fdata(dtype=np.float32).reshape(
        (*mean.shape, 3))[::SHAPE_STRIDE, ::SHAPE_STRIDE, ::SHAPE_STRIDE].reshape(-1)
        for f in done])
    appearance, appearance_share = principal_modes(warped, args.modes)
    shape, shape_share = principal_modes(shift, args.shape_modes or args.modes)
    warp_shape = tuple(len(range(0, n, SHAPE_STRIDE)) for n in mean.shape) + (3,)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    appearance_q, appearance_scale = quantised(appearance)
    shape_q, shape_scale = quantised(shape)
    np.savez_compressed(
        args.out, template=mean.astype(np.float16),
        appearance_modes=appearance_q.reshape((-1, *mean.shape)),
        appearance_scale=appearance_scale,
        shape_modes=shape_q.reshape((-1, *warp_shape)), shape_scale=shape_scale,
        shape_stride=SHAPE_STRIDE, draw_scale=np.float32(args.draw_scale),
        box=json.dumps(box.to_dict()))
    minutes = (time.perf_counter() - started) / 60
    card = {
        "name": "bidsreface face-region prior (T1w)",
        "built_by": "scripts/build_prior.py",
        "data": {"source": "IXI T1w, 2 mm (Hammersmith Hospital, Philips 3T)",
                 "attribution": ATTRIBUTION,
                 "people": len(people), "people_ids": [person_of(p) for p in people],
                 "mode_people": len(mode_people),
                 "mode_people_ids": [person_of(p) for p in mode_people],
                 "split": "training people only (scripts/build_model.py split_people: every "
                          "fourth IXI person and every other/ person held out)"},
        "settings": {"box": box.to_dict(), "pad_mm": args.pad_mm,
                     "iterations": args.iterations, "syn_iterations": list(syn_iterations),
                     "metric": args.metric, "gradient_step": args.gradient_step,
                     "blend": args.blend, "modes": args.modes,
                     "shape_modes": args.shape_modes or args.modes,
                     "draw_scale": args.draw_scale,
                     "registration": "affine: bidsreface.deface.register.register_to_template;"
                                     " groupwise: ANTs SyNOnly, flow_sigma 3",
                     "intensity": "bidsreface.reface.space.intensity_scaling, mapped to 0-1"},
        "fields": {"template": "0-1 intensities on the box (float16)",
                   "appearance_modes": "modes x box, one SD each (int8; times "
                                       "appearance_scale, one per mode)",
                   "shape_modes": "modes x (box / shape_stride) x 3: displacement (mm, ITK "
                                  "LPS) from template space to a head, one SD each, every "
                                  "shape_stride-th voxel of the box (int8; times shape_scale, "
                                  "one per mode)"},
        "note": args.note,
        "variance_share": {"appearance": np.round(appearance_share, 3).tolist(),
                           "shape": np.round(shape_share, 3).tolist()},
        "size_bytes": args.out.stat().st_size,
        "build_minutes_last_run": round(minutes, 1),
    }
    args.out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps({k: card[k] for k in ("variance_share", "size_bytes")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
