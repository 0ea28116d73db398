"""Class maps of one run brought into one frame (``analyze --align-maps``): each
k-means map is aligned to the largest cluster's map; the maps of ``kmeansK/`` stay as the run's poses see them."""

from __future__ import annotations

import json

import numpy as np
from scipy.spatial.transform import Rotation

from _abinit_runs import blobs
from cryoscape.analysis.align import MapAlignment
from cryoscape.analysis.analyze import align_class_maps
from cryoscape.analysis.maps import map_correlation
from cryoscape.io.mrc import read_mrc


def _moved(vol: np.ndarray, rotvec_deg, shift_px) -> np.ndarray:
    """``vol`` turned by a known rotation and moved by a known shift (voxels, x y z)."""
    R = Rotation.from_rotvec(np.deg2rad(rotvec_deg)).as_matrix()
    return MapAlignment(R, np.asarray(shift_px, float), False, np.nan, np.nan, 1.0).apply(vol)


def test_class_maps_in_other_frames_are_brought_onto_the_largest_cluster(tmp_path):
    ref = blobs(24)
    other = blobs(24, seed=5) * 0.3 + ref  # a second "state": the reference with extra density
    vols = np.stack([_moved(ref, [0, 0, 20], [1, 0, 0]), ref, _moved(other, [40, 0, 0], [0, 0, 0])])
    sizes = np.array([30, 50, 20])  # cluster 1 is the largest: the reference
    aligned, section = align_class_maps(vols, 2.0, sizes, tmp_path / "aligned")
    record = json.loads((tmp_path / "aligned" / "alignment.json").read_text())
    assert record["reference_cluster"] == 1 and record["hand"] == "kept"
    maps = record["maps"]
    assert maps[1]["reference"] and not maps[0]["reference"]
    assert abs(maps[0]["rotation_angle_deg"] - 20) < 2 and abs(maps[2]["rotation_angle_deg"] - 40) < 2
    assert not maps[0]["hand_flipped"] and not maps[2]["hand_flipped"]
    # the inverse of "turn by R, then move by t": turn by R^T and move by -R^T t (t: 1 px = 2 A along x)
    R = Rotation.from_rotvec(np.deg2rad([0, 0, 20])).as_matrix()
    np.testing.assert_allclose(maps[0]["rotation_matrix"], R.T, atol=0.03)
    np.testing.assert_allclose(maps[0]["translation_angstrom"], -R.T @ [2.0, 0.0, 0.0], atol=0.3)
    assert map_correlation(aligned[0], ref) > 0.98 and map_correlation(vols[0], ref) < 0.9
    assert map_correlation(aligned[2], other) > 0.98 and map_correlation(vols[2], other) < 0.9
    np.testing.assert_array_equal(aligned[1], ref)  # the reference is written as it is
    for c in range(3):
        written, info = read_mrc(tmp_path / "aligned" / f"vol_{c + 1:03d}.mrc")
        np.testing.assert_allclose(written, aligned[c], atol=1e-6)
        assert abs(info.voxel_size_angstrom - 2.0) < 1e-6
        assert maps[c]["correlation_with_reference_aligned"] >= maps[c]["correlation_with_reference_as_written"]
    assert section.title == "Class maps in one frame" and len(section.tables[0].rows) == 3
