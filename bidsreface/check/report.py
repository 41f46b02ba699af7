"""The check's answer: its findings in order, a TSV and a self-contained HTML page."""

from __future__ import annotations

import base64
from collections import Counter
from pathlib import Path

from .images import ImageVerdict
from .metadata import Finding

#: Kinds of findings, worst first, with what a line of the summary says of them.
IDENTIFYING = {
    "face-in-deidentified": "faces in images the dataset says are de-identified",
    "face": "images with a face",
    "face-remnant": "images with part of a face left (a weak defacing)",
    "sidecar-field": "identifying sidecar fields",
    "nifti-extension": "NIfTI header extensions",
    "nifti-text": "identifying NIfTI header text fields",
    "scans-date": "scans.tsv columns with real dates",
    "participants-column": "participants.tsv columns with names, dates or free text",
    "name-in-name": "file or folder names that look like a person's name",
    "date-in-name": "file or folder names holding a date",
}
UNCHECKED = {
    "unreadable": "files that could not be read",
    "not-present": "images without their content (DataLad: run datalad get)",
}
CLEAR = {
    "generated-face": "faces the dataset records as generated (refaced images)",
    "not-a-head": "images that show no head",
    "no-face": "images with no face",
}
KINDS = {**IDENTIFYING, **UNCHECKED, **CLEAR}
COLUMNS = ("file", "kind", "field", "evidence", "severity")


def severity(kind: str) -> str:
    """``identifying``, ``unchecked`` or ``clear``.

    >>> severity("face"), severity("not-present"), severity("generated-face")
    ('identifying', 'unchecked', 'clear')
    """
    return "identifying" if kind in IDENTIFYING else (
        "unchecked" if kind in UNCHECKED else "clear")


def image_finding(verdict: ImageVerdict, claim: str) -> Finding:
    """The row of one image's verdict. *claim* is what the dataset says of the image:
    ``""`` (nothing), ``deidentified`` (a face in it, whole or in part, is
    ``face-in-deidentified``, the worst finding) or ``refaced`` (its face was replaced by a
    generated one: a face in it, whole or in part, is ``generated-face``, expected).

    >>> from .images import ImageVerdict
    >>> remnant = ImageVerdict("a.nii", "face-remnant", 0.9, "frontal", "threshold 0.50")
    >>> [image_finding(remnant, claim).kind for claim in ("deidentified", "refaced", "")]
    ['face-in-deidentified', 'generated-face', 'face-remnant']
    """
    kind = verdict.verdict
    if kind in ("face", "face-remnant") and claim:
        kind = "generated-face" if claim == "refaced" else "face-in-deidentified"
    evidence = verdict.evidence
    if verdict.volumes > 1:
        evidence += f" (first of {verdict.volumes} volumes)"
    if kind == "face-in-deidentified":
        evidence += "; the dataset says this image is de-identified"
    elif kind == "generated-face":
        evidence += "; its DeidentificationMethod says the face was replaced"
    return Finding(verdict.path, kind, verdict.view or "", evidence)


def ordered(findings: list[Finding]) -> list[Finding]:
    """Findings worst kind first, then by file."""
    rank = {kind: i for i, kind in enumerate(KINDS)}
    return sorted(findings, key=lambda f: (rank.get(f.kind, len(rank)), f.file, f.field))


def summary_lines(findings: list[Finding]) -> list[str]:
    """One line per kind of finding found, worst first.

    >>> summary_lines([Finding("a", "face", "frontal", ""), Finding("b", "no-face", "", "")])
    ['1 images with a face', '1 images with no face']
    """
    counts = Counter(f.kind for f in findings)
    return [f"{counts[kind]} {label}" for kind, label in KINDS.items() if counts[kind]]


def tsv_text(findings: list[Finding]) -> str:
    """The findings as a TSV (tabs and line breaks inside a cell become spaces)."""
    def cell(value) -> str:
        return " ".join(str(value).split())

    lines = ["\t".join(COLUMNS)]
    lines += ["\t".join(cell(v) for v in (f.file, f.kind, f.field, f.evidence,
                                             severity(f.kind))) for f in findings]
    return "\n".join(lines) + "\n"


def html_text(dataset: Path, findings: list[Finding], *, images: int, files: int,
              renders: dict[str, bytes] | None = None) -> str:
    """The self-contained HTML page: the answer and the counts first, then every finding.

    *renders* (file -> PNG) are shown only for findings of a face, each marked as
    identifying; without them the page holds no image at all.
    """
    from .. import __version__
    from ..reports.common import render_template

    counts = Counter(f.kind for f in findings)
    identifying = [f for f in findings if severity(f.kind) == "identifying"]
    faces = []
    for f in findings:
        if renders and f.kind in ("face", "face-remnant", "face-in-deidentified") \
                and f.file in renders:
            faces.append({"file": f.file, "view": f.field, "uri": "data:image/png;base64,"
                          + base64.b64encode(renders[f.file]).decode("ascii")})
    return render_template(
        "check.html.j2", version=__version__, dataset=str(dataset), images=images, files=files,
        identifying=len(identifying),
        unchecked=sum(1 for f in findings if severity(f.kind) == "unchecked"),
        counts=[{"kind": k, "label": label, "n": counts[k], "severity": severity(k)}
                for k, label in KINDS.items() if counts[k]],
        findings=[{"file": f.file, "kind": f.kind, "field": f.field, "evidence": f.evidence,
                   "severity": severity(f.kind)} for f in findings],
        faces=faces)


def write_answer(out_dir: Path, dataset: Path, findings: list[Finding], *, images: int,
                 files: int, renders: dict[str, bytes] | None = None) -> tuple[Path, Path]:
    """Write ``findings.tsv`` and ``check.html`` into *out_dir*; return their paths."""
    from ..reports.common import write_text_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    tsv = write_text_atomic(out_dir / "findings.tsv", tsv_text(findings))
    page = write_text_atomic(out_dir / "check.html", html_text(
        dataset, findings, images=images, files=files, renders=renders))
    return tsv, page
