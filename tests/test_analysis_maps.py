"""Map comparison: auto mask geometry, phase randomisation, masked FSC correction, map correlation."""

from __future__ import annotations

import numpy as np
import pytest

from cryoscape.analysis.fsc import fsc
from cryoscape.analysis.maps import auto_mask, map_correlation, masked_fsc, phase_randomize
from cryoscape.errors import InputError

D = 32


def radius(D=D):
    i = np.arange(D) - D // 2
    return np.sqrt(i[:, None, None] ** 2 + i[None, :, None] ** 2 + i[None, None, :] ** 2)


def lowpass(vol, shell):
    r = radius(vol.shape[0])
    F = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(vol)))
    F[r > shell] = 0
    return np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(F))).real


def test_auto_mask_follows_threshold_dilation_and_cosine_edge():
    r = radius(40)
    vol = np.where(r <= 6, 1.0, 0.0)  # 1.4 % of the box: threshold = 0.5 * p99 = 0.5
    m = auto_mask(vol, pixel_size_angstrom=2.0, dilate_px=2, soft_edge_px=4)
    c = 20
    along_x = m[c, c, c:]  # the voxel at x-distance d from the centre lies d - 6 voxels from the core
    np.testing.assert_allclose(along_x[:9], 1.0)  # core (<= 6) and dilation (<= 8)
    for d, expected in [(9, 0.5 * (1 + np.cos(np.pi * 1 / 4))), (10, 0.5), (11, 0.5 * (1 + np.cos(np.pi * 3 / 4)))]:
        assert along_x[d] == pytest.approx(expected, abs=1e-6)
    assert np.all(along_x[12:] == 0)
    assert m.dtype == np.float32 and m.min() == 0 and m.max() == 1
    # default = tomoDRGN recipe: 3 px dilation, 10 px cosine edge; the same in Angstrom with 2 A voxels
    m_default = auto_mask(vol, 2.0)
    np.testing.assert_allclose(m_default[c, c, c:c + 10], 1.0)
    assert m_default[c, c, c + 14] == pytest.approx(0.5 * (1 + np.cos(np.pi * 5 / 10)), abs=1e-6)
    assert m_default[c, c, c + 19] == 0
    np.testing.assert_allclose(auto_mask(vol, 2.0, dilate_angstrom=6, soft_edge_angstrom=20), m_default)
    with pytest.raises(InputError, match="no voxel"):
        auto_mask(vol, 2.0, threshold=5.0)
    # a tiny object (under 1 % of the box) still gets a mask around it, with a warning
    small = np.where(r <= 2, 1.0, 0.0)
    with pytest.warns(UserWarning, match="under 1 %"):
        ms = auto_mask(small, 1.0, dilate_px=0, soft_edge_px=0)
    np.testing.assert_array_equal(ms > 0, r <= 2)


def test_phase_randomize_keeps_amplitudes_and_low_resolution():
    rng = np.random.default_rng(0)
    vol = lowpass(rng.normal(size=(D, D, D)), 14)
    apix = 2.0
    out = phase_randomize(vol, from_resolution_angstrom=8.0, pixel_size_angstrom=apix, seed=1)  # shell D*2/8 = 8
    assert out.dtype == np.float32 and out.shape == vol.shape
    Fa, Fb = np.fft.fftn(vol), np.fft.fftn(out)
    np.testing.assert_allclose(np.abs(Fb), np.abs(Fa), rtol=1e-4, atol=1e-3 * np.abs(Fa).max())
    freqs, curve = fsc(vol, out)
    assert np.all(curve[:9] > 0.9999)  # shells 0..8 untouched
    assert np.abs(curve[10:]).max() < 0.25  # beyond: phases unrelated
    assert np.abs(curve[10:]).mean() < 0.1
    # different seeds give different phases, the same seed the same ones
    np.testing.assert_array_equal(out, phase_randomize(vol, 8.0, apix, seed=1))
    assert not np.allclose(out, phase_randomize(vol, 8.0, apix, seed=2))


def test_masked_fsc_correction_removes_mask_induced_correlation():
    rng = np.random.default_rng(0)
    signal = lowpass(rng.normal(size=(D, D, D)), 5)  # common signal only up to shell 5
    noise_sd = 0.5 * signal.std()
    a = signal + rng.normal(0, noise_sd, signal.shape)
    b = signal + rng.normal(0, noise_sd, signal.shape)
    mask = (radius() < 9).astype(float)  # a sharp mask correlates the high-resolution shells
    res = masked_fsc(a, b, 1.0, mask, randomize_from_angstrom=D / 6)
    assert np.abs(res.unmasked[7:]).max() < 0.15  # truth: no correlation beyond shell 5
    assert res.masked[7:].mean() > 0.4  # ... but the masked FSC is inflated
    assert np.abs(res.corrected[7:]).mean() < 0.1  # ... and the correction removes it
    np.testing.assert_allclose(res.corrected[:7], res.masked[:7])  # unchanged up to the randomisation shell
    k = 10
    assert res.corrected[k] == pytest.approx((res.masked[k] - res.randomized[k]) / (1 - res.randomized[k]))
    np.testing.assert_allclose(res.unmasked, fsc(a, b)[1])
    np.testing.assert_allclose(res.masked, fsc(a * mask, b * mask)[1])
    # "auto": randomise from where the unmasked FSC drops below 0.8 (between shells 5 and 6 here)
    auto = masked_fsc(a, b, 1.0, mask)
    assert D / 6.0 <= auto.randomize_from_angstrom <= D / 5.0
    assert np.abs(auto.corrected[7:]).mean() < 0.1
    assert auto.resolution(0.143) == pytest.approx(D / 6, rel=0.12)
    plain = masked_fsc(a, b, 1.0)
    assert plain.masked is None and plain.final is plain.unmasked


def test_map_correlation():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(16, 16, 16))
    b = 0.6 * a + rng.normal(size=a.shape)
    assert map_correlation(a, b) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    assert map_correlation(a, 3 * a + 7) == pytest.approx(1.0)
    assert map_correlation(a, -a) == pytest.approx(-1.0)
    mask = np.zeros(a.shape)
    mask[4:12, 4:12, 4:12] = 1
    inside = mask > 0
    assert map_correlation(a, b, mask) == pytest.approx(np.corrcoef(a[inside], b[inside])[0, 1])
    with pytest.raises(InputError, match="shape"):
        map_correlation(a, b[:8, :8, :8])
