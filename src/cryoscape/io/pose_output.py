"""Particle files with new poses: the input's rows and every column kept, poses and origins replaced.

Used by ``cryoscape write-poses`` and ``filter`` (poses learned by ``train --refine-poses`` or estimated by
``cryoscape abinit``, whose input often has no poses at all). Conventions (``docs/conventions.md``):

* STAR: ``rlnAngleRot/Tilt/Psi`` (RELION ZYZ Euler angles, degrees, from the matrices ``A``); origins as the file
  has them: ``rlnOriginXAngst/YAngst`` (Angstrom, RELION 3.1+) or RELION 3.0 ``rlnOriginX/Y`` (pixels of each
  particle's own pixel size); a file with neither gets ``rlnOriginXAngst/YAngst`` (3.1+) or ``rlnOriginX/Y`` (3.0).
* cryoSPARC ``.cs``: ``<alignments>/pose`` is the rotation vector ``r`` with ``A = expmap(r)^T``,
  ``<alignments>/shift`` pixels of ``<alignments>/psize_A`` (else ``blob/psize_A``), with the sign of RELION's
  origin; a file without the alignment fields gets ``alignments3D/pose``, ``/shift`` and ``/psize_A``.

Other combinations (a ``.star`` from a ``.cs`` input, inputs that are stacks with ``pose.pkl``) write new metadata
with :func:`cryoscape.io.particles.write_particle_subset` (as ``filter`` does) carrying the new poses.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from cryoscape.errors import InputError
from cryoscape.io.cs import CSParticles, _save
from cryoscape.io.particles import ParticleSet, write_particle_subset
from cryoscape.io.star import StarParticles, _write_blocks
from cryoscape.metadata import Poses

__all__ = ["write_particles_with_poses"]


def _star_with_poses(src: StarParticles, rows: np.ndarray, poses: Poses, out_path: Path) -> Path:
    from cryoscape.imaging.rotations import matrix_to_euler_relion

    table = src.table.iloc[rows].reset_index(drop=True).copy()
    angles = matrix_to_euler_relion(poses.rotations)
    for j, name in enumerate(("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")):
        table[name] = angles[:, j]
    shifts = np.asarray(poses.shifts_angstrom, dtype=np.float64)
    columns = set(table.columns)
    pixel_origins = ("rlnOriginX" in columns or "rlnOriginY" in columns) or (
        src.version == "3.0" and "rlnOriginXAngst" not in columns)
    if "rlnOriginXAngst" in columns or "rlnOriginYAngst" in columns or not pixel_origins:
        table["rlnOriginXAngst"], table["rlnOriginYAngst"] = shifts[:, 0], shifts[:, 1]
    if pixel_origins:  # RELION 3.0: pixels of each particle's own pixel size (as the reader converted them)
        px = shifts / np.asarray(src.pixel_size_angstrom, dtype=np.float64)[rows][:, None]
        table["rlnOriginX"], table["rlnOriginY"] = px[:, 0], px[:, 1]
    blocks = dict(src.blocks)
    blocks[src.particles_key] = table
    return _write_blocks(blocks, out_path, relion31=src.version == "3.1+")


def _cs_with_poses(src: CSParticles, rows: np.ndarray, poses: Poses, out_path: Path) -> Path:
    from cryoscape.imaging.rotations import matrix_to_cryosparc_pose

    a = src.alignments
    array = src.array[rows]
    fields = set(array.dtype.names or ())
    extra = [(f"{a}/{name}", "<f4", shape) for name, shape in (("pose", (3,)), ("shift", (2,)), ("psize_A", ()))
             if f"{a}/{name}" not in fields]
    if extra:  # poses came from elsewhere (pose.pkl): add the alignment fields
        grown = np.zeros(len(array), dtype=np.dtype(array.dtype.descr + [(n, t, s) if s else (n, t)
                                                                         for n, t, s in extra]))
        for name in array.dtype.names:
            grown[name] = array[name]
        if f"{a}/psize_A" not in fields:
            grown[f"{a}/psize_A"] = src.pixel_size_angstrom[rows]
        array = grown
    else:
        array = array.copy()
    psize = np.asarray(array[f"{a}/psize_A"], dtype=np.float64)
    psize = np.where(psize > 0, psize, np.asarray(src.pixel_size_angstrom, dtype=np.float64)[rows])
    array[f"{a}/pose"] = matrix_to_cryosparc_pose(poses.rotations)
    array[f"{a}/shift"] = np.asarray(poses.shifts_angstrom, dtype=np.float64) / psize[:, None]
    return _save(array, out_path)


def write_particles_with_poses(particles: ParticleSet, positions, poses: Poses, out_path: str | Path) -> Path:
    """Write the particles at ``positions`` (positions in ``particles``) with ``poses`` to ``out_path``.

    Parameters
    ----------
    particles : the run's input as loaded (its ``source`` keeps every row and column of the file).
    positions : int array ``(n,)``; ``poses`` gives their new poses (``len(poses) == n``).
    out_path : ``.star`` or ``.cs``.

    A ``.star`` from a STAR input (``.cs`` from a ``.cs`` input) is the input's rows at ``positions`` with every
    block, column and optics group kept and only the angles and origins replaced (see the module docstring).
    """
    out_path = Path(out_path)
    idx = np.atleast_1d(np.arange(len(particles))[np.asarray(positions, dtype=np.int64)])
    if len(poses) != len(idx):
        raise ValueError(f"{len(poses)} poses for {len(idx)} particles")
    suffix = out_path.suffix.lower()
    if suffix not in (".star", ".cs"):
        raise InputError(f"cannot write poses as {suffix or 'a file without suffix'!r}", out_path,
                         "name a .star (RELION) or .cs (cryoSPARC) file")
    rows = np.asarray(particles.source_indices)[idx]
    if suffix == ".star" and isinstance(particles.source, StarParticles):
        return _star_with_poses(particles.source, rows, poses, out_path)
    if suffix == ".cs" and isinstance(particles.source, CSParticles):
        return _cs_with_poses(particles.source, rows, poses, out_path)
    sub = dataclasses.replace(particles.subset(idx), source=None,
                              source_indices=np.arange(len(idx), dtype=np.int64), poses=poses)
    return write_particle_subset(sub, np.arange(len(idx)), out_path)
