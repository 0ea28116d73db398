"""Fourier shell correlation, resolution at a threshold and area under the curve."""

import math

import numpy as np
import pytest
import torch

from cryoscape.analysis.fsc import fsc, fsc_auc, resolution_at


def _rand_vol(D=16, seed=0):
    return np.random.default_rng(seed).normal(size=(D, D, D))


def test_fsc_self_negative_and_independent():
    v = _rand_vol()
    freqs, curve = fsc(v, v)
    np.testing.assert_allclose(freqs, np.arange(8) / 16)
    np.testing.assert_allclose(curve, 1.0, atol=1e-12)
    _, neg = fsc(v, -2 * torch.as_tensor(v))  # scale-invariant, tensors accepted
    np.testing.assert_allclose(neg, -1.0, atol=1e-12)
    _, indep = fsc(_rand_vol(32, 1), _rand_vol(32, 2))
    # independent noise: |FSC| ~ 1/sqrt(independent voxels per shell) (~0.06 at shell 6 of a 32 box)
    assert np.abs(indep[6:]).max() < 0.25
    assert np.abs(indep[6:]).mean() < 0.05


def test_fsc_shells_of_a_band_limited_copy():
    D = 16
    v = _rand_vol(D, 3)
    F = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(v)))
    i = np.arange(D) - D // 2
    r = np.sqrt(i[:, None, None] ** 2 + i[None, :, None] ** 2 + i[None, None, :] ** 2)
    low = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(F * (np.rint(r) <= 4)))).real
    _, curve = fsc(v, low)
    np.testing.assert_allclose(curve[:5], 1.0, atol=1e-10)
    np.testing.assert_allclose(curve[5:], 0.0, atol=1e-10)


def test_resolution_at_synthetic_curve():
    freqs = np.arange(10) / 20  # cycles/px
    curve = np.array([1.0, 0.98, 0.95, 0.9, 0.7, 0.4, 0.2, 0.1, 0.05, 0.0])
    # 0.143 is crossed between 0.30 (0.2) and 0.35 (0.1): f = 0.30 + 0.05 * (0.2 - 0.143) / 0.1 = 0.3285
    assert resolution_at(freqs, curve, 0.143, 2.0) == pytest.approx(2.0 / 0.3285)
    assert resolution_at(freqs, curve, 0.5, 1.0) == pytest.approx(1.0 / (0.2 + 0.05 * 0.2 / 0.3))
    # a dip that recovers: the first crossing counts
    dip = curve.copy()
    dip[2] = 0.1
    assert resolution_at(freqs, dip, 0.143, 1.0) == pytest.approx(1.0 / (0.05 + 0.05 * (0.98 - 0.143) / 0.88))
    # never crosses: the resolution of the last shell; crossing at the first shell: infinite
    assert resolution_at(freqs, np.ones(10), 0.143, 1.5) == pytest.approx(1.5 / 0.45)
    assert math.isinf(resolution_at(freqs, np.zeros(10), 0.143, 1.0))
    with pytest.raises(ValueError):
        resolution_at(freqs, curve[:5])


def test_fsc_auc():
    assert fsc_auc(np.ones(11)) == pytest.approx(1.0)
    assert fsc_auc(np.linspace(1, 0, 11)) == pytest.approx(0.5)
    assert fsc_auc(np.zeros(5)) == 0.0
