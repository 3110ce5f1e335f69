#!/usr/bin/env bash
# Create ./.venv and install sns into it (idempotent, fast when already done).
#
# torch: if a torch wheel lies in pip's local find-links (as on our CPU
# machines), that build is installed first, so pip never pulls a multi-GB CUDA
# build here.  Elsewhere the normal resolver picks torch as usual (set
# SNS_TORCH_SPEC, e.g. "torch==2.5.1", or PIP_INDEX_URL to choose a build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${SNS_EXTRAS:-dev}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=.venv/.sns-installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$(cat "$stamp")" = "$EXTRAS" ]; then
    exit 0
fi
if ! "$VPY" -c "import torch" 2>/dev/null; then
    if [ -n "${SNS_TORCH_SPEC:-}" ]; then
        "$VPY" -m pip install "$SNS_TORCH_SPEC"
    elif "$VPY" -m pip install --no-index --no-deps torch >/dev/null 2>&1; then
        # local wheel found: now pull its (small) dependencies from the registry
        ver=$("$VPY" -c 'import importlib.metadata as m; print(m.version("torch").split("+")[0])')
        "$VPY" -m pip install "torch==$ver"
    fi
fi
"$VPY" -m pip install -e ".[${EXTRAS}]"
echo "$EXTRAS" > "$stamp"
