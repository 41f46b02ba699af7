"""Reportlets: slice mosaics with the mask outline, and surface-render panels.

Only de-identified heads are drawn here (the caller withholds an output that may still show
the original face). Images are numpy arrays (grey levels in [0, 1], or RGB uint8), written as
PNG by :func:`bidsreface.qc.render.png_bytes`.

Orientation: slices are taken on the image's axes reordered to the closest RAS orientation
(no interpolation across slices) and shown at 1 pixel per ``PIXEL_MM`` millimetres. Sagittal
tiles have the face on the right and the top of the head up; axial tiles have the face up and
the subject's right on the image's left, as the frontal render does.
"""

from __future__ import annotations

import nibabel as nb
import numpy as np
from scipy import ndimage

#: Display resolution of the mosaics (mm per pixel).
PIXEL_MM = 1.5
#: Slices per mosaic row.
SLICES = 6
#: Colour of the deface mask's outline (RGB).
OUTLINE = (255, 60, 40)
#: Pixels between tiles.
GAP = 4


def to_ras(data: np.ndarray, affine: np.ndarray):
    """*data* with its axes reordered and flipped to the closest RAS orientation.

    Returns the array and its voxel sizes (mm) along R, A, S.

    >>> flipped, sizes = to_ras(np.arange(3.0).reshape(3, 1, 1), np.diag([-2.0, 1, 1, 1]))
    >>> flipped.ravel().tolist(), sizes.tolist()
    ([2.0, 1.0, 0.0], [2.0, 1.0, 1.0])
    """
    ornt = nb.orientations.io_orientation(affine)
    out = nb.orientations.apply_orientation(np.asarray(data), ornt)
    sizes = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    return out, sizes[ornt[:, 0].astype(int).argsort()]


def window(data: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Grey levels in [0, 1] between two percentiles of the non-zero voxels.

    >>> window(np.array([0.0, 1.0, 2.0, 3.0]), 0, 100).tolist()
    [0.0, 0.0, 0.5, 1.0]
    """
    data = np.asarray(data, dtype=np.float32)
    values = data[data != 0]
    if not values.size:
        return np.zeros_like(data)
    lo, hi = np.percentile(values, [low, high])
    return np.clip((data - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a 2D mask (the mask minus its erosion).

    >>> m = np.zeros((5, 5), bool); m[1:4, 1:4] = True
    >>> int(outline(m).sum())
    8
    """
    return mask & ~ndimage.binary_erosion(mask)


def slice_positions(mask: np.ndarray, head: np.ndarray, axis: int, n: int = SLICES):
    """*n* slice indices along *axis* spread over the mask (over the head without a mask).

    >>> m = np.zeros((10, 4, 4), bool); m[2:8] = True
    >>> slice_positions(m, m, 0, 3).tolist()
    [2, 4, 6]
    """
    region = mask if mask.any() else head
    if not region.any():
        region = np.ones_like(head)
    other = tuple(a for a in range(3) if a != axis)
    present = np.flatnonzero(region.any(axis=other))
    lo, hi = np.percentile(present, [10, 90])
    return np.unique(np.round(np.linspace(lo, hi, n)).astype(int))


def _tile(grey: np.ndarray, mask: np.ndarray, zoom: tuple[float, float]) -> np.ndarray:
    """An RGB tile of a 2D slice at display resolution, the mask outlined."""
    big = ndimage.zoom(grey, zoom, order=1, grid_mode=True, mode="nearest")
    big_mask = ndimage.zoom(mask.astype(np.float32), zoom, order=1, grid_mode=True,
                            mode="nearest") > 0.5
    rgb = np.repeat(np.round(np.clip(big, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)
    edge = ndimage.binary_dilation(outline(big_mask))
    rgb[edge] = OUTLINE
    return rgb


def _row(tiles: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Tiles centred in cells of ``height x width``, side by side."""
    row = np.zeros((height, len(tiles) * (width + GAP) - GAP, 3), dtype=np.uint8)
    for i, tile in enumerate(tiles):
        tile = tile[:height, :width]
        top, left = (height - tile.shape[0]) // 2, i * (width + GAP) + (width - tile.shape[1]) // 2
        row[top:top + tile.shape[0], left:left + tile.shape[1]] = tile
    return row


def mosaic(data: np.ndarray, affine: np.ndarray, mask: np.ndarray, n: int = SLICES,
           pixel_mm: float = PIXEL_MM) -> np.ndarray:
    """Sagittal slices (top row) and axial slices (bottom row) through the face region.

    Parameters
    ----------
    data
        A de-identified head (3D).
    affine
        Its voxel -> mm.
    mask
        The deface mask on the same grid, drawn as an outline.
    n
        Slices per row.
    pixel_mm
        Display resolution.

    Returns
    -------
    numpy.ndarray, uint8, shape (height, width, 3)
    """
    grey, sizes = to_ras(window(data), affine)
    mask, _ = to_ras(np.asarray(mask, dtype=bool).reshape(np.shape(data)), affine)
    head = grey > 0.05
    # crop to the head, so that the tiles are not mostly air
    if head.any():
        box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in np.nonzero(head))
        grey, mask, head = grey[box], mask[box], head[box]
    zoom = sizes / pixel_mm
    shape = np.ceil(np.array(grey.shape) * zoom).astype(int)
    # sagittal (fixed x): rows = S (top up), columns = A (face right)
    sagittal = [_tile(np.flipud(grey[i].T), np.flipud(mask[i].T), (zoom[2], zoom[1]))
                for i in slice_positions(mask, head, 0, n)]
    # axial (fixed z): rows = A (face up), columns = -R (subject's right on the left)
    axial = [_tile(np.flip(grey[:, :, k].T), np.flip(mask[:, :, k].T), (zoom[1], zoom[0]))
             for k in slice_positions(mask, head, 2, n)]
    side = int(max(shape))
    rows = [_row(sagittal, int(shape[2]), side), _row(axial, int(shape[1]), side)]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate([rows[0], np.zeros((GAP, width, 3), np.uint8), rows[1]])


def render_panel(frontal: np.ndarray, profile: np.ndarray) -> np.ndarray:
    """The frontal and profile renders side by side (grey, [0, 1]).

    >>> render_panel(np.zeros((4, 4)), np.ones((4, 4))).shape
    (4, 12)
    """
    gap = np.zeros((frontal.shape[0], GAP), dtype=np.float32)
    return np.hstack([frontal, gap, profile]).astype(np.float32)


def image_reportlets(kind: str, data: np.ndarray, affine: np.ndarray, mask: np.ndarray,
                     renders: dict) -> dict[str, np.ndarray]:
    """The reportlets of one de-identified output (*kind*: ``defaced`` or ``refaced``).

    Returns ``{"<kind>mosaic": RGB image, "<kind>render": grey image}``; the names are the
    ``desc`` entity of the figure files.
    """
    return {f"{kind}mosaic": mosaic(data, affine, mask),
            f"{kind}render": render_panel(renders["frontal"], renders["profile"])}
