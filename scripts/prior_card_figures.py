"""Slices for the prior's model card: ``docs/_static/prior_slices.png``.

Usage::

    python scripts/prior_card_figures.py --heads ../shared/heads [--out FILE]

Top row: the prior's template and two heads drawn from it (seeds 1 and 2), mid-sagittal and
axial through the nasal cavity. Below: validation people (never in the prior), each defaced
and refaced with ``--reface prior`` as the App does it (the participant's seed of run seed 0),
shown only refaced: the first IXI validation person at 2 mm and a validation image at 1 mm
(``--fine``). Each refaced image is resampled into the prior's box on a 1 mm grid, so
that the slices are the same planes of the head in every panel. No original face is shown or
written: the defaced and refaced images live in a temporary folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from build_model import person_of, split_people  # noqa: E402

OUT = ROOT / "docs" / "_static" / "prior_slices.png"
#: The 1 mm validation image shown: a whole head in its field of view (brainchop_t1_crop,
#: also 1 mm, is cut below the cerebellum).
FINE = "rorden_trio_b17_T1w_mprage"
#: The axial plane shown: this far (mm) above the prior box's lowest voxel centre.
AXIAL_MM = 56.0


def planes(values: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Mid-sagittal and axial (``AXIAL_MM`` up) slices of a box image, for ``imshow``."""
    sagittal = values[values.shape[0] // 2].T
    axial = values[:, :, int(round(AXIAL_MM / spacing))].T
    return sagittal, axial


def refaced_in_box(path: Path, work: Path, box) -> tuple[np.ndarray, str]:
    """The validation head at ``path`` defaced and refaced with the prior as the App does it,
    resampled into ``box``; with a label (voxel size)."""
    import nibabel as nb

    from bidsreface.config import participant_seed
    from bidsreface.deface.pipeline import deface_file, register_file
    from bidsreface.reface.prior import prior_reface_file
    from bidsreface.reface.space import sample_into_box

    reg, distance = register_file(str(path))
    defaced, mask, _ = deface_file(str(path), reg.matrix, work, brain_distance=distance)
    seed = participant_seed(0, person_of(path))
    out, _ = prior_reface_file(defaced, mask, reg.matrix, work / "refaced.nii.gz", seed=seed,
                               noise_seed=seed)
    img = nb.load(out)
    data = img.get_fdata(dtype=np.float32).reshape(img.shape[:3])
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(0))
    return (sample_into_box(data, img.affine, reg.matrix, box, cval=float(data.min())),
            f"refaced, {zooms.mean():.1f} mm")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--heads", type=Path, required=True)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--fine", default=FINE,
                   help="the validation image finer than 1.5 mm shown (its name's start)")
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import ndimage

    from bidsreface.reface.prior import drawn_head, load_prior
    from bidsreface.reface.space import FaceBox

    prior = load_prior()
    fine = FaceBox(origin=prior.box.origin, shape=tuple(
        int(n * prior.box.spacing) for n in prior.box.shape), spacing=1.0)
    zoom = prior.box.spacing / fine.spacing
    panels = []
    for seed, label in ((None, "template"), (1, "drawn, seed 1"), (2, "drawn, seed 2")):
        head = ndimage.zoom(drawn_head(prior, seed), zoom, order=1)
        panels.append((label, planes(head, fine.spacing)))
    _, validation = split_people(args.heads)
    ixi = next(v for v in validation if person_of(v).startswith("IXI"))

    fine_head = next((v for v in validation if v.name.startswith(args.fine)), None)
    for path in (ixi, fine_head):
        if path is None:
            continue
        with tempfile.TemporaryDirectory(prefix="bidsreface-card-") as tmp:
            values, label = refaced_in_box(path, Path(tmp), fine)
        panels.append((label, planes(values, fine.spacing)))
    fig, axes = plt.subplots(2, len(panels), figsize=(3.2 * len(panels), 6.4))
    for column, (label, (sagittal, axial)) in enumerate(panels):
        for row, image in enumerate((sagittal, axial)):
            ax = axes[row, column]
            ax.imshow(image, origin="lower", cmap="gray",
                      vmax=float(np.percentile(image, 99.5)))
            ax.set_axis_off()
            if row == 0:
                ax.set_title(label, fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=70)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
