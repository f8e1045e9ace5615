#!/usr/bin/env bash
# The README's test command: set up, lint, then run the default test suite (CPU, no GPU needed).
# Extra arguments go to pytest (e.g. scripts/test.sh -k checkpoint).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The browser tests (tests/browser) drive Debian's Chromium through Playwright's Python package
# (no `playwright install`). Install it when missing and we may: as root or with password-less
# sudo, where apt-get exists. Never fatal here: without chromium the browser tests fail, naming it
# (BMGKD_SKIP_BROWSER=1 skips them).
apt_chromium() {
  local sudo=""
  if [ "$(id -u)" != "0" ]; then
    command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1 || return 1
    sudo="sudo -n"
  fi
  command -v apt-get >/dev/null 2>&1 || return 1
  echo "setup: installing chromium (apt-get) for the browser tests"
  local apt="$sudo env DEBIAN_FRONTEND=noninteractive apt-get -q"
  $apt install -y chromium >/dev/null 2>&1 \
    || { $apt update >/dev/null 2>&1 && $apt install -y chromium >/dev/null 2>&1; }
}
if [ "${BMGKD_SKIP_BROWSER:-}" != "1" ] && ! command -v chromium >/dev/null 2>&1; then
  apt_chromium || echo "setup: chromium is not installed and could not be installed here" \
    "(needs root or sudo, and apt-get); the browser tests will fail (BMGKD_SKIP_BROWSER=1 skips them)" >&2
fi

bash scripts/lint.sh
export PATH="$PWD/.venv/bin:$PATH"
exec python -m pytest -m "not slow and not gpu" --timeout 900 "$@"
