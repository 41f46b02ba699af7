"""Progress of a participant-level run: one line on stderr per finished image.

``bidsreface: [12/152] sub-012 T1w: ok, 14 s; about 25 min left`` (the seconds the image's
steps ran, and the time left from the work done) or
``bidsreface: [13/152] sub-013 T1w: failed: <reason>``. The lines come from nipype's status
callback (``plugin_args["status_callback"]``), which every plugin but the graph-submitting
ones calls in the main process when a node starts, ends or raises; the images that never
reached a callback (an earlier step they depend on failed, or a graph plugin ran them) get
their line when the run is over (:meth:`Progress.finish`). The same lines go to a terminal and
to a batch log.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .bids import AnatImage

#: nipype plugins that submit the whole graph at once: they call no status callback.
GRAPH_PLUGINS = ("SLURMGraph", "SGEGraph", "PBSGraph", "DAGMan")


def image_label(image: AnatImage) -> str:
    """How a progress line names an image: its file name's entities and suffix.

    >>> image_label(AnatImage.from_path("/d/sub-01/ses-1/anat/sub-01_ses-1_run-2_T1w.nii"))
    'sub-01 ses-1 run-2 T1w'
    """
    return image.path.name.split(".")[0].replace("_", " ")


def duration(seconds: float) -> str:
    """A short human duration.

    >>> duration(14.2), duration(95), duration(3 * 3600 + 125)
    ('14 s', '2 min', '3 h 02 min')
    """
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def time_left(elapsed: float, done: int, total: int) -> str:
    """The time left, estimated from the images done so far ("" when all are done).

    >>> time_left(600.0, 10, 40)
    'about 30 min left'
    >>> time_left(600.0, 40, 40)
    ''
    """
    if done >= total or done <= 0:
        return ""
    return f"about {duration(elapsed / done * (total - done))} left"


def work_left(elapsed: float, busy_done: list[float], busy_all: float, total: int) -> str:
    """The time left, estimated from the work done rather than the images done.

    nipype runs the images' steps side by side (every registration, then every brain
    mask...), so the first images finish late although most of the work is done. Each image
    is taken to need the mean step time of the images done (*busy_done*, seconds); *busy_all*
    is the step time spent so far on every image, done or not; the rate is that over
    *elapsed*. :func:`steps_left` is used when the steps an image needs are known.

    >>> work_left(600.0, [60.0], 1200.0, 25)   # 1 of 25 done, 1200 of 1500 s of work done
    'about 2 min left'
    >>> work_left(600.0, [60.0] * 25, 1500.0, 25)
    ''
    """
    done = len(busy_done)
    if done >= total or done <= 0:
        return ""
    if busy_all <= 0 or elapsed <= 0:
        return time_left(elapsed, done, total)
    remaining = max(0.0, sum(busy_done) / done * total - busy_all)
    return f"about {duration(remaining * elapsed / busy_all)} left"


def steps_left(elapsed: float, busy_all: float, step_seconds: dict[str, list[float]],
               missing: list[set[str]]) -> str:
    """The time left from the steps the images not done still miss.

    *step_seconds*: the seconds of every finished step, by kind (``register``, ``deface``...);
    *missing*: for each image not done, the kinds of step it has not finished. Each missing
    step is taken to need the mean time of its kind; the work left is turned into wall time
    at the rate of the run so far (*busy_all* seconds of steps in *elapsed*). Unlike the
    images' mean (:func:`work_left`), this holds when large images, whose first steps are
    done, finish last.

    >>> steps_left(60.0, 60.0, {"register": [10.0, 10.0, 30.0], "reface": [10.0]},
    ...            [{"reface"}, {"reface"}])
    'about 20 s left'
    """
    if not missing or busy_all <= 0 or elapsed <= 0:
        return ""
    means = {kind: sum(values) / len(values) for kind, values in step_seconds.items() if values}
    remaining = sum(means.get(kind, 0.0) for kinds in missing for kind in kinds)
    return f"about {duration(remaining * elapsed / busy_all)} left"


def crash_reason(text: str, image: AnatImage) -> str:
    """The exception message of a nipype crash file, without the image's own path.

    >>> img = AnatImage.from_path("/d/sub-1/anat/sub-1_T1w.nii", "/d")
    >>> crash_reason("Traceback...\\nbidsreface.errors.ImageError: /d/sub-1/anat/"
    ...              "sub-1_T1w.nii: 2D image\\n", img)
    '2D image'
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    message = ""
    for line in lines:
        head, sep, rest = line.partition(": ")
        if sep and (head.endswith("Error") or head.endswith("Exception")):
            message = rest
    if not message:
        return "failed (see the crash file in the log folder)"
    for prefix in (f"{image.path}: ", f"{image.relpath}: "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    return message


def qc_warnings(image: AnatImage, record_path: Path) -> list[str]:
    """The flags of an image's QC record that a curator must look at (the group table's, see
    :func:`bidsreface.reports.tables.flags`), one line each naming the image and its report;
    a failure is said on the image's own line, not here.

    >>> import json, tempfile
    >>> record = {"status": "ok", "outputs": {"defaced": "anat/x.nii.gz"},
    ...           "qc": {"defaced": {"head_scale_change": -0.21}}}
    >>> path = Path(tempfile.mkdtemp()) / "qc.json"
    >>> _ = path.write_text(json.dumps(record))
    >>> qc_warnings(AnatImage.from_path("/d/sub-01/anat/sub-01_T1w.nii.gz", "/d"), path)
    ['sub-01 T1w: implausible registration of the defaced head: head size -21% vs the \
original (see sub-01.html)']
    """
    from .reports.tables import flags

    record = json.loads(Path(record_path).read_text(encoding="utf-8"))
    return [f"{image_label(image)}: {flag} (see sub-{image.subject}.html)"
            for flag in flags(record) if not flag.startswith("failed ")]


class Progress:
    """Prints a line as each image of the run finishes, and keeps why each one failed.

    Parameters
    ----------
    nodes
        ``{(workflow name, node key): image}``: the participant workflow's name and the key
        that follows the step's prefix in its node names (``register_<key>``...).
    output_dir
        Where the QC records and the crash files (``sub-<label>/log``) are written.
    stream
        Where the lines go (stderr).
    clock
        Seconds, monotonic (:func:`time.monotonic`); given by tests.
    """

    def __init__(self, nodes: dict[tuple[str, str], AnatImage], output_dir: Path,
                 stream=None, clock=time.monotonic):
        self.nodes = dict(nodes)
        self.order = {image: i for i, image in enumerate(dict.fromkeys(self.nodes.values()))}
        self.total = len(set(self.nodes.values()))
        self.output_dir = Path(output_dir)
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.started_at = clock()
        self.wall_started = time.time()
        self.node_start: dict[str, float] = {}
        self.busy: dict[AnatImage, float] = {}  # seconds its finished steps ran
        self.steps: dict[AnatImage, set[str]] = {}  # the kinds of step it finished
        self.step_seconds: dict[str, list[float]] = {}  # every finished step's, by kind
        self.outcomes: dict[AnatImage, tuple[str, str]] = {}
        self.pending: list[tuple[AnatImage, str]] = []
        self.over = False  # the run is over: no time left to estimate

    # ------------------------------------------------------------------ nipype's callback

    def image_of(self, node) -> tuple[AnatImage | None, str]:
        """The image a nipype node works on, and the node's name."""
        parts = str(getattr(node, "fullname", node.name)).split(".")
        name = parts[-1]
        workflow = parts[-2] if len(parts) > 1 else ""
        _, _, key = name.partition("_")
        return self.nodes.get((workflow, key)), name

    def rank(self, node) -> int | None:
        """The order of the image a node works on (None: a node of no image), by which
        :class:`bidsreface.plugin.ImageOrderPlugin` runs the images one after the other."""
        return self.order.get(self.image_of(node)[0])

    def __call__(self, node, status: str) -> None:
        """nipype's ``status_callback``: *status* is ``start``, ``end`` or ``exception``."""
        image, name = self.image_of(node)
        self.flush()
        if image is None or image in self.outcomes:
            return
        now, node_id = self.clock(), str(getattr(node, "fullname", name))
        if status == "start":
            self.node_start[node_id] = now
            return
        began = self.node_start.pop(node_id, now)
        self.busy[image] = self.busy.get(image, 0.0) + now - began
        if status == "end":
            kind = name.partition("_")[0]
            self.steps.setdefault(image, set()).add(kind)
            self.step_seconds.setdefault(kind, []).append(now - began)
        if status == "exception":
            reason = self.result_file_reason(node, image)
            if reason is not None:
                self.report(image, "failed", reason)
            else:  # nipype writes the crash file right after this call: read at the next one
                self.pending.append((image, name))
        elif status == "end" and name.startswith("ds_"):
            self.record_done(image)

    def record_done(self, image: AnatImage) -> None:
        """The image's outputs are written: its line says whether they passed QC."""
        from .derivatives import qc_path

        try:
            record = json.loads(qc_path(self.output_dir, image).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            self.report(image, "failed", f"its QC record cannot be read ({err})")
            return
        if record.get("status") == "ok":
            self.report(image, "ok", "")
        else:
            self.report(image, "failed", f"failed QC: {record.get('reason', '')}")

    def flush(self) -> None:
        """Report the failures whose crash files are now written."""
        still = []
        for image, name in self.pending:
            reason = self.crash_file_reason(image, name)
            if reason is None:
                still.append((image, name))
            elif image not in self.outcomes:
                self.report(image, "failed", reason)
        self.pending = still

    @staticmethod
    def result_file_reason(node, image: AnatImage) -> str | None:
        """The reason in the result file a node that raised left in its folder (None when it
        left none: the crash file will say)."""
        import pickle

        from nipype.utils.filemanip import loadpkl

        try:
            folder = Path(node.output_dir())
            results = sorted(folder.glob("result_*.pklz"))
            traceback = getattr(getattr(loadpkl(str(results[0])), "runtime", None),
                                "traceback", None) if results else None
        except (OSError, EOFError, AttributeError, ValueError, pickle.UnpicklingError):
            return None
        return crash_reason(str(traceback), image) if traceback else None

    def crash_file_reason(self, image: AnatImage, name: str) -> str | None:
        """The reason in this run's crash file of node *name* (None: not written yet)."""
        log_dir = self.output_dir / f"sub-{image.subject}" / "log"
        for crash in sorted(log_dir.glob(f"crash-*-{name}-*.txt")):
            if crash.stat().st_mtime >= self.wall_started - 1:
                return crash_reason(crash.read_text(errors="replace"), image)
        return None

    # ------------------------------------------------------------------ lines

    def report(self, image: AnatImage, status: str, reason: str) -> None:
        """Print the image's line (once) and keep its outcome."""
        if image in self.outcomes:
            return
        self.outcomes[image] = (status, reason)
        now = self.clock()
        done = len(self.outcomes)
        line = f"bidsreface: [{done}/{self.total}] {image_label(image)}: "
        if status == "ok":
            # no callback reached its steps (a graph plugin ran them): the run's time so far
            seconds = self.busy[image] if image in self.busy else now - self.started_at
            line += f"ok, {duration(seconds)}"
        else:
            line += f"failed: {reason}"
        left = "" if self.over else self.time_left(now)
        print(line + (f"; {left}" if left else ""), file=self.stream, flush=True)

    def time_left(self, now: float) -> str:
        """The time left: from the steps the images not done miss (:func:`steps_left`), the
        steps an image needs being those that the images done with the same suffix (any
        image done, when none has it) ran; from the images' mean work (:func:`work_left`)
        before an image is done."""
        if len(self.outcomes) >= self.total:
            return ""
        elapsed, busy_all = now - self.started_at, sum(self.busy.values())
        ran = [(image.suffix, self.steps.get(image, set()))
               for image, (status, _) in self.outcomes.items() if status == "ok"]
        if not ran:
            busy_done = [self.busy.get(i, 0.0) for i in self.outcomes]
            return work_left(elapsed, busy_done, busy_all, self.total)
        every = set().union(*(kinds for _, kinds in ran))
        missing = []
        for image in set(self.nodes.values()) - set(self.outcomes):
            needs = set().union(*(kinds for suffix, kinds in ran if suffix == image.suffix))
            missing.append((needs or every) - self.steps.get(image, set()))
        return steps_left(elapsed, busy_all, self.step_seconds, missing)

    def failure(self, image: AnatImage) -> str | None:
        """Why *image* failed in this run (None: it did not, or is not reported yet)."""
        status, reason = self.outcomes.get(image, ("", ""))
        return reason if status == "failed" else None

    def finish(self, outcomes: dict[AnatImage, tuple[str, str]]) -> None:
        """After the run: report what the callbacks could not (*outcomes*: ``{image:
        (status, reason)}`` as found from the records and crash files)."""
        self.flush()
        self.pending = []  # no crash file of this run: the outcomes given decide
        self.over = True
        for image, (status, reason) in outcomes.items():
            self.report(image, status, reason)
