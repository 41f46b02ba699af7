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
            from ..workdir import hold_work_dir

            command = " ".join(["bidsreface", *(sys.argv[1:] if argv is None else argv)])
            with hold_work_dir(settings.work_dir, command):  # a second run is refused
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


def _configure_nipype(settings, plugin: str) -> logging.Handler:
    """Set nipype's options and route its log to a run log file.

    nipype's messages (a failed node's traceback among them) go to
    ``<output_dir>/log/bidsreface_<time>_<pid>.log``, made at the first message (a run
    without any writes none), and to the terminal only with ``-v``; the terminal gets one
    line per image instead (:mod:`bidsreface.progress`). Returns the file's handler, which
    the caller closes.
    """
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
    nipype_logger = logging.getLogger("nipype")
    for handler in list(nipype_logger.handlers):  # nipype's own, to stdout; or an earlier run's
        if isinstance(handler, logging.StreamHandler):
            nipype_logger.removeHandler(handler)
            if isinstance(handler, logging.FileHandler):
                handler.close()
    log_file = settings.output_dir / "log" / (
        f"bidsreface_{time.strftime('%Y%m%d-%H%M%S')}_{os.getpid()}.log")
    handler = _LazyFileHandler(log_file, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    nipype_logger.addHandler(handler)
    nipype_logger.propagate = settings.verbosity >= 1  # to the terminal's handler
    # worker processes start from a clean interpreter and read nipype's configuration anew
    # (their messages go to their stdout): hand them the log levels through a configuration
    # file of this run, errors only unless -v (the crash files hold the tracebacks)
    worker_level = level if settings.verbosity >= 1 else "ERROR"
    config_dir = settings.work_dir / "nipype_config"
    config_dir.mkdir(parents=True, exist_ok=True)
    levels = "".join(f"{name} = {worker_level}\n" for name in names)
    (config_dir / "nipype.cfg").write_text(f"[logging]\n{levels}")
    os.environ["NIPYPE_CONFIG_DIR"] = str(config_dir)
    return handler


class _LazyFileHandler(logging.FileHandler):
    """A file handler that makes its file, and its folder, at the first message."""

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def generated_by_model(settings) -> dict | None:
    """What ``dataset_description.json`` says of the refacing (its model and checksum)."""
    if settings.reface == "none":
        return None
    if settings.reface == "template":
        return {"Description": "Defaced, then refaced with the template's face (T1w)."}
    if settings.reface == "prior":
        from ..reface.prior import load_prior

        prior = load_prior()
        return {"Description": f"Defaced, then refaced with a head drawn from the population "
                               f"prior {prior.name} (sha256 {prior.sha256}) by each "
                               f"participant's seed (T1w); other contrasts defaced only.",
                "Model": {"Name": prior.name, "SHA256": prior.sha256}}
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


def plugin_runner(plugin: str, plugin_args: dict, rank):
    """What ``workflow.run`` is given: MultiProc as :class:`bidsreface.plugin.ImageOrderPlugin`
    (the earliest image's ready step first, *rank* giving a node's image order), any other
    plugin by its name."""
    if plugin != "MultiProc":
        return plugin
    from ..plugin import ImageOrderPlugin

    return ImageOrderPlugin(plugin_args={**plugin_args, "rank": rank})


def resume_plan(images: dict, settings) -> tuple[dict, frozenset]:
    """Each image's fingerprint, and the images whose current outputs it matches (skipped)."""
    from ..collection import collection_leaders, whole_collections
    from ..resume import file_sha256, fingerprint, is_current
    from ..workflows.participant import reface_plan, session_references

    fingerprints, done = {}, set()
    model_sums: dict[str, str] = {}
    for subject_images in images.values():
        references = session_references(subject_images)
        leaders = collection_leaders(subject_images)
        current = set()
        for image in subject_images:
            _, model = reface_plan(image, settings)
            if model is not None and model not in model_sums:
                model_sums[model] = file_sha256(model)
            # a collection member's mask is its leader's: the leader's file counts as its own
            fingerprints[image] = fingerprint(image, leaders.get(image, references[image]),
                                              settings, model_sums.get(model))
            if is_current(settings.output_dir, image, fingerprints[image]):
                current.add(image)
        done |= whole_collections(current, leaders)  # a collection is redone as a whole
    return fingerprints, frozenset(done)


def run_participant(settings) -> int:
    """Participant level: every selected image of every selected participant."""
    from collections import Counter

    from nipype.pipeline import engine as pe

    from ..bids import collect_images, remove_temporaries, write_dataset_description
    from ..derivatives import qc_path, write_failure
    from ..progress import GRAPH_PLUGINS, Progress, qc_warnings
    from ..workflows.participant import init_participant_wf, node_key, workflow_name

    images, warnings = collect_images(settings)
    for warning in warnings:
        print(f"bidsreface: warning: {warning}", file=sys.stderr)
    total = sum(len(v) for v in images.values())
    counts = Counter(image.suffix for v in images.values() for image in v)
    print(f"bidsreface: {total} images of {len(images)} participants selected: "
          + ", ".join(f"{n} {suffix}" for suffix, n in sorted(counts.items())),
          file=sys.stderr)
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    write_dataset_description(settings.output_dir, settings.bids_dir,
                              generated_by_model(settings))
    plugin, plugin_args = execution_plugin(settings)
    log_handler = _configure_nipype(settings, plugin)
    try:  # nibabel's messages on the headers read first go to the run log too
        selected, images, rejected = images, *_preflight(images, settings)
        for subject in images:  # what a killed run was writing
            remove_temporaries(settings.output_dir / f"sub-{subject}")
        fingerprints, done = resume_plan(images, settings)
        if done:
            print(f"bidsreface: {len(done)} images already de-identified with the same inputs "
                  f"and settings: skipped", file=sys.stderr)
        workflow = pe.Workflow(name="bidsreface_wf", base_dir=str(settings.work_dir))
        todo = {image: subject for subject, subject_images in images.items()
                for image in subject_images if image not in done}
        for subject, subject_images in images.items():
            if all(image in done for image in subject_images):
                continue
            workflow.add_nodes([init_participant_wf(subject, subject_images, settings,
                                                    fingerprints=fingerprints, skip=done)])
        progress = Progress({(workflow_name(subject), node_key(image)): image
                             for image, subject in todo.items()}, settings.output_dir)
        if plugin not in GRAPH_PLUGINS:
            plugin_args = {**plugin_args, "status_callback": progress}
        started = time.time() - 1
        if todo:
            try:
                workflow.run(plugin=plugin_runner(plugin, plugin_args, progress.rank),
                             plugin_args=plugin_args)
            except RuntimeError as err:  # raised after the run when some node failed
                LOGGER.info("workflow finished with errors: %s", err)

        depends_on = _dependencies(images)
        outcomes, failed, warned = {}, len(rejected), []
        for image, subject in todo.items():
            record = qc_path(settings.output_dir, image)
            if record.is_file() and record.stat().st_mtime >= started:
                warned += qc_warnings(image, record)
                qc_failure = _qc_failure(record)  # outputs kept for inspection when failed
                outcomes[image] = ("failed", f"failed QC: {qc_failure}") if qc_failure \
                    else ("ok", "")
                failed += bool(qc_failure)
                continue
            reason = progress.failure(image) or _failure_reason(
                settings.output_dir / f"sub-{subject}" / "log", image, started,
                depends_on[image])
            write_failure(image, settings.output_dir, reason)
            outcomes[image] = ("failed", reason)
            failed += 1
        progress.finish(outcomes)
    finally:
        logging.getLogger("nipype").removeHandler(log_handler)
        log_handler.close()
    from ..reports.participant import write_participant_report

    for subject in selected:  # after the failures are recorded: the reports list them
        write_participant_report(settings.output_dir, subject)
    for line in warned:  # what a curator must look at, though the image passed
        print(f"bidsreface: warning: {line}", file=sys.stderr)
    print(f"bidsreface: {total - failed} of {total} images de-identified"
          + (f" ({len(done)} of them by an earlier run)" if done else "")
          + (f", {failed} failed (see the sub-*/log folders)" if failed else ""),
          file=sys.stderr)
    return 1 if failed else 0


def _preflight(images: dict, settings) -> tuple[dict, dict]:
    """Fail, each with its line and record, the images that cannot be read or named
    (:func:`bidsreface.preflight.preflight`), and say what was assumed of any image's
    geometry; return the images to process and ``{image: reason}`` of those failed."""
    from ..bids import ANAT_SUFFIXES
    from ..derivatives import write_failure
    from ..image import geometry_note
    from ..preflight import preflight
    from ..progress import image_label

    found = preflight(images, _dependencies(images), settings.suffixes or ANAT_SUFFIXES,
                      geometry_note)
    for image, reason in found.failures.items():
        write_failure(image, settings.output_dir, reason)
        print(f"bidsreface: {image_label(image)}: failed: {reason}", file=sys.stderr)
    for image, note in found.notes.items():
        print(f"bidsreface: warning: {image_label(image)}: {note}", file=sys.stderr)
    return found.images, found.failures


def _qc_failure(record_path: Path) -> str:
    """The reasons an image failed its QC (empty when it passed)."""
    import json

    record = json.loads(record_path.read_text())
    return record.get("reason", "") if record.get("status") != "ok" else ""


def _dependencies(images: dict) -> dict:
    """For each image, what it cannot be processed without: ``(image, role)`` or None."""
    from ..collection import collection_leaders
    from ..workflows.participant import session_references

    found = {}
    for subject_images in images.values():
        references = session_references(subject_images)
        leaders = collection_leaders(subject_images)
        for image in subject_images:
            if image in leaders:
                found[image] = (leaders[image], "the leader of its file collection, whose "
                                                "face mask it shares")
            elif references[image] is not None:
                found[image] = (references[image], "its session's T1w")
            else:
                found[image] = None
    return found


def _failure_reason(log_dir: Path, image, since: float, depends_on=None) -> str:
    """The error of the first crash file (of this run) that names the image; else what it
    depends on (*depends_on*: ``(image, role)``)."""
    from ..progress import crash_reason

    needle = str(image.path)
    for crash in sorted(log_dir.glob("crash-*.txt"), key=lambda p: p.stat().st_mtime):
        if crash.stat().st_mtime < since:
            continue
        text = crash.read_text(errors="replace")
        if needle not in text:
            continue
        return crash_reason(text, image)
    if depends_on is not None:
        return f"not processed: {depends_on[0].path.name} failed ({depends_on[1]})"
    return "not processed: an earlier step it depends on failed"
