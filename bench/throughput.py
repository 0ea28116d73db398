"""Training throughput and peak memory: cryoscape (fp32, --amp) versus cryoDRGN 4.3.1, same data and architecture.

One command::

    .venv/bin/python -m bench.throughput                 # D=64 and D=128, 2 repeats, ~20-30 min on 2 cores
    .venv/bin/python -m bench.throughput --sizes 64 --repeats 1 --n 500 --epochs 2   # a quick look

Data: ``cryoscape simulate --preset linear1d --snr 0.1 --pkl`` (a RELION STAR + .mrcs, and cryoDRGN's
pose.pkl/ctf.pkl of the same particles). Architecture for both programs: encoder and decoder 3 hidden layers of
256 (``--enc-layers 3 --enc-dim 256 --dec-layers 3 --dec-dim 256``), zdim 8, batch 32, gaussian positional encoding
with feat_sigma 0.5 (pe_dim D/2), Adam lr 1e-4, fourier-domain decoder (cryoDRGN's default). Runs are interleaved
(cryoscape fp32, cryoscape amp, cryoDRGN, then again), so that changing machine load touches all of them alike.

Throughput = particles/s of the training loop in steady state: particles x (E - 1) / seconds of epochs 2..E, read
from cryoscape's ``metrics.csv`` and from cryoDRGN's
"Epoch: N ... Finished in H:MM:SS" log lines. Peak RSS is from ``/usr/bin/time -v`` (whole process, includes
start-up and the dataset in memory). The load averages before/after each run are recorded.

``cryoscape-march`` runs train with frequency marching (``--freq-march`` = 3/4 of the epochs by default): the
lattice radius grows from 1/4 of Nyquist to Nyquist, so epochs differ in cost and the figure is the mean over the
whole schedule (epoch 1, the cheapest, excluded); compare with ``bench/accuracy.py --programs cryoscape-march`` for
the accuracy of the same schedule.

Roofline: the FLOPs of one training step are counted from the layer shapes (forward 2*m*k*n per matmul; backward
2x forward, except the first encoder layer, whose input needs no gradient) and the number of Fourier lattice
points each program's decoder evaluates per image; dividing by a dense torch.mm rate measured in the same
session (fp32 and bf16, 2048^3) gives the step time the hardware would allow at that matmul efficiency.

Writes ``bench/results/throughput.json`` (and prints a Markdown table for bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (
    BENCH,
    CRYODRGN,
    CRYODRGN_VENV,
    WORK,
    TrainSpec,
    cryodrgn_epoch_seconds,
    cryoscape_epochs,
    ensure_simulation,
    load_average,
    machine_info,
    need_cryodrgn,
    run_timed,
    tail,
    train_command,
    write_json,
)

ARCH = dict(enc_layers=3, enc_dim=256, dec_layers=3, dec_dim=256, zdim=8, batch=32, feat_sigma=0.5)


def cryoscape_spec(sim: Path, out: Path, epochs: int, amp: bool, a=ARCH, march_epochs: float = 0.0) -> TrainSpec:
    return TrainSpec(sim / "particles.star", out, model="cryodrgn", zdim=a["zdim"], enc_layers=a["enc_layers"],
                     enc_dim=a["enc_dim"], dec_layers=a["dec_layers"], dec_dim=a["dec_dim"], pe_type="gaussian",
                     feat_sigma=a["feat_sigma"], batch=a["batch"], epochs=epochs, lr=1e-4, val_frac=0.0,
                     checkpoint_every=epochs, freq_march=march_epochs if march_epochs > 0 else None, amp=amp)


def cryoscape_cmd(sim: Path, out: Path, epochs: int, amp: bool, a=ARCH, march_epochs: float = 0.0) -> list[str]:
    return train_command(cryoscape_spec(sim, out, epochs, amp, a, march_epochs))


def cryodrgn_cmd(sim: Path, out: Path, epochs: int, a=ARCH) -> list[str]:
    return [str(CRYODRGN), "train_vae", str(sim / "particles.mrcs"), "--poses", str(sim / "pose.pkl"),
            "--ctf", str(sim / "ctf.pkl"), "-o", str(out), "--zdim", str(a["zdim"]),
            "--enc-layers", str(a["enc_layers"]), "--enc-dim", str(a["enc_dim"]),
            "--dec-layers", str(a["dec_layers"]), "--dec-dim", str(a["dec_dim"]), "--pe-type", "gaussian",
            "--feat-sigma", str(a["feat_sigma"]), "--domain", "fourier", "-b", str(a["batch"]),
            "-n", str(epochs), "--lr", "1e-4", "--checkpoint", str(epochs), "--no-analysis",
            "--log-interval", "100000000"]




# ---------------------------------------------------------------------------------------------------------------
# FLOP model


def lattice_counts(D: int) -> dict:
    """Pixels each program uses at box D: encoder inputs and decoder points evaluated per image.

    cryoscape: ``FourierPixels`` (|k| < D/2, Hermitian half + DC evaluated). cryoDRGN: computed with its own
    ``Lattice(D+1).get_circular_mask(D//2)`` in its venv (|k| <= D/2 on the (D+1)^2 lattice; its
    ``FTPositionalDecoder.forward`` evaluates the first half of the masked list up to and including the centre).
    """
    from cryoscape.data.fourier_pixels import FourierPixels

    px = FourierPixels.create(D)
    out = {"cryoscape": {"encoder_in": px.n_pixels, "decoder_points": px.n_half + 1, "loss_pixels": px.n_pixels}}
    if CRYODRGN.is_file():
        code = (f"from cryodrgn.lattice import Lattice; L=Lattice({D}+1, extent=0.5); m=L.get_circular_mask({D}//2);"
                "n=int(m.sum()); c=n//2; print(n, c+1 if n%2==1 else c)")
        res = subprocess.run([str(CRYODRGN_VENV / "bin" / "python"), "-c", code], capture_output=True, text=True)
        if res.returncode == 0:
            n, half = map(int, res.stdout.split()[-2:])
            out["cryodrgn"] = {"encoder_in": n, "decoder_points": half, "loss_pixels": n}
    return out


def step_flops(D: int, counts: dict, a=ARCH) -> float:
    """FLOPs of one training step (batch ``a['batch']``) for a program with the given pixel counts."""
    B, h, z = a["batch"], a["enc_dim"], a["zdim"]
    pe = 6 * (D // 2)  # gaussian PE features (pe_dim = D/2)
    enc_first = counts["encoder_in"] * h
    enc_rest = a["enc_layers"] * h * h + h * 2 * z
    dec = (pe + z) * a["dec_dim"] + a["dec_layers"] * a["dec_dim"] ** 2 + a["dec_dim"] * 2
    pe_proj = 3 * 3 * (D // 2)  # coords @ freqs
    fwd_enc = 2 * B * (enc_first + enc_rest)
    fwd_dec = 2 * B * counts["decoder_points"] * (dec + pe_proj)
    # backward: dL/dW and dL/dx for every layer (2x forward), none of dL/dx for the encoder's input layer
    return fwd_enc + 2 * fwd_enc - 2 * B * enc_first + 3 * fwd_dec


def matmul_rate(dtype_name: str, n: int = 2048, repeats: int = 5) -> float | None:
    """Dense torch.mm rate (FLOP/s) for an n^3 product, best of ``repeats``; ``None`` for bf16 on a CPU without
    fast bfloat16 (where ``--amp`` trains in float32 and torch's fallback bf16 gemm would take minutes)."""
    import torch

    if dtype_name == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


# ---------------------------------------------------------------------------------------------------------------


def one_run(code: str, sim: Path, out: Path, epochs: int, n: int, march_fraction: float = 0.75) -> dict:
    if out.exists():
        shutil.rmtree(out)
    env = dict(os.environ)
    if code.endswith("-malloc"):  # glibc set as cryoscape sets itself (utils/malloc.py), through its env variables
        env.update(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(1 << 30))
        code_base = code[: -len("-malloc")]
    elif code.endswith("-glibc-default"):
        env["CRYOSCAPE_KEEP_FREED_MEMORY"] = "0"
        code_base = code[: -len("-glibc-default")]
    else:
        code_base = code
    if code_base == "cryodrgn":
        res = run_timed(cryodrgn_cmd(sim, out, epochs), out.parent / f"{out.name}.log", env=env)
        secs = cryodrgn_epoch_seconds(Path(res["log"]).read_text(errors="replace"))
        per_epoch = [secs[e] for e in sorted(secs)]
    else:
        march = march_fraction * epochs if "march" in code else 0.0
        res = run_timed(cryoscape_cmd(sim, out, epochs, amp=code_base.endswith("amp"), march_epochs=march),
                        out.parent / f"{out.name}.log", env=env)
        per_epoch = [r["seconds"] for r in cryoscape_epochs(out)] if (out / "metrics.csv").is_file() else []
    if res["returncode"] != 0 or len(per_epoch) < 2:
        print(tail(Path(res["log"])), file=sys.stderr)
        res["error"] = f"run failed (exit {res['returncode']}, {len(per_epoch)} epochs logged)"
    steady = per_epoch[1:]
    res.update(code=code, epoch_seconds=[round(s, 2) for s in per_epoch],
               particles_per_s=round(n / (sum(steady) / len(steady)), 2) if steady else None)
    return res


def summarize(runs: list[dict], D: int, counts: dict, rates: dict) -> dict:
    out = {}
    for code in sorted({r["code"] for r in runs}):
        rs = [r for r in runs if r["code"] == code and r.get("particles_per_s")]
        if not rs:
            continue
        pps = [r["particles_per_s"] for r in rs]
        prog = "cryodrgn" if code.startswith("cryodrgn") else "cryoscape"
        # a marching run's step shrinks and grows again: no single FLOP count, so no roofline fraction
        flops = step_flops(D, counts[prog]) if prog in counts and "march" not in code else None
        rate = rates["bf16" if "amp" in code else "fp32"] or rates["fp32"]  # no fast bf16: --amp is float32
        roof = rate / flops * ARCH["batch"] if flops else None
        out[code] = {"particles_per_s_runs": pps, "particles_per_s_mean": round(sum(pps) / len(pps), 2),
                     "peak_rss_mib_max": max(r["peak_rss_mib"] or 0 for r in rs),
                     "step_gflop": round(flops / 1e9, 3) if flops else None,
                     "roofline_particles_per_s": round(roof, 1) if roof else None,
                     "fraction_of_roofline": round(sum(pps) / len(pps) / roof, 3) if roof else None}
    ref = out.get("cryodrgn", {}).get("particles_per_s_mean")
    for v in out.values():
        v["ratio_vs_cryodrgn"] = round(v["particles_per_s_mean"] / ref, 2) if ref else None
    return out


def markdown(result: dict) -> str:
    lines = ["| D | program | particles/s (runs) | mean | x cryoDRGN | peak RSS MiB | GFLOP/step | roofline p/s | "
             "% of roofline |", "|---|---|---|---|---|---|---|---|---|"]
    for D, block in result["sizes"].items():
        for code, v in block["summary"].items():
            lines.append(f"| {D} | {code} | {', '.join(f'{p:.1f}' for p in v['particles_per_s_runs'])} | "
                         f"{v['particles_per_s_mean']:.1f} | {v['ratio_vs_cryodrgn'] or '-'} | "
                         f"{v['peak_rss_mib_max']:.0f} | {v['step_gflop'] or '-'} | "
                         f"{v['roofline_particles_per_s'] or '-'} | "
                         + (f"{100 * v['fraction_of_roofline']:.0f}% |" if v["fraction_of_roofline"] else "- |"))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="box sizes (default 64 128)")
    p.add_argument("--n", type=int, nargs="+", default=[1000, 300],
                   help="particles per box size, in --sizes order (default 1000 300)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run; epochs 2.. are timed (default 3)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats (default 2)")
    p.add_argument("--codes", nargs="+", default=["cryoscape-fp32", "cryoscape-amp", "cryodrgn"],
                   help="runs per repeat: cryoscape-fp32, cryoscape-amp, cryoscape-march (fp32 with frequency "
                        "marching), cryoscape-march-amp, cryodrgn; suffix -malloc: run with glibc's "
                        "MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1GiB (cryoscape's own allocator setting, "
                        "given to cryoDRGN), -glibc-default: cryoscape with CRYOSCAPE_KEEP_FREED_MEMORY=0")
    p.add_argument("--march-fraction", type=float, default=0.75,
                   help="cryoscape-march*: --freq-march = this fraction of --epochs (default 0.75)")
    p.add_argument("-o", "--output", default=str(BENCH / "results" / "throughput.json"))
    args = p.parse_args(argv)
    codes = [c for c in args.codes if not c.startswith("cryodrgn") or need_cryodrgn()]
    ns = (args.n * len(args.sizes))[: len(args.sizes)] if len(args.n) < len(args.sizes) else args.n
    result = {"command": " ".join(sys.argv), "machine": machine_info(), "architecture": ARCH,
              "epochs": args.epochs, "repeats": args.repeats, "sizes": {}}
    result["matmul_flops"] = {k: matmul_rate(k) for k in ("fp32", "bf16")}
    print("dense mm GFLOP/s:", {k: v and round(v / 1e9, 1) for k, v in result["matmul_flops"].items()}, flush=True)
    for D, n in zip(args.sizes, ns, strict=False):  # extra --n values are ignored
        sim = ensure_simulation("linear1d", n, D, 0.1, WORK / f"tp_D{D}_N{n}")
        counts = lattice_counts(D)
        runs = []
        block = {"n_particles": n, "lattice": counts, "runs": runs}
        result["sizes"][str(D)] = block
        for rep in range(args.repeats):
            for code in codes:
                r = one_run(code, sim, WORK / "tp_runs" / f"D{D}_{code}_{rep}", args.epochs, n, args.march_fraction)
                runs.append(r)
                print(f"D={D} {code} rep {rep}: {r['particles_per_s']} particles/s, epochs {r['epoch_seconds']} s, "
                      f"peak RSS {r['peak_rss_mib']} MiB, load {r['load_before']} -> {r['load_after']}", flush=True)
                block["summary"] = summarize(runs, D, counts, result["matmul_flops"])
                write_json(Path(args.output), result)
    result["matmul_flops_end"] = {k: matmul_rate(k) for k in ("fp32", "bf16")}
    result["load_average_end"] = load_average()
    write_json(Path(args.output), result)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
