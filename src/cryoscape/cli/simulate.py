"""Simulate a synthetic cryo-EM particle dataset (presets, MRC maps or atomic models) with known ground truth.

Random uniform SO(3) poses, in-plane shifts (RELION origins), CTFs with random defocus and astigmatism, an optional
B-factor envelope and white noise at a given SNR (variance of the clean images over the whole dataset / noise
variance). Writes OUT/particles.mrcs, OUT/particles.star (RELION 3.1), OUT/gt/state_XXX.mrc, OUT/labels.npz and,
on request, OUT/particles.cs (--cs), OUT/pose.pkl + OUT/ctf.pkl (--pkl) and OUT/clean.mrcs (--clean).
OUT must be new or empty; --overwrite replaces these files (stale ones of an earlier run included), nothing else.

Presets: homogeneous, linear1d (hinge, 50 states), discrete3 (10:15:25), hinge_discrete (hinge x subunit),
eightconf (dumbbell, 8 conformations).

Atomic-model motion mode (--pdb with one model and --move): the atoms of --move (a chain, or CHAIN:FIRST-LAST
residues) turn about the hinge axis through the two points of --hinge-axis (Angstrom, the model's frame; a
positive angle turns right-handed about the direction from the first point to the second), over --angles MIN
MAX in --n-conformations evenly spaced steps (default 50), one ground-truth map per angle, as CryoBench's IgG-1D
varies a dihedral. labels.npz then holds each particle's conformation (state), its angle (angle_deg) and the
angle scaled to [0, 1] (coordinate).

Example:
  cryoscape simulate --preset linear1d -N 1000 -D 64 --apix 3.0 --snr 0.1 -o sim/
  cryoscape simulate --volumes a.mrc b.mrc -N 500 -o sim2/
  cryoscape simulate --pdb model.cif --apix 2 -D 64 --resolution 6 -N 2000 -o sim3/
  cryoscape simulate --pdb igg.cif --move B:220-440 --hinge-axis 10 0 5 10 20 5 --angles -40 40 -N 10000 -o sim4/
"""

from __future__ import annotations

import argparse
import logging
import math

from cryoscape.errors import InputError

log = logging.getLogger(__name__)

# everything `simulate` writes into OUT, with any options (--overwrite removes stale ones of an earlier run)
OUTPUTS = ("particles.mrcs", "particles.star", "particles.cs", "pose.pkl", "ctf.pkl", "clean.mrcs", "labels.npz", "gt")


def add_args(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``cryoscape simulate``."""
    from cryoscape.simulate.volumes import PRESETS

    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=list(PRESETS), help="built-in heterogeneous object")
    src.add_argument("--volumes", nargs="+", metavar="MRC", help="one MRC map per state")
    src.add_argument("--pdb", nargs="+", metavar="MODEL", help="one PDB/mmCIF model per state (rendered with gemmi)")
    motion = parser.add_argument_group("atomic-model motion mode (with one --pdb model)")
    motion.add_argument("--move", metavar="SEL",
                        help="the atoms that turn: a chain (B) or a residue range of one (B:220-440)")
    motion.add_argument("--hinge-axis", type=float, nargs=6, metavar=("X1", "Y1", "Z1", "X2", "Y2", "Z2"),
                        help="two points of the hinge axis in Angstrom (model frame); required with --move")
    motion.add_argument("--angles", type=float, nargs=2, default=(-30.0, 30.0), metavar=("MIN", "MAX"),
                        help="range of the rotation in degrees, ends included (default -30 30)")
    motion.add_argument("--n-conformations", type=int, default=50, metavar="N",
                        help="evenly spaced angles, one ground-truth map each (default 50)")
    parser.add_argument("-o", "--outdir", required=True, help="output folder (new or empty, unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty OUT: replace the files simulate writes there (a stale "
                             "particles.cs, pose.pkl, ctf.pkl or clean.mrcs of an earlier run included), keep others")
    parser.add_argument("-N", "--n-particles", type=int, default=1000, help="number of images (default 1000)")
    parser.add_argument("-D", "--box", type=int, default=None,
                        help="box size in pixels for --preset/--pdb (default 64; --volumes: from the maps)")
    parser.add_argument("--apix", type=float, default=None,
                        help="pixel size in Angstrom (default 3.0 for --preset, 2.0 for --pdb; --volumes: header)")
    parser.add_argument("--resolution", type=float, default=None,
                        help="low-pass of the rendered maps in Angstrom (default: --pdb 2*apix, --preset none)")
    parser.add_argument("--snr", type=float, default=0.1,
                        help="signal-to-noise ratio; 'inf' for no noise (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--max-shift", type=float, default=3.0, metavar="PX",
                        help="origins uniform in [-PX, PX]^2 pixels (default 3)")
    parser.add_argument("--defocus", type=float, nargs=2, default=(1.0, 2.5), metavar=("MIN", "MAX"),
                        help="mean defocus range in micrometres (default 1.0 2.5)")
    parser.add_argument("--astigmatism", type=float, default=0.05, metavar="UM",
                        help="dfU - dfV uniform in [0, UM] micrometres (default 0.05)")
    parser.add_argument("--bfactor", type=float, default=0.0, help="B-factor envelope in A^2 (default 0)")
    parser.add_argument("--field", type=int, default=1, metavar="F",
                        help="form each image in a field F boxes wide and keep its central box, as particles are cut "
                             "from micrographs: the signal the CTF spreads past the box edge is lost (default 1: the "
                             "CTF applied on the box's own spectrum wraps it back in, as in cryoDRGN's and "
                             "CryoBench's simulations)")
    parser.add_argument("--no-ctf", action="store_true", help="no CTF (metadata describe a perfect microscope)")
    parser.add_argument("--cs", action="store_true", help="also write OUT/particles.cs (cryoSPARC)")
    parser.add_argument("--pkl", action="store_true", help="also write OUT/pose.pkl and OUT/ctf.pkl (cryoDRGN)")
    parser.add_argument("--clean", action="store_true", help="also write the noise-free images OUT/clean.mrcs")
    parser.add_argument("--premultiply", action="store_true",
                        help="write CTF-premultiplied images (CTF x image, rlnCtfDataAreCtfPremultiplied 1 in "
                             "particles.star); not with --no-ctf, --cs or --pkl")
    parser.add_argument("--chunk-size", type=int, default=500, help="images simulated at once (default 500)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def run(args: argparse.Namespace) -> int:
    """Build the ground-truth objects, simulate the images and write the dataset."""
    import numpy as np
    import torch

    from cryoscape.simulate.atomic import states_from_atomic, states_from_motion
    from cryoscape.simulate.particles import simulate_dataset
    from cryoscape.simulate.volumes import states_from_maps, states_from_preset
    from cryoscape.utils.outputs import prepare_output_dir

    out_dir = prepare_output_dir(args.outdir, "simulate", args.overwrite, own=OUTPUTS)
    if args.seed < 0:
        raise InputError(f"--seed must be a non-negative integer, got {args.seed}")
    if args.n_particles < 1:
        raise InputError(f"-N must be at least 1, got {args.n_particles}")
    if not (args.snr > 0 or math.isinf(args.snr)) or math.isnan(args.snr):
        raise InputError(f"--snr must be positive (or inf), got {args.snr}")
    if args.box is not None and (args.box % 2 or args.box < 8):
        raise InputError(f"-D must be even and at least 8, got {args.box}")
    if args.apix is not None and args.apix <= 0:
        raise InputError(f"--apix must be positive, got {args.apix}")
    if (args.move or args.hinge_axis) and not args.pdb:
        raise InputError("--move and --hinge-axis need one atomic model (--pdb MODEL)")
    if args.field < 1:
        raise InputError(f"--field must be at least 1, got {args.field}")
    lo, hi = args.defocus
    if not 0 <= lo <= hi:
        raise InputError(f"--defocus needs 0 <= MIN <= MAX, got {lo} {hi}")
    if args.preset:
        states = states_from_preset(args.preset, args.box or 64, args.apix or 3.0, args.resolution)
    elif args.pdb and args.move:
        if len(args.pdb) != 1:
            raise InputError(f"--move turns part of one model, but {len(args.pdb)} models were given")
        if args.hinge_axis is None:
            raise InputError("--move needs --hinge-axis X1 Y1 Z1 X2 Y2 Z2 (two points of the axis, Angstrom)")
        states = states_from_motion(args.pdb[0], args.move, np.reshape(args.hinge_axis, (2, 3)), args.angles,
                                    args.n_conformations, args.box or 64, args.apix or 2.0, args.resolution)
    elif args.pdb:
        states = states_from_atomic(args.pdb, args.box or 64, args.apix or 2.0, args.resolution)
    else:
        states = states_from_maps(args.volumes, args.apix)
        if args.box is not None and args.box != states.D:
            raise InputError(f"the maps are {states.D}^3 voxels but -D {args.box} was given",
                             args.volumes[0], "omit -D, or resample the maps first")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    log.info("simulating %d images of %d state(s) (%s), D=%d, %.3f A/px, SNR %g",
             args.n_particles, states.n_states, states.name, states.D, states.pixel_size_angstrom, args.snr)
    with out_dir as out:
        result = simulate_dataset(
            states, args.n_particles, out, snr=args.snr, seed=args.seed, max_shift_px=args.max_shift,
            defocus_range_um=(lo, hi), astigmatism_um=args.astigmatism, bfactor_angstrom2=args.bfactor,
            ctf=not args.no_ctf, write_cs=args.cs, write_pkl=args.pkl, write_clean=args.clean,
            chunk_size=args.chunk_size, device=device, premultiply=args.premultiply, field=args.field,
        )
    log.info("noise standard deviation %.4g; wrote %s", result["noise_std"], args.outdir)
    return 0
