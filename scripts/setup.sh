#!/usr/bin/env bash
# Create .venv and install bmgkd with its dev tools. Idempotent: skips work already done.
# torch/torchvision: a tested pair is installed first (override with BMGKD_TORCH / BMGKD_TORCHVISION);
# pyproject admits 2.11-2.14 / 0.26-0.29.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
TORCH=${BMGKD_TORCH:-2.14.1}
TORCHVISION=${BMGKD_TORCHVISION:-0.29.1}

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=".venv/.bmgkd-installed-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi
"$VPY" -m pip install -q --upgrade "pip>=25.1"
if ! "$VPY" -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "setup: installing torch==$TORCH torchvision==$TORCHVISION (large download, about a minute)"
  "$VPY" -m pip install -q "torch==$TORCH" "torchvision==$TORCHVISION"
fi
echo "setup: installing bmgkd (editable) and the dev tools"
"$VPY" -m pip install -q -e ".[service]" --group dev
rm -f .venv/.bmgkd-installed-*
touch "$stamp"
