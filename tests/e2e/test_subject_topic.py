"""Per-subject keys shared by two gateways through a compacted Kafka topic
(`encryption.subject_keys.topic`), with real clients against a real Kafka.

Two Custos processes with the same keyring, master key and token key stand
in front of one cluster, as behind a load balancer. What one encrypts under a
subject's key the other decrypts; both creating keys for the same new
subjects at once still agree on one key each; a shredding on one erases the
subject on the other at once; a restarted gateway rebuilds everything from
the topic. The topic itself, read straight from the broker, is compacted and
holds no subject id."""
import base64
import json
import os
import re
import subprocess
import threading
import urllib.request

import pytest
from confluent_kafka.admin import ConfigResource, NewTopic

from harness import (keys_cli, CUSTOS_BIN, DIRECT, rd_admin, rd_consume, start_gateway, stop_gateway,
                     wait_until)

pytestmark = pytest.mark.skipif(DIRECT, reason="subject keys are Custos's")

KEY_TOPIC = "_custos_subject_keys_e2e"
TOPIC = "shared.profiles"
ADMIN_TOKEN = "subject-topic-admin-token-0123456789"
POLICIES = '''
@id("all")
permit (principal, action in [Action::"All", Action::"Decrypt"], resource);
'''


def config(d, name):
    return f'''authorization:
  policies: ["{d / 'policies.cedar'}"]
audit:
  dir: "{d / name / 'audit'}"
  signing_key: "{d / 'audit.key'}"
  mode: async
encryption:
  kms:
    local:
      keyring: "{d / 'keyring.json'}"
      master_key_file: "{d / 'master.key'}"
  subject_keys:
    topic: {KEY_TOPIC}
    replication_factor: 1
    token_key_file: "{d / 'token.key'}"
  rules:
    - name: per-subject
      topics: {{prefix: "shared."}}
      kek: shared-kek
      classification: pii
      json_fields: ["$.name"]
      subject: {{json_field: "$.user_id"}}
'''


def gateway(kafka, d, name, defer_start=False):
    return start_gateway(kafka, d / name, name, extra_yaml=config(d, name), defer_start=defer_start,
                         admin_extra=f"  token_file: \"{d / 'admin.token'}\"\n")


@pytest.fixture(scope="module")
def pair(kafka, tmp_path_factory):
    d = tmp_path_factory.mktemp("subject-topic")
    (d / "master.key").write_bytes(os.urandom(32))
    (d / "token.key").write_bytes(os.urandom(32))
    (d / "policies.cedar").write_text(POLICIES)
    (d / "admin.token").write_text(ADMIN_TOKEN + "\n")
    (d / "admin.token").chmod(0o600)
    r = subprocess.run([CUSTOS_BIN, "audit", "keygen", "--out", str(d / "audit.key")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a = gateway(kafka, d, "custos-subj-a", defer_start=True)
    r = subprocess.run([CUSTOS_BIN, "keys", "--config", str(a.config_path), "create", "shared-kek"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    a.start()
    b = gateway(kafka, d, "custos-subj-b")
    admin = rd_admin(a.bootstrap)
    admin.create_topics([NewTopic(TOPIC, 2, 1)])[TOPIC].result(30)
    yield a, b, d
    for g in (a, b):
        if g.proc is not None:
            stop_gateway(g)


def keys(gw, *args):
    return keys_cli(gw.config_path, *args)


def audit(gw, kind):
    req = urllib.request.Request(f"http://{gw.host}:{gw.admin_port}/v1/audit?kind={kind}&limit=100")
    req.add_header("Authorization", f"Bearer {ADMIN_TOKEN}")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["records"]


def doc(user, n):
    return json.dumps({"user_id": user, "name": f"Name of {user}", "n": n}).encode()


def produce(gw, docs):
    from confluent_kafka import Producer
    errors = []
    p = Producer({"bootstrap.servers": gw.bootstrap, "linger.ms": 5, "acks": "all",
                  "message.timeout.ms": 30000})
    for v in docs:
        p.produce(TOPIC, value=v, on_delivery=lambda e, m: e and errors.append(e.name()))
    p.flush(60)
    assert not errors, errors


def names(gw, count):
    got = rd_consume(gw.bootstrap, TOPIC, count, timeout=60)
    assert len(got) == count, len(got)
    return {json.loads(r.v)["n"]: json.loads(r.v) for r in got}


def test_gateways_share_subject_keys_and_shredding(pair, kafka):
    a, b, d = pair
    produce(a, [doc("alice", 0), doc("bob", 1)])
    # B opens what A encrypted under each subject's key.
    seen = names(b, 2)
    assert seen[0]["name"] == "Name of alice" and seen[1]["name"] == "Name of bob"
    # Both create keys for 30 new subjects at the same moment.
    new = [f"user-{i}" for i in range(30)]
    threads = [threading.Thread(target=produce, args=(g, [doc(u, 100 + i + 100 * k) for i, u in enumerate(new)]))
               for k, g in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    produce(b, [doc("alice", 2)])
    for g in (a, b):
        docs = names(g, 63)
        assert all(v["name"] == f"Name of {v['user_id']}" for v in docs.values()), g.name
    # The broker holds ciphertext; each subject has one key version, whoever wrote.
    raw = rd_consume(kafka.bootstrap, TOPIC, 63)
    assert not any(b"Name of" in r.v for r in raw)
    refs = {}
    for r in raw:
        v = json.loads(r.v)
        assert v["name"].startswith("custos:v1:")
        b64 = v["name"][len("custos:v1:"):]
        env = base64.b64decode(b64 + "=" * (-len(b64) % 4))
        assert env[4] == 2, "a data-subject key reference"
        refs.setdefault(v["user_id"], set()).add(env[5:41])  # token, key version
    assert len(refs) == 32 and all(len(r) == 1 for r in refs.values()), refs
    assert all(int.from_bytes(next(iter(r))[32:], "big") == 1 for r in refs.values())

    # Shred alice on B; A, which has her key cached, shows her as erased at once.
    req = urllib.request.Request(f"http://{b.host}:{b.admin_port}/v1/keys/shred?subject=alice", method="POST")
    req.add_header("Authorization", f"Bearer {ADMIN_TOKEN}")
    with urllib.request.urlopen(req, timeout=30) as r:
        receipt = json.loads(r.read())
    assert receipt["shredded"] and receipt["versions_destroyed"] == [1], receipt

    def erased_on_a():
        docs = names(a, 63)
        return docs if all(docs[n]["name"] == "custos:erased" for n in (0, 2)) else None
    docs = wait_until(erased_on_a, 10, "alice erased on the other gateway")
    assert docs[1]["name"] == "Name of bob"
    # Each gateway's audit log: B records the request, A records applying it.
    on_b = audit(b, "key_shredding")
    assert [r["details"].get("applied_from") for r in on_b].count(None) == 1, on_b
    on_a = wait_until(lambda: audit(a, "key_shredding"), 10, "the shredding in A's audit log")
    assert [r["details"]["applied_from"] for r in on_a] == ["subject key topic"], on_a
    assert on_a[0]["details"]["subject_token"] == receipt["subject_token"]

    # Rotate the KEK and rewrap every stored subject key while both gateways
    # run (the topic is never locked); the report reads the topic.
    keys(a, "rotate", "shared-kek")
    out = keys(a, "rewrap").stdout
    assert "rewrapped 31 subject keys and 0 stored data keys (0 skipped, 0 failed)" in out, out
    report = keys(a, "report", "--topic", TOPIC).stdout
    assert re.search(r"shared-kek\s+2\s+31\b", report), report
    assert not re.search(r"shared-kek\s+1\s+\d", report), report
    # A restarted gateway rebuilds its state from the topic, and unwraps the
    # rewrapped keys under version 2.
    stop_gateway(a)
    a.start()
    docs = names(a, 63)
    assert docs[0]["name"] == "custos:erased" and docs[1]["name"] == "Name of bob"
    assert docs[120]["name"] == "Name of user-20"
    # New data for alice gets a fresh key (version 2), readable on both.
    produce(a, [doc("alice", 3)])
    for g in (a, b):
        assert names(g, 64)[3]["name"] == "Name of alice"

    # Both gateways report how far into the key topic they have applied.
    for g in (a, b):
        with urllib.request.urlopen(f"http://{g.host}:{g.admin_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        m = re.search(r"^custos_subject_keys_topic_offset (\d+)", text, re.M)
        assert m and int(m.group(1)) >= 33, (g.name, m and m.group(0))
        assert "custos_subject_keys_topic_failures_total 0" in text, g.name
    # The key topic: compacted, and no subject id in it.
    admin = rd_admin(kafka.bootstrap)
    res = ConfigResource(ConfigResource.Type.TOPIC, KEY_TOPIC)
    cfg = admin.describe_configs([res])[res].result(30)
    assert cfg["cleanup.policy"].value == "compact"
    stored = rd_consume(kafka.bootstrap, KEY_TOPIC, 1, extra_s=2)
    assert stored and not any(b"alice" in (r.k or b"") + (r.v or b"") for r in stored)
    assert any(r.v is None for r in stored), "shredding left tombstones"


def test_a_key_topic_that_cannot_be_created_stops_the_start(pair, kafka):
    """One broker cannot hold three replicas: the gateway does not start, and
    says which setting and what the broker answered."""
    _, _, d = pair
    bad = (d / "custos-subj-a" / "custos.yaml").read_text().replace(
        f"topic: {KEY_TOPIC}\n    replication_factor: 1", "topic: _custos_subject_keys_rf3\n    replication_factor: 3")
    assert "replication_factor: 3" in bad
    cfg = d / "rf3.yaml"
    # Other ports, so it cannot clash with the running pair.
    cfg.write_text(re.sub(r"(port[a-z_]*: |listen: [0-9.]+:)(\d+)", lambda m: m.group(1) + str(int(m.group(2)) + 400), bad)
                   .replace(str(d / "custos-subj-a" / "audit"), str(d / "rf3-audit")))
    run = subprocess.run([CUSTOS_BIN, "run", "--config", str(cfg)], capture_output=True, text=True, timeout=90)
    assert run.returncode != 0
    assert "subject_keys" in run.stderr and "error code 38" in run.stderr, run.stderr[-2000:]
