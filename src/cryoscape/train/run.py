"""``train(config, run_dir)``: load the particles, split, build the family's model and run the engine."""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryoscape.config import RunConfig, load_config, option_name, save_config
from cryoscape.errors import InputError
from cryoscape.models.registry import get_family, with_family_defaults
from cryoscape.rundir import RunDir, load_checkpoint
from cryoscape.train.checkpoint import checkpoint_to_load
from cryoscape.train.distributed import DistInfo, barrier, init_distributed, leave_together
from cryoscape.train.engine import Engine, EngineSettings
from cryoscape.utils.atomic import check_writable_dir
from cryoscape.utils.diskspace import check_output_location, check_training_space, remove_partial_files
from cryoscape.utils.malloc import keep_freed_memory

log = logging.getLogger("cryoscape")


def select_device(name: str, info: DistInfo) -> torch.device:
    """``auto``: this process's GPU if there is one, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", info.local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was requested but no CUDA GPU is available")
    return device


def split_positions(n: int, val_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation split of ``range(n)``; both sorted."""
    n_val = int(round(n * val_frac))
    if val_frac > 0 and n_val == 0 and n >= 10:
        n_val = 1
    perm = np.random.default_rng([seed, 7919]).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def load_training_particles(config: RunConfig):
    """The particle set named by ``config.data`` (with ``--ind`` applied) and the original indices: the family's
    :meth:`~cryoscape.models.family.ModelFamily.load_particles` (tomoDRGN reads its tilt series).
    """
    return get_family(config.model.family).load_particles(config)


def without_poses(particles):
    """``particles`` with identity rotations and zero origins (``cryoscape abinit``: the search starts from
    nothing), and whether it had poses.

    A tilt-series set (``offsets``: the tomodrgn family) keeps its tilt geometry: every tilt's rotation becomes its
    rotation relative to the particle's reference tilt (``A_t A_ref^T``, independent of the particle's orientation;
    :func:`~cryoscape.models.poses.reference_tilts`), so the reference tilt gets the identity and the searched
    rotation is the particle's own; every origin is zeroed (the particle's shift is searched too).
    """
    from cryoscape.metadata import Poses

    if hasattr(particles, "offsets"):  # tilt series: one unknown rotation per particle, the tilt geometry kept
        from cryoscape.models.poses import reference_tilts

        offsets = np.asarray(particles.offsets, dtype=np.int64)
        ref = reference_tilts(offsets, particles.tilt_deg, particles.exposure_e_per_angstrom2)
        ref_rows = np.repeat(offsets[:-1] + ref, np.diff(offsets))  # each image's reference image
        rot = np.asarray(particles.rotations, np.float64)
        relative = rot @ np.swapaxes(rot[ref_rows], 1, 2)
        return dataclasses.replace(particles, rotations=relative, shifts_angstrom=np.zeros((len(rot), 2)),
                                   particle_rotations=None), True
    n = len(particles)
    identity = Poses(np.broadcast_to(np.eye(3), (n, 3, 3)).copy(), np.zeros((n, 2)))
    return dataclasses.replace(particles, poses=identity), particles.poses is not None


def with_absolute_paths(config: RunConfig) -> RunConfig:
    """A copy whose input paths (and ``train.load``) are absolute, so later commands work from any folder."""
    d = config.data
    paths: dict[str, Any] = {k: str(Path(v).resolve())
                             for k in ("particles", "poses", "ctf", "ind", "datadir") if (v := getattr(d, k))}
    t = config.train
    load = str(Path(t.load).resolve()) if t.load else None
    return dataclasses.replace(config, data=dataclasses.replace(d, **paths), train=dataclasses.replace(t, load=load))


# options that may change when a run is resumed: they do not change what is learnt
RESUME_CHANGEABLE = ("epochs", "device", "threads", "num_workers")
_PATH_FIELDS = ("particles", "poses", "ctf", "ind", "datadir", "mask", "load")


def _same_value(name: str, recorded, requested) -> bool:
    if requested is None or recorded == requested:  # None: not given, as recorded
        return True
    if name == "load" and recorded and Path(recorded).parent.parent == Path(requested):
        return True  # the run folder the recorded checkpoint was taken from (its best epoch may have moved since)
    if name in _PATH_FIELDS and recorded and Path(recorded).exists() and Path(requested).exists():
        return Path(recorded).samefile(requested)
    return False


def _show(value) -> str:
    return "(none)" if value is None else str(value)


def resume_config(recorded: RunConfig, requested: RunConfig | None, run_dir: Path,
                  epochs_done: int) -> tuple[RunConfig, list[str]]:
    """The configuration a resumed run continues with, and the changes made to the recorded one.

    ``requested`` (paths absolute; ``None`` values mean "as recorded") may differ from ``recorded`` only in
    :data:`RESUME_CHANGEABLE`; any other difference is an :class:`InputError` naming the option and both values.
    The resulting epoch count must leave epochs to train.
    """
    changes, sections = [], {}
    for section in ("data", "model", "train"):
        old = getattr(recorded, section)
        new = getattr(requested, section) if requested is not None else old
        keep = {}
        for f in dataclasses.fields(old):
            a, b = getattr(old, f.name), getattr(new, f.name)
            if _same_value(f.name, a, b):
                continue
            name = option_name(f.name)
            if f.name not in RESUME_CHANGEABLE:
                how = "give the recorded one" if f.name == "particles" else "leave it out"
                raise InputError(f"--resume: {name} is {_show(b)} here but {_show(a)} in the run's config.yaml",
                                 run_dir, hint=f"{how} to continue the run as recorded, or start a new run with "
                                               "another -o")
            keep[f.name] = b
            changes.append(f"{name} {_show(a)} -> {_show(b)}")
        sections[section] = dataclasses.replace(old, **keep) if keep else old
    config = dataclasses.replace(recorded, **sections)
    epochs = config.train.epochs
    if epochs <= epochs_done:
        if epochs == recorded.train.epochs:
            raise InputError(f"nothing to resume: the run has completed its {epochs} epochs", run_dir,
                             hint="give -n with more epochs to train it further")
        raise InputError(f"--resume: -n {epochs} is not more than the {epochs_done} epochs the run has completed",
                         run_dir)
    return config, changes


def train(config: RunConfig | None, run_dir: str | Path, resume: bool = False, progress: bool = True) -> Path:
    """Train a model as configured; returns the run folder. See ``docs/run-directory.md`` for what is written.

    The batch size and learning rate, where ``config`` leaves them ``None``, are the family's defaults
    (:func:`cryoscape.models.registry.with_family_defaults`); ``config.yaml`` records the values used.
    With ``resume`` the run continues from its latest checkpoint with the configuration recorded in its
    ``config.yaml`` (``config`` may be ``None``); a ``config`` given must equal the recorded one except in
    :data:`RESUME_CHANGEABLE` (e.g. more epochs), see :func:`resume_config`. With ``config.train.load`` (a run
    folder or a checkpoint file) a new run starts from those model weights (fresh optimizer, epochs from 1).
    """
    run_dir = Path(run_dir)
    if config is None and not resume:
        raise ValueError("train() needs a configuration unless it resumes a run")
    if config is not None:
        config = with_absolute_paths(config if resume else with_family_defaults(config))
    if config is not None and config.train.load and not resume:  # the checkpoint file a run folder names
        config = dataclasses.replace(config, train=dataclasses.replace(
            config.train, load=str(checkpoint_to_load(config.train.load).resolve())))
    keep_freed_memory()
    info = init_distributed()
    if info.is_main:
        check_output_location(run_dir)  # writable, but nothing is created until the inputs have been checked
    else:
        log.setLevel(logging.WARNING)  # one process reports
    resume_from, state = None, None
    changes: list[str] = []
    run = RunDir(run_dir)
    if resume:
        resume_from = run.latest_checkpoint()
        if resume_from is None:
            raise InputError("nothing to resume: no checkpoint in this run folder", run_dir)
        state = load_checkpoint(resume_from)
        recorded = with_family_defaults(load_config(run.config_path))
        config, changes = resume_config(recorded, config, run_dir, int(state["epoch"]))
    elif run.latest_checkpoint() is not None:
        raise InputError("this run folder already has checkpoints", run_dir,
                         hint="continue it with --resume, or choose another -o")
    assert config is not None  # given, or (resume) the recorded one
    if config.train.threads:
        torch.set_num_threads(config.train.threads)

    torch.manual_seed(config.train.seed)
    device = select_device(config.train.device, info)
    family = get_family(config.model.family)
    family.validate(config)
    config = family.resolve_defaults(config, device)  # device-dependent defaults (opus-dsd widths)
    particles, indices = load_training_particles(config)
    had_poses = False
    if config.train.abinit:
        particles, had_poses = without_poses(particles)
    norm = state["build"].get("norm_std") if state else None
    data = family.make_data(particles, config, norm_std=norm, progress=progress and info.is_main)
    data.to(device)  # prepared data (in memory) and metadata stay on the training device; lazy batches move there
    build = family.build_info(data)
    model = family.build_model(config, build)
    if config.train.load and state is None:
        load_weights(model, family, config, build)
    optimizer, scheduler = family.make_optimizer(model, config)
    train_pos, val_pos = split_positions(len(data), config.data.val_frac or 0.0, config.train.seed)
    if info.is_main:
        if resume:
            stale = remove_partial_files([run_dir, run.checkpoint_dir, run.latent_dir])
            if stale:
                log.info(f"removed {len(stale)} partial file(s) left by the interrupted run")
        check_training_space(run_dir, model, len(data), config.model.zdim, state["epoch"] if state else 0,
                             config.train.epochs, config.train.checkpoint_every)
        check_writable_dir(run_dir)
        _attach_log_file(run_dir)
        if changes:
            log.info("--resume with changed options: " + ", ".join(changes))
            save_config(config, run.config_path)
        if config.train.load and state is None:
            log.info(f"starting from the model weights of {config.train.load}")
        if had_poses and hasattr(particles, "offsets"):
            log.info(f"abinit: the poses in {config.data.particles} are ignored except for the tilt geometry (each "
                     "tilt keeps its rotation relative to the particle's reference tilt); every particle's "
                     "orientation and shift are searched from scratch")
        elif had_poses:
            log.info(f"abinit: the poses in {config.data.poses or config.data.particles} are ignored (poses are "
                     "searched from scratch)")

    if info.is_main and not resume:
        save_config(config, run.config_path)
        run.write_indices(indices)
        run.write_split(train_pos, val_pos)
    barrier(info)
    t = config.train
    assert t.batch_size is not None  # set by with_family_defaults (the recorded config has it too)
    settings = EngineSettings(epochs=t.epochs, batch_size=t.batch_size, seed=t.seed, amp=t.amp,
                              checkpoint_every=t.checkpoint_every, progress=progress)
    engine = Engine(model, data, optimizer, settings, train_pos, val_pos, run_dir, device, info, build=build,
                    family=family.name, scheduler=scheduler, epoch_end=family.epoch_end,
                    batch_plan=functools.partial(family.epoch_batches, data), after_step=family.after_step,
                    pose_refiner=family.make_pose_refiner(data, config))
    if state is not None:
        engine.load_state_dict(state)
        done, step = engine.state.epoch, engine.state.step
        if step:  # counted as the stop message counts: the epoch in progress (1-based), steps done / steps
            steps = len(engine.batch_plan(engine.train_positions, t.seed, done + 1, t.batch_size, info))
            log.info(f"resuming from {resume_from} at epoch {done + 1}, step {step}/{steps}; training to epoch "
                     f"{t.epochs}")
        else:
            log.info(f"resuming from {resume_from} after epoch {done}; training to epoch {t.epochs}")
    if t.abinit:
        ps = engine.pose_refiner
        log.info(f"abinit: searching the poses of all {len(train_pos)} particles from random ones: global grid of "
                 f"{ps.base_level_size} rotations x {len(ps.global_shifts)} shifts (+-{ps.shift_extent_px:g} px), "
                 f"refined to {ps.final_spacing_deg:g} deg; lattice radius {ps.radius_start_px:g} -> "
                 f"{ps.radius_end_px:g} px over up to {t.search_epochs} search epochs, then local refinement; "
                 f"the first {t.pretrain_images} images train on the random poses")
        if hasattr(ps, "ref"):
            log.info("abinit: tilt series: one rotation and shift per particle, scored with all its tilts through "
                     "the tilt geometry (the shift in the reference tilt's plane), then refined locally with a 3-D "
                     "shift")
        if getattr(model, "zdim", 0) > 0 and ps.consensus_first:
            then = (f"then {ps.latent_search_epochs} search epoch(s) against each image's own map (latent on), "
                    "then local refinement" if ps.latent_search_epochs else
                    "the latent is switched on when the local refinement starts")
            if getattr(ps, "n_classes", 0):
                maps = (f"{ps.n_classes} class maps (the decoder at the first {ps.n_classes} axes of the latent "
                        "space; every particle starts in a random class and is searched against each, its class "
                        "drawn from its posterior, the likelihood's weight annealed to 1 over "
                        f"{ps.class_anneal_epochs} search epochs)")
            else:
                maps = "one consensus map (latent 0 for every image)"
            log.info(f"abinit: heterogeneous model: the poses are searched against {maps}; {then}")
    elif engine.pose_refiner is not None:
        pr = engine.pose_refiner
        how = (f"one Gauss-Newton step per particle per epoch on the pixels within {t.pose_search_radius:g} x "
               f"Nyquist" if pr.method == "local" else
               f"per-particle Adam, rotation step {pr.table.lr:g} rad, shift step {pr.table.shift_lr:g} px")
        log.info(f"refining the poses of the {len(train_pos)} training particles from epoch {t.refine_start} "
                 f"({how}; validation particles keep theirs)")
    n_params = sum(p.numel() for p in model.parameters())
    log.info(f"{family.name}: {len(train_pos)} training and {len(val_pos)} validation particles, "
             f"D={build.get('D')}, {n_params:,} parameters, device {device}"
             + (f", {info.world_size} processes" if info.enabled else ""))
    try:
        engine.fit()
        if info.is_main:
            log.info(f"done: {run_dir}")
        leave_together(info)
    finally:
        _detach_log_file()
    return run_dir


# ModelConfig fields that shape the network (compared by load_weights when the run's config.yaml is at hand)
_ARCHITECTURE = ("zdim", "enc_dim", "enc_layers", "dec_dim", "dec_layers", "pe_type", "pe_dim", "feat_sigma",
                 "activation", "templateres", "channel_scale", "pooling", "tilt_embed_dim", "enc_dim_b",
                 "enc_layers_b")


def load_weights(model: torch.nn.Module, family, config: RunConfig, build: dict) -> None:
    """Copy the model weights of the checkpoint ``config.train.load`` into ``model`` (``train --load``).

    Everything in the model's state except the family's ``data_state`` buffers (normalisation, pixel size,
    training counters: they stay the new run's own) is loaded. A checkpoint of another family or another
    architecture is an :class:`InputError` naming the difference.
    """
    assert config.train.load is not None  # called only with train --load
    path = Path(config.train.load)
    state = load_checkpoint(path)
    if state["family"] != family.name:
        raise InputError(f"--load: the checkpoint holds a {state['family']} model, this run trains {family.name}",
                         path)
    their_config = path.parent.parent / "config.yaml"
    if path.parent.name == "checkpoints" and their_config.is_file():
        theirs_m, ours_m = load_config(their_config).model, config.model
        for name in _ARCHITECTURE:
            a, b = getattr(theirs_m, name, None), getattr(ours_m, name, None)
            if a != b:
                raise InputError(f"--load: the run there has {option_name(name)} {_show(a)}, this run "
                                 f"{_show(b)}", path, hint="give the architecture options of the run it comes from")
    skip = set(family.data_state)
    theirs = {k: v for k, v in state["model"].items() if k not in skip}
    ours = {k: v for k, v in model.state_dict().items() if k not in skip}
    for key in sorted(set(ours) | set(theirs)):
        a, b = theirs.get(key), ours.get(key)
        if a is None or b is None or tuple(a.shape) != tuple(b.shape):
            there = "absent" if a is None else tuple(a.shape)
            here = "absent" if b is None else tuple(b.shape)
            size = ""
            if state.get("build", {}).get("D") != build.get("D"):
                size = f"; images of D={state['build'].get('D')} there, D={build.get('D')} here"
            raise InputError(f"--load: the checkpoint's model has another architecture ({key}: {there} there, "
                             f"{here} here{size})", path, hint="give the architecture options of the run it comes from")
    model.load_state_dict(theirs, strict=False)


def _detach_log_file() -> None:
    logger = logging.getLogger("cryoscape")
    for h in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        logger.removeHandler(h)
        h.close()


def _attach_log_file(run_dir: Path) -> None:
    logger = logging.getLogger("cryoscape")
    path = (run_dir / "log.txt").resolve()
    _detach_log_file()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
