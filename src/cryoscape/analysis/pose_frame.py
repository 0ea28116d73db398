"""The global frame of a set of poses: the rotation and translation common to all particles.

Images determine a map and its poses only up to one rigid motion: the map rotated and moved, with every pose
compensating, gives the same images. Learned poses (``train --refine-poses``) can drift along this motion
relative to the poses they started from, and estimated poses (``abinit``, a second refinement) come in any frame;
the drift moves the learned map by the same amount. This module measures it and undoes it on a map.

Conventions (``docs/conventions.md``): a pose is RELION's ``A`` (volume -> image frame, ``(3, 3)``) and an
in-plane shift ``s`` in pixels (the origin: a feature at ``p`` of the map is seen at ``(A p)_xy - s``). Two sets
of poses ``(A_ref, s_ref)`` and ``(A, s)`` of the same images are in frames related by ``(G, t)`` when

    A ~ A_ref G,        s - s_ref ~ (A_ref t)_xy,

and then the map of the second set is the map of the first moved: a feature at ``p`` is at ``G^T (p + t)``
(both sets then see it at the same image position). :func:`frame_drift` estimates ``(G, t)`` (``G``: the
orthogonal polar factor of ``sum A_ref^T A``, the rotation closest to the mean in the Frobenius norm; ``t``: least
squares over all particles' shift differences); :func:`map_in_reference_frame` moves a map of the second frame
into the first.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mean_rotation", "frame_drift", "map_in_reference_frame"]


def mean_rotation(A_ref: np.ndarray, A: np.ndarray) -> np.ndarray:
    """The rotation ``G`` ``(3, 3)`` that best maps ``A_ref`` onto ``A`` (both ``(N, 3, 3)``): ``A ~ A_ref G``,
    maximising ``sum trace((A_ref G)^T A)`` (the orthogonal polar factor of ``sum A_ref^T A``, det +1).
    """
    M = np.einsum("nji,njk->ik", np.asarray(A_ref, np.float64), np.asarray(A, np.float64))
    U, _, Vt = np.linalg.svd(M)
    return U @ np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))]) @ Vt


def frame_drift(A_ref: np.ndarray, shifts_ref_px: np.ndarray, A: np.ndarray,
                shifts_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(G, t)``: the global rotation ``(3, 3)`` and translation ``(3,)`` (pixels, ``(x, y, z)``) of the poses
    ``(A, shifts_px)`` relative to ``(A_ref, shifts_ref_px)`` (rotations ``(N, 3, 3)``, shifts ``(N, 2)``), as
    defined in the module docstring. Needs viewing directions spread enough to fix all three axes of ``t``
    (least squares; a set of one view leaves its depth undetermined and gives the minimum-norm answer).
    """
    A_ref = np.asarray(A_ref, np.float64)
    G = mean_rotation(A_ref, A)
    d = np.asarray(shifts_px, np.float64) - np.asarray(shifts_ref_px, np.float64)
    t, *_ = np.linalg.lstsq(A_ref[:, :2, :].reshape(-1, 3), d.reshape(-1), rcond=None)
    return G, t


def map_in_reference_frame(volume: np.ndarray, G: np.ndarray, t_px: np.ndarray) -> np.ndarray:
    """A map ``(D, D, D)`` reconstructed with poses in the frame ``(G, t)`` of :func:`frame_drift`, moved into the
    reference frame (cubic spline, float32): a feature at ``G^T (p + t)`` goes back to ``p``.
    """
    from cryoscape.analysis.align import MapAlignment

    return MapAlignment(np.asarray(G, np.float64), -np.asarray(t_px, np.float64), False, np.nan, np.nan,
                        1.0).apply(volume)
