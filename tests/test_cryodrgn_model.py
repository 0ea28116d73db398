"""The cryoDRGN family: shapes, Hermitian consistency, the loss, and learning on tiny synthetic data."""

import numpy as np
import pytest
import torch

from _synthetic import two_state_particles
from cryoscape.data.fourier_pixels import FourierPixels
from cryoscape.data.particle_data import SliceParticleData
from cryoscape.imaging.fft import fft3_centered
from cryoscape.imaging.projection import extract_central_slices
from cryoscape.models.cryodrgn import CryoDRGN, kl_divergence
from cryoscape.models.decoders import CoordinateDecoder, canonical_sign
from cryoscape.models.positional import PositionalEncoding


def test_fourier_pixels_pair_friedel_mates():
    px = FourierPixels.create(16)
    m = px.n_half
    assert px.n_pixels == 2 * m + 1
    np.testing.assert_allclose(px.freqs[:m].numpy(), -px.freqs[m : 2 * m].numpy())
    assert torch.all(px.freqs[-1] == 0)
    assert torch.all(px.freqs.norm(dim=1) < 0.5)


@pytest.mark.parametrize("pe", ["gaussian", "geom_lowf", "geom_full", "geom_nohighf", "linear_lowf", "none"])
def test_positional_encoding_shapes(pe):
    enc = PositionalEncoding(pe, D=16)
    out = enc(torch.rand(2, 5, 3) - 0.5)
    assert out.shape == (2, 5, enc.out_dim)
    if pe == "geom_lowf":  # lowest frequency is 1 rad per unit: sin(x) feature present
        x = torch.tensor([[0.3, 0.0, 0.0]])
        assert torch.isclose(enc(x)[0, 7], torch.sin(torch.tensor(0.3)), atol=1e-6)


def test_decoder_is_hermitian():
    torch.manual_seed(0)
    dec = CoordinateDecoder(D=16, zdim=3, hidden_dim=16, n_hidden_layers=1)
    q = torch.rand(2, 50, 3) - 0.5
    z = torch.randn(2, 3)
    a, b = dec(q, z), dec(-q, z)
    torch.testing.assert_close(a[..., 0], b[..., 0])
    torch.testing.assert_close(a[..., 1], -b[..., 1])
    assert torch.all(canonical_sign(q) * canonical_sign(-q) == -1)


def test_kl_divergence_known_value():
    mu = torch.tensor([[1.0, 0.0]])
    logvar = torch.zeros(1, 2)
    assert kl_divergence(mu, logvar).item() == pytest.approx(0.5)


def test_render_is_the_hartley_slice_of_the_generated_volume():
    """What the model renders for a pose equals the central slice of the volume it generates."""
    torch.manual_seed(0)
    D = 16
    model = CryoDRGN(D, pixel_size_angstrom=2.0, zdim=2, enc_dim=8, enc_layers=1, dec_dim=16, dec_layers=1,
                     pe_type="gaussian", feat_sigma=0.1)
    z = torch.randn(1, 2)
    rot = torch.eye(3)[None]
    rendered = model.render(rot, z)[0]
    vol = model.generate_volume(z[0])
    F = extract_central_slices(fft3_centered(vol), rot)[0]
    H = (F.real - F.imag).reshape(-1)[model.pixels.index]
    torch.testing.assert_close(rendered, H, atol=1e-4, rtol=1e-3)


def test_forward_terms_and_gradients():
    parts, _, _ = two_state_particles(n=8, D=16)
    data = SliceParticleData(parts, FourierPixels.create(16), progress=False)
    model = CryoDRGN(16, 2.0, zdim=2, enc_dim=16, enc_layers=1, dec_dim=16, dec_layers=1)
    terms = model(data.batch(np.arange(8)))
    assert set(terms) == {"loss", "recon", "kl"}
    expected = terms["recon"] + model.beta * terms["kl"] / data.pixels.n_pixels
    torch.testing.assert_close(terms["loss"], expected)
    terms["loss"].backward()
    assert model.encoder.net[0].weight.grad.abs().sum() > 0


def test_data_normalisation_and_shift_centering():
    parts, _, _ = two_state_particles(n=20, D=16)
    data = SliceParticleData(parts, FourierPixels.create(16), window=False, progress=False)
    assert data.values.std().item() == pytest.approx(1.0, rel=0.1)
    # an image translated by -origin and given origin back is prepared identically
    from cryoscape.imaging.shift import translate_images
    from cryoscape.metadata import Poses
    origin = np.tile([[2.0, -1.0]], (20, 1))
    moved = translate_images(torch.as_tensor(parts.images.images), -torch.as_tensor(origin)).numpy()
    parts2, _, _ = two_state_particles(n=20, D=16)
    parts2.images.images = moved.astype(np.float32)
    parts2.poses = Poses(parts.poses.rotations, origin * parts.pixel_size_angstrom)
    data2 = SliceParticleData(parts2, FourierPixels.create(16), window=False, norm_std=data.norm_std, progress=False)
    torch.testing.assert_close(data2.values, data.values, atol=1e-4, rtol=1e-4)


def test_frequency_marching_schedule_and_subset():
    parts, _, _ = two_state_particles(n=8, D=16)
    data = SliceParticleData(parts, FourierPixels.create(16), progress=False)
    batch = data.batch(np.arange(8))
    model = CryoDRGN(16, 2.0, zdim=2, enc_dim=16, enc_layers=1, dec_dim=16, dec_layers=1,
                     freq_march_epochs=4, march_start=0.25)
    model.set_training_progress(0.0)
    assert model.train_radius_px == pytest.approx(2.0)
    model.set_training_progress(2.0)
    assert model.train_radius_px == pytest.approx(5.0)  # halfway from 0.25 to 1 of Nyquist (8 px)
    subset = model.pixel_subset()
    m = model.pixels.n_half
    half = subset[: (subset.numel() - 1) // 2]
    radius = model.pixels.half_freqs().norm(dim=1) * 16
    assert set(half.tolist()) == set(torch.nonzero(radius < 5.0).squeeze(1).tolist())
    assert 0 < half.numel() < m and subset[-1] == 2 * m
    # the marched slice is the full slice restricted to the subset
    z, rot = torch.randn(8, 2), batch["rot"]
    torch.testing.assert_close(model.render(rot, z, half), model.render(rot, z)[:, subset])
    # the training loss is scored on the subset only; evaluation always uses the full lattice
    torch.manual_seed(0)
    terms = model(batch)
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"])
    model.eval()
    assert model.pixel_subset() is None
    model.train()
    model.set_training_progress(4.0)
    assert model.pixel_subset() is None and model.train_radius_px == 8.0
    # off by default
    plain = CryoDRGN(16, 2.0, zdim=2, enc_dim=16, enc_layers=1, dec_dim=16, dec_layers=1)
    plain.set_training_progress(0.0)
    assert plain.pixel_subset() is None


def test_volumes_batched_over_z_match_one_at_a_time():
    model = CryoDRGN(16, 2.0, zdim=2, enc_dim=16, enc_layers=1, dec_dim=16, dec_layers=1).eval()
    z = np.random.default_rng(0).normal(size=(3, 2)).astype(np.float32)
    one_by_one = np.stack([model.generate_volume(torch.from_numpy(zi)).numpy() for zi in z])
    batched = model.generate_volumes(z, batch_size=2)  # a batch of 2, then 1
    assert batched.shape == (3, 16, 16, 16)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5, rtol=1e-4)
    # a small chunk splits the coordinates across several decoder calls without changing the result
    torch.testing.assert_close(model.generate_volume_batch(torch.from_numpy(z), chunk=300),
                               torch.from_numpy(one_by_one), atol=1e-5, rtol=1e-4)


def _out_of_place(modules, h):
    """The MLP layers applied without in-place ops or the ``W + I`` folding (textbook residual layers)."""
    from cryoscape.models.mlp import ResidualLinear

    for module in modules:
        if isinstance(module, ResidualLinear):
            h = h + torch.nn.functional.linear(h, module.linear.weight, module.linear.bias)
        elif isinstance(module, torch.nn.ReLU):
            h = torch.relu(h)
        elif isinstance(module, torch.nn.LeakyReLU):
            h = torch.nn.functional.leaky_relu(h, module.negative_slope)
        else:
            h = module(h)
    return h


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_in_place_activations_compute_the_textbook_network_and_gradients(activation):
    from cryoscape.models.mlp import ResidualMLP

    torch.manual_seed(0)
    dec = CoordinateDecoder(16, 3, 32, 2, activation=activation)
    enc = ResidualMLP(20, 2, 32, 6, activation=activation)
    q = torch.rand(4, 50, 3) - 0.5
    z = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(4, 5, 20, requires_grad=True)  # leading dims (batch, tilt) as in the tomoDRGN encoder

    def reference():
        sign = canonical_sign(q)
        h = dec.input_coords(dec.encoding(q * sign[..., None])) + dec.input_latent(z)[:, None, :]
        out = _out_of_place(dec.body, h)
        return torch.stack([out[..., 0], out[..., 1] * sign], dim=-1), _out_of_place(enc.net, x)

    outputs = [dec(q, z), enc(x)]
    expected = reference()
    params = [*dec.parameters(), *enc.parameters(), z, x]
    weights = [torch.randn_like(o) for o in outputs]
    grads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outputs, weights, strict=True)), params)
    grads_ref = torch.autograd.grad(sum((o * w).sum() for o, w in zip(expected, weights, strict=True)), params)
    for got, want in zip(outputs, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert outputs[1].shape == (4, 5, 6)
