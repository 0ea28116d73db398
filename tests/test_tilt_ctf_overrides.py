"""RELION 5 / WarpTools optimisation sets without CTF optics columns, and with several pixel sizes.

The set is written here the way RELION 5 writes one (``particles.star`` with ``data_general``, ``data_optics`` and
``data_particles``; ``tomograms.star`` with ``data_global`` naming one ``tilt_series/TS_01.star`` per tilt series;
the optimisation set naming both). The optics values (voltage, Cs, amplitude contrast) are in both the optics
table and ``data_global``; the tests remove them from both, as in sets written by tools that omit them.
``--kv``, ``--cs``, ``--amp-contrast`` and ``--ps`` fill them in (or replace them) as for single-particle STAR
files; a missing amplitude contrast is otherwise 0.1 with a one-line warning naming the column, and a missing
voltage or Cs is refused in one line naming the file and the column.
"""

import logging

import numpy as np
import pandas as pd
import pytest
import starfile

from cryoscape.errors import InputError
from cryoscape.imaging.rotations import euler_relion_to_matrix
from cryoscape.io.mrc import write_mrc
from cryoscape.io.rescale import rescale_images
from cryoscape.io.tilt_series import load_tilt_series
from cryoscape.metadata import CTFOverrides

D, APIX = 8, 5.0
OPTICS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")


def _images(n, seed):
    return np.random.default_rng(seed).normal(size=(n, D, D)).astype(np.float32)


def _proj(R, t=(0.0, 0.0, 0.0)):
    P = np.eye(4)
    P[:3, :3], P[:3, 3] = R, t
    return ["[" + ",".join(f"{v:.10f}" for v in row) + "]" for row in P]


def relion5_set(folder, drop=(), pixel_sizes=(APIX,), groups=(1, 1, 1)):
    """An optimisation set of one tomogram (3 tilts) and ``len(groups)`` particles (particle ``i`` in optics group
    ``groups[i]``, whose pixel size is ``pixel_sizes[group - 1]``), without the columns ``drop`` (removed from the
    optics table and from ``data_global``). Returns ``(set path, the stacks' images)``."""
    tilts = np.array([0.0, 20.0, -20.0])
    R = euler_relion_to_matrix(np.stack([np.zeros(3), tilts, np.zeros(3)], 1))
    proj = [_proj(R[f], (50.0, 60.0, 0.0)) for f in range(3)]
    per_tilt = pd.DataFrame({
        "rlnMicrographMovieName": [f"frames/TS_01_{f:03d}.tiff" for f in range(3)],
        "rlnTomoProjX": [p[0] for p in proj], "rlnTomoProjY": [p[1] for p in proj],
        "rlnTomoProjZ": [p[2] for p in proj], "rlnTomoProjW": [p[3] for p in proj],
        "rlnDefocusU": [20000.0, 21000, 22000], "rlnDefocusV": [19000.0, 20000, 21000],
        "rlnDefocusAngle": [10.0, 10, 10], "rlnCtfScalefactor": np.cos(np.radians(tilts)),
        "rlnMicrographPreExposure": [0.0, 3.0, 6.0], "rlnTomoNominalStageTiltAngle": tilts})
    (folder / "tilt_series").mkdir(parents=True, exist_ok=True)
    starfile.write({"TS_01": per_tilt}, folder / "tilt_series" / "TS_01.star")
    glob = pd.DataFrame({"rlnTomoName": ["TS_01"], "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7],
                         "rlnAmplitudeContrast": [0.07], "rlnMicrographOriginalPixelSize": [1.25],
                         "rlnTomoHand": [-1.0], "rlnOpticsGroupName": ["optics1"],
                         "rlnTomoTiltSeriesPixelSize": [2.5], "rlnTomoTiltSeriesStarFile": ["tilt_series/TS_01.star"],
                         "rlnTomoTomogramBinning": [4.0], "rlnTomoSizeX": [400], "rlnTomoSizeY": [400],
                         "rlnTomoSizeZ": [100], "rlnTomoImportFractionalDose": [3.0]})
    starfile.write({"global": glob.drop(columns=list(drop))}, folder / "tomograms.star")
    n = len(groups)
    rng = np.random.default_rng(0)
    angles = rng.uniform(0, 90, (n, 3))
    parts = pd.DataFrame({
        "rlnTomoName": ["TS_01"] * n, "rlnTomoParticleName": [f"TS_01/{i + 1}" for i in range(n)],
        "rlnCenteredCoordinateXAngst": rng.uniform(-100, 100, n), "rlnCenteredCoordinateYAngst": 0.0,
        "rlnCenteredCoordinateZAngst": rng.uniform(-100, 100, n),
        "rlnAngleRot": angles[:, 0], "rlnAngleTilt": angles[:, 1], "rlnAnglePsi": angles[:, 2],
        "rlnOriginXAngst": 0.0, "rlnOriginYAngst": 0.0, "rlnOriginZAngst": 0.0,
        "rlnImageName": [f"Subtomograms/p{i + 1}_stack2d.mrcs" for i in range(n)], "rlnOpticsGroup": list(groups),
        "rlnTomoVisibleFrames": ["[1,1,1]"] * n})
    k = len(pixel_sizes)
    optics = pd.DataFrame({"rlnOpticsGroup": np.arange(1, k + 1), "rlnOpticsGroupName": [f"optics{g + 1}"
                                                                                       for g in range(k)],
                           "rlnSphericalAberration": 2.7, "rlnVoltage": 300.0, "rlnTomoTiltSeriesPixelSize": 2.5,
                           "rlnCtfDataAreCtfPremultiplied": 0, "rlnImageDimensionality": 2,
                           "rlnTomoSubtomogramBinning": 2.0, "rlnImagePixelSize": list(pixel_sizes),
                           "rlnImageSize": D, "rlnAmplitudeContrast": 0.07})
    starfile.write({"general": {"rlnTomoSubTomosAre2DStacks": 1}, "optics": optics.drop(columns=list(drop)),
                    "particles": parts}, folder / "particles.star")
    starfile.write({"optimisation_set": {"rlnTomoParticlesFile": "particles.star",
                                         "rlnTomoTomogramsFile": "tomograms.star"}},
                   folder / "run_optimisation_set.star")
    stacks = []
    for i in range(n):
        stacks.append(_images(3, seed=i + 1))
        write_mrc(folder / "Subtomograms" / f"p{i + 1}_stack2d.mrcs", stacks[-1], pixel_sizes[groups[i] - 1],
                  is_stack=True)
    return folder / "run_optimisation_set.star", stacks


def test_complete_set_reads_the_file_values(tmp_path):
    path, stacks = relion5_set(tmp_path)
    t = load_tilt_series(path)
    assert len(t) == 3 and t.n_images == 9 and t.pixel_size_angstrom == APIX
    np.testing.assert_allclose(t.ctf.voltage_kv, 300.0)
    np.testing.assert_allclose(t.ctf.cs_mm, 2.7)
    np.testing.assert_allclose(t.ctf.amplitude_contrast, 0.07)
    np.testing.assert_array_equal(t.images[np.arange(9)], np.concatenate(stacks))


def test_missing_amplitude_contrast_is_0_1_with_a_warning(tmp_path, caplog):
    path, _ = relion5_set(tmp_path, drop=("rlnAmplitudeContrast",))
    with caplog.at_level(logging.WARNING):
        t = load_tilt_series(path)
    np.testing.assert_allclose(t.ctf.amplitude_contrast, 0.1)
    np.testing.assert_allclose(t.ctf.voltage_kv, 300.0)
    warnings = [r.getMessage() for r in caplog.records if "rlnAmplitudeContrast" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0] and "--amp-contrast" in warnings[0], warnings
    t = load_tilt_series(path, ctf_overrides=CTFOverrides(amplitude_contrast=0.2))
    np.testing.assert_allclose(t.ctf.amplitude_contrast, 0.2)


def test_missing_voltage_and_cs_refused_in_one_line(tmp_path):
    path, _ = relion5_set(tmp_path, drop=OPTICS)
    with pytest.raises(InputError) as err:
        load_tilt_series(path)
    text = str(err.value)
    assert "\n" not in text and "particles.star" in text and "tomograms.star" in text
    assert "rlnVoltage" in text and "rlnSphericalAberration" in text and "--kv" in text and "--cs" in text
    with pytest.raises(InputError, match="rlnSphericalAberration") as err:  # one given: the other is named
        load_tilt_series(path, ctf_overrides=CTFOverrides(voltage_kv=200.0))
    assert "rlnVoltage" not in str(err.value)


def test_overrides_fill_in_and_replace(tmp_path):
    path, _ = relion5_set(tmp_path / "a", drop=OPTICS)
    t = load_tilt_series(path, ctf_overrides=CTFOverrides(200.0, 2.0, 0.05, 30.0))
    for name, value in (("voltage_kv", 200.0), ("cs_mm", 2.0), ("amplitude_contrast", 0.05),
                        ("phase_shift_deg", 30.0)):
        np.testing.assert_allclose(getattr(t.ctf, name), value)
        assert getattr(t.ctf, name).shape == (9,)
    full, _ = relion5_set(tmp_path / "b")  # a complete set: the options replace the file's values
    t = load_tilt_series(full, ctf_overrides=CTFOverrides(voltage_kv=200.0, phase_shift_deg=90.0))
    np.testing.assert_allclose(t.ctf.voltage_kv, 200.0)
    np.testing.assert_allclose(t.ctf.phase_shift_deg, 90.0)
    np.testing.assert_allclose(t.ctf.cs_mm, 2.7)
    # the per-tilt defocus is unchanged by the optics options
    np.testing.assert_allclose(t.ctf.defocus_u_angstrom, load_tilt_series(full).ctf.defocus_u_angstrom)


TRAIN = ["--model", "tomodrgn", "--zdim", "2", "--enc-dim", "8", "--enc-layers", "1", "--dec-dim", "8",
         "--dec-layers", "1", "--tilt-embed-dim", "4", "-b", "3", "-n", "1", "--val-frac", "0", "--no-progress",
         "--device", "cpu"]


@pytest.mark.slow  # three CLI commands, two trainings of one epoch (about 10-25 s on a loaded 2-core CPU)
def test_train_tomodrgn_through_the_cli(tmp_path, capsys):
    """train --model tomodrgn on a set without optics columns: refused in one line without --kv/--cs; with them
    (and --amp-contrast) the run trains, records the values, and later commands reading the run's particles
    (filter) get them from RUN/config.yaml."""
    import yaml

    from cryoscape.cli.main import main
    from cryoscape.config import load_config
    from cryoscape.models.registry import get_family

    path, _ = relion5_set(tmp_path / "set", drop=OPTICS)
    assert main(["train", str(path), "-o", str(tmp_path / "refused"), *TRAIN]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "rlnVoltage" in err and "particles.star" in err and "--kv" in err, err
    run = tmp_path / "run"
    assert main(["train", str(path), "-o", str(run), *TRAIN, "--kv", "300", "--cs", "2.7",
                 "--amp-contrast", "0.07"]) == 0
    data = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert (data["kv"], data["cs"], data["amp_contrast"]) == (300.0, 2.7, 0.07)
    config = load_config(run / "config.yaml")
    tilts, _ = get_family("tomodrgn").load_particles(config)
    np.testing.assert_allclose(tilts.ctf.voltage_kv, 300.0)
    np.testing.assert_allclose(tilts.ctf.amplitude_contrast, 0.07)
    np.save(tmp_path / "keep.npy", np.array([0, 2]))
    # the subset inside the project folder, where RELION's relative paths (tilt_series/, Subtomograms/) resolve
    assert main(["filter", str(run), "--ind", str(tmp_path / "keep.npy"), "-o", str(tmp_path / "set" / "sel")]) == 0
    sel = load_tilt_series(tmp_path / "set" / "sel" / "particles_optimisation_set.star",
                           ctf_overrides=CTFOverrides(300.0, 2.7, 0.07))
    assert list(sel.particle_names) == ["TS_01/1", "TS_01/3"]


# -- several pixel sizes (optics groups): each particle's stack resampled on reading, as for single particles -----
def test_several_pixel_sizes_are_resampled_to_the_finest(tmp_path, caplog):
    path, stacks = relion5_set(tmp_path, pixel_sizes=(5.0, 5.5), groups=(1, 2, 1))
    with caplog.at_level(logging.INFO):
        t = load_tilt_series(path)
    assert t.pixel_size_angstrom == 5.0 and t.images.pixel_size_angstrom == 5.0
    assert any("2 pixel sizes" in r.getMessage() and "resampled" in r.getMessage() for r in caplog.records)
    expected = np.concatenate([stacks[0], rescale_images(stacks[1], 5.5, 5.0), stacks[2]])
    np.testing.assert_allclose(t.images[np.arange(9)], expected, atol=1e-5)
    assert not np.allclose(expected[3:6], stacks[1], atol=1e-2)  # particle 2 really was resampled
    sub = t.subset([1])  # subsets keep each image's own source pixel size
    np.testing.assert_allclose(sub.images[np.arange(3)], expected[3:6], atol=1e-5)
    # --apix: every stack resampled to it (the 5.5 A particle is then left as it is)
    t = load_tilt_series(path, apix=5.5)
    assert t.pixel_size_angstrom == 5.5
    np.testing.assert_allclose(t.images[np.arange(3, 6)], stacks[1], atol=1e-5)
    np.testing.assert_allclose(t.images[np.arange(3)], rescale_images(stacks[0], 5.0, 5.5), atol=1e-5)


def test_one_pixel_size_is_not_resampled(tmp_path):
    path, stacks = relion5_set(tmp_path, pixel_sizes=(5.0, 5.0), groups=(1, 2, 2))
    t = load_tilt_series(path)
    assert t.pixel_size_angstrom == 5.0 and not hasattr(t.images, "source_pixel_sizes")
    assert load_tilt_series(path, apix=4.0).pixel_size_angstrom == 4.0  # --apix replaces one pixel size


def test_image_series_with_several_pixel_sizes(tmp_path):
    """A Warp/M image series (RELION 3.0 columns, one row per tilt image) whose two tilt series were exported at
    5.0 and 5.5 A/px: the coarser one's images are resampled to 5.0 A on reading; pixel origins use each row's own
    pixel size."""
    a, b = _images(2, seed=1), _images(3, seed=2)
    write_mrc(tmp_path / "ts1.mrcs", a, 5.0)
    write_mrc(tmp_path / "ts2.mrcs", b, 5.5)
    rows = pd.DataFrame({
        "rlnMagnification": 10000.0, "rlnDetectorPixelSize": [5.0, 5.0, 5.5, 5.5, 5.5],
        "rlnImageName": ["1@ts1.mrcs", "2@ts1.mrcs", "1@ts2.mrcs", "2@ts2.mrcs", "3@ts2.mrcs"],
        "rlnGroupName": ["001_000001"] * 2 + ["002_000001"] * 3,
        "rlnAngleRot": 10.0, "rlnAngleTilt": [0.0, 3, 0, 3, -3], "rlnAnglePsi": 5.0,
        "rlnOriginX": [1.0, 0, 1, 0, 0], "rlnOriginY": 0.0,
        "rlnDefocusU": 20000.0, "rlnDefocusV": 19000.0, "rlnDefocusAngle": 30.0, "rlnVoltage": 300.0,
        "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1,
        "rlnCtfBfactor": [-6.0, -18, -6, -18, -30], "rlnCtfScalefactor": np.cos(np.radians([0.0, 3, 0, 3, 3]))})
    starfile.write({"": rows}, tmp_path / "warp.star")
    t = load_tilt_series(tmp_path / "warp.star")
    assert t.pixel_size_angstrom == 5.0 and len(t) == 2
    np.testing.assert_allclose(t.images[np.arange(5)], np.concatenate([a, rescale_images(b, 5.5, 5.0)], axis=0),
                               atol=1e-5)
    np.testing.assert_allclose(t.shifts_angstrom[:, 0], [5.0, 0.0, 5.5, 0.0, 0.0])
    t = load_tilt_series(tmp_path / "warp.star", apix=5.5)  # --apix: every image resampled to it
    assert t.pixel_size_angstrom == 5.5
    np.testing.assert_allclose(t.images[np.arange(5)], np.concatenate([rescale_images(a, 5.0, 5.5), b]), atol=1e-5)
