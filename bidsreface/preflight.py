"""Before the run: which selected images can be read, and what each cannot be processed for.

A user's dataset holds files that cannot be read as they are: git-annex files whose content
was not fetched (every image of a fresh ``datalad clone``), dangling links, unreadable
sidecars, names that are not valid BIDS. Each such image fails alone, with one line that
says why (and what to do), before the workflow is built: the other images and participants
go on, and the run exits 1. An image that needs a failed one (a session's T2w its T1w, a
file collection's member its leader) fails with it, named after it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from .bids import (
    ANAT_SUFFIXES,
    AnatImage,
    derivative_path,
    load_metadata,
    metadata_files,
    name_problem,
)
from .content import content_problem
from .errors import UsageError


class Preflight(NamedTuple):
    """What :func:`preflight` found."""

    #: ``{subject: [image, ...]}``: the images to process (participants left with none out).
    images: dict
    #: ``{image: reason}``: the images that fail before the run, in the order selected.
    failures: dict
    #: ``{image: note}``: what was assumed of a kept image's geometry (one sentence).
    notes: dict


def file_problem(path: Path, root: Path | None) -> str | None:
    """Why a file of the dataset cannot be read: :func:`~bidsreface.content.content_problem`,
    or a folder where a file is expected."""
    problem = content_problem(path, root)
    if problem is None and not Path(path).is_file():
        return "not a regular file"
    return problem


def image_problem(image: AnatImage, suffixes=ANAT_SUFFIXES) -> str | None:
    """Why *image* cannot be processed, in one line (None: it can): its name, its file, then
    each sidecar that applies to it."""
    problem = name_problem(image, suffixes)
    if problem is not None:
        return problem
    root = image.bids_dir
    problem = file_problem(image.path, root)
    if problem is not None:
        return problem
    for sidecar in metadata_files(image):
        problem = file_problem(sidecar, root)
        if problem is not None:
            shown = sidecar.relative_to(root) if root in sidecar.parents else sidecar
            return f"sidecar {shown.as_posix()}: {problem}"
    try:
        load_metadata(image)
    except UsageError as err:  # "<file>: unreadable JSON sidecar (...)"
        return str(err).replace(f"{root}{os.sep}", "", 1) if root is not None else str(err)
    return None


def name_clashes(images: dict) -> dict:
    """``{image: other}`` for the images whose outputs would be named as another's: a name
    with its entities out of BIDS order (which pybids does not index, and whose outputs take
    the BIDS order) beside the same name in order. The image named in order keeps its name.

    >>> a, b = (AnatImage.from_path(f"/d/sub-1/anat/sub-1_{e}_T1w.nii") for e in
    ...         ("acq-x_run-1", "run-1_acq-x"))
    >>> {i.path.name: o.path.name for i, o in name_clashes({"1": [a, b]}).items()}
    {'sub-1_run-1_acq-x_T1w.nii': 'sub-1_acq-x_run-1_T1w.nii'}
    """
    clashes = {}
    for subject_images in images.values():
        by_output: dict[str, list[AnatImage]] = {}
        for image in subject_images:
            output = derivative_path(Path(), image).name
            by_output.setdefault(output.split(".")[0], []).append(image)
        for output, same in by_output.items():
            if len(same) < 2:
                continue
            # the one named as its outputs are (entities in BIDS order) first
            same.sort(key=lambda image: (image.path.name.split(".")[0] != output,
                                         image.path.name))
            clashes.update(dict.fromkeys(same[1:], same[0]))
    return clashes


def preflight(images: dict, depends_on: dict, suffixes=ANAT_SUFFIXES,
              geometry=None) -> Preflight:
    """Split the selected images into those to process and those that fail now.

    Parameters
    ----------
    images
        ``{subject: [AnatImage, ...]}`` as :func:`bidsreface.bids.collect_images` selects them.
    depends_on
        For each image, ``(image, role)`` that it cannot be processed without, or None (see
        ``_dependencies`` of :mod:`bidsreface.cli.run`).
    suffixes
        The suffixes an image's name may end with (``--suffixes``, else every anatomical one).
    geometry
        ``path -> note or None`` (:func:`bidsreface.image.geometry_note`); None: not checked.

    Returns
    -------
    Preflight
        The images kept, the failures (``{image: reason}``) and the geometry notes.
    """
    failures: dict[AnatImage, str] = {}
    notes: dict[AnatImage, str] = {}
    for subject_images in images.values():
        for image in subject_images:
            problem = image_problem(image, suffixes)
            if problem is not None:
                failures[image] = problem
    for image, other in name_clashes(images).items():
        failures.setdefault(image, f"its outputs would take the names of those of "
                                   f"{other.path.name}; rename one of them")
    changed = True
    while changed:  # what depends on a failed image fails too, through chains
        changed = False
        for subject_images in images.values():
            for image in subject_images:
                needed = depends_on.get(image)
                if image in failures or needed is None or needed[0] not in failures:
                    continue
                failures[image] = f"not processed: {needed[0].path.name} failed ({needed[1]})"
                changed = True
    kept = {}
    for subject, subject_images in images.items():
        left = [image for image in subject_images if image not in failures]
        if left:
            kept[subject] = left
    if geometry is not None:
        for subject_images in kept.values():
            for image in subject_images:
                note = geometry(image.path)
                if note is not None:
                    notes[image] = note
    order = [image for subject_images in images.values() for image in subject_images]
    return Preflight(kept, {image: failures[image] for image in order if image in failures},
                     notes)
