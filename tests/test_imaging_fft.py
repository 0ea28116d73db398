"""Centred FFT / Hartley transforms, frequency grids and Fourier resampling (docs/conventions.md)."""

import numpy as np
import pytest
import torch

from cryoscape.imaging.fft import (
    fft2_centered,
    fft3_centered,
    fftfreq_centered,
    fourier_crop,
    fourier_pad,
    freq_grid_2d,
    hartley2,
    hartley3,
    ifft2_centered,
    ifft3_centered,
    ihartley2,
    ihartley3,
    resample_volume,
)


def _rand(*shape, seed=0):
    return torch.as_tensor(np.random.default_rng(seed).normal(size=shape))


def test_dc_at_centre_and_delta_phase():
    D = 16
    const = torch.ones(D, D, dtype=torch.float64)
    F = fft2_centered(const)
    assert F[D // 2, D // 2].real == pytest.approx(D * D)
    F[D // 2, D // 2] = 0
    assert F.abs().max() < 1e-9
    # a delta at the centre pixel has a flat, real spectrum; at (x=+1) it has phase exp(-2 pi i kx)
    delta = torch.zeros(D, D, dtype=torch.float64)
    delta[D // 2, D // 2 + 1] = 1
    k = np.arange(D) - D // 2
    expected = np.exp(-2j * np.pi * k[None, :] / D) * np.ones((D, 1))
    np.testing.assert_allclose(fft2_centered(delta).numpy(), expected, atol=1e-12)


def test_fft_round_trips():
    x = _rand(3, 16, 16)
    np.testing.assert_allclose(ifft2_centered(fft2_centered(x)).real.numpy(), x.numpy(), atol=1e-12)
    v = _rand(2, 8, 8, 8)
    np.testing.assert_allclose(ifft3_centered(fft3_centered(v)).real.numpy(), v.numpy(), atol=1e-12)


def test_hartley_definition_and_inverse():
    x = _rand(2, 16, 16, seed=1)
    F = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x.numpy(), axes=(-2, -1))), axes=(-2, -1))
    np.testing.assert_allclose(hartley2(x).numpy(), F.real - F.imag, atol=1e-10)
    np.testing.assert_allclose(ihartley2(hartley2(x)).numpy(), x.numpy(), atol=1e-12)
    # self-inverse up to 1/N
    np.testing.assert_allclose(hartley2(hartley2(x)).numpy() / 256, x.numpy(), atol=1e-12)
    v = _rand(8, 8, 8, seed=2)
    np.testing.assert_allclose(ihartley3(hartley3(v)).numpy(), v.numpy(), atol=1e-12)


def test_frequency_grid_orientation():
    D = 8
    k = fftfreq_centered(D)
    np.testing.assert_allclose(k.numpy(), (np.arange(D) - D // 2) / D)
    g = freq_grid_2d(D)
    assert g.shape == (D, D, 2)
    assert g[2, 5, 0] == pytest.approx((5 - 4) / 8)  # kx follows the last axis
    assert g[2, 5, 1] == pytest.approx((2 - 4) / 8)  # ky follows the row axis
    # a cosine along x has its peaks at kx = +-1/D * periods, ky = 0
    x = torch.cos(2 * np.pi * 3 * torch.arange(D, dtype=torch.float64) / D)[None, :].repeat(D, 1)
    F = fft2_centered(x).abs()
    peaks = torch.nonzero(F > 1).tolist()
    assert sorted(peaks) == [[D // 2, D // 2 - 3], [D // 2, D // 2 + 3]]


def _band_limited(D, radius_px, seed=0, batch=2):
    rng = np.random.default_rng(seed)
    F = fft2_centered(torch.as_tensor(rng.normal(size=(batch, D, D))))
    i = torch.arange(D) - D // 2
    r = torch.sqrt(i[:, None] ** 2 + i[None, :] ** 2)
    return ifft2_centered(F * (r < radius_px)).real + 3.0


def test_fourier_crop_then_pad_round_trip():
    x = _band_limited(32, 6.5)
    small = fourier_crop(x, 16)
    assert small.shape == (2, 16, 16)
    np.testing.assert_allclose(small.mean((-2, -1)).numpy(), x.mean((-2, -1)).numpy(), rtol=1e-12)
    back = fourier_pad(small, 32)
    np.testing.assert_allclose(back.numpy(), x.numpy(), atol=1e-10)
    # cropping samples the same continuous function: the small image equals every second pixel of the large
    np.testing.assert_allclose(small.numpy(), x[:, ::2, ::2].numpy(), atol=1e-10)


def test_fourier_crop_removes_high_frequencies():
    x = _band_limited(32, 15.0, seed=3)
    y = fourier_pad(fourier_crop(x, 16), 32)
    assert (y - x).abs().max() > 1e-2  # information beyond the new Nyquist is lost


def test_resample_volume_mean_and_round_trip():
    v = torch.as_tensor(np.random.default_rng(4).normal(size=(16, 16, 16)))
    F = fft3_centered(v)
    i = torch.arange(16) - 8
    r = torch.sqrt(i[:, None, None] ** 2 + i[None, :, None] ** 2 + i[None, None, :] ** 2)
    v = ifft3_centered(F * (r < 3.5)).real + 1.0
    small = resample_volume(v, 8)
    assert small.mean().item() == pytest.approx(v.mean().item())
    np.testing.assert_allclose(resample_volume(small, 16).numpy(), v.numpy(), atol=1e-10)
    np.testing.assert_allclose(small.numpy(), v[::2, ::2, ::2].numpy(), atol=1e-10)


def test_bad_sizes_raise():
    x = torch.zeros(16, 16)
    with pytest.raises(ValueError):
        fourier_crop(x, 32)
    with pytest.raises(ValueError):
        fourier_pad(x, 8)
    with pytest.raises(ValueError):
        fourier_crop(x, 7)
