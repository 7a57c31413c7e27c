//! The admin HTTP port (`admin.http.listener`): what an operator's scraper and orchestrator
//! ask of a node.
//!
//! - `GET /metrics`: Prometheus text, rendered by `metrics-exporter-prometheus` from what the
//!   crates record through the `metrics` facade. Names and labels only: no record key, value
//!   or topic name ever becomes a label (tests/e2e/test_observability.py and
//!   test_admin_http_security.py produce records and look for them in the text).
//! - `GET /health`: 200 while the process runs (liveness).
//! - `GET /ready`: 200 once the node is registered, not fenced nor in doubt, and every
//!   partition it owns is open; 503 with the reason otherwise (readiness).
//!
//! Its security (`admin.http.ssl.*`, `admin.http.auth.*`, docs/security.md): HTTPS only once
//! a certificate and key are set, optionally asking for client certificates; and, per
//! request, a bearer token or (with `admin.http.auth.mtls`) a verified client certificate.
//! [`Auth::check`] is the whole per-request decision; it runs before routing, so a refused
//! caller learns nothing about which paths exist.

use anyhow::{Context, anyhow, bail};
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{Digest, SHA256, digest};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use shale_broker::Broker;
use shale_security::tls::{ClientAuth, ServerTls};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsAcceptor;

const CERT: &str = "admin.http.ssl.certificate.location";
const KEY: &str = "admin.http.ssl.key.location";
const TRUSTSTORE: &str = "admin.http.ssl.truststore.location";
const CLIENT_AUTH: &str = "admin.http.ssl.client.auth";
const TOKEN_FILE: &str = "admin.http.auth.token.file";
const EXEMPT_PATHS: &str = "admin.http.auth.exempt.paths";
const MTLS: &str = "admin.http.auth.mtls";

/// As the Kafka listeners': a client that connects and says nothing must not hold a task and
/// a socket for ever.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Latency buckets, seconds: sub-millisecond requests to multi-second stalls.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// WAL object sizes, bytes: 1 KiB to 64 MiB.
const FLUSH_BYTES: &[f64] = &[
    1024.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0,
];

/// Installs the process's metrics recorder. Call once, before anything records.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(SECONDS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full("shale_wal_flush_bytes".into()), FLUSH_BYTES)
        })
        .context("metrics buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    describe();
    Ok(handle)
}

/// The `# HELP` lines of the main series.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("shale_requests_total", "Kafka requests answered, by API");
    describe_histogram!(
        "shale_request_seconds",
        Unit::Seconds,
        "Kafka request latency, by API (a fetch's long poll included)"
    );
    describe_histogram!(
        "shale_wal_flush_bytes",
        Unit::Bytes,
        "Size of each WAL object"
    );
    describe_histogram!(
        "shale_wal_flush_seconds",
        Unit::Seconds,
        "WAL flush: buffer taken to appends acknowledged (PUT and metadata commit)"
    );
    describe_histogram!(
        "shale_wal_commit_seconds",
        Unit::Seconds,
        "Metadata commit of a WAL object"
    );
    describe_counter!(
        "shale_wal_flush_failures_total",
        "WAL objects that could not be written"
    );
    describe_counter!(
        "shale_object_requests_total",
        "Object store requests, by operation"
    );
    describe_counter!(
        "shale_object_errors_total",
        "Object store requests that failed, by operation"
    );
    describe_counter!(
        "shale_object_bytes_total",
        Unit::Bytes,
        "Object store bytes written (put) and read (get)"
    );
    describe_histogram!(
        "shale_object_request_seconds",
        Unit::Seconds,
        "Object store request latency, by operation"
    );
    describe_counter!(
        "shale_block_cache_hits_total",
        "Block cache lookups served from memory"
    );
    describe_counter!(
        "shale_block_cache_misses_total",
        "Block cache lookups fetched from the object store"
    );
    describe_counter!(
        "shale_log_cache_reads_total",
        "Reads of recent records, by whether the log cache held them"
    );
    describe_histogram!(
        "shale_metadata_write_seconds",
        Unit::Seconds,
        "Metadata (Raft) write latency: proposal to applied, forwarding included"
    );
    describe_counter!(
        "shale_metadata_write_errors_total",
        "Metadata writes that failed"
    );
    describe_gauge!(
        "shale_metadata_leader_id",
        "Node id of the metadata leader this node knows (-1: none)"
    );
    describe_gauge!(
        "shale_metadata_is_leader",
        "1 while this node leads the metadata quorum"
    );
    describe_gauge!("shale_metadata_term", "Raft term");
    describe_gauge!(
        "shale_metadata_applied_index",
        "Last metadata log index applied here"
    );
    describe_counter!(
        "shale_ownership_changes_total",
        "Partitions this node gained or lost"
    );
    describe_counter!(
        "shale_brokers_fenced_total",
        "Brokers fenced by this node as controller"
    );
    describe_counter!(
        "shale_partitions_moved_total",
        "Partitions moved by this node as controller"
    );
    describe_gauge!(
        "shale_owned_partitions_closed",
        "Partitions this node owns but has not open"
    );
}

/// The bound admin port with its security, built before anything is served.
pub struct AdminListener {
    tcp: tokio::net::TcpListener,
    /// `None`: plain HTTP (no certificate and key set).
    tls: Option<TlsAcceptor>,
    auth: Auth,
}

/// Reads the admin port's security settings (`get` looks a setting up, `None` when unset)
/// and binds `addr`. A setting that does not load stops start-up, naming it.
pub async fn bind(
    addr: &str,
    get: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<AdminListener> {
    let security = AdminSecurity::from_settings(get)?;
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding admin.http.listener {addr}"))?;
    tracing::info!(
        %addr,
        scheme = if security.tls.is_some() { "https" } else { "http" },
        client_auth = ?security.tls.as_ref().map_or(ClientAuth::None, |t| t.client_auth),
        token = security.auth.token.is_some(),
        mtls = security.auth.mtls,
        exempt = ?security.auth.exempt,
        "admin http port"
    );
    Ok(AdminListener {
        tcp,
        tls: security.tls.map(|t| TlsAcceptor::from(t.config)),
        auth: security.auth,
    })
}

/// What every connection of the admin port shares.
struct Shared {
    auth: Auth,
    metrics: PrometheusHandle,
    broker: Arc<Broker>,
}

/// Who is asking, as far as the connection tells.
#[derive(Clone, Copy)]
struct Peer {
    addr: SocketAddr,
    /// A client certificate was presented and chains to `admin.http.ssl.truststore.location`
    /// (rustls ends the handshake on one that does not, so presented means verified).
    verified_cert: bool,
}

/// Serves the admin port until the task is dropped.
pub async fn serve(listener: AdminListener, handle: PrometheusHandle, broker: Arc<Broker>) {
    // The exporter keeps histogram state until upkeep drains it.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let AdminListener { tcp, tls, auth } = listener;
    let shared = Arc::new(Shared {
        auth,
        metrics: handle,
        broker,
    });
    loop {
        let (socket, addr) = match tcp.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin http accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(connection(socket, addr, tls.clone(), shared.clone()));
    }
}

/// One connection: the TLS handshake when the port is HTTPS (no plain HTTP then: its bytes
/// fail the handshake), then HTTP/1.1.
async fn connection(
    socket: tokio::net::TcpStream,
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
) {
    let Some(acceptor) = tls else {
        let peer = Peer {
            addr,
            verified_cert: false,
        };
        return http(TokioIo::new(socket), peer, shared).await;
    };
    let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            // Plain HTTP, an untrusted or missing client certificate (when required) end here.
            tracing::info!(peer = %addr, error = %e, "admin http TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(peer = %addr, "admin http TLS handshake timed out");
            return;
        }
    };
    let verified_cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .is_some_and(|c| !c.is_empty());
    let peer = Peer {
        addr,
        verified_cert,
    };
    http(TokioIo::new(stream), peer, shared).await
}

async fn http<I>(io: I, peer: Peer, shared: Arc<Shared>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let r = respond(&req, peer, &shared);
        async move { Ok::<_, std::convert::Infallible>(r) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await
    {
        tracing::debug!(error = %e, "admin http connection ended");
    }
}

/// The request's authorization first, then its answer.
fn respond<B>(req: &Request<B>, peer: Peer, shared: &Shared) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let authorization = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
    if let Err(refusal) = shared.auth.check(path, authorization, peer.verified_cert) {
        // The path only: a query string could carry anything, a token pasted there included.
        tracing::warn!(
            peer = %peer.addr,
            path,
            reason = refusal.reason(),
            "admin http request refused"
        );
        return refusal.response();
    }
    answer(req, &shared.metrics, &shared.broker)
}

fn answer<B>(
    req: &Request<B>,
    metrics: &PrometheusHandle,
    broker: &Broker,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            // Refreshed here so a scrape sees the current value, not the last tick's.
            let _ = broker.readiness();
            let mut r = text(StatusCode::OK, metrics.render());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/health" => text(StatusCode::OK, "ok\n".into()),
        "/ready" => match broker.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /health, /ready\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

/// The admin port's settings, checked together.
struct AdminSecurity {
    tls: Option<ServerTls>,
    auth: Auth,
}

impl AdminSecurity {
    fn from_settings(get: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<AdminSecurity> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let client_auth: ClientAuth = match get(CLIENT_AUTH) {
            None => ClientAuth::None,
            Some(v) => v
                .parse()
                .map_err(|_| anyhow!("{CLIENT_AUTH}={v:?}: must be none, requested or required"))?,
        };
        let tls = tls(&get, client_auth)?;
        let mtls = match get(MTLS) {
            None => false,
            Some(v) => v
                .parse()
                .map_err(|_| anyhow!("{MTLS}={v:?}: must be true or false"))?,
        };
        if mtls && client_auth == ClientAuth::None {
            bail!(
                "{MTLS}=true needs {CLIENT_AUTH}=requested or required: no client certificate \
                 is asked for otherwise"
            );
        }
        let token = get(TOKEN_FILE).map(|path| read_token(&path)).transpose()?;
        let exempt = exempt_paths(&get(EXEMPT_PATHS).unwrap_or_default())?;
        Ok(AdminSecurity {
            tls,
            auth: Auth {
                token,
                mtls,
                exempt,
            },
        })
    }
}

/// HTTPS from the certificate, key and truststore files, loaded by shale-security as a Kafka
/// listener's `ssl.certificate.location`, `ssl.key.location` and `ssl.truststore.location`.
fn tls(
    get: &dyn Fn(&str) -> Option<String>,
    client_auth: ClientAuth,
) -> anyhow::Result<Option<ServerTls>> {
    let truststore = get(TRUSTSTORE);
    let (cert, key) = match (get(CERT), get(KEY)) {
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => bail!("{CERT} is set without {KEY}: HTTPS needs both"),
        (None, Some(_)) => bail!("{KEY} is set without {CERT}: HTTPS needs both"),
        (None, None) if client_auth != ClientAuth::None => {
            bail!("{CLIENT_AUTH} needs HTTPS: set {CERT} and {KEY}")
        }
        (None, None) if truststore.is_some() => {
            bail!("{TRUSTSTORE} is set but the admin port is plain HTTP: set {CERT} and {KEY}")
        }
        (None, None) => return Ok(None),
    };
    match (client_auth, &truststore) {
        (ClientAuth::None, Some(_)) => bail!(
            "{TRUSTSTORE} is set but {CLIENT_AUTH}=none: set it to requested or required, or \
             unset the truststore"
        ),
        (ClientAuth::Requested | ClientAuth::Required, None) => bail!(
            "{CLIENT_AUTH}=requested or required needs {TRUSTSTORE}, the CA bundle client \
             certificates must chain to"
        ),
        _ => {}
    }
    // Unreadable files are named here by the admin setting; tls.rs reports what is wrong
    // inside one under the listener name it was given.
    for (name, path) in [
        (CERT, Some(&cert)),
        (KEY, Some(&key)),
        (TRUSTSTORE, truststore.as_ref()),
    ] {
        if let Some(path) = path {
            std::fs::File::open(path).map_err(|e| anyhow!("{name}: cannot read {path}: {e}"))?;
        }
    }
    let client_auth_name = match client_auth {
        ClientAuth::None => "none",
        ClientAuth::Requested => "requested",
        ClientAuth::Required => "required",
    };
    let listener = |k: &str| match k {
        "ssl.certificate.location" => Some(cert.clone()),
        "ssl.key.location" => Some(key.clone()),
        "ssl.truststore.location" => truststore.clone(),
        "ssl.client.auth" => Some(client_auth_name.to_string()),
        _ => None,
    };
    ServerTls::from_settings(&listener)
        .map(Some)
        .map_err(|e| anyhow!("admin.http.ssl.* ({CERT}, {KEY}, {TRUSTSTORE}): {e}"))
}

fn read_token(path: &str) -> anyhow::Result<Digest> {
    let text = std::fs::read(path).map_err(|e| anyhow!("{TOKEN_FILE}: cannot read {path}: {e}"))?;
    // A trailing newline is how files end, not part of the token.
    let token = text.trim_ascii();
    if token.is_empty() {
        bail!("{TOKEN_FILE}: {path} is empty; it must hold the bearer token");
    }
    if !token.iter().all(u8::is_ascii_graphic) {
        bail!(
            "{TOKEN_FILE}: {path} must hold one token of visible ASCII characters (no spaces \
             or line breaks inside), as a bearer token is sent in a header"
        );
    }
    Ok(digest(&SHA256, token))
}

fn exempt_paths(list: &str) -> anyhow::Result<Vec<String>> {
    let paths: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(bad) = paths.iter().find(|p| !p.starts_with('/')) {
        bail!("{EXEMPT_PATHS}: {bad:?} is not a path (paths start with /, e.g. /health)");
    }
    Ok(paths)
}

/// Who may make a request of the admin port. Open (everything allowed, as before these
/// settings existed) unless a token or `admin.http.auth.mtls` is configured.
struct Auth {
    /// SHA-256 of the token: the token itself is not kept, and digests of equal length make
    /// the comparison independent of the given token's length.
    token: Option<Digest>,
    /// A verified client certificate authorizes a request in place of the token.
    mtls: bool,
    /// Paths served to anyone (exact matches): probes that cannot send a header.
    exempt: Vec<String>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No `Authorization: Bearer` header (and no certificate that would do).
    NoToken,
    WrongToken,
    /// Only a client certificate authorizes here (`mtls` without a token) and none came.
    NoCertificate,
}

impl Auth {
    fn check(
        &self,
        path: &str,
        authorization: Option<&[u8]>,
        verified_cert: bool,
    ) -> Result<(), Refusal> {
        let open = self.token.is_none() && !self.mtls;
        if open || self.exempt.iter().any(|p| p == path) || (self.mtls && verified_cert) {
            return Ok(());
        }
        let Some(expected) = &self.token else {
            return Err(Refusal::NoCertificate);
        };
        let given = authorization.and_then(bearer).ok_or(Refusal::NoToken)?;
        let given = digest(&SHA256, given);
        verify_slices_are_equal(given.as_ref(), expected.as_ref()).map_err(|_| Refusal::WrongToken)
    }
}

/// The token of `Bearer <token>` (RFC 6750; the scheme is case-insensitive, RFC 9110).
fn bearer(header: &[u8]) -> Option<&[u8]> {
    let space = header.iter().position(|&b| b == b' ')?;
    let (scheme, token) = header.split_at(space);
    let token = token.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"Bearer") && !token.is_empty()).then_some(token)
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::NoToken => "no bearer token",
            Refusal::WrongToken => "wrong bearer token",
            Refusal::NoCertificate => "no client certificate",
        }
    }

    fn response(self) -> Response<Full<Bytes>> {
        let challenge = match self {
            Refusal::NoToken => r#"Bearer realm="shale-admin""#,
            Refusal::WrongToken => r#"Bearer realm="shale-admin", error="invalid_token""#,
            Refusal::NoCertificate => {
                return text(
                    StatusCode::FORBIDDEN,
                    "a client certificate is required\n".into(),
                );
            }
        };
        let mut r = text(StatusCode::UNAUTHORIZED, "unauthorized\n".into());
        r.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const TOKEN: &str = "s3cr3t-t0ken";

    fn auth(token: Option<&str>, mtls: bool, exempt: &[&str]) -> Auth {
        Auth {
            token: token.map(|t| digest(&SHA256, t.as_bytes())),
            mtls,
            exempt: exempt.iter().map(|p| p.to_string()).collect(),
        }
    }

    fn bearer_header(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    #[test]
    fn the_right_bearer_token_is_allowed() {
        let a = auth(Some(TOKEN), false, &[]);
        assert_eq!(
            a.check("/metrics", Some(&bearer_header(TOKEN)), false),
            Ok(())
        );
        assert_eq!(
            a.check(
                "/metrics",
                Some(format!("bearer  {TOKEN}").as_bytes()),
                false
            ),
            Ok(())
        );
    }

    #[test]
    fn a_wrong_bearer_token_is_refused() {
        let a = auth(Some(TOKEN), false, &[]);
        for wrong in ["s3cr3t-t0ke", "s3cr3t-t0kenX", "S3CR3T-T0KEN", "x"] {
            assert_eq!(
                a.check("/metrics", Some(&bearer_header(wrong)), false),
                Err(Refusal::WrongToken),
                "{wrong}"
            );
        }
    }

    #[test]
    fn a_request_without_a_bearer_token_is_refused() {
        let a = auth(Some(TOKEN), false, &[]);
        assert_eq!(a.check("/metrics", None, false), Err(Refusal::NoToken));
        for header in [
            format!("Basic {TOKEN}"),
            "Bearer".into(),
            "Bearer   ".into(),
        ] {
            assert_eq!(
                a.check("/metrics", Some(header.as_bytes()), false),
                Err(Refusal::NoToken),
                "{header}"
            );
        }
    }

    #[test]
    fn exempt_paths_need_no_token_and_others_still_do() {
        let a = auth(Some(TOKEN), false, &["/health", "/ready"]);
        assert_eq!(a.check("/health", None, false), Ok(()));
        assert_eq!(a.check("/ready", None, false), Ok(()));
        assert_eq!(a.check("/metrics", None, false), Err(Refusal::NoToken));
        // Exact matches only.
        assert_eq!(a.check("/health/", None, false), Err(Refusal::NoToken));
        assert_eq!(a.check("/healthz", None, false), Err(Refusal::NoToken));
    }

    #[test]
    fn a_verified_client_certificate_stands_in_for_the_token_only_with_mtls() {
        let with = auth(Some(TOKEN), true, &[]);
        assert_eq!(with.check("/metrics", None, true), Ok(()));
        assert_eq!(with.check("/metrics", None, false), Err(Refusal::NoToken));
        assert_eq!(
            with.check("/metrics", Some(&bearer_header(TOKEN)), false),
            Ok(())
        );
        let without = auth(Some(TOKEN), false, &[]);
        assert_eq!(without.check("/metrics", None, true), Err(Refusal::NoToken));
    }

    #[test]
    fn with_mtls_and_no_token_only_a_certificate_authorizes() {
        let a = auth(None, true, &["/health"]);
        assert_eq!(a.check("/metrics", None, true), Ok(()));
        assert_eq!(
            a.check("/metrics", Some(&bearer_header(TOKEN)), false),
            Err(Refusal::NoCertificate)
        );
        assert_eq!(a.check("/health", None, false), Ok(()));
    }

    #[test]
    fn without_a_token_or_mtls_the_port_is_open() {
        assert_eq!(
            auth(None, false, &[]).check("/metrics", None, false),
            Ok(())
        );
    }

    #[test]
    fn refusals_answer_401_with_a_bearer_challenge_or_403_for_a_certificate() {
        for r in [Refusal::NoToken, Refusal::WrongToken] {
            let resp = r.response();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
            let challenge = resp.headers()[WWW_AUTHENTICATE].to_str().unwrap();
            assert!(challenge.starts_with("Bearer "), "{challenge}");
        }
        assert_eq!(
            Refusal::NoCertificate.response().status(),
            StatusCode::FORBIDDEN
        );
    }

    // ---- settings ----

    struct Files(tempfile::TempDir);

    impl Files {
        fn new() -> Files {
            let dir = Files(tempfile::tempdir().unwrap());
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            dir.write("cert.pem", &cert.pem());
            dir.write("key.pem", &key.serialize_pem());
            dir.write("token", &format!("{TOKEN}\n"));
            dir
        }

        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.0.path().join(name), text).unwrap();
        }

        fn path(&self, name: &str) -> String {
            self.0.path().join(name).display().to_string()
        }
    }

    fn load(pairs: &[(&str, String)]) -> anyhow::Result<AdminSecurity> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        AdminSecurity::from_settings(&|k| map.get(k).cloned())
    }

    fn refusal(pairs: &[(&str, String)]) -> String {
        match load(pairs) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn no_settings_leave_the_port_plain_and_open() {
        let s = load(&[]).unwrap();
        assert!(s.tls.is_none());
        assert!(s.auth.token.is_none() && !s.auth.mtls && s.auth.exempt.is_empty());
    }

    #[test]
    fn a_certificate_key_truststore_and_token_make_an_https_port_with_a_token() {
        let f = Files::new();
        let s = load(&[
            (CERT, f.path("cert.pem")),
            (KEY, f.path("key.pem")),
            (TRUSTSTORE, f.path("cert.pem")),
            (CLIENT_AUTH, "required".into()),
            (MTLS, "true".into()),
            (TOKEN_FILE, f.path("token")),
            (EXEMPT_PATHS, " /health, /ready ,".into()),
        ])
        .unwrap();
        assert_eq!(s.tls.unwrap().client_auth, ClientAuth::Required);
        assert!(s.auth.mtls);
        assert_eq!(s.auth.exempt, ["/health", "/ready"]);
        // The file's trailing newline is not part of the token.
        assert_eq!(
            s.auth.check("/metrics", Some(&bearer_header(TOKEN)), false),
            Ok(())
        );
    }

    #[test]
    fn a_key_without_a_certificate_or_the_reverse_stops_start_up() {
        let f = Files::new();
        assert!(refusal(&[(KEY, f.path("key.pem"))]).contains("set without"));
        assert!(refusal(&[(CERT, f.path("cert.pem"))]).contains("set without"));
    }

    #[test]
    fn a_file_that_does_not_load_stops_start_up_naming_its_setting() {
        let f = Files::new();
        let e = refusal(&[(CERT, f.path("cert.pem")), (KEY, f.path("missing.pem"))]);
        assert!(e.starts_with(KEY) && e.contains("missing.pem"), "{e}");
        let e = refusal(&[(CERT, f.path("key.pem")), (KEY, f.path("key.pem"))]);
        assert!(e.contains(CERT) && e.contains("no PEM certificate"), "{e}");
    }

    #[test]
    fn client_auth_without_a_truststore_or_https_stops_start_up() {
        let f = Files::new();
        let e = refusal(&[
            (CERT, f.path("cert.pem")),
            (KEY, f.path("key.pem")),
            (CLIENT_AUTH, "required".into()),
        ]);
        assert!(e.contains(TRUSTSTORE), "{e}");
        assert!(refusal(&[(CLIENT_AUTH, "requested".into())]).contains("needs HTTPS"));
        assert!(refusal(&[(CLIENT_AUTH, "maybe".into())]).contains("none, requested or required"));
        let e = refusal(&[
            (CERT, f.path("cert.pem")),
            (KEY, f.path("key.pem")),
            (TRUSTSTORE, f.path("cert.pem")),
        ]);
        assert!(e.contains("client.auth=none"), "{e}");
    }

    #[test]
    fn mtls_without_client_certificates_stops_start_up() {
        assert!(refusal(&[(MTLS, "true".into())]).contains(CLIENT_AUTH));
    }

    #[test]
    fn an_empty_or_unreadable_token_file_stops_start_up() {
        let f = Files::new();
        f.write("empty", " \n");
        f.write("two-words", "a b\n");
        assert!(refusal(&[(TOKEN_FILE, f.path("empty"))]).contains("is empty"));
        assert!(refusal(&[(TOKEN_FILE, f.path("absent"))]).contains("cannot read"));
        assert!(refusal(&[(TOKEN_FILE, f.path("two-words"))]).contains("visible ASCII"));
    }

    #[test]
    fn an_exempt_path_must_be_a_path() {
        assert!(refusal(&[(EXEMPT_PATHS, "health".into())]).contains("is not a path"));
    }
}
