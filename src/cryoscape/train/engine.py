"""The training loop shared by every model family.

A family supplies a :class:`cryoscape.models.family.FamilyModel` whose ``forward(batch) -> dict`` returns
``"loss"`` plus named terms (``latent_means(batch) -> (B, zdim)`` when ``zdim > 0``), and a data provider with
``batch(indices)``, ``__len__`` and ``lazy``.
The engine owns everything else: epochs, shuffling, validation, AMP, DDP, checkpoints, resume, Ctrl-C,
progress and logs. Each epoch's shuffling and random draws are seeded from ``(seed, epoch)``, so a resumed run
repeats an uninterrupted one exactly (on CPU).
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cryoscape.data.batches import default_batch_plan, epoch_order, split_batches  # noqa: F401 (re-exported)
from cryoscape.errors import CryoscapeError
from cryoscape.models.family import FamilyModel
from cryoscape.rundir import RunDir, save_checkpoint
from cryoscape.train.distributed import DistInfo, all_gather_rows, all_reduce_sum, barrier, broadcast_flag
from cryoscape.train.prefetch import prefetched
from cryoscape.utils.atomic import atomic_path, atomic_write_text

log = logging.getLogger("cryoscape")
_SINGLE_PROCESS = DistInfo()  # the default place in the job (frozen, so one instance serves every engine)


class TrainingInterrupted(CryoscapeError):
    """Training stopped on request; a checkpoint was written."""


@dataclass
class EngineSettings:
    """What the loop needs to know (a view of ``TrainConfig``)."""

    epochs: int
    batch_size: int
    seed: int = 0
    amp: bool = False
    checkpoint_every: int = 1
    progress: bool = True


@dataclass
class LoopState:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0  # completed epochs
    step: int = 0  # completed steps of the epoch in progress (mid-epoch checkpoints only)
    history: list = field(default_factory=list)
    partial: dict = field(default_factory=dict)  # running sums of the epoch in progress


_batches = split_batches  # (kept under the engine's old names)


def amp_dtype(device: torch.device):
    """Mixed-precision type for ``--amp``: bfloat16 where supported (CUDA, CPUs with AVX-512 BF16/AMX), else
    float16 on CUDA; ``None`` (float32) on CPUs without fast bfloat16.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    log.warning("--amp: this CPU has no fast bfloat16; training in float32")
    return None


ESTIMATE_AFTER_BATCHES = 5  # the epoch-time estimate is logged after this many batches ...
ESTIMATE_AFTER_SECONDS = 10.0  # ... or earlier, once two batches or more have taken this long


def selection_metric(family: str) -> str:
    """The validation column whose minimum chooses ``RUN/best_epoch``: the family's ``selection_metric``
    (``val_loss`` by default; OPUS-DSD: ``val_recon``, its loss weights being annealed); ``val_loss`` for an
    unknown family.
    """
    if family:
        from cryoscape.models.registry import get_family

        with contextlib.suppress(CryoscapeError):
            return str(get_family(family).selection_metric)
    return "val_loss"


# A validation loss within this fraction of its minimum counts as no worse (see select_best_epoch).
BEST_EPOCH_TOLERANCE = 0.02


def select_best_epoch(history: list[dict], eligible, key: str = "val_loss",
                      tolerance: float = BEST_EPOCH_TOLERANCE) -> int | None:
    """The best epoch: the latest epoch in ``eligible`` whose finite ``key`` is within ``tolerance`` (a fraction)
    of the lowest ``key`` among them; ``None`` if there is none.

    The tolerance keeps the later epochs when the validation loss has only levelled off: at the signal-to-noise
    ratio of particle images the validation loss is mostly noise, and the latent space keeps improving after the
    loss has flattened (the demo: its validation loss is lowest at epoch 8 and 1.6 % higher at epoch 20, while
    its k-means clusters sort the subunit 65 % correctly at epoch 8 and 95 % at epochs 16-20). A rise of more than
    ``tolerance`` (over-fitting) moves the choice back towards the minimum. ``tolerance=0``: the lowest (the
    latest on ties).
    """
    eligible = {int(e) for e in eligible}
    rows = [(int(r["epoch"]), float(r[key])) for r in history
            if int(r["epoch"]) in eligible and r.get(key) is not None and np.isfinite(r[key])]
    if not rows:
        return None
    lowest = min(v for _, v in rows)
    limit = lowest + max(0.0, tolerance) * abs(lowest)
    return max(e for e, v in rows if v <= limit)


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"13 min"``, ``"2.1 h"``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Engine:
    """Runs training for one model on one data provider.

    Parameters
    ----------
    model : the family's module (unwrapped); it is moved to ``device`` and wrapped in DDP when distributed.
    data : provider with ``batch(indices)`` and ``__len__``.
    optimizer : built on ``model.parameters()``.
    train_positions, val_positions : positions into ``data``.
    run_dir : the run folder (written by the main process only).
    build : what ``load_run`` needs to rebuild the model (saved in checkpoints).
    scheduler : optional per-epoch learning-rate scheduler.
    epoch_end : optional hook ``(engine, epoch, metrics) -> None``, called after each epoch (before its checkpoint).
    after_step : optional hook ``(model, gather_rows) -> None``, called on every process after each training step;
        ``gather_rows(*tensors)`` concatenates tensors over the processes (the engine runs the collectives).
    batch_plan : optional ``(train_positions, seed, epoch, batch_size, info) -> list of index arrays``: this
        process's batches of an epoch (e.g. one projection class per batch); it must be a pure function of its
        arguments so that resume is exact. Default: a seeded shuffle split evenly over processes.

    The engine calls the model's ``set_training_progress(epochs_done: float)`` before every training step with the
    fractional number of epochs completed (a pure function of epoch and step, so resume is exact).

    After every checkpointed epoch with a validation set the engine writes ``RUN/best_epoch``: the latest
    checkpointed epoch whose :func:`selection_metric` (``val_loss`` unless the family names another column) is
    within :data:`BEST_EPOCH_TOLERANCE` of the lowest (:func:`select_best_epoch`). During the
    first epoch it runs it logs an estimate of the epoch's duration.
    """

    def __init__(self, model: FamilyModel, data, optimizer: torch.optim.Optimizer, settings: EngineSettings,
                 train_positions: np.ndarray, val_positions: np.ndarray, run_dir: str | Path, device: torch.device,
                 info: DistInfo = _SINGLE_PROCESS, build: dict | None = None, family: str = "",
                 scheduler=None, epoch_end=None, batch_plan=None, after_step=None, pose_refiner=None):
        self.model = model.to(device)
        self.data = data
        self.optimizer = optimizer
        self.settings = settings
        self.train_positions = np.asarray(train_positions, dtype=np.int64)
        self.val_positions = np.asarray(val_positions, dtype=np.int64)
        self.run_dir = Path(run_dir)
        self.run = RunDir(run_dir)
        self.device = device
        self.info = info
        self.build = build or {}
        self.family = family
        self.scheduler = scheduler
        self.epoch_end = epoch_end
        self.after_step = after_step
        self.batch_plan = batch_plan or default_batch_plan
        self.pose_refiner = pose_refiner  # train --refine-poses (models.poses.PoseRefiner)
        self.state = LoopState()
        self._stop_requested = False
        self.selection_metric = selection_metric(family)
        self._estimated = False  # the epoch-time estimate is logged once per fit()
        if info.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.net: nn.Module = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        else:
            self.net = self.model
        self.amp_dtype = amp_dtype(device) if settings.amp else None
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything a checkpoint needs to resume: model, optimizer, scheduler, loop state, RNG, poses."""
        s = self.state
        return {
            "family": self.family,
            "build": self.build,
            "epoch": s.epoch,
            "step": s.step,
            "history": s.history,
            "partial": s.partial,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "torch_rng": torch.get_rng_state(),
            **({"poses": self.pose_refiner.state_dict()} if self.pose_refiner is not None else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        if self.pose_refiner is not None and "poses" in state:
            self.pose_refiner.load_state_dict(state["poses"])
        self.state = LoopState(epoch=int(state["epoch"]), step=int(state.get("step", 0)),
                               history=list(state.get("history", [])), partial=dict(state.get("partial", {})))
        if self.state.step:
            torch.set_rng_state(state["torch_rng"])

    # -- the loop ----------------------------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _step(self, batch: dict) -> dict[str, float]:
        self.net.train()
        refine = self.pose_refiner is not None and self.pose_refiner.active(self.state.epoch + 1)
        if refine:
            # the batch's pose corrections: differentiable (sgd), or first one local step each (local)
            batch = self.pose_refiner.prepare(batch, self.model, self.gather_rows)
        with self._autocast():
            terms = self.net(batch)
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise CryoscapeError(
                f"the loss became {loss.item()} at epoch {self.state.epoch + 1}; lower --lr, check the input images, "
                "or analyse an earlier epoch"
            )
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        if refine:
            unscale = 1.0 / float(self.scaler.get_scale()) if self.scaler is not None else 1.0
            self.pose_refiner.step(self.gather_rows, self.info.world_size, unscale)
        if self.after_step is not None:
            self.after_step(self.model, self.gather_rows)
        values = {k: float(v.detach()) for k, v in terms.items()}
        if refine:
            self.pose_refiner.observe(values)
        return values

    def gather_rows(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``tensors`` concatenated over the processes (rank order); as given when single-process."""
        return all_gather_rows(self.info, *tensors)

    @torch.no_grad()
    def evaluate(self, positions: np.ndarray) -> dict[str, float]:
        """Mean loss terms over ``positions`` in eval mode (posterior means, no sampling)."""
        self.model.eval()
        sums: dict[str, float] = {}
        count = 0
        batches = _batches(positions, self.settings.batch_size, self.info)
        for idx, batch in zip(batches, prefetched(batches, self.data.batch, _is_lazy(self.data)), strict=True):
            with self._autocast():
                terms = self.model(batch)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(idx)
            count += len(idx)
        return self._reduce(sums, count)

    def _reduce(self, sums: dict[str, float], count: int) -> dict[str, float]:
        keys = sorted(sums)
        vec = torch.tensor([sums[k] for k in keys] + [float(count)], dtype=torch.float64)
        if self.info.enabled:
            vec = all_reduce_sum(vec.to(self.device), self.info).cpu()
        total = vec[-1].item()
        return {k: (vec[i].item() / total if total else float("nan")) for i, k in enumerate(keys)}

    def request_stop(self, *_args) -> None:
        """Finish the current step, write a checkpoint and stop (installed as the SIGINT handler)."""
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True
        log.warning("\nstopping after this step (press Ctrl-C again to abort without a checkpoint)")

    def fit(self) -> list[dict]:
        """Train until ``settings.epochs``; returns the metric history (one dict per epoch)."""
        previous = None
        if self.info.is_main:
            with contextlib.suppress(ValueError):  # not in the main thread
                previous = signal.signal(signal.SIGINT, self.request_stop)
        try:
            while self.state.epoch < self.settings.epochs:
                self._run_epoch(self.state.epoch + 1)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        return self.state.history

    def _run_epoch(self, epoch: int) -> None:
        s = self.settings
        batches = self.batch_plan(self.train_positions, s.seed, epoch, s.batch_size, self.info)
        first = self.state.step
        if first == 0:
            torch.manual_seed(s.seed * 100003 + epoch * 1009 + self.info.rank)
            self.state.partial = {}
        sums = {k: v for k, v in self.state.partial.items() if not k.startswith("_")}  # not _count, _seconds
        count = int(self.state.partial.get("_count", 0))
        t0 = time.perf_counter() - float(self.state.partial.get("_seconds", 0.0))
        bar = tqdm(total=len(batches), initial=first, desc=f"epoch {epoch}/{s.epochs}", unit="batch",
                   disable=not (s.progress and self.info.is_main), leave=False, dynamic_ncols=True)
        upcoming = prefetched(batches[first:], self.data.batch, _is_lazy(self.data))
        t_start = time.perf_counter()
        for step, batch in zip(range(first, len(batches)), upcoming, strict=True):
            idx = batches[step]
            # e.g. frequency marching: a schedule over (fractional) epochs (FamilyModel: nothing by default)
            self.model.set_training_progress(epoch - 1 + step / len(batches))
            terms = self._step(batch)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx)
            count += len(idx)
            self.state.step = step + 1
            bar.update(1)
            if not self._estimated:
                self._estimate_epoch_time(epoch, step + 1 - first, time.perf_counter() - t_start, len(batches))
            if step % 10 == 0:
                bar.set_postfix(loss=f"{sums['loss'] / max(count, 1):.4g}")
            if broadcast_flag(self._stop_requested, self.info, self.device) and step + 1 < len(batches):
                self.state.partial = {**sums, "_count": count, "_seconds": time.perf_counter() - t0}
                bar.close()
                path = self.run.interrupted_path
                if self.info.is_main:
                    save_checkpoint(path, self.state_dict())
                barrier(self.info)
                raise TrainingInterrupted(
                    f"training stopped at epoch {epoch}, step {step + 1}/{len(batches)}; checkpoint written to "
                    f"{path}; continue with --resume"
                )
        bar.close()
        seconds = time.perf_counter() - t0
        train = self._reduce(sums, count)
        val = self.evaluate(self.val_positions) if len(self.val_positions) else {}
        if self.scheduler is not None:
            self.scheduler.step()
        row = {"epoch": epoch, **{f"train_{k}": v for k, v in train.items()},
               **{f"val_{k}": v for k, v in val.items()}, "seconds": seconds,
               "particles_per_s": count * self.info.world_size / max(seconds, 1e-9),
               "lr": self.optimizer.param_groups[0]["lr"]}
        self.state.history.append(row)
        self.state.epoch, self.state.step, self.state.partial = epoch, 0, {}
        log.info(" ".join(_fmt(k, v) for k, v in row.items()))
        if self.epoch_end is not None:
            self.epoch_end(self, epoch, row)
        if epoch % s.checkpoint_every == 0 or epoch == s.epochs or self._stop_requested:
            self.save_epoch(epoch)
            self.write_best_epoch()
        if self._stop_requested and epoch < s.epochs:
            raise TrainingInterrupted(f"training stopped after epoch {epoch}; continue with --resume")

    def _estimate_epoch_time(self, epoch: int, done: int, elapsed: float, n_batches: int) -> None:
        """Log ``epoch N: ~T per epoch (estimated after K batches)`` once enough batches have run."""
        enough = done >= ESTIMATE_AFTER_BATCHES or (done >= 2 and elapsed >= ESTIMATE_AFTER_SECONDS)
        if done >= n_batches or not enough:
            return
        self._estimated = True
        per_epoch = elapsed / done * n_batches
        left = self.settings.epochs - epoch
        more = f"; ~{format_duration(per_epoch * (left + 1))} for the {left + 1} epochs to go" if left else ""
        log.info(f"epoch {epoch}: ~{format_duration(per_epoch)} per epoch (estimated after {done} batches{more}; "
                 "validation not included)")

    def write_best_epoch(self) -> int | None:
        """Write ``RUN/best_epoch`` (main process): :func:`select_best_epoch` of the checkpointed epochs by
        ``self.selection_metric``; nothing without a validation set. Returns the epoch chosen.
        """
        best = select_best_epoch(self.state.history, self.run.completed_epochs(), self.selection_metric)
        if best is not None and self.info.is_main:
            self.run.write_best_epoch(best)
        return best

    def save_epoch(self, epoch: int) -> None:
        """Write the epoch checkpoint, the latents of every particle and the metrics table (main process)."""
        if self.info.is_main:
            self.run.save_checkpoint(epoch, self.state_dict())
            if self.pose_refiner is not None:
                self.pose_refiner.save_epoch_poses(self.run.learned_poses_path(epoch), self.data,
                                                   self.train_positions)
            if self.model.zdim > 0:
                z = self.encode_all()
                with atomic_path(self.run.latents_path(epoch)) as tmp:
                    np.save(tmp, z)
            write_metrics(self.run.metrics_path, self.state.history)
            self.run.interrupted_path.unlink(missing_ok=True)
        barrier(self.info)

    def encode_all(self, batch_size: int = 256) -> np.ndarray:
        """Posterior means ``(len(data), zdim)`` float32 of every particle, in data order."""
        data = self.data
        if self.pose_refiner is not None:  # the encoder sees the images centred by the learned shifts
            from cryoscape.models.poses import LearnedPoseData

            data = LearnedPoseData(data, self.pose_refiner)
        with self._autocast():
            return encode_all(self.model, data, batch_size)


@torch.no_grad()
def encode_all(model: FamilyModel, data, batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """Posterior means ``(len(data), zdim)`` float32 of every particle of ``data``, in data order."""
    model.eval()
    n = len(data)
    out = []
    chunks = [np.arange(start, min(n, start + batch_size)) for start in range(0, n, batch_size)]
    batches = prefetched(chunks, data.batch, _is_lazy(data))
    for batch in tqdm(batches, total=len(chunks), desc="encoding", unit="batch", disable=not progress, leave=False):
        out.append(model.latent_means(batch).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, model.zdim), np.float32)


def _is_lazy(data) -> bool:
    """Whether ``data`` reads from disk per batch (worth preparing the next batch in the background)."""
    return bool(data.lazy)


def _fmt(key: str, value) -> str:
    if isinstance(value, float):
        return f"{key}={value:.5g}"
    return f"{key}={value}"


def write_metrics(path: Path, history: list[dict]) -> None:
    """Write the per-epoch history as CSV (atomically)."""
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buf.getvalue())
