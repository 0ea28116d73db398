"""Output folders and files that are never overwritten or deleted without a word.

The rule every command follows (``docs/reliability.md``, "Outputs are never overwritten without --overwrite"):

* an output folder must be new or empty (files whose names start with ``.`` do not count), an output file must
  not exist, unless ``--overwrite`` is given; otherwise the command stops at once with one line naming the output;
* with ``--overwrite`` the command replaces only the files it writes itself (``own``: names or glob patterns,
  relative to the folder), stale ones from an earlier run included; every other file is left alone and the
  folder itself is never deleted;
* the folder is created only when the command is about to write (after its inputs have been checked); if the
  command then fails or is interrupted, what it wrote is removed, the files it was replacing are put back, and a
  folder it created is removed again: an error leaves neither an empty nor a half-written output.

Usage::

    out_dir = prepare_output_dir(args.outdir, "filter", args.overwrite, own=FILTER_OUTPUTS)  # refuses at once
    ...  # read and check the inputs, compute
    with out_dir as out:  # creates the folder, sets the old own files aside
        write_files(out)  # on success the old files are deleted, on error the new ones
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from cryoscape.errors import OutputError
from cryoscape.utils.diskspace import check_writable_location

__all__ = ["OutputDir", "prepare_output_dir", "check_output_file", "visible_entries", "OVERWRITE_HELP"]

OVERWRITE_HELP = "replace the files this command writes in an existing output (other files are kept)"
_BACKUP_PREFIX = ".cryoscape-replaced-"


def visible_entries(folder: str | Path) -> list[Path]:
    """The entries of ``folder`` whose names do not start with ``.`` (sorted)."""
    return sorted(p for p in Path(folder).iterdir() if not p.name.startswith("."))


def _refusal(path: Path, command: str, what: str, option: str, folder: bool = True) -> OutputError:
    replace = "the files it writes there" if folder else "it"
    return OutputError(f"{path}: {what}; `cryoscape {command}` does not write over it (give --overwrite to replace "
                       f"{replace}, or choose another {option})")


def check_output_file(path: str | Path, command: str, overwrite: bool = False, option: str = "-o") -> Path:
    """Check that the output file ``path`` may be written: it must not exist unless ``overwrite``; create nothing.

    Raises
    ------
    OutputError
        One line when ``path`` is a folder, exists (without ``overwrite``) or cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder, but `cryoscape {command}` writes a file here (give a file name)")
    if path.exists() and not overwrite:
        raise _refusal(path, command, "exists already", option, folder=False)
    check_writable_location(path.parent)
    return path


class OutputDir:
    """An output folder checked by :func:`prepare_output_dir`; ``with`` it to write (see the module docstring)."""

    def __init__(self, path: str | Path, command: str, overwrite: bool = False, own: Iterable[str] = (),
                 keep: Iterable[str] = (), option: str = "-o"):
        self.path = Path(path)
        self.command = command
        self.overwrite = bool(overwrite)
        self.own = tuple(own)
        self.keep = tuple(keep)
        self.option = option
        self._created: Path | None = None
        self._backup: Path | None = None
        self._before: set[str] = set()
        self.check()

    def check(self) -> None:
        """Refuse a file, a non-empty folder (without ``overwrite``) or an unwritable place; create nothing."""
        p = self.path
        if p.exists() and not p.is_dir():
            raise OutputError(f"{p}: is a file, but `cryoscape {self.command}` writes a folder here "
                              f"(choose another {self.option})")
        if p.is_dir() and visible_entries(p) and not self.overwrite:
            raise _refusal(p, self.command, "this output folder is not empty", self.option)
        check_writable_location(p)

    def own_entries(self) -> list[Path]:
        """The top-level entries of the folder that match ``own`` (files of this command, from any earlier run)."""
        if not self.path.is_dir():
            return []
        found = {q for pattern in self.own for q in self.path.glob(pattern) if q.parent == self.path}
        return sorted(found)

    def __enter__(self) -> Path:
        self.check()
        p = self.path.absolute()
        created = None  # the topmost folder this call creates
        if not p.exists():
            created = p
            for q in p.parents:
                if q.exists():
                    break
                created = q
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot create this output folder ({exc.strerror or exc})") from exc
        self._created = created
        stale = self.own_entries()
        if stale:
            self._backup = Path(tempfile.mkdtemp(prefix=_BACKUP_PREFIX, dir=p))
            for q in stale:
                os.replace(q, self._backup / q.name)
        self._before = {q.name for q in p.iterdir()}
        return self.path

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        p = self.path.absolute()
        if exc_type is None:
            if self._backup is not None:
                for rel in self.keep:  # files of the user inside an entry this command replaced
                    old, new = self._backup / rel, p / rel
                    if old.exists() and not new.exists():
                        new.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(old, new)
                shutil.rmtree(self._backup, ignore_errors=True)
            return False
        if self._created is not None:
            shutil.rmtree(self._created, ignore_errors=True)
            return False
        for q in p.iterdir():  # what this command wrote
            if q.name not in self._before:
                with contextlib.suppress(OSError):
                    shutil.rmtree(q) if q.is_dir() and not q.is_symlink() else q.unlink()
        if self._backup is not None:  # put back what it was replacing
            for q in self._backup.iterdir():
                target = p / q.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target, ignore_errors=True)
                elif target.exists() or target.is_symlink():
                    target.unlink()
                os.replace(q, target)
            with contextlib.suppress(OSError):
                self._backup.rmdir()
        return False


def prepare_output_dir(path: str | Path, command: str, overwrite: bool = False, own: Iterable[str] = (),
                       keep: Iterable[str] = (), option: str = "-o") -> OutputDir:
    """Check the output folder ``path`` of ``cryoscape COMMAND`` now; write into it later with ``with``.

    Parameters
    ----------
    path : path
        The output folder (need not exist).
    command : str
        The command's name, for the message.
    overwrite : bool
        ``--overwrite``: a non-empty folder is accepted, and the entries matching ``own`` are replaced.
    own : iterable of str
        Names or glob patterns (top level of the folder) of everything the command writes, including files it
        writes only with some options (so that a rerun removes stale ones).
    keep : iterable of str
        Paths (relative to the folder) inside an ``own`` entry that belong to the user and are carried over into
        the new output (e.g. ``run/explore_selections`` of the demo).
    option : str
        The option that names the output, for the message.

    Raises
    ------
    OutputError
        ``path`` is a file, a non-empty folder without ``overwrite``, or cannot be written.
    """
    return OutputDir(path, command, overwrite, own, keep, option)
