"""Encode particles with a trained model: posterior means z (N x zdim float32 .npy).

By default the run's own particles (in RUN/indices.npy order); give PARTICLES (with --poses/--ctf as for
training) to encode other images prepared the same way. An existing output file is replaced only with --overwrite.

Example:
  cryoscape eval-images runs/vae8 -o runs/vae8/z.npy
  cryoscape eval-images runs/vae8 --epoch 10 --particles other.star -o z_other.npy
"""

from __future__ import annotations

import argparse

from cryoscape.cli._options import add_cs_alignments_arg, add_ctf_override_args, ctf_overrides_from_args


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder written by `cryoscape train`")
    p.add_argument("-o", "--output", required=True, help="output .npy (N x zdim)")
    p.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    p.add_argument("--epoch", type=int, help="epoch to use (default: best_epoch, else the last)")
    p.add_argument("--particles", help="encode these particles instead of the run's")
    p.add_argument("--poses", help="pose.pkl for --particles")
    p.add_argument("--ctf", help="ctf.pkl for --particles")
    p.add_argument("--datadir", help="folder of the image stacks")
    p.add_argument("-b", "--batch-size", type=int, default=256, help="batch size (default 256)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    add_cs_alignments_arg(p)
    add_ctf_override_args(p, "--particles (or its --ctf pkl); default: those the run was trained with")


def run(args) -> int:
    from cryoscape.inference import encode_particles
    from cryoscape.utils.outputs import check_output_file

    check_output_file(args.output, "eval-images", args.overwrite)
    z = encode_particles(args.run, args.output, epoch=args.epoch, particles=args.particles, poses=args.poses,
                         ctf=args.ctf, datadir=args.datadir, batch_size=args.batch_size, device=args.device,
                         ctf_overrides=ctf_overrides_from_args(args), cs_alignments=args.cs_alignments)
    print(f"wrote {args.output}: {z.shape[0]} x {z.shape[1]} latents")
    return 0
