#!/usr/bin/env bash
# Local Apache Kafka harness for Custos: fetches a real Kafka (KRaft, no ZooKeeper)
# from Maven Central, runs one or three combined broker+controller JVMs on
# loopback, and runs Kafka's tools and the Java end-to-end test client.
#
#   deploy/kafka.sh fetch
#   deploy/kafka.sh start [--brokers 1|3] [--dir DIR] [--port-base PORT] [--tls] [--sasl] [--acl]
#        --tls adds an SSL listener per node on port-base+200+N-1, with a CA, broker
#        and client certificates (PEM) generated into DIR/tls (client auth: requested)
#        --sasl adds a SASL_PLAINTEXT listener per node on port-base+300+N-1 with
#        SCRAM-SHA-512 and one test user: custos / custos-test-secret
#        --acl (implies --sasl) turns on Kafka's own authorizer (StandardAuthorizer,
#        allow.everyone.if.no.acl.found=false) and adds the SCRAM-SHA-512 users
#        admin, alice, bob, carol, dave (password: <name>-test-secret);
#        super.users=User:custos;User:admin;User:ANONYMOUS. ANONYMOUS is there
#        because the controller and inter-broker listeners are PLAINTEXT (the broker
#        registers and heartbeats as ANONYMOUS); so the PLAINTEXT client listener is
#        unauthenticated super-user access too, and clients whose rights matter must
#        use only the SASL listener. ACLs are made by the caller (kafka-acls, i.e.
#        `tool org.apache.kafka.tools.AclCommand`, or an AdminClient logged in as admin).
#   deploy/kafka.sh stop [--dir DIR]
#   deploy/kafka.sh stop-node ID [--dir DIR]
#   deploy/kafka.sh start-node ID [--dir DIR]
#   deploy/kafka.sh status [--dir DIR]
#   deploy/kafka.sh bootstrap [--dir DIR]        # prints host:port,host:port,...
#   deploy/kafka.sh tool CLASS ARGS...           # e.g. org.apache.kafka.tools.TopicCommand --list ...
#   deploy/kafka.sh java-client ARGS...          # tests/java/E2eClient.java
#   deploy/kafka.sh classpath                    # the cached classpath
#
# Environment:
#   CUSTOS_KAFKA_CACHE      jar cache (default: <repo>/.cache/kafka-<version>)
#   CUSTOS_KAFKA_DIR        default run dir (default: <repo>/.cache/kafka-run)
#   CUSTOS_KAFKA_PORT_BASE  client port of node 1 (default 19092); node N listens on
#                           base+N-1, its controller on base+100+N-1
#   CUSTOS_KAFKA_VERSION    Kafka version (default: the pinned one below)
#   CUSTOS_KAFKA_START_TIMEOUT  seconds to wait for brokers (default 90)
#   CUSTOS_KAFKA_CLIENT_LOG_LEVEL  log level of tools/java-client on stderr (default error)
#   JAVA_HOME               JDK to use (Java 17 or newer)
set -euo pipefail

KAFKA_VERSION="${CUSTOS_KAFKA_VERSION:-4.1.1}"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/.." && pwd)"
CACHE="${CUSTOS_KAFKA_CACHE:-$REPO/.cache/kafka-$KAFKA_VERSION}"
LIB="$CACHE/lib"
CLASSES="$CACHE/classes"
CLIENT_SRC="$REPO/tests/java/E2eClient.java"
START_TIMEOUT="${CUSTOS_KAFKA_START_TIMEOUT:-90}"
HOST=127.0.0.1

if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
  JAVA="$JAVA_HOME/bin/java"; JAVAC="$JAVA_HOME/bin/javac"
else
  JAVA=java; JAVAC=javac
fi

die() { echo "kafka.sh: $*" >&2; exit 1; }
log() { echo "kafka.sh: $*" >&2; }

# ---------------------------------------------------------------- fetch

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

compile_client() {
  [[ -f "$CLIENT_SRC" ]] || die "missing $CLIENT_SRC"
  local want have=""
  want="$(sha_of "$CLIENT_SRC")"
  [[ -f "$CLASSES/.source.sha256" ]] && have="$(cat "$CLASSES/.source.sha256")"
  [[ "$want" == "$have" ]] && return 0
  log "compiling $CLIENT_SRC"
  local tmp="$CACHE/classes.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  "$JAVAC" -nowarn -encoding UTF-8 --release 17 -cp "$LIB/*" -d "$tmp" "$CLIENT_SRC" \
    || { rm -rf "$tmp"; die "javac failed"; }
  echo "$want" > "$tmp/.source.sha256"
  rm -rf "$CLASSES"; mv "$tmp" "$CLASSES"
}

fetch() {
  if [[ ! -f "$CACHE/.fetched" || "$(cat "$CACHE/.fetched")" != "$KAFKA_VERSION" ]]; then
    command -v mvn >/dev/null || die "mvn (Maven) is needed for fetch"
    log "fetching Apache Kafka $KAFKA_VERSION into $LIB"
    mkdir -p "$CACHE"
    local tmp="$CACHE/lib.tmp.$$"
    rm -rf "$tmp"
    mvn -q -B -Dstyle.color=never -f "$SCRIPT_DIR/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
      dependency:copy-dependencies -DoutputDirectory="$tmp" >&2 \
      || { rm -rf "$tmp"; die "maven could not fetch Kafka $KAFKA_VERSION"; }
    ls "$tmp"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1 || die "kafka_2.13 jar missing after fetch"
    rm -rf "$LIB"; mv "$tmp" "$LIB"
    echo "$KAFKA_VERSION" > "$CACHE/.fetched"
  fi
  compile_client
}

ensure_fetched() {
  if [[ ! -f "$CACHE/.fetched" || ! -f "$CLASSES/.source.sha256" \
        || "$(sha_of "$CLIENT_SRC")" != "$(cat "$CLASSES/.source.sha256")" ]]; then
    locked_fetch
  fi
}

# fetch under a lock: clients started side by side must not compile over each other
locked_fetch() {
  mkdir -p "$CACHE"
  if command -v flock >/dev/null; then
    ( flock -w 600 9 || die "timed out waiting for the lock on $CACHE"; fetch ) 9>"$CACHE/.lock"
  else
    fetch
  fi
}

client_java_opts=(-XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xss1m -Xmx256m
  -Djava.awt.headless=true
  "-Dlog4j2.configurationFile=$SCRIPT_DIR/kafka/client-log4j2.xml"
  "-Dcustos.client.log.level=${CUSTOS_KAFKA_CLIENT_LOG_LEVEL:-error}")

run_tool() {
  ensure_fetched
  local cls="$1"; shift
  exec "$JAVA" "${client_java_opts[@]}" -cp "$LIB/*" "$cls" "$@"
}

run_client() {
  ensure_fetched
  exec "$JAVA" "${client_java_opts[@]}" -cp "$CLASSES:$LIB/*" E2eClient "$@"
}

# ---------------------------------------------------------------- cluster

RUN_DIR="${CUSTOS_KAFKA_DIR:-$REPO/.cache/kafka-run}"
BROKERS=""
PORT_BASE=""
NODE_ARG=""
TLS=""
SASL=""
ACL=""
# Test-only credentials of the --sasl listener (they protect nothing).
SASL_USER=custos
SASL_PASSWORD=custos-test-secret
# Extra test users of --acl (SCRAM-SHA-512, password <name>-test-secret).
ACL_USERS=(admin alice bob carol dave)

parse_opts() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --dir) RUN_DIR="$2"; shift 2 ;;
      --dir=*) RUN_DIR="${1#*=}"; shift ;;
      --brokers) BROKERS="$2"; shift 2 ;;
      --brokers=*) BROKERS="${1#*=}"; shift ;;
      --port-base) PORT_BASE="$2"; shift 2 ;;
      --port-base=*) PORT_BASE="${1#*=}"; shift ;;
      --tls) TLS=1; shift ;;
      --sasl) SASL=1; shift ;;
      --acl) ACL=1; SASL=1; shift ;;
      -*) die "unknown option $1" ;;
      *) [[ -z "$NODE_ARG" ]] || die "unexpected argument $1"; NODE_ARG="$1"; shift ;;
    esac
  done
  mkdir -p "$RUN_DIR"
  RUN_DIR="$(cd "$RUN_DIR" && pwd)"
}

load_state() {
  [[ -f "$RUN_DIR/cluster.env" ]] || die "no cluster in $RUN_DIR (run start first)"
  # shellcheck disable=SC1091
  source "$RUN_DIR/cluster.env"
  BROKERS="$C_BROKERS"; PORT_BASE="$C_PORT_BASE"; TLS="${C_TLS:-}"; SASL="${C_SASL:-}"
  ACL="${C_ACL:-}"
}

client_port() { echo $((PORT_BASE + $1 - 1)); }
controller_port() { echo $((PORT_BASE + 100 + $1 - 1)); }
ssl_port() { echo $((PORT_BASE + 200 + $1 - 1)); }
sasl_port() { echo $((PORT_BASE + 300 + $1 - 1)); }
node_dir() { echo "$RUN_DIR/node-$1"; }

bootstrap_servers() {
  local out="" id
  for ((id = 1; id <= BROKERS; id++)); do
    out+="${out:+,}$HOST:$(client_port "$id")"
  done
  echo "$out"
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# pid of node ID if its JVM is alive (and really is that node), else empty
node_pid() {
  local f pid
  f="$(node_dir "$1")/pid"
  [[ -f "$f" ]] || return 0
  pid="$(cat "$f")"
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null \
     && grep -q "$(node_dir "$1")/server.properties" "/proc/$pid/cmdline" 2>/dev/null; then
    echo "$pid"
  fi
}

# CA, broker and client certificates for --tls (PEM, RSA 2048, SAN localhost + 127.0.0.1)
gen_tls() {
  local d="$RUN_DIR/tls"
  [[ -f "$d/broker-keystore.pem" && -f "$d/client.key" ]] && return 0
  command -v openssl >/dev/null || die "--tls needs openssl"
  mkdir -p "$d"
  (
    cd "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=custos-test-kafka-ca" \
      -keyout ca.key -out ca.pem 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' > ext.cnf
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout broker.key -out broker.csr 2>/dev/null
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile ext.cnf -out broker.pem 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' > client-ext.cnf
    openssl req -newkey rsa:2048 -nodes -subj "/CN=custos-test-client" -keyout client.key -out client.csr 2>/dev/null
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile client-ext.cnf -out client.pem 2>/dev/null
    cat broker.key broker.pem > broker-keystore.pem
    cat client.key client.pem > client-keystore.pem
    rm -f ./*.csr
  ) || die "generating TLS certificates failed"
}

write_properties() {
  local id="$1" dir voters="" n rf minisr
  dir="$(node_dir "$id")"
  mkdir -p "$dir/data"
  if [[ "$BROKERS" == 1 ]]; then rf=1; minisr=1; else rf=3; minisr=2; fi
  local listeners="PLAINTEXT://$HOST:$(client_port "$id"),CONTROLLER://$HOST:$(controller_port "$id")"
  local protomap="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  if [[ -n "$TLS" ]]; then
    listeners+=",SSL://$HOST:$(ssl_port "$id")"
    protomap+=",SSL:SSL"
  fi
  if [[ -n "$SASL" ]]; then
    listeners+=",SASL_PLAINTEXT://$HOST:$(sasl_port "$id")"
    protomap+=",SASL_PLAINTEXT:SASL_PLAINTEXT"
  fi
  {
    echo "# written by deploy/kafka.sh"
    echo "process.roles=broker,controller"
    echo "node.id=$id"
    echo "listeners=$listeners"
    echo "advertised.listeners=$listeners"
    echo "listener.security.protocol.map=$protomap"
    if [[ -n "$TLS" ]]; then
      echo "ssl.keystore.type=PEM"
      echo "ssl.keystore.location=$RUN_DIR/tls/broker-keystore.pem"
      echo "ssl.truststore.type=PEM"
      echo "ssl.truststore.location=$RUN_DIR/tls/ca.pem"
      echo "ssl.client.auth=requested"
    fi
    if [[ -n "$SASL" ]]; then
      echo "sasl.enabled.mechanisms=SCRAM-SHA-512"
      echo "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
    fi
    if [[ -n "$ACL" ]]; then
      echo "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer"
      # ANONYMOUS: the PLAINTEXT controller and inter-broker listeners (see the header)
      echo "super.users=User:$SASL_USER;User:admin;User:ANONYMOUS"
      echo "allow.everyone.if.no.acl.found=false"
    fi
    echo "inter.broker.listener.name=PLAINTEXT"
    echo "controller.listener.names=CONTROLLER"
    if [[ "$BROKERS" == 1 ]]; then
      echo "controller.quorum.bootstrap.servers=$HOST:$(controller_port 1)"
    else
      for ((n = 1; n <= BROKERS; n++)); do voters+="${voters:+,}$n@$HOST:$(controller_port "$n")"; done
      echo "controller.quorum.voters=$voters"
    fi
    echo "log.dirs=$dir/data"
    echo "num.partitions=1"
    echo "default.replication.factor=$rf"
    echo "min.insync.replicas=1"
    echo "offsets.topic.replication.factor=$rf"
    echo "offsets.topic.num.partitions=10"
    echo "transaction.state.log.replication.factor=$rf"
    echo "transaction.state.log.min.isr=$minisr"
    echo "transaction.state.log.num.partitions=10"
    echo "share.coordinator.state.topic.replication.factor=$rf"
    echo "share.coordinator.state.topic.min.isr=$minisr"
    echo "auto.create.topics.enable=true"
    echo "delete.topic.enable=true"
    echo "group.initial.rebalance.delay.ms=0"
    # KIP-848: the new consumer group protocol beside the classic one.
    echo "group.coordinator.rebalance.protocols=classic,consumer"
    # Faster KIP-848 reassignment in tests (defaults are 5 s).
    echo "group.consumer.min.heartbeat.interval.ms=500"
    echo "group.consumer.heartbeat.interval.ms=1000"
    echo "group.consumer.min.session.timeout.ms=6000"
    echo "group.consumer.session.timeout.ms=15000"
    echo "group.min.session.timeout.ms=3000"
    echo "num.network.threads=2"
    echo "num.io.threads=4"
    echo "log.flush.interval.messages=9223372036854775807"
    # compaction soon after a segment rolls (tests of compacted topics), small cleaner buffer
    echo "log.cleaner.backoff.ms=500"
    echo "log.cleaner.dedupe.buffer.size=16777216"
    echo "controlled.shutdown.enable=true"
    echo "controller.quorum.election.timeout.ms=1000"
    echo "controller.quorum.fetch.timeout.ms=2000"
  } > "$dir/server.properties"
}

format_storage() {
  local id="$1" dir args=()
  dir="$(node_dir "$id")"
  [[ -f "$dir/data/meta.properties" ]] && return 0
  [[ "$BROKERS" == 1 ]] && args+=(--standalone)
  [[ -z "$SASL" ]] || args+=(--add-scram "SCRAM-SHA-512=[name=$SASL_USER,password=$SASL_PASSWORD]")
  if [[ -n "$ACL" ]]; then
    local u
    for u in "${ACL_USERS[@]}"; do args+=(--add-scram "SCRAM-SHA-512=[name=$u,password=$u-test-secret]"); done
  fi
  "$JAVA" "${client_java_opts[@]}" -cp "$LIB/*" kafka.tools.StorageTool format \
    -t "$CLUSTER_ID" -c "$dir/server.properties" "${args[@]}" > "$dir/format.log" 2>&1 \
    || { cat "$dir/format.log" >&2; die "formatting storage of node $id failed"; }
}

launch_node() {
  local id="$1" dir
  dir="$(node_dir "$id")"
  [[ -n "$(node_pid "$id")" ]] && { log "node $id already running"; return 0; }
  local p
  local ports=("$(client_port "$id")" "$(controller_port "$id")")
  [[ -z "$TLS" ]] || ports+=("$(ssl_port "$id")")
  [[ -z "$SASL" ]] || ports+=("$(sasl_port "$id")")
  for p in "${ports[@]}"; do
    port_open "$p" && die "port $HOST:$p is already in use (another Kafka? set --port-base or CUSTOS_KAFKA_PORT_BASE)"
  done
  # setsid: its own session, so a Ctrl-C in the caller's terminal does not hit it
  setsid "$JAVA" -server -Xmx512m -Xms128m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:TieredStopAtLevel=1 \
    -Djava.awt.headless=true \
    "-Dkafka.logs.dir=$dir" \
    "-Dlog4j2.configurationFile=$SCRIPT_DIR/kafka/log4j2.xml" \
    -cp "$LIB/*" kafka.Kafka "$dir/server.properties" \
    > "$dir/stdout.log" 2>&1 < /dev/null &
  echo $! > "$dir/pid"
}

# wait until node ID answers a metadata request listing all BROKERS brokers
wait_node() {
  local id="$1" port deadline pid now left
  port="$(client_port "$id")"
  deadline=$(( $(date +%s) + START_TIMEOUT ))
  while ! port_open "$port"; do
    pid="$(node_pid "$id")"
    [[ -n "$pid" ]] || { tail -n 30 "$(node_dir "$id")/server.log" >&2 2>/dev/null || true
                         tail -n 30 "$(node_dir "$id")/stdout.log" >&2 2>/dev/null || true
                         die "node $id exited during start-up (logs: $(node_dir "$id"))"; }
    now=$(date +%s)
    (( now < deadline )) || die "node $id did not open $HOST:$port within ${START_TIMEOUT}s"
    sleep 0.2
  done
  left=$(( deadline - $(date +%s) ))
  (( left > 5 )) || left=5
  "$JAVA" "${client_java_opts[@]}" -cp "$CLASSES:$LIB/*" E2eClient ping \
     --bootstrap "$HOST:$port" --expect-brokers "$BROKERS" --expect-node "$id" \
     --timeout-ms $(( left * 1000 )) > /dev/null \
    || die "node $id did not answer metadata requests within ${START_TIMEOUT}s (logs: $(node_dir "$id"))"
}

cmd_start() {
  parse_opts "$@"
  ensure_fetched
  if [[ -f "$RUN_DIR/cluster.env" ]]; then
    local want_b="$BROKERS" want_p="$PORT_BASE" want_t="$TLS" want_s="$SASL" want_a="$ACL"
    load_state
    [[ -z "$want_t" || -n "$TLS" ]] || die "$RUN_DIR was started without --tls; use another --dir"
    [[ -z "$want_s" || -n "$SASL" ]] || die "$RUN_DIR was started without --sasl; use another --dir"
    [[ -z "$want_a" || -n "$ACL" ]] || die "$RUN_DIR was started without --acl; use another --dir"
    [[ -z "$want_b" || "$want_b" == "$BROKERS" ]] || die "$RUN_DIR holds a $BROKERS-broker cluster; use another --dir"
    [[ -z "$want_p" || "$want_p" == "$PORT_BASE" ]] || die "$RUN_DIR uses port base $PORT_BASE; use another --dir"
  else
    BROKERS="${BROKERS:-1}"
    PORT_BASE="${PORT_BASE:-${CUSTOS_KAFKA_PORT_BASE:-19092}}"
    [[ "$BROKERS" == 1 || "$BROKERS" == 3 ]] || die "--brokers must be 1 or 3"
    [[ "$PORT_BASE" =~ ^[0-9]+$ ]] || die "bad port base $PORT_BASE"
    CLUSTER_ID="$(python3 -c 'import base64,uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"):  # an id starting with "-" reads as an option
        break
print(s)' 2>/dev/null \
      || "$JAVA" "${client_java_opts[@]}" -cp "$LIB/*" kafka.tools.StorageTool random-uuid)"
    printf 'C_BROKERS=%s\nC_PORT_BASE=%s\nCLUSTER_ID=%s\nC_TLS=%s\nC_SASL=%s\nC_ACL=%s\n' "$BROKERS" "$PORT_BASE" "$CLUSTER_ID" "$TLS" "$SASL" "$ACL" > "$RUN_DIR/cluster.env"
  fi
  [[ -z "$TLS" ]] || gen_tls
  local id
  for ((id = 1; id <= BROKERS; id++)); do write_properties "$id"; done
  for ((id = 1; id <= BROKERS; id++)); do format_storage "$id"; done
  # all nodes at once: a three-node quorum needs a majority before anything answers
  for ((id = 1; id <= BROKERS; id++)); do launch_node "$id"; done
  for ((id = 1; id <= BROKERS; id++)); do wait_node "$id"; done
  log "Kafka $KAFKA_VERSION up ($BROKERS broker(s), run dir $RUN_DIR)"
  bootstrap_servers
}

stop_pids() {
  # stop_pids TIMEOUT_SECONDS PID... : SIGTERM, wait, then SIGKILL
  local timeout="$1"; shift
  local pid deadline alive
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  deadline=$(( $(date +%s) + timeout ))
  while :; do
    alive=()
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
    [[ ${#alive[@]} -eq 0 ]] && return 0
    (( $(date +%s) < deadline )) || break
    sleep 0.2
  done
  log "killing ${alive[*]} (no exit after SIGTERM within ${timeout}s)"
  for pid in "${alive[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${alive[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  done
}

cmd_stop() {
  parse_opts "$@"
  [[ -f "$RUN_DIR/cluster.env" ]] || { log "nothing to stop in $RUN_DIR"; return 0; }
  load_state
  local id pid pids=()
  for ((id = 1; id <= BROKERS; id++)); do
    pid="$(node_pid "$id")"
    [[ -n "$pid" ]] && pids+=("$pid")
    rm -f "$(node_dir "$id")/pid.tmp"
  done
  # With every node going away at once, controlled shutdown cannot complete
  # (no controller quorum left), so do not wait long before SIGKILL.
  [[ ${#pids[@]} -gt 0 ]] && stop_pids 15 "${pids[@]}"
  for ((id = 1; id <= BROKERS; id++)); do rm -f "$(node_dir "$id")/pid"; done
  log "stopped Kafka in $RUN_DIR"
}

cmd_stop_node() {
  parse_opts "$@"
  load_state
  local id="$NODE_ARG" pid
  [[ "$id" =~ ^[0-9]+$ && "$id" -ge 1 && "$id" -le "$BROKERS" ]] || die "stop-node needs a node id 1..$BROKERS"
  pid="$(node_pid "$id")"
  if [[ -n "$pid" ]]; then stop_pids 30 "$pid"; fi
  rm -f "$(node_dir "$id")/pid"
  log "node $id stopped"
}

cmd_start_node() {
  parse_opts "$@"
  load_state
  ensure_fetched
  local id="$NODE_ARG"
  [[ "$id" =~ ^[0-9]+$ && "$id" -ge 1 && "$id" -le "$BROKERS" ]] || die "start-node needs a node id 1..$BROKERS"
  launch_node "$id"
  wait_node "$id"
  log "node $id up"
  echo "$HOST:$(client_port "$id")"
}

cmd_status() {
  parse_opts "$@"
  [[ -f "$RUN_DIR/cluster.env" ]] || { echo "no cluster in $RUN_DIR"; return 1; }
  load_state
  local id pid rc=0 state
  echo "run dir $RUN_DIR, $BROKERS broker(s), Kafka $KAFKA_VERSION"
  for ((id = 1; id <= BROKERS; id++)); do
    pid="$(node_pid "$id")"
    if [[ -z "$pid" ]]; then state="stopped"; rc=1
    elif port_open "$(client_port "$id")"; then state="running (pid $pid)"
    else state="starting (pid $pid)"; rc=1
    fi
    echo "node $id  $HOST:$(client_port "$id")  controller $HOST:$(controller_port "$id")${TLS:+  ssl $HOST:$(ssl_port "$id")}  $state"
  done
  return $rc
}

cmd_bootstrap() {
  parse_opts "$@"
  load_state
  bootstrap_servers
}

main() {
  [[ $# -ge 1 ]] || { sed -n '2,/^set /{/^#/p}' "$0" >&2; exit 2; }
  local cmd="$1"; shift
  case "$cmd" in
    fetch) locked_fetch; echo "$CACHE" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    stop-node) cmd_stop_node "$@" ;;
    start-node) cmd_start_node "$@" ;;
    status) cmd_status "$@" ;;
    bootstrap) cmd_bootstrap "$@" ;;
    tool) [[ $# -ge 1 ]] || die "tool needs a class name"; run_tool "$@" ;;
    java-client) run_client "$@" ;;
    classpath) ensure_fetched; echo "$CLASSES:$LIB/*" ;;
    -h|--help|help) sed -n '2,/^set /{/^#/p}' "$0" ;;
    *) die "unknown command $cmd (try --help)" ;;
  esac
}

main "$@"
