"""The model's face box in template space, resampling between it and native space, and the
intensity normalisation the networks see.

A registration matrix maps template mm to native mm (RAS), as everywhere in
:mod:`bidsreface.deface`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

WINSOR_PERCENTILE = 99.5


@dataclass(frozen=True)
class FaceBox:
    """A box of template space on a regular grid: ``origin`` is the first voxel centre (mm).

    >>> box = FaceBox(origin=(0.0, 0.0, 0.0), shape=(4, 4, 4), spacing=2.0)
    >>> box.affine[:3, 3].tolist(), float(box.affine[0, 0])
    ([0.0, 0.0, 0.0], 2.0)
    """

    origin: tuple[float, float, float]
    shape: tuple[int, int, int]
    spacing: float

    @property
    def affine(self) -> np.ndarray:
        affine = np.diag([self.spacing] * 3 + [1.0])
        affine[:3, 3] = self.origin
        return affine

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> FaceBox:
        return cls(origin=tuple(float(v) for v in values["origin"]),
                   shape=tuple(int(v) for v in values["shape"]),
                   spacing=float(values["spacing"]))


def face_box(template, spacing: float = 2.0, multiple: int = 16, pad_mm: float = 6.0, *,
             head: bool = False) -> FaceBox:
    """The box around the template's face region within its head (the whole head with
    ``head``), on a ``spacing`` grid whose size is a multiple of ``multiple`` voxels (so the
    U-Net takes it whole)."""
    from ..deface.mask import region

    grown = ndimage.binary_dilation(template.head, iterations=4)
    idx = np.argwhere(region(template, head=head) & grown)
    lo = template.affine[:3, :3] @ idx.min(0) + template.affine[:3, 3] - pad_mm
    hi = template.affine[:3, :3] @ idx.max(0) + template.affine[:3, 3] + pad_mm
    shape = np.ceil((hi - lo) / spacing / multiple).astype(int) * multiple
    centre = (lo + hi) / 2
    origin = centre - (shape - 1) * spacing / 2
    return FaceBox(origin=tuple(float(v) for v in origin), shape=tuple(int(v) for v in shape),
                   spacing=float(spacing))


def box_to_native(box: FaceBox, matrix: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """4x4 map from box voxel indices to native voxel indices."""
    return np.linalg.inv(affine) @ matrix @ box.affine


def mask_box(mask: np.ndarray, pad: int = 0) -> tuple[slice, ...] | None:
    """Slices of the bounding box of ``mask``'s voxels grown by ``pad`` voxels (clipped to
    the grid); None for an empty mask. One pass per axis, not a list of every voxel.

    >>> m = np.zeros((5, 6, 7), bool); m[1, 2:4, 6] = True
    >>> mask_box(m, pad=1)
    (slice(0, 3, None), slice(1, 5, None), slice(5, 7, None))
    """
    lo, hi = [], []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        lo.append(max(int(hit[0]) - pad, 0))
        hi.append(min(int(hit[-1]) + 1 + pad, mask.shape[axis]))
    return tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))


def crop_affine(affine: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """The affine of the sub-grid ``box`` of a grid with ``affine``.

    >>> crop_affine(np.diag([2.0, 2.0, 2.0, 1.0]), (slice(1, 4), slice(0, 2), slice(3, 5)))[:3, 3]
    array([2., 0., 6.])
    """
    shifted = np.array(affine, dtype=np.float64)
    shifted[:3, 3] = affine[:3, :3] @ np.array([s.start for s in box], float) + affine[:3, 3]
    return shifted


def box_footprint(box: FaceBox, matrix: np.ndarray, affine: np.ndarray, shape: tuple,
                  pad: int = 2) -> tuple[slice, ...] | None:
    """Slices of the native grid that hold every voxel the box's samples interpolate from
    (its corners carried to native voxels, grown by ``pad``); None when it misses the grid."""
    from ..deface.mask import bounding_box

    corners = np.array([[i, j, k, 1.0] for i in (0, box.shape[0] - 1)
                        for j in (0, box.shape[1] - 1) for k in (0, box.shape[2] - 1)])
    lo, hi = bounding_box((box_to_native(box, matrix, affine) @ corners.T)[:3].T, shape, pad)
    if np.any(hi <= lo):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def sample_into_box(data: np.ndarray, affine: np.ndarray, matrix: np.ndarray, box: FaceBox, *,
                    order: int = 1, cval: float = 0.0) -> np.ndarray:
    """Resample a native image into the face box (float32)."""
    vox = box_to_native(box, matrix, affine)
    return ndimage.affine_transform(np.asarray(data, dtype=np.float32), vox[:3, :3], vox[:3, 3],
                                    output_shape=box.shape, order=order, cval=cval,
                                    mode="constant").astype(np.float32)


def sample_from_box(values: np.ndarray, box: FaceBox, matrix: np.ndarray, affine: np.ndarray,
                    where: np.ndarray, *, cval: float = -1.0) -> np.ndarray:
    """Trilinear samples of box ``values`` at the native voxels ``where`` (boolean mask), in
    the order of ``where``'s voxels."""
    crop = mask_box(where)
    if crop is None:
        return np.zeros(0, np.float32)
    native_idx = (np.argwhere(where[crop]) + [s.start for s in crop]).T.astype(np.float64)
    to_box = np.linalg.inv(box_to_native(box, matrix, affine))
    coords = to_box[:3, :3] @ native_idx + to_box[:3, 3:4]
    return ndimage.map_coordinates(values.astype(np.float32), coords, order=1, cval=cval,
                                   mode="constant").astype(np.float32)


@dataclass(frozen=True)
class Scaling:
    """Map stored intensities to [-1, 1]: ``background`` goes to -1, ``top`` to 1 (winsorised).

    >>> s = Scaling(background=0.0, top=200.0)
    >>> s.forward(np.array([0.0, 100.0, 400.0])).tolist()
    [-1.0, 0.0, 1.0]
    >>> s.inverse(np.array([-1.0, 0.0])).tolist()
    [0.0, 100.0]
    """

    background: float
    top: float

    def forward(self, values: np.ndarray) -> np.ndarray:
        scaled = (np.asarray(values, dtype=np.float32) - self.background) / (
            self.top - self.background)
        return (np.clip(scaled, 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)

    def inverse(self, values: np.ndarray) -> np.ndarray:
        return ((np.asarray(values, dtype=np.float32) + 1.0) / 2.0
                * (self.top - self.background) + self.background)


def intensity_scaling(data: np.ndarray, background: float) -> Scaling:
    """Winsorise at the 99.5th percentile of the head (voxels above the background)."""
    values = np.asarray(data, dtype=np.float32)
    step = max(1, values.size // 2_000_000)
    sample = values.reshape(-1)[::step]
    head = sample[sample > background + 0.05 * (sample.max() - background)]
    if head.size == 0:
        raise ValueError("the image has no voxel above its background")
    top = float(np.percentile(head, WINSOR_PERCENTILE))
    return Scaling(background=float(background), top=max(top, float(background) + 1e-3))
