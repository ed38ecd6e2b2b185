"""Custos logs in to the brokers with its own SASL credentials (SCRAM-SHA-512
against Kafka's SASL_PLAINTEXT listener), so clients need no broker
credentials at all; with a wrong password Custos never becomes ready and says
why. No DIRECT equivalent: the point is Custos's own login."""
import pytest

from harness import (CUSTOS_BIN, DIRECT, KAFKA_PORT_BASE, PLAIN, CustosGateway, KafkaCluster,
                     _port_block, java_consume, java_produce,
                     rd_consume, rd_create_topic, rd_produce, start_gateway, stop_gateway,
                     wait_until)
from records import assert_same_records, rec_from_json

pytestmark = pytest.mark.skipif(DIRECT, reason="tests Custos's own broker login")


@pytest.fixture(scope="module")
def kafka_sasl(tmp_path_factory):
    k = KafkaCluster(tmp_path_factory.mktemp("kafka-sasl"), 1, KAFKA_PORT_BASE + 3000, sasl=True)
    k.start()
    yield k
    k.stop()


def password_file(tmp_path_factory, pw):
    p = tmp_path_factory.mktemp("secret") / "broker-password"
    p.write_text(pw + "\n")
    p.chmod(0o600)
    return p


def test_custos_logs_in_to_a_sasl_listener(kafka_sasl, tmp_path_factory, topic_name):
    pw = password_file(tmp_path_factory, "custos-test-secret")
    g = start_gateway(kafka_sasl, tmp_path_factory.mktemp("custos-up-sasl"), "custos-up-sasl",
                      upstream_sasl={"mechanism": "SCRAM-SHA-512", "username": "custos",
                                     "password_file": str(pw)})
    try:
        bs = g.bootstrap
        rd_create_topic(bs, topic_name, 2)
        produced = rd_produce(bs, topic_name, 30, compression="snappy")
        produced += [rec_from_json(o) for o in java_produce(bs, topic_name, 30, seed=4, sec=PLAIN)]
        assert_same_records(produced, rd_consume(bs, topic_name, 60, extra_s=0.3), "rdkafka")
        assert_same_records(produced, java_consume(bs, topic_name, 60, extra_ms=300), "java")
        assert "custos-test-secret" not in g.log_tail(2000)
    finally:
        stop_gateway(g)


def test_wrong_broker_password_keeps_custos_unready(kafka_sasl, tmp_path_factory):
    pw = password_file(tmp_path_factory, "not-the-password")
    g = CustosGateway(CUSTOS_BIN, kafka_sasl, tmp_path_factory.mktemp("custos-bad-sasl"), _port_block(1),
                      name="custos-bad-sasl",
                      upstream_sasl={"mechanism": "SCRAM-SHA-512", "username": "custos",
                                     "password_file": str(pw)})
    try:
        with pytest.raises(AssertionError, match="readyz not 200"):
            g.start(ready_timeout=8)
    finally:
        g.kill()
    log = g.log_tail(200)
    assert "SASL login" in log and "refused Custos's credentials" in log, log
    assert "not-the-password" not in log
