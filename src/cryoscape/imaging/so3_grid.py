"""Uniform hierarchical grids of rotations (SO(3)) for pose search: HEALPix viewing directions x in-plane angles.

Level ``k`` (``k >= 0``) is the product of

* the ``12 * 4^k`` HEALPix pixel centres at ``nside = 2^k`` (NESTED ordering, ``healpy.pix2ang``) as viewing
  directions ``(tilt, rot) = (theta, phi)``, i.e. the third row of RELION's ``A`` is the pixel's unit vector, and
* ``6 * 2^k`` in-plane angles: bin centres ``(j + 1/2) * 360 / (6 * 2^k) - 180`` degrees, measured from a
  frame that is smooth over each of the 12 HEALPix base pixels: RELION's ``psi`` is that angle minus ``rot`` for
  the 4 northern base pixels, plus ``rot`` for the 4 southern ones and unchanged for the 4 equatorial ones. (ZYZ's
  own ``psi`` turns with ``rot`` near the poles, where HEALPix pixels span large ``rot`` ranges; with it a child
  lies up to 26 degrees from its level-2 parent, against 10 degrees with this frame.)

giving ``72 * 8^k`` rotations (72, 576, 4608, 36864, ... for levels 0, 1, 2, 3). Rotations are RELION matrices
``A = euler_relion_to_matrix(rot, tilt, psi)`` (volume -> image frame, ``docs/conventions.md``) with
``(tilt, rot)`` the pixel's ``(theta, phi)``, so the third row of ``A`` is the pixel's unit vector (the viewing
direction); grid point ``i`` is direction ``i // n_psi`` (NESTED pixel index) and in-plane angle ``i % n_psi``.

Spacing. A HEALPix pixel has the area ``4 pi / (12 * 4^k)``, so its side is ``sqrt(pi / 3) / 2^k`` rad
(``58.6 / 2^k`` degrees, ``healpy.nside2resol``) and the psi step is ``60 / 2^k`` degrees: the grid is a lattice of
``~60 / 2^k`` degrees in every direction of SO(3). As a check: SO(3) with the rotation-angle (geodesic) metric has
volume ``8 pi^2`` (Haar measure ``sin(tilt) d rot d tilt d psi``), so each of the ``72 * 8^k`` cells has volume
``8 pi^2 / (72 * 8^k)``, a cube of side ``(pi^2 / 9)^(1/3) / 2^k`` rad = ``59.1 / 2^k`` degrees.
:func:`grid_spacing_deg` returns ``60 / 2^k``. Covering radius (the largest geodesic distance from any rotation to
its nearest grid point): by the triangle inequality at most the pixel radius (``healpy.max_pixrad``: 48.2, 27.6,
14.6, 7.5 degrees for k = 0..3) plus half a psi step; measured over 200000, 100000, 20000, 3000 uniform random
rotations it is 55.9, 27.3, 12.6, 5.9 degrees for k = 0..3 (0.93, 0.91, 0.84, 0.79 x the spacing), so
:func:`covering_radius_deg` states the spacing ``60 / 2^k`` itself. The mean distance is ``~0.47 x`` the spacing
(28.3, 14.1, 7.0, 3.5 degrees): both halve with each level (``tests/test_so3_grid.py``).

Hierarchy (local refinement): grid point ``(pix, j)`` of level ``k`` has the 8 children ``(4 pix + c, 2 j + d)``
(``c`` in 0..3, ``d`` in 0..1) at level ``k + 1``: the 4 NESTED sub-pixels of its direction times the 2 halves
of its psi bin, so every child lies inside its parent's cell (its direction inside the parent pixel, its
in-plane angle inside the parent's bin). Children lie within 28.8, 18.3, 10.1 degrees (0.48, 0.61, 0.67 x the
parent's spacing) of their parent for k = 0, 1, 2, and 100 %, 100 %, 99 % of them have their parent as the
nearest point of level ``k``. :func:`local_grid` gives a cube of rotations of any spacing around arbitrary
rotations (``A' = exp([w]x) @ A``, the image-frame perturbation of ``cryoscape.models.poses``).

All functions take and return numpy arrays (float64 angles in degrees, matrices ``(..., 3, 3)``, int64 indices);
convert with ``torch.from_numpy`` for batched matrix products.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial.transform import Rotation

from cryoscape.imaging.rotations import euler_relion_to_matrix, matrix_to_quaternion

__all__ = [
    "MAX_LEVEL",
    "n_directions",
    "n_psi",
    "grid_size",
    "grid_spacing_deg",
    "covering_radius_deg",
    "grid_directions",
    "grid_euler",
    "grid_rotations",
    "child_indices",
    "parent_indices",
    "local_grid",
    "geodesic_distance_deg",
    "nearest_grid_point",
]

MAX_LEVEL = 6  # 72 * 8^6 = 18.9 million rotations: beyond that a full grid is never wanted


def _check_level(level: int) -> int:
    k = int(level)
    if k != level or not 0 <= k <= MAX_LEVEL:
        raise ValueError(f"grid level must be an integer in [0, {MAX_LEVEL}], got {level}")
    return k


def n_directions(level: int) -> int:
    """Number of viewing directions ``12 * 4^level`` (HEALPix pixels at ``nside = 2^level``)."""
    return 12 * 4 ** _check_level(level)


def n_psi(level: int) -> int:
    """Number of in-plane angles ``6 * 2^level`` (step ``60 / 2^level`` degrees)."""
    return 6 * 2 ** _check_level(level)


def grid_size(level: int) -> int:
    """Number of rotations at ``level``: ``72 * 8^level`` (72, 576, 4608, 36864, ...)."""
    return n_directions(level) * n_psi(level)


def grid_spacing_deg(level: int) -> float:
    """Nominal spacing of the grid at ``level`` in degrees: ``60 / 2^level`` (the psi step; see the module doc)."""
    return 60.0 / 2 ** _check_level(level)


def covering_radius_deg(level: int) -> float:
    """Bound (degrees) on the geodesic distance from any rotation to its nearest grid point: the spacing
    ``60 / 2^level`` (measured maxima are 0.79-0.93 x that; see the module doc).
    """
    return grid_spacing_deg(level)


def _indices(level: int, indices) -> np.ndarray:
    n = grid_size(level)
    if indices is None:
        return np.arange(n, dtype=np.int64)
    idx = np.asarray(indices)
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"grid indices must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"grid indices must lie in [0, {n}) at level {level}")
    return idx


def grid_directions(level: int) -> np.ndarray:
    """Unit viewing directions ``(12 * 4^level, 3)`` ``(x, y, z)`` of the HEALPix pixels (NESTED order)."""
    import healpy

    nside = 2 ** _check_level(level)
    return np.stack(healpy.pix2vec(nside, np.arange(n_directions(level)), nest=True), axis=-1)


def grid_euler(level: int, indices=None) -> np.ndarray:
    """RELION Euler angles ``(..., 3)`` ``(rot, tilt, psi)`` in degrees of grid points ``indices`` (default all).

    ``tilt``, ``rot`` are the HEALPix pixel's colatitude ``theta`` and longitude ``phi`` (``rot`` in [0, 360)),
    ``psi`` in (-180, 180] the centre of the point's in-plane bin in its base pixel's frame (module doc).
    """
    import healpy

    k = _check_level(level)
    idx = _indices(k, indices)
    npsi = n_psi(k)
    pix, j = np.divmod(idx.ravel(), npsi)
    theta, phi = healpy.pix2ang(2 ** k, pix, nest=True)
    rot = np.rad2deg(phi)
    base = pix // 4 ** k  # HEALPix base pixel: 0-3 north, 4-7 equatorial, 8-11 south
    frame = np.where(base < 4, -rot, np.where(base >= 8, rot, 0.0))
    psi = -180.0 + (j + 0.5) * (360.0 / npsi) + frame
    psi = 180.0 - np.mod(180.0 - psi, 360.0)  # wrap to (-180, 180]
    out = np.stack([rot, np.rad2deg(theta), psi], axis=-1)
    return out.reshape(idx.shape + (3,))


def grid_rotations(level: int, indices=None) -> np.ndarray:
    """RELION rotation matrices ``A`` ``(..., 3, 3)`` (volume -> image) of grid points ``indices`` (default all)."""
    angles = grid_euler(level, indices)
    return euler_relion_to_matrix(angles.reshape(-1, 3)).reshape(angles.shape[:-1] + (3, 3))


def child_indices(level: int, indices) -> np.ndarray:
    """The 8 children ``(..., 8)`` at ``level + 1`` of grid points ``indices`` of ``level``.

    Child order: ``(4 pix + c) * n_psi(level + 1) + 2 j + d`` for ``c`` in 0..3 (outer), ``d`` in 0..1 (inner).
    """
    k = _check_level(level)
    _check_level(k + 1)
    idx = _indices(k, indices)
    pix, j = np.divmod(idx, n_psi(k))
    c = np.arange(4)[:, None]
    d = np.arange(2)[None, :]
    child = (4 * pix[..., None, None] + c) * n_psi(k + 1) + 2 * j[..., None, None] + d
    return child.reshape(idx.shape + (8,))


def parent_indices(level: int, indices) -> np.ndarray:
    """The parent ``(...)`` at ``level - 1`` of grid points ``indices`` of ``level`` (``level >= 1``)."""
    k = _check_level(level)
    if k < 1:
        raise ValueError("level 0 grid points have no parent")
    idx = _indices(k, indices)
    pix, j = np.divmod(idx, n_psi(k))
    return (pix // 4) * n_psi(k - 1) + j // 2


def local_grid(rotations, spacing_deg: float, radius: int = 1) -> np.ndarray:
    """Rotations ``(N, (2 radius + 1)^3, 3, 3)`` around each of ``rotations`` ``(N, 3, 3)`` (or ``(3, 3)``).

    Each is ``exp([w]x) @ A`` for ``w`` on the cubic lattice ``spacing_deg * {-radius..radius}^3`` (degrees, as
    an axis-angle vector in the image frame); the centre (``w = 0``, index ``((2 radius + 1)^3 - 1) / 2``) is
    ``A`` itself. Any rotation within ``spacing_deg * sqrt(3) / 2`` of the lattice's span has a point within
    that distance (about, for small spacings).
    """
    A = np.asarray(rotations, dtype=np.float64)
    if A.ndim == 2:
        A = A[None]
    if A.ndim != 3 or A.shape[1:] != (3, 3):
        raise ValueError(f"rotations must have shape (N, 3, 3), got {A.shape}")
    if not spacing_deg > 0 or int(radius) < 0:
        raise ValueError(f"spacing must be positive and radius >= 0, got {spacing_deg}, {radius}")
    r = int(radius)
    steps = np.arange(-r, r + 1, dtype=np.float64) * math.radians(spacing_deg)
    w = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), axis=-1).reshape(-1, 3)
    E = Rotation.from_rotvec(w).as_matrix()  # (M, 3, 3)
    return np.einsum("mij,njk->nmik", E, A)


def geodesic_distance_deg(A, B) -> np.ndarray:
    """Rotation angle (degrees) of ``A B^T`` for broadcastable stacks of matrices ``(..., 3, 3)``."""
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    M = A @ np.swapaxes(B, -1, -2)
    cos = (np.trace(M, axis1=-2, axis2=-1) - 1.0) / 2.0
    # |sin| from the skew part: accurate near 0 and 180 degrees, where arccos alone loses digits
    sin = 0.5 * np.sqrt((M[..., 2, 1] - M[..., 1, 2]) ** 2 + (M[..., 0, 2] - M[..., 2, 0]) ** 2
                        + (M[..., 1, 0] - M[..., 0, 1]) ** 2)
    return np.rad2deg(np.arctan2(sin, cos))


def nearest_grid_point(rotations, level: int, chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest grid point of ``level`` to each of ``rotations`` ``(N, 3, 3)``, by brute force over the grid.

    Returns ``(indices (N,) int64, distances (N,) degrees)``. Cost ``N * 72 * 8^level`` quaternion dot products
    (levels up to 3 or 4 are practical), in blocks of ``chunk`` rotations (default: ~16 million products each).
    """
    A = np.asarray(rotations, dtype=np.float64)
    if A.ndim == 2:
        A = A[None]
    q = matrix_to_quaternion(A)
    g = matrix_to_quaternion(grid_rotations(level))
    chunk = int(chunk or max(1, 2 ** 24 // len(g)))  # rotations per block: ~128 MB of dot products
    idx = np.empty(q.shape[0], dtype=np.int64)
    for s in range(0, q.shape[0], chunk):
        dots = np.abs(q[s:s + chunk] @ g.T)  # |cos(angle / 2)|
        idx[s:s + chunk] = dots.argmax(axis=1)
    return idx, geodesic_distance_deg(A, grid_rotations(level, idx))
