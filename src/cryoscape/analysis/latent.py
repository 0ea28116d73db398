"""Latent-space analysis: loading latents from a run, PCA, UMAP, k-means "on data", PC traversal points.

Computation only (no plotting). The choices follow the cryoDRGN paper's Methods: PCA and k-means with
scikit-learn, UMAP (McInnes et al.) for a 2-D view, k-means centres snapped to the nearest particle so a
volume generated there is supported by data, and PC traversals at evenly spaced points between the 5th and
95th percentile of a principal component.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from cryoscape.errors import InputError
from cryoscape.rundir import RunDir

__all__ = [
    "LatentSet",
    "PCAResult",
    "KMeansResult",
    "load_latents",
    "run_pca",
    "run_umap",
    "kmeans_on_data",
    "nearest_indices",
    "pc_traversal_points",
]


def _as_latents(z, name: str = "z") -> np.ndarray:
    """``z`` as a float64 ``(N, zdim)`` array; a 1-D array is one latent dimension."""
    arr = np.asarray(z, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{name} has shape {arr.shape}, expected (N, zdim) with N >= 1")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or Inf values", hint="the training run may have diverged")
    return arr


# --------------------------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class LatentSet:
    """Latents of one run (or a bare ``.npy`` file).

    Attributes
    ----------
    z : np.ndarray
        float32 ``(N, zdim)`` posterior means, in ``indices`` order.
    epoch : int or None
        The epoch they belong to (None for a bare file).
    run_dir : Path or None
        The run directory (None for a bare file).
    indices : np.ndarray or None
        int64 ``(N,)`` indices into the original particle list (``RUN/indices.npy``), when present.
    """

    z: np.ndarray
    epoch: int | None
    run_dir: Path | None
    indices: np.ndarray | None


def _resolve_latent_epoch(run_dir: Path, epoch: int | None = None) -> int:
    """``epoch`` if its latents exist; else ``RUN/best_epoch`` when its latents exist; else the last saved latents
    (:meth:`cryoscape.rundir.RunDir.resolve_epoch` of the latents).
    """
    return RunDir(run_dir).resolve_epoch(epoch, of="latents")


def load_latents(source: str | Path, epoch: int | None = None) -> LatentSet:
    """Load latents from a run directory (``RUN/latents/epoch_NNN.npy``) or a ``.npy`` file of shape ``(N, zdim)``.

    Parameters
    ----------
    source : path
        A run directory or a ``.npy`` file.
    epoch : int, optional
        Epoch (1-based) for a run directory; default: the ``best_epoch`` file, else the last epoch.
    """
    source = Path(source)
    if source.is_dir():
        epoch = _resolve_latent_epoch(source, epoch)
        path = RunDir(source).latents_path(epoch)
        run_dir = source
    elif source.is_file():
        path, run_dir, epoch = source, None, None
    else:
        raise InputError("no such run directory or latent file", source)
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"not a readable .npy array ({exc})", path) from None
    z = _as_latents(z, str(path)).astype(np.float32)
    indices = None
    if run_dir is not None and (run_dir / "indices.npy").is_file():
        indices = np.load(run_dir / "indices.npy", allow_pickle=False).astype(np.int64)
        if indices.shape != (z.shape[0],):
            raise InputError(f"indices.npy has shape {indices.shape} but the latents have {z.shape[0]} rows",
                             run_dir / "indices.npy")
    return LatentSet(z=z, epoch=epoch, run_dir=run_dir, indices=indices)


# --------------------------------------------------------------------------------------------------------------
# PCA and UMAP


@dataclass(frozen=True)
class PCAResult:
    """PCA of latents.

    Attributes
    ----------
    projected : np.ndarray
        ``(N, n_components)`` coordinates of each latent along the principal components.
    explained_variance_ratio : np.ndarray
        ``(n_components,)`` fraction of the total variance along each component.
    components : np.ndarray
        ``(n_components, zdim)`` unit principal axes (rows).
    mean : np.ndarray
        ``(zdim,)`` mean latent.
    """

    projected: np.ndarray
    explained_variance_ratio: np.ndarray
    components: np.ndarray
    mean: np.ndarray

    def inverse_transform(self, coords: np.ndarray) -> np.ndarray:
        """Latent points ``(M, zdim)`` for PC coordinates ``(M, n_components)``."""
        return np.asarray(coords, dtype=np.float64) @ self.components + self.mean


def run_pca(z: np.ndarray, n_components: int | None = None) -> PCAResult:
    """Principal component analysis of latents ``z`` ``(N, zdim)`` (scikit-learn, centred, not whitened).

    ``n_components`` defaults to ``min(N, zdim)``.
    """
    from sklearn.decomposition import PCA

    z = _as_latents(z)
    n_max = min(z.shape)
    n = n_max if n_components is None else int(n_components)
    if not 1 <= n <= n_max:
        raise InputError(f"n_components={n} must be between 1 and min(N, zdim) = {n_max}")
    pca = PCA(n_components=n).fit(z)
    return PCAResult(
        projected=pca.transform(z),
        explained_variance_ratio=np.asarray(pca.explained_variance_ratio_),
        components=np.asarray(pca.components_),
        mean=np.asarray(pca.mean_),
    )


def run_umap(z: np.ndarray, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
             min_points: int = 20) -> np.ndarray:
    """2-D UMAP embedding ``(N, 2)`` of latents ``z`` ``(N, zdim)``.

    UMAP is only meaningful for ``zdim > 2`` and enough points. Fallbacks, each with a ``UserWarning``:
    ``zdim <= 2`` returns ``z`` itself (a zero second column for ``zdim == 1``); fewer than ``min_points``
    latents returns the first two principal components. ``n_neighbors`` is capped at ``N - 1``.
    With a fixed ``seed`` the embedding is reproducible (UMAP then runs single-threaded).
    """
    z = _as_latents(z)
    n, zdim = z.shape
    if zdim <= 2:
        warnings.warn(f"UMAP skipped: the latent space has only {zdim} dimension(s); showing z directly",
                      stacklevel=2)
        return np.column_stack([z, np.zeros(n)]) if zdim == 1 else z.copy()
    if n < max(int(min_points), 4):
        warnings.warn(f"UMAP skipped: only {n} latents (need {min_points}); showing PC1/PC2 instead", stacklevel=2)
        return run_pca(z, n_components=2).projected
    import umap

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        reducer = umap.UMAP(n_neighbors=min(int(n_neighbors), n - 1), min_dist=min_dist, random_state=seed)
        return np.asarray(reducer.fit_transform(z.astype(np.float32)), dtype=np.float64)


# --------------------------------------------------------------------------------------------------------------
# k-means and traversal points


class KMeansResult(NamedTuple):
    """k-means of latents with centres snapped to data.

    labels : ``(N,)`` int cluster of each latent. centers : ``(k, zdim)`` the latent of the particle nearest each
    k-means centre (a data-supported point to generate a volume at). center_indices : ``(k,)`` those particles.
    """

    labels: np.ndarray
    centers: np.ndarray
    center_indices: np.ndarray


def nearest_indices(z: np.ndarray, points: np.ndarray) -> np.ndarray:
    """For each point ``(M, zdim)`` the index of the nearest latent in ``z`` ``(N, zdim)`` (Euclidean)."""
    from sklearn.neighbors import NearestNeighbors

    z, points = _as_latents(z), _as_latents(points, "points")
    if points.shape[1] != z.shape[1]:
        raise InputError(f"points have {points.shape[1]} dimensions but the latents have {z.shape[1]}")
    return NearestNeighbors(n_neighbors=1).fit(z).kneighbors(points, return_distance=False)[:, 0].astype(np.int64)


def kmeans_on_data(z: np.ndarray, k: int, seed: int = 0, n_init: int = 10) -> KMeansResult:
    """k-means clustering of latents ``z`` ``(N, zdim)`` into ``k`` clusters (scikit-learn, k-means++).

    Each centre is replaced by the latent of the particle nearest to it, so the returned ``centers`` lie on the
    data (cryoDRGN's "on-data" centres).
    """
    from sklearn.cluster import KMeans

    z = _as_latents(z)
    k = int(k)
    if not 1 <= k <= z.shape[0]:
        raise InputError(f"cannot make {k} clusters from {z.shape[0]} latents", hint="choose 1 <= k <= N")
    km = KMeans(n_clusters=k, random_state=seed, n_init=n_init).fit(z)
    idx = nearest_indices(z, km.cluster_centers_)
    return KMeansResult(labels=km.labels_.astype(np.int64), centers=z[idx].copy(), center_indices=idx)


def pc_traversal_points(z: np.ndarray, pc: int, n_points: int = 10, lower_percentile: float = 5.0,
                        upper_percentile: float = 95.0, pca: PCAResult | None = None) -> np.ndarray:
    """Latent points ``(n_points, zdim)`` along principal component ``pc`` (1-based: ``pc=1`` is PC1).

    The points are evenly spaced in PC ``pc`` from its ``lower_percentile`` to its ``upper_percentile``
    (over the data), with every other PC coordinate at 0 (the data mean), mapped back to latent space.
    Pass ``pca`` to reuse a fitted :class:`PCAResult` of the same ``z``.
    """
    z = _as_latents(z)
    if pca is None:
        pca = run_pca(z)
    n_comp = pca.components.shape[0]
    if not 1 <= int(pc) <= n_comp:
        raise InputError(f"PC{pc} does not exist: there are {n_comp} principal components")
    if not 0 <= lower_percentile < upper_percentile <= 100:
        raise InputError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower_percentile}, "
                         f"{upper_percentile}")
    if int(n_points) < 1:
        raise InputError(f"n_points must be at least 1, got {n_points}")
    values = pca.projected[:, int(pc) - 1]
    lo, hi = np.percentile(values, [lower_percentile, upper_percentile])
    coords = np.zeros((int(n_points), n_comp))
    coords[:, int(pc) - 1] = np.linspace(lo, hi, int(n_points))
    return pca.inverse_transform(coords)
