"""train --refine-poses end to end: learned poses in RUN/poses, fixed validation poses, exact resume, write-poses,
refusal by the other families, two DDP processes learning the poses one process learns."""

import os
import subprocess
import sys

import numpy as np
import pytest

from cryoscape.cli.main import main
from cryoscape.io.particles import load_particles
from cryoscape.models.poses import load_learned_poses, rotation_angle_deg

SMALL = ["--zdim", "2", "--enc-dim", "16", "--enc-layers", "1", "--dec-dim", "16", "--dec-layers", "1",
         "-b", "8", "--no-progress", "--lr", "1e-3", "--threads", "1"]
REFINE = ["--refine-poses", "--refine-start", "2", "--pose-method", "sgd", "--pose-lr", "0.01"]
LOCAL = ["--refine-poses", "--refine-start", "2"]  # the default method: local Gauss-Newton steps


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    assert main(["simulate", "--preset", "discrete3", "-N", "40", "-D", "16", "--apix", "6", "--snr", "2",
                 "--cs", "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def refined_run(sim, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "refined"
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "-n", "3", *SMALL, *REFINE]) == 0
    return run


def test_poses_are_learned_for_training_particles_only(sim, refined_run):
    train_pos = np.load(refined_run / "split.npz")["train"]
    epoch, first = load_learned_poses(refined_run, 1)
    assert epoch == 1 and not first["rotvec"].any() and not first["shift_px"].any()  # --refine-start 2
    epoch, last = load_learned_poses(refined_run)
    assert epoch in (1, 2, 3)
    _, last = load_learned_poses(refined_run, 3)
    moved = np.linalg.norm(last["rotvec"], axis=1) > 0
    np.testing.assert_array_equal(moved, last["refined"])
    np.testing.assert_array_equal(np.flatnonzero(last["refined"]), train_pos)
    consensus = load_particles(sim / "particles.star").poses
    angle = rotation_angle_deg(last["rotations"], consensus.rotations)
    np.testing.assert_allclose(angle, np.rad2deg(np.linalg.norm(last["rotvec"], axis=1)), atol=1e-3)
    np.testing.assert_allclose(last["shifts_angstrom"], consensus.shifts_angstrom + 6.0 * last["shift_px"],
                               atol=1e-4)
    # two refining epochs of Adam steps of 0.01 rad move each particle at most ~2 x 0.01 x sqrt(3) rad
    assert 0 < angle.max() < np.rad2deg(0.04)


def test_latent_neighbour_maps_use_the_learned_poses(sim, refined_run):
    from cryoscape.analysis.neighbour_recon import reconstructor_from_run

    rec = reconstructor_from_run(refined_run, 3, ks=(10,), device="cpu")
    _, learned = load_learned_poses(refined_run, 3)
    consensus = load_particles(sim / "particles.star").poses
    assert learned["refined"].any()
    np.testing.assert_allclose(rec.rotations, learned["rotations"])
    np.testing.assert_allclose(rec.shifts_px, learned["shifts_angstrom"] / 6.0, atol=1e-6)
    assert not np.allclose(rec.rotations, consensus.rotations)  # not the input's poses


@pytest.mark.parametrize("fmt", ["star", "cs"])
def test_write_poses_round_trip(sim, refined_run, tmp_path, fmt):
    out = tmp_path / f"refined.{fmt}"
    assert main(["write-poses", str(refined_run), "--epoch", "3", "-o", str(out)]) == 0
    _, learned = load_learned_poses(refined_run, 3)
    back = load_particles(out, datadir=sim)
    assert len(back) == 40
    assert rotation_angle_deg(back.poses.rotations, learned["rotations"]).max() < 1e-3
    np.testing.assert_allclose(back.poses.shifts_angstrom, learned["shifts_angstrom"], atol=1e-3)
    assert main(["write-poses", str(refined_run), "-o", str(out)]) == 2  # exists: --overwrite


def test_write_poses_refuses_a_run_without_learned_poses(sim, tmp_path):
    run = tmp_path / "plain"
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "-n", "1", *SMALL]) == 0
    assert main(["write-poses", str(run), "-o", str(tmp_path / "x.star")]) == 2


def test_resume_with_learned_poses_equals_uninterrupted(sim, refined_run, tmp_path):
    star = str(sim / "particles.star")
    b = tmp_path / "b"
    assert main(["train", star, "-o", str(b), "-n", "2", *SMALL, *REFINE]) == 0
    assert main(["train", star, "-o", str(b), "-n", "3", "--resume", *SMALL, *REFINE]) == 0
    _, one = load_learned_poses(refined_run, 3)
    _, two = load_learned_poses(b, 3)
    for key in ("rotvec", "shift_px", "rotations"):
        np.testing.assert_array_equal(one[key], two[key])
    np.testing.assert_array_equal(np.load(refined_run / "latents" / "epoch_003.npy"),
                                  np.load(b / "latents" / "epoch_003.npy"))


@pytest.mark.parametrize("family", ["opus-dsd"])
def test_other_families_refuse_in_one_line(sim, tmp_path, capsys, family):
    assert main(["train", str(sim / "particles.star"), "-o", str(tmp_path / "o"), "--model", family,
                 "--refine-poses", "-n", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--refine-poses is not supported by --model {family}" in err[0]
    assert not (tmp_path / "o").exists()  # refused before anything was written


@pytest.mark.slow
@pytest.mark.parametrize("refine", [REFINE, LOCAL], ids=["sgd", "local"])
def test_ddp_two_processes_learn_the_poses_of_one(sim, tmp_path, refine):
    """torchrun with 2 gloo processes (batch 8 each) against 1 process with batch 16: the same pose steps.

    Homogeneous (--zdim 0), so that no latent sampling (seeded per process) makes the two runs differ; what is
    left is the order of floating-point sums."""
    star = str(sim / "particles.star")
    common = ["--zdim", "0", *SMALL[2:-7], "--no-progress", "--lr", "1e-3", "-n", "3", "--val-frac", "0.2",
              "--threads", "1", *refine]
    assert main(["train", star, "-o", str(tmp_path / "one"), "-b", "16", *common]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cryoscape", "train", star, "-o", str(tmp_path / "two"), "-b", "8", *common]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[:3000] + "\n...\n" + result.stderr[-1500:]
    _, one = load_learned_poses(tmp_path / "one", 3)
    _, two = load_learned_poses(tmp_path / "two", 3)
    np.testing.assert_array_equal(one["refined"], two["refined"])
    # every particle was stepped as often in both runs; the steps agree to rounding
    np.testing.assert_allclose(two["rotvec"], one["rotvec"], atol=2e-3)
    np.testing.assert_allclose(two["shift_px"], one["shift_px"], atol=2e-2)


def test_eval_images_and_backproject_use_the_learned_poses(sim, refined_run, tmp_path):
    from cryoscape.io.mrc import read_mrc

    z = tmp_path / "z.npy"
    assert main(["eval-images", str(refined_run), "--epoch", "3", "-o", str(z), "--device", "cpu"]) == 0
    np.testing.assert_allclose(np.load(z), np.load(refined_run / "latents" / "epoch_003.npy"), atol=1e-5)
    star = tmp_path / "refined.star"
    assert main(["write-poses", str(refined_run), "--epoch", "3", "-o", str(star)]) == 0
    assert main(["backproject", "--run", str(refined_run), "--epoch", "3", "-o", str(tmp_path / "a")]) == 0
    assert main(["backproject", str(star), "--datadir", str(sim), "-o", str(tmp_path / "b")]) == 0
    assert main(["backproject", str(sim / "particles.star"), "-o", str(tmp_path / "c")]) == 0
    a, b, c = (read_mrc(tmp_path / x / "backproject.mrc")[0] for x in "abc")
    np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(b).max())
    assert np.abs(a - c).max() > 1e-3 * np.abs(c).max()  # not the input's poses
    assert main(["backproject", "--run", str(refined_run), str(star), "-o", str(tmp_path / "d")]) == 2


def test_filter_writes_the_learned_poses(sim, refined_run, tmp_path):
    z = np.load(refined_run / "latents" / "epoch_003.npy")
    lo, hi = float(np.median(z[:, 0])), float(z[:, 0].max())
    out = tmp_path / "sel"
    assert main(["filter", str(refined_run), "--epoch", "3", "--z-range", "0", str(lo), str(hi), "-o",
                 str(out)]) == 0
    chosen = np.load(out / "indices.npy")
    _, learned = load_learned_poses(refined_run, 3)
    back = load_particles(out / "particles.star", datadir=sim)
    assert len(back) == len(chosen) > 0
    assert rotation_angle_deg(back.poses.rotations, learned["rotations"][chosen]).max() < 1e-3
    np.testing.assert_allclose(back.poses.shifts_angstrom, learned["shifts_angstrom"][chosen], atol=1e-3)
    assert main(["filter", str(refined_run), "--epoch", "3", "--z-range", "0", str(lo), str(hi), "--input-poses",
                 "-o", str(tmp_path / "sel2")]) == 0
    kept = load_particles(tmp_path / "sel2" / "particles.star", datadir=sim)
    consensus = load_particles(sim / "particles.star").poses
    np.testing.assert_allclose(kept.poses.rotations, consensus.rotations[chosen], atol=1e-5)


def test_report_section_of_pose_changes():
    from cryoscape.analysis.report import pose_section, render_html

    rng = np.random.default_rng(0)
    rotvec = rng.normal(scale=0.01, size=(50, 3))
    rotvec[7] = [0.3, 0.0, 0.0]  # 17 degrees
    shift = rng.normal(scale=0.2, size=(50, 2))
    shift[9] = [4.0, 0.0]
    refined = np.ones(50, dtype=bool)
    refined[:3] = False
    rotvec[:3] = shift[:3] = 0.0
    ids = np.arange(50) * 2
    sec = pose_section({"rotvec": rotvec, "shift_px": shift, "refined": refined}, ids, epoch=4)
    text = " ".join(sec.paragraphs)
    assert "47 of 50 particles" in text and "by epoch 4" in text
    assert "2 particles moved further than 10 degrees or 3 pixels: 14, 18." in text
    rows = {r[0]: r for r in sec.tables[0].rows}
    assert float(rows["rotation (degrees)"][3]) == pytest.approx(np.rad2deg(0.3), abs=0.01)
    assert float(rows["shift (pixels)"][3]) == pytest.approx(4.0, abs=0.01)
    assert "Refined poses" in render_html([sec])
    assert "in-plane shift" in text
    tilt = pose_section({"rotvec": rotvec, "shift_px": np.zeros((50, 3)), "refined": refined}, ids, epoch=4)
    assert "3-D shift" in " ".join(tilt.paragraphs)


def test_analyze_reports_the_pose_changes(refined_run, tmp_path):
    from cryoscape.analysis.analyze import analyze_run

    report = analyze_run(refined_run, tmp_path / "an", epoch=3, ksample=2, skip_umap=True, skip_volumes=True,
                         progress=False)
    assert "Refined poses" in report.read_text()
    far = (tmp_path / "an" / "poses_moved_far.txt").read_text().split()
    assert far == []  # two epochs of 0.01-rad steps move no particle 10 degrees or 3 pixels


def test_pose_options_reach_the_refiner():
    import argparse
    from types import SimpleNamespace

    from cryoscape.cli.train import add_args, config_from_args
    from cryoscape.data.fourier_pixels import FourierPixels
    from cryoscape.models.registry import get_family

    parser = argparse.ArgumentParser()
    add_args(parser)
    args = parser.parse_args(["p.star", "-o", "run", "--refine-poses", "--pose-lr", "0.003", "--shift-lr", "0.2",
                              "--refine-start", "4"])
    config = config_from_args(args)
    data = SimpleNamespace(pixels=FourierPixels.create(8))
    refiner = get_family("cryodrgn").make_pose_refiner(_Sized(data, 12), config)
    assert (refiner.table.n, refiner.table.lr, refiner.table.shift_lr, refiner.start_epoch) == (12, 0.003, 0.2, 4)
    assert not refiner.active(3) and refiner.active(4)
    assert refiner.method == "local"  # the default
    default = config_from_args(parser.parse_args(["p.star", "-o", "run", "--refine-poses"]))
    refiner = get_family("cryodrgn").make_pose_refiner(_Sized(data, 5), default)
    assert (refiner.table.lr, refiner.table.shift_lr, refiner.start_epoch) == (2e-3, 0.1, 2)
    args = parser.parse_args(["p.star", "-o", "run", "--refine-poses", "--pose-search-radius", "0.75"])
    refiner = get_family("cryodrgn").make_pose_refiner(_Sized(data, 12), config_from_args(args))
    assert (refiner.method, refiner.search_radius) == ("local", 0.75)
    args = parser.parse_args(["p.star", "-o", "run", "--refine-poses", "--pose-method", "sgd"])
    assert get_family("cryodrgn").make_pose_refiner(_Sized(data, 12), config_from_args(args)).method == "sgd"


def test_a_config_recorded_before_pose_methods_keeps_adam():
    from cryoscape.config import RunConfig

    old = RunConfig.from_dict({"train": {"refine_poses": True, "pose_lr": 0.01}})
    assert old.train.pose_method == "sgd"
    assert RunConfig.from_dict({"train": {"refine_poses": True}}).train.pose_method == "sgd"
    assert RunConfig().train.pose_method == "local"


def test_local_refinement_moves_training_poses_by_bounded_steps_and_resumes_exactly(sim, tmp_path):
    star = str(sim / "particles.star")
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", star, "-o", str(a), "-n", "3", *SMALL, *LOCAL]) == 0
    assert main(["train", star, "-o", str(b), "-n", "2", *SMALL, *LOCAL]) == 0
    assert main(["train", star, "-o", str(b), "-n", "3", "--resume", *SMALL, *LOCAL]) == 0
    train_pos = np.load(a / "split.npz")["train"]
    _, last = load_learned_poses(a, 3)
    np.testing.assert_array_equal(np.flatnonzero(last["refined"]), train_pos)
    angle = np.rad2deg(np.linalg.norm(last["rotvec"], axis=1))
    assert np.all(angle[train_pos] > 0) and np.all(angle[~last["refined"]] == 0)
    assert angle.max() <= 2 * 5.0 + 1e-3  # two refining epochs, each step at most 5 degrees
    assert np.linalg.norm(last["shift_px"], axis=1).max() <= 2 * 1.5 + 1e-3
    _, resumed = load_learned_poses(b, 3)
    for key in ("rotvec", "shift_px", "rotations"):
        np.testing.assert_array_equal(last[key], resumed[key])


class _Sized:
    def __init__(self, inner, n):
        self.pixels, self._n = inner.pixels, n

    def __len__(self):
        return self._n


def test_explorer_selection_carries_the_learned_poses(sim, refined_run):
    from cryoscape.explore.data import load_explorer_data
    from cryoscape.explore.export import export_selection

    data = load_explorer_data(refined_run, epoch=3, k=2, umap=False)
    assert data.refine_poses
    chosen = np.sort(data.input_indices[:5])
    result = export_selection(data, chosen.tolist(), name="refined_sel")
    _, learned = load_learned_poses(refined_run, 3)
    back = load_particles(refined_run / "explore_selections" / "refined_sel" / "particles.star", datadir=sim)
    assert len(back) == 5 and result["n_selected"] == 5
    assert rotation_angle_deg(back.poses.rotations, learned["rotations"][chosen]).max() < 1e-3
    np.testing.assert_allclose(back.poses.shifts_angstrom, learned["shifts_angstrom"][chosen], atol=1e-3)
