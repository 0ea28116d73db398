"""Tilt-series particle sets (cryo-ET): Warp/M image-series STAR files and RELION 5 / WarpTools optimisation sets.

A particle is a set of 2-D tilt images. Each image carries its own pose (the particle pose composed with the tilt
geometry), origin, CTF, cumulative exposure and stage tilt; particles may have different tilt counts. Images of one
particle are stored contiguously: those of particle ``p`` are rows ``offsets[p]:offsets[p + 1]``.

Conventions at this boundary (``docs/tomography.md``):

* per-image rotation ``A_img = R_tilt @ A_particle`` (RELION matrices; ``R_tilt`` maps tomogram to image frame);
* exposure (electrons/A^2) up to the *middle* of each image: Warp/M ``-rlnCtfBfactor / 4`` is taken as written;
  RELION ``rlnMicrographPreExposure`` gets half the per-tilt dose added;
* stage tilt in degrees: ``rlnTomoNominalStageTiltAngle`` when present, else ``arccos(rlnCtfScalefactor)`` (Warp) or
  ``arccos(R_tilt[2, 2])`` (RELION), which are unsigned; only ``cos(tilt)`` is used;
* Warp's ``rlnCtfBfactor``/``rlnCtfScalefactor`` encode exposure and tilt, so they are not applied to the CTF.

RELION 5 geometry follows RELION's ``ParticleSet``/``Tomogram`` classes: the particle matrix is
``A_subtomogram @ A_angles`` (particle to tomogram frame), the centre is the coordinate minus ``A_subtomogram @
origin``, ``R_tilt`` is the rotation part of the projection matrix ``rlnTomoProj{X,Y,Z,W}``, and the defocus of a
tilt image is the tilt's defocus plus ``s * depth`` with ``depth = (R_tilt @ centre)_z`` (Angstrom, centre relative
to the tomogram centre). Sets written by WarpTools (tomograms named ``*.tomostar``) differ in two points
(:func:`particle_positions`, :func:`depth_defocus_sign`): ``rlnCoordinateX/Y/Z`` are in pixels of the exported
particles (``rlnTomoTiltSeriesPixelSize x rlnTomoSubtomogramBinning``), and ``s = -rlnTomoHand`` (Warp's own defocus
model) instead of RELION's ``s = rlnTomoHand * rlnTomoDefocusSlope``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from cryoscape.errors import InputError
from cryoscape.io.ctf_flags import PREMULTIPLIED_COLUMN, ctf_premultiplied_from_values, star_particles_premultiplied
from cryoscape.io.imagestack import ImageStack
from cryoscape.metadata import CTFParams

log = logging.getLogger(__name__)

FORMATS = ("auto", "imageseries", "optimisation_set")

__all__ = ["FORMATS", "TiltSeriesSet", "detect_format", "load_tilt_series", "read_image_series_star",
           "write_image_series_star", "read_optimisation_set", "write_optimisation_set", "write_tilt_subset",
           "group_images", "TomogramGeometry", "read_star_blocks", "resolve_relative", "star_numbers",
           "euler_columns", "particle_centre_angstrom", "GEOMETRY_CONVENTIONS", "geometry_convention",
           "depth_defocus_sign", "ParticlePositions", "particle_positions"]


@dataclass
class TiltSeriesSet:
    """Tilt images grouped by particle, in cryoscape's conventions.

    Attributes
    ----------
    images : ImageStack of all ``M`` tilt images, particle by particle.
    pixel_size_angstrom : float.
    rotations : ``(M, 3, 3)`` float64 per-image RELION matrices.
    shifts_angstrom : ``(M, 2)`` float64 per-image RELION origins.
    ctf : CTFParams of the ``M`` images (B-factor 0, scale 1).
    exposure_e_per_angstrom2 : ``(M,)`` cumulative exposure up to the middle of each image.
    tilt_deg : ``(M,)`` stage tilt in degrees.
    offsets : ``(N + 1,)`` int64; images of particle ``p`` are ``offsets[p]:offsets[p + 1]``.
    particle_names, tomogram_names : ``(N,)`` str arrays.
    source_path : the file read; source_format : ``'imageseries'`` or ``'optimisation_set'``.
    source : the parsed file (kept for writing subsets with every original column).
    image_rows : ``(M,)`` row of each image in the source table (image series) or ``-1``.
    particle_rows : ``(N,)`` row of each particle in the source particle table (optimisation set) or ``-1``.
    source_indices : ``(N,)`` index of each particle in the source file's particle order.
    coordinates_angstrom : ``(N, 3)`` particle centres in the tomogram (Angstrom), or None.
    particle_rotations : ``(N, 3, 3)`` particle poses in the tomogram frame, or None.
    ctf_premultiplied : the stacks hold ``CTF x image`` (``rlnCtfDataAreCtfPremultiplied 1``); models then render
        ``CTF^2 x slice``.
    """

    images: ImageStack
    pixel_size_angstrom: float
    rotations: np.ndarray
    shifts_angstrom: np.ndarray
    ctf: CTFParams
    exposure_e_per_angstrom2: np.ndarray
    tilt_deg: np.ndarray
    offsets: np.ndarray
    particle_names: np.ndarray
    tomogram_names: np.ndarray
    source_path: Path
    source_format: str
    source: object = None
    image_rows: np.ndarray | None = None
    particle_rows: np.ndarray | None = None
    source_indices: np.ndarray | None = None
    coordinates_angstrom: np.ndarray | None = None
    particle_rotations: np.ndarray | None = field(default=None, repr=False)
    ctf_premultiplied: bool = False

    def __post_init__(self):
        n, m = len(self.offsets) - 1, len(self.images)
        if self.offsets[0] != 0 or self.offsets[-1] != m or np.any(np.diff(self.offsets) < 1):
            raise InputError("inconsistent particle grouping of the tilt images", self.source_path)
        for name in ("rotations", "shifts_angstrom", "exposure_e_per_angstrom2", "tilt_deg"):
            if len(getattr(self, name)) != m:
                raise InputError(f"{name} has {len(getattr(self, name))} rows for {m} images", self.source_path)
        if len(self.ctf) != m:
            raise InputError(f"{len(self.ctf)} CTF rows for {m} images", self.source_path)
        if self.image_rows is None:
            self.image_rows = np.full(m, -1, np.int64)
        if self.particle_rows is None:
            self.particle_rows = np.full(n, -1, np.int64)
        if self.source_indices is None:
            self.source_indices = np.arange(n, dtype=np.int64)

    def __len__(self) -> int:
        return int(len(self.offsets) - 1)

    @property
    def n_images(self) -> int:
        """Number of tilt images ``M``."""
        return int(len(self.images))

    @property
    def D(self) -> int:
        """Box size in pixels."""
        return self.images.D

    @property
    def tilt_counts(self) -> np.ndarray:
        """``(N,)`` number of tilt images of each particle."""
        return np.diff(self.offsets)

    def particle_of_image(self) -> np.ndarray:
        """``(M,)`` particle position of each image."""
        return np.repeat(np.arange(len(self)), self.tilt_counts)

    def image_indices(self, particles) -> np.ndarray:
        """Image rows ``(K,)`` of the particles at ``particles`` (positions in this set), particle by particle."""
        p = np.atleast_1d(np.asarray(particles, dtype=np.int64))
        if p.size == 0:
            return np.zeros(0, np.int64)
        counts = self.tilt_counts[p]
        starts = np.repeat(self.offsets[p], counts)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return starts + within

    def subset(self, particles) -> "TiltSeriesSet":
        """The particles at ``particles`` (positions in this set), in that order, with all their images."""
        p = np.atleast_1d(np.arange(len(self))[particles])
        img = self.image_indices(p)
        offsets = np.concatenate([[0], np.cumsum(self.tilt_counts[p])]).astype(np.int64)

        def opt(a):
            return None if a is None else a[p]

        return replace(self, images=self.images.subset(img), rotations=self.rotations[img],
                       shifts_angstrom=self.shifts_angstrom[img], ctf=self.ctf.subset(img),
                       exposure_e_per_angstrom2=self.exposure_e_per_angstrom2[img], tilt_deg=self.tilt_deg[img],
                       offsets=offsets, particle_names=self.particle_names[p], tomogram_names=self.tomogram_names[p],
                       image_rows=self.image_rows[img], particle_rows=self.particle_rows[p],
                       source_indices=self.source_indices[p], coordinates_angstrom=opt(self.coordinates_angstrom),
                       particle_rotations=opt(self.particle_rotations))


def group_images(particle_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group image rows by particle id, particles in order of first appearance, rows in file order within each.

    Returns
    -------
    order : ``(M,)`` row order that makes each particle's rows contiguous.
    offsets : ``(N + 1,)`` int64.
    names : ``(N,)`` the particle ids in particle order.
    """
    ids = pd.Series(np.asarray(particle_ids, dtype=object)).astype(str)
    codes, names = pd.factorize(ids, sort=False)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=len(names))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return order, offsets, np.asarray(names, dtype=object)


def detect_format(path: str | Path) -> str:
    """``'optimisation_set'`` when the STAR file names a particles and a tomograms file, else ``'imageseries'``."""
    import starfile

    path = Path(path)
    if not path.is_file():
        raise InputError("tilt-series STAR file not found", path)
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises assorted parser errors
        raise InputError(f"not a readable STAR file ({type(exc).__name__}: {exc})", path) from None
    for block in blocks.values():
        keys = block.keys() if isinstance(block, dict) else block.columns
        if "rlnTomoParticlesFile" in keys and "rlnTomoTomogramsFile" in keys:
            return "optimisation_set"
    return "imageseries"


def load_tilt_series(path: str | Path, fmt: str = "auto", datadir=None, apix: float | None = None,
                     coordinate_pixel_size_angstrom: float | None = None, ctf_overrides=None) -> TiltSeriesSet:
    """Read a tilt-series particle set; ``fmt``: ``'auto'`` (by content), ``'imageseries'``, ``'optimisation_set'``.

    ``ctf_overrides`` (:class:`cryoscape.metadata.CTFOverrides`: ``--kv/--cs/--amp-contrast/--ps``) replace the
    file's optics values (and fill in those an image-series STAR lacks)."""
    if fmt not in FORMATS:
        raise InputError(f"unknown tilt-series format {fmt!r}; choose one of {', '.join(FORMATS)}")
    kind = detect_format(path) if fmt == "auto" else fmt
    if kind == "optimisation_set":
        tilts = read_optimisation_set(path, datadir=datadir, apix=apix)
        return replace(tilts, ctf=ctf_overrides.apply(tilts.ctf)) if ctf_overrides else tilts
    return read_image_series_star(path, datadir=datadir, apix=apix,
                                  coordinate_pixel_size_angstrom=coordinate_pixel_size_angstrom,
                                  ctf_overrides=ctf_overrides)


def _first_column(table: pd.DataFrame, names) -> str | None:
    return next((n for n in names if n in table.columns), None)


def read_image_series_star(path: str | Path, datadir=None, apix: float | None = None,
                           coordinate_pixel_size_angstrom: float | None = None, ctf_overrides=None) -> TiltSeriesSet:
    """Read a Warp/M image-series STAR file (one row per tilt image).

    Particle id: ``rlnGroupName`` (Warp's ``tomogramID_particleID``), else ``rlnTomoParticleName``, else
    ``rlnGroupNumber``. Tomogram: ``rlnTomoName`` or ``rlnMicrographName`` when present, else the part of the
    particle id before its last ``_``. Exposure ``-rlnCtfBfactor / 4``; tilt ``arccos(rlnCtfScalefactor)`` (or
    ``rlnTomoNominalStageTiltAngle``). Coordinates ``rlnCoordinateX/Y/Z`` (pixels, optional) are scaled by
    ``coordinate_pixel_size_angstrom`` (default: the image pixel size).

    Raises
    ------
    InputError
        Everything :func:`cryoscape.io.star.read_star_particles` reports, a missing particle-id column, missing
        poses or CTF.
    """
    from cryoscape.io.star import read_star_particles

    sp = read_star_particles(path, datadir=datadir, apix=apix)
    path = sp.path
    table = sp.table
    id_col = _first_column(table, ("rlnGroupName", "rlnTomoParticleName", "rlnGroupNumber"))
    if id_col is None:
        raise InputError("missing particle id column rlnGroupName (Warp's tomogramID_particleID)", path,
                         "is this an image-series STAR file? for RELION 5 pass the *_optimisation_set.star")
    if not sp.has_poses():
        raise InputError("missing pose columns rlnAngleRot/Tilt/Psi", path)
    if not sp.has_ctf():
        raise InputError("missing CTF columns (rlnDefocusU, ...)", path)
    order, offsets, names = group_images(table[id_col].to_numpy())
    poses = sp.poses()
    c = sp.ctf(ctf_overrides)
    ctf = CTFParams.create(c.defocus_u_angstrom, c.defocus_v_angstrom, c.astigmatism_angle_deg, c.voltage_kv,
                           c.cs_mm, c.amplitude_contrast, c.phase_shift_deg)
    if sp.has("rlnCtfBfactor"):
        exposure = -sp.values("rlnCtfBfactor") / 4.0
    else:
        log.warning("%s: no rlnCtfBfactor column; exposures set to 0 (no dose weighting)", path)
        exposure = np.zeros(len(table))
    if np.any(exposure < 0):
        raise InputError("positive rlnCtfBfactor values: Warp writes -4 x cumulative exposure", path)
    if sp.has("rlnTomoNominalStageTiltAngle"):
        tilt = sp.values("rlnTomoNominalStageTiltAngle")
    elif sp.has("rlnCtfScalefactor"):
        tilt = np.degrees(np.arccos(np.clip(sp.values("rlnCtfScalefactor"), -1.0, 1.0)))
    else:
        log.warning("%s: no rlnCtfScalefactor column; stage tilts set to 0", path)
        tilt = np.zeros(len(table))
    first = order[offsets[:-1]]
    tomo_col = _first_column(table, ("rlnTomoName", "rlnMicrographName"))
    if tomo_col is not None:
        tomograms = table[tomo_col].astype(str).to_numpy()[first]
    else:
        tomograms = np.array([str(n).rsplit("_", 1)[0] for n in names], dtype=object)
    coords = None
    if all(sp.has(f"rlnCoordinate{a}") for a in "XYZ"):
        scale = coordinate_pixel_size_angstrom or float(sp.pixel_size_angstrom[0])
        coords = np.stack([sp.values(f"rlnCoordinate{a}") for a in "XYZ"], axis=1)[first] * scale
    images = ImageStack.from_paths_and_indices(sp.stack_paths[order], sp.stack_indices[order], lazy=True)
    pixel = float(sp.pixel_size_angstrom[0])
    images._pixel_size = pixel
    return TiltSeriesSet(images, pixel, poses.rotations[order], poses.shifts_angstrom[order], ctf.subset(order),
                         exposure[order], tilt[order], offsets, names, np.asarray(tomograms, dtype=object), path,
                         "imageseries", sp, order.astype(np.int64), coordinates_angstrom=coords,
                         ctf_premultiplied=star_particles_premultiplied(sp))


def write_image_series_star(path: str | Path, stack_name: str, pixel_size_angstrom: float, D: int,
                            rotations: np.ndarray, shifts_angstrom: np.ndarray, ctf: CTFParams,
                            exposure_e_per_angstrom2: np.ndarray, tilt_deg: np.ndarray, particle_names,
                            tomogram_names, coordinates_px: np.ndarray | None = None, stack_indices=None,
                            ctf_premultiplied: bool = False) -> Path:
    """Write a Warp-style image-series STAR (RELION 3.0 table, one row per image, images ``1..M`` of one stack).

    Per-image arrays are ``(M, ...)``; ``particle_names``/``tomogram_names`` (and ``coordinates_px`` ``(M, 3)``)
    are given per image. Exposure is written as ``rlnCtfBfactor = -4 N`` and tilt as ``rlnCtfScalefactor = cos``;
    ``ctf_premultiplied`` adds the column ``rlnCtfDataAreCtfPremultiplied 1``.
    """
    from cryoscape.io.star import format_image_names, write_star
    from cryoscape.metadata import Poses

    m = len(rotations)
    idx = np.arange(m) if stack_indices is None else np.asarray(stack_indices)
    c = ctf
    encoded = CTFParams.create(c.defocus_u_angstrom, c.defocus_v_angstrom, c.astigmatism_angle_deg, c.voltage_kv,
                               c.cs_mm, c.amplitude_contrast, c.phase_shift_deg,
                               -4.0 * np.asarray(exposure_e_per_angstrom2, dtype=np.float64),
                               np.cos(np.radians(np.asarray(tilt_deg, dtype=np.float64))))
    extra = {"rlnGroupName": np.asarray(particle_names, dtype=object),
             "rlnMicrographName": np.asarray(tomogram_names, dtype=object)}
    if coordinates_px is not None:
        for j, a in enumerate("XYZ"):
            extra[f"rlnCoordinate{a}"] = np.asarray(coordinates_px, dtype=np.float64)[:, j]
    if ctf_premultiplied:
        extra[PREMULTIPLIED_COLUMN] = np.ones(m, dtype=np.int64)
    return write_star(path, format_image_names([stack_name] * m, idx), pixel_size_angstrom, D,
                      Poses(np.asarray(rotations, np.float64), np.asarray(shifts_angstrom, np.float64)), encoded,
                      extra_columns=extra, relion30=True)


def write_tilt_subset(tilts: TiltSeriesSet, particles, out_dir: str | Path) -> Path:
    """Write the particles at ``particles`` (positions in ``tilts``) in the source's own format, keeping every column.

    Image series: ``OUT/particles.star`` with the rows of every image of the chosen particles. Optimisation set:
    ``OUT/particles_optimisation_set.star`` naming ``OUT/particles.star`` (the chosen particle rows, all blocks
    kept) and ``OUT/tomograms.star`` (a copy of the input's). Returns the STAR file to give to the next program.
    """
    p = np.atleast_1d(np.arange(len(tilts))[particles])
    out_dir = Path(out_dir)
    if tilts.source_format == "imageseries":
        from cryoscape.io.star import write_star_subset

        rows = tilts.image_rows[tilts.image_indices(p)]
        if rows.size and rows.min() < 0:
            raise InputError("these tilt images were not read from a STAR file; cannot write a subset",
                             tilts.source_path)
        return write_star_subset(tilts.source, rows, out_dir / "particles.star")
    return write_optimisation_subset(tilts.source, tilts.particle_rows[p], out_dir)


# ------------------------------------------------------------------------------------ RELION 5 / WarpTools
@dataclass
class OptimisationSetSource:
    """A parsed optimisation set (kept for writing subsets)."""

    path: Path
    blocks: dict
    particles_path: Path
    particle_blocks: dict
    tomograms_path: Path


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


def read_star_blocks(path: Path) -> dict:
    """Every block of a STAR file as a DataFrame (key-value blocks become one row); bad files -> InputError."""
    import starfile

    if not path.is_file():
        raise InputError("STAR file not found", path)
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises assorted parser errors
        raise InputError(f"not a readable STAR file ({type(exc).__name__}: {exc})", path) from None
    return {k: (pd.DataFrame([v]) if isinstance(v, dict) else v.reset_index(drop=True)) for k, v in blocks.items()}


def _write_blocks(blocks: dict, path: Path) -> Path:
    import starfile

    from cryoscape.utils.atomic import atomic_path

    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp, float_format="%.6f")
    return path


def resolve_relative(name: str, base: Path, datadir=None) -> Path:
    """A path named in a STAR file: next to it (``base``), in its parent folders, or in the working folder."""
    from cryoscape.io.imagestack import resolve_stack_paths

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


def _vectors(column: pd.Series, width: int | None, name: str, path: Path) -> list[np.ndarray]:
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


def _tilt_rotations(tilts: pd.DataFrame, path: Path) -> np.ndarray:
    """Rotation parts ``(F, 3, 3)`` of the projection matrices (scale removed, checked orthonormal)."""
    cols = [f"rlnTomoProj{a}" for a in "XYZ"]
    missing = [c for c in cols if c not in tilts.columns]
    if missing:
        raise InputError(f"missing per-tilt projection matrix column(s) {', '.join(missing)}", path,
                         "cryoscape reads tomograms STAR files with rlnTomoProjX/Y/Z/W (WarpTools, RELION 4/5)")
    rows = [np.stack(_vectors(tilts[c], 4, c, path)) for c in cols]
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
                          coordinate_pixel_size_angstrom: float | None = None) -> TiltSeriesSet:
    """Read a RELION 5 / WarpTools optimisation set with 2-D tilt-image stacks per particle.

    ``path`` names ``rlnTomoParticlesFile`` and ``rlnTomoTomogramsFile`` (relative paths are looked up next to it,
    then in its parent folders, then in the working folder). Only frames marked 1 in ``rlnTomoVisibleFrames`` are
    used; a particle's stack holds either every frame of its tilt series or only the visible ones. See the module
    docstring for the geometry; ``geometry`` (``'auto'``, ``'relion'``, ``'warptools'``) and
    ``coordinate_pixel_size_angstrom`` (unit of ``rlnCoordinateX/Y/Z``) are passed to :func:`particle_positions`.

    Raises
    ------
    InputError
        3-D subtomograms (``rlnTomoSubTomosAre2DStacks`` != 1), a mix of CTF-premultiplied and plain stacks,
        unknown tomograms, missing projection matrices, visible-frame lists of the wrong length, stacks of the wrong
        size.
    """
    from cryoscape.io.mrc import read_header

    path = Path(path)
    blocks = read_star_blocks(path)
    kv = next((b.iloc[0] for b in blocks.values()
               if {"rlnTomoParticlesFile", "rlnTomoTomogramsFile"} <= set(b.columns)), None)
    if kv is None:
        raise InputError("not an optimisation set (no rlnTomoParticlesFile/rlnTomoTomogramsFile)", path)
    ppath = resolve_relative(kv["rlnTomoParticlesFile"], path.parent)
    tpath = resolve_relative(kv["rlnTomoTomogramsFile"], path.parent)
    pblocks, tblocks = read_star_blocks(ppath), read_star_blocks(tpath)
    general = pblocks.get("general")
    if general is None or int(star_numbers(general, "rlnTomoSubTomosAre2DStacks", ppath, 0)[0]) != 1:
        raise InputError("particles are 3-D subtomograms; tomoDRGN-style training needs 2-D tilt-image stacks",
                         ppath, "extract pseudo-subtomograms as 2-D stacks (RELION 5 / WarpTools)")
    if "particles" not in pblocks or "global" not in tblocks:
        raise InputError("missing data_particles / data_global table", ppath if "particles" not in pblocks else tpath)
    parts, glob = pblocks["particles"], tblocks["global"]
    optics = pblocks.get("optics")
    if optics is not None and len(optics):
        groups = star_numbers(optics, "rlnOpticsGroup", ppath, 1).astype(int)
        pg = star_numbers(parts, "rlnOpticsGroup", ppath, groups[0]).astype(int)
        lookup = {g: i for i, g in enumerate(groups)}
        if set(pg) - set(lookup):
            raise InputError(f"particles refer to unknown optics groups {sorted(set(pg) - set(lookup))}", ppath)
        orow = np.array([lookup[g] for g in pg], dtype=np.int64)
    else:
        optics, orow = None, np.zeros(len(parts), np.int64)
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
    pixel = float(apix) if apix is not None else float(optic("rlnImagePixelSize")[0])
    ctf_values = [optic(n, d) for n, d in (("rlnVoltage", None), ("rlnSphericalAberration", None),
                                           ("rlnAmplitudeContrast", None), ("rlnPhaseShift", 0.0))]
    positions = particle_positions(parts, optics, glob, ppath, tpath, geometry, coordinate_pixel_size_angstrom)
    log.info("%s: %s geometry (particle coordinates and the sign of the depth-dependent defocus; docs/tomography.md)",
             ppath, positions.convention)
    A_angles = euler_columns(parts, ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"), ppath)
    A_sub = euler_columns(parts, ("rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi"), ppath)
    A_p = A_sub @ A_angles
    origin = np.stack([star_numbers(parts, f"rlnOrigin{a}Angst", ppath, 0.0) for a in "XYZ"], axis=1)
    origin_tomo = np.einsum("nij,nj->ni", A_sub, origin)
    stack_names = parts["rlnImageName"].astype(str).str.split("@").str[-1].to_numpy() \
        if "rlnImageName" in parts.columns else None
    if stack_names is None:
        raise InputError("missing column rlnImageName (the 2-D stack of each particle)", ppath)
    stacks = np.asarray([str(s) for s in _resolve_many(stack_names, ppath.parent, datadir)], dtype=object)
    visible_all = _vectors(parts["rlnTomoVisibleFrames"], None, "rlnTomoVisibleFrames", ppath) \
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
            per_tilt = {"dfu": star_numbers(tilts, "rlnDefocusU", tpath), "dfv": star_numbers(tilts, "rlnDefocusV", tpath),
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
    images = ImageStack.from_paths_and_indices(cat["file"], cat["local"], lazy=True)
    images._pixel_size = pixel
    pnames = parts["rlnTomoParticleName"].astype(str).to_numpy() if "rlnTomoParticleName" in parts.columns else \
        np.array([f"{names[i]}/{i + 1}" for i in range(len(parts))], dtype=object)
    source = OptimisationSetSource(path, blocks, ppath, pblocks, tpath)
    return TiltSeriesSet(images, pixel, cat["rot"], cat["shift"], ctf, cat["exp"], cat["tilt"],
                         np.asarray(offsets, np.int64), np.asarray(pnames, dtype=object),
                         np.asarray(names, dtype=object), path, "optimisation_set", source,
                         particle_rows=np.arange(len(parts), dtype=np.int64), coordinates_angstrom=centres,
                         particle_rotations=A_p, ctf_premultiplied=premultiplied)


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


# ------------------------------------------------------------------ RELION 5 / WarpTools particle geometry
GEOMETRY_CONVENTIONS = ("auto", "relion", "warptools")
WARPTOOLS_TOMOGRAM_SUFFIX = ".tomostar"  # WarpTools ts_export_particles names every tomogram ROOTNAME.tomostar


def geometry_convention(tomogram_names, requested: str = "auto") -> str:
    """Whose geometry a tomograms file follows: ``'warptools'`` or ``'relion'``.

    ``'auto'``: ``'warptools'`` when every tomogram is named ``*.tomostar`` (WarpTools' ``ts_export_particles``
    writes ``rlnTomoName = ROOTNAME.tomostar``; RELION names tomograms after the tilt series), else ``'relion'``.
    See :func:`particle_positions` and :func:`depth_defocus_sign` for what differs.
    """
    if requested not in GEOMETRY_CONVENTIONS:
        raise InputError(f"unknown geometry convention {requested!r}; choose one of {', '.join(GEOMETRY_CONVENTIONS)}")
    if requested != "auto":
        return requested
    names = [str(n) for n in tomogram_names]
    return "warptools" if names and all(n.endswith(WARPTOOLS_TOMOGRAM_SUFFIX) for n in names) else "relion"


def depth_defocus_sign(grow: pd.Series, convention: str, path: Path) -> float:
    """Factor ``s`` of the depth term: a particle's defocus in tilt ``f`` is ``defocus_f + s * (R_f @ centre)_z``.

    RELION 5 (``Tomogram::getCtf``/``getDepthOffset``): ``s = rlnTomoHand * rlnTomoDefocusSlope`` (slope 1 when
    absent). WarpTools: Warp's own model (``TiltSeries.GetPositionInAllTilts``: defocus = tilt defocus + image-space z
    when ``AreAnglesInverted`` is false, minus it when true) with the hand WarpTools writes for it
    (``RelionParticleSeriesExport.GetRelionHand``: -1 when not inverted, +1 when inverted), i.e. ``s = -rlnTomoHand``.
    """
    if "rlnTomoHand" in grow.index:
        hand = float(grow["rlnTomoHand"])
    else:
        log.warning("%s: no rlnTomoHand for tomogram %s; depth-dependent defocus assumes hand +1", path,
                    grow.get("rlnTomoName", "?"))
        hand = 1.0
    slope = float(grow["rlnTomoDefocusSlope"]) if "rlnTomoDefocusSlope" in grow.index else 1.0
    return (-hand if convention == "warptools" else hand) * slope


def particle_centre_angstrom(row: pd.Series, grow: pd.Series, coordinate_pixel: float, path: Path,
                             tomogram_pixel: float | None = None) -> np.ndarray:
    """Particle coordinate relative to the tomogram centre in Angstrom (before the origin shift).

    ``rlnCenteredCoordinateX/Y/ZAngst`` as written; else ``rlnCoordinateX/Y/Z * coordinate_pixel`` minus half the
    tomogram (``rlnTomoSizeX/Y/Z * tomogram_pixel``, default ``coordinate_pixel``).
    """
    if all(f"rlnCenteredCoordinate{a}Angst" in row.index for a in "XYZ"):
        return np.array([float(row[f"rlnCenteredCoordinate{a}Angst"]) for a in "XYZ"])
    if all(f"rlnCoordinate{a}" in row.index for a in "XYZ") and all(f"rlnTomoSize{a}" in grow.index for a in "XYZ"):
        tpx = coordinate_pixel if tomogram_pixel is None else tomogram_pixel
        return np.array([float(row[f"rlnCoordinate{a}"]) * coordinate_pixel - float(grow[f"rlnTomoSize{a}"]) * tpx / 2
                         for a in "XYZ"])
    raise InputError("particles need rlnCenteredCoordinateX/Y/ZAngst (or rlnCoordinateX/Y/Z with the tomogram size)",
                     path)


@dataclass
class ParticlePositions:
    """Where the particles of an optimisation set sit in their tomograms.

    ``centres_angstrom`` ``(N, 3)``: coordinate relative to the tomogram centre (before the origin shift);
    ``box_angstrom`` ``(N, 3)``: size of each particle's tomogram (NaN where ``rlnTomoSize*`` is absent);
    ``coordinate_pixel_angstrom`` ``(N,)``: the unit taken for ``rlnCoordinate*`` (NaN where centred Angstrom
    coordinates were read); ``convention``: ``'relion'`` or ``'warptools'``.
    """

    centres_angstrom: np.ndarray
    box_angstrom: np.ndarray
    coordinate_pixel_angstrom: np.ndarray
    convention: str

    @property
    def from_first_voxel_angstrom(self) -> np.ndarray:
        """``(N, 3)`` coordinates from the tomogram's first voxel (the frame of the tomogram opened with origin 0)."""
        return self.centres_angstrom + self.box_angstrom / 2


def _per_particle(name: str, parts: pd.DataFrame, optics, orow, glob: pd.DataFrame, tomo_row, ppath: Path,
                  tpath: Path) -> np.ndarray | None:
    """A per-particle value: the particle's own column, else its optics group's, else its tomogram's, else None."""
    if name in parts.columns:
        return star_numbers(parts, name, ppath)
    if optics is not None and name in optics.columns:
        return star_numbers(optics, name, ppath)[orow]
    if name in glob.columns:
        return star_numbers(glob, name, tpath)[tomo_row]
    return None


def particle_positions(parts: pd.DataFrame, optics, glob: pd.DataFrame, ppath: Path, tpath: Path,
                       convention: str = "auto", coordinate_pixel_size: float | None = None) -> ParticlePositions:
    """Particle centres of an optimisation set's particle table (``optics``: its ``data_optics`` or None).

    * ``rlnCenteredCoordinateX/Y/ZAngst`` (RELION 5): Angstrom from the tomogram centre, as written.
    * ``rlnCoordinateX/Y/Z``: pixels from the tomogram's first voxel. The tomogram centre is
      ``rlnTomoSizeX/Y/Z / 2`` pixels of the tomogram's ``rlnTomoTiltSeriesPixelSize`` (``data_global``). The unit
      of the coordinates is ``coordinate_pixel_size`` when given, else

      - ``'relion'``: ``rlnTomoTiltSeriesPixelSize`` of the particle's optics group (RELION 5
        ``ParticleSet::getParticleCoordDecenteredPixel``, RELION 4 files);
      - ``'warptools'``: ``rlnTomoTiltSeriesPixelSize x rlnTomoSubtomogramBinning``, the pixel of the exported
        particles (``rlnImagePixelSize``): WarpTools writes ``position / BinnedPixelSizeMean``
        (``TiltSeries.ReconstructParticleSeries``). Exports before WarpTools commit 7ad2dcc (2026-07-22) give the
        unbinned tilt-series pixel, a binning > 1 and the tomogram size in unbinned pixels; later ones give the
        particle pixel, binning 1 and the size in particle pixels. Both read right this way, while RELION's rule puts
        the particles of the older files in the corner of their tomograms.

    ``convention``: ``'auto'`` (:func:`geometry_convention` of the particles' tomogram names), ``'relion'`` or
    ``'warptools'``. Logs a warning naming the file when particles fall outside their tomograms.
    """
    convention = geometry_convention(parts["rlnTomoName"].astype(str) if "rlnTomoName" in parts.columns else [],
                                     convention)
    n = len(parts)
    if n == 0:
        return ParticlePositions(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), convention)
    if "rlnTomoName" not in parts.columns:
        raise InputError("missing column rlnTomoName", ppath)
    gnames = glob["rlnTomoName"].astype(str).tolist() if "rlnTomoName" in glob.columns else []
    names = parts["rlnTomoName"].astype(str).tolist()
    missing = sorted(set(names) - set(gnames))
    if missing:
        raise InputError(f"particles refer to tomograms {missing[:3]} that {tpath.name} does not define", ppath)
    tomo_row = np.array([gnames.index(t) for t in names], dtype=np.int64)
    if optics is not None and len(optics):
        groups = star_numbers(optics, "rlnOpticsGroup", ppath, 1).astype(int)
        pg = star_numbers(parts, "rlnOpticsGroup", ppath, groups[0]).astype(int)
        lookup = {g: i for i, g in enumerate(groups)}
        if set(pg) - set(lookup):
            raise InputError(f"particles refer to unknown optics groups {sorted(set(pg) - set(lookup))}", ppath)
        orow = np.array([lookup[g] for g in pg], dtype=np.int64)
    else:
        optics, orow = None, np.zeros(n, np.int64)
    ts_px = _per_particle("rlnTomoTiltSeriesPixelSize", parts, optics, orow, glob, tomo_row, ppath, tpath)
    tomo_px = star_numbers(glob, "rlnTomoTiltSeriesPixelSize", tpath)[tomo_row] \
        if "rlnTomoTiltSeriesPixelSize" in glob.columns else ts_px
    centred_in_file = all(f"rlnCenteredCoordinate{a}Angst" in parts.columns for a in "XYZ")
    if coordinate_pixel_size is not None:
        coord_px = np.full(n, float(coordinate_pixel_size))
    elif centred_in_file:
        coord_px = np.full(n, np.nan)
    else:
        if ts_px is None:
            raise InputError("no rlnTomoTiltSeriesPixelSize for the particle coordinates rlnCoordinateX/Y/Z", ppath,
                             "give the coordinate pixel size (--coord-apix)")
        binning = _per_particle("rlnTomoSubtomogramBinning", parts, optics, orow, glob, tomo_row, ppath, tpath)
        coord_px = ts_px * (binning if convention == "warptools" and binning is not None else 1.0)
    if tomo_px is None:
        tomo_px = coord_px
    sizes = np.full((n, 3), np.nan)
    if all(f"rlnTomoSize{a}" in glob.columns for a in "XYZ"):
        sizes = np.stack([star_numbers(glob, f"rlnTomoSize{a}", tpath)[tomo_row] for a in "XYZ"], axis=1)
    box = sizes * np.asarray(tomo_px, np.float64)[:, None]
    if centred_in_file:
        centres = np.stack([star_numbers(parts, f"rlnCenteredCoordinate{a}Angst", ppath) for a in "XYZ"], axis=1)
    elif all(f"rlnCoordinate{a}" in parts.columns for a in "XYZ") and not np.isnan(box).any():
        coords = np.stack([star_numbers(parts, f"rlnCoordinate{a}", ppath) for a in "XYZ"], axis=1)
        centres = coords * coord_px[:, None] - box / 2
    else:
        raise InputError("particles need rlnCenteredCoordinateX/Y/ZAngst (or rlnCoordinateX/Y/Z with the tomogram "
                         "size rlnTomoSizeX/Y/Z)", ppath)
    outside = np.any(np.abs(centres) > 0.55 * box, axis=1)  # NaN box: never outside
    if outside.any():
        log.warning("%s: %d of %d particles lie outside their tomograms (rlnTomoSizeX/Y/Z x rlnTomoTiltSeriesPixelSize,"
                    " coordinates read the %s way); check the coordinate pixel size", ppath, int(outside.sum()), n,
                    convention)
    return ParticlePositions(centres, box, coord_px, convention)


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
    _write_blocks({"general": {"rlnTomoSubTomosAre2DStacks": 1}, "optics": optics, "particles": parts},
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
        table = {f"rlnTomoProj{a}": ["[" + ",".join(f"{v:.8f}" for v in P[f, j]) + "]" for f in range(len(P))]
                 for j, a in enumerate("XYZW")}
        table.update(rlnDefocusU=t.defocus_u_angstrom, rlnDefocusV=t.defocus_v_angstrom,
                     rlnDefocusAngle=t.astigmatism_angle_deg,
                     rlnCtfScalefactor=np.cos(np.radians(t.tilt_deg)),
                     rlnMicrographPreExposure=t.pre_exposure_e_per_angstrom2,
                     rlnTomoNominalStageTiltAngle=t.tilt_deg)
        tblocks[t.name] = pd.DataFrame(table)
    _write_blocks(tblocks, out / "tomograms.star")
    return _write_blocks({"optimisation_set": {"rlnTomoParticlesFile": "particles_tomo.star",
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
    _write_blocks(pblocks, out / "particles.star")
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
    return _write_blocks(blocks, out / "particles_optimisation_set.star")
