"""The demo: simulate a sample with one continuous motion and one discrete state, train, analyse, score.

The built-in ``hinge_discrete`` object has a hinge that turns through 25 angles (the continuous motion) and an
extra subunit that is present in half of the particles (the discrete state). The demo trains a small cryoDRGN
model on noisy images with CTF, runs ``analyze`` and checks that both kinds of heterogeneity were recovered:

* discrete: the ``analyze`` k-means clusters (k = 8, the clusters shown in the report) each take the subunit
  label held by most of their particles; the score is the fraction of particles whose cluster's label is their own
  (and the adjusted Rand index of that two-way split). k = 2 would not do: the hinge spreads the latents further
  than the subunit does, so two clusters split the hinge range, not the subunit;
* continuous: within each of the two groups so found, ``|Spearman rho|`` between the group's first principal
  component and the true hinge angle (averaged, weighted by group size).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryoscape.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from cryoscape.utils.atomic import atomic_write_text

log = logging.getLogger("cryoscape")

KMEANS_CLUSTERS = 8  # the clusters of the report, scored against the subunit label


@dataclass(frozen=True)
class DemoSettings:
    """Sizes chosen to finish in a few minutes on a 2-core CPU and still recover the heterogeneity."""

    n_particles: int = 2500
    box: int = 32
    pixel_size_angstrom: float = 5.0
    snr: float = 0.3
    zdim: int = 4
    width: int = 128
    epochs: int = 20
    seed: int = 0  # batch size and learning rate: the cryodrgn family's defaults, as for `cryoscape train`


def score_demo(z: np.ndarray, subunit: np.ndarray, hinge: np.ndarray, k: int = 8, seed: int = 0) -> dict:
    """Recovery scores of the demo's two kinds of heterogeneity (see the module docstring)."""
    from scipy.stats import spearmanr
    from sklearn.metrics import adjusted_rand_score

    from cryoscape.analysis.latent import kmeans_on_data, run_pca

    labels = kmeans_on_data(z, k, seed=seed).labels
    cluster_label = np.array([np.bincount(subunit[labels == c], minlength=2).argmax() if (labels == c).any() else 0
                              for c in range(k)])
    found = cluster_label[labels]
    rhos, sizes = [], []
    for group in (0, 1):
        sel = found == group
        if sel.sum() < 10 or np.ptp(hinge[sel]) == 0:
            continue
        pc1 = run_pca(z[sel], n_components=1).projected[:, 0] if z.shape[1] > 1 else z[sel, 0]
        rhos.append(abs(float(spearmanr(pc1, hinge[sel]).statistic)))
        sizes.append(int(sel.sum()))
    return {
        "discrete_accuracy": float((found == subunit).mean()),
        "discrete_ari": float(adjusted_rand_score(subunit, found)),
        "continuous_spearman": float(np.average(rhos, weights=sizes)) if rhos else float("nan"),
        "clusters_with_subunit": np.flatnonzero(cluster_label == 1).tolist(),
        "cluster_sizes": np.bincount(labels, minlength=k).tolist(),
    }


# what the demo writes into its folder: --overwrite replaces these and keeps everything else, including the
# selections exported from `cryoscape explore` into run/explore_selections (carried over into the new run)
DEMO_OUTPUTS = ("data", "run", "demo_scores.json")
DEMO_KEEP = ("run/explore_selections",)


def run_demo(out_dir: str | Path = "cryoscape-demo", settings: DemoSettings = DemoSettings(),
             progress: bool = True, overwrite: bool = False) -> dict:
    """Run the whole story into ``out_dir``; returns the scores and the report path.

    ``out_dir`` must be new or empty unless ``overwrite``; then only ``DEMO_OUTPUTS`` are replaced (the explorer's
    selections in ``run/explore_selections`` are kept), and a failed demo puts the previous one back.
    """
    from cryoscape.utils.outputs import prepare_output_dir

    with prepare_output_dir(out_dir, "demo", overwrite, own=DEMO_OUTPUTS, keep=DEMO_KEEP) as out:
        return _run_demo(Path(out), settings, progress)


def _run_demo(out: Path, settings: DemoSettings, progress: bool) -> dict:
    from cryoscape.analysis.analyze import analyze_run
    from cryoscape.simulate.particles import simulate_dataset
    from cryoscape.simulate.volumes import states_from_preset
    from cryoscape.train.run import train

    s = settings
    t0 = time.perf_counter()
    sim = out / "data"
    log.info(f"[1/3] simulating {s.n_particles} particles of a hinged object with an optional subunit -> {sim}")
    states = states_from_preset("hinge_discrete", s.box, s.pixel_size_angstrom)
    simulate_dataset(states, s.n_particles, sim, snr=s.snr, seed=s.seed, progress=progress)

    run_dir = out / "run"
    log.info(f"[2/3] training a {s.zdim}-D cryoDRGN model for {s.epochs} epochs -> {run_dir}")
    config = RunConfig(
        data=DataConfig(particles=str(sim / "particles.star")),
        model=ModelConfig(family="cryodrgn", zdim=s.zdim, enc_dim=s.width, dec_dim=s.width),
        train=TrainConfig(epochs=s.epochs, seed=s.seed),
    )
    train(config, run_dir, progress=progress)

    log.info("[3/3] analysing the latent space")
    report = analyze_run(run_dir, ksample=KMEANS_CLUSTERS, truth=sim, progress=progress)
    z = np.load(run_dir / "latents" / f"epoch_{s.epochs:03d}.npy")
    truth = np.load(sim / "labels.npz")
    scores = score_demo(z, truth["subunit"], truth["coordinate"], k=KMEANS_CLUSTERS, seed=s.seed)
    scores.update(report=str(report), minutes=(time.perf_counter() - t0) / 60)
    atomic_write_text(out / "demo_scores.json", json.dumps(scores, indent=2))
    return scores
