"""Shared fixtures: a small BIDS dataset built once from two real heads."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

# as `bidsreface` does at start-up: ITK reads its thread count when antspyx is first imported,
# and only one thread gives reproducible registrations (see bidsreface.deface.register)
os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"


@pytest.fixture(scope="session")
def brainsmall_path():
    """Path to VolPack's ``brainsmall.den``; the session fails (not skips) without it."""
    from bidsreface.demo import find_brainsmall

    try:
        return find_brainsmall()
    except FileNotFoundError as err:
        pytest.fail(f"the real-head tests need brainsmall.den: {err}", pytrace=False)


@pytest.fixture(scope="session")
def real_dataset(tmp_path_factory, brainsmall_path):
    """``(root, manifest)`` of :func:`bidsreface.demo.build_dataset`, built once per session."""
    from bidsreface.demo import build_dataset

    root = tmp_path_factory.mktemp("real_dataset")
    return root, build_dataset(root, brainsmall_path)


def checksums(root: Path) -> dict[str, str]:
    """sha256 of every file under *root*, by relative path."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def read_only(root: Path):
    """Make a dataset read-only while the block runs: ``chmod -R a-w``, and, as root (whom
    permissions do not stop), a read-only bind mount over it, so that any write fails."""
    subprocess.run(["chmod", "-R", "a-w", str(root)], check=True)
    mounted = False
    if os.geteuid() == 0:
        bind = subprocess.run(["mount", "--bind", str(root), str(root)], capture_output=True)
        if bind.returncode == 0:
            mounted = True
            subprocess.run(["mount", "-o", "remount,bind,ro", str(root)], check=True)
    try:
        if mounted:  # the mount really refuses writes
            with pytest.raises(OSError):
                (root / ".probe").write_text("x")
        yield
    finally:
        if mounted:
            subprocess.run(["umount", str(root)], check=True)
        subprocess.run(["chmod", "-R", "u+w", str(root)], check=True)


@pytest.fixture(scope="session")
def participant_run(real_dataset, tmp_path_factory):
    """Participant then group level on :func:`real_dataset` (T1w and T2w, the packaged cGAN,
    ``--export-bids``), with the dataset read-only; returns the paths and exit codes."""
    from bidsreface.cli.run import main

    root, manifest = real_dataset
    bids = root / "bids"
    before = checksums(bids)
    out = tmp_path_factory.mktemp("out") / "bidsreface"
    work = tmp_path_factory.mktemp("work")
    export = tmp_path_factory.mktemp("export") / "deidentified"
    args = [str(bids), str(out), "participant", "--nprocs", "2", "-w", str(work),
            "--suffixes", "T1w", "T2w", "--export-bids", str(export)]
    tmp = tmp_path_factory.mktemp("tmp")  # the run's temporary files, scanned afterwards
    with pytest.MonkeyPatch.context() as patch, read_only(bids):
        patch.setattr(tempfile, "tempdir", str(tmp))
        patch.setenv("TMPDIR", str(tmp))
        participant = main(args)
        group = main([str(bids), str(out), "group", "-w", str(work)])
    return {"bids": bids, "out": out, "manifest": manifest, "before": before,
            "codes": (participant, group), "work": work, "tmp": tmp, "export": export}


#: The folder of real heads beside the repository (``../shared/heads``), where present.
SHARED_HEADS = Path(__file__).resolve().parents[2] / "shared" / "heads"


@pytest.fixture(scope="session")
def shared_heads():
    """``../shared/heads`` (real heads of many people); skips the test where it is absent."""
    if not (SHARED_HEADS / "ixi").is_dir():
        pytest.skip(f"needs the real heads of {SHARED_HEADS} (not on this machine)")
    return SHARED_HEADS
