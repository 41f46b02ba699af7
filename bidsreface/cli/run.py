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
            code = run_participant(settings)
        else:
            from ..workflows.group import run_group

            code = run_group(settings)
    except UsageError as err:
        print(f"bidsreface: error: {err}", file=sys.stderr)
        return 2
    if settings.export_bids is not None:
        from ..export import export_dataset

        try:
            export_dataset(settings)
        except UsageError as err:  # the target could not be written: the run itself is done
            print(f"bidsreface: error: {err}", file=sys.stderr)
            return 1
    return code


#: Plugins that run the nodes on this machine; the others submit them to a cluster scheduler.
LOCAL_PLUGINS = ("Linear", "MultiProc", "LegacyMultiProc")


def _configure_nipype(settings, plugin: str) -> None:
    from nipype import config
    from nipype import logging as nlogging

    # a local pool is polled often (nipype's default of 2 s wastes time on every step); a
    # cluster scheduler is asked once a second, not a hundred times (each poll is a squeue)
    config.set("execution", "poll_sleep_duration", "0.01" if plugin in LOCAL_PLUGINS else "1")
    config.set("execution", "crashfile_format", "txt")
    config.set("execution", "remove_unnecessary_outputs", "false")
    config.set("monitoring", "enabled", "false")
    level = "INFO" if settings.verbosity >= 2 else "WARNING"
    names = ("workflow_level", "interface_level", "utils_level")
    for name in names:
        config.set("logging", name, level)
    nlogging.update_logging(config)
    # worker processes start from a clean interpreter and read nipype's configuration anew:
    # hand them the same log levels through a configuration file of this run's
    config_dir = settings.work_dir / "nipype_config"
    config_dir.mkdir(parents=True, exist_ok=True)
    levels = "".join(f"{name} = {level}\n" for name in names)
    (config_dir / "nipype.cfg").write_text(f"[logging]\n{levels}")
    os.environ["NIPYPE_CONFIG_DIR"] = str(config_dir)


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


def execution_plugin(settings) -> tuple[str, dict]:
    """The nipype plugin and its arguments: ``--use-plugin``'s, else MultiProc (Linear for
    one process).

    MultiProc runs at most ``--gpu-procs`` GPU nodes (refacing on CUDA) at once, while CPU
    nodes use every ``--nprocs``.
    """
    if settings.use_plugin is not None:
        plugin = settings.use_plugin["plugin"]
        args = dict(settings.use_plugin["plugin_args"])
        if plugin in LOCAL_PLUGINS[1:]:
            args.setdefault("n_procs", settings.nprocs)
            args.setdefault("n_gpu_procs", settings.gpu_procs)
        return plugin, args
    if settings.nprocs == 1:
        return "Linear", {}
    # workers start from a clean process (forkserver), not a fork of this one: a fork inherits
    # the state of thread pools this process may already use (dlib, OpenMP) and then hangs
    args = {"n_procs": settings.nprocs, "n_gpu_procs": settings.gpu_procs,
            "raise_insufficient": False, "mp_context": "forkserver"}
    if settings.mem_gb:
        args["memory_gb"] = settings.mem_gb
    return "MultiProc", args


def resume_plan(images: dict, settings) -> tuple[dict, frozenset]:
    """Each image's fingerprint, and the images whose current outputs it matches (skipped)."""
    from ..resume import file_sha256, fingerprint, is_current
    from ..workflows.participant import reface_plan, session_references

    fingerprints, done = {}, set()
    model_sums: dict[str, str] = {}
    for subject_images in images.values():
        references = session_references(subject_images)
        for image in subject_images:
            _, model = reface_plan(image, settings)
            if model is not None and model not in model_sums:
                model_sums[model] = file_sha256(model)
            fingerprints[image] = fingerprint(image, references[image], settings,
                                              model_sums.get(model))
            if is_current(settings.output_dir, image, fingerprints[image]):
                done.add(image)
    return fingerprints, frozenset(done)


def run_participant(settings) -> int:
    """Participant level: every selected image of every selected participant."""
    from nipype.pipeline import engine as pe

    from ..bids import collect_images, remove_temporaries, write_dataset_description
    from ..derivatives import qc_path, write_failure
    from ..workflows.participant import init_participant_wf

    images, warnings = collect_images(settings)
    for warning in warnings:
        print(f"bidsreface: warning: {warning}", file=sys.stderr)
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    write_dataset_description(settings.output_dir, settings.bids_dir,
                              generated_by_model(settings))
    plugin, plugin_args = execution_plugin(settings)
    _configure_nipype(settings, plugin)

    for subject in images:  # what a killed run was writing
        remove_temporaries(settings.output_dir / f"sub-{subject}")
    fingerprints, done = resume_plan(images, settings)
    if done:
        print(f"bidsreface: {len(done)} images already de-identified with the same inputs and "
              f"settings: skipped", file=sys.stderr)
    workflow = pe.Workflow(name="bidsreface_wf", base_dir=str(settings.work_dir))
    for subject, subject_images in images.items():
        if all(image in done for image in subject_images):
            continue
        workflow.add_nodes([init_participant_wf(subject, subject_images, settings,
                                                fingerprints=fingerprints, skip=done)])
    total = sum(len(v) for v in images.values())
    started = time.time() - 1
    if len(done) < total:
        try:
            workflow.run(plugin=plugin, plugin_args=plugin_args)
        except RuntimeError as err:  # raised after the run when some node failed
            LOGGER.info("workflow finished with errors: %s", err)

    failed = 0
    for subject, subject_images in images.items():
        for image in subject_images:
            if image in done:
                continue
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
          + (f" ({len(done)} of them by an earlier run)" if done else "")
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
