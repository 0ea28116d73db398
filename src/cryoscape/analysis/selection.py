"""Select particles of a trained run (by cluster, latent range or index list) for export back to RELION/cryoSPARC."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryoscape.errors import InputError


def find_kmeans_labels(run_dir: Path, epoch: int, k: int | None = None, analysis_dir: Path | None = None) -> Path:
    """The ``labels.npy`` of a k-means result written by ``cryoscape analyze``.

    Looked for in ``analysis_dir`` when given, else in the analyses of ``epoch`` that ``analyze`` recorded in
    ``RUN/analyses.txt`` (newest first, whatever its ``-o`` was) and then in ``RUN/analysis/epoch_NNN``.
    """
    import logging

    from cryoscape.analysis.analysis_index import INDEX_NAME, analysis_dirs

    bases = [Path(analysis_dir)] if analysis_dir else analysis_dirs(run_dir, epoch)
    for base in bases:
        candidates = sorted(base.glob("kmeans*/labels.npy")) if k is None else [base / f"kmeans{k}" / "labels.npy"]
        candidates = [c for c in candidates if c.is_file()]
        if len(candidates) > 1:
            raise InputError(f"several k-means results ({', '.join(c.parent.name for c in candidates)}); "
                             "choose with --k", base)
        if candidates:
            logging.getLogger("cryoscape").info(f"k-means labels: {candidates[0]}")
            return candidates[0]
    what = f"no kmeans{k}/labels.npy" if k is not None else "no k-means labels"
    where = (f" (nor in the analyses of epoch {epoch} recorded in {Path(run_dir) / INDEX_NAME})"
             if len(bases) > 1 else "")
    raise InputError(f"{what} found{where}; run `cryoscape analyze` first (or give --analysis)", bases[-1])


def select_particles(z: np.ndarray, run_indices: np.ndarray, n_input: int, *, cluster_labels: np.ndarray | None = None,
                     clusters=None, z_range: tuple[int, float, float] | None = None, ind: np.ndarray | None = None,
                     invert: bool = False) -> np.ndarray:
    """Indices into the original input (sorted, int64) of the selected particles.

    Parameters
    ----------
    z : ``(N, zdim)`` latents of the run, in ``run_indices`` order.
    run_indices : ``(N,)`` indices into the original input of the run's particles.
    n_input : number of particles in the original input.
    cluster_labels, clusters : keep particles whose label is in ``clusters``.
    z_range : ``(dim, lo, hi)``: keep particles with ``lo <= z[:, dim] <= hi`` (0-based dim).
    ind : indices into the original input to keep.
    invert : keep the complement (within the run's particles; within the input for ``ind``).
    """
    given = [x is not None for x in (clusters, z_range, ind)]
    if sum(given) != 1:
        raise InputError("give exactly one of --clusters, --z-range or --ind")
    if ind is not None:
        ind = np.asarray(ind, dtype=np.int64)
        if ind.size and (ind.min() < 0 or ind.max() >= n_input):
            raise InputError(f"index file has indices outside 0..{n_input - 1}")
        keep = np.zeros(n_input, bool)
        keep[ind] = True
        chosen = np.nonzero(~keep if invert else keep)[0]
    else:
        if clusters is not None:
            if cluster_labels is None or len(cluster_labels) != len(run_indices):
                raise InputError("cluster labels do not match the run's particles")
            mask = np.isin(cluster_labels, np.asarray(clusters))
        else:
            assert z_range is not None  # exactly one of the three is given
            dim, lo, hi = z_range
            if not 0 <= dim < z.shape[1]:
                raise InputError(f"--z-range dimension {dim} is outside 0..{z.shape[1] - 1}")
            mask = (z[:, dim] >= lo) & (z[:, dim] <= hi)
        chosen = run_indices[~mask if invert else mask]
    chosen = np.sort(np.asarray(chosen, dtype=np.int64))
    if chosen.size == 0:
        raise InputError("the selection is empty; nothing written")
    return chosen


def load_run_input(config, particles_path=None, datadir=None):
    """The original input of a run (before ``--ind``) and its model family.

    ``particles_path`` substitutes another file with the same particles in the same order (e.g. the full-size
    STAR of a run trained on downsampled images), so subsets can be written for it.
    """
    from cryoscape.io.particles import load_particles
    from cryoscape.models.registry import get_family

    family = get_family(config.model.family)
    d = config.data
    if particles_path is not None:
        options = d.reader_options()  # the run's CTF overrides; its .cs alignment set only for a .cs file
        if not str(particles_path).lower().endswith(".cs"):
            options["cs_alignments"] = None
        particles = load_particles(particles_path, datadir=datadir, lazy=True, metadata_optional=True, **options)
    else:
        particles, _ = family.load_particles(config, apply_ind=False)
    return particles, family


def write_selection(particles, family, chosen: np.ndarray, out_dir: Path, fmt: str = "auto",
                    learned=None) -> list[Path]:
    """Write ``indices.npy``, ``indices.txt`` and the particle subset (STAR/.cs, all metadata kept) into ``out_dir``;
    with ``learned`` (:class:`~cryoscape.metadata.Poses` of the chosen particles, :func:`learned_poses_of`) the
    subset's poses are replaced by those.
    """
    from cryoscape.io.indices import write_indices

    out_dir = Path(out_dir)
    written = [write_indices(out_dir / "indices.npy", chosen), write_indices(out_dir / "indices.txt", chosen)]
    written.append(Path(family.write_subset(particles, chosen, out_dir, fmt)))
    if learned is not None:  # the same file, its poses replaced by the learned ones
        if family.own_input_format:
            from cryoscape.io.tilt_series import write_tilt_poses

            write_tilt_poses(particles, chosen, learned.rotations, learned.shifts_angstrom, written[-1])
        else:
            from cryoscape.io.pose_output import write_particles_with_poses

            write_particles_with_poses(particles, chosen, learned, written[-1])
    return written


def learned_poses_of(run_dir: Path, family, particles, chosen: np.ndarray, epoch: int):
    """The poses a ``train --refine-poses`` run learned by ``epoch`` for the chosen input particles ``chosen``
    (:class:`~cryoscape.metadata.Poses`; per tilt image, in the input's order of each particle's images, for a
    tilt-series family); an :class:`~cryoscape.errors.InputError` when a chosen particle was not trained (it has no
    learned pose) or a tilt-series input cannot hold them.
    """
    from cryoscape.metadata import Poses
    from cryoscape.models.poses import load_learned_poses
    from cryoscape.rundir import RunDir

    if family.own_input_format and getattr(particles, "source_format", None) != "imageseries":
        raise InputError("the poses a tilt-series run learned can be written to Warp/M image-series STAR files "
                         "only", run_dir, hint="give --input-poses to write the input's poses")
    _, arrays = load_learned_poses(run_dir, epoch)
    trained = RunDir(run_dir).read_indices()
    run_ids = np.asarray(trained if trained is not None else np.arange(len(particles)), dtype=np.int64)
    where = {int(v): i for i, v in enumerate(run_ids)}
    missing = [int(c) for c in chosen if int(c) not in where]
    if missing:
        raise InputError(f"particle {missing[0]} was not trained in this run, so it has no learned pose", run_dir,
                         hint="give --input-poses to write the input's poses")
    rows = np.array([where[int(c)] for c in chosen], dtype=np.int64)
    if family.own_input_format:  # per tilt image: the images of each chosen particle, in the run's order
        run_offsets = np.concatenate([[0], np.cumsum(particles.tilt_counts[run_ids])])
        rows = np.concatenate([np.arange(run_offsets[r], run_offsets[r + 1]) for r in rows] or
                              [np.zeros(0, np.int64)])
    return Poses(arrays["rotations"][rows], arrays["shifts_angstrom"][rows])
