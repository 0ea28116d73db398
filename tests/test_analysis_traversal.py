"""Latent-space trajectories: the neighbour graph, graph traversal through populated regions, straight lines."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import cdist

from cryoscape.analysis.traversal import (
    bridge_components,
    direct_traversal,
    graph_traversal,
    neighbor_graph,
    write_traversal,
)
from cryoscape.errors import InputError


def bridged_blobs(seed=0, dim=5):
    """Two blobs at x = -6 and x = +6 joined only by a populated tube along the half circle of radius 6 through
    y = +6 (in 5-D, so a graph with 5 neighbours per point percolates); the straight segment between the blobs
    (|x| < 4, |y| < 2) is empty."""
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 0.5, size=(150, dim))
    a[:, 0] -= 6
    b = rng.normal(0, 0.5, size=(150, dim))
    b[:, 0] += 6
    theta = rng.uniform(0, np.pi, size=600)
    arc = rng.normal(0, 0.4, size=(600, dim))
    arc[:, 0] += 6 * np.cos(theta)
    arc[:, 1] += 6 * np.sin(theta)
    return np.concatenate([a, b, arc])


def test_graph_path_stays_in_populated_regions():
    z = bridged_blobs()
    start = int(np.argmin(np.linalg.norm(z[:, :2] - [-6, 0], axis=1)))
    end = int(np.argmin(np.linalg.norm(z[:, :2] - [6, 0], axis=1)))
    path = graph_traversal(z, [start, end])
    assert path.indices[0] == start and path.indices[-1] == end
    assert len(np.unique(path.indices)) == len(path.indices)
    np.testing.assert_array_equal(path.z, z[path.indices])  # every node is a data point
    steps = np.linalg.norm(np.diff(path.z, axis=0), axis=1)
    assert steps.max() <= path.threshold + 1e-12  # only graph edges, no jumps
    assert steps.max() < 1.5  # far below the 8-unit empty gap
    empty = (np.abs(path.z[:, 1]) < 2) & (np.abs(path.z[:, 0]) < 4)
    assert not empty.any()
    assert path.z[:, 1].max() > 5  # it went over the arc
    np.testing.assert_allclose(path.cumulative_distance[-1], steps.sum())
    assert path.cumulative_distance[-1] > 12  # longer than the straight (unsupported) line


def test_graph_path_on_a_chain_visits_every_point_in_order():
    z = np.arange(10.0)[:, None] * np.array([[1.0, 0.0]])
    path = graph_traversal(z, [0, 9, 4], avg_neighbors=1.8, max_neighbors=2)
    np.testing.assert_array_equal(path.indices, list(range(10)) + [8, 7, 6, 5, 4])
    np.testing.assert_array_equal(path.anchor_positions, [0, 9, 14])


def test_neighbor_graph_degree_and_weights():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(300, 3))
    graph, thr = neighbor_graph(z, avg_neighbors=5, max_neighbors=10)
    D = cdist(z, z)
    np.fill_diagonal(D, np.inf)
    # directed candidate edges: each node's 10 nearest; kept if <= threshold; 5 per node on average
    knn = np.sort(D, axis=1)[:, :10]
    assert abs((knn <= thr).sum() - 5 * 300) <= 1  # (+-1: the threshold is itself one of the distances)
    rows, cols = graph.nonzero()
    np.testing.assert_allclose(np.asarray(graph[rows, cols]).ravel(), D[rows, cols])  # weights are distances
    assert np.all(D[rows, cols] <= thr)
    assert (graph != graph.T).nnz == 0  # symmetric
    # an edge (i, j) exists iff j is among i's 10 nearest within the threshold, or vice versa
    kth = np.sort(D, axis=1)[:, 9:10]
    directed = (D <= kth) & (D <= thr)
    clear = np.abs(D - thr) > 1e-9  # ignore pairs at the threshold itself (rounding)
    np.testing.assert_array_equal((graph.toarray() > 0)[clear], (directed | directed.T)[clear])


def test_disconnected_anchors_raise_clear_error_when_strict():
    rng = np.random.default_rng(5)
    z = np.concatenate([rng.normal(0, 0.3, (50, 2)), rng.normal(20, 0.3, (50, 2))])
    with pytest.raises(InputError, match="not connected"):
        graph_traversal(z, [0, 75], bridge_gaps=False)
    with pytest.raises(InputError, match="out of range"):
        graph_traversal(z, [0, 100])
    with pytest.raises(InputError, match="at least two anchors"):
        graph_traversal(z, [3])


def islands(seed=6):
    """Three blobs of 60 points in 3-D at x = 0, 10 and 25, plus two lone points far from everything."""
    rng = np.random.default_rng(seed)
    blobs = [rng.normal(0, 0.4, (60, 3)) + [x, 0, 0] for x in (0, 10, 25)]
    lone = np.array([[5.0, 8.0, 0.0], [30.0, -9.0, 0.0]])
    return np.concatenate(blobs + [lone])


def test_default_traversal_bridges_disconnected_islands_by_their_shortest_gaps():
    z = islands()
    graph, thr = neighbor_graph(z)
    n_parts, labels = connected_components(graph, directed=False)
    assert n_parts >= 5  # three blobs and two lone points: the strict graph cannot join them
    with pytest.raises(InputError, match="not connected"):
        graph_traversal(z, [0, 179], bridge_gaps=False)
    path = graph_traversal(z, [0, 179, 180, 181])  # blob 1 -> blob 3 -> lone point -> other lone point
    np.testing.assert_array_equal(path.indices[path.anchor_positions], [0, 179, 180, 181])
    # blob 1 -> blob 3 must go through blob 2 (single linkage: 0-10 and 10-25 are the shortest gaps)
    assert set(path.indices) & set(range(60, 120))
    D = cdist(z, z)
    steps = np.linalg.norm(np.diff(path.z, axis=0), axis=1)
    assert len(path.bridges) == int((steps > thr).sum()) >= 2
    for i, j in path.bridges:  # every bridge is the shortest pair between the two parts it joins
        assert labels[i] != labels[j]
        between = D[np.ix_(labels == labels[i], labels == labels[j])]
        assert D[i, j] == pytest.approx(between.min())
    # the bridges form a tree over the parts: the joined graph is connected with exactly parts - 1 extra edges
    joined, bridges = bridge_components(z, graph)
    assert connected_components(joined, directed=False)[0] == 1 and len(bridges) == n_parts - 1


def test_bridges_do_not_change_a_path_within_one_part():
    z = bridged_blobs()
    start = int(np.argmin(np.linalg.norm(z[:, :2] - [-6, 0], axis=1)))
    end = int(np.argmin(np.linalg.norm(z[:, :2] - [6, 0], axis=1)))
    bridged = graph_traversal(z, [start, end])
    strict = graph_traversal(z, [start, end], bridge_gaps=False)
    np.testing.assert_array_equal(bridged.indices, strict.indices)
    assert bridged.bridges.shape == (0, 2)


def test_direct_traversal_and_writing(tmp_path):
    a, b = np.array([0.0, 1.0, 2.0]), np.array([3.0, -1.0, 2.0])
    pts = direct_traversal(a, b, 7)
    assert pts.shape == (7, 3)
    np.testing.assert_allclose(pts[0], a)
    np.testing.assert_allclose(pts[-1], b)
    np.testing.assert_allclose(np.diff(pts, axis=0), np.broadcast_to((b - a) / 6, (6, 3)))
    with pytest.raises(InputError):
        direct_traversal(a, b[:2], 5)
    assert write_traversal(tmp_path / "t", pts) == []
    np.testing.assert_allclose(np.loadtxt(tmp_path / "t" / "z_values.txt"), pts, rtol=1e-5)
