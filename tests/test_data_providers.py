"""The three data providers share one base (cryoscape.data.base.PreparedData): lazy batches equal in-memory ones,
``to`` moves every per-image tensor, batches with repeated particles are right, a set without poses is refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cryoscape.cli.main import main
from cryoscape.config import DataConfig, ModelConfig, RunConfig
from cryoscape.data.base import PreparedData
from cryoscape.errors import InputError
from cryoscape.models.registry import get_family


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    single = tmp_path_factory.mktemp("single")
    assert main(["simulate", "--preset", "discrete3", "-N", "12", "-D", "16", "--apix", "6", "--snr", "2",
                 "-o", str(single)]) == 0
    tilt = tmp_path_factory.mktemp("tilt")
    assert main(["simulate-tilt", "--preset", "tilt4", "--size", "tiny", "-o", str(tilt)]) == 0
    return {"cryodrgn": single / "particles.star", "opus-dsd": single / "particles.star",
            "tomodrgn": tilt / "particles.star"}


def _data(family: str, particles, lazy: bool, norm_std=None):
    config = RunConfig(data=DataConfig(particles=str(particles), lazy=lazy), model=ModelConfig(family=family))
    fam = get_family(family)
    loaded, _ = fam.load_particles(config)
    return fam.make_data(loaded, config, norm_std=norm_std, progress=False)


@pytest.mark.parametrize("family", ["cryodrgn", "opus-dsd", "tomodrgn"])
def test_lazy_batches_equal_in_memory_batches(family, inputs):
    memory = _data(family, inputs[family], lazy=False)
    lazy = _data(family, inputs[family], lazy=True, norm_std=memory.norm_std)
    assert isinstance(memory, PreparedData) and memory.values is not None and lazy.values is None
    assert memory.values.shape[0] == memory._n_rows() and memory.values.shape[1:] == memory._row_shape()
    idx = np.array([3, 0, 3, len(memory) - 1])  # a repeated particle too
    a, b = memory.batch(idx), lazy.batch(idx)
    assert a.y.shape[0] == 4
    torch.testing.assert_close(b.y, a.y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.y[0], a.y[2])
    torch.testing.assert_close(b.rot, a.rot)
    # the norm estimated by a lazy provider is the in-memory one's (the same sample of images)
    assert _data(family, inputs[family], lazy=True).norm_std == pytest.approx(memory.norm_std, rel=1e-6)


@pytest.mark.parametrize("family", ["cryodrgn", "opus-dsd", "tomodrgn"])
def test_to_moves_every_per_image_tensor(family, inputs, monkeypatch):
    from cryoscape.imaging.ctf import CTFTensors

    data = _data(family, inputs[family], lazy=False)
    # every per-image tensor of the provider is one that `to` moves (the CPU-side shifts, the window and the
    # prepared values are handled apart)
    per_image = {k for k, v in vars(data).items() if isinstance(v, (torch.Tensor, CTFTensors))}
    assert per_image - {"_shifts_cpu", "window", "values"} == set(data.device_fields)
    moved = []
    real_to = torch.Tensor.to

    def spy(self, *args, **kwargs):
        moved.append(self.data_ptr())
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    assert data.to(torch.device("cpu")) is data and data.device == torch.device("cpu")
    for name in data.device_fields:
        value = getattr(data, name)
        assert (value if isinstance(value, torch.Tensor) else value.values).data_ptr() in moved, name
    assert data.values.data_ptr() in moved


def test_particles_without_poses_are_refused(inputs):
    config = RunConfig(data=DataConfig(particles=str(inputs["cryodrgn"])))
    particles, _ = get_family("cryodrgn").load_particles(config)
    particles = dataclasses.replace(particles, poses=None)
    for family in ("cryodrgn", "opus-dsd"):
        with pytest.raises(InputError, match="no poses for these particles"):
            get_family(family).make_data(particles, config, progress=False)
