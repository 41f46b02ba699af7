"""The defacing engine on real heads: registration, its quality check, masks, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from bidsreface.deface.apply import deface
from bidsreface.deface.mask import face_mask, pull_back, region, region_box
from bidsreface.deface.register import (
    brain_distance_map,
    check_quality,
    map_grid,
    register_to_template,
)
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


def test_region_box_holds_the_whole_region_however_the_head_is_turned():
    template = load_template()
    c, s_ = np.cos(np.deg2rad(25)), np.sin(np.deg2rad(25))
    turn = np.array([[c, -s_, 0], [s_, c, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, c, -s_],
                                                                       [0, s_, c]])
    matrix = np.eye(4)
    matrix[:3, :3] = 0.9 * turn
    matrix[:3, 3] = (12.0, -20.0, 8.0)
    shape = (128, 128, 128)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -127.0
    for ears in (False, True):
        lo, hi = region_box(shape, affine, matrix, template, ears=ears)
        whole = pull_back(region(template, ears=ears).astype(np.uint8), template.affine, matrix,
                           shape, affine, np.zeros(3, int), np.array(shape), order=0, cval=0.0,
                           mode="nearest") > 0
        idx = np.argwhere(whole)
        assert len(idx) > 1000
        assert (idx >= lo).all() and (idx < hi).all()


def test_the_brain_guard_map_covers_the_ears_when_they_are_defaced(head):
    """The distance map is made only around the region to deface: with the ears, around them.

    A map made for the face alone leaves the ears guarded (no map value there counts as
    brain), so ``--deface-ears`` must reach the registration step, which it does here.
    """
    data, affine = head
    template = load_template()
    reg = register_to_template(data, affine, template)
    face_map = brain_distance_map(data, affine, template, reg)
    ears_map = brain_distance_map(data, affine, template, reg, ears=True)
    assert ears_map[0].shape == map_grid(data.shape, affine, reg.matrix, template, ears=True)[0]
    face, _ = face_mask(data.shape, affine, reg.matrix, template, brain_distance=face_map)
    ears, _ = face_mask(data.shape, affine, reg.matrix, template, ears=True,
                        brain_distance=ears_map)
    ears_unmapped, _ = face_mask(data.shape, affine, reg.matrix, template, ears=True,
                                 brain_distance=face_map)
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000
    assert (ears & ~face).sum() * voxel_ml > 20  # both ears, millilitres
    assert (ears_unmapped & ~face).sum() < 0.5 * (ears & ~face).sum()


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
