"""Ab initio pose search (models/pose_search.py, cryoscape abinit): the hierarchical search recovers the poses and
shifts of noise-free projections of a known map; the decoder-grid slices equal the decoder's own; a tiny ab initio
run recovers the map (after alignment) and the poses; a resumed run equals an uninterrupted one."""

import math

import numpy as np
import pytest
import torch

from _abinit_runs import assert_ctrl_c_resume_equals_whole_run, assert_same_run, blobs, tiny_cryodrgn
from cryoscape.cli.main import main
from cryoscape.data.fourier_pixels import FourierPixels
from cryoscape.imaging import so3_grid
from cryoscape.imaging.fft import hartley2
from cryoscape.imaging.projection import project_real
from cryoscape.models.pose_search import (
    PoseSearcher,
    hierarchical_search,
    map_search_predictor,
    random_rotations,
    shift_grid,
)
from cryoscape.models.poses import hartley_translate, load_learned_poses

D = 32


def test_search_recovers_poses_and_shifts_of_noise_free_projections():
    vol = blobs(D)
    pixels = FourierPixels.create(D)
    hf = pixels.half_freqs()
    radius = 8.0 / D
    half = torch.nonzero(hf.norm(dim=1) < radius).squeeze(1)
    m = pixels.n_half
    positions = torch.cat([half, half + m, torch.tensor([2 * m])])
    freqs = torch.cat([hf[half], hf[:1] * 0])
    B = 12
    A_true = torch.tensor(random_rotations(B, 11), dtype=torch.float32)
    t_true = torch.tensor(np.random.default_rng(5).uniform(-2.5, 2.5, (B, 2)), dtype=torch.float32)
    images = project_real(torch.tensor(vol), A_true)  # real-space projections: independent of the Fourier slices
    y = hartley2(images).reshape(B, -1)[:, pixels.index]
    y = hartley_translate(y, hf, -t_true)  # the particles displaced by t_true
    predictor = map_search_predictor(vol, radius, freqs)
    A, t, err = hierarchical_search(predictor, y[:, positions], hf[half], base_level=1, n_levels=3, top_k=8,
                                    shift_extent_px=3.0, shift_step_px=1.0)
    angle = so3_grid.geodesic_distance_deg(A.numpy(), A_true.double().numpy())
    spacing = so3_grid.grid_spacing_deg(4)  # 3.75 degrees, the finest level searched
    assert np.median(angle) < spacing and angle.max() < 2 * spacing, angle
    np.testing.assert_allclose(t.numpy(), t_true.numpy(), atol=0.35)  # finest shift step 0.125 px
    assert torch.isfinite(err).all()


def test_shift_grid_is_square_and_centred():
    g = shift_grid(3.0, 1.5)
    assert g.shape == (25, 2) and (g == 0).all(dim=1).any()
    assert g.abs().max() == 3.0


def test_decoder_grid_slices_match_the_decoders_own():
    """CryoDRGN.pose_search_predictor's interpolated slices against CryoDRGN.render at the same rotations."""
    from cryoscape.models.cryodrgn import CryoDRGN

    torch.manual_seed(0)
    model = CryoDRGN(D=16, pixel_size_angstrom=4.0, zdim=0, dec_dim=32, dec_layers=2, pe_dim=8, norm_std=1.0)
    model.eval()
    hf = model.pixels.half_freqs()
    half = torch.nonzero(hf.norm(dim=1) < 5.0 / 16).squeeze(1)
    batch = {"y": torch.zeros(3, model.pixels.n_pixels), "rot": torch.eye(3).expand(3, 3, 3)}
    pred = model.pose_search_predictor(batch, half, 5.0 / 16, oversample=4)
    rots = torch.tensor(random_rotations(6, 2), dtype=torch.float32)
    direct = model.render(rots, None, half)
    sampled = pred.slices(rots)
    assert sampled.shape == direct.shape
    rel = (sampled - direct).norm() / direct.norm()
    assert rel < 0.05, float(rel)
    # per-image rotation sets (B, R, 3, 3) give the same slices
    per_image = pred.slices(rots.reshape(2, 3, 3, 3))
    torch.testing.assert_close(per_image.reshape(6, -1), sampled, rtol=1e-5, atol=1e-5)



def test_consensus_only_gives_one_map_for_every_image_and_the_searcher_sets_it():
    """A heterogeneous model in the search phase: the decoder sees the latent 0 for every image (its loss does not
    depend on the encoder's output), the search uses one shared grid, and the searcher switches the latent on with
    the local phase."""
    from cryoscape.models.cryodrgn import CryoDRGN

    model, y, rot = tiny_cryodrgn(2, 3)
    hf = model.pixels.half_freqs()
    half = torch.nonzero(hf.norm(dim=1) < 4.0 / 16).squeeze(1)
    assert not model.pose_search_predictor({"y": y}, half, 4.0 / 16).shared  # per-image latents
    model.set_consensus_only(True)
    # the reconstruction equals the map at the latent 0, whatever the encoder says about the image
    recon = model({"y": y, "rot": rot})["recon"]
    expected = torch.mean((model.render(rot, torch.zeros(3, 2)) - y) ** 2)
    torch.testing.assert_close(recon, expected)
    pred = model.pose_search_predictor({"y": y}, half, 4.0 / 16, oversample=8)
    assert pred.shared
    with torch.no_grad():
        direct = model.render(rot, torch.zeros(3, 2), half)
    rel = (pred.slices(rot) - direct).norm() / direct.norm()
    assert rel < 0.05, float(rel)
    # the searcher: consensus while searching, the latent on in the local phase
    s = PoseSearcher(3, hf, D=16, pixel_size_angstrom=4.0, pretrain_images=0)
    batch = {"y": y, "rot": torch.eye(3).expand(3, 3, 3), "index": torch.arange(3)}
    s.active(1)
    s.prepare(batch, model)
    assert model.consensus_only
    s.local_from = 2
    s.active(2)
    s.prepare(batch, model)
    assert not model.consensus_only
    homogeneous = CryoDRGN(D=16, pixel_size_angstrom=4.0, zdim=0, dec_dim=32, dec_layers=2, pe_dim=8, norm_std=1.0)
    homogeneous.set_consensus_only(True)
    assert not homogeneous.consensus_only

def test_searcher_switches_to_local_refinement_when_stable():
    s = PoseSearcher(10, FourierPixels.create(16).half_freqs(), D=16, pixel_size_angstrom=3.0, max_search_epochs=5,
                     min_search_epochs=2)
    assert s.phase(1) == "search" and s.radius_start_px < s.radius_end_px
    assert s.lattice_radius_px() == s.radius_start_px
    s.epoch_counts = {"searched": 4, "moved": 4, "error": 1.0}
    s.active(2)  # epoch 1 closed: partly pretraining (4 of 10 searched), not a complete search
    assert s.full_searches == 0 and s.lattice_radius_px() == s.radius_start_px
    s.epoch_counts = {"searched": 10, "moved": 0, "error": 1.0}
    s.active(3)  # epoch 2: the first complete search; none moved, but fewer than min_search_epochs
    assert s.full_searches == 1 and s.local_from == 0 and s.lattice_radius_px() > s.radius_start_px
    s.epoch_counts = {"searched": 10, "moved": 0, "error": 1.0}
    s.active(4)  # epoch 3: the second complete search, stable -> local refinement from epoch 4
    assert s.local_from == 4 and s.phase(4) == "local" and s.phase(3) == "search"
    assert [h["epoch"] for h in s.history] == [1, 2, 3]
    restored = PoseSearcher(10, FourierPixels.create(16).half_freqs(), D=16, pixel_size_angstrom=3.0)
    restored.load_state_dict(s.state_dict())
    assert restored.local_from == 4 and restored.full_searches == 2 and restored.history == s.history
    torch.testing.assert_close(restored.table.values, s.table.values)



def test_global_candidates_draw_from_the_posterior_reproducibly():
    from cryoscape.models.pose_search import global_candidates

    # two images, three rotations; residual variance per value E_min / n = 1 (n = 10 values)
    err = torch.tensor([[10.0, 10.0 + 2 * math.log(3.0), 40.0], [10.0, 12.0, 11.0]])
    e, i = global_candidates(err, 2, 10)
    assert i.tolist() == [[0, 1], [0, 2]] and torch.equal(e, err.gather(1, i))
    # the posterior of image 0 is (3/4, 1/4, ~0): the draw frequencies follow it
    draws = []
    for seed in range(2000):
        g = torch.Generator()
        g.manual_seed(seed)
        draws.append(int(global_candidates(err, 2, 10, g)[1][0, 0]))
    freq = np.bincount(draws, minlength=3) / len(draws)
    np.testing.assert_allclose(freq, [0.75, 0.25, 0.0], atol=0.03)
    g1, g2 = torch.Generator(), torch.Generator()
    g1.manual_seed(7)
    g2.manual_seed(7)
    assert torch.equal(global_candidates(err, 2, 10, g1)[1], global_candidates(err, 2, 10, g2)[1])


def test_searcher_draws_first_and_never_counts_a_drawn_epoch_as_stable():
    s = PoseSearcher(10, FourierPixels.create(16).half_freqs(), D=16, pixel_size_angstrom=3.0, max_search_epochs=6,
                     min_search_epochs=1, search_draws=2)
    assert s.drawing() and s._draw_generator() is not None
    for epoch in (2, 3):  # two complete drawn searches in which nothing moved: not stable
        s.epoch_counts = {"searched": 10, "moved": 0, "error": 1.0}
        s.active(epoch)
    assert s.full_searches == 2 and s.local_from == 0 and not s.drawing() and s._draw_generator() is None
    assert [h["drawn"] for h in s.history] == [True, True]
    s.epoch_counts = {"searched": 10, "moved": 0, "error": 1.0}
    s.active(4)  # the first best-pose search, stable
    assert s.local_from == 4 and s.history[-1]["drawn"] is False
    # at most max_search_epochs - 2 drawn searches
    t = PoseSearcher(10, FourierPixels.create(16).half_freqs(), D=16, pixel_size_angstrom=3.0, max_search_epochs=3,
                     search_draws=5)
    assert t.search_draws == 1


def test_searcher_warns_when_the_budget_ends_with_most_poses_still_moving(caplog):
    """The search budget spent with most poses still moving by more than 4 grid spacings: a warning that the search
    has probably not converged, with what to do; spent with few moving that far: the plain note."""
    import logging

    def finish(far):
        s = PoseSearcher(10, FourierPixels.create(16).half_freqs(), D=16, pixel_size_angstrom=3.0,
                         max_search_epochs=2, min_search_epochs=1)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="cryoscape"):
            for epoch in (1, 2):
                s.epoch_counts = {"searched": 10, "moved": 9, "moved_far": far, "error": 1.0}
                s.active(epoch + 1)
        assert s.local_from == 3
        return [r for r in caplog.records if "abinit:" in r.getMessage()]

    unsettled = finish(8)
    assert [r.levelno for r in unsettled] == [logging.WARNING]
    assert "probably not converged" in unsettled[0].getMessage() and "--search-epochs" in unsettled[0].getMessage()
    settled = finish(2)
    assert [r.levelno for r in settled] == [logging.INFO]
    assert "complete search epochs done" in settled[0].getMessage()


def test_latent_search_epochs_follow_the_consensus_search():
    """--latent-search-epochs: after the consensus search is stable, that many search epochs against each image's
    own map (latent on), then the local refinement; the schedule survives a checkpoint."""
    from cryoscape.models.cryodrgn import CryoDRGN

    torch.manual_seed(0)
    model = CryoDRGN(D=16, pixel_size_angstrom=4.0, zdim=2, enc_dim=16, enc_layers=1, dec_dim=32, dec_layers=2,
                     pe_dim=8, norm_std=1.0)
    hf = model.pixels.half_freqs()
    s = PoseSearcher(4, hf, D=16, pixel_size_angstrom=4.0, pretrain_images=0, max_search_epochs=5,
                     min_search_epochs=1, latent_search_epochs=2)
    batch = {"y": torch.randn(4, model.pixels.n_pixels), "rot": torch.eye(3).expand(4, 3, 3),
             "index": torch.arange(4)}
    s.active(1)
    s.prepare(batch, model)
    assert model.consensus_only
    s.epoch_counts = {"searched": 4, "moved": 0, "error": 1.0}
    s.active(2)  # epoch 1 stable: epochs 2-3 search each image's own map, local from 4
    assert (s.latent_from, s.local_from) == (2, 4) and s.phase(3) == "search" and s.phase(4) == "local"
    restored = PoseSearcher(4, hf, D=16, pixel_size_angstrom=4.0)
    restored.load_state_dict(s.state_dict())
    assert (restored.latent_from, restored.local_from) == (2, 4)
    predictor_calls = []
    original = model.pose_search_predictor

    def spy(*args, **kwargs):
        pred = original(*args, **kwargs)
        predictor_calls.append(pred.shared)
        return pred

    model.pose_search_predictor = spy
    s.prepare(batch, model)
    assert not model.consensus_only and predictor_calls == [False]  # one grid per image, at its latent
    # without a latent search the local phase follows the consensus search directly
    t = PoseSearcher(4, hf, D=16, pixel_size_angstrom=4.0, max_search_epochs=5, min_search_epochs=1)
    t.epoch_counts = {"searched": 4, "moved": 0, "error": 1.0}
    t.active(2)
    assert (t.latent_from, t.local_from) == (0, 2)

def test_searcher_gives_up_after_the_most_search_epochs():
    s = PoseSearcher(10, FourierPixels.create(16).half_freqs(), D=16, pixel_size_angstrom=3.0, max_search_epochs=3,
                     min_search_epochs=2)
    for epoch in (2, 3, 4):
        s.epoch_counts = {"searched": 10, "moved": 9, "error": 1.0}
        s.active(epoch)
    assert s.local_from == 4 and s.lattice_radius_px() == s.radius_end_px


def test_default_search_epochs_scale_with_the_data():
    from cryoscape.models.pose_search import default_search_epochs, search_radii

    assert default_search_epochs(500) == 40 and default_search_epochs(5000) == 12
    assert default_search_epochs(10**6) == 10 and default_search_epochs(3000) == 20
    assert search_radii(32) == (5.0, 8.0) and search_radii(64) == (8.0, 16.0) and search_radii(256) == (16.0, 32.0)


# -- end to end ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def blob_sim(tmp_path_factory):
    import mrcfile

    out = tmp_path_factory.mktemp("abinit_sim")
    with mrcfile.new(out / "truth.mrc") as f:
        f.set_data(blobs(D))
        f.voxel_size = 4.0
    assert main(["simulate", "--volumes", str(out / "truth.mrc"), "-N", "500", "--snr", "1", "--seed", "2",
                 "-o", str(out / "sim")]) == 0
    return out


ABINIT = ["--threads", "2", "--no-progress", "-b", "32", "--pretrain", "300", "--dec-dim", "128"]


@pytest.mark.slow
def test_tiny_abinit_recovers_the_map_and_the_poses(blob_sim, tmp_path):
    """D=32, 500 images at SNR 1, 20 epochs with the default search schedule (about 30 s on 2 cores; the poses
    were stable after epoch 14 when written): the map correlates with the truth at > 0.9 after alignment (any
    rotation, either hand), and the median pose error after the global alignment is under 10 degrees."""
    import mrcfile

    from cryoscape.analysis.align import align_maps
    from cryoscape.io.particles import load_particles

    run = tmp_path / "run"
    assert main(["abinit", str(blob_sim / "sim" / "particles.star"), "-o", str(run), "-n", "20", *ABINIT]) == 0
    assert "poses stable after epoch" in (run / "log.txt").read_text()
    assert "poses are searched from scratch" in (run / "log.txt").read_text()
    assert main(["eval-vol", str(run), "-o", str(tmp_path / "map.mrc")]) == 0
    with mrcfile.open(tmp_path / "map.mrc") as f:
        est = f.data.copy()
    truth = blobs(D)
    al = align_maps(est, truth, pixel_size_angstrom=4.0)
    assert al.correlation > 0.9, al
    # poses: A_est = F_w A_true Q (Q a global rotation; F_w, F mirror the hand when the map came out mirrored)
    A_true = load_particles(blob_sim / "sim" / "particles.star").poses.rotations
    _, learned = load_learned_poses(run)
    errors = []
    F = np.diag([1.0, 1.0, -1.0])
    for At in (A_true, F @ A_true @ F):
        M = np.einsum("nji,njk->nik", At, learned["rotations"])  # At^T A_est: Q for every particle
        U, _, Vt = np.linalg.svd(np.median(M, axis=0))
        Q = U @ np.diag([1, 1, np.linalg.det(U @ Vt)]) @ Vt
        errors.append(so3_grid.geodesic_distance_deg(At @ Q, learned["rotations"]))
    best = min(errors, key=np.median)
    assert np.median(best) < 10.0, np.median(best)


@pytest.mark.slow
def test_abinit_resume_mid_search_equals_an_uninterrupted_run(blob_sim, tmp_path):
    """Two epochs (pretraining, then the first searches), resumed to four (search epochs): the poses and weights
    equal those of a run of four epochs at once."""

    star = str(blob_sim / "sim" / "particles.star")
    small = ["--threads", "1", "--no-progress", "-b", "50", "--pretrain", "200", "--dec-dim", "32",
             "--search-epochs", "4"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(["abinit", star, "-o", str(whole), "-n", "4", *small]) == 0
    assert main(["abinit", star, "-o", str(part), "-n", "2", *small]) == 0
    assert main(["abinit", star, "-o", str(part), "--resume", "-n", "4", "--threads", "1", "--no-progress"]) == 0
    assert_same_run(whole, part, 4)


@pytest.mark.slow
def test_abinit_resume_after_ctrl_c_mid_epoch_equals_an_uninterrupted_run(blob_sim, tmp_path, monkeypatch):
    """Stopped (as by Ctrl-C) in the middle of the third epoch, a search epoch, and resumed: the same poses and
    weights as without the stop."""
    star = str(blob_sim / "sim" / "particles.star")
    small = ["--threads", "1", "--no-progress", "-b", "50", "--pretrain", "200", "--dec-dim", "32",
             "--search-epochs", "4", "-n", "3"]
    # 10 steps an epoch: stopped in the middle of epoch 3
    assert_ctrl_c_resume_equals_whole_run(star, small, tmp_path, monkeypatch, stop_step=25, epoch=3)


def test_abinit_refuses_validation_and_refine_poses(blob_sim, tmp_path, capsys):
    star = str(blob_sim / "sim" / "particles.star")
    assert main(["abinit", star, "-o", str(tmp_path / "a"), "--val-frac", "0.2"]) != 0
    assert "--val-frac must be 0" in capsys.readouterr().err
    assert main(["abinit", star, "-o", str(tmp_path / "b"), "--refine-poses"]) != 0
    assert "leave out --refine-poses" in capsys.readouterr().err
    assert main(["abinit", star, "-o", str(tmp_path / "c"), "--model", "opus-dsd"]) != 0
    assert "abinit does not support --model opus-dsd" in capsys.readouterr().err
