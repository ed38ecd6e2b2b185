"""A compacted topic: after the log cleaner has run, batches have gaps between
offsets, and an idempotent producer's batch can be left with no records at all.
Consumers through the gateway must read exactly what a consumer reading the
broker directly reads, and must not get stuck on a batch."""
import subprocess
import time

from harness import KAFKA_SH, RdProducer, java_consume, rd_consume, rd_create_topic, wait_until
from records import assert_same_records, check_consume_order


def compacted_topic(bootstrap, topic):
    rd_create_topic(bootstrap, topic, 1, config={
        "cleanup.policy": "compact", "segment.ms": "100", "min.cleanable.dirty.ratio": "0.001",
        "min.compaction.lag.ms": "0", "delete.retention.ms": "100", "compression.type": "producer"})


def empty_batches(kafka, topic) -> int:
    """Batches with no records left in the broker's log (kafka.tools.DumpLogSegments)."""
    files = sorted(str(f) for f in (kafka.run_dir / "node-1" / "data" / f"{topic}-0").glob("*.log"))
    if not files:
        return 0
    r = subprocess.run([KAFKA_SH, "tool", "kafka.tools.DumpLogSegments", "--files", ",".join(files)],
                       capture_output=True, text=True, timeout=60)
    return sum(1 for line in r.stdout.splitlines() if "baseOffset:" in line and " count: 0 " in line)


def send(prod, topic, i, key, value):
    prod.send(topic, i, key, value, [("dup", b"a"), ("dup", b"b"), ("i", str(i).encode())])


def test_compacted_topic_reads_like_the_broker(gateway, topic_name):
    bs = gateway.bootstrap
    direct = gateway.kafka.bootstrap
    compacted_topic(bs, topic_name)
    n = 0
    # producer A: keys k0..k9, several batches
    a = RdProducer(bs, idempotent=True, compression="lz4")
    for round_ in range(5):
        for k in range(10):
            send(a, topic_name, n, f"k{k}".encode(), f"a-{round_}-{k}".encode() * 10)
            n += 1
        a.flush(30)
    # producer B overwrites every key, plus tombstones for k0 and k1
    b = RdProducer(bs, idempotent=True, compression="zstd")
    for k in range(10):
        send(b, topic_name, n, f"k{k}".encode(), None if k < 2 else f"b-{k}".encode() * 10)
        n += 1
    b.flush(30)
    total = n

    # keep appending (each append after segment.ms rolls a segment) until the cleaner has run
    c = RdProducer(bs, compression="none")
    deadline = time.monotonic() + 90
    while True:
        send(c, topic_name, n, f"roll-{n % 3}".encode(), f"roll-{n}".encode())
        n += 1
        c.flush(30)
        recs = rd_consume(direct, topic_name, 1, extra_s=0.5, timeout=30)
        offsets = [r.o for r in recs]
        # compaction visible: producer A's first records are gone
        if offsets and offsets[0] > 0 and len(recs) < n - total:
            break
        assert time.monotonic() < deadline, f"log cleaner did not run in 90s (offsets {offsets[:20]})"
        time.sleep(0.3)
    c.flush(30)

    # the log now holds producer A's last batch with every record cleaned away
    wait_until(lambda: empty_batches(gateway.kafka, topic_name) > 0, 30, "an empty batch in the log")

    want = rd_consume(direct, topic_name, 1, extra_s=1.0, timeout=30)
    assert len(want) < n, "expected compaction to have removed records"
    last = want[-1].o
    for label, got in (
            ("rdkafka", rd_consume(bs, topic_name, len(want), extra_s=1.0, timeout=60)),
            ("java", java_consume(bs, topic_name, len(want), extra_ms=1000, timeout=90))):
        check_consume_order(got, label)
        assert_same_records(want, got, f"compacted topic, {label} through the gateway")
        assert got[-1].o == last
