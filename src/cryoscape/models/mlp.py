"""Residual multilayer perceptrons used by the encoders and coordinate decoders."""

from __future__ import annotations

import torch
from torch import nn


def activation_layer(name: str, inplace: bool = False) -> nn.Module:
    """``relu`` or ``leaky_relu``; ``inplace`` overwrites its input (safe after a linear layer, whose backward
    pass does not need its own output), saving one activation-sized allocation per layer.
    """
    return nn.LeakyReLU(0.2, inplace=inplace) if name == "leaky_relu" else nn.ReLU(inplace=inplace)


class ResidualLinear(nn.Module):
    """``y = x + W x + b`` (square linear layer with a skip connection).

    Computed as one matrix product with ``W + I`` (the same function with one pass over the activations fewer
    in the forward and the backward pass).
    """

    # registered buffers (declared for type checkers: nn.Module attribute access is untyped)
    identity: torch.Tensor

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        self.register_buffer("identity", torch.eye(dim), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + W x + b`` over the last dimension."""
        return nn.functional.linear(x, self.linear.weight + self.identity, self.linear.bias)


class ResidualMLP(nn.Module):
    """``Linear(in, hidden)`` + act, ``n_hidden_layers`` x [residual ``Linear(hidden, hidden)`` + act],
    ``Linear(hidden, out)``.

    This is the layer layout of cryoDRGN's encoders and decoders, so ``--enc-layers 3 --enc-dim 256`` means the
    same network in both programs.
    """

    def __init__(self, in_dim: int, n_hidden_layers: int, hidden_dim: int, out_dim: int, activation: str = "relu"):
        super().__init__()
        layers: list[nn.Module] = [
            ResidualLinear(in_dim) if in_dim == hidden_dim else nn.Linear(in_dim, hidden_dim),
            activation_layer(activation, inplace=True),
        ]
        for _ in range(n_hidden_layers):
            layers += [ResidualLinear(hidden_dim), activation_layer(activation, inplace=True)]
        layers.append(nn.Linear(hidden_dim, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(..., in_dim)`` -> ``(..., out_dim)`` (leading dimensions folded into one row dimension, so
        that the in-place activations act on matmul outputs rather than on views of them).
        """
        return self.net(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], -1)
