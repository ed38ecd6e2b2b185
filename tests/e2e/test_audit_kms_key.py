"""The audit signing key kept under a KMS (`audit.signing_key_kms`), with
AWS KMS served by a local moto server.

`custos audit keygen --config` has the KMS generate the key: the file holds
it only wrapped by a KMS key, so the file alone signs nothing. The gateway
unwraps it at start and signs checkpoints that `custos audit verify` accepts
with the public key alone. With the KMS unreachable the gateway refuses to
start (naming the key), rather than run without a signing key."""
import json
import os
import subprocess

import pytest
from confluent_kafka import Producer

from harness import CUSTOS_BIN, DIRECT, rd_common, rd_create_topic, start_gateway, stop_gateway
from moto_server import MotoServer

pytestmark = pytest.mark.skipif(DIRECT, reason="the audit log is Custos's")


def config_yaml(d, moto):
    return ("audit:\n"
            f"  dir: \"{d / 'store'}\"\n"
            f"  signing_key: \"{d / 'audit.key.kms'}\"\n"
            "  signing_key_kms: {kek: alias/custos-audit}\n"
            "  checkpoint_interval_ms: 200\n"
            "  instance_id: e2e-kms\n"
            "encryption:\n"
            + moto.custos_kms_yaml() +
            "  kms_calls: {timeout_ms: 1000, max_retries: 1}\n"
            # No field rules: the KMS serves the audit signing key only.
            "  rules: []\n")


def test_kms_held_signing_key_signs_verifiable_checkpoints(kafka, tmp_path_factory, topic_name):
    d = tmp_path_factory.mktemp("audit-kms-key")
    moto = MotoServer(d / "moto.log").start()
    try:
        arn = moto.create_key(alias="alias/custos-audit")
        for k, v in moto.env().items():
            os.environ[k] = v
        gw = start_gateway(kafka, d / "custos", "custos-audit-kms", defer_start=True,
                           extra_yaml=config_yaml(d, moto))
        r = subprocess.run([CUSTOS_BIN, "audit", "keygen", "--config", str(gw.config_path)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        public = r.stdout.strip()
        assert len(public) == 64, r.stdout
        assert (d / "audit.key.kms.pub").read_text().strip() == public
        wrapped = json.loads((d / "audit.key.kms").read_text())
        # The key is only there wrapped, by the KMS key the config names.
        assert wrapped["kek_id"] == arn
        assert len(wrapped["blob"]) > 100
        assert "wrapped by the KMS" in r.stderr

        gw.start()
        rd_create_topic(gw.bootstrap, topic_name, 1)
        p = Producer({**rd_common(gw.bootstrap), "acks": "all"})
        for i in range(20):
            p.produce(topic_name, value=b"v%d" % i)
        assert p.flush(30) == 0
        stop_gateway(gw)

        v = subprocess.run([CUSTOS_BIN, "audit", "verify", "--dir", str(d / "store"),
                            "--public-key", public], capture_output=True, text=True, timeout=120)
        assert v.returncode == 0, v.stdout + v.stderr
        # Another key does not verify it.
        other = subprocess.run([CUSTOS_BIN, "audit", "keygen", "--out", str(d / "other.key")],
                               capture_output=True, text=True, timeout=60).stdout.strip()
        v = subprocess.run([CUSTOS_BIN, "audit", "verify", "--dir", str(d / "store"),
                            "--public-key", other], capture_output=True, text=True, timeout=120)
        assert v.returncode == 1, v.stdout + v.stderr

        # The KMS unreachable: no signing key, so no start.
        moto.pause()
        try:
            run = subprocess.run([CUSTOS_BIN, "run", "--config", str(gw.config_path)],
                                 capture_output=True, text=True, timeout=60)
        finally:
            moto.resume()
        assert run.returncode != 0
        assert "audit.signing_key" in run.stderr, run.stderr[-2000:]
    finally:
        moto.stop()
