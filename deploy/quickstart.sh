#!/usr/bin/env bash
# Quickstart: a real local Kafka, Custos in front of it with the example
# config, and a client producing and consuming through Custos.
#
#   deploy/quickstart.sh            # demo, then keep Custos running until Ctrl-C
#   deploy/quickstart.sh --no-wait  # demo, then stop everything
#
# Needs: Rust (cargo), Java 17+, Maven, Python 3. Kafka comes from Maven Central.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
RUN_DIR="$REPO/.cache/quickstart"
CONFIG="$REPO/deploy/custos.example.yaml"
BOOTSTRAP=127.0.0.1:9192
ADMIN=127.0.0.1:9400
WAIT=1
[[ "${1:-}" == "--no-wait" ]] && WAIT=0

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

CUSTOS_PID=""
cleanup() {
  [[ -n "$CUSTOS_PID" ]] && kill "$CUSTOS_PID" 2>/dev/null && wait "$CUSTOS_PID" 2>/dev/null || true
  deploy/kafka.sh stop --dir "$RUN_DIR/kafka" >/dev/null 2>&1 || true
}
trap cleanup EXIT

say "Building Custos"
cargo build --quiet -p custos
# The example config's audit signing key and admin API token live here.
mkdir -p "$RUN_DIR"
[[ -f "$RUN_DIR/audit.key" ]] || ./target/debug/custos audit keygen --out "$RUN_DIR/audit.key" >/dev/null
[[ -f "$RUN_DIR/admin.token" ]] || { umask 077; openssl rand -hex 24 > "$RUN_DIR/admin.token"; }
# Field encryption: a master key for the embedded keyring, and one KEK.
[[ -f "$RUN_DIR/master.key" ]] || { umask 077; openssl rand -hex 32 > "$RUN_DIR/master.key"; }
./target/debug/custos keys --config "$CONFIG" list 2>/dev/null | grep -q '^customers ' ||
  ./target/debug/custos keys --config "$CONFIG" create customers
# Nobody may decrypt yet; the demo grants it below by writing this file.
echo '// Decrypt grants of the quickstart (written by deploy/quickstart.sh).' > "$RUN_DIR/decrypt.cedar"
./target/debug/custos config check "$CONFIG"

say "Starting Apache Kafka (KRaft, one broker on 127.0.0.1:19092)"
mkdir -p "$RUN_DIR"
CUSTOS_KAFKA_PORT_BASE=19092 deploy/kafka.sh start --dir "$RUN_DIR/kafka"

say "Starting Custos: clients use $BOOTSTRAP, broker 1 is exposed at 127.0.0.1:9201"
./target/debug/custos run --config "$CONFIG" 2>"$RUN_DIR/custos.log" &
CUSTOS_PID=$!
for _ in $(seq 1 100); do
  curl -fsS "http://$ADMIN/readyz" >/dev/null 2>&1 && break
  kill -0 "$CUSTOS_PID" 2>/dev/null || { cat "$RUN_DIR/custos.log"; exit 1; }
  sleep 0.2
done
curl -fsS "http://$ADMIN/readyz"

TOPIC="quickstart-$(date +%s)"
say "Creating topic $TOPIC through Custos (Kafka's own kafka-topics tool)"
deploy/kafka.sh tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" \
  --create --topic "$TOPIC" --partitions 3 --replication-factor 1

say "Producing three records through Custos (kafka-console-producer)"
printf 'alice:{"order":1}\nbob:{"order":2}\ncarol:{"order":3}\n' |
  deploy/kafka.sh tool org.apache.kafka.tools.ConsoleProducer --bootstrap-server "$BOOTSTRAP" \
    --topic "$TOPIC" --property parse.key=true --property key.separator=: --compression-codec zstd

say "Consuming them back through Custos (kafka-console-consumer)"
deploy/kafka.sh tool org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "$BOOTSTRAP" \
  --topic "$TOPIC" --from-beginning --max-messages 3 --property print.key=true --timeout-ms 20000

say "What clients see of the cluster: only Custos addresses, never the broker's own"
deploy/kafka.sh java-client metadata --bootstrap "$BOOTSTRAP" | head -1

say "Authorization at work (deploy/quickstart.cedar): the payroll topic exists, but not for this client"
deploy/kafka.sh tool org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:19092 \
  --create --if-not-exists --topic payroll.salaries --partitions 1 --replication-factor 1 >/dev/null
echo "Topics this client sees through Custos (payroll.salaries is left out):"
deploy/kafka.sh tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" --list
echo "Producing to payroll.salaries through Custos:"
if echo 'mallory:{"salary":1000000}' | timeout 60 deploy/kafka.sh tool org.apache.kafka.tools.ConsoleProducer \
    --bootstrap-server "$BOOTSTRAP" --topic payroll.salaries --property parse.key=true \
    --property key.separator=: 2>&1 | grep -m1 -o "TopicAuthorizationException[^]]*\|Not authorized to access topics[^]]*"; then
  echo "(refused by Custos with Kafka's TOPIC_AUTHORIZATION_FAILED; the broker never saw the record)"
else
  echo "UNEXPECTED: the produce was not refused" >&2; exit 1
fi
curl -fsS "http://$ADMIN/metrics" | grep -E '^custos_authz_(allowed|denied)_total'

CUSTOMERS="quickstart-customers-$(date +%s)"
say "Field encryption at work: JSON records to $CUSTOMERS (email and card number are protected)"
deploy/kafka.sh tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" \
  --create --topic "$CUSTOMERS" --partitions 1 --replication-factor 1 >/dev/null
printf '%s\n' '{"id": 1, "email": "ada@example.org", "card": {"number": "4111-1111-1111-1234", "brand": "visa"}}' \
  '{"id": 2, "email": "alan@example.org", "card": {"number": "5500-0000-0000-0004", "brand": "mc"}}' |
  deploy/kafka.sh tool org.apache.kafka.tools.ConsoleProducer --bootstrap-server "$BOOTSTRAP" --topic "$CUSTOMERS"
consume() {
  deploy/kafka.sh tool org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "$1" \
    --topic "$CUSTOMERS" --from-beginning --max-messages 2 --timeout-ms 20000 2>/dev/null
}
echo "What the broker stores (read straight from Kafka at 127.0.0.1:19092, bypassing Custos):"
consume 127.0.0.1:19092 | cut -c1-150
echo "What this client sees through Custos without the Decrypt permission (the rule's mask):"
consume "$BOOTSTRAP"
echo "Granting Decrypt on $CUSTOMERS in $RUN_DIR/decrypt.cedar (policies reload without a restart):"
cat >> "$RUN_DIR/decrypt.cedar" <<CEDAR
@id("quickstart-decrypt")
permit (principal == User::"ANONYMOUS", action == Action::"Decrypt", resource == Topic::"$CUSTOMERS");
CEDAR
sleep 3
echo "The same records through Custos now (byte-identical originals):"
consume "$BOOTSTRAP"
curl -fsS "http://$ADMIN/metrics" | grep -E '^custos_(encrypted_records|revealed_[a-z]+_records)_total'

say "Protection at work: Custos refuses an api a client has no business sending"
python3 - "$BOOTSTRAP" <<'PY'
import socket, struct, sys
host, port = sys.argv[1].split(":")
s = socket.create_connection((host, int(port)), timeout=5)
# LeaderAndIsr (api key 4) is broker-to-broker only; a gateway must not pass it.
body = struct.pack(">hhih", 4, 7, 1, -1)
s.sendall(struct.pack(">i", len(body)) + body)
print("LeaderAndIsr request sent; Custos answered by closing the connection:",
      s.recv(1) == b"")
PY
grep -m1 "refused request" "$RUN_DIR/custos.log" || true

say "The audit log: the refused produce, as a compliance officer queries it"
TOKEN="$(cat "$RUN_DIR/admin.token")"
curl -fsS -H "Authorization: Bearer $TOKEN" \
  "http://$ADMIN/v1/audit?topic=payroll.salaries&decision=denied&limit=1" | python3 -c '
import json, sys
r = json.load(sys.stdin)["records"][0]
print(json.dumps({k: r.get(k) for k in ("seq", "kind", "action", "principal", "client", "resources", "decision")}, indent=1))'
echo "Without the token the audit API answers $(curl -s -o /dev/null -w '%{http_code}' "http://$ADMIN/v1/audit")."
echo "Live verification of the hash chain and signed checkpoints:"
curl -fsS -H "Authorization: Bearer $TOKEN" "http://$ADMIN/v1/audit/verify"; echo

say "Metrics (http://$ADMIN/metrics), requests by api:"
curl -fsS "http://$ADMIN/metrics" | grep '^custos_requests_total' | head -8

if [[ "$WAIT" == 0 ]]; then
  say "Stopping Custos, then verifying its audit store offline with only the public key"
  kill "$CUSTOS_PID" && wait "$CUSTOS_PID" 2>/dev/null || true
  CUSTOS_PID=""
  ./target/debug/custos audit verify --dir "$RUN_DIR/audit-store" --public-key "$RUN_DIR/audit.key.pub"
fi

if [[ "$WAIT" == 1 ]]; then
  say "Custos is running: point any Kafka client at bootstrap.servers=$BOOTSTRAP. Ctrl-C stops it all."
  wait "$CUSTOS_PID"
fi
