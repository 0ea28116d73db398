"""The ceiling of per-image pose refinement on a data set: each image's best rotation against the TRUE map.

    .venv/bin/python -m bench.pose_oracle bench/_work/pr64_3k [--radius 0.5] [-n 3000]

Issue 17 asks that a map trained with refined poses come within 0.05 FSC of one trained with the true poses in
every shell up to 2/3 Nyquist. Any method that gives each image one pose (cryoscape's `--refine-poses`, cryoDRGN's
pose SGD, a hard-assignment search) is limited by how well one noisy image fixes its own orientation, even given
the perfect map. This script measures that limit: for the first ``-n`` particles of ``WORK/sim`` (a
``bench.pose_refine`` folder: ``particles.star`` with the true poses, ``gt/state_000.mrc`` the one true map), each
image's rotation is searched on a local grid around its TRUE rotation (an optimistic start: a search from a
perturbed pose can only do worse) against the true map's slices, CTF applied, its shift held at the true one
(optimistic again), comparing the Hartley pixels within ``--radius`` x Nyquist (0.5: `--refine-poses`'s default
final radius). Two levels: +-4.5 degrees (``--width``) in steps of 1.5 (343 rotations), then +-1.125 in steps of
0.375 around the best (343). ``--state S`` takes only the particles of true state S of a heterogeneous set, against
that state's map, and reports the rotation errors only. The maximum-likelihood rotation of each image is written
(with the true shifts) as ``WORK/oracle_rNN.star`` and back-projected with ``cryoscape backproject`` (the particles
of ``WORK/state0.txt`` when it exists, else all), FSC against the truth per shell, beside the back-projection with
the true poses.

``--gauss-newton VISITS`` measures instead how far ``train --refine-poses``'s local method gets with a perfect map:
starting from ``WORK/sim/perturbed.star``, VISITS rounds of :func:`cryoscape.models.poses.gauss_newton_pose_step`
with the refiner's settings (its shift grid, step and anchor priors, limits) against the true map's slices, the
median errors after each round, and the back-projection with the final poses (``WORK/oracle_gnVxI_rNN.star``).

A refinement that gives each image its own best pose cannot beat this map; if it falls short of the true-pose map
by more than 0.05 in some shell, that part of the target needs more than per-image poses (marginalising over the
pose posterior, as RELION's expectation step does).

Writes ``bench/results/pose_oracle_<folder>_rNN.json`` and prints the errors and FSC.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bench.common import machine_info, write_json

RESULTS = Path(__file__).resolve().parent / "results"


def local_grid(half_width_deg: float, step_deg: float) -> torch.Tensor:
    """Small rotations ``(R, 3, 3)``: rotation vectors on a cube grid of ``step_deg`` within +-``half_width_deg``."""
    from scipy.spatial.transform import Rotation

    n = int(round(half_width_deg / step_deg))
    g = np.deg2rad(np.arange(-n, n + 1) * step_deg)
    v = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)
    return torch.tensor(Rotation.from_rotvec(v).as_matrix(), dtype=torch.float32)


def batch_values(parts, idx, pixels, positions, ctf_all) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, ctf)`` ``(B, P')``: the Hartley values of the particles ``idx`` at ``positions`` and their CTFs there."""
    from cryoscape.imaging.ctf import compute_ctf
    from cryoscape.imaging.fft import hartley2

    images = torch.tensor(np.stack([np.asarray(parts.images[int(i)], dtype=np.float32) for i in idx]))
    y = hartley2(images).reshape(len(idx), -1)[:, pixels.index][:, positions]
    return y, compute_ctf(pixels.freqs[positions] / parts.pixel_size_angstrom, ctf_all[idx])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("work", type=Path, help="a bench.pose_refine work folder (with sim/)")
    p.add_argument("-n", type=int, default=None, help="particles (the first n; default all)")
    p.add_argument("--radius", type=float, default=0.5, help="compared radius as a fraction of Nyquist")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--gauss-newton", type=int, default=0, metavar="VISITS",
                   help="instead: VISITS local steps of `--refine-poses` (gauss_newton_pose_step with the refiner's "
                        "settings) from the perturbed poses (WORK/sim/perturbed.star) against the true map")
    p.add_argument("--iterations", type=int, default=1, help="--gauss-newton: Gauss-Newton iterations per visit")
    p.add_argument("--width", type=float, default=4.5,
                   help="half-width (degrees) of the coarse grid around the true rotation (step 1.5; default 4.5)")
    p.add_argument("--state", type=int, default=None,
                   help="a heterogeneous set: only the particles of this true state (labels.npz), against its own "
                        "true map gt/state_SSS.mrc; the rotation errors only (no back-projection)")
    args = p.parse_args(argv)
    if args.state is not None and args.gauss_newton:
        p.error("--state is for the ML oracle, not with --gauss-newton")
    import subprocess
    import time

    import mrcfile

    from bench.common import CRYOSCAPE_CMD
    from cryoscape.data.fourier_pixels import FourierPixels
    from cryoscape.imaging import so3_grid
    from cryoscape.imaging.ctf import CTFTensors
    from cryoscape.io.particles import load_particles
    from cryoscape.io.pose_output import write_particles_with_poses
    from cryoscape.metadata import Poses
    from cryoscape.models.pose_search import _errors_per_image, _translated, map_search_predictor

    torch.set_num_threads(1)
    t0 = time.time()
    sim = args.work / "sim"
    parts = load_particles(sim / "particles.star")
    D, apix = parts.D, parts.pixel_size_angstrom
    if args.state is None:
        sel = np.arange(len(parts))
    else:
        sel = np.flatnonzero(np.load(sim / "labels.npz")["state"] == args.state)
    sel = sel if args.n is None else sel[: args.n]
    n = len(sel)
    radius = min(args.radius * 0.5, 0.46)  # cycles/pixel (the padded transform ends at 0.5)
    truth = mrcfile.read(sim / "gt" / f"state_{args.state or 0:03d}.mrc").astype(np.float64)
    pixels = FourierPixels.create(D)
    hf, m = pixels.half_freqs(), pixels.n_half
    half = torch.nonzero(hf.norm(dim=1) < radius).squeeze(1)
    positions = torch.cat([half, half + m, torch.tensor([2 * m])])
    freqs = torch.cat([hf[half], hf[:1] * 0])
    A_true = torch.tensor(parts.poses.rotations[sel], dtype=torch.float32)
    shifts_px = torch.tensor(parts.poses.shifts_px(apix)[sel], dtype=torch.float32)
    ctf_all = CTFTensors.from_params(parts.ctf)
    unscaled = map_search_predictor(truth, radius * 1.05, freqs)
    coarse, fine = local_grid(args.width, 1.5), local_grid(1.125, 0.375)
    if args.gauss_newton:
        return gauss_newton_mode(args, parts, n, radius, truth, pixels, half, positions, freqs, ctf_all, unscaled)
    best = torch.empty(n, 3, 3)
    sign = None
    scale = None
    for start in range(0, n, args.batch):
        idx = torch.arange(start, min(n, start + args.batch))  # positions in sel
        y, ctf = batch_values(parts, torch.as_tensor(sel[idx.numpy()]), pixels, positions, ctf_all)
        if scale is None:  # least squares at the true poses (first batch), and the shift's sign convention
            at_truth = unscaled.slices(A_true[idx][:, None])[:, 0] * ctf
            errs = {}
            for s in (1.0, -1.0):
                y_s = _translated(y, hf[half], s * shifts_px[idx][:, None])[:, 0]
                k = float((at_truth * y_s).sum() / (at_truth * at_truth).sum())
                errs[s] = (float(((y_s - k * at_truth) ** 2).sum()), k)
            sign = min(errs, key=lambda s: errs[s][0])
            scale = errs[sign][1]
            print(f"shift sign {sign:+.0f} (errors {errs[1.0][0]:.4g} / {errs[-1.0][0]:.4g}), scale {scale:.4g}",
                  flush=True)
            pred = map_search_predictor(truth, radius * 1.05, freqs, transfer=None, scale=scale)
        y_t = _translated(y, hf[half], sign * shifts_px[idx][:, None])  # (B, 1, P)
        centre = A_true[idx]
        for grid in (coarse, fine):
            rots = grid[None] @ centre[:, None]  # (B, R, 3, 3): errors composed in the image frame
            err = _errors_per_image(y_t, pred.slices(rots), ctf, None)[:, 0]  # (B, R)
            centre = rots[torch.arange(len(idx)), err.argmin(dim=1)]
        best[idx] = centre
        if start % (args.batch * 20) == 0:
            print(f"{start + len(idx)}/{n} images, {time.time() - t0:.0f} s", flush=True)
    err_deg = so3_grid.geodesic_distance_deg(best.double().numpy(), parts.poses.rotations[sel])
    tag = (f"r{int(round(args.radius * 100)):02d}" + ("" if args.state is None else f"_state{args.state}")
           + ("" if args.width == 4.5 else f"_w{args.width:g}"))
    star = args.work / f"oracle_{tag}.star"
    write_particles_with_poses(parts, sel, Poses(best.double().numpy(), parts.poses.shifts_angstrom[sel]), star)
    ind = args.work / "state0.txt"
    out: dict = {"machine": machine_info(), "data": str(args.work), "D": D, "n": n, "radius_nyquist": args.radius,
                 "radius_px": radius * D, "rot_median_deg": round(float(np.median(err_deg)), 3),
                 "rot_p90_deg": round(float(np.percentile(err_deg, 90)), 3),
                 "grid_half_width_deg": args.width,
                 "frac_at_grid_edge": round(float(np.mean(err_deg > args.width - 0.1)), 4),
                 "search_seconds": round(time.time() - t0)}
    print(f"oracle rotations: median {out['rot_median_deg']} deg, p90 {out['rot_p90_deg']}", flush=True)
    if args.state is not None:
        out["state"] = args.state
        write_json(RESULTS / f"pose_oracle_{args.work.name}_{tag}.json", out)
        return 0
    fscs = {}
    for name, src in (("oracle", star), ("true", sim / "particles.star")):
        o = args.work / f"bp_oracle_{tag}" if name == "oracle" else args.work / "bp_true_oracle"
        cmd = [*CRYOSCAPE_CMD, "backproject", str(src), "--datadir", str(sim), "--reference",
               str(sim / "gt" / "state_000.mrc"), "-o", str(o), "--overwrite"]
        if ind.is_file():
            cmd += ["--ind", str(ind)]
        elif n < len(parts):
            np.savetxt(args.work / f"first{n}.txt", np.arange(n), fmt="%d")
            cmd += ["--ind", str(args.work / f"first{n}.txt")]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        fscs[name] = np.loadtxt(o / "fsc_reference.txt", ndmin=2)[:, -1].round(4).tolist()
    out["bp_fsc"] = fscs
    gap = np.array(fscs["true"]) - np.array(fscs["oracle"])
    shells = int(round(2 / 3 * D / 2))
    out["max_gap_to_2_3_nyquist"] = round(float(gap[: shells + 1].max()), 4)
    print("shell  true  oracle  gap")
    for s in range(0, min(len(gap), shells + 1)):
        print(f"{s:5d} {fscs['true'][s]:.3f} {fscs['oracle'][s]:.3f} {gap[s]:+.3f}")
    write_json(RESULTS / f"pose_oracle_{args.work.name}_{tag}.json", out)
    return 0


def gauss_newton_mode(args, parts, n, radius, truth, pixels, half, positions, freqs, ctf_all, unscaled) -> int:
    """``--gauss-newton VISITS``: how far `--refine-poses`'s local steps get against the true map, per visit."""
    import math
    import subprocess

    from bench.common import CRYOSCAPE_CMD
    from cryoscape.imaging import so3_grid
    from cryoscape.io.particles import load_particles
    from cryoscape.io.pose_output import write_particles_with_poses
    from cryoscape.metadata import Poses
    from cryoscape.models.pose_search import map_search_predictor
    from cryoscape.models.poses import PoseRefiner, gauss_newton_pose_step, hartley_translate, so3_exp, so3_log

    D, apix = parts.D, parts.pixel_size_angstrom
    pert = load_particles(args.work / "sim" / "perturbed.star")
    hf = pixels.half_freqs()
    fr = hf[half]
    A0 = torch.tensor(pert.poses.rotations[:n], dtype=torch.float32)
    s_pert = torch.tensor(pert.poses.shifts_px(apix)[:n], dtype=torch.float32)
    s_true = parts.poses.shifts_px(apix)[:n]
    settings = PoseRefiner(n, hf, lr=0.0, method="local")  # the refiner's defaults: priors, limits, shift grid
    w = torch.zeros(n, 3)
    t = torch.zeros(n, 2)
    scale = None
    history = []
    batches = [torch.arange(start, min(n, start + args.batch)) for start in range(0, n, args.batch)]
    values = [batch_values(parts, idx, pixels, positions, ctf_all) for idx in batches]  # read once, every visit
    for visit in range(args.gauss_newton):
        for idx, (y, ctf) in zip(batches, values, strict=True):
            if scale is None:
                A_t = torch.tensor(parts.poses.rotations[: len(idx)], dtype=torch.float32)
                y_t = hartley_translate(y, fr, torch.tensor(s_true[: len(idx)], dtype=torch.float32))
                at = unscaled.slices(A_t[:, None])[:, 0] * ctf
                scale = float((at * y_t).sum() / (at * at).sum())
                pred_map = map_search_predictor(truth, radius * 1.05, freqs, scale=scale)
            for _ in range(args.iterations):
                rot = so3_exp(w[idx]) @ A0[idx]
                y_c = hartley_translate(y, fr, s_pert[idx] + t[idx])

                def predict(r, ctf=ctf, pm=pred_map):
                    return pm.slices(r[:, None])[:, 0] * ctf

                d, dt, _ = gauss_newton_pose_step(predict, rot, y_c, fr, max_angle=settings.max_step,
                                                  max_shift_px=settings.max_shift_px,
                                                  prior_angle=settings.prior_angle,
                                                  prior_shift_px=settings.prior_shift_px,
                                                  shift_grid=settings.shift_grid,
                                                  anchor=torch.cat([w[idx], t[idx]], dim=1))
                w[idx] = so3_log(so3_exp(d.double()) @ so3_exp(w[idx].double())).float()
                t[idx] = t[idx] + dt
        A = (so3_exp(w) @ A0).double().numpy()
        err = so3_grid.geodesic_distance_deg(A, parts.poses.rotations[:n])
        # y translated by s means the image's origin moves by -s (img'(x) = img(x - s) undoes an origin s)
        origin = (s_pert + t).numpy()
        serr = np.linalg.norm(origin - s_true, axis=1)
        serr_neg = np.linalg.norm(-origin - s_true, axis=1)
        history.append({"visit": visit + 1, "rot_median_deg": round(float(np.median(err)), 3),
                        "rot_p90_deg": round(float(np.percentile(err, 90)), 3),
                        "shift_median_px": round(float(min(np.median(serr), np.median(serr_neg))), 3)})
        print(history[-1], flush=True)
    tag = f"gn{args.gauss_newton}x{args.iterations}_r{int(round(args.radius * 100)):02d}"
    star = args.work / f"oracle_{tag}.star"
    sign = 1.0 if np.median(serr) <= np.median(serr_neg) else -1.0
    write_particles_with_poses(parts, np.arange(n), Poses(A, sign * origin * apix), star)
    o = args.work / f"bp_oracle_{tag}"
    subprocess.run([*CRYOSCAPE_CMD, "backproject", str(star), "--datadir", str(args.work / "sim"), "--reference",
                    str(args.work / "sim" / "gt" / "state_000.mrc"), "-o", str(o), "--overwrite"], check=True,
                   stdout=subprocess.DEVNULL)
    fsc = np.loadtxt(o / "fsc_reference.txt", ndmin=2)[:, -1].round(4).tolist()
    out = {"machine": machine_info(), "data": str(args.work), "n": n, "radius_px": radius * D,
           "visits": args.gauss_newton, "iterations_per_visit": args.iterations, "history": history, "bp_fsc": fsc,
           "max_step_deg": math.degrees(settings.max_step)}
    print("bp FSC shells 8/12/16/21:", [fsc[i] for i in (8, 12, 16, 21)])
    write_json(RESULTS / f"pose_oracle_{args.work.name}_{tag}.json", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
