"""vox2vox networks: a 3D U-Net generator with a residual, dropout-carrying bottleneck and a
3D PatchGAN discriminator (Cirillo et al. 2020; as used for refacing by Molchanova et al. 2024).

Every architectural choice is a constructor argument, so a weights file can record the
arguments that rebuild its network (see :mod:`bidsreface.reface.weights`).
"""

from __future__ import annotations

import torch
from torch import nn


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalisation {kind!r} (instance, batch or none)")


class ResidualBlock(nn.Module):
    """Two 3x3x3 convolutions with a skip connection and dropout between them."""

    def __init__(self, channels: int, dropout: float, norm: str):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(channels, channels, 3, padding=1),
            _norm(norm, channels),
            nn.ReLU(inplace=True),
            nn.Dropout3d(dropout),
            nn.Conv3d(channels, channels, 3, padding=1),
            _norm(norm, channels),
        )

    def forward(self, x):
        return torch.relu(x + self.body(x))


class Generator(nn.Module):
    """3D U-Net with residual bottleneck blocks carrying dropout.

    Parameters
    ----------
    in_channels, out_channels
        Input channels (the defaced image and its mask) and output channels (the image).
    features
        Channels at the first level; doubled at each of the ``depth`` downsamplings and
        capped at ``max_features``.
    depth
        Number of stride-2 downsamplings; input sizes must be multiples of ``2**depth``.
    residual_blocks
        Residual blocks in the bottleneck.
    dropout
        Dropout probability in the bottleneck blocks and the first up-sampling stages; it stays
        on at inference as the source of anonymising noise.
    norm
        ``instance``, ``batch`` or ``none``.

    >>> g = Generator(features=4, depth=2, residual_blocks=1)
    >>> g(torch.zeros(1, 2, 8, 8, 8)).shape
    torch.Size([1, 1, 8, 8, 8])
    """

    def __init__(self, in_channels: int = 2, out_channels: int = 1, features: int = 16,
                 depth: int = 3, residual_blocks: int = 3, dropout: float = 0.2,
                 max_features: int = 256, norm: str = "instance"):
        super().__init__()
        if depth < 1 or residual_blocks < 0 or features < 1:
            raise ValueError("depth >= 1, residual_blocks >= 0 and features >= 1 are required")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.depth = depth
        widths = [min(features * 2**level, max_features) for level in range(depth + 1)]
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, widths[0], 3, padding=1), _norm(norm, widths[0]),
            nn.LeakyReLU(0.2, inplace=True))
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv3d(widths[i], widths[i + 1], 4, stride=2, padding=1),
                          _norm(norm, widths[i + 1]), nn.LeakyReLU(0.2, inplace=True))
            for i in range(depth))
        self.bottleneck = nn.Sequential(
            *(ResidualBlock(widths[-1], dropout, norm) for _ in range(residual_blocks)))
        self.up = nn.ModuleList()
        for i in reversed(range(depth)):
            stage = [nn.ConvTranspose3d(widths[i + 1] * (1 if i == depth - 1 else 2), widths[i],
                                        4, stride=2, padding=1),
                     _norm(norm, widths[i]), nn.ReLU(inplace=True)]
            if i >= depth - 2:
                stage.append(nn.Dropout3d(dropout))
            self.up.append(nn.Sequential(*stage))
        self.head = nn.Sequential(nn.Conv3d(widths[0] * 2, out_channels, 3, padding=1), nn.Tanh())

    def forward(self, x):
        multiple = 2**self.depth
        if any(s % multiple for s in x.shape[2:]):
            raise ValueError(f"input size {tuple(x.shape[2:])} is not a multiple of {multiple}")
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        y = self.bottleneck(skips.pop())
        for up in self.up:
            y = torch.cat([up(y), skips.pop()], dim=1)
        return self.head(y)


class PatchDiscriminator(nn.Module):
    """3D PatchGAN: judges overlapping patches of (condition, image) pairs as real or generated.

    >>> d = PatchDiscriminator(in_channels=3, features=4, layers=2)
    >>> d(torch.zeros(1, 3, 16, 16, 16)).shape
    torch.Size([1, 1, 3, 3, 3])
    """

    def __init__(self, in_channels: int = 3, features: int = 16, layers: int = 3,
                 max_features: int = 256, norm: str = "instance"):
        super().__init__()
        if layers < 1 or features < 1:
            raise ValueError("layers >= 1 and features >= 1 are required")
        blocks: list[nn.Module] = [nn.Conv3d(in_channels, features, 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2, inplace=True)]
        width = features
        for _ in range(1, layers):
            nxt = min(width * 2, max_features)
            blocks += [nn.Conv3d(width, nxt, 4, stride=2, padding=1), _norm(norm, nxt),
                       nn.LeakyReLU(0.2, inplace=True)]
            width = nxt
        blocks.append(nn.Conv3d(width, 1, 4, padding=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x):
        return self.net(x)
