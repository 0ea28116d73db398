"""glibc allocator settings for training on a CPU (no-ops where the C library is not glibc).

A training step on a CPU allocates and frees activation tensors of tens of MB many times. glibc serves blocks
above ``M_MMAP_THRESHOLD`` (at most 32 MB) with fresh ``mmap`` calls and returns them on free, so every such
tensor is page-faulted in again, and the freed top of the heap is given back with ``brk`` once it exceeds
``M_TRIM_THRESHOLD``. On the benchmark machine this first-touch cost was about a quarter of a D=64 training step
(``bench/RESULTS.md``, section 2d). :func:`keep_freed_memory` makes large blocks come from the heap and keeps
freed pages for reuse; :func:`malloc_trim` returns them explicitly (the lazy-data loop calls it periodically).
Every ``cryoscape`` command and :func:`cryoscape.train.run.train` apply it; the environment variable
``CRYOSCAPE_KEEP_FREED_MEMORY=0`` leaves glibc's defaults in place.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

__all__ = ["keep_freed_memory", "malloc_trim"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# Freed memory above this much at the top of the heap still goes back to the system.
_KEEP_BYTES = 1 << 30


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
        return None
    return libc


def malloc_trim() -> None:
    """``malloc_trim(0)``: give free heap pages back to the system."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Serve large blocks from the heap and keep up to 1 GiB of freed memory for reuse; ``True`` if applied.

    Process-wide and idempotent. Blocks that do not fit a thread's heap still fall back to ``mmap``.
    """
    libc = _libc()
    if libc is None or os.environ.get("CRYOSCAPE_KEEP_FREED_MEMORY", "1") == "0":
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
