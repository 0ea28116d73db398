"""Turn raw particle images into the normalised Hartley pixels that slice-based models train on."""

from __future__ import annotations

import math

import numpy as np
import torch

from cryoscape.data.fourier_pixels import FourierPixels
from cryoscape.errors import InputError
from cryoscape.imaging.masks import soft_circular_window


def hartley_pixels(
    images: torch.Tensor,
    pixels: FourierPixels,
    shifts_px: torch.Tensor | None = None,
    window: torch.Tensor | None = None,
    invert: bool = False,
) -> torch.Tensor:
    """Centred, windowed Hartley values of images at the model's Fourier pixels.

    Parameters
    ----------
    images : float ``(B, D, D)`` real-space images.
    pixels : the pixel table (``P`` pixels).
    shifts_px : ``(B, 2)`` RELION origins in pixels; the image is translated by ``+origin`` to centre the
        particle. ``None``: no translation.
    window : ``(D, D)`` real-space window applied before the transform, or ``None``.
    invert : multiply the images by -1 (for stacks where the protein is dark).

    Returns
    -------
    float ``(B, P)`` Hartley values (not yet normalised).
    """
    x = images
    if window is not None:
        x = x * window
    if invert:
        x = -x
    B, D = x.shape[0], x.shape[-1]
    rows, cols, conj_sign = (t.to(x.device) for t in pixels.rfft_gather)
    freqs = pixels.freqs.to(device=x.device, dtype=torch.float32)
    # the centred spectrum at integer frequency k is (-1)^(kx+ky) fft2(x)[k]: a translation by -D/2, folded into
    # the origin shift, so the transform needs no fftshift/ifftshift copies and only the rfft half-plane
    R = torch.fft.rfft2(x.to(torch.float32))
    picked = R[:, rows, cols]
    re, im = picked.real, picked.imag * conj_sign
    shifts = torch.zeros(B, 2, device=x.device) if shifts_px is None else torch.as_tensor(
        shifts_px, device=x.device, dtype=torch.float32)
    phase = (-2.0 * math.pi) * ((shifts - D // 2) @ freqs.T)
    c, s = torch.cos(phase), torch.sin(phase)
    # H = Re(v e^{i phi}) - Im(v e^{i phi}) with v = re + i im
    return re * (c - s) - im * (c + s)


def make_window(D: int, enabled: bool, inner: float = 0.85) -> torch.Tensor | None:
    """The soft circular real-space window of cryoDRGN's preprocessing, or ``None`` when disabled."""
    if not enabled:
        return None
    return torch.as_tensor(soft_circular_window(D, inner_frac=inner, outer_frac=0.99), dtype=torch.float32)


def check_finite(batch: np.ndarray, indices: np.ndarray, source: str) -> None:
    """Raise a clear error when images contain NaN/Inf or are constant (no signal, e.g. a blank crop)."""
    bad = ~np.isfinite(batch).all(axis=(1, 2))
    if bad.any():
        raise InputError(f"image {int(indices[np.argmax(bad)])} contains NaN or Inf values", source)
    flat = batch.reshape(batch.shape[0], -1)
    const = flat.max(axis=1) == flat.min(axis=1)
    if const.any():
        raise InputError(
            f"image {int(indices[np.argmax(const)])} is constant (no signal)", source,
            hint="remove it with --ind",
        )
