"""Simulated cryo-ET tilt series of particles (as in tomoDRGN's Methods, "Simulated dataset generation").

Each particle gets a random pose ``A_p`` (uniform on SO(3)) and sits in a tomogram whose tilt series follows a
dose-symmetric scheme (Hagen et al. 2017): 0, then +step, then groups of two alternating sides
(-step, -2 step, +2 step, +3 step, ...) up to +-max; 41 tilts for +-60 in 3 degree steps. The stage tilt rotates the
specimen about the image y axis, ``R_tilt = Ry(theta)`` as a RELION matrix, and the image of tilt ``t`` has pose
``R_tilt @ A_p``. Image formation, per tilt image::

    image = translate(CTF * exp(-N / (2 Ne(k))) * cos(tilt) * P[V], -origin) + noise

* exposure ``N`` = (acquisition index + 1/2) x dose per tilt (3 e/A^2 by default): the cumulative exposure up to
  the middle of the image (cryoscape's convention, ``docs/tomography.md``);
* defocus: a mean per tomogram (uniform in the range), a per-tilt jitter, plus the particle's depth in the tilted
  frame (``df = df_tilt + hand * depth`` with hand -1, RELION's convention), so each particle's defocus varies
  around its own mean;
* the 3-D origin ``o`` (Angstrom, RELION's ``rlnOriginX/Y/ZAngst``) appears in each image as ``(R_tilt @ o)_xy``;
* white Gaussian noise with ``var(noise) = var(clean) / SNR`` over the whole data set (the paper adds structural
  and shot noise separately; one noise term at the final SNR is used here);
* with ``premultiply``, each final (noisy) image is multiplied by its CTF once more, as WarpTools and RELION 5
  extract 2-D stacks by default, and the STAR files say ``rlnCtfDataAreCtfPremultiplied 1``.

Optionally some tilts of each particle are dropped (variable tilt counts). Written: ``particles.mrcs`` (all images,
particle by particle), ``particles.star`` (Warp/M image series), ``particles_volumeseries.star`` (one row per
particle: tomogram, 3-D coordinates, pose), ``labels.npz`` and ``gt/state_XXX.mrc`` (the layout of ``cryoscape
simulate``, so ``cryoscape evaluate`` works) and, on request, a RELION 5 optimisation set with one 2-D stack per
particle in ``stacks/``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryoscape.imaging.ctf import CTFTensors, ctf_image
from cryoscape.imaging.dose import dose_weights
from cryoscape.imaging.fft import fft2_centered, fft3_centered, freq_grid_2d, ifft2_centered
from cryoscape.imaging.lattice import central_slice_coords, circle_mask
from cryoscape.imaging.projection import sample_volume
from cryoscape.imaging.rotations import euler_relion_to_matrix, random_rotations
from cryoscape.imaging.shift import phase_shift
from cryoscape.metadata import CTFParams
from cryoscape.simulate.particles import assign_states, premultiply_by_ctf
from cryoscape.simulate.volumes import StateSet, blob_sigma_px, render_gaussians

__all__ = ["SIZES", "dose_symmetric_tilts", "tilt_rotation", "tilt4_states", "TiltMetadata", "draw_tilt_metadata",
           "form_tilt_images", "simulate_tilt_dataset"]

#: ``--size`` presets of ``cryoscape simulate-tilt``.
SIZES = {
    "tiny": {"n_particles": 20, "D": 16, "apix": 10.0, "tilt_max": 15.0, "snr": 1.0},
    "benchmark": {"n_particles": 4000, "D": 64, "apix": 4.0, "tilt_max": 60.0, "snr": 0.1},
}


def dose_symmetric_tilts(max_deg: float = 60.0, step_deg: float = 3.0, group: int = 2) -> np.ndarray:
    """Stage tilts in degrees in acquisition order: 0, +step, then ``group`` at a time alternating sides.

    ``(2 * round(max / step) + 1,)``; e.g. ``0, 3, -3, -6, 6, 9, -9, -12, ...`` for the defaults.
    """
    n = int(round(max_deg / step_deg))
    pos = [step_deg * i for i in range(1, n + 1)]
    neg = [-step_deg * i for i in range(1, n + 1)]
    order = [0.0] + pos[:1]
    pos = pos[1:]
    side = neg
    while pos or neg:
        take, side[:] = side[:group], side[group:]
        order += take
        side = pos if side is neg else neg
    return np.asarray(order, dtype=np.float64)


def tilt_rotation(tilt_deg) -> np.ndarray:
    """RELION matrices ``(F, 3, 3)`` of stage tilts about the image y axis (tomogram -> image frame)."""
    t = np.atleast_1d(np.asarray(tilt_deg, dtype=np.float64))
    return euler_relion_to_matrix(np.stack([np.zeros_like(t), t, np.zeros_like(t)], axis=1))


def _grid(center, extent, n) -> np.ndarray:
    axes = [np.linspace(c - e, c + e, k) if k > 1 else np.array([c]) for c, e, k in zip(center, extent, n, strict=True)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def tilt4_states(D: int, pixel_size_angstrom: float, resolution_angstrom: float | None = None) -> StateSet:
    """Preset ``tilt4``: four compositionally different states (core; +A; +A+B; +A+B+C), equal populations.

    Like the LSU assembly intermediates of the tomoDRGN paper, each state adds a subunit to the previous one. Blobs
    of width ``max(1, 0.035 D)`` px at positions given in box fractions (so any ``D`` works), unit peak height.
    """
    core = np.concatenate([_grid((0.0, 0.0, 0.0), (0.14, 0.07, 0.07), (5, 3, 3)), [[0.21, -0.07, 0.07]]])
    sub_a = _grid((0.035, 0.175, 0.0), (0.105, 0.035, 0.035), (4, 2, 2))  # blobs 2 sigma (0.07 D) apart
    sub_b = _grid((-0.245, -0.035, 0.0), (0.035, 0.035, 0.07), (2, 2, 3))
    sub_c = _grid((0.105, -0.07, 0.175), (0.035, 0.035, 0.035), (2, 2, 2))
    parts = [core, np.concatenate([core, sub_a]), np.concatenate([core, sub_a, sub_b]),
             np.concatenate([core, sub_a, sub_b, sub_c])]
    sigma_px = blob_sigma_px(D)
    weight = (2 * math.pi) ** 1.5 * sigma_px**3

    def render(state: int) -> np.ndarray:
        return render_gaussians(parts[state] * D * pixel_size_angstrom, sigma_px * pixel_size_angstrom, weight, D,
                                pixel_size_angstrom, resolution_angstrom)

    return StateSet("tilt4", int(D), float(pixel_size_angstrom), render, np.arange(4) / 3.0, np.ones(4))


@dataclass
class TiltMetadata:
    """Ground truth of a simulated tilt-series data set (``N`` particles, ``M`` images, ``F`` tilts per series).

    Per particle: ``states``, ``tomogram`` (index), ``names``, ``rotations`` ``(N, 3, 3)`` (pose in the tomogram),
    ``centres_angstrom`` ``(N, 3)`` (relative to the tomogram centre), ``origins_angstrom`` ``(N, 3)``,
    ``visible`` ``(N, F)`` bool. Per tomogram: ``tilts_deg`` ``(F,)`` (shared), ``defocus_angstrom`` ``(T, F)`` (mean
    of U and V), ``astigmatism_angstrom`` (U - V) and ``astigmatism_angle_deg`` ``(T,)``.
    Per image (particle by particle, tilts in acquisition order): ``image_particle``, ``image_frame``,
    ``image_rotations``, ``image_origins_angstrom`` ``(M, 2)``, ``ctf``, ``exposure`` ``(M,)``, ``tilt_deg``.
    """

    states: np.ndarray
    tomogram: np.ndarray
    names: np.ndarray
    rotations: np.ndarray
    centres_angstrom: np.ndarray
    origins_angstrom: np.ndarray
    visible: np.ndarray
    tilts_deg: np.ndarray
    defocus_angstrom: np.ndarray
    astigmatism_angstrom: np.ndarray
    astigmatism_angle_deg: np.ndarray
    dose_per_tilt: float
    tomogram_size_px: tuple
    image_particle: np.ndarray
    image_frame: np.ndarray
    image_rotations: np.ndarray
    image_origins_angstrom: np.ndarray
    ctf: CTFParams
    exposure: np.ndarray
    tilt_deg: np.ndarray
    hand: float = -1.0


def draw_tilt_metadata(n: int, states: StateSet, seed: int, tilts_deg: np.ndarray, dose_per_tilt: float = 3.0,
                       n_tomograms: int | None = None, defocus_range_um: tuple[float, float] = (1.5, 3.5),
                       defocus_jitter_um: float = 0.1, astigmatism_um: float = 0.0, max_shift_px: float = 2.0,
                       drop_tilts: int = 0, voltage_kv: float = 300.0, cs_mm: float = 2.7,
                       amplitude_contrast: float = 0.1) -> TiltMetadata:
    """Draw states, poses, positions, tomograms and per-tilt CTFs, deterministically from ``seed``.

    ``drop_tilts``: each particle loses a uniform random number in ``[0, drop_tilts]`` of its tilts other than the
    first (0 degree) one. Tomograms: ``n_tomograms`` (default one per 50 particles), ``16 D x 16 D x 6 D`` pixels.
    """
    rng = np.random.default_rng([seed, 11])
    D, apix = states.D, states.pixel_size_angstrom
    F = len(tilts_deg)
    T = int(n_tomograms or max(1, math.ceil(n / 50)))
    labels = assign_states(n, states.weights, rng)
    tomo = rng.integers(0, T, n)
    rotations = random_rotations(n, rng)
    size_px = (16 * D, 16 * D, 6 * D)
    half = 0.4 * np.asarray(size_px, np.float64) * apix
    centres = rng.uniform(-half, half, (n, 3))
    origins = rng.uniform(-max_shift_px, max_shift_px, (n, 3)) * apix
    mean_df = rng.uniform(*defocus_range_um, T) * 1e4
    df_tilt = mean_df[:, None] + rng.normal(0.0, defocus_jitter_um * 1e4, (T, F))
    astig = rng.uniform(0.0, astigmatism_um, T) * 1e4
    astig_angle = rng.uniform(0.0, 180.0, T)
    visible = np.ones((n, F), bool)
    if drop_tilts:
        for i, k in enumerate(rng.integers(0, min(drop_tilts, F - 1) + 1, n)):
            visible[i, 1 + rng.choice(F - 1, size=k, replace=False)] = False
    R = tilt_rotation(tilts_deg)
    p_img, f_img = np.nonzero(visible)
    hand = -1.0
    depth = np.einsum("mj,mj->m", R[f_img, 2], centres[p_img])
    df = df_tilt[tomo[p_img], f_img] + hand * depth
    ta = astig[tomo[p_img]]
    ctf = CTFParams.create(df + ta / 2, df - ta / 2, astig_angle[tomo[p_img]], voltage_kv, cs_mm, amplitude_contrast)
    names = np.array([f"TS_{tomo[i] + 1:03d}_{i + 1:06d}" for i in range(n)], dtype=object)
    return TiltMetadata(labels, tomo, names, rotations, centres, origins, visible, np.asarray(tilts_deg, float),
                        df_tilt, astig, astig_angle, float(dose_per_tilt), size_px, p_img, f_img,
                        R[f_img] @ rotations[p_img],
                        np.einsum("mij,mj->mi", R[f_img], origins[p_img])[:, :2], ctf,
                        (f_img + 0.5) * dose_per_tilt, np.asarray(tilts_deg, float)[f_img], hand)


def _padded_spectrum(volume: torch.Tensor, oversample: int = 2) -> torch.Tensor:
    """Centred 3-D spectrum of the volume zero-padded to ``oversample * D``, gridding-corrected for trilinear
    slicing (as :func:`cryoscape.imaging.projection.project_fourier` with ``gridding_correction=True``).
    """
    D = volume.shape[-1]
    Dp = oversample * D
    i = torch.arange(D, device=volume.device, dtype=volume.dtype) - D // 2
    s = torch.sinc(i / Dp) ** 2
    v = volume / (s[:, None, None] * s[None, :, None] * s[None, None, :])
    start = Dp // 2 - D // 2
    return fft3_centered(torch.nn.functional.pad(v, (start, Dp - D - start) * 3))


def form_tilt_images(spectrum: torch.Tensor, D: int, rotations: torch.Tensor, origins_px: torch.Tensor,
                     ctf: torch.Tensor, exposure: torch.Tensor, tilt_deg: torch.Tensor,
                     pixel_size_angstrom: float) -> torch.Tensor:
    """Noise-free tilt images ``(B, D, D)`` of one volume (see the module docstring).

    Parameters
    ----------
    spectrum : complex ``(Dp, Dp, Dp)`` from :func:`_padded_spectrum` (shared by all images).
    rotations : ``(B, 3, 3)`` image poses; origins_px : ``(B, 2)``; ctf : ``(B, 9)``; exposure : ``(B,)`` e/A^2;
    tilt_deg : ``(B,)``.
    """
    Dp = spectrum.shape[-1]
    B = rotations.shape[0]
    k = torch.arange(Dp, device=spectrum.device, dtype=torch.float32) - Dp // 2
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    coords = central_slice_coords(rotations.float().to(spectrum.device), torch.stack([kx, ky], -1).reshape(-1, 2))
    slices = sample_volume(spectrum, coords.reshape(1, -1, 3)).reshape(B, Dp, Dp)
    start = Dp // 2 - D // 2
    images = ifft2_centered(slices).real[..., start : start + D, start : start + D]
    dev, dt = images.device, images.dtype
    s = freq_grid_2d(D, device=dev, dtype=dt).norm(dim=-1) / pixel_size_angstrom
    transfer = circle_mask(D, device=dev).to(dt) * ctf_image(D, pixel_size_angstrom, ctf.to(device=dev, dtype=dt))
    voltage = CTFTensors.of(ctf).voltage.to(dev, dt)
    transfer = transfer * dose_weights(s, exposure.to(dev, dt)[:, None, None], voltage[:, None, None])
    transfer = transfer * torch.cos(torch.deg2rad(tilt_deg.to(dev, dt)))[:, None, None]
    F = phase_shift(fft2_centered(images) * transfer, -origins_px.to(dev, dt))
    return ifft2_centered(F).real


def simulate_tilt_dataset(states: StateSet, n_particles: int, out_dir, snr: float = 0.1, seed: int = 0,
                          tilt_max_deg: float = 60.0, tilt_step_deg: float = 3.0, tilt_group: int = 2,
                          dose_per_tilt: float = 3.0, optimisation_set: bool = False, chunk_size: int = 512,
                          device: str = "cpu", progress: bool | None = None, premultiply: bool = False,
                          **metadata_options) -> dict:
    """Simulate a tilt-series data set and write it to ``out_dir`` (see the module docstring for the files).

    ``metadata_options`` go to :func:`draw_tilt_metadata` (``n_tomograms``, ``defocus_range_um``,
    ``defocus_jitter_um``, ``astigmatism_um``, ``max_shift_px``, ``drop_tilts``, ``voltage_kv``, ...).
    ``premultiply``: write CTF-premultiplied images (``CTF x (image + noise)``), flagged in the STAR files.
    Returns a dict with ``noise_std``, ``metadata`` and the paths written.
    """
    from tqdm.auto import tqdm

    from cryoscape.io.mrc import open_stack_for_writing, write_mrc
    from cryoscape.io.tilt_series import write_image_series_star
    from cryoscape.utils.atomic import atomic_path, check_writable_dir

    out = check_writable_dir(Path(out_dir))
    D, apix = states.D, states.pixel_size_angstrom
    tilts = dose_symmetric_tilts(tilt_max_deg, tilt_step_deg, tilt_group)
    meta = draw_tilt_metadata(int(n_particles), states, seed, tilts, dose_per_tilt, **metadata_options)
    M = len(meta.exposure)
    ctf_all = torch.as_tensor(meta.ctf.to_array())
    written: dict = {"gt": []}
    total, total_sq = 0.0, 0.0
    bar = tqdm(total=(3 if premultiply else 2) * M, desc="simulating tilt images", unit="img",
               disable=None if progress is None else not progress)
    with contextlib.ExitStack() as stack:
        images = stack.enter_context(open_stack_for_writing(out / "particles.mrcs", M, D, apix))
        for state in range(states.n_states):
            vol = states.render(state)
            written["gt"].append(write_mrc(out / "gt" / f"state_{state:03d}.mrc", vol, apix))
            rows = np.flatnonzero(meta.states[meta.image_particle] == state)
            if rows.size == 0:
                continue
            spectrum = _padded_spectrum(torch.as_tensor(vol, dtype=torch.float32, device=device))
            for start in range(0, rows.size, chunk_size):
                sel = rows[start : start + chunk_size]
                img = form_tilt_images(spectrum, D, torch.as_tensor(meta.image_rotations[sel]),
                                       torch.as_tensor(meta.image_origins_angstrom[sel] / apix), ctf_all[sel],
                                       torch.as_tensor(meta.exposure[sel]), torch.as_tensor(meta.tilt_deg[sel]),
                                       apix).cpu().numpy()
                images[sel] = img
                total += float(img.astype(np.float64).sum())
                total_sq += float((img.astype(np.float64) ** 2).sum())
                bar.update(sel.size)
        variance = total_sq / (M * D * D) - (total / (M * D * D)) ** 2
        noise_std = 0.0 if math.isinf(snr) else math.sqrt(max(variance, 0.0) / snr)
        rng = np.random.default_rng([seed, 12])
        for start in range(0, M, chunk_size):
            stop = min(M, start + chunk_size)
            if noise_std > 0:
                images[start:stop] += noise_std * rng.standard_normal((stop - start, D, D), dtype=np.float32)
            bar.update(stop - start)
        if premultiply:
            for start in range(0, M, chunk_size):
                stop = min(M, start + chunk_size)
                images[start:stop] = premultiply_by_ctf(images[start:stop], ctf_all[start:stop], apix, device)
                bar.update(stop - start)
    bar.close()
    written["particles"] = out / "particles.mrcs"
    tomo_names = np.array([f"TS_{t + 1:03d}" for t in meta.tomogram], dtype=object)
    size = np.asarray(meta.tomogram_size_px, np.float64)
    coords_px = (meta.centres_angstrom + meta.origins_angstrom) / apix + size / 2  # RELION: centre = coord - origin
    p = meta.image_particle
    written["star"] = write_image_series_star(out / "particles.star", "particles.mrcs", apix, D, meta.image_rotations,
                                              meta.image_origins_angstrom, meta.ctf, meta.exposure, meta.tilt_deg,
                                              meta.names[p], tomo_names[p], coords_px[p],
                                              ctf_premultiplied=premultiply)
    written["volumeseries"] = _write_volume_series(out / "particles_volumeseries.star", meta, tomo_names, coords_px,
                                                   apix)
    if optimisation_set:
        written["optimisation_set"] = _write_optimisation_set(out, meta, tomo_names, images_path=out / "particles.mrcs",
                                                              states=states, tilts=tilts, premultiplied=premultiply)
    labels = {"state": meta.states.astype(np.int64), "coordinate": states.coordinates[meta.states].astype(np.float32),
              "preset": np.array(states.name), "state_coordinates": states.coordinates.astype(np.float32),
              "state_weights": states.weights.astype(np.float64), "snr": np.float64(snr),
              "noise_std": np.float64(noise_std), "tomogram": tomo_names.astype(str),
              "n_tilts": meta.visible.sum(axis=1).astype(np.int64)}
    for key, per_state in states.extra.items():
        labels[key] = np.asarray(per_state)[meta.states]
    with atomic_path(out / "labels.npz") as tmp:
        np.savez(tmp, **labels)
    written.update(labels=out / "labels.npz", noise_std=noise_std, metadata=meta)
    return written


def _write_volume_series(path: Path, meta: TiltMetadata, tomo_names, coords_px, apix: float) -> Path:
    """One row per particle: tomogram, coordinates (pixels from the tomogram corner), pose and 3-D origin."""
    import pandas as pd
    import starfile

    from cryoscape.imaging.rotations import matrix_to_euler_relion
    from cryoscape.utils.atomic import atomic_path

    angles = matrix_to_euler_relion(meta.rotations)
    table = pd.DataFrame({"rlnMicrographName": list(tomo_names), "rlnGroupName": list(meta.names),
                          **{f"rlnCoordinate{a}": coords_px[:, j] for j, a in enumerate("XYZ")},
                          "rlnAngleRot": angles[:, 0], "rlnAngleTilt": angles[:, 1], "rlnAnglePsi": angles[:, 2],
                          **{f"rlnOrigin{a}Angst": meta.origins_angstrom[:, j] for j, a in enumerate("XYZ")},
                          "rlnPixelSize": apix})
    with atomic_path(path) as tmp:
        starfile.write({"particles": table}, tmp, float_format="%.6f")
    return path


def _write_optimisation_set(out: Path, meta: TiltMetadata, tomo_names, images_path: Path, states: StateSet,
                            tilts: np.ndarray, premultiplied: bool = False) -> Path:
    """Per-particle 2-D stacks (every frame; dropped ones blank) and the RELION 5 STAR files."""
    from cryoscape.io.mrc import open_stack, write_mrc
    from cryoscape.io.tilt_series import TomogramGeometry, write_optimisation_set

    D, apix = states.D, states.pixel_size_angstrom
    stack, _ = open_stack(images_path, lazy=True)
    F = len(tilts)
    offsets = np.concatenate([[0], np.cumsum(meta.visible.sum(axis=1))])
    names = []
    for i in range(len(meta.states)):
        frames = np.zeros((F, D, D), np.float32)
        frames[meta.visible[i]] = stack[offsets[i] : offsets[i + 1]]
        name = f"stacks/{meta.names[i]}.mrcs"
        write_mrc(out / name, frames, apix, is_stack=True)
        names.append(name)
    R = tilt_rotation(tilts)
    c = meta.ctf
    geometry = [TomogramGeometry(f"TS_{t + 1:03d}", R, meta.defocus_angstrom[t] + meta.astigmatism_angstrom[t] / 2,
                                 meta.defocus_angstrom[t] - meta.astigmatism_angstrom[t] / 2,
                                 np.full(F, meta.astigmatism_angle_deg[t]), np.arange(F) * meta.dose_per_tilt, tilts,
                                 meta.dose_per_tilt, meta.tomogram_size_px, apix, meta.hand, float(c.voltage_kv[0]),
                                 float(c.cs_mm[0]), float(c.amplitude_contrast[0]))
                for t in range(meta.defocus_angstrom.shape[0])]
    used = sorted(set(int(t) for t in meta.tomogram))
    return write_optimisation_set(out, apix, D, [geometry[t] for t in used], tomo_names, meta.names,
                                  meta.centres_angstrom, meta.rotations, meta.origins_angstrom, names, meta.visible,
                                  ctf_premultiplied=premultiplied)
