"""End to end through the CLI: simulate-tilt -> train --model tomodrgn -> eval-images, eval-vol, evaluate, filter."""

import numpy as np
import pytest
import starfile

from cryoscape.cli.main import main
from cryoscape.io.mrc import read_mrc
from cryoscape.io.tilt_series import load_tilt_series

SMALL = ["--model", "tomodrgn", "--zdim", "2", "--enc-dim", "16", "--enc-layers", "1", "--dec-dim", "16",
         "--dec-layers", "1", "--tilt-embed-dim", "8", "-b", "4", "--no-progress", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("simtilt")
    assert main(["simulate-tilt", "--preset", "tilt4", "--size", "tiny", "--drop-tilts", "2", "--optimisation-set",
                 "-o", str(out)]) == 0
    return out


def test_simulate_tilt_tiny_layout(sim):
    labels = np.load(sim / "labels.npz")
    assert labels["state"].shape == (20,) and sorted(set(labels["state"].tolist())) == [0, 1, 2, 3]
    assert len(list((sim / "gt").glob("state_*.mrc"))) == 4
    t = load_tilt_series(sim / "particles.star")
    assert len(t) == 20 and t.D == 16 and t.tilt_counts.max() == 11 and t.tilt_counts.min() >= 9
    vs = starfile.read(sim / "particles_volumeseries.star")
    assert len(vs) == 20 and {"rlnCoordinateX", "rlnAngleRot", "rlnMicrographName"} <= set(vs.columns)


def test_train_eval_evaluate(sim, tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "-n", "2", *SMALL]) == 0
    z = np.load(run / "latents" / "epoch_002.npy")
    assert z.shape == (20, 2)  # one latent per particle
    np.testing.assert_array_equal(np.load(run / "indices.npy"), np.arange(20))
    assert main(["eval-images", str(run), "-o", str(tmp_path / "z.npy"), "--device", "cpu"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"), z, atol=1e-5)  # reproducible evaluation subset
    assert main(["eval-vol", str(run), "--z", "0.1", "-0.2", "-o", str(tmp_path / "v.mrc"), "--device", "cpu"]) == 0
    vol, info = read_mrc(tmp_path / "v.mrc")
    assert vol.shape == (16, 16, 16) and info.voxel_size_angstrom == pytest.approx(10.0)
    assert main(["evaluate", str(run), "--truth", str(sim), "-o", str(tmp_path / "e.json"), "--device", "cpu"]) == 0
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["family"] == "tomodrgn" and cfg["train"]["lr"] == pytest.approx(1e-3)


def test_defaults_of_the_family(sim, tmp_path):
    from cryoscape.cli.main import build_parser
    from cryoscape.cli.train import config_from_args
    from cryoscape.models.registry import with_family_defaults

    args = build_parser().parse_args(["train", str(sim / "particles.star"), "-o", str(tmp_path / "x"),
                                      "--model", "tomodrgn"])
    cfg = with_family_defaults(config_from_args(args))
    assert cfg.train.lr == pytest.approx(2e-4) and cfg.train.batch_size == 1 and cfg.model.pooling == "concatenate"
    args = build_parser().parse_args(["train", str(sim / "particles.star"), "-o", str(tmp_path / "x")])
    assert with_family_defaults(config_from_args(args)).train.lr == pytest.approx(1e-3)  # the cryodrgn family's


def test_optimisation_set_homogeneous_and_max_pooling(sim, tmp_path):
    assert main(["train", str(sim / "particles_optimisation_set.star"), "-o", str(tmp_path / "homo"), "-n", "1",
                 *SMALL[:1], "tomodrgn", "--zdim", "0", "--dec-dim", "16", "--dec-layers", "1", "--no-progress"]) == 0
    assert not (tmp_path / "homo" / "latents").exists()
    assert main(["eval-vol", str(tmp_path / "homo"), "-o", str(tmp_path / "h.mrc"), "--device", "cpu"]) == 0
    assert main(["train", str(sim / "particles.star"), "-o", str(tmp_path / "max"), "-n", "1", *SMALL,
                 "--pooling", "max", "--no-dose-mask", "--lazy"]) == 0
    assert np.load(tmp_path / "max" / "latents" / "epoch_001.npy").shape == (20, 2)


def test_resume_matches_uninterrupted(sim, tmp_path):
    star = str(sim / "particles.star")
    assert main(["train", star, "-o", str(tmp_path / "a"), "-n", "2", *SMALL]) == 0
    assert main(["train", star, "-o", str(tmp_path / "b"), "-n", "1", *SMALL]) == 0
    assert main(["train", star, "-o", str(tmp_path / "b"), "-n", "2", "--resume", *SMALL]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "latents" / "epoch_002.npy"),
                                  np.load(tmp_path / "b" / "latents" / "epoch_002.npy"))


@pytest.mark.parametrize("source", ["particles.star", "particles_optimisation_set.star"])
def test_filter_writes_the_input_format(sim, tmp_path, source):
    run = tmp_path / "run"
    np.save(tmp_path / "ind.npy", np.arange(2, 14))
    assert main(["train", str(sim / source), "-o", str(run), "-n", "1", "--ind", str(tmp_path / "ind.npy"),
                 *SMALL]) == 0
    np.testing.assert_array_equal(np.load(run / "indices.npy"), np.arange(2, 14))  # particle indices
    assert main(["filter", str(run), "--z-range", "0", "-100", "100", "-o", str(tmp_path / "sel")]) == 0
    chosen = np.load(tmp_path / "sel" / "indices.npy")
    np.testing.assert_array_equal(chosen, np.arange(2, 14))
    out = sorted((tmp_path / "sel").glob("*.star"))
    full = load_tilt_series(sim / source)
    target = [p for p in out if p.name.endswith("optimisation_set.star")] or [tmp_path / "sel" / "particles.star"]
    sub = load_tilt_series(target[0], datadir=sim)
    assert sub.source_format == full.source_format and len(sub) == 12
    np.testing.assert_array_equal(sub.particle_names, full.particle_names[2:14])
    np.testing.assert_allclose(sub.rotations, full.subset(np.arange(2, 14)).rotations, atol=1e-5)
