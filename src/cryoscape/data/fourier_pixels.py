"""The set of Fourier pixels a slice-based model sees, in Hermitian-half order.

Pixels inside the circle of radius ``< D/2`` are ordered ``[half (M), mates (M), DC (1)]`` where ``half`` is
the independent half-plane and ``mates`` their Friedel mates ``-k``. A decoder that predicts the complex value
``F = re + i im`` on the half only gives the Hartley values ``H(k) = re - im`` and ``H(-k) = re + im``.
"""

from __future__ import annotations

import functools
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
    def create(cls, D: int, radius_px: float | None = None) -> FourierPixels:
        """The pixels of a ``D x D`` image, within ``radius_px`` of the origin if given."""
        half, mates, dc = hermitian_half(D, radius_px)
        index = torch.cat([half, mates, torch.tensor([dc])])
        freqs = freq_grid_2d(D).reshape(-1, 2)[index]
        return cls(D=D, index=index, n_half=int(half.numel()), freqs=freqs)

    @property
    def n_pixels(self) -> int:
        return int(self.index.numel())

    @functools.cached_property
    def rfft_gather(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Where each pixel sits in ``torch.fft.rfft2`` output of an uncentred image: row ``(P,)``, column ``(P,)``
        and the sign ``(P,)`` of its imaginary part (-1 where it is read from its Friedel mate, ``F(-k) = conj
        F(k)`` for real images, because ``rfft2`` keeps only ``kx >= 0``)."""
        D = self.D
        ky = torch.div(self.index, D, rounding_mode="floor") - D // 2
        kx = self.index % D - D // 2
        mate = kx < 0
        ky, kx = torch.where(mate, -ky, ky), torch.where(mate, -kx, kx)
        return torch.remainder(ky, D), kx, torch.where(mate, -1.0, 1.0)

    def half_freqs(self) -> torch.Tensor:
        """``(M, 2)`` frequencies of the independent half."""
        return self.freqs[: self.n_half]
