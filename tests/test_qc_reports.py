"""QC metrics, verdicts, reportlets and the HTML reports, on small synthetic inputs.

The end-to-end checks on real heads (every figure in the reports, the browser, the group
table) are in test_participant.py, which shares its run.
"""

from __future__ import annotations

import json
import re

import nibabel as nb
import numpy as np
import pytest

from bidsreface.bids import AnatImage
from bidsreface.derivatives import figure_path, qc_path
from bidsreface.qc import metrics, reportlets
from bidsreface.qc.render import png_bytes
from bidsreface.reports.group import group_report
from bidsreface.reports.participant import write_participant_report
from bidsreface.reports.tables import COLUMNS, flags, flatten

# --------------------------------------------------------------------------- metrics

PASSING = {"registration_ok": True, "changed_outside_mask": 0, "guard_overlap": 0,
           "face_volume_ml": 150.0, "defaced": {"face_detected": False, "face_distance": 0.6},
           "refaced": {"face_detected": True, "face_distance": 0.55}}


def test_passing_metrics_have_no_reason():
    assert metrics.qc_reasons(PASSING) == []
    assert not metrics.shows_original_face(PASSING, "defaced")
    assert not metrics.shows_original_face(PASSING, "refaced")


@pytest.mark.parametrize(("change", "reason"), [
    ({"registration_ok": False}, "the registration failed its quality check"),
    ({"changed_outside_mask": 3}, "3 voxels changed outside the deface mask"),
    ({"guard_overlap": 7}, "the deface mask overlaps the brain guard by 7 voxels"),
    ({"own_brain_changed": 2}, "2 voxels of the image's own brain mask changed"),
    ({"face_volume_ml": 0.0}, "the face mask is 0.0 ml (< 20): it cannot cover a face"),
    ({"defaced": {"face_detected": True, "face_distance": 0.0}},
     "a face is still detected on the defaced head"),
    ({"refaced": {"face_detected": True, "face_distance": 0.2}},
     "the refaced face matches the original's (embedding distance 0.20 < 0.35)"),
])  # fmt: skip
def test_each_failure_has_its_reason(change, reason):
    assert reason in metrics.qc_reasons({**PASSING, **change})


def test_figures_withheld_when_the_face_may_remain():
    broken = {**PASSING, "defaced": {"face_detected": True, "face_distance": 0.0}}
    assert metrics.shows_original_face(broken, "defaced")
    assert metrics.shows_original_face(broken, "refaced")  # refaced from a face left in place
    close = {**PASSING, "refaced": {"face_detected": True, "face_distance": 0.1}}
    assert metrics.shows_original_face(close, "refaced")
    assert not metrics.shows_original_face(close, "defaced")


def test_guard_overlap_follows_the_affines():
    # brain distance map on a 2 mm grid: distance grows with x (mm)
    distance = np.tile(np.arange(20, dtype=np.float32)[:, None, None] * 2.0, (1, 5, 5))
    distance_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    # the image on a 1 mm grid shifted by 10 mm: voxel i is at x = i + 10
    affine = np.eye(4)
    affine[0, 3] = 10.0
    mask = np.zeros((20, 8, 8), dtype=bool)
    mask[:5, 2:4, 2:4] = True  # x = 10..14 mm: distances 10..14
    assert metrics.guard_overlap(mask, affine, distance, distance_affine, 12.0) == 2 * 4
    assert metrics.guard_overlap(mask, affine, distance, distance_affine, 10.0) == 0


def test_head_scale_and_etiv():
    matrix = np.diag([1.2, 1.0, 0.9, 1.0])
    assert metrics.head_scale(matrix) == pytest.approx(1.08)
    assert metrics.etiv_ml(metrics.head_scale(matrix), 1400.0) == pytest.approx(1512.0)
    assert metrics.guard_margin_mm(matrix, 4.5) == pytest.approx(5.0)


# --------------------------------------------------------------------------- reportlets


def _toy_head(codes: tuple[str, str, str]):
    """A 2 mm ball with a nose in front (anterior, low), stored with the axis codes *codes*;
    the mask is a box around the nose."""
    n, spacing = 48, 2.0
    ras = (np.indices((n, n, n)).reshape(3, -1).T - (n - 1) / 2) * spacing
    inside = np.linalg.norm(ras, axis=1) < 36
    nose = np.linalg.norm(ras - (0, 40, -10), axis=1) < 8
    data = (100.0 * (inside | nose)).reshape(n, n, n).astype(np.float32)
    mask = (np.abs(ras - (0, 40, -10)) < 12).all(axis=1).reshape(n, n, n)
    affine = np.diag([spacing] * 3 + [1.0])
    affine[:3, 3] = -(n - 1) / 2 * spacing
    img = nb.Nifti1Image(data, affine)
    target = nb.orientations.axcodes2ornt(codes)
    transform = nb.orientations.ornt_transform(nb.orientations.axcodes2ornt(("R", "A", "S")),
                                               target)
    moved = img.as_reoriented(transform)
    mask_img = nb.Nifti1Image(mask.astype(np.uint8), affine).as_reoriented(transform)
    return np.asarray(moved.dataobj), moved.affine, np.asarray(mask_img.dataobj) > 0


def test_mosaic_is_the_same_whatever_the_stored_orientation():
    ras = reportlets.mosaic(*_toy_head(("R", "A", "S")))
    for codes in (("L", "A", "S"), ("P", "I", "R"), ("A", "S", "L")):
        assert np.array_equal(reportlets.mosaic(*_toy_head(codes)), ras), codes


def test_mosaic_orientation_and_outline():
    image = reportlets.mosaic(*_toy_head(("L", "P", "S")), n=3)
    assert image.dtype == np.uint8 and image.ndim == 3
    red = (image == reportlets.OUTLINE).all(axis=-1)
    assert red.any()
    top = image.shape[0] // 2  # the sagittal row
    sagittal = red[:top]
    columns = np.flatnonzero(sagittal.any(axis=0))
    first_tile = columns[columns < sagittal.shape[1] // 3]
    # the nose (and its mask) is in front: on the right half of a sagittal tile, below centre
    tile_width = (image.shape[1] - 2 * reportlets.GAP) // 3
    assert first_tile.mean() > tile_width / 2
    assert np.flatnonzero(sagittal.any(axis=1)).mean() > top / 2


def test_render_panel_and_names():
    figures = reportlets.image_reportlets(
        "refaced", *_toy_head(("R", "A", "S")),
        {"frontal": np.zeros((8, 8)), "profile": np.ones((8, 8))})
    assert sorted(figures) == ["refacedmosaic", "refacedrender"]
    assert figures["refacedrender"].shape == (8, 16 + reportlets.GAP)


# --------------------------------------------------------------------------- reports


def _record(source: str, status: str = "ok", qc: dict | None = None, figures=None) -> dict:
    record = {"source": source, "suffix": "T1w", "status": status,
              "outputs": {"defaced": "x", "mask": "y", "figures": figures or {}},
              "registration": {"ok": True, "head_dice": 0.9, "correlation": 0.7,
                               "matrix": np.eye(4).tolist()},
              "mask": {"face_volume_ml": 150.0}, "checks": {"changed_outside_mask": 0},
              "reface": {"reface_method": "none"},
              "qc": {**PASSING, "withheld": {}, **(qc or {})}}
    if status != "ok":
        record["reason"] = "a face is still detected on the defaced head"
    return record


def _write_output(tmp_path):
    """An output folder for sub-01: one passing image with figures, one failing its QC with
    its figures withheld, one failed run with its crash file."""
    out = tmp_path / "out"
    good = AnatImage.from_path(tmp_path / "raw/sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz",
                               tmp_path / "raw")
    bad = AnatImage.from_path(tmp_path / "raw/sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz",
                              tmp_path / "raw")
    figures = {}
    for i, name in enumerate(("defacedmosaic", "defacedrender")):
        path = figure_path(out, good, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(np.full((4, 6), 0.2 * (i + 1))))
        figures[name] = path.relative_to(out / "sub-01").as_posix()
    records = {
        qc_path(out, good): _record(good.relpath, figures=figures),
        qc_path(out, bad): _record(bad.relpath, "failed", {
            "defaced": {"face_detected": True, "face_distance": 0.0},
            "withheld": {"defaced": "this output may still show the original face"}}),
        out / "sub-01/log/sub-01_ses-3_T1w_failed.json": {
            "source": "sub-01/ses-3/anat/sub-01_ses-3_T1w.nii.gz", "suffix": "T1w",
            "status": "failed", "reason": "not a 3D image"},
    }
    for path, record in records.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    (out / "sub-01/log/crash-20240101-sub_01_wf.txt").write_text(
        "Traceback (most recent call last):\nbidsreface.errors.ImageError: not a 3D image\n")
    return out, figures


def test_participant_report(tmp_path):
    out, figures = _write_output(tmp_path)
    report = write_participant_report(out, "01").read_text()
    # every figure embedded, with nothing loaded from elsewhere
    for rel in figures.values():
        uri = "data:image/png;base64," + __import__("base64").b64encode(
            (out / "sub-01" / rel).read_bytes()).decode()
        assert uri in report
    sources = re.findall(r'src="([^"]*)"', report)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in report and "https://" not in report
    # the summary, the failures, the withheld figures and the crash file
    assert report.count('<td class="ok">ok</td>') == 1
    assert report.count('<td class="failed">failed</td>') == 2
    assert "The defaced figures are withheld: this output may still show the original face" \
        in report
    assert "not a 3D image" in report
    assert 'href="sub-01/log/crash-20240101-sub_01_wf.txt"' in report
    assert 'id="sub-01_ses-1_T1w"' in report and 'id="sub-01_ses-3_T1w"' in report


def test_group_report_and_flags():
    ok = _record("sub-01/anat/sub-01_T1w.nii.gz")
    broken = _record("sub-02/anat/sub-02_T1w.nii.gz", "failed",
                     {"defaced": {"face_detected": True, "face_distance": 0.0}})
    crashed = {"source": "sub-03/anat/sub-03_T1w.nii.gz", "suffix": "T1w", "status": "failed",
               "reason": "registration failed"}
    assert flags(ok) == []
    assert "face still detected after defacing" in flags(broken)
    assert flags(crashed) == ["failed run: registration failed"]
    audit = {"summary": {"defaced": {"probes": 2, "faces_detected": 1, "gallery": 2,
                                     "mated_pairs": 2, "nonmated_pairs": 2, "rank1": 0.5,
                                     "roc_auc": 0.75, "eer": 0.25, "linkability": 0.5}},
             "probes": [{"source": ok["source"], "participant": "sub-01",
                         "condition": "defaced", "face_detected": False, "distance_own": None,
                         "distance_other": None, "identified": False, "identifiable": False},
                        {"source": broken["source"], "participant": "sub-02",
                         "condition": "defaced", "face_detected": True, "distance_own": 0.0,
                         "distance_other": 0.6, "identified": True, "identifiable": True}],
             "gallery": [ok["source"], broken["source"]], "left_out": [],
             "same_face_distance": 0.35, "pose_deg": 6.0}
    html = group_report([ok, broken, crashed], audit)
    flagged = html.split('id="flagged"')[1].split('id="distributions"')[0]
    assert 'href="sub-02.html#sub-02_T1w"' in flagged
    assert 'href="sub-03.html#sub-03_T1w"' in flagged
    assert "sub-01.html" not in flagged
    assert html.count("<svg") >= 3  # the distributions
    assert "coarse" in html and ">1/2<" in html
    assert "<img" not in html


def test_every_column_comes_from_a_record():
    record = _record("sub-01/anat/sub-01_T1w.nii.gz")
    record["qc"].update(head_scale_original=0.8, etiv_original_ml=1100.0,
                        original_face_detected=True,
                        seconds={"registration": 5.0, "defacing": 1.0, "qc": 7.0})
    row = flatten(record)
    assert set(row) == set(COLUMNS)
    for column in ("head_dice", "face_volume_ml", "defaced_face_distance",
                   "head_scale_original", "seconds_qc", "registration_ok"):
        assert row[column] not in ("", None), column
