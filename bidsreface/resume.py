"""Resumable runs: what an image's outputs were made from, and whether they are still current.

Every completed image's QC record holds a *fingerprint*: the sha256 of the raw image, of its
merged sidecar metadata and of the T1w it follows, the settings that shape the outputs, the
refacing model's and the brain-mask network's checksums and the bidsreface version. A rerun
skips an image whose record passed QC and carries the same fingerprint with every output in
place; any change redoes it. Outputs are only ever written atomically with the record last
(:mod:`bidsreface.derivatives`), so a run killed at any point leaves each image either
complete or redone by the next run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import __version__
from .bids import AnatImage, load_metadata
from .config import OUTPUT_SETTINGS, Settings
from .deface.brain import brain_model_info


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fobj:
        for block in iter(lambda: fobj.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(image: AnatImage, reference: AnatImage | None, settings: Settings,
                model_sha256: str | None) -> str:
    """One sha256 over everything an image's outputs depend on.

    Parameters
    ----------
    image
        The raw image.
    reference
        The T1w of its session it is registered to (None: the template).
    settings
        The run's settings; only :data:`OUTPUT_SETTINGS` count.
    model_sha256
        The refacing model's checksum (None when not refaced by a model).
    """
    parts = {
        "image": file_sha256(image.path),
        "metadata": json.dumps(load_metadata(image), sort_keys=True, default=str),
        "reference": file_sha256(reference.path) if reference is not None else None,
        "settings": {key: getattr(settings, key) for key in OUTPUT_SETTINGS},
        "model_sha256": model_sha256,
        "brain_model_sha256": brain_model_info()["sha256"],
        "version": __version__,
    }
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def is_current(output_dir: Path, image: AnatImage, expected: str) -> bool:
    """Whether the image's QC record passed, carries *expected* as its fingerprint, and every
    output it lists exists."""
    from .derivatives import qc_path

    try:
        record = json.loads(qc_path(output_dir, image).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if record.get("status") != "ok" or record.get("fingerprint") != expected:
        return False
    subject_dir = Path(output_dir) / f"sub-{image.subject}"
    outputs = record.get("outputs", {})
    paths = [outputs[key] for key in ("defaced", "mask", "refaced") if outputs.get(key)]
    paths += list(outputs.get("figures", {}).values())
    return all((subject_dir / rel).is_file() for rel in paths)
