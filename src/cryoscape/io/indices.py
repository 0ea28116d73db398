"""Particle index files: ``.npy`` integer arrays, ``.txt`` one index per line, cryoDRGN ``.pkl`` (restricted).

Indices are 0-based positions in the original particle file (STAR rows, ``.cs`` rows or stack images).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cryoscape.errors import InputError
from cryoscape.io.pkl import load_pickle, save_pickle
from cryoscape.utils.atomic import atomic_path, atomic_write_text

__all__ = ["read_indices", "read_particle_indices", "write_indices", "validate_indices"]


def validate_indices(values, n: int | None = None, path: str | Path | None = None) -> np.ndarray:
    """Check indices and return them as a 1-D int64 array.

    Raises
    ------
    InputError
        Non-integer values, negative values, duplicates, or values ``>= n`` (naming ``path``).
    """
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError):
        raise InputError("not a list of particle indices (ragged or nested values)", path) from None
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise InputError(f"indices must be a 1-D list, found shape {arr.shape}", path)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise InputError("indices must be whole numbers", path)
    elif arr.dtype.kind not in "iu" and arr.size:
        raise InputError(f"indices must be integers, found {arr.dtype}", path)
    arr = arr.astype(np.int64)
    if arr.size == 0:
        raise InputError("the index list is empty", path)
    if arr.min() < 0:
        raise InputError(f"negative index {int(arr.min())}", path)
    uniq, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        raise InputError(f"{dup.size} duplicated index value(s), e.g. {int(dup[0])}", path)
    if n is not None and arr.max() >= n:
        raise InputError(f"index {int(arr.max())} is out of range for {n} particles (indices are 0-based)", path)
    return arr


def read_indices(path: str | os.PathLike, n: int | None = None) -> np.ndarray:
    """Read particle indices from ``.npy``, ``.txt`` (one per line, ``#`` comments) or cryoDRGN ``.pkl``.

    Parameters
    ----------
    path : path
    n : int, optional
        Number of particles; every index must be ``< n``.

    Returns
    -------
    np.ndarray
        int64, shape ``(M,)``, in file order.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("index file not found", path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            values = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"not a readable .npy file ({exc})", path) from None
    elif suffix == ".pkl":
        values = load_pickle(path, "index")
        if not isinstance(values, (np.ndarray, list, tuple)):
            raise InputError(f"index pickle holds a {type(values).__name__}, expected an array", path)
    else:
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read the index file ({exc})", path) from None
        tokens = [t for ln in lines for t in ln.split("#", 1)[0].replace(",", " ").split()]
        try:
            values = np.array([int(t) for t in tokens], dtype=np.int64)
        except ValueError:
            bad = next(t for t in tokens if not t.lstrip("+-").isdigit())
            raise InputError(f"{bad!r} is not an integer index", path) from None
    return validate_indices(values, n, path)


def write_indices(path: str | Path, indices) -> Path:
    """Write indices as int64 ``.npy``, as cryoDRGN ``.pkl``, or one per line (``.txt`` or any other suffix)."""
    path = Path(path)
    arr = np.asarray(indices, dtype=np.int64).reshape(-1)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)
    elif suffix == ".pkl":
        save_pickle(arr, path)
    else:
        atomic_write_text(path, "".join(f"{int(i)}\n" for i in arr))
    return path


def read_particle_indices(path: str | Path, offsets) -> np.ndarray:
    """Read the ``--ind`` of a tilt-series set: 0-based *particle* indices (as tomoDRGN's ``--ind-ptcls``).

    Parameters
    ----------
    path : path
        Index file (see :func:`read_indices`).
    offsets : array of int, shape (N + 1,)
        Images of particle ``p`` are ``offsets[p]:offsets[p + 1]`` (``TiltSeriesSet.offsets``).

    Raises
    ------
    InputError
        As :func:`read_indices`; a file whose values only fit the tilt images (a cryoDRGN tilt-series ``ind`` file,
        or tomoDRGN's ``--ind-imgs``, count images) is named as such, with what to give instead.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    n, m = len(offsets) - 1, int(offsets[-1])
    values = read_indices(path)
    if values.max() >= n and values.max() < m:
        owner = np.searchsorted(offsets, values, side="right") - 1
        touched = np.unique(owner)
        whole = len(values) == int((offsets[touched + 1] - offsets[touched]).sum())
        detail = f"; they list every image of {len(touched)} particles" if whole else ""
        raise InputError(f"holds per-image (tilt) indices up to {int(values.max())}, but --ind counts particles: this "
                         f"set has {n} particles in {m} tilt images{detail}", path,
                         "cryoDRGN tilt-series ind files and tomoDRGN --ind-imgs files count images; give the "
                         "0-based indices of the particles to keep, as tomoDRGN --ind-ptcls files hold (and "
                         "--ntilts to use fewer tilts per particle)")
    return validate_indices(values, n, path)
