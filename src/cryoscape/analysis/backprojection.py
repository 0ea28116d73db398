"""Direct Fourier reconstruction of a volume from posed particle images (voxel back-projection).

Each image is translated by its origin, zero-padded to ``oversample * D``, Fourier transformed and inserted as a
central slice (``[kx, ky, 0] @ A``) into an oversampled 3-D grid with trilinear weights ("splatting").
With Wiener CTF correction the grid accumulates ``sum CTF * F`` and ``sum CTF^2``, and the volume is
``sum CTF * F / (sum CTF^2 + epsilon)``: the least-squares solution of ``F_image = CTF * slice(F_volume)``,
regularised by ``epsilon``. Half maps use even and odd particle indices. Memory is bounded: images are read
``batch_size`` at a time and inserted in chunks of points.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as nnf
from tqdm.auto import tqdm

from cryoscape.errors import InputError
from cryoscape.imaging.ctf import ctf_image
from cryoscape.imaging.fft import fft2_centered, ifft3_centered
from cryoscape.imaging.lattice import central_slice_coords, circle_mask
from cryoscape.imaging.shift import phase_shift

__all__ = ["backproject", "insert_slices"]

_CORRECTIONS = ("wiener", "flip", "none")
_POINTS_PER_CHUNK = 1 << 21


def insert_slices(
    accum_ft: torch.Tensor,
    accum_weight: torch.Tensor,
    Dp: int,
    slices: torch.Tensor,
    weights: torch.Tensor,
    coords_px: torch.Tensor,
    groups: torch.Tensor | None = None,
) -> None:
    """Splat values into flattened centred 3-D grids with trilinear weights (in place).

    Parameters
    ----------
    accum_ft : complex tensor ``(G * Dp**3,)``, ``G`` stacked flattened ``(Dp, Dp, Dp)`` grids ``[z, y, x]``.
    accum_weight : real tensor ``(G * Dp**3,)``, the matching weight grids.
    Dp : int, side of each grid; the centre (zero frequency) is at index ``Dp // 2``.
    slices : complex tensor ``(n, P)``, values to insert.
    weights : real tensor ``(n, P)``, weights to insert.
    coords_px : real tensor ``(n, P, 3)``, ``(x, y, z)`` in grid pixels relative to the centre; points outside
        the grid contribute nothing.
    groups : long tensor ``(n,)``, optional, which of the ``G`` grids each row goes to (default 0).
    """
    P = weights.shape[1]
    pos = (coords_px + Dp // 2).reshape(-1, 3)
    base_f = torch.floor(pos)
    frac = (pos - base_f).to(accum_weight.dtype)
    base = base_f.long()
    values = slices.reshape(-1).to(accum_ft.dtype)
    weights = weights.reshape(-1).to(accum_weight.dtype)
    # per axis: (flat index contribution, weight) of the lower and upper neighbour; invalid -> weight 0
    strides = (1, Dp, Dp * Dp)
    axis_terms = []
    for a in range(3):
        lo, hi = base[:, a], base[:, a] + 1
        w_lo = torch.where((lo >= 0) & (lo < Dp), 1 - frac[:, a], 0.0)
        w_hi = torch.where((hi >= 0) & (hi < Dp), frac[:, a], 0.0)
        axis_terms.append(
            ((lo.clamp(0, Dp - 1) * strides[a], w_lo), (hi.clamp(0, Dp - 1) * strides[a], w_hi))
        )
    if groups is not None:
        offset = (groups.to(pos.device).long() * Dp**3).repeat_interleave(P)
        axis_terms[2] = tuple((idx + offset, w) for idx, w in axis_terms[2])
    for iz, wz in axis_terms[2]:
        for iy, wy in axis_terms[1]:
            izy, wzy = iz + iy, wz * wy
            for ix, wx in axis_terms[0]:
                flat, w = izy + ix, wzy * wx
                accum_ft.index_add_(0, flat, values * w)
                accum_weight.index_add_(0, flat, weights * w)


def _check_inputs(images, rotations, shifts_px, ctf, ctf_correction):
    if ctf_correction not in _CORRECTIONS:
        raise InputError(f"unknown CTF correction {ctf_correction!r}", hint=f"use one of {', '.join(_CORRECTIONS)}")
    try:
        n = len(images)
    except TypeError as exc:
        raise InputError("images must be an array or an indexable stack with a length") from exc
    rotations = np.asarray(rotations, dtype=np.float32)
    shifts_px = np.asarray(shifts_px, dtype=np.float32)
    if rotations.shape != (n, 3, 3):
        raise InputError(f"rotations have shape {rotations.shape}, expected ({n}, 3, 3) for {n} images")
    if shifts_px.shape != (n, 2):
        raise InputError(f"shifts have shape {shifts_px.shape}, expected ({n}, 2) for {n} images")
    if ctf is not None:
        ctf = np.asarray(ctf, dtype=np.float32)
        if ctf.shape != (n, 9):
            raise InputError(f"CTF parameters have shape {ctf.shape}, expected ({n}, 9) for {n} images")
    return n, rotations, shifts_px, ctf


def backproject(
    images,
    rotations,
    shifts_px,
    ctf,
    pixel_size_angstrom: float,
    ctf_correction: str = "wiener",
    batch_size: int = 256,
    indices=None,
    progress: bool = True,
    oversample: int = 2,
    wiener_epsilon: float | None = None,
    device: str | torch.device | None = None,
) -> dict:
    """Reconstruct a volume and two half maps by Fourier gridding of posed, CTF-affected images.

    Parameters
    ----------
    images : array ``(N, D, D)`` or an object with ``__len__`` and ``__getitem__(index_array)`` returning
        float32 ``(n, D, D)`` arrays (e.g. a lazy particle stack).
    rotations : ``(N, 3, 3)`` RELION matrices ``A`` (volume -> image).
    shifts_px : ``(N, 2)`` RELION origins in pixels; each image is translated by ``+origin`` before insertion.
    ctf : ``(N, 9)`` CTF parameters in ``CTF_COLUMNS`` order, or ``None`` (then no CTF correction is done).
    pixel_size_angstrom : float.
    ctf_correction : ``"wiener"`` (insert ``CTF * F`` with weight ``CTF^2``), ``"flip"`` (insert
        ``sign(CTF) * F`` with weight 1) or ``"none"`` (insert ``F`` with weight 1).
    batch_size : int, images read and transformed at a time.
    indices : integer array, optional, the particles to use (default all); half maps split them by the parity
        of the particle index.
    progress : bool, show a tqdm progress bar.
    oversample : int, padding factor of images and Fourier grid (2 recommended).
    wiener_epsilon : float, optional, the regulariser added to the weights; default ``1e-3`` times the mean
        weight of the voxels inside the Nyquist sphere (small: suited to many images).
    device : torch device, optional (default CUDA when available, else CPU).

    Returns
    -------
    dict with ``"volume"``, ``"half_a"`` (even indices), ``"half_b"`` (odd indices): float32 ``(D, D, D)``
    numpy arrays, in the units of the images (a map whose projections, times the CTF, match the images).
    """
    n_total, rotations, shifts_px, ctf = _check_inputs(images, rotations, shifts_px, ctf, ctf_correction)
    if ctf is None:
        ctf_correction = "none"
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    indices = np.arange(n_total) if indices is None else np.asarray(indices, dtype=np.int64).ravel()
    if indices.size == 0:
        raise InputError("no particles selected for back-projection")
    if indices.min() < 0 or indices.max() >= n_total:
        raise InputError(f"particle indices out of range for a stack of {n_total} images")

    D = None
    Dp = None
    accum_ft = accum_w = None
    bar = tqdm(total=indices.size, desc="back-projecting", unit="img", disable=not progress)
    for start in range(0, indices.size, batch_size):
        idx = indices[start : start + batch_size]
        batch = np.asarray(images[idx], dtype=np.float32)
        if batch.ndim != 3 or batch.shape[0] != idx.size or batch.shape[1] != batch.shape[2]:
            raise InputError(f"images must be (n, D, D) square arrays, got a batch of shape {batch.shape}")
        if D is None:
            D = batch.shape[-1]
            Dp = int(oversample * D)
            Dp += Dp % 2
            pad = (Dp // 2 - D // 2, Dp - D - (Dp // 2 - D // 2)) * 2
            inside = circle_mask(Dp, Dp / 2, device=device).reshape(-1)  # frequencies below Nyquist of D
            k = torch.arange(Dp, device=device, dtype=torch.float32) - Dp // 2
            ky, kx = torch.meshgrid(k, k, indexing="ij")
            freqs_px = torch.stack([kx, ky], dim=-1).reshape(-1, 2)[inside]  # (P, 2) grid pixels
            accum_ft = torch.zeros(2 * Dp**3, dtype=torch.complex64, device=device)
            accum_w = torch.zeros(2 * Dp**3, dtype=torch.float32, device=device)
        elif batch.shape[-1] != D:
            raise InputError(f"images change size from {D} to {batch.shape[-1]} pixels within the stack")

        x = nnf.pad(torch.as_tensor(batch, device=device), pad)
        F = phase_shift(fft2_centered(x), torch.as_tensor(shifts_px[idx], device=device))
        F = F.reshape(idx.size, -1)[:, inside]
        if ctf_correction == "none":
            weights = torch.ones(F.shape, device=device)
        else:
            c = ctf_image(Dp, pixel_size_angstrom, torch.as_tensor(ctf[idx], device=device))
            c = c.reshape(idx.size, -1)[:, inside]
            if ctf_correction == "wiener":
                F, weights = F * c, c * c
            else:
                F, weights = F * torch.where(c < 0, -1.0, 1.0), torch.ones_like(c)
        rots = torch.as_tensor(rotations[idx], device=device)
        groups = torch.as_tensor(idx % 2, device=device)
        rows = max(1, _POINTS_PER_CHUNK // freqs_px.shape[0])
        for j in range(0, idx.size, rows):
            sl = slice(j, j + rows)
            coords = central_slice_coords(rots[sl], freqs_px)
            insert_slices(accum_ft, accum_w, Dp, F[sl], weights[sl], coords, groups[sl])
        bar.update(idx.size)
    bar.close()

    accum_ft = accum_ft.reshape(2, Dp, Dp, Dp)
    accum_w = accum_w.reshape(2, Dp, Dp, Dp)
    if wiener_epsilon is None:
        total = accum_w.sum(0)
        sphere = total > 0
        wiener_epsilon = 1e-3 * float(total[sphere].mean()) if bool(sphere.any()) else 1.0
    lo = Dp // 2 - D // 2
    # Gridding correction: trilinear splatting multiplies real space by sinc^2 along each axis of the
    # oversampled box; divide it out (halves the error of the cropped map in tests).
    r = torch.arange(D, device=device, dtype=torch.float32) - D // 2
    s = torch.sinc(r / Dp) ** 2
    kernel = s[:, None, None] * s[None, :, None] * s[None, None, :]

    def _volume(num: torch.Tensor, den: torch.Tensor) -> np.ndarray:
        vol = ifft3_centered(num / (den + wiener_epsilon)).real
        vol = vol[lo : lo + D, lo : lo + D, lo : lo + D] / kernel
        return vol.float().cpu().numpy()

    return {
        "volume": _volume(accum_ft.sum(0), accum_w.sum(0)),
        "half_a": _volume(accum_ft[0], accum_w[0]),
        "half_b": _volume(accum_ft[1], accum_w[1]),
    }
