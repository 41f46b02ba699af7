"""Identifying fields of a dataset: sidecars, NIfTI headers, ``*_scans.tsv``,
``participants.tsv`` and file names.

Each check returns :class:`Finding` rows. Values are never copied into a finding: the
evidence names the rule that matched (a DICOM tag and its action, a pattern, a count), so the
report itself identifies nobody.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..deid import is_date, is_identifying, rule_of

NIFTI = (".nii", ".nii.gz")
#: Years at or before this one are shifted dates (BIDS: de-identified dates are shifted to
#: 1925 or earlier) and identify nobody.
SHIFTED_YEAR = 1925

#: A calendar date inside a name or a value: 2019-03-12, 2019_03_12, 20190312, 12.03.2019,
#: 12/03/2019 (years 1926 to 2099).
DATE = re.compile(
    r"(?<!\d)(?:(19[3-9]\d|192[6-9]|20\d\d)[-_./]?(0[1-9]|1[0-2])[-_./]?(0[1-9]|[12]\d|3[01])"
    r"|(0[1-9]|[12]\d|3[01])[./-](0[1-9]|1[0-2])[./-](19[3-9]\d|192[6-9]|20\d\d))(?!\d)")
#: A time of day in dcm2niix's ``descrip`` (``Time=143523.000``).
DESCRIP_TIME = re.compile(r"Time=\d{4,6}")
#: A label that is a person's name: two or more capitalised words run together
#: (``JohnSmith``, ``MaryAnnJones``). Lower-case words, one word alone, and any digit are not
#: enough (``control``, ``Pilot``, ``CON01``, ``pat03``): too many study labels look like that.
NAME_LABEL = re.compile(r"^(?:[A-Z][a-z]+){2,}$")
#: participants.tsv column names that hold names or dates of birth.
NAME_COLUMN = re.compile(r"(^|_)(name|names|surname|firstname|lastname|initials|fullname)($|_)",
                         re.IGNORECASE)
BIRTH_COLUMN = re.compile(r"birth|(^|_)dob($|_)", re.IGNORECASE)
#: participants.tsv columns of the BIDS specification, whose names alone say nothing.
BIDS_COLUMNS = ("participant_id", "species", "age", "sex", "handedness", "strain",
                "strain_rrid")
#: A column is free text when most of its values have several words or are long.
FREE_TEXT_WORDS = 4
FREE_TEXT_CHARS = 40
MISSING = ("", "n/a", "na", "nan")


@dataclass(frozen=True)
class Finding:
    """One row of the check's answer: the file (relative to the dataset), the kind of
    finding, the field or view, and the evidence."""

    file: str
    kind: str
    field: str
    evidence: str


def dataset_files(root: Path) -> list[str]:
    """Every file of the dataset (links included, whether or not their content is here),
    relative, sorted; hidden entries (``.git``, ``.datalad``) are not part of the dataset."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(folder).relative_to(root)
        found.extend((rel / name).as_posix() for name in files if not name.startswith("."))
    return sorted(found)


def is_nifti(relpath: str) -> bool:
    """Whether *relpath* names a NIfTI file.

    >>> is_nifti("sub-01/anat/sub-01_T1w.nii.gz"), is_nifti("x.json")
    (True, False)
    """
    return relpath.endswith(NIFTI)


# --------------------------------------------------------------------------- sidecars


def read_json(path: Path):
    """The JSON content of *path*; raise ValueError with the reason."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"unreadable JSON ({' '.join(str(err).split())})") from None


def sidecar_findings(root: Path, relpath: str) -> list[Finding]:
    """Identifying fields of one JSON file (a sidecar, or a top-level file that images
    inherit): every non-empty field the DICOM rules remove (:mod:`bidsreface.deid`)."""
    from ..content import content_problem

    path = root / relpath
    if content_problem(path, root) is not None:
        return []  # reported with the file listing (not-present)
    try:
        meta = read_json(path)
    except ValueError as err:
        return [Finding(relpath, "unreadable", "", str(err))]
    if not isinstance(meta, dict):
        return []
    found = []
    for key, value in meta.items():
        if value in (None, "", [], {}) or not is_identifying(key):
            continue
        rule = rule_of(key)
        what = ("a date or time" if is_date(key) else "a value") + (
            f"; DICOM {rule['tag']} {rule['vr']}, Annex E action {rule['action']}" if rule
            else "; a Patient* field")
        found.append(Finding(relpath, "sidecar-field", key, what))
    return found


#: What a ``DeidentificationMethod`` says when the face was replaced by a generated one
#: (bidsreface's export: "refilled with a synthetic face", "refilled with the template's face").
REFACED = re.compile(r"refilled with|refaced|synthetic face", re.IGNORECASE)


def image_claim(root: Path, relpath: str, dataset_claim: bool) -> str:
    """What the dataset says of the image at *relpath*: ``refaced`` (its
    ``DeidentificationMethod``, inheritance applied, says its face was replaced by a generated
    one), ``deidentified`` (any other ``DeidentificationMethod``, or the dataset is a bidsreface
    export: *dataset_claim*), or ``""``."""
    from ..bids import AnatImage, load_metadata
    from ..errors import UsageError

    try:
        meta = load_metadata(AnatImage.from_path(root / relpath, root))
    except (UsageError, OSError):
        meta = {}  # the unreadable sidecar is a finding of its own
    method = meta.get("DeidentificationMethod") or ""
    text = " ".join(method) if isinstance(method, list) else str(method)
    if REFACED.search(text):
        return "refaced"
    return "deidentified" if text or dataset_claim else ""


def dataset_claims_deidentified(root: Path) -> bool:
    """Whether *root* is an export of bidsreface (its ``GeneratedBy`` or its listing)."""
    from ..export import LISTING

    if (root / LISTING).is_file():
        return True
    try:
        description = read_json(root / "dataset_description.json")
    except ValueError:
        return False
    generated = description.get("GeneratedBy") if isinstance(description, dict) else None
    return isinstance(generated, list) and any(
        isinstance(g, dict) and g.get("Name") == "bidsreface" for g in generated)


# --------------------------------------------------------------------------- NIfTI headers


def header_findings(root: Path, relpath: str) -> list[Finding]:
    """Extensions (any: a DICOM header, AFNI's history...) and identifying text fields of one
    NIfTI file's header. ``descrip`` counts when it holds a date or a time of day (dcm2niix
    writes ``Time=hhmmss``); ``aux_file``, ``intent_name`` and ``db_name`` whenever set."""
    from nibabel.nifti1 import extension_codes

    from ..content import content_problem
    from ..image import read_header

    path = root / relpath
    if content_problem(path, root) is not None:
        return []
    try:
        header = read_header(path)
    except Exception:  # nibabel raises many types; the image's own row names the reason
        return []
    found = []
    for ext in header.extensions:
        code = int(ext.get_code())
        name = extension_codes.label.get(code, "unknown")
        found.append(Finding(relpath, "nifti-extension", f"extension {code} ({name})",
                             f"{len(ext.get_content())} bytes"
                             + ("; a DICOM header" if code == 2 else "")))
    for name in ("descrip", "aux_file", "intent_name", "db_name"):
        if name not in header:
            continue
        text = bytes(header[name]).split(b"\0")[0].decode("latin-1").strip()
        if not text:
            continue
        if name == "descrip":
            if DESCRIP_TIME.search(text) or DATE.search(text):
                found.append(Finding(relpath, "nifti-text", name, "holds a date or a time"))
            continue
        found.append(Finding(relpath, "nifti-text", name, f"{len(text)} characters of text"))
    return found


# --------------------------------------------------------------------------- tables


def read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a TSV file; raise ValueError with the reason."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"unreadable TSV ({' '.join(str(err).split())})") from None
    if not lines:
        return [], []
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:] if line.strip()]


def _column(rows, index) -> list[str]:
    return [row[index].strip() for row in rows if index < len(row)
            and row[index].strip().lower() not in MISSING]


def real_dates(values: list[str]) -> list[str]:
    """The values holding a date after :data:`SHIFTED_YEAR`.

    >>> real_dates(["2019-03-12T10:00:00", "1920-01-01T10:00:00", "n/a", "12.03.1980"])
    ['2019-03-12T10:00:00', '12.03.1980']
    """
    return [v for v in values if DATE.search(v)]


def scans_findings(root: Path, relpath: str) -> list[Finding]:
    """Columns of a ``*_scans.tsv`` that hold real (unshifted) dates, ``acq_time`` first."""
    try:
        header, rows = read_tsv(root / relpath)
    except ValueError as err:
        return [Finding(relpath, "unreadable", "", str(err))]
    found = []
    for index, name in enumerate(header):
        if name == "filename":
            continue
        dated = real_dates(_column(rows, index))
        if dated:
            found.append(Finding(relpath, "scans-date", name,
                                 f"{len(dated)} of {len(rows)} rows hold a date after "
                                 f"{SHIFTED_YEAR} (not shifted)"))
    return found


def participants_findings(root: Path, relpath: str) -> list[Finding]:
    """Columns of ``participants.tsv`` that look like names, dates of birth or free text.

    A column is flagged by its name (:data:`NAME_COLUMN`, :data:`BIRTH_COLUMN`) or by its
    values: dates (:data:`DATE`) in any row, personal names (:data:`NAME_LABEL`-like words
    separated by a space, in most rows), or free text (most values of
    :data:`FREE_TEXT_WORDS` words or more, or :data:`FREE_TEXT_CHARS` characters or more).
    """
    try:
        header, rows = read_tsv(root / relpath)
    except ValueError as err:
        return [Finding(relpath, "unreadable", "", str(err))]
    found = []
    for index, name in enumerate(header):
        values = _column(rows, index)
        reason = None
        if name not in BIDS_COLUMNS and NAME_COLUMN.search(name):
            reason = "name: its header names a person's name"
        elif name not in BIDS_COLUMNS and BIRTH_COLUMN.search(name):
            reason = "date of birth: its header says so"
        elif real_dates(values):
            reason = f"date: {len(real_dates(values))} of {len(rows)} values hold a date"
        elif values and _most(values, _looks_like_name):
            reason = "name: most values are capitalised words like a person's name"
        elif values and _most(values, _looks_like_text):
            reason = "free text: most values are sentences"
        if reason:
            found.append(Finding(relpath, "participants-column", name, reason))
    return found


def _most(values: list[str], test) -> bool:
    return sum(map(test, values)) > len(values) / 2


def _looks_like_name(value: str) -> bool:
    """Two to four capitalised words.

    >>> _looks_like_name("Mary Jones"), _looks_like_name("Right"), _looks_like_name("M")
    (True, False, False)
    """
    words = value.split()
    return 2 <= len(words) <= 4 and all(re.fullmatch(r"[A-Z][a-z'\-]+\.?", w) for w in words)


def _looks_like_text(value: str) -> bool:
    return len(value.split()) >= FREE_TEXT_WORDS or len(value) >= FREE_TEXT_CHARS


# --------------------------------------------------------------------------- names


def name_findings(relpaths: list[str]) -> list[Finding]:
    """File and folder names holding a date (:data:`DATE`) or a ``sub-``/``ses-`` label that
    looks like a person's name (:data:`NAME_LABEL`); each name once, each label once.

    >>> [(f.file, f.kind) for f in name_findings(["sub-JohnSmith/ses-20190312/anat/x.nii"])]
    [('sub-JohnSmith/', 'name-in-name'), ('sub-JohnSmith/ses-20190312/', 'date-in-name')]
    """
    found, seen, labels = [], set(), set()
    for relpath in relpaths:
        parts = relpath.split("/")
        for depth, part in enumerate(parts):
            where = "/".join(parts[: depth + 1]) + ("/" if depth < len(parts) - 1 else "")
            if where in seen:
                continue
            seen.add(where)
            for label in re.findall(r"(?:^|_)(?:sub|ses)-([A-Za-z0-9]+)", part):
                if NAME_LABEL.match(label) and label not in labels:
                    labels.add(label)
                    found.append(Finding(where, "name-in-name", label,
                                         "the label is capitalised words run together, "
                                         "like a person's name"))
            if DATE.search(part):
                found.append(Finding(where, "date-in-name", part, "the name holds a date"))
    return found
