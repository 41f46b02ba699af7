"""Build the packaged refacing models ``bidsreface/data/models/reface_T1w.pt`` (the face
region) and ``reface_T1w_head.pt`` (``--region head``: the whole non-brain head) from a folder
of real heads.

Usage::

    python scripts/build_model.py --heads ../shared/heads [--work DIR] [--nprocs 2] \\
        [--region face|head] [--prior-modes 4] [--prior-scale 1] \\
        [bidsreface-train options: --steps N --resume --threads 2 --window 48 --init FILE ...]
    python scripts/build_model.py --heads ../shared/heads --prior-only [--prior-modes 4]

The people are split first (:func:`split_people`): every fourth IXI person in the order of
their numbers, and every person of ``other/`` (scanned several times), is kept for validation
and never reaches training. Each training head is registered, brain-masked and defaced by the
functions the participant workflow runs (:mod:`bidsreface.reface.heads`, into
``WORK/heads/``, kept for a rerun): the model learns from the masks the App makes. Then
``bidsreface-train`` runs on their list (``WORK/heads/heads.tsv``), and the model file, its
loss log and its summary (with the validation people) are copied into the package. With
``--region head`` each training head's region is its whole non-brain head
(:func:`bidsreface.reface.heads.head_region_row`, listed in ``WORK/heads/heads_head.tsv``)
and the run goes into ``WORK/run-head``.

The model file holds the mean training head on the box and the training heads' main modes of
variation (``--prior-modes``, principal components, each one standard deviation long): each
seed draws its own head to draw its face towards (``bidsreface.reface.infer.seeded_prior``).
``--prior-only`` makes these two again from the training heads and writes them into the
packaged model file, its generator's weights untouched.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "bidsreface" / "data" / "models"
#: Every VALIDATION_EVERY-th IXI person (sorted by number, the first included) is validation.
VALIDATION_EVERY = 4


def head_files(heads_dir: Path) -> list[Path]:
    """Every NIfTI head under ``heads_dir``."""
    return sorted(p for p in heads_dir.rglob("*.nii*") if p.name.endswith((".nii", ".nii.gz")))


def person_of(path: Path) -> str:
    """The person a head belongs to: ``IXI<nnn>`` for IXI files, the folder-level person
    letter of ``other/`` files (see ``benchmarks/cohort.py``), else the file's stem.

    >>> person_of(Path("ixi/IXI002-Guys-0828_T1w.nii.gz"))
    'IXI002'
    """
    match = re.match(r"(IXI\d+)", path.name)
    if match:
        return match.group(1)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from cohort import PEOPLE, stem

    return PEOPLE.get(stem(path), stem(path))


def split_people(heads_dir: Path) -> tuple[list[Path], list[Path]]:
    """``(training, validation)`` head files: see the module's docstring."""
    files = head_files(heads_dir)
    ixi = sorted({person_of(p) for p in files if person_of(p).startswith("IXI")},
                 key=lambda s: int(s[3:]))
    held = set(ixi[::VALIDATION_EVERY])
    training, validation = [], []
    for path in files:
        person = person_of(path)
        (training if person.startswith("IXI") and person not in held else validation
         ).append(path)
    return training, validation


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--heads", type=Path, required=True, help="folder of real heads")
    p.add_argument("--work", type=Path, default=ROOT / ".cache" / "model")
    p.add_argument("--nprocs", type=int, default=2)
    p.add_argument("--prior-modes", type=int, default=4)
    p.add_argument("--prior-scale", type=float, default=1.0)
    p.add_argument("--region", choices=("face", "head"), default="face",
                   help="the region the model fills: the face (reface_T1w.pt) or the whole "
                        "non-brain head (reface_T1w_head.pt, --reface-region head)")
    p.add_argument("--prior-only", action="store_true",
                   help="only make the packaged model's mean head and modes again")
    args, train_args = p.parse_known_args(argv)
    train_args += ["--prior-modes", str(args.prior_modes), "--prior-scale", str(args.prior_scale)]
    training, validation = split_people(args.heads)
    print(f"{len(training)} training heads, {len(validation)} validation heads")
    from bidsreface.reface.heads import deface_heads

    rows = deface_heads(training, args.work / "heads", nprocs=args.nprocs)
    failed = [r for r in rows if "error" in r]
    for row in failed:
        print(f"left out {row['name']}: {row['error']}")
    manifest = args.work / "heads" / "heads.tsv"
    run_dir = args.work / "run"
    if args.region == "head":
        manifest, run_dir = head_manifest(rows, args.work / "heads", args.nprocs), \
            args.work / "run-head"
    if args.prior_only:
        prior_only(manifest, run_dir / "pairs", args.prior_modes, args.prior_scale,
                   args.region)
        return 0
    from bidsreface.reface.train import main as train_main

    code = train_main([str(run_dir), str(manifest), "--region", args.region, *train_args])
    if code:
        return code
    package(run_dir, validation)
    return 0


def head_manifest(rows: list[dict], root: Path, nprocs: int) -> Path:
    """The defaced training heads with the whole non-brain head as their region
    (:func:`bidsreface.reface.heads.head_region_row`), listed in ``root/heads_head.tsv``."""
    from concurrent.futures import ProcessPoolExecutor

    from bidsreface.reface.heads import head_region_row, write_table

    rows = [r for r in rows if "error" not in r]
    with ProcessPoolExecutor(max(1, nprocs)) as pool:
        rows = list(pool.map(head_region_row, rows))
    path = root / "heads_head.tsv"
    write_table(rows, path)
    return path


def prior_only(manifest: Path, cache: Path, count: int, scale: float, region: str) -> None:
    """Write the mean of the training heads of ``manifest`` and their ``count`` main modes
    into the packaged model file of ``region`` (weights untouched) and its summary."""
    from bidsreface.reface.train import (
        cached_heads,
        find_inputs,
        mean_head,
        model_names,
        prior_modes,
    )
    from bidsreface.reface.weights import load_model, replace_prior

    path = MODELS / model_names(region)[1]
    model = load_model(path)
    pairs = cached_heads(find_inputs([str(manifest)]), model.box, cache,
                         seed=int(model.training.get("seed", 1)))
    mean = mean_head(pairs)
    change = float(abs(mean - model.prior.numpy()).max())
    modes = prior_modes(pairs, count, mean)
    note = {"count": len(modes), "scale": scale, "heads": len(pairs)}
    sha = replace_prior(path, mean, modes, scale, note)
    summary_file = path.with_suffix(".json")
    summary = json.loads(summary_file.read_text())
    summary.update({"sha256": sha, "prior_modes": note})
    summary_file.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{len(pairs)} training heads: mean head (changed by at most {change:.4f}) and "
          f"{len(modes)} modes written to {path}, sha256 {sha}")


def package(run_dir: Path, validation: list[Path]) -> None:
    """Copy a training run's model file, loss log and summary (with the validation people)
    into the package."""
    MODELS.mkdir(parents=True, exist_ok=True)
    summary = json.loads((run_dir / "model.json").read_text())
    summary["validation"] = [path.name for path in validation]
    target = MODELS / summary["file"]
    shutil.copyfile(run_dir / summary["file"], target)
    shutil.copyfile(run_dir / "loss.tsv", target.with_name(f"{target.stem}_loss.tsv"))
    target.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {MODELS / summary['file']} sha256 {summary['sha256']}")


if __name__ == "__main__":
    raise SystemExit(main())
