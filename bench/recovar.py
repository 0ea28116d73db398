"""RECOVAR (Gilles & Singer; PyPI ``recovar`` 1.0.5, CPU jax) on the small CryoBench-like set of
bench/cryobench.py (issue 19), scored with cryoscape's own metric functions so that the numbers sit next to
cryoscape's rows of bench/RESULTS.md section 10.

Stages (run from the repository root after ``bash bench/setup_recovar.sh``; each writes under ``--work``, default
``bench/_work/recovar``, reads the simulation ``bench/_work/cryobench/sim`` and records itself in
``bench/results/recovar_cryobench_small.json``, including a failure's last error line):

* ``prepare``: cryoDRGN-style ``pose.pkl`` / ``ctf.pkl`` of the simulation's particles.star, written with cryoscape's
  own readers and writers (``cryoscape.io``); the stack is the simulation's ``particles.mrcs``;
* ``pipeline``: ``recovar pipeline`` (mean, noise, covariance, PCA, per-image latents for each ``--zdim``), CPU,
  ``nice -n 10``, one XLA/OpenMP thread;
* ``latents``: RECOVAR's per-image latents (its regularised ``latent_coords``, read with its own
  ``PipelineOutput``) for every zdim, into ``latents.npz`` (original particle order);
* ``states``: ``recovar compute_state`` (its kernel-regression volume at a latent point) at the latent of each of
  the 100 images cryoscape's per-image AU-FSC sampled (seed 0) and at the mean latent of each true conformation;
* ``score``: per-image and per-conformation AU-FSC (``cryoscape.analysis.evaluate.au_fsc`` with the soft
  ``auto_mask`` of each true map, as ``per_image_au_fsc`` / ``per_conformation_au_fsc``) of the maps made so far,
  as written and after undoing a 2x magnification, next to cryoscape's decoder / latent-neighbour / consensus
  maps at the same images and conformations; ARI / |Spearman| (``evaluate_latents``) and neighbourhood
  similarity (``neighborhood_similarity``) of the latents of every zdim;
* ``selftest``: RECOVAR on images it simulates itself from two of the true maps (``make_test_dataset``), to tell
  whether a scale error is in the inputs or in RECOVAR: on this CPU install its RELION-style reconstructions come
  out magnified 2x (its JAX back-projection places image frequencies on the 2x upsampled volume grid unscaled,
  where its CUDA path scales them); a diagnostic run with that scaling added reproduces the input maps.

    .venv/bin/python -m bench.recovar prepare
    .venv/bin/python -m bench.recovar pipeline       # ~15 min on one core, peak RSS ~10 GiB
    .venv/bin/python -m bench.recovar latents
    .venv/bin/python -m bench.recovar states --which images --first-images 10        # ~10 min a map here
    .venv/bin/python -m bench.recovar states --which conformations --every-state 5
    .venv/bin/python -m bench.recovar score --first-images 10 --every-state 5
    .venv/bin/python -m bench.recovar selftest
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import BENCH, ROOT, WORK, machine_info, run_timed, tail, write_json

RECOVAR_VENV = Path(os.environ.get("BENCH_RECOVAR_VENV") or BENCH / "recovar-venv")
RECOVAR = RECOVAR_VENV / "bin" / "recovar"
DEFAULT_WORK = WORK / "recovar"
DEFAULT_SIM = WORK / "cryobench" / "sim"
CRYOBENCH = WORK / "cryobench"
RESULT = BENCH / "results" / "recovar_cryobench_small.json"
ZDIMS = (1, 2, 4, 8, 10, 20)  # RECOVAR's default 1,2,4,10,20 and 8 (cryoscape's run has zdim 8)
# the axis conventions RECOVAR's maps may come in relative to cryoscape's (as bench/accuracy.py's), and the sign
ORIENTATIONS = {
    "identity": lambda v: v,
    "flip0": lambda v: v[::-1],
    "transpose": lambda v: v.transpose(2, 1, 0),
    "transpose+flip0": lambda v: v[::-1].transpose(2, 1, 0),
}
# cryoscape's rows of RESULTS section 10 (bench/_work/cryobench/summary.json), for the comparison in the result
CRYOSCAPE_ROWS = {"decoder": {"per_image_au_fsc": 0.356, "per_conformation_au_fsc": 0.416},
                  "latent_neighbour": {"per_image_au_fsc": 0.405, "per_conformation_au_fsc": 0.410},
                  "consensus": {"per_image_au_fsc": 0.425}}


def _env() -> dict:
    """One thread for XLA (jax), OpenMP (finufft) and BLAS; CPU jax only."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "NUMBA_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu", "RECOVAR_DISABLE_CUDA": "1",
                "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
                "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "PYTHONUNBUFFERED": "1"})
    return env


def _record(stage: str, info: dict) -> dict:
    """Merge ``info`` under ``stages[stage]`` of the result file (created with the machine description)."""
    res = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
    res.setdefault("what", "RECOVAR 1.0.5 (CPU jax) on bench/_work/cryobench/sim, scored with cryoscape's metrics")
    res.setdefault("stages", {})[stage] = info
    res["machine"] = machine_info()
    write_json(RESULT, res)
    return res


def _error_line(log: Path) -> str:
    """The last line of a failed run's log that names an error (else its last line)."""
    lines = [ln for ln in Path(log).read_text(errors="replace").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln or "Killed" in ln or "terminated by signal" in ln:
            return ln.strip()
    return lines[-1].strip() if lines else ""


def _run(stage: str, cmd: list[str], log: Path, extra: dict | None = None) -> dict:
    info = run_timed(["nice", "-n", "10", *cmd], log, env=_env())
    info["utc_start"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() - info["wall_s"]))
    info.update(extra or {})
    if info["returncode"] != 0:
        info["error"] = _error_line(log)
    _record(stage, info)
    print(json.dumps({k: info[k] for k in ("returncode", "wall_s", "peak_rss_mib") if k in info}))
    if info["returncode"] != 0:
        print(tail(log), file=sys.stderr)
        raise SystemExit(f"{stage} failed: {info['error']}")
    return info


def need_recovar() -> None:
    if not RECOVAR.is_file():
        raise SystemExit(f"{RECOVAR} not found; run `bash bench/setup_recovar.sh` first")


# ---------------------------------------------------------------------------------------------------------------
# stages


def prepare(a) -> None:
    """pose.pkl / ctf.pkl of the simulation (cryoscape's writers; the same files ``simulate --pkl`` writes)."""
    from cryoscape.io import load_particles, write_ctf_pkl, write_pose_pkl

    sim, work = Path(a.sim), Path(a.work)
    ps = load_particles(sim / "particles.star", lazy=True)
    if ps.poses is None or ps.ctf is None:
        raise SystemExit(f"{sim / 'particles.star'} has no poses or no CTF")
    work.mkdir(parents=True, exist_ok=True)
    write_pose_pkl(work / "pose.pkl", ps.poses, ps.D, ps.pixel_size_angstrom)
    write_ctf_pkl(work / "ctf.pkl", ps.ctf, ps.D, ps.pixel_size_angstrom)
    info = {"particles": str(sim / "particles.mrcs"), "n": len(ps), "D": ps.D,
            "pixel_size_angstrom": ps.pixel_size_angstrom, "pose_pkl": str(work / "pose.pkl"),
            "ctf_pkl": str(work / "ctf.pkl")}
    _record("prepare", info)
    print(json.dumps(info))


def pipeline(a) -> None:
    need_recovar()
    sim, work = Path(a.sim), Path(a.work)
    cmd = [str(RECOVAR), "pipeline", str(sim / "particles.mrcs"), "-o", str(work / "pipeline"),
           "--poses", str(work / "pose.pkl"), "--ctf", str(work / "ctf.pkl"), "--mask", a.mask,
           "--zdim", ",".join(str(z) for z in a.zdims), "--no-downsample", "--accept-cpu"]
    _run("pipeline", cmd, work / "pipeline.log", {"threads": "1 (XLA, OpenMP, BLAS), nice -n 10"})


_LATENTS_PY = r"""
import sys, numpy as np
from recovar.output import output as o
po = o.PipelineOutput(sys.argv[1])
out = {}
for entry, short in (("latent_coords", "z"), ("contrasts", "contrast")):
    for k in po.get_embedding_keys(entry):
        out[f"{short}{k}"] = np.asarray(po.get_embedding_component(entry, k), dtype=np.float32)
np.savez(sys.argv[2], **out)
print({k: v.shape for k, v in out.items()})
"""


def latents(a) -> None:
    """RECOVAR's per-image latents for each zdim, read with its own API in its venv."""
    need_recovar()
    work = Path(a.work)
    cmd = [str(RECOVAR_VENV / "bin" / "python"), "-c", _LATENTS_PY, str(work / "pipeline"),
           str(work / "latents.npz")]
    _run("latents", cmd, work / "latents.log")


def _truth(sim: Path):
    truth = np.load(sim / "labels.npz")
    return truth["state"].astype(np.int64), truth["coordinate"].astype(np.float64)


def _sample(states: np.ndarray, gt_maps) -> np.ndarray:
    """The 100 images (seed 0) of cryoscape's per-image AU-FSC (checked against eval_decoder.json when present)."""
    from cryoscape.analysis.evaluate import sample_images

    idx = sample_images(states, 100, 0, states=[int(s) for s in gt_maps])
    ref = CRYOBENCH / "eval_decoder.json"
    if ref.is_file():
        assert idx.tolist() == json.loads(ref.read_text())["cryobench"]["per_image_au_fsc"]["indices"]
    return idx


def _state_means(z: np.ndarray, states: np.ndarray, gt_maps) -> np.ndarray:
    """The mean latent of each true state (as ``per_conformation_au_fsc`` forms them)."""
    keep = [int(s) for s in np.unique(states) if int(s) in gt_maps]
    return np.stack([z[states == s].mean(axis=0) for s in keep]).astype(np.float32)


def _subsets(z: np.ndarray, states: np.ndarray, gt_maps, first_images: int, every_state: int):
    """The sampled images whose maps are made (the first ``first_images`` of the 100, in index order) and the
    conformations (every ``every_state``-th state), with the latent points of both."""
    idx = _sample(states, gt_maps)[:first_images]
    keep = sorted(gt_maps)[::every_state]
    sub = {s: gt_maps[s] for s in keep}
    return idx, keep, z[idx].astype(np.float32), _state_means(z, states, sub)


def states_stage(a) -> None:
    """``recovar compute_state`` at the sampled images' latents and at each chosen conformation's mean latent."""
    from cryoscape.analysis.evaluate import read_gt_maps

    need_recovar()
    sim, work = Path(a.sim), Path(a.work)
    z = np.load(work / "latents.npz")[f"z{a.zdim}"]
    states, _ = _truth(sim)
    gt, _ = read_gt_maps(sim)
    idx, keep, zi, zc = _subsets(z, states, gt, a.first_images, a.every_state)
    points = {"images": zi, "conformations": zc}
    chosen = {"images": idx.tolist(), "conformations": keep}
    for what in a.which:
        out = work / f"states_z{a.zdim}_{what}"
        np.savetxt(work / f"points_z{a.zdim}_{what}.txt", points[what])
        cmd = [str(RECOVAR), "compute_state", str(work / "pipeline"), "-o", str(out), "--latent-points",
               str(work / f"points_z{a.zdim}_{what}.txt")]
        _run(f"compute_state_z{a.zdim}_{what}", cmd, work / f"compute_state_z{a.zdim}_{what}.log",
             {"n_points": len(points[what]), "chosen": chosen[what]})


def _read_states(folder: Path, n: int, kind: str) -> np.ndarray:
    from cryoscape.io.mrc import read_mrc

    suffix = "" if kind == "filtered" else "_unfil"
    return np.stack([read_mrc(folder / f"state{i:03d}{suffix}.mrc")[0] for i in range(n)]).astype(np.float32)


def unmagnify(vol: np.ndarray) -> np.ndarray:
    """Undo a 2x magnification about the box centre: Fourier crop ``D -> D/2`` (the voxel size doubles, nothing
    within the map's band is lost) and zero-pad back to ``D`` in real space (the centre stays at ``D/2``)."""
    import torch

    from cryoscape.imaging.fft import resample_volume

    D = vol.shape[-1]
    small = resample_volume(torch.from_numpy(np.ascontiguousarray(vol, dtype=np.float32)), D // 2).numpy()
    out = np.zeros_like(vol, dtype=np.float32)
    q = D // 4
    out[q:q + D // 2, q:q + D // 2, q:q + D // 2] = small
    return out


SCALES = {"as_written": lambda v: v, "unmagnified_x0.5": unmagnify}


def _transform(mean_map: np.ndarray, reference: np.ndarray) -> dict:
    """The axis convention, scale and sign of RECOVAR's maps: the best |correlation| of its mean map with
    ``reference`` (the average of the true maps) over ORIENTATIONS x SCALES; one choice for every map."""
    from cryoscape.analysis.maps import map_correlation

    scores = {f"{o}|{sc}": float(map_correlation(np.ascontiguousarray(f(g(mean_map))), reference))
              for o, f in ORIENTATIONS.items() for sc, g in SCALES.items()}
    best = max(scores, key=lambda k: abs(scores[k]))
    o, sc = best.split("|")
    return {"orientation": o, "scale": sc, "sign": 1 if scores[best] >= 0 else -1,
            "correlation_of_mean_map_with_mean_true_map": scores}


def _apply(vol: np.ndarray, orientation: str, scale: str, sign: int) -> np.ndarray:
    return sign * np.ascontiguousarray(ORIENTATIONS[orientation](SCALES[scale](vol)))


def _cryoscape_same_subsets(idx: np.ndarray, keep: list[int], states: np.ndarray, gt, masks) -> dict:
    """cryoscape's section-10 rows at the same images / conformations: decoder (eval_decoder.json), latent-neighbour
    maps (per image: remade with ``reconstructor_from_run`` as bench/cryobench.py score; per conformation:
    summary.json) and the consensus back-projection (remade as bench/cryobench.py baselines)."""
    import torch

    from cryoscape.analysis.backprojection import backproject
    from cryoscape.analysis.evaluate import au_fsc
    from cryoscape.analysis.latent import load_latents
    from cryoscape.analysis.neighbour_recon import reconstructor_from_run

    torch.set_num_threads(1)
    dec = json.loads((CRYOBENCH / "eval_decoder.json").read_text())["cryobench"]
    summary = json.loads((CRYOBENCH / "summary.json").read_text())
    pos = {int(i): k for k, i in enumerate(dec["per_image_au_fsc"]["indices"])}
    out = {"decoder": {"per_image": [dec["per_image_au_fsc"]["values"][pos[int(i)]] for i in idx],
                       "per_conformation": [dec["per_conformation_au_fsc"]["per_state"][str(s)] for s in keep]}}
    run = CRYOBENCH / "run"
    lat = load_latents(run)
    rec = reconstructor_from_run(run, lat.epoch, max_neighbours=1500, oversample=1, device="cpu")
    vols = rec.generate_volumes(lat.z[idx].astype(np.float32)) if len(idx) else []
    rs = summary["reconstruction"]["per_conformation_au_fsc"]["per_state"]
    out["latent_neighbour"] = {
        "per_image": [au_fsc(v, gt[int(states[i])], masks[int(states[i])]) for i, v in zip(idx, vols, strict=True)],
        "per_conformation": [rs[str(s)] for s in keep]}
    if not len(idx):
        out["consensus"] = {"per_image": []}
        return out
    cons = backproject(rec.images, rec.rotations, rec.shifts_px, rec.ctf, rec.pixel_size_angstrom, oversample=1,
                       progress=False, device="cpu")["volume"]
    out["consensus"] = {"per_image": [au_fsc(cons, gt[int(states[i])], masks[int(states[i])]) for i in idx]}
    return out


def _stats(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "n": int(v.size)}


def score(a) -> None:
    import torch

    from cryoscape.analysis.evaluate import (
        _state_masks,
        au_fsc,
        evaluate_latents,
        neighborhood_similarity,
        read_gt_maps,
    )
    from cryoscape.io.mrc import read_mrc

    torch.set_num_threads(1)
    sim, work = Path(a.sim), Path(a.work)
    states, coordinate = _truth(sim)
    gt, gt_apix = read_gt_maps(sim)
    lat = np.load(work / "latents.npz")
    out: dict = {"zdim_of_maps": a.zdim, "latents": {}}
    for key in sorted((k for k in lat.files if k.startswith("z")), key=lambda k: int(k[1:])):
        z = lat[key]
        scores = evaluate_latents(z, {"state": states, "coordinate": coordinate}, seed=0)
        scores.pop("_kmeans")
        out["latents"][int(key[1:])] = {
            "ari": scores["clustering"]["ari"], "abs_spearman_pc1": scores["continuous"]["abs_spearman_pc1"],
            "neighborhood_similarity": neighborhood_similarity(z, states, coordinate)}
    z = lat[f"z{a.zdim}"]
    mean_map = read_mrc(work / "pipeline" / "output" / "volumes" / "mean.mrc")[0]
    reference = np.mean([gt[s] for s in sorted(gt)], axis=0)
    tr = _transform(mean_map, reference)
    out["transform"] = tr
    masks = _state_masks(gt, float(gt_apix), "auto")
    idx, keep, _, _ = _subsets(z, states, gt, a.first_images, a.every_state)
    folders = {"images": work / f"states_z{a.zdim}_images", "conformations": work / f"states_z{a.zdim}_conformations"}
    truth_of = {"images": [int(states[i]) for i in idx], "conformations": keep}
    maps: dict = {}
    done = {}
    for what, folder in folders.items():
        n = len(truth_of[what])
        done[what] = 0
        while done[what] < n and (folder / f"state{done[what]:03d}.mrc").is_file():
            done[what] += 1
        res: dict = {"asked": n, "done": done[what]}
        if done[what]:
            for kind in ("filtered", "unfiltered"):
                vols = _read_states(folder, done[what], kind)
                for scale in ("as_written", tr["scale"]):
                    vals = [au_fsc(_apply(v, tr["orientation"], scale, tr["sign"]), gt[s], masks[s])
                            for v, s in zip(vols, truth_of[what][:done[what]], strict=True)]
                    res[f"{kind}|{scale}"] = {**_stats(vals), "values": vals}
        maps[what] = res
    out["maps"] = maps
    idx, keep = idx[:done["images"]], keep[:done["conformations"]]
    out["subsets"] = {"images": idx.tolist(), "conformations": keep,
                      "note": "maps made (compute_state takes minutes a map on this CPU) at the first of the 100 "
                              f"sampled images (seed 0, index order) and at every {a.every_state}-th conformation"}
    ref = _cryoscape_same_subsets(idx, keep, states, gt, masks)
    out["cryoscape_same_subsets"] = {m: {k: {**_stats(v), "values": v} for k, v in d.items() if v}
                                     for m, d in ref.items()}
    out["cryoscape_rows_section_10_all"] = CRYOSCAPE_ROWS
    cl = json.loads((CRYOBENCH / "summary.json").read_text()).get("latent_metrics_current_defaults", {})
    out["cryoscape_latents_zdim8"] = {k: v for k, v in cl.items() if k != "command"}
    key = f"filtered|{tr['scale']}"
    out["summary"] = {
        "recovar_maps": {w: {"done": maps[w]["done"], "asked": maps[w]["asked"],
                             "au_fsc_as_written": maps[w].get("filtered|as_written", {}).get("mean"),
                             f"au_fsc_{tr['scale']}": maps[w].get(key, {}).get("mean")} for w in maps},
        "cryoscape_same_subsets": {m: {k: v["mean"] for k, v in d.items()}
                                   for m, d in out["cryoscape_same_subsets"].items()},
        "recovar_latents_zdim": {k: out["latents"][a.zdim][k] for k in ("ari", "abs_spearman_pc1")},
        "scale_finding": "RECOVAR 1.0.5's maps on this CPU install come out magnified 2x (stages.selftest: also on "
                         "its own simulated images); 'unmagnified_x0.5' undoes that before scoring",
    }
    res = _record("score", out)
    write_json(RESULT, res)
    for what in ("images", "conformations"):
        print(what, json.dumps({k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items()
                                                                        if kk != "values"})
                                for k, v in maps.get(what, {}).items()}))
    print(json.dumps({m: {k: round(v["mean"], 4) for k, v in d.items()}
                      for m, d in out["cryoscape_same_subsets"].items()}))
    print(json.dumps(out["latents"].get(a.zdim)))


# Diagnostic only (the selftest stage): ``recovar ...`` with the image frequencies of its JAX (CPU) back-projection
# scaled by volume_shape / image_shape, as its CUDA back-projection scales them (recovar/core/slicing.py
# ``_cuda_max_r``); RECOVAR's RELION-style reconstructions accumulate on a 2x upsampled volume grid.
_PATCHED_PY = r"""
import sys
import recovar.core.relion_interp as ri
from recovar.command_line import main_commands
bp, pf = ri.backproject, ri._pixel_frequencies
def backproject(imgs, rots, image_shape, volume_shape, order=1, half_volume=False, half_image=False, max_r=None):
    up = volume_shape[0] // image_shape[0]
    if up == 1:
        return bp(imgs, rots, image_shape, volume_shape, order, half_volume, half_image, max_r)
    ri._pixel_frequencies = lambda shape, half_image=False: pf(shape, half_image=half_image) * up
    try:
        return bp(imgs, rots, image_shape, volume_shape, order, half_volume, half_image,
                  None if max_r is None else max_r * up)
    finally:
        ri._pixel_frequencies = pf
ri.backproject = backproject
sys.argv = ["recovar", *sys.argv[1:]]
main_commands()
"""


def selftest(a) -> None:
    """Is RECOVAR's reconstruction on this CPU install at the scale of its own simulated images? Simulate with
    ``recovar make_test_dataset`` from two of the true maps (states 25 and 26, D=32, 1000 images), reconstruct
    with ``recovar pipeline --only-mean`` (as released, and through the diagnostic patch above), and with
    ``cryoscape backproject``; correlate each map, as written and unmagnified x0.5, with the two maps' average."""
    from cryoscape.analysis.evaluate import read_gt_maps
    from cryoscape.analysis.maps import map_correlation
    from cryoscape.io.mrc import read_mrc, write_mrc

    need_recovar()
    sim, work = Path(a.sim), Path(a.work) / "selftest"
    gt, apix = read_gt_maps(sim)
    (work / "vols").mkdir(parents=True, exist_ok=True)
    for k, s in enumerate((25, 26)):
        write_mrc(work / "vols" / f"vol{k:04d}.mrc", np.asarray(gt[s], np.float32), float(apix))
    info: dict = {"states": [25, 26]}
    _run("selftest_simulate", [str(RECOVAR), "make_test_dataset", str(work / "data"), "--n-images", "1000",
                               "--image-size", "32", "--volume-input", str(work / "vols" / "vol"), "--seed", "0"],
         work / "simulate.log")
    data = work / "data" / "test_dataset"
    inputs = [str(data / "particles.32.mrcs"), "--poses", str(data / "poses.pkl"), "--ctf", str(data / "ctf.pkl")]
    tail_args = ["--mask", "sphere", "--only-mean", "--no-downsample", "--accept-cpu"]
    (work / "patched_recovar.py").write_text(_PATCHED_PY)
    runs = {"recovar_as_released": [str(RECOVAR), "pipeline"],
            "recovar_cpu_backprojection_scaled": [str(RECOVAR_VENV / "bin" / "python"),
                                                  str(work / "patched_recovar.py"), "pipeline"]}
    maps = {}
    for name, head in runs.items():
        _run(f"selftest_{name}", [*head, inputs[0], "-o", str(work / name), *inputs[1:], *tail_args],
             work / f"{name}.log")
        maps[name] = read_mrc(work / name / "output" / "volumes" / "mean.mrc")[0]
    cmd = [str(ROOT / ".venv" / "bin" / "cryoscape"), "backproject", *inputs, "-o", str(work / "cryoscape_bp"),
           "--overwrite", "--device", "cpu"]
    _run("selftest_cryoscape_backproject", cmd, work / "cryoscape_bp.log")
    maps["cryoscape_backproject"] = read_mrc(work / "cryoscape_bp" / "backproject.mrc")[0]
    ref = (np.asarray(gt[25]) + np.asarray(gt[26])) / 2
    info["correlation_with_true_average"] = {
        name: {sc: float(map_correlation(g(m), ref)) for sc, g in SCALES.items()} for name, m in maps.items()}
    info["note"] = ("RECOVAR's simulator writes dark-protein images, so a map made without inverting them "
                    "(cryoscape backproject here) correlates negatively")
    _record("selftest", info)
    print(json.dumps(info, indent=1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["prepare", "pipeline", "latents", "states", "score", "selftest", "all"])
    p.add_argument("--work", default=str(DEFAULT_WORK))
    p.add_argument("--sim", default=str(DEFAULT_SIM))
    p.add_argument("--mask", default="from_halfmaps", help="recovar pipeline --mask (from_halfmaps, sphere, none)")
    p.add_argument("--zdims", type=lambda s: [int(x) for x in s.split(",")], default=list(ZDIMS),
                   help="recovar pipeline --zdim (comma-separated)")
    p.add_argument("--zdim", type=int, default=8, help="the latent dimension whose maps are made and scored")
    p.add_argument("--which", nargs="+", default=["images", "conformations"], choices=["images", "conformations"],
                   help="states stage: the maps to compute")
    p.add_argument("--first-images", type=int, default=100,
                   help="maps at the first N of the 100 sampled images (compute_state takes minutes a map on CPU)")
    p.add_argument("--every-state", type=int, default=1, help="maps at every K-th true conformation")
    a = p.parse_args(argv)
    stages = {"prepare": [prepare], "pipeline": [pipeline], "latents": [latents], "states": [states_stage],
              "score": [score], "selftest": [selftest],
              "all": [prepare, pipeline, latents, states_stage, score]}[a.stage]
    for stage in stages:
        stage(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
