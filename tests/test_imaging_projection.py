"""Projection-slice theorem, projection geometry and batched / differentiable projection."""

import numpy as np
import pytest
import torch

from cryoscape.imaging.fft import fft2_centered, fft3_centered
from cryoscape.imaging.projection import extract_central_slices, project_fourier, project_real
from cryoscape.imaging.rotations import euler_relion_to_matrix, random_rotations


def gaussian_blobs(D, n=8, seed=0, spread=0.25):
    """Smooth random volume: a sum of Gaussians near the centre (float64)."""
    rng = np.random.default_rng(seed)
    i = np.arange(D) - D // 2
    z, y, x = np.meshgrid(i, i, i, indexing="ij")
    vol = np.zeros((D, D, D))
    for _ in range(n):
        c = rng.uniform(-spread * D, spread * D, 3)
        s = rng.uniform(1.2, 2.5)
        vol += rng.uniform(0.5, 1.5) * np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * s * s))
    return torch.as_tensor(vol)


@pytest.fixture(scope="module")
def vol():
    return gaussian_blobs(24)


def test_projection_slice_theorem(vol):
    R = torch.as_tensor(random_rotations(6, seed=1))
    real = project_real(vol, R).numpy()
    four = project_fourier(vol, R).numpy()
    for b in range(6):
        assert np.corrcoef(real[b].ravel(), four[b].ravel())[0, 1] > 0.999
        assert np.linalg.norm(real[b] - four[b]) / np.linalg.norm(real[b]) < 0.08
    corrected = project_fourier(vol, R, gridding_correction=True).numpy()
    assert np.linalg.norm(real - corrected) < np.linalg.norm(real - four)


def test_identity_projects_along_z(vol):
    eye = torch.eye(3, dtype=torch.float64)[None]
    np.testing.assert_allclose(project_real(vol, eye)[0].numpy(), vol.sum(0).numpy(), atol=1e-10)
    np.testing.assert_allclose(project_fourier(vol, eye)[0].numpy(), vol.sum(0).numpy(), atol=1e-10)
    slices = extract_central_slices(fft3_centered(vol), eye)
    np.testing.assert_allclose(slices[0].numpy(), fft2_centered(vol.sum(0)).numpy(), atol=1e-8)


def test_rotation_about_z_direction(vol):
    # rot = 90 deg: A = [[0, 1, 0], [-1, 0, 0], [0, 0, 1]], so image(x, y) = P0(A^T (x, y)) = P0(-y, x):
    # the content turns counter-clockwise in (x, y), i.e. np.rot90 (about the centre pixel D // 2)
    A = torch.as_tensor(euler_relion_to_matrix([[90.0, 0.0, 0.0]]))
    p0 = vol.sum(0).numpy()
    expected = np.roll(np.rot90(p0, 1), 1, axis=0)  # rot90 pivots on (D-1)/2; roll re-centres on D // 2
    wrong = np.roll(np.rot90(p0, -1), 1, axis=1)
    for img in (project_real(vol, A)[0].numpy(), project_fourier(vol, A)[0].numpy()):
        # row 0 of ``expected`` is the row wrapped round by np.roll; it has no counterpart in the projection.
        # (project_fourier loses the Nyquist row of the padded spectrum, which maps off the grid: ~1e-4 error)
        np.testing.assert_allclose(img[1:], expected[1:], atol=1e-3 * p0.max())
        assert np.abs(img[1:] - wrong[1:]).max() > 0.1 * np.abs(p0).max()


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_point_mass_projects_to_A_p(seed):
    D = 24
    p = np.array([4, -3, 2])  # (x, y, z) pixels from the centre
    v = torch.zeros(D, D, D, dtype=torch.float64)
    v[D // 2 + p[2], D // 2 + p[1], D // 2 + p[0]] = 1.0
    A = random_rotations(1, seed=seed)
    img = project_real(v, torch.as_tensor(A))[0].numpy()
    i = np.arange(D) - D // 2
    yy, xx = np.meshgrid(i, i, indexing="ij")
    centroid = np.array([(img * xx).sum(), (img * yy).sum()]) / img.sum()
    np.testing.assert_allclose(centroid, (A[0] @ p)[:2], atol=0.3)
    iy, ix = np.unravel_index(np.argmax(img), img.shape)
    assert np.hypot(ix - D // 2 - (A[0] @ p)[0], iy - D // 2 - (A[0] @ p)[1]) < 1.0


def test_batched_volumes_and_shapes():
    vols = torch.stack([gaussian_blobs(16, seed=s) for s in range(3)])
    R = torch.as_tensor(random_rotations(3, seed=5))
    for fn in (project_real, project_fourier):
        batched = fn(vols, R)
        assert batched.shape == (3, 16, 16)
        for b in range(3):
            np.testing.assert_allclose(batched[b].numpy(), fn(vols[b], R[b : b + 1])[0].numpy(), atol=1e-10)
    with pytest.raises(ValueError):
        project_real(vols, R[:2])


def test_differentiable_and_float32():
    vol = gaussian_blobs(16).float().requires_grad_(True)
    R = torch.as_tensor(random_rotations(2, seed=6)).float().requires_grad_(True)
    for fn in (project_real, project_fourier):
        out = fn(vol, R)
        assert out.dtype == torch.float32
        out.square().sum().backward()
        assert vol.grad is not None and torch.isfinite(vol.grad).all() and vol.grad.abs().sum() > 0
        assert R.grad is not None and torch.isfinite(R.grad).all() and R.grad.abs().sum() > 0
        vol.grad = None
        R.grad = None
