"""Analyse a trained run: PCA/UMAP of the latents, k-means maps, PC traversals, loss curves and an HTML report.

Writes plots (PNG), maps (MRC), a ChimeraX script that opens the maps (chimerax.cxc) and a self-contained
index.html into DIR (default RUN/analysis/epoch_NNN), and notes DIR in RUN/analyses.txt so that
`cryoscape filter --clusters` finds the k-means labels there. --flip, --invert and -D change the generated maps
as cryoDRGN's analyze does. With --truth SIM_DIR (a `cryoscape simulate` output) the report also scores the run
against the ground truth.

A run without a latent space (zdim 0: `cryoscape abinit` by default, `train --zdim 0`) gets its map instead
(DIR/map.mrc at the training voxel size, scaled with -D), the loss curves and, for a run that learned its poses,
their section (abinit: the viewing directions and the search; --refine-poses: how far the poses moved); the
latent options are not used, --truth and --reconstruct (they need latents) are refused, and RUN/analyses.txt is
left alone (there are no k-means labels).

DIR must be new or empty: to analyse the same epoch again into the same folder, give --overwrite (it replaces the
files analyze writes there and keeps any others).

Example:
  cryoscape analyze runs/vae8 --ksample 20 --pc 2 -o runs/vae8/analysis
  cryoscape analyze runs/vae8 --epoch 15 --skip-umap
  cryoscape analyze runs/vae8 --flip -D 128        # mirror the maps (wrong hand) and write them at box 128
  cryoscape analyze runs/abinit_homo               # zdim 0: map.mrc, loss curves, viewing directions
  cryoscape analyze runs/abinit_het --ksample 3 --align-maps   # class maps also superposed: kmeans3/aligned/
"""

from __future__ import annotations

import argparse


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder written by `cryoscape train` or `cryoscape abinit`")
    p.add_argument("-o", "--outdir", help="output folder (default RUN/analysis/epoch_NNN)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty DIR (e.g. analyse again): replace the files analyze writes there")
    p.add_argument("--epoch", type=int, help="epoch to analyse (default: best_epoch, else the last)")
    p.add_argument("--ksample", type=int, default=20, help="k-means clusters, one map each (default 20)")
    p.add_argument("--pc", type=int, default=2, help="principal components to traverse (default 2)")
    p.add_argument("--skip-umap", action="store_true", help="do not compute UMAP (faster for large data)")
    p.add_argument("--skip-vol", action="store_true", help="do not generate maps")
    p.add_argument("--flip", action="store_true", help="flip the handedness of the generated maps (mirror along z)")
    p.add_argument("--invert", action="store_true", help="invert the contrast of the generated maps")
    p.add_argument("-D", "--downsample", type=int, metavar="BOX",
                   help="write the generated maps at this (even) box size, Fourier-cropped (voxel size scaled)")
    p.add_argument("--truth", help="simulation folder with labels.npz (and gt/) to score against")
    p.add_argument("--truth-labels", default="state", metavar="NAME",
                   help="which labels of labels.npz the k-means clusters are scored against (default state; e.g. "
                        "subunit for the hinge_discrete preset)")
    p.add_argument("--truth-k", type=int, metavar="K",
                   help="k-means clusters scored against them (default: the number of labels; equal to --ksample: "
                        "the report's own clusters)")
    p.add_argument("--reconstruct", action="store_true",
                   help="also write latent-neighbour reconstructions (with half maps and FSC) at the k-means "
                        "centres and traversal points, in reconstruct/ of each map folder, and the variable region "
                        "their neighbourhoods are chosen in, variable_region.mrc (docs/metrics.md)")
    p.add_argument("--max-neighbours", type=int, default=2000, metavar="K",
                   help="most particles back-projected per reconstruction (default 2000)")
    p.add_argument("--align-maps", action="store_true",
                   help="also write the k-means maps aligned (rotation, translation; hand kept) to the largest "
                        "cluster's map, in kmeansK/aligned/ with alignment.json, and open those in chimerax.cxc "
                        "(10-30 s per map at D=64 on a CPU)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int, default=0)


# everything `analyze` writes into DIR (see cryoscape.analysis.analyze.analyze_run and analysis.report)
OUTPUTS = ("index.html", "figures", "explained_variance.png", "z_hist.png", "umap.npy", "z_pca.png", "z_pca_hexbin.png",
           "umap.png", "umap_hexbin.png", "loss.png", "kmeans[0-9]*", "pc[0-9]*", "z1", "evaluation.json",
           "chimerax.cxc", "map.mrc", "poses_moved_far.txt")


def run(args) -> int:
    from pathlib import Path

    from cryoscape.analysis.analyze import analysis_epoch, analyze_run
    from cryoscape.utils.outputs import prepare_output_dir

    outdir = args.outdir
    if outdir is None:
        outdir = Path(args.run) / "analysis" / f"epoch_{analysis_epoch(args.run, args.epoch):03d}"
    with prepare_output_dir(outdir, "analyze", args.overwrite, own=OUTPUTS):
        report = analyze_run(args.run, args.outdir, epoch=args.epoch, ksample=args.ksample, n_pcs=args.pc,
                             skip_umap=args.skip_umap, skip_volumes=args.skip_vol, truth=args.truth,
                             device=args.device, seed=args.seed, flip=args.flip, invert=args.invert,
                             downsample=args.downsample, truth_labels=args.truth_labels, truth_k=args.truth_k,
                             reconstruct=args.reconstruct, max_neighbours=args.max_neighbours,
                             align_maps=args.align_maps)
    print(f"report: {report}")
    return 0
