"""cryoSPARC ``.cs`` particle files: numpy structured arrays saved in ``.npy`` format.

Conversions at this boundary: ``alignments3D/pose`` (axis-angle, radians) -> RELION matrices via
``cryosparc_pose_to_matrix``; ``alignments3D/shift`` (pixels of ``alignments3D/psize_A``, same sign as RELION's
origin) -> Angstrom; ``ctf/df_angle_rad`` and ``ctf/phase_shift_rad`` -> degrees. Paths in ``blob/path`` lose a
leading ``>`` (cryoSPARC's mark for imported files) and are resolved relative to the ``.cs`` file's folder, its
parent (the cryoSPARC project folder) or ``datadir``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cryoscape.errors import InputError
from cryoscape.io.imagestack import check_header_pixel_sizes, check_stacks, resolve_stack_paths
from cryoscape.metadata import DEFAULT_AMPLITUDE_CONTRAST, CTFOverrides, CTFParams, Poses
from cryoscape.utils.atomic import atomic_path

log = logging.getLogger(__name__)

__all__ = ["CSParticles", "read_cs", "write_cs", "write_cs_subset"]

_BLOB = ("blob/path", "blob/idx", "blob/shape", "blob/psize_A")
_CTF = ("ctf/df1_A", "ctf/df2_A", "ctf/df_angle_rad", "ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast")


@dataclass
class CSParticles:
    """The particles of a cryoSPARC ``.cs`` file.

    Attributes
    ----------
    path : Path
    array : np.ndarray
        The structured array, all fields as read.
    stack_paths : np.ndarray of object (N,)
        Resolved stack path of every particle.
    stack_indices : np.ndarray of int64 (N,)
        0-based index in the stack (``blob/idx``).
    pixel_size_angstrom : np.ndarray of float64 (N,)
        ``blob/psize_A`` (or the ``apix`` given to :func:`read_cs`).
    image_size : int
        Box size from ``blob/shape``.
    alignments : str
        The alignment field prefix used for poses (``alignments3D``).
    file_pixel_size_angstrom : np.ndarray of float64 (N,)
        ``blob/psize_A`` as in the file (before ``apix``).
    """

    path: Path
    array: np.ndarray
    stack_paths: np.ndarray
    stack_indices: np.ndarray
    pixel_size_angstrom: np.ndarray
    image_size: int
    alignments: str = "alignments3D"
    file_pixel_size_angstrom: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.array.shape[0])

    @property
    def image_refs(self) -> list[tuple[Path, int]]:
        """``(resolved stack path, 0-based index)`` of every particle."""
        return [(Path(p), int(i)) for p, i in zip(self.stack_paths, self.stack_indices, strict=True)]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self.array.dtype.names or ())

    def _require(self, names: Sequence[str], what: str) -> None:
        missing = [n for n in names if n not in self.fields]
        if missing:
            raise InputError(f"missing {what} field(s): {', '.join(missing)}", self.path)

    @property
    def alignment_sets(self) -> list[str]:
        """The alignment field prefixes with poses in this file (``alignments3D``, ``alignments_class_0``, ...)."""
        return sorted({n.rsplit("/", 1)[0] for n in self.fields
                       if n.endswith("/pose") and n.startswith("alignments") and not n.startswith("alignments2D")})

    def has_poses(self) -> bool:
        """Whether the chosen alignment set has poses; also True when the default ``alignments3D`` is missing but
        other 3-D sets exist (:meth:`poses` then names them).
        """
        if f"{self.alignments}/pose" in self.fields or self.alignments != "alignments3D":
            return True  # a set chosen by name must exist: poses() says which ones do
        return bool(self.alignment_sets)

    def has_ctf(self) -> bool:
        """Whether the file has CTF parameters (a ``ctf/df1_A`` field)."""
        return "ctf/df1_A" in self.fields

    def _f(self, name: str) -> np.ndarray:
        values = self.array[name]
        if values.dtype.base.kind not in "fiub":
            raise InputError(f"field {name} holds {values.dtype} values, not numbers", self.path)
        return np.asarray(values, dtype=np.float64)

    def poses(self) -> Poses:
        """Rotations ``A = expmap(pose)^T`` and shifts (pixels -> Angstrom) from the alignment fields."""
        from cryoscape.imaging.rotations import cryosparc_pose_to_matrix

        a = self.alignments
        others = [s for s in self.alignment_sets if s != a]
        if f"{a}/pose" not in self.fields and (others or a != "alignments3D"):
            if not others:
                raise InputError(f"has no {a} poses, nor any other alignment set", self.path)
            raise InputError(f"has no {a} poses; its alignment sets are {', '.join(others)} (ab-initio and "
                             "heterogeneous refinement write one per class)", self.path,
                             f"choose one with --cs-alignments {others[0]}")
        self._require((f"{a}/pose", f"{a}/shift"), "pose")
        pose, shift = self._f(f"{a}/pose"), self._f(f"{a}/shift")
        if pose.shape != (len(self), 3) or shift.shape != (len(self), 2):
            raise InputError(f"{a}/pose has shape {pose.shape} and {a}/shift {shift.shape}; expected "
                             f"({len(self)}, 3) and ({len(self)}, 2)", self.path)
        psize = self.pixel_size_angstrom
        if f"{a}/psize_A" in self.fields:
            aps = self._f(f"{a}/psize_A")
            psize = np.where(aps > 0, aps, psize)
        try:
            return Poses(np.asarray(cryosparc_pose_to_matrix(pose), dtype=np.float64), shift * psize[:, None])
        except InputError as exc:
            raise InputError(exc.problem, self.path) from None

    def ctf(self, overrides: CTFOverrides | None = None) -> CTFParams:
        """CTF parameters (angles converted to degrees; B-factor 0 and scale 1 when absent).

        ``overrides`` (``--kv``, ``--cs``, ``--amp-contrast``, ``--ps``) replace the file's values and fill in
        missing fields; a missing ``ctf/amp_contrast`` is otherwise 0.1 (with a warning).
        """
        overrides = overrides or CTFOverrides()
        f = self.fields
        given = {"ctf/accel_kv": overrides.voltage_kv, "ctf/cs_mm": overrides.cs_mm,
                 "ctf/amp_contrast": overrides.amplitude_contrast}
        missing = [n for n in _CTF if n not in f and given.get(n) is None and n != "ctf/amp_contrast"]
        if missing:
            options = {"ctf/accel_kv": "--kv", "ctf/cs_mm": "--cs"}
            hint = f"pass {' and '.join(options[n] for n in missing)}" if all(n in options for n in missing) \
                else None
            raise InputError(f"missing CTF field(s): {', '.join(missing)}", self.path, hint)
        values: dict[str, Any] = {}
        for name in ("ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast"):
            if given[name] is not None:
                values[name] = given[name]
            elif name in f:
                values[name] = self._f(name)
            else:
                log.warning("%s: no %s field; using %g (set it with --amp-contrast)", self.path, name,
                            DEFAULT_AMPLITUDE_CONTRAST)
                values[name] = DEFAULT_AMPLITUDE_CONTRAST
        phase = np.degrees(self._f("ctf/phase_shift_rad")) if "ctf/phase_shift_rad" in f else 0.0
        if overrides.phase_shift_deg is not None:
            phase = overrides.phase_shift_deg
        bfac = self._f("ctf/bfactor") if "ctf/bfactor" in f else 0.0
        scale = self._f("ctf/scale") if "ctf/scale" in f else 1.0
        try:
            return CTFParams.create(self._f("ctf/df1_A"), self._f("ctf/df2_A"),
                                    np.degrees(self._f("ctf/df_angle_rad")), values["ctf/accel_kv"],
                                    values["ctf/cs_mm"], values["ctf/amp_contrast"], phase, bfac, scale)
        except InputError as exc:
            raise InputError(exc.problem, self.path) from None


def _load(path: Path) -> np.ndarray:
    if not path.exists():
        raise InputError("cryoSPARC .cs file not found", path)
    try:
        with open(path, "rb") as fh:
            array = np.load(fh, allow_pickle=False)
    except (OSError, EOFError) as exc:
        raise InputError(f"cannot read the .cs file ({exc})", path) from None
    except Exception as exc:  # a damaged .npy header raises ValueError, SyntaxError, tokenize errors...
        raise InputError(f"not a readable cryoSPARC .cs file ({type(exc).__name__}: {exc})", path,
                         "export the particles from cryoSPARC as a .cs file") from None
    if not isinstance(array, np.ndarray) or array.dtype.names is None or array.ndim != 1:
        raise InputError("not a cryoSPARC .cs file (expected a 1-D structured array)", path)
    if len(array) == 0:
        raise InputError("holds no particles", path)
    return array


def read_cs(path: str | Path, datadir: str | Path | None = None, apix: float | None = None,
            check_images: bool = True, alignments: str = "alignments3D",
            allow_mixed_pixel_sizes: bool = False, one_size_per_stack: bool = False) -> CSParticles:
    """Read a cryoSPARC particle ``.cs`` file.

    Parameters
    ----------
    path : path
    datadir : path, optional
        Folder with the stacks (``datadir/path`` then ``datadir/basename``).
    apix : float, optional
        Pixel size in Angstrom overriding ``blob/psize_A``.
    check_images : bool
        Check that the stacks exist, hold every ``blob/idx`` and agree with the pixel size.
    alignments : str
        Field prefix for poses (``alignments3D``; ``alignments_class_N`` for ab-initio and heterogeneous
        refinement jobs).
    allow_mixed_pixel_sizes : bool
        Accept particles with different ``blob/psize_A`` (otherwise an error unless ``apix`` is given).
    one_size_per_stack : bool
        With ``allow_mixed_pixel_sizes``: refuse a stack whose particles claim different pixel sizes (unless ``apix``
        is given), as :func:`cryoscape.io.particles.load_particles` resamples each stack's images from one size.

    Raises
    ------
    InputError
        Not a structured array, missing ``blob/*`` fields (named), mixed box or pixel sizes, missing stacks,
        indices past the end of a stack, pixel size disagreeing with the MRC header.
    """
    path = Path(path)
    array = _load(path)
    missing = [n for n in _BLOB if n not in (array.dtype.names or ())]
    if missing:
        raise InputError(f"missing blob field(s): {', '.join(missing)}", path)
    for name in ("blob/idx", "blob/shape", "blob/psize_A"):
        if array.dtype[name].base.kind not in "iuf":
            raise InputError(f"field {name} holds {array.dtype[name]} values, not numbers", path)
    names = np.char.decode(np.asarray(array["blob/path"]).astype(bytes), "utf-8", "replace") \
        if array.dtype["blob/path"].kind == "S" else np.asarray(array["blob/path"]).astype(str)
    names = np.char.lstrip(names.astype(str), ">").astype(object)
    indices = np.asarray(array["blob/idx"], dtype=np.int64)
    stacks = resolve_stack_paths(names, path.parent, datadir)
    shape = np.asarray(array["blob/shape"]).reshape(len(array), -1)
    sizes = np.unique(shape, axis=0)
    if len(sizes) > 1:
        raise InputError(f"particles have different box sizes {sizes.tolist()}", path)
    image_size = int(sizes[0][-1]) if len(sizes) else 0
    file_psize = np.asarray(array["blob/psize_A"], dtype=np.float64)
    if apix is not None:
        psize = np.full(len(array), float(apix))
    else:
        psize = file_psize
        uniq = np.unique(psize)
        if len(uniq) > 1 and not np.allclose(uniq, uniq[0], rtol=1e-4) and not allow_mixed_pixel_sizes:
            raise InputError(f"particles have different pixel sizes {uniq.round(4).tolist()} A", path,
                             "pass --apix to use one pixel size")
        if len(uniq) > 1 and allow_mixed_pixel_sizes and one_size_per_stack:
            from cryoscape.io.rescale import mixed_within_a_stack

            mixed = mixed_within_a_stack(stacks, psize)
            if mixed is not None:
                raise InputError(f"particles of one stack ({mixed[0]}) have different pixel sizes {mixed[1]} A",
                                 path, "a stack has one pixel size: correct blob/psize_A, or pass --apix with the "
                                 "pixel size of the images")
    if check_images and len(array):
        infos = check_stacks(stacks, indices, path)
        first = next(iter(infos.values()))
        if image_size and first.shape[-1] != image_size:
            raise InputError(f"blob/shape says {image_size} pixels but the images of {next(iter(infos))} are "
                             f"{first.shape[-1]} pixels wide", path)
        image_size = int(first.shape[-1])
        if apix is None:
            check_header_pixel_sizes(infos, stacks, psize, path)
    return CSParticles(path, array, stacks, indices, psize, image_size, alignments, file_psize)


def _save(array: np.ndarray, out_path: Path) -> Path:
    with atomic_path(out_path) as tmp:
        with open(tmp, "wb") as fh:  # a file object: np.save would otherwise append .npy
            np.save(fh, array, allow_pickle=False)
    return out_path


def write_cs(path: str | Path, stack_paths: Sequence[str | Path], indices, pixel_size_angstrom: float,
             image_size: int, poses: Poses | None = None, ctf: CTFParams | None = None, seed: int = 0) -> Path:
    """Write new particles as a cryoSPARC ``.cs`` file (fields as cryoSPARC names them).

    Parameters
    ----------
    stack_paths, indices : sequences of length N
        Stack path (as it should appear in ``blob/path``) and 0-based index of every particle.
    pixel_size_angstrom : float
    image_size : int
        Box size ``D`` in pixels.
    poses, ctf : optional
        Written to ``alignments3D/*`` (shift in pixels) and ``ctf/*`` (angles in radians).
    seed : int
        Seed of the random 64-bit particle ``uid`` values.
    """
    from cryoscape.imaging.rotations import matrix_to_cryosparc_pose

    n = len(stack_paths)
    names = [str(p).encode() for p in stack_paths]
    width = max([len(b) for b in names] + [1])
    dtype = [("uid", "<u8"), ("blob/path", f"S{width}"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
             ("blob/psize_A", "<f4"), ("blob/sign", "<f4")]
    if ctf is not None:
        dtype += [(n_, "<f4") for n_ in ("ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast", "ctf/df1_A", "ctf/df2_A",
                                         "ctf/df_angle_rad", "ctf/phase_shift_rad", "ctf/scale", "ctf/bfactor")]
        dtype.insert(6, ("ctf/type", "S8"))
    if poses is not None:
        dtype += [("alignments3D/split", "<u4"), ("alignments3D/shift", "<f4", (2,)),
                  ("alignments3D/pose", "<f4", (3,)), ("alignments3D/psize_A", "<f4")]
    out = np.zeros(n, dtype=dtype)
    out["uid"] = np.random.default_rng(seed).integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64)
    out["blob/path"] = names
    out["blob/idx"] = np.asarray(indices, dtype=np.int64)
    out["blob/shape"] = int(image_size)
    out["blob/psize_A"] = float(pixel_size_angstrom)
    out["blob/sign"] = 1.0
    if ctf is not None:
        if len(ctf) != n:
            raise ValueError(f"ctf has {len(ctf)} entries for {n} particles")
        out["ctf/type"] = b"spline"
        out["ctf/accel_kv"], out["ctf/cs_mm"] = ctf.voltage_kv, ctf.cs_mm
        out["ctf/amp_contrast"] = ctf.amplitude_contrast
        out["ctf/df1_A"], out["ctf/df2_A"] = ctf.defocus_u_angstrom, ctf.defocus_v_angstrom
        out["ctf/df_angle_rad"] = np.radians(ctf.astigmatism_angle_deg)
        out["ctf/phase_shift_rad"] = np.radians(ctf.phase_shift_deg)
        out["ctf/scale"], out["ctf/bfactor"] = ctf.scale, ctf.bfactor_angstrom2
    if poses is not None:
        if len(poses) != n:
            raise ValueError(f"poses have {len(poses)} entries for {n} particles")
        out["alignments3D/pose"] = matrix_to_cryosparc_pose(poses.rotations)
        out["alignments3D/shift"] = poses.shifts_angstrom / float(pixel_size_angstrom)
        out["alignments3D/psize_A"] = float(pixel_size_angstrom)
        out["alignments3D/split"] = np.arange(n) % 2
    return _save(out, Path(path))


def write_cs_subset(src: CSParticles, indices, out_path: str | Path) -> Path:
    """Write the rows ``indices`` (0-based, in that order) of ``src`` keeping every field."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < -len(src) or idx.max() >= len(src)):
        raise InputError(f"subset index out of range for {len(src)} particles", src.path)
    return _save(src.array[idx], Path(out_path))
