"""Fourier-gridding back-projection recovers a known volume from noise-free CTF-affected, shifted projections."""

import numpy as np
import pytest
import torch

from cryoscape.analysis.backprojection import backproject
from cryoscape.analysis.fsc import fsc
from cryoscape.errors import InputError
from cryoscape.imaging.ctf import ctf_image
from cryoscape.imaging.fft import fft2_centered, ifft2_centered
from cryoscape.imaging.projection import project_fourier
from cryoscape.imaging.rotations import random_rotations
from cryoscape.imaging.shift import phase_shift

D, PIXEL_A, N = 24, 5.0, 2000


def blobs(D, seed=0):
    rng = np.random.default_rng(seed)
    i = np.arange(D) - D // 2
    z, y, x = np.meshgrid(i, i, i, indexing="ij")
    vol = np.zeros((D, D, D))
    for _ in range(10):
        c, s = rng.uniform(-0.2 * D, 0.2 * D, 3), rng.uniform(1.0, 2.0)
        vol += np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * s * s))
    return vol.astype(np.float32)


@pytest.fixture(scope="module")
def dataset():
    """Images = translate(CTF * P_A[V], -origin), as in docs/conventions.md (noise-free)."""
    rng = np.random.default_rng(1)
    vol = blobs(D)
    rotations = random_rotations(N, seed=2)
    origins_px = rng.uniform(-3, 3, (N, 2))
    dfu = rng.uniform(10000, 20000, N)
    ctf = np.stack(
        [dfu, dfu - rng.uniform(0, 600, N), rng.uniform(0, 180, N), np.full(N, 300.0), np.full(N, 2.7),
         np.full(N, 0.1), np.zeros(N), np.zeros(N), np.ones(N)], axis=1,
    ).astype(np.float32)
    images = []
    for b in range(0, N, 500):
        sl = slice(b, b + 500)
        proj = project_fourier(torch.as_tensor(vol), torch.as_tensor(rotations[sl], dtype=torch.float32),
                               gridding_correction=True)
        F = fft2_centered(proj) * ctf_image(D, PIXEL_A, torch.as_tensor(ctf[sl]))
        F = phase_shift(F, -torch.as_tensor(origins_px[sl], dtype=torch.float32))
        images.append(ifft2_centered(F).real)
    return vol, torch.cat(images).numpy(), rotations, origins_px, ctf


@pytest.fixture(scope="module")
def reconstruction(dataset):
    vol, images, rotations, origins_px, ctf = dataset
    return backproject(images, rotations, origins_px, ctf, PIXEL_A, progress=False)


def test_wiener_reconstruction_matches_truth(dataset, reconstruction):
    vol = dataset[0]
    out = reconstruction
    for key in ("volume", "half_a", "half_b"):
        assert out[key].shape == (D, D, D) and out[key].dtype == np.float32
    freqs, curve = fsc(out["volume"], vol)
    assert curve[freqs <= 0.25].min() >= 0.95  # out to half of Nyquist
    assert curve.min() >= 0.9
    assert np.linalg.norm(out["volume"] - vol) / np.linalg.norm(vol) < 0.1  # absolute scale is right too
    _, halves = fsc(out["half_a"], out["half_b"])
    assert halves[freqs <= 0.25].min() >= 0.95


def test_ctf_correction_and_shift_sign_matter(dataset, reconstruction):
    vol, images, rotations, origins_px, ctf = dataset
    freqs, good = fsc(reconstruction["volume"], vol)

    def rel_error(v):
        return np.linalg.norm(v - vol) / np.linalg.norm(vol)

    # without correction the phases beyond the first CTF zero are reversed: negative FSC, large error
    uncorrected = backproject(images, rotations, origins_px, ctf, PIXEL_A, ctf_correction="none", progress=False)
    _, bad = fsc(uncorrected["volume"], vol)
    assert bad.min() < 0 and rel_error(uncorrected["volume"]) > 0.4
    # phase flipping restores the phases (FSC, which ignores shell scale, is high) but not the amplitudes
    flipped = backproject(images, rotations, origins_px, ctf, PIXEL_A, ctf_correction="flip", progress=False)
    _, flip = fsc(flipped["volume"], vol)
    assert flip.min() > 0.9 and rel_error(flipped["volume"]) > 0.4
    assert rel_error(reconstruction["volume"]) < 0.1
    # origins are applied as +origin: the opposite sign destroys the mid frequencies
    wrong_sign = backproject(images, rotations, -origins_px, ctf, PIXEL_A, progress=False)
    _, wrong = fsc(wrong_sign["volume"], vol)
    band = (freqs > 0.05) & (freqs <= 0.25)
    assert wrong[band].mean() < 0.5 < good[band].min()


class LazyStack:
    """Stand-in for a lazily read particle stack: only ``__len__`` and ``__getitem__(index_array)``."""

    def __init__(self, images):
        self.images = images
        self.requests = 0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, idx):
        self.requests += 1
        return self.images[np.asarray(idx)].astype(np.float32)


def test_halves_indices_batches_and_lazy_stacks(dataset):
    vol, images, rotations, origins_px, ctf = dataset
    n = 200
    args = (rotations[:n], origins_px[:n], ctf[:n], PIXEL_A)
    full = backproject(images[:n], *args, wiener_epsilon=1.0, progress=False)
    stack = LazyStack(images[:n])
    even = backproject(stack, *args, indices=np.arange(0, n, 2), batch_size=17, wiener_epsilon=1.0, progress=False)
    assert stack.requests == int(np.ceil(100 / 17))
    np.testing.assert_allclose(even["volume"], full["half_a"], atol=1e-4 * np.abs(full["half_a"]).max())
    np.testing.assert_allclose(even["half_a"], full["half_a"], atol=1e-4 * np.abs(full["half_a"]).max())
    assert np.abs(even["half_b"]).max() == 0.0  # no odd particles selected
    odd = backproject(images[:n], *args, indices=np.arange(1, n, 2), wiener_epsilon=1.0, progress=False)
    np.testing.assert_allclose(odd["volume"], full["half_b"], atol=1e-4 * np.abs(full["half_b"]).max())
    assert not np.allclose(full["half_a"], full["half_b"], atol=1e-3)


def test_bad_inputs_raise_input_error(dataset):
    vol, images, rotations, origins_px, ctf = dataset
    with pytest.raises(InputError):
        backproject(images[:10], rotations[:9], origins_px[:10], ctf[:10], PIXEL_A, progress=False)
    with pytest.raises(InputError):
        backproject(images[:10], rotations[:10], origins_px[:10], ctf[:10, :8], PIXEL_A, progress=False)
    with pytest.raises(InputError):
        backproject(images[:10], rotations[:10], origins_px[:10], ctf[:10], PIXEL_A, ctf_correction="x")
    with pytest.raises(InputError):
        backproject(images[:10], rotations[:10], origins_px[:10], ctf[:10], PIXEL_A, indices=[12], progress=False)
