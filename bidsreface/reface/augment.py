"""Augmentation that makes many plausible heads from few, on the box grid (torch, CPU or GPU).

Geometry: random smooth deformations and small registration jitter. Intensity: gamma
(contrast), scale, a smooth bias field and noise. The generator's input is made from the
augmented head and its warped masks, as the privacy transform would have made it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentSettings:
    deform_vox: float = 2.5  # largest smooth displacement (box voxels)
    deform_control: int = 5  # control points per axis of the smooth field
    jitter_deg: float = 4.0  # registration jitter: rotation ...
    jitter_vox: float = 2.0  # ... and shift
    gamma: tuple[float, float] = (0.7, 1.4)
    scale: tuple[float, float] = (0.85, 1.15)
    bias: float = 0.25  # largest log-amplitude of the bias field
    noise: tuple[float, float] = (0.0, 0.04)


def _uniform(gen: torch.Generator, lo: float, hi: float, size=()) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(size, generator=gen)


def smooth_field(shape: tuple, amplitude: float, control: int, gen: torch.Generator,
                 channels: int = 3) -> torch.Tensor:
    """A smooth random field (channels, *shape): cubic upsampling of random control values."""
    coarse = _uniform(gen, -amplitude, amplitude, (1, channels, control, control, control))
    return F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[0]


def jitter_field(shape: tuple, degrees: float, shift: float, gen: torch.Generator):
    """Displacement (voxels) of a small random rotation about the box centre plus a shift."""
    angles = [math.radians(float(_uniform(gen, -degrees, degrees))) for _ in range(3)]
    rot = torch.eye(3)
    for axis, angle in enumerate(angles):
        c, s = math.cos(angle), math.sin(angle)
        r = torch.eye(3)
        i, j = [a for a in range(3) if a != axis]
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rot = rot @ r
    grid = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in shape),
                                      indexing="ij"))
    centre = torch.tensor([(n - 1) / 2 for n in shape]).view(3, 1, 1, 1)
    moved = torch.einsum("ij,jxyz->ixyz", rot, grid - centre) + centre
    return moved - grid + _uniform(gen, -shift, shift, (3,)).view(3, 1, 1, 1)


def warp(volumes: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """Sample ``volumes`` (C, *shape) at ``x + displacement(x)`` (voxels, (3, *shape)).

    Where the field pulls from outside the box, each channel takes its value at the box's
    nearest edge: the box is a window onto a head that goes on beyond it, so tissue cut by
    the box's edge stays tissue (not air) and a mask stays as it is there.
    """
    shape = volumes.shape[1:]
    grid = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float32,
                                                     device=volumes.device) for n in shape),
                                      indexing="ij")) + displacement
    sizes = torch.tensor([n - 1 for n in shape], dtype=torch.float32,
                         device=volumes.device).view(3, 1, 1, 1)
    norm = (2 * grid / sizes - 1).flip(0).permute(1, 2, 3, 0)[None]  # (1, *shape, xyz)
    return F.grid_sample(volumes[None], norm, mode="bilinear", padding_mode="border",
                         align_corners=True)[0]


def augment_intensity(head: torch.Tensor, settings: AugmentSettings, gen: torch.Generator,
                      ) -> torch.Tensor:
    """Contrast, scale, bias field and noise on a head scaled to [-1, 1] (air at -1)."""
    x = (head + 1) / 2
    x = x.clamp(min=0) ** float(_uniform(gen, *settings.gamma))
    x = x * float(_uniform(gen, *settings.scale))
    bias = smooth_field(tuple(head.shape), settings.bias, 3, gen, channels=1)[0]
    x = x * torch.exp(bias)
    sigma = float(_uniform(gen, *settings.noise))
    x = (x + sigma * torch.randn(x.shape, generator=gen)).abs()
    return (x.clamp(0, 1) * 2 - 1).to(head.dtype)


def augment_head(pair: dict, settings: AugmentSettings, gen: torch.Generator) -> dict:
    """One augmented training head: deformed (smooth field and registration jitter) and
    re-contrasted.

    ``pair`` holds tensors on the box: ``original`` (scaled to [-1, 1]) and any number of
    masks (``brain``, ``region``, ``fov``), which are warped with it and kept in [0, 1].
    """
    keys = list(pair)
    stack = torch.stack([pair[k] for k in keys])
    shape = tuple(stack.shape[1:])
    displacement = (smooth_field(shape, settings.deform_vox, settings.deform_control, gen)
                    + jitter_field(shape, settings.jitter_deg, settings.jitter_vox, gen))
    stack = warp(stack, displacement)
    return {k: (augment_intensity(v, settings, gen) if k == "original" else v.clamp(0, 1))
            for k, v in zip(keys, stack, strict=True)}
