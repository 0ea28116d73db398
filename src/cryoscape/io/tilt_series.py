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

The modules: the container :mod:`cryoscape.io.tilt_set`, Warp/M image series :mod:`cryoscape.io.warp_imageseries`,
RELION 5 / WarpTools optimisation sets :mod:`cryoscape.io.optimisation_set` and their particle geometry
:mod:`cryoscape.io.tomo_geometry`, generic STAR tables in :mod:`cryoscape.io.star`. This module reads any of them
(:func:`load_tilt_series`) and writes subsets in the source's format; the names of those modules stay importable
from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np

from cryoscape.errors import InputError
from cryoscape.io.optimisation_set import (
    OptimisationSetSource,
    OptimisationSetTables,
    TomogramGeometry,
    parse_optimisation_set,
    read_optimisation_set,
    write_optimisation_set,
    write_optimisation_subset,
)
from cryoscape.io.star import StarParticles, euler_columns, read_star_blocks, resolve_relative, star_numbers
from cryoscape.io.tilt_set import TiltSeriesSet, group_images
from cryoscape.io.tomo_geometry import (
    GEOMETRY_CONVENTIONS,
    ParticlePositions,
    depth_defocus_sign,
    geometry_convention,
    particle_centre_angstrom,
    particle_positions,
)
from cryoscape.io.warp_imageseries import read_image_series_star, write_image_series_star

FORMATS = ("auto", "imageseries", "optimisation_set")

__all__ = ["FORMATS", "TiltSeriesSet", "detect_format", "load_tilt_series", "read_image_series_star",
           "write_image_series_star", "read_optimisation_set", "write_optimisation_set", "write_tilt_subset",
           "group_images", "TomogramGeometry", "read_star_blocks", "resolve_relative", "star_numbers",
           "euler_columns", "particle_centre_angstrom", "GEOMETRY_CONVENTIONS", "geometry_convention",
           "depth_defocus_sign", "ParticlePositions", "particle_positions", "OptimisationSetSource",
           "OptimisationSetTables", "parse_optimisation_set", "write_optimisation_subset", "write_tilt_poses"]


def detect_format(path: str | Path) -> str:
    """``'optimisation_set'`` when the STAR file names a particles and a tomograms file, else ``'imageseries'``."""
    path = Path(path)
    if not path.is_file():
        raise InputError("tilt-series STAR file not found", path)
    for block in read_star_blocks(path).values():
        if "rlnTomoParticlesFile" in block.columns and "rlnTomoTomogramsFile" in block.columns:
            return "optimisation_set"
    return "imageseries"


def load_tilt_series(path: str | Path, fmt: str = "auto", datadir=None, apix: float | None = None,
                     coordinate_pixel_size_angstrom: float | None = None, ctf_overrides=None) -> TiltSeriesSet:
    """Read a tilt-series particle set; ``fmt``: ``'auto'`` (by content), ``'imageseries'``, ``'optimisation_set'``.

    ``ctf_overrides`` (:class:`cryoscape.metadata.CTFOverrides`: ``--kv/--cs/--amp-contrast/--ps``) replace the
    file's optics values and fill in those it lacks (a missing amplitude contrast is otherwise 0.1, with a warning).
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown tilt-series format {fmt!r}; choose one of {', '.join(FORMATS)}")
    kind = detect_format(path) if fmt == "auto" else fmt
    if kind == "optimisation_set":
        return read_optimisation_set(path, datadir=datadir, apix=apix, ctf_overrides=ctf_overrides)
    return read_image_series_star(path, datadir=datadir, apix=apix,
                                  coordinate_pixel_size_angstrom=coordinate_pixel_size_angstrom,
                                  ctf_overrides=ctf_overrides)


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

        assert tilts.image_rows is not None  # filled in by TiltSeriesSet.__post_init__
        rows = tilts.image_rows[tilts.image_indices(p)]
        if rows.size and rows.min() < 0:
            raise InputError("these tilt images were not read from a STAR file; cannot write a subset",
                             tilts.source_path)
        # an image series keeps the StarParticles it was read from; an optimisation set its tables
        return write_star_subset(cast(StarParticles, tilts.source), rows, out_dir / "particles.star")
    assert tilts.particle_rows is not None  # filled in by TiltSeriesSet.__post_init__
    return write_optimisation_subset(cast(OptimisationSetTables, tilts.source), tilts.particle_rows[p], out_dir)


def write_tilt_poses(tilts: TiltSeriesSet, particles, rotations: np.ndarray, shifts_angstrom: np.ndarray,
                     out_path: str | Path) -> Path:
    """Write the images of the particles at ``particles`` (positions in ``tilts``) with new per-image poses: the
    input's image-series rows (every column and block kept, particle by particle) with ``rlnAngleRot/Tilt/Psi`` of
    ``rotations`` ``(K, 3, 3)`` and the origins ``shifts_angstrom`` ``(K, 2)`` (one row per image of those
    particles, in :meth:`TiltSeriesSet.image_indices` order). Image series only: an optimisation set keeps its poses
    per particle in the tomogram frame and is refused in one line.
    """
    from cryoscape.io.pose_output import _star_with_poses
    from cryoscape.metadata import Poses

    out_path = Path(out_path)
    if tilts.source_format != "imageseries":
        raise InputError("per-tilt poses can be written to Warp/M image-series STAR files only, not to "
                         f"{tilts.source_format} input", tilts.source_path)
    if out_path.suffix.lower() != ".star":
        raise InputError("tilt-series poses are written to a .star file", out_path)
    img = tilts.image_indices(np.atleast_1d(np.arange(len(tilts))[particles]))
    if len(img) != len(rotations) or len(img) != len(shifts_angstrom):
        raise InputError(f"{len(rotations)} poses for the {len(img)} images of these particles", tilts.source_path)
    assert tilts.image_rows is not None  # filled in by TiltSeriesSet.__post_init__
    rows = tilts.image_rows[img]
    if rows.size and rows.min() < 0:
        raise InputError("these tilt images were not read from a STAR file; cannot write their poses",
                         tilts.source_path)
    return _star_with_poses(cast(StarParticles, tilts.source), rows, Poses(np.asarray(rotations, np.float64),
                            np.asarray(shifts_angstrom, np.float64)), out_path)
