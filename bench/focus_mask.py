"""Focused heterogeneity (``train --focus-mask``, issue 19): a small domain moves while a large arm carries a
distracting motion; does the latent follow the small domain when training is focused on it?

One command::

    .venv/bin/python -m bench.focus_mask            # D=32, N=4000, SNR 0.3, zdim 1, 15 epochs, 128x3, one thread each

Ground truth (built here from Gaussian pseudo-atoms, ``cryoscape.simulate.volumes.render_gaussians``, 4 A voxels):
a static core (two parallel rods along x, 22 atoms), a large arm (two rods of 10 atoms, 36 A long) hinged on the
core's left end and rotated about z by ``angle_big`` in [-25, 25] deg, and a small domain (one rod of 5 atoms, 16 A
long) hinged on the core's right end and rotated about z by ``angle_small`` in [-30, 30] deg, independently: a
9 x 9 grid of states, each particle drawing one uniformly (``cryoscape.simulate.particles.simulate_dataset``, CTF,
shifts up to 2 px, noise at ``--snr``). The arm holds 4x the small domain's mass and moves about 2x as far, so an
unfocused one-dimensional latent is expected to follow the arm.

Focus mask: the union of the small domain's positions over its angles (rendered at 13 angles, voxels above 5 % of
the maximum), dilated by 1 voxel with a 2-voxel cosine edge (``cryoscape.imaging.masks.soft_edge_mask``).

Runs (same data, architecture, epochs, seed; ``nice -n 10``, ``--threads 1``):

* ``unfocused``: ``cryoscape train ... --zdim 1``;
* ``focused``: the same with ``--focus-mask mask.mrc`` (consensus back-projected by the command);
* ``subtraction_only`` (``--ablation``): focused, but without the per-pixel weighting (weights 1, set in a process
  of this script, ``--ablation-run``), i.e. RELION-style consensus subtraction alone;
* ``footprint_only``, ``share_linear``, ``share_power4`` (``--ablation``): focused, weighted by the mask's footprint
  ``clip(P[M], 0, 1)`` alone, by the share of the ray's consensus density inside the mask (unsquared), or by its
  fourth power, instead of the share squared (the default);
* ``oracle_arm_at_rest`` (``--oracle``): unfocused, on data simulated the same way with the arm at rest (9 states
  of the small domain): how well a one-dimensional latent recovers the small domain when nothing else moves.

The runs train side by side (one process each).

Measured: |Spearman| of the last epoch's latent (every particle) against each particle's ``angle_small`` and
``angle_big``; seconds per epoch. Writes ``bench/results/focus_mask.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import sys
from pathlib import Path

import numpy as np

from bench.common import WORK, TrainSpec, machine_info, run_timed, timed_train, write_json

APIX = 4.0
HINGE_BIG = np.array([-16.0, 4.0, 0.0])
HINGE_SMALL = np.array([16.0, 4.0, 0.0])
OFFSET = np.array([0.0, -10.0, 0.0])  # the whole object shifted so that its extent is about the box centre


def _rod(start, end, n: int) -> np.ndarray:
    return np.linspace(np.asarray(start, float), np.asarray(end, float), n)


def _rot_z(points: np.ndarray, angle_deg: float, pivot: np.ndarray) -> np.ndarray:
    a = math.radians(angle_deg)
    R = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    return (points - pivot) @ R.T + pivot


def core() -> np.ndarray:
    return np.concatenate([_rod((-20, 0, -3), (20, 0, -3), 11), _rod((-20, 0, 3), (20, 0, 3), 11)])


def arm(angle_deg: float) -> np.ndarray:
    """The large arm (20 atoms): two rods from its hinge up along +y (so it swings in x about z)."""
    rods = np.concatenate([_rod(HINGE_BIG + (0, 4, -3), HINGE_BIG + (0, 40, -3), 10),
                           _rod(HINGE_BIG + (0, 4, 3), HINGE_BIG + (0, 40, 3), 10)])
    return _rot_z(rods, angle_deg, HINGE_BIG)


def small_domain(angle_deg: float) -> np.ndarray:
    """The small domain (5 atoms): one rod from its hinge up along +y, 16 A."""
    return _rot_z(_rod(HINGE_SMALL + (0, 4, 0), HINGE_SMALL + (0, 20, 0), 5), angle_deg, HINGE_SMALL)


def render(points: np.ndarray, D: int) -> np.ndarray:
    from cryoscape.simulate.volumes import render_gaussians

    return render_gaussians(points + OFFSET, 4.0, 1.0, D, APIX)


def make_states(D: int, n_big: int, n_small: int):
    from cryoscape.simulate.volumes import StateSet

    big = np.linspace(-25.0, 25.0, n_big) if n_big > 1 else np.zeros(1)  # one state: the arm at rest
    small = np.linspace(-30.0, 30.0, n_small)
    grid_big, grid_small = np.meshgrid(big, small, indexing="ij")
    angle_big, angle_small = grid_big.ravel(), grid_small.ravel()
    static = core()

    def render_state(state: int) -> np.ndarray:
        return render(np.concatenate([static, arm(angle_big[state]), small_domain(angle_small[state])]), D)

    coords = (angle_small - angle_small.min()) / np.ptp(angle_small)
    return StateSet("focus_bench", D, APIX, render_state, coords, np.ones(len(angle_big)),
                    extra={"angle_big": angle_big, "angle_small": angle_small})


def make_mask(D: int) -> np.ndarray:
    from cryoscape.imaging.masks import soft_edge_mask

    union = np.zeros((D, D, D), np.float32)
    for a in np.linspace(-30.0, 30.0, 13):
        union = np.maximum(union, render(small_domain(a), D))
    return soft_edge_mask(union > 0.05 * union.max(), 1.0, 2.0)


def simulate(out: Path, D: int, n: int, snr: float, seed: int, n_big: int = 9) -> Path:
    from cryoscape.io.mrc import write_mrc
    from cryoscape.simulate.particles import simulate_dataset

    if not (out / "particles.star").is_file():
        simulate_dataset(make_states(D, n_big, 9), n, out, snr=snr, seed=seed, max_shift_px=2.0, progress=False)
    mask = out / "mask.mrc"
    if not mask.is_file():
        write_mrc(mask, make_mask(D), APIX)
    return out


def spearman(latent: np.ndarray, labels: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(abs(spearmanr(latent[:, 0], labels).statistic))


def map_check(run: Path, sim: Path, labels, epoch: int) -> list[dict]:
    """Decoder maps (``cryoscape eval-vol``) at the 5th, 50th and 95th percentiles of the run's latent: for each, the
    ground-truth small-domain angle whose map (arm at 0 deg) correlates best with it inside the mask, and the mean
    true small-domain angle of the 200 particles nearest that latent value.
    """
    import subprocess
    import tempfile

    from bench.common import CRYOSCAPE_CMD
    from cryoscape.io.mrc import read_mrc

    mask = read_mrc(sim / "mask.mrc")[0]
    states = make_states(mask.shape[0], 9, 9)
    angles = np.unique(labels["angle_small"])
    truth = [states.render(int(np.nonzero((states.extra["angle_small"] == a) & (states.extra["angle_big"] == 0))[0][0]))
             for a in angles]
    z = np.load(run / "latents" / f"epoch_{epoch:03d}.npy")[:, 0]
    points = np.percentile(z, [5, 50, 95])
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        np.savetxt(Path(tmp) / "z.txt", points[:, None])
        subprocess.run([*CRYOSCAPE_CMD, "eval-vol", str(run), "--zfile", str(Path(tmp) / "z.txt"), "--epoch",
                        str(epoch), "-o", str(Path(tmp) / "maps"), "--device", "cpu"], check=True, capture_output=True)
        for path, q in zip(sorted((Path(tmp) / "maps").glob("*.mrc")), points, strict=True):
            v = read_mrc(path)[0]
            cc = [float(np.corrcoef((v * mask).ravel(), (t * mask).ravel())[0, 1]) for t in truth]
            near = np.argsort(np.abs(z - q))[:200]
            out.append({"z": round(float(q), 3), "best_truth_angle": float(angles[int(np.argmax(cc))]),
                        "cc": round(max(cc), 3),
                        "mean_true_angle_near": round(float(labels["angle_small"][near].mean()), 1)})
    return out


def ablation_run(argv: list[str], mask: Path, weighting: str) -> None:
    """Train ``cryoscape train ARGV --focus-mask MASK`` in this process with another per-pixel weighting of the
    focused images (``cryoscape.data.focus.WEIGHTING``: ``none`` = subtraction alone, ``footprint`` = the mask's
    footprint alone).
    """
    from cryoscape.cli._focus import prepare_focus
    from cryoscape.cli.main import build_parser
    from cryoscape.cli.train import config_from_args
    from cryoscape.data import focus as focus_module
    from cryoscape.train.run import train

    args = build_parser().parse_args([*argv, "--focus-mask", str(mask)])
    config = prepare_focus(config_from_args(args), args.outdir, False, progress=False)
    focus_module.WEIGHTING, _, power = weighting.partition(":")  # share:2 = the share squared
    focus_module.SHARE_POWER = float(power or 1.0)
    train(config, args.outdir, progress=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-D", type=int, default=32)
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--snr", type=float, default=0.3)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--dim", type=int, default=128, help="encoder and decoder width (3 layers each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ablation", action="store_true",
                   help="also the subtraction-only and footprint-only runs (the weighting switched in a process of "
                        "this script)")
    p.add_argument("--oracle", action="store_true",
                   help="also a run on data with the arm at rest (same particles otherwise): the reachable score")
    p.add_argument("--maps", action="store_true",
                   help="decoder maps of unfocused and focused at latent percentiles 5/50/95, matched to the truth")
    p.add_argument("-o", "--output", type=Path, default=Path("bench/results/focus_mask.json"))
    p.add_argument("--ablation-run", metavar="MASK", help=argparse.SUPPRESS)
    p.add_argument("--weighting", default="none", help=argparse.SUPPRESS)
    p.add_argument("train_args", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.ablation_run:
        ablation_run(args.train_args, Path(args.ablation_run), args.weighting)
        return

    work = WORK / (f"focus_D{args.D}_n{args.n}_snr{args.snr:g}" + (f"_seed{args.seed}" if args.seed else ""))
    sim = simulate(work / "sim", args.D, args.n, args.snr, args.seed)
    labels = np.load(sim / "labels.npz")
    base = dict(particles=sim / "particles.star", zdim=1, enc_dim=args.dim, enc_layers=3, dec_dim=args.dim,
                dec_layers=3, epochs=args.epochs, seed=args.seed, extra=("--threads", "1", "--device", "cpu"))
    runs = {"unfocused": TrainSpec(out=work / "unfocused", **base),
            "focused": TrainSpec(out=work / "focused", **{**base, "extra": (*base["extra"], "--focus-mask",
                                                                               str(sim / "mask.mrc"))})}
    ablations = {"subtraction_only": "none", "footprint_only": "footprint", "share_linear": "share:1",
                 "share_power4": "share:4"}
    if args.ablation:
        for name in ablations:
            runs[name] = TrainSpec(out=work / name, **base)
    oracle_labels = None
    if args.oracle:  # the same particles' small-domain motion with the arm at rest: what a latent can reach
        oracle_sim = simulate(work / "sim_oracle", args.D, args.n, args.snr, args.seed, n_big=1)
        oracle_labels = np.load(oracle_sim / "labels.npz")
        runs["oracle_arm_at_rest"] = TrainSpec(out=work / "oracle_arm_at_rest",
                                               **{**base, "particles": oracle_sim / "particles.star"})
    results: dict = {"machine": machine_info(), "data": {"D": args.D, "n": args.n, "snr": args.snr,
                                                        "apix": APIX, "states": "9 x 9 (angle_big x angle_small)"},
                     "runs": {}}

    def launch(name: str) -> tuple[str, dict]:
        spec = runs[name]
        if name not in ablations:
            res, _ = timed_train(spec)
        else:
            cmd = [sys.executable, "-m", "bench.focus_mask", "--ablation-run", str(sim / "mask.mrc"), "--weighting",
                   ablations[name], "--", *spec.args()]
            res = run_timed(cmd, spec.out.parent / f"{spec.out.name}.log")
        return name, {"cmd": res["cmd"], "wall_s": res["wall_s"], "returncode": res["returncode"]}

    todo = [name for name in runs if not (runs[name].out / "latents").is_dir()]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(todo))) as pool:  # side by side
        for name, entry in pool.map(launch, todo):
            results["runs"][name] = entry
    rows = []
    maps = {}
    for name, spec in runs.items():
        latent_files = sorted((spec.out / "latents").glob("epoch_*.npy")) if spec.out.is_dir() else []
        if not latent_files:
            continue
        z = np.load(latent_files[-1])
        oracle = name == "oracle_arm_at_rest"  # (its arm does not move: no Spearman against it)
        small, big = (oracle_labels if oracle else labels)["angle_small"], labels["angle_big"]
        entry = results["runs"].setdefault(name, {})
        entry.update({"epoch": int(latent_files[-1].stem.split("_")[1]), "spearman_small": spearman(z, small),
                      "spearman_big": float("nan") if oracle else spearman(z, big),
                      "per_epoch_small": [round(spearman(np.load(f), small), 3) for f in latent_files],
                      "per_epoch_big": [float("nan") if oracle else round(spearman(np.load(f), big), 3)
                                        for f in latent_files]})
        metrics = (spec.out / "metrics.csv").read_text().splitlines()
        header = metrics[0].split(",")
        secs = [float(line.split(",")[header.index("seconds")]) for line in metrics[1:]]
        entry["seconds_per_epoch"] = round(float(np.mean(secs[1:] if len(secs) > 1 else secs)), 1)
        rows.append((name, entry))
        if args.maps and name in ("unfocused", "focused"):
            entry["maps"] = maps[name] = map_check(spec.out, sim, labels, entry["epoch"])
    write_json(args.output, results)
    print("| run | \\|Spearman\\| latent vs small-domain angle | vs arm angle | best epoch for the small domain "
          "(small / arm) | s/epoch |")
    print("|---|---|---|---|---|")
    for name, e in rows:
        best = int(np.argmax(e["per_epoch_small"]))
        print(f"| {name} | {e['spearman_small']:.3f} | {e['spearman_big']:.3f} | {best + 1}: "
              f"{e['per_epoch_small'][best]:.3f} / {e['per_epoch_big'][best]:.3f} | {e['seconds_per_epoch']} |")
    for name, checks in maps.items():
        print(f"{name}: decoder maps at latent percentiles 5/50/95 match small-domain angles "
              + ", ".join(f"{c['best_truth_angle']:g} (cc {c['cc']:.2f}; particles there {c['mean_true_angle_near']:g})"
                          for c in checks))


if __name__ == "__main__":
    main()
