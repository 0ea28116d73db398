"""Ab initio reconstruction: learn a map (--zdim 0) or a latent space of maps (--zdim N) from images without poses.

PARTICLES is read as `cryoscape train` reads it (RELION STAR, cryoSPARC .cs, or an .mrcs stack with --ctf ctf.pkl);
poses in it are ignored (the log says so). Every particle's rotation and in-plane shift is searched against the
current decoder before its training step: a global search over a uniform HEALPix grid of SO(3) (576 rotations, 30
degrees apart) x a square grid of shifts (+-10 % of the box), refined on three finer grids (3.75 degrees) around
the 8 best, comparing the Fourier pixels within a lattice radius that grows from D/8 to D/4 over the search
epochs. The first --pretrain images train on random poses. When fewer than 10 % of the poses still move by more
than 7.5 degrees in an epoch (after at least 3 search epochs; at the latest after --search-epochs) the run switches
to local refinement: one damped Gauss-Newton step of each particle's pose per epoch (`train --refine-poses`).
A heterogeneous run searches each image against the map of its own latent (the encoder's posterior mean).

The run folder is a normal run: `analyze`, `eval-vol`, `explore`, `filter` and `write-poses RUN -o OUT.star|.cs`
work on it; the estimated poses are RUN/poses/epoch_NNN.npz. An ab initio map has an arbitrary orientation and
hand: compare it with a reference with `cryoscape fsc --align` or `cryoscape evaluate --align`. Stop with Ctrl-C
and continue with --resume, as for train. Every option of `cryoscape train` applies, except --refine-poses and
--val-frac (every particle's pose is searched, none is held out).

Example:
  cryoscape abinit particles.star -o runs/abinit_homo -n 20
  cryoscape abinit particles.star -o runs/abinit_het --zdim 8 -n 30
  cryoscape abinit particles.star -o runs/abinit_homo --resume
  cryoscape analyze runs/abinit_homo     # the map (analysis/epoch_020/map.mrc), loss, viewing directions
  cryoscape fsc runs/abinit_homo/analysis/epoch_020/map.mrc reference.mrc --align
"""

from __future__ import annotations

import argparse

from cryoscape.cli import train as train_cli


def add_args(p: argparse.ArgumentParser) -> None:
    """The options of ``cryoscape train`` (same defaults, except --zdim 0), and the search's."""
    train_cli.add_args(p)
    g = p.add_argument_group("abinit", "the pose search (models/pose_search.py)")
    g.add_argument("--search-epochs", type=int, default=None,
                   help="at most this many epochs of global pose search before local refinement (default: half of "
                        "-n, at most 10; earlier when the poses are stable)")
    g.add_argument("--pretrain", dest="pretrain_images", type=int, default=None,
                   help="training images on random poses before the first search (default 1000)")


def run(args) -> int:
    from cryoscape.errors import InputError

    if args.refine_poses:
        raise InputError("cryoscape abinit refines the poses it finds itself; leave out --refine-poses")
    if args.val_frac not in (None, 0, 0.0):
        raise InputError(f"cryoscape abinit searches the pose of every particle: --val-frac must be 0, got "
                         f"{args.val_frac}")
    if not args.resume:
        epochs = args.epochs if args.epochs is not None else 20  # train's default
        args.zdim = 0 if args.zdim is None else args.zdim
        args.val_frac = 0.0
        if args.search_epochs is None:
            args.search_epochs = max(1, min(10, int(epochs) // 2))
        if args.pretrain_images is None:
            args.pretrain_images = 1000
        args.abinit = True
    else:
        args.abinit = None
    return train_cli.run(args)
