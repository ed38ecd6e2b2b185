"""Hostile or broken clients against the gateway with raw sockets. Each must get
its own connection closed, while well-behaved clients (connected the whole time)
keep producing and consuming, and the gateway stays healthy."""
import random
import socket
import struct
import threading
import time

import pytest


from harness import (RdProducer, api_versions_v3_request, start_gateway, stop_gateway, java_consume, java_produce, kafka_request,
                     rd_consumer, rd_create_topic, read_response, wait_closed, wait_until)
from records import (assert_same_records, check_consume_order, rec_from_json, rec_from_rdkafka,
                     record_headers, record_key, record_value)

MAX_FRAME = 1048576          # limits.max_frame_bytes of this module's Custos
KAFKA_MAX_REQUEST = 104857600  # socket.request.max.bytes of the broker (DIRECT mode)
CLOSE_TIMEOUT = 15


@pytest.fixture(scope="module")
def gw(kafka, tmp_path_factory):
    g = start_gateway(kafka, tmp_path_factory.mktemp("custos-bad-input"), "custos-bad-input",
                      max_frame_bytes=MAX_FRAME)
    yield g
    stop_gateway(g)


@pytest.fixture(scope="module")
def frame_limit(gw):
    return KAFKA_MAX_REQUEST if gw.direct else MAX_FRAME


class Steady:
    """A librdkafka producer and consumer that stay connected through every test."""

    def __init__(self, gw):
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition
        self.topic = f"e2e-steady-{int(time.time() * 1000)}"
        rd_create_topic(gw.bootstrap, self.topic, 2)
        self.prod = RdProducer(gw.bootstrap, idempotent=True, compression="lz4")
        self.cons = rd_consumer(gw.bootstrap)
        self.cons.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in (0, 1)])
        self.got = []
        self.err = None
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.next_i = 0
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        try:
            while not self.stop_ev.is_set():
                for m in self.cons.consume(100, 0.1):
                    if m.error():
                        raise RuntimeError(str(m.error()))
                    with self.lock:
                        self.got.append(rec_from_rdkafka(m))
        except Exception as e:
            self.err = e
        finally:
            self.cons.close()

    def roundtrip(self, n=20):
        """Produce n more records and wait until the consumer has every record so far."""
        for _ in range(n):
            i = self.next_i
            self.next_i += 1
            self.prod.send(self.topic, i, record_key(3, i), record_value(3, i, 50), record_headers(3, i))
        self.prod.flush(30)
        assert not self.prod.failed, self.prod.failed
        want = self.prod.acked_in_order()
        wait_until(lambda: self.err is not None or len(self.got) >= len(want), 30,
                   "the steady consumer to catch up")
        assert self.err is None, f"steady consumer failed: {self.err!r}"
        with self.lock:
            got = list(self.got)
        check_consume_order(got, "steady consumer")
        assert_same_records(want, got, "steady clients")

    def close(self):
        self.stop_ev.set()
        self.t.join(10)
        self.prod.flush(10)


@pytest.fixture(scope="module")
def steady(gw):
    s = Steady(gw)
    s.roundtrip()
    yield s
    s.close()


def connect(gw) -> socket.socket:
    s = socket.create_connection(gw.bootstrap_addr, timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def after(gw, steady):
    """The gateway is still up and normal clients still work."""
    assert gw.healthy(), "gateway not healthy after bad input:\n" + gw.log_tail(30)
    steady.roundtrip()
    # a brand-new raw connection is served normally
    with connect(gw) as s:
        s.sendall(api_versions_v3_request(4242))
        cid, body = read_response(s)
        assert cid == 4242
        assert struct.unpack(">h", body[:2])[0] == 0, "ApiVersions error code"


def test_api_versions_positive_control(gw, steady):
    """The raw-socket helpers speak valid Kafka: ApiVersions v3 is answered."""
    with connect(gw) as s:
        for cid in (1, 2, 3):
            s.sendall(api_versions_v3_request(cid))
            got, body = read_response(s)
            assert got == cid
            (err,) = struct.unpack(">h", body[:2])
            assert err == 0
            # compact array of api keys: ApiVersions (18) must be listed
            n = body[2] - 1
            keys = [struct.unpack(">h", body[3 + i * 7: 5 + i * 7])[0] for i in range(n)]
            assert 18 in keys and 0 in keys and 1 in keys, keys


@pytest.mark.parametrize("kind", ["random", "http", "plausible-length"])
def test_garbage_bytes(gw, steady, kind):
    rng = random.Random(kind)
    if kind == "random":
        data = bytes(rng.getrandbits(8) for _ in range(4096))
    elif kind == "http":
        data = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
    else:
        body = bytes(rng.getrandbits(8) for _ in range(60))
        data = struct.pack(">i", len(body)) + body
    with connect(gw) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        wait_closed(s, CLOSE_TIMEOUT)
    after(gw, steady)


def test_frame_larger_than_limit(gw, steady, frame_limit):
    with connect(gw) as s:
        s.sendall(struct.pack(">i", frame_limit + 1) + b"\x00\x12\x00\x03\x00\x00\x00\x01")
        wait_closed(s, CLOSE_TIMEOUT)
    with connect(gw) as s:
        s.sendall(struct.pack(">i", 0x7FFFFFFF))
        wait_closed(s, CLOSE_TIMEOUT)
    after(gw, steady)


@pytest.mark.parametrize("length", [-1, -100, -(2 ** 31)])
def test_negative_length(gw, steady, length):
    with connect(gw) as s:
        s.sendall(struct.pack(">i", length) + b"\x00" * 16)
        wait_closed(s, CLOSE_TIMEOUT)
    after(gw, steady)


def test_zero_length_frame(gw, steady):
    with connect(gw) as s:
        s.sendall(struct.pack(">i", 0))
        wait_closed(s, CLOSE_TIMEOUT)
    after(gw, steady)


def test_truncated_frame_then_close(gw, steady):
    req = api_versions_v3_request(7)
    with connect(gw) as s:
        s.sendall(req[: len(req) // 2])
        s.shutdown(socket.SHUT_WR)     # EOF in the middle of a frame
        wait_closed(s, CLOSE_TIMEOUT)
    # the length promises more than ever comes
    with connect(gw) as s:
        s.sendall(struct.pack(">i", 1000) + b"\x00\x12\x00\x03")
        s.shutdown(socket.SHUT_WR)
        wait_closed(s, CLOSE_TIMEOUT)
    after(gw, steady)


def test_unknown_api_key(gw, steady):
    with connect(gw) as s:
        s.sendall(kafka_request(9999, 0, 77, b""))
        wait_closed(s, CLOSE_TIMEOUT)
    # after a valid request on the same connection
    with connect(gw) as s:
        s.sendall(api_versions_v3_request(1))
        assert read_response(s)[0] == 1
        s.sendall(kafka_request(9999, 3, 2, b"\x00" * 8))
        wait_closed(s, CLOSE_TIMEOUT)
    after(gw, steady)


def test_header_shorter_than_fixed_fields(gw, steady):
    """A frame too short to hold api key, version and correlation id."""
    with connect(gw) as s:
        s.sendall(struct.pack(">i", 3) + b"\x00\x12\x00")
        wait_closed(s, CLOSE_TIMEOUT)
    after(gw, steady)


@pytest.mark.parametrize("how", ["close", "reset"])
def test_disconnect_mid_request(gw, steady, how):
    # a produce-sized request cut off halfway
    req = kafka_request(0, 9, 5, b"\x00" * 5000, flexible=True)
    for _ in range(5):
        s = connect(gw)
        s.sendall(req[: len(req) // 2])
        if how == "reset":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    # and disconnecting while a response is on its way
    for cid in range(5):
        s = connect(gw)
        s.sendall(api_versions_v3_request(cid))
        if how == "reset":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    after(gw, steady)


def test_many_connections_at_once(gw, steady):
    socks = [connect(gw) for _ in range(100)]
    try:
        for i, s in enumerate(socks):
            s.sendall(api_versions_v3_request(i))
        for i, s in enumerate(socks):
            assert read_response(s)[0] == i
    finally:
        for s in socks:
            s.close()
    after(gw, steady)


def test_java_clients_after_bad_input(gw, steady, topic_name):
    rd_create_topic(gw.bootstrap, topic_name, 2)
    produced = [rec_from_json(o) for o in java_produce(gw.bootstrap, topic_name, 50, compression="gzip")]
    got = java_consume(gw.bootstrap, topic_name, 50, extra_ms=200)
    assert_same_records(produced, got, "java after bad input")
