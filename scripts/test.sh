#!/usr/bin/env bash
# The whole test suite: installs what is missing, then formatting, lints and every test
# (unit tests, and end-to-end tests that start their own PostgreSQL and nats-server).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
TOLLGATE_NATS_SERVER="$(scripts/nats-server-path.sh)"
export TOLLGATE_NATS_SERVER
echo "test: using $TOLLGATE_NATS_SERVER ($("$TOLLGATE_NATS_SERVER" --version))"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
RUST_LOG="${RUST_LOG:-debug,sqlx=warn,async_nats=info,hyper=info,hyper_util=info,reqwest=info,h2=info,tower=info,rustls=info}" cargo test --workspace --locked
