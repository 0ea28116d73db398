"""CTF-premultiplied tilt stacks give the same states and maps as plain ones (issue 16, item 1).

One command::

    .venv/bin/python -m bench.premultiplied_tilt            # tilt4, N=400, D=24, 11 tilts, SNR 1; seeds 0 and 1
    .venv/bin/python -m bench.premultiplied_tilt --seeds 0 --epochs 20     # shorter

Data (``cryoscape simulate-tilt``): the same particles twice, with the same ``--seed`` (same states, poses, tilt
CTFs and noise): plain, and with ``--premultiply`` (every final noisy image multiplied by its CTF once more and
flagged ``rlnCtfDataAreCtfPremultiplied 1``, as WarpTools and RELION 5 extract 2-D stacks). Default preset
``tilt4`` (four compositionally different states, equal populations), D=24 (a 256 A box, 10.67 A/px), 11 tilts
(dose-symmetric, 3 degree steps to +-15, 3 e/A^2 per tilt), SNR 1. The script checks that both simulations have the
same states and poses.

Training: ``cryoscape train --model tomodrgn`` on each with identical settings (zdim 4, encoders 64x2, per-tilt
embedding 16, decoder 64x2, batch 4 particles, AdamW lr 2e-3, every particle trained, latents after every epoch,
``--threads 1``, niced). The premultiplied run models the observation as CTF x image (CTF^2 x slice in the loss).

Reported per seed and variant: k-means(K) ARI of the particle latents against the true states at the last epoch
(and after every epoch, to compare how fast each learns), the ARI between the two runs' k-means labels (same
particles), and per state the map at the state's mean latent (``cryoscape.analysis.evaluate.map_scores``, as
``cryoscape evaluate``): correlation and FSC=0.5 resolution against the ground truth, plus the correlation and the
amplitude ratio ``<pre, plain> / <plain, plain>`` between the premultiplied and the plain run's maps of the state.

Writes ``bench/results/premultiplied_tilt.json`` and prints a Markdown table (``--table`` prints it again from the
JSON). Work folders:
``bench/_work/premult_*`` (simulations are redone each time; they take seconds). Run time on the shared 2-core
CPU: 3.5-7 min per training run (N=400 x 40 epochs), 23 min for two seeds at a 1-minute load of 5-10
(``bench/RESULTS.md`` section 12).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import BENCH, CRYOSCAPE_CMD, WORK, TrainSpec, machine_info, run_timed, tail, timed_train, write_json

SETTINGS = dict(preset="tilt4", n=400, box=24, field_of_view=256.0, tilt_max=15.0, snr=1.0, epochs=40, zdim=4,
                enc_dim=64, enc_layers=2, dec_dim=64, dec_layers=2, tilt_embed_dim=16, batch=4, lr=2e-3)
VARIANTS = ("plain", "premultiplied")


def simulate(s: dict, seed: int, variant: str) -> tuple[Path, dict]:
    out = WORK / f"premult_{s['preset']}_N{s['n']}_D{s['box']}_snr{s['snr']:g}_s{seed}_{variant}"
    if out.exists():
        shutil.rmtree(out)
    cmd = [*CRYOSCAPE_CMD, "simulate-tilt", "--preset", s["preset"], "-N", s["n"], "-D", s["box"],
           "--apix", s["field_of_view"] / s["box"], "--tilt-max", s["tilt_max"], "--snr", s["snr"], "--seed", seed,
           "--device", "cpu", "-o", out, *(["--premultiply"] if variant == "premultiplied" else [])]
    res = run_timed(["nice", "-n", "10", *map(str, cmd)], WORK / f"{out.name}.log", env=_env())
    if res["returncode"] != 0:
        raise RuntimeError("simulate-tilt failed:\n" + tail(Path(res["log"])))
    return out, res


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def train(sim: Path, s: dict, seed: int, variant: str) -> tuple[Path, dict]:
    out = WORK / f"{sim.name}_run"
    if out.exists():
        shutil.rmtree(out)
    spec = TrainSpec(sim / "particles.star", out, model="tomodrgn", zdim=s["zdim"], enc_dim=s["enc_dim"],
                     enc_layers=s["enc_layers"], dec_dim=s["dec_dim"], dec_layers=s["dec_layers"], batch=s["batch"],
                     epochs=s["epochs"], lr=s["lr"], val_frac=0.0, seed=0,
                     extra=["--tilt-embed-dim", str(s["tilt_embed_dim"]), "--threads", "1", "--device", "cpu"])
    res, rows = timed_train(spec, env=_env(), prefix=["nice", "-n", "10", *CRYOSCAPE_CMD])
    if res["returncode"] != 0:
        raise RuntimeError(f"training ({variant}, seed {seed}) failed:\n" + tail(Path(res["log"])))
    res["seconds_per_epoch"] = round(float(np.mean([r["seconds"] for r in rows])), 3) if rows else None
    return out, res


def same_particles(a: Path, b: Path) -> bool:
    """Both simulations hold the same states, poses and tilt counts (the images differ by the CTF only)."""
    with np.load(a / "labels.npz") as la, np.load(b / "labels.npz") as lb:
        return all(np.array_equal(la[k], lb[k]) for k in la.files if k in lb.files) and set(la.files) == set(lb.files)


def evaluate(run: Path, sim: Path, k: int) -> dict:
    from cryoscape.analysis.evaluate import clustering_scores, map_scores, read_gt_maps, read_labels
    from cryoscape.analysis.latent import kmeans_on_data, load_latents
    from cryoscape.analysis.volume_space import generate_volumes, load_generator
    from cryoscape.rundir import RunDir

    states = read_labels(sim / "labels.npz")["state"]
    epochs = RunDir(run).latent_epochs()

    def latents(epoch: int) -> np.ndarray:
        lat = load_latents(run, epoch)
        if lat.indices is not None and not np.array_equal(lat.indices, np.arange(len(states))):
            raise RuntimeError(f"{run}: the latents do not cover every particle in order")
        return lat.z

    by_epoch = {}
    for e in epochs:
        by_epoch[e] = round(clustering_scores(kmeans_on_data(latents(e), k, seed=0).labels, states)["ari"], 4)
    last = epochs[-1]
    z = latents(last)
    labels = kmeans_on_data(z, k, seed=0).labels
    gt_maps, gt_apix = read_gt_maps(sim)
    generator = load_generator(run, last, "auto")
    maps = map_scores(generator, z, states, gt_maps, gt_pixel_size_angstrom=gt_apix)
    means = np.stack([z[states == st].mean(axis=0) for st in sorted(gt_maps)]).astype(np.float32)
    volumes = generate_volumes(generator, means)
    return {"epoch": last, "ari": by_epoch[last], "ari_by_epoch": by_epoch,
            "first_epoch_ari_0.9": next((e for e, a in by_epoch.items() if a >= 0.9), None),
            "labels": labels.tolist(),
            "states": {int(st): {"correlation": round(float(m["correlation"]), 4),
                                 "resolution_0.5_angstrom": m["resolution_0.5_angstrom"]}
                       for st, m in maps["states"].items()},
            "_volumes": volumes}


def compare(a: dict, b: dict) -> dict:
    """ARI between the two runs' k-means labels; per state, correlation and amplitude ratio of their maps."""
    from cryoscape.analysis.evaluate import clustering_scores
    from cryoscape.analysis.maps import map_correlation

    out = {"ari_between_runs": round(clustering_scores(np.array(b["labels"]), np.array(a["labels"]))["ari"], 4),
           "maps": {}}
    for i, (va, vb) in enumerate(zip(a["_volumes"], b["_volumes"], strict=True)):
        va64, vb64 = va.astype(np.float64), vb.astype(np.float64)
        out["maps"][i] = {"correlation": round(float(map_correlation(vb, va)), 4),
                          "amplitude_ratio": round(float((vb64 * va64).sum() / (va64 * va64).sum()), 4)}
    return out


def markdown(records: list[dict]) -> str:
    lines = ["| seed | variant | ARI vs truth (last epoch) | first epoch with ARI >= 0.9 | ARI of the last 5 epochs: "
             "mean (min-max) | ARI between the runs | per-state map CC to truth | per-state FSC=0.5 (A) | "
             "pre vs plain map CC (amplitude ratio) | s/epoch | wall s |", "|" + "---|" * 11]
    for rec in records:
        for v in VARIANTS:
            ev, tr = rec[v], rec[f"{v}_train"]
            last5 = list(ev["ari_by_epoch"].values())[-5:]
            tail5 = f"{np.mean(last5):.3f} ({min(last5):.3f}-{max(last5):.3f})"
            cc = ", ".join(f"{st}: {m['correlation']:.3f}" for st, m in ev["states"].items())
            res = ", ".join(f"{st}: {m['resolution_0.5_angstrom']:.1f}" if m["resolution_0.5_angstrom"] else
                            f"{st}: none" for st, m in ev["states"].items())
            between = f"{rec['comparison']['ari_between_runs']:.3f}" if v == "premultiplied" else ""
            pair = ", ".join(f"{st}: {m['correlation']:.3f} ({m['amplitude_ratio']:.2f})"
                             for st, m in rec["comparison"]["maps"].items()) if v == "premultiplied" else ""
            lines.append(f"| {rec['seed']} | {v} | {ev['ari']:.3f} | {ev['first_epoch_ari_0.9'] or 'never'} | "
                         f"{tail5} | {between} | {cc} | {res} | {pair} | {tr['seconds_per_epoch']} | "
                         f"{tr['wall_s']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="simulation seeds (default 0 1)")
    p.add_argument("--preset", default=SETTINGS["preset"], help="simulate-tilt preset (default tilt4)")
    p.add_argument("--n", type=int, default=SETTINGS["n"], help="particles (default 400)")
    p.add_argument("--box", type=int, default=SETTINGS["box"], help="box D (default 24; pixel size 256/D A)")
    p.add_argument("--snr", type=float, default=SETTINGS["snr"], help="SNR per tilt image (default 1)")
    p.add_argument("--tilt-max", type=float, default=SETTINGS["tilt_max"], help="largest tilt (default 15: 11 tilts)")
    p.add_argument("--epochs", type=int, default=SETTINGS["epochs"], help="epochs (default 40)")
    p.add_argument("-o", "--output", default=str(BENCH / "results" / "premultiplied_tilt.json"))
    p.add_argument("--table", action="store_true", help="print the table of the results in -o; run nothing")
    args = p.parse_args(argv)
    if args.table:
        print(markdown(json.loads(Path(args.output).read_text())["records"]))
        return 0
    s = dict(SETTINGS, preset=args.preset, n=args.n, box=args.box, snr=args.snr, tilt_max=args.tilt_max,
             epochs=args.epochs)
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    records = []
    for seed in args.seeds:
        rec: dict = {"seed": seed}
        sims = {}
        for v in VARIANTS:
            sims[v], rec[f"{v}_simulation"] = simulate(s, seed, v)
        rec["same_particles"] = same_particles(sims["plain"], sims["premultiplied"])
        if not rec["same_particles"]:
            raise RuntimeError(f"seed {seed}: the plain and premultiplied simulations differ in states or poses")
        k = int(len(np.unique(np.load(sims["plain"] / "labels.npz")["state"])))
        for v in VARIANTS:
            run, rec[f"{v}_train"] = train(sims[v], s, seed, v)
            rec[v] = evaluate(run, sims[v], k)
            print(f"seed {seed} {v}: ARI {rec[v]['ari']:.3f} (>= 0.9 from epoch {rec[v]['first_epoch_ari_0.9']}), "
                  f"wall {rec[f'{v}_train']['wall_s']:.0f} s", flush=True)
        rec["comparison"] = compare(rec["plain"], rec["premultiplied"])
        for v in VARIANTS:
            rec[v].pop("_volumes")
        records.append(rec)
        write_json(Path(args.output), {"settings": s, "started": started, "machine": machine_info(),
                                       "command": " ".join(sys.argv), "records": records})
    table = markdown(records)
    print(table)
    write_json(Path(args.output), {"settings": s, "started": started,
                                   "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                                   "machine": machine_info(), "command": " ".join(sys.argv), "records": records,
                                   "markdown": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
