"""The upstream broker goes away and comes back. Runs on its own Kafka and its
own Custos so the other tests are unaffected: connected clients get their
connections closed, Custos keeps running, and new clients work again once the
broker is back."""
import socket
import struct

import pytest

from harness import (KAFKA_PORT_BASE, KafkaCluster, api_versions_v3_request, java_consume,
                     java_produce, rd_consume, rd_create_topic, rd_produce, read_response,
                     start_gateway, stop_gateway, wait_closed)
from records import assert_same_records, rec_from_json


@pytest.fixture(scope="module")
def kafka_u(tmp_path_factory):
    k = KafkaCluster(tmp_path_factory.mktemp("kafka-upstream-down"), 1, KAFKA_PORT_BASE + 2000)
    k.start()
    yield k
    k.stop()


@pytest.fixture(scope="module")
def gw_u(kafka_u, tmp_path_factory):
    g = start_gateway(kafka_u, tmp_path_factory.mktemp("custos-upstream-down"), "custos-upstream-down")
    yield g
    stop_gateway(g)


def open_conn(addr):
    s = socket.create_connection(addr, timeout=5)
    s.sendall(api_versions_v3_request(1))
    cid, body = read_response(s)
    assert cid == 1 and struct.unpack(">h", body[:2])[0] == 0
    return s


def test_broker_stops_and_returns(kafka_u, gw_u, topic_name):
    bs = gw_u.bootstrap
    rd_create_topic(bs, topic_name, 2)
    before = rd_produce(bs, topic_name, 30, seed=1)
    assert_same_records(before, rd_consume(bs, topic_name, 30), "before the outage")

    # connections that are open (and have talked to the broker) when it goes away
    conns = [open_conn(gw_u.bootstrap_addr), open_conn(gw_u.broker_addr(1))]

    kafka_u.stop()
    for s in conns:
        how = wait_closed(s, 30)
        assert how in ("eof", "reset"), how
        s.close()
    assert gw_u.alive(), "Custos exited when its upstream went away:\n" + gw_u.log_tail(40)
    assert gw_u.healthy(), "Custos /healthz not 200 while the upstream is down"

    # a client arriving while the broker is down gets nowhere, but Custos stays up
    try:
        with socket.create_connection(gw_u.bootstrap_addr, timeout=5) as s:
            s.sendall(api_versions_v3_request(9))
            s.settimeout(10)
            try:
                s.recv(4)
            except (socket.timeout, ConnectionResetError):
                pass
    except ConnectionRefusedError:
        assert gw_u.direct, "Custos stopped listening while the upstream is down"
    assert gw_u.alive()

    kafka_u.start()

    after = rd_produce(bs, topic_name, 30, seed=2, timeout=90)
    assert_same_records(before + after, rd_consume(bs, topic_name, 60, timeout=60, extra_s=0.3),
                        "rdkafka after the broker returned")
    more = [rec_from_json(o) for o in java_produce(bs, topic_name, 30, seed=3)]
    assert_same_records(before + after + more,
                        java_consume(bs, topic_name, 90, extra_ms=300), "java after the broker returned")
    assert gw_u.healthy()
