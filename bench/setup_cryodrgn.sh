#!/usr/bin/env bash
# Install the reference implementation cryoDRGN 4.3.1 into bench/cryodrgn-venv (git-ignored), on the same
# CPU torch as cryoscape's .venv, so that the benchmarks compare the two codes and not two torch builds.
#
# cryoDRGN 4.3.0's pyproject.toml pins torch>=2.0,<2.10 and numpy<1.27; the wheel of 4.3.1 on PyPI declares only
# torch>=2 and numpy>=1.25 (checked with importlib.metadata.requires('cryodrgn')).  Either way we install it with
# --no-deps and then its other dependencies under a constraint torch==<installed>, so pip can never replace the
# CPU torch 2.13.0 (which is outside 4.3.0's <2.10 pin: that pin, if present, is deliberately OVERRIDDEN so that
# both programs run on the same torch).  numpy resolves to what the metadata allows (2.x with 4.3.1).
#
# Usage:  bash bench/setup_cryodrgn.sh          (idempotent; ~1-3 min)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/cryodrgn-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip="$venv/bin/pip"
"$pip" install -q --upgrade pip wheel setuptools
# 1. CPU torch only (the local wheel; never a CUDA build).
"$pip" install -q "torch==2.13.0" --index-url "file:///nonexistent" --find-links /opt/wheels 2>/dev/null \
  || "$pip" install -q "torch==2.13.0"
"$venv/bin/python" -c "import torch; assert not torch.version.cuda, 'a CUDA torch was installed'; print('torch', torch.__version__)"
# 2. cryoDRGN itself, without letting pip resolve its torch pin.
"$pip" install -q --no-deps "cryodrgn==4.3.1"
# 3. Its remaining dependencies (read from the package metadata), minus torch; torch is held by a constraint file.
deps=$("$venv/bin/python" - <<'PY'
import importlib.metadata as md, re
out = []
for r in md.requires("cryodrgn") or []:
    if "extra ==" in r:
        continue
    name = re.split(r"[ <>=!~;\[]", r, 1)[0]
    if name.lower() in ("torch",):
        continue
    out.append(r.split(";")[0].strip())
print("\n".join(out))
PY
)
echo "cryoDRGN dependencies (torch excluded):"; echo "$deps" | sed 's/^/  /'
cons="$venv/torch-constraint.txt"
echo "torch==$("$venv/bin/python" -c 'import torch;print(torch.__version__.split("+")[0])')" > "$cons"
# shellcheck disable=SC2086
echo "$deps" | tr '\n' '\0' | xargs -0 "$pip" install -q -c "$cons" --upgrade-strategy only-if-needed
"$venv/bin/python" -c "import torch, numpy, cryodrgn; print('cryodrgn', cryodrgn.__version__, 'torch', torch.__version__, 'numpy', numpy.__version__)"
"$venv/bin/cryodrgn" train_vae --help > /dev/null && echo "cryodrgn train_vae --help: OK"
