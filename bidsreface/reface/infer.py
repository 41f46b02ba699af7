"""Refacing inference: the generator over the face box, back to native space inside the mask.

Only voxels of the face mask ever change: everything else is the defaced input, bit for bit.
A privacy-transform model (:mod:`bidsreface.reface.privacy`) sees the brain, its mask and the
region, and a latent code drawn from the seed; the first models (conditioned on the defaced
head) keep their dropout on, seeded. Either way the same seed gives the same face and another
seed another one. The image's own noise is then matched inside the region
(:func:`match_noise`), so a face generated at 2 mm does not read as a blur in a 1 mm image.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import nibabel as nb
import numpy as np
import torch
from scipy import ndimage

from ..deface.register import otsu
from ..deface.template import load_template
from ..image import background_value, in_memory, read_header, save_like, to_stored
from .data import box_inputs
from .privacy import privacy_inputs, template_brain_native
from .space import Scaling, crop_affine, mask_box, sample_from_box
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


#: Windows run through the network together. Each window is normalised on its own (instance
#: norm), so a batch gives the windows' outputs of one at a time (to float rounding); on 2 CPU
#: cores 6 windows of 48^3 together ran 1.45x faster than one by one.
TILE_BATCH = 6


def tiled_apply(net, x: torch.Tensor, window: tuple[int, ...], overlap: float = 0.25,
                batch: int = TILE_BATCH) -> torch.Tensor:
    """Run ``net`` over edge-aligned windows of ``x`` (1, C, *shape), ``batch`` windows at a
    time; weighted blending. The output accumulates on ``x``'s device.
    """
    shape = tuple(x.shape[2:])
    window = tuple(min(w, n) for w, n in zip(window, shape, strict=True))
    weight = blend_weight(window, device=x.device)
    out = None
    norm = torch.zeros(shape, device=x.device)
    regions = [tuple(slice(s, s + w) for s, w in zip(start, window, strict=True))
               for start in itertools.product(*(tile_starts(n, w, overlap)
                                                for n, w in zip(shape, window, strict=True)))]
    batch = max(1, batch)
    for first in range(0, len(regions), batch):
        group = regions[first:first + batch]
        ys = net(torch.cat([x[(slice(None), slice(None), *region)] for region in group]))
        if out is None:
            out = torch.zeros((1, ys.shape[1], *shape), device=x.device, dtype=ys.dtype)
        for region, y in zip(group, ys, strict=True):
            out[(0, slice(None), *region)] += y * weight
            norm[region] += weight
    return out / norm


def latent_code(model: Model, seed: int) -> torch.Tensor:
    """The latent code of ``seed``: a standard normal draw of the model's latent length.

    >>> from bidsreface.reface.weights import Model
    >>> m = Model("m", "T1w", {"latent_dim": 3}, {}, None, (8, 8, 8), "", "", {}, "privacy")
    >>> bool(torch.equal(latent_code(m, 5), latent_code(m, 5)))
    True
    """
    dim = int(model.generator_args.get("latent_dim", 0))
    return torch.randn((1, dim), generator=torch.Generator().manual_seed(int(seed)))


def generate(model: Model, inputs: np.ndarray, *, seed: int, device: str = "cpu",
             ) -> np.ndarray:
    """The generator's head on the box (scaled to [-1, 1]) from its input channels.

    A privacy model takes the latent code of ``seed``, and its head is drawn towards the mean
    training head by the model's truncation; a first model keeps its dropout on,
    seeded (the anonymising noise it was made with).
    """
    net = model.generator(device)
    net.eval()
    x = torch.from_numpy(np.asarray(inputs)[None]).float().to(device)
    if model.conditioning == "privacy":
        z = latent_code(model, seed).to(device)

        def run(windows):
            return net(windows, z.expand(len(windows), -1))
    else:
        for module in net.modules():
            if isinstance(module, torch.nn.Dropout3d | torch.nn.Dropout):
                module.train()
        torch.manual_seed(seed)
        run = net
    with torch.no_grad():
        y = tiled_apply(run, x, model.window)[0, 0].cpu().numpy()
    if model.prior is not None:
        y = np.clip(seeded_prior(model, seed)
                    + model.truncation * (y - model.prior.numpy()), -1.0, 1.0)
    return y


#: The stream of a seed's random numbers that draws its prior (the latent code is drawn from
#: the seed alone, :func:`latent_code`).
PRIOR_STREAM = 7


def seeded_prior(model: Model, seed: int) -> np.ndarray:
    """The head a seed's face is drawn towards: the mean training head moved along the
    training heads' main modes of variation by standard normal amounts drawn from the seed
    (times the model's ``prior_scale``); the mean itself for a model without modes.

    >>> from bidsreface.reface.weights import Model
    >>> modes = torch.zeros((2, 2, 1, 1)); modes[0, 0] = 0.1; modes[1, 1] = 0.1
    >>> m = Model("m", "T1w", {}, {}, None, (2, 1, 1), "", "", {}, "privacy",
    ...           prior=torch.zeros((2, 1, 1)), prior_modes=modes)
    >>> a, b = seeded_prior(m, 1), seeded_prior(m, 2)
    >>> bool(np.array_equal(a, seeded_prior(m, 1))), bool(np.array_equal(a, b))
    (True, False)
    """
    prior = model.prior.numpy()
    if model.prior_modes is None or len(model.prior_modes) == 0:
        return prior
    modes = model.prior_modes.numpy()
    amounts = np.random.default_rng([int(seed), PRIOR_STREAM]).standard_normal(len(modes))
    return (prior + model.prior_scale
            * np.tensordot(amounts.astype(np.float32), modes, axes=1)).astype(np.float32)


def high_pass(data: np.ndarray, sigma_vox: float = 1.0) -> np.ndarray:
    """The image minus its Gaussian blur: what noise and fine texture leave."""
    data = np.asarray(data, dtype=np.float32)
    return data - ndimage.gaussian_filter(data, sigma_vox)


def high_pass_gain(sigma_vox: float = 1.0, ndim: int = 3) -> float:
    """The standard deviation of :func:`high_pass` of white noise of standard deviation 1:
    ``sqrt(1 - 2 g0 + sum(g^2))`` for the Gaussian kernel ``g`` scipy applies (truncated at
    4 sigma), ``g0`` its centre.

    >>> noise = np.random.default_rng(0).standard_normal((60, 60, 60))
    >>> round(float(high_pass(noise)[5:-5, 5:-5, 5:-5].std()), 2), round(high_pass_gain(), 2)
    (0.95, 0.95)
    """
    radius = int(4.0 * sigma_vox + 0.5)
    x = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * (x / sigma_vox) ** 2)
    w /= w.sum()
    return float(np.sqrt(1 - 2 * w[radius] ** ndim + (w ** 2).sum() ** ndim))


#: :func:`high_pass_gain` at the 1 voxel :func:`match_noise` uses.
HIGH_PASS_GAIN = high_pass_gain()


def robust_sigma(values: np.ndarray) -> float:
    """1.4826 times the median absolute deviation (the std of normal values).

    >>> round(robust_sigma(np.random.default_rng(0).normal(0, 2, 100_000)), 1)
    2.0
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def tissue_near(mask: np.ndarray, tissue: np.ndarray, affine: np.ndarray,
                distance_mm: float = 15.0) -> np.ndarray:
    """Tissue voxels outside ``mask`` within about ``distance_mm`` of it.

    The distance is taken on blocks of about 2 mm (a 1 mm image's 2x2x2 voxels, a block
    holding the mask when one of its voxels does), so it is exact to a block's diagonal:
    the ring of tissue around the region whose noise is measured, 8x faster at 1 mm.
    """
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    step = np.maximum(1, np.floor(2.0 / zooms + 1e-6)).astype(int)
    if (step == 1).all():
        near = ndimage.distance_transform_edt(~mask, sampling=zooms) <= distance_mm
    else:
        padded = np.pad(mask, [(0, (-n) % k) for n, k in zip(mask.shape, step, strict=True)])
        blocks = padded.reshape(padded.shape[0] // step[0], step[0], padded.shape[1] // step[1],
                                step[1], padded.shape[2] // step[2], step[2]).any(axis=(1, 3, 5))
        near = ndimage.distance_transform_edt(~blocks, sampling=zooms * step) <= distance_mm
        for axis, k in enumerate(step):
            near = np.repeat(near, k, axis=axis)
        near = near[:mask.shape[0], :mask.shape[1], :mask.shape[2]]
    return near & ~mask & tissue


def match_noise(filled: np.ndarray, mask: np.ndarray, tissue: np.ndarray,
                affine: np.ndarray, seed: int) -> np.ndarray:
    """Add seeded white noise to the region's tissue so that its local noise (the robust
    spread of :func:`high_pass`) equals that of the image's own tissue around the region.

    ``filled`` is the image with the region already filled (the image itself elsewhere),
    ``tissue`` the filled head's tissue (boolean). Returns the new values of the region's
    voxels (mask order).
    """
    box = mask_box(mask, pad=10)
    sub_mask, sub_tissue = mask[box], tissue[box]
    values = filled[box][sub_mask].astype(np.float32)
    around = tissue_near(sub_mask, sub_tissue, affine)
    inside = sub_mask & sub_tissue
    if not around.any() or not inside.any():
        return values
    detail = high_pass(filled[box])
    target, have = robust_sigma(detail[around]), robust_sigma(detail[inside])
    if target <= have:
        return values
    noise = np.random.default_rng(seed).standard_normal(values.shape).astype(np.float32)
    noise *= np.sqrt(target**2 - have**2) / HIGH_PASS_GAIN
    return np.where(sub_tissue[sub_mask], values + noise, values)


#: The stream of a seed's random numbers that draws the region's air (:func:`match_air`).
AIR_STREAM = 11


def match_air(values: np.ndarray, data: np.ndarray, mask: np.ndarray, level: float,
              affine: np.ndarray, seed: int, background: float) -> np.ndarray:
    """The region's air voxels (``values`` at ``background``, mask order) drawn, seeded, from
    the image's own air around the region: the voxels outside ``mask`` within about 15 mm
    (and 12 voxels) that lie below ``level`` and at least 2 voxels from anything above it.

    A scanner's air is noise, not a constant: left at one value, the region's air is a flat
    patch that the image has nowhere else. Drawn one by one from the image's own air, it has
    that air's distribution and no spatial pattern of it.

    >>> data = np.random.default_rng(0).uniform(0, 10, (30, 30, 30)).astype(np.float32)
    >>> mask = np.zeros(data.shape, bool); mask[10:20, 10:20, 10:20] = True
    >>> new = match_air(np.zeros(1000, np.float32), data, mask, 50.0, np.eye(4), 0, 0.0)
    >>> bool(new.min() >= 0 and new.max() <= 10 and 4 < new.mean() < 6)
    True
    """
    air = values == background
    if not air.any():
        return values
    box = mask_box(mask, pad=12)
    sub_data, sub_mask = data[box], mask[box]
    solid = ndimage.binary_dilation(sub_data > level, iterations=2)
    sample = sub_data[tissue_near(sub_mask, ~solid, affine)]  # the air near the region
    if sample.size < 100:
        return values
    rng = np.random.default_rng([int(seed), AIR_STREAM])
    drawn = rng.choice(sample.astype(np.float32), size=int(air.sum()))
    out = values.copy()
    out[air] = drawn
    return out


#: Generated voxels below this share of the head/air level are air. Measured on the held-out
#: head: at 1 (the defacer's own level) the dim soft tissue of the lower face is cut into
#: holes; at 0.5 the face is whole.
AIR_FRACTION = 0.5


#: A privacy model's output below this (network units, -1 is the background) is air. On three
#: validation heads the generator gave -0.96 (median; 90th percentile -0.81 to -0.86) where the
#: original was air, and the original's tissue was above -0.53 (10th percentile); below -0.8
#: lay 0.57-0.59 of the region against 0.55-0.62 of air in the originals. The image's own
#: head/air level (:func:`air_level`) sits lower in these units, so the generator's dark air
#: would otherwise pass as tissue.
GENERATED_AIR = -0.8


def air_level(data: np.ndarray, background: float) -> float:
    """Half the head/air threshold (Otsu), as the defacer's head mask uses."""
    sample = data.reshape(-1)[:: max(1, data.size // 2_000_000)].astype(np.float32)
    sample = sample[sample > np.percentile(sample, 2)]
    return float(background) + 0.5 * (otsu(sample) - float(background)) if sample.size else 0.0


def clean_air(values: np.ndarray, data: np.ndarray, mask: np.ndarray, background: float,
              level: float) -> np.ndarray:
    """Within the mask: voxels below the air level, or not joined to the head, become
    background. ``values`` are the new intensities of the mask's voxels (mask order),
    ``level`` the air level (:data:`AIR_FRACTION` of :func:`air_level`).

    Only the mask's bounding box (plus a margin) is looked at: the head outside it is one
    piece with what touches the box.
    """
    box = mask_box(mask, pad=4)
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
              note: str, *, noise_seed: int | None = None) -> tuple[Path, dict]:
    """Write ``defaced_file`` with its mask's voxels replaced by ``values_fn(data, affine,
    mask, background)`` (scaled intensities, mask order), air cleaned; with ``noise_seed``
    the image's own noise is matched in the region's tissue (:func:`match_noise`) and its
    air drawn from the image's own air (:func:`match_air`)."""
    img = in_memory(defaced_file)  # decompressed once for both the values and the stored ones
    data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(img.shape[:3])
    mask = np.asarray(nb.load(mask_file).dataobj).reshape(img.shape[:3]) > 0
    background = float(background_value(data))
    values = values_fn(data, img.affine, mask, background)
    # air cleaning, noise matching and air drawing look at most 12 voxels around the mask:
    # crop to it
    crop = mask_box(mask, pad=12)
    if crop is not None:
        level = background + AIR_FRACTION * (air_level(data, background) - background)
        data, mask_in, affine = data[crop], mask[crop], crop_affine(img.affine, crop)
        values = clean_air(values, data, mask_in, background, level)
        if noise_seed is not None:
            filled = data.copy()
            filled[mask_in] = values
            # noise never takes tissue below the image's background (a magnitude image has
            # no values there: a negative minimum would also move every level read from it)
            values = np.where(values != background,
                              np.maximum(match_noise(filled, mask_in, filled > level, affine,
                                                     noise_seed), background),
                              values)
            values = match_air(values, data, mask_in, level, affine, noise_seed, background)
    stored = np.array(img.dataobj.get_unscaled()).reshape(img.shape[:3])
    stored[mask] = to_stored(values, read_header(defaced_file))
    filled = int((values != background).sum())
    # the defaced image's header was scrubbed as the run asked: its extensions are kept as
    # they are there
    path = save_like(stored, defaced_file, out_file, note, keep_extensions=True)
    return path, {"reface_voxels": filled,
                  "reface_fraction": round(filled / max(int(mask.sum()), 1), 4)}


def reface_file(defaced_file: str | Path, mask_file: str | Path, matrix: np.ndarray,
                model: Model, out_file: str | Path, *, seed: int = 0, device: str = "cpu",
                brain_file: str | Path | None = None, match_image_noise: bool = True,
                ) -> tuple[Path, dict]:
    """Reface a defaced image with the cGAN; returns the written path and figures.

    A privacy model reads the brain of ``brain_file`` (the image's own brain mask), or
    without one the template's brain carried by ``matrix``; the image's noise is matched in
    the region unless ``match_image_noise`` is off (for measuring what it adds).
    """
    used = {}

    def values(data, affine, mask, background):
        if model.conditioning == "privacy":
            if brain_file is not None:
                brain = np.asarray(nb.load(brain_file).dataobj).reshape(data.shape) > 0
                used["reface_brain"] = "own"
            else:
                brain = template_brain_native(data.shape, affine, matrix, load_template())
                used["reface_brain"] = "template"
            # the defacer keeps its mask clear of the brain; a brain mask made otherwise is
            # cut back to the voxels the mask left
            inputs, scaling = privacy_inputs(data, affine, matrix, mask, brain & ~mask,
                                             model.box)
        else:
            defaced, mask_box, _, scaling = box_inputs(data, affine, matrix, mask, model.box)
            inputs = np.stack([defaced, mask_box])
        head = generate(model, inputs, seed=seed, device=device)
        if model.conditioning == "privacy":
            head = np.where(head < GENERATED_AIR, -1.0, head)
        return Scaling.inverse(scaling, sample_from_box(head, model.box, matrix, affine, mask))

    path, info = fill_face(defaced_file, mask_file, values, out_file, "refaced (cGAN)",
                           noise_seed=seed if model.conditioning == "privacy"
                           and match_image_noise else None)
    return path, {"reface_method": "cgan", "model": model.name, "model_sha256": model.sha256,
                  "conditioning": model.conditioning, "reface_region": model.region,
                  "seed": seed, **used, **info}
