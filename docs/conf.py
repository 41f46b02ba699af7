"""Sphinx configuration of bidsreface's documentation (MyST Markdown).

Build offline, warnings as errors, cross-references checked::

    python -m sphinx -W --keep-going -n -b html docs docs/_build/html
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))

from bidsreface import __version__  # noqa: E402

project = "bidsreface"
author = "The bidsreface developers"
copyright = "The bidsreface developers (Apache-2.0)"
version = release = __version__

extensions = ["myst_parser", "sphinxarg.ext", "bidsreface_docs"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "_schemas", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

html_theme = "alabaster"
html_static_path = ["_static"]
html_title = f"bidsreface {__version__}"
html_theme_options = {"description": "De-identify head MRI in BIDS datasets",
                      "fixed_sidebar": True}
# Nothing is fetched while building: no intersphinx, no remote images.
