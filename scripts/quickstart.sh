#!/usr/bin/env bash
# Quickstart: set up and run Tollgate end to end on local defaults, on a fresh Debian machine.
#   scripts/quickstart.sh          install what is missing, build, start everything, try it
#   scripts/quickstart.sh stop     stop everything it started
# Everything lives under .tollgate/ (data, logs, keys, tokens). Local defaults:
#   PostgreSQL 127.0.0.1:25432 (demo target + projections)   NATS JetStream 127.0.0.1:24222
#   dev issuer http://127.0.0.1:25556 (DEVELOPMENT ONLY)       control plane http://127.0.0.1:28080
#   proxy (PostgreSQL protocol) 127.0.0.1:15432
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DATA=$ROOT/.tollgate
PG_PORT=25432 NATS_PORT=24222 ISSUER_PORT=25556 API_PORT=28080 PROXY_PORT=15432

run_as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_bin() { ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1; }

stop() {
  for name in proxy control issuer nats; do
    if [ -f "$DATA/$name.pid" ]; then kill "$(cat "$DATA/$name.pid")" 2>/dev/null || true; rm -f "$DATA/$name.pid"; fi
  done
  if [ -d "$DATA/pg" ]; then run_as_pg "$(pg_bin)/pg_ctl" -D "$DATA/pg" -m fast stop >/dev/null 2>&1 || true; fi
}

wait_port() {
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.2; done
  echo "quickstart: nothing listens on port $1; see $DATA/*.log" >&2; exit 1
}

if [ "${1:-}" = "stop" ]; then stop; echo "stopped"; exit 0; fi
stop

scripts/install-deps.sh
NATS_SERVER=$(scripts/nats-server-path.sh)
echo "quickstart: building (release)..."
cargo build --release --locked -q -p tollgate-data-plane -p tollgate-control-plane
BIN=$ROOT/target/release
mkdir -p "$DATA/secrets" "$DATA/nats"
chmod 700 "$DATA/secrets"

# PostgreSQL: one local cluster holds the demo target database and the projections database.
if [ ! -f "$DATA/pg/PG_VERSION" ]; then
  mkdir -p "$DATA/pg"
  if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$DATA/pg"; fi
  head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$DATA/pg.superuser"
  head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$DATA/secrets/demo.pw"
  cp "$DATA/pg.superuser" "$DATA/pwfile"
  if [ "$(id -u)" -eq 0 ]; then chown postgres "$DATA/pwfile"; fi
  run_as_pg "$(pg_bin)/initdb" -D "$DATA/pg" -U postgres --auth=scram-sha-256 --pwfile="$DATA/pwfile" -E UTF8 --locale=C >/dev/null
  rm -f "$DATA/pwfile"
  FRESH=1
fi
run_as_pg "$(pg_bin)/pg_ctl" -D "$DATA/pg" -w -l "$DATA/pg/server.log" \
  -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=/tmp" start >/dev/null
SUPER_URL="postgres://postgres:$(cat "$DATA/pg.superuser")@127.0.0.1:$PG_PORT"
if [ "${FRESH:-0}" = 1 ]; then
  psql -X -q "$SUPER_URL/postgres" -c "CREATE ROLE app LOGIN PASSWORD '$(cat "$DATA/secrets/demo.pw")'" \
    -c "CREATE DATABASE demo OWNER app" -c "CREATE DATABASE tollgate"
  psql -X -q "postgres://app:$(cat "$DATA/secrets/demo.pw")@127.0.0.1:$PG_PORT/demo" \
    -c "CREATE TABLE orders (id serial PRIMARY KEY, customer text, total numeric(10,2))" \
    -c "INSERT INTO orders (customer, total) VALUES ('acme', 120.50), ('globex', 75.00)"
fi

# NATS the secure way: TLS (a local CA) and one nkey user per component, each allowed only its
# own subjects (tollgate-control nats-config writes the server configuration and the seeds).
if [ ! -f "$DATA/pki/cert.pem" ]; then
  mkdir -p "$DATA/pki"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 -subj /CN=tollgate-quickstart-ca \
    -keyout "$DATA/pki/ca.key" -out "$DATA/pki/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
    -keyout "$DATA/pki/key.pem" -out "$DATA/pki/server.csr" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > "$DATA/pki/server.ext"
  openssl x509 -req -in "$DATA/pki/server.csr" -CA "$DATA/pki/ca.pem" -CAkey "$DATA/pki/ca.key" -CAcreateserial \
    -days 365 -extfile "$DATA/pki/server.ext" -out "$DATA/pki/cert.pem" 2>/dev/null
fi
"$BIN/tollgate-control" nats-config --dir "$DATA/secrets/nats" --node quickstart-proxy --listen 127.0.0.1:$NATS_PORT \
  --store-dir "$DATA/nats" --tls-cert "$DATA/pki/cert.pem" --tls-key "$DATA/pki/key.pem" >/dev/null
"$NATS_SERVER" -c "$DATA/secrets/nats/nats-server.conf" >"$DATA/nats.log" 2>&1 & echo $! > "$DATA/nats.pid"
# One person for the console (an approver in dba and a reviewer), with a password made here.
[ -f "$DATA/secrets/console.pw" ] || (umask 077; openssl rand -hex 12 > "$DATA/secrets/console.pw")
"$BIN/tollgate-control" dev-issuer serve --listen 127.0.0.1:$ISSUER_PORT --key-file "$DATA/secrets/dev-issuer.key" \
  --user "ada:$(cat "$DATA/secrets/console.pw"):tollgate-reviewers,tollgate-approvers,dba" \
  --client "tollgate-console=http://127.0.0.1:$API_PORT/console/callback" --client tollgate-cli \
  >"$DATA/issuer.log" 2>&1 & echo $! > "$DATA/issuer.pid"
wait_port $NATS_PORT; wait_port $ISSUER_PORT

# The control plane signs policy, standing approvals and decisions; the proxy trusts its key.
CONTROL_KEY=$("$BIN/tollgate-control" public-key --key-file "$DATA/secrets/control.key")
cat > "$DATA/control.toml" <<TOML
listen = "127.0.0.1:$API_PORT"
database_url = "$SUPER_URL/tollgate"
signing_key_file = "$DATA/secrets/control.key"
[nats]
url = "tls://127.0.0.1:$NATS_PORT"
nkey = "file:$DATA/secrets/nats/control.nk"
ca_file = "$DATA/pki/ca.pem"
[[reviewer_issuers]]
issuer = "http://127.0.0.1:$ISSUER_PORT"
# tollgate-cli: tokens people get with `tollgate login` (the device sign-in).
audience = ["tollgate-api", "tollgate-cli"]
mapping = { groups_claim = "groups" }
[roles]
reviewer = ["tollgate-reviewers"]
approver = ["tollgate-approvers"]
admin = ["tollgate-admins"]
[console]
issuer = "http://127.0.0.1:$ISSUER_PORT"
client_id = "tollgate-console"
public_url = "http://127.0.0.1:$API_PORT"
TOML
cat > "$DATA/proxy.toml" <<TOML
[node]
name = "quickstart-proxy"
key_file = "$DATA/secrets/node.key"
[nats]
url = "tls://127.0.0.1:$NATS_PORT"
nkey = "file:$DATA/secrets/nats/quickstart-proxy.nk"
ca_file = "$DATA/pki/ca.pem"
[control]
public_key = "$CONTROL_KEY"
[postgres]
listen = "127.0.0.1:$PROXY_PORT"
[[agent_issuers]]
issuer = "http://127.0.0.1:$ISSUER_PORT"
audience = ["tollgate"]
[[resources]]
name = "demo"
host = "127.0.0.1"
port = $PG_PORT
database = "demo"
user = "app"
password = "file:$DATA/secrets/demo.pw"
TOML
"$BIN/tollgate-control" serve --config "$DATA/control.toml" >"$DATA/control.log" 2>&1 & echo $! > "$DATA/control.pid"
wait_port $API_PORT
mint() { "$BIN/tollgate-control" dev-issuer mint --key-file "$DATA/secrets/dev-issuer.key" --issuer "http://127.0.0.1:$ISSUER_PORT" "$@"; }
mint --sub "admin@example.com" --aud tollgate-api --ttl 3600 --group tollgate-admins > "$DATA/admin.token"

# The policy decides who may connect: without one the proxy refuses every agent.
"$BIN/tollgate" --api "http://127.0.0.1:$API_PORT" --token-file "$DATA/admin.token" \
  policy apply -f deploy/quickstart-policy.yaml --comment "quickstart"
"$BIN/tollgate-proxy" --config "$DATA/proxy.toml" >"$DATA/proxy.log" 2>&1 & echo $! > "$DATA/proxy.pid"
wait_port $PROXY_PORT

mint --sub "repo:acme/orders:ref:refs/heads/main" --aud tollgate --ttl 3600 \
  --claim repository=acme/orders --claim workflow=deploy --claim run_id=1 > "$DATA/agent.token"
mint --sub "reviewer@example.com" --aud tollgate-api --ttl 3600 --group tollgate-reviewers > "$DATA/reviewer.token"
mint --sub "dba@example.com" --aud tollgate-api --ttl 3600 --group tollgate-approvers --group dba > "$DATA/approver.token"

echo
echo "quickstart: trying it - one query through the gateway, then the recorded session from the API"
PGPASSWORD="$(cat "$DATA/agent.token")" psql -X "host=127.0.0.1 port=$PROXY_PORT dbname=demo user=ci sslmode=disable" \
  -c "select customer, total from orders order by id"
for _ in $(seq 1 50); do
  sessions=$(curl -fsS -H "Authorization: Bearer $(cat "$DATA/reviewer.token")" "http://127.0.0.1:$API_PORT/api/v1/sessions?limit=1")
  case "$sessions" in *'"ended_at":"'*) break;; esac
  sleep 0.2
done
echo "$sessions"
cat <<MSG

Tollgate is running (logs in .tollgate/*.log; stop with: scripts/quickstart.sh stop).
Connect as the demo agent (its token is the password; the database password stays with the proxy):

  PGPASSWORD="\$(cat .tollgate/agent.token)" psql "host=127.0.0.1 port=$PROXY_PORT dbname=demo user=ci sslmode=disable"

Review what it did:

  curl -s -H "Authorization: Bearer \$(cat .tollgate/reviewer.token)" http://127.0.0.1:$API_PORT/api/v1/sessions
  open http://127.0.0.1:$API_PORT/docs for the API reference
  open http://127.0.0.1:$API_PORT/console and sign in as ada (password in .tollgate/secrets/console.pw)
  target/release/tollgate --api http://127.0.0.1:$API_PORT login --issuer http://127.0.0.1:$ISSUER_PORT
      (sign in as ada at the address it shows; later commands, e.g. tollgate review agents --from ..., use it)

Schema changes wait for a person (the quickstart policy holds ALTER for the dba group):

  PGPASSWORD="\$(cat .tollgate/agent.token)" psql "host=127.0.0.1 port=$PROXY_PORT dbname=demo user=ci sslmode=disable" \\
    -c "ALTER TABLE orders ADD COLUMN note text"          # waits; in another terminal:
  curl -s -H "Authorization: Bearer \$(cat .tollgate/approver.token)" "http://127.0.0.1:$API_PORT/api/v1/approvals?status=pending"
  curl -s -X POST -H "Authorization: Bearer \$(cat .tollgate/approver.token)" -H "Content-Type: application/json" \\
    -d '{"reason":"ok"}' \\
    http://127.0.0.1:$API_PORT/api/v1/approvals/<id>/approve
MSG
