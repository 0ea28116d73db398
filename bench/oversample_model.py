"""Back-projection oversampling against the image model (bench/RESULTS.md section 10d).

Oracle subsets of a CryoBench-like simulation (``bench.cryobench prepare``): the particles of one true conformation
(200, or 1,000 from five neighbouring conformations), with the simulation's own poses and CTFs, are re-imaged from
that conformation's true map in two ways, and back-projected with ``oversample`` 1 and 2:

* ``field 1`` (circular): the CTF multiplies the box's own spectrum, as ``cryoscape simulate`` (default),
  cryoDRGN's and CryoBench's simulations form images; signal the CTF spreads past the box edge wraps back in;
* ``field 2``, ``field 3``: the image is formed in a field 2 or 3 boxes wide and the box cut from it, as particles
  are cut from micrographs (``simulate --field``); that signal is lost.

Each image set is scored noise-free and with white noise of the simulation's standard deviation: the AU-FSC
(masked, as CryoBench's per-image metric) of the back-projection against the conformation's true map.

    .venv/bin/python -m bench.oversample_model --work bench/_work/cb64_snr0.1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench.common import machine_info, write_json


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="bench/_work/cb64_snr0.1", help="a bench.cryobench work folder (its sim/)")
    p.add_argument("--fields", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON (default bench/results/oversample_model_WORKNAME.json)")
    a = p.parse_args(argv)
    import torch

    from cryoscape.analysis.backprojection import backproject
    from cryoscape.analysis.evaluate import _state_masks, au_fsc, read_gt_maps
    from cryoscape.io.particles import load_particles
    from cryoscape.simulate.particles import form_images

    torch.set_num_threads(a.threads)
    sim = Path(a.work) / "sim"
    particles = load_particles(sim / "particles.star")
    labels = np.load(sim / "labels.npz")
    states, noise_std = labels["state"], float(labels["noise_std"])
    gt, _ = read_gt_maps(sim)
    apix = particles.pixel_size_angstrom
    masks = _state_masks(gt, apix, "auto")
    rot, shifts = particles.poses.rotations, particles.poses.shifts_px(apix)
    ctf = particles.ctf.to_array()
    rng = np.random.default_rng(0)
    rows = []
    t0 = time.time()
    for state, n, spread in ((10, 200, 0), (30, 200, 0), (10, 1000, 2)):
        pool = np.flatnonzero(np.abs(states - state) <= spread)
        idx = np.sort(rng.choice(pool, size=n, replace=False))
        noise = rng.normal(0.0, noise_std, (n, *gt[state].shape[1:])).astype(np.float32)
        for field in a.fields:
            clean = np.concatenate([
                form_images(torch.from_numpy(gt[state]).float(), torch.from_numpy(rot[j]).float(),
                            torch.from_numpy(shifts[j]).float(), torch.from_numpy(ctf[j]).float(), apix,
                            field=field).numpy() for j in np.array_split(idx, max(1, n // 50))])
            for noisy in (False, True):
                images = clean + noise if noisy else clean
                row = {"state": state, "n": n, "conformations": 2 * spread + 1, "field": field, "noisy": noisy}
                for ov in (1, 2):
                    vol = backproject(images, rot[idx], shifts[idx], ctf[idx], apix, oversample=ov,
                                      progress=False, device="cpu")["volume"]
                    row[f"au_fsc_oversample{ov}"] = round(au_fsc(vol, gt[state], masks[state]), 4)
                rows.append(row)
                print(json.dumps(row), flush=True)
    out = Path(a.out or f"bench/results/oversample_model_{Path(a.work).name}.json")
    write_json(out, {"machine": machine_info(), "work": a.work, "noise_std": noise_std, "rows": rows,
                     "seconds": round(time.time() - t0, 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
