"""Real-space masks: soft circular windows for images, spheres and soft-edged masks for volumes."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

__all__ = ["soft_circular_window", "sphere_mask", "soft_edge_mask"]


def _radius(D: int, ndim: int, device=None) -> torch.Tensor:
    i = torch.arange(D, device=device, dtype=torch.float32) - D // 2
    grids = torch.meshgrid(*([i] * ndim), indexing="ij")
    r2 = grids[0] * grids[0]
    for g in grids[1:]:
        r2 = r2 + g * g
    return torch.sqrt(r2)


def soft_circular_window(
    D: int, inner_frac: float = 0.85, outer_frac: float = 0.99, device=None
) -> torch.Tensor:
    """Real-space window ``(D, D)`` float32: 1 inside ``inner_frac * D/2``, 0 beyond ``outer_frac * D/2``.

    Between the two radii (distance in pixels from the centre ``D // 2``) it falls as a raised cosine.
    """
    if not 0 <= inner_frac < outer_frac:
        raise ValueError(f"need 0 <= inner_frac < outer_frac, got {inner_frac}, {outer_frac}")
    r = _radius(D, 2, device) / (D / 2)
    t = ((r - inner_frac) / (outer_frac - inner_frac)).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * t))


def sphere_mask(D: int, radius_px: float, device=None) -> torch.Tensor:
    """Boolean ``(D, D, D)`` mask of voxels closer than ``radius_px`` to the centre ``(D // 2,) * 3``."""
    return _radius(D, 3, device) < float(radius_px)


def soft_edge_mask(binary, dilate_px: float, edge_px: float):
    """Dilate a binary volume mask and give it a raised-cosine edge.

    Parameters
    ----------
    binary : bool/number array or tensor ``(D, D, D)``; nonzero voxels are inside.
    dilate_px : float, voxels within this distance (pixels) of the mask are set to 1.
    edge_px : float, width in pixels of the cosine fall-off from 1 to 0 beyond the dilated mask.

    Returns
    -------
    float32 ``(D, D, D)`` of the input's kind (numpy array, or tensor on the input's device), values in ``[0, 1]``.
    """
    is_tensor = isinstance(binary, torch.Tensor)
    arr = binary.detach().cpu().numpy() if is_tensor else np.asarray(binary)
    inside = arr.astype(bool)
    if not inside.any():
        out = np.zeros(arr.shape, dtype=np.float32)
    else:
        dist = ndimage.distance_transform_edt(~inside)  # 0 inside, Euclidean distance in voxels outside
        if edge_px > 0:
            t = np.clip((dist - dilate_px) / edge_px, 0.0, 1.0)
            out = (0.5 * (1.0 + np.cos(np.pi * t))).astype(np.float32)
        else:
            out = (dist <= dilate_px).astype(np.float32)
    return torch.as_tensor(out, device=binary.device) if is_tensor else out
