"""Central-slice coordinates, circle masks and the Hermitian half-plane."""

import numpy as np
import torch

from cryoscape.imaging.fft import fft2_centered
from cryoscape.imaging.lattice import central_slice_coords, circle_mask, hermitian_half
from cryoscape.imaging.rotations import random_rotations


def test_central_slice_coords_is_A_transpose_k():
    A = random_rotations(4, seed=0)
    freqs = np.random.default_rng(1).uniform(-0.5, 0.5, (10, 2))
    got = central_slice_coords(torch.as_tensor(A), torch.as_tensor(freqs)).numpy()
    assert got.shape == (4, 10, 3)
    for b in range(4):
        for p in range(10):
            k = np.array([freqs[p, 0], freqs[p, 1], 0.0])
            np.testing.assert_allclose(got[b, p], A[b].T @ k, atol=1e-12)
    # per-image frequencies (B, P, 2) broadcast the same way
    per = torch.as_tensor(np.stack([freqs] * 4))
    np.testing.assert_allclose(central_slice_coords(torch.as_tensor(A), per).numpy(), got, atol=1e-12)


def test_circle_mask():
    D = 16
    m = circle_mask(D).numpy()
    i = np.arange(D) - D // 2
    r = np.sqrt(i[:, None] ** 2 + i[None, :] ** 2)
    np.testing.assert_array_equal(m, r < 8)
    assert m[8, 8] and not m[0, 8] and m[1, 8] and not m[8, 0]
    assert circle_mask(D, 3).sum() == np.sum(r < 3)


def test_hermitian_half_pairs_friedel_mates():
    D = 16
    half, mates, dc = hermitian_half(D)
    assert dc == 8 * 16 + 8
    x = torch.as_tensor(np.random.default_rng(0).normal(size=(D, D)))
    F = fft2_centered(x).reshape(-1)
    np.testing.assert_allclose(F[mates].numpy(), np.conj(F[half].numpy()), atol=1e-10)
    # half, mates and DC partition the circle, without overlap
    everything = torch.cat([half, mates, torch.tensor([dc])])
    assert len(set(everything.tolist())) == everything.numel()
    np.testing.assert_array_equal(np.sort(everything.numpy()), np.flatnonzero(circle_mask(D).numpy().ravel()))
    ky, kx = half // D - D // 2, half % D - D // 2
    assert torch.all((ky > 0) | ((ky == 0) & (kx > 0)))
    # a larger radius is capped so that every mate stays on the grid
    h2, m2, _ = hermitian_half(D, radius_px=100)
    assert m2.max() < D * D and m2.min() >= 0
