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
    ``appearance_modes`` (modes x box) and ``shape_modes`` (modes x box x 3, displacements in
    RAS mm from the template to a head)."""

    template: np.ndarray
    appearance_modes: np.ndarray
    shape_modes: np.ndarray
    box: FaceBox

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
        shape = full_grid(stored["shape_modes"].astype(np.float32), box.shape, stride)
        # ITK writes displacements in LPS: the first two components change sign for RAS
        shape *= np.array([-1.0, -1.0, 1.0], np.float32)
        return Prior(template=template, appearance_modes=stored["appearance_modes"].astype(
            np.float32), shape_modes=shape, box=box)


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


def drawn_head(prior: Prior, seed: int | None, scale: float = 1.0) -> np.ndarray:
    """A head on the prior's box: the template when ``seed`` is None, else the template with
    seeded appearance and shape coefficients (standard normal times ``scale``) added, warped by
    the drawn displacement and sampled once (trilinear)."""
    if seed is None:
        return prior.template
    rng = np.random.default_rng(seed)
    appearance = rng.standard_normal(len(prior.appearance_modes)) * scale
    shape = rng.standard_normal(len(prior.shape_modes)) * scale
    values = prior.template + np.tensordot(appearance, prior.appearance_modes, axes=1)
    shift_mm = np.tensordot(shape, prior.shape_modes, axes=1)
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


def prior_reface_file(defaced_file: str | Path, mask_file: str | Path, matrix: np.ndarray,
                      out_file: str | Path, *, prior: Prior | None = None,
                      seed: int | None = None) -> tuple[Path, dict]:
    """Reface a defaced image with the prior's head (the template itself unless ``seed``),
    carried through the registration and matched to the image's intensities; returns the
    written path and figures. Where the region reaches beyond the prior's box (below the
    template's head, in a long field of view) the packaged template's face fills it, matched
    the same way."""
    from dataclasses import replace

    from .infer import fill_face
    from .template_face import matched_template_face

    prior = prior or load_prior()
    head = replace(prior, template=drawn_head(prior, seed))

    share = []

    def values(data, affine, mask, background):
        filled = matched_template_face(data, affine, matrix, mask, template=head)
        inside = in_box(head.box, matrix, affine, mask)
        share.append(float(inside.mean()))
        if not inside.all():
            filled[~inside] = matched_template_face(data, affine, matrix, mask)[~inside]
        return filled

    path, info = fill_face(defaced_file, mask_file, values, out_file, "refaced (prior)")
    return path, {"reface_method": "prior", "reface_prior_seed": seed,
                  "reface_prior_share": round(share[0], 4), **info}
