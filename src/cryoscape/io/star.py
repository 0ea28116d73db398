"""RELION STAR particle files (3.0 single table; 3.1/4/5 with ``data_optics``), read and written via ``starfile``.

Reading converts to cryoscape's containers at this boundary: RELION Euler angles -> ``Poses.rotations`` (RELION's
matrix), ``rlnOriginX/YAngst`` (or 3.0 ``rlnOriginX/Y`` in pixels) -> ``Poses.shifts_angstrom``, CTF columns ->
``CTFParams``. Optics values (3.1+) are resolved per particle through ``rlnOpticsGroup``.
Image names ``"000123@path/stack.mrcs"`` are 1-based; cryoscape stores 0-based indices.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryoscape.errors import InputError
from cryoscape.io.imagestack import check_header_pixel_sizes, check_stacks, resolve_stack_paths
from cryoscape.metadata import DEFAULT_AMPLITUDE_CONTRAST, CTFOverrides, CTFParams, Poses
from cryoscape.utils.atomic import atomic_path

log = logging.getLogger(__name__)

__all__ = ["StarParticles", "read_star_particles", "write_star", "write_star_subset", "format_image_names",
           "read_star_blocks", "write_star_blocks", "resolve_relative", "star_numbers", "star_vectors",
           "euler_columns"]

_ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
_CTF_REQUIRED = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage", "rlnSphericalAberration",
                 "rlnAmplitudeContrast")
_CTF_OPTIONAL = (("rlnPhaseShift", 0.0), ("rlnCtfBfactor", 0.0), ("rlnCtfScalefactor", 1.0))
# columns the command line can set: column -> (CTFOverrides field, option)
_CTF_OVERRIDABLE = {"rlnVoltage": ("voltage_kv", "--kv"), "rlnSphericalAberration": ("cs_mm", "--cs"),
                    "rlnAmplitudeContrast": ("amplitude_contrast", "--amp-contrast")}
_CTF_UNITS = {"rlnVoltage": "accelerating voltage in kV, e.g. 300", "rlnSphericalAberration": "in mm, e.g. 2.7",
              "rlnAmplitudeContrast": "a fraction, e.g. 0.1"}
_CTF_DEFAULTED = ("rlnAmplitudeContrast",)  # RELION 3.0 files may lack it (0.1 is RELION's import default)


@dataclass
class StarParticles:
    """The particles of a STAR file and everything needed to write a subset back.

    Attributes
    ----------
    path : Path
        The STAR file.
    blocks : dict of str -> DataFrame or dict
        Every data block as read (kept for subset writing).
    particles_key, optics_key : str, str or None
        Keys of the particle table and the optics table in ``blocks``.
    version : str
        ``'3.1+'`` when an optics table is present, else ``'3.0'``.
    stack_paths : np.ndarray of object, shape (N,)
        Resolved stack path (str) of every particle.
    stack_indices : np.ndarray of int64, shape (N,)
        0-based index of every particle inside its stack.
    pixel_size_angstrom : np.ndarray of float64, shape (N,)
        Per-particle pixel size in Angstrom.
    image_size : int
        Box size ``D`` in pixels (0 when unknown: no optics value and images not checked).
    """

    path: Path
    blocks: dict
    particles_key: str
    optics_key: str | None
    version: str
    stack_paths: np.ndarray
    stack_indices: np.ndarray
    pixel_size_angstrom: np.ndarray
    image_size: int
    _group_rows: np.ndarray | None = field(default=None, repr=False)
    file_pixel_size_angstrom: np.ndarray | None = field(default=None, repr=False)  # the file's own, before --apix

    @property
    def table(self) -> pd.DataFrame:
        """The particle rows with all original columns."""
        return self.blocks[self.particles_key]

    @property
    def optics(self) -> pd.DataFrame | None:
        """The optics table (RELION 3.1+), else None."""
        return None if self.optics_key is None else self.blocks[self.optics_key]

    @property
    def image_refs(self) -> list[tuple[Path, int]]:
        """``(resolved stack path, 0-based index)`` of every particle."""
        return [(Path(p), int(i)) for p, i in zip(self.stack_paths, self.stack_indices, strict=True)]

    def __len__(self) -> int:
        return len(self.table)

    def has(self, name: str) -> bool:
        """Whether a column is present in the particle table or the optics table."""
        return name in self.table.columns or (self.optics is not None and name in self.optics.columns)

    def values(self, name: str, default: float | None = None) -> np.ndarray:
        """Per-particle float64 values ``(N,)`` of a column of the particle table, else of the optics table."""
        if name in self.table.columns:
            return _numeric(self.table[name], name, self.path)
        if self.optics is not None and name in self.optics.columns:
            return _numeric(self.optics[name], name, self.path)[self._group_rows]
        if default is None:
            raise InputError(f"missing column {name}", self.path)
        return np.full(len(self), float(default))

    def _require(self, names: Sequence[str], what: str) -> None:
        missing = [n for n in names if not self.has(n)]
        if missing:
            raise InputError(f"missing {what} column(s): {', '.join(missing)}", self.path)

    def has_poses(self) -> bool:
        """Whether any Euler angle column is present (:meth:`poses` then requires all three)."""
        return any(self.has(n) for n in _ANGLES)

    def has_ctf(self) -> bool:
        """Whether a defocus column is present (the other CTF columns are then required)."""
        return self.has("rlnDefocusU")

    def poses(self) -> Poses:
        """Rotations (RELION matrices from ``rlnAngleRot/Tilt/Psi``) and origins in Angstrom (0 when absent)."""
        from cryoscape.imaging.rotations import euler_relion_to_matrix

        self._require(_ANGLES, "pose")
        angles = np.stack([self.values(n) for n in _ANGLES], axis=1)
        rotations = euler_relion_to_matrix(angles)
        if self.has("rlnOriginXAngst") or self.has("rlnOriginYAngst"):
            self._require(("rlnOriginXAngst", "rlnOriginYAngst"), "origin")
            shifts = np.stack([self.values("rlnOriginXAngst"), self.values("rlnOriginYAngst")], axis=1)
        elif self.has("rlnOriginX") or self.has("rlnOriginY"):
            self._require(("rlnOriginX", "rlnOriginY"), "origin")
            px = np.stack([self.values("rlnOriginX"), self.values("rlnOriginY")], axis=1)
            shifts = px * self.pixel_size_angstrom[:, None]
        else:
            shifts = np.zeros((len(self), 2))
        try:
            return Poses(np.asarray(rotations, dtype=np.float64), shifts.astype(np.float64))
        except InputError as exc:
            raise InputError(exc.problem, self.path) from None

    def ctf(self, overrides: CTFOverrides | None = None) -> CTFParams:
        """CTF parameters per particle (phase shift 0, B-factor 0, scale 1 when absent).

        ``overrides`` (``--kv``, ``--cs``, ``--amp-contrast``, ``--ps``) replace the file's values and fill in
        missing columns. Without them a missing ``rlnAmplitudeContrast`` is 0.1 (RELION's import default, with a
        warning); a missing ``rlnVoltage`` or ``rlnSphericalAberration`` is an error naming the column and the option.
        """
        overrides = overrides or CTFOverrides()
        given = {name: getattr(overrides, field) for name, (field, _) in _CTF_OVERRIDABLE.items()}
        missing = [n for n in _CTF_REQUIRED if given.get(n) is None and n not in _CTF_DEFAULTED and not self.has(n)]
        if missing:
            options = [f"{_CTF_OVERRIDABLE[n][1]} ({_CTF_UNITS[n]})" for n in missing if n in _CTF_OVERRIDABLE]
            raise InputError(f"missing CTF column(s): {', '.join(missing)}", self.path,
                             f"pass {' and '.join(options)}" if len(options) == len(missing) else None)
        v = {}
        for n in _CTF_REQUIRED:
            if given.get(n) is not None:
                if self.has(n):
                    file_values = np.unique(self.values(n))
                    if not np.allclose(file_values, given[n]):
                        log.info("%s: using %s %g instead of the file's %s %s", self.path, _CTF_OVERRIDABLE[n][1],
                                 given[n], n, file_values.round(4).tolist()[:4])
                v[n] = given[n]
            elif self.has(n):
                v[n] = self.values(n)
            else:  # only rlnAmplitudeContrast gets here
                log.warning("%s: no %s column; using %g (RELION's import default; set it with --amp-contrast)",
                            self.path, n, DEFAULT_AMPLITUDE_CONTRAST)
                v[n] = DEFAULT_AMPLITUDE_CONTRAST
        o: dict[str, np.ndarray | float] = {n: self.values(n, d) for n, d in _CTF_OPTIONAL}
        if overrides.phase_shift_deg is not None:
            o["rlnPhaseShift"] = overrides.phase_shift_deg
        try:
            return CTFParams.create(v["rlnDefocusU"], v["rlnDefocusV"], v["rlnDefocusAngle"], v["rlnVoltage"],
                                    v["rlnSphericalAberration"], v["rlnAmplitudeContrast"], o["rlnPhaseShift"],
                                    o["rlnCtfBfactor"], o["rlnCtfScalefactor"])
        except InputError as exc:
            raise InputError(exc.problem, self.path) from None


def _numeric(col: pd.Series, name: str, path: Path) -> np.ndarray:
    try:
        return pd.to_numeric(col, errors="raise").to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        raise InputError(f"column {name} has non-numeric values", path) from None


def _read_blocks(path: Path) -> dict:
    if not path.exists():
        raise InputError("STAR file not found", path)
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises assorted parser errors on malformed text
        raise InputError(f"not a readable STAR file ({type(exc).__name__}: {exc})", path) from None
    if not blocks:
        raise InputError("not a STAR file (no data blocks)", path)
    for key, block in blocks.items():
        if isinstance(block, pd.DataFrame) and block.columns.duplicated().any():
            dup = sorted(set(block.columns[block.columns.duplicated()]))
            raise InputError(f"duplicate column(s) {', '.join(dup)} in block data_{key}", path)
    return blocks


_TILT_SERIES_HINT = ("tilt-series sets are read by `cryoscape train --model tomodrgn` (and `chimerax-placement`); "
                     "this command reads single-particle STAR files")


def tilt_series_kind(blocks: dict) -> str | None:
    """``'optimisation_set'`` (RELION 5 / WarpTools ``*_optimisation_set.star``), ``'particles'`` (the particle file
    of such a set: a 2-D tilt stack per particle, ``rlnTomoName``, image names without ``@``), else None.
    """
    for block in blocks.values():
        keys = block.keys() if isinstance(block, dict) else block.columns
        if "rlnTomoParticlesFile" in keys or "rlnTomoTomogramsFile" in keys:
            return "optimisation_set"
    for block in blocks.values():
        if isinstance(block, pd.DataFrame) and "rlnTomoName" in block.columns and (
                "rlnImageName" not in block.columns or not block["rlnImageName"].astype(str).str.contains("@").any()):
            return "particles"
    return None


def _refuse_tilt_series(blocks: dict, path: Path) -> None:
    kind = tilt_series_kind(blocks)
    if kind == "optimisation_set":
        raise InputError("is a tilt-series optimisation set (RELION 5 / WarpTools), not a particle STAR file", path,
                         _TILT_SERIES_HINT)
    if kind == "particles":
        raise InputError("is the particle file of a tilt-series set (RELION 5 / WarpTools: one 2-D tilt stack per "
                         "particle), not a single-particle STAR file", path,
                         _TILT_SERIES_HINT + "; give tomodrgn the *_optimisation_set.star")


def _find_particles(blocks: dict, path: Path) -> tuple[str, str | None]:
    tables = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    optics_key = "optics" if "optics" in tables else None
    candidates = [k for k, v in tables.items() if k != "optics" and "rlnImageName" in v.columns]
    if "particles" in candidates:
        return "particles", optics_key
    if not candidates:
        _refuse_tilt_series(blocks, path)
        raise InputError("missing column rlnImageName (no particle table found)", path)
    return max(candidates, key=lambda k: len(tables[k])), optics_key


def _optics_rows(table: pd.DataFrame, optics: pd.DataFrame, path: Path) -> np.ndarray:
    """For every particle, the row of its optics group in ``optics``."""
    if "rlnOpticsGroup" not in optics.columns:
        raise InputError("missing column rlnOpticsGroup in data_optics", path)
    groups = _numeric(optics["rlnOpticsGroup"], "rlnOpticsGroup", path).astype(np.int64)
    if "rlnOpticsGroup" not in table.columns:
        if len(groups) == 1:
            return np.zeros(len(table), dtype=np.int64)
        raise InputError("missing column rlnOpticsGroup in the particle table (data_optics has several groups)",
                         path)
    pg = _numeric(table["rlnOpticsGroup"], "rlnOpticsGroup", path).astype(np.int64)
    lookup = {int(g): r for r, g in enumerate(groups)}
    unknown = sorted(set(np.unique(pg).tolist()) - set(lookup))
    if unknown:
        raise InputError(f"particles refer to unknown optics group(s) {unknown}; data_optics defines "
                         f"{sorted(lookup)}", path)
    return np.vectorize(lookup.__getitem__, otypes=[np.int64])(pg) if len(pg) else np.zeros(0, np.int64)


def _parse_image_names(names: pd.Series, path: Path) -> tuple[np.ndarray, np.ndarray]:
    names = names.astype(str)
    parts = names.str.split("@", n=1, expand=True)
    if parts.shape[1] < 2 or parts[1].isna().any():
        bad = names[parts[1].isna()].iloc[0] if parts.shape[1] == 2 else names.iloc[0]
        raise InputError(f"rlnImageName {bad!r} is not of the form INDEX@STACK", path)
    idx = pd.to_numeric(parts[0], errors="coerce")
    if idx.isna().any() or (idx < 1).any():
        bad = names[idx.isna() | (idx < 1)].iloc[0]
        raise InputError(f"rlnImageName {bad!r} does not start with a positive 1-based image number", path)
    return parts[1].to_numpy(dtype=object), idx.to_numpy(dtype=np.int64) - 1


def _pixel_sizes(sp: StarParticles) -> np.ndarray | None:
    """Per-particle pixel size in A, as RELION reads it: ``rlnImagePixelSize`` (3.1+), else 3.0's
    ``rlnDetectorPixelSize`` (um) x 10^4 / ``rlnMagnification``; a lone ``rlnDetectorPixelSize`` (no magnification,
    as tomoDRGN writes 3.0 tables) is the pixel size in A.
    """
    if sp.has("rlnImagePixelSize"):
        return sp.values("rlnImagePixelSize")
    if sp.has("rlnDetectorPixelSize") and sp.has("rlnMagnification"):
        return sp.values("rlnDetectorPixelSize") * 1e4 / sp.values("rlnMagnification")
    if sp.has("rlnDetectorPixelSize") and not _has_magnification_like(sp):
        return sp.values("rlnDetectorPixelSize")
    return None


def _has_magnification_like(sp: StarParticles) -> bool:
    """A column named like a magnification (e.g. a misspelt one): the detector pixel size is then in um, not A."""
    tables = [sp.table] + ([sp.optics] if sp.optics is not None else [])
    return any(str(c).startswith("rlnMagnification") for t in tables for c in t.columns)


def read_star_particles(path: str | Path, datadir: str | Path | None = None, apix: float | None = None,
                        check_images: bool = True, allow_mixed_pixel_sizes: bool = False,
                        one_size_per_stack: bool = False) -> StarParticles:
    """Read the particles of a RELION STAR file.

    Parameters
    ----------
    path : path
        ``.star`` file (RELION 3.0, 3.1, 4 or 5 single-particle).
    datadir : path, optional
        Folder with the stacks: a name ``p`` is looked up as ``datadir/p`` then ``datadir/basename(p)``.
        Default: relative to the STAR file's folder (then its parents, for RELION project-relative paths).
    apix : float, optional
        Pixel size in Angstrom, overriding the file (needed for mixed pixel sizes or 3.0 files without one).
    check_images : bool
        Read the stack headers: stacks must exist, hold every referenced image, and agree with the pixel size
        (within 1%) and box size.
    allow_mixed_pixel_sizes : bool
        Accept particles with different pixel sizes (otherwise an error unless ``apix`` is given).
    one_size_per_stack : bool
        With ``allow_mixed_pixel_sizes``: refuse a stack whose particles claim different pixel sizes (unless ``apix``
        is given), as :func:`cryoscape.io.particles.load_particles` resamples each stack's images from one size.

    Raises
    ------
    InputError
        Missing or duplicate columns, unknown optics groups, malformed image names, missing stacks, indices past
        the end of a stack, mixed or missing pixel sizes, or a pixel size disagreeing with the MRC header.
    """
    path = Path(path)
    blocks = _read_blocks(path)
    pkey, okey = _find_particles(blocks, path)
    table = blocks[pkey].reset_index(drop=True)
    if len(table) == 0:
        raise InputError(f"holds no particles (the table data_{pkey} has no rows)", path)
    blocks[pkey] = table
    optics = blocks[okey] if okey else None
    rows = _optics_rows(table, optics, path) if optics is not None else None
    if tilt_series_kind({pkey: table}) == "particles":
        _refuse_tilt_series({pkey: table}, path)
    names, indices = _parse_image_names(table["rlnImageName"], path)
    stacks = resolve_stack_paths(names, path.parent, datadir)
    sp = StarParticles(path, blocks, pkey, okey, "3.1+" if okey else "3.0", stacks, indices,
                       np.zeros(len(table)), 0, rows)

    psize = _pixel_sizes(sp)
    sp.file_pixel_size_angstrom = psize
    if sp.has("rlnImageSize"):
        sizes = np.unique(sp.values("rlnImageSize").astype(np.int64))
        if len(sizes) > 1:
            raise InputError(f"particles have different box sizes {sizes.tolist()}", path)
        sp.image_size = int(sizes[0]) if len(sizes) else 0
    infos = check_stacks(stacks, indices, path) if check_images and len(table) else {}
    if infos:
        first = next(iter(infos.values()))
        if sp.image_size and sp.image_size != first.shape[-1]:
            raise InputError(f"rlnImageSize is {sp.image_size} but the images of {next(iter(infos))} are "
                             f"{first.shape[-1]} pixels wide", path)
        sp.image_size = int(first.shape[-1])

    if apix is not None:
        if psize is not None and not np.allclose(psize, apix, rtol=0.01):
            log.warning("%s: using --apix %.4f A instead of the pixel size(s) %s in the file", path, apix,
                        np.unique(psize.round(4)).tolist())
        sp.pixel_size_angstrom = np.full(len(table), float(apix))
        return sp
    if psize is None:
        header = [i.voxel_size_angstrom for i in infos.values() if i.voxel_size_angstrom > 0]
        if not header:
            raise InputError("no pixel size (no rlnImagePixelSize, rlnDetectorPixelSize/rlnMagnification, "
                             "nor one in the MRC headers)", path, "pass --apix")
        log.warning("%s: no pixel size in the STAR file; using %.4f A from the MRC header", path, header[0])
        psize = np.full(len(table), header[0])
    uniq = np.unique(psize)
    if len(uniq) > 1 and not np.allclose(uniq, uniq[0], rtol=1e-4) and not allow_mixed_pixel_sizes:
        raise InputError(f"particles have different pixel sizes {uniq.round(4).tolist()} A", path,
                         "pass --apix to use one pixel size (e.g. after rescaling the particles to a common size)")
    if len(uniq) > 1 and allow_mixed_pixel_sizes and one_size_per_stack:
        from cryoscape.io.rescale import mixed_within_a_stack

        mixed = mixed_within_a_stack(stacks, psize)
        if mixed is not None:
            raise InputError(f"particles of one stack ({mixed[0]}) have different pixel sizes {mixed[1]} A", path,
                             "a stack has one pixel size: correct the optics groups, or pass --apix with the pixel "
                             "size of the images")
    sp.pixel_size_angstrom = psize.astype(np.float64)
    if infos:
        check_header_pixel_sizes(infos, stacks, sp.pixel_size_angstrom, path)
    return sp


def format_image_names(stack_paths: Sequence[str | Path], indices) -> list[str]:
    """RELION image names ``"000123@stack.mrcs"`` from stack paths and 0-based indices."""
    return [f"{int(i) + 1:06d}@{p}" for p, i in zip(stack_paths, np.asarray(indices), strict=True)]


def _write_blocks(blocks: dict, out_path: Path, relion31: bool) -> Path:
    with atomic_path(out_path) as tmp:
        starfile.write(blocks, tmp, float_format="%.6f")
        text = tmp.read_text()
        if relion31:  # RELION 3.1+ marks each block with its table version
            text = "\n".join("# version 30001\n\n" + ln if ln.startswith("data_") else ln for ln in text.split("\n"))
        tmp.write_text(text)
    return out_path


def write_star(path: str | Path, image_names: Sequence[str], pixel_size_angstrom: float, image_size: int,
               poses: Poses | None = None, ctf: CTFParams | None = None, extra_columns: dict | None = None,
               relion30: bool = False, ctf_premultiplied: bool = False) -> Path:
    """Write new particle metadata as a RELION 3.1 STAR file (``data_optics`` + ``data_particles``).

    Parameters
    ----------
    image_names : sequence of str, length N
        ``"000001@stack.mrcs"`` names (see :func:`format_image_names`); paths as they should appear in the file.
    pixel_size_angstrom : float
        Pixel size of the images in Angstrom.
    image_size : int
        Box size ``D`` in pixels.
    poses, ctf : optional
        Written as ``rlnAngleRot/Tilt/Psi``, ``rlnOriginX/YAngst`` and the CTF columns. One optics group is made per
        distinct (voltage, Cs, amplitude contrast).
    extra_columns : dict of name -> array (N,), optional
        More particle columns (RELION names without the leading underscore).
    relion30 : bool
        Write one RELION 3.0 table instead (origins in pixels, pixel size as rlnDetectorPixelSize with
        rlnMagnification 10000).
    ctf_premultiplied : bool
        The images are CTF-premultiplied: ``rlnCtfDataAreCtfPremultiplied`` 1 (optics table; 3.0: a column).
    """
    from cryoscape.imaging.rotations import matrix_to_euler_relion

    n = len(image_names)
    cols: dict[str, object] = {"rlnImageName": list(image_names)}
    for name, obj in (("poses", poses), ("ctf", ctf)):
        if obj is not None and len(obj) != n:
            raise ValueError(f"{name} has {len(obj)} entries for {n} image names")
    if poses is not None:
        angles = matrix_to_euler_relion(poses.rotations)
        cols.update(rlnAngleRot=angles[:, 0], rlnAngleTilt=angles[:, 1], rlnAnglePsi=angles[:, 2])
        if relion30:
            px = poses.shifts_angstrom / pixel_size_angstrom
            cols.update(rlnOriginX=px[:, 0], rlnOriginY=px[:, 1])
        else:
            cols.update(rlnOriginXAngst=poses.shifts_angstrom[:, 0], rlnOriginYAngst=poses.shifts_angstrom[:, 1])
    optics_cols = {}
    if ctf is not None:
        cols.update(rlnDefocusU=ctf.defocus_u_angstrom, rlnDefocusV=ctf.defocus_v_angstrom,
                    rlnDefocusAngle=ctf.astigmatism_angle_deg, rlnPhaseShift=ctf.phase_shift_deg,
                    rlnCtfBfactor=ctf.bfactor_angstrom2, rlnCtfScalefactor=ctf.scale)
        optics_cols = {"rlnVoltage": ctf.voltage_kv, "rlnSphericalAberration": ctf.cs_mm,
                       "rlnAmplitudeContrast": ctf.amplitude_contrast}
    for name, values in (extra_columns or {}).items():
        values = np.asarray(values)
        if values.shape != (n,):
            raise ValueError(f"extra column {name} has shape {values.shape}, expected ({n},)")
        cols[name.lstrip("_")] = values
    if relion30:
        cols.update(optics_cols)
        cols.update(rlnDetectorPixelSize=np.full(n, float(pixel_size_angstrom)), rlnMagnification=np.full(n, 1e4))
        if ctf_premultiplied:
            cols["rlnCtfDataAreCtfPremultiplied"] = np.ones(n, dtype=np.int64)
        return _write_blocks({"": pd.DataFrame(cols)}, Path(path), relion31=False)

    if n == 0:
        raise ValueError("write_star needs at least one particle")
    keys = np.stack([np.asarray(v, dtype=np.float64) for v in optics_cols.values()], axis=1) if optics_cols \
        else np.zeros((n, 0))
    uniq, group = np.unique(keys, axis=0, return_inverse=True)
    optics = pd.DataFrame({"rlnOpticsGroupName": [f"opticsGroup{g + 1}" for g in range(len(uniq))],
                           "rlnOpticsGroup": np.arange(1, len(uniq) + 1)})
    for j, name in enumerate(optics_cols):
        optics[name] = uniq[:, j]
    optics["rlnImagePixelSize"] = float(pixel_size_angstrom)
    optics["rlnImageSize"] = int(image_size)
    optics["rlnImageDimensionality"] = 2
    optics["rlnCtfDataAreCtfPremultiplied"] = int(bool(ctf_premultiplied))
    cols["rlnOpticsGroup"] = np.asarray(group, dtype=np.int64).reshape(-1) + 1
    return _write_blocks({"optics": optics, "particles": pd.DataFrame(cols)}, Path(path), relion31=True)


def write_star_subset(src: StarParticles, indices, out_path: str | Path) -> Path:
    """Write the particles ``indices`` (0-based rows of ``src``, in that order) keeping every column and block.

    Image names are written unchanged (RELION resolves them relative to its project folder).
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < -len(src) or idx.max() >= len(src)):
        raise InputError(f"subset index out of range for {len(src)} particles", src.path)
    blocks = {k: v for k, v in src.blocks.items()}
    blocks[src.particles_key] = src.table.iloc[idx].reset_index(drop=True)
    return _write_blocks(blocks, Path(out_path), relion31=src.version == "3.1+")


# -------------------------------------------------------------- generic STAR tables (any program's files)
def read_star_blocks(path: str | Path) -> dict:
    """Every block of a STAR file as a DataFrame (key-value blocks become one row); bad files -> InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError("STAR file not found", path)
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises assorted parser errors
        raise InputError(f"not a readable STAR file ({type(exc).__name__}: {exc})", path) from None
    return {k: (pd.DataFrame([v]) if isinstance(v, dict) else v.reset_index(drop=True)) for k, v in blocks.items()}


def write_star_blocks(blocks: dict, path: Path) -> Path:
    """Write ``blocks`` (name -> DataFrame or dict) as one STAR file, atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp, float_format="%.6f")
    return path


def resolve_relative(name: str, base: Path, datadir=None) -> Path:
    """A path named in a STAR file: next to it (``base``), in its parent folders, or in the working folder."""
    return Path(str(resolve_stack_paths([str(name)], base, datadir)[0]))


def star_numbers(table: pd.DataFrame, name: str, path: Path, default: float | None = None) -> np.ndarray:
    """Float64 ``(rows,)`` of a column (``default`` when absent; InputError when absent without a default)."""
    if name not in table.columns:
        if default is None:
            raise InputError(f"missing column {name}", path)
        return np.full(len(table), float(default))
    try:
        return pd.to_numeric(table[name], errors="raise").to_numpy(np.float64)
    except (ValueError, TypeError):
        raise InputError(f"column {name} has non-numeric values", path) from None


def tomo_optics_rows(parts: pd.DataFrame, optics: pd.DataFrame | None, path: Path
                     ) -> tuple[pd.DataFrame | None, np.ndarray]:
    """For every particle of a tomography particle table, the row of its optics group in ``optics``.

    A missing ``rlnOpticsGroup`` column in ``parts`` means the first group. Returns ``(optics, rows)``, with
    ``optics`` ``None`` (and every row 0) when there is no optics table.

    Raises
    ------
    InputError
        A particle refers to an optics group that ``optics`` does not define.
    """
    if optics is None or not len(optics):
        return None, np.zeros(len(parts), np.int64)
    groups = star_numbers(optics, "rlnOpticsGroup", path, 1).astype(int)
    pg = star_numbers(parts, "rlnOpticsGroup", path, groups[0]).astype(int)
    lookup = {g: i for i, g in enumerate(groups)}
    if set(pg) - set(lookup):
        raise InputError(f"particles refer to unknown optics groups {sorted(set(pg) - set(lookup))}", path)
    return optics, np.array([lookup[g] for g in pg], dtype=np.int64)


def star_vectors(column: pd.Series, width: int | None, name: str, path: Path) -> list[np.ndarray]:
    """Parse ``"[a,b,c]"`` strings of a column into float arrays."""
    out = []
    for text in column.astype(str):
        try:
            v = np.asarray([float(x) for x in text.strip().strip("[]").split(",") if x.strip()], dtype=np.float64)
        except ValueError:
            raise InputError(f"column {name} has a value {text!r} that is not a list like [1,0,1]", path) from None
        if width is not None and v.size != width:
            raise InputError(f"column {name} has {v.size} values in {text!r}, expected {width}", path)
        out.append(v)
    return out


def euler_columns(table: pd.DataFrame, names, path: Path) -> np.ndarray:
    """RELION matrices ``(rows, 3, 3)`` from three Euler-angle columns (0 where a column is absent)."""
    from cryoscape.imaging.rotations import euler_relion_to_matrix

    angles = np.stack([star_numbers(table, n, path, 0.0) for n in names], axis=1)
    return euler_relion_to_matrix(angles) if len(table) else np.zeros((0, 3, 3))
