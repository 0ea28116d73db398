"""Plots return figures and the HTML report is a valid, self-contained HTML5 file with one <img> per plot."""

from __future__ import annotations

import base64
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from cryoscape.analysis import plots
from cryoscape.analysis.latent import kmeans_on_data, run_pca
from cryoscape.analysis.report import Section, Table, build_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input", "source", "col", "area", "base", "wbr", "embed", "track"}


class StrictHTML(HTMLParser):
    """Collects <img> sources, checks that every non-void element is closed in order."""

    def __init__(self):
        super().__init__()
        self.stack, self.images, self.errors, self.decl, self.tags = [], [], [], None, []

    def handle_decl(self, decl):
        self.decl = decl

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            a = dict(attrs)
            self.images.append(a.get("src"))
            if not a.get("alt"):
                self.errors.append("img without alt")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}>, open: {self.stack[-3:]}")
        else:
            self.stack.pop()


def parse(path):
    p = StrictHTML()
    p.feed(path.read_text(encoding="utf-8"))
    p.close()
    return p


def fake_metrics():
    e = np.arange(1, 6)
    return pd.DataFrame({"epoch": e, "train_loss": 1.0 / e, "train_recon": 0.9 / e, "train_kl": 0.1 / e,
                         "val_loss": 1.1 / e, "val_recon": 1.0 / e, "val_kl": 0.1 / e, "seconds": 1.0})


def blob_volume(shift=0.0, D=16):
    i = np.arange(D) - D // 2
    zz, yy, xx = np.meshgrid(i, i, i, indexing="ij")
    return np.exp(-((xx - shift) ** 2 + yy ** 2 + zz ** 2) / 6.0).astype(np.float32)


def test_plot_functions_return_figures(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(100, 2))
    labels = rng.integers(0, 3, 100)
    figs = {
        "scatter": plots.plot_scatter(emb, labels, centers=emb[:3]),
        "hexbin": plots.plot_hexbin(emb),
        "variance": plots.plot_explained_variance([0.6, 0.3, 0.1]),
        "hist": plots.plot_latent_histogram(emb[:, 0]),
        "loss": plots.plot_loss_curves(fake_metrics()),
        "slices": plots.plot_volume_slices(blob_volume()),
        "gallery": plots.plot_volume_gallery([blob_volume(s) for s in range(-3, 4)], ncols=4),
        "fsc": plots.plot_fsc_curves({"a": (np.arange(8) / 16, np.linspace(1, 0, 8))}, 2.0),
        "path": plots.plot_path(emb, emb[:5], anchors_xy=emb[[0, 4]]),
        "confusion": plots.plot_confusion_matrix([[5, 1], [2, 7]], ["s0", "s1"], ["c0", "c1"]),
    }
    n_axes = {"slices": 4, "gallery": 7, "loss": 2, "hexbin": 2, "confusion": 2}
    for name, fig in figs.items():
        assert isinstance(fig, Figure), name
        assert len(fig.axes) == n_axes.get(name, 1), name
    # the loss panel holds train and validation curves with the CSV values
    lines = {ln.get_label(): ln.get_ydata() for ln in figs["loss"].axes[0].lines}
    np.testing.assert_allclose(lines["val loss"], 1.1 / np.arange(1, 6))
    # the slices are the central sections and the z projection
    vol = blob_volume(2.0)
    shown = [ax.images[0].get_array() for ax in plots.plot_volume_slices(vol).axes]
    np.testing.assert_allclose(shown[0], vol[8])
    np.testing.assert_allclose(shown[3], vol.sum(axis=0), rtol=1e-6)
    out = plots.save_figure(figs["scatter"], tmp_path / "a" / "scatter.png")
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert plots.figure_to_png(figs["fsc"])[:8] == PNG_MAGIC


def test_loss_curves_reads_metrics_csv(tmp_path):
    path = tmp_path / "metrics.csv"
    fake_metrics().drop(columns=["train_recon", "train_kl", "val_recon", "val_kl"]).to_csv(path, index=False)
    fig = plots.plot_loss_curves(path)
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 2
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    from cryoscape.errors import InputError

    with pytest.raises(InputError, match="epoch"):
        plots.plot_loss_curves(tmp_path / "bad.csv")


def test_report_is_valid_self_contained_html(tmp_path):
    rng = np.random.default_rng(1)
    z = np.concatenate([rng.normal(c, 0.3, size=(40, 3)) for c in ([0, 0, 0], [4, 0, 0], [0, 4, 0])])
    pca = run_pca(z)
    km = kmeans_on_data(z, 3)
    config = {"model": {"family": "cryodrgn", "zdim": 3}, "data": {"particles": "p<1>&.star"}}
    evaluation = {"clustering": {"ari": 1.0, "accuracy": 1.0, "confusion": [[40, 0], [0, 80]], "states": [0, 1],
                                 "clusters": [0, 1]},
                  "entropy": {"mean": 0.0, "uniform": 0.301},
                  "continuous": {"abs_spearman_pc1": 0.9},
                  "maps": {"pixel_size_angstrom": 2.0,
                           "states": {"0": {"fsc_auc": 0.9, "resolution_0.5_angstrom": 6.0,
                                            "resolution_0.143_angstrom": None, "correlation": 0.99,
                                            "fsc": [1.0, 0.9, 0.5, 0.1]}}}}
    extra = Section("Notes", paragraphs=["custom <b>text</b>"], tables=[Table(["a"], [[1]])],
                    figures=[("extra", plots.plot_hexbin(pca.projected))])
    path = build_report(tmp_path / "rep", [extra], config=config, metrics=fake_metrics(), z=z, pca=pca,
                        umap=pca.projected[:, :2], kmeans=km, center_volumes=[blob_volume(s) for s in (-2, 0, 2)],
                        traversals={"PC1": [blob_volume(s) for s in range(-3, 3)]}, evaluation=evaluation)
    assert path == tmp_path / "rep" / "index.html"
    text = path.read_text(encoding="utf-8")
    p = parse(path)
    assert p.decl.lower() == "doctype html"
    assert not p.errors and not p.stack
    assert p.tags[:3] == ["html", "head", "meta"]
    # one <img> per plot: loss 1, latent 5 (PCA scatter, hexbin, variance, UMAP scatter, hexbin),
    # k-means 2 (scatter, centre thumbnails), trajectories 1, evaluation 2 (confusion, FSC), extra 1
    assert len(p.images) == 12
    for src in p.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG_MAGIC
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert "p&lt;1&gt;&amp;.star" in text and "custom &lt;b&gt;text&lt;/b&gt;" in text  # escaped
    for title in ("Run summary", "Training and validation loss", "Latent space", "k-means clustering (k = 3)",
                  "Trajectories", "Evaluation against ground truth", "Notes"):
        assert f">{title}</h2>" in text
    assert "<td>40</td>" in text  # cluster sizes


def test_report_with_linked_figures(tmp_path):
    sec = Section("Only", figures=[("one", plots.plot_explained_variance([1.0])), ("two", b"\x89PNG\r\n\x1a\nfake")])
    path = build_report(tmp_path, [sec], embed=False)
    p = parse(path)
    assert p.images == ["figures/section01_figure01.png", "figures/section01_figure02.png"]
    assert (tmp_path / p.images[0]).read_bytes()[:8] == PNG_MAGIC
