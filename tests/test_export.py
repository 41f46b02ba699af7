"""``--export-bids``: a de-identified copy of the whole dataset that passes the BIDS validator.

Fast tests on a small hand-built dataset and output folder (a record that passed, a failed
one, a stale one, an image never processed...), then the export of the real-head run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from conftest import checksums

from bidsreface.bids import AnatImage, derivative_path
from bidsreface.config import IDENTIFYING_FIELDS, Settings
from bidsreface.dates import dates_key, shift_days, shift_value
from bidsreface.derivatives import failure_path, qc_path
from bidsreface.errors import UsageError
from bidsreface.export import LISTING, MANIFEST, export_dataset
from bidsreface.image import stored_values

IDENTIFYING = {"InstitutionName": "Demo Hospital", "PatientName": "Doe^Jane",
               "AcquisitionDateTime": "2020-01-02T10:11:12", "StationName": "MR1"}


def validate(root: Path) -> tuple[list[dict], list[dict]]:
    """``(errors, warnings)`` of bids-validator-deno (offline: its schema is bundled)."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    validator = shutil.which("bids-validator-deno", path=search)
    if validator is None:
        pytest.fail("bids-validator-deno is missing: pip install bids-validator-deno")
    proc = subprocess.run([validator, str(root), "--format", "json"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "NO_COLOR": "1"})
    issues = json.loads(proc.stdout)["issues"]["issues"]
    errors = [issue for issue in issues if issue["severity"] == "error"]
    assert (proc.returncode == 0) == (not errors), proc.stderr
    return errors, [issue for issue in issues if issue["severity"] != "error"]


def listing(export: Path) -> dict[str, str]:
    lines = (export / LISTING).read_text().splitlines()
    assert lines[0] == "path\treason"
    return dict(line.split("\t") for line in lines[1:])


def assert_scrubbed(meta: dict, where) -> None:
    assert not [k for k in meta if k in IDENTIFYING_FIELDS or k.startswith("Patient")], where


# --------------------------------------------------------------------------- small dataset


def _head(path: Path, shape=(16, 16, 16), seed=0) -> None:
    data = np.random.default_rng(seed).integers(1, 100, shape).astype(np.int16)
    img = nb.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    nb.save(img, path)


def _write(path: Path, text) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if isinstance(text, str) else json.dumps(text))


def _deidentify(bids: Path, out: Path, relpath: str, refaced: bool = False) -> None:
    """Outputs and a record as the participant level writes them: the first slices cleared
    (defaced), or filled with 7 (refaced)."""
    image = AnatImage.from_path(bids / relpath, bids_dir=bids)
    raw = nb.load(bids / relpath)
    mask = np.zeros(raw.shape[:3], np.uint8)
    mask[:4] = 1
    data = np.asanyarray(raw.dataobj).copy()
    data.reshape(raw.shape[:3])[:4] = 0
    outputs = {}
    for kind, values in (("defaced", data), ("refaced", np.where(data == 0, 7, data))):
        if kind == "defaced" or refaced:
            path = derivative_path(out, image, desc=kind)
            path.parent.mkdir(parents=True, exist_ok=True)
            nb.save(nb.Nifti1Image(values.astype(raw.get_data_dtype()), raw.affine,
                                   raw.header), path)
            outputs[kind] = path.relative_to(out / f"sub-{image.subject}").as_posix()
    mask_path = derivative_path(out, image, mod=image.suffix, suffix="defacemask")
    nb.save(nb.Nifti1Image(mask, raw.affine), mask_path)
    outputs["mask"] = mask_path.relative_to(out / f"sub-{image.subject}").as_posix()
    reface = {"reface_method": "cgan", "model": "m", "model_sha256": "0" * 64, "seed": 0}
    _write(qc_path(out, image), {"source": relpath, "status": "ok", "outputs": outputs,
                                 "version": "0.1.0",
                                 "reface": reface if refaced else {"reface_method": "none"}})


def _fail(bids: Path, out: Path, relpath: str) -> None:
    image = AnatImage.from_path(bids / relpath, bids_dir=bids)
    _write(failure_path(out, image), {"source": relpath, "status": "failed",
                                      "reason": "registration failed"})


@pytest.fixture
def small(tmp_path):
    """A raw dataset and bidsreface's outputs of it; returns ``(settings, bids, out)``."""
    bids, out = tmp_path / "bids", tmp_path / "out"
    _write(bids / "dataset_description.json",
           {"Name": "small", "BIDSVersion": "1.9.0", "DatasetType": "raw", "Authors": ["a", "b"]})
    _write(bids / "README", "A small dataset.\n")
    _write(bids / "participants.tsv", "participant_id\nsub-01\nsub-02\nsub-03\n")
    _write(bids / "T1w.json", {"InstitutionName": "Demo Hospital", "RepetitionTime": 2.0})
    _write(bids / ".bidsignore", "extra/\n")
    _write(bids / ".git/annex/objects/x", "original face")
    _write(bids / ".heudiconv/info.txt", "Doe^Jane")
    _write(bids / "derivatives/pydeface/sub-01_T1w.nii.gz", "not really")
    _write(bids / "sourcedata/sub-01/1.dcm", "DICM")
    _write(bids / "code/convert.sh", "heudiconv ...\n")
    for rel, seed in (("sub-01/anat/sub-01_T1w", 1), ("sub-01/anat/sub-01_T2w", 2),
                      ("sub-02/anat/sub-02_FLAIR", 3), ("sub-03/anat/sub-03_T1w", 4)):
        _head(bids / f"{rel}.nii.gz", seed=seed)
        _write(bids / f"{rel}.json", {**IDENTIFYING, "EchoTime": 0.003})
    _head(bids / "sub-02/anat/sub-02_T1w.nii.gz", shape=(16, 16, 16, 1), seed=5)
    bold = nb.Nifti1Image(np.ones((8, 8, 8, 3), np.int16), np.diag([3.0, 3.0, 3.0, 1.0]))
    bold.header.set_xyzt_units("mm", "sec")
    bold.header.set_zooms((3.0, 3.0, 3.0, 2.0))
    (bids / "sub-01/func").mkdir()
    nb.save(bold, bids / "sub-01/func/sub-01_task-rest_bold.nii.gz")
    _write(bids / "sub-01/func/sub-01_task-rest_bold.json",
           {**IDENTIFYING, "RepetitionTime": 2.0, "TaskName": "rest"})
    _write(bids / "sub-01/sub-01_scans.tsv", "filename\tacq_time\n"
           "anat/sub-01_T1w.nii.gz\t2020-01-02T10:11:12\n"
           "anat/sub-01_T2w.nii.gz\t2020-01-02T10:21:12\n"
           "func/sub-01_task-rest_bold.nii.gz\t2020-01-02T10:31:12\n")
    _deidentify(bids, out, "sub-01/anat/sub-01_T1w.nii.gz")
    _fail(bids, out, "sub-01/anat/sub-01_T2w.nii.gz")
    _deidentify(bids, out, "sub-02/anat/sub-02_T1w.nii.gz", refaced=True)
    _deidentify(bids, out, "sub-03/anat/sub-03_T1w.nii.gz")
    _head(bids / "sub-03/anat/sub-03_T1w.nii.gz", seed=6)  # changed since: stale outputs
    settings = Settings(bids_dir=bids, output_dir=out, analysis_level="group",
                        work_dir=tmp_path / "work", export_bids=tmp_path / "export" / "deid")
    return settings, bids, out


def test_images_replaced_or_left_out_and_listed(small, capsys):
    settings, bids, out = small
    summary = export_dataset(settings)
    export = settings.export_bids
    assert (summary["deidentified"], summary["left_out"], summary["other"]) == (2, 3, 7)
    assert capsys.readouterr().err.strip().splitlines() == [
        f"bidsreface: export: 2 images de-identified, 3 left out, 7 other paths left out "
        f"(see {export / LISTING})",
        "bidsreface: export: 3 left out: belongs to a left-out file",
        "bidsreface: export: 2 left out: hidden",
        "bidsreface: export: 1 left out: de-identification failed",
        "bidsreface: export: 1 left out: derivatives of the raw data: they may show the "
        "original faces",
        "bidsreface: export: 1 left out: its de-identified image does not match the raw image "
        "as it is now (changed since: run bidsreface on it again)",
        "bidsreface: export: 1 left out: not de-identified: no bidsreface record of it in the "
        "output folder",
        "bidsreface: export: 1 left out: source data: holds the original images"]
    left_out = listing(export)
    hidden = left_out[".git/"]
    assert hidden.startswith("hidden: not part of the dataset")
    assert "changed since" in left_out["sub-03/anat/sub-03_T1w.nii.gz"]
    assert left_out == {
        ".git/": hidden,
        ".heudiconv/": hidden,
        "derivatives/": "derivatives of the raw data: they may show the original faces",
        "sourcedata/": "source data: holds the original images",
        "sub-01/anat/sub-01_T2w.nii.gz": "de-identification failed: registration failed",
        "sub-01/anat/sub-01_T2w.json": "belongs to the left-out sub-01_T2w.nii.gz",
        "sub-02/anat/sub-02_FLAIR.nii.gz":
            "not de-identified: no bidsreface record of it in the output folder",
        "sub-02/anat/sub-02_FLAIR.json": "belongs to the left-out sub-02_FLAIR.nii.gz",
        "sub-03/anat/sub-03_T1w.nii.gz": left_out["sub-03/anat/sub-03_T1w.nii.gz"],
        "sub-03/anat/sub-03_T1w.json": "belongs to the left-out sub-03_T1w.nii.gz",
    }
    exported = sorted(p.relative_to(export).as_posix() for p in export.rglob("*") if p.is_file())
    assert exported == sorted([
        ".bidsignore", "README", "T1w.json", "code/convert.sh", LISTING, MANIFEST,
        "dataset_description.json", "participants.tsv", "sub-01/sub-01_scans.tsv",
        "sub-01/anat/sub-01_T1w.json", "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-01/func/sub-01_task-rest_bold.json", "sub-01/func/sub-01_task-rest_bold.nii.gz",
        "sub-02/anat/sub-02_T1w.json", "sub-02/anat/sub-02_T1w.nii.gz"])
    assert not list(settings.export_bids.parent.glob(".*"))  # no temporary left


def test_exported_images_are_the_deidentified_ones(small):
    settings, bids, out = small
    export_dataset(settings)
    export = settings.export_bids
    t1 = export / "sub-01/anat/sub-01_T1w.nii.gz"
    defaced = out / "sub-01/anat/sub-01_desc-defaced_T1w.nii.gz"
    assert t1.read_bytes() == defaced.read_bytes()
    assert not np.array_equal(stored_values(t1), stored_values(bids / "sub-01/anat/sub-01_T1w"
                                                                    ".nii.gz"))
    meta = json.loads((export / "sub-01/anat/sub-01_T1w.json").read_text())
    assert meta["EchoTime"] == 0.003 and "Sources" not in meta
    assert meta["DeidentificationMethod"] == [
        "Defaced by bidsreface 0.1.0: the voxels of the face mask set to background. Dates "
        "(acq_time, date and time fields) shifted by a number of days drawn per participant, "
        "into 1925 or earlier; the intervals within a participant and the times of day kept."]
    # a one-volume 4D image: refaced, written 3D (the validator refuses a 4D T1w)
    t1 = nb.load(export / "sub-02/anat/sub-02_T1w.nii.gz")
    refaced = nb.load(out / "sub-02/anat/sub-02_desc-refaced_T1w.nii.gz")
    assert t1.shape == (16, 16, 16) and refaced.shape == (16, 16, 16, 1)
    assert np.array_equal(t1.affine, refaced.affine) and t1.get_data_dtype() == np.int16
    assert np.array_equal(np.asanyarray(t1.dataobj), np.asanyarray(refaced.dataobj)[..., 0])
    before, after = refaced.header.binaryblock, t1.header.binaryblock
    assert [i for i in range(len(before)) if before[i] != after[i]] == [40]  # dim[0]
    note = json.loads((export / "sub-02/anat/sub-02_T1w.json").read_text())
    assert "3D conditional GAN (model m" in note["DeidentificationMethod"][0]


def test_other_files_linked_sidecars_scrubbed_scans_filtered(small):
    settings, bids, _ = small
    before = checksums(bids)
    export_dataset(settings)
    export = settings.export_bids
    assert checksums(bids) == before
    for rel in ("README", "participants.tsv", ".bidsignore", "code/convert.sh",
                "sub-01/func/sub-01_task-rest_bold.nii.gz"):
        assert (export / rel).samefile(bids / rel)  # hard links: one file system here
    for path in [*export.rglob("*.json")]:
        assert_scrubbed(json.loads(path.read_text()), path)
    assert json.loads((export / "T1w.json").read_text()) == {"RepetitionTime": 2.0}
    assert not (export / "T1w.json").samefile(bids / "T1w.json")
    bold = json.loads((export / "sub-01/func/sub-01_task-rest_bold.json").read_text())
    assert bold == {"RepetitionTime": 2.0, "TaskName": "rest"}
    days = shift_days(dates_key(settings.output_dir), "01")  # --dates shift, the default
    assert (export / "sub-01/sub-01_scans.tsv").read_text() == (
        f"filename\tacq_time\nanat/sub-01_T1w.nii.gz\t{shift_value('2020-01-02T10:11:12', days)}"
        f"\nfunc/sub-01_task-rest_bold.nii.gz\t{shift_value('2020-01-02T10:31:12', days)}\n")
    assert int(shift_value("2020-01-02T10:31:12", days)[:4]) <= 1925
    description = json.loads((export / "dataset_description.json").read_text())
    assert description["DatasetType"] == "raw" and description["Name"] == "small"
    assert description["GeneratedBy"][-1]["Name"] == "bidsreface"
    assert "Dates (acq_time" in description["GeneratedBy"][-1]["Description"]


def test_small_export_passes_the_validator(small):
    settings, _, _ = small
    export_dataset(settings)
    errors, _ = validate(settings.export_bids)
    assert errors == []


def test_reface_none_exports_the_defaced_image(small):
    settings, _, out = small
    settings = Settings(**{**settings.__dict__, "reface": "none"})
    export_dataset(settings)
    t1 = nb.load(settings.export_bids / "sub-02/anat/sub-02_T1w.nii.gz")
    defaced = nb.load(out / "sub-02/anat/sub-02_desc-defaced_T1w.nii.gz")
    assert np.array_equal(np.asanyarray(t1.dataobj), np.asanyarray(defaced.dataobj)[..., 0])


def test_target_folder_rules(small):
    settings, _, _ = small
    target = settings.export_bids
    target.mkdir(parents=True)  # empty: fine
    export_dataset(settings)
    export_dataset(settings)  # an earlier export that holds nothing else is replaced
    assert (target / LISTING).is_file() and (target / MANIFEST).is_file()
    (target / "stray.txt").write_text("x")  # a file the export did not write: refused
    with pytest.raises(UsageError, match="holds stray.txt, not written by the export"):
        export_dataset(settings)
    assert (target / "stray.txt").read_text() == "x"
    (target / "stray.txt").unlink()
    readme = target / "README"
    readme.unlink()
    readme.write_text("edited\n")  # a file changed since the export wrote it: refused
    with pytest.raises(UsageError, match="holds README, changed since the export wrote it"):
        export_dataset(settings)
    assert readme.read_text() == "edited\n"
    foreign = target.parent / "foreign"
    _write(foreign / "notes.txt", "mine")
    with pytest.raises(UsageError, match="not empty and holds no earlier export"):
        export_dataset(Settings(**{**settings.__dict__, "export_bids": foreign}))
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["deid", "foreign"]


def test_dates_shifted_removed_or_kept(small):
    settings, bids, _ = small
    _write(bids / "sub-01/anat/sub-01_T1w.json", {"EchoTime": 0.003, "ScanDate": "2020-01-02",
                                                 "ScanTime": "10:11:12"})
    _write(bids / "T1w.json", {"RepetitionTime": 2.0, "ScanDate": "2020-01-02"})
    for dates in ("shift", "remove", "keep"):
        target = settings.export_bids.with_name(dates)
        export_dataset(Settings(**{**settings.__dict__, "dates": dates, "export_bids": target}))
        meta = json.loads((target / "sub-01/anat/sub-01_T1w.json").read_text())
        scans = (target / "sub-01/sub-01_scans.tsv").read_text().splitlines()
        top = json.loads((target / "T1w.json").read_text())
        if dates == "keep":
            assert meta["ScanDate"] == "2020-01-02" and top["ScanDate"] == "2020-01-02"
            assert scans[1] == "anat/sub-01_T1w.nii.gz\t2020-01-02T10:11:12"
        elif dates == "remove":
            assert "ScanDate" not in meta and "ScanTime" not in meta and "ScanDate" not in top
            assert scans[1:] == ["anat/sub-01_T1w.nii.gz\tn/a",
                                 "func/sub-01_task-rest_bold.nii.gz\tn/a"]
        else:
            days = shift_days(dates_key(settings.output_dir), "01")
            assert meta["ScanDate"] == shift_value("2020-01-02", days) <= "1925-12-31"
            assert meta["ScanTime"] == "10:11:12" and meta["EchoTime"] == 0.003
            assert scans[1] == f"anat/sub-01_T1w.nii.gz\t{meta['ScanDate']}T10:11:12"
            assert "ScanDate" not in top  # of no participant: no shift fits every one
        assert ("Dates" in meta["DeidentificationMethod"][0]) == (dates != "keep")


def test_work_and_output_folders_inside_the_dataset_left_out(small):
    settings, bids, out = small
    work = bids / "scratch"
    _write(work / "copy_of_T1w.nii.gz", "original face")
    settings = Settings(**{**settings.__dict__, "work_dir": work})
    export_dataset(settings)
    assert listing(settings.export_bids)["scratch/"] == "bidsreface's work folder"
    assert not (settings.export_bids / "scratch").exists()


# --------------------------------------------------------------------------- real heads


@pytest.fixture(scope="module")
def run(participant_run):
    assert participant_run["codes"] == (0, 0)
    return participant_run


def test_export_passes_the_bids_validator(run):
    errors, warnings = validate(run["export"])
    print("validator warnings:", sorted({(w["code"], w.get("subCode")) for w in warnings}))
    assert errors == []
    assert listing(run["export"]) == {}


def test_export_replaces_every_anatomical_image(run):
    from bidsreface.derivatives import read_records

    bids, export, out = run["bids"], run["export"], run["out"]
    records = {r["source"]: r for r in read_records(out)}
    assert sorted(records) == sorted(run["manifest"])
    for source, record in records.items():
        exported, raw = export / source, bids / source
        assert exported.read_bytes() != raw.read_bytes()
        assert not np.array_equal(stored_values(exported), stored_values(raw)), source
        kind = "refaced" if "refaced" in record["outputs"] else "defaced"
        assert kind == ("refaced" if source.endswith("_T1w.nii.gz") else "defaced")
        derivative = out / source.split("/")[0] / record["outputs"][kind]
        assert np.array_equal(stored_values(exported), stored_values(derivative)), source
        assert np.array_equal(nb.load(exported).affine, nb.load(derivative).affine)
        meta = json.loads((export / source.replace(".nii.gz", ".json")).read_text())
        assert_scrubbed(meta, source)
        method = meta["DeidentificationMethod"]
        assert meta["RepetitionTime"] and len(method) == 1 and method[0].startswith("Defaced")
        assert ("then refilled with a synthetic face" in method[0]) == (kind == "refaced")
    anat = sorted(p.relative_to(export).as_posix() for p in export.rglob("*.nii*"))
    assert anat == sorted(records)  # no defacemask, no derivative name


def test_export_copies_everything_else(run):
    bids, export = run["bids"], run["export"]
    raw = checksums(bids)
    exported = checksums(export)
    assert sorted(exported) == sorted([*raw, LISTING, MANIFEST])
    changed = sorted(rel for rel in raw if raw[rel] != exported[rel])
    assert changed == sorted([*run["manifest"], "dataset_description.json",
                              *(rel.replace(".nii.gz", ".json") for rel in run["manifest"])])
    description = json.loads((export / "dataset_description.json").read_text())
    assert description["DatasetType"] == "raw"


def test_export_holds_nothing_of_an_original_face(run):
    from test_qc_audit import original_faces, scan_for_original_faces

    from bidsreface.derivatives import read_records

    faces = original_faces(run["bids"], read_records(run["out"]))
    assert scan_for_original_faces([run["export"]], run["bids"], run["manifest"], faces) == []


def test_derivative_sidecars_dates(tmp_path):
    """The participant level's sidecars: dates left by the scrub shifted by the same days as
    the export's (the participant's, from the output folder's secret key), removed, or kept."""
    from bidsreface.bids import write_sidecar

    bids = tmp_path / "bids"
    raw = bids / "sub-07/ses-2/anat/sub-07_ses-2_T1w.nii.gz"
    _write(raw.with_name("sub-07_ses-2_T1w.json"),
           {"EchoTime": 0.003, "ScanDate": "20200102", "AcquisitionDateTime": "2020-01-02T10:11"})
    image = AnatImage.from_path(raw, bids_dir=bids)
    for dates, expected in (("shift", shift_value("20200102", shift_days("k", "07"))),
                            ("remove", None), ("keep", "20200102")):
        target = tmp_path / f"{dates}.json"
        write_sidecar(target, image, {"Extra": 1}, dates=dates, key="k")
        meta = json.loads(target.read_text())
        assert meta.get("ScanDate") == expected and meta["EchoTime"] == 0.003
        assert "AcquisitionDateTime" not in meta  # identifying: removed whatever --dates says
    assert shift_value("20200102", shift_days("k", "07")) < "19260101"


def test_absent_content_left_out_with_sidecars_and_rows(small, capsys):
    """A bold whose content is not here (a git-annex link not fetched) is left out with its
    sidecar and its scans row, listed with the hint, and counted by reason."""
    settings, bids, _ = small
    bold = bids / "sub-01/func/sub-01_task-rest_bold.nii.gz"
    bold.unlink()
    bold.symlink_to("../../.git/annex/objects/Xy/Zw/SHA256E-s1--0.nii.gz/SHA256E-s1--0.nii.gz")
    export_dataset(settings)
    export = settings.export_bids
    left_out = listing(export)
    relpath = "sub-01/func/sub-01_task-rest_bold.nii.gz"
    assert left_out[relpath] == f"content not present (git-annex): run 'datalad get {relpath}'"
    assert left_out["sub-01/func/sub-01_task-rest_bold.json"] == (
        "belongs to the left-out sub-01_task-rest_bold.nii.gz")
    assert not (export / "sub-01/func").exists()
    assert "func/" not in (export / "sub-01/sub-01_scans.tsv").read_text()
    err = capsys.readouterr().err
    assert "bidsreface: export: 1 left out: content not present (git-annex)\n" in err
    assert "bidsreface: export: 4 left out: belongs to a left-out file\n" in err
    assert not [p for p in export.rglob("*") if p.is_symlink()]
    errors, _ = validate(export)
    assert errors == []


def test_links_followed_and_an_export_without_images_refused(small, capsys):
    """Files that are symbolic links are exported as their content (never a link); an export
    that would hold no de-identified image writes nothing."""
    settings, bids, out = small
    readme = bids / "README"
    content = bids / ".git/annex/objects/README-content"
    content.write_text("A small dataset.\n")
    readme.unlink()
    readme.symlink_to(os.path.relpath(content, readme.parent))
    export_dataset(settings)
    exported = settings.export_bids / "README"
    assert not exported.is_symlink() and exported.read_text() == "A small dataset.\n"
    assert exported.samefile(content)  # a hard link to the content, not to the link
    for path in out.glob("sub-*/anat/*_desc-qc_*.json"):
        path.unlink()
    target = settings.export_bids.with_name("none")
    with pytest.raises(UsageError, match=r"^--export-bids: no de-identified image to export "
                                         r"\(4 not de-identified: no bidsreface record"):
        export_dataset(Settings(**{**settings.__dict__, "export_bids": target}))
    assert not target.exists()


def test_dates_option(tmp_path):
    """``--dates``: shift by default (as BIDS recommends), remove or keep; nothing else."""
    from bidsreface.cli.parser import parse_args

    (tmp_path / "bids").mkdir()
    args = [str(tmp_path / "bids"), str(tmp_path / "out"), "participant", "--reface", "none"]
    assert parse_args(args).dates == "shift"
    assert parse_args([*args, "--dates", "remove"]).dates == "remove"
    with pytest.raises(UsageError, match="--dates: invalid choice: 'never'"):
        parse_args([*args, "--dates", "never"])


def test_unreadable_records_skipped_with_a_line(small, capsys):
    """A record whose content is not here (an unfetched git-annex file) or that is damaged is
    skipped with one line naming it; its image is left out as not de-identified."""
    from bidsreface.derivatives import read_records

    settings, bids, out = small
    record = out / "sub-01/anat/sub-01_desc-qc_T1w.json"
    record.unlink()
    record.symlink_to("../../.git/annex/objects/Xy/Zw/KEY.json/KEY.json")
    damaged = out / "sub-02/anat/sub-02_desc-qc_T1w.json"
    damaged.write_text("{")
    records = read_records(out)
    assert sorted(r["source"] for r in records) == ["sub-01/anat/sub-01_T2w.nii.gz",
                                                     "sub-03/anat/sub-03_T1w.nii.gz"]
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (f"bidsreface: {record}: record skipped: content not present (git-annex): "
                      f"run 'datalad get sub-01/anat/sub-01_desc-qc_T1w.json'")
    assert err[1].startswith(f"bidsreface: {damaged}: record skipped: not valid JSON")
    assert len(err) == 2
    with pytest.raises(UsageError, match="no de-identified image to export"):
        export_dataset(settings)
    assert [line for line in capsys.readouterr().err.splitlines()
            if "record skipped" in line] == [f"bidsreface: export: {line[12:]}" for line in err]


def test_final_check_refuses_a_link(tmp_path):
    """The export's last check: a symbolic link anywhere in the built copy fails it loudly."""
    from bidsreface.export import check_no_links

    built = tmp_path / "built"
    _write(built / "sub-01/anat/sub-01_T1w.json", "{}")
    check_no_links(built, tmp_path / "export")
    (built / "sub-01/anat/sub-01_T1w.nii.gz").symlink_to("../../../elsewhere.nii.gz")
    with pytest.raises(UsageError, match=r"^--export-bids: sub-01/anat/sub-01_T1w.nii.gz would "
                                         r"be a symbolic link in the export; nothing written"):
        check_no_links(built, tmp_path / "export")
