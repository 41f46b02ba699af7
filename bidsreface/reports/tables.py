"""Per-image records as table rows (the group TSV, the reports' metric tables) and flags."""

from __future__ import annotations

from ..qc.metrics import MAX_HEAD_SCALE_CHANGE
from .common import fmt

#: Columns of ``group_<suffix>.tsv``, one row per image (``mask_from``: the collection member
#: whose registration and face mask the image shares, see :mod:`bidsreface.collection`).
COLUMNS = (
    "source", "status", "reason", "flags",
    "registration_ok", "head_dice", "correlation", "scales", "shear", "start_deg", "mask_from",
    "face_volume_ml", "face_voxels", "guard_voxels_removed", "guard_overlap",
    "changed_outside_mask", "changed_inside_mask", "refaced_changed_outside_mask",
    "brain_guard", "own_brain_changed", "own_guard_overlap",
    "head_scale_original", "etiv_original_ml",
    "defaced_head_scale", "defaced_etiv_ml", "defaced_head_scale_change",
    "refaced_head_scale", "refaced_etiv_ml", "refaced_head_scale_change",
    "original_face_detected",
    "defaced_face_detected", "defaced_face_score", "defaced_face_distance",
    "refaced_face_detected", "refaced_face_score", "refaced_face_distance",
    "reface_method", "model", "model_sha256", "reface_fraction",
    "seconds_registration", "seconds_brain_mask", "seconds_defacing", "seconds_refacing",
    "seconds_qc",
)  # fmt: skip
#: Columns that only a refaced image has.
REFACED_ONLY = tuple(c for c in COLUMNS if c.startswith("refaced_")) + (
    "model", "model_sha256", "reface_fraction", "seconds_refacing")
#: Columns plotted in the group report.
PLOTTED = (
    "head_dice", "correlation", "face_volume_ml", "etiv_original_ml", "defaced_etiv_ml",
    "refaced_etiv_ml", "refaced_head_scale_change", "defaced_face_distance",
    "refaced_face_distance", "refaced_face_score", "seconds_qc",
)  # fmt: skip


def flatten(record: dict) -> dict:
    """One table row from a per-image record; ``""`` where a value is missing.

    >>> flatten({"source": "a", "status": "failed", "reason": "2D"})["reason"]
    '2D'
    """
    row = {"source": record["source"], "status": record["status"],
           "reason": record.get("reason", "")}
    registration = record.get("registration", {})
    row.update({k.removeprefix("rigid_"): v for k, v in registration.items()
                if k.removeprefix("rigid_") in COLUMNS})
    row["registration_ok"] = registration.get("ok")
    for section in ("mask", "checks", "reface"):
        row.update({k: v for k, v in record.get(section, {}).items() if k in COLUMNS})
    qc = record.get("qc") or {}
    row.update({k: v for k, v in qc.items() if k in COLUMNS and not isinstance(v, dict)})
    for kind in ("defaced", "refaced"):
        row.update({f"{kind}_{k}": v for k, v in (qc.get(kind) or {}).items()
                    if f"{kind}_{k}" in COLUMNS})
    row["changed_outside_mask"] = record.get("checks", {}).get("changed_outside_mask")
    row.update({f"seconds_{k}": v for k, v in (qc.get("seconds") or {}).items()
                if f"seconds_{k}" in COLUMNS})
    row["flags"] = "; ".join(flags(record))
    return {k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS}


def tsv_value(row: dict, column: str) -> str:
    """A cell of the group TSV: ``n/a`` where the value does not apply or is unknown.

    >>> tsv_value({"x": None}, "x"), tsv_value({"x": 0.5}, "x"), tsv_value({"x": ""}, "x")
    ('n/a', '0.5', 'n/a')
    """
    value = row.get(column)
    if value is None or value == "":
        return "n/a"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def flags(record: dict) -> list[str]:
    """Why the group report points at an image (empty: nothing to look at).

    >>> flags({"status": "failed", "reason": "not 3D"})
    ['failed run: not 3D']
    >>> flags({"status": "ok", "checks": {"changed_outside_mask": 0},
    ...        "qc": {"defaced": {"face_detected": True}}})
    ['face still detected after defacing']
    """
    qc = record.get("qc") or {}
    if record.get("status") != "ok" and not record.get("outputs"):
        return [f"failed run: {record.get('reason', 'unknown error')}"]
    found = []
    if record.get("status") != "ok":
        found.append(f"failed QC: {record.get('reason', '')}")
    changed = (record.get("checks", {}).get("changed_outside_mask", 0)
               + record.get("checks", {}).get("refaced_changed_outside_mask", 0))
    if (changed or qc.get("guard_overlap") or qc.get("own_brain_changed")
            or qc.get("own_guard_overlap")):
        found.append("brain changed")
    if (qc.get("defaced") or {}).get("face_detected"):
        found.append("face still detected after defacing")
    registration = record.get("registration", {})
    if registration and not registration.get("ok", False):
        found.append("implausible registration")
    kind = "refaced" if qc.get("refaced") else "defaced"
    change = (qc.get(kind) or {}).get("head_scale_change")
    if change is not None and abs(change) > MAX_HEAD_SCALE_CHANGE:
        found.append(f"implausible registration of the {kind} head: head size "
                     f"{100 * change:+.0f}% vs the original")
    return found


def metric_rows(record: dict) -> list[tuple[str, str]]:
    """``(column, shown value)`` of every metric of an image, for the reports."""
    row = flatten(record)
    refaced = bool((record.get("qc") or {}).get("refaced"))
    return [(c, fmt(row[c])) for c in COLUMNS
            if c not in ("source", "status", "reason", "flags")
            and (refaced or c not in REFACED_ONLY)]
