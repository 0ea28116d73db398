"""Analyse a trained run: PCA/UMAP of the latents, k-means maps, PC traversals, loss curves and an HTML report.

Writes plots (PNG), maps (MRC) and a self-contained index.html into DIR (default RUN/analysis/epoch_NNN).
With --truth SIM_DIR (a `cryoscape simulate` output) the report also scores the run against the ground truth.

Example:
  cryoscape analyze runs/vae8 --ksample 20 --pc 2 -o runs/vae8/analysis
  cryoscape analyze runs/vae8 --epoch 15 --skip-umap
"""

from __future__ import annotations

import argparse


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder written by `cryoscape train`")
    p.add_argument("-o", "--outdir", help="output folder (default RUN/analysis/epoch_NNN)")
    p.add_argument("--epoch", type=int, help="epoch to analyse (default: best_epoch, else the last)")
    p.add_argument("--ksample", type=int, default=20, help="k-means clusters, one map each (default 20)")
    p.add_argument("--pc", type=int, default=2, help="principal components to traverse (default 2)")
    p.add_argument("--skip-umap", action="store_true", help="do not compute UMAP (faster for large data)")
    p.add_argument("--skip-vol", action="store_true", help="do not generate maps")
    p.add_argument("--truth", help="simulation folder with labels.npz (and gt/) to score against")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from cryoscape.analysis.analyze import analyze_run

    report = analyze_run(args.run, args.outdir, epoch=args.epoch, ksample=args.ksample, n_pcs=args.pc,
                         skip_umap=args.skip_umap, skip_volumes=args.skip_vol, truth=args.truth,
                         device=args.device, seed=args.seed)
    print(f"report: {report}")
    return 0
