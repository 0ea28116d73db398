"""Write the poses learned by `train --refine-poses` or estimated by `cryoscape abinit` to a STAR or .cs file.

The output holds the run's particles (the input's rows that were trained on, all of them without --ind) with every
block, optics group and column of the input kept; only the angles and origins are replaced by the learned ones:
STAR rlnAngleRot/Tilt/Psi (ZYZ Euler angles, degrees) and rlnOriginXAngst/YAngst (Angstrom; RELION 3.0 files:
rlnOriginX/Y in pixels), cryoSPARC alignments3D/pose (rotation vector) and alignments3D/shift (pixels). An input
without poses (an abinit run's STAR straight from extraction, a .cs without alignments3D) gets these columns added.
Validation particles keep their consensus poses (their poses are not refined). A .star from a .cs input (or the other
way round, or from an .mrcs stack with ctf.pkl) is written as new metadata, as `filter --format` does.

Tilt-series runs (--model tomodrgn) with a Warp/M image-series input: a .star with every tilt image of the run's
particles (the input's rows, particle by particle), each image's rlnAngleRot/Tilt/Psi and origin the learned
per-tilt pose (one rigid correction per particle through the tilt geometry). Optimisation sets (RELION 5 /
WarpTools) are refused in one line: their poses are per particle in the tomogram frame.

Example:
  cryoscape write-poses runs/refined -o refined_poses.star
  cryoscape write-poses runs/refined --epoch 20 -o refined_poses.cs
  cryoscape write-poses runs/abinit_homo -o abinit_poses.star
"""

from __future__ import annotations

import argparse


def add_args(p: argparse.ArgumentParser) -> None:
    """Register the options of ``cryoscape write-poses``."""
    p.add_argument("run", help="run folder written by `cryoscape train --refine-poses` or `cryoscape abinit`")
    p.add_argument("-o", "--out", required=True, help="output file: .star (RELION) or .cs (cryoSPARC)")
    p.add_argument("--epoch", type=int, help="epoch whose poses to write (default: the best epoch, else the last)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def run(args) -> int:
    """Write the learned (train --refine-poses) or estimated (abinit) poses of ``args.run`` to ``args.out``."""
    from pathlib import Path

    from cryoscape.config import load_config
    from cryoscape.errors import InputError
    from cryoscape.io.pose_output import write_particles_with_poses
    from cryoscape.metadata import Poses
    from cryoscape.models.registry import get_family
    from cryoscape.rundir import RunDir

    out = Path(args.out)
    if out.suffix.lower() not in (".star", ".cs"):
        raise InputError("the output must be a .star or .cs file", out)
    if out.exists() and not args.overwrite:
        raise InputError("exists already", out, hint="give --overwrite to replace it, or another -o")
    run_dir = RunDir(args.run)
    config = load_config(run_dir.config_path)
    family = get_family(config.model.family)
    if family.own_input_format and config.train.learns_poses:
        return _write_tilt_poses(args, run_dir, family, config, out)
    if family.own_input_format:
        raise InputError(f"write-poses writes single-particle files; this run is a {family.name} run", run_dir.path)
    epoch, learned, particles, indices = _learned_and_input(args, run_dir, family, config)
    poses = Poses(learned["rotations"], learned["shifts_angstrom"])
    written = write_particles_with_poses(particles, indices, poses, out)
    print(f"wrote the poses of epoch {epoch} ({int(learned['refined'].sum())} of {len(indices)} particles refined) "
          f"-> {written}")
    return 0


def _learned_and_input(args, run_dir, family, config):
    """``(epoch, learned pose arrays, the run's whole input, RUN/indices.npy)``, checked to hold one learned pose
    per trained particle.
    """
    import numpy as np

    from cryoscape.errors import InputError
    from cryoscape.models.poses import load_learned_poses

    epoch, learned = load_learned_poses(run_dir.path, args.epoch)
    particles, _ = family.load_particles(config, apply_ind=False)
    indices = run_dir.read_indices()
    if indices is None:
        indices = np.arange(len(particles), dtype=np.int64)
    if len(indices) != len(learned["rotvec"]):
        raise InputError(f"the learned poses hold {len(learned['rotvec'])} particles but RUN/indices.npy "
                         f"{len(indices)}", run_dir.path)
    return epoch, learned, particles, indices


def _write_tilt_poses(args, run_dir, family, config, out) -> int:
    """write-poses of a tilt-series run (image-series input): every image of the run's particles, its pose the
    learned one (``RUN/poses/epoch_NNN.npz`` holds them per image).
    """
    from cryoscape.io.tilt_series import write_tilt_poses

    epoch, learned, tilts, indices = _learned_and_input(args, run_dir, family, config)
    written = write_tilt_poses(tilts, indices, learned["rotations"], learned["shifts_angstrom"], out)
    print(f"wrote the per-tilt poses of epoch {epoch} ({int(learned['refined'].sum())} of {len(indices)} particles "
          f"refined, {len(learned['rotations'])} tilt images) -> {written}")
    return 0
