#!/usr/bin/env bash
# Installs pgjdbc from Debian's libpostgresql-jdbc-java (the version Debian 12 pins) and makes sure a JDK is
# there, then links the jar as $1/postgresql.jar. Idempotent.
set -euo pipefail
DIR="$1"
export DEBIAN_FRONTEND=noninteractive
missing=()
[ -f /usr/share/java/postgresql.jar ] || missing+=(libpostgresql-jdbc-java)
command -v java >/dev/null || missing+=(default-jdk-headless)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
mkdir -p "$DIR"
ln -sf /usr/share/java/postgresql.jar "$DIR/postgresql.jar"
