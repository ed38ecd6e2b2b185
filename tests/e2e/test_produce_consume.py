"""Produce and consume through the gateway with the Java client and librdkafka:
every codec, the idempotent producer, transactions. What is consumed must be
byte for byte what was produced (keys, values, headers with duplicate names,
timestamps, partitions, offsets, order within each partition)."""
import re
import urllib.request

import pytest

from harness import DIRECT, java, java_consume, java_produce, rd_consume, rd_create_topic, rd_produce
from records import (assert_same_records, check_consume_order, check_produce_order, digest, rec_from_json,
                     record_headers, record_key, record_value)

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
CLIENTS = ["java", "rdkafka"]


def produce(client, bootstrap, topic, count, **kw):
    """Acked records in send order (for transactions also their outcomes)."""
    if client == "java":
        objs = java_produce(bootstrap, topic, count, **kw)
        recs = [rec_from_json(o) for o in objs]
        if kw.get("transactional_id"):
            return recs, [o["txn"] for o in objs]
        return recs
    return rd_produce(bootstrap, topic, count, **kw)


def consume_both(bootstrap, topic, count, **kw):
    """The same topic read by the Java consumer and by librdkafka (no group)."""
    isolation = kw.get("isolation", "read_uncommitted")
    extra = kw.get("extra_s", 0.3)
    j = java_consume(bootstrap, topic, count, isolation=isolation, extra_ms=int(extra * 1000))
    r = rd_consume(bootstrap, topic, count, isolation=isolation, extra_s=extra)
    return {"java consumer": j, "rdkafka consumer": r}


def test_records_match_generator(bootstrap, topic_name):
    """The Java client and tests/e2e/records.py generate the same records."""
    rd_create_topic(bootstrap, topic_name, 1)
    _, out, _ = java("produce", "--bootstrap", bootstrap, "--topic", topic_name, "--count", 40,
                     "--seed", 7, "--size", 70)
    objs = [o for o in out if o["t"] == "rec"]
    assert len(objs) == 40
    _, cons, _ = java("consume", "--bootstrap", bootstrap, "--topic", topic_name, "--count", 40)
    # the summary digests of producer and consumer agree, and match records.digest
    assert out[-1]["digest"] == cons[-1]["digest"] == digest(rec_from_json(o) for o in objs)
    for o in objs:
        r = rec_from_json(o)
        i = o["i"]
        assert r.k == record_key(7, i)
        assert r.v == record_value(7, i, 70)
        assert list(r.h) == record_headers(7, i)
    # the generator covers the edge cases the tests rely on
    recs = [rec_from_json(o) for o in objs]
    assert any(r.k is None for r in recs) and any(r.v is None for r in recs)
    assert any(r.h == () for r in recs)
    assert any(sum(1 for n, _ in r.h if n == "dup") == 2 for r in recs)
    assert any(v is None for r in recs for _, v in r.h)


@pytest.mark.parametrize("producer", CLIENTS)
@pytest.mark.parametrize("codec", CODECS)
def test_codec_roundtrip(bootstrap, topic_name, codec, producer):
    count = 60
    rd_create_topic(bootstrap, topic_name, 3)
    produced = produce(producer, bootstrap, topic_name, count, compression=codec, size=1000,
                       seed=10 + CODECS.index(codec))
    check_produce_order(produced)
    assert len({r.p for r in produced}) > 1, "records should spread over partitions"
    for label, got in consume_both(bootstrap, topic_name, count).items():
        check_consume_order(got, label)
        assert_same_records(produced, got, f"{producer} {codec} -> {label}")


@pytest.mark.parametrize("producer", CLIENTS)
def test_idempotent_producer(bootstrap, topic_name, producer):
    count = 300
    rd_create_topic(bootstrap, topic_name, 2)
    produced = produce(producer, bootstrap, topic_name, count, idempotent=True, compression="lz4", size=200)
    check_produce_order(produced)
    for label, got in consume_both(bootstrap, topic_name, count).items():
        check_consume_order(got, label)
        assert_same_records(produced, got, f"idempotent {producer} -> {label}")


@pytest.mark.parametrize("producer", CLIENTS)
def test_transactions_read_committed(bootstrap, topic_name, producer):
    count = 50
    rd_create_topic(bootstrap, topic_name, 2)
    produced, outcomes = produce(producer, bootstrap, topic_name, count, compression="zstd",
                                 transactional_id=f"txn-{topic_name}",
                                 txn_pattern="commit,abort,commit,abort,commit")
    committed = [r for r, o in zip(produced, outcomes) if o == "commit"]
    assert 0 < len(committed) < count
    check_produce_order(produced)
    # read_committed: exactly the committed records, nothing from the aborted transactions
    for label, got in consume_both(bootstrap, topic_name, len(committed), isolation="read_committed",
                                   extra_s=1.5).items():
        check_consume_order(got, label)
        assert_same_records(committed, got, f"{producer} transactions -> {label} read_committed")
    # read_uncommitted: every data record, aborted ones included
    for label, got in consume_both(bootstrap, topic_name, count, extra_s=0.5).items():
        check_consume_order(got, label)
        assert_same_records(produced, got, f"{producer} transactions -> {label} read_uncommitted")


def test_java_console_tools(bootstrap, topic_name, tmp_path):
    """Kafka's own ProducerPerformance and ConsoleConsumer work through the gateway."""
    import subprocess
    from harness import KAFKA_SH
    rd_create_topic(bootstrap, topic_name, 2)
    r = subprocess.run([KAFKA_SH, "tool", "org.apache.kafka.tools.ProducerPerformance",
                        "--topic", topic_name, "--num-records", "2000", "--record-size", "100",
                        "--throughput", "-1", "--producer-props", f"bootstrap.servers={bootstrap}",
                        "compression.type=snappy", "acks=all"],
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2000 records sent" in r.stdout, r.stdout[-2000:]
    r = subprocess.run([KAFKA_SH, "tool", "org.apache.kafka.tools.consumer.ConsoleConsumer",
                        "--bootstrap-server", bootstrap, "--topic", topic_name, "--from-beginning",
                        "--max-messages", "2000", "--timeout-ms", "30000",
                        "--property", "print.value=false",
                        "--property", "print.offset=true"],
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Processed a total of 2000 messages" in r.stderr, r.stderr[-2000:]


def same_in_send_order(produced, consumed, label):
    """For producers that learn no offsets (acks=0): per partition, the consumed
    records (offset order) equal the produced ones (send order), offsets aside."""
    def strip(rs):
        out = {}
        for r in rs:
            out.setdefault(r.p, []).append((r.ts, r.k, r.v, r.h))
        return out
    want, got = strip(produced), strip(sorted(consumed, key=lambda r: (r.p, r.o)))
    assert sorted(want) == sorted(got), f"{label}: partitions differ {sorted(want)} vs {sorted(got)}"
    for p in want:
        assert want[p] == got[p], f"{label}: partition {p} differs ({len(want[p])} produced, {len(got[p])} consumed)"


@pytest.mark.parametrize("producer", CLIENTS)
def test_acks_zero(bootstrap, topic_name, producer):
    """acks=0: the broker sends no response; every record still arrives, in order,
    even though the producer closes its connection right after sending."""
    count = 200
    rd_create_topic(bootstrap, topic_name, 2)
    if producer == "java":
        produced = [rec_from_json(o) for o in java_produce(bootstrap, topic_name, count, size=300,
                                                             extra=["--acks", "0"])]
    else:
        from harness import RdProducer
        prod = RdProducer(bootstrap, extra={"acks": 0})
        for i in range(count):
            prod.send(topic_name, i, record_key(4, i), record_value(4, i, 300), record_headers(4, i))
        prod.flush(30)
        assert not prod.failed
        produced = prod.acked_in_order()
        del prod
    assert len(produced) == count
    for label, got in consume_both(bootstrap, topic_name, count, extra_s=0.5).items():
        check_consume_order(got, label)
        same_in_send_order(produced, got, f"acks=0 {producer} -> {label}")


def zero_copy_bytes(gw) -> float:
    """Bytes Custos has moved socket to socket in the kernel so far."""
    with urllib.request.urlopen(f"http://{gw.host}:{gw.admin_port}/metrics", timeout=5) as r:
        m = re.search(r"^custos_zero_copy_bytes_total (\S+)$", r.read().decode(), re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.parametrize("producer", CLIENTS)
def test_large_records(gateway, bootstrap, topic_name, producer):
    """Records near and above the default 1 MB limits: multi-megabyte produce
    requests and fetch responses pass through whole. Through Custos (plain
    TCP on both legs, no stage reading records) the large Produce requests
    and the records of the large Fetch answers move socket to socket in the
    kernel, and still arrive byte for byte."""
    big = 6 * 1024 * 1024
    before_produce = None if DIRECT else zero_copy_bytes(gateway)
    rd_create_topic(bootstrap, topic_name, 4, config={"max.message.bytes": str(big + 1024 * 1024)})
    if producer == "java":
        produced = [rec_from_json(o) for o in java_produce(
            bootstrap, topic_name, 12, size=900_000, seed=21,
            extra=["--property", f"max.request.size={big * 2}", "--property", "batch.size=4000000",
                   "--property", "linger.ms=50"])]
        produced += [rec_from_json(o) for o in java_produce(
            bootstrap, topic_name, 2, size=big, seed=22, extra=["--property", f"max.request.size={big * 2}"])]
    else:
        from harness import RdProducer
        prod = RdProducer(bootstrap, extra={"message.max.bytes": big * 2, "linger.ms": 50})
        for i in range(12):
            prod.send(topic_name, i, record_key(21, i), record_value(21, i, 900_000), record_headers(21, i))
        for i in range(12, 14):
            prod.send(topic_name, i, record_key(22, i), record_value(22, i, big), record_headers(22, i))
        prod.flush(60)
        assert not prod.failed, prod.failed
        produced = prod.acked_in_order()
    check_produce_order(produced)
    before = None if DIRECT else zero_copy_bytes(gateway)
    if before is not None:
        # ~22 MB produced, nearly all of it in requests of 900 KB and more.
        moved = before - before_produce
        assert moved > 20_000_000, f"only {moved:.0f} produced bytes moved in the kernel"
    for label, got in consume_both(bootstrap, topic_name, len(produced)).items():
        check_consume_order(got, label)
        assert_same_records(produced, got, f"large records {producer} -> {label}")
    if before is not None:
        # Both consumers read ~22 MB, nearly all of it in large answers.
        moved = zero_copy_bytes(gateway) - before
        assert moved > 2 * 20_000_000, f"only {moved:.0f} bytes moved in the kernel"
