"""Batches: which particles an epoch's steps take, and what a data provider gives the model for them.

The plan (:func:`default_batch_plan`) is a seeded shuffle of the training positions split evenly over the
processes: a pure function of ``(seed, epoch)`` and the process's place in the job (any object with ``rank``,
``world_size`` and ``enabled``, e.g. :class:`cryoscape.train.distributed.DistInfo`), so that a resumed run repeats
an uninterrupted one exactly. The batches are typed per family (:class:`SliceBatch`, :class:`ImageBatch`,
:class:`TiltBatch`).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from cryoscape.imaging.ctf import CTFTensors


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


# -- the batches the data providers give the models ---------------------------------------------------------------
@dataclass
class Batch:
    """A batch of particles: ``index`` ``(B,)`` positions in the data set, ``y`` the prepared images, ``rot`` their
    poses and ``ctf`` (:class:`cryoscape.imaging.ctf.CTFTensors`, ``None`` without CTF).

    The fields also read like a mapping (``batch["y"]``, ``batch.get("ctf")``, ``"ctf" in batch``, ``keys()``;
    absent = ``None``), so code written for dict batches keeps working; ``dataclasses.replace`` makes a changed copy.
    """

    index: torch.Tensor
    y: torch.Tensor
    rot: torch.Tensor
    ctf: CTFTensors | None = None

    def keys(self) -> list[str]:
        """The names of the fields that are set (not ``None``)."""
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, key: str):
        value = getattr(self, key, None) if key in {f.name for f in fields(self)} else None
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: str, default=None):
        """The field ``key``, or ``default`` if it is not set."""
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: str) -> bool:
        return key in self.keys()


@dataclass
class SliceBatch(Batch):
    """cryodrgn family: ``y`` ``(B, P)`` normalised Hartley pixels, ``rot`` ``(B, 3, 3)``, ``ctf`` ``(B,)``, and with
    ``train --focus-mask`` ``weight`` ``(B, D, D)``, the real-space weights the rendered images are multiplied by
    (:mod:`cryoscape.data.focus`), and in the class search of ``abinit --classes`` ``class_index`` ``(B,)``, each
    particle's class (set by :class:`~cryoscape.models.pose_search.PoseSearcher`).
    """

    weight: torch.Tensor | None = None
    class_index: torch.Tensor | None = None


@dataclass
class ImageBatch(Batch):
    """opus-dsd family: ``y`` ``(B, D, D)`` centred normalised images, ``rot`` ``(B, 3, 3)``, ``ctf`` ``(B,)``, and
    ``view_class`` ``(B,)`` (the HEALPix class of each pose).
    """

    view_class: torch.Tensor | None = None


@dataclass
class TiltBatch(Batch):
    """tomodrgn family, ``T`` tilts per particle (padded): ``y`` ``(B, T, P)``, ``rot`` ``(B, T, 3, 3)``, ``ctf``
    ``(B, T)``, ``exposure`` ``(B, T)`` (e/A^2), ``tilt_deg`` ``(B, T)``, ``tilt_mask`` ``(B, T)`` bool (real
    images) and ``tilt_key`` ``(B, T)`` (a fixed random number per image); ``class_index`` ``(B,)`` as
    :class:`SliceBatch`'s.
    """

    exposure: torch.Tensor | None = None
    tilt_deg: torch.Tensor | None = None
    tilt_mask: torch.Tensor | None = None
    tilt_key: torch.Tensor | None = None
    class_index: torch.Tensor | None = None
