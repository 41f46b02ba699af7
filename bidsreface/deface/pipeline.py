"""The defacing steps for one image, as pure functions on files (called by the interfaces)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np

from ..image import (
    load_image,
    read_header,
    save_like,
    save_mask,
    stored_background,
    stored_values,
)
from .apply import deface
from .brain import brain_model_info, carry_mask, own_brain_mask, volume_ml
from .mask import face_mask
from .register import (
    Registration,
    brain_distance_map,
    carry_distance_map,
    downsample,
    map_grid,
    register_rigid,
    register_to_template,
    require_ok,
)
from .template import load_template


def register_file(in_file: str, *, ears: bool = False, head: bool = False, seed: int = 0):
    """Register an image to the template; raise if the registration fails its check.

    Returns the registration and the brain distance map around the face (and ears, with
    ``ears``; the whole head with ``head``) region, on the image's axes (values, affine).
    """
    img = load_image(in_file)
    data = np.asanyarray(img.dataobj)
    template = load_template()
    small = downsample(np.asarray(data, dtype=np.float32), img.affine)  # once, for both
    reg = register_to_template(data, img.affine, template, seed=seed, small=small)
    reg.metrics["reference"] = "template"
    require_ok(reg, in_file)
    distance = brain_distance_map(data, img.affine, template, reg, ears=ears, head=head,
                                  seed=seed, small=small)
    return reg, distance


def register_file_to_reference(in_file: str, reference_file: str, reference_matrix: np.ndarray,
                               reference_distance: tuple[np.ndarray, np.ndarray], *,
                               ears: bool = False, head: bool = False, seed: int = 0):
    """Register another contrast rigidly to its session's T1w and chain the T1w's template fit.

    The result maps template mm to this image's mm, so the same face mask (and the same brain
    guard, computed on this image's own grid) applies.
    """
    img, ref = load_image(in_file), load_image(reference_file)
    rigid = register_rigid(np.asanyarray(img.dataobj), img.affine, np.asanyarray(ref.dataobj),
                           ref.affine, seed=seed)
    require_ok(rigid, in_file)
    reg = Registration(rigid.matrix @ reference_matrix,
                       {**{f"rigid_{k}": v for k, v in rigid.metrics.items()},
                        "reference": Path(reference_file).name})
    out_grid = map_grid(img.shape, img.affine, reg.matrix, load_template(), ears=ears,
                        head=head)
    distance = carry_distance_map(*reference_distance, rigid.matrix, out_grid)
    return reg, distance


def _write_brain(brain: np.ndarray, like: nb.Nifti1Image, out_dir: str | Path) -> Path:
    path = Path(out_dir) / "brain_mask.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    nb.save(nb.Nifti1Image(brain.astype(np.uint8), like.affine), path)
    return path


def brain_mask_file(in_file: str, out_dir: str | Path, *, nthreads: int = 1) -> tuple[Path, dict]:
    """The image's own brain mask (a T1w), written into ``out_dir``; its path and figures."""
    img = load_image(in_file)
    brain = own_brain_mask(np.asanyarray(img.dataobj), img.affine, nthreads=nthreads,
                           path=in_file)
    return _write_brain(brain, img, out_dir), {
        "brain_mask": "own", "brain_mask_ml": volume_ml(brain, img.affine),
        "brain_model": brain_model_info()}


def carry_brain_mask_file(in_file: str, matrix: np.ndarray, reference_mask_file: str,
                          reference_matrix: np.ndarray, out_dir: str | Path,
                          ) -> tuple[Path, dict]:
    """The session T1w's own brain mask carried onto another contrast of the session.

    ``matrix`` and ``reference_matrix`` map template mm to this image's and to the T1w's mm;
    the T1w -> image part (``matrix @ inv(reference_matrix)``) is their rigid registration.
    """
    img = nb.load(in_file)
    ref = nb.load(reference_mask_file)
    brain = carry_mask(np.asanyarray(ref.dataobj) > 0, ref.affine,
                       matrix @ np.linalg.inv(reference_matrix), img.shape[:3], img.affine)
    return _write_brain(brain, img, out_dir), {
        "brain_mask": "carried", "brain_mask_ml": volume_ml(brain, img.affine),
        "brain_model": brain_model_info()}


def deface_file(in_file: str, matrix: np.ndarray, out_dir: str | Path, *, ears: bool = False,
                head: bool = False, brain_margin_mm: float = 5.0,
                brain_distance: tuple[np.ndarray, np.ndarray] | None = None,
                own_brain: np.ndarray | None = None,
                keep_extensions: bool = False) -> tuple[Path, Path, dict]:
    """Deface one image; write the defaced image and its mask into ``out_dir``.

    ``own_brain`` is the image's own brain mask (:func:`brain_mask_file`), None to guard the
    template brain alone; ``head`` removes the whole non-brain head (the head region of
    :func:`~bidsreface.deface.mask.region`) instead of the face. The defaced image keeps the
    input's header (scaling included) without its free-text fields, and without its
    extensions unless *keep_extensions*.
    Returns the two paths and the mask's figures.
    """
    img = nb.load(in_file)  # the file was checked by the registration step
    mask, info = face_mask(img.shape[:3], img.affine, matrix, load_template(), ears=ears,
                           head=head, brain_margin_mm=brain_margin_mm,
                           brain_distance=brain_distance, own_brain=own_brain)
    out_dir = Path(out_dir)
    defaced, mask_file = write_defaced(in_file, mask, out_dir / "defaced.nii.gz",
                                       out_dir / "defacemask.nii.gz",
                                       keep_extensions=keep_extensions)
    return defaced, mask_file, info


def write_defaced(in_file: str | Path, mask: np.ndarray, out_file: Path, mask_file: Path, *,
                  keep_extensions: bool = False) -> tuple[Path, Path]:
    """Write ``in_file`` with ``mask``'s voxels set to its background, and the mask."""
    stored = stored_values(in_file)
    defaced = save_like(deface(stored, mask, stored_background(stored, read_header(in_file))),
                        in_file, out_file, "defaced", keep_extensions=keep_extensions)
    return defaced, save_mask(mask, in_file, mask_file)
