"""Train a heterogeneous (VAE) or homogeneous model on particle images with known poses and CTF.

PARTICLES is a RELION STAR, a cryoSPARC .cs, or an .mrcs stack with cryoDRGN --poses/--ctf pkl files.
For --model tomodrgn it is a tilt-series STAR: Warp/M image series or a RELION 5 *_optimisation_set.star.
Writes RUN/config.yaml, RUN/log.txt, RUN/metrics.csv, RUN/checkpoints/epoch_NNN.pt and RUN/latents/epoch_NNN.npy.
Stop with Ctrl-C (a checkpoint is written) and continue with --resume. Multi-GPU: torchrun --nproc_per_node=4 -m cryoscape train ...

Example:
  cryoscape train particles.star -o runs/vae8 --model cryodrgn --zdim 8 -n 25 -b 16
  cryoscape train particles.mrcs --poses pose.pkl --ctf ctf.pkl -o runs/homo --zdim 0
  cryoscape train particles.star -o runs/opus --model opus-dsd --zdim 8 -n 20 --mask mask.mrc --lamb 0.5
  cryoscape train sim_tilt/particles.star -o runs/tomo --model tomodrgn --zdim 8 -n 20 -b 8
"""

from __future__ import annotations

import argparse

from cryoscape.config import PE_TYPES, DataConfig, ModelConfig, RunConfig, TrainConfig

OPUS_DSD_BATCH_SIZE = 72  # the paper's batch size, the default for --model opus-dsd
TOMODRGN_BATCH_SIZE = 1  # particles per batch in the tomoDRGN paper, the default for --model tomodrgn
TOMODRGN_LR = 2e-4  # the tomoDRGN paper's learning rate, the default for --model tomodrgn


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
    t.add_argument("-b", "--batch-size", type=int, default=None,
                   help=f"batch size per process (default 16; {OPUS_DSD_BATCH_SIZE} for opus-dsd; "
                        f"{TOMODRGN_BATCH_SIZE} particle for tomodrgn)")
    t.add_argument("--lr", type=float, default=None, help=f"learning rate (default 1e-4; {TOMODRGN_LR} for tomodrgn)")
    t.add_argument("--wd", type=float, default=0.0, help="weight decay (default 0)")
    t.add_argument("--beta", type=float, help="KL weight (default 1/zdim; 0.01 for opus-dsd)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--amp", action="store_true",
                   help="mixed precision: bfloat16 autocast on CUDA (float16 on GPUs without bfloat16) and on CPUs "
                        "with AVX-512 BF16; elsewhere float32 with a warning")
    t.add_argument("--freq-march", type=float, default=0.0, metavar="EPOCHS",
                   help="cryodrgn family: frequency marching; the training lattice's radius grows linearly from "
                        "--march-start x Nyquist to Nyquist over the first EPOCHS epochs (fewer points decoded "
                        "while the low resolutions are learnt; default 0 = full lattice throughout)")
    t.add_argument("--march-start", type=float, default=0.25,
                   help="starting radius of --freq-march as a fraction of Nyquist (default 0.25)")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    t.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints (default 1)")
    t.add_argument("--threads", type=int, help="CPU threads for torch")
    t.add_argument("--resume", action="store_true", help="continue the run in OUTDIR from its latest checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_opus_args(p)
    _add_tomodrgn_args(p)


def _add_tomodrgn_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tomodrgn", "options of --model tomodrgn (tilt series; see docs/tomography.md)")
    g.add_argument("--tilt-format", default="auto", choices=["auto", "imageseries", "optimisation_set"],
                   help="input kind (default: detected from the file's content)")
    g.add_argument("--pooling", default="concatenate", choices=["concatenate", "max", "mean", "median"],
                   help="how encoder B combines the tilts of a particle (default concatenate)")
    g.add_argument("--ntilts", type=int,
                   help="tilts sampled per particle (default: the fewest of any particle for concatenate, else all)")
    g.add_argument("--tilt-embed-dim", type=int, default=128, help="encoder A output per tilt (default 128)")
    g.add_argument("--enc-dim-b", type=int, help="encoder B width (default --enc-dim)")
    g.add_argument("--enc-layers-b", type=int, help="encoder B hidden layers (default --enc-layers)")
    g.add_argument("--kl-norm", default="scored", choices=["scored", "paper"],
                   help="KL divided by the particle's summed pixel weights (scored, default) or tilts x D^2 (paper)")
    g.add_argument("--no-dose-weight", action="store_true", help="do not weight errors by exposure attenuation")
    g.add_argument("--no-tilt-weight", action="store_true", help="do not weight errors by cos(tilt)")
    g.add_argument("--no-dose-mask", action="store_true",
                   help="decode and score every frequency (no optimal-exposure lattice mask)")
    g.add_argument("--images-dose-weighted", action="store_true",
                   help="the stacks were exposure-filtered at extraction (e.g. RELION 5 / WarpTools 2-D stacks)")


def _add_opus_args(p: argparse.ArgumentParser) -> None:
    o = p.add_argument_group("opus-dsd", "options of --model opus-dsd (see docs/opus-dsd.md)")
    o.add_argument("--templateres", type=int,
                   help="decoder output box, a multiple of 16 (default: image box rounded up to 16, at least 32)")
    o.add_argument("--channel-scale", type=float, default=None,
                   help="multiply the conv networks' channel counts (default: 1 = the paper's widths on a GPU, "
                        "0.25 on a CPU; the value used is logged and recorded in config.yaml)")
    o.add_argument("--mask", help="solvent mask MRC (default: a sphere of radius 0.85 * D/2)")
    o.add_argument("--lamb", type=float, default=0.5, help="structural-disentanglement prior weight (default 0.5)")
    o.add_argument("--knn", type=int, default=128, help="inter-class nearest neighbours (default 128)")
    o.add_argument("--kfarthest", type=int, default=512, help="inter-class farthest points (default 512)")
    o.add_argument("--n-samples", type=int, default=12800,
                   help="memory-bank codes of other classes sampled per batch (default 12800)")
    o.add_argument("--knn-intra", type=int, default=4, help="nearest neighbours within a batch (default 4)")
    o.add_argument("--momentum", type=float, default=0.7, help="memory-bank momentum (default 0.7)")
    o.add_argument("--tv-weight", type=float, default=1.0, help="total-variation prior weight (default 1)")
    o.add_argument("--l1-weight", type=float, default=0.3, help="L1 prior weight (default 0.3)")
    o.add_argument("--anneal-images", type=int, default=100000,
                   help="images per cycle ramp of the KL/prior annealing; 0 = off (default 100000)")
    o.add_argument("--lr-decay", type=float, default=0.95, help="learning-rate factor per epoch (default 0.95)")


def config_from_args(args) -> RunConfig:
    """The typed configuration described by the command line."""
    from pathlib import Path

    from cryoscape.errors import InputError

    if args.mask and not Path(args.mask).is_file():
        raise InputError("mask file not found", args.mask)
    batch_size = args.batch_size
    if batch_size is None:
        batch_size = {"opus-dsd": OPUS_DSD_BATCH_SIZE, "tomodrgn": TOMODRGN_BATCH_SIZE}.get(args.model, 16)
    lr = args.lr if args.lr is not None else (TOMODRGN_LR if args.model == "tomodrgn" else 1e-4)
    return RunConfig(
        data=DataConfig(particles=args.particles, poses=args.poses, ctf=args.ctf, datadir=args.datadir,
                        apix=args.apix, ind=args.ind, lazy=args.lazy, invert_data=args.invert_data,
                        window=not args.no_window, val_frac=args.val_frac, num_workers=args.num_workers,
                        tilt_format=args.tilt_format),
        model=ModelConfig(family=args.model, zdim=args.zdim, enc_dim=args.enc_dim, enc_layers=args.enc_layers,
                          dec_dim=args.dec_dim, dec_layers=args.dec_layers, pe_type=args.pe_type, pe_dim=args.pe_dim,
                          feat_sigma=args.feat_sigma, activation=args.activation, templateres=args.templateres,
                          channel_scale=args.channel_scale, mask=args.mask, pooling=args.pooling,
                          ntilts=args.ntilts, tilt_embed_dim=args.tilt_embed_dim, enc_dim_b=args.enc_dim_b,
                          enc_layers_b=args.enc_layers_b, kl_norm=args.kl_norm,
                          recon_dose_weight=not args.no_dose_weight, recon_tilt_weight=not args.no_tilt_weight,
                          dose_mask=not args.no_dose_mask, images_dose_weighted=args.images_dose_weighted),
        train=TrainConfig(epochs=args.epochs, batch_size=batch_size, lr=lr, weight_decay=args.wd,
                          beta=args.beta, seed=args.seed, amp=args.amp, device=args.device,
                          checkpoint_every=args.checkpoint_every, threads=args.threads,
                          freq_march=args.freq_march, march_start=args.march_start, lamb=args.lamb,
                          knn=args.knn, kfarthest=args.kfarthest, n_samples=args.n_samples,
                          knn_intra=args.knn_intra, momentum=args.momentum, tv_weight=args.tv_weight,
                          l1_weight=args.l1_weight, anneal_images=args.anneal_images, lr_decay=args.lr_decay),
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
