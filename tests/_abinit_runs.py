"""Shared checks of ``cryoscape abinit`` runs (tests/test_pose_search.py, tests/test_tilt_abinit.py)."""

from __future__ import annotations

import numpy as np
import torch

from cryoscape.cli.main import main
from cryoscape.models.poses import load_learned_poses


def assert_same_run(whole, part, epoch: int) -> None:
    """The poses, the weights and the search's state of epoch ``epoch`` of two runs are the same."""
    from cryoscape.rundir import load_checkpoint

    a, b = load_learned_poses(whole, epoch)[1], load_learned_poses(part, epoch)[1]
    np.testing.assert_allclose(a["rotations"], b["rotations"], atol=1e-5)
    np.testing.assert_allclose(a["shifts_angstrom"], b["shifts_angstrom"], atol=1e-5)
    wa = load_checkpoint(whole / "checkpoints" / f"epoch_{epoch:03d}.pt")
    wb = load_checkpoint(part / "checkpoints" / f"epoch_{epoch:03d}.pt")
    for k, v in wa["model"].items():
        torch.testing.assert_close(v, wb["model"][k])
    for key in ("history", "epoch_counts", "full_searches", "local_from", "images_seen"):
        assert wa["poses"][key] == wb["poses"][key], key


def assert_ctrl_c_resume_equals_whole_run(star: str, options: list[str], tmp_path, monkeypatch, stop_step: int,
                                          epoch: int) -> None:
    """``abinit star options`` run at once, and again stopped (as by Ctrl-C) after ``stop_step`` training steps and
    resumed: the same run at ``epoch``."""
    from cryoscape.train import engine as engine_module

    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(["abinit", star, "-o", str(whole), *options]) == 0
    calls = {"n": 0}
    real = engine_module.broadcast_flag

    def stop_after(value, info, device):
        calls["n"] += 1
        return real(value, info, device) or calls["n"] == stop_step

    monkeypatch.setattr(engine_module, "broadcast_flag", stop_after)
    assert main(["abinit", star, "-o", str(part), *options]) == 130
    monkeypatch.setattr(engine_module, "broadcast_flag", real)
    assert main(["abinit", star, "-o", str(part), "--resume", "--threads", "1", "--no-progress"]) == 0
    assert_same_run(whole, part, epoch)
