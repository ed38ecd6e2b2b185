"""The audit log's operator surface: the /v1/audit HTTP API on the admin server
(bearer token, filtered queries, live verification, inclusion proofs, the
latest signed checkpoint, every query itself audited) and the offline
`custos audit` commands (keygen, verify of a store and of an export, proof,
verify-proof, export, list), including tampering with an export. No DIRECT
equivalent: the audit log is Custos's."""
import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from harness import CUSTOS_BIN, DIRECT, rd_common, rd_create_topic, start_gateway, stop_gateway, wait_until

pytestmark = pytest.mark.skipif(DIRECT, reason="the audit log is Custos's")

TOKEN = secrets.token_hex(24)


def audit_cli(*args, check=True, stdin=None):
    r = subprocess.run([CUSTOS_BIN, "audit", *map(str, args)], capture_output=True, text=True,
                       timeout=120, input=stdin)
    if check:
        assert r.returncode == 0, f"custos audit {args[0]} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r


def http(gw, path, token=TOKEN, method="GET"):
    """(status, headers, body as JSON when it is JSON, else text)."""
    req = urllib.request.Request(f"http://{gw.host}:{gw.admin_port}{path}", method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, headers, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, headers, raw = e.code, e.headers, e.read()
    text = raw.decode()
    try:
        return status, headers, json.loads(text)
    except ValueError:
        return status, headers, text


def query_all(gw, params):
    """Every record of GET /v1/audit?params, following next_cursor."""
    out, cursor = [], None
    for _ in range(1000):
        q = params + (f"&cursor={cursor}" if cursor else "")
        status, _, body = http(gw, f"/v1/audit?{q}")
        assert status == 200, body
        out += body["records"]
        cursor = body["next_cursor"]
        if cursor is None:
            return out
    raise AssertionError("pagination did not end")


def partitions_of(recs, kind, topic):
    """{partition: [(offset, records)]} from the records of `kind` touching `topic`."""
    out = {}
    for r in recs:
        assert r["kind"] == kind, r
        for res in r["resources"]:
            if res["type"] == "Topic" and res["name"] == topic:
                for p in res["partitions"]:
                    out.setdefault(p["partition"], []).append((p["offset"], p["records"]))
    return out


PERMIT_ALL = '@id("e2e-all")\npermit (principal, action in Action::"All", resource);\n'


def audit_yaml(store, key):
    return (f"audit:\n  dir: \"{store}\"\n  signing_key: \"{key}\"\n  mode: strict\n"
            "  checkpoint_interval_ms: 200\n  instance_id: e2e-api\n")


def test_audit_api_and_cli(kafka, tmp_path_factory, topic_name):
    d = tmp_path_factory.mktemp("audit-api")
    key = d / "audit.key"
    r = audit_cli("keygen", "--out", key)
    pub_hex = r.stdout.strip()
    pub_file = d / "audit.key.pub"
    assert pub_file.read_text().strip() == pub_hex and len(pub_hex) == 64
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    again = audit_cli("keygen", "--out", key, check=False)
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr, again.stderr

    token_file = d / "admin.token"
    token_file.write_text(TOKEN + "\n")
    os.chmod(token_file, 0o600)
    store = d / "store"
    # Authorization on (everything permitted) caps Fetch at v12, which names
    # topics; see test_fetch_by_topic_id_is_recorded_under_the_name.
    policies = d / "all.cedar"
    policies.write_text(PERMIT_ALL)
    gw = start_gateway(
        kafka, d / "custos", "custos-audit-api",
        admin_extra=f"  token_file: \"{token_file}\"\n",
        extra_yaml=audit_yaml(store, key) + f"authorization:\n  policies: [\"{policies}\"]\n")
    counts = {0: 3, 1: 2}
    try:
        rd_create_topic(gw.bootstrap, topic_name, 2)
        acked = []
        p = Producer({**rd_common(gw.bootstrap), "linger.ms": 5, "acks": "all"})
        for part, n in counts.items():
            for i in range(n):
                p.produce(topic_name, value=b"secret-payload-%d" % i, partition=part,
                          on_delivery=lambda e, m: acked.append((m.partition(), m.offset())) if e is None else None)
        assert p.flush(30) == 0
        assert sorted(acked) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)], acked
        c = Consumer({**rd_common(gw.bootstrap), "group.id": f"g-{topic_name}",
                      "enable.auto.commit": False})
        c.assign([TopicPartition(topic_name, 0, 0), TopicPartition(topic_name, 1, 0)])
        got, deadline = [], time.monotonic() + 30
        while len(got) < 5 and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got.append((m.partition(), m.offset()))
        c.close()
        assert sorted(got) == sorted(acked), got

        # --- authentication: nothing under /v1/ without the token
        status, headers, body = http(gw, f"/v1/audit?topic={topic_name}", token=None)
        assert status == 401, body
        assert headers["WWW-Authenticate"].startswith("Bearer"), dict(headers)
        status, headers, _ = http(gw, "/v1/audit", token="not-the-token-" + "0" * 20)
        assert status == 401 and "invalid_token" in headers["WWW-Authenticate"]
        assert http(gw, "/healthz", token=None)[0] == 200
        assert http(gw, "/metrics", token=None)[0] == 200
        assert http(gw, "/readyz", token=None)[0] == 200

        # --- errors name the problem
        status, _, body = http(gw, "/v1/audit?limit=5000")
        assert status == 400 and "limit" in body["error"], body
        status, _, body = http(gw, "/v1/audit?topc=x")
        assert status == 400 and "topc" in body["error"], body
        status, _, body = http(gw, "/v1/audit?since=yesterday")
        assert status == 400 and "since" in body["error"], body
        assert http(gw, "/v1/audit/nothing")[0] == 404
        assert http(gw, "/v1/audit", method="POST")[0] == 405

        # --- produce and fetch records of the topic: counts and offsets
        produced = query_all(gw, f"topic={topic_name}&kind=produce&limit=2")
        ranges = partitions_of(produced, "produce", topic_name)
        for part, n in counts.items():
            # An attempt the broker refused (e.g. a leader not settled right
            # after the topic's creation; librdkafka retries) has no offset.
            spans = sorted((o, k) for o, k in ranges.get(part, []) if o is not None)
            assert sum(k for _, k in spans) == n, (part, spans)
            pos = 0
            for off, k in spans:     # the written ranges tile 0..n exactly
                assert off == pos, (part, spans)
                pos += k
        for r in produced:
            assert r["principal"]["name"] and r["client"]["addr"].startswith("127.0.0.1:")
            assert "secret-payload" not in json.dumps(r)
        fetched = query_all(gw, f"topic={topic_name}&kind=fetch")
        franges = partitions_of(fetched, "fetch", topic_name)
        for part, n in counts.items():
            seen = set()
            for off, k in franges.get(part, []):
                if k and off is not None:
                    seen.update(range(off, off + k))
            assert seen == set(range(n)), (part, franges.get(part))
        both = query_all(gw, f"topic={topic_name}&kind=produce,fetch&limit=1000")
        assert sorted(r["seq"] for r in both) == sorted(r["seq"] for r in produced + fetched)
        assert query_all(gw, f"topic={topic_name}&kind=produce&decision=denied") == []
        by_api = query_all(gw, f"topic={topic_name}&api=Produce&kind=produce")
        assert [r["seq"] for r in by_api] == [r["seq"] for r in produced]
        allowed = query_all(gw, f"topic={topic_name}&decision=allowed&principal=User%3AANONYMOUS")
        assert allowed and all(r["kind"] == "authorization" and r["decision"]["policy_ids"] == ["e2e-all"]
                               for r in allowed), allowed
        assert {r["action"] for r in allowed} >= {"Write", "Read"}, allowed

        # --- live verification
        status, _, rep = http(gw, "/v1/audit/verify")
        assert status == 200 and rep["ok"] is True, rep
        assert rep["problem"] is None and rep["public_key"] == pub_hex
        assert rep["records"] > max(r["seq"] for r in both)

        # --- inclusion proof of one produce record, checked offline with the public key
        seq = produced[0]["seq"]
        wait_until(lambda: http(gw, "/v1/audit/checkpoints/latest")[2].get("tree_size", 0) > seq,
                   30, "a checkpoint covering the produce record")
        status, _, proof = http(gw, f"/v1/audit/proof/{seq}")
        assert status == 200, proof
        proof_file = d / "proof.json"
        proof_file.write_text(json.dumps(proof))
        r = audit_cli("verify-proof", proof_file, "--public-key", pub_file)
        assert r.stdout.startswith(f"OK: record {seq} "), r.stdout
        proven = json.loads(r.stdout.splitlines()[1])
        assert proven["seq"] == seq and proven["kind"] == "produce"
        assert any(res["name"] == topic_name for res in proven["resources"])
        bad = dict(proof, path=["00" * 32] + proof["path"][1:]) if proof["path"] else dict(proof, seq=seq + 1)
        (d / "bad-proof.json").write_text(json.dumps(bad))
        r = audit_cli("verify-proof", d / "bad-proof.json", "--public-key", pub_hex, check=False)
        assert r.returncode == 1 and "FAILED" in r.stdout, r.stdout + r.stderr
        assert http(gw, "/v1/audit/proof/999999999")[0] == 404
        assert http(gw, "/v1/audit/proof/x1")[0] == 400

        # --- the latest checkpoint covers what was seen
        seen_max = max(r["seq"] for r in both)
        wait_until(lambda: http(gw, "/v1/audit/checkpoints/latest")[2].get("tree_size", 0) > seen_max,
                   30, "a checkpoint covering every record seen")
        status, _, cp = http(gw, "/v1/audit/checkpoints/latest")
        assert status == 200 and cp["public_key"] == pub_hex, cp
        assert cp["tree_size"] >= seen_max + 1 and cp["tree_size"] == cp["seq"] + 1, cp
        (d / "anchor.json").write_text(json.dumps(cp))

        # --- every query is itself audited (path, filters, caller; never the token)
        queries = query_all(gw, "kind=audit_query&limit=1000")
        mine = [q for q in queries if q["details"].get("param.topic") == topic_name
                and q["details"].get("param.kind") == "produce"]
        assert mine, queries
        q = mine[0]
        assert q["details"]["path"] == "/v1/audit" and q["action"] == "query"
        assert q["principal"]["name"] == "Admin:api-token"
        assert q["client"]["addr"].startswith("127.0.0.1:")
        denied = [q for q in queries if q["details"].get("status") == "401"]
        assert len(denied) >= 2 and all(q["error"]["blame"] == "client" for q in denied), denied
        assert {"verify", "proof", "checkpoint"} <= {q["action"] for q in queries}
        assert TOKEN not in json.dumps(queries)

        # --- offline commands refuse a store a running Custos holds, and say why
        r = audit_cli("verify", "--dir", store, "--public-key", pub_hex, check=False)
        assert r.returncode == 1 and "locked" in r.stderr, r.stderr
    finally:
        stop_gateway(gw)

    # --- offline, after the gateway stopped
    r = audit_cli("verify", "--dir", store, "--public-key", pub_file)
    assert r.stdout.startswith("OK: ") and "records" in r.stdout, r.stdout
    audit_cli("verify", "--dir", store, "--public-key", pub_hex, "--anchor", d / "anchor.json")
    rj = json.loads(audit_cli("verify", "--dir", store, "--public-key", pub_hex, "--json").stdout)
    assert rj["ok"] is True and rj["unsigned_tail"] == 0, rj   # closed with a final checkpoint
    other = d / "other.key"
    audit_cli("keygen", "--out", other)
    r = audit_cli("verify", "--dir", store, "--public-key", d / "other.key.pub", check=False)
    assert r.returncode == 1 and "FAILED" in r.stdout, r.stdout

    listed = [json.loads(line) for line in
              audit_cli("list", "--dir", store, "--topic", topic_name, "--kind", "produce").stdout.splitlines()]
    assert [x["seq"] for x in listed] == [x["seq"] for x in produced]
    assert len(audit_cli("list", "--dir", store, "--limit", "2").stdout.splitlines()) == 2

    proof = audit_cli("proof", seq, "--dir", store).stdout
    r = audit_cli("verify-proof", "-", "--public-key", pub_hex, stdin=proof)
    assert r.stdout.startswith(f"OK: record {seq} ")

    exp = d / "export"
    r = audit_cli("export", "--dir", store, "--out", exp)
    assert "exported seqs 0..=" in r.stdout, r.stdout
    r = audit_cli("verify", "--export", exp, "--public-key", pub_file)
    assert r.stdout.startswith("OK: "), r.stdout
    r = audit_cli("verify", "--dir", exp, "--public-key", pub_file, check=False)
    assert r.returncode == 1 and "--export" in r.stderr, r.stderr

    # --- one changed byte in the export's JSONL is found, at its sequence number
    lines = (exp / "records.jsonl").read_text().splitlines(keepends=True)
    idx = next(i for i, line in enumerate(lines) if json.loads(line)["seq"] == seq)
    line = lines[idx]
    h = json.loads(line)["hash"]

    def flip_hash(text):      # the stored chain hash's first hex digit
        return text.replace(h, ("1" if h[0] == "0" else "0") + h[1:], 1)

    def edit_readable(text):  # the readable instance name, canonical bytes untouched
        return text.replace('"e2e-api"', '"e2e-apj"', 1)

    for what, mutate in (("chain-hash", flip_hash), ("readable-field", edit_readable)):
        bad = d / f"export-bad-{what}"
        shutil.copytree(exp, bad)
        changed = mutate(line)
        assert len(changed) == len(line) and sum(a != b for a, b in zip(changed, line)) == 1, what
        (bad / "records.jsonl").write_text("".join(lines[:idx] + [changed] + lines[idx + 1:]))
        r = audit_cli("verify", "--export", bad, "--public-key", pub_file, check=False)
        assert r.returncode == 1, f"{what}: {r.stdout}{r.stderr}"
        assert f"seq {seq}:" in r.stdout, f"{what}: {r.stdout}"


def test_fetch_by_topic_id_is_recorded_under_the_name(kafka, tmp_path_factory, topic_name):
    d = tmp_path_factory.mktemp("audit-topic-id")
    key = d / "audit.key"
    audit_cli("keygen", "--out", key)
    store = d / "store"
    gw = start_gateway(kafka, d / "custos", "custos-audit-id", extra_yaml=audit_yaml(store, key))
    try:
        rd_create_topic(gw.bootstrap, topic_name, 1)
        p = Producer(rd_common(gw.bootstrap))
        p.produce(topic_name, value=b"x", partition=0)
        assert p.flush(30) == 0
        c = Consumer({**rd_common(gw.bootstrap), "group.id": f"g-{topic_name}"})
        c.assign([TopicPartition(topic_name, 0, 0)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                break
        c.close()
    finally:
        stop_gateway(gw)
    fetches = audit_cli("list", "--dir", store, "--kind", "fetch").stdout.splitlines()
    assert fetches, "no fetch record at all"
    named = audit_cli("list", "--dir", store, "--kind", "fetch", "--topic", topic_name).stdout.splitlines()
    assert named, f"fetch records name the topic otherwise: {fetches[:2]}"
