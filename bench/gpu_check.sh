#!/usr/bin/env bash
# One prepared check for the day a GPU is lent (no network needed there), bounded to < 8 min on one H100:
#
#   1. CUDA unit tests        pytest -m cuda (tests/test_cuda.py: GPU vs CPU training, --amp, --ctf-field,
#                             --refine-poses, abinit, eval-vol --reconstruct, opus-dsd, tomodrgn)
#   2. --amp and DDP          python -m bench.gpu_check: cryodrgn family, D=128, N=8000, 3 epochs: float32, --amp,
#                             and torchrun --nproc_per_node=1 against the plain run
#   3. cryoDRGN 4.3.1         python -m bench.throughput (cryoscape fp32 / --amp vs cryoDRGN, D=128, N=8000,
#                             3 epochs, 1 repeat), cryoDRGN installed from the wheels carried along (bench/wheels/)
#
# On a machine without CUDA the CUDA parts are skipped, saying so, and a smoke subset runs instead (1-2 min on an
# idle 2-core machine, ~5 min on a loaded one): the cuda tests are collected (and skip), the torchrun timing on a
# tiny CPU data set (D=32, N=64, 2 epochs), and, when the wheels are there, the cryoDRGN install and a tiny cryoDRGN
# training through bench.throughput.
#
# Usage:
#   bash bench/gpu_check.sh --download-wheels   # BEFOREHAND, on a machine with PyPI access: fills bench/wheels/
#                                               # (~14 MB: cryoDRGN 4.3.1 and the packages it needs that cryoscape's
#                                               # environment lacks; git-ignored, so name it in the run's carry list)
#   bash bench/gpu_check.sh [OUT]               # on the GPU machine; JSON results and logs go to OUT
#                                               # (default $OUT if set, else bench/_work/gpu_check_out)
# Environment: PYTHON (default .venv/bin/python, else python3), WHEELS (default bench/wheels).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
cd "$root"
wheels="${WHEELS:-$here/wheels}"
# cryoDRGN's own wheel plus what its command line imports beyond cryoscape's dependencies (igraph, seaborn, nbformat,
# flask: every command module is imported at start-up) with their dependencies; torch, numpy, scipy, pandas,
# matplotlib ... come from the machine's environment.
CRYODRGN_EXTRA="cryodrgn==4.3.1 igraph texttable seaborn nbformat fastjsonschema jsonschema jsonschema-specifications
referencing rpds-py attrs jupyter-core traitlets platformdirs typing-extensions flask werkzeug jinja2 itsdangerous
click blinker markupsafe"

if [ -x "$root/.venv/bin/python" ]; then py="${PYTHON:-$root/.venv/bin/python}"; else py="${PYTHON:-python3}"; fi

if [ "${1:-}" = "--download-wheels" ]; then
  mkdir -p "$wheels"
  # --no-deps: exactly the list above. Compiled ones (rpds-py) for every Python the GPU machine might have.
  # shellcheck disable=SC2086
  "$py" -m pip download --no-deps --only-binary=:all: -d "$wheels" $CRYODRGN_EXTRA || exit 1
  for v in 3.10 3.11 3.12 3.13; do
    "$py" -m pip download --no-deps --only-binary=:all: --python-version "$v" -d "$wheels" rpds-py || exit 1
  done
  du -sh "$wheels"; ls "$wheels"
  exit 0
fi

out="${1:-${OUT:-$here/_work/gpu_check_out}}"
mkdir -p "$out"
t_start=$(date +%s)
skipped=()
failed=()
say() { printf '\n=== %s (%ss)\n' "$*" "$(( $(date +%s) - t_start ))"; }

say "environment"
if ! "$py" -c "import torch" 2>/dev/null; then echo "gpu_check: $py cannot import torch"; exit 1; fi
if ! "$py" -c "import cryoscape" 2>/dev/null; then
  export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"  # a machine without `pip install -e .`
  "$py" -c "import cryoscape" || { echo "gpu_check: cryoscape is not importable with $py"; exit 1; }
fi
cuda=$("$py" -c 'import torch; print(torch.cuda.is_available())')
"$py" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA",
torch.version.cuda, "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

# --- cryoDRGN 4.3.1 from the carried wheels: installed beside (not into) this environment, for this interpreter --
cdenv="$here/_work/gpu_check/cryodrgn-env"
have_cryodrgn=0
say "cryoDRGN 4.3.1 from $wheels"
if ls "$wheels"/cryodrgn-4.3.1-*.whl >/dev/null 2>&1; then
  rm -rf "$cdenv"; mkdir -p "$cdenv/bin" "$cdenv/site"
  # only the listed packages this interpreter does not have already (never a second numpy or torch)
  missing=$("$py" - $CRYODRGN_EXTRA <<'PY'
import importlib.metadata as md, re, sys
for req in sys.argv[1:]:
    name = re.split(r"[=<>]", req)[0]
    try:
        md.version(name)
    except md.PackageNotFoundError:
        print(req)
PY
)
  echo "installing from the wheels: $(echo $missing)"
  # shellcheck disable=SC2086
  if [ -z "$missing" ] || "$py" -m pip install -q --no-index --no-deps --find-links "$wheels" --target "$cdenv/site" \
       $missing; then
    printf '#!/bin/sh\nPYTHONPATH="%s${PYTHONPATH:+:$PYTHONPATH}" exec "%s" "$@"\n' "$cdenv/site" "$py" \
      > "$cdenv/bin/python"
    printf '#!/bin/sh\nexec "%s" -c "import sys; from cryodrgn.command_line import main_commands; sys.argv[0] = %s; sys.exit(main_commands())" "$@"\n' \
      "$cdenv/bin/python" "'cryodrgn'" > "$cdenv/bin/cryodrgn"
    chmod +x "$cdenv/bin/python" "$cdenv/bin/cryodrgn"
    if timeout 120 "$cdenv/bin/cryodrgn" train_vae --help > "$out/cryodrgn_help.txt" 2>&1; then
      "$cdenv/bin/python" -c "import cryodrgn; print('cryodrgn', cryodrgn.__version__, 'installed in', '$cdenv')"
      have_cryodrgn=1
    else
      echo "cryodrgn train_vae --help failed:"; tail -5 "$out/cryodrgn_help.txt"; failed+=("cryoDRGN install")
    fi
  else
    failed+=("cryoDRGN install (pip)")
  fi
else
  echo "no $wheels/cryodrgn-4.3.1-*.whl: run \`bash bench/gpu_check.sh --download-wheels\` beforehand"
  skipped+=("cryoDRGN 4.3.1 comparison (no wheels)")
fi
export BENCH_CRYODRGN_VENV="$cdenv"

# --- 1. CUDA unit tests ------------------------------------------------------------------------------------------
say "1. CUDA unit tests (pytest -m cuda)"
if [ "$cuda" = True ]; then
  timeout 150 "$py" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py -rs 2>&1 | tee "$out/cuda_tests.txt" \
    | tail -15
  [ "${PIPESTATUS[0]}" = 0 ] || failed+=("CUDA unit tests")
else
  # collected here so that a broken test file still shows; every test skips without CUDA
  timeout 60 "$py" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py 2>&1 | tail -2
  skipped+=("CUDA unit tests (tests/test_cuda.py): no CUDA device")
fi

# --- 2. --amp and DDP overhead with one process --------------------------------------------------------------------
say "2. --amp vs float32, torchrun --nproc_per_node=1 vs plain"
if [ "$cuda" = True ]; then
  timeout 150 "$py" -m bench.gpu_check --device cuda -D 128 -N 8000 --epochs 3 -o "$out/gpu_check.json" \
    || failed+=("--amp / DDP timing")
else
  timeout 240 "$py" -m bench.gpu_check --device cpu -D 32 -N 64 --epochs 2 --parts ddp -o "$out/gpu_check_cpu_smoke.json" \
    || failed+=("--amp / DDP timing (CPU smoke)")
  skipped+=("--amp and DDP timings on CUDA (ran the CPU smoke of the DDP part at D=32, N=64 instead)")
fi

# --- 3. throughput against cryoDRGN 4.3.1 ------------------------------------------------------------------------
say "3. throughput: cryoscape fp32 / --amp vs cryoDRGN 4.3.1"
if [ "$cuda" = True ] && [ "$have_cryodrgn" = 1 ]; then
  timeout 150 "$py" -m bench.throughput --sizes 128 --n 8000 --epochs 3 --repeats 1 \
    --codes cryoscape-fp32 cryoscape-amp cryodrgn -o "$out/throughput_gpu.json" || failed+=("throughput vs cryoDRGN")
elif [ "$cuda" = True ]; then
  skipped+=("throughput vs cryoDRGN on CUDA (cryoDRGN not installed)")
elif [ "$have_cryodrgn" = 1 ]; then
  timeout 240 "$py" -m bench.throughput --sizes 32 --n 64 --epochs 2 --repeats 1 --codes cryodrgn \
    -o "$out/throughput_cpu_smoke.json" 2>&1 | tail -4
  [ "${PIPESTATUS[0]}" = 0 ] || failed+=("throughput vs cryoDRGN (CPU smoke)")
  skipped+=("throughput vs cryoDRGN on CUDA: no CUDA device (ran cryoDRGN alone at D=32, N=64 as a smoke instead)")
else
  skipped+=("throughput vs cryoDRGN: no CUDA device and no cryoDRGN")
fi

say "summary"
echo "results and logs: $out (runs under bench/_work/)"
for s in "${skipped[@]+"${skipped[@]}"}"; do echo "SKIPPED: $s"; done
for f in "${failed[@]+"${failed[@]}"}"; do echo "FAILED:  $f"; done
echo "total $(( $(date +%s) - t_start )) s"
[ "${#failed[@]}" = 0 ]
