"""RELION 5 / WarpTools particle geometry in tomograms: whose convention a file follows, particle centres, the
sign of the depth-dependent defocus (see ``cryoscape.io.tilt_series`` and ``docs/tomography.md``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryoscape.errors import InputError
from cryoscape.io.star import star_numbers, tomo_optics_rows

log = logging.getLogger("cryoscape.io.tilt_series")

__all__ = ["GEOMETRY_CONVENTIONS", "geometry_convention", "depth_defocus_sign", "particle_centre_angstrom",
           "ParticlePositions", "particle_positions"]

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
    optics, orow = tomo_optics_rows(parts, optics, ppath)
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
