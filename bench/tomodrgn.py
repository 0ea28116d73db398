"""tomoDRGN family: accuracy on simulated tilt series, the single-particle control, n = 1 tilt sampling, masking.

One command::

    .venv/bin/python -m bench.tomodrgn            # the issue's setting: D=64, 41 tilts, SNR 0.05; N=500, 8 epochs
    .venv/bin/python -m bench.tomodrgn --quick    # N=160, 4 epochs; masking on 16 particles (15-20 min, 2 cores)
    .venv/bin/python -m bench.tomodrgn --parts masking --hom-n 32    # one part, other records of -o are kept

Data (``cryoscape simulate-tilt``; every box spans the same 256 A, so the pixel size is 256/D A):

* ``--preset tilt4`` (four compositionally different states, equal populations) with ``-D 64 --apix 4 --snr 0.05``
  and 41 tilts (dose-symmetric, 3 degree steps to +-60, 3 e/A^2 per tilt), for the parts ``accuracy``, ``control``
  and ``n1``;
* ``--preset homogeneous`` (one state) at D=64 (4 A/px) and D=128 (2 A/px), same tilts and SNR, for ``masking``.

Parts and what each reports:

* ``accuracy``: ``cryoscape train --model tomodrgn`` (concatenate pooling, tilt sampling n = all 41 tilts, dose and
  tilt weighting and the exposure mask on: the defaults), zdim 8. k-means(4) of the particle latents against the
  true states: adjusted Rand index (target >= 0.9), Hungarian-matched accuracy, the ARI for k-means seeds 0-9 and
  after every epoch; the maps at the 4 on-data k-means centres (``cryoscape.analysis.evaluate.map_scores``, as
  ``cryoscape evaluate``) against the ground truth of the state each centre is matched to: FSC (resolution at 0.5
  and 0.143, AUC), correlation, and whether every centre's map correlates best with its own state's truth.
* ``control`` (the paper's Extended Data Fig. 7): ``cryoscape train --model cryodrgn`` on the same tilt images
  treated as independent particles (41 x N images, same encoder/decoder widths, zdim, learning rate and epochs;
  batch 40 images, the paper's cryoDRGN batch). The input is the simulator's image-series STAR with
  ``rlnCtfBfactor = 0`` and ``rlnCtfScalefactor = 1`` (``particles_independent.star``): cryoDRGN's ctf.pkl carries
  neither, and read as RELION CTF columns Warp's ``B = -4 x exposure`` would *amplify* high frequencies by
  ``exp(N s^2)``. The exposure filter and cos(tilt) in the images stay unmodelled, as for cryoDRGN in the paper.
  ARI three ways: **per particle by majority vote** (the headline: k-means(4) on all image latents, each particle
  gets the most frequent cluster of its images), per image (each image against its particle's state, the paper's
  measure), and per particle on the mean latent of its images; plus the maps at the image k-means centres.
* ``n1``: as ``accuracy`` with ``--ntilts 1`` (one random tilt per particle per step; latents from one fixed
  tilt): the paper's collapse with a single sampled tilt.
* ``masking``: homogeneous reconstructions (``--zdim 0``, decoder 256x3, batch 1 particle, lr 2e-4: the paper's
  Table 1 setting) with and without the exposure lattice mask (``--no-dose-mask``) at D=64 and D=128: training
  seconds per epoch (``metrics.csv``; epochs after the first when there are several), the time ratio
  no-mask / mask (the paper: about 2x at D=128, 3.7x at D=256, 1.2x at D=64 and 6.55 A/px), peak RSS, and the FSC
  of the map against the ground truth (resolution at 0.5 and 0.143, AUC, correlation; no mask).

Common settings: encoder A and B 128x3, per-tilt embedding 32, decoder 128x3 (gaussian features, sigma 0.5),
zdim 8, beta 1/zdim, AdamW lr 5e-4, tomodrgn batch 4 particles, all particles trained (``--val-frac 0``), latents
written after every epoch (encoder pass only; not in the epoch seconds), float32.

Per run the JSON records the command, wall seconds, peak RSS (``/usr/bin/time -v``), load averages, seconds of
every epoch and the metrics; the simulations' wall times are recorded too. Writes
``bench/results/tomodrgn[_quick].json`` and prints Markdown tables ("none" in a resolution cell: the FSC is below
the threshold already at the first shell). Work folders: ``bench/_work/tomo_*`` (simulations are reused).

Run time on the 2-core CPU (estimated from epoch timings at N=4-16, D=64/128, 41 tilts): full about 1 h (accuracy
~14 min, control ~23 min, n1 ~1 min, masking ~14 min, simulations and evaluation ~5 min); quick about 15 min.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from bench.common import BENCH, CRYOSCAPE_CMD, WORK, TrainSpec, machine_info, run_timed, tail, timed_train, write_json

PARTS = ("accuracy", "control", "n1", "masking")
FIELD_OF_VIEW_ANGSTROM = 256.0  # box x pixel size of every simulation: D=64 -> 4 A/px, D=128 -> 2 A/px
TILT_STEP = 3.0
FULL = dict(n=500, epochs=8, control_epochs=None, tilts=41, box=64, snr=0.05, seed=0, zdim=8, enc_dim=128,
            enc_layers=3, dec_dim=128, dec_layers=3, tilt_embed_dim=32, batch=4, lr=5e-4, control_batch=40,
            hom_n=48, hom_epochs=2, hom_boxes=[64, 128], hom_dec_dim=256, hom_dec_layers=3, hom_batch=1,
            hom_lr=2e-4)
QUICK = dict(FULL, n=160, epochs=4, hom_n=16)
ARI_TARGET = 0.9
KMEANS_SEEDS = range(10)


# ---------------------------------------------------------------------------------------------------------------
# data


def tilt_max(tilts: int) -> float:
    """Largest stage tilt of the dose-symmetric scheme with ``tilts`` (odd) tilts in TILT_STEP degree steps."""
    if tilts < 1 or tilts % 2 == 0:
        raise SystemExit(f"--tilts must be odd (0, +-3, +-6, ... degrees), got {tilts}")
    return (tilts - 1) // 2 * TILT_STEP


def simulate(preset: str, n: int, D: int, tilts: int, snr: float, seed: int, sims: list) -> Path:
    """``cryoscape simulate-tilt`` into ``bench/_work/tomo_sim_...`` unless it is already complete there."""
    out = WORK / f"tomo_sim_{preset}_D{D}_N{n}_T{tilts}_snr{snr:g}_s{seed}"
    if all((out / f).is_file() for f in ("particles.star", "particles.mrcs", "labels.npz")):
        return out
    if out.exists():
        shutil.rmtree(out)
    cmd = [*CRYOSCAPE_CMD, "simulate-tilt", "--preset", preset, "-N", n, "-D", D, "--apix", FIELD_OF_VIEW_ANGSTROM / D,
           "--snr", snr, "--tilt-max", tilt_max(tilts), "--tilt-step", TILT_STEP, "--seed", seed, "-o", out]
    print("$", " ".join(map(str, cmd)), flush=True)
    res = run_timed(cmd, WORK / f"{out.name}.log")
    sims.append({"preset": preset, "n": n, "D": D, "tilts": tilts, "snr": snr, **res})
    if res["returncode"] != 0:
        raise RuntimeError("simulate-tilt failed:\n" + tail(Path(res["log"])))
    return out


def independent_star(sim: Path) -> Path:
    """The image-series STAR with rlnCtfBfactor = 0 and rlnCtfScalefactor = 1, for the cryodrgn-family control."""
    import starfile

    out = sim / "particles_independent.star"
    if out.is_file():
        return out
    blocks = starfile.read(sim / "particles.star", always_dict=True)
    key = next(k for k, v in blocks.items() if hasattr(v, "columns") and "rlnImageName" in v.columns)
    table = blocks[key]
    table["rlnCtfBfactor"] = 0.0
    table["rlnCtfScalefactor"] = 1.0
    tmp = out.with_name(out.name + ".tmp.star")
    starfile.write(blocks, tmp, float_format="%.6f")
    tmp.rename(out)
    return out


def image_particles(sim: Path) -> np.ndarray:
    """Particle index (labels.npz order) of every row of the image-series STAR (``rlnGroupName``, first appearance).

    Checked against the simulator's layout (images written particle by particle, ``n_tilts`` each).
    """
    import pandas as pd
    import starfile

    blocks = starfile.read(sim / "particles.star", always_dict=True)
    table = next(v for v in blocks.values() if hasattr(v, "columns") and "rlnGroupName" in v.columns)
    codes = pd.factorize(table["rlnGroupName"])[0].astype(np.int64)
    with np.load(sim / "labels.npz") as lab:
        expected = np.repeat(np.arange(len(lab["n_tilts"])), lab["n_tilts"])
    if codes.shape != expected.shape or not np.array_equal(codes, expected):
        raise RuntimeError(f"{sim}/particles.star: image rows are not grouped particle by particle as expected")
    return codes


# ---------------------------------------------------------------------------------------------------------------
# training


def train(star: Path, out: Path, model: str, zdim: int, s: dict, *, epochs: int, batch: int, lr: float,
          dec_dim: int, dec_layers: int, checkpoint_every: int, extra: list | None = None) -> dict:
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tilt_embed = ["--tilt-embed-dim", str(s["tilt_embed_dim"])] if model == "tomodrgn" and zdim > 0 else []
    spec = TrainSpec(star, out, model=model, zdim=zdim, dec_dim=dec_dim, dec_layers=dec_layers, batch=batch,
                     epochs=epochs, lr=lr, val_frac=0.0, seed=s["seed"], checkpoint_every=checkpoint_every,
                     enc_dim=s["enc_dim"] if zdim > 0 else None, enc_layers=s["enc_layers"] if zdim > 0 else None,
                     extra=[*tilt_embed, *(str(e) for e in extra or [])])
    res, rows = timed_train(spec)
    res["epoch_seconds"] = [round(r["seconds"], 3) for r in rows]
    steady = res["epoch_seconds"][1:] or res["epoch_seconds"]
    res["seconds_per_epoch"] = round(float(np.mean(steady)), 3) if steady else None
    res["final_train_loss"] = rows[-1].get("train_loss") if rows else None
    return res


# ---------------------------------------------------------------------------------------------------------------
# evaluation


def kmeans_ari(z: np.ndarray, truth: np.ndarray, seed: int = 0) -> float:
    from cryoscape.analysis.evaluate import clustering_scores
    from cryoscape.analysis.latent import kmeans_on_data

    return clustering_scores(kmeans_on_data(z, len(np.unique(truth)), seed=seed).labels, truth)["ari"]


def majority_per_particle(labels: np.ndarray, particle: np.ndarray, n_particles: int) -> np.ndarray:
    """The most frequent label of each particle's images (ties: the smaller label)."""
    k = int(labels.max()) + 1
    counts = np.zeros((n_particles, k), np.int64)
    np.add.at(counts, (particle, labels), 1)
    return counts.argmax(axis=1)


def mean_per_particle(z: np.ndarray, particle: np.ndarray, n_particles: int) -> np.ndarray:
    sums = np.zeros((n_particles, z.shape[1]), np.float64)
    np.add.at(sums, particle, z)
    return (sums / np.bincount(particle, minlength=n_particles)[:, None]).astype(np.float32)


def control_scores(z: np.ndarray, particle: np.ndarray, states: np.ndarray, seed: int) -> dict:
    """ARI of the image latents ``z`` (rows = images) per particle (majority, mean latent) and per image."""
    from cryoscape.analysis.evaluate import clustering_scores
    from cryoscape.analysis.latent import kmeans_on_data

    n, k = len(states), len(np.unique(states))
    img_labels = kmeans_on_data(z, k, seed=seed).labels
    majority = majority_per_particle(img_labels, particle, n)
    zmean = mean_per_particle(z, particle, n)
    return {"ari_per_particle_majority": clustering_scores(majority, states)["ari"],
            "accuracy_per_particle_majority": clustering_scores(majority, states)["accuracy"],
            "ari_per_image": clustering_scores(img_labels, states[particle])["ari"],
            "ari_per_particle_mean_latent": kmeans_ari(zmean, states, seed)}


def summarize_maps(maps: dict) -> dict:
    """Per k-means centre: matched state, FSC resolutions, correlation; and the 'maps match their truth' check."""
    cols = [int(c) for c in maps["map_states"]]
    cmat = np.asarray(maps["center_correlation_matrix"], dtype=np.float64)
    centres, best_ok = {}, True
    for c, m in maps["centers"].items():
        best = cols[int(np.nanargmax(cmat[int(c)]))]
        best_ok &= best == int(m["state"])
        centres[str(c)] = {"state": int(m["state"]), "best_correlating_truth": best,
                           "resolution_0.5_angstrom": m["resolution_0.5_angstrom"],
                           "resolution_0.143_angstrom": m["resolution_0.143_angstrom"],
                           "fsc_auc": m["fsc_auc"], "correlation": m["correlation"]}
    matched = sorted(v["state"] for v in centres.values())
    return {"centres": centres, "every_state_has_one_centre": matched == cols,
            "each_centre_map_best_matches_its_state": bool(best_ok),
            "center_correlation_matrix": cmat.round(4).tolist(), "map_states": cols}


def evaluate_vae(run: Path, sim: Path, seed: int, particle: np.ndarray | None = None) -> dict:
    """ARI per epoch and at the last epoch (k-means seeds 0-9), maps at the k-means centres (last epoch).

    ``particle``: for a run whose items are tilt images (the control), the particle of every image.
    """
    from cryoscape.analysis.evaluate import evaluate_run, read_gt_maps, read_labels
    from cryoscape.analysis.latent import load_latents
    from cryoscape.analysis.volume_space import load_generator
    from cryoscape.rundir import RunDir

    states = read_labels(sim / "labels.npz")["state"]
    item_states = states if particle is None else states[particle]
    epochs = RunDir(run).latent_epochs()
    if not epochs:
        raise RuntimeError(f"{run}: no latents written")
    last = epochs[-1]
    out: dict = {"epoch": last, "ari_by_epoch": {}}
    for e in epochs:
        lat = load_latents(run, e)
        idx = lat.indices if lat.indices is not None else np.arange(len(lat.z))
        if particle is None:
            out["ari_by_epoch"][e] = kmeans_ari(lat.z, states[idx], seed)
        else:
            if not np.array_equal(idx, np.arange(len(particle))):
                raise RuntimeError(f"{run}: the control's latents do not cover every image in order")
            out["ari_by_epoch"][e] = control_scores(lat.z, particle, states, seed)["ari_per_particle_majority"]
    lat = load_latents(run, last)
    idx = lat.indices if lat.indices is not None else np.arange(len(lat.z))
    if particle is None:
        per_seed = [kmeans_ari(lat.z, states[idx], sd) for sd in KMEANS_SEEDS]
    else:
        out["control"] = control_scores(lat.z, particle, states, seed)
        per_seed = [control_scores(lat.z, particle, states, sd)["ari_per_particle_majority"] for sd in KMEANS_SEEDS]
    out["ari_kmeans_seeds"] = {"min": min(per_seed), "median": float(np.median(per_seed)), "max": max(per_seed),
                               "values": per_seed}
    gt_maps, gt_apix = read_gt_maps(sim)
    generator = load_generator(run, last, "auto")
    ev = evaluate_run(run, {"state": item_states}, gt_maps, generator=generator, epoch=last, seed=seed,
                      batch_size=4, gt_pixel_size_angstrom=gt_apix)
    out["clustering"] = {k: ev["clustering"][k] for k in ("ari", "accuracy", "confusion", "matching")}
    out["entropy_mean"] = ev["entropy"]["mean"]
    out["maps"] = summarize_maps(ev["maps"])
    out["maps"]["state_mean_latent_resolution_0.5_angstrom"] = {
        s: m["resolution_0.5_angstrom"] for s, m in ev["maps"]["states"].items()}
    if particle is None:
        out["ari"], out["accuracy"] = ev["clustering"]["ari"], ev["clustering"]["accuracy"]
    else:  # the headline of the control: per particle, majority vote of its images' clusters
        out["ari"] = out["control"]["ari_per_particle_majority"]
        out["accuracy"] = out["control"]["accuracy_per_particle_majority"]
    return out


def evaluate_homogeneous(run: Path, sim: Path) -> dict:
    from cryoscape.analysis.evaluate import read_gt_maps
    from cryoscape.analysis.fsc import fsc, fsc_auc, resolution_at
    from cryoscape.analysis.maps import map_correlation
    from cryoscape.analysis.volume_space import load_generator

    gt_maps, _ = read_gt_maps(sim)
    gen = load_generator(run, None, "auto")
    vol = np.asarray(gen.generate_volumes(None)[0], dtype=np.float32)
    ref = gt_maps[min(gt_maps)]
    apix = float(gen.pixel_size_angstrom)
    freqs, curve = fsc(vol, ref)
    return {"resolution_0.5_angstrom": resolution_at(freqs, curve, 0.5, apix),
            "resolution_0.143_angstrom": resolution_at(freqs, curve, 0.143, apix), "fsc_auc": fsc_auc(curve),
            "correlation": float(map_correlation(vol, ref)), "nyquist_angstrom": 2 * apix,
            "fsc": [round(float(c), 4) for c in curve]}


# ---------------------------------------------------------------------------------------------------------------
# parts


def run_vae_part(part: str, sim: Path, s: dict, tag: str) -> dict:
    runs = WORK / f"tomo_runs{tag}"
    name = {"accuracy": "tomodrgn_z8", "n1": "tomodrgn_z8_ntilts1", "control": "cryodrgn_images_z8"}[part]
    rec: dict = {"part": part, "name": name}
    if part == "control":
        epochs = s["control_epochs"] or s["epochs"]
        rec.update(model="cryodrgn", items="tilt images", n_items=None)
        res = train(independent_star(sim), runs / name, "cryodrgn", s["zdim"], s, epochs=epochs,
                    batch=s["control_batch"], lr=s["lr"], dec_dim=s["dec_dim"], dec_layers=s["dec_layers"],
                    checkpoint_every=1)
    else:
        epochs = s["epochs"]
        rec.update(model="tomodrgn", items="particles", pooling="concatenate",
                   ntilts=1 if part == "n1" else s["tilts"])
        res = train(sim / "particles.star", runs / name, "tomodrgn", s["zdim"], s, epochs=epochs, batch=s["batch"],
                    lr=s["lr"], dec_dim=s["dec_dim"], dec_layers=s["dec_layers"], checkpoint_every=1,
                    extra=["--ntilts", "1"] if part == "n1" else None)
    rec.update(epochs=epochs, **res)
    if res["returncode"] != 0:
        rec["error"] = tail(Path(res["log"]))
        return rec
    n_particles = int(np.load(sim / "labels.npz")["state"].size)
    rec["particles_per_s"] = round(n_particles / res["seconds_per_epoch"], 3) if res["seconds_per_epoch"] else None
    try:
        particle = image_particles(sim) if part == "control" else None
        if particle is not None:
            rec["n_items"] = int(particle.size)
        rec["evaluation"] = evaluate_vae(runs / name, sim, s["seed"], particle)
        rec["ari"] = rec["evaluation"]["ari"]
        if part == "accuracy":
            rec["target"] = f"ARI >= {ARI_TARGET}"
            rec["target_met"] = bool(rec["ari"] >= ARI_TARGET)
    except Exception as exc:  # report and go on with the other parts
        rec["error"] = f"evaluation failed: {type(exc).__name__}: {exc}"
    return rec


def run_masking(sims: dict, s: dict, tag: str) -> list[dict]:
    recs = []
    for D in s["hom_boxes"]:
        for mask in (True, False):
            name = f"homogeneous_D{D}_{'mask' if mask else 'nomask'}"
            rec: dict = {"part": "masking", "name": name, "model": "tomodrgn", "D": D,
                         "pixel_size_angstrom": FIELD_OF_VIEW_ANGSTROM / D, "exposure_mask": mask,
                         "epochs": s["hom_epochs"], "n_particles": s["hom_n"]}
            res = train(sims[D] / "particles.star", WORK / f"tomo_runs{tag}" / name, "tomodrgn", 0, s,
                        epochs=s["hom_epochs"], batch=s["hom_batch"], lr=s["hom_lr"], dec_dim=s["hom_dec_dim"],
                        dec_layers=s["hom_dec_layers"], checkpoint_every=s["hom_epochs"],
                        extra=None if mask else ["--no-dose-mask"])
            rec.update(res)
            if res["returncode"] != 0:
                rec["error"] = tail(Path(res["log"]))
            else:
                rec["particles_per_s"] = round(s["hom_n"] / res["seconds_per_epoch"], 3)
                try:
                    rec["evaluation"] = evaluate_homogeneous(WORK / f"tomo_runs{tag}" / name, sims[D])
                except Exception as exc:
                    rec["error"] = f"evaluation failed: {type(exc).__name__}: {exc}"
            recs.append(rec)
            print(f"masking D={D} mask={mask}: {rec.get('seconds_per_epoch')} s/epoch, FSC0.5 "
                  f"{rec.get('evaluation', {}).get('resolution_0.5_angstrom')} A, wall {rec['wall_s']} s"
                  + (f"\n  ERROR {rec['error']}" if "error" in rec else ""), flush=True)
    by = {(r["D"], r["exposure_mask"]): r for r in recs}
    for D in s["hom_boxes"]:
        a, b = by.get((D, True), {}), by.get((D, False), {})
        if a.get("seconds_per_epoch") and b.get("seconds_per_epoch"):
            a["time_ratio_nomask_over_mask"] = round(b["seconds_per_epoch"] / a["seconds_per_epoch"], 3)
    return recs


# ---------------------------------------------------------------------------------------------------------------
# output


def _f(x, spec=".3f", none="-") -> str:
    return none if x is None else format(x, spec)


def markdown(records: list[dict]) -> str:
    het = [r for r in records if r["part"] != "masking"]
    hom = [r for r in records if r["part"] == "masking"]
    lines = []
    if het:
        lines += ["| part | model (items) | epochs | ARI | ARI seeds 0-9 min-max | matched acc. | centre maps match "
                  "truth | FSC=0.5 of centre maps per state (A) | other ARIs | s/epoch | wall s | peak RSS MiB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in het:
            ev = r.get("evaluation", {})
            seeds = ev.get("ari_kmeans_seeds", {})
            maps = ev.get("maps", {})
            res = ", ".join(f"{c['state']}: {_f(c['resolution_0.5_angstrom'], '.1f', 'none')}"
                            for c in sorted(maps.get("centres", {}).values(), key=lambda c: c["state"]))
            ok = (maps.get("each_centre_map_best_matches_its_state") and maps.get("every_state_has_one_centre")) \
                if maps else None
            other = ""
            if "control" in ev:
                c = ev["control"]
                other = (f"per image {_f(c['ari_per_image'])}; mean latent "
                         f"{_f(c['ari_per_particle_mean_latent'])}")
            elif r["part"] == "n1":
                other = "ntilts 1"
            ari = "ERROR" if "error" in r else _f(r.get("ari"))
            lines.append(f"| {r['part']} | {r['model']} ({r['items']}) | {r['epochs']} | {ari} | "
                         f"{_f(seeds.get('min'))} to {_f(seeds.get('max'))} | {_f(ev.get('accuracy'))} | "
                         f"{'-' if ok is None else ok} | {res or '-'} | {other or '-'} | "
                         f"{_f(r.get('seconds_per_epoch'), '.1f')} | {r['wall_s']:.0f} | "
                         f"{r.get('peak_rss_mib') or '-'} |")
    if hom:
        lines += ["", "| D | A/px | exposure mask | s/epoch | particles/s | no-mask / mask time | FSC=0.5 (A) | "
                  "FSC=0.143 (A) | FSC AUC | CC | wall s | peak RSS MiB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in hom:
            ev = r.get("evaluation", {})
            mask = ("on" if r["exposure_mask"] else "off") + (" (ERROR)" if "error" in r else "")
            lines.append(f"| {r['D']} | {r['pixel_size_angstrom']:g} | {mask} | "
                         f"{_f(r.get('seconds_per_epoch'), '.2f')} | {_f(r.get('particles_per_s'), '.3f')} | "
                         f"{_f(r.get('time_ratio_nomask_over_mask'), '.2f')} | "
                         f"{_f(ev.get('resolution_0.5_angstrom'), '.1f', 'none')} | "
                         f"{_f(ev.get('resolution_0.143_angstrom'), '.1f', 'none')} | {_f(ev.get('fsc_auc'))} | "
                         f"{_f(ev.get('correlation'))} | {r['wall_s']:.0f} | {r.get('peak_rss_mib') or '-'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="N=160, 4 epochs, masking on 16 particles")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="default: all")
    p.add_argument("--n", type=int, help="tilt4 particles (default 500; quick 160)")
    p.add_argument("--epochs", type=int, help="epochs of accuracy, n1 and control (default 8; quick 4)")
    p.add_argument("--control-epochs", type=int, help="epochs of the control (default: --epochs)")
    p.add_argument("--tilts", type=int, help="tilts per particle, odd (default 41: 0, +-3, ..., +-60 degrees)")
    p.add_argument("--box", type=int, help="tilt4 box D (default 64; pixel size 256/D A)")
    p.add_argument("--snr", type=float, help="SNR per tilt image (default 0.05)")
    p.add_argument("--batch", type=int, help="tomodrgn particles per batch (default 4)")
    p.add_argument("--lr", type=float, help="learning rate of accuracy, n1 and control (default 5e-4)")
    p.add_argument("--hom-n", type=int, help="particles of each masking run (default 48; quick 16)")
    p.add_argument("--hom-epochs", type=int, help="epochs of each masking run (default 2)")
    p.add_argument("--hom-boxes", type=int, nargs="+", help="boxes of the masking runs (default 64 128)")
    p.add_argument("-o", "--output", help="JSON output (default bench/results/tomodrgn[_quick].json)")
    args = p.parse_args(argv)
    s = dict(QUICK if args.quick else FULL)
    for key in ("n", "epochs", "control_epochs", "tilts", "box", "snr", "batch", "lr", "hom_n", "hom_epochs",
                "hom_boxes"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    tilt_max(s["tilts"])
    tag = "_quick" if args.quick else ""
    output = Path(args.output or BENCH / "results" / f"tomodrgn{tag}.json")
    result = {"command": " ".join(sys.argv), "machine": machine_info(), "settings": s,
              "field_of_view_angstrom": FIELD_OF_VIEW_ANGSTROM, "simulations": [], "records": []}
    if output.is_file():  # keep the records of the other parts written by an earlier invocation
        old = json.loads(output.read_text())
        result["records"] = [r for r in old.get("records", []) if r["part"] not in args.parts]
        result["simulations"] = old.get("simulations", [])
        result["data"] = old.get("data", {})
    sims: list = result["simulations"]
    vae_parts = [pt for pt in ("accuracy", "control", "n1") if pt in args.parts]
    if vae_parts:
        sim = simulate("tilt4", s["n"], s["box"], s["tilts"], s["snr"], s["seed"], sims)
        result.setdefault("data", {})["tilt4"] = str(sim)
        write_json(output, result)
        for part in vae_parts:
            rec = run_vae_part(part, sim, s, tag)
            result["records"].append(rec)
            print(f"{part} ({rec['model']}): ARI {rec.get('ari')}, {rec.get('seconds_per_epoch')} s/epoch, "
                  f"wall {rec['wall_s']} s" + (f"\n  ERROR {rec['error']}" if "error" in rec else ""), flush=True)
            write_json(output, result)
    if "masking" in args.parts:
        hsims = {D: simulate("homogeneous", s["hom_n"], D, s["tilts"], s["snr"], s["seed"], sims)
                 for D in s["hom_boxes"]}
        result.setdefault("data", {}).update({f"homogeneous_D{D}": str(v) for D, v in hsims.items()})
        write_json(output, result)
        result["records"] += run_masking(hsims, s, tag)
        write_json(output, result)
    order = {pt: i for i, pt in enumerate(PARTS)}
    result["records"].sort(key=lambda r: order[r["part"]])
    write_json(output, result)
    print(markdown(result["records"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
