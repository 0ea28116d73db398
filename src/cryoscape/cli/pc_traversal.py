"""Latent points (and their maps) along principal components of a run's latent space.

For each requested principal component, writes OUT/pcI/z_values.txt with N points evenly spaced from its 5th to
its 95th percentile (the other components at the mean), OUT/pcI/pca_traversal.png (the points on the PCA
scatter) and, when RUN is a run folder, the maps OUT/pcI/vol_001.mrc ... at the training voxel size.
SOURCE may also be a .npy file of latents (N, zdim); then only z values and plots are written. OUT must be new or
empty unless --overwrite is given (which replaces the pcI/ folders there, nothing else).

Example:
  cryoscape pc-traversal runs/vae8 --pc 1 2 -o runs/vae8/analysis/pc_traversal
  cryoscape pc-traversal runs/vae8/latents/epoch_020.npy --pc 3 -n 20 --lim 10 90 -o pc3/
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_args(p: argparse.ArgumentParser) -> None:
    """Register the options of ``cryoscape pc-traversal``."""
    p.add_argument("source", help="run folder written by `cryoscape train`, or a .npy file of latents (N, zdim)")
    p.add_argument("-o", "--output", required=True, help="output folder (new or empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty OUT: replace the pcI/ folders there, keep other files")
    p.add_argument("--epoch", type=int, help="epoch of a run folder (default: best_epoch, else the last)")
    p.add_argument("--pc", type=int, nargs="+", help="principal components to traverse, 1-based (default: 1 2)")
    p.add_argument("-n", "--n-points", type=int, default=10, help="points per component (default 10)")
    p.add_argument("--lim", type=float, nargs=2, default=(5.0, 95.0), metavar=("LOW", "HIGH"),
                   help="percentile range along each component (default 5 95)")
    p.add_argument("--no-volumes", action="store_true", help="write z values only, no maps")
    p.add_argument("-b", "--batch-size", type=int, default=4, help="maps generated per batch (default 4)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (for generating maps)")


def run(args) -> int:
    """Run ``cryoscape pc-traversal``."""
    from cryoscape.analysis.latent import load_latents, pc_traversal_points, run_pca
    from cryoscape.analysis.plots import plot_path, save_figure
    from cryoscape.analysis.traversal import write_traversal
    from cryoscape.analysis.volume_space import load_generator
    from cryoscape.errors import InputError
    from cryoscape.utils.outputs import prepare_output_dir

    out_dir = prepare_output_dir(args.output, "pc-traversal", args.overwrite, own=("pc[0-9]*",))
    latents = load_latents(args.source, args.epoch)
    pca = run_pca(latents.z)
    n_comp = pca.components.shape[0]
    pcs = args.pc or list(range(1, min(2, n_comp) + 1))
    for pc in pcs:
        if not 1 <= pc <= n_comp:
            raise InputError(f"--pc {pc}: there are only {n_comp} principal components")
    generator = None
    if latents.run_dir is not None and not args.no_volumes:
        generator = load_generator(latents.run_dir, latents.epoch, args.device)
    with out_dir as out:
        for pc in pcs:
            points = pc_traversal_points(latents.z, pc, args.n_points, args.lim[0], args.lim[1], pca=pca)
            pc_dir = Path(out) / f"pc{pc}"
            vols = write_traversal(pc_dir, points, generator, args.batch_size)
            if n_comp >= 2:
                proj = (points - pca.mean) @ pca.components[:2].T
                save_figure(plot_path(pca.projected[:, :2], proj, title=f"PC{pc} traversal"),
                            pc_dir / "pca_traversal.png")
            log.info("PC%d: %d points%s -> %s", pc, len(points), f", {len(vols)} maps" if vols else "", pc_dir)
    if generator is None and latents.run_dir is None:
        log.info("maps: run `cryoscape eval-vol RUN --zfile %s/pcI/z_values.txt -o DIR`", out)
    return 0
