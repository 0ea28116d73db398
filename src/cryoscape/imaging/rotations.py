"""Rotation conversions between RELION Euler angles, cryoSPARC axis-angle poses, quaternions and matrices.

All functions take and return numpy float64 arrays. Matrices are RELION's ``A`` (volume -> image frame),
``docs/conventions.md``::

    A = [[ cg*cb*ca - sg*sa,   cg*cb*sa + sg*ca,  -cg*sb],
         [-sg*cb*ca - cg*sa,  -sg*cb*sa + cg*ca,   sg*sb],
         [ sb*ca,              sb*sa,              cb   ]]

with ``alpha = rot``, ``beta = tilt``, ``gamma = psi`` (degrees).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

__all__ = [
    "euler_relion_to_matrix",
    "matrix_to_euler_relion",
    "cryosparc_pose_to_matrix",
    "matrix_to_cryosparc_pose",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "random_rotations",
]


def _as_batch(x, width: int, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != width:
        raise ValueError(f"{name} must have shape (N, {width}), got {arr.shape}")
    return arr


def _as_matrices(A) -> np.ndarray:
    arr = np.asarray(A, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (3, 3):
        raise ValueError(f"rotation matrices must have shape (N, 3, 3), got {arr.shape}")
    return arr


def euler_relion_to_matrix(angles_deg) -> np.ndarray:
    """RELION ZYZ Euler angles ``(N, 3)`` ``(rot, tilt, psi)`` in degrees -> matrices ``A`` ``(N, 3, 3)``."""
    a = np.deg2rad(_as_batch(angles_deg, 3, "angles_deg"))
    ca, sa = np.cos(a[:, 0]), np.sin(a[:, 0])
    cb, sb = np.cos(a[:, 1]), np.sin(a[:, 1])
    cg, sg = np.cos(a[:, 2]), np.sin(a[:, 2])
    A = np.empty((a.shape[0], 3, 3))
    A[:, 0, 0] = cg * cb * ca - sg * sa
    A[:, 0, 1] = cg * cb * sa + sg * ca
    A[:, 0, 2] = -cg * sb
    A[:, 1, 0] = -sg * cb * ca - cg * sa
    A[:, 1, 1] = -sg * cb * sa + cg * ca
    A[:, 1, 2] = sg * sb
    A[:, 2, 0] = sb * ca
    A[:, 2, 1] = sb * sa
    A[:, 2, 2] = cb
    return A


def matrix_to_euler_relion(A) -> np.ndarray:
    """Matrices ``A`` ``(N, 3, 3)`` -> RELION Euler angles ``(N, 3)`` ``(rot, tilt, psi)`` in degrees.

    ``tilt`` is returned in ``[0, 180]``, ``rot`` and ``psi`` in ``(-180, 180]``. At ``tilt = 0`` or ``180``
    (gimbal lock) ``rot`` is set to 0 and the in-plane angle goes to ``psi``.
    """
    A = _as_matrices(A)
    sb = np.hypot(A[:, 0, 2], A[:, 1, 2])  # |sin(tilt)|, taking tilt in [0, pi]
    tilt = np.arctan2(sb, np.clip(A[:, 2, 2], -1.0, 1.0))
    rot = np.arctan2(A[:, 2, 1], A[:, 2, 0])
    psi = np.arctan2(A[:, 1, 2], -A[:, 0, 2])
    lock = sb < 1e-6
    up = lock & (A[:, 2, 2] > 0)  # tilt = 0: A = Rz(rot + psi)
    down = lock & (A[:, 2, 2] <= 0)  # tilt = 180
    rot[lock] = 0.0
    tilt[up], tilt[down] = 0.0, np.pi
    psi[up] = np.arctan2(A[up, 0, 1], A[up, 0, 0])
    psi[down] = np.arctan2(A[down, 0, 1], -A[down, 0, 0])
    return np.rad2deg(np.stack([rot, tilt, psi], axis=1))


def cryosparc_pose_to_matrix(r) -> np.ndarray:
    """cryoSPARC ``alignments3D/pose`` axis-angle vectors ``(N, 3)`` (radians) -> ``A = expmap(r)^T`` ``(N, 3, 3)``."""
    r = _as_batch(r, 3, "cryoSPARC poses")
    return np.ascontiguousarray(Rotation.from_rotvec(r).as_matrix().transpose(0, 2, 1))


def matrix_to_cryosparc_pose(A) -> np.ndarray:
    """Matrices ``A`` ``(N, 3, 3)`` -> cryoSPARC axis-angle vectors ``(N, 3)`` (inverse of the above)."""
    A = _as_matrices(A)
    return Rotation.from_matrix(A.transpose(0, 2, 1)).as_rotvec()


def quaternion_to_matrix(q) -> np.ndarray:
    """Unit quaternions ``(N, 4)`` ordered ``(w, x, y, z)`` -> rotation matrices ``(N, 3, 3)``.

    The matrix rotates column vectors actively (``v' = R v``); quaternions are normalised first.
    """
    q = _as_batch(q, 4, "quaternions")
    return Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix()


def matrix_to_quaternion(A) -> np.ndarray:
    """Rotation matrices ``(N, 3, 3)`` -> unit quaternions ``(N, 4)`` ``(w, x, y, z)`` with ``w >= 0``."""
    A = _as_matrices(A)
    q = Rotation.from_matrix(A).as_quat()[:, [3, 0, 1, 2]]
    q[q[:, 0] < 0] *= -1.0
    return q


def random_rotations(n: int, seed=None) -> np.ndarray:
    """``n`` rotation matrices ``(n, 3, 3)`` drawn uniformly (Haar measure) on SO(3); ``seed`` int or Generator."""
    return Rotation.random(int(n), random_state=seed).as_matrix()
