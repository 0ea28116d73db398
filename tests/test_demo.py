"""The demo's scoring (against known answers) and a shortened run of the command."""

import json

import numpy as np
import pytest

from cryoscape.cli.main import main
from cryoscape.demo import score_demo


def test_score_demo_known_answers():
    rng = np.random.default_rng(0)
    n = 400
    subunit = rng.integers(0, 2, n)
    hinge = rng.uniform(0, 1, n)
    # a latent space that separates the subunit on z0 and orders the hinge on z1
    z = np.stack([subunit * 10.0 + rng.normal(0, 0.1, n), hinge + rng.normal(0, 0.01, n)], axis=1)
    scores = score_demo(z, subunit, hinge)
    assert scores["discrete_accuracy"] > 0.99 and scores["discrete_ari"] > 0.99
    assert scores["continuous_spearman"] > 0.95
    assert sum(scores["cluster_sizes"]) == n and len(scores["cluster_sizes"]) == 8
    # the hinge spread wider than the subunit gap: two clusters would cut the hinge, eight still find the subunit
    wide = np.stack([subunit * 1.0 + rng.normal(0, 0.05, n), hinge * 6.0], axis=1)
    scores = score_demo(wide, subunit, hinge)
    assert scores["discrete_accuracy"] > 0.95 and scores["continuous_spearman"] > 0.95
    # a latent space that knows nothing
    noise = rng.normal(size=(n, 2))
    scores = score_demo(noise, subunit, hinge)
    assert scores["discrete_accuracy"] < 0.7 and scores["continuous_spearman"] < 0.3


@pytest.mark.slow
def test_demo_command_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path), "-N", "120", "--epochs", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "adjusted Rand index" in out and "report:" in out
    scores = json.loads((tmp_path / "demo_scores.json").read_text())
    assert set(scores) >= {"discrete_accuracy", "discrete_ari", "continuous_spearman", "report"}
    report = (tmp_path / "run" / "analysis" / "epoch_001" / "index.html").read_text()
    # one evaluation: the console's numbers, its k and its label set are those of the report
    import re

    sorted_pct, ari = re.search(r"sorts (\d+\.\d)% of particles correctly \(adjusted Rand index (\d\.\d{3})\)",
                                out).groups()
    assert f"{100 * scores['discrete_accuracy']:.1f}" == sorted_pct and f"{scores['discrete_ari']:.3f}" == ari
    assert f"<td>{sorted_pct}%</td>" in report and f"<td>{ari}</td>" in report
    assert "k-means with k = 8" in out and "'subunit' labels" in out
    assert "k-means (k = 8) vs the &#x27;subunit&#x27; labels (2 values)" in report
    assert "the clusters of the k-means section" in report and "k-means clustering (k = 8)" in report
    # every particle trained (the family's default --val-frac 0): the last epoch, no validation set
    assert "latents of epoch 1 (last; no validation set)" in out
    assert "Analysed: epoch 1 (last; no validation set)." in report
    assert not (tmp_path / "run" / "best_epoch").exists()
    # the demo trains with the cryodrgn family's defaults, those of `cryoscape train` (no hidden overrides)
    from cryoscape.config import load_config
    from cryoscape.models.registry import get_family

    config, family = load_config(tmp_path / "run" / "config.yaml"), get_family("cryodrgn")
    t = config.train
    assert (t.batch_size, t.lr) == (family.default_batch_size, family.default_lr)
    assert config.data.val_frac == family.default_val_frac == 0.0
