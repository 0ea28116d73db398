"""Back-projection memory and accuracy (issue 16, item 8): peak RSS at large boxes, FSC to a known map.

Two parts (run from the repository root with cryoscape's venv):

* ``memory``: ``cryoscape backproject``'s reconstruction (``analysis.backprojection.backproject``) of N random
  posed, CTF-affected images of box D, in a child process under ``/usr/bin/time -v`` (peak RSS), one size at a
  time; the estimate that the memory check uses is printed beside it.
* ``fsc``: a simulated homogeneous data set (``cryoscape simulate``, D=64) back-projected by the current code and
  by the code of a git revision (default: the commit before the half-grid rewrite), FSC to the ground-truth map.

  .venv/bin/python -m bench.backproject_memory memory -D 256 384 -N 5
  .venv/bin/python -m bench.backproject_memory fsc [--rev 4fba067]

Results: JSON in ``bench/results/backproject_memory*.json``; figures in ``RESULTS.md`` (section 8).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.common import BENCH, ROOT, WORK, ensure_simulation, machine_info, run_timed, write_json

BASELINE_REV = "4fba067"  # last commit with the full (2D)^3 grids


def child(D: int, n: int, oversample: int, batch_size: int, rev: str | None = None) -> None:
    """Back-project n random images of box D (in this process) and print a JSON line with the peak RSS.

    ``rev``: use the back-projection code of that git revision instead of the current one.
    """
    import numpy as np

    from cryoscape.analysis.backprojection import backproject, estimate_memory_bytes
    from cryoscape.imaging.rotations import random_rotations

    rng = np.random.default_rng(0)
    images = rng.standard_normal((n, D, D)).astype(np.float32)
    dfu = rng.uniform(10000, 20000, n)
    ctf = np.stack([dfu, dfu - 300, np.full(n, 30.0), np.full(n, 300.0), np.full(n, 2.7), np.full(n, 0.1),
                    np.zeros(n), np.zeros(n), np.ones(n)], axis=1).astype(np.float32)
    if rev:
        backproject = _module_at(rev).backproject
    t0 = time.perf_counter()
    out = backproject(images, random_rotations(n, seed=1), rng.uniform(-3, 3, (n, 2)), ctf, 1.5,
                      oversample=oversample, batch_size=batch_size, progress=False)
    wall = time.perf_counter() - t0
    assert out["volume"].shape == (D, D, D) and np.isfinite(out["volume"]).all()
    print(json.dumps({"D": D, "n": n, "oversample": oversample, "code": rev or "current", "wall_s": round(wall, 1),
                      "ru_maxrss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2),
                      "estimate_gb": round(estimate_memory_bytes(D, oversample, batch_size) / 1e9, 2)}))


def memory(args) -> None:
    rows = []
    for D in args.D:
        cmd = [sys.executable, "-m", "bench.backproject_memory", "child", "-D", str(D), "-N", str(args.N),
               "--oversample", str(args.oversample), "--batch-size", str(args.batch_size)]
        cmd += ["--rev", args.rev] if args.rev else []
        res = run_timed(cmd, WORK / "backproject_memory" / f"D{D}_N{args.N}_os{args.oversample}_{args.rev}.log",
                        cwd=ROOT)
        text = Path(res["log"]).read_text()
        line = [ln for ln in text.splitlines() if ln.startswith("{")]
        res.update(json.loads(line[-1]) if line else {"error": text[-2000:]})
        res["peak_rss_gb"] = round(res["peak_rss_mib"] * 2**20 / 1e9, 2) if res["peak_rss_mib"] else None
        print(json.dumps(res), flush=True)
        rows.append(res)
    path = BENCH / "results" / "backproject_memory.json"
    previous = json.loads(path.read_text())["runs"] if path.is_file() else []
    key = ("D", "n", "oversample", "code")
    kept = [r for r in previous if not any(all(r.get(k) == q.get(k) for k in key) for q in rows)]
    write_json(path, {"machine": machine_info(), "runs": kept + rows})
    print("\n| code | D | N | oversample | peak RSS (GB) | estimate (GB) | wall (s) |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.get('code')} | {r['D']} | {r['n']} | {r['oversample']} | {r['peak_rss_gb']} | "
              f"{r.get('estimate_gb')} | {r['wall_s']} |")


def _module_at(rev: str):
    """``cryoscape.analysis.backprojection`` as it was at git revision ``rev``."""
    src = subprocess.run(["git", "show", f"{rev}:src/cryoscape/analysis/backprojection.py"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    path = WORK / f"backprojection_{rev}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"backprojection_{rev}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fsc_to_truth(args) -> None:
    import numpy as np

    from cryoscape.analysis import backprojection as current
    from cryoscape.analysis.fsc import fsc, resolution_at
    from cryoscape.io.mrc import read_mrc
    from cryoscape.io.particles import load_particles

    baseline = _module_at(args.rev)
    rows = []
    for snr in args.snr:
        sim = ensure_simulation("homogeneous", args.N, 64, snr, WORK / f"bp_fsc_D64_N{args.N}_snr{snr:g}", seed=3)
        gt = read_mrc(sim / "gt" / "state_000.mrc")[0]
        p = load_particles(sim / "particles.star")
        apix = p.pixel_size_angstrom
        inputs = (p.images, p.poses.rotations, p.poses.shifts_px(apix), p.ctf.to_array(), apix)
        for name, mod in ((f"git {args.rev}", baseline), ("current", current)):
            for oversample in (2, 1):
                t0 = time.perf_counter()
                out = mod.backproject(*inputs, oversample=oversample, progress=False)
                wall = time.perf_counter() - t0
                freqs, curve = fsc(out["volume"], gt)
                vol = out["volume"]
                row = {"snr": snr, "code": name, "oversample": oversample, "wall_s": round(wall, 1),
                       "fsc_mean": round(float(curve[1:].mean()), 4),
                       "fsc_min_to_half_nyquist": round(float(curve[freqs <= 0.25].min()), 4),
                       "fsc_min": round(float(curve.min()), 4),
                       "res_fsc05_A": round(float(resolution_at(freqs, curve, 0.5, apix)), 2),
                       "rel_error": round(float(np.linalg.norm(vol - gt) / np.linalg.norm(gt)), 4)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    write_json(BENCH / "results" / "backproject_fsc.json", {"machine": machine_info(), "N": args.N, "runs": rows})
    print("\n| SNR | code | oversample | FSC mean | FSC min (k<=1/4) | FSC min | res @0.5 (A) | rel. error | "
          "wall (s) |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['snr']:g} | {r['code']} | {r['oversample']} | {r['fsc_mean']} | {r['fsc_min_to_half_nyquist']} "
              f"| {r['fsc_min']} | {r['res_fsc05_A']} | {r['rel_error']} | {r['wall_s']} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    m = sub.add_parser("memory")
    m.add_argument("-D", type=int, nargs="+", default=[256, 384])
    m.add_argument("-N", type=int, default=5)
    m.add_argument("--oversample", type=int, default=2)
    m.add_argument("--batch-size", type=int, default=256)
    m.add_argument("--rev", help="measure the code of this git revision (e.g. 4fba067, the full-grid code)")
    c = sub.add_parser("child")
    c.add_argument("-D", type=int, required=True)
    c.add_argument("-N", type=int, required=True)
    c.add_argument("--oversample", type=int, default=2)
    c.add_argument("--batch-size", type=int, default=256)
    c.add_argument("--rev")
    f = sub.add_parser("fsc")
    f.add_argument("--rev", default=BASELINE_REV)
    f.add_argument("-N", type=int, default=2000)
    f.add_argument("--snr", type=float, nargs="+", default=[100.0, 0.1])
    args = ap.parse_args()
    if args.what == "child":
        child(args.D, args.N, args.oversample, args.batch_size, args.rev)
    elif args.what == "memory":
        memory(args)
    else:
        fsc_to_truth(args)


if __name__ == "__main__":
    main()
