"""Run settings: one frozen dataclass, built by the parser and passed explicitly."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


def __getattr__(name: str):
    """``IDENTIFYING_FIELDS``: the sidecar fields that never reach an output, the DICOM
    standard's de-identification rules (:mod:`bidsreface.deid`; any ``Patient*`` key is dropped
    too), read on first use."""
    if name == "IDENTIFYING_FIELDS":
        from .deid import identifying_fields

        return identifying_fields()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Settings that change what is written for an image (the rest are resources and selection):
#: recorded with each image's outputs and part of its fingerprint (:mod:`bidsreface.resume`).
OUTPUT_SETTINGS = ("deface_ears", "reface_region", "brain_margin_mm", "reface", "random_seed",
                   "keep_nifti_extensions", "dates")


@dataclass(frozen=True)
class Settings:
    """Everything a run needs to know, validated by :mod:`bidsreface.cli.parser`."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    work_dir: Path
    participant_label: tuple[str, ...] = ()
    session_label: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()  # empty: every anatomical suffix found
    bids_filters: dict = field(default_factory=dict)
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_gb: float | None = None
    skip_bids_validation: bool = False
    random_seed: int = 0
    device: str = "auto"
    reface: str = "cgan"
    reface_model: Path | None = None
    gpu_procs: int = 1
    use_plugin: dict | None = None
    export_bids: Path | None = None
    deface_ears: bool = False
    #: what is removed and regenerated: ``face`` (the face region) or ``head`` (the whole
    #: non-brain head, the brain and its margin kept)
    reface_region: str = "face"
    brain_margin_mm: float = 5.0
    keep_nifti_extensions: bool = False
    #: dates in sidecars and ``*_scans.tsv``: ``shift``, ``remove`` or ``keep`` (see
    #: :mod:`bidsreface.dates`)
    dates: str = "shift"
    verbosity: int = 0


def participant_seed(seed: int, subject: str) -> int:
    """The seed a participant's faces are drawn from: the run's ``--random-seed`` and the
    participant's label, hashed together (the first 31 bits of their sha256).

    Every participant gets a face of their own (one seed for all would draw every face
    towards the same head), the same in each of their sessions, runs and contrasts; the
    same run seed gives every participant the same face again.

    >>> participant_seed(0, "01") == participant_seed(0, "01")
    True
    >>> len({participant_seed(0, "01"), participant_seed(0, "02"), participant_seed(1, "01")})
    3
    """
    import hashlib

    digest = hashlib.sha256(f"bidsreface/{int(seed)}/sub-{subject}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
