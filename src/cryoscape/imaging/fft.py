"""Centred Fourier and Hartley transforms, frequency grids and Fourier resampling.

Conventions (``docs/conventions.md``): arrays are ``[..., y, x]`` (volumes ``[z, y, x]``), the real-space
centre and the DC term sit at index ``D // 2`` on every axis, and index ``i`` has frequency
``k = (i - D // 2) / D`` cycles/pixel. Transforms are unnormalised forward (torch ``norm="backward"``), so
``ifft2_centered(fft2_centered(x)) == x``. All functions are pure torch, batched over leading axes, and keep the
device and dtype of their input.
"""

from __future__ import annotations

import torch

__all__ = [
    "fft2_centered",
    "ifft2_centered",
    "fft3_centered",
    "ifft3_centered",
    "hartley2",
    "ihartley2",
    "hartley3",
    "ihartley3",
    "fftfreq_centered",
    "freq_grid_2d",
    "fourier_crop",
    "fourier_pad",
    "resample_volume",
]

_DIMS2 = (-2, -1)
_DIMS3 = (-3, -2, -1)


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(x)


def fft2_centered(x: torch.Tensor) -> torch.Tensor:
    """Centred 2-D FFT over the last two axes: ``fftshift(fft2(ifftshift(x)))``.

    Parameters
    ----------
    x : tensor ``(..., D, D)``, real or complex, real-space images with the centre at index ``D // 2``.

    Returns
    -------
    complex tensor ``(..., D, D)`` with the DC term at index ``D // 2``.
    """
    x = _as_tensor(x)
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=_DIMS2), dim=_DIMS2), dim=_DIMS2)


def ifft2_centered(F: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft2_centered` (complex ``(..., D, D)`` -> complex ``(..., D, D)``; take ``.real``)."""
    F = _as_tensor(F)
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(F, dim=_DIMS2), dim=_DIMS2), dim=_DIMS2)


def fft3_centered(v: torch.Tensor) -> torch.Tensor:
    """Centred 3-D FFT over the last three axes (``(..., D, D, D)`` -> complex, DC at ``D // 2``)."""
    v = _as_tensor(v)
    return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(v, dim=_DIMS3), dim=_DIMS3), dim=_DIMS3)


def ifft3_centered(F: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft3_centered` (complex ``(..., D, D, D)``; take ``.real`` for real volumes)."""
    F = _as_tensor(F)
    return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(F, dim=_DIMS3), dim=_DIMS3), dim=_DIMS3)


def hartley2(x: torch.Tensor) -> torch.Tensor:
    """Centred 2-D Hartley transform ``Re(F) - Im(F)`` of ``F = fft2_centered(x)``.

    Parameters
    ----------
    x : real tensor ``(..., D, D)``.

    Returns
    -------
    real tensor ``(..., D, D)``; ``ihartley2(hartley2(x)) == x``.
    """
    F = fft2_centered(x)
    return F.real - F.imag


def ihartley2(h: torch.Tensor) -> torch.Tensor:
    """Inverse centred 2-D Hartley transform: ``hartley2(h) / (D * D)`` (real ``(..., D, D)``)."""
    h = _as_tensor(h)
    return hartley2(h) / (h.shape[-1] * h.shape[-2])


def hartley3(v: torch.Tensor) -> torch.Tensor:
    """Centred 3-D Hartley transform ``Re(F) - Im(F)`` of ``F = fft3_centered(v)`` (real ``(..., D, D, D)``)."""
    F = fft3_centered(v)
    return F.real - F.imag


def ihartley3(h: torch.Tensor) -> torch.Tensor:
    """Inverse centred 3-D Hartley transform: ``hartley3(h) / D**3`` (real ``(..., D, D, D)``)."""
    h = _as_tensor(h)
    return hartley3(h) / (h.shape[-1] * h.shape[-2] * h.shape[-3])


def fftfreq_centered(D: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Frequencies of a centred axis of length ``D``: ``(arange(D) - D // 2) / D`` in cycles/pixel, shape ``(D,)``."""
    return (torch.arange(D, device=device, dtype=dtype) - D // 2) / D


def freq_grid_2d(D: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Centred 2-D frequency grid in cycles/pixel, shape ``(D, D, 2)``.

    ``grid[iy, ix, 0] = kx`` (varies along the last array axis) and ``grid[iy, ix, 1] = ky``.
    Divide by the pixel size (Angstrom) to get 1/Angstrom.
    """
    k = fftfreq_centered(D, device=device, dtype=dtype)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    return torch.stack([kx, ky], dim=-1)


def _centre_slices(D_small: int, D_big: int, ndim: int) -> tuple:
    start = D_big // 2 - D_small // 2
    return (Ellipsis,) + (slice(start, start + D_small),) * ndim


def _check_even(D: int, what: str) -> None:
    if D <= 0 or D % 2:
        raise ValueError(f"{what} must be a positive even box size, got {D}")


def fourier_crop(images: torch.Tensor, new_D: int) -> torch.Tensor:
    """Downsample real images by cropping their centred spectrum.

    Parameters
    ----------
    images : real tensor ``(..., D, D)``.
    new_D : int, even, ``<= D``. The pixel size grows by ``D / new_D``.

    Returns
    -------
    real tensor ``(..., new_D, new_D)`` with the same mean as the input.
    """
    images = _as_tensor(images)
    D = images.shape[-1]
    _check_even(new_D, "new_D")
    if new_D > D:
        raise ValueError(f"fourier_crop: new_D={new_D} is larger than the box {D}; use fourier_pad")
    if new_D == D:
        return images.clone()
    F = fft2_centered(images)[_centre_slices(new_D, D, 2)]
    return ifft2_centered(F).real * (new_D / D) ** 2


def fourier_pad(images: torch.Tensor, new_D: int) -> torch.Tensor:
    """Upsample real images by zero-padding their centred spectrum (sinc interpolation).

    Parameters
    ----------
    images : real tensor ``(..., D, D)``.
    new_D : int, even, ``>= D``.

    Returns
    -------
    real tensor ``(..., new_D, new_D)`` with the same mean as the input.
    """
    images = _as_tensor(images)
    D = images.shape[-1]
    _check_even(new_D, "new_D")
    if new_D < D:
        raise ValueError(f"fourier_pad: new_D={new_D} is smaller than the box {D}; use fourier_crop")
    if new_D == D:
        return images.clone()
    F = fft2_centered(images)
    out = F.new_zeros(F.shape[:-2] + (new_D, new_D))
    out[_centre_slices(D, new_D, 2)] = F
    return ifft2_centered(out).real * (new_D / D) ** 2


def resample_volume(vol: torch.Tensor, new_D: int) -> torch.Tensor:
    """Resample a real volume ``(..., D, D, D)`` to ``(..., new_D, new_D, new_D)`` by Fourier crop or pad.

    The mean value is preserved; the voxel size changes by ``D / new_D``.
    """
    vol = _as_tensor(vol)
    D = vol.shape[-1]
    _check_even(new_D, "new_D")
    if new_D == D:
        return vol.clone()
    F = fft3_centered(vol)
    if new_D < D:
        out = F[_centre_slices(new_D, D, 3)]
    else:
        out = F.new_zeros(F.shape[:-3] + (new_D,) * 3)
        out[_centre_slices(D, new_D, 3)] = F
    return ifft3_centered(out).real * (new_D / D) ** 3
