"""What the latent-space explorer shows: 2-D views of the latents, cluster labels and per-particle colour columns.

Everything is read from a run folder (``docs/run-directory.md``) and computed in memory; nothing is written.
Cluster labels come from ``cryoscape analyze`` (``RUN/analysis/epoch_NNN/kmeansK/labels.npy``) when present,
else k-means is run here with the same function (:func:`cryoscape.analysis.latent.kmeans_on_data`). The UMAP of
an analysis (``umap.npy``) is reused the same way. Colour columns are the latent dimensions and the numeric
columns of the particle metadata (STAR table, cryoSPARC ``.cs`` fields, or the CTF of a ``ctf.pkl``), in run order.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cryoscape.errors import CryoscapeError, InputError

if TYPE_CHECKING:
    from cryoscape.io.particles import ParticleSet
    from cryoscape.io.tilt_set import TiltSeriesSet

log = logging.getLogger("cryoscape")

__all__ = ["View", "ExplorerData", "load_explorer_data", "metadata_columns"]

MAX_METADATA_COLUMNS = 60


@dataclass(frozen=True)
class View:
    """A 2-D view of the latents: ``xy`` ``(N, 2)`` float64 and the two axis titles."""

    xy: np.ndarray
    axes: tuple[str, str]


@dataclass
class ExplorerData:
    """Everything the explorer page and server need, in run order (the order of ``RUN/indices.npy``).

    Attributes
    ----------
    run_dir : Path
    epoch : int
        Epoch of the latents shown.
    z : np.ndarray
        float32 ``(N, zdim)`` latents.
    input_indices : np.ndarray
        int64 ``(N,)`` index of each particle in the original input (STAR/.cs/.mrcs).
    views : dict of str -> View
        ``"PCA"`` (or ``"z"`` for zdim 1) and, when available, ``"UMAP"``.
    labels : np.ndarray
        int64 ``(N,)`` k-means cluster of each particle (0-based).
    label_source : str
        Where the labels come from (a ``labels.npy`` path, or "computed").
    metadata : dict of str -> np.ndarray
        float64 ``(N,)`` per-particle metadata values (NaN where not numeric), by column name.
    particles : ParticleSet, TiltSeriesSet or None
        The run's full input (for writing subsets); None when it could not be loaded.
    family : object or None
        The run's model family (see :mod:`cryoscape.models.registry`); a family with its own input format
        (tomoDRGN) loads and writes its particles itself, as in ``cryoscape filter``.
    particles_problem : str or None
        Why ``particles`` is None.
    refine_poses : bool
        The run learned its poses (``train --refine-poses``): exported selections carry the poses learned by
        ``epoch``, as ``cryoscape filter`` writes them.
    """

    run_dir: Path
    epoch: int
    z: np.ndarray
    input_indices: np.ndarray
    views: dict
    labels: np.ndarray
    label_source: str
    metadata: dict = field(default_factory=dict)
    particles: ParticleSet | TiltSeriesSet | None = None
    particles_problem: str | None = None
    family: object | None = None
    refine_poses: bool = False

    @property
    def n(self) -> int:
        """Number of particles in the run."""
        return int(self.z.shape[0])

    @property
    def zdim(self) -> int:
        return int(self.z.shape[1])

    @property
    def n_input(self) -> int:
        """Number of particles in the original input (``max index + 1`` when the input could not be loaded)."""
        if self.particles is not None:
            return len(self.particles)
        return int(self.input_indices.max()) + 1 if self.n else 0

    def latent_column_names(self) -> list[str]:
        """``["z1", ..., "zD"]`` (1-based, as in the plots)."""
        return [f"z{i + 1}" for i in range(self.zdim)]

    def column(self, name: str) -> np.ndarray:
        """float64 ``(N,)`` values of a colour column (a latent dimension ``zI`` or a metadata column)."""
        latent = self.latent_column_names()
        if name in latent:
            return self.z[:, latent.index(name)].astype(np.float64)
        if name in self.metadata:
            return self.metadata[name]
        raise InputError(f"no colour column {name!r}")


def _numeric_or_none(values) -> np.ndarray | None:
    """float64 ``(N,)`` of a 1-D numeric column that is not constant, else None."""
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.dtype.kind not in "biuf":
        return None
    arr = arr.astype(np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0 or np.all(finite == finite[0]):
        return None
    return arr


def metadata_columns(particles, rows: np.ndarray, limit: int = MAX_METADATA_COLUMNS) -> dict[str, np.ndarray]:
    """Numeric, non-constant per-particle metadata of ``particles`` at source rows ``rows`` ``(N,)``.

    STAR: columns of the particle table (then of the optics table, per particle); ``.cs``: scalar fields such as
    ``ctf/df1_A``; other inputs: the CTF parameters (``defocus_u_angstrom``, ...). At most ``limit`` columns.
    """
    from cryoscape.io.cs import CSParticles
    from cryoscape.io.star import StarParticles
    from cryoscape.metadata import CTF_COLUMNS

    source = particles.source
    out: dict[str, np.ndarray] = {}
    candidates: list[tuple[str, Callable[..., Any]]] = []
    if isinstance(source, StarParticles):
        candidates += [(c, lambda c=c: source.table[c].to_numpy()) for c in source.table.columns]
        if source.optics is not None:
            candidates += [(c, lambda c=c: source.values(c)) for c in source.optics.columns
                           if c not in source.table.columns]
    elif isinstance(source, CSParticles):
        candidates += [(name, lambda name=name: source.array[name]) for name in source.fields
                       if source.array.dtype[name].shape == ()]
    elif particles.ctf is not None:
        candidates += [(name, lambda name=name: getattr(particles.ctf, name)) for name in CTF_COLUMNS]
    for name, get in candidates:
        if len(out) >= limit:
            break
        try:
            values = _numeric_or_none(np.asarray(get())[rows])
        except (CryoscapeError, ValueError, TypeError, IndexError):
            values = None
        if values is not None:
            out[str(name)] = values
    return out


def _find_analysis(run_dir: Path, epoch: int, k: int | None) -> tuple[np.ndarray | None, str, np.ndarray | None]:
    """``(labels, source, umap)`` from the analysis of ``epoch`` (the latest that ``analyze`` recorded in
    ``RUN/analyses.txt``, else ``RUN/analysis/epoch_NNN``) where present (``None`` otherwise).
    """
    from cryoscape.analysis.selection import find_kmeans_labels

    base = run_dir / "analysis" / f"epoch_{epoch:03d}"
    labels, source = None, "computed"
    path: Path | None
    try:
        path = find_kmeans_labels(run_dir, epoch, k)
    except InputError:
        found = sorted(base.glob("kmeans*/labels.npy"), key=lambda p: p.parent.name)
        path = found[0] if found and k is None else None
    if path is not None:
        try:
            labels, source = np.load(path, allow_pickle=False).astype(np.int64), str(path)
        except (ValueError, OSError):
            log.warning(f"{path}: not a readable label file; computing k-means")
    umap = None
    if path is not None:  # the analysis the labels came from (it may have been written with `analyze -o`)
        base = path.parent.parent
    if (base / "umap.npy").is_file():
        try:
            umap = np.load(base / "umap.npy", allow_pickle=False).astype(np.float64)
        except (ValueError, OSError):
            umap = None
    return labels, source, umap


def load_explorer_data(run_dir, epoch: int | None = None, k: int | None = None, umap: bool = True,
                       seed: int = 0) -> ExplorerData:
    """Read a run folder and prepare the explorer's views, labels and colour columns.

    Parameters
    ----------
    run_dir : path
        A ``cryoscape train`` output folder.
    epoch : int, optional
        Epoch of the latents (default: ``best_epoch``, else the last).
    k : int, optional
        Which ``kmeansK`` of an analysis to use, or the number of clusters to compute (default: the analysis's,
        else ``min(20, N)``).
    umap : bool
        Compute a UMAP when the analysis has none (zdim > 2 only).
    seed : int
        Seed for a computed k-means/UMAP.
    """
    from cryoscape.analysis.latent import kmeans_on_data, load_latents, run_pca, run_umap

    run_dir = Path(run_dir)
    latents = load_latents(run_dir, epoch)
    z = latents.z
    n, zdim = z.shape
    if n < 2:
        raise InputError("need at least two particles to explore", run_dir)
    input_indices = latents.indices if latents.indices is not None else np.arange(n, dtype=np.int64)

    assert latents.epoch is not None  # the latents of a run folder
    labels, label_source, umap_xy = _find_analysis(run_dir, latents.epoch, k)
    if labels is not None and labels.shape != (n,):
        log.warning(f"{label_source}: {labels.shape[0]} labels for {n} particles; computing k-means")
        labels, label_source = None, "computed"
    if labels is None:
        labels = kmeans_on_data(z, int(min(k or 20, n)), seed=seed).labels.astype(np.int64)

    views: dict[str, View] = {}
    if zdim == 1:
        jitter = np.random.default_rng(seed).uniform(-1.0, 1.0, n)  # spreads the points of a 1-D latent
        views["z"] = View(np.column_stack([z[:, 0].astype(np.float64), jitter]), ("z1", "random jitter"))
    else:
        pca = run_pca(z, n_components=2)
        pct = 100 * pca.explained_variance_ratio
        views["PCA"] = View(pca.projected[:, :2], (f"PC1 ({pct[0]:.0f}%)", f"PC2 ({pct[1]:.0f}%)"))
    if umap_xy is not None and umap_xy.shape == (n, 2):
        views["UMAP"] = View(umap_xy, ("UMAP1", "UMAP2"))
    elif umap and zdim > 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            views["UMAP"] = View(run_umap(z, seed=seed), ("UMAP1", "UMAP2"))

    data = ExplorerData(run_dir=run_dir, epoch=int(latents.epoch), z=z, input_indices=input_indices, views=views,
                        labels=labels, label_source=label_source)
    _attach_particles(data)
    return data


def _attach_particles(data: ExplorerData) -> None:
    """Load the run's input particles (as ``cryoscape filter`` does) and their metadata; degrade with a warning."""
    from cryoscape.analysis.selection import load_run_input
    from cryoscape.config import load_config
    from cryoscape.io.particles import ParticleSet

    try:
        config = load_config(data.run_dir / "config.yaml")
        d = config.data
        particles, family = load_run_input(config)
        if data.input_indices.max() >= len(particles):
            raise InputError(f"the run's indices reach {data.input_indices.max()} but the input has "
                             f"{len(particles)} particles", d.particles)
    except CryoscapeError as exc:
        data.particles_problem = str(exc)
        log.warning(f"particle metadata unavailable ({exc}): no metadata colours, selections export indices only")
        return
    data.particles, data.family = particles, family
    data.refine_poses = bool(config.train.learns_poses)
    if isinstance(particles, ParticleSet):
        assert particles.source_indices is not None  # filled in by ParticleSet.__post_init__
        data.metadata = metadata_columns(particles, particles.source_indices[data.input_indices])
