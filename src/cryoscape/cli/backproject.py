r"""Reconstruct a map from particles with known poses (direct Fourier back-projection) and report its FSC.

Writes OUT/backproject.mrc, the half maps OUT/half_map_a.mrc and OUT/half_map_b.mrc (even / odd particles), OUT/fsc.txt
(frequency in 1/A, FSC between the half maps), OUT/fsc.png, and prints the resolution at FSC = 0.143. With
--reference (e.g. a simulated ground truth) it also writes OUT/fsc_reference.txt and reports the resolution at 0.5.
Memory is estimated first (about 3 GB at D=256, 8 GB at D=384): when it exceeds what the machine has free (or
--max-memory-gb) the command stops with one line naming the need; --oversample 1 needs far less. CTF-premultiplied
stacks (rlnCtfDataAreCtfPremultiplied 1) are back-projected as such (the image carries one CTF factor).
OUT must be new or empty (--overwrite replaces these files, nothing else); it is created only once the inputs
have been read and checked. --run RUN back-projects the particles a run was trained on with the poses it learned
(train --refine-poses; validation particles keep their input poses).

Example:
  cryoscape backproject sim/particles.star -o bp/
  cryoscape backproject --run runs/refined --reference sim/gt/state_000.mrc -o bp_refined/
  cryoscape backproject sim/particles.mrcs --poses sim/pose.pkl --ctf sim/ctf.pkl \
      --reference sim/gt/state_000.mrc -o bp/
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from cryoscape.cli._options import add_cs_alignments_arg, add_ctf_override_args, ctf_overrides_from_args
from cryoscape.errors import InputError

log = logging.getLogger(__name__)

# everything `backproject` writes into OUT (--overwrite replaces these, also a stale fsc_reference.txt)
OUTPUTS = ("backproject.mrc", "half_map_a.mrc", "half_map_b.mrc", "fsc.txt", "fsc.png", "fsc_reference.txt")


def add_args(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``cryoscape backproject``."""
    parser.add_argument("particles", nargs="?", help="particles: .star, .cs, .mrcs or .txt (list of stacks); or --run")
    parser.add_argument("--run", metavar="RUN", help="instead of PARTICLES: the particles a `cryoscape train` run was "
                        "trained on, with the poses it learned (train --refine-poses) at --epoch")
    parser.add_argument("--epoch", type=int, help="with --run: the epoch whose learned poses to use (default: the "
                        "run's best epoch, else its last)")
    parser.add_argument("-o", "--outdir", required=True, help="output folder (new or empty, unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty OUT: replace the files backproject writes there, keep others")
    parser.add_argument("--poses", help="cryoDRGN pose.pkl (replaces the poses of the particle file)")
    parser.add_argument("--ctf", help="cryoDRGN ctf.pkl (replaces the CTF of the particle file)")
    parser.add_argument("--ind", help="file of 0-based particle indices to use (.npy, .txt or .pkl)")
    parser.add_argument("--datadir", help="folder holding the stacks named in a .star/.cs/.txt file")
    parser.add_argument("--apix", type=float, help="pixel size in Angstrom (overrides the files)")
    parser.add_argument("--ctf-correction", choices=("wiener", "flip", "none"), default="wiener",
                        help="CTF correction (default wiener)")
    parser.add_argument("--first", type=int, metavar="N", help="use only the first N particles (after --ind)")
    parser.add_argument("--invert-data", action="store_true", help="negate the images (protein dark on light)")
    parser.add_argument("--reference", metavar="MRC", help="map to compare the reconstruction with (FSC)")
    parser.add_argument("--batch-size", type=int, default=256, help="images processed at once (default 256)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--oversample", type=int, choices=(1, 2), default=2,
                        help="padding factor of the images and Fourier grid: 2 (default: the images are zero-padded "
                             "before the CTF, right for particles cut from micrographs) or 1 (8 times smaller grids; "
                             "exact for images whose CTF was applied on the box's own spectrum, as in cryoDRGN's "
                             "and CryoBench's simulations)")
    parser.add_argument("--max-memory-gb", type=float, metavar="GB",
                        help="refuse to start when the estimated memory exceeds GB (default: the memory available "
                             "on the machine; D=256 needs about 3 GB, D=384 about 8 GB)")
    add_cs_alignments_arg(parser)
    add_ctf_override_args(parser)



def _plot_fsc(path: Path, curves: list[tuple[str, np.ndarray, np.ndarray]], thresholds) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cryoscape.utils.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, s, curve in curves:
        ax.plot(s, curve, label=label)
    for t in thresholds:
        ax.axhline(t, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("spatial frequency (1/A)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def _write_curve(path: Path, s: np.ndarray, curve: np.ndarray, header: str) -> None:
    from cryoscape.utils.atomic import atomic_path

    with atomic_path(path) as tmp:
        np.savetxt(tmp, np.stack([s, curve], axis=1), fmt="%.6f", header=header)


def _run_particles(args: argparse.Namespace):
    """The particles of the run ``args.run`` (as trained: ``--ind`` applied) with the poses it learned."""
    import dataclasses

    from cryoscape.config import load_config
    from cryoscape.metadata import Poses
    from cryoscape.models.poses import load_learned_poses
    from cryoscape.models.registry import get_family
    from cryoscape.rundir import RunDir

    given = [name for name in ("poses", "ctf", "ind", "datadir", "apix", "cs_alignments") if getattr(args, name)]
    if given:
        raise InputError(f"--{given[0].replace('_', '-')} does not go with --run, which reads the run's own input")
    run = RunDir(args.run)
    config = load_config(run.config_path)
    family = get_family(config.model.family)
    if family.own_input_format:
        raise InputError(f"backproject --run takes single-particle runs; this is a {family.name} run", run.path)
    particles, _ = family.load_particles(config)
    if not config.train.learns_poses:
        log.info("%s did not refine poses (train --refine-poses): back-projecting with its input's poses", run.path)
        return particles
    epoch, learned = load_learned_poses(run.path, args.epoch)
    log.info("back-projecting with the poses learned by epoch %d (%d of %d particles refined)", epoch,
             int(learned["refined"].sum()), len(particles))
    return dataclasses.replace(particles, poses=Poses(learned["rotations"], learned["shifts_angstrom"]))


def run(args: argparse.Namespace) -> int:
    """Load the particles, back-project, write the maps and FSC."""
    from cryoscape.analysis.backprojection import NegatedImages, backproject
    from cryoscape.analysis.fsc import fsc, resolution_at
    from cryoscape.io.mrc import read_mrc, write_mrc
    from cryoscape.io.particles import load_particles
    from cryoscape.utils.outputs import prepare_output_dir

    out_dir = prepare_output_dir(args.outdir, "backproject", args.overwrite, own=OUTPUTS)
    if args.first is not None and args.first < 1:
        raise InputError(f"--first must be at least 1, got {args.first}")
    if (args.particles is None) == (args.run is None):
        raise InputError("give either PARTICLES or --run RUN")
    if args.run is not None:
        particles = _run_particles(args)
    else:
        particles = load_particles(args.particles, poses=args.poses, ctf=args.ctf, datadir=args.datadir,
                                   apix=args.apix, indices=args.ind, ctf_overrides=ctf_overrides_from_args(args),
                                   cs_alignments=args.cs_alignments)
    if particles.poses is None:
        raise InputError("the particles have no poses", args.particles, "pass --poses pose.pkl")
    if args.first is not None:
        particles = particles.subset(np.arange(min(args.first, len(particles))))
    apix = particles.pixel_size_angstrom
    ref = None
    if args.reference:
        ref, info = read_mrc(args.reference)
        if ref.shape != (particles.D,) * 3:
            raise InputError(f"reference map has shape {ref.shape} but the reconstruction is "
                             f"{(particles.D,) * 3}", args.reference, "resample the reference to the same box")
        ref_apix = info.voxel_size_angstrom
        if ref_apix > 0 and abs(ref_apix - apix) > 0.01 * apix:
            log.warning("%s: voxel size %.4f A differs from the particles' %.4f A", args.reference, ref_apix, apix)
    ctf = None if particles.ctf is None else particles.ctf.to_array()
    if ctf is None and args.ctf_correction != "none":
        log.warning("no CTF parameters: back-projecting without CTF correction")
    images = NegatedImages(particles.images) if args.invert_data else particles.images
    premultiplied = bool(getattr(particles, "ctf_premultiplied", False))
    log.info("back-projecting %d particles (D=%d, %.4f A/px, CTF correction %s%s)", len(particles), particles.D, apix,
             args.ctf_correction if ctf is not None else "none",
             ", CTF-premultiplied images" if premultiplied else "")
    result = backproject(images, particles.poses.rotations, particles.poses.shifts_px(apix), ctf, apix,
                         ctf_correction=args.ctf_correction, batch_size=args.batch_size,
                         progress=sys.stderr.isatty(), device=args.device, oversample=args.oversample,
                         max_memory_gb=args.max_memory_gb, ctf_premultiplied=premultiplied)
    freqs, curve = fsc(result["half_a"], result["half_b"])
    s = freqs / apix
    res = resolution_at(freqs, curve, 0.143, apix)
    curves = [("half maps", s, curve)]
    with out_dir as out:
        write_mrc(out / "backproject.mrc", result["volume"], apix)
        write_mrc(out / "half_map_a.mrc", result["half_a"], apix)
        write_mrc(out / "half_map_b.mrc", result["half_b"], apix)
        _write_curve(out / "fsc.txt", s, curve, "frequency_1/A  FSC(half_map_a, half_map_b)")
        print(f"half-map resolution (FSC = 0.143): {res:.2f} A")
        if ref is not None:
            freqs_r, curve_r = fsc(result["volume"], ref)
            _write_curve(out / "fsc_reference.txt", freqs_r / apix, curve_r,
                         "frequency_1/A  FSC(backproject, reference)")
            curves.append(("vs reference", freqs_r / apix, curve_r))
            print(f"resolution against the reference (FSC = 0.5): {resolution_at(freqs_r, curve_r, 0.5, apix):.2f} A")
        _plot_fsc(out / "fsc.png", curves, [0.143] + ([0.5] if ref is not None else []))
    log.info("wrote %s", out)
    return 0
