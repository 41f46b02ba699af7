"""Real DataLad datasets for the tests, made from the demo's real heads with the ``datalad`` CLI.

- :func:`make_dataset`: ``datalad create``, a copy of a folder, ``datalad save`` (every file
  annexed, as ``datalad create`` does by default: images and JSON are git-annex links);
- :func:`openneuro_dataset`: shaped like OpenNeuro's: text in git (``-c text2git``), images
  annexed, a ``func/`` bold and ``*_scans.tsv`` files with ``acq_time``;
- :func:`clone`: ``datalad clone`` (no annexed content fetched) and :func:`get`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

#: A fixed identity for the commits (a test machine may have none configured).
GIT_ENV = {"GIT_AUTHOR_NAME": "bidsreface tests", "GIT_AUTHOR_EMAIL": "tests@example.org",
           "GIT_COMMITTER_NAME": "bidsreface tests", "GIT_COMMITTER_EMAIL": "tests@example.org"}

#: ``acq_time`` of the OpenNeuro-shaped dataset's scans, by relative path of the scans file.
ACQ_TIMES = {
    "sub-01/sub-01_scans.tsv": {"anat/sub-01_T1w.nii.gz": "2021-03-04T09:10:11",
                                "func/sub-01_task-rest_bold.nii.gz": "2021-03-04T09:30:00"},
    "sub-04/ses-1/sub-04_ses-1_scans.tsv": {"anat/sub-04_ses-1_T1w.nii.gz":
                                            "2019-05-06T14:00:00"},
    "sub-04/ses-2/sub-04_ses-2_scans.tsv": {"anat/sub-04_ses-2_T1w.nii.gz": "2020-07-08T08:15:30",
                                            "anat/sub-04_ses-2_T2w.nii.gz":
                                            "2020-07-08T08:25:30"},
}


def _env() -> dict:
    """The environment the CLI runs in: the virtualenv's ``datalad`` first on ``PATH``."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, **GIT_ENV, "PATH": path}


def datalad(*args: str, cwd: Path | None = None) -> str:
    """Run ``datalad ARGS``; fail the test with its output when it fails."""
    env = _env()
    if shutil.which("datalad", path=env["PATH"]) is None:
        pytest.fail("datalad is missing: pip install datalad", pytrace=False)
    if shutil.which("git-annex", path=env["PATH"]) is None:
        pytest.fail("git-annex is missing: apt-get install git-annex", pytrace=False)
    proc = subprocess.run(["datalad", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"datalad {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}",
                    pytrace=False)
    return proc.stdout


def git(*args: str, cwd: Path) -> str:
    """Run ``git ARGS`` in *cwd* (checked); its output."""
    return subprocess.run(["git", *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          check=True, timeout=120).stdout


def _copy_into(source: Path, target: Path) -> None:
    """Copy the files of *source* into the dataset *target* (never its ``.git``)."""
    shutil.copytree(source, target, dirs_exist_ok=True, symlinks=False,
                    ignore=shutil.ignore_patterns(".git", ".datalad", ".gitattributes"))


def make_dataset(source: Path, target: Path, *, text2git: bool = False) -> Path:
    """``datalad create`` *target*, copy *source* into it, ``datalad save``; *target*."""
    datalad("create", *(["-c", "text2git"] if text2git else []), str(target))
    _copy_into(Path(source), Path(target))
    datalad("save", "-d", str(target), "-m", "data")
    return Path(target)


def _bold(t1w: Path, target: Path) -> None:
    """A short 4D bold made of the demo's real head (every 4th voxel, 3 volumes)."""
    head = nb.load(t1w)
    data = np.asarray(head.dataobj, dtype=np.float32).reshape(head.shape[:3])[::4, ::4, ::4]
    data = np.round(data / max(float(data.max()), 1.0) * 1000).astype(np.int16)
    affine = head.affine.copy()
    affine[:3, :3] *= 4
    img = nb.Nifti1Image(np.stack([data] * 3, axis=-1), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms((*img.header.get_zooms()[:3], 2.0))
    target.parent.mkdir(parents=True, exist_ok=True)
    nb.save(img, target)


def openneuro_dataset(bids: Path, target: Path) -> Path:
    """A DataLad dataset shaped like OpenNeuro's from the demo dataset *bids*: text files in
    git, images annexed, a ``func/`` bold of sub-01 and ``*_scans.tsv`` with ``acq_time``
    (sub-04's two sessions 14 months apart)."""
    staging = Path(str(target) + "-staging")
    _copy_into(Path(bids), staging)
    _bold(staging / "sub-01/anat/sub-01_T1w.nii.gz",
          staging / "sub-01/func/sub-01_task-rest_bold.nii.gz")
    (staging / "sub-01/func/sub-01_task-rest_bold.json").write_text(json.dumps(
        {"TaskName": "rest", "RepetitionTime": 2.0, "AcquisitionDateTime": "2021-03-04T09:30:00",
         "InstitutionName": "Demo Hospital"}, indent=2))
    for relpath, rows in ACQ_TIMES.items():
        lines = ["filename\tacq_time", *(f"{name}\t{time}" for name, time in rows.items())]
        (staging / relpath).write_text("\n".join(lines) + "\n")
    make_dataset(staging, target, text2git=True)
    shutil.rmtree(staging)
    return Path(target)


def clone(source: Path, target: Path) -> Path:
    """``datalad clone`` *source* to *target*: every annexed file without content."""
    datalad("clone", str(source), str(target))
    return Path(target)


def get(dataset: Path, *paths: str) -> None:
    """``datalad get`` *paths* (relative to *dataset*)."""
    datalad("get", "-d", str(dataset), *paths, cwd=dataset)
