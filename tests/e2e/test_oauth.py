"""SASL/OAUTHBEARER on a SASL_SSL listener, end to end: the test is the identity provider. It
serves its JWKS over https (a certificate from certs.py's CA, which the broker trusts through
`sasl.oauthbearer.jwks.endpoint.ssl.truststore.location`), signs ES256 access tokens by hand,
and confluent-kafka (librdkafka) presents them through `oauth_cb`. A good token produces and
consumes; a refused one is an authentication error for the client (Kafka's
`{"status":"invalid_token"}`) and the real reason in the broker's log, never the token."""

from __future__ import annotations

import base64
import collections
import http.server
import json
import re
import socket
import ssl
import threading
import time

import pytest

pytest.importorskip("confluent_kafka")

from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

import certs
import kproto
from clients import consume, produce_all, producer, unique

ISSUER = "https://idp.shale.test"
AUDIENCE = "kafka"
CHALLENGE = '{"status":"invalid_token"}'


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class SigningKey:
    """An ES256 key of the provider; `jwk()` is what its JWKS publishes."""

    def __init__(self, kid: str):
        self.kid = kid
        self.key = ec.generate_private_key(ec.SECP256R1())

    def jwk(self) -> dict:
        n = self.key.public_key().public_numbers()
        return {"kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig", "alg": "ES256",
                "x": b64url(n.x.to_bytes(32, "big")), "y": b64url(n.y.to_bytes(32, "big"))}

    def token(self, claims: dict, header: dict | None = None) -> str:
        header = header or {"alg": "ES256", "typ": "JWT", "kid": self.kid}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        # JWS wants the raw r || s, not the DER sequence (RFC 7518 §3.4).
        return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def claims(sub: str = "alice", life: float = 600, **changes) -> dict:
    now = int(time.time())
    return {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": int(now + life), **changes}


class IdentityProvider:
    """A JWKS endpoint over https on 127.0.0.1, serving `keys`; counts the fetches."""

    def __init__(self, cert: certs.Issued, keys: list[SigningKey]):
        self.keys = keys
        self.fetches = 0
        idp = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/jwks.json":
                    self.send_error(404)
                    return
                idp.fetches += 1
                body = json.dumps({"keys": [k.jwk() for k in idp.keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = certs.CA(tmp_path_factory.mktemp("oauth-pki"))
    return {"ca": ca, "broker": ca.issue("broker", "CN=localhost"), "idp": ca.issue("idp", "CN=localhost")}


@pytest.fixture(scope="module")
def idp(pki):
    provider = IdentityProvider(pki["idp"], [SigningKey("idp-key-1")])
    yield provider
    provider.stop()


def oauth_settings(pki, idp, **extra) -> dict:
    return {
        "ssl.keystore.type": "PEM",
        "ssl.certificate.location": str(pki["broker"].cert),
        "ssl.key.location": str(pki["broker"].key),
        "sasl.enabled.mechanisms": "OAUTHBEARER",
        # Kafka's listener-and-mechanism prefix for one, bare names for the rest: both resolve.
        "listener.name.sasl_ssl.oauthbearer.sasl.oauthbearer.jwks.endpoint.url": idp.url,
        "sasl.oauthbearer.jwks.endpoint.ssl.truststore.location": str(pki["ca"].pem),
        "sasl.oauthbearer.expected.audience": AUDIENCE,
        "sasl.oauthbearer.expected.issuer": ISSUER,
        **extra,
    }


@pytest.fixture
def oauth_node(shale_factory, pki, idp):
    return shale_factory(settings=oauth_settings(pki, idp), protocol="SASL_SSL")


def client_conf(node, pki, oauth_cb, **extra) -> dict:
    return {
        "bootstrap.servers": node.bootstrap,
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": str(pki["ca"].pem),
        "sasl.mechanisms": "OAUTHBEARER",
        "oauth_cb": oauth_cb,
        **extra,
    }


def issuing(key: SigningKey, life: int, on_issue=None) -> callable:
    """An oauth_cb that mints a fresh token for alice, good for `life` seconds, each time
    librdkafka asks. librdkafka is told the token's own `exp`: it refreshes the token at 80%
    of that, and must not believe it lives longer than the broker does."""
    def cb(_config):
        c = claims(life=life)
        if on_issue is not None:
            on_issue()
        return key.token(c), float(c["exp"])
    return cb


def fixed(token: str) -> callable:
    """An oauth_cb handing out `token`, whatever its claims say. librdkafka does not read
    the JWT; it is told the token is good for five minutes."""
    return lambda _config: (token, time.time() + 300)


def authentication_error(conf: dict, timeout: float = 20.0) -> KafkaError:
    """The authentication error a client with `conf` reports while it tries to connect;
    fails after `timeout` seconds without one."""
    errors: list[KafkaError] = []
    p = Producer({**conf, "error_cb": errors.append, "socket.timeout.ms": 5000})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p.poll(0.2)
        for e in errors:
            if e.code() == KafkaError._AUTHENTICATION:
                return e
    raise AssertionError(f"no authentication error within {timeout}s; errors: {[str(e) for e in errors]}")


def wait_log(node, needle: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = node.log_tail(400)
        if needle in log:
            return log
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} not in the broker's log:\n{node.log_tail(60)}")


def roundtrip(conf: dict, topic: str, n: int = 5):
    client = {k: v for k, v in conf.items() if k != "bootstrap.servers"}
    produce_all(producer(conf["bootstrap.servers"], **client),
                topic, [{"key": f"k{i}".encode(), "value": f"v{i}".encode()} for i in range(n)])
    got = consume(conf["bootstrap.servers"], topic, [0], until={0: n}, **client)
    assert [r.value for r in got[0]] == [f"v{i}".encode() for i in range(n)]


def create_topic(conf: dict, topic: str):
    admin = AdminClient(dict(conf))
    # The admin client fetches its first token on poll.
    admin.poll(1)
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)


# ---- authentication ---------------------------------------------------------------------


def test_a_valid_token_produces_and_consumes(oauth_node, pki, idp):
    conf = client_conf(oauth_node, pki, issuing(idp.keys[0], 600))
    topic = unique("oauth")
    create_topic(conf, topic)
    roundtrip(conf, topic)
    assert "authentication failed" not in oauth_node.log_tail(400)


def refused_tokens(idp) -> dict:
    key = idp.keys[0]
    unsigned = (f"{b64url(json.dumps({'alg': 'none', 'typ': 'JWT', 'kid': key.kid}).encode())}."
                f"{b64url(json.dumps(claims()).encode())}.")
    return {
        "wrong aud": (key.token(claims(aud="not-kafka")), "wrong audience"),
        "wrong iss": (key.token(claims(iss="https://elsewhere.test")), "wrong issuer"),
        # Past the 30 s default clock skew.
        "expired": (key.token(claims(life=-120)), "invalid token: expired"),
        "alg none": (unsigned, "refused signature algorithm"),
        "a key not in the JWKS": (SigningKey("rogue-key").token(claims()),
                                  "no key in the JWKS has the token's key id"),
        "a forged key with the JWKS key's kid": (SigningKey(key.kid).token(claims()), "bad signature"),
    }


@pytest.mark.parametrize("case", ["wrong aud", "wrong iss", "expired", "alg none",
                                  "a key not in the JWKS", "a forged key with the JWKS key's kid"])
def test_a_refused_token_is_an_authentication_error(oauth_node, pki, idp, case):
    token, reason = refused_tokens(idp)[case]
    fetched = idp.fetches
    err = authentication_error(client_conf(oauth_node, pki, fixed(token)))
    assert "invalid_token" in err.str(), err
    if case == "a key not in the JWKS":
        # An unknown kid may be a key rotation: the JWKS is fetched again before refusing.
        assert idp.fetches > fetched
    log = wait_log(oauth_node, reason)
    assert 'authentication failed' in log and 'mechanism="OAUTHBEARER"' in log
    # Neither the token nor its signature reach the log.
    assert token.rsplit(".", 1)[0] not in log
    if not token.endswith("."):
        assert token.rsplit(".", 1)[1] not in log


def test_the_challenge_and_its_acknowledgement_on_the_wire(oauth_node, pki, idp):
    """RFC 7628 §3.2.2 as Kafka answers a refused token: the challenge with error 0, then
    SASL_AUTHENTICATION_FAILED with the same text once the client sends %x01."""
    expired = idp.keys[0].token(claims(life=-120))
    with kproto.Conn.to(oauth_node.bootstrap, timeout=10,
                        tls=ssl.create_default_context(cafile=str(pki["ca"].pem))) as c:
        r = c.request(17, 1, kproto.string("OAUTHBEARER"))
        assert r.i16() == 0 and r.array(lambda r: r.string()) == ["OAUTHBEARER"]
        r = c.request(36, 1, kproto.nbytes(f"n,,\x01auth=Bearer {expired}\x01\x01".encode()))
        err, _msg, challenge = r.i16(), r.string(), r.nbytes()
        assert (err, challenge) == (0, CHALLENGE.encode())
        r = c.request(36, 1, kproto.nbytes(b"\x01"))
        err, msg = r.i16(), r.string()
        assert (err, msg) == (58, CHALLENGE)  # SASL_AUTHENTICATION_FAILED
        assert c.closed_by_peer(10)


def test_a_client_that_leaves_after_the_challenge_is_a_logged_failure(oauth_node, pki, idp):
    wrong_aud = idp.keys[0].token(claims(aud="not-kafka"))
    with kproto.Conn.to(oauth_node.bootstrap, timeout=10,
                        tls=ssl.create_default_context(cafile=str(pki["ca"].pem))) as c:
        assert c.request(17, 1, kproto.string("OAUTHBEARER")).i16() == 0
        r = c.request(36, 1, kproto.nbytes(f"n,,\x01auth=Bearer {wrong_aud}\x01\x01".encode()))
        assert r.i16() == 0
    # No %x01: the connection just closes.
    log = wait_log(oauth_node, "wrong audience (the client left after the challenge)")
    assert wrong_aud.rsplit(".", 1)[0] not in log


# ---- sessions (KIP-368) -----------------------------------------------------------------


def test_the_client_re_authenticates_before_its_token_expires(shale_factory, pki, idp):
    """No connections.max.reauth.ms: the token's expiry alone bounds the session, so
    SaslAuthenticate tells librdkafka the token's remaining life, and librdkafka refreshes
    its token (at 80% of its life) and re-authenticates on the same connection (at 90% of
    the session) before the session ends. A client that did not would have its connection
    closed at its first request after expiry ("SASL session expired")."""
    node = shale_factory(settings=oauth_settings(pki, idp), protocol="SASL_SSL",
                         env={"SHALE_LOG": "info,shale_broker::session=debug"})
    key = idp.keys[0]
    topic = unique("reauth")
    create_topic(client_conf(node, pki, issuing(key, 600)), topic)
    issued = []
    conf = client_conf(node, pki, issuing(key, 8, on_issue=lambda: issued.append(time.monotonic())))
    p = producer(node.bootstrap, **{k: v for k, v in conf.items() if k != "bootstrap.servers"})
    delivered, errors = [], []

    def report(err, msg):
        (errors if err else delivered).append(err or msg.offset())

    # Two re-authentications of the producer's connection fit in 16 s; poll() serves the
    # token refreshes, so it runs often.
    sent = 0
    deadline = time.monotonic() + 16
    while time.monotonic() < deadline:
        p.produce(topic, f"v{sent}".encode(), on_delivery=report)
        sent += 1
        p.poll(0.2)
    assert p.flush(30) == 0
    assert not errors, errors
    assert delivered == list(range(sent))
    assert len(issued) >= 3, f"librdkafka asked for {len(issued)} tokens"
    log = node.log_tail(3000)
    per_connection = collections.Counter(re.findall(r"authenticated peer=(\S+)", log))
    assert max(per_connection.values()) >= 3, per_connection
    assert "SASL session expired" not in log


# ---- start-up ---------------------------------------------------------------------------


def test_a_jwks_that_cannot_be_fetched_stops_start_up(shale_factory, pki, idp):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"https://127.0.0.1:{s.getsockname()[1]}/jwks.json"
    settings = oauth_settings(pki, idp, **{
        "listener.name.sasl_ssl.oauthbearer.sasl.oauthbearer.jwks.endpoint.url": closed,
        "sasl.oauthbearer.jwks.endpoint.retry.backoff.max.ms": 400,
    })
    node = shale_factory(settings=settings, protocol="SASL_SSL", start=False)
    with pytest.raises(RuntimeError) as e:
        node.start(timeout=30)
    assert "exited" in str(e.value)
    log = node.log_tail(200)
    assert "listener SASL_SSL (OAUTHBEARER): cannot fetch the JWKS" in log, log


def test_oauthbearer_without_a_jwks_url_stops_start_up(shale_factory, pki, idp):
    settings = oauth_settings(pki, idp)
    del settings["listener.name.sasl_ssl.oauthbearer.sasl.oauthbearer.jwks.endpoint.url"]
    node = shale_factory(settings=settings, protocol="SASL_SSL", start=False)
    with pytest.raises(RuntimeError):
        node.start(timeout=30)
    log = node.log_tail(200)
    assert "enables OAUTHBEARER: sasl.oauthbearer.jwks.endpoint.url" in log, log
