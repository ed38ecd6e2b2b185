"""SASL terminated at Custos: clients authenticate to Custos (SCRAM-SHA-256,
SCRAM-SHA-512, and PLAIN over TLS) with credentials made by `custos users`,
then talk to a broker that has no SASL at all. Wrong credentials get Kafka's
authentication error, and nothing is forwarded before authentication.
No DIRECT equivalent: the test broker has no SASL listener."""
import os
import re
import socket
import urllib.request
import struct
import subprocess

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from harness import (CUSTOS_BIN, DIRECT, Sec, java, java_consume, java_produce, kafka_request,
                     make_pki, rd_admin, rd_common, rd_consume, rd_create_topic, rd_produce, start_gateway,
                     stop_gateway, wait_closed, wait_until)
from records import assert_same_records, rec_from_json

pytestmark = pytest.mark.skipif(DIRECT, reason="SASL is terminated by Custos; the test broker has none")

USERS = {"alice": "wonderland-1", "svc-orders": "orders-2"}


@pytest.fixture(scope="module")
def credentials(tmp_path_factory):
    path = tmp_path_factory.mktemp("sasl") / "users.yaml"
    for user, pw in USERS.items():
        args = [CUSTOS_BIN, "users", "--file", str(path), "add", user, "--password-env", "CUSTOS_TEST_PW"]
        if user.startswith("svc-"):
            args.append("--service-account")
        r = subprocess.run(args, env={**os.environ, "CUSTOS_TEST_PW": pw}, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    listed = subprocess.run([CUSTOS_BIN, "users", "--file", str(path), "list"], capture_output=True, text=True)
    assert listed.returncode == 0
    assert {line.split("\t")[0] for line in listed.stdout.splitlines()} == set(USERS)
    text = path.read_text()
    for pw in USERS.values():
        assert pw not in text, "passwords must never be stored"
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki-sasl"), "custos-sasl")


def auth_yaml(credentials, mechanisms):
    return ("  auth:\n    sasl:\n"
            f"      mechanisms: [{', '.join(mechanisms)}]\n"
            f"      credentials_file: \"{credentials}\"\n")


@pytest.fixture(scope="module")
def gw_scram(kafka, credentials, tmp_path_factory):
    g = start_gateway(kafka, tmp_path_factory.mktemp("custos-scram"), "custos-scram",
                      listen_extra=auth_yaml(credentials, ["SCRAM-SHA-256", "SCRAM-SHA-512"]))
    yield g
    stop_gateway(g)


@pytest.fixture(scope="module")
def gw_plain_tls(kafka, credentials, pki, tmp_path_factory):
    g = start_gateway(kafka, tmp_path_factory.mktemp("custos-plain"), "custos-plain",
                      listen_tls={"cert": pki["cert"], "key": pki["key"]},
                      listen_extra=auth_yaml(credentials, ["PLAIN"]))
    yield g
    stop_gateway(g)


def roundtrip(gw, topic, rd_sec, java_sec):
    bs = gw.bootstrap
    rd_create_topic(bs, topic, 2, sec=rd_sec)
    produced = rd_produce(bs, topic, 30, compression="zstd", sec=rd_sec)
    produced += [rec_from_json(o) for o in java_produce(bs, topic, 30, compression="gzip", seed=3, sec=java_sec)]
    assert_same_records(produced, rd_consume(bs, topic, 60, extra_s=0.3, sec=rd_sec), "rdkafka after SASL")
    assert_same_records(produced, java_consume(bs, topic, 60, extra_ms=300, sec=java_sec), "java after SASL")


def test_scram_sha_512_librdkafka_and_scram_sha_256_java(gw_scram, topic_name):
    roundtrip(gw_scram, topic_name,
              Sec(sasl=("SCRAM-SHA-512", "alice", USERS["alice"])),
              Sec(sasl=("SCRAM-SHA-256", "svc-orders", USERS["svc-orders"])))
    with urllib.request.urlopen(f"http://{gw_scram.host}:{gw_scram.admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    for mech in ("SCRAM-SHA-512", "SCRAM-SHA-256"):
        assert re.search(r'custos_authentications_total\{method="%s",result="ok"\} [1-9]' % mech, text), mech


def test_plain_over_tls(gw_plain_tls, pki, topic_name):
    sec = Sec(ca=pki["ca"], sasl=("PLAIN", "alice", USERS["alice"]))
    roundtrip(gw_plain_tls, topic_name, sec, sec)


@pytest.mark.parametrize("mech,user,pw", [
    ("SCRAM-SHA-512", "alice", "not-her-password"),
    ("SCRAM-SHA-256", "mallory", "anything"),
])
def test_wrong_credentials_are_refused(gw_scram, mech, user, pw):
    errors = []
    p = Producer({**rd_common(gw_scram.bootstrap, Sec(sasl=(mech, user, pw))),
                  "error_cb": errors.append})
    wait_until(lambda: (p.poll(0.2), any(e.code() == KafkaError._AUTHENTICATION for e in errors))[1],
               20, "librdkafka reports an authentication error")
    assert "Authentication failed" in str([e.str() for e in errors])
    rc, _, err = java("metadata", "--bootstrap", gw_scram.bootstrap,
                      *Sec(sasl=(mech, user, pw)).java(), check=False, timeout=60)
    assert rc != 0
    assert "Authentication failed" in err or "SaslAuthenticationException" in err, err[-2000:]
    wait_until(lambda: "authentication failed" in gw_scram.log_tail(400), 10, "Custos logs the failure")
    assert pw not in gw_scram.log_tail(2000), "a password reached the log"
    with urllib.request.urlopen(f"http://{gw_scram.host}:{gw_scram.admin_port}/metrics", timeout=5) as r:
        assert re.search(r'custos_authentications_total\{method="unknown",result="failed"\} [1-9]',
                         r.read().decode())
    assert gw_scram.healthy()


def test_unsupported_mechanism_is_refused(gw_scram):
    with pytest.raises(KafkaException):
        rd_admin(gw_scram.bootstrap, Sec(sasl=("PLAIN", "alice", USERS["alice"]))).list_topics(timeout=6)
    assert gw_scram.healthy()


def forwarded(gw, api: str) -> int:
    """How many requests of `api` Custos has forwarded (its own metric)."""
    with urllib.request.urlopen(f"http://{gw.host}:{gw.admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(r'^custos_requests_total\{api="%s"\} (\d+)' % api, text, re.M)
    return int(m.group(1)) if m else 0


def test_no_request_is_forwarded_before_authentication(gw_scram):
    before = forwarded(gw_scram, "Metadata")
    # Metadata v12 straight away, without SASL: Custos closes the connection.
    with socket.create_connection(gw_scram.bootstrap_addr, timeout=5) as s:
        s.sendall(kafka_request(3, 12, 7, b"\x01\x00\x00\x00", flexible=True))
        assert wait_closed(s, 10) in ("eof", "reset")
    assert forwarded(gw_scram, "Metadata") == before
    assert gw_scram.healthy()


def test_api_versions_before_authentication_lists_sasl(gw_scram):
    with socket.create_connection(gw_scram.bootstrap_addr, timeout=5) as s:
        # ApiVersions v3 with client software name/version and no tagged fields.
        s.sendall(kafka_request(18, 3, 9, b"\x02a\x021\x00", flexible=True))
        head = s.recv(4)
        size = struct.unpack(">i", head)[0]
        body = b""
        while len(body) < size:
            body += s.recv(size - len(body))
    assert struct.unpack(">i", body[:4])[0] == 9
    assert struct.unpack(">h", body[4:6])[0] == 0
    n = body[6] - 1  # compact array length
    keys = {struct.unpack(">h", body[7 + i * 7: 9 + i * 7])[0] for i in range(n)}
    assert {0, 1, 3, 17, 36} <= keys, sorted(keys)
