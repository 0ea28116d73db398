"""Leaving a gloo process group at the end of a run: all ranks together, then no group left."""

from __future__ import annotations

import time

import torch.distributed as dist
import torch.multiprocessing as mp

from cryoscape.train.distributed import DistInfo, leave_together


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    if rank == 1:
        time.sleep(1.5)  # a slower peer: rank 0 must wait for it before leaving
    t0 = time.monotonic()
    leave_together(DistInfo(rank=rank, world_size=world))
    waited = time.monotonic() - t0
    with open(f"{out_dir}/rank{rank}.txt", "w") as fh:
        fh.write(f"{waited} {int(dist.is_initialized())}\n")


def test_ranks_leave_together_and_the_group_is_gone(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    waited0, alive0 = (tmp_path / "rank0.txt").read_text().split()
    waited1, alive1 = (tmp_path / "rank1.txt").read_text().split()
    assert alive0 == "0" and alive1 == "0"
    assert float(waited0) > 1.0  # rank 0 waited at the barrier for the slower rank 1
    assert float(waited1) < float(waited0)


def test_single_process_is_a_no_op():
    leave_together(DistInfo())  # not initialised, one process: nothing to leave, no error
    assert not dist.is_initialized()
