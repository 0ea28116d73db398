"""CTF-premultiplied images (``rlnCtfDataAreCtfPremultiplied 1``): readers set the flag, models render CTF^2 x slice.

STAR files are written here the way RELION 3.1+ (flag per optics group), RELION 3.0 (a particle column) and
WarpTools / RELION 5 (optics table of the optimisation set's particles file) write them.
"""

import numpy as np
import pandas as pd
import pytest
import starfile

from cryoscape.errors import InputError
from cryoscape.imaging.ctf import PREMULTIPLIED_EPS, premultiplied_weights
from cryoscape.imaging.rotations import euler_relion_to_matrix
from cryoscape.io.mrc import write_mrc
from cryoscape.io.particles import load_particles
from cryoscape.io.tilt_series import TomogramGeometry, load_tilt_series, write_image_series_star, write_optimisation_set
from cryoscape.metadata import CTFParams

D, APIX = 8, 5.0


def _images(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, D, D)).astype(np.float32)


def _relion31_star(path, flags_per_group, groups):
    """A RELION 3.1 particle STAR: one optics group per entry of ``flags_per_group``; particle ``i`` in
    ``groups[i]`` (1-based)."""
    n = len(groups)
    write_mrc(path.parent / "stack.mrcs", _images(n), APIX)
    optics = pd.DataFrame({"rlnOpticsGroupName": [f"g{g + 1}" for g in range(len(flags_per_group))],
                           "rlnOpticsGroup": np.arange(1, len(flags_per_group) + 1),
                           "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1,
                           "rlnImagePixelSize": APIX, "rlnImageSize": D, "rlnImageDimensionality": 2,
                           "rlnCtfDataAreCtfPremultiplied": list(flags_per_group)})
    parts = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@stack.mrcs" for i in range(n)],
                          "rlnAngleRot": 10.0 * np.arange(n), "rlnAngleTilt": 30.0, "rlnAnglePsi": 5.0,
                          "rlnOriginXAngst": 0.0, "rlnOriginYAngst": 0.0, "rlnDefocusU": 15000.0,
                          "rlnDefocusV": 14000.0, "rlnDefocusAngle": 20.0, "rlnOpticsGroup": list(groups)})
    starfile.write({"optics": optics, "particles": parts}, path)
    return path


def test_single_particle_star_flag(tmp_path):
    path = _relion31_star(tmp_path / "pre.star", [1], [1, 1, 1, 1])
    ps = load_particles(path)
    assert ps.ctf_premultiplied is True
    assert ps.subset([2, 0]).ctf_premultiplied is True  # subsets keep it
    assert load_particles(path, indices=[1]).ctf_premultiplied is True
    plain = _relion31_star(tmp_path / "plain.star", [0], [1, 1, 1])
    assert load_particles(plain).ctf_premultiplied is False
    # only the groups the particles use count
    assert load_particles(_relion31_star(tmp_path / "used.star", [0, 1], [2, 2])).ctf_premultiplied is True


def test_single_particle_star_without_flag_and_other_sources(tmp_path):
    path = _relion31_star(tmp_path / "p.star", [0], [1, 1])
    blocks = starfile.read(path, always_dict=True)
    blocks["optics"] = blocks["optics"].drop(columns="rlnCtfDataAreCtfPremultiplied")
    starfile.write(blocks, path)
    assert load_particles(path).ctf_premultiplied is False  # RELION's default
    assert load_particles(tmp_path / "stack.mrcs", apix=APIX).ctf_premultiplied is False


def test_relion30_column_and_bad_values(tmp_path):
    path = _relion31_star(tmp_path / "p.star", [0], [1, 1, 1])
    blocks = starfile.read(path, always_dict=True)
    table = blocks["particles"].drop(columns="rlnOpticsGroup")
    for c in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        table[c] = blocks["optics"][c].iloc[0]
    table["rlnDetectorPixelSize"], table["rlnMagnification"] = APIX, 10000.0
    table["rlnCtfDataAreCtfPremultiplied"] = 1
    starfile.write({"": table}, tmp_path / "r30.star")
    assert load_particles(tmp_path / "r30.star").ctf_premultiplied is True
    table["rlnCtfDataAreCtfPremultiplied"] = [1, 0, 1]
    starfile.write({"": table}, tmp_path / "r30.star")
    with pytest.raises(InputError, match="mixes CTF-premultiplied") as err:
        load_particles(tmp_path / "r30.star")
    assert "r30.star" in str(err.value)
    table["rlnCtfDataAreCtfPremultiplied"] = 2
    starfile.write({"": table}, tmp_path / "r30.star")
    with pytest.raises(InputError, match="is 2; expected 0 or 1"):
        load_particles(tmp_path / "r30.star")


def test_mixed_optics_groups_refused(tmp_path):
    path = _relion31_star(tmp_path / "mixed.star", [0, 1], [1, 2, 1])
    with pytest.raises(InputError, match="mixes CTF-premultiplied"):
        load_particles(path)


def _geometry(F=4):
    tilts = np.array([0.0, 3.0, -3.0, -6.0])[:F]
    R = euler_relion_to_matrix(np.stack([np.zeros(F), tilts, np.zeros(F)], 1))
    return TomogramGeometry("TS_1", R, np.full(F, 2e4), np.full(F, 1.9e4), np.full(F, 5.0), np.arange(F) * 2.0,
                            tilts, 2.0, (100, 100, 40), APIX, hand=-1.0)


@pytest.mark.parametrize("premultiplied", [False, True])
def test_optimisation_set_flag(tmp_path, premultiplied):
    """WarpTools / RELION 5 write the flag in the optics table of the particles file."""
    rng = np.random.default_rng(5)
    geo = _geometry()
    for i in range(3):
        write_mrc(tmp_path / f"p{i}.mrcs", _images(4, seed=i), APIX, is_stack=True)
    path = write_optimisation_set(tmp_path, APIX, D, [geo], ["TS_1"] * 3, ["a", "b", "c"],
                                  rng.normal(size=(3, 3)) * 20, euler_relion_to_matrix(rng.uniform(0, 90, (3, 3))),
                                  np.zeros((3, 3)), ["p0.mrcs", "p1.mrcs", "p2.mrcs"], np.ones((3, 4), bool),
                                  ctf_premultiplied=premultiplied)
    optics = starfile.read(tmp_path / "particles_tomo.star", always_dict=True)["optics"]
    assert int(optics["rlnCtfDataAreCtfPremultiplied"].iloc[0]) == int(premultiplied)
    t = load_tilt_series(path)
    assert t.ctf_premultiplied is premultiplied
    assert t.subset([2, 0]).ctf_premultiplied is premultiplied


def test_optimisation_set_mixed_groups_refused(tmp_path):
    geo = _geometry()
    for i in range(2):
        write_mrc(tmp_path / f"p{i}.mrcs", _images(4, seed=i), APIX, is_stack=True)
    path = write_optimisation_set(tmp_path, APIX, D, [geo], ["TS_1"] * 2, ["a", "b"], np.zeros((2, 3)),
                                  np.tile(np.eye(3), (2, 1, 1)), np.zeros((2, 3)), ["p0.mrcs", "p1.mrcs"],
                                  np.ones((2, 4), bool))
    pfile = tmp_path / "particles_tomo.star"
    blocks = starfile.read(pfile, always_dict=True)
    second = blocks["optics"].iloc[[0]].assign(rlnOpticsGroup=2, rlnOpticsGroupName="g2",
                                               rlnCtfDataAreCtfPremultiplied=1)
    blocks["optics"] = pd.concat([blocks["optics"], second], ignore_index=True)
    blocks["particles"]["rlnOpticsGroup"] = [1, 2]
    starfile.write(blocks, pfile)
    with pytest.raises(InputError, match="mixes CTF-premultiplied") as err:
        load_tilt_series(path)
    assert "particles_tomo.star" in str(err.value)


def test_image_series_flag(tmp_path):
    m = 4
    write_mrc(tmp_path / "ts.mrcs", _images(m), APIX)
    ctf = CTFParams.create(np.full(m, 2e4), np.full(m, 1.9e4), np.zeros(m), 300.0, 2.7, 0.1)
    rot = np.tile(np.eye(3), (m, 1, 1))
    for flag in (False, True):
        path = write_image_series_star(tmp_path / f"s{int(flag)}.star", "ts.mrcs", APIX, D, rot, np.zeros((m, 2)),
                                       ctf, np.arange(m) * 3.0, np.zeros(m), ["1_1", "1_1", "1_2", "1_2"],
                                       ["1"] * m, ctf_premultiplied=flag)
        t = load_tilt_series(path)
        assert t.ctf_premultiplied is flag and t.subset([1]).ctf_premultiplied is flag


# -- the models' forward: CTF^2 x slice, checked against an independent numpy CTF and weighting -------------------
KV, CS, W = 300.0, 2.7, 0.1


def _ctf_numpy(freqs_per_angstrom, defocus):
    """Non-astigmatic CTF from the documented formula (docs/conventions.md), written out in numpy."""
    s2 = (np.asarray(freqs_per_angstrom, np.float64) ** 2).sum(-1)
    volts = KV * 1e3
    lam = 12.2643 / np.sqrt(volts * (1 + 0.978466e-6 * volts))
    chi = np.pi * lam * np.asarray(defocus)[..., None] * s2 - 0.5 * np.pi * CS * 1e7 * lam**3 * s2**2
    return np.sqrt(1 - W * W) * np.sin(chi) + W * np.cos(chi)


def _ctf_params(defocus):
    d = np.asarray(defocus, np.float64).reshape(-1)
    return CTFParams.create(d, d, np.zeros_like(d), KV, CS, W).to_array().reshape(np.shape(defocus) + (9,))


def _rotations(n, seed):
    return euler_relion_to_matrix(np.random.default_rng(seed).uniform(0, 180, (n, 3))).astype(np.float32)


def test_cryodrgn_forward_uses_ctf_squared():
    import torch

    from cryoscape.models.cryodrgn import CryoDRGN

    torch.manual_seed(0)
    D8, apix, B = 8, 4.0, 3
    defocus = np.array([8000.0, 15000.0, 22000.0])
    pre = CryoDRGN(D8, apix, zdim=0, dec_dim=16, dec_layers=1, ctf_premultiplied=True).eval()
    plain = CryoDRGN(D8, apix, zdim=0, dec_dim=16, dec_layers=1).eval()
    plain.load_state_dict(pre.state_dict())
    rot = torch.from_numpy(_rotations(B, 1))
    with torch.no_grad():
        slices = pre.render(rot, None).numpy().astype(np.float64)
    c = _ctf_numpy(pre.freqs.numpy() / apix, defocus)
    assert np.mean(c < 0) > 0.2  # the CTF changes sign here, so CTF and CTF^2 differ
    batch = {"rot": rot, "ctf": torch.from_numpy(_ctf_params(defocus))}
    noise = np.random.default_rng(2).normal(size=slices.shape) * 0.1 * slices.std()
    weights = 1.0 / (c**2 + PREMULTIPLIED_EPS)  # the premultiplied data's likelihood weights
    for model, transfer, y in ((pre, c**2, (slices * c + noise) * c), (plain, c, slices * c + noise)):
        with torch.no_grad():
            recon = float(model({**batch, "y": torch.from_numpy(y).float()})["recon"])
        w = weights if model is pre else 1.0
        expected = np.mean(w * (slices * transfer - y) ** 2)  # = mean(noise^2), times c^2 / (c^2 + eps) if pre
        assert recon == pytest.approx(expected, rel=1e-3)
        assert recon <= np.mean(noise**2) * (1 + 1e-3)
    with torch.no_grad():  # the premultiplied model does not fit plain data
        wrong = float(pre({**batch, "y": torch.from_numpy(slices * c).float()})["recon"])
    assert wrong > 10 * np.mean(noise**2)


def test_cryodrgn_encoder_sees_premultiplied_images_unflipped():
    import torch

    from cryoscape.models.cryodrgn import CryoDRGN

    torch.manual_seed(0)
    pre = CryoDRGN(8, 4.0, zdim=2, enc_dim=16, enc_layers=1, dec_dim=16, dec_layers=1, ctf_premultiplied=True).eval()
    plain = CryoDRGN(8, 4.0, zdim=2, enc_dim=16, enc_layers=1, dec_dim=16, dec_layers=1).eval()
    plain.load_state_dict(pre.state_dict())
    defocus = np.array([10000.0, 20000.0])
    y = torch.randn(2, pre.pixels.n_pixels)
    batch = {"y": y, "rot": torch.from_numpy(_rotations(2, 3)), "ctf": torch.from_numpy(_ctf_params(defocus))}
    sign = torch.from_numpy(np.sign(_ctf_numpy(pre.freqs.numpy() / 4.0, defocus))).float()
    with torch.no_grad():
        torch.testing.assert_close(pre.latent_means(batch), pre.encoder(y)[:, :2])
        torch.testing.assert_close(plain.latent_means(batch), plain.encoder(y * sign)[:, :2])


def _tomodrgn_pair():
    """A premultiplied and a plain tomodrgn model with the same weights (D=8, 5 A/px, zdim 0), the batch shape
    ``(B, T) = (2, 3)`` and per-tilt defoci (A)."""
    import torch

    from cryoscape.models.tomodrgn import TomoDRGN

    torch.manual_seed(0)
    D8, apix, B, T = 8, 5.0, 2, 3
    kw = dict(ntilts=None, zdim=0, dec_dim=16, dec_layers=1)
    pre = TomoDRGN(D8, apix, ctf_premultiplied=True, **kw).eval()
    plain = TomoDRGN(D8, apix, **kw).eval()
    plain.load_state_dict(pre.state_dict())
    defocus = np.array([[9000.0, 12000.0, 15000.0], [20000.0, 21000.0, 22000.0]])
    return pre, plain, apix, B, T, defocus


def test_tomodrgn_forward_uses_ctf_squared_with_dose_and_tilt_weights():
    import torch

    pre, plain, apix, B, T, defocus = _tomodrgn_pair()
    exposure = np.array([[2.0, 30.0, 60.0], [5.0, 45.0, 20.0]])
    tilt = np.array([[0.0, 20.0, -40.0], [0.0, -10.0, 50.0]])
    rot = torch.from_numpy(_rotations(B * T, 4).reshape(B, T, 3, 3))
    keep_all = torch.ones(B, T, pre.points.shape[0], dtype=torch.bool)
    with torch.no_grad():
        slices = pre.render(rot, None, keep_all).numpy().astype(np.float64)
    k = np.linalg.norm(pre.freqs.numpy(), axis=-1) / apix  # (P,)
    c = _ctf_numpy(pre.freqs.numpy() / apix, defocus)  # (B, T, P)
    with np.errstate(divide="ignore"):
        ne = np.where(k > 0, 0.245 * k ** -1.665 + 2.81, np.inf)  # Grant & Grigorieff at 300 kV
    w = np.exp(-exposure[..., None] / (2 * ne)) * np.cos(np.radians(tilt))[..., None]
    w = w * (exposure[..., None] <= 2.51284 * ne)  # optimal-exposure mask
    assert 0 < (w == 0).mean() < 0.5  # the mask removes some pixels here
    batch = {"rot": rot, "ctf": torch.from_numpy(_ctf_params(defocus)).float(),
             "exposure": torch.from_numpy(exposure).float(), "tilt_deg": torch.from_numpy(tilt).float(),
             "tilt_mask": torch.ones(B, T, dtype=torch.bool), "tilt_key": torch.rand(B, T)}
    noise = np.random.default_rng(5).normal(size=slices.shape) * 0.1 * slices.std()
    weights = 1.0 / (c**2 + PREMULTIPLIED_EPS)  # the premultiplied data's likelihood weights, times w
    for model, transfer, y in ((pre, c**2, (slices * c + noise) * c), (plain, c, slices * c + noise)):
        with torch.no_grad():
            recon = float(model({**batch, "y": torch.from_numpy(y).float()})["recon"])
        wl = w * weights if model is pre else w
        expected = (wl * (slices * transfer - y) ** 2).sum() / w.sum()  # normalised by the dose/tilt weights
        assert recon == pytest.approx(expected, rel=1e-3)
        assert recon <= (w * noise**2).sum() / w.sum() * (1 + 1e-3)
    with torch.no_grad():
        wrong = float(pre({**batch, "y": torch.from_numpy(slices * c).float()})["recon"])
    assert wrong > 10 * (w * noise**2).sum() / w.sum()


def test_premultiplied_weights_bounded_by_the_floor():
    import torch

    c = torch.tensor([[0.0, 0.05, -0.3, 1.0], [-1.0, 0.7, 0.0, 0.1]], dtype=torch.float64)
    w = premultiplied_weights(c, eps=0.01)
    assert w.shape == c.shape and w.dtype == c.dtype
    torch.testing.assert_close(w, 1.0 / (c * c + 0.01))
    assert float(w.max()) == pytest.approx(100.0)  # 1 / eps at the CTF zeros
    assert bool((w <= 1.0 / 0.01).all()) and bool((w > 0).all())
    assert float(premultiplied_weights(torch.tensor([0.0])).max()) == pytest.approx(1.0 / PREMULTIPLIED_EPS)
    for bad in (0.0, -1e-3):
        with pytest.raises(ValueError, match="must be positive"):
            premultiplied_weights(c, eps=bad)


def test_weighted_premultiplied_loss_of_noise_free_data_is_the_plain_loss():
    """Hand computation, three pixels: CTF c = (0.5, -1, 0), prediction P and truth P0 differing by (2, 1, 3).

    Plain data c P0: residuals c (P - P0) = (1, -1, 0), loss (1 + 1 + 0) / 3 = 2/3. Premultiplied data c^2 P0:
    residuals c^2 (P - P0) = (0.5, 1, 0), unweighted loss (0.25 + 1) / 3 = 0.4167 (the first pixel, small |c|,
    counts a quarter); weighted by 1 / (c^2 + eps): (0.25 / (0.25 + eps) + 1 / (1 + eps) + 0) / 3, 2/3 as eps -> 0,
    0.6585 for eps = 0.005.
    """
    import torch

    c = torch.tensor([0.5, -1.0, 0.0], dtype=torch.float64)
    truth = torch.tensor([1.0, -2.0, 4.0], dtype=torch.float64)
    pred = truth + torch.tensor([2.0, 1.0, 3.0], dtype=torch.float64)
    plain = torch.mean((c * pred - c * truth) ** 2)
    assert float(plain) == pytest.approx(2 / 3, rel=1e-12)
    assert float(torch.mean((c * c * pred - c * c * truth) ** 2)) == pytest.approx(1.25 / 3, rel=1e-12)
    for eps, expected in ((1e-12, 2 / 3), (0.005, (0.25 / 0.255 + 1 / 1.005) / 3)):
        weighted = torch.mean(premultiplied_weights(c, eps) * (c * c * pred - c * c * truth) ** 2)
        assert float(weighted) == pytest.approx(expected, rel=1e-9)
        assert float(weighted) <= float(plain)  # each pixel: the plain term times c^2 / (c^2 + eps) <= 1
    assert (0.25 / 0.255 + 1 / 1.005) / 3 == pytest.approx(0.6585, abs=1e-4)


def test_cryodrgn_weighted_premultiplied_loss_matches_plain_loss_without_noise():
    """The same model prediction scored against noise-free data: premultiplied (weighted) and plain losses agree up
    to the floor (each pixel's plain term times CTF^2 / (CTF^2 + eps)); plain data's loss is the unweighted mean,
    bit for bit."""
    import torch

    from cryoscape.models.cryodrgn import CryoDRGN

    torch.manual_seed(0)
    D8, apix = 8, 4.0
    defocus = np.array([8000.0, 15000.0, 22000.0])
    pre = CryoDRGN(D8, apix, zdim=0, dec_dim=16, dec_layers=1, ctf_premultiplied=True).eval()
    plain = CryoDRGN(D8, apix, zdim=0, dec_dim=16, dec_layers=1).eval()
    plain.load_state_dict(pre.state_dict())
    rot = torch.from_numpy(_rotations(3, 1))
    batch = {"rot": rot, "ctf": torch.from_numpy(_ctf_params(defocus))}
    with torch.no_grad():
        slices = pre.render(rot, None).double()
    truth = slices + 0.5 * slices.std() * torch.randn(slices.shape, generator=torch.Generator().manual_seed(3),
                                                      dtype=torch.float64)
    c = torch.from_numpy(_ctf_numpy(pre.freqs.numpy() / apix, defocus))
    with torch.no_grad():
        loss_pre = float(pre({**batch, "y": (c * c * truth).float()})["recon"])
        y_plain = (c * truth).float()
        loss_plain = plain({**batch, "y": y_plain})["recon"]
        ctf = plain.ctf_values(batch["ctf"])
        assert torch.equal(loss_plain, torch.mean((plain.render(rot, None) * ctf - y_plain) ** 2))  # unchanged
    per_pixel = (c * (slices - truth)) ** 2
    expected = float(torch.mean(per_pixel * c**2 / (c**2 + PREMULTIPLIED_EPS)))
    assert loss_pre == pytest.approx(expected, rel=1e-3)
    assert loss_pre == pytest.approx(float(loss_plain), rel=0.1)  # the floor's effect is small here
    assert loss_pre <= float(loss_plain) * (1 + 1e-4)
    unweighted = float(torch.mean((c * c * (slices - truth)) ** 2))
    # without the weights the premultiplied loss is much further from the plain data's
    assert abs(loss_pre - float(loss_plain)) < 0.25 * abs(unweighted - float(loss_plain)), (loss_pre, unweighted)


def test_tomodrgn_weighted_premultiplied_loss_matches_plain_loss_without_noise():
    import torch

    pre, plain, apix, B, T, defocus = _tomodrgn_pair()
    batch = {"rot": torch.from_numpy(_rotations(B * T, 4).reshape(B, T, 3, 3)),
             "ctf": torch.from_numpy(_ctf_params(defocus)).float(),
             "exposure": torch.tensor([[2.0, 30.0, 60.0], [5.0, 45.0, 20.0]]),
             "tilt_deg": torch.tensor([[0.0, 20.0, -40.0], [0.0, -10.0, 50.0]]),
             "tilt_mask": torch.ones(B, T, dtype=torch.bool), "tilt_key": torch.rand(B, T)}
    keep_all = torch.ones(B, T, pre.points.shape[0], dtype=torch.bool)
    with torch.no_grad():
        slices = pre.render(batch["rot"], None, keep_all).double()
    truth = slices + 0.5 * slices.std() * torch.randn(slices.shape, generator=torch.Generator().manual_seed(4),
                                                      dtype=torch.float64)
    c = torch.from_numpy(_ctf_numpy(pre.freqs.numpy() / apix, defocus))
    with torch.no_grad():
        loss_pre = float(pre({**batch, "y": (c * c * truth).float()})["recon"])
        loss_plain = float(plain({**batch, "y": (c * truth).float()})["recon"])
        keep = pre.decode_mask(batch["exposure"], batch["ctf"], batch["tilt_mask"])
    m = keep.shape[-1] - 1
    scored = torch.cat([keep[..., :m], keep[..., :m], keep[..., m:]], dim=-1).double()
    w = pre.loss_weights(batch["exposure"], batch["tilt_deg"], batch["ctf"]).double() * scored  # dose x tilt x mask
    assert 0 < float((w == 0).double().mean()) < 0.5
    per_pixel = w * (c * (slices - truth)) ** 2  # the plain data's weighted squared errors
    expected = float((per_pixel * c**2 / (c**2 + PREMULTIPLIED_EPS)).sum() / w.sum())
    assert loss_pre == pytest.approx(expected, rel=1e-3)
    assert loss_plain == pytest.approx(float(per_pixel.sum() / w.sum()), rel=1e-3)
    assert loss_pre == pytest.approx(loss_plain, rel=0.1)  # the floor's effect is small here
    assert loss_pre <= loss_plain * (1 + 1e-4)
    unweighted = float((w * (c * c * (slices - truth)) ** 2).sum() / w.sum())
    # without the weights the premultiplied loss is much further from the plain data's
    assert abs(loss_pre - loss_plain) < 0.25 * abs(unweighted - loss_plain), (loss_pre, unweighted, loss_plain)


def test_opus_premultiplied_residual_whitened():
    """OPUS-DSD (real-space loss): the premultiplied residual's spectrum is multiplied by (CTF^2 + eps)^(-1/2)
    before the masked squared error; plain data's loss is the masked squared error as before, bit for bit."""
    import torch

    from cryoscape.models.opus_dsd import OpusDSD, render_images

    torch.manual_seed(0)
    D16, apix = 16, 4.0
    kw = dict(n_particles=4, zdim=2, channel_scale=0.0625)
    pre = OpusDSD(D16, apix, ctf_premultiplied=True, **kw).eval()
    plain = OpusDSD(D16, apix, **kw).eval()
    plain.load_state_dict(pre.state_dict())
    defocus = np.array([9000.0, 18000.0])
    rot = torch.from_numpy(_rotations(2, 6))
    ctf = torch.from_numpy(_ctf_params(defocus)).float()
    y = torch.randn(2, D16, D16)
    batch = {"y": y, "rot": rot, "ctf": ctf}
    k1 = (np.arange(D16) - D16 // 2) / (D16 * apix)
    freqs = np.stack(np.meshgrid(k1, k1, indexing="ij"), -1)
    c = _ctf_numpy(freqs[None], defocus[:, None])  # (2, D, D), DC at D // 2
    with torch.no_grad():
        mask = plain.loss_mask(rot).double().numpy()
        vol = pre.volumes(pre.encode(y, rot)[0])
        for model, premultiplied in ((pre, True), (plain, False)):
            recon = model(batch)["recon"]
            pred = render_images(vol, rot, ctf, apix, premultiplied)
            if premultiplied:
                r = (pred - y).double().numpy()
                spectrum = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(r, axes=(-2, -1))), axes=(-2, -1))
                spectrum /= np.sqrt(c**2 + PREMULTIPLIED_EPS)
                white = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(spectrum, axes=(-2, -1))), axes=(-2, -1)).real
                expected = np.mean((white**2 * mask).sum(axis=(1, 2)) / mask.sum(axis=(1, 2)))
                assert float(recon) == pytest.approx(expected, rel=1e-3)
            else:
                m = torch.from_numpy(mask).float()
                expected_plain = (((pred - y) ** 2 * m).sum(dim=(1, 2)) / m.sum(dim=(1, 2)).clamp(min=1.0)).mean()
                assert torch.equal(recon, expected_plain)


def test_opus_render_uses_ctf_squared():
    import torch

    from cryoscape.models.opus_dsd import render_images

    D16, apix = 16, 4.0
    vols = torch.randn(2, D16, D16, D16)
    rot = torch.from_numpy(_rotations(2, 6))
    defocus = np.array([9000.0, 18000.0])
    ctf = torch.from_numpy(_ctf_params(defocus))
    proj = render_images(vols, rot, None, apix).numpy().astype(np.float64)
    k1 = (np.arange(D16) - D16 // 2) / (D16 * apix)
    freqs = np.stack(np.meshgrid(k1, k1, indexing="ij"), -1)  # radially symmetric CTF: axis order irrelevant
    c = _ctf_numpy(freqs[None], defocus[:, None])  # (2, D, D), DC at D // 2
    spectrum = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(proj, axes=(-2, -1))), axes=(-2, -1))
    for premultiplied, transfer in ((True, c**2), (False, c)):
        expected = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(spectrum * transfer, axes=(-2, -1))),
                                   axes=(-2, -1)).real
        got = render_images(vols, rot, ctf, apix, ctf_premultiplied=premultiplied).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())


# -- end to end through the CLI --------------------------------------------------------------------------------
def _corr(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.mark.slow  # two simulations and two short trainings (about 30-40 s on a loaded 2-core CPU)
def test_premultiplied_tilt_series_give_the_same_map(tmp_path):
    """simulate-tilt --premultiply data (same particles, poses, CTFs and noise as the plain data, then CTF x image)
    trained as CTF^2 x slice give the same homogeneous map as the plain data: the same correlation with the truth
    and the same amplitude. Modelled as CTF x slice instead (the old behaviour), the map's low frequencies come out
    attenuated by the CTF (amplitude ratio about 0.6 here), which the amplitude check catches."""
    from cryoscape.cli.main import main
    from cryoscape.io.mrc import read_mrc
    from cryoscape.models import load_run

    sim = ["simulate-tilt", "--preset", "homogeneous", "-N", "24", "-D", "16", "--apix", "8", "--tilt-max", "30",
           "--snr", "10", "--seed", "3"]
    train = ["--model", "tomodrgn", "--zdim", "0", "--dec-dim", "32", "--dec-layers", "2", "-b", "6", "--lr", "1e-2",
             "-n", "8", "--no-progress", "--device", "cpu", "--seed", "0"]
    maps = {}
    for name, extra in (("plain", []), ("pre", ["--premultiply"])):
        assert main(sim + extra + ["-o", str(tmp_path / name)]) == 0
        assert load_tilt_series(tmp_path / name / "particles.star").ctf_premultiplied is bool(extra)
        run = tmp_path / f"run_{name}"
        assert main(["train", str(tmp_path / name / "particles.star"), "-o", str(run), *train]) == 0
        assert load_run(run).model.ctf_premultiplied is bool(extra)  # recorded in the checkpoint's build info
        assert main(["eval-vol", str(run), "-o", str(tmp_path / f"{name}.mrc"), "--device", "cpu"]) == 0
        maps[name] = read_mrc(tmp_path / f"{name}.mrc")[0].astype(np.float64)
    truth = read_mrc(tmp_path / "plain" / "gt" / "state_000.mrc")[0].astype(np.float64)
    corr = {k: _corr(v, truth) for k, v in maps.items()}
    amplitude = {k: float((v * truth).sum() / (truth * truth).sum()) for k, v in maps.items()}
    assert corr["plain"] > 0.8 and corr["pre"] > 0.8, corr
    assert abs(corr["pre"] - corr["plain"]) < 0.05, corr
    assert 0.85 < amplitude["pre"] / amplitude["plain"] < 1.15, amplitude


@pytest.mark.slow  # two simulations and two trainings of 25 epochs (about 45 s on a loaded 2-core CPU)
def test_premultiplied_tilt_series_give_the_same_states(tmp_path):
    """Two compositionally very different states (tilt4's core alone and core + three subunits), the same 100
    particles simulated plain and with --premultiply (same states, poses, CTFs and noise): tomodrgn separates the
    states on both, and the two runs put the particles in the same clusters. Checked beforehand with simulation
    seeds 2 and 5: ARI 1.0 on both variants from epoch 10-11 (plain) and 12-16 (premultiplied) of 25; the
    premultiplied runs learn a few epochs later (bench/RESULTS.md, section 12)."""
    from cryoscape.analysis.evaluate import clustering_scores
    from cryoscape.analysis.latent import kmeans_on_data, load_latents
    from cryoscape.cli.main import main
    from cryoscape.simulate.tilt import tilt4_states

    D, apix = 16, 16.0
    states = tilt4_states(D, apix)
    for s in (0, 3):
        write_mrc(tmp_path / f"state{s}.mrc", states.render(s).astype(np.float32), apix)
    sim = ["simulate-tilt", "--volumes", str(tmp_path / "state0.mrc"), str(tmp_path / "state3.mrc"), "-N", "100",
           "-D", str(D), "--tilt-max", "15", "--snr", "3", "--seed", "2", "--device", "cpu"]
    train = ["--model", "tomodrgn", "--zdim", "4", "--enc-dim", "64", "--enc-layers", "2", "--dec-dim", "64",
             "--dec-layers", "2", "--tilt-embed-dim", "16", "-b", "4", "--lr", "2e-3", "-n", "25", "--val-frac", "0",
             "--no-progress", "--device", "cpu", "--seed", "0", "--checkpoint-every", "25"]
    labels, truth = {}, {}
    for name, extra in (("plain", []), ("pre", ["--premultiply"])):
        assert main(sim + extra + ["-o", str(tmp_path / name)]) == 0
        truth[name] = np.load(tmp_path / name / "labels.npz")["state"]
        assert main(["train", str(tmp_path / name / "particles.star"), "-o", str(tmp_path / f"run_{name}"),
                     *train]) == 0
        lat = load_latents(tmp_path / f"run_{name}", 25)
        assert lat.indices is None or np.array_equal(lat.indices, np.arange(100))
        labels[name] = kmeans_on_data(lat.z, 2, seed=0).labels
    np.testing.assert_array_equal(truth["plain"], truth["pre"])  # the same particles
    assert 20 < np.bincount(truth["plain"]).min()  # both states well populated
    ari = {name: clustering_scores(labels[name], truth[name])["ari"] for name in labels}
    assert ari["plain"] >= 0.8 and ari["pre"] >= 0.8, ari
    assert clustering_scores(labels["pre"], labels["plain"])["ari"] >= 0.8, ari


def test_single_particle_premultiplied_end_to_end(tmp_path, capsys):
    """simulate --premultiply writes flagged, CTF-premultiplied images; cryodrgn trains on them with CTF^2 (recorded
    in the run), and encoding plain images with that run is refused in one line."""
    from cryoscape.cli.main import main
    from cryoscape.errors import InputError
    from cryoscape.inference import encode_particles
    from cryoscape.io.mrc import read_mrc
    from cryoscape.models import load_run

    common = ["simulate", "--preset", "homogeneous", "-N", "12", "-D", "16", "--snr", "inf", "--seed", "1",
              "--clean"]
    assert main(common + ["-o", str(tmp_path / "plain")]) == 0
    assert main(common + ["--premultiply", "-o", str(tmp_path / "pre")]) == 0
    pre = load_particles(tmp_path / "pre" / "particles.star")
    assert pre.ctf_premultiplied is True
    assert load_particles(tmp_path / "plain" / "particles.star").ctf_premultiplied is False
    # noise-free images: the premultiplied one is the plain one times its CTF once more (on the centred spectrum)
    import torch

    from cryoscape.imaging.ctf import ctf_image

    plain_img = read_mrc(tmp_path / "plain" / "particles.mrcs")[0][:3].astype(np.float64)
    pre_img = read_mrc(tmp_path / "pre" / "particles.mrcs")[0][:3].astype(np.float64)
    c = ctf_image(16, pre.pixel_size_angstrom, torch.from_numpy(pre.ctf.to_array()[:3]).double()).numpy()
    shift = lambda x: np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1))), axes=(-2, -1))  # noqa: E731
    np.testing.assert_allclose(shift(pre_img), shift(plain_img) * c, atol=1e-3 * np.abs(shift(plain_img)).max())
    capsys.readouterr()
    assert main(common + ["--premultiply", "--cs", "-o", str(tmp_path / "bad")]) != 0
    assert "cannot be recorded in particles.cs" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "pre" / "particles.star"), "-o", str(run), "--zdim", "1", "--enc-dim", "8",
                 "--enc-layers", "1", "--dec-dim", "8", "--dec-layers", "1", "-n", "1", "--no-progress",
                 "--device", "cpu"]) == 0
    assert load_run(run).model.ctf_premultiplied is True
    with pytest.raises(InputError, match="trained on CTF-premultiplied images"):
        encode_particles(run, particles=tmp_path / "plain" / "particles.star", device="cpu", progress=False)


@pytest.mark.parametrize("family", ["cryodrgn", "opus-dsd", "tomodrgn"])
def test_every_family_records_and_rebuilds_the_flag(family):
    """build_info (saved in checkpoints) records the data's flag and build_model gives it to the model; builds of
    older checkpoints (no entry) give plain models."""
    from cryoscape.cli.main import build_parser
    from cryoscape.cli.train import config_from_args
    from cryoscape.models.registry import get_family, with_family_defaults

    class Data:
        D, pixel_size_angstrom, norm_std, min_tilts = 16, 2.0, 1.0, 3

        def __init__(self, flag):
            self.ctf_premultiplied = flag

        def __len__(self):
            return 4

    args = build_parser().parse_args(["train", "p.star", "-o", "x", "--model", family, "--zdim", "2"])
    config = with_family_defaults(config_from_args(args))
    fam = get_family(family)
    for flag in (True, False):
        build = fam.build_info(Data(flag))
        assert build["ctf_premultiplied"] is flag
        assert fam.build_model(config, build).ctf_premultiplied is flag
    del build["ctf_premultiplied"]
    assert fam.build_model(config, build).ctf_premultiplied is False


def test_data_providers_carry_and_log_the_flag(tmp_path, caplog):
    import logging
    from dataclasses import replace

    from cryoscape.data.fourier_pixels import FourierPixels
    from cryoscape.data.image_data import ImageParticleData
    from cryoscape.data.particle_data import SliceParticleData

    ps = load_particles(_relion31_star(tmp_path / "pre.star", [1], [1, 1, 1, 1]))
    with caplog.at_level(logging.INFO):
        data = SliceParticleData(ps, FourierPixels.create(D), progress=False)
    assert data.ctf_premultiplied is True
    lines = [r.getMessage() for r in caplog.records if "premultiplied" in r.getMessage()]
    assert len(lines) == 1 and "pre.star" in lines[0]
    assert "CTF-premultiplied (rlnCtfDataAreCtfPremultiplied 1): modelled as CTF^2 x slice" in lines[0]
    assert ImageParticleData(ps, progress=False).ctf_premultiplied is True
    with pytest.raises(InputError, match="CTF-premultiplied .* but have no CTF parameters"):
        SliceParticleData(replace(ps, ctf=None), FourierPixels.create(D), progress=False)
    plain = load_particles(_relion31_star(tmp_path / "plain.star", [0], [1, 1, 1]))
    assert SliceParticleData(plain, FourierPixels.create(D), progress=False).ctf_premultiplied is False


def test_tomodrgn_encoder_sees_premultiplied_images_unflipped():
    import torch

    from cryoscape.models.tomodrgn import TomoDRGN

    torch.manual_seed(0)
    kw = dict(ntilts=None, zdim=2, pooling="mean", enc_dim=16, enc_layers=1, tilt_embed_dim=8, enc_dim_b=16,
              enc_layers_b=1, dec_dim=16, dec_layers=1)
    pre, plain = TomoDRGN(8, 5.0, ctf_premultiplied=True, **kw).eval(), TomoDRGN(8, 5.0, **kw).eval()
    plain.load_state_dict(pre.state_dict())
    y = torch.randn(2, 3, pre.pixels.n_pixels)
    mask = torch.ones(2, 3, dtype=torch.bool)
    c = torch.from_numpy(_ctf_numpy(pre.freqs.numpy() / 5.0, np.array([[9e3, 1.2e4, 1.5e4], [2e4, 2.1e4, 2.2e4]])))
    c = c.float()
    with torch.no_grad():
        torch.testing.assert_close(pre.encode(y, c, mask)[0], pre.encode(y, torch.ones_like(c), mask)[0])
        torch.testing.assert_close(plain.encode(y, c, mask)[0], plain.encode(y * torch.sign(c), torch.ones_like(c),
                                                                             mask)[0])
        assert not torch.allclose(plain.encode(y, c, mask)[0], pre.encode(y, c, mask)[0])
