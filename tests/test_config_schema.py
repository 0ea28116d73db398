"""config.yaml files written by earlier releases still load, train and reload; a newer schema is refused.

``tests/data/config_v1_*.yaml`` are COMMITTED files written by the release of 2026-12-06 (schema 1, flat
family fields) before the configuration was split into family sections; ``tests/data/config_v2_*.yaml`` are
COMMITTED files written by ``save_config`` of the release of 2026-12-06 with schema 2 (typed ``model`` sections,
but the family-only training and input options still in ``train``/``data``). Both must keep loading unchanged.
"""

from pathlib import Path

import pytest
import yaml

from cryoscape.cli.main import main
from cryoscape.config import MODEL_CONFIGS, SCHEMA_VERSION, ModelConfig, RunConfig, load_config, save_config
from cryoscape.errors import InputError

DATA = Path(__file__).parent / "data"
V1 = {"cryodrgn": "config_v1_cryodrgn.yaml", "tomodrgn": "config_v1_tomodrgn.yaml",
      "opus-dsd": "config_v1_opus_dsd.yaml"}
V2 = {"cryodrgn": "config_v2_cryodrgn.yaml", "tomodrgn": "config_v2_tomodrgn.yaml",
      "opus-dsd": "config_v2_opus_dsd.yaml"}
# the options that schemas 1 and 2 kept in the shared sections and schema 3 keeps in the family's section
MOVED = {"cryodrgn": ("freq_march", "march_start"), "tomodrgn": ("tilt_format",),
         "opus-dsd": ("lamb", "knn", "kfarthest", "n_samples", "knn_intra", "momentum", "tv_weight", "l1_weight",
                      "anneal_images", "lr_decay")}


@pytest.mark.parametrize("family", list(V1))
def test_schema_1_files_load_with_their_values(family):
    config = load_config(DATA / V1[family])
    assert config.model.family == family and config.model.zdim == 2
    assert isinstance(config.model, MODEL_CONFIGS[family])
    if family == "opus-dsd":  # the MLP fields a schema-1 file records for every family are not opus-dsd's
        assert not hasattr(config.model, "enc_dim")
    else:
        assert (config.model.enc_dim, config.model.dec_layers) == (2 * 16, 2)
    assert (config.train.epochs, config.train.seed, config.data.val_frac) == (2, 3, 0.125)
    assert config.data.particles == "/data/project/particles.star"
    doc = yaml.safe_load((DATA / V1[family]).read_text())
    assert (config.train.batch_size, config.train.lr) == (doc["train"]["batch_size"], doc["train"]["lr"])


def test_schema_1_family_fields_keep_their_values():
    opus = load_config(DATA / V1["opus-dsd"])
    assert opus.model.templateres == 32 and opus.model.channel_scale == 0.125
    assert (opus.model.lamb, opus.model.knn, opus.model.kfarthest, opus.model.n_samples) == (0.3, 8, 16, 64)
    tomo = load_config(DATA / V1["tomodrgn"])
    assert tomo.model.pooling == "mean" and tomo.model.tilt_embed_dim == 16
    cryo = load_config(DATA / V1["cryodrgn"])
    assert cryo.model.freq_march == 1.0


@pytest.mark.parametrize("family", list(V2))
def test_schema_2_files_load_with_the_family_options_in_the_family_section(family, tmp_path):
    doc = yaml.safe_load((DATA / V2[family]).read_text())
    assert doc["schema_version"] == 2
    config = load_config(DATA / V2[family])
    assert isinstance(config.model, MODEL_CONFIGS[family]) and config.model.zdim == 2
    assert (config.train.epochs, config.train.seed, config.data.val_frac) == (2, 3, 0.125)
    old = {**doc["data"], **doc["train"]}
    for name in MOVED[family]:  # the file's value, now in the family's section
        assert getattr(config.model, name) == old[name], name
    for other, names in MOVED.items():  # the shared sections no longer hold any family's option
        for name in names:
            assert not hasattr(config.train, name) and not hasattr(config.data, name)
            if other != family and name not in MOVED[family]:
                assert not hasattr(config.model, name)
    # the values that differ from the defaults (what the test would miss if the mapping fell back to them)
    expect = {"cryodrgn": {"freq_march": 1.0, "march_start": 0.3}, "tomodrgn": {"tilt_format": "imageseries"},
              "opus-dsd": {"lamb": 0.3, "knn": 8, "lr_decay": 0.9, "anneal_images": 5000, "momentum": 0.6}}[family]
    assert {k: getattr(config.model, k) for k in expect} == expect
    # saved again it is today's schema and reads back equal
    save_config(config, tmp_path / "config.yaml")
    again = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert again["schema_version"] == SCHEMA_VERSION == 3 and set(MOVED[family]) <= set(again["model"])
    assert load_config(tmp_path / "config.yaml") == config


def test_the_model_section_is_the_familys_own(tmp_path):
    """Written today: schema 3, the model section holds only the family's fields; read back equal."""
    config = RunConfig(model=ModelConfig(family="tomodrgn", zdim=3, pooling="max"))
    assert type(config.model).__name__ == "TomoDRGNConfig"
    save_config(config, tmp_path / "config.yaml")
    doc = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert doc["schema_version"] == SCHEMA_VERSION == 3
    assert {"pooling", "tilt_format"} <= set(doc["model"]) and not {"templateres", "channel_scale", "mask", "lamb",
                                                                   "freq_march"} & set(doc["model"])
    assert not {"tilt_format", "lamb", "freq_march", "lr_decay"} & (set(doc["data"]) | set(doc["train"]))
    assert load_config(tmp_path / "config.yaml") == config
    with pytest.raises(InputError, match="--templateres: not an option of --model cryodrgn"):
        ModelConfig(family="cryodrgn", templateres=32)
    doc["model"]["templateres"] = 32  # another family's field in a schema-3 file is refused, naming the file
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(InputError, match="not an option of --model tomodrgn") as info:
        load_config(tmp_path / "config.yaml")
    assert str(tmp_path / "config.yaml") in str(info.value)


def test_a_newer_schema_is_refused_in_one_line(tmp_path):
    doc = yaml.safe_load((DATA / V1["cryodrgn"]).read_text())
    doc["schema_version"] = 99
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(InputError, match="schema 99") as info:
        load_config(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_a_schema_1_run_resumes_and_reloads(tmp_path):
    """A run folder whose config.yaml is today's committed file (paths pointed at small data) resumes and loads."""
    from cryoscape.models.loading import load_run

    sim = tmp_path / "sim"
    assert main(["simulate", "--preset", "discrete3", "-N", "24", "-D", "16", "--apix", "6", "--snr", "2",
                 "-o", str(sim)]) == 0
    run = tmp_path / "run"
    small = ["--zdim", "2", "--enc-dim", "32", "--enc-layers", "1", "--dec-dim", "32", "--dec-layers", "2",
             "--feat-sigma", "0.3", "--val-frac", "0.125", "--seed", "3", "--freq-march", "1",
             "--device", "cpu", "--threads", "1", "--no-progress"]
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "-n", "1", *small]) == 0
    doc = yaml.safe_load((DATA / V1["cryodrgn"]).read_text())
    doc["data"]["particles"] = str(sim / "particles.star")
    doc["train"]["device"] = "cpu"
    (run / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "--resume", "--no-progress"]) == 0
    trained = load_run(run)
    assert trained.epoch == 2 and trained.config.model.family == "cryodrgn"
    assert trained.generate_volumes(None if trained.zdim == 0 else [[0.0, 0.0]]).shape == (1, 16, 16, 16)


@pytest.mark.parametrize("name", [V1["cryodrgn"], V2["cryodrgn"]])
def test_runs_recorded_before_ctf_field_keep_the_circular_ctf(name, tmp_path):
    """A cryodrgn run recorded before --ctf-field existed rebuilds with the model it was trained with (the CTF on
    the box's own spectrum, 1), whatever the option's default."""
    assert load_config(DATA / name).model.ctf_field == 1
    doc = yaml.safe_load((DATA / V2["cryodrgn"]).read_text())
    doc["model"]["ctf_field"] = 2
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert load_config(path).model.ctf_field == 2  # a recorded value is kept
