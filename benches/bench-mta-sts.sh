#!/usr/bin/env bash
# MTA-STS on the relay, and TLS handshake rates (issue 18). Same binary, one run, loopback only;
# every loop bounded; every process stopped by PID.
#
#   benches/bench-mta-sts.sh [BIN]            (BIN defaults to $BIN, then target/release/petrel)
#   MODE=handshakes benches/bench-mta-sts.sh /tmp/bench-target/release/petrel
#
# MODE=relay (the default): the 1,000-domain relay routed by MX, A/B alternated round by round.
# A private dnsmasq (authoritative for SUFFIX, so negative answers carry an SOA and are cached
# like positive ones, 300 s) gives every domain `d<i>.SUFFIX` an MX record naming one host,
# `mx.SUFFIX` -> 127.0.0.1; the engine (`[delivery] nameservers`, `smtp_port` = the sink's port,
# `mta_sts` on, its default) delivers to a `petrel load sink`, which offers STARTTLS, so delivery's
# opportunistic TLS is used on both sides.
#   - side A, "no policies": no `_mta-sts` records (each lookup is an NXDOMAIN).
#   - side B, "policies cached": every domain publishes `_mta-sts` TXT `v=STSv1; id=bench1` and
#     has a `mode: testing` policy naming `mx.SUFFIX` already in the engine's cache file
#     (`<data_dir>/mta-sts-policies.json`, written here in the store's format, format 1), so no
#     policy is fetched: the cost measured is the TXT lookup and the cached policy's use.
# N messages per round from `petrel load inject` (CONNS connections, DOMAINS zipf domains, SIZE
# bytes), ROUNDS rounds alternating A and B. Per round: msg/s from the first injected message
# to the sink's N-th, engine CPU s per 1,000 messages (utime + stime, /proc/<pid>/stat), the
# engine's `petrel_mta_sts_lookups_total` by outcome (B must show `cached`, A `none`), policy
# fetches, sessions under a policy, DNS queries answered by dnsmasq, TLS sessions at the sink.
# Then the medians and B/A (the issue's bar: B's rate at least 0.95 of A's).
#
# MODE=handshakes: TLS handshakes per second and engine CPU per 1,000 handshakes, HS_ROUNDS
# rounds alternating three variants in each direction:
#   - inbound: `petrel engine --no-delivery` (accept and spool, fsync on), the injector opening a
#     new connection per message (`--per-connection 1`) with STARTTLS: `full` (the injector
#     offers no earlier session, `--no-tls-resumption`), `resumed` (rustls's default: tickets
#     offered), and `plain` (no STARTTLS: the same connections without TLS, the baseline).
#   - outbound: the engine relays (`--relay-to`) to the sink with `[delivery]
#     messages_per_connection_max = 1`, so every message is a new connection and, the sink
#     offering STARTTLS, a handshake (opportunistic TLS); the injector reuses its connections.
#     `full` (the sink issues no tickets, `--no-tls-resumption`), `resumed` (the sink's default),
#     `plain` (`--no-starttls`).
# Per run: handshakes/s (TLS sessions counted by the injector or the sink, over the run's time),
# how many resumed, engine CPU s per 1,000 connections, and the TLS share: (variant - plain)
# per 1,000, from which handshakes per core-second follow.
#
# MODE=all runs both. Knobs: N, ROUNDS, CONNS, SIZE, DOMAINS, SUFFIX, TIMEOUT, HS_N, HS_ROUNDS,
# HS_CONNS, HS_VARIANTS ("full resumed plain"), HS_DIRS ("in out"); KEEP=1 keeps the data.
# Needs dnsmasq (Debian `dnsmasq-base`) for MODE=relay.
set -u
cd "$(dirname "$0")/.."
BIN=${1:-${BIN:-target/release/petrel}}
MODE=${MODE:-relay}
N=${N:-100000}; ROUNDS=${ROUNDS:-5}; CONNS=${CONNS:-200}; SIZE=${SIZE:-1024}; TIMEOUT=${TIMEOUT:-300}
DOMAINS=${DOMAINS:-1000}; SUFFIX=${SUFFIX:-sts-bench.test}
HS_N=${HS_N:-30000}; HS_ROUNDS=${HS_ROUNDS:-3}; HS_CONNS=${HS_CONNS:-200}
HS_VARIANTS=${HS_VARIANTS:-full resumed plain}; HS_DIRS=${HS_DIRS:-in out}
SMTP_PORT=${SMTP_PORT:-2781}; SINK_PORT=${SINK_PORT:-2782}; MET_PORT=${MET_PORT:-2783}
DNS_A=${DNS_A:-2784}; DNS_B=${DNS_B:-2785}
MX_HOST="mx.$SUFFIX"; STS_ID=bench1; MAX_AGE=604800
[ -x "$BIN" ] || { echo "no binary at $BIN (cargo build --release --locked -p petrel)" >&2; exit 2; }
case "$MODE" in relay|handshakes|all) ;; *) echo "MODE is relay, handshakes or all" >&2; exit 2;; esac
[ "$DOMAINS" -ge 2 ] || { echo "DOMAINS must be at least 2 (the injector names d<i>.SUFFIX then)" >&2; exit 2; }
TCK=$(getconf CLK_TCK)
PIDS=()        # what runs in the current round
DNS_PIDS=()    # the two dnsmasq, for the whole run
WORK=$(mktemp -d /tmp/petrel-sts.XXXXXX)
cleanup() {
  for p in "${PIDS[@]}" "${DNS_PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  [ "${KEEP:-0}" = 1 ] && echo "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
median() { sort -g | awk '{a[NR]=$1} END{ if(NR==0){print "nan"} else if(NR%2){print a[(NR+1)/2]} else {print (a[NR/2]+a[NR/2+1])/2} }'; }
wait_for() { for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; return 1; }
# A counter of the engine's scrape, summed over the series matching $1.
metric() { curl -s "http://127.0.0.1:$MET_PORT/metrics" | awk -v re="$1" '$0 ~ re {s += $NF} END{printf "%.0f", s}'; }
# A field of the sink's stats file (rewritten every 200 ms).
sink_stat() { local v; v=$(grep -o "\"$2\": *[0-9]*" "$1" 2>/dev/null | grep -o '[0-9]*$'); echo "${v:-0}"; }
per1000() { awk -v t="$1" -v k="$TCK" -v n="$2" 'BEGIN{ if(n>0) printf "%.4f", (t/k)/n*1000; else print "nan"}'; }
stop_round() { kill "${PIDS[@]}" 2>/dev/null; wait "${PIDS[@]}" 2>/dev/null; PIDS=(); }

echo "# $(date -u +%FT%TZ) $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))"
echo "# BIN=$BIN ($(git rev-parse --short HEAD 2>/dev/null)) MODE=$MODE"

# --- MODE=relay ------------------------------------------------------------------------------

# The zone of side $1 (A: MX records only; B: and `_mta-sts` TXT records) as a dnsmasq config.
write_dns_conf() {
  local side=$1 port=$2 conf=$3
  {
    printf 'port=%s\nlisten-address=127.0.0.1\nbind-interfaces\nno-resolv\nno-hosts\n' "$port"
    printf 'auth-server=ns.%s,127.0.0.1\nauth-zone=%s\nauth-ttl=300\n' "$SUFFIX" "$SUFFIX"
    printf 'auth-soa=1,hostmaster.%s,1200,120,604800\nhost-record=%s,127.0.0.1\n' "$SUFFIX" "$MX_HOST"
    for i in $(seq 0 $((DOMAINS - 1))); do
      printf 'mx-host=d%s.%s,%s,10\n' "$i" "$SUFFIX" "$MX_HOST"
      [ "$side" = B ] && printf 'txt-record=_mta-sts.d%s.%s,"v=STSv1; id=%s"\n' "$i" "$SUFFIX" "$STS_ID"
    done
  } > "$conf"
}

# The engine's MTA-STS cache file with a `mode: testing` policy for every domain, fetched now,
# in the format of engine/outbound/src/mta_sts/store.rs (format 1; the policy in its canonical
# text; refresh due after min(1 day, max_age / 2), far beyond the run).
write_policy_cache() {
  awk -v n="$DOMAINS" -v s="$SUFFIX" -v id="$STS_ID" -v mx="$MX_HOST" -v now="$(date +%s)" \
    -v age="$MAX_AGE" 'BEGIN{
      refresh = (age / 2 < 86400) ? int(age / 2) : 86400
      printf "{\"format\":1,\"entries\":["
      for (i = 0; i < n; i++)
        printf "%s{\"domain\":\"d%d.%s\",\"id\":\"%s\",\"policy\":\"version: STSv1\\nmode: testing\\nmx: %s\\nmax_age: %d\\n\",\"fetched_at\":%d,\"expires_at\":%d,\"refresh_at\":%d}", \
          (i ? "," : ""), i, s, id, mx, age, now, now + age, now + refresh
      print "]}"
    }' > "$1"
  python3 -c 'import json,sys; f=json.load(open(sys.argv[1])); assert f["format"]==1 and len(f["entries"])==int(sys.argv[2])' \
    "$1" "$DOMAINS" || { echo "bad policy cache $1" >&2; exit 1; }
}

# Queries dnsmasq answered for its zone so far (SIGUSR1 writes its statistics to the log).
dns_queries() {
  local pid=$1 log=$2 before
  before=$(grep -c 'queries for authoritative zones' "$log")
  kill -USR1 "$pid"
  for _ in $(seq 1 100); do
    [ "$(grep -c 'queries for authoritative zones' "$log")" -gt "$before" ] && break; sleep 0.02
  done
  grep 'queries for authoritative zones' "$log" | tail -1 | awk '{print $NF}'
}

relay_round() {
  local side=$1 round=$2 dns_port dns_pid D
  if [ "$side" = A ]; then dns_port=$DNS_A; dns_pid=${DNS_PIDS[0]}; else dns_port=$DNS_B; dns_pid=${DNS_PIDS[1]}; fi
  D="$WORK/relay-$side-$round"; mkdir -p "$D"
  [ "$side" = B ] && cp "$WORK/mta-sts-policies.json" "$D/mta-sts-policies.json"
  printf '[delivery]\nnameservers = ["127.0.0.1:%s"]\nsmtp_port = %s\nmta_sts = true\n' "$dns_port" "$SINK_PORT" > "$D/engine.toml"
  "$BIN" load sink --listen "127.0.0.1:$SINK_PORT" --duration "$((TIMEOUT + 60))s" --stats-file "$D/stats.json" \
    > /dev/null 2>&1 &
  PIDS+=("$!")
  "$BIN" engine --config "$D/engine.toml" --data-dir "$D" --smtp-listen "127.0.0.1:$SMTP_PORT" \
    --metrics-listen "127.0.0.1:$MET_PORT" --admin-listen 127.0.0.1:0 --trust-network 127.0.0.0/8 \
    > "$D/engine.out" 2> "$D/engine.err" &
  local engine=$!; PIDS+=("$engine")
  wait_for "$D/engine.out" "engine ready" || { echo "engine did not start"; tail -5 "$D/engine.err"; exit 1; }
  if grep -q "MTA-STS cache file ignored" "$D/engine.out" "$D/engine.err"; then
    echo "the engine ignored the policy cache:"; grep -h "MTA-STS" "$D/engine.out" "$D/engine.err"; exit 1
  fi
  local q0 c0 t0 t2 c1 q1 got
  q0=$(dns_queries "$dns_pid" "$WORK/dns-$side.log")
  c0=$(cpu_ticks "$engine"); t0=$(date +%s.%N)
  timeout "$TIMEOUT" "$BIN" load inject --target "127.0.0.1:$SMTP_PORT" --messages "$N" --connections "$CONNS" \
    --size "$SIZE" --domains "$DOMAINS" --domain-suffix "$SUFFIX" --domain-weights zipf --json > "$D/inject.json" 2>/dev/null
  local deadline=$(( $(date +%s) + TIMEOUT ))
  while [ "$(sink_stat "$D/stats.json" messages_accepted)" -lt "$N" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.02; done
  t2=$(date +%s.%N); c1=$(cpu_ticks "$engine")
  q1=$(dns_queries "$dns_pid" "$WORK/dns-$side.log")
  got=$(sink_stat "$D/stats.json" messages_accepted)
  local cached none fetched fetches sessions tls rate cpu
  cached=$(metric '^petrel_mta_sts_lookups_total.*outcome="cached"')
  none=$(metric '^petrel_mta_sts_lookups_total.*outcome="none"')
  fetched=$(metric '^petrel_mta_sts_lookups_total.*outcome="(fetched|stale)"')
  fetches=$(metric '^petrel_mta_sts_fetches_total')
  sessions=$(metric '^petrel_delivery_mta_sts_sessions_total.*mode="testing"')
  sleep 0.3   # the sink's stats file is rewritten every 200 ms
  tls=$(sink_stat "$D/stats.json" tls_sessions)
  stop_round
  rate=$(awk -v n="$got" -v a="$t0" -v b="$t2" 'BEGIN{printf "%.0f", n/(b-a)}')
  cpu=$(per1000 "$((c1 - c0))" "$got")
  rates[$side.$round]=$rate; cpus[$side.$round]=$cpu
  echo "round=$round side=$side: $got/$N delivered, $rate msg/s, engine $cpu CPU s/1000 msgs;" \
    "MTA-STS lookups cached=$cached none=$none fetched/stale=$fetched, fetches=$fetches," \
    "sessions under a testing policy=$sessions; DNS queries $((q1 - q0)); TLS sessions at the sink $tls"
  [ "${KEEP:-0}" = 1 ] || rm -rf "$D"
}

run_relay() {
  command -v dnsmasq > /dev/null || { echo "dnsmasq is needed (apt-get install dnsmasq-base)" >&2; exit 2; }
  echo "# relay: N=$N ROUNDS=$ROUNDS CONNS=$CONNS SIZE=$SIZE DOMAINS=$DOMAINS zipf, MX $MX_HOST -> 127.0.0.1:$SINK_PORT"
  write_policy_cache "$WORK/mta-sts-policies.json"
  for side in A B; do
    if [ "$side" = A ]; then port=$DNS_A; else port=$DNS_B; fi
    write_dns_conf "$side" "$port" "$WORK/dns-$side.conf"
    dnsmasq --keep-in-foreground --conf-file="$WORK/dns-$side.conf" --log-facility="$WORK/dns-$side.log" \
      --pid-file="$WORK/dns-$side.pid" &
    DNS_PIDS+=("$!")
    wait_for "$WORK/dns-$side.log" "started" || { echo "dnsmasq $side did not start"; exit 1; }
  done
  declare -gA rates cpus
  for round in $(seq 1 "$ROUNDS"); do
    for side in A B; do relay_round "$side" "$round"; done
  done
  for side in A B; do
    m=$(for r in $(seq 1 "$ROUNDS"); do echo "${rates[$side.$r]}"; done | median)
    c=$(for r in $(seq 1 "$ROUNDS"); do echo "${cpus[$side.$r]}"; done | median)
    echo "MEDIAN side=$side: $m msg/s, engine $c CPU s/1000 msgs"
    eval "med_$side=$m"; eval "cmed_$side=$c"
  done
  echo "RATIO B/A: rate $(awk -v a="$med_A" -v b="$med_B" 'BEGIN{printf "%.3f", b/a}')" \
    "(bar: at least 0.95), engine CPU per message $(awk -v a="$cmed_A" -v b="$cmed_B" 'BEGIN{printf "%.3f", b/a}')"
}

# --- MODE=handshakes -------------------------------------------------------------------------

# One inbound run: a new connection per message, with STARTTLS unless plain.
hs_in() {
  local variant=$1 round=$2 D="$WORK/hs-in-$1-$2" flags=""
  mkdir -p "$D"
  case "$variant" in full) flags="--starttls --no-tls-resumption";; resumed) flags="--starttls";; esac
  "$BIN" engine --data-dir "$D" --smtp-listen "127.0.0.1:$SMTP_PORT" --metrics-listen "127.0.0.1:$MET_PORT" \
    --admin-listen 127.0.0.1:0 --trust-network 127.0.0.0/8 --no-delivery > "$D/engine.out" 2> "$D/engine.err" &
  local engine=$!; PIDS+=("$engine")
  wait_for "$D/engine.out" "engine ready" || { echo "engine did not start"; tail -5 "$D/engine.err"; exit 1; }
  local c0 t0 t1 c1
  c0=$(cpu_ticks "$engine"); t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  timeout "$TIMEOUT" "$BIN" load inject --target "127.0.0.1:$SMTP_PORT" --messages "$HS_N" --connections "$HS_CONNS" \
    --per-connection 1 --size "$SIZE" --domains "$DOMAINS" --domain-weights zipf $flags --json > "$D/inject.json" 2>/dev/null
  t1=$(date +%s.%N); c1=$(cpu_ticks "$engine")
  stop_round
  local fields
  fields=$(python3 -c '
import json, sys
r = json.load(open(sys.argv[1])); c = r["counts"]
print(c["messages_2xx"], c["connections_opened"], c["tls_sessions"], c["tls_resumed"], "%.3f" % r["cpu_s_per_1000_msgs"])' "$D/inject.json" 2>/dev/null)
  hs_report in "$variant" "$round" "$t0" "$t1" "$((c1 - c0))" ${fields:-0 0 0 0 nan}
  [ "${KEEP:-0}" = 1 ] || rm -rf "$D"
}

# One outbound run: every delivery a new connection to the sink, with STARTTLS unless plain.
hs_out() {
  local variant=$1 round=$2 D="$WORK/hs-out-$1-$2" flags=""
  mkdir -p "$D"
  case "$variant" in full) flags="--no-tls-resumption";; plain) flags="--no-starttls";; esac
  printf '[delivery]\nmessages_per_connection_max = 1\n' > "$D/engine.toml"
  # shellcheck disable=SC2086
  "$BIN" load sink --listen "127.0.0.1:$SINK_PORT" --duration "$((TIMEOUT + 60))s" --stats-file "$D/stats.json" \
    $flags > /dev/null 2>&1 &
  PIDS+=("$!")
  "$BIN" engine --config "$D/engine.toml" --data-dir "$D" --smtp-listen "127.0.0.1:$SMTP_PORT" \
    --metrics-listen "127.0.0.1:$MET_PORT" --admin-listen 127.0.0.1:0 --relay-to "127.0.0.1:$SINK_PORT" \
    --trust-network 127.0.0.0/8 > "$D/engine.out" 2> "$D/engine.err" &
  local engine=$!; PIDS+=("$engine")
  wait_for "$D/engine.out" "engine ready" || { echo "engine did not start"; tail -5 "$D/engine.err"; exit 1; }
  local c0 t0 t1 c1 got
  c0=$(cpu_ticks "$engine"); t0=$(date +%s.%N)
  timeout "$TIMEOUT" "$BIN" load inject --target "127.0.0.1:$SMTP_PORT" --messages "$HS_N" --connections "$HS_CONNS" \
    --size "$SIZE" --domains "$DOMAINS" --domain-weights zipf --json > "$D/inject.json" 2>/dev/null
  local deadline=$(( $(date +%s) + TIMEOUT ))
  while [ "$(sink_stat "$D/stats.json" messages_accepted)" -lt "$HS_N" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.02; done
  t1=$(date +%s.%N); c1=$(cpu_ticks "$engine")
  sleep 0.3   # the sink's stats file is rewritten every 200 ms
  got=$(sink_stat "$D/stats.json" messages_accepted)
  local conns tls resumed
  conns=$(sink_stat "$D/stats.json" connections_total)
  tls=$(sink_stat "$D/stats.json" tls_sessions); resumed=$(sink_stat "$D/stats.json" tls_resumed)
  stop_round
  hs_report out "$variant" "$round" "$t0" "$t1" "$((c1 - c0))" "$got" "$conns" "$tls" "$resumed" ""
  [ "${KEEP:-0}" = 1 ] || rm -rf "$D"
}

# Prints one run and keeps its figures: direction variant round t0 t1 engine-ticks messages
# connections tls-sessions resumed injector-cpu.
hs_report() {
  local dir=$1 variant=$2 round=$3 t0=$4 t1=$5 ticks=$6 msgs=$7 conns=$8 tls=$9 resumed=${10} icpu=${11}
  local rate cpu
  rate=$(awk -v n="$conns" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", n/(b-a)}')
  cpu=$(per1000 "$ticks" "$conns")
  hrates[$dir.$variant.$round]=$rate; hcpus[$dir.$variant.$round]=$cpu
  echo "$dir variant=$variant round=$round: $msgs messages over $conns connections, $tls TLS ($resumed resumed)," \
    "$rate connections/s, engine $cpu CPU s/1000 connections${icpu:+, injector $icpu CPU s/1000 msgs}"
}

run_handshakes() {
  echo "# handshakes: HS_N=$HS_N HS_ROUNDS=$HS_ROUNDS HS_CONNS=$HS_CONNS SIZE=$SIZE, variants: $HS_VARIANTS, directions: $HS_DIRS"
  declare -gA hrates hcpus
  for round in $(seq 1 "$HS_ROUNDS"); do
    for dir in $HS_DIRS; do
      for variant in $HS_VARIANTS; do "hs_$dir" "$variant" "$round"; done
    done
  done
  for dir in $HS_DIRS; do
    for variant in $HS_VARIANTS; do
      m=$(for r in $(seq 1 "$HS_ROUNDS"); do echo "${hrates[$dir.$variant.$r]}"; done | median)
      c=$(for r in $(seq 1 "$HS_ROUNDS"); do echo "${hcpus[$dir.$variant.$r]}"; done | median)
      eval "hm_${dir}_$variant=$m"; eval "hc_${dir}_$variant=$c"
      line="MEDIAN $dir variant=$variant: $m connections/s, engine $c CPU s/1000 connections"
      if [ "$variant" != plain ] && [[ " $HS_VARIANTS " == *" plain "* ]]; then
        plain_c=$(for r in $(seq 1 "$HS_ROUNDS"); do echo "${hcpus[$dir.plain.$r]}"; done | median)
        line="$line; the TLS share $(awk -v a="$c" -v p="$plain_c" 'BEGIN{d=a-p; if(d>0) printf "%.4f CPU s/1000 handshakes = %.0f handshakes per core-second", d, 1000/d; else print "not above the plain run"}')"
      fi
      line="$line; whole connections per core-second $(awk -v a="$c" 'BEGIN{ if(a>0) printf "%.0f", 1000/a; else print "nan"}')"
      echo "$line"
    done
  done
}

case "$MODE" in
  relay) run_relay;;
  handshakes) run_handshakes;;
  all) run_relay; run_handshakes;;
esac
