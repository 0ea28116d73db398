"""Train a heterogeneous (VAE) or homogeneous model on particle images with known poses and CTF.

PARTICLES is a RELION STAR, a cryoSPARC .cs, or an .mrcs stack with cryoDRGN --poses/--ctf pkl files.
Writes RUN/config.yaml, RUN/log.txt, RUN/metrics.csv, RUN/checkpoints/epoch_NNN.pt and RUN/latents/epoch_NNN.npy.
Stop with Ctrl-C (a checkpoint is written) and continue with --resume. Multi-GPU: torchrun --nproc_per_node=4 -m cryoscape train ...

Example:
  cryoscape train particles.star -o runs/vae8 --model cryodrgn --zdim 8 -n 25 -b 16
  cryoscape train particles.mrcs --poses pose.pkl --ctf ctf.pkl -o runs/homo --zdim 0
"""

from __future__ import annotations

import argparse

from cryoscape.config import PE_TYPES, DataConfig, ModelConfig, RunConfig, TrainConfig


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("particles", help="STAR, .cs or .mrcs input")
    p.add_argument("-o", "--outdir", required=True, help="run folder to write")
    d = p.add_argument_group("data")
    d.add_argument("--poses", help="cryoDRGN pose.pkl (overrides poses in the STAR/.cs)")
    d.add_argument("--ctf", help="cryoDRGN ctf.pkl (overrides CTF in the STAR/.cs)")
    d.add_argument("--datadir", help="folder to find the image stacks in (default: next to the STAR/.cs)")
    d.add_argument("--apix", type=float, help="pixel size in Angstrom (overrides the file's)")
    d.add_argument("--ind", help="train on a subset: indices as .npy, .txt or cryoDRGN .pkl")
    d.add_argument("--lazy", action="store_true", help="read images from disk per batch (stacks larger than RAM)")
    d.add_argument("--invert-data", action="store_true",
                   help="multiply images by -1 (for stacks where the protein is dark; RELION/cryoSPARC stacks are not)")
    d.add_argument("--no-window", action="store_true", help="do not apply the soft circular real-space window")
    d.add_argument("--val-frac", type=float, default=0.1, help="fraction held out for validation (default 0.1)")
    d.add_argument("--num-workers", type=int, default=0, help=argparse.SUPPRESS)
    m = p.add_argument_group("model")
    m.add_argument("--model", default="cryodrgn", choices=["cryodrgn", "tomodrgn", "opus-dsd"], help="model family")
    m.add_argument("--zdim", type=int, default=8, help="latent dimension; 0 = homogeneous reconstruction (default 8)")
    m.add_argument("--enc-dim", type=int, default=256, help="encoder width (default 256)")
    m.add_argument("--enc-layers", type=int, default=3, help="encoder hidden layers (default 3)")
    m.add_argument("--dec-dim", type=int, default=256, help="decoder width (default 256)")
    m.add_argument("--dec-layers", type=int, default=3, help="decoder hidden layers (default 3)")
    m.add_argument("--pe-type", default="gaussian", choices=PE_TYPES, help="positional encoding (default gaussian)")
    m.add_argument("--pe-dim", type=int, help="frequencies per axis (default D/2)")
    m.add_argument("--feat-sigma", type=float, default=0.5, help="scale of the gaussian features (default 0.5)")
    m.add_argument("--activation", default="relu", choices=["relu", "leaky_relu"])
    t = p.add_argument_group("training")
    t.add_argument("-n", "--epochs", type=int, default=20, help="epochs (default 20)")
    t.add_argument("-b", "--batch-size", type=int, default=16, help="batch size per process (default 16)")
    t.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    t.add_argument("--wd", type=float, default=0.0, help="weight decay (default 0)")
    t.add_argument("--beta", type=float, help="KL weight (default 1/zdim)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--amp", action="store_true", help="mixed precision on CUDA")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    t.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints (default 1)")
    t.add_argument("--threads", type=int, help="CPU threads for torch")
    t.add_argument("--resume", action="store_true", help="continue the run in OUTDIR from its latest checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args) -> RunConfig:
    """The typed configuration described by the command line."""
    return RunConfig(
        data=DataConfig(particles=args.particles, poses=args.poses, ctf=args.ctf, datadir=args.datadir,
                        apix=args.apix, ind=args.ind, lazy=args.lazy, invert_data=args.invert_data,
                        window=not args.no_window, val_frac=args.val_frac, num_workers=args.num_workers),
        model=ModelConfig(family=args.model, zdim=args.zdim, enc_dim=args.enc_dim, enc_layers=args.enc_layers,
                          dec_dim=args.dec_dim, dec_layers=args.dec_layers, pe_type=args.pe_type, pe_dim=args.pe_dim,
                          feat_sigma=args.feat_sigma, activation=args.activation),
        train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.wd,
                          beta=args.beta, seed=args.seed, amp=args.amp, device=args.device,
                          checkpoint_every=args.checkpoint_every, threads=args.threads),
    )


def run(args) -> int:
    from cryoscape.train.engine import TrainingInterrupted
    from cryoscape.train.run import train

    try:
        train(config_from_args(args), args.outdir, resume=args.resume, progress=not args.no_progress)
    except TrainingInterrupted as exc:
        print(f"cryoscape train: {exc}")
        return 130
    return 0
