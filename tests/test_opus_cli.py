"""End to end through the CLI: simulate -> train --model opus-dsd -> best epoch -> resume -> eval-images -> eval-vol."""

import argparse
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from cryoscape.cli import train as train_cli
from cryoscape.cli.main import main
from cryoscape.errors import InputError
from cryoscape.io.mrc import read_mrc
from cryoscape.models.loading import load_run
from cryoscape.train.checkpoint import load_checkpoint

SMALL = ["--model", "opus-dsd", "--zdim", "2", "--channel-scale", "0.0625", "-b", "8", "--knn", "4",
         "--kfarthest", "8", "--n-samples", "64", "--lr", "1e-3", "--no-progress", "--seed", "3"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    assert main(["simulate", "--preset", "discrete3", "-N", "60", "-D", "16", "--apix", "6", "--snr", "2",
                 "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def run(sim, tmp_path_factory):
    out = tmp_path_factory.mktemp("opus") / "run"
    assert main(["train", str(sim / "particles.star"), "-o", str(out), "-n", "2", *SMALL]) == 0
    return out


def test_train_writes_run_with_best_epoch(run):
    rows = np.genfromtxt(run / "metrics.csv", delimiter=",", names=True)
    for key in ("train_recon", "train_prior", "train_kl", "train_tv", "train_l1", "val_recon", "lr"):
        assert key in rows.dtype.names
    assert np.all(np.isfinite(rows["val_recon"]))
    best = int((run / "best_epoch").read_text())
    lowest = rows["val_recon"].min()  # the latest epoch within 2 % of the lowest validation error
    assert best == int(rows["epoch"][rows["val_recon"] <= lowest + 0.02 * abs(lowest)].max())
    np.testing.assert_allclose(rows["lr"], [1e-3 * 0.95, 1e-3 * 0.95**2])  # decayed by 0.95 per epoch
    assert np.load(run / "latents" / "epoch_002.npy").shape == (60, 2)
    state = load_checkpoint(run / "checkpoints" / "epoch_002.pt")
    assert state["family"] == "opus-dsd" and state["build"]["n_particles"] == 60
    bank_classes = state["model"]["bank.classes"]
    split = np.load(run / "split.npz")
    assert bool((bank_classes[split["train"]] >= 0).all())  # every training particle visited
    assert bool((bank_classes[split["val"]] == -1).all())  # validation particles never trained on
    assert int(state["model"]["images_seen"]) == 2 * len(split["train"])
    trained = load_run(run)
    assert trained.epoch == best and trained.D == 16 and trained.zdim == 2


def test_eval_images_and_eval_vol(run, tmp_path):
    best = int((run / "best_epoch").read_text())
    z = tmp_path / "z.npy"
    assert main(["eval-images", str(run), "-o", str(z), "--device", "cpu"]) == 0
    np.testing.assert_allclose(np.load(z), np.load(run / "latents" / f"epoch_{best:03d}.npy"), atol=1e-5)
    vol = tmp_path / "vol.mrc"
    assert main(["eval-vol", str(run), "--z", "0.5", "-0.5", "-o", str(vol), "--device", "cpu"]) == 0
    data, info = read_mrc(vol)
    assert data.shape == (16, 16, 16) and info.voxel_size_angstrom == pytest.approx(6.0)
    assert np.all(np.isfinite(data)) and float(np.abs(data).max()) > 0
    np.savetxt(tmp_path / "z.txt", np.load(z)[:3])
    assert main(["eval-vol", str(run), "--zfile", str(tmp_path / "z.txt"), "-o", str(tmp_path / "maps"),
                 "--device", "cpu"]) == 0
    assert read_mrc(tmp_path / "maps" / "vol_003.mrc")[0].shape == (16, 16, 16)


def test_resume_repeats_an_uninterrupted_run(sim, run, tmp_path):
    part = tmp_path / "part"
    assert main(["train", str(sim / "particles.star"), "-o", str(part), "-n", "1", *SMALL]) == 0
    assert main(["train", str(sim / "particles.star"), "-o", str(part), "-n", "2", "--resume", *SMALL]) == 0
    np.testing.assert_allclose(np.load(part / "latents" / "epoch_002.npy"),
                               np.load(run / "latents" / "epoch_002.npy"), atol=1e-5)
    a = load_checkpoint(part / "checkpoints" / "epoch_002.pt")["model"]
    b = load_checkpoint(run / "checkpoints" / "epoch_002.pt")["model"]
    torch.testing.assert_close(a["bank.codes"], b["bank.codes"], atol=1e-5, rtol=1e-5)


def test_cli_defaults_and_mask_option(tmp_path):
    from cryoscape.models.registry import with_family_defaults

    p = argparse.ArgumentParser()
    train_cli.add_args(p)
    cfg = with_family_defaults(train_cli.config_from_args(p.parse_args(["x.star", "-o", "r", "--model", "opus-dsd"])))
    t, m = cfg.train, cfg.model
    assert (t.batch_size, t.lr, m.lamb, m.knn, m.kfarthest, m.n_samples, m.momentum, m.lr_decay) == (
        72, 3e-4, 0.5, 128, 512, 12800, 0.7, 0.95)
    assert t.beta is None and m.templateres is None and m.channel_scale is None  # chosen for the device
    cryodrgn = with_family_defaults(train_cli.config_from_args(p.parse_args(["x.star", "-o", "r"])))
    assert (cryodrgn.train.batch_size, cryodrgn.train.lr) == (32, 1e-3)
    with pytest.raises(InputError, match="mask file not found"):
        train_cli.config_from_args(p.parse_args(["x.star", "-o", "r", "--mask", str(tmp_path / "no.mrc")]))
    with pytest.raises(InputError, match="multiple of 16"):
        train_cli.config_from_args(p.parse_args(["x.star", "-o", "r", "--templateres", "40"]))


def test_default_channel_scale_follows_the_device(sim, tmp_path, caplog):
    import logging

    import yaml

    from cryoscape.config import ModelConfig, RunConfig, load_config, save_config
    from cryoscape.models.opus_dsd import OpusDSDFamily

    fam = OpusDSDFamily()
    cfg = RunConfig(model=ModelConfig(family="opus-dsd"))
    assert fam.resolve_defaults(cfg, torch.device("cpu")).model.channel_scale == 0.25
    assert fam.resolve_defaults(cfg, torch.device("cuda", 0)).model.channel_scale == 1.0
    given = RunConfig(model=ModelConfig(family="opus-dsd", channel_scale=0.5))
    assert fam.resolve_defaults(given, torch.device("cpu")).model.channel_scale == 0.5
    # a config written before the default became device-dependent (channel_scale 1.0) still loads as 1.0
    save_config(RunConfig(model=ModelConfig(family="opus-dsd", channel_scale=1.0)), tmp_path / "old.yaml")
    assert load_config(tmp_path / "old.yaml").model.channel_scale == 1.0
    # training on the CPU without --channel-scale: 0.25 used, logged and recorded in config.yaml
    small = [a for a in SMALL if a not in ("--channel-scale", "0.0625")]
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="cryoscape"):
        assert main(["train", str(sim / "particles.star"), "-o", str(out), "-n", "1", "--device", "cpu",
                     "--val-frac", "0", *small]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["channel_scale"] == 0.25
    assert any("--channel-scale 0.25 on cpu" in r.getMessage() for r in caplog.records)
    assert load_run(out).model.encoder is not None


@pytest.mark.slow
def test_ddp_two_processes_share_the_memory_bank(sim, tmp_path):
    """With 2 gloo processes every training particle reaches the (rank-0) memory bank exactly once per epoch."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "cryoscape",
           "train", str(sim / "particles.star"), "-o", str(out), "-n", "1", "--threads", "1", *SMALL]
    result = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    state = load_checkpoint(out / "checkpoints" / "epoch_001.pt")["model"]
    split = np.load(out / "split.npz")
    assert bool((state["bank.classes"][split["train"]] >= 0).all())
    assert int(state["images_seen"]) == len(split["train"])
    assert (out / "best_epoch").read_text().strip() == "1"
