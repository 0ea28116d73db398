"""Model families: each tells the engine how to build its data provider, its model and its optimizer.

A family is a small object with

* ``make_data(particles, config, norm_std=None, progress=True)`` -> provider with ``batch(indices)``;
* ``build_info(data)`` -> dict of plain values needed to rebuild the model without the data (saved in
  checkpoints);
* ``build_model(config, build)`` -> ``nn.Module`` with ``forward(batch) -> dict`` (``"loss"`` + terms);
* ``make_optimizer(model, config)`` -> ``(optimizer, scheduler or None)``.
"""

from __future__ import annotations

import torch

from cryoscape.config import RunConfig
from cryoscape.errors import InputError


class CryoDRGNFamily:
    """cryoDRGN: MLP encoder + coordinate-network decoder on Fourier slices (``models.cryodrgn``)."""

    name = "cryodrgn"

    def make_data(self, particles, config: RunConfig, norm_std=None, progress=True):
        from cryoscape.data.fourier_pixels import FourierPixels
        from cryoscape.data.particle_data import SliceParticleData

        d = config.data
        return SliceParticleData(particles, FourierPixels.create(particles.images.D), invert=d.invert_data,
                                 window=d.window, window_inner=d.window_inner, lazy=d.lazy, norm_std=norm_std,
                                 progress=progress)

    def build_info(self, data) -> dict:
        return {"D": int(data.D), "pixel_size_angstrom": float(data.pixel_size_angstrom),
                "norm_std": float(data.norm_std), "ctf_premultiplied": bool(data.ctf_premultiplied)}

    def build_model(self, config: RunConfig, build: dict):
        from cryoscape.models.cryodrgn import CryoDRGN

        m = config.model
        return CryoDRGN(D=int(build["D"]), pixel_size_angstrom=float(build["pixel_size_angstrom"]), zdim=m.zdim,
                        enc_dim=m.enc_dim, enc_layers=m.enc_layers, dec_dim=m.dec_dim, dec_layers=m.dec_layers,
                        pe_type=m.pe_type, pe_dim=m.pe_dim, feat_sigma=m.feat_sigma, activation=m.activation,
                        beta=config.train.beta, norm_std=float(build["norm_std"]),
                        freq_march_epochs=config.train.freq_march, march_start=config.train.march_start,
                        ctf_premultiplied=bool(build.get("ctf_premultiplied", False)))

    def make_optimizer(self, model, config: RunConfig):
        t = config.train
        return torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay), None


def _opus_dsd_family():
    from cryoscape.models.opus_dsd import OpusDSDFamily

    return OpusDSDFamily()


def _tomodrgn_family():
    from cryoscape.models.tomodrgn import TomoDRGNFamily

    return TomoDRGNFamily()


FAMILIES = {"cryodrgn": CryoDRGNFamily(), "opus-dsd": _opus_dsd_family(), "tomodrgn": _tomodrgn_family()}


def get_family(name: str):
    """The family registered under ``name``."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise InputError(
            f"model family {name!r} is not available in this version (available: {', '.join(FAMILIES)})"
        ) from None
