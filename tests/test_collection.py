"""File collections: which images share one face mask, and which of them leads."""

from __future__ import annotations

import numpy as np

from bidsreface.bids import AnatImage
from bidsreface.collection import collection_groups, collection_leaders, whole_collections

GRID = ((84, 128, 128), np.diag([1.9, 1.9, 1.9, 1.0]))
OTHER_GRID = ((84, 80, 128), np.diag([1.9, 3.04, 1.9, 1.0]))


def _images(*names: str, session: str | None = None) -> list[AnatImage]:
    folder = f"/d/sub-01/ses-{session}/anat" if session else "/d/sub-01/anat"
    return [AnatImage.from_path(f"{folder}/{name}") for name in names]


def _names(groups) -> list[list[str]]:
    return [[image.path.name for image in group] for group in groups]


def _grid_of(grids: dict | None = None):
    grids = grids or {}
    return lambda image: grids.get(image.path.name, GRID)


def test_mp2rage_with_its_maps_is_one_collection_led_by_inv2_magnitude():
    images = _images("sub-01_inv-1_part-mag_MP2RAGE.nii", "sub-01_inv-1_part-phase_MP2RAGE.nii",
                     "sub-01_inv-2_part-mag_MP2RAGE.nii", "sub-01_inv-2_part-phase_MP2RAGE.nii",
                     "sub-01_UNIT1.nii", "sub-01_T1map.nii", "sub-01_T1w.nii.gz",
                     "sub-01_FLAIR.nii.gz")
    assert _names(collection_groups(images, _grid_of())) == [[
        "sub-01_inv-2_part-mag_MP2RAGE.nii", "sub-01_inv-1_part-mag_MP2RAGE.nii",
        "sub-01_UNIT1.nii", "sub-01_T1map.nii", "sub-01_inv-2_part-phase_MP2RAGE.nii",
        "sub-01_inv-1_part-phase_MP2RAGE.nii"]]
    leaders = collection_leaders(images, _grid_of())
    assert len(leaders) == 5
    assert {leader.path.name for leader in leaders.values()} == {
        "sub-01_inv-2_part-mag_MP2RAGE.nii"}


def test_maps_only_mp2rage_is_led_by_unit1():
    images = _images("sub-01_T1map.nii", "sub-01_UNIT1.nii")
    assert _names(collection_groups(images, _grid_of())) == [
        ["sub-01_UNIT1.nii", "sub-01_T1map.nii"]]


def test_echoes_lead_with_the_first_magnitude():
    images = _images(*(f"sub-01_echo-{e}_part-{p}_MEGRE.nii.gz" for e in (1, 2, 3)
                       for p in ("phase", "mag")), "sub-01_T2starmap.nii.gz")
    (group,) = collection_groups(images, _grid_of())
    assert group[0].path.name == "sub-01_echo-1_part-mag_MEGRE.nii.gz"
    assert len(group) == 7


def test_vfa_leads_with_the_largest_flip_angle():
    images = _images("sub-01_flip-1_VFA.nii.gz", "sub-01_flip-2_VFA.nii.gz")
    (group,) = collection_groups(images, _grid_of())
    assert group[0].path.name == "sub-01_flip-2_VFA.nii.gz"


def test_acquisitions_runs_sessions_and_grids_apart():
    """Another acq-, run- or session, or another grid: the head may have moved."""
    images = _images("sub-01_acq-MTw_flip-1_mt-on_MPM.nii.gz",
                     "sub-01_acq-MTw_flip-1_mt-off_MPM.nii.gz",
                     "sub-01_acq-T1w_flip-2_mt-off_MPM.nii.gz",
                     "sub-01_acq-T1w_flip-2_mt-off_echo-2_MPM.nii.gz",
                     "sub-01_run-1_inv-1_MP2RAGE.nii", "sub-01_run-1_inv-2_MP2RAGE.nii",
                     "sub-01_run-2_inv-1_MP2RAGE.nii", "sub-01_run-2_inv-2_MP2RAGE.nii",
                     "sub-01_run-2_UNIT1.nii", "sub-01_run-1_T1map.nii")
    grids = {"sub-01_run-1_T1map.nii": OTHER_GRID}
    groups = _names(collection_groups(images, _grid_of(grids)))
    assert sorted(groups) == sorted([
        ["sub-01_acq-MTw_flip-1_mt-off_MPM.nii.gz", "sub-01_acq-MTw_flip-1_mt-on_MPM.nii.gz"],
        ["sub-01_acq-T1w_flip-2_mt-off_MPM.nii.gz",
         "sub-01_acq-T1w_flip-2_mt-off_echo-2_MPM.nii.gz"],
        ["sub-01_run-1_inv-2_MP2RAGE.nii", "sub-01_run-1_inv-1_MP2RAGE.nii"],
        ["sub-01_run-2_inv-2_MP2RAGE.nii", "sub-01_run-2_inv-1_MP2RAGE.nii",
         "sub-01_run-2_UNIT1.nii"],
    ])  # the run-1 T1map is on a grid of its own: alone
    two_sessions = (_images("sub-01_ses-1_echo-1_MESE.nii", session="1")
                    + _images("sub-01_ses-2_echo-2_MESE.nii", session="2"))
    assert collection_groups(two_sessions, _grid_of()) == []


def test_an_unreadable_header_joins_nothing():
    images = _images("sub-01_echo-1_MEGRE.nii", "sub-01_echo-2_MEGRE.nii")
    assert collection_groups(images, lambda image: None) == []


def test_collections_are_skipped_whole():
    images = _images("sub-01_inv-1_MP2RAGE.nii", "sub-01_inv-2_MP2RAGE.nii",
                     "sub-01_UNIT1.nii", "sub-01_T1w.nii.gz")
    leaders = collection_leaders(images, _grid_of())
    t1w = images[3]
    assert whole_collections({images[0], t1w}, leaders) == {t1w}
    assert whole_collections(set(images), leaders) == set(images)
