"""Fixtures: a real Kafka (deploy/kafka.sh) and Custos in front of it.

By default tests go through Custos (binary from $CUSTOS_BIN, else
target/debug/custos). With CUSTOS_E2E_DIRECT=1 the same tests talk to Kafka
directly, which checks the tests themselves.

Ports (all on 127.0.0.1), overridable by environment:
  CUSTOS_E2E_KAFKA_PORT_BASE (21092): single broker 21092 (controller 21192,
      SSL listener 21292);
      the 3-broker cluster uses base+1000, the upstream-failure Kafka base+2000.
  CUSTOS_E2E_PORT_BASE (31000): Custos instances take blocks of 20 ports from
      here: bootstrap +0, admin +5, broker N at +10+N.
"""
from __future__ import annotations

import os
import re
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (ACTIVE_GATEWAYS, DIRECT, KAFKA_PORT_BASE, KafkaCluster,  # noqa: E402
                     start_gateway, stop_gateway, CUSTOS_BIN)


def kafka_fixture(tmp_path_factory, name, brokers, port_base, tls=False):
    k = KafkaCluster(tmp_path_factory.mktemp(name), brokers, port_base, tls=tls)
    k.start()
    return k


@pytest.fixture(scope="session")
def kafka(tmp_path_factory):
    """One single-broker Kafka shared by the whole session (with an SSL listener
    beside the plaintext one, for the TLS tests)."""
    k = kafka_fixture(tmp_path_factory, "kafka1", 1, KAFKA_PORT_BASE, tls=True)
    yield k
    k.stop()


@pytest.fixture(scope="session")
def gateway(kafka, tmp_path_factory):
    """What clients connect to: Custos in front of `kafka` (or `kafka` itself in DIRECT mode)."""
    gw = start_gateway(kafka, tmp_path_factory.mktemp("custos"), "custos")
    yield gw
    stop_gateway(gw)


@pytest.fixture(scope="session")
def bootstrap(gateway) -> str:
    return gateway.bootstrap


@pytest.fixture
def topic_name(request) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name).strip("-")[:120]
    return f"e2e-{base}-{uuid.uuid4().hex[:6]}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for gw in list(ACTIVE_GATEWAYS):
            t = gw.log_tail(80)
            state = "running" if gw.alive() else f"EXITED rc={gw.proc.returncode if gw.proc else None}"
            rep.sections.append((f"{gw.name} ({state}) log tail: {gw.log_path}", t or "(empty)"))


def pytest_sessionfinish(session, exitstatus):
    """Gateways a failed fixture set-up never reached the teardown of would
    outlive the run (and keep reconnecting to a Kafka that is gone)."""
    for gw in list(ACTIVE_GATEWAYS):
        if getattr(gw, "proc", None) is not None and gw.proc.poll() is None:
            gw.proc.kill()
            gw.proc.wait(10)


def pytest_report_header(config):
    mode = "DIRECT (no proxy)" if DIRECT else f"through Custos ({CUSTOS_BIN})"
    return [f"custos e2e: {mode}"]
