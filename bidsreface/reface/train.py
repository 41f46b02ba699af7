"""Train the refacing generator: ``bidsreface-train OUT_DIR INPUT [INPUT ...]``.

Inputs are full-head T1w images (NIfTI files), BIDS datasets (every ``*_T1w.nii[.gz]``) or
prepared lists (``.tsv`` with columns ``name``, ``image``, ``matrix``, ``mask``, ``brain``: an
image with the registration matrix, deface mask and brain mask a bidsreface run made for it).
A file or dataset is registered, brain-masked and defaced here by the project's own defacer
(:mod:`bidsreface.reface.heads`).

The generator never sees the face it fills: its input is the privacy transform
(:mod:`bidsreface.reface.privacy`: the brain, the brain mask, the region) plus a latent code.
The objective is a cVAE-GAN (Zhu et al. 2017, "Toward multimodal image-to-image translation"):

- an encoder reads the real head inside the region and gives the code's mean and variance;
  the generator, given the privacy transform and a code drawn from them, rebuilds the real
  head inside the region (L1.5, counted on the region's voxels inside the field of view);
- a KL term keeps the codes close to a standard normal, so that at inference a code drawn
  from the seed (the encoder is not shipped) gives a face of the training distribution that
  belongs to nobody in particular;
- a 3D PatchGAN, conditioned on the privacy transform, judges heads completed with a face
  made from a random code (LSGAN), which keeps random faces sharp and anatomical;
- the encoder must read the random code back from the face made from it (latent regression,
  BicycleGAN's cLR-GAN term): the generator cannot ignore the code, so different seeds give
  different faces.

The encoder and the generator see the same training window (the encoder averages over it).

The model file also holds the mean of the training heads on the box and a truncation
(``--truncation``, 0.4 by default): at inference the head lies that share of the way from
the mean head to the generator's (:func:`bidsreface.reface.infer.generate`), the
truncation trick of GANs, which trades some of the seeds' diversity for faces that look like
faces. The mean of 108 people is a face, but nobody's.

``--region head`` trains on heads whose region is the whole non-brain head
(``--reface-region head``; the inputs' masks must be those) on a box around the template's
whole head; ``--init`` starts the generator from another model file's weights (the face
model, say).

OUT_DIR receives ``pairs/`` (the cached training heads on the box), ``checkpoint.pt``
(resumable), ``loss.tsv`` (one line per step) and the model file, written at every
checkpoint and at the end.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .augment import AugmentSettings, augment_head
from .data import PrivacyPair, privacy_pair
from .networks import FaceEncoder, Generator, PatchDiscriminator
from .privacy import CHANNELS
from .space import FaceBox, face_box
from .weights import save_model

LOGGER = logging.getLogger("bidsreface.train")
MANIFEST_COLUMNS = ("name", "image", "matrix", "mask", "brain")


def seed_everything(seed: int) -> None:
    """One seed sets python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def find_inputs(inputs: list[str]) -> list[dict]:
    """One entry per head: ``{"name", "image"}`` and, from a prepared list, its ``matrix``,
    ``mask`` and ``brain`` files."""
    heads: list[dict] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.glob("sub-*/**/anat/*_T1w.nii*")
                           if "derivatives" not in p.relative_to(item).parts)
            if not found:
                raise ValueError(f"{item}: no *_T1w.nii[.gz] found")
            heads += [{"name": p.name, "image": p} for p in found]
        elif item.suffix == ".tsv" and item.is_file():
            with open(item, newline="") as f:
                rows = list(csv.DictReader(f, delimiter="\t"))
            if not rows or set(MANIFEST_COLUMNS) - set(rows[0]):
                raise ValueError(f"{item}: a prepared list needs the columns "
                                 f"{', '.join(MANIFEST_COLUMNS)}")
            heads += [{k: (v if k == "name" else Path(v)) for k, v in row.items()
                       if k in MANIFEST_COLUMNS} for row in rows]
        elif item.is_file():
            heads.append({"name": item.name, "image": item})
        else:
            raise FileNotFoundError(f"{item}: no such file or directory")
    return heads


def prepare_head(head: dict, box: FaceBox, work: Path, *, seed: int = 0) -> PrivacyPair:
    """A head on the box: from its prepared files, or first defaced into ``work`` by the
    project's defacer (:func:`bidsreface.reface.heads.deface_head`)."""
    import nibabel as nb

    from ..image import load_image
    from .heads import deface_head, head_key

    if "matrix" not in head:
        done = deface_head(Path(head["image"]), work / head_key(head["image"]), seed=seed)
        if "error" in done:
            raise ValueError(f"{head['image']}: {done['error']}")
        head = {**head, **done}
    img = load_image(head["image"])
    data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(img.shape[:3])
    region = np.asarray(nb.load(head["mask"]).dataobj).reshape(data.shape) > 0
    brain = np.asarray(nb.load(head["brain"]).dataobj).reshape(data.shape) > 0
    return privacy_pair(head["name"], data, img.affine, np.loadtxt(head["matrix"]), region,
                        brain, box)


def cached_heads(heads: list[dict], box: FaceBox, cache_dir: Path, *, seed: int = 0,
                 ) -> list[PrivacyPair]:
    """The heads on the box, made once and kept in ``cache_dir`` (keyed by files and box)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    box_key = hashlib.sha256(repr(box).encode()).hexdigest()[:8]
    pairs = []
    for head in heads:
        digest = hashlib.sha256()
        for key in ("image", "matrix", "mask", "brain"):
            if key in head:
                digest.update(Path(head[key]).read_bytes())
        cached = cache_dir / f"{digest.hexdigest()[:16]}_{box_key}_s{seed}.npz"
        if not cached.exists():
            LOGGER.info("carrying %s into the box", head["name"])
            tmp = cached.with_suffix(".tmp.npz")
            prepare_head(head, box, cache_dir / "heads", seed=seed).save(tmp)
            tmp.rename(cached)
        pairs.append(PrivacyPair.load(cached))
    return pairs


def crop_start(mask: torch.Tensor, window: tuple, gen: torch.Generator) -> tuple:
    """A random window that holds part of the region: centred near a random region voxel."""
    shape = mask.shape
    idx = torch.nonzero(mask > 0.5)
    if len(idx) == 0:
        centre = [n // 2 for n in shape]
    else:
        centre = idx[int(torch.randint(len(idx), (1,), generator=gen))].tolist()
    return tuple(int(min(max(c - w // 2, 0), n - w)) for c, w, n in zip(centre, window, shape,
                                                                        strict=True))


def l15(fake, real, weight):
    """Mean |fake - real|^1.5 over the weighted voxels."""
    return (weight * (fake - real).abs().pow(1.5)).sum() / weight.sum().clamp(min=1.0)


def generator_input(head: dict) -> torch.Tensor:
    """The privacy transform of a (batched) head dict, channels as :data:`CHANNELS`."""
    brain = (head["brain"] > 0.5).float()
    return torch.cat([torch.where(brain > 0, head["original"], -torch.ones_like(brain)),
                      brain, head["region"]], 1)


def mean_head(pairs: list[PrivacyPair]) -> np.ndarray:
    """The mean of the training heads on the box, each counted inside its field of view;
    background (-1) where none reaches.

    >>> a = PrivacyPair("a", np.full((2, 2, 2), 0.5, np.float32), *[np.ones((2, 2, 2))] * 3)
    >>> b = PrivacyPair("b", np.full((2, 2, 2), -0.5, np.float32), *[np.ones((2, 2, 2))] * 2,
    ...                 np.zeros((2, 2, 2)))
    >>> float(mean_head([a, b]).max())
    0.5
    """
    total = np.zeros(pairs[0].original.shape, np.float64)
    weight = np.zeros_like(total)
    for pair in pairs:
        total += pair.fov * pair.original
        weight += pair.fov
    return np.where(weight > 0, total / np.maximum(weight, 1e-6), -1.0).astype(np.float32)


def prior_modes(pairs: list[PrivacyPair], count: int, mean: np.ndarray) -> np.ndarray:
    """The training heads' ``count`` main modes of variation about ``mean`` on the box, each
    one standard deviation of the heads long (principal components; a voxel outside a head's
    field of view counts as the mean there). ``(count, *box)`` float32.

    >>> rng = np.random.default_rng(0)
    >>> pairs = [PrivacyPair(str(i), rng.normal(size=(3, 2, 2)).astype(np.float32),
    ...                      *[np.ones((3, 2, 2))] * 3) for i in range(6)]
    >>> mean = mean_head(pairs)
    >>> flat = prior_modes(pairs, 5, mean).reshape(5, -1)
    >>> lengths = (flat ** 2).sum(1)
    >>> bool(abs(flat[0] @ flat[1]) < 1e-4), bool((np.diff(lengths) <= 0).all())
    (True, True)
    >>> spread = sum(((p.original - mean) ** 2).sum() for p in pairs) / 5  # all 5 modes
    >>> bool(np.isclose(lengths.sum(), spread, rtol=1e-4))
    True
    """
    count = min(int(count), len(pairs) - 1)
    if count <= 0:
        return np.zeros((0, *mean.shape), np.float32)
    rows = np.stack([np.where(p.fov > 0.5, p.original, mean) - mean for p in pairs])
    rows = rows.reshape(len(pairs), -1).astype(np.float64)
    values, vectors = np.linalg.eigh(rows @ rows.T)  # the heads' Gram matrix
    order = np.argsort(values)[::-1][:count]
    values, vectors = np.maximum(values[order], 1e-12), vectors[:, order]
    # unit component k is rows.T @ v_k / sqrt(value_k); one standard deviation along it is
    # sqrt(value_k / (heads - 1))
    modes = (vectors.T @ rows) / np.sqrt(values)[:, None] * np.sqrt(
        values / (len(pairs) - 1))[:, None]
    return modes.reshape(count, *mean.shape).astype(np.float32)


def encoder_input(head: dict) -> torch.Tensor:
    """What the encoder reads: the real head inside the region, and the region."""
    region = head["region"]
    return torch.cat([region * head["original"] - (1 - region), region], 1)


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``bidsreface-train``."""
    p = argparse.ArgumentParser(prog="bidsreface-train", description=__doc__.split("\n")[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("inputs", nargs="+",
                   help="T1w NIfTI files, BIDS dataset folders or prepared lists (.tsv)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--resume", action="store_true", help="go on from OUT_DIR/checkpoint.pt")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--resolution-mm", type=float, default=2.0)
    p.add_argument("--window", type=int, default=64, help="training window (voxels per axis)")
    p.add_argument("--lambda-l15", type=float, default=10.0, dest="lam")
    p.add_argument("--lambda-kl", type=float, default=0.01, dest="lam_kl")
    p.add_argument("--lambda-latent", type=float, default=0.5, dest="lam_latent")
    p.add_argument("--latent-dim", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--residual-blocks", type=int, default=3)
    p.add_argument("--truncation", type=float, default=0.4,
                   help="share of the generated head's departure from the mean training head "
                        "kept at inference (1: the generator's head as it is)")
    p.add_argument("--prior-modes", type=int, default=4,
                   help="main modes of variation of the training heads a seed draws its prior "
                        "from (0: every seed is drawn towards the mean head)")
    p.add_argument("--prior-scale", type=float, default=1.0,
                   help="standard deviations of the training people a seed's prior spans")
    p.add_argument("--encoder-features", type=int, default=8)
    p.add_argument("--disc-features", type=int, default=16)
    p.add_argument("--disc-layers", type=int, default=3)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--region", choices=("face", "head"), default="face",
                   help="the region the inputs' masks remove, and so the model's box: the "
                        "face, or the whole non-brain head (--reface-region head)")
    p.add_argument("--init", type=Path, default=None,
                   help="start the generator from this model file's weights (same networks)")
    p.add_argument("--name", default=None,
                   help="the model's name (bidsreface-privacy-cvaegan-T1w, -head for the head "
                        "region)")
    p.add_argument("--model-file", default=None,
                   help="reface_T1w.pt, reface_T1w_head.pt for the head region")
    return p


def model_names(region: str) -> tuple[str, str]:
    """The default model name and file of a region.

    >>> model_names("head")
    ('bidsreface-privacy-cvaegan-T1w-head', 'reface_T1w_head.pt')
    """
    suffix = "" if region == "face" else f"-{region}"
    return f"bidsreface-privacy-cvaegan-T1w{suffix}", f"reface_T1w{suffix.replace('-', '_')}.pt"


def _to_tensors(pair: PrivacyPair) -> dict:
    return {k: torch.from_numpy(np.ascontiguousarray(getattr(pair, k))).float()
            for k in ("original", "brain", "region", "fov")}


def _truncate_log(log: Path, step: int) -> None:
    """Drop the loss lines of steps after the checkpoint (a killed run redoes them)."""
    if not log.exists():
        return
    lines = log.read_text().splitlines()
    kept = [lines[0], *(ln for ln in lines[1:] if int(ln.split("\t")[0]) <= step)]
    log.write_text("\n".join(kept) + "\n")


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    tmp.replace(path)


LOG_COLUMNS = ("step", "loss_g_adv", "loss_l15", "loss_kl", "loss_latent", "loss_d",
               "seconds")


def _write_model(out: Path, args, netg, gen_args, box, window, pairs, prior, modes, settings,
                 step: int) -> tuple[Path, str]:
    """The model file of the generator as it is at ``step``, and its summary."""
    training = {"inputs": [p.name for p in pairs], "steps": step, "lambda_l15": args.lam,
                "lambda_kl": args.lam_kl, "lambda_latent": args.lam_latent, "lr": args.lr,
                "seed": args.seed, "window": list(window), "objective": "cvae-gan",
                "prior": "mean of the training heads", "truncation": args.truncation,
                "prior_modes": {"count": len(modes), "scale": args.prior_scale},
                "augmentation": {k: list(v) if isinstance(v, tuple) else v
                                 for k, v in asdict(settings).items()},
                "region": args.region,
                "init": None if args.init is None else Path(args.init).name,
                "encoder": {"features": args.encoder_features},
                "discriminator": {"features": args.disc_features, "layers": args.disc_layers}}
    model_file = out / args.model_file
    sha = save_model(model_file, netg, gen_args, box, window, name=args.name,
                     conditioning="privacy", training=training, prior=prior,
                     truncation=args.truncation, prior_modes=torch.from_numpy(modes),
                     prior_scale=args.prior_scale)
    (out / "model.json").write_text(json.dumps({"file": model_file.name, "sha256": sha,
                                                "box": box.to_dict(), **training}, indent=2))
    return model_file, sha


def train(args) -> Path:
    if not 0.0 <= args.truncation <= 1.0:
        raise ValueError(f"--truncation must be in [0, 1], got {args.truncation}")
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    seed_everything(args.seed)
    heads = find_inputs(args.inputs)
    from ..deface.template import load_template

    box = face_box(load_template(), args.resolution_mm, multiple=2**args.depth,
                   head=args.region == "head")
    window = tuple(min(args.window, n) for n in box.shape)
    pairs = cached_heads(heads, box, out / "pairs", seed=args.seed)
    LOGGER.info("%d training heads, box %s at %.1f mm, window %s", len(pairs), box.shape,
                box.spacing, window)
    tensors = [_to_tensors(p) for p in pairs]
    prior = torch.from_numpy(mean_head(pairs))
    modes = prior_modes(pairs, args.prior_modes, prior.numpy())
    gen_args = {"in_channels": len(CHANNELS), "out_channels": 1, "features": args.features,
                "depth": args.depth, "residual_blocks": args.residual_blocks, "dropout": 0.0,
                "latent_dim": args.latent_dim}
    netg = Generator(**gen_args).to(device)
    if args.init is not None and not (args.resume and (out / "checkpoint.pt").exists()):
        from .weights import load_model

        start = load_model(args.init)
        if start.generator_args != gen_args:
            raise ValueError(f"{args.init}: its generator ({start.generator_args}) is not "
                             f"this run's ({gen_args})")
        netg.load_state_dict(start.generator().state_dict())
        LOGGER.info("generator starts from %s", args.init)
    nete = FaceEncoder(in_channels=2, features=args.encoder_features,
                       latent_dim=args.latent_dim).to(device)
    netd = PatchDiscriminator(in_channels=len(CHANNELS) + 1, features=args.disc_features,
                              layers=args.disc_layers).to(device)
    opt_g = torch.optim.Adam([*netg.parameters(), *nete.parameters()], lr=args.lr,
                             betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(netd.parameters(), lr=args.lr, betas=(0.5, 0.999))
    rng = torch.Generator().manual_seed(args.seed)
    settings = AugmentSettings()
    step = 0
    checkpoint = out / "checkpoint.pt"
    log = out / "loss.tsv"
    if args.resume and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        netg.load_state_dict(state["generator"])
        nete.load_state_dict(state["encoder"])
        netd.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        rng.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])
        _truncate_log(log, step)
        LOGGER.info("resumed at step %d", step)
    elif not args.resume or not log.exists():
        log.write_text("\t".join(LOG_COLUMNS) + "\n")
    for net in (netg, nete, netd):
        net.train()
    while step < args.steps:
        t0 = time.perf_counter()
        head = augment_head(tensors[int(torch.randint(len(tensors), (1,), generator=rng))],
                            settings, rng)
        head = {k: v[None, None].to(device) for k, v in head.items()}
        start = crop_start(head["region"][0, 0], window, rng)
        cut = (slice(None), slice(None),
               *(slice(s, s + w) for s, w in zip(start, window, strict=True)))
        crop = {k: v[cut] for k, v in head.items()}
        mean, logvar = nete(encoder_input(crop))
        z_enc = mean + torch.randn(mean.shape, generator=rng).to(device) * (0.5 * logvar).exp()
        z_rand = torch.randn(mean.shape, generator=rng).to(device)
        condition = generator_input(crop)
        region = crop["region"]
        rebuilt = region * netg(condition, z_enc) + (1 - region) * crop["original"]
        drawn = region * netg(condition, z_rand) + (1 - region) * crop["original"]
        # discriminator: real heads against heads completed from a random code
        opt_d.zero_grad(set_to_none=True)
        d_real = netd(torch.cat([condition, crop["original"]], 1))
        d_fake = netd(torch.cat([condition, drawn.detach()], 1))
        loss_d = 0.5 * ((d_real - 1).pow(2).mean() + d_fake.pow(2).mean())
        loss_d.backward()
        opt_d.step()
        # generator and encoder
        opt_g.zero_grad(set_to_none=True)
        loss_adv = (netd(torch.cat([condition, drawn], 1)) - 1).pow(2).mean()
        loss_rec = l15(rebuilt, crop["original"], region * crop["fov"])
        loss_kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(1).mean()
        # latent regression: the code must be readable back from the face it made (the
        # generator alone answers for it), or the generator would learn to ignore it
        for p in nete.parameters():
            p.requires_grad_(False)
        loss_latent = (nete(encoder_input({"original": drawn, "region": region}))[0]
                       - z_rand).abs().mean()
        for p in nete.parameters():
            p.requires_grad_(True)
        (loss_adv + args.lam * loss_rec + args.lam_kl * loss_kl
         + args.lam_latent * loss_latent).backward()
        opt_g.step()
        step += 1
        with open(log, "a") as f:
            f.write(f"{step}\t{loss_adv.item():.5f}\t{loss_rec.item():.5f}\t"
                    f"{loss_kl.item():.4f}\t{loss_latent.item():.4f}\t{loss_d.item():.5f}\t"
                    f"{time.perf_counter() - t0:.3f}\n")
        if step % args.save_every == 0 or step == args.steps:
            _save_checkpoint(checkpoint, {
                "generator": netg.state_dict(), "encoder": nete.state_dict(),
                "discriminator": netd.state_dict(), "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(), "step": step, "rng": rng.get_state(),
                "torch_rng": torch.get_rng_state()})
            # a stopped run leaves a usable model of its last checkpoint
            _write_model(out, args, netg, gen_args, box, window, pairs, prior, modes, settings,
                         step)
            LOGGER.info("step %d: adv %.3f l1.5 %.4f kl %.2f d %.3f", step, loss_adv.item(),
                        loss_rec.item(), loss_kl.item(), loss_d.item())
    model_file, sha = _write_model(out, args, netg, gen_args, box, window, pairs, prior,
                                   modes, settings, step)
    LOGGER.info("wrote %s (sha256 %s)", model_file, sha)
    return model_file


def main(argv=None) -> int:
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        stream=sys.stderr)
    args = parse_args(argv)
    name, model_file = model_names(args.region)
    args.name, args.model_file = args.name or name, args.model_file or model_file
    try:
        train(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"bidsreface-train: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
