"""The release: one version, a wheel and an sdist that pass ``twine check``, the wheel
installed into a fresh virtual environment and run from there, and the Boutiques descriptor,
checked against the parser and by ``bosh``.

The fresh environment gets the built wheel only (``pip install --no-deps --no-index``); its
dependencies (torch, antspyx, nipype, ... several GB) are those of the environment running
the tests, reached through a ``.pth`` file that lists that environment's site-packages. A
plain path in a ``.pth`` file is appended to ``sys.path`` without running the ``.pth`` files
found there, so the checkout's editable install is not seen: ``bidsreface`` is imported from
the wheel (asserted), and every dependency the wheel declares is checked to be installed at a
version it accepts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import bidsreface
from bidsreface.cli.parser import build_parser

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTOR = ROOT / "bidsreface" / "data" / "boutiques.json"
INVOCATION = ROOT / "docs" / "boutiques" / "demo_invocation.json"


def _build_boutiques():
    spec = importlib.util.spec_from_file_location("build_boutiques",
                                                  ROOT / "scripts" / "build_boutiques.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_version_has_one_source():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    project = pyproject.split("[project]", 1)[1].split("\n[", 1)[0]
    assert not re.search(r"^version\s*=", project, re.MULTILINE)
    assert re.search(r'^dynamic\s*=\s*\[[^]]*"version"', project, re.MULTILINE)
    assert 'version = {attr = "bidsreface.__version__"}' in pyproject
    # the places that must repeat it (metadata read without the package) agree with it
    version = re.escape(bidsreface.__version__)
    for name, pattern in (("CITATION.cff", rf"^version: {version}$"),
                          ("Dockerfile", rf"^ARG VERSION={version}$"),
                          ("Singularity.def", rf"org\.opencontainers\.image\.version {version}$")):
        text = (ROOT / name).read_text(encoding="utf-8")
        assert re.search(pattern, text, re.MULTILINE), f"{name} names another version"


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """The sdist and the wheel built from the sdist (``python -m build``), as a release is."""
    pytest.importorskip("build")
    # a copy of the sources: setuptools writes build/ and *.egg-info beside them
    source = tmp_path_factory.mktemp("source") / "bidsreface"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".cache", "build", "dist", "*.egg-info", "__pycache__", "_build"))
    out = tmp_path_factory.mktemp("dist")
    # no isolation: the build backend (setuptools) is the one installed, nothing is fetched
    result = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir",
                             str(out), str(source)], capture_output=True, text=True, cwd=out)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return out


def test_twine_check(dist):
    pytest.importorskip("twine")
    files = sorted(str(p) for p in dist.iterdir())
    assert len(files) == 2
    result = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *files],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_wheel_contents(dist):
    (wheel,) = dist.glob("bidsreface-*.whl")
    assert wheel.name == f"bidsreface-{bidsreface.__version__}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("bidsreface/data/boutiques.json", "bidsreface/data/models/reface_T1w.pt",
                 "bidsreface/data/models/reface_T1w_head.pt",
                 "bidsreface/data/models/MODEL_CARD.md",
                 "bidsreface/data/template/tpl-bidsreface_res-15_desc-face_mask.nii.gz",
                 "bidsreface/data/reports/participant.html.j2"):
        assert name in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "docs/"))]


def _installed_versions_satisfy(requirements: list[str]) -> list[str]:
    """The requirements (of a wheel's metadata, no extra) not met by this environment."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    unmet = []
    for line in requirements:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            unmet.append(f"{req} (not installed)")
            continue
        if installed not in req.specifier and not req.specifier.contains(installed,
                                                                           prereleases=True):
            unmet.append(f"{req} (installed {installed})")
    return unmet


def test_wheel_runs_in_a_fresh_venv(dist, tmp_path):
    (wheel,) = dist.glob("bidsreface-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                              "--no-deps", "--no-index", str(wheel)],
                             capture_output=True, text=True, env=env, cwd=tmp_path)
    assert install.returncode == 0, install.stderr
    assert "Successfully installed bidsreface" in install.stdout
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "_dependencies.pth").write_text("\n".join(ours) + "\n")

    meta = zipfile.ZipFile(wheel).read(
        f"bidsreface-{bidsreface.__version__}.dist-info/METADATA").decode()
    requirements = re.findall(r"^Requires-Dist: (.+)$", meta, re.MULTILINE)
    assert requirements and _installed_versions_satisfy(requirements) == []

    run = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True, env=env,  # noqa: E731
                                      cwd=tmp_path, timeout=300)
    where = run(str(python), "-c", "import bidsreface; print(bidsreface.__file__)")
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(site)  # the wheel's, not the checkout's

    version = run(str(venv / "bin" / "bidsreface"), "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"bidsreface {bidsreface.__version__}"
    demo = run(str(venv / "bin" / "bidsreface-demo"), "--help")
    assert demo.returncode == 0, demo.stderr
    assert demo.stdout.startswith("usage: bidsreface-demo")
    assert "--brainsmall" in demo.stdout
    train = run(str(venv / "bin" / "bidsreface-train"), "--help")
    assert train.returncode == 0, train.stderr
    assert train.stdout.startswith("usage: bidsreface-train") and "--region" in train.stdout


# --------------------------------------------------------------------------- Boutiques


def test_descriptor_is_the_parsers():
    """The shipped descriptor is what scripts/build_boutiques.py writes from the parser."""
    expected = _build_boutiques().text()
    assert DESCRIPTOR.read_text(encoding="utf-8") == expected, (
        "bidsreface/data/boutiques.json is out of date: run python scripts/build_boutiques.py")


def test_descriptor_matches_parser_option_by_option():
    descriptor = json.loads(DESCRIPTOR.read_text(encoding="utf-8"))
    inputs = {entry["id"]: entry for entry in descriptor["inputs"]}
    actions = {a.dest: a for a in build_parser()._actions if a.dest not in ("help", "version")}
    assert set(inputs) == set(actions)
    for dest, action in actions.items():
        entry = inputs[dest]
        if action.option_strings:
            assert entry["command-line-flag"] in action.option_strings
            assert entry["optional"] is True
        else:
            assert "command-line-flag" not in entry and entry["optional"] is False
        assert entry["value-key"] in descriptor["command-line"]
        if action.nargs in (0, None) and not action.option_strings:
            assert entry["type"] in ("File", "String")
        if action.const is True or action.nargs == 0:  # store_true, count
            assert entry["type"] == "Flag"
        if action.choices is not None:
            assert entry["value-choices"] == list(action.choices)
        assert entry.get("list", False) == (action.nargs == "+")
        if entry["type"] != "Flag" and action.default not in (None, []):
            assert entry["default-value"] == action.default
        else:
            assert "default-value" not in entry
        if entry["type"] == "Number":  # the parser refuses what the descriptor refuses
            with pytest.raises(Exception, match=r"must be|not"):
                action.type(str(entry["minimum"] - 1))


def test_descriptor_refuses_an_unknown_validator():
    import argparse

    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--odd", type=lambda value: value)
    with pytest.raises(ValueError, match="--odd: no Boutiques type"):
        _build_boutiques().descriptor(parser)


def _bosh(*args: str) -> subprocess.CompletedProcess:
    pytest.importorskip("boutiques")
    bosh = Path(sys.executable).parent / "bosh"
    return subprocess.run([str(bosh), *args], capture_output=True, text=True, timeout=120)


def test_bosh_validate():
    result = _bosh("validate", str(DESCRIPTOR))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("OK")


def test_bosh_simulate_demo_invocation(tmp_path):
    """``bosh exec simulate`` accepts the demo's invocation, and the command it makes is one
    the App's parser reads back with the invocation's values."""
    result = _bosh("exec", "simulate", str(DESCRIPTOR), "-i", str(INVOCATION))
    assert result.returncode == 0, result.stdout + result.stderr
    command = result.stdout.strip().splitlines()[-1]
    argv = shlex.split(command)
    assert argv[0] == "bidsreface"
    opts = build_parser().parse_args(argv[1:])
    invocation = json.loads(INVOCATION.read_text(encoding="utf-8"))
    assert opts.analysis_level == invocation["analysis_level"] == "participant"
    assert str(opts.bids_dir) == invocation["bids_dir"]
    assert opts.suffixes == invocation["suffixes"]
    assert opts.nprocs == invocation["nprocs"]
    assert str(opts.work_dir) == invocation["work_dir"]
    assert opts.reface == invocation["reface"]


def test_bosh_refuses_a_bad_choice(tmp_path):
    invocation = json.loads(INVOCATION.read_text(encoding="utf-8"))
    invocation["analysis_level"] = "session"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(invocation))
    result = _bosh("exec", "simulate", str(DESCRIPTOR), "-i", str(bad))
    assert result.returncode != 0


# --------------------------------------------------------------------------- CITATION.cff


def _citation_errors(citation: dict) -> list[str]:
    """Errors of a citation against the Citation File Format 1.2.0 schema (the schema
    ``cffconvert --validate`` uses, kept in docs/_schemas; CC-BY-4.0, citation-file-format)."""
    from jsonschema import Draft7Validator, FormatChecker

    schema = json.loads((ROOT / "docs" / "_schemas" / "citation-file-format-1.2.0.json")
                        .read_text(encoding="utf-8"))
    validator = Draft7Validator(schema, format_checker=FormatChecker())
    return [error.message for error in validator.iter_errors(citation)]


def test_citation_is_valid():
    import yaml

    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert _citation_errors(citation) == []
    titles = " ".join(ref["title"] for ref in citation["references"])
    for work in ("Fast refacing", "Conditional De-Identification", "Refacing:",
                 "morphable model", "IXI Dataset"):
        assert work in titles
    broken = {k: v for k, v in citation.items() if k != "title"}
    assert _citation_errors(broken)  # the schema does refuse a citation without a title
