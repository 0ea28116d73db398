"""cryoDRGN pickles (``pose.pkl``, ``ctf.pkl``, index ``.pkl``) through a restricted unpickler.

A pickle can run arbitrary code when loaded; :class:`RestrictedUnpickler` resolves only the few numpy names that
arrays, dtypes and scalars need (tuples, lists and dicts need none), and refuses everything else.

Formats (see ``docs/conventions.md``):
* ``pose.pkl``: ``(rot (N, 3, 3), trans (N, 2))`` or ``rot`` alone; ``rot`` are RELION matrices, ``trans`` the
  origin as a fraction of the box (``origin_px / D``).
* ``ctf.pkl``: ``(N, 9)`` float32 ``D, Apix, dfU, dfV, dfAngle (deg), kV, Cs (mm), w, phase shift (deg)``.
"""

from __future__ import annotations

import codecs
import importlib
import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cryoscape.errors import InputError
from cryoscape.metadata import CTFParams, Poses
from cryoscape.utils.atomic import atomic_path

__all__ = ["RestrictedUnpickler", "load_pickle", "save_pickle", "read_pose_pkl", "write_pose_pkl",
           "read_ctf_pkl", "write_ctf_pkl"]

# (module, name) pairs a numpy pickle may refer to, for numpy 1.x ("numpy.core") and 2.x ("numpy._core")
_ALLOWED = {
    ("multiarray", "_reconstruct"),
    ("multiarray", "scalar"),
    ("numeric", "_frombuffer"),
}
_ALLOWED_TOP = {("numpy", "ndarray"), ("numpy", "dtype")}
_OBJECT_FLAGS = 0x01 | 0x02 | 0x04  # numpy's NPY_ITEM_REFCOUNT, NPY_LIST_PICKLE, NPY_ITEM_IS_POINTER
_CODECS_ENCODE = ("_codecs", "encode")  # protocol-2 pickles encode bytes with it (a pure data transform)


def _core():
    try:
        return importlib.import_module("numpy._core")
    except ImportError:  # numpy < 2
        return importlib.import_module("numpy.core")


class RestrictedUnpickler(pickle._Unpickler):
    """Unpickler that resolves only numpy array/dtype/scalar reconstruction helpers; anything else is refused.

    It is the pure-Python unpickler so that the state given to each numpy dtype can be checked: a damaged or
    crafted pickle can otherwise flag a plain integer dtype as holding Python objects.
    """

    source: Path | None = None  # path named in the error
    dispatch: ClassVar[dict[int, Callable[..., Any]]] = dict(pickle._Unpickler.dispatch)

    def _load_build_checked(self):
        inst = self.stack[-2]  # BUILD: the object below its state
        pickle._Unpickler.load_build(self)
        if isinstance(inst, np.dtype) and (inst.hasobject or inst.flags & _OBJECT_FLAGS):
            raise InputError(f"refusing to load this pickle (a numpy data type {inst.str} flagged as holding "
                             "Python objects); only numeric arrays are accepted", self.source)

    dispatch[pickle.BUILD[0]] = _load_build_checked

    def find_class(self, module: str, name: str):
        """The allowed numpy and ``codecs.encode`` globals; any other is an :class:`InputError`."""
        if (module, name) in _ALLOWED_TOP:
            return getattr(np, name)
        if (module, name) == _CODECS_ENCODE:
            return codecs.encode
        for prefix in ("numpy.core.", "numpy._core."):
            if module.startswith(prefix) and (module[len(prefix):], name) in _ALLOWED:
                return getattr(importlib.import_module(f"{_core().__name__}.{module[len(prefix):]}"), name)
        raise InputError(f"refusing to load this pickle (pickle tries to import {module}.{name}); only numpy "
                         "arrays, tuples and lists are accepted", self.source)


def load_pickle(path: str | Path, what: str = "pickle"):
    """Load a pickle holding only numpy arrays/scalars, tuples, lists and dicts (restricted, safe)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} file not found", path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {what} file ({exc})", path) from None
    unpickler = RestrictedUnpickler(io.BytesIO(data))
    unpickler.source = path
    try:
        return unpickler.load()
    except InputError:
        raise
    except Exception as exc:  # truncated or foreign data
        raise InputError(f"not a readable {what} file ({type(exc).__name__}: {exc})", path) from None


def save_pickle(obj, path: str | Path) -> Path:
    """Pickle ``obj`` to ``path`` atomically (protocol 4, loadable by cryoDRGN)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            pickle.dump(obj, fh, protocol=4)
    return Path(path)


def read_pose_pkl(path: str | Path, D: int, pixel_size_angstrom: float) -> Poses:
    """Read a cryoDRGN ``pose.pkl`` into :class:`Poses`.

    Parameters
    ----------
    path : path
    D : int
        Box size in pixels of the images the translations refer to.
    pixel_size_angstrom : float

    Returns
    -------
    Poses
        ``rotations (N, 3, 3)``; ``shifts_angstrom = trans * D * pixel_size_angstrom`` (0 when absent).
    """
    path = Path(path)
    obj = load_pickle(path, "pose")
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        rot, trans = obj
    else:
        rot, trans = obj, None
    rot = np.asarray(rot, dtype=np.float64) if isinstance(rot, np.ndarray) and rot.dtype.kind in "fiu" else None
    if rot is None or rot.ndim != 3 or rot.shape[1:] != (3, 3):
        raise InputError("not a cryoDRGN pose file: expected (rotations (N, 3, 3), translations (N, 2))", path)
    n = rot.shape[0]
    if n and np.isfinite(rot).all():
        error = np.abs(rot @ rot.transpose(0, 2, 1) - np.eye(3)).max(axis=(1, 2))
        bad = np.flatnonzero((error > 1e-3) | (np.linalg.det(rot) < 0))
        if bad.size:
            raise InputError(f"{bad.size} of the {n} matrices are not rotations (e.g. particle {int(bad[0])}: "
                             "not orthonormal, or a reflection)", path)
    if trans is None:
        shifts = np.zeros((n, 2))
    else:
        if not isinstance(trans, np.ndarray) or trans.dtype.kind not in "fiu":
            raise InputError("translations are not a numeric (N, 2) array", path)
        trans = np.asarray(trans, dtype=np.float64)
        if trans.shape != (n, 2):
            raise InputError(f"translations have shape {trans.shape}, expected ({n}, 2)", path)
        if np.abs(trans).max(initial=0.0) > 1.0:
            raise InputError("translations larger than the box: cryoDRGN pose files store them as a fraction of "
                             "the box", path, "this looks like the old pixel format; divide by the box size")
        shifts = trans * float(D) * float(pixel_size_angstrom)
    try:
        return Poses(rot, shifts)
    except InputError as exc:
        raise InputError(exc.problem, path) from None


def write_pose_pkl(path: str | Path, poses: Poses, D: int, pixel_size_angstrom: float) -> Path:
    """Write :class:`Poses` as a cryoDRGN ``pose.pkl``: ``(rot float32 (N,3,3), trans float32 (N,2) / box)``."""
    trans = poses.shifts_angstrom / (float(D) * float(pixel_size_angstrom))
    return save_pickle((poses.rotations.astype(np.float32), trans.astype(np.float32)), path)


def read_ctf_pkl(path: str | Path) -> tuple[CTFParams, int, float]:
    """Read a cryoDRGN ``ctf.pkl`` ``(N, 9)``.

    Returns
    -------
    ctf : CTFParams
        B-factor 0, scale 1.
    D : int
        Box size in pixels the file was made for (column 0).
    pixel_size_angstrom : float
        Pixel size at that box size (column 1).
    """
    path = Path(path)
    arr = load_pickle(path, "CTF")
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.shape[1] != 9 or arr.dtype.kind not in "fiu":
        shape = getattr(arr, "shape", type(arr).__name__)
        raise InputError(f"not a cryoDRGN CTF file: expected an (N, 9) array, found {shape}", path)
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise InputError("CTF parameters contain NaN or Inf values", path)
    if len(arr) == 0:
        raise InputError("CTF file holds no particles", path)
    D, apix = arr[:, 0], arr[:, 1]
    if D[0] < 2 or apix[0] <= 0:
        raise InputError(f"box size {D[0]:g} and pixel size {apix[0]:g} A in columns 1-2 must be positive", path)
    if np.ptp(D) != 0 or not np.allclose(apix, apix[0], rtol=1e-4):
        raise InputError(f"CTF file mixes box sizes {np.unique(D).tolist()} or pixel sizes "
                         f"{np.unique(apix).round(4).tolist()}", path)
    ctf = CTFParams.create(arr[:, 2], arr[:, 3], arr[:, 4], arr[:, 5], arr[:, 6], arr[:, 7], arr[:, 8])
    return ctf, int(round(D[0])), float(apix[0])


def write_ctf_pkl(path: str | Path, ctf: CTFParams, D: int, pixel_size_angstrom: float) -> Path:
    """Write :class:`CTFParams` as a cryoDRGN ``ctf.pkl`` (float32 ``(N, 9)``; B-factor and scale are dropped)."""
    n = len(ctf)
    arr = np.stack([np.full(n, float(D)), np.full(n, float(pixel_size_angstrom)), ctf.defocus_u_angstrom,
                    ctf.defocus_v_angstrom, ctf.astigmatism_angle_deg, ctf.voltage_kv, ctf.cs_mm,
                    ctf.amplitude_contrast, ctf.phase_shift_deg], axis=1).astype(np.float32)
    return save_pickle(arr, path)
