"""Write outputs under a temporary name and rename them when complete, so nothing is left half-written."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cryoscape.errors import OutputError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, on error remove it.

    The temporary name keeps the suffix of ``path`` so that libraries choosing a format by extension
    (mrcfile, starfile, numpy) still work.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs should follow the user's umask
    except OSError as exc:
        raise _write_error(path, exc) from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if isinstance(exc, OSError):  # disk full, quota, permissions: one clear line; an older file is intact
            raise _write_error(path, exc) from exc
        raise


def _write_error(path: Path, exc: OSError) -> OutputError:
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or exc.errno is None
    hint = "; is the disk full? Free some space and run again" if full else ""
    return OutputError(f"{path}: could not write this file ({exc.strerror or exc}){hint}")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def check_writable_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and check that files can be written there; raise a clear error otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise OutputError(f"{path}: cannot write to this output folder ({exc.strerror or exc})") from exc
    return path
