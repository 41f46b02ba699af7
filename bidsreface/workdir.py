"""The work folder: a default of its own per dataset and output, a lock held for the run, and
nipype's cache made safe to reuse.

Two runs in one work folder run the same nipype nodes in the same folders: each empties the
other's node folders, both fail with ``[Errno 2]``, and a node can be left with a hash file
that says it is done beside a result file with no outputs (the other run's failure), which
every later run takes as cached ("the results file of the source node ... does not contain
any outputs"). So a run holds a lock on its work folder (:func:`hold_work_dir`), a second run
on it is refused at once, and a run that finds the folder of an earlier one (killed, or from
before the lock) removes every node folder whose results are not complete
(:func:`remove_incomplete_nodes`).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import shutil
import socket
from pathlib import Path

from .errors import UsageError

#: The lock file inside the work folder.
LOCK_NAME = "bidsreface.lock"
#: The folder of bidsreface's participant workflow inside the work folder (nipype's cache).
WORKFLOW_NAME = "bidsreface_wf"


def default_work_dir(bids_dir: Path, output_dir: Path, temp_dir: Path) -> Path:
    """The work folder when ``-w`` is not given: one per dataset and output folder, in the
    temp dir, so that runs on other datasets or into other outputs never share one.

    >>> default_work_dir(Path("/data/ds1"), Path("/out/a"), Path("/tmp")).name
    'bidsreface_work_a-7048e978aea7'
    >>> len({default_work_dir(Path(b), Path(o), Path("/tmp"))
    ...      for b, o in (("/ds1", "/o"), ("/ds2", "/o"), ("/ds1", "/p"))})
    3
    """
    key = hashlib.sha256(f"{Path(bids_dir)}\0{Path(output_dir)}".encode()).hexdigest()[:12]
    return Path(temp_dir) / f"bidsreface_work_{Path(output_dir).name}-{key}"


def holder_line(holder: dict) -> str:
    """How the refusal names the run that holds the lock.

    >>> holder_line({"pid": 12, "host": "node1", "started": "2026-01-02 03:04:05",
    ...              "command": "bidsreface /d /o participant"})
    'pid 12 on node1, started 2026-01-02 03:04:05: bidsreface /d /o participant'
    >>> holder_line({})
    'a run that has not yet said who it is'
    """
    if not holder.get("pid"):
        return "a run that has not yet said who it is"
    return (f"pid {holder['pid']} on {holder.get('host', '?')}, started "
            f"{holder.get('started', '?')}: {holder.get('command', '?')}")


def _read_holder(handle) -> dict:
    handle.seek(0)
    try:
        holder = json.loads(handle.read() or "{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


@contextlib.contextmanager
def hold_work_dir(work_dir: Path, command: str):
    """Hold the work folder's lock while the block runs (*command*: the run's command line,
    recorded for whoever is refused); on entry, remove what an earlier run left incomplete.
    A work folder that this run made and left empty (a usage error found after the lock was
    taken) is removed again, with its lock file.

    Raises
    ------
    UsageError
        When another run holds the lock (exit 2, nothing written but the folder itself).
    """
    work_dir = Path(work_dir)
    lock_path = work_dir / LOCK_NAME
    created = not work_dir.exists()
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as err:
        raise UsageError(f"work directory {work_dir} cannot be written ({err.strerror}); "
                         f"choose another with -w/--work-dir") from None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"work directory {work_dir} is in use by another bidsreface run "
                f"({holder_line(_read_holder(handle))}); wait for it to finish, or give "
                f"another -w/--work-dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "started": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %z"),
        }))
        handle.flush()
        try:
            remove_incomplete_nodes(work_dir / WORKFLOW_NAME)
            yield lock_path
        finally:
            handle.seek(0)
            handle.truncate()  # free: no holder to name
            handle.flush()
            unused = created and [p.name for p in work_dir.iterdir()] == [LOCK_NAME]
            if unused:  # removed while held: no other run can have taken it
                lock_path.unlink()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    if unused:
        work_dir.rmdir()


def node_folders(workflow_dir: Path) -> list[Path]:
    """nipype's node folders under *workflow_dir*: those holding a node's files
    (``_node.pklz``, a hash file ``_0x*.json`` or a result file ``result_*.pklz``)."""
    found = set()
    for pattern in ("_node.pklz", "_0x*.json", "result_*.pklz"):
        found.update(path.parent for path in Path(workflow_dir).rglob(pattern))
    return sorted(found)


def incomplete_reason(folder: Path) -> str | None:
    """Why a node folder cannot be reused as cached (None: its results are complete).

    Complete: one finished hash file, no unfinished one, a result file that loads, holds
    outputs, and whose output files inside the folder exist. nipype would rerun a folder
    without a finished hash file, but takes one with a finished hash file as done even when
    its result has no outputs.
    """
    from nipype.utils.filemanip import loadpkl

    hashes = sorted(folder.glob("_0x*.json"))
    if any(path.name.endswith("_unfinished.json") for path in hashes):
        return "a run stopped while running it"
    if not hashes:
        return "no finished hash file"
    if len(hashes) > 1:
        return "several hash files"
    results = sorted(folder.glob("result_*.pklz"))
    if len(results) != 1:
        return "no result file"
    try:
        outputs = getattr(loadpkl(str(results[0])), "outputs", None)
    except Exception as err:  # noqa: BLE001 - any unreadable pickle means: run it again
        return f"its result file cannot be read ({type(err).__name__})"
    if outputs is None:
        return "its result file holds no outputs"
    values = outputs.get() if hasattr(outputs, "get") else dict(outputs)
    for value in _paths(values):
        path = Path(value)
        if path.is_absolute() and path.is_relative_to(folder) and not path.exists():
            return f"its output {path.name} is missing"
    return None


def _paths(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _paths(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _paths(item)


def remove_incomplete_nodes(workflow_dir: Path) -> list[tuple[Path, str]]:
    """Remove the node folders under *workflow_dir* (bidsreface's own workflow folder only)
    whose results are incomplete (:func:`incomplete_reason`), so that they are run again;
    returns ``(folder, reason)`` of each."""
    workflow_dir = Path(workflow_dir)
    if workflow_dir.name != WORKFLOW_NAME:
        raise ValueError(f"{workflow_dir} is not bidsreface's workflow folder")
    if not workflow_dir.is_dir():
        return []
    removed = []
    for folder in node_folders(workflow_dir):
        reason = incomplete_reason(folder)
        if reason is not None:
            shutil.rmtree(folder)
            removed.append((folder, reason))
    return removed
