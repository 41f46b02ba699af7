"""Shared fixtures: a small BIDS dataset built once from two real heads."""

from __future__ import annotations

import os

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
