"""Simulate cryo-ET tilt series of particles (presets or MRC maps) with known ground truth, for --model tomodrgn.

Each particle: a random pose, a dose-symmetric tilt scheme (0, +-3 deg steps in groups of 2, to +-60: 41 tilts),
exposure attenuation (3 e/A^2 per tilt), cos(tilt) weighting, per-tilt CTF with defocus varying around the
particle's mean, and noise at the given SNR. Writes OUT/particles.mrcs, OUT/particles.star (Warp/M image series),
OUT/particles_volumeseries.star (tomogram, coordinates, pose per particle), OUT/labels.npz and OUT/gt/state_XXX.mrc
(so `cryoscape evaluate` works), and with --optimisation-set a RELION 5 optimisation set with 2-D stacks per
particle (OUT/particles_optimisation_set.star). --size tiny|benchmark sets -N, -D, --apix, --tilt-max, --snr
(explicit options win). Presets: tilt4 (four compositionally different states) and those of `cryoscape simulate`.
OUT must be new or empty; --overwrite replaces these files (stale ones of an earlier run included), nothing else.

Example:
  cryoscape simulate-tilt --preset tilt4 --size benchmark -o sim_tilt4/
  cryoscape simulate-tilt --preset tilt4 -N 200 -D 32 --apix 8 --tilt-max 30 --drop-tilts 3 --optimisation-set -o t/
"""

from __future__ import annotations

import argparse
import logging
import math
from typing import Any

from cryoscape.errors import InputError

log = logging.getLogger(__name__)

# everything `simulate-tilt` writes into OUT, with any options (--overwrite removes stale ones of an earlier run)
OUTPUTS = ("particles.mrcs", "particles.star", "particles_volumeseries.star", "labels.npz", "gt", "stacks",
           "particles_optimisation_set.star", "particles_tomo.star", "tomograms.star")

_DEFAULTS = {"n_particles": 1000, "D": 32, "apix": 8.0, "tilt_max": 60.0, "snr": 0.1}


def add_args(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``cryoscape simulate-tilt``."""
    from cryoscape.simulate.tilt import SIZES
    from cryoscape.simulate.volumes import PRESETS

    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=["tilt4", *PRESETS], help="built-in heterogeneous object")
    src.add_argument("--volumes", nargs="+", metavar="MRC", help="one MRC map per state")
    parser.add_argument("-o", "--outdir", required=True, help="output folder (new or empty, unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty OUT: replace the files simulate-tilt writes there (stale "
                             "ones of an earlier run included), keep others")
    parser.add_argument("--size", choices=list(SIZES),
                        help="tiny: 20 particles, D 16, 11 tilts; benchmark: 4000 particles, D 64, 41 tilts")
    parser.add_argument("-N", "--n-particles", type=int, help=f"particles (default {_DEFAULTS['n_particles']})")
    parser.add_argument("-D", "--box", type=int, help=f"box size in pixels (default {_DEFAULTS['D']})")
    parser.add_argument("--apix", type=float, help=f"pixel size in Angstrom (default {_DEFAULTS['apix']})")
    parser.add_argument("--resolution", type=float, help="low-pass of the preset maps in Angstrom (default none)")
    parser.add_argument("--snr", type=float, help=f"signal-to-noise ratio; inf for none (default {_DEFAULTS['snr']})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t = parser.add_argument_group("tilt series")
    t.add_argument("--tilt-max", type=float, help="largest stage tilt in degrees (default 60)")
    t.add_argument("--tilt-step", type=float, default=3.0, help="tilt increment in degrees (default 3)")
    t.add_argument("--tilt-group", type=int, default=2, help="tilts per side before switching (default 2)")
    t.add_argument("--dose", type=float, default=3.0, help="exposure per tilt in e/A^2 (default 3)")
    t.add_argument("--drop-tilts", type=int, default=0, metavar="K",
                   help="each particle loses 0..K random tilts, for unequal tilt counts (default 0)")
    t.add_argument("--tomograms", type=int, help="number of tomograms (default one per 50 particles)")
    t.add_argument("--defocus", type=float, nargs=2, default=(1.5, 3.5), metavar=("MIN", "MAX"),
                   help="tomogram mean defocus range in micrometres (default 1.5 3.5)")
    t.add_argument("--defocus-jitter", type=float, default=0.1, metavar="UM",
                   help="per-tilt defocus standard deviation in micrometres (default 0.1)")
    t.add_argument("--astigmatism", type=float, default=0.0, metavar="UM", help="dfU - dfV range (default 0)")
    t.add_argument("--voltage", type=float, default=300.0, help="accelerating voltage in kV (default 300)")
    t.add_argument("--max-shift", type=float, default=2.0, metavar="PX",
                   help="3-D origins uniform in [-PX, PX]^3 pixels (default 2)")
    t.add_argument("--optimisation-set", action="store_true",
                   help="also write a RELION 5 optimisation set with one 2-D stack per particle")
    t.add_argument("--premultiply", action="store_true",
                   help="write CTF-premultiplied images (CTF x image, as WarpTools and RELION 5 extract 2-D stacks), "
                        "flagged rlnCtfDataAreCtfPremultiplied 1")
    parser.add_argument("--chunk-size", type=int, default=512, help="images simulated at once (default 512)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def run(args: argparse.Namespace) -> int:
    """Build the ground-truth objects, simulate the tilt images and write the data set."""
    import torch

    from cryoscape.simulate.tilt import SIZES, simulate_tilt_dataset, tilt4_states
    from cryoscape.simulate.volumes import states_from_maps, states_from_preset
    from cryoscape.utils.outputs import prepare_output_dir

    out_dir = prepare_output_dir(args.outdir, "simulate-tilt", args.overwrite, own=OUTPUTS)
    base: dict[str, Any] = dict(_DEFAULTS, **(SIZES[args.size] if args.size else {}))
    n = args.n_particles or base["n_particles"]
    D = args.box or base["D"]
    apix = args.apix or base["apix"]
    snr = base["snr"] if args.snr is None else args.snr
    tilt_max = base["tilt_max"] if args.tilt_max is None else args.tilt_max
    if n < 1:
        raise InputError(f"-N must be at least 1, got {n}")
    if D % 2 or D < 8:
        raise InputError(f"-D must be even and at least 8, got {D}")
    if apix <= 0 or args.tilt_step <= 0 or tilt_max < 0 or args.dose < 0 or args.tilt_group < 1:
        raise InputError("--apix and --tilt-step must be positive, --tilt-max and --dose >= 0, --tilt-group >= 1")
    if not (snr > 0 or math.isinf(snr)) or math.isnan(snr):
        raise InputError(f"--snr must be positive (or inf), got {snr}")
    if args.preset == "tilt4":
        states = tilt4_states(D, apix, args.resolution)
    elif args.preset:
        states = states_from_preset(args.preset, D, apix, args.resolution)
    else:
        states = states_from_maps(args.volumes, args.apix)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    log.info("simulating %d particles of %d state(s) (%s), D=%d, %.3f A/px, tilts to +-%g deg, SNR %g",
             n, states.n_states, states.name, states.D, states.pixel_size_angstrom, tilt_max, snr)
    with out_dir as out:
        result = simulate_tilt_dataset(
            states, n, out, snr=snr, seed=args.seed, tilt_max_deg=tilt_max, tilt_step_deg=args.tilt_step,
            tilt_group=args.tilt_group, dose_per_tilt=args.dose, optimisation_set=args.optimisation_set,
            chunk_size=args.chunk_size, device=device, n_tomograms=args.tomograms,
            defocus_range_um=tuple(args.defocus), defocus_jitter_um=args.defocus_jitter,
            astigmatism_um=args.astigmatism, max_shift_px=args.max_shift, drop_tilts=args.drop_tilts,
            voltage_kv=args.voltage, premultiply=args.premultiply)
    log.info("noise standard deviation %.4g; %d tilt images; wrote %s", result["noise_std"],
             len(result["metadata"].exposure), args.outdir)
    return 0
