"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

``RUN/checkpoints/epoch_NNN.pt`` after a completed epoch; ``RUN/checkpoints/interrupted.pt`` when training is
stopped mid-epoch (Ctrl-C). Each holds the model and optimizer state, the torch RNG state, the position
(epoch, step within the epoch), the metric history and what is needed to rebuild the model (``build``).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from cryoscape.errors import InputError, OutputError
from cryoscape.utils.atomic import atomic_path

_EPOCH_RE = re.compile(r"^epoch_(\d+)\.pt$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def epoch_checkpoint_path(run_dir: str | Path, epoch: int) -> Path:
    return checkpoint_dir(run_dir) / f"epoch_{epoch:03d}.pt"


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Save ``state`` (tensors, numbers, strings, lists, dicts only) atomically.

    Raises
    ------
    OutputError
        The file could not be written (disk full, folder not writable); nothing is left under ``path`` and
        earlier checkpoints are untouched.
    """
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except (OSError, RuntimeError, OutputError) as exc:  # torch reports a failed write as a RuntimeError
        cause = exc.__cause__ if isinstance(exc, OutputError) and exc.__cause__ is not None else exc
        reason = (str(cause).splitlines() or [""])[0][:160]
        raise OutputError(f"{path}: could not write the checkpoint ({reason}); is the disk full? Earlier "
                          "checkpoints are intact: free some space and continue with --resume") from exc


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint safely (no arbitrary code); a truncated or foreign file gives a clear error."""
    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint not found", path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/foreign files
        reason = (str(exc).splitlines() or [""])[0].split(". ")[0][:120]
        raise InputError(
            f"cannot read checkpoint ({exc.__class__.__name__}: {reason})", path,
            hint="the file may be truncated or not a cryoscape checkpoint",
        ) from exc
    if not isinstance(state, dict) or "model" not in state or "family" not in state:
        raise InputError("not a cryoscape checkpoint", path)
    return state


def completed_epochs(run_dir: str | Path) -> list[int]:
    """Epoch numbers with a checkpoint, ascending."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    return sorted(int(m.group(1)) for p in d.iterdir() if (m := _EPOCH_RE.match(p.name)))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: ``interrupted.pt`` if it is ahead of the last epoch checkpoint."""
    epochs = completed_epochs(run_dir)
    interrupted = checkpoint_dir(run_dir) / "interrupted.pt"
    last = epoch_checkpoint_path(run_dir, epochs[-1]) if epochs else None
    if interrupted.is_file():
        try:
            state = torch.load(interrupted, map_location="cpu", weights_only=True)
            if last is None or state.get("epoch", 0) >= epochs[-1]:
                return interrupted
        except Exception:
            pass  # an unreadable interrupt file is ignored in favour of the last complete epoch
    return last


def resolve_epoch(run_dir: str | Path, epoch: int | None) -> int:
    """``epoch`` if its checkpoint exists; the ``best_epoch`` file or the last epoch when ``None``."""
    epochs = completed_epochs(run_dir)
    if not epochs:
        raise InputError("no checkpoints in this run folder (has training finished an epoch?)", run_dir)
    if epoch is None:
        best = Path(run_dir) / "best_epoch"
        if best.is_file():
            try:
                chosen = int(best.read_text().strip())
                if chosen in epochs:
                    return chosen
            except ValueError:
                pass
        return epochs[-1]
    if epoch not in epochs:
        raise InputError(f"no checkpoint for epoch {epoch} (available: {epochs[0]}..{epochs[-1]})", run_dir)
    return epoch


def checkpoint_to_load(source: str | Path) -> Path:
    """The checkpoint file ``train --load`` takes its weights from: ``source`` itself if it is a file, else the
    checkpoint of the run folder ``source`` at its best epoch (``RUN/best_epoch``) or, without one, its last."""
    path = Path(source)
    if path.is_file():
        return path
    if not path.is_dir():
        raise InputError("--load: no such run folder or checkpoint file", path)
    if not checkpoint_dir(path).is_dir():
        raise InputError("--load: not a run folder (no checkpoints/ in it) and not a checkpoint file", path)
    return epoch_checkpoint_path(path, resolve_epoch(path, None))
