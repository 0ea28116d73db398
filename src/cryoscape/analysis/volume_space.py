"""Volume-space analysis: generate many volumes from latents, compare each to a reference, and analyse them as
voxel vectors (PCA, then UMAP and k-means), as in the tomoDRGN paper ("Heterogeneity ... was quantified by
generating all volumes ... and either (1) calculating the map-map CC to the STA map ... or (2) performing PCA on
the array of all volumes' voxels followed by UMAP").

``generator`` is any object with ``generate_volumes(z (n, zdim) float32, batch_size=...) -> (n, D, D, D)``
float32 and ``pixel_size_angstrom`` (what :func:`cryoscape.models.load_run` returns).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryoscape.analysis.latent import _as_latents, kmeans_on_data, run_umap
from cryoscape.analysis.maps import auto_mask, map_correlation
from cryoscape.errors import InputError

__all__ = [
    "iter_volume_batches",
    "generate_volumes",
    "write_volume_series",
    "load_generator",
    "correlation_to_reference",
    "VolumeSpaceResult",
    "analyze_volume_space",
]


def iter_volume_batches(generator, z: np.ndarray, batch_size: int = 16) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, volumes)`` for consecutive batches of ``z`` ``(N, zdim)``; volumes ``(b, D, D, D)`` float32."""
    z = _as_latents(z).astype(np.float32)
    if int(batch_size) < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    zdim = getattr(generator, "zdim", z.shape[1])
    if z.shape[1] != zdim:
        raise InputError(f"latents have {z.shape[1]} dimensions but the model expects zdim = {zdim}")
    for start in range(0, z.shape[0], int(batch_size)):
        chunk = z[start:start + int(batch_size)]
        vols = np.asarray(generator.generate_volumes(chunk, batch_size=int(batch_size)), dtype=np.float32)
        if vols.ndim != 4 or vols.shape[0] != chunk.shape[0]:
            raise ValueError(f"generate_volumes returned shape {vols.shape} for {chunk.shape[0]} latents")
        yield start, vols


def generate_volumes(generator, z: np.ndarray, batch_size: int = 16, max_gigabytes: float = 8.0) -> np.ndarray:
    """All volumes ``(N, D, D, D)`` float32 for latents ``z`` ``(N, zdim)``, generated in batches.

    Raises :class:`InputError` before generating when they would need more than ``max_gigabytes`` of memory.
    """
    z = _as_latents(z)
    D = getattr(generator, "D", None)
    if D is not None and z.shape[0] * int(D) ** 3 * 4 > max_gigabytes * 1e9:
        raise InputError(f"{z.shape[0]} volumes of {D}^3 voxels need more than {max_gigabytes} GB",
                         hint="use fewer latents (e.g. k-means centres) or a smaller box")
    return np.concatenate([v for _, v in iter_volume_batches(generator, z, batch_size)], axis=0)


def write_volume_series(generator, z: np.ndarray, out_dir: str | Path, batch_size: int = 4,
                        prefix: str = "vol") -> list[Path]:
    """Generate the volume of each latent in ``z`` ``(n, zdim)`` and write ``out_dir/{prefix}_001.mrc``, ... .

    The voxel size written is the generator's ``pixel_size_angstrom``. Returns the paths, in ``z`` order.
    """
    from cryoscape.io.mrc import write_mrc

    out_dir = Path(out_dir)
    pixel_size = float(generator.pixel_size_angstrom)
    paths = []
    for start, vols in iter_volume_batches(generator, z, batch_size):
        for i, vol in enumerate(vols):
            paths.append(write_mrc(out_dir / f"{prefix}_{start + i + 1:03d}.mrc", vol, voxel_size_angstrom=pixel_size))
    return paths


def load_generator(run_dir: str | Path, epoch: int | None = None, device: str = "auto"):
    """The trained model of ``run_dir`` (``cryoscape.models.load_run``) on ``device`` ("auto", "cpu", "cuda")."""
    from cryoscape.models import load_run
    from cryoscape.train.distributed import DistInfo
    from cryoscape.train.run import select_device

    return load_run(run_dir, epoch, device=select_device(device, DistInfo()))


def correlation_to_reference(generator, z: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None,
                             batch_size: int = 16) -> np.ndarray:
    """Real-space correlation ``(N,)`` of the volume of each latent in ``z`` with ``reference`` ``(D, D, D)``.

    Volumes are generated batch by batch and not kept, so ``N`` can be the whole data set.
    """
    z = _as_latents(z)
    out = np.empty(z.shape[0])
    for start, vols in iter_volume_batches(generator, z, batch_size):
        for i, vol in enumerate(vols):
            out[start + i] = map_correlation(vol, reference, mask)
    return out


@dataclass(frozen=True)
class VolumeSpaceResult:
    """Volume-space analysis of ``N`` volumes.

    Attributes
    ----------
    pcs : ``(N, n_components)`` coordinates of each (masked) volume along the voxel-space principal components.
    explained_variance_ratio : ``(n_components,)``.
    components : ``(n_components, D, D, D)`` principal volumes (unit norm over the masked voxels).
    mean_volume : ``(D, D, D)`` mean of the masked volumes.
    mask : ``(D, D, D)`` float32 mask used (all ones without a mask).
    umap : ``(N, 2)`` UMAP of ``pcs`` or None.
    labels : ``(N,)`` k-means labels in PC space or None; center_indices : ``(k,)`` volumes nearest the centres.
    center_volumes : ``(k, D, D, D)`` those volumes (unmasked) or None.
    cluster_means : ``(k, D, D, D)`` the voxel-wise mean of the (unmasked) volumes of each cluster, or None.
    """

    pcs: np.ndarray
    explained_variance_ratio: np.ndarray
    components: np.ndarray
    mean_volume: np.ndarray
    mask: np.ndarray
    umap: np.ndarray | None
    labels: np.ndarray | None
    center_indices: np.ndarray | None
    center_volumes: np.ndarray | None = None
    cluster_means: np.ndarray | None = None


def analyze_volume_space(volumes_or_generator, z: np.ndarray | None = None, mask: np.ndarray | str | None = None,
                         n_components: int = 20, k: int | None = None, umap: bool = True, seed: int = 0,
                         batch_size: int = 16) -> VolumeSpaceResult:
    """PCA of volumes as voxel vectors, then optional UMAP and k-means on the principal components.

    Parameters
    ----------
    volumes_or_generator : np.ndarray or generator
        ``(N, D, D, D)`` volumes, or a generator object (then ``z`` ``(N, zdim)`` is required).
    mask : None, "auto" or ``(D, D, D)`` array
        Voxel weights applied before PCA; ``"auto"``: :func:`cryoscape.analysis.maps.auto_mask` of the mean
        volume (pixel size from the generator when available).
    n_components : int
        Number of principal components (capped at ``min(N, n_voxels)``).
    k : int, optional
        Number of k-means clusters on the principal components; the result then also holds each cluster's
        centre volume and mean volume (per-cluster maps).
    """
    from sklearn.decomposition import PCA

    pixel_size = 1.0
    if hasattr(volumes_or_generator, "generate_volumes"):
        if z is None:
            raise InputError("latents z are needed to generate volumes")
        pixel_size = float(getattr(volumes_or_generator, "pixel_size_angstrom", 1.0))
        vols = generate_volumes(volumes_or_generator, z, batch_size)
    else:
        vols = np.asarray(volumes_or_generator, dtype=np.float32)
    if vols.ndim != 4 or len(set(vols.shape[1:])) != 1:
        raise InputError(f"volumes must be (N, D, D, D), got shape {vols.shape}")
    n, shape = vols.shape[0], vols.shape[1:]
    if n < 2:
        raise InputError(f"volume-space PCA needs at least 2 volumes, got {n}")
    if isinstance(mask, str):
        if mask != "auto":
            raise InputError(f"mask must be None, 'auto' or an array, got {mask!r}")
        m = auto_mask(vols.mean(axis=0), pixel_size)
    elif mask is None:
        m = np.ones(shape, dtype=np.float32)
    else:
        m = np.asarray(mask, dtype=np.float32)
        if m.shape != shape:
            raise InputError(f"mask has shape {m.shape} but the volumes are {shape}")
    inside = m.ravel() > 0
    X = vols.reshape(n, -1)[:, inside] * m.ravel()[inside]
    n_comp = max(1, min(int(n_components), n, X.shape[1]))
    pca = PCA(n_components=n_comp, random_state=seed).fit(X)
    pcs = pca.transform(X)

    def _to_volume(row: np.ndarray) -> np.ndarray:
        full = np.zeros(m.size, dtype=np.float32)
        full[inside] = row
        return full.reshape(shape)

    emb = run_umap(pcs, seed=seed) if umap else None
    labels = centers = center_volumes = cluster_means = None
    if k is not None:
        labels, _, centers = kmeans_on_data(pcs, k, seed=seed)
        center_volumes = vols[centers].copy()
        cluster_means = np.stack([vols[labels == c].mean(axis=0) if np.any(labels == c) else vols[centers[c]]
                                  for c in range(len(centers))]).astype(np.float32)
    return VolumeSpaceResult(
        pcs=pcs,
        explained_variance_ratio=np.asarray(pca.explained_variance_ratio_),
        components=np.stack([_to_volume(c) for c in pca.components_]),
        mean_volume=_to_volume(pca.mean_),
        mask=m,
        umap=emb,
        labels=labels,
        center_indices=centers,
        center_volumes=center_volumes,
        cluster_means=cluster_means,
    )
