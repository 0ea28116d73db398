"""Generate 3-D maps (MRC, correct voxel size) from a trained model at given latent points.

Example:
  cryoscape eval-vol runs/vae8 --z 0.1 -0.5 0.3 0 0 0 0 0 -o vol.mrc
  cryoscape eval-vol runs/vae8 --zfile runs/vae8/analysis/epoch_020/pc1/z_values.txt -o maps/ --lowpass 8
  cryoscape eval-vol runs/homo -o homo.mrc          # homogeneous model (zdim 0)

With --reconstruct the maps are not the decoder's but latent-neighbour reconstructions (docs/metrics.md): the
particles whose latents are nearest each point, back-projected with their poses and CTFs, Gaussian kernel weights
by latent distance and a neighbourhood size chosen per Fourier shell by half-set cross-validation (at most
--max-neighbours particles, or the whole set with equal weights where that cross-validates better), chosen
separately inside and outside the region that varies over the latent space (estimated from the data and written
as variable_region.mrc; --region-mask MASK.mrc: use the region you know moves instead; --no-local: one
choice for the whole box). Each map X.mrc comes with its half maps
X_half_a.mrc and X_half_b.mrc and X_fsc.txt (their FSC, the resolution at 0.143 and the neighbourhood sizes
used).

  cryoscape eval-vol runs/vae8 --zfile runs/vae8/analysis/epoch_020/kmeans20/centers.txt -o recon/ --reconstruct

An existing .mrc file, or a non-empty folder, is not written over unless --overwrite is given (in a folder it then
replaces vol_NNN.mrc and z_values.txt only, and with --reconstruct the half maps and FSC files).
"""

from __future__ import annotations

import argparse
from typing import Any


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder written by `cryoscape train`")
    p.add_argument("-o", "--output", required=True,
                   help="an .mrc file for one map, or a folder for several (vol_001.mrc, ...)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing .mrc file, or the maps (vol_NNN.mrc, z_values.txt) in a non-empty folder")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--z", type=float, nargs="+", help="one latent point (zdim values)")
    g.add_argument("--zfile", help="text or .npy file with one latent point per row")
    p.add_argument("--epoch", type=int, help="epoch to use (default: best_epoch, else the last)")
    p.add_argument("-D", "--box", type=int, help="resample the maps to this box size")
    p.add_argument("--apix", type=float, help="voxel size to write (default: the training pixel size, scaled with -D)")
    p.add_argument("--flip", action="store_true", help="flip the handedness (mirror along z)")
    p.add_argument("--invert", action="store_true", help="invert the contrast")
    p.add_argument("--lowpass", type=float, help="low-pass filter to this resolution in Angstrom")
    p.add_argument("-b", "--batch-size", type=int, default=4, help="maps generated per batch (default 4)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    r = p.add_argument_group("latent-neighbour reconstruction")
    r.add_argument("--reconstruct", action="store_true",
                   help="back-project the particles nearest each latent point instead of running the decoder; "
                        "writes half maps and their FSC next to each map")
    r.add_argument("--max-neighbours", type=int, default=2000, metavar="K",
                   help="most particles back-projected per map (default 2000)")
    r.add_argument("--no-local", dest="local", action="store_false",
                   help="one neighbourhood choice per shell for the whole box, instead of separate choices inside "
                        "and outside the variable region (docs/metrics.md)")
    r.add_argument("--region-mask", metavar="MASK.mrc",
                   help="a soft mask (values in [0, 1], the particles' box and pixel size) of the region that moves, "
                        "used as the variable region instead of the estimate")
    r.add_argument("--oversample", type=int, choices=(1, 2), default=2,
                   help="padding of the back-projection (default 2: right for particles cut from micrographs; 1: "
                        "~8x less memory, faster, and exact for simulations whose CTF wraps around the box, "
                        "`simulate` without --field)")


def run(args) -> int:
    import contextlib
    from pathlib import Path

    from cryoscape.inference import generate_maps
    from cryoscape.utils.outputs import check_output_file, prepare_output_dir

    output = Path(args.output)
    if args.reconstruct:
        return _reconstruct(args, output)
    if output.suffix == ".mrc" and not output.is_dir():
        check_output_file(output, "eval-vol", args.overwrite)
        folder: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    else:
        folder = prepare_output_dir(output, "eval-vol", args.overwrite, own=("vol_[0-9]*.mrc", "z_values.txt"))
    with folder:
        paths = generate_maps(args.run, args.output, z=args.z, zfile=args.zfile, epoch=args.epoch, box=args.box,
                              apix=args.apix, flip=args.flip, invert=args.invert, lowpass_angstrom=args.lowpass,
                              batch_size=args.batch_size, device=args.device)
    print(f"wrote {len(paths)} map(s): {paths[0]}" + (" ..." if len(paths) > 1 else ""))
    return 0


def _reconstruct(args, output) -> int:
    import contextlib

    from cryoscape.analysis.neighbour_recon import reconstruct_maps
    from cryoscape.errors import InputError
    from cryoscape.utils.outputs import check_output_file, prepare_output_dir

    unused = [name for name, value in (("-D", args.box), ("--apix", args.apix), ("--flip", args.flip),
                                       ("--invert", args.invert), ("--lowpass", args.lowpass)) if value]
    if unused:
        raise InputError(f"{', '.join(unused)} apply to decoder maps, not to --reconstruct")
    if args.max_neighbours < 2:
        raise InputError(f"--max-neighbours must be at least 2, got {args.max_neighbours}")
    if output.suffix == ".mrc" and not output.is_dir() and args.zfile is None:
        stem = output.with_suffix("")
        for path in (output, f"{stem}_half_a.mrc", f"{stem}_half_b.mrc", f"{stem}_fsc.txt",
                     f"{stem}_variable_region.mrc"):
            check_output_file(path, "eval-vol", args.overwrite)
        folder: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    else:
        folder = prepare_output_dir(output, "eval-vol", args.overwrite,
                                    own=("vol_[0-9]*.mrc", "vol_[0-9]*_fsc.txt", "z_values.txt",
                                         "variable_region.mrc"))
    device = None if args.device == "auto" else args.device
    if args.region_mask and not args.local:
        raise InputError("--region-mask does not go with --no-local (one choice for the whole box)")
    with folder:
        paths = reconstruct_maps(args.run, output, z=args.z, zfile=args.zfile, epoch=args.epoch,
                                 max_neighbours=args.max_neighbours, oversample=args.oversample, device=device,
                                 local=args.local, region_mask=args.region_mask)
    print(f"wrote {len(paths)} latent-neighbour map(s) with half maps and FSC: {paths[0]}"
          + (" ..." if len(paths) > 1 else ""))
    return 0
