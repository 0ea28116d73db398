"""Volume-space analysis with a fake generator: batching, correlation to a reference, voxel PCA and k-means."""

from __future__ import annotations

import numpy as np
import pytest

from cryoscape.analysis.maps import map_correlation
from cryoscape.analysis.volume_space import (
    analyze_volume_space,
    correlation_to_reference,
    generate_volumes,
    iter_volume_batches,
    write_volume_series,
)
from cryoscape.errors import InputError


class FakeGenerator:
    """Volumes ``(n, 16, 16, 16)``: a core blob plus a blob whose position follows z[:2]; counts its calls."""

    D, zdim, pixel_size_angstrom = 16, 2, 2.5

    def __init__(self):
        self.calls = []

    def generate_volumes(self, z, batch_size=1):
        z = np.asarray(z, dtype=np.float64).reshape(-1, self.zdim)
        self.calls.append(len(z))
        i = np.arange(self.D) - self.D // 2
        zz, yy, xx = np.meshgrid(i, i, i, indexing="ij")
        core = np.exp(-(xx ** 2 + yy ** 2 + zz ** 2) / 8.0)
        return np.asarray([core + np.exp(-((xx - 2.5 * a) ** 2 + (yy - 2.5 * b) ** 2 + zz ** 2) / 4.5)
                           for a, b in z], dtype=np.float32)


def test_batches_and_correlation_to_reference():
    gen = FakeGenerator()
    z = np.random.default_rng(0).normal(size=(11, 2))
    starts = [s for s, _ in iter_volume_batches(gen, z, batch_size=4)]
    assert starts == [0, 4, 8] and gen.calls == [4, 4, 3]
    vols = generate_volumes(gen, z, batch_size=4)
    assert vols.shape == (11, 16, 16, 16) and vols.dtype == np.float32
    ref = vols[3]
    cc = correlation_to_reference(gen, z, ref, batch_size=5)
    np.testing.assert_allclose(cc, [map_correlation(v, ref) for v in vols])
    assert cc[3] == pytest.approx(1.0)
    with pytest.raises(InputError, match="zdim"):
        generate_volumes(gen, np.zeros((2, 3)))
    with pytest.raises(InputError, match="GB"):
        generate_volumes(gen, np.zeros((1000, 2)), max_gigabytes=0.001)


def test_volume_pca_and_kmeans_recover_two_states():
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(1)
    truth = np.repeat([0, 1], 20)
    z = np.array([[-1.5, 0.0], [1.5, 0.0]])[truth] + rng.normal(0, 0.1, size=(40, 2))
    res = analyze_volume_space(FakeGenerator(), z, n_components=5, k=2, umap=False, batch_size=8)
    assert res.pcs.shape == (40, 5) and res.components.shape == (5, 16, 16, 16)
    assert adjusted_rand_score(truth, res.labels) == 1.0
    assert res.explained_variance_ratio[0] > 0.8  # one dominant direction: the arm moves along x
    assert np.all(np.diff(res.explained_variance_ratio) <= 1e-12)
    # components are orthonormal voxel vectors; the PCs are projections of the centred volumes on them
    flat = res.components.reshape(5, -1)
    np.testing.assert_allclose(flat @ flat.T, np.eye(5), atol=1e-4)
    vols = FakeGenerator().generate_volumes(z)
    centred = vols.reshape(40, -1) - res.mean_volume.ravel()
    np.testing.assert_allclose(centred @ flat.T, res.pcs, rtol=1e-3, atol=1e-3)
    # each cluster centre index belongs to its cluster; PC1 separates the states
    assert sorted(res.labels[res.center_indices]) == [0, 1]
    assert abs(np.corrcoef(res.pcs[:, 0], truth)[0, 1]) > 0.95


def test_volume_pca_with_auto_mask_and_array_input():
    rng = np.random.default_rng(2)
    z = rng.normal(0, 1, size=(12, 2))
    vols = FakeGenerator().generate_volumes(z)
    res = analyze_volume_space(vols, mask="auto", n_components=3, umap=False)
    assert res.mask.shape == (16, 16, 16) and 0 < res.mask.mean() < 1
    outside = res.mask == 0
    assert np.all(res.components[:, outside] == 0)  # voxels outside the mask play no part
    with pytest.raises(InputError, match="mask"):
        analyze_volume_space(vols, mask="tight")


def test_write_volume_series_voxel_size(tmp_path):
    from cryoscape.io.mrc import read_mrc

    gen = FakeGenerator()
    z = np.array([[0.0, 0.0], [1.0, -1.0], [2.0, 0.5]])
    paths = write_volume_series(gen, z, tmp_path / "vols", batch_size=2)
    assert [p.name for p in paths] == ["vol_001.mrc", "vol_002.mrc", "vol_003.mrc"]
    vol, info = read_mrc(paths[1])
    assert info.voxel_size_angstrom == pytest.approx(2.5)
    np.testing.assert_allclose(vol, gen.generate_volumes(z[1:2])[0], rtol=1e-6)
