"""The container of a tilt-series particle set: :class:`TiltSeriesSet` (see ``cryoscape.io.tilt_series`` for the
conventions and the readers).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from cryoscape.errors import InputError
from cryoscape.io.imagestack import ImageStack
from cryoscape.metadata import CTFParams

__all__ = ["TiltSeriesSet", "group_images"]


@dataclass
class TiltSeriesSet:
    """Tilt images grouped by particle, in cryoscape's conventions.

    Attributes
    ----------
    images : ImageStack of all ``M`` tilt images, particle by particle.
    pixel_size_angstrom : float.
    rotations : ``(M, 3, 3)`` float64 per-image RELION matrices.
    shifts_angstrom : ``(M, 2)`` float64 per-image RELION origins.
    ctf : CTFParams of the ``M`` images (B-factor 0, scale 1).
    exposure_e_per_angstrom2 : ``(M,)`` cumulative exposure up to the middle of each image.
    tilt_deg : ``(M,)`` stage tilt in degrees.
    offsets : ``(N + 1,)`` int64; images of particle ``p`` are ``offsets[p]:offsets[p + 1]``.
    particle_names, tomogram_names : ``(N,)`` str arrays.
    source_path : the file read; source_format : ``'imageseries'`` or ``'optimisation_set'``.
    source : the parsed file (kept for writing subsets with every original column).
    image_rows : ``(M,)`` row of each image in the source table (image series) or ``-1``.
    particle_rows : ``(N,)`` row of each particle in the source particle table (optimisation set) or ``-1``.
    source_indices : ``(N,)`` index of each particle in the source file's particle order.
    coordinates_angstrom : ``(N, 3)`` particle centres in the tomogram (Angstrom), or None.
    particle_rotations : ``(N, 3, 3)`` particle poses in the tomogram frame, or None.
    ctf_premultiplied : the stacks hold ``CTF x image`` (``rlnCtfDataAreCtfPremultiplied 1``); models then render
        ``CTF^2 x slice``.
    """

    images: ImageStack
    pixel_size_angstrom: float
    rotations: np.ndarray
    shifts_angstrom: np.ndarray
    ctf: CTFParams
    exposure_e_per_angstrom2: np.ndarray
    tilt_deg: np.ndarray
    offsets: np.ndarray
    particle_names: np.ndarray
    tomogram_names: np.ndarray
    source_path: Path
    source_format: str
    source: object = None
    image_rows: np.ndarray | None = None
    particle_rows: np.ndarray | None = None
    source_indices: np.ndarray | None = None
    coordinates_angstrom: np.ndarray | None = None
    particle_rotations: np.ndarray | None = field(default=None, repr=False)
    ctf_premultiplied: bool = False

    def __post_init__(self):
        n, m = len(self.offsets) - 1, len(self.images)
        if self.offsets[0] != 0 or self.offsets[-1] != m or np.any(np.diff(self.offsets) < 1):
            raise InputError("inconsistent particle grouping of the tilt images", self.source_path)
        for name in ("rotations", "shifts_angstrom", "exposure_e_per_angstrom2", "tilt_deg"):
            if len(getattr(self, name)) != m:
                raise InputError(f"{name} has {len(getattr(self, name))} rows for {m} images", self.source_path)
        if len(self.ctf) != m:
            raise InputError(f"{len(self.ctf)} CTF rows for {m} images", self.source_path)
        if self.image_rows is None:
            self.image_rows = np.full(m, -1, np.int64)
        if self.particle_rows is None:
            self.particle_rows = np.full(n, -1, np.int64)
        if self.source_indices is None:
            self.source_indices = np.arange(n, dtype=np.int64)

    def __len__(self) -> int:
        return int(len(self.offsets) - 1)

    @property
    def n_images(self) -> int:
        """Number of tilt images ``M``."""
        return int(len(self.images))

    @property
    def D(self) -> int:
        """Box size in pixels."""
        return self.images.D

    @property
    def tilt_counts(self) -> np.ndarray:
        """``(N,)`` number of tilt images of each particle."""
        return np.diff(self.offsets)

    def particle_of_image(self) -> np.ndarray:
        """``(M,)`` particle position of each image."""
        return np.repeat(np.arange(len(self)), self.tilt_counts)

    def image_indices(self, particles) -> np.ndarray:
        """Image rows ``(K,)`` of the particles at ``particles`` (positions in this set), particle by particle."""
        p = np.atleast_1d(np.asarray(particles, dtype=np.int64))
        if p.size == 0:
            return np.zeros(0, np.int64)
        counts = self.tilt_counts[p]
        starts = np.repeat(self.offsets[p], counts)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return starts + within

    def subset(self, particles) -> TiltSeriesSet:
        """The particles at ``particles`` (positions in this set), in that order, with all their images."""
        p = np.atleast_1d(np.arange(len(self))[particles])
        img = self.image_indices(p)
        # filled in by __post_init__
        assert self.image_rows is not None and self.particle_rows is not None and self.source_indices is not None
        offsets = np.concatenate([[0], np.cumsum(self.tilt_counts[p])]).astype(np.int64)

        def opt(a):
            return None if a is None else a[p]

        return replace(self, images=self.images.subset(img), rotations=self.rotations[img],
                       shifts_angstrom=self.shifts_angstrom[img], ctf=self.ctf.subset(img),
                       exposure_e_per_angstrom2=self.exposure_e_per_angstrom2[img], tilt_deg=self.tilt_deg[img],
                       offsets=offsets, particle_names=self.particle_names[p], tomogram_names=self.tomogram_names[p],
                       image_rows=self.image_rows[img], particle_rows=self.particle_rows[p],
                       source_indices=self.source_indices[p], coordinates_angstrom=opt(self.coordinates_angstrom),
                       particle_rotations=opt(self.particle_rotations))


def group_images(particle_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group image rows by particle id, particles in order of first appearance, rows in file order within each.

    Returns
    -------
    order : ``(M,)`` row order that makes each particle's rows contiguous.
    offsets : ``(N + 1,)`` int64.
    names : ``(N,)`` the particle ids in particle order.
    """
    ids = pd.Series(np.asarray(particle_ids, dtype=object)).astype(str)
    codes, names = pd.factorize(ids, sort=False)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=len(names))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return order, offsets, np.asarray(names, dtype=object)
