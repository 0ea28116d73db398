"""A self-contained HTML report (``DIR/index.html``) of an analysis: every figure is embedded as a base64 PNG
data URI and the style sheet is inline, so the single file can be mailed or archived; nothing is fetched from the
network.

Two levels of use::

    build_report(out_dir, config=run_dir / "config.yaml", metrics=run_dir / "metrics.csv", z=z, pca=pca,
                 umap=emb, kmeans=km, center_volumes=vols, traversals={"PC1": pc1_vols}, evaluation=result)

builds the standard sections from whatever is given; custom :class:`Section` objects can be appended with
``sections=[...]`` (or built with the ``*_section`` helpers and passed alone).
"""

from __future__ import annotations

import base64
import dataclasses
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from cryoscape.analysis import plots
from cryoscape.errors import InputError
from cryoscape.models.pose_search import NOT_CONVERGED_FAR_FRACTION
from cryoscape.rundir import RunDir
from cryoscape.train.engine import BEST_EPOCH_TOLERANCE
from cryoscape.utils.atomic import atomic_path, atomic_write_text

__all__ = [
    "Table",
    "Section",
    "config_section",
    "family_options",
    "loss_section",
    "validation_summary",
    "epoch_choice",
    "run_selection_metric",
    "latent_section",
    "kmeans_section",
    "traversal_section",
    "map_section",
    "pose_section",
    "abinit_pose_section",
    "search_history",
    "viewing_directions",
    "viewing_nside",
    "viewing_direction_counts",
    "viewing_density_map",
    "viewing_summary",
    "plot_viewing_directions",
    "evaluation_section",
    "build_report",
    "render_html",
]

FigureLike = Figure | Path | str | bytes


@dataclass
class Table:
    """A table: ``header`` (column names) and ``rows`` (lists of cells, rendered with ``str``)."""

    header: Sequence[str]
    rows: Sequence[Sequence]
    caption: str = ""


@dataclass
class Section:
    """One report section: a title, paragraphs of plain text, tables and ``(caption, figure)`` pairs.

    A figure is a matplotlib ``Figure``, PNG bytes, or the path of a PNG file.
    """

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, FigureLike]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------------------
# Section builders


def _flatten(d: Mapping, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out += _flatten(value, name + ".")
        else:
            out.append((name, "" if value is None else str(value)))
    return out


def family_options(config: Mapping) -> dict:
    """A copy of a configuration mapping whose ``data``/``model``/``train`` sections are those of the typed
    :class:`~cryoscape.config.RunConfig` it describes: the shared sections and the family's own ``model`` section,
    without other families' options (a ``config.yaml`` of an older schema, ``schema_version``, is mapped as
    :func:`~cryoscape.config.load_config` maps it). A mapping that is not such a configuration is returned as is.
    """
    from cryoscape.config import SCHEMA_VERSION, RunConfig

    sections = ("data", "model", "train")
    if not isinstance(config.get("model"), Mapping) or not all(isinstance(config.get(k, {}), Mapping)
                                                                 for k in sections):
        return dict(config)
    schema = config.get("schema_version", SCHEMA_VERSION)
    try:
        typed = RunConfig.from_dict({k: config[k] for k in sections if k in config},
                                    schema if isinstance(schema, int) else SCHEMA_VERSION).to_dict()
    except (InputError, TypeError, ValueError):  # not a configuration this version reads: shown whole
        return dict(config)
    return {key: typed[key] if key in sections else value for key, value in config.items()}


def config_section(config) -> Section:
    """Run summary: the configuration (a mapping, a dataclass such as ``RunConfig``, or a ``config.yaml`` path),
    showing the options of the family that ran (:func:`family_options`).
    """
    if isinstance(config, (str, Path)):
        import yaml

        path = Path(config)
        try:
            config = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise InputError("file not found", path) from None
        except yaml.YAMLError as exc:
            raise InputError(f"not valid YAML ({str(exc).splitlines()[0]})", path) from None
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        raise InputError(f"the configuration must be a mapping, got {type(config).__name__}")
    family = config.get("model", {}).get("family") if isinstance(config.get("model"), Mapping) else None
    sec = Section("Run summary", tables=[Table(["setting", "value"], _flatten(family_options(config)))])
    if family:
        sec.paragraphs.append(f"Model family {family}; options that only other families read are not shown.")
    return sec


# a validation loss more than this fraction above its minimum at the last epoch counts as over-fitting: the
# tolerance of the engine's best-epoch rule (cryoscape.train.engine.select_best_epoch)
OVERFIT_TOLERANCE = BEST_EPOCH_TOLERANCE


def _metric_words(metric: str) -> str:
    names = {"val_loss": "validation loss", "val_recon": "validation reconstruction error (val_recon)"}
    return names.get(metric, f"validation {metric.removeprefix('val_')} ({metric})")


def validation_summary(metrics, metric: str = "val_loss", tolerance: float = OVERFIT_TOLERANCE) -> dict | None:
    """How the validation curve ``metric`` of ``metrics.csv`` (path or DataFrame) behaves; ``None`` without it.

    Returns ``metric``, ``best_epoch`` (the lowest value, first on ties, over all epochs), ``best``,
    ``last_epoch``, ``last``, ``rise`` (``(last - best) / |best|``) and ``verdict``: ``"over-fits"`` (the last
    value more than ``tolerance`` above the minimum), ``"still decreasing"`` (lowest at the last epoch) or
    ``"levelled off"``; and ``text``, the sentence the report shows.
    """
    df = plots.read_metrics(metrics) if isinstance(metrics, (str, Path)) else metrics
    if metric not in df.columns:
        return None
    rows = df[["epoch", metric]].dropna()
    rows = rows[np.isfinite(rows[metric].to_numpy(dtype=np.float64))]
    if rows.empty:
        return None
    values = rows[metric].to_numpy(dtype=np.float64)
    epochs = rows["epoch"].to_numpy().astype(int)
    i = int(np.argmin(values))
    best, last = float(values[i]), float(values[-1])
    rise = (last - best) / abs(best) if best != 0 else (0.0 if last == best else float("inf"))
    b, L = int(epochs[i]), int(epochs[-1])
    words = _metric_words(metric)
    if i == len(values) - 1:
        verdict = "still decreasing"
        text = (f"The {words} is lowest at the last epoch, {L} ({best:.5g}): no sign of over-fitting; training "
                "longer may still improve the model.")
    elif rise > tolerance:
        verdict = "over-fits"
        text = (f"The {words} is lowest at epoch {b} ({best:.5g}) and rises after it, to {last:.5g} at the last "
                f"epoch, {L} ({rise:+.1%}): the model over-fits after epoch {b} (it keeps fitting the training "
                f"images but predicts held-out images worse). The best epoch is the latest checkpointed one within "
                f"{tolerance:.0%} of the minimum.")
    else:
        verdict = "levelled off"
        text = (f"The {words} is lowest at epoch {b} ({best:.5g}) and within {tolerance:.0%} of that at the last "
                f"epoch, {L} ({last:.5g}): the curve has levelled off; no clear over-fitting (the best epoch is the "
                f"latest checkpointed one within {tolerance:.0%} of the minimum).")
    return {"metric": metric, "best_epoch": b, "best": best, "last_epoch": L, "last": last, "rise": rise,
            "verdict": verdict, "text": text}


def epoch_choice(run_dir, requested: int | None, epoch: int) -> str:
    """Why ``epoch`` of ``run_dir`` is the one analysed: ``"lowest validation loss"``, ``"validation loss within 2%
    of its lowest, at epoch 8"`` (``RUN/best_epoch``, see :func:`cryoscape.train.engine.select_best_epoch`),
    ``"last; no validation set"``, ``"chosen with --epoch"``, ... (``requested``: the epoch asked for, ``None`` for
    the default).
    """
    if requested is not None:
        return "chosen with --epoch"
    run_dir = Path(run_dir)
    metric = run_selection_metric(run_dir)
    try:
        best = RunDir(run_dir).best_epoch()
    except OSError:
        best = None
    if best is not None and best == int(epoch):
        words = _metric_words(metric).split(" (")[0]
        try:
            summary = validation_summary(run_dir / "metrics.csv", metric)
        except InputError:
            summary = None
        if summary is None or summary["best_epoch"] == int(epoch):
            return f"lowest {words}"
        return f"{words} within {BEST_EPOCH_TOLERANCE:.0%} of its lowest, at epoch {summary['best_epoch']}"
    metrics = run_dir / "metrics.csv"
    has_val = False
    if metrics.is_file():
        try:
            has_val = any(c.startswith("val_") for c in plots.read_metrics(metrics).columns)
        except InputError:
            pass
    return "last" if has_val else "last; no validation set"


def run_selection_metric(run_dir: Path) -> str:
    """The column ``RUN/best_epoch`` is chosen by, from the family in ``RUN/config.yaml`` (``val_loss`` if unknown)."""
    from cryoscape.train.engine import selection_metric

    try:
        import yaml

        family = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("model", {}).get("family", "")
    except (OSError, AttributeError, ValueError):
        family = ""
    return selection_metric(str(family or ""))


def loss_section(metrics, epoch: int | None = None, epoch_reason: str | None = None,
                 metric: str = "val_loss") -> Section:
    """Training curves from ``metrics.csv`` (path or DataFrame), read for the user: which epoch is analysed
    (``epoch``, ``epoch_reason``) and how the validation curve ``metric`` behaves (:func:`validation_summary`).
    """
    df = plots.read_metrics(metrics) if isinstance(metrics, (str, Path)) else metrics
    sec = Section("Training and validation loss")
    if epoch is not None:
        sec.paragraphs.append(f"Analysed: epoch {epoch} ({epoch_reason})." if epoch_reason else
                              f"Analysed: epoch {epoch}.")
    summary = validation_summary(df, metric)
    if summary is None and metric != "val_loss":
        summary = validation_summary(df, "val_loss")
    if summary is not None:
        sec.paragraphs.append(summary["text"])
        if epoch is not None and summary["verdict"] == "over-fits" and epoch > summary["best_epoch"] \
                and epoch_reason and not epoch_reason.startswith("lowest"):
            sec.paragraphs.append(f"Epoch {epoch} comes after the minimum at epoch {summary['best_epoch']}: its "
                                  "latent space may be that of an over-fitted model.")
    elif not any(str(c).startswith("val_") for c in df.columns):
        sec.paragraphs.append("No validation set (--val-frac 0): over-fitting cannot be read from these curves.")
    sec.figures.append(("Training and validation loss per epoch" + ("" if epoch is None else
                                                                   f" (dotted line: the analysed epoch, {epoch})"),
                        plots.plot_loss_curves(df, mark_epoch=epoch)))
    return sec


def latent_section(z: np.ndarray, pca=None, umap: np.ndarray | None = None,
                   labels: np.ndarray | None = None) -> Section:
    """Latent space: a histogram (zdim 1) or PCA scatter/hexbin and explained variance, plus UMAP if given.

    ``pca`` is a :class:`cryoscape.analysis.latent.PCAResult` (computed here when None and zdim > 1).
    """
    from cryoscape.analysis.latent import run_pca

    z = np.asarray(z)
    z = z[:, None] if z.ndim == 1 else z
    sec = Section("Latent space", paragraphs=[f"{z.shape[0]} particles, {z.shape[1]}-dimensional latent space."])
    if z.shape[1] == 1:
        sec.figures.append(("Histogram of the latent", plots.plot_latent_histogram(z[:, 0])))
        return sec
    pca = pca if pca is not None else run_pca(z)
    pc = pca.projected
    sec.figures += [
        ("PCA of the latents", plots.plot_scatter(pc, labels=labels, title="PCA")),
        ("PCA density", plots.plot_hexbin(pc, title="PCA")),
        ("Explained variance per principal component",
         plots.plot_explained_variance(pca.explained_variance_ratio)),
    ]
    if umap is not None:
        ax = ("UMAP1", "UMAP2")
        sec.figures += [("UMAP of the latents", plots.plot_scatter(umap, labels=labels, axis_labels=ax,
                                                                    title="UMAP")),
                        ("UMAP density", plots.plot_hexbin(umap, axis_labels=ax, title="UMAP"))]
    return sec


def kmeans_section(labels: np.ndarray, center_volumes: Sequence[np.ndarray] | np.ndarray | None = None,
                   center_indices: np.ndarray | None = None, embedding: np.ndarray | None = None,
                   axis_labels: tuple[str, str] = ("PC1", "PC2")) -> Section:
    """k-means clusters: sizes, the clusters on an embedding ``(N, 2)``, thumbnails of the centre volumes."""
    labels = np.asarray(labels).ravel()
    clusters, sizes = np.unique(labels, return_counts=True)
    header = ["cluster", "particles", "fraction"] + (["centre particle"] if center_indices is not None else [])
    rows = []
    for c, n in zip(clusters, sizes, strict=True):
        row = [int(c), int(n), f"{n / labels.size:.3f}"]
        if center_indices is not None:
            row.append(int(np.asarray(center_indices)[c]))
        rows.append(row)
    sec = Section(f"k-means clustering (k = {len(clusters)})", tables=[Table(header, rows)])
    if embedding is not None:
        centers = np.asarray(embedding)[np.asarray(center_indices)] if center_indices is not None else None
        sec.figures.append(("Clusters", plots.plot_scatter(embedding, labels=labels, centers=centers,
                                                           axis_labels=axis_labels, title="k-means clusters")))
    if center_volumes is not None and len(center_volumes):
        sec.figures.append(("Volumes at the cluster centres (projection along z)",
                            plots.plot_volume_gallery(center_volumes, [f"cluster {i}" for i in
                                                                       range(len(center_volumes))])))
    return sec


def traversal_section(traversals: Mapping[str, Sequence[np.ndarray] | np.ndarray]) -> Section:
    """Volumes along trajectories: ``{name (e.g. "PC1"): (n, D, D, D) volumes}``, one thumbnail row each."""
    sec = Section("Trajectories")
    for name, vols in traversals.items():
        sec.figures.append((f"{name}: volumes along the trajectory (projection along z)",
                            plots.plot_volume_gallery(vols, [f"{i + 1}" for i in range(len(vols))],
                                                      ncols=len(vols))))
    return sec


def map_section(vol: np.ndarray, voxel_size: float, name: str = "map.mrc", epoch: int | None = None,
                changes: Sequence[str] = ()) -> Section:
    """The one map of a run without a latent space (zdim 0): its file ``name``, box, voxel size and the
    post-processing ``changes`` applied (e.g. ``"mirrored"``), with its three central sections and z projection.
    """
    vol = np.asarray(vol)
    at = f" at epoch {epoch}" if epoch is not None else ""
    text = (f"The decoder's map{at} (the run has no latent space): {name}, box {vol.shape[-1]}, "
            f"{voxel_size:.4g} Å per voxel")
    sec = Section("Map", paragraphs=[text + (f" ({', '.join(changes)})." if changes else ".")])
    sec.figures.append(("Central sections and the projection along z", plots.plot_volume_slices(vol)))
    return sec


# particles whose learned pose moved further than this from the consensus are flagged (pose_section)
POSE_FAR_DEG = 10.0
POSE_FAR_PX = 3.0


def pose_changes(arrays: Mapping) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(refined mask, rotation change in degrees, shift change in pixels)`` per particle of a learned-pose file
    (:func:`cryoscape.models.poses.load_learned_poses`).
    """
    refined = np.asarray(arrays["refined"], dtype=bool)
    angle = np.rad2deg(np.linalg.norm(np.asarray(arrays["rotvec"], dtype=np.float64), axis=1))
    shift = np.linalg.norm(np.asarray(arrays["shift_px"], dtype=np.float64), axis=1)
    return refined, angle, shift


def pose_section(arrays: Mapping, particle_ids: np.ndarray | None = None, epoch: int | None = None,
                 far_deg: float = POSE_FAR_DEG, far_px: float = POSE_FAR_PX) -> Section:
    """Poses refined during training (``train --refine-poses``): the distribution of the rotation and shift
    changes from the consensus, and the particles whose pose moved further than ``far_deg`` or ``far_px``
    (``particle_ids``: their indices into the input, default their positions); with ``arrays["rotations"]`` also
    the distribution of the learned viewing directions (:func:`plot_viewing_directions`).
    """
    refined, angle, shift = pose_changes(arrays)
    ids = np.arange(len(angle)) if particle_ids is None else np.asarray(particle_ids)
    a, s = angle[refined], shift[refined]
    far = refined & ((angle > far_deg) | (shift > far_px))
    when = f" by epoch {epoch}" if epoch is not None else ""
    tilts = np.asarray(arrays["shift_px"]).shape[-1] == 3  # tilt series: one 3-D shift per particle
    shift_kind = "3-D shift (one rigid correction for all of a particle's tilts)" if tilts else "in-plane shift"
    sec = Section("Refined poses", paragraphs=[
        f"{int(refined.sum())} of {len(angle)} particles had their poses refined{when} (validation particles keep "
        f"their consensus poses). Change from the consensus: rotation (geodesic angle) and {shift_kind}."])
    if refined.any():
        _pose_change_tables(sec, a, s, far, ids, far_deg, far_px)
    if not tilts and "rotations" in arrays and refined.sum() >= 10:
        sec.paragraphs.append(_frame_drift_text(arrays, refined))
    if "rotations" in arrays:  # a tilt-series run has one rotation per tilt image
        per_image = len(arrays["rotations"]) != len(angle)
        _add_viewing_figure(sec, arrays["rotations"], "learned poses of all " + ("tilt images" if per_image else
                                                                                  "particles"))
    return sec


def _frame_drift_text(arrays: Mapping, refined: np.ndarray) -> str:
    """One paragraph: the rotation and translation common to all refined particles' pose changes
    (:func:`cryoscape.analysis.pose_frame.frame_drift` of the learned poses against the consensus), by which the
    run's map has moved from the consensus frame.
    """
    from scipy.spatial.transform import Rotation

    from cryoscape.analysis.pose_frame import frame_drift
    from cryoscape.imaging.so3_grid import geodesic_distance_deg

    learned = np.asarray(arrays["rotations"], dtype=np.float64)[refined]
    rotvec = np.asarray(arrays["rotvec"], dtype=np.float64)[refined]
    consensus = Rotation.from_rotvec(-rotvec).as_matrix() @ learned  # learned = exp([w]x) consensus
    shift = np.asarray(arrays["shift_px"], dtype=np.float64)[refined]
    G, t = frame_drift(consensus, np.zeros_like(shift), learned, shift)
    angle = float(geodesic_distance_deg(G, np.eye(3)))
    return (f"Part of the change is common to all refined particles: a rotation of {angle:.2f} degrees and a "
            f"translation of ({t[0]:.2f}, {t[1]:.2f}, {t[2]:.2f}) pixels ({np.linalg.norm(t):.2f} pixels) of the "
            "whole frame. The images cannot see such a motion (the map and every pose move together), so the "
            "run's map sits this far from a map of the consensus poses: compare the two after `cryoscape fsc "
            "--align`.")


def _pose_change_tables(sec: Section, a: np.ndarray, s: np.ndarray, far: np.ndarray, ids: np.ndarray,
                        far_deg: float, far_px: float) -> None:
    from matplotlib.figure import Figure

    rows = [[name, _num(np.median(v), ".2f"), _num(np.percentile(v, 90), ".2f"), _num(v.max(), ".2f")]
            for name, v in (("rotation (degrees)", a), ("shift (pixels)", s))]
    sec.tables.append(Table(["change", "median", "90th percentile", "max"], rows))
    listed = ", ".join(str(int(i)) for i in ids[far][:20]) + (" ..." if far.sum() > 20 else "")
    sec.paragraphs.append(f"{int(far.sum())} particles moved further than {far_deg:g} degrees or {far_px:g} pixels"
                          + (f": {listed}" if far.any() else "") + ". A pose that moves far may be a wrong "
                          "consensus pose put right, or a particle that fits no pose well (junk, another state).")
    fig = Figure(figsize=(9, 3.2))
    for j, (v, label, limit) in enumerate(((a, "rotation change (degrees)", far_deg),
                                           (s, "shift change (pixels)", far_px))):
        ax = fig.add_subplot(1, 2, j + 1)
        spread = np.ptp(v) > 1e-6 * max(1.0, float(np.abs(v).max()))
        ax.hist(v, bins=50 if spread else 1, color="C0")  # all (nearly) equal, e.g. no change yet: one bin
        ax.axvline(limit, color="C3", ls="--", lw=1)
        ax.set_xlabel(label)
        ax.set_ylabel("particles")
    fig.tight_layout()
    sec.figures.append(("Change of the learned poses from the consensus (dashed: flagged beyond)", fig))


# -- viewing directions ----------------------------------------------------------------------------------------
# A particle's viewing direction is the third row of RELION's A (volume -> image frame): the volume-frame unit
# vector A^T e_z = (cos rot sin tilt, sin rot sin tilt, cos tilt), drawn at longitude rot and latitude 90 - tilt
# (HEALPix's phi and 90 - theta). The in-plane angle psi does not change it.
VIEWING_MIN_PER_PIXEL = 8.0  # viewing_nside: the finest HEALPix grid with at least this many particles per pixel


def viewing_directions(rotations: np.ndarray) -> np.ndarray:
    """Unit viewing directions ``(N, 3)`` of rotations ``(N, 3, 3)`` (RELION ``A``, volume -> image): the third
    rows of ``A``, ``(cos rot sin tilt, sin rot sin tilt, cos tilt)``.
    """
    A = np.asarray(rotations, dtype=np.float64)
    if A.ndim != 3 or A.shape[1:] != (3, 3):
        raise InputError(f"rotations must have shape (N, 3, 3), got {A.shape}")
    v = A[:, 2, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def viewing_nside(n: int, min_per_pixel: float = VIEWING_MIN_PER_PIXEL, lo: int = 2, hi: int = 32) -> int:
    """HEALPix ``nside`` to bin ``n`` viewing directions: the largest power of two in ``[lo, hi]`` whose
    ``12 nside^2`` pixels hold at least ``min_per_pixel`` particles each on average (``lo`` for few particles).
    """
    nside = lo
    while 2 * nside <= hi and 12 * (2 * nside) ** 2 * min_per_pixel <= n:
        nside *= 2
    return nside


def viewing_direction_counts(rotations: np.ndarray, nside: int | None = None) -> np.ndarray:
    """Particles per HEALPix pixel, ``(12 nside^2,)`` in RING order, of the viewing directions of ``rotations``
    ``(N, 3, 3)`` (RELION ``A``); ``nside`` a power of two, default :func:`viewing_nside`. Rotations with
    non-finite entries are not counted.
    """
    import healpy

    v = viewing_directions(rotations)
    v = v[np.isfinite(v).all(axis=1)]
    nside = viewing_nside(len(v)) if nside is None else int(nside)
    if nside < 1 or nside & (nside - 1):
        raise InputError(f"the HEALPix nside must be a power of two, got {nside}")
    npix = healpy.nside2npix(nside)
    if not len(v):
        return np.zeros(npix, dtype=np.int64)
    return np.bincount(healpy.vec2pix(nside, v[:, 0], v[:, 1], v[:, 2]), minlength=npix).astype(np.int64)


def viewing_density_map(counts: np.ndarray, n_lon: int = 360, n_lat: int = 180
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HEALPix ``counts`` (:func:`viewing_direction_counts`) on a longitude-latitude grid:
    ``(lon_edges (n_lon + 1,), lat_edges (n_lat + 1,), density (n_lat, n_lon))``, edges in degrees, ``density``
    the particles per steradian of each cell's pixel divided by that of a uniform distribution of the same
    particles (1 everywhere for uniform directions; 0 everywhere without particles).
    """
    import healpy

    counts = np.asarray(counts, dtype=np.float64)
    nside = healpy.npix2nside(len(counts))
    lon_edges = np.linspace(-180.0, 180.0, n_lon + 1)
    lat_edges = np.linspace(-90.0, 90.0, n_lat + 1)
    lon, lat = np.meshgrid(0.5 * (lon_edges[1:] + lon_edges[:-1]), 0.5 * (lat_edges[1:] + lat_edges[:-1]))
    total = counts.sum()
    relative = counts * (len(counts) / total) if total > 0 else np.zeros_like(counts)
    return lon_edges, lat_edges, relative[healpy.ang2pix(nside, lon, lat, lonlat=True)]


def _plot_viewing_counts(counts: np.ndarray, title: str = "") -> Figure:
    lon_edges, lat_edges, density = viewing_density_map(counts)
    fig = Figure(figsize=(7.5, 4.4))
    ax = fig.add_subplot(1, 1, 1, projection="mollweide")
    mesh = ax.pcolormesh(np.deg2rad(lon_edges), np.deg2rad(lat_edges), density, cmap="viridis", vmin=0.0,
                         shading="flat", rasterized=True)
    ax.grid(True, color="white", alpha=0.5, lw=0.5)
    ax.tick_params(axis="x", colors="white", labelsize=8)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlabel("rot (longitude)")
    ax.set_ylabel("90 - tilt (latitude)")
    if title:
        ax.set_title(title)
    bar = fig.colorbar(mesh, ax=ax, orientation="horizontal", fraction=0.05, pad=0.1)
    bar.set_label("density per steradian relative to uniform")
    return fig


def plot_viewing_directions(rotations: np.ndarray, nside: int | None = None, title: str = "") -> Figure:
    """Mollweide map of the density of the viewing directions of ``rotations`` ``(N, 3, 3)`` (RELION ``A``),
    binned on HEALPix pixels (:func:`viewing_direction_counts`; longitude rot, latitude 90 - tilt; colour: the
    density relative to uniform directions, :func:`viewing_density_map`).
    """
    return _plot_viewing_counts(viewing_direction_counts(rotations, nside), title)


def viewing_summary(counts: np.ndarray) -> str:
    """One paragraph on binned viewing directions (:func:`viewing_direction_counts`): pixel size, empty pixels
    (against the share a uniform distribution leaves empty) and the fullest pixel.
    """
    import healpy

    counts = np.asarray(counts)
    n, npix = int(counts.sum()), len(counts)
    if n == 0:
        return "No pose has a finite viewing direction to show."
    nside = healpy.npix2nside(npix)
    mean = n / npix
    return (f"Viewing directions of {n} poses in {npix} HEALPix pixels of about "
            f"{np.rad2deg(healpy.nside2resol(nside)):.0f} degrees (nside {nside}, {mean:.1f} poses per pixel if "
            f"uniform): {100 * np.mean(counts == 0):.1f} % of the pixels hold no pose (about "
            f"{100 * np.exp(-mean):.1f} % for uniform directions), and the fullest holds {counts.max() / mean:.1f} "
            "times the uniform density. Longitude is rot, latitude 90 - tilt (RELION Euler angles); the in-plane "
            "angle psi is not shown.")


def _add_viewing_figure(sec: Section, rotations: np.ndarray, what: str) -> None:
    counts = viewing_direction_counts(rotations)
    sec.paragraphs.append(viewing_summary(counts))
    sec.figures.append((f"Viewing directions of the {what} (Mollweide projection; colour: density per steradian "
                        "relative to uniform directions)", _plot_viewing_counts(counts)))


def search_history(pose_state: Mapping) -> list[dict]:
    """The per-epoch records of an ab initio pose search (``state["poses"]`` of a checkpoint of ``cryoscape
    abinit``): its ``history``, plus the epoch whose counts were not yet closed when the checkpoint was written
    (the last epoch of a run that ended while searching; its ``radius_px`` is ``None``).
    """
    history = [dict(h) for h in pose_state.get("history", [])]
    counts = pose_state.get("epoch_counts") or {}
    open_epoch = int(pose_state.get("counted_epoch", 0) or 0)
    searched = int(counts.get("searched", 0))
    if searched and open_epoch and all(int(h["epoch"]) != open_epoch for h in history):
        history.append({"epoch": open_epoch, "searched": searched, "moved_fraction": counts["moved"] / searched,
                        "radius_px": None, "error": counts["error"] / searched})
    return history


def _epoch_range(first: int, last: int) -> str:
    return f"epoch {first}" if last <= first else f"epochs {first}-{last}"


def abinit_pose_section(arrays: Mapping, pose_state: Mapping | None = None, epoch: int | None = None) -> Section:
    """Poses estimated ab initio (``cryoscape abinit``), the learned-pose ``arrays`` of
    :func:`cryoscape.models.poses.load_learned_poses`: the distribution of their viewing directions, and from
    ``pose_state`` (``state["poses"]`` of the epoch's checkpoint; ``None``: not available) when the global search
    switched to local refinement and how many poses moved in each search epoch. The poses are absolute (searched
    from random starts), so there is no change from a consensus to show.
    """
    rotations = np.asarray(arrays["rotations"])
    at = f" (epoch {epoch})" if epoch is not None else ""
    sec = Section("Ab initio poses", paragraphs=[
        f"{len(rotations)} particles, their poses searched from random starting poses{at}. The poses are in the "
        "frame of the reconstructed map, whose orientation and hand are arbitrary (compare the map with a "
        "reference with `cryoscape fsc --align`)."])
    if pose_state is None:
        sec.paragraphs.append("The search history is not shown: there is no checkpoint of this epoch.")
    else:
        local_from = int(pose_state.get("local_from", 0) or 0)
        if local_from > 1:
            sec.paragraphs.append(f"Global pose search in {_epoch_range(1, local_from - 1)}; local refinement (one "
                                  f"Gauss-Newton step of each pose per epoch) from epoch {local_from}.")
        else:
            sec.paragraphs.append(f"The run was still in the global pose search{at}: it had not switched to local "
                                  "refinement.")
        history = search_history(pose_state)
        last_far = next((h.get("moved_far_fraction") for h in reversed(history)
                         if h.get("moved_far_fraction") is not None), None)
        if local_from > 1 and last_far is not None and float(last_far) > NOT_CONVERGED_FAR_FRACTION:
            sec.paragraphs.append(
                f"The search has probably not converged: in its last complete epoch {100.0 * float(last_far):.0f} "
                "% of the poses still moved by more than four times the finest grid spacing (15 degrees with the "
                "default grids). The map and the poses may be wrong; see the log's advice.")
        rows = [[int(h["epoch"]), int(h["searched"]), _num(100.0 * float(h["moved_fraction"]), ".1f"),
                 _num(None if h.get("radius_px") is None else float(h["radius_px"]), ".1f"),
                 _num(float(h["error"]), ".4g")] for h in history]
        header = ["epoch", "particles searched", "moved (%)", "lattice radius (px)", "mean search error"]
        caption = ("Global search per epoch: the share of the searched particles whose pose moved by more "
                   "than twice the finest search-grid spacing (7.5 degrees with the default grids; in the "
                   "first search epoch, from the random starts), the radius of the compared Fourier pixels, "
                   "and the mean squared error per compared pixel of the best poses.")
        if any("class_sizes" in h for h in history):  # abinit --classes
            header += ["class sizes", "changed class (%)"]
            caption += (" With --classes: the particles in each class map at the end of the epoch, and the share "
                        "whose class changed in it.")
            for row, h in zip(rows, history, strict=True):
                sizes = h.get("class_sizes")
                row += [" / ".join(map(str, sizes)) if sizes else "n/a",
                        _num(None if sizes is None else 100.0 * float(h["class_changed_fraction"]), ".1f")]
        if rows:
            sec.tables.append(Table(header, rows, caption=caption))
    _add_viewing_figure(sec, rotations, "estimated poses")
    return sec


def _num(x, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


MAX_FSC_CURVES = 12  # curves drawn in the FSC figure (all states are in the table)


def evaluation_section(result: Mapping) -> Section:
    """Evaluation against ground truth (the dict of :func:`cryoscape.analysis.evaluate.evaluate_run`), stated with
    its epoch, its k and its label set.
    """
    from cryoscape.analysis.evaluate import clustering_description

    sec = Section("Evaluation against ground truth")
    rows = []
    if result.get("epoch") is not None:
        sec.paragraphs.append(f"Latents of epoch {result['epoch']}, {result.get('n_particles')} particles.")
    if "clustering" in result:
        c, e = result["clustering"], result["entropy"]
        label_set = c.get("label_set", "state")
        n_labels = c.get("n_labels", c.get("n_states"))
        source = ("the clusters of the k-means section" if c.get("kmeans_reused") else
                  f"k-means computed for this evaluation (seed {c.get('seed', 0)})")
        sec.paragraphs.append(f"{clustering_description(c)}: {source}, scored against the simulation's "
                              f"{label_set!r} labels of every particle.")
        k = c.get("k", len(c["clusters"]))
        rows += [[f"adjusted Rand index (k = {k} clusters vs {n_labels} labels)", _num(c["ari"])],
                 ["matched accuracy (one cluster per label, Hungarian matching)", _num(c["accuracy"])]]
        if "majority" in c:
            m = c["majority"]
            rows += [["sorted by majority label (each cluster takes the label most of its particles hold)",
                      f"{100 * m['accuracy']:.1f}%" if m.get("accuracy") is not None else "n/a"],
                     ["adjusted Rand index of that majority labelling", _num(m["ari"])]]
        rows.append(["mean cluster entropy", f"{_num(e['mean'])} (uniform mix {_num(e['uniform'])})"])
        which = "the k-means section's clusters" if c.get("kmeans_reused") else "k-means clusters of this evaluation"
        sec.figures.append((f"Confusion matrix (rows: the true {label_set!r} labels, columns: the k = {k} {which})",
                            plots.plot_confusion_matrix(c["confusion"], c["states"], c["clusters"],
                                                        ylabel=f"true {label_set}",
                                                        xlabel=f"k-means cluster (k = {k})")))
    if "continuous" in result:
        cont = result["continuous"]
        rows.append(["|Spearman rho|, PC1 vs true coordinate", _num(cont["abs_spearman_pc1"])])
        w = cont.get("within_groups")
        if w and w.get("mean") is not None:
            rows.append(["|Spearman rho| within each majority-label group (its own PC1 vs true coordinate)",
                         _num(w["mean"])])
    if rows:
        sec.tables.append(Table(["metric", "value"], rows))
    cryobench_tables(sec, result.get("cryobench"))
    if "maps" in result:
        m = result["maps"]
        sec.tables.append(Table(
            ["state", "FSC AUC", "resolution at 0.5 (Å)", "resolution at 0.143 (Å)", "correlation"],
            [[s, _num(v["fsc_auc"]), _num(v["resolution_0.5_angstrom"], ".2f"),
              _num(v["resolution_0.143_angstrom"], ".2f"), _num(v["correlation"])] for s, v in m["states"].items()],
            caption="Volumes at each true state's mean latent against its ground-truth map"))
        states = list(m["states"].items())
        shown = states
        if len(states) > MAX_FSC_CURVES:  # evenly spaced states, first and last included
            picks = np.unique(np.round(np.linspace(0, len(states) - 1, MAX_FSC_CURVES)).astype(int))
            shown = [states[i] for i in picks]
        curves = {f"state {s}": (np.arange(len(v["fsc"])) / (2 * len(v["fsc"])), np.asarray(v["fsc"]))
                  for s, v in shown}
        note = "" if len(shown) == len(states) else \
            f" ({len(shown)} of {len(states)} states shown, evenly spaced; all are in the table)"
        sec.figures.append(("FSC against the ground-truth maps" + note,
                            plots.plot_fsc_curves(curves, m["pixel_size_angstrom"],
                                                  legend_title=f"{len(shown)} of {len(states)} states"
                                                  if note else None)))
    return sec


def cryobench_tables(sec: Section, cb: Mapping | None) -> None:
    """Add the CryoBench metrics of an evaluation (AU-FSC, neighbourhood similarity) and what was not computed."""
    if not cb:
        return
    rows = []
    for key, what in (("per_image_au_fsc", "per-image AU-FSC"),
                      ("per_conformation_au_fsc", "per-conformation AU-FSC")):
        m = cb.get(key)
        if m:
            n = f"{m['n_images']} sampled images (seed {m['seed']})" if "n_images" in m else f"{m['n_states']} states"
            rows.append([what, f"{_num(m['mean'])} ± {_num(m['std'])} (median {_num(m['median'])})",
                         f"{n}; mask: {m['mask']}"])
    nb = cb.get("neighborhood_similarity") or {}
    for part, what in (("state", "share the true state"),
                       ("coordinate", f"within {_num(nb.get('coordinate_distance'), '.3g')} on the true coordinate")):
        for k, v in (nb.get(part) or {}).items():
            rows.append([f"neighbourhood similarity, k = {k} ({what})", _num(v),
                         f"random neighbours: {_num(nb.get(part + '_chance'))}"])
    for key, why in (cb.get("not_computed") or {}).items():
        rows.append([key.replace("_", " "), "not computed", why])
    if rows:
        sec.tables.append(Table(["CryoBench metric", "value", "notes"], rows,
                                caption="AU-FSC: area under the masked FSC on a frequency axis ending at Nyquist = "
                                        "0.5 (a perfect map scores 0.5); see docs/metrics.md"))


# --------------------------------------------------------------------------------------------------------------
# Rendering

_STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #bbb; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #eee; } caption { font-style: italic; text-align: left; padding: 0.3em 0; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; }
figure img { max-width: 100%; } figcaption { font-size: 0.85em; color: #555; }
nav ul { columns: 2; }
"""


def _png_bytes(fig: FigureLike) -> bytes:
    if isinstance(fig, Figure):
        return plots.figure_to_png(fig)
    if isinstance(fig, bytes):
        return fig
    path = Path(fig)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read figure ({exc.strerror or exc})", path) from None


def _anchor(i: int) -> str:
    return f"section-{i + 1}"


def render_html(sections: Sequence[Section], title: str = "cryoscape analysis", image_src=None) -> str:
    """The HTML5 text of a report. ``image_src(section_index, figure_index, png_bytes) -> str`` gives each
    ``<img>`` source (default: a base64 data URI).
    """
    esc = html.escape
    if image_src is None:
        def image_src(_i, _j, data):
            return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{esc(title)}</title>", f"<style>{_STYLE}</style>", "</head>", "<body>",
           f"<h1>{esc(title)}</h1>", "<nav><ul>"]
    out += [f'<li><a href="#{_anchor(i)}">{esc(s.title)}</a></li>' for i, s in enumerate(sections)]
    out.append("</ul></nav>")
    for i, sec in enumerate(sections):
        out.append(f'<section id="{_anchor(i)}">')
        out.append(f"<h2>{esc(sec.title)}</h2>")
        out += [f"<p>{esc(p)}</p>" for p in sec.paragraphs]
        for table in sec.tables:
            out.append("<table>")
            if table.caption:
                out.append(f"<caption>{esc(table.caption)}</caption>")
            out.append("<thead><tr>" + "".join(f"<th>{esc(str(h))}</th>" for h in table.header) + "</tr></thead>")
            out.append("<tbody>")
            out += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in table.rows]
            out.append("</tbody></table>")
        for j, (caption, fig) in enumerate(sec.figures):
            src = image_src(i, j, _png_bytes(fig))
            out.append(f'<figure><img src="{esc(src)}" alt="{esc(caption)}">'
                       f"<figcaption>{esc(caption)}</figcaption></figure>")
        out.append("</section>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def build_report(out_dir: str | Path, sections: Sequence[Section] = (), *, title: str = "cryoscape analysis",
                 config=None, metrics=None, z: np.ndarray | None = None, pca=None, umap: np.ndarray | None = None,
                 kmeans=None, center_volumes: Sequence[np.ndarray] | np.ndarray | None = None,
                 traversals: Mapping[str, Sequence[np.ndarray] | np.ndarray] | None = None,
                 evaluation: Mapping | None = None, embed: bool = True, filename: str = "index.html",
                 epoch: int | None = None, epoch_reason: str | None = None,
                 selection_metric: str = "val_loss") -> Path:
    """Write ``out_dir/index.html`` and return its path.

    Standard sections are built, in this order, from the arguments given: ``config`` (mapping, dataclass or
    ``config.yaml`` path), ``metrics`` (``metrics.csv`` path or DataFrame), ``z`` ``(N, zdim)`` with optional
    ``pca`` (:class:`~cryoscape.analysis.latent.PCAResult`) and ``umap`` ``(N, 2)``, ``kmeans``
    (:class:`~cryoscape.analysis.latent.KMeansResult`) with optional ``center_volumes`` ``(k, D, D, D)``,
    ``traversals`` ``{name: (n, D, D, D)}`` and ``evaluation`` (the dict of ``evaluate_run``); then
    ``sections``. With ``embed=False`` the PNGs are written to ``out_dir/figures/`` and linked relatively.
    ``epoch`` and ``epoch_reason`` (see :func:`epoch_choice`) say which epoch is analysed and why; the validation
    curve ``selection_metric`` is read for over-fitting (:func:`validation_summary`).
    """
    out_dir = Path(out_dir)
    std: list[Section] = []
    if config is not None:
        std.append(config_section(config))
    if metrics is not None:
        std.append(loss_section(metrics, epoch=epoch, epoch_reason=epoch_reason, metric=selection_metric))
    labels = None if kmeans is None else kmeans.labels
    if z is not None:
        if pca is None and np.asarray(z).ndim == 2 and np.asarray(z).shape[1] > 1:
            from cryoscape.analysis.latent import run_pca

            pca = run_pca(z)
        std.append(latent_section(z, pca=pca, umap=umap, labels=labels))
    if kmeans is not None:
        emb = pca.projected[:, :2] if pca is not None and pca.projected.shape[1] >= 2 else None
        std.append(kmeans_section(kmeans.labels, center_volumes, kmeans.center_indices, emb))
    if traversals:
        std.append(traversal_section(traversals))
    if evaluation is not None:
        std.append(evaluation_section(evaluation))
    all_sections = std + list(sections)
    fig_dir = out_dir / "figures"

    def write_figure(i, j, data):
        name = f"section{i + 1:02d}_figure{j + 1:02d}.png"
        fig_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(fig_dir / name) as tmp:
            tmp.write_bytes(data)
        return f"figures/{name}"

    text = render_html(all_sections, title=title, image_src=None if embed else write_figure)
    path = out_dir / filename
    atomic_write_text(path, text)
    return path
