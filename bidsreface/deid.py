"""Which sidecar fields identify a person: the DICOM standard's de-identification rules.

The rules are those of PS3.15 Annex E (table E.1-1), the Basic Application Level
Confidentiality Profile: every attribute it removes, blanks or replaces (actions D, Z, X, U),
by DICOM keyword, which is the name dcm2niix gives the attribute in a BIDS sidecar. They are
read from ``bidsreface/data/deid_rules.json``, which ``scripts/build_deid_rules.py`` generates
from the standard's table (as the ``dicom-anonymizer`` package transcribes it) and pydicom's data
dictionary; neither package is needed at run time.

Any other key starting with ``Patient`` is identifying too (the patient attributes of
editions newer than the dictionary the file was built with, private ones), except the
``Patient*`` attributes of the dictionary that the profile keeps (``PatientPosition``,
``PatientOrientation``: acquisition geometry).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib.resources import files

#: The rules' file, in the package's data.
RULES = "deid_rules.json"


@lru_cache(maxsize=1)
def rules() -> dict:
    """The rules' file, as a dict (``attributes``: keyword -> tag, VR and action)."""
    return json.loads((files("bidsreface") / "data" / RULES).read_text(encoding="utf-8"))


def _keyword(key: str) -> str:
    return rules()["aliases"].get(key, key)


def is_identifying(key: str) -> bool:
    """Whether a sidecar field is one the standard removes or blanks (or a ``Patient*`` key
    that it does not keep).

    >>> [is_identifying(k) for k in ("PatientName", "InstitutionAddress", "RepetitionTime")]
    [True, True, False]
    >>> is_identifying("PatientPosition"), is_identifying("PatientNickname")
    (False, True)
    >>> is_identifying("AcquisitionDateTime"), is_identifying("SliceTiming")
    (True, False)
    """
    keyword = _keyword(key)
    if keyword in rules()["attributes"]:
        return True
    return keyword.startswith("Patient") and keyword not in _patient_kept()


@lru_cache(maxsize=1)
def _patient_kept() -> frozenset:
    return frozenset(rules()["patient_kept"])


def is_date(key: str) -> bool:
    """Whether a sidecar field holds a date or a time (DICOM VR DA, DT or TM).

    >>> is_date("AcquisitionDateTime"), is_date("StudyTime"), is_date("AcquisitionDuration")
    (True, True, False)
    """
    keyword = _keyword(key)
    entry = rules()["attributes"].get(keyword)
    if entry is not None:
        return entry["vr"] in rules()["date_vrs"]
    return keyword in _date_keywords()


@lru_cache(maxsize=1)
def _date_keywords() -> frozenset:
    return frozenset(rules()["date_keywords"])


def rule_of(key: str) -> dict | None:
    """The standard's entry of a field (tag, VR and action), or None.

    >>> rule_of("PatientName")["tag"], rule_of("RepetitionTime")
    ('(0010,0010)', None)
    """
    return rules()["attributes"].get(_keyword(key))


def identifying_fields() -> tuple[str, ...]:
    """Every keyword the rules remove, sorted."""
    return tuple(rules()["attributes"])
