"""Large-stack (lazy loading) check: peak memory and throughput of ``cryoscape train --lazy`` and ``eval-images``.

One command::

    .venv/bin/python -m bench.scale --n 1000000 --train-n 2000 --train-all --eval-all --batch 128 \
        --train-args "--freq-march 1e6 --march-start 0.1"      # the issue's test (16 GB), ~10 min on 2 cores
    .venv/bin/python -m bench.scale --n 200000 --train-n 2000

1. Writes a large D=64 float32 stack quickly: the images of a small ``cryoscape simulate`` set (``--source``,
   simulated once) tiled into a .mrcs of ``--n`` images (written through a memory map), plus a RELION 3.1 STAR
   whose rows repeat the source's poses and CTFs (``bench/_work/scale_N/``).
2. ``cryoscape train --lazy`` for one epoch with a small network (enc/dec 2x32, zdim 8) on ``--train-n`` particles
   spread evenly over the whole stack (``--ind``; the images are read from the 16 GB file per batch), and the
   same subset in memory (no ``--lazy``) for the throughput comparison.
   With ``--train-all``, one ``--lazy`` epoch over every image of the stack as well (the issue's test).
3. ``cryoscape eval-images RUN`` on the trained subset read lazily from the large stack (batch 256); with
   ``--eval-all``, ``eval-images RUN --particles STACK.star`` encodes every image of the stack.
Peak RSS of each command comes from ``/usr/bin/time -v``; the target is < 4 GB.

Writes ``bench/results/scale.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import (
    BENCH,
    CRYOSCAPE_CMD,
    WORK,
    TrainSpec,
    cryoscape_epochs,
    ensure_simulation,
    machine_info,
    run_timed,
    tail,
    train_command,
    write_json,
)


def write_big_stack(source: Path, n: int, out: Path, chunk: int = 20000) -> dict:
    """Tile ``source/particles.mrcs`` into ``out/particles.mrcs`` (``n`` images) and write ``out/particles.star``."""
    import mrcfile
    import starfile

    out.mkdir(parents=True, exist_ok=True)
    stack, star = out / "particles.mrcs", out / "particles.star"
    if stack.is_file() and star.is_file():
        return {"reused": True, "bytes": stack.stat().st_size}
    t0 = time.perf_counter()
    with mrcfile.open(source / "particles.mrcs", permissive=True) as m:
        src = np.asarray(m.data, dtype=np.float32)
        voxel = float(m.voxel_size.x)
    m_src, D = src.shape[0], src.shape[-1]
    tmp = stack.with_suffix(".tmp.mrcs")
    with mrcfile.new_mmap(tmp, shape=(n, D, D), mrc_mode=2, overwrite=True) as m:
        m.voxel_size = voxel
        m.set_image_stack()
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            m.data[start:stop] = src[np.arange(start, stop) % m_src]
        m.update_header_stats = lambda *a, **k: None  # stats of a tiled stack are not needed
    tmp.replace(stack)
    t_stack = time.perf_counter() - t0
    data = starfile.read(source / "particles.star", always_dict=True)
    parts = data["particles"]
    rows = parts.iloc[np.arange(n) % m_src].reset_index(drop=True)
    rows["rlnImageName"] = [f"{i + 1:07d}@particles.mrcs" for i in range(n)]
    starfile.write({"optics": data["optics"], "particles": rows}, star, overwrite=True)
    return {"reused": False, "bytes": stack.stat().st_size, "stack_seconds": round(t_stack, 1),
            "total_seconds": round(time.perf_counter() - t0, 1)}


def train_cmd(star: Path, out: Path, ind: Path | None, lazy: bool, batch: int = 32, extra: str = "") -> list[str]:
    return train_command(TrainSpec(star, out, zdim=8, enc_dim=32, enc_layers=2, dec_dim=32, dec_layers=2,
                                   batch=batch, epochs=1, val_frac=0.0, ind=ind, lazy=lazy, extra=shlex.split(extra)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000, help="images in the large stack (default 1,000,000)")
    p.add_argument("--train-n", type=int, default=2000, help="particles trained on, spread over the stack")
    p.add_argument("--train-all", action="store_true",
                   help="also train one --lazy epoch over every image of the stack (the issue's test)")
    p.add_argument("--batch", type=int, default=32, help="batch size of the training runs (default 32)")
    p.add_argument("--train-args", default="",
                   help="extra `cryoscape train` options of every training run, e.g. \"--freq-march 1e6 --march-start "
                        "0.1\" to shrink the decoded lattice to a 3-pixel radius so that the epoch measures the data "
                        "path (reads, FFT, batching) rather than the network")
    p.add_argument("--skip-eval", action="store_true", help="do not run eval-images")
    p.add_argument("--eval-all", action="store_true", help="eval-images over the whole stack (not just the subset)")
    p.add_argument("-o", "--output", default=str(BENCH / "results" / "scale.json"))
    args = p.parse_args(argv)
    import shutil

    source = ensure_simulation("linear1d", 2000, 64, 0.1, WORK / "tp_D64")
    big = WORK / f"scale_{args.n}"
    result = {"command": " ".join(sys.argv), "machine": machine_info(), "n": args.n, "train_n": args.train_n,
              "batch": args.batch, "train_args": args.train_args}
    result["write"] = write_big_stack(source, args.n, big)
    print("stack:", result["write"], flush=True)
    ind = big / f"ind_{args.train_n}.npy"
    np.save(ind, np.linspace(0, args.n - 1, args.train_n).round().astype(np.int64))
    result["runs"] = {}
    plan = [("train_lazy", True, ind), ("train_in_memory", False, ind)]
    if args.train_all:
        plan.append(("train_lazy_all", True, None))
    for name, lazy, subset in plan:
        out = big / name
        if out.exists():
            shutil.rmtree(out)
        r = run_timed(train_cmd(big / "particles.star", out, subset, lazy, args.batch, args.train_args),
                      big / f"{name}.log")
        rows = cryoscape_epochs(out) if (out / "metrics.csv").is_file() else []
        r["particles_per_s"] = round(rows[0]["particles_per_s"], 1) if rows else None
        if r["returncode"] != 0:
            r["error"] = tail(Path(r["log"]))
        result["runs"][name] = r
        print(name, {k: r[k] for k in ("wall_s", "peak_rss_mib", "particles_per_s", "load_before")}, flush=True)
        write_json(Path(args.output), result)
    if not args.skip_eval:
        extra = ["--particles", str(big / "particles.star")] if args.eval_all else []
        run = big / ("train_lazy_all" if args.train_all else "train_lazy")
        r = run_timed([*CRYOSCAPE_CMD, "eval-images", str(run), *extra, "-o", str(big / "z_eval.npy"),
                       "-b", "256", "--device", "cpu"], big / "eval_images.log")
        n_eval = args.n if args.eval_all else args.train_n
        r["images_encoded"] = n_eval
        r["images_per_s"] = round(n_eval / r["wall_s"], 1)  # includes start-up
        if r["returncode"] != 0:
            r["error"] = tail(Path(r["log"]))
        result["runs"]["eval_images_all" if args.eval_all else "eval_images_subset"] = r
        print("eval-images", {k: r[k] for k in ("wall_s", "peak_rss_mib", "images_per_s")}, flush=True)
    write_json(Path(args.output), result)
    print("| step | wall s | peak RSS MiB | particles/s |\n|---|---|---|---|")
    for k, r in result["runs"].items():
        rate = r.get("particles_per_s") or r.get("images_per_s")
        print(f"| {k} | {r['wall_s']:.0f} | {r['peak_rss_mib']} | {rate} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
