"""Figures for analysis results. Every function takes computed results and returns a matplotlib ``Figure``;
:func:`save_figure` writes one atomically. Figures are built with ``matplotlib.figure.Figure`` (Agg), never
through pyplot, so nothing depends on a display or on global figure state.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cryoscape.errors import InputError
from cryoscape.utils.atomic import atomic_path

__all__ = [
    "save_figure",
    "figure_to_png",
    "plot_scatter",
    "plot_hexbin",
    "plot_explained_variance",
    "plot_latent_histogram",
    "read_metrics",
    "plot_loss_curves",
    "plot_volume_slices",
    "plot_volume_gallery",
    "plot_fsc_curves",
    "plot_path",
    "plot_confusion_matrix",
]

def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix) atomically and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    return path


def figure_to_png(fig: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of ``fig`` (for embedding in HTML)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _embedding(emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[1] < 2:
        raise InputError(f"an embedding to plot must be (N, 2), got shape {emb.shape}")
    return emb[:, :2]


def _point_size(n: int) -> float:
    return float(np.clip(2000.0 / max(n, 1), 0.5, 20.0))


def plot_scatter(emb: np.ndarray, labels: np.ndarray | None = None, centers: np.ndarray | None = None,
                 axis_labels: tuple[str, str] = ("PC1", "PC2"), title: str = "") -> Figure:
    """Scatter of a 2-D embedding ``(N, 2)``, coloured by integer ``labels`` ``(N,)`` if given.

    ``centers`` ``(k, 2)`` (embedded cluster centres) are drawn as numbered markers.
    """
    emb = _embedding(emb)
    fig = Figure(figsize=(5, 4.5))
    ax = fig.add_subplot()
    s = _point_size(len(emb))
    if labels is None:
        ax.scatter(emb[:, 0], emb[:, 1], s=s, c="0.3", alpha=0.5, linewidths=0, rasterized=True)
    else:
        labels = np.asarray(labels).ravel()
        n_colors = 10 if labels.max(initial=0) < 10 else 20  # tab10 is clearer; tab20 beyond 10 clusters
        ax.scatter(emb[:, 0], emb[:, 1], s=s, c=labels % n_colors, cmap=f"tab{n_colors}", vmin=0,
                   vmax=n_colors - 1, alpha=0.7, linewidths=0, rasterized=True)
    if centers is not None:
        centers = _embedding(centers)
        ax.scatter(centers[:, 0], centers[:, 1], s=30, c="k", marker="x")
        for i, (x, y) in enumerate(centers):
            ax.annotate(str(i), (x, y), xytext=(3, 3), textcoords="offset points", fontsize=8)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(title)
    return fig


def plot_hexbin(emb: np.ndarray, axis_labels: tuple[str, str] = ("PC1", "PC2"), title: str = "",
                gridsize: int = 40) -> Figure:
    """Hexagonal-bin density of a 2-D embedding ``(N, 2)`` (log colour scale of counts)."""
    emb = _embedding(emb)
    fig = Figure(figsize=(5.4, 4.5))
    ax = fig.add_subplot()
    hb = ax.hexbin(emb[:, 0], emb[:, 1], gridsize=gridsize, bins="log", cmap="viridis", mincnt=1)
    fig.colorbar(hb, ax=ax, label="particles (log)")
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(title)
    return fig


def plot_explained_variance(ratio: np.ndarray) -> Figure:
    """Bar chart of the explained variance ratio ``(n_components,)`` per principal component."""
    ratio = np.asarray(ratio, dtype=np.float64).ravel()
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    x = np.arange(1, ratio.size + 1)
    ax.bar(x, ratio, color="C0")
    ax.plot(x, np.cumsum(ratio), "k.-", label="cumulative")
    ax.set_xlabel("principal component")
    ax.set_ylabel("explained variance ratio")
    ax.set_xticks(x)
    ax.set_ylim(0, 1.05)
    ax.legend(frameon=False)
    return fig


def plot_latent_histogram(z: np.ndarray, bins: int = 50, xlabel: str = "z") -> Figure:
    """Histogram of a 1-D latent ``(N,)`` (or ``(N, 1)``)."""
    z = np.asarray(z, dtype=np.float64).ravel()
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    ax.hist(z, bins=bins, color="C0")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("particles")
    return fig


def read_metrics(path: str | Path):
    """``RUN/metrics.csv`` as a pandas DataFrame (one row per epoch; needs an ``epoch`` column)."""
    import pandas as pd

    path = Path(path)
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"not a readable CSV file ({exc})", path) from None
    if "epoch" not in df.columns:
        raise InputError(f"has no 'epoch' column (columns: {list(df.columns)})", path)
    return df


def plot_loss_curves(metrics, mark_epoch: int | None = None) -> Figure:
    """Training and validation loss per epoch from ``metrics.csv`` (path or DataFrame).

    Left: ``train_loss`` and ``val_loss``. Right (when present): the other ``train_*``/``val_*`` terms
    (e.g. reconstruction and KL), each on its own scale, dashed for validation. ``mark_epoch`` (e.g. the epoch
    analysed) is drawn as a dotted vertical line on both.
    """
    df = read_metrics(metrics) if isinstance(metrics, (str, Path)) else metrics
    if "epoch" not in df.columns:
        raise InputError(f"metrics have no 'epoch' column (columns: {list(df.columns)})")
    totals = [c for c in ("train_loss", "val_loss") if c in df.columns]
    if not totals:
        raise InputError(f"metrics have no train_loss or val_loss column (columns: {list(df.columns)})")
    terms = sorted({c.split("_", 1)[1] for c in df.columns
                    if c.startswith(("train_", "val_")) and not c.endswith("_loss")})
    fig = Figure(figsize=(10 if terms else 5, 3.8))
    ax = fig.add_subplot(1, 2 if terms else 1, 1)
    for c, style in zip(totals, ("o-", "s--"), strict=False):
        ax.plot(df["epoch"], df[c], style, ms=3, label=c.replace("_", " "))
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss")
    if mark_epoch is not None:
        ax.axvline(mark_epoch, color="0.4", ls=":", lw=1, label=f"epoch {mark_epoch} (analysed)")
    ax.legend(frameon=False)
    if terms:
        ax2 = fig.add_subplot(1, 2, 2)
        for i, term in enumerate(terms):
            for prefix, style in (("train", "-"), ("val", "--")):
                col = f"{prefix}_{term}"
                if col in df.columns:
                    ax2.plot(df["epoch"], df[col], style, color=f"C{i}", label=col.replace("_", " "))
        ax2.set_xlabel("epoch")
        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.set_yscale("symlog", linthresh=1e-6)
        ax2.set_ylabel("loss term")
        if mark_epoch is not None:
            ax2.axvline(mark_epoch, color="0.4", ls=":", lw=1)
        ax2.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def _check_volume(vol) -> np.ndarray:
    vol = np.asarray(vol, dtype=np.float32)
    if vol.ndim != 3:
        raise InputError(f"a volume to plot must be (D, D, D), got shape {vol.shape}")
    return vol


def _views(vol: np.ndarray) -> list[tuple[str, np.ndarray]]:
    c = [n // 2 for n in vol.shape]
    return [("z section (xy)", vol[c[0]]), ("y section (xz)", vol[:, c[1], :]),
            ("x section (yz)", vol[:, :, c[2]]), ("projection along z", vol.sum(axis=0))]


def plot_volume_slices(vol: np.ndarray, title: str = "") -> Figure:
    """Three orthogonal central sections (index ``D // 2``) and the projection along z of a volume ``(D, D, D)``."""
    vol = _check_volume(vol)
    fig = Figure(figsize=(9, 2.6))
    for i, (name, img) in enumerate(_views(vol)):
        ax = fig.add_subplot(1, 4, i + 1)
        ax.imshow(img, cmap="gray", origin="lower")
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_volume_gallery(vols: Sequence[np.ndarray] | np.ndarray, titles: Sequence[str] | None = None,
                        view: str = "projection", ncols: int = 5) -> Figure:
    """Thumbnails of several volumes ``(n, D, D, D)`` in a grid: their z projection or central xy section.

    ``view`` is ``"projection"`` or ``"section"``.
    """
    vols = [_check_volume(v) for v in vols]
    if not vols:
        raise InputError("no volumes to show")
    if view not in ("projection", "section"):
        raise InputError(f"view must be 'projection' or 'section', got {view!r}")
    titles = list(titles) if titles is not None else [str(i) for i in range(len(vols))]
    ncols = max(1, min(int(ncols), len(vols)))
    nrows = -(-len(vols) // ncols)
    fig = Figure(figsize=(1.8 * ncols, 1.9 * nrows))
    for i, (vol, t) in enumerate(zip(vols, titles, strict=False)):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        img = vol.sum(axis=0) if view == "projection" else vol[vol.shape[0] // 2]
        ax.imshow(img, cmap="gray", origin="lower")
        ax.set_title(t, fontsize=8)
        ax.set_axis_off()
    return fig


def plot_fsc_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], pixel_size_angstrom: float = 1.0,
                    thresholds: Sequence[float] = (0.5, 0.143), legend_title: str | None = None) -> Figure:
    """FSC curves ``{name: (freqs cycles/pixel, curve)}`` against spatial frequency (1/A), with threshold lines;
    every curve is named in the legend (``legend_title`` e.g. ``"12 of 50 states"`` when only some are drawn).
    """
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.add_subplot()
    for name, (freqs, curve) in curves.items():
        ax.plot(np.asarray(freqs) / pixel_size_angstrom, curve, label=name)
    for t in thresholds:
        ax.axhline(t, color="0.5", lw=0.8, ls=":")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    if curves:
        ax.legend(frameon=False, fontsize=8, title=legend_title, title_fontsize=8,
                  ncols=1 if len(curves) <= 12 else 2)
    return fig


def plot_path(emb: np.ndarray, path_xy: np.ndarray, anchors_xy: np.ndarray | None = None,
              axis_labels: tuple[str, str] = ("PC1", "PC2"), title: str = "") -> Figure:
    """A trajectory ``path_xy`` ``(M, 2)`` drawn over the scatter of an embedding ``(N, 2)``; anchors ``(a, 2)``."""
    fig = plot_scatter(emb, axis_labels=axis_labels, title=title)
    ax = fig.axes[0]
    path_xy = _embedding(path_xy)
    ax.plot(path_xy[:, 0], path_xy[:, 1], "-", color="C3", lw=1.5)
    ax.scatter(path_xy[:, 0], path_xy[:, 1], s=10, c="C3", zorder=3)
    if anchors_xy is not None:
        anchors_xy = _embedding(anchors_xy)
        ax.scatter(anchors_xy[:, 0], anchors_xy[:, 1], s=60, c="C1", marker="*", edgecolors="k", zorder=4)
    return fig


def plot_confusion_matrix(confusion: np.ndarray, row_labels: Sequence | None = None,
                          col_labels: Sequence | None = None, xlabel: str = "cluster",
                          ylabel: str = "true state") -> Figure:
    """Confusion matrix ``(n_rows, n_cols)`` as an image, each row normalised to fractions, with counts written in."""
    cm = np.asarray(confusion, dtype=np.float64)
    if cm.ndim != 2:
        raise InputError(f"a confusion matrix must be 2-D, got shape {cm.shape}")
    frac = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(1.2 + 0.45 * cm.shape[1], 1.0 + 0.4 * cm.shape[0]))
    ax = fig.add_subplot()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    fig.colorbar(im, ax=ax, label="fraction of row")
    if cm.size <= 400:
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=7,
                    color="w" if frac[i, j] > 0.6 else "k")
    ax.set_xticks(range(cm.shape[1]), [str(c) for c in (col_labels if col_labels is not None
                                                          else range(cm.shape[1]))])
    ax.set_yticks(range(cm.shape[0]), [str(r) for r in (row_labels if row_labels is not None
                                                          else range(cm.shape[0]))])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig
