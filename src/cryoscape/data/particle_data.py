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

    ``focus`` (``train --focus-mask``): a :class:`~cryoscape.data.focus.FocusSubtraction`; each image then has the
    consensus outside the mask subtracted and is multiplied by its focus weight before its transform, and
    batches carry the weights (``weight``) for the model. Its scale is fitted on up to 1000 images here unless
    ``focus_scale`` gives it (a resumed run's recorded value).
    """

    def __init__(self, particles, pixels: FourierPixels, *, invert=False, window=True, window_inner=0.85,
                 lazy=False, norm_std: float | None = None, progress=True, focus=None,
                 focus_scale: float | None = None):
        require_poses(particles)
        self.particles = particles
        self.pixels = pixels
        self._init_common(particles.source_path, pixels.D, particles.pixel_size_angstrom, invert, window,
                          window_inner, lazy)
        self.rotations = torch.as_tensor(particles.poses.rotations, dtype=torch.float32)
        self._shifts_cpu = torch.as_tensor(particles.poses.shifts_px(self.pixel_size_angstrom), dtype=torch.float32)
        self.ctf = None if particles.ctf is None else CTFTensors.from_params(particles.ctf)
        self.ctf_premultiplied = ctf_premultiplied_flag(particles, self.ctf is not None, log)
        self.focus = focus
        self._footprints: torch.Tensor | None = None
        if focus is not None:
            self._rotations_cpu, self._ctf_cpu = self.rotations, self.ctf  # what _prepare needs, kept on the CPU
            if focus_scale is not None:
                focus.scale = float(focus_scale)
            else:
                self._fit_focus_scale()
            if not lazy:  # computed once: (N, D, D) float32 beside the prepared images
                n, step = len(particles), 256
                self._footprints = torch.cat([focus.footprint(self._rotations_cpu[j : j + step])
                                              for j in range(0, n, step)])
                self.device_fields = (*self.device_fields, "_footprints")  # kept on the training device
        self._init_values(norm_std, progress)

    def _fit_focus_scale(self) -> None:
        """Fit the consensus scale (:meth:`FocusSubtraction.fit_scale`) on up to 1000 evenly spaced images."""
        from cryoscape.data.focus import SCALE_SAMPLE

        n = len(self.particles)
        rows = np.unique(np.linspace(0, n - 1, min(n, SCALE_SAMPLE)).astype(np.int64))
        raw = torch.from_numpy(np.asarray(self.particles.images[rows], dtype=np.float32))
        ctf = None if self._ctf_cpu is None else self._ctf_cpu[torch.from_numpy(rows)]
        scale = self.focus.fit_scale(raw, self._rotations_cpu[rows], self._shifts_cpu[rows], ctf, self.invert,
                                     self.window)
        log.info("--focus-mask: consensus scale %.4g (least squares over %d images)", scale, len(rows))

    def __len__(self) -> int:
        return len(self.particles)

    def _prepare(self, indices: np.ndarray) -> torch.Tensor:
        raw = np.asarray(self.particles.images[indices], dtype=np.float32)
        check_finite(raw, indices, self.source)
        images = torch.from_numpy(raw)
        shifts, window = self._shifts_cpu[indices], self.window
        if self.focus is not None:
            rows = torch.from_numpy(np.asarray(indices, dtype=np.int64))
            ctf = None if self._ctf_cpu is None else self._ctf_cpu[rows]
            centred = None if self._footprints is None else self._footprints.cpu()[rows]
            images, footprint = self.focus.apply(images, self._rotations_cpu[rows], shifts, ctf, self.invert,
                                                 centred)
            window = footprint if window is None else window * footprint
        return hartley_pixels(images, self.pixels, shifts, window, self.invert)

    def batch(self, indices: np.ndarray) -> SliceBatch:
        """The batch of particles at ``indices`` (positions in this data set); with :attr:`focus`, ``weight`` holds
        the centred focus weights ``(B, D, D)`` (:meth:`~cryoscape.data.focus.FocusSubtraction.footprint`).
        """
        idx = torch.from_numpy(np.asarray(indices, dtype=np.int64)).to(self.device)
        weight = None
        if self._footprints is not None:
            weight = self._footprints[idx]
        elif self.focus is not None:
            rows = torch.from_numpy(np.asarray(indices, dtype=np.int64))
            weight = self.focus.footprint(self._rotations_cpu[rows]).to(self.device)
        return SliceBatch(idx, self.prepared_rows(idx), self.rotations[idx],
                          None if self.ctf is None else self.ctf[idx], weight=weight)
