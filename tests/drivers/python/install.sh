#!/usr/bin/env bash
# Installs the Python drivers the suite uses, at pinned versions, into a virtualenv at $1; packages given after
# $1 are installed instead (tests/drivers/libpq18 uses that). Idempotent: a stamp file names what is installed.
set -euo pipefail
DIR="$1"
shift
if [ "$#" -gt 0 ]; then
    PACKAGES=("$@")
else
    PACKAGES=("psycopg[binary]==3.2.13" "asyncpg==0.30.0")
fi
STAMP="$DIR/.installed"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "${PACKAGES[*]}" ]; then
    exit 0
fi
python3 -m venv "$DIR"
"$DIR/bin/pip" install --quiet --disable-pip-version-check "${PACKAGES[@]}"
echo "${PACKAGES[*]}" >"$STAMP"
