"""Downsample particle images by Fourier cropping, streaming in chunks (bounded memory).

The pixel size grows by D/D' and the image mean is kept. IN may be a .mrcs stack, a RELION .star or a cryoSPARC .cs
file; all its particles are written, in order, to one stack OUT.mrcs. With a .star input OUT.star is written too:
the same rows and columns, rlnImageName pointing into OUT.mrcs, and the pixel size and box size updated. With a
.cs input OUT.star is written as well, from the .cs poses and CTF converted to RELION's conventions (a cryoSPARC
refinement ready for RELION or cryoscape).
Poses and CTF are not needed (a RELION 3.0 file without voltage or Cs is fine); optics groups with different pixel
sizes are first resampled to the finest (or --apix). Tilt-series sets (RELION 5 / WarpTools optimisation sets) are
not supported.
Existing output files are not replaced unless --overwrite is given.

Example:
  cryoscape downsample particles.star -D 64 -o particles.64.mrcs
  cryoscape downsample J42/J42_particles.cs --datadir /data/cryosparc/P3 -D 128 -o data/J42.128.mrcs
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``cryoscape downsample``."""
    parser.add_argument("input", help="particles: .mrcs, .star, .cs or .txt (list of stacks)")
    parser.add_argument("-D", "--box", type=int, required=True, help="new box size in pixels (even)")
    parser.add_argument("-o", "--output", required=True,
                        help="output stack OUT.mrcs (with .star or .cs input also OUT.star)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT.mrcs (and OUT.star) if they exist")
    parser.add_argument("--chunk-size", type=int, default=1000, help="images processed at once (default 1000)")
    parser.add_argument("--datadir", help="folder holding the stacks named in a .star/.cs/.txt file")
    parser.add_argument("--apix", type=float, help="pixel size of the input in Angstrom (overrides the files)")


def _refuse_tilt_series(path: Path) -> None:
    """One line for a RELION 5 / WarpTools tilt-series set, which downsample does not support."""
    from cryoscape.errors import InputError
    from cryoscape.io.star import tilt_series_kind
    from cryoscape.io.tilt_series import read_star_blocks

    kind = tilt_series_kind(read_star_blocks(path))
    if kind is not None:
        what = "an optimisation set" if kind == "optimisation_set" else "the particle file of one"
        raise InputError(f"is {what} of tilt-series particles (RELION 5 / WarpTools); downsample does not support "
                         "tilt-series sets", path, "export the tilt-series particles at the pixel size you want "
                         "(WarpTools ts_export_particles --output_angpix, RELION 5 Extract subtomos binning)")


def run(args: argparse.Namespace) -> int:
    """Crop every image and write the new stack (and STAR file)."""
    from cryoscape.data.downsample import check_new_box, downsample_images, write_downsampled_star
    from cryoscape.errors import InputError
    from cryoscape.io.particles import load_particles
    from cryoscape.io.star import StarParticles
    from cryoscape.utils.outputs import check_output_file

    out = Path(args.output)
    if out.suffix.lower() not in (".mrcs", ".mrc"):
        raise InputError("the output must be an .mrcs stack", out, "e.g. -o particles.64.mrcs")
    if args.chunk_size < 1:
        raise InputError(f"--chunk-size must be at least 1, got {args.chunk_size}")
    for path in (out, out.with_suffix(".star")):
        if path.exists() and Path(args.input).exists() and os.path.samefile(path, args.input):
            raise InputError("the output would overwrite the input", path)
    check_output_file(out, "downsample", args.overwrite)
    if Path(args.input).suffix.lower() in (".star", ".cs"):
        check_output_file(out.with_suffix(".star"), "downsample", args.overwrite)
    if Path(args.input).suffix.lower() == ".star" and Path(args.input).is_file():
        _refuse_tilt_series(Path(args.input))
    particles = load_particles(args.input, datadir=args.datadir, apix=args.apix, metadata_optional=True)
    check_new_box(particles.D, args.box)
    apix = particles.pixel_size_angstrom
    log.info("downsampling %d images from %d to %d pixels (%.4f -> %.4f A/px)", len(particles), particles.D,
             args.box, apix, apix * particles.D / args.box)
    downsample_images(particles.images, args.box, out, apix, chunk_size=args.chunk_size)
    if isinstance(particles.source, StarParticles):
        star_out = out.with_suffix(".star")
        write_downsampled_star(particles.source, star_out, out.name, args.box, apix)
        log.info("wrote %s and %s", out, star_out)
    elif Path(args.input).suffix.lower() == ".cs":  # poses and CTF converted; origins are in Angstrom, unchanged
        import numpy as np

        from cryoscape.io.star import format_image_names, write_star

        star_out = write_star(out.with_suffix(".star"), format_image_names([out.name] * len(particles),
                                                                            np.arange(len(particles))),
                              apix * particles.D / args.box, args.box, particles.poses, particles.ctf,
                              ctf_premultiplied=particles.ctf_premultiplied)
        log.info("wrote %s and %s", out, star_out)
    else:
        log.info("wrote %s", out)
    return 0
