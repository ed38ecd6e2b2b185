"""Field encryption at Custos, with real clients against a real Kafka.

Two principals authenticate with SCRAM: `reader` may `Decrypt` protected
topics, `analyst` may read them but not decrypt. Rules (below) encrypt
whole values, headers, JSON fields and per-subject fields; the embedded
keyring is created with `custos keys`. Each test reads the topic **directly
from the broker** too, to show that only ciphertext is stored there."""
import json
import os
import re
import subprocess
import time
import urllib.request

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition, OFFSET_BEGINNING
from confluent_kafka.admin import NewTopic

from harness import (keys_cli, CUSTOS_BIN, DIRECT, PLAIN, Sec, add_scram_users, java, java_consume, java_produce, rd_admin,
                     rd_common, rd_consume, start_gateway, stop_gateway, wait_until)
from harness import gateway_metrics as metrics
from records import record_headers, record_key, record_value

pytestmark = pytest.mark.skipif(DIRECT, reason="encryption is Custos's; the broker alone stores plaintext")

USERS = {"reader": "reader-pw-1", "analyst": "analyst-pw-2", "auditor": "auditor-pw-3"}
MECH = "SCRAM-SHA-512"
# The envelope's first bytes (crypto/FORMAT.md): magic, then format version 1.
ENVELOPE_MAGIC = bytes([0xC5, 0x7D, 0x01])
JSON_PREFIX = b'"custos:v1:'

POLICIES = r'''
@id("all-kafka")
permit (principal, action in Action::"All", resource);

@id("reader-decrypts")
permit (principal == User::"reader", action == Action::"Decrypt", resource is Topic);
@id("auditor-sees-pii-only")
permit (principal == User::"auditor", action == Action::"Decrypt", resource is Topic)
when { context.classification == "pii" };
'''


def rules_yaml(d):
    return f'''encryption:
  kms:
    local:
      keyring: "{d / 'keyring.json'}"
      master_key_file: "{d / 'master.key'}"
  dek:
    max_encryptions: 200
  subject_keys:
    dir: "{d / 'subject-keys'}"
    token_key_file: "{d / 'token.key'}"
  token_key_file: "{d / 'token.key'}"
  rules:
    - name: whole-values
      topics: {{prefix: "enc.values."}}
      kek: values-kek
      classification: confidential
      value: true
      headers: [idx]
      mask: redact
    - name: destroyable
      topics: {{prefix: "enc.destroy."}}
      kek: destroy-kek
      classification: confidential
      value: true
    - name: customer-fields
      topics: {{prefix: "enc.customers."}}
      kek: customers-kek
      classification: pii
      json_fields: ["$.email", "$.card.number", "$.addresses[*].street"]
      mask: {{keep_last: 4}}
    - name: joinable
      topics: {{prefix: "enc.joinable."}}
      kek: customers-kek
      json_fields: ["$.customer_id"]
      deterministic: true
    - name: per-subject
      topics: {{prefix: "enc.profiles."}}
      kek: customers-kek
      classification: pii
      json_fields: ["$.name", "$.phone"]
      subject: {{json_field: "$.user_id"}}
      mask: token
'''


def sec(user):
    return Sec(sasl=(MECH, user, USERS[user]))


@pytest.fixture(scope="module")
def setup(kafka, tmp_path_factory):
    d = tmp_path_factory.mktemp("encryption")
    creds = d / "users.yaml"
    add_scram_users(creds, USERS)
    (d / "master.key").write_bytes(os.urandom(32))
    (d / "token.key").write_bytes(os.urandom(32))
    policies = d / "policies.cedar"
    policies.write_text(POLICIES)
    r = subprocess.run([CUSTOS_BIN, "audit", "keygen", "--out", str(d / "audit.key")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    g = start_gateway(
        kafka, d / "custos", "custos-enc",
        listen_extra=("  auth:\n    sasl:\n"
                      f"      mechanisms: [{MECH}]\n"
                      f"      credentials_file: \"{creds}\"\n"),
        admin_extra=f"  token_file: \"{d / 'admin.token'}\"\n",
        # Every Fetch answer streams partition by partition (fetch_stream.rs),
        # however small, so both clients read streamed answers throughout
        # (by default answers a stage may rewrite stream from 8 MiB on).
        limits_extra="  fetch_stream_min_bytes: 0\n  fetch_reveal_stream_min_bytes: 0\n",
        extra_yaml=("authorization:\n"
                    f"  policies: [\"{policies}\"]\n"
                    "audit:\n"
                    f"  dir: \"{d / 'audit'}\"\n"
                    f"  signing_key: \"{d / 'audit.key'}\"\n"
                    "  mode: async\n" + rules_yaml(d)),
        defer_start=True)
    (d / "admin.token").write_text(ADMIN_TOKEN + "\n")
    for kek in ("values-kek", "customers-kek", "destroy-kek"):
        keys_cli(g.config_path, "create", kek)
    g.start()
    yield g, d
    stop_gateway(g)


ADMIN_TOKEN = "enc-admin-token-0123456789abcdef"


def audit(gw, **params):
    """Records of the gateway's audit log matching `params` (one page)."""
    q = "&".join(f"{k}={v}" for k, v in params.items())
    req = urllib.request.Request(f"http://{gw.host}:{gw.admin_port}/v1/audit?{q}&limit=1000")
    req.add_header("Authorization", f"Bearer {ADMIN_TOKEN}")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["records"]


def direct_values(kafka, topic, count, partitions=1, timeout=30):
    """Raw records as the broker stores them (no Custos in between)."""
    return rd_consume(kafka.bootstrap, topic, count, timeout=timeout)


def create(gw, name, partitions=1):
    a = rd_admin(gw.bootstrap, sec("reader"))
    fs = a.create_topics([NewTopic(name, partitions, 1)], operation_timeout=20)
    fs[name].result(30)


def rd_produce_values(gw, user, topic, values, key=None, extra=None):
    """Produce values in one flush; returns (acked count, {error name: count})."""
    ok, errs = [0], {}

    def cb(err, msg):
        if err is None:
            ok[0] += 1
        else:
            errs[err.name()] = errs.get(err.name(), 0) + 1

    p = Producer({**rd_common(gw.bootstrap, sec(user)), "linger.ms": 20, "acks": "all",
                  "compression.type": "zstd", "message.timeout.ms": 20000, **(extra or {})})
    for v in values:
        while True:
            try:
                p.produce(topic, value=v, key=key, on_delivery=cb)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    p.flush(60)
    return ok[0], errs


def customer(i):
    return json.dumps({
        "id": i,
        "email": f"person{i}@example.org",
        "card": {"number": f"4111-0000-{i:04d}-{(i * 7) % 10000:04d}", "brand": "visa"},
        "addresses": [{"street": f"{i} Secret Lane", "city": "Gent"},
                      {"street": f"{i + 1} Hidden Road", "city": "Brugge"}],
        "note": "  spacing  and \u00e9 unicode kept ",
    }, separators=(", ", ": ")).encode()


def test_whole_values_and_headers_with_the_java_client(setup, kafka):
    """Java producer (lz4, idempotent) through Custos: the broker holds only
    envelopes for values and the `idx` header; the reader gets every record
    byte for byte (keys, nulls, duplicate headers); the analyst gets masks."""
    gw, _ = setup
    topic = "enc.values.java"
    create(gw, topic, partitions=2)
    n = 600
    java_produce(gw.bootstrap, topic, n, compression="lz4", idempotent=True, size=300, seed=7,
                 sec=sec("reader"))
    raw = direct_values(kafka, topic, n)
    assert len(raw) == n
    for r in raw:
        i = int(r.k.decode().split("-")[-1]) if r.k else None
        if r.v is not None:
            assert r.v.startswith(ENVELOPE_MAGIC), r.short()
        for name, value in r.h:
            if name == "idx":
                assert value.startswith(ENVELOPE_MAGIC)
            elif name == "dup":
                assert value.decode().startswith(("first-", "second-"))
    plain = [record_value(7, i, 300) for i in range(n)]
    stored = {r.v for r in raw if r.v is not None}
    assert not stored & {p for p in plain if p is not None}

    got = java_consume(gw.bootstrap, topic, n, sec=sec("reader"))
    assert len(got) == n
    for r in got:
        i = int(r.k.decode().split("-")[-1]) if r.k is not None else None
        if i is None:
            continue
        assert r.v == record_value(7, i, 300), r.short()
        assert list(r.h) == [(k, v) for k, v in record_headers(7, i)], r.short()

    masked = java_consume(gw.bootstrap, topic, n, sec=sec("analyst"))
    assert len(masked) == n
    for r in masked:
        if r.v is not None:
            assert r.v == b"***", r.short()
        for name, value in r.h:
            if name == "idx":
                assert value == b"***"


def test_json_fields_10000_records(setup, kafka):
    """10,000 JSON records through librdkafka (zstd): no protected field's
    plaintext is stored at the broker; the reader gets byte-identical JSON;
    the analyst sees the last four characters only, the rest untouched."""
    gw, _ = setup
    topic = "enc.customers.bulk"
    create(gw, topic)
    n = 10_000
    values = [customer(i) for i in range(n)]
    ok, errs = rd_produce_values(gw, "reader", topic, values)
    assert (ok, errs) == (n, {})
    raw = direct_values(kafka, topic, n, timeout=60)
    assert len(raw) == n
    blob = b"\n".join(r.v for r in raw)
    for i in range(0, n, 1):
        assert f"person{i}@example.org".encode() not in blob
        assert f"4111-0000-{i:04d}".encode() not in blob
        assert f"{i} Secret Lane".encode() not in blob
    assert blob.count(JSON_PREFIX) == 4 * n
    assert b'"city": "Gent"' in raw[0].v  # unprotected fields stay as they were

    got = rd_consume(gw.bootstrap, topic, n, timeout=60, sec=sec("reader"))
    assert sorted(r.v for r in got) == sorted(values)

    masked = rd_consume(gw.bootstrap, topic, 50, timeout=60, sec=sec("analyst"))
    # The audit log names the keys used and who saw plaintext, never a value.
    produced = audit(gw, topic=topic, kind="produce")
    assert produced and all(any(k.startswith("customers-kek#v") for k in r["key_ids"]) for r in produced)
    assert all(r["details"].get(f"encrypted.{topic}") == "customer-fields" for r in produced)
    fetched = audit(gw, topic=topic, kind="fetch")
    seen = {(r["principal"]["name"], r["details"].get(f"revealed.{topic}")) for r in fetched}
    assert ("User:reader", "plaintext") in seen and ("User:analyst", "masked") in seen, seen
    assert all(r["key_ids"] for r in fetched)
    assert "example.org" not in json.dumps(produced + fetched)
    for r in masked[:50]:
        doc = json.loads(r.v)
        i = doc["id"]
        assert doc["email"] == "*" * (len(f"person{i}@example.org") - 4) + ".org"
        assert doc["card"]["number"].endswith(f"{(i * 7) % 10000:04d}")
        assert doc["card"]["brand"] == "visa"
        assert doc["note"] == json.loads(customer(i))["note"]


def metric_value(gw, name) -> float:
    m = re.search(r"^custos_%s(?:_total)? (\S+)$" % name, metrics(gw), re.M)
    return float(m.group(1)) if m else 0.0


def test_streamed_answers_keep_their_length_for_both_clients(setup, kafka):
    """Fetch answers stream partition by partition: revealed records are
    shorter than their envelopes and padded to the broker's length with a
    truncated batch that clients skip. Both clients read every record, in
    plaintext and masked, from answers that went through that path."""
    gw, _ = setup
    topic = "enc.values.streamed"
    create(gw, topic, partitions=3)
    values = [v for v in (record_value(11, i, 700) for i in range(900)) if v is not None]
    n = len(values)
    ok, errs = rd_produce_values(gw, "reader", topic, values)
    assert (ok, errs) == (n, {})
    before = metric_value(gw, "fetch_streamed")
    failures = metric_value(gw, "decrypt_failures")
    got = rd_consume(gw.bootstrap, topic, n, timeout=60, sec=sec("reader"))
    assert sorted(r.v for r in got) == sorted(values)
    after_rd = metric_value(gw, "fetch_streamed")
    assert after_rd > before
    java = java_consume(gw.bootstrap, topic, n, sec=sec("reader"))
    assert sorted(r.v for r in java) == sorted(values)
    masked = java_consume(gw.bootstrap, topic, n, sec=sec("analyst"))
    assert len(masked) == n and all(r.v == b"***" for r in masked)
    assert metric_value(gw, "fetch_streamed") > after_rd
    assert metric_value(gw, "fetch_stream_no_room") == 0
    assert metric_value(gw, "decrypt_failures") == failures
    # Every record read through a streamed answer is in the audit log once
    # per reader: the partition hooks build the same access records.
    def audited(principal):
        return sum(p["records"] for r in audit(gw, topic=topic, kind="fetch")
                   if r["principal"]["name"] == principal
                   for res in r["resources"] if res["name"] == topic for p in res["partitions"])
    assert audited("User:reader") >= 2 * n
    assert audited("User:analyst") >= n


def test_invalid_json_is_refused_per_record(setup, kafka):
    gw, _ = setup
    topic = "enc.customers.invalid"
    create(gw, topic)
    ok, errs = rd_produce_values(gw, "reader", topic, [b"{not json"], extra={"retries": 0})
    assert ok == 0 and errs == {"INVALID_RECORD": 1}, errs
    # Nothing reached the broker.
    assert direct_values(kafka, topic, 0, timeout=3) == []


def test_keep_last_never_shows_a_short_value_whole(setup, kafka):
    """`{keep_last: 4}` keeps at most half of a value: a field of four
    characters or fewer is not shown whole to a masked reader."""
    gw, _ = setup
    topic = "enc.customers.short"
    create(gw, topic)
    docs = [json.dumps({"email": e, "card": {"number": c}}).encode()
            for e, c in [("a@x", "12"), ("ab@x", "1234567"), ("abc@x.io", "4111")]]
    assert rd_produce_values(gw, "reader", topic, docs) == (len(docs), {})
    got = rd_consume(gw.bootstrap, topic, len(docs), timeout=60, sec=sec("analyst"))
    assert [(json.loads(r.v)["email"], json.loads(r.v)["card"]["number"]) for r in got] == [
        ("**x", "*2"), ("**@x", "****567"), ("****x.io", "**11")]
    # The reader allowed to decrypt gets the originals.
    got = rd_consume(gw.bootstrap, topic, len(docs), timeout=60, sec=sec("reader"))
    assert [r.v for r in got] == docs


def test_decrypt_policies_see_the_rule_classification(setup, kafka):
    """`auditor` may Decrypt data its rule classifies `pii` only: plaintext
    on the customer topic (rule `pii`), masks on the whole-value topic (rule
    `confidential`)."""
    gw, _ = setup
    customers, values = "enc.customers.classified", "enc.values.classified"
    create(gw, customers)
    create(gw, values)
    doc = customer(7)
    assert rd_produce_values(gw, "reader", customers, [doc]) == (1, {})
    assert rd_produce_values(gw, "reader", values, [b"confidential-value"]) == (1, {})
    got = rd_consume(gw.bootstrap, customers, 1, timeout=60, sec=sec("auditor"))
    assert [r.v for r in got] == [doc]
    got = rd_consume(gw.bootstrap, values, 1, timeout=60, sec=sec("auditor"))
    assert [r.v for r in got] == [b"***"]


def test_kek_rotation_mid_stream(setup, kafka):
    """Rotate the KEK between two halves of a stream (DEKs rotate every 200
    encryptions): new data keys are wrapped by version 2, and the reader
    still decrypts every record of both halves."""
    gw, _ = setup
    topic = "enc.customers.rotation"
    create(gw, topic)
    first = [customer(i) for i in range(500)]
    assert rd_produce_values(gw, "reader", topic, first) == (500, {})
    keys_cli(gw.config_path, "rotate", "customers-kek")
    time.sleep(1.5)  # the keyring file is re-read at most once a second
    second = [customer(i) for i in range(500, 1000)]
    assert rd_produce_values(gw, "reader", topic, second) == (1000 - 500, {})
    report = keys_cli(gw.config_path, "list").stdout
    assert re.search(r"customers-kek\s+2\s+active", report), report
    wait_until(lambda: any("customers-kek#v2" in r["key_ids"] for r in audit(gw, kind="key_rotation")),
               10, "the rotation in the audit log")
    got = rd_consume(gw.bootstrap, topic, 1000, timeout=60, sec=sec("reader"))
    assert sorted(r.v for r in got) == sorted(first + second)
    raw = direct_values(kafka, topic, 1000)
    versions = set()
    for r in raw:
        for m in re.finditer(rb'"custos:v1:([A-Za-z0-9+/]+)"', r.v):
            import base64
            env = base64.b64decode(m.group(1) + b"=" * (-len(m.group(1)) % 4))
            # magic(2) version(1) alg(1) kind(1) kek_id(u8 len) then u32 kek version
            klen = env[5]
            versions.add(int.from_bytes(env[6 + klen:10 + klen], "big"))
    assert versions == {1, 2}, versions
    # The report reads the topic from the broker and counts records per key version.
    out = keys_cli(gw.config_path, "report", "--topic", topic).stdout
    per_version = {int(m.group(1)): int(m.group(2))
                   for m in re.finditer(r"customers-kek#v(\d+)\s+(\d+)", out)}
    assert set(per_version) == {1, 2} and sum(per_version.values()) == 1000, out


def test_destroyed_kek_version_reads_as_erased(setup, kafka):
    """`custos keys destroy` of a retired KEK version: the running gateway
    stops revealing the records under it (they read as erased, even though it
    had their data key cached), records under the newer version still
    decrypt, and the change is in the audit log. Without --yes, or for a
    version not retired, nothing is destroyed."""
    gw, _ = setup
    topic = "enc.destroy.main"
    create(gw, topic)
    old = [f"old record {i}".encode() for i in range(50)]
    new = [f"new record {i}".encode() for i in range(50)]
    assert rd_produce_values(gw, "reader", topic, old) == (50, {})
    keys_cli(gw.config_path, "rotate", "destroy-kek")
    time.sleep(1.5)  # the keyring file is re-read at most once a second
    assert rd_produce_values(gw, "reader", topic, new) == (50, {})
    got = rd_consume(gw.bootstrap, topic, 100, sec=sec("reader"))
    assert sorted(r.v for r in got) == sorted(old + new)

    r = keys_cli(gw.config_path, "destroy", "destroy-kek", 1, "--yes", check=False)
    assert r.returncode != 0 and "retire it before destroying it" in r.stderr, r
    keys_cli(gw.config_path, "retire", "destroy-kek", 1)
    r = keys_cli(gw.config_path, "destroy", "destroy-kek", 1, check=False)
    assert r.returncode == 2 and "--yes" in r.stderr, r
    assert re.search(r"destroy-kek\s+1\s+retired", keys_cli(gw.config_path, "list").stdout)
    keys_cli(gw.config_path, "destroy", "destroy-kek", 1, "--yes")
    assert re.search(r"destroy-kek\s+1\s+destroyed", keys_cli(gw.config_path, "list").stdout)

    def erased():
        got = rd_consume(gw.bootstrap, topic, 100, sec=sec("reader"))
        values = sorted(r.v for r in got)
        return values if values == sorted([b"custos:erased"] * 50 + new) else None
    wait_until(erased, 20, "records under the destroyed version read as erased")
    # The broker still holds only ciphertext; nothing was rewritten there.
    raw = direct_values(kafka, topic, 100)
    assert all(r.v.startswith(ENVELOPE_MAGIC) for r in raw)
    wait_until(lambda: any("destroy-kek#v1" in r["key_ids"] and r["details"].get("state") == "destroyed"
                           for r in audit(gw, kind="key_rotation")), 10, "the destruction in the audit log")


def test_shredded_subject_reads_as_erased(setup, kafka):
    gw, d = setup
    topic = "enc.profiles.main"
    create(gw, topic)
    docs = [json.dumps({"user_id": u, "name": f"Name of {u}", "phone": f"+32 470 {n:06d}", "n": n}).encode()
            for n, u in enumerate(["alice-7", "bob-9", "alice-7", "carol-3"])]
    assert rd_produce_values(gw, "reader", topic, docs) == (4, {})
    before = rd_consume(gw.bootstrap, topic, 4, sec=sec("reader"))
    assert sorted(r.v for r in before) == sorted(docs)
    r = keys_cli(gw.config_path, "shred", "alice-7")
    assert "shredded" in r.stdout.lower(), r.stdout
    after = rd_consume(gw.bootstrap, topic, 4, sec=sec("reader"))
    by_n = {json.loads(x.v)["n"]: json.loads(x.v) for x in after}
    for n in (0, 2):
        assert by_n[n]["name"] == by_n[n]["phone"] == "custos:erased", by_n[n]
        assert by_n[n]["user_id"] == "alice-7"
    assert by_n[1]["name"] == "Name of bob-9"
    assert by_n[3]["phone"] == "+32 470 000003"
    shreds = audit(gw, kind="key_shredding")
    assert len(shreds) == 1 and len(shreds[0]["details"]["subject_token"]) == 64, shreds
    assert "alice-7" not in json.dumps(audit(gw, topic=topic) + shreds)
    # The analyst sees keyed-hash tokens, not names.
    masked = rd_consume(gw.bootstrap, topic, 4, sec=sec("analyst"))
    bob = [json.loads(x.v) for x in masked if json.loads(x.v)["n"] == 1][0]
    assert bob["name"] != "Name of bob-9" and len(bob["name"]) >= 16


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_every_codec_and_partial_batches(setup, kafka, codec):
    """Encrypted batches keep the producer's codec, and a consumer whose small
    fetch size makes the broker cut the last batch short (a partial trailing
    batch) still gets every record, byte for byte."""
    gw, _ = setup
    topic = f"enc.values.codec-{codec}"
    create(gw, topic)
    n = 150
    java_produce(gw.bootstrap, topic, n, compression=codec, size=300, seed=11, sec=sec("reader"))
    raw = direct_values(kafka, topic, n)
    assert all(r.v is None or r.v.startswith(ENVELOPE_MAGIC) for r in raw)
    got = java_consume(gw.bootstrap, topic, n, sec=sec("reader"),
                       extra=["--property", "max.partition.fetch.bytes=4000",
                              "--property", "fetch.max.bytes=4000"])
    assert len(got) == n
    for r in got:
        i = int(r.k.decode().split("-")[-1]) if r.k is not None else None
        if i is not None:
            assert r.v == record_value(11, i, 300), r.short()
            assert list(r.h) == [(k, v) for k, v in record_headers(11, i)]


def test_transactions_read_committed(setup, kafka):
    """A transactional producer (librdkafka) through encryption: read_committed
    consumers see exactly the committed records, decrypted; the broker's
    control batches pass untouched."""
    from harness import rd_produce
    gw, _ = setup
    topic = "enc.values.txn"
    create(gw, topic, partitions=2)
    produced, outcomes = rd_produce(gw.bootstrap, topic, 60, compression="zstd", size=200, seed=3,
                                    transactional_id="enc-txn-1", txn_pattern="commit,abort,commit",
                                    sec=sec("reader"))
    committed = sorted(r.v for r, o in zip(produced, outcomes) if o == "commit" and r.v is not None)
    got = rd_consume(gw.bootstrap, topic, len([o for o in outcomes if o == "commit"]),
                     isolation="read_committed", extra_s=1.0, sec=sec("reader"))
    assert sorted(r.v for r in got if r.v is not None) == committed
    raw = direct_values(kafka, topic, len(produced))
    assert all(r.v is None or r.v.startswith(ENVELOPE_MAGIC) for r in raw)


def test_deterministic_fields_stay_joinable(setup, kafka):
    """A deterministic (AES-SIV) field gives the same ciphertext for the same
    value across produce requests and data-key rotations (DEKs rotate every
    200 seals here), so it can be joined at the broker; other values differ."""
    gw, _ = setup
    topic = "enc.joinable.orders"
    create(gw, topic)
    docs = [json.dumps({"customer_id": f"cust-{i % 7}", "n": i}).encode() for i in range(600)]
    for chunk in (docs[:300], docs[300:]):
        assert rd_produce_values(gw, "reader", topic, chunk) == (300, {})
    raw = direct_values(kafka, topic, 600)
    by_customer = {}
    for r in raw:
        m = re.search(rb'"customer_id": ("custos:v1:[^"]+")', r.v)
        assert m, r.short()
        n = json.loads(r.v)["n"]
        by_customer.setdefault(n % 7, set()).add(m.group(1))
    assert all(len(v) == 1 for v in by_customer.values()), {k: len(v) for k, v in by_customer.items()}
    assert len({next(iter(v)) for v in by_customer.values()}) == 7
    got = rd_consume(gw.bootstrap, topic, 600, sec=sec("reader"))
    assert sorted(r.v for r in got) == sorted(docs)
