"""Write the Boutiques descriptor of the BIDS App from its command-line parser.

Usage::

    python scripts/build_boutiques.py [--check] [--output bidsreface/data/boutiques.json]

The descriptor (https://boutiques.github.io, schema 0.5) describes ``bidsreface bids_dir
output_dir {participant,group} [options]`` for launchers such as CBRAIN: every option of
:func:`bidsreface.cli.parser.build_parser` becomes an input with the same flag, type and
choices. ``--check`` writes nothing and exits 1 when the file differs from what the parser
gives (``tests/test_release.py`` runs the same comparison).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTOR = ROOT / "bidsreface" / "data" / "boutiques.json"

#: Path inputs that must exist before the run (Boutiques ``File``); the others are written by
#: the run (``String``).
EXISTING_PATHS = ("bids_dir", "bids_filter_file", "use_plugin", "reface_model")


def _input_type(action: argparse.Action) -> dict:
    """The Boutiques type fields of one parser option; an unknown validator is an error, so
    that a new one is described here before the descriptor can be written."""
    from bidsreface.bids import ANAT_SUFFIXES

    if isinstance(action, (argparse._StoreTrueAction, argparse._CountAction)):
        return {"type": "Flag"}
    name = getattr(action.type, "__name__", None)
    if action.type is None:
        fields = {"type": "String"}
    elif name == "_abspath":
        fields = {"type": "File" if action.dest in EXISTING_PATHS else "String"}
    elif name in ("_participant_label", "_session_label"):
        fields = {"type": "String"}
    elif name == "_suffix":
        fields = {"type": "String", "value-choices": list(ANAT_SUFFIXES)}
    elif name == "_positive_int":
        fields = {"type": "Number", "integer": True, "minimum": 1}
    elif name == "_seed":
        fields = {"type": "Number", "integer": True, "minimum": 0, "maximum": 2**32 - 1}
    elif name == "_positive_float":
        fields = {"type": "Number", "minimum": 0, "exclusive-minimum": True}
    elif name == "_margin":
        fields = {"type": "Number", "minimum": 5}
    else:
        raise ValueError(f"{'/'.join(action.option_strings) or action.dest}: no Boutiques type "
                         f"for the validator {action.type!r}; add it to {Path(__file__).name}")
    if action.choices is not None:
        fields["value-choices"] = list(action.choices)
    return fields


def flag(action: argparse.Action) -> str | None:
    """The flag a descriptor uses for an option: its first long form (None: positional).

    >>> flag(argparse.ArgumentParser().add_argument("-w", "--work-dir"))
    '--work-dir'
    """
    if not action.option_strings:
        return None
    longs = [o for o in action.option_strings if o.startswith("--")]
    return (longs or action.option_strings)[0]


def run_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's actions that shape a run (``--help`` and ``--version`` print and exit)."""
    return [a for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


def describe(action: argparse.Action) -> dict:
    """The Boutiques input of one parser action."""
    entry = {"id": action.dest, "name": action.dest.replace("_", " "),
             **_input_type(action),
             "value-key": f"[{action.dest.upper()}]",
             "optional": bool(action.option_strings)}
    if action.help:
        entry["description"] = action.help
    if flag(action):
        entry["command-line-flag"] = flag(action)
    if action.nargs == "+":
        entry.update({"list": True, "min-list-entries": 1})
    default = action.default
    if entry["type"] != "Flag" and default not in (None, [], argparse.SUPPRESS):
        entry["default-value"] = default
    return entry


def descriptor(parser: argparse.ArgumentParser | None = None) -> dict:
    """The descriptor of *parser* (default: the App's)."""
    from bidsreface import __codeurl__, __version__
    from bidsreface.cli.parser import build_parser

    parser = parser or build_parser()
    actions = run_actions(parser)
    groups = []
    for group in parser._action_groups:
        members = [a.dest for a in group._group_actions if a in actions]
        if members and group.title not in ("positional arguments", "options"):
            groups.append({"id": group.title.replace(" ", "_"), "name": group.title,
                           "members": members})
    return {
        "name": "bidsreface",
        "tool-version": __version__,
        "description": (f"{parser.description} A BIDS App: the participant level "
                        f"de-identifies every selected anatomical image (defaced, T1w "
                        f"refaced); the group level writes the group tables, the "
                        f"re-identification audit and the group report."),
        "author": "The bidsreface developers",
        "url": __codeurl__,
        "schema-version": "0.5",
        "command-line": " ".join([parser.prog] + [f"[{a.dest.upper()}]" for a in actions]),
        "container-image": {"type": "docker", "image": f"bidsreface/bidsreface:{__version__}"},
        "inputs": [describe(a) for a in actions],
        "groups": groups,
        "output-files": [
            {"id": "derivatives", "name": "BIDS derivatives", "path-template": "[OUTPUT_DIR]",
             "description": "de-identified images, masks, QC records and reports"},
            {"id": "export", "name": "de-identified dataset", "path-template": "[EXPORT_BIDS]",
             "optional": True,
             "description": "a complete de-identified copy of the dataset (--export-bids)"},
        ],
        "error-codes": [
            {"code": 1, "description": "some image or participant failed (named on stderr)"},
            {"code": 2, "description": "usage error: nothing was run"},
        ],
        "suggested-resources": {"cpu-cores": 2, "ram": 8},
        "tags": {"domain": ["neuroinformatics", "mri", "de-identification", "bids-app"]},
    }


def text(parser: argparse.ArgumentParser | None = None) -> str:
    """The descriptor as the file holds it."""
    return json.dumps(descriptor(parser), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    opts = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    opts.add_argument("--output", type=Path, default=DESCRIPTOR)
    opts.add_argument("--check", action="store_true",
                      help="exit 1 when the file differs from the parser's descriptor")
    args = opts.parse_args(argv)
    wanted = text()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.is_file() else ""
        if current != wanted:
            print(f"{args.output} differs from the parser: run python "
                  f"scripts/build_boutiques.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(wanted, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
