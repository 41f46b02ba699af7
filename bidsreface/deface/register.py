"""Affine registration of a head to the template, with a robust start and a quality check.

Matrices here are 4x4 in RAS millimetres and map *template* (or fixed) points to *native*
(moving) points, which is what pulling a template mask back to an image needs.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import nibabel as nb
import numpy as np
from scipy import ndimage

from ..errors import RegistrationError
from .mask import region, region_box
from .template import Template

#: Resolution (mm) at which heads are registered.
REGISTRATION_MM = 3.0
#: Resolution (mm) of the brain distance map that guards the brain.
DISTANCE_MAP_MM = 1.0
#: Template millimetres of context around the face (and ears) region in which the deformable
#: refinement of the brain guard is computed; the rest of the head is left out, for speed.
SYN_CONTEXT_MM = 30.0
#: Starting rotations (degrees about the left-right axis, then about the vertical axis).
STARTS_DEG = ((0.0, 0.0), (-20.0, 0.0), (20.0, 0.0), (0.0, 20.0), (0.0, -20.0))
#: Quality thresholds: a registration failing one of them is refused.
MIN_HEAD_DICE = 0.80
MIN_CORRELATION = 0.4
#: A start whose fit passes and reaches this correlation ends the search.
GOOD_CORRELATION = 0.6
SCALE_RANGE = (0.7, 1.45)
MAX_SHEAR = 0.2

_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (ITK)


@dataclass
class Registration:
    """Result of registering an image to the template."""

    matrix: np.ndarray  # template RAS mm -> native RAS mm
    metrics: dict = field(default_factory=dict)
    ok: bool = True
    reason: str = ""

    def to_dict(self) -> dict:
        return {"matrix": np.round(self.matrix, 6).tolist(), "ok": self.ok,
                "reason": self.reason, **self.metrics}


def to_ants(data: np.ndarray, affine: np.ndarray):
    """An ANTs image from an array and its RAS affine."""
    import ants

    spacing = np.sqrt((affine[:3, :3] ** 2).sum(0))
    direction = (_FLIP[:3, :3] @ affine[:3, :3]) / spacing
    origin = (_FLIP @ affine[:, 3])[:3]
    return ants.from_numpy(np.ascontiguousarray(data, dtype=np.float32), origin=origin.tolist(),
                           spacing=spacing.tolist(), direction=direction)


def downsample(data: np.ndarray, affine: np.ndarray, mm: float = REGISTRATION_MM):
    """Smooth and resample an image to ``mm`` isotropic on its own axes (fast, no ANTs).

    Returns the new array and affine.
    """
    shape, new_affine, factor = grid(data.shape, affine, mm)
    sigma = np.maximum((factor - 1) / 2.0, 0)
    smooth = ndimage.gaussian_filter(data.astype(np.float32), sigma) if sigma.any() else data
    small = ndimage.affine_transform(smooth, np.diag(factor), output_shape=shape, order=1,
                                     mode="nearest")
    return small.astype(np.float32), new_affine


def grid(shape: tuple, affine: np.ndarray, mm: float):
    """Shape and affine of a grid at ``mm`` covering the same field of view on the same axes."""
    factor = mm / np.sqrt((affine[:3, :3] ** 2).sum(0))
    new_shape = tuple(int(n) for n in np.maximum(np.ceil(np.array(shape) / factor), 1))
    return new_shape, affine @ np.diag([*factor, 1.0]), factor


def head_mask(data: np.ndarray) -> np.ndarray:
    """Head (not air) by Otsu's threshold, largest component, holes filled.

    The cut lies halfway between the image's minimum (its air, 0 in most scans, not in one
    stored with an intercept) and Otsu's threshold.
    """
    values = data[data > np.percentile(data, 2)]
    lowest = float(data.min())
    threshold = otsu(values) if values.size else lowest
    mask = data > lowest + 0.5 * (threshold - lowest)
    mask = ndimage.binary_opening(mask, iterations=1)
    labels, n = ndimage.label(mask)
    if n > 1:
        mask = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    return ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=2))


def otsu(values: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold of ``values`` (a histogram of ``bins`` bins).

    >>> otsu(np.r_[np.zeros(50), np.full(50, 10.0)]) < 10
    True
    """
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    return float(centres[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def _rotation(pitch_deg: float, yaw_deg: float) -> np.ndarray:
    a, b = np.deg2rad(pitch_deg), np.deg2rad(yaw_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


def _read_matrix(path: str) -> np.ndarray:
    import ants

    tx = ants.read_transform(path)
    params = np.asarray(tx.parameters, dtype=float)
    centre = np.asarray(tx.fixed_parameters, dtype=float)
    lin = params[:9].reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = lin
    lps[:3, 3] = params[9:12] + centre - lin @ centre
    return _FLIP @ lps @ _FLIP


def _write_matrix(matrix: np.ndarray, path: str) -> None:
    import ants

    lps = _FLIP @ matrix @ _FLIP
    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                    matrix=lps[:3, :3], translation=lps[:3, 3])
    ants.write_transform(tx, path)


def _centre_of_mass(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    com = ndimage.center_of_mass(np.clip(data, 0, None))
    return nb.affines.apply_affine(affine, com)


def _resample(moving: np.ndarray, moving_affine: np.ndarray, matrix: np.ndarray,
              shape: tuple, fixed_affine: np.ndarray, order: int = 1,
              cval: float = 0.0) -> np.ndarray:
    """Sample ``moving`` on the fixed grid; ``matrix`` maps fixed mm to moving mm."""
    vox = np.linalg.inv(moving_affine) @ matrix @ fixed_affine
    return ndimage.affine_transform(moving, vox[:3, :3], vox[:3, 3], output_shape=shape,
                                    order=order, mode="constant", cval=cval)


def quality(fixed: np.ndarray, fixed_head: np.ndarray, fixed_affine: np.ndarray,
            moving: np.ndarray, moving_affine: np.ndarray, matrix: np.ndarray) -> dict:
    """Agreement of a registered head with the fixed head, and the plausibility of the affine."""
    warped = _resample(moving, moving_affine, matrix, fixed.shape, fixed_affine)
    warped_head = _resample(head_mask(moving).astype(np.float32), moving_affine, matrix,
                            fixed.shape, fixed_affine) > 0.5
    # the top of a head may be cut by the field of view: compare where the image has data
    covered = _resample(np.ones_like(moving), moving_affine, matrix, fixed.shape,
                        fixed_affine) > 0.5
    a, b = fixed_head & covered, warped_head & covered
    dice = 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)
    region = ndimage.binary_dilation(fixed_head, iterations=2) & covered
    corr = float(np.corrcoef(fixed[region], warped[region])[0, 1]) if region.sum() > 10 else 0.0
    singular = np.linalg.svd(matrix[:3, :3], compute_uv=False)
    q, r = np.linalg.qr(matrix[:3, :3])
    shear = np.abs(r[np.triu_indices(3, 1)] / np.abs(np.diag(r))[[0, 0, 1]]).max()
    return {
        "head_dice": round(float(dice), 4),
        "correlation": round(float(corr), 4),
        "scales": np.round(singular, 4).tolist(),
        "shear": round(float(shear), 4),
        "determinant": round(float(np.linalg.det(matrix[:3, :3])), 4),
        "fov_coverage": round(float(covered[fixed_head].mean()), 4),
    }


def check_quality(metrics: dict) -> str:
    """Empty string when a registration is plausible, else the reason it is not."""
    problems = []
    if metrics["head_dice"] < MIN_HEAD_DICE:
        problems.append(f"head overlap {metrics['head_dice']:.2f} < {MIN_HEAD_DICE}")
    if metrics["correlation"] < MIN_CORRELATION:
        problems.append(f"correlation {metrics['correlation']:.2f} < {MIN_CORRELATION}")
    lo, hi = min(metrics["scales"]), max(metrics["scales"])
    if lo < SCALE_RANGE[0] or hi > SCALE_RANGE[1]:
        problems.append(f"implausible scaling {lo:.2f}-{hi:.2f}")
    if metrics["shear"] > MAX_SHEAR:
        problems.append(f"implausible shear {metrics['shear']:.2f}")
    if metrics["determinant"] <= 0:
        problems.append("the affine flips the head (left-right or orientation error)")
    return "; ".join(problems)


def register_to_template(
    data: np.ndarray,
    affine: np.ndarray,
    template: Template,
    *,
    seed: int = 0,
    starts=STARTS_DEG,
    small: tuple[np.ndarray, np.ndarray] | None = None,
) -> Registration:
    """Register a head image to the template (affine, several starting rotations).

    Each start aligns the centres of mass and applies a rotation; the registration with the
    best correlation to the template wins. The result carries its quality metrics and is
    ``ok`` only if they pass :func:`check_quality`; a failed one is returned, not hidden.
    ``small`` is the image already downsampled (:func:`downsample`, values and affine).
    """
    fixed, fixed_aff = _template_small(template)
    fixed_head = _resample(template.head.astype(np.float32), template.affine, np.eye(4),
                           fixed.shape, fixed_aff) > 0.5
    moving, moving_aff = small or downsample(np.asarray(data, dtype=np.float32), affine)
    moving = moving / max(float(np.percentile(moving, 99.5)), 1e-6)
    fixed_n = fixed / max(float(np.percentile(fixed, 99.5)), 1e-6)
    return _register(fixed_n, fixed_head, fixed_aff, moving, moving_aff, seed,
                     starts, "Affine", moving_valid=valid_mask(data, affine))


@lru_cache(maxsize=1)
def _template_small(template: Template) -> tuple[np.ndarray, np.ndarray]:
    """The template's T1w at the registration resolution (do not modify the arrays)."""
    return downsample(template.t1w, template.affine)


def valid_mask(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Where the image holds measured values, on the registration grid.

    Voxels exactly 0 are taken as removed (an already defaced face, a skull stripped by the
    provider, zero padding) and left out of the registration metric; background noise of an
    ordinary scan is not exactly 0, so there the mask covers everything.
    """
    measured = (np.asarray(data) != 0).astype(np.float32)
    small, _ = downsample(measured, affine)
    return ndimage.binary_dilation(small > 0.5, iterations=1)


def _seed_ants(seed: int):
    """Import antspyx for reproducible registrations and seed its metric sampling.

    Multithreaded ITK registration gives a different result on every run (the work split
    between threads varies), so ITK runs on one thread; the thread count is read when antspyx
    is first imported, hence here, before the import (``bidsreface`` sets it at start-up too).
    Parallelism comes from running several images at once (``--nprocs``). antspyx ignores
    ``registration(random_seed=...)``; it passes the package-wide seed of
    :func:`ants.set_ants_deterministic`, set here directly, plus one: ANTs takes a seed of
    0 as "seed from the clock".
    """
    if "ants" not in sys.modules:
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    import ants

    ants.config._random_seed = int(seed) + 1
    return ants


def _register(fixed, fixed_head, fixed_aff, moving, moving_aff, seed, starts, kind,
              moving_valid=None) -> Registration:
    ants = _seed_ants(seed)
    extra = {}
    if moving_valid is not None and not moving_valid.all():
        extra["moving_mask"] = to_ants(moving_valid.astype(np.float32), moving_aff)
    a_fixed, a_moving = to_ants(fixed, fixed_aff), to_ants(moving, moving_aff)
    c_fixed = _centre_of_mass(fixed * fixed_head, fixed_aff)
    c_moving = _centre_of_mass(moving, moving_aff)
    best = None
    with tempfile.TemporaryDirectory(prefix="bidsreface-reg-") as tmp:
        for i, (pitch, yaw) in enumerate(starts):
            start = np.eye(4)
            start[:3, :3] = _rotation(pitch, yaw)
            start[:3, 3] = c_moving - start[:3, :3] @ c_fixed
            init = str(Path(tmp) / f"start{i}.mat")
            _write_matrix(start, init)
            reg = ants.registration(
                a_fixed, a_moving, type_of_transform=kind, initial_transform=[init],
                aff_metric="mattes", aff_sampling=32, aff_iterations=(100, 50, 20),
                aff_shrink_factors=(4, 2, 1), aff_smoothing_sigmas=(2, 1, 0),
                outprefix=str(Path(tmp) / f"reg{i}_"), **extra,
            )
            matrix = _compose(reg["fwdtransforms"], init, start)
            metrics = quality(fixed, fixed_head, fixed_aff, moving, moving_aff, matrix)
            if best is None or metrics["correlation"] > best.metrics["correlation"]:
                best = Registration(matrix, {**metrics, "start_deg": [pitch, yaw]})
            if not check_quality(metrics) and metrics["correlation"] >= GOOD_CORRELATION:
                break  # a good fit from this start: no need to try the others
    best.reason = check_quality(best.metrics)
    best.ok = not best.reason
    return best


def _compose(transforms: list[str], init_path: str, start: np.ndarray) -> np.ndarray:
    """The fixed->moving matrix of an ANTs result (with or without the initial transform)."""
    matrices = [start if t == init_path else _read_matrix(t) for t in transforms]
    total = np.eye(4)
    for m in matrices:  # ANTs applies the list last-to-first to a fixed point
        total = total @ m
    return total


def register_rigid(moving_data: np.ndarray, moving_affine: np.ndarray, fixed_data: np.ndarray,
                   fixed_affine: np.ndarray, *, seed: int = 0) -> Registration:
    """Rigid registration of another contrast to its session's T1w (mutual information)."""
    fixed, fixed_aff = downsample(np.asarray(fixed_data, np.float32), fixed_affine)
    moving, moving_aff = downsample(np.asarray(moving_data, np.float32), moving_affine)
    fixed_head = head_mask(fixed)
    reg = _register(fixed / max(float(np.percentile(fixed, 99.5)), 1e-6), fixed_head,
                    fixed_aff, moving / max(float(np.percentile(moving, 99.5)), 1e-6),
                    moving_aff, seed, ((0.0, 0.0),), "Rigid")
    # correlation means little across contrasts: judge on head overlap and rigidity only
    reason = []
    if reg.metrics["head_dice"] < MIN_HEAD_DICE:
        reason.append(f"head overlap {reg.metrics['head_dice']:.2f} < {MIN_HEAD_DICE}")
    if reg.metrics["determinant"] <= 0:
        reason.append("the transform flips the head")
    reg.reason = "; ".join(reason)
    reg.ok = not reg.reason
    return reg


def map_grid(data_shape: tuple, data_affine: np.ndarray, matrix: np.ndarray,
             template: Template, *, ears: bool = False, head: bool = False):
    """Shape and affine of the brain distance map's grid for an image.

    The grid lies on the image's axes at ``DISTANCE_MAP_MM`` and covers only the box around
    the template's face (and ears) region pulled back through ``matrix`` (template mm ->
    image mm): the guard is looked up nowhere else.
    """
    shape, out_aff, _ = grid(data_shape, data_affine, DISTANCE_MAP_MM)
    lo, hi = region_box(shape, out_aff, matrix, template, ears=ears, head=head)
    hi = np.maximum(hi, lo + 1)  # a region wholly outside the image: one voxel, unused
    box_aff = out_aff.copy()
    box_aff[:3, 3] = out_aff[:3, :3] @ lo + out_aff[:3, 3]
    return tuple(int(n) for n in hi - lo), box_aff


def _around_region(image: np.ndarray, image_affine: np.ndarray, template: Template,
                   ears: bool, context_mm: float, head: bool = False):
    """Crop an image on the template's axes to the face (and ears) region plus context.

    Returns the cropped array and its affine.
    """
    idx = np.argwhere(region(template, ears=ears, head=head))
    mm = nb.affines.apply_affine(template.affine, np.array([idx.min(0), idx.max(0)]))
    # the grids share the template's axes: the two opposite corners bound the box
    vox = nb.affines.apply_affine(np.linalg.inv(image_affine),
                                  [mm.min(0) - context_mm, mm.max(0) + context_mm])
    lo = np.clip(np.floor(vox.min(0)).astype(int), 0, image.shape)
    hi = np.clip(np.ceil(vox.max(0)).astype(int) + 1, 0, image.shape)
    crop_aff = image_affine.copy()
    crop_aff[:3, 3] = image_affine[:3, :3] @ lo + image_affine[:3, 3]
    return image[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))], crop_aff


def brain_distance_map(data: np.ndarray, affine: np.ndarray, template: Template,
                       registration: Registration, *, ears: bool = False,
                       head: bool = False,
                       seed: int = 0, small: tuple[np.ndarray, np.ndarray] | None = None,
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Distance to the template brain (template mm) on the image's :func:`map_grid`.

    The template brain's distance map is carried through the affine *and* a SyN refinement
    (local correlation, radius one voxel, at ``REGISTRATION_MM``) computed on the template
    around the face (and ears) region, so the brain guard follows this head's brain shape
    there rather than the template's. ``small``: as for :func:`register_to_template`.
    Returns the map and its affine. How far the refined
    guard may lie from the affine one is bounded where the mask is made
    (:func:`~bidsreface.deface.mask.face_mask`).
    """
    ants = _seed_ants(seed)
    fixed, fixed_aff = _around_region(*_template_small(template), template, ears,
                                      SYN_CONTEXT_MM, head=head)
    moving, moving_aff = small or downsample(np.asarray(data, dtype=np.float32), affine)
    a_fixed = to_ants(fixed / max(float(np.percentile(fixed, 99.5)), 1e-6), fixed_aff)
    a_moving = to_ants(moving / max(float(np.percentile(moving, 99.5)), 1e-6), moving_aff)
    out_shape, out_aff = map_grid(np.shape(data), affine, registration.matrix, template,
                                  ears=ears, head=head)
    with tempfile.TemporaryDirectory(prefix="bidsreface-syn-") as tmp:
        init = str(Path(tmp) / "affine.mat")
        _write_matrix(registration.matrix, init)
        syn = ants.registration(
            a_fixed, a_moving, type_of_transform="SyNOnly", initial_transform=[init],
            syn_metric="CC", syn_sampling=1, reg_iterations=(40, 20, 0), flow_sigma=3,
            total_sigma=0, outprefix=str(Path(tmp) / "syn_"))
        distance = ants.apply_transforms(
            to_ants(np.zeros(out_shape, np.float32), out_aff),
            to_ants(template.brain_distance_mm(), template.affine),
            syn["invtransforms"], interpolator="linear", defaultvalue=1e3)
    # how far the guard may move from where the affine puts it is decided where the mask is
    # made (:data:`~bidsreface.deface.mask.MAX_SYN_SHRINK_MM`), knowing the other guards
    return distance.numpy().astype(np.float32), out_aff


def carry_distance_map(values: np.ndarray, values_affine: np.ndarray, matrix: np.ndarray,
                       out_grid: tuple[tuple, np.ndarray]):
    """Carry a distance map onto another grid (``matrix``: map mm -> grid mm).

    ``out_grid`` is the target's ``(shape, affine)``, as :func:`map_grid` gives it. Where the
    map has no value the result is 0: guarded.
    """
    shape, grid_aff = out_grid
    carried = _resample(values, values_affine, np.linalg.inv(matrix), shape, grid_aff)
    outside = _resample(np.ones_like(values), values_affine, np.linalg.inv(matrix), shape,
                        grid_aff) < 0.5
    carried[outside] = 0.0  # unknown: guarded
    return carried.astype(np.float32), grid_aff


def require_ok(registration: Registration, path: str | Path) -> Registration:
    """Raise :class:`RegistrationError` naming ``path`` when the registration failed."""
    if not registration.ok:
        raise RegistrationError(path, f"registration failed its quality check: "
                                      f"{registration.reason}")
    return registration
