"""Group level: the per-image tables, the re-identification audit and the group report."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from ..derivatives import read_records
from ..errors import UsageError
from ..reports.common import write_text_atomic
from ..reports.tables import COLUMNS, flatten, tsv_value

__all__ = ["COLUMNS", "flatten", "run_group", "table_text"]


def table_text(rows: list[dict], columns) -> str:
    """A TSV table (header first) of *rows*; ``n/a`` for missing values.

    >>> table_text([{"a": 1, "b": None}], ("a", "b"))
    'a\\tb\\n1\\tn/a\\n'
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([tsv_value(row, c) for c in columns] for row in rows)
    return buffer.getvalue()


def run_group(settings) -> int:
    """Write ``group_<suffix>.tsv`` for every suffix with records, the re-identification
    audit (``group_audit.tsv``) and ``group.html``; exit code 0."""
    from ..qc.audit import audit_images, run_audit
    from ..reports.group import AUDIT_COLUMNS, audit_rows, write_group_report

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
        write_text_atomic(target, table_text(sorted(rows, key=lambda r: r["source"]), COLUMNS))
        failed = sum(r["status"] != "ok" for r in rows)
        print(f"bidsreface: {target.name}: {len(rows)} images, {failed} failed",
              file=sys.stderr)

    images = audit_images(records, settings.bids_dir, output_dir)
    audit = run_audit(images) if images else None
    if audit is not None:
        write_text_atomic(output_dir / "group_audit.tsv",
                          table_text(audit_rows(audit), AUDIT_COLUMNS))
        for row in audit_rows(audit):
            print(f"bidsreface: audit, {row['condition']}: rank-1 {row['rank1']}, "
                  f"ROC-AUC {row['roc_auc']}, EER {row['eer']}, linkability "
                  f"{row['linkability']}, identifiable {row['identifiable']}", file=sys.stderr)
    else:
        (output_dir / "group_audit.tsv").unlink(missing_ok=True)
    report = write_group_report(output_dir, records, audit)
    print(f"bidsreface: {report.name} written", file=sys.stderr)
    return 0
