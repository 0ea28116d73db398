"""Per-epoch learning of the cryodrgn family vs cryoDRGN 4.3.1 on atomic-model data, and its ablation (issue 21).

Data: ``bench/atomic_states.py`` (a real atomic model with compositional states, or a continuous hinge). Both
programs train on the same .mrcs/STAR + pose.pkl/ctf.pkl with the same architecture, batch, learning rate and
epochs; the latents after every ``--every`` epochs are scored against the ground truth by the same code: k-means(k)
ARI (k = number of states; ``--metric ari``) or |Spearman| of a 1-D latent against the hinge coordinate
(``--metric spearman``; the labels, ``labels.npz`` of ``cryoscape simulate``, are read from the data folder).

Settings: by default both programs get the same architecture, positional encoding, batch, learning rate and (for
cryoscape) ``--val-frac 0``; ``--defaults`` passes only the data, ``--zdim``, ``--epochs``, ``--seed``, the
checkpoint interval and one thread, so that each program trains with its own defaults (any of ``--width``,
``--layers``, ``--batch``, ``--lr``, ``--val-frac`` given explicitly is still passed).

One run per call (so that at most two trainings run at once on a shared machine, each with one torch thread):

    .venv/bin/python bench/recipe.py run --data bench/_work/i21/a3 --program cryodrgn --tag cd_s0
    .venv/bin/python bench/recipe.py run --data bench/_work/i21/a3 --program cryoscape --variant norm --tag cs_norm
    .venv/bin/python bench/recipe.py table bench/results/recipe_a3.json
    .venv/bin/python bench/recipe.py run --data bench/_work/i21/adk --program cryodrgn --tag cd_adk_def \
        --metric spearman --zdim 1 --defaults --width 128 --layers 3

Variants of cryoscape (each switches ONE of cryoscape's choices to cryoDRGN 4.3.1's, read in its installed
source; applied to this process only, by patching before the CLI runs):

* ``base``: cryoscape as it is (``--val-frac`` as given).
* ``split_init``: cryoscape before the fix of issue 21 (the decoder's split first layer initialised part by part,
  each with its own fan-in); ``split_init,norm`` etc. are the ablations relative to that code.
* ``norm``: the data normalisation: the std of the centred Hartley transforms of up to 1000 raw images, evenly
  spaced, **unwindowed, uncentred by their origin, over the full (D+1)^2 symmetrised square** (cryoDRGN
  ``ImageDataset.estimate_normalization``), instead of the std of the prepared (windowed, centred) pixels inside
  the circle.
* ``init``: the decoder's first layer initialised as one ``nn.Linear(6 pe_dim + zdim, hidden)`` (cryoDRGN's
  concatenated input) instead of two layers (coordinates, latent) each with its own fan-in.
* ``pe_seed``: another draw of the random Gaussian positional-encoding frequencies (cryoscape fixes seed 0).
* ``edge``: the lattice of loss/encoder pixels |k| <= D/2 (cryoDRGN's circular mask) instead of |k| < D/2.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CRYOSCAPE = ROOT / ".venv" / "bin" / "cryoscape"
CRYODRGN = HERE / "cryodrgn-venv" / "bin" / "cryodrgn"
VARIANTS = ("base", "split_init", "norm", "init", "pe_seed", "edge", "no_dc", "cd_data", "pe_run_seed")
# the equal settings of both programs (used unless --defaults)
EQUAL = {"width": 128, "layers": 3, "batch": 32, "lr": 1e-3, "val_frac": 0.0}
_CRYODRGN_EPOCH = re.compile(r"=====> Epoch: \d+ .*Finished in (\d+):(\d\d):(\d\d(?:\.\d+)?)")


# ---------------------------------------------------------------------------------------------------------------
# scoring


def score(z: np.ndarray, labels: dict, metric: str) -> float:
    from scipy.stats import spearmanr
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    z = np.asarray(z, dtype=np.float64).reshape(len(z), -1)
    key = "state" if metric == "ari" else "coordinate"
    if key not in labels:
        raise SystemExit(f"--metric {metric}: labels.npz has no '{key}' array")
    if metric == "ari":
        k = int(len(np.unique(labels["state"])))
        pred = KMeans(k, n_init=10, random_state=0).fit_predict(z)
        return float(adjusted_rand_score(labels["state"], pred))
    return float(abs(spearmanr(z[:, 0], labels["coordinate"]).statistic))


def cryoscape_latents(run: Path, epoch: int) -> np.ndarray | None:
    """Latents of every particle after ``epoch`` (rows in particle order; None when absent)."""
    p = run / "latents" / f"epoch_{epoch:03d}.npy"
    return np.load(p) if p.is_file() else None


def cryodrgn_latents(run: Path, epoch: int, last: int) -> np.ndarray | None:
    for p in [run / f"z.{epoch}.pkl"] + ([run / "z.pkl"] if epoch == last else []):
        if p.is_file():
            with open(p, "rb") as fh:
                return np.asarray(pickle.load(fh))
    return None


# ---------------------------------------------------------------------------------------------------------------
# cryoscape variants (patches of this process only)


def apply_variant(variant: str) -> None:
    """Apply the comma-separated ``variant`` patches (e.g. ``split_init,norm``)."""
    for v in variant.split(","):
        _apply_one(v)


def _pe_draw(draw_seed: int) -> None:
    """Make every PositionalEncoding of this process draw its Gaussian frequencies with ``draw_seed``."""
    from cryoscape.models import positional

    orig = positional.PositionalEncoding.__init__

    def init(self, pe_type, D, pe_dim=None, feat_sigma=0.5, seed=0):
        orig(self, pe_type, D, pe_dim, feat_sigma, seed=draw_seed)

    positional.PositionalEncoding.__init__ = init


def _apply_one(variant: str) -> None:
    if variant in ("base",):
        return
    if variant == "split_init":
        # cryoscape before the fix of issue 21: each part of the split first layer with its own fan-in
        from cryoscape.models import decoders

        def own_fan_in(self):
            self.input_coords.reset_parameters()
            self.input_latent.reset_parameters()

        decoders.CoordinateDecoder.init_as_one_layer = own_fan_in
        return
    if variant == "norm":
        from cryoscape.data import particle_data

        def cryodrgn_norm(self) -> float:
            n = len(self)
            idx = np.arange(0, n, max(1, n // min(n, 1000)))
            imgs = np.asarray(self.particles.images[idx], dtype=np.float64)
            f = np.fft.fftshift(np.fft.fft2(np.fft.fftshift(imgs, axes=(-2, -1))), axes=(-2, -1))
            ht = f.real - f.imag
            D = ht.shape[-1]
            sym = np.empty((len(ht), D + 1, D + 1))
            sym[:, :-1, :-1] = ht
            sym[:, -1, :] = sym[:, 0, :]
            sym[:, :, -1] = sym[:, :, 0]
            sym[:, -1, -1] = sym[:, 0, 0]
            return float(sym.std())

        particle_data.SliceParticleData._estimate_norm = cryodrgn_norm
        return
    if variant == "init":
        import math

        import torch

        from cryoscape.models import decoders

        orig = decoders.CoordinateDecoder.__init__

        def init(self, *a, **k):
            orig(self, *a, **k)
            if self.input_latent is None:
                return
            bound = 1.0 / math.sqrt(self.input_coords.in_features + self.input_latent.in_features)
            with torch.no_grad():
                for t in (self.input_coords.weight, self.input_coords.bias, self.input_latent.weight):
                    t.uniform_(-bound, bound)

        decoders.CoordinateDecoder.__init__ = init
        return
    if variant == "pe_seed":  # another fixed Gaussian PE draw (cryoscape draws with generator seed 0)
        _pe_draw(12345)
        return
    if variant == "pe_run_seed":  # a draw per run, from the run's --seed, as cryoDRGN draws from its seed
        _pe_draw(1000 + (int(sys.argv[sys.argv.index("--seed") + 1]) if "--seed" in sys.argv else 0))
        return
    if variant == "edge":
        from cryoscape.data import fourier_pixels

        orig_create = fourier_pixels.FourierPixels.create.__func__

        def create(cls, D, radius_px=None):
            return orig_create(cls, D, D / 2 + 1e-3 if radius_px is None else radius_px)

        fourier_pixels.FourierPixels.create = classmethod(create)
        return
    if variant == "no_dc":
        # cryoDRGN's lattice leaves the DC pixel out of the encoder's input and the loss (Lattice ignore_DC):
        # zero it in the prepared images (the encoder then gets nothing from it, the decoder learns 0 there)
        from cryoscape.data import particle_data

        orig_prepare = particle_data.SliceParticleData._prepare

        def prepare(self, indices):
            out = orig_prepare(self, indices)
            out[..., self.pixels.n_pixels - 1] = 0.0  # [half, mates, DC] order: DC is last
            return out

        particle_data.SliceParticleData._prepare = prepare
        return
    if variant == "cd_data":
        # train on exactly the images cryoDRGN trains on: its prepared, centred, normalised images in cryoscape's
        # pixel order (bench/step_xcheck.py export; path and cryoDRGN's constant from the environment)
        import torch

        from cryoscape.data import particle_data

        path, norm = os.environ["RECIPE_CD_IMAGES"], float(os.environ["RECIPE_CD_NORM"])

        def init_values(self, norm_std, progress):
            self.norm_std = norm
            self.values = torch.from_numpy(np.load(path))
            assert self.values.shape == (len(self), self.pixels.n_pixels), self.values.shape

        particle_data.SliceParticleData._init_values = init_values
        return
    raise SystemExit(f"unknown variant {variant}")


# ---------------------------------------------------------------------------------------------------------------
# runs


def resolve_settings(a) -> None:
    """Fill the settings not given with the equal settings (``EQUAL``), unless ``--defaults``."""
    for k, v in EQUAL.items():
        if getattr(a, k) is None and not a.defaults:
            setattr(a, k, v)


def common_settings(a) -> dict:
    """The settings passed (None: the program's default)."""
    return {"zdim": a.zdim, "width": a.width, "layers": a.layers, "batch": a.batch, "lr": a.lr, "epochs": a.epochs,
            "every": a.every, "seed": a.seed, "defaults": a.defaults}


def _given(pairs) -> list[str]:
    """The options whose value is not None."""
    return [x for opt, v in pairs if v is not None for x in (opt, str(v))]


def _arch(a) -> list:
    return [("--enc-dim", a.width), ("--enc-layers", a.layers), ("--dec-dim", a.width), ("--dec-layers", a.layers)]


def train_cryoscape_args(data: Path, out: Path, a) -> list[str]:
    pe = [] if a.defaults else ["--pe-type", "gaussian", "--feat-sigma", "0.5"]
    args = (["train", str(data / "particles.star"), "-o", str(out), "--zdim", str(a.zdim)] + _given(_arch(a)) + pe
            + _given([("-b", a.batch)]) + ["-n", str(a.epochs)]
            + _given([("--lr", a.lr), ("--val-frac", a.val_frac)])
            + ["--checkpoint-every", str(a.every), "--seed", str(a.seed), "--threads", "1", "--no-progress"])
    return args + list(a.extra or [])


def train_cryodrgn_cmd(data: Path, out: Path, a) -> list[str]:
    pe = [] if a.defaults else ["--pe-type", "gaussian", "--feat-sigma", "0.5", "--domain", "fourier"]
    return ([str(CRYODRGN), "train_vae", str(data / "particles.mrcs"), "--poses", str(data / "pose.pkl"), "--ctf",
             str(data / "ctf.pkl"), "-o", str(out), "--zdim", str(a.zdim)] + _given(_arch(a)) + pe
            + _given([("-b", a.batch)]) + ["-n", str(a.epochs)] + _given([("--lr", a.lr)])
            + ["--checkpoint", str(a.every), "--seed", str(a.seed), "--no-analysis", "--log-interval", "100000000"]
            + list(a.extra or []))


def cmd_run(a) -> int:
    resolve_settings(a)
    data = Path(a.data)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    out = work / a.tag
    log = work / f"{a.tag}.log"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.time()
    load0 = os.getloadavg()
    if a.program == "cryodrgn":
        cmd = train_cryodrgn_cmd(data, out, a)
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "_cryoscape", "--variant", a.variant, "--",
               *train_cryoscape_args(data, out, a)]
    with open(log, "w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False).returncode
    wall = time.time() - t0
    labels = dict(np.load(data / "labels.npz"))
    scores = {}
    for e in range(a.every, a.epochs + 1, a.every):
        z = cryoscape_latents(out, e) if a.program == "cryoscape" else cryodrgn_latents(out, e, a.epochs)
        scores[e] = None if z is None else round(score(z, labels, a.metric), 4)
    epoch_s = []
    if a.program == "cryoscape" and (out / "metrics.csv").is_file():
        with open(out / "metrics.csv") as fh:
            epoch_s = [round(float(row["seconds"]), 1) for row in csv.DictReader(fh)]
    elif a.program == "cryodrgn":
        epoch_s = [round(int(h) * 3600 + int(m) * 60 + float(s), 1)
                   for h, m, s in _CRYODRGN_EPOCH.findall(log.read_text(errors="replace"))]
    val_frac = ("default" if a.val_frac is None else a.val_frac) if a.program == "cryoscape" else 0.0
    rec = {"tag": a.tag, "program": a.program, "variant": a.variant if a.program == "cryoscape" else "-",
           "val_frac": val_frac, "data": str(data), "metric": a.metric,
           "settings": common_settings(a), "extra": a.extra or [], "scores": scores, "returncode": rc,
           "wall_s": round(wall, 1), "epoch_seconds": epoch_s, "load_before": load0, "load_after": os.getloadavg(),
           "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t0)), "cmd": " ".join(cmd)}
    res_path = Path(a.results)
    res_path.parent.mkdir(parents=True, exist_ok=True)
    records = json.loads(res_path.read_text()) if res_path.is_file() else []
    records = [r for r in records if r["tag"] != a.tag] + [rec]
    tmp = res_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=1) + "\n")
    os.replace(tmp, res_path)
    print(json.dumps({k: rec[k] for k in ("tag", "scores", "returncode", "wall_s")}))
    return rc


def cmd_cryoscape(a) -> int:
    apply_variant(a.variant)
    from cryoscape.cli.main import main

    return int(main(a.rest) or 0)


def cmd_table(a) -> int:
    records = json.loads(Path(a.results).read_text())
    epochs = sorted({int(e) for r in records for e in r["scores"]})
    head = ("| run | program | variant | val-frac | seed | " + " | ".join(f"ep {e}" for e in epochs)
            + " | s/epoch (median) |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in records:
        s = [r["scores"].get(str(e)) for e in epochs]
        med = float(np.median(r["epoch_seconds"])) if r["epoch_seconds"] else float("nan")
        print(f"| {r['tag']} | {r['program']} | {r['variant']} | {r['val_frac']} | {r['settings']['seed']} | "
              + " | ".join("-" if v is None else f"{v:.3f}" for v in s) + f" | {med:.1f} |")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--data", required=True)
    r.add_argument("--program", choices=["cryoscape", "cryodrgn"], required=True)
    r.add_argument("--variant", default="base", help="comma-separated of: " + ", ".join(VARIANTS))
    r.add_argument("--tag", required=True)
    r.add_argument("--work", default=str(HERE / "_work" / "recipe"))
    r.add_argument("--results", default=str(HERE / "results" / "recipe.json"))
    r.add_argument("--metric", choices=["ari", "spearman"], default="ari")
    r.add_argument("--zdim", type=int, default=8)
    r.add_argument("--defaults", action="store_true",
                   help="each program's own default settings (only the options given here are passed)")
    r.add_argument("--width", type=int, default=None, help="default 128 (with --defaults: the program's)")
    r.add_argument("--layers", type=int, default=None, help="default 3 (with --defaults: the program's)")
    r.add_argument("--batch", type=int, default=None, help="default 32 (with --defaults: the program's)")
    r.add_argument("--lr", type=float, default=None, help="default 1e-3 (with --defaults: the program's)")
    r.add_argument("--epochs", type=int, default=20)
    r.add_argument("--every", type=int, default=5)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--val-frac", type=float, default=None, help="cryoscape: default 0 (with --defaults: its own)")
    r.add_argument("--extra", nargs=argparse.REMAINDER, help="more options for the program's train command")
    c = sub.add_parser("_cryoscape")
    c.add_argument("--variant", default="base")
    c.add_argument("rest", nargs=argparse.REMAINDER)
    t = sub.add_parser("table")
    t.add_argument("results")
    a = ap.parse_args(argv)
    if a.cmd == "_cryoscape" and a.rest and a.rest[0] == "--":
        a.rest = a.rest[1:]
    return {"run": cmd_run, "_cryoscape": cmd_cryoscape, "table": cmd_table}[a.cmd](a)


if __name__ == "__main__":
    raise SystemExit(main())
