"""Batches of centred, normalised real-space particle images (for real-space models such as OPUS-DSD)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from cryoscape.data.base import PreparedData, require_poses
from cryoscape.data.batches import ImageBatch
from cryoscape.data.healpix_sampler import view_classes
from cryoscape.data.prepared import ctf_premultiplied_flag
from cryoscape.data.preprocess import check_finite
from cryoscape.imaging.ctf import CTFTensors
from cryoscape.imaging.shift import translate_images

__all__ = ["ImageParticleData", "prepare_images"]

log = logging.getLogger(__name__)


def prepare_images(images: torch.Tensor, shifts_px: torch.Tensor | None = None, window: torch.Tensor | None = None,
                   invert: bool = False) -> torch.Tensor:
    """Centre, window and (optionally) invert real-space particle images.

    Parameters
    ----------
    images : float ``(B, D, D)`` real-space images.
    shifts_px : ``(B, 2)`` RELION origins ``(x, y)`` in pixels; each image is translated by ``+origin`` (Fourier
        phase shift), which moves the particle centre to the box centre ``D // 2``. ``None``: no translation.
    window : ``(D, D)`` real-space window applied after centring, or ``None``.
    invert : multiply by -1 (for stacks where the protein is dark).

    Returns
    -------
    float ``(B, D, D)`` (not yet normalised).
    """
    x = images
    if shifts_px is not None:
        x = translate_images(x, shifts_px)
    if window is not None:
        x = x * window
    return -x if invert else x


class ImageParticleData(PreparedData):
    """Centred real-space images, rotations, CTF parameters and projection classes of a particle set.

    In memory (default) all images are prepared once (centred by their origin, windowed, divided by
    ``norm_std``); with ``lazy=True`` they are read from the stacks on disk and prepared per batch.

    Parameters
    ----------
    particles : ``cryoscape.io.particles.ParticleSet`` with poses (and CTF, if any).
    invert, window, window_inner : image preparation (see :func:`prepare_images`).
    lazy : read and prepare images per batch.
    norm_std : scale the images are divided by; the standard deviation of up to 1000 prepared images when
        ``None``.
    nside : HEALPix resolution of the projection classes (``batch["view_class"]``).

    ``ctf_premultiplied`` is the particle set's flag (images hold ``CTF x image``; models render ``CTF^2 x``
    the projection).
    """

    device_fields = ("rotations", "_classes", "ctf")

    def __init__(self, particles, *, invert=False, window=True, window_inner=0.85, lazy=False,
                 norm_std: float | None = None, nside: int = 2, progress=True):
        require_poses(particles)
        self.particles = particles
        self._init_common(particles.source_path, particles.images.D, particles.pixel_size_angstrom, invert, window,
                          window_inner, lazy)
        rotations = np.asarray(particles.poses.rotations, dtype=np.float64)
        self.view_classes = view_classes(rotations, nside)
        self.rotations = torch.as_tensor(rotations, dtype=torch.float32)
        self._shifts_cpu = torch.as_tensor(particles.poses.shifts_px(self.pixel_size_angstrom), dtype=torch.float32)
        self._classes = torch.as_tensor(self.view_classes)
        self.ctf = None if particles.ctf is None else CTFTensors.from_params(particles.ctf)
        self.ctf_premultiplied = ctf_premultiplied_flag(particles, self.ctf is not None, log)
        self._init_values(norm_std, progress)

    def __len__(self) -> int:
        return len(self.particles)

    def _prepare(self, indices: np.ndarray) -> torch.Tensor:
        raw = np.asarray(self.particles.images[indices], dtype=np.float32)
        check_finite(raw, indices, self.source)
        return prepare_images(torch.from_numpy(raw), self._shifts_cpu[indices], self.window, self.invert)

    def _row_shape(self) -> tuple[int, ...]:
        return (self.D, self.D)

    @property
    def images(self) -> torch.Tensor | None:
        """The prepared images ``(N, D, D)`` (in-memory mode; ``None`` when lazy): :attr:`values`."""
        return self.values

    def batch(self, indices: np.ndarray) -> ImageBatch:
        """The particles at ``indices``: ``index`` (B,), ``y`` (B, D, D) centred normalised images, ``rot``
        (B, 3, 3), ``view_class`` (B,) and, if known, ``ctf`` (:class:`CTFTensors` of shape (B,)).
        """
        idx = torch.from_numpy(np.asarray(indices, dtype=np.int64)).to(self.device)
        ctf = None if self.ctf is None else self.ctf[idx]
        return ImageBatch(idx, self.prepared_rows(idx), self.rotations[idx], ctf, view_class=self._classes[idx])
