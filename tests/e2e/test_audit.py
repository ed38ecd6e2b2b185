"""The audit log on the data path: strict mode records every produce and fetch
(with counts and offsets) before the client gets its answer, and survives a
kill -9 mid-load: after a restart the store verifies and every record a client
saw acknowledged has its audit record. No DIRECT equivalent."""
import json
import os
import re
import subprocess
import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from harness import CUSTOS_BIN, DIRECT, gateway_metrics, rd_common, rd_create_topic, start_gateway, stop_gateway, wait_until

pytestmark = pytest.mark.skipif(DIRECT, reason="the audit log is Custos's")


def keygen(path):
    r = subprocess.run([CUSTOS_BIN, "audit", "keygen", "--out", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return (path.parent / (path.name + ".pub")).read_text().strip()


def audit_yaml(d, mode="strict"):
    return (f"audit:\n  dir: \"{d / 'store'}\"\n  signing_key: \"{d / 'audit.key'}\"\n"
            f"  mode: {mode}\n  checkpoint_interval_ms: 200\n  instance_id: e2e-1\n")


def metric(gw, name) -> float:
    m = re.search(r"^%s(?:_total)? (\S+)$" % name, gateway_metrics(gw), re.M)
    return float(m.group(1)) if m else 0.0


def audit_cli(*args, check=True):
    r = subprocess.run([CUSTOS_BIN, "audit", *map(str, args)], capture_output=True, text=True, timeout=120)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def records(store, **filters):
    args = ["list", "--dir", store, "--limit", "1000000"]
    for k, v in filters.items():
        args += [f"--{k}", v]
    return [json.loads(line) for line in audit_cli(*args).stdout.splitlines() if line.strip()]


def produced_ranges(recs, topic):
    """{partition: [(base offset, count)]} from produce records."""
    out = {}
    for r in recs:
        if r["kind"] != "produce":
            continue
        for res in r["resources"]:
            if res["type"] == "Topic" and res["name"] == topic:
                for p in res["partitions"]:
                    if p.get("offset") is not None:
                        out.setdefault(p["partition"], []).append((p["offset"], p["records"]))
    return out


def covered(ranges, partition, offset):
    return any(b <= offset < b + n for b, n in ranges.get(partition, []))


def test_strict_audit_records_produce_and_fetch(kafka, tmp_path_factory, topic_name):
    d = tmp_path_factory.mktemp("audit-strict")
    pub = keygen(d / "audit.key")
    gw = start_gateway(kafka, d / "custos", "custos-audit", extra_yaml=audit_yaml(d))
    try:
        rd_create_topic(gw.bootstrap, topic_name, 2)
        acked = []
        p = Producer({**rd_common(gw.bootstrap), "linger.ms": 5, "acks": "all"})
        for i in range(200):
            p.produce(topic_name, key=b"k%d" % i, value=b"v" * 100, partition=i % 2,
                      on_delivery=lambda e, m: acked.append((m.partition(), m.offset())) if e is None else None)
        assert p.flush(30) == 0
        assert len(acked) == 200
        c = Consumer({**rd_common(gw.bootstrap), "group.id": f"g-{topic_name}", "auto.offset.reset": "earliest"})
        c.assign([TopicPartition(topic_name, 0, 0), TopicPartition(topic_name, 1, 0)])
        got, deadline = 0, time.time() + 30
        while got < 200 and time.time() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got += 1
        c.close()
        assert got == 200
        assert metric(gw, "custos_audit_records") > 0
        assert metric(gw, "custos_audit_failures") == 0
    finally:
        assert stop_gateway(gw) in (0, None)
    store = d / "store"
    v = audit_cli("verify", "--dir", store, "--public-key", pub)
    assert "ok" in v.stdout.lower() or "verified" in v.stdout.lower(), v.stdout
    recs = records(store, topic=topic_name)
    ranges = produced_ranges(recs, topic_name)
    assert all(covered(ranges, part, off) for part, off in acked), "an acknowledged record has no audit record"
    fetched = sum(p["records"] for r in recs if r["kind"] == "fetch"
                  for res in r["resources"] if res["name"] == topic_name for p in res["partitions"])
    assert fetched >= 200
    kinds = {r["kind"] for r in records(store)}
    assert {"start", "stop", "produce", "fetch", "admin"} <= kinds, kinds
    for r in recs:
        assert "v" * 100 not in json.dumps(r), "payload bytes in an audit record"


def test_kill_9_mid_load_loses_no_acknowledged_record(kafka, tmp_path_factory, topic_name):
    d = tmp_path_factory.mktemp("audit-crash")
    pub = keygen(d / "audit.key")
    gw = start_gateway(kafka, d / "custos", "custos-crash", extra_yaml=audit_yaml(d))
    rd_create_topic(gw.bootstrap, topic_name, 3)
    acked, stop = [], threading.Event()

    def load():
        # Small batches: many Produce requests in flight when the kill lands.
        p = Producer({**rd_common(gw.bootstrap), "linger.ms": 0, "batch.size": 2000, "acks": "all",
                      "message.timeout.ms": 20000, "retries": 0})
        i = 0
        while not stop.is_set():
            try:
                p.produce(topic_name, value=b"x" * 200, partition=i % 3,
                          on_delivery=lambda e, m: acked.append((m.partition(), m.offset())) if e is None else None)
            except BufferError:
                p.poll(0.05)
                continue
            i += 1
            p.poll(0)
        p.flush(25)

    t = threading.Thread(target=load)
    t.start()
    try:
        wait_until(lambda: len(acked) > 2000, 60, "load through strict audit")
        gw.proc.kill()  # SIGKILL mid-load
        gw.proc.wait(10)
        n_at_kill = len(acked)
    finally:
        stop.set()
        t.join(60)
    # Restart on the same store: the chain continues.
    gw.start()
    try:
        wait_until(lambda: gw.healthy(), 30, "restarted Custos is ready")
    finally:
        assert stop_gateway(gw) in (0, None)
    store = d / "store"
    v = audit_cli("verify", "--dir", store, "--public-key", pub, check=False)
    assert v.returncode == 0, v.stdout + v.stderr
    ranges = produced_ranges(records(store, topic=topic_name), topic_name)
    assert sum(len(v) for v in ranges.values()) > 200, "too few produce requests to test a crash mid-load"
    missing = [a for a in acked if not covered(ranges, *a)]
    print(f"acked {len(acked)} (at kill {n_at_kill}), audited produce batches "
          f"{sum(len(v) for v in ranges.values())}, verify: {v.stdout.strip()}")
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged records (killed at {n_at_kill}) have no audit record"


def test_records_are_shipped_to_a_kafka_topic(kafka, tmp_path_factory, topic_name):
    """audit.kafka_topic: every durable record is produced (JSON, keyed by
    instance/seq) to a topic Custos creates with its own credentials."""
    d = tmp_path_factory.mktemp("audit-ship")
    keygen(d / "audit.key")
    ship_topic = f"custos-audit-{uuid.uuid4().hex[:6]}"
    gw = start_gateway(kafka, d / "custos", "custos-ship",
                       extra_yaml=audit_yaml(d) + f"  kafka_topic: {ship_topic}\n")
    try:
        rd_create_topic(gw.bootstrap, topic_name, 1)
        p = Producer(rd_common(gw.bootstrap))
        for i in range(5):
            p.produce(topic_name, value=b"secret-payload-%d" % i)
        assert p.flush(30) == 0
        # Read the shipped copy straight from the broker.
        c = Consumer({**rd_common(kafka.bootstrap), "group.id": f"ship-{ship_topic}",
                      "auto.offset.reset": "earliest"})
        shipped, deadline = [], time.time() + 60
        while time.time() < deadline:
            if ship_topic in c.list_topics(timeout=5).topics:
                break
            time.sleep(0.5)
        c.assign([TopicPartition(ship_topic, 0, 0)])
        while time.time() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                shipped.append((m.key().decode(), json.loads(m.value())))
                if any(r["kind"] == "produce" and any(res["name"] == topic_name for res in r["resources"])
                       for _, r in shipped):
                    break
        c.close()
    finally:
        assert stop_gateway(gw) in (0, None)
    assert shipped, "nothing shipped"
    kinds = {r["kind"] for _, r in shipped}
    assert {"start", "produce"} <= kinds, kinds
    for key, r in shipped:
        assert key == f"e2e-1/{r['seq']}"
        assert len(r["hash"]) == 64
        assert "secret-payload" not in json.dumps(r)
    seqs = [r["seq"] for _, r in shipped]
    assert seqs == sorted(seqs) and seqs[0] == 0, seqs[:10]
