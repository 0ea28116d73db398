"""Fourier phase shifts translate images by +t pixels."""

import numpy as np
import torch

from cryoscape.imaging.fft import fft2_centered, ifft2_centered
from cryoscape.imaging.shift import phase_shift, translate_images


def test_integer_shift_equals_roll():
    rng = np.random.default_rng(0)
    imgs = rng.normal(size=(3, 16, 16))
    shifts = np.array([[2.0, 0.0], [0.0, -3.0], [5.0, 1.0]])  # (tx, ty)
    out = translate_images(torch.as_tensor(imgs), torch.as_tensor(shifts)).numpy()
    for b in range(3):
        tx, ty = int(shifts[b, 0]), int(shifts[b, 1])
        np.testing.assert_allclose(out[b], np.roll(imgs[b], (ty, tx), axis=(-2, -1)), atol=1e-10)


def test_subpixel_shift_moves_gaussian_centroid():
    D = 32
    i = np.arange(D) - D // 2
    y, x = np.meshgrid(i, i, indexing="ij")
    g = np.exp(-((x - 1.0) ** 2 + (y + 2.0) ** 2) / (2 * 2.0**2))
    t = np.array([[1.3, -0.7]])
    out = translate_images(torch.as_tensor(g[None]), torch.as_tensor(t)).numpy()[0]
    cx, cy = (out * x).sum() / out.sum(), (out * y).sum() / out.sum()
    np.testing.assert_allclose([cx, cy], [1.0 + 1.3, -2.0 - 0.7], atol=1e-6)
    # shifting back restores the image
    back = translate_images(torch.as_tensor(out[None]), torch.as_tensor(-t)).numpy()[0]
    np.testing.assert_allclose(back, g, atol=1e-8)


def test_phase_shift_with_extra_batch_axes():
    rng = np.random.default_rng(1)
    imgs = torch.as_tensor(rng.normal(size=(2, 3, 8, 8)))
    shifts = torch.tensor([[1.0, 2.0], [-1.0, 0.0]], dtype=torch.float64)
    out = ifft2_centered(phase_shift(fft2_centered(imgs), shifts)).real.numpy()
    np.testing.assert_allclose(out[0, 2], np.roll(imgs[0, 2].numpy(), (2, 1), axis=(0, 1)), atol=1e-10)
    np.testing.assert_allclose(out[1, 1], np.roll(imgs[1, 1].numpy(), (0, -1), axis=(0, 1)), atol=1e-10)
