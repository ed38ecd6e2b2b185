#!/usr/bin/env bash
# Data-path benchmark: Kafka's own perf tools, direct to Kafka and through
# Custos, in the same run, alternating so machine noise hits both alike.
# Not a test: it asserts nothing; its numbers go into BENCHMARKS.md.
#
#   deploy/bench.sh [ROUNDS]    (default 5 rounds; medians are reported)
#
# Paths per round, in rotating order (BENCH_PATHS, default all eight):
#   direct       to Kafka itself
#   proxy        Custos, no authorization, no audit
#   authz        Custos with Cedar authorization (the bench topic and group
#                granted among 200 decoy policies for other principals)
#   audit        authz plus the audit log in strict mode (a response waits
#                until its records are durable)
#   audit-async  authz plus the audit log in async mode
#   json         authz, but records are 1 KiB JSON documents (the payload of
#                enc-json) to a topic without rules: enc-json's baseline
#   enc-value    authz plus field encryption: whole values encrypted on
#                produce, decrypted on consume (the principal may Decrypt)
#   enc-json     the same instance: two string fields of each JSON document
#                encrypted on produce, decrypted on consume
#   share        authz, consumed by a share group (KIP-932) with Kafka's
#                share-consumer perf tool: enc-share's baseline
#   enc-share    the enc instance: whole values encrypted on produce,
#                revealed in ShareFetch answers to a share group
# Encryption needs authorization (Decrypt is a Cedar action), so authz is the
# pass-through baseline of enc-value, share that of enc-share and json that of enc-json (not authz: with
# --record-size the perf producer draws fresh random bytes for every record,
# with --payload-file it does not, so its own CPU use differs). Any subset
# runs, e.g. BENCH_PATHS="authz json enc-value enc-json"; the latency and
# own-time measures need direct and proxy, the idle-connection one proxy.
#
# BENCH_PAYLOAD=file makes the paths without a payload file of their own
# (direct, proxy, authz, audit, audit-async, enc-value) send 1000 distinct
# pre-drawn records of random letters instead: the perf producer then does
# not draw ~1 KiB of fresh random bytes per record, which on a small machine
# keeps one core busy and so charges the proxy's CPU to the producer one for
# one. Default: random (the tool's --record-size).
#
# BENCH_DEK_REFERENCE=inline makes the enc instance carry each data key
# wrapped in every envelope (the default elsewhere) instead of storing it
# once in a key topic (encryption.dek.reference: stored, the default here).
#
# BENCH_BROKERS=3 runs the cluster as three brokers (the harness's second
# shape) instead of one; the topics keep 6 partitions and replication factor
# 1, so their leaders spread over the three. It matters for consumers: the
# Java consumer asks a broker for more only once it has drained everything
# it buffered from that broker, so with one broker every answer's time in
# Custos is added to each fetch cycle, while with three it works on one
# broker's answer while another's is on its way (BENCHMARKS.md, window AS).
#
# Env: BENCH_PATHS, BENCH_PAYLOAD, BENCH_DEK_REFERENCE, BENCH_BROKERS (1), BENCH_RECORDS (default 300000), BENCH_RECORD_SIZE (1024),
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
ENC=127.0.0.1:49540
ENC_ADMIN=127.0.0.1:49440
PATHS="${BENCH_PATHS:-direct proxy authz audit audit-async json enc-value enc-json}"
PAYLOAD_MODE="${BENCH_PAYLOAD:-random}"
DEK_REFERENCE="${BENCH_DEK_REFERENCE:-stored}"
BROKERS="${BENCH_BROKERS:-1}"
case "$BROKERS" in
  1|3) ;;
  *) echo "bench.sh: BENCH_BROKERS must be 1 or 3, not '$BROKERS'" >&2; exit 2 ;;
esac
case "$DEK_REFERENCE" in
  stored|inline) ;;
  *) echo "bench.sh: BENCH_DEK_REFERENCE must be stored or inline, not '$DEK_REFERENCE'" >&2; exit 2 ;;
esac
case "$PAYLOAD_MODE" in
  random|file) ;;
  *) echo "bench.sh: BENCH_PAYLOAD must be random or file, not '$PAYLOAD_MODE'" >&2; exit 2 ;;
esac
for p in $PATHS; do
  case "$p" in
    direct|proxy|authz|audit|audit-async|json|enc-value|enc-json|share|enc-share) ;;
    *) echo "bench.sh: unknown path '$p' in BENCH_PATHS" >&2; exit 2 ;;
  esac
done
has() { [[ " $PATHS " == *" $1 "* ]]; }
CUSTOS_BIN="${CUSTOS_BIN:-$REPO/target/release/custos}"
[[ -x "$CUSTOS_BIN" ]] || cargo build --release -p custos
rm -rf "$RUN"; mkdir -p "$RUN"

CUSTOS_PID=""
PIDS=()
# Waits until the instance (pid, admin address, log) answers /readyz; one
# that exits first (e.g. its port was taken: these ports sit in Linux's
# ephemeral range, so an outgoing connection can hold one for a while) stops
# the run with its last log line instead of waiting forever.
wait_ready() { # pid admin-addr log
  for _ in $(seq 1 300); do
    curl -fsS "http://$2/readyz" >/dev/null 2>&1 && return 0
    if ! kill -0 "$1" 2>/dev/null; then
      echo "bench.sh: Custos ($3) exited before it was ready: $(tail -1 "$3")" >&2
      exit 1
    fi
    sleep 0.2
  done
  echo "bench.sh: Custos ($3) not ready after 60 s" >&2
  exit 1
}
cleanup() {
  [[ -n "$CUSTOS_PID" ]] && kill "$CUSTOS_PID" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  deploy/kafka.sh stop --dir "$RUN/kafka" >/dev/null 2>&1 || true
}
trap cleanup EXIT

CUSTOS_KAFKA_PORT_BASE=$KAFKA_PORT_BASE deploy/kafka.sh start --brokers "$BROKERS" --dir "$RUN/kafka" >/dev/null
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
# The authorizing instances: the perf tools connect unauthenticated, so the
# principal is User::"ANONYMOUS"; 200 decoy policies for other users make the
# policy set look like an imported ACL list rather than one line. Decrypt is
# granted on the encrypted topics only (only the enc instance has rules).
{
  echo '@id("bench-topic") permit (principal == User::"ANONYMOUS", action in [Action::"Write", Action::"Read"], resource == Topic::"bench");'
  echo '@id("bench-json-topic") permit (principal == User::"ANONYMOUS", action in [Action::"Write", Action::"Read"], resource == Topic::"bench.json");'
  echo '@id("bench-enc-value") permit (principal == User::"ANONYMOUS", action in [Action::"Write", Action::"Read", Action::"Decrypt"], resource == Topic::"bench.enc.value");'
  echo '@id("bench-share-topic") permit (principal == User::"ANONYMOUS", action in [Action::"Write", Action::"Read"], resource == Topic::"bench.share");'
  echo '@id("bench-enc-share") permit (principal == User::"ANONYMOUS", action in [Action::"Write", Action::"Read", Action::"Decrypt"], resource == Topic::"bench.enc.share");'
  echo '@id("bench-enc-json") permit (principal == User::"ANONYMOUS", action in [Action::"Write", Action::"Read", Action::"Decrypt"], resource == Topic::"bench.enc.json");'
  echo '@id("bench-groups") permit (principal == User::"ANONYMOUS", action in Action::"Read", resource is ConsumerGroup) when { resource.name like "bench-*" };'
  echo '@id("bench-idempotent") permit (principal == User::"ANONYMOUS", action == Action::"IdempotentWrite", resource == Cluster::"kafka-cluster");'
  for i in $(seq 1 200); do
    echo "@id(\"decoy-$i\") permit (principal == User::\"user-$i\", action in Action::\"Read\", resource is Topic) when { resource.name like \"team-$i.*\" };"
  done
} > "$RUN/bench.cedar"
head -c 32 /dev/urandom > "$RUN/audit.key"
head -c 32 /dev/urandom > "$RUN/master.key"
variant() { # name bootstrap-port broker-base admin-addr [strict|async|enc]
  sed -e "s/bootstrap_port: 49500/bootstrap_port: $2/" -e "s/broker_port_base: 49600/broker_port_base: $3/" \
    -e "s/listen: $ADMIN/listen: $4/" "$RUN/custos.yaml" > "$RUN/custos-$1.yaml"
  printf 'authorization:\n  policies: ["%s"]\n' "$RUN/bench.cedar" >> "$RUN/custos-$1.yaml"
  case "${5:-}" in
    strict|async)
      printf 'audit:\n  dir: "%s"\n  signing_key: "%s"\n  mode: %s\n' \
        "$RUN/audit-$1" "$RUN/audit.key" "$5" >> "$RUN/custos-$1.yaml" ;;
    enc)
      # Embedded keyring (the default KMS); one KEK for both rules. Data
      # keys stored once in a key topic and named by id in the envelopes
      # (BENCH_DEK_REFERENCE=inline: carried wrapped in every envelope).
      head -c 32 /dev/urandom > "$RUN/token.key"
      cat >> "$RUN/custos-$1.yaml" <<YAML
encryption:
  kms:
    local:
      keyring: "$RUN/keyring.json"
      master_key_file: "$RUN/master.key"
  dek:
    reference: $DEK_REFERENCE
  subject_keys:
    topic: _custos_bench_keys
    replication_factor: 1
    token_key_file: "$RUN/token.key"
  rules:
    - name: bench-values
      topics: {exact: "bench.enc.value"}
      kek: bench-kek
      classification: confidential
      value: true
    - name: bench-share-values
      topics: {exact: "bench.enc.share"}
      kek: bench-kek
      classification: confidential
      value: true
    - name: bench-json-fields
      topics: {exact: "bench.enc.json"}
      kek: bench-kek
      classification: pii
      json_fields: ["\$.email", "\$.card.number"]
YAML
      "$CUSTOS_BIN" keys --config "$RUN/custos-$1.yaml" create bench-kek >/dev/null ;;
  esac
  "$CUSTOS_BIN" run --config "$RUN/custos-$1.yaml" 2>"$RUN/custos-$1.log" &
  PIDS+=($!)
  wait_ready "${PIDS[-1]}" "$4" "$RUN/custos-$1.log"
}
if has authz || has json || has share; then variant authz 49510 49700 "$AUTHZ_ADMIN"; fi
if has audit; then variant audit 49520 49800 "$AUDIT_ADMIN" strict; fi
if has audit-async; then variant audit-async 49530 49900 "$AUDIT_ASYNC_ADMIN" async; fi
if has enc-value || has enc-json || has enc-share; then variant enc 49540 50000 "$ENC_ADMIN" enc; fi
wait_ready "$CUSTOS_PID" "$ADMIN" "$RUN/custos.log"

# enc-json's records (and json's): 1000 distinct JSON documents of exactly
# SIZE bytes, one a line, picked at random by the producer. Two string fields
# are protected ($.email, $.card.number, one nested); the rest stays readable.
python3 - "$SIZE" > "$RUN/payload.jsonl" <<'PY'
import json, random, sys
size = int(sys.argv[1]); rnd = random.Random(5)
words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()
for i in range(1000):
    doc = {
        "id": i, "customer_id": f"C{rnd.randrange(10**8):08d}",
        "name": f"{rnd.choice(words).title()} {rnd.choice(words).title()}",
        "email": f"person{i}.{rnd.randrange(10**6)}@example.org",
        "card": {"number": "-".join(f"{rnd.randrange(10**4):04d}" for _ in range(4)),
                 "brand": rnd.choice(["visa", "mastercard", "amex"]), "expiry": f"{rnd.randint(1, 12):02d}/{rnd.randint(27, 33)}"},
        "address": {"city": rnd.choice(["Gent", "Brugge", "Leuven", "Namur"]), "zip": f"{rnd.randint(1000, 9999)}"},
        "items": [{"sku": f"SKU-{rnd.randrange(10**5):05d}", "qty": rnd.randint(1, 9), "price": round(rnd.uniform(1, 500), 2)}
                  for _ in range(rnd.randint(2, 5))],
        "created_at": f"2026-11-{rnd.randint(1, 28):02d}T{rnd.randint(0, 23):02d}:{rnd.randint(0, 59):02d}:00Z",
        "notes": "",
    }
    line = json.dumps(doc, separators=(",", ":"))
    pad = size - len(line)
    if pad < 0:
        sys.exit(f"a JSON document needs more than {size} bytes; set BENCH_RECORD_SIZE higher")
    doc["notes"] = " ".join(rnd.choice(words) for _ in range(pad))[:pad]
    line = json.dumps(doc, separators=(",", ":"))
    assert len(line) == size
    print(line)
PY

# BENCH_PAYLOAD=file: 1000 records of SIZE random letters, one a line.
python3 - "$SIZE" > "$RUN/payload-random.txt" <<'PY'
import random, string, sys
size = int(sys.argv[1]); rnd = random.Random(11)
for _ in range(1000):
    print("".join(rnd.choice(string.ascii_uppercase) for _ in range(size)))
PY
PLAIN_PAYLOAD=""
[[ "$PAYLOAD_MODE" == file ]] && PLAIN_PAYLOAD="$RUN/payload-random.txt"

tool() { deploy/kafka.sh tool "$@"; }
for t in bench bench.json bench.enc.value bench.enc.json bench.share bench.enc.share; do
  tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$DIRECT" --create \
    --topic "$t" --partitions 6 --replication-factor 1 >/dev/null
done

# producer: "N records sent, X records/sec (Y MB/sec), A ms avg latency, M ms max latency, p50 ms 50th, p95 ms 95th, p99 ms 99th, ..."
produce() { # bootstrap throughput-limit [topic [payload-file]]
  local records=(--record-size "$SIZE")
  [[ -n "${4:-}" ]] && records=(--payload-file "$4")
  tool org.apache.kafka.tools.ProducerPerformance --topic "${3:-bench}" --num-records "$RECORDS" \
    "${records[@]}" --throughput "$2" \
    --producer-props bootstrap.servers="$1" acks=1 linger.ms=5 batch.size=65536 2>/dev/null | tail -1
}
# Share groups (KIP-932) are off until the share.version feature is raised.
if has share || has enc-share; then
  tool org.apache.kafka.tools.FeatureCommand --bootstrap-server "$DIRECT" upgrade --feature share.version=1 >/dev/null
fi
# share consumer: a fresh share group starting from the earliest offset (a
# group config; the default is the latest); csv line with nMsg/sec in col 5.
share_consume() { # bootstrap topic
  local group="bench-share-$RANDOM-$RANDOM"
  tool kafka.admin.ConfigCommand --bootstrap-server "$DIRECT" --alter --entity-type groups \
    --entity-name "$group" --add-config share.auto.offset.reset=earliest >/dev/null
  tool org.apache.kafka.tools.ShareConsumerPerformance --bootstrap-server "$1" --topic "$2" \
    --messages "$RECORDS" --timeout 60000 --group "$group" 2>/dev/null | tail -1
}
# consumer: csv line with MB/sec (col 4) and nMsg/sec (col 6)
consume() { # bootstrap [topic]
  tool org.apache.kafka.tools.ConsumerPerformance --bootstrap-server "$1" --topic "${2:-bench}" \
    --messages "$RECORDS" --timeout 60000 --group "bench-$RANDOM-$RANDOM" 2>/dev/null | tail -1
}
field_rate() { sed -E 's/.* ([0-9.]+) records\/sec.*/\1/'; }
field_pct() { sed -E "s/.* ([0-9.]+) ms $1.*/\1/"; }

# Every measured run starts with no dirty pages: the broker's log grows by
# ~300 MB per run, and once the kernel writes those back during a later run
# (dirty data older than 30 s is flushed every 5 s), the broker's CPU per
# record doubles and that run's throughput falls by a third, whichever path
# it measures. Writing them back before each run costs under a second here.
settle() { sync; }

echo "round,path,produce_rec_s,consume_rec_s" > "$RUN/throughput.csv"
# Where each path goes: bootstrap, topic, payload file (none: random bytes).
route() {
  case "$1" in
    direct) echo "$DIRECT bench $PLAIN_PAYLOAD" ;; proxy) echo "$PROXY bench $PLAIN_PAYLOAD" ;;
    authz) echo "$AUTHZ bench $PLAIN_PAYLOAD" ;;
    audit) echo "$AUDIT bench $PLAIN_PAYLOAD" ;; audit-async) echo "$AUDIT_ASYNC bench $PLAIN_PAYLOAD" ;;
    json) echo "$AUTHZ bench.json $RUN/payload.jsonl" ;;
    enc-value) echo "$ENC bench.enc.value $PLAIN_PAYLOAD" ;;
    enc-json) echo "$ENC bench.enc.json $RUN/payload.jsonl" ;;
    share) echo "$AUTHZ bench.share $PLAIN_PAYLOAD" ;;
    enc-share) echo "$ENC bench.enc.share $PLAIN_PAYLOAD" ;;
  esac
}
read -r -a ALL <<< "$PATHS"
for r in $(seq 1 "$ROUNDS"); do
  # Rotate the order each round so drift hits every path alike.
  k=$(( (r - 1) % ${#ALL[@]} ))
  order="${ALL[*]:$k} ${ALL[*]:0:$k}"
  for path in $order; do
    read -r b topic payload <<< "$(route "$path")"
    settle
    p=$(produce "$b" -1 "$topic" "$payload" | field_rate)
    settle
    case "$path" in
      share|enc-share) c=$(share_consume "$b" "$topic" | cut -d, -f5 | tr -d ' ') ;;
      *) c=$(consume "$b" "$topic" | cut -d, -f6 | tr -d ' ') ;;
    esac
    # A consumer that got nothing timed out: a broken path, not a number.
    if ! awk -v c="$c" 'BEGIN {exit !(c > 0)}'; then
      echo "bench.sh: round $r, path $path consumed nothing (rate '$c'); see the tool's output above" >&2
      exit 1
    fi
    echo "$r,$path,$p,$c" | tee -a "$RUN/throughput.csv"
  done
done

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
col() { awk -F, -v p="$1" -v c="$2" '$2==p {print $c}' "$RUN/throughput.csv" | median; }
# Paired ratios: each round's run of a path against its baseline's run in the
# same round, so slow drift of the machine cancels out; their median is the
# headline.
paired() { # column [path [baseline]]
  awk -F, -v c="$1" -v p="${2:-proxy}" -v base="${3:-direct}" 'NR == FNR { if ($2 == base) d[$1] = $c; next }
    $2 == p && d[$1] > 0 { print $c / d[$1] }' "$RUN/throughput.csv" "$RUN/throughput.csv" | median
}
# "produce P, consume C" paired ratios of a path to a baseline, when both ran.
pair() { # path baseline
  if has "$1" && has "$2"; then echo "produce $(paired 3 "$1" "$2"), consume $(paired 4 "$1" "$2")"; else echo "n/a ($2 not run)"; fi
}
metric() { # admin-addr name: the sum of its samples
  curl -fsS "http://$1/metrics" | awk -v n="$2" '$1 == n || index($1, n "{") == 1 {s += $2} END {printf "%d", s}'
}
DP=$(col direct 3); PP=$(col proxy 3); DC=$(col direct 4); PC=$(col proxy 4)

# Latency at a fixed rate: half the direct maximum.
LATENCY=""
if has direct && has proxy; then
  curl -fsS "http://$ADMIN/metrics" > "$RUN/buckets-before.txt"
  RATE=$(awk -v d="$DP" 'BEGIN {printf "%d", d/2}')
  echo "round,path,p50_ms,p99_ms" > "$RUN/latency.csv"
  for r in $(seq 1 "$ROUNDS"); do
    for path in direct proxy; do
      b=$DIRECT; [[ $path == proxy ]] && b=$PROXY
      settle
      line=$(produce "$b" "$RATE" bench "$PLAIN_PAYLOAD")
      echo "$r,$path,$(echo "$line" | field_pct 50th),$(echo "$line" | field_pct 99th)" | tee -a "$RUN/latency.csv"
    done
  done
  curl -fsS "http://$ADMIN/metrics" > "$RUN/buckets-after.txt"
  lat() { awk -F, -v p="$1" -v c="$2" '$2==p {print $c}' "$RUN/latency.csv" | median; }
  D50=$(lat direct 3); P50=$(lat proxy 3); D99=$(lat direct 4); P99=$(lat proxy 4)
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
  LATENCY="produce latency at $RATE rec/s: p50 direct $D50 ms, Custos $P50 ms; p99 direct $D99 ms, Custos $P99 ms
added latency: p50 $(awk -v a="$P50" -v b="$D50" 'BEGIN {printf "%.2f", a-b}') ms, p99 $(awk -v a="$P99" -v b="$D99" 'BEGIN {printf "%.2f", a-b}') ms
Custos's own time per Produce exchange: $OWN"
fi

# Memory at idle connections: each completes an ApiVersions round trip through
# Custos (so its upstream connection is open too), then stays idle.
if has proxy; then
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
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a/b}'; }
echo
echo "== results (medians of $ROUNDS rounds, $RECORDS records of $SIZE B, payload $PAYLOAD_MODE, $BROKERS broker(s); paths: $PATHS) =="
if has direct && has proxy; then
  echo "produce records/s: direct $DP, through Custos $PP, ratio of medians $(ratio "$PP" "$DP"), median paired ratio $(paired 3)"
  echo "consume records/s: direct $DC, through Custos $PC, ratio of medians $(ratio "$PC" "$DC"), median paired ratio $(paired 4)"
fi
if has authz; then
  echo "with authorization: $(col authz 3) produce rec/s, $(col authz 4) consume rec/s"
  echo "  paired ratio to direct: $(pair authz direct); to Custos without authorization: $(pair authz proxy)"
  echo "authorization decisions during the run: $(curl -fsS "http://$AUTHZ_ADMIN/metrics" | awk '/^custos_authz_(allowed|denied)_total/ {printf "%s=%s ", $1, $2}')"
fi
if has audit; then
  echo "strict audit: produce $(col audit 3) rec/s, consume $(col audit 4) rec/s; paired ratio to authz without audit: $(pair audit authz)"
  echo "audit records written (strict): $(metric "$AUDIT_ADMIN" custos_audit_records_total)"
  echo "strict audit wait per response: $(curl -fsS "http://$AUDIT_ADMIN/metrics" | python3 -c '
import re, sys
b = [(float(m.group(1)), int(m.group(2))) for m in re.finditer(r"custos_audit_wait_seconds_bucket\{le=\"([^\"]+)\"\} (\d+)", sys.stdin.read()) if m.group(1) != "+Inf"]
tot = b[-1][1] if b else 0
q = lambda x: next((le * 1e6 for le, c in b if tot and c >= x * tot), float("nan"))
print(f"{tot} waits, p50 <= {q(0.5):.0f} us, p99 <= {q(0.99):.0f} us")')"
fi
if has audit-async; then
  echo "async audit: produce $(col audit-async 3) rec/s, consume $(col audit-async 4) rec/s; paired ratio to authz without audit: $(pair audit-async authz)"
  echo "audit records written (async): $(metric "$AUDIT_ASYNC_ADMIN" custos_audit_records_total)"
fi
if has json; then
  echo "JSON documents, no rules (json): produce $(col json 3) rec/s, consume $(col json 4) rec/s; paired ratio to authz: $(pair json authz)"
fi
if has enc-value; then
  echo "whole value encrypted (enc-value): produce $(col enc-value 3) rec/s, consume with decryption $(col enc-value 4) rec/s"
  echo "  paired ratio to authz (target: produce >= 0.90, consume >= 0.80): $(pair enc-value authz)"
  echo "  paired ratio to Custos without authorization: $(pair enc-value proxy)"
fi
if has enc-json; then
  echo "two JSON fields encrypted (enc-json): produce $(col enc-json 3) rec/s, consume with decryption $(col enc-json 4) rec/s"
  echo "  paired ratio to json (target: produce >= 0.80, consume >= 0.80): $(pair enc-json json)"
  echo "  paired ratio to authz (random 1 KiB values): $(pair enc-json authz)"
fi
if has enc-share; then
  echo "whole value encrypted, share group (enc-share): produce $(col enc-share 3) rec/s, share consume with decryption $(col enc-share 4) rec/s"
  echo "  paired ratio to share (target: consume >= 0.80): $(pair enc-share share)"
fi
if has enc-value || has enc-json || has enc-share; then
  # Proof the measured paths did the work: every consumed record revealed in
  # plaintext (a denied Decrypt would show masks instead), nothing refused.
  echo "encryption during the run: $(metric "$ENC_ADMIN" custos_encrypted_records_total) records encrypted," \
    "$(metric "$ENC_ADMIN" custos_revealed_plaintext_records_total) revealed in plaintext," \
    "$(metric "$ENC_ADMIN" custos_revealed_masked_records_total) masked," \
    "$(metric "$ENC_ADMIN" custos_encrypt_failures_total) produce partitions refused," \
    "$(metric "$ENC_ADMIN" custos_decrypt_failures_total) fetch partitions withheld;" \
    "encryption.dek.reference: $DEK_REFERENCE"
fi
[[ -n "$LATENCY" ]] && echo "$LATENCY"
if has proxy; then echo "Custos RSS (MB) before,after $IDLE idle connections: $RSS"; fi
