"""Ab initio reconstruction (``cryoscape abinit``, issue 18): maps and poses recovered from images without poses.

One command::

    .venv/bin/python -m bench.abinit                              # AdK (atomic model), D=64, N=5000, SNR 0.1, seed 0
    .venv/bin/python -m bench.abinit --seeds 0 1 2                # the issue's three seeds
    .venv/bin/python -m bench.abinit --preset discrete3 --zdim 8  # heterogeneous: k-means(3) ARI, class maps

Data: ``cryoscape simulate --pdb adk_closed.pdb`` (adenylate kinase, 1AKE, from the MDAnalysisTests source archive
on PyPI, as ``bench/atomic_states.py``; one chain, no symmetry; power to Nyquist) or ``--preset``, ``-D``, ``--apix``,
``--snr``, ``-N``, simulation seed 0. For each ``--seeds`` value one ``cryoscape abinit`` run (defaults except
``--zdim``, ``-n`` and ``--threads``) and:

* homogeneous: the map (``eval-vol``) aligned to the truth (``cryoscape.analysis.align.align_maps``: rotation,
  translation, hand), its FSC against the truth and the FSC=0.5 resolution, against the back-projection of the
  same particles with the true poses (``cryoscape backproject``, same truth); likewise the back-projection with the
  estimated poses (``backproject --run``, what a refinement would start from); the pose errors after the one global
  rotation (and hand) that best maps the estimated frame onto the true one: median, 90th percentile, fraction
  under 10 degrees; wall time; collapse check (map correlation with the truth);
* heterogeneous (``--zdim N``): k-means ARI (as many clusters as true states) of the last epoch's latents against
  the true states; each cluster centre's map (``eval-vol --zfile``), aligned once to the truth, correlated with
  every true state: does each class map best match the state most of its particles come from? Also each class
  map aligned on its own to every state (a heterogeneous ab initio run may find each state in its own frame) and
  the rotations between the class maps' frames.

Writes ``bench/results/abinit_<data>_D<D>_N<N>_z<zdim>_s<seeds>.json`` (one file per invocation, so seeds can run
as parallel invocations) and prints one JSON line per seed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.common import CRYOSCAPE_CMD, WORK, machine_info, run_timed, write_json

RESULTS = Path(__file__).resolve().parent / "results" / "abinit.json"


def pose_errors(A_true: np.ndarray, A_est: np.ndarray) -> tuple[np.ndarray, str]:
    """Geodesic errors (degrees) after the global rotation (and hand) that best maps the estimated poses on the
    true ones: ``A_est ~ A_true Q`` (same hand) or ``A_est ~ F A_true F Q`` (mirrored map, ``F = diag(1,1,-1)``);
    ``Q`` is refit on the better half of the particles (outliers do not pull it)."""
    from cryoscape.analysis.pose_frame import mean_rotation
    from cryoscape.imaging.so3_grid import geodesic_distance_deg

    F = np.diag([1.0, 1.0, -1.0])
    best, hand = None, ""
    for name, At in (("same", A_true), ("mirrored", F @ A_true @ F)):
        keep = np.ones(len(At), bool)
        for _ in range(4):
            Q = mean_rotation(At[keep], A_est[keep])
            err = geodesic_distance_deg(At @ Q, A_est)
            keep = err <= np.median(err)
        if best is None or np.median(err) < np.median(best):
            best, hand = err, name
    assert best is not None
    return best, hand


def epoch_kmeans_ari(run: Path, epoch: int, zdim: int, labels: np.ndarray) -> float | None:
    """k-means ARI (k = the number of true states) of ``run``'s latents of ``epoch`` against ``labels`` (one per row
    of the latents); None without a latent or a latents file."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    z_path = run / "latents" / f"epoch_{epoch:03d}.npy"
    if not zdim or not z_path.is_file():
        return None
    fit = KMeans(len(np.unique(labels)), n_init=10, random_state=0).fit(np.load(z_path)[:, :zdim])
    return round(float(adjusted_rand_score(labels, fit.labels_)), 4)


def search_classes(run: Path, epoch: int) -> np.ndarray | None:
    """The class of each particle after ``epoch`` of an ``abinit --classes`` run (its checkpoint's search state);
    None for a run without classes or without that checkpoint."""
    from cryoscape.rundir import load_checkpoint

    path = run / "checkpoints" / f"epoch_{epoch:03d}.pt"
    if not path.is_file():
        return None
    classes = load_checkpoint(path).get("poses", {}).get("classes")
    return None if classes is None or len(classes) == 0 else np.asarray(classes)


def by_epoch(run: Path, A_true: np.ndarray, labels: np.ndarray | None, zdim: int) -> list[dict]:
    """One row per epoch with written poses: pose errors after one global rotation (``pose_errors``), and with
    true states (``labels``) the median per state, after one rotation for all and after one rotation per state;
    with a latent (``zdim`` > 0) the k-means ARI of that epoch's latents (k = the number of states); for an
    ``abinit --classes`` run the ARI of the search's classes and their confusion matrix (states x classes)."""
    from cryoscape.models.poses import load_learned_poses

    rows = []
    for path in sorted((run / "poses").glob("epoch_*.npz")):
        epoch = int(path.stem.split("_")[1])
        _, learned = load_learned_poses(run, epoch)
        A_est = learned["rotations"]
        err, hand = pose_errors(A_true, A_est)
        row: dict = {"epoch": epoch, "hand": hand, "pose_median_deg": round(float(np.median(err)), 2),
                     "pose_frac_under_10deg": round(float(np.mean(err < 10)), 3)}
        if labels is not None:
            states = np.unique(labels)
            row["per_state_median_deg"] = [round(float(np.median(err[labels == s])), 1) for s in states]
            row["per_state_own_rotation_median_deg"] = [
                round(float(np.median(pose_errors(A_true[labels == s], A_est[labels == s])[0])), 1) for s in states]
            ari = epoch_kmeans_ari(run, epoch, zdim, labels)
            if ari is not None:
                row["kmeans_ari"] = ari
            classes = search_classes(run, epoch)
            if classes is not None:  # abinit --classes: the class of each particle at the end of that epoch
                from sklearn.metrics import adjusted_rand_score

                row["class_ari"] = round(float(adjusted_rand_score(labels, classes)), 4)
                row["class_confusion"] = [[int(np.sum((labels == s) & (classes == k)))
                                           for k in range(int(classes.max()) + 1)] for s in states]
        rows.append(row)
    return rows


def fsc_resolution(est: np.ndarray, truth: np.ndarray, apix: float) -> tuple[float, list[float]]:
    """FSC=0.5 resolution (A) of ``est`` against ``truth`` and the curve."""
    from cryoscape.analysis.fsc import fsc, resolution_at

    freqs, curve = fsc(est, truth)
    return float(resolution_at(freqs, curve, 0.5, apix)), [round(float(c), 3) for c in curve]


def read_map(path: Path) -> np.ndarray:
    import mrcfile

    with mrcfile.open(path, permissive=True) as f:
        return np.asarray(f.data, dtype=np.float32).copy()


def simulate(args, work: Path) -> Path:
    sim = work / "sim"
    if (sim / "particles.star").is_file():
        return sim
    cmd = [*CRYOSCAPE_CMD, "simulate", "-N", str(args.n), "-D", str(args.D), "--snr", str(args.snr),
           "--seed", "0", "-o", str(sim)]
    if args.preset:
        cmd += ["--preset", args.preset]
    else:
        pdb = args.pdb
        if pdb is None:
            from bench.atomic_states import read_member

            pdb = work / "adk_closed.pdb"
            pdb.write_bytes(read_member("adk_closed.pdb"))
        cmd += ["--pdb", str(pdb), "--apix", str(args.apix)]
    r = run_timed(cmd, work / "simulate.log")
    if r["returncode"]:
        raise SystemExit(f"simulate failed, see {work / 'simulate.log'}")
    return sim


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pdb", type=Path, help="atomic model (default: AdK, adk_closed.pdb)")
    p.add_argument("--preset", help="a simulate preset instead of an atomic model (e.g. discrete3)")
    p.add_argument("-D", type=int, default=64)
    p.add_argument("--apix", type=float, default=1.5)
    p.add_argument("-N", "--n", type=int, default=5000)
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--zdim", type=int, default=0)
    p.add_argument("--epochs", type=int, default=20, help="-n of the runs; 0: the command's own default")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tag", default="", help="names the runs and the results file (variants of the same data)")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more abinit options")
    args = p.parse_args(argv)
    from cryoscape.io.particles import load_particles
    from cryoscape.models.poses import load_learned_poses

    name = args.preset or (args.pdb.stem if args.pdb else "adk")
    work = WORK / f"abinit_{name}_D{args.D}_N{args.n}_snr{args.snr:g}"
    work.mkdir(parents=True, exist_ok=True)
    sim = simulate(args, work)
    particles = load_particles(sim / "particles.star")
    apix = particles.pixel_size_angstrom
    result: dict = {"machine": machine_info(), "data": {"source": name, "D": args.D, "apix": apix, "N": args.n,
                                                        "snr": args.snr}, "runs": {},
                          "abinit_options": list(args.extra), "tag": args.tag}
    truth_paths = sorted((sim / "gt").glob("state_*.mrc"))
    truth = read_map(truth_paths[0])
    if args.zdim == 0:
        bp = work / "bp_true"
        if not (bp / "backproject.mrc").is_file() and not list(bp.glob("*.mrc")):
            run_timed([*CRYOSCAPE_CMD, "backproject", str(sim / "particles.star"), "-o", str(bp)], work / "bp.log")
        bp_maps = [m for m in sorted(bp.glob("*.mrc")) if "half" not in m.name]
        if bp_maps:
            res_bp, curve_bp = fsc_resolution(read_map(bp_maps[0]), truth, apix)
            result["backprojection_true_poses"] = {"map": str(bp_maps[0]), "fsc05_A": res_bp, "fsc": curve_bp}
    tag = f"_{args.tag}" if args.tag else ""
    for seed in args.seeds:
        run = work / f"run_z{args.zdim}{tag}_s{seed}"
        log = work / f"run_z{args.zdim}{tag}_s{seed}.log"
        if not (run / "checkpoints").is_dir():
            epochs = ["-n", str(args.epochs)] if args.epochs else []
            r = run_timed([*CRYOSCAPE_CMD, "abinit", str(sim / "particles.star"), "-o", str(run), "--zdim",
                           str(args.zdim), *epochs, "--seed", str(seed), "--threads", str(args.threads),
                           "--no-progress", *args.extra], log)
        else:
            r = {"wall_s": None, "note": "existing run"}
        entry: dict = {"wall_s": r.get("wall_s"), "peak_rss_mib": r.get("peak_rss_mib")}
        epoch, learned = load_learned_poses(run)
        err, hand = pose_errors(particles.poses.rotations, learned["rotations"])
        entry.update(epoch=epoch, hand=hand, pose_median_deg=round(float(np.median(err)), 2),
                     pose_p90_deg=round(float(np.percentile(err, 90)), 2),
                     pose_frac_under_10deg=round(float(np.mean(err < 10)), 3))
        state_labels = np.load(sim / "labels.npz")["state"] if (sim / "labels.npz").is_file() else None
        entry["by_epoch"] = by_epoch(run, particles.poses.rotations, state_labels, args.zdim)
        for row in entry["by_epoch"]:
            print("epoch {epoch}: median {pose_median_deg} deg, < 10 deg {pose_frac_under_10deg}".format(**row),
                  *(f"{k} {row[k]}" for k in ("per_state_median_deg", "per_state_own_rotation_median_deg",
                                              "kmeans_ari", "class_ari") if k in row))
        if args.zdim == 0:
            from cryoscape.analysis.align import align_maps

            map_path = work / f"map{tag}_s{seed}.mrc"
            run_timed([*CRYOSCAPE_CMD, "eval-vol", str(run), "-o", str(map_path), "--overwrite"],
                      work / f"evalvol{tag}_s{seed}.log")
            est = read_map(map_path)
            al = align_maps(est, truth, pixel_size_angstrom=apix)
            aligned = al.apply(est)
            res, curve = fsc_resolution(aligned, truth, apix)
            entry.update(map_correlation=round(float(al.correlation), 4), fsc05_A=res, fsc=curve,
                         map_hand_flipped=bool(al.hand_flipped))
            if "backprojection_true_poses" in result:
                entry["fsc05_ratio_to_bp"] = round(res / result["backprojection_true_poses"]["fsc05_A"], 3)
            # the back-projection of the particles with the estimated poses (as a refinement would start from)
            bp_est = work / f"bp_est{tag}_s{seed}"
            if not (bp_est / "backproject.mrc").is_file():
                run_timed([*CRYOSCAPE_CMD, "backproject", "--run", str(run), "-o", str(bp_est)],
                          work / f"bp_est{tag}_s{seed}.log")
            if (bp_est / "backproject.mrc").is_file():
                est_bp = read_map(bp_est / "backproject.mrc")
                al_bp = align_maps(est_bp, truth, pixel_size_angstrom=apix)
                res_bp_est, curve_bp_est = fsc_resolution(al_bp.apply(est_bp), truth, apix)
                entry.update(bp_est_fsc05_A=res_bp_est, bp_est_fsc=curve_bp_est,
                             bp_est_correlation=round(float(al_bp.correlation), 4))
                if "backprojection_true_poses" in result:
                    entry["bp_est_ratio_to_bp"] = round(res_bp_est / result["backprojection_true_poses"]["fsc05_A"],
                                                        3)
        else:
            from sklearn.cluster import KMeans
            from sklearn.metrics import adjusted_rand_score

            from cryoscape.analysis.align import align_maps

            labels = state_labels if state_labels is not None else np.load(sim / "labels.npz")["state"]
            z = np.load(run / "latents" / f"epoch_{epoch:03d}.npy")[:, : args.zdim]
            fit = KMeans(len(truth_paths), n_init=10, random_state=0).fit(z)
            entry["kmeans_ari"] = round(float(adjusted_rand_score(labels, fit.labels_)), 4)
            # each cluster's map (at its centre) against every true state, after aligning the cluster maps'
            # common frame once (on the first cluster's best match)
            centres = work / f"centres{tag}_s{seed}.txt"
            np.savetxt(centres, fit.cluster_centers_)
            out = work / f"class_maps{tag}_s{seed}"
            run_timed([*CRYOSCAPE_CMD, "eval-vol", str(run), "--zfile", str(centres), "-o", str(out), "--overwrite"],
                      work / f"evalvol{tag}_s{seed}.log")
            maps = [read_map(m) for m in sorted(out.glob("vol_*.mrc"))]
            truths = [read_map(t) for t in truth_paths]
            al = align_maps(maps[0], truths[int(np.bincount(labels[fit.labels_ == 0]).argmax())],
                            pixel_size_angstrom=apix)
            corr = np.array([[float(np.corrcoef(al.apply(m).ravel(), t.ravel())[0, 1]) for t in truths]
                             for m in maps])
            majority = [int(np.bincount(labels[fit.labels_ == k], minlength=len(truths)).argmax())
                        for k in range(len(maps))]
            entry.update(class_map_correlation=np.round(corr, 3).tolist(), class_majority_state=majority,
                         each_class_best_matches_its_state=bool(all(corr[k].argmax() == majority[k]
                                                                    for k in range(len(maps)))))
            # each class map aligned on its own to each truth (its frame may differ from the other classes'), and
            # the rotation between the class maps' frames (each aligned to its majority state)
            own = [[align_maps(m, t, pixel_size_angstrom=apix) for t in truths] for m in maps]
            corr_own = np.array([[a.correlation for a in row] for row in own])
            rots = [own[k][majority[k]].rotation for k in range(len(maps))]
            rel = [[round(float(np.degrees(np.arccos(np.clip((np.trace(rots[a] @ rots[b].T) - 1) / 2, -1, 1)))), 1)
                    for b in range(len(maps))] for a in range(len(maps))]
            entry.update(class_map_correlation_own_alignment=np.round(corr_own, 3).tolist(),
                         each_class_best_matches_its_state_own_alignment=bool(
                             all(corr_own[k].argmax() == majority[k] for k in range(len(maps)))),
                         class_frames_relative_rotation_deg=rel)
        result["runs"][f"seed{seed}"] = entry
        brief = {k: v for k, v in entry.items() if not k.endswith("fsc") and k != "by_epoch"}
        print(json.dumps({f"seed{seed}": brief}))
    seeds = "_".join(str(s) for s in args.seeds)
    write_json(RESULTS.with_name(f"abinit_{name}_D{args.D}_N{args.n}_z{args.zdim}{tag}_s{seeds}.json"), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
