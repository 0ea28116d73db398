"""Trajectories through latent space: data-supported graph paths and straight lines.

The graph traversal follows the cryoDRGN paper's Methods ("Latent space graph traversal"): a nearest-neighbour
graph joins two latents when their Euclidean distance is below a threshold chosen so that the nodes have
``avg_neighbors`` neighbours on average, with at most ``max_neighbors`` neighbours kept per node; Dijkstra's
algorithm then finds the shortest path through a series of anchor particles in order. Every point of such a
path is a particle's latent, so the trajectory stays in populated regions of latent space.

Implementation note: each node keeps its ``max_neighbors`` nearest neighbours (a k-d tree query, so memory is
``O(N * max_neighbors)``); the threshold is the distance that leaves ``avg_neighbors * N`` of those directed
edges; the graph is then made undirected (an edge kept by either end joins both), so a node can end up with a
few more than ``max_neighbors`` edges when it is in many other nodes' lists.

Gaps: with these settings the graph of a real run is rarely connected. Particles in sparse regions keep no edge
at all (the threshold is a global distance), and a small, well-separated state forms its own island, so a path
between two k-means centres often did not exist. By default (``bridge_gaps=True``) the islands are therefore
joined by *bridges*: the fewest and shortest extra edges that connect them, i.e. the edges of a minimum spanning
tree over the islands (single linkage; found among each particle's ``max_neighbors`` nearest neighbours first,
then by an exact nearest-pair search between the islands that are still apart). Within an island nothing
changes (the bridges form a tree over the islands, so a shortest path between two particles of one island never
leaves it); between islands the path crosses the bridges, which :attr:`GraphPath.bridges` lists so that the
unsupported steps can be reported. ``bridge_gaps=False`` keeps the paper's strict graph and refuses such anchors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse
from scipy.sparse.csgraph import connected_components, dijkstra

from cryoscape.analysis.latent import _as_latents
from cryoscape.errors import InputError

__all__ = ["GraphPath", "neighbor_graph", "bridge_components", "graph_traversal", "direct_traversal",
           "write_traversal"]


@dataclass(frozen=True)
class GraphPath:
    """A path through the latent neighbour graph.

    Attributes
    ----------
    indices : np.ndarray
        int64 ``(M,)`` particle indices (rows of ``z``) along the path, anchors included, without repeats.
    z : np.ndarray
        ``(M, zdim)`` their latents.
    cumulative_distance : np.ndarray
        ``(M,)`` latent-space path length from the first anchor to each node.
    anchor_positions : np.ndarray
        int64 ``(n_anchors,)`` position of each anchor in ``indices``.
    threshold : float
        The neighbour distance threshold used.
    bridges : np.ndarray
        int64 ``(B, 2)`` consecutive particles of the path joined by a bridge between otherwise disconnected
        parts of the graph (steps longer than ``threshold``, not supported by data); empty for a fully
        data-supported path.
    """

    indices: np.ndarray
    z: np.ndarray
    cumulative_distance: np.ndarray
    anchor_positions: np.ndarray
    threshold: float
    bridges: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))


def neighbor_graph(z: np.ndarray, avg_neighbors: float = 5, max_neighbors: int = 10
                   ) -> tuple[scipy.sparse.csr_matrix, float]:
    """Sparse symmetric graph of latents ``z`` ``(N, zdim)`` with Euclidean edge weights.

    Returns
    -------
    graph : scipy.sparse.csr_matrix
        ``(N, N)``; entry ``(i, j)`` is the distance between latents ``i`` and ``j`` when they are joined.
    threshold : float
        Edges are kept when their length is ``<= threshold`` (chosen so the mean number of kept neighbour
        entries per node is ``avg_neighbors``, each node keeping at most ``max_neighbors``).
    """
    graph, threshold, _ = _neighbor_graph(z, avg_neighbors, max_neighbors)
    return graph, threshold


def _tiny(d: np.ndarray) -> np.ndarray:
    """Distance 0 (duplicate latents) would be read as "no edge" by csgraph: use a tiny positive weight instead."""
    return np.maximum(d, np.finfo(np.float64).tiny)


def _neighbor_graph(z: np.ndarray, avg_neighbors: float, max_neighbors: int):
    """:func:`neighbor_graph` and the directed candidate edges ``(src, dst, d)`` (each node's nearest)."""
    from sklearn.neighbors import NearestNeighbors

    z = _as_latents(z)
    n = z.shape[0]
    max_neighbors = int(max_neighbors)
    if n < 2:
        raise InputError(f"a neighbour graph needs at least 2 latents, got {n}")
    if max_neighbors < 1 or not 0 < avg_neighbors <= max_neighbors:
        raise InputError(f"need 0 < avg_neighbors <= max_neighbors and max_neighbors >= 1, got "
                         f"avg_neighbors={avg_neighbors}, max_neighbors={max_neighbors}")
    k = min(max_neighbors, n - 1)
    dist, nbr = NearestNeighbors(n_neighbors=k + 1).fit(z).kneighbors(z)
    # drop each point itself (normally column 0; with duplicate latents it may be elsewhere)
    rows = np.repeat(np.arange(n), k + 1).reshape(n, k + 1)
    not_self = nbr != rows
    keep_first_k = np.cumsum(not_self, axis=1) <= k
    sel = not_self & keep_first_k
    src, dst, d = rows[sel], nbr[sel], dist[sel]
    n_edges = min(int(round(avg_neighbors * n)), d.size)
    threshold = float(np.partition(d, n_edges - 1)[n_edges - 1])
    ok = d <= threshold
    graph = scipy.sparse.coo_matrix((_tiny(d[ok]), (src[ok], dst[ok])), shape=(n, n)).tocsr()
    graph = graph.maximum(graph.T).tocsr()
    return graph, threshold, (src, dst, d)


class _Components:
    """Union-find over the connected components of a graph (labels ``(N,)``)."""

    def __init__(self, labels: np.ndarray):
        self.labels = labels
        self.parent = np.arange(int(labels.max()) + 1)
        self.count = len(self.parent)

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return int(a)

    def join(self, i: int, j: int) -> bool:
        """Merge the groups of nodes ``i`` and ``j``; False when they were one group already."""
        a, b = self.find(self.labels[i]), self.find(self.labels[j])
        if a == b:
            return False
        self.parent[a] = b
        self.count -= 1
        return True

    def groups(self) -> np.ndarray:
        roots = np.array([self.find(c) for c in range(len(self.parent))])
        return roots[self.labels]


def bridge_components(z: np.ndarray, graph: scipy.sparse.csr_matrix, candidates=None
                      ) -> tuple[scipy.sparse.csr_matrix, np.ndarray]:
    """Join the connected components of ``graph`` by the fewest, shortest edges (a minimum spanning tree over them).

    Parameters
    ----------
    z : ``(N, zdim)`` latents; graph : ``(N, N)`` symmetric neighbour graph of ``z``.
    candidates : optional ``(src, dst, d)`` edges to try first (e.g. each node's nearest neighbours); components
        they leave apart are joined through the exact nearest pair of particles between them.

    Returns
    -------
    graph : the connected graph (``graph`` plus the bridges, symmetric, Euclidean weights).
    bridges : int64 ``(B, 2)`` the particle pairs added (``B`` = number of components - 1).
    """
    from sklearn.neighbors import NearestNeighbors

    z = _as_latents(z)
    n_comp, labels = connected_components(graph, directed=False)
    if n_comp == 1:
        return graph, np.zeros((0, 2), dtype=np.int64)
    uf = _Components(labels)
    added: list[tuple[int, int, float]] = []

    def kruskal(src, dst, d):
        for e in np.argsort(d, kind="stable"):
            if uf.count == 1:
                break
            if uf.join(int(src[e]), int(dst[e])):
                added.append((int(src[e]), int(dst[e]), float(d[e])))

    if candidates is not None:
        src, dst, d = (np.asarray(a) for a in candidates)
        between = labels[src] != labels[dst]
        kruskal(src[between], dst[between], d[between])
    while uf.count > 1:  # Boruvka rounds: each group's nearest particle outside it
        groups = uf.groups()
        near_src, near_dst, near_d = [], [], []
        for g in np.unique(groups):
            inside = np.flatnonzero(groups == g)
            outside = np.flatnonzero(groups != g)
            dist, nbr = NearestNeighbors(n_neighbors=1).fit(z[outside]).kneighbors(z[inside])
            best = int(np.argmin(dist[:, 0]))
            near_src.append(inside[best])
            near_dst.append(outside[nbr[best, 0]])
            near_d.append(dist[best, 0])
        kruskal(np.array(near_src), np.array(near_dst), np.array(near_d))
    i, j, d = (np.array(a) for a in zip(*added, strict=True))
    n = z.shape[0]
    extra = scipy.sparse.coo_matrix((_tiny(d), (i, j)), shape=(n, n)).tocsr()
    joined = graph.maximum(extra).maximum(extra.T).tocsr()
    return joined, np.stack([i, j], axis=1).astype(np.int64)


def graph_traversal(z: np.ndarray, anchors, avg_neighbors: float = 5, max_neighbors: int = 10,
                    bridge_gaps: bool = True) -> GraphPath:
    """Shortest data-supported path through the latents of ``anchors`` (particle indices), in order.

    Parameters
    ----------
    z : np.ndarray
        ``(N, zdim)`` latents.
    anchors : sequence of int
        At least two row indices of ``z`` (e.g. k-means centre particles); the path visits them in order.
    avg_neighbors, max_neighbors :
        Neighbour-graph parameters (see :func:`neighbor_graph`).
    bridge_gaps : bool
        Join the disconnected parts of the neighbour graph by their shortest bridges (see the module notes;
        the path's :attr:`GraphPath.bridges` lists those it crosses). False: refuse anchors in different parts.

    Raises
    ------
    InputError
        When an anchor is out of range, or (``bridge_gaps=False``) two consecutive anchors lie in disconnected
        parts of the graph.
    """
    z = _as_latents(z)
    anchors = np.asarray(anchors, dtype=np.int64).ravel()
    n = z.shape[0]
    if anchors.size < 2:
        raise InputError(f"graph traversal needs at least two anchors, got {anchors.size}")
    bad = anchors[(anchors < 0) | (anchors >= n)]
    if bad.size:
        raise InputError(f"anchor index {int(bad[0])} is out of range for {n} latents (valid: 0..{n - 1})")
    graph, threshold, candidates = _neighbor_graph(z, avg_neighbors, max_neighbors)
    if bridge_gaps:
        _, labels = connected_components(graph, directed=False)
        if len(np.unique(labels[anchors])) > 1:  # only then: a path within one part never crosses a bridge
            graph, _ = bridge_components(z, graph, candidates)
    path = [int(anchors[0])]
    positions = [0]
    for a, b in zip(anchors[:-1], anchors[1:], strict=True):
        dist, pred = dijkstra(graph, directed=False, indices=int(a), return_predecessors=True)
        if not np.isfinite(dist[b]):
            raise InputError(
                f"anchors {int(a)} and {int(b)} are not connected in the latent neighbour graph "
                f"(distance threshold {threshold:.4g})",
                hint="choose anchors in one populated region, add an intermediate anchor, raise "
                     "--avg-neighbors/--max-neighbors, or let the path bridge the gap (without --strict)")
        segment = [int(b)]
        while segment[-1] != int(a):
            segment.append(int(pred[segment[-1]]))
        path.extend(segment[-2::-1])  # from the node after a up to b
        positions.append(len(path) - 1)
    indices = np.asarray(path, dtype=np.int64)
    steps = np.linalg.norm(np.diff(z[indices], axis=0), axis=1)
    jumps = np.flatnonzero(steps > threshold)
    return GraphPath(
        indices=indices,
        z=z[indices].copy(),
        cumulative_distance=np.concatenate([[0.0], np.cumsum(steps)]),
        anchor_positions=np.asarray(positions, dtype=np.int64),
        threshold=threshold,
        bridges=np.stack([indices[jumps], indices[jumps + 1]], axis=1).astype(np.int64),
    )


def direct_traversal(z_start: np.ndarray, z_end: np.ndarray, n: int = 10) -> np.ndarray:
    """``n`` evenly spaced latents ``(n, zdim)`` on the straight line from ``z_start`` to ``z_end`` (both included).

    These points need not be supported by data; prefer :func:`graph_traversal` between distant states.
    """
    a = np.asarray(z_start, dtype=np.float64).ravel()
    b = np.asarray(z_end, dtype=np.float64).ravel()
    if a.shape != b.shape or a.size == 0:
        raise InputError(f"start and end latents must have the same length, got {a.size} and {b.size}")
    if int(n) < 2:
        raise InputError(f"a straight-line traversal needs at least 2 points, got {n}")
    t = np.linspace(0.0, 1.0, int(n))[:, None]
    return (1.0 - t) * a + t * b


def write_traversal(out_dir: str | Path, z_points: np.ndarray, generator=None, batch_size: int = 4) -> list[Path]:
    """Write ``out_dir/z_values.txt`` (one latent per row) and, with a ``generator``, ``vol_001.mrc``, ... .

    Returns the paths of the volumes written (empty without a generator).
    """
    from cryoscape.utils.atomic import atomic_path

    z_points = _as_latents(z_points, "trajectory")
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "z_values.txt") as tmp:
        np.savetxt(tmp, z_points, fmt="%.6g")
    if generator is None:
        return []
    from cryoscape.analysis.volume_space import write_volume_series

    return write_volume_series(generator, z_points, out_dir, batch_size=batch_size)
