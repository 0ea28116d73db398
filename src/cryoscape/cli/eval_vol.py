"""Generate 3-D maps (MRC, correct voxel size) from a trained model at given latent points.

Example:
  cryoscape eval-vol runs/vae8 --z 0.1 -0.5 0.3 0 0 0 0 0 -o vol.mrc
  cryoscape eval-vol runs/vae8 --zfile runs/vae8/analysis/epoch_020/pc1/z_values.txt -o maps/ --lowpass 8
  cryoscape eval-vol runs/homo -o homo.mrc          # homogeneous model (zdim 0)

An existing .mrc file, or a non-empty folder, is not written over unless --overwrite is given (in a folder it then
replaces vol_NNN.mrc and z_values.txt only).
"""

from __future__ import annotations

import argparse


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


def run(args) -> int:
    import contextlib
    from pathlib import Path

    from cryoscape.inference import generate_maps
    from cryoscape.utils.outputs import check_output_file, prepare_output_dir

    output = Path(args.output)
    if output.suffix == ".mrc" and not output.is_dir():
        check_output_file(output, "eval-vol", args.overwrite)
        folder = contextlib.nullcontext()
    else:
        folder = prepare_output_dir(output, "eval-vol", args.overwrite, own=("vol_[0-9]*.mrc", "z_values.txt"))
    with folder:
        paths = generate_maps(args.run, args.output, z=args.z, zfile=args.zfile, epoch=args.epoch, box=args.box,
                              apix=args.apix, flip=args.flip, invert=args.invert, lowpass_angstrom=args.lowpass,
                              batch_size=args.batch_size, device=args.device)
    print(f"wrote {len(paths)} map(s): {paths[0]}" + (" ..." if len(paths) > 1 else ""))
    return 0
