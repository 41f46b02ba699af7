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
"""

from __future__ import annotations

import numpy as np

#: Dark voxels are below this share of the head's 99.5th percentile.
DARK_FRACTION = 0.2
#: Tissue is above this share of the head's 99.5th percentile (the noise figure's voxels).
TISSUE_FRACTION = 0.2


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
    }
