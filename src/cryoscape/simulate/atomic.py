"""Density maps from atomic models (PDB or mmCIF, read with gemmi).

Each non-hydrogen atom of the first model becomes a Gaussian of integrated weight ``Z * occupancy`` (Z = atomic
number), rendered at a resolution ``d`` as in Chimera's ``molmap``: ``sigma = d / (pi sqrt 2)``
(:func:`cryoscape.simulate.volumes.render_gaussians`). Waters and hydrogens are removed (models differ in
whether they carry them); atomic B-factors are ignored.

Motion mode (:func:`states_from_motion`): one model, a chosen chain or residue range of it rotated about a hinge
axis over a range of angles (as CryoBench's IgG-1D varies a dihedral), one map per angle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryoscape.errors import InputError
from cryoscape.simulate.volumes import render_gaussians

__all__ = ["read_atoms", "read_atom_table", "atomic_volume", "check_fits_box", "states_from_atomic",
           "parse_selection", "select_atoms", "rotate_atoms", "motion_coordinates", "states_from_motion"]


def read_atoms(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the atoms of the first model of a PDB/mmCIF file (see :func:`read_atom_table`)."""
    coords, weights, _, _ = read_atom_table(path)
    return coords, weights


def read_atom_table(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read the atoms of the first model of a PDB/mmCIF file, with their chain and residue number.

    Parameters
    ----------
    path : PDB (``.pdb``, ``.ent``) or mmCIF (``.cif``, ``.mmcif``) file, optionally gzipped.

    Returns
    -------
    coords_angstrom : float64 ``(n, 3)``, ``(x, y, z)`` in Angstrom, in the model's frame.
    weights : float64 ``(n,)``, atomic number times occupancy.
    chains : str ``(n,)``, chain name of each atom; residues : int64 ``(n,)``, its residue sequence number.
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
    coords, weights, chains, residues = [], [], [], []
    for chain in st[0]:
        for residue in chain:
            for atom in residue:
                coords.append((atom.pos.x, atom.pos.y, atom.pos.z))
                weights.append(atom.element.atomic_number * atom.occ)
                chains.append(chain.name)
                residues.append(residue.seqid.num)
    if not coords:
        raise InputError("the atomic model has no (non-hydrogen, non-water) atoms", path)
    return (np.asarray(coords, dtype=np.float64), np.asarray(weights, dtype=np.float64), np.asarray(chains),
            np.asarray(residues, dtype=np.int64))


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
    for p, (xyz, _) in zip(paths, models, strict=True):
        check_fits_box(xyz - center, D, pixel_size_angstrom, p)

    def render(state: int) -> np.ndarray:
        xyz, w = models[state]
        return atomic_volume(xyz, w, D, pixel_size_angstrom, resolution, center)

    n = len(paths)
    coords = np.arange(n) / max(n - 1, 1)
    return StateSet("atomic", int(D), float(pixel_size_angstrom), render, coords.astype(np.float64), np.ones(n))


# --------------------------------------------------------------------------------------------------------------
# Motion mode


def parse_selection(text: str) -> tuple[str, int | None, int | None]:
    """``"B"`` (a whole chain) or ``"B:10-40"`` (residues 10 to 40 of chain B, inclusive) as
    ``(chain, first, last)`` (``None`` for a whole chain).
    """
    chain, _, rng = str(text).partition(":")
    if not chain:
        raise InputError(f"bad selection {text!r}", hint="give a chain (B) or a chain and residues (B:10-40)")
    if not rng:
        return chain, None, None
    first, sep, last = rng.partition("-")
    try:
        lo, hi = int(first), int(last if sep else first)
    except ValueError:
        raise InputError(f"bad residue range in {text!r}", hint="e.g. B:10-40") from None
    if lo > hi:
        raise InputError(f"empty residue range in {text!r}")
    return chain, lo, hi


def select_atoms(chains: np.ndarray, residues: np.ndarray, selection: str, path=None) -> np.ndarray:
    """Boolean ``(n,)`` mask of the atoms of ``selection`` (see :func:`parse_selection`); refuses an empty one."""
    chain, lo, hi = parse_selection(selection)
    mask = np.asarray(chains) == chain
    if lo is not None:
        mask &= (residues >= lo) & (residues <= hi)
    if not mask.any():
        raise InputError(f"the selection {selection!r} matches no atom (chains: {sorted(set(chains.tolist()))})",
                         path)
    if mask.all():
        raise InputError(f"the selection {selection!r} holds every atom: nothing stays fixed", path)
    return mask


def rotate_atoms(coords: np.ndarray, moving: np.ndarray, axis_point, axis_direction, angle_deg: float) -> np.ndarray:
    """Rotate the atoms ``coords[moving]`` by ``angle_deg`` (right-handed about ``axis_direction``) about the axis
    through ``axis_point`` (Angstrom); the other atoms are returned unchanged (a copy).
    """
    from scipy.spatial.transform import Rotation

    u = np.asarray(axis_direction, dtype=np.float64)
    norm = np.linalg.norm(u)
    if not norm > 0:
        raise InputError("the hinge axis has zero length", hint="give two different points")
    p = np.asarray(axis_point, dtype=np.float64)
    out = np.array(coords, dtype=np.float64, copy=True)
    rot = Rotation.from_rotvec(np.deg2rad(angle_deg) * u / norm)
    out[moving] = rot.apply(out[moving] - p) + p
    return out


def motion_coordinates(coords: np.ndarray, moving: np.ndarray, axis_points, angles_deg) -> list[np.ndarray]:
    """Atom coordinates ``(n, 3)`` at each angle of ``angles_deg``, rotating ``coords[moving]`` about the axis
    from ``axis_points[0]`` to ``axis_points[1]`` (Angstrom, the model's frame).
    """
    a, b = np.asarray(axis_points, dtype=np.float64).reshape(2, 3)
    return [rotate_atoms(coords, moving, a, b - a, float(t)) for t in angles_deg]


def states_from_motion(path, selection: str, axis_points, angle_range=(-30.0, 30.0), n_states: int = 50,
                       D: int = 64, pixel_size_angstrom: float = 2.0, resolution_angstrom: float | None = None):
    """Conformations of one atomic model whose ``selection`` (a chain, or ``CHAIN:FIRST-LAST`` residues) turns
    about a hinge axis.

    Parameters
    ----------
    path : PDB/mmCIF file.
    selection : the atoms that move (:func:`parse_selection`).
    axis_points : two points ``(x, y, z)`` in Angstrom in the model's frame; the axis runs from the first to the
        second, and a positive angle turns right-handed about that direction.
    angle_range : ``(first, last)`` angles in degrees; ``n_states`` evenly spaced angles, ends included.
    D, pixel_size_angstrom, resolution_angstrom : as :func:`states_from_atomic`.

    Returns
    -------
    :class:`cryoscape.simulate.volumes.StateSet` named ``"motion"``, equal populations, coordinate
    ``(angle - first) / (last - first)`` and ``extra["angle_deg"]`` (copied per particle into ``labels.npz``).
    Every state is centred by the centre of mass of the model as read (the moving part's motion is kept).
    """
    from cryoscape.simulate.volumes import StateSet

    if D % 2 or D < 8:
        raise InputError(f"box size {D} must be even and at least 8")
    if n_states < 1:
        raise InputError(f"the number of conformations must be at least 1, got {n_states}")
    first, last = (float(a) for a in angle_range)
    resolution = 2.0 * pixel_size_angstrom if resolution_angstrom is None else float(resolution_angstrom)
    xyz, w, chains, residues = read_atom_table(path)
    moving = select_atoms(chains, residues, selection, path)
    angles = np.linspace(first, last, n_states) if n_states > 1 else np.array([first])
    center = (xyz * w[:, None]).sum(0) / w.sum()
    confs = motion_coordinates(xyz, moving, axis_points, angles)
    for c in confs:
        check_fits_box(c - center, D, pixel_size_angstrom, path)

    def render(state: int) -> np.ndarray:
        return atomic_volume(confs[state], w, D, pixel_size_angstrom, resolution, center)

    span = last - first
    coords = (angles - first) / span if span != 0 else np.zeros(n_states)
    return StateSet("motion", int(D), float(pixel_size_angstrom), render, coords.astype(np.float64),
                    np.ones(n_states), extra={"angle_deg": angles.astype(np.float64)})
