"""Direct Fourier reconstruction of a volume from posed particle images (voxel back-projection).

Each image is translated by its origin, zero-padded to ``oversample * D``, Fourier transformed and inserted as a
central slice (``[kx, ky, 0] @ A``) into an oversampled 3-D grid with trilinear weights ("splatting").
With Wiener CTF correction the grid accumulates ``sum CTF * F`` and ``sum CTF^2``, and the volume is
``sum CTF * F / (sum CTF^2 + epsilon)``: the least-squares solution of ``F_image = CTF * slice(F_volume)``,
regularised by ``epsilon``. CTF-premultiplied images (``P = CTF * F_image``, as RELION 5 / WarpTools write
sub-tomogram stacks) already carry one CTF factor: they are inserted as they are, still with weight ``CTF^2``,
which gives the same estimate ``sum CTF * F_image / (sum CTF^2 + epsilon)``. Half maps use even and odd particle
indices.

Memory. The volume is real, so its spectrum is Hermitian: the grids hold only the half ``kx >= 0``
(``(Dp/2 + 1) x Dp x Dp`` voxels stored ``[kx, z, y]``, complex64 data and float32 weights, one pair per half
map), exactly the ``kx >= 0`` part of the full grid. Images are read ``batch_size`` at a time, Fourier
transformed a few at a time and inserted in chunks of points; the inverse transform runs slab by slab and keeps
only the central ``D^3`` box. :func:`estimate_memory_bytes` gives the peak, and :func:`backproject` refuses
before allocating anything large when it exceeds ``max_memory_gb`` (default: the memory available on the
machine), naming the options that lower it (``oversample=1``, a smaller box).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as nnf
from tqdm.auto import tqdm

from cryoscape.errors import InputError
from cryoscape.imaging.ctf import ctf_image
from cryoscape.imaging.fft import fft2_centered
from cryoscape.imaging.lattice import central_slice_coords, circle_mask
from cryoscape.imaging.shift import phase_shift

__all__ = ["backproject", "insert_slices", "estimate_memory_bytes", "available_memory_bytes"]

_CORRECTIONS = ("wiener", "flip", "none")
_POINTS_PER_CHUNK = 1 << 21  # slice points splatted at once
_FFT_PIXELS = 1 << 23  # padded pixels Fourier transformed at once (images per transform = this // Dp**2)
_SLAB_BYTES = 1 << 26  # complex bytes of one slab of the inverse 3-D transform
_OVERHEAD_BYTES = 700 * 10**6  # interpreter, torch and libraries (measured: ~0.5 GB for D=24)
GB = 10**9


class NegatedImages:
    """A (lazy) image stack whose images are negated on reading (``--invert-data`` for back-projection)."""

    def __init__(self, images):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx):
        return -np.asarray(self.images[idx], dtype=np.float32)


def _padded_size(D: int, oversample) -> int:
    Dp = int(oversample * D)
    return Dp + Dp % 2


def _images_per_fft(Dp: int) -> int:
    return max(1, _FFT_PIXELS // (Dp * Dp))


def estimate_memory_bytes(D: int, oversample: int = 2, batch_size: int = 256) -> int:
    """Estimated peak memory (bytes, on the compute device plus the host's reading buffer) of :func:`backproject`.

    The two half-grid pairs (``2 * Dp^2 * (Dp/2 + 1) * 12`` bytes, ``Dp = oversample * D``) dominate; to them come
    the working memory of the transforms and splatting (bounded), the batch of images read at once, the three
    output volumes and a fixed allowance for the interpreter and libraries.
    """
    Dp = _padded_size(D, oversample)
    Dh = Dp // 2 + 1
    grids = 2 * Dp * Dp * Dh * (8 + 4)
    n_fft = min(_images_per_fft(Dp), batch_size)
    # padded images, spectrum, shifted spectrum, CTF, products, masked copies: ~48 bytes per padded pixel
    transform = n_fft * Dp * Dp * 48
    points = int(math.pi * Dp * Dp / 4)  # slice points per image
    splat = min(max(points, _POINTS_PER_CHUNK), n_fft * points) * 200  # coordinates, neighbours, weights, values
    reading = 2 * batch_size * D * D * 4
    slab = min(_SLAB_BYTES, Dh * Dp * Dp * 8)
    inverse = D * D * Dh * 8 + 4 * slab + 3 * D**3 * 4  # central rows, slab temporaries, three maps
    return int(grids + max(transform + splat + reading, inverse) + _OVERHEAD_BYTES)


def available_memory_bytes(device: str | torch.device = "cpu") -> int | None:
    """Memory available for a computation on ``device``: free GPU memory, or the host's ``MemAvailable`` (or what
    is left below a container's cgroup limit, when lower).

    ``None`` when it cannot be determined.
    """
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    available = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # a container's memory limit (cgroup v2), when lower
        with open("/sys/fs/cgroup/memory.max") as fh, open("/sys/fs/cgroup/memory.current") as cur:
            limit = fh.read().strip()
            if limit != "max":
                left = int(limit) - int(cur.read().strip())
                available = left if available is None else min(available, left)
    except (OSError, ValueError):
        pass
    return available


def _check_memory(D: int, oversample, batch_size: int, max_memory_gb: float | None, device: torch.device) -> None:
    limit: float | None
    if max_memory_gb is not None:
        # a budget for the whole process: compare the estimated peak
        limit, what, extra = float(max_memory_gb) * GB, "allowed by --max-memory-gb", 0
    else:
        # the memory available now: the process's interpreter and libraries are already loaded
        limit = available_memory_bytes(device)
        what = "free on the GPU" if device.type == "cuda" else "available on this machine"
        extra = _OVERHEAD_BYTES
        if limit is None:
            return

    def need(d: int, os_: int) -> int:
        return estimate_memory_bytes(d, os_, batch_size) - extra

    if need(D, oversample) <= limit:
        return
    options = []
    if oversample > 1 and need(D, 1) <= limit:
        options.append(f"pass --oversample 1 (about {need(D, 1) / GB:.1f} GB, slightly less accurate near Nyquist)")
    fits = [d for d in range(D - 2 + D % 2, 7, -2) if need(d, oversample) <= limit]
    if fits:
        options.append(f"downsample the particles to a box of {fits[0]} or less (cryoscape downsample -D {fits[0]})")
    options.append("or raise --max-memory-gb" if max_memory_gb is not None else
                   "or set --max-memory-gb if more memory is free than the system reports")
    more = " more" if extra else ""
    raise InputError(f"back-projecting {D}-pixel images with --oversample {oversample:g} needs about "
                     f"{need(D, oversample) / GB:.1f} GB{more} of memory, more than the {limit / GB:.1f} GB {what}",
                     hint="; ".join(options))


def _splat(accum_ft, accum_weight, sizes, strides, pos, values, weights, offset=None) -> None:
    """Trilinear splatting of ``values``/``weights`` at ``pos`` (``(M, 3)`` ``(x, y, z)`` grid indices).

    ``sizes`` and ``strides``: ``(x, y, z)`` extent and flat-index stride of each grid; ``offset`` (``(M,)`` long,
    optional) is added to the flat index of each point (the start of its grid among stacked grids). Neighbours
    outside the grid get weight 0.
    """
    base_f = torch.floor(pos)
    frac = (pos - base_f).to(accum_weight.dtype)
    base = base_f.long()
    del base_f
    axis_terms: list[tuple[tuple[torch.Tensor, torch.Tensor], ...]] = []
    for a in range(3):
        lo, hi = base[:, a], base[:, a] + 1
        w_lo = torch.where((lo >= 0) & (lo < sizes[a]), 1 - frac[:, a], 0.0)
        w_hi = torch.where((hi >= 0) & (hi < sizes[a]), frac[:, a], 0.0)
        axis_terms.append(
            ((lo.clamp(0, sizes[a] - 1) * strides[a], w_lo), (hi.clamp(0, sizes[a] - 1) * strides[a], w_hi))
        )
    del base, frac
    if offset is not None:
        axis_terms[2] = tuple((idx + offset, w) for idx, w in axis_terms[2])
    values = values.to(accum_ft.dtype)
    weights = weights.to(accum_weight.dtype)
    for iz, wz in axis_terms[2]:
        for iy, wy in axis_terms[1]:
            izy, wzy = iz + iy, wz * wy
            for ix, wx in axis_terms[0]:
                flat, w = izy + ix, wzy * wx
                accum_ft.index_add_(0, flat, values * w)
                accum_weight.index_add_(0, flat, weights * w)


def insert_slices(
    accum_ft: torch.Tensor,
    accum_weight: torch.Tensor,
    Dp: int,
    slices: torch.Tensor,
    weights: torch.Tensor,
    coords_px: torch.Tensor,
    groups: torch.Tensor | None = None,
    half: bool = False,
) -> None:
    """Splat values into flattened centred 3-D grids with trilinear weights (in place).

    Parameters
    ----------
    accum_ft : complex tensor ``(G * Dp**3,)``, ``G`` stacked flattened ``(Dp, Dp, Dp)`` grids ``[z, y, x]``
        (with ``half``: ``(G * (Dp // 2 + 1) * Dp * Dp,)``, grids ``(Dp // 2 + 1, Dp, Dp)`` ``[x, z, y]`` holding
        ``kx >= 0``, so that planes of constant ``kx`` are contiguous).
    accum_weight : real tensor of the same length, the matching weight grids.
    Dp : int, side of each grid; the centre (zero frequency) is at index ``Dp // 2`` (with ``half``, the ``x``
        axis starts at zero frequency, index 0).
    slices : complex tensor ``(n, P)``, values to insert.
    weights : real tensor ``(n, P)``, weights to insert.
    coords_px : real tensor ``(n, P, 3)``, ``(x, y, z)`` in grid pixels relative to the centre; points outside
        the grid contribute nothing (with ``half`` the grids are exactly the ``kx >= 0`` part of full grids:
        insert whole Hermitian slices; the points with ``kx <= -1`` are dropped).
    groups : long tensor ``(n,)``, optional, which of the ``G`` grids each row goes to (default 0).
    half : bool, grids of the Hermitian half ``kx >= 0`` instead of full grids.
    """
    P = weights.shape[1]
    if half:  # [x, z, y] layout
        sizes, strides = (Dp // 2 + 1, Dp, Dp), (Dp * Dp, 1, Dp)
    else:  # [z, y, x]
        sizes, strides = (Dp, Dp, Dp), (1, Dp, Dp * Dp)
    centre = torch.tensor([0 if half else Dp // 2, Dp // 2, Dp // 2], dtype=coords_px.dtype,
                          device=coords_px.device)
    pos = (coords_px + centre).reshape(-1, 3)
    values, weights = slices.reshape(-1), weights.reshape(-1)
    offset = None
    if groups is not None:
        offset = (groups.to(pos.device).long() * math.prod(sizes)).repeat_interleave(P)
    if half:
        keep = pos[:, 0] > -1
        pos, values, weights = pos[keep], values[keep], weights[keep]
        offset = None if offset is None else offset[keep]
    _splat(accum_ft, accum_weight, sizes, strides, pos, values, weights, offset)


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


class _Grids:
    """The two Hermitian-half grid pairs (even / odd particles) and what inserting one batch needs."""

    def __init__(self, D: int, oversample, device: torch.device):
        self.D, self.device = D, device
        self.Dp = Dp = _padded_size(D, oversample)
        self.Dh = Dp // 2 + 1
        self.pad = (Dp // 2 - D // 2, Dp - D - (Dp // 2 - D // 2)) * 2
        self.inside = circle_mask(Dp, Dp / 2, device=device).reshape(-1)  # frequencies below Nyquist of D
        k = torch.arange(Dp, device=device, dtype=torch.float32) - Dp // 2
        ky, kx = torch.meshgrid(k, k, indexing="ij")
        self.freqs_px = torch.stack([kx, ky], dim=-1).reshape(-1, 2)[self.inside]  # (P, 2) grid pixels
        self.ft = torch.zeros(2 * Dp * Dp * self.Dh, dtype=torch.complex64, device=device)
        self.w = torch.zeros(2 * Dp * Dp * self.Dh, dtype=torch.float32, device=device)

    def insert(self, batch, idx, rotations, shifts_px, ctf, pixel_size_angstrom, ctf_correction, premultiplied,
               particle_weights=None):
        """Transform and insert the images ``batch`` (numpy ``(n, D, D)``) of particles ``idx``."""
        device, Dp = self.device, self.Dp
        x = nnf.pad(torch.as_tensor(batch, device=device), self.pad)
        F = phase_shift(fft2_centered(x), torch.as_tensor(shifts_px[idx], device=device))
        del x
        F = F.reshape(idx.size, -1)[:, self.inside]
        if ctf_correction == "none" or (premultiplied and ctf_correction == "flip"):
            # premultiplied images already hold CTF * image: phase-flipped and CTF-weighted once
            weights = torch.ones(F.shape, device=device)
        else:
            c = ctf_image(Dp, pixel_size_angstrom, torch.as_tensor(ctf[idx], device=device))
            c = c.reshape(idx.size, -1)[:, self.inside]
            if ctf_correction == "wiener":
                # sum CTF * F / sum CTF^2; a premultiplied image is CTF * F already
                F, weights = (F if premultiplied else F * c), c * c
            else:
                F, weights = F * torch.where(c < 0, -1.0, 1.0), torch.ones_like(c)
            del c
        if particle_weights is not None:  # kernel weights: scale both the data and the weights of each image
            pw = torch.as_tensor(particle_weights[idx], dtype=torch.float32, device=device)[:, None]
            F, weights = F * pw, weights * pw
        rots = torch.as_tensor(rotations[idx], device=device)
        groups = torch.as_tensor(idx % 2, device=device)
        rows = max(1, _POINTS_PER_CHUNK // self.freqs_px.shape[0])
        for j in range(0, idx.size, rows):
            sl = slice(j, j + rows)
            coords = central_slice_coords(rots[sl], self.freqs_px)
            insert_slices(self.ft, self.w, Dp, F[sl], weights[sl], coords, groups[sl], half=True)

    def wiener_epsilon(self) -> float:
        """``1e-3`` times the mean total weight of the voxels that received data, counted over the full grid."""
        Dp, Dh = self.Dp, self.Dh
        w = self.w.reshape(2, Dh, Dp, Dp)
        total = count = total0 = count0 = 0.0
        step = max(1, (_SLAB_BYTES // 2) // (Dp * Dp * 4))
        for x in range(0, Dh, step):
            t = w[0, x : x + step] + w[1, x : x + step]
            m = t > 0
            total += float(t[m].sum(dtype=torch.float64))
            count += int(m.sum())
            if x == 0:  # the kx = 0 plane
                total0 += float(t[0][m[0]].sum(dtype=torch.float64))
                count0 += int(m[0].sum())
        # the half grid holds kx >= 0; the full grid has every kx > 0 voxel twice (its Hermitian mate)
        count_full = 2 * count - count0
        return 1e-3 * (2 * total - total0) / count_full if count_full > 0 else 1.0

    def volume(self, groups: tuple[int, ...], epsilon: float) -> np.ndarray:
        """Real-space ``(D, D, D)`` map of ``sum num / (sum weight + epsilon)`` over ``groups``, gridding-corrected.

        Inverse 2-D transforms over ``(z, y)`` of slabs of contiguous ``kx`` planes, keeping the central ``D x D``
        rows, then the Hermitian (complex-to-real) transform along ``x``: the full ``Dp^3`` map is never formed.
        """
        D, Dp, Dh, device = self.D, self.Dp, self.Dh, self.device
        num = self.ft.reshape(2, Dh, Dp, Dp)
        den = self.w.reshape(2, Dh, Dp, Dp)
        h = D // 2

        def centre(t: torch.Tensor, dim: int) -> torch.Tensor:
            # the central D indices of fftshift(t) along dim, without shifting all Dp of them
            return torch.cat([t.narrow(dim, Dp - h, h), t.narrow(dim, 0, D - h)], dim)

        # ifft of ifftshift(F) equals (-1)^n times the ifft of F (Dp is even): apply it to the kept rows only
        sign = 1.0 - 2.0 * (torch.arange(D, device=device) - h).remainder(2).float()
        sign2 = (sign[:, None] * sign[None, :]).to(torch.complex64)
        rows = torch.empty((Dh, D, D), dtype=torch.complex64, device=device)  # [kx, z, y]
        step = max(1, _SLAB_BYTES // (Dp * Dp * 8))
        for x0 in range(0, Dh, step):
            xs = slice(x0, x0 + step)
            n = num[groups[0], xs].clone() if len(groups) > 1 else num[groups[0], xs]
            d = den[groups[0], xs].clone() if len(groups) > 1 else den[groups[0], xs]
            for g in groups[1:]:
                n += num[g, xs]
                d += den[g, xs]
            slab = torch.fft.ifft2(n / (d + epsilon), dim=(1, 2))
            del n, d
            rows[xs] = centre(centre(slab, 1), 2) * sign2
            del slab
        r = torch.arange(D, device=device, dtype=torch.float32) - h
        # Gridding correction: trilinear splatting multiplies real space by sinc^2 along each axis of the
        # oversampled box; divide it out (halves the error of the cropped map in tests).
        s = torch.sinc(r / Dp) ** 2
        vol = np.empty((D, D, D), dtype=np.float32)
        step = max(1, _SLAB_BYTES // (D * Dp * 4))
        for z0 in range(0, D, step):
            zs = slice(z0, z0 + step)
            line = centre(torch.fft.irfft(rows[:, zs], n=Dp, dim=0), 0)  # [x, z, y]
            line = line.permute(1, 2, 0) / (s[zs, None, None] * s[None, :, None] * s[None, None, :])
            vol[zs] = line.float().cpu().numpy()
        return vol


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
    ctf_premultiplied: bool = False,
    max_memory_gb: float | None = None,
    particle_weights=None,
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
    batch_size : int, images read at a time (they are Fourier transformed a few at a time).
    indices : integer array, optional, the particles to use (default all); half maps split them by the parity
        of the particle index.
    progress : bool, show a tqdm progress bar.
    oversample : int, padding factor of images and Fourier grid. 2 (default): each image is zero-padded before
        the CTF correction, the adjoint of cutting a particle from a micrograph (the CTF's delocalised signal has
        left the box); 1: the CTF acts on the box's own spectrum, which is exact for images formed that way (the
        circular model of cryoDRGN's and CryoBench's simulations, and of ``simulate`` without ``field``) and
        needs about 8 times less memory. On particles cut from a wider field 2 reconstructs better; on circular
        simulations with delocalisation comparable to the box 1 does (``bench/RESULTS.md`` section 10d).
    wiener_epsilon : float, optional, the regulariser added to the weights; default ``1e-3`` times the mean
        weight of the voxels inside the Nyquist sphere (small: suited to many images).
    device : torch device, optional (default CUDA when available, else CPU).
    ctf_premultiplied : bool, the images hold ``CTF * image`` (``rlnCtfDataAreCtfPremultiplied 1``). Wiener:
        the image is inserted as it is (it carries the one CTF factor of the numerator) with weight ``CTF^2``;
        ``"flip"`` and ``"none"``: inserted as it is with weight 1 (its phases are already corrected).
    max_memory_gb : float, optional, refuse (:class:`InputError`, naming the estimate and the options that
        lower it) when :func:`estimate_memory_bytes` exceeds this many GB (10^9 bytes); default the memory
        available on the device (host ``MemAvailable`` or free GPU memory).
    particle_weights : ``(N,)`` non-negative weights, optional: image ``i`` enters both the numerator and the
        weights of the grid multiplied by ``particle_weights[i]`` (a weighted least-squares estimate, e.g. the
        kernel weights of latent-neighbour reconstruction); default all 1.

    Returns
    -------
    dict with ``"volume"``, ``"half_a"`` (even indices), ``"half_b"`` (odd indices): float32 ``(D, D, D)``
    numpy arrays, in the units of the images (a map whose projections, times the CTF, match the images).
    """
    n_total, rotations, shifts_px, ctf = _check_inputs(images, rotations, shifts_px, ctf, ctf_correction)
    if ctf is None:
        ctf_correction = "none"
    if oversample < 1:
        raise InputError(f"oversampling must be at least 1, got {oversample}")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    indices = np.arange(n_total) if indices is None else np.asarray(indices, dtype=np.int64).ravel()
    if indices.size == 0:
        raise InputError("no particles selected for back-projection")
    if indices.min() < 0 or indices.max() >= n_total:
        raise InputError(f"particle indices out of range for a stack of {n_total} images")
    if particle_weights is not None:
        particle_weights = np.asarray(particle_weights, dtype=np.float32).ravel()
        if particle_weights.shape != (n_total,) or not np.all(np.isfinite(particle_weights)) or \
                particle_weights.min() < 0:
            raise InputError(f"particle weights must be {n_total} finite non-negative numbers")

    grids = None
    bar = tqdm(total=indices.size, desc="back-projecting", unit="img", disable=not progress)
    for start in range(0, indices.size, batch_size):
        idx = indices[start : start + batch_size]
        batch = np.asarray(images[idx], dtype=np.float32)
        if batch.ndim != 3 or batch.shape[0] != idx.size or batch.shape[1] != batch.shape[2]:
            raise InputError(f"images must be (n, D, D) square arrays, got a batch of shape {batch.shape}")
        if grids is None:
            _check_memory(batch.shape[-1], oversample, batch_size, max_memory_gb, device)
            grids = _Grids(batch.shape[-1], oversample, device)
        elif batch.shape[-1] != grids.D:
            raise InputError(f"images change size from {grids.D} to {batch.shape[-1]} pixels within the stack")
        step = _images_per_fft(grids.Dp)
        for j in range(0, idx.size, step):
            grids.insert(batch[j : j + step], idx[j : j + step], rotations, shifts_px, ctf, pixel_size_angstrom,
                         ctf_correction, ctf_premultiplied, particle_weights)
        del batch
        bar.update(idx.size)
    bar.close()
    assert grids is not None  # at least one particle (checked above)

    if wiener_epsilon is None:
        wiener_epsilon = grids.wiener_epsilon()
    return {
        "volume": grids.volume((0, 1), wiener_epsilon),
        "half_a": grids.volume((0,), wiener_epsilon),
        "half_b": grids.volume((1,), wiener_epsilon),
    }
