"""How much of each image's pose can any single-image search find? ``cryoscape abinit``'s ceiling on a data set.

    .venv/bin/python -m bench.abinit_oracle bench/_work/abinit_discrete3_D64_N5000_snr0.1 [-n 200] [--radius 16]

The poses of the first ``-n`` particles of ``DIR/sim`` (a ``cryoscape simulate`` folder as ``bench.abinit`` makes
it: ``particles.star``, ``gt/state_*.mrc``, ``labels.npz``) are searched with the same hierarchical search as
``abinit`` (:func:`cryoscape.models.pose_search.hierarchical_search`: 576 rotations, 3 finer levels to 3.75
degrees, shifts +-6 px), but against the TRUE maps instead of a learned decoder: (a) the consensus (the true states
averaged with their frequencies in the data set, what a homogeneous search sees) and (b) each image's own state
(an oracle latent). The slices are trilinear samples of the map's 3-D Fourier transform (2x zero padding), CTF
applied, one least-squares scale fitted at the true poses. Errors are geodesic angles to the true rotations (no
alignment needed: the frame is the truth's).

A learned map cannot do better than (b) by much, so when (b) leaves most poses far off, ab initio pose search on
that data set cannot converge, whatever the schedule. Caveat: the maps must sample the objects well; with the
presets' 1-pixel blobs at D = 32 the sampled truth differs from the simulator's analytic images and (b) fails even
without noise (``bench/RESULTS.md`` section 14), so use D >= 64 for presets.

Prints one line per map and writes ``bench/results/abinit_oracle_<folder>.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bench.common import machine_info, write_json

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("work", type=Path, help="a bench.abinit work folder (with sim/)")
    p.add_argument("-n", type=int, default=200, help="particles searched (the first n)")
    p.add_argument("--radius", type=float, default=None, help="lattice radius in pixels (default D/4, abinit's end)")
    args = p.parse_args(argv)
    import mrcfile

    from cryoscape.data.fourier_pixels import FourierPixels
    from cryoscape.imaging import so3_grid
    from cryoscape.imaging.ctf import CTFTensors, compute_ctf
    from cryoscape.imaging.fft import hartley2
    from cryoscape.io.particles import load_particles
    from cryoscape.models.pose_search import hierarchical_search, map_search_predictor

    torch.set_num_threads(1)
    sim = args.work / "sim"
    parts = load_particles(sim / "particles.star")
    D, apix, n = parts.D, parts.pixel_size_angstrom, min(args.n, len(parts))
    radius = (args.radius if args.radius is not None else D / 4) / D
    labels_all = np.load(sim / "labels.npz")["state"] if (sim / "labels.npz").is_file() else np.zeros(len(parts), int)
    labels = labels_all[:n]
    truths = [mrcfile.read(t).astype(np.float64) for t in sorted((sim / "gt").glob("state_*.mrc"))]
    weights = np.bincount(labels_all, minlength=len(truths)) / len(labels_all)
    pixels = FourierPixels.create(D)
    hf, m = pixels.half_freqs(), pixels.n_half
    half = torch.nonzero(hf.norm(dim=1) < radius).squeeze(1)
    positions = torch.cat([half, half + m, torch.tensor([2 * m])])
    freqs = torch.cat([hf[half], hf[:1] * 0])
    images = torch.tensor(np.stack([np.asarray(parts.images[i], dtype=np.float32) for i in range(n)]))
    y = hartley2(images).reshape(n, -1)[:, pixels.index][:, positions]
    ctf = compute_ctf(pixels.freqs[positions] / apix, CTFTensors.from_params(parts.ctf)[torch.arange(n)])
    A_true = parts.poses.rotations[:n]

    def search(vol: np.ndarray) -> np.ndarray:
        unscaled = map_search_predictor(vol, radius * 1.05, freqs)
        at_truth = unscaled.slices(torch.tensor(A_true, dtype=torch.float32)[:, None])[:, 0] * ctf
        scale = float((at_truth * y).sum() / (at_truth * at_truth).sum())  # least squares at the true poses
        pred = map_search_predictor(vol, radius * 1.05, freqs, transfer=ctf, scale=scale)
        A, _, _ = hierarchical_search(pred, y, hf[half], base_level=1, n_levels=3, top_k=8,
                                      shift_extent_px=max(2.0, round(0.1 * D)), shift_step_px=2.0)
        return so3_grid.geodesic_distance_deg(A.numpy(), A_true)

    def summary(err: np.ndarray) -> dict:
        return {"median_deg": round(float(np.median(err)), 2), "frac_under_10deg": round(float(np.mean(err < 10)), 3),
                "frac_over_150deg": round(float(np.mean(err > 150)), 3),
                "median_by_state": [round(float(np.median(err[labels == k])), 1) for k in np.unique(labels)]}

    out: dict = {"machine": machine_info(), "data": str(args.work), "D": D, "n": n, "radius_px": radius * D}
    consensus = sum(w * t for w, t in zip(weights, truths, strict=True))
    out["consensus"] = summary(search(consensus))
    print(f"consensus map: {out['consensus']}", flush=True)
    if len(truths) > 1:
        own = np.zeros(n)
        for k, t in enumerate(truths):
            err = search(t)
            own[labels == k] = err[labels == k]
        out["own_state"] = summary(own)
        print(f"each image's own state: {out['own_state']}", flush=True)
    write_json(RESULTS / f"abinit_oracle_{args.work.name}.json", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
