"""vox2vox networks: a 3D U-Net generator with a residual, dropout-carrying bottleneck and a
3D PatchGAN discriminator (Cirillo et al. 2020; as used for refacing by Molchanova et al. 2024),
and the face encoder of the latent (cVAE-GAN) training: the generator can take a latent code at
its bottleneck, which the encoder draws from a real face during training and a seeded normal
draw replaces at inference.

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
    latent_dim
        Length of the latent code (0: none). It scales and shifts every channel of the
        bottleneck's input and of each up-sampling stage after its normalisation (FiLM).

    >>> g = Generator(features=4, depth=2, residual_blocks=1)
    >>> g(torch.zeros(1, 2, 8, 8, 8)).shape
    torch.Size([1, 1, 8, 8, 8])
    >>> g = Generator(in_channels=3, features=4, depth=2, residual_blocks=1, latent_dim=5)
    >>> g(torch.zeros(1, 3, 8, 8, 8), torch.zeros(1, 5)).shape
    torch.Size([1, 1, 8, 8, 8])
    """

    def __init__(self, in_channels: int = 2, out_channels: int = 1, features: int = 16,
                 depth: int = 3, residual_blocks: int = 3, dropout: float = 0.2,
                 max_features: int = 256, norm: str = "instance", latent_dim: int = 0):
        super().__init__()
        if depth < 1 or residual_blocks < 0 or features < 1 or latent_dim < 0:
            raise ValueError("depth >= 1, residual_blocks >= 0, features >= 1 and "
                             "latent_dim >= 0 are required")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.depth = depth
        self.latent_dim = latent_dim
        widths = [min(features * 2**level, max_features) for level in range(depth + 1)]
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, widths[0], 3, padding=1), _norm(norm, widths[0]),
            nn.LeakyReLU(0.2, inplace=True))
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv3d(widths[i], widths[i + 1], 4, stride=2, padding=1),
                          _norm(norm, widths[i + 1]), nn.LeakyReLU(0.2, inplace=True))
            for i in range(depth))
        # the code modulates the bottleneck and every up-sampling stage after its
        # normalisation (a scale and a shift per channel, FiLM): joined as constant channels
        # instead, instance normalisation would remove it
        self.latent = (nn.ModuleList(nn.Linear(latent_dim, 2 * w)
                                     for w in [widths[-1], *reversed(widths[:-1])])
                       if latent_dim else None)
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

    def forward(self, x, z=None):
        multiple = 2**self.depth
        if any(s % multiple for s in x.shape[2:]):
            raise ValueError(f"input size {tuple(x.shape[2:])} is not a multiple of {multiple}")
        if (z is None) != (self.latent is None):
            raise ValueError("a latent code is needed exactly when latent_dim > 0")
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        y = self._modulate(skips.pop(), z, 0)
        y = self.bottleneck(y)
        for i, up in enumerate(self.up):
            y = self._modulate(up[1](up[0](y)), z, i + 1)
            for layer in up[2:]:
                y = layer(y)
            y = torch.cat([y, skips.pop()], dim=1)
        return self.head(y)

    def _modulate(self, y, z, index: int):
        if self.latent is None:
            return y
        scale, shift = self.latent[index](z).view(z.shape[0], -1, 1, 1, 1).chunk(2, dim=1)
        return y * (1 + scale) + shift


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


class FaceEncoder(nn.Module):
    """Encodes a real head's region into the mean and log-variance of a latent code.

    Strided convolutions, then the mean over the whole box: any box size divisible by
    ``2**depth`` goes in.

    >>> e = FaceEncoder(in_channels=2, features=4, depth=2, latent_dim=5)
    >>> [t.shape for t in e(torch.zeros(2, 2, 8, 8, 8))]
    [torch.Size([2, 5]), torch.Size([2, 5])]
    """

    def __init__(self, in_channels: int = 2, features: int = 16, depth: int = 4,
                 latent_dim: int = 16, max_features: int = 128):
        super().__init__()
        if depth < 1 or features < 1 or latent_dim < 1:
            raise ValueError("depth >= 1, features >= 1 and latent_dim >= 1 are required")
        layers: list[nn.Module] = []
        width, channels = in_channels, features
        for _ in range(depth):
            layers += [nn.Conv3d(width, channels, 4, stride=2, padding=1),
                       nn.LeakyReLU(0.2, inplace=True)]
            width, channels = channels, min(channels * 2, max_features)
        self.net = nn.Sequential(*layers)
        self.out = nn.Linear(width, 2 * latent_dim)

    def forward(self, x):
        mean, logvar = self.out(self.net(x).mean(dim=(2, 3, 4))).chunk(2, dim=1)
        return mean, logvar.clamp(-10.0, 10.0)
