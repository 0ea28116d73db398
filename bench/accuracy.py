"""Accuracy against simulation ground truth: cryoscape versus cryoDRGN 4.3.1, same data, architecture and epochs.

One command::

    .venv/bin/python -m bench.accuracy            # N=3000, 128x3 networks, 15 epochs, lr 1e-4
    .venv/bin/python -m bench.accuracy --n 3000 --epochs 20 --width 128 --lr 1e-3 \
        --programs cryoscape cryoscape-march cryodrgn # what bench/RESULTS.md section 3 records
    .venv/bin/python -m bench.accuracy --quick    # N=800, 64x3 networks, 5 epochs (a loaded 2-core machine)

Data: ``cryoscape simulate --preset P -D 64 --snr 0.1 --pkl`` (one data set per preset, used by both programs).
Cases and targets:

* ``linear1d`` zdim 1: |Spearman rho| of z against the true hinge coordinate >= 0.95;
* ``discrete3`` zdim 1 and zdim 8: accuracy of k-means(3) on z after the best matching of clusters to states
  (Hungarian) >= 0.99; plus the per-class map check: the map generated at each true class's mean latent must
  correlate best with that class's ground-truth map (the diagonal of the correlation matrix is the row maximum);
* ``homogeneous`` zdim 0 (cryoDRGN: ``train_nn``): FSC of the map against the ground truth >= 0.5 at every shell
  beyond 2/3 of Nyquist is the target as stated; the table reports the minimum FSC over shells from 2/3 Nyquist to
  Nyquist and the resolution at FSC 0.5. The presets' blob maps have no power beyond about half of Nyquist, so
  this case cannot test the target (both programs score ~0 there, FSC of noise against numerical zero);
* ``atomic`` zdim 0: the same target on a ground truth with power to Nyquist, a pseudo-atomic protein of packed
  alpha-helical bundles (``bench/pseudo_atomic.py``, ~28,000 atoms, radius 66 A) rendered by
  ``cryoscape simulate --pdb ... --apix 3 -D 64`` at Nyquist resolution (Chimera molmap widths), SNR 0.1.

``--programs cryoscape-march`` adds cryoscape runs with frequency marching (``--freq-march`` = ``--march-fraction``
x epochs; the training lattice radius grows from 1/4 of Nyquist to Nyquist over those epochs), so its accuracy
is measured on the same data and epochs as the full-lattice runs.

Both programs: Adam lr 1e-4, batch 32, gaussian PE (feat_sigma 0.5), fourier-domain decoder, beta = 1/zdim,
all particles trained (cryoscape ``--val-frac 0``), cryoscape in float32 (``--programs ... cryoscape-amp`` adds a
cryoscape --amp run of each case for comparison). cryoDRGN maps come from ``cryodrgn eval_vol`` at the same latents;
its volume axes are aligned to the ground truth once per case by choosing among identity / ``--flip`` / transpose /
both the one that correlates best with the ground truth (reported as ``orientation``). Metrics are cryoscape's
(``cryoscape.analysis.evaluate`` functions, the same as ``cryoscape evaluate``) for both programs.

Writes ``bench/results/accuracy[_quick].json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

from bench.common import (
    BENCH,
    CRYODRGN,
    WORK,
    TrainSpec,
    cryodrgn_epoch_seconds,
    ensure_simulation,
    machine_info,
    need_cryodrgn,
    run_timed,
    simulation_exists,
    tail,
    timed_train,
    write_json,
)

CASES = [("linear1d", 1), ("discrete3", 1), ("discrete3", 8), ("homogeneous", 0), ("atomic", 0)]
FULL = dict(n=3000, width=128, layers=3, epochs=15, batch=32)
QUICK = dict(n=800, width=64, layers=3, epochs=5, batch=32)


# ---------------------------------------------------------------------------------------------------------------
# training


def ensure_atomic_simulation(n: int, out: Path) -> Path:
    """The homogeneous case with power to Nyquist: the pseudo-atomic helical protein (``pseudo_atomic.py``, radius
    66 A) rendered at Nyquist resolution, D=64, 3 A/px, SNR 0.1, written with cryoDRGN pkl files."""
    if simulation_exists(out):
        return out
    from bench.pseudo_atomic import helical_protein, write_pdb

    out.mkdir(parents=True, exist_ok=True)
    pdb = write_pdb(out / "model.pdb", *helical_protein(66.0, seed=0))
    return ensure_simulation("atomic", n, 64, 0.1, out, source=["--pdb", str(pdb), "--apix", "3"])


def train_cryoscape(sim: Path, out: Path, zdim: int, s: dict, amp: bool = False, march: bool = False) -> dict:
    spec = TrainSpec(sim / "particles.star", out, zdim=zdim, enc_dim=s["width"], enc_layers=s["layers"],
                     dec_dim=s["width"], dec_layers=s["layers"], pe_type="gaussian", feat_sigma=0.5,
                     batch=s["batch"], epochs=s["epochs"], lr=s.get("lr", 1e-4), val_frac=0.0,
                     checkpoint_every=s["epochs"], amp=amp,
                     freq_march=s["march_fraction"] * s["epochs"] if march else None)
    res, rows = timed_train(spec)
    res["epoch_seconds"] = [round(r["seconds"], 2) for r in rows]
    return res


def train_cryodrgn(sim: Path, out: Path, zdim: int, s: dict) -> dict:
    common = ["--poses", str(sim / "pose.pkl"), "--ctf", str(sim / "ctf.pkl"), "-o", str(out),
              "--pe-type", "gaussian", "--feat-sigma", "0.5", "--domain", "fourier", "-b", str(s["batch"]),
              "-n", str(s["epochs"]), "--lr", str(s.get("lr", 1e-4)), "--checkpoint", str(s["epochs"])]
    if zdim == 0:
        cmd = [str(CRYODRGN), "train_nn", str(sim / "particles.mrcs"), *common, "--layers", str(s["layers"]),
               "--dim", str(s["width"])]
    else:
        cmd = [str(CRYODRGN), "train_vae", str(sim / "particles.mrcs"), *common, "--zdim", str(zdim),
               "--enc-dim", str(s["width"]), "--enc-layers", str(s["layers"]), "--dec-dim", str(s["width"]),
               "--dec-layers", str(s["layers"]), "--no-analysis", "--log-interval", "100000000"]
    res = run_timed(cmd, out.parent / f"{out.name}.log")
    secs = cryodrgn_epoch_seconds(Path(res["log"]).read_text(errors="replace"))
    res["epoch_seconds"] = [round(secs[e], 2) for e in sorted(secs)]
    return res


# ---------------------------------------------------------------------------------------------------------------
# volumes and latents of each program


class CryoscapeModel:
    def __init__(self, run: Path):
        from cryoscape.analysis.volume_space import load_generator

        self.gen = load_generator(run, None, "cpu")
        self.pixel_size_angstrom = float(self.gen.pixel_size_angstrom)
        self.run = run

    def latents(self) -> np.ndarray:
        from cryoscape.analysis.latent import load_latents

        return load_latents(self.run).z

    def generate_volumes(self, z, batch_size: int = 4) -> np.ndarray:
        return np.asarray(self.gen.generate_volumes(z, batch_size=batch_size), dtype=np.float32)


def _read_pickles(path: Path, n: int = 1) -> list:
    """The first ``n`` consecutive pickles of ``path`` (numpy only: cryoscape's restricted unpickler)."""
    from cryoscape.io.pkl import RestrictedUnpickler

    with open(path, "rb") as fh:
        return [RestrictedUnpickler(fh).load() for _ in range(n)]


ORIENTATIONS = {
    "identity": lambda v: v,
    "flip0": lambda v: v[::-1],
    "transpose": lambda v: v.transpose(2, 1, 0),
    "transpose+flip0": lambda v: v[::-1].transpose(2, 1, 0),
}


class CryodrgnModel:
    """Latents from ``z.E.pkl``; volumes by ``cryodrgn eval_vol`` (or ``reconstruct.E.mrc`` for train_nn)."""

    def __init__(self, run: Path, epochs: int, pixel_size: float, zdim: int):
        self.run, self.epochs, self.zdim = run, epochs, zdim
        self.pixel_size_angstrom = pixel_size
        self.orientation = "identity"
        self._calls = 0

    def latents(self) -> np.ndarray:
        return np.asarray(_read_pickles(self.run / f"z.{self.epochs}.pkl")[0], dtype=np.float32).reshape(-1, self.zdim)

    def raw_volumes(self, z) -> np.ndarray:
        from cryoscape.io.mrc import read_mrc

        if self.zdim == 0:
            return read_mrc(self.run / f"reconstruct.{self.epochs}.mrc")[0][None].astype(np.float32)
        z = np.asarray(z, dtype=np.float32).reshape(-1, self.zdim)
        self._calls += 1
        out = self.run / f"bench_vols_{self._calls}"
        if out.exists():
            shutil.rmtree(out)
        out.mkdir()
        np.savetxt(out / "z.txt", z)
        res = run_timed([str(CRYODRGN), "eval_vol", str(self.run / f"weights.{self.epochs}.pkl"), "-c",
                         str(self.run / "config.yaml"), "--zfile", str(out / "z.txt"), "-o", str(out),
                         "--Apix", str(self.pixel_size_angstrom)], out / "eval_vol.log")
        if res["returncode"] != 0:
            raise RuntimeError("cryodrgn eval_vol failed:\n" + tail(out / "eval_vol.log"))
        files = sorted(out.glob("vol_*.mrc"))
        return np.stack([read_mrc(f)[0] for f in files]).astype(np.float32)

    def generate_volumes(self, z, batch_size: int = 4) -> np.ndarray:
        vols = self.raw_volumes(z)
        f = ORIENTATIONS[self.orientation]
        return np.stack([np.ascontiguousarray(f(v)) for v in vols])


# ---------------------------------------------------------------------------------------------------------------
# metrics


def fsc_beyond(vol: np.ndarray, ref: np.ndarray, pixel_size: float) -> dict:
    """FSC of ``vol`` vs ``ref``: min over shells in [2/3 Nyquist, Nyquist), resolution at 0.5 and 0.143 (A)."""
    from cryoscape.analysis.fsc import fsc, resolution_at

    freqs, curve = fsc(vol, ref)
    sel = freqs >= (2 / 3) * 0.5
    return {"fsc_min_beyond_2/3_nyquist": float(curve[sel].min()),
            "fsc_mean_beyond_2/3_nyquist": float(curve[sel].mean()),
            "resolution_0.5_angstrom": resolution_at(freqs, curve, 0.5, pixel_size),
            "resolution_0.143_angstrom": resolution_at(freqs, curve, 0.143, pixel_size),
            "nyquist_angstrom": 2 * pixel_size, "fsc": [round(float(c), 4) for c in curve]}


def choose_orientation(model: CryodrgnModel, z_probe: np.ndarray | None, gt: np.ndarray) -> dict:
    """Pick the axis convention of cryoDRGN's maps that correlates best with the ground truth."""
    from cryoscape.analysis.maps import map_correlation

    vol = model.raw_volumes(z_probe)[0]
    scores = {name: float(map_correlation(np.ascontiguousarray(f(vol)), gt)) for name, f in ORIENTATIONS.items()}
    model.orientation = max(scores, key=scores.get)
    return scores


def evaluate(model, sim: Path, zdim: int) -> dict:
    from cryoscape.analysis.evaluate import (
        clustering_scores,
        continuous_correlation,
        map_scores,
        read_gt_maps,
        read_labels,
    )
    from cryoscape.analysis.latent import kmeans_on_data

    truth = read_labels(sim / "labels.npz")
    gt_maps, gt_apix = read_gt_maps(sim)
    out: dict = {}
    if zdim == 0:
        if isinstance(model, CryodrgnModel):
            out["orientation_scores"] = choose_orientation(model, None, gt_maps[min(gt_maps)])
            out["orientation"] = model.orientation
        vol = model.generate_volumes(None)[0]
        out["map"] = fsc_beyond(vol, gt_maps[min(gt_maps)], model.pixel_size_angstrom)
        from cryoscape.analysis.maps import map_correlation

        out["map"]["correlation"] = float(map_correlation(vol, gt_maps[min(gt_maps)]))
        return out
    z = model.latents()
    states = truth.get("state")
    if "coordinate" in truth and np.ptp(truth["coordinate"]) > 0:
        out["continuous"] = continuous_correlation(z, truth["coordinate"])
    if states is not None and len(np.unique(states)) > 1:
        k = len(np.unique(states))
        km = kmeans_on_data(z, k, seed=0)
        out["clustering"] = clustering_scores(km.labels, states)
        if k <= 3:  # the per-class map check (discrete presets)
            if isinstance(model, CryodrgnModel):
                s0 = int(np.unique(states)[0])
                probe = z[states == s0].mean(axis=0, keepdims=True)
                out["orientation_scores"] = choose_orientation(model, probe, gt_maps[s0])
                out["orientation"] = model.orientation
            ms = map_scores(model, z, states, gt_maps, gt_pixel_size_angstrom=gt_apix, batch_size=4)
            cm = np.asarray(ms["correlation_matrix"])
            rows, cols = ms["correlation_matrix_rows"], ms["map_states"]
            diag_best = all(int(np.argmax(cm[i])) == cols.index(s) for i, s in enumerate(rows))
            out["maps"] = {"correlation_matrix": cm.round(4).tolist(), "rows": rows, "columns": cols,
                           "each_class_map_best_matches_its_truth": bool(diag_best),
                           "fsc_0.5_angstrom": {str(s): v["resolution_0.5_angstrom"] for s, v in ms["states"].items()}}
    return out


def headline(case: str, zdim: int, ev: dict) -> tuple[str, float | None, bool | None]:
    """(metric name, value, target met) of a case."""
    if zdim == 0:
        v = ev.get("map", {}).get("fsc_min_beyond_2/3_nyquist")
        return "min FSC beyond 2/3 Nyquist (>= 0.5)", v, None if v is None else v >= 0.5
    if case == "linear1d":
        v = ev.get("continuous", {}).get("abs_spearman_pc1")
        return "|Spearman| z vs coordinate (>= 0.95)", v, None if v is None else v >= 0.95
    v = ev.get("clustering", {}).get("accuracy")
    return "k-means(3) accuracy (>= 0.99)", v, None if v is None else v >= 0.99


# ---------------------------------------------------------------------------------------------------------------


def run_case(case: str, zdim: int, program: str, s: dict, tag: str) -> dict:
    if case == "atomic":
        sim = ensure_atomic_simulation(s["n"], WORK / f"acc_{case}_N{s['n']}")
    else:
        sim = ensure_simulation(case, s["n"], 64, 0.1, WORK / f"acc_{case}_N{s['n']}")
    out = WORK / f"acc_runs{tag}" / f"{case}_z{zdim}_{program}"
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if program == "cryodrgn":
        res = train_cryodrgn(sim, out, zdim, s)
    else:
        res = train_cryoscape(sim, out, zdim, s, amp=program.endswith("amp"), march="march" in program)
    rec = {"case": case, "zdim": zdim, "program": program, "settings": s, **res}
    if res["returncode"] != 0:
        rec["error"] = tail(Path(res["log"]))
        return rec
    steady = res["epoch_seconds"][1:] or res["epoch_seconds"]
    rec["images_per_s"] = round(s["n"] / (sum(steady) / len(steady)), 2) if steady else None
    try:
        if program == "cryodrgn":
            from cryoscape.io.mrc import read_mrc

            apix = read_mrc(sim / "gt" / "state_000.mrc")[1].voxel_size_angstrom
            model = CryodrgnModel(out, s["epochs"], apix, zdim)
        else:
            model = CryoscapeModel(out)
        rec["evaluation"] = evaluate(model, sim, zdim)
    except Exception as exc:  # report and go on with the other cases
        rec["error"] = f"evaluation failed: {type(exc).__name__}: {exc}"
    name, value, ok = headline(case, zdim, rec.get("evaluation", {}))
    rec.update(metric=name, value=value, target_met=ok)
    return rec


def markdown(records: list[dict]) -> str:
    lines = ["| case | zdim | program | metric | value | target met | per-class maps OK | wall s | images/s | "
             "peak RSS MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        maps = r.get("evaluation", {}).get("maps", {}).get("each_class_map_best_matches_its_truth", "-")
        v = r.get("value")
        lines.append(f"| {r['case']} | {r['zdim']} | {r['program']} | {r.get('metric', '-')} | "
                     f"{'-' if v is None else f'{v:.3f}'} | {r.get('target_met', '-')} | {maps} | {r['wall_s']:.0f} | "
                     f"{r.get('images_per_s') or '-'} | {r.get('peak_rss_mib') or '-'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="N=800, 64-wide networks, 5 epochs")
    p.add_argument("--cases", nargs="+", help="subset, e.g. linear1d:1 discrete3:8 homogeneous:0")
    p.add_argument("--programs", nargs="+", default=["cryoscape", "cryodrgn"],
                   help="cryoscape, cryoscape-amp, cryoscape-march (frequency marching), cryodrgn "
                        "(default cryoscape cryodrgn)")
    p.add_argument("--march-fraction", type=float, default=0.75,
                   help="cryoscape-march: --freq-march = this fraction of the epochs (default 0.75)")
    p.add_argument("--n", type=int, help="override the number of particles")
    p.add_argument("--epochs", type=int, help="override the number of epochs")
    p.add_argument("--width", type=int, help="override the network width")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate of both programs (default 1e-4)")
    p.add_argument("-o", "--output", help="JSON output (default bench/results/accuracy[_quick].json)")
    args = p.parse_args(argv)
    s = dict(QUICK if args.quick else FULL, lr=args.lr, march_fraction=args.march_fraction)
    for key in ("n", "epochs", "width"):
        if getattr(args, key):
            s[key] = getattr(args, key)
    cases = CASES if not args.cases else [(c.split(":")[0], int(c.split(":")[1])) for c in args.cases]
    programs = [pr for pr in args.programs if pr != "cryodrgn" or need_cryodrgn()]
    tag = "_quick" if args.quick else ""
    output = Path(args.output or BENCH / "results" / f"accuracy{tag}.json")
    result = {"command": " ".join(sys.argv), "machine": machine_info(), "settings": s, "records": []}
    if output.is_file():  # keep the records of other cases/programs written by an earlier invocation
        import json

        old = json.loads(output.read_text())
        keep = {(c, z, pr) for c, z in cases for pr in programs}
        result["records"] = [r for r in old.get("records", []) if (r["case"], r["zdim"], r["program"]) not in keep]
    for case, zdim in cases:
        for program in programs:
            rec = run_case(case, zdim, program, s, tag)
            result["records"].append(rec)
            print(f"{case} zdim {zdim} {program}: {rec.get('metric')} = {rec.get('value')} "
                  f"(target met: {rec.get('target_met')}), wall {rec['wall_s']} s, {rec.get('images_per_s')} img/s"
                  + (f"\n  ERROR {rec['error']}" if "error" in rec else ""), flush=True)
            write_json(output, result)
    print(markdown(result["records"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
