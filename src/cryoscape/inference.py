"""Using a trained run: encode particles to latents, generate maps at latent points."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from cryoscape.errors import InputError
from cryoscape.models.loading import load_run
from cryoscape.train.distributed import DistInfo
from cryoscape.train.engine import encode_all
from cryoscape.train.run import select_device
from cryoscape.utils.atomic import atomic_path


def encode_particles(run_dir, output=None, epoch=None, particles=None, poses=None, ctf=None, datadir=None,
                     batch_size: int = 256, device="auto", progress=True, ctf_overrides=None,
                     cs_alignments=None) -> np.ndarray:
    """Posterior means ``(N, zdim)`` of the run's particles (or of ``particles``); saved to ``output`` if given.

    ``ctf_overrides`` / ``cs_alignments`` apply to ``particles`` (default: those the run was trained with).
    """
    from cryoscape.models.registry import get_family

    dev = select_device(device, DistInfo())
    trained = load_run(run_dir, epoch, device=dev)
    if trained.zdim == 0:
        raise InputError("a homogeneous model (zdim 0) has no latent space to encode into", run_dir)
    config = trained.config
    family = get_family(config.model.family)
    if particles is None:
        parts, _ = family.load_particles(config)
        if config.train.abinit:  # the poses are the run's own (applied below), relative to identity
            from cryoscape.train.run import without_poses

            parts = without_poses(parts)[0]
    else:
        options = config.data.reader_options()
        if ctf_overrides:
            options["ctf_overrides"] = ctf_overrides
        options["cs_alignments"] = cs_alignments or (options["cs_alignments"] if str(particles).lower().endswith(
            ".cs") else None)
        parts, _ = family.load_particles(config, path=particles, datadir=datadir, poses=poses, ctf=ctf,
                                         reader_options=options)
    # each image is encoded once, so it is read and prepared per batch (bounded memory, any stack size)
    streaming = dataclasses.replace(config, data=dataclasses.replace(config.data, lazy=True))
    data = family.make_data(parts, streaming, norm_std=trained.build["norm_std"], progress=progress)
    if data.D != trained.D:
        raise InputError(f"images are {data.D} px but the model was trained on {trained.D} px",
                         particles or config.data.particles, hint="downsample them with `cryoscape downsample`")
    trained_premultiplied = bool(trained.build.get("ctf_premultiplied", False))
    if bool(data.ctf_premultiplied) != trained_premultiplied:
        kind = ("plain", "CTF-premultiplied")
        raise InputError(f"images are {kind[not trained_premultiplied]} but the model was trained on "
                         f"{kind[trained_premultiplied]} images (rlnCtfDataAreCtfPremultiplied)",
                         particles or config.data.particles)
    data.to(dev)  # metadata only: the images stay on disk until their batch
    if particles is None and trained.config.train.learns_poses:  # the run's own particles: its learned poses
        from cryoscape.models.poses import LearnedPoseData, load_learned_poses

        data = LearnedPoseData.from_file(data, load_learned_poses(run_dir, trained.epoch)[1])
    z = encode_all(trained.model, data, batch_size, progress=progress)
    if output is not None:
        with atomic_path(output) as tmp:
            np.save(tmp, z)
    return z


def read_latent_file(path, zdim: int) -> np.ndarray:
    """Latent points from a ``.npy`` or text file, validated against ``zdim``: ``(n, zdim)`` float32."""
    path = Path(path)
    if not path.is_file():
        raise InputError("latent file not found", path)
    try:
        z = np.load(path, allow_pickle=False) if path.suffix == ".npy" else np.loadtxt(path, ndmin=2)
    except ValueError as exc:
        raise InputError(f"cannot read latent values ({exc})", path) from exc
    z = np.asarray(z, dtype=np.float32)
    if z.ndim == 1:
        z = z.reshape(-1, zdim) if zdim > 1 and z.size % zdim == 0 else z.reshape(-1, 1)
    if z.ndim != 2 or z.shape[1] != zdim:
        raise InputError(f"latent file has shape {z.shape} but the model has zdim {zdim}", path)
    if not np.all(np.isfinite(z)):
        raise InputError("latent file contains NaN or Inf values", path)
    return z


def postprocess_map(vol: np.ndarray, pixel_size: float, box=None, flip=False, invert=False,
                    lowpass_angstrom=None) -> tuple[np.ndarray, float]:
    """Resample, mirror, invert and low-pass a map; returns the map and its voxel size."""
    from cryoscape.imaging.fft import fft3_centered, ifft3_centered, resample_volume

    t = torch.from_numpy(np.ascontiguousarray(vol, dtype=np.float32))
    D = t.shape[-1]
    if box and box != D:
        t = resample_volume(t, box)
        pixel_size = pixel_size * D / box
        D = box
    if lowpass_angstrom:
        k = (torch.arange(D, dtype=torch.float32) - D // 2) / (D * pixel_size)
        r = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
        t = ifft3_centered(fft3_centered(t) * (r <= 1.0 / lowpass_angstrom)).real
    if flip:
        t = torch.flip(t, dims=(0,))
    if invert:
        t = -t
    return t.numpy().astype(np.float32), pixel_size


def generate_maps(run_dir, output, z=None, zfile=None, epoch=None, box=None, apix=None, flip=False, invert=False,
                  lowpass_angstrom=None, batch_size=4, device="auto", progress=True) -> list[Path]:
    """Write one MRC map per latent point (or the homogeneous map); returns the paths written."""
    from cryoscape.io.mrc import write_mrc

    trained = load_run(run_dir, epoch, device=select_device(device, DistInfo()))
    if trained.zdim == 0:
        if z is not None or zfile is not None:
            raise InputError("this is a homogeneous model (zdim 0): do not give --z/--zfile", run_dir)
        points = None
    elif zfile is not None:
        points = read_latent_file(zfile, trained.zdim)
    elif z is not None:
        points = np.asarray(z, dtype=np.float32).reshape(1, -1)
        if points.shape[1] != trained.zdim:
            raise InputError(f"--z has {points.shape[1]} values but the model has zdim {trained.zdim}")
    else:
        raise InputError("give --z or --zfile (the model has a latent space)")
    vols = trained.generate_volumes(points, batch_size=batch_size, progress=progress)
    output = Path(output)
    single = len(vols) == 1 and output.suffix == ".mrc"
    paths = [output] if single else [output / f"vol_{i + 1:03d}.mrc" for i in range(len(vols))]
    for vol, path in zip(vols, paths, strict=True):
        out, voxel = postprocess_map(vol, trained.pixel_size_angstrom, box, flip, invert, lowpass_angstrom)
        write_mrc(path, out, voxel_size_angstrom=apix or voxel)
    if not single and points is not None:
        with atomic_path(output / "z_values.txt") as tmp:
            np.savetxt(tmp, points)
    return paths
