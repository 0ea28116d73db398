"""Map-to-map comparison: automatic soft masks, phase randomisation, masked FSC with noise-substitution
correction, and real-space map correlation.

* :func:`auto_mask` follows the tomoDRGN paper's Methods: binarise at half the 99th-percentile voxel value,
  dilate by 3 px, and soften with a falling cosine edge over 10 px.
* :func:`masked_fsc` applies the noise-substitution test of Chen et al. (2013), as RELION's post-processing and
  cryoSPARC's "corrected" FSC do: beyond a resolution the phases of both maps are randomised, the masked FSC of
  the randomised maps measures what the mask alone contributes, and the corrected curve is
  ``(FSC_masked - FSC_random) / (1 - FSC_random)`` there (the masked FSC below that resolution). By default the
  randomisation starts where the unmasked FSC first drops below 0.8 (RELION's choice).
* :func:`map_correlation` is the Pearson correlation of voxel values, optionally weighted by a mask
  (CC_mask of Afonine et al. 2018 when the mask is binary).

The FSC itself comes from :mod:`cryoscape.analysis.fsc`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cryoscape.analysis.fsc import fsc, resolution_at
from cryoscape.errors import InputError

__all__ = [
    "auto_mask",
    "phase_randomize",
    "map_correlation",
    "FSCResult",
    "masked_fsc",
    "check_same_box",
]


def _volume(vol, name: str) -> np.ndarray:
    arr = np.asarray(vol, dtype=np.float64)
    if arr.ndim != 3 or len(set(arr.shape)) != 1:
        raise InputError(f"{name} must be a cubic (D, D, D) volume, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or Inf values")
    return arr


def check_same_box(a: np.ndarray, b: np.ndarray, name_a: str = "map A", name_b: str = "map B") -> None:
    """Raise :class:`InputError` unless the two arrays have the same shape."""
    if np.shape(a) != np.shape(b):
        raise InputError(f"{name_a} has shape {np.shape(a)} but {name_b} has shape {np.shape(b)}",
                         hint="resample one map to the other's box and pixel size first")


def auto_mask(vol: np.ndarray, pixel_size_angstrom: float = 1.0, threshold: float | None = None,
              dilate_px: float = 3.0, soft_edge_px: float = 10.0, dilate_angstrom: float | None = None,
              soft_edge_angstrom: float | None = None) -> np.ndarray:
    """Soft mask ``(D, D, D)`` float32 in ``[0, 1]`` around the density of ``vol`` (tomoDRGN recipe).

    Voxels ``>= threshold`` (default: half the 99th-percentile voxel value; when that is not above the median,
    i.e. the density fills under 1 % of the box, halfway between the median and the maximum, with a warning)
    form the core; it is dilated by
    ``dilate_px`` voxels, and the mask falls from 1 to 0 over a further ``soft_edge_px`` voxels as
    ``(1 + cos(pi * d / soft_edge_px)) / 2``, ``d`` being the distance beyond the dilated core. Distances may
    be given in Angstrom instead (``dilate_angstrom``, ``soft_edge_angstrom``), converted with
    ``pixel_size_angstrom``.
    """
    vol = _volume(vol, "volume")
    if pixel_size_angstrom <= 0:
        raise InputError(f"pixel size must be positive, got {pixel_size_angstrom}")
    if dilate_angstrom is not None:
        dilate_px = dilate_angstrom / pixel_size_angstrom
    if soft_edge_angstrom is not None:
        soft_edge_px = soft_edge_angstrom / pixel_size_angstrom
    if dilate_px < 0 or soft_edge_px < 0:
        raise InputError("mask dilation and soft edge must be >= 0")
    if threshold is None:
        threshold = 0.5 * float(np.percentile(vol, 99))
        if threshold <= float(np.median(vol)):
            # the object fills less than 1 % of the box: the 99th percentile is background
            threshold = 0.5 * (float(vol.max()) + float(np.median(vol)))
            warnings.warn("auto_mask: the density fills under 1 % of the box; thresholding at half its maximum "
                          "above the background instead", stacklevel=2)
    core = vol >= threshold
    if not core.any():
        raise InputError(f"no voxel reaches the mask threshold {threshold:.4g}", hint="give a lower threshold")
    # distance (voxels) from every voxel outside the core to the nearest core voxel
    dist = ndimage.distance_transform_edt(~core)
    beyond = dist - dilate_px
    mask = np.zeros_like(dist)
    mask[beyond <= 0] = 1.0
    if soft_edge_px > 0:
        edge = (beyond > 0) & (beyond < soft_edge_px)
        mask[edge] = 0.5 * (1.0 + np.cos(np.pi * beyond[edge] / soft_edge_px))
    return mask.astype(np.float32)


def _shell_radius_rfft(D: int) -> np.ndarray:
    """Radius in Fourier pixels (``|k| * D``) of every coefficient of ``np.fft.rfftn`` of a ``D^3`` volume."""
    k = np.fft.fftfreq(D) * D
    kx = np.fft.rfftfreq(D) * D
    return np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)


def phase_randomize(vol: np.ndarray, from_resolution_angstrom: float, pixel_size_angstrom: float,
                    seed: int = 0) -> np.ndarray:
    """``vol`` ``(D, D, D)`` with random Fourier phases beyond ``from_resolution_angstrom`` (amplitudes kept).

    Fourier coefficients whose shell (``rint(|k| D)``, as in :func:`cryoscape.analysis.fsc.fsc`) has a
    frequency above ``1 / from_resolution_angstrom`` get the phases of the transform of real white noise, so
    the result stays real. Returns float32.
    """
    vol = _volume(vol, "volume")
    if from_resolution_angstrom <= 0 or pixel_size_angstrom <= 0:
        raise InputError("resolution and pixel size must be positive")
    D = vol.shape[0]
    F = np.fft.rfftn(vol)
    noise = np.fft.rfftn(np.random.default_rng(seed).standard_normal(vol.shape))
    phases = noise / np.maximum(np.abs(noise), np.finfo(np.float64).tiny)
    shell = np.rint(_shell_radius_rfft(D))
    cutoff_shell = D * pixel_size_angstrom / from_resolution_angstrom
    randomise = shell > cutoff_shell
    F[randomise] = np.abs(F[randomise]) * phases[randomise]
    return np.fft.irfftn(F, s=vol.shape, axes=(0, 1, 2)).astype(np.float32)


def map_correlation(vol_a: np.ndarray, vol_b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Real-space correlation coefficient of two maps ``(D, D, D)``, optionally weighted by ``mask`` ``(D, D, D)``.

    ``sum w (a - <a>)(b - <b>) / sqrt(sum w (a - <a>)^2 * sum w (b - <b>)^2)`` with weighted means ``<.>``;
    NaN when either map is constant under the mask.
    """
    a, b = _volume(vol_a, "map A"), _volume(vol_b, "map B")
    check_same_box(a, b)
    w = np.ones_like(a) if mask is None else np.asarray(mask, dtype=np.float64)
    check_same_box(a, w, "the maps", "the mask")
    total = w.sum()
    if total <= 0:
        raise InputError("the mask is empty")
    da = a - (w * a).sum() / total
    db = b - (w * b).sum() / total
    denom = math.sqrt(float((w * da * da).sum() * (w * db * db).sum()))
    return float((w * da * db).sum() / denom) if denom > 0 else float("nan")


@dataclass(frozen=True)
class FSCResult:
    """FSC curves of two maps; every curve is ``(D // 2,)`` over shells ``freqs`` (cycles/pixel).

    ``masked``, ``randomized`` and ``corrected`` are None when no mask was used; ``randomized`` and
    ``corrected`` are None when no phase randomisation was done.
    """

    freqs: np.ndarray
    unmasked: np.ndarray
    masked: np.ndarray | None
    randomized: np.ndarray | None
    corrected: np.ndarray | None
    pixel_size_angstrom: float
    randomize_from_angstrom: float | None

    @property
    def final(self) -> np.ndarray:
        """The curve to report: corrected if available, else masked, else unmasked."""
        for curve in (self.corrected, self.masked):
            if curve is not None:
                return curve
        return self.unmasked

    @property
    def freqs_per_angstrom(self) -> np.ndarray:
        """Shell frequencies in 1/Angstrom."""
        return self.freqs / self.pixel_size_angstrom

    def resolution(self, threshold: float = 0.143) -> float:
        """Resolution (Angstrom) where :attr:`final` first drops below ``threshold``."""
        return resolution_at(self.freqs, self.final, threshold, self.pixel_size_angstrom)


def masked_fsc(vol_a: np.ndarray, vol_b: np.ndarray, pixel_size_angstrom: float, mask: np.ndarray | None = None,
               randomize_from_angstrom: float | str | None = "auto", seed: int = 0) -> FSCResult:
    """FSC of two maps ``(D, D, D)``, unmasked and (with ``mask``) masked with noise-substitution correction.

    Parameters
    ----------
    vol_a, vol_b : np.ndarray
        ``(D, D, D)`` maps on the same grid.
    pixel_size_angstrom : float
        Voxel size in Angstrom.
    mask : np.ndarray, optional
        ``(D, D, D)`` soft mask in ``[0, 1]`` multiplied into both maps.
    randomize_from_angstrom : float, "auto" or None
        Resolution beyond which phases are randomised for the correction; ``"auto"``: where the unmasked FSC
        first drops below 0.8; None: no correction. Ignored without a mask.
    seed : int
        Seed of the random phases; the two maps get independent draws (``seed`` and ``seed + 1``).
    """
    a, b = _volume(vol_a, "map A"), _volume(vol_b, "map B")
    check_same_box(a, b)
    if pixel_size_angstrom <= 0:
        raise InputError(f"pixel size must be positive, got {pixel_size_angstrom}")
    freqs, unmasked = fsc(a, b)
    if mask is None:
        return FSCResult(freqs, unmasked, None, None, None, float(pixel_size_angstrom), None)
    m = np.asarray(mask, dtype=np.float64)
    check_same_box(a, m, "the maps", "the mask")
    if m.min() < 0 or m.max() > 1 + 1e-6 or m.max() <= 0:
        raise InputError(f"mask values must lie in [0, 1] and not all be 0 (got {m.min():.3g}..{m.max():.3g})")
    _, masked = fsc(a * m, b * m)
    if randomize_from_angstrom is None:
        return FSCResult(freqs, unmasked, masked, None, None, float(pixel_size_angstrom), None)
    if isinstance(randomize_from_angstrom, str):
        if randomize_from_angstrom != "auto":
            raise InputError(f"randomize_from_angstrom must be a number, 'auto' or None, "
                             f"got {randomize_from_angstrom!r}")
        res = resolution_at(freqs, unmasked, 0.8, pixel_size_angstrom)
        # at least one shell must keep its phases; if the FSC never reaches 0.8, start at shell 1
        randomize_from = min(res, pixel_size_angstrom / freqs[1]) if math.isfinite(res) else \
            pixel_size_angstrom / freqs[1]
    else:
        randomize_from = float(randomize_from_angstrom)
    ra = phase_randomize(a, randomize_from, pixel_size_angstrom, seed=seed)
    rb = phase_randomize(b, randomize_from, pixel_size_angstrom, seed=seed + 1)
    _, randomized = fsc(ra * m, rb * m)
    corrected = masked.copy()
    beyond = np.rint(freqs * a.shape[0]) > a.shape[0] * pixel_size_angstrom / randomize_from
    denom = 1.0 - randomized
    ok = beyond & (np.abs(denom) > 1e-6)
    corrected[ok] = (masked[ok] - randomized[ok]) / denom[ok]
    return FSCResult(freqs, unmasked, masked, randomized, corrected, float(pixel_size_angstrom),
                     float(randomize_from))
