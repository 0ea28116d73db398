"""Read chosen images of an MRC stack with positioned reads (``pread``), for stacks larger than RAM.

Why not a memory map: a page fault on a cold ``np.memmap`` makes the kernel read ahead far more than one image,
so reading particles scattered over a large file through a memory map was ~50x slower than positioned reads on
our test machine (4 ms vs 0.08 ms per 64x64 image, ``bench/RESULTS.md`` section 4b), and every mapped page that
was touched counts towards the process's resident memory until the map is closed. ``os.preadv`` reads exactly
the bytes asked for into a buffer we own, goes through the page cache (repeat epochs are served from RAM when
the file fits), keeps no file offset (safe in forked data-loader workers) and leaves resident memory bounded by
the batch. Where ``os.preadv`` does not exist (Windows) the reader falls back to a memory map.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cryoscape.errors import InputError
from cryoscape.io.mrc import open_stack

__all__ = ["StackReader"]

_HAS_PREADV = hasattr(os, "preadv")


class StackReader:
    """Random access to the images of one MRC stack.

    Parameters
    ----------
    path : the ``.mrcs``/``.mrc`` stack (its header is validated by :func:`cryoscape.io.mrc.open_stack`).
    use_pread : read with ``os.preadv`` (default where available); ``False`` reads through a memory map.
    """

    def __init__(self, path: str | Path, use_pread: bool | None = None):
        self.path = Path(path)
        mm, info = open_stack(self.path, lazy=True)
        self.shape = tuple(int(s) for s in mm.shape)
        self.dtype = mm.dtype
        assert isinstance(mm, np.memmap)  # open_stack(lazy=True) maps the file
        self._offset = int(mm.offset)
        self._image_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self._fd: int | None = None
        self._mm = None
        if (_HAS_PREADV if use_pread is None else use_pread):
            del mm
            try:
                self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            except OSError as exc:
                raise InputError(f"cannot open the image stack ({exc})", self.path) from None
        else:
            self._mm = mm

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Images at 0-based ``indices`` (any order, repeats allowed), ``(n, ny, nx)`` in the file's dtype."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if self._mm is not None:
            return np.asarray(self._mm[indices])
        if self._fd is None:
            raise ValueError(f"the reader of {self.path} is closed")
        out = np.empty((indices.size,) + self.shape[1:], dtype=self.dtype)
        if indices.size == 0:
            return out
        if indices.min() < 0 or indices.max() >= self.shape[0]:
            raise IndexError(f"image index out of range for {self.shape[0]} images in {self.path}")
        order = np.argsort(indices, kind="stable")
        sorted_idx = indices[order]
        # one read per run of consecutive images (sequential evaluation reads whole batches at once)
        breaks = np.flatnonzero(np.diff(sorted_idx) != 1) + 1
        starts = np.concatenate([[0], breaks])
        stops = np.concatenate([breaks, [sorted_idx.size]])
        buffer = out if np.array_equal(order, np.arange(order.size)) else np.empty_like(out)
        flat = buffer.reshape(indices.size, -1).view(np.uint8)
        for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
            self._read_run(int(sorted_idx[a]), flat[a:b])
        if buffer is not out:
            out[order] = buffer
        return out

    def _read_run(self, first: int, dest: np.ndarray) -> None:
        assert self._fd is not None  # the pread path: the file is open
        view = dest.reshape(-1).data  # a memoryview of the buffer
        position = self._offset + first * self._image_bytes
        done = 0
        while done < view.nbytes:
            try:
                n = os.preadv(self._fd, [view[done:]], position + done)
            except OSError as exc:
                raise InputError(f"cannot read images ({exc})", self.path) from None
            if n == 0:
                raise InputError(f"the file ends before image {first + done // self._image_bytes} (0-based); it "
                                 "is truncated", self.path, "re-extract or re-copy the stack")
            done += n

    def close(self) -> None:
        """Release the file descriptor (or memory map)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._mm = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass
