"""Refacing inference: the generator over the face box, back to native space inside the mask.

Only voxels of the face mask ever change: everything else is the defaced input, bit for bit.
Dropout stays on (seeded), so the same seed gives the same face and another seed another one.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import nibabel as nb
import numpy as np
import torch
from scipy import ndimage

from ..deface.register import otsu
from ..image import background_value, read_header, save_like, stored_values, to_stored
from .data import box_inputs
from .space import Scaling, sample_from_box
from .weights import Model


def resolve_device(device: str) -> str:
    """``auto`` is CUDA when a GPU is present, else the CPU.

    >>> resolve_device("cpu")
    'cpu'
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device}: no CUDA device is available")
    return device


def tile_starts(size: int, window: int, overlap: float = 0.25) -> list[int]:
    """Edge-aligned window starts covering ``size``.

    >>> tile_starts(96, 64)
    [0, 32]
    >>> tile_starts(64, 64)
    [0]
    >>> tile_starts(200, 64, overlap=0.5)
    [0, 27, 54, 82, 109, 136]
    """
    if window >= size:
        return [0]
    step = max(1, int(window * (1 - overlap)))
    count = int(np.ceil((size - window) / step)) + 1
    return [int(round(i * (size - window) / (count - 1))) for i in range(count)]


def blend_weight(window: tuple[int, ...], device=None) -> torch.Tensor:
    """Separable weights, highest in the window's centre and never 0 (tiles blend smoothly)."""
    weight = torch.ones((), device=device)
    for n in window:
        ramp = torch.minimum(torch.arange(n, device=device) + 1.0,
                             n - torch.arange(n, device=device).float())
        weight = weight[..., None] * (ramp / ramp.max())
    return weight


def tiled_apply(net, x: torch.Tensor, window: tuple[int, ...], overlap: float = 0.25,
                ) -> torch.Tensor:
    """Run ``net`` over edge-aligned windows of ``x`` (1, C, *shape); weighted blending.

    The output accumulates on ``x``'s device.
    """
    shape = tuple(x.shape[2:])
    window = tuple(min(w, n) for w, n in zip(window, shape, strict=True))
    weight = blend_weight(window, device=x.device)
    out = None
    norm = torch.zeros(shape, device=x.device)
    for start in itertools.product(*(tile_starts(n, w, overlap)
                                     for n, w in zip(shape, window, strict=True))):
        region = tuple(slice(s, s + w) for s, w in zip(start, window, strict=True))
        y = net(x[(slice(None), slice(None), *region)])
        if out is None:
            out = torch.zeros((1, y.shape[1], *shape), device=x.device, dtype=y.dtype)
        out[(slice(None), slice(None), *region)] += y * weight
        norm[region] += weight
    return out / norm


def generate(model: Model, defaced: np.ndarray, mask: np.ndarray, *, seed: int,
             device: str = "cpu") -> np.ndarray:
    """The generator's head on the box (scaled to [-1, 1]), dropout on and seeded."""
    net = model.generator(device)
    net.eval()
    for module in net.modules():
        if isinstance(module, torch.nn.Dropout3d | torch.nn.Dropout):
            module.train()  # the anonymising noise
    torch.manual_seed(seed)
    x = torch.from_numpy(np.stack([defaced, mask])[None]).float().to(device)
    with torch.no_grad():
        y = tiled_apply(net, x, model.window)
    return y[0, 0].cpu().numpy()


#: Generated voxels below this share of the head/air level are air. Measured on the held-out
#: head: at 1 (the defacer's own level) the dim soft tissue of the lower face is cut into
#: holes; at 0.5 the face is whole.
AIR_FRACTION = 0.5


def air_level(data: np.ndarray, background: float) -> float:
    """Half the head/air threshold (Otsu), as the defacer's head mask uses."""
    sample = data.reshape(-1)[:: max(1, data.size // 2_000_000)].astype(np.float32)
    sample = sample[sample > np.percentile(sample, 2)]
    return float(background) + 0.5 * (otsu(sample) - float(background)) if sample.size else 0.0


def clean_air(values: np.ndarray, data: np.ndarray, mask: np.ndarray, background: float,
              ) -> np.ndarray:
    """Within the mask: voxels below the air level, or not joined to the head, become
    background. ``values`` are the new intensities of the mask's voxels (mask order).

    Only the mask's bounding box (plus a margin) is looked at: the head outside it is one
    piece with what touches the box.
    """
    level = float(background) + AIR_FRACTION * (air_level(data, background) - float(background))
    idx = np.argwhere(mask)
    lo, hi = np.maximum(idx.min(0) - 4, 0), np.minimum(idx.max(0) + 5, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    sub_mask = mask[box]
    filled = np.zeros(sub_mask.shape, bool)
    filled[sub_mask] = values > level
    head = (~sub_mask & (data[box] > level)) | filled
    labels, count = ndimage.label(head)
    if count > 1:
        head = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    keep = head[sub_mask] & filled[sub_mask]
    return np.where(keep, values, background)


def fill_face(defaced_file: str | Path, mask_file: str | Path, values_fn, out_file: str | Path,
              note: str) -> tuple[Path, dict]:
    """Write ``defaced_file`` with its mask's voxels replaced by ``values_fn(data, affine,
    mask, background)`` (scaled intensities, mask order), air cleaned."""
    img = nb.load(defaced_file)
    data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(img.shape[:3])
    mask = np.asarray(nb.load(mask_file).dataobj).reshape(img.shape[:3]) > 0
    background = float(background_value(data))
    values = clean_air(values_fn(data, img.affine, mask, background), data, mask, background)
    stored = stored_values(defaced_file).copy()
    stored[mask] = to_stored(values, read_header(defaced_file))
    filled = int((values != background).sum())
    # the defaced image's header was scrubbed as the run asked: its extensions are kept as
    # they are there
    path = save_like(stored, defaced_file, out_file, note, keep_extensions=True)
    return path, {"reface_voxels": filled,
                  "reface_fraction": round(filled / max(int(mask.sum()), 1), 4)}


def reface_file(defaced_file: str | Path, mask_file: str | Path, matrix: np.ndarray,
                model: Model, out_file: str | Path, *, seed: int = 0, device: str = "cpu",
                ) -> tuple[Path, dict]:
    """Reface a defaced image with the cGAN; returns the written path and figures."""

    def values(data, affine, mask, background):
        defaced, mask_box, _, scaling = box_inputs(data, affine, matrix, mask, model.box)
        head = generate(model, defaced, mask_box, seed=seed, device=device)
        return Scaling.inverse(scaling, sample_from_box(head, model.box, matrix, affine, mask))

    path, info = fill_face(defaced_file, mask_file, values, out_file, "refaced (cGAN)")
    return path, {"reface_method": "cgan", "model": model.name, "model_sha256": model.sha256,
                  "seed": seed, **info}
