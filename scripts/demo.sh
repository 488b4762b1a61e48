#!/usr/bin/env bash
# Starts a throwaway PostgreSQL 15 cluster, puts pgherd in front of it and prints how to connect.
# Ctrl-C or SIGTERM stops pgherd and the cluster and removes the cluster's directory.
#   usage: scripts/demo.sh [pgherd port, default 6432]
set -euo pipefail

PORT="${1:-6432}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

cargo build --release --manifest-path "$ROOT/Cargo.toml" --quiet
WORK="$(mktemp -d /tmp/pgherd-demo.XXXXXX)"
chmod 755 "$WORK"
# PostgreSQL refuses to run as root: run it as the postgres user then.
RUN=()
if [ "$(id -u)" = 0 ]; then
    chown postgres "$WORK"
    RUN=(runuser -u postgres --)
fi
PG_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

"${RUN[@]}" "$PG_BIN/initdb" -D "$WORK/data" -A trust -U postgres -E UTF8 --locale=C >/dev/null
cat >>"$WORK/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK'
max_connections = 200
CONF
printf 'local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n' >"$WORK/data/pg_hba.conf"
"${RUN[@]}" "$PG_BIN/postgres" -D "$WORK/data" >"$WORK/postgres.log" 2>&1 &
PG_PID=$!
cleanup() {
    # As root $PG_PID is runuser, which does not pass SIGINT on: signal the postmaster itself (fast shutdown).
    kill -INT "$(head -1 "$WORK/data/postmaster.pid" 2>/dev/null)" 2>/dev/null || kill -INT "$PG_PID" 2>/dev/null || true
    wait "$PG_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
for _ in $(seq 100); do
    "$PG_BIN/pg_isready" -q -h "$WORK" -p "$PG_PORT" && break
    sleep 0.1
done
"$PG_BIN/psql" -X -q -h "$WORK" -p "$PG_PORT" -U postgres \
    -c "CREATE USER demo PASSWORD 'demo'" -c "CREATE DATABASE demo OWNER demo"

cat >"$WORK/pgherd.toml" <<CONF
listen = ["127.0.0.1:$PORT"]
pool_mode = "transaction"
max_client_conn = 10000
auth_type = "scram-sha-256"

[databases.demo]
host = "127.0.0.1"
port = $PG_PORT
pool_size = 10

[users.demo]
password = "demo"
CONF

echo
echo "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on port $PG_PORT, pgherd on port $PORT. Connect with:"
echo
echo "    PGPASSWORD=demo $PG_BIN/psql -h 127.0.0.1 -p $PORT -U demo demo"
echo
echo "Ctrl-C (or SIGTERM to this script) stops both."
"$ROOT/target/release/pgherd" --config "$WORK/pgherd.toml" &
HERD_PID=$!
# Background jobs of a script ignore SIGINT, so pgherd is asked to stop with SIGTERM.
trap 'kill -TERM "$HERD_PID" 2>/dev/null' INT TERM
wait "$HERD_PID" || true
wait "$HERD_PID" 2>/dev/null || true
