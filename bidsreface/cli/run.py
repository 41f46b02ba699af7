"""``bidsreface`` entry point: parse, build and run the workflows, report, exit code.

Exit codes: 0 every selected image was de-identified (or the group outputs were written),
1 some image or participant failed, 2 usage error (nothing was run).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from ..errors import UsageError

LOGGER = logging.getLogger("bidsreface")


def main(argv: list[str] | None = None) -> int:
    """Run bidsreface; return the exit code."""
    os.environ.setdefault("NIPYPE_NO_ET", "1")  # no update check over the network
    # reproducible registrations: see bidsreface.deface.register._seed_ants
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    from .parser import parse_args

    try:
        settings = parse_args(argv)
    except UsageError as err:
        print(f"bidsreface: error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING - 10 * min(settings.verbosity, 2),
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        if settings.analysis_level == "participant":
            return run_participant(settings)
        from ..workflows.group import run_group

        return run_group(settings)
    except UsageError as err:
        print(f"bidsreface: error: {err}", file=sys.stderr)
        return 2


def _configure_nipype(settings) -> None:
    from nipype import config
    from nipype import logging as nlogging

    config.set("execution", "poll_sleep_duration", "0.01")
    config.set("execution", "crashfile_format", "txt")
    config.set("execution", "remove_unnecessary_outputs", "false")
    config.set("monitoring", "enabled", "false")
    level = "INFO" if settings.verbosity >= 2 else "WARNING"
    for name in ("workflow_level", "interface_level", "utils_level"):
        config.set("logging", name, level)
    nlogging.update_logging(config)


def generated_by_model(settings) -> dict | None:
    """What ``dataset_description.json`` says of the refacing (its model and checksum)."""
    if settings.reface == "none":
        return None
    if settings.reface == "template":
        return {"Description": "Defaced, then refaced with the template's face (T1w)."}
    from ..reface.weights import load_model

    model = load_model(settings.reface_model)
    return {"Description": f"Defaced, then refaced with the 3D cGAN model {model.name} "
                           f"(sha256 {model.sha256}) for T1w; other contrasts defaced only.",
            "Model": {"Name": model.name, "SHA256": model.sha256}}


def run_participant(settings) -> int:
    """Participant level: every selected image of every selected participant."""
    from nipype.pipeline import engine as pe

    from ..bids import collect_images, write_dataset_description
    from ..derivatives import qc_path, write_failure
    from ..workflows.participant import init_participant_wf

    images, warnings = collect_images(settings)
    for warning in warnings:
        print(f"bidsreface: warning: {warning}", file=sys.stderr)
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    write_dataset_description(settings.output_dir, settings.bids_dir,
                              generated_by_model(settings))
    _configure_nipype(settings)

    workflow = pe.Workflow(name="bidsreface_wf", base_dir=str(settings.work_dir))
    for subject, subject_images in images.items():
        workflow.add_nodes([init_participant_wf(subject, subject_images, settings)])
    # workers start from a clean process (forkserver), not a fork of this one: a fork inherits
    # the state of thread pools this process may already use (dlib, OpenMP) and then hangs
    plugin_args = {"n_procs": settings.nprocs, "raise_insufficient": False,
                   "mp_context": "forkserver"}
    if settings.mem_gb:
        plugin_args["memory_gb"] = settings.mem_gb
    started = time.time() - 1
    try:
        workflow.run(plugin="MultiProc" if settings.nprocs > 1 else "Linear",
                     plugin_args=plugin_args)
    except RuntimeError as err:  # raised after the run when some node failed
        LOGGER.info("workflow finished with errors: %s", err)

    failed = 0
    total = sum(len(v) for v in images.values())
    for subject, subject_images in images.items():
        for image in subject_images:
            record = qc_path(settings.output_dir, image)
            if record.is_file() and record.stat().st_mtime >= started:
                qc_failure = _qc_failure(record)
                if qc_failure:  # outputs kept for inspection, the image counted failed
                    print(f"bidsreface: error: {image.relpath}: failed QC: {qc_failure}",
                          file=sys.stderr)
                    failed += 1
                continue
            reason = _failure_reason(settings.output_dir / f"sub-{subject}" / "log", image,
                                     started)
            write_failure(image, settings.output_dir, reason)
            print(f"bidsreface: error: {image.relpath}: {reason}", file=sys.stderr)
            failed += 1
    from ..reports.participant import write_participant_report

    for subject in images:  # after the failures are recorded: the reports list them
        write_participant_report(settings.output_dir, subject)
    print(f"bidsreface: {total - failed} of {total} images de-identified"
          + (f", {failed} failed (see the sub-*/log folders)" if failed else ""),
          file=sys.stderr)
    return 1 if failed else 0


def _qc_failure(record_path: Path) -> str:
    """The reasons an image failed its QC (empty when it passed)."""
    import json

    record = json.loads(record_path.read_text())
    return record.get("reason", "") if record.get("status") != "ok" else ""


def _failure_reason(log_dir: Path, image, since: float) -> str:
    """The error of the first crash file (of this run) that names the image."""
    needle = str(image.path)
    for crash in sorted(log_dir.glob("crash-*.txt"), key=lambda p: p.stat().st_mtime):
        if crash.stat().st_mtime < since:
            continue
        text = crash.read_text(errors="replace")
        if needle not in text:
            continue
        return _last_error_line(text, needle, image.relpath)
    return "not processed: an earlier step it depends on failed (its session's T1w)"


def _last_error_line(text: str, needle: str, relpath: str) -> str:
    """The exception message of a nipype crash file, without the file's own path.

    >>> _last_error_line("Traceback...\\nbidsreface.errors.ImageError: /d/x.nii: bad\\n",
    ...                  "/d/x.nii", "x.nii")
    'bad'
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    message = ""
    for line in lines:
        head, sep, rest = line.partition(": ")
        if sep and (head.endswith("Error") or head.endswith("Exception")):
            message = rest
    if not message:
        return "failed (see the crash file in the log folder)"
    for prefix in (f"{needle}: ", f"{relpath}: "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    return message
