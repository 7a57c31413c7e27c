"""Security with the real clients other than confluent-kafka: kcat 1.7.1 (librdkafka 2.0.2,
Debian's package) and the Java client (kafka-clients 4.1.1, tests/java), over each kind of
listener Kafka has: SSL with server authentication only, mTLS (`ssl.client.auth=required`,
the principal from the certificate's subject), and SASL_SSL with PLAIN, SCRAM-SHA-256,
SCRAM-SHA-512 and OAUTHBEARER. Each client produces records and reads them back as alice,
and (but on SSL, where nobody authenticates) the node audits alice's authentication. Each
refusal a client can express (a wrong password, which for SCRAM is a wrong proof; a broker
CA it does not trust; a certificate from a CA the node does not know; an expired
certificate; a token with a wrong `aud`, a wrong `iss`, an expired `exp`, `alg: none`) is
an authentication or SSL error for the client, with the text Kafka's brokers give, and an
`io.shale.audit.authentication` event with outcome "failed" and its reason in the node's
audit log (`audit.enable=true`). A SASL session that ends (`connections.max.reauth.ms`) is
renewed by the Java client (KIP-368) and cuts kcat off, whose librdkafka predates
re-authentication.

Four nodes serve the module (SSL, mTLS, SASL_SSL with all four mechanisms, SASL_SSL PLAIN
with 2-second sessions), none with an authorizer: this is about who a client is, not what it
may do. Certificates and TLS settings are test_security.py's; the JWKS and the signed tokens
are test_oauth.py's.

OAUTHBEARER: the clients get their token as they would in production, from the identity
provider's token endpoint (OAuth 2 client credentials grant, RFC 6749 §4.4), which the test
serves beside its JWKS; the client id names the token handed out (TOKENS).
- Java: `OAuthBearerLoginCallbackHandler` with `sasl.oauthbearer.token.endpoint.url` and
  `sasl.oauthbearer.client.credentials.client.id`/`.secret`; the JVM allows that URL with
  `-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls` (Kafka 4 allows none by default), and
  needs jose4j on its class path (kafka-clients does not bring it: tests/java/pom.xml).
- kcat cannot: Debian's librdkafka 2.0.2 is built without libcurl, so
  `sasl.oauthbearer.method=oidc` is refused, and kcat has no token callback. Its one token
  is librdkafka's own unsecured JWT (`enable.sasl.oauthbearer.unsecure.jwt`, `alg: none`),
  which is the alg-none case; the others are skipped (KCAT_HAS_NO_OIDC).
The token endpoint is plain http on 127.0.0.1; the JWKS the node fetches stays https.

The Java cases run in one JVM (tests/java AuthCases: a JVM with kafka-clients loaded takes
seconds to start), once for the module, the first time a Java test asks; each Java test then
reads its case's outcome, and finds its audit events by the case's time window.
"""

from __future__ import annotations

import base64
import collections
import datetime
import http.server
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import zipfile
from dataclasses import dataclass

import pytest

pytest.importorskip("confluent_kafka")

from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

import harness
import javaclients
from clients import admin, unique
from test_oauth import IdentityProvider, SigningKey, claims, oauth_settings
from test_security import MAPPING, pki, tls_settings  # noqa: F401

PLAIN_PASSWORD = "alice-plain-secret"
SCRAM_PASSWORD = "alice-scram-secret"
N = 5
VALUES = [f"v{i}" for i in range(N)]
SESSION_MS = 2000  # connections.max.reauth.ms of the `reauth` node

pytestmark = pytest.mark.skipif(harness.reference_broker(), reason="the audit log is Shale's")

needs_kcat = pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat not installed "
                                "(scripts/install-test-deps.sh installs Debian's)")

# The module's nodes, for the failure report (conftest attaches their logs' tails).
_NODES: list = []


@pytest.fixture(autouse=True)
def _report_module_nodes(request):
    request.node._shale_procs = _NODES


# ---- the identity provider's token endpoint ---------------------------------------------


# What the token endpoint hands out, by client id.
TOKENS = {
    "alice": lambda key: key.token(claims()),
    "wrong-aud": lambda key: key.token(claims(aud="not-kafka")),
    "wrong-iss": lambda key: key.token(claims(iss="https://elsewhere.test")),
    # Past the node's 30 s clock skew.
    "expired": lambda key: key.token(claims(life=-120)),
    # The header says `none` over a real signature: the Java client refuses a JWT without a
    # signature section itself ("Malformed JWT provided; expected three sections"), so the
    # node must refuse this one on its header alone.
    "alg-none": lambda key: key.token(claims(), header={"alg": "none", "typ": "JWT", "kid": key.kid}),
}
CLIENT_SECRET = "client-secret"


class TokenEndpoint:
    """POST /token with grant_type=client_credentials and the client's id and secret (HTTP
    Basic, or client_id/client_secret in the form, RFC 6749 §2.3.1): TOKENS[client id] as
    the access token."""

    def __init__(self, key: SigningKey):
        self.key = key
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                form = urllib.parse.parse_qs(body)
                client_id, secret = form.get("client_id", [None])[0], form.get("client_secret", [None])[0]
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
                    client_id, secret = urllib.parse.unquote(client_id), urllib.parse.unquote(secret)
                if self.path != "/token":
                    self.send_error(404)
                    return
                if form.get("grant_type") != ["client_credentials"] or secret != CLIENT_SECRET \
                        or client_id not in TOKENS:
                    self.send_error(400)
                    return
                out = json.dumps({"access_token": TOKENS[client_id](endpoint.key),
                                  "token_type": "Bearer", "expires_in": 600}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def idp(pki):  # noqa: F811
    """The JWKS (https, a certificate of the test CA) and, as `idp.tokens`, the token
    endpoint, signing with the JWKS's one key."""
    key = SigningKey("matrix-key-1")
    jwks = IdentityProvider(pki["broker"], [key])
    jwks.tokens = TokenEndpoint(key)
    yield jwks
    jwks.tokens.stop()
    jwks.stop()


# ---- nodes ------------------------------------------------------------------------------


@dataclass
class Nodes:
    ssl: harness.Shale
    mtls: harness.Shale
    sasl: harness.Shale
    reauth: harness.Shale


def plain_users(**users) -> str:
    return ("org.apache.kafka.common.security.plain.PlainLoginModule required "
            + " ".join(f'user_{u}="{p}"' for u, p in users.items()) + ";")


@pytest.fixture(scope="module")
def nodes(moto, tmp_path_factory, pki, idp):  # noqa: F811
    d = tmp_path_factory.mktemp("matrix")
    audited = {"audit.enable": "true"}
    ssl = harness.Shale(d / "ssl", moto=moto, name="ssl", protocol="SSL",
                        settings={**tls_settings(pki), **audited})
    mtls = harness.Shale(d / "mtls", moto=moto, name="mtls", protocol="SSL",
                         settings={**tls_settings(pki, "required"),
                                   "ssl.principal.mapping.rules": MAPPING, **audited})
    sasl = harness.Shale(d / "sasl", moto=moto, name="sasl", protocol="SASL_SSL", settings={
        **tls_settings(pki), **oauth_settings(pki, idp), **audited,
        "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512,OAUTHBEARER",
        "listener.name.sasl_ssl.plain.sasl.jaas.config": plain_users(alice=PLAIN_PASSWORD),
    })
    # The session log lines name each connection's port ("authenticated peer=..."): they
    # tell a re-authentication from a new connection.
    reauth = harness.Shale(d / "reauth", moto=moto, name="reauth", protocol="SASL_SSL", settings={
        **tls_settings(pki), **audited,
        "sasl.enabled.mechanisms": "PLAIN",
        "listener.name.sasl_ssl.plain.sasl.jaas.config": plain_users(alice=PLAIN_PASSWORD),
        "connections.max.reauth.ms": SESSION_MS,
    }, env={"SHALE_LOG": "info,shale_broker::session=debug"})
    all_nodes = [ssl, mtls, sasl, reauth]
    _NODES.extend(all_nodes)
    try:
        for n in all_nodes:
            n.start(wait=False)
        for n in all_nodes:
            n.wait_ready(60)
            n.audit_log = n.data_dir / "audit" / "audit.log"
        # alice's SCRAM credentials, set as PLAIN alice (no authorizer: anyone may), one
        # mechanism per request as Kafka takes them.
        a = admin(sasl.bootstrap, **sasl_login(pki, "PLAIN", PLAIN_PASSWORD).kcat)
        for m in (ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512):
            for f in a.alter_user_scram_credentials([UserScramCredentialUpsertion(
                    "alice", ScramCredentialInfo(m, 4096), SCRAM_PASSWORD.encode())]).values():
                f.result(30)
        yield Nodes(ssl, mtls, sasl, reauth)
    finally:
        for n in all_nodes:
            n.stop()


# ---- logins: what each client is given --------------------------------------------------


@dataclass
class Login:
    """One way of connecting: the node (a Nodes field), librdkafka's settings (None: kcat
    cannot, KCAT_HAS_NO_OIDC), the Java client's."""
    node: str
    kcat: dict | None
    java: dict


KCAT_HAS_NO_OIDC = (
    "kcat cannot fetch a token: Debian's librdkafka 2.0.2 is built without libcurl, so "
    "sasl.oauthbearer.method=oidc is refused ('not supported in this build: OAuth/OIDC depends on "
    "libcurl and OpenSSL which were not available at build time'), and kcat has no token "
    "callback; its only token is librdkafka's unsecured JWT (alg none: the alg-none case)")

# librdkafka's builtin token (RFC 7515 Appendix A.5): {"alg":"none"}, sub alice, an empty
# signature, no aud, no iss.
KCAT_UNSECURED_JWT = {"sasl.mechanism": "OAUTHBEARER", "enable.sasl.oauthbearer.unsecure.jwt": "true",
                      "sasl.oauthbearer.config": "principal=alice"}


def java_keystore(cert) -> str:
    """A PEM key store for the Java client: the key and the certificate in one file."""
    path = cert.cert.with_suffix(".keystore.pem")
    if not path.exists():
        path.write_text(cert.key.read_text() + cert.cert.read_text())
    return str(path)


def tls_login(pki, node: str, cert: str | None = None, ca=None) -> Login:  # noqa: F811
    """TLS trusting `ca` (the test CA by default), presenting pki[cert] if given."""
    ca = str(ca or pki["ca"].pem)
    kcat = {"security.protocol": "ssl", "ssl.ca.location": ca}
    java = {"security.protocol": "SSL", "ssl.truststore.type": "PEM", "ssl.truststore.location": ca}
    if cert is not None:
        kcat.update(pki[cert].properties())
        java.update({"ssl.keystore.type": "PEM", "ssl.keystore.location": java_keystore(pki[cert])})
    return Login(node, kcat, java)


def sasl_login(pki, mechanism: str, password: str, node: str = "sasl") -> Login:  # noqa: F811
    module = ("org.apache.kafka.common.security.plain.PlainLoginModule" if mechanism == "PLAIN"
              else "org.apache.kafka.common.security.scram.ScramLoginModule")
    return Login(node, {
        "security.protocol": "sasl_ssl", "ssl.ca.location": str(pki["ca"].pem),
        "sasl.mechanism": mechanism, "sasl.username": "alice", "sasl.password": password,
    }, {
        "security.protocol": "SASL_SSL", "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(pki["ca"].pem), "sasl.mechanism": mechanism,
        "sasl.jaas.config": f'{module} required username="alice" password="{password}";',
    })


def oauth_login(pki, idp, client_id: str, kcat: dict | None = None) -> Login:  # noqa: F811
    """The Java client fetching TOKENS[client_id] from the token endpoint; kcat with the
    OAUTHBEARER settings `kcat`, or not at all."""
    return Login("sasl", kcat and {
        "security.protocol": "sasl_ssl", "ssl.ca.location": str(pki["ca"].pem), **kcat,
    }, {
        "security.protocol": "SASL_SSL", "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(pki["ca"].pem), "sasl.mechanism": "OAUTHBEARER",
        "sasl.login.callback.handler.class":
            "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginCallbackHandler",
        "sasl.oauthbearer.token.endpoint.url": idp.tokens.url,
        "sasl.oauthbearer.client.credentials.client.id": client_id,
        "sasl.oauthbearer.client.credentials.client.secret": CLIENT_SECRET,
        "sasl.jaas.config": "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;",
    })


PROTOCOLS = ["SSL", "mTLS", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]


def good_login(protocol: str, pki, idp) -> tuple[Login, str | None]:  # noqa: F811
    """Alice's login over `protocol`, and the mechanism her audited authentication names."""
    return {
        # No client certificate, no authentication: ANONYMOUS, nothing audited.
        "SSL": (tls_login(pki, "ssl"), None),
        "mTLS": (tls_login(pki, "mtls", "alice"), "TLS"),
        "PLAIN": (sasl_login(pki, "PLAIN", PLAIN_PASSWORD), "PLAIN"),
        "SCRAM-SHA-256": (sasl_login(pki, "SCRAM-SHA-256", SCRAM_PASSWORD), "SCRAM-SHA-256"),
        "SCRAM-SHA-512": (sasl_login(pki, "SCRAM-SHA-512", SCRAM_PASSWORD), "SCRAM-SHA-512"),
        "OAUTHBEARER": (oauth_login(pki, idp, "alice"), "OAUTHBEARER"),
    }[protocol]


@dataclass
class Refusal:
    login: Login
    kcat_says: str    # in kcat's stderr (librdkafka's log line)
    java_raises: str  # the Java client's exception, or one of its causes: "Class: message" starts so
    mechanism: str    # of the audited failure
    reason: str       # in the audited failure's reason
    java_reason: str | None = None  # when the Java client's differs


SASL_FAILED = "org.apache.kafka.common.errors.SaslAuthenticationException: "
SSL_FAILED = "org.apache.kafka.common.errors.SslAuthenticationException: "
HANDSHAKE = "javax.net.ssl.SSLHandshakeException: "
INVALID_TOKEN = '{"status":"invalid_token"}'

REFUSALS = ["wrong PLAIN password", "wrong SCRAM-SHA-256 password (a wrong proof)",
            "wrong SCRAM-SHA-512 password (a wrong proof)", "a broker CA the client does not trust",
            "a client certificate from an unknown CA", "an expired client certificate",
            "a token with a wrong aud", "a token with a wrong iss", "an expired token",
            "a token with alg none"]


def refusal(case: str, pki, idp) -> Refusal:  # noqa: F811
    bad = "not-the-password"

    def scram(mechanism):
        # Kafka's message for a SCRAM failure, whatever went wrong.
        said = f"Authentication failed during authentication due to invalid credentials with SASL mechanism {mechanism}"
        return Refusal(sasl_login(pki, mechanism, bad), said, SASL_FAILED + said, mechanism,
                       "Invalid client credentials")

    def token(client_id, reason, kcat=None):
        return Refusal(oauth_login(pki, idp, client_id, kcat), f"SASL authentication error: {INVALID_TOKEN}",
                       SASL_FAILED + INVALID_TOKEN, "OAUTHBEARER", reason)

    plain_said = "Authentication failed: Invalid username or password"
    return {
        "wrong PLAIN password": Refusal(
            sasl_login(pki, "PLAIN", bad), f"SASL authentication error: {plain_said}", SASL_FAILED + plain_said,
            "PLAIN", "Invalid username or password"),
        "wrong SCRAM-SHA-256 password (a wrong proof)": scram("SCRAM-SHA-256"),
        "wrong SCRAM-SHA-512 password (a wrong proof)": scram("SCRAM-SHA-512"),
        # The client aborts the handshake; the node records the alert it got (OpenSSL's
        # unknown_ca, Java's certificate_unknown).
        "a broker CA the client does not trust": Refusal(
            tls_login(pki, "ssl", ca=pki["ca"].dir / "other" / "other-ca.pem"),
            "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed",
            HANDSHAKE + "PKIX path building failed", "TLS", "received fatal alert: UnknownCA",
            java_reason="received fatal alert: CertificateUnknown"),
        # The node names its CA in the handshake. kcat's OpenSSL sends the foreign certificate
        # anyway; the Java client (its key manager picks a certificate of a CA the node
        # names) sends none. Refused either way.
        "a client certificate from an unknown CA": Refusal(
            tls_login(pki, "mtls", "stranger"), "alert unknown ca",
            HANDSHAKE + "Received fatal alert: certificate_required", "TLS",
            "invalid peer certificate: UnknownIssuer", java_reason="peer sent no certificates"),
        "an expired client certificate": Refusal(
            tls_login(pki, "mtls", "expired"), "alert certificate expired",
            HANDSHAKE + "Received fatal alert: certificate_expired", "TLS",
            "invalid peer certificate: certificate expired"),
        "a token with a wrong aud": token("wrong-aud", "wrong audience"),
        "a token with a wrong iss": token("wrong-iss", "wrong issuer"),
        "an expired token": token("expired", "invalid token: expired"),
        "a token with alg none": token("alg-none", "refused signature algorithm: none", kcat=KCAT_UNSECURED_JWT),
    }[case]


def node_of(nodes: Nodes, login: Login) -> harness.Shale:
    return getattr(nodes, login.node)


# ---- the audit log ----------------------------------------------------------------------


def audit_events(node) -> list[dict]:
    if not node.audit_log.exists():
        return []
    return [json.loads(line) for line in node.audit_log.read_text().splitlines() if line.strip()]


def authentications(node, since: int = 0, window: tuple[float, float] | None = None) -> list[dict]:
    """The `data` of the node's authentication events from its `since`-th event on, and in
    `window` (wall-clock seconds) if given."""
    out = []
    for e in audit_events(node)[since:]:
        if e["type"] != "io.shale.audit.authentication":
            continue
        if window is not None:
            t = datetime.datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp()
            # The event's time is taken before the client hears the outcome; the slack is
            # the timestamps' rounding.
            if not window[0] - 0.01 <= t <= window[1] + 0.01:
                continue
        out.append(e["data"])
    return out


def wait_audited(node, pred, what: str, timeout: float = 10.0, **where) -> dict:
    """The first authentication event (`since`, `window` as for authentications()) `pred`
    holds for; fails after `timeout` seconds without one."""
    deadline = time.monotonic() + timeout
    while True:
        found = authentications(node, **where)
        for a in found:
            if pred(a):
                return a
        if time.monotonic() > deadline:
            raise AssertionError(f"no audited {what}; authentications there: {found}")
        time.sleep(0.2)


def audited_failure(node, mechanism: str, reason: str, **where) -> dict:
    return wait_audited(node, lambda a: a["outcome"] == "failed" and a["mechanism"] == mechanism
                        and reason in a.get("reason", ""),
                        f"failed {mechanism} authentication with {reason!r}", **where)


def audited_success(node, mechanism: str, **where) -> dict:
    return wait_audited(node, lambda a: a["outcome"] == "succeeded" and a["mechanism"] == mechanism,
                        f"succeeded {mechanism} authentication", **where)


def log_lines(node, window: tuple[float, float]) -> str:
    """The node's log lines stamped within `window` (wall-clock seconds)."""
    out = []
    for line in node.log.read_text(errors="replace").splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z ", line)
        if m:
            t = datetime.datetime.fromisoformat(m[1][:26]).replace(tzinfo=datetime.timezone.utc).timestamp()
            if window[0] <= t <= window[1]:
                out.append(line)
    return "\n".join(out)


# ---- kcat -------------------------------------------------------------------------------


def kcat(node, login: Login, *args, stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = ["kcat", "-b", node.bootstrap]
    for k, v in login.kcat.items():
        cmd += ["-X", f"{k}={v}"]
    return subprocess.run(cmd + list(args), input=stdin, capture_output=True, timeout=timeout)


@needs_kcat
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_kcat_produces_and_consumes_as_alice(nodes, pki, idp, protocol):  # noqa: F811
    login, mechanism = good_login(protocol, pki, idp)
    if login.kcat is None:
        pytest.skip(KCAT_HAS_NO_OIDC)
    node = node_of(nodes, login)
    since = len(audit_events(node))
    topic = unique("kcat")
    r = kcat(node, login, "-P", "-t", topic, "-p", "0", stdin="".join(v + "\n" for v in VALUES).encode())
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    r = kcat(node, login, "-C", "-t", topic, "-p", "0", "-o", "beginning", "-c", str(N), "-e", "-q")
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert r.stdout.decode().splitlines() == VALUES
    if mechanism is not None:
        assert audited_success(node, mechanism, since=since)["principal"] == "User:alice"


@needs_kcat
@pytest.mark.parametrize("case", REFUSALS)
def test_kcat_is_refused_and_the_node_audits_it(nodes, pki, idp, case):  # noqa: F811
    r = refusal(case, pki, idp)
    if r.login.kcat is None:
        pytest.skip(KCAT_HAS_NO_OIDC)
    node = node_of(nodes, r.login)
    since = len(audit_events(node))
    # Metadata for 5 s: long enough for the first connection's outcome.
    out = kcat(node, r.login, "-L", "-t", unique("kcat"), "-m", "5")
    err = out.stderr.decode()
    assert out.returncode != 0 and "Failed to acquire metadata" in err, err[-2000:]
    assert r.kcat_says in err, err[-2000:]
    audited_failure(node, r.mechanism, r.reason, since=since)


@needs_kcat
def test_kcat_is_cut_off_when_its_session_ends_and_the_node_audits_it(nodes, pki):  # noqa: F811
    """librdkafka 2.0.2 predates KIP-368 (re-authentication came in 2.2.0): it ignores the
    session lifetime SaslAuthenticate tells it, so the node closes its connection at its
    first request after the session ends, and kcat, its one broker down, gives up."""
    login = sasl_login(pki, "PLAIN", PLAIN_PASSWORD, node="reauth")
    node = nodes.reauth
    topic = unique("kcat-session")
    assert kcat(node, login, "-P", "-t", topic, "-p", "0", stdin=b"one\n").returncode == 0
    since, start = len(audit_events(node)), time.time()
    # A consumer that keeps fetching (no -e).
    r = kcat(node, login, "-C", "-t", topic, "-p", "0", "-o", "beginning", timeout=30)
    err = r.stderr.decode()
    assert r.returncode != 0 and r.stdout == b"one\n", err
    assert re.search(r"Disconnected \(after \d+ms in state UP\)", err), err
    assert "All broker connections are down" in err, err
    log = log_lines(node, (start, time.time()))
    assert re.search(r"SASL session expired .* principal=User:alice api=Fetch", log), log[-2000:]
    wait_audited(node, lambda a: a["mechanism"] == "PLAIN" and a["outcome"] != "succeeded"
                 and "expired" in a.get("reason", ""), "end of alice's session", timeout=3, since=since)


# ---- Java -------------------------------------------------------------------------------


STEADY_SECONDS = 5  # the re-authenticating producer's run: more than two sessions


def java_cases(pki, idp) -> list[tuple[str, str, Login, int]]:  # noqa: F811
    """Every Java case: (name, AuthCases action, login, N)."""
    cases = [(f"roundtrip {p}", "roundtrip", good_login(p, pki, idp)[0], N) for p in PROTOCOLS]
    cases += [(case, "refused", refusal(case, pki, idp).login, 1) for case in REFUSALS]
    cases += [("re-authentication", "steady", sasl_login(pki, "PLAIN", PLAIN_PASSWORD, node="reauth"),
               STEADY_SECONDS)]
    return cases


@pytest.fixture(scope="module")
def java_outcomes(nodes, pki, idp, java_cli, tmp_path_factory):  # noqa: F811
    """Every Java case, run once in one JVM: {name: its AuthCases line, with `window`, the
    case's (start, end) in wall-clock seconds}."""
    with zipfile.ZipFile(javaclients.JAVA_DIR / "target" / "shale-javatests.jar") as jar:
        if "shale/javatests/AuthCases.class" not in jar.namelist():
            pytest.skip("tests/java predates AuthCases: run scripts/install-test-deps.sh")
    d = tmp_path_factory.mktemp("java-matrix")
    lines = []
    for i, (name, action, login, n) in enumerate(java_cases(pki, idp)):
        props = d / f"case{i}.properties"
        settings = {"bootstrap.servers": node_of(nodes, login).bootstrap, "client.id": f"case{i}", **login.java}
        props.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        lines.append("\t".join([name, action, str(props), unique("java"), str(n)]))
    (d / "cases.tsv").write_text("\n".join(lines) + "\n")
    proc = javaclients.JavaProcess(
        ["java", "-Xmx512m", "-cp", java_cli.classpath,
         f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={idp.tokens.url}",
         "-Dorg.slf4j.simpleLogger.defaultLogLevel=info", "-Dorg.slf4j.simpleLogger.showDateTime=true",
         "shale.javatests.AuthCases", str(d / "cases.tsv")], d / "java-matrix.log")
    last = proc.wait(timeout=240)
    assert last.get("done") == len(lines), last
    outcomes = {}
    for o in proc.lines:
        if "case" in o:
            o["window"] = (o["start_ms"] / 1000, o["end_ms"] / 1000)
            outcomes[o["case"]] = o
    return outcomes


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_java_client_produces_and_consumes_as_alice(nodes, pki, idp, java_outcomes, protocol):  # noqa: F811
    o = java_outcomes[f"roundtrip {protocol}"]
    assert o["ok"] and o["values"] == VALUES, o
    login, mechanism = good_login(protocol, pki, idp)
    if mechanism is not None:
        assert audited_success(node_of(nodes, login), mechanism, window=o["window"])["principal"] == "User:alice"


@pytest.mark.parametrize("case", REFUSALS)
def test_the_java_client_is_refused_and_the_node_audits_it(nodes, pki, idp, java_outcomes, case):  # noqa: F811
    o = java_outcomes[case]
    assert o["ok"], o
    r = refusal(case, pki, idp)
    assert o["causes"][0].startswith(SASL_FAILED if r.mechanism != "TLS" else SSL_FAILED), o
    assert any(c.startswith(r.java_raises) for c in o["causes"]), o
    audited_failure(node_of(nodes, r.login), r.mechanism, r.java_reason or r.reason, window=o["window"])


def test_the_java_client_re_authenticates_before_its_session_ends(nodes, java_outcomes):
    """KIP-368: SaslAuthenticate tells the client its session lasts SESSION_MS; the Java
    client re-authenticates on the same connection in time, so a producer sending for more
    than two sessions has every record acknowledged, the node never closes an expired
    session, and each re-authentication is audited."""
    o = java_outcomes["re-authentication"]
    assert o["ok"] and o["values"], o
    log = log_lines(nodes.reauth, o["window"])
    assert "SASL session expired" not in log, log[-2000:]
    logins = re.findall(r"authenticated peer=(\S+) principal=User:alice", log)
    assert max(collections.Counter(logins).values()) >= 2, logins
    audited = [a for a in authentications(nodes.reauth, window=o["window"])
               if a["outcome"] == "succeeded" and a["principal"] == "User:alice"]
    assert len(audited) >= len(logins), (audited, logins)
