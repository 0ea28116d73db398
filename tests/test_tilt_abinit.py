"""Ab initio poses of tilt series (``cryoscape abinit --model tomodrgn``; models/pose_search.py ``grouped_search``,
``TiltPoseSearcher``): the grouped search recovers the particle rotation and the reference-frame shift of
noise-free tilt series of a known map from all the tilts together; ignoring a file's poses keeps the tilt geometry;
a tiny ab initio run recovers the map and the poses; a resumed run equals an uninterrupted one."""

import dataclasses

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from _abinit_runs import assert_ctrl_c_resume_equals_whole_run, assert_same_run, blobs
from cryoscape.cli.main import main
from cryoscape.data.fourier_pixels import FourierPixels
from cryoscape.imaging import so3_grid
from cryoscape.imaging.fft import hartley2
from cryoscape.imaging.projection import project_real
from cryoscape.models.pose_search import TiltPoseSearcher, grouped_search, map_search_predictor
from cryoscape.models.poses import hartley_translate, load_learned_poses, reference_tilts, tilt_compose

D = 24
TILTS = np.array([0.0, 30.0, -30.0, 60.0, -60.0])


def stage(tilts_deg) -> np.ndarray:
    """Stage tilts about the y axis ``(T, 3, 3)``, by scipy (independent of the code under test)."""
    return Rotation.from_euler("y", np.asarray(tilts_deg, dtype=np.float64)[:, None], degrees=True).as_matrix()


def _series(vol, A_particle, s_true, tilts=TILTS):
    """Noise-free tilt images ``(B, T, P)`` (real-space projections, Hartley pixels) of particles at
    ``A_particle`` ``(B, 3, 3)``, each displaced by the reference-frame shift ``s_true`` ``(B, 2)`` (zero depth)
    projected into every tilt; and the tilt geometry ``(T, 3, 3)`` (the reference tilt, 0 degrees, first)."""
    pixels = FourierPixels.create(D)
    R = stage(tilts)
    A = np.einsum("tij,njk->ntik", R, A_particle)  # (B, T, 3, 3)
    B, T = A.shape[:2]
    images = project_real(torch.tensor(vol), torch.tensor(A.reshape(-1, 3, 3), dtype=torch.float32))
    y = hartley2(images).reshape(B * T, -1)[:, pixels.index]
    shift = np.einsum("tij,nj->nti", R[:, :2, :2], s_true)  # (B, T, 2)
    y = hartley_translate(y, pixels.half_freqs(), -torch.tensor(shift.reshape(-1, 2), dtype=torch.float32))
    return y.reshape(B, T, -1), R


def test_grouped_search_recovers_the_particle_rotation_and_shift_from_all_tilts():
    """Five tilts (0, +-30, +-60 degrees) of six particles at random rotations, displaced by up to 2.5 px in the
    reference tilt's plane; one padding tilt full of garbage (weight 0) must not matter."""
    vol = blobs(D)
    pixels = FourierPixels.create(D)
    hf = pixels.half_freqs()
    radius = 6.0 / D
    half = torch.nonzero(hf.norm(dim=1) < radius).squeeze(1)
    m = pixels.n_half
    positions = torch.cat([half, half + m, torch.tensor([2 * m])])
    freqs = torch.cat([hf[half], hf[:1] * 0])
    B = 6
    A_true = Rotation.random(B, random_state=11).as_matrix()
    s_true = np.random.default_rng(5).uniform(-2.5, 2.5, (B, 2))
    y, R = _series(vol, A_true, s_true)
    y = y[..., positions]
    weight = torch.ones_like(y)
    y[2, 4] = 50.0 * torch.randn(y.shape[-1])  # particle 2's last tilt is padding
    weight[2, 4] = 0.0
    rel = torch.tensor(R, dtype=torch.float32)[None].expand(B, -1, -1, -1)
    predictor = map_search_predictor(vol, radius, freqs, weight=weight)
    A, s, err = grouped_search(predictor, y, rel, hf[half], base_level=1, n_levels=3, top_k=8,
                               shift_extent_px=3.0, shift_step_px=1.0)
    angle = so3_grid.geodesic_distance_deg(A.numpy(), A_true)
    spacing = so3_grid.grid_spacing_deg(4)  # 3.75 degrees, the finest level searched
    assert angle.max() < spacing, angle
    np.testing.assert_allclose(s.numpy(), s_true, atol=0.35)  # finest shift step 0.125 px
    assert torch.isfinite(err).all()
    # a tiny rotation budget (one rotation per block) gives the same answer
    A2, s2, _ = grouped_search(predictor, y, rel, hf[half], base_level=1, n_levels=3, top_k=8,
                               shift_extent_px=3.0, shift_step_px=1.0, budget=1)
    np.testing.assert_allclose(A2.numpy(), A.numpy(), atol=1e-6)
    np.testing.assert_allclose(s2.numpy(), s.numpy(), atol=1e-6)


@dataclasses.dataclass
class _Tilts:
    """The pose fields of a tilt-series set (``TiltSeriesSet``'s names)."""

    offsets: np.ndarray
    rotations: np.ndarray
    shifts_angstrom: np.ndarray
    tilt_deg: np.ndarray
    exposure_e_per_angstrom2: np.ndarray
    particle_rotations: np.ndarray | None = None


def test_ignoring_the_poses_of_a_tilt_series_keeps_the_tilt_geometry():
    """Each tilt's rotation becomes its rotation relative to the particle's reference tilt (the one nearest 0
    degrees), origins are zeroed; the particle's own pose (w = log A_ref, d = the reference-frame shift) through
    tilt_compose gives back every tilt's pose."""
    from cryoscape.train.run import without_poses

    counts = [5, 3, 4]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    tilt = np.concatenate([[20.0, -10.0, 3.0, 30.0, -30.0], [-6.0, 0.0, 6.0], [40.0, -20.0, 20.0, -2.0]])
    exposure = np.arange(len(tilt), dtype=np.float64)
    particle = Rotation.random(3, random_state=4).as_matrix()
    owner = np.repeat(np.arange(3), counts)
    rotations = stage(tilt) @ particle[owner]
    shifts = np.random.default_rng(1).normal(size=(len(tilt), 2))
    tilts = _Tilts(offsets, rotations, shifts, tilt, exposure, particle_rotations=particle)
    out, had = without_poses(tilts)
    assert had and out.particle_rotations is None
    assert not out.shifts_angstrom.any()
    ref = reference_tilts(offsets, tilt, exposure)
    np.testing.assert_array_equal(ref, [2, 1, 3])
    ref_rows = offsets[:-1] + ref
    np.testing.assert_allclose(out.rotations[ref_rows], np.broadcast_to(np.eye(3), (3, 3, 3)), atol=1e-12)
    # the tilt geometry: R_t R_ref^T, whatever the particle's orientation
    expect = stage(tilt) @ np.swapaxes(stage(tilt[ref_rows])[owner], 1, 2)
    np.testing.assert_allclose(out.rotations, expect, atol=1e-12)
    # the particle's true pose in the reference tilt's frame restores every tilt's true rotation
    for p in range(3):
        rows = np.arange(offsets[p], offsets[p + 1])
        A_ref = rotations[ref_rows[p]]
        w = torch.tensor(Rotation.from_matrix(A_ref).as_rotvec())[None]
        rot, moved = tilt_compose(torch.tensor(out.rotations[rows])[None], torch.tensor([ref[p]]), w,
                                  torch.tensor([[1.0, -0.5, 0.0]], dtype=torch.float64))
        np.testing.assert_allclose(rot[0].numpy(), rotations[rows], atol=1e-10)
        np.testing.assert_allclose(moved[0, ref[p]].numpy(), [1.0, -0.5], atol=1e-12)


def test_tilt_searcher_starts_from_random_particle_poses_with_3d_shifts_and_restores_its_state():
    hf = FourierPixels.create(16).half_freqs()
    s = TiltPoseSearcher(5, hf, np.array([0, 1, 0, 2, 0]), D=16, pixel_size_angstrom=4.0, seed=3)
    assert s.table.shift_dims == 3 and not s.table.shift_px.any()
    angles = np.rad2deg(np.linalg.norm(s.table.rotvec.numpy(), axis=1))
    assert (angles > 1.0).all()  # random rotations, not the identity
    s.table.values[1, 3:] = torch.tensor([0.5, -1.0, 0.25])
    s.images_seen, s.full_searches = 40, 2
    restored = TiltPoseSearcher(5, hf, np.array([0, 1, 0, 2, 0]), D=16, pixel_size_angstrom=4.0, seed=9)
    restored.load_state_dict(s.state_dict())
    torch.testing.assert_close(restored.table.values, s.table.values)
    assert restored.images_seen == 40 and restored.full_searches == 2
    other = TiltPoseSearcher(5, hf, np.zeros(5, dtype=np.int64), D=16, pixel_size_angstrom=4.0)
    with pytest.raises(ValueError, match="reference tilts"):
        other.load_state_dict(s.state_dict())


class _TwoTiltMaps:
    """A stand-in tomodrgn model for the class search: class ``k``'s predictor is the known map ``vols[k]``."""

    def __init__(self, vols):
        self.vols = vols

    def tilt_search_predictor(self, batch, half, radius, class_index=None):
        hf = FourierPixels.create(D).half_freqs()
        return map_search_predictor(self.vols[class_index], radius, torch.cat([hf[half], hf[:1] * 0]))


def test_tilt_class_search_gives_each_particle_the_map_it_came_from():
    """abinit --model tomodrgn --classes: every particle's tilts searched against each class map together; each
    particle takes the map its tilts came from and the rotation there."""
    vols = [blobs(D, seed=3), blobs(D, seed=8)]
    A_true = Rotation.random(6, random_state=4).as_matrix()
    labels = np.array([0, 1, 0, 1, 1, 0])
    ys, R = [], None
    for k in range(2):
        y_k, R = _series(vols[k], A_true, np.zeros((6, 2)))
        ys.append(y_k)
    y = torch.stack([ys[k][i] for i, k in enumerate(labels)])
    rot = torch.tensor(np.broadcast_to(R, (6, *R.shape)).copy(), dtype=torch.float32)  # the tilt geometry
    batch = {"y": y, "rot": rot, "index": torch.arange(6)}
    hf = FourierPixels.create(D).half_freqs()
    s = TiltPoseSearcher(6, hf, np.zeros(6, dtype=np.int64), D=D, pixel_size_angstrom=8.0, pretrain_images=0,
                         n_classes=2, class_anneal_epochs=1, radius_start_px=6, radius_end_px=6, shift_extent_px=1,
                         shift_step_px=1)
    s.active(1)
    out = s.prepare(batch, _TwoTiltMaps(vols))
    np.testing.assert_array_equal(s.classes.numpy(), labels)
    np.testing.assert_array_equal(out["class_index"].numpy(), labels)
    angle = so3_grid.geodesic_distance_deg(out["rot"][:, 0].double().numpy(), A_true)
    assert np.median(angle) < so3_grid.grid_spacing_deg(4), angle


# -- the model's hooks and end to end ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tilt_sim(tmp_path_factory):
    """A tiny tilt-series simulation of the blob map: 120 particles x 7 to 9 tilts (0 to +-60 by 15 degrees, each
    particle missing up to 2 high tilts: padded batches), D=24, SNR 10, 3-D origins within 1 px."""
    import mrcfile

    out = tmp_path_factory.mktemp("tilt_abinit_sim")
    with mrcfile.new(out / "truth.mrc") as f:
        f.set_data(blobs(D))
        f.voxel_size = 8.0
    assert main(["simulate-tilt", "--volumes", str(out / "truth.mrc"), "-N", "120", "-D", str(D), "--apix", "8",
                 "--snr", "10", "--tilt-max", "60", "--tilt-step", "15", "--max-shift", "1", "--seed", "2",
                 "--tomograms", "4", "--drop-tilts", "2", "--device", "cpu", "-o", str(out / "sim")]) == 0
    return out


class _BlobDecoder(torch.nn.Module):
    """A smooth Hermitian stand-in for the coordinate decoder: ``(re, im)`` of the Fourier transform of three
    Gaussian blobs at ``q`` (cycles/pixel); the latent shifts the blobs (so a latent changes the map)."""

    def forward(self, q, z=None):
        x = torch.tensor([[2.0, 0.5, -1.0], [-1.5, 2.5, 0.5], [0.0, -2.0, 2.0]])
        shift = torch.zeros(q.shape[0], 1, 3) if z is None else torch.nn.functional.pad(z, (0, 1))[:, None, :3]
        phase = -2.0 * np.pi * torch.einsum("bnk,bjk->bnj", q, x[None] + shift)[..., None, :]
        env = torch.exp(-2.0 * np.pi**2 * 1.5**2 * (q * q).sum(-1, keepdim=True))[..., None]
        re = (env * torch.cos(phase)).sum(-1)
        im = (env * torch.sin(phase)).sum(-1)
        return torch.cat([re, im], dim=-1)


def test_tilt_search_slices_match_the_models_own_prediction(tilt_sim):
    """TomoDRGN.tilt_search_predictor's interpolated slices (times its transfer) against
    TomoDRGN.tilt_pose_predictor at the same per-tilt rotations (a smooth decoder, so that interpolation is
    accurate); the same weights; the consensus phase renders the latent 0 from one shared grid."""
    from cryoscape.data.tilt_data import TiltSeriesData
    from cryoscape.io.tilt_series import load_tilt_series
    from cryoscape.models.tomodrgn import TomoDRGN

    tilts = load_tilt_series(tilt_sim / "sim" / "particles.star")
    data = TiltSeriesData(tilts, FourierPixels.create(tilts.D), progress=False)
    batch = data.batch(np.arange(3))
    hf = data.pixels.half_freqs()
    half = torch.nonzero(hf.norm(dim=1) < 6.0 / D).squeeze(1)
    rot = batch["rot"]
    B, T = rot.shape[:2]
    for zdim, consensus in ((0, False), (2, True), (2, False)):
        torch.manual_seed(0)
        model = TomoDRGN(D, tilts.pixel_size_angstrom, ntilts=None, zdim=zdim, pooling="mean", enc_dim=16,
                         enc_layers=1, tilt_embed_dim=8, dec_dim=16, dec_layers=1).eval()
        model.decoder = _BlobDecoder()
        model.set_consensus_only(consensus)
        assert model.consensus_only == consensus
        pred = model.tilt_search_predictor(batch, half, 6.0 / D, oversample=2)
        assert pred.shared == (zdim == 0 or consensus)
        predict, weights = model.tilt_pose_predictor(batch, half)
        torch.testing.assert_close(pred.weight, weights)
        assert (weights[~batch["tilt_mask"]] == 0).all() and (weights > 0).any()
        direct = predict(rot)
        sampled = pred.slices(rot).reshape(B, T, -1) * pred.transfer
        scored = weights > 0
        rel = (sampled - direct)[scored].norm() / direct[scored].norm()
        assert rel < 0.02, (zdim, consensus, float(rel))
    homogeneous = TomoDRGN(D, tilts.pixel_size_angstrom, ntilts=None, zdim=0, dec_dim=16, dec_layers=1)
    homogeneous.set_consensus_only(True)
    assert not homogeneous.consensus_only


def _pose_errors(A_true: np.ndarray, A_est: np.ndarray) -> np.ndarray:
    """Geodesic errors (degrees) after the best global rotation (either hand): ``A_est ~ A_true Q``."""
    F = np.diag([1.0, 1.0, -1.0])
    errors = []
    for At in (A_true, F @ A_true @ F):
        M = np.einsum("nji,njk->nik", At, A_est)  # At^T A_est: Q for every image
        U, _, Vt = np.linalg.svd(np.median(M, axis=0))
        Q = U @ np.diag([1, 1, np.linalg.det(U @ Vt)]) @ Vt
        errors.append(so3_grid.geodesic_distance_deg(At @ Q, A_est))
    return min(errors, key=np.median)


TOMO = ["--model", "tomodrgn", "--threads", "1", "--no-progress", "-b", "4", "--pretrain", "60", "--dec-dim", "64",
        "--lr", "1e-3"]


@pytest.mark.slow
def test_tiny_tilt_abinit_recovers_the_map_and_the_poses(tilt_sim, tmp_path):
    """120 particles x 7-9 tilts at D=24, SNR 10, 12 epochs (about 40 s on one shared core; when written the poses
    were stable after epoch 7, the median pose error 1.5 degrees, the largest 5.1, the map's correlation 0.99): the
    map correlates with the truth at > 0.95 after alignment, in the true hand (the tilt geometry fixes it), and the
    per-tilt poses are within 5 degrees (median; 95 % within 10) of the truth after the global alignment."""
    import mrcfile

    from cryoscape.analysis.align import align_maps
    from cryoscape.io.tilt_series import load_tilt_series

    run = tmp_path / "run"
    star = tilt_sim / "sim" / "particles.star"
    assert main(["abinit", str(star), "-o", str(run), "-n", "12", "--search-epochs", "8", *TOMO]) == 0
    text = (run / "log.txt").read_text()
    assert "except for the tilt geometry" in text and "searched from scratch" in text
    assert main(["eval-vol", str(run), "-o", str(tmp_path / "map.mrc")]) == 0
    with mrcfile.open(tmp_path / "map.mrc") as f:
        est = f.data.copy()
    al = align_maps(est, blobs(D), pixel_size_angstrom=8.0)
    assert al.correlation > 0.95 and not al.hand_flipped, al
    truth = load_tilt_series(star)
    _, learned = load_learned_poses(run)
    assert learned["rotations"].shape == (truth.n_images, 3, 3) and learned["shift_px"].shape == (len(truth), 3)
    errors = _pose_errors(truth.rotations, learned["rotations"])
    assert np.median(errors) < 5.0 and np.percentile(errors, 95) < 10.0, np.percentile(errors, [50, 95])
    # write-poses writes them to an image-series STAR file as for train --refine-poses
    assert main(["write-poses", str(run), "-o", str(tmp_path / "poses.star")]) == 0
    back = load_tilt_series(tmp_path / "poses.star", datadir=tilt_sim / "sim")
    assert so3_grid.geodesic_distance_deg(back.rotations, learned["rotations"]).max() < 1e-3


@pytest.mark.slow
def test_tiny_heterogeneous_tilt_abinit_finds_the_poses_against_the_consensus(tilt_sim, tmp_path):
    """--zdim 2 on the same one-state data (about 40 s): the search runs against the consensus map (latent 0), the
    latent is switched on with the local phase, and the poses come out as well (when written: stable after epoch 8,
    median 1.7 degrees, largest 5.4)."""
    from cryoscape.io.tilt_series import load_tilt_series

    run = tmp_path / "run"
    star = tilt_sim / "sim" / "particles.star"
    het = ["--zdim", "2", "--pooling", "mean", "--enc-dim", "32", "--enc-layers", "1", "--tilt-embed-dim", "16"]
    assert main(["abinit", str(star), "-o", str(run), "-n", "12", "--search-epochs", "8", *het, *TOMO]) == 0
    text = (run / "log.txt").read_text()
    assert "searched against one consensus map" in text and "local refinement from epoch" in text
    _, learned = load_learned_poses(run)
    errors = _pose_errors(load_tilt_series(star).rotations, learned["rotations"])
    assert np.median(errors) < 5.0 and np.percentile(errors, 95) < 10.0, np.percentile(errors, [50, 95])
    assert np.load(run / "latents" / "epoch_012.npy").shape == (120, 2)
    # eval-images encodes the images centred by the estimated shifts, as training did
    assert main(["eval-images", str(run), "--epoch", "12", "-o", str(tmp_path / "z.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"), np.load(run / "latents" / "epoch_012.npy"), atol=1e-5)


def test_tilt_abinit_resumed_at_an_epoch_boundary_equals_an_uninterrupted_run(tilt_sim, tmp_path):
    """Two epochs (pretraining, the first searches), resumed to three (searching): the same poses and weights as
    a run of three epochs at once; a heterogeneous model (consensus first). About 4 s."""
    from cryoscape.rundir import load_checkpoint

    star = str(tilt_sim / "sim" / "particles.star")
    small = ["--model", "tomodrgn", "--zdim", "2", "--pooling", "mean", "--enc-dim", "16", "--enc-layers", "1",
             "--tilt-embed-dim", "8", "--threads", "1", "--no-progress", "-b", "8", "--pretrain", "60",
             "--dec-dim", "16", "--search-epochs", "4", "--ind", str(tilt_sim / "ind.txt")]
    np.savetxt(tilt_sim / "ind.txt", np.arange(40), fmt="%d")
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(["abinit", star, "-o", str(whole), "-n", "3", *small]) == 0
    assert main(["abinit", star, "-o", str(part), "-n", "2", *small]) == 0
    assert main(["abinit", star, "-o", str(part), "--resume", "-n", "3", "--threads", "1", "--no-progress"]) == 0
    assert_same_run(whole, part, 3)
    state = load_checkpoint(whole / "checkpoints" / "epoch_003.pt")["poses"]
    assert state["epoch_counts"]["searched"] == 40 and [h["epoch"] for h in state["history"]] == [2]
    assert state["local_from"] == 0  # still searching


def test_tilt_abinit_resumed_after_ctrl_c_mid_search_epoch_equals_an_uninterrupted_run(tilt_sim, tmp_path,
                                                                                       monkeypatch):
    """Stopped (as by Ctrl-C) in the middle of the third epoch, a search epoch, and resumed: the same poses and
    weights as without the stop. About 4 s."""
    star = str(tilt_sim / "sim" / "particles.star")
    np.savetxt(tilt_sim / "ind40.txt", np.arange(40), fmt="%d")
    small = ["--model", "tomodrgn", "--threads", "1", "--no-progress", "-b", "8", "--pretrain", "60", "--dec-dim",
             "16", "--search-epochs", "4", "-n", "3", "--ind", str(tilt_sim / "ind40.txt")]
    # 5 steps an epoch: stopped in the middle of epoch 3
    assert_ctrl_c_resume_equals_whole_run(star, small, tmp_path, monkeypatch, stop_step=12, epoch=3)



def test_abinit_with_posterior_draws_resumed_after_ctrl_c_equals_an_uninterrupted_run(tilt_sim, tmp_path,
                                                                                        monkeypatch):
    """--search-draws: stopped in the middle of a drawn search epoch and resumed, the same draws, poses and
    weights as without the stop (the draws' generator is seeded from the run's seed and the images seen)."""
    star = str(tilt_sim / "sim" / "particles.star")
    np.savetxt(tilt_sim / "ind40.txt", np.arange(40), fmt="%d")
    small = ["--model", "tomodrgn", "--threads", "1", "--no-progress", "-b", "8", "--pretrain", "20", "--dec-dim",
             "16", "--search-epochs", "4", "--search-draws", "2", "-n", "3", "--ind", str(tilt_sim / "ind40.txt")]
    # 5 steps an epoch: stopped in the middle of epoch 2, a drawn search
    assert_ctrl_c_resume_equals_whole_run(star, small, tmp_path, monkeypatch, stop_step=7, epoch=3)
    log = (tmp_path / "whole" / "log.txt").read_text()
    assert "(poses drawn from their posteriors)" in log

def test_tilt_abinit_with_classes_resumed_after_ctrl_c_equals_an_uninterrupted_run(tilt_sim, tmp_path,
                                                                                     monkeypatch):
    """--classes 2 (a heterogeneous model's consensus phase with two class maps): stopped in the middle of a class
    search epoch and resumed, the same classes, poses and weights as without the stop."""
    from cryoscape.rundir import load_checkpoint

    star = str(tilt_sim / "sim" / "particles.star")
    np.savetxt(tilt_sim / "ind40.txt", np.arange(40), fmt="%d")
    small = ["--model", "tomodrgn", "--zdim", "2", "--classes", "2", "--pooling", "mean", "--enc-dim", "16",
             "--enc-layers", "1", "--tilt-embed-dim", "8", "--threads", "1", "--no-progress", "-b", "8",
             "--pretrain", "20", "--dec-dim", "16", "--search-epochs", "4", "-n", "3", "--ind",
             str(tilt_sim / "ind40.txt")]
    assert_ctrl_c_resume_equals_whole_run(star, small, tmp_path, monkeypatch, stop_step=7, epoch=3)
    log = (tmp_path / "whole" / "log.txt").read_text()
    assert "searched against 2 class maps" in log and "% changed class" in log
    assert "train_class_fit" in (tmp_path / "whole" / "metrics.csv").read_text()  # the encoder learns the codes
    a, b = (load_checkpoint(tmp_path / name / "checkpoints" / "epoch_003.pt")["poses"]["classes"]
            for name in ("whole", "part"))
    assert torch.equal(a, b) and a.numel() == 40


def test_tilt_abinit_refusals_are_one_line(tilt_sim, tmp_path, capsys):
    star = str(tilt_sim / "sim" / "particles.star")
    base = ["abinit", star, "--model", "tomodrgn", "--no-progress", "--threads", "1"]
    assert main([*base, "-o", str(tmp_path / "a"), "--refine-poses"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "leave out --refine-poses" in err[0]
    assert main([*base, "-o", str(tmp_path / "b"), "--val-frac", "0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--val-frac must be 0" in err[0]
    assert main(["abinit", star, "-o", str(tmp_path / "c"), "--model", "opus-dsd"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "abinit does not support --model opus-dsd" in err[0]
