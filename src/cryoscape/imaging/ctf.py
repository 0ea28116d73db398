"""Contrast transfer function (RELION / CTFFIND convention), batched torch.

``docs/conventions.md``::

    lambda = 12.2643 / sqrt(V * (1 + 0.978466e-6 * V))            # Angstrom, V in volts
    df(theta) = (dfU + dfV)/2 + (dfU - dfV)/2 * cos(2 * (theta - theta_ast)),  theta = atan2(ky, kx)
    chi(s) = pi * lambda * df * s^2 - pi/2 * Cs * lambda^3 * s^4 + phase_shift   # Cs in Angstrom
    CTF(s) = scale * (sqrt(1 - w^2) * sin(chi) + w * cos(chi)) * exp(-B s^2 / 4)

The CTF is positive (``= w``) at ``s = 0``. Parameters are ``(B, 9)`` tensors in
``cryoscape.metadata.CTF_COLUMNS`` order (``CTFParams.to_array()``).
"""

from __future__ import annotations

import math

import torch

from cryoscape.imaging.fft import freq_grid_2d

__all__ = ["electron_wavelength_angstrom", "compute_ctf", "ctf_image", "phase_flip"]


def electron_wavelength_angstrom(voltage_kv):
    """Relativistic electron wavelength in Angstrom for an accelerating voltage in kV (float or tensor)."""
    volts = voltage_kv * 1000.0
    if isinstance(volts, torch.Tensor):
        return 12.2643 / torch.sqrt(volts * (1.0 + 0.978466e-6 * volts))
    return 12.2643 / math.sqrt(volts * (1.0 + 0.978466e-6 * volts))


def compute_ctf(freqs_per_angstrom: torch.Tensor, ctf: torch.Tensor) -> torch.Tensor:
    """Evaluate the CTF at given spatial frequencies.

    Parameters
    ----------
    freqs_per_angstrom : tensor ``(P, 2)`` or ``(B, P, 2)``, ``(sx, sy)`` in 1/Angstrom.
    ctf : tensor ``(B, 9)``, columns in ``CTF_COLUMNS`` order (defocus U/V in Angstrom, astigmatism angle in
        degrees, voltage in kV, Cs in mm, amplitude contrast, phase shift in degrees, B-factor in A^2, scale).

    Returns
    -------
    tensor ``(B, P)`` of CTF values (dtype and device of ``freqs_per_angstrom``).
    """
    freqs = freqs_per_angstrom
    ctf = torch.as_tensor(ctf, device=freqs.device, dtype=freqs.dtype)
    if ctf.ndim == 1:
        ctf = ctf[None]
    p = [ctf[:, i : i + 1] for i in range(9)]  # each (B, 1)
    dfu, dfv, angle_deg, kv, cs_mm, w, phase_deg, bfactor, scale = p
    sx, sy = freqs[..., 0], freqs[..., 1]  # (P,) or (B, P)
    s2 = sx * sx + sy * sy
    theta = torch.atan2(sy, sx)
    lam = electron_wavelength_angstrom(kv)
    cs = cs_mm * 1e7
    df = 0.5 * (dfu + dfv) + 0.5 * (dfu - dfv) * torch.cos(2.0 * (theta - torch.deg2rad(angle_deg)))
    chi = math.pi * lam * df * s2 - 0.5 * math.pi * cs * lam**3 * s2 * s2 + torch.deg2rad(phase_deg)
    values = torch.sqrt(1.0 - w * w) * torch.sin(chi) + w * torch.cos(chi)
    return scale * values * torch.exp(-0.25 * bfactor * s2)


def ctf_image(D: int, pixel_size_angstrom: float, ctf: torch.Tensor) -> torch.Tensor:
    """CTF on the centred ``D x D`` Fourier grid (DC at ``D // 2``).

    Parameters
    ----------
    D : int, box size in pixels.
    pixel_size_angstrom : float.
    ctf : tensor ``(B, 9)`` in ``CTF_COLUMNS`` order.

    Returns
    -------
    tensor ``(B, D, D)`` (device and float dtype of ``ctf``).
    """
    ctf = torch.as_tensor(ctf)
    if ctf.ndim == 1:
        ctf = ctf[None]
    dtype = ctf.dtype if ctf.is_floating_point() else torch.float32
    freqs = freq_grid_2d(D, device=ctf.device, dtype=dtype).reshape(-1, 2) / pixel_size_angstrom
    return compute_ctf(freqs, ctf.to(dtype)).reshape(-1, D, D)


def phase_flip(images_ft: torch.Tensor, ctf: torch.Tensor) -> torch.Tensor:
    """Multiply centred image spectra by the sign of the CTF.

    Parameters
    ----------
    images_ft : complex (or Hartley) tensor ``(B, D, D)``.
    ctf : tensor ``(B, D, D)`` of CTF values on the same grid (e.g. from :func:`ctf_image`).

    Returns
    -------
    tensor ``(B, D, D)``; frequencies where the CTF is negative are negated (zeros count as positive).
    """
    sign = torch.where(ctf < 0, -1.0, 1.0).to(ctf.dtype)
    return images_ft * sign
