"""The defacing engine on real heads: registration, its quality check, masks, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from bidsreface.deface.apply import deface
from bidsreface.deface.mask import face_mask
from bidsreface.deface.register import check_quality, register_to_template
from bidsreface.deface.template import load_template
from bidsreface.demo import load_brainsmall
from bidsreface.errors import RegistrationError


@pytest.fixture(scope="module")
def head(brainsmall_path):
    img = load_brainsmall(brainsmall_path)
    return np.asanyarray(img.dataobj), img.affine


def test_registration_is_reproducible(head):
    data, affine = head
    template = load_template()
    first = register_to_template(data, affine, template, seed=3)
    second = register_to_template(data, affine, template, seed=3)
    assert first.ok, first.reason
    np.testing.assert_array_equal(first.matrix, second.matrix)


def test_scrambled_head_fails_the_quality_check(head):
    data, affine = head
    rng = np.random.default_rng(0)
    scrambled = rng.permutation(data.ravel()).reshape(data.shape)
    reg = register_to_template(scrambled, affine, load_template(), starts=((0.0, 0.0),))
    assert not reg.ok
    assert "correlation" in reg.reason or "overlap" in reg.reason
    from bidsreface.deface.register import require_ok

    with pytest.raises(RegistrationError, match="quality check"):
        require_ok(reg, "sub-x_T1w.nii.gz")


def test_quality_rules():
    good = {"head_dice": 0.93, "correlation": 0.7, "scales": [0.9, 0.95, 1.0], "shear": 0.02,
            "determinant": 0.85}
    assert check_quality(good) == ""
    assert "scaling" in check_quality({**good, "scales": [0.4, 0.9, 1.0]})
    assert "flips" in check_quality({**good, "determinant": -0.8})
    assert "shear" in check_quality({**good, "shear": 0.5})


def test_ears_add_to_the_mask_and_the_brain_guard_grows_with_the_margin(head):
    data, affine = head
    template = load_template()
    reg = register_to_template(data, affine, template)
    face, info = face_mask(data.shape, affine, reg.matrix, template)
    with_ears, _ = face_mask(data.shape, affine, reg.matrix, template, ears=True)
    wider, _ = face_mask(data.shape, affine, reg.matrix, template, brain_margin_mm=10)
    assert info["face_volume_ml"] > 100
    assert with_ears.sum() > face.sum() and (with_ears | face).sum() == with_ears.sum()
    assert wider.sum() < face.sum() and not (wider & ~face).any()


def test_deface_sets_only_the_mask_to_background():
    stored = np.arange(1, 28, dtype=np.uint8).reshape(3, 3, 3)
    mask = np.zeros(stored.shape, bool)
    mask[0, 0, :2] = True
    out = deface(stored, mask)
    assert out.dtype == stored.dtype
    assert (out[mask] == 1).all()  # background is the image minimum when it is above 0
    assert np.array_equal(out[~mask], stored[~mask])


def test_outputs_are_byte_identical_across_runs(tmp_path, brainsmall_path):
    """Same input, same seed: the defaced image and its mask are the same bytes."""
    import nibabel as nb

    from bidsreface.deface.pipeline import deface_file, register_file

    source = tmp_path / "sub-01_T1w.nii.gz"
    nb.save(load_brainsmall(brainsmall_path), source)
    outputs = []
    for run in ("a", "b"):
        reg, distance = register_file(str(source), seed=0)
        defaced, mask, _ = deface_file(str(source), reg.matrix, tmp_path / run,
                                       brain_distance=distance)
        outputs.append((defaced.read_bytes(), mask.read_bytes()))
    assert outputs[0] == outputs[1]
