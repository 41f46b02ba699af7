"""Outputs read back with the input's exact values, for every way a NIfTI file stores them.

Each storage form of :data:`nifti_forms.FORMS` holds a real head. The writers are checked
directly (fast), then the whole participant workflow and the export run on a dataset of every
form (and, where ``../shared/heads`` is present, a real IXI scan stored as uint8 with a slope
and an AFNI extension).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from nifti_forms import (
    FORMS,
    IDENTIFYING_TEXT,
    KEPT_FIELDS,
    Form,
    file_bytes,
    file_header,
    scaled,
    write_form,
)

from bidsreface.image import save_like, save_mask, stored_values
from bidsreface.reface.infer import fill_face

SHARED_IXI = Path(__file__).resolve().parents[2] / "shared" / "heads" / "ixi"


@pytest.fixture(scope="module")
def head(brainsmall_path):
    from bidsreface.demo import load_brainsmall

    return load_brainsmall(brainsmall_path)


def _front(shape) -> np.ndarray:
    """The front of a brainsmall-shaped grid (its third axis runs anterior to posterior)."""
    mask = np.zeros(shape, bool)
    mask[:, :, :30] = True
    return mask


def assert_header_kept(raw: Path, out: Path, *, fields=KEPT_FIELDS) -> None:
    a, b = file_header(raw), file_header(out)
    assert type(a) is type(b), f"{out.name}: {type(b).__name__} != {type(a).__name__}"
    assert a.endianness == b.endianness, f"{out.name}: byte order changed"
    for name in fields:
        assert np.array_equal(a[name], b[name], equal_nan=True), f"{out.name}: {name} changed"


def assert_same_outside(raw: Path, out: Path, mask: np.ndarray) -> None:
    """Scaled values equal (what a reader sees) and stored values equal, outside *mask*."""
    a, b = scaled(raw), scaled(out)
    assert a.dtype == b.dtype
    assert np.array_equal(a[~mask], b[~mask]), (
        f"{out.name}: {int(np.count_nonzero(a[~mask] != b[~mask]))} voxels read differently "
        f"outside the mask ({a.max()} vs {b.max()} at most)")
    assert np.array_equal(stored_values(raw)[~mask], stored_values(out)[~mask])


def assert_scrubbed(out: Path) -> None:
    header = file_header(out)
    assert len(header.extensions) == 0, f"{out.name}: extensions {header.extensions}"
    for name in ("aux_file", "intent_name", "db_name"):
        if name in header:
            assert bytes(header[name]).strip(b"\0") == b"", f"{out.name}: {name} kept"
    assert bytes(header["descrip"]).startswith(b"defaced by bidsreface") or bytes(
        header["descrip"]).startswith(b"refaced")
    content = file_bytes(out)
    for text in IDENTIFYING_TEXT:
        assert text not in content, f"{out.name} holds {text!r}"


@pytest.mark.parametrize("form", FORMS, ids=[f.name for f in FORMS])
def test_writers_keep_every_storage_form(form, head, tmp_path):
    from bidsreface.deface.apply import deface
    from bidsreface.image import read_header, stored_background, to_stored

    raw = write_form(form, head, tmp_path / "raw" / f"sub-01_{form.name}")
    mask = _front(head.shape)
    stored = stored_values(raw)
    background = stored_background(stored, read_header(raw))
    defaced = save_like(deface(stored, mask, background), raw, tmp_path / "defaced.nii.gz",
                        "defaced")
    assert_header_kept(raw, defaced)
    assert_same_outside(raw, defaced, mask)
    assert_scrubbed(defaced)
    inside = np.unique(scaled(defaced)[mask])
    values = scaled(raw)
    expected = 0 if values.min() <= 0 else values.min()
    assert inside.size == 1 and abs(inside[0] - expected) <= abs(file_header(raw)
                                                                 .get_slope_inter()[0] or 1)

    mask_file = save_mask(mask, raw, tmp_path / "mask.nii.gz")
    assert_header_kept(raw, mask_file, fields=[f for f in KEPT_FIELDS if f not in (
        "datatype", "bitpix", "intent_code", "pixdim")])
    assert file_header(mask_file).get_zooms() == file_header(raw).get_zooms()[:3]
    assert nb.load(mask_file).shape == head.shape[:3]
    assert np.array_equal(nb.load(mask_file).affine, nb.load(raw).affine)
    assert np.array_equal(np.asarray(nb.load(mask_file).dataobj) > 0, mask)

    # refaced values far outside what the scaling can represent are clipped and rounded to it
    def wild(data, affine, face, bg):
        return np.linspace(-1e12, 1e12, int(face.sum()))

    refaced, _ = fill_face(defaced, mask_file, wild, tmp_path / "refaced.nii.gz", "refaced")
    assert_header_kept(raw, refaced)
    assert_same_outside(raw, refaced, mask)
    assert_scrubbed(refaced)
    filled = scaled(refaced)[mask]
    assert np.isfinite(filled).all()
    representable = to_stored(filled, read_header(raw))
    slope, inter = read_header(raw).get_slope_inter()
    back = representable.astype(np.float64) * (slope or 1.0) + (inter or 0.0)
    assert np.allclose(filled, back, rtol=1e-6, atol=0)


def test_a_slope_survives_the_writer(head, tmp_path):
    """The defect as reported: uint8 with a slope read back off by the slope."""
    form = next(f for f in FORMS if f.name == "u8slope")
    raw = write_form(form, head, tmp_path / "sub-01_T1w")
    out = save_like(stored_values(raw), raw, tmp_path / "out.nii.gz", "defaced")
    assert scaled(raw).max() == pytest.approx(int(stored_values(raw).max()) * 13.9, rel=1e-6)
    assert scaled(out).max() == scaled(raw).max()


# --------------------------------------------------------------------------- whole workflow


@pytest.fixture(scope="module")
def zoo_run(head, tmp_path_factory):
    """Participant level and the export on a dataset of every storage form, read-only."""
    from conftest import checksums, read_only

    from bidsreface.cli.run import main

    root = tmp_path_factory.mktemp("zoo")
    bids = root / "bids"
    (bids).mkdir()
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "NIfTI storage forms", "BIDSVersion": "1.9.0"}))
    raws = {}
    for form in FORMS:
        label = form.name.replace("_", "")
        raws[label] = write_form(form, head, bids / f"sub-{label}" / "anat" / f"sub-{label}_T1w")
    if SHARED_IXI.is_dir():
        source = sorted(SHARED_IXI.glob("IXI*_T1w.nii.gz"))[0]
        target = bids / "sub-ixi" / "anat" / "sub-ixi_T1w.nii.gz"
        target.parent.mkdir(parents=True)
        target.write_bytes(source.read_bytes())
        raws["ixi"] = target
    before = checksums(bids)
    out, export = root / "out", root / "export"
    with read_only(bids):
        code = main([str(bids), str(out), "participant", "--suffixes", "T1w", "--nprocs", "2",
                     "-w", str(root / "work"), "--skip-bids-validation",
                     "--export-bids", str(export)])
    return {"bids": bids, "out": out, "export": export, "raws": raws, "code": code,
            "before": before}


def test_zoo_runs_and_leaves_the_input_alone(zoo_run):
    from conftest import checksums

    failed = sorted(p.name for p in zoo_run["out"].glob("sub-*/log/*_failed.json"))
    assert zoo_run["code"] == 0, failed
    assert checksums(zoo_run["bids"]) == zoo_run["before"]


def _outputs(zoo_run, label):
    anat = zoo_run["out"] / f"sub-{label}" / "anat"
    record = json.loads((anat / f"sub-{label}_desc-qc_T1w.json").read_text())
    mask = np.asarray(nb.load(anat / f"sub-{label}_mod-T1w_defacemask.nii.gz").dataobj) > 0
    return anat, record, mask


@pytest.mark.parametrize("label", [f.name for f in FORMS] + ["ixi"])
def test_zoo_outputs_read_back_as_the_input(zoo_run, label):
    if label not in zoo_run["raws"]:
        pytest.skip("../shared/heads/ixi is not on this machine (it comes with the "
                    "project's shared data, not with a clone)")
    raw = zoo_run["raws"][label]
    anat, record, mask = _outputs(zoo_run, label)
    assert record["status"] == "ok", record.get("reason")
    assert mask.any()
    for kind in ("defaced", "refaced"):
        out = anat / f"sub-{label}_desc-{kind}_T1w.nii.gz"
        assert_header_kept(raw, out)
        assert_same_outside(raw, out, mask)
        assert_scrubbed(out)
        assert not np.array_equal(scaled(raw)[mask], scaled(out)[mask])
        assert np.isfinite(scaled(out)).all()
    checks = record["checks"]
    assert checks["changed_outside_mask"] == 0
    assert checks["changed_outside_mask_stored"] == checks["changed_outside_mask_values"] == 0
    removed = [e["code"] for e in record["nifti_header"]["extensions_removed"]]
    assert removed == [int(e.get_code()) for e in file_header(raw).extensions]
    mask_file = anat / f"sub-{label}_mod-T1w_defacemask.nii.gz"
    assert np.array_equal(nb.load(mask_file).affine, nb.load(raw).affine)
    assert file_header(mask_file)["qform_code"] == file_header(raw)["qform_code"]
    assert file_header(mask_file)["sform_code"] == file_header(raw)["sform_code"]
    sidecar = json.loads((anat / f"sub-{label}_desc-defaced_T1w.json").read_text())
    assert len(sidecar["NiftiHeaderScrubbed"]["ExtensionsRemoved"]) == len(removed)

    exported = next((zoo_run["export"] / f"sub-{label}" / "anat").glob(f"sub-{label}_T1w.nii*"))
    assert nb.load(exported).ndim == 3
    assert_same_outside(raw, exported, mask)
    assert_scrubbed(exported)
    meta = json.loads(exported.with_name(f"sub-{label}_T1w.json").read_text())
    if removed:
        assert "extensions removed" in meta["DeidentificationMethod"][-1]


def test_the_ixi_extension_is_gone_and_recorded(zoo_run):
    if "ixi" not in zoo_run["raws"]:
        pytest.skip("../shared/heads/ixi is not on this machine (it comes with the "
                    "project's shared data, not with a clone)")
    _, record, _ = _outputs(zoo_run, "ixi")
    assert record["nifti_header"]["extensions_removed"] == [{"code": 4, "name": "afni"}]


def test_no_identifying_header_text_reaches_any_output(zoo_run):
    """The DICOM extension (a patient name), the AFNI history and the free-text fields of the
    zoo appear in no file of the derivatives or of the export."""
    for root in (zoo_run["out"], zoo_run["export"]):
        for path in root.rglob("*"):
            if path.is_file():
                content = file_bytes(path)
                for text in IDENTIFYING_TEXT:
                    assert text not in content, f"{path} holds {text!r}"


def test_keep_nifti_extensions_is_recorded(head, tmp_path):
    """``--keep-nifti-extensions`` keeps them in the defaced image, and says so."""
    from bidsreface.deface.apply import deface
    from bidsreface.derivatives import header_record

    form = next(f for f in FORMS if f.name == "offset")
    raw = write_form(form, head, tmp_path / "sub-01_T1w")
    mask = _front(head.shape)
    out = save_like(deface(stored_values(raw), mask), raw, tmp_path / "out.nii.gz", "defaced",
                    keep_extensions=True)
    assert [int(e.get_code()) for e in file_header(out).extensions] == [6, 2, 4, 0]
    record = header_record(raw, out, keep_extensions=True)
    assert [e["code"] for e in record["extensions_kept"]] == [6, 2, 4, 0]
    assert record["extensions_removed"] == []
    assert set(record["text_fields_cleared"]) == {"descrip", "aux_file", "intent_name",
                                                  "db_name"}
    with pytest.raises(RuntimeError, match="extension 6"):
        header_record(raw, out, keep_extensions=False)


# --------------------------------------------------------------------------- odd geometry

#: Geometry that nibabel reads only by assuming something: a pixdim of 0 beside a valid sform,
#: and no orientation at all (both codes 0).
ODD_GEOMETRY = (
    Form("pixdimzero", "int16", gain=2.0,
         raw_fields={"pixdim": np.array([-1, 0, 0, 0, 1, 1, 1, 1], np.float32)}),
    Form("nocodes", "int16", gain=2.0, qform_code=0, sform_code=0),
)


def _as_stored(path: Path) -> nb.Nifti1Header:
    """The header as stored, not "fixed" by nibabel's checks (a pixdim of 0 stays 0)."""
    from nibabel.openers import ImageOpener

    with ImageOpener(path) as fobj:
        return nb.Nifti1Header.from_fileobj(fobj, check=False)


@pytest.mark.parametrize("form", ODD_GEOMETRY, ids=[f.name for f in ODD_GEOMETRY])
def test_odd_geometry_is_written_as_stored_and_noted(form, head, tmp_path, capfd):
    """Before: a pixdim of 0 was written as 1, so the output's qform (1 mm) contradicted its
    sform (1.9 mm), and nibabel's messages reached the terminal."""
    from bidsreface.image import geometry_note

    raw = write_form(form, head, tmp_path / "raw" / f"sub-01_{form.name}")
    out = save_like(stored_values(raw), raw, tmp_path / "defaced.nii.gz", "defaced")
    a, b = _as_stored(raw), _as_stored(out)
    for name in KEPT_FIELDS:
        assert np.array_equal(a[name], b[name], equal_nan=True), name
    assert np.array_equal(nb.load(out).affine, nb.load(raw).affine)
    note = geometry_note(raw)
    if form.name == "pixdimzero":
        assert note == ("pixdim 0x0x0 is not a voxel size: the sform's (1.9x1.9x1.9 mm) was "
                        "used; the output keeps the header as stored")
    else:
        assert note.startswith("no orientation stored (qform and sform codes 0): assumed LAS "
                               "voxel axes")
    captured = capfd.readouterr()
    assert "pixdim" not in captured.err + captured.out


def test_geometry_note_only_where_something_was_assumed(head, tmp_path):
    from bidsreface.image import geometry_note

    notes = {form.name: geometry_note(write_form(form, head, tmp_path / form.name))
             for form in FORMS}
    assert notes.pop("codesdiffer") == ("qform and sform disagree (by up to 2 mm across the "
                                        "volume): the sform was used (as nibabel reads it); "
                                        "the output keeps the header as stored")
    assert notes == dict.fromkeys(notes)
