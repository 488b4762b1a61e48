#!/usr/bin/env bash
# Installs psycopg 3.3, whose binary wheel bundles libpq 18 (the first libpq that asks for protocol 3.2 with
# max_protocol_version=latest), into a virtualenv at $1. Idempotent: a stamp file names what is installed.
set -euo pipefail
DIR="$1"
PACKAGES=("psycopg[binary]==3.3.9")
STAMP="$DIR/.installed"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "${PACKAGES[*]}" ]; then
    exit 0
fi
python3 -m venv "$DIR"
"$DIR/bin/pip" install --quiet --disable-pip-version-check "${PACKAGES[@]}"
echo "${PACKAGES[*]}" >"$STAMP"
