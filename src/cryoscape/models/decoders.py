"""Coordinate-network decoders: a volume as an MLP of 3-D Fourier coordinates (and a latent z).

The decoder predicts the complex Fourier value ``F(q) = re + i im`` of the volume at 3-D frequency ``q``.
Hermitian symmetry ``F(-q) = conj F(q)`` holds by construction: each coordinate is mapped to a canonical
representative of ``{q, -q}`` (the one with ``q_z < 0``, ties broken on ``y`` then ``x``) and the imaginary part is
conjugated for flipped points. The Hartley value is ``H(q) = re - im``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cryoscape.models.mlp import ResidualLinear, activation_layer
from cryoscape.models.positional import PositionalEncoding


def canonical_sign(q: torch.Tensor) -> torch.Tensor:
    """``-1`` where ``q`` (``(..., 3)``) is not the canonical member of ``{q, -q}``, else ``+1``; shape ``(...)``."""
    x, y, z = q[..., 0], q[..., 1], q[..., 2]
    flip = (z > 0) | ((z == 0) & ((y > 0) | ((y == 0) & (x > 0))))
    return 1.0 - 2.0 * flip.to(q.dtype)


class CoordinateDecoder(nn.Module):
    """MLP ``(PE(q), z) -> (re, im)`` with cryoDRGN's residual layout.

    The first layer is split into a coordinate part and a latent part, ``W [pe; z] = W_q pe + W_z z``, so the
    latent's contribution is computed once per image instead of once per pixel (same function, less work), and
    initialised as the one layer it computes (:meth:`init_as_one_layer`).
    """

    def __init__(self, D: int, zdim: int, hidden_dim: int, n_hidden_layers: int, pe_type: str = "gaussian",
                 pe_dim: int | None = None, feat_sigma: float = 0.5, activation: str = "relu"):
        super().__init__()
        self.zdim = zdim
        self.encoding = PositionalEncoding(pe_type, D, pe_dim, feat_sigma)
        self.input_coords = nn.Linear(self.encoding.out_dim, hidden_dim)
        self.input_latent = nn.Linear(zdim, hidden_dim, bias=False) if zdim > 0 else None
        if self.input_latent is not None:
            self.init_as_one_layer()
        layers: list[nn.Module] = [activation_layer(activation, inplace=True)]  # after a linear layer: safe
        for _ in range(n_hidden_layers):
            layers += [ResidualLinear(hidden_dim), activation_layer(activation, inplace=True)]
        layers.append(nn.Linear(hidden_dim, 2))
        self.body = nn.Sequential(*layers)

    @torch.no_grad()
    def init_as_one_layer(self) -> None:
        """Initialise the split first layer as the one ``nn.Linear(6 pe_dim + zdim, hidden)`` it computes (torch's
        default, as cryoDRGN's concatenated input has): weights and bias ``U(-b, b)``, ``b = 1/sqrt(6 pe_dim + zdim)``.

        Each part with its own fan-in gave the latent's weights ``b = 1/sqrt(zdim)``, 3.6x larger at D=32, zdim 8:
        the untrained decoder's output was then dominated by the random ``z`` of the first steps, the posterior
        carried twice cryoDRGN's KL and the states separated more slowly per epoch (issue 21, bench/RESULTS.md
        section 9).
        """
        assert self.input_latent is not None, "only a decoder with latents has the split first layer"
        bound = 1.0 / math.sqrt(self.input_coords.in_features + self.input_latent.in_features)
        for t in (self.input_coords.weight, self.input_coords.bias, self.input_latent.weight):
            t.uniform_(-bound, bound)

    def forward(self, q: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Complex values at coordinates.

        Parameters
        ----------
        q : ``(B, P, 3)`` frequencies in cycles/pixel (volume frame).
        z : ``(B, zdim)`` latents, or ``None`` for a homogeneous decoder.

        Returns
        -------
        ``(B, P, 2)``: ``(re, im)`` of ``F(q)``, Hermitian-consistent.
        """
        B, P = q.shape[:2]
        sign = canonical_sign(q)
        pe = self.encoding(q * sign[..., None])
        # Rows are (image, point) pairs of a 2-D activation: the in-place activations then act on fresh matmul
        # outputs, not on views of them (an in-place op on a view costs autograd a copy of the gradient).
        h = self.input_coords(pe.reshape(B * P, -1)).view(B, P, -1)
        if self.input_latent is not None:
            h = h + self.input_latent(z)[:, None, :]
        else:
            h = h.clone()
        h = self.body[0](h).view(B * P, -1)
        for layer in list(self.body)[1:]:
            h = layer(h)
        out = h.view(B, P, 2)
        return torch.stack([out[..., 0], out[..., 1] * sign], dim=-1)
