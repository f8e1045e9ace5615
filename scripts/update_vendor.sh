#!/usr/bin/env bash
# Refresh the vendored front-end files in web/static/vendor/ from the npm registry (`npm pack`).
# The dashboard has no build step: each file carries its version in its name, and the templates
# name those files. To upgrade, change the version here, run this script, then update the
# file names in web/templates/base.html (and remove the old files).
# Usage: scripts/update_vendor.sh        Needs: npm, tar.
set -euo pipefail
cd "$(dirname "$0")/.."

UPLOT_VERSION=1.6.32
DEST=web/static/vendor

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$DEST"

# npm pack downloads the published tarball (with its registry integrity check) without installing.
tarball=$(cd "$tmp" && npm pack --silent "uplot@${UPLOT_VERSION}" | tail -n 1)
tar -xzf "$tmp/$tarball" -C "$tmp"
pkg="$tmp/package"
version=$(node -p "require('$pkg/package.json').version" 2>/dev/null || echo "$UPLOT_VERSION")
if [ "$version" != "$UPLOT_VERSION" ]; then
  echo "update_vendor: expected uplot ${UPLOT_VERSION}, got ${version}" >&2
  exit 1
fi
cp "$pkg/dist/uPlot.iife.min.js" "$DEST/uPlot-${UPLOT_VERSION}.iife.min.js"
cp "$pkg/dist/uPlot.min.css" "$DEST/uPlot-${UPLOT_VERSION}.min.css"
cp "$pkg/LICENSE" "$DEST/uPlot-${UPLOT_VERSION}.LICENSE"

echo "vendored uPlot ${UPLOT_VERSION} into ${DEST}:"
ls -l "$DEST"
