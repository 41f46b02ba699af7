"""End to end on real heads: participant then group level, outputs checked voxel by voxel."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from conftest import checksums

from bidsreface.bids import AnatImage, derivative_path
from bidsreface.config import participant_seed
from bidsreface.derivatives import qc_path
from bidsreface.image import TEXT_FIELDS, background_value, stored_values

#: Least share of each reference face region (eyes, nose, lips) that must be removed.
MIN_FACE_REMOVED = 0.99


@pytest.fixture(scope="module")
def run(participant_run):
    return participant_run


def test_exit_codes_and_input_untouched(run):
    assert run["codes"] == (0, 0)
    assert checksums(run["bids"]) == run["before"]


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
    # header, affine, shape and dtype identical; only the free-text fields differ (cleared,
    # the description replaced by bidsreface's note)
    assert out_img.shape == raw_img.shape
    assert out_img.get_data_dtype() == raw_img.get_data_dtype()
    assert np.array_equal(out_img.affine, raw_img.affine)
    raw_hdr, out_hdr = raw_img.header, out_img.header
    for key in raw_hdr:
        if key not in TEXT_FIELDS:
            assert np.array_equal(raw_hdr[key], out_hdr[key]) or (
                np.isnan(raw_hdr[key]).all() and np.isnan(out_hdr[key]).all()), key
        elif key != "descrip":
            assert out_hdr[key].tobytes().strip(b"\0") == b"", key
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
    # each participant's face is drawn from a seed of their own
    assert sidecar["RefacedBy"]["Seed"] == participant_seed(0, image.subject)
    assert "AcquisitionDateTime" not in sidecar and sidecar["Sources"]


def test_each_participant_gets_a_face_of_their_own(run):
    seeds = {}
    for sidecar in run["out"].rglob("*_desc-refaced_T1w.json"):
        subject = sidecar.name.split("_")[0]
        seeds.setdefault(subject, set()).add(json.loads(sidecar.read_text())["RefacedBy"]["Seed"])
    assert len(seeds) >= 2 and all(len(s) == 1 for s in seeds.values())
    assert len({s for found in seeds.values() for s in found}) == len(seeds)


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


# --------------------------------------------------------------------------- QC and reports

#: Reportlets of a refaced image; a defaced-only image has the first two.
REFACED_FIGURES = ["defacedmosaic", "defacedrender", "refacedmosaic", "refacedrender"]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def _records(run):
    return [json.loads(p.read_text()) for p in sorted(run["out"].rglob("*_desc-qc_*.json"))]


def test_qc_metrics_in_records(run):
    for record in _records(run):
        qc = record["qc"]
        assert qc["status"] == "ok" and qc["reasons"] == [], record["source"]
        assert qc["guard_overlap"] == 0 and qc["changed_outside_mask"] == 0
        # every session has a T1w: its own brain (deepbet) guards it, carried to the T2w
        assert qc["brain_guard"] == "own+template" and qc["own_brain_changed"] == 0
        made = "own" if record["suffix"] == "T1w" else "carried"
        assert qc["brain_mask"]["brain_mask"] == made
        assert 800 < qc["brain_mask"]["brain_mask_ml"] < 2000
        assert len(qc["brain_mask"]["brain_model"]["sha256"]) == 64
        if made == "carried":
            assert qc["brain_mask"]["brain_mask_from"] == "sub-04_ses-2_T1w.nii.gz"
        assert qc["original_face_detected"]
        kinds = ["defaced"] + (["refaced"] if record["suffix"] == "T1w" else [])
        assert sorted(k for k in ("defaced", "refaced") if k in qc) == kinds
        assert not qc["defaced"]["face_detected"]
        for kind in kinds:
            assert qc[kind]["face_distance"] > 0.35, (record["source"], kind)
            assert 0.3 < qc[kind]["head_scale"] < 2.0 and qc[kind]["etiv_ml"] > 300
        if "refaced" in qc:  # whether a face is found on it depends on the model
            assert qc["model_sha256"] and isinstance(qc["refaced"]["face_detected"], bool)
        seconds = qc["seconds"]
        assert {"registration", "brain_mask", "defacing", "qc"} <= set(seconds)
        assert all(v is not None and v >= 0 for v in seconds.values()) and seconds["qc"] > 0
        assert sorted(record["outputs"]["figures"]) == REFACED_FIGURES[:2 * len(kinds)]
        assert qc["withheld"] == {}


def test_reports_show_every_figure(run):
    import base64

    out = run["out"]
    assert (out / "group.html").is_file()
    for record in _records(run):
        subject = record["source"].split("/")[0]
        report = (out / f"{subject}.html").read_text()
        assert f'id="{record["source"].rsplit("/", 1)[1].split(".")[0]}"' in report
        for rel in record["outputs"]["figures"].values():
            png = (out / subject / rel).read_bytes()
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in report, rel
    for subject in ("sub-01", "sub-02", "sub-03", "sub-04"):
        report = (out / f"{subject}.html").read_text()
        assert re.findall(r'src="([^"]*)"', report)
        assert all(s.startswith("data:image/png;base64,")
                   for s in re.findall(r'src="([^"]*)"', report))
        assert 'id="errors"' in report and "No crash files." in report


def test_group_table_every_metric_filled(run):
    from bidsreface.reports.tables import COLUMNS, REFACED_ONLY

    for suffix, count in (("T1w", 5), ("T2w", 1)):
        with open(run["out"] / f"group_{suffix}.tsv") as fobj:
            reader = csv.DictReader(fobj, delimiter="\t")
            rows = list(reader)
        assert tuple(reader.fieldnames) == COLUMNS and len(rows) == count
        for row in rows:
            assert all(row[c] != "" for c in COLUMNS), row
            refaced = row["reface_method"] != "none"
            optional = {"reason", "flags", "mask_from"}  # n/a: nothing to say
            optional |= {f"{kind}_face_score" for kind in ("defaced", "refaced")
                         if row[f"{kind}_face_detected"] == "false"}  # no face, no score
            if not refaced:
                optional |= set(REFACED_ONLY)
            missing = [c for c in COLUMNS if row[c] == "n/a" and c not in optional]
            assert not missing, (row["source"], missing)
            assert (suffix == "T1w") == refaced
            for column in ("face_volume_ml", "head_scale_original", "defaced_etiv_ml",
                           "defaced_face_distance", "seconds_qc", "seconds_registration"):
                float(row[column])


def test_group_report_and_audit(run):
    out = run["out"]
    group = (out / "group.html").read_text()
    for subject in ("sub-01", "sub-02", "sub-03", "sub-04"):
        assert f'href="{subject}.html' in group
    assert group.count("<svg") >= 8 and "<img" not in group
    with open(out / "group_audit.tsv") as fobj:
        audit = {r["condition"]: r for r in csv.DictReader(fobj, delimiter="\t")}
    assert list(audit) == ["original", "defaced", "refaced"]
    # the originals under a small pose change are identifiable; the defaced heads show no face
    assert audit["original"]["identifiable"] == "6/6"
    assert audit["original"]["faces_detected"] == "6"
    assert audit["defaced"]["faces_detected"] == "0"
    assert audit["defaced"]["identifiable"] == "0/6"
    assert float(audit["defaced"]["rank1"]) == 0.0 and float(audit["defaced"]["roc_auc"]) == 0.5
    assert audit["refaced"]["identifiable"] == "0/5"
    for condition in audit.values():
        for column in ("rank1", "roc_auc", "eer", "linkability"):
            assert 0.0 <= float(condition[column]) <= 1.0
    assert "embedding" not in (out / "group_audit.tsv").read_text()


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("the report test needs Debian's chromium (apt-get install chromium)",
                    pytrace=False)
    return path


def test_reports_in_a_browser(run, tmp_path):
    """Each report, copied alone to another folder, renders in headless Chromium: no image is
    missing and the screenshot is not blank."""
    from test_qc_audit import png_pixels

    copy = tmp_path / "copied"
    copy.mkdir()
    reports = sorted(run["out"].glob("*.html"))
    assert [p.name for p in reports] == ["group.html", "sub-01.html", "sub-02.html",
                                         "sub-03.html", "sub-04.html"]
    probe = ("<script>window.addEventListener('load', function () {"
             "var all = Array.from(document.images);"
             "var bad = all.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });"
             "document.body.setAttribute('data-images', all.length);"
             "document.body.setAttribute('data-broken', bad.length);});</script>")
    for report in reports:
        html = report.read_text()
        (copy / report.name).write_text(html)
        (copy / f"probe-{report.name}").write_text(html.replace("</body>", probe + "</body>"))
        common = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
        dom = subprocess.run(
            [*common, "--virtual-time-budget=10000", "--dump-dom",
             (copy / f"probe-{report.name}").as_uri()],
            capture_output=True, text=True, timeout=120, check=True).stdout
        counts = re.search(r'<body data-images="(\d+)" data-broken="(\d+)"', dom)
        assert counts, f"{report.name}: the page did not load"
        images, broken = int(counts.group(1)), int(counts.group(2))
        expected = html.count("<img ")
        assert (images, broken) == (expected, 0), report.name
        if report.name != "group.html":
            assert images >= 4
        shot = tmp_path / f"{report.stem}.png"
        subprocess.run([*common, f"--screenshot={shot}", "--window-size=1100,1400",
                        (copy / report.name).as_uri()],
                       capture_output=True, timeout=120, check=True)
        pixels = png_pixels(shot.read_bytes())
        assert pixels.shape == (1400, 1100)
        assert pixels.std() > 0.05 and len(np.unique(np.round(pixels, 2))) > 20, report.name
        assert (pixels < 0.5).mean() > 0.01  # text and figures, not a white page


def test_no_file_derived_from_an_original_face(run):
    """Out, work and the temporary folder of the run (what is left in it): no render of an
    original face, no original face embedding, no original face voxels. (The scan finds each
    of these: see test_qc_audit.py.)"""
    from test_qc_audit import original_faces, scan_for_original_faces

    records = _records(run)
    faces = original_faces(run["bids"], records)
    assert len(faces) == 6
    scanned = [p for root in (run["out"], run["work"], run["tmp"]) for p in root.rglob("*")
               if p.is_file()]
    # the reportlets (4 per refaced image, 2 per defaced-only one), in out and in work
    assert sum(p.suffix == ".png" for p in scanned) == 2 * (5 * 4 + 2)
    problems = scan_for_original_faces([run["out"], run["work"], run["tmp"]], run["bids"],
                                       run["manifest"], faces)
    assert problems == []
