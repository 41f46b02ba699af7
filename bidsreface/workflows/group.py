"""Group level: one table per suffix aggregating the per-image records."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

from ..derivatives import read_records
from ..errors import UsageError

COLUMNS = (
    "source", "status", "reason", "head_dice", "correlation", "scales", "start_deg",
    "face_volume_ml", "face_voxels", "guard_voxels_removed", "changed_outside_mask",
    "changed_inside_mask", "refaced_changed_outside_mask", "reface_method", "model_sha256",
    "reface_fraction",
)  # fmt: skip


def flatten(record: dict) -> dict:
    """One table row from a per-image record.

    >>> flatten({"source": "a", "status": "failed", "reason": "2D"})["reason"]
    '2D'
    """
    row = {"source": record["source"], "status": record["status"],
           "reason": record.get("reason", "")}
    for section in ("registration", "mask", "checks", "reface"):
        row.update({k: v for k, v in record.get(section, {}).items() if k in COLUMNS})
    return {k: row.get(k, "") for k in COLUMNS}


def run_group(settings) -> int:
    """Write ``group_<suffix>.tsv`` for every suffix with records; exit code 0."""
    output_dir = Path(settings.output_dir)
    records = read_records(output_dir) if output_dir.is_dir() else []
    if settings.participant_label:
        records = [r for r in records
                   if r["source"].split("/")[0][4:] in settings.participant_label]
    if not records:
        raise UsageError(f"no participant-level results in {output_dir}: run the "
                         "participant level first")
    by_suffix: dict[str, list[dict]] = {}
    for record in records:
        by_suffix.setdefault(record["suffix"], []).append(flatten(record))
    for suffix, rows in sorted(by_suffix.items()):
        target = output_dir / f"group_{suffix}.tsv"
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        with open(tmp, "w", newline="") as fobj:
            writer = csv.DictWriter(fobj, fieldnames=COLUMNS, delimiter="\t",
                                    lineterminator="\n")
            writer.writeheader()
            writer.writerows(sorted(rows, key=lambda r: r["source"]))
        os.replace(tmp, target)
        failed = sum(r["status"] != "ok" for r in rows)
        print(f"bidsreface: {target.name}: {len(rows)} images, {failed} failed",
              file=sys.stderr)
    return 0
