"""File collections: the images of one acquisition share one face mask.

BIDS stores some acquisitions as several files: MP2RAGE (``inv-<n>``, ``part-mag|phase``, with
the ``UNIT1`` and ``T1map`` computed from them), MEGRE and MESE (``echo-<n>``), VFA
(``flip-<n>``), MPM (``flip``, ``mt``, ``echo``), MTS, MTR, IRT1. Their parts lie on one voxel
grid and show the head in one position, so one registration and one face mask serve them
all: the mask is made from the *leader* of the collection and every other part (magnitude or
phase alike) is set to its background inside the same mask.

The rules (:func:`collection_leaders`):

- A collection is the images of one participant and session with a collection suffix whose
  entities agree except ``inv``, ``echo``, ``flip``, ``mt`` and ``part``, and that lie on the
  same grid (shape and affine). Different ``acq-`` or ``run-`` labels are different
  acquisitions, in which the head may have moved: they are separate collections.
- A map computed from a collection (for example ``UNIT1``, ``T1map`` of an MP2RAGE) joins the
  first collection of its session with the same ``run`` (and ``acq`` when both have one) that
  lies on the same grid and whose suffix it belongs to (:data:`MAPS`). Maps that join none
  form a collection among themselves under the same rule (an MP2RAGE shared as ``UNIT1`` and
  ``T1map`` only).
- The leader is the part expected to register best: a magnitude (or part-less) image before a real
  or imaginary one before a phase; a part of the acquisition before a map, and among maps
  :data:`MAP_PREFERENCE`; then the last inversion (MP2RAGE ``inv-2``: the head fully
  recovered, a clean background), the first echo (the most signal), the largest flip angle
  (closest to T1w contrast), ``mt-off`` before ``mt-on``, and finally the file name.

The collection is registered through its leader; if that registration fails its check, the
next parts in this order (at most :data:`MAX_REGISTRATION_TRIES`, phase parts never) are tried,
and the first that passes places the mask (recorded as ``registered_from``): on one grid, any
part's registration places the same mask. Every member's record names the leader whose mask
it shares (``mask_from``).

Images on a grid of their own, T1w and the other non-parametric contrasts are no collection:
each is registered and masked itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from .bids import AnatImage

#: Suffixes whose files are the parts of one acquisition.
COLLECTION_SUFFIXES = ("MP2RAGE", "MPM", "MTS", "MTR", "VFA", "IRT1", "MESE", "MEGRE")
#: Maps computed from each kind of collection, on its grid.
MAPS = {
    "MP2RAGE": ("UNIT1", "T1map", "R1map"),
    "MPM": ("R1map", "R2starmap", "PDmap", "MTsat", "T1map", "T2starmap"),
    "MTS": ("MTsat", "MTRmap", "T1map", "R1map"),
    "MTR": ("MTRmap",),
    "VFA": ("T1map", "R1map", "S0map", "M0map"),
    "IRT1": ("T1map", "R1map"),
    "MESE": ("T2map", "R2map", "MWFmap"),
    "MEGRE": ("T2starmap", "R2starmap", "Chimap", "S0map"),
}
#: Maps in the order they are preferred as a leader (those with a T1w-like head first).
MAP_PREFERENCE = ("UNIT1", "R1map", "T1map", "PDmap", "S0map", "M0map", "MTsat", "R2starmap",
                  "T2starmap", "R2map", "T2map", "MTRmap", "MWFmap", "Chimap")
#: Entities that tell the parts of one collection apart.
PART_ENTITIES = ("inv", "echo", "flip", "mt", "part")

Grid = tuple[tuple[int, ...], np.ndarray]


def image_grid(image: AnatImage) -> Grid | None:
    """The voxel grid of an image from its header: ``(shape[:3], affine)``.

    None when the header cannot be read: the image then forms no collection, and its own
    steps fail with the reason.
    """
    import nibabel as nb

    try:
        img = nb.load(image.path)
    except (OSError, EOFError, ValueError, nb.filebasedimages.ImageFileError):
        return None
    return tuple(int(n) for n in img.shape[:3]), np.asarray(img.affine, dtype=float)


def _same_grid(a: Grid | None, b: Grid | None) -> bool:
    """Whether two grids are one: same shape, affines equal to 1e-4 mm."""
    return (a is not None and b is not None and a[0] == b[0]
            and np.allclose(a[1], b[1], rtol=0, atol=1e-4))


def _number(value: str | None) -> int:
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def leader_rank(image: AnatImage) -> tuple:
    """Sort key of the leader rule (the smallest leads); see the module's docstring.

    >>> names = ["sub-1_inv-1_part-mag_MP2RAGE.nii", "sub-1_inv-2_part-phase_MP2RAGE.nii",
    ...          "sub-1_UNIT1.nii", "sub-1_inv-2_part-mag_MP2RAGE.nii", "sub-1_T1map.nii"]
    >>> images = [AnatImage.from_path(f"/d/sub-1/anat/{n}") for n in names]
    >>> [i.path.name for i in sorted(images, key=leader_rank)][:3]
    ['sub-1_inv-2_part-mag_MP2RAGE.nii', 'sub-1_inv-1_part-mag_MP2RAGE.nii', 'sub-1_UNIT1.nii']
    """
    entities = image.entities
    part = {None: 0, "mag": 0, "real": 1, "imag": 1, "phase": 2}.get(entities.get("part"), 1)
    is_map = image.suffix not in COLLECTION_SUFFIXES
    map_rank = (MAP_PREFERENCE.index(image.suffix) if image.suffix in MAP_PREFERENCE
                else len(MAP_PREFERENCE))
    return (part, is_map, map_rank, -_number(entities.get("inv")),
            _number(entities.get("echo")), -_number(entities.get("flip")),
            entities.get("mt") == "on", image.path.name)


def _acquisition(image: AnatImage) -> tuple:
    """The entities that name one acquisition of a collection (all but the parts' own)."""
    return tuple(sorted((k, v) for k, v in image.entities.items()
                        if k not in PART_ENTITIES and k != "sub"))


def _joins(map_image: AnatImage, first: AnatImage) -> bool:
    """Whether a map may belong to the acquisition of collection part *first*."""
    if map_image.session != first.session:
        return False
    if map_image.entities.get("run") != first.entities.get("run"):
        return False
    acq = (map_image.entities.get("acq"), first.entities.get("acq"))
    return None in acq or acq[0] == acq[1]


def collection_groups(images: Iterable[AnatImage],
                      grid: Callable[[AnatImage], Grid | None] = image_grid,
                      ) -> list[list[AnatImage]]:
    """The collections among one participant's images (two members or more), each with its
    leader first; see the module's docstring for the rules."""
    images = sorted(images, key=lambda i: i.path.name)
    grids = {image: grid(image) for image in images
             if image.suffix in COLLECTION_SUFFIXES or image.suffix in MAP_PREFERENCE}
    groups: list[list[AnatImage]] = []

    def place(image: AnatImage, candidates: list[list[AnatImage]]) -> bool:
        for group in candidates:
            if _same_grid(grids[image], grids[group[0]]):
                group.append(image)
                return True
        return False

    raw: dict[tuple, list[list[AnatImage]]] = {}
    for image in images:
        if image.suffix in COLLECTION_SUFFIXES and grids[image] is not None:
            key = (image.suffix, image.session, _acquisition(image))
            if not place(image, raw.setdefault(key, [])):
                raw[key].append([image])
    groups = [group for key in sorted(raw, key=str) for group in raw[key]]
    maps_only: dict[tuple, list[list[AnatImage]]] = {}
    for image in images:
        if image.suffix not in MAP_PREFERENCE or grids[image] is None:
            continue
        candidates = [g for g in groups
                      if image.suffix in MAPS[g[0].suffix] and _joins(image, g[0])]
        if place(image, candidates):
            continue
        key = (image.session, image.entities.get("run"), image.entities.get("acq"))
        if not place(image, maps_only.setdefault(key, [])):
            maps_only[key].append([image])
    groups += [group for key in sorted(maps_only, key=str) for group in maps_only[key]]
    return [sorted(group, key=leader_rank) for group in groups if len(group) > 1]


def collection_leaders(images: Iterable[AnatImage],
                       grid: Callable[[AnatImage], Grid | None] = image_grid,
                       ) -> dict[AnatImage, AnatImage]:
    """``{member: leader}`` for every collection member that is not its leader."""
    return {member: group[0] for group in collection_groups(images, grid)
            for member in group[1:]}


#: Parts a collection's registration tries, in the leader rule's order (phase parts never).
MAX_REGISTRATION_TRIES = 3


def registration_candidates(leader: AnatImage, members: Iterable[AnatImage]) -> list[AnatImage]:
    """The parts whose registration may place a collection's mask, the leader first: the
    next ones are tried only when the one before fails its check.

    >>> names = ["sub-1_inv-2_part-mag_MP2RAGE.nii", "sub-1_inv-2_part-phase_MP2RAGE.nii",
    ...          "sub-1_inv-1_part-mag_MP2RAGE.nii", "sub-1_UNIT1.nii", "sub-1_T1map.nii"]
    >>> leader, *members = [AnatImage.from_path(f"/d/sub-1/anat/{n}") for n in names]
    >>> [i.path.name for i in registration_candidates(leader, members)]
    ['sub-1_inv-2_part-mag_MP2RAGE.nii', 'sub-1_inv-1_part-mag_MP2RAGE.nii', 'sub-1_UNIT1.nii']
    """
    parts = sorted({leader, *members}, key=leader_rank)
    usable = [p for p in parts if p.entities.get("part") != "phase" or p == leader]
    return usable[:MAX_REGISTRATION_TRIES]


def whole_collections(selected: Iterable[AnatImage],
                      leaders: dict[AnatImage, AnatImage]) -> frozenset[AnatImage]:
    """The images of *selected* whose whole collection is in *selected*: a collection is
    skipped (or redone) as one, since its members share the leader's mask.

    >>> a, b, c = (AnatImage.from_path(f"/d/sub-1/anat/sub-1_echo-{n}_MEGRE.nii")
    ...            for n in (1, 2, 3))
    >>> sorted(i.path.name for i in whole_collections({a, b}, {b: a, c: a}))
    []
    >>> sorted(i.path.name for i in whole_collections({a, b, c}, {b: a, c: a}))
    ['sub-1_echo-1_MEGRE.nii', 'sub-1_echo-2_MEGRE.nii', 'sub-1_echo-3_MEGRE.nii']
    """
    selected = set(selected)
    members: dict[AnatImage, set[AnatImage]] = {}
    for member, leader in leaders.items():
        members.setdefault(leader, {leader}).add(member)
    whole = set()
    for image in selected:
        leader = leaders.get(image, image)
        if members.get(leader, {image}) <= selected:
            whole.add(image)
    return frozenset(whole)


def apply_shared_mask(in_file: str, mask_file: str, out_dir, leader_file: str, *,
                      keep_extensions: bool = False):
    """Deface a collection member with its leader's mask; write the image into *out_dir*.

    Every voxel of the mask is set to the member's background (:func:`bidsreface.deface.
    apply.deface`, taken on the values a reader sees), magnitude and phase alike; the rest of
    the file is bit-identical. The header is the member's, scrubbed as
    :func:`bidsreface.image.output_header` does. Returns the defaced image's path.

    Raises
    ------
    ValueError
        The member is not on the leader's grid any more (the file changed since it was
        grouped).
    """
    from pathlib import Path

    import nibabel as nb

    from .deface.apply import deface
    from .image import load_image, read_header, save_like, stored_background, stored_values

    img, mask_img = load_image(in_file), nb.load(mask_file)
    if not _same_grid((tuple(img.shape[:3]), img.affine),
                      (tuple(mask_img.shape[:3]), mask_img.affine)):
        raise ValueError(f"{in_file}: not on the grid of {Path(leader_file).name}, whose face "
                         f"mask it shares")
    mask = np.asarray(mask_img.dataobj).reshape(mask_img.shape[:3]) > 0
    stored = stored_values(in_file)
    background = stored_background(stored, read_header(in_file))
    return save_like(deface(stored, mask, background), in_file,
                     Path(out_dir) / "defaced.nii.gz", "defaced", keep_extensions=keep_extensions)
