"""The ModelFamily contract, checked for every registered family on tiny data: forward terms, latent means and
generated volumes of the right shapes, save -> reload round trip, resume equal to an uninterrupted run."""

import dataclasses

import numpy as np
import pytest
import torch

from cryoscape.cli.main import main
from cryoscape.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from cryoscape.models.family import ModelFamily
from cryoscape.models.loading import load_run
from cryoscape.models.registry import FAMILIES, get_family
from cryoscape.rundir import RunDir
from cryoscape.train.run import train

ZDIM = 2
# tiny architectures per family (the options each family reads)
MODEL = {
    "cryodrgn": dict(enc_dim=16, enc_layers=1, dec_dim=16, dec_layers=1),
    "tomodrgn": dict(enc_dim=16, enc_layers=1, dec_dim=16, dec_layers=1, tilt_embed_dim=8),
    "opus-dsd": dict(channel_scale=0.0625, knn=4, kfarthest=8, n_samples=64),
}
TRAIN = {
    "cryodrgn": dict(batch_size=8, lr=1e-3),
    "tomodrgn": dict(batch_size=4, lr=1e-3),
    "opus-dsd": dict(batch_size=8, lr=1e-3),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    single = tmp_path_factory.mktemp("single")
    assert main(["simulate", "--preset", "discrete3", "-N", "24", "-D", "16", "--apix", "6", "--snr", "2",
                 "-o", str(single)]) == 0
    tilt = tmp_path_factory.mktemp("tilt")
    assert main(["simulate-tilt", "--preset", "tilt4", "--size", "tiny", "-o", str(tilt)]) == 0
    return {"cryodrgn": single / "particles.star", "opus-dsd": single / "particles.star",
            "tomodrgn": tilt / "particles.star"}


def _config(family: str, particles, epochs: int) -> RunConfig:
    return RunConfig(data=DataConfig(particles=str(particles), val_frac=0.2),
                     model=ModelConfig(family=family, zdim=ZDIM, **MODEL[family]),
                     train=TrainConfig(epochs=epochs, seed=3, device="cpu", threads=1, **TRAIN[family]))


def test_every_family_is_a_model_family():
    assert set(FAMILIES) == {"cryodrgn", "tomodrgn", "opus-dsd"}
    for name, family in FAMILIES.items():
        assert isinstance(family, ModelFamily) and family.name == name and get_family(name) is family


def test_the_held_out_fraction_defaults_to_the_familys():
    """--val-frac left unset: 0 for cryodrgn and tomodrgn (every particle trained, as cryoDRGN and tomoDRGN), 0.1
    for opus-dsd; a value given is kept (0 included)."""
    expected = {"cryodrgn": 0.0, "tomodrgn": 0.0, "opus-dsd": 0.1}
    for name, value in expected.items():
        config = RunConfig(data=DataConfig(particles="p.star"), model=ModelConfig(family=name),
                           train=TrainConfig())
        assert config.data.val_frac is None
        assert get_family(name).with_defaults(config).data.val_frac == value
        for given in (0.0, 0.25):
            kept = dataclasses.replace(config, data=dataclasses.replace(config.data, val_frac=given))
            assert get_family(name).with_defaults(kept).data.val_frac == given


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_contract(name, inputs, tmp_path):
    family = get_family(name)
    config = family.with_defaults(_config(name, inputs[name], epochs=2))
    family.validate(config)
    config = family.resolve_defaults(config, torch.device("cpu"))

    # data -> build -> model: forward terms, latent means, volumes
    particles, indices = family.load_particles(config)
    assert len(indices) == len(particles)
    data = family.make_data(particles, config, progress=False)
    build = family.build_info(data)
    assert {"D", "pixel_size_angstrom", "norm_std", "ctf_premultiplied"} <= set(build)
    torch.manual_seed(0)
    model = family.build_model(config, build)
    plan = family.epoch_batches(data, np.arange(len(data)), 3, 1, config.train.batch_size, _single())
    assert sorted(np.concatenate(plan).tolist()) == list(range(len(data)))
    batch = data.batch(plan[0])
    assert dataclasses.is_dataclass(batch) and {"index", "y", "rot"} <= set(batch.keys())
    model.train()
    terms = model(batch)
    assert "loss" in terms and len(terms) > 1 and torch.isfinite(terms["loss"])
    terms["loss"].backward()
    family.after_step(model, lambda *t: t)
    model.eval()
    mu = model.latent_means(batch)
    assert tuple(mu.shape) == (len(plan[0]), ZDIM)
    vols = model.generate_volumes(np.zeros((2, ZDIM), np.float32))
    assert vols.shape == (2, build["D"], build["D"], build["D"]) and np.isfinite(vols).all()

    # train two epochs; save -> reload gives the same model
    full = train(config, tmp_path / "full", progress=False)
    run = RunDir(full)
    assert run.completed_epochs() == [1, 2] and run.best_epoch() in (1, 2)
    trained = load_run(full, epoch=2)
    state = run.load_checkpoint(2)
    for key, value in trained.model.state_dict().items():
        torch.testing.assert_close(value, state["model"][key], msg=key)
    z = np.load(run.latents_path(2))
    assert z.shape == (len(data), ZDIM)
    again = load_run(full, epoch=2).generate_volumes(z[:1])
    np.testing.assert_allclose(trained.generate_volumes(z[:1]), again)

    # resume equals uninterrupted
    part = tmp_path / "part"
    train(dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=1)), part, progress=False)
    train(config, part, resume=True, progress=False)
    np.testing.assert_allclose(np.load(RunDir(part).latents_path(2)), z, rtol=1e-5, atol=1e-6)


def test_another_familys_option_is_refused():
    """A family's own options are fields of its section only: another family's section refuses them, and so does
    the command line (one line naming the option and the family it belongs to)."""
    import argparse

    from cryoscape.cli import train as train_cli
    from cryoscape.errors import InputError

    with pytest.raises(InputError, match="--freq-march: not an option of --model opus-dsd"):
        ModelConfig(family="opus-dsd", freq_march=2.0)
    assert ModelConfig(family="cryodrgn", freq_march=2.0).freq_march == 2.0
    with pytest.raises(TypeError):
        TrainConfig(lamb=0.3)  # no longer a shared option
    p = argparse.ArgumentParser()
    train_cli.add_args(p)
    for argv, message in ((["--model", "opus-dsd", "--freq-march", "2"],
                           "--freq-march is an option of the cryodrgn family, not of --model opus-dsd"),
                          (["--lamb", "0.3"], "--lamb is an option of the opus-dsd family, not of --model cryodrgn"),
                          (["--model", "opus-dsd", "--enc-dim", "64"],
                           "--enc-dim is an option of the cryodrgn and tomodrgn families, not of --model opus-dsd"),
                          (["--tilt-format", "imageseries"], "--tilt-format is an option of the tomodrgn family")):
        with pytest.raises(InputError, match=message):
            train_cli.config_from_args(p.parse_args(["x.star", "-o", "r", *argv]))
    # an option given with its default value changes nothing and is accepted
    config = train_cli.config_from_args(p.parse_args(["x.star", "-o", "r", "--model", "opus-dsd", "--freq-march",
                                                      "0", "--lamb", "0.2"]))
    assert config.model.lamb == 0.2 and not hasattr(config.model, "freq_march")


def _single():
    from cryoscape.train.distributed import DistInfo

    return DistInfo()


def test_batches_are_typed_and_read_like_mappings():
    from cryoscape.data.batches import ImageBatch, SliceBatch, TiltBatch
    from cryoscape.imaging.ctf import CTFTensors

    ctf = CTFTensors(torch.ones(2, 9))
    b = ImageBatch(torch.arange(2), torch.zeros(2, 4, 4), torch.eye(3).repeat(2, 1, 1), ctf,
                   view_class=torch.tensor([3, 5]))
    assert b["view_class"].tolist() == [3, 5] and b.get("ctf") is ctf and "ctf" in b
    plain = SliceBatch(torch.arange(2), torch.zeros(2, 5), torch.eye(3).repeat(2, 1, 1))
    assert "ctf" not in plain and plain.get("ctf") is None and set(dict(plain)) == {"index", "y", "rot"}
    with pytest.raises(KeyError):
        plain["ctf"]
    assert dataclasses.replace(plain, y=torch.ones(2, 5)).y.sum().item() == 10.0
    assert {f.name for f in dataclasses.fields(TiltBatch)} >= {"exposure", "tilt_deg", "tilt_mask", "tilt_key"}
