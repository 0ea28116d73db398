"""The tilt-series simulator: tilt scheme, image formation (exposure, tilt, shift), files, and geometry checked by an
independent back-projection of the simulated tilt images."""

import math

import numpy as np
import pytest
import torch

from cryoscape.analysis.backprojection import backproject
from cryoscape.imaging.fft import fft2_centered, freq_grid_2d
from cryoscape.io.mrc import read_mrc
from cryoscape.io.tilt_series import load_tilt_series
from cryoscape.simulate.tilt import (
    _padded_spectrum,
    dose_symmetric_tilts,
    form_tilt_images,
    simulate_tilt_dataset,
    tilt4_states,
)
from cryoscape.simulate.volumes import StateSet


def test_dose_symmetric_scheme():
    t = dose_symmetric_tilts(60, 3, 2)
    assert len(t) == 41
    np.testing.assert_array_equal(t[:12], [0, 3, -3, -6, 6, 9, -9, -12, 12, 15, -15, -18])
    np.testing.assert_array_equal(np.sort(t), np.arange(-60, 61, 3))
    assert len(dose_symmetric_tilts(15)) == 11


def test_tilt4_states_differ_by_composition():
    s = tilt4_states(24, 8.0)
    maps = [s.render(i) for i in range(4)]
    masses = [m.sum() for m in maps]
    assert s.n_states == 4 and np.all(np.diff(masses) > 0.05 * masses[0])  # each state adds a subunit
    for a in range(4):
        for b in range(a + 1, 4):
            assert np.abs(maps[a] - maps[b]).max() > 0.3 * maps[3].max()


def test_image_formation_applies_exposure_tilt_and_shift():
    D, apix = 16, 6.0
    vol = torch.as_tensor(tilt4_states(D, apix).render(2))
    spec = _padded_spectrum(vol)
    rot = torch.eye(3)[None].repeat(2, 1, 1)
    ctf = torch.tensor([[15000.0, 15000, 0, 300, 2.7, 0.1, 0, 0, 1]]).repeat(2, 1)
    zero = torch.zeros(2, 2)
    img = form_tilt_images(spec, D, rot, zero, ctf, torch.tensor([0.0, 40.0]), torch.tensor([0.0, 60.0]), apix)
    F = fft2_centered(img.double())
    k = freq_grid_2d(D, dtype=torch.float64).norm(dim=-1) / apix
    ne = torch.where(k > 0, 0.245 * k.clamp(min=1e-9) ** -1.665 + 2.81, torch.tensor(math.inf, dtype=torch.float64))
    expected = 0.5 * torch.exp(-40.0 / (2 * ne))  # cos(60) * exp(-N / (2 Ne))
    ok = F[0].abs() > 1e-3 * F[0].abs().max()
    np.testing.assert_allclose((F[1][ok] / F[0][ok]).real.numpy(), expected[ok].numpy(), rtol=1e-4, atol=1e-6)
    shifted = form_tilt_images(spec, D, rot[:1], torch.tensor([[2.0, 0.0]]), ctf[:1], torch.zeros(1), torch.zeros(1),
                               apix)
    np.testing.assert_allclose(shifted[0].numpy(), np.roll(img[0].numpy(), -2, axis=-1), atol=1e-4)  # by -origin


@pytest.fixture(scope="module")
def one_state_sim(tmp_path_factory):
    tilt4 = tilt4_states(16, 8.0)
    states = StateSet("one", 16, 8.0, lambda s: tilt4.render(3), np.zeros(1), np.ones(1))
    out = tmp_path_factory.mktemp("sim1")
    res = simulate_tilt_dataset(states, 40, out, snr=math.inf, seed=1, tilt_max_deg=30, dose_per_tilt=0.0,
                                optimisation_set=True, progress=False, drop_tilts=3)
    return out, res


def test_backprojection_of_simulated_tilts_recovers_the_map(one_state_sim):
    """Independent check of the per-image geometry (poses, origins, CTF) written by the simulator and read back."""
    out, _ = one_state_sim
    gt = read_mrc(out / "gt" / "state_000.mrc")[0]
    for name in ("particles.star", "particles_optimisation_set.star"):
        t = load_tilt_series(out / name)
        images = t.images[np.arange(t.n_images)]
        cc = {}
        for label, rot, sign in (("right", t.rotations, 1), ("transposed", t.rotations.transpose(0, 2, 1), 1),
                                 ("shift sign", t.rotations, -1)):
            vol = backproject(images, rot, sign * t.shifts_angstrom / t.pixel_size_angstrom, t.ctf.to_array(),
                              t.pixel_size_angstrom, progress=False, device="cpu")["volume"]
            cc[label] = np.corrcoef(vol.ravel(), gt.ravel())[0, 1]
        assert cc["right"] > 0.99, cc
        assert cc["transposed"] < cc["right"] - 0.05 and cc["shift sign"] < cc["right"] - 0.02, cc


def test_simulated_files_and_both_formats_agree(one_state_sim):
    out, res = one_state_sim
    meta = res["metadata"]
    labels = np.load(out / "labels.npz")
    assert labels["state"].shape == (40,) and set(labels) >= {"state", "coordinate", "noise_std", "n_tilts"}
    a = load_tilt_series(out / "particles.star")
    b = load_tilt_series(out / "particles_optimisation_set.star")
    np.testing.assert_array_equal(a.tilt_counts, labels["n_tilts"])
    assert a.tilt_counts.min() < a.tilt_counts.max() == 21  # 0..3 tilts dropped from 21
    np.testing.assert_array_equal(a.offsets, b.offsets)
    for name in ("rotations", "shifts_angstrom", "exposure_e_per_angstrom2"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=1e-4)
    np.testing.assert_allclose(np.abs(a.tilt_deg), np.abs(b.tilt_deg), atol=2e-3)
    np.testing.assert_allclose(a.ctf.to_array(), b.ctf.to_array(), atol=1e-2)
    np.testing.assert_array_equal(a.images[np.arange(a.n_images)], b.images[np.arange(b.n_images)])
    np.testing.assert_allclose(a.exposure_e_per_angstrom2, meta.exposure)
    # defocus varies around each particle's mean: per-tilt jitter plus depth
    spread = [np.ptp(a.ctf.defocus_u_angstrom[a.offsets[p]:a.offsets[p + 1]]) for p in range(len(a))]
    assert 100 < np.median(spread) < 5000


def test_noise_level_follows_the_snr(tmp_path):
    states = tilt4_states(16, 8.0)
    clean = simulate_tilt_dataset(states, 8, tmp_path / "c", snr=math.inf, seed=4, tilt_max_deg=9, progress=False)
    noisy = simulate_tilt_dataset(states, 8, tmp_path / "n", snr=0.5, seed=4, tilt_max_deg=9, progress=False)
    c = read_mrc(tmp_path / "c" / "particles.mrcs")[0].astype(np.float64)
    n = read_mrc(tmp_path / "n" / "particles.mrcs")[0].astype(np.float64)
    assert clean["noise_std"] == 0
    assert noisy["noise_std"] == pytest.approx(math.sqrt(c.var() / 0.5), rel=1e-4)
    assert (n - c).std() == pytest.approx(noisy["noise_std"], rel=0.05)
