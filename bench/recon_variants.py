"""Variants of the latent-neighbour rule on a scored CryoBench-like work folder (issue 19; bench/RESULTS.md 10c).

    .venv/bin/python -m bench.recon_variants bench/_work/cb64_snr0.1 local --n-images 100
    .venv/bin/python -m bench.recon_variants bench/_work/cb64_snr0.1 local --threshold 2 --n-images 30

Per-image AU-FSC (the same sampled images as ``cryoscape evaluate``, seed 0, ``--n-images``) of the latent-neighbour
maps of ``WORK/run`` with one change to the rule (``cryoscape.analysis.neighbour_recon``):

* ``whole_box``: one choice per shell for the whole box (the rule of section 10b);
* ``local``: the current rule (a variable region from the data, step 5 of the rule); ``--threshold``, ``--edge``
  (module constants ``VARIABILITY_THRESHOLD``, ``VARIABILITY_EDGE_PX``), ``--fine-ladder`` (14 sizes, ratio
  sqrt 2) and ``--one-se`` (step 3 takes the most particles within one standard error of the smallest error)
  change it;
* ``truth_region``: the variable region taken from the TRUE maps (where their spread over the conformations
  exceeds a tenth of its maximum, softened by 2 voxels): what a perfect region estimate gives;
* ``--latents pcN``: neighbours along the first N principal components of the latents only;
  ``--latents pullback``: distances in the decoder's pull-back metric ``G = mean J^T J`` (``J`` the finite-difference
  Jacobian of the decoder's map, restricted to the variable region, at 8 latent points), i.e. latents mapped by
  ``G^(1/2)``; ``--latents oracle``: the true coordinate.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work", type=Path)
    p.add_argument("rule", choices=["whole_box", "local", "truth_region"])
    p.add_argument("--latents", default="learnt", help="learnt (default), pcN, pullback or oracle")
    p.add_argument("--threshold", type=float)
    p.add_argument("--edge", type=float)
    p.add_argument("--fine-ladder", action="store_true")
    p.add_argument("--one-se", choices=["fraction", "voxels"],
                   help="step 3 takes the most particles within one standard error of the smallest error, counting a "
                        "region's coefficients as its volume fraction, or every voxel as independent")
    p.add_argument("--n-images", type=int, default=100)
    p.add_argument("--max-neighbours", type=int, default=2000)
    a = p.parse_args(argv)
    import torch
    from scipy import ndimage

    import cryoscape.analysis.neighbour_recon as nr
    from cryoscape.analysis.evaluate import per_image_au_fsc, read_gt_maps
    from cryoscape.analysis.latent import load_latents

    torch.set_num_threads(1)
    if a.threshold is not None:
        nr.VARIABILITY_THRESHOLD = a.threshold
    if a.edge is not None:
        nr.VARIABILITY_EDGE_PX = a.edge
    nr.ONE_STANDARD_ERROR = a.one_se is not None
    nr.ONE_SE_MASK_FRACTION = a.one_se == "fraction"
    run, sim = a.work / "run", a.work / "sim"
    lat = load_latents(run)
    truth = np.load(sim / "labels.npz")
    idx = lat.indices if lat.indices is not None else np.arange(len(lat.z))
    states = truth["state"][idx]
    gt, gt_apix = read_gt_maps(sim)
    base = nr.reconstructor_from_run(run, lat.epoch, max_neighbours=a.max_neighbours, oversample=1, device="cpu")
    z = lat.z.astype(np.float64)
    info: dict = {}
    if a.latents == "oracle":
        z = truth["coordinate"][idx].astype(np.float64)[:, None]
    elif a.latents.startswith("pc"):
        from sklearn.decomposition import PCA

        z = PCA(int(a.latents[2:])).fit_transform(z)
    elif a.latents == "pullback":
        from cryoscape.models.loading import load_run

        model = load_run(run, lat.epoch, device="cpu")
        region = base.variable_region()
        weight = np.ones(base.whole_set_maps()["volume"].size) if region is None else region.ravel()
        points = z[np.random.default_rng(0).choice(len(z), 8, replace=False)]
        h = 0.1 * z.std(axis=0)
        G = np.zeros((z.shape[1], z.shape[1]))
        for p0 in points:
            zz = np.vstack([p0] + [p0 + h[j] * np.eye(z.shape[1])[j] for j in range(z.shape[1])])
            vols = np.asarray(model.generate_volumes(zz.astype(np.float32), batch_size=len(zz)))
            J = np.stack([(vols[j + 1] - vols[0]).ravel() / h[j] for j in range(z.shape[1])], axis=1)
            G += J.T @ (J * weight[:, None]) / len(points)
        w, V = np.linalg.eigh(G)
        info["pullback_eigenvalues_relative"] = np.round(w / w.max(), 4).tolist()
        z = z @ (V @ np.diag(np.sqrt(np.maximum(w, 0.0))) @ V.T)
    elif a.latents != "learnt":
        raise SystemExit(f"unknown --latents {a.latents}")
    ks = [25, 35, 50, 71, 100, 141, 200, 283, 400, 566, 800, 1131, 1600, 2000] if a.fine_ladder else nr.DEFAULT_KS
    rec = nr.NeighbourReconstructor(z, base.images, base.rotations, base.shifts_px, base.ctf,
                                    base.pixel_size_angstrom, ks=ks, max_neighbours=a.max_neighbours, oversample=1,
                                    device="cpu", local=a.rule != "whole_box")
    vols = np.stack([gt[s] for s in sorted(gt)])
    sd = vols.std(axis=0)
    true_region = sd > 0.1 * sd.max()
    if a.rule == "truth_region":
        rec._region = np.clip(ndimage.gaussian_filter(true_region.astype(np.float32), 2.0), 0.0, 1.0)
        rec._region_made = True
    region = rec.variable_region()
    if region is not None:
        info["region_fraction_of_box"] = round(float(np.mean(region > 0.5)), 4)
        info["share_of_true_region_covered"] = round(float(np.mean(region[true_region] > 0.5)), 4)
    t0 = time.time()
    r = per_image_au_fsc(rec, z, states, gt, n_images=a.n_images, seed=0, gt_pixel_size_angstrom=gt_apix)
    print(json.dumps({"work": str(a.work), "rule": a.rule, "latents": a.latents, "threshold": nr.VARIABILITY_THRESHOLD,
                      "edge": nr.VARIABILITY_EDGE_PX, "fine_ladder": a.fine_ladder,
                      "one_se": nr.ONE_STANDARD_ERROR, "se_mask_fraction": nr.ONE_SE_MASK_FRACTION,
                      "n_images": r["n_images"],
                      "per_image_au_fsc": round(r["mean"], 4), "sd": round(r["std"], 4),
                      "seconds_per_map": round((time.time() - t0) / r["n_images"], 2), **info}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
