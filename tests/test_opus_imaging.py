"""OPUS-DSD image formation: real-space rendering vs the projection-slice theorem, the encoder's back-rotation,
volume priors (TV, L1), masks and network shapes."""

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
from torch import nn

from cryoscape.data.image_data import prepare_images
from cryoscape.errors import InputError
from cryoscape.imaging.ctf import ctf_image
from cryoscape.imaging.fft import fft2_centered, ifft2_centered
from cryoscape.imaging.projection import project_fourier, project_real, rotation_grid
from cryoscape.imaging.rotations import euler_relion_to_matrix, random_rotations
from cryoscape.imaging.shift import translate_images
from cryoscape.io.mrc import write_mrc
from cryoscape.models.opus_dsd import (
    OpusDSD,
    default_templateres,
    kl_divergence_logstd,
    load_volume_mask,
    render_images,
)
from cryoscape.models.opus_networks import ConvDecoder, ConvEncoder, pseudo_volumes, rotate_volumes
from cryoscape.models.opus_prior import l1_norm, total_variation

D = 32
CTF = [12000.0, 11000.0, 30.0, 300.0, 2.7, 0.1, 0.0, 0.0, 1.0]


def _grid(n=D):
    i = torch.arange(n, dtype=torch.float64) - n // 2
    return torch.meshgrid(i, i, i, indexing="ij")  # z, y, x


def _blobs(n=D) -> torch.Tensor:
    zz, yy, xx = _grid(n)

    def blob(c, s):
        return torch.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2) / (2 * s * s))

    return (blob((3, -2, 1), 2.5) + 0.7 * blob((-4, 3, -2), 2.0) + 0.5 * blob((0, 5, 4), 1.8)).float()


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_rendering_obeys_projection_slice_theorem():
    """Spatial-transformer projection (+ CTF) == central-slice projection (+ CTF) of the same volume."""
    vol = _blobs()
    rot = torch.as_tensor(random_rotations(6, 1), dtype=torch.float32)
    vols = vol[None].expand(6, -1, -1, -1)
    fourier = project_fourier(vol, rot, oversample=2)
    assert _rel(render_images(vols, rot, None, 3.0), fourier) < 0.05
    ctf = torch.tensor([CTF]).repeat(6, 1)
    expected = ifft2_centered(fft2_centered(fourier) * ctf_image(D, 3.0, ctf)).real
    assert _rel(render_images(vols, rot, ctf, 3.0), expected) < 0.05
    # a convention error (transposed rotation) would be far off
    assert _rel(render_images(vols, rot.transpose(1, 2), None, 3.0), fourier) > 0.3


class _FixedDecoder(nn.Module):
    """Returns one volume for every latent (and keeps a parameter so the model stays trainable)."""

    def __init__(self, vol):
        super().__init__()
        self.vol = nn.Parameter(vol.clone())

    def forward(self, z):
        return self.vol[None].expand(z.shape[0], -1, -1, -1) + 0.0 * z.sum()


def test_model_rendering_path_reproduces_observed_images():
    """observed = translate(CTF * P_A[V], -origin) (Fourier slice) is explained by the model with error ~ 0."""
    Dm = 24
    vol = _blobs(Dm)
    model = OpusDSD(Dm, 3.0, n_particles=10, zdim=2, templateres=32, channel_scale=0.125, mask=torch.ones(Dm, Dm, Dm))
    model.decoder = _FixedDecoder(torch.zeros(32, 32, 32))
    model.volumes = lambda z: vol[None].expand(z.shape[0], -1, -1, -1)  # bypass resampling: V exactly
    B = 5
    rot = torch.as_tensor(random_rotations(B, 3), dtype=torch.float32)
    ctf = torch.tensor([CTF]).repeat(B, 1)
    origins = torch.tensor([[1.5, -2.0], [0.0, 0.0], [-3.0, 1.0], [2.25, 2.5], [-0.5, -1.5]])
    clean = ifft2_centered(fft2_centered(project_fourier(vol, rot)) * ctf_image(Dm, 3.0, ctf)).real
    observed = translate_images(clean, -origins)
    y = prepare_images(observed, origins)  # the data provider centres by +origin
    # (sub-pixel shifts lose only the Nyquist row)
    np.testing.assert_allclose(y.numpy(), clean.numpy(), atol=1e-3 * float(clean.abs().max()))
    model.eval()
    terms = model({"y": y, "rot": rot, "ctf": ctf})
    power = float((clean**2).mean())
    assert float(terms["recon"]) < 0.01 * power
    # the wrong pose convention is not explained
    bad = model({"y": y, "rot": rot.transpose(1, 2).contiguous(), "ctf": ctf})
    assert float(bad["recon"]) > 0.2 * power


def test_rotate_volumes_then_sum_is_project_real():
    vol = _blobs()
    rot = torch.as_tensor(random_rotations(3, 5), dtype=torch.float32)
    rotated = rotate_volumes(vol[None, None].expand(3, 1, -1, -1, -1), rot.transpose(1, 2))
    np.testing.assert_allclose(rotated[:, 0].sum(1).numpy(), project_real(vol, rot).numpy(), atol=1e-4)


def test_rotation_grid_equals_affine_grid():
    M = torch.as_tensor(random_rotations(4, 3), dtype=torch.float32)
    for n in (8, 9, 16):
        c = (n // 2) * 2.0 / (n - 1) - 1.0
        theta = torch.cat([M, c * (torch.ones(4, 3, 1) - M @ torch.ones(4, 3, 1))], dim=2)
        expected = nnf.affine_grid(theta, [4, 1, n, n, n], align_corners=True)
        np.testing.assert_allclose(rotation_grid(M, n).numpy(), expected.numpy(), atol=1e-6)


def test_default_loss_mask_is_the_projected_sphere_at_every_pose():
    from cryoscape.imaging.masks import sphere_mask
    from cryoscape.models.opus_dsd import MASK_RADIUS_FRAC

    rot = torch.as_tensor(random_rotations(5, 4), dtype=torch.float32)
    default = OpusDSD(D, 1.0, 10, zdim=2, channel_scale=0.1)
    supplied = OpusDSD(D, 1.0, 10, zdim=2, channel_scale=0.1,
                       mask=sphere_mask(D, MASK_RADIUS_FRAC * D / 2).float())  # projected at each pose
    disc = default.loss_mask(rot)
    assert disc.shape == (5, D, D)
    i = torch.arange(D, dtype=torch.float32) - D // 2
    radius = torch.sqrt(i[:, None] ** 2 + i[None, :] ** 2)
    R = MASK_RADIUS_FRAC * D / 2
    assert torch.all(disc[:, radius < R - 1] == 1) and torch.all(disc[:, radius > R + 1] == 0)
    for k in range(5):
        assert torch.equal(disc[k], disc[0])
    per_pose = supplied.loss_mask(rot)
    # the per-pose projection differs from the disc only by interpolation at the rim
    differ = per_pose != disc
    assert torch.all((radius[None].expand_as(differ)[differ] - R).abs() < 2)
    assert differ.float().mean() < 0.05


def test_pseudo_volume_is_smeared_along_the_beam_in_the_volume_frame():
    """The image of a point at r0 comes back as a line through r0 along A^T e_z."""
    A = torch.as_tensor(euler_relion_to_matrix(np.array([[40.0, 70.0, -25.0]])), dtype=torch.float32)
    r0 = np.array([4.0, -3.0, 2.0])
    zz, yy, xx = _grid()
    point = torch.exp(-((xx - r0[0]) ** 2 + (yy - r0[1]) ** 2 + (zz - r0[2]) ** 2) / 2.0).float()
    image = project_real(point, A)
    W = pseudo_volumes(image, A)[0, 0].double()

    def at(r):
        x, y, z = (np.round(r).astype(int) + D // 2).tolist()
        return float(W[z, y, x])

    beam = A[0, 2].double().numpy()  # A^T e_z
    perp = np.cross(beam, [0.0, 0.0, 1.0] if abs(beam[2]) < 0.9 else [1.0, 0.0, 0.0])
    perp /= np.linalg.norm(perp)
    peak = float(W.max())
    assert at(r0) > 0.8 * peak
    assert at(r0 + 6 * beam) > 0.5 * peak and at(r0 - 6 * beam) > 0.5 * peak
    assert at(r0 + 4 * perp) < 0.05 * peak


def test_total_variation_and_l1_of_known_volumes():
    n = 12
    step = torch.zeros(1, n, n, n)
    step[..., n // 2 :] = 1.0  # unit step along x
    m = n - 1
    expected_tv = (m**2 * 1.0 + (m**3 - m**2) * 1e-4) / m**3
    assert float(total_variation(step)) == pytest.approx(expected_tv, rel=1e-5)
    assert float(l1_norm(step)) == pytest.approx(0.5)
    assert float(l1_norm(-step)) == pytest.approx(0.5)
    zz, yy, xx = _grid(n)
    ramp = (0.3 * xx - 0.4 * yy + 1.2 * zz).float()[None]  # |gradient| = 1.3 everywhere
    assert float(total_variation(ramp)) == pytest.approx(1.3, rel=1e-5)
    left = torch.zeros(n, n, n, dtype=torch.bool)
    left[..., : n // 2] = True
    assert float(l1_norm(step, left)) == 0.0
    assert float(l1_norm(step, ~left)) == pytest.approx(1.0)
    # inside x < n/2 only the plane x = n/2 - 1 (1 of n/2 planes) sees the step
    assert float(total_variation(step, left)) == pytest.approx((1.0 + (n // 2 - 1) * 1e-4) / (n // 2), rel=1e-5)


def test_kl_matches_torch_distributions():
    mu = torch.randn(5, 3)
    logstd = 0.3 * torch.randn(5, 3)
    q = torch.distributions.Normal(mu, logstd.exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    np.testing.assert_allclose(kl_divergence_logstd(mu, logstd).numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_mask_file_resampled_and_validated(tmp_path):
    big = np.zeros((32, 32, 32), np.float32)
    big[8:24, 8:24, 8:24] = 1.0
    write_mrc(tmp_path / "mask.mrc", big, voxel_size_angstrom=3.0)
    m = load_volume_mask(tmp_path / "mask.mrc", 16)
    assert m.shape == (16, 16, 16) and float(m.min()) >= 0 and float(m.max()) <= 1
    assert float(m[8, 8, 8]) == 1.0 and float(m[0, 0, 0]) == 0.0 and float(m[8, 8, 1]) == 0.0
    write_mrc(tmp_path / "empty.mrc", np.zeros((16, 16, 16), np.float32), voxel_size_angstrom=3.0)
    with pytest.raises(InputError, match="no positive voxels"):
        load_volume_mask(tmp_path / "empty.mrc", 16)


def test_network_shapes_and_template_size():
    assert [default_templateres(d) for d in (16, 40, 64, 100)] == [32, 48, 64, 112]
    enc = ConvEncoder(zdim=3, channel_scale=0.125)
    for d in (16, 24):
        mu, logstd = enc(torch.randn(2, 1, d, d, d))
        assert mu.shape == (2, 3) and logstd.shape == (2, 3)
    for t in (32, 48):
        assert ConvDecoder(zdim=3, templateres=t, channel_scale=0.0625)(torch.randn(2, 3)).shape == (2, t, t, t)
    with pytest.raises(ValueError, match="multiple of 16"):
        ConvDecoder(zdim=3, templateres=40)
    model = OpusDSD(20, 4.0, n_particles=7, zdim=3, channel_scale=0.0625)
    vols = model.generate_volumes(np.zeros((3, 3), np.float32), batch_size=2)
    assert vols.shape == (3, 20, 20, 20) and vols.dtype == np.float32
    outside = ~(torch.as_tensor(model.volume_mask) > 0).numpy()
    assert np.all(vols[:, outside] == 0)  # masked by the solvent mask
