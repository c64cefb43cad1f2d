#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, starts a private
# PostgreSQL on loopback for the control plane's tests, runs every test with nextest, and stops
# what it started (by PID). Used by the README and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*" >&2; }

# --- what the tests need -----------------------------------------------------------------------
need_apt=()
command -v pg_ctlcluster >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v swaks >/dev/null 2>&1 || need_apt+=(swaks)
# Cluster-wide quotas (tests/fleet.rs, tests/cluster_quotas.rs) start a private redis-server.
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# Runs the Node.js receiver example of docs/webhooks.md (control-plane/server/tests/webhooks.rs).
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
# tests/testssl.rs scans the engine's STARTTLS (Debian installs it as `testssl`).
command -v testssl >/dev/null 2>&1 || command -v testssl.sh >/dev/null 2>&1 || need_apt+=(testssl.sh)
# DANE tests (engine/delivery/tests/dane.rs) serve a zone signed at test time from a private named.
command -v named >/dev/null 2>&1 || [ -x /usr/sbin/named ] || need_apt+=(bind9)
command -v dnssec-signzone >/dev/null 2>&1 || need_apt+=(bind9-utils)
# ACME tests (tests/acme.rs) order the engine's certificate from a private pebble.
command -v pebble >/dev/null 2>&1 || need_apt+=(pebble)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}" >/dev/null 2>&1 \
      || echo "WARNING: could not install ${need_apt[*]}; the tests that need them say SKIPPED" >&2
  else
    echo "WARNING: not root; cannot install ${need_apt[*]}" >&2
  fi
fi
if ! python3 -c 'import dkim, nacl, authres' >/dev/null 2>&1; then
  log "installing dkimpy, PyNaCl and authres (independent DKIM and ARC verifier)"
  python3 -m pip install -q dkimpy pynacl authres >/dev/null 2>&1 \
    || echo "WARNING: could not install dkimpy; DKIM verification tests say SKIPPED" >&2
fi
# The control plane's OpenAPI test (control-plane/server/tests/openapi.rs) runs both; it fails
# without them, so a failed install shows there.
if ! python3 -c 'import openapi_spec_validator' >/dev/null 2>&1 \
  || [ "$(schemathesis --version 2>/dev/null)" != "schemathesis, version 4.32.5" ]; then
  log "installing openapi-spec-validator and schemathesis (OpenAPI document checks)"
  python3 -m pip install -q openapi-spec-validator==0.9.0 schemathesis==4.32.5 >/dev/null 2>&1 \
    || echo "WARNING: could not install schemathesis; the control plane's OpenAPI test fails" >&2
fi
# The TLS-RPT test (tests/tls_rpt.rs) validates reports against tests/tlsrpt-schema.json with it.
if ! python3 -c 'import jsonschema' >/dev/null 2>&1; then
  log "installing jsonschema (TLS-RPT report schema checks)"
  python3 -m pip install -q jsonschema >/dev/null 2>&1 \
    || echo "WARNING: could not install jsonschema; the TLS-RPT test fails" >&2
fi
command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest
# promtool checks the metrics exposition and ops/monitoring/petrel-alerts.yml. Debian ships it in
# the prometheus package, whose install would start a Prometheus server: take only the binary.
if [ -z "${PETREL_PROMTOOL:-}" ]; then
  if command -v promtool >/dev/null 2>&1; then
    PETREL_PROMTOOL=$(command -v promtool)
  else
    TOOLS="$(pwd)/target/tools"
    if [ ! -x "$TOOLS/prometheus/usr/bin/promtool" ]; then
      log "fetching promtool (Debian's prometheus package, unpacked under target/tools)"
      mkdir -p "$TOOLS" && (cd "$TOOLS" && rm -f prometheus_*.deb && apt-get download prometheus >/dev/null 2>&1 \
        && dpkg-deb -x prometheus_*.deb prometheus) \
        || echo "WARNING: could not fetch promtool; its checks say SKIPPED" >&2
    fi
    [ -x "$TOOLS/prometheus/usr/bin/promtool" ] && PETREL_PROMTOOL="$TOOLS/prometheus/usr/bin/promtool"
  fi
fi
[ -n "${PETREL_PROMTOOL:-}" ] && export PETREL_PROMTOOL

# --- a private PostgreSQL on loopback -------------------------------------------------------------
PG_PID=""
PG_DIR=""
cleanup() {
  if [ -n "$PG_PID" ] && kill -0 "$PG_PID" 2>/dev/null; then
    kill "$PG_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$PG_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$PG_PID" 2>/dev/null || true
  fi
  [ -n "$PG_DIR" ] && rm -rf "$PG_DIR"
}
trap cleanup EXIT
INITDB=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
if [ -n "$INITDB" ] && [ -z "${PETREL_TEST_PG_URL:-}" ]; then
  PGBIN=$(dirname "$INITDB")
  PG_DIR=$(mktemp -d /tmp/petrel-pg.XXXXXX)
  chown postgres "$PG_DIR" 2>/dev/null || true
  PG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  RUN="runuser -u postgres --"; [ "$(id -u)" = 0 ] || RUN=""
  if $RUN "$PGBIN/initdb" -D "$PG_DIR/data" -U petrel --auth=trust >/dev/null 2>&1; then
    $RUN "$PGBIN/postgres" -D "$PG_DIR/data" -h 127.0.0.1 -p "$PG_PORT" -k "$PG_DIR" \
      -c fsync=off -c max_connections=200 >"$PG_DIR/log" 2>&1 &
    PG_PID=$!
    for _ in $(seq 1 100); do
      "$PGBIN/pg_isready" -h 127.0.0.1 -p "$PG_PORT" >/dev/null 2>&1 && break; sleep 0.1
    done
    export PETREL_TEST_PG_URL="postgres://petrel@127.0.0.1:$PG_PORT/postgres"
    log "PostgreSQL for tests: $PETREL_TEST_PG_URL (pid $PG_PID)"
  else
    echo "WARNING: initdb failed; PostgreSQL tests say SKIPPED" >&2
  fi
fi

# A clean build gains nothing from incremental state, and it is the largest thing under target/.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# --- the tests ------------------------------------------------------------------------------------
log "dependencies: cargo deny check (licenses, bans, sources, advisories; ops/deny.sh)"
ops/deny.sh
log "style: cargo fmt --check and cargo clippy -D warnings"
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
log "running the test suite"
# Everything above installed the peers the tests drive (named, pebble, testssl.sh, dkimpy...):
# a test that finds one missing fails instead of saying SKIPPED (petrel_testkit::peer_missing).
export PETREL_REQUIRE_PEERS=1
cargo nextest run --locked --workspace --no-fail-fast "$@"
du -sh "${CARGO_TARGET_DIR:-target}" 2>/dev/null | sed 's/^/build footprint: /' >&2 || true
