"""The admin HTTP port's security (`admin.http.ssl.*`, `admin.http.auth.*`): HTTPS only once
a certificate and key are set, client certificates checked against the admin truststore, a
bearer token on every request but the exempt paths, a verified certificate in place of the
token with `admin.http.auth.mtls`, and start-up refusing what does not load. `/metrics` never
carries a record's key or value, whoever may read it."""

from __future__ import annotations

import http.client
import socket
import ssl
import time
import uuid

import pytest

pytest.importorskip("confluent_kafka")

import certs
import harness
from clients import produce_all, producer, unique

REFUSED = "admin http request refused"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("admin-pki")
    ca = certs.CA(d)
    other = certs.CA(d / "other", name="Other CA")
    return {
        "ca": ca,
        "server": ca.issue("admin-server", "CN=localhost"),
        "ops": ca.issue("ops", "CN=ops"),
        "stranger": other.issue("stranger", "CN=ops"),
    }


@pytest.fixture
def token(tmp_path) -> tuple[str, str]:
    """A fresh token and the file holding it (with the newline an editor leaves)."""
    value = f"adm-{uuid.uuid4().hex}"
    path = tmp_path / "admin.token"
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value, str(path)


def https_settings(pki, port: int, **extra) -> dict:
    return {
        "admin.http.listener": f"127.0.0.1:{port}",
        "admin.http.ssl.certificate.location": str(pki["server"].cert),
        "admin.http.ssl.key.location": str(pki["server"].key),
        **extra,
    }


def context(pki, cert: str | None = None) -> ssl.SSLContext:
    """A client trusting the test CA, presenting `cert` when given."""
    ctx = ssl.create_default_context(cafile=str(pki["ca"].pem))
    if cert is not None:
        ctx.load_cert_chain(str(pki[cert].cert), str(pki[cert].key))
    return ctx


def get(port: int, path: str, ctx: ssl.SSLContext, authorization: str | None = None):
    """(status, headers, body) of GET `path` over HTTPS."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": authorization} if authorization else {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode()
    finally:
        conn.close()


def bearer(token: str) -> str:
    return f"Bearer {token}"


def wait_log(node, needle: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = node.log_tail(1000)
        if needle in text:
            return text
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} not in the broker's log:\n{node.log_tail(60)}")


def test_https_with_a_token_answers_only_requests_bearing_it(shale_factory, pki, token):
    value, path = token
    port = harness.free_port()
    node = shale_factory(https_settings(pki, port, **{"admin.http.auth.token.file": path}))
    ctx = context(pki)

    status, _, body = get(port, "/metrics", ctx, bearer(value))
    assert status == 200 and "shale_requests_total" in body
    assert get(port, "/ready", ctx, bearer(value))[:3:2] == (200, "ready\n")
    for authorization in (None, bearer(value + "x"), bearer(value[:-1]), f"Basic {value}"):
        status, headers, _ = get(port, "/metrics", ctx, authorization)
        assert status == 401, authorization
        assert headers["www-authenticate"].startswith("Bearer"), headers
    # Refused before routing: an unknown path tells a caller without the token nothing.
    assert get(port, "/nope", ctx)[0] == 401
    assert get(port, "/nope", ctx, bearer(value))[0] == 404

    log = wait_log(node, REFUSED)
    refused = [line for line in log.splitlines() if REFUSED in line]
    assert any("peer=127.0.0.1:" in line and 'path="/metrics"' in line for line in refused), refused
    assert value not in log and value[:-1] not in log


def test_exempt_paths_answer_probes_without_the_token(shale_factory, pki, token):
    value, path = token
    port = harness.free_port()
    shale_factory(https_settings(pki, port, **{"admin.http.auth.token.file": path,
                                               "admin.http.auth.exempt.paths": "/health"}))
    ctx = context(pki)
    assert get(port, "/health", ctx)[:3:2] == (200, "ok\n")
    assert get(port, "/ready", ctx)[0] == 401
    assert get(port, "/metrics", ctx)[0] == 401
    assert get(port, "/metrics", ctx, bearer(value))[0] == 200


def test_metrics_never_carry_a_record_key_or_value(shale_factory, pki, token):
    value, path = token
    port = harness.free_port()
    node = shale_factory(https_settings(pki, port, **{"admin.http.auth.token.file": path}))
    topic = unique("admin-metrics")
    key, record = f"key-{uuid.uuid4().hex}", f"value-{uuid.uuid4().hex}"
    produce_all(producer(node.bootstrap), topic, [{"key": key.encode(), "value": record.encode()}])

    status, _, text = get(port, "/metrics", context(pki), bearer(value))
    assert status == 200
    assert 'shale_requests_total{api="Produce"}' in text
    assert key not in text and record not in text and topic not in text


def test_plain_http_to_the_https_port_gets_no_http_answer(shale_factory, pki):
    port = harness.free_port()
    shale_factory(https_settings(pki, port))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        try:
            while chunk := s.recv(4096):
                data += chunk
        except ConnectionResetError:
            pass
    # At most a TLS alert record (content type 21), then the connection closes.
    assert data == b"" or data[0] == 0x15, data[:32]
    assert b"HTTP/" not in data and b"shale_" not in data
    # The port does serve HTTPS.
    assert get(port, "/health", context(pki))[0] == 200


def test_mtls_required_refuses_a_client_without_a_good_certificate_at_the_handshake(shale_factory, pki):
    port = harness.free_port()
    node = shale_factory(https_settings(pki, port, **{
        "admin.http.ssl.truststore.location": str(pki["ca"].pem),
        "admin.http.ssl.client.auth": "required",
        "admin.http.auth.mtls": "true",
    }))
    for cert in (None, "stranger"):
        # TLS 1.3: the server's verdict on the client's certificate arrives with the first read.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            get(port, "/health", context(pki, cert))
    wait_log(node, "admin http TLS handshake failed")

    status, _, body = get(port, "/metrics", context(pki, "ops"))
    assert status == 200 and "shale_requests_total" in body


def test_with_requested_client_auth_a_certificate_or_the_token_authorizes(shale_factory, pki, token):
    value, path = token
    port = harness.free_port()
    shale_factory(https_settings(pki, port, **{
        "admin.http.ssl.truststore.location": str(pki["ca"].pem),
        "admin.http.ssl.client.auth": "requested",
        "admin.http.auth.mtls": "true",
        "admin.http.auth.token.file": path,
    }))
    assert get(port, "/metrics", context(pki, "ops"))[0] == 200
    assert get(port, "/metrics", context(pki), bearer(value))[0] == 200
    assert get(port, "/metrics", context(pki))[0] == 401
    # A certificate from another CA still fails the handshake.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        get(port, "/metrics", context(pki, "stranger"), bearer(value))


@pytest.mark.parametrize("case", ["missing key file", "empty token file", "client auth without truststore"])
def test_start_up_stops_on_admin_security_that_does_not_load(shale_factory, pki, tmp_path, case):
    port = harness.free_port()
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    settings, setting = {
        "missing key file": (https_settings(pki, port, **{
            "admin.http.ssl.key.location": str(tmp_path / "no-such-key.pem")}),
            "admin.http.ssl.key.location"),
        "empty token file": (https_settings(pki, port, **{
            "admin.http.auth.token.file": str(empty)}),
            "admin.http.auth.token.file"),
        "client auth without truststore": (https_settings(pki, port, **{
            "admin.http.ssl.client.auth": "required"}),
            "admin.http.ssl.truststore.location"),
    }[case]
    node = shale_factory(settings, start=False)
    node.start(wait=False)
    rc = node.proc.wait(30)
    assert rc != 0
    log = node.log_tail(100)
    assert setting in log, log
    # Nothing was served: not the admin port, in plain HTTP or otherwise.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
