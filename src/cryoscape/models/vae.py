"""The VAE pieces every family shares: the reparameterised draw, the Gaussian KL term, Hartley values from a
decoder's half-plane output, and volumes decoded a few latents at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = ["reparameterize", "gaussian_kl", "kl_divergence", "hartley_from_half_plane", "volumes_in_batches"]


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, training: bool) -> torch.Tensor:
    """A draw ``mu + eps * exp(logvar / 2)`` (``eps ~ N(0, I)``) while training, the mean ``mu`` otherwise."""
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if training else mu


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, I))`` per row, ``(B,)``, for ``mu``, ``logvar`` ``(B, zdim)``."""
    return -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of :func:`gaussian_kl`."""
    return gaussian_kl(mu, logvar).mean()


def hartley_from_half_plane(out: torch.Tensor, m: int) -> torch.Tensor:
    """Hartley values ``(..., 2 m + K)`` from a decoder's ``(re, im)`` output ``(..., m + K, 2)`` at ``m``
    half-plane points followed by ``K`` self-conjugate ones (the DC): ``[re - im, re + im`` (their mates)``, re]``.
    """
    re, im = out[..., 0], out[..., 1]
    return torch.cat([re[..., :m] - im[..., :m], re[..., :m] + im[..., :m], re[..., m:]], dim=-1)


def volumes_in_batches(z, zdim: int, batch_size: int, decode: Callable[[torch.Tensor], torch.Tensor],
                       D: int) -> np.ndarray:
    """Volumes ``(n, D, D, D)`` float32 at latents ``z`` ``(n, zdim)``, ``decode`` (``(b, zdim)`` float32 tensor
    -> ``(b, D, D, D)`` tensor) called on ``batch_size`` latents at a time.
    """
    z = np.asarray(z, dtype=np.float32).reshape(-1, zdim)
    step = max(1, int(batch_size))
    out = [decode(torch.from_numpy(z[i : i + step])).float().cpu().numpy() for i in range(0, len(z), step)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, D, D, D), np.float32)
