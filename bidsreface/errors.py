"""Errors that end in a one-line message for the user."""

from __future__ import annotations

from pathlib import Path


class UsageError(Exception):
    """The command line or the dataset as a whole cannot be used (exit code 2)."""


class ImageError(Exception):
    """One image cannot be processed; only that image fails.

    >>> str(ImageError("sub-01/anat/sub-01_T1w.nii.gz", "image is 2D"))
    'sub-01/anat/sub-01_T1w.nii.gz: image is 2D'
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        return (type(self), (self.path, self.problem))


class RegistrationError(ImageError):
    """Registration to the template failed its quality check."""

