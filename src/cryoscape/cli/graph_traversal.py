"""A data-supported trajectory: the shortest path through the latent nearest-neighbour graph between anchors.

Latents closer than a threshold are joined (threshold chosen so each particle has 5 neighbours on average, at
most 10 kept per particle); Dijkstra's algorithm finds the shortest path through the anchors in order (cryoDRGN
paper, Methods). Parts of the graph that no such edge joins (a separate state, lone particles) are joined by
their shortest gaps, so a path between any two anchors exists; the steps across such a gap are not supported by
data and are reported as a warning (--strict refuses them instead, as cryoDRGN does). Anchors are latent row
numbers (0-based, in RUN/indices.npy order), e.g. the k-means centre particles of `cryoscape analyze`
(kmeansK/centers_ind.txt). Writes OUT/z_values.txt, OUT/path_indices.txt
(row numbers along the path), OUT/path_pca.png (the path on the PCA scatter) and, when SOURCE is a run folder,
the maps OUT/vol_001.mrc ... at the training voxel size. OUT must be new or empty unless --overwrite is given
(which replaces these files there, nothing else).

Example:
  cryoscape graph-traversal runs/vae8 --anchors 120 4711 9050 -o traj/
  cryoscape graph-traversal z.npy --anchors 3 77 --avg-neighbors 8 --max-neighbors 16 -o traj/
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_args(p: argparse.ArgumentParser) -> None:
    """Register the options of ``cryoscape graph-traversal``."""
    p.add_argument("source", help="run folder written by `cryoscape train`, or a .npy file of latents (N, zdim)")
    p.add_argument("--anchors", type=int, nargs="+", required=True,
                   help="two or more latent row numbers to visit in order")
    p.add_argument("-o", "--output", required=True, help="output folder (new or empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty OUT: replace the files graph-traversal writes there, keep others")
    p.add_argument("--avg-neighbors", type=float, default=5, help="average neighbours per particle (default 5)")
    p.add_argument("--max-neighbors", type=int, default=10, help="neighbours kept per particle at most (default 10)")
    p.add_argument("--strict", action="store_true",
                   help="fail when anchors lie in disconnected parts of the neighbour graph, instead of bridging "
                        "the gap between them by its shortest step")
    p.add_argument("--epoch", type=int, help="epoch of a run folder (default: best_epoch, else the last)")
    p.add_argument("--no-volumes", action="store_true", help="write z values only, no maps")
    p.add_argument("-b", "--batch-size", type=int, default=4, help="maps generated per batch (default 4)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (for generating maps)")


def run(args) -> int:
    """Run ``cryoscape graph-traversal``."""
    import numpy as np

    from cryoscape.analysis.latent import load_latents, run_pca
    from cryoscape.analysis.plots import plot_path, save_figure
    from cryoscape.analysis.traversal import graph_traversal, write_traversal
    from cryoscape.analysis.volume_space import load_generator
    from cryoscape.utils.atomic import atomic_path
    from cryoscape.utils.outputs import prepare_output_dir

    out_dir = prepare_output_dir(args.output, "graph-traversal", args.overwrite,
                                 own=("z_values.txt", "path_indices.txt", "path_pca.png", "vol_[0-9]*.mrc"))
    latents = load_latents(args.source, args.epoch)
    path = graph_traversal(latents.z, args.anchors, args.avg_neighbors, args.max_neighbors,
                           bridge_gaps=not args.strict)
    if len(path.bridges):
        steps = np.linalg.norm(latents.z[path.bridges[:, 1]] - latents.z[path.bridges[:, 0]], axis=1)
        log.warning("the path crosses %d gap(s) between disconnected parts of the neighbour graph (steps %s, "
                    "neighbour threshold %.4g), between particles %s: the maps across a gap are not supported by "
                    "data (--strict refuses such anchors)", len(steps), ", ".join(f"{s:.4g}" for s in steps),
                    path.threshold, ", ".join(f"{a}->{b}" for a, b in path.bridges))
    generator = None
    if latents.run_dir is not None and not args.no_volumes:
        generator = load_generator(latents.run_dir, latents.epoch, args.device)
    with out_dir as out:
        with atomic_path(out / "path_indices.txt") as tmp:
            np.savetxt(tmp, path.indices, fmt="%d")
        if latents.z.shape[1] >= 2:
            pc = run_pca(latents.z, n_components=2).projected
            fig = plot_path(pc, pc[path.indices], anchors_xy=pc[np.asarray(args.anchors)], title="graph traversal")
            save_figure(fig, out / "path_pca.png")
        vols = write_traversal(out, path.z, generator, args.batch_size)
    log.info("path through %d particles (length %.4g in latent space)%s -> %s", len(path.indices),
             path.cumulative_distance[-1], f", {len(vols)} maps" if vols else "", out)
    return 0
