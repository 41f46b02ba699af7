"""Container recipes and CI configuration: linted, validated and kept in step with each other.

The Dockerfile and Singularity.def must build the same software (base image, torch pin,
package extras) and both start ``bidsreface``. ``hadolint`` and ``check-jsonschema`` are test
dependencies (``pip install ".[test]"``): when they are missing the tests fail, they never skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
SINGULARITY = ROOT / "Singularity.def"
CIRCLECI = ROOT / ".circleci" / "config.yml"

#: Sections a Singularity/Apptainer definition of a BIDS App must have.
REQUIRED_SECTIONS = ("post", "runscript", "environment", "labels")


def _tool(name: str) -> str:
    """Path of a test-dependency executable: next to this interpreter first, then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name!r} not found next to {sys.executable} nor on PATH: "
            'install the test extra (pip install ".[test]")'
        )
    return found


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    """Run ``argv`` in the repository root; fail the test with its output on a non-zero exit."""
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(argv)} exited with {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    return proc


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """Instructions of a Dockerfile as ``(INSTRUCTION, arguments)``.

    Continuation lines are joined and comments dropped, as Docker does.

    >>> parse_dockerfile('FROM x\\n# c\\nRUN a \\\\\\n  # inner\\n  && b\\nENTRYPOINT ["y"]\\n')
    [('FROM', 'x'), ('RUN', 'a && b'), ('ENTRYPOINT', '["y"]')]
    """
    instructions = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), " ".join(args.split())))
    if pending:
        keyword, _, args = pending.strip().partition(" ")
        instructions.append((keyword.upper(), " ".join(args.split())))
    return instructions


def parse_singularity(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """Header keywords and ``%sections`` of a Singularity/Apptainer definition file.

    >>> header, sections = parse_singularity(
    ...     "Bootstrap: docker\\nFrom: debian\\n\\n%post\\n    apt-get update\\n"
    ...     "%runscript\\n    exec app \\"$@\\"\\n")
    >>> header
    {'Bootstrap': 'docker', 'From': 'debian'}
    >>> sections["runscript"]
    'exec app "$@"'
    """
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in text.splitlines():
        match = re.match(r"^%(\w+)\b", raw)
        if match:
            name = match.group(1)
            if name in sections:
                raise ValueError(f"section %{name} appears twice")
            current = sections[name] = []
        elif current is not None:
            current.append(raw)
        elif raw.strip() and not raw.lstrip().startswith("#"):
            key, sep, value = raw.partition(":")
            if not sep:
                raise ValueError(f"header line is not 'Keyword: value': {raw!r}")
            header[key.strip()] = value.strip()
    bodies = {name: "\n".join(body).strip() for name, body in sections.items()}
    return header, bodies


def _torch_pins(text: str) -> set[str]:
    """Every ``torch==X`` pin in a recipe."""
    return set(re.findall(r"(?<![\w-])torch==([\w.+]+)", text))


def _package_extras(text: str) -> set[frozenset[str]]:
    """Extras of every ``pip install <path>/bidsreface[extras]`` or ``bidsreface[extras] @ URL``
    requirement in a recipe.

    >>> sorted(map(sorted, _package_extras('pip install "/src/bidsreface[demo]"\\n'
    ...                                    'echo "bidsreface[demo,test] @ file://$w" > r.txt')))
    [['demo'], ['demo', 'test']]
    """
    installs = re.findall(r"pip install[^\n]*?[\"']?\S*bidsreface\[([\w,\s-]+)\]", text)
    installs += re.findall(r"[\"'\s]bidsreface\[([\w,\s-]+)\] @ ", text)
    return {frozenset(extra.strip() for extra in found.split(",")) for found in installs}


def _stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Instructions grouped by build stage (each starts with its FROM); ARGs before the first
    FROM form a stage of their own.

    >>> text = "ARG B=x\\nFROM $B AS a\\nRUN y\\nFROM $B\\n"
    >>> [len(stage) for stage in _stages(parse_dockerfile(text))]
    [1, 2, 1]
    """
    stages: list[list[tuple[str, str]]] = [[]]
    for keyword, args in instructions:
        if keyword == "FROM":
            stages.append([])
        stages[-1].append((keyword, args))
    return [stage for stage in stages if stage]


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def singularity() -> tuple[dict[str, str], dict[str, str]]:
    return parse_singularity(SINGULARITY.read_text())


def test_hadolint_no_warnings():
    _run([_tool("hadolint"), "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)])


def test_circleci_config_valid():
    # The CircleCI schema ships inside check-jsonschema: this needs no network.
    _run([_tool("check-jsonschema"), "--builtin-schema", "vendor.circle-ci", str(CIRCLECI)])


def test_dockerfile_entrypoint_is_bidsreface(dockerfile):
    entrypoints = [args for keyword, args in dockerfile if keyword == "ENTRYPOINT"]
    assert entrypoints, "Dockerfile has no ENTRYPOINT"
    assert json.loads(entrypoints[-1]) == ["bidsreface"]


def test_dockerfile_runs_as_any_user(dockerfile):
    """``docker run -u $(id -u)``: HOME and matplotlib's config must be writable by anyone."""
    env = " ".join(args for keyword, args in dockerfile if keyword == "ENV")
    assert re.search(r"\bHOME=/tmp\b", env)
    assert re.search(r"\bMPLCONFIGDIR=/tmp\S*", env)
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", env)
    assert not [args for keyword, args in dockerfile if keyword == "USER"]


def test_singularity_sections(singularity):
    header, sections = singularity
    # debootstrap: the image is made from Debian's archive and PyPI only
    assert header.get("Bootstrap") == "debootstrap"
    assert header.get("OSVersion") and header.get("MirrorURL")
    assert {"python3", "python3-venv"} <= set(header.get("Include", "").split())
    missing = [name for name in REQUIRED_SECTIONS if not sections.get(name)]
    assert not missing, f"Singularity.def lacks or leaves empty: {missing}"
    assert re.search(r'^exec bidsreface "\$@"$', sections["runscript"], re.MULTILINE)
    assert "--nv" in sections.get("help", ""), "%help should show GPU use with --nv"


def test_same_debian_release(dockerfile, singularity):
    """Both images are Debian bookworm with its Python 3.11 (the Dockerfile's default BASE, the
    python image, is built on bookworm); every stage of the Dockerfile starts from BASE."""
    base_args = [args for keyword, args in _stages(dockerfile)[0] if keyword == "ARG"]
    assert base_args, "Dockerfile: the base image is not an ARG before the first FROM"
    defaults = dict(arg.split("=", 1) for arg in base_args)
    base = defaults["BASE"]
    assert base.startswith("python:3.11-")
    assert base.endswith(f"-{singularity[0]['OSVersion']}")
    assert singularity[0]["OSVersion"] == "bookworm"  # whose python3 is 3.11
    froms = [args.split()[0] for keyword, args in dockerfile if keyword == "FROM"]
    assert froms and set(froms) == {"${BASE}"}


def test_singularity_build_script_lint():
    """``scripts/build_singularity.sh`` (how the image is built and smoke-tested here)."""
    script = DOCKERFILE.parent / "scripts" / "build_singularity.sh"
    _run([_tool("shellcheck"), "--severity=style", str(script)])


def test_same_torch_pin(singularity):
    docker_pins = _torch_pins(DOCKERFILE.read_text())
    singularity_pins = _torch_pins(singularity[1]["post"])
    assert len(docker_pins) == 1, f"Dockerfile torch pins: {docker_pins}"
    assert docker_pins == singularity_pins


def test_same_package_extras(singularity):
    docker_extras = _package_extras(DOCKERFILE.read_text())
    singularity_extras = _package_extras(singularity[1]["post"])
    assert docker_extras == {frozenset({"demo"})}
    assert docker_extras == singularity_extras


def test_copied_sources_exist(dockerfile, singularity):
    """What the recipes copy into the image must be in the repository."""
    sources = []
    for keyword, args in dockerfile:
        if keyword in {"COPY", "ADD"} and "--from=" not in args:
            sources += [word for word in args.split()[:-1] if not word.startswith("--")]
    sources += [
        line.split()[0]
        for line in singularity[1].get("files", "").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert sources
    missing = sorted({source for source in sources if not (ROOT / source).exists()})
    assert not missing, f"copied into the image but not in the repository: {missing}"


def test_console_script_declared():
    """The ENTRYPOINT and %runscript name a console script that pyproject.toml declares."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^bidsreface\s*=\s*"bidsreface\.cli\.run:main"', pyproject, re.MULTILINE)


def test_docker_build_script_lint():
    """``scripts/build_docker.sh`` (how the image is built and smoke-tested here)."""
    script = DOCKERFILE.parent / "scripts" / "build_docker.sh"
    _run([_tool("shellcheck"), "--severity=style", str(script)])


def test_dockerignore_keeps_what_is_copied(dockerfile):
    """``.dockerignore`` keeps the build context small and still holds every copied source."""
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", ".dockerignore should exclude everything, then list what is copied"
    kept = {line[1:] for line in lines if line.startswith("!")}
    copied = {
        word
        for keyword, args in dockerfile
        if keyword == "COPY" and "--from=" not in args
        for word in args.split()[:-1]
    }
    assert copied and copied <= kept, f"copied but ignored: {sorted(copied - kept)}"


def test_layer_order(dockerfile):
    """torch is installed before the package's code reaches the final stage (a code change
    rebuilds only the package's layers), a new wheel changes what is copied before the package's
    RUN (podman leaves mounts out of the cache key), and the labels' arguments (BUILD_DATE
    changes on every build) come after the last RUN, so that they invalidate no layer."""
    final = _stages(dockerfile)[-1]
    runs = [i for i, (keyword, _) in enumerate(final) if keyword == "RUN"]
    torch_runs = [i for i in runs if '"$TORCH"' in final[i][1]]
    package_runs = [i for i in runs if "from=wheel" in final[i][1]]
    assert len(torch_runs) == 1 and len(package_runs) == 1
    assert torch_runs[0] < package_runs[0]
    from_wheel = [i for i, (keyword, args) in enumerate(final)
                  if keyword in {"COPY", "ADD"} and "--from=wheel" in args]
    assert len(from_wheel) == 1, "one requirement file is copied from the wheel stage"
    assert final[from_wheel[0]][1].split()[1].endswith("requirements.txt")
    assert torch_runs[0] < from_wheel[0] < package_runs[0]
    assert "#sha256=" in " ".join(args for keyword, args in dockerfile if keyword == "RUN"), (
        "the requirement names the wheel with its sha256: a new wheel changes the copied file")
    for name in ("VERSION", "BUILD_DATE", "VCS_REF"):
        position = [i for i, (keyword, args) in enumerate(final)
                    if keyword == "ARG" and args.split("=")[0] == name]
        assert position and position[0] > runs[-1], f"ARG {name} comes before a RUN"


def test_final_stage_environment(dockerfile):
    """The final stage's tools come from its virtual environment, and the demo's head is where
    ``BIDSREFACE_BRAINSMALL`` says it is."""
    final = _stages(dockerfile)[-1]
    env = " ".join(args for keyword, args in final if keyword == "ENV")
    assert re.search(r"\bPATH=/opt/venv/bin:\$PATH\b", env)
    brainsmall = re.search(r"\bBIDSREFACE_BRAINSMALL=(\S+)", env)
    assert brainsmall
    copies = [args.split() for keyword, args in final if keyword == "COPY"]
    assert any(
        Path(words[-1]) / Path(words[-2]).name == Path(brainsmall.group(1))
        for words in copies
        if "--from=heads" in words
    )


def test_circleci_commands_lint(tmp_path):
    """Every ``run`` command of the CircleCI configuration passes shellcheck (as bash, CircleCI's
    shell, with its ``-eo pipefail``); ``<< parameters.NAME >>`` reads as a plain word."""
    config = yaml.safe_load(CIRCLECI.read_text())
    steps = [step for job in config["jobs"].values() for step in job["steps"]]
    steps += [step for command in config["commands"].values() for step in command["steps"]]
    runs = [step["run"] for step in steps if isinstance(step, dict) and "run" in step]
    commands = [run if isinstance(run, str) else run["command"] for run in runs]
    assert commands
    scripts = []
    for number, command in enumerate(commands):
        script = tmp_path / f"run_{number}.sh"
        command = re.sub(r"<<\s*parameters\.(\w+)\s*>>", r"parameter_\1", command)
        script.write_text("#!/bin/bash\nset -eo pipefail\n" + command)
        scripts.append(str(script))
    _run([_tool("shellcheck"), "--severity=style", *scripts])
