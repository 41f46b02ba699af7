"""``bidsreface-check``: does anything in a dataset still identify a person?

:func:`check_dataset` reads a dataset (never writing into it) and returns its findings:
faces in its images (:mod:`.images`), identifying fields in its sidecars, NIfTI headers,
``*_scans.tsv``, ``participants.tsv`` and file names (:mod:`.metadata`), in the order of
:mod:`.report`. :func:`verify_export` is what bidsreface's export asks of what it wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .images import ImageVerdict, check_images
from .metadata import (
    Finding,
    dataset_claims_deidentified,
    dataset_files,
    header_findings,
    image_claim,
    is_nifti,
    name_findings,
    participants_findings,
    scans_findings,
    sidecar_findings,
)
from .report import image_finding, ordered, severity

__all__ = ["CheckResult", "Finding", "check_dataset", "verify_export"]


@dataclass
class CheckResult:
    """The findings of a dataset (worst first), how many images and files were read, and the
    renders of the faces found (file -> PNG; only when asked for)."""

    findings: list[Finding]
    images: int
    files: int
    renders: dict[str, bytes] = field(default_factory=dict)

    @property
    def identifying(self) -> list[Finding]:
        return [f for f in self.findings if severity(f.kind) == "identifying"]

    @property
    def unchecked(self) -> list[Finding]:
        return [f for f in self.findings if severity(f.kind) == "unchecked"]


def metadata_findings(root: Path, files: list[str]) -> list[Finding]:
    """Every metadata finding of the dataset's *files* (relative paths)."""
    found = name_findings(files)
    for relpath in files:
        name = relpath.rsplit("/", 1)[-1]
        if name.endswith(".json"):
            found += sidecar_findings(root, relpath)
        elif name.endswith("_scans.tsv"):
            found += scans_findings(root, relpath)
        elif name == "participants.tsv":
            found += participants_findings(root, relpath)
        elif is_nifti(relpath):
            found += header_findings(root, relpath)
    return found


def check_dataset(root: str | Path, *, nprocs: int = 1, keep_renders: bool = False,
                  on_image=None, remnants: bool = False) -> CheckResult:
    """Check the dataset at *root*.

    Parameters
    ----------
    nprocs
        Processes that check images side by side.
    keep_renders
        Keep the render of each face found (for ``--show-faces``).
    on_image
        Called with each :class:`~.images.ImageVerdict` as it comes (progress lines).
    remnants
        Score each head with no whole face for a face left in part (``face-remnant``,
        :mod:`.remnant`).
    """
    root = Path(root).resolve()
    files = dataset_files(root)
    images = [f for f in files if is_nifti(f)]
    findings = metadata_findings(root, files)
    verdicts: list[ImageVerdict] = check_images([root / f for f in images], root, nprocs=nprocs,
                                                keep_render=keep_renders, on_result=on_image,
                                                remnants=remnants)
    dataset_claim = dataset_claims_deidentified(root)
    renders = {}
    for verdict in verdicts:
        claim = image_claim(root, verdict.path, dataset_claim) \
            if verdict.verdict in ("face", "face-remnant") else ""
        findings.append(image_finding(verdict, claim))
        if verdict.render is not None:
            renders[verdict.path] = verdict.render
    return CheckResult(ordered(findings), len(images), len(files), renders)


#: Findings that an export of bidsreface must not hold.
EXPORT_PROBLEMS = ("face-in-deidentified", "face", "sidecar-field")


def export_findings(root: str | Path, *, nprocs: int = 1, keep_extensions: bool = False
                    ) -> list[Finding]:
    """What is wrong with an export of bidsreface at *root*: each face found (but a refaced
    image's generated face), each identifying sidecar field left, and each NIfTI header
    extension or identifying text field left in a de-identified anatomical image (extensions
    are allowed with *keep_extensions*). Empty when nothing is.

    The dates of ``*_scans.tsv``, ``participants.tsv`` and file names are the user's and the
    export leaves them as they are: they are not problems of the export.
    """
    result = check_dataset(Path(root), nprocs=nprocs)
    header_kinds = ("nifti-text",) if keep_extensions else ("nifti-text", "nifti-extension")
    return [f for f in result.findings
            if f.kind in EXPORT_PROBLEMS or (f.kind in header_kinds and "/anat/" in f"/{f.file}")]


def describe(finding: Finding) -> str:
    """One line for a finding: ``file: kind field: evidence``."""
    return f"{finding.file}: {finding.kind} {finding.field}: {finding.evidence}".replace("  ", " ")


def verify_export(root: str | Path, *, nprocs: int = 1, keep_extensions: bool = False
                  ) -> list[str]:
    """:func:`export_findings`, one line each."""
    return [describe(f) for f in export_findings(root, nprocs=nprocs,
                                                 keep_extensions=keep_extensions)]
