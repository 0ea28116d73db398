"""The report tells the truth: its evaluation states k and label set, the validation curve is read, the analysed
epoch is explained, the run summary shows the options of the family that ran, legends name what they show."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from cryoscape.analysis.evaluate import evaluate_latents, majority_label_scores, read_labels
from cryoscape.analysis.report import (
    config_section,
    epoch_choice,
    evaluation_section,
    loss_section,
    render_html,
    validation_summary,
)
from cryoscape.config import ModelConfig, RunConfig, save_config
from cryoscape.errors import InputError


def _summary_keys(config) -> set[str]:
    return {row[0] for row in config_section(config).tables[0].rows}


def test_run_summary_shows_only_the_family_options():
    cryo = _summary_keys(dataclasses.asdict(RunConfig()))
    assert {"model.zdim", "model.enc_dim", "train.lr", "model.freq_march"} <= cryo
    assert not {"model.channel_scale", "model.templateres", "model.lamb", "model.knn", "model.lr_decay"} & cryo
    assert not {"model.pooling", "model.ntilts", "model.kl_norm", "model.tilt_format"} & cryo
    opus = _summary_keys(dataclasses.asdict(RunConfig(model=ModelConfig(family="opus-dsd", channel_scale=0.25))))
    assert {"model.channel_scale", "model.lamb", "model.lr_decay", "model.zdim"} <= opus
    assert not {"model.enc_dim", "model.pe_type", "model.freq_march", "model.pooling"} & opus
    tomo = _summary_keys(dataclasses.asdict(RunConfig(model=ModelConfig(family="tomodrgn"))))
    assert {"model.pooling", "model.tilt_format", "model.enc_dim"} <= tomo
    assert not {"model.channel_scale", "model.lamb", "model.freq_march"} & tomo
    # the shared sections hold no family's options
    assert not {k for k in cryo | opus | tomo if k.startswith(("train.", "data.")) and k.split(".")[1] in
                {"freq_march", "march_start", "lamb", "knn", "lr_decay", "tilt_format"}}
    # a mapping without a family is shown whole
    assert _summary_keys({"a": {"b": 1}}) == {"a.b"}


def test_run_summary_of_an_older_config_file_shows_its_family_section():
    """A schema-2 config.yaml (committed, written before the family options moved to ``model``): the summary
    shows the file's values in the family's section, not the shared sections' old copies of every family's."""
    from pathlib import Path

    path = Path(__file__).parent / "data" / "config_v2_opus_dsd.yaml"
    rows = dict(config_section(path).tables[0].rows)
    assert (rows["model.lamb"], rows["model.knn"], rows["model.lr_decay"]) == ("0.3", "8", "0.9")
    assert not {"train.lamb", "train.freq_march", "data.tilt_format", "model.enc_dim"} & set(rows)
    assert rows["schema_version"] == "2" and rows["model.family"] == "opus-dsd"


def _metrics(val):
    n = len(val)
    return pd.DataFrame({"epoch": np.arange(1, n + 1), "train_loss": np.linspace(1.0, 0.5, n), "val_loss": val})


def test_validation_curve_is_read():
    over = validation_summary(_metrics([1.0, 0.8, 0.7, 0.75, 0.8]))
    assert over["verdict"] == "over-fits" and over["best_epoch"] == 3 and over["last_epoch"] == 5
    assert over["rise"] == pytest.approx(0.8 / 0.7 - 1) and "over-fits after epoch 3" in over["text"]
    down = validation_summary(_metrics([1.0, 0.8, 0.7]))
    assert down["verdict"] == "still decreasing" and down["best_epoch"] == 3
    flat = validation_summary(_metrics([1.0, 0.7, 0.703]))
    assert flat["verdict"] == "levelled off" and flat["best_epoch"] == 2
    assert validation_summary(_metrics([1.0, 0.7]).drop(columns="val_loss")) is None
    # the section says which epoch is analysed and why, and warns when it comes after the minimum
    sec = loss_section(_metrics([1.0, 0.8, 0.7, 0.75, 0.8]), epoch=5, epoch_reason="chosen with --epoch")
    text = " ".join(sec.paragraphs)
    assert "Analysed: epoch 5 (chosen with --epoch)." in text and "over-fitted" in text
    sec = loss_section(_metrics([1.0, 0.8]).drop(columns="val_loss"), epoch=2, epoch_reason="last; no validation set")
    assert "Analysed: epoch 2 (last; no validation set)." in sec.paragraphs[0]
    assert "No validation set" in sec.paragraphs[1]


def test_epoch_choice_names_the_rule(tmp_path):
    save_config(RunConfig(), tmp_path / "config.yaml")
    _metrics([1.0, 0.8, 0.9]).to_csv(tmp_path / "metrics.csv", index=False)
    (tmp_path / "best_epoch").write_text("2\n")
    assert epoch_choice(tmp_path, None, 2) == "lowest validation loss"
    assert epoch_choice(tmp_path, 3, 3) == "chosen with --epoch"
    _metrics([1.0, 0.8, 0.81]).to_csv(tmp_path / "metrics.csv", index=False)  # levelled off: the engine keeps 3
    (tmp_path / "best_epoch").write_text("3\n")
    assert epoch_choice(tmp_path, None, 3) == "validation loss within 2% of its lowest, at epoch 2"
    (tmp_path / "best_epoch").unlink()
    assert epoch_choice(tmp_path, None, 3) == "last"
    _metrics([1.0, 0.8, 0.9]).drop(columns="val_loss").to_csv(tmp_path / "metrics.csv", index=False)
    assert epoch_choice(tmp_path, None, 3) == "last; no validation set"
    save_config(RunConfig(model=ModelConfig(family="opus-dsd")), tmp_path / "config.yaml")
    (tmp_path / "best_epoch").write_text("3\n")
    assert epoch_choice(tmp_path, None, 3) == "lowest validation reconstruction error"


def test_majority_label_scores_by_hand():
    # 3 clusters over 2 labels: clusters 0 and 1 are mostly label 1, cluster 2 mostly label 0
    clusters = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    labels = np.array([1, 1, 0, 1, 1, 0, 0, 0, 0, 1])
    m = majority_label_scores(clusters, labels)
    assert m["cluster_label"] == {0: 1, 1: 1, 2: 0}
    assert m["accuracy"] == pytest.approx(8 / 10)
    from sklearn.metrics import adjusted_rand_score

    assert m["ari"] == pytest.approx(adjusted_rand_score(labels, np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])))


def _two_groups(n=200, seed=0):
    """Latents where the subunit splits z0 and the hinge runs along z1, the hinge spread wider than the gap."""
    rng = np.random.default_rng(seed)
    subunit = rng.integers(0, 2, n)
    hinge = rng.uniform(0, 1, n)
    z = np.stack([subunit * 1.0 + rng.normal(0, 0.05, n), hinge * 6.0], axis=1)
    state = subunit * 25 + np.minimum((hinge * 25).astype(int), 24)  # 50 hinge x subunit states
    return z, {"state": state, "subunit": subunit, "coordinate": hinge}


def test_evaluation_states_k_and_label_set_and_the_report_shows_it():
    z, truth = _two_groups()
    res = evaluate_latents(z, truth, label_set="subunit", k=8)
    res.pop("_kmeans")
    c = res["clustering"]
    assert (c["k"], c["label_set"], c["n_labels"]) == (8, "subunit", 2)
    assert c["majority"]["accuracy"] > 0.95 and c["majority"]["ari"] > 0.8
    assert c["ari"] < c["majority"]["ari"]  # 8 clusters against 2 labels: the raw ARI is not the measure
    assert res["continuous"]["within_groups"]["mean"] > 0.95
    # the default label set is the 50 states, with k = 50: a different question, stated as such
    res50 = evaluate_latents(z, truth)
    assert (res50["clustering"]["k"], res50["clustering"]["label_set"]) == (50, "state")
    html = render_html([evaluation_section({"epoch": 7, "n_particles": 200, **res})])
    assert "k-means (k = 8) vs the &#x27;subunit&#x27; labels (2 values)" in html
    assert "columns: the k = 8 k-means clusters of this evaluation" in html
    assert f"<td>{100 * c['majority']['accuracy']:.1f}%</td>" in html and f"<td>{c['majority']['ari']:.3f}</td>" in html
    assert "Latents of epoch 7" in html


def test_fsc_legend_says_how_many_states_are_shown():
    fsc = [1.0, 0.9, 0.5, 0.1]
    state = {"fsc_auc": 0.9, "resolution_0.5_angstrom": 6.0, "resolution_0.143_angstrom": None, "correlation": 0.9,
             "fsc": fsc}
    many = evaluation_section({"maps": {"pixel_size_angstrom": 2.0, "states": {str(s): state for s in range(50)}}})
    caption, fig = many.figures[-1]
    assert "12 of 50 states shown" in caption
    legend = fig.axes[0].get_legend()
    assert legend.get_title().get_text() == "12 of 50 states" and len(legend.get_texts()) == 12
    assert {"state 0", "state 49"} <= {t.get_text() for t in legend.get_texts()}
    few = evaluation_section({"maps": {"pixel_size_angstrom": 2.0, "states": {str(s): state for s in range(3)}}})
    caption, fig = few.figures[-1]
    assert "shown" not in caption and len(fig.axes[0].get_legend().get_texts()) == 3


def test_read_labels_with_a_label_set(tmp_path):
    np.savez(tmp_path / "l.npz", state=np.arange(4), coordinate=np.linspace(0, 1, 4), subunit=np.array([0, 1, 0, 1]),
             preset=np.array("hinge"))
    out = read_labels(tmp_path / "l.npz", "subunit")
    assert out["subunit"].tolist() == [0, 1, 0, 1] and out["state"].tolist() == [0, 1, 2, 3]
    with pytest.raises(InputError, match="no per-particle integer labels 'colour'"):
        read_labels(tmp_path / "l.npz", "colour")


def test_evaluate_command_with_a_label_set(tmp_path, capsys):
    import json

    from cryoscape.cli.main import main

    z, truth = _two_groups(n=120)
    run = tmp_path / "run"
    (run / "latents").mkdir(parents=True)
    np.save(run / "latents" / "epoch_001.npy", z.astype(np.float32))
    np.save(run / "indices.npy", np.arange(120))
    sim = tmp_path / "sim"
    sim.mkdir()
    np.savez(sim / "labels.npz", **truth)
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run), "--truth", str(sim), "--no-maps", "--labels", "subunit", "-k", "6",
                 "-o", str(out)]) == 0
    c = json.loads(out.read_text())["clustering"]
    assert (c["k"], c["label_set"], c["n_labels"]) == (6, "subunit", 2)
    text = capsys.readouterr().out
    assert "k-means (k = 6) vs the 'subunit' labels (2 values)" in text
    assert f"sorted by majority label {100 * c['majority']['accuracy']:.1f}%" in text
