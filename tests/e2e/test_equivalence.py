"""Authorization equivalence: one matrix of client operations, run twice.

A: a Kafka with its own authorizer (StandardAuthorizer, `deploy/kafka.sh start
   --acl`) and a set of ACLs made as `admin` (literal and prefixed grants, DENYs
   that override ALLOWs, group, transactional-id and cluster grants, the
   wildcard topic, a user with nothing).
C: Custos, with the Cedar policies `custos policy import-acls` made from
   `kafka-acls --list` of A, in front of a Kafka without any authorizer.

Every cell (principal, operation, resources) gives "ok" or the Kafka error
name (librdkafka's spelling; `@step` where a transaction failed); the two runs
must agree on every cell. Clients authenticate with SCRAM-SHA-512: to A's
SASL listener (never its PLAINTEXT one, where everybody is a super user, see
deploy/kafka.sh) and to Custos's listener.

`CUSTOS_EQ_PRINT=1` prints both columns. No DIRECT equivalent: the point is
Custos's authorization.
"""
from __future__ import annotations

import gc
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer,
                             TopicPartition)
from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType,
                                   AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions,
                                   NewTopic, OffsetSpec, ResourcePatternType, ResourceType)
from confluent_kafka import ConsumerGroupTopicPartitions

from harness import (CUSTOS_BIN, DIRECT, HOST, KAFKA_SH, PLAIN, KafkaCluster, Sec, add_scram_users,
                     rd_admin,
                     rd_common, start_gateway, stop_gateway, wait_until)

pytestmark = pytest.mark.skipif(DIRECT, reason="compares Custos's authorization with Kafka's")

KAFKA_A_PORT_BASE = int(os.environ.get("CUSTOS_E2E_KAFKA_PORT_BASE", "21092")) + 4000
USERS = ("admin", "alice", "bob", "carol", "dave")
PRINT = os.environ.get("CUSTOS_EQ_PRINT", "") not in ("", "0")


def password(user: str) -> str:
    """The --acl users' test passwords (deploy/kafka.sh)."""
    return f"{user}-test-secret"


def scram(user: str) -> Sec:
    return Sec(sasl=("SCRAM-SHA-512", user, password(user)))


# ------------------------------------------------------------------ the ACLs

T, G, X, C = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.TRANSACTIONAL_ID, ResourceType.BROKER
LIT, PRE = ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED
ALLOW, DENY = AclPermissionType.ALLOW, AclPermissionType.DENY
Op = AclOperation

# (resource type, name, pattern, user, operation, permission)
# admin is a super user; carol has nothing at all.
ACLS = [
    # alice: a literal topic she reads and writes, one she may only see, one whose configs she may read
    (T, "eq-orders", LIT, "alice", Op.READ, ALLOW),
    (T, "eq-orders", LIT, "alice", Op.WRITE, ALLOW),
    (T, "eq-logs", LIT, "alice", Op.DESCRIBE, ALLOW),
    (T, "eq-cfg", LIT, "alice", Op.DESCRIBE_CONFIGS, ALLOW),
    # alice may create topics under a prefix, nothing else on them
    (T, "eq-new-alice.", PRE, "alice", Op.CREATE, ALLOW),
    # bob: everything under a prefix, minus a DENY of Write and a DENY of Describe
    (T, "eq-pay.", PRE, "bob", Op.ALL, ALLOW),
    (T, "eq-pay.locked", LIT, "bob", Op.WRITE, DENY),
    (T, "eq-pay.hidden", LIT, "bob", Op.DESCRIBE, DENY),
    # dave: may see every topic (wildcard resource), and nothing more on topics
    (T, "*", LIT, "dave", Op.DESCRIBE, ALLOW),
    # groups
    (G, "eq-app", LIT, "alice", Op.READ, ALLOW),
    (G, "eq-alice-", PRE, "alice", Op.READ, ALLOW),
    (G, "eq-alice-blocked", LIT, "alice", Op.READ, DENY),
    (G, "eq-bob-", PRE, "bob", Op.ALL, ALLOW),
    (G, "eq-app", LIT, "dave", Op.DESCRIBE, ALLOW),
    # transactional ids
    (X, "eq-tx-alice-", PRE, "alice", Op.WRITE, ALLOW),
    (X, "eq-tx-bob", LIT, "bob", Op.DESCRIBE, ALLOW),
    # cluster
    (C, "kafka-cluster", LIT, "bob", Op.CREATE, ALLOW),
    (C, "kafka-cluster", LIT, "bob", Op.DESCRIBE, ALLOW),
    (C, "kafka-cluster", LIT, "dave", Op.IDEMPOTENT_WRITE, ALLOW),
    (C, "kafka-cluster", LIT, "dave", Op.DESCRIBE_CONFIGS, ALLOW),
]

# made by admin on both sides before the matrix runs: 1 partition, 3 records each
TOPICS = ["eq-orders", "eq-logs", "eq-cfg", "eq-pay.a", "eq-pay.locked", "eq-pay.hidden",
          "eq-pay.del", "eq-pay.parts", "eq-pay.recs"]
# groups with committed offsets (group -> topics), made by admin
GROUPS = {"eq-app": ["eq-orders"], "eq-other": ["eq-orders"], "eq-alice-1": ["eq-orders"],
          "eq-bob-1": ["eq-orders", "eq-pay.a"], "eq-bob-del": ["eq-pay.a"]}


# ------------------------------------------------------------------ one side

class Side:
    """Where clients of one column connect, and how they log in."""

    def __init__(self, name: str, bootstrap: str, workdir: Path):
        self.name = name
        self.bootstrap = bootstrap
        self.dir = Path(workdir)
        self._admins = {}

    def conf(self, user: str, **extra) -> dict:
        c = rd_common(self.bootstrap, scram(user))
        c.update({"client.id": f"eq-{self.name}-{user}", "socket.timeout.ms": 10000})
        c.update(extra)
        return c

    def client_config(self, user: str) -> Path:
        """A Java client properties file logging in as user."""
        return write_client_config(self.dir / f"{user}.properties", user)

    def close(self):
        """Drop the AdminClients (before their broker goes away, so they do not log retries)."""
        self._admins.clear()
        gc.collect()

    def admin(self, user: str):
        """One AdminClient per user (no topic auto-creation from its Metadata requests)."""
        if user not in self._admins:
            from confluent_kafka.admin import AdminClient
            self._admins[user] = AdminClient(self.conf(user, **{"allow.auto.create.topics": False}))
        return self._admins[user]


def err_name(e) -> str:
    if isinstance(e, KafkaException) and e.args and isinstance(e.args[0], KafkaError):
        return e.args[0].name()
    if isinstance(e, KafkaError):
        return e.name()
    return f"{type(e).__name__}: {e}"


def errors_or_ok(errs) -> str:
    names = sorted({err_name(e) for e in errs if e is not None})
    return "+".join(names) if names else "ok"


def future_outcome(fs, timeout=15) -> str:
    """A dict of futures (or one future) -> "ok" or the sorted error names."""
    if not isinstance(fs, dict):
        fs = {None: fs}
    errs = []
    for f in fs.values():
        try:
            f.result(timeout)
        except Exception as e:  # KafkaException carries the broker's error
            errs.append(e)
    return errors_or_ok(errs)


def partition_errors(tps) -> list:
    return [tp.error for tp in tps if tp.error is not None]


# ------------------------------------------------------------------ operations

def op_metadata(side, user, topic):
    """Metadata for one named topic (AdminClient, no auto-creation)."""
    md = side.admin(user).list_topics(topic, timeout=10)
    t = md.topics.get(topic)
    return "ok" if t is not None and t.error is None else err_name(t.error) if t else "missing"


def op_metadata_all(side, user):
    """Metadata for all topics: which of the seeded topics the user sees."""
    md = side.admin(user).list_topics(timeout=10)
    seen = sorted(t for t, m in md.topics.items() if t in TOPICS and m.error is None)
    return "sees " + ",".join(seen) if seen else "sees none"


def op_metadata_autocreate(side, user, topic):
    """Metadata for one named missing topic from a producer (allow_auto_topic_creation
    =true). The broker answers a topic it creates with UNKNOWN_TOPIC_OR_PARTITION or
    LEADER_NOT_AVAILABLE or already with its leader (which, depends on timing), so
    those errors are followed by more Metadata requests until the topic is there."""
    p = Producer(side.conf(user, **{"allow.auto.create.topics": True}))
    pending = (KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART)
    deadline = time.monotonic() + 10
    while True:
        t = p.list_topics(topic, timeout=10).topics.get(topic)
        if t is None:
            return "missing"
        if t.error is None:
            return "ok"
        if t.error.code() not in pending or time.monotonic() > deadline:
            return err_name(t.error)
        time.sleep(0.2)


def _deliver(p, topic, n=1, timeout=12):
    errs = []

    def cb(err, msg):
        if err is not None:
            errs.append(err)
    for i in range(n):
        p.produce(topic, key=b"k%d" % i, value=b"equivalence", on_delivery=cb)
    left = p.flush(timeout)
    if left:
        return "timeout"
    return errors_or_ok(errs)


def op_produce(side, user, topic):
    """acks=all, not idempotent: the delivery report's error."""
    p = Producer(side.conf(user, **{"acks": "all", "enable.idempotence": False, "linger.ms": 0,
                                    "message.timeout.ms": 10000, "retries": 0}))
    return _deliver(p, topic)


def op_produce_idempotent(side, user, topic):
    """Idempotent producer (InitProducerId first): a fatal error if one was raised
    (an InitProducerId denial is fatal), else the delivery report's error."""
    fatal = []

    def on_error(e):
        if e.fatal():
            fatal.append(e)
    p = Producer(side.conf(user, **{"acks": "all", "enable.idempotence": True, "linger.ms": 0,
                                    "message.timeout.ms": 10000, "error_cb": on_error}))

    def fatal_error(e: KafkaException) -> bool:
        if e.args and isinstance(e.args[0], KafkaError) and e.args[0].fatal():
            fatal.append(e.args[0])
            return True
        return False
    try:
        delivery = _deliver(p, topic)
    except KafkaException as e:   # produce(), flush() and poll() raise the fatal error
        if not fatal_error(e):
            raise
        delivery = "fatal"
    # an InitProducerId answer may come after a quick Metadata denial
    deadline = time.monotonic() + 1.5
    while not fatal and time.monotonic() < deadline and delivery != "ok":
        try:
            p.poll(0.1)
        except KafkaException as e:
            if not fatal_error(e):
                raise
    if fatal:
        return "fatal:" + errors_or_ok(fatal)
    return delivery


def op_txn(side, user, txid, topic, offsets_group=None):
    """init_transactions / begin / produce / [send_offsets_to_transaction] / commit."""
    p = Producer(side.conf(user, **{"transactional.id": txid, "acks": "all", "linger.ms": 0,
                                    "message.timeout.ms": 10000, "transaction.timeout.ms": 20000}))
    step = "init"
    try:
        p.init_transactions(12)
        step = "begin"
        p.begin_transaction()
        step = "produce"
        delivered = []
        p.produce(topic, value=b"txn", on_delivery=lambda err, msg: delivered.append(err))
        if offsets_group:
            step = "send_offsets"
            c = Consumer(side.conf(user, **{"group.id": offsets_group}))
            try:
                p.send_offsets_to_transaction([TopicPartition(topic, 0, 1)],
                                              c.consumer_group_metadata(), 12)
            finally:
                c.close()
        step = "commit"
        p.commit_transaction(12)
        bad = [e for e in delivered if e is not None]
        return "ok" if not bad else errors_or_ok(bad) + "@delivery"
    except KafkaException as e:
        return f"{err_name(e)}@{step}"


def _poll_outcome(c, deadline_s: float = 15.0, grace_s: float = 1.5) -> str:
    """Poll until records come or errors do (then `grace_s` more to collect every
    distinct error), at most deadline_s."""
    deadline = time.monotonic() + deadline_s
    errs, got = [], 0
    until = None
    while time.monotonic() < (until or deadline):
        for m in c.consume(100, 0.2):
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    continue
                errs.append(m.error())
                if until is None:
                    until = min(deadline, time.monotonic() + grace_s)
            else:
                got += 1
        if got and not errs:
            break
    if errs:
        return errors_or_ok(errs) + ("+records" if got else "")
    return "ok" if got else "no-records"


def op_consume_group(side, user, topic, group, protocol="classic"):
    """subscribe() in a group, poll for records or an error."""
    extra = {"group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False,
             "group.protocol": protocol}
    if protocol == "classic":
        extra.update({"session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
    c = Consumer(side.conf(user, **extra))
    try:
        c.subscribe([topic])
        return _poll_outcome(c)
    finally:
        c.close()


def op_consume_assign(side, user, topic, group):
    """assign() partition 0 from the beginning (no group join, no OffsetFetch).
    librdkafka still looks up the coordinator of group.id (FindCoordinator,
    Describe on the group), so the cells name a group the user may describe
    (except carol, who may describe none)."""
    c = Consumer(side.conf(user, **{"group.id": group, "enable.auto.commit": False}))
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        return _poll_outcome(c)
    finally:
        c.close()


def op_consumer_commit(side, user, group, topic):
    """A consumer's synchronous commit (OffsetCommit with the group's generation -1)."""
    c = Consumer(side.conf(user, **{"group.id": group, "enable.auto.commit": False}))
    try:
        res = c.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
        return errors_or_ok(partition_errors(res or []))
    except KafkaException as e:
        return err_name(e)
    finally:
        c.close()


def op_alter_group_offsets(side, user, group, topics):
    fs = side.admin(user).alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, [TopicPartition(t, 0, 1) for t in topics])],
        request_timeout=10)
    try:
        res = fs[group].result(15)
    except KafkaException as e:
        return err_name(e)
    return errors_or_ok(partition_errors(res.topic_partitions))


def op_list_group_offsets(side, user, group, topics=None):
    """OffsetFetch: named partitions (topics given) or all of the group's.
    The outcome lists what came back: topic:error for each partition."""
    req = ConsumerGroupTopicPartitions(group, [TopicPartition(t, 0) for t in topics] if topics else None)
    fs = side.admin(user).list_consumer_group_offsets([req], request_timeout=10)
    try:
        res = fs[group].result(15)
    except KafkaException as e:
        return err_name(e)
    return ",".join(sorted(f"{tp.topic}:{err_name(tp.error) if tp.error else 'ok'}"
                           for tp in res.topic_partitions)) or "empty"


def op_describe_group(side, user, group):
    fs = side.admin(user).describe_consumer_groups([group], request_timeout=10)
    try:
        fs[group].result(15)
        return "ok"
    except KafkaException as e:
        return err_name(e)


def op_describe_live_group(side, user, group, topic):
    """Describe a consumer-protocol (KIP-848) group while admin's member of it
    is assigned `topic`: the answer (ConsumerGroupDescribe) names the
    member's topics, which a user who may not describe them must not see."""
    c = Consumer(side.conf("admin", **{"group.id": group, "group.protocol": "consumer",
                                       "auto.offset.reset": "earliest", "enable.auto.commit": False}))
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + 30
        while not c.assignment():
            assert time.monotonic() < deadline, f"no assignment in {group}"
            c.poll(0.2)
        return op_describe_group(side, user, group)
    finally:
        c.close()


def op_list_groups(side, user):
    """ListGroups: which of the set-up groups the user sees."""
    try:
        res = side.admin(user).list_consumer_groups(request_timeout=10).result(15)
    except KafkaException as e:
        return err_name(e)
    seen = sorted(g.group_id for g in res.valid if g.group_id in GROUPS)
    errs = errors_or_ok(res.errors)
    return ("sees " + ",".join(seen) if seen else "sees none") + ("" if errs == "ok" else f" errors {errs}")


def op_delete_group(side, user, group):
    return future_outcome(side.admin(user).delete_consumer_groups([group], request_timeout=10))


def op_create_topic(side, user, topic):
    return future_outcome(side.admin(user).create_topics(
        [NewTopic(topic, num_partitions=1, replication_factor=1)], operation_timeout=10, request_timeout=10))


def op_delete_topic(side, user, topic):
    return future_outcome(side.admin(user).delete_topics([topic], operation_timeout=10, request_timeout=10))


def op_create_partitions(side, user, topic, count):
    return future_outcome(side.admin(user).create_partitions(
        [NewPartitions(topic, count)], operation_timeout=10, request_timeout=10))


def op_delete_records(side, user, topic, before):
    return future_outcome(side.admin(user).delete_records(
        [TopicPartition(topic, 0, before)], operation_timeout=10, request_timeout=10))


def op_list_offsets(side, user, topic):
    return future_outcome(side.admin(user).list_offsets(
        {TopicPartition(topic, 0): OffsetSpec.latest()}, request_timeout=10))


def op_describe_configs(side, user, rtype, name):
    return future_outcome(side.admin(user).describe_configs(
        [ConfigResource(rtype, name)], request_timeout=10))


def op_alter_configs(side, user, rtype, name, key, value):
    res = ConfigResource(rtype, name, incremental_configs=[
        ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)])
    return future_outcome(side.admin(user).incremental_alter_configs([res], request_timeout=10))


def op_describe_cluster(side, user):
    return future_outcome(side.admin(user).describe_cluster(request_timeout=10))


def op_java_describe_acls(side, user):
    """`kafka-acls --list` (the Java AdminClient): librdkafka's describe_acls reports
    a denied DescribeAcls as an empty list, the Java client raises."""
    cfg = side.client_config(user)
    r = subprocess.run([KAFKA_SH, "tool", "org.apache.kafka.tools.AclCommand", "--bootstrap-server",
                        side.bootstrap, "--command-config", str(cfg), "--list"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode == 0:
        return "ok"
    m = re.search(r"org\.apache\.kafka\.common\.errors\.(\w+)Exception", r.stdout + r.stderr)
    return JAVA_ERRORS.get(m.group(1), m.group(1)) if m else f"rc={r.returncode}"


JAVA_ERRORS = {"ClusterAuthorization": "CLUSTER_AUTHORIZATION_FAILED",
               "SecurityDisabled": "SECURITY_DISABLED"}


def op_create_acls(side, user):
    b = AclBinding(T, "eq-orders", LIT, "User:carol", "*", Op.READ, ALLOW)
    return future_outcome(side.admin(user).create_acls([b], request_timeout=10))


# ------------------------------------------------------------------ the matrix

@dataclass
class Cell:
    kind: str          # the operation family ("both allowed and denied" is checked per kind)
    user: str
    fn: Callable
    args: tuple
    expect: str        # what Kafka's own authorizer answers (checked on side A)
    kw: dict = field(default_factory=dict)

    @property
    def denied(self) -> bool:
        """Whether Kafka's answer is a denial (an error, a filtered listing, or the
        local error librdkafka makes of a denied Metadata)."""
        return "AUTHORIZATION_FAILED" in self.expect or self.expect in ("sees none", "_NOENT")

    @property
    def id(self) -> str:
        a = " ".join(str(x) for x in self.args)
        k = " ".join(f"{k}={v}" for k, v in self.kw.items())
        return f"{self.user:5} {self.fn.__name__[3:]} {a} {k}".rstrip()


TA, GA, XA, CA = ("TOPIC_AUTHORIZATION_FAILED", "GROUP_AUTHORIZATION_FAILED",
                  "TRANSACTIONAL_ID_AUTHORIZATION_FAILED", "CLUSTER_AUTHORIZATION_FAILED")
TOPIC_RT, BROKER_RT = ResourceType.TOPIC, ResourceType.BROKER

# In order: cells that change state (deletions) come last, and each side runs
# the cells in this order, so both see the same state.
MATRIX = [
    # Metadata for a named topic
    Cell("metadata", "alice", op_metadata, ("eq-orders",), "ok"),
    Cell("metadata", "alice", op_metadata, ("eq-pay.a",), TA),
    Cell("metadata", "alice", op_metadata, ("eq-cfg",), TA),     # DescribeConfigs does not imply Describe
    Cell("metadata", "bob", op_metadata, ("eq-pay.a",), "ok"),   # prefixed ALL
    Cell("metadata", "bob", op_metadata, ("eq-pay.locked",), "ok"),   # DENY Write leaves Describe
    Cell("metadata", "bob", op_metadata, ("eq-pay.hidden",), TA),     # DENY Describe beats prefixed ALL
    Cell("metadata", "dave", op_metadata, ("eq-cfg",), "ok"),         # wildcard topic grant
    Cell("metadata", "dave", op_metadata, ("eq-missing",), "UNKNOWN_TOPIC_OR_PART"),
    Cell("metadata", "carol", op_metadata, ("eq-orders",), TA),
    Cell("metadata", "admin", op_metadata, ("eq-logs",), "ok"),
    # Metadata for all topics: filtered
    Cell("metadata-all", "alice", op_metadata_all, (), "sees eq-logs,eq-orders"),
    Cell("metadata-all", "bob", op_metadata_all, (),
         "sees eq-pay.a,eq-pay.del,eq-pay.locked,eq-pay.parts,eq-pay.recs"),
    Cell("metadata-all", "dave", op_metadata_all, (), "sees " + ",".join(sorted(TOPICS))),
    Cell("metadata-all", "carol", op_metadata_all, (), "sees none"),
    # Metadata that may create the topic
    Cell("autocreate", "bob", op_metadata_autocreate, ("eq-pay.auto1",), "ok"),   # created
    Cell("autocreate", "dave", op_metadata_autocreate, ("eq-dave-auto",), TA),   # Describe, no Create
    Cell("autocreate", "alice", op_metadata_autocreate, ("eq-new-alice.auto",), TA),  # Create, no Describe
    # Produce (acks=all)
    Cell("produce", "alice", op_produce, ("eq-orders",), "ok"),
    Cell("produce", "alice", op_produce, ("eq-logs",), TA),           # Describe only
    Cell("produce", "bob", op_produce, ("eq-pay.a",), "ok"),
    Cell("produce", "bob", op_produce, ("eq-pay.locked",), TA),       # DENY beats prefixed ALLOW
    Cell("produce", "bob", op_produce, ("eq-pay.auto2",), "ok"),      # auto-created (Create via ALL)
    Cell("produce", "carol", op_produce, ("eq-orders",), TA),
    Cell("produce", "dave", op_produce, ("eq-orders",), TA),
    Cell("produce", "admin", op_produce, ("eq-logs",), "ok"),
    # Idempotent producer: InitProducerId needs IdempotentWrite or Write on some topic
    Cell("idempotent", "alice", op_produce_idempotent, ("eq-orders",), "ok"),
    Cell("idempotent", "bob", op_produce_idempotent, ("eq-pay.a",), "ok"),
    Cell("idempotent", "dave", op_produce_idempotent, ("eq-logs",), TA),
    Cell("idempotent", "carol", op_produce_idempotent, ("eq-orders",), "fatal:" + CA),   # InitProducerId
    # Transactions
    Cell("txn", "alice", op_txn, ("eq-tx-alice-1", "eq-orders"), "ok"),
    Cell("txn", "alice", op_txn, ("eq-tx-alice-2", "eq-logs"), TA + "@commit"),
    Cell("txn", "alice", op_txn, ("eq-tx-alice-3", "eq-orders"), "ok", {"offsets_group": "eq-app"}),
    Cell("txn", "alice", op_txn, ("eq-tx-alice-4", "eq-orders"), GA + "@send_offsets",
         {"offsets_group": "eq-other"}),
    Cell("txn", "bob", op_txn, ("eq-tx-alice-5", "eq-pay.a"), XA + "@init"),
    Cell("txn", "bob", op_txn, ("eq-tx-bob", "eq-pay.a"), XA + "@init"),   # Describe only
    Cell("txn", "carol", op_txn, ("eq-tx-carol", "eq-orders"), XA + "@init"),
    Cell("txn", "admin", op_txn, ("eq-tx-admin", "eq-logs"), "ok"),
    # Consume in a group (subscribe)
    Cell("consume-group", "alice", op_consume_group, ("eq-orders", "eq-app"), "ok"),
    Cell("consume-group", "alice", op_consume_group, ("eq-orders", "eq-alice-x"), "ok"),   # prefixed group
    Cell("consume-group", "alice", op_consume_group, ("eq-orders", "eq-other"), GA),
    Cell("consume-group", "alice", op_consume_group, ("eq-orders", "eq-alice-blocked"), GA),  # DENY
    Cell("consume-group", "alice", op_consume_group, ("eq-logs", "eq-alice-logs"), TA),  # Fetch denied
    Cell("consume-group", "bob", op_consume_group, ("eq-pay.a", "eq-bob-c"), "ok"),
    Cell("consume-group", "bob", op_consume_group, ("eq-orders", "eq-bob-c2"), TA),
    Cell("consume-group", "dave", op_consume_group, ("eq-orders", "eq-app"), GA),   # group Describe only
    Cell("consume-group", "carol", op_consume_group, ("eq-orders", "eq-app"), GA),
    Cell("consume-group", "alice", op_consume_group, ("eq-orders", "eq-alice-848"), "ok",
         {"protocol": "consumer"}),
    Cell("consume-group", "alice", op_consume_group, ("eq-orders", "eq-other-848"), GA,
         {"protocol": "consumer"}),
    # Consume with assign (Fetch only)
    Cell("consume-assign", "alice", op_consume_assign, ("eq-orders", "eq-alice-a"), "ok"),
    Cell("consume-assign", "alice", op_consume_assign, ("eq-logs", "eq-alice-a"), TA),  # Describe only
    Cell("consume-assign", "bob", op_consume_assign, ("eq-pay.locked", "eq-bob-a"), "ok"),
    Cell("consume-assign", "dave", op_consume_assign, ("eq-orders", "eq-app"), TA),
    # no Describe on the topic: librdkafka reports nothing for it, only the group
    Cell("consume-assign", "carol", op_consume_assign, ("eq-orders", "eq-app"), GA),
    # ListOffsets
    Cell("list-offsets", "alice", op_list_offsets, ("eq-logs",), "ok"),
    Cell("list-offsets", "dave", op_list_offsets, ("eq-orders",), "ok"),
    # librdkafka looks up the leader first; Metadata denies the topic: a local _NOENT
    Cell("list-offsets", "carol", op_list_offsets, ("eq-orders",), "_NOENT"),
    # OffsetCommit
    Cell("commit", "alice", op_alter_group_offsets, ("eq-app", ["eq-orders"]), "ok"),
    Cell("commit", "alice", op_alter_group_offsets, ("eq-other", ["eq-orders"]), GA),
    Cell("commit", "alice", op_alter_group_offsets, ("eq-alice-blocked", ["eq-orders"]), GA),
    Cell("commit", "bob", op_alter_group_offsets, ("eq-bob-1", ["eq-pay.a"]), "ok"),
    Cell("commit", "bob", op_alter_group_offsets, ("eq-bob-1", ["eq-orders", "eq-pay.a"]), TA),
    Cell("commit", "alice", op_consumer_commit, ("eq-alice-1", "eq-orders"), "ok"),
    Cell("commit", "dave", op_consumer_commit, ("eq-app", "eq-orders"), GA),   # group Describe only
    # OffsetFetch
    Cell("fetch-offsets", "alice", op_list_group_offsets, ("eq-app",), "eq-orders:ok"),
    Cell("fetch-offsets", "bob", op_list_group_offsets, ("eq-bob-1",), "eq-pay.a:ok"),   # filtered
    Cell("fetch-offsets", "bob", op_list_group_offsets, ("eq-bob-1", ["eq-orders", "eq-pay.a"]),
         "eq-orders:" + TA + ",eq-pay.a:ok"),
    Cell("fetch-offsets", "carol", op_list_group_offsets, ("eq-app",), GA),
    # Groups
    Cell("describe-group", "alice", op_describe_group, ("eq-app",), "ok"),
    Cell("describe-group", "dave", op_describe_group, ("eq-app",), "ok"),
    Cell("describe-group", "alice", op_describe_group, ("eq-bob-1",), GA),
    Cell("describe-group", "carol", op_describe_group, ("eq-app",), GA),
    # a member assigned a topic alice may not describe hides the whole group from her
    Cell("describe-group", "alice", op_describe_live_group, ("eq-alice-live", "eq-orders"), "ok"),
    Cell("describe-group", "alice", op_describe_live_group, ("eq-alice-hidden", "eq-pay.a"), TA),
    Cell("list-groups", "alice", op_list_groups, (), "sees eq-alice-1,eq-app"),
    Cell("list-groups", "bob", op_list_groups, (), "sees " + ",".join(sorted(GROUPS))),   # Describe on Cluster
    Cell("list-groups", "dave", op_list_groups, (), "sees eq-app"),
    Cell("list-groups", "carol", op_list_groups, (), "sees none"),
    # Topic creation
    Cell("create-topic", "alice", op_create_topic, ("eq-new-alice.t1",), "ok"),   # prefixed Create
    Cell("create-topic", "alice", op_create_topic, ("eq-new-other",), TA),
    Cell("create-topic", "alice", op_create_topic, ("eq-orders",), TA),           # exists, no Create
    Cell("create-topic", "bob", op_create_topic, ("eq-bob-topic",), "ok"),        # Create on Cluster
    Cell("create-topic", "bob", op_create_topic, ("eq-pay.a",), "TOPIC_ALREADY_EXISTS"),
    Cell("create-topic", "carol", op_create_topic, ("eq-carol",), TA),
    # Configs
    Cell("describe-configs", "alice", op_describe_configs, (TOPIC_RT, "eq-cfg"), "ok"),
    Cell("describe-configs", "alice", op_describe_configs, (TOPIC_RT, "eq-orders"), TA),
    Cell("describe-configs", "bob", op_describe_configs, (TOPIC_RT, "eq-pay.a"), "ok"),
    Cell("describe-configs", "dave", op_describe_configs, (BROKER_RT, "1"), "ok"),
    Cell("describe-configs", "bob", op_describe_configs, (BROKER_RT, "1"), CA),
    Cell("describe-configs", "carol", op_describe_configs, (TOPIC_RT, "eq-orders"), TA),
    Cell("alter-configs", "bob", op_alter_configs, (TOPIC_RT, "eq-pay.a", "retention.ms", "3600000"), "ok"),
    Cell("alter-configs", "alice", op_alter_configs, (TOPIC_RT, "eq-cfg", "retention.ms", "3600000"), TA),
    Cell("alter-configs", "dave", op_alter_configs, (BROKER_RT, "1", "log.cleaner.threads", "1"), CA),
    # Cluster
    Cell("cluster", "bob", op_describe_cluster, (), "ok"),
    Cell("cluster", "carol", op_describe_cluster, (), "ok"),
    Cell("cluster", "alice", op_java_describe_acls, (), CA),
    Cell("cluster", "bob", op_create_acls, (), CA),
    # Partitions, records, deletions (state changes last)
    Cell("create-partitions", "bob", op_create_partitions, ("eq-pay.parts", 2), "ok"),
    Cell("create-partitions", "alice", op_create_partitions, ("eq-orders", 2), TA),
    Cell("delete-records", "bob", op_delete_records, ("eq-pay.recs", 1), "ok"),
    Cell("delete-records", "alice", op_delete_records, ("eq-orders", 1), TA),
    Cell("delete-group", "alice", op_delete_group, ("eq-app",), GA),
    Cell("delete-group", "bob", op_delete_group, ("eq-bob-del",), "ok"),
    Cell("delete-topic", "alice", op_delete_topic, ("eq-orders",), TA),
    Cell("delete-topic", "carol", op_delete_topic, ("eq-orders",), TA),
    Cell("delete-topic", "dave", op_delete_topic, ("eq-logs",), TA),
    Cell("delete-topic", "bob", op_delete_topic, ("eq-pay.hidden",), TA),   # Delete but no Describe
    Cell("delete-topic", "bob", op_delete_topic, ("eq-pay.del",), "ok"),
]


def run_matrix(side: Side) -> dict:
    """cell id -> outcome; side.seconds: cell id -> how long it took."""
    out = {}
    side.seconds = {}
    for cell in MATRIX:
        t0 = time.monotonic()
        try:
            out[cell.id] = cell.fn(side, cell.user, *cell.args, **cell.kw)
        except Exception as e:  # the outcome of a client-side failure is its text
            out[cell.id] = f"exception {err_name(e)}"
        side.seconds[cell.id] = time.monotonic() - t0
    return out


# ------------------------------------------------------------------ set-up

def seed(bootstrap: str, sec: Sec):
    """As a super user: the topics (3 records each) and the groups' offsets."""
    from confluent_kafka.admin import AdminClient
    a = AdminClient({**rd_common(bootstrap, sec), "allow.auto.create.topics": False})
    fs = a.create_topics([NewTopic(t, num_partitions=1, replication_factor=1) for t in TOPICS],
                         operation_timeout=20, request_timeout=20)
    for f in fs.values():
        f.result(30)

    def ready():
        md = a.list_topics(timeout=5)
        return all(t in md.topics and md.topics[t].error is None
                   and all(p.leader >= 0 for p in md.topics[t].partitions.values()) for t in TOPICS)
    wait_until(ready, 30, "seeded topics to have leaders")
    p = Producer({**rd_common(bootstrap, sec), "acks": "all", "linger.ms": 0})
    for t in TOPICS:
        for i in range(3):
            p.produce(t, key=b"seed%d" % i, value=b"seed")
    assert p.flush(30) == 0
    for g, ts in GROUPS.items():
        def commit():
            res = a.alter_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(g, [TopicPartition(t, 0, 1) for t in ts])],
                request_timeout=20)[g].result(30)
            errs = partition_errors(res.topic_partitions)
            # while the offsets topic is made and loaded
            assert all(e.code() in (KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.NOT_COORDINATOR,
                                    KafkaError.COORDINATOR_NOT_AVAILABLE) for e in errs), (g, errs)
            return not errs
        wait_until(commit, 60, f"offsets of group {g}", interval=0.5)
    # the transaction coordinator too, so that the first transactional cell does not wait for it
    tp = Producer({**rd_common(bootstrap, sec), "transactional.id": "eq-warm-up"})
    tp.init_transactions(60)
    tp.begin_transaction()
    tp.produce(TOPICS[0], value=b"warm-up")
    tp.commit_transaction(60)


def write_client_config(path: Path, user: str) -> Path:
    path.write_text("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\n"
                    "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
                    f'username="{user}" password="{password(user)}";\n')
    return path


@pytest.fixture(scope="module")
def kafka_a(tmp_path_factory):
    """Kafka with StandardAuthorizer, the ACLs, seeded; yields (cluster, Side, kafka-acls --list text)."""
    k = KafkaCluster(tmp_path_factory.mktemp("kafka-acl"), 1, KAFKA_A_PORT_BASE, sasl=True, acl=True)
    k.start()
    try:
        bootstrap = f"{HOST}:{k.sasl_port(1)}"
        seed(bootstrap, scram("admin"))
        admin = rd_admin(bootstrap, scram("admin"))
        bindings = [AclBinding(rt, name, pat, f"User:{user}", "*", op, perm)
                    for rt, name, pat, user, op, perm in ACLS]
        for b, f in admin.create_acls(bindings, request_timeout=20).items():
            f.result(30)
        # the broker's authorizer sees them once the metadata log has them
        side = Side("kafka", bootstrap, k.run_dir)
        wait_until(lambda: op_metadata(side, "alice", "eq-orders") == "ok", 30, "alice's ACLs to apply")
        wait_until(lambda: op_list_groups(side, "bob").startswith("sees eq-alice-1"), 30,
                   "bob's cluster ACLs to apply")
        cfg = write_client_config(k.run_dir / "admin-client.properties", "admin")
        r = subprocess.run([KAFKA_SH, "tool", "org.apache.kafka.tools.AclCommand", "--bootstrap-server",
                            bootstrap, "--command-config", str(cfg), "--list"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"kafka-acls --list failed:\n{r.stdout}\n{r.stderr}"
        listing = r.stdout
        assert listing.count("permissionType=") == len(ACLS), listing
        yield k, side, listing
        side.close()
    finally:
        k.stop()


@pytest.fixture(scope="module")
def imported_policies(kafka_a, tmp_path_factory) -> Path:
    _, _, listing = kafka_a
    d = tmp_path_factory.mktemp("eq-policy")
    (d / "kafka-acls.txt").write_text(listing)
    r = subprocess.run([CUSTOS_BIN, "policy", "import-acls", str(d / "kafka-acls.txt"),
                        "--super-user", "User:admin"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"custos policy import-acls failed:\n{r.stderr}\ninput:\n{listing}"
    out = d / "imported.cedar"
    out.write_text(r.stdout)
    v = subprocess.run([CUSTOS_BIN, "policy", "validate", str(out)], capture_output=True, text=True,
                       timeout=60)
    assert v.returncode == 0, f"the imported policies do not validate:\n{v.stderr}"
    return out


@pytest.fixture(scope="module")
def credentials(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("eq-users") / "users.yaml"
    add_scram_users(path, {user: password(user) for user in USERS})
    return path


@pytest.fixture(scope="module")
def outcomes_a(kafka_a) -> dict:
    _, side, _ = kafka_a
    t0 = time.monotonic()
    out = run_matrix(side)
    if PRINT:
        print(f"\nKafka A: {len(out)} cells in {time.monotonic() - t0:.1f}s")
    return out


# ------------------------------------------------------------------ tests

def table(rows) -> str:
    w = max(len(r[0]) for r in rows)
    return "\n".join(f"  {r[0]:<{w}}  " + "  |  ".join(r[1:]) for r in rows)


def test_the_matrix_covers_allowed_and_denied(kafka_a, outcomes_a):
    """At least 40 cells, each operation kind with both an allowed and a denied
    cell, and Kafka itself answering every cell as the ACLs say."""
    if PRINT:
        secs = kafka_a[1].seconds
        print("\n" + table([(c.id, f"{secs[c.id]:5.2f}s", outcomes_a[c.id]) for c in MATRIX]))
    assert len(MATRIX) >= 40
    assert len({c.id for c in MATRIX}) == len(MATRIX), "cell ids must be unique"
    kinds = {}
    for c in MATRIX:
        kinds.setdefault(c.kind, set()).add(c.denied)
    one_sided = {k for k, v in kinds.items() if len(v) != 2}
    assert not one_sided, f"operations without both an allowed and a denied cell: {one_sided}"
    wrong = [(c.id, c.expect, outcomes_a[c.id]) for c in MATRIX if outcomes_a[c.id] != c.expect]
    assert not wrong, ("Kafka's own authorizer answered differently than this test expects "
                       "(cell | expected | Kafka):\n" + table(wrong))


def test_import_acls_takes_kafkas_own_listing(imported_policies):
    """`custos policy import-acls` reads what `kafka-acls --list` printed for A:
    one policy per ACL (ALLOW -> permit, DENY -> forbid) plus the super user."""
    text = imported_policies.read_text()
    denies = sum(1 for a in ACLS if a[5] == DENY)
    assert text.count("\nforbid") == denies, text
    assert text.count("\npermit") == len(ACLS) - denies + 1, text


@pytest.fixture(scope="module")
def custos_authz(kafka, imported_policies, credentials, tmp_path_factory):
    """Custos with the imported policies in front of the session Kafka (no authorizer), seeded."""
    seed(kafka.bootstrap, PLAIN)
    auth = ("  auth:\n    sasl:\n      mechanisms: [SCRAM-SHA-512]\n"
            f"      credentials_file: \"{credentials}\"\n")
    g = start_gateway(kafka, tmp_path_factory.mktemp("custos-authz"), "custos-authz", listen_extra=auth,
                      extra_yaml=f"authorization:\n  policies: [\"{imported_policies}\"]\n")
    yield g
    stop_gateway(g)


def test_custos_answers_every_cell_as_kafka_does(outcomes_a, custos_authz):
    side = Side("custos", custos_authz.bootstrap, custos_authz.workdir)
    t0 = time.monotonic()
    out = run_matrix(side)
    if PRINT:
        print(f"\nCustos: {len(out)} cells in {time.monotonic() - t0:.1f}s\n"
              + table([(c.id, outcomes_a[c.id], out[c.id]) for c in MATRIX]))
    side.close()
    diff = [(c.id, outcomes_a[c.id], out[c.id]) for c in MATRIX if out[c.id] != outcomes_a[c.id]]
    assert not diff, (f"{len(diff)} of {len(MATRIX)} cells differ (cell | Kafka's authorizer | Custos):\n"
                      + table(diff))
