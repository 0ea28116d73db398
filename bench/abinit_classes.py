"""Projection matching and 3-D classification outside the network: can a consensus, or K class maps, hold the poses
of every state of a heterogeneous set? (issue 18, `discrete3`; bench/RESULTS.md 14d)

    .venv/bin/python -m bench.abinit_classes WORK --run RUN --epoch 13 --init true-consensus -K 1
    .venv/bin/python -m bench.abinit_classes WORK --run RUN --epoch 17 --init kmeans -K 3
    .venv/bin/python -m bench.abinit_classes WORK --run RUN --epoch 13 --init truth -K 3

``WORK`` is a ``bench.abinit`` work folder (``sim/particles.star``, ``sim/gt/state_*.mrc``, ``sim/labels.npz``) and
``RUN`` an ab initio run in it. ``-n`` particles (a seeded random subset) are taken with the run's poses of
``--epoch`` and put in ``K`` classes by ``--init``:

* ``true-consensus`` (``K`` 1): the first search is against the TRUE consensus (the true states averaged with their
  frequencies, least-squares scaled at the true poses and shifts); what a perfect consensus-first search would start
  the refinement from;
* ``kmeans``: k-means(``K``) of the run's latents of ``--epoch`` (what the run's latent space separates);
* ``truth``: the true states (what a classification that knew the states could do with the run's poses);
* ``random``: random classes (RELION's random-subset start);
* ``truth-after-consensus``: the first search against the true consensus (as ``true-consensus``), then the true
  states as the ``K`` classes (can K class maps hold the poses that a perfect consensus gives?).

Each iteration: every class map is back-projected from its members at their current poses (Wiener, no padding);
every particle is searched against every class map (the hierarchical search of ``cryoscape abinit``: 576
rotations and three finer levels to 3.75 degrees, shifts +-6 px, pixels within 16 px), each map scaled by least
squares at its members' current poses and shifts; each particle takes the class and pose of the smallest error (hard
assignment). Prints and writes per iteration: the k-means-style confusion (states x classes), ARI, the share that
changed class, the median pose error per true state after one rotation per state and per class after one rotation
per class (``bench.abinit.pose_errors``). Output: ``bench/results/abinit_classes_<init>_K<K>_e<epoch>.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from bench.abinit import pose_errors
from bench.common import machine_info, write_json

RESULTS = Path(__file__).resolve().parent / "results"
RADIUS_PX = 16.0  # abinit's last lattice radius at D = 64
SHIFT_EXTENT_PX, SHIFT_STEP_PX = 6.0, 2.0  # abinit's global shift grid at D = 64


def median_error(A_true: np.ndarray, A: np.ndarray, mask: np.ndarray) -> float | None:
    """Median pose error (degrees) of the particles ``mask`` after their own best rotation (None: <= 10)."""
    return round(float(np.median(pose_errors(A_true[mask], A[mask])[0])), 1) if mask.sum() > 10 else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("work", type=Path)
    p.add_argument("--run", required=True, help="the run folder's name in WORK")
    p.add_argument("--epoch", type=int, required=True, help="the run's epoch whose poses (and latents) start it")
    p.add_argument("--init", choices=("true-consensus", "kmeans", "truth", "random",
                                               "truth-after-consensus"), required=True)
    p.add_argument("-K", type=int, default=3, help="classes (1 with --init true-consensus)")
    p.add_argument("-n", type=int, default=2500, help="particles (a random subset, seed 0)")
    p.add_argument("--iters", type=int, default=5)
    args = p.parse_args(argv)
    import mrcfile
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    from cryoscape.analysis.backprojection import backproject
    from cryoscape.data.fourier_pixels import FourierPixels
    from cryoscape.imaging.ctf import CTFTensors, compute_ctf
    from cryoscape.imaging.fft import hartley2
    from cryoscape.io.particles import load_particles
    from cryoscape.models.pose_search import SearchPredictor, _translated, hierarchical_search, map_search_predictor
    from cryoscape.models.poses import load_learned_poses

    torch.set_num_threads(1)
    K = 1 if args.init == "true-consensus" else int(args.K)
    sim, run = args.work / "sim", args.work / args.run
    parts = load_particles(sim / "particles.star")
    labels_all = np.load(sim / "labels.npz")["state"]
    n_states = int(labels_all.max()) + 1
    rng = np.random.default_rng(0)
    sel = np.sort(rng.choice(len(parts), min(args.n, len(parts)), replace=False))
    n, labels = len(sel), labels_all[sel]
    D, apix = parts.D, parts.pixel_size_angstrom
    A_true = parts.poses.rotations[sel]
    t_true = np.asarray(parts.poses.shifts_px(apix))[sel]
    learned = load_learned_poses(run, args.epoch)[1]
    A, t = learned["rotations"][sel].astype(np.float64), learned["shift_px"][sel].astype(np.float64)
    images = np.stack([np.asarray(parts.images[i], dtype=np.float32) for i in sel])
    ctf9 = parts.ctf.to_array()[sel]
    pixels = FourierPixels.create(D)
    hf, m = pixels.half_freqs(), pixels.n_half
    radius = RADIUS_PX / D
    half = torch.nonzero(hf.norm(dim=1) < radius).squeeze(1)
    positions = torch.cat([half, half + m, torch.tensor([2 * m])])
    freqs = torch.cat([hf[half], hf[:1] * 0])
    y = hartley2(torch.tensor(images)).reshape(n, -1)[:, pixels.index][:, positions].float()
    ctf = compute_ctf(pixels.freqs[positions] / apix, CTFTensors.from_params(parts.ctf)[torch.as_tensor(sel)])

    if args.init == "kmeans":
        z = np.load(run / "latents" / f"epoch_{args.epoch:03d}.npy")
        cls = KMeans(K, n_init=10, random_state=0).fit(z).labels_[sel]
    elif args.init == "truth":
        cls = labels.copy()
    elif args.init == "random":
        cls = rng.integers(0, K, n)
    else:
        cls = np.zeros(n, dtype=int)
    truths = [mrcfile.read(f).astype(np.float64) for f in sorted((sim / "gt").glob("state_*.mrc"))]
    weights = np.bincount(labels_all, minlength=len(truths)) / len(labels_all)
    true_consensus = sum(w * v for w, v in zip(weights, truths, strict=True))

    def scale_at(vol: np.ndarray, rows: np.ndarray, A_rows: np.ndarray, t_rows: np.ndarray) -> float:
        """Least-squares scale of ``vol``'s CTF-modulated slices onto the images ``rows`` at their poses."""
        pred = map_search_predictor(vol, radius * 1.05, freqs).slices(
            torch.tensor(A_rows, dtype=torch.float32)[:, None])[:, 0] * ctf[rows]
        y_t = _translated(y[rows], hf[half], torch.tensor(t_rows, dtype=torch.float32)[:, None, :])[:, 0]
        return float((pred * y_t).sum() / (pred * pred).sum())

    history = []
    t0 = time.time()
    for it in range(args.iters):
        from_consensus = it == 0 and args.init in ("true-consensus", "truth-after-consensus")
        if from_consensus:
            rows = np.arange(min(500, n))
            maps = [(true_consensus, scale_at(true_consensus, rows, A_true[rows], t_true[rows]))]
        else:
            maps = []
            for k in range(K):
                members = np.flatnonzero(cls == k)
                vol = backproject(images, A, t, ctf9, apix, indices=members, progress=False,
                                  oversample=1)["volume"].astype(np.float64) if len(members) else np.zeros((D,) * 3)
                rows = members[:500]
                maps.append((vol, scale_at(vol, rows, A[rows], t[rows]) if len(rows) else 1.0))
        errs = np.full((n, len(maps)), np.inf)
        found_A, found_t = np.zeros((len(maps), n, 3, 3)), np.zeros((len(maps), n, 2))
        for k, (vol, scale) in enumerate(maps):
            pred = map_search_predictor(vol, radius * 1.05, freqs, scale=scale)
            for s in range(0, n, 256):
                b = slice(s, s + 256)
                batch_pred = SearchPredictor(slices=pred.slices, transfer=ctf[b], weight=None, shared=True)
                Ak, tk, ek = hierarchical_search(batch_pred, y[b], hf[half], 1, 3, 8, SHIFT_EXTENT_PX, SHIFT_STEP_PX)
                errs[b, k], found_A[k, b], found_t[k, b] = ek.numpy(), Ak.numpy(), tk.numpy()
        new = errs.argmin(1)
        A, t = found_A[new, np.arange(n)], found_t[new, np.arange(n)]
        if from_consensus and args.init == "truth-after-consensus":
            new = labels.copy()  # the true states as the classes from here on
        changed, cls = float(np.mean(new != cls)), new

        row = {"iteration": it + 1, "scales": [round(s, 3) for _, s in maps],
               "ari": round(float(adjusted_rand_score(labels, cls)), 3), "changed_class": round(changed, 3),
               "confusion_states_x_classes": [[int(np.sum((labels == s) & (cls == k))) for k in range(K)]
                                              for s in range(n_states)],
               "per_state_median_deg": [median_error(A_true, A, labels == s) for s in range(n_states)],
               "per_class_median_deg": [median_error(A_true, A, cls == k) for k in range(K)],
               "elapsed_s": round(time.time() - t0)}
        history.append(row)
        print(row, flush=True)
    out = RESULTS / f"abinit_classes_{args.init}_K{K}_e{args.epoch}.json"
    write_json(out, {"machine": machine_info(), "work": str(args.work), "run": args.run, "epoch": args.epoch,
                     "init": args.init, "K": K, "n": n, "radius_px": RADIUS_PX, "history": history})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
