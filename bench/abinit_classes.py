"""Projection matching and 3-D classification outside the network: can a consensus, or K class maps, hold the poses
of every state of a heterogeneous set? (issue 18, `discrete3`; bench/RESULTS.md 14d)

    .venv/bin/python -m bench.abinit_classes WORK --run RUN --epoch 13 --init true-consensus -K 1
    .venv/bin/python -m bench.abinit_classes WORK --run RUN --epoch 17 --init kmeans -K 3
    .venv/bin/python -m bench.abinit_classes WORK --run RUN --epoch 13 --init truth -K 3

``WORK`` is a ``bench.abinit`` work folder (``sim/particles.star``, ``sim/gt/state_*.mrc``, ``sim/labels.npz``) and
``RUN`` an ab initio run in it. ``-n`` particles (a seeded random subset) are taken with the run's poses of
``--epoch`` and put in ``K`` classes by ``--init``:

* ``true-consensus`` (``K`` 1 unless given; more: random classes after it): the first search is against the TRUE
  consensus (the true states averaged with their frequencies, least-squares scaled at the true poses and shifts);
  what a perfect consensus-first search would start the refinement from;
* ``kmeans``: k-means(``K``) of the run's latents of ``--epoch`` (what the run's latent space separates);
* ``truth``: the true states (what a classification that knew the states could do with the run's poses);
* ``random``: random classes (RELION's random-subset start);
* ``truth-after-consensus``: the first search against the true consensus (as ``true-consensus``), then the true
  states as the ``K`` classes (can K class maps hold the poses that a perfect consensus gives?).
* ``scratch`` (no ``--run``): random rotations, zero shifts and random classes (a multi-class ab initio by
  projection matching).

Options of the search (defaults: section 14d's fixed schedule): ``--folds 2`` splits the particles in two halves,
each searched against the class maps of the other half, so that no particle is compared with a map it is part of
(with the maps made from the same particles the classes stay as they start: a particle fits best the map its own
image is in); the halves share one frame because each half's poses are found against the other's maps.
``--radius-start R --grow G``: the lattice radius grows from ``R`` to 16 px over ``G`` iterations. ``--sample``:
each particle's class is drawn from its posterior ``exp(-(E_k - E_min) / (2 sigma^2))``, ``sigma^2 = E_min / P``
(``P`` compared values), instead of taking the best. ``--draw-poses N``: the first ``N`` iterations draw the
global-level rotation from its posterior (``cryoscape abinit``'s ``--search-draws``).

Each iteration: every class map is back-projected from its members at their current poses (Wiener, no padding);
every particle is searched against every class map (the hierarchical search of ``cryoscape abinit``: 576
rotations and three finer levels to 3.75 degrees, shifts +-6 px, pixels within 16 px), each map scaled by least
squares at its members' current poses and shifts; each particle takes the class and pose of the smallest error (hard
assignment). Prints and writes per iteration: the k-means-style confusion (states x classes), ARI, the share that
changed class, the median pose error per true state after one rotation per state and per class after one rotation
per class (``bench.abinit.pose_errors``). Output: ``bench/results/abinit_classes_<init>_K<K>[_e<epoch>][_f2][_sample]
[_draw<N>]_s<seed>.json`` (section 14d's files were written before the seed was in the name).
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
    p.add_argument("--run", help="the run folder's name in WORK (with --init kmeans, truth or random)")
    p.add_argument("--epoch", type=int, help="the run's epoch whose poses (and latents) start it")
    p.add_argument("--init", choices=("true-consensus", "kmeans", "truth", "random",
                                               "truth-after-consensus", "scratch"), required=True)
    p.add_argument("-K", type=int, default=None,
                   help="classes (default 3; 1 with --init true-consensus, where K > 1 starts random classes after "
                        "the search against the true consensus)")
    p.add_argument("-n", type=int, default=2500, help="particles (a random subset, seed 0)")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--folds", type=int, choices=(1, 2), default=1,
                   help="2: cross-fold maps (each half of the particles searched against the other half's maps)")
    p.add_argument("--radius-start", type=float, default=RADIUS_PX,
                   help="lattice radius (px) of the first iteration, linear to 16 px over --grow iterations")
    p.add_argument("--grow", type=int, default=1, help="iterations over which the radius grows")
    p.add_argument("--sample", action="store_true",
                   help="draw each particle's class from its posterior instead of taking the best")
    p.add_argument("--consensus-iters", type=int, default=1,
                   help="with --init true-consensus or truth-after-consensus: iterations with one map (the first "
                        "against the true consensus, then its back-projection) before the classes start")
    p.add_argument("--core-mask", action="store_true",
                   help="search against the maps times a soft mask of the TRUE common core (the density every state "
                        "has; an oracle: is alignment on the rigid core free of the half-turn trap?)")
    p.add_argument("--draw-poses", type=int, default=0,
                   help="the first this many iterations draw each particle's global-level rotation from its posterior")
    p.add_argument("--seed", type=int, default=0, help="of the subset, folds, random poses and classes, draws")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    from_run = args.init in ("kmeans", "truth", "random")  # the others search first against the truth or at random
    if from_run and (args.run is None or args.epoch is None):
        p.error(f"--init {args.init} needs --run and --epoch")
    import mrcfile
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    from cryoscape.analysis.backprojection import backproject
    from cryoscape.data.fourier_pixels import FourierPixels
    from cryoscape.imaging.ctf import CTFTensors, compute_ctf
    from cryoscape.imaging.fft import hartley2
    from cryoscape.io.particles import load_particles
    from cryoscape.models.pose_search import (
        SearchPredictor,
        _translated,
        hierarchical_search,
        map_search_predictor,
        random_rotations,
    )
    from cryoscape.models.poses import load_learned_poses

    torch.set_num_threads(args.threads)
    K = int(args.K) if args.K is not None else (1 if args.init == "true-consensus" else 3)
    sim = args.work / "sim"
    parts = load_particles(sim / "particles.star")
    labels_all = np.load(sim / "labels.npz")["state"]
    n_states = int(labels_all.max()) + 1
    rng = np.random.default_rng(args.seed)
    sel = np.sort(rng.choice(len(parts), min(args.n, len(parts)), replace=False))
    n, labels = len(sel), labels_all[sel]
    D, apix = parts.D, parts.pixel_size_angstrom
    A_true = parts.poses.rotations[sel]
    t_true = np.asarray(parts.poses.shifts_px(apix))[sel]
    if not from_run:
        A, t = random_rotations(n, args.seed), np.zeros((n, 2))
    else:
        learned = load_learned_poses(args.work / args.run, args.epoch)[1]
        A, t = learned["rotations"][sel].astype(np.float64), learned["shift_px"][sel].astype(np.float64)
    images = np.stack([np.asarray(parts.images[i], dtype=np.float32) for i in sel])
    ctf9 = parts.ctf.to_array()[sel]
    pixels = FourierPixels.create(D)
    hf, m = pixels.half_freqs(), pixels.n_half
    y_all = hartley2(torch.tensor(images)).reshape(n, -1)[:, pixels.index].float()
    ctf_tensors = CTFTensors.from_params(parts.ctf)[torch.as_tensor(sel)]

    def compared(radius_px: float):
        """The compared pixels within ``radius_px``: half-plane indices, frequencies, images and CTFs."""
        half = torch.nonzero(hf.norm(dim=1) < radius_px / D).squeeze(1)
        positions = torch.cat([half, half + m, torch.tensor([2 * m])])
        return (half, torch.cat([hf[half], hf[:1] * 0]), y_all[:, positions],
                compute_ctf(pixels.freqs[positions] / apix, ctf_tensors))

    if args.init == "kmeans":
        z = np.load(args.work / args.run / "latents" / f"epoch_{args.epoch:03d}.npy")
        cls = KMeans(K, n_init=10, random_state=0).fit(z).labels_[sel]
    elif args.init == "truth":
        cls = labels.copy()
    elif args.init in ("random", "scratch"):
        cls = rng.integers(0, K, n)
    else:
        cls = np.zeros(n, dtype=int)
    fold = rng.permutation(n) % args.folds  # with 2 folds each half is searched against the other half's maps
    truths = [mrcfile.read(f).astype(np.float64) for f in sorted((sim / "gt").glob("state_*.mrc"))]
    weights = np.bincount(labels_all, minlength=len(truths)) / len(labels_all)
    true_consensus = sum(w * v for w, v in zip(weights, truths, strict=True))
    core = np.ones((D,) * 3)
    if args.core_mask:  # the density every state has (the rigid core), in the truth's frame, softened
        from scipy.ndimage import gaussian_filter

        common = np.min(np.stack(truths), axis=0)
        core = np.clip(gaussian_filter((common > 0.1 * common.max()).astype(np.float64), 1.5) * 2.0, 0.0, 1.0)
        true_consensus = true_consensus * core

    def scale_at(vol: np.ndarray, rows: np.ndarray, A_rows: np.ndarray, t_rows: np.ndarray, cmp) -> float:
        """Least-squares scale of ``vol``'s CTF-modulated slices onto the images ``rows`` at their poses."""
        half, freqs, y, ctf = cmp
        pred = map_search_predictor(vol, radius * 1.05, freqs).slices(
            torch.tensor(A_rows, dtype=torch.float32)[:, None])[:, 0] * ctf[rows]
        y_t = _translated(y[rows], hf[half], torch.tensor(t_rows, dtype=torch.float32)[:, None, :])[:, 0]
        return float((pred * y_t).sum() / (pred * pred).sum())

    history = []
    t0 = time.time()
    for it in range(args.iters):
        grown = min(1.0, it / max(1, args.grow - 1))
        radius_px = args.radius_start + grown * (RADIUS_PX - args.radius_start)
        radius = radius_px / D
        cmp = compared(radius_px)
        half, freqs, y, ctf = cmp
        consensus_phase = args.init in ("true-consensus", "truth-after-consensus") and it < args.consensus_iters
        from_consensus = consensus_phase and it == 0  # the true consensus; later consensus iterations back-project
        split_now = consensus_phase and it == args.consensus_iters - 1  # the classes start after this iteration
        maps: list[list[tuple[np.ndarray, float]]] = []  # per fold, per class: (map, scale)
        for f in range(args.folds):
            if from_consensus:
                rows = np.arange(min(500, n))
                maps.append([(true_consensus, scale_at(true_consensus, rows, A_true[rows], t_true[rows], cmp))])
                continue
            maps.append([])
            for k in range(1 if consensus_phase else K):
                members = np.flatnonzero((cls == k) & (fold == f))
                vol = np.zeros((D,) * 3)
                if len(members):
                    vol = core * backproject(images, A, t, ctf9, apix, indices=members, progress=False,
                                             oversample=1)["volume"].astype(np.float64)
                rows = members[:500]
                maps[f].append((vol, scale_at(vol, rows, A[rows], t[rows], cmp) if len(rows) else 1.0))
        errs = np.full((n, K), np.inf)
        draws = None
        if it < args.draw_poses:
            draws = torch.Generator()
            draws.manual_seed(args.seed * 1000 + it)
        found_A, found_t = np.zeros((K, n, 3, 3)), np.zeros((K, n, 2))
        for f in range(args.folds):
            searched = np.flatnonzero(fold != f) if args.folds == 2 else np.arange(n)
            for k, (vol, scale) in enumerate(maps[f]):
                pred = map_search_predictor(vol, radius * 1.05, freqs, scale=scale)
                for s in range(0, len(searched), 256):
                    b = torch.as_tensor(searched[s:s + 256])
                    batch_pred = SearchPredictor(slices=pred.slices, transfer=ctf[b], weight=None, shared=True)
                    Ak, tk, ek = hierarchical_search(batch_pred, y[b], hf[half], 1, 3, 8, SHIFT_EXTENT_PX,
                                                     SHIFT_STEP_PX, sample_generator=draws)
                    errs[b, k], found_A[k, b], found_t[k, b] = ek.numpy(), Ak.numpy(), tk.numpy()
        if args.sample and K > 1:  # the class drawn from exp(-(E_k - E_min) / (2 sigma^2)), sigma^2 = E_min / P
            e_min = errs.min(1, keepdims=True)
            log_post = -(errs - e_min) / (2.0 * e_min / y.shape[1])
            new = (log_post + rng.gumbel(size=errs.shape)).argmax(1)
        else:
            new = errs.argmin(1)
        A, t = found_A[new, np.arange(n)], found_t[new, np.arange(n)]
        if split_now and args.init == "truth-after-consensus":
            new = labels.copy()  # the true states as the classes from here on
        elif split_now and K > 1:
            new = rng.integers(0, K, n)  # random classes from here on
        changed, cls = float(np.mean(new != cls)), new

        row = {"iteration": it + 1, "radius_px": round(radius_px, 2),
               "scales": [[round(s, 3) for _, s in fm] for fm in maps],
               "ari": round(float(adjusted_rand_score(labels, cls)), 3), "changed_class": round(changed, 3),
               "confusion_states_x_classes": [[int(np.sum((labels == s) & (cls == k))) for k in range(K)]
                                              for s in range(n_states)],
               "per_state_median_deg": [median_error(A_true, A, labels == s) for s in range(n_states)],
               "per_class_median_deg": [median_error(A_true, A, cls == k) for k in range(K)],
               "elapsed_s": round(time.time() - t0)}
        history.append(row)
        print(row, flush=True)
    tag = (f"_e{args.epoch}" if from_run else "") + (f"_f{args.folds}" if args.folds > 1 else "")
    tag += f"_c{args.consensus_iters}" if args.consensus_iters > 1 else ""
    tag += ("_sample" if args.sample else "") + ("_core" if args.core_mask else "")
    tag += f"_draw{args.draw_poses}" if args.draw_poses else ""
    out = RESULTS / f"abinit_classes_{args.init}_K{K}{tag}_s{args.seed}.json"
    write_json(out, {"machine": machine_info(), "work": str(args.work), "run": args.run, "epoch": args.epoch,
                     "init": args.init, "K": K, "n": n, "folds": args.folds, "sample": args.sample,
                     "radius_start_px": args.radius_start, "grow": args.grow, "radius_px": RADIUS_PX,
                     "core_mask": args.core_mask, "draw_poses": args.draw_poses,
                     "consensus_iters": args.consensus_iters, "seed": args.seed,
                     "history": history})
    print(f"wrote {out}")
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
