"""Per-class restart of a heterogeneous ab initio run (issue 18, ``discrete3``): does a fresh homogeneous search on
each k-means class of a trapped run pose the state the consensus turned?

Section 14d-14e of ``bench/RESULTS.md``: in ``cryoscape abinit --zdim 8`` on ``discrete3`` the consensus search
poses state 1 (core + subunit B) half-turned and inconsistently, and no later search against the run's own maps
repairs it; yet ``cryoscape abinit --zdim 0`` on state 1's particles alone converges. This script tests the
practical version (what a cryo-EM user does with classes: ab initio per class)::

    .venv/bin/python -m bench.abinit_reclass W RUN --epoch E [-K 3] [--epochs 10] [--search-epochs 8] \\
        [--retrain 15] [--threads 1]

``W``: the ``bench.abinit`` work folder (``sim/`` with ``particles.star``, ``labels.npz``, ``gt/``); ``RUN``: a
``--zdim N`` abinit run in it. Steps, each skipped when its output exists (so it resumes):

1. k-means (K) of RUN's epoch-E latents -> ``W/reclass_<RUN>_e<E>/class_<k>.npy`` (particle indices);
2. per class, ``cryoscape abinit sim/particles.star --ind class_<k>.npy --zdim 0`` (poses from scratch);
3. scores: per class, its pose errors per true state after one rotation for that (class, state) cell (a class's
   frame is its own), and the class map (``eval-vol``) aligned on its own to every true state;
4. with ``--retrain N``: the classes' poses (``write-poses``) merged into one STAR and ``cryoscape train --zdim 8
   -n N --refine-poses`` on all particles; the k-means ARI of its latents per epoch.

Writes ``bench/results/abinit_reclass_<RUN>_e<E>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.abinit import pose_errors, read_map
from bench.common import CRYOSCAPE_CMD, machine_info, run_timed, write_json

RESULTS = Path(__file__).resolve().parent / "results"


def class_scores(run: Path, ind: np.ndarray, A_true: np.ndarray, states: np.ndarray, truths: list[np.ndarray],
                 apix: float, out_map: Path) -> dict:
    """Pose errors per true state of one class run (one rotation per state inside the class) and its map against
    every true state (each alignment on its own)."""
    from cryoscape.analysis.align import align_maps
    from cryoscape.models.poses import load_learned_poses

    epoch, learned = load_learned_poses(run)
    R = learned["rotations"]
    R = R[ind] if len(R) != len(ind) else R
    s = states[ind]
    row: dict = {"epoch": epoch, "size": int(len(ind)),
                 "state_counts": np.bincount(s, minlength=len(truths)).tolist(), "per_state": {}}
    for k in np.unique(s):
        m = s == k
        if m.sum() < 20:
            continue
        err, hand = pose_errors(A_true[ind][m], R[m])
        row["per_state"][int(k)] = {"n": int(m.sum()), "hand": hand, "median_deg": round(float(np.median(err)), 1),
                                    "frac_under_10deg": round(float(np.mean(err < 10)), 3)}
    if not out_map.is_file():
        run_timed([*CRYOSCAPE_CMD, "eval-vol", str(run), "-o", str(out_map), "--overwrite"],
                  out_map.with_suffix(".log"))
    est = read_map(out_map)
    row["map_correlation_own_alignment"] = [round(float(align_maps(est, t, pixel_size_angstrom=apix).correlation), 3)
                                            for t in truths]
    return row


def _particle_table(blocks: dict) -> str:
    return next(k for k, v in blocks.items() if hasattr(v, "columns") and "rlnImageName" in v.columns)


def merged_star(work: Path, runs: list[Path], parent: Path, parent_epoch: int, skip: set[int]) -> Path:
    """One STAR with every class's estimated poses (``write-poses`` of each class run, rows concatenated); the
    particles of the classes in ``skip`` keep the parent run's poses of ``parent_epoch``."""
    import pandas as pd
    import starfile

    out = work / "merged_poses.star"
    if out.is_file():
        return out
    parts = []
    for k, run in enumerate(runs):
        if k in skip:
            star = work / f"parent_e{parent_epoch}_poses.star"
            if not star.is_file():
                run_timed([*CRYOSCAPE_CMD, "write-poses", str(parent), "--epoch", str(parent_epoch), "-o", str(star)],
                          work / "parent_poses.log")
            blocks = starfile.read(star, always_dict=True)
            key = _particle_table(blocks)
            blocks[key] = blocks[key].iloc[np.load(work / f"class_{k}.npy")]
            parts.append(blocks)
            continue
        star = work / f"{run.name}_poses.star"
        if not star.is_file():
            run_timed([*CRYOSCAPE_CMD, "write-poses", str(run), "-o", str(star)], work / f"{run.name}_poses.log")
        parts.append(starfile.read(star, always_dict=True))
    blocks = dict(parts[0])
    key = _particle_table(blocks)
    blocks[key] = pd.concat([p[key] for p in parts], ignore_index=True)
    starfile.write(blocks, out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("work", type=Path)
    p.add_argument("run", type=Path)
    p.add_argument("--epoch", type=int, required=True, help="epoch of RUN whose latents are clustered")
    p.add_argument("-K", type=int, default=3)
    p.add_argument("--zdim", type=int, default=8)
    p.add_argument("--epochs", type=int, default=10, help="-n of each class's abinit")
    p.add_argument("--search-epochs", type=int, default=8)
    p.add_argument("--only", type=int, nargs="*", help="run these classes' abinit only (parallel invocations)")
    p.add_argument("--skip", type=int, nargs="*", default=[],
                   help="classes not searched again: their particles keep RUN's epoch-E poses")
    p.add_argument("--retrain", type=int, default=0, help="epochs of the heterogeneous training on merged poses")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    from cryoscape.io.particles import load_particles

    sim = args.work / "sim"
    run = args.run if args.run.is_absolute() or args.run.exists() else args.work / args.run
    out = args.work / f"reclass_{run.name}_e{args.epoch}"
    out.mkdir(exist_ok=True)
    states = np.load(sim / "labels.npz")["state"]
    particles = load_particles(sim / "particles.star")
    A_true, apix = particles.poses.rotations, particles.pixel_size_angstrom
    truths = [read_map(t) for t in sorted((sim / "gt").glob("state_*.mrc"))]
    result: dict = {"machine": machine_info(), "run": str(run), "epoch": args.epoch, "K": args.K,
                    "class_abinit": {"epochs": args.epochs, "search_epochs": args.search_epochs}, "classes": []}

    z = np.load(run / "latents" / f"epoch_{args.epoch:03d}.npy")[:, : args.zdim]
    fit = KMeans(args.K, n_init=10, random_state=0).fit(z)
    result["kmeans_ari"] = round(float(adjusted_rand_score(states, fit.labels_)), 4)
    print(f"k-means({args.K}) ARI of epoch {args.epoch}: {result['kmeans_ari']}", flush=True)
    runs = []
    for k in range(args.K):
        ind_path = out / f"class_{k}.npy"
        if not ind_path.is_file():
            np.save(ind_path, np.flatnonzero(fit.labels_ == k))
        crun = out / f"run_class_{k}"
        runs.append(crun)
        if (args.only is not None and k not in args.only) or k in args.skip:
            continue
        if not (crun / "checkpoints").is_dir():
            r = run_timed([*CRYOSCAPE_CMD, "abinit", str(sim / "particles.star"), "--ind", str(ind_path), "--zdim",
                           "0", "-o", str(crun), "-n", str(args.epochs), "--search-epochs", str(args.search_epochs),
                           "--threads", str(args.threads), "--no-progress", "--seed", "0"], out / f"run_class_{k}.log")
            print(f"class {k}: abinit {r.get('wall_s')} s", flush=True)
    if args.only is not None:
        return 0
    for k, crun in enumerate(runs):
        if k in args.skip:
            continue
        row = class_scores(crun, np.load(out / f"class_{k}.npy"), A_true, states, truths, apix,
                           out / f"class_{k}_map.mrc")
        result["classes"].append(row)
        print(json.dumps({f"class {k}": row}), flush=True)
    if args.retrain:
        import starfile

        star = merged_star(out, runs, run, args.epoch, set(args.skip))
        het = out / "run_het"
        if not (het / "checkpoints").is_dir():
            r = run_timed([*CRYOSCAPE_CMD, "train", str(star), "--datadir", str(sim), "-o", str(het), "--zdim",
                           str(args.zdim), "-n",
                           str(args.retrain), "--refine-poses", "--threads", str(args.threads), "--no-progress",
                           "--seed", "0"], out / "run_het.log")
            result["retrain_wall_s"] = r.get("wall_s")
        names = starfile.read(star, always_dict=True)
        table = names[_particle_table(names)]
        src = starfile.read(sim / "particles.star", always_dict=True)
        src_table = src[_particle_table(src)]
        order = {n: i for i, n in enumerate(src_table["rlnImageName"])}
        rows = np.array([order[n] for n in table["rlnImageName"]])
        result["retrain_ari"] = {}
        for path in sorted((het / "latents").glob("epoch_*.npy")):
            zz = np.load(path)[:, : args.zdim]
            lab = KMeans(len(truths), n_init=10, random_state=0).fit(zz).labels_
            result["retrain_ari"][path.stem] = round(float(adjusted_rand_score(states[rows], lab)), 4)
        print(json.dumps({"retrain_ari": result["retrain_ari"]}), flush=True)
    write_json(RESULTS / f"abinit_reclass_{run.name}_e{args.epoch}.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
