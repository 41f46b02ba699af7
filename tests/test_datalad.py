"""DataLad and git-annex datasets as users hold them: exports, saved outputs, unfetched content.

The datasets are real DataLad datasets (``datalad create``, ``save``, ``clone``, ``get``; see
:mod:`datalad_dataset`) made from the demo's real heads and the outputs of the session's
participant run (:func:`conftest.participant_run`), so that no test here runs the participant
level again.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from datalad_dataset import ACQ_TIMES, clone, datalad, get, git, make_dataset, openneuro_dataset
from test_export import listing, validate

from bidsreface.cli.run import main
from bidsreface.config import Settings
from bidsreface.dates import dates_key, shift_days
from bidsreface.derivatives import read_records
from bidsreface.export import LISTING, MANIFEST, export_dataset

HINT = "content not present (git-annex): run 'datalad get "


@pytest.fixture(scope="module")
def run(participant_run):
    assert participant_run["codes"] == (0, 0)
    return participant_run


@pytest.fixture(scope="module")
def datasets(run, tmp_path_factory):
    """The OpenNeuro-shaped raw dataset, a plain DataLad dataset of the demo (everything
    annexed) and the participant run's outputs saved as a DataLad dataset (annex links)."""
    root = tmp_path_factory.mktemp("datalad")
    return {"openneuro": openneuro_dataset(run["bids"], root / "openneuro"),
            "plain": make_dataset(run["bids"], root / "plain"),
            "outputs": make_dataset(run["out"], root / "outputs"),
            "root": root}


def _settings(bids: Path, out: Path, export: Path, **extra) -> Settings:
    return Settings(bids_dir=bids, output_dir=out, analysis_level="group",
                    work_dir=export.parent / "work", export_bids=export, **extra)


def _symlinks(root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_symlink()]


def assert_complete_export(export: Path, bids: Path, manifest) -> None:
    """No link, every image readable, de-identified images where the raw ones were, the
    validator passes."""
    assert _symlinks(export) == []
    images = sorted(p.relative_to(export).as_posix() for p in export.rglob("*.nii*"))
    for relpath in images:
        assert np.isfinite(np.asanyarray(nb.load(export / relpath).dataobj)).all(), relpath
    for relpath in manifest:
        raw = np.asanyarray(nb.load(bids / relpath).dataobj)
        assert not np.array_equal(np.asanyarray(nb.load(export / relpath).dataobj), raw)
    errors, _ = validate(export)
    assert errors == []


def test_raw_files_are_annex_links(datasets):
    """The datasets are what users hold: images (and, in a plain dataset, JSON) are links
    into .git/annex; the OpenNeuro-shaped one keeps text in git."""
    openneuro, plain = datasets["openneuro"], datasets["plain"]
    image = "sub-01/anat/sub-01_T1w.nii.gz"
    for dataset in (openneuro, plain):
        assert (dataset / image).is_symlink()
        assert "annex/objects" in os.readlink(dataset / image)
    assert (plain / "dataset_description.json").is_symlink()
    assert not (openneuro / "dataset_description.json").is_symlink()
    assert not (openneuro / "sub-01/sub-01_scans.tsv").is_symlink()
    assert (openneuro / "sub-01/func/sub-01_task-rest_bold.nii.gz").is_symlink()
    assert (datasets["outputs"] / "sub-01/anat/sub-01_desc-refaced_T1w.nii.gz").is_symlink()


def test_export_of_a_datalad_dataset_with_saved_outputs(run, datasets, tmp_path, capsys):
    """Findings 1 and 2: the export holds the content, never a link (before: hard-linked
    annex links, broken in the export), and outputs saved by DataLad (annex links) are read
    through (before: every image "missing from the output folder", exit 0)."""
    bids, out = datasets["openneuro"], datasets["outputs"]
    export = tmp_path / "export"
    summary = export_dataset(_settings(bids, out, export))
    assert summary["deidentified"] == len(run["manifest"]) and summary["left_out"] == 0
    assert_complete_export(export, bids, run["manifest"])
    bold = export / "sub-01/func/sub-01_task-rest_bold.nii.gz"
    assert bold.read_bytes() == (bids / "sub-01/func/sub-01_task-rest_bold.nii.gz").read_bytes()
    for record in read_records(out):  # the saved derivative's content, read through its link
        kind = "refaced" if "refaced" in record["outputs"] else "defaced"
        saved = out / record["source"].split("/")[0] / record["outputs"][kind]
        assert saved.is_symlink() and ".git/annex/objects" in os.readlink(saved)
        assert np.array_equal(np.asanyarray(nb.load(export / record["source"]).dataobj),
                              np.asanyarray(nb.load(saved).dataobj).reshape(
                                  nb.load(export / record["source"]).shape))
    assert set(listing(export)) == {".datalad/", ".git/", ".gitattributes"}
    assert "bidsreface: export: 3 left out: hidden" in capsys.readouterr().err


def test_export_from_a_plain_datalad_dataset(run, datasets, tmp_path):
    """A dataset made with datalad create, a copy and datalad save: its JSON and TSV files
    too are annex links; the export holds their content."""
    export = tmp_path / "export"
    export_dataset(_settings(datasets["plain"], run["out"], export))
    assert_complete_export(export, datasets["plain"], run["manifest"])
    assert (export / "participants.tsv").read_text() == (run["bids"] / "participants.tsv"
                                                         ).read_text()


def test_unfetched_dataset_description_is_a_usage_error(datasets, tmp_path, capsys):
    """Finding 3: on a fresh clone, dataset_description.json is there but not fetched
    (before: "dataset_description.json is missing"): exit 2 with the datalad get hint, at
    the participant level and before a group-level export."""
    fresh = clone(datasets["plain"], tmp_path / "clone")
    description = fresh / "dataset_description.json"
    assert description.is_symlink() and not description.exists()
    code = main([str(fresh), str(tmp_path / "out"), "participant", "--reface", "template",
                 "-w", str(tmp_path / "work")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == (f"bidsreface: error: {description}: content not present (git-annex): run "
                   f"'datalad get dataset_description.json'")
    code = main([str(fresh), str(tmp_path / "out"), "group", "--export-bids",
                 str(tmp_path / "export")])
    assert code == 2 and f"{HINT}dataset_description.json'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "export").exists()


def test_unfetched_records_are_skipped_with_a_line(run, datasets, tmp_path, capsys):
    """Finding 3, the output side: a clone of the saved outputs with only sub-01's records
    fetched. The group level and the participant report skip the others with one line each
    (before: a traceback); the export, with no de-identified image fetched, writes nothing
    and exits 1."""
    from bidsreface.reports.participant import participant_report

    out = clone(datasets["outputs"], tmp_path / "out")
    records = sorted(p.relative_to(out).as_posix() for p in out.glob("sub-*/**/*_desc-qc_*.json"))
    ours = [r for r in records if r.startswith("sub-01/")]
    get(out, *ours)
    export = tmp_path / "export"
    code = main([str(datasets["openneuro"]), str(out), "group", "-w", str(tmp_path / "work"),
                 "--export-bids", str(export)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    skipped = [line for line in err.splitlines() if "record skipped" in line]
    others = [r for r in records if r not in ours]
    assert len(skipped) == 2 * len(others)  # the group level's and the export's
    for relpath in others:
        assert f"bidsreface: {out / relpath}: record skipped: {HINT}{relpath}'" in err
    assert "group_T1w.tsv: 1 images, 0 failed" in err
    assert "bidsreface: error: --export-bids: no de-identified image to export (" in err
    assert "; 1 its de-identified image: content not present (git-annex)" in err
    assert not export.exists()
    html = participant_report(out, "02")
    assert "sub-02" in html
    assert [line for line in capsys.readouterr().err.splitlines() if "record skipped" in line]


def test_reexport_into_a_datalad_dataset_is_refused(run, datasets, tmp_path, capsys):
    """Finding 4: an export made into a DataLad dataset (datalad create --force, save) is
    refused before the run, its .git intact (before: removed whole as an earlier export)."""
    bids, export = datasets["openneuro"], tmp_path / "export"
    export_dataset(_settings(bids, run["out"], export))
    export_dataset(_settings(bids, run["out"], export))  # holding nothing else: replaced
    again = [str(bids), str(run["out"]), "group", "--export-bids", str(export)]
    datalad("create", "--force", str(export))
    capsys.readouterr()
    datalad("save", "-d", str(export), "-m", "the export")
    head = git("rev-parse", "HEAD", cwd=export)
    assert main(again) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"bidsreface: error: --export-bids {export}: an export replaces only a "
                   f"folder it made that holds nothing else, and this one holds .git (it is a "
                   f"git or DataLad repository); give a new or empty directory (publish the "
                   f"export from there)")
    assert git("rev-parse", "HEAD", cwd=export) == head
    git("fsck", cwd=export)
    assert (export / "sub-01/anat/sub-01_T1w.nii.gz").is_symlink()  # saved by git-annex
    nb.load(export / "sub-01/anat/sub-01_T1w.nii.gz").get_fdata()


def test_partial_content_leaves_out_files_with_sidecars_and_rows(run, datasets, tmp_path,
                                                                 capsys):
    """Finding 5: a clone with only the anatomical images fetched. The func/ bold is left out
    with its sidecar and its scans row, listed with the hint, and counted by reason (before:
    sidecar kept, "6 other paths left out")."""
    bids = clone(datasets["openneuro"], tmp_path / "clone")
    get(bids, *sorted({Path(p).parent.as_posix() for p in run["manifest"]}))
    export = tmp_path / "export"
    summary = export_dataset(_settings(bids, run["out"], export))
    err = capsys.readouterr().err
    bold = "sub-01/func/sub-01_task-rest_bold.nii.gz"
    left = listing(export)
    assert left[bold] == f"{HINT}{bold}'"
    assert left["sub-01/func/sub-01_task-rest_bold.json"] == (
        "belongs to the left-out sub-01_task-rest_bold.nii.gz")
    assert not (export / "sub-01/func").exists()
    assert "func/" not in (export / "sub-01/sub-01_scans.tsv").read_text()
    assert "bidsreface: export: 1 left out: content not present (git-annex)" in err
    assert "bidsreface: export: 1 left out: belongs to a left-out file" in err
    assert summary["deidentified"] == len(run["manifest"])
    assert_complete_export(export, bids, run["manifest"])


def test_dates_shifted_per_participant_into_1925(run, datasets, tmp_path):
    """Finding 6: acq_time shifted by one number of days per participant (intervals kept,
    sub-04's two sessions included) into 1925 or earlier, another participant by another;
    date-time fields left in sidecars shifted the same way (before: unchanged)."""
    bids, export = datasets["openneuro"], tmp_path / "export"
    export_dataset(_settings(bids, run["out"], export, random_seed=7))
    times = {}
    for relpath, rows in ACQ_TIMES.items():
        lines = (export / relpath).read_text().splitlines()
        assert lines[0] == "filename\tacq_time"
        exported = dict(line.split("\t") for line in lines[1:])
        assert sorted(exported) == sorted(rows)
        for name, value in exported.items():
            before = dt.datetime.fromisoformat(rows[name])
            after = dt.datetime.fromisoformat(value)
            assert after.year <= 1925 and after.time() == before.time()
            times.setdefault(relpath.split("/")[0], set()).add((after - before).days)
    key = dates_key(run["out"])  # the output folder's secret, not the seed
    assert times == {"sub-01": {shift_days(key, "01")}, "sub-04": {shift_days(key, "04")}}
    assert shift_days(key, "01") != shift_days(key, "04")
    description = json.loads((export / "dataset_description.json").read_text())
    assert "into 1925 or earlier" in description["GeneratedBy"][-1]["Description"]
    meta = json.loads((export / "sub-04/ses-2/anat/sub-04_ses-2_T1w.json").read_text())
    assert "into 1925 or earlier" in meta["DeidentificationMethod"][0]
    assert not [k for k, v in meta.items() if isinstance(v, str) and v[:2] in ("19", "20")
                and v[:4].isdigit() and int(v[:4]) > 1925]
    assert (export / LISTING).is_file() and (export / MANIFEST).is_file()
