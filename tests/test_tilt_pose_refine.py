"""Pose refinement of tilt series (``train --model tomodrgn --refine-poses``): one rigid correction per particle,
applied to all its tilts through the tilt geometry (models.poses.TiltPoseRefiner)."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryoscape.cli.main import main
from cryoscape.data.fourier_pixels import FourierPixels
from cryoscape.imaging.lattice import central_slice_coords
from cryoscape.models.poses import (
    TiltPoseRefiner,
    gauss_newton_tilt_step,
    hartley_translate,
    load_learned_poses,
    reference_tilts,
    rotation_angle_deg,
    tilt_compose,
)

TILTS = np.array([0.0, 10.0, -10.0, 20.0, -20.0, 30.0, -30.0, 40.0, -40.0])  # dose-symmetric order


def stage(tilts_deg) -> np.ndarray:
    """Stage tilts about the y axis ``(T, 3, 3)``, computed by scipy (independent of the code under test)."""
    return Rotation.from_euler("y", np.asarray(tilts_deg, dtype=np.float64)[:, None], degrees=True).as_matrix()


def tilt_series(n: int, seed: int, tilts=TILTS) -> tuple[np.ndarray, np.ndarray]:
    """Per-tilt rotations ``A_t = R_tilt,t @ A_particle`` ``(n, T, 3, 3)`` of random particles, and the particle
    rotations ``(n, 3, 3)``.
    """
    particle = Rotation.random(n, random_state=seed).as_matrix()
    return np.einsum("tij,njk->ntik", stage(tilts), particle), particle


def test_reference_tilt_is_the_one_nearest_zero_then_the_lowest_exposure():
    offsets = np.array([0, 3, 5, 9])
    tilt = np.array([-20.0, 3.0, 10.0, 5.0, 5.0, 12.0, -2.0, 2.0, 30.0])
    exposure = np.array([9.0, 6.0, 3.0, 2.0, 1.0, 0.0, 5.0, 4.0, 1.0])
    np.testing.assert_array_equal(reference_tilts(offsets, tilt, exposure), [1, 1, 2])  # |-2| = |2|: dose 4 < 5


def test_composition_gives_every_tilt_the_true_rotation_and_shift():
    """A known particle rotation error G (tomogram frame) and 3-D displacement x: the correction defined in the
    reference tilt's frame (w = log(A_ref_true A_ref^T), d = R_ref x) gives every tilt its true rotation
    ``R_tilt,t G A_particle`` and shift ``(R_tilt,t x)[:2]``.
    """
    A, particle = tilt_series(4, seed=1)
    G = Rotation.from_rotvec(np.deg2rad(10.0) * np.array([[0.6, -0.8, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0],
                                                            [0.48, 0.6, 0.64]])).as_matrix()
    truth = np.einsum("tij,njk,nkl->ntil", stage(TILTS), G, particle)
    x = np.array([[1.0, -2.0, 3.0], [0.5, 0.0, -1.5], [0.0, 2.0, 0.0], [-1.0, -1.0, 1.0]])  # pixels, tomogram
    ref = np.array([0, 3, 8, 5])  # any tilt may be the reference
    w = Rotation.from_matrix(truth[np.arange(4), ref] @ np.swapaxes(A[np.arange(4), ref], 1, 2)).as_rotvec()
    d = np.einsum("nij,nj->ni", stage(TILTS[ref]), x)
    rot, shift = tilt_compose(torch.from_numpy(A), torch.from_numpy(ref), torch.from_numpy(w), torch.from_numpy(d))
    np.testing.assert_allclose(rot.numpy(), truth, atol=1e-12)
    np.testing.assert_allclose(shift.numpy(), np.einsum("tij,nj->nti", stage(TILTS), x)[..., :2], atol=1e-12)
    # the correction turns every tilt by the same angle |w| (a conjugate of it)
    for t in range(len(TILTS)):
        np.testing.assert_allclose(rotation_angle_deg(rot[:, t].numpy(), A[:, t]), 10.0, atol=1e-9)


# -- a known map: a few Gaussian blobs, its central slices in closed form (float64) ------------------------------
D = 16
BLOBS = np.array([[2.0, 0.5, -1.0], [-1.5, 2.5, 0.5], [0.0, -2.0, 2.0], [1.0, 1.0, 3.0]])  # pixels
AMPS = np.array([1.0, 0.7, 0.5, 0.8])
SIGMA = 1.2  # pixels


def render(rot: torch.Tensor) -> torch.Tensor:
    """Hartley values ``(B, T, 2M + 1)`` (``FourierPixels`` order) of the central slices of the blob map at
    ``rot`` ``(B, T, 3, 3)``; differentiable.
    """
    pixels = FourierPixels.create(D)
    half = pixels.half_freqs().double()
    B, T = rot.shape[:2]
    k = central_slice_coords(rot.reshape(B * T, 3, 3).double(), half)  # (BT, M, 3) cycles/pixel
    phase = -2.0 * math.pi * (k @ torch.from_numpy(BLOBS).T)  # (BT, M, J)
    env = torch.exp(-2.0 * math.pi**2 * SIGMA**2 * (k * k).sum(-1, keepdim=True)) * torch.from_numpy(AMPS)
    re, im = (env * torch.cos(phase)).sum(-1), (env * torch.sin(phase)).sum(-1)
    dc = torch.full((B * T, 1), float(AMPS.sum()), dtype=torch.float64)
    return torch.cat([re - im, re + im, dc], dim=1).reshape(B, T, -1)


def observed(A_true: np.ndarray, x_true: np.ndarray) -> torch.Tensor:
    """Noise-free images at the true rotations, each displaced by its tilt's projection of ``x_true`` (pixels)."""
    clean = render(torch.from_numpy(A_true))
    B, T, P = clean.shape
    shift = -np.einsum("tij,nj->nti", stage(TILTS), x_true)[..., :2]  # corrected by +(R_t x)[:2]
    freqs = FourierPixels.create(D).half_freqs().double()
    return hartley_translate(clean.reshape(B * T, P), freqs, torch.from_numpy(shift).reshape(B * T, 2)
                             ).reshape(B, T, P)


def make_refiner(n: int, lr: float, shift_lr: float) -> TiltPoseRefiner:
    return TiltPoseRefiner(n, FourierPixels.create(D).half_freqs(), np.zeros(n, dtype=np.int64), lr=lr,
                           shift_lr=shift_lr)


def test_pose_gradients_match_finite_differences():
    A, particle = tilt_series(2, seed=3)
    G = Rotation.from_rotvec([[0.05, -0.02, 0.03], [-0.04, 0.0, 0.06]]).as_matrix()
    y = observed(np.einsum("tij,njk,nkl->ntil", stage(TILTS), G, particle), np.array([[0.4, -0.3, 0.2],
                                                                                   [0.0, 0.5, -0.4]]))
    batch = {"index": torch.arange(2), "rot": torch.from_numpy(A), "y": y}
    refiner = make_refiner(2, 0.0, 0.0)

    def loss(w, d):
        b = refiner._apply(batch, w, d)
        return ((render(b["rot"]) - b["y"]) ** 2).sum()

    w0 = torch.tensor([[0.01, 0.02, -0.01], [0.0, -0.03, 0.02]], dtype=torch.float64, requires_grad=True)
    d0 = torch.tensor([[0.1, -0.2, 0.3], [-0.1, 0.0, 0.2]], dtype=torch.float64, requires_grad=True)
    loss(w0, d0).backward()
    h = 1e-6
    for leaf, grad in ((w0, w0.grad), (d0, d0.grad)):
        fd = torch.zeros_like(grad)
        for i in range(2):
            for j in range(3):
                e = torch.zeros_like(leaf)
                e[i, j] = h
                with torch.no_grad():
                    args_p = (w0 + e, d0) if leaf is w0 else (w0, d0 + e)
                    args_m = (w0 - e, d0) if leaf is w0 else (w0, d0 - e)
                    fd[i, j] = (loss(*args_p) - loss(*args_m)) / (2 * h)
        assert grad.abs().max() > 1e-2
        np.testing.assert_allclose(grad.numpy(), fd.numpy(), rtol=1e-5, atol=1e-7)


def test_a_ten_degree_particle_rotation_error_is_corrected_within_one_degree():
    """Noise-free tilt series of the blob map; the consensus poses are off by a 10-degree particle rotation (random
    axes) and a 3-D displacement of ~1 px; per-particle Adam steps through all tilts recover both.
    """
    n = 3
    A_true, particle = tilt_series(n, seed=5)
    axes = Rotation.random(n, random_state=6).as_rotvec()
    E = Rotation.from_rotvec(np.deg2rad(10.0) * axes / np.linalg.norm(axes, axis=1, keepdims=True)).as_matrix()
    A_wrong = np.einsum("tij,njk,nkl->ntil", stage(TILTS), E, particle)  # the particle error, tomogram frame
    x_true = np.array([[0.8, -0.5, 0.6], [-0.7, 0.4, -0.5], [0.3, 0.9, 0.7]])
    y = observed(A_true, x_true)
    refiner = make_refiner(n, lr=0.01, shift_lr=0.02)
    batch = {"index": torch.arange(n), "rot": torch.from_numpy(A_wrong), "y": y}
    assert rotation_angle_deg(A_wrong[:, 0], A_true[:, 0]).min() > 9.99
    for _ in range(200):
        b = refiner.prepare(batch)
        ((render(b["rot"]) - b["y"]) ** 2).sum().backward()
        refiner.step(lambda *t: t)
    b = refiner.corrected(batch)
    for t in range(len(TILTS)):
        assert rotation_angle_deg(b["rot"][:, t].numpy(), A_true[:, t]).max() < 1.0
    # the reference tilt (0 degrees) has the tomogram frame: the learned shift is the displacement
    np.testing.assert_allclose(refiner.table.shift_px.numpy(), x_true, atol=0.02)


def test_local_gauss_newton_steps_correct_a_ten_degree_error_from_all_tilts():
    """The local method's step (one 6-parameter system per particle from the residuals of all its tilts) on the
    noise-free blob series: a 10-degree particle rotation error and a 3-D displacement are corrected within a few
    steps; padding tilts (weight 0) do not count.
    """
    n = 2
    A_true, particle = tilt_series(n, seed=7)
    E = Rotation.from_rotvec(np.deg2rad(10.0) * np.array([[0.0, 0.6, 0.8], [1.0, 0.0, 0.0]])).as_matrix()
    A = torch.from_numpy(np.einsum("tij,njk,nkl->ntil", stage(TILTS), E, particle))
    x_true = np.array([[0.6, -0.4, 0.5], [-0.3, 0.5, -0.6]])
    y = observed(A_true, x_true)
    weights = torch.ones_like(y)
    weights[1, -1] = 0.0  # particle 1's last tilt is padding: garbage there must not matter
    y[1, -1] = 100.0
    refiner = make_refiner(n, 0.0, 0.0)
    freqs = FourierPixels.create(D).half_freqs().double()
    batch = {"index": torch.arange(n), "rot": A, "y": y}
    errors = []
    for _ in range(4):
        b = refiner.corrected(batch)
        d, t, loss = gauss_newton_tilt_step(render, b["rot"], torch.zeros(n, dtype=torch.long), b["y"], weights,
                                            freqs, max_angle=math.radians(5.0), prior_angle=math.radians(2.0),
                                            prior_shift_px=0.5, verify=True)
        w = Rotation.from_rotvec(d.numpy()) * Rotation.from_rotvec(refiner.table.rotvec.double().numpy())
        refiner.table.values[:, :3] = torch.from_numpy(w.as_rotvec())
        refiner.table.values[:, 3:] += t.float()
        b = refiner.corrected(batch)
        errors.append(max(rotation_angle_deg(b["rot"][:, k].numpy(), A_true[:, k]).max() for k in range(9)))
    assert errors[0] < 10.0 and errors[-1] < 0.1  # within 1 degree, by far
    np.testing.assert_allclose(refiner.table.shift_px.numpy(), x_true, atol=0.01)


def test_the_anchor_prior_pulls_an_uninformed_particle_back_to_its_consensus_pose():
    """Images that say nothing about the rotation (a prediction that does not depend on it): with the anchor the
    rotation step undoes the total correction so far; without it the step is zero."""
    torch.manual_seed(0)
    y = torch.randn(1, 3, 2 * 5 + 1, dtype=torch.float64)
    freqs = FourierPixels.create(D).half_freqs()[:5].double()
    A = torch.from_numpy(tilt_series(1, seed=2, tilts=[0.0, 20.0, -20.0])[0])

    def flat(rot):
        return torch.zeros(rot.shape[:2] + (11,), dtype=torch.float64)

    ref = torch.zeros(1, dtype=torch.long)
    total = torch.tensor([[0.05, -0.02, 0.01, 0.0, 0.0, 0.0]], dtype=torch.float64)
    d, _, _ = gauss_newton_tilt_step(flat, A, ref, y, torch.ones_like(y), freqs, anchor=total)
    np.testing.assert_allclose(d.numpy(), -total[:, :3].numpy(), atol=1e-6)
    d, _, _ = gauss_newton_tilt_step(flat, A, ref, y, torch.ones_like(y), freqs)
    assert d.abs().max() < 1e-9


# -- end to end -------------------------------------------------------------------------------------------------
SMALL = ["--model", "tomodrgn", "--zdim", "2", "--enc-dim", "16", "--enc-layers", "1", "--dec-dim", "16",
         "--dec-layers", "1", "--tilt-embed-dim", "8", "-b", "4", "--no-progress", "--lr", "1e-3", "--threads", "1"]
REFINE = ["--refine-poses", "--pose-method", "sgd", "--refine-start", "2", "--pose-lr", "0.01"]


@pytest.fixture(scope="module")
def tilt_sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("tilt_sim")
    assert main(["simulate-tilt", "--preset", "tilt4", "--size", "tiny", "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def tilt_run(tilt_sim, tmp_path_factory):
    run = tmp_path_factory.mktemp("tilt_runs") / "refined"
    assert main(["train", str(tilt_sim / "particles.star"), "-o", str(run), "-n", "3", *SMALL, *REFINE]) == 0
    return run


def test_train_writes_per_tilt_learned_poses(tilt_sim, tilt_run):
    from cryoscape.io.tilt_series import load_tilt_series

    tilts = load_tilt_series(tilt_sim / "particles.star")
    train_pos = np.load(tilt_run / "split.npz")["train"]
    _, first = load_learned_poses(tilt_run, 1)
    assert not first["rotvec"].any() and not first["shift_px"].any()  # --refine-start 2
    _, last = load_learned_poses(tilt_run, 3)
    assert last["rotvec"].shape == (len(tilts), 3) and last["shift_px"].shape == (len(tilts), 3)
    assert last["rotations"].shape == (tilts.n_images, 3, 3)
    np.testing.assert_array_equal(np.flatnonzero(last["refined"]), train_pos)
    np.testing.assert_array_equal(np.linalg.norm(last["rotvec"], axis=1) > 0, last["refined"])
    # every tilt of a particle turned by that particle's |w|; the reference tilt's origin moved by d[:2]
    angle = rotation_angle_deg(last["rotations"], tilts.rotations)
    per_image = np.rad2deg(np.linalg.norm(last["rotvec"], axis=1))[tilts.particle_of_image()]
    np.testing.assert_allclose(angle, per_image, atol=2e-3)
    ref_rows = tilts.offsets[:-1] + reference_tilts(tilts.offsets, tilts.tilt_deg, tilts.exposure_e_per_angstrom2)
    moved = (last["shifts_angstrom"] - tilts.shifts_angstrom)[ref_rows] / tilts.pixel_size_angstrom
    np.testing.assert_allclose(moved, last["shift_px"][:, :2], atol=1e-4)
    assert 0 < angle.max() < np.rad2deg(0.04) * 2


def test_tilt_run_resumes_exactly(tilt_sim, tilt_run, tmp_path):
    star = str(tilt_sim / "particles.star")
    b = tmp_path / "b"
    assert main(["train", star, "-o", str(b), "-n", "2", *SMALL, *REFINE]) == 0
    assert main(["train", star, "-o", str(b), "-n", "3", "--resume", *SMALL, *REFINE]) == 0
    _, one = load_learned_poses(tilt_run, 3)
    _, two = load_learned_poses(b, 3)
    for key in ("rotvec", "shift_px", "rotations", "shifts_angstrom"):
        np.testing.assert_array_equal(one[key], two[key])


def test_eval_images_of_a_tilt_run_uses_its_learned_poses(tilt_run, tmp_path):
    out = tmp_path / "z.npy"
    assert main(["eval-images", str(tilt_run), "--epoch", "3", "-o", str(out)]) == 0
    z = np.load(out)
    # the latents training wrote were encoded from the images centred by the learned shifts, as eval-images does
    np.testing.assert_allclose(z, np.load(tilt_run / "latents" / "epoch_003.npy"), atol=1e-5)


def test_local_refinement_of_a_tilt_run_moves_by_bounded_steps_and_resumes_exactly(tilt_sim, tmp_path):
    """The default method (local Gauss-Newton steps of all of a particle's tilts, through
    TomoDRGN.tilt_pose_predictor): at most 5 degrees and 1.5 px per visit, one visit per epoch."""
    star = str(tilt_sim / "particles.star")
    local = ["--refine-poses", "--refine-start", "2"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", star, "-o", str(a), "-n", "3", *SMALL, *local]) == 0
    _, last = load_learned_poses(a, 3)
    angle = np.rad2deg(np.linalg.norm(last["rotvec"], axis=1))
    assert angle[last["refined"]].max() <= 2 * 5.0 + 1e-3 and not last["rotvec"][~last["refined"]].any()
    assert np.linalg.norm(last["shift_px"], axis=1).max() <= 2 * 1.5 + 1e-3
    assert (angle > 0).any()
    assert main(["train", star, "-o", str(b), "-n", "2", *SMALL, *local]) == 0
    assert main(["train", star, "-o", str(b), "-n", "3", "--resume", *SMALL, *local]) == 0
    _, two = load_learned_poses(b, 3)
    for key in ("rotvec", "shift_px", "rotations", "shifts_angstrom"):
        np.testing.assert_array_equal(last[key], two[key])


def test_the_model_pose_hook_predicts_what_the_loss_compares(tilt_sim):
    """TomoDRGN.tilt_pose_predictor on every pixel: its weighted squared residual is the model's recon loss."""
    from cryoscape.data.tilt_data import TiltSeriesData
    from cryoscape.io.tilt_series import load_tilt_series
    from cryoscape.models.tomodrgn import TomoDRGN

    tilts = load_tilt_series(tilt_sim / "particles.star")
    data = TiltSeriesData(tilts, FourierPixels.create(tilts.D), progress=False)
    torch.manual_seed(0)
    model = TomoDRGN(tilts.D, tilts.pixel_size_angstrom, ntilts=None, zdim=0, dec_dim=16, dec_layers=1).eval()
    batch = data.batch(np.arange(3))
    with torch.no_grad():
        predict, weights = model.tilt_pose_predictor(batch, torch.arange(model.pixels.n_half))
        recon = (weights * (batch["y"] - predict(batch["rot"])) ** 2).sum() / weights.sum()
        assert float(recon) == pytest.approx(float(model(batch)["recon"]), rel=1e-5)


def test_write_poses_of_a_tilt_run_round_trips_through_the_image_series_star(tilt_sim, tilt_run, tmp_path, capsys):
    from cryoscape.io.tilt_series import load_tilt_series

    out = tmp_path / "refined.star"
    assert main(["write-poses", str(tilt_run), "--epoch", "3", "-o", str(out)]) == 0
    _, learned = load_learned_poses(tilt_run, 3)
    back = load_tilt_series(out, datadir=tilt_sim)
    tilts = load_tilt_series(tilt_sim / "particles.star")
    assert len(back) == len(tilts) and back.n_images == tilts.n_images
    assert rotation_angle_deg(back.rotations, learned["rotations"]).max() < 1e-3
    np.testing.assert_allclose(back.shifts_angstrom, learned["shifts_angstrom"], atol=1e-3)
    np.testing.assert_allclose(back.tilt_deg, tilts.tilt_deg)  # every other column kept
    assert rotation_angle_deg(back.rotations, tilts.rotations).max() > 0.1  # the refined poses, not the input's
    assert main(["write-poses", str(tilt_run), "--epoch", "3", "-o", str(tmp_path / "refined.cs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ".star" in err[0]


def test_filter_of_a_tilt_run_writes_the_learned_per_tilt_poses(tilt_sim, tilt_run, tmp_path, capsys):
    import dataclasses

    from cryoscape.errors import InputError
    from cryoscape.io.tilt_series import load_tilt_series, write_tilt_poses

    tilts = load_tilt_series(tilt_sim / "particles.star")
    _, learned = load_learned_poses(tilt_run, 3)
    chosen = np.array([4, 1, 7])
    sel = ["filter", str(tilt_run), "--epoch", "3", "--ind", str(tmp_path / "ind.txt")]
    np.savetxt(tmp_path / "ind.txt", chosen, fmt="%d")
    assert main([*sel, "-o", str(tmp_path / "sel")]) == 0
    back = load_tilt_series(tmp_path / "sel" / "particles.star", datadir=tilt_sim)
    ids = np.load(tilt_run / "indices.npy") if (tilt_run / "indices.npy").exists() else np.arange(len(tilts))
    run_img = tilts.subset(ids).image_indices  # learned arrays: the run's particles' images
    expect = np.concatenate([run_img(np.flatnonzero(ids == c)) for c in np.sort(chosen)])
    assert back.n_images == len(expect)
    assert rotation_angle_deg(back.rotations, learned["rotations"][expect]).max() < 1e-3
    np.testing.assert_allclose(back.shifts_angstrom, learned["shifts_angstrom"][expect], atol=1e-3)
    assert main([*sel, "--input-poses", "-o", str(tmp_path / "sel2")]) == 0
    kept = load_tilt_series(tmp_path / "sel2" / "particles.star", datadir=tilt_sim)
    np.testing.assert_allclose(kept.rotations, tilts.subset(np.sort(chosen)).rotations, atol=1e-6)
    # optimisation sets keep their poses per particle in the tomogram frame: refused in one line
    other = dataclasses.replace(tilts, source_format="optimisation_set")
    with pytest.raises(InputError, match="image-series STAR files only"):
        write_tilt_poses(other, [0], learned["rotations"][:1], learned["shifts_angstrom"][:1], tmp_path / "x.star")


def test_the_two_evaluation_tilt_jacobian_gives_the_step_of_three_rotation_differences(tilt_sim):
    """TomoDRGN.tilt_pose_predictor's ``along_normal`` (image-frame derivatives from one evaluation on slices moved
    along their normals, turned into the reference tilt's frame) gives the Gauss-Newton step that three rotation
    differences in the reference frame give, for every particle (a softplus decoder: smooth)."""
    from cryoscape.data.tilt_data import TiltSeriesData
    from cryoscape.io.tilt_series import load_tilt_series
    from cryoscape.models.tomodrgn import TomoDRGN

    tilts = load_tilt_series(tilt_sim / "particles.star")
    data = TiltSeriesData(tilts, FourierPixels.create(tilts.D), progress=False)
    torch.manual_seed(0)
    model = TomoDRGN(tilts.D, tilts.pixel_size_angstrom, ntilts=None, zdim=0, dec_dim=32, dec_layers=2).eval()
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.ReLU):
                setattr(module, name, torch.nn.Softplus(beta=4.0))
    n = 3
    batch = data.batch(np.arange(n))
    ref = TiltPoseRefiner.for_data(data).ref[:n]
    freqs = model.pixels.half_freqs()
    half = torch.nonzero(freqs.norm(dim=1) < 0.4).squeeze(1)
    m = model.pixels.n_half
    positions = torch.cat([half, half + m, torch.tensor([2 * m])])
    with torch.no_grad():
        predict, weights = model.tilt_pose_predictor(batch, half)
        assert predict.along_normal is not None
        rot, y = batch["rot"].float(), batch["y"][..., positions].float()
        kw = dict(eps=1e-3, prior_angle=math.radians(2.0), prior_shift_px=0.5, max_angle=1.0, max_shift_px=10.0)
        d2, t2, loss2 = gauss_newton_tilt_step(predict, rot, ref, y, weights, freqs[half], **kw)
        d3, t3, loss3 = gauss_newton_tilt_step(lambda r: predict(r), rot, ref, y, weights, freqs[half], **kw)
    torch.testing.assert_close(loss2, loss3)
    assert float(d3.norm(dim=1).min()) > 1e-3  # a real step to compare
    np.testing.assert_allclose(d2.numpy(), d3.numpy(), atol=0.02 * float(d3.abs().max()))
    np.testing.assert_allclose(t2.numpy(), t3.numpy(), atol=0.02 * float(t3.abs().max()) + 1e-6)
