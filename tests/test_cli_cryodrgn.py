"""End to end through the CLI: simulate -> train (STAR, .cs, .mrcs + pkl) -> resume -> eval-images -> eval-vol ->
filter."""

import os
import subprocess
import sys

import numpy as np
import pytest

from cryoscape.cli.main import main
from cryoscape.io.mrc import read_mrc
from cryoscape.io.particles import load_particles

SMALL = ["--zdim", "2", "--enc-dim", "16", "--enc-layers", "1", "--dec-dim", "16", "--dec-layers", "1",
         "-b", "8", "--no-progress", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    assert main(["simulate", "--preset", "discrete3", "-N", "60", "-D", "16", "--apix", "6", "--snr", "2",
                 "--cs", "--pkl", "-o", str(out)]) == 0
    return out


def test_train_eval_from_star(sim, tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "-n", "2", *SMALL]) == 0
    z = tmp_path / "z.npy"
    assert main(["eval-images", str(run), "-o", str(z), "--device", "cpu"]) == 0
    latents = np.load(z)
    assert latents.shape == (60, 2)
    np.testing.assert_allclose(latents, np.load(run / "latents" / "epoch_002.npy"), atol=1e-5)
    vol = tmp_path / "vol.mrc"
    assert main(["eval-vol", str(run), "--z", "0.5", "-0.5", "-o", str(vol), "--device", "cpu"]) == 0
    data, info = read_mrc(vol)
    assert data.shape == (16, 16, 16) and info.voxel_size_angstrom == pytest.approx(6.0)
    np.savetxt(tmp_path / "z.txt", latents[:3])
    assert main(["eval-vol", str(run), "--zfile", str(tmp_path / "z.txt"), "-o", str(tmp_path / "maps"),
                 "-D", "12", "--device", "cpu"]) == 0
    data, info = read_mrc(tmp_path / "maps" / "vol_003.mrc")
    assert data.shape == (12, 12, 12) and info.voxel_size_angstrom == pytest.approx(8.0)


def test_eval_images_streams_the_images(sim, tmp_path, monkeypatch):
    """eval-images reads each image once, per batch: it never prepares the whole stack in memory (1M images
    of a run trained in memory would need ~13 GB), and gives the same latents as training."""
    from cryoscape.data.particle_data import SliceParticleData

    run = tmp_path / "run"
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "-n", "1", *SMALL]) == 0

    def refuse(*_args, **_kwargs):
        raise AssertionError("eval-images prepared every image in memory")

    monkeypatch.setattr(SliceParticleData, "_prepare_all", refuse)
    z = tmp_path / "z.npy"
    assert main(["eval-images", str(run), "-o", str(z), "-b", "7", "--device", "cpu"]) == 0
    np.testing.assert_allclose(np.load(z), np.load(run / "latents" / "epoch_001.npy"), atol=1e-5)


def test_formats_give_identical_training_data(sim):
    """STAR, .cs and .mrcs + pkl describe the same particles: same images, poses and CTF after import."""
    star = load_particles(sim / "particles.star")
    cs = load_particles(sim / "particles.cs")
    pkl = load_particles(sim / "particles.mrcs", poses=sim / "pose.pkl", ctf=sim / "ctf.pkl")
    for other in (cs, pkl):
        assert other.pixel_size_angstrom == pytest.approx(star.pixel_size_angstrom)
        np.testing.assert_allclose(other.poses.rotations, star.poses.rotations, atol=1e-5)
        np.testing.assert_allclose(other.poses.shifts_angstrom, star.poses.shifts_angstrom, atol=1e-3)
        np.testing.assert_allclose(other.ctf.to_array(), star.ctf.to_array(), rtol=1e-5, atol=1e-3)
        np.testing.assert_array_equal(other.images[np.arange(5)], star.images[np.arange(5)])


@pytest.mark.parametrize("source", ["cs", "pkl"])
def test_train_from_cs_and_pkl(sim, tmp_path, source):
    args = [str(sim / "particles.cs")] if source == "cs" else [
        str(sim / "particles.mrcs"), "--poses", str(sim / "pose.pkl"), "--ctf", str(sim / "ctf.pkl")]
    assert main(["train", *args, "-o", str(tmp_path / "run"), "-n", "1", *SMALL]) == 0
    assert np.load(tmp_path / "run" / "latents" / "epoch_001.npy").shape == (60, 2)


def test_resume_through_cli_matches_uninterrupted(sim, tmp_path):
    star = str(sim / "particles.star")
    assert main(["train", star, "-o", str(tmp_path / "a"), "-n", "3", *SMALL]) == 0
    assert main(["train", star, "-o", str(tmp_path / "b"), "-n", "2", *SMALL]) == 0
    # refusing to overwrite a run without --resume
    assert main(["train", star, "-o", str(tmp_path / "b"), "-n", "3", *SMALL]) == 2
    assert main(["train", star, "-o", str(tmp_path / "b"), "-n", "3", "--resume", *SMALL]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "latents" / "epoch_003.npy"),
                                  np.load(tmp_path / "b" / "latents" / "epoch_003.npy"))


def test_filter_round_trips_star_and_cs(sim, tmp_path):
    for src in ("star", "cs"):
        run = tmp_path / f"run_{src}"
        assert main(["train", str(sim / f"particles.{src}"), "-o", str(run), "-n", "1", "--ind",
                     str(_write_ind(tmp_path, range(0, 60, 2))), *SMALL]) == 0
        z = np.load(run / "latents" / "epoch_001.npy")
        lo, hi = float(np.median(z[:, 0])), float(z[:, 0].max())
        out = tmp_path / f"sel_{src}"
        assert main(["filter", str(run), "--z-range", "0", str(lo), str(hi), "-o", str(out)]) == 0
        chosen = np.load(out / "indices.npy")
        expected = np.load(run / "indices.npy")[(z[:, 0] >= lo) & (z[:, 0] <= hi)]
        np.testing.assert_array_equal(chosen, np.sort(expected))
        assert all(i % 2 == 0 for i in chosen)
        # image names are kept exactly as in the input (RELION resolves them from the project folder)
        subset = load_particles(out / f"particles.{src}", datadir=sim)
        full = load_particles(sim / f"particles.{src}")
        assert len(subset) == len(chosen)
        np.testing.assert_allclose(subset.ctf.to_array(), full.ctf.subset(chosen).to_array())
        np.testing.assert_array_equal(subset.images[np.arange(len(chosen))], full.images[chosen])
        # the complement
        assert main(["filter", str(run), "--z-range", "0", str(lo), str(hi), "--invert", "-o",
                     str(out / "rest")]) == 0
        assert len(np.load(out / "rest" / "indices.npy")) == 30 - len(chosen)


def _write_ind(tmp_path, values):
    path = tmp_path / "ind.txt"
    path.write_text("\n".join(str(v) for v in values) + "\n")
    return path


@pytest.mark.slow
def test_ddp_two_processes_match_one(sim, tmp_path):
    """torchrun with 2 gloo processes (batch 8 each) follows the 1-process curve with batch 16."""
    star = str(sim / "particles.star")
    common = [*SMALL[:-5], "--no-progress", "--lr", "1e-3", "-n", "3", "--val-frac", "0.2", "--threads", "1"]
    assert main(["train", star, "-o", str(tmp_path / "one"), "-b", "16", *common]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cryoscape", "train", star, "-o", str(tmp_path / "two"), "-b", "8", *common]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    # a rank's own error comes first in stderr, torchrun's summary last: show both if it fails
    assert result.returncode == 0, result.stderr[:3000] + "\n...\n" + result.stderr[-1500:]
    one = np.genfromtxt(tmp_path / "one" / "metrics.csv", delimiter=",", names=True)
    two = np.genfromtxt(tmp_path / "two" / "metrics.csv", delimiter=",", names=True)
    np.testing.assert_allclose(two["val_recon"], one["val_recon"], rtol=0.05)
    np.testing.assert_allclose(two["train_recon"], one["train_recon"], rtol=0.05)
    assert np.load(tmp_path / "two" / "latents" / "epoch_003.npy").shape == (60, 2)


def test_frequency_marching_trains_and_resumes_exactly(sim, tmp_path):
    star = str(sim / "particles.star")
    march = ["--freq-march", "2", "--march-start", "0.3", *SMALL]
    assert main(["train", star, "-o", str(tmp_path / "a"), "-n", "3", *march]) == 0
    assert main(["train", star, "-o", str(tmp_path / "b"), "-n", "1", *march]) == 0
    assert main(["train", star, "-o", str(tmp_path / "b"), "-n", "3", "--resume", *march]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "latents" / "epoch_003.npy"),
                                  np.load(tmp_path / "b" / "latents" / "epoch_003.npy"))
    import yaml
    cfg = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert cfg["model"]["freq_march"] == 2 and cfg["model"]["march_start"] == 0.3
    # the other families refuse the option with a one-line error
    assert main(["train", star, "-o", str(tmp_path / "c"), "--model", "opus-dsd", "--freq-march", "2",
                 "-n", "1", "--no-progress"]) == 2
