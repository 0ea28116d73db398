"""Density maps from atomic models (PDB or mmCIF, read with gemmi).

Each non-hydrogen atom of the first model becomes a Gaussian of integrated weight ``Z * occupancy`` (Z = atomic
number), rendered at a resolution ``d`` as in Chimera's ``molmap``: ``sigma = d / (pi sqrt 2)``
(:func:`cryoscape.simulate.volumes.render_gaussians`). Waters and hydrogens are removed (models differ in
whether they carry them); atomic B-factors are ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryoscape.errors import InputError
from cryoscape.simulate.volumes import render_gaussians

__all__ = ["read_atoms", "atomic_volume", "check_fits_box", "states_from_atomic"]


def read_atoms(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the atoms of the first model of a PDB/mmCIF file.

    Parameters
    ----------
    path : PDB (``.pdb``, ``.ent``) or mmCIF (``.cif``, ``.mmcif``) file, optionally gzipped.

    Returns
    -------
    coords_angstrom : float64 ``(n, 3)``, ``(x, y, z)`` in Angstrom, in the model's frame.
    weights : float64 ``(n,)``, atomic number times occupancy.
    """
    import gemmi

    path = Path(path)
    if not path.is_file():
        raise InputError("atomic model not found", path)
    try:
        st = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError, OSError) as exc:
        raise InputError(f"cannot read atomic model ({exc})", path, "give a PDB or mmCIF file") from exc
    if len(st) == 0:
        raise InputError("the atomic model has no models", path)
    st.remove_waters()
    st.remove_hydrogens()
    coords, weights = [], []
    for chain in st[0]:
        for residue in chain:
            for atom in residue:
                coords.append((atom.pos.x, atom.pos.y, atom.pos.z))
                weights.append(atom.element.atomic_number * atom.occ)
    if not coords:
        raise InputError("the atomic model has no (non-hydrogen, non-water) atoms", path)
    return np.asarray(coords, dtype=np.float64), np.asarray(weights, dtype=np.float64)


def check_fits_box(coords_angstrom: np.ndarray, D: int, pixel_size_angstrom: float, path=None) -> None:
    """Raise :class:`InputError` if centred atoms reach outside the sphere of radius ``D/2`` pixels.

    Parameters
    ----------
    coords_angstrom : ``(n, 3)`` atom positions relative to the box centre, Angstrom.
    D, pixel_size_angstrom : box size (voxels) and voxel size (Angstrom).
    """
    radius = float(np.max(np.linalg.norm(coords_angstrom, axis=1)))
    limit = 0.5 * D * pixel_size_angstrom
    if radius > limit:
        raise InputError(
            f"the model reaches {radius:.0f} A from its centre but the box radius is only {limit:.0f} A",
            path,
            f"use a larger box (-D >= {int(np.ceil(2 * radius / pixel_size_angstrom / 2) * 2 + 2)}) or pixel size",
        )


def atomic_volume(
    coords_angstrom: np.ndarray,
    weights: np.ndarray,
    D: int,
    pixel_size_angstrom: float,
    resolution_angstrom: float,
    center_angstrom: np.ndarray | None = None,
) -> np.ndarray:
    """Render atoms as a density map at a resolution.

    Parameters
    ----------
    coords_angstrom : ``(n, 3)`` atom positions ``(x, y, z)`` in Angstrom.
    weights : ``(n,)`` integrated weight per atom (e.g. from :func:`read_atoms`).
    D : int, even box size in voxels.
    pixel_size_angstrom : float, voxel size in Angstrom.
    resolution_angstrom : float, resolution of the map (Angstrom), ``sigma = 0.225 * resolution``.
    center_angstrom : ``(3,)``, optional; the model point placed at the box centre (default: the weighted
        centre of mass).

    Returns
    -------
    float32 ``(D, D, D)`` map indexed ``[z, y, x]``, non-negative.
    """
    coords = np.asarray(coords_angstrom, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if center_angstrom is None:
        center_angstrom = (coords * weights[:, None]).sum(0) / weights.sum()
    return render_gaussians(
        coords - np.asarray(center_angstrom, dtype=np.float64),
        0.0,
        weights,
        D,
        pixel_size_angstrom,
        resolution_angstrom=resolution_angstrom,
    )


def states_from_atomic(paths, D: int, pixel_size_angstrom: float, resolution_angstrom: float | None = None):
    """One state per atomic model, all centred by the centre of mass of the first (relative motions are kept).

    Parameters
    ----------
    paths : sequence of PDB/mmCIF files.
    D : int, even box size; pixel_size_angstrom : float, voxel size (Angstrom).
    resolution_angstrom : float, optional; default ``2 * pixel_size_angstrom`` (Nyquist).

    Returns
    -------
    :class:`cryoscape.simulate.volumes.StateSet` (equal populations, coordinate ``i / (n - 1)``).
    """
    from cryoscape.simulate.volumes import StateSet

    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("no atomic models given")
    if D % 2 or D < 8:
        raise InputError(f"box size {D} must be even and at least 8")
    resolution = 2.0 * pixel_size_angstrom if resolution_angstrom is None else float(resolution_angstrom)
    models = [read_atoms(p) for p in paths]
    xyz0, w0 = models[0]
    center = (xyz0 * w0[:, None]).sum(0) / w0.sum()
    for p, (xyz, _) in zip(paths, models):
        check_fits_box(xyz - center, D, pixel_size_angstrom, p)

    def render(state: int) -> np.ndarray:
        xyz, w = models[state]
        return atomic_volume(xyz, w, D, pixel_size_angstrom, resolution, center)

    n = len(paths)
    coords = np.arange(n) / max(n - 1, 1)
    return StateSet("atomic", int(D), float(pixel_size_angstrom), render, coords.astype(np.float64), np.ones(n))
