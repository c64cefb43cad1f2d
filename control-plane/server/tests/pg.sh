#!/bin/sh
# Runs petrel-control's PostgreSQL tests against a throwaway cluster on 127.0.0.1.
# Needs Debian's postgresql package (apt-get install -y postgresql). With PETREL_TEST_PG_URL
# already set, uses that server instead. Stops the cluster it started (by PID) on exit.
set -eu
cd "$(dirname "$0")/../../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-control}"
if [ -n "${PETREL_TEST_PG_URL:-}" ]; then
    exec cargo test --locked -p petrel-control --test pg -- --nocapture
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$PGBIN" ] || { echo "postgresql not installed (apt-get install -y postgresql)" >&2; exit 1; }
DIR=$(mktemp -d /tmp/petrel-pg.XXXXXX)
PORT=$(( 20000 + $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 20000 ))
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
[ "$(id -u)" = 0 ] && chown postgres "$DIR"
as_pg "$PGBIN/initdb" -D "$DIR/data" -A trust -U postgres >"$DIR/initdb.log" 2>&1
as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w \
    -o "-h 127.0.0.1 -p $PORT -k $DIR -c fsync=off" start >/dev/null
PID=$(head -n 1 "$DIR/data/postmaster.pid")
cleanup() {
    kill -INT "$PID" 2>/dev/null || true
    i=0
    while kill -0 "$PID" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    rm -rf "$DIR"
}
trap cleanup EXIT INT TERM
echo "postgres pid $PID on 127.0.0.1:$PORT"
PETREL_TEST_PG_URL="postgres://postgres@127.0.0.1:$PORT/postgres" \
    cargo test --locked -p petrel-control --test pg -- --nocapture
