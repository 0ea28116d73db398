"""The set of Fourier pixels a slice-based model sees, in Hermitian-half order.

Pixels inside the circle of radius ``< D/2`` are ordered ``[half (M), mates (M), DC (1)]`` where ``half`` is
the independent half-plane and ``mates`` their Friedel mates ``-k``. A decoder that predicts the complex value
``F = re + i im`` on the half only gives the Hartley values ``H(k) = re - im`` and ``H(-k) = re + im``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cryoscape.imaging.fft import freq_grid_2d
from cryoscape.imaging.lattice import hermitian_half


@dataclass(frozen=True)
class FourierPixels:
    """Index and frequency tables for a ``D x D`` image.

    Attributes
    ----------
    D : box size.
    index : long ``(P,)``, flattened ``D*D`` indices in ``[half, mates, DC]`` order, ``P = 2M + 1``.
    n_half : ``M``.
    freqs : float ``(P, 2)``, ``(kx, ky)`` in cycles/pixel of each pixel in ``index`` order.
    """

    D: int
    index: torch.Tensor
    n_half: int
    freqs: torch.Tensor

    @classmethod
    def create(cls, D: int, radius_px: float | None = None) -> "FourierPixels":
        half, mates, dc = hermitian_half(D, radius_px)
        index = torch.cat([half, mates, torch.tensor([dc])])
        freqs = freq_grid_2d(D).reshape(-1, 2)[index]
        return cls(D=D, index=index, n_half=int(half.numel()), freqs=freqs)

    @property
    def n_pixels(self) -> int:
        return int(self.index.numel())

    def half_freqs(self) -> torch.Tensor:
        """``(M, 2)`` frequencies of the independent half."""
        return self.freqs[: self.n_half]
