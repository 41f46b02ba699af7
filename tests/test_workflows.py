"""The participant workflow graph, built without running it."""

from __future__ import annotations

from pathlib import Path

from bidsreface.bids import AnatImage
from bidsreface.config import Settings
from bidsreface.workflows.participant import init_participant_wf


def test_participant_graph(tmp_path):
    names = ["ses-1/anat/sub-01_ses-1_T1w.nii.gz", "ses-1/anat/sub-01_ses-1_T2w.nii.gz",
             "ses-2/anat/sub-01_ses-2_FLAIR.nii.gz"]
    for name in names:  # the interfaces check that their input files exist
        (tmp_path / "sub-01" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "sub-01" / name).touch()
    images = [AnatImage.from_path(tmp_path / "sub-01" / n) for n in names]
    model = tmp_path / "model.pt"
    model.touch()
    settings = Settings(bids_dir=tmp_path, output_dir=tmp_path / "out",
                        analysis_level="participant", work_dir=tmp_path / "work",
                        reface_model=model)
    wf = init_participant_wf("01", images, settings)
    nodes = set(wf.list_node_names())
    # only the T1w is refaced: no model is installed for the T2w and FLAIR; the FLAIR has no
    # T1w in its session, so no brain mask of its own: the template brain alone guards it
    assert nodes == {f"{step}_{key}" for step in ("register", "deface", "qc", "ds")
                     for key in ("ses_1_T1w", "ses_1_T2w", "ses_2_FLAIR")} | {
        "reface_ses_1_T1w", "brainmask_ses_1_T1w", "brainmask_ses_1_T2w"}
    assert wf.get_node("reface_ses_1_T1w").inputs.model_file == str(model)
    graph = wf._graph
    t1w, t2w, flair = (wf.get_node(f"register_{k}") for k in
                       ("ses_1_T1w", "ses_1_T2w", "ses_2_FLAIR"))
    # the T2w follows its session's T1w; the FLAIR has no T1w in its session: template
    assert graph.has_edge(t1w, t2w)
    assert not any(graph.has_edge(n, flair) for n in graph.nodes)
    # the T1w's own brain mask is carried to the T2w through their registrations
    t1_brain, t2_brain = wf.get_node("brainmask_ses_1_T1w"), wf.get_node("brainmask_ses_1_T2w")
    assert {(a, b) for a, b in graph.edges if b is t2_brain} == {
        (t1_brain, t2_brain), (t1w, t2_brain), (t2w, t2_brain)}
    for key in ("ses_1_T1w", "ses_1_T2w"):
        brain = wf.get_node(f"brainmask_{key}")
        assert graph.has_edge(brain, wf.get_node(f"deface_{key}"))
        assert graph.has_edge(brain, wf.get_node(f"qc_{key}"))
    # the refacer's privacy transform reads the T1w's own brain
    assert graph.has_edge(t1_brain, wf.get_node("reface_ses_1_T1w"))
    edge = graph.get_edge_data(t1_brain, wf.get_node("reface_ses_1_T1w"))
    assert ("mask_file", "brain_mask_file") in edge["connect"]
    assert Path(wf.get_node("ds_ses_1_T1w").config["execution"]["crashdump_dir"]) == (
        tmp_path / "out" / "sub-01" / "log")


def test_no_refacing_node_with_reface_none(tmp_path):
    (tmp_path / "sub-01" / "anat").mkdir(parents=True)
    (tmp_path / "sub-01" / "anat" / "sub-01_T1w.nii.gz").touch()
    image = AnatImage.from_path(tmp_path / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    settings = Settings(bids_dir=tmp_path, output_dir=tmp_path / "out",
                        analysis_level="participant", work_dir=tmp_path / "work", reface="none")
    assert set(init_participant_wf("01", [image], settings).list_node_names()) == {
        "register_T1w", "brainmask_T1w", "deface_T1w", "qc_T1w", "ds_T1w"}


def test_skipped_images_keep_only_what_a_redone_follower_needs(tmp_path):
    """A done T1w whose session's T2w is redone keeps its registration and brain-mask nodes
    only; a done image nobody follows gets no node; fingerprints reach the sinks."""
    names = ["ses-1/anat/sub-01_ses-1_T1w.nii.gz", "ses-1/anat/sub-01_ses-1_T2w.nii.gz",
             "ses-2/anat/sub-01_ses-2_T1w.nii.gz"]
    for name in names:
        (tmp_path / "sub-01" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "sub-01" / name).touch()
    t1_1, t2_1, t1_2 = (AnatImage.from_path(tmp_path / "sub-01" / n) for n in names)
    settings = Settings(bids_dir=tmp_path, output_dir=tmp_path / "out",
                        analysis_level="participant", work_dir=tmp_path / "work", reface="none")
    wf = init_participant_wf("01", [t1_1, t2_1, t1_2], settings, skip=frozenset({t1_1, t1_2}),
                             fingerprints={t2_1: "f" * 64})
    assert set(wf.list_node_names()) == {
        "register_ses_1_T1w", "brainmask_ses_1_T1w", "register_ses_1_T2w",
        "brainmask_ses_1_T2w", "deface_ses_1_T2w", "qc_ses_1_T2w", "ds_ses_1_T2w"}
    assert wf._graph.has_edge(wf.get_node("register_ses_1_T1w"),
                              wf.get_node("register_ses_1_T2w"))
    assert wf.get_node("ds_ses_1_T2w").inputs.fingerprint == "f" * 64


def test_collection_members_share_their_leaders_mask(tmp_path):
    """One registration and one mask for an MP2RAGE collection; a skipped member alone does
    not skip it (the collection is redone whole)."""
    import nibabel as nib
    import numpy as np

    names = ["sub-01_inv-1_part-mag_MP2RAGE.nii", "sub-01_inv-2_part-mag_MP2RAGE.nii",
             "sub-01_inv-2_part-phase_MP2RAGE.nii", "sub-01_UNIT1.nii"]
    folder = tmp_path / "sub-01" / "anat"
    folder.mkdir(parents=True)
    for name in names:  # headers only: the graph is built, not run
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), folder / name)
    images = [AnatImage.from_path(folder / n) for n in names]
    settings = Settings(bids_dir=tmp_path, output_dir=tmp_path / "out",
                        analysis_level="participant", work_dir=tmp_path / "work", reface="none")
    wf = init_participant_wf("01", images, settings, skip=frozenset({images[0]}))
    leader = "inv_2_part_mag_MP2RAGE"
    members = ("inv_1_part_mag_MP2RAGE", "inv_2_part_phase_MP2RAGE", "UNIT1")
    assert set(wf.list_node_names()) == (
        {f"register_{leader}", f"deface_{leader}"}
        | {f"mask_{key}" for key in members}
        | {f"{step}_{key}" for step in ("qc", "ds") for key in (leader, *members)})
    for key in members:
        assert wf._graph.has_edge(wf.get_node(f"deface_{leader}"), wf.get_node(f"mask_{key}"))
        assert wf._graph.has_edge(wf.get_node(f"register_{leader}"), wf.get_node(f"qc_{key}"))
    wf = init_participant_wf("01", images, settings, skip=frozenset(images))
    assert wf.list_node_names() == []
