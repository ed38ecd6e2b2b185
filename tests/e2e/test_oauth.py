"""SASL OAUTHBEARER terminated at Custos: a client presents an RS256 JWT signed
by an identity provider whose keys Custos reads from a JWKS file; issuer,
audience, expiry and signature are checked. The tokens are made here with a
key generated for the test. No DIRECT equivalent (the broker has no OAuth)."""
import base64
import json
import time

import pytest
from confluent_kafka import KafkaError, Producer

from harness import DIRECT, rd_common, start_gateway, stop_gateway, wait_until

pytestmark = pytest.mark.skipif(DIRECT, reason="OAUTHBEARER is terminated by Custos")

ISSUER = "https://idp.custos.test"
AUDIENCE = "custos"


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def idp(tmp_path_factory):
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key().public_numbers()
    jwks = {"keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256",
                      "n": b64url(pub.n.to_bytes((pub.n.bit_length() + 7) // 8, "big")),
                      "e": b64url(pub.e.to_bytes(3, "big"))}]}
    path = tmp_path_factory.mktemp("idp") / "jwks.json"
    path.write_text(json.dumps(jwks))
    return {"key": key, "rogue": rogue, "jwks": path}


def token(signing_key, **overrides) -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "analytics-app", "groups": ["analysts"],
              "iat": now, "exp": now + 600}
    claims.update(overrides)
    head = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "k1"}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = signing_key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{b64url(sig)}"


@pytest.fixture(scope="module")
def gw_oauth(kafka, idp, tmp_path_factory):
    extra = ("  auth:\n    sasl:\n      mechanisms: [OAUTHBEARER]\n      oauthbearer:\n"
             f"        jwks_file: \"{idp['jwks']}\"\n"
             f"        issuer: \"{ISSUER}\"\n        audience: \"{AUDIENCE}\"\n")
    g = start_gateway(kafka, tmp_path_factory.mktemp("custos-oauth"), "custos-oauth", listen_extra=extra)
    yield g
    stop_gateway(g)


def oauth_conf(gw, tok: str) -> dict:
    conf = rd_common(gw.bootstrap)
    conf.update({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "OAUTHBEARER",
                 "oauth_cb": lambda _cfg: (tok, time.time() + 300)})
    return conf


def test_valid_token_produces_and_consumes(gw_oauth, idp, topic_name):
    from confluent_kafka.admin import AdminClient, NewTopic
    tok = token(idp["key"])
    admin = AdminClient(oauth_conf(gw_oauth, tok))
    fut = admin.create_topics([NewTopic(topic_name, 2, 1)])[topic_name]
    fut.result(30)
    p = Producer(oauth_conf(gw_oauth, tok))
    sent = []
    for i in range(20):
        p.produce(topic_name, key=f"k{i}".encode(), value=f"v{i}".encode(), partition=i % 2)
        sent.append((f"k{i}".encode(), f"v{i}".encode()))
    assert p.flush(30) == 0
    from confluent_kafka import Consumer
    c = Consumer({**oauth_conf(gw_oauth, tok), "group.id": f"g-{topic_name}",
                  "auto.offset.reset": "earliest"})
    c.subscribe([topic_name])
    got = []
    deadline = time.time() + 60
    while len(got) < 20 and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append((m.key(), m.value()))
    c.close()
    assert sorted(got) == sorted(sent)


@pytest.mark.parametrize("case", ["expired", "wrong-audience", "wrong-issuer", "bad-signature"])
def test_bad_tokens_are_refused(gw_oauth, idp, case):
    now = int(time.time())
    tok = {
        "expired": lambda: token(idp["key"], exp=now - 3600, iat=now - 7200),
        "wrong-audience": lambda: token(idp["key"], aud="someone-else"),
        "wrong-issuer": lambda: token(idp["key"], iss="https://evil.test"),
        "bad-signature": lambda: token(idp["rogue"]),
    }[case]()
    errors = []
    p = Producer({**oauth_conf(gw_oauth, tok), "error_cb": errors.append})
    wait_until(lambda: (p.poll(0.2), any(e.code() == KafkaError._AUTHENTICATION for e in errors))[1],
               20, f"librdkafka reports an authentication error ({case})")
    assert tok not in gw_oauth.log_tail(2000), "a token reached the log"
    assert gw_oauth.healthy()


def test_java_client_with_a_token_file(gw_oauth, idp, topic_name, tmp_path, monkeypatch):
    """Kafka's own OAuthBearerLoginCallbackHandler reading the JWT from a file
    (a `file:` token endpoint), as a Java application would in production."""
    tok_file = tmp_path / "token.jwt"
    tok_file.write_text(token(idp["key"]))
    url = tok_file.as_uri()
    # Kafka 4 only follows token endpoints on this allow-list (a JVM system property).
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={url}")
    props = ["security.protocol=SASL_PLAINTEXT", "sasl.mechanism=OAUTHBEARER",
             "sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required ;",
             "sasl.login.callback.handler.class="
             "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginCallbackHandler",
             f"sasl.oauthbearer.token.endpoint.url={url}"]
    args = [a for p in props for a in ("--property", p)]
    from harness import java
    _, objs, _ = java("metadata", "--bootstrap", gw_oauth.bootstrap, *args)
    assert objs and objs[0]["brokers"], objs
    for b in objs[0]["brokers"]:
        assert (b["host"], b["port"]) == gw_oauth.broker_addr(b["id"])
    # and a token signed by someone else is refused
    tok_file.write_text(token(idp["rogue"]))
    rc, _, err = java("metadata", "--bootstrap", gw_oauth.bootstrap, *args, check=False, timeout=90)
    assert rc != 0
    assert "Authentication failed" in err or "SaslAuthenticationException" in err, err[-1500:]
