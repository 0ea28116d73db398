"""Pose refinement during training (``train --refine-poses``, issue 17): poses, maps and classes recovered from
perturbed consensus poses, against training on the perturbed and on the true poses.

One command::

    .venv/bin/python -m bench.pose_refine                 # discrete3, N=3000, D=32, 20 epochs, 128x3, zdim 8
    .venv/bin/python -m bench.pose_refine -D 64 --n 5000  # the issue's size (a quiet machine)
    # an atomic model (power to Nyquist), homogeneous, with cryoDRGN 4.3.1's pose SGD side by side:
    .venv/bin/python -m bench.pose_refine --pdb model.pdb --apix 2 -D 64 --n 1000 --zdim 0 --epochs 12 --cryodrgn

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

``--maps RUN ...`` scores the decoder maps (and back-projections) of finished homogeneous runs against the truth as
written and in the truth's frame (each run's global frame, estimated from its poses, undone:
:mod:`cryoscape.analysis.pose_frame`); ``--seed S`` trains with seed S on a perturbation drawn with seed S + 1
(folders ``run_NAME_sS``), ``--runs`` picks the trainings; ``--cryodrgn-only`` trains and scores cryoDRGN's pose
SGD alone on an existing work folder (``--work``).

``--pdb MODEL`` simulates one state from an atomic model (``simulate --pdb``) instead of a preset; ``--pose-method``
chooses cryoscape's refinement (``local`` Gauss-Newton steps, the default of ``train``, or ``sgd``);
``--cryodrgn`` adds cryoDRGN 4.3.1's ``train_nn`` / ``train_vae --do-pose-sgd`` on the same perturbed poses
(converted to its pose.pkl), same architecture, batch, learning rate and epochs, ``--pretrain`` = the refinement
start - 1, its default pose step and quaternion embedding; its refined poses (``pose.N.pkl``) are scored the same
way.

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
from cryoscape.analysis.pose_frame import frame_drift, map_in_reference_frame


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

    G, t = frame_drift(true_rot, true_px, rotations, shifts_px)
    rot_err = rotation_angle_deg(rotations, true_rot @ G)
    raw_err = rotation_angle_deg(rotations, true_rot)
    d = shifts_px - true_px
    shift_err = np.linalg.norm(d - true_rot[:, :2, :] @ t, axis=1)
    return {"rot_median_deg": float(np.median(rot_err)), "rot_p90_deg": float(np.percentile(rot_err, 90)),
            "rot_median_deg_unaligned": float(np.median(raw_err)),
            "global_rotation_deg": float(rotation_angle_deg(G[None], np.eye(3)[None])[0]),
            "shift_median_px": float(np.median(shift_err)), "shift_p90_px": float(np.percentile(shift_err, 90)),
            "shift_median_px_unaligned": float(np.median(np.linalg.norm(d, axis=1))),
            "global_translation_px": t.round(3).tolist(), "global_rotation_matrix": G.round(8).tolist()}


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


def train_cryodrgn_pose_sgd(args, sim: Path, perturbed: Path, out: Path):
    """cryoDRGN 4.3.1 ``train_nn`` (zdim 0) or ``train_vae`` with ``--do-pose-sgd`` on the perturbed poses (run by
    ``bench/cryodrgn_cpu.py``, which undoes its CPU-only translation bug); returns
    ``(result, rows)`` as :func:`bench.common.timed_train` (rows: per-epoch seconds from its log)."""
    import os

    from bench.common import CRYODRGN_VENV, cryodrgn_epoch_seconds, need_cryodrgn
    from cryoscape.io.particles import load_particles
    from cryoscape.io.pkl import write_pose_pkl

    if not need_cryodrgn():
        raise SystemExit("--cryodrgn needs bench/cryodrgn-venv (bash bench/setup_cryodrgn.sh)")
    subprocess.run(["rm", "-rf", str(out)], check=True)
    out.mkdir(parents=True)
    pert = load_particles(perturbed)
    pose_pkl = write_pose_pkl(out / "perturbed_pose.pkl", pert.poses, args.D, pert.pixel_size_angstrom)
    arch = ["--layers", "3", "--dim", str(args.width)] if args.zdim == 0 else [
        "--zdim", str(args.zdim), "--enc-dim", str(args.width), "--enc-layers", "3", "--dec-dim", str(args.width),
        "--dec-layers", "3"]
    # through bench/cryodrgn_cpu.py: its pose tracker's checkpoints shrink the live translations on a CPU
    cmd = [str(CRYODRGN_VENV / "bin" / "python"), str(Path(__file__).with_name("cryodrgn_cpu.py")),
           "train_nn" if args.zdim == 0 else "train_vae", str(sim / "particles.mrcs"), "--poses",
           str(pose_pkl), "--ctf", str(sim / "ctf.pkl"), "-o", str(out / "out"), "-n", str(args.epochs), "-b", "32",
           "--lr", "1e-3", "--seed", "0", "--pe-type", "gaussian", "--do-pose-sgd", "--pretrain",
           str(max(1, args.refine_start - 1)), *arch]
    if args.zdim == 0:
        cmd += ["--domain", "hartley"]  # train_nn: pose SGD needs the Hartley domain (train_vae always uses it)
    if args.zdim:
        cmd += ["--feat-sigma", "0.5"]
    res = run_timed(cmd, out / "train.log", env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = cryodrgn_epoch_seconds((out / "train.log").read_text()) if (out / "train.log").is_file() else {}
    return res, [{"epoch": e, "seconds": t} for e, t in sorted(seconds.items())]


def cryodrgn_refined_poses(run: Path, epochs: int, particles, work: Path):
    """cryoDRGN's refined poses after ``epochs`` (its ``pose.N.pkl``, 0-based or 1-based name) as
    :class:`cryoscape.metadata.Poses`, and a STAR with them for the back-projection."""
    from cryoscape.io.pkl import read_pose_pkl
    from cryoscape.io.pose_output import write_particles_with_poses

    found = [run / "out" / f"pose.{e}.pkl" for e in (epochs, epochs - 1)]
    path = next((f for f in found if f.is_file()), None)
    if path is None:
        raise SystemExit(f"no refined pose file of cryoDRGN in {run / 'out'}")
    poses = read_pose_pkl(path, particles.images.D, particles.pixel_size_angstrom)
    star = work / "cryodrgn_pose_sgd.star"
    write_particles_with_poses(particles, np.arange(len(particles)), poses, star)
    return poses, star


def cryodrgn_latents(run: Path, epochs: int) -> np.ndarray:
    """cryoDRGN's posterior means after ``epochs`` (``z.N.pkl``) through cryoscape's restricted reader."""
    from cryoscape.io.pkl import load_pickle

    for e in (epochs, epochs - 1):
        f = run / "out" / f"z.{e}.pkl"
        if f.is_file():
            return np.asarray(load_pickle(f))
    raise SystemExit(f"no z.N.pkl in {run / 'out'}")


def step_cost(run: Path, sim: Path, perturbed: Path, radii=(0.25, 0.5, 1.0), repeats: int = 5,
              batches: int = 8) -> dict:
    """Seconds of one training step (forward, backward, Adam) and of one local pose update of the same batch
    (``PoseRefiner.local_update``) at each compared radius, interleaved in one process (so that the machine's load
    affects both alike); medians over ``repeats`` passes over ``batches`` batches of 32. ``local_update_r0.5_3diff``:
    the default radius with the rotation derivatives from three rotation differences (the model's predictor
    without ``along_normal``, as before the two-evaluation Jacobian)."""
    import time

    import torch

    from cryoscape.io.particles import load_particles
    from cryoscape.models.loading import load_run
    from cryoscape.models.poses import PoseRefiner
    from cryoscape.models.registry import get_family

    torch.set_num_threads(1)
    trained = load_run(run)
    family = get_family(trained.config.model.family)
    ps = load_particles(perturbed)
    n = 32 * batches
    data = family.make_data(ps.subset(np.arange(n)), trained.config, norm_std=trained.build["norm_std"],
                            progress=False)
    model = trained.model
    opt = torch.optim.Adam(model.parameters(), lr=0.0)  # lr 0: the model stays as loaded
    refiners = {r: PoseRefiner(n, data.pixels.half_freqs(), lr=0.0, method="local", search_radius=r,
                               start_epoch=1) for r in radii}
    for ref in refiners.values():
        ref._epoch = 100  # the radius schedule at its end: search_radius
    times: dict[str, list[float]] = {"train_step": [], **{f"local_update_r{r:g}": [] for r in radii},
                                     "local_update_r0.5_3diff": []}
    three_diff = PoseRefiner(n, data.pixels.half_freqs(), lr=0.0, method="local", search_radius=0.5, start_epoch=1)
    three_diff._epoch = 100

    class _ThreeDifferences:  # the model, its pose predictor without along_normal
        def pose_predictor(self, batch, half):
            predict = model.pose_predictor(batch, half)
            return lambda rotations: predict(rotations)

    all_batches = [data.batch(np.arange(i * 32, (i + 1) * 32)) for i in range(batches)]
    for _ in range(repeats):
        for b in all_batches:
            model.train()
            t0 = time.perf_counter()
            loss = model(b)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            times["train_step"].append(time.perf_counter() - t0)
            for r, ref in refiners.items():
                t0 = time.perf_counter()
                ref.local_update(model, b)
                times[f"local_update_r{r:g}"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            three_diff.local_update(_ThreeDifferences(), b)
            times["local_update_r0.5_3diff"].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"seconds_median": med, "overhead": {k: med[k] / med["train_step"] for k in med if k != "train_step"},
            "batch": 32, "model_epoch": trained.epoch}


def _fsc_as_written_and_in_true_frame(vol: np.ndarray, gt: np.ndarray, G: np.ndarray, t: np.ndarray) -> dict:
    """FSC per shell of ``vol`` against ``gt``, as written and with the frame ``(G, t)`` undone."""
    from cryoscape.analysis.fsc import fsc

    return {"fsc": np.asarray(fsc(vol, gt)[1]).round(4).tolist(),
            "fsc_in_true_frame": np.asarray(fsc(map_in_reference_frame(vol, G, t), gt)[1]).round(4).tolist()}


def map_fscs(work: Path, runs: list[str], stars: dict[str, Path] | None = None) -> dict:
    """Decoder maps of the finished homogeneous runs ``work/run_NAME`` (``cryoscape eval-vol``) and, where
    ``work/bp_NAME/backproject.mrc`` exists, their back-projections: FSC per shell against the truth as written
    (``fsc``) and in the truth's frame (``fsc_in_true_frame``:
    :func:`~cryoscape.analysis.pose_frame.map_in_reference_frame` with the run's own
    :func:`~cryoscape.analysis.pose_frame.frame_drift` from its poses, so the alignment is not fitted to the map).
    The first run is the reference (normally the true-pose run); ``gap_max`` is the largest shortfall to it in
    shells 1 to 2/3 Nyquist. A run's poses: its learned poses (``--refine-poses``), else the poses of
    ``stars[NAME]`` (else the truth).
    """
    import mrcfile

    from cryoscape.imaging.so3_grid import geodesic_distance_deg
    from cryoscape.io.particles import load_particles
    from cryoscape.models.poses import load_learned_poses

    sim = work / "sim"
    truth = load_particles(sim / "particles.star")
    apix = truth.pixel_size_angstrom
    true_px = truth.poses.shifts_angstrom / apix
    gt = mrcfile.read(sim / "gt" / "state_000.mrc")
    out: dict = {}
    for name in runs:
        run = work / f"run_{name}"
        if (run / "poses").is_dir():
            epoch, learned = load_learned_poses(run)
            rot, px = learned["rotations"], learned["shifts_angstrom"] / apix
        else:
            ps = load_particles(stars[name], datadir=sim) if stars and name in stars else truth
            rot, px = ps.poses.rotations, ps.poses.shifts_angstrom / apix
        G, t = frame_drift(truth.poses.rotations, true_px, rot, px)
        vol_path = work / f"decoder_{name}.mrc"
        subprocess.run([*CRYOSCAPE_CMD, "eval-vol", str(run), "-o", str(vol_path), "--overwrite"], check=True,
                       stdout=subprocess.DEVNULL)
        maps = {"decoder": mrcfile.read(vol_path)}
        bp = work / f"bp_{name}" / "backproject.mrc"
        if bp.is_file():
            maps["backprojection"] = mrcfile.read(bp)
        entry: dict = {"global_rotation_deg": float(geodesic_distance_deg(G, np.eye(3))),
                       "global_translation_px": t.round(3).tolist()}
        for kind, vol in maps.items():
            entry[kind] = _fsc_as_written_and_in_true_frame(vol, gt, G, t)
        out[name] = entry
    top = int(2 * (gt.shape[0] // 2) / 3)
    ref = out[runs[0]]
    for name in runs[1:]:
        for kind in ("decoder", "backprojection"):
            if kind in out[name] and kind in ref:
                for key in ("fsc", "fsc_in_true_frame"):
                    gap = np.asarray(ref[kind][key][1: top + 1]) - np.asarray(out[name][kind][key][1: top + 1])
                    out[name][kind][f"gap_max_{key}"] = float(gap.max().round(4))
                    out[name][kind][f"gap_max_{key}_shell"] = int(gap.argmax() + 1)
    return {"reference": runs[0], "top_shell": top, "runs": out}


def cryodrgn_only(args, work: Path) -> dict:
    """cryoDRGN 4.3.1's pose SGD on the perturbed poses of an existing work folder (``train_cryodrgn_pose_sgd``),
    scored as the cryoscape runs: pose errors, the back-projection of all particles with its poses and its own map
    (``reconstruct.E.mrc``, axes matched to the truth among :data:`bench.accuracy.ORIENTATIONS`), FSC against the
    truth as written and in the truth's frame (its poses' ``frame_drift`` undone)."""
    import mrcfile

    from bench.accuracy import ORIENTATIONS
    from bench.common import cryodrgn_epoch_seconds
    from cryoscape.io.particles import load_particles
    from cryoscape.io.pkl import write_ctf_pkl

    sim, perturbed, run = work / "sim", work / "sim" / "perturbed.star", work / "run_cryodrgn_pose_sgd"
    truth = load_particles(sim / "particles.star")
    apix = truth.pixel_size_angstrom
    if not (sim / "ctf.pkl").is_file():
        write_ctf_pkl(sim / "ctf.pkl", truth.ctf, truth.images.D, apix)
    ind = work / "state0.txt"
    if not ind.is_file():
        states = np.load(sim / "labels.npz")["state"]
        ind.write_text("\n".join(str(i) for i in np.flatnonzero(states == 0)) + "\n")
    res, rows = train_cryodrgn_pose_sgd(args, sim, perturbed, run)
    if res["returncode"] != 0:
        raise SystemExit(f"cryoDRGN failed; see {res['log']}")
    pert = load_particles(perturbed, datadir=sim)
    poses, star = cryodrgn_refined_poses(run, args.epochs, pert, work)
    true_px = truth.poses.shifts_angstrom / apix
    px = poses.shifts_angstrom / apix
    G, t = frame_drift(truth.poses.rotations, true_px, poses.rotations, px)
    gt = mrcfile.read(sim / "gt" / "state_000.mrc")
    vol_file = next((run / "out" / f"reconstruct.{e}.mrc" for e in (args.epochs, args.epochs - 1)
                     if (run / "out" / f"reconstruct.{e}.mrc").is_file()), None)
    if vol_file is None:
        raise SystemExit(f"no reconstruct.N.mrc in {run / 'out'}")
    raw = mrcfile.read(vol_file)
    scores = {name: float(np.corrcoef(f(raw).ravel(), gt.ravel())[0, 1]) for name, f in ORIENTATIONS.items()}
    orientation = max(scores, key=scores.get)
    vol = np.ascontiguousarray(ORIENTATIONS[orientation](raw))
    bp = backproject_fsc(star, sim, ind, work / "bp_cryodrgn_pose_sgd")
    bp_map = mrcfile.read(work / "bp_cryodrgn_pose_sgd" / "backproject.mrc")
    log = (run / "train.log").read_text() if (run / "train.log").is_file() else ""
    seconds = cryodrgn_epoch_seconds(log)
    return {"cmd": res["cmd"], "wall_s": res.get("wall_s"),
            "epochs": args.epochs, "poses": pose_errors(poses.rotations, px, truth.poses.rotations, true_px),
            "map_file": vol_file.name, "map_orientation": orientation, "map_orientation_correlations": scores,
            "decoder": _fsc_as_written_and_in_true_frame(vol, gt, G, t),
            "backprojection": {**_fsc_as_written_and_in_true_frame(bp_map, gt, G, t), "fsc": bp},
            "epoch_seconds": {str(k): v for k, v in sorted(seconds.items())}}


def _work_name(args) -> str:
    """The work folder of a data set: discrete3 at SNR 0.1 keeps its first name."""
    if getattr(args, "pdb", None) is not None:
        return f"pose_refine_D{args.D}_N{args.n}_{args.pdb.stem}_apix{args.apix:g}_snr{args.snr:g}"
    extra = "" if (args.preset, args.snr) == ("discrete3", 0.1) else f"_{args.preset}_snr{args.snr:g}"
    return f"pose_refine_D{args.D}_N{args.n}{extra}"


def _with_true_run(args, key: str, measure) -> int:
    """``measure(true run, sim, perturbed STAR)`` on the data set of ``args``; its result is added to the JSON."""
    import json

    work = WORK / _work_name(args)
    result = measure(work / "run_true", work / "sim", work / "sim" / "perturbed.star")
    record = json.loads(args.output.read_text()) if args.output.is_file() else {}
    record[key] = result
    write_json(args.output, record)
    print(result)
    return 0


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
    p.add_argument("--seed", type=int, default=0,
                   help="training seed; the perturbation is drawn with seed + 1 (default 0; another seed names the "
                        "perturbed STAR and the run folders with _sSEED)")
    p.add_argument("--runs", default="true,perturbed,refined",
                   help="comma-separated runs to train and score (default true,perturbed,refined)")
    p.add_argument("--pdb", type=Path, help="simulate one state of this atomic model instead of --preset")
    p.add_argument("--apix", type=float, default=2.0, help="--pdb: pixel size (default 2)")
    p.add_argument("--pose-method", default="local", choices=("local", "sgd"))
    p.add_argument("--pose-search-radius", type=float, default=0.5)
    p.add_argument("--cryodrgn", action="store_true",
                   help="also train cryoDRGN 4.3.1 with --do-pose-sgd on the perturbed poses (bench/cryodrgn-venv)")
    p.add_argument("--add-run", metavar="NAME",
                   help="only: evaluate the finished refining run WORK/run_NAME (trained by hand with other pose "
                        "options on the same data) and add it to the JSON")
    p.add_argument("--gradient-check", action="store_true",
                   help="only: how well one image's pose gradient points at its true correction, with the model of "
                        "the finished 'true' run (adds 'gradient_alignment' to the JSON)")
    p.add_argument("--cost", action="store_true",
                   help="only: seconds of a training step and of a local pose update of the same batch, with the "
                        "model of the finished 'true' run (adds 'step_cost' to the JSON)")
    p.add_argument("--maps", nargs="+", metavar="RUN",
                   help="only: FSC against the truth of the decoder maps (and back-projections) of the finished "
                        "homogeneous runs WORK/run_RUN, as written and in the truth's frame (each run's global pose "
                        "frame undone); the first RUN is the reference, e.g. --maps true refined (adds 'maps')")
    p.add_argument("--cryodrgn-only", action="store_true",
                   help="only: train cryoDRGN 4.3.1 with --do-pose-sgd on the perturbed poses of the (existing) work "
                        "folder and score it (adds 'cryodrgn_pose_sgd_E_epochs' to the JSON)")
    p.add_argument("--work", type=Path, help="the data set's work folder (default: named from the data options)")
    p.add_argument("-o", "--output", type=Path, default=Path("bench/results/pose_refine.json"))
    args = p.parse_args(argv)
    if args.cryodrgn_only:
        import json

        work = args.work or WORK / _work_name(args)
        result = cryodrgn_only(args, work)
        record = json.loads(args.output.read_text()) if args.output.is_file() else {}
        record[f"cryodrgn_pose_sgd_{args.epochs}_epochs"] = result
        write_json(args.output, record)
        print({k: result[k] for k in ("poses", "map_orientation")})
        return 0
    if args.maps:
        import json

        work = args.work or WORK / _work_name(args)
        result = map_fscs(work, args.maps, {"perturbed": work / "sim" / "perturbed.star"})
        record = json.loads(args.output.read_text()) if args.output.is_file() else {}
        record["maps"] = record.get("maps", {}) | {"+".join(args.maps): result}
        write_json(args.output, record)
        for name, e in result["runs"].items():
            for kind in ("decoder", "backprojection"):
                if kind in e and "gap_max_fsc" in e[kind]:
                    print(f"{name} {kind}: largest gap to {args.maps[0]} up to shell {result['top_shell']}: "
                          f"{e[kind]['gap_max_fsc']:.3f} as written, {e[kind]['gap_max_fsc_in_true_frame']:.3f} in "
                          f"the true frame (frame {e['global_rotation_deg']:.2f} deg, {e['global_translation_px']} px)")
        return 0
    if args.cost:
        return _with_true_run(args, "step_cost", step_cost)
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
        return _with_true_run(args, "gradient_alignment", gradient_alignment)

    from cryoscape.io.particles import load_particles
    from cryoscape.models.poses import load_learned_poses

    work = WORK / _work_name(args)
    source = None if args.pdb is None else ["--pdb", str(args.pdb), "--apix", str(args.apix)]
    sim = ensure_simulation(args.preset, args.n, args.D, args.snr, work / "sim", source=source)
    suffix = "" if args.seed == 0 else f"_s{args.seed}"  # seed 0 keeps the first names
    perturbed = sim / f"perturbed{suffix}.star"  # beside the stack its image names point to
    perturbation = perturb(sim, perturbed, args.sigma_deg, args.sigma_px, seed=args.seed + 1)
    print("perturbation:", perturbation, flush=True)
    common = dict(zdim=args.zdim, enc_dim=args.width, enc_layers=3, dec_dim=args.width, dec_layers=3,
                  pe_type="gaussian", feat_sigma=0.5, batch=32, epochs=args.epochs, lr=1e-3, val_frac=0.0,
                  seed=args.seed)
    refine = ("--refine-poses", "--pose-method", args.pose_method, "--pose-search-radius",
              str(args.pose_search_radius), "--pose-lr", str(args.pose_lr), "--shift-lr", str(args.shift_lr),
              "--refine-start", str(args.refine_start))
    specs = {
        "true": TrainSpec(particles=sim / "particles.star", out=work / f"run_true{suffix}", extra=("--threads", "1"),
                          **common),
        "perturbed": TrainSpec(particles=perturbed, out=work / f"run_perturbed{suffix}", extra=("--threads", "1"),
                               **common),
        "refined": TrainSpec(particles=perturbed, out=work / f"run_refined{suffix}", extra=("--threads", "1", *refine),
                             **common),
    }
    wanted = args.runs.split(",")
    if unknown := set(wanted) - set(specs):
        raise SystemExit(f"--runs: unknown {sorted(unknown)}; choose from {list(specs)}")
    specs = {name: spec for name, spec in specs.items() if name in wanted}
    for spec in specs.values():
        subprocess.run(["rm", "-rf", str(spec.out)], check=True)
    info = machine_info()
    with concurrent.futures.ThreadPoolExecutor(1 if args.serial else 3) as pool:
        futures = {name: pool.submit(timed_train, spec) for name, spec in specs.items()}
        if args.cryodrgn:
            futures["cryodrgn_pose_sgd"] = pool.submit(train_cryodrgn_pose_sgd, args, sim, perturbed,
                                                       work / "run_cryodrgn_pose_sgd")
        runs = {name: f.result() for name, f in futures.items()}
    for name, (res, _) in runs.items():
        if res["returncode"] != 0:
            raise SystemExit(f"{name} failed; see {res['log']}")

    truth = load_particles(sim / "particles.star")
    pert = load_particles(perturbed)
    apix = truth.pixel_size_angstrom
    true_px = truth.poses.shifts_angstrom / apix
    states = np.load(sim / "labels.npz")["state"]
    poses = {"true": (truth.poses.rotations, true_px), "perturbed": (pert.poses.rotations,
             pert.poses.shifts_angstrom / apix)}
    stars = {"true": sim / "particles.star", "perturbed": perturbed}
    epoch = args.epochs
    if "refined" in specs:
        epoch, learned = load_learned_poses(specs["refined"].out)
        stars["refined"] = work / f"refined{suffix}.star"
        subprocess.run([*CRYOSCAPE_CMD, "write-poses", str(specs["refined"].out), "-o", str(stars["refined"]),
                        "--overwrite"], check=True)
        poses["refined"] = (learned["rotations"], learned["shifts_angstrom"] / apix)
    ind = work / "state0.txt"
    ind.write_text("\n".join(str(i) for i in np.flatnonzero(states == 0)) + "\n")
    record = {"args": vars(args) | {"output": str(args.output)}, "machine": info, "perturbation": perturbation,
              "epoch": epoch, "runs": {}}
    if args.cryodrgn:
        cd_poses, cd_star = cryodrgn_refined_poses(work / "run_cryodrgn_pose_sgd", args.epochs, pert, work)
        poses["cryodrgn_pose_sgd"] = (cd_poses.rotations, cd_poses.shifts_angstrom / apix)
        stars["cryodrgn_pose_sgd"] = cd_star
        specs["cryodrgn_pose_sgd"] = None
    shells = args.D // 2
    for name, spec in specs.items():
        res, rows = runs[name]
        if spec is None:  # cryoDRGN: its z.N.pkl
            z = cryodrgn_latents(work / "run_cryodrgn_pose_sgd", args.epochs) if args.zdim else None
        else:
            z = np.load(spec.out / "latents" / f"epoch_{args.epochs:03d}.npy") if args.zdim else None
        fsc = backproject_fsc(stars[name], sim, ind, work / f"bp_{name}{suffix}")
        secs = [r["seconds"] for r in rows if r["epoch"] >= 2]
        record["runs"][name] = {"train": res, "poses": pose_errors(*poses[name], truth.poses.rotations, true_px),
                                "ari": kmeans_ari(z, states) if z is not None else None, "fsc_state0": fsc,
                                "fsc_min_to_2/3_nyquist": float(min(fsc[1: int(2 * shells / 3) + 1])),
                                "epoch_seconds_mean": float(np.mean(secs)) if secs else None}
        if spec is not None and args.zdim:
            record["runs"][name]["ari_by_epoch"] = {
                e: kmeans_ari(np.load(f), states) for e in range(1, args.epochs + 1)
                if (f := spec.out / "latents" / f"epoch_{e:03d}.npy").is_file()}
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
