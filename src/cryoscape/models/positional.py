"""Positional encodings of 3-D Fourier coordinates for coordinate-network decoders (cryoDRGN Methods).

Coordinates are in cycles/pixel, i.e. in ``[-0.5, 0.5]``. With ``D2 = D // 2`` and ``n = pe_dim`` (default
``D2``), the geometric families use frequencies ``f_i`` (radians per unit coordinate), ``i = 0..n-1``:

* ``geom_lowf``:    ``D2 * (1/D2)^(i/(n-1))``           (wavelengths from 2 pi/D2 to 2 pi)
* ``geom_full``:    ``D pi * (1/(D pi))^(i/(n-1))``      (up to the Nyquist frequency)
* ``geom_nohighf``: ``D2 * (2 pi/D2)^(i/(n-1))``
* ``geom_ft``:      ``D pi * (2/D)^(i/(n-1))``
* ``linear_lowf``:  ``1, 2, ..., n``
* ``gaussian``:     random ``(3n, 3)`` frequencies ~ ``N(0, feat_sigma^2) * D2`` (fixed at construction)

The features are ``[sin(f x), cos(f x)]`` for each axis and frequency (``6 n`` values); ``none`` passes the raw
coordinates through.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionalEncoding(nn.Module):
    """Map ``(..., 3)`` coordinates to ``(..., out_dim)`` features."""

    # registered buffers (declared for type checkers: nn.Module attribute access is untyped)
    freqs: torch.Tensor

    def __init__(self, pe_type: str, D: int, pe_dim: int | None = None, feat_sigma: float = 0.5, seed: int = 0):
        super().__init__()
        self.pe_type = pe_type
        D2 = D // 2
        n = int(pe_dim or D2)
        self.n = n
        if pe_type == "none":
            self.out_dim = 3
            self.register_buffer("freqs", torch.zeros(0), persistent=False)
            return
        if pe_type == "gaussian":
            gen = torch.Generator().manual_seed(seed)
            freqs = torch.randn(3 * n, 3, generator=gen) * feat_sigma * D2
            # stored as (3, 3n): features = x @ freqs
            self.register_buffer("freqs", freqs.T.contiguous())
            self.out_dim = 6 * n
            return
        i = torch.arange(n, dtype=torch.float64)
        t = i / max(n - 1, 1)
        if pe_type == "geom_lowf":
            f = D2 * (1.0 / D2) ** t
        elif pe_type == "geom_full":
            f = D * math.pi * (1.0 / (D * math.pi)) ** t
        elif pe_type == "geom_nohighf":
            f = D2 * (2 * math.pi / D2) ** t
        elif pe_type == "geom_ft":
            f = D * math.pi * (2.0 / D) ** t
        elif pe_type == "linear_lowf":
            f = i + 1
        else:
            raise ValueError(f"unknown positional encoding {pe_type!r}")
        # block-diagonal (3, 3n) matrix so that one matmul gives all f_i * x_c
        eye = torch.eye(3, dtype=torch.float64)
        freqs = (eye[:, :, None] * f[None, None, :]).reshape(3, 3 * n)
        self.register_buffer("freqs", freqs.float())
        self.out_dim = 6 * n

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """``coords``: ``(..., 3)`` in cycles/pixel -> ``(..., out_dim)``."""
        if self.pe_type == "none":
            return coords
        # phases reach tens of radians: always float32, even under bfloat16 autocast
        with torch.autocast(device_type=coords.device.type, enabled=False):
            k = coords.float() @ self.freqs.float()
            return torch.cat([torch.sin(k), torch.cos(k)], dim=-1)
