"""Typed run configuration, saved as ``RUN/config.yaml`` next to the checkpoints.

A run is fully described by :class:`RunConfig`; ``cryoscape.models.load_run`` rebuilds a model from this file
and a checkpoint alone. Derived values (input sizes, beta = 1/zdim, ...) are computed where they are used and
never written back here.
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cryoscape import __version__
from cryoscape.errors import InputError
from cryoscape.utils.atomic import atomic_write_text

# 3: the family-only training and input options (opus-dsd's loss weights and lr decay, the cryodrgn family's
# frequency marching, tomodrgn's tilt format) are in the family's ``model`` section; 2 (2026-12-06): ``model``
# holds only the family's own fields (its section type) but ``train``/``data`` held every family's options;
# 1 (releases before 2026-12-06): ``model`` held the fields of every family side by side. Older files are read by
# moving those options to ``model`` (the family's) or dropping them (another family's): see ``_MOVED_TO_MODEL``.
SCHEMA_VERSION = 3
PE_TYPES = ("gaussian", "geom_lowf", "geom_full", "geom_nohighf", "geom_ft", "linear_lowf", "none")
POOLINGS = ("concatenate", "max", "mean", "median")  # tomodrgn tilt pooling
KL_NORMS = ("scored", "paper")  # tomodrgn KL normalisation
TILT_FORMATS = ("auto", "imageseries", "optimisation_set")


@dataclass
class DataConfig:
    """Where the particles come from and how images are prepared."""

    particles: str = ""
    poses: str | None = None
    ctf: str | None = None
    datadir: str | None = None
    apix: float | None = None
    ind: str | None = None
    lazy: bool = False
    invert_data: bool = False
    window: bool = True
    window_inner: float = 0.85
    val_frac: float | None = None  # None -> the family's default (models.registry.with_family_defaults)
    num_workers: int = 0
    # CTF optics overrides (--kv, --cs, --amp-contrast, --ps; None: the file's) and the .cs alignment set
    kv: float | None = None
    cs: float | None = None
    amp_contrast: float | None = None
    ps: float | None = None
    cs_alignments: str | None = None

    def reader_options(self) -> dict:
        """Keyword arguments of :func:`cryoscape.io.particles.load_particles` for the overrides above."""
        from cryoscape.metadata import CTFOverrides

        return {"ctf_overrides": CTFOverrides(self.kv, self.cs, self.amp_contrast, self.ps),
                "cs_alignments": self.cs_alignments}

    def __post_init__(self):
        if self.val_frac is not None and not 0.0 <= self.val_frac < 1.0:
            raise InputError(f"--val-frac must be in [0, 1), got {self.val_frac}")


@dataclass
class ModelConfig:
    """Architecture of a model family: the fields every family has (``family``, ``zdim``).

    ``RunConfig.model`` is the family's own section, a subclass (:class:`CryoDRGNConfig`,
    :class:`TomoDRGNConfig`, :class:`OpusDSDConfig`) holding only the options that family reads.
    ``ModelConfig(family=NAME, **fields)`` builds the section of family ``NAME``; a field that family does not
    have is an :class:`InputError`.
    """

    family: str = "cryodrgn"
    zdim: int = 8

    def __new__(cls, *args, **kwargs):
        """Allocate the section; ``ModelConfig(...)`` itself allocates the subclass of its ``family``."""
        if cls is ModelConfig:
            family = kwargs.get("family", args[0] if args else "cryodrgn")
            cls = model_config_class(family)
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(kwargs) - known)
            if unknown:
                raise InputError(f"{', '.join(option_name(u) for u in unknown)}: not an option of --model {family}")
        return object.__new__(cls)

    def __post_init__(self):
        if not isinstance(self.family, str) or not self.family:
            raise InputError(f"model family must be a name, got {self.family!r}")  # the registry checks it
        if self.family != _FAMILY_OF_CLASS.get(type(self), self.family):
            raise InputError(f"a {type(self).__name__} is the section of --model {_FAMILY_OF_CLASS[type(self)]}, "
                             f"not of {self.family}")
        if self.zdim < 0:
            raise InputError(f"--zdim must be >= 0, got {self.zdim}")


@dataclass
class MLPModelConfig(ModelConfig):
    """Coordinate-network families (MLP encoder, positional encoding): cryodrgn and tomodrgn."""

    enc_dim: int = 256
    enc_layers: int = 3
    dec_dim: int = 256
    dec_layers: int = 3
    pe_type: str = "gaussian"
    pe_dim: int | None = None
    feat_sigma: float = 0.5
    activation: str = "relu"

    def __post_init__(self):
        super().__post_init__()
        if self.pe_type not in PE_TYPES:
            raise InputError(f"unknown --pe-type {self.pe_type!r}; choose one of {', '.join(PE_TYPES)}")
        if self.activation not in ("relu", "leaky_relu"):
            raise InputError(f"unknown --activation {self.activation!r}")


@dataclass
class CryoDRGNConfig(MLPModelConfig):
    """``--model cryodrgn``."""

    # frequency marching (the training lattice's radius grows during training)
    freq_march: float = 0.0  # epochs over which the radius grows to Nyquist (0: full lattice from the start)
    march_start: float = 0.25  # starting radius as a fraction of Nyquist
    # focused heterogeneity (data/focus.py): the soft mask MRC, and the consensus map subtracted outside it (the
    # copy in RUN/focus/ that `cryoscape train` writes: back-projected, or the --focus-consensus map given)
    focus_mask: str | None = None
    focus_consensus: str | None = None
    # image formation of the rendered slices: the CTF applied on a field this many boxes wide, the box cut from it
    # and windowed as the images were, as particles cut from micrographs (1: the CTF on the box's own spectrum,
    # cryoDRGN's circular model; bench/RESULTS.md section 10e)
    ctf_field: int = 1

    def __post_init__(self):
        super().__post_init__()
        if int(self.ctf_field) != self.ctf_field or self.ctf_field < 1:
            raise InputError(f"--ctf-field must be a whole number >= 1, got {self.ctf_field}")
        if self.focus_consensus and not self.focus_mask:
            raise InputError("--focus-consensus needs --focus-mask")
        if self.freq_march < 0:
            raise InputError(f"--freq-march must be >= 0, got {self.freq_march}")
        if not 0.0 < self.march_start <= 1.0:
            raise InputError(f"--march-start must be in (0, 1], got {self.march_start}")


@dataclass
class TomoDRGNConfig(MLPModelConfig):
    """``--model tomodrgn`` (tilt series)."""

    family: str = "tomodrgn"
    pooling: str = "concatenate"
    ntilts: int | None = None  # tilts per particle; None: the smallest tilt count (concatenate) or all
    tilt_embed_dim: int = 128  # encoder A output per tilt
    enc_dim_b: int | None = None  # encoder B width (None: enc_dim)
    enc_layers_b: int | None = None  # encoder B hidden layers (None: enc_layers)
    kl_norm: str = "scored"  # scored: KL / summed loss weights of the particle; paper: KL / (tilts * D^2)
    recon_dose_weight: bool = True
    recon_tilt_weight: bool = True
    dose_mask: bool = True
    images_dose_weighted: bool = False
    tilt_format: str = "auto"  # input kind: auto | imageseries | optimisation_set

    def __post_init__(self):
        super().__post_init__()
        if self.tilt_format not in TILT_FORMATS:
            raise InputError(f"unknown --tilt-format {self.tilt_format!r}; choose one of {', '.join(TILT_FORMATS)}")
        if self.pooling not in POOLINGS:
            raise InputError(f"unknown --pooling {self.pooling!r}; choose one of {', '.join(POOLINGS)}")
        if self.kl_norm not in KL_NORMS:
            raise InputError(f"unknown --kl-norm {self.kl_norm!r}; choose one of {', '.join(KL_NORMS)}")
        if self.ntilts is not None and self.ntilts < 1:
            raise InputError(f"--ntilts must be >= 1, got {self.ntilts}")


@dataclass
class OpusDSDConfig(ModelConfig):
    """``--model opus-dsd`` (3-D conv VAE) with its loss weights and learning-rate decay; the KL weight is
    ``TrainConfig.beta`` (``None`` -> 0.01 for opus-dsd).
    """

    family: str = "opus-dsd"
    templateres: int | None = None  # decoder output box, a multiple of 16; None -> image box rounded up (>= 32)
    # multiplies the conv networks' channel counts (1 = the paper's widths); None: chosen for the training device
    # when training starts (1 on CUDA, 0.25 on a CPU) and recorded resolved in config.yaml
    channel_scale: float | None = None
    mask: str | None = None  # solvent mask MRC; None -> a sphere of radius 0.85 * D/2
    lamb: float = 0.5  # weight of the structural-disentanglement prior
    knn: int = 128  # inter-class nearest neighbours (attraction)
    kfarthest: int = 512  # inter-class farthest points (repulsion)
    n_samples: int = 12800  # memory-bank codes of other classes sampled per batch
    knn_intra: int = 4  # nearest neighbours attracted within a batch
    momentum: float = 0.7  # memory-bank momentum
    tv_weight: float = 1.0  # total-variation prior on the volumes
    l1_weight: float = 0.3  # L1 (LASSO) prior on the volumes
    anneal_images: int = 100000  # images per ramp of the cyclical annealing of the KL and prior weights (0: off)
    lr_decay: float = 0.95  # learning rate multiplied by this after every epoch

    def __post_init__(self):
        super().__post_init__()
        if self.templateres is not None and (self.templateres < 16 or self.templateres % 16):
            raise InputError(f"--templateres must be a positive multiple of 16, got {self.templateres}")
        if self.channel_scale is not None and self.channel_scale <= 0:
            raise InputError(f"--channel-scale must be positive, got {self.channel_scale}")
        for name in ("lamb", "tv_weight", "l1_weight", "anneal_images", "knn_intra"):
            if getattr(self, name) < 0:
                raise InputError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("knn", "kfarthest", "n_samples"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.momentum < 1.0:
            raise InputError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not 0.0 < self.lr_decay <= 1.0:
            raise InputError(f"--lr-decay must be in (0, 1], got {self.lr_decay}")


# each family's section (the family modules register their families; these are their configuration types)
MODEL_CONFIGS: dict[str, type[ModelConfig]] = {"cryodrgn": CryoDRGNConfig, "tomodrgn": TomoDRGNConfig,
                                               "opus-dsd": OpusDSDConfig}
_FAMILY_OF_CLASS = {cls: name for name, cls in MODEL_CONFIGS.items()}


def model_config_class(family: str) -> type[ModelConfig]:
    """The configuration section type of ``family``."""
    try:
        return MODEL_CONFIGS[family]
    except (KeyError, TypeError):
        raise InputError(f"model family {family!r} is not available in this version (available: "
                         f"{', '.join(MODEL_CONFIGS)})") from None


def model_fields() -> set[str]:
    """Every field of every family's section (the options of ``cryoscape train``'s model groups)."""
    return {f.name for cls in MODEL_CONFIGS.values() for f in dataclasses.fields(cls)}


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping (the options every family reads; a family's own are in its section)."""

    epochs: int = 20
    batch_size: int | None = None  # None -> the family's default (models.registry.with_family_defaults)
    lr: float | None = None  # None -> the family's default
    weight_decay: float = 0.0
    beta: float | None = None  # KL weight; None -> 1/zdim
    seed: int = 0
    amp: bool = False
    device: str = "auto"
    checkpoint_every: int = 1
    threads: int | None = None
    # pose refinement (cryodrgn family; models/poses.py): per-particle rotation and shift corrections
    refine_poses: bool = False
    pose_lr: float = 2e-3  # Adam step of the rotation corrections (radians); bench/RESULTS.md "Pose refinement"
    shift_lr: float | None = 0.1  # Adam step of the shift corrections (pixels); None -> 10 x pose_lr
    refine_start: int = 2  # first epoch whose steps refine the poses (earlier epochs: fixed poses)
    pose_method: str = "local"  # local: a Gauss-Newton step per particle per visit; sgd: per-particle Adam
    pose_search_radius: float = 0.5  # local: compared pixels within this fraction of Nyquist
    load: str | None = None  # start from the model weights of this run folder or checkpoint file (train --load)
    # ab initio (cryoscape abinit; models/pose_search.py): poses searched from scratch, the file's ignored
    abinit: bool = False
    search_epochs: int = 10  # at most this many complete search epochs, then local refinement (earlier when stable)
    pretrain_images: int = 1000  # training images on the initial random poses before the first search
    search_draws: int = 0  # the first this many complete searches draw each pose from its posterior
    latent_search_epochs: int = 0  # heterogeneous: search epochs against each image's own map after the consensus
    search_classes: int = 0  # heterogeneous: class maps kept by the consensus search (abinit --classes; 0: one map)

    @property
    def learns_poses(self) -> bool:
        """Whether the run's poses are its own (``--refine-poses`` or ``cryoscape abinit``: RUN/poses/), not the
        input's."""
        return bool(self.refine_poses or self.abinit)

    def __post_init__(self):
        if self.epochs < 1:
            raise InputError(f"-n/--epochs must be >= 1, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"-b/--batch-size must be >= 1, got {self.batch_size}")
        if self.lr is not None and self.lr <= 0:
            raise InputError(f"--lr must be positive, got {self.lr}")
        if self.pose_lr < 0:
            raise InputError(f"--pose-lr must be >= 0, got {self.pose_lr}")
        if self.shift_lr is not None and self.shift_lr < 0:
            raise InputError(f"--shift-lr must be >= 0, got {self.shift_lr}")
        if self.refine_start < 1:
            raise InputError(f"--refine-start must be >= 1 (an epoch number), got {self.refine_start}")
        if self.pose_method not in ("local", "sgd"):
            raise InputError(f"--pose-method must be local or sgd, got {self.pose_method!r}")
        if self.search_epochs < 1:
            raise InputError(f"--search-epochs must be >= 1, got {self.search_epochs}")
        if self.latent_search_epochs < 0:
            raise InputError(f"--latent-search-epochs must be >= 0, got {self.latent_search_epochs}")
        if self.search_classes < 0 or self.search_classes == 1:
            raise InputError(f"--classes must be 0 (one consensus map) or at least 2, got {self.search_classes}")
        if self.search_draws < 0:
            raise InputError(f"--search-draws must be >= 0 (epochs), got {self.search_draws}")
        if self.pretrain_images < 0:
            raise InputError(f"--pretrain must be >= 0 (images), got {self.pretrain_images}")
        if not 0.0 < self.pose_search_radius <= 1.0:
            raise InputError(f"--pose-search-radius must be in (0, 1] (a fraction of Nyquist), got "
                             f"{self.pose_search_radius}")


@dataclass
class RunConfig:
    """Everything needed to reproduce a run. Which options a family reads, and the checks across sections, are
    the family's (``cryoscape.models.family.ModelFamily.validate``, called when a run starts).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        """Plain nested dict (YAML-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, schema_version: int = SCHEMA_VERSION) -> RunConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (they mean a newer or foreign file). Older
        schemas are mapped: a schema-1 ``model`` section (every family's fields side by side) keeps only the
        fields of its family; the family options that schemas 1 and 2 kept in ``train``/``data``
        (:data:`_MOVED_TO_MODEL`) move to the family's ``model`` section, those of other families are dropped.
        """
        model = dict(d.get("model") or {})
        sections = {name: dict(d.get(name) or {}) for name in ("data", "train")}
        known = {f.name for f in dataclasses.fields(model_config_class(model.get("family", "cryodrgn")))}
        if schema_version < 2:
            model = {k: v for k, v in model.items() if k in known}
        if schema_version < 3:
            for section, names in _MOVED_TO_MODEL.items():
                for name in names:
                    if name in sections[section]:
                        value = sections[section].pop(name)
                        if name in known:
                            model.setdefault(name, value)
        if sections["train"].get("refine_poses") and "pose_method" not in sections["train"]:
            sections["train"]["pose_method"] = "sgd"  # recorded before --pose-method existed: Adam was the only one
        if "ctf_field" in known and "ctf_field" not in model:
            model["ctf_field"] = 1  # recorded before --ctf-field existed: the CTF on the box's own spectrum
        try:
            return cls(
                data=DataConfig(**sections["data"]),
                model=ModelConfig(**model),
                train=TrainConfig(**sections["train"]),
            )
        except TypeError as exc:
            raise InputError(f"config does not match this version of cryoscape ({exc})") from exc


# the family options that config.yaml schemas 1 and 2 kept in the shared sections (section -> field names); since
# schema 3 they are fields of their family's section (tilt_format: TomoDRGNConfig; freq_march, march_start:
# CryoDRGNConfig; the others: OpusDSDConfig)
_MOVED_TO_MODEL = {
    "data": ("tilt_format",),
    "train": ("freq_march", "march_start", "lamb", "knn", "kfarthest", "n_samples", "knn_intra", "momentum",
              "tv_weight", "l1_weight", "anneal_images", "lr_decay"),
}

# command-line spelling of the fields whose option is not ``--`` + the field name with dashes
_OPTION_NAMES = {
    "particles": "PARTICLES", "family": "--model", "epochs": "-n/--epochs", "batch_size": "-b/--batch-size",
    "weight_decay": "--wd", "window": "--no-window", "recon_dose_weight": "--no-dose-weight",
    "recon_tilt_weight": "--no-tilt-weight", "dose_mask": "--no-dose-mask",
}


def option_name(field_name: str) -> str:
    """The ``cryoscape train`` option that sets the configuration field ``field_name``."""
    return _OPTION_NAMES.get(field_name, "--" + field_name.replace("_", "-"))


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write ``config`` as YAML with version, time and command line (atomically)."""
    doc = {
        "cryoscape_version": __version__,
        "schema_version": SCHEMA_VERSION,
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "cmd": " ".join(sys.argv),
        **config.to_dict(),
    }
    atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False))


def load_config(path: str | Path) -> RunConfig:
    """Read a ``config.yaml`` written by :func:`save_config`."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no config.yaml here; is this a cryoscape run folder?", path)
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML ({exc.__class__.__name__})", path) from exc
    if not isinstance(doc, dict) or "model" not in doc:
        raise InputError("not a cryoscape config (no 'model' section)", path)
    schema = doc.get("schema_version", 1)
    if not isinstance(schema, int) or schema > SCHEMA_VERSION:
        raise InputError(f"written with config schema {schema} by cryoscape {doc.get('cryoscape_version', '?')}; "
                         f"this version reads schema {SCHEMA_VERSION} and older", path,
                         hint="update cryoscape to use this run")
    try:
        return RunConfig.from_dict({k: doc[k] for k in ("data", "model", "train") if k in doc}, schema)
    except InputError as exc:
        if exc.path is None:
            raise InputError(exc.problem, path, hint=exc.hint) from exc
        raise
