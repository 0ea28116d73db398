"""hartley_pixels (rfft, shift folded into the phase, Friedel mates by conjugation) against its definition."""

import numpy as np
import pytest
import torch

from cryoscape.data.fourier_pixels import FourierPixels
from cryoscape.data.preprocess import hartley_pixels, make_window
from cryoscape.imaging.fft import fft2_centered


def _by_definition(images, pixels, shifts, window, invert):
    """Centred DFT computed as a sum, the translation as exp(-2 pi i k.t), Hartley = Re - Im, at the pixels."""
    D = images.shape[-1]
    x = images.double()
    if window is not None:
        x = x * window.double()
    if invert:
        x = -x
    k = (torch.arange(D, dtype=torch.float64) - D // 2) / D
    n = torch.arange(D, dtype=torch.float64) - D // 2
    W = torch.exp(-2j * np.pi * torch.outer(k, n))  # (k, n)
    F = torch.einsum("yn,bnm,xm->byx", W, x.to(torch.complex128), W)
    if shifts is not None:
        t = shifts.double()
        phase = k[None, None, :] * t[:, 0, None, None] + k[None, :, None] * t[:, 1, None, None]
        F = F * torch.exp(-2j * np.pi * phase)
    return (F.real - F.imag).reshape(len(images), -1)[:, pixels.index]


@pytest.mark.parametrize("D,radius", [(16, None), (32, None), (32, 6.0)])
def test_hartley_pixels_match_definition(D, radius):
    torch.manual_seed(0)
    pixels = FourierPixels.create(D, radius)
    images = torch.randn(5, D, D)
    shifts = torch.randn(5, 2) * 3
    for args in ((shifts, make_window(D, True), False), (None, None, True), (shifts, None, False)):
        got = hartley_pixels(images, pixels, *args)
        want = _by_definition(images, pixels, *args)
        assert got.shape == (5, pixels.n_pixels)
        np.testing.assert_allclose(got.double(), want, atol=2e-5 * want.abs().max().item())


def test_hartley_pixels_equal_full_centred_transform_without_shift():
    D = 16
    pixels = FourierPixels.create(D)
    images = torch.randn(3, D, D)
    F = fft2_centered(images)
    full = (F.real - F.imag).reshape(3, -1)[:, pixels.index]
    np.testing.assert_allclose(hartley_pixels(images, pixels), full, rtol=1e-5, atol=1e-5 * full.abs().max().item())
