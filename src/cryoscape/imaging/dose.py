"""Electron-exposure and tilt weights of tilt images (Grant & Grigorieff 2015; tomoDRGN, Powell & Davis 2024).

Radiation damage attenuates the amplitude at spatial frequency ``k`` (1/Angstrom) after a cumulative exposure
``N`` (electrons/Angstrom^2) by ``exp(-N / (2 Ne(k)))``, with the empirical critical exposure

    Ne(k) = (0.245 k^-1.665 + 2.81) * s(V)

(Grant & Grigorieff 2015, eq. 3; fitted at 300 kV). ``s(V)`` scales it for the accelerating voltage: 1 at 300 kV
and 0.8 at 200 kV as in that paper (damage per electron is ~20% higher at 200 kV); other voltages are linearly
interpolated between these two points and clamped outside them. The amplitude signal-to-noise ratio of a frequency
peaks at the optimal exposure ``2.51284 Ne(k)``; beyond it the frequency carries more noise than signal and tomoDRGN
neither decodes nor scores it (:func:`optimal_exposure_mask`). The DC term (``k = 0``) is never attenuated or masked.

Thicker ice at higher stage tilt lowers the SNR of a whole image; it is weighted by ``cos(tilt)``.

Cumulative exposure convention (cryoscape-wide, see ``docs/tomography.md``): the exposure of a tilt image is the
dose received by the specimen *up to the middle of that image*, i.e. the pre-exposure plus half the image's own
exposure. All functions are pure, batched torch; device and dtype follow the inputs.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "CRITICAL_A",
    "CRITICAL_B",
    "CRITICAL_C",
    "OPTIMAL_EXPOSURE_FACTOR",
    "voltage_scale",
    "critical_exposure",
    "dose_weights",
    "optimal_exposure_mask",
    "tilt_weights",
]

CRITICAL_A = 0.245  # e/A^2 * A^-1.665
CRITICAL_B = -1.665
CRITICAL_C = 2.81  # e/A^2
OPTIMAL_EXPOSURE_FACTOR = 2.51284


def voltage_scale(voltage_kv: torch.Tensor | float) -> torch.Tensor:
    """Scale of the critical exposure for an accelerating voltage (kV): 1.0 at 300, 0.8 at 200, linear between.

    Parameters
    ----------
    voltage_kv : float or tensor of any shape, kV.

    Returns
    -------
    tensor of the same shape (float).
    """
    v = torch.as_tensor(voltage_kv)
    v = v if v.is_floating_point() else v.to(torch.get_default_dtype())
    return 0.8 + 0.2 * torch.clamp((v - 200.0) / 100.0, 0.0, 1.0)


def critical_exposure(freq_per_angstrom: torch.Tensor, voltage_kv: torch.Tensor | float = 300.0) -> torch.Tensor:
    """Critical exposure ``Ne(k)`` in electrons/A^2 (``inf`` at ``k = 0``).

    Parameters
    ----------
    freq_per_angstrom : tensor of any shape, spatial frequency magnitude ``|k|`` in 1/Angstrom.
    voltage_kv : float or tensor broadcastable to ``freq_per_angstrom``.

    Returns
    -------
    tensor, broadcast shape of the inputs.
    """
    k = freq_per_angstrom.abs()
    scale = voltage_scale(torch.as_tensor(voltage_kv, device=k.device, dtype=k.dtype))
    safe = torch.where(k > 0, k, torch.ones_like(k))
    ne = (CRITICAL_A * safe.pow(CRITICAL_B) + CRITICAL_C) * scale
    return torch.where(k > 0, ne, torch.full_like(ne, math.inf))


def dose_weights(freq_per_angstrom: torch.Tensor, exposure_e_per_angstrom2: torch.Tensor,
                 voltage_kv: torch.Tensor | float = 300.0) -> torch.Tensor:
    """Amplitude attenuation ``exp(-N / (2 Ne(k)))`` (1 at ``k = 0``).

    Parameters
    ----------
    freq_per_angstrom : tensor ``(..., P)``, ``|k|`` of each pixel in 1/Angstrom.
    exposure_e_per_angstrom2 : tensor ``(..., 1)`` (or broadcastable), cumulative exposure of each image.
    voltage_kv : float or tensor broadcastable to the result.

    Returns
    -------
    tensor of the broadcast shape, values in ``(0, 1]``.
    """
    ne = critical_exposure(freq_per_angstrom, voltage_kv)
    n = torch.as_tensor(exposure_e_per_angstrom2, device=ne.device, dtype=ne.dtype)
    return torch.exp(-0.5 * n / ne)


def optimal_exposure_mask(freq_per_angstrom: torch.Tensor, exposure_e_per_angstrom2: torch.Tensor,
                          voltage_kv: torch.Tensor | float = 300.0) -> torch.Tensor:
    """Frequencies whose cumulative exposure has not passed the optimal exposure: ``N <= 2.51284 Ne(k)``.

    Parameters
    ----------
    freq_per_angstrom, exposure_e_per_angstrom2, voltage_kv : as for :func:`dose_weights`.

    Returns
    -------
    bool tensor of the broadcast shape (always True at ``k = 0``).
    """
    ne = critical_exposure(freq_per_angstrom, voltage_kv)
    n = torch.as_tensor(exposure_e_per_angstrom2, device=ne.device, dtype=ne.dtype)
    return n <= OPTIMAL_EXPOSURE_FACTOR * ne


def tilt_weights(tilt_deg: torch.Tensor) -> torch.Tensor:
    """Per-image weight ``cos(tilt)`` for stage tilts in degrees (any shape; clamped at 0 beyond 90 degrees)."""
    return torch.clamp(torch.cos(torch.deg2rad(torch.as_tensor(tilt_deg))), min=0.0)
