"""Continue the tomodrgn accuracy run of ``bench/tomodrgn.py`` to more epochs and score it the same way.

Training is resumable and schedule-free (constant AdamW learning rate), so continuing an 8-epoch run to 20 epochs
gives the same model as a 20-epoch run from the start (``tests/test_cli_cryodrgn.py`` checks resume equivalence).
The run is copied first, so the original stays as it was::

    .venv/bin/python -m bench.tomodrgn_continue --epochs 20            # after -m bench.tomodrgn --parts accuracy

Writes ``bench/results/tomodrgn_continued.json``: the ARI after every epoch, the last epoch's k-means scores and the
maps at the cluster centres (``evaluate_vae`` of ``bench/tomodrgn.py``), wall time and the epoch seconds.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from bench.common import BENCH, WORK, TrainSpec, machine_info, timed_train, write_json
from bench.tomodrgn import FULL, evaluate_vae


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20, help="total epochs (default 20)")
    p.add_argument("--run", default=str(WORK / "tomo_runs" / "tomodrgn_z8"), help="the run to continue (copied)")
    p.add_argument("--sim", default=str(WORK / f"tomo_sim_tilt4_D64_N{FULL['n']}_T41_snr0.05_s0"))
    p.add_argument("-o", "--output", default=str(BENCH / "results" / "tomodrgn_continued.json"))
    args = p.parse_args(argv)
    src, sim = Path(args.run), Path(args.sim)
    out = src.with_name(f"{src.name}_e{args.epochs}")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out)
    import yaml

    particles = yaml.safe_load((out / "config.yaml").read_text())["data"]["particles"]
    res, rows = timed_train(TrainSpec(particles, out, epochs=args.epochs, resume=True))
    result = {"command": " ".join(sys.argv), "machine": machine_info(), "continued_from": str(src),
              "train": {**res, "epoch_seconds": [round(r["seconds"], 2) for r in rows]}}
    if res["returncode"] == 0:
        result["evaluation"] = evaluate_vae(out, sim, seed=0)
    write_json(Path(args.output), result)
    ev = result.get("evaluation", {})
    print({k: ev.get(k) for k in ("ari", "ari_by_epoch", "accuracy") if k in ev})
    return 0 if res["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
