"""The population prior of the face region: a sharp template of the training people's lower
front head (groupwise non-linear registration, ``scripts/build_prior.py``) and the principal
modes of how they differ from it, in shape (displacement fields) and appearance (intensities
warped into the template).

The prior lives on a box of template space (:class:`bidsreface.reface.space.FaceBox`), so the
registration matrix that brings the packaged template to an image brings the prior there too.
:func:`prior_reface_file` fills a defaced region with it as the template method
(:mod:`bidsreface.reface.template_face`) fills it with the packaged template's face: carried
through the registration and quantile-matched to the image around the region.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from scipy import ndimage

from .space import FaceBox

PRIOR_FILE = "prior_T1w.npz"


@dataclass(frozen=True, eq=False)
class Prior:
    """The template on its box (0-1 intensities) and its modes, one standard deviation each:
    ``appearance_modes`` (modes x box) and ``shape_modes`` (modes x sub-grid x 3,
    displacements in RAS mm from the template to a head, on every ``shape_stride``-th voxel
    of the box: they are smooth). A seed draws its coefficients as standard normal amounts
    times ``draw_scale``."""

    template: np.ndarray
    appearance_modes: np.ndarray
    shape_modes: np.ndarray
    box: FaceBox
    shape_stride: int = 1
    draw_scale: float = 1.0
    #: the file's name and checksum, which outputs record
    name: str = PRIOR_FILE
    sha256: str = ""

    @property
    def affine(self) -> np.ndarray:
        return self.box.affine

    @property
    def t1w(self) -> np.ndarray:
        """The template's intensities (the name :func:`matched_template_face` reads)."""
        return self.template


def packaged_prior_path() -> Path:
    """The packaged prior's file (it may be absent from a source tree without it)."""
    return Path(str(resources.files("bidsreface") / "data" / "models" / PRIOR_FILE))


def load_prior(path: str | Path | None = None) -> Prior:
    """Read a prior file (default: the packaged one); raise naming the file when it is
    missing or not a prior."""
    path = Path(path) if path else packaged_prior_path()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no prior file (scripts/build_prior.py makes it)")
    with np.load(path) as stored:
        missing = {"template", "appearance_modes", "shape_modes", "box"} - set(stored.files)
        if missing:
            raise ValueError(f"{path}: not a prior file (no {', '.join(sorted(missing))})")
        box = FaceBox.from_dict(json.loads(str(stored["box"])))
        template = stored["template"].astype(np.float32)
        stride = int(stored["shape_stride"]) if "shape_stride" in stored.files else 1
        # ITK writes displacements in LPS: the first two components change sign for RAS
        shape = dequantised(stored, "shape") * np.array([-1.0, -1.0, 1.0], np.float32)
        scale = float(stored["draw_scale"]) if "draw_scale" in stored.files else 1.0
        from ..resume import file_sha256

        return Prior(template=template, appearance_modes=dequantised(stored, "appearance"),
                     shape_modes=shape, box=box, shape_stride=stride, draw_scale=scale,
                     name=path.name, sha256=file_sha256(path))


def dequantised(stored, kind: str) -> np.ndarray:
    """``{kind}_modes`` as float32: int8 times ``{kind}_scale`` (one per mode), or as
    stored (float16, the first prior file)."""
    modes = stored[f"{kind}_modes"].astype(np.float32)
    if f"{kind}_scale" in stored.files:
        scale = stored[f"{kind}_scale"].astype(np.float32)
        modes *= scale.reshape((-1,) + (1,) * (modes.ndim - 1))
    return modes


def full_grid(modes: np.ndarray, shape: tuple, stride: int) -> np.ndarray:
    """Vector modes kept on every ``stride``-th voxel (modes x sub-grid x 3) back on the
    full grid ``shape`` (trilinear; the sub-grid's voxel i is the grid's voxel stride * i).

    >>> full_grid(np.arange(2.0).reshape(1, 2, 1, 1, 1), (3, 1, 1), 2)[0, :, 0, 0, 0].tolist()
    [0.0, 0.5, 1.0]
    """
    if stride == 1:
        return modes
    coords = np.indices(shape, dtype=np.float32) / stride
    return np.stack([np.stack([ndimage.map_coordinates(mode[..., c], coords, order=1,
                                                       mode="nearest")
                               for c in range(mode.shape[-1])], axis=-1)
                     for mode in modes]).astype(np.float32)


def drawn_head(prior: Prior, seed: int | None, scale: float | None = None) -> np.ndarray:
    """A head on the prior's box: the template when ``seed`` is None, else the template with
    seeded appearance and shape coefficients (standard normal times ``scale``, by default the
    prior's ``draw_scale``) added, warped by the drawn displacement and sampled once
    (trilinear)."""
    if seed is None:
        return prior.template
    scale = prior.draw_scale if scale is None else scale
    rng = np.random.default_rng(seed)
    appearance = rng.standard_normal(len(prior.appearance_modes)) * scale
    shape = rng.standard_normal(len(prior.shape_modes)) * scale
    values = prior.template + np.tensordot(appearance, prior.appearance_modes, axes=1)
    # the modes are linear: combined on their sub-grid, then carried to the box once
    shift_mm = full_grid(np.tensordot(shape, prior.shape_modes, axes=1)[None], prior.box.shape,
                         prior.shape_stride)[0]
    grid = np.indices(prior.box.shape, dtype=np.float32)
    coords = grid + np.moveaxis(shift_mm, -1, 0) / prior.box.spacing
    return ndimage.map_coordinates(values, coords, order=1, mode="nearest").astype(np.float32)


def in_box(box: FaceBox, matrix: np.ndarray, affine: np.ndarray,
           where: np.ndarray) -> np.ndarray:
    """Whether each of the native voxels ``where`` (in their order) falls within ``box``."""
    from .space import box_to_native

    to_box = np.linalg.inv(box_to_native(box, matrix, affine))
    coords = to_box[:3, :3] @ np.argwhere(where).T + to_box[:3, 3:4]
    return np.all((coords >= 0) & (coords <= np.array(box.shape)[:, None] - 1), axis=0)


#: Width (mm) of the band inside the mask over which the drawn head joins the kept head.
JOIN_MM = 6.0
#: Standard deviation (mm) of the Gaussian that carries the kept head's intensities into the
#: band.
JOIN_SIGMA_MM = 2.0


def join_smoothly(values: np.ndarray, data: np.ndarray, mask: np.ndarray, affine: np.ndarray,
                  width_mm: float = JOIN_MM, sigma_mm: float = JOIN_SIGMA_MM) -> np.ndarray:
    """The region's new values (mask order) blended with the kept head's intensities carried
    into the mask (a Gaussian average of the voxels outside it, ``sigma_mm``): mostly kept at
    the border, all new about ``width_mm`` inside (the blend is twice the share of kept voxels
    under a Gaussian of ``width_mm`` / 2.5): no step at the mask's border. Only voxels outside
    the mask are read from ``data``; Gaussian filters only, on the mask's box.

    >>> data = np.zeros((30, 1, 1), np.float32); data[:10] = 10.0
    >>> mask = np.zeros(data.shape, bool); mask[10:] = True
    >>> new = join_smoothly(np.zeros(20, np.float32), data, mask, np.eye(4), 4.0, 1.0)
    >>> [round(float(v), 1) for v in new[:6]]
    [7.5, 3.4, 1.1, 0.3, 0.0, 0.0]
    """
    from .space import mask_box

    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    pad = int(np.ceil(max(width_mm, 3 * sigma_mm) / zooms.min())) + 1
    box = mask_box(mask, pad=pad)
    if box is None:
        return values
    sub_mask = mask[box]
    kept = (~sub_mask).astype(np.float32)
    if not kept.any():
        return values
    near = 2.0 * ndimage.gaussian_filter(kept, width_mm / 2.5 / zooms, mode="nearest")
    blend = np.clip(near[sub_mask], 0.0, 1.0)
    weight = ndimage.gaussian_filter(kept, sigma_mm / zooms, mode="nearest")[sub_mask]
    carried = ndimage.gaussian_filter(kept * data[box], sigma_mm / zooms,
                                      mode="nearest")[sub_mask] / np.maximum(weight, 1e-6)
    blend = np.where(weight > 1e-4, blend, 0.0).astype(np.float32)
    return ((1.0 - blend) * values + blend * carried).astype(np.float32)


def prior_reface_file(defaced_file: str | Path, mask_file: str | Path, matrix: np.ndarray,
                      out_file: str | Path, *, prior: Prior | None = None,
                      seed: int | None = None, noise_seed: int | None = None,
                      join_mm: float = JOIN_MM, scale: float | None = None,
                      ) -> tuple[Path, dict]:
    """Reface a defaced image with the prior's head (the template itself unless ``seed``),
    carried through the registration and matched to the image's intensities; returns the
    written path and figures. Where the region reaches beyond the prior's box (below the
    template's head, in a long field of view) the packaged template's face fills it, matched
    the same way."""
    from dataclasses import replace

    from .infer import fill_face
    from .space import crop_affine, mask_box
    from .template_face import SHELL_MM, matched_template_face, shell_around

    prior = prior or load_prior()
    scale = prior.draw_scale if scale is None else scale
    head = replace(prior, template=drawn_head(prior, seed, scale))

    share = []

    def values(data, affine, mask, background):
        # everything below reads the mask and a shell around it: the mask's box is enough
        # (its voxels keep their order)
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
        crop = mask_box(mask, pad=int(np.ceil(max(SHELL_MM, join_mm) / zooms.min())) + 2)
        data, mask, affine = data[crop], mask[crop], crop_affine(affine, crop)
        shell = shell_around(mask, affine)
        filled = matched_template_face(data, affine, matrix, mask, template=head, shell=shell)
        inside = in_box(head.box, matrix, affine, mask)
        share.append(float(inside.mean()))
        if not inside.all():
            outside = mask.copy()
            outside[mask] = ~inside
            filled[~inside] = matched_template_face(data, affine, matrix, mask,
                                                    at=outside, shell=shell)
        return join_smoothly(filled, data, mask, affine, join_mm) if join_mm > 0 else filled

    path, info = fill_face(defaced_file, mask_file, values, out_file, "refaced (prior)",
                           noise_seed=noise_seed)
    return path, {"reface_method": "prior", "model": prior.name, "model_sha256": prior.sha256,
                  "seed": seed, "noise_seed": noise_seed, "join_mm": join_mm,
                  "draw_scale": scale,
                  "reface_prior_share": round(share[0], 4), **info}
