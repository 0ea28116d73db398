"""A run folder for the explorer tests without training: latents, indices and config.yaml over a simulated input.

The run holds every other particle of the input (so run positions and input indices differ), with latents in
two well-separated groups; no checkpoint (maps cannot be generated from it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryoscape.cli.main import main
from cryoscape.config import DataConfig, RunConfig, save_config

N_INPUT = 40
ZDIM = 3


def make_fake_run(root: Path, fmt: str = "star") -> Path:
    """``root/run`` over ``root/sim/particles.{fmt}`` (40 particles, D=16); returns the run folder."""
    sim = root / "sim"
    args = ["simulate", "--preset", "discrete3", "-N", str(N_INPUT), "-D", "16", "--apix", "6", "--snr", "5",
            "--seed", "3", "-o", str(sim)]
    assert main(args + (["--cs"] if fmt == "cs" else [])) == 0
    run = root / "run"
    (run / "latents").mkdir(parents=True)
    indices = np.arange(0, N_INPUT, 2, dtype=np.int64)
    rng = np.random.default_rng(0)
    z = rng.normal(0, 0.1, size=(len(indices), ZDIM)).astype(np.float32)
    z[len(indices) // 2:, 0] += 3.0  # two groups along z1
    np.save(run / "latents" / "epoch_001.npy", z)
    np.save(run / "indices.npy", indices)
    save_config(RunConfig(data=DataConfig(particles=str(sim / f"particles.{fmt}"))), run / "config.yaml")
    return run


def snapshot(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its size (to check that nothing else was written)."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
