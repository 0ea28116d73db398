"""`train --resume` continues the recorded run; family defaults are the same from Python and the CLI; `--load`.

Interruptions are simulated in-process: the engine's stop flag (what Ctrl-C sets) is reported as raised after a
chosen number of steps, so the run stops mid-epoch exactly as after a Ctrl-C, writing ``interrupted.pt``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from _ctrl_c import stop_after
from cryoscape.cli.main import main
from cryoscape.config import DataConfig, ModelConfig, RunConfig, TrainConfig, load_config
from cryoscape.errors import InputError
from cryoscape.models.registry import FAMILIES, get_family, with_family_defaults
from cryoscape.train.checkpoint import completed_epochs, load_checkpoint, resolve_epoch
from cryoscape.train.run import resume_config, train

SMALL = ["--zdim", "2", "--enc-dim", "8", "--enc-layers", "1", "--dec-dim", "8", "--dec-layers", "1", "-b", "8",
         "--no-progress", "--threads", "1", "--device", "cpu", "--seed", "3"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    assert main(["simulate", "--preset", "discrete3", "-N", "24", "-D", "16", "--apix", "6", "--snr", "2",
                 "-o", str(out)]) == 0
    return out


def _train(sim, run, *extra, star="particles.star"):
    return main(["train", str(sim / star), "-o", str(run), *SMALL, *extra])




def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


# -- family defaults ---------------------------------------------------------------------------------------------
def test_family_defaults_live_in_the_families():
    assert (FAMILIES["cryodrgn"].default_batch_size, FAMILIES["cryodrgn"].default_lr) == (32, 1e-3)
    assert (FAMILIES["opus-dsd"].default_batch_size, FAMILIES["opus-dsd"].default_lr) == (72, 3e-4)
    assert (FAMILIES["tomodrgn"].default_batch_size, FAMILIES["tomodrgn"].default_lr) == (1, 2e-4)
    for name, family in FAMILIES.items():
        t = with_family_defaults(RunConfig(model=ModelConfig(family=name))).train
        assert (t.batch_size, t.lr) == (family.default_batch_size, family.default_lr)
    # values that are set are kept: a run written with explicit numbers (every run before this change) loads as is
    t = with_family_defaults(RunConfig(train=TrainConfig(batch_size=16, lr=1e-4))).train
    assert (t.batch_size, t.lr) == (16, 1e-4)


def test_cli_and_python_train_with_the_same_values(sim, tmp_path):
    """train(RunConfig()) from Python records the same batch size and lr as the command line without -b/--lr."""
    cli_run = tmp_path / "cli"
    b = SMALL.index("-b")
    args = SMALL[:b] + SMALL[b + 2:]  # no -b: the family's default
    assert main(["train", str(sim / "particles.star"), "-o", str(cli_run), "-n", "1", *args]) == 0
    config = RunConfig(data=DataConfig(particles=str(sim / "particles.star")),
                       model=ModelConfig(zdim=2, enc_dim=8, enc_layers=1, dec_dim=8, dec_layers=1),
                       train=TrainConfig(epochs=1, seed=3, device="cpu", threads=1))
    train(config, tmp_path / "py", progress=False)
    recorded = {name: yaml.safe_load((tmp_path / name / "config.yaml").read_text())["train"] for name in ("cli", "py")}
    assert (recorded["cli"]["batch_size"], recorded["cli"]["lr"]) == (32, 1e-3)  # resolved values are recorded
    assert recorded["py"] == recorded["cli"]


def test_an_old_config_with_numbers_keeps_them(sim, tmp_path):
    """A run recorded with lr 1e-4 and batch 16 (the defaults before) resumes with those values, not today's."""
    run = tmp_path / "run"
    assert _train(sim, run, "-n", "1", "--lr", "1e-4") == 0
    doc = yaml.safe_load((run / "config.yaml").read_text())
    doc["train"]["batch_size"] = 16
    (run / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "--resume", "-n", "2", "--no-progress"]) == 0
    t = load_config(run / "config.yaml").train
    assert (t.batch_size, t.lr, t.epochs) == (16, 1e-4, 2)
    assert load_checkpoint(run / "checkpoints" / "epoch_002.pt")["history"][-1]["lr"] == pytest.approx(1e-4)


# -- resume honours the recorded run -----------------------------------------------------------------------------
def test_resume_config_refuses_conflicts_and_allows_epochs_device_threads():
    recorded = RunConfig(data=DataConfig(particles="/data/a.star"), model=ModelConfig(zdim=8),
                         train=TrainConfig(epochs=24, batch_size=32, lr=1e-3, threads=1))
    recorded_dir = Path("run")
    same, changes = resume_config(recorded, None, recorded_dir, 21)
    assert same == recorded and changes == []
    requested = RunConfig(data=DataConfig(particles="/data/a.star", num_workers=2), model=ModelConfig(zdim=8),
                          train=TrainConfig(epochs=30, batch_size=32, lr=1e-3, threads=2, device="cpu"))
    config, changes = resume_config(recorded, requested, recorded_dir, 21)
    assert (config.train.epochs, config.train.device, config.train.threads, config.data.num_workers) == (
        30, "cpu", 2, 2)
    assert "-n/--epochs 24 -> 30" in changes and "--device auto -> cpu" in changes
    for bad, option, here, there in (
        (dict(model=ModelConfig(zdim=4)), "--zdim", "4", "8"),
        (dict(data=DataConfig(particles="/data/b.star")), "PARTICLES", "/data/b.star", "/data/a.star"),
        (dict(train=TrainConfig(epochs=24, batch_size=16, lr=1e-3, threads=1)), "-b/--batch-size", "16", "32"),
        (dict(train=TrainConfig(epochs=24, batch_size=32, lr=1e-4, threads=1)), "--lr", "0.0001", "0.001"),
        (dict(model=ModelConfig(family="opus-dsd", zdim=8)), "--model", "opus-dsd", "cryodrgn"),
        (dict(model=ModelConfig(zdim=8, freq_march=2.0)), "--freq-march", "2.0", "0.0"),  # a family option
    ):
        request = RunConfig(**{"data": recorded.data, "model": recorded.model, "train": recorded.train, **bad})
        with pytest.raises(InputError, match=re.escape(f"{option} is {here} here but {there} in the run's")):
            resume_config(recorded, request, recorded_dir, 21)
    with pytest.raises(InputError, match="is not more than the 21 epochs"):
        resume_config(recorded, RunConfig(data=recorded.data, model=recorded.model,
                                          train=TrainConfig(epochs=20, batch_size=32, lr=1e-3)), recorded_dir, 21)
    with pytest.raises(InputError, match="nothing to resume: the run has completed its 24 epochs"):
        resume_config(recorded, None, recorded_dir, 24)


def test_resume_continues_to_the_recorded_epochs(sim, tmp_path):
    """A run recorded with -n 4 whose last two epochs were lost resumes to epoch 4 without -n (not to 20)."""
    run = tmp_path / "run"
    assert _train(sim, run, "-n", "4") == 0
    for e in (3, 4):
        (run / "checkpoints" / f"epoch_{e:03d}.pt").unlink()
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "--resume", "--no-progress"]) == 0
    assert completed_epochs(run) == [1, 2, 3, 4]
    assert "after epoch 2; training to epoch 4" in (run / "log.txt").read_text()
    assert load_config(run / "config.yaml").train.epochs == 4
    # from Python: train(None, RUN, resume=True) continues the recorded run too
    (run / "checkpoints" / "epoch_004.pt").unlink()
    train(None, run, resume=True, progress=False)
    assert completed_epochs(run) == [1, 2, 3, 4]
    assert "after epoch 3; training to epoch 4" in (run / "log.txt").read_text()


def test_resume_refuses_other_particles_or_zdim_in_one_line(sim, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(sim, run, "-n", "1") == 0
    other = tmp_path / "other.star"
    shutil.copy(sim / "particles.star", other)
    before = (run / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["train", str(other), "-o", str(run), "--resume", "-n", "2", "--no-progress"]) == 2
    line = _one_line_error(capsys)
    assert f"PARTICLES is {other} here but {sim / 'particles.star'}" in line
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "--resume", "-n", "2", "--zdim", "3"]) == 2
    assert "--zdim is 3 here but 2 in the run's config.yaml" in _one_line_error(capsys)
    # an option repeated with its recorded value is not a conflict; a finished run is not resumed silently
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "--resume", "--zdim", "2"]) == 2
    assert "nothing to resume: the run has completed its 1 epochs" in _one_line_error(capsys)
    assert (run / "config.yaml").read_text() == before and completed_epochs(run) == [1]


def test_interrupted_in_epoch_1_resumes_like_an_uninterrupted_run(sim, tmp_path, monkeypatch, capsys):
    """-n 4 stopped in epoch 1 (Ctrl-C): resume goes to epoch 4 with the same columns and the same latents as a
    run that was never stopped; the resume message counts as the stop message does."""
    reference = tmp_path / "reference"
    assert _train(sim, reference, "-n", "4") == 0
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        stop_after(m, 2)
        assert _train(sim, run, "-n", "4") == 130
    stop = capsys.readouterr().out
    where = re.search(r"training stopped at (epoch 1, step 2/(\d+))", stop)
    assert where, stop
    assert (run / "checkpoints" / "interrupted.pt").is_file() and completed_epochs(run) == []
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "--resume", "--no-progress"]) == 0
    assert f"at {where.group(1)}; training to epoch 4" in (run / "log.txt").read_text()
    assert completed_epochs(run) == [1, 2, 3, 4] and not (run / "checkpoints" / "interrupted.pt").exists()
    ours, theirs = (np.genfromtxt(r / "metrics.csv", delimiter=",", names=True) for r in (run, reference))
    assert ours.dtype.names == theirs.dtype.names and "train__seconds" not in ours.dtype.names
    np.testing.assert_allclose(ours["train_loss"], theirs["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(np.load(run / "latents" / "epoch_004.npy"),
                               np.load(reference / "latents" / "epoch_004.npy"), rtol=1e-5, atol=1e-6)


def test_tutorial_n50_ctrl_c_resume(sim, tmp_path, monkeypatch, capsys):
    """The tutorial's sequence: `train ... -n 50`, Ctrl-C in the second epoch, the same command with --resume."""
    run = tmp_path / "run"
    command = ["train", str(sim / "particles.star"), "-o", str(run), "-n", "50", *SMALL]
    with monkeypatch.context() as m:
        stop_after(m, 4)  # 3 steps per epoch: the first step of epoch 2
        assert main(command) == 130
    assert "training stopped at epoch 2, step 1/3" in capsys.readouterr().out
    assert completed_epochs(run) == [1]
    assert main([*command, "--resume"]) == 0
    assert "at epoch 2, step 1/3; training to epoch 50" in (run / "log.txt").read_text()
    assert completed_epochs(run) == list(range(1, 51))
    rows = np.genfromtxt(run / "metrics.csv", delimiter=",", names=True)
    assert list(rows["epoch"]) == list(range(1, 51)) and "train__seconds" not in rows.dtype.names


# -- --load ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def source_run(sim, tmp_path_factory):
    run = tmp_path_factory.mktemp("load") / "source"
    assert _train(sim, run, "-n", "2") == 0
    return run


def test_load_starts_from_the_weights_with_a_fresh_optimizer(sim, source_run, tmp_path):
    keep = tmp_path / "keep.npy"
    np.save(keep, np.arange(0, 24, 2))  # another particle set: its own normalisation
    run = tmp_path / "run"
    # a learning rate so small that one epoch leaves the loaded weights as they were
    assert _train(sim, run, "-n", "1", "--lr", "1e-12", "--ind", str(keep), "--load", str(source_run)) == 0
    source_ckpt = source_run / "checkpoints" / f"epoch_{resolve_epoch(source_run, None):03d}.pt"  # best, else last
    assert load_config(run / "config.yaml").train.load == str(source_ckpt.resolve())
    theirs, ours = load_checkpoint(source_ckpt), load_checkpoint(run / "checkpoints" / "epoch_001.pt")
    assert ours["epoch"] == 1 and len(ours["history"]) == 1
    for key in get_family("cryodrgn").data_state:  # the new data's own values
        assert float(ours["model"][key]) == pytest.approx(ours["build"][key])
    assert ours["build"]["norm_std"] != pytest.approx(theirs["build"]["norm_std"])
    learnt = [k for k in theirs["model"] if k not in get_family("cryodrgn").data_state]
    for key in learnt:
        torch.testing.assert_close(ours["model"][key], theirs["model"][key], atol=1e-6, rtol=0)
    # without --load the same run starts elsewhere (so the equality above is not trivial)
    fresh = tmp_path / "fresh"
    assert _train(sim, fresh, "-n", "1", "--lr", "1e-12", "--ind", str(keep)) == 0
    other = load_checkpoint(fresh / "checkpoints" / "epoch_001.pt")["model"]
    assert any(not torch.allclose(other[k], theirs["model"][k], atol=1e-3) for k in learnt)
    # fresh optimizer: Adam counted only this run's steps (2 of batch 8 over 11 training particles)
    steps = {int(s["step"]) for s in ours["optimizer"]["state"].values()}
    assert steps == {2}


def test_load_refuses_another_architecture_or_family(sim, source_run, tmp_path, capsys):
    assert _train(sim, tmp_path / "a", "-n", "1", "--zdim", "3", "--load", str(source_run)) == 2
    assert "--load: the run there has --zdim 2, this run 3" in _one_line_error(capsys)
    # a bare checkpoint file (no config.yaml beside it): the parameter shapes are compared
    bare = tmp_path / "bare.pt"
    shutil.copy(source_run / "checkpoints" / "epoch_001.pt", bare)
    assert main(["train", str(sim / "particles.star"), "-o", str(tmp_path / "b"), *SMALL[2:], "--zdim", "2",
                 "--enc-dim", "16", "-n", "1", "--load", str(bare)]) == 2
    assert re.search(r"--load: the checkpoint's model has another architecture \(encoder\S*: \(8,[^)]*\) there, "
                     r"\(16,[^)]*\) here\)", _one_line_error(capsys))
    state = load_checkpoint(bare)
    state["family"] = "tomodrgn"
    torch.save(state, bare)
    assert _train(sim, tmp_path / "c", "-n", "1", "--load", str(bare)) == 2
    assert "--load: the checkpoint holds a tomodrgn model, this run trains cryodrgn" in _one_line_error(capsys)
    assert _train(sim, tmp_path / "d", "-n", "1", "--load", str(tmp_path / "missing")) == 2
    assert "no such run folder or checkpoint file" in _one_line_error(capsys)
    assert not (tmp_path / "a" / "checkpoints").exists() and not (tmp_path / "c" / "checkpoints").exists()


def test_a_loaded_run_resumes_with_the_same_command_and_without_its_source(sim, source_run, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(source_run, source)
    run = tmp_path / "run"
    assert _train(sim, run, "-n", "1", "--load", str(source)) == 0
    # the original command repeated with --resume (its --load names the source run folder) is not a conflict
    assert _train(sim, run, "-n", "2", "--load", str(source), "--resume") == 0
    # the source is not needed any more once the run has its own checkpoints
    shutil.rmtree(source)
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "--resume", "-n", "3", "--no-progress"]) == 0
    assert completed_epochs(run) == [1, 2, 3]
