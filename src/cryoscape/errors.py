"""Exceptions that reach the user as one clear line (no traceback unless ``--verbose``)."""

from __future__ import annotations

from pathlib import Path


class CryoscapeError(Exception):
    """An error the user can act on. The CLI prints ``str(error)`` and exits non-zero."""


class InputError(CryoscapeError):
    """A problem with an input file or argument.

    The message names the file (when there is one), the problem and, where useful, what to do.
    """

    def __init__(self, problem: str, path: str | Path | None = None, hint: str | None = None):
        self.path = None if path is None else Path(path)
        self.problem = problem
        self.hint = hint
        text = f"{self.path}: {problem}" if self.path is not None else problem
        if hint:
            text += f" ({hint})"
        super().__init__(text)


class OutputError(CryoscapeError):
    """An output location that cannot be written."""
