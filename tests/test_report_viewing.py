"""The report's viewing-direction map (HEALPix counts shown in a Mollweide projection) and its sections: "Ab initio
poses" for `cryoscape abinit` runs, the map added to "Refined poses" for `train --refine-poses` runs."""

import healpy
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryoscape.analysis.report import (
    abinit_pose_section,
    plot_viewing_directions,
    pose_section,
    render_html,
    search_history,
    viewing_density_map,
    viewing_direction_counts,
    viewing_directions,
    viewing_nside,
)
from cryoscape.errors import InputError
from cryoscape.imaging.rotations import euler_relion_to_matrix


def _euler(rot, tilt, psi) -> np.ndarray:
    return euler_relion_to_matrix(np.column_stack(np.broadcast_arrays(rot, tilt, psi)).astype(float))


def _uniform_rotations(n: int, seed: int = 0) -> np.ndarray:
    return Rotation.random(n, random_state=seed).as_matrix()


def _lonlat_of_pixels(nside: int) -> tuple[np.ndarray, np.ndarray]:
    return healpy.pix2ang(nside, np.arange(healpy.nside2npix(nside)), lonlat=True)


def test_viewing_direction_is_the_third_row_at_rot_and_90_minus_tilt():
    rng = np.random.default_rng(1)
    rot, tilt, psi = rng.uniform(-180, 180, 50), rng.uniform(0, 180, 50), rng.uniform(-180, 180, 50)
    v = viewing_directions(_euler(rot, tilt, psi))
    r, t = np.deg2rad(rot), np.deg2rad(tilt)
    np.testing.assert_allclose(v, np.column_stack([np.cos(r) * np.sin(t), np.sin(r) * np.sin(t), np.cos(t)]),
                               atol=1e-12)
    # one direction, rot 90 and tilt 90 (any psi): the map's only populated cells are around lon 90, lat 0
    lon_e, lat_e, density = viewing_density_map(viewing_direction_counts(_euler(90.0, 90.0, psi), nside=8))
    lat_c, lon_c = 0.5 * (lat_e[1:] + lat_e[:-1]), 0.5 * (lon_e[1:] + lon_e[:-1])
    rows, cols = np.nonzero(density)
    assert np.abs(lat_c[rows]).max() < 15 and np.abs(lon_c[cols] - 90).max() < 15  # nside 8: 7-degree pixels


@pytest.mark.parametrize("tilt, pole", [(0.0, 90.0), (180.0, -90.0)])
def test_particles_looking_along_z_put_their_counts_at_the_pole(tilt, pole):
    psi = np.linspace(-180, 180, 40)  # the in-plane angle does not change the viewing direction
    A = _euler(np.linspace(-180, 180, 40), tilt, psi)
    counts = viewing_direction_counts(A, nside=4)
    assert counts.sum() == 40 and len(counts) == 12 * 4 ** 2
    _, lat = _lonlat_of_pixels(4)
    assert np.all(np.abs(lat[counts > 0] - pole) < 20)  # the polar pixels (nside 4: centres within 20 degrees)
    lon_e, lat_e, density = viewing_density_map(counts)
    lat_c = 0.5 * (lat_e[1:] + lat_e[:-1])
    rows = np.nonzero(density)[0]
    assert np.all(np.sign(lat_c[rows]) == np.sign(pole)) and np.abs(lat_c[rows]).min() > 60
    # density relative to uniform (40 / 192 per pixel); the pole is a corner of 4 pixels, rounding picks one
    assert density.max() == pytest.approx(counts.max() * 192 / 40)
    assert np.count_nonzero(counts) <= 4


def test_uniform_rotations_give_a_flat_density_per_steradian():
    n, nside = 24000, 4
    counts = viewing_direction_counts(_uniform_rotations(n), nside=nside)
    mean = n / healpy.nside2npix(nside)  # 125 per pixel; Poisson sd 11 (9 %)
    assert counts.sum() == n
    assert np.abs(counts / mean - 1).max() < 0.45  # 5 Poisson sd
    chi2 = ((counts - mean) ** 2 / mean).sum() / (len(counts) - 1)
    assert 0.7 < chi2 < 1.4
    # polar and equatorial pixels alike (a tilt drawn uniformly in [0, 180] would crowd the poles)
    _, lat = _lonlat_of_pixels(nside)
    assert counts[np.abs(lat) > 45].mean() / counts[np.abs(lat) < 20].mean() == pytest.approx(1.0, abs=0.1)
    lon_e, lat_e, density = viewing_density_map(counts)
    weight = np.cos(np.deg2rad(0.5 * (lat_e[1:] + lat_e[:-1])))[:, None] * np.ones_like(density)
    assert np.average(density, weights=weight) == pytest.approx(1.0, abs=0.02)  # the sphere's mean is uniform

    rng = np.random.default_rng(0)
    crowded = viewing_direction_counts(_euler(rng.uniform(-180, 180, n), rng.uniform(0, 180, n), 0.0), nside)
    assert crowded[np.abs(lat) > 45].mean() / crowded[np.abs(lat) < 20].mean() > 1.3
    assert np.abs(crowded / mean - 1).max() > 0.45


def test_nside_grows_with_the_number_of_particles():
    assert viewing_nside(10) == 2 and viewing_nside(200) == 2
    assert viewing_nside(12 * 16 * 8) == 4 and viewing_nside(12 * 16 * 8 - 1) == 2
    assert viewing_nside(10 ** 7) == 32
    assert len(viewing_direction_counts(_uniform_rotations(2000))) == 12 * 4 ** 2


def test_bad_rotations_and_nside_are_refused_and_non_finite_rows_skipped():
    with pytest.raises(InputError, match=r"shape \(N, 3, 3\)"):
        viewing_direction_counts(np.zeros((5, 3)))
    with pytest.raises(InputError, match="power of two"):
        viewing_direction_counts(_uniform_rotations(10), nside=3)
    A = _uniform_rotations(10)
    A[3] = np.nan
    assert viewing_direction_counts(A, nside=2).sum() == 9
    assert viewing_density_map(np.zeros(48))[2].max() == 0.0  # no particles: an empty map, no division by 0


def test_plot_is_a_mollweide_map_of_the_density():
    fig = plot_viewing_directions(_uniform_rotations(500), title="views")
    ax = fig.axes[0]
    assert ax.name == "mollweide" and ax.get_title() == "views"
    mesh = ax.collections[0].get_array()
    assert mesh.shape == (180, 360) and mesh.min() >= 0


def _state(history, local_from, counts=None, counted_epoch=1):
    return {"history": history, "local_from": local_from, "counted_epoch": counted_epoch,
            "epoch_counts": counts or {"searched": 0, "moved": 0, "error": 0.0}}


def test_search_history_adds_the_unclosed_epoch():
    h1 = {"epoch": 1, "searched": 100, "moved_fraction": 1.0, "radius_px": 4.0, "error": 0.5}
    state = _state([h1], 0, {"searched": 80, "moved": 20, "error": 24.0}, counted_epoch=2)
    rows = search_history(state)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["moved_fraction"] == pytest.approx(0.25) and rows[1]["error"] == pytest.approx(0.3)
    assert rows[1]["radius_px"] is None
    assert search_history(_state([h1], 2, counted_epoch=2)) == [h1]  # a local epoch searches nothing


def test_abinit_section_states_the_switch_and_the_search_per_epoch():
    rots = _uniform_rotations(300)
    history = [{"epoch": e, "searched": 300, "moved_fraction": f, "radius_px": r, "error": 0.4}
               for e, f, r in ((1, 1.0, 4.0), (2, 0.3, 5.0), (3, 0.05, 6.0))]
    sec = abinit_pose_section({"rotations": rots}, _state(history, 4, counted_epoch=5), epoch=5)
    text = " ".join(sec.paragraphs)
    assert sec.title == "Ab initio poses"
    assert "300 particles" in text and "Global pose search in epochs 1-3" in text and "from epoch 4" in text
    assert "consensus" not in text
    table = sec.tables[0]
    assert [r[0] for r in table.rows] == [1, 2, 3]
    assert [r[2] for r in table.rows] == ["100.0", "30.0", "5.0"] and table.rows[2][3] == "6.0"
    assert len(sec.figures) == 1 and "Viewing directions" in sec.figures[0][0]
    assert "Ab initio poses" in render_html([sec])

    searching = abinit_pose_section({"rotations": rots}, _state(history[:1], 0, {"searched": 300, "moved": 150,
                                                                                 "error": 90.0}, 2), epoch=2)
    assert "still in the global pose search (epoch 2)" in " ".join(searching.paragraphs)
    assert searching.tables[0].rows[1][2:4] == ["50.0", "n/a"]
    gone = abinit_pose_section({"rotations": rots}, None, epoch=2)
    assert "no checkpoint of this epoch" in " ".join(gone.paragraphs) and not gone.tables


def test_abinit_section_shows_the_class_sizes_of_a_class_search():
    """abinit --classes: two more columns, the class sizes and the share that changed class; epochs after the
    class search (latent search) show n/a; a run without classes keeps the five columns (above)."""
    rots = _uniform_rotations(300)
    history = [{"epoch": 1, "searched": 300, "moved_fraction": 1.0, "radius_px": 4.0, "error": 0.4,
                "class_sizes": [100, 120, 80], "class_changed_fraction": 0.65},
               {"epoch": 2, "searched": 300, "moved_fraction": 0.2, "radius_px": 5.0, "error": 0.3}]
    table = abinit_pose_section({"rotations": rots}, _state(history, 3, counted_epoch=4), epoch=4).tables[0]
    assert table.header[-2:] == ["class sizes", "changed class (%)"]
    assert table.rows[0][-2:] == ["100 / 120 / 80", "65.0"] and table.rows[1][-2:] == ["n/a", "n/a"]


def test_abinit_section_flags_a_search_that_ended_unsettled():
    """Most poses still moving by more than 15 degrees in the last search epoch: the section says the search has
    probably not converged; a settled search (and a run without the count, written before it existed) is not
    flagged."""
    rots = _uniform_rotations(300)

    def section(far):
        history = [{"epoch": e, "searched": 300, "moved_fraction": 0.9, "radius_px": 4.0, "error": 0.4}
                   for e in (1, 2)]
        if far is not None:
            history[-1]["moved_far_fraction"] = far
        return " ".join(abinit_pose_section({"rotations": rots}, _state(history, 3, counted_epoch=4),
                                            epoch=4).paragraphs)

    assert "probably not converged" in section(0.76) and "76 %" in section(0.76)
    assert "probably not converged" not in section(0.17)
    assert "probably not converged" not in section(None)


def test_refined_pose_section_keeps_the_change_plots_and_adds_the_viewing_map():
    rng = np.random.default_rng(0)
    n = 60
    arrays = {"rotations": _uniform_rotations(n), "rotvec": rng.normal(scale=0.01, size=(n, 3)),
              "shift_px": rng.normal(scale=0.2, size=(n, 2)), "refined": np.ones(n, dtype=bool)}
    sec = pose_section(arrays, epoch=3)
    captions = [c for c, _ in sec.figures]
    assert len(captions) == 2 and "from the consensus" in captions[0] and "Viewing directions" in captions[1]
    assert "particles" in captions[1]
    assert sec.tables[0].header[0] == "change"
    # nothing refined yet: no change plots, still the viewing map
    none = pose_section({**arrays, "refined": np.zeros(n, dtype=bool)}, epoch=1)
    assert [c for c, _ in none.figures] == captions[1:]


@pytest.fixture(scope="module")
def abinit_run(tmp_path_factory):
    from cryoscape.cli.main import main

    root = tmp_path_factory.mktemp("abinit_report")
    assert main(["simulate", "--preset", "homogeneous", "-N", "96", "-D", "16", "--snr", "1", "-o",
                 str(root / "sim")]) == 0
    run = root / "run"
    assert main(["abinit", str(root / "sim" / "particles.star"), "-o", str(run), "-n", "2", "--zdim", "2",
                 "--enc-dim", "16", "--enc-layers", "1", "--dec-dim", "16", "--dec-layers", "1", "-b", "8",
                 "--pretrain", "0", "--search-epochs", "1", "--latent-search-epochs", "0", "--threads", "1",
                 "--no-progress"]) == 0
    return run


def test_analyze_of_an_abinit_run_reports_its_poses_not_their_change(abinit_run, tmp_path):
    from cryoscape.analysis.analyze import analyze_run

    report = analyze_run(abinit_run, tmp_path / "an", ksample=2, skip_umap=True, skip_volumes=True, progress=False)
    text = report.read_text()
    assert "Ab initio poses" in text and "Viewing directions of 96 poses" in text
    assert "Refined poses" not in text and "Change from the consensus" not in text
    assert "Global pose search in epoch 1;" in text and "from epoch 2" in text
    assert "<th>moved (%)</th>" in text
    assert not (tmp_path / "an" / "poses_moved_far.txt").exists()
