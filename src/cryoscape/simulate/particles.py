"""The particle-image simulator: random poses, shifts and CTFs, projection, noise at a given SNR.

Image formation follows ``docs/conventions.md``::

    observed = translate(CTF * exp(-B s^2 / 4) * P_A[V], -origin) + noise

with ``P_A`` the oversampled Fourier projector (:func:`cryoscape.imaging.projection.project_fourier`), the CTF
applied on the centred ``D x D`` spectrum, frequencies outside the circle ``|k| < D/2`` set to zero (the
band the models describe), and white Gaussian noise of standard deviation ``sqrt(var(clean) / SNR)``. As in the
cryoDRGN paper, ``var(clean)`` is the variance over every pixel of every noise-free image of the whole
dataset (the whole ``D x D`` box, not a mask). The B-factor envelope damps the images but is *not* written to the
metadata (as in the paper's simulations, the reconstruction does not know it).

By default the CTF multiplies the ``D x D`` spectrum: a circular convolution, so the signal the CTF delocalises past
the box edge wraps back in (the image model of RELION's and cryoDRGN's reconstructions, of CryoBench's simulations
and of the decoders). With ``field`` > 1 each image is formed in a wider field and its central ``D x D`` window
is cut, as a particle is cut from a micrograph: that signal leaves the box and is lost (see ``form_images``).

With ``premultiply`` the final images (noise included) are multiplied by their CTF once more and the STAR file
says ``rlnCtfDataAreCtfPremultiplied 1`` (RELION's CTF-premultiplied images).

Particles are simulated state by state in chunks written straight into memory-mapped output stacks, so memory
stays bounded for any ``N``: pass 1 writes the clean images and accumulates their variance, pass 2 adds the
noise in place.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf

from cryoscape.errors import InputError
from cryoscape.imaging.ctf import ctf_image
from cryoscape.imaging.fft import fft2_centered, freq_grid_2d, ifft2_centered
from cryoscape.imaging.lattice import circle_mask
from cryoscape.imaging.projection import project_fourier
from cryoscape.imaging.rotations import random_rotations
from cryoscape.imaging.shift import phase_shift
from cryoscape.metadata import CTFParams, Poses
from cryoscape.simulate.volumes import StateSet

_PROJECTION_BYTES = 1 << 30

__all__ = [
    "form_images",
    "assign_states",
    "draw_ctf",
    "draw_origins_px",
    "SimulatedMetadata",
    "draw_metadata",
    "simulate_stack",
    "simulate_dataset",
    "premultiply_by_ctf",
]


def form_images(
    volume: torch.Tensor,
    rotations: torch.Tensor,
    origins_px: torch.Tensor,
    ctf: torch.Tensor | None,
    pixel_size_angstrom: float,
    bfactor_angstrom2: float = 0.0,
    oversample: int = 2,
    field: int = 1,
) -> torch.Tensor:
    """Noise-free particle images of one volume.

    Parameters
    ----------
    volume : real tensor ``(D, D, D)`` indexed ``[z, y, x]``.
    rotations : tensor ``(B, 3, 3)``, RELION matrices ``A``.
    origins_px : tensor ``(B, 2)``, RELION origins ``(x, y)`` in pixels; the image is translated by ``-origin``.
    ctf : tensor ``(B, 9)`` in ``CTF_COLUMNS`` order, or None for no CTF.
    pixel_size_angstrom : float.
    bfactor_angstrom2 : float, envelope ``exp(-B s^2 / 4)`` applied on top of the CTF.
    oversample : int, padding factor of the Fourier projector.
    field : int, the image is formed in a field ``field * D`` pixels wide (the volume zero-padded to it), and its
        central ``D x D`` window is kept, as a particle is cut from a micrograph: the CTF's point spread is a linear
        convolution whose delocalised signal leaves the box. ``1`` (default): the CTF is applied on the ``D x D``
        spectrum itself, a circular convolution that wraps that signal back into the box (the image model of
        RELION's and cryoDRGN's reconstructions and of CryoBench's simulations).

    Returns
    -------
    real tensor ``(B, D, D)`` (dtype and device of ``volume``), band-limited to ``|k| < D/2`` pixels (of the
    ``field * D`` spectrum before the window is cut).
    """
    D = volume.shape[-1]
    if int(field) < 1:
        raise InputError(f"the image field must be at least 1 box wide, got {field}")
    if field > 1:
        Df = int(field) * D
        lo = Df // 2 - D // 2  # the volume's centre D // 2 lands on the field's centre Df // 2
        volume = nnf.pad(volume, (lo, Df - D - lo) * 3)
    Df = volume.shape[-1]
    rotations = rotations.to(device=volume.device, dtype=volume.dtype)
    F = fft2_centered(project_fourier(volume, rotations, oversample=oversample, gridding_correction=True))
    transfer = circle_mask(Df, device=volume.device).to(volume.dtype)
    if bfactor_angstrom2:
        s2 = (freq_grid_2d(Df, device=volume.device, dtype=volume.dtype) ** 2).sum(-1) / pixel_size_angstrom**2
        transfer = transfer * torch.exp(-0.25 * float(bfactor_angstrom2) * s2)
    if ctf is not None:
        transfer = transfer * ctf_image(Df, pixel_size_angstrom, ctf.to(device=volume.device, dtype=volume.dtype))
    F = phase_shift(F * transfer, -origins_px.to(device=volume.device, dtype=volume.dtype))
    images = ifft2_centered(F).real
    if Df != D:
        lo = Df // 2 - D // 2
        images = images[..., lo : lo + D, lo : lo + D]
    return images


def premultiply_by_ctf(images: np.ndarray, ctf, pixel_size_angstrom: float, device: str = "cpu") -> np.ndarray:
    """``CTF x image`` of real-space images ``(B, D, D)`` (CTF parameters ``(B, 9)``, applied on the centred
    spectrum), as RELION / WarpTools write CTF-premultiplied images; float32 ``(B, D, D)``.
    """
    x = torch.as_tensor(np.asarray(images, dtype=np.float32), device=device)
    c = ctf_image(x.shape[-1], pixel_size_angstrom, torch.as_tensor(ctf).to(device=device, dtype=x.dtype))
    return ifft2_centered(fft2_centered(x) * c).real.cpu().numpy().astype(np.float32)


def assign_states(n: int, weights, rng: np.random.Generator) -> np.ndarray:
    """State of each of ``n`` particles, with counts exactly proportional to ``weights`` (largest remainder).

    Returns int64 ``(n,)`` in random order.
    """
    w = np.asarray(weights, dtype=np.float64)
    quota = n * w / w.sum()
    counts = np.floor(quota).astype(np.int64)
    remainder = n - counts.sum()
    counts[np.argsort(-(quota - counts), kind="stable")[:remainder]] += 1
    states = np.repeat(np.arange(len(w)), counts)
    return rng.permutation(states)


def draw_ctf(
    n: int,
    rng: np.random.Generator,
    defocus_range_um: tuple[float, float] = (1.0, 2.5),
    astigmatism_um: float = 0.05,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
) -> CTFParams:
    """Random CTF parameters: mean defocus uniform in ``defocus_range_um``, ``dfU - dfV`` uniform in
    ``[0, astigmatism_um]``, astigmatism angle uniform in ``[0, 180)`` degrees (B-factor 0, scale 1).
    """
    lo, hi = defocus_range_um
    mean = rng.uniform(lo, hi, n) * 1e4
    spread = rng.uniform(0.0, astigmatism_um, n) * 1e4
    angle = rng.uniform(0.0, 180.0, n)
    return CTFParams.create(mean + spread / 2, mean - spread / 2, angle, voltage_kv, cs_mm, amplitude_contrast)


def draw_origins_px(n: int, rng: np.random.Generator, max_shift_px: float) -> np.ndarray:
    """RELION origins ``(n, 2)`` in pixels, uniform in ``[-max_shift_px, max_shift_px]^2``."""
    return rng.uniform(-max_shift_px, max_shift_px, (n, 2))


@dataclass(frozen=True)
class SimulatedMetadata:
    """Ground truth of a simulated dataset: ``states (N,)`` int64, ``poses``, ``ctf`` (as written)."""

    states: np.ndarray
    poses: Poses
    ctf: CTFParams


def draw_metadata(
    n: int,
    states: StateSet,
    seed: int,
    max_shift_px: float = 3.0,
    defocus_range_um: tuple[float, float] = (1.0, 2.5),
    astigmatism_um: float = 0.05,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    ctf: bool = True,
) -> SimulatedMetadata:
    """Draw states, uniform SO(3) rotations, origins and CTFs for ``n`` particles, deterministically from ``seed``.

    Without ``ctf`` the CTF parameters are those of a perfect microscope (amplitude contrast 1, defocus 0), which
    evaluate to 1 everywhere.
    """
    rng = np.random.default_rng([seed, 0])
    labels = assign_states(n, states.weights, rng)
    rotations = random_rotations(n, rng)
    origins = draw_origins_px(n, rng, max_shift_px)
    if ctf:
        params = draw_ctf(n, rng, defocus_range_um, astigmatism_um, voltage_kv, cs_mm, amplitude_contrast)
    else:
        params = CTFParams.create(np.zeros(n), 0.0, 0.0, voltage_kv, 0.0, 1.0)
    poses = Poses(rotations, origins * states.pixel_size_angstrom)
    return SimulatedMetadata(labels, poses, params)


def simulate_stack(
    states: StateSet,
    meta: SimulatedMetadata,
    particles_out: np.ndarray,
    snr: float,
    seed: int,
    clean_out: np.ndarray | None = None,
    bfactor_angstrom2: float = 0.0,
    chunk_size: int = 500,
    on_state: Callable[[int, np.ndarray], None] | None = None,
    progress=None,
    device: str | torch.device = "cpu",
    field: int = 1,
) -> float:
    """Fill an output stack with simulated particle images.

    Parameters
    ----------
    states : the ground-truth objects.
    meta : per-particle states, poses and CTFs (:func:`draw_metadata`).
    particles_out : writable float32 array ``(N, D, D)`` (e.g. the memory map of an output ``.mrcs``).
    snr : float, ``var(clean) / var(noise)`` over the dataset; ``inf`` for no noise.
    seed : int, seeds the noise.
    clean_out : optional writable ``(N, D, D)`` array for the noise-free images.
    bfactor_angstrom2 : float, B-factor of the envelope applied to the images.
    chunk_size : int, images computed at once (bounds memory).
    on_state : optional callback ``(state, volume)`` called once per rendered map (e.g. to save it).
    progress : optional object with ``update(n)`` (e.g. a tqdm bar), advanced by images done (twice: clean, noise).
    device : torch device for the projections.
    field : int, images formed in a field ``field * D`` wide and cut to ``D`` (:func:`form_images`).

    Returns
    -------
    float, the noise standard deviation used (0 for ``snr = inf``).
    """
    N = len(meta.states)
    D, apix = states.D, states.pixel_size_angstrom
    # The Fourier projector currently holds one copy of the oversampled complex volume per image of a batch
    # (8 * (2D)^3 bytes each); cap the batch so that stays under about 1 GiB.
    proj_chunk = max(1, min(int(chunk_size), _PROJECTION_BYTES // (8 * (2 * D * int(field)) ** 3)))
    ctf_all = meta.ctf.to_array()
    origins_all = meta.poses.shifts_px(apix)
    total, total_sq = 0.0, 0.0
    for state in range(states.n_states):
        volume_np = states.render(state)
        if on_state is not None:
            on_state(state, volume_np)
        idx = np.nonzero(meta.states == state)[0]
        if idx.size == 0:
            continue
        volume = torch.as_tensor(volume_np, dtype=torch.float32, device=device)
        for start in range(0, idx.size, proj_chunk):
            sel = idx[start : start + proj_chunk]
            images = form_images(
                volume,
                torch.as_tensor(meta.poses.rotations[sel]),
                torch.as_tensor(origins_all[sel]),
                torch.as_tensor(ctf_all[sel]),
                apix,
                bfactor_angstrom2,
                field=field,
            ).cpu().numpy()
            particles_out[sel] = images
            if clean_out is not None:
                clean_out[sel] = images
            images64 = images.astype(np.float64)
            total += images64.sum()
            total_sq += (images64**2).sum()
            if progress is not None:
                progress.update(sel.size)
    n_px = N * D * D
    variance = total_sq / n_px - (total / n_px) ** 2
    noise_std = 0.0 if math.isinf(snr) else math.sqrt(max(variance, 0.0) / snr)
    noise_rng = np.random.default_rng([seed, 1])
    for start in range(0, N, chunk_size):
        stop = min(start + chunk_size, N)
        if noise_std > 0:
            noise = noise_rng.standard_normal((stop - start, D, D), dtype=np.float32)
            particles_out[start:stop] += noise_std * noise
        if progress is not None:
            progress.update(stop - start)
    return noise_std


def simulate_dataset(
    states: StateSet,
    n_particles: int,
    out_dir,
    snr: float = 0.1,
    seed: int = 0,
    max_shift_px: float = 3.0,
    defocus_range_um: tuple[float, float] = (1.0, 2.5),
    astigmatism_um: float = 0.05,
    bfactor_angstrom2: float = 0.0,
    ctf: bool = True,
    write_cs: bool = False,
    write_pkl: bool = False,
    write_clean: bool = False,
    chunk_size: int = 500,
    progress: bool | None = None,
    device: str = "cpu",
    premultiply: bool = False,
    field: int = 1,
) -> dict:
    """Simulate a dataset and write it to ``out_dir``.

    Writes ``particles.mrcs``, ``particles.star`` (RELION 3.1), ``gt/state_XXX.mrc`` (one per state, 0-based),
    ``labels.npz`` (``state`` int64 ``(N,)``, ``coordinate`` float32 ``(N,)``, ``preset`` str, per-state
    ``state_coordinates`` and ``state_weights``, plus per-particle copies of the set's extra labels, and
    ``noise_std``/``snr``), and optionally ``particles.cs``, ``pose.pkl`` + ``ctf.pkl`` and ``clean.mrcs``.

    Parameters
    ----------
    states : the ground-truth objects (see ``states_from_preset``, ``states_from_maps``, ``states_from_atomic``).
    n_particles : int, number of images ``N``.
    out_dir : output folder (created).
    snr, seed, max_shift_px, defocus_range_um, astigmatism_um, bfactor_angstrom2, ctf : see :func:`draw_metadata`
        and :func:`simulate_stack`.
    write_cs, write_pkl, write_clean : bool, also write the cryoSPARC / cryoDRGN metadata / noise-free images.
    chunk_size : int, images computed at once. progress : show a progress bar (None: only on a terminal).
    device : torch device for the projections.
    premultiply : bool, write CTF-premultiplied images (``CTF x (image + noise)``; ``clean.mrcs`` ``CTF x image``),
        flagged in ``particles.star``; needs ``ctf`` and excludes ``write_cs``/``write_pkl`` (which cannot record it).
    field : int, form each image in a field ``field * D`` wide and keep its central ``D x D`` window (the CTF's
        delocalised signal leaves the box, as in particles cut from micrographs); 1 (default): the circular model.

    Returns
    -------
    dict with ``noise_std`` and the paths written.
    """
    from pathlib import Path

    from tqdm.auto import tqdm

    from cryoscape.io.mrc import open_stack_for_writing, write_mrc
    from cryoscape.io.star import format_image_names, write_star
    from cryoscape.utils.atomic import atomic_path, check_writable_dir

    if premultiply and (not ctf or write_cs or write_pkl):
        raise InputError("CTF-premultiplied images need a CTF, and cannot be recorded in particles.cs or ctf.pkl",
                         hint="leave out --no-ctf, --cs and --pkl with --premultiply")
    if int(field) < 1:
        raise InputError(f"the image field must be at least 1 box wide, got {field}")
    out = check_writable_dir(Path(out_dir))
    n = int(n_particles)
    D, apix = states.D, states.pixel_size_angstrom
    meta = draw_metadata(n, states, seed, max_shift_px, defocus_range_um, astigmatism_um, ctf=ctf)
    written: dict[str, Any] = {}

    def save_state(state: int, volume: np.ndarray) -> None:
        written.setdefault("gt", []).append(write_mrc(out / "gt" / f"state_{state:03d}.mrc", volume, apix))

    bar = tqdm(total=(3 if premultiply else 2) * n, desc="simulating", unit="img",
               disable=None if progress is None else not progress)
    with contextlib.ExitStack() as stack:
        particles = stack.enter_context(open_stack_for_writing(out / "particles.mrcs", n, D, apix))
        clean = stack.enter_context(open_stack_for_writing(out / "clean.mrcs", n, D, apix)) if write_clean else None
        noise_std = simulate_stack(states, meta, particles, snr, seed, clean, bfactor_angstrom2, chunk_size,
                                   save_state, bar, device, field=field)
        if premultiply:
            ctf_all = meta.ctf.to_array()
            for start in range(0, n, chunk_size):
                stop = min(start + chunk_size, n)
                for stack_out in (particles, clean) if clean is not None else (particles,):
                    stack_out[start:stop] = premultiply_by_ctf(stack_out[start:stop], ctf_all[start:stop], apix,
                                                               device)
                bar.update(stop - start)
    bar.close()
    written["particles"] = out / "particles.mrcs"
    if write_clean:
        written["clean"] = out / "clean.mrcs"
    names = format_image_names(["particles.mrcs"] * n, np.arange(n))
    written["star"] = write_star(out / "particles.star", names, apix, D, meta.poses, meta.ctf,
                                 ctf_premultiplied=premultiply)
    if write_cs:
        from cryoscape.io.cs import write_cs as _write_cs

        written["cs"] = _write_cs(out / "particles.cs", ["particles.mrcs"] * n, np.arange(n), apix, D,
                                  meta.poses, meta.ctf, seed=seed)
    if write_pkl:
        from cryoscape.io.pkl import write_ctf_pkl, write_pose_pkl

        written["pose_pkl"] = write_pose_pkl(out / "pose.pkl", meta.poses, D, apix)
        written["ctf_pkl"] = write_ctf_pkl(out / "ctf.pkl", meta.ctf, D, apix)
    labels = {
        "state": meta.states.astype(np.int64),
        "coordinate": states.coordinates[meta.states].astype(np.float32),
        "preset": np.array(states.name),
        "state_coordinates": states.coordinates.astype(np.float32),
        "state_weights": states.weights.astype(np.float64),
        "snr": np.float64(snr),
        "noise_std": np.float64(noise_std),
        "field": np.int64(field),
    }
    for key, per_state in states.extra.items():
        labels[key] = np.asarray(per_state)[meta.states]
    with atomic_path(out / "labels.npz") as tmp:
        np.savez(tmp, **labels)
    written["labels"] = out / "labels.npz"
    written["noise_std"] = noise_std
    return written
