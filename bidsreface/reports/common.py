"""What both reports share: the template environment, embedded images, plots, atomic writes."""

from __future__ import annotations

import base64
import html
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..bids import temporary_path

#: Colours of the reports: passing, failing or flagged, neutral.
OK_COLOUR, BAD_COLOUR, GREY = "#2a7d3c", "#c0392b", "#777777"


@lru_cache(maxsize=1)
def environment():
    """The jinja2 environment of the report templates (autoescaped)."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("bidsreface", "data/reports"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render_template(name: str, **context) -> str:
    """Render one of the report templates."""
    return environment().get_template(name).render(**context)


def data_uri(path: str | Path, mime: str = "image/png") -> str:
    """The file at *path* as a ``data:`` URI (embedded in the report)."""
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def write_text_atomic(path: Path, text: str) -> Path:
    """Write *text* to *path* through a temporary file and :func:`os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def image_anchor(source: str) -> str:
    """The HTML anchor of an image in its participant report (its file name's stem).

    >>> image_anchor("sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz")
    'sub-01_ses-1_T1w'
    """
    return source.rsplit("/", 1)[-1].split(".")[0]


def fmt(value) -> str:
    """A metric as shown in the reports and tables (``n/a`` when missing).

    >>> [fmt(v) for v in (None, True, 3, 0.123456, [1.0, 2.5], "x")]
    ['n/a', 'yes', '3', '0.1235', '1 2.5', 'x']
    """
    if value is None or value == "":
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return " ".join(fmt(v) for v in value)
    return str(value)


def strip_plot(title: str, points: list[tuple[str, float, str, bool]], width: int = 560,
               height: int = 70) -> str:
    """An inline SVG strip plot of one metric: one dot per image, linked to its report.

    Parameters
    ----------
    title
        The metric.
    points
        ``(label, value, link, flagged)``; flagged dots are drawn in the failing colour.

    >>> svg = strip_plot("x", [("a", 1.0, "a.html", False), ("b", 2.0, "b.html", True)])
    >>> svg.count("<circle"), svg.startswith("<svg")
    (2, True)
    """
    values = np.array([p[1] for p in points], dtype=float)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    left, right = 60, width - 20
    x = lambda v: left + (v - lo) / (hi - lo) * (right - left)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
             f'<line x1="{left}" y1="{height - 22}" x2="{right}" y2="{height - 22}" '
             f'stroke="{GREY}"/>',
             f'<text x="{left}" y="{height - 6}" font-size="11" fill="{GREY}">{fmt(lo)}</text>',
             f'<text x="{right}" y="{height - 6}" font-size="11" fill="{GREY}" '
             f'text-anchor="end">{fmt(hi)}</text>']
    for i, (label, value, link, flagged) in enumerate(points):
        colour = BAD_COLOUR if flagged else OK_COLOUR
        y = 14 + (i % 4) * 8
        parts.append(f'<a href="{html.escape(link)}"><circle cx="{x(value):.1f}" cy="{y}" '
                     f'r="5" fill="{colour}" fill-opacity="0.8"><title>'
                     f'{html.escape(label)}: {fmt(value)}</title></circle></a>')
    parts.append("</svg>")
    return "".join(parts)
