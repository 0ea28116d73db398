"""OPUS-DSD's structural-disentanglement prior, its latent memory bank, the volume priors and the annealing schedule.

The prior (Luo et al. 2023, Methods "Structural Disentanglement Prior") is UMAP's cross-entropy with the Cauchy
kernel ``q(d) = 1 / (1 + d)`` on squared Euclidean latent distances ``d``: attraction ``-log q = log(1 + d)``
pulls similar codes together, repulsion ``-log(1 - q) = log(1 + 1/d)`` pushes distinct codes apart.

* intra-class (one batch = one projection class): repulsion between all pairs of the batch and attraction to
  each code's ``k`` nearest neighbours in the batch;
* inter-class: attraction to the ``K`` nearest and repulsion from the ``N`` farthest of a random sample of codes of
  *other* projection classes, read from a memory bank of every particle's latent updated with momentum.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "EPS",
    "INTER_REPULSION_WEIGHT",
    "squared_distances",
    "cauchy_attraction",
    "cauchy_repulsion",
    "intra_class_prior",
    "inter_class_prior",
    "MemoryBank",
    "total_variation",
    "l1_norm",
    "cyclic_weight",
]

EPS = 1e-3  # keeps the repulsion finite for coincident codes
INTER_REPULSION_WEIGHT = 3.0  # relative weight of the far-point repulsion, as in the reference implementation


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``(n, m)`` between rows of ``a`` ``(n, k)`` and ``b`` ``(m, k)``."""
    return (a[:, None, :] - b[None, :, :]).pow(2).sum(-1)


def cauchy_attraction(d: torch.Tensor) -> torch.Tensor:
    """``-log q(d) = log(1 + d)`` elementwise for squared distances ``d``."""
    return torch.log1p(d)


def cauchy_repulsion(d: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``-log(1 - q(d)) = log(1 + 1 / d)`` elementwise (``d + eps`` in the denominator)."""
    return torch.log1p(1.0 / (d + eps))


def intra_class_prior(z: torch.Tensor, k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Attraction to the ``k`` nearest neighbours and repulsion between all pairs of one batch.

    Parameters
    ----------
    z : ``(B, zdim)`` latent codes of a batch drawn from one projection class.
    k : neighbours per code (capped at ``B - 1``).

    Returns
    -------
    (attraction, repulsion) : scalar tensors. Repulsion is the mean over pairs ``i != j`` of
    ``min(d_ij, 1) * log(1 + 1/d_ij)`` (the weight, not differentiated, keeps near-duplicates from being torn
    apart, as in the reference implementation); attraction is the mean ``log(1 + d)`` to the neighbours chosen by
    distance. Both are zero for ``B < 2``.
    """
    B = z.shape[0]
    if B < 2 or k < 1:
        zero = z.sum() * 0.0
        return zero, zero
    d = squared_distances(z, z)
    off = ~torch.eye(B, dtype=torch.bool, device=z.device)
    rep = (d.detach().clamp(max=1.0) * cauchy_repulsion(d))[off].mean()
    k = min(k, B - 1)
    masked = d.detach().masked_fill(~off, float("inf"))
    nn_idx = masked.topk(k, dim=1, largest=False).indices  # (B, k)
    att = cauchy_attraction(d.gather(1, nn_idx)).mean()
    return att, rep


def inter_class_prior(z: torch.Tensor, query: torch.Tensor, samples: torch.Tensor, knn: int = 128,
                      kfarthest: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Attraction to the nearest and repulsion from the farthest codes of other projection classes.

    Parameters
    ----------
    z : ``(B, zdim)`` fresh codes (differentiated).
    query : ``(B, zdim)`` codes used to choose the neighbours (e.g. the memory-bank entries of the batch).
    samples : ``(M, zdim)`` codes of other classes (constants).
    knn, kfarthest : requested numbers of nearest / farthest samples; capped at ``M // 4`` and ``M // 2`` so the
        two sets never overlap on small data sets.

    Returns
    -------
    (attraction, repulsion) : mean ``log(1 + d)`` over each code's nearest samples and mean ``log(1 + 1/d)`` over its
    farthest samples; zero when ``M < 4``.
    """
    M = samples.shape[0]
    K, N = min(knn, M // 4), min(kfarthest, M // 2)
    if K < 1 or N < 1:
        zero = z.sum() * 0.0
        return zero, zero
    samples = samples.detach().to(z.dtype)
    order = squared_distances(query.detach().to(z.dtype), samples).argsort(dim=1)  # (B, M) nearest first
    d = squared_distances(z, samples)
    att = cauchy_attraction(d.gather(1, order[:, :K])).mean()
    rep = cauchy_repulsion(d.gather(1, order[:, M - N :])).mean()
    return att, rep


class MemoryBank(nn.Module):
    """Every particle's latent code, updated with momentum; a buffer of the model, saved with its state dict.

    Buffers: ``codes`` ``(N, zdim)`` and ``classes`` ``(N,)`` int64 (projection class of the particle; -1 until
    the particle has been encoded once, see :attr:`filled`).
    """

    # registered buffers (declared for type checkers: nn.Module attribute access is untyped)
    codes: torch.Tensor
    classes: torch.Tensor

    def __init__(self, n_particles: int, zdim: int, momentum: float = 0.7):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.register_buffer("codes", torch.zeros(n_particles, zdim))
        self.register_buffer("classes", torch.full((n_particles,), -1, dtype=torch.int64))

    @property
    def filled(self) -> torch.Tensor:
        """Bool ``(N,)``: entries written at least once."""
        return self.classes >= 0

    @torch.no_grad()
    def update(self, index: torch.Tensor, mu: torch.Tensor, classes: torch.Tensor) -> None:
        """``codes[i] = m * codes[i] + (1 - m) * mu`` for filled entries; first visits store ``mu`` as is.

        Parameters
        ----------
        index : ``(B,)`` int64 particle positions (unique).
        mu : ``(B, zdim)`` posterior means.
        classes : ``(B,)`` projection classes.
        """
        index = index.to(self.codes.device)
        mu = mu.detach().to(self.codes)
        old = self.codes[index]
        was = self.filled[index][:, None]
        self.codes[index] = torch.where(was, self.momentum * old + (1.0 - self.momentum) * mu, mu)
        self.classes[index] = classes.to(self.classes).clamp(min=0)

    def lookup(self, index: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
        """Bank codes ``(B, zdim)`` of ``index``; rows never filled are taken from ``fallback`` ``(B, zdim)``."""
        index = index.to(self.codes.device)
        return torch.where(self.filled[index][:, None], self.codes[index].to(fallback), fallback.detach())

    def sample_other_classes(self, exclude: torch.Tensor, n_samples: int) -> torch.Tensor:
        """Up to ``n_samples`` filled codes ``(M, zdim)`` whose class is not in ``exclude``, drawn without
        replacement (uniformly over particles, i.e. classes in proportion to their size).
        """
        ok = self.filled & ~torch.isin(self.classes, exclude.to(self.classes))
        idx = torch.nonzero(ok).squeeze(1)
        if idx.numel() > n_samples:
            idx = idx[torch.randperm(idx.numel(), device=idx.device)[:n_samples]]
        return self.codes[idx]


def total_variation(volumes: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Isotropic total variation per volume: mean over voxels of ``sqrt(1e-8 + |forward differences|^2)``.

    Parameters
    ----------
    volumes : ``(B, D, D, D)``.
    mask : optional bool ``(D, D, D)``; the mean runs over voxels where it is true.

    Returns
    -------
    ``(B,)``. A unit step along one axis gives ``(D - 1)**2`` voxels with gradient 1 in the ``(D - 1)**3`` voxels
    that have a forward difference on every axis.
    """
    v = volumes[:, :-1, :-1, :-1]
    gz = volumes[:, 1:, :-1, :-1] - v
    gy = volumes[:, :-1, 1:, :-1] - v
    gx = volumes[:, :-1, :-1, 1:] - v
    tv = torch.sqrt(1e-8 + gz * gz + gy * gy + gx * gx)
    if mask is None:
        return tv.flatten(1).mean(1)
    m = mask[:-1, :-1, :-1].to(tv.dtype)
    return (tv * m).flatten(1).sum(1) / m.sum().clamp(min=1.0)


def l1_norm(volumes: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute voxel value per volume ``(B,)`` (LASSO), over ``mask`` (bool ``(D, D, D)``) if given."""
    a = volumes.abs()
    if mask is None:
        return a.flatten(1).mean(1)
    m = mask.to(a.dtype)
    return (a * m).flatten(1).sum(1) / m.sum().clamp(min=1.0)


def cyclic_weight(images_seen: float, ramp_images: float = 100_000, hold_fraction: float = 0.25,
                  floor: float = 0.001) -> float:
    """Cyclical annealing weight (Fu et al. 2019) as a function of the number of images trained on.

    Within each cycle of ``ramp_images * (1 + hold_fraction)`` images the weight rises linearly from ``floor`` to 1
    over ``ramp_images`` images and then stays at 1; the next cycle starts again at ``floor``.
    """
    if ramp_images <= 0:
        return 1.0
    period = ramp_images * (1.0 + hold_fraction)
    t = float(images_seen) % period
    return 1.0 if t >= ramp_images else floor + (1.0 - floor) * t / ramp_images
