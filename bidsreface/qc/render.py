"""Shaded surface renders of a head (the skin/air boundary) from a 3D MRI.

The renders are orthographic ray casts in RAS world millimetres: the volume is resampled onto a
grid aligned with the view, the first crossing of the head/air threshold along each ray gives a
depth map, and the depth map's normals are shaded (Lambert, a little ambient light and depth
cueing). The view is framed on the head's bounding box so that the face fills a good part of
the image, as face detectors need.

Views (the subject's anatomical directions, in RAS)

``frontal``
    Seen from in front: the face looks at the viewer, the top of the head is up, the subject's
    right is on the image's left.
``profile``
    Seen from the subject's right: the top of the head is up, the face points to the image's
    right.

Renders show faces: write them only where personal data may go (never into a repository).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..deface.register import otsu

#: View name -> (image column direction, image row direction, ray direction), RAS unit vectors.
VIEWS = {
    "frontal": ((-1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, -1.0, 0.0)),
    "profile": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (-1.0, 0.0, 0.0)),
}
#: Head/air threshold: this fraction of the way from the background level to Otsu's threshold.
OTSU_FRACTION = 0.4
#: Gaussian smoothing (in samples) of the view volume before the threshold: less noise.
SMOOTH = 0.7
#: Spacing (mm) of the coarse view grid used for the threshold and the head's bounding box.
COARSE_MM = 3.0
#: Margin around the head's bounding box, as a fraction of its larger side.
MARGIN = 0.04
#: Shading: light direction in view coordinates (column, row, towards the viewer), ambient.
LIGHT = (-0.35, -0.45, 1.0)
AMBIENT = 0.12
#: Depth cueing: the farthest surface is darkened by this fraction.
DEPTH_CUE = 0.35


# --------------------------------------------------------------------------- geometry


def _volume(data) -> np.ndarray:
    """The 3D array of *data* (a trailing axis of length one is dropped)."""
    data = np.asanyarray(data)
    if data.ndim > 3 and int(np.prod(data.shape[3:])) == 1:
        data = data.reshape(data.shape[:3])
    if data.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {data.shape}")
    return data


def rotation_part(matrix: np.ndarray) -> np.ndarray:
    """The rotation closest to the 3x3 linear part of *matrix* (polar decomposition).

    >>> r = rotation_part(np.diag([2.0, 3.0, 0.5, 1.0]))
    >>> np.allclose(r, np.eye(3))
    True
    """
    u, _, vt = np.linalg.svd(np.asarray(matrix, dtype=float)[:3, :3])
    rot = u @ vt
    if np.linalg.det(rot) < 0:  # a reflection: keep the rotation part only
        u[:, -1] *= -1
        rot = u @ vt
    return rot


def view_axes(view: str = "frontal", matrix: np.ndarray | None = None) -> np.ndarray:
    """Unit vectors (rows: column, row, ray directions) of *view* in native RAS mm.

    With *matrix* (template mm -> native mm) the view is set in the template's frame, so the
    head is shown upright even when it is tilted in the scanner.

    >>> view_axes("frontal").tolist()
    [[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]]
    """
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {sorted(VIEWS)}")
    axes = np.array(VIEWS[view], dtype=float)
    if matrix is not None:
        axes = (rotation_part(matrix) @ axes.T).T
    return axes


def head_threshold(data: np.ndarray) -> float:
    """Intensity of the head/air boundary, between the background and Otsu's threshold.

    The background level (the 2nd percentile) is subtracted first, so heads whose air is not
    stored as 0 get a threshold between their air and their skin. Values above the 99.5th
    percentile are clipped so that a few bright voxels do not move the threshold.
    """
    values = np.asarray(data, dtype=np.float32).ravel()
    low, high = np.percentile(values, [2.0, 99.5])
    if high <= low:
        raise ValueError("the image is constant: no head/air boundary to render")
    values = np.clip(values, low, high)
    return float(low + OTSU_FRACTION * (otsu(values) - low))


def head_mask(data: np.ndarray, threshold: float) -> np.ndarray:
    """Largest connected component above *threshold*, holes filled."""
    mask = ndimage.binary_opening(data > threshold)
    labels, n = ndimage.label(mask)
    if n == 0:
        raise ValueError(f"nothing above the threshold {threshold:g}: no head to render")
    if n > 1:
        mask = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    return ndimage.binary_fill_holes(mask)


def fov_box(shape, affine: np.ndarray, axes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """View coordinates (column, row, depth; mm) of the corners of the field of view.

    Returns the lowest and highest coordinates over the eight corner voxels (their centres),
    which are the same points whatever the order and direction of the stored axes.

    >>> lo, hi = fov_box((3, 5, 7), np.eye(4), view_axes("frontal"))
    >>> lo.tolist(), hi.tolist()
    ([-2.0, -6.0, -4.0], [0.0, 0.0, 0.0])
    """
    corners = np.array(np.meshgrid(*[(0, n - 1) for n in shape[:3]], indexing="ij"))
    corners = corners.reshape(3, -1).T
    coords = (corners @ affine[:3, :3].T + affine[:3, 3]) @ axes.T
    return coords.min(axis=0), coords.max(axis=0)


def view_box(mask: np.ndarray, start: np.ndarray, step: float, margin: float = MARGIN):
    """Square frame around the head, from its *mask* on a view grid.

    Parameters
    ----------
    mask
        The head on a grid (rows, columns, depth) whose sample ``(r, c, d)`` lies at view
        coordinates ``start + step * (c, r, d)``.

    Returns
    -------
    start : numpy.ndarray, shape (3,)
        View coordinates (column, row, depth; mm) of the first corner of the frame.
    side : float
        Side of the square image (mm).
    depth : float
        Extent along the rays (mm).
    """
    index = np.argwhere(mask)[:, [1, 0, 2]]
    lo = start + step * (index.min(axis=0) - 1)  # a sample stands for a cube of side step
    hi = start + step * (index.max(axis=0) + 1)
    side = (1 + 2 * margin) * max(hi[0] - lo[0], hi[1] - lo[1])
    centre = (lo + hi) / 2
    return (np.array([centre[0] - side / 2, centre[1] - side / 2, lo[2]]), float(side),
            float(hi[2] - lo[2]))


# --------------------------------------------------------------------------- ray casting


def resample_view(data, affine, axes, start, shape, step, cval=None) -> np.ndarray:
    """Trilinear samples of *data* on the view grid (rows, columns, depth), float32.

    Sample ``(r, c, d)`` lies at ``start + step * (c, r, d)`` in view coordinates; samples
    outside the field of view take *cval* (by default the image minimum).
    """
    inverse = np.linalg.inv(affine)
    # columns of the view -> world matrix, ordered as the output axes (row, column, depth)
    to_world = np.stack([axes[1], axes[0], axes[2]], axis=1) * step
    origin = start @ axes
    matrix = inverse[:3, :3] @ to_world
    offset = inverse[:3, :3] @ origin + inverse[:3, 3]
    return ndimage.affine_transform(
        np.asarray(data, dtype=np.float32), matrix, offset=offset, output_shape=tuple(shape),
        order=1, mode="constant", cval=float(np.min(data)) if cval is None else cval,
        prefilter=False,
    )


def first_crossing(volume: np.ndarray, threshold: float, run: int = 2):
    """Depth (in samples, sub-sample interpolated) of the first value above *threshold*.

    The crossing must stay above *threshold* for *run* samples: isolated bright samples in the
    air (noise, ghosts) are passed through. Returns the depth map and the map of rays that
    hit (depth is 0 where they miss).

    >>> depth, hit = first_crossing(np.array([[[0.0, 0.9, 0.0, 1.0, 1.0]]]), 0.5)
    >>> float(depth[0, 0]), bool(hit[0, 0])
    (2.5, True)
    """
    above = volume > threshold
    solid = above[..., : above.shape[-1] - run + 1].copy()
    for shift in range(1, run):
        solid &= above[..., shift : shift + solid.shape[-1]]
    index = np.argmax(solid, axis=-1)
    hit = np.take_along_axis(solid, index[..., None], axis=-1)[..., 0]
    before = np.maximum(index - 1, 0)
    v0 = np.take_along_axis(volume, before[..., None], axis=-1)[..., 0]
    v1 = np.take_along_axis(volume, index[..., None], axis=-1)[..., 0]
    frac = np.where(index > 0, (threshold - v0) / np.maximum(v1 - v0, 1e-12), 1.0)
    depth = np.where(hit, before + np.clip(frac, 0.0, 1.0), 0.0)
    return depth.astype(np.float32), hit


def despeckle(depth: np.ndarray, hit: np.ndarray, far: float):
    """3 x 3 median of the depth map (misses count as *far*): removes one-ray pits and spikes."""
    filled = ndimage.median_filter(np.where(hit, depth, far), size=3, mode="nearest")
    return filled, filled < far


def upsample(depth: np.ndarray, hit: np.ndarray, size: int):
    """Bilinear zoom of a depth map to ``size x size``; misses stay misses."""
    far = depth[hit].max() if hit.any() else 0.0
    filled = np.where(hit, depth, far + 2.0)  # air behind everything: a dark rim, no halo
    factors = (size / depth.shape[0], size / depth.shape[1])
    big = ndimage.zoom(filled, factors, order=1, grid_mode=True, mode="nearest")
    big_hit = ndimage.zoom(hit.astype(np.float32), factors, order=1, grid_mode=True,
                           mode="nearest") > 0.5
    return big, big_hit


def shade(depth: np.ndarray, hit: np.ndarray, pixel: float, light=LIGHT, ambient=AMBIENT,
          depth_cue=DEPTH_CUE) -> np.ndarray:
    """Lambert shading of a depth map (mm away from the viewer), background 0, in [0, 1]."""
    drow, dcol = np.gradient(depth, pixel)
    normals = np.stack([dcol, drow, -np.ones_like(depth)], axis=-1)  # towards the viewer: -z
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    light = np.array([light[0], light[1], -light[2]], dtype=float)
    lambert = np.clip(normals @ (light / np.linalg.norm(light)), 0.0, 1.0)
    image = ambient + (1 - ambient) * lambert
    if depth_cue and hit.any():
        near, far = depth[hit].min(), depth[hit].max()
        image *= 1 - depth_cue * (depth - near) / max(far - near, 1e-6)
    return np.where(hit, np.clip(image, 0.0, 1.0), 0.0).astype(np.float32)


def render_head(
    data,
    affine: np.ndarray,
    view: str = "frontal",
    size: int = 512,
    threshold: float | None = None,
    matrix: np.ndarray | None = None,
    step_mm: float = 1.5,
) -> np.ndarray:
    """Shaded surface render of the head/air boundary of a head MRI.

    Parameters
    ----------
    data
        The 3D image (a 4D image with one volume is accepted), any orientation of the axes.
    affine
        Voxel -> RAS mm.
    view
        ``"frontal"`` (face towards the viewer) or ``"profile"`` (seen from the subject's
        right, face to the image's right); the top of the head is up in both.
    size
        Side of the square image (pixels).
    threshold
        Intensity of the head/air boundary; by default :func:`head_threshold` of the image
        sampled every ``COARSE_MM`` mm over its field of view.
    matrix
        Template mm -> native mm (RAS); when given, the view is set in the template's frame.
    step_mm
        Spacing of the rays and of the samples along them (mm); the depth map is interpolated
        to *size* pixels.

    Returns
    -------
    numpy.ndarray, float32, shape (size, size)
        Grey levels in [0, 1]; 0 is the background.
    """
    data = _volume(data)
    affine = np.asarray(affine, dtype=float)
    axes = view_axes(view, matrix)
    lo, hi = fov_box(data.shape, affine, axes)
    coarse_shape = tuple(int(n) for n in np.ceil((hi - lo)[[1, 0, 2]] / COARSE_MM) + 1)
    coarse = resample_view(data, affine, axes, lo, coarse_shape, COARSE_MM, cval=np.nan)
    if threshold is None:
        threshold = head_threshold(coarse[np.isfinite(coarse)])
    start, side, extent = view_box(head_mask(coarse, threshold), lo, COARSE_MM)
    n = max(int(np.ceil(side / step_mm)), 2)
    step = side / n
    shape = (n, n, max(int(np.ceil(extent / step)) + 1, 2))
    volume = ndimage.gaussian_filter(resample_view(data, affine, axes, start, shape, step),
                                     SMOOTH, truncate=3.0)
    depth, hit = despeckle(*first_crossing(volume, threshold), far=float(shape[2]))
    depth_mm, hit = upsample(depth * step, hit, size)
    return shade(depth_mm, hit, side / size)


# --------------------------------------------------------------------------- images


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Grey levels in [0, 1] (or RGB) as uint8, values outside clipped.

    >>> to_uint8(np.array([0.0, 0.5, 1.0, 2.0])).tolist()
    [0, 128, 255, 255]
    """
    img = np.asarray(img)
    if img.dtype == np.uint8:
        return img
    return np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)


def png_bytes(img: np.ndarray) -> bytes:
    """An 8-bit greyscale (H x W) or RGB (H x W x 3) PNG file, as bytes.

    >>> png_bytes(np.zeros((2, 3)))[:8]
    b'\\x89PNG\\r\\n\\x1a\\n'
    """
    pixels = to_uint8(img)
    if pixels.ndim == 2:
        colour = 0
    elif pixels.ndim == 3 and pixels.shape[2] == 3:
        colour = 2
    else:
        raise ValueError(f"expected a greyscale or RGB image, got shape {pixels.shape}")
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    raw = np.hstack([np.zeros((height, 1), dtype=np.uint8), rows]).tobytes()  # filter 0

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def save_png(img: np.ndarray, path: str | Path) -> Path:
    """Write *img* (grey levels in [0, 1], or uint8) as a PNG file and return its path."""
    path = Path(path)
    path.write_bytes(png_bytes(img))
    return path
