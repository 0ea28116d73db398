"""Model families: each tells the engine how to build its data provider, its model and its optimizer.

A family is a small object with

* ``make_data(particles, config, norm_std=None, progress=True)`` -> provider with ``batch(indices)``;
* ``build_info(data)`` -> dict of plain values needed to rebuild the model without the data (saved in
  checkpoints);
* ``build_model(config, build)`` -> ``nn.Module`` with ``forward(batch) -> dict`` (``"loss"`` + terms);
* ``make_optimizer(model, config)`` -> ``(optimizer, scheduler or None)``;
* ``default_batch_size``, ``default_lr``: the training values a run of the family gets when the configuration
  leaves them unset (``None``); :func:`with_family_defaults` fills them in before a run starts, so the command
  line and ``train(RunConfig(...))`` from Python train with the same values;
* ``data_state``: names of model buffers that belong to the data set or to the training state rather than to the
  learnt model (normalisation, pixel size, counters); ``train --load`` keeps the new run's own values of these.
"""

from __future__ import annotations

import dataclasses

import torch

from cryoscape.config import RunConfig
from cryoscape.errors import InputError


class CryoDRGNFamily:
    """cryoDRGN: MLP encoder + coordinate-network decoder on Fourier slices (``models.cryodrgn``)."""

    name = "cryodrgn"
    # lr 1e-3 and batch 32: on data sets of a few thousand particles and 20 epochs, lr 1e-4 with batch 16 leaves
    # the model unconverged (the demo's data: ARI 0.465 against 0.875 with these values, issue 20; the
    # benchmarks: bench/RESULTS.md sections 3 and 7b)
    default_batch_size = 32
    default_lr = 1e-3
    data_state = ("pixel_size_angstrom", "norm_std")

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


def with_family_defaults(config: RunConfig) -> RunConfig:
    """``config`` with the training values it leaves unset (``batch_size``, ``lr`` = ``None``) taken from its
    family's defaults; values that are set are kept."""
    family = get_family(config.model.family)
    t = config.train
    changes = {}
    if t.batch_size is None:
        changes["batch_size"] = int(family.default_batch_size)
    if t.lr is None:
        changes["lr"] = float(family.default_lr)
    return dataclasses.replace(config, train=dataclasses.replace(t, **changes)) if changes else config


def get_family(name: str):
    """The family registered under ``name``."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise InputError(
            f"model family {name!r} is not available in this version (available: {', '.join(FAMILIES)})"
        ) from None
