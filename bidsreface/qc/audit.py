"""Re-identification audit across participants (the metrics of Boutet et al. 2023).

A gallery of the *original* heads (rendered from the front, in memory only) is probed with
renders of the de-identified heads. Each probe is compared with every gallery face by the
distance between dlib face embeddings (5-point landmarks, ResNet descriptor): pairs of the same
participant are *mated*, others *non-mated*. From the distances:

rank-1 identification rate
    Share of probes whose nearest gallery face is their own participant's (a probe without a
    detected face is not identified).
ROC-AUC, EER
    How well the distance separates mated from non-mated pairs (0.5 and 0.5: not at all).
linkability ``D_sys``
    Gomez-Barrero et al. 2017: the global linkability of mated vs non-mated distance
    distributions (0: unlinkable, 1: fully linkable), with equal priors.

Probes without a detected face get the distance :data:`NO_FACE_DISTANCE` (beyond any real
pair) to every gallery face. The same figures for the originals against themselves under a
small pose change (:data:`POSE_DEG`) show what "identifiable" looks like on these renders.

Nothing derived from an original face (render, crop, embedding) is written anywhere: the
renders and embeddings live in this process's memory and only distances leave it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .metrics import RENDER_SIZE, SAME_FACE_DISTANCE

#: Distance given to a probe in which no face is found.
NO_FACE_DISTANCE = 2.0
#: Rotation (degrees, about the template's vertical axis) of the originals' reference probes.
POSE_DEG = 6.0
#: Conditions, in report order: the originals turned (reference), then the outputs.
CONDITIONS = ("original", "defaced", "refaced")
CONDITION_LABELS = {
    "original": f"original, turned {POSE_DEG:g} degrees (reference: identifiable)",
    "defaced": "defaced",
    "refaced": "refaced",
}


# --------------------------------------------------------------------------- metrics


def rank1_rate(distances: np.ndarray, probe_ids, gallery_ids) -> float:
    """Share of probes strictly nearer to a gallery face of their own identity than to any other.

    >>> d = np.array([[0.1, 0.5], [0.4, 0.3], [0.2, 0.2]])
    >>> rank1_rate(d, ["a", "b", "b"], ["a", "b"])
    0.6667
    """
    identified = identified_probes(distances, probe_ids, gallery_ids)
    return round(float(np.mean(identified)), 4) if len(identified) else None


def identified_probes(distances: np.ndarray, probe_ids, gallery_ids) -> np.ndarray:
    """For each probe: its nearest mated distance is below every non-mated one."""
    distances = np.asarray(distances, dtype=float)
    gallery_ids = np.asarray(gallery_ids)
    out = []
    for row, pid in zip(distances, probe_ids, strict=True):
        mated, other = row[gallery_ids == pid], row[gallery_ids != pid]
        out.append(bool(mated.size) and (not other.size or mated.min() < other.min())
                   and mated.min() < NO_FACE_DISTANCE)
    return np.array(out, dtype=bool)


def split_pairs(distances: np.ndarray, probe_ids, gallery_ids):
    """Mated and non-mated distances of every probe x gallery pair.

    >>> split_pairs(np.array([[0.1, 0.5]]), ["a"], ["a", "b"])
    (array([0.1]), array([0.5]))
    """
    distances = np.asarray(distances, dtype=float)
    same = np.asarray(probe_ids)[:, None] == np.asarray(gallery_ids)[None, :]
    return distances[same], distances[~same]


def roc_auc(mated, nonmated) -> float | None:
    """Probability that a mated pair is closer than a non-mated one (ties count half).

    >>> roc_auc([0.1, 0.2], [0.3, 0.2])
    0.875
    """
    mated, nonmated = np.asarray(mated, float), np.asarray(nonmated, float)
    if not mated.size or not nonmated.size:
        return None
    less = (mated[:, None] < nonmated[None, :]).mean()
    ties = (mated[:, None] == nonmated[None, :]).mean()
    return round(float(less + 0.5 * ties), 4)


def equal_error_rate(mated, nonmated) -> float | None:
    """Error rate where false matches equal false non-matches (pairs closer than a threshold
    are called the same person); the mean of the two at the closest threshold.

    >>> equal_error_rate([0.1, 0.2], [0.5, 0.6])
    0.0
    >>> equal_error_rate([0.5, 0.6], [0.1, 0.2])  # every mated pair further: all wrong
    1.0
    """
    mated, nonmated = np.asarray(mated, float), np.asarray(nonmated, float)
    if not mated.size or not nonmated.size:
        return None
    thresholds = np.unique(np.r_[mated, nonmated, -np.inf])
    fmr = (nonmated[None, :] <= thresholds[:, None]).mean(axis=1)
    fnmr = (mated[None, :] > thresholds[:, None]).mean(axis=1)
    best = np.argmin(np.abs(fmr - fnmr))
    return round(float((fmr[best] + fnmr[best]) / 2), 4)


def linkability(mated, nonmated, omega: float = 1.0, bins: int | None = None) -> float | None:
    """Global linkability ``D_sys`` of Gomez-Barrero et al. (2017), on distances.

    The local linkability ``D(s) = 2 * omega * LR(s) / (1 + omega * LR(s)) - 1`` (0 where
    ``omega * LR <= 1``, 1 where no non-mated pair falls) is averaged over the mated
    distribution; ``LR`` is the ratio of the mated and non-mated histograms (*bins* bins; by
    default a tenth of the mated pairs, at least 5 and at most 100).

    >>> linkability([0.1, 0.12, 0.15], [0.5, 0.55, 0.6])
    1.0
    >>> linkability([2.0, 2.0], [2.0, 2.0, 2.0])
    0.0
    """
    mated, nonmated = np.asarray(mated, float), np.asarray(nonmated, float)
    if not mated.size or not nonmated.size:
        return None
    lo, hi = min(mated.min(), nonmated.min()), max(mated.max(), nonmated.max())
    if hi <= lo:
        return 0.0
    bins = bins or int(np.clip(mated.size // 10, 5, 100))
    edges = np.linspace(lo, hi, bins + 1)
    y1 = np.histogram(mated, bins=edges, density=True)[0]
    y2 = np.histogram(nonmated, bins=edges, density=True)[0]
    ratio = np.divide(y1, y2, out=np.ones_like(y1), where=y2 != 0)
    local = 2 * (omega * ratio / (1 + omega * ratio)) - 1
    local[omega * ratio <= 1] = 0.0
    local[y2 == 0] = 1.0
    return round(float(np.sum(local * y1) * (edges[1] - edges[0])), 4)


def audit_figures(distances: np.ndarray, probe_ids, gallery_ids, detected) -> dict:
    """The audit's summary figures for one condition."""
    mated, nonmated = split_pairs(distances, probe_ids, gallery_ids)
    return {
        "probes": len(probe_ids),
        "faces_detected": int(np.sum(detected)),
        "gallery": len(gallery_ids),
        "mated_pairs": int(mated.size),
        "nonmated_pairs": int(nonmated.size),
        "rank1": rank1_rate(distances, probe_ids, gallery_ids),
        "roc_auc": roc_auc(mated, nonmated),
        "eer": equal_error_rate(mated, nonmated),
        "linkability": linkability(mated, nonmated),
    }


# --------------------------------------------------------------------------- renders


def turned(matrix: np.ndarray, degrees: float = POSE_DEG) -> np.ndarray:
    """*matrix* (template mm -> native mm) with the view turned about the template's vertical
    axis by *degrees*.

    >>> np.round(turned(np.eye(4), 90.0)[:2, :2], 6).tolist()
    [[0.0, -1.0], [1.0, 0.0]]
    """
    angle = np.deg2rad(degrees)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    return np.asarray(matrix, dtype=float) @ rotation


def face_of(path: str | Path, matrix: np.ndarray):
    """Embedding of the best face of a frontal render of the image at *path*, or None.

    The render stays in memory.
    """
    import nibabel as nb

    img = nb.load(path)
    data = np.asanyarray(img.dataobj).astype(np.float32).reshape(img.shape[:3])
    return face_of_data(data, img.affine, matrix)


def face_of_data(data: np.ndarray, affine: np.ndarray, matrix: np.ndarray):
    """:func:`face_of` of an image already in memory (``affine``: voxel -> RAS mm)."""
    from .faces import detect_faces, face_embedding
    from .render import render_head

    render = render_head(data, affine, size=RENDER_SIZE, matrix=matrix)
    found = detect_faces(render)
    return face_embedding(render, found[0]) if found else None


# --------------------------------------------------------------------------- the audit


@dataclass(frozen=True)
class AuditImage:
    """One image of the audit: its original, its outputs and its registration."""

    source: str
    participant: str
    original: Path
    outputs: dict  # condition -> path of the de-identified image
    matrix: np.ndarray
    status: str = "ok"


def distance_matrix(probes: list, gallery: list) -> np.ndarray:
    """Embedding distances probe x gallery; :data:`NO_FACE_DISTANCE` for probes without face."""
    from .faces import embedding_distance

    return np.array([[NO_FACE_DISTANCE if p is None else embedding_distance(p, g)
                      for g in gallery] for p in probes], dtype=float).reshape(
        len(probes), len(gallery))


def run_audit(images: list[AuditImage], conditions: tuple[str, ...] = CONDITIONS, *,
              view_deg: float = 0.0) -> dict:
    """The re-identification audit of *images*, in memory.

    *conditions* are ``original`` (the originals turned, the reference) and the keys of the
    images' ``outputs`` to probe with. The gallery is rendered from the front; with
    *view_deg* every probe is rendered turned by that many degrees (the originals too, in
    place of :data:`POSE_DEG`), so that the ears and the head's outline show more.

    Returns
    -------
    dict
        ``summary``: ``{condition: figures}`` (see :func:`audit_figures`); ``probes``: one row
        per probe (source, participant, condition, face detected, distance to its own
        original, to the nearest other participant's, identified at rank 1, identifiable);
        ``gallery``: the sources in the gallery; ``left_out``: sources whose original shows
        no face. Only distances: no render and no embedding.
    """
    gallery, gallery_ids, gallery_sources, left_out = [], [], [], []
    for image in images:
        embedding = face_of(image.original, image.matrix)
        if embedding is None:
            left_out.append(image.source)
            continue
        gallery.append(embedding)
        gallery_ids.append(image.participant)
        gallery_sources.append(image.source)
    summary, rows = {}, []
    for condition in conditions:
        probes, sources, ids = [], [], []
        for image in images:
            if condition == "original":
                probes.append(face_of(image.original,
                                      turned(image.matrix, view_deg or POSE_DEG)))
            elif condition in image.outputs:
                probes.append(face_of(image.outputs[condition],
                                      turned(image.matrix, view_deg)))
            else:
                continue
            sources.append(image.source)
            ids.append(image.participant)
        if not probes or not gallery:
            continue
        distances = distance_matrix(probes, gallery)
        detected = [p is not None for p in probes]
        del probes
        summary[condition] = audit_figures(distances, ids, gallery_ids, detected)
        identified = identified_probes(distances, ids, gallery_ids)
        mated = np.asarray(ids)[:, None] == np.asarray(gallery_ids)[None, :]
        for i, source in enumerate(sources):
            own = distances[i][mated[i]]
            other = distances[i][~mated[i]]
            nearest_own = float(own.min()) if own.size else None
            rows.append({
                "source": source,
                "participant": ids[i],
                "condition": condition,
                "face_detected": detected[i],
                "distance_own": None if not detected[i] or nearest_own is None
                else round(nearest_own, 4),
                "distance_other": round(float(other.min()), 4)
                if detected[i] and other.size else None,
                "identified": bool(identified[i]),
                "identifiable": bool(detected[i] and nearest_own is not None
                                     and nearest_own < SAME_FACE_DISTANCE),
            })
    del gallery
    return {"summary": summary, "probes": rows, "gallery": gallery_sources,
            "left_out": left_out, "same_face_distance": SAME_FACE_DISTANCE,
            "pose_deg": view_deg or POSE_DEG}


def audit_images(records: list[dict], bids_dir: Path, output_dir: Path) -> list[AuditImage]:
    """The images of the per-image records that have de-identified outputs on disk."""
    images = []
    for record in records:
        outputs = record.get("outputs") or {}
        matrix = (record.get("registration") or {}).get("matrix")
        original = Path(bids_dir) / record["source"]
        if not outputs.get("defaced") or matrix is None or not original.is_file():
            continue
        subject_dir = Path(output_dir) / record["source"].split("/")[0]
        found = {kind: subject_dir / outputs[kind] for kind in ("defaced", "refaced")
                 if outputs.get(kind) and (subject_dir / outputs[kind]).is_file()}
        if "defaced" not in found:
            continue
        images.append(AuditImage(source=record["source"],
                                 participant=record["source"].split("/")[0],
                                 original=original, outputs=found,
                                 matrix=np.asarray(matrix, dtype=float),
                                 status=record.get("status", "ok")))
    return images
