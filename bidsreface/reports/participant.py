"""The participant report ``<out>/sub-<label>.html``: summary, reportlets, metrics, errors."""

from __future__ import annotations

import sys
from pathlib import Path

from .. import __version__
from ..content import content_problem
from ..derivatives import read_records
from .common import data_uri, image_anchor, render_template, write_text_atomic
from .tables import flags, metric_rows

#: Reportlets in the order shown, with their captions.
FIGURE_CAPTIONS = {
    "defacedmosaic": "Defaced image: sagittal slices (face to the right) and axial slices "
                     "(face up, the subject's right on the left) through the face region; "
                     "the deface mask is outlined in red.",
    "defacedrender": "Defaced head surface, from the front and from the subject's right.",
    "refacedmosaic": "Refaced image: the same slices, the deface mask outlined in red (the "
                     "synthetic face lies inside it).",
    "refacedrender": "Refaced head surface, from the front and from the subject's right.",
}
#: Lines of a crash file shown in the report (its end: the error).
CRASH_LINES = 25


def crash_files(log_dir: Path) -> list[dict]:
    """The nipype crash files of a participant: name, relative link and their last lines."""
    crashes = []
    for path in sorted(Path(log_dir).glob("crash-*.txt")):
        problem = content_problem(path, Path(log_dir).parent.parent)
        lines = [problem] if problem else path.read_text(errors="replace").splitlines()
        crashes.append({"name": path.name,
                        "link": f"{path.parent.parent.name}/log/{path.name}",
                        "excerpt": "\n".join(lines[-CRASH_LINES:])})
    return crashes


def method_text(record: dict) -> str:
    """What was done to an image, as the reports say it.

    >>> method_text({"outputs": {"defaced": "d"}, "reface": {"reface_method": "cgan"}})
    'defaced, then refaced (cgan)'
    >>> method_text({"outputs": {"defaced": "d"}, "reface": {"reface_method": "none"},
    ...              "mask": {"mask_from": "sub-1/anat/sub-1_inv-2_part-mag_MP2RAGE.nii"}})
    'defaced (face mask of sub-1_inv-2_part-mag_MP2RAGE.nii, same acquisition)'
    >>> method_text({"status": "failed"})
    'nothing (failed)'
    """
    if not record.get("outputs"):
        return "nothing (failed)"
    method = (record.get("reface") or {}).get("reface_method", "none")
    text = "defaced" if method == "none" else f"defaced, then refaced ({method})"
    shared = (record.get("mask") or {}).get("mask_from")
    if shared:
        text += f" (face mask of {shared.rsplit('/', 1)[-1]}, same acquisition)"
    return text


def image_section(record: dict, subject_dir: Path) -> dict:
    """What the report shows of one image."""
    qc = record.get("qc") or {}
    figures = []
    for name, rel in sorted((record.get("outputs") or {}).get("figures", {}).items(),
                            key=lambda item: list(FIGURE_CAPTIONS).index(item[0])):
        problem = content_problem(subject_dir / rel, subject_dir.parent)
        if problem:  # an unfetched git-annex file: the report goes on without it
            print(f"bidsreface: {subject_dir / rel}: figure left out of the report: {problem}",
                  file=sys.stderr)
            continue
        figures.append({"name": name, "caption": FIGURE_CAPTIONS[name],
                        "uri": data_uri(subject_dir / rel), "file": rel})
    return {
        "anchor": image_anchor(record["source"]),
        "source": record["source"],
        "suffix": record.get("suffix", ""),
        "status": record["status"],
        "method": method_text(record),
        "reason": record.get("reason", ""),
        "flags": flags(record),
        "completed": bool(record.get("outputs")),
        "figures": figures,
        "withheld": qc.get("withheld", {}),
        "metrics": metric_rows(record) if record.get("outputs") else [],
    }


def participant_report(output_dir: Path, subject: str) -> str:
    """The HTML of the report of participant *subject* (from what is under *output_dir*)."""
    output_dir = Path(output_dir)
    subject_dir = output_dir / f"sub-{subject}"
    records = [r for r in read_records(output_dir, subject)
               if r["source"].split("/")[0] == f"sub-{subject}"]
    images = [image_section(r, subject_dir) for r in records]
    return render_template(
        "participant.html.j2", subject=subject, version=__version__, images=images,
        failed=sum(i["status"] != "ok" for i in images),
        crashes=crash_files(subject_dir / "log"))


def write_participant_report(output_dir: Path, subject: str) -> Path:
    """Write ``<output_dir>/sub-<subject>.html`` (atomically) and return its path."""
    return write_text_atomic(Path(output_dir) / f"sub-{subject}.html",
                             participant_report(output_dir, subject))
