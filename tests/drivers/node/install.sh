#!/usr/bin/env bash
# Installs node-postgres at the version pinned in package-lock.json into $1/node_modules.
# Idempotent: a stamp file holds the lock file it installed.
set -euo pipefail
DIR="$1"
HERE="$(cd "$(dirname "$0")" && pwd)"
if [ -f "$DIR/.installed" ] && cmp -s "$DIR/.installed" "$HERE/package-lock.json"; then
    exit 0
fi
mkdir -p "$DIR"
cp "$HERE/package.json" "$HERE/package-lock.json" "$DIR/"
(cd "$DIR" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
cp "$HERE/package-lock.json" "$DIR/.installed"
