#!/usr/bin/env bash
# Time from an admin API change to its application on every shard of a running engine, with
# TENANTS tenants configured (issue 5).
#
#   benches/bench-propagation.sh          # TENANTS=10000 CHANGES=7
#   PG=1 benches/bench-propagation.sh     # the control plane on a private PostgreSQL instead
#   PG=1 NODE2=1 benches/bench-propagation.sh  # changes made through a second control plane
#                                         # node on the same database (the engine stays on the
#                                         # first): the cross-node path, PostgreSQL NOTIFY
#
# Starts `petrel up` (control plane + engine, SQLite) on loopback ports of its own, seeds TENANTS
# tenants straight into the control plane's SQLite database (creating each through the API would
# spend TENANTS argon2id hashes on their admin keys, minutes of setup for nothing this benchmark
# measures), then makes CHANGES quota changes through `PUT /v1/tenants/{id}/limits` with the
# owner key. For each change: the clock starts before the request and stops when the engine's
# `petrel_policy_version` gauge shows the new version (set once the snapshot is decoded,
# validated, persisted and swapped in for all shards at once), polled every millisecond; the
# control plane's `GET /v1/engines` acknowledgement is read too. Every process is stopped by PID.
set -u
cd "$(dirname "$0")/.."
TENANTS=${TENANTS:-10000}; CHANGES=${CHANGES:-7}
BIN=$(pwd)/target/release/petrel
[ -x "$BIN" ] || cargo build --locked --release --bin petrel >&2 || exit 1
W=$(mktemp -d /tmp/petrel-prop.XXXXXX)
chmod 755 "$W"
UP=""; PG_PID=""; DB_URL=""; STORE=SQLite; NODE2_PID=""; API_PORT=3080
cleanup() {
  [ -n "$NODE2_PID" ] && kill "$NODE2_PID" 2>/dev/null && wait "$NODE2_PID" 2>/dev/null
  [ -n "$UP" ] && kill "$UP" 2>/dev/null && wait "$UP" 2>/dev/null
  if [ -n "$PG_PID" ]; then
    kill "$PG_PID" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$PG_PID" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -rf "$W"
}
trap cleanup EXIT
if [ "${PG:-0}" = 1 ]; then
  # A private PostgreSQL on a loopback port of its own (Debian's packages), stopped by PID.
  INITDB=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)
  [ -n "$INITDB" ] || { echo "PG=1 needs Debian's postgresql (ops/test.sh installs it)"; exit 1; }
  PGBIN=$(dirname "$INITDB"); RUN="runuser -u postgres --"; [ "$(id -u)" = 0 ] || RUN=""
  mkdir -p "$W/pg" && chown postgres "$W/pg" 2>/dev/null
  $RUN "$PGBIN/initdb" -D "$W/pg/data" -U petrel --auth=trust > /dev/null || exit 1
  $RUN "$PGBIN/postgres" -D "$W/pg/data" -h 127.0.0.1 -p 3054 -k "$W/pg" > "$W/pg/log" 2>&1 &
  PG_PID=$!
  for _ in $(seq 1 100); do "$PGBIN/pg_isready" -h 127.0.0.1 -p 3054 -q && break; sleep 0.1; done
  DB_URL="postgres://petrel@127.0.0.1:3054/postgres"; STORE=PostgreSQL
fi
(cd "$W" && exec "$BIN" up --data-dir "$W/data" --smtp-listen 127.0.0.1:3025 --api-listen 127.0.0.1:3080 \
   --push-listen 127.0.0.1:3081 --metrics-listen 127.0.0.1:3082 --admin-listen 127.0.0.1:3083 \
   ${DB_URL:+--database-url "$DB_URL"} > "$W/up.out" 2> "$W/up.err") &
UP=$!
for _ in $(seq 1 300); do grep -q "owner API key" "$W/up.out" 2>/dev/null && break; sleep 0.1; done
KEY=$(grep -o 'owner API key (shown once, keep it): [^ ]*' "$W/up.out" | awk '{print $NF}')
[ -n "$KEY" ] || { echo "petrel up did not print an owner key"; cat "$W/up.err" | tail -5; exit 1; }
if [ "${NODE2:-0}" = 1 ]; then
  [ -n "$DB_URL" ] || { echo "NODE2=1 needs PG=1"; exit 1; }
  "$BIN" control serve --data-dir "$W/node2" --database-url "$DB_URL" --api-listen 127.0.0.1:3090 \
    --push-listen 127.0.0.1:3091 > "$W/node2.out" 2>&1 &
  NODE2_PID=$!; API_PORT=3090; STORE="PostgreSQL, changes through a second node"
  for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:3090/v1/openapi.json && break; sleep 0.1; done
fi
echo "# $(date -u +%FT%TZ) $(nproc) cores; TENANTS=$TENANTS CHANGES=$CHANGES ($STORE, one engine, $(grep -c ^processor /proc/cpuinfo) shards)"
python3 - "$W/data/control/petrel.db" "$KEY" "$TENANTS" "$CHANGES" "$DB_URL" "$API_PORT" <<'PY'
import http.client, json, sqlite3, subprocess, sys, time
db_path, key, tenants, changes, db_url = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
api_port = int(sys.argv[6])
now = int(time.time() * 1000)
rows = [(f"ten_bench{i:06d}", f"bench-{i:06d}", 100 + i % 50, 1_000_000, now) for i in range(tenants)]
t0 = time.monotonic()
if db_url:
    # PostgreSQL through psql: COPY the rows in, read the version with a query.
    copy = "".join(f"{t}\t{n}\t0\t0\t{m}\t{d}\t0\t{c}\n" for t, n, m, d, c in rows)
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", db_url, "-c",
                    "COPY tenants (id, name, is_operator, suspended, messages_per_second_max,"
                    " messages_per_day_max, allow_unverified_domains, created_unix_ms) FROM STDIN"],
                   input=copy.encode(), check=True)
    def policy_version():
        out = subprocess.run(["psql", "-tA", db_url, "-c",
                              "SELECT policy_version FROM petrel_meta WHERE id = 1"],
                             capture_output=True, check=True)
        return int(out.stdout.strip())
else:
    db = sqlite3.connect(db_path, timeout=30)
    with db:
        db.executemany(
            "INSERT INTO tenants (id, name, is_operator, suspended, messages_per_second_max,"
            " messages_per_day_max, allow_unverified_domains, created_unix_ms)"
            " VALUES (?, ?, 0, 0, ?, ?, 0, ?)", rows)
    def policy_version():
        return db.execute("SELECT policy_version FROM petrel_meta WHERE id = 1").fetchone()[0]
print(f"seeded {tenants} tenants in {time.monotonic() - t0:.2f}s")

def metric_version():
    c = http.client.HTTPConnection("127.0.0.1", 3082, timeout=5)
    c.request("GET", "/metrics")
    for line in c.getresponse().read().decode().splitlines():
        if line.startswith("petrel_policy_version "):
            return int(float(line.split()[1]))
    return -1

api = http.client.HTTPConnection("127.0.0.1", api_port, timeout=30)
def call(method, path, body=None):
    api.request(method, path, body=json.dumps(body) if body is not None else None,
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    r = api.getresponse()
    return r.status, json.loads(r.read() or b"null")

times, acks = [], []
for n in range(changes):
    target = f"ten_bench{(n * 7919) % tenants:06d}"
    before = policy_version()
    start = time.monotonic()
    status, _ = call("PUT", f"/v1/tenants/{target}/limits",
                     {"messages_per_second_max": 1000 + n, "messages_per_day_max": 5_000_000})
    if status != 200:
        sys.exit(f"PUT limits answered {status}")
    want = policy_version()
    assert want > before, (want, before)
    applied = None
    deadline = start + 30
    while time.monotonic() < deadline:
        if metric_version() >= want:
            applied = time.monotonic() - start
            break
        time.sleep(0.001)
    ack = None
    while time.monotonic() < deadline:
        _, engines = call("GET", "/v1/engines")
        if engines and all(e["applied_version"] >= want for e in engines):
            ack = time.monotonic() - start
            break
        time.sleep(0.002)
    print(f"change {n + 1}: version {want}: applied on all shards after "
          f"{applied * 1000:.0f} ms, acknowledged to the control plane after {ack * 1000:.0f} ms"
          if applied is not None and ack is not None else f"change {n + 1}: not applied within 30 s")
    if applied is not None:
        times.append(applied * 1000)
    if ack is not None:
        acks.append(ack * 1000)
    time.sleep(0.2)
times.sort(); acks.sort()
if times:
    print(f"MEDIAN applied {times[len(times) // 2]:.0f} ms (max {times[-1]:.0f} ms), "
          f"acknowledged {acks[len(acks) // 2]:.0f} ms, with {tenants} tenants")
PY
# The snapshot the engine applied and persisted (its size shows the tenants are in it).
find "$W/data" -name 'snapshot.rkyv' -printf 'engine snapshot: %s bytes\n'
