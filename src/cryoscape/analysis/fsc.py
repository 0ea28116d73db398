"""Fourier shell correlation between two volumes and the resolution it implies."""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["fsc", "resolution_at", "fsc_auc"]


def _to_numpy(vol, name: str) -> np.ndarray:
    if isinstance(vol, torch.Tensor):
        vol = vol.detach().cpu().numpy()
    arr = np.asarray(vol, dtype=np.float64)
    if arr.ndim != 3 or len(set(arr.shape)) != 1:
        raise ValueError(f"{name} must be a cubic (D, D, D) volume, got shape {arr.shape}")
    return arr


def fsc(vol_a, vol_b) -> tuple[np.ndarray, np.ndarray]:
    """Fourier shell correlation of two real volumes.

    Parameters
    ----------
    vol_a, vol_b : array or tensor ``(D, D, D)`` of the same shape.

    Returns
    -------
    freqs : float64 ``(D // 2,)``, shell frequencies ``i / D`` in cycles/pixel (divide by the pixel size for 1/A).
    curve : float64 ``(D // 2,)``, ``Re sum F_a conj(F_b) / sqrt(sum |F_a|^2 sum |F_b|^2)`` over the voxels whose
        radius ``|k| * D`` rounds to ``i``; 0 for a shell where either volume has no power (below
        ``1e-24`` of its total: round-off).
    """
    a, b = _to_numpy(vol_a, "vol_a"), _to_numpy(vol_b, "vol_b")
    if a.shape != b.shape:
        raise ValueError(f"volumes differ in shape: {a.shape} vs {b.shape}")
    D = a.shape[0]
    Fa = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(a)))
    Fb = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(b)))
    i = np.arange(D) - D // 2
    r = np.sqrt(i[:, None, None] ** 2 + i[None, :, None] ** 2 + i[None, None, :] ** 2)
    shell = np.rint(r).astype(np.int64).ravel()
    n = D // 2
    keep = shell < n
    shell = shell[keep]
    Fa, Fb = Fa.ravel()[keep], Fb.ravel()[keep]
    cross = np.bincount(shell, weights=(Fa * np.conj(Fb)).real, minlength=n)
    pa = np.bincount(shell, weights=np.abs(Fa) ** 2, minlength=n)
    pb = np.bincount(shell, weights=np.abs(Fb) ** 2, minlength=n)
    denom = np.sqrt(pa * pb)
    # shells with no power (up to round-off, relative to the whole map) correlate as 0
    has_power = (pa > 1e-24 * pa.sum()) & (pb > 1e-24 * pb.sum())
    curve = np.divide(cross, denom, out=np.zeros(n), where=has_power)
    return np.arange(n) / D, curve


def resolution_at(freqs, curve, threshold: float = 0.143, pixel_size_angstrom: float = 1.0) -> float:
    """Resolution (Angstrom) where an FSC curve first drops below ``threshold``.

    The crossing frequency is interpolated linearly between the last shell at or above the threshold and the
    first shell below it; the resolution is ``pixel_size_angstrom / frequency``.

    Parameters
    ----------
    freqs : ``(n,)`` shell frequencies in cycles/pixel (increasing), as returned by :func:`fsc`.
    curve : ``(n,)`` FSC values.
    threshold : float, e.g. 0.143 (half maps) or 0.5 (map against a model/truth).
    pixel_size_angstrom : float.

    Returns
    -------
    float, Angstrom. ``inf`` if the curve is already below the threshold at the first shell (no resolution);
    if it never drops below the threshold, the resolution of the last shell ``pixel_size / freqs[-1]`` (a bound:
    the true value is at least that good).
    """
    freqs = np.asarray(freqs, dtype=np.float64)
    curve = np.asarray(curve, dtype=np.float64)
    if freqs.shape != curve.shape or freqs.ndim != 1 or freqs.size == 0:
        raise ValueError(f"freqs and curve must be equal-length 1-D arrays, got {freqs.shape}, {curve.shape}")
    below = np.flatnonzero(curve < threshold)
    if below.size == 0:
        return float(pixel_size_angstrom / freqs[-1]) if freqs[-1] > 0 else math.inf
    i = int(below[0])
    if i == 0:
        return math.inf
    c0, c1 = curve[i - 1], curve[i]
    f = freqs[i - 1] + (c0 - threshold) / (c0 - c1) * (freqs[i] - freqs[i - 1])
    return float(pixel_size_angstrom / f) if f > 0 else math.inf


def fsc_auc(curve) -> float:
    """Area under an FSC curve over normalised frequency ``[0, 1]`` (trapezoid rule); 1 for a perfect match."""
    curve = np.asarray(curve, dtype=np.float64)
    if curve.size < 2:
        raise ValueError("an FSC curve needs at least two shells")
    return float(np.trapezoid(curve, dx=1.0 / (curve.size - 1)))
