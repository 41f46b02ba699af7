"""The privacy transform: all the generator may see of a head.

A generator that sees what defacing leaves (the forehead, the brows, the cheeks, the ears and
the outline of the head) learns to rebuild the person's own face from it: trained on many
faces it becomes a re-identification attack. Its input is therefore reduced to what carries no
facial identity:

- ``brain``: the image's intensities inside its brain, scaled by the brain's own level, and -1
  everywhere else;
- ``brain_mask``: the brain itself;
- ``region``: the voxels the output will fill (the deface mask, carried into the box).

All three are taken on the model's box in template space, through the registration. The
brain is the image's own (the CNN mask of :mod:`bidsreface.deface.brain`) or, without one, the
template's brain carried by the registration; the defacer keeps every deface-mask voxel at
least ``brain_margin_mm`` from both, so no voxel of the region is ever read. What the face
looks like comes from a latent code drawn from the seed (see :mod:`bidsreface.reface.infer`),
not from the person.
"""

from __future__ import annotations

import numpy as np

from .space import FaceBox, Scaling, box_footprint, crop_affine, mask_box, sample_into_box

CHANNELS = ("brain", "brain_mask", "region")
#: The top of the scaled range, in units of the brain's 99th intensity percentile: fat and
#: marrow reach 1.03-1.23x it on T1w heads (IXI), so 1.5 leaves room without wasting range.
TOP_OVER_BRAIN = 1.5


def brain_scaling(data: np.ndarray, brain: np.ndarray, background: float) -> Scaling:
    """Scale the image by its brain: ``background`` to -1, 1.5x the brain's 99th percentile
    to 1.

    >>> data = np.zeros((4, 4, 4), np.float32); data[1:3, 1:3, 1:3] = 100.0
    >>> s = brain_scaling(data, data > 0, 0.0)
    >>> round(s.top, 1)
    150.0
    """
    values = np.asarray(data, dtype=np.float32)[brain]
    if values.size == 0:
        raise ValueError("the brain mask holds no voxel")
    level = float(np.percentile(values, 99)) - float(background)
    if level <= 0:
        raise ValueError("the brain is not brighter than the background")
    return Scaling(background=float(background),
                   top=float(background) + TOP_OVER_BRAIN * level)


def template_brain_native(shape: tuple, affine: np.ndarray, matrix: np.ndarray,
                          template) -> np.ndarray:
    """The template's brain carried onto a native grid (``matrix``: template mm -> native
    mm)."""
    from ..deface.mask import bounding_box, pull_back

    brain = np.zeros(tuple(shape), bool)
    # only the native voxels within the carried template brain's bounding box are sampled
    extent = mask_box(template.brain, pad=1)  # nearest-neighbour rounding reaches half a voxel
    if extent is None:
        return brain
    corners = np.array([[a, b, c, 1.0] for a in (extent[0].start, extent[0].stop - 1)
                        for b in (extent[1].start, extent[1].stop - 1)
                        for c in (extent[2].start, extent[2].stop - 1)])
    native = (np.linalg.inv(affine) @ matrix @ template.affine @ corners.T)[:3].T
    lo, hi = bounding_box(native, shape, pad=1)
    if np.any(hi <= lo):
        return brain
    brain[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = pull_back(
        template.brain.astype(np.uint8), template.affine, matrix, shape, affine, lo, hi,
        order=0, cval=0) > 0
    return brain


def privacy_inputs(data: np.ndarray, affine: np.ndarray, matrix: np.ndarray,
                   region: np.ndarray, brain: np.ndarray, box: FaceBox,
                   ) -> tuple[np.ndarray, Scaling]:
    """The generator's input on the box, ``(len(CHANNELS), *box.shape)`` float32, and the
    scaling that maps the image's intensities to the network's.

    ``data`` is the image (defaced or not: only brain voxels are read), ``region`` the deface
    mask and ``brain`` the brain mask, both boolean on ``data``'s grid.
    """
    from ..image import background_value

    brain = np.asarray(brain, dtype=bool)
    if brain.shape != data.shape or region.shape != data.shape:
        raise ValueError(f"brain {brain.shape} and region {region.shape} masks must match "
                         f"the image {data.shape}")
    if (brain & region).any():
        raise ValueError("the deface mask overlaps the brain: refusing to read face voxels")
    # the whole image's: the defaced image holds it in the region, the original somewhere
    # (outside the whole-head region there may be nothing but brain)
    background = float(background_value(np.asarray(data)))
    scaling = brain_scaling(data, brain, background)
    # the box's samples come from its footprint on the native grid alone
    crop = box_footprint(box, matrix, affine, data.shape)
    if crop is not None:
        data, brain, region = np.asarray(data)[crop], brain[crop], region[crop]
        affine = crop_affine(affine, crop)
    brain_only = np.where(brain, data, background).astype(np.float32)
    brain_box = sample_into_box(brain.astype(np.float32), affine, matrix, box) > 0.5
    values = scaling.forward(sample_into_box(brain_only, affine, matrix, box, cval=background))
    region_box = np.clip(sample_into_box(region.astype(np.float32), affine, matrix, box), 0, 1)
    inputs = np.stack([np.where(brain_box, values, -1.0), brain_box.astype(np.float32),
                       region_box]).astype(np.float32)
    return inputs, scaling
