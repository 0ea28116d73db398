"""Ab initio reconstruction: learn a map (--zdim 0) or a latent space of maps (--zdim N) from images without poses.

PARTICLES is read as `cryoscape train` reads it (RELION STAR, cryoSPARC .cs, or an .mrcs stack with --ctf ctf.pkl);
poses in it are ignored (the log says so). Every particle's rotation and in-plane shift is searched against the
current decoder before its training step: a global search over a uniform HEALPix grid of SO(3) (576 rotations, 30
degrees apart) x a square grid of shifts (+-10 % of the box), refined on three finer grids (3.75 degrees) around the
8 best, comparing the Fourier pixels within a lattice radius that grows from D/8 to D/4 over the search epochs (at
least 5 and 8, at most 16 and 32 pixels). The first --pretrain images train on random poses. When in an epoch fewer
than 10 % of the poses moved by more than 7.5 degrees and fewer than 5 % by more than 15 (after at least 3 search
epochs; at the latest after --search-epochs) the run switches to local refinement: one damped Gauss-Newton step of
each particle's pose per epoch (`train --refine-poses`). A log line at least every minute says the phase, the
lattice radius (in pixels and Angstrom), the share of poses that moved and the loss. A heterogeneous run searches
against one consensus map (the latent 0 for every image), then --latent-search-epochs (default 4) more search epochs
against each image's own map (the latent on), then refines locally. Where one state looks like another turned (two
subunits on opposite sides of a core, each present alone in some particles), the consensus can pose that state
turned, and the latent search does not repair it (bench/RESULTS.md 14d). Check the class maps: a state missing, or
two classes that match each other closely once aligned (`cryoscape fsc A.mrc B.mrc --align`), point to this.
When the search epochs run out with most poses still moving by more than 15 degrees, the log warns that the
search has probably not converged (and the report says so).
Default epochs: the most search epochs + 10 (homogeneous); the most search epochs + the latent search epochs + 15
(heterogeneous).

Tilt series (--model tomodrgn, a Warp/M image-series STAR file or a RELION 5 optimisation set): each tilt keeps
its rotation relative to the particle's reference tilt (the one nearest 0 degrees; the tilt geometry) and only the
particle's own rotation and shift are searched, every candidate scored by the weighted errors of all its tilts
(dose and tilt weights, lattice mask) summed; the shift is searched in the reference tilt's plane, the local
refinement adds its depth (as train --model tomodrgn --refine-poses). --pretrain counts particles.

The run folder is a normal run: `analyze`, `eval-vol`, `explore`, `filter` and `write-poses RUN -o OUT.star|.cs`
work on it; the estimated poses are RUN/poses/epoch_NNN.npz. An ab initio map has an arbitrary orientation and
hand: compare it with a reference with `cryoscape fsc --align` or `cryoscape evaluate --align`. Stop with Ctrl-C
and continue with --resume, as for train. Every option of `cryoscape train` applies, except --refine-poses and
--val-frac (every particle's pose is searched, none is held out).

Example:
  cryoscape abinit particles.star -o runs/abinit_homo
  cryoscape abinit particles.star -o runs/abinit_het --zdim 8 -n 30
  cryoscape abinit particles.star -o runs/abinit_homo --resume
  cryoscape abinit tilt_particles.star -o runs/abinit_tomo --model tomodrgn
  cryoscape analyze runs/abinit_homo     # the map (analysis/epoch_020/map.mrc), loss, viewing directions
  cryoscape fsc runs/abinit_homo/analysis/epoch_020/map.mrc reference.mrc --align
"""

from __future__ import annotations

import argparse

from cryoscape.cli import train as train_cli

# Heterogeneous defaults, measured on the AdK three-state hinge (D=64, 5000 images, SNR 0.1; bench/RESULTS.md 14b):
# with 4 latent search epochs the state far from the consensus was found (75 -> 18 degrees) and k-means ARI rose
# from 0.47 (none) to 0.86 after 6 local epochs, 0.905 after 11 and 0.908 after 18.
DEFAULT_LATENT_SEARCH_EPOCHS = 4
LOCAL_EPOCHS_HOMOGENEOUS = 10
LOCAL_EPOCHS_HETEROGENEOUS = 15


def default_epochs(search_epochs: int, zdim: int, latent_search_epochs: int) -> int:
    """Default ``-n``: the most search epochs, the latent search epochs (``--zdim N``) and then 10 local epochs for a
    homogeneous run, 15 for a heterogeneous one (its latents still sharpen after the poses settle).
    """
    if zdim == 0:
        return int(search_epochs) + LOCAL_EPOCHS_HOMOGENEOUS
    return int(search_epochs) + int(latent_search_epochs) + LOCAL_EPOCHS_HETEROGENEOUS


def add_args(p: argparse.ArgumentParser) -> None:
    """The options of ``cryoscape train`` (same defaults, except --zdim 0 and -n: :func:`default_epochs`), and the
    search's.
    """
    train_cli.add_args(p)
    # what abinit does not use stays parseable (it is refused or ignored with a message) but out of --help
    hidden = {"refine_poses", "pose_method", "pose_lr", "shift_lr", "refine_start", "focus_mask", "focus_consensus",
              "val_frac", "poses"}
    for group in p._action_groups:
        if group.title and group.title.startswith("opus-dsd"):
            group.description = None
            for action in group._group_actions:
                action.help = argparse.SUPPRESS
    own_help = {"zdim": "latent dimension; 0 = one map (homogeneous, the default), N = a latent space of maps",
                "model": "model family (default cryodrgn; tomodrgn for tilt series: one pose per particle, "
                         "searched with all its tilts; opus-dsd does not search poses yet)",
                "epochs": "epochs (default: the most search epochs + 10; with --zdim N: the most search epochs + "
                          "the latent search epochs + 15)"}
    for action in p._actions:
        if action.dest in hidden:
            action.help = argparse.SUPPRESS
        elif action.dest in own_help:
            action.help = own_help[action.dest]
    g = p.add_argument_group("abinit", "the pose search (models/pose_search.py)")
    g.add_argument("--search-epochs", type=int, default=None,
                   help="at most this many epochs of global pose search (every particle searched once per epoch) "
                        "before local refinement; earlier when the poses are stable (default: enough for about "
                        "60000 searched images, 10 to 40 epochs)")
    g.add_argument("--search-draws", type=int, default=None,
                   help="the first this many complete search epochs draw each particle's pose from its posterior "
                        "over the global grid instead of taking the best (stochastic EM: early wrong maps do not "
                        "lock the poses in); at most --search-epochs - 2 (default 0)")
    g.add_argument("--latent-search-epochs", type=int, default=None,
                   help="--zdim N: after the search against one consensus map, this many search epochs against each "
                        "image's own map (the decoder at its latent) before the local refinement (default "
                        f"{DEFAULT_LATENT_SEARCH_EPOCHS} with --zdim N, 0 with --zdim 0 or --classes; each costs "
                        "several training epochs)")
    g.add_argument("--classes", dest="search_classes", type=int, default=None,
                   help="--zdim N: keep K class maps instead of one consensus map while the poses "
                        "are searched (K from 2 to N; each particle searched against each, its class drawn from an "
                        "annealed posterior, as cryoSPARC's multi-class ab initio); for states that look alike "
                        "turned (README); then --latent-search-epochs defaults to 0. Default 0: one consensus "
                        "map")
    g.add_argument("--pretrain", dest="pretrain_images", type=int, default=None,
                   help="training images (tilt series: particles) on random poses before the first search "
                        "(default 1000)")


def run(args) -> int:
    import dataclasses

    from cryoscape.errors import InputError

    if args.refine_poses:
        raise InputError("--refine-poses: abinit refines the poses it finds itself; leave out --refine-poses")
    if args.val_frac not in (None, 0, 0.0):
        raise InputError(f"--val-frac must be 0 (abinit searches the pose of every particle), got "
                         f"{args.val_frac}")
    if args.focus_mask:
        raise InputError("--focus-mask needs known poses (the consensus is subtracted with them); run abinit "
                         "first, then train --focus-mask on its written poses")
    if args.resume:
        args.abinit = None  # as recorded
        return train_cli.run(args)
    from cryoscape.models.pose_search import default_search_epochs
    from cryoscape.models.registry import get_family
    from cryoscape.train.engine import TrainingInterrupted
    from cryoscape.train.run import train

    args.zdim = 0 if args.zdim is None else args.zdim
    args.val_frac = 0.0
    args.abinit = True
    search, epochs = args.search_epochs, args.epochs
    args.search_epochs = 1 if search is None else search  # set below from the number of particles
    args.pretrain_images = 1000 if args.pretrain_images is None else args.pretrain_images
    args.search_draws = 0 if args.search_draws is None else args.search_draws
    args.search_classes = 0 if args.search_classes is None else args.search_classes
    if args.latent_search_epochs is None:  # after a class search, each image was searched against its class's map
        # already, and searching its own map scrambled a state the classes had posed (bench/RESULTS.md 14g)
        args.latent_search_epochs = DEFAULT_LATENT_SEARCH_EPOCHS if args.zdim > 0 and not args.search_classes else 0
    if args.search_classes:
        if args.zdim < args.search_classes:
            raise InputError(f"--classes {args.search_classes} needs --zdim {args.search_classes} or more (class k is "
                             f"the k-th axis of the latent space), got --zdim {args.zdim}")
        if (args.model or "cryodrgn") not in ("cryodrgn", "tomodrgn"):
            raise InputError(f"--classes is for the cryodrgn and tomodrgn families, not --model {args.model}")
    config = train_cli.config_from_args(args)
    n = len(get_family(config.model.family).load_particles(config)[0])
    search = search if search is not None else default_search_epochs(n)
    epochs = epochs if epochs is not None else default_epochs(search, args.zdim, args.latent_search_epochs)
    t = dataclasses.replace(config.train, search_epochs=int(search), epochs=int(epochs))
    try:
        train(dataclasses.replace(config, train=t), args.outdir, progress=not args.no_progress)
    except TrainingInterrupted as exc:
        print(f"cryoscape abinit: {exc}")
        return 130
    return 0
