"""Checkpoints (re-exported from :mod:`cryoscape.rundir`, which owns the run layout), and the checkpoint that
``train --load`` takes its weights from.
"""

from __future__ import annotations

from pathlib import Path

from cryoscape.errors import InputError
from cryoscape.rundir import RunDir, load_checkpoint, save_checkpoint

__all__ = ["checkpoint_dir", "epoch_checkpoint_path", "save_checkpoint", "load_checkpoint", "completed_epochs",
           "latest_checkpoint", "resolve_epoch", "checkpoint_to_load"]


def checkpoint_dir(run_dir: str | Path) -> Path:
    """``RUN/checkpoints``."""
    return RunDir(run_dir).checkpoint_dir


def epoch_checkpoint_path(run_dir: str | Path, epoch: int) -> Path:
    """``RUN/checkpoints/epoch_NNN.pt``."""
    return RunDir(run_dir).checkpoint_path(epoch)


def completed_epochs(run_dir: str | Path) -> list[int]:
    """Epoch numbers with a checkpoint, ascending."""
    return RunDir(run_dir).completed_epochs()


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: ``interrupted.pt`` if it is ahead of the last epoch checkpoint."""
    return RunDir(run_dir).latest_checkpoint()


def resolve_epoch(run_dir: str | Path, epoch: int | None) -> int:
    """``epoch`` if its checkpoint exists; the ``best_epoch`` file or the last epoch when ``None``."""
    return RunDir(run_dir).resolve_epoch(epoch)


def checkpoint_to_load(source: str | Path) -> Path:
    """The checkpoint file ``train --load`` takes its weights from: ``source`` itself if it is a file, else the
    checkpoint of the run folder ``source`` at its best epoch (``RUN/best_epoch``) or, without one, its last.
    """
    path = Path(source)
    if path.is_file():
        return path
    if not path.is_dir():
        raise InputError("--load: no such run folder or checkpoint file", path)
    run = RunDir(path)
    if not run.checkpoint_dir.is_dir():
        raise InputError("--load: not a run folder (no checkpoints/ in it) and not a checkpoint file", path)
    return run.checkpoint_path(run.resolve_epoch(None))
