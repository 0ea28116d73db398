"""The particle simulator: image formation, SNR, labels, determinism, outputs and the `simulate` command."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoscape.cli.main import main
from cryoscape.errors import InputError
from cryoscape.imaging.rotations import euler_relion_to_matrix
from cryoscape.io.mrc import read_mrc, write_mrc
from cryoscape.io.particles import load_particles
from cryoscape.metadata import CTFParams
from cryoscape.simulate.particles import assign_states, form_images, simulate_dataset
from cryoscape.simulate.volumes import render_gaussians, states_from_preset

D, APIX = 24, 4.0


def _gaussian_image(center_xy, sigma_px, D):
    y, x = np.indices((D, D)) - D // 2
    r2 = (x - center_xy[0]) ** 2 + (y - center_xy[1]) ** 2
    return np.exp(-r2 / (2 * sigma_px**2)) / (2 * np.pi * sigma_px**2)


def test_form_images_projects_rotates_and_shifts_like_the_conventions():
    """A Gaussian at r (voxels) appears, as a 2-D Gaussian of the same integral, at (A r)_xy - origin."""
    D, apix, sigma = 32, 2.0, 1.5
    r = np.array([4.0, -2.0, 3.0])
    vol = render_gaussians(r[None] * apix, sigma * apix, 1.0, D, apix)
    angles = np.array([[30.0, 60.0, 10.0], [-100.0, 120.0, 45.0], [0.0, 0.0, 0.0]])
    A = euler_relion_to_matrix(angles)
    origins = np.array([[1.5, -2.0], [0.0, 3.0], [-2.5, 0.5]])
    images = form_images(torch.tensor(vol), torch.tensor(A), torch.tensor(origins), None, apix).numpy()
    for img, a, o in zip(images, A, origins, strict=True):
        expected = _gaussian_image((a @ r)[:2] - o, sigma, D)
        # trilinear Fourier interpolation (oversampled 2x, gridding-corrected) is good to ~3%; a convention
        # error would misplace the blob by pixels (errors ~100% of the peak)
        assert np.abs(img - expected).max() < 0.04 * expected.max()
        assert img.sum() == pytest.approx(1.0, abs=0.04)


def test_ctf_sign_and_bfactor_envelope():
    """At s = 0 the CTF is +w (protein stays light); the envelope damps high frequencies only."""
    D, apix = 32, 2.0
    vol = torch.tensor(render_gaussians(np.zeros((1, 3)), 3.0, 1.0, D, apix))
    ctf = torch.tensor(CTFParams.create([15000.0], 14000.0, 30.0, 300.0, 2.7, 0.1).to_array())
    rot, origin = torch.eye(3)[None].double(), torch.zeros(1, 2)
    img = form_images(vol, rot, origin, ctf, apix)[0].numpy()
    assert img.sum() == pytest.approx(0.1, rel=0.03)
    plain = form_images(vol, rot, origin, None, apix)[0].numpy()
    damped = form_images(vol, rot, origin, None, apix, bfactor_angstrom2=200.0)[0].numpy()
    assert damped.sum() == pytest.approx(plain.sum(), rel=1e-4)
    Fp, Fd = np.abs(np.fft.fft2(plain)), np.abs(np.fft.fft2(damped))
    s2 = 0.25**2 / apix**2  # frequency index D/4 along x: k = 0.25 cycles/px
    assert Fd[0, D // 4] / Fp[0, D // 4] == pytest.approx(np.exp(-200.0 * s2 / 4), rel=1e-3)


def test_field_images_are_the_linear_convolution_cut_from_a_micrograph():
    """``field`` > 1: the image of a centred Gaussian is its projection convolved (linearly, no wrap-around) with the
    CTF's point spread, evaluated independently as a Hankel transform of the radial CTF; with ``field`` 1 the CTF
    acts on the box's own spectrum, so the signal it spreads past the edge wraps back in and the image differs."""
    from scipy.special import j0

    from cryoscape.imaging.ctf import compute_ctf

    D, apix, sigma, defocus = 32, 2.0, 1.5, 15000.0  # delocalisation at Nyquist ~37 px, past the box's edge
    vol = torch.tensor(render_gaussians(np.zeros((1, 3)), sigma * apix, 1.0, D, apix))
    ctf = torch.tensor(CTFParams.create([defocus], defocus, 0.0, 300.0, 2.7, 0.1).to_array())
    k = np.linspace(0.0, 0.5, 4001)  # cycles/pixel, to the band limit
    c = compute_ctf(torch.tensor(np.stack([k / apix, 0.0 * k], -1)), ctf)[0].numpy()
    r = np.hypot(*(np.indices((D, D)) - D // 2)).ravel()
    radial = c * np.exp(-2 * np.pi**2 * sigma**2 * k**2) * 2 * np.pi * k  # CTF x the Gaussian's 2-D spectrum
    expected = np.trapezoid(radial[None] * j0(2 * np.pi * k[None] * r[:, None]), k, axis=1).reshape(D, D)
    rot, origin = torch.eye(3)[None].double(), torch.zeros(1, 2).double()

    def error(field):
        img = form_images(vol, rot, origin, ctf.double(), apix, field=field)[0].numpy()
        assert img.shape == (D, D)
        return np.linalg.norm(img - expected) / np.linalg.norm(expected)

    assert error(2) < 0.005 and error(4) < 0.005
    assert error(1) > 0.05  # the circular model: wrapped signal
    with pytest.raises(InputError):
        form_images(vol, rot, origin, ctf.double(), apix, field=0)


def test_assign_states_exact_ratio():
    rng = np.random.default_rng(0)
    s = assign_states(101, [10, 15, 25], rng)
    assert np.bincount(s).tolist() == [20, 30, 51]
    assert s.tolist() != sorted(s.tolist())  # shuffled


@pytest.fixture(scope="module")
def discrete3(tmp_path_factory):
    out = tmp_path_factory.mktemp("d3")
    code = main(["simulate", "--preset", "discrete3", "-N", "200", "-D", str(D), "--apix", str(APIX),
                 "--snr", "0.5", "--seed", "7", "--clean", "-o", str(out)])
    assert code == 0
    return out


def test_snr_definition(discrete3):
    clean = read_mrc(discrete3 / "clean.mrcs")[0].astype(np.float64)
    noisy = read_mrc(discrete3 / "particles.mrcs")[0].astype(np.float64)
    noise = noisy - clean
    assert clean.var() / noise.var() == pytest.approx(0.5, rel=0.1)
    assert abs(noise.mean()) < 0.05 * noise.std()
    labels = np.load(discrete3 / "labels.npz")
    assert float(labels["noise_std"]) == pytest.approx(np.sqrt(clean.var() / 0.5), rel=1e-3)


def test_labels_and_ground_truth(discrete3):
    labels = np.load(discrete3 / "labels.npz")
    assert str(labels["preset"]) == "discrete3"
    assert np.bincount(labels["state"]).tolist() == [40, 60, 100]  # 10:15:25
    np.testing.assert_allclose(labels["coordinate"], labels["state_coordinates"][labels["state"]])
    for k in range(3):
        gt, info = read_mrc(discrete3 / "gt" / f"state_{k:03d}.mrc")
        assert gt.shape == (D, D, D) and info.voxel_size_angstrom == pytest.approx(APIX)
    # every clean image is a projection of its own state: its sum is CTF(0) * (map sum) = 0.1 * sum
    clean = read_mrc(discrete3 / "clean.mrcs")[0]
    sums = np.array([read_mrc(discrete3 / "gt" / f"state_{k:03d}.mrc")[0].sum() for k in range(3)])
    np.testing.assert_allclose(clean.sum((1, 2)), 0.1 * sums[labels["state"]], rtol=0.03)


def test_star_metadata_loads_back(discrete3):
    ps = load_particles(discrete3 / "particles.star")
    assert len(ps) == 200 and ps.D == D and ps.pixel_size_angstrom == pytest.approx(APIX)
    shifts_px = ps.poses.shifts_px(APIX)
    assert np.abs(shifts_px).max() <= 3.0 and np.abs(shifts_px).max() > 2.0
    mean_df = (ps.ctf.defocus_u_angstrom + ps.ctf.defocus_v_angstrom) / 2
    assert mean_df.min() >= 10000 - 1 and mean_df.max() <= 25000 + 1
    # uniform SO(3): the viewing direction (third row of A) has a uniform z component in [-1, 1]
    assert abs(ps.poses.rotations[:, 2, 2].mean()) < 0.15
    np.testing.assert_allclose(ps.images[np.arange(3)], read_mrc(discrete3 / "particles.mrcs")[0][:3])


def test_determinism(tmp_path):
    states = states_from_preset("linear1d", 16, 5.0)
    a = simulate_dataset(states, 60, tmp_path / "a", seed=3, chunk_size=7)
    b = simulate_dataset(states, 60, tmp_path / "b", seed=3, chunk_size=7)
    c = simulate_dataset(states, 60, tmp_path / "c", seed=4, chunk_size=7)
    img_a, img_b, img_c = (read_mrc(tmp_path / k / "particles.mrcs")[0] for k in "abc")
    np.testing.assert_array_equal(img_a, img_b)
    assert (tmp_path / "a/particles.star").read_text().split("\n")[2:] == \
        (tmp_path / "b/particles.star").read_text().split("\n")[2:]  # all but the time stamp
    assert np.load(a["labels"])["state"].tolist() == np.load(b["labels"])["state"].tolist()
    assert np.abs(img_a - img_c).mean() > 0.1 * np.abs(img_a).mean()
    assert np.load(c["labels"])["coordinate"].max() <= 1.0


def test_hinge_discrete_labels(tmp_path):
    states = states_from_preset("hinge_discrete", 16, 5.0)
    res = simulate_dataset(states, 100, tmp_path, seed=0, write_pkl=True, write_cs=True)
    labels = np.load(res["labels"])
    assert set(labels["subunit"].tolist()) == {0, 1}
    np.testing.assert_array_equal(labels["subunit"], (labels["state"] >= 25).astype(int))
    for name in ("particles.cs", "pose.pkl", "ctf.pkl"):
        assert (tmp_path / name).is_file()


def test_simulate_from_volumes(tmp_path):
    rng = np.random.default_rng(1)
    maps = []
    for k in range(2):
        vol = render_gaussians(rng.uniform(-10, 10, (5, 3)), 3.0, 50.0, 16, 2.5)
        maps.append(write_mrc(tmp_path / f"v{k}.mrc", vol, 2.5))
    out = tmp_path / "sim"
    assert main(["simulate", "--volumes", *map(str, maps), "-N", "20", "-o", str(out)]) == 0
    for k in range(2):
        np.testing.assert_allclose(read_mrc(out / "gt" / f"state_{k:03d}.mrc")[0], read_mrc(maps[k])[0])
    assert load_particles(out / "particles.star").pixel_size_angstrom == pytest.approx(2.5)
    # a mismatched box is a one-line error (exit code 2)
    write_mrc(tmp_path / "big.mrc", np.zeros((18, 18, 18), np.float32), 2.5)
    assert main(["simulate", "--volumes", str(maps[0]), str(tmp_path / "big.mrc"), "-o", str(out)]) == 2


def test_simulate_bad_arguments(tmp_path, capsys):
    assert main(["simulate", "--preset", "homogeneous", "--snr", "-1", "-o", str(tmp_path)]) == 2
    assert "--snr" in capsys.readouterr().err
    assert main(["simulate", "--preset", "homogeneous", "-D", "15", "-o", str(tmp_path)]) == 2
    assert main(["simulate", "--preset", "homogeneous", "--field", "0", "-o", str(tmp_path / "f0")]) == 2
    assert "--field" in capsys.readouterr().err


def test_simulate_field_option(tmp_path):
    """`simulate --field 2`: the same metadata and noise-free signal inside the box up to the wrapped CTF signal,
    recorded in labels.npz."""
    common = ["--preset", "homogeneous", "-N", "6", "-D", "16", "--apix", "2.0", "--snr", "inf", "--clean"]
    assert main(["simulate", *common, "-o", str(tmp_path / "f1")]) == 0
    assert main(["simulate", *common, "--field", "2", "-o", str(tmp_path / "f2")]) == 0
    assert int(np.load(tmp_path / "f2" / "labels.npz")["field"]) == 2
    assert int(np.load(tmp_path / "f1" / "labels.npz")["field"]) == 1
    a, b = (read_mrc(tmp_path / f / "clean.mrcs")[0] for f in ("f1", "f2"))
    assert a.shape == b.shape == (6, 16, 16)
    # the same particles (poses, CTFs): the images agree in their low frequencies and differ where the CTF wraps
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.5 and not np.allclose(a, b, atol=1e-3 * np.abs(a).max())


@pytest.mark.parametrize("command", ["simulate", "backproject", "downsample"])
def test_help_shows_example(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "Example:" in text and f"cryoscape {command} " in text
