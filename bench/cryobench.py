"""A small CryoBench-like benchmark (issue 19): an atomic-model hinge motion, cryoscape's decoder maps against its
latent-neighbour reconstructions, scored with the CryoBench metrics (docs/metrics.md).

Stages (run from the repository root; each writes under ``--work``, default ``bench/_work/cryobench``):

* ``prepare``: a synthetic protein-like model (bench/pseudo_atomic.py's ideal helix bundles: a body, chain A,
  and an arm, chain B, joined at a hinge), then ``cryoscape simulate --pdb MODEL --move B --hinge-axis ...``
  (50 conformations over -40..40 degrees by default);
* ``train``: ``cryoscape train`` (cryoDRGN family) on it, one thread;
* ``score``: ``cryoscape evaluate`` (decoder maps: per-image and per-conformation AU-FSC, neighbourhood
  similarity, ARI, Spearman) and the per-image / per-conformation AU-FSC of latent-neighbour reconstructions
  (``cryoscape.analysis.neighbour_recon``) at the same sampled images; writes ``summary.json``;
* ``baselines``: the consensus map and the latent-neighbour maps at the TRUE coordinate (oracle);
* ``recon``: the latent-neighbour maps alone, with the current rule (``--no-local``: one neighbourhood choice
  for the whole box, the rule of section 10b), at cryoscape's latents, at cryoDRGN's (when ``WORK/cryodrgn``
  has them) and at the true coordinate (oracle), the same sampled images; added to ``summary.json`` under
  ``recon_rules`` (``local`` or ``whole_box``), with the variable region's size and its overlap with the truth's;
* ``score-cryodrgn``: cryoDRGN 4.3.1's run in ``WORK/cryodrgn`` (trained on ``sim/`` by ``bench/recipe.py run
  --program cryodrgn --tag cryodrgn --work WORK``; ``prepare`` writes the pose.pkl / ctf.pkl it needs): its
  decoder maps (``cryodrgn eval_vol``) at the same sampled images and state means, its latent metrics, and
  latent-neighbour maps at its latents; added to ``summary.json``.

The issue's scale (bench/RESULTS.md section 10b) trains both programs with ``bench/recipe.py`` at equal settings
into ``WORK/run`` (cryoscape, ``--tag run``) and ``WORK/cryodrgn``, then runs ``score``, ``baselines`` and
``score-cryodrgn``.

    .venv/bin/python -m bench.cryobench prepare -N 3000 -D 32 --apix 4 --snr 0.1
    .venv/bin/python -m bench.cryobench train --epochs 20
    .venv/bin/python -m bench.cryobench score --n-images 100
    .venv/bin/python -m bench.cryobench baselines   # consensus map, oracle-latent neighbour maps
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import CRYODRGN, CRYOSCAPE_CMD, WORK, machine_info, run_timed, write_json
from bench.pseudo_atomic import RESIDUE_ATOMS, _rotation, bundle_atoms

DEFAULT_WORK = WORK / "cryobench"
BODY_RADIUS, ARM_RADIUS, ARM_OFFSET = 22.0, 15.0, 37.0  # Angstrom; the arm's centre sits at +x
HINGE = [[ARM_OFFSET - ARM_RADIUS, 0.0, -10.0], [ARM_OFFSET - ARM_RADIUS, 0.0, 10.0]]  # axis along z at the join


def write_model(path: Path, seed: int = 0) -> Path:
    """A body (chain A, one helix bundle at the origin) and an arm (chain B, a smaller bundle at +x)."""
    rng = np.random.default_rng(seed)
    body, el_a = bundle_atoms(BODY_RADIUS, rng)
    arm, el_b = bundle_atoms(ARM_RADIUS, rng)
    body = body @ _rotation(rng).T
    arm = arm @ _rotation(rng).T + np.array([ARM_OFFSET, 0.0, 0.0])
    lines, k = [], 0
    for chain, xyz, elements in (("A", body, el_a), ("B", arm, el_b)):
        for i, ((x, y, z), el) in enumerate(zip(xyz, elements, strict=True)):
            res = i // len(RESIDUE_ATOMS) + 1
            name = {"N": " N  ", "C": " C  ", "O": " O  "}[el]
            k += 1
            lines.append(f"ATOM  {k % 100000:5d} {name} ALA {chain}{res % 9999:4d}    "
                         f"{x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00          {el:>2s}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\nEND\n")
    return path


def prepare(a) -> None:
    work = Path(a.work)
    model = write_model(work / "model.pdb", a.seed)
    hinge = [str(v) for p in HINGE for v in p]
    cmd = [*CRYOSCAPE_CMD, "simulate", "--pdb", str(model), "--move", "B", "--hinge-axis", *hinge,
           "--angles", str(-a.angle), str(a.angle), "--n-conformations", str(a.n_conformations),
           "-N", str(a.n), "-D", str(a.box), "--apix", str(a.apix), "--snr", str(a.snr), "--seed", str(a.seed),
           "--device", "cpu", "-o", str(work / "sim"), "--overwrite", "--pkl", "--field", str(a.field)]
    info = run_timed(cmd, work / "simulate.log")
    write_json(work / "prepare.json", {"command": cmd, **info})
    print(json.dumps(info))


def train(a) -> None:
    work = Path(a.work)
    cmd = [*CRYOSCAPE_CMD, "train", str(work / "sim" / "particles.star"), "-o", str(work / "run"),
           "--zdim", str(a.zdim), "-n", str(a.epochs), "--enc-dim", str(a.dim), "--dec-dim", str(a.dim),
           "--threads", "1", "--device", "cpu", "--no-progress", "--seed", "0"]
    info = run_timed(cmd, work / "train.log")
    write_json(work / "train.json", {"command": cmd, **info})
    print(json.dumps(info))


def _scored(work: Path):
    """A scored work folder's run, simulation, ``summary.json``, latents (and their particle rows), the true states and
    coordinate of those rows, and the true maps with their voxel size."""
    from cryoscape.analysis.evaluate import read_gt_maps
    from cryoscape.analysis.latent import load_latents

    run, sim = work / "run", work / "sim"
    summary = json.loads((work / "summary.json").read_text())
    latents = load_latents(run)
    truth = np.load(sim / "labels.npz")
    idx = latents.indices if latents.indices is not None else np.arange(len(latents.z))
    states, coordinate = truth["state"][idx], truth["coordinate"][idx].astype(np.float64)
    gt, gt_apix = read_gt_maps(sim)
    return run, sim, summary, latents, idx, states, coordinate, gt, gt_apix


def baselines(a) -> None:
    """References for the score: the consensus map (all particles back-projected) and latent-neighbour maps with
    the TRUE coordinate as the latent (an oracle: the best the neighbour rule can do with perfect latents), at the
    same sampled images; then the latent metrics again with the evaluator's current defaults (``--no-maps``)."""
    import torch

    from cryoscape.analysis.backprojection import backproject
    from cryoscape.analysis.evaluate import _state_masks, au_fsc, per_image_au_fsc
    from cryoscape.analysis.neighbour_recon import NeighbourReconstructor, reconstructor_from_run

    torch.set_num_threads(1)
    work = Path(a.work)
    run, sim, summary, latents, idx, states, coordinate, gt, gt_apix = _scored(work)
    rec = reconstructor_from_run(run, latents.epoch, max_neighbours=a.max_neighbours, oversample=1, device="cpu")
    t0 = time.time()
    cons = backproject(rec.images, rec.rotations, rec.shifts_px, rec.ctf, rec.pixel_size_angstrom, oversample=1,
                       progress=False, device="cpu")["volume"]
    masks = _state_masks(gt, rec.pixel_size_angstrom, "auto")
    sample = json.loads((work / "eval_decoder.json").read_text())["cryobench"]["per_image_au_fsc"]["indices"]
    vals = [au_fsc(cons, gt[int(states[i])], masks[int(states[i])]) for i in sample]
    t1 = time.time()
    oracle = NeighbourReconstructor(coordinate[:, None], rec.images, rec.rotations, rec.shifts_px, rec.ctf,
                                    rec.pixel_size_angstrom, max_neighbours=a.max_neighbours, oversample=1,
                                    device="cpu")
    orc = per_image_au_fsc(oracle, coordinate[:, None], states, gt, n_images=a.n_images, seed=0,
                           gt_pixel_size_angstrom=gt_apix)
    t2 = time.time()
    assert orc["indices"] == sample
    cmd = [*CRYOSCAPE_CMD, "evaluate", str(run), "--truth", str(sim), "-o", str(work / "eval_latent.json"),
           "--overwrite", "--no-maps", "--device", "cpu"]
    run_timed(cmd, work / "evaluate_latent.log")
    latent = json.loads((work / "eval_latent.json").read_text())
    summary["baselines"] = {
        "consensus_per_image_au_fsc": {"mean": float(np.mean(vals)), "std": float(np.std(vals)),
                                       "seconds": t1 - t0},
        "oracle_latent_neighbour_per_image_au_fsc": {k: orc[k] for k in ("mean", "std", "median", "n_images")},
        "oracle_seconds": t2 - t1,
    }
    summary["latent_metrics_current_defaults"] = {"command": cmd,
                                                  "neighborhood_similarity":
                                                  latent["cryobench"]["neighborhood_similarity"],
                                                  "ari": latent["clustering"]["ari"],
                                                  "abs_spearman_pc1": latent["continuous"]["abs_spearman_pc1"]}
    write_json(work / "summary.json", summary)
    print(json.dumps(summary["baselines"]), json.dumps(summary["latent_metrics_current_defaults"]))


class CryoDRGNMaps:
    """cryoDRGN 4.3.1's decoder maps at given latents (``cryodrgn eval_vol --zfile``, run in its own venv), with the
    interface of :func:`cryoscape.analysis.evaluate.per_image_au_fsc`'s generators."""

    def __init__(self, run: Path, epoch: int, pixel_size_angstrom: float, log: Path):
        self.weights = run / f"weights.{epoch}.pkl" if (run / f"weights.{epoch}.pkl").is_file() else run / "weights.pkl"
        self.config = run / "config.yaml"
        self.pixel_size_angstrom = float(pixel_size_angstrom)
        self.log = log
        self.seconds = 0.0
        self.n_maps = 0

    def generate_volumes(self, z, batch_size: int = 8):
        import subprocess
        import tempfile

        import mrcfile

        z = np.asarray(z, dtype=np.float64).reshape(len(z), -1)
        with tempfile.TemporaryDirectory() as tmp:
            zfile = Path(tmp) / "z.txt"
            np.savetxt(zfile, z)
            cmd = [str(CRYODRGN), "eval_vol", str(self.weights), "-c", str(self.config), "--zfile", str(zfile),
                   "-o", str(Path(tmp) / "vols"), "--Apix", str(self.pixel_size_angstrom)]
            t0 = time.time()
            with open(self.log, "a") as fh:
                subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=True,
                               env=dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"))
            self.seconds += time.time() - t0
            paths = sorted((Path(tmp) / "vols").glob("vol_*.mrc"))
            if len(paths) != len(z):
                raise RuntimeError(f"cryodrgn eval_vol wrote {len(paths)} maps for {len(z)} latents")
            vols = []
            for path in paths:
                with mrcfile.open(path, permissive=True) as m:
                    vols.append(np.asarray(m.data, dtype=np.float32))
        self.n_maps += len(z)
        return np.stack(vols)


def score_cryodrgn(a) -> None:
    """cryoDRGN 4.3.1's run (``WORK/cryodrgn``, trained by ``bench/recipe.py``): its decoder maps at the same sampled
    images and at each state's mean latent, its latent metrics, and latent-neighbour reconstructions at ITS latents
    (the re-estimation applied to cryoDRGN's latent space); added to ``summary.json`` under ``cryodrgn``."""
    import pickle

    import torch

    from cryoscape.analysis.evaluate import (
        _jsonable,
        cryobench_metrics,
        evaluate_latents,
        per_conformation_au_fsc,
        per_image_au_fsc,
        read_gt_maps,
    )
    from cryoscape.analysis.latent import load_latents
    from cryoscape.analysis.neighbour_recon import NeighbourReconstructor, reconstructor_from_run

    torch.set_num_threads(1)
    work = Path(a.work)
    run, cd_run, sim = work / "run", work / "cryodrgn", work / "sim"
    summary = json.loads((work / "summary.json").read_text())
    zpath = cd_run / f"z.{a.epoch}.pkl" if (cd_run / f"z.{a.epoch}.pkl").is_file() else cd_run / "z.pkl"
    with open(zpath, "rb") as fh:
        z = np.asarray(pickle.load(fh), dtype=np.float64)
    truth = dict(np.load(sim / "labels.npz"))
    states = truth["state"]
    if len(z) != len(states):
        raise SystemExit(f"{zpath}: {len(z)} latents for {len(states)} particles")
    gt, gt_apix = read_gt_maps(sim)
    cd = CryoDRGNMaps(cd_run, a.epoch, gt_apix, work / "cryodrgn_eval_vol.log")
    img = per_image_au_fsc(cd, z, states, gt, n_images=a.n_images, seed=0, batch_size=a.n_images,
                           gt_pixel_size_angstrom=gt_apix)
    conf = per_conformation_au_fsc(cd, z, states, gt, batch_size=64, gt_pixel_size_angstrom=gt_apix)
    decoder = json.loads((work / "eval_decoder.json").read_text())
    same = img["indices"] == decoder["cryobench"]["per_image_au_fsc"]["indices"]
    latent = evaluate_latents(z, truth)
    latent.pop("_kmeans", None)
    latent["neighborhood_similarity"] = cryobench_metrics(z, truth)["neighborhood_similarity"]
    # latent-neighbour reconstruction at cryoDRGN's latents: the same images and poses as cryoscape's run
    cs_latents = load_latents(run)
    if cs_latents.indices is not None and not np.array_equal(cs_latents.indices, np.arange(len(states))):
        raise SystemExit("cryoscape's run did not train every particle in file order")
    rec = reconstructor_from_run(run, cs_latents.epoch, max_neighbours=a.max_neighbours, oversample=1, device="cpu")
    t0 = time.time()
    cd_rec = NeighbourReconstructor(z, rec.images, rec.rotations, rec.shifts_px, rec.ctf, rec.pixel_size_angstrom,
                                    max_neighbours=a.max_neighbours, oversample=1, device="cpu")
    rec_img = per_image_au_fsc(cd_rec, z, states, gt, n_images=a.n_images, seed=0, gt_pixel_size_angstrom=gt_apix)
    rec_conf = per_conformation_au_fsc(cd_rec, z, states, gt, gt_pixel_size_angstrom=gt_apix)
    t1 = time.time()
    for d in (img, rec_img):
        d.pop("values", None)
        d.pop("indices", None)
    summary = json.loads((work / "summary.json").read_text())  # re-read: a recon stage may have written meanwhile
    summary["cryodrgn"] = {
        "run": str(cd_run), "z": str(zpath), "weights": str(cd.weights), "same_sampled_images": same,
        "decoder": {"per_image_au_fsc": img, "per_conformation_au_fsc": conf,
                    "eval_vol_seconds": cd.seconds, "n_maps": cd.n_maps},
        "latent": _jsonable(latent),
        "reconstruction": {"per_image_au_fsc": rec_img, "per_conformation_au_fsc": rec_conf,
                           "max_neighbours": a.max_neighbours, "oversample": 1, "seconds": t1 - t0},
    }
    write_json(work / "summary.json", summary)
    print(f"cryoDRGN decoder: per image {img['mean']:.4f}, per conformation {conf['mean']:.4f}")
    print(f"cryoDRGN latent-neighbour: per image {rec_img['mean']:.4f}, per conformation {rec_conf['mean']:.4f}")
    print(json.dumps(summary["cryodrgn"]["latent"])[:2000])


def recon(a) -> None:
    """Latent-neighbour maps only, with the current rule (``local``) or ``--no-local``, at three latent spaces."""
    import pickle

    import torch

    from cryoscape.analysis.evaluate import per_conformation_au_fsc, per_image_au_fsc
    from cryoscape.analysis.neighbour_recon import NeighbourReconstructor, reconstructor_from_run

    torch.set_num_threads(1)
    work = Path(a.work)
    run, sim, summary, latents, idx, states, coordinate, gt, gt_apix = _scored(work)
    cd_run = work / "cryodrgn"
    truth = np.load(sim / "labels.npz")
    base = reconstructor_from_run(run, latents.epoch, max_neighbours=a.max_neighbours, oversample=a.oversample,
                                  device="cpu", local=a.local)
    spaces = {"cryoscape": latents.z.astype(np.float64), "oracle": coordinate[:, None]}
    zpath = cd_run / f"z.{a.epoch}.pkl"
    if zpath.is_file() and np.array_equal(idx, np.arange(len(truth["state"]))):
        with open(zpath, "rb") as fh:
            spaces["cryodrgn"] = np.asarray(pickle.load(fh), dtype=np.float64)
    sample = json.loads((work / "eval_decoder.json").read_text())["cryobench"]["per_image_au_fsc"]["indices"]
    vols = np.stack([gt[s] for s in sorted(gt)])
    sd = vols.std(axis=0)
    true_region = sd > 0.1 * sd.max()  # where the true maps differ (for the overlap only)
    out = {"max_neighbours": a.max_neighbours, "oversample": a.oversample, "local": a.local}
    if a.spaces:
        spaces = {k: v for k, v in spaces.items() if k in a.spaces}
    for name, z in spaces.items():
        t0 = time.time()
        rec = NeighbourReconstructor(z, base.images, base.rotations, base.shifts_px, base.ctf,
                                     base.pixel_size_angstrom, max_neighbours=a.max_neighbours,
                                     oversample=a.oversample, device="cpu", local=a.local)
        region = rec.variable_region()
        t1 = time.time()
        img = per_image_au_fsc(rec, z, states, gt, n_images=a.n_images, seed=0, gt_pixel_size_angstrom=gt_apix)
        assert img["indices"] == sample
        t2 = time.time()
        conf = per_conformation_au_fsc(rec, z, states, gt, gt_pixel_size_angstrom=gt_apix)
        for d in (img,):
            d.pop("values", None)
            d.pop("indices", None)
        entry = {"per_image_au_fsc": img, "per_conformation_au_fsc": {k: conf[k] for k in ("mean", "n_states")},
                 "seconds_region": t1 - t0, "seconds_per_image_map": (t2 - t1) / img["n_images"]}
        if region is not None:
            entry["variable_region"] = {
                "fraction_of_box": float(np.mean(region > 0.5)),
                "true_region_fraction_of_box": float(true_region.mean()),
                "share_of_true_region_covered": float(np.mean(region[true_region] > 0.5))}
        out[name] = entry
        print(name, json.dumps({"per_image": img["mean"], "per_conformation": conf["mean"],
                                **entry.get("variable_region", {})}), flush=True)
    key = ("local" if a.local else "whole_box") + ("" if a.oversample == 1 else f"_oversample{a.oversample}")
    # re-read: other stages (or a recon of other --spaces) may have written meanwhile; merge this one's spaces in
    summary = json.loads((work / "summary.json").read_text())
    summary.setdefault("recon_rules", {}).setdefault(key, {}).update(out)
    write_json(work / "summary.json", summary)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="stage", required=True)
    pp = sub.add_parser("prepare")
    pp.add_argument("-N", "--n", type=int, default=3000)
    pp.add_argument("-D", "--box", type=int, default=32)
    pp.add_argument("--apix", type=float, default=4.0)
    pp.add_argument("--snr", type=float, default=0.1)
    pp.add_argument("--angle", type=float, default=40.0, help="the arm turns over -ANGLE..ANGLE degrees")
    pp.add_argument("--n-conformations", type=int, default=50)
    pp.add_argument("--seed", type=int, default=0)
    pp.add_argument("--field", type=int, default=1,
                    help="simulate --field: images cut from a field FIELD boxes wide (default 1: circular CTF)")
    pt = sub.add_parser("train")
    pt.add_argument("--epochs", type=int, default=20)
    pt.add_argument("--zdim", type=int, default=8)
    pt.add_argument("--dim", type=int, default=256, help="encoder and decoder width (3 layers each)")
    ps = sub.add_parser("score")
    ps.add_argument("--n-images", type=int, default=100)
    ps.add_argument("--max-neighbours", type=int, default=1500)
    pb = sub.add_parser("baselines")
    pb.add_argument("--n-images", type=int, default=100)
    pb.add_argument("--max-neighbours", type=int, default=1500)
    pc = sub.add_parser("score-cryodrgn")
    pc.add_argument("--epoch", type=int, default=20, help="cryoDRGN's epoch to score (its z.EPOCH.pkl)")
    pc.add_argument("--n-images", type=int, default=100)
    pc.add_argument("--max-neighbours", type=int, default=1500)
    pr = sub.add_parser("recon")
    pr.add_argument("--n-images", type=int, default=100)
    pr.add_argument("--max-neighbours", type=int, default=2000)
    pr.add_argument("--epoch", type=int, default=20, help="cryoDRGN's epoch (its z.EPOCH.pkl)")
    pr.add_argument("--no-local", dest="local", action="store_false")
    pr.add_argument("--oversample", type=int, choices=(1, 2), default=1,
                    help="back-projection padding (default 1, as sections 10b-10c; the commands' default is 2)")
    pr.add_argument("--spaces", nargs="+", choices=("cryoscape", "oracle", "cryodrgn"),
                    help="latent spaces to score (default all available)")
    for q in (pp, pt, ps, pb, pc, pr):
        q.add_argument("--work", default=str(DEFAULT_WORK))
    a = p.parse_args(argv)
    {"prepare": prepare, "train": train, "score": score, "baselines": baselines,
     "score-cryodrgn": score_cryodrgn, "recon": recon}[a.stage](a)
    return 0


def score(a) -> None:
    """Decoder maps (``cryoscape evaluate``) and latent-neighbour maps at the same sampled images."""
    import torch

    from cryoscape.analysis.evaluate import per_conformation_au_fsc, per_image_au_fsc, read_gt_maps
    from cryoscape.analysis.latent import load_latents
    from cryoscape.analysis.neighbour_recon import reconstructor_from_run

    torch.set_num_threads(1)
    work = Path(a.work)
    run, sim = work / "run", work / "sim"
    cmd = [*CRYOSCAPE_CMD, "evaluate", str(run), "--truth", str(sim), "-o", str(work / "eval_decoder.json"),
           "--overwrite", "--n-images", str(a.n_images), "--device", "cpu"]
    info = run_timed(cmd, work / "evaluate.log")
    decoder = json.loads((work / "eval_decoder.json").read_text())
    latents = load_latents(run)
    truth = np.load(sim / "labels.npz")
    idx = latents.indices if latents.indices is not None else np.arange(len(latents.z))
    states = truth["state"][idx]
    gt, gt_apix = read_gt_maps(sim)
    t0 = time.time()
    rec = reconstructor_from_run(run, latents.epoch, max_neighbours=a.max_neighbours, oversample=1, device="cpu")
    recon_img = per_image_au_fsc(rec, latents.z, states, gt, n_images=a.n_images, seed=0,
                                 gt_pixel_size_angstrom=gt_apix)
    t1 = time.time()
    recon_conf = per_conformation_au_fsc(rec, latents.z, states, gt, gt_pixel_size_angstrom=gt_apix)
    t2 = time.time()
    same = recon_img["indices"] == decoder["cryobench"]["per_image_au_fsc"]["indices"]
    old = json.loads((work / "summary.json").read_text()) if (work / "summary.json").is_file() else {}
    summary = {
        **old,  # the other stages' results (baselines, cryodrgn) stay
        "machine": machine_info(), "evaluate_command": cmd, "evaluate_run": info, "epoch": latents.epoch,
        "same_sampled_images": same,
        "decoder": {k: decoder["cryobench"][k] for k in ("per_image_au_fsc", "per_conformation_au_fsc",
                                                         "neighborhood_similarity")},
        "ari": decoder.get("clustering", {}).get("ari"),
        "abs_spearman_pc1": decoder.get("continuous", {}).get("abs_spearman_pc1"),
        "reconstruction": {"per_image_au_fsc": recon_img, "per_conformation_au_fsc": recon_conf,
                           "max_neighbours": a.max_neighbours, "oversample": 1, "ks": rec.ks,
                           "seconds_per_image_map": (t1 - t0) / recon_img["n_images"],
                           "seconds_per_conformation_map": (t2 - t1) / recon_conf["n_states"]},
    }
    for d in (summary["decoder"]["per_image_au_fsc"], recon_img):
        d.pop("values", None)
        d.pop("indices", None)
    write_json(work / "summary.json", summary)
    for what in ("per_image_au_fsc", "per_conformation_au_fsc"):
        print(f"{what}: decoder {summary['decoder'][what]['mean']:.4f}  "
              f"latent-neighbour {summary['reconstruction'][what]['mean']:.4f}")
    print(json.dumps({"neighborhood_similarity": summary["decoder"]["neighborhood_similarity"],
                      "ari": summary["ari"], "abs_spearman_pc1": summary["abs_spearman_pc1"]}))


if __name__ == "__main__":
    sys.exit(main())
