"""``train(config, run_dir)``: load the particles, split, build the family's model and run the engine."""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import numpy as np
import torch

from cryoscape.config import RunConfig, load_config, save_config
from cryoscape.errors import InputError
from cryoscape.models.registry import get_family
from cryoscape.train.checkpoint import latest_checkpoint, load_checkpoint
from cryoscape.train.distributed import DistInfo, barrier, init_distributed
from cryoscape.train.engine import Engine, EngineSettings
from cryoscape.utils.atomic import atomic_path, check_writable_dir
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
    """The particle set named by ``config.data`` (with ``--ind`` applied) and the original indices.

    A family with its own input format (tomoDRGN's tilt series) supplies ``load_particles(config)``.
    """
    from cryoscape.io.indices import read_indices
    from cryoscape.io.particles import load_particles

    family_loader = getattr(get_family(config.model.family), "load_particles", None)
    if family_loader is not None:
        return family_loader(config)
    d = config.data
    particles = load_particles(d.particles, poses=d.poses, ctf=d.ctf, datadir=d.datadir, apix=d.apix, lazy=True,
                               **d.reader_options())
    n_total = len(particles)
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


def with_absolute_paths(config: RunConfig) -> RunConfig:
    """A copy whose input paths are absolute, so later commands work from any folder."""
    d = config.data
    paths = {k: str(Path(v).resolve()) for k in ("particles", "poses", "ctf", "ind", "datadir") if (v := getattr(d, k))}
    return dataclasses.replace(config, data=dataclasses.replace(d, **paths))


def train(config: RunConfig, run_dir: str | Path, resume: bool = False, progress: bool = True) -> Path:
    """Train a model as configured; returns the run folder. See ``docs/run-directory.md`` for what is written."""
    run_dir = Path(run_dir)
    keep_freed_memory()
    info = init_distributed()
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    if info.is_main:
        check_output_location(run_dir)  # writable, but nothing is created until the inputs have been checked
    else:
        log.setLevel(logging.WARNING)  # one process reports
    resume_from = None
    if resume:
        resume_from = latest_checkpoint(run_dir)
        if resume_from is None:
            raise InputError("nothing to resume: no checkpoint in this run folder", run_dir)
        saved = load_config(run_dir / "config.yaml")
        saved.train.epochs = config.train.epochs
        config = saved
    elif latest_checkpoint(run_dir) is not None:
        raise InputError("this run folder already has checkpoints", run_dir,
                         hint="continue it with --resume, or choose another -o")
    else:
        config = with_absolute_paths(config)

    torch.manual_seed(config.train.seed)
    device = select_device(config.train.device, info)
    family = get_family(config.model.family)
    resolve_defaults = getattr(family, "resolve_defaults", None)  # device-dependent defaults (opus-dsd widths)
    if resolve_defaults is not None:
        config = resolve_defaults(config, device)
    particles, indices = load_training_particles(config)
    state = load_checkpoint(resume_from) if resume_from else None
    norm = state["build"].get("norm_std") if state else None
    data = family.make_data(particles, config, norm_std=norm, progress=progress and info.is_main)
    data.to(device)  # prepared data (in memory) and metadata stay on the training device; lazy batches move there
    build = family.build_info(data)
    model = family.build_model(config, build)
    optimizer, scheduler = family.make_optimizer(model, config)
    train_pos, val_pos = split_positions(len(data), config.data.val_frac, config.train.seed)
    if info.is_main:
        if resume:
            stale = remove_partial_files([run_dir, run_dir / "checkpoints", run_dir / "latents"])
            if stale:
                log.info(f"removed {len(stale)} partial file(s) left by the interrupted run")
        check_training_space(run_dir, model, len(data), config.model.zdim, state["epoch"] if state else 0,
                             config.train.epochs, config.train.checkpoint_every)
        check_writable_dir(run_dir)
        _attach_log_file(run_dir)

    if info.is_main and not resume:
        save_config(config, run_dir / "config.yaml")
        with atomic_path(run_dir / "indices.npy") as tmp:
            np.save(tmp, indices)
        with atomic_path(run_dir / "split.npz") as tmp:
            np.savez(tmp, train=train_pos, val=val_pos)
    barrier(info)
    t = config.train
    settings = EngineSettings(epochs=t.epochs, batch_size=t.batch_size, seed=t.seed, amp=t.amp,
                              checkpoint_every=t.checkpoint_every, progress=progress)
    plan = getattr(family, "epoch_batches", None)
    engine = Engine(model, data, optimizer, settings, train_pos, val_pos, run_dir, device, info, build=build,
                    family=family.name, scheduler=scheduler, epoch_end=getattr(family, "epoch_end", None),
                    batch_plan=functools.partial(plan, data) if plan else None)
    if state is not None:
        engine.load_state_dict(state)
        log.info(f"resuming from {resume_from} (epoch {engine.state.epoch}, step {engine.state.step})")
    n_params = sum(p.numel() for p in model.parameters())
    log.info(f"{family.name}: {len(train_pos)} training and {len(val_pos)} validation particles, "
             f"D={build.get('D')}, {n_params:,} parameters, device {device}"
             + (f", {info.world_size} processes" if info.enabled else ""))
    try:
        engine.fit()
        if info.is_main:
            log.info(f"done: {run_dir}")
    finally:
        _detach_log_file()
    return run_dir


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
