"""Train the refacing cGAN: ``bidsreface-train OUT_DIR INPUT [INPUT ...]``.

Inputs are full-head T1w images (NIfTI files) or BIDS datasets (every ``*_T1w.nii[.gz]``).
Each is defaced by the project's own defacer and carried into the face box; the generator
learns the original head from the defaced head and its mask. Loss: LSGAN + lambda * L1.5,
both counted where the face was removed (the only voxels the output ever uses).

OUT_DIR receives ``pairs/`` (the cached training pairs), ``checkpoint.pt`` (resumable),
``loss.tsv`` (one line per step) and, at the end, the model file.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
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

from .augment import AugmentSettings, sample_head
from .data import cached_pairs, morph_field
from .networks import Generator, PatchDiscriminator
from .space import FaceBox, face_box
from .weights import save_model

LOGGER = logging.getLogger("bidsreface.train")


def seed_everything(seed: int) -> None:
    """One seed sets python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def find_inputs(inputs: list[str]) -> list[Path]:
    """NIfTI files as given, and every T1w of the BIDS datasets given."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.glob("sub-*/**/anat/*_T1w.nii*")
                           if "derivatives" not in p.relative_to(item).parts)
            if not found:
                raise SystemExit(f"bidsreface-train: {item}: no *_T1w.nii[.gz] found")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise SystemExit(f"bidsreface-train: {item}: no such file or directory")
    return files


def crop_start(mask: torch.Tensor, window: tuple, gen: torch.Generator) -> tuple:
    """A random window that holds part of the face: centred near a random mask voxel."""
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="bidsreface-train", description=__doc__.split("\n")[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("inputs", nargs="+", help="T1w NIfTI files or BIDS dataset folders")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--resume", action="store_true", help="go on from OUT_DIR/checkpoint.pt")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--resolution-mm", type=float, default=2.0)
    p.add_argument("--window", type=int, default=64, help="training window (voxels per axis)")
    p.add_argument("--lambda-l15", type=float, default=10.0, dest="lam")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--residual-blocks", type=int, default=3)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--disc-features", type=int, default=16)
    p.add_argument("--disc-layers", type=int, default=3)
    p.add_argument("--no-morph", action="store_true", help="skip morphs between heads")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--name", default="bidsreface-vox2vox-T1w")
    p.add_argument("--model-file", default="reface_T1w.pt")
    return p.parse_args(argv)


def _key(pairs, box: FaceBox) -> str:
    text = repr(([p.name for p in pairs], box))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _to_tensors(pair, device):
    return {k: torch.from_numpy(np.ascontiguousarray(getattr(pair, k))).float().to(device)
            for k in ("original", "mask", "fov")}


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


def train(args) -> Path:
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    seed_everything(args.seed)
    files = find_inputs(args.inputs)
    from ..deface.template import load_template

    box = face_box(load_template(), args.resolution_mm, multiple=2**args.depth)
    window = tuple(min(args.window, n) for n in box.shape)
    pairs = cached_pairs(files, box, out / "pairs", seed=args.seed)
    LOGGER.info("%d training heads, box %s at %.1f mm, window %s", len(pairs), box.shape,
                box.spacing, window)
    fields = {}
    if not args.no_morph and len(pairs) > 1:
        fields_file = out / "pairs" / f"morphs_{_key(pairs, box)}.npz"
        if fields_file.exists():
            with np.load(fields_file) as f:
                fields = {tuple(map(int, k.split("_"))): torch.from_numpy(f[k]) for k in f}
        else:
            for a, b in itertools.permutations(range(len(pairs)), 2):
                fields[(a, b)] = torch.from_numpy(
                    morph_field(pairs[a].original, pairs[b].original, seed=args.seed))
            np.savez_compressed(fields_file, **{f"{a}_{b}": u.numpy()
                                                for (a, b), u in fields.items()})
    tensors = [_to_tensors(p, "cpu") for p in pairs]
    gen_args = {"in_channels": 2, "out_channels": 1, "features": args.features,
                "depth": args.depth, "residual_blocks": args.residual_blocks,
                "dropout": args.dropout}
    netg = Generator(**gen_args).to(device)
    netd = PatchDiscriminator(in_channels=3, features=args.disc_features,
                              layers=args.disc_layers).to(device)
    opt_g = torch.optim.Adam(netg.parameters(), lr=args.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(netd.parameters(), lr=args.lr, betas=(0.5, 0.999))
    rng = torch.Generator().manual_seed(args.seed)
    settings = AugmentSettings()
    step = 0
    checkpoint = out / "checkpoint.pt"
    log = out / "loss.tsv"
    if args.resume and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        netg.load_state_dict(state["generator"])
        netd.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        rng.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])
        _truncate_log(log, step)
        LOGGER.info("resumed at step %d", step)
    elif not args.resume or not log.exists():
        log.write_text("step\tloss_g_adv\tloss_l15\tloss_d\tseconds\n")
    netg.train()
    netd.train()
    while step < args.steps:
        t0 = time.perf_counter()
        head = sample_head(tensors, fields, settings, rng)
        start = crop_start(head["mask"], window, rng)
        crop = {k: v[tuple(slice(s, s + w) for s, w in zip(start, window, strict=True))]
                [None, None].to(device) for k, v in head.items()}
        condition = torch.cat([crop["defaced"], crop["mask"]], 1)
        weight = crop["mask"] * crop["fov"]
        raw = netg(condition)
        fake = crop["mask"] * raw + (1 - crop["mask"]) * crop["original"]
        # discriminator: real pairs against generated ones
        opt_d.zero_grad(set_to_none=True)
        d_real = netd(torch.cat([condition, crop["original"]], 1))
        d_fake = netd(torch.cat([condition, fake.detach()], 1))
        loss_d = 0.5 * ((d_real - 1).pow(2).mean() + d_fake.pow(2).mean())
        loss_d.backward()
        opt_d.step()
        # generator: fool the discriminator and stay close to the real head
        opt_g.zero_grad(set_to_none=True)
        loss_adv = (netd(torch.cat([condition, fake], 1)) - 1).pow(2).mean()
        loss_rec = l15(fake, crop["original"], weight)
        (loss_adv + args.lam * loss_rec).backward()
        opt_g.step()
        step += 1
        with open(log, "a") as f:
            f.write(f"{step}\t{loss_adv.item():.5f}\t{loss_rec.item():.5f}\t"
                    f"{loss_d.item():.5f}\t{time.perf_counter() - t0:.3f}\n")
        if step % args.save_every == 0 or step == args.steps:
            _save_checkpoint(checkpoint, {
                "generator": netg.state_dict(), "discriminator": netd.state_dict(),
                "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "step": step,
                "rng": rng.get_state(), "torch_rng": torch.get_rng_state()})
            LOGGER.info("step %d: adv %.3f l1.5 %.4f d %.3f", step, loss_adv.item(),
                        loss_rec.item(), loss_d.item())
    training = {"inputs": [p.name for p in files], "steps": step, "lambda_l15": args.lam,
                "lr": args.lr, "seed": args.seed, "window": list(window),
                "augmentation": {k: list(v) if isinstance(v, tuple) else v
                                 for k, v in asdict(settings).items()},
                "morphs": not args.no_morph,
                "discriminator": {"features": args.disc_features, "layers": args.disc_layers}}
    model_file = out / args.model_file
    sha = save_model(model_file, netg, gen_args, box, window, name=args.name,
                     training=training)
    (out / "model.json").write_text(json.dumps({"file": model_file.name, "sha256": sha,
                                                "box": box.to_dict(), **training}, indent=2))
    LOGGER.info("wrote %s (sha256 %s)", model_file, sha)
    return model_file


def main(argv=None) -> int:
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        stream=sys.stderr)
    args = parse_args(argv)
    try:
        train(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"bidsreface-train: {err}", file=sys.stderr)
        return 1
    return 0




if __name__ == "__main__":
    raise SystemExit(main())
