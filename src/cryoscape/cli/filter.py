"""Select particles of a trained run and write them back out (index list + STAR/.cs subset with all metadata).

Select by k-means cluster from `cryoscape analyze`, by a range of one latent dimension, or by an index file.
Writes OUT/indices.npy and OUT/indices.txt (indices into the original input) and OUT/particles.star (or .cs,
the input's format), ready for RELION or cryoSPARC, or to retrain cryoscape with --ind. OUT must be new or empty;
--overwrite replaces an earlier selection's files there (other files are kept). For a run that refined poses
(train --refine-poses) or estimated them (cryoscape abinit) the subset carries the poses learned by the epoch of the
latents (--input-poses: the input's); for tilt-series runs the learned per-tilt poses, written to Warp/M image-series
STAR files only. A run without a latent space (--zdim 0) selects with --ind only; its poses are those of the best
(else the last) epoch, or of --epoch.

Example:
  cryoscape filter runs/vae8 --clusters 3 7 -o runs/vae8/selected
  cryoscape filter runs/vae8 --z-range 0 -1.0 0.5 --invert -o junk_removed
  cryoscape filter runs/abinit_homo --ind good.txt -o runs/abinit_homo/good
"""

from __future__ import annotations

import argparse

# everything `filter` writes into OUT (the subset's format depends on the input; tilt series add tomograms.star)
OUTPUTS = ("indices.npy", "indices.txt", "particles.star", "particles.cs", "particles_optimisation_set.star",
           "tomograms.star")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder written by `cryoscape train`")
    p.add_argument("-o", "--outdir", required=True, help="output folder (new or empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty OUT: replace the selection files filter writes there, keep others")
    g = p.add_argument_group("selection (exactly one)")
    g.add_argument("--clusters", type=int, nargs="+", help="k-means cluster numbers (0-based) to keep")
    g.add_argument("--z-range", nargs=3, metavar=("DIM", "LO", "HI"), help="keep LO <= z[DIM] <= HI (DIM 0-based)")
    g.add_argument("--ind", help="indices into the original input (.npy, .txt or .pkl)")
    p.add_argument("--invert", action="store_true", help="keep the complement of the selection")
    p.add_argument("--epoch", type=int, help="epoch of the latents/analysis (default: best, else last)")
    p.add_argument("--k", type=int, help="which k-means result (kmeansK) when several exist")
    p.add_argument("--analysis", help="analysis folder of the k-means labels (default: the latest `analyze` output of "
                   "the epoch, recorded in RUN/analyses.txt whatever its -o was, else RUN/analysis/epoch_NNN)")
    p.add_argument("--particles", help="write the subset of this file instead (e.g. the full-size STAR the run's "
                   "downsampled input was made from: same particles, same order)")
    p.add_argument("--datadir", help="folder of the stacks of --particles")
    p.add_argument("--input-poses", action="store_true",
                   help="a run that refined or estimated poses (train --refine-poses, cryoscape abinit): write the "
                        "input's poses instead of the poses learned by the epoch of the latents (the default for "
                        "such runs)")
    p.add_argument("--format", choices=["star", "cs", "auto"], default="auto",
                   help="subset format (default: that of the input; .mrcs inputs get a STAR)")


def run(args) -> int:
    from pathlib import Path

    import numpy as np

    from cryoscape.analysis.selection import (
        find_kmeans_labels,
        learned_poses_of,
        load_run_input,
        select_particles,
        write_selection,
    )
    from cryoscape.config import load_config
    from cryoscape.errors import InputError
    from cryoscape.io.indices import read_indices, read_particle_indices
    from cryoscape.utils.outputs import prepare_output_dir

    out_dir = prepare_output_dir(args.outdir, "filter", args.overwrite, own=OUTPUTS)
    run_dir = Path(args.run)
    config = load_config(run_dir / "config.yaml")
    latents = _latents_or_none(run_dir, config, args)
    particles, family = load_run_input(config)
    n_input = len(particles)
    if args.particles:
        particles, _ = load_run_input(config, args.particles, args.datadir)
        if len(particles) != n_input:
            raise InputError(f"has {len(particles)} particles but the run's input has {n_input}", args.particles,
                             "give the file the run's input was made from (same particles, same order)")
    if latents is None:  # --zdim 0: no latents; the run's particles and an epoch of its checkpoints
        from cryoscape.analysis.latent import LatentSet
        from cryoscape.rundir import RunDir

        rd = RunDir(run_dir)
        trained = rd.read_indices()
        trained = np.arange(n_input, dtype=np.int64) if trained is None else trained
        latents = LatentSet(z=np.zeros((len(trained), 0), np.float32), epoch=rd.resolve_epoch(args.epoch),
                            run_dir=run_dir, indices=trained)
    assert latents.epoch is not None  # the latents of a run folder name their epoch
    # a run folder without indices.npy trained on the whole input, in order
    run_indices = latents.indices if latents.indices is not None else np.arange(len(latents.z), dtype=np.int64)
    labels = None
    if args.clusters is not None:
        labels = np.load(find_kmeans_labels(run_dir, latents.epoch, args.k,
                                            Path(args.analysis) if args.analysis else None))
    z_range = None
    if args.z_range is not None:
        try:
            z_range = (int(args.z_range[0]), float(args.z_range[1]), float(args.z_range[2]))
        except ValueError:
            raise InputError("--z-range needs an integer DIM and two numbers LO HI") from None
    ind = None
    if args.ind:  # a tilt-series run counts particles; a per-image (tilt) index file is named as such
        offsets = getattr(particles, "offsets", None)
        ind = read_particle_indices(args.ind, offsets) if offsets is not None else read_indices(args.ind, n=n_input)
    chosen = select_particles(latents.z, run_indices, n_input, cluster_labels=labels,
                              clusters=args.clusters, z_range=z_range, ind=ind, invert=args.invert)
    learned = None
    if (config.train.refine_poses or config.train.abinit) and not args.input_poses:
        learned = learned_poses_of(run_dir, family, particles, chosen, latents.epoch)
    with out_dir as out:
        written = write_selection(particles, family, chosen, out, args.format, learned=learned)
        if learned is not None:
            print(f"poses: those learned by epoch {latents.epoch} (--input-poses keeps the input's)")
    print(f"selected {len(chosen)} of {n_input} particles -> {', '.join(str(p) for p in written)}")
    return 0


def _latents_or_none(run_dir, config, args):
    """The latents of ``args.epoch`` (:func:`~cryoscape.analysis.latent.load_latents`); ``None`` for a run without a
    latent space (--zdim 0, e.g. ``cryoscape abinit``), which can only be filtered with --ind.
    """
    from cryoscape.analysis.latent import load_latents
    from cryoscape.errors import InputError

    if config.model.zdim != 0:
        return load_latents(run_dir, args.epoch)
    if args.clusters is not None or args.z_range is not None:
        raise InputError("this run has no latent space (--zdim 0), so --clusters and --z-range do not apply", run_dir,
                         hint="select particles with --ind")
    return None
