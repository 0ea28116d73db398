"""Timing parts of ``bench/gpu_check.sh``: ``--amp`` against float32, and ``torchrun`` with one process against a
plain run, on one simulated data set (the cryoDRGN comparison is ``bench.throughput``, called by the shell script).

    .venv/bin/python -m bench.gpu_check --device cuda -D 128 -N 2000 --epochs 3 -o OUT.json   # on a GPU
    .venv/bin/python -m bench.gpu_check --device cpu -D 32 -N 64 --epochs 2 -o OUT.json       # smoke, any machine

Throughput is particles/s of epochs 2.. (``metrics.csv``), as in ``bench.throughput``. With one process cryoscape
does not wrap the model in DDP (the engine wraps it only when ``WORLD_SIZE`` > 1), so ``torchrun
--nproc_per_node=1`` measures the launcher and the single-process path under it; the all-reduce of real DDP needs
two or more processes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from bench.common import WORK, TrainSpec, ensure_simulation, machine_info, tail, timed_train, write_json

ARCH = dict(zdim=8, enc_layers=3, enc_dim=256, dec_layers=3, dec_dim=256, batch=32)  # as bench.throughput


def steady_rate(rows: list[dict], n: int) -> float | None:
    """Particles/s over epochs 2.. (the first epoch holds start-up costs); ``None`` with fewer than 2 epochs."""
    steady = [r["seconds"] for r in rows[1:]]
    return round(n * len(steady) / sum(steady), 1) if steady else None


def one(name: str, sim: Path, n: int, epochs: int, device: str, amp: bool = False,
        prefix: list[str] | None = None) -> dict:
    out = WORK / "gpu_check" / name
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    spec = TrainSpec(sim / "particles.star", out, model="cryodrgn", zdim=ARCH["zdim"], enc_layers=ARCH["enc_layers"],
                     enc_dim=ARCH["enc_dim"], dec_layers=ARCH["dec_layers"], dec_dim=ARCH["dec_dim"],
                     pe_type="gaussian", feat_sigma=0.5, batch=ARCH["batch"], epochs=epochs, lr=1e-4, val_frac=0.0,
                     checkpoint_every=epochs, amp=amp, extra=["--device", device])
    res, rows = timed_train(spec, prefix=prefix)
    res["epoch_seconds"] = [round(r["seconds"], 3) for r in rows]
    res["particles_per_s"] = steady_rate(rows, n)
    if res["returncode"] != 0:
        res["error"] = tail(Path(res["log"]))
    print(f"{name}: exit {res['returncode']}, {res['particles_per_s']} particles/s, wall {res['wall_s']} s, "
          f"epochs {res['epoch_seconds']} s", flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda or cpu (default cuda)")
    p.add_argument("-D", type=int, default=128, help="box size (default 128)")
    p.add_argument("-N", type=int, default=2000, help="particles (default 2000)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run, 2.. timed (default 3)")
    p.add_argument("--parts", nargs="+", default=["amp", "ddp"], choices=["amp", "ddp"])
    p.add_argument("-o", "--output", required=True, help="JSON output")
    args = p.parse_args(argv)
    sim = ensure_simulation("linear1d", args.N, args.D, 0.1, WORK / f"tp_D{args.D}_N{args.N}")
    result: dict = {"command": " ".join(sys.argv), "machine": machine_info(), "device": args.device, "D": args.D,
                    "n": args.N, "epochs": args.epochs, "architecture": ARCH, "runs": {}}
    runs = result["runs"]
    runs["fp32"] = one("fp32", sim, args.N, args.epochs, args.device)
    if "amp" in args.parts:
        runs["amp"] = one("amp", sim, args.N, args.epochs, args.device, amp=True)
    if "ddp" in args.parts:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                    "-m", "cryoscape"]
        runs["torchrun1"] = one("torchrun1", sim, args.N, args.epochs, args.device, prefix=torchrun)
    base = runs["fp32"].get("particles_per_s")
    for r in runs.values():
        r["ratio_vs_fp32"] = round(r["particles_per_s"] / base, 3) if base and r.get("particles_per_s") else None
    write_json(Path(args.output), result)
    print("| run | particles/s | x fp32 | wall s |\n|---|---|---|---|")
    for name, r in runs.items():
        print(f"| {name} | {r['particles_per_s']} | {r['ratio_vs_fp32']} | {r['wall_s']} |")
    return 0 if all(r["returncode"] == 0 for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
