"""Command line: every rule of the BIDS-App contract, every refusal as a UsageError."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from bidsreface import __version__
from bidsreface.cli.parser import build_parser, parse_args, parse_label
from bidsreface.config import Settings
from bidsreface.errors import UsageError
from bidsreface.workdir import default_work_dir


@pytest.fixture
def dirs(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    return bids, tmp_path / "out"


def _args(dirs, *extra, level="participant"):
    bids, out = dirs
    return [str(bids), str(out), level, *extra]


def _refused(argv, *fragments):
    with pytest.raises(UsageError) as info:
        parse_args(argv)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message


def test_defaults(dirs):
    bids, out = dirs
    settings = parse_args(_args(dirs))
    assert isinstance(settings, Settings)
    assert settings.bids_dir == bids.resolve()
    assert settings.output_dir == out.resolve()
    assert settings.analysis_level == "participant"
    assert settings.work_dir == default_work_dir(bids.resolve(), out.resolve(),
                                                 Path(tempfile.gettempdir()).resolve())
    assert settings.participant_label == ()
    assert settings.session_label == ()
    assert settings.suffixes == ()  # every anatomical suffix the dataset has
    assert settings.bids_filters == {}
    assert settings.nprocs == (os.cpu_count() or 1)
    assert settings.omp_nthreads == min(settings.nprocs, 8)
    assert settings.mem_gb is None
    assert settings.skip_bids_validation is False
    assert settings.random_seed == 0
    assert settings.device == "auto"
    assert settings.reface == "cgan"
    assert settings.reface_model is not None and settings.reface_model.is_file()
    assert settings.deface_ears is False
    assert settings.brain_margin_mm == 5.0
    assert settings.verbosity == 0


def test_group_level_and_bad_level(dirs):
    assert parse_args(_args(dirs, level="group")).analysis_level == "group"
    _refused(_args(dirs, level="session"), "analysis_level")


def test_relative_paths_become_absolute(dirs, monkeypatch):
    bids, _ = dirs
    monkeypatch.chdir(bids.parent)
    settings = parse_args(["bids", "out", "participant", "-w", "work"])
    assert settings.bids_dir == bids.resolve()
    assert settings.output_dir == (bids.parent / "out").resolve()
    assert settings.work_dir == (bids.parent / "work").resolve()
    assert settings.bids_dir.is_absolute()


def test_all_options(dirs, tmp_path):
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"t1w": {"acquisition": "mprage"}}))
    settings = parse_args(
        _args(
            dirs,
            "--participant-label", "01", "sub-02", "01",
            "--session-label", "ses-1", "2",
            "--suffixes", "T1w", "T2w", "FLAIR", "UNIT1", "MP2RAGE", "inplaneT2", "PDT2", "angio",
            "--bids-filter-file", str(filters),
            "-w", str(tmp_path / "work"),
            "--nprocs", "4", "--omp-nthreads", "2", "--mem-gb", "7.5",
            "--skip-bids-validation", "--random-seed", "42", "--device", "cuda",
            "--reface", "none", "--deface-ears", "--brain-margin-mm", "7.5", "-vv",
        )
    )  # fmt: skip
    assert settings.participant_label == ("01", "02")
    assert settings.session_label == ("1", "2")
    assert settings.suffixes == (
        "T1w", "T2w", "FLAIR", "UNIT1", "MP2RAGE", "inplaneT2", "PDT2", "angio"
    )  # fmt: skip
    assert settings.bids_filters == {"t1w": {"acquisition": "mprage"}}
    assert settings.work_dir == (tmp_path / "work").resolve()
    assert (settings.nprocs, settings.omp_nthreads, settings.mem_gb) == (4, 2, 7.5)
    assert settings.skip_bids_validation is True
    assert settings.random_seed == 42
    assert settings.device == "cuda"
    assert settings.deface_ears is True
    assert settings.brain_margin_mm == 7.5
    assert settings.verbosity == 2


@pytest.mark.parametrize(("nprocs", "omp"), [("1", 1), ("3", 3), ("16", 8)])
def test_omp_nthreads_default(dirs, nprocs, omp):
    assert parse_args(_args(dirs, "--nprocs", nprocs)).omp_nthreads == omp


def test_parse_label():
    assert parse_label("sub-01", "sub") == "01"
    assert parse_label("01", "sub") == "01"
    assert parse_label("ses-baseline", "ses") == "baseline"
    assert parse_label("1", "ses") == "1"


@pytest.mark.parametrize("label", ["sub-01_T1w", "sub-", "", "0 1", "sub-01-02", "ses-1"])
def test_bad_participant_label(dirs, label):
    _refused(_args(dirs, "--participant-label", label), "--participant-label")


def test_bad_session_label(dirs):
    _refused(_args(dirs, "--session-label", "ses-1/2"), "--session-label")


@pytest.mark.parametrize("suffix", ["bold", "dwi", "T1", "defacemask", "sbref"])
def test_non_anatomical_suffix_refused(dirs, suffix):
    _refused(_args(dirs, "--suffixes", suffix), "--suffixes", "not an anatomical")


def test_suffix_case_hint(dirs):
    _refused(_args(dirs, "--suffixes", "t1w"), "did you mean T1w")


def test_bids_filter_file_errors(dirs, tmp_path):
    missing = tmp_path / "missing.json"
    _refused(_args(dirs, "--bids-filter-file", str(missing)), str(missing), "cannot read")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    _refused(_args(dirs, "--bids-filter-file", str(bad)), str(bad), "not valid JSON")
    array = tmp_path / "array.json"
    array.write_text("[1, 2]")
    _refused(_args(dirs, "--bids-filter-file", str(array)), str(array), "JSON object")
    nested = tmp_path / "nested.json"
    nested.write_text('{"t1w": "mprage"}')
    _refused(_args(dirs, "--bids-filter-file", str(nested)), str(nested), "'t1w'")
    folder = tmp_path / "folder"
    folder.mkdir()
    _refused(_args(dirs, "--bids-filter-file", str(folder)), str(folder))


def test_bids_dir_must_exist(tmp_path):
    _refused([str(tmp_path / "nope"), str(tmp_path / "out"), "participant"], "does not exist")
    a_file = tmp_path / "file"
    a_file.write_text("")
    _refused([str(a_file), str(tmp_path / "out"), "participant"], "not a directory")


@pytest.mark.parametrize("rel", [".", "sub-01", "out", "derivatives", "derivatives/a/b"])
def test_output_dir_inside_bids_refused(dirs, rel):
    bids, _ = dirs
    _refused([str(bids), str(bids / rel), "participant"], "output_dir", "inside bids_dir")


def test_output_dir_in_derivatives_allowed(dirs):
    bids, _ = dirs
    settings = parse_args([str(bids), str(bids / "derivatives" / "bidsreface"), "participant"])
    assert settings.output_dir == (bids / "derivatives" / "bidsreface").resolve()
    other = parse_args([str(bids), str(bids / "derivatives" / "deid"), "group"])
    assert other.output_dir.name == "deid"


def test_output_dir_is_a_file(dirs):
    bids, out = dirs
    out.write_text("")
    _refused(_args(dirs), "not a directory")


@pytest.mark.parametrize("rel", [".", "work", "derivatives/work"])
def test_work_dir_inside_bids_refused(dirs, rel):
    bids, _ = dirs
    _refused(_args(dirs, "-w", str(bids / rel)), "work directory", "inside bids_dir")


def test_work_dir_outside_bids_allowed(dirs, tmp_path):
    settings = parse_args(_args(dirs, "--work-dir", str(tmp_path / "w")))
    assert settings.work_dir == (tmp_path / "w").resolve()


def test_default_work_dir_inside_bids_refused(dirs, monkeypatch):
    bids, _ = dirs
    monkeypatch.setattr(tempfile, "tempdir", str(bids / "tmp"))
    _refused(_args(dirs), "work directory", "-w/--work-dir")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--nprocs", "0"),
        ("--nprocs", "-2"),
        ("--nprocs", "two"),
        ("--nprocs", "1.5"),
        ("--omp-nthreads", "0"),
        ("--mem-gb", "0"),
        ("--mem-gb", "-1"),
        ("--mem-gb", "nan"),
        ("--mem-gb", "lots"),
        ("--random-seed", "x"),
        ("--random-seed", "-1"),
        ("--brain-margin-mm", "4.9"),
        ("--brain-margin-mm", "0"),
        ("--brain-margin-mm", "inf"),
        ("--device", "tpu"),
        ("--reface", "gan"),
    ],
)
def test_bad_values_refused(dirs, option, value):
    _refused(_args(dirs, option, value), option)


def test_brain_margin_minimum_is_accepted(dirs):
    assert parse_args(_args(dirs, "--brain-margin-mm", "5")).brain_margin_mm == 5.0


def test_reface_methods(dirs):
    assert parse_args(_args(dirs, "--reface", "template")).reface_model is None
    assert parse_args(_args(dirs, "--reface", "none")).reface == "none"


def test_reface_model_checked_before_the_run(dirs, tmp_path):
    _refused(_args(dirs, "--reface-model", str(tmp_path / "missing.pt")), "missing.pt",
             "no such file")
    (tmp_path / "bad.pt").write_bytes(b"\0" * 100)
    _refused(_args(dirs, "--reface-model", str(tmp_path / "bad.pt")), "bad.pt",
             "not a bidsreface model")


def test_reface_region_picks_its_model_and_refuses_another_region(dirs):
    from bidsreface.reface.weights import packaged_model_path

    settings = parse_args(_args(dirs, "--reface-region", "head"))
    assert settings.reface_region == "head"
    assert settings.reface_model == packaged_model_path("T1w", "head")
    assert parse_args(_args(dirs)).reface_model == packaged_model_path("T1w", "face")
    _refused(_args(dirs, "--reface-region", "head", "--reface-model",
                   str(packaged_model_path("T1w", "face"))), "fills the face region")
    _refused(_args(dirs, "--reface-region", "body"), "--reface-region")
    assert parse_args(_args(dirs, "--reface-region", "head", "--reface",
                            "template")).reface_model is None


def test_argparse_errors_are_usage_errors(dirs, tmp_path):
    _refused(_args(dirs, "--no-such-option"), "--no-such-option")
    _refused([str(tmp_path)], "required")
    _refused(_args(dirs, "--participant-label"), "--participant-label")


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"bidsreface {__version__}"


def test_help_builds(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    assert "--brain-margin-mm" in capsys.readouterr().out


def test_batch_defaults(dirs):
    settings = parse_args(_args(dirs))
    assert (settings.gpu_procs, settings.use_plugin, settings.export_bids) == (1, None, None)


def test_use_plugin_file(dirs, tmp_path):
    plugin = tmp_path / "slurm.yml"
    plugin.write_text("plugin: SLURM\nplugin_args:\n  sbatch_args: --time=1:00:00 --mem=4G\n")
    settings = parse_args(_args(dirs, "--use-plugin", str(plugin)))
    assert settings.use_plugin == {"plugin": "SLURM",
                                   "plugin_args": {"sbatch_args": "--time=1:00:00 --mem=4G"}}


@pytest.mark.parametrize(("content", "fragment"), [
    ("plugin: [unclosed", "not valid YAML"),
    ("plugin_args: {}\n", "must be a mapping with a 'plugin' key"),
    ("plugin: Slurmish\n", "unknown plugin 'Slurmish'"),
    ("plugin: SGE\nplugin_args: [1, 2]\n", "plugin_args must be a mapping"),
    ("plugin: PBS\nqueue: long\n", "unknown keys ['queue']"),
])  # fmt: skip
def test_use_plugin_errors(dirs, tmp_path, content, fragment):
    plugin = tmp_path / "plugin.yml"
    plugin.write_text(content)
    _refused(_args(dirs, "--use-plugin", str(plugin)), str(plugin), fragment)


def test_use_plugin_missing_file(dirs, tmp_path):
    _refused(_args(dirs, "--use-plugin", str(tmp_path / "none.yml")), "cannot read it")


def test_gpu_procs(dirs):
    assert parse_args(_args(dirs, "--gpu-procs", "3")).gpu_procs == 3
    _refused(_args(dirs, "--gpu-procs", "0"), "--gpu-procs", "at least 1")


def test_export_bids(dirs, tmp_path):
    bids, out = dirs
    assert parse_args(_args(dirs, "--export-bids", str(tmp_path / "ex"))).export_bids == (
        (tmp_path / "ex").resolve())
    for overlapping in (bids / "export", out, out / "export", tmp_path):
        _refused(_args(dirs, "--export-bids", str(overlapping)), "--export-bids", "overlaps")
    (tmp_path / "file").write_text("x")
    _refused(_args(dirs, "--export-bids", str(tmp_path / "file")), "is not a directory")


def test_export_bids_foreign_folder_refused_before_the_run(dirs, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    _refused(_args(dirs, "--export-bids", str(foreign)), "not empty", "no earlier export")
