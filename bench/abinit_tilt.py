"""Heterogeneous ab initio of tilt series (``cryoscape abinit --model tomodrgn --zdim N``, issue 18), scored
against the simulation's truth.

One command (the data: ``bench/atomic_states.py tilt4``, four compositional states of 1A28 as 41-tilt series)::

    .venv/bin/python bench/atomic_states.py tilt4 -N 1200 -D 32 --apix 5 --snr 0.1 -o bench/_work/t4
    .venv/bin/python -m bench.abinit_tilt --sim bench/_work/t4 --run bench/_work/t4_abinit_z8_s0 \\
        --start --zdim 8 --seed 0 --threads 1 -- -n 24 --search-epochs 10 --latent-search-epochs 2

``--start`` runs ``cryoscape abinit SIM/particles.star -o RUN --model tomodrgn`` (the options after ``--`` are
passed on) unless RUN already has checkpoints; without it an existing run is scored. Scores, per epoch with
written poses: the per-tilt pose errors after the one global rotation (and hand) that best maps the estimated
frame onto the true one (``bench.abinit.pose_errors``), their median per true state after one rotation for all
and after one rotation per state (a state's frame is a gauge, RESULTS 14b), and the k-means ARI of that epoch's
per-particle latents (k = the number of states). For the last epoch, the map at each k-means centre
(``eval-vol --zfile``) aligned on its own to every true state: does each class map best match the state most of
its particles come from? Writes ``bench/results/abinit_tilt_<RUN name>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.abinit import epoch_kmeans_ari, pose_errors, read_map
from bench.common import CRYOSCAPE_CMD, machine_info, run_timed, write_json

RESULTS = Path(__file__).resolve().parent / "results"


def score_epochs(run: Path, A_true: np.ndarray, image_particle: np.ndarray, states: np.ndarray,
                 zdim: int) -> list[dict]:
    """One row per epoch with written poses (see the module docstring). ``A_true``: ``(M, 3, 3)`` per tilt image;
    ``image_particle``: ``(M,)`` particle of each image; ``states``: ``(N,)`` true state per particle."""
    from cryoscape.models.poses import load_learned_poses

    image_states = states[image_particle]
    labels = np.unique(states)
    rows = []
    for path in sorted((run / "poses").glob("epoch_*.npz")):
        epoch = int(path.stem.split("_")[1])
        _, learned = load_learned_poses(run, epoch)
        A_est = learned["rotations"]
        if len(A_est) != len(A_true):
            raise SystemExit(f"{path}: {len(A_est)} rotations for {len(A_true)} tilt images")
        err, hand = pose_errors(A_true, A_est)
        row: dict = {"epoch": epoch, "hand": hand, "pose_median_deg": round(float(np.median(err)), 2),
                     "pose_p90_deg": round(float(np.percentile(err, 90)), 1),
                     "per_state_median_deg": [round(float(np.median(err[image_states == s])), 1) for s in labels],
                     "per_state_own_rotation_median_deg": [
                         round(float(np.median(pose_errors(A_true[image_states == s],
                                                           A_est[image_states == s])[0])), 1) for s in labels]}
        ari = epoch_kmeans_ari(run, epoch, zdim, states)
        if ari is not None:
            row["kmeans_ari"] = ari
        rows.append(row)
    return rows


def class_maps(run: Path, sim: Path, states: np.ndarray, epoch: int, zdim: int, apix: float) -> dict:
    """The maps at the k-means centres of ``epoch``'s latents, each aligned on its own to every true state."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    from cryoscape.analysis.align import align_maps

    truth_paths = sorted((sim / "gt").glob("state_*.mrc"))
    z = np.load(run / "latents" / f"epoch_{epoch:03d}.npy")[:, :zdim]
    fit = KMeans(len(truth_paths), n_init=10, random_state=0).fit(z)
    centres = run.parent / f"{run.name}_centres.txt"
    np.savetxt(centres, fit.cluster_centers_)
    out = run.parent / f"{run.name}_class_maps"
    run_timed([*CRYOSCAPE_CMD, "eval-vol", str(run), "--epoch", str(epoch), "--zfile", str(centres), "-o", str(out),
               "--overwrite"], run.parent / f"{run.name}_evalvol.log")
    maps = [read_map(m) for m in sorted(out.glob("vol_*.mrc"))]
    truths = [read_map(t) for t in truth_paths]
    majority = [int(np.bincount(states[fit.labels_ == k], minlength=len(truths)).argmax()) for k in range(len(maps))]
    corr = np.array([[align_maps(m, t, pixel_size_angstrom=apix).correlation for t in truths] for m in maps])
    return {"epoch": epoch, "kmeans_ari": round(float(adjusted_rand_score(states, fit.labels_)), 4),
            "class_sizes": np.bincount(fit.labels_, minlength=len(maps)).tolist(), "class_majority_state": majority,
            "class_map_correlation_own_alignment": np.round(corr, 3).tolist(),
            "each_class_best_matches_its_state": bool(all(corr[k].argmax() == majority[k] for k in range(len(maps)))),
            "states_found": sorted(set(majority))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sim", type=Path, required=True, help="tilt simulation folder (particles.star, labels.npz, gt/)")
    p.add_argument("--run", type=Path, required=True, help="the abinit run folder")
    p.add_argument("--start", action="store_true", help="run cryoscape abinit first (unless RUN has checkpoints)")
    p.add_argument("--zdim", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-maps", action="store_true", help="per-epoch table only (e.g. while the run goes on)")
    p.add_argument("extra", nargs="*", help="more abinit options (after --)")
    args = p.parse_args(argv)
    from cryoscape.io.tilt_series import load_tilt_series

    result: dict = {"machine": machine_info(), "sim": str(args.sim), "run": str(args.run),
                    "abinit_options": list(args.extra)}
    if args.start and not (args.run / "checkpoints").is_dir():
        r = run_timed([*CRYOSCAPE_CMD, "abinit", str(args.sim / "particles.star"), "-o", str(args.run), "--model",
                       "tomodrgn", "--zdim", str(args.zdim), "--seed", str(args.seed), "--threads",
                       str(args.threads), "--no-progress", *args.extra], args.run.parent / f"{args.run.name}.log")
        result.update(wall_s=r.get("wall_s"), peak_rss_mib=r.get("peak_rss_mib"), returncode=r.get("returncode"))
    tilts = load_tilt_series(args.sim / "particles.star")
    image_particle = np.repeat(np.arange(len(tilts.offsets) - 1), np.diff(tilts.offsets))
    with np.load(args.sim / "labels.npz") as lab:
        states = np.asarray(lab["state"])
    if len(states) != len(tilts.offsets) - 1:
        raise SystemExit(f"{args.sim}: {len(states)} labels for {len(tilts.offsets) - 1} particles")
    result["by_epoch"] = score_epochs(args.run, tilts.rotations, image_particle, states, args.zdim)
    for row in result["by_epoch"]:
        print(json.dumps(row), flush=True)
    if not args.no_maps and result["by_epoch"]:
        apix = float(tilts.pixel_size_angstrom)
        result["class_maps"] = class_maps(args.run, args.sim, states, result["by_epoch"][-1]["epoch"], args.zdim, apix)
        print(json.dumps(result["class_maps"]), flush=True)
    write_json(RESULTS / f"abinit_tilt_{args.run.name}.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
