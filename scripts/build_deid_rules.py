#!/usr/bin/env python
"""Build ``bidsreface/data/deid_rules.json``: the DICOM standard's de-identification rules by
keyword (the names dcm2niix gives sidecar fields).

The attributes are those that PS3.15 Annex E, table E.1-1, has the Basic Application Level
Confidentiality Profile remove or blank (actions D, Z, X, U and their combinations), as the
``dicom-anonymizer`` package (KitwareMedical) ships them, transcribed from the standard's own
table (module ``dicomanonymizer.dicom_anonymization_databases.dicomfields_<edition>``). Each
tag gets its keyword and value representation from pydicom's data dictionary. Both packages
are build-time tools only, not dependencies of bidsreface::

    pip install --target /tmp/deidtools --no-deps dicom-anonymizer==2.1.0
    PYTHONPATH=/tmp/deidtools python scripts/build_deid_rules.py   # needs pydicom

Repeating groups (``50xx``, ``60xx``: curves and overlays) have no sidecar keyword and are
left out; tags that pydicom's dictionary does not know are listed on stderr and left out.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from importlib.metadata import version
from pathlib import Path

#: Action groups of dicom-anonymizer's table -> the actions of table E.1-1 they stand for.
CATEGORIES = {
    "D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z", "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*",
}
#: Value representations of dates and times.
DATE_VRS = ("DA", "DT", "TM")
#: Sidecar names of dcm2niix that are not the DICOM keyword of their attribute.
DCM2NIIX_ALIASES = {
    "ProcedureStepDescription": "PerformedProcedureStepDescription",
}
#: Attributes of the table that sidecars keep on purpose, with the reason (none: every
#: acquisition parameter BIDS needs, RepetitionTime, EchoTime, SliceTiming, AcquisitionDuration,
#: SoftwareVersions..., is outside the table, and the table's dates, times, UIDs, names and
#: descriptions are not needed by BIDS).
KEPT: dict[str, str] = {}
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "bidsreface" / "data" / "deid_rules.json"


def build(edition: str) -> tuple[dict, list[str]]:
    """The rules of *edition* (``dicomfields_2026c``...) and the tags left out."""
    from pydicom import datadict

    table = importlib.import_module(
        f"dicomanonymizer.dicom_anonymization_databases.{edition}")
    attributes, skipped = {}, []
    for category, action in CATEGORIES.items():
        for entry in getattr(table, category):
            if len(entry) != 2:
                skipped.append(f"({entry[0]:04X},{entry[1]:04X}) mask ({entry[2]:04X},"
                               f"{entry[3]:04X}) (repeating group)")
                continue
            tag = (entry[0] << 16) | entry[1]
            keyword = datadict.keyword_for_tag(tag)
            if not keyword:
                skipped.append(f"({entry[0]:04X},{entry[1]:04X}) (not in pydicom's dictionary)")
                continue
            if keyword in KEPT:
                continue
            attributes[keyword] = {"tag": f"({entry[0]:04X},{entry[1]:04X})",
                                   "vr": datadict.dictionary_VR(tag), "action": action}
    return dict(sorted(attributes.items())), skipped


def patient_kept(attributes: dict) -> list[str]:
    """Keywords of pydicom's dictionary that start with ``Patient`` and that the profile
    keeps (acquisition geometry: ``PatientPosition``, ``PatientOrientation``...)."""
    from pydicom.datadict import DicomDictionary

    return sorted(entry[4] for entry in DicomDictionary.values()
                  if entry[4].startswith("Patient") and entry[4] not in attributes)


def date_keywords() -> list[str]:
    """Every keyword of pydicom's dictionary whose value is a date or a time."""
    from pydicom.datadict import DicomDictionary

    return sorted(entry[4] for entry in DicomDictionary.values()
                  if entry[0] in DATE_VRS and entry[4])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edition", default="dicomfields_2026c",
                        help="dicom-anonymizer's table of the standard (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    attributes, skipped = build(args.edition)
    for line in skipped:
        print(f"left out: {line}", file=sys.stderr)
    rules = {
        "source": ("DICOM PS3.15 Annex E, table E.1-1, Basic Application Level Confidentiality "
                   "Profile: attributes removed or blanked (actions D, Z, X, U)"),
        "generated_by": (f"scripts/build_deid_rules.py from dicom-anonymizer "
                         f"{version('dicom-anonymizer')} ({args.edition}) and pydicom "
                         f"{version('pydicom')}"),
        "date_vrs": list(DATE_VRS),
        "aliases": DCM2NIIX_ALIASES,
        "kept": KEPT,
        "attributes": attributes,
        "date_keywords": date_keywords(),
        "patient_kept": patient_kept(attributes),
    }
    args.out.write_text(json.dumps(rules, indent=1) + "\n", encoding="utf-8")
    print(f"{args.out}: {len(attributes)} attributes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
