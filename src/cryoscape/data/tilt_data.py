"""Batches of tilt-series particles for tomoDRGN-style models: every tilt image of each particle, padded.

A batch of ``B`` particles holds all their tilt images, padded to the largest tilt count ``T`` of the batch
(``tilt_mask`` marks real images). Which tilts a model uses (a random subset while training, a fixed one for
evaluation) is decided by the model, which knows whether it is training; ``tilt_key`` is a fixed random number per
image that makes the evaluation subset reproducible.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from cryoscape.data.base import PreparedData
from cryoscape.data.batches import TiltBatch
from cryoscape.data.fourier_pixels import FourierPixels
from cryoscape.data.prepared import ctf_premultiplied_flag
from cryoscape.data.preprocess import check_finite, hartley_pixels
from cryoscape.errors import InputError
from cryoscape.imaging.ctf import CTFTensors

log = logging.getLogger(__name__)

__all__ = ["TiltSeriesData"]


class TiltSeriesData(PreparedData):
    """Normalised Hartley pixels and per-image metadata of a tilt-series particle set.

    Same interface as :class:`cryoscape.data.particle_data.SliceParticleData` (``batch``, ``__len__``, ``to``,
    ``lazy``, ``D``, ``pixel_size_angstrom``, ``norm_std``); ``len`` and batch indices count *particles*.

    Parameters
    ----------
    tilts : :class:`cryoscape.io.tilt_series.TiltSeriesSet`.
    pixels : the model's Fourier pixel table (``P`` pixels).
    invert, window, window_inner : image preparation (see :func:`cryoscape.data.preprocess.hartley_pixels`).
    lazy : read and prepare images per batch.
    norm_std : scale the Hartley values are divided by; estimated from up to 1000 images when ``None``.

    ``ctf_premultiplied`` is the set's flag (stacks hold ``CTF x image``; models render ``CTF^2 x slice``).
    """

    device_fields = ("offsets", "counts", "rotations", "ctf", "exposure", "tilt_deg", "tilt_key")
    prepare_desc = "preparing tilt images"
    prepare_chunk = 1024

    def __init__(self, tilts, pixels: FourierPixels, *, invert=False, window=True, window_inner=0.85, lazy=False,
                 norm_std: float | None = None, progress=True):
        self.tilts = tilts
        self.pixels = pixels
        if tilts.D != pixels.D:
            raise InputError(f"images are {tilts.D} px but the model uses {pixels.D} px", tilts.source_path)
        self._init_common(tilts.source_path, pixels.D, tilts.pixel_size_angstrom, invert, window, window_inner, lazy)
        self.offsets = torch.as_tensor(tilts.offsets, dtype=torch.long)
        self.counts = self.offsets[1:] - self.offsets[:-1]
        self.rotations = torch.as_tensor(tilts.rotations, dtype=torch.float32)
        self._shifts_cpu = torch.as_tensor(tilts.shifts_angstrom / self.pixel_size_angstrom, dtype=torch.float32)
        self.ctf = CTFTensors.from_params(tilts.ctf)
        self.ctf_premultiplied = ctf_premultiplied_flag(tilts, True, log)
        self.exposure = torch.as_tensor(tilts.exposure_e_per_angstrom2, dtype=torch.float32)
        self.tilt_deg = torch.as_tensor(tilts.tilt_deg, dtype=torch.float32)
        self.tilt_key = torch.as_tensor(np.random.default_rng(12345).random(tilts.n_images), dtype=torch.float32)
        self._init_values(norm_std, progress)

    def __len__(self) -> int:
        return len(self.tilts)

    @property
    def n_images(self) -> int:
        """Number of tilt images."""
        return self.tilts.n_images

    @property
    def min_tilts(self) -> int:
        """Smallest tilt count of any particle."""
        return int(self.counts.min()) if len(self) else 0

    @property
    def max_tilts(self) -> int:
        """Largest tilt count of any particle."""
        return int(self.counts.max()) if len(self) else 0

    def _prepare(self, images: np.ndarray) -> torch.Tensor:
        """Hartley pixels ``(K, P)`` (not normalised) of image rows ``images``."""
        raw = np.asarray(self.tilts.images[images], dtype=np.float32)
        check_finite(raw, images, self.source)
        return hartley_pixels(torch.from_numpy(raw), self.pixels, self._shifts_cpu[images], self.window, self.invert)

    def _n_rows(self) -> int:
        return self.n_images

    def image_grid(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Image rows ``(B, T)`` of the particles at ``indices`` (padded with each particle's first image) and the
        ``(B, T)`` bool mask of real images; ``T`` is the largest tilt count among them.
        """
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=self.device)
        counts = self.counts[idx]
        T = int(counts.max()) if idx.numel() else 0
        slot = torch.arange(T, device=self.device)
        mask = slot[None, :] < counts[:, None]
        rows = self.offsets[idx][:, None] + torch.where(mask, slot[None, :], torch.zeros_like(slot)[None, :])
        return rows, mask

    def batch(self, indices: np.ndarray) -> TiltBatch:
        """The particles at ``indices`` with all their tilt images.

        Returns
        -------
        :class:`~cryoscape.data.batches.TiltBatch`: ``index`` ``(B,)``, ``y`` ``(B, T, P)`` normalised Hartley
        pixels, ``rot`` ``(B, T, 3, 3)``, ``ctf`` :class:`CTFTensors` ``(B, T)``, ``exposure`` ``(B, T)`` (e/A^2),
        ``tilt_deg`` ``(B, T)``, ``tilt_mask`` ``(B, T)`` bool and ``tilt_key`` ``(B, T)`` (a fixed random number per
        image).
        """
        indices = np.asarray(indices, dtype=np.int64)
        rows, mask = self.image_grid(indices)
        y = self.prepared_rows(rows)
        return TiltBatch(torch.as_tensor(indices, device=self.device), y, self.rotations[rows], self.ctf[rows],
                         exposure=self.exposure[rows], tilt_deg=self.tilt_deg[rows], tilt_mask=mask,
                         tilt_key=self.tilt_key[rows])
