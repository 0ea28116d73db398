"""RELION 5 / WarpTools optimisation sets of 2-D tilt-image stacks: the tables parsed once
(:func:`parse_optimisation_set`, also used by ``analysis.tomogram``), the particle set read from them
(:func:`read_optimisation_set`), and writers (a new set, a subset). Geometry: ``cryoscape.io.tomo_geometry``;
conventions: ``cryoscape.io.tilt_series``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cryoscape.errors import InputError
from cryoscape.io.ctf_flags import PREMULTIPLIED_COLUMN, ctf_premultiplied_from_values
from cryoscape.io.imagestack import ImageStack
from cryoscape.io.star import (
    euler_columns,
    read_star_blocks,
    resolve_relative,
    star_numbers,
    star_vectors,
    tomo_optics_rows,
    write_star_blocks,
)
from cryoscape.io.tilt_set import TiltSeriesSet
from cryoscape.io.tomo_geometry import depth_defocus_sign, particle_positions
from cryoscape.metadata import DEFAULT_AMPLITUDE_CONTRAST, CTFOverrides, CTFParams

log = logging.getLogger("cryoscape.io.tilt_series")

__all__ = ["OptimisationSetTables", "OptimisationSetSource", "TomogramGeometry", "parse_optimisation_set",
           "particle_frames", "read_optimisation_set", "write_optimisation_set", "write_optimisation_subset"]


@dataclass
class OptimisationSetTables:
    """The tables of an optimisation set, parsed once: the set file's blocks, the particles file's and the
    tomograms file's (kept with a particle set for writing subsets).
    """

    path: Path
    blocks: dict
    particles_path: Path
    particle_blocks: dict
    tomograms_path: Path
    tomogram_blocks: dict = field(default_factory=dict)

    @property
    def particles(self) -> pd.DataFrame:
        return self.particle_blocks["particles"]

    @property
    def optics(self) -> pd.DataFrame | None:
        return self.particle_blocks.get("optics")

    @property
    def tomograms(self) -> pd.DataFrame:
        """The ``data_global`` table (one row per tomogram)."""
        return self.tomogram_blocks["global"]


OptimisationSetSource = OptimisationSetTables  # the name a particle set's ``source`` had


def parse_optimisation_set(path: str | Path) -> OptimisationSetTables:
    """Read the optimisation set ``path`` and the particles and tomograms files it names (relative paths are
    looked up next to it, then in its parent folders, then in the working folder).

    Raises
    ------
    InputError
        Not an optimisation set, a named file missing or unreadable, no ``data_particles`` / ``data_global`` table.
    """
    path = Path(path)
    blocks = read_star_blocks(path)
    kv = next((b.iloc[0] for b in blocks.values()
               if {"rlnTomoParticlesFile", "rlnTomoTomogramsFile"} <= set(b.columns)), None)
    if kv is None:
        raise InputError("not an optimisation set (no rlnTomoParticlesFile/rlnTomoTomogramsFile)", path)
    ppath = resolve_relative(kv["rlnTomoParticlesFile"], path.parent)
    tpath = resolve_relative(kv["rlnTomoTomogramsFile"], path.parent)
    pblocks, tblocks = read_star_blocks(ppath), read_star_blocks(tpath)
    if "particles" not in pblocks or "global" not in tblocks:
        raise InputError("missing data_particles / data_global table", ppath if "particles" not in pblocks else tpath)
    return OptimisationSetTables(path, blocks, ppath, pblocks, tpath, tblocks)


def particle_frames(tables: OptimisationSetTables) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A_subtomogram, A_particle, origin_tomogram)`` of every particle: the subtomogram matrices ``(N, 3, 3)``,
    the particle matrices in the tomogram frame ``A_subtomogram @ A_angles`` ``(N, 3, 3)`` and the origin shift
    in the tomogram frame ``A_subtomogram @ origin`` ``(N, 3)`` (Angstrom), as RELION's ``ParticleSet`` has them.
    """
    parts, ppath = tables.particles, tables.particles_path
    A_angles = euler_columns(parts, ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"), ppath)
    A_sub = euler_columns(parts, ("rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi"), ppath)
    origin = np.stack([star_numbers(parts, f"rlnOrigin{a}Angst", ppath, 0.0) for a in "XYZ"], axis=1)
    return A_sub, A_sub @ A_angles, np.einsum("nij,nj->ni", A_sub, origin)


@dataclass
class TomogramGeometry:
    """Per-tilt geometry of one tilt series (for writing a tomograms STAR).

    ``rotations`` ``(F, 3, 3)`` tomogram-to-image matrices; ``defocus_u/v_angstrom``, ``astigmatism_angle_deg``,
    ``pre_exposure_e_per_angstrom2``, ``tilt_deg`` ``(F,)``; ``size_px`` ``(3,)`` tomogram size in tilt-series pixels.
    """

    name: str
    rotations: np.ndarray
    defocus_u_angstrom: np.ndarray
    defocus_v_angstrom: np.ndarray
    astigmatism_angle_deg: np.ndarray
    pre_exposure_e_per_angstrom2: np.ndarray
    tilt_deg: np.ndarray
    dose_per_tilt_e_per_angstrom2: float
    size_px: tuple
    pixel_size_angstrom: float
    hand: float = -1.0
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1


def _tilt_rotations(tilts: pd.DataFrame, path: Path) -> np.ndarray:
    """Rotation parts ``(F, 3, 3)`` of the projection matrices (scale removed, checked orthonormal)."""
    cols = [f"rlnTomoProj{a}" for a in "XYZ"]
    missing = [c for c in cols if c not in tilts.columns]
    if missing:
        raise InputError(f"missing per-tilt projection matrix column(s) {', '.join(missing)}", path,
                         "cryoscape reads tomograms STAR files with rlnTomoProjX/Y/Z/W (WarpTools, RELION 4/5)")
    rows = [np.stack(star_vectors(tilts[c], 4, c, path)) for c in cols]
    R = np.stack([r[:, :3] for r in rows], axis=1)  # (F, 3, 3)
    scale = np.cbrt(np.linalg.det(R))
    if np.any(scale <= 0):
        raise InputError("a projection matrix is not a rotation (non-positive determinant)", path)
    R = R / scale[:, None, None]
    if not np.allclose(R @ R.transpose(0, 2, 1), np.eye(3), atol=1e-3):
        raise InputError("a projection matrix is not a (scaled) rotation", path)
    return R


def _tilt_table(tblocks: dict, glob_row: pd.Series, name: str, tomograms_path: Path) -> pd.DataFrame:
    if name in tblocks:
        return tblocks[name]
    if "rlnTomoTiltSeriesStarFile" in glob_row.index:
        ts_path = resolve_relative(glob_row["rlnTomoTiltSeriesStarFile"], tomograms_path.parent)
        blocks = read_star_blocks(ts_path)
        if name in blocks:
            return blocks[name]
        if len(blocks) == 1:
            return next(iter(blocks.values()))
    raise InputError(f"no per-tilt table data_{name} for tomogram {name}", tomograms_path)


def read_optimisation_set(path: str | Path, datadir=None, apix: float | None = None, geometry: str = "auto",
                          coordinate_pixel_size_angstrom: float | None = None,
                          ctf_overrides: CTFOverrides | None = None) -> TiltSeriesSet:
    """Read a RELION 5 / WarpTools optimisation set with 2-D tilt-image stacks per particle.

    ``path`` names ``rlnTomoParticlesFile`` and ``rlnTomoTomogramsFile`` (relative paths are looked up next to it,
    then in its parent folders, then in the working folder). Only frames marked 1 in ``rlnTomoVisibleFrames`` are
    used; a particle's stack holds either every frame of its tilt series or only the visible ones. See the module
    docstring for the geometry; ``geometry`` (``'auto'``, ``'relion'``, ``'warptools'``) and
    ``coordinate_pixel_size_angstrom`` (unit of ``rlnCoordinateX/Y/Z``) are passed to :func:`particle_positions`.

    Voltage, Cs, amplitude contrast and phase shift are read per particle from its own column, else its optics
    group, else its tomogram's ``data_global`` row. ``ctf_overrides`` (``--kv``, ``--cs``, ``--amp-contrast``,
    ``--ps``) replace them, and fill them in where the set has none; without them a missing amplitude contrast is
    0.1 (with a warning naming the column) and a missing voltage or Cs is an error naming the column and the option.

    Raises
    ------
    InputError
        3-D subtomograms (``rlnTomoSubTomosAre2DStacks`` != 1), a mix of CTF-premultiplied and plain stacks,
        missing voltage or Cs (without ``--kv`` / ``--cs``),
        unknown tomograms, missing projection matrices, visible-frame lists of the wrong length, stacks of the wrong
        size.
    """
    from cryoscape.io.mrc import read_header

    path = Path(path)
    tables = parse_optimisation_set(path)
    ppath, tpath, pblocks, tblocks = tables.particles_path, tables.tomograms_path, tables.particle_blocks, \
        tables.tomogram_blocks
    general = pblocks.get("general")
    if general is None or int(star_numbers(general, "rlnTomoSubTomosAre2DStacks", ppath, 0)[0]) != 1:
        raise InputError("particles are 3-D subtomograms; tomoDRGN-style training needs 2-D tilt-image stacks",
                         ppath, "extract pseudo-subtomograms as 2-D stacks (RELION 5 / WarpTools)")
    parts, glob = tables.particles, tables.tomograms
    optics = tables.optics
    optics, orow = tomo_optics_rows(parts, optics, ppath)
    names = parts["rlnTomoName"].astype(str).to_numpy() if "rlnTomoName" in parts.columns else None
    if names is None:
        raise InputError("missing column rlnTomoName", ppath)
    gnames = glob["rlnTomoName"].astype(str).tolist() if "rlnTomoName" in glob.columns else []

    tomo_row = np.array([gnames.index(t) if t in gnames else -1 for t in names], dtype=np.int64)

    def optic(name, default=None) -> np.ndarray:  # per particle: own column, else optics group, else tomogram row
        if name in parts.columns:
            return star_numbers(parts, name, ppath)
        if optics is not None and name in optics.columns:
            return star_numbers(optics, name, ppath)[orow]
        values = star_numbers(glob, name, tpath, default) if len(glob) else np.zeros(0)
        return np.where(tomo_row >= 0, values[np.maximum(tomo_row, 0)] if len(values) else np.nan, np.nan)

    # WarpTools / RELION 5 write the flag per optics group; accept a particle column too
    premultiplied = ctf_premultiplied_from_values(
        star_numbers(parts, PREMULTIPLIED_COLUMN, ppath) if PREMULTIPLIED_COLUMN in parts.columns else
        star_numbers(optics, PREMULTIPLIED_COLUMN, ppath, 0.0)[orow] if optics is not None else [], ppath)
    own_pixel = optic("rlnImagePixelSize") if apix is None or _has_column("rlnImagePixelSize", parts, optics, glob) \
        else np.full(len(parts), float(apix))
    ctf_values = _optics_values(optic, lambda name: _has_column(name, parts, optics, glob),
                                ctf_overrides or CTFOverrides(), len(parts), ppath, tpath)
    positions = particle_positions(parts, optics, glob, ppath, tpath, geometry, coordinate_pixel_size_angstrom)
    log.info("%s: %s geometry (particle coordinates and the sign of the depth-dependent defocus; docs/tomography.md)",
             ppath, positions.convention)
    _, A_p, origin_tomo = particle_frames(tables)
    stack_names = parts["rlnImageName"].astype(str).str.split("@").str[-1].to_numpy() \
        if "rlnImageName" in parts.columns else None
    if stack_names is None:
        raise InputError("missing column rlnImageName (the 2-D stack of each particle)", ppath)
    stacks = np.asarray([str(s) for s in _resolve_many(stack_names, ppath.parent, datadir)], dtype=object)
    visible_all = star_vectors(parts["rlnTomoVisibleFrames"], None, "rlnTomoVisibleFrames", ppath) \
        if "rlnTomoVisibleFrames" in parts.columns else None
    cols: dict[str, list] = {k: [] for k in ("rot", "shift", "dfu", "dfv", "ang", "exp", "tilt", "file", "local")}
    offsets, centres = [0], np.zeros((len(parts), 3))
    tomograms: dict[str, tuple] = {}
    for i in range(len(parts)):
        tomo = names[i]
        if tomo not in tomograms:
            if tomo not in gnames:
                raise InputError(f"particle {i} is in tomogram {tomo}, which {tpath.name} does not define", ppath)
            grow = glob.iloc[gnames.index(tomo)]
            tilts = _tilt_table(tblocks, grow, tomo, tpath)
            pre = star_numbers(tilts, "rlnMicrographPreExposure", tpath, 0.0)
            R = _tilt_rotations(tilts, tpath)
            nominal = np.degrees(np.arccos(np.clip(R[:, 2, 2], -1.0, 1.0)))
            per_tilt = {"dfu": star_numbers(tilts, "rlnDefocusU", tpath),
                        "dfv": star_numbers(tilts, "rlnDefocusV", tpath),
                        "ang": star_numbers(tilts, "rlnDefocusAngle", tpath, 0.0),
                        "tilt": star_numbers(tilts, "rlnTomoNominalStageTiltAngle", tpath, 0.0)
                        if "rlnTomoNominalStageTiltAngle" in tilts.columns else nominal,
                        "exp": pre + 0.5 * _dose_per_tilt(grow, pre, tpath)}
            sign = depth_defocus_sign(grow, positions.convention, tpath)
            tomograms[tomo] = (grow, R, per_tilt, sign)
        grow, R, per_tilt, sign = tomograms[tomo]
        F = len(R)
        centres[i] = positions.centres_angstrom[i] - origin_tomo[i]
        vis = np.ones(F, bool) if visible_all is None else visible_all[i] > 0.5
        if vis.size != F:
            raise InputError(f"rlnTomoVisibleFrames of particle {i} has {vis.size} entries but tomogram {tomo} has "
                             f"{F} tilts", ppath)
        frames = np.flatnonzero(vis)
        if frames.size == 0:
            raise InputError(f"particle {i} has no visible tilt images", ppath, "remove it from the particle file")
        n_stack = read_header(stacks[i]).n_images
        if n_stack == F:
            local = frames
        elif n_stack == frames.size:
            local = np.arange(frames.size)
        else:
            raise InputError(f"stack {stacks[i]} has {n_stack} images but tomogram {tomo} has {F} tilts of which "
                             f"{frames.size} are visible", ppath)
        Rf = R[frames]
        depth = (Rf @ centres[i])[:, 2]
        cols["rot"].append(Rf @ A_p[i])
        cols["shift"].append((Rf @ origin_tomo[i])[:, :2])
        cols["dfu"].append(per_tilt["dfu"][frames] + sign * depth)
        cols["dfv"].append(per_tilt["dfv"][frames] + sign * depth)
        for key in ("ang", "exp", "tilt"):
            cols[key].append(per_tilt[key][frames])
        cols["file"].append(np.full(frames.size, stacks[i], dtype=object))
        cols["local"].append(local)
        offsets.append(offsets[-1] + frames.size)
    if not len(parts):
        raise InputError("no particles", ppath)
    cat = {k: np.concatenate(v) for k, v in cols.items()}
    per_image_particle = np.repeat(np.arange(len(parts)), np.diff(offsets))
    ctf = CTFParams.create(cat["dfu"], cat["dfv"], cat["ang"], *[v[per_image_particle] for v in ctf_values])
    images, pixel = _common_pixel_size(
        ImageStack.from_paths_and_indices(cat["file"], cat["local"], lazy=True), own_pixel, per_image_particle,
        apix, ppath)
    pnames = parts["rlnTomoParticleName"].astype(str).to_numpy() if "rlnTomoParticleName" in parts.columns else \
        np.array([f"{names[i]}/{i + 1}" for i in range(len(parts))], dtype=object)
    source = tables
    return TiltSeriesSet(images, pixel, cat["rot"], cat["shift"], ctf, cat["exp"], cat["tilt"],
                         np.asarray(offsets, np.int64), np.asarray(pnames, dtype=object),
                         np.asarray(names, dtype=object), path, "optimisation_set", source,
                         particle_rows=np.arange(len(parts), dtype=np.int64), coordinates_angstrom=centres,
                         particle_rotations=A_p, ctf_premultiplied=premultiplied)


def _has_column(name: str, parts: pd.DataFrame, optics: pd.DataFrame | None, glob: pd.DataFrame) -> bool:
    """Whether ``name`` is a column of the particles, the optics or the ``data_global`` table."""
    return name in parts.columns or name in glob.columns or (optics is not None and name in optics.columns)


def _common_pixel_size(images: ImageStack, own: np.ndarray, image_particle: np.ndarray, apix: float | None,
                       path: Path) -> tuple[ImageStack, float]:
    """``(images, pixel size)``: the set's one pixel size, or, when the particles' optics groups have several
    (``own``, per particle), each particle's stack resampled on reading to the finest (or to ``apix``), keeping
    the box, as single-particle sets are (:mod:`cryoscape.io.rescale`).
    """
    if len(own) and np.allclose(own, own[0], rtol=1e-4):  # one pixel size: --apix replaces it
        pixel = float(apix) if apix is not None else float(own[0])
        if not (np.isfinite(pixel) and pixel > 0):
            raise InputError(f"pixel size {pixel:g} A is not a positive number", path, "pass --apix")
        images._pixel_size = pixel
        return images, pixel
    from cryoscape.io.rescale import RescaledImageStack

    bad = own[~(np.isfinite(own) & (own > 0))]
    if bad.size:
        raise InputError(f"some particles have the pixel size {bad[0]:g} A, which is not a positive number", path,
                         "correct rlnImagePixelSize of their optics group")
    target = float(apix) if apix is not None else float(own.min())
    sizes, counts = np.unique(own.round(6), return_counts=True)
    log.info("%s: the particles have %d pixel sizes (%s); each tilt image is resampled on reading to %.4f A (%s), "
             "keeping the %d px box", path, len(sizes),
             ", ".join(f"{s:g} A: {c} particles" for s, c in zip(sizes, counts, strict=True)), target,
             "--apix" if apix is not None else "the finest", images.D)
    return RescaledImageStack.wrap(images, own[image_particle], target), target


# optics columns of the CTF: column -> (CTFOverrides field, option, unit), the default when absent (None: required)
_OPTICS = {"rlnVoltage": ("voltage_kv", "--kv", "kV, e.g. 300", None),
           "rlnSphericalAberration": ("cs_mm", "--cs", "mm, e.g. 2.7", None),
           "rlnAmplitudeContrast": ("amplitude_contrast", "--amp-contrast", "a fraction, e.g. 0.1",
                                    DEFAULT_AMPLITUDE_CONTRAST),
           "rlnPhaseShift": ("phase_shift_deg", "--ps", "degrees", 0.0)}


def _optics_values(optic, present, overrides: CTFOverrides, n: int, ppath: Path, tpath: Path) -> list[np.ndarray]:
    """Per particle ``(n,)``: voltage, Cs, amplitude contrast and phase shift (the order of ``_OPTICS``), from the
    command line's ``overrides``, else the set (``optic(name)``, when ``present(name)``), else the default.
    """
    missing = [c for c, (f, _, _, default) in _OPTICS.items()
               if default is None and getattr(overrides, f) is None and not present(c)]
    if missing:
        raise InputError(f"missing CTF column(s) {', '.join(missing)} (in neither the optics table of {ppath.name} "
                         f"nor data_global of {tpath.name})", ppath,
                         "pass " + " and ".join(f"{_OPTICS[c][1]} ({_OPTICS[c][2]})" for c in missing))
    out = []
    for column, (field_name, option, _, default) in _OPTICS.items():
        given = getattr(overrides, field_name)
        if given is not None:
            if present(column) and not np.allclose(optic(column), given):
                log.info("%s: using %s %g instead of the set's %s", ppath, option, given, column)
            out.append(np.full(n, float(given)))
        elif present(column):
            out.append(optic(column))
        else:
            assert default is not None  # a missing required column raised above
            if column == "rlnAmplitudeContrast":
                log.warning("%s: no %s column (optics table or %s); using %g (RELION's import default; set it with "
                            "--amp-contrast)", ppath, column, tpath.name, default)
            out.append(np.full(n, float(default)))
    return out


def _resolve_many(names, base: Path, datadir) -> np.ndarray:
    from cryoscape.io.imagestack import resolve_stack_paths

    return resolve_stack_paths(names, base, datadir)


def _dose_per_tilt(grow: pd.Series, pre: np.ndarray, path: Path) -> float:
    """``rlnTomoImportFractionalDose``, else the median step between sorted pre-exposures."""
    if "rlnTomoImportFractionalDose" in grow.index:
        return float(grow["rlnTomoImportFractionalDose"])
    steps = np.diff(np.sort(pre))
    steps = steps[steps > 0]
    if steps.size == 0:
        log.warning("%s: cannot tell the dose per tilt; exposures are the pre-exposures", path)
        return 0.0
    return float(np.median(steps))


def write_optimisation_set(out_dir: str | Path, pixel_size_angstrom: float, D: int,
                           tomograms: list[TomogramGeometry], tomogram_of_particle, particle_names,
                           centres_angstrom: np.ndarray, particle_rotations: np.ndarray, origins_angstrom: np.ndarray,
                           stack_names, visible, ctf_premultiplied: bool = False) -> Path:
    """Write ``OUT/particles_optimisation_set.star`` naming ``OUT/particles_tomo.star`` and ``OUT/tomograms.star``.

    Per particle (``N``): tomogram name, name, centre relative to the tomogram centre (Angstrom, after the origin
    shift), pose in the tomogram frame, 3-D origin (Angstrom), the path of its 2-D stack (relative to ``OUT``), and a
    bool array of visible frames. ``ctf_premultiplied`` writes ``rlnCtfDataAreCtfPremultiplied 1`` in the optics
    table (as WarpTools and RELION 5 do). Returns the optimisation-set path.
    """
    from cryoscape.imaging.rotations import matrix_to_euler_relion

    out = Path(out_dir)
    angles = matrix_to_euler_relion(particle_rotations)
    coords = np.asarray(centres_angstrom, np.float64) + np.asarray(origins_angstrom, np.float64)
    parts = pd.DataFrame({"rlnTomoName": list(tomogram_of_particle), "rlnTomoParticleName": list(particle_names),
                          **{f"rlnCenteredCoordinate{a}Angst": coords[:, j] for j, a in enumerate("XYZ")},
                          "rlnAngleRot": angles[:, 0], "rlnAngleTilt": angles[:, 1], "rlnAnglePsi": angles[:, 2],
                          **{f"rlnOrigin{a}Angst": np.asarray(origins_angstrom)[:, j] for j, a in enumerate("XYZ")},
                          "rlnImageName": list(stack_names), "rlnOpticsGroup": 1,
                          "rlnTomoVisibleFrames": ["[" + ",".join("1" if v else "0" for v in vis) + "]"
                                                   for vis in visible]})
    t0 = tomograms[0]
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                           "rlnVoltage": [t0.voltage_kv], "rlnSphericalAberration": [t0.cs_mm],
                           "rlnAmplitudeContrast": [t0.amplitude_contrast],
                           "rlnTomoTiltSeriesPixelSize": [t0.pixel_size_angstrom],
                           "rlnImagePixelSize": [float(pixel_size_angstrom)], "rlnImageSize": [int(D)],
                           "rlnImageDimensionality": [2],
                           "rlnCtfDataAreCtfPremultiplied": [int(bool(ctf_premultiplied))]})
    write_star_blocks({"general": {"rlnTomoSubTomosAre2DStacks": 1}, "optics": optics, "particles": parts},
                  out / "particles_tomo.star")
    glob = pd.DataFrame({"rlnTomoName": [t.name for t in tomograms],
                         "rlnVoltage": [t.voltage_kv for t in tomograms],
                         "rlnSphericalAberration": [t.cs_mm for t in tomograms],
                         "rlnAmplitudeContrast": [t.amplitude_contrast for t in tomograms],
                         "rlnTomoHand": [t.hand for t in tomograms],
                         "rlnTomoTiltSeriesPixelSize": [t.pixel_size_angstrom for t in tomograms],
                         "rlnTomoFrameCount": [len(t.rotations) for t in tomograms],
                         "rlnTomoImportFractionalDose": [t.dose_per_tilt_e_per_angstrom2 for t in tomograms],
                         **{f"rlnTomoSize{a}": [int(t.size_px[j]) for t in tomograms] for j, a in enumerate("XYZ")}})
    tblocks: dict = {"global": glob}
    for t in tomograms:
        size = np.asarray(t.size_px, np.float64)
        shift = np.array([size[0] / 2, size[1] / 2, 0.0]) - t.rotations @ (size / 2)  # tomogram centre -> image centre
        P = np.zeros((len(t.rotations), 4, 4))
        P[:, :3, :3], P[:, :3, 3], P[:, 3, 3] = t.rotations, shift, 1.0
        table: dict[str, Any] = {
            f"rlnTomoProj{a}": ["[" + ",".join(f"{v:.8f}" for v in P[f, j]) + "]" for f in range(len(P))]
            for j, a in enumerate("XYZW")
        }
        table.update(rlnDefocusU=t.defocus_u_angstrom, rlnDefocusV=t.defocus_v_angstrom,
                     rlnDefocusAngle=t.astigmatism_angle_deg,
                     rlnCtfScalefactor=np.cos(np.radians(t.tilt_deg)),
                     rlnMicrographPreExposure=t.pre_exposure_e_per_angstrom2,
                     rlnTomoNominalStageTiltAngle=t.tilt_deg)
        tblocks[t.name] = pd.DataFrame(table)
    write_star_blocks(tblocks, out / "tomograms.star")
    return write_star_blocks({"optimisation_set": {"rlnTomoParticlesFile": "particles_tomo.star",
                                               "rlnTomoTomogramsFile": "tomograms.star"}},
                         out / "particles_optimisation_set.star")


def write_optimisation_subset(source: OptimisationSetSource, rows, out_dir: str | Path) -> Path:
    """Rows ``rows`` of the particle table as a new optimisation set in ``out_dir`` (see :func:`write_tilt_subset`)."""
    import shutil

    from cryoscape.utils.atomic import atomic_path

    out = Path(out_dir)
    pblocks = dict(source.particle_blocks)
    pblocks["particles"] = pblocks["particles"].iloc[np.asarray(rows, np.int64)].reset_index(drop=True)
    for key in ("general",):  # key-value blocks stay key-value
        if key in pblocks and len(pblocks[key]) == 1:
            pblocks[key] = pblocks[key].iloc[0].to_dict()
    write_star_blocks(pblocks, out / "particles.star")
    with atomic_path(out / "tomograms.star") as tmp:
        shutil.copyfile(source.tomograms_path, tmp)
    blocks = {}
    for key, block in source.blocks.items():
        if {"rlnTomoParticlesFile", "rlnTomoTomogramsFile"} <= set(block.columns):
            kv = block.iloc[0].to_dict()
            kv.update(rlnTomoParticlesFile=str(out / "particles.star"),
                      rlnTomoTomogramsFile=str(out / "tomograms.star"))
            blocks[key] = kv
        else:
            blocks[key] = block
    return write_star_blocks(blocks, out / "particles_optimisation_set.star")
