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

Both are computed once, by ``analyze``'s evaluation against the simulation (``evaluate_run`` with the ``subunit``
labels and k = 8, on the epoch the report analyses); the console and the report's "Evaluation against ground
truth" show the same numbers (``demo_scores.json`` is drawn from ``RUN/analysis/epoch_NNN/evaluation.json``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryoscape.config import CryoDRGNConfig, DataConfig, RunConfig, TrainConfig
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
    """Recovery scores of the demo's two kinds of heterogeneity (see the module docstring), computed by the
    evaluation that ``analyze --truth`` runs (:func:`cryoscape.analysis.evaluate.evaluate_latents`).
    """
    from cryoscape.analysis.evaluate import _jsonable, evaluate_latents

    result = evaluate_latents(z, {"subunit": np.asarray(subunit), "coordinate": np.asarray(hinge)},
                              label_set="subunit", k=k, seed=seed)
    km = result.pop("_kmeans")
    result["clustering"]["cluster_sizes"] = np.bincount(km.labels, minlength=k).tolist()
    return scores_from_evaluation(_jsonable(result))


def scores_from_evaluation(evaluation: dict) -> dict:
    """The demo's scores drawn from an ``evaluate_run`` result with the ``subunit`` labels (the report's)."""
    c = evaluation["clustering"]
    if c.get("label_set") != "subunit":
        raise ValueError(f"the demo scores the 'subunit' labels, not {c.get('label_set')!r}")
    m = c["majority"]
    within = (evaluation.get("continuous") or {}).get("within_groups") or {}
    if "cluster_sizes" in c:
        sizes = c["cluster_sizes"]
    else:  # from the confusion matrix (rows: labels, columns: clusters)
        sizes = np.asarray(c["confusion"]).sum(axis=0).tolist()
    return {
        "epoch": evaluation.get("epoch"),
        "k": c["k"],
        "label_set": c["label_set"],
        "discrete_accuracy": m["accuracy"],
        "discrete_ari": m["ari"],
        "continuous_spearman": within.get("mean") if within.get("mean") is not None else float("nan"),
        "clusters_with_subunit": sorted(int(cl) for cl, lab in m["cluster_label"].items() if int(lab) == 1),
        "cluster_sizes": [int(v) for v in sizes],
    }


def format_scores(scores: dict) -> str:
    """What the demo prints: the scores, with the epoch, the k and the label set they were computed with (the same
    numbers as the report's "Evaluation against ground truth").
    """
    clusters = ", ".join(str(c) for c in scores["clusters_with_subunit"]) or "none"
    rho = scores["continuous_spearman"]
    epoch = f"epoch {scores['epoch']}" + (f" ({scores['epoch_reason']})" if scores.get("epoch_reason") else "")
    lines = [
        "cryoscape demo: heterogeneity recovered from noisy images (SNR 0.3, with CTF)",
        f"  latents of {epoch}; k-means with k = {scores['k']} (the report's clusters) against the simulation's "
        f"{scores['label_set']!r} labels",
        f"  discrete state (extra subunit): clusters {clusters} hold most of the particles with it; each cluster "
        "labelled by its majority",
        f"    sorts {100 * scores['discrete_accuracy']:.1f}% of particles correctly "
        f"(adjusted Rand index {scores['discrete_ari']:.3f})",
        "  continuous motion (hinge angle), within each group |Spearman rho| = "
        + ("n/a" if rho is None or not np.isfinite(rho) else f"{rho:.3f}"),
    ]
    if "minutes" in scores:
        lines.append(f"  time: {scores['minutes']:.1f} min")
    if "report" in scores:
        lines.append(f"  report: {scores['report']} (section \"Evaluation against ground truth\")")
    return "\n".join(lines)


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
        model=CryoDRGNConfig(family="cryodrgn", zdim=s.zdim, enc_dim=s.width, dec_dim=s.width),
        train=TrainConfig(epochs=s.epochs, seed=s.seed),
    )
    train(config, run_dir, progress=progress)

    log.info("[3/3] analysing the latent space")
    report = analyze_run(run_dir, ksample=KMEANS_CLUSTERS, truth=sim, progress=progress, seed=s.seed,
                         truth_labels="subunit", truth_k=KMEANS_CLUSTERS)
    evaluation = json.loads((report.parent / "evaluation.json").read_text())  # the report's evaluation
    scores = scores_from_evaluation(evaluation)
    from cryoscape.analysis.report import epoch_choice

    scores.update(epoch_reason=epoch_choice(run_dir, None, scores["epoch"]), report=str(report),
                  minutes=(time.perf_counter() - t0) / 60)
    atomic_write_text(out / "demo_scores.json", json.dumps(scores, indent=2))
    return scores
