"""`eval-vol --reconstruct`, `analyze --reconstruct` and `evaluate`'s CryoBench metrics on a tiny trained run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cryoscape.analysis.latent import load_latents
from cryoscape.cli.main import main
from cryoscape.io.mrc import read_mrc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("recon")
    sim = root / "sim"
    assert main(["simulate", "--preset", "discrete3", "-N", "60", "-D", "16", "--apix", "6", "--snr", "5",
                 "-o", str(sim), "--device", "cpu"]) == 0
    run = root / "run"
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "-n", "1", "--zdim", "2", "--enc-dim", "16",
                 "--enc-layers", "1", "--dec-dim", "16", "--dec-layers", "1", "-b", "8", "--no-progress",
                 "--device", "cpu"]) == 0
    return sim, run


@pytest.mark.slow
def test_eval_vol_and_analyze_reconstruct(trained, tmp_path, capsys):
    sim, run = trained
    out = tmp_path / "one.mrc"
    assert main(["eval-vol", str(run), "--z", "0", "0", "-o", str(out), "--reconstruct", "--max-neighbours", "40",
                 "--oversample", "1", "--device", "cpu"]) == 0
    vol, info = read_mrc(out)
    assert vol.shape == (16, 16, 16) and np.isfinite(vol).all() and abs(info.voxel_size_angstrom - 6) < 1e-3
    for name in ("one_half_a.mrc", "one_half_b.mrc", "one_fsc.txt"):
        assert (tmp_path / name).is_file()
    fsc = np.loadtxt(tmp_path / "one_fsc.txt")
    n_particles = len(load_latents(run).z)  # the particles the run trained on
    chosen = set(fsc[:, 2:].astype(int).ravel())  # inside and outside the variable region
    # a neighbourhood of at most --max-neighbours particles, or the whole set (equal weights) per shell
    assert fsc.shape == (8, 4) and all(k <= 40 or k == n_particles for k in chosen), (chosen, n_particles)
    # the variable region is reported (after one epoch on 60 particles none may be found; when one is, it is
    # written beside the map: tests/test_neighbour_recon.py checks its content)
    out_text = capsys.readouterr().out
    assert "variable region:" in out_text
    assert (tmp_path / "one_variable_region.mrc").is_file() == ("variable region: none" not in out_text)
    # --no-local: one choice for the whole box, no region file
    assert main(["eval-vol", str(run), "--z", "0", "0", "-o", str(tmp_path / "two.mrc"), "--reconstruct",
                 "--max-neighbours", "40", "--oversample", "1", "--device", "cpu", "--no-local"]) == 0
    fsc2 = np.loadtxt(tmp_path / "two_fsc.txt")
    np.testing.assert_array_equal(fsc2[:, 2], fsc2[:, 3])
    assert not (tmp_path / "two_variable_region.mrc").exists()
    # a region the user knows moves replaces the estimate; a mask of the wrong box is refused with one line
    from cryoscape.io.mrc import write_mrc

    mask = np.zeros((16, 16, 16), dtype=np.float32)
    mask[4:9, 4:9, 4:9] = 1.0
    write_mrc(tmp_path / "region.mrc", mask, 6.0)
    assert main(["eval-vol", str(run), "--z", "0", "0", "-o", str(tmp_path / "three.mrc"), "--reconstruct",
                 "--max-neighbours", "40", "--oversample", "1", "--device", "cpu",
                 "--region-mask", str(tmp_path / "region.mrc")]) == 0
    np.testing.assert_array_equal(read_mrc(tmp_path / "three_variable_region.mrc")[0], mask)
    assert "variable region (given)" in capsys.readouterr().out
    write_mrc(tmp_path / "small.mrc", mask[:8, :8, :8], 6.0)
    assert main(["eval-vol", str(run), "--z", "0", "0", "-o", str(tmp_path / "four.mrc"), "--reconstruct",
                 "--region-mask", str(tmp_path / "small.mrc"), "--device", "cpu"]) != 0
    err = capsys.readouterr().err
    assert "region mask is a 8^3 box" in err and "small.mrc" in err and "Traceback" not in err
    assert not (tmp_path / "four.mrc").exists()
    # decoder-only options are refused with one line
    assert main(["eval-vol", str(run), "--z", "0", "0", "-o", str(tmp_path / "x.mrc"), "--reconstruct",
                 "--lowpass", "10"]) != 0
    assert "--lowpass" in capsys.readouterr().err
    assert main(["analyze", str(run), "--ksample", "3", "--pc", "1", "--skip-umap", "--skip-vol", "--reconstruct",
                 "--max-neighbours", "30", "-o", str(tmp_path / "an"), "--device", "cpu"]) == 0
    rec = tmp_path / "an" / "kmeans3" / "reconstruct"
    assert sorted(p.name for p in rec.glob("vol_*_fsc.txt")) == [f"vol_{i:03d}_fsc.txt" for i in (1, 2, 3)]
    assert np.loadtxt(rec / "z_values.txt").shape == (3, 2)
    assert (tmp_path / "an" / "pc1" / "reconstruct" / "vol_010_half_b.mrc").is_file()
    assert "Latent-neighbour reconstructions" in (tmp_path / "an" / "index.html").read_text()
    html = (tmp_path / "an" / "index.html").read_text()
    found = (tmp_path / "an" / "variable_region.mrc").is_file()  # the report says which choice was made
    assert ("inside and outside the region that varies" in html) == found
    assert ("no region was found to vary" in html) == (not found)


@pytest.mark.slow
def test_evaluate_reports_cryobench_metrics(trained, tmp_path, capsys):
    sim, run = trained
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run), "--truth", str(sim), "-o", str(out), "--n-images", "5",
                 "--neighbor-k", "5", "10", "--device", "cpu"]) == 0
    res = json.loads(out.read_text())["cryobench"]
    assert res["per_image_au_fsc"]["n_images"] == 5 and len(res["per_image_au_fsc"]["values"]) == 5
    assert -0.1 < res["per_image_au_fsc"]["mean"] <= 0.5
    assert res["per_conformation_au_fsc"]["n_states"] == 3
    assert set(res["neighborhood_similarity"]["state"]) == {"5", "10"}
    assert "per-image AU-FSC" in capsys.readouterr().out
    # the same metrics for latent-neighbour reconstructions
    out3 = tmp_path / "eval3.json"
    assert main(["evaluate", str(run), "--truth", str(sim), "-o", str(out3), "--n-images", "5", "--reconstruct",
                 "--max-neighbours", "30", "--device", "cpu"]) == 0
    rec = json.loads(out3.read_text())
    assert rec["map_source"].startswith("latent-neighbour") and json.loads(out.read_text())["map_source"] == "decoder"
    assert rec["cryobench"]["per_image_au_fsc"]["indices"] == res["per_image_au_fsc"]["indices"]
    assert -0.1 < rec["cryobench"]["per_image_au_fsc"]["mean"] <= 0.5
    assert rec["cryobench"]["per_image_au_fsc"]["values"] != res["per_image_au_fsc"]["values"]
    assert main(["evaluate", str(run), "--truth", str(sim), "-o", str(tmp_path / "x.json"), "--reconstruct",
                 "--no-maps"]) != 0
    out2 = tmp_path / "eval2.json"
    assert main(["evaluate", str(run), "--truth", str(sim), "-o", str(out2), "--no-maps"]) == 0
    res = json.loads(out2.read_text())["cryobench"]
    assert "per_image_au_fsc" in res["not_computed"] and "per_image_au_fsc" not in res
