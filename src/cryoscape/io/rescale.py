"""Particles of several pixel sizes (RELION optics groups, cryoSPARC exposure groups) brought to one pixel size.

Each image is resampled on reading, keeping its box ``D``, from its own pixel size ``p_g`` to the common pixel size
``p`` (the finest of the set, or ``--apix``): the image is taken as the band-limited (trigonometric) interpolant of
its samples and evaluated at ``(j - D/2) * p / p_g`` source pixels from the centre (pixel ``D/2`` stays the centre,
so origins in Angstrom stay correct). Frequencies beyond the common Nyquist ``1/(2p)`` are removed first, so a
coarser target does not alias. The map is separable: ``image' = R @ image @ R^T`` with one real ``D x D`` matrix
``R`` per pixel size. With the finest pixel size as the target (the default) every new sample lies inside the
original box; a group with a coarser pixel size then has no signal between its own Nyquist and the common one (zero
there). With a coarser target (``--apix``) the outermost samples of the finer groups fall beyond their box and take
the values of the periodic extension (the opposite edge); for pixel sizes within a few percent that is under a
pixel of the box edge.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np

from cryoscape.io.imagestack import ImageStack

log = logging.getLogger(__name__)

__all__ = ["RescaledImageStack", "resampling_matrix", "rescale_images"]

_SAME = 1e-6  # relative difference below which a pixel size counts as the target's


@lru_cache(maxsize=16)
def _matrix(D: int, ratio: float) -> np.ndarray:
    x_src = np.arange(D) - D // 2  # source sample positions (pixels from the centre)
    x_new = (np.arange(D) - D // 2) / ratio  # new sample positions, in source pixels
    k_max = (D / 2) * min(1.0, ratio)  # keep |k| < k_max: below both Nyquists (the Nyquist row itself is dropped)
    m = min(D // 2 - 1, int(np.ceil(k_max - 1e-9)) - 1)  # frequencies -m..m are kept
    t = x_new[:, None] - x_src[None, :]
    # sum_{k=-m..m} cos(2 pi k t / D) = sin((2m + 1) pi t / D) / sin(pi t / D)  (Dirichlet kernel; 2m + 1 at t = 0)
    den = np.sin(np.pi * t / D)
    small = np.abs(den) < 1e-12
    R = np.where(small, 2 * m + 1, np.sin((2 * m + 1) * np.pi * t / D) / np.where(small, 1.0, den)) / D
    R.setflags(write=False)
    return R


def resampling_matrix(D: int, source_pixel_size: float, target_pixel_size: float) -> np.ndarray:
    """Real ``(D, D)`` matrix ``R`` with ``image_target = R @ image_source @ R.T`` (one axis at a time)."""
    return _matrix(int(D), round(float(source_pixel_size) / float(target_pixel_size), 12))


def rescale_images(images: np.ndarray, source_pixel_size: float, target_pixel_size: float) -> np.ndarray:
    """``(n, D, D)`` images at ``source_pixel_size`` resampled to ``target_pixel_size`` (same box), float32."""
    images = np.asarray(images, dtype=np.float32)
    if abs(source_pixel_size - target_pixel_size) <= _SAME * target_pixel_size:
        return images
    R = resampling_matrix(images.shape[-1], source_pixel_size, target_pixel_size).astype(np.float32)
    return np.matmul(np.matmul(R, images), R.T)


class RescaledImageStack(ImageStack):
    """An :class:`ImageStack` whose images have per-image pixel sizes and are read at one common pixel size."""

    _source_pixel_sizes: np.ndarray  # (N,) A/px of each image on disk
    _pixel_size: float  # the common pixel size the images are read at

    @classmethod
    def wrap(cls, base: ImageStack, source_pixel_sizes, pixel_size_angstrom: float) -> RescaledImageStack:
        """``base``'s images (``source_pixel_sizes[i]`` A/px each), read at ``pixel_size_angstrom`` A/px."""
        new = cls.__new__(cls)
        new.__dict__.update(base.__dict__)
        new._cache = type(base._cache)()
        new._source_pixel_sizes = np.asarray(source_pixel_sizes, dtype=np.float64).reshape(-1)
        if new._source_pixel_sizes.shape != (len(base),):
            raise ValueError("one source pixel size per image is needed")
        new._pixel_size = float(pixel_size_angstrom)
        if base._loaded is not None:
            new._loaded = new._rescale(np.arange(len(base)), base._loaded)
        return new

    @property
    def source_pixel_sizes(self) -> np.ndarray:
        """Pixel size of every image as stored on disk (Angstrom)."""
        return self._source_pixel_sizes

    def _rescale(self, idx: np.ndarray, images: np.ndarray) -> np.ndarray:
        sizes = self._source_pixel_sizes[idx]
        out = np.array(images, dtype=np.float32, copy=True)
        for p in np.unique(sizes):
            sel = sizes == p
            out[sel] = rescale_images(out[sel], float(p), self._pixel_size)
        return out

    def _read(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        return self._rescale(idx, super()._read(idx))

    def _derive(self, idx: np.ndarray, loaded: np.ndarray | None) -> RescaledImageStack:
        plain = super()._derive(idx, loaded)
        new = RescaledImageStack.__new__(RescaledImageStack)
        new.__dict__.update(plain.__dict__)
        new._source_pixel_sizes = self._source_pixel_sizes[np.asarray(idx)]
        return new


def mixed_within_a_stack(stack_paths, pixel_sizes) -> tuple[str, list[float]] | None:
    """``(stack, its pixel sizes)`` for the first stack whose particles claim different pixel sizes, else None
    (one stack has one pixel size, so such a file cannot be resampled group by group).
    """
    stacks = np.asarray(stack_paths, dtype=object)
    sizes = np.asarray(pixel_sizes, dtype=np.float64)
    uniq, inverse = np.unique(stacks, return_inverse=True)
    for u in range(len(uniq)):
        s = sizes[inverse.reshape(-1) == u]
        if len(s) and not np.allclose(s, s[0], rtol=1e-4):
            return str(uniq[u]), np.unique(s.round(4)).tolist()
    return None
