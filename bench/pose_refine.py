"""Pose refinement during training (``train --refine-poses``, issue 17): poses, maps and classes recovered from
perturbed consensus poses, against training on the perturbed and on the true poses.

One command::

    .venv/bin/python -m bench.pose_refine                 # discrete3, N=3000, D=32, 20 epochs, 128x3, zdim 8
    .venv/bin/python -m bench.pose_refine -D 64 --n 5000  # the issue's size (a quiet machine)

Data: ``cryoscape simulate --preset discrete3 -N N -D D --snr 0.1 --seed 0``; the true poses are perturbed
(seed 1) by a rotation about a uniformly random axis by an angle ~ |N(0, 8 deg)| composed in the image frame and
by origin errors ~ N(0, 1.5 px) per axis, and written with every other column unchanged as ``perturbed.star``
(``cryoscape.io.pose_output``). Three runs of the same architecture, data and epochs: ``true`` (the simulator's
poses), ``perturbed`` (the perturbed poses, fixed) and ``refined`` (the perturbed poses with ``--refine-poses``);
every particle trained (``--val-frac 0``, so every pose is refined).

Measured:

* pose errors against the truth: rotation (geodesic angle) after the single global rotation ``G`` that best aligns
  the learned frame to the truth (``A_learned ~ A_true G``, the orthogonal polar factor of ``sum A_true^T
  A_learned``), and the origin error (pixels) after the best global 3-D translation of the map (least squares,
  ``s_learned - s_true ~ P A t``); medians and 90th percentiles;
* maps: ``cryoscape backproject`` of the particles of state 0 with each set of poses (true, perturbed, the refined
  poses written by ``cryoscape write-poses``), FSC against the ground-truth map of state 0, per shell up to 2/3
  Nyquist;
* heterogeneity: k-means(3) ARI of the last epoch's latents against the true states;
* cost: mean seconds per epoch (epochs 2..) of ``refined`` against ``perturbed`` (the runs run side by side on the
  same machine, one thread each).

``--add-run NAME`` evaluates another refining run trained by hand into ``WORK/run_NAME`` (other pose options, same
data) and adds it to the JSON; ``--gradient-check`` measures how well one image's pose gradient points at its true
correction with the model of the ``true`` run (:func:`gradient_alignment`).

Writes ``bench/results/pose_refine.json`` and prints a Markdown summary.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import subprocess
from pathlib import Path

import numpy as np

from bench.common import (
    CRYOSCAPE_CMD,
    WORK,
    TrainSpec,
    ensure_simulation,
    machine_info,
    run_timed,
    timed_train,
    write_json,
)


def perturb(sim: Path, out: Path, sigma_deg: float, sigma_px: float, seed: int = 1) -> dict:
    """Write ``out`` (STAR) with the poses of ``sim/particles.star`` perturbed; return the perturbation."""
    from scipy.spatial.transform import Rotation

    from cryoscape.io.particles import load_particles
    from cryoscape.io.pose_output import write_particles_with_poses
    from cryoscape.metadata import Poses

    ps = load_particles(sim / "particles.star")
    n = len(ps)
    rng = np.random.default_rng(seed)
    axes = rng.normal(size=(n, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = np.abs(rng.normal(scale=np.deg2rad(sigma_deg), size=n))
    errors = Rotation.from_rotvec(axes * angles[:, None]).as_matrix()
    rotations = errors @ ps.poses.rotations  # the error in the image frame, as the corrections are
    shift_err = rng.normal(scale=sigma_px, size=(n, 2))
    shifts = ps.poses.shifts_angstrom + shift_err * ps.pixel_size_angstrom
    write_particles_with_poses(ps, np.arange(n), Poses(rotations, shifts), out)
    return {"angle_deg_median": float(np.rad2deg(np.median(angles))), "shift_px_median":
            float(np.median(np.linalg.norm(shift_err, axis=1)))}


def pose_errors(rotations: np.ndarray, shifts_px: np.ndarray, true_rot: np.ndarray, true_px: np.ndarray) -> dict:
    """Rotation errors after the best global rotation, shift errors after the best global 3-D translation."""
    from cryoscape.models.poses import rotation_angle_deg

    M = np.einsum("nji,njk->ik", true_rot, rotations)  # sum A_true^T A_learned
    U, _, Vt = np.linalg.svd(M)
    G = U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt
    rot_err = rotation_angle_deg(rotations, true_rot @ G)
    raw_err = rotation_angle_deg(rotations, true_rot)
    d = shifts_px - true_px  # (N, 2) ~ (A t)_xy
    P = true_rot[:, :2, :]  # (N, 2, 3)
    t, *_ = np.linalg.lstsq(P.reshape(-1, 3), d.reshape(-1), rcond=None)
    shift_err = np.linalg.norm(d - P @ t, axis=1)
    return {"rot_median_deg": float(np.median(rot_err)), "rot_p90_deg": float(np.percentile(rot_err, 90)),
            "rot_median_deg_unaligned": float(np.median(raw_err)),
            "global_rotation_deg": float(rotation_angle_deg(G[None], np.eye(3)[None])[0]),
            "shift_median_px": float(np.median(shift_err)), "shift_p90_px": float(np.percentile(shift_err, 90)),
            "shift_median_px_unaligned": float(np.median(np.linalg.norm(d, axis=1))),
            "global_translation_px": t.round(3).tolist()}


def kmeans_ari(z: np.ndarray, states: np.ndarray) -> float:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    labels = KMeans(3, n_init=10, random_state=0).fit_predict(z)
    return float(adjusted_rand_score(states, labels))


def backproject_fsc(star: Path, sim: Path, ind: Path, out: Path) -> list[float]:
    """FSC per shell of the back-projection of the particles ``ind`` of ``star`` against state 0's truth."""
    res = run_timed([*CRYOSCAPE_CMD, "backproject", str(star), "--datadir", str(sim), "--ind", str(ind),
                     "--reference", str(sim / "gt" / "state_000.mrc"), "-o", str(out), "--overwrite"],
                    out.parent / f"{out.name}.log")
    if res["returncode"] != 0:
        raise RuntimeError(f"backproject failed: {res['log']}")
    table = np.loadtxt(out / "fsc_reference.txt", ndmin=2)
    return table[:, -1].round(4).tolist()


def gradient_alignment(run: Path, sim: Path, perturbed: Path, n: int = 256) -> dict:
    """How well one image's pose gradient points at its true correction: the model of ``run`` (e.g. trained on
    the true poses), ``n`` particles of ``perturbed``; the cosine between the descent direction ``-dL/dw`` at
    ``w = 0`` and the correction ``w*`` that maps each perturbed pose onto its true one (``exp([w*]x) A = A_true``),
    and likewise for the shifts. Cosines near 1: each image tells its pose; near 0: the gradient is mostly noise."""
    import torch
    from scipy.spatial.transform import Rotation

    from cryoscape.io.particles import load_particles
    from cryoscape.models.loading import load_run
    from cryoscape.models.poses import compose, hartley_translate
    from cryoscape.models.registry import get_family

    trained = load_run(run)
    family = get_family(trained.config.model.family)
    ps, truth = load_particles(perturbed), load_particles(sim / "particles.star")
    idx = np.arange(min(n, len(ps)))
    data = family.make_data(ps.subset(idx), trained.config, norm_std=trained.build["norm_std"], progress=False)
    batch = data.batch(np.arange(len(idx)))
    w_star = Rotation.from_matrix(truth.poses.rotations[idx] @ ps.poses.rotations[idx].transpose(0, 2, 1)).as_rotvec()
    s_star = (truth.poses.shifts_angstrom[idx] - ps.poses.shifts_angstrom[idx]) / ps.pixel_size_angstrom
    w = torch.zeros(len(idx), 3, requires_grad=True)
    s = torch.zeros(len(idx), 2, requires_grad=True)
    posed = {**batch, "rot": compose(batch["rot"], w), "y": hartley_translate(batch["y"], data.pixels.half_freqs(), s)}
    trained.model.eval()
    trained.model(posed)["loss"].backward()

    def cos(g, target):
        return (g * target).sum(1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(target, axis=1) + 1e-30)

    c_rot, c_shift = cos(-w.grad.numpy(), w_star), cos(-s.grad.numpy(), s_star)
    return {"epoch": trained.epoch, "particles": len(idx), "rotation_cos_mean": float(c_rot.mean()),
            "rotation_cos_positive": float((c_rot > 0).mean()), "shift_cos_mean": float(c_shift.mean()),
            "shift_cos_positive": float((c_shift > 0).mean())}


def _work_name(args) -> str:
    """The work folder of a data set: discrete3 at SNR 0.1 keeps its first name."""
    extra = "" if (args.preset, args.snr) == ("discrete3", 0.1) else f"_{args.preset}_snr{args.snr:g}"
    return f"pose_refine_D{args.D}_N{args.n}{extra}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="discrete3", help="simulate preset (default discrete3)")
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("-D", type=int, default=32)
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--zdim", type=int, default=8)
    p.add_argument("--pose-lr", type=float, default=2e-3)
    p.add_argument("--shift-lr", type=float, default=0.1)
    p.add_argument("--refine-start", type=int, default=2)
    p.add_argument("--sigma-deg", type=float, default=8.0)
    p.add_argument("--sigma-px", type=float, default=1.5)
    p.add_argument("--serial", action="store_true", help="run the three trainings one after another")
    p.add_argument("--add-run", metavar="NAME",
                   help="only: evaluate the finished refining run WORK/run_NAME (trained by hand with other pose "
                        "options on the same data) and add it to the JSON")
    p.add_argument("--gradient-check", action="store_true",
                   help="only: how well one image's pose gradient points at its true correction, with the model of "
                        "the finished 'true' run (adds 'gradient_alignment' to the JSON)")
    p.add_argument("-o", "--output", type=Path, default=Path("bench/results/pose_refine.json"))
    args = p.parse_args(argv)
    if args.add_run:
        import json

        from cryoscape.io.particles import load_particles
        from cryoscape.models.poses import load_learned_poses

        work = WORK / _work_name(args)
        sim, run = work / "sim", work / f"run_{args.add_run}"
        truth = load_particles(sim / "particles.star")
        apix = truth.pixel_size_angstrom
        states = np.load(sim / "labels.npz")["state"]
        ind = work / "state0.txt"
        epoch, learned = load_learned_poses(run)
        star = work / f"{args.add_run}.star"
        subprocess.run([*CRYOSCAPE_CMD, "write-poses", str(run), "-o", str(star), "--overwrite"], check=True)
        fsc = backproject_fsc(star, sim, ind, work / f"bp_{args.add_run}")
        from bench.common import cryoscape_epochs

        rows = cryoscape_epochs(run)
        secs = [r["seconds"] for r in rows if r["epoch"] >= 2]
        z = np.load(run / "latents" / f"epoch_{epoch:03d}.npy")
        config = (run / "config.yaml").read_text()
        record = json.loads(args.output.read_text())
        record["runs"][args.add_run] = {
            "config": config, "epoch": epoch,
            "poses": pose_errors(learned["rotations"], learned["shifts_angstrom"] / apix, truth.poses.rotations,
                                 truth.poses.shifts_angstrom / apix),
            "ari": kmeans_ari(z, states), "fsc_state0": fsc,
            "fsc_min_to_2/3_nyquist": float(min(fsc[1: int(2 * (args.D // 2) / 3) + 1])),
            "epoch_seconds_mean": float(np.mean(secs)) if secs else None}
        write_json(args.output, record)
        print(args.add_run, record["runs"][args.add_run]["poses"], record["runs"][args.add_run]["ari"],
              record["runs"][args.add_run]["fsc_min_to_2/3_nyquist"])
        return 0
    if args.gradient_check:
        import json

        work = WORK / _work_name(args)
        result = gradient_alignment(work / "run_true", work / "sim", work / "sim" / "perturbed.star")
        record = json.loads(args.output.read_text()) if args.output.is_file() else {}
        record["gradient_alignment"] = result
        write_json(args.output, record)
        print(result)
        return 0

    from cryoscape.io.particles import load_particles
    from cryoscape.models.poses import load_learned_poses

    work = WORK / _work_name(args)
    sim = ensure_simulation(args.preset, args.n, args.D, args.snr, work / "sim")
    perturbed = sim / "perturbed.star"  # beside the stack its image names point to
    perturbation = perturb(sim, perturbed, args.sigma_deg, args.sigma_px)
    print("perturbation:", perturbation, flush=True)
    common = dict(zdim=args.zdim, enc_dim=args.width, enc_layers=3, dec_dim=args.width, dec_layers=3,
                  pe_type="gaussian", feat_sigma=0.5, batch=32, epochs=args.epochs, lr=1e-3, val_frac=0.0, seed=0)
    refine = ("--refine-poses", "--pose-lr", str(args.pose_lr), "--shift-lr", str(args.shift_lr), "--refine-start",
              str(args.refine_start))
    specs = {
        "true": TrainSpec(particles=sim / "particles.star", out=work / "run_true", extra=("--threads", "1"), **common),
        "perturbed": TrainSpec(particles=perturbed, out=work / "run_perturbed", extra=("--threads", "1"), **common),
        "refined": TrainSpec(particles=perturbed, out=work / "run_refined", extra=("--threads", "1", *refine),
                             **common),
    }
    for spec in specs.values():
        subprocess.run(["rm", "-rf", str(spec.out)], check=True)
    info = machine_info()
    with concurrent.futures.ThreadPoolExecutor(1 if args.serial else 3) as pool:
        futures = {name: pool.submit(timed_train, spec) for name, spec in specs.items()}
        runs = {name: f.result() for name, f in futures.items()}
    for name, (res, _) in runs.items():
        if res["returncode"] != 0:
            raise SystemExit(f"{name} failed; see {res['log']}")

    truth = load_particles(sim / "particles.star")
    pert = load_particles(perturbed)
    apix = truth.pixel_size_angstrom
    true_px = truth.poses.shifts_angstrom / apix
    states = np.load(sim / "labels.npz")["state"]
    epoch, learned = load_learned_poses(specs["refined"].out)
    refined_star = work / "refined.star"
    subprocess.run([*CRYOSCAPE_CMD, "write-poses", str(specs["refined"].out), "-o", str(refined_star), "--overwrite"],
                   check=True)
    ind = work / "state0.txt"
    ind.write_text("\n".join(str(i) for i in np.flatnonzero(states == 0)) + "\n")
    record = {"args": vars(args) | {"output": str(args.output)}, "machine": info, "perturbation": perturbation,
              "epoch": epoch, "runs": {}}
    poses = {"true": (truth.poses.rotations, true_px), "perturbed": (pert.poses.rotations,
             pert.poses.shifts_angstrom / apix), "refined": (learned["rotations"], learned["shifts_angstrom"] / apix)}
    stars = {"true": sim / "particles.star", "perturbed": perturbed, "refined": refined_star}
    shells = args.D // 2
    for name, spec in specs.items():
        res, rows = runs[name]
        z = np.load(spec.out / "latents" / f"epoch_{args.epochs:03d}.npy") if args.zdim else None
        fsc = backproject_fsc(stars[name], sim, ind, work / f"bp_{name}")
        secs = [r["seconds"] for r in rows if r["epoch"] >= 2]
        record["runs"][name] = {"train": res, "poses": pose_errors(*poses[name], truth.poses.rotations, true_px),
                                "ari": kmeans_ari(z, states) if z is not None else None, "fsc_state0": fsc,
                                "fsc_min_to_2/3_nyquist": float(min(fsc[1: int(2 * shells / 3) + 1])),
                                "epoch_seconds_mean": float(np.mean(secs)) if secs else None}
    write_json(args.output, record)
    print(f"\n{args.preset}, {args.n} particles, D={args.D}, SNR {args.snr}, {args.epochs} epochs, zdim {args.zdim}; "
          f"perturbation median {perturbation['angle_deg_median']:.2f} deg, {perturbation['shift_px_median']:.2f} px")
    print("| run | median rot. error (deg) | p90 | median shift error (px) | p90 | k-means(3) ARI | "
          "min FSC to 2/3 Nyquist (state 0 back-projection) | s/epoch |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in record["runs"].items():
        e = r["poses"]
        ari = f"{r['ari']:.3f}" if r["ari"] is not None else "-"
        print(f"| {name} | {e['rot_median_deg']:.2f} | {e['rot_p90_deg']:.2f} | {e['shift_median_px']:.2f} | "
              f"{e['shift_p90_px']:.2f} | {ari} | {r['fsc_min_to_2/3_nyquist']:.3f} | {r['epoch_seconds_mean']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
