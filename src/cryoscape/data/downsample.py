"""Streaming Fourier-crop downsampling of particle stacks, and the metadata of the downsampled particles.

Images are read ``chunk_size`` at a time, cropped in Fourier space (:func:`cryoscape.imaging.fft.fourier_crop`,
which keeps the image mean) and written into a pre-allocated memory-mapped ``.mrcs``, so memory is bounded by
one chunk whatever the number of particles. The pixel size grows by ``D / new_D`` (``docs/conventions.md``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cryoscape.errors import InputError

__all__ = ["check_new_box", "downsample_images", "downsampled_star_blocks", "write_downsampled_star"]


def check_new_box(D: int, new_D: int) -> None:
    """Raise :class:`InputError` unless ``new_D`` is even, positive and at most ``D``."""
    if new_D <= 0 or new_D % 2:
        raise InputError(f"-D {new_D}: the new box size must be a positive even number")
    if new_D > D:
        raise InputError(f"-D {new_D} is larger than the particle box {D}",
                         hint="downsampling only makes boxes smaller")


def downsample_images(
    images,
    new_D: int,
    out_path: str | Path,
    pixel_size_angstrom: float,
    chunk_size: int = 1000,
    progress: bool | None = None,
) -> Path:
    """Fourier-crop every image of a stack into a new ``.mrcs``, chunk by chunk.

    Parameters
    ----------
    images : array ``(N, D, D)`` or a lazy stack (``len`` and ``__getitem__(index array) -> (n, D, D)``).
    new_D : int, even output box size ``<= D``.
    out_path : output ``.mrcs``; written atomically.
    pixel_size_angstrom : float, pixel size of the input (the output's is ``pixel_size_angstrom * D / new_D``).
    chunk_size : int, images per chunk.
    progress : show a progress bar (None: only on a terminal).

    Returns
    -------
    Path of the written stack.
    """
    from cryoscape.imaging.fft import fourier_crop
    from cryoscape.io.mrc import open_stack_for_writing

    n = len(images)
    if n == 0:
        raise InputError("no images to downsample")
    first = np.asarray(images[np.arange(1)], dtype=np.float32)
    D = first.shape[-1]
    check_new_box(D, new_D)
    out_apix = float(pixel_size_angstrom) * D / new_D
    bar = tqdm(total=n, desc="downsampling", unit="img", disable=None if progress is None else not progress)
    with open_stack_for_writing(out_path, n, new_D, out_apix) as out:
        for start in range(0, n, max(1, int(chunk_size))):
            idx = np.arange(start, min(start + chunk_size, n))
            chunk = torch.as_tensor(np.asarray(images[idx], dtype=np.float32))
            out[idx[0] : idx[-1] + 1] = fourier_crop(chunk, new_D).numpy()
            bar.update(idx.size)
    bar.close()
    return Path(out_path)


def downsampled_star_blocks(star, stack_name: str, new_D: int, pixel_size_angstrom: float | None = None) -> dict:
    """The blocks of a STAR file rewritten for a downsampled copy of its particles in one stack.

    Parameters
    ----------
    star : :class:`cryoscape.io.star.StarParticles`, the input particles (``N`` rows, box ``D``).
    stack_name : str, the new stack as it should appear in ``rlnImageName`` (row ``i`` -> image ``i + 1``).
    new_D : int, the new box size.
    pixel_size_angstrom : float, optional, the pixel size the images were read at before cropping (``--apix``, or
        the common pixel size of optics groups resampled on loading). Every pixel-size column is then set from it
        (``x D / new_D``; 3.0's ``rlnDetectorPixelSize`` as um with ``rlnMagnification``, else as A), and 3.0 pixel
        origins are converted from each particle's own pixel size (``star.pixel_size_angstrom``).

    Returns
    -------
    dict of blocks (same rows and columns) with ``rlnImageName`` pointing into the new stack, pixel sizes
    (``rlnImagePixelSize``, or 3.0's ``rlnDetectorPixelSize``) scaled by ``D / new_D``, ``rlnImageSize`` set to
    ``new_D`` and RELION 3.0 pixel origins (``rlnOriginX/Y``) scaled by ``new_D / D``; Angstrom values unchanged.
    """
    from cryoscape.io.star import format_image_names

    D = int(star.image_size)
    if D <= 0:
        raise InputError("the box size of the particles is unknown", star.path)
    factor = D / new_D
    blocks = dict(star.blocks)
    table = star.table.copy()
    table["rlnImageName"] = format_image_names([stack_name] * len(table), np.arange(len(table)))
    tables = [table]
    if star.optics_key is not None:
        optics = star.optics.copy()
        blocks[star.optics_key] = optics
        tables.append(optics)
    if pixel_size_angstrom is not None:
        new_ps = float(pixel_size_angstrom) * factor
        for t in tables:
            if "rlnImagePixelSize" in t.columns:
                t["rlnImagePixelSize"] = new_ps
            if "rlnDetectorPixelSize" in t.columns:
                mag = t["rlnMagnification"].astype(float) if "rlnMagnification" in t.columns else None
                t["rlnDetectorPixelSize"] = new_ps * mag / 1e4 if mag is not None else new_ps
            if "rlnImageSize" in t.columns:
                t["rlnImageSize"] = int(new_D)
        own = np.asarray(star.pixel_size_angstrom, dtype=np.float64) / float(pixel_size_angstrom)
        for name in ("rlnOriginX", "rlnOriginY"):
            if name in table.columns:
                table[name] = table[name].astype(float) * own / factor
    else:
        for t in tables:
            if "rlnImagePixelSize" in t.columns:
                t["rlnImagePixelSize"] = t["rlnImagePixelSize"].astype(float) * factor
            if "rlnDetectorPixelSize" in t.columns:
                t["rlnDetectorPixelSize"] = t["rlnDetectorPixelSize"].astype(float) * factor
            if "rlnImageSize" in t.columns:
                t["rlnImageSize"] = int(new_D)
        for name in ("rlnOriginX", "rlnOriginY"):
            if name in table.columns:
                table[name] = table[name].astype(float) / factor
    if star.optics_key is not None and "rlnImagePixelSize" not in star.optics.columns and \
            "rlnImagePixelSize" not in table.columns:
        blocks[star.optics_key]["rlnImagePixelSize"] = float(
            star.pixel_size_angstrom[0] if pixel_size_angstrom is None else pixel_size_angstrom) * factor
    blocks[star.particles_key] = table
    return blocks


def write_downsampled_star(star, out_star: str | Path, stack_name: str, new_D: int,
                           pixel_size_angstrom: float | None = None) -> Path:
    """Write the STAR file of the downsampled particles (see :func:`downsampled_star_blocks`), atomically."""
    from cryoscape.io.star import write_star_subset

    new = dataclasses.replace(star, blocks=downsampled_star_blocks(star, stack_name, new_D, pixel_size_angstrom))
    return write_star_subset(new, np.arange(len(star)), out_star)
