"""Inputs as users hold them: names pybids rejects, dangling links, unreadable sidecars,
DataLad clones with content not fetched, odd header geometry. Each bad image fails alone with
one line; every other image is de-identified; nothing is skipped in silence."""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from conftest import checksums
from nibabel.openers import ImageOpener

from bidsreface.bids import collect_images
from bidsreface.cli.run import main
from bidsreface.config import Settings

FAST = ["--reface", "template", "--nprocs", "1"]


@pytest.fixture(scope="module")
def head(real_dataset):
    """VolPack's brainsmall (a real head, the demo's smallest image) and its sidecar."""
    root, _ = real_dataset
    folder = root / "bids" / "sub-02" / "anat"
    return folder / "sub-02_T1w.nii.gz", folder / "sub-02_T1w.json"


@pytest.fixture(scope="module")
def t2w(real_dataset):
    """The demo's real T2w (brainsmall's contrast-inverted head)."""
    root, _ = real_dataset
    return root / "bids" / "sub-04" / "ses-2" / "anat" / "sub-04_ses-2_T2w.nii.gz"


def _dataset(root: Path, real_dataset) -> Path:
    root.mkdir(parents=True)
    shutil.copy(real_dataset[0] / "bids" / "dataset_description.json", root)
    return root


def _put(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)
    return target


def _lines(err: str, start: str = "bidsreface: ") -> list[str]:
    return [line for line in err.splitlines() if line.startswith(start)]


# ---------------------------------------------------------------- names pybids does not index

def test_names_pybids_rejects_are_de_identified_or_failed_by_name(head, real_dataset,
                                                                   tmp_path, capfd):
    """Before: the images named out of BIDS were dropped without a word, exit 0."""
    bids = _dataset(tmp_path / "bids", real_dataset)
    _put(head[0], bids / "sub-02" / "anat" / "sub-02_T1w.nii.gz")
    _put(head[0], bids / "sub-07" / "anat" / "sub-07_acq-été_T1w.nii.gz")
    _put(head[0], bids / "sub-08" / "anat" / "sub-08_acq-a b_T1w.nii.gz")
    _put(head[0], bids / "sub-09" / "anat" / "sub-09_run-1_acq-x_T1w.nii.gz")  # out of order
    before = checksums(bids)
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "-w", str(tmp_path / "work"), *FAST])
    err = capfd.readouterr().err
    assert code == 1
    assert checksums(bids) == before
    lines = _lines(err)
    assert any("3 image files not indexed as BIDS" in line
               and "sub-07/anat/sub-07_acq-été_T1w.nii.gz" in line for line in lines)
    assert "bidsreface: 4 images of 4 participants selected: 4 T1w" in lines
    assert ("bidsreface: sub-07 acq-été T1w: failed: file name not valid BIDS: the acq label "
            "'été' holds characters other than letters and digits; rename the file (and its "
            "sidecar) and run again") in lines
    assert any(line.startswith("bidsreface: sub-08 acq-a b T1w: failed: file name not valid "
                               "BIDS: the acq label 'a b'") for line in lines)
    # a name whose only fault is its entities' order is de-identified, outputs named in order
    assert any(" sub-09 run-1 acq-x T1w: ok" in line for line in lines)
    assert (out / "sub-09" / "anat" / "sub-09_acq-x_run-1_desc-defaced_T1w.nii.gz").is_file()
    assert (out / "sub-02" / "anat" / "sub-02_desc-defaced_T1w.nii.gz").is_file()
    assert lines[-1] == ("bidsreface: 2 of 4 images de-identified, 2 failed "
                         "(see the sub-*/log folders)")
    for sub, name in (("07", "sub-07_acq-été_T1w"), ("08", "sub-08_acq-a b_T1w")):
        record = json.loads((out / f"sub-{sub}" / "log" / f"{name}_failed.json").read_text())
        assert record["status"] == "failed" and "not valid BIDS" in record["reason"]
        assert record["source"] == f"sub-{sub}/anat/{name}.nii.gz"
        assert not (out / f"sub-{sub}" / "anat").exists()


def test_only_names_pybids_rejects_names_the_file(head, real_dataset, tmp_path, capfd):
    """Before: "no participants found", exit 2, the file never named."""
    bids = _dataset(tmp_path / "bids", real_dataset)
    _put(head[0], bids / "sub-07" / "anat" / "sub-07_acq-été_T1w.nii.gz")
    code = main([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"),
                 *FAST])
    err = capfd.readouterr().err
    assert code == 1
    assert "no participants found" not in err
    assert "bidsreface: sub-07 acq-été T1w: failed: file name not valid BIDS" in err
    assert "bidsreface: 0 of 1 images de-identified, 1 failed" in err


def test_selection_applies_to_unindexed_images(head, real_dataset, tmp_path):
    bids = _dataset(tmp_path / "bids", real_dataset)
    _put(head[0], bids / "sub-02" / "anat" / "sub-02_T1w.nii.gz")
    _put(head[0], bids / "sub-07" / "ses-1" / "anat" / "sub-07_ses-1_acq-été_T1w.nii.gz")
    _put(head[0], bids / "sub-07" / "ses-2" / "anat" / "sub-07_ses-2_T1.nii.gz")
    _put(head[0], bids / "sub-07" / "ses-2" / "func" / "sub-07_ses-2_acq-été_bold.nii.gz")
    _put(head[0], bids / "derivatives" / "x" / "sub-07" / "anat" / "sub-07_acq-é_T1w.nii.gz")

    def names(**kwargs):
        settings = Settings(bids_dir=bids, output_dir=tmp_path / "o", work_dir=tmp_path / "w",
                            analysis_level="participant", **kwargs)
        images, _ = collect_images(settings)
        return sorted(img.path.name for imgs in images.values() for img in imgs)

    # an unknown suffix is selected too (it may hold a face); func/ and derivatives/ are not
    assert names() == ["sub-02_T1w.nii.gz", "sub-07_ses-1_acq-été_T1w.nii.gz",
                       "sub-07_ses-2_T1.nii.gz"]
    assert names(participant_label=("02",)) == ["sub-02_T1w.nii.gz"]
    assert names(participant_label=("07",), session_label=("1",)) == [
        "sub-07_ses-1_acq-été_T1w.nii.gz"]
    assert names(suffixes=("T2w", "T1")) == ["sub-07_ses-2_T1.nii.gz"]


# ---------------------------------------------------------------- unreadable files

def test_dangling_link_and_bad_sidecar_fail_alone(head, t2w, real_dataset, tmp_path, capfd):
    """Before: a traceback (FileNotFoundError in resume.file_sha256) and no image processed;
    alone, the bad sidecar stopped the whole dataset with exit 2."""
    bids = _dataset(tmp_path / "bids", real_dataset)
    _put(head[0], bids / "sub-02" / "anat" / "sub-02_T1w.nii.gz")
    _put(head[1], bids / "sub-02" / "anat" / "sub-02_T1w.json")
    (bids / "sub-05" / "anat").mkdir(parents=True)
    (bids / "sub-05" / "anat" / "sub-05_T1w.nii.gz").symlink_to("/nonexistent/sub-05.nii.gz")
    _put(head[0], bids / "sub-06" / "anat" / "sub-06_T1w.nii.gz")
    (bids / "sub-06" / "anat" / "sub-06_T1w.json").write_text('{"RepetitionTime": 2.3,')
    # the session's T1w is dangling: its T2w, registered to it, cannot be processed either
    (bids / "sub-10" / "anat").mkdir(parents=True)
    (bids / "sub-10" / "anat" / "sub-10_T1w.nii.gz").symlink_to("missing.nii.gz")
    _put(t2w, bids / "sub-10" / "anat" / "sub-10_T2w.nii.gz")
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "-w", str(tmp_path / "work"), *FAST])
    captured = capfd.readouterr()
    assert code == 1
    assert "Traceback" not in captured.err + captured.out
    lines = _lines(captured.err)
    assert "bidsreface: sub-05 T1w: failed: dangling symbolic link (to " \
           "/nonexistent/sub-05.nii.gz)" in lines
    sidecar = [line for line in lines if line.startswith("bidsreface: sub-06 T1w: failed: ")]
    assert len(sidecar) == 1
    assert sidecar[0].startswith("bidsreface: sub-06 T1w: failed: "
                                 "sub-06/anat/sub-06_T1w.json: unreadable JSON sidecar (")
    assert "bidsreface: sub-10 T1w: failed: dangling symbolic link (to missing.nii.gz)" in lines
    assert ("bidsreface: sub-10 T2w: failed: not processed: sub-10_T1w.nii.gz failed "
            "(its session's T1w)") in lines
    assert any(line.startswith("bidsreface: [1/1] sub-02 T1w: ok") for line in lines)
    assert lines[-1] == ("bidsreface: 1 of 5 images de-identified, 4 failed "
                         "(see the sub-*/log folders)")
    assert (out / "sub-02" / "anat" / "sub-02_desc-defaced_T1w.nii.gz").is_file()
    for sub, name in (("05", "sub-05_T1w"), ("06", "sub-06_T1w"), ("10", "sub-10_T2w")):
        record = json.loads((out / f"sub-{sub}" / "log" / f"{name}_failed.json").read_text())
        assert record["status"] == "failed"
        assert not (out / f"sub-{sub}" / "anat").exists()
    # the group level and the participant reports list the failures
    assert main([str(bids), str(out), "group", "-w", str(tmp_path / "work")]) == 0
    rows = (out / "group_T1w.tsv").read_text().splitlines()
    assert len(rows) == 1 + 4
    assert "dangling symbolic link" in (out / "sub-05.html").read_text()


# ---------------------------------------------------------------- DataLad

def _tool(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


@pytest.fixture(scope="module")
def partial_clone(head, real_dataset, tmp_path_factory):
    """A DataLad dataset of two participants (images annexed, text in git), cloned, with the
    content of one participant only fetched."""
    datalad = _tool("datalad")
    if datalad is None or shutil.which("git-annex") is None:
        pytest.skip("needs datalad and git-annex (installed by .ci/run)")
    env = {**os.environ, "GIT_AUTHOR_NAME": "bidsreface tests",
           "GIT_AUTHOR_EMAIL": "tests@bidsreface.invalid", "GIT_COMMITTER_NAME": "bidsreface",
           "GIT_COMMITTER_EMAIL": "tests@bidsreface.invalid"}
    base = tmp_path_factory.mktemp("datalad")

    def run(*args, cwd=base):
        subprocess.run([datalad, *args], cwd=cwd, env=env, check=True, capture_output=True,
                       timeout=300)

    run("create", "-c", "text2git", "origin")
    origin = base / "origin"
    shutil.copy(real_dataset[0] / "bids" / "dataset_description.json", origin)
    # two different files: git-annex stores identical content once (one get fetches both)
    other = real_dataset[0] / "bids" / "sub-04" / "ses-2" / "anat" / "sub-04_ses-2_T1w.nii.gz"
    assert other.read_bytes() != head[0].read_bytes()
    for sub, image in (("02", head[0]), ("05", other)):
        _put(image, origin / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz")
        _put(head[1], origin / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.json")
    run("save", "-m", "two participants", cwd=origin)
    run("clone", str(origin), "clone")
    clone = base / "clone"
    run("get", "sub-02", cwd=clone)
    image = clone / "sub-05" / "anat" / "sub-05_T1w.nii.gz"
    assert image.is_symlink() and not image.exists()  # annexed, content not here
    return clone


def test_partial_clone(partial_clone, tmp_path, capfd):
    """Before: a traceback (FileNotFoundError in resume.file_sha256), nothing processed."""
    settings = Settings(bids_dir=partial_clone, output_dir=tmp_path / "out",
                        work_dir=tmp_path / "work", analysis_level="participant")
    images, _ = collect_images(settings)  # pybids indexes the annexed link by its name
    assert sorted(images) == ["02", "05"]
    out = tmp_path / "out"
    code = main([str(partial_clone), str(out), "participant", "-w", str(tmp_path / "work"),
                 *FAST])
    captured = capfd.readouterr()
    assert code == 1
    assert "Traceback" not in captured.err + captured.out
    lines = _lines(captured.err)
    assert ("bidsreface: sub-05 T1w: failed: content not present (git-annex): run "
            "'datalad get sub-05/anat/sub-05_T1w.nii.gz'") in lines
    assert any(line.startswith("bidsreface: [1/1] sub-02 T1w: ok") for line in lines)
    assert (out / "sub-02" / "anat" / "sub-02_desc-defaced_T1w.nii.gz").is_file()
    record = json.loads((out / "sub-05" / "log" / "sub-05_T1w_failed.json").read_text())
    assert "datalad get sub-05/anat/sub-05_T1w.nii.gz" in record["reason"]


# ---------------------------------------------------------------- header geometry

def _with_header(source: Path, target: Path, change) -> Path:
    """*source*'s real head written byte by byte with a header of its geometry, changed by
    *change* (raw fields, unchecked)."""
    img = nb.load(source)
    data = np.asanyarray(img.dataobj)
    header = nb.Nifti1Header()
    header.set_data_shape(data.shape)
    header.set_data_dtype(img.get_data_dtype())
    header.set_qform(img.affine, 1)
    header.set_sform(img.affine, 1)
    header.set_xyzt_units("mm")
    change(header)
    buffer = io.BytesIO()
    header.write_to(buffer)
    buffer.write(b"\0" * (int(header["vox_offset"]) - buffer.tell()))
    buffer.write(np.asarray(data, header.get_data_dtype()).tobytes(order="F"))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(gzip.compress(buffer.getvalue()))
    return target


def _zero_pixdim(header):
    pixdim = header["pixdim"]
    pixdim[1:4] = 0
    header["pixdim"] = pixdim


def _no_codes(header):
    header["qform_code"], header["sform_code"] = 0, 0


def _stored(path: Path) -> nb.Nifti1Header:
    with ImageOpener(path) as fobj:
        return nb.Nifti1Header.from_fileobj(fobj, check=False)


GEOMETRY = ("pixdim", "qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d",
            "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z", "xyzt_units")


def test_nibabel_header_messages_go_to_the_log(head, tmp_path, capfd):
    """nibabel's own message on a pixdim of 0 reaches nipype's logger, not the terminal."""
    path = _with_header(head[0], tmp_path / "pix0.nii.gz", _zero_pixdim)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    target = logging.getLogger("nipype.interface")
    target.addHandler(handler)
    try:
        nb.load(path)
    finally:
        target.removeHandler(handler)
    assert [r.getMessage() for r in records] == [
        "pixdim[1,2,3] should be non-zero; setting 0 dims to 1"]
    captured = capfd.readouterr()
    assert "pixdim" not in captured.err + captured.out


def test_geometry_kept_and_said_once(head, real_dataset, tmp_path, capfd):
    """Before: the pixdim-0 image was written with pixdim 1 (its qform then 1 mm, its sform
    1.9 mm), 26 nibabel lines on stderr; both codes 0: not a word."""
    bids = _dataset(tmp_path / "bids", real_dataset)
    pix0 = _with_header(head[0], bids / "sub-pix0" / "anat" / "sub-pix0_T1w.nii.gz",
                        _zero_pixdim)
    _with_header(head[0], bids / "sub-nocodes" / "anat" / "sub-nocodes_T1w.nii.gz", _no_codes)
    out = tmp_path / "out"
    # two processes: nibabel's messages raised inside the nodes' worker processes too
    main([str(bids), str(out), "participant", "-w", str(tmp_path / "work"), "--reface",
          "template", "--nprocs", "2"])
    captured = capfd.readouterr()
    assert "nibabel.global" not in captured.err + captured.out
    assert "should be non-zero" not in captured.err + captured.out
    warnings = _lines(captured.err, "bidsreface: warning: ")
    assert warnings == [
        "bidsreface: warning: sub-nocodes T1w: no orientation stored (qform and sform codes "
        "0): assumed LAS voxel axes (nibabel's default for such files) and a 1.9x1.9x1.9 mm "
        "voxel size, centred on the volume; check the face in the QC figures; the output "
        "keeps the header as stored",
        "bidsreface: warning: sub-pix0 T1w: pixdim 0x0x0 is not a voxel size: the sform's "
        "(1.9x1.9x1.9 mm) was used; the output keeps the header as stored"]
    assert any(line.startswith("bidsreface: [") and " sub-pix0 T1w: ok" in line
               for line in _lines(captured.err))
    raw = _stored(pix0)
    for name in ("desc-defaced", "desc-refaced"):
        written = _stored(out / "sub-pix0" / "anat" / f"sub-pix0_{name}_T1w.nii.gz")
        for field in GEOMETRY:
            assert np.array_equal(written[field], raw[field]), (name, field)


def test_preflight_names_each_problem(head, t2w, real_dataset, tmp_path):
    """The pure step on its own: an unfetched annexed sidecar, what depends on a failed T1w,
    and two names whose outputs would clash."""
    from bidsreface.cli.run import _dependencies
    from bidsreface.preflight import preflight

    bids = _dataset(tmp_path / "bids", real_dataset)
    _put(head[0], bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    (bids / "sub-01" / "anat" / "sub-01_T1w.json").symlink_to(
        "../../.git/annex/objects/Pq/Xv/MD5E-s491--1234.json/MD5E-s491--1234.json")
    _put(t2w, bids / "sub-01" / "anat" / "sub-01_T2w.nii.gz")
    _put(head[0], bids / "sub-02" / "anat" / "sub-02_acq-x_run-1_T1w.nii.gz")
    _put(head[0], bids / "sub-02" / "anat" / "sub-02_run-1_acq-x_T1w.nii.gz")
    settings = Settings(bids_dir=bids, output_dir=tmp_path / "o", work_dir=tmp_path / "w",
                        analysis_level="participant")
    images, _ = collect_images(settings)
    found = preflight(images, _dependencies(images))
    reasons = {image.path.name: reason for image, reason in found.failures.items()}
    assert reasons == {
        "sub-01_T1w.nii.gz": "sidecar sub-01/anat/sub-01_T1w.json: content not present "
                             "(git-annex): run 'datalad get sub-01/anat/sub-01_T1w.json'",
        "sub-01_T2w.nii.gz": "not processed: sub-01_T1w.nii.gz failed (its session's T1w)",
        "sub-02_run-1_acq-x_T1w.nii.gz": "its outputs would take the names of those of "
                                         "sub-02_acq-x_run-1_T1w.nii.gz; rename one of them",
    }
    assert {s: [i.path.name for i in imgs] for s, imgs in found.images.items()} == {
        "02": ["sub-02_acq-x_run-1_T1w.nii.gz"]}
