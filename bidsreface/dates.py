"""Dates in sidecars and ``*_scans.tsv``: shifted per participant into 1925 or earlier, or removed.

BIDS recommends that the acquisition dates of a shared dataset be shifted by a random number of
days, to the year 1925 or earlier, so that shifted dates cannot be taken for real ones. Every
date of a participant moves by the same number of days, so the intervals between that
participant's sessions and scans are kept; the times of day are kept. The days are drawn from
the participant's label and a secret key kept in the output folder (:func:`dates_key`), never
from ``--random-seed``: the seed is often the default and the face's seed is recorded in the
outputs, so a shift drawn from it could be computed back by anyone. ``--dates`` chooses:

``shift`` (the default)
    as BIDS recommends: the dates are no longer the real ones, the intervals are kept (the
    longitudinal analyses a published dataset is for still work);
``remove``
    date and time fields and ``acq_time`` removed;
``keep``
    left as they are (for data that stays in-house).

Date and time fields are found by their DICOM-style key names (``...Date``, ``...Time``,
``...DateTime``) and their value's format (``YYYY-MM-DD``, ``YYYYMMDD``, ISO date-times,
``HH:MM:SS``); a time of day alone carries no date and is kept unless ``remove`` is asked for.
A value that a shift would not put into 1925 or earlier (a date after 2100, a malformed one) is
removed rather than kept.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

#: The choices of ``--dates``.
DATE_CHOICES = ("shift", "remove", "keep")

#: Shifted dates land in this year or earlier, as BIDS recommends.
LATEST_YEAR = 1925

#: Every shift is at least this many days back: a date up to the end of 2100 lands in 1925.
_BASE_DAYS = (dt.date(2101, 1, 1) - dt.date(1926, 1, 1)).days

#: On top of the base, a participant's shift draws up to this many days more (about 100 years).
_SPREAD_DAYS = 36525

_KEY = re.compile(r"(?:Date|Time|DateTime)$")
_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")
_DATETIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})([T ])(\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)"
                       r"(Z|[+-]\d{2}:?\d{2})?$")
_DICOM_DATETIME = re.compile(r"^(\d{4})(\d{2})(\d{2})(\d{2}(?:\d{2}(?:\d{2}(?:\.\d+)?)?)?)$")
_TIME = re.compile(r"^\d{2}:?\d{2}(?::?\d{2}(?:\.\d+)?)?$")


#: The secret the shifts are drawn from, relative to the output folder (hidden: it is never
#: exported and the BIDS validator does not read it).
KEY_FILE = ".bidsreface/dates.key"


def dates_key(output_dir: str | Path) -> str:
    """The secret key of an output folder's date shifts, made at its first use.

    256 random bits, written once (``O_EXCL``, readable by its owner only) so that every run,
    group level and export on the same output folder shifts a participant's dates by the same
    days. Whoever holds the key can compute the shifts back: it stays in the output folder
    (git and DataLad are told to ignore its folder) and is never exported; deleting it makes
    the published shifts unrecoverable (later runs then draw new ones).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     first = dates_key(tmp)
    ...     first == dates_key(tmp), len(first)
    (True, 64)
    """
    from .content import content_problem
    from .errors import UsageError

    path = Path(output_dir) / KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    # git and DataLad leave the folder out: a `datalad save` of the outputs never records it
    ignore = path.parent / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n", encoding="ascii")
    if not path.is_symlink():
        try:
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(handle, "w") as fobj:
                fobj.write(secrets.token_hex(32) + "\n")
    problem = content_problem(path, output_dir)
    key = "" if problem else path.read_text(encoding="ascii", errors="replace").strip()
    if problem or not re.fullmatch(r"[0-9a-f]{64}", key):
        raise UsageError(f"{path}: the date-shift key cannot be read "
                         f"({problem or 'not 64 hexadecimal digits'}); remove it to draw new "
                         f"shifts (dates already shifted with it will not match)")
    return key


def shift_days(key: str, subject: str) -> int:
    """The (negative) number of days every date of participant *subject* moves by.

    Drawn from the output folder's secret *key* (:func:`dates_key`) and the participant's
    label, hashed together with HMAC-SHA256.

    >>> shift_days("k", "01") == shift_days("k", "01")
    True
    >>> shift_days("k", "01") != shift_days("k", "02")
    True
    >>> all(-_BASE_DAYS - _SPREAD_DAYS < shift_days(str(s), "01") <= -_BASE_DAYS
    ...     for s in range(50))
    True
    """
    digest = hmac.new(str(key).encode(), f"bidsreface/dates/sub-{subject}".encode(),
                      hashlib.sha256).digest()
    return -(_BASE_DAYS + int.from_bytes(digest[:8], "big") % _SPREAD_DAYS)


def is_date_key(key: str) -> bool:
    """Whether a sidecar key names a date or time (DICOM-style names; ``acq_time``).

    Only string values of such keys are taken for dates: numbers (``EchoTime``) are durations.

    >>> [is_date_key(k) for k in ("AcquisitionDateTime", "ContentDate", "AcquisitionTime",
    ...                           "acq_time", "Manufacturer")]
    [True, True, True, True, False]
    """
    return key == "acq_time" or bool(_KEY.search(key))


def is_date_value(key: str, value) -> bool:
    """Whether a sidecar entry holds a date or time: a string under a date key, or a string
    in a date or date-time format under any key.

    >>> is_date_value("EchoTime", 0.003), is_date_value("AcquisitionTime", "10:11:12")
    (False, True)
    >>> is_date_value("Notes", "2020-01-02T10:11:12"), is_date_value("Notes", "T1 scan")
    (True, False)
    """
    if not isinstance(value, str):
        return False
    text = value.strip()
    return is_date_key(key) or bool(_DATETIME.match(text) or _DATE.match(text) and "-" in text)


def shift_value(value: str, days: int) -> str | None:
    """*value* moved by *days* if it is a date or a date-time (its format kept); a time of
    day alone is returned as it is; None when it is not a date or would not land in 1925 or
    earlier (remove it).

    >>> shift_value("2020-01-02T10:11:12", -36525)
    '1920-01-02T10:11:12'
    >>> shift_value("20200102", -36525), shift_value("2020-01-02", -36525)
    ('19200102', '1920-01-02')
    >>> shift_value("20200102101112.5", -36525)
    '19200102101112.5'
    >>> shift_value("10:11:12", -36525)
    '10:11:12'
    >>> shift_value("2020-01-02T10:11:12", -10) is None  # not into 1925 or earlier
    True
    >>> shift_value("yesterday", -36525) is None
    True
    """
    text = value.strip()
    for pattern, compact in ((_DATE, None), (_DATETIME, False), (_DICOM_DATETIME, True)):
        match = pattern.match(text)
        if not match:
            continue
        try:
            date = dt.date(*(int(part) for part in match.groups()[:3])) + dt.timedelta(days)
        except (ValueError, OverflowError):
            return None
        if date.year > LATEST_YEAR:
            return None
        dashes = "-" in text[:8] if compact is None else not compact
        sep = "-" if dashes else ""
        stamp = f"{date.year:04d}{sep}{date.month:02d}{sep}{date.day:02d}"
        return stamp + text[10 if dashes else 8:]
    if _TIME.match(text):
        return text
    return None


def apply_to_sidecar(meta: dict, dates: str, days: int) -> dict:
    """A copy of sidecar *meta* with its date and time fields shifted by *days*, removed or
    kept, as *dates* says (see :func:`is_date_value`; a value of a date key that is not in
    a date format is removed when shifting).

    >>> meta = {"AcquisitionDate": "2020-01-02", "AcquisitionTime": "10:11:12",
    ...         "RepetitionTime": 2.0}
    >>> apply_to_sidecar(meta, "shift", -36525)
    {'AcquisitionDate': '1920-01-02', 'AcquisitionTime': '10:11:12', 'RepetitionTime': 2.0}
    >>> apply_to_sidecar(meta, "remove", 0)
    {'RepetitionTime': 2.0}
    >>> apply_to_sidecar(meta, "keep", 0) == meta
    True
    """
    if dates == "keep":
        return dict(meta)
    result = {}
    for key, value in meta.items():
        if not is_date_value(key, value):
            result[key] = value
        elif dates == "shift":
            shifted = shift_value(value, days)
            if shifted is not None:
                result[key] = shifted
    return result


def apply_to_cell(value: str, dates: str, days: int) -> str:
    """A ``*_scans.tsv`` or ``*_sessions.tsv`` ``acq_time`` cell: shifted, or ``n/a``.

    >>> apply_to_cell("2020-01-02T10:11:12", "shift", -36525)
    '1920-01-02T10:11:12'
    >>> apply_to_cell("2020-01-02T10:11:12", "remove", -36525), apply_to_cell("n/a", "shift", 1)
    ('n/a', 'n/a')
    """
    if dates == "keep" or value in ("n/a", ""):
        return value
    if dates == "remove":
        return "n/a"
    shifted = shift_value(value, days)
    return "n/a" if shifted is None or _TIME.match(shifted) else shifted


def method_note(dates: str) -> str:
    """What ``--dates`` did, for ``DeidentificationMethod`` and the ``GeneratedBy`` note.

    >>> method_note("keep")
    ''
    """
    if dates == "shift":
        return (f" Dates (acq_time, date and time fields) shifted by a number of days drawn "
                f"per participant, into {LATEST_YEAR} or earlier; the intervals within a "
                f"participant and the times of day kept.")
    if dates == "remove":
        return " Dates (acq_time, date and time fields) removed."
    return ""
