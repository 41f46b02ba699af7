"""Heads on the model's box: training heads, and the input of the first models.

A :class:`PrivacyPair` holds, on the box grid, the original head scaled by its brain to
[-1, 1] (the target), the brain mask, the region the defacer removed and the part of the box
inside the image's field of view (where the loss is counted); the generator's input, the
privacy transform (:mod:`bidsreface.reface.privacy`), is made from them during training after
augmentation. :func:`box_inputs` is what the first models (conditioned on the defaced head and
its mask) see.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..image import background_value
from .space import FaceBox, intensity_scaling, sample_into_box


@dataclass
class PrivacyPair:
    """One training head on the box grid, for the privacy-transform models."""

    name: str
    original: np.ndarray
    brain: np.ndarray
    region: np.ndarray
    fov: np.ndarray

    def save(self, path: Path) -> None:
        np.savez_compressed(path, name=self.name, original=self.original.astype(np.float16),
                            brain=self.brain.astype(bool), region=self.region.astype(np.float16),
                            fov=self.fov.astype(np.float16))

    @classmethod
    def load(cls, path: Path) -> PrivacyPair:
        with np.load(path) as f:
            return cls(name=str(f["name"]), **{k: f[k].astype(np.float32) for k in
                                              ("original", "brain", "region", "fov")})


def privacy_pair(name: str, data: np.ndarray, affine: np.ndarray, matrix: np.ndarray,
                 region: np.ndarray, brain: np.ndarray, box: FaceBox) -> PrivacyPair:
    """A head, its deface mask and brain mask (native grid) carried into the box."""
    from .privacy import privacy_inputs

    inputs, scaling = privacy_inputs(data, affine, matrix, region, brain, box)
    original = scaling.forward(sample_into_box(data, affine, matrix, box,
                                               cval=scaling.background))
    fov = sample_into_box(np.ones(data.shape, np.float32), affine, matrix, box)
    return PrivacyPair(name=name, original=original, brain=inputs[1], region=inputs[2],
                       fov=np.clip(fov, 0, 1))


def box_inputs(data: np.ndarray, affine: np.ndarray, matrix: np.ndarray, mask: np.ndarray,
               box: FaceBox):
    """The generator's view of a defaced image: (defaced, mask, fov, scaling) on the box.

    ``data`` must already be defaced; the same function serves training and inference, so
    the network sees at inference exactly what it was trained on.
    """
    background = float(background_value(data))
    scaling = intensity_scaling(data, background)
    defaced = scaling.forward(sample_into_box(data, affine, matrix, box, cval=background))
    mask_box = sample_into_box(mask.astype(np.float32), affine, matrix, box)
    fov = sample_into_box(np.ones(data.shape, np.float32), affine, matrix, box)
    return defaced, np.clip(mask_box, 0, 1), np.clip(fov, 0, 1), scaling
