"""Whether a file's content is here to read: git-annex files without content, dangling links.

DataLad datasets (every OpenNeuro dataset) hold their images as git-annex files: a symbolic
link into ``.git/annex/objects`` (or, on file systems without links, a small pointer file
naming the key) whose content is present only once ``datalad get`` fetched it. Everything that
reads a file of a user's dataset asks :func:`content_problem` first, so that such a file fails
alone with one line that says what to do, instead of a traceback that stops every participant.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

#: What git-annex writes in place of a file it has no content of (links and pointer files).
_ANNEX_MARK = "/annex/objects/"

#: Pointer files of unlocked annexed files are this small; real content is larger.
_POINTER_MAX_BYTES = 1024


def is_annex_pointer(path: str | Path) -> bool:
    """Whether *path* is a git-annex pointer file (an unlocked annexed file without content).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     p = Path(tmp) / "x.nii.gz"
    ...     _ = p.write_text("/annex/objects/SHA256E-s1--abc.nii.gz\\n")
    ...     is_annex_pointer(p)
    True
    """
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size > _POINTER_MAX_BYTES:
            return False
        with open(path, "rb") as fobj:
            return fobj.read(len(_ANNEX_MARK)) == _ANNEX_MARK.encode()
    except OSError:
        return False


def content_problem(path: str | Path, root: str | Path | None = None) -> str | None:
    """Why the content of *path* cannot be read; None when it can.

    *root* (the dataset's root) only shortens the path named in the ``datalad get`` hint.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     root = Path(tmp)
    ...     (root / "a").write_text("data")
    ...     (root / "b").symlink_to(".git/annex/objects/Xy/Zw/KEY/KEY")
    ...     (root / "c").symlink_to("nowhere")
    ...     for name in "abc":
    ...         print(content_problem(root / name, root))
    4
    None
    content not present (git-annex): run 'datalad get b'
    dangling symbolic link (to nowhere)
    """
    path = Path(path)
    shown = path
    if root is not None:
        with contextlib.suppress(ValueError):
            shown = path.relative_to(root)
    hint = f"content not present (git-annex): run 'datalad get {shown.as_posix()}'"
    if path.is_symlink() and not path.exists():
        target = os.readlink(path)
        if _ANNEX_MARK in target.replace(os.sep, "/"):
            return hint
        return f"dangling symbolic link (to {target})"
    if not path.exists():
        return "no such file"
    if is_annex_pointer(path):
        return hint
    if not os.access(path, os.R_OK):
        return "not readable (permission denied)"
    return None
