"""Rebuild a trained model from its run folder (``config.yaml`` + a checkpoint) alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cryoscape.config import RunConfig, load_config
from cryoscape.errors import InputError
from cryoscape.models.family import FamilyModel
from cryoscape.rundir import RunDir, load_checkpoint


@dataclass
class TrainedModel:
    """A trained model ready for inference (eval mode)."""

    run_dir: Path
    epoch: int
    config: RunConfig
    model: FamilyModel
    build: dict

    @property
    def zdim(self) -> int:
        return int(self.config.model.zdim)

    @property
    def D(self) -> int:
        return int(self.build["D"])

    @property
    def pixel_size_angstrom(self) -> float:
        return float(self.build["pixel_size_angstrom"])

    def generate_volumes(self, z: np.ndarray | None, batch_size: int = 1, progress: bool = False) -> np.ndarray:
        """Volumes ``(n, D, D, D)`` float32 at latents ``z`` ``(n, zdim)`` (``None``: homogeneous map)."""
        if z is None or self.zdim == 0:
            return self.model.generate_volumes(None)
        z = np.asarray(z, dtype=np.float32)
        if z.ndim == 1:
            z = z.reshape(1, -1) if z.size == self.zdim else z.reshape(-1, 1)
        if z.shape[1] != self.zdim:
            raise InputError(f"latents have {z.shape[1]} dimensions but the model has zdim {self.zdim}")
        out = []
        for start in tqdm(range(0, len(z), batch_size), desc="volumes", unit="batch", disable=not progress,
                          leave=False):
            out.append(self.model.generate_volumes(z[start : start + batch_size], batch_size=batch_size))
        return np.concatenate(out)


def load_run(run_dir: str | Path, epoch: int | None = None, device: str | torch.device = "cpu") -> TrainedModel:
    """Load the model of ``run_dir`` at ``epoch`` (default: ``best_epoch`` if present, else the last one)."""
    from cryoscape.models.registry import get_family

    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    config = load_config(run.config_path)
    epoch = run.resolve_epoch(epoch)
    path = run.checkpoint_path(epoch)
    state = load_checkpoint(path)
    if state["family"] != config.model.family:
        raise InputError(
            f"checkpoint is from model family {state['family']!r} but config.yaml says {config.model.family!r}", path
        )
    family = get_family(config.model.family)
    model = family.build_model(config, state["build"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0]
        raise InputError(f"checkpoint does not fit the model in config.yaml ({reason})", path) from exc
    model.to(device).eval()
    return TrainedModel(run_dir=run_dir, epoch=epoch, config=config, model=model, build=dict(state["build"]))
