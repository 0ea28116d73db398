"""``train --focus-mask``: the consensus map of a focused run, made (or copied) into ``RUN/focus/`` before training.

The model layers cannot back-project (``analysis`` sits above them), so the command does it: for a new run, the
mask is checked against the particles, the consensus is back-projected from the run's particles with their poses
(:func:`cryoscape.analysis.backprojection.backproject`, Wiener, then weighted shell by shell by
``sqrt(2 FSC / (1 + FSC))`` of its half maps so that noise is not subtracted into the images) or the
``--focus-consensus`` map is copied, and the run's configuration records ``RUN/focus/consensus.mrc`` as the map used;
the mask is copied to ``RUN/focus/mask.mrc`` for the record. A resumed run reads the recorded files.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from cryoscape.config import CryoDRGNConfig, RunConfig
from cryoscape.errors import InputError

log = logging.getLogger("cryoscape")

__all__ = ["prepare_focus", "focus_consensus_map", "fsc_weighted"]


def fsc_weighted(volume: np.ndarray, half_a: np.ndarray, half_b: np.ndarray) -> np.ndarray:
    """``volume`` with each Fourier shell multiplied by ``sqrt(2 FSC / (1 + FSC))`` (FSC of the half maps, clipped
    to ``[0, 1]``; shells beyond Nyquist zeroed): the consensus filtered to what the data support.
    """
    from cryoscape.analysis.fsc import fsc

    _, curve = fsc(half_a, half_b)
    f = np.clip(curve, 0.0, 1.0)
    weight = np.sqrt(2.0 * f / (1.0 + f))
    D = volume.shape[0]
    i = np.arange(D) - D // 2
    shell = np.rint(np.sqrt(i[:, None, None] ** 2 + i[None, :, None] ** 2 + i[None, None, :] ** 2)).astype(np.int64)
    w = np.where(shell < len(weight), weight[np.minimum(shell, len(weight) - 1)], 0.0)
    F = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(volume.astype(np.float64))))
    out = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(F * w))).real
    return out.astype(np.float32)


def focus_consensus_map(particles, invert: bool, progress: bool = True) -> np.ndarray:
    """The consensus of ``particles`` (poses, CTF): Wiener back-projection, FSC-weighted (:func:`fsc_weighted`), in
    the sign of the prepared images (negated reading with ``invert``).
    """
    from cryoscape.analysis.backprojection import NegatedImages, backproject

    apix = particles.pixel_size_angstrom
    images = NegatedImages(particles.images) if invert else particles.images
    ctf = None if particles.ctf is None else particles.ctf.to_array()
    result = backproject(images, particles.poses.rotations, particles.poses.shifts_px(apix), ctf, apix,
                         progress=progress, ctf_premultiplied=bool(getattr(particles, "ctf_premultiplied", False)))
    return fsc_weighted(result["volume"], result["half_a"], result["half_b"])


def prepare_focus(config: RunConfig, outdir, resume: bool, progress: bool = True) -> RunConfig:
    """``config`` with ``focus_mask`` absolute and ``focus_consensus`` the map in ``RUN/focus/`` (made now for a new
    run); unchanged without ``--focus-mask``. See the module docstring.
    """
    m = config.model
    if not isinstance(m, CryoDRGNConfig) or not m.focus_mask:  # (the option of the cryodrgn family only)
        return config
    mask = Path(m.focus_mask).resolve()
    if not mask.is_file():
        raise InputError("focus mask not found", m.focus_mask)
    run_dir = Path(outdir).resolve()
    stored = run_dir / "focus" / "consensus.mrc"
    given = Path(m.focus_consensus).resolve() if m.focus_consensus else None
    if given is not None and not given.is_file():
        raise InputError("focus consensus map not found", m.focus_consensus)
    if resume:  # the recorded map; the same map given again on the command line counts as recorded
        if given is not None and stored.is_file() and _same_map(given, stored):
            given = stored
        return _with(config, mask, given)
    from cryoscape.rundir import RunDir
    from cryoscape.utils.diskspace import check_output_location

    check_output_location(run_dir)
    if RunDir(run_dir).latest_checkpoint() is not None:
        return _with(config, mask, given)  # train refuses (the run exists): its files are left as they are
    from cryoscape.data.focus import load_focus_map
    from cryoscape.io.mrc import write_mrc
    from cryoscape.models.registry import get_family

    family = get_family(m.family)
    family.validate(_with(config, mask, stored))  # the options it cannot be combined with, before any work
    particles, _ = family.load_particles(config)
    D, apix = particles.images.D, particles.pixel_size_angstrom
    load_focus_map(mask, D, apix, "mask")  # refused before any work
    if given is not None:
        volume = load_focus_map(given, D, apix, "consensus")
        log.info(f"--focus-mask: consensus map {given}")
    else:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise InputError("--focus-mask under torchrun needs --focus-consensus MAP.mrc (make it first, e.g. with "
                             "`cryoscape backproject`)")
        if particles.poses is None:
            raise InputError("no poses for these particles", config.data.particles,
                             hint="give --poses pose.pkl, or a STAR/.cs file with angles from a consensus refinement")
        log.info(f"--focus-mask: back-projecting the consensus of {len(particles)} particles")
        volume = focus_consensus_map(particles, config.data.invert_data, progress)
    stored.parent.mkdir(parents=True, exist_ok=True)
    write_mrc(stored, volume, apix)
    shutil.copyfile(mask, stored.parent / "mask.mrc")
    return _with(config, mask, stored)


def _same_map(a: Path, b: Path) -> bool:
    """Whether two MRC files hold the same map (values and voxel size). Not their bytes: a header label records
    when a file was written, so a copy written a second later differs from the original byte for byte.
    """
    from cryoscape.io.mrc import read_mrc

    try:
        (va, ia), (vb, ib) = read_mrc(a), read_mrc(b)
    except Exception:  # noqa: BLE001 - an unreadable map is not the recorded one (and is refused later)
        return False
    return va.shape == vb.shape and np.array_equal(va, vb) and \
        abs(ia.voxel_size_angstrom - ib.voxel_size_angstrom) < 1e-4


def _with(config: RunConfig, mask: Path, consensus: Path | None) -> RunConfig:
    model = dataclasses.replace(config.model, focus_mask=str(mask),  # type: ignore[call-arg]
                                focus_consensus=None if consensus is None else str(consensus))
    return dataclasses.replace(config, model=model)
