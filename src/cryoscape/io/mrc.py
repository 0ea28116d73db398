"""MRC maps and image stacks (MRC2014 via ``mrcfile``): validated reading, memory-mapped stacks, atomic writing.

Arrays follow MRC order: volumes ``(z, y, x)``, stacks ``(n, y, x)``. Voxel size and origin are in Angstrom and are
written to the header (``cella = voxel_size * shape``, ``origin``), so maps open at the right scale in ChimeraX.
Supported data modes for reading: 0 (int8), 1 (int16), 2 (float32), 6 (uint16), 12 (float16); everything is
returned as float32.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import mrcfile.utils
import numpy as np

from cryoscape.errors import InputError
from cryoscape.utils.atomic import atomic_path

SUPPORTED_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}
_HEADER_BYTES = 1024

__all__ = [
    "MRCInfo",
    "read_header",
    "read_mrc",
    "write_mrc",
    "open_stack",
    "open_stack_for_writing",
    "validate_box",
]


@dataclass(frozen=True)
class MRCInfo:
    """What the header of an MRC file says.

    Attributes
    ----------
    voxel_size_angstrom : float
        Voxel (pixel) size along x in Angstrom; 0.0 when the header leaves it unset.
    origin_angstrom : tuple of float
        ``(x, y, z)`` origin in Angstrom (header ``origin`` fields).
    shape : tuple of int
        ``(nz, ny, nx)``: number of sections (images of a stack, or z slices of a volume), rows, columns.
    mode : int
        MRC data mode.
    is_stack : bool
        True when the header marks the file as an image stack (space group 0) or it holds a single image.
    """

    voxel_size_angstrom: float
    origin_angstrom: tuple
    shape: tuple = (0, 0, 0)
    mode: int = 2
    is_stack: bool = True

    @property
    def n_images(self) -> int:
        """Number of sections (``nz``)."""
        return int(self.shape[0])


def validate_box(D_y: int, D_x: int, path: str | Path | None = None) -> int:
    """Check that images are square with an even side and return that side ``D`` (pixels).

    Raises
    ------
    InputError
        When ``D_y != D_x`` or the side is odd, naming ``path``.
    """
    if D_y != D_x:
        raise InputError(f"images are {D_x} x {D_y} pixels, but square images are required", path,
                         "re-extract or crop the particles to a square box")
    if D_x % 2 != 0 or D_x < 2:
        raise InputError(f"images are {D_x} x {D_x} pixels, but an even box size is required", path,
                         "crop or pad the particles to an even box, e.g. with `cryoscape downsample`")
    return int(D_x)


def _stat_key(path: Path) -> tuple:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror or exc})", path) from None
    if not path.is_file():
        raise InputError("is not a file", path)
    return str(path.resolve()), st.st_mtime_ns, st.st_size


def read_header(path: str | Path) -> MRCInfo:
    """Read and validate the header of an MRC file (cached per file version).

    Raises
    ------
    InputError
        One line naming the file when it is missing, not an MRC file, truncated (shorter than the header says),
        or stored in a data mode cryoscape does not read.
    """
    path = Path(path)
    return _read_header_cached(*_stat_key(path), display=str(path))[0]


@functools.lru_cache(maxsize=4096)
def _read_header_cached(resolved: str, mtime_ns: int, size: int, display: str) -> tuple[MRCInfo, np.dtype, int]:
    """Parse one header: returns (info, data dtype with byte order, data offset in bytes)."""
    path = Path(display)
    if size < _HEADER_BYTES:
        raise InputError(f"not an MRC file (only {size} bytes, an MRC header alone is {_HEADER_BYTES})", path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with mrcfile.open(resolved, mode="r", permissive=True, header_only=True) as mrc:
                header = mrc.header.copy()
                voxel = mrc.voxel_size
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"not a readable MRC file ({exc})", path) from None
    messages = [str(w.message) for w in caught]
    no_map_id = any("Map ID string not found" in m for m in messages)
    mode = int(header.mode)
    nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
    if no_map_id and (mode not in SUPPORTED_MODES or min(nx, ny, nz) <= 0 or max(nx, ny) > 65536):
        raise InputError("not an MRC file (no 'MAP ' identifier and no sensible header)", path)
    if min(nx, ny, nz) <= 0:
        raise InputError(f"invalid MRC header: dimensions {nx} x {ny} x {nz}", path)
    if mode not in SUPPORTED_MODES:
        known = ", ".join(f"{k} ({v})" for k, v in SUPPORTED_MODES.items())
        raise InputError(f"unsupported MRC data mode {mode}", path, f"supported modes: {known}; convert to float32")
    try:
        dtype = mrcfile.utils.data_dtype_from_header(header)
    except ValueError as exc:
        raise InputError(f"unsupported MRC header ({exc})", path) from None
    offset = _HEADER_BYTES + int(header.nsymbt)
    expected = offset + nx * ny * nz * dtype.itemsize
    if size < expected:
        raise InputError(
            f"truncated MRC file: the header says {nz} sections of {nx} x {ny} pixels ({expected} bytes) "
            f"but the file has only {size} bytes", path, "the file was probably not copied completely")
    if size > expected:
        raise InputError(
            f"the header does not describe this file: {nz} sections of {nx} x {ny} pixels in mode {mode} make "
            f"{expected} bytes but the file has {size}", path,
            "the header's size or data mode is wrong; rewrite the file with a correct header")
    origin = (float(header.origin.x), float(header.origin.y), float(header.origin.z))
    is_stack = nz == 1 or int(header.ispg) == 0
    info = MRCInfo(float(voxel.x), origin, (nz, ny, nx), mode, is_stack)
    return info, dtype, offset


def _memmap(path: Path) -> tuple[np.memmap, MRCInfo]:
    info, dtype, offset = _read_header_cached(*_stat_key(path), display=str(path))
    try:
        data = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=info.shape)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot memory-map the MRC data ({exc})", path) from None
    return data, info


def read_mrc(path: str | Path) -> tuple[np.ndarray, MRCInfo]:
    """Read a whole MRC file into memory.

    Returns
    -------
    data : np.ndarray
        float32, ``(nz, ny, nx)`` for volumes and stacks, ``(ny, nx)`` for a single image (nz = 1).
    info : MRCInfo
        Voxel size and origin in Angstrom, shape, mode.
    """
    path = Path(path)
    data, info = _memmap(path)
    out = np.array(data, dtype=np.float32)
    del data
    if info.shape[0] == 1 and not path.suffix.lower() == ".mrcs":
        out = out[0]
    return out, info


def open_stack(path: str | Path, lazy: bool = True) -> tuple[np.ndarray, MRCInfo]:
    """Open an image stack as ``(n, D_y, D_x)`` without loading it (``lazy``) or loaded as float32.

    With ``lazy=True`` the array is a read-only ``np.memmap`` in the file's own dtype (convert slices with
    ``np.asarray(x, dtype=np.float32)``); only the pages that are read are brought into memory.
    A single 2-D image is returned as a stack of one.
    """
    path = Path(path)
    data, info = _memmap(path)
    if lazy:
        return data, info
    return np.array(data, dtype=np.float32), info


def _set_header(mrc, voxel_size_angstrom: float, origin_angstrom) -> None:
    mrc.voxel_size = float(voxel_size_angstrom)
    ox, oy, oz = (0.0, 0.0, 0.0) if origin_angstrom is None else tuple(float(v) for v in origin_angstrom)
    mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z = ox, oy, oz
    mrc.header.nxstart = mrc.header.nystart = mrc.header.nzstart = 0


def write_mrc(
    path: str | Path,
    array: np.ndarray,
    voxel_size_angstrom: float,
    origin_angstrom: tuple | None = None,
    is_stack: bool | None = None,
) -> Path:
    """Write a 2-D image, an image stack or a volume as float32 MRC, atomically.

    Parameters
    ----------
    path : path
        Output file; ``.mrcs`` marks an image stack.
    array : np.ndarray
        ``(ny, nx)``, ``(n, ny, nx)`` or ``(nz, ny, nx)``; converted to float32.
    voxel_size_angstrom : float
        Voxel (pixel) size in Angstrom, stored in the header.
    origin_angstrom : tuple of 3 floats, optional
        ``(x, y, z)`` origin in Angstrom (default 0).
    is_stack : bool, optional
        Mark a 3-D array as an image stack (space group 0) rather than a volume (space group 1).
        Default: True for a ``.mrcs`` suffix, False otherwise.
    """
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim not in (2, 3):
        raise ValueError(f"write_mrc needs a 2-D or 3-D array, got shape {array.shape}")
    if is_stack is None:
        is_stack = path.suffix.lower() == ".mrcs"
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(array)
            if array.ndim == 3:
                if is_stack:
                    mrc.set_image_stack()
                else:
                    mrc.set_volume()
            _set_header(mrc, voxel_size_angstrom, origin_angstrom)
    return path


@contextlib.contextmanager
def open_stack_for_writing(path: str | Path, n_images: int, D: int, pixel_size_angstrom: float) -> Iterator[np.ndarray]:
    """Create a float32 ``.mrcs`` stack of ``(n_images, D, D)`` and yield a writable memory map of its data.

    Fill the array in chunks (bounded memory); on leaving the block the header statistics are updated and the
    file is renamed into place. On error nothing is left behind.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        mrc = mrcfile.new_mmap(tmp, shape=(int(n_images), int(D), int(D)), mrc_mode=2, overwrite=True)
        try:
            mrc.set_image_stack()
            _set_header(mrc, pixel_size_angstrom, None)
            yield mrc.data
            mrc.update_header_stats()
        finally:
            mrc.close()
