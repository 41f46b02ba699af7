"""The documentation: the command-line reference is generated from the parser, every relative
link resolves, the group tables' columns are all described, and README stays short."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: Markdown links and images: ``[text](target)``; targets with a scheme are external.
LINK_RE = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _docs_extension():
    pytest.importorskip("docutils")
    spec = importlib.util.spec_from_file_location("bidsreface_docs",
                                                  DOCS / "_ext" / "bidsreface_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_follows_the_parser(tmp_path, monkeypatch):
    """Building the docs against a parser with a changed option changes the usage page."""
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    pytest.importorskip("sphinxarg")
    from sphinx.application import Sphinx

    import bidsreface.cli.parser as cli_parser

    original = cli_parser.build_parser

    def changed_parser():
        parser = original()
        parser.add_argument("--docs-probe-option", metavar="PROBE",
                            help="an option only this test's parser has")
        for action in parser._actions:
            if "--deface-ears" in action.option_strings:
                action.help = "a help text only this test's parser has"
        return parser

    monkeypatch.setattr(cli_parser, "build_parser", changed_parser)
    sources = "".join(p.read_text(encoding="utf-8") for p in DOCS.rglob("*.md"))
    assert "--docs-probe-option" not in sources
    assert "only this test's parser has" not in sources

    app = Sphinx(str(DOCS), str(DOCS), str(tmp_path / "text"), str(tmp_path / "doctrees"),
                 "text", status=None, warning=None, freshenv=True)
    app.build()
    usage = (tmp_path / "text" / "usage.txt").read_text(encoding="utf-8")
    assert "--docs-probe-option" in usage
    assert "an option only this test's parser has" in usage
    assert "a help text only this test's parser has" in usage
    assert "remove the ears too" not in usage  # the parser's own help, replaced above
    # the other commands' references come from their parsers too
    assert "--brainsmall" in usage and "--prior-modes" in usage


def _relative_links(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold no links
    return [target for target in LINK_RE.findall(text)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target) and not target.startswith("#")]


def test_relative_links_resolve():
    pages = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    checked, broken = 0, []
    for page in pages:
        for target in _relative_links(page):
            checked += 1
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken
    assert checked >= 5  # README's links into the docs are among them


def test_group_columns_are_described():
    extension = _docs_extension()
    assert extension.undocumented("group") == []
    assert extension.undocumented("audit") == []


def test_undescribed_column_is_found(monkeypatch):
    extension = _docs_extension()
    monkeypatch.delitem(extension.GROUP_COLUMNS, "own_guard_overlap")
    assert extension.undocumented("group") == ["own_guard_overlap"]


def test_readme_is_short_and_gives_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    getting_started = (DOCS / "getting-started.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    install = next(b for b in blocks if "bidsreface-demo" in b)
    assert install.strip() in getting_started
    assert any(b.strip() == "bash .ci/run" for b in blocks)
    assert (ROOT / ".ci" / "run").is_file()
