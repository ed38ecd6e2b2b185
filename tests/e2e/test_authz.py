"""Cedar authorization at Custos, with real clients (librdkafka and the Java
client) authenticated by SCRAM, in front of a broker that has no ACLs at all:
every denial here is Custos's.

Policies (written below): alice may write and read `orders*` topics, use
`alice-*` groups and transactional ids; bob may read any topic except those
the catalog tags `pii`, with any group; admin may do everything.
No DIRECT equivalent: the test broker authorizes nothing."""
import os
import re
import subprocess
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from harness import (CUSTOS_BIN, DIRECT, Sec, add_scram_users, java, java_produce, rd_admin, rd_common,
                     start_gateway, stop_gateway, wait_until)
from harness import gateway_metrics as metrics

pytestmark = pytest.mark.skipif(DIRECT, reason="authorization is Custos's; the test broker has none")

USERS = {"alice": "alice-pw-1", "bob": "bob-pw-2", "admin": "admin-pw-3"}
MECH = "SCRAM-SHA-512"

POLICIES = r'''
@id("alice-orders")
permit (principal == User::"alice", action in [Action::"Write", Action::"Read"], resource is Topic)
when { resource.name like "orders*" };

@id("alice-groups")
permit (principal == User::"alice", action in Action::"Read", resource is ConsumerGroup)
when { resource.name like "alice-*" };

@id("alice-txn")
permit (principal == User::"alice", action in Action::"Write", resource is TransactionalId)
when { resource.name like "alice-*" };

@id("bob-reads")
permit (principal == User::"bob", action in Action::"Read", resource)
when { resource is Topic || resource is ConsumerGroup };

@id("no-pii-for-bob")
forbid (principal == User::"bob", action == Action::"Read", resource is Topic)
when { resource.tags.contains("pii") };

@id("admin-all")
permit (principal == User::"admin", action in Action::"All", resource);
'''

CATALOG = '''
- match: { prefix: "customers." }
  tags: [pii]
'''


def sec(user):
    return Sec(sasl=(MECH, user, USERS[user]))


@pytest.fixture(scope="module")
def setup(kafka, tmp_path_factory):
    d = tmp_path_factory.mktemp("authz")
    creds = d / "users.yaml"
    add_scram_users(creds, USERS)
    policies = d / "policies.cedar"
    policies.write_text(POLICIES)
    catalog = d / "catalog.yaml"
    catalog.write_text(CATALOG)
    g = start_gateway(
        kafka, d / "custos", "custos-authz",
        listen_extra=("  auth:\n    sasl:\n"
                      f"      mechanisms: [{MECH}]\n"
                      f"      credentials_file: \"{creds}\"\n"),
        extra_yaml=("authorization:\n"
                    f"  policies: [\"{policies}\"]\n"
                    f"  catalog: \"{catalog}\"\n"
                    "  reload_interval_ms: 300\n"))
    yield g, policies
    stop_gateway(g)


@pytest.fixture
def gw(setup):
    return setup[0]


def counter(text, name) -> float:
    m = re.search(r"^%s(?:_total)? (\S+)$" % name, text, re.M)
    return float(m.group(1)) if m else 0.0


def create_topics(gw, *names, partitions=1):
    a = rd_admin(gw.bootstrap, sec("admin"))
    fs = a.create_topics([NewTopic(n, partitions, 1) for n in names], operation_timeout=20)
    for n, f in fs.items():
        f.result(30)


def produce(gw, user, records, **extra):
    """Produce (topic, value) pairs in one flush; returns {topic: error name or 'ok'}."""
    out = {}

    def cb(err, msg):
        out.setdefault(msg.topic(), set()).add("ok" if err is None else err.name())

    p = Producer({**rd_common(gw.bootstrap, sec(user)), "linger.ms": 50, "acks": "all",
                  "message.timeout.ms": 15000, **extra})
    for topic, value in records:
        p.produce(topic, value=value, on_delivery=cb)
    p.flush(30)
    return {t: "/".join(sorted(v)) for t, v in out.items()}


def read_all(gw, user, topic, partitions=1, timeout=15):
    """Values of `topic` read by `user` without a group, or the error name."""
    c = Consumer({**rd_common(gw.bootstrap, sec(user)), "group.id": "unused",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    values, deadline = [], time.time() + timeout
    try:
        while time.time() < deadline:
            m = c.poll(0.5)
            if m is None:
                if values:
                    break
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    continue
                return m.error().name()
            values.append(m.value())
        return values
    finally:
        c.close()


def test_produce_denied_topic_fails_only_its_partitions(gw):
    ok, secret = f"orders-{uuid.uuid4().hex[:6]}", f"secret-{uuid.uuid4().hex[:6]}"
    create_topics(gw, ok, secret)
    before = counter(metrics(gw), "custos_authz_denied")
    # One flush, one broker: librdkafka puts both topics in one ProduceRequest.
    got = produce(gw, "alice", [(ok, b"a1"), (secret, b"s1"), (ok, b"a2")])
    assert got == {ok: "ok", secret: "TOPIC_AUTHORIZATION_FAILED"}
    assert read_all(gw, "admin", ok) == [b"a1", b"a2"]
    assert read_all(gw, "admin", secret, timeout=3) == [], "nothing may reach a denied topic"
    assert counter(metrics(gw), "custos_authz_denied") > before


def test_java_client_gets_topic_authorization_exception(gw):
    ok, secret = f"orders-j-{uuid.uuid4().hex[:6]}", f"secret-j-{uuid.uuid4().hex[:6]}"
    create_topics(gw, ok, secret)
    acked = java_produce(gw.bootstrap, ok, 5, sec=sec("alice"))
    assert len([o for o in acked if o.get("t") == "rec"]) == 5
    rc, out, err = java("produce", "--bootstrap", gw.bootstrap, "--topic", secret, "--count", 1,
                        *sec("alice").java(), check=False, timeout=90)
    text = f"{out} {err}"
    assert rc != 0 or "TopicAuthorization" in text, text[-2000:]
    assert "TopicAuthorizationException" in text or "Not authorized to access topics" in text, text[-2000:]


def test_metadata_lists_only_describable_topics(gw):
    ok, secret = f"orders-m-{uuid.uuid4().hex[:6]}", f"secret-m-{uuid.uuid4().hex[:6]}"
    create_topics(gw, ok, secret)
    seen_alice = set(rd_admin(gw.bootstrap, sec("alice")).list_topics(timeout=15).topics)
    seen_admin = set(rd_admin(gw.bootstrap, sec("admin")).list_topics(timeout=15).topics)
    assert ok in seen_alice and secret not in seen_alice
    assert {ok, secret} <= seen_admin
    assert all(t.startswith("orders") for t in seen_alice), seen_alice
    # Authorized operations are the principal's, not Custos's (the broker
    # computes them for Custos, which may do everything).
    from confluent_kafka import TopicCollection
    from confluent_kafka.admin import AclOperation
    alice = rd_admin(gw.bootstrap, sec("alice"))
    desc = alice.describe_topics(TopicCollection([ok]), request_timeout=15,
                                 include_authorized_operations=True)[ok].result(20)
    assert set(desc.authorized_operations) == {AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE}
    # Naming a forbidden topic gives Kafka's error, not its metadata.
    md = rd_admin(gw.bootstrap, sec("alice")).list_topics(topic=secret, timeout=15)
    err = md.topics[secret].error
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err


def test_metadata_does_not_auto_create_without_create_grant(gw):
    missing = f"orders-auto-{uuid.uuid4().hex[:6]}"
    md = rd_admin(gw.bootstrap, sec("alice")).list_topics(topic=missing, timeout=15)
    # librdkafka asks with allow_auto_topic_creation; alice may not Create.
    time.sleep(1)
    assert missing not in rd_admin(gw.bootstrap, sec("admin")).list_topics(timeout=15).topics
    assert md.topics[missing].error is not None


def test_consumer_group_allowed_and_denied(gw):
    topic = f"orders-g-{uuid.uuid4().hex[:6]}"
    create_topics(gw, topic)
    produce(gw, "alice", [(topic, b"x%d" % i) for i in range(3)])

    def consume(group):
        c = Consumer({**rd_common(gw.bootstrap, sec("alice")), "group.id": group,
                      "auto.offset.reset": "earliest", "enable.auto.commit": False})
        c.subscribe([topic])
        got, deadline = [], time.time() + 30
        try:
            while time.time() < deadline and len(got) < 3:
                m = c.poll(0.5)
                if m is None:
                    continue
                if m.error():
                    return m.error().name()
                got.append(m.value())
            c.commit(asynchronous=False)
            return got
        finally:
            c.close()

    assert consume(f"alice-{uuid.uuid4().hex[:6]}") == [b"x0", b"x1", b"x2"]
    assert consume(f"other-{uuid.uuid4().hex[:6]}") == "GROUP_AUTHORIZATION_FAILED"


def test_catalog_tags_drive_a_forbid(gw):
    pii, plain = f"customers.{uuid.uuid4().hex[:6]}", f"plain-{uuid.uuid4().hex[:6]}"
    create_topics(gw, pii, plain)
    produce(gw, "admin", [(pii, b"p"), (plain, b"q")])
    assert read_all(gw, "bob", plain) == [b"q"]
    assert read_all(gw, "bob", pii) == "TOPIC_AUTHORIZATION_FAILED"
    assert read_all(gw, "admin", pii) == [b"p"]


def test_admin_operations(gw):
    name = f"orders-new-{uuid.uuid4().hex[:6]}"
    alice = rd_admin(gw.bootstrap, sec("alice"))
    fs = alice.create_topics([NewTopic(name, 1, 1)], operation_timeout=10)
    with pytest.raises(KafkaException) as e:
        fs[name].result(20)
    assert e.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    create_topics(gw, name)
    bob = rd_admin(gw.bootstrap, sec("bob"))
    fs = bob.delete_topics([name], operation_timeout=10)
    with pytest.raises(KafkaException) as e:
        fs[name].result(20)
    assert e.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert name in rd_admin(gw.bootstrap, sec("admin")).list_topics(timeout=15).topics
    # The Java admin client: topic configs need DescribeConfigs on the topic.
    rc, out, err = java("admin", "describe-config", "--bootstrap", gw.bootstrap, "--topic", name,
                        *sec("alice").java(), check=False, timeout=90)
    text = f"{out} {err}"
    assert rc != 0 and "TopicAuthorizationException" in text, text[-2000:]
    rc, out, err = java("admin", "describe-config", "--bootstrap", gw.bootstrap, "--topic", name,
                        *sec("admin").java(), check=False, timeout=90)
    assert rc == 0, f"{out} {err}"[-2000:]


def test_transactions_need_the_transactional_id(gw):
    topic = f"orders-t-{uuid.uuid4().hex[:6]}"
    create_topics(gw, topic)
    p = Producer({**rd_common(gw.bootstrap, sec("alice")), "transactional.id": f"alice-{topic}"})
    p.init_transactions(20)
    p.begin_transaction()
    p.produce(topic, b"t1")
    p.commit_transaction(20)
    p = Producer({**rd_common(gw.bootstrap, sec("alice")), "transactional.id": f"nope-{topic}"})
    with pytest.raises(KafkaException) as e:
        p.init_transactions(20)
    assert e.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED


def test_policy_reload_takes_effect_and_a_broken_file_keeps_the_last_good(setup):
    gw, policies = setup
    topic = f"granted-later-{uuid.uuid4().hex[:6]}"
    create_topics(gw, topic)
    assert produce(gw, "alice", [(topic, b"1")]) == {topic: "TOPIC_AUTHORIZATION_FAILED"}
    good = POLICIES + ('\n@id("alice-later") permit (principal == User::"alice", action in Action::"Write",'
                       f' resource == Topic::"{topic}");\n')
    before = metrics(gw)
    policies.write_text(good)
    wait_until(lambda: counter(metrics(gw), "custos_policy_reloads") > counter(before, "custos_policy_reloads"),
               15, "the changed policy file is reloaded")
    assert produce(gw, "alice", [(topic, b"2")]) == {topic: "ok"}
    policies.write_text(good + "\npermit (principal, action == Action::\"Reed\", resource);\n")
    wait_until(lambda: counter(metrics(gw), "custos_policy_reload_failures") >
               counter(before, "custos_policy_reload_failures"), 15, "the broken file is refused")
    assert "previous policies stay in force" in gw.log_tail(200)
    assert produce(gw, "alice", [(topic, b"3")]) == {topic: "ok"}, "the last good policies must stay"
    # SIGHUP reloads too (and the file is good again).
    policies.write_text(POLICIES)
    n = counter(metrics(gw), "custos_policy_reloads")
    gw.proc.send_signal(1)
    wait_until(lambda: counter(metrics(gw), "custos_policy_reloads") > n, 15, "reload after SIGHUP")
    wait_until(lambda: produce(gw, "alice", [(topic, b"4")]) == {topic: "TOPIC_AUTHORIZATION_FAILED"},
               15, "the grant is gone again")
    assert gw.healthy()


def test_config_check_refuses_a_broken_policy_file(setup, tmp_path):
    gw, _ = setup
    bad = tmp_path / "bad.cedar"
    bad.write_text('@id("typo") permit (principal, action == Action::"Reed", resource);\n')
    cfg = tmp_path / "custos.yaml"
    cfg.write_text(gw.config_path.read_text().split("authorization:")[0]
                   + f"authorization:\n  policies: [\"{bad}\"]\n")
    r = subprocess.run([CUSTOS_BIN, "config", "check", str(cfg)], capture_output=True, text=True)
    assert r.returncode != 0
    assert "authorization.policies" in r.stderr and ("Reed" in r.stderr or "typo" in r.stderr), r.stderr


# ---------------------------------------------------------------- every identity kind

IDENTITY_POLICIES = r'''
@id("sasl-users-write-orders")
permit (principal == User::"alice", action in Action::"Write", resource is Topic)
when { resource.name like "orders*" };

@id("mtls-service-writes-orders")
permit (principal == ServiceAccount::"authz-mtls-client", action in Action::"Write", resource is Topic)
when { resource.name like "orders*" };

@id("analysts-write-orders")
permit (principal in Group::"analysts", action in Action::"Write", resource is Topic)
when { resource.name like "orders*" };
'''


def identity_gateway(kind, kafka, d, pki, creds, jwks):
    policies = d / "identity.cedar"
    policies.write_text(IDENTITY_POLICIES)
    authz = f"authorization:\n  policies: [\"{policies}\"]\n"
    tls = {"cert": pki["cert"], "key": pki["key"]}
    if kind in ("SCRAM-SHA-256", "PLAIN"):
        extra = ("  auth:\n    sasl:\n"
                 f"      mechanisms: [{kind}]\n      credentials_file: \"{creds}\"\n")
        client = Sec(ca=pki["ca"], sasl=(kind, "alice", USERS["alice"]))
    elif kind == "mtls":
        tls.update({"client_ca": pki["ca"], "require_client_cert": True})
        extra = ("  auth:\n    mtls:\n      rules:\n"
                 "        - {match: subject, pattern: \"CN=(.*)\", name: \"$1\", principal_type: service_account}\n")
        client = Sec(ca=pki["ca"], cert=pki["client_cert"], key=pki["client_key"],
                     keystore=pki["client_keystore"])
    else:
        tls = None
        extra = ("  auth:\n    sasl:\n      mechanisms: [OAUTHBEARER]\n      oauthbearer:\n"
                 f"        jwks_file: \"{jwks['path']}\"\n"
                 "        issuer: \"https://idp.custos.test\"\n        audience: \"custos\"\n")
        client = None
    g = start_gateway(kafka, d / f"custos-{kind}", f"custos-{kind.lower()}", listen_tls=tls,
                      listen_extra=extra, extra_yaml=authz)
    return g, client


@pytest.fixture(scope="module")
def identity_env(tmp_path_factory):
    from harness import make_pki
    from test_oauth import b64url
    from cryptography.hazmat.primitives.asymmetric import rsa
    d = tmp_path_factory.mktemp("authz-ids")
    pki = make_pki(d / "pki", "authz-mtls")
    creds = d / "users.yaml"
    add_scram_users(creds, {"alice": USERS["alice"]})
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key().public_numbers()
    import json
    jwks = d / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256",
                                          "n": b64url(pub.n.to_bytes((pub.n.bit_length() + 7) // 8, "big")),
                                          "e": b64url(pub.e.to_bytes(3, "big"))}]}))
    return d, pki, creds, {"path": jwks, "key": key}


@pytest.mark.parametrize("kind", ["SCRAM-SHA-256", "PLAIN", "mtls", "OAUTHBEARER"])
def test_each_identity_kind_is_authorized(kind, kafka, identity_env, tmp_path, monkeypatch):
    from harness import rd_create_topic
    from test_oauth import token
    d, pki, creds, jwks = identity_env
    ok, secret = f"orders-{kind.lower()}-{uuid.uuid4().hex[:6]}", f"secret-{kind.lower()}-{uuid.uuid4().hex[:6]}"
    for t in (ok, secret):
        rd_create_topic(kafka.bootstrap, t, 1)
    g, client = identity_gateway(kind, kafka, d, pki, creds, jwks)
    try:
        if kind == "OAUTHBEARER":
            tok = token(jwks["key"])
            conf = {**rd_common(g.bootstrap), "security.protocol": "SASL_PLAINTEXT",
                    "sasl.mechanism": "OAUTHBEARER", "oauth_cb": lambda _c: (tok, time.time() + 300)}
        else:
            conf = rd_common(g.bootstrap, client)
        out = {}
        p = Producer({**conf, "linger.ms": 50, "message.timeout.ms": 15000})
        for t in (ok, secret, ok):
            p.produce(t, b"v", on_delivery=lambda err, m: out.setdefault(m.topic(), set()).add(
                "ok" if err is None else err.name()))
        p.flush(30)
        assert out == {ok: {"ok"}, secret: {"TOPIC_AUTHORIZATION_FAILED"}}, out
        if client is not None:
            jargs = client.java()
        else:
            # Kafka's own OAuthBearerLoginCallbackHandler reading the JWT from a file.
            tok_file = tmp_path / "token.jwt"
            tok_file.write_text(token(jwks["key"]))
            url = tok_file.as_uri()
            monkeypatch.setenv("JAVA_TOOL_OPTIONS", f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={url}")
            props = ["security.protocol=SASL_PLAINTEXT", "sasl.mechanism=OAUTHBEARER",
                     "sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required ;",
                     "sasl.login.callback.handler.class="
                     "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginCallbackHandler",
                     f"sasl.oauthbearer.token.endpoint.url={url}"]
            jargs = [a for p in props for a in ("--property", p)]
        acked = java_produce(g.bootstrap, ok, 3, extra=jargs)
        assert len([o for o in acked if o.get("t") == "rec"]) == 3
        rc, jout, err = java("produce", "--bootstrap", g.bootstrap, "--topic", secret, "--count", 1,
                             *jargs, check=False, timeout=90)
        assert "TopicAuthorizationException" in f"{jout} {err}", f"{jout} {err}"[-2000:]
    finally:
        stop_gateway(g)
