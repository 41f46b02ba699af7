"""BIDS queries, derivative names, sidecars and dataset_description on a tiny dataset."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsreface import __codeurl__, __version__
from bidsreface.bids import (
    AnatImage,
    collect_images,
    derivative_path,
    name_problem,
    scrub_sidecar,
    write_dataset_description,
    write_json_atomic,
    write_sidecar,
)
from bidsreface.config import IDENTIFYING_FIELDS, Settings
from bidsreface.errors import UsageError

IMAGES = [
    "sub-01/ses-1/anat/sub-01_ses-1_run-01_T1w.nii.gz",
    "sub-01/ses-1/anat/sub-01_ses-1_run-02_T1w.nii.gz",
    "sub-01/ses-1/anat/sub-01_ses-1_acq-fast_ce-gad_rec-norm_T1w.nii.gz",
    "sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz",
    "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz",
    "sub-02/anat/sub-02_T1w.nii",
    "sub-02/anat/sub-02_FLAIR.nii.gz",
    "sub-03/anat/sub-03_T2w.nii.gz",
]
OTHER_FILES = [
    "sub-01/ses-1/func/sub-01_ses-1_task-rest_bold.nii.gz",
    "derivatives/bidsreface/sub-01/ses-1/anat/sub-01_ses-1_desc-defaced_T1w.nii.gz",
    "sourcedata/sub-01/anat/sub-01_T1w.nii.gz",
]


def _nifti(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)).to_filename(path)


def _description(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"})
    )


@pytest.fixture
def bids_dir(tmp_path) -> Path:
    root = tmp_path / "raw"
    _description(root)
    (root / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\nsub-03\n")
    (root / "README").write_text("tiny dataset\n")
    for rel in IMAGES + OTHER_FILES:
        _nifti(root / rel)
    (root / "T1w.json").write_text(
        json.dumps(
            {"RepetitionTime": 2.0, "InstitutionName": "Hospital", "MagneticFieldStrength": 3}
        )
    )
    (root / "sub-01/ses-2/anat/sub-01_ses-2_T1w.json").write_text(
        json.dumps({"RepetitionTime": 2.3, "PatientName": "Doe^J", "EchoTime": 0.003})
    )
    (root / "derivatives/bidsreface/dataset_description.json").write_text(
        json.dumps({"Name": "old", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
                    "GeneratedBy": [{"Name": "bidsreface"}]})
    )  # fmt: skip
    return root


def _settings(bids_dir: Path, **kwargs) -> Settings:
    base = bids_dir.parent
    return Settings(
        bids_dir=bids_dir,
        output_dir=base / "out",
        analysis_level="participant",
        work_dir=base / "work",
        **kwargs,
    )


def _relpaths(images: dict) -> dict:
    return {sub: [img.relpath for img in imgs] for sub, imgs in images.items()}


def _snapshot(root: Path) -> dict:
    return {
        p.relative_to(root).as_posix(): (
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        )
        for p in sorted(root.rglob("*"))
    }


def test_collect_default_every_anatomical_suffix(bids_dir):
    images, warnings = collect_images(_settings(bids_dir))
    assert _relpaths(images) == {
        "01": [
            "sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz",
            "sub-01/ses-1/anat/sub-01_ses-1_acq-fast_ce-gad_rec-norm_T1w.nii.gz",
            "sub-01/ses-1/anat/sub-01_ses-1_run-01_T1w.nii.gz",
            "sub-01/ses-1/anat/sub-01_ses-1_run-02_T1w.nii.gz",
            "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz",
        ],
        "02": ["sub-02/anat/sub-02_FLAIR.nii.gz", "sub-02/anat/sub-02_T1w.nii"],
        "03": ["sub-03/anat/sub-03_T2w.nii.gz"],
    }
    assert warnings == []  # what each participant has is what is selected


def test_collect_t1w(bids_dir):
    images, warnings = collect_images(_settings(bids_dir, suffixes=("T1w",)))
    assert _relpaths(images) == {
        "01": [
            "sub-01/ses-1/anat/sub-01_ses-1_acq-fast_ce-gad_rec-norm_T1w.nii.gz",
            "sub-01/ses-1/anat/sub-01_ses-1_run-01_T1w.nii.gz",
            "sub-01/ses-1/anat/sub-01_ses-1_run-02_T1w.nii.gz",
            "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz",
        ],
        "02": ["sub-02/anat/sub-02_T1w.nii"],
    }
    assert warnings == ["T1w: found for 2 of 3 participants",
                        "1 of 3 participants have no T1w image and are skipped: sub-03"]


def test_unindexed_image_is_selected_and_named(bids_dir):
    """An anatomical file pybids does not index (unknown entity) is selected, never dropped;
    the run then fails it by name (:func:`bidsreface.bids.name_problem`)."""
    _nifti(bids_dir / "sub-01/ses-1/anat/sub-01_ses-1_foo-bar_T1w.nii.gz")
    images, warnings = collect_images(_settings(bids_dir, suffixes=("T1w",)))
    image = next(img for img in images["01"] if "foo-bar" in img.path.name)
    assert (image.subject, image.session, image.suffix) == ("01", "1", "T1w")
    assert warnings[-1].startswith("1 image file not indexed as BIDS")
    assert warnings[-1].endswith(": sub-01/ses-1/anat/sub-01_ses-1_foo-bar_T1w.nii.gz")
    assert name_problem(image) == ("file name not valid BIDS: 'foo-bar' is not a BIDS entity; "
                                   "rename the file (and its sidecar) and run again")


def test_image_fields(bids_dir):
    images, _ = collect_images(_settings(bids_dir))
    by_name = {img.path.name: img for imgs in images.values() for img in imgs}
    run = by_name["sub-01_ses-1_run-01_T1w.nii.gz"]
    assert run.path == bids_dir / "sub-01/ses-1/anat/sub-01_ses-1_run-01_T1w.nii.gz"
    assert run.path.is_absolute()
    assert (run.subject, run.session, run.suffix) == ("01", "1", "T1w")
    assert run.entities == {"sub": "01", "ses": "1", "run": "01"}
    assert run.sidecar is None
    full = by_name["sub-01_ses-1_acq-fast_ce-gad_rec-norm_T1w.nii.gz"]
    assert full.entities == {"sub": "01", "ses": "1", "acq": "fast", "ce": "gad", "rec": "norm"}
    with_json = by_name["sub-01_ses-2_T1w.nii.gz"]
    assert with_json.sidecar == bids_dir / "sub-01/ses-2/anat/sub-01_ses-2_T1w.json"
    no_session = by_name["sub-02_T1w.nii"]
    assert no_session.session is None
    assert no_session.relpath == "sub-02/anat/sub-02_T1w.nii"


def test_collect_several_suffixes(bids_dir):
    images, warnings = collect_images(_settings(bids_dir, suffixes=("T1w", "T2w")))
    assert _relpaths(images)["03"] == ["sub-03/anat/sub-03_T2w.nii.gz"]
    assert "sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz" in _relpaths(images)["01"]
    # one line per asked suffix that some participants lack, none per participant
    assert warnings == ["T1w: found for 2 of 3 participants",
                        "T2w: found for 2 of 3 participants"]


def test_collect_participant_and_session(bids_dir):
    images, warnings = collect_images(_settings(bids_dir, participant_label=("02",),
                                                suffixes=("T1w",)))
    assert list(images) == ["02"]
    assert warnings == []
    images, warnings = collect_images(_settings(bids_dir, session_label=("2",)))
    assert _relpaths(images) == {"01": ["sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz"]}
    assert "2 of 3 participants have no anatomical image and are skipped: sub-02, sub-03" \
        in warnings


def test_unknown_participant(bids_dir):
    with pytest.raises(UsageError, match="sub-09, sub-10"):
        collect_images(_settings(bids_dir, participant_label=("01", "09", "10")))


def test_unknown_session(bids_dir):
    with pytest.raises(UsageError, match="ses-7"):
        collect_images(_settings(bids_dir, session_label=("7",)))


def test_filter_file(bids_dir):
    fast = {"t1w": {"acquisition": "fast"}}
    images, warnings = collect_images(_settings(bids_dir, bids_filters=fast,
                                                suffixes=("T1w",)))
    assert _relpaths(images) == {
        "01": ["sub-01/ses-1/anat/sub-01_ses-1_acq-fast_ce-gad_rec-norm_T1w.nii.gz"]
    }
    assert "2 of 3 participants have no T1w image and are skipped: sub-02, sub-03" in warnings
    no_acq = {"T1w": {"acquisition": None}, "bold": {"task": "rest"}}
    images, warnings = collect_images(_settings(bids_dir, bids_filters=no_acq,
                                                suffixes=("T1w",)))
    assert len(images["01"]) == 3
    assert all("acq" not in img.entities for img in images["01"])
    assert any("'bold' ignored" in w for w in warnings)
    runs = {"t1w": {"run": "*"}}
    images, _ = collect_images(_settings(bids_dir, bids_filters=runs, suffixes=("T1w",)))
    assert [img.entities["run"] for img in images["01"]] == ["01", "02"]


def test_filter_with_unknown_entity(bids_dir):
    with pytest.raises(UsageError, match="--bids-filter-file"):
        collect_images(_settings(bids_dir, bids_filters={"t1w": {"colour": "red"}}))


def test_no_matching_images(bids_dir):
    with pytest.raises(UsageError, match="no PDw image found"):
        collect_images(_settings(bids_dir, suffixes=("PDw",)))


def test_skip_validation_still_collects(bids_dir):
    images, _ = collect_images(_settings(bids_dir, skip_bids_validation=True))
    assert "sub-02/anat/sub-02_T1w.nii" in _relpaths(images)["02"]
    assert all("derivatives" not in img.relpath for imgs in images.values() for img in imgs)


def test_not_a_bids_dataset(tmp_path):
    plain = tmp_path / "plain"
    _nifti(plain / "sub-01/anat/sub-01_T1w.nii.gz")
    with pytest.raises(UsageError, match="dataset_description.json is missing") as info:
        collect_images(_settings(plain))
    assert str(plain) in str(info.value)


def test_broken_dataset_description(tmp_path):
    root = tmp_path / "broken"
    _nifti(root / "sub-01/anat/sub-01_T1w.nii.gz")
    (root / "dataset_description.json").write_text("{oops")
    with pytest.raises(UsageError) as info:
        collect_images(_settings(root))
    assert str(root) in str(info.value)
    assert "\n" not in str(info.value)


def test_empty_dataset(tmp_path):
    root = tmp_path / "empty"
    _description(root)
    with pytest.raises(UsageError, match="no participants found"):
        collect_images(_settings(root))


def test_input_dataset_unchanged(bids_dir):
    before = _snapshot(bids_dir)
    collect_images(_settings(bids_dir, suffixes=("T1w", "T2w", "FLAIR")))
    collect_images(_settings(bids_dir, skip_bids_validation=True, session_label=("1",)))
    assert _snapshot(bids_dir) == before


def test_derivatives_dir_inside_dataset_is_not_indexed(bids_dir):
    settings = replace(
        _settings(bids_dir),
        output_dir=bids_dir / "derivatives" / "bidsreface",
        work_dir=bids_dir.parent / "w",
    )
    images, _ = collect_images(settings)
    assert all(img.entities.get("desc") is None for imgs in images.values() for img in imgs)


# --- derivative names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "kwargs", "expected"),
    [
        (
            "sub-01/ses-1/anat/sub-01_ses-1_run-2_T1w.nii.gz",
            {"desc": "defaced"},
            "sub-01/ses-1/anat/sub-01_ses-1_run-2_desc-defaced_T1w.nii.gz",
        ),
        (
            "sub-01/anat/sub-01_T1w.nii",
            {"desc": "refaced"},
            "sub-01/anat/sub-01_desc-refaced_T1w.nii.gz",
        ),
        (
            "sub-01/anat/sub-01_T1w.nii.gz",
            {"mod": "T1w", "suffix": "defacemask"},
            "sub-01/anat/sub-01_mod-T1w_defacemask.nii.gz",
        ),
        (
            "sub-A/ses-pre/anat/sub-A_ses-pre_acq-mprage_ce-gad_rec-norm_run-03_T2w.nii.gz",
            {"mod": "T2w", "suffix": "defacemask"},
            "sub-A/ses-pre/anat/sub-A_ses-pre_acq-mprage_ce-gad_rec-norm_run-03_mod-T2w"
            "_defacemask.nii.gz",
        ),
        (
            "sub-01/ses-1/anat/sub-01_ses-1_acq-x_run-1_T1w.nii.gz",
            {"desc": "defaced", "extension": ".json"},
            "sub-01/ses-1/anat/sub-01_ses-1_acq-x_run-1_desc-defaced_T1w.json",
        ),
        (
            "sub-01/anat/sub-01_inv-1_part-mag_MP2RAGE.nii.gz",
            {"desc": "defaced"},
            "sub-01/anat/sub-01_inv-1_part-mag_desc-defaced_MP2RAGE.nii.gz",
        ),
        (
            "sub-01/anat/sub-01_run-1_echo-2_MEGRE.nii.gz",
            {"mod": "MEGRE", "suffix": "defacemask"},
            "sub-01/anat/sub-01_run-1_mod-MEGRE_echo-2_defacemask.nii.gz",
        ),
        (
            "sub-01/anat/sub-01_T1w.nii.gz",
            {},
            "sub-01/anat/sub-01_T1w.nii.gz",
        ),
    ],
)
def test_derivative_path(tmp_path, raw, kwargs, expected):
    image = AnatImage.from_path(tmp_path / "raw" / raw, bids_dir=tmp_path / "raw")
    out = tmp_path / "out"
    assert derivative_path(out, image, **kwargs) == out / expected


def test_derivative_path_of_collected_images(bids_dir, tmp_path):
    images, _ = collect_images(_settings(bids_dir))
    names = {
        derivative_path(tmp_path, img, desc="defaced").relative_to(tmp_path).as_posix()
        for imgs in images.values()
        for img in imgs
    }
    assert "sub-02/anat/sub-02_desc-defaced_T1w.nii.gz" in names
    assert (
        "sub-01/ses-1/anat/sub-01_ses-1_acq-fast_ce-gad_rec-norm_desc-defaced_T1w.nii.gz" in names
    )
    assert len(names) == 8  # every anatomical image by default, one name each


# --- sidecars -----------------------------------------------------------------------------


def test_scrub_sidecar():
    meta = dict.fromkeys(IDENTIFYING_FIELDS, "secret")
    meta.update({"PatientName": "Doe", "PatientBirthDate": "1970", "PatientSex": "F"})
    meta.update({"RepetitionTime": 2.3, "Manufacturer": "Siemens", "EchoTime": 0.003})
    original = dict(meta)
    clean = scrub_sidecar(meta)
    assert clean == {"RepetitionTime": 2.3, "Manufacturer": "Siemens", "EchoTime": 0.003}
    assert meta == original
    assert clean is not meta


def test_write_json_atomic(tmp_path):
    target = tmp_path / "deep" / "x.json"
    write_json_atomic(target, {"a": [1, 2], "b": "é"})
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": [1, 2], "b": "é"}
    write_json_atomic(target, {"a": 3})
    assert json.loads(target.read_text()) == {"a": 3}
    with pytest.raises(TypeError):
        write_json_atomic(target, {"a": object()})
    with pytest.raises(ValueError):
        write_json_atomic(target, {"a": float("nan")})
    assert json.loads(target.read_text()) == {"a": 3}
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.json"]


def test_write_sidecar_inherits_and_scrubs(bids_dir, tmp_path):
    images, _ = collect_images(_settings(bids_dir))
    by_name = {img.path.name: img for imgs in images.values() for img in imgs}
    own = by_name["sub-01_ses-2_T1w.nii.gz"]
    out = derivative_path(tmp_path / "out", own, desc="defaced", extension=".json")
    write_sidecar(out, own, {"DefaceMethod": "template", "RepetitionTime": 2.3})
    meta = json.loads(out.read_text())
    assert meta == {
        "RepetitionTime": 2.3,
        "MagneticFieldStrength": 3,
        "EchoTime": 0.003,
        "Sources": ["bids:raw:sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz"],
        "DefaceMethod": "template",
    }
    inherited = by_name["sub-02_T1w.nii"]
    out = derivative_path(tmp_path / "out", inherited, desc="defaced", extension=".json")
    write_sidecar(out, inherited, {})
    assert json.loads(out.read_text()) == {
        "RepetitionTime": 2.0,
        "MagneticFieldStrength": 3,
        "Sources": ["bids:raw:sub-02/anat/sub-02_T1w.nii"],
    }


def test_write_sidecar_without_dataset_root(tmp_path):
    raw = tmp_path / "sub-05/anat/sub-05_T1w.nii.gz"
    _nifti(raw)
    raw.with_name("sub-05_T1w.json").write_text(json.dumps({"StudyDate": "x", "EchoTime": 1}))
    image = AnatImage.from_path(raw)
    write_sidecar(tmp_path / "s.json", image, {"Extra": True})
    assert json.loads((tmp_path / "s.json").read_text()) == {
        "EchoTime": 1,
        "Sources": ["bids:raw:sub-05/anat/sub-05_T1w.nii.gz"],
        "Extra": True,
    }


# --- dataset_description -------------------------------------------------------------------


def test_dataset_description_outside_dataset(tmp_path):
    out = tmp_path / "out"
    write_dataset_description(out, tmp_path / "raw", {"ModelSHA256": "abc"})
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] == "1.9.0"
    assert desc["DatasetType"] == "derivative"
    assert desc["Name"]
    assert desc["GeneratedBy"] == [
        {"Name": "bidsreface", "Version": __version__, "CodeURL": __codeurl__,
         "ModelSHA256": "abc"}
    ]  # fmt: skip
    assert "DatasetLinks" not in desc
    assert str(tmp_path) not in json.dumps(desc)


def test_dataset_description_in_derivatives(tmp_path):
    raw = tmp_path / "raw"
    out = raw / "derivatives" / "bidsreface"
    write_dataset_description(out, raw)
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetLinks"] == {"raw": "../.."}


def test_dataset_description_left_alone_when_identical(tmp_path):
    out = tmp_path / "out"
    write_dataset_description(out, tmp_path / "raw")
    target = out / "dataset_description.json"
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    inode = target.stat().st_ino
    write_dataset_description(out, tmp_path / "raw")
    assert target.stat().st_mtime_ns == 1_000_000_000
    assert target.stat().st_ino == inode
    write_dataset_description(out, tmp_path / "raw", {"Container": {"Type": "docker"}})
    assert json.loads(target.read_text())["GeneratedBy"][0]["Container"] == {"Type": "docker"}
    assert sorted(p.name for p in out.iterdir()) == ["dataset_description.json"]


def test_default_selection_covers_collections_and_maps(tmp_path):
    """An MP2RAGE-only dataset is selected whole by default; a raw ``defacemask`` is not."""
    root = tmp_path / "mp2rage"
    _description(root)
    anat = "sub-01/anat/sub-01_"
    names = [f"{anat}inv-{i}_part-{p}_MP2RAGE.nii" for i in (1, 2) for p in ("mag", "phase")]
    names += [f"{anat}UNIT1.nii", f"{anat}T1map.nii", f"{anat}mod-T1w_defacemask.nii.gz"]
    for name in names:
        _nifti(root / name)
    images, warnings = collect_images(_settings(root))
    assert sorted(img.path.name for img in images["01"]) == sorted(
        Path(n).name for n in names[:-1])
    assert warnings == []
    images, _ = collect_images(_settings(root, suffixes=("UNIT1",)))
    assert [img.path.name for img in images["01"]] == ["sub-01_UNIT1.nii"]
