"""How much a refaced region looks like a real head there: figures against the original.

Every figure compares the voxels of the deface mask in the refaced image with the same voxels
of the original image:

``histogram_distance``
    The earth mover's distance between the two intensity distributions, in units of the
    original head's 99.5th intensity percentile (0: the same distribution).
``dark_ratio``
    The share of dark voxels (air, bone, airways: below :data:`DARK_FRACTION` of that
    percentile) in the refaced region over the share in the original's.
``gradient_ratio``
    The mean gradient magnitude (mm-scaled) over the region, refaced over original: a smooth
    block has little structure and a ratio well below 1.
``noise_ratio``
    The local noise in the refaced region's tissue (robust spread of the image minus its
    1-voxel Gaussian blur) over that of the image's own tissue within 15 mm around the region:
    a face generated at a coarser resolution and pasted in reads below 1.
``noise_vs_original``
    The same local noise of the refaced region's tissue over that of the original's tissue in
    the same region: where the region's surroundings are mostly brain (the whole-head region),
    whose folds raise the spread around it, this is the figure that says whether the region's
    texture is the image's.

The figures above can be reached by image-matched noise and by air drawn from the background;
two more are measured where noise cannot fake them, inside the head (:func:`inner_voxels`:
the mask's voxels at least :data:`INNER_MM` inside both the original's and the refaced head's
outline):

``inner_dark_ratio``
    The share of dark voxels inside the head (airways, sinuses, cortical bone: below
    :data:`INNER_DARK_FRACTION` of each image's 99.5th percentile), refaced over original.
``structure_ratio``
    The mean gradient magnitude after a Gaussian of :data:`STRUCTURE_SIGMA_MM` (standard
    deviation) inside the head, refaced over original: structure at anatomical scale, which
    voxel noise does not reach.

One more says whether the new region joins the kept head without a seam:

``seam_ratio``
    The mean gradient magnitude after a Gaussian of :data:`SEAM_SIGMA_MM` on the mask's
    border (:func:`border_voxels`: the voxels on either side of it, tissue in either image,
    so that a step in the head's outline counts),
    refaced over original. A step where the region meets the kept head reads above 1; at most
    1.25 is as smooth as the original is there.
"""

from __future__ import annotations

import numpy as np

#: Dark voxels are below this share of the head's 99.5th percentile.
DARK_FRACTION = 0.2
#: Tissue is above this share of the head's 99.5th percentile (the noise figure's voxels).
TISSUE_FRACTION = 0.2
#: Inner voxels are at least this far (mm) inside both heads' outlines.
INNER_MM = 6.0
#: Inner dark voxels are below this share of the image's 99.5th percentile.
INNER_DARK_FRACTION = 0.15
#: Standard deviation (mm) of the Gaussian before the structure figure's gradient.
STRUCTURE_SIGMA_MM = 3.0
#: Standard deviation (mm) of the Gaussian before the seam figure's gradient.
SEAM_SIGMA_MM = 1.0
#: Radius (mm) of the closing that seals nostrils and lips in :func:`head_outline`.
OUTLINE_CLOSING_MM = 4.0


def head_level(data: np.ndarray) -> float:
    """The 99.5th intensity percentile of the head (voxels above 5 % of the image's range)."""
    values = np.asarray(data, dtype=np.float32)
    lo, hi = float(values.min()), float(values.max())
    head = values[values > lo + 0.05 * (hi - lo)]
    return float(np.percentile(head, 99.5)) - lo if head.size else 1.0


def histogram_distance(a: np.ndarray, b: np.ndarray, scale: float) -> float:
    """Earth mover's distance between two samples, in units of ``scale``.

    >>> histogram_distance(np.array([0.0, 1.0]), np.array([1.0, 2.0]), 2.0)
    0.5
    """
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(np.ravel(a), np.ravel(b)) / scale)


def gradient_magnitude(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Gradient magnitude per mm (central differences)."""
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    parts = np.gradient(np.asarray(data, dtype=np.float32), *zooms)
    return np.sqrt(sum(p**2 for p in parts))


def local_noise(data: np.ndarray, where: np.ndarray) -> float:
    """Robust spread (1.4826 MAD) of the image minus its 1-voxel Gaussian blur at ``where``."""
    from ..reface.infer import high_pass, robust_sigma

    return robust_sigma(high_pass(data)[where])


def head_outline(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The solid head: above half of Otsu's threshold (over the image's minimum), its largest
    component, closed over :data:`OUTLINE_CLOSING_MM` (nostrils and lips sealed) and its holes
    filled in 3D and slice by slice along every axis (so airways and sinuses are inside)."""
    from scipy import ndimage

    from ..deface.register import otsu

    data = np.asarray(data, dtype=np.float32)
    lowest = float(data.min())
    values = data[data > np.percentile(data, 2)]
    threshold = otsu(values) if values.size else lowest
    mask = data > lowest + 0.5 * (threshold - lowest)
    labels, n = ndimage.label(mask)
    if n > 1:
        mask = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    radius = np.maximum(np.round(OUTLINE_CLOSING_MM / zooms).astype(int), 1)
    grid = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    ball = sum((g / r) ** 2 for g, r in zip(grid, radius, strict=True)) <= 1.0
    padded = np.pad(mask, [(r, r) for r in radius])
    mask = ndimage.binary_closing(padded, structure=ball)[
        tuple(slice(r, -r) for r in radius)]
    mask = ndimage.binary_fill_holes(mask)
    for axis in range(3):
        for i in range(mask.shape[axis]):
            index = [slice(None)] * 3
            index[axis] = i
            mask[tuple(index)] = ndimage.binary_fill_holes(mask[tuple(index)])
    return mask


def inner_voxels(original: np.ndarray, refaced: np.ndarray, mask: np.ndarray,
                 affine: np.ndarray, inner_mm: float = INNER_MM) -> np.ndarray:
    """The mask's voxels at least ``inner_mm`` inside both heads' outlines
    (:func:`head_outline`, Euclidean distance in mm)."""
    from scipy import ndimage

    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    inside = np.asarray(mask, bool).copy()
    for data in (original, refaced):
        depth = ndimage.distance_transform_edt(head_outline(data, affine), sampling=zooms)
        inside &= depth >= inner_mm
    return inside


def dark_share(data: np.ndarray, where: np.ndarray, level: float, floor: float | None = None,
               fraction: float = INNER_DARK_FRACTION) -> float:
    """The share of ``where``'s voxels below ``fraction`` of ``level`` above ``floor`` (the
    image's minimum unless given); nan when ``where`` is empty.

    >>> dark_share(np.array([0.0, 1.0, 5.0, 10.0]), np.array([False, True, True, True]), 10.0)
    0.3333
    """
    values = np.asarray(data, dtype=np.float32)
    if not np.any(where):
        return float("nan")
    floor = float(values.min()) if floor is None else floor
    return round(float((values[where] < floor + fraction * level).mean()), 4)


def smooth_gradient(data: np.ndarray, affine: np.ndarray,
                    sigma_mm: float = STRUCTURE_SIGMA_MM) -> np.ndarray:
    """Gradient magnitude per mm after a Gaussian of ``sigma_mm`` (standard deviation)."""
    from scipy import ndimage

    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    smooth = ndimage.gaussian_filter(np.asarray(data, dtype=np.float32), sigma_mm / zooms)
    return gradient_magnitude(smooth, affine)


def border_voxels(mask: np.ndarray) -> np.ndarray:
    """The voxels on either side of ``mask``'s border (face-connected neighbours).

    >>> m = np.zeros((6, 1, 1), bool); m[3:] = True
    >>> np.flatnonzero(border_voxels(m)).tolist()
    [2, 3]
    """
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    inside = mask & ndimage.binary_dilation(~mask)
    outside = ~mask & ndimage.binary_dilation(mask)
    return inside | outside


def seam_ratio(original: np.ndarray, refaced: np.ndarray, mask: np.ndarray,
               affine: np.ndarray) -> float:
    """``seam_ratio`` of the module's docstring (nan where the border crosses no tissue).

    Both images are taken on the same grid; pass boxes around the mask for speed.
    """
    o = np.asarray(original, dtype=np.float32)
    r = np.asarray(refaced, dtype=np.float32)
    tissue_o = o > float(o.min()) + TISSUE_FRACTION * head_level(o)
    tissue_r = r > float(r.min()) + TISSUE_FRACTION * head_level(r)
    where = border_voxels(mask) & (tissue_o | tissue_r)
    if not where.any():
        return float("nan")
    grad_o = float(smooth_gradient(o, affine, SEAM_SIGMA_MM)[where].mean())
    grad_r = float(smooth_gradient(r, affine, SEAM_SIGMA_MM)[where].mean())
    return round(grad_r / grad_o, 3) if grad_o > 0 else float("nan")


def inner_figures(original: np.ndarray, refaced: np.ndarray, mask: np.ndarray,
                  affine: np.ndarray) -> dict:
    """The inner dark share and the anatomical-scale structure of the module's docstring.

    Computed on the box around the mask grown by 12 mm plus the structure Gaussian's reach,
    which holds every outline point within :data:`INNER_MM` of a mask voxel.
    """
    from ..reface.space import mask_box

    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    pad = int(np.ceil((12.0 + 4 * STRUCTURE_SIGMA_MM) / zooms.min()))
    box = mask_box(np.asarray(mask, bool), pad=pad)
    nan = float("nan")
    if box is None:
        return {"inner_voxels": 0, "inner_dark_original": nan, "inner_dark_refaced": nan,
                "inner_dark_ratio": nan, "structure_ratio": nan, "seam_ratio": nan}
    o = np.asarray(original, dtype=np.float32)
    r = np.asarray(refaced, dtype=np.float32)
    level_o, level_r = head_level(o), head_level(r)
    floor_o, floor_r = float(o.min()), float(r.min())
    o, r, m = o[box], r[box], np.asarray(mask, bool)[box]
    inner = inner_voxels(o, r, m, affine)
    dark_o = dark_share(o, inner, level_o, floor_o)
    dark_r = dark_share(r, inner, level_r, floor_r)
    structure_o = float(smooth_gradient(o, affine)[inner].mean()) if inner.any() else nan
    structure_r = float(smooth_gradient(r, affine)[inner].mean()) if inner.any() else nan
    return {
        "inner_voxels": int(inner.sum()),
        "inner_dark_original": dark_o,
        "inner_dark_refaced": dark_r,
        "inner_dark_ratio": round(dark_r / dark_o, 3) if dark_o > 0 else nan,
        "structure_ratio": round(structure_r / structure_o, 3) if structure_o > 0 else nan,
        "seam_ratio": seam_ratio(o, r, m, affine),
    }


def realism_figures(original: np.ndarray, refaced: np.ndarray, mask: np.ndarray,
                    affine: np.ndarray) -> dict:
    """The figures of the module's docstring for one refaced image."""
    from ..reface.infer import tissue_near

    original = np.asarray(original, dtype=np.float32)
    refaced = np.asarray(refaced, dtype=np.float32)
    idx = np.argwhere(mask)
    lo, hi = np.maximum(idx.min(0) - 12, 0), np.minimum(idx.max(0) + 13, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    level = head_level(original)
    floor = float(original.min())
    o, r, m = original[box], refaced[box], mask[box]
    dark = floor + DARK_FRACTION * level
    dark_o, dark_r = float((o[m] < dark).mean()), float((r[m] < dark).mean())
    grad_o = float(gradient_magnitude(o, affine)[m].mean())
    grad_r = float(gradient_magnitude(r, affine)[m].mean())
    tissue = r > floor + TISSUE_FRACTION * level
    around = tissue_near(m, tissue, affine)
    inside = m & tissue
    noise_out = local_noise(r, around) if around.any() else float("nan")
    noise_in = local_noise(r, inside) if inside.any() else float("nan")
    inside_o = m & (o > floor + TISSUE_FRACTION * level)
    noise_o = local_noise(o, inside_o) if inside_o.any() else float("nan")
    return {
        "histogram_distance": round(histogram_distance(o[m], r[m], level), 4),
        "dark_share_original": round(dark_o, 4),
        "dark_share_refaced": round(dark_r, 4),
        "dark_ratio": round(dark_r / dark_o, 3) if dark_o > 0 else float("nan"),
        "gradient_ratio": round(grad_r / grad_o, 3) if grad_o > 0 else float("nan"),
        "noise_ratio": round(noise_in / noise_out, 3) if noise_out > 0 else float("nan"),
        "noise_vs_original": round(noise_in / noise_o, 3) if noise_o > 0 else float("nan"),
        **inner_figures(original, refaced, mask, affine),
    }
