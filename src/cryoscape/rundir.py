"""The run folder written by ``cryoscape train``: where each file is, and how epochs are chosen.

Layout (see ``docs/run-directory.md``)::

    RUN/config.yaml                     the run's configuration (cryoscape.config)
    RUN/checkpoints/epoch_NNN.pt        after a completed epoch; interrupted.pt when stopped mid-epoch
    RUN/latents/epoch_NNN.npy           posterior means of every particle at that epoch
    RUN/best_epoch                      the checkpointed epoch of lowest validation metric (written by the engine)
    RUN/indices.npy, RUN/split.npz      particles trained on (indices into the file) and the train/val split
    RUN/poses/epoch_NNN.npz             learned poses (runs that refine poses)

Checkpoints are written atomically and read with ``torch.load(weights_only=True)``. Each holds the model and
optimizer state, the torch RNG state, the position (epoch, step within the epoch), the metric history and what
is needed to rebuild the model (``build``). This module sits below ``models`` and ``train`` (it imports neither).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from cryoscape.errors import InputError, OutputError
from cryoscape.utils.atomic import atomic_path, atomic_write_text

_EPOCH_RE = re.compile(r"^epoch_(\d+)\.(pt|npy|npz)$")


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


def _epochs_in(folder: Path, suffix: str) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _EPOCH_RE.match(p.name)) and m.group(2) == suffix)


class RunDir:
    """A run folder: the paths of its files, its checkpoints and latents, its best epoch.

    Nothing is created by constructing one; writers create the folders they write into (atomically).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- paths -----------------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def latent_dir(self) -> Path:
        return self.path / "latents"

    @property
    def pose_dir(self) -> Path:
        return self.path / "poses"

    @property
    def interrupted_path(self) -> Path:
        return self.checkpoint_dir / "interrupted.pt"

    @property
    def best_epoch_path(self) -> Path:
        return self.path / "best_epoch"

    @property
    def indices_path(self) -> Path:
        return self.path / "indices.npy"

    @property
    def split_path(self) -> Path:
        return self.path / "split.npz"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.csv"

    def checkpoint_path(self, epoch: int) -> Path:
        """``RUN/checkpoints/epoch_NNN.pt``."""
        return self.checkpoint_dir / f"epoch_{int(epoch):03d}.pt"

    def latents_path(self, epoch: int) -> Path:
        """``RUN/latents/epoch_NNN.npy``."""
        return self.latent_dir / f"epoch_{int(epoch):03d}.npy"

    def learned_poses_path(self, epoch: int) -> Path:
        """Where the poses learned by the end of ``epoch`` are kept (runs that refine poses)."""
        return self.pose_dir / f"epoch_{int(epoch):03d}.npz"

    # -- checkpoints -------------------------------------------------------------------------------------------
    def completed_epochs(self) -> list[int]:
        """Epoch numbers with a checkpoint, ascending."""
        return _epochs_in(self.checkpoint_dir, "pt")

    def latent_epochs(self) -> list[int]:
        """Epoch numbers with saved latents, ascending."""
        return _epochs_in(self.latent_dir, "npy")

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint to resume from: ``interrupted.pt`` if it is ahead of the last epoch checkpoint."""
        epochs = self.completed_epochs()
        last = self.checkpoint_path(epochs[-1]) if epochs else None
        if self.interrupted_path.is_file():
            try:
                state = torch.load(self.interrupted_path, map_location="cpu", weights_only=True)
                if last is None or state.get("epoch", 0) >= epochs[-1]:
                    return self.interrupted_path
            except Exception:
                pass  # an unreadable interrupt file is ignored in favour of the last complete epoch
        return last

    def save_checkpoint(self, epoch: int, state: dict) -> Path:
        """Write the checkpoint of ``epoch`` atomically (:func:`save_checkpoint`); returns its path."""
        path = self.checkpoint_path(epoch)
        save_checkpoint(path, state)
        return path

    def load_checkpoint(self, epoch: int, map_location="cpu") -> dict:
        """The checkpoint of ``epoch`` (:func:`load_checkpoint`, ``weights_only``)."""
        return load_checkpoint(self.checkpoint_path(epoch), map_location)

    # -- best epoch and epoch resolution -------------------------------------------------------------------------
    def best_epoch(self) -> int | None:
        """The epoch in ``RUN/best_epoch`` (``None`` if there is no readable one)."""
        text = self.best_epoch_path.read_text().strip() if self.best_epoch_path.is_file() else ""
        return int(text) if text.isdigit() else None

    def write_best_epoch(self, epoch: int) -> None:
        """Write ``RUN/best_epoch`` atomically."""
        atomic_write_text(self.best_epoch_path, f"{int(epoch)}\n")

    def resolve_epoch(self, epoch: int | None = None, of: str = "checkpoints") -> int:
        """``epoch`` if its file exists; with ``None`` the best epoch (``RUN/best_epoch``) if its file exists,
        else the last one. ``of`` is ``"checkpoints"`` (a model to load) or ``"latents"`` (latents to analyse;
        a run whose checkpoints were removed can still be analysed).
        """
        if of == "checkpoints":
            available = self.completed_epochs()
            if not available:
                raise InputError("no checkpoints in this run folder (has training finished an epoch?)", self.path)
            where, what = self.path, "checkpoint"
        elif of == "latents":
            available = self.latent_epochs()
            if not available:
                raise InputError("no latents/epoch_NNN.npy found", self.path,
                                 "is this a `cryoscape train` output folder?")
            where, what = self.latent_dir, "latents"
        else:
            raise ValueError(f"resolve_epoch: of must be 'checkpoints' or 'latents', not {of!r}")
        if epoch is None:
            best = self.best_epoch()
            return best if best in available else available[-1]
        if int(epoch) not in available:
            raise InputError(f"no {what} for epoch {epoch} (available: {available[0]}..{available[-1]})", where)
        return int(epoch)

    # -- particles ------------------------------------------------------------------------------------------
    def write_indices(self, indices: np.ndarray) -> None:
        """Write ``RUN/indices.npy`` (int64) atomically."""
        with atomic_path(self.indices_path) as tmp:
            np.save(tmp, np.asarray(indices, dtype=np.int64))

    def read_indices(self) -> np.ndarray | None:
        """``RUN/indices.npy`` (int64 indices into the file's particles) or ``None`` without one."""
        if not self.indices_path.is_file():
            return None
        return np.load(self.indices_path, allow_pickle=False).astype(np.int64)

    def write_split(self, train: np.ndarray, val: np.ndarray) -> None:
        """Write ``RUN/split.npz`` (training and validation positions) atomically."""
        with atomic_path(self.split_path) as tmp:
            np.savez(tmp, train=train, val=val)

    def read_split(self) -> tuple[np.ndarray, np.ndarray]:
        """``(train positions, validation positions)`` of ``RUN/split.npz``."""
        if not self.split_path.is_file():
            raise InputError("no split.npz in this run folder", self.path)
        with np.load(self.split_path, allow_pickle=False) as f:
            return f["train"].astype(np.int64), f["val"].astype(np.int64)
