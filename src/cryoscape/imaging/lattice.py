"""Fourier-space lattices: central-slice coordinates, circular masks and the Hermitian half-plane."""

from __future__ import annotations

import torch

__all__ = ["central_slice_coords", "circle_mask", "radius_grid_px", "hermitian_half"]


def central_slice_coords(rotations: torch.Tensor, freqs: torch.Tensor, normal_offset: float = 0.0) -> torch.Tensor:
    """3-D coordinates of central-slice points: ``[kx, ky, 0] @ A`` (row vectors), i.e. ``A^T (kx, ky, 0)``.

    Parameters
    ----------
    rotations : tensor ``(B, 3, 3)``, RELION matrices ``A``.
    freqs : tensor ``(P, 2)`` or ``(B, P, 2)`` of ``(kx, ky)`` (any unit: cycles/px, pixels, 1/A).
    normal_offset : the points ``[kx, ky, normal_offset] @ A`` instead: the slice moved along its normal ``A^T e_z``
        (same unit; pose refinement's derivatives).

    Returns
    -------
    tensor ``(B, P, 3)`` of ``(kx, ky, kz)`` in the volume frame, same unit as ``freqs``.
    """
    rotations = rotations.to(freqs.dtype)
    q = torch.matmul(freqs, rotations[:, :2, :])
    return q + normal_offset * rotations[:, 2:3, :] if normal_offset else q


def radius_grid_px(D: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Distance in pixels of each pixel of a ``D x D`` grid from the centre ``(D // 2, D // 2)``, shape ``(D, D)``."""
    i = torch.arange(D, device=device, dtype=dtype) - D // 2
    return torch.sqrt(i[:, None] ** 2 + i[None, :] ** 2)


def circle_mask(D: int, radius_px: float | None = None, device=None) -> torch.Tensor:
    """Boolean ``(D, D)`` mask of pixels with distance from the centre ``< radius_px`` (default ``D / 2``)."""
    radius = D / 2 if radius_px is None else float(radius_px)
    return radius_grid_px(D, device=device, dtype=torch.float64) < radius


def hermitian_half(D: int, radius_px: float | None = None, device=None):
    """Independent half of a centred Hermitian-symmetric ``D x D`` spectrum.

    Parameters
    ----------
    D : int, even box size.
    radius_px : float, optional; keep points with ``|k| < radius_px`` pixels (default ``D / 2``).

    Returns
    -------
    half : long tensor ``(M,)``, indices into the flattened ``D * D`` grid of the points with ``ky > 0`` or
        ``ky == 0 and kx > 0`` inside the circle
        (``radius_px`` is capped at ``D / 2`` so that every mate lies on the grid).
    mates : long tensor ``(M,)``, flattened indices of their Friedel mates ``-k``.
    dc : int, flattened index of the DC term (``(D // 2) * D + D // 2``).
    """
    c = D // 2
    radius = D / 2 if radius_px is None else min(float(radius_px), D / 2)  # mates must lie on the grid
    inside = circle_mask(D, radius, device=device)
    i = torch.arange(D, device=device) - c
    ky, kx = torch.meshgrid(i, i, indexing="ij")
    upper = (ky > 0) | ((ky == 0) & (kx > 0))
    keep = (inside & upper).reshape(-1)
    half = torch.nonzero(keep).squeeze(1)
    kx_h, ky_h = kx.reshape(-1)[half], ky.reshape(-1)[half]
    mates = (c - ky_h) * D + (c - kx_h)
    return half, mates, c * D + c
