"""Batches of prepared particles for slice-based models, from memory or lazily from disk."""

from __future__ import annotations

import logging

import numpy as np
import torch

from cryoscape.data.base import PreparedData, require_poses
from cryoscape.data.batches import SliceBatch
from cryoscape.data.fourier_pixels import FourierPixels
from cryoscape.data.prepared import ctf_premultiplied_flag
from cryoscape.data.preprocess import check_finite, hartley_pixels
from cryoscape.imaging.ctf import CTFTensors

log = logging.getLogger(__name__)


class SliceParticleData(PreparedData):
    """Normalised Hartley pixels, rotations, origins and CTF parameters of a particle set.

    In memory (default), all images are transformed once (centred by their origin, windowed, Hartley
    transformed, restricted to the model's pixels) and batches are plain index operations, on the training
    device if :meth:`to` moved them there. With ``lazy=True`` images are read from the stacks on disk and
    prepared per batch, so memory stays bounded for stacks larger than RAM.

    Parameters
    ----------
    particles : ``cryoscape.io.particles.ParticleSet`` with poses (and CTF, if any).
    pixels : the model's Fourier pixel table.
    invert, window, window_inner : image preparation (see :func:`hartley_pixels`).
    lazy : read and prepare images per batch.
    norm_std : scale the Hartley values are divided by; computed from up to 1000 images when ``None``.

    ``ctf_premultiplied`` is the particle set's flag (images hold ``CTF x image``; models render ``CTF^2 x slice``).
    """

    def __init__(self, particles, pixels: FourierPixels, *, invert=False, window=True, window_inner=0.85,
                 lazy=False, norm_std: float | None = None, progress=True):
        require_poses(particles)
        self.particles = particles
        self.pixels = pixels
        self._init_common(particles.source_path, pixels.D, particles.pixel_size_angstrom, invert, window,
                          window_inner, lazy)
        self.rotations = torch.as_tensor(particles.poses.rotations, dtype=torch.float32)
        self._shifts_cpu = torch.as_tensor(particles.poses.shifts_px(self.pixel_size_angstrom), dtype=torch.float32)
        self.ctf = None if particles.ctf is None else CTFTensors.from_params(particles.ctf)
        self.ctf_premultiplied = ctf_premultiplied_flag(particles, self.ctf is not None, log)
        self._init_values(norm_std, progress)

    def __len__(self) -> int:
        return len(self.particles)

    def _prepare(self, indices: np.ndarray) -> torch.Tensor:
        raw = np.asarray(self.particles.images[indices], dtype=np.float32)
        check_finite(raw, indices, self.source)
        images = torch.from_numpy(raw)
        return hartley_pixels(images, self.pixels, self._shifts_cpu[indices], self.window, self.invert)

    def batch(self, indices: np.ndarray) -> SliceBatch:
        """The batch of particles at ``indices`` (positions in this data set)."""
        idx = torch.from_numpy(np.asarray(indices, dtype=np.int64)).to(self.device)
        return SliceBatch(idx, self.prepared_rows(idx), self.rotations[idx],
                          None if self.ctf is None else self.ctf[idx])
