"""Defacing: the face-mask voxels set to background, nothing else touched."""

from __future__ import annotations

import numpy as np

from ..image import background_value


def deface(stored: np.ndarray, mask: np.ndarray, background=None) -> np.ndarray:
    """Return a copy of ``stored`` with the voxels of ``mask`` set to ``background`` (a stored
    value; by default :func:`~bidsreface.image.background_value` of ``stored``).

    ``stored`` holds the values as the file stores them, so every voxel outside the mask
    stays bit-identical.

    >>> deface(np.array([[5, 7], [9, 0]], dtype=np.int16), np.array([[1, 0], [0, 0]], bool))
    array([[0, 7],
           [9, 0]], dtype=int16)
    """
    if mask.shape != stored.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {stored.shape}")
    out = stored.copy()
    if background is None:
        background = background_value(stored)
    out[mask] = np.asarray(background).astype(stored.dtype)
    return out
