#!/usr/bin/env bash
# Format check, lint, strict typing and import contracts.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
ruff format --check .
ruff check .
mypy bmgkd_core api worker
lint-imports
