"""An epoch's batches: a seeded shuffle of the training positions split evenly over the processes.

Pure functions of ``(seed, epoch)`` and the process's place in the job (any object with ``rank``,
``world_size`` and ``enabled``, e.g. :class:`cryoscape.train.distributed.DistInfo`), so that a resumed run repeats
an uninterrupted one exactly.
"""

from __future__ import annotations

import numpy as np


def epoch_order(train_positions: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The shuffled training order of ``epoch`` (1-based), a pure function of seed and epoch."""
    return np.random.default_rng([seed, epoch]).permutation(train_positions)


def split_batches(order: np.ndarray, batch_size: int, info) -> list[np.ndarray]:
    """Split an epoch's order into this process's batches; every process gets the same number of steps."""
    global_batch = batch_size * info.world_size
    n_steps = int(np.ceil(len(order) / global_batch)) if len(order) else 0
    if info.enabled and len(order):
        pad = n_steps * global_batch - len(order)
        order = np.concatenate([order, order[:pad]])  # wrap around, as DistributedSampler does
    out = []
    for s in range(n_steps):
        chunk = order[s * global_batch : (s + 1) * global_batch]
        mine = chunk[info.rank * batch_size : (info.rank + 1) * batch_size] if info.enabled else chunk
        out.append(mine)
    return out


def default_batch_plan(train_positions: np.ndarray, seed: int, epoch: int, batch_size: int,
                       info) -> list[np.ndarray]:
    """Shuffle the training positions (seeded by epoch) and split them into this process's batches."""
    return split_batches(epoch_order(train_positions, seed, epoch), batch_size, info)
