"""Multi-process training with PyTorch DDP under ``torchrun`` (one process per GPU, or gloo on CPU)."""

from __future__ import annotations

import atexit
import datetime
import logging
import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """The place of this process in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group when launched by ``torchrun`` with more than one process; otherwise single-process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        atexit.register(_leave_process_group)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def _leave_process_group() -> None:
    """Leave the process group before the interpreter exits (``atexit``; a no-op after :func:`leave_together`): a
    gloo group still alive at interpreter teardown can abort the process ("terminate called without an active
    exception") after a run that succeeded.
    """
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - exiting anyway; a failure to leave must not mask the run's result
            pass


def leave_together(info: DistInfo, wait_s: float = 300.0) -> None:
    """After a run that finished on every process: wait for all of them, then leave the process group.

    A rank that tears its group down while a peer is still connected can make the peer's gloo threads abort it
    ("terminate called without an active exception") although its run succeeded; leaving after a barrier avoids
    that. For gloo the barrier is a monitored one that gives up after ``wait_s`` seconds. Runs that fail leave
    through the ``atexit`` hook alone (no barrier: a failed peer must not hold the others).
    """
    if not (info.enabled and dist.is_available() and dist.is_initialized()):
        return
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=wait_s))
        else:
            dist.barrier()
    except Exception:  # noqa: BLE001 - a peer that already left; leave anyway
        pass
    _leave_process_group()
    global _LEFT_TOGETHER
    _LEFT_TOGETHER = True


_LEFT_TOGETHER = False


def left_together() -> bool:
    """True in a ``torchrun`` worker whose run finished and left the process group with its peers."""
    return _LEFT_TOGETHER


def exit_worker(code: int) -> NoReturn:
    """End a ``torchrun`` worker that has left its group: flush the logs and streams, then exit at once.

    Interpreter finalization in a process that has held a gloo group can still, rarely, abort it ("terminate called
    without an active exception", once in CI under load after the barrier and the destroy) when C++ threads release
    Python objects while the interpreter is torn down; every output is written and closed by then, so a worker skips
    finalization (``os._exit``) rather than turn a finished run into a failed one.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001, S110 - a closed stream: nothing left to flush
            pass
    os._exit(code)


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over processes (identity when single-process)."""
    if info.enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier(info: DistInfo) -> None:
    """Wait until every process gets here (nothing when single-process)."""
    if info.enabled:
        dist.barrier()


def broadcast_flag(flag: bool, info: DistInfo, device: torch.device | str = "cpu") -> bool:
    """True on every process if it is true on any (e.g. a stop request)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_gather_rows(info: DistInfo, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Concatenate ``tensors`` (equal first dimension within a process, any between processes) over all processes
    in rank order; identity when single-process.
    """
    if not info.enabled:
        return tensors
    world = info.world_size
    n = torch.tensor([tensors[0].shape[0]], device=tensors[0].device)
    sizes_t = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes_t, n)
    sizes = [int(s) for s in sizes_t]
    out = []
    for t in tensors:
        padded = t.new_zeros((max(sizes),) + tuple(t.shape[1:]))
        padded[: t.shape[0]] = t
        parts = [torch.zeros_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        out.append(torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)]))
    return tuple(out)
