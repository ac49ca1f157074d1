#!/usr/bin/env bash
# The whole test suite: installs what is missing, then formatting, lints and every test
# (unit tests, and end-to-end tests that start their own PostgreSQL and nats-server).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
TOLLGATE_NATS_SERVER="$(scripts/nats-server-path.sh)"
export TOLLGATE_NATS_SERVER
echo "test: using $TOLLGATE_NATS_SERVER ($("$TOLLGATE_NATS_SERVER" --version))"
echo "test: disk before the build: $(df -h --output=avail . | tail -1) free"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Every target but doc tests (there are none); the summary line sums all test binaries.
log=$(mktemp)
set +e
RUST_LOG="${RUST_LOG:-debug,sqlx=warn,async_nats=info,hyper=info,hyper_util=info,reqwest=info,h2=info,tower=info,rustls=info}" cargo test --workspace --all-targets --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$status"
