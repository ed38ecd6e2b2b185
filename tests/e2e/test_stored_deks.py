"""Data keys stored once in the shared key topic (`encryption.dek.reference:
stored`), with real clients against a real Kafka.

Two Custos processes with the same keyring and key topic stand in front of
one cluster. Gateway A seals JSON fields and whole values under DEKs it
stores in the topic; the envelopes on the broker name the DEK by a 16-byte
id instead of carrying it wrapped. Gateway B, which never saw those DEKs,
opens them from the topic. A KEK rotation plus `custos keys rewrap` moves
the stored DEKs to the new version, so the old version can be destroyed
without losing the records written under it."""
import base64
import json
import os
import re
import subprocess
import urllib.request

import pytest
from confluent_kafka import Producer

from harness import keys_cli, CUSTOS_BIN, DIRECT, rd_admin, rd_consume, start_gateway, stop_gateway, wait_until
from confluent_kafka.admin import NewTopic

pytestmark = pytest.mark.skipif(DIRECT, reason="stored data keys are Custos's")

KEY_TOPIC = "_custos_keys_stored_deks_e2e"
JSON_TOPIC = "stored.orders"
VALUE_TOPIC = "stored.blobs"
ADMIN_TOKEN = "stored-deks-admin-token-0123456789"
POLICIES = '''
@id("all")
permit (principal, action in [Action::"All", Action::"Decrypt"], resource);
'''
PREFIX = "custos:v1:"


def config(d, name, reference="stored"):
    return f'''authorization:
  policies: ["{d / 'policies.cedar'}"]
encryption:
  kms:
    local:
      keyring: "{d / 'keyring.json'}"
      master_key_file: "{d / 'master.key'}"
  dek:
    reference: {reference}
  subject_keys:
    topic: {KEY_TOPIC}
    replication_factor: 1
    token_key_file: "{d / 'token.key'}"
  rules:
    - name: orders
      topics: {{exact: "{JSON_TOPIC}"}}
      kek: stored-kek
      classification: pii
      json_fields: ["$.email", "$.card.number"]
    - name: blobs
      topics: {{exact: "{VALUE_TOPIC}"}}
      kek: stored-kek
      classification: confidential
      value: true
'''


@pytest.fixture(scope="module")
def pair(kafka, tmp_path_factory):
    d = tmp_path_factory.mktemp("stored-deks")
    (d / "master.key").write_bytes(os.urandom(32))
    (d / "token.key").write_bytes(os.urandom(32))
    (d / "policies.cedar").write_text(POLICIES)
    (d / "admin.token").write_text(ADMIN_TOKEN + "\n")
    (d / "admin.token").chmod(0o600)
    a = start_gateway(kafka, d / "a", "custos-deks-a", extra_yaml=config(d, "a"), defer_start=True,
                      admin_extra=f"  token_file: \"{d / 'admin.token'}\"\n")
    keys(a, "create", "stored-kek")
    a.start()
    b = start_gateway(kafka, d / "b", "custos-deks-b", extra_yaml=config(d, "b"))
    admin = rd_admin(a.bootstrap)
    for t, n in ((JSON_TOPIC, 2), (VALUE_TOPIC, 1)):
        admin.create_topics([NewTopic(t, n, 1)])[t].result(30)
    yield a, b, d
    for g in (a, b):
        if g.proc is not None:
            stop_gateway(g)


def keys(gw, *args):
    return keys_cli(gw.config_path, *args).stdout


def order(i):
    return json.dumps({"id": i, "email": f"person{i}@example.org",
                       "card": {"number": f"4111-0000-0000-{i:04d}", "brand": "visa"},
                       "notes": "x" * (i % 7)}, separators=(",", ":")).encode()


def produce(gw, topic, values):
    errors = []
    p = Producer({"bootstrap.servers": gw.bootstrap, "linger.ms": 5, "acks": "all",
                  "compression.type": "zstd", "message.timeout.ms": 30000})
    for v in values:
        p.produce(topic, value=v, on_delivery=lambda e, m: e and errors.append(e.name()))
    p.flush(60)
    assert not errors, errors


def envelope(field):
    assert field.startswith(PREFIX), field[:40]
    b64 = field[len(PREFIX):]
    return base64.b64decode(b64 + "=" * (-len(b64) % 4))


def values(bootstrap, topic, count):
    got = rd_consume(bootstrap, topic, count, timeout=60)
    assert len(got) == count, len(got)
    return sorted(r.v for r in got)


def test_envelopes_name_stored_keys_and_another_gateway_opens_them(pair, kafka):
    a, b, d = pair
    docs = [order(i) for i in range(300)]
    blobs = [os.urandom(64) + b"secret-%d" % i for i in range(50)]
    produce(a, JSON_TOPIC, docs)
    produce(a, VALUE_TOPIC, blobs)

    # On the broker: no plaintext, and every envelope names a stored DEK
    # (key reference kind 03, 16-byte id) instead of carrying one.
    raw = rd_consume(kafka.bootstrap, JSON_TOPIC, 300)
    ids = set()
    for r in raw:
        assert b"@example.org" not in r.v and b"4111-" not in r.v
        v = json.loads(r.v)
        for field, plain in ((v["email"], f"person{v['id']}@example.org"),
                             (v["card"]["number"], f"4111-0000-0000-{v['id']:04d}")):
            env = envelope(field)
            assert env[:5] == bytes([0xC5, 0x7D, 1, 1, 3]), env[:5].hex()
            # magic, version, algorithm, kind, id, nonce, the value's JSON
            # text (with its quotes) sealed, tag
            assert len(env) == 5 + 16 + 12 + len(json.dumps(plain)) + 16
            ids.add(env[5:21])
    raw_blobs = rd_consume(kafka.bootstrap, VALUE_TOPIC, 50)
    for r in raw_blobs:
        assert b"secret-" not in r.v and r.v[:5] == bytes([0xC5, 0x7D, 1, 1, 3])
        ids.add(r.v[5:21])
    # Each whole value grew by 49 bytes only (header 5, id 16, nonce 12, tag 16).
    stored_sizes = sorted(len(r.v) - 49 for r in raw_blobs)
    assert stored_sizes == sorted(len(x) for x in blobs)
    # One DEK per topic (their contexts differ), both in the key topic with
    # their topic as context and only the wrapped key.
    assert len(ids) == 2, [i.hex() for i in ids]
    stored = {r.k: json.loads(r.v) for r in rd_consume(kafka.bootstrap, KEY_TOPIC, 2, extra_s=2)
              if r.k and r.k[:1] == b"d"}
    assert {k[1:] for k in stored} == ids
    assert {s["context"]["custos:topic"] for s in stored.values()} == {JSON_TOPIC, VALUE_TOPIC}
    assert all(s["kek_id"] == "stored-kek" and s["kek_version"] == 1 for s in stored.values())

    # B never made these keys: it finds them in the topic and reveals exactly.
    assert values(b.bootstrap, JSON_TOPIC, 300) == sorted(docs)
    assert values(b.bootstrap, VALUE_TOPIC, 50) == sorted(blobs)

    # The report counts retained records under the KEK version the store
    # wraps each DEK with.
    report = keys(a, "report", "--topic", JSON_TOPIC, "--topic", VALUE_TOPIC)
    assert re.search(rf"{re.escape(JSON_TOPIC)}\s+stored-kek#v1\s+300\b", report), report
    assert re.search(rf"{re.escape(VALUE_TOPIC)}\s+stored-kek#v1\s+50\b", report), report
    assert re.search(r"stored data keys:\s*\n.*\n\s+stored-kek\s+1\s+2\b", report), report
    # A running gateway reports the same from its copy of the key topic.
    req = urllib.request.Request(f"http://{a.host}:{a.admin_port}/v1/keys/report")
    req.add_header("Authorization", f"Bearer {ADMIN_TOKEN}")
    with urllib.request.urlopen(req, timeout=30) as r:
        live = json.loads(r.read())
    assert live["stored_deks"] == [{"kek": "stored-kek", "version": 1, "count": 2}], live
    assert live["subject_keys"] == [], live

    # Rotate, rewrap (gateways running), then destroy version 1: the stored
    # DEKs are wrapped under version 2 now, so nothing written is lost.
    keys(a, "rotate", "stored-kek")
    out = keys(a, "rewrap")
    assert "rewrapped 0 subject keys and 2 stored data keys (0 skipped, 0 failed)" in out, out
    keys(a, "retire", "stored-kek", "1")
    keys(a, "destroy", "stored-kek", "1", "--yes")
    report = keys(a, "report", "--topic", JSON_TOPIC)
    assert re.search(rf"{re.escape(JSON_TOPIC)}\s+stored-kek#v2\s+300\b", report), report
    # Both running gateways drop what they cached from version 1 and unwrap
    # again through the store; a restarted one rebuilds from the topic.
    stop_gateway(b)
    b.start()
    for g in (a, b):
        assert values(g.bootstrap, JSON_TOPIC, 300) == sorted(docs), g.name
    # New records after the rotation get a DEK wrapped by version 2.
    produce(b, JSON_TOPIC, [order(1000)])
    got = wait_until(lambda: [v for v in values(a.bootstrap, JSON_TOPIC, 301) if b'"id":1000' in v] or None,
                     30, "the new record through A")
    assert got == [order(1000)]


def catch_ups(gw):
    with urllib.request.urlopen(f"http://{gw.host}:{gw.admin_port}/metrics", timeout=5) as r:
        m = re.search(r"^custos_subject_keys_topic_catch_ups_total (\S+)$", r.read().decode(), re.M)
    assert m, "no catch-up counter"
    return float(m.group(1))


def test_an_unknown_stored_key_reads_undecryptable_and_is_looked_for_once(pair, kafka):
    a, b, d = pair
    # Envelopes naming stored DEK ids the key topic never held (forged, or
    # sealed against another cluster's store), written around Custos.
    forged = [bytes([0xC5, 0x7D, 1, 1, 3]) + os.urandom(16 + 12 + 24 + 16) for _ in range(3)]
    p = Producer({"bootstrap.servers": kafka.bootstrap})
    for v in forged:
        p.produce(VALUE_TOPIC, value=v)
    p.flush(30)
    total = len(rd_consume(kafka.bootstrap, VALUE_TOPIC, 10_000, timeout=10, check=False))
    assert total >= 3, total

    before = catch_ups(b)
    got = values(b.bootstrap, VALUE_TOPIC, total)
    # Each reads as the placeholder, and the consumer goes on past them.
    assert got.count(b"custos:undecryptable") == 3, got[:5]
    assert not any(v in got for v in forged)
    first = catch_ups(b)
    # Looked for at the key topic's end (once per id at most) ...
    assert 1 <= first - before <= 3, (before, first)
    # ... and not again: a second consumer costs no round trips.
    got = values(b.bootstrap, VALUE_TOPIC, total)
    assert got.count(b"custos:undecryptable") == 3
    assert catch_ups(b) == first


def test_stored_reference_needs_a_key_store(pair, tmp_path):
    _, _, d = pair
    cfg = (d / "a" / "custos.yaml").read_text()
    cut = re.sub(r"  subject_keys:\n(    .*\n)+", "", cfg)
    assert "subject_keys" not in cut and "reference: stored" in cut
    (tmp_path / "bad.yaml").write_text(cut)
    r = subprocess.run([CUSTOS_BIN, "config", "check", str(tmp_path / "bad.yaml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "encryption.dek.reference" in r.stdout + r.stderr, r.stdout + r.stderr
