"""Focused heterogeneity (``train --focus-mask``): signal subtraction and a per-pixel weight from the mask.

With a soft mask ``M`` (values in ``[0, 1]``) around the region of interest and a consensus map ``V`` of the
particles, every image ``x`` (centred frame, CTF ``C``, pose ``A``) is replaced by

    y = w_A * (x - s * C * P_A[(1 - M) V])

    w_A = clip((P_A[M V+] + eps * f_A) / (P_A[V+] + eps), 0, 1) ** 2,      f_A = clip(P_A[M], 0, 1)

``P_A`` the oversampled Fourier projector of the simulator (same gridding correction), ``s`` one scale factor for
the whole data set (the least-squares fit of ``x`` by ``C * P_A[V]`` over up to 1000 images, so that a map in
other units can be used), ``V+`` the consensus clipped at 0 (its density), ``f_A`` the mask's *footprint* (its
projected thickness in voxels, clipped to 1) and ``eps`` 5 % of the densest projected ray of ``V+`` (at the
identity pose).

* Subtraction (as RELION's focused classification) takes the consensus of everything outside the mask out of the
  images. It removes the rest's *average*, not its *variability*: a fixed map is taken from every image alike.
* The weight ``w_A`` is the square of the share of the consensus density along each pixel's ray that lies inside
  the mask: 1 where the ray crosses only the masked region, 0 where it misses the mask, ``(m / (m + o))^2`` where
  it crosses both (``m``, ``o``: the projected densities inside and outside). Pixels that carry the rest's
  variability are damped by how much of the rest they see (squared: the share itself damped too little in the
  benchmark); ``eps`` keeps rays through the mask but through little density (solvent inside the mask) at
  ``f_A``. With ``M = 1`` the weight is 1, with ``M = 0`` it is 0.

The model multiplies its rendered, CTF-modulated slices by the same ``w_A`` in real space before comparing
(``CryoDRGN.forward``), so image and prediction are weighted alike; the encoder sees the weighted images.
The images are prepared once (in memory) or per batch (``--lazy``) by
:class:`~cryoscape.data.particle_data.SliceParticleData`, which calls :meth:`FocusSubtraction.apply` before its
Hartley transform; :meth:`FocusSubtraction.footprint` gives the weights (centred) for the model's batches.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as nnf

from cryoscape.errors import InputError
from cryoscape.imaging.ctf import CTFTensors, ctf_image
from cryoscape.imaging.fft import fft2_centered, fft3_centered, ifft2_centered
from cryoscape.imaging.lattice import central_slice_coords, circle_mask
from cryoscape.imaging.shift import phase_shift, translate_images

__all__ = ["FocusSubtraction", "load_focus_map"]

log = logging.getLogger(__name__)

OVERSAMPLE = 2  # padding of the Fourier projector (as the simulator's)
SCALE_SAMPLE = 1000  # images the consensus scale is fitted on
_SLICE_POINTS = 1 << 22  # padded slice points sampled at once
_MASK_TOLERANCE = 0.01  # mask values may overshoot [0, 1] by this much (interpolated masks); clipped
WEIGHTING = "share"  # the per-pixel weight of the images and rendered slices (FocusSubtraction's weighting)
SHARE_POWER = 2.0  # the weight is the share squared (bench/RESULTS.md section 13: 1, 2 and 4 compared)
SHARE_EPSILON = 0.05  # the share's regulariser, as a fraction of the densest projected ray of the consensus


def load_focus_map(path, D: int, pixel_size_angstrom: float, what: str = "mask", name: str | None = None
                   ) -> np.ndarray:
    """A ``(D, D, D)`` float32 map (the focus mask or the consensus) checked against the particles: cubic, the
    particles' box and, where its header sets one, their voxel size (within 1 %). A mask must lie in ``[0, 1]``
    (clipped; values up to 1 % outside are accepted) and have a positive voxel. Anything else is an
    :class:`InputError` naming the file.
    """
    from cryoscape.io.mrc import read_mrc

    name = name or f"focus {what}"
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{name} not found", path)
    try:
        data, info = read_mrc(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the {name} as MRC ({exc})", path) from exc
    hint = f"resample it to the particles' box ({D} px) and pixel size ({pixel_size_angstrom:g} A)"
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise InputError(f"the {name} must be a cubic 3-D map, got shape {data.shape}", path)
    if data.shape[0] != D:
        raise InputError(f"the {name} is a {data.shape[0]}^3 box, the particles are {D} x {D}", path,
                         hint=hint)
    apix = float(info.voxel_size_angstrom)
    if apix > 0 and abs(apix - pixel_size_angstrom) > 0.01 * pixel_size_angstrom:
        raise InputError(f"the {name} has {apix:g} A voxels, the particles {pixel_size_angstrom:g} A pixels",
                         path, hint=hint)
    if not np.isfinite(data).all():
        raise InputError(f"the {name} contains NaN or Inf values", path)
    if what == "mask":
        if data.min() < -_MASK_TOLERANCE or data.max() > 1 + _MASK_TOLERANCE:
            raise InputError(f"the {name}'s values must lie in [0, 1], found [{data.min():g}, {data.max():g}]",
                             path, hint="give a soft mask (e.g. relion_mask_create's), not a map")
        data = np.clip(data, 0.0, 1.0)
        if not (data > 0).any():
            raise InputError(f"the {name} has no positive voxel", path)
    return np.ascontiguousarray(data, dtype=np.float32)


def _padded_spectrum(volume: torch.Tensor, oversample: int = OVERSAMPLE) -> torch.Tensor:
    """Centred spectrum of ``volume`` zero-padded to ``oversample * D`` after the trilinear gridding correction
    (:func:`cryoscape.imaging.projection.project_fourier` with ``gridding_correction=True``), as 2 real channels
    ``(2, Dp, Dp, Dp)``.
    """
    D = volume.shape[-1]
    Dp = int(oversample * D)
    Dp += Dp % 2
    i = torch.arange(D, dtype=torch.float64) - D // 2
    s = torch.sinc(i / Dp) ** 2
    v = volume.to(torch.float64) / (s[:, None, None] * s[None, :, None] * s[None, None, :])
    start = Dp // 2 - D // 2
    v = nnf.pad(v, (start, Dp - D - start) * 3)
    F = fft3_centered(v)
    return torch.stack([F.real, F.imag]).to(torch.float32)


class FocusSubtraction:
    """The focus mask, the consensus outside it, and what they do to a batch of images (module docstring).

    Parameters
    ----------
    mask : ``(D, D, D)`` soft mask in ``[0, 1]``.
    consensus : ``(D, D, D)`` consensus map (in the sign of the prepared images: protein positive after
        ``--invert-data``).
    pixel_size_angstrom : of the images.
    ctf_premultiplied : the images hold ``CTF x image`` (the subtracted projection is then multiplied by ``CTF^2``).
    scale : the factor ``s`` of the consensus (``None``: 1 until :meth:`fit_scale` is called).
    weighting : the per-pixel weight ``w_A`` (``None``: :data:`WEIGHTING`): ``"share"`` (the module docstring),
        ``"footprint"`` (``clip(P_A[M], 0, 1)`` alone) or ``"none"`` (1: subtraction only); the last two are the
        ablations of ``bench/focus_mask.py``.

    Everything is computed on the CPU (the data providers prepare images there).
    """

    def __init__(self, mask: np.ndarray, consensus: np.ndarray, pixel_size_angstrom: float,
                 ctf_premultiplied: bool = False, scale: float | None = None, weighting: str | None = None):
        m = torch.as_tensor(np.asarray(mask, dtype=np.float32))
        v = torch.as_tensor(np.asarray(consensus, dtype=np.float32))
        if m.ndim != 3 or m.shape != v.shape:
            raise ValueError(f"mask and consensus must be the same (D, D, D) box, got {tuple(m.shape)} and "
                             f"{tuple(v.shape)}")
        self.D = int(m.shape[-1])
        self.pixel_size_angstrom = float(pixel_size_angstrom)
        self.ctf_premultiplied = bool(ctf_premultiplied)
        self.scale = 1.0 if scale is None else float(scale)
        self.weighting = WEIGHTING if weighting is None else weighting
        if self.weighting not in ("share", "footprint", "none"):
            raise ValueError(f"unknown weighting {self.weighting!r}")
        self.mask_is_full = bool((m == 1).all())
        self._outside_spectrum = _padded_spectrum((1.0 - m) * v)[None]  # (1, 2, Dp, Dp, Dp): re, im
        # the volumes of the weights, projected in one call (channels: the mask, and for the share the density
        # inside the mask and all of it); 2x-padded as the consensus (unpadded spectra, half the time, focused the
        # bench case less well: bench/RESULTS.md section 13)
        weight_volumes = [m]
        if self.weighting == "share":
            density = v.clamp(min=0.0)
            weight_volumes += [m * density, density]
            # epsilon: a few percent of the densest ray (at the identity pose), in the projections' units
            # (a consensus without positive density: epsilon 1e-20 makes the share the footprint)
            self.epsilon = max(SHARE_EPSILON * float(density.sum(dim=0).max()), 1e-20)
        self._weight_spectra = torch.cat([_padded_spectrum(w) for w in weight_volumes])[None]
        self._consensus = v  # kept for fit_scale

    # -- projections -------------------------------------------------------------------------------------------
    def _projections(self, rotations: torch.Tensor, spectra: torch.Tensor) -> torch.Tensor:
        """Centred spectra ``(B, D, D)`` (complex) of the projections at ``rotations`` of the volume whose padded
        spectrum is ``spectra`` ``(1, 2, Dp, Dp, Dp)``: sliced on the padded grid (trilinear), inverse transformed,
        cropped to ``D`` and transformed again, exactly as :func:`cryoscape.imaging.projection.project_fourier`
        followed by the simulator's ``fft2_centered``; ``(B, C, D, D)`` for ``C`` volumes (``2 C`` channels).
        """
        D, Dp = self.D, spectra.shape[-1]
        B, C = rotations.shape[0], spectra.shape[1] // 2
        step = max(1, _SLICE_POINTS // (Dp * Dp))
        if B > step:  # bounded memory: the sampled points of a few images at a time
            return torch.cat([self._projections(rotations[j : j + step], spectra) for j in range(0, B, step)])
        i = torch.arange(Dp, dtype=torch.float32) - Dp // 2
        ky, kx = torch.meshgrid(i, i, indexing="ij")
        freqs = torch.stack([kx, ky], dim=-1).reshape(-1, 2)
        coords = central_slice_coords(rotations.to(torch.float32).cpu(), freqs)  # (B, Dp*Dp, 3)
        grid = (coords + Dp // 2) * (2.0 / (Dp - 1)) - 1.0
        out = nnf.grid_sample(spectra, grid.reshape(1, 1, 1, -1, 3), mode="bilinear", padding_mode="zeros",
                              align_corners=True).reshape(C, 2, B, Dp, Dp)
        slices = torch.complex(out[:, 0], out[:, 1]).transpose(0, 1)  # (B, C, Dp, Dp)
        if Dp != D:
            start = Dp // 2 - D // 2
            slices = fft2_centered(ifft2_centered(slices).real[..., start : start + D, start : start + D])
        return slices[:, 0] if C == 1 else slices

    def _transfer(self, ctf: CTFTensors | None, B: int) -> torch.Tensor:
        """What multiplies a centred projection spectrum: the band ``|k| < D/2`` times the CTF (``CTF^2`` for
        CTF-premultiplied images), ``(B, D, D)`` or ``(1, D, D)``.
        """
        band = circle_mask(self.D).to(torch.float32)[None]
        if ctf is None:
            return band
        c = ctf_image(self.D, self.pixel_size_angstrom, ctf.to(device="cpu", dtype=torch.float32))
        return band * (c * c if self.ctf_premultiplied else c)

    def consensus_images(self, rotations: torch.Tensor, shifts_px: torch.Tensor | None,
                         ctf: CTFTensors | None) -> torch.Tensor:
        """``s * C * P_A[(1 - M) V]`` ``(B, D, D)`` in the frame of the raw images (translated by ``-origin``)."""
        F = self._projections(rotations, self._outside_spectrum) * self._transfer(ctf, rotations.shape[0])
        if shifts_px is not None:
            F = phase_shift(F, -torch.as_tensor(shifts_px, dtype=torch.float32))
        return self.scale * ifft2_centered(F).real

    def footprint(self, rotations: torch.Tensor, shifts_px: torch.Tensor | None = None,
                  centred: torch.Tensor | None = None) -> torch.Tensor:
        """The weights ``w_A`` ``(B, D, D)`` (module docstring; :attr:`weighting`) in the centred frame, or
        translated by ``-shifts_px`` into the raw images' frame when they are given; ``centred``: the centred
        weights, if already computed.
        """
        B = rotations.shape[0]
        if centred is None:
            if self.mask_is_full or self.weighting == "none":  # (a full mask: every share is 1)
                centred = torch.ones(B, self.D, self.D)
            else:
                projected = ifft2_centered(self._projections(rotations, self._weight_spectra)).real
                if projected.ndim == 3:
                    projected = projected[:, None]
                centred = projected[:, 0].clamp(0.0, 1.0)
                if self.weighting == "share":
                    inside, total = projected[:, 1].clamp(min=0.0), projected[:, 2].clamp(min=0.0)
                    centred = ((inside + self.epsilon * centred) / (total + self.epsilon)).clamp(0.0, 1.0)
                    if SHARE_POWER != 1.0:
                        centred = centred**SHARE_POWER
        if shifts_px is None or self.mask_is_full or self.weighting == "none":
            return centred
        return translate_images(centred, -torch.as_tensor(shifts_px, dtype=torch.float32))

    def apply(self, images: torch.Tensor, rotations: torch.Tensor, shifts_px: torch.Tensor | None,
              ctf: CTFTensors | None, invert: bool = False,
              centred_footprint: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw images ``(B, D, D)`` -> (the images with the consensus outside the mask subtracted, the footprints
        in their frame ``(B, D, D)``), to be windowed by the footprint and transformed by the caller. ``invert``:
        the raw images are of the opposite sign to the consensus (``--invert-data``); ``centred_footprint``: the
        centred footprints, if already computed (:meth:`footprint`).
        """
        sub = self.consensus_images(rotations, shifts_px, ctf)
        out = images + sub if invert else images - sub
        return out, self.footprint(rotations, shifts_px, centred_footprint)

    def fit_scale(self, images: torch.Tensor, rotations: torch.Tensor, shifts_px: torch.Tensor | None,
                  ctf: CTFTensors | None, invert: bool = False, window: torch.Tensor | None = None) -> float:
        """Set :attr:`scale` to the least-squares factor ``s`` of ``x ~ s * C * P_A[V]`` over the raw images
        given (a sample of the data set) and return it.
        """
        F = self._projections(rotations, _padded_spectrum(self._consensus)[None]) * self._transfer(
            ctf, rotations.shape[0])
        if shifts_px is not None:
            F = phase_shift(F, -torch.as_tensor(shifts_px, dtype=torch.float32))
        p = ifft2_centered(F).real.to(torch.float64)
        x = images.to(torch.float64) * (-1.0 if invert else 1.0)
        w = torch.ones(1, self.D, self.D, dtype=torch.float64) if window is None else window.to(torch.float64)
        den = float((w * p * p).sum())
        if not math.isfinite(den) or den <= 0:
            raise InputError("the focus consensus map projects to nothing (all zero)")
        self.scale = float((w * x * p).sum()) / den
        if not self.scale > 0:
            raise InputError(f"the focus consensus map does not match the images (fitted scale {self.scale:.3g}); "
                             "is --invert-data right?")
        return self.scale
