"""Benchmark a cohort: de-identify a folder of real heads as one BIDS dataset, image by image.

Usage::

    python benchmarks/cohort.py HEADS_DIR [--nprocs 2] [--limit N] [--chunk N] [--keep DIR]
    python benchmarks/cohort.py HEADS_DIR --reuse DIR     # measure an earlier --keep run

``HEADS_DIR`` holds NIfTI heads (``*.nii`` or ``*.nii.gz``, in subfolders too), one person per
file unless :data:`PEOPLE` (or ``HEADS_DIR/people.tsv``: file name, tab, person) says that
several files are one person's: those become sessions of one participant. The dataset is built
in a temporary folder, then the real ``bidsreface`` command runs the participant level
(``--nprocs N``, the default settings) and the group level, in child processes whose summed
resident memory is sampled (:func:`batch.timed_run`). With ``--chunk N`` the participant level
runs N participants at a time (``--participant-label``), people scanned more than once first,
so that a long run that is stopped has measured them; ``--reuse`` then measures what is done.

Per image: whether the QC found a face on the defaced render; the share of a reference face
region set to background (:func:`reference_face`: eyes, nose and lips found from the head's
own surface and brain, never from the registration, and kept at least 5 mm from the image's
own brain mask); the voxels of the image's own brain mask (the one the run made) changed in
the defaced and refaced images, and how many would have been in the face mask had the
template brain alone guarded it (``tpl alone``); head tissue removed (ml); the
registration's head overlap and correlation; and the seconds of each step from the QC
record. A failed image is listed with its one-line reason. The summary gives the counts
against the targets, the run's wall time per image and its peak memory. Faces are personal
data: nothing is rendered or written outside the temporary folder (or ``--keep DIR``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nb
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from batch import timed_run  # noqa: E402
from face_removal import GOAL_REMOVED, MARGIN_MM  # noqa: E402

#: Files of one person scanned several times (``../shared/heads/README.md``): person R on five
#: scanners, person X twice. Any other file is a person of its own.
PEOPLE = {
    "rorden_trio_b17_T1w_mprage": "R",
    "dcm_qa_asl_T1w_mprage_chris": "R",
    "chris_t1_niivue": "R",
    "brainchop_t1_crop": "R",
    "dcm_qa_decubitus_HFS_T1w_2d": "R",
    "dcm_qa_xa30_T1w_2mm_s5": "X",
    "dcm_qa_xa30_T1w_2mm_s6": "X",
}
#: Reference face region, in mm from the tip of the nose (RAS: x right, z up): the nose and
#: the lips, as bands of height and half width reaching ``depth`` mm behind the face's
#: surface, and the eye globes, spheres of ``radius`` mm centred ``x`` mm either side of the
#: mid-line, ``z`` mm above the tip and ``radius`` mm behind the surface (adult means: pupils
#: 63 mm apart, about 25 mm above the tip of the nose, globes 24 mm across).
NOSE = {"z": (-5.0, 30.0), "half_width": (0.0, 14.0), "depth": 20.0}
LIPS = {"z": (-40.0, -15.0), "half_width": (0.0, 25.0), "depth": 15.0}
EYES = {"x": 31.5, "z": 25.0, "radius": 12.0}
#: Nothing of the reference region lies further behind the tip of the nose (mm).
FACE_DEPTH_MM = 50.0


def stem(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".nii")


def find_heads(heads_dir: Path) -> dict[str, list[Path]]:
    """``{person: [files]}`` of the NIfTI heads under *heads_dir*."""
    people = dict(PEOPLE)
    table = heads_dir / "people.tsv"
    if table.is_file():
        people.update(line.split("\t")[:2] for line in table.read_text().splitlines()
                      if "\t" in line)
    found: dict[str, list[Path]] = {}
    for path in sorted(heads_dir.rglob("*.nii*")):
        if path.name.endswith((".nii", ".nii.gz")):
            found.setdefault(people.get(stem(path), stem(path)), []).append(path)
    return found


def participant_label(person: str) -> str:
    """A BIDS label from a person's name (letters and digits; IXI's number for IXI heads).

    >>> participant_label("IXI013-HH-1212_T1w"), participant_label("R")
    ('IXI013', 'R')
    """
    return "".join(c for c in person.split("-")[0] if c.isalnum())


def build_cohort(heads_dir: Path, root: Path, limit: int | None = None) -> dict[str, str]:
    """Write ``root/bids`` (one participant per person, one session per scan of a person
    scanned more than once); return ``{bids relative path: source file}``."""
    people = find_heads(heads_dir)
    # people scanned more than once first (see --chunk)
    people = dict(sorted(people.items(), key=lambda item: len(item[1]) == 1))
    if limit:
        people = dict(list(people.items())[:limit])
    bids, sources, rows = root / "bids", {}, ["participant_id\tsource"]
    for person, files in people.items():
        label = participant_label(person)
        for index, path in enumerate(files, start=1):
            ses = f"ses-{index}" if len(files) > 1 else None
            parts = [f"sub-{label}"] + ([ses] if ses else [])
            rel = "/".join([*parts, "anat", "_".join(parts) + "_T1w.nii.gz"])
            (bids / rel).parent.mkdir(parents=True, exist_ok=True)
            if path.name.endswith(".gz"):
                shutil.copyfile(path, bids / rel)
            else:
                nb.save(nb.load(path), bids / rel)
            sources[rel] = str(path)
        rows.append(f"sub-{label}\t{' '.join(stem(p) for p in files)}")
    (bids / "participants.tsv").write_text("\n".join(rows) + "\n")
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "bidsreface cohort benchmark", "BIDSVersion": "1.9.0", "DatasetType": "raw"}))
    (bids / "README").write_text(f"Real heads from {heads_dir}, one participant per person.\n")
    (root / "sources.json").write_text(json.dumps(sources, indent=1))
    return sources


# --------------------------------------------------------------------------- reference face


def reference_face(data: np.ndarray, affine: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Eyes, nose and lips of a head, from its own surface and brain, 5 mm from the brain.

    The head is the largest component above Otsu's air level; the tip of the nose is its
    most anterior voxel below the front of the brain and within 20 mm of the brain's
    mid-line. The nose and lips are the head tissue within their depth of the face's surface
    (the most anterior head voxel of each left-right, up-down column of 2 mm, in world mm;
    nothing more than 50 mm behind the tip) inside their bands around the tip (:data:`NOSE`,
    :data:`LIPS`); the eyes are the head tissue in two spheres (:data:`EYES`). Voxels closer
    than 5 mm to the brain are left out.
    """
    from scipy import ndimage

    from bidsreface.deface.register import head_mask

    head = head_mask(np.asarray(data, dtype=np.float32))
    ijk = np.argwhere(head)
    xyz = nb.affines.apply_affine(affine, ijk)
    brain_xyz = nb.affines.apply_affine(affine, np.argwhere(brain))
    mid_x = float(np.median(brain_xyz[:, 0]))
    front_z = float(np.percentile(brain_xyz[:, 2], 25))
    below = (xyz[:, 2] < front_z) & (np.abs(xyz[:, 0] - mid_x) < 20)
    tip = xyz[below][np.argmax(xyz[below][:, 1])]
    rel = xyz - tip
    # the face's surface: the most anterior head voxel of each 2 mm column (x, z)
    cols = np.round(rel[:, [0, 2]] / 2.0).astype(int)
    keys = cols[:, 0] * 100003 + cols[:, 1]
    order = np.argsort(keys)
    uniq, start = np.unique(keys[order], return_index=True)
    front = np.maximum.reduceat(rel[order, 1], start)
    depth = front[np.searchsorted(uniq, keys)] - rel[:, 1]
    # a column whose face the air threshold lost would take its surface at the back
    depth[rel[:, 1] < -FACE_DEPTH_MM] = np.inf
    inside = np.zeros(len(rel), bool)
    for part in (NOSE, LIPS):
        width = np.abs(rel[:, 0])
        inside |= ((rel[:, 2] >= part["z"][0]) & (rel[:, 2] <= part["z"][1])
                   & (width >= part["half_width"][0]) & (width <= part["half_width"][1])
                   & (depth <= part["depth"]))
    for side in (-1, 1):
        column = (np.abs(rel[:, 0] - side * EYES["x"]) < 2) & (np.abs(rel[:, 2] - EYES["z"]) < 2)
        if column.any():
            centre = np.array([side * EYES["x"], rel[column, 1].max() - EYES["radius"],
                               EYES["z"]])
            inside |= np.linalg.norm(rel - centre, axis=1) <= EYES["radius"]
    face = np.zeros(head.shape, bool)
    face[tuple(ijk[inside].T)] = True
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    far = ndimage.distance_transform_edt(~brain, sampling=zooms) >= MARGIN_MM
    return face & far


# --------------------------------------------------------------------------- measures


def work_file(work: Path, rel: str, node: str, name: str) -> Path | None:
    """A file the run wrote in the work folder of an image's node (``brainmask``,
    ``register``), or None."""
    key = "_".join(Path(rel).name.split("_")[1:]).split(".")[0]
    key = "".join(c if c.isalnum() else "_" for c in key)
    subject = rel.split("/")[0].removeprefix("sub-")
    found = sorted(work.rglob(f"sub_{subject}_wf/{node}_{key}/{name}"))
    return found[0] if found else None


def template_guard_alone(work: Path, rel: str, img: nb.Nifti1Image, brain: np.ndarray) -> int:
    """Voxels of the image's own brain inside the face mask the template brain alone (as
    carried by the run's registration) would have guarded, with the default margin."""
    from bidsreface.deface.mask import face_mask
    from bidsreface.deface.template import load_template

    matrix = work_file(work, rel, "register", "matrix.txt")
    distance = nb.load(work_file(work, rel, "register", "brain_distance.nii.gz"))
    mask, _ = face_mask(img.shape[:3], img.affine, np.loadtxt(matrix), load_template(),
                        brain_distance=(distance.get_fdata(dtype=np.float32), distance.affine))
    return int((mask & brain).sum())


def measure(root: Path, rel: str) -> dict:
    """The figures of one image from the run's outputs (see the module's docstring)."""
    from bidsreface.bids import AnatImage, derivative_path
    from bidsreface.deface.register import head_mask
    from bidsreface.derivatives import failure_path, qc_path
    from bidsreface.image import background_value, stored_values

    out = root / "out"
    image = AnatImage.from_path(root / "bids" / rel, root / "bids")
    row = {"image": rel}
    record_file = qc_path(out, image)
    if not record_file.is_file():
        failed = failure_path(out, image)
        if not failed.is_file():  # a stopped run had not reached it
            return {**row, "status": "not run", "outputs": False}
        reason = json.loads(failed.read_text()).get("reason", "?")
        return {**row, "status": "failed", "reason": reason, "outputs": False}
    record = json.loads(record_file.read_text())
    qc = record.get("qc") or {}
    raw_img = nb.load(root / "bids" / rel)
    raw = stored_values(root / "bids" / rel)
    shape = raw.shape
    outputs = {kind: derivative_path(out, image, desc=kind)
               for kind in ("defaced", "refaced")}
    outputs = {k: p for k, p in outputs.items() if p.is_file()}
    mask = np.asanyarray(nb.load(derivative_path(
        out, image, suffix="defacemask", extension=".nii.gz", mod=image.suffix)).dataobj
    ).reshape(shape) > 0
    brain_file = work_file(root / "work", rel, "brainmask", "brain_mask.nii.gz")
    brain = (np.asanyarray(nb.load(brain_file).dataobj).reshape(shape) > 0
             if brain_file else None)
    voxel_ml = abs(np.linalg.det(raw_img.affine[:3, :3])) / 1000
    head = head_mask(raw.astype(np.float32))
    defaced = stored_values(outputs["defaced"])
    row.update(status=record["status"], reason=record.get("reason", ""), outputs=True,
               face_detected=(qc.get("defaced") or {}).get("face_detected"),
               head_removed_ml=float((mask & head).sum() * voxel_ml),
               head_dice=qc.get("head_dice"), correlation=qc.get("correlation"),
               brain_guard=qc.get("brain_guard"),
               seconds=sum(v for k, v in (qc.get("seconds") or {}).items()
                           if v is not None and not k.startswith("qc_")))
    if brain is not None:
        row["brain_changed"] = int(sum(np.count_nonzero((raw != stored_values(p)) & brain)
                                       for p in outputs.values()))
        row["template_alone"] = template_guard_alone(root / "work", rel, raw_img, brain)
        face = reference_face(raw, raw_img.affine, brain)
        row["face_region_ml"] = float(face.sum() * voxel_ml)
        row["removed"] = (float((defaced[face] == background_value(raw)).mean())
                          if face.any() else float("nan"))
    return row


def fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec)


def report(rows: list[dict], run: dict) -> None:
    """Print the table and the summary."""
    print(f"{'image':44s} {'status':7s} {'face':>4s} {'removed':>7s} {'brain chg':>9s} "
          f"{'tpl alone':>9s} {'head ml':>7s} {'dice':>5s} {'corr':>5s} {'guard':>12s} {'s':>5s}")
    not_run = [r for r in rows if r["status"] == "not run"]
    rows = [r for r in rows if r["status"] != "not run"]
    for r in rows:
        if not r["outputs"]:
            print(f"{r['image']:44s} failed  {r['reason']}")
            continue
        print(f"{r['image']:44s} {r['status']:7s} {fmt(r['face_detected'], ''):>4s} "
              f"{fmt(r.get('removed'), '.4f'):>7s} {fmt(r.get('brain_changed'), 'd'):>9s} "
              f"{fmt(r.get('template_alone'), 'd'):>9s} {fmt(r['head_removed_ml'], '.1f'):>7s} "
              f"{fmt(r['head_dice'], '.3f'):>5s} "
              f"{fmt(r['correlation'], '.3f'):>5s} {fmt(r['brain_guard'], ''):>12s} "
              f"{fmt(r['seconds'], '.0f'):>5s}")
        if r["status"] != "ok":
            print(f"{'':44s} reason: {r['reason']}")
    done = [r for r in rows if r["outputs"]]
    failed_runs = [r for r in rows if not r["outputs"]]
    measured = [r for r in done if r.get("removed") is not None and not np.isnan(r["removed"])]
    n = len(rows)
    print()
    if not_run:
        print(f"not run yet (a stopped run): {len(not_run)} images")
    print(f"images: {n}; with outputs {len(done)}; failed with no outputs {len(failed_runs)}; "
          f"QC status ok {sum(r['status'] == 'ok' for r in done)}")
    print(f"face detected on the defaced render: {sum(bool(r['face_detected']) for r in done)} "
          f"of {len(done)} (target 0)")
    if measured:
        removed = [r["removed"] for r in measured]
        below = sum(v < GOAL_REMOVED for v in removed)
        print(f"reference face region removed: min {min(removed):.4f}, median "
              f"{np.median(removed):.4f}; {below} of {len(measured)} below {GOAL_REMOVED} "
              f"(target 0)")
    changed = [r["brain_changed"] for r in done if r.get("brain_changed") is not None]
    print(f"own brain voxels changed: {sum(changed)} in all; images with any: "
          f"{sum(c > 0 for c in changed)} of the {len(changed)} with an own brain mask "
          f"(target 0)")
    alone = [r["template_alone"] for r in done if r.get("template_alone") is not None]
    print(f"without the own brain (template brain alone guarding): {sum(alone)} own-brain "
          f"voxels in the face mask, in {sum(a > 0 for a in alone)} images of {len(alone)}")
    guards = {}
    for r in done:
        guards[r["brain_guard"]] = guards.get(r["brain_guard"], 0) + 1
    print(f"brain guard: {guards}")
    head = [r["head_removed_ml"] for r in done]
    if head:
        print(f"head tissue removed: median {np.median(head):.0f} ml "
              f"(range {min(head):.0f}-{max(head):.0f})")
        dice = [r["head_dice"] for r in done if r["head_dice"] is not None]
        corr = [r["correlation"] for r in done if r["correlation"] is not None]
        print(f"registration: head overlap min {min(dice):.3f} median {np.median(dice):.3f}; "
              f"correlation min {min(corr):.3f} median {np.median(corr):.3f}")
        secs = [r["seconds"] for r in done]
        print(f"seconds per image (registration, brain mask, defacing, refacing, QC; one "
              f"process each): median {np.median(secs):.0f}, max {max(secs):.0f}")
    if run:
        print(f"participant level: exit code {run['code']}, {run['seconds']:.0f} s wall for "
              f"{n} images ({run['seconds'] / max(n, 1):.1f} s per image with --nprocs "
              f"{run['nprocs']} on {os.cpu_count()} CPUs), peak memory of the process tree "
              f"{run['peak'] / 1e9:.2f} GB; {run['summary']}")
        print(f"group level: exit code {run['group_code']}, {run['group_seconds']:.0f} s, "
              f"peak {run['group_peak'] / 1e9:.2f} GB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("heads_dir", type=Path)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--limit", type=int, help="only the first N people")
    parser.add_argument("--chunk", type=int, help="run the participant level N people at a time")
    parser.add_argument("--keep", type=Path, help="build and run here, and keep it")
    parser.add_argument("--reuse", type=Path, help="measure the run kept in this folder")
    opts = parser.parse_args(argv)
    if not opts.heads_dir.is_dir():
        parser.error(f"{opts.heads_dir}: not a folder")

    with tempfile.TemporaryDirectory(prefix="bidsreface-cohort-") as tmp:
        root = opts.reuse or opts.keep or Path(tmp)
        run = {}
        if opts.reuse:
            sources = json.loads((root / "sources.json").read_text())
            if (root / "run.json").is_file():
                run = json.loads((root / "run.json").read_text())
        else:
            root.mkdir(parents=True, exist_ok=True)
            sources = build_cohort(opts.heads_dir, root, opts.limit)
            print(f"dataset: {len(sources)} images of "
                  f"{len({r.split('/')[0] for r in sources})} people", flush=True)
            command = [str(Path(sys.executable).with_name("bidsreface")), str(root / "bids"),
                       str(root / "out")]
            start = time.perf_counter()
            labels = list(dict.fromkeys(rel.split("/")[0].removeprefix("sub-")
                                        for rel in sources))
            chunk = opts.chunk or len(labels)
            seconds, peak, code, summaries = 0.0, 0, 0, []
            for first in range(0, len(labels), chunk):
                part = labels[first:first + chunk]
                took, part_peak, part_code, summary = timed_run(
                    [*command, "participant", "--nprocs", str(opts.nprocs), "-w",
                     str(root / "work"), "--participant-label", *part],
                    root / f"participant{first // chunk:03d}.log")
                seconds, peak, code = seconds + took, max(peak, part_peak), max(code, part_code)
                summaries.append(summary)
                print(f"participants {first + 1}-{first + len(part)} of {len(labels)}: "
                      f"{took:.0f} s, exit code {part_code}", flush=True)
            summary = " | ".join(summaries)
            group_seconds, group_peak, group_code, _ = timed_run(
                [*command, "group", "-w", str(root / "work")], root / "group.log")
            run = {"seconds": seconds, "peak": peak, "code": code, "summary": summary,
                   "nprocs": opts.nprocs, "chunk": chunk, "group_seconds": group_seconds,
                   "group_peak": group_peak, "group_code": group_code,
                   "total_seconds": time.perf_counter() - start}
            (root / "run.json").write_text(json.dumps(run))
        rows = [measure(root, rel) for rel in sorted(sources)]
        report(rows, run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
