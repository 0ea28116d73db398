"""Score a trained run against simulation ground truth (labels.npz and gt/state_XXX.mrc of `cryoscape simulate`).

Reports the adjusted Rand index, confusion matrix and Hungarian-matched accuracy of k-means on the latents
(k = number of true labels unless -k; the labels are the states unless --labels names another array of
labels.npz, e.g. subunit), the fraction sorted when each cluster takes its majority label, the mean cluster
entropy (OPUS-DSD's measure, log base 10), |Spearman rho| of PC1 against the true continuous coordinate and,
unless --no-maps, the FSC (AUC, resolution at 0.5 and 0.143) and correlation of maps generated at each true
state's mean latent and at the k-means centres against the ground-truth maps. It also computes CryoBench's
metrics (docs/metrics.md): the per-image AU-FSC (maps at the latents of --n-images sampled images, seeded with
--seed, against each image's true map; masked FSC, area on a frequency axis ending at Nyquist = 0.5, so at most
0.5), the per-conformation AU-FSC (one map per true state at its mean latent) and the neighbourhood similarity
(fraction of each particle's k nearest latent neighbours, for each --neighbor-k, that share its true state or lie
within --neighbor-distance on the true coordinate); the metrics the truth (or --no-maps) leaves out are named
with the reason. With --align (for maps of an arbitrary orientation and hand, e.g. ab initio), the run's maps are
first brought onto the truth by one rotation, translation and, if it fits better, hand flip, found for the map of
the most populous state (`cryoscape fsc --align`'s search); the transform is printed and stored under
"alignment". With --reconstruct every map is a latent-neighbour reconstruction (`eval-vol --reconstruct`'s rule,
docs/metrics.md) instead of the decoder's. Prints a table and writes everything to OUT.json (an existing one only
with --overwrite).

Example:
  cryoscape evaluate runs/vae8 --truth sim/ -o runs/vae8/evaluation.json
  cryoscape evaluate runs/vae8 --truth sim/ --epoch 20 -k 5 --no-maps -o eval_epoch20.json
  cryoscape evaluate runs/abinit --truth sim/ --align -o runs/abinit/evaluation.json
  cryoscape evaluate runs/vae8 --truth sim/ --reconstruct -o runs/vae8/evaluation_reconstructed.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_args(p: argparse.ArgumentParser) -> None:
    """Register the options of ``cryoscape evaluate``."""
    p.add_argument("run", help="run folder written by `cryoscape train`")
    p.add_argument("--truth", required=True, help="simulation folder (labels.npz, gt/state_XXX.mrc)")
    p.add_argument("-o", "--output", required=True, help="output .json file")
    p.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    p.add_argument("--epoch", type=int, help="epoch to evaluate (default: best_epoch, else the last)")
    p.add_argument("-k", type=int, help="k-means clusters (default: the number of true labels)")
    p.add_argument("--labels", default="state", metavar="NAME",
                   help="which labels of labels.npz the clusters are scored against (default state; e.g. subunit)")
    p.add_argument("--mask", choices=["auto"], help="soft-mask maps (from each ground-truth map) before FSC")
    p.add_argument("--no-maps", action="store_true", help="skip generating and comparing maps")
    p.add_argument("--reconstruct", action="store_true",
                   help="score latent-neighbour reconstructions (eval-vol --reconstruct) instead of decoder maps")
    p.add_argument("--max-neighbours", type=int, default=2000, metavar="K",
                   help="with --reconstruct: most particles back-projected per map (default 2000)")
    p.add_argument("--align", action="store_true",
                   help="align the run's maps onto the truth (rotation, translation, hand flip) before comparing "
                        "them; report the transform")
    p.add_argument("--no-flip", action="store_true", help="with --align: keep the hand (search rotations only)")
    p.add_argument("--seed", type=int, default=0, help="k-means seed (default 0)")
    p.add_argument("-b", "--batch-size", type=int, default=4, help="maps generated per batch (default 4)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (for generating maps)")
    p.add_argument("--n-images", type=int, default=100,
                   help="images sampled for the per-image AU-FSC (default 100; all if fewer; 0 for all)")
    p.add_argument("--neighbor-k", type=int, nargs="+", default=[10, 50, 100], metavar="K",
                   help="neighbourhood sizes of the neighbourhood similarity (default 10 50 100)")
    p.add_argument("--neighbor-distance", type=float, metavar="DIST",
                   help="true-coordinate distance counted as a neighbour (default 0.025 x the coordinate range: "
                        "one step of 50 evenly spaced states is 0.0204)")


def run(args) -> int:
    """Run ``cryoscape evaluate``."""
    from cryoscape.analysis.evaluate import evaluate_run, format_evaluation, read_gt_maps
    from cryoscape.analysis.latent import load_latents
    from cryoscape.analysis.volume_space import load_generator
    from cryoscape.errors import InputError
    from cryoscape.utils.atomic import atomic_write_text
    from cryoscape.utils.outputs import check_output_file

    check_output_file(args.output, "evaluate", args.overwrite)
    if args.n_images < 0 or any(k < 1 for k in args.neighbor_k):
        raise InputError("--n-images must be >= 0 and every --neighbor-k >= 1")
    if args.align and args.no_maps:
        raise InputError("--align aligns maps: it cannot go with --no-maps")
    if args.reconstruct and args.no_maps:
        raise InputError("--reconstruct makes maps: it cannot go with --no-maps")
    if args.max_neighbours < 2:
        raise InputError(f"--max-neighbours must be at least 2, got {args.max_neighbours}")
    if args.no_flip and not args.align:
        raise InputError("--no-flip only applies with --align")
    truth = Path(args.truth)
    labels = truth / "labels.npz"
    if not labels.is_file():
        raise InputError("no labels.npz in the simulation folder", truth,
                         "give the output folder of `cryoscape simulate`")
    epoch = load_latents(args.run, args.epoch).epoch
    gt_maps, generator, gt_apix = None, None, None
    if not args.no_maps:
        gt_maps, gt_apix = read_gt_maps(truth)
        if args.reconstruct:
            from cryoscape.analysis.neighbour_recon import reconstructor_from_run

            generator = reconstructor_from_run(args.run, epoch, max_neighbours=args.max_neighbours,
                                               device=None if args.device == "auto" else args.device)
        else:
            generator = load_generator(args.run, epoch, args.device)
    result = evaluate_run(args.run, labels, gt_maps, generator, epoch=epoch, k=args.k, seed=args.seed,
                          mask=args.mask, batch_size=args.batch_size, gt_pixel_size_angstrom=gt_apix,
                          label_set=args.labels, n_images=None if args.n_images == 0 else args.n_images,
                          neighbor_ks=args.neighbor_k, neighbor_distance=args.neighbor_distance,
                          align=args.align, align_flip=not args.no_flip)
    result["truth"] = str(truth)
    if not args.no_maps:
        result["map_source"] = (f"latent-neighbour reconstructions (max_neighbours {args.max_neighbours})"
                                if args.reconstruct else "decoder")
    atomic_write_text(args.output, json.dumps(result, indent=1, allow_nan=False) + "\n")
    print(format_evaluation(result))
    print(f"wrote {args.output}")
    return 0
