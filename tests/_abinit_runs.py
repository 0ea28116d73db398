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
    from _ctrl_c import stop_after
    from cryoscape.train import engine as engine_module

    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(["abinit", star, "-o", str(whole), *options]) == 0
    real = stop_after(monkeypatch, stop_step)
    assert main(["abinit", star, "-o", str(part), *options]) == 130
    monkeypatch.setattr(engine_module, "broadcast_flag", real)
    assert main(["abinit", star, "-o", str(part), "--resume", "--threads", "1", "--no-progress"]) == 0
    assert_same_run(whole, part, epoch)


def blobs(D: int, seed: int = 3) -> np.ndarray:
    """An asymmetric volume: 40 Gaussian 'pseudo-atoms' of 1 px (D/32) radius and random weights inside an
    ellipsoid of semi-axes 8, 6, 5 px (D/32); as a protein, it has signal at the frequencies the search compares
    (a few large blobs would only show an ellipsoid there)."""
    rng = np.random.default_rng(seed)
    x = np.arange(D) - D // 2
    Z, Y, X = np.meshgrid(x, x, x, indexing="ij")
    s = D / 32
    pts = rng.uniform(-1, 1, (400, 3))
    pts = pts[(pts**2).sum(1) < 1][:40] * np.array([8, 6, 5]) * s
    vol = np.zeros((D, D, D))
    for c, a in zip(pts, rng.uniform(0.5, 1.5, len(pts)), strict=True):
        vol += a * np.exp(-((X - c[0]) ** 2 + (Y - c[1]) ** 2 + (Z - c[2]) ** 2) / (2 * s**2))
    return vol.astype(np.float32)


def tiny_cryodrgn(zdim: int, n_images: int):
    """A small eval-mode heterogeneous CryoDRGN (D=16, seeded) and ``n_images`` random images and rotations:
    ``(model, y (n, P), rot (n, 3, 3))``."""
    from cryoscape.models.cryodrgn import CryoDRGN
    from cryoscape.models.pose_search import random_rotations

    torch.manual_seed(0)
    model = CryoDRGN(D=16, pixel_size_angstrom=4.0, zdim=zdim, enc_dim=16, enc_layers=1, dec_dim=32, dec_layers=2,
                     pe_dim=8, norm_std=1.0)
    model.eval()
    y = torch.randn(n_images, model.pixels.n_pixels)
    rot = torch.tensor(random_rotations(n_images, 1), dtype=torch.float32)
    return model, y, rot
