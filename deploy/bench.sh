#!/usr/bin/env bash
# Data-path benchmark: Kafka's own perf tools, direct to Kafka and through
# Custos, in the same run, alternating so machine noise hits both alike.
# Not a test: it asserts nothing; its numbers go into BENCHMARKS.md.
#
#   deploy/bench.sh [ROUNDS]    (default 5 rounds; medians are reported)
#
# Paths per round, in rotating order (BENCH_PATHS, default all five):
#   direct       to Kafka itself
#   proxy        Custos, no authorization, no audit
#   authz        Custos with Cedar authorization (the bench topic and group
#                granted among 200 decoy policies for other principals)
#   audit        authz plus the audit log in strict mode (a response waits
#                until its records are durable)
#   audit-async  authz plus the audit log in async mode
#
# Env: BENCH_RECORDS (default 300000), BENCH_RECORD_SIZE (1024),
#      BENCH_IDLE_CONNS (1000), CUSTOS_BIN (default: target/release/custos,
#      built if missing).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
ROUNDS="${1:-5}"
RECORDS="${BENCH_RECORDS:-300000}"
SIZE="${BENCH_RECORD_SIZE:-1024}"
IDLE="${BENCH_IDLE_CONNS:-1000}"
RUN="$REPO/.cache/bench"
KAFKA_PORT_BASE=49092
DIRECT=127.0.0.1:$KAFKA_PORT_BASE
PROXY=127.0.0.1:49500
ADMIN=127.0.0.1:49400
AUTHZ=127.0.0.1:49510
AUTHZ_ADMIN=127.0.0.1:49410
AUDIT=127.0.0.1:49520
AUDIT_ADMIN=127.0.0.1:49420
AUDIT_ASYNC=127.0.0.1:49530
AUDIT_ASYNC_ADMIN=127.0.0.1:49430
PATHS="${BENCH_PATHS:-direct proxy authz audit audit-async}"
CUSTOS_BIN="${CUSTOS_BIN:-$REPO/target/release/custos}"
[[ -x "$CUSTOS_BIN" ]] || cargo build --release -p custos
rm -rf "$RUN"; mkdir -p "$RUN"

CUSTOS_PID=""
PIDS=()
cleanup() {
  [[ -n "$CUSTOS_PID" ]] && kill "$CUSTOS_PID" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  deploy/kafka.sh stop --dir "$RUN/kafka" >/dev/null 2>&1 || true
}
trap cleanup EXIT

CUSTOS_KAFKA_PORT_BASE=$KAFKA_PORT_BASE deploy/kafka.sh start --dir "$RUN/kafka" >/dev/null
cat > "$RUN/custos.yaml" <<YAML
listen:
  host: 127.0.0.1
  advertised_host: 127.0.0.1
  bootstrap_port: 49500
  broker_port_base: 49600
  max_broker_id: 10
upstream:
  bootstrap_servers: ["$DIRECT"]
admin:
  listen: $ADMIN
log:
  level: warn
YAML
"$CUSTOS_BIN" run --config "$RUN/custos.yaml" 2>"$RUN/custos.log" &
CUSTOS_PID=$!
# The authorizing instance: the perf tools connect unauthenticated, so the
# principal is User::"ANONYMOUS"; 200 decoy policies for other users make the
# policy set look like an imported ACL list rather than one line.
{
  echo '@id("bench-topic") permit (principal == User::"ANONYMOUS", action in [Action::"Write", Action::"Read"], resource == Topic::"bench");'
  echo '@id("bench-groups") permit (principal == User::"ANONYMOUS", action in Action::"Read", resource is ConsumerGroup) when { resource.name like "bench-*" };'
  echo '@id("bench-idempotent") permit (principal == User::"ANONYMOUS", action == Action::"IdempotentWrite", resource == Cluster::"kafka-cluster");'
  for i in $(seq 1 200); do
    echo "@id(\"decoy-$i\") permit (principal == User::\"user-$i\", action in Action::\"Read\", resource is Topic) when { resource.name like \"team-$i.*\" };"
  done
} > "$RUN/bench.cedar"
head -c 32 /dev/urandom > "$RUN/audit.key"
variant() { # name bootstrap-port broker-base admin-addr [audit-mode]
  sed -e "s/bootstrap_port: 49500/bootstrap_port: $2/" -e "s/broker_port_base: 49600/broker_port_base: $3/" \
    -e "s/listen: $ADMIN/listen: $4/" "$RUN/custos.yaml" > "$RUN/custos-$1.yaml"
  printf 'authorization:\n  policies: ["%s"]\n' "$RUN/bench.cedar" >> "$RUN/custos-$1.yaml"
  if [[ -n "${5:-}" ]]; then
    printf 'audit:\n  dir: "%s"\n  signing_key: "%s"\n  mode: %s\n' \
      "$RUN/audit-$1" "$RUN/audit.key" "$5" >> "$RUN/custos-$1.yaml"
  fi
  "$CUSTOS_BIN" run --config "$RUN/custos-$1.yaml" 2>"$RUN/custos-$1.log" &
  PIDS+=($!)
  until curl -fsS "http://$4/readyz" >/dev/null 2>&1; do sleep 0.2; done
}
variant authz 49510 49700 "$AUTHZ_ADMIN"
variant audit 49520 49800 "$AUDIT_ADMIN" strict
variant audit-async 49530 49900 "$AUDIT_ASYNC_ADMIN" async
until curl -fsS "http://$ADMIN/readyz" >/dev/null 2>&1; do sleep 0.2; done

tool() { deploy/kafka.sh tool "$@"; }
tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$DIRECT" --create \
  --topic bench --partitions 6 --replication-factor 1 >/dev/null

# producer: "N records sent, X records/sec (Y MB/sec), A ms avg latency, M ms max latency, p50 ms 50th, p95 ms 95th, p99 ms 99th, ..."
produce() { # bootstrap throughput-limit
  tool org.apache.kafka.tools.ProducerPerformance --topic bench --num-records "$RECORDS" \
    --record-size "$SIZE" --throughput "$2" \
    --producer-props bootstrap.servers="$1" acks=1 linger.ms=5 batch.size=65536 2>/dev/null | tail -1
}
# consumer: csv line with MB/sec (col 4) and nMsg/sec (col 6)
consume() { # bootstrap
  tool org.apache.kafka.tools.ConsumerPerformance --bootstrap-server "$1" --topic bench \
    --messages "$RECORDS" --timeout 60000 --group "bench-$RANDOM-$RANDOM" 2>/dev/null | tail -1
}
field_rate() { sed -E 's/.* ([0-9.]+) records\/sec.*/\1/'; }
field_pct() { sed -E "s/.* ([0-9.]+) ms $1.*/\1/"; }

echo "round,path,produce_rec_s,consume_rec_s" > "$RUN/throughput.csv"
addr() {
  case "$1" in
    direct) echo "$DIRECT" ;; proxy) echo "$PROXY" ;; authz) echo "$AUTHZ" ;;
    audit) echo "$AUDIT" ;; audit-async) echo "$AUDIT_ASYNC" ;;
  esac
}
read -r -a ALL <<< "$PATHS"
for r in $(seq 1 "$ROUNDS"); do
  # Rotate the order each round so drift hits every path alike.
  k=$(( (r - 1) % ${#ALL[@]} ))
  order="${ALL[*]:$k} ${ALL[*]:0:$k}"
  for path in $order; do
    b=$(addr "$path")
    p=$(produce "$b" -1 | field_rate)
    c=$(consume "$b" | cut -d, -f6 | tr -d ' ')
    echo "$r,$path,$p,$c" | tee -a "$RUN/throughput.csv"
  done
done

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
col() { awk -F, -v p="$1" -v c="$2" '$2==p {print $c}' "$RUN/throughput.csv" | median; }
DP=$(col direct 3); PP=$(col proxy 3); DC=$(col direct 4); PC=$(col proxy 4)
# Paired ratios: each round's proxy run against the direct run just before it,
# so slow drift of the machine cancels out; their median is the headline.
paired() { # column [path [baseline]]
  awk -F, -v c="$1" -v p="${2:-proxy}" -v base="${3:-direct}" 'NR == FNR { if ($2 == base) d[$1] = $c; next }
    $2 == p && d[$1] > 0 { print $c / d[$1] }' "$RUN/throughput.csv" "$RUN/throughput.csv" | median
}
PPR=$(paired 3); PCR=$(paired 4)
AP=$(col authz 3); AC=$(col authz 4)
APR=$(paired 3 authz); ACR=$(paired 4 authz)
APP=$(paired 3 authz proxy); ACP=$(paired 4 authz proxy)
SP=$(col audit 3); SC=$(col audit 4); SPA=$(paired 3 audit authz); SCA=$(paired 4 audit authz)
YP=$(col audit-async 3); YC=$(col audit-async 4); YPA=$(paired 3 audit-async authz); YCA=$(paired 4 audit-async authz)

# Latency at a fixed rate: half the direct maximum.
curl -fsS "http://$ADMIN/metrics" > "$RUN/buckets-before.txt"
RATE=$(awk -v d="$DP" 'BEGIN {printf "%d", d/2}')
echo "round,path,p50_ms,p99_ms" > "$RUN/latency.csv"
for r in $(seq 1 "$ROUNDS"); do
  for path in direct proxy; do
    b=$DIRECT; [[ $path == proxy ]] && b=$PROXY
    line=$(produce "$b" "$RATE")
    echo "$r,$path,$(echo "$line" | field_pct 50th),$(echo "$line" | field_pct 99th)" | tee -a "$RUN/latency.csv"
  done
done
curl -fsS "http://$ADMIN/metrics" > "$RUN/buckets-after.txt"
lat() { awk -F, -v p="$1" -v c="$2" '$2==p {print $c}' "$RUN/latency.csv" | median; }
D50=$(lat direct 3); P50=$(lat proxy 3); D99=$(lat direct 4); P99=$(lat proxy 4)

# Memory at idle connections: each completes an ApiVersions round trip through
# Custos (so its upstream connection is open too), then stays idle.
RSS=$(python3 - "$PROXY" "$IDLE" "$CUSTOS_PID" <<'PY'
import socket, struct, sys, time
host, port = sys.argv[1].split(":"); n = int(sys.argv[2]); pid = sys.argv[3]
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
before = rss()
socks = []
req = struct.pack(">hhih", 18, 3, 1, 5) + b"bench" + b"\x00" + b"\x02a\x021\x00"
for i in range(n):
    s = socket.create_connection((host, int(port)))
    s.sendall(struct.pack(">i", len(req)) + req)
    socks.append(s)
for s in socks:
    ln = struct.unpack(">i", s.recv(4))[0]
    got = 0
    while got < ln:
        got += len(s.recv(ln - got))
time.sleep(1)
print(f"{before:.1f},{rss():.1f}")
PY
)

# Custos's own share of each Produce exchange during the fixed-rate rounds,
# from its histogram (bucket upper bounds), diffing snapshots around them.
OWN=$(python3 - "$RUN/buckets-before.txt" "$RUN/buckets-after.txt" <<'PY'
import re, sys
def load(path):
    b = {}
    for line in open(path):
        m = re.match(r'custos_proxy_added_latency_seconds_bucket\{([^}]*)\} (\d+)', line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get("api") == "Produce":
            b[float(labels["le"])] = int(m.group(2))
    return b
before, after = load(sys.argv[1]), load(sys.argv[2])
b = sorted((le, after[le] - before.get(le, 0)) for le in after)
total = b[-1][1] if b else 0
def q(x):
    for le, c in b:
        if total and c >= x * total:
            return le * 1e6
    return float("nan")
print(f"{total} exchanges, p50 <= {q(0.5):.0f} us, p99 <= {q(0.99):.0f} us, p99.9 <= {q(0.999):.0f} us")
PY
)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a/b}'; }
cat <<REPORT

== results (medians of $ROUNDS rounds, $RECORDS records of $SIZE B) ==
produce records/s: direct $DP, through Custos $PP, ratio of medians $(ratio "$PP" "$DP"), median paired ratio $PPR
consume records/s: direct $DC, through Custos $PC, ratio of medians $(ratio "$PC" "$DC"), median paired ratio $PCR
with authorization: produce $AP rec/s, paired ratio to direct $APR, to Custos without authorization $APP
with authorization: consume $AC rec/s, paired ratio to direct $ACR, to Custos without authorization $ACP
authorization decisions during the run: $(curl -fsS "http://$AUTHZ_ADMIN/metrics" | awk '/^custos_authz_(allowed|denied)_total/ {printf "%s=%s ", $1, $2}')
strict audit: produce $SP rec/s, consume $SC rec/s; paired ratio to authz without audit: produce $SPA, consume $SCA
async audit: produce $YP rec/s, consume $YC rec/s; paired ratio to authz without audit: produce $YPA, consume $YCA
audit records written (strict, async): $(curl -fsS "http://$AUDIT_ADMIN/metrics" | awk '/^custos_audit_records_total/ {print $2}'), $(curl -fsS "http://$AUDIT_ASYNC_ADMIN/metrics" | awk '/^custos_audit_records_total/ {print $2}')
strict audit wait per response: $(curl -fsS "http://$AUDIT_ADMIN/metrics" | python3 -c '
import re, sys
b = [(float(m.group(1)), int(m.group(2))) for m in re.finditer(r"custos_audit_wait_seconds_bucket\{le=\"([^\"]+)\"\} (\d+)", sys.stdin.read()) if m.group(1) != "+Inf"]
tot = b[-1][1] if b else 0
q = lambda x: next((le * 1e6 for le, c in b if tot and c >= x * tot), float("nan"))
print(f"{tot} waits, p50 <= {q(0.5):.0f} us, p99 <= {q(0.99):.0f} us")')
produce latency at $RATE rec/s: p50 direct $D50 ms, Custos $P50 ms; p99 direct $D99 ms, Custos $P99 ms
added latency: p50 $(awk -v a="$P50" -v b="$D50" 'BEGIN {printf "%.2f", a-b}') ms, p99 $(awk -v a="$P99" -v b="$D99" 'BEGIN {printf "%.2f", a-b}') ms
Custos's own time per Produce exchange: $OWN
Custos RSS (MB) before,after $IDLE idle connections: $RSS
REPORT
