"""OPUS-DSD's networks: the 3-D convolutional encoder of back-rotated pseudo-volumes and the convolutional decoder.

Luo et al. 2023 ("Design of OPUS-DSD", Fig. 1b,c): the encoder repeats the centred 2-D image along z into a
pseudo-volume, rotates it by the inverse of the particle's pose into the consensus frame (spatial transformer),
masks it and reduces it with strided 3-D convolutions (kernel 4, stride 2) to a 512-vector, from which two linear
heads give the mean and log standard deviation of ``z``. The decoder maps ``z`` through linear layers to a
2048-channel ``1^3`` cube and up-samples it with transposed 3-D convolutions (kernel 2 for the first two, 4 for the
rest) to a ``templateres^3`` volume. LeakyReLU(0.2) everywhere, no final activation, no normalisation layers.
Channel counts are the paper's times ``channel_scale``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf
from torch import nn

from cryoscape.imaging.projection import rotate_volumes

__all__ = ["rotate_volumes", "pseudo_volumes", "ConvEncoder", "ConvDecoder"]

_SLOPE = 0.2


def pseudo_volumes(images: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Images repeated along z and carried into the volume frame by the inverse of their poses.

    Parameters
    ----------
    images : ``(B, D, D)`` centred images.
    rotations : ``(B, 3, 3)`` RELION matrices ``A`` (volume -> image frame).

    Returns
    -------
    ``(B, 1, D, D, D)``: ``W(r) = image((A r)_x, (A r)_y)`` inside the box (zero where ``A r`` leaves it), i.e. the
    image smeared along the beam direction ``A^T e_z`` through the volume (an unweighted back-projection).
    """
    B, D = images.shape[0], images.shape[-1]
    return rotate_volumes(images[:, None, None].expand(B, 1, D, D, D), rotations)


def _ch(n: int, scale: float, minimum: int = 4) -> int:
    return max(minimum, int(round(n * scale)))


def _init(module: nn.Module) -> None:
    """He (fan-in) initialisation for LeakyReLU: the variance of activations is kept through the layers.

    The fan-in of a transposed convolution is ``in_channels * prod(kernel / stride)`` (the taps that reach one
    output voxel), so that the deep stride-2 decoder neither vanishes nor explodes at initialisation.
    """
    gain = nn.init.calculate_gain("leaky_relu", _SLOPE)
    fan_in: float
    for m in module.modules():
        if isinstance(m, nn.Linear):
            fan_in = m.in_features
        elif isinstance(m, nn.Conv3d):
            fan_in = m.in_channels * math.prod(m.kernel_size)
        elif isinstance(m, nn.ConvTranspose3d):
            fan_in = m.in_channels * math.prod(k / s for k, s in zip(m.kernel_size, m.stride, strict=True))
        else:
            continue
        nn.init.normal_(m.weight, std=gain / math.sqrt(fan_in))
        if m.bias is not None:  # every layer of these networks has one
            nn.init.zeros_(m.bias)


class ConvEncoder(nn.Module):
    """Strided 3-D convolutions from a ``(B, 1, D, D, D)`` volume to ``(mu, logstd)``, each ``(B, zdim)``.

    Three convolutions take ``D`` to ``D / 8``; the map is resized (trilinear) to ``12^3`` and three more take it
    to ``1^3`` (512 channels at ``channel_scale = 1``), as in the reference implementation.
    """

    def __init__(self, zdim: int, channel_scale: float = 1.0):
        super().__init__()
        widths = [1] + [_ch(n, channel_scale) for n in (32, 64, 128, 256, 512, 512)]
        act = nn.LeakyReLU(_SLOPE)
        convs = []
        for i in range(6):
            convs += [nn.Conv3d(widths[i], widths[i + 1], 4, stride=2, padding=1), act]
        self.down1 = nn.Sequential(*convs[:6])
        self.down2 = nn.Sequential(*convs[6:])
        hidden = _ch(512, channel_scale)
        self.fc = nn.Sequential(nn.Linear(widths[-1], hidden), act)
        self.mu = nn.Linear(hidden, zdim)
        self.logstd = nn.Linear(hidden, zdim)
        _init(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logstd)``, each ``(B, zdim)``, of the volumes ``x``."""
        h = self.down1(x)
        h = nnf.interpolate(h, size=(12, 12, 12), mode="trilinear", align_corners=False)
        h = self.fc(self.down2(h).flatten(1))
        return self.mu(h), self.logstd(h)


class ConvDecoder(nn.Module):
    """Linear layers and transposed 3-D convolutions from ``z`` ``(B, zdim)`` to volumes ``(B, T, T, T)``.

    ``2048 x 1^3 -> 2^3 -> 4^3`` (kernel 2), ``-> 8^3 -> 16^3`` (kernel 4), trilinear resize to ``(T/16)^3``, then
    four kernel-4 layers to ``T^3`` (``T = templateres``, a multiple of 16).
    """

    def __init__(self, zdim: int, templateres: int, channel_scale: float = 1.0):
        super().__init__()
        if templateres < 16 or templateres % 16:
            raise ValueError(f"templateres must be a positive multiple of 16, got {templateres}")
        self.templateres = int(templateres)
        act = nn.LeakyReLU(_SLOPE)
        c = [_ch(n, channel_scale) for n in (2048, 1024, 512, 256, 128, 64, 32, 16)]
        self.fc = nn.Sequential(nn.Linear(zdim, _ch(512, channel_scale)), act,
                                nn.Linear(_ch(512, channel_scale), c[0]), act)
        self.up1 = nn.Sequential(
            nn.ConvTranspose3d(c[0], c[1], 2, stride=2), act,
            nn.ConvTranspose3d(c[1], c[2], 2, stride=2), act,
            nn.ConvTranspose3d(c[2], c[3], 4, stride=2, padding=1), act,
            nn.ConvTranspose3d(c[3], c[4], 4, stride=2, padding=1), act,
        )
        self.up2 = nn.Sequential(
            nn.ConvTranspose3d(c[4], c[5], 4, stride=2, padding=1), act,
            nn.ConvTranspose3d(c[5], c[6], 4, stride=2, padding=1), act,
            nn.ConvTranspose3d(c[6], c[7], 4, stride=2, padding=1), act,
            nn.ConvTranspose3d(c[7], 1, 4, stride=2, padding=1),
        )
        _init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The volumes ``(B, T, T, T)`` decoded from ``z`` ``(B, zdim)``."""
        h = self.fc(z)[:, :, None, None, None]
        h = self.up1(h)  # (B, c4, 16, 16, 16)
        base = self.templateres // 16
        if base != h.shape[-1]:
            h = nnf.interpolate(h, size=(base,) * 3, mode="trilinear", align_corners=False)
        return self.up2(h)[:, 0]
