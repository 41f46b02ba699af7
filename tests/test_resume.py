"""Fingerprints and the check that an image's outputs are current."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bidsreface.bids import AnatImage, derivative_path
from bidsreface.config import Settings
from bidsreface.derivatives import qc_path
from bidsreface.resume import fingerprint, is_current


@pytest.fixture
def case(tmp_path):
    anat = tmp_path / "bids" / "sub-01" / "anat"
    anat.mkdir(parents=True)
    for name, content in (("sub-01_T1w.nii.gz", b"t1"), ("sub-01_T2w.nii.gz", b"t2"),
                          ("sub-01_T2w.json", b'{"EchoTime": 0.1}')):
        (anat / name).write_bytes(content)
    t1 = AnatImage.from_path(anat / "sub-01_T1w.nii.gz", tmp_path / "bids")
    t2 = AnatImage.from_path(anat / "sub-01_T2w.nii.gz", tmp_path / "bids")
    settings = Settings(bids_dir=tmp_path / "bids", output_dir=tmp_path / "out",
                        analysis_level="participant", work_dir=tmp_path / "work")
    return t1, t2, settings


def test_fingerprint_follows_what_the_outputs_depend_on(case):
    t1, t2, settings = case
    base = fingerprint(t2, t1, settings, None)
    assert fingerprint(t2, t1, settings, None) == base
    # resources and selection do not count
    assert fingerprint(t2, t1, dataclasses.replace(settings, nprocs=7, device="cuda"),
                       None) == base
    changed = [fingerprint(t2, t1, dataclasses.replace(settings, random_seed=1), None),
               fingerprint(t2, t1, dataclasses.replace(settings, deface_ears=True), None),
               fingerprint(t2, None, settings, None),
               fingerprint(t2, t1, settings, "0" * 64)]
    t2.sidecar.write_text('{"EchoTime": 0.2}')
    changed.append(fingerprint(t2, t1, settings, None))
    t1.path.write_bytes(b"t1 changed")
    changed.append(fingerprint(t2, t1, settings, None))
    assert len({base, *changed}) == len(changed) + 1


def _record(settings, image, **fields):
    record = {"source": image.relpath, "status": "ok", "fingerprint": "a" * 64,
              "outputs": {"defaced": "anat/sub-01_desc-defaced_T1w.nii.gz",
                          "mask": "anat/sub-01_mod-T1w_defacemask.nii.gz", "figures": {}}}
    record.update(fields)
    path = qc_path(settings.output_dir, image)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    for kind in ("defaced", "mask"):
        target = settings.output_dir / "sub-01" / record["outputs"][kind]
        target.write_bytes(b"x")
    return record


def test_is_current(case):
    t1, _, settings = case
    assert not is_current(settings.output_dir, t1, "a" * 64)  # no record
    _record(settings, t1)
    assert is_current(settings.output_dir, t1, "a" * 64)
    assert not is_current(settings.output_dir, t1, "b" * 64)
    _record(settings, t1, status="failed")
    assert not is_current(settings.output_dir, t1, "a" * 64)
    _record(settings, t1)
    Path(derivative_path(settings.output_dir, t1, desc="defaced")).unlink()
    assert not is_current(settings.output_dir, t1, "a" * 64)
    qc_path(settings.output_dir, t1).write_text("{not json")
    assert not is_current(settings.output_dir, t1, "a" * 64)
