"""Tiny in-memory particle sets for model and engine tests (no files)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryoscape.imaging.projection import project_fourier
from cryoscape.imaging.rotations import random_rotations
from cryoscape.metadata import CTFParams, Poses


class ArrayImages:
    """The part of ImageStack the data providers use."""

    def __init__(self, images: np.ndarray, pixel_size: float):
        self.images = images.astype(np.float32)
        self.pixel_size_angstrom = pixel_size

    @property
    def D(self):
        return self.images.shape[-1]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, idx):
        return self.images[idx]


@dataclass
class ArrayParticles:
    images: ArrayImages
    pixel_size_angstrom: float
    poses: Poses | None
    ctf: CTFParams | None
    source_path: Path = Path("synthetic")

    def __len__(self):
        return len(self.images)


def blob_volume(D: int, centers, sigma_px: float = 2.0) -> torch.Tensor:
    """Sum of Gaussian blobs at ``centers`` (pixels from the centre, (x, y, z))."""
    i = torch.arange(D, dtype=torch.float32) - D // 2
    zz, yy, xx = torch.meshgrid(i, i, i, indexing="ij")
    vol = torch.zeros(D, D, D)
    for cx, cy, cz in centers:
        vol += torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2 + (zz - cz) ** 2) / (2 * sigma_px**2))
    return vol


def two_state_particles(n: int = 200, D: int = 16, seed: int = 0, snr: float | None = None):
    """Particles of two blob objects (labels returned), uniform random poses, no CTF, zero shifts."""
    rng = np.random.default_rng(seed)
    vols = [
        blob_volume(D, [(-3, 0, 0), (3, 0, 0), (0, 3, 0)]),
        blob_volume(D, [(-3, 0, 0), (3, 0, 0), (0, -3, 2)]),
    ]
    labels = rng.integers(0, 2, n)
    rots = random_rotations(n, seed=seed)
    images = np.zeros((n, D, D), np.float32)
    for s in (0, 1):
        sel = np.nonzero(labels == s)[0]
        if len(sel):
            images[sel] = project_fourier(vols[s], torch.as_tensor(rots[sel], dtype=torch.float32)).numpy()
    if snr is not None:
        images += rng.normal(0, np.sqrt(images.var() / snr), images.shape).astype(np.float32)
    poses = Poses(rots, np.zeros((n, 2)))
    return ArrayParticles(ArrayImages(images, 2.0), 2.0, poses, None), labels, vols
