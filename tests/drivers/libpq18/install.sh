#!/usr/bin/env bash
# Installs psycopg 3.3, whose binary wheel bundles libpq 18 (the first libpq that asks for protocol 3.2 with
# max_protocol_version=latest), into a virtualenv at $1.
set -euo pipefail
exec bash "$(dirname "$0")/../python/install.sh" "$1" "psycopg[binary]==3.3.9"
