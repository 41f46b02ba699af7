"""The image's own brain guards the defacing, whatever the template brain carried onto it."""

from __future__ import annotations

import json
import shutil

import nibabel as nb
import numpy as np
import pytest

from bidsreface.deface.pipeline import brain_mask_file, deface_file, register_file
from bidsreface.demo import load_brainsmall
from bidsreface.qc.metrics import brain_checks, image_qc

#: How far back (mm) the carried template brain is moved: far enough that its guard alone
#: leaves the front of the brain (orbits, temporal poles) in the face region.
SHIFT_MM = 20.0
MARGIN_MM = 5.0


def misplaced_template_brain(head, shift_mm=SHIFT_MM):
    """The template brain's distance map carried by the registration moved ``shift_mm``
    towards the back of the head, on the grid the registration step writes it on."""
    from bidsreface.deface.register import _resample, map_grid
    from bidsreface.deface.template import load_template

    template, img = load_template(), nb.load(head["path"])
    shape, grid_affine = map_grid(img.shape, img.affine, head["reg"].matrix, template)
    moved = np.eye(4)
    moved[1, 3] = -shift_mm  # RAS mm: towards the back
    values = _resample(template.brain_distance_mm(), template.affine,
                       np.linalg.inv(moved @ head["reg"].matrix), shape, grid_affine, cval=1e3)
    return values, grid_affine


def distance_mm(brain, affine):
    """Every voxel's distance (mm) to the nearest voxel of ``brain``."""
    from scipy import ndimage

    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    return ndimage.distance_transform_edt(~brain, sampling=zooms)


def closest_mm(mask, brain, affine):
    return float(distance_mm(brain, affine)[mask].min())


@pytest.fixture(scope="module", params=["brainsmall", "ixi"])
def head(request, tmp_path_factory, brainsmall_path):
    """A real head on disk, registered, with its own brain mask (deepbet)."""
    root = tmp_path_factory.mktemp(f"guard_{request.param}")
    path = root / "sub-01_T1w.nii.gz"
    if request.param == "ixi":
        heads = request.getfixturevalue("shared_heads")
        shutil.copy(sorted((heads / "ixi").glob("IXI*_T1w.nii.gz"))[0], path)
    else:
        nb.save(load_brainsmall(brainsmall_path), path)
    reg, distance = register_file(str(path))
    brain_file, info = brain_mask_file(str(path), root)
    brain = np.asanyarray(nb.load(brain_file).dataobj) > 0
    return {"path": path, "root": root, "reg": reg, "distance": distance, "brain": brain,
            "brain_file": brain_file, "brain_info": info, "affine": nb.load(path).affine}


def test_brain_mask_is_a_brain(head):
    """deepbet finds one brain of a plausible size."""
    from scipy import ndimage

    assert 900 < head["brain_info"]["brain_mask_ml"] < 1900
    assert ndimage.label(head["brain"])[1] == 1
    assert head["brain_info"]["brain_model"]["name"] == "deepbet"
    assert len(head["brain_info"]["brain_model"]["sha256"]) == 64


@pytest.fixture()
def unbounded_refinement(monkeypatch):
    """The deformable refinement's guard free to move any distance from the affine one: a
    refinement that failed beyond the bound (see the next test for the bound itself)."""
    from bidsreface.deface import mask

    monkeypatch.setattr(mask, "MAX_SYN_SHRINK_MM", 1e3)
    monkeypatch.setattr(mask, "MAX_SYN_SHRINK_OWN_MM", 1e3)


def test_refined_guard_moves_a_bounded_distance_from_the_affine_one(head):
    """A refinement that puts the template brain 20 mm back moves the guard at most
    ``MAX_SYN_SHRINK_MM`` from where the affine puts it, or ``MAX_SYN_SHRINK_OWN_MM`` with the
    image's own brain guarding too; the own brain stays the margin away."""
    from scipy import ndimage

    from bidsreface.deface.mask import MAX_SYN_SHRINK_MM, MAX_SYN_SHRINK_OWN_MM, face_mask
    from bidsreface.deface.template import load_template

    brain, affine, reg = head["brain"], head["affine"], head["reg"]
    template = load_template()
    wrong = misplaced_template_brain(head)
    vox = np.linalg.inv(template.affine) @ np.linalg.inv(reg.matrix) @ affine

    def affine_distance(mask):
        idx = np.argwhere(mask)
        return ndimage.map_coordinates(template.brain_distance_mm(),
                                       vox[:3, :3] @ idx.T + vox[:3, 3:4], order=1, cval=1e3)

    alone, info = face_mask(brain.shape, affine, reg.matrix, template, brain_distance=wrong)
    own, own_info = face_mask(brain.shape, affine, reg.matrix, template, brain_distance=wrong,
                              own_brain=brain)
    assert info["syn_shrink_mm"] == MAX_SYN_SHRINK_MM
    assert own_info["syn_shrink_mm"] == MAX_SYN_SHRINK_OWN_MM
    # the 20 mm move is cut to the bound: nothing closer to the affinely carried brain
    # (less one voxel of the template, for interpolation)
    assert affine_distance(alone).min() >= info["guard_mm_template"] - MAX_SYN_SHRINK_MM - 1.5
    assert affine_distance(own).min() >= own_info["guard_mm_template"] \
        - MAX_SYN_SHRINK_OWN_MM - 1.5
    # and the larger bound is used: the mask reaches closer than the smaller bound allows
    assert affine_distance(own).min() < info["guard_mm_template"] - MAX_SYN_SHRINK_MM
    assert not (own & brain).any() and closest_mm(own, brain, affine) > MARGIN_MM


@pytest.mark.usefixtures("unbounded_refinement")
def test_own_brain_kept_when_the_template_brain_is_misplaced(head):
    """With the carried template brain moved back, its guard alone lets the mask into the
    brain; with the image's own brain in the guard, no voxel of it is defaced and the mask
    stays the margin away from it."""
    brain, affine, reg = head["brain"], head["affine"], head["reg"]
    wrong = misplaced_template_brain(head)
    alone, alone_path, _ = deface_file(str(head["path"]), reg.matrix, head["root"] / "alone",
                                       brain_distance=wrong)
    alone_mask = np.asanyarray(nb.load(alone_path).dataobj) > 0
    assert (alone_mask & brain).sum() > 0  # the test would catch a guard that failed
    _, guarded_path, info = deface_file(str(head["path"]), reg.matrix,
                                        head["root"] / "guarded", brain_distance=wrong,
                                        own_brain=brain)
    guarded = np.asanyarray(nb.load(guarded_path).dataobj) > 0
    assert info["brain_guard"] == "own+template" and info["guard_voxels_own_only"] > 0
    assert not (guarded & brain).any()
    assert closest_mm(guarded, brain, affine) > MARGIN_MM
    assert guarded.sum() > 0.8 * alone_mask.sum()  # the rest of the face still goes


@pytest.mark.usefixtures("unbounded_refinement")
def test_qc_fails_an_image_whose_own_brain_changed(head, tmp_path):
    """Defaced with the misplaced template brain alone: every other check passes (the mask
    agrees with the guard it was given, nothing changed outside it), and the QC fails the
    image for its own brain."""
    reg = head["reg"]
    values, affine = misplaced_template_brain(head)
    distance_file = tmp_path / "distance.nii.gz"
    nb.save(nb.Nifti1Image(values.astype(np.float32), affine), distance_file)
    defaced, mask_file, mask_info = deface_file(str(head["path"]), reg.matrix, tmp_path,
                                                brain_distance=(values, affine))
    metrics, _ = image_qc(head["path"], defaced, mask_file, reg.matrix, reg.to_dict(),
                          mask_info, distance_file, brain_mask_file=head["brain_file"],
                          brain_mask_info=head["brain_info"])
    assert metrics["guard_overlap"] == 0 and metrics["changed_outside_mask"] == 0
    assert metrics["brain_guard"] == "own+template"
    assert metrics["own_brain_changed"] > 0
    assert metrics["status"] == "failed"
    assert f"{metrics['own_brain_changed']} voxels of the image's own brain mask changed" in \
        metrics["reasons"]
    json.dumps(metrics, allow_nan=False)  # as the QC record is written


def test_guard_recorded(head):
    raw = np.asanyarray(nb.load(head["path"]).dataobj)
    assert brain_checks(raw, {"defaced": raw}, None, None) == {
        "brain_guard": "template", "brain_mask": None, "own_brain_changed": None}
    record = brain_checks(raw, {"defaced": raw}, head["brain"], head["brain_info"])
    assert record["brain_guard"] == "own+template" and record["own_brain_changed"] == 0
    assert record["brain_mask"]["brain_mask"] == "own"


def test_qc_fails_a_mask_within_the_margin_of_the_own_brain(head, tmp_path):
    """A mask made with a 2 mm margin changes no voxel of the own brain, yet comes closer to
    it than the 5 mm the run asked for: the QC fails the image for it."""
    reg, distance = head["reg"], head["distance"]
    distance_file = tmp_path / "distance.nii.gz"
    nb.save(nb.Nifti1Image(distance[0].astype(np.float32), distance[1]), distance_file)
    defaced, mask_file, mask_info = deface_file(str(head["path"]), reg.matrix, tmp_path,
                                                brain_margin_mm=2.0, brain_distance=distance,
                                                own_brain=head["brain"])
    mask = np.asanyarray(nb.load(mask_file).dataobj) > 0
    assert not (mask & head["brain"]).any()
    assert closest_mm(mask, head["brain"], head["affine"]) <= MARGIN_MM
    metrics, _ = image_qc(head["path"], defaced, mask_file, reg.matrix, reg.to_dict(),
                          mask_info, distance_file, brain_margin_mm=MARGIN_MM,
                          brain_mask_file=head["brain_file"], brain_mask_info=head["brain_info"])
    assert metrics["own_brain_changed"] == 0 and metrics["own_guard_overlap"] > 0
    assert metrics["status"] == "failed"
    assert any("within the brain margin of the image's own brain" in reason
               for reason in metrics["reasons"])


def test_own_brain_gives_the_margin(head):
    """With the own brain guarding, the carried template brain keeps a smaller margin and the
    margin is measured from the own brain: the mask is a superset of the one the template
    brain's full margin allows, never within the smaller margin of the carried template
    brain, and the margin away from the own brain."""
    from bidsreface.deface.mask import TEMPLATE_MARGIN_WITH_OWN_MM, face_mask
    from bidsreface.deface.template import load_template
    from bidsreface.qc.metrics import guard_margin_mm, guard_overlap

    brain, affine, reg = head["brain"], head["affine"], head["reg"]
    distance, template = head["distance"], load_template()
    alone, alone_info = face_mask(brain.shape, affine, reg.matrix, template,
                                  brain_distance=distance)
    own, own_info = face_mask(brain.shape, affine, reg.matrix, template,
                              brain_distance=distance, own_brain=brain)
    assert own_info["template_margin_mm"] == TEMPLATE_MARGIN_WITH_OWN_MM < MARGIN_MM
    assert alone_info["template_margin_mm"] == MARGIN_MM
    keeps_no_more = alone & ~own
    assert not (keeps_no_more & (distance_mm(brain, affine) > MARGIN_MM)).any()
    assert own.sum() > alone.sum()
    assert guard_overlap(own, affine, *distance,
                         guard_margin_mm(reg.matrix, TEMPLATE_MARGIN_WITH_OWN_MM)) == 0
    assert closest_mm(own, brain, affine) > MARGIN_MM


def test_guard_brain_errs_on_the_side_of_brain(head):
    """The guard's brain (deepbet at the guard's threshold) holds all of deepbet's brain at
    its own 0.5 threshold, and more: the voxels where the network is unsure."""
    from bidsreface.deface.brain import GUARD_THRESHOLD, own_brain_mask

    img = nb.load(head["path"])
    data = np.asanyarray(img.dataobj)
    at_half = own_brain_mask(data, img.affine, threshold=0.5)
    assert GUARD_THRESHOLD < 0.5
    assert not (at_half & ~head["brain"]).any()
    assert head["brain"].sum() > at_half.sum()
