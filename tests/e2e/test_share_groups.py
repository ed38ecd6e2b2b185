"""Share groups (KIP-932) through Custos, with Kafka's own KafkaShareConsumer.

Share-group apis name topics only by id; Custos learns ids from the broker's
Metadata answers and authorizes, decrypts and audits by name. Principals
(SCRAM): `reader` may decrypt, `analyst` may read but not decrypt, and
`outsider` may use its own share groups and read only `share.open`. The
broker's `share.version` feature is raised to 1 at the start (share groups
are off by default in Kafka 4.1)."""
import json
import os
import subprocess
import urllib.request

import pytest
from confluent_kafka.admin import NewTopic

from harness import (CUSTOS_BIN, DIRECT, KAFKA_SH, Sec, add_scram_users, keys_cli, java, java_produce, java_records,
                     rd_admin, rd_consume, start_gateway, stop_gateway)
from records import record_value

pytestmark = pytest.mark.skipif(DIRECT, reason="compares Custos's answers with the broker's stored bytes")

USERS = {"reader": "reader-pw-1", "analyst": "analyst-pw-2", "outsider": "outsider-pw-3"}
MECH = "SCRAM-SHA-512"
ENVELOPE_MAGIC = bytes([0xC5, 0x7D, 0x01])
ADMIN_TOKEN = "share-admin-token-0123456789abcdef"

POLICIES = r'''
@id("reader-kafka")
permit (principal == User::"reader", action in Action::"All", resource);
@id("analyst-kafka")
permit (principal == User::"analyst", action in Action::"All", resource);
@id("reader-decrypts")
permit (principal == User::"reader", action == Action::"Decrypt", resource is Topic);

@id("outsider-groups")
permit (principal == User::"outsider", action in Action::"All", resource is ConsumerGroup)
when { resource.name like "outsider-*" };
@id("outsider-open-topic")
permit (principal == User::"outsider", action in [Action::"Read", Action::"Describe"], resource == Topic::"share.open");
@id("outsider-cluster")
permit (principal == User::"outsider", action == Action::"Describe", resource is Cluster);
'''


def sec(user):
    return Sec(sasl=(MECH, user, USERS[user]))


@pytest.fixture(scope="module")
def setup(kafka, tmp_path_factory):
    r = subprocess.run([KAFKA_SH, "tool", "org.apache.kafka.tools.FeatureCommand", "--bootstrap-server",
                        kafka.bootstrap, "upgrade", "--feature", "share.version=1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"enabling share groups: {r.stdout}\n{r.stderr}"
    d = tmp_path_factory.mktemp("share")
    creds = d / "users.yaml"
    add_scram_users(creds, USERS)
    (d / "master.key").write_bytes(os.urandom(32))
    policies = d / "policies.cedar"
    policies.write_text(POLICIES)
    r = subprocess.run([CUSTOS_BIN, "audit", "keygen", "--out", str(d / "audit.key")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    g = start_gateway(
        kafka, d / "custos", "custos-share",
        listen_extra=("  auth:\n    sasl:\n"
                      f"      mechanisms: [{MECH}]\n"
                      f"      credentials_file: \"{creds}\"\n"),
        admin_extra=f"  token_file: \"{d / 'admin.token'}\"\n",
        extra_yaml=("authorization:\n"
                    f"  policies: [\"{policies}\"]\n"
                    "audit:\n"
                    f"  dir: \"{d / 'audit'}\"\n"
                    f"  signing_key: \"{d / 'audit.key'}\"\n"
                    "encryption:\n"
                    "  kms:\n"
                    "    local:\n"
                    f"      keyring: \"{d / 'keyring.json'}\"\n"
                    f"      master_key_file: \"{d / 'master.key'}\"\n"
                    "  rules:\n"
                    "    - name: share-values\n"
                    "      topics: {prefix: \"share.enc.\"}\n"
                    "      kek: share-kek\n"
                    "      value: true\n"
                    "      mask: redact\n"),
        defer_start=True)
    (d / "admin.token").write_text(ADMIN_TOKEN + "\n")
    keys_cli(g.config_path, "create", "share-kek")
    g.start()
    yield g
    stop_gateway(g)


def create(gw, name, partitions):
    a = rd_admin(gw.bootstrap, sec("reader"))
    a.create_topics([NewTopic(name, partitions, 1)], operation_timeout=20)[name].result(30)


def share_consume(gw, user, topic, group, count, *, timeout=90, check=True, extra_ms=0):
    """(exit code, records, summary, stderr) of one KafkaShareConsumer run."""
    args = ["share-consume", "--bootstrap", gw.bootstrap, "--topic", topic, "--group", group,
            "--count", count, "--reset", "earliest", "--extra-ms", extra_ms,
            "--timeout-ms", int(timeout * 1000) - 20000, *sec(user).java()]
    rc, objs, err = java(*args, timeout=timeout, check=check)
    summary = next((o for o in objs if o.get("t") == "summary"), None)
    return rc, java_records(objs), summary, err


def audit(gw, **params):
    q = "&".join(f"{k}={v}" for k, v in params.items())
    req = urllib.request.Request(f"http://{gw.host}:{gw.admin_port}/v1/audit?{q}&limit=1000")
    req.add_header("Authorization", f"Bearer {ADMIN_TOKEN}")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["records"]


def metric(gw, name) -> float:
    with urllib.request.urlopen(f"http://{gw.host}:{gw.admin_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_share_consumers_get_plaintext_or_masks_and_are_audited(setup, kafka):
    """300 whole-value-encrypted records in 3 partitions: the broker holds
    envelopes only; a reader's share group gets every original byte for
    byte, exactly once; an analyst's share group gets masks; the audit log
    names the topic (not its id) with the records each principal fetched."""
    gw = setup
    topic, n, seed, size = "share.enc.orders", 300, 31, 200
    create(gw, topic, 3)
    java_produce(gw.bootstrap, topic, n, seed=seed, size=size, sec=sec("reader"))
    raw = rd_consume(kafka.bootstrap, topic, n, timeout=60)
    assert len(raw) == n
    assert all(r.v is None or r.v.startswith(ENVELOPE_MAGIC) for r in raw)
    plain_before = metric(gw, "custos_revealed_plaintext_records_total")

    rc, got, summary, _ = share_consume(gw, "reader", topic, "share-readers", n)
    assert rc == 0 and summary["ok"]
    assert len(got) == n and summary["distinct"] == n, summary
    assert len({(r.p, r.o) for r in got}) == n
    checked = 0
    for r in got:
        if r.k is None:
            continue
        i = int(r.k.decode().split("-")[-1])
        assert r.v == record_value(seed, i, size), r.short()
        checked += 1
    assert checked > n // 2
    assert metric(gw, "custos_revealed_plaintext_records_total") - plain_before >= n

    rc, masked, summary, _ = share_consume(gw, "analyst", topic, "share-analysts", n)
    assert rc == 0 and len(masked) == n, summary
    assert all(r.v is None or r.v == b"***" for r in masked)
    assert sum(1 for r in masked if r.v == b"***") == sum(1 for r in raw if r.v is not None)

    # A group that has read everything gets nothing more (acknowledged once).
    rc, again, _, _ = share_consume(gw, "reader", topic, "share-readers", 0, extra_ms=3000)
    assert rc == 0 and again == []

    fetched = audit(gw, topic=topic, kind="fetch")
    for user, expect in (("reader", "plaintext"), ("analyst", "masked")):
        recs = [r for r in fetched if r["principal"]["name"] == f"User:{user}"]
        assert recs and all(r["action"] == "ShareFetch" for r in recs), recs[:2]
        assert all(r["details"].get(f"revealed.{topic}") == expect for r in recs), recs[:2]
        assert all(r["key_ids"] for r in recs)
        count = sum(p["records"] for r in recs for res in r["resources"] if res["name"] == topic
                    for p in res["partitions"])
        assert count >= n, (user, count)


def test_share_groups_and_topics_are_authorized(setup):
    """`outsider` may only use share groups named outsider-* and read
    `share.open`: another group is refused with GROUP_AUTHORIZATION_FAILED,
    subscribing to a topic it may not describe with
    TOPIC_AUTHORIZATION_FAILED, and its own group on its own topic works."""
    gw = setup
    create(gw, "share.open", 2)
    create(gw, "share.closed", 1)
    java_produce(gw.bootstrap, "share.open", 40, seed=3, size=50, sec=sec("reader"))
    java_produce(gw.bootstrap, "share.closed", 40, seed=4, size=50, sec=sec("reader"))

    rc, got, _, err = share_consume(gw, "outsider", "share.open", "staff-group", 1, timeout=60, check=False)
    assert rc != 0 and got == []
    assert "GroupAuthorization" in err, err[-2000:]

    rc, got, _, err = share_consume(gw, "outsider", "share.closed", "outsider-closed", 1, timeout=60,
                                    check=False)
    assert rc != 0 and got == []
    assert "TopicAuthorization" in err, err[-2000:]

    rc, got, summary, _ = share_consume(gw, "outsider", "share.open", "outsider-open", 40)
    assert rc == 0 and len(got) == 40 and summary["distinct"] == 40


def share_groups_tool(gw, user, *args, tmp):
    """Kafka's kafka-share-groups tool through Custos as `user`: (rc, stdout, stderr)."""
    mech, name, pw = sec(user).sasl
    props = tmp / f"{user}.properties"
    props.write_text("security.protocol=SASL_PLAINTEXT\n"
                     f"sasl.mechanism={mech}\n"
                     "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
                     f'username="{name}" password="{pw}";\n')
    r = subprocess.run([KAFKA_SH, "tool", "org.apache.kafka.tools.consumer.group.ShareGroupCommand",
                        "--bootstrap-server", gw.bootstrap, "--command-config", str(props), *args],
                       capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout, r.stderr


def test_share_group_offsets_are_described_reset_and_deleted_through_custos(setup, tmp_path):
    """Share-group offsets through Custos: kafka-share-groups describes
    them, the Admin client alters and deletes them (the deleted topic
    leaves the description); `outsider` may do none of it to a group that
    is not its own, and the changes are audited."""
    gw = setup
    topic, n = "share.enc.admin", 60
    create(gw, topic, 2)
    java_produce(gw.bootstrap, topic, n, seed=8, size=80, sec=sec("reader"))
    rc, got, _, _ = share_consume(gw, "reader", topic, "share-admin", n)
    assert rc == 0 and len(got) == n

    rc, out, err = share_groups_tool(gw, "reader", "--describe", "--offsets", "--group", "share-admin",
                                     tmp=tmp_path)
    assert rc == 0, err
    rows = [line.split() for line in out.splitlines() if topic in line]
    assert sorted(int(r[2]) for r in rows) == [0, 1], out
    assert all(r[0] == "share-admin" for r in rows), out

    rc, out, err = share_groups_tool(gw, "outsider", "--describe", "--offsets", "--group", "share-admin",
                                     tmp=tmp_path)
    assert "authoriz" in (out + err).lower(), out + err

    # kafka-share-groups 4.1 cannot reset or delete yet: the Admin client can.
    def admin(user, *args):
        return java("admin", *args, "--bootstrap", gw.bootstrap, "--timeout-ms", 30000, *sec(user).java(),
                    timeout=90, check=False)

    rc, _, err = admin("outsider", "alter-share-offsets", "--group", "share-admin", "--topic", topic,
                       "--partitions", 2, "--offset", 0)
    assert rc != 0 and "GroupAuthorization" in err, err[-2000:]
    rc, _, err = admin("reader", "alter-share-offsets", "--group", "share-admin", "--topic", topic,
                       "--partitions", 2, "--offset", 0)
    # (Kafka 4.1 accepts the new start offsets, but neither its describe
    # output nor a running share group shows them yet: rc 0 is all to see.)
    assert rc == 0, err[-2000:]

    rc, _, err = admin("outsider", "delete-share-offsets", "--group", "share-admin", "--topic", topic)
    assert rc != 0 and "GroupAuthorization" in err, err[-2000:]
    rc, _, err = admin("reader", "delete-share-offsets", "--group", "share-admin", "--topic", topic)
    assert rc == 0, err[-2000:]
    rc, out, err = share_groups_tool(gw, "reader", "--describe", "--offsets", "--group", "share-admin",
                                     tmp=tmp_path)
    assert not [line for line in out.splitlines() if topic in line], out
    audited = [r for r in audit(gw, kind="admin") if r["action"] in
               ("AlterShareGroupOffsets", "DeleteShareGroupOffsets")]
    assert {r["action"] for r in audited} == {"AlterShareGroupOffsets", "DeleteShareGroupOffsets"}, audited
    assert all(r["principal"]["name"] == "User:reader" for r in audited)
