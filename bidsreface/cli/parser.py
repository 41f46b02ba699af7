"""Command line of the BIDS App: ``bidsreface bids_dir output_dir {participant,group}``.

Every invalid value ends as a one-line :class:`~bidsreface.errors.UsageError` (exit code 2).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import tempfile
from pathlib import Path

from bidsreface import __version__
from bidsreface.bids import ANAT_SUFFIXES
from bidsreface.config import Settings
from bidsreface.errors import UsageError
from bidsreface.workdir import default_work_dir

#: Refacing methods accepted on the command line; only ``none`` runs in this version.
REFACE_CHOICES = ("cgan", "prior", "template", "none")

_LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")


class _Parser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` that raises :class:`UsageError` instead of exiting."""

    def error(self, message):
        raise UsageError(message)


def parse_label(value: str, prefix: str) -> str:
    """Return a BIDS label without its ``<prefix>-`` (``sub``, ``ses``).

    >>> parse_label("sub-01", "sub")
    '01'
    >>> parse_label("01", "sub")
    '01'
    >>> parse_label("ses-pre", "ses")
    'pre'
    >>> parse_label("sub-01_T1w", "sub")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: invalid sub label 'sub-01_T1w' (letters and digits only)
    """
    label = value.strip()
    if label.startswith(f"{prefix}-"):
        label = label[len(prefix) + 1 :]
    if not _LABEL_RE.match(label):
        raise argparse.ArgumentTypeError(
            f"invalid {prefix} label {value!r} (letters and digits only)"
        )
    return label


def _participant_label(value: str) -> str:
    return parse_label(value, "sub")


def _session_label(value: str) -> str:
    return parse_label(value, "ses")


def _suffix(value: str) -> str:
    if value not in ANAT_SUFFIXES:
        lower = {s.lower(): s for s in ANAT_SUFFIXES}
        hint = f" (did you mean {lower[value.lower()]}?)" if value.lower() in lower else ""
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an anatomical BIDS suffix{hint}; "
            f"choose from {' '.join(ANAT_SUFFIXES)}"
        )
    return value


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _seed(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if not 0 <= number < 2**32:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2**32 - 1, got {number}")
    return number


def _finite_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{value!r} is not a finite number")
    return number


def _positive_float(value: str) -> float:
    number = _finite_float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return number


def _margin(value: str) -> float:
    number = _finite_float(value)
    if number < 5.0:
        raise argparse.ArgumentTypeError(
            f"must be at least 5 mm (the brain is always kept 5 mm away from the face mask), "
            f"got {value}"
        )
    return number


def _abspath(value: str) -> Path:
    return Path(value).expanduser().resolve()


def load_bids_filters(path: Path) -> dict:
    """Read a ``--bids-filter-file``: a JSON object ``{suffix: {entity: value}}``."""
    try:
        filters = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--bids-filter-file {path}: cannot read it ({err})") from err
    except json.JSONDecodeError as err:
        raise UsageError(f"--bids-filter-file {path}: not valid JSON ({err})") from err
    if not isinstance(filters, dict):
        raise UsageError(f"--bids-filter-file {path}: must contain a JSON object")
    for key, value in filters.items():
        if not isinstance(value, dict):
            raise UsageError(
                f"--bids-filter-file {path}: the value of {key!r} must be a JSON object "
                f"of entity filters"
            )
    return filters


#: nipype execution plugins a ``--use-plugin`` file may name.
PLUGINS = ("Linear", "MultiProc", "LegacyMultiProc", "SLURM", "SLURMGraph", "SGE", "SGEGraph",
           "PBS", "PBSGraph", "LSF", "OAR", "Condor", "DAGMan", "IPython")


def load_plugin(path: Path) -> dict:
    """Read a ``--use-plugin`` file: YAML (or JSON) ``{plugin: NAME, plugin_args: {...}}``,
    as fMRIPrep's.

    Returns ``{"plugin": NAME, "plugin_args": {...}}``.
    """
    import yaml

    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--use-plugin {path}: cannot read it ({err})") from err
    except yaml.YAMLError as err:
        reason = str(err).splitlines()[0]
        raise UsageError(f"--use-plugin {path}: not valid YAML ({reason})") from err
    if not isinstance(content, dict) or "plugin" not in content:
        raise UsageError(f"--use-plugin {path}: must be a mapping with a 'plugin' key, e.g. "
                         f"'plugin: SLURM'")
    unknown = set(content) - {"plugin", "plugin_args"}
    if unknown:
        raise UsageError(f"--use-plugin {path}: unknown keys {sorted(unknown)} "
                         f"(only plugin and plugin_args)")
    plugin = content["plugin"]
    if plugin not in PLUGINS:
        raise UsageError(f"--use-plugin {path}: unknown plugin {plugin!r}; choose from "
                         f"{' '.join(PLUGINS)}")
    args = content.get("plugin_args") or {}
    if not isinstance(args, dict):
        raise UsageError(f"--use-plugin {path}: plugin_args must be a mapping")
    return {"plugin": plugin, "plugin_args": args}


def _reface_model(path: Path | None, region: str = "face") -> Path:
    """The T1w model file: the one given, else the packaged one for ``region``; checked now,
    not mid-run (a model made for another region is refused)."""
    from bidsreface.reface.weights import load_model, packaged_model_path

    if path is None:
        path = packaged_model_path("T1w", region)
        if path is None:
            raise UsageError(f"--reface cgan: no T1w refacing model for --reface-region "
                             f"{region} is installed; give one with --reface-model or use "
                             f"--reface template or none")
    if not path.is_file():
        raise UsageError(f"--reface-model {path}: no such file")
    try:
        model = load_model(path)
    except ValueError as err:
        raise UsageError(f"--reface-model {err}") from err
    if model.region != region:
        raise UsageError(f"--reface-model {path}: the model fills the {model.region} region, "
                         f"not the {region} region that --reface-region asks for")
    return path


def _is_within(path: Path, parent: Path) -> bool:
    """Whether ``path`` is ``parent`` or inside it (both absolute and resolved)."""
    return path == parent or parent in path.parents


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the BIDS App (errors raise :class:`UsageError`)."""
    parser = _Parser(
        prog="bidsreface",
        description="De-identify the head MRI of a BIDS dataset: deface, then reface.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("bids_dir", type=_abspath, help="root of the input BIDS dataset")
    parser.add_argument("output_dir", type=_abspath, help="where derivatives are written")
    parser.add_argument(
        "analysis_level", choices=("participant", "group"), help="processing stage"
    )
    parser.add_argument(
        "--version", action="version", version=f"bidsreface {__version__}"
    )
    parser.add_argument("-v", "--verbose", dest="verbosity", action="count", default=0,
                        help="more log messages (repeat for more)")

    sel = parser.add_argument_group("selecting data")
    sel.add_argument("--participant-label", "--participant_label", nargs="+", default=[],
                     type=_participant_label, metavar="LABEL",
                     help="participants to process (01 or sub-01); default: all")
    sel.add_argument("--session-label", "--session_label", nargs="+", default=[],
                     type=_session_label, metavar="LABEL",
                     help="sessions to process (1 or ses-1); default: all")
    sel.add_argument("--suffixes", nargs="+", default=[], type=_suffix, metavar="SUFFIX",
                     help="anatomical suffixes to de-identify (default: every anatomical "
                          "suffix the dataset has)")
    sel.add_argument("--bids-filter-file", type=_abspath, metavar="FILE",
                     help='JSON object of pybids filters per suffix, e.g. '
                          '{"t1w": {"acquisition": "mprage"}}')
    sel.add_argument("--skip-bids-validation", action="store_true",
                     help="index the dataset without BIDS validation")

    perf = parser.add_argument_group("resources")
    perf.add_argument("-w", "--work-dir", type=_abspath, metavar="DIR",
                      help="intermediate files, locked while a run uses them (default: a "
                           "folder of this dataset and output folder in the temp dir)")
    perf.add_argument("--nprocs", "--n-cpus", type=_positive_int, metavar="N",
                      help="processes run in parallel (default: all CPUs)")
    perf.add_argument("--omp-nthreads", type=_positive_int, metavar="N",
                      help="threads per process (default: min(nprocs, 8))")
    perf.add_argument("--mem-gb", type=_positive_float, metavar="GB",
                      help="memory limit for the scheduler")
    perf.add_argument("--gpu-procs", type=_positive_int, default=1, metavar="N",
                      help="refacing steps run on the GPU at once (CPU steps still use all "
                           "--nprocs)")
    perf.add_argument("--use-plugin", type=_abspath, metavar="FILE",
                      help="YAML file naming a nipype plugin and its arguments, e.g. "
                           "'plugin: SLURM' with 'plugin_args: {sbatch_args: ...}'")
    perf.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                      help="where the generator runs")
    perf.add_argument("--random-seed", type=_seed, default=0, metavar="SEED",
                      help="seed of every random generator; each participant's face is drawn "
                      "from it and the participant's label")

    out = parser.add_argument_group("outputs")
    out.add_argument("--export-bids", type=_abspath, metavar="DIR",
                     help="also write a complete de-identified copy of the dataset, ready to "
                          "publish: the selected anatomicals replaced by their de-identified "
                          "images, everything else copied")

    method = parser.add_argument_group("method")
    method.add_argument("--reface", choices=REFACE_CHOICES, default="cgan",
                        help="how the removed face is filled: the cGAN model; a head drawn "
                             "from the population prior by the participant's seed (eyes, "
                             "nasal cavity, airway, tongue and jaw in place, a different "
                             "face for each participant); the template's face; or not at all "
                             "(defacing only)")
    method.add_argument("--reface-model", type=_abspath, metavar="FILE",
                        help="T1w refacing model file (default: the packaged model)")
    method.add_argument("--reface-region", choices=("face", "head"), default="face",
                        help="what is removed and regenerated: the face (and the ears with "
                             "--deface-ears), or the whole head outside the brain and its "
                             "margin (scalp, skull, ears, face, the head's outline), as "
                             "afni_refacer's reface_plus does")
    method.add_argument("--deface-ears", action="store_true", help="remove the ears too")
    method.add_argument("--brain-margin-mm", type=_margin, default=5.0, metavar="MM",
                        help="distance kept between the brain and the face mask (>= 5)")
    method.add_argument("--keep-nifti-extensions", action="store_true",
                        help="keep the inputs' NIfTI header extensions in the outputs (by "
                             "default they are dropped: they may hold DICOM headers, names "
                             "and dates)")
    method.add_argument("--dates", choices=("shift", "remove", "keep"), default="shift",
                        help="dates in sidecars and scans tables: shifted by a number of days "
                             "drawn per participant into 1925 or earlier, intervals kept (as "
                             "BIDS recommends), removed, or kept as they are")
    return parser


def parse_args(argv: list[str] | None = None) -> Settings:
    """Parse and check the command line; return the run's :class:`Settings`.

    Raises
    ------
    UsageError
        For every invalid argument, with a one-line message.
    """
    opts = build_parser().parse_args(argv)
    bids_dir: Path = opts.bids_dir
    output_dir: Path = opts.output_dir

    if not bids_dir.exists():
        raise UsageError(f"bids_dir {bids_dir} does not exist")
    if not bids_dir.is_dir():
        raise UsageError(f"bids_dir {bids_dir} is not a directory")

    derivatives = bids_dir / "derivatives"
    if _is_within(output_dir, bids_dir) and output_dir.parent != derivatives:
        raise UsageError(
            f"output_dir {output_dir} is inside bids_dir {bids_dir}, which is never written to; "
            f"use {derivatives / 'bidsreface'} or a directory outside the dataset"
        )
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"output_dir {output_dir} exists and is not a directory")

    work_dir = opts.work_dir or default_work_dir(bids_dir, output_dir,
                                                 Path(tempfile.gettempdir()).resolve())
    if _is_within(work_dir, bids_dir):
        raise UsageError(
            f"work directory {work_dir} is inside bids_dir {bids_dir}, which is never written "
            f"to; choose another with -w/--work-dir"
        )
    if work_dir.exists() and not work_dir.is_dir():
        raise UsageError(f"work directory {work_dir} exists and is not a directory")

    export_bids = opts.export_bids
    if export_bids is not None:
        for name, other in (("bids_dir", bids_dir), ("output_dir", output_dir),
                            ("work directory", work_dir)):
            if _is_within(export_bids, other) or _is_within(other, export_bids):
                raise UsageError(f"--export-bids {export_bids} overlaps {name} {other}; "
                                 f"give a directory of its own")
        from bidsreface.content import content_problem
        from bidsreface.export import check_target

        check_target(export_bids)  # refused now, not after the run
        description = bids_dir / "dataset_description.json"
        problem = (description.is_symlink() or description.exists()) and content_problem(
            description, bids_dir)
        if problem:
            raise UsageError(f"{description}: {problem}")

    use_plugin = load_plugin(opts.use_plugin) if opts.use_plugin else None

    reface_model = (_reface_model(opts.reface_model, opts.reface_region)
                    if opts.reface == "cgan" else None)

    bids_filters = load_bids_filters(opts.bids_filter_file) if opts.bids_filter_file else {}

    nprocs = opts.nprocs or os.cpu_count() or 1
    omp_nthreads = opts.omp_nthreads or min(nprocs, 8)

    return Settings(
        bids_dir=bids_dir,
        output_dir=output_dir,
        analysis_level=opts.analysis_level,
        work_dir=work_dir,
        participant_label=tuple(dict.fromkeys(opts.participant_label)),
        session_label=tuple(dict.fromkeys(opts.session_label)),
        suffixes=tuple(dict.fromkeys(opts.suffixes)),
        bids_filters=bids_filters,
        nprocs=nprocs,
        omp_nthreads=omp_nthreads,
        mem_gb=opts.mem_gb,
        gpu_procs=opts.gpu_procs,
        use_plugin=use_plugin,
        export_bids=export_bids,
        skip_bids_validation=opts.skip_bids_validation,
        random_seed=opts.random_seed,
        device=opts.device,
        reface=opts.reface,
        reface_model=reface_model,
        deface_ears=opts.deface_ears,
        reface_region=opts.reface_region,
        brain_margin_mm=opts.brain_margin_mm,
        keep_nifti_extensions=opts.keep_nifti_extensions,
        dates=opts.dates,
        verbosity=opts.verbosity,
    )
