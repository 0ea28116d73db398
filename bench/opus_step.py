"""Time one OPUS-DSD training step in-process (forward, backward, Adam), optionally with a profile.

Random images and poses, the model of ``cryoscape train --model opus-dsd`` with the given size; no data loading,
so the figure is the step's own cost. Run it against another checkout with ``PYTHONPATH=OTHER/src`` to compare
two versions of the code under the same machine load (interleave the runs).

    .venv/bin/python bench/opus_step.py -D 64 --batch 72 --threads 1 --steps 2 [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from torch.profiler import ProfilerActivity, profile


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-D", "--box", type=int, default=64)
    p.add_argument("--batch", type=int, default=72)
    p.add_argument("--channel-scale", type=float, default=0.25)
    p.add_argument("--lamb", type=float, default=0.0, help="prior weight (default 0: the prior's cost excluded)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    p.add_argument("--profile", action="store_true", help="print torch.profiler's table of the timed steps")
    args = p.parse_args(argv)

    from cryoscape.imaging.rotations import random_rotations
    from cryoscape.models.opus_dsd import OpusDSD

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    B, D = args.batch, args.box
    model = OpusDSD(D, 3.0, 4 * B, zdim=8, channel_scale=args.channel_scale, lamb=args.lamb).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = {
        "y": torch.randn(B, D, D),
        "rot": torch.as_tensor(random_rotations(B, 0), dtype=torch.float32),
        "index": torch.arange(B),
        "view_class": torch.zeros(B, dtype=torch.long),
    }

    def step():
        opt.zero_grad(set_to_none=True)
        model(batch)["loss"].backward()
        opt.step()

    step()
    with (profile(activities=[ProfilerActivity.CPU]) if args.profile else contextlib.nullcontext()) as prof:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        seconds = (time.perf_counter() - t0) / args.steps
    if prof is not None:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    print(f"D={D} batch={B} channel_scale={args.channel_scale} threads={args.threads}: "
          f"{seconds:.2f} s per step, {B / seconds:.1f} images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
