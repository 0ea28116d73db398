"""Latent-space analysis: PCA, UMAP fallbacks, k-means on data, PC traversal points, loading run latents."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from cryoscape.analysis.latent import (
    kmeans_on_data,
    load_latents,
    nearest_indices,
    pc_traversal_points,
    run_pca,
    run_umap,
)
from cryoscape.errors import InputError


def blobs(n_per=60, zdim=4, sep=6.0, sd=0.4, seed=0):
    rng = np.random.default_rng(seed)
    means = np.zeros((3, zdim))
    means[1, 0] = sep
    means[2, 1] = sep
    z = np.concatenate([rng.normal(m, sd, size=(n_per, zdim)) for m in means])
    return z.astype(np.float32), np.repeat(np.arange(3), n_per), means


def test_pca_explained_variance_matches_covariance_eigenvalues():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(500, 5)) * np.array([5.0, 3.0, 1.0, 0.5, 0.1])
    res = run_pca(z)
    eig = np.sort(np.linalg.eigvalsh(np.cov(z.T)))[::-1]
    np.testing.assert_allclose(res.explained_variance_ratio, eig / eig.sum(), rtol=1e-8)
    # the variance of each projected coordinate is the eigenvalue; components are orthonormal
    np.testing.assert_allclose(res.projected.var(axis=0, ddof=1), eig, rtol=1e-8)
    np.testing.assert_allclose(res.components @ res.components.T, np.eye(5), atol=1e-10)
    np.testing.assert_allclose(res.inverse_transform(res.projected), z, atol=1e-10)


def test_kmeans_recovers_three_blobs_with_centres_on_data():
    from sklearn.metrics import adjusted_rand_score

    z, truth, means = blobs()
    km = kmeans_on_data(z, 3, seed=0)
    assert adjusted_rand_score(truth, km.labels) == 1.0
    assert sorted(np.bincount(km.labels)) == [60, 60, 60]
    # centres are actual particles, each one in its own cluster and close to a true blob mean
    np.testing.assert_array_equal(km.centers, z[km.center_indices])
    assert sorted(km.labels[km.center_indices]) == [0, 1, 2]
    d = np.linalg.norm(km.centers[:, None, :] - means[None], axis=2).min(axis=1)
    assert np.all(d < 1.0)
    # each centre is the particle nearest to its cluster's mean (k-means centre = member mean at convergence)
    for idx in km.center_indices:
        centre = z[km.labels == km.labels[idx]].mean(axis=0)
        assert idx == np.argmin(np.linalg.norm(z - centre, axis=1))


def test_kmeans_rejects_too_many_clusters():
    with pytest.raises(InputError, match="cannot make 5 clusters"):
        kmeans_on_data(np.zeros((4, 2)), 5)


def test_nearest_indices_brute_force():
    rng = np.random.default_rng(2)
    z, pts = rng.normal(size=(200, 3)), rng.normal(size=(7, 3))
    expected = np.argmin(((pts[:, None] - z[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(nearest_indices(z, pts), expected)


def test_pc_traversal_points_span_5th_to_95th_percentile_along_pc():
    rng = np.random.default_rng(3)
    direction = np.array([3.0, 4.0, 0.0]) / 5.0
    t = rng.uniform(-10, 10, size=400)
    z = t[:, None] * direction + rng.normal(0, 0.05, size=(400, 3)) + np.array([1.0, 2.0, 3.0])
    pts = pc_traversal_points(z, pc=1, n_points=10)
    assert pts.shape == (10, 3)
    steps = np.diff(pts, axis=0)
    np.testing.assert_allclose(steps, np.broadcast_to(steps[0], steps.shape), atol=1e-10)  # evenly spaced
    assert abs(abs(steps[0] @ direction) / np.linalg.norm(steps[0]) - 1) < 1e-3  # along the true direction
    pca = run_pca(z)
    coord = (pts - pca.mean) @ pca.components.T
    lo, hi = np.percentile(pca.projected[:, 0], [5, 95])
    np.testing.assert_allclose(sorted([coord[0, 0], coord[-1, 0]]), sorted([lo, hi]), atol=1e-9)
    np.testing.assert_allclose(coord[:, 1:], 0, atol=1e-9)  # the other PCs at the mean
    with pytest.raises(InputError, match="PC4 does not exist"):
        pc_traversal_points(z, pc=4)


def test_umap_fallbacks_warn():
    z2 = np.random.default_rng(0).normal(size=(50, 2))
    with pytest.warns(UserWarning, match="only 2 dimension"):
        np.testing.assert_array_equal(run_umap(z2), z2)
    z1 = z2[:, :1]
    with pytest.warns(UserWarning):
        out = run_umap(z1)
    assert out.shape == (50, 2) and np.all(out[:, 1] == 0)
    tiny = np.random.default_rng(0).normal(size=(8, 5))
    with pytest.warns(UserWarning, match="only 8 latents"):
        out = run_umap(tiny)
    np.testing.assert_allclose(out, run_pca(tiny, 2).projected)


@pytest.mark.slow
def test_umap_separates_blobs():
    from sklearn.metrics import silhouette_score

    z, truth, _ = blobs(n_per=40, zdim=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb = run_umap(z, seed=0)
    assert emb.shape == (120, 2) and np.all(np.isfinite(emb))
    assert silhouette_score(emb, truth) > 0.5


def _write_run(tmp_path, epochs=(1, 2, 3), n=20, zdim=3, best=None):
    run = tmp_path / "run"
    (run / "latents").mkdir(parents=True)
    for e in epochs:
        np.save(run / "latents" / f"epoch_{e:03d}.npy", np.full((n, zdim), e, dtype=np.float32))
    np.save(run / "indices.npy", np.arange(n, dtype=np.int64) * 2)
    if best is not None:
        (run / "best_epoch").write_text(f"{best}\n")
    return run


def test_load_latents_picks_best_then_last_epoch(tmp_path):
    run = _write_run(tmp_path)
    ls = load_latents(run)
    assert ls.epoch == 3 and np.all(ls.z == 3) and ls.z.dtype == np.float32
    np.testing.assert_array_equal(ls.indices, np.arange(20) * 2)
    (run / "best_epoch").write_text("2\n")
    assert load_latents(run).epoch == 2
    assert load_latents(run, epoch=1).epoch == 1
    with pytest.raises(InputError, match="no latents for epoch 9"):
        load_latents(run, epoch=9)
    ls = load_latents(run / "latents" / "epoch_001.npy")
    assert ls.run_dir is None and ls.indices is None and np.all(ls.z == 1)


def test_load_latents_errors(tmp_path):
    with pytest.raises(InputError, match="no such run directory"):
        load_latents(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no latents"):
        load_latents(tmp_path / "empty")
    run = _write_run(tmp_path)
    np.save(run / "indices.npy", np.arange(5))
    with pytest.raises(InputError, match="indices.npy has shape"):
        load_latents(run)
    bad = tmp_path / "bad.npy"
    np.save(bad, np.array([[np.nan, 1.0]]))
    with pytest.raises(InputError, match="NaN"):
        load_latents(bad)
