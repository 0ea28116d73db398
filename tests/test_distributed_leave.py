"""Leaving a gloo process group at the end of a run: all ranks together, then no group left."""

from __future__ import annotations

import subprocess
import sys
import time

import torch.distributed as dist
import torch.multiprocessing as mp

from cryoscape.train.distributed import DistInfo, leave_together, left_together


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    if rank == 1:
        time.sleep(1.5)  # a slower peer: rank 0 must wait for it before leaving
    t0 = time.monotonic()
    leave_together(DistInfo(rank=rank, world_size=world))
    waited = time.monotonic() - t0
    with open(f"{out_dir}/rank{rank}.txt", "w") as fh:
        fh.write(f"{waited} {int(dist.is_initialized())} {int(left_together())}\n")


def test_ranks_leave_together_and_the_group_is_gone(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    waited0, alive0, left0 = (tmp_path / "rank0.txt").read_text().split()
    waited1, alive1, left1 = (tmp_path / "rank1.txt").read_text().split()
    assert alive0 == "0" and alive1 == "0"
    assert left0 == "1" and left1 == "1"  # the CLI ends such a worker with exit_worker
    assert float(waited0) > 1.0  # rank 0 waited at the barrier for the slower rank 1
    assert float(waited1) < float(waited0)


def test_single_process_is_a_no_op():
    leave_together(DistInfo())  # not initialised, one process: nothing to leave, no error
    assert not dist.is_initialized()
    assert not left_together()  # so the CLI returns normally


def test_exit_worker_flushes_streams_and_logs_before_exiting(tmp_path):
    """os._exit skips finalization: whatever is still buffered (stdout to a pipe, a log file) must be flushed first."""
    log = tmp_path / "log.txt"
    code = ("import logging; from cryoscape.train.distributed import exit_worker; "
            f"logging.basicConfig(filename={str(log)!r}, level=logging.INFO); logging.getLogger().info('last line'); "
            "print('buffered tail', end=''); exit_worker(3); print('never')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 3
    assert result.stdout == "buffered tail"
    assert log.read_text().strip().endswith("last line")
