"""Sub-pixel image translation by Fourier phase shifts.

Translating an image by ``t`` pixels (``img'(x) = img(x - t)``) multiplies its centred spectrum by
``exp(-2 pi i k . t)`` with ``k`` in cycles/pixel (``docs/conventions.md``).
"""

from __future__ import annotations

import math

import torch

from cryoscape.imaging.fft import fft2_centered, fftfreq_centered, ifft2_centered

__all__ = ["phase_shift", "translate_images"]


def phase_shift(F: torch.Tensor, shifts_px: torch.Tensor) -> torch.Tensor:
    """Translate images given by centred spectra.

    Parameters
    ----------
    F : complex tensor ``(B, ..., D, D)``, centred spectra (DC at ``D // 2``).
    shifts_px : tensor ``(B, 2)``, translations ``(tx, ty)`` in pixels (positive moves content to larger x/y).

    Returns
    -------
    complex tensor ``(B, ..., D, D)``: ``F * exp(-2 pi i (kx tx + ky ty))``.
    """
    D_y, D_x = F.shape[-2], F.shape[-1]
    real_dtype = F.real.dtype
    shifts = torch.as_tensor(shifts_px, device=F.device).to(real_dtype)
    kx = fftfreq_centered(D_x, device=F.device, dtype=real_dtype)
    ky = fftfreq_centered(D_y, device=F.device, dtype=real_dtype)
    extra = (1,) * (F.ndim - 3)  # middle batch axes
    tx = shifts[:, 0].reshape((-1,) + extra + (1, 1))
    ty = shifts[:, 1].reshape((-1,) + extra + (1, 1))
    phase = -2.0 * math.pi * (kx * tx + ky[:, None] * ty)
    return F * torch.polar(torch.ones_like(phase), phase)


def translate_images(images: torch.Tensor, shifts_px: torch.Tensor) -> torch.Tensor:
    """Translate real images ``(B, D, D)`` by ``shifts_px`` ``(B, 2)`` pixels ``(tx, ty)`` (periodic, sub-pixel).

    Returns a real tensor ``(B, D, D)``; an integer shift equals ``np.roll(img, (ty, tx), axis=(-2, -1))``.
    """
    return ifft2_centered(phase_shift(fft2_centered(images), shifts_px)).real
