"""TLS toward clients (listen.tls, with and without required client
certificates) and toward the brokers (upstream.tls against Kafka's SSL
listener). In DIRECT mode the clients use the broker's own SSL listener, so the
client-side settings are checked too; tests that need Custos's own certificate
checks are skipped there."""
import socket
import ssl
import struct

import pytest
from confluent_kafka import KafkaException

from harness import (DIRECT, PLAIN, Sec, api_versions_v3_request, java, java_consume, java_produce,
                     make_pki, rd_admin, rd_consume, rd_create_topic, rd_produce, read_response,
                     start_gateway, stop_gateway, wait_closed)
from records import assert_same_records, rec_from_json


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Certificates for Custos's client-facing listener, and a second, untrusted CA."""
    return {"good": make_pki(tmp_path_factory.mktemp("pki-custos"), "custos-test"),
            "rogue": make_pki(tmp_path_factory.mktemp("pki-rogue"), "rogue")}


def client_sec(p, with_cert=True):
    if not with_cert:
        return Sec(ca=p["ca"])
    return Sec(ca=p["ca"], cert=p["client_cert"], key=p["client_key"], keystore=p["client_keystore"])


@pytest.fixture(scope="module")
def gw_tls(kafka, pki, tmp_path_factory):
    """TLS toward clients, no client certificate required."""
    p = pki["good"]
    g = start_gateway(kafka, tmp_path_factory.mktemp("custos-tls"), "custos-tls", direct_tls=True,
                      listen_tls={"cert": p["cert"], "key": p["key"]}, client_sec=client_sec(p, False))
    yield g
    stop_gateway(g)


@pytest.fixture(scope="module")
def gw_mtls(kafka, pki, tmp_path_factory):
    """TLS toward clients with a required client certificate."""
    if DIRECT:
        pytest.skip("Custos's client-certificate checks have no DIRECT equivalent (broker uses client auth 'requested')")
    p = pki["good"]
    g = start_gateway(kafka, tmp_path_factory.mktemp("custos-mtls"), "custos-mtls",
                      listen_tls={"cert": p["cert"], "key": p["key"], "client_ca": p["ca"],
                                  "require_client_cert": True},
                      client_sec=client_sec(p))
    yield g
    stop_gateway(g)


@pytest.fixture(scope="module")
def gw_upstream_tls(kafka, tmp_path_factory):
    """Plaintext toward clients, TLS with a client certificate toward the broker."""
    t = kafka.tls_dir
    g = start_gateway(kafka, tmp_path_factory.mktemp("custos-upstream-tls"), "custos-upstream-tls",
                      direct_tls=True,
                      upstream_tls={"ca": t / "ca.pem", "cert": t / "client.pem", "key": t / "client.key",
                                    "server_name": "localhost"})
    yield g
    stop_gateway(g)


def roundtrip(gw, topic, sec):
    bs = gw.bootstrap
    rd_create_topic(bs, topic, 2, sec=sec)
    produced = rd_produce(bs, topic, 40, compression="zstd", sec=sec)
    produced += [rec_from_json(o) for o in java_produce(bs, topic, 40, compression="lz4", seed=2, sec=sec)]
    assert_same_records(produced, rd_consume(bs, topic, 80, extra_s=0.3, sec=sec), "rdkafka over TLS")
    assert_same_records(produced, java_consume(bs, topic, 80, extra_ms=300, sec=sec), "java over TLS")
    # brokers advertised at the gateway's addresses
    md = rd_admin(bs, sec).list_topics(topic, timeout=10)
    for b in md.brokers.values():
        assert (b.host, b.port) == gw.broker_addr(b.id), b
    _, objs, _ = java("metadata", "--bootstrap", bs, "--topic", topic, *sec.java())
    for b in objs[0]["brokers"]:
        assert (b["host"], b["port"]) == gw.broker_addr(b["id"]), b


def tls_connect(addr, ca, cert=None, key=None):
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert:
        ctx.load_cert_chain(str(cert), str(key))
    raw = socket.create_connection(addr, timeout=10)
    return ctx.wrap_socket(raw, server_hostname=addr[0])


def test_tls_listener_roundtrip(gw_tls, topic_name):
    roundtrip(gw_tls, topic_name, gw_tls.client_sec)


def test_tls_listener_raw_api_versions(gw_tls):
    sec = gw_tls.client_sec
    with tls_connect(gw_tls.bootstrap_addr, sec.ca, sec.cert, sec.key) as s:
        s.sendall(api_versions_v3_request(11))
        cid, body = read_response(s)
        assert cid == 11 and struct.unpack(">h", body[:2])[0] == 0


def test_tls_listener_refuses_plaintext(gw_tls):
    """A plaintext Kafka request to the TLS listener gets no Kafka answer and the
    connection is closed (at most a TLS alert comes back)."""
    with socket.create_connection(gw_tls.bootstrap_addr, timeout=5) as s:
        s.sendall(api_versions_v3_request(1))
        s.settimeout(1)
        data, closed = b"", False
        for _ in range(15):
            try:
                chunk = s.recv(4096)
            except socket.timeout:
                continue
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            data += chunk
        assert not (len(data) >= 8 and data[4:8] == struct.pack(">i", 1)), "got a Kafka response over plaintext"
        assert closed, f"TLS listener kept a plaintext connection open (got {data[:16]!r})"
    assert gw_tls.healthy()


def test_tls_untrusted_server_rejected_by_client(gw_tls, pki):
    """A client trusting another CA refuses the gateway's certificate."""
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_connect(gw_tls.bootstrap_addr, pki["rogue"]["ca"]).close()
    assert gw_tls.healthy()


def test_mtls_with_client_cert(gw_mtls, topic_name):
    roundtrip(gw_mtls, topic_name, gw_mtls.client_sec)


@pytest.mark.parametrize("who", ["no-cert", "rogue-cert"])
def test_mtls_rejects_client(gw_mtls, pki, who):
    good, rogue = pki["good"], pki["rogue"]
    cert, key = (None, None) if who == "no-cert" else (rogue["client_cert"], rogue["client_key"])
    # raw TLS: the handshake fails or the connection closes before any Kafka response
    try:
        s = tls_connect(gw_mtls.bootstrap_addr, good["ca"], cert, key)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        pass
    else:
        with s:
            try:
                s.sendall(api_versions_v3_request(5))
                wait_closed(s, 15)
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
                pass
    # librdkafka cannot get metadata
    sec = Sec(ca=good["ca"], cert=cert, key=key)
    with pytest.raises(KafkaException):
        rd_admin(gw_mtls.bootstrap, sec).list_topics(timeout=6)
    assert gw_mtls.healthy()


def test_upstream_tls_roundtrip(gw_upstream_tls, topic_name):
    sec = gw_upstream_tls.client_sec if gw_upstream_tls.direct else PLAIN
    roundtrip(gw_upstream_tls, topic_name, sec)
