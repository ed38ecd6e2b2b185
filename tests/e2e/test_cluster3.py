"""A three-broker cluster behind the gateway: partitions led by different
brokers are reached through their own gateway addresses, and clients keep
working while one broker is stopped and restarted."""
import threading
import time

import pytest

from harness import (KAFKA_PORT_BASE, JavaProc, KafkaCluster, RdProducer, java, java_consume,
                     java_produce, rd_admin, rd_consume, rd_consumer, rd_create_topic, rd_produce,
                     start_gateway, stop_gateway, wait_until)
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
