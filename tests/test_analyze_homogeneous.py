"""`cryoscape analyze` on runs without a latent space (zdim 0: `cryoscape abinit`, `train --zdim 0`, with and
without --refine-poses): the epoch's map at the training voxel size, a report with the run summary, the loss, the
map and the pose section that applies, and no latent sections."""

import mrcfile
import numpy as np
import pytest

from cryoscape.cli.main import main

APIX = 4.0
SMALL = ["--threads", "1", "--no-progress", "--dec-dim", "32", "--dec-layers", "1"]
LATENT_SECTIONS = ("Latent space", "k-means clustering", "Trajectories", "UMAP", "Latent-neighbour")


@pytest.fixture(autouse=True)
def _quiet_matplotlib(monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny homogeneous simulation and three zdim-0 runs of it: abinit (2 epochs), train, train --refine-poses."""
    out = tmp_path_factory.mktemp("homogeneous")
    sim = out / "sim"
    assert main(["simulate", "--preset", "homogeneous", "-N", "96", "-D", "16", "--apix", str(APIX), "--snr", "1",
                 "-o", str(sim)]) == 0
    star = str(sim / "particles.star")
    folders = {"abinit": out / "abinit", "train": out / "train", "refine": out / "refine"}
    assert main(["abinit", star, "-o", str(folders["abinit"]), "-n", "2", "--pretrain", "32", *SMALL]) == 0
    assert main(["train", star, "-o", str(folders["train"]), "--zdim", "0", "-n", "1", *SMALL]) == 0
    assert main(["train", star, "-o", str(folders["refine"]), "--zdim", "0", "-n", "2", "--refine-poses", *SMALL]) == 0
    return sim, folders


def _h2(report) -> list[str]:
    text = report.read_text()
    return [part.split("</h2>")[0] for part in text.split("<h2>")[1:]]


def _read_map(path):
    with mrcfile.open(path, permissive=True) as m:
        return m.data.copy(), float(m.voxel_size.x)


def test_abinit_run_gets_its_map_and_the_ab_initio_pose_section(runs, tmp_path):
    _, folders = runs
    run = folders["abinit"]
    assert not (run / "latents").exists()
    assert main(["analyze", str(run), "--device", "cpu"]) == 0
    out = run / "analysis" / "epoch_002"  # the last epoch: abinit has no validation set
    vol, voxel = _read_map(out / "map.mrc")
    assert vol.shape == (16, 16, 16) and voxel == pytest.approx(APIX)
    # the decoder's map, as eval-vol writes it
    assert main(["eval-vol", str(run), "-o", str(tmp_path / "eval.mrc"), "--device", "cpu"]) == 0
    np.testing.assert_allclose(vol, _read_map(tmp_path / "eval.mrc")[0], rtol=1e-5, atol=1e-6)
    titles = _h2(out / "index.html")
    assert titles == ["Run summary", "Training and validation loss", "Map", "Ab initio poses"]
    html = (out / "index.html").read_text()
    assert "viewing directions" in html.lower() and "local refinement" in html and 'src="data:image/png' in html
    assert "map.mrc" in (out / "chimerax.cxc").read_text()
    assert (out / "loss.png").is_file() and not (out / "poses_moved_far.txt").exists()
    assert not (run / "analyses.txt").exists()  # no k-means labels for filter --clusters to find


def test_train_zdim0_run_has_no_pose_or_latent_section(runs):
    _, folders = runs
    run = folders["train"]
    assert main(["analyze", str(run), "--epoch", "1", "--ksample", "5", "--device", "cpu"]) == 0
    out = run / "analysis" / "epoch_001"
    vol, voxel = _read_map(out / "map.mrc")
    assert vol.shape == (16, 16, 16) and voxel == pytest.approx(APIX) and np.isfinite(vol).all()
    titles = _h2(out / "index.html")
    assert titles == ["Run summary", "Training and validation loss", "Map"]
    assert "chosen with --epoch" in (out / "index.html").read_text()
    assert not any(name in t for t in titles for name in LATENT_SECTIONS)
    assert not list(out.glob("kmeans*")) and not list(out.glob("pc*"))


def test_refine_poses_run_gets_the_refined_pose_section(runs):
    _, folders = runs
    run = folders["refine"]
    out = run / "analysis" / "epoch_002"
    assert main(["analyze", str(run), "--epoch", "2", "--device", "cpu"]) == 0
    assert _h2(out / "index.html") == ["Run summary", "Training and validation loss", "Map", "Refined poses"]
    assert (out / "poses_moved_far.txt").is_file()
    # the maps options apply to the one map: -D resamples (voxel size scaled), --overwrite analyses again
    assert main(["analyze", str(run), "--epoch", "2", "-D", "8", "--flip", "--overwrite", "--device", "cpu"]) == 0
    vol, voxel = _read_map(out / "map.mrc")
    assert vol.shape == (8, 8, 8) and voxel == pytest.approx(2 * APIX)
    assert "mirrored" in (out / "index.html").read_text()


@pytest.mark.parametrize("option", [["--truth", "SIM"], ["--reconstruct"]])
def test_latent_only_options_are_refused_in_one_line(runs, tmp_path, capsys, option):
    sim, folders = runs
    option = [str(sim) if o == "SIM" else o for o in option]
    out = tmp_path / "analysis"
    assert main(["analyze", str(folders["train"]), "-o", str(out), *option, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "zdim 0" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()
