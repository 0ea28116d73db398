#!/usr/bin/env bash
# Install RECOVAR 1.0.5 (PyPI `recovar`, Gilles & Singer) into bench/recovar-venv (git-ignored), CPU only: plain
# `recovar==1.0.5` pulls the CPU jax/jaxlib 0.9.0.1; the `gpu`/`cuda` extras (jax[cuda12]) are NOT installed.
# RECOVAR pins its own numpy/scipy/scikit-learn, so it gets a venv of its own (python3.11, as cryoscape's .venv).
# bench/recovar.py runs it (`recovar pipeline ...`) and scores its maps with cryoscape's metric functions.
#
# Usage:  bash bench/setup_recovar.sh          (does nothing when bench/recovar-venv already exists; ~2-5 min)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/recovar-venv"
if [ -x "$venv/bin/recovar" ]; then
  echo "$venv exists; nothing to do (remove it to reinstall)"
  exit 0
fi
[ -x "$venv/bin/python" ] || python3.11 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip wheel
"$venv/bin/pip" install -q "recovar==1.0.5"
"$venv/bin/python" - <<'PY'
import jax, jaxlib, recovar
assert all(d.platform == "cpu" for d in jax.devices()), jax.devices()
print("recovar", getattr(recovar, "__version__", "?"), "jax", jax.__version__, "jaxlib", jaxlib.__version__,
      "devices", jax.devices())
PY
"$venv/bin/recovar" pipeline --help > /dev/null && echo "recovar pipeline --help: OK"   # (bare `recovar --help` exits 1: it lists the commands)
