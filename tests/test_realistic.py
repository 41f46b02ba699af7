"""A dataset shaped like a real one, run with no ``--suffixes``: every anatomical image
de-identified, file collections sharing one mask, a T2w-only session, the input untouched."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re

import nibabel as nib
import numpy as np
import pytest
from conftest import checksums, read_only
from realistic_dataset import ANAT, MP2RAGE, MP2RAGE_LEADER, build

from bidsreface.bids import AnatImage, derivative_path
from bidsreface.derivatives import qc_path


@pytest.fixture(scope="module")
def realistic_run(brainsmall_path, tmp_path_factory):
    """Participant level (every default, ``--export-bids``) then group level, read-only input."""
    from bidsreface.cli.run import main

    bids = build(tmp_path_factory.mktemp("realistic") / "bids", brainsmall_path)
    before = checksums(bids)
    out = tmp_path_factory.mktemp("realistic_out") / "bidsreface"
    work = tmp_path_factory.mktemp("realistic_work")
    export = tmp_path_factory.mktemp("realistic_export") / "deidentified"
    stderr = io.StringIO()
    with read_only(bids), contextlib.redirect_stderr(stderr):
        participant = main([str(bids), str(out), "participant", "--nprocs", "2", "-w",
                            str(work), "--export-bids", str(export)])
        group = main([str(bids), str(out), "group", "-w", str(work)])
    return {"bids": bids, "out": out, "export": export, "before": before,
            "codes": (participant, group), "stderr": stderr.getvalue()}


def _image(run, rel) -> AnatImage:
    return AnatImage.from_path(run["bids"] / rel, run["bids"])


def _record(run, rel) -> dict:
    return json.loads(qc_path(run["out"], _image(run, rel)).read_text())


def test_exit_codes_and_input_unchanged(realistic_run):
    assert realistic_run["codes"] == (0, 0)
    assert checksums(realistic_run["bids"]) == realistic_run["before"]


@pytest.mark.parametrize("rel", ANAT)
def test_every_anatomical_image_has_its_output(realistic_run, rel):
    run = realistic_run
    image = _image(run, rel)
    record = _record(run, rel)
    assert record["status"] == "ok", record.get("reason")
    defaced = derivative_path(run["out"], image, desc="defaced")
    assert defaced.is_file()
    raw, out = nib.load(image.path), nib.load(defaced)
    assert out.shape == raw.shape and out.get_data_dtype() == raw.get_data_dtype()
    assert np.array_equal(out.affine, raw.affine)
    # T1w refaced, every other contrast defaced; the record says which
    refaced = derivative_path(run["out"], image, desc="refaced")
    if image.suffix == "T1w":
        assert record["reface"]["reface_method"] == "cgan" and refaced.is_file()
    else:
        assert record["reface"]["reface_method"] == "none" and not refaced.exists()


def test_nothing_else_is_processed(realistic_run):
    out = realistic_run["out"]
    defaced = sorted(p.relative_to(out).as_posix() for p in out.rglob("*_desc-defaced_*.nii.gz"))
    assert len(defaced) == len(ANAT)
    assert not any("func" in p or "preproc" in p for p in defaced)


def test_mp2rage_collection_shares_one_mask(realistic_run):
    run = realistic_run
    leader = _image(run, MP2RAGE_LEADER)
    leader_mask = np.asarray(nib.load(derivative_path(
        run["out"], leader, mod=leader.suffix, suffix="defacemask")).dataobj) > 0
    assert leader_mask.sum() > 0
    assert "mask_from" not in _record(run, MP2RAGE_LEADER)["mask"]
    for rel in MP2RAGE:
        image = _image(run, rel)
        mask = np.asarray(nib.load(derivative_path(
            run["out"], image, mod=image.suffix, suffix="defacemask")).dataobj) > 0
        assert np.array_equal(mask, leader_mask), rel
        record = _record(run, rel)
        # registered once, through the leader or (when its registration fails its check) the
        # next magnitude part or map; the same registration for every part
        assert record["registration"]["registered_from"] in {
            AnatImage.from_path(r).path.name for r in MP2RAGE if "phase" not in r}
        assert record["registration"]["matrix"] == _record(run, MP2RAGE_LEADER)[
            "registration"]["matrix"]
        if rel != MP2RAGE_LEADER:
            assert record["mask"]["mask_from"] == MP2RAGE_LEADER
            assert record["registration"]["mask_from"] == MP2RAGE_LEADER
        # magnitude and phase alike: background inside the mask, the input's bytes outside
        raw = np.asanyarray(nib.load(image.path).dataobj.get_unscaled())
        out = np.asanyarray(nib.load(derivative_path(run["out"], image, desc="defaced"))
                            .dataobj.get_unscaled())
        assert np.array_equal(out[~mask], raw[~mask]), rel
        assert np.all(out[mask] == (0 if raw.min() <= 0 else raw.min())), rel
        assert np.count_nonzero(raw[mask] != out[mask]) > 0, rel


def test_t2w_only_session_registers_to_the_template(realistic_run):
    record = _record(realistic_run, "sub-02/anat/sub-02_T2w.nii.gz")
    assert record["registration"]["reference"] == "template"
    # an MP2RAGE-only session too: its leader registers to the template
    assert _record(realistic_run, MP2RAGE_LEADER)["registration"]["reference"] == "template"
    # the FLAIR of a session with a T1w follows it
    flair = _record(realistic_run, "sub-01/ses-1/anat/sub-01_ses-1_FLAIR.nii.gz")
    assert flair["registration"]["reference"] == "sub-01_ses-1_acq-mprage_run-1_T1w.nii"


def test_export_covers_every_anatomical_image(realistic_run):
    export = realistic_run["export"]
    for rel in ANAT:
        assert (export / rel).is_file(), rel
    assert not (export / "derivatives").exists()
    left_out = (export / "code" / "bidsreface" / "left_out.tsv").read_text()
    assert not any(rel in left_out for rel in ANAT)
    # a 3D-readable bold that shows a face (its first volume is a real head) is not exported:
    # bidsreface de-identifies anatomical images only; it is listed with its sidecar
    bolds = sorted(p.relative_to(realistic_run["bids"]).as_posix()
                   for p in realistic_run["bids"].glob("sub-*/**/func/*_bold.nii*"))
    for bold in bolds:
        shown = [line for line in left_out.splitlines() if line.startswith(bold + "\t")]
        if shown:
            assert "shows a face (score" in shown[0], shown
            assert not (export / bold).exists()
        else:
            assert (export / bold).is_file()


def test_group_tables_cover_every_suffix(realistic_run):
    out = realistic_run["out"]
    suffixes = sorted({AnatImage.from_path(rel).suffix for rel in ANAT})
    tables = sorted(p.name for p in out.glob("group_*.tsv") if p.name != "group_audit.tsv")
    assert tables == sorted(f"group_{s}.tsv" for s in suffixes)
    with open(out / "group_MP2RAGE.tsv") as fobj:
        rows = list(csv.DictReader(fobj, delimiter="\t"))
    assert len(rows) == 4
    assert {row["mask_from"] for row in rows} == {"n/a", MP2RAGE_LEADER}


def test_progress_lines(realistic_run):
    lines = realistic_run["stderr"].splitlines()
    assert lines[0] == ("bidsreface: 10 images of 2 participants selected: 1 FLAIR, "
                        "4 MP2RAGE, 1 T1map, 1 T1w, 1 T2w, 1 UNIT1, 1 inplaneT2")
    progress = [line for line in lines if line.startswith("bidsreface: [")]
    duration = r"(\d+ s|\d+ min|\d+ h \d\d min)"
    pattern = re.compile(rf"bidsreface: \[(\d+)/10\] (sub-\S+(?: \S+)*): ok, {duration}"
                         rf"(; about {duration} left)?$")
    matches = [pattern.match(line) for line in progress]
    assert all(matches), progress
    assert [int(m.group(1)) for m in matches] == list(range(1, 11))
    labels = sorted(m.group(2) for m in matches)
    assert labels == sorted(AnatImage.from_path(rel).path.name.split(".")[0].replace("_", " ")
                            for rel in ANAT)
    assert "left" not in progress[-1]
    assert "Traceback" not in realistic_run["stderr"]
    # nothing asked for is missing: the only warnings are QC flags, one per flagged image
    warnings = [line for line in lines if "warning" in line]
    assert all(re.match(r"bidsreface: warning: sub-\S+( \S+)*: .* \(see sub-\S+\.html\)$",
                        line) for line in warnings), warnings
    assert "bidsreface: 10 of 10 images de-identified" in lines


def test_report_says_what_was_done(realistic_run):
    report = (realistic_run["out"] / "sub-01.html").read_text()
    assert report.count("De-identified: defaced, then refaced (cgan).") == 1  # the T1w
    leader = MP2RAGE_LEADER.rsplit("/", 1)[-1]
    assert report.count(f"De-identified: defaced (face mask of {leader}, same "
                        f"acquisition).") == len(MP2RAGE) - 1
    assert report.count("De-identified: defaced.") == 3  # FLAIR, inplaneT2, the leader
