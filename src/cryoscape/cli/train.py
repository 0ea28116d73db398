"""Train a heterogeneous (VAE) or homogeneous model on particle images with known poses and CTF.

PARTICLES is a RELION STAR, a cryoSPARC .cs, or an .mrcs stack with cryoDRGN --poses/--ctf pkl files.
For --model tomodrgn it is a tilt-series STAR: Warp/M image series or a RELION 5 *_optimisation_set.star.
Writes RUN/config.yaml, RUN/log.txt, RUN/metrics.csv, RUN/checkpoints/epoch_NNN.pt and RUN/latents/epoch_NNN.npy.
Stop with Ctrl-C (a checkpoint is written) and continue with --resume: the run goes on with the configuration
recorded in RUN/config.yaml (its epochs unless -n is given; -n, --device, --threads and --no-progress may change,
any other option that differs from the recorded value is refused). --load RUN starts a new run from another
run's model weights. Multi-GPU: torchrun --nproc_per_node=4 -m cryoscape train ...

Example:
  cryoscape train particles.star -o runs/vae8 --model cryodrgn --zdim 8 -n 25
  cryoscape train particles.star -o runs/vae8 --resume               # after Ctrl-C: continue to epoch 25
  cryoscape train particles.star -o runs/vae8 --resume -n 40         # train a finished run further
  cryoscape train particles.star --ind keep.npy -o runs/vae8_keep --zdim 8 --load runs/vae8
  cryoscape train particles.mrcs --poses pose.pkl --ctf ctf.pkl -o runs/homo --zdim 0
  cryoscape train particles.star -o runs/opus --model opus-dsd --zdim 8 -n 20 --mask mask.mrc --lamb 0.5
  cryoscape train sim_tilt/particles.star -o runs/tomo --model tomodrgn --zdim 8 -n 20 -b 8
"""

from __future__ import annotations

import argparse
import dataclasses

from cryoscape.cli._options import add_cs_alignments_arg, add_ctf_override_args
from cryoscape.config import (
    MODEL_CONFIGS,
    PE_TYPES,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    model_config_class,
    model_fields,
    option_name,
)

# option dest -> (section of RunConfig, field, negated) where the field is not the dest itself
_RENAMED = {"model": ("model", "family", False), "wd": ("train", "weight_decay", False),
            "no_window": ("data", "window", True), "no_dose_weight": ("model", "recon_dose_weight", True),
            "no_tilt_weight": ("model", "recon_tilt_weight", True), "no_dose_mask": ("model", "dose_mask", True)}
_NOT_CONFIG = ("outdir", "resume", "no_progress")  # options of the command, not of the run
# The parser's defaults are None so that the options given on the command line can be told apart (--resume
# refuses those that conflict with the recorded run); the real defaults, filled in by config_from_args:
_DEFAULTS: dict[str, object] = {}


def _short(x: float) -> str:
    """``1e-3`` rather than ``0.001``."""
    mantissa, exponent = f"{x:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def _family_names() -> list[str]:
    """The registered families (``models.registry``), the list written once."""
    from cryoscape.models.registry import FAMILIES

    return list(FAMILIES)


def _family_defaults_text() -> tuple[str, str]:
    """(batch sizes, learning rates) of every family for the help texts, from the families themselves."""
    from cryoscape.models.registry import FAMILIES

    batch = "; ".join(f"{name} {f.default_batch_size}" + (" particle" if name == "tomodrgn" else "")
                      for name, f in FAMILIES.items())
    lr = "; ".join(f"{name} {_short(f.default_lr)}" for name, f in FAMILIES.items())
    return batch, lr


def add_args(p: argparse.ArgumentParser) -> None:
    first = len(p._actions)
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
    d.add_argument("--val-frac", type=float, default=None,
                   help="fraction of the particles held out for a validation loss and RUN/best_epoch (default: "
                        "the family's; cryodrgn and tomodrgn 0: every particle trained, as cryoDRGN and tomoDRGN; "
                        "opus-dsd 0.1). A held-out particle's latent is only inferred, and worse")
    d.add_argument("--num-workers", type=int, default=0, help=argparse.SUPPRESS)
    add_cs_alignments_arg(d)
    add_ctf_override_args(p)
    m = p.add_argument_group("model")
    m.add_argument("--model", default="cryodrgn", choices=_family_names(), help="model family")
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
    batch_defaults, lr_defaults = _family_defaults_text()
    t.add_argument("-n", "--epochs", type=int, default=20,
                   help="epochs (default 20; with --resume: the run's recorded epochs, and -n extends or shortens "
                        "them)")
    t.add_argument("-b", "--batch-size", type=int, default=None,
                   help=f"batch size per process (default: the family's; {batch_defaults})")
    t.add_argument("--lr", type=float, default=None,
                   help=f"learning rate (default: the family's; {lr_defaults}; measured in bench/RESULTS.md sections "
                        "9f and 9i (cryodrgn, 10^3-10^5 particles; opus-dsd) and 9d (tomodrgn))")
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
    t.add_argument("--ctf-field", type=int, default=1, metavar="F",
                   help="cryodrgn family: render each image as it was cut from its micrograph: the slice's projection "
                        "placed in a field F boxes wide, the CTF applied there, the box cut out and windowed as the "
                        "images are, so that the signal the CTF spreads beyond the box is lost, not wrapped back in "
                        "(default 1: the CTF on the box's own spectrum, cryoDRGN's model, exact for images simulated "
                        "that way, e.g. `simulate` without --field). 2 gave decoder maps 0.03 better on cut images "
                        "but a slightly worse latent space; about 10 %% more time per step at D=64; "
                        "the pose steps of --refine-poses and abinit keep the box's own spectrum (bench/RESULTS.md "
                        "section 10e)")
    t.add_argument("--focus-mask", metavar="MASK.mrc",
                   help="cryodrgn family: focused heterogeneity on the region of this soft mask (values in [0, 1], "
                        "the particles' box and pixel size). Each image x becomes w * (x - s CTF P[(1 - M) V]): the "
                        "consensus V outside the mask M is subtracted, and each pixel is weighted by w, the square "
                        "of the share of the consensus density along its ray that lies inside the mask (0 where the "
                        "ray misses the mask; the rendered slices get the same weight). V is back-projected from the "
                        "particles (FSC-weighted) and stored in RUN/focus/; decoder maps are of the subtracted, "
                        "weighted signal (docs/choosing-a-model.md)")
    t.add_argument("--focus-consensus", metavar="MAP.mrc",
                   help="--focus-mask: the consensus map to subtract (default: back-projected from the particles); "
                        "scaled to the images by least squares, copied to RUN/focus/consensus.mrc")
    t.add_argument("--refine-poses", action="store_true",
                   help="cryodrgn family (VAE and --zdim 0): refine the consensus poses during training, a rotation "
                        "(axis-angle) and an in-plane shift correction per particle; the validation particles keep "
                        "their poses; learned poses in RUN/poses/, written out by `cryoscape write-poses`. tomodrgn: "
                        "one rotation and 3-D shift per particle for all its tilts. The map and all poses may drift "
                        "together by a fraction of a degree or pixel (the images cannot see it; `analyze` reports "
                        "it for single-particle runs): compare with a consensus map after `cryoscape fsc --align`")
    t.add_argument("--pose-method", choices=("local", "sgd"), default="local",
                   help="--refine-poses: local = one damped Gauss-Newton step of each particle's rotation and shift "
                        "every time it is visited, against the current decoder (3 more decoder passes on the "
                        "compared pixels; default); sgd = one per-particle Adam step on the loss gradient, as "
                        "cryoDRGN's --do-pose-sgd (see bench/RESULTS.md)")
    t.add_argument("--pose-search-radius", type=float, default=0.5, metavar="FRACTION",
                   help="--pose-method local: compare pixels up to this fraction of Nyquist (default 0.5; 1.0 uses "
                        "every pixel: more accurate poses and a sharper map, e.g. 1.6 instead of 1.9 degrees in "
                        "bench/RESULTS.md 11d, at about 4x the extra cost)")
    t.add_argument("--pose-lr", type=float, default=2e-3,
                   help="--pose-method sgd: Adam step of the rotation corrections in radians (default 2e-3; larger "
                        "steps random-walk where one image says little about its orientation, see bench/RESULTS.md)")
    t.add_argument("--shift-lr", type=float, default=0.1,
                   help="--pose-method sgd: Adam step of the shift corrections in pixels (default 0.1)")
    t.add_argument("--refine-start", type=int, default=2, metavar="EPOCH",
                   help="--refine-poses: first epoch whose steps refine the poses; earlier epochs train with the "
                        "consensus poses (default 2)")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    t.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints (default 1)")
    t.add_argument("--threads", type=int, help="CPU threads for torch")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in OUTDIR from its latest checkpoint with its recorded configuration "
                        "(RUN/config.yaml); -n, --device, --threads and --no-progress may be given to change them, "
                        "any other option must equal the recorded value")
    t.add_argument("--load", metavar="RUN_OR_CHECKPOINT",
                   help="start from the model weights of another run (its best epoch, else its last) or of a "
                        "checkpoint file; the family and architecture must match; fresh optimizer, epochs from 1")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_opus_args(p)
    _add_tomodrgn_args(p)
    for action in p._actions[first:]:
        if action.option_strings and action.dest != "help":
            _DEFAULTS[action.dest] = action.default
            action.default = None


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


def _field_of(dest: str) -> tuple[str, str, bool] | None:
    """(section, field, negated) of RunConfig that the option ``dest`` sets; None for the command's own options."""
    if dest in _RENAMED:
        return _RENAMED[dest]
    if dest in _NOT_CONFIG or dest.startswith("_"):
        return None
    for section, names in (("data", {f.name for f in dataclasses.fields(DataConfig)}), ("model", model_fields()),
                           ("train", {f.name for f in dataclasses.fields(TrainConfig)})):
        if dest in names:
            return section, dest, False
    return None


def _refuse_foreign(given: set[str], family: str) -> None:
    """Refuse, in one line, a family option given on the command line (with another value than its default) that
    ``family`` does not have, e.g. ``--freq-march`` (cryodrgn family) with ``--model opus-dsd``.
    """
    from cryoscape.errors import InputError

    own = {f.name for f in dataclasses.fields(model_config_class(family))}
    for name in sorted(given - own):
        owners = [other for other, cls in MODEL_CONFIGS.items() if name in {f.name for f in dataclasses.fields(cls)}]
        whose = f"the {' and '.join(owners)} famil{'ies' if len(owners) > 1 else 'y'}"
        raise InputError(f"{option_name(name)} is an option of {whose}, not of --model {family}")


def _model_section(values: dict, base=None):
    """The family's configuration section from the model options (those of other families are not read by it
    and are left out; :func:`_refuse_foreign` refuses them where given); ``base``: the recorded section they
    change.
    """
    family = values.get("family", base.family if base is not None else "cryodrgn")
    for name, cls in MODEL_CONFIGS.items():  # other families' options are not read, but still checked
        theirs = {f.name for f in dataclasses.fields(cls)} - {"family"}
        foreign = {k: v for k, v in values.items() if k in theirs and v is not None}
        if name != family and foreign:
            cls(**foreign)
    if base is not None and family == base.family:
        own = {f.name for f in dataclasses.fields(base)}
        return dataclasses.replace(base, **{k: v for k, v in values.items() if k in own})
    own = {f.name for f in dataclasses.fields(model_config_class(family))}
    if base is not None:  # another --model than recorded: resume_config names the conflict
        values = {**{k: v for k, v in dataclasses.asdict(base).items() if k in own}, **values}
    return ModelConfig(**{k: v for k, v in values.items() if k in own})


def config_from_args(args, base: RunConfig | None = None) -> RunConfig:
    """The typed configuration described by the command line.

    Options not given take their defaults (``None`` for the batch size and learning rate: the family's defaults,
    filled in when training starts); with ``base`` (the recorded configuration of a run to resume) they keep
    the values of ``base`` instead, so that only the options given explicitly can differ from it.
    """
    from pathlib import Path

    from cryoscape.errors import InputError

    if getattr(args, "mask", None) and not Path(args.mask).is_file():
        raise InputError("mask file not found", args.mask)
    sections: dict[str, dict] = {"data": {}, "model": {}, "train": {}}
    given: set[str] = set()  # model-section fields given on the command line with another value than the default
    for dest, value in vars(args).items():
        where = _field_of(dest)
        if where is None:
            continue
        section, name, negated = where
        if value is None:
            if base is not None:
                continue
            value = _DEFAULTS.get(dest)
        elif section == "model" and value != _DEFAULTS.get(dest):
            given.add(name)
        sections[section][name] = (not value) if negated else value
    model = _model_section(sections["model"], None if base is None else base.model)  # checks every value given
    _refuse_foreign(given, model.family)
    if base is None:
        return RunConfig(data=DataConfig(**sections["data"]), model=model, train=TrainConfig(**sections["train"]))
    return RunConfig(data=dataclasses.replace(base.data, **sections["data"]), model=model,
                     train=dataclasses.replace(base.train, **sections["train"]))


def run(args) -> int:
    from cryoscape.train.engine import TrainingInterrupted
    from cryoscape.train.run import train

    if args.resume:  # the recorded configuration, with the options given on this command line applied to it
        from pathlib import Path

        from cryoscape.config import load_config

        config = config_from_args(args, base=load_config(Path(args.outdir) / "config.yaml"))
    else:
        config = config_from_args(args)
    from cryoscape.cli._focus import prepare_focus

    config = prepare_focus(config, args.outdir, bool(args.resume), progress=not args.no_progress)
    try:
        train(config, args.outdir, resume=bool(args.resume), progress=not args.no_progress)
    except TrainingInterrupted as exc:
        print(f"cryoscape train: {exc}")
        return 130
    return 0
