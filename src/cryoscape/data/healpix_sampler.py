"""Projection classes over the viewing direction (HEALPix) and a batch plan that draws each batch from one class.

OPUS-DSD (Luo et al. 2023, Methods "Training") bins the training images into 48 projection classes by their
viewing direction with HEALPix (``nside = 2``), and builds every batch from a single class, so that the
structural-disentanglement prior can compare images of the same view within a batch and images of other views
through the memory bank.

The viewing direction of a particle with RELION pose ``A`` (volume -> image frame) is the direction of the beam in
the volume frame, ``A^T e_z`` = the third row of ``A`` (``(sin(tilt) cos(rot), sin(tilt) sin(rot), cos(tilt))``);
the in-plane angle ``psi`` does not change the class.
"""

from __future__ import annotations

import numpy as np

__all__ = ["view_directions", "view_classes", "class_batches"]


def view_directions(rotations) -> np.ndarray:
    """Unit viewing directions ``(N, 3)`` float64 (volume frame) of RELION rotation matrices ``(N, 3, 3)``."""
    r = np.asarray(rotations, dtype=np.float64)
    v = r[:, 2, :]
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def view_classes(rotations, nside: int = 2) -> np.ndarray:
    """HEALPix pixel (NESTED scheme) of each particle's viewing direction.

    Parameters
    ----------
    rotations : array ``(N, 3, 3)``, RELION matrices ``A``.
    nside : HEALPix resolution; ``12 * nside**2`` classes (2 -> 48, as in OPUS-DSD).

    Returns
    -------
    int64 array ``(N,)`` with values in ``[0, 12 * nside**2)``.
    """
    import healpy

    v = view_directions(rotations)
    if len(v) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(healpy.vec2pix(int(nside), v[:, 0], v[:, 1], v[:, 2], nest=True), dtype=np.int64)


def _split_largest(chunks: list[np.ndarray]) -> bool:
    """Split the (first) largest chunk into two halves in place; False if every chunk has one element."""
    sizes = [len(c) for c in chunks]
    i = int(np.argmax(sizes))
    if sizes[i] < 2:
        return False
    half = sizes[i] // 2
    chunks[i : i + 1] = [chunks[i][:half], chunks[i][half:]]
    return True


def class_batches(classes, positions, seed: int, epoch: int, batch_size: int, rank: int = 0,
                  world_size: int = 1) -> list[np.ndarray]:
    """The batches of one epoch for this process, each batch drawn from one projection class.

    Every class's members (among ``positions``) are shuffled and split into ``ceil(n / batch_size)`` batches of
    near-equal size; the batches are then visited by repeatedly choosing a class uniformly at random among the
    classes that still have batches (OPUS-DSD's sampler). Every position appears exactly once per epoch over all
    processes: when the number of batches is not a multiple of ``world_size``, the largest batches are halved
    until it is (positions are repeated only if there are fewer positions than processes). Batch ``s`` of process
    ``r`` is global batch ``s * world_size + r``. The result is a pure function of the arguments.

    Parameters
    ----------
    classes : int array ``(N_data,)``, projection class of every position of the data set.
    positions : int array, the positions to train on this epoch (e.g. the training split).
    seed, epoch : seed the shuffle (``numpy.random.default_rng([seed, epoch, 4099])``).
    batch_size : maximum batch size per process.
    rank, world_size : this process and the number of processes.

    Returns
    -------
    list of int64 arrays (positions), the same number on every process.
    """
    classes = np.asarray(classes, dtype=np.int64)
    positions = np.asarray(positions, dtype=np.int64)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = np.random.default_rng([int(seed), int(epoch), 4099])
    pos_classes = classes[positions]
    pools: list[list[np.ndarray]] = []
    for c in np.unique(pos_classes):
        members = rng.permutation(positions[pos_classes == c])
        n_chunks = -(-len(members) // batch_size)
        pools.append(list(np.array_split(members, n_chunks)))
    order: list[np.ndarray] = []
    remaining = [len(p) for p in pools]
    active = [i for i, r in enumerate(remaining) if r > 0]
    while active:
        k = active[int(rng.integers(len(active)))]
        order.append(pools[k][len(pools[k]) - remaining[k]])
        remaining[k] -= 1
        if remaining[k] == 0:
            active.remove(k)
    if world_size > 1 and order:
        while len(order) % world_size and _split_largest(order):
            pass
        pad = (-len(order)) % world_size
        order += [order[i % len(order)] for i in range(pad)]  # only with fewer positions than processes
    return [np.asarray(b, dtype=np.int64) for b in order[rank::world_size]]
