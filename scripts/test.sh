#!/usr/bin/env bash
# The README's test command: set up, lint, then run the default test suite (CPU, no GPU needed).
# Extra arguments go to pytest (e.g. scripts/test.sh -k checkpoint).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/lint.sh
export PATH="$PWD/.venv/bin:$PATH"
exec python -m pytest -m "not slow and not gpu" --timeout 900 "$@"
