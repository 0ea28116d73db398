"""End-to-end check of every convention: simulate -> write STAR / .cs / .mrcs + pkl -> read -> back-project.

At high SNR the reconstruction must match the ground-truth map (FSC >= 0.9 out to half of Nyquist) for every
metadata format. A wrong rotation convention, shift sign, pixel size or CTF sign in any writer or reader makes
this fail (see the negative control at the end).
"""

from __future__ import annotations

import numpy as np
import pytest

from cryoscape.analysis.fsc import fsc
from cryoscape.cli.main import main
from cryoscape.io.mrc import read_mrc

D, APIX, N = 24, 4.0, 1000


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    code = main(["simulate", "--preset", "homogeneous", "-N", str(N), "-D", str(D), "--apix", str(APIX),
                 "--snr", "100", "--max-shift", "3", "--cs", "--pkl", "--seed", "1", "-o", str(out)])
    assert code == 0
    return out


def _fsc_to_half_nyquist(vol, ref):
    freqs, curve = fsc(vol, ref)
    return curve[freqs <= 0.25]


@pytest.mark.parametrize("source", ["star", "cs", "pkl"])
def test_backproject_matches_ground_truth(sim, tmp_path, source, capsys):
    gt_path = sim / "gt" / "state_000.mrc"
    if source == "star":
        inputs = [str(sim / "particles.star")]
    elif source == "cs":
        inputs = [str(sim / "particles.cs")]
    else:
        inputs = [str(sim / "particles.mrcs"), "--poses", str(sim / "pose.pkl"), "--ctf", str(sim / "ctf.pkl")]
    out = tmp_path / "bp"
    assert main(["backproject", *inputs, "--reference", str(gt_path), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "0.143" in printed and "reference" in printed

    vol, info = read_mrc(out / "backproject.mrc")
    assert info.voxel_size_angstrom == pytest.approx(APIX)
    gt = read_mrc(gt_path)[0]
    curve = _fsc_to_half_nyquist(vol, gt)
    assert curve.min() >= 0.9, f"{source}: FSC against the ground truth {np.round(curve, 3)}"

    half_a, info_a = read_mrc(out / "half_map_a.mrc")
    half_b, _ = read_mrc(out / "half_map_b.mrc")
    assert info_a.voxel_size_angstrom == pytest.approx(APIX)
    assert _fsc_to_half_nyquist(half_a, half_b).min() >= 0.9
    table = np.loadtxt(out / "fsc.txt")
    assert table.shape == (D // 2, 2)
    np.testing.assert_allclose(table[:, 0], np.arange(D // 2) / D / APIX, atol=1e-6)  # 1/Angstrom
    np.testing.assert_allclose(table[:, 1], fsc(half_a, half_b)[1], atol=1e-5)
    assert (out / "fsc.png").stat().st_size > 1000
    assert (out / "fsc_reference.txt").is_file()


def test_backproject_options_and_negative_control(sim, tmp_path):
    """--first and --ind select particles; negated images (wrong contrast) anti-correlate with the truth."""
    gt = read_mrc(sim / "gt" / "state_000.mrc")[0]
    ind = tmp_path / "ind.npy"
    np.save(ind, np.arange(0, N, 2))
    out = tmp_path / "neg"
    assert main(["backproject", str(sim / "particles.star"), "--ind", str(ind), "--first", "300",
                 "--invert-data", "-o", str(out)]) == 0
    freqs, curve = fsc(read_mrc(out / "backproject.mrc")[0], gt)
    assert curve[1:4].max() < -0.8
    # no poses at all: a clear error
    assert main(["backproject", str(sim / "particles.mrcs"), "--apix", "4", "-o", str(tmp_path / "x")]) == 2


# --- issue 16: CTF-premultiplied STAR files, memory options ---------------------------------------------------


@pytest.fixture(scope="module")
def sim_premultiplied(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim_pre")
    code = main(["simulate", "--preset", "homogeneous", "-N", str(N), "-D", str(D), "--apix", str(APIX),
                 "--snr", "100", "--max-shift", "3", "--premultiply", "--seed", "1", "-o", str(out)])
    assert code == 0
    return out


def test_backproject_premultiplied_star(sim, sim_premultiplied, tmp_path, caplog):
    """rlnCtfDataAreCtfPremultiplied 1: the same map as from the plain images; read as plain, phases reverse."""
    import starfile

    gt = read_mrc(sim / "gt" / "state_000.mrc")[0]
    plain, pre = tmp_path / "plain", tmp_path / "pre"
    assert main(["backproject", str(sim / "particles.star"), "-o", str(plain)]) == 0
    with caplog.at_level("INFO"):
        assert main(["backproject", str(sim_premultiplied / "particles.star"), "-o", str(pre)]) == 0
    assert "CTF-premultiplied" in caplog.text
    vol_pre = read_mrc(pre / "backproject.mrc")[0]
    assert _fsc_to_half_nyquist(vol_pre, gt).min() >= 0.9
    assert _fsc_to_half_nyquist(vol_pre, read_mrc(plain / "backproject.mrc")[0]).min() >= 0.98

    # the same premultiplied stack declared plain: CTF applied once too often, phases reversed past the first zero
    star = starfile.read(sim_premultiplied / "particles.star", always_dict=True)
    assert (star["optics"]["rlnCtfDataAreCtfPremultiplied"] == 1).all()
    star["optics"]["rlnCtfDataAreCtfPremultiplied"] = 0
    starfile.write(star, sim_premultiplied / "declared_plain.star")
    wrong = tmp_path / "wrong"
    assert main(["backproject", str(sim_premultiplied / "declared_plain.star"), "-o", str(wrong)]) == 0
    assert fsc(read_mrc(wrong / "backproject.mrc")[0], gt)[1].min() < 0


def test_backproject_memory_options(sim, tmp_path, capsys):
    """--max-memory-gb below the estimate: one line naming the estimate and the options; --oversample 1 runs."""
    from cryoscape.analysis.backprojection import estimate_memory_bytes

    out = tmp_path / "refused"
    assert main(["backproject", str(sim / "particles.star"), "--max-memory-gb", "0.2", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{estimate_memory_bytes(D) / 1e9:.1f} GB" in err and "--max-memory-gb" in err
    assert not out.exists()
    small = tmp_path / "os1"
    assert main(["backproject", str(sim / "particles.star"), "--oversample", "1", "-o", str(small)]) == 0
    gt = read_mrc(sim / "gt" / "state_000.mrc")[0]
    assert _fsc_to_half_nyquist(read_mrc(small / "backproject.mrc")[0], gt).min() >= 0.9
