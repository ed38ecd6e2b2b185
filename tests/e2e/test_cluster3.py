"""A three-broker cluster behind the gateway: partitions led by different
brokers are reached through their own gateway addresses, clients keep
working while one broker is stopped and restarted, and a leader moved under
running Java clients is announced to them at its gateway address only."""
import json
import subprocess
import threading
import time

import pytest

from harness import (DIRECT, KAFKA_PORT_BASE, KAFKA_SH, JavaProc, KafkaCluster, RdProducer,
                     gateway_metrics, java, java_consume, java_produce, metric_sum, rd_admin, rd_common,
                     rd_consume, rd_consumer, rd_create_topic, rd_produce, start_gateway, stop_gateway,
                     tcp_peer_ports, wait_until)
from records import (assert_same_records, check_consume_order, check_produce_order, rec_from_json,
                     rec_from_rdkafka, record_headers, record_key, record_value)


@pytest.fixture(scope="module")
def kafka3(tmp_path_factory):
    k = KafkaCluster(tmp_path_factory.mktemp("kafka3"), 3, KAFKA_PORT_BASE + 1000)
    k.start()
    yield k
    k.stop()


@pytest.fixture(scope="module")
def gw3(kafka3, tmp_path_factory):
    g = start_gateway(kafka3, tmp_path_factory.mktemp("custos3"), "custos3")
    yield g
    stop_gateway(g)


def leaders(bootstrap, topic):
    _, objs, _ = java("admin", "describe-topic", "--bootstrap", bootstrap, "--topic", topic)
    return {p["partition"]: p["leader"] for p in objs[0]["partitions"]}


def test_partitions_on_different_brokers(gw3, topic_name):
    bs = gw3.bootstrap
    rd_create_topic(bs, topic_name, 6, rf=3)
    ls = leaders(bs, topic_name)
    ids = {l["id"] for l in ls.values()}
    assert len(ids) >= 2, f"leaders should differ: {ls}"
    for l in ls.values():
        assert (l["host"], l["port"]) == gw3.broker_addr(l["id"]), l
    md = rd_admin(bs).list_topics(topic_name, timeout=10)
    assert sorted(md.brokers) == [1, 2, 3]
    for b in md.brokers.values():
        assert (b.host, b.port) == gw3.broker_addr(b.id)
    assert {p.leader for p in md.topics[topic_name].partitions.values()} == ids

    produced = [rec_from_json(o) for o in java_produce(bs, topic_name, 120, compression="snappy",
                                                         idempotent=True)]
    produced += rd_produce(bs, topic_name, 120, compression="zstd", idempotent=True, seed=5)
    assert {r.p for r in produced} == set(range(6))
    for label, got in (("java", java_consume(bs, topic_name, 240, extra_ms=300)),
                       ("rdkafka", rd_consume(bs, topic_name, 240, extra_s=0.3))):
        check_consume_order(got, label)
        assert_same_records(produced, got, f"3 brokers, {label} consumer")


class RdLoop:
    """librdkafka: one idempotent producer sending steadily, one consumer reading
    every partition from the beginning."""

    def __init__(self, bootstrap, topic, partitions):
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition
        self.topic = topic
        self.prod = RdProducer(bootstrap, idempotent=True, compression="lz4",
                               extra={"message.timeout.ms": 120000})
        self.cons = rd_consumer(bootstrap, extra={"topic.metadata.refresh.interval.ms": 2000})
        self.cons.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        self.got = []
        self.cons_err = []
        self.lock = threading.Lock()
        self.stop_prod = threading.Event()
        self.stop_cons = threading.Event()
        self.tp = threading.Thread(target=self._produce, daemon=True)
        self.tc = threading.Thread(target=self._consume, daemon=True)
        self.tp.start()
        self.tc.start()

    def _produce(self):
        i = 0
        while not self.stop_prod.is_set():
            self.prod.send(self.topic, i, record_key(9, i), record_value(9, i, 80), record_headers(9, i))
            i += 1
            time.sleep(0.01)
        self.sent = i

    def _consume(self):
        while not self.stop_cons.is_set():
            for m in self.cons.consume(200, 0.1):
                if m.error():
                    # transient errors while a broker is away are reported, not fatal
                    self.cons_err.append(str(m.error()))
                    continue
                with self.lock:
                    self.got.append(rec_from_rdkafka(m))
        self.cons.close()

    def acked(self):
        with self.prod.lock:
            return len(self.prod.acked)

    def consumed(self):
        with self.lock:
            return len(self.got)

    def snapshot(self):
        with self.lock:
            return list(self.got)


def test_broker_restart_while_clients_run(gw3, kafka3, topic_name):
    bs = gw3.bootstrap
    partitions = 6
    rd_create_topic(bs, topic_name, partitions, rf=3)
    ls = leaders(bs, topic_name)
    victim = ls[0]["id"]    # a broker that leads at least partition 0

    loop = RdLoop(bs, topic_name, partitions)
    # the Java producer runs throughout too (throttled: ~20 s for 1500 records)
    jprod = JavaProc("produce", "--bootstrap", bs, "--topic", topic_name, "--count", 1500, "--seed", 11,
                     "--idempotent", "--compression", "gzip", "--size", 60, "--timeout-ms", 150000,
                     "--interval-ms", 12, timeout=170)
    # and a Java group consumer
    jcons = JavaProc("consume", "--bootstrap", bs, "--topic", topic_name, "--group", f"g-{topic_name}",
                     "--group-protocol", "consumer", "--follow", "--timeout-ms", 170000, timeout=190)
    procs = [jprod, jcons]
    try:
        def progress(n, what):
            a0, c0 = loop.acked(), loop.consumed()
            j0 = jcons.count()
            wait_until(lambda: loop.acked() >= a0 + n and loop.consumed() >= c0 + n and jcons.count() >= j0 + n,
                       60, f"{n} more records produced and consumed {what}")

        progress(100, "before the restart")
        kafka3.stop_node(victim)
        progress(100, f"while broker {victim} is down")
        kafka3.start_node(victim)
        progress(100, f"after broker {victim} came back")

        loop.stop_prod.set()
        loop.tp.join(10)
        loop.prod.flush(90)
        assert not loop.prod.failed, f"librdkafka delivery failures: {list(loop.prod.failed.items())[:5]}"
        rc = jprod.wait(150)
        assert rc == 0, f"java producer failed:\n{jprod.stderr()}"
        jrecs = jprod.records()
        assert len(jrecs) == 1500
        produced = loop.prod.acked_in_order() + jrecs
        check_produce_order(loop.prod.acked_in_order(), "rdkafka producer")
        check_produce_order(jrecs, "java producer")

        wait_until(lambda: loop.consumed() >= len(produced) and jcons.count() >= len(produced), 90,
                   "consumers to read every acknowledged record")
        loop.stop_cons.set()
        loop.tc.join(15)
        jcons.quit()
        assert jcons.wait(40) == 0, jcons.stderr()

        # Producer-side timestamps of retried batches are not the records' own
        # (see assert_same_records); the two consumers must agree exactly.
        got = loop.snapshot()
        check_consume_order(got, "rdkafka consumer")
        assert_same_records(produced, got, "rdkafka consumer across a broker restart", ignore_ts=True)
        jgot = jcons.records()
        check_consume_order(jgot, "java group consumer")
        assert_same_records(got, jgot, "java group consumer vs rdkafka consumer across a broker restart")
    finally:
        loop.stop_prod.set()
        loop.stop_cons.set()
        for p in procs:
            p.kill()


@pytest.mark.skipif(DIRECT, reason="checks the addresses Custos gives clients")
def test_leader_moved_under_java_clients_is_announced_at_its_gateway_address(gw3, kafka3, topic_name, tmp_path):
    """KIP-951: after a leadership change, Produce (v10+) and Fetch (v16+)
    answers name the new leader's host and port, and Java clients connect
    there at once, without asking Metadata. Fetch answers above
    limits.fetch_stream_min_bytes pass through Custos as they arrive, records
    unread, with only their closing tagged fields (where those endpoints are)
    rewritten. Here a Java consumer gets such a hint inside a ~1 MiB answer
    and a Java producer in a Produce answer; neither may ever connect to a
    broker directly, and neither may lose or repeat a record."""
    from confluent_kafka import ElectionType, Producer, TopicPartition

    direct = kafka3.bootstrap
    admin = rd_admin(direct)
    # Both partitions led by broker 1 at first; partition 1 will move to 2.
    r = subprocess.run([KAFKA_SH, "tool", "org.apache.kafka.tools.TopicCommand", "--bootstrap-server", direct,
                        "--create", "--topic", topic_name, "--replica-assignment", "1:2:3,1:3:2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr

    def leader(p):
        return admin.list_topics(topic_name, timeout=10).topics[topic_name].partitions[p].leader

    wait_until(lambda: leader(0) == 1 and leader(1) == 1, 30, "both partitions led by broker 1")
    # ~2 MB in partition 0, so the consumer's answers from broker 1 stay
    # near max.partition.fetch.bytes (1 MiB) long after the move.
    first = {0: 10000, 1: 1000}
    prod = Producer({**rd_common(direct), "acks": "all", "linger.ms": 20})
    for p, n in first.items():
        for i in range(n):
            prod.produce(topic_name, value=f"{p}-{i}-".encode().ljust(200, b"."), partition=p)
            if i % 5000 == 4999:
                prod.flush(30)
    assert prod.flush(60) == 0
    del prod

    real_ports = {kafka3.client_port(n) + d for n in range(1, 4) for d in (0, 100)}
    resume = tmp_path / "resume"
    moved = 400
    jcons = JavaProc("consume", "--bootstrap", gw3.bootstrap, "--topic", topic_name,
                     "--count", sum(first.values()) + moved, "--pause-after", 1, "--resume-file", resume,
                     "--property", "metadata.max.age.ms=300000", "--timeout-ms", 150000, timeout=170)
    jprod = None
    seen = {}
    stop = threading.Event()

    def watch():
        # Every peer each Java client has, sampled until the end.
        while not stop.is_set():
            for name, proc in (("consumer", jcons), ("producer", jprod)):
                if proc is not None:
                    seen.setdefault(name, set()).update(tcp_peer_ports(proc.proc.pid))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        # The consumer holds broker 1's first answer (both partitions), unread.
        wait_until(lambda: any(o.get("t") == "paused" for o in jcons.snapshot()), 60,
                   "the consumer to pause with an answer buffered")
        # A producer that learns partition 1's leader before the move and
        # keeps sending to it for ~20 s.
        jprod = JavaProc("produce", "--bootstrap", gw3.bootstrap, "--topic", topic_name, "--partition", 1,
                         "--count", moved, "--size", 200, "--seed", 9, "--interval-ms", 50, "--idempotent",
                         "--property", "metadata.max.age.ms=300000", "--timeout-ms", 120000, timeout=140)
        broker1 = gw3.broker_port_base + 1
        wait_until(lambda: broker1 in tcp_peer_ports(jprod.proc.pid), 60,
                   "the producer to connect to broker 1 through Custos")
        before = gateway_metrics(gw3)

        plan = tmp_path / "move.json"
        plan.write_text(json.dumps({"version": 1, "partitions": [
            {"topic": topic_name, "partition": 1, "replicas": [2, 1, 3]}]}))
        r = subprocess.run([KAFKA_SH, "tool", "org.apache.kafka.tools.reassign.ReassignPartitionsCommand",
                            "--bootstrap-server", direct, "--reassignment-json-file", str(plan), "--execute"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        wait_until(lambda: admin.list_topics(topic_name, timeout=10).topics[topic_name].partitions[1].replicas
                   == [2, 1, 3], 30, "partition 1's replicas reordered")
        elected = admin.elect_leaders(ElectionType.PREFERRED, [TopicPartition(topic_name, 1)]).result(30)
        assert all(e is None for e in elected.values()), elected
        wait_until(lambda: leader(1) == 2, 30, "partition 1 led by broker 2")
        resume.write_text("go")

        assert jprod.wait(140) == 0, jprod.stderr()
        assert jcons.wait(170) == 0, jcons.stderr()
        after = gateway_metrics(gw3)
    finally:
        stop.set()
        watcher.join(5)
        jcons.kill()
        if jprod is not None:
            jprod.kill()

    # Nothing lost, nothing twice.
    got = jcons.records()
    offsets = {p: sorted(r.o for r in got if r.p == p) for p in (0, 1)}
    assert offsets[0] == list(range(first[0])), "partition 0 read whole, once"
    assert offsets[1] == list(range(first[1] + moved)), "partition 1 read whole across the move, once"
    assert len(jprod.records()) == moved

    # Both clients reached broker 2 through Custos, and no client ever held a
    # connection to a broker itself.
    leaked = {name: ports & real_ports for name, ports in seen.items() if ports & real_ports}
    assert not leaked, f"Java clients connected to brokers directly: {leaked}"
    broker2 = gw3.broker_port_base + 2
    assert broker2 in seen.get("consumer", set()) and broker2 in seen.get("producer", set()), seen

    # The hints reached both clients, rewritten: a Fetch answer carried one
    # (answers then held ~1 MiB of partition 0: streamed, not read whole), and
    # a Produce answer did.
    def delta(name, labels=""):
        return metric_sum(after, name, labels) - metric_sum(before, name, labels)

    assert delta("custos_leader_hints_rewritten_total", 'api="Fetch"') >= 1, "no Fetch answer named the new leader"
    assert delta("custos_leader_hints_rewritten_total", 'api="Produce"') >= 1, "no Produce answer named the new leader"
    assert delta("custos_fetch_streamed_total") >= 1, "no large Fetch answer was streamed"
