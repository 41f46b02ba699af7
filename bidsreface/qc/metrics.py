"""Per-image quality metrics of a de-identification, and the pass/fail verdict.

Everything here is a pure function of arrays (or of files, for :func:`image_qc`). The original
image is loaded only to render its face *in memory*, as the reference that the de-identified
renders are compared with; no render, crop or embedding of it leaves this module (the figures
that :func:`image_qc` returns are of the de-identified heads only, and withheld when one of
them still shows the original face).
"""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nb
import numpy as np
from scipy import ndimage

#: Renders given to the face detector (pixels): faces fill about half, 256 is enough and fast.
RENDER_SIZE = 256
#: Face-embedding distance under which two renders are taken as the same face. Measured on
#: the untextured surface renders: the same head under a small pose change 0.14-0.19, two
#: different real heads 0.53-0.62 (dlib's own 0.6 is for photographs).
SAME_FACE_DISTANCE = 0.35
#: A face mask smaller than this (ml) cannot cover a face.
MIN_FACE_VOLUME_ML = 20.0
#: Relative change of the head-size scale (de-identified vs original) that flags an image.
MAX_HEAD_SCALE_CHANGE = 0.05


# --------------------------------------------------------------------------- voxels


def own_brain_changed(raw: np.ndarray, out: np.ndarray, brain: np.ndarray) -> int:
    """Voxels of the image's own brain mask whose stored value differs in *out*.

    >>> a = np.zeros((2, 2, 2)); b = a.copy(); b[0, 0, 0] = 1; b[1, 1, 1] = 1
    >>> brain = np.zeros((2, 2, 2), bool); brain[0, 0, 0] = True
    >>> own_brain_changed(a, b, brain)
    1
    """
    return int(np.count_nonzero((raw != out) & brain.reshape(raw.shape)))


def brain_checks(raw: np.ndarray, outputs: dict, brain: np.ndarray | None,
                 brain_info: dict | None) -> dict:
    """Which brain guarded the image, and the voxels of its own brain each output changed.

    *outputs* maps ``defaced``/``refaced`` to their stored values. Without an own brain mask
    (a contrast with no T1w in its session) the guard is the template brain alone and
    ``own_brain_changed`` is None.
    """
    if brain is None:
        return {"brain_guard": "template", "brain_mask": None, "own_brain_changed": None}
    brain_info = brain_info or {}
    per_output = {kind: own_brain_changed(raw, out, brain) for kind, out in outputs.items()}
    return {
        "brain_guard": "own+template",
        "brain_mask": {key: brain_info.get(key) for key in
                       ("brain_mask", "brain_mask_from", "brain_mask_ml", "brain_model")},
        "own_brain_changed": sum(per_output.values()),
        "own_brain_changed_by": per_output,
    }


def own_guard_overlap(mask: np.ndarray, brain: np.ndarray, affine: np.ndarray,
                      margin_mm: float) -> int:
    """Voxels of *mask* within *margin_mm* (native mm) of the image's own brain.

    >>> brain = np.zeros((12, 1, 1), bool); brain[:2] = True
    >>> m = np.zeros((12, 1, 1), bool); m[4:] = True
    >>> own_guard_overlap(m, brain, np.eye(4), 4.0), own_guard_overlap(m, brain, np.eye(4), 3.0)
    (2, 1)
    """
    from ..deface.mask import own_brain_guard

    inside = np.argwhere(mask)
    if not len(inside):
        return 0
    lo, hi = inside.min(0), inside.max(0) + 1
    near = own_brain_guard(brain.reshape(mask.shape), affine, lo, hi, margin_mm)
    return int(np.count_nonzero(near & mask[tuple(slice(a, b) for a, b in zip(lo, hi,
                                                                             strict=True))]))


def guard_overlap(mask: np.ndarray, affine: np.ndarray, distance: np.ndarray,
                  distance_affine: np.ndarray, guard_mm: float) -> int:
    """Voxels of *mask* inside the brain or closer than *guard_mm* to it, per a distance map.

    Parameters
    ----------
    mask
        The deface mask on the image's grid.
    affine
        The image's voxel -> mm.
    distance, distance_affine
        Distance to the brain (template mm, 0 inside) on its own grid, as the registration
        step writes it; voxels outside that grid count as touching the brain.
    guard_mm
        The brain guard: brain plus this margin (in the map's millimetres).

    >>> d = np.arange(10.0).reshape(10, 1, 1) * np.ones((1, 3, 3))
    >>> m = np.zeros((10, 3, 3), bool); m[2:6, 1, 1] = True
    >>> guard_overlap(m, np.eye(4), d, np.eye(4), 4.0)
    2
    >>> m[0, 1, 1] = True; guard_overlap(m, np.eye(4), d, np.eye(4), 0.0)
    1
    """
    inside = np.argwhere(mask)
    if not len(inside):
        return 0
    vox = np.linalg.inv(distance_affine) @ affine
    coords = vox[:3, :3] @ inside.T + vox[:3, 3:4]
    values = ndimage.map_coordinates(np.asarray(distance, dtype=np.float32), coords, order=1,
                                     mode="constant", cval=0.0)
    return int(np.count_nonzero((values < guard_mm) | (values <= 0)))


def guard_margin_mm(matrix: np.ndarray, brain_margin_mm: float) -> float:
    """The brain margin in template millimetres: the most the map can shrink it.

    A template distance ``d`` is at least ``d * s_min`` native millimetres (``s_min`` the
    smallest singular value of the template -> native affine).

    >>> guard_margin_mm(np.diag([2.0, 2.0, 0.5, 1.0]), 5.0)
    10.0
    """
    return float(brain_margin_mm / np.linalg.svd(np.asarray(matrix)[:3, :3],
                                                 compute_uv=False).min())


def head_scale(matrix: np.ndarray) -> float:
    """Head size relative to the template: the determinant of the template -> native affine.

    >>> head_scale(np.diag([1.1, 1.0, 0.9, 1.0]))
    0.99
    """
    return round(float(abs(np.linalg.det(np.asarray(matrix)[:3, :3]))), 4)


def etiv_ml(scale: float, template_icv_ml: float) -> float:
    """eTIV-style intracranial volume: the template's brain-mask volume times the scale.

    >>> etiv_ml(0.8, 1500.0)
    1200.0
    """
    return round(float(scale * template_icv_ml), 1)


def template_icv_ml(template) -> float:
    """Volume (ml) of the template's brain mask."""
    return float(template.brain.sum()) * template.spacing ** 3 / 1000.0


def registered_scale(data: np.ndarray, affine: np.ndarray, start_deg=(0.0, 0.0),
                     seed: int = 0) -> float:
    """Head-size scale of an image from a one-start affine registration to the template.

    The same procedure as the defacing's registration from its best start, so that an
    original and its de-identified version are measured alike (voxels exactly 0, such as a
    removed face, are left out of the metric as there).
    """
    from ..deface.register import register_to_template
    from ..deface.template import load_template

    reg = register_to_template(np.asarray(data, dtype=np.float32), affine, load_template(),
                               seed=seed, starts=(tuple(start_deg),))
    return head_scale(reg.matrix)


# --------------------------------------------------------------------------- faces


def face_figures(deidentified: np.ndarray, original_face) -> dict:
    """Detection on a de-identified render and its face-embedding distance to the original.

    Parameters
    ----------
    deidentified
        Render of the de-identified head, same view.
    original_face
        ``(detection, embedding)`` of the best face on the original's render (same view, in
        memory only), or None when none was found.

    Returns
    -------
    dict
        ``face_detected``, ``face_score`` (the detector's confidence, None without a face)
        and ``face_distance``: the embedding distance to the original, measured on the face
        the detector finds, else on the original's face box (what is left where the face
        was); None when the original itself shows no face.
    """
    from .faces import detect_faces, embedding_distance, face_embedding

    found = detect_faces(deidentified)
    figures = {"face_detected": bool(found),
               "face_score": round(found[0].score, 4) if found else None,
               "face_distance": None}
    if original_face is not None:
        box = found[0] if found else original_face[0]
        embedding = face_embedding(deidentified, box)
        figures["face_distance"] = round(embedding_distance(original_face[1], embedding), 4)
    return figures


def best_face(render: np.ndarray):
    """``(detection, embedding)`` of the best face of a render, or None."""
    from .faces import detect_faces, face_embedding

    found = detect_faces(render)
    return (found[0], face_embedding(render, found[0])) if found else None


# --------------------------------------------------------------------------- verdict


def qc_reasons(metrics: dict) -> list[str]:
    """Why an image fails its QC (empty: it passes).

    >>> qc_reasons({"registration_ok": True, "changed_outside_mask": 0, "guard_overlap": 0,
    ...             "face_volume_ml": 150.0, "defaced": {"face_detected": True}})
    ['a face is still detected on the defaced head']
    """
    reasons = []
    if not metrics.get("registration_ok", False):
        reasons.append("the registration failed its quality check")
    own = metrics.get("own_brain_changed")
    if own:
        reasons.append(f"{own} voxels of the image's own brain mask changed")
    changed = metrics.get("changed_outside_mask", 0)
    if changed:
        reasons.append(f"{changed} voxels changed outside the deface mask")
    if metrics.get("guard_overlap", 0):
        reasons.append(f"the deface mask overlaps the brain guard by "
                       f"{metrics['guard_overlap']} voxels")
    if metrics.get("own_guard_overlap", 0):
        reasons.append(f"the deface mask comes within the brain margin of the image's own "
                       f"brain at {metrics['own_guard_overlap']} voxels")
    if metrics.get("face_volume_ml", 0.0) < MIN_FACE_VOLUME_ML:
        reasons.append(f"the face mask is {metrics.get('face_volume_ml', 0.0)} ml "
                       f"(< {MIN_FACE_VOLUME_ML:g}): it cannot cover a face")
    for kind in ("defaced", "refaced"):
        faces = metrics.get(kind) or {}
        if kind == "defaced" and faces.get("face_detected"):
            reasons.append("a face is still detected on the defaced head")
        distance = faces.get("face_distance")
        if distance is not None and distance < SAME_FACE_DISTANCE:
            reasons.append(f"the {kind} face matches the original's (embedding distance "
                           f"{distance:.2f} < {SAME_FACE_DISTANCE})")
    return reasons


def shows_original_face(metrics: dict, kind: str) -> bool:
    """Whether the figures of the *kind* output (defaced, refaced) may show the original face.

    True when the defaced head still has a face, when the face mask is too small to have
    removed one, or when the output's face matches the original's.

    >>> shows_original_face({"face_volume_ml": 0.0, "refaced": {}}, "refaced")
    True
    """
    faces = metrics.get(kind) or {}
    distance = faces.get("face_distance")
    return bool(
        metrics.get("face_volume_ml", 0.0) < MIN_FACE_VOLUME_ML
        or (metrics.get("defaced") or {}).get("face_detected")
        or (distance is not None and distance < SAME_FACE_DISTANCE)
    )


# --------------------------------------------------------------------------- one image


def _volume(img: nb.Nifti1Image) -> np.ndarray:
    return np.asanyarray(img.dataobj).astype(np.float32).reshape(img.shape[:3])


def voxel_checks(raw_file, outputs: dict, mask: np.ndarray, matrix: np.ndarray,
                 registration: dict, mask_info: dict, distance_file,
                 brain_margin_mm: float) -> dict:
    """Registration quality, mask volume, brain-guard overlap, voxels changed outside the mask
    (as stored and as read, scaled).

    *outputs* maps ``defaced``/``refaced`` to their images; their counts go under their name.
    """
    from ..image import changed_voxels

    raw_img, distance = nb.load(raw_file), nb.load(distance_file)
    # the template brain's own margin: the brain margin, or less where the own brain gave it
    guard_mm = guard_margin_mm(matrix, mask_info.get("template_margin_mm", brain_margin_mm))
    checks = {
        "registration_ok": bool(registration.get("ok", False)),
        "head_dice": registration.get("head_dice", registration.get("rigid_head_dice")),
        "correlation": registration.get("correlation", registration.get("rigid_correlation")),
        "face_volume_ml": float(mask_info.get("face_volume_ml", 0.0)),
        "guard_overlap": guard_overlap(mask, raw_img.affine,
                                       distance.get_fdata(dtype=np.float32), distance.affine,
                                       guard_mm),
        "guard_mm_template": round(guard_mm, 3),
    }
    for kind, img in outputs.items():
        counts = changed_voxels(raw_file, img.get_filename(), mask)
        checks[kind] = {key: counts[key] for key in ("changed_outside_mask",
                                                     "changed_outside_mask_stored",
                                                     "changed_outside_mask_values")}
    checks["changed_outside_mask"] = sum(checks[k]["changed_outside_mask"] for k in outputs)
    return checks


def head_sizes(raw_img: nb.Nifti1Image, outputs: dict, matrix: np.ndarray,
               registration: dict, seed: int = 0) -> tuple[dict, dict]:
    """eTIV-style head sizes of the original and of each output.

    The original's comes from its registration to the template; each output is registered
    alike (one start, the original's best). An image that followed its session's T1w
    (rigidly) is registered to the template here, original and outputs alike.
    Returns the original's figures and ``{kind: figures}``.
    """
    from ..deface.template import load_template

    icv = template_icv_ml(load_template())
    direct = registration.get("reference", "template") == "template"
    start_deg = registration.get("start_deg", [0.0, 0.0]) if direct else [0.0, 0.0]
    original = head_scale(matrix) if direct else registered_scale(
        _volume(raw_img), raw_img.affine, start_deg, seed)
    per_output = {}
    for kind, img in outputs.items():
        scale = registered_scale(_volume(img), img.affine, start_deg, seed)
        per_output[kind] = {"head_scale": scale, "etiv_ml": etiv_ml(scale, icv),
                            "head_scale_change": round(scale / original - 1.0, 4)}
    return {"head_scale_original": original, "etiv_original_ml": etiv_ml(original, icv)}, \
        per_output


def face_checks(raw_img: nb.Nifti1Image, outputs: dict, matrix: np.ndarray):
    """Face detection and embedding distance of each output's frontal render.

    The original is rendered and embedded here, in memory, and dropped before returning.
    Returns whether the original shows a face, ``{kind: figures}`` (:func:`face_figures`) and
    ``{kind: {view: render}}`` of the outputs, for the reportlets.
    """
    from .render import render_head

    original_face = best_face(render_head(_volume(raw_img), raw_img.affine, size=RENDER_SIZE,
                                          matrix=matrix))
    figures, renders = {}, {}
    for kind, img in outputs.items():
        data = _volume(img)
        renders[kind] = {view: render_head(data, img.affine, view=view, size=RENDER_SIZE,
                                           matrix=matrix)
                         for view in ("frontal", "profile")}
        figures[kind] = face_figures(renders[kind]["frontal"], original_face)
    return original_face is not None, figures, renders


def image_qc(raw_file: str | Path, defaced_file: str | Path, mask_file: str | Path,
             matrix: np.ndarray, registration: dict, mask_info: dict,
             distance_file: str | Path, *, brain_margin_mm: float = 5.0,
             refaced_file: str | Path | None = None, reface_info: dict | None = None,
             stage_seconds: dict | None = None, seed: int = 0,
             brain_mask_file: str | Path | None = None, brain_mask_info: dict | None = None):
    """Metrics and figures of one de-identified image.

    Parameters
    ----------
    raw_file, defaced_file, mask_file, refaced_file
        The input image, its defaced version, the deface mask and (when refaced) the refaced
        version.
    matrix
        Template mm -> native mm (the registration); the renders are set in the template's
        frame with it.
    registration, mask_info, reface_info
        The figures of the registration, mask and refacing steps.
    distance_file
        The brain distance map written by the registration step.
    brain_margin_mm
        The brain margin the mask was built with (native mm).
    stage_seconds
        Seconds of the earlier steps (registration, defacing, refacing).
    seed
        Seed of the head-size registrations.
    brain_mask_file, brain_mask_info
        The image's own brain mask and how it was made (None: the template brain alone
        guarded it); any voxel of it changed fails the image.

    Returns
    -------
    metrics : dict
        JSON-ready figures, with ``status`` (``ok`` or ``failed``) and ``reasons``.
    figures : dict
        ``{name: image}`` of the reportlets (see :mod:`bidsreface.qc.reportlets`); those of an
        output that may still show the original face are left out and named in
        ``metrics["withheld"]``.
    """
    from .reportlets import image_reportlets

    start = time.perf_counter()
    raw_img = nb.load(raw_file)
    mask = np.asarray(nb.load(mask_file).dataobj).reshape(raw_img.shape[:3]) > 0
    outputs = {"defaced": nb.load(defaced_file)}
    if refaced_file is not None:
        outputs["refaced"] = nb.load(refaced_file)
    seconds = {}

    def timed(name, func, *args):
        step = time.perf_counter()
        result = func(*args)
        seconds[f"qc_{name}"] = round(time.perf_counter() - step, 2)
        return result

    metrics = timed("checks", voxel_checks, raw_file, outputs, mask, matrix, registration,
                    mask_info, distance_file, brain_margin_mm)
    from ..image import stored_values

    brain = (np.asarray(nb.load(brain_mask_file).dataobj).reshape(raw_img.shape[:3]) > 0
             if brain_mask_file is not None else None)
    metrics.update(timed("brain", brain_checks, stored_values(raw_file),
                         {kind: stored_values(img.get_filename())
                          for kind, img in outputs.items()}, brain, brain_mask_info))
    if brain is not None:
        metrics["own_guard_overlap"] = own_guard_overlap(mask, brain, raw_img.affine,
                                                         brain_margin_mm)
    original, sizes = timed("head_scale", head_sizes, raw_img, outputs, matrix, registration,
                            seed)
    detected, faces, renders = timed("faces", face_checks, raw_img, outputs, matrix)
    metrics.update(original, original_face_detected=detected)
    for kind in outputs:
        metrics[kind].update(sizes[kind], **faces[kind])
    withheld = {kind: "this output may still show the original face" for kind in outputs
                if shows_original_face(metrics, kind)}
    figures = {}
    for kind in set(outputs) - set(withheld):
        img = outputs[kind]
        figures.update(timed(f"figures_{kind}", image_reportlets, kind, _volume(img),
                             img.affine, mask, renders[kind]))
    reface_info = reface_info or {}
    metrics.update(
        withheld=withheld,
        reface_method=reface_info.get("reface_method", "none"),
        model=reface_info.get("model"),
        model_sha256=reface_info.get("model_sha256"),
        seconds={**(stage_seconds or {}), **seconds,
                 "qc": round(time.perf_counter() - start, 2)},
    )
    reasons = qc_reasons(metrics)
    metrics["status"] = "failed" if reasons else "ok"
    metrics["reasons"] = reasons
    return metrics, figures
