"""Issue 21: the coordinate decoder's first layer is initialised as the one linear layer it computes, and the
cryodrgn family's KL term and data normalisation are what their definitions say."""

import math

import numpy as np
import pytest
import torch

from _synthetic import two_state_particles
from cryoscape.data.fourier_pixels import FourierPixels
from cryoscape.data.particle_data import SliceParticleData
from cryoscape.models.cryodrgn import CryoDRGN, kl_divergence
from cryoscape.models.decoders import CoordinateDecoder


def _bound_and_std(t: torch.Tensor) -> tuple[float, float]:
    t = t.detach()
    return float(t.abs().max()), float(t.std())


@pytest.mark.parametrize("zdim", [1, 8])
def test_split_first_layer_has_the_joint_layers_initialisation(zdim):
    torch.manual_seed(0)
    dec = CoordinateDecoder(32, zdim, 256, 1)
    fan_in = dec.encoding.out_dim + zdim  # the concatenated input [PE(q), z] of one nn.Linear
    bound = 1.0 / math.sqrt(fan_in)  # torch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    for t in (dec.input_coords.weight, dec.input_coords.bias, dec.input_latent.weight):
        top, std = _bound_and_std(t)
        assert top <= bound
        assert top > 0.9 * bound  # uniform over the whole interval, not a narrower one
        assert std == pytest.approx(bound / math.sqrt(3), rel=0.15)


def test_split_first_layer_computes_the_concatenated_linear_layer():
    torch.manual_seed(1)
    dec = CoordinateDecoder(16, 3, 32, 1)
    q = torch.rand(2, 5, 3) - 0.5
    z = torch.randn(2, 3)
    pe = dec.encoding(q)
    joint = torch.nn.functional.linear(
        torch.cat([pe, z[:, None, :].expand(-1, 5, -1)], dim=-1),
        torch.cat([dec.input_coords.weight, dec.input_latent.weight], dim=1), dec.input_coords.bias)
    split = dec.input_coords(pe) + dec.input_latent(z)[:, None, :]
    torch.testing.assert_close(split, joint)


def test_homogeneous_decoder_keeps_the_default_initialisation():
    torch.manual_seed(0)
    dec = CoordinateDecoder(32, 0, 256, 1)
    assert dec.input_latent is None
    bound = 1.0 / math.sqrt(dec.encoding.out_dim)
    top, _ = _bound_and_std(dec.input_coords.weight)
    assert 0.9 * bound < top <= bound


def test_kl_weight_is_one_over_zdim_per_scored_pixel():
    model = CryoDRGN(16, 2.0, zdim=4, enc_dim=8, enc_layers=1, dec_dim=8, dec_layers=1)
    assert model.beta == pytest.approx(0.25)
    mu, logvar = torch.tensor([[1.0, 0.0, 0.0, 2.0]]), torch.zeros(1, 4)
    # KL(N(mu, 1) || N(0, 1)) = |mu|^2 / 2 summed over the latent dimensions
    assert float(kl_divergence(mu, logvar)) == pytest.approx(2.5)
    parts, _, _ = two_state_particles(n=6, D=16)
    data = SliceParticleData(parts, FourierPixels.create(16), progress=False)
    terms = model(data.batch(np.arange(6)))
    torch.testing.assert_close(terms["loss"], terms["recon"] + 0.25 * terms["kl"] / data.pixels.n_pixels)
