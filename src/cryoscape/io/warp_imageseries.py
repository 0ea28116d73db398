"""Warp/M image-series STAR files: one row per tilt image (RELION 3.0 table); reader and writer.

Exposure is ``-rlnCtfBfactor / 4`` and stage tilt ``arccos(rlnCtfScalefactor)`` (Warp's encoding, not applied to the
CTF); see ``cryoscape.io.tilt_series`` for the conventions.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cryoscape.errors import InputError
from cryoscape.io.ctf_flags import PREMULTIPLIED_COLUMN, star_particles_premultiplied
from cryoscape.io.imagestack import ImageStack
from cryoscape.io.tilt_set import TiltSeriesSet, group_images
from cryoscape.metadata import CTFParams

log = logging.getLogger("cryoscape.io.tilt_series")

__all__ = ["read_image_series_star", "write_image_series_star"]


def _first_column(table: pd.DataFrame, names) -> str | None:
    return next((n for n in names if n in table.columns), None)


def read_image_series_star(path: str | Path, datadir=None, apix: float | None = None,
                           coordinate_pixel_size_angstrom: float | None = None, ctf_overrides=None) -> TiltSeriesSet:
    """Read a Warp/M image-series STAR file (one row per tilt image).

    Particle id: ``rlnGroupName`` (Warp's ``tomogramID_particleID``), else ``rlnTomoParticleName``, else
    ``rlnGroupNumber``. Tomogram: ``rlnTomoName`` or ``rlnMicrographName`` when present, else the part of the
    particle id before its last ``_``. Exposure ``-rlnCtfBfactor / 4``; tilt ``arccos(rlnCtfScalefactor)`` (or
    ``rlnTomoNominalStageTiltAngle``). Coordinates ``rlnCoordinateX/Y/Z`` (pixels, optional) are scaled by
    ``coordinate_pixel_size_angstrom`` (default: each row's image pixel size). Rows of several pixel sizes (optics
    groups) are resampled on reading to the finest, or to ``apix``, keeping the box, as single particles are
    (:func:`cryoscape.io.particles.load_particles`).

    Raises
    ------
    InputError
        Everything :func:`cryoscape.io.star.read_star_particles` reports, a missing particle-id column, missing
        poses or CTF.
    """
    from cryoscape.io.particles import _common_pixel_size
    from cryoscape.io.star import read_star_particles

    sp = read_star_particles(path, datadir=datadir, apix=apix, allow_mixed_pixel_sizes=True, one_size_per_stack=True)
    path = sp.path
    # several pixel sizes (optics groups): every image resampled on reading to the finest, or --apix, as for
    # single particles; this sets each row's own pixel size for pixel-unit origins first
    file_images, pixel = _common_pixel_size(sp, ImageStack.from_paths_and_indices(sp.stack_paths, sp.stack_indices,
                                                                                  lazy=True), apix, path)
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
        scale = coordinate_pixel_size_angstrom or np.asarray(sp.pixel_size_angstrom, np.float64)[first, None]
        coords = np.stack([sp.values(f"rlnCoordinate{a}") for a in "XYZ"], axis=1)[first] * scale
    images = file_images.subset(order)
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
