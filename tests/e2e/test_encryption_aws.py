"""Field encryption with AWS KMS (a local moto server) as the KMS.

Data keys come from GenerateDataKey under a moto KMS key; the broker stores
only envelopes; a consumer allowed to Decrypt gets the originals. Then the
KMS goes silent (moto paused: calls hang until Custos's KMS timeout): a
produce to a protected topic with no cached data key fails with a retriable
error and nothing reaches the broker; once the KMS answers again, the same
produce goes through. A gateway with no cached data key withholds encrypted
records from consumers while the KMS is silent, and delivers them all once
it answers."""
import os
import re
import time
import urllib.request

import pytest
from confluent_kafka import Producer

from harness import (keys_cli, DIRECT, gateway_metrics, metric_sum, rd_common, rd_consume, rd_consumer,
                     rd_create_topic, start_gateway, stop_gateway)
from moto_server import MotoServer

pytestmark = pytest.mark.skipif(DIRECT, reason="encryption is Custos's")

ENVELOPE_MAGIC = bytes([0xC5, 0x7D, 0x01])
POLICIES = r'''
@id("all-kafka")
permit (principal, action in Action::"All", resource);
@id("everyone-decrypts")
permit (principal, action == Action::"Decrypt", resource is Topic);
'''


# Short KMS timeouts and breaker, and whole values of aws.secure.* encrypted.
VALUES_YAML = ("  kms_calls:\n"
               "    timeout_ms: 1000\n"
               "    max_retries: 1\n"
               "    breaker_threshold: 3\n"
               "    breaker_cooldown_ms: 1000\n"
               "  rules:\n"
               "    - name: aws-values\n"
               "      topics: {prefix: \"aws.secure.\"}\n"
               "      kek: alias/custos-e2e\n"
               "      value: true\n")


def gateway_yaml(moto, policies, encryption_rest):
    """Authorization by `policies`, encryption with moto's KMS plus `encryption_rest`."""
    return ("authorization:\n"
            f"  policies: [\"{policies}\"]\n"
            "encryption:\n"
            + moto.custos_kms_yaml() + encryption_rest)


@pytest.fixture(scope="module")
def setup(kafka, tmp_path_factory):
    d = tmp_path_factory.mktemp("encryption-aws")
    moto = MotoServer(d / "moto.log").start()
    arn = moto.create_key(alias="alias/custos-e2e")
    # Custos reads its AWS credentials from these variables (named in the config).
    for k, v in moto.env().items():
        os.environ[k] = v
    policies = d / "policies.cedar"
    policies.write_text(POLICIES)
    g = start_gateway(
        kafka, d / "custos", "custos-enc-aws",
        extra_yaml=gateway_yaml(moto, policies, VALUES_YAML))
    yield g, moto, arn
    stop_gateway(g)
    moto.stop()


def produce(gw, topic, values, timeout_ms=20000):
    ok, errs = [0], {}

    def cb(err, msg):
        if err is None:
            ok[0] += 1
        else:
            errs[err.name()] = errs.get(err.name(), 0) + 1

    p = Producer({**rd_common(gw.bootstrap), "linger.ms": 10, "acks": "all",
                  "message.timeout.ms": timeout_ms, "retry.backoff.ms": 200})
    for v in values:
        p.produce(topic, value=v, on_delivery=cb)
    p.flush(timeout_ms / 1000 + 15)
    return ok[0], errs


def metric_total(gw, name, **labels) -> float:
    with urllib.request.urlopen(f"http://{gw.host}:{gw.admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for m in re.finditer(r"^custos_%s(?:_total)?\{([^}]*)\} (\S+)$" % name, text, re.M):
        if all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            total += float(m.group(2))
    return total


def test_aws_kms_round_trip(setup, kafka):
    gw, _, arn = setup
    topic = "aws.secure.roundtrip"
    rd_create_topic(gw.bootstrap, topic, 1)
    values = [f"secret-{i}-{'x' * 200}".encode() for i in range(300)]
    assert produce(gw, topic, values) == (300, {})
    raw = rd_consume(kafka.bootstrap, topic, 300)
    for r in raw:
        assert r.v.startswith(ENVELOPE_MAGIC)
        # The wrapped DEK names the KMS key by the ARN AWS returned.
        assert arn.encode() in r.v
        assert b"secret-" not in r.v
    got = rd_consume(gw.bootstrap, topic, 300)
    assert [r.v for r in got] == values
    assert metric_total(gw, "kms_calls", kms="aws", op="generate_data_key", outcome="ok") >= 1


def metric_plain(gw, name) -> float:
    with urllib.request.urlopen(f"http://{gw.host}:{gw.admin_port}/metrics", timeout=5) as r:
        m = re.search(r"^custos_%s(?:_total)? (\S+)$" % name, r.read().decode(), re.M)
    return float(m.group(1)) if m else 0.0


def test_encrypted_answers_up_to_8_mib_are_revealed_whole(setup, kafka):
    """By default a Fetch answer the decrypt stage may rewrite streams only
    from 8 MiB on (`limits.fetch_reveal_stream_min_bytes`): an answer of
    several hundred KiB, which would stream if it were only read, is read
    whole, revealed and sent at its exact length."""
    gw, _, _ = setup
    topic = "aws.secure.whole"
    rd_create_topic(gw.bootstrap, topic, 1)
    values = [f"{i:04d}".encode() + os.urandom(500).hex().encode() for i in range(600)]
    assert produce(gw, topic, values) == (600, {})
    streamed = metric_plain(gw, "fetch_streamed")
    sent = metric_plain(gw, "client_sent_bytes")
    got = rd_consume(gw.bootstrap, topic, 600)
    assert [r.v for r in got] == values
    # The records came in answers above the 256 KiB streaming threshold of
    # read-only stages, and none of them streamed.
    assert metric_plain(gw, "client_sent_bytes") - sent > 256 * 1024
    assert metric_plain(gw, "fetch_streamed") == streamed


def test_kms_outage_refuses_protected_produce_and_recovers(setup, kafka):
    gw, moto, _ = setup
    topic = "aws.secure.outage"
    rd_create_topic(gw.bootstrap, topic, 1)
    failures_before = metric_total(gw, "encrypt_failures")
    moto.pause()
    try:
        ok, errs = produce(gw, topic, [b"must-not-leak-1", b"must-not-leak-2"], timeout_ms=6000)
        assert ok == 0, errs
        assert sum(errs.values()) == 2, errs
        # A KMS that does not answer is a timeout or an open breaker, never a pass.
        assert metric_total(gw, "encrypt_failures") > failures_before
        assert (metric_total(gw, "kms_calls", kms="aws", outcome="timeout")
                + metric_total(gw, "kms_calls", kms="aws", outcome="circuit_open")) >= 1
    finally:
        moto.resume()
    # Nothing reached the broker while the KMS was away.
    assert rd_consume(kafka.bootstrap, topic, 0, timeout=3, check=False) == []
    time.sleep(1.5)  # the breaker's cool-down
    ok, errs = produce(gw, topic, [b"after-recovery"])
    assert (ok, errs) == (1, {})
    got = rd_consume(gw.bootstrap, topic, 1)
    assert [r.v for r in got] == [b"after-recovery"]
    raw = rd_consume(kafka.bootstrap, topic, 1)
    assert len(raw) == 1 and raw[0].v.startswith(ENVELOPE_MAGIC)


def test_stored_data_keys_with_aws_kms(setup, kafka, tmp_path):
    """`dek.reference: stored` with AWS KMS: the wrapped data key (an
    ARN-bearing blob of a few hundred bytes) is kept once in the key store,
    so each envelope is 49 bytes over its plaintext; another gateway
    process over the same store opens them, also after a rewrap through
    the KMS's ReEncrypt."""
    inline_gw, _, arn = setup
    (tmp_path / "token.key").write_bytes(os.urandom(32))
    policies = tmp_path / "policies.cedar"
    policies.write_text(POLICIES)
    moto = setup[1]
    gw = start_gateway(
        kafka, tmp_path / "custos", "custos-enc-aws-stored",
        extra_yaml=gateway_yaml(moto, policies,
                                "  dek:\n"
                                "    reference: stored\n"
                                "  subject_keys:\n"
                                f"    dir: \"{tmp_path / 'keys'}\"\n"
                                f"    token_key_file: \"{tmp_path / 'token.key'}\"\n"
                                "  rules:\n"
                                "    - name: aws-stored\n"
                                "      topics: {prefix: \"aws.stored.\"}\n"
                                "      kek: alias/custos-e2e\n"
                                "      value: true\n"))
    topic = "aws.stored.values"
    rd_create_topic(gw.bootstrap, topic, 1)
    values = [f"stored-{i}-{'y' * 100}".encode() for i in range(200)]
    try:
        assert produce(gw, topic, values) == (200, {})
        raw = rd_consume(kafka.bootstrap, topic, 200)
        for r, v in zip(raw, values):
            assert r.v[:5] == ENVELOPE_MAGIC + bytes([1, 3]), r.v[:5].hex()
            assert arn.encode() not in r.v and b"stored-" not in r.v
            assert len(r.v) == len(v) + 49
        assert [r.v for r in rd_consume(gw.bootstrap, topic, 200)] == values
    finally:
        stop_gateway(gw)
    # The same values inline carry the ARN and the KMS's blob every time.
    inline_topic = "aws.secure.inline-size"
    rd_create_topic(inline_gw.bootstrap, inline_topic, 1)
    assert produce(inline_gw, inline_topic, values[:1]) == (1, {})
    inline = rd_consume(kafka.bootstrap, inline_topic, 1)[0].v
    assert len(inline) - len(values[0]) > 49 + 150, len(inline) - len(values[0])
    # A sled store is one process's: rewrap with the gateway stopped.
    r = keys_cli(gw.config_path, "rewrap")
    assert "rewrapped 0 subject keys and 1 stored data keys (0 skipped, 0 failed)" in r.stdout, r.stdout
    gw.start()
    try:
        assert [r.v for r in rd_consume(gw.bootstrap, topic, 200)] == values
    finally:
        stop_gateway(gw)


def test_kms_outage_withholds_encrypted_records_until_it_answers(setup, kafka, tmp_path):
    """A gateway that has never opened these records' data keys, its KMS
    silent: a consumer gets none of the records (no plaintext, no mask, no
    placeholder), only retriable errors, and keeps its place; once the KMS
    answers again, the same consumer reads every record, byte for byte."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition
    gw, moto, _ = setup
    topic = "aws.secure.fetch-outage"
    rd_create_topic(gw.bootstrap, topic, 1)
    values = [f"outage-{i}-{'z' * 80}".encode() for i in range(100)]
    assert produce(gw, topic, values) == (100, {})
    policies = tmp_path / "policies.cedar"
    policies.write_text(POLICIES)
    fresh = start_gateway(kafka, tmp_path / "custos", "custos-enc-aws-fresh",
                          extra_yaml=gateway_yaml(moto, policies, VALUES_YAML))
    c = rd_consumer(fresh.bootstrap, extra={"fetch.error.backoff.ms": 200})
    got = []

    def read_for(seconds, until=None):
        end = time.monotonic() + seconds
        while time.monotonic() < end and (until is None or len(got) < until):
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                got.append(m.value())

    try:
        moto.pause()
        try:
            c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
            read_for(6)
            assert got == [], f"{len(got)} records delivered while their data key could not be had"
            assert metric_sum(gateway_metrics(fresh), "custos_decrypt_failures_total") >= 1
        finally:
            moto.resume()
        read_for(60, until=len(values))
        assert got == values
    finally:
        c.close()
        stop_gateway(fresh)


def test_kms_stopped_refuses_protected_produce(setup, kafka):
    """The KMS process gone entirely (connection refused): a protected topic
    with no cached data key gets nothing; unprotected topics still work."""
    gw, moto, _ = setup
    topic = "aws.secure.stopped"
    plain_topic = "aws-plain-while-kms-down"
    rd_create_topic(gw.bootstrap, topic, 1)
    rd_create_topic(gw.bootstrap, plain_topic, 1)
    moto.stop()
    ok, errs = produce(gw, topic, [b"must-not-leak-3"], timeout_ms=5000)
    assert ok == 0 and sum(errs.values()) == 1, errs
    assert rd_consume(kafka.bootstrap, topic, 0, timeout=3, check=False) == []
    assert produce(gw, plain_topic, [b"not protected"]) == (1, {})

