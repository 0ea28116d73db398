"""Run the demo: simulate a heterogeneous sample, train a small model, analyse it and score the recovery.

Takes a few minutes on a 2-core CPU. Prints how well the discrete state (an extra subunit, present in half the
particles) and the continuous motion (a hinge) were recovered against the simulation's ground truth, and where the
HTML report is.

The output folder must be new or empty; --overwrite runs the demo again in it, replacing the demo's own files
(data/, run/, demo_scores.json) and keeping everything else, including the selections exported from
`cryoscape explore` into run/explore_selections/.

Example:
  cryoscape demo -o cryoscape-demo
  cryoscape demo -o cryoscape-demo --overwrite     # run it again in the same folder
"""

from __future__ import annotations

import argparse


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--outdir", default="cryoscape-demo",
                   help="output folder, new or empty unless --overwrite (default cryoscape-demo)")
    p.add_argument("--overwrite", action="store_true",
                   help="run again in a non-empty folder: replace data/, run/ and demo_scores.json, keep other "
                        "files and run/explore_selections/")
    p.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    p.add_argument("-N", "--n-particles", type=int, help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    import dataclasses

    from cryoscape.demo import DemoSettings, format_scores, run_demo

    settings = DemoSettings()
    if args.epochs:
        settings = dataclasses.replace(settings, epochs=args.epochs)
    if args.n_particles:
        settings = dataclasses.replace(settings, n_particles=args.n_particles)
    scores = run_demo(args.outdir, settings, progress=not args.no_progress, overwrite=args.overwrite)
    ok = scores["discrete_accuracy"] >= 0.9 and scores["continuous_spearman"] >= 0.8
    print()
    print(format_scores(scores))  # the numbers of the report's "Evaluation against ground truth"
    if not ok:
        print("  WARNING: the recovery is weaker than expected (>= 90% sorted, rho >= 0.8)")
    return 0
