"""``train --ctf-field F`` (cryodrgn family): the rendered slices formed as particles cut from a micrograph (the CTF
applied on a field F boxes wide, the box cut out, windowed as the images), checked against independent definitions:
the CTF's point spread as a Hankel transform, and the simulator's ``--field`` images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoscape.cli.main import main
from cryoscape.imaging.ctf import CTFTensors, compute_ctf
from cryoscape.imaging.fft import hartley2, ihartley2
from cryoscape.metadata import CTFParams
from cryoscape.models.cryodrgn import CryoDRGN
from cryoscape.simulate.particles import form_images
from cryoscape.simulate.volumes import render_gaussians

D, APIX = 32, 2.0


def _model(field: int, window=None) -> CryoDRGN:
    return CryoDRGN(D, APIX, zdim=0, dec_dim=8, dec_layers=1, ctf_field=field, window=window).double()


def _pixels(model: CryoDRGN, image: np.ndarray) -> torch.Tensor:
    """Hartley values ``(1, P)`` of a real-space image at the model's pixels."""
    return hartley2(torch.as_tensor(image, dtype=torch.float64)).reshape(1, -1)[:, model.pixels.index]


def _image(model: CryoDRGN, values: torch.Tensor) -> np.ndarray:
    grid = values.new_zeros(1, D * D).index_copy(1, model.pixels.index, values)
    return ihartley2(grid.reshape(1, D, D))[0].numpy()


def test_the_field_model_is_the_linear_convolution_with_the_ctf_point_spread():
    """A centred Gaussian's projection through ``ctf_in_field``: its projection convolved (linearly, nothing wraps)
    with the CTF's point spread, computed independently as a Hankel transform of the radial CTF (1 % with F = 2 or
    3); the circular model (the CTF on the box's own spectrum) is 9 % off."""
    from scipy.special import j0

    sigma, defocus = 1.5, 15000.0  # the CTF spreads the signal near Nyquist by ~37 px, past the 32 px box
    ctf = torch.tensor(CTFParams.create([defocus], defocus, 0.0, 300.0, 2.7, 0.1).to_array(), dtype=torch.float64)
    k = np.linspace(0.0, 0.5, 4001)  # cycles/pixel, to the band limit
    c = compute_ctf(torch.tensor(np.stack([k / APIX, 0.0 * k], -1)), ctf)[0].numpy()
    r = np.hypot(*(np.indices((D, D)) - D // 2)).ravel()
    radial = c * np.exp(-2 * np.pi**2 * sigma**2 * k**2) * 2 * np.pi * k  # CTF x the Gaussian's 2-D spectrum
    expected = np.trapezoid(radial[None] * j0(2 * np.pi * k[None] * r[:, None]), k, axis=1).reshape(D, D)
    y, x = np.indices((D, D)) - D // 2
    projection = np.exp(-(x**2 + y**2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)

    def error(field: int) -> float:
        model = _model(field)
        values = _pixels(model, projection)
        if field == 1:
            out = values * model.ctf_values(CTFTensors.of(ctf))
        else:
            out = model.ctf_in_field(values, CTFTensors.of(ctf))
        return float(np.linalg.norm(_image(model, out) - expected) / np.linalg.norm(expected))

    assert error(2) < 0.01 and error(3) < 0.01
    assert error(1) > 0.05


def test_the_field_model_renders_what_simulate_field_images():
    """Through the model's own path (the slice of a blob map, ``forward``'s CTF step): ``simulate --field 2``'s
    noise-free images at the model's pixels, for rotated, off-centre blobs and an astigmatic CTF."""
    rng = np.random.default_rng(0)
    centres = rng.uniform(-5, 5, (6, 3)) * APIX
    vol = torch.tensor(render_gaussians(centres, 1.6 * APIX, 1.0, D, APIX))
    rot = torch.tensor(np.linalg.qr(rng.normal(size=(2, 3, 3)))[0])
    rot = rot * torch.linalg.det(rot)[:, None, None]  # proper rotations
    params = CTFParams.create([12000.0, 20000.0], [14000.0, 18000.0], [30.0, 70.0], 300.0, 2.7, 0.07)
    ctf = torch.tensor(params.to_array(), dtype=torch.float64)
    zero = torch.zeros(2, 2, dtype=torch.float64)
    plain = form_images(vol, rot, zero, None, APIX)  # projections (no CTF): the slices' real-space images
    cut = form_images(vol, rot, zero, ctf, APIX, field=2)
    circular = form_images(vol, rot, zero, ctf, APIX, field=1)
    model = _model(2)
    values = hartley2(plain).reshape(2, -1)[:, model.pixels.index]
    got = model.ctf_in_field(values, CTFTensors.of(ctf))
    want = hartley2(cut).reshape(2, -1)[:, model.pixels.index]
    other = hartley2(circular).reshape(2, -1)[:, model.pixels.index]
    rel = float((got - want).norm() / want.norm())
    assert rel < 0.01, rel
    assert float((got - other).norm() / other.norm()) > 5 * rel  # and not the circular images


def test_the_window_multiplies_the_cut_image_and_a_flat_ctf_changes_nothing():
    """With a CTF of 1 everywhere (no defocus, no aberration, amplitude contrast 1: |CTF| = 1) the field model
    returns the slice itself (up to the sign convention), windowed when a window is given."""
    from cryoscape.data.preprocess import make_window

    rng = np.random.default_rng(1)
    model = _model(2)
    values = torch.tensor(rng.normal(size=(1, model.pixels.n_pixels)))
    flat = CTFTensors.create(defocus_u=0.0, defocus_v=0.0, angle=0.0, voltage=300.0, cs=0.0, w=1.0).values
    flat = flat.double()[None]
    sign = float(compute_ctf(torch.zeros(1, 2, dtype=torch.float64), CTFTensors.of(flat))[0, 0])
    assert abs(abs(sign) - 1) < 1e-9
    torch.testing.assert_close(model.ctf_in_field(values, CTFTensors.of(flat)), sign * values)
    window = make_window(D, True)
    assert window is not None
    windowed = _model(2, window).double()
    expected = sign * _pixels(model, _image(model, values) * window.double().numpy())
    torch.testing.assert_close(windowed.ctf_in_field(values, CTFTensors.of(flat)), expected)


def test_train_ctf_field_option(tmp_path, capsys):
    """`train --ctf-field 2`: recorded in the configuration and used by the rebuilt model (reload by path); refused
    below 1 in one line; also for CTF-premultiplied images; the default is 1."""
    from cryoscape.config import load_config
    from cryoscape.models.loading import load_run

    sim = tmp_path / "sim"
    assert main(["simulate", "--preset", "discrete3", "-N", "24", "-D", "16", "--apix", "6", "--snr", "2",
                 "--field", "2", "-o", str(sim)]) == 0
    small = ["--zdim", "2", "--enc-dim", "8", "--enc-layers", "1", "--dec-dim", "8", "--dec-layers", "1", "-b", "8",
             "--no-progress", "--threads", "1", "-n", "1"]
    run = tmp_path / "run"
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "--ctf-field", "2", *small]) == 0
    assert load_config(run / "config.yaml").model.ctf_field == 2
    model = load_run(run).model
    assert model.ctf_field == 2 and model.window is not None
    assert main(["train", str(sim / "particles.star"), "-o", str(tmp_path / "bad"), "--ctf-field", "0",
                 *small]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--ctf-field" in err[0]
    pre = tmp_path / "pre"  # CTF-premultiplied images: the second CTF on the cut box's spectrum
    assert main(["simulate", "--preset", "discrete3", "-N", "16", "-D", "16", "--apix", "6", "--snr", "2",
                 "--premultiply", "-o", str(pre)]) == 0
    assert main(["train", str(pre / "particles.star"), "-o", str(tmp_path / "pre_run"), "--ctf-field", "2",
                 *small]) == 0
    trained = load_run(tmp_path / "pre_run").model
    assert trained.ctf_field == 2 and trained.ctf_premultiplied
    plain = tmp_path / "plain"
    assert main(["train", str(sim / "particles.star"), "-o", str(plain), *small]) == 0
    assert load_run(plain).model.ctf_field == 1  # the default: the circular model


@pytest.mark.parametrize("field", [2])
def test_forward_with_the_field_model_has_gradients(field):
    model = CryoDRGN(16, APIX, zdim=2, enc_dim=8, enc_layers=1, dec_dim=8, dec_layers=1, ctf_field=field)
    P = model.pixels.n_pixels
    ctf = CTFTensors.create(defocus_u=torch.full((3,), 15000.0), defocus_v=15000.0, angle=0.0, voltage=300.0,
                            cs=2.7, w=0.1)
    batch = {"y": torch.randn(3, P), "rot": torch.eye(3).expand(3, 3, 3), "ctf": ctf}
    terms = model(batch)
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"])
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.decoder.parameters())


def test_premultiplied_images_get_the_second_ctf_on_the_cut_box():
    """CTF-premultiplied: the field model's image times the CTF on the box's spectrum, as RELION premultiplies a
    particle after extraction."""
    model = CryoDRGN(D, APIX, zdim=0, dec_dim=8, dec_layers=1, ctf_field=2)
    pre = CryoDRGN(D, APIX, zdim=0, dec_dim=8, dec_layers=1, ctf_field=2, ctf_premultiplied=True)
    pre.load_state_dict(model.state_dict())
    ctf = CTFTensors.create(defocus_u=torch.tensor([15000.0]), defocus_v=14000.0, angle=20.0, voltage=300.0,
                            cs=2.7, w=0.1)
    rot = torch.eye(3)[None]
    batch = {"rot": rot, "ctf": ctf, "y": torch.zeros(1, model.pixels.n_pixels)}
    slice_ = model.render(rot, None)
    once = model.ctf_in_field(slice_, ctf)
    # the loss of target 0 is the weighted mean square of the prediction: recover the predictions from it
    from cryoscape.imaging.ctf import premultiplied_weights

    c = model.ctf_values(ctf)
    want = torch.mean(premultiplied_weights(c) * (once * c) ** 2)
    torch.testing.assert_close(pre(batch)["recon"], want)
    assert not torch.allclose(model(batch)["recon"], want)
