"""Evaluation of a trained run against simulation ground truth.

Metrics (each from an independent, standard definition):

* clustering: k-means (K = number of true labels unless given) of the latents against a set of true labels
  (``state`` by default; any per-particle integer array of ``labels.npz``, e.g. ``subunit``): adjusted Rand index
  (Hubert & Arabie 1985, as used in the tomoDRGN paper), the confusion matrix, the accuracy after the best
  one-to-one matching of clusters to labels (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``) and,
  for K larger than the number of labels, the majority-label scores: each cluster takes the label most of its
  particles hold; the fraction of particles whose cluster's label is their own ("sorted") and the ARI of that
  labelling;
* cluster entropy (OPUS-DSD paper): per cluster ``-sum_i p_i log p_i`` of its true-state fractions ``p_i``,
  averaged over clusters, with the uniform baseline ``log(n_states)``. The default base 10 reproduces the
  paper's numbers (0.903 = log10 8 for eight uniformly mixed states);
* continuous truth: ``|Spearman rho|`` between PC1 of the latents (or the latent itself when zdim = 1) and the
  true coordinate (cryoDRGN paper, Fig. 3), plus the best single latent dimension and, with a clustering, the
  same within each majority-label group (averaged, weighted by group size);
* maps: volumes generated at each true state's mean latent and at the k-means centres, compared with the
  ground-truth maps by FSC (AUC, resolution at 0.5 and 0.143) and real-space correlation (state x map matrix);
* CryoBench (Jeon et al., NeurIPS 2024): per-image AU-FSC (the map at each of a fixed, seeded sample of images'
  latents against that image's true map), per-conformation AU-FSC (the map at each true state's mean latent),
  both as the area under the masked FSC on a frequency axis ending at Nyquist = 0.5 (so at most 0.5, see
  :func:`au_fsc`), and neighbourhood similarity (fraction of each particle's k nearest latent neighbours sharing
  its true state, or within a stated distance on the true coordinate). See docs/metrics.md.
* with ``align``: before any map is compared, the run's maps are brought into the truth's frame and hand by one
  transform (:mod:`cryoscape.analysis.align`) found for the map of the most populous state (an ab initio map has
  an arbitrary orientation and hand); the transform is reported under ``alignment``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cryoscape.analysis.fsc import fsc, fsc_auc, resolution_at
from cryoscape.analysis.latent import _as_latents, kmeans_on_data, load_latents, run_pca
from cryoscape.analysis.maps import auto_mask, map_correlation
from cryoscape.errors import InputError

__all__ = [
    "read_labels",
    "read_gt_maps",
    "hungarian_accuracy",
    "clustering_scores",
    "cluster_entropy",
    "majority_label_scores",
    "continuous_correlation",
    "within_group_correlation",
    "map_scores",
    "evaluate_latents",
    "evaluate_run",
    "au_fsc",
    "sample_images",
    "per_image_au_fsc",
    "per_conformation_au_fsc",
    "neighborhood_similarity",
    "cryobench_metrics",
    "format_evaluation",
]

_STATE_FILE = re.compile(r"^state_(\d+)\.mrc$")


# --------------------------------------------------------------------------------------------------------------
# Truth files


def read_labels(path: str | Path, label_set: str = "state") -> dict[str, np.ndarray]:
    """Per-particle truth from a simulator ``labels.npz``: ``state`` (int) and/or ``coordinate`` (float), ``(M,)``,
    and the discrete ``label_set`` (int) when it is another array (e.g. ``subunit``; then it must be there).
    """
    path = Path(path)
    wanted = ("state", "coordinate") + (() if label_set in ("state", "coordinate") else (label_set,))
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {key: np.asarray(npz[key]) for key in wanted if key in npz.files}
            keys = sorted(npz.files)
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    except (ValueError, OSError) as exc:
        raise InputError(f"not a readable .npz file ({exc})", path) from None
    out: dict[str, np.ndarray] = {}
    if "state" in data:
        out["state"] = data["state"].astype(np.int64).ravel()
    if "coordinate" in data:
        out["coordinate"] = data["coordinate"].astype(np.float64).ravel()
    if label_set not in ("state", "coordinate"):
        values = data.get(label_set)
        if values is None or values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
            usable = [k for k in keys if k != "coordinate"]
            raise InputError(f"has no per-particle integer labels {label_set!r} (arrays: {usable})", path)
        out[label_set] = values.astype(np.int64)
    if not out:
        raise InputError(f"has neither a 'state' nor a 'coordinate' array (keys: {keys})", path)
    lengths = {len(v) for v in out.values()}
    if len(lengths) != 1:
        raise InputError(f"{' and '.join(repr(k) for k in out)} differ in length ({sorted(lengths)})", path)
    return out


def read_gt_maps(sim_dir: str | Path) -> tuple[dict[int, np.ndarray], float]:
    """Ground-truth maps ``SIM_DIR/gt/state_XXX.mrc`` as ``{state: (D, D, D) float32}`` and their voxel size (A)."""
    from cryoscape.io.mrc import read_mrc

    gt_dir = Path(sim_dir) / "gt"
    files = sorted(p for p in gt_dir.glob("state_*.mrc") if _STATE_FILE.match(p.name)) if gt_dir.is_dir() else []
    if not files:
        raise InputError("no gt/state_XXX.mrc maps found", sim_dir, "is this a `cryoscape simulate` output folder?")
    maps, sizes = {}, set()
    for p in files:
        vol, info = read_mrc(p)
        if vol.ndim != 3:
            raise InputError(f"expected a volume, got shape {vol.shape}", p)
        match = _STATE_FILE.match(p.name)
        assert match is not None  # files are filtered by it
        maps[int(match.group(1))] = vol
        sizes.add((vol.shape, round(info.voxel_size_angstrom, 4)))
    if len(sizes) != 1:
        raise InputError(f"ground-truth maps differ in box or voxel size: {sorted(sizes)}", gt_dir)
    return maps, float(next(iter(sizes))[1])


# --------------------------------------------------------------------------------------------------------------
# Label metrics


def hungarian_accuracy(confusion: np.ndarray) -> tuple[float, np.ndarray]:
    """Accuracy of the best one-to-one matching of columns (clusters) to rows (states) of a confusion matrix.

    Returns the matched fraction of all items and ``(n_matched, 2)`` pairs ``(row, column)``.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(confusion, maximize=True)
    total = confusion.sum()
    acc = float(confusion[rows, cols].sum() / total) if total > 0 else float("nan")
    return acc, np.stack([rows, cols], axis=1)


def clustering_scores(cluster_labels: np.ndarray, true_labels: np.ndarray) -> dict:
    """ARI, confusion matrix (rows: true states, columns: clusters) and Hungarian-matched accuracy.

    Parameters
    ----------
    cluster_labels, true_labels : ``(N,)`` int arrays.
    """
    from sklearn.metrics import adjusted_rand_score, confusion_matrix

    pred = np.asarray(cluster_labels).ravel()
    true = np.asarray(true_labels).ravel()
    if pred.shape != true.shape:
        raise InputError(f"{pred.size} cluster labels but {true.size} true labels")
    states, clusters = np.unique(true), np.unique(pred)
    # rectangular confusion matrix: rows over true states, columns over clusters
    t_idx = np.searchsorted(states, true)
    c_idx = np.searchsorted(clusters, pred)
    cm = confusion_matrix(t_idx, c_idx, labels=np.arange(max(len(states), len(clusters))))
    cm = cm[: len(states), : len(clusters)]
    acc, pairs = hungarian_accuracy(cm)
    return {
        "ari": float(adjusted_rand_score(true, pred)),
        "accuracy": acc,
        "confusion": cm.tolist(),
        "states": states.tolist(),
        "clusters": clusters.tolist(),
        "matching": {int(clusters[c]): int(states[s]) for s, c in pairs},
        "majority": majority_label_scores(pred, true),
    }


def majority_label_scores(cluster_labels: np.ndarray, true_labels: np.ndarray, return_found: bool = False):
    """Each cluster takes the true label most of its particles hold (the smallest on ties).

    Returns ``accuracy`` (fraction of particles whose cluster's label is their own, i.e. the clusters' purity),
    ``ari`` (adjusted Rand index of that labelling against the truth) and ``cluster_label`` ``{cluster: label}``;
    with ``return_found`` also the ``(N,)`` label each particle receives (``(scores, found)``). Several clusters
    may take the same label, so with more clusters than labels this scores how well the latent space separates the
    labels, not how many clusters were asked for.
    """
    from sklearn.metrics import adjusted_rand_score

    pred = np.asarray(cluster_labels).ravel()
    true = np.asarray(true_labels).ravel()
    if pred.shape != true.shape or pred.size == 0:
        raise InputError(f"{pred.size} cluster labels but {true.size} true labels")
    states, t_idx = np.unique(true, return_inverse=True)
    clusters, c_idx = np.unique(pred, return_inverse=True)
    counts = np.zeros((len(clusters), len(states)), dtype=np.int64)
    np.add.at(counts, (c_idx, t_idx), 1)
    label_of = states[np.argmax(counts, axis=1)]
    found = label_of[c_idx]
    scores = {
        "accuracy": float(np.mean(found == true)),
        "ari": float(adjusted_rand_score(true, found)),
        "cluster_label": {int(c): int(lab) for c, lab in zip(clusters, label_of, strict=True)},
    }
    return (scores, found) if return_found else scores


def cluster_entropy(cluster_labels: np.ndarray, true_labels: np.ndarray, base: float = 10.0) -> dict:
    """Mean over clusters of the entropy of the true-state distribution within each cluster (OPUS-DSD measure).

    Returns ``mean`` (average over non-empty clusters), ``weighted_mean`` (weighted by cluster size),
    ``per_cluster`` entropies, ``uniform`` = ``log(n_states)`` (every cluster an even mix of all states) and
    ``marginal`` = entropy of the overall state distribution (clusters carrying no information). Lower is better.
    """
    pred = np.asarray(cluster_labels).ravel()
    true = np.asarray(true_labels).ravel()
    if pred.shape != true.shape or pred.size == 0:
        raise InputError(f"{pred.size} cluster labels but {true.size} true labels")
    states = np.unique(true)

    def entropy(labels: np.ndarray) -> float:
        p = np.array([np.mean(labels == s) for s in states])
        p = p[p > 0]
        return float(-(p * np.log(p)).sum() / math.log(base))

    clusters, sizes = np.unique(pred, return_counts=True)
    per = np.array([entropy(true[pred == c]) for c in clusters])
    return {
        "mean": float(per.mean()),
        "weighted_mean": float((per * sizes).sum() / sizes.sum()),
        "per_cluster": {int(c): float(h) for c, h in zip(clusters, per, strict=True)},
        "uniform": float(math.log(len(states)) / math.log(base)),
        "marginal": entropy(true),
        "base": float(base),
    }


def continuous_correlation(z: np.ndarray, coordinate: np.ndarray) -> dict:
    """``|Spearman rho|`` of PC1 of ``z`` ``(N, zdim)`` (the latent itself for zdim = 1) with ``coordinate`` ``(N,)``.

    Also returns ``per_dimension`` ``|rho|`` of each latent dimension and the best of them.
    """
    from scipy.stats import spearmanr

    z = _as_latents(z)
    c = np.asarray(coordinate, dtype=np.float64).ravel()
    if c.size != z.shape[0]:
        raise InputError(f"{c.size} coordinates but {z.shape[0]} latents")

    def rho(x: np.ndarray) -> float:
        if np.ptp(x) == 0 or np.ptp(c) == 0:
            return float("nan")
        return float(abs(spearmanr(x, c).statistic))

    pc1 = z[:, 0] if z.shape[1] == 1 else run_pca(z, n_components=1).projected[:, 0]
    per_dim = [rho(z[:, j]) for j in range(z.shape[1])]
    finite = [r for r in per_dim if np.isfinite(r)]
    return {"abs_spearman_pc1": rho(pc1), "per_dimension": per_dim,
            "abs_spearman_best_dimension": max(finite) if finite else float("nan")}


def within_group_correlation(z: np.ndarray, coordinate: np.ndarray, groups: np.ndarray,
                             min_size: int = 10) -> dict:
    """``|Spearman rho|`` of each group's own PC1 (the latent itself for zdim = 1) with ``coordinate``, for the
    groups of ``groups`` ``(N,)`` with at least ``min_size`` particles and a varying coordinate; ``mean`` is
    their average weighted by group size (``None`` without such a group).
    """
    from scipy.stats import spearmanr

    z = _as_latents(z)
    c = np.asarray(coordinate, dtype=np.float64).ravel()
    groups = np.asarray(groups).ravel()
    per, sizes = {}, []
    for g in np.unique(groups):
        sel = groups == g
        if sel.sum() < min_size or np.ptp(c[sel]) == 0:
            continue
        pc1 = z[sel, 0] if z.shape[1] == 1 else run_pca(z[sel], n_components=1).projected[:, 0]
        if np.ptp(pc1) == 0:
            continue
        per[int(g)] = abs(float(spearmanr(pc1, c[sel]).statistic))
        sizes.append(int(sel.sum()))
    mean = float(np.average(list(per.values()), weights=sizes)) if per else None
    return {"mean": mean, "per_group": per, "sizes": dict(zip(per, sizes, strict=True))}


# --------------------------------------------------------------------------------------------------------------
# Map metrics


def _fsc_summary(vol: np.ndarray, ref: np.ndarray, pixel_size: float, mask: np.ndarray | None) -> dict:
    a, b = (vol, ref) if mask is None else (vol * mask, ref * mask)
    freqs, curve = fsc(a, b)
    return {
        "fsc_auc": fsc_auc(curve),
        "resolution_0.5_angstrom": resolution_at(freqs, curve, 0.5, pixel_size),
        "resolution_0.143_angstrom": resolution_at(freqs, curve, 0.143, pixel_size),
        "correlation": map_correlation(vol, ref, mask),
        "fsc": curve.tolist(),
    }


def _prepare_gt(gt_maps: Mapping[int, np.ndarray], D: int, pixel_size: float,
                gt_pixel_size: float | None) -> dict[int, np.ndarray]:
    """Ground-truth maps on the generator's ``D^3`` grid (Fourier crop/pad when the box differs).

    With ``gt_pixel_size`` the two fields of view (box x voxel size) must agree within 1 %.
    """
    import torch

    from cryoscape.imaging.fft import resample_volume

    out = {}
    for s, vol in gt_maps.items():
        if gt_pixel_size and abs(np.shape(vol)[-1] * gt_pixel_size - D * pixel_size) > 0.01 * D * pixel_size:
            raise InputError(f"the ground-truth maps span {np.shape(vol)[-1] * gt_pixel_size:.1f} A but the model's "
                             f"maps span {D * pixel_size:.1f} A", hint="was the run trained on this simulation?")
        vol = np.asarray(vol, dtype=np.float32)
        if vol.ndim != 3 or len(set(vol.shape)) != 1:
            raise InputError(f"ground-truth map of state {s} has shape {vol.shape}, expected (D, D, D)")
        if vol.shape[0] != D:
            vol = resample_volume(torch.from_numpy(vol), D).numpy().astype(np.float32)
        out[int(s)] = vol
    return out


def map_scores(generator, z: np.ndarray, true_states: np.ndarray, gt_maps: Mapping[int, np.ndarray],
               centers: np.ndarray | None = None, matching: Mapping[int, int] | None = None,
               mask: str | None = None, batch_size: int = 8, gt_pixel_size_angstrom: float | None = None) -> dict:
    """Compare generated volumes with ground-truth maps.

    Parameters
    ----------
    generator : object with ``generate_volumes`` and ``pixel_size_angstrom``.
    z : ``(N, zdim)`` latents; true_states : ``(N,)`` int state of each particle.
    gt_maps : ``{state: (D, D, D)}`` ground-truth maps, resampled to the generator's box if needed
        (their field of view must match the training data's).
    centers : ``(k, zdim)`` optional cluster-centre latents; matching : ``{cluster: state}`` used to pick the map
        each centre is compared with (default: the map it correlates best with).
    mask : None or "auto" (a tomoDRGN-style soft mask from each ground-truth map, applied to both maps).
    gt_pixel_size_angstrom : voxel size of ``gt_maps``; when given, their field of view is checked.

    Returns
    -------
    dict with ``states`` (per state: FSC AUC, resolutions in A, correlation, FSC curve), ``correlation_matrix``
    (rows: states' mean-latent volumes, columns: ground-truth maps), ``map_states`` (column order) and, with
    ``centers``, ``centers`` (per cluster) and ``center_correlation_matrix``.
    """
    z = _as_latents(z)
    true_states = np.asarray(true_states).ravel()
    pixel_size = float(generator.pixel_size_angstrom)
    states = [int(s) for s in np.unique(true_states) if int(s) in gt_maps]
    if not states:
        raise InputError("no ground-truth map matches any state label",
                         hint=f"labels are {np.unique(true_states)[:5].tolist()}..., maps are {sorted(gt_maps)[:5]}")
    means = np.stack([z[true_states == s].mean(axis=0) for s in states]).astype(np.float32)
    vols = np.asarray(generator.generate_volumes(means, batch_size=batch_size), dtype=np.float32)
    gt = _prepare_gt(gt_maps, vols.shape[-1], pixel_size, gt_pixel_size_angstrom)
    map_states = sorted(gt)
    masks = {s: (auto_mask(gt[s], pixel_size) if mask == "auto" else None) for s in map_states}
    result: dict[str, Any] = {"pixel_size_angstrom": pixel_size, "map_states": map_states, "states": {}}
    for s, vol in zip(states, vols, strict=True):
        result["states"][s] = _fsc_summary(vol, gt[s], pixel_size, masks[s])
    result["correlation_matrix"] = [[map_correlation(v, gt[s]) for s in map_states] for v in vols]
    result["correlation_matrix_rows"] = states
    if centers is not None:
        cvols = np.asarray(generator.generate_volumes(np.asarray(centers, np.float32), batch_size=batch_size))
        cmat = np.array([[map_correlation(v, gt[s]) for s in map_states] for v in cvols])
        result["center_correlation_matrix"] = cmat.tolist()
        result["centers"] = {}
        for c, (v, row) in enumerate(zip(cvols, cmat, strict=True)):
            matched = (matching or {}).get(c)
            s = int(map_states[int(np.nanargmax(row))]) if matched is None or matched not in gt else int(matched)
            result["centers"][c] = {"state": s, **_fsc_summary(v, gt[s], pixel_size, masks[s])}
    return result


# --------------------------------------------------------------------------------------------------------------
# CryoBench metrics (Jeon et al., NeurIPS 2024)

AU_FSC_MAX = 0.5  # the area under a perfect FSC curve on the frequency axis [0, 0.5] cycles/pixel
DEFAULT_N_IMAGES = 100  # images sampled for the per-image AU-FSC
DEFAULT_NEIGHBOR_KS = (10, 50, 100)
DEFAULT_NEIGHBOR_DISTANCE = 0.025  # times the range of the true coordinate


def au_fsc(vol: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Area under the FSC curve of ``vol`` against ``ref`` (both multiplied by ``mask`` when given).

    The FSC of :func:`cryoscape.analysis.fsc.fsc` has ``D // 2`` shells ``i = 0 .. D/2 - 1``; shell ``i`` is placed
    at ``0.5 * i / (D/2 - 1)`` on the frequency axis, so the last shell sits at Nyquist (0.5 cycles/pixel), and
    the area is taken with the trapezoid rule. A perfect match scores :data:`AU_FSC_MAX` = 0.5, unrelated maps
    about 0 (CryoBench's per-image AU-FSC convention).
    """
    a, b = (vol, ref) if mask is None else (np.asarray(vol) * mask, np.asarray(ref) * mask)
    return AU_FSC_MAX * fsc_auc(fsc(a, b)[1])


def _state_masks(gt: Mapping[int, np.ndarray], pixel_size: float, mask: str | None) -> dict:
    if mask in (None, "none"):
        return {s: None for s in gt}
    if mask != "auto":
        raise InputError(f"unknown mask {mask!r}", hint="use 'auto' or 'none'")
    return {s: auto_mask(v, pixel_size) for s, v in gt.items()}


def _summary(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
            "min": float(v.min()), "max": float(v.max())}


def sample_images(true_states: np.ndarray, n_images: int | None = DEFAULT_N_IMAGES, seed: int = 0,
                  states=None) -> np.ndarray:
    """Sorted indices of ``n_images`` particles drawn uniformly without replacement (all if fewer, or ``None``)
    among those whose state is in ``states`` (default all), with ``numpy.random.default_rng(seed)``.
    """
    true_states = np.asarray(true_states).ravel()
    pool = np.arange(true_states.size) if states is None else np.flatnonzero(np.isin(true_states, list(states)))
    if n_images is None or n_images >= pool.size:
        return pool
    if n_images < 1:
        raise InputError(f"the number of sampled images must be at least 1, got {n_images}")
    return np.sort(np.random.default_rng(seed).choice(pool, size=int(n_images), replace=False))


def per_image_au_fsc(generator, z: np.ndarray, true_states: np.ndarray, gt_maps: Mapping[int, np.ndarray],
                     n_images: int | None = DEFAULT_N_IMAGES, seed: int = 0, mask: str | None = "auto",
                     batch_size: int = 8, gt_pixel_size_angstrom: float | None = None) -> dict:
    """CryoBench's per-image AU-FSC: for each of ``n_images`` sampled particles (see :func:`sample_images`), the map
    ``generator.generate_volumes`` makes at its latent against the ground-truth map of its state, by :func:`au_fsc`
    with the soft mask of :func:`cryoscape.analysis.maps.auto_mask` computed from that true map (``mask="auto"``,
    the default) or no mask (``None``).

    ``generator`` is any object with ``generate_volumes(z (n, zdim)) -> (n, D, D, D)`` and
    ``pixel_size_angstrom`` (a model, or a latent-neighbour reconstructor). Returns ``mean``, ``std``, ``median``,
    ``min``, ``max``, ``n_images``, ``seed``, ``mask``, ``indices`` (positions in ``z``) and ``values``.
    """
    z = _as_latents(z)
    true_states = np.asarray(true_states).ravel()
    idx = sample_images(true_states, n_images, seed, states=[int(s) for s in gt_maps])
    if idx.size == 0:
        raise InputError("no particle's state has a ground-truth map")
    pixel_size = float(generator.pixel_size_angstrom)
    gt = masks = None
    values = []
    for start in range(0, idx.size, batch_size):
        sel = idx[start:start + batch_size]
        vols = np.asarray(generator.generate_volumes(z[sel].astype(np.float32), batch_size=batch_size),
                          dtype=np.float32)
        if gt is None:
            gt = _prepare_gt(gt_maps, vols.shape[-1], pixel_size, gt_pixel_size_angstrom)
            masks = _state_masks(gt, pixel_size, mask)
        assert gt is not None and masks is not None  # set by the first batch
        for i, vol in zip(sel, vols, strict=True):
            s = int(true_states[i])
            values.append(au_fsc(vol, gt[s], masks[s]))
    return {**_summary(values), "n_images": int(idx.size), "seed": int(seed), "mask": mask or "none",
            "indices": idx.tolist(), "values": values}


def per_conformation_au_fsc(generator, z: np.ndarray, true_states: np.ndarray, gt_maps: Mapping[int, np.ndarray],
                            mask: str | None = "auto", batch_size: int = 8,
                            gt_pixel_size_angstrom: float | None = None) -> dict:
    """CryoBench's per-conformation AU-FSC: one map per true state, generated at the mean latent of its particles,
    against that state's true map (:func:`au_fsc`, mask as in :func:`per_image_au_fsc`). Returns the summary over
    states (``mean`` ...), ``n_states`` and ``per_state`` ``{state: AU-FSC}``.
    """
    z = _as_latents(z)
    true_states = np.asarray(true_states).ravel()
    states = [int(s) for s in np.unique(true_states) if int(s) in gt_maps]
    if not states:
        raise InputError("no particle's state has a ground-truth map")
    means = np.stack([z[true_states == s].mean(axis=0) for s in states]).astype(np.float32)
    vols = np.asarray(generator.generate_volumes(means, batch_size=batch_size), dtype=np.float32)
    pixel_size = float(generator.pixel_size_angstrom)
    gt = _prepare_gt(gt_maps, vols.shape[-1], pixel_size, gt_pixel_size_angstrom)
    masks = _state_masks(gt, pixel_size, mask)
    per = {s: au_fsc(v, gt[s], masks[s]) for s, v in zip(states, vols, strict=True)}
    return {**_summary(list(per.values())), "n_states": len(states), "mask": mask or "none", "per_state": per}


def neighborhood_similarity(z: np.ndarray, true_states: np.ndarray | None = None,
                            coordinate: np.ndarray | None = None, ks=DEFAULT_NEIGHBOR_KS,
                            distance: float | None = None) -> dict:
    """Fraction of each particle's ``k`` nearest latent neighbours (Euclidean, itself excluded; scikit-learn
    ``NearestNeighbors``) that share its true state and, with ``coordinate``, that lie within ``distance`` of it
    on the true coordinate (default ``0.025`` times the coordinate's range: the neighbouring states of 50 evenly
    spaced conformations, one step = 1/49 = 0.0204 of the range, count), averaged over particles, for each ``k``
    in ``ks`` below the number of particles.

    Returns ``{"ks": [...], "state": {k: fraction}, "state_chance": expected fraction for random neighbours,
    "coordinate": {k: fraction}, "coordinate_distance": distance, "coordinate_chance": ...}`` (the parts the
    truth allows).
    """
    from sklearn.neighbors import NearestNeighbors

    z = _as_latents(z)
    n = z.shape[0]
    ks = sorted({int(k) for k in ks if 1 <= int(k) < n})
    out: dict = {"ks": ks}
    if not ks or (true_states is None and coordinate is None):
        return out
    nn = NearestNeighbors(n_neighbors=max(ks) + 1).fit(z)
    _, nbr = nn.kneighbors(z)
    # drop the particle itself (normally column 0; with duplicate latents it may sit elsewhere)
    rows = np.arange(n)[:, None]
    is_self = nbr == rows
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True
    nbr = nbr[~is_self].reshape(n, max(ks))
    if true_states is not None:
        st = np.asarray(true_states).ravel()
        same = st[nbr] == st[:, None]
        out["state"] = {k: float(same[:, :k].mean()) for k in ks}
        _, counts = np.unique(st, return_counts=True)
        out["state_chance"] = float(((counts * (counts - 1)).sum()) / (n * (n - 1)))
    if coordinate is not None:
        c = np.asarray(coordinate, dtype=np.float64).ravel()
        d = DEFAULT_NEIGHBOR_DISTANCE * float(np.ptp(c)) if distance is None else float(distance)
        close = np.abs(c[nbr] - c[:, None]) <= d
        out["coordinate"] = {k: float(close[:, :k].mean()) for k in ks}
        out["coordinate_distance"] = d
        cs = np.sort(c)
        within = np.searchsorted(cs, c + d, side="right") - np.searchsorted(cs, c - d, side="left") - 1
        out["coordinate_chance"] = float(within.sum() / (n * (n - 1)))
    return out


def cryobench_metrics(z: np.ndarray, truth: Mapping[str, np.ndarray], generator=None,
                      gt_maps: Mapping[int, np.ndarray] | None = None, n_images: int | None = DEFAULT_N_IMAGES,
                      seed: int = 0, ks=DEFAULT_NEIGHBOR_KS, distance: float | None = None, mask: str | None = "auto",
                      batch_size: int = 8, gt_pixel_size_angstrom: float | None = None) -> dict:
    """The CryoBench metrics the truth allows: ``per_image_au_fsc``, ``per_conformation_au_fsc`` (need
    ``generator``, ``gt_maps`` and ``state``) and ``neighborhood_similarity`` (needs ``state`` or
    ``coordinate``); ``not_computed`` ``{metric: reason}`` names the others.
    """
    states = truth.get("state")
    coordinate = truth.get("coordinate")
    if coordinate is not None and np.ptp(coordinate) == 0:
        coordinate = None
    if states is not None and len(np.unique(states)) < 2:
        states_nbr = None
    else:
        states_nbr = states
    out: dict = {"not_computed": {}}
    missing = [what for what, ok in (("per-particle 'state' labels", states is not None),
                                     ("ground-truth maps (gt/state_XXX.mrc)", bool(gt_maps)),
                                     ("a map generator (maps were not asked for)", generator is not None)) if not ok]
    if missing:
        for key in ("per_image_au_fsc", "per_conformation_au_fsc"):
            out["not_computed"][key] = "needs " + " and ".join(missing)
    else:
        assert states is not None and gt_maps is not None  # none missing
        out["per_image_au_fsc"] = per_image_au_fsc(generator, z, states, gt_maps, n_images, seed, mask, batch_size,
                                                   gt_pixel_size_angstrom)
        out["per_conformation_au_fsc"] = per_conformation_au_fsc(generator, z, states, gt_maps, mask, batch_size,
                                                                 gt_pixel_size_angstrom)
    if states_nbr is None and coordinate is None:
        out["not_computed"]["neighborhood_similarity"] = \
            "needs more than one true state or a varying true coordinate"
    else:
        out["neighborhood_similarity"] = neighborhood_similarity(z, states_nbr, coordinate, ks, distance)
        if states_nbr is None:
            out["not_computed"]["neighborhood_similarity_state"] = "needs more than one true state"
        if coordinate is None:
            out["not_computed"]["neighborhood_similarity_coordinate"] = "needs a varying true coordinate"
    return out


# --------------------------------------------------------------------------------------------------------------
# Whole run


def _jsonable(obj):
    """Replace non-finite floats by None and numpy scalars/arrays by Python types, recursively."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def evaluate_latents(z: np.ndarray, truth: Mapping[str, np.ndarray], label_set: str = "state",
                     k: int | None = None, seed: int = 0, kmeans=None, entropy_base: float = 10.0) -> dict:
    """Score latents ``(N, zdim)`` against per-particle truth arrays (already in the latents' order).

    ``label_set`` names the discrete labels clustered against (``state`` or another integer array of ``truth``,
    e.g. ``subunit``); ``k`` k-means clusters (default: the number of distinct labels), or the clusters of
    ``kmeans`` (a :class:`~cryoscape.analysis.latent.KMeansResult`, e.g. the report's) when it has ``k`` of them.
    Returns ``clustering`` (``k``, ``label_set``, ``n_labels``, ``kmeans_reused`` and the scores of
    :func:`clustering_scores`), ``entropy``, and ``continuous`` (with ``within_groups``, the coordinate against
    each majority-label group's PC1) where the truth allows; not yet JSON-cleaned.
    """
    z = _as_latents(z)
    out: dict = {}
    labels = truth.get(label_set)
    km = None
    found = None
    if labels is not None and len(np.unique(labels)) > 1:
        n_labels = len(np.unique(labels))
        k = n_labels if k is None else int(k)
        reused = kmeans is not None and len(np.asarray(kmeans.center_indices)) == k
        km = kmeans if reused else kmeans_on_data(z, k, seed=seed)
        scores = clustering_scores(km.labels, labels)
        scores["majority"], found = majority_label_scores(km.labels, labels, return_found=True)
        out["clustering"] = {"k": k, "label_set": label_set, "n_labels": n_labels, "n_states": n_labels,
                             "kmeans_reused": bool(reused), "seed": seed, **scores}
        out["entropy"] = cluster_entropy(km.labels, labels, base=entropy_base)
    coordinate = truth.get("coordinate")
    if coordinate is not None and np.ptp(coordinate) > 0:
        out["continuous"] = continuous_correlation(z, coordinate)
        if found is not None:
            out["continuous"]["within_groups"] = within_group_correlation(z, coordinate, found)
    out["_kmeans"] = km
    return out


def align_generator(generator, z: np.ndarray, true_states: np.ndarray, gt_maps: Mapping[int, np.ndarray],
                    batch_size: int = 8, gt_pixel_size_angstrom: float | None = None, flip: bool = True):
    """One transform (rotation, translation, hand) bringing all of ``generator``'s maps onto the truth.

    It is found (:func:`cryoscape.analysis.align.align_maps`) for the map at the mean latent of the most populous
    state that has a ground-truth map, against that map; all maps of one model share one frame. Returns
    ``(AlignedGenerator, dict)``: the generator whose maps come out aligned, and the transform's summary plus
    the ``state`` it was found on.
    """
    from cryoscape.analysis.align import AlignedGenerator, align_maps

    z = _as_latents(z)
    true_states = np.asarray(true_states).ravel()
    counts = {int(s): int(np.sum(true_states == s)) for s in np.unique(true_states) if int(s) in gt_maps}
    if not counts:
        raise InputError("no ground-truth map matches any state label: nothing to align to")
    state = max(counts, key=lambda s: (counts[s], -s))
    vol = np.asarray(generator.generate_volumes(z[true_states == state].mean(axis=0, keepdims=True)
                                                .astype(np.float32), batch_size=batch_size), dtype=np.float32)[0]
    pixel_size = float(generator.pixel_size_angstrom)
    gt = _prepare_gt({state: gt_maps[state]}, vol.shape[-1], pixel_size, gt_pixel_size_angstrom)[state]
    alignment = align_maps(vol, gt, pixel_size, flip=flip)
    return AlignedGenerator(generator, alignment), {"state": state, **alignment.to_dict()}


def evaluate_run(run_dir: str | Path, labels_npz: str | Path | Mapping[str, np.ndarray],
                 gt_maps: Mapping[int, np.ndarray] | None = None, generator=None, epoch: int | None = None,
                 k: int | None = None, seed: int = 0, mask: str | None = None, batch_size: int = 8,
                 entropy_base: float = 10.0, gt_pixel_size_angstrom: float | None = None,
                 label_set: str = "state", kmeans=None, cryobench: bool = True,
                 n_images: int | None = DEFAULT_N_IMAGES, neighbor_ks=DEFAULT_NEIGHBOR_KS,
                 neighbor_distance: float | None = None, align: bool = False, align_flip: bool = True) -> dict:
    """Evaluate the latents (and, with ``generator`` and ``gt_maps``, the maps) of a run against ground truth.

    Parameters
    ----------
    run_dir : path
        Run directory (``latents/epoch_NNN.npy``, ``indices.npy``).
    labels_npz : path or mapping
        Simulator ``labels.npz`` (or its arrays): ``state`` and/or ``coordinate`` per original particle (and the
        ``label_set`` array); they are selected with ``RUN/indices.npy``.
    gt_maps : ``{state: (D, D, D)}``, optional (compared per ``state``, whatever ``label_set``).
    generator : model with ``generate_volumes``, optional (e.g. ``cryoscape.models.load_run(run_dir, epoch)``).
    k : number of k-means clusters (default: the number of distinct labels of ``label_set``).
    label_set : the discrete labels clustered against (default ``state``; e.g. ``subunit``).
    kmeans : clusters to reuse when they number ``k`` (e.g. those of the analysis report).
    mask, batch_size, gt_pixel_size_angstrom : see :func:`map_scores`; entropy_base : see :func:`cluster_entropy`.
    cryobench : also compute :func:`cryobench_metrics` (``n_images`` sampled images, seeded with ``seed``;
        neighbourhood similarity at ``neighbor_ks`` with ``neighbor_distance``), always with the true-map soft
        mask whatever ``mask``; stored under ``cryobench`` with ``not_computed`` reasons.
    align : first bring the generator's maps onto the truth (:func:`align_generator`; with ``align_flip`` the hand
        may flip); the transform is stored under ``alignment`` and every map score is that of aligned maps.

    Returns
    -------
    dict, JSON-serialisable (non-finite numbers become None): ``run_dir``, ``epoch``, ``n_particles``, ``zdim``,
    and, when the truth allows, ``clustering``, ``entropy``, ``continuous``, ``maps`` (see
    :func:`evaluate_latents`).
    """
    latents = load_latents(run_dir, epoch)
    z = latents.z
    truth = read_labels(labels_npz, label_set) if not isinstance(labels_npz, Mapping) else \
        {key: np.asarray(v).ravel() for key, v in labels_npz.items()}
    if label_set not in truth and label_set != "state":
        raise InputError(f"the truth has no labels {label_set!r} (arrays: {sorted(truth)})")
    n_truth = len(next(iter(truth.values())))
    indices = latents.indices
    if indices is None:
        if n_truth != z.shape[0]:
            raise InputError(f"the run has {z.shape[0]} latents, no indices.npy, and the truth has {n_truth} "
                             "particles", run_dir)
        indices = np.arange(n_truth)
    if indices.min() < 0 or indices.max() >= n_truth:
        raise InputError(f"indices.npy refers to particle {int(indices.max())} but the truth has only {n_truth}",
                         run_dir, "was this run trained on this simulation?")
    truth = {key: v[indices] for key, v in truth.items()}
    out: dict = {"run_dir": str(run_dir), "epoch": latents.epoch, "n_particles": int(z.shape[0]),
                 "zdim": int(z.shape[1])}
    scores = evaluate_latents(z, truth, label_set=label_set, k=k, seed=seed, kmeans=kmeans,
                              entropy_base=entropy_base)
    km = scores.pop("_kmeans")
    out.update(scores)
    states = truth.get("state")
    if align and generator is not None and gt_maps and states is not None:
        generator, out["alignment"] = align_generator(generator, z, states, gt_maps, batch_size,
                                                      gt_pixel_size_angstrom, flip=align_flip)
    if generator is not None and gt_maps and states is not None:
        same = label_set == "state" and km is not None
        out["maps"] = map_scores(generator, z, states, gt_maps,
                                 centers=None if km is None else km.centers,
                                 matching=out["clustering"]["matching"] if same else None,
                                 mask=mask, batch_size=batch_size, gt_pixel_size_angstrom=gt_pixel_size_angstrom)
    if cryobench:
        out["cryobench"] = cryobench_metrics(z, truth, generator, gt_maps, n_images=n_images, seed=seed,
                                             ks=neighbor_ks, distance=neighbor_distance, batch_size=batch_size,
                                             gt_pixel_size_angstrom=gt_pixel_size_angstrom)
    return _jsonable(out)


def _fmt(x, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def clustering_description(c: Mapping) -> str:
    """``"k-means (k = 8) vs the 'subunit' labels (2 values)"`` for a result's ``clustering``."""
    label_set = c.get("label_set", "state")
    n = c.get("n_labels", c.get("n_states", len(c.get("states", []))))
    k = c.get("k", len(c.get("clusters", [])))
    return f"k-means (k = {k}) vs the {label_set!r} labels ({n} values)"


def format_evaluation(result: dict) -> str:
    """A plain-text table of the headline numbers of :func:`evaluate_run`'s result."""
    lines = [f"run: {result['run_dir']}  epoch {result.get('epoch')}  N={result['n_particles']}  "
             f"zdim={result['zdim']}"]
    if "clustering" in result:
        c, e = result["clustering"], result["entropy"]
        lines += [f"{clustering_description(c)}:",
                  f"  adjusted Rand index     {_fmt(c['ari'])}",
                  f"  matched accuracy        {_fmt(c['accuracy'])}  (one cluster per label)"]
        if "majority" in c:
            m = c["majority"]
            lines += [f"  sorted by majority label {_fmt(100 * m['accuracy'], '.1f')}%  (ARI of that labelling "
                      f"{_fmt(m['ari'])})"]
        lines += [f"  mean cluster entropy    {_fmt(e['mean'])}  (uniform mix {_fmt(e['uniform'])}, "
                  f"log base {e['base']:g})"]
    if "continuous" in result:
        c = result["continuous"]
        lines += [f"|Spearman rho| PC1 vs coordinate  {_fmt(c['abs_spearman_pc1'])}  "
                  f"(best dimension {_fmt(c['abs_spearman_best_dimension'])})"]
        w = c.get("within_groups")
        if w and w.get("mean") is not None:
            lines += [f"|Spearman rho| within each majority-label group  {_fmt(w['mean'])}"]
    if "alignment" in result:
        a = result["alignment"]
        e, t = a["euler_relion_deg"], a["translation_angstrom"]
        lines += [f"maps aligned to the truth (found on state {a['state']}): rotation (RELION rot, tilt, psi) = "
                  f"({e['rot']:.1f}, {e['tilt']:.1f}, {e['psi']:.1f}) deg, translation ({t[0]:.2f}, {t[1]:.2f}, "
                  f"{t[2]:.2f}) A, hand {'flipped' if a['hand_flipped'] else 'kept'}, correlation "
                  f"{_fmt(a['correlation'])} (other hand {_fmt(a['correlation_other_hand'])})"]
    lines += format_cryobench(result.get("cryobench"))
    if "maps" in result:
        lines += ["state  FSC-AUC  res@0.5(A)  res@0.143(A)  CC"]
        for s, m in result["maps"]["states"].items():
            lines.append(f"{s:>5}  {_fmt(m['fsc_auc'])}    {_fmt(m['resolution_0.5_angstrom'], '8.2f')}    "
                         f"{_fmt(m['resolution_0.143_angstrom'], '8.2f')}    {_fmt(m['correlation'])}")
    return "\n".join(lines)


def format_cryobench(cb: Mapping | None) -> list[str]:
    """Text lines for the ``cryobench`` part of an evaluation (empty without one)."""
    if not cb:
        return []
    lines = []
    for key, what in (("per_image_au_fsc", "per-image AU-FSC"), ("per_conformation_au_fsc", "per-conformation AU-FSC")):
        m = cb.get(key)
        if m:
            n = f"{m['n_images']} images" if "n_images" in m else f"{m['n_states']} states"
            lines.append(f"{what:<24} {_fmt(m['mean'])} +- {_fmt(m['std'])}  (max 0.5; {n}, mask {m['mask']})")
    nb = cb.get("neighborhood_similarity")
    if nb:
        for part, what in (("state", "same state"), ("coordinate", "coordinate within "
                                                     f"{_fmt(nb.get('coordinate_distance'), '.3g')}")):
            if part in nb:
                vals = "  ".join(f"k={k}: {_fmt(v)}" for k, v in nb[part].items())
                lines.append(f"neighbourhood similarity ({what}; chance {_fmt(nb[part + '_chance'])})  {vals}")
    for key, why in cb.get("not_computed", {}).items():
        lines.append(f"not computed: {key} ({why})")
    return lines
