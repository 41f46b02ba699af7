"""Template-face refacing (``--reface template``): the packaged template's own face, carried
through the registration and matched to the image's intensities, as afni_refacer and
mri_reface do. A baseline for the cGAN and a fallback where no model applies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from ..deface.template import Template, load_template
from .infer import fill_face

#: Width (mm) of the shell around the mask whose intensities the template's are matched to.
SHELL_MM = 12.0
QUANTILES = np.linspace(0.5, 99.5, 100)


def _template_values(template: Template, matrix: np.ndarray, affine: np.ndarray,
                     where: np.ndarray) -> np.ndarray:
    """Template intensities at the native voxels ``where`` (trilinear)."""
    native = np.argwhere(where).T.astype(np.float64)
    to_tpl = np.linalg.inv(template.affine) @ np.linalg.inv(matrix) @ affine
    coords = to_tpl[:3, :3] @ native + to_tpl[:3, 3:4]
    return ndimage.map_coordinates(template.t1w, coords, order=1, mode="constant", cval=0.0)


def shell_around(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The voxels within about :data:`SHELL_MM` outside ``mask`` (a dilation by that many
    voxels of the finest axis)."""
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(0))
    radius = max(1, int(round(SHELL_MM / spacing.min())))
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - radius - 1, 0)
    hi = np.minimum(idx.max(0) + radius + 2, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    shell = np.zeros(mask.shape, bool)
    shell[box] = ndimage.binary_dilation(mask[box], iterations=radius) & ~mask[box]
    return shell


def matched_template_face(data: np.ndarray, affine: np.ndarray, matrix: np.ndarray,
                          mask: np.ndarray, template: Template | None = None,
                          at: np.ndarray | None = None,
                          shell: np.ndarray | None = None) -> np.ndarray:
    """New intensities for the mask's voxels (or for the voxels ``at``, part of the mask): the
    template's, quantile-matched to the image in a shell around the mask (head and air
    alike; :func:`shell_around` unless given)."""
    template = template or load_template()
    shell = shell_around(mask, affine) if shell is None else shell
    image_q = np.percentile(data[shell], QUANTILES)
    template_q = np.percentile(_template_values(template, matrix, affine, shell), QUANTILES)
    # ties in the template's quantiles (its air is flat) would make np.interp undefined
    template_q = np.maximum.accumulate(template_q + np.arange(len(QUANTILES)) * 1e-6)
    return np.interp(_template_values(template, matrix, affine, mask if at is None else at),
                     template_q, image_q).astype(np.float32)


def template_reface_file(defaced_file: str | Path, mask_file: str | Path, matrix: np.ndarray,
                         out_file: str | Path) -> tuple[Path, dict]:
    """Reface a defaced image with the template's face; returns the written path and figures."""

    def values(data, affine, mask, background):
        return matched_template_face(data, affine, matrix, mask)

    path, info = fill_face(defaced_file, mask_file, values, out_file, "refaced (template)")
    return path, {"reface_method": "template", **info}
