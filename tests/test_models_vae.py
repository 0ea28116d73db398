"""The shared VAE pieces (models/vae.py) that every family uses."""

import numpy as np
import pytest
import torch

from cryoscape.models.vae import gaussian_kl, hartley_from_half_plane, kl_divergence, reparameterize, volumes_in_batches


def test_reparameterize_draws_around_the_mean_while_training_only():
    mu, logvar = torch.full((20000, 2), 3.0), torch.full((20000, 2), np.log(0.25))
    assert torch.equal(reparameterize(mu, logvar, training=False), mu)
    torch.manual_seed(0)
    z = reparameterize(mu, logvar, training=True)
    assert z.mean().item() == pytest.approx(3.0, abs=0.02) and z.std().item() == pytest.approx(0.5, abs=0.02)


def test_gaussian_kl_against_torch_distributions():
    torch.manual_seed(1)
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(5, 3), torch.ones(5, 3))
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected)
    assert kl_divergence(mu, logvar).item() == pytest.approx(expected.mean().item(), rel=1e-6)


def test_hartley_from_half_plane():
    out = torch.tensor([[[1.0, 2.0], [3.0, -1.0], [5.0, 7.0]]])  # two half-plane points and the DC
    assert hartley_from_half_plane(out, 2).tolist() == [[-1.0, 4.0, 3.0, 2.0, 5.0]]
    batch = torch.randn(2, 3, 4, 2)  # leading dimensions pass through
    assert hartley_from_half_plane(batch, 3).shape == (2, 3, 7)


def test_volumes_in_batches_calls_the_decoder_per_batch():
    calls = []

    def decode(z):
        calls.append(len(z))
        return z.sum(dim=1)[:, None, None, None].expand(-1, 4, 4, 4)

    z = np.arange(10, dtype=np.float32).reshape(5, 2)
    vols = volumes_in_batches(z, 2, 2, decode, 4)
    assert calls == [2, 2, 1] and vols.shape == (5, 4, 4, 4) and vols.dtype == np.float32
    np.testing.assert_array_equal(vols[:, 0, 0, 0], z.sum(1))
    assert volumes_in_batches(np.zeros((0, 2)), 2, 3, decode, 4).shape == (0, 4, 4, 4)
