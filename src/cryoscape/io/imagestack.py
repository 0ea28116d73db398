"""ImageStack: particle images referenced as (stack file, 0-based index) over one or many MRC stacks.

Lazy stacks read only the requested images, with positioned reads (``io.stack_reader``; a bounded number of
files is kept open), loaded stacks hold one float32 array. Reads are grouped per file and returned in the requested
order.
Every image that is read is checked for NaN/Inf.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cryoscape.errors import InputError
from cryoscape.io.mrc import MRCInfo, read_header, validate_box
from cryoscape.io.stack_reader import StackReader

log = logging.getLogger(__name__)

_MAX_OPEN_FILES = 64

__all__ = ["ImageStack", "resolve_stack_paths", "check_stacks", "check_header_pixel_sizes"]


class ImageStack:
    """A sequence of ``N`` square images of side ``D`` stored in one or several MRC stacks.

    Parameters
    ----------
    files : sequence of paths
        The distinct stack files.
    file_ids : array of int, shape (N,)
        For each image, the position of its file in ``files``.
    local_indices : array of int, shape (N,)
        For each image, its 0-based index inside its file.
    pixel_size_angstrom : float, optional
        Pixel size in Angstrom; default: from the header of the first stack.
    lazy : bool
        Read images from disk on demand (bounded memory) instead of loading all images now.

    Raises
    ------
    InputError
        A stack file that is missing or not a valid MRC file, images that are not square with an even side,
        stacks with different box sizes, or an index past the end of a stack (naming the stack).
    """

    def __init__(self, files: Sequence[str | Path], file_ids, local_indices, pixel_size_angstrom: float | None = None,
                 lazy: bool = True, _loaded: np.ndarray | None = None, _validated: bool = False):
        self.files = [Path(f) for f in files]
        self.file_ids = np.asarray(file_ids, dtype=np.int64).reshape(-1)
        self.local_indices = np.asarray(local_indices, dtype=np.int64).reshape(-1)
        if self.file_ids.shape != self.local_indices.shape:
            raise ValueError("file_ids and local_indices must have the same length")
        self.lazy = bool(lazy)
        self._cache: OrderedDict[int, StackReader] = OrderedDict()
        if not _validated:
            self._infos = self._validate()
        self._D: int | None = None
        self._pixel_size = None if pixel_size_angstrom is None else float(pixel_size_angstrom)
        self._loaded = _loaded
        if not self.lazy and self._loaded is None:
            self._loaded = self._read(np.arange(len(self)))

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_refs(cls, refs: Iterable[tuple[str | Path, int]], pixel_size_angstrom: float | None = None,
                  lazy: bool = True) -> ImageStack:
        """Build from ``(stack path, 0-based index)`` pairs, in order."""
        refs = list(refs)
        names = [str(p) for p, _ in refs]
        uniq: Any = []
        file_ids: Any = []
        if refs:
            uniq, file_ids = np.unique(np.asarray(names, dtype=object), return_inverse=True)
        local = np.asarray([int(i) for _, i in refs], dtype=np.int64)
        return cls(list(uniq), file_ids, local, pixel_size_angstrom, lazy)

    @classmethod
    def from_paths_and_indices(cls, paths: Sequence[str | Path] | np.ndarray, indices,
                               pixel_size_angstrom: float | None = None, lazy: bool = True) -> ImageStack:
        """Build from parallel arrays of per-image stack paths and 0-based indices (fast for large N)."""
        uniq, file_ids = np.unique(np.asarray([str(p) for p in paths], dtype=object), return_inverse=True)
        return cls(list(uniq), file_ids, indices, pixel_size_angstrom, lazy)

    @classmethod
    def from_mrcs(cls, path: str | Path, lazy: bool = True, pixel_size_angstrom: float | None = None) -> ImageStack:
        """All images of one stack file, in file order."""
        info = read_header(path)
        n = info.n_images
        return cls([path], np.zeros(n, np.int64), np.arange(n), pixel_size_angstrom, lazy)

    @classmethod
    def from_stacks(cls, paths: Sequence[str | Path], lazy: bool = True,
                    pixel_size_angstrom: float | None = None) -> ImageStack:
        """All images of several stack files, concatenated in the given order."""
        file_ids, local = [], []
        for i, p in enumerate(paths):
            n = read_header(p).n_images
            file_ids.append(np.full(n, i, np.int64))
            local.append(np.arange(n, dtype=np.int64))
        if not paths:
            raise InputError("no image stacks given")
        return cls(list(paths), np.concatenate(file_ids), np.concatenate(local), pixel_size_angstrom, lazy)

    @classmethod
    def from_txt(cls, path: str | Path, lazy: bool = True, pixel_size_angstrom: float | None = None,
                 datadir: str | Path | None = None) -> ImageStack:
        """Stacks listed one per line in a text file (relative paths: to the text file's folder or ``datadir``)."""
        path = Path(path)
        try:
            lines = [ln.strip() for ln in path.read_text().splitlines()]
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read the list of stacks ({exc})", path) from None
        names = [ln for ln in lines if ln and not ln.startswith("#")]
        if not names:
            raise InputError("lists no image stacks", path)
        base = Path(datadir) if datadir is not None else path.parent
        stacks = [Path(n) if Path(n).is_absolute() else base / n for n in names]
        for s in stacks:
            if not s.exists():
                raise InputError(f"image stack {s} listed in this file does not exist", path,
                                 "check the paths or pass --datadir")
        return cls.from_stacks(stacks, lazy, pixel_size_angstrom)

    def _validate(self) -> list[MRCInfo]:
        n_files = len(self.files)
        if len(self) and (self.file_ids.min() < 0 or self.file_ids.max() >= n_files):
            raise ValueError("file_ids out of range")
        if len(self) and self.local_indices.min() < 0:
            bad = int(np.argmin(self.local_indices))
            raise InputError(f"image index {int(self.local_indices[bad])} is negative",
                             self.files[self.file_ids[bad]])
        max_idx = np.full(n_files, -1, dtype=np.int64)
        np.maximum.at(max_idx, self.file_ids, self.local_indices)
        infos = []
        D = None
        for fid, f in enumerate(self.files):
            if not f.is_file():
                raise InputError("image stack not found", f, "check the path, or pass --datadir with the folder "
                                 "holding the stacks")
            info = read_header(f)
            nz, ny, nx = info.shape
            d = validate_box(ny, nx, f)
            if D is None:
                D, first = d, f
            elif d != D:
                raise InputError(f"images are {d} x {d} pixels but those of {first} are {D} x {D}", f,
                                 "all particles must have the same box size")
            infos.append(info)
            if max_idx[fid] >= nz:
                raise InputError(f"image {int(max_idx[fid]) + 1} (1-based) is requested but this stack holds only "
                                 f"{nz} images", f, "the metadata refers to images that are not in the stack")
        return infos

    # ---------------------------------------------------------------- properties
    def __len__(self) -> int:
        return int(self.file_ids.shape[0])

    @property
    def D(self) -> int:
        """Box size in pixels."""
        if self._D is None:
            if not self.files:
                raise InputError("the image stack is empty")
            self._D = int(self._infos[0].shape[-1])
        return self._D

    @property
    def pixel_size_angstrom(self) -> float:
        """Pixel size in Angstrom: the value given at construction, else the first stack's header."""
        if self._pixel_size is None:
            if not self.files:
                raise InputError("the image stack is empty")
            header_value = self._infos[0].voxel_size_angstrom
            if header_value <= 0:
                raise InputError("the MRC header has no pixel size", self.files[0], "pass --apix")
            self._pixel_size = header_value
        return self._pixel_size

    @property
    def header_pixel_size_angstrom(self) -> float:
        """Pixel size in the header of the first stack (0.0 if unset)."""
        return float(self._infos[0].voxel_size_angstrom) if self.files else 0.0

    @property
    def image_refs(self) -> list[tuple[Path, int]]:
        """``(stack path, 0-based index)`` of every image, in order."""
        return [(self.files[f], int(i)) for f, i in zip(self.file_ids, self.local_indices, strict=True)]

    def __repr__(self) -> str:
        kind = "lazy" if self._loaded is None else "loaded"
        return f"ImageStack({len(self)} images, D={self.D if self.files else '?'}, {len(self.files)} files, {kind})"

    # ---------------------------------------------------------------- reading
    def __getitem__(self, key) -> np.ndarray:
        """Images as float32: an int gives ``(D, D)``; a slice, boolean mask or index array gives ``(n, D, D)``."""
        if isinstance(key, (int, np.integer)):
            i = int(key)
            if not -len(self) <= i < len(self):
                raise IndexError(f"image {i} out of range for {len(self)} images")
            return self[np.array([i % len(self)])][0]
        idx = np.arange(len(self))[key]
        if self._loaded is not None:
            return self._loaded[idx]
        return self._read(idx)

    def to_array(self) -> np.ndarray:
        """All images as one float32 array ``(N, D, D)``."""
        if self._loaded is not None:
            return self._loaded
        return self._read(np.arange(len(self)))

    def load(self) -> ImageStack:
        """A loaded (in-memory) copy of this stack."""
        if self._loaded is not None:
            return self
        return self._derive(np.arange(len(self)), loaded=self._read(np.arange(len(self))))

    def iter_batches(self, batch_size: int):
        """Yield ``(indices, images)`` in consecutive chunks of at most ``batch_size`` images."""
        for start in range(0, len(self), batch_size):
            idx = np.arange(start, min(start + batch_size, len(self)))
            yield idx, self[idx]

    def _stack(self, fid: int) -> StackReader:
        reader = self._cache.get(fid)
        if reader is None:
            reader = StackReader(self.files[fid])
            self._cache[fid] = reader
            if len(self._cache) > _MAX_OPEN_FILES:
                self._cache.popitem(last=False)[1].close()
        else:
            self._cache.move_to_end(fid)
        return reader

    def _read(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((idx.shape[0], self.D, self.D), dtype=np.float32)
        if idx.size == 0:
            return out
        fids = self.file_ids[idx]
        local = self.local_indices[idx]
        order = np.lexsort((local, fids))
        bounds = np.flatnonzero(np.diff(fids[order])) + 1
        for group in np.split(order, bounds):
            fid = int(fids[group[0]])
            reader = self._stack(fid)
            try:
                block = np.asarray(reader.read(local[group]), dtype=np.float32)
            except OSError as exc:
                raise InputError(f"cannot read images ({exc})", self.files[fid]) from None
            bad = ~np.isfinite(block).reshape(block.shape[0], -1).all(axis=1)
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                raise InputError(f"image {int(local[group][k])} (0-based) contains NaN or Inf pixel values",
                                 self.files[fid], "remove this particle (e.g. with --ind) or re-extract the stack")
            out[group] = block
        return out

    # ---------------------------------------------------------------- subsets
    def _derive(self, idx: np.ndarray, loaded: np.ndarray | None) -> ImageStack:
        new = ImageStack(self.files, self.file_ids[idx], self.local_indices[idx], self._pixel_size,
                         lazy=loaded is None, _loaded=loaded, _validated=True)
        new._infos = self._infos
        return new

    def subset(self, indices) -> ImageStack:
        """The images at ``indices`` (int array, slice or boolean mask), in that order, as a new ImageStack."""
        idx = np.arange(len(self))[indices]
        idx = np.atleast_1d(idx)
        loaded = None if self._loaded is None else self._loaded[idx]
        return self._derive(idx, loaded)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()  # stack readers are reopened in the receiving process
        return state


# -------------------------------------------------------------------- references from metadata files
def resolve_stack_paths(names, base_dir: str | Path, datadir: str | Path | None = None) -> np.ndarray:
    """Resolve stack names from a STAR/.cs file to paths (object array of str, one per name).

    With ``datadir``: ``datadir/name``, then ``datadir/basename(name)``. Without: ``base_dir/name`` (the
    metadata file's folder), then its parent folders up to two levels (RELION writes paths relative to the
    project folder, e.g. ``Refine3D/job010/run_data.star`` -> ``Extract/job005/...``), then the working folder.
    The first existing candidate wins; when none exists the first candidate is kept (reported later as missing).
    """
    names = np.asarray(names, dtype=object)
    uniq, inverse = np.unique(names, return_inverse=True)
    base_dir = Path(base_dir)
    resolved = []
    for name in uniq:
        p = Path(str(name))
        if datadir is not None:
            candidates = [Path(datadir) / p, Path(datadir) / p.name]
            if p.is_absolute():
                candidates = [p, Path(datadir) / p.name]
        elif p.is_absolute():
            candidates = [p]
        else:
            candidates = [base_dir / p, base_dir.parent / p, base_dir.parent.parent / p, Path.cwd() / p]
        found = next((c for c in candidates if c.is_file()), candidates[0])
        resolved.append(str(found))
    return np.asarray(resolved, dtype=object)[inverse.reshape(-1)] if len(uniq) else names


def check_stacks(stack_paths, indices, metadata_path: str | Path) -> dict[str, MRCInfo]:
    """Check the stacks referenced by a metadata file: they exist, hold each index, share one even square box.

    Parameters
    ----------
    stack_paths : array of str, shape (N,)
        Resolved stack path of every particle.
    indices : array of int, shape (N,)
        0-based image index of every particle.
    metadata_path : path
        The STAR/.cs file, named in the errors.

    Returns
    -------
    dict of str -> MRCInfo
        The header of every distinct stack, in order of first use.
    """
    stack_paths = np.asarray(stack_paths, dtype=object)
    indices = np.asarray(indices, dtype=np.int64)
    uniq, first, inverse = np.unique(stack_paths, return_index=True, return_inverse=True)
    max_idx = np.full(len(uniq), -1, dtype=np.int64)
    np.maximum.at(max_idx, inverse.reshape(-1), indices)
    infos: dict[str, MRCInfo] = {}
    D = None
    for u in np.argsort(first):
        stack = Path(str(uniq[u]))
        if not stack.is_file():
            raise InputError(f"image stack {stack} referenced by this file was not found", metadata_path,
                             "pass --datadir with the folder holding the stacks")
        info = read_header(stack)
        nz, ny, nx = info.shape
        d = validate_box(ny, nx, stack)
        if D is None:
            D, first_stack = d, stack
        elif d != D:
            raise InputError(f"stack {stack} has {d} x {d} images but {first_stack} has {D} x {D}", metadata_path,
                             "all particles must have the same box size")
        if max_idx[u] >= nz:
            raise InputError(f"refers to image {int(max_idx[u]) + 1} of {stack}, which holds only {nz} images",
                             metadata_path, "the metadata does not match the stacks")
        infos[str(stack)] = info
    return infos


def check_header_pixel_sizes(infos: dict[str, MRCInfo], stack_paths, pixel_size_angstrom,
                             metadata_path: str | Path) -> None:
    """Compare each stack's header pixel size with the metadata's value for its first particle (1% tolerance).

    Headers with 0 (unset) or exactly 1.0 (the placeholder many tools write) are not compared.
    """
    stack_paths = np.asarray(stack_paths, dtype=object)
    uniq, first = np.unique(stack_paths, return_index=True)
    first_row = dict(zip(uniq.tolist(), first.tolist(), strict=True))
    for stack, info in infos.items():
        h = info.voxel_size_angstrom
        if h <= 0 or h == 1.0 or stack not in first_row:
            continue
        p = float(np.asarray(pixel_size_angstrom)[first_row[stack]])
        if abs(h - p) > 0.01 * p:
            raise InputError(f"pixel size {p:.4f} A in this file differs from {h:.4f} A in the header of {stack}",
                             metadata_path, "pass --apix with the correct pixel size")
