#!/usr/bin/env bash
# Fuzzes every parser of untrusted bytes for SECONDS (default 600): the property tests (`props` modules, see
# src/fuzzing.rs) run again and again, each round with a fresh seed and PGHERD_FUZZ_CASES cases per property.
# Stops at the first failure and prints the seed that replays it.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
cases="${PGHERD_FUZZ_CASES:-20000}"
cargo test --release --lib --test config_props --no-run -q
end=$(( $(date +%s) + seconds ))
rounds=0
while [ "$(date +%s)" -lt "$end" ]; do
    seed=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
    if ! PGHERD_FUZZ_SEED="$seed" PGHERD_FUZZ_CASES="$cases" cargo test --release --lib --test config_props -q props:: >/tmp/pgherd-fuzz.log 2>&1; then
        cat /tmp/pgherd-fuzz.log
        echo "fuzz: a property failed; replay with PGHERD_FUZZ_SEED=$seed PGHERD_FUZZ_CASES=$cases cargo test --release --lib --test config_props props::"
        exit 1
    fi
    rounds=$((rounds + 1))
done
properties=$(grep -E '^test result: ok\. [0-9]+ passed' /tmp/pgherd-fuzz.log | awk '{ n += $4 } END { print n + 0 }')
echo "fuzz: $rounds round(s) of $properties properties x $cases cases in ${seconds}s, no failure"
