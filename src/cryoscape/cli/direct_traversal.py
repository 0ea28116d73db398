"""Latent points (and their maps) on straight lines between particles' latents.

Writes OUT/z_values.txt with N points per segment from the latent of the first anchor to the last (through every
anchor in order; the points need not lie in populated regions, see `cryoscape graph-traversal`) and, when
SOURCE is a run folder, the maps OUT/vol_001.mrc ... at the training voxel size. Anchors are row numbers of the
latent array (0-based, in RUN/indices.npy order); --z-start/--z-end give latent points directly instead.
OUT must be new or empty unless --overwrite is given (which replaces these files there, nothing else).

Example:
  cryoscape direct-traversal runs/vae8 --anchors 120 4711 -n 10 -o traj/
  cryoscape direct-traversal z.npy --z-start 0 0 0 0 0 0 0 0 --z-end 1 2 0 0 0 0 0 0 -o traj/
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_args(p: argparse.ArgumentParser) -> None:
    """Register the options of ``cryoscape direct-traversal``."""
    p.add_argument("source", help="run folder written by `cryoscape train`, or a .npy file of latents (N, zdim)")
    p.add_argument("-o", "--output", required=True, help="output folder (new or empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty OUT: replace z_values.txt and vol_NNN.mrc there, keep others")
    p.add_argument("--anchors", type=int, nargs="+", help="two or more latent row numbers to join in order")
    p.add_argument("--z-start", type=float, nargs="+", help="start latent (zdim values), with --z-end")
    p.add_argument("--z-end", type=float, nargs="+", help="end latent (zdim values), with --z-start")
    p.add_argument("-n", "--n-points", type=int, default=10, help="points per segment, ends included (default 10)")
    p.add_argument("--epoch", type=int, help="epoch of a run folder (default: best_epoch, else the last)")
    p.add_argument("--no-volumes", action="store_true", help="write z values only, no maps")
    p.add_argument("-b", "--batch-size", type=int, default=4, help="maps generated per batch (default 4)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (for generating maps)")


def run(args) -> int:
    """Run ``cryoscape direct-traversal``."""
    import numpy as np

    from cryoscape.analysis.latent import load_latents
    from cryoscape.analysis.traversal import direct_traversal, write_traversal
    from cryoscape.analysis.volume_space import load_generator
    from cryoscape.errors import InputError
    from cryoscape.utils.outputs import prepare_output_dir

    out_dir = prepare_output_dir(args.output, "direct-traversal", args.overwrite,
                                 own=("z_values.txt", "vol_[0-9]*.mrc"))
    latents = load_latents(args.source, args.epoch)
    z = latents.z
    if args.anchors is not None:
        if args.z_start is not None or args.z_end is not None:
            raise InputError("give either --anchors or --z-start/--z-end, not both")
        anchors = np.asarray(args.anchors)
        if anchors.size < 2:
            raise InputError("--anchors needs at least two row numbers")
        if anchors.min() < 0 or anchors.max() >= len(z):
            raise InputError(f"--anchors must be row numbers between 0 and {len(z) - 1}")
        ends = z[anchors]
    elif args.z_start is not None and args.z_end is not None:
        ends = np.array([args.z_start, args.z_end], dtype=np.float64)
        if ends.shape[1] != z.shape[1]:
            raise InputError(f"--z-start/--z-end need {z.shape[1]} values each (zdim), got {ends.shape[1]}")
    else:
        raise InputError("give --anchors, or both --z-start and --z-end")
    segments = [direct_traversal(a, b, args.n_points) for a, b in zip(ends[:-1], ends[1:], strict=True)]
    points = np.concatenate([segments[0]] + [s[1:] for s in segments[1:]])
    generator = None
    if latents.run_dir is not None and not args.no_volumes:
        generator = load_generator(latents.run_dir, latents.epoch, args.device)
    with out_dir as out:
        vols = write_traversal(out, points, generator, args.batch_size)
    log.info("%d points%s -> %s", len(points), f", {len(vols)} maps" if vols else "", out)
    return 0
