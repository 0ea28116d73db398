"""Place a tilt-series run's particles back into their tomograms: ChimeraX scripts and the tomogram context.

Clusters come from --labels (one per run particle), -k (k-means of the latents) or `cryoscape analyze`'s k-means.
Positions and poses come from --star (default: the run's input): a RELION 5 optimisation set, a volume-series STAR
(one row per particle, e.g. particles_volumeseries.star of `cryoscape simulate-tilt`) or an image-series STAR with
rlnCoordinateX/Y/Z (markers only); it must list the particles in the order of the run's input. Writes
DIR/TOMOGRAM.cxc (open in ChimeraX: markers, or one cluster map per particle with --mode volumes),
DIR/cluster_colors.txt, DIR/cluster_distribution.csv/.png (clusters per tomogram), DIR/neighbours.csv (each
particle's nearest neighbour: distance, cluster, direction in the particle's frame) and DIR/neighbour_summary.csv.
DIR must be new or empty unless --overwrite is given (which replaces these files there, nothing else).

Example:
  cryoscape chimerax-placement runs/tomo -k 4 --star sim/particles_volumeseries.star -o runs/tomo/placement
  cryoscape chimerax-placement runs/tomo --mode volumes --volumes runs/tomo/analysis/epoch_020/kmeans4 -o place/
"""

from __future__ import annotations

import argparse

# everything `chimerax-placement` writes into DIR (one TOMOGRAM.cxc per tomogram)
OUTPUTS = ("*.cxc", "cluster_colors.txt", "cluster_distribution.csv", "cluster_distribution.png", "neighbours.csv",
           "neighbour_summary.csv")


def add_args(p: argparse.ArgumentParser) -> None:
    """Register the options of ``cryoscape chimerax-placement``."""
    p.add_argument("run", help="run folder written by `cryoscape train --model tomodrgn`")
    p.add_argument("-o", "--outdir", required=True, help="output folder (new or empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty DIR: replace the files chimerax-placement writes there, keep others")
    p.add_argument("--star", help="STAR with particle coordinates/poses (default: the run's input file)")
    p.add_argument("--epoch", type=int, help="epoch of the latents (default: best_epoch, else the last)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--labels", help=".npy/.txt cluster label per run particle (RUN/indices.npy order)")
    g.add_argument("-k", type=int, help="k-means clusters of the latents (default: the labels of `cryoscape analyze`)")
    p.add_argument("--mode", choices=["markers", "volumes"], default="markers", help="what to place (default markers)")
    p.add_argument("--volumes", help="folder with vol_001.mrc ... (map of cluster c is vol_{c+1:03d}.mrc)")
    p.add_argument("--level", type=float, help="contour level of the placed maps")
    p.add_argument("--marker-radius", type=float, default=50.0, help="marker radius in Angstrom (default 50)")
    p.add_argument("--coord-apix", type=float,
                   help="pixel size (A) of the STAR's rlnCoordinateX/Y/Z (default: from the file; optimisation sets: "
                        "rlnTomoTiltSeriesPixelSize, x rlnTomoSubtomogramBinning for WarpTools *.tomostar sets; "
                        "see docs/tomography.md)")
    p.add_argument("--tomogram-dir", help="folder with TOMOGRAM.mrc files to open under the markers")
    p.add_argument("--seed", type=int, default=0, help="k-means seed (default 0)")


def _labels(args, run_dir, latents):
    import numpy as np

    from cryoscape.errors import InputError

    if args.labels:
        path = args.labels
        labels = np.load(path) if str(path).endswith(".npy") else np.loadtxt(path, ndmin=1)
    elif args.k:
        from cryoscape.analysis.latent import kmeans_on_data

        labels = kmeans_on_data(latents.z, args.k, seed=args.seed).labels
    else:
        from cryoscape.analysis.selection import find_kmeans_labels

        labels = np.load(find_kmeans_labels(run_dir, latents.epoch))
    labels = np.asarray(labels).astype(np.int64).ravel()
    if labels.shape != (latents.z.shape[0],) or labels.min() < 0:
        raise InputError(f"{labels.size} cluster labels for {latents.z.shape[0]} particles of the run",
                         args.labels or run_dir)
    return labels


def run(args) -> int:
    """Write the ChimeraX scripts and the tomogram-context tables and plot."""
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from cryoscape.analysis import tomogram as tc
    from cryoscape.analysis.latent import load_latents
    from cryoscape.analysis.plots import save_figure
    from cryoscape.config import load_config
    from cryoscape.errors import InputError
    from cryoscape.io.mrc import read_header
    from cryoscape.utils.atomic import atomic_path, atomic_write_text
    from cryoscape.utils.outputs import prepare_output_dir

    out_dir = prepare_output_dir(args.outdir, "chimerax-placement", args.overwrite, own=OUTPUTS)
    run_dir = Path(args.run)
    config = load_config(run_dir / "config.yaml")
    latents = load_latents(run_dir, args.epoch)
    indices = latents.indices if latents.indices is not None else np.arange(latents.z.shape[0])
    labels = _labels(args, run_dir, latents)
    star = Path(args.star or config.data.particles)
    placements = tc.read_placements(star, args.coord_apix)
    if indices.max() >= len(placements):
        raise InputError(f"the run uses particle {int(indices.max())} but this file has {len(placements)} particles",
                         star, "give the STAR file of the run's input (same particles, same order)")
    tomos = placements.tomograms[indices]
    coords = placements.coordinates_angstrom[indices]
    rot = None if placements.rotations is None else placements.rotations[indices]
    k = int(labels.max()) + 1
    colors = tc.cluster_colors(k)
    volumes = None
    if args.mode == "volumes":
        if not args.volumes:
            raise InputError("--mode volumes needs --volumes DIR with vol_001.mrc ... (one map per cluster)")
        volumes = {}
        for c in range(k):
            path = Path(args.volumes) / f"vol_{c + 1:03d}.mrc"
            info = read_header(path)
            volumes[c] = (str(path.resolve()), info.shape[-1], info.voxel_size_angstrom)
    with out_dir as out:
        atomic_write_text(out / "cluster_colors.txt", "".join(
            f"{c}\t{tc._hex(colors[c])}\t{int((labels == c).sum())}\n" for c in range(k)))
        for t in np.unique(tomos.astype(str)):
            sel = np.flatnonzero(tomos.astype(str) == t)
            tmap = None
            if args.tomogram_dir and (Path(args.tomogram_dir) / f"{t}.mrc").is_file():
                tmap = str((Path(args.tomogram_dir) / f"{t}.mrc").resolve())
            text = tc.chimerax_script(t, coords[sel], labels[sel], colors, None if rot is None else rot[sel], volumes,
                                      args.marker_radius, args.level, tmap)
            atomic_write_text(out / f"{Path(t).stem}.cxc", text)
        table = tc.cluster_distribution(tomos, labels)
        with atomic_path(out / "cluster_distribution.csv") as tmp:
            table.to_csv(tmp)
        save_figure(tc.plot_cluster_distribution(table), out / "cluster_distribution.png")
        nn = tc.nearest_neighbours(coords, tomos, rot)
        has = nn["index"] >= 0
        neighbours = pd.DataFrame({"particle": indices, "tomogram": tomos, "cluster": labels,
                                   "neighbour": np.where(has, indices[np.maximum(nn["index"], 0)], -1),
                                   "neighbour_cluster": np.where(has, labels[np.maximum(nn["index"], 0)], -1),
                                   "distance_angstrom": nn["distance_angstrom"],
                                   "direction_x": nn["direction"][:, 0], "direction_y": nn["direction"][:, 1],
                                   "direction_z": nn["direction"][:, 2]})
        with atomic_path(out / "neighbours.csv") as tmp:
            neighbours.to_csv(tmp, index=False)
        summary = tc.neighbour_summary(nn, labels)
        with atomic_path(out / "neighbour_summary.csv") as tmp:
            summary.to_csv(tmp, index=False)
    frame = "particle" if rot is not None else "tomogram"
    print(f"wrote {len(np.unique(tomos))} ChimeraX script(s) and the tomogram context to {out} "
          f"(neighbour directions in the {frame} frame)")
    return 0
