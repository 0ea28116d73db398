"""RUN/best_epoch is written by the engine for every family, and the epoch-time estimate is logged."""

import logging

import numpy as np
import torch

from _synthetic import two_state_particles
from cryoscape.data.fourier_pixels import FourierPixels
from cryoscape.data.particle_data import SliceParticleData
from cryoscape.models.cryodrgn import CryoDRGN
from cryoscape.train.checkpoint import completed_epochs, resolve_epoch
from cryoscape.train.engine import Engine, EngineSettings, format_duration, select_best_epoch, selection_metric
from cryoscape.train.run import split_positions


def _engine(run_dir, epochs, checkpoint_every=1, val_frac=0.125, family="cryodrgn", lr=3e-3):
    torch.manual_seed(0)
    parts, _, _ = two_state_particles(n=64, D=16, seed=1)
    data = SliceParticleData(parts, FourierPixels.create(16), progress=False)
    model = CryoDRGN(16, 2.0, zdim=2, enc_dim=32, enc_layers=1, dec_dim=32, dec_layers=2, feat_sigma=0.3)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    train, val = split_positions(len(data), val_frac, 0)
    settings = EngineSettings(epochs=epochs, batch_size=8, seed=0, progress=False, checkpoint_every=checkpoint_every)
    build = {"D": 16, "pixel_size_angstrom": 2.0, "norm_std": data.norm_std}
    return Engine(model, data, opt, settings, train, val, run_dir, torch.device("cpu"), build=build, family=family)


def _rule(val: dict, saved, tol=0.02):
    """The documented rule, written out: the latest saved epoch within 2 % of the lowest saved validation loss."""
    lowest = min(val[e] for e in saved)
    return max(e for e in saved if val[e] <= lowest + tol * abs(lowest))


def test_best_epoch_follows_the_rule_among_checkpointed_epochs(tmp_path):
    # a learning rate high enough that the validation loss does not fall monotonically
    history = _engine(tmp_path, epochs=5, checkpoint_every=2, lr=3e-2).fit()
    saved = completed_epochs(tmp_path)
    assert saved == [2, 4, 5]
    val = {row["epoch"]: row["val_loss"] for row in history}
    expected = _rule(val, saved)
    assert int((tmp_path / "best_epoch").read_text()) == expected
    assert resolve_epoch(tmp_path, None) == expected  # what `analyze` without --epoch uses


def test_every_epoch_checkpointed(tmp_path):
    history = _engine(tmp_path, epochs=4).fit()
    val = {row["epoch"]: row["val_loss"] for row in history}
    assert int((tmp_path / "best_epoch").read_text()) == _rule(val, [1, 2, 3, 4])
    # the rule itself, with the tolerance at 0: the lowest
    from cryoscape.train.engine import select_best_epoch as sel

    assert sel(history, range(1, 5), tolerance=0) == int(np.argmin(list(val.values()))) + 1


def test_no_validation_set_no_best_epoch_and_the_last_epoch_is_used(tmp_path):
    _engine(tmp_path, epochs=2, val_frac=0.0).fit()
    assert not (tmp_path / "best_epoch").exists()
    assert resolve_epoch(tmp_path, None) == 2


def test_selection_rule():
    hist = [{"epoch": 1, "val_loss": 3.0}, {"epoch": 2, "val_loss": 1.0}, {"epoch": 3, "val_loss": 1.0},
            {"epoch": 4, "val_loss": float("nan")}, {"epoch": 5, "val_loss": 2.0}]
    assert select_best_epoch(hist, range(1, 6)) == 3  # the latest of the tied minima
    assert select_best_epoch(hist, {1, 2, 5}) == 2  # only epochs with a checkpoint
    assert select_best_epoch(hist, {1, 5}) == 5
    assert select_best_epoch(hist, {4}) is None
    # within 2 % of the lowest counts as no worse: a levelled-off curve keeps its later epochs ...
    flat = [{"epoch": e, "val_loss": v} for e, v in enumerate([1.0, 0.80, 0.81, 0.815, 0.812], start=1)]
    assert select_best_epoch(flat, range(1, 6)) == 5 and select_best_epoch(flat, range(1, 6), tolerance=0) == 2
    # ... an over-fitting one goes back towards its minimum
    rising = [{"epoch": e, "val_loss": v} for e, v in enumerate([1.0, 0.80, 0.81, 0.85, 0.9], start=1)]
    assert select_best_epoch(rising, range(1, 6)) == 3
    assert select_best_epoch([{"epoch": 1, "train_loss": 1.0}], {1}) is None
    assert selection_metric("cryodrgn") == "val_loss" and selection_metric("tomodrgn") == "val_loss"
    assert selection_metric("opus-dsd") == "val_recon"  # its loss weights are annealed: not comparable
    assert selection_metric("") == "val_loss"


def test_epoch_time_estimate_logged_once(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="cryoscape"):
        _engine(tmp_path, epochs=2).fit()
    lines = [r.getMessage() for r in caplog.records if "per epoch (estimated after" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].startswith("epoch 1: ~") and "estimated after 5 batches" in lines[0]
    assert "for the 2 epochs to go" in lines[0]
    assert format_duration(45) == "45 s" and format_duration(780) == "13 min" and format_duration(9000) == "2.5 h"
