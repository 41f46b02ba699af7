"""The group report ``<out>/group.html``: distributions, flagged images and the audit."""

from __future__ import annotations

from pathlib import Path

from .. import __version__
from ..qc.audit import CONDITION_LABELS
from .common import fmt, image_anchor, render_template, strip_plot, write_text_atomic
from .tables import PLOTTED, flags, flatten

#: Columns of ``group_audit.tsv`` (one row per condition).
AUDIT_COLUMNS = ("condition", "probes", "faces_detected", "gallery", "mated_pairs",
                 "nonmated_pairs", "rank1", "roc_auc", "eer", "linkability", "identifiable")


def report_link(source: str) -> str:
    """Link from the group report to an image's section in its participant report.

    >>> report_link("sub-01/anat/sub-01_T1w.nii.gz")
    'sub-01.html#sub-01_T1w'
    """
    return f"{source.split('/')[0]}.html#{image_anchor(source)}"


def distributions(records: list[dict]) -> list[dict]:
    """One strip plot per plotted metric (images without the value left out)."""
    plots = []
    for column in PLOTTED:
        points = []
        for record in records:
            value = flatten(record)[column]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                points.append((record["source"], float(value), report_link(record["source"]),
                               bool(flags(record))))
        if points:
            plots.append({"name": column, "svg": strip_plot(column, points)})
    return plots


def audit_rows(audit: dict) -> list[dict]:
    """The audit's summary, one row per condition, with the share of identifiable probes."""
    rows = []
    for condition, figures in audit.get("summary", {}).items():
        probes = [p for p in audit["probes"] if p["condition"] == condition]
        identifiable = sum(p["identifiable"] for p in probes)
        rows.append({"condition": condition, **figures,
                     "identifiable": f"{identifiable}/{len(probes)}"})
    return rows


def group_report(records: list[dict], audit: dict | None) -> str:
    """The HTML of the group report."""
    flagged = [{"source": r["source"], "link": report_link(r["source"]), "status": r["status"],
                "flags": flags(r)} for r in records if flags(r)]
    suffixes = sorted({r["suffix"] for r in records})
    counts = [{"suffix": s, "images": sum(r["suffix"] == s for r in records),
               "failed": sum(r["suffix"] == s and r["status"] != "ok" for r in records),
               "flagged": sum(r["suffix"] == s and bool(flags(r)) for r in records)}
              for s in suffixes]
    probes = [{**p, "link": report_link(p["source"]),
               "label": CONDITION_LABELS[p["condition"]]} for p in (audit or {}).get("probes", [])]
    return render_template(
        "group.html.j2", version=__version__, counts=counts, flagged=flagged,
        plots=distributions(records), audit=audit, audit_rows=audit_rows(audit or {}),
        probes=probes, labels=CONDITION_LABELS, columns=AUDIT_COLUMNS, fmt=fmt,
        participants=sorted({r["source"].split("/")[0] for r in records}))


def write_group_report(output_dir: Path, records: list[dict], audit: dict | None) -> Path:
    """Write ``<output_dir>/group.html`` (atomically) and return its path."""
    return write_text_atomic(Path(output_dir) / "group.html", group_report(records, audit))
