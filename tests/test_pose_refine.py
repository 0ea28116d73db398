"""Per-particle pose corrections (models/poses.py): SO(3) exponential, composition convention, Hartley shifts,
gradients against finite differences, recovery of a known rotation / shift error, memory linear in N on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryoscape.data.fourier_pixels import FourierPixels
from cryoscape.imaging.fft import hartley2
from cryoscape.imaging.projection import project_fourier
from cryoscape.imaging.rotations import euler_relion_to_matrix, matrix_to_euler_relion, random_rotations
from cryoscape.imaging.shift import translate_images
from cryoscape.models.poses import (
    PoseTable,
    compose,
    gauss_newton_pose_step,
    hartley_translate,
    hartley_translate_jacobian,
    rotation_angle_deg,
    so3_exp,
    so3_log,
)


def _blob_volume(D: int, seed: int = 0) -> torch.Tensor:
    """A smooth asymmetric test map: a few Gaussian blobs of different sizes and weights (float64)."""
    rng = np.random.default_rng(seed)
    i = np.arange(D) - D // 2
    z, y, x = np.meshgrid(i, i, i, indexing="ij")
    vol = np.zeros((D, D, D))
    for _ in range(6):
        c = rng.uniform(-D / 5, D / 5, 3)
        sigma = rng.uniform(1.2, 2.5)
        vol += rng.uniform(0.5, 1.5) * np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * sigma**2))
    return torch.from_numpy(vol)


def test_so3_exp_matches_scipy_and_is_smooth_at_zero():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(20, 3)) * rng.uniform(0, 3, (20, 1))
    w[0] = 0.0
    w[1] = [1e-7, -2e-7, 0.5e-7]
    got = so3_exp(torch.from_numpy(w)).numpy()
    np.testing.assert_allclose(got, Rotation.from_rotvec(w).as_matrix(), atol=1e-12)
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    so3_exp(x)[0, 1].backward()  # d R_01 / d w_z = -1 at w = 0
    np.testing.assert_allclose(x.grad.numpy(), [0.0, 0.0, -1.0], atol=1e-12)


def test_composition_is_in_the_image_frame():
    """A' = exp([w]x) @ A: a correction about the image z axis changes only psi; |w| is the angle moved."""
    angles = np.array([[30.0, 50.0, 20.0], [-100.0, 120.0, 75.0]])
    A = torch.from_numpy(euler_relion_to_matrix(angles))
    t = np.deg2rad(7.0)
    moved = compose(A, torch.tensor([[0.0, 0.0, t]] * 2, dtype=torch.float64)).numpy()
    new = matrix_to_euler_relion(moved)
    np.testing.assert_allclose(new[:, :2], angles[:, :2], atol=1e-9)
    np.testing.assert_allclose(new[:, 2], angles[:, 2] - 7.0, atol=1e-9)  # RELION's psi decreases by |w|
    w = torch.tensor([[0.03, -0.05, 0.02], [0.1, 0.0, 0.0]], dtype=torch.float64)
    got = rotation_angle_deg(compose(A, w).numpy(), A.numpy())
    np.testing.assert_allclose(got, np.rad2deg(w.norm(dim=1).numpy()), rtol=1e-9)


def test_hartley_translate_equals_a_real_space_shift():
    D = 16
    pixels = FourierPixels.create(D)
    img = torch.randn(3, D, D, dtype=torch.float64)
    shifts = torch.tensor([[1.5, -0.25], [0.0, 2.0], [-3.2, 0.7]], dtype=torch.float64)
    h = hartley2(img).reshape(3, -1)[:, pixels.index]
    expected = hartley2(translate_images(img, shifts)).reshape(3, -1)[:, pixels.index]
    got = hartley_translate(h, pixels.half_freqs().double(), shifts)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-9)


def _render(volume, A, w, s):
    """Projections of ``volume`` at the corrected poses, translated by the shift corrections."""
    return translate_images(project_fourier(volume, compose(A, w)), s)


def test_pose_gradients_match_finite_differences():
    D = 12
    vol = _blob_volume(D)
    A = torch.from_numpy(random_rotations(2, seed=3))
    target = torch.randn(2, D, D, dtype=torch.float64)
    w0 = torch.tensor([[0.05, -0.02, 0.08], [-0.1, 0.04, 0.01]], dtype=torch.float64)
    s0 = torch.tensor([[0.3, -0.6], [1.1, 0.2]], dtype=torch.float64)

    def loss(w, s):
        return ((_render(vol, A, w, s) - target) ** 2).sum()

    w, s = w0.clone().requires_grad_(True), s0.clone().requires_grad_(True)
    loss(w, s).backward()
    eps = 1e-6
    for var, grad, other in ((w0, w.grad, s0), (s0, s.grad, w0)):
        fd = torch.zeros_like(var)
        for idx in np.ndindex(*var.shape):
            plus, minus = var.clone(), var.clone()
            plus[idx] += eps
            minus[idx] -= eps
            args = ((plus, other), (minus, other)) if var is w0 else ((other, plus), (other, minus))
            fd[idx] = (loss(*args[0]) - loss(*args[1])) / (2 * eps)
        np.testing.assert_allclose(grad.numpy(), fd.numpy(), rtol=1e-5, atol=1e-6)


def _fit(table, vol, A, shifts, target, steps, rows):
    for _ in range(steps):
        w, s = table.take(rows)
        loss = ((_render(vol, A, w.double(), shifts + s.double()) - target) ** 2).sum(dim=(1, 2)).mean()
        loss.backward()
        table.step(rows, w.grad, s.grad)


def test_a_ten_degree_rotation_error_is_corrected_within_one_degree():
    D = 24
    vol = _blob_volume(D, seed=4)
    n = 4
    truth = torch.from_numpy(random_rotations(n, seed=5))
    target = project_fourier(vol, truth)
    axes = Rotation.random(n, random_state=6).as_rotvec()
    error = axes / np.linalg.norm(axes, axis=1, keepdims=True) * np.deg2rad(10.0)
    consensus = compose(truth, torch.from_numpy(error))  # 10 degrees off
    np.testing.assert_allclose(rotation_angle_deg(consensus.numpy(), truth.numpy()), 10.0, rtol=1e-9)
    table = PoseTable(n, lr=0.01)
    _fit(table, vol, consensus, torch.zeros(n, 2, dtype=torch.float64), target, 150, np.arange(n))
    learned, _ = table.learned(consensus.numpy(), np.zeros((n, 2)))
    err = rotation_angle_deg(learned, truth.numpy())
    assert np.all(err < 1.0), err


def test_a_known_shift_is_recovered():
    D = 24
    vol = _blob_volume(D, seed=7)
    n = 3
    A = torch.from_numpy(random_rotations(n, seed=8))
    true_shift = torch.tensor([[1.3, -0.8], [-1.7, 0.4], [0.5, 1.9]], dtype=torch.float64)
    target = translate_images(project_fourier(vol, A), true_shift)
    table = PoseTable(n, lr=0.0, shift_lr=0.05)  # shifts only
    _fit(table, vol, A, torch.zeros(n, 2, dtype=torch.float64), target, 150, np.arange(n))
    np.testing.assert_allclose(table.shift_px.numpy(), true_shift.numpy(), atol=0.05)
    assert float(table.rotvec.abs().max()) == 0.0


def test_pose_table_memory_is_linear_in_n_on_the_cpu_and_steps_touch_only_the_batch():
    n = 1_000_000
    table = PoseTable(n, lr=0.01)
    assert table.nbytes() == n * (3 * 5 * 4 + 4)  # corrections, two moments, a step count: 64 bytes a particle
    assert all(t.device.type == "cpu" for t in (table.values, table.exp_avg, table.exp_avg_sq, table.steps))
    rows = np.array([5, 999_999, 123_456])
    w, s = table.take(torch.from_numpy(rows))
    assert w.shape == (3, 3) and s.shape == (3, 2) and w.is_leaf and w.requires_grad
    table.step(rows, torch.ones(3, 3), -torch.ones(3, 2))
    touched = torch.nonzero(table.steps).squeeze(1).numpy()
    np.testing.assert_array_equal(touched, np.sort(rows))
    # the first Adam step moves each coordinate by its learning rate against the gradient's sign
    np.testing.assert_allclose(table.rotvec[rows].numpy(), -0.01, rtol=1e-4)
    np.testing.assert_allclose(table.shift_px[rows].numpy(), 0.1, rtol=1e-4)
    assert int(torch.count_nonzero(table.values)) == 3 * 5
    with pytest.raises(ValueError, match="twice"):
        table.step(np.array([1, 1]), torch.ones(2, 3), None)


def test_pose_table_state_round_trip():
    table = PoseTable(10, lr=0.02)
    table.step(np.array([2, 7]), torch.randn(2, 3), torch.randn(2, 2))
    other = PoseTable(10, lr=0.02)
    other.load_state_dict(table.state_dict())
    for key in ("values", "exp_avg", "exp_avg_sq", "steps"):
        assert torch.equal(getattr(table, key), getattr(other, key))
    with pytest.raises(ValueError, match="11"):
        PoseTable(11).load_state_dict(table.state_dict())


# -- local refinement: Gauss-Newton steps (train --pose-method local) ---------------------------------------------
def test_hartley_translate_jacobian_matches_autograd():
    D = 12
    pixels = FourierPixels.create(D)
    freqs = pixels.half_freqs().double()
    h = hartley2(torch.randn(2, D, D, dtype=torch.float64)).reshape(2, -1)[:, pixels.index]
    t0 = torch.tensor([[0.4, -1.2], [2.0, 0.3]], dtype=torch.float64)
    moved = hartley_translate(h, freqs, t0)
    jac = hartley_translate_jacobian(moved, freqs)  # (B, P, 2), at the translated images
    for j in range(2):
        t = t0.clone().requires_grad_(True)
        out = hartley_translate(h, freqs, t)
        for b in range(2):
            (g,) = torch.autograd.grad(out[b].sum(), t, retain_graph=True)
            # d sum_p H_p / d t_bj compared with the sum of the Jacobian's column
            np.testing.assert_allclose(float(g[b, j]), float(jac[b, :, j].sum()), rtol=1e-9, atol=1e-9)
        e = torch.zeros(2, 2, dtype=torch.float64)
        e[:, j] = 1e-6
        fd = (hartley_translate(h, freqs, t0 + e) - hartley_translate(h, freqs, t0 - e)) / 2e-6
        np.testing.assert_allclose(jac[..., j].numpy(), fd.numpy(), atol=1e-6)


def _hartley_predictor(vol, pixels, positions):
    def predict(R):
        img = project_fourier(vol, R.double())
        return hartley2(img).reshape(R.shape[0], -1)[:, pixels.index][:, positions]
    return predict


@pytest.mark.parametrize("radius", [0.5, 1.0])
def test_gauss_newton_steps_correct_a_ten_degree_error_and_a_shift(radius):
    """Noise-free projections of a known map, 10 degrees and ~1.5 px off: a few Gauss-Newton visits (each at most
    5 degrees) bring every rotation within 1 degree and every shift within 0.1 px."""
    D = 24
    vol = _blob_volume(D, seed=4)
    n = 4
    pixels = FourierPixels.create(D)
    freqs = pixels.half_freqs().double()
    half = torch.nonzero(freqs.norm(dim=1) < 0.5 * radius).squeeze(1)
    positions = torch.cat([half, half + freqs.shape[0], torch.tensor([2 * freqs.shape[0]])])
    truth = torch.from_numpy(random_rotations(n, seed=5))
    true_shift = torch.tensor([[1.1, -0.9], [-0.7, 1.2], [0.4, 1.4], [-1.3, -0.2]], dtype=torch.float64)
    images = hartley2(translate_images(project_fourier(vol, truth), true_shift)).reshape(n, -1)[:, pixels.index]
    axes = Rotation.random(n, random_state=6).as_rotvec()
    error = axes / np.linalg.norm(axes, axis=1, keepdims=True) * np.deg2rad(10.0)
    consensus = compose(truth, torch.from_numpy(error))
    w = torch.zeros(n, 3, dtype=torch.float64)
    s = torch.zeros(n, 2, dtype=torch.float64)
    predict = _hartley_predictor(vol, pixels, positions)
    for _ in range(6):
        y = hartley_translate(images, freqs, s)[:, positions]
        d, t, _ = gauss_newton_pose_step(predict, compose(consensus, w), y, freqs[half], eps=0.005,
                                         max_angle=np.deg2rad(5.0))
        w = so3_log(so3_exp(d) @ so3_exp(w))
        s = s + t
    err = rotation_angle_deg(compose(consensus, w).numpy(), truth.numpy())
    assert np.all(err < 1.0), err
    np.testing.assert_allclose(s.numpy(), -true_shift.numpy(), atol=0.1)


def test_so3_log_inverts_so3_exp():
    rng = np.random.default_rng(2)
    axes = rng.normal(size=(30, 3))
    w = axes / np.linalg.norm(axes, axis=1, keepdims=True) * rng.uniform(0, 3.1, (30, 1))  # angles below pi
    back = so3_log(so3_exp(torch.from_numpy(w))).numpy()
    np.testing.assert_allclose(back, w, atol=1e-9)


def test_the_anchor_prior_pulls_an_uninformed_rotation_back_towards_the_consensus():
    """A prediction that does not depend on the rotation (no information): the rotation step is set by the two
    priors alone, -(1/anchor^2) / (1/prior^2 + 1/anchor^2) x the correction so far."""
    D = 12
    pixels = FourierPixels.create(D)
    freqs = pixels.half_freqs().double()
    rng = np.random.default_rng(0)
    p = torch.from_numpy(rng.normal(size=(1, 2 * freqs.shape[0] + 1)))
    y = p + 0.3 * torch.from_numpy(rng.normal(size=p.shape))
    anchor = torch.tensor([[0.1, -0.05, 0.02, 0.0, 0.0]], dtype=torch.float64)
    A = torch.from_numpy(random_rotations(1, seed=1))
    prior, anchor_std = np.deg2rad(2.0), np.deg2rad(10.0)
    d, _, _ = gauss_newton_pose_step(lambda R: p.expand(R.shape[0], -1), A, y, freqs, prior_angle=prior,
                                     prior_shift_px=0.5, anchor=anchor, anchor_angle=anchor_std)
    expected = -anchor[0, :3].numpy() * (1 / anchor_std**2) / (1 / prior**2 + 1 / anchor_std**2)
    np.testing.assert_allclose(d[0].numpy(), expected, rtol=1e-6)
    d0, _, _ = gauss_newton_pose_step(lambda R: p.expand(R.shape[0], -1), A, y, freqs, prior_angle=prior,
                                      prior_shift_px=0.5)
    np.testing.assert_allclose(d0.numpy(), 0.0, atol=1e-12)  # without the anchor: no reason to move


@pytest.mark.parametrize("zdim", [0, 2])
def test_the_two_evaluation_rotation_jacobian_equals_three_rotation_differences(zdim):
    """CryoDRGN.pose_predictor's ``along_normal`` (one evaluation on slices moved along their normals gives the
    two out-of-plane rotation derivatives) agrees with three forward differences of the rotation, at every
    compared pixel (half-plane values and their mates), with a softplus decoder (smooth: differences of a ReLU
    network jump at its kinks).
    """
    from cryoscape.models.cryodrgn import CryoDRGN
    from cryoscape.models.poses import _rotation_jacobian

    torch.manual_seed(0)
    D = 16
    model = CryoDRGN(D, 2.0, zdim=zdim, enc_dim=16, enc_layers=1, dec_dim=32, dec_layers=2).eval()
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.ReLU):
                setattr(module, name, torch.nn.Softplus(beta=4.0))
    n = 3
    batch = {"y": torch.randn(n, model.pixels.n_pixels)}
    freqs = model.pixels.half_freqs()
    half = torch.nonzero(freqs.norm(dim=1) < 0.4).squeeze(1)
    predictor = model.pose_predictor(batch, half)
    assert predictor.along_normal is not None
    R = torch.from_numpy(random_rotations(n, seed=11)).float()
    eps = 1e-3
    with torch.no_grad():
        p0 = predictor(R)
        two = _rotation_jacobian(predictor, R, p0, freqs[half], eps)
        three = _rotation_jacobian(lambda rot: predictor(rot), R, p0, freqs[half], eps)
    scale = three.abs().max()
    assert scale > 0
    np.testing.assert_allclose(two.numpy(), three.numpy(), atol=1e-2 * float(scale))
    # and the in-plane-axis columns are not trivially zero or equal
    assert two[..., 0].abs().max() > 1e-3 * scale and two[..., 1].abs().max() > 1e-3 * scale
