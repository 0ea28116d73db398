"""The contract between a model family and the rest of cryoscape: :class:`ModelFamily`.

A family tells the engine how to read its input, build its data provider, its model and its optimizer, and how
to plan and close its epochs. Every hook has a default that does the generic thing (single-particle input read
by :func:`cryoscape.io.particles.load_particles`, STAR/.cs subsets, shuffled batches, Adam, nothing at the end
of a step or an epoch), so a family overrides only what differs. One module per family defines its subclass
(``models.cryodrgn``, ``models.tomodrgn``, ``models.opus_dsd``); ``models.registry`` registers them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryoscape.config import RunConfig
from cryoscape.data.batches import default_batch_plan
from cryoscape.errors import InputError


class FamilyModel(torch.nn.Module):
    """Base class of a family's ``nn.Module``: what the engine calls on every model, with defaults.

    ``forward(batch) -> dict`` (``"loss"`` and its terms) is the family's; ``zdim`` (0: homogeneous, no latents),
    ``latent_means(batch) -> (B, zdim)`` (posterior means, used when ``zdim > 0``),
    ``set_training_progress(epochs_done)`` (called before every training step with the fractional number of
    epochs completed; default: nothing) and ``generate_volumes(z, batch_size) -> (n, D, D, D)``.
    """

    zdim: int = 0

    def set_training_progress(self, epochs_done: float) -> None:
        """A schedule over training (e.g. frequency marching); default: nothing."""

    def latent_means(self, batch) -> torch.Tensor:
        """Posterior means ``(B, zdim)`` of a batch (models with ``zdim > 0``)."""
        raise NotImplementedError(f"{type(self).__name__} has no latent space")

    def generate_volumes(self, z, batch_size: int = 1) -> np.ndarray:
        """Volumes ``(n, D, D, D)`` float32 at latents ``z`` ``(n, zdim)`` (``None``: the homogeneous map)."""
        raise NotImplementedError(f"{type(self).__name__} does not generate volumes")

    def pose_predictor(self, batch, half):
        """``rotations (B, 3, 3) -> (B, 2 M' + 1)``: the model's prediction of the batch's images at the half-plane
        pixels ``half`` (local pose refinement, :class:`~cryoscape.models.poses.PoseRefiner`); families that refine
        poses implement it.
        """
        raise NotImplementedError(f"{type(self).__name__} does not predict images for pose refinement")


class ModelFamily:
    """Base class of the model families; see the module docstring.

    Class attributes
    ----------------
    name : the ``--model`` name.
    default_batch_size, default_lr, default_val_frac : the training values (and the held-out fraction) a run of
        the family gets when its configuration leaves them unset (``None``); see :meth:`with_defaults`.
    data_state : names of model buffers that belong to the data set or the training state rather than to the
        learnt model (normalisation, pixel size, counters); ``train --load`` keeps the new run's own values.
    selection_metric : the validation column that chooses ``RUN/best_epoch`` (``engine.select_best_epoch``).
    own_input_format : whether the family reads another input format than single-particle files (tomoDRGN's
        tilt series): then :meth:`load_particles` and :meth:`write_subset` read and write that format.
    """

    name: str = ""
    default_batch_size: int = 32
    default_lr: float = 1e-3
    # every particle trained by default (as cryoDRGN and tomoDRGN): a held-out particle gets only the encoder's
    # inference and a worse latent (bench/RESULTS.md 9b, 9d: |Spearman| 0.65 against 0.95 on the hinge set; k-means
    # ARI 0.39 against 0.995 on the tilt-series set); --val-frac gives a validation loss and RUN/best_epoch
    default_val_frac: float = 0.0
    data_state: tuple[str, ...] = ("pixel_size_angstrom", "norm_std")
    selection_metric: str = "val_loss"
    own_input_format: bool = False
    # whether ``train --refine-poses`` is supported (slice-based data providers: ``batch`` gives ``index``, ``rot``
    # and Hartley pixels ``y`` in ``data.pixels`` order; see :meth:`make_pose_refiner`)
    refines_poses: bool = False
    searches_poses: bool = False  # cryoscape abinit (the model has pose_search_predictor; models/pose_search.py)

    # -- configuration -------------------------------------------------------------------------------------
    def with_defaults(self, config: RunConfig) -> RunConfig:
        """``config`` with the training values it leaves unset (``batch_size``, ``lr``, ``val_frac`` = ``None``)
        taken from the family's defaults; values that are set are kept.
        """
        t = config.train
        changes: dict[str, Any] = {}
        if t.batch_size is None:
            changes["batch_size"] = int(self.default_batch_size)
        if t.lr is None:
            changes["lr"] = float(self.default_lr)
        if changes:
            config = dataclasses.replace(config, train=dataclasses.replace(t, **changes))
        if config.data.val_frac is None:
            config = dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                          val_frac=float(self.default_val_frac)))
        return config

    def validate(self, config: RunConfig) -> None:
        """Refuse (:class:`InputError`) shared options set to something this family does not support (e.g.
        ``--refine-poses``). Another family's own options cannot be set: they are fields of that family's section
        (``RunConfig.model``), and the command line refuses them (``cli.train.config_from_args``).
        """
        t = config.train
        if t.abinit:
            if not self.searches_poses:
                raise InputError(f"abinit does not support --model {self.name} yet (only cryodrgn and tomodrgn)")
            if t.refine_poses:
                raise InputError("--refine-poses: abinit refines the poses it finds itself; leave out --refine-poses")
            if (config.data.val_frac or 0.0) > 0:
                raise InputError(f"--val-frac must be 0 (abinit searches the pose of every particle), got "
                                 f"{config.data.val_frac}")
        if config.train.refine_poses and not self.refines_poses:
            raise InputError(f"--refine-poses is not supported by --model {self.name} (only by the cryodrgn and "
                             "tomodrgn families)")

    def resolve_defaults(self, config: RunConfig, device: torch.device) -> RunConfig:
        """``config`` with device-dependent defaults filled in (recorded in ``config.yaml``); default: as is."""
        return config

    # -- input -------------------------------------------------------------------------------------------
    def load_particles(self, config: RunConfig, path=None, datadir=None, apply_ind: bool = True, poses=None,
                       ctf=None, reader_options: dict | None = None):
        """``(particles, indices into the file's particles)`` of ``config.data`` (``--ind`` applied when
        ``apply_ind``), or of another file ``path`` with the same kind of particles (``poses``, ``ctf``,
        ``datadir`` and ``reader_options`` then apply to it, ``--ind`` does not).
        """
        from cryoscape.io.indices import read_indices
        from cryoscape.io.particles import load_particles

        d = config.data
        if path is not None:
            options = d.reader_options() if reader_options is None else reader_options
            particles = load_particles(path, poses=poses, ctf=ctf, datadir=datadir, apix=d.apix, **options)
            return particles, np.arange(len(particles), dtype=np.int64)
        particles = load_particles(d.particles, poses=d.poses, ctf=d.ctf, datadir=d.datadir, apix=d.apix, lazy=True,
                                   **d.reader_options())
        n_total = len(particles)
        if not apply_ind:
            return particles, np.arange(n_total, dtype=np.int64)
        if d.ind:
            indices = read_indices(d.ind, n=n_total)
            if len(indices) == 0:
                raise InputError("the index file selects no particles", d.ind)
            particles = particles.subset(indices)
        else:
            indices = np.arange(n_total, dtype=np.int64)
        if particles.ctf is None and particles.source_format in ("star", "cs"):
            raise InputError("no CTF parameters in this file", d.particles,
                             hint="export the particles after CTF estimation, or give --ctf ctf.pkl")
        return particles, indices

    def write_subset(self, particles, chosen: np.ndarray, out_dir: Path, fmt: str = "auto") -> Path:
        """Write the particles ``chosen`` (indices into the file) in the input's format (``cryoscape filter``);
        default: ``particles.star`` or ``particles.cs`` (``fmt``) with all metadata kept.
        """
        from cryoscape.io.particles import write_particle_subset

        if fmt == "auto":
            fmt = "cs" if particles.source_format == "cs" else "star"
        return write_particle_subset(particles, chosen, Path(out_dir) / f"particles.{fmt}")

    # -- data, model, optimizer ----------------------------------------------------------------------------
    def make_data(self, particles, config: RunConfig, norm_std=None, progress=True):
        """The data provider (``batch(indices)``, ``__len__``, ``to(device)``) of ``particles``."""
        raise NotImplementedError(f"model family {self.name!r} does not define make_data")

    def build_info(self, data) -> dict:
        """Plain values needed to rebuild the model without the data (saved in checkpoints)."""
        return {"D": int(data.D), "pixel_size_angstrom": float(data.pixel_size_angstrom),
                "norm_std": float(data.norm_std), "ctf_premultiplied": bool(data.ctf_premultiplied)}

    def build_model(self, config: RunConfig, build: dict) -> FamilyModel:
        """The ``nn.Module`` (``forward(batch) -> dict`` with ``"loss"`` and its terms)."""
        raise NotImplementedError(f"model family {self.name!r} does not define build_model")

    def make_optimizer(self, model: torch.nn.Module, config: RunConfig):
        """``(optimizer, per-epoch scheduler or None)``; default Adam at ``lr`` and ``weight_decay``."""
        t = config.train
        lr = self.default_lr if t.lr is None else t.lr
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=t.weight_decay), None

    def make_pose_refiner(self, data, config: RunConfig):
        """The :class:`~cryoscape.models.poses.PoseRefiner` of a run with ``--refine-poses`` (``None``
        without); default: per-particle corrections of a slice-based provider (``data.pixels``).
        """
        t = config.train
        if t.abinit:
            from cryoscape.models.pose_search import PoseSearcher

            return PoseSearcher(len(data), data.pixels.half_freqs(), D=int(data.D),
                                pixel_size_angstrom=float(data.pixel_size_angstrom), seed=t.seed,
                                pretrain_images=t.pretrain_images, max_search_epochs=t.search_epochs,
                                search_draws=t.search_draws,
                                latent_search_epochs=t.latent_search_epochs if config.model.zdim > 0 else 0,
                                n_classes=t.search_classes if config.model.zdim > 0 else 0,
                                min_search_epochs=min(3, t.search_epochs), search_radius=t.pose_search_radius)
        if not t.refine_poses:
            return None
        from cryoscape.models.poses import PoseRefiner

        return PoseRefiner(len(data), data.pixels.half_freqs(), lr=t.pose_lr, shift_lr=t.shift_lr,
                           start_epoch=t.refine_start, method=t.pose_method, search_radius=t.pose_search_radius)

    # -- the engine's hooks ----------------------------------------------------------------------------------
    def epoch_batches(self, data, train_positions: np.ndarray, seed: int, epoch: int, batch_size: int,
                      info) -> list[np.ndarray]:
        """The batches of ``epoch`` for this process: a pure function of its arguments (resume is exact); default: a
        seeded shuffle split evenly over the processes.
        """
        return default_batch_plan(train_positions, seed, epoch, batch_size, info)

    def after_step(self, model: torch.nn.Module, gather_rows) -> None:
        """Called by the engine on every process after each training step; ``gather_rows(*tensors)``
        concatenates tensors over the processes (the engine's collective). Default: nothing.
        """

    def epoch_end(self, engine, epoch: int, metrics: dict) -> None:
        """Called by the engine after each epoch, before its checkpoint. Default: nothing."""
