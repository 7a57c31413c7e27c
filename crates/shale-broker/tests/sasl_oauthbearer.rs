//! SASL/OAUTHBEARER through a real broker: a SASL_PLAINTEXT listener configured from Kafka's
//! settings, its JWKS a local file, tokens signed here. What a client sees at each step is
//! Kafka's: the `invalid_token` challenge with error 0, then SASL_AUTHENTICATION_FAILED (58)
//! once the client acknowledges it; the session lasts as long as the token (KIP-368).

mod common;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use bytes::Bytes;
use common::{call, name};
use kafka_protocol::messages::*;
use serde_json::{Value, json};
use shale_broker::{Broker, BrokerConfig};
use shale_security::acl::AuthorizerConfig;
use shale_security::listener::{ListenerSecurity, SecurityProtocol};
use shale_security::principal::KafkaPrincipal;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "kafka";
const CHALLENGE: &str = r#"{"status":"invalid_token"}"#;
const SASL_AUTHENTICATION_FAILED: i16 = 58;
const ILLEGAL_SASL_STATE: i16 = 34;
const TOPIC_AUTHORIZATION_FAILED: i16 = 29;

/// A signing key of the identity provider, and its public JWK.
struct SigningKey {
    kid: &'static str,
    pair: EcdsaKeyPair,
}

impl SigningKey {
    fn generate(kid: &'static str) -> SigningKey {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        SigningKey { kid, pair }
    }

    fn jwk(&self) -> Value {
        // An uncompressed P-256 point: 0x04, x, y.
        let point = self.pair.public_key().as_ref();
        json!({
            "kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig", "alg": "ES256",
            "x": B64URL.encode(&point[1..33]), "y": B64URL.encode(&point[33..]),
        })
    }

    /// An ES256 JWS of `claims` under this key's kid.
    fn token(&self, claims: &Value) -> String {
        self.token_with_header(
            &json!({"alg": "ES256", "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }

    fn token_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let signature = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", B64URL.encode(signature.as_ref()))
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The claims of a good token for `sub` that expires in `life` seconds, with `changes`
/// applied.
fn claims(sub: &str, life: i64, changes: Value) -> Value {
    let now = unix_now();
    let mut claims =
        json!({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + life});
    for (k, v) in changes.as_object().unwrap() {
        claims[k] = v.clone();
    }
    claims
}

/// RFC 7628's initial response, as librdkafka and Kafka's Java client send it.
fn initial_response(token: &str) -> Bytes {
    Bytes::from(format!("n,,\x01auth=Bearer {token}\x01\x01"))
}

/// A broker whose SASL_PLAINTEXT listener enables OAUTHBEARER only, trusting `key` (through
/// a JWKS file), under `extra` settings. `User:alice` is a super user; nobody else is
/// granted anything.
struct Fixture {
    _dir: tempfile::TempDir,
    broker: Arc<Broker>,
    addr: std::net::SocketAddr,
    key: SigningKey,
}

impl Fixture {
    async fn start(extra: &[(&str, &str)]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate("idp-key-1");
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, json!({"keys": [key.jwk()]}).to_string()).unwrap();
        let mut settings: HashMap<String, String> = [
            ("sasl.enabled.mechanisms", "OAUTHBEARER".to_string()),
            (
                "listener.name.sasl_plaintext.oauthbearer.sasl.oauthbearer.jwks.endpoint.url",
                format!("file://{}", jwks.display()),
            ),
            ("sasl.oauthbearer.expected.audience", AUDIENCE.to_string()),
            ("sasl.oauthbearer.expected.issuer", ISSUER.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in extra {
            settings.insert(k.to_string(), v.to_string());
        }
        let get = |k: &str| settings.get(k).cloned();
        let mut security = ListenerSecurity::from_settings(
            "SASL_PLAINTEXT",
            SecurityProtocol::SaslPlaintext,
            &get,
        )
        .unwrap();
        security.connect_oauth().await.unwrap();

        let (broker, _) = common::start_broker(
            dir.path(),
            BrokerConfig {
                authorizer: Some(AuthorizerConfig {
                    super_users: [KafkaPrincipal::user("alice")].into(),
                    allow_if_no_acl: false,
                }),
                ..BrokerConfig::default()
            },
        )
        .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let b = broker.clone();
        let security = Arc::new(security);
        tokio::spawn(async move { b.serve_listener(listener, security).await });
        Fixture {
            _dir: dir,
            broker,
            addr,
            key,
        }
    }

    /// A connection after a successful OAUTHBEARER handshake.
    async fn handshaken(&self) -> TcpStream {
        let mut conn = TcpStream::connect(self.addr).await.unwrap();
        assert_eq!(handshake(&mut conn).await, (0, vec!["OAUTHBEARER".into()]));
        conn
    }
}

async fn handshake(conn: &mut TcpStream) -> (i16, Vec<String>) {
    let ResponseKind::SaslHandshake(r) = call(
        conn,
        ApiKey::SaslHandshake,
        1,
        RequestKind::SaslHandshake(
            SaslHandshakeRequest::default().with_mechanism(name("OAUTHBEARER")),
        ),
    )
    .await
    else {
        panic!("not a SaslHandshake response")
    };
    let mechanisms = r.mechanisms.iter().map(|m| m.to_string()).collect();
    (r.error_code, mechanisms)
}

async fn authenticate(conn: &mut TcpStream, message: Bytes) -> SaslAuthenticateResponse {
    let ResponseKind::SaslAuthenticate(r) = call(
        conn,
        ApiKey::SaslAuthenticate,
        2,
        RequestKind::SaslAuthenticate(SaslAuthenticateRequest::default().with_auth_bytes(message)),
    )
    .await
    else {
        panic!("not a SaslAuthenticate response")
    };
    r
}

/// CreateTopics' error for one topic: what the authorizer makes of the connection's
/// principal.
async fn create_topic(conn: &mut TcpStream, topic: &str) -> i16 {
    let t = create_topics_request::CreatableTopic::default()
        .with_name(TopicName(name(topic)))
        .with_num_partitions(1)
        .with_replication_factor(1);
    let ResponseKind::CreateTopics(r) = call(
        conn,
        ApiKey::CreateTopics,
        5,
        RequestKind::CreateTopics(
            CreateTopicsRequest::default()
                .with_topics(vec![t])
                .with_timeout_ms(10_000),
        ),
    )
    .await
    else {
        panic!("not a CreateTopics response")
    };
    r.topics[0].error_code
}

async fn metadata(conn: &mut TcpStream) -> ResponseKind {
    call(
        conn,
        ApiKey::Metadata,
        1,
        RequestKind::Metadata(MetadataRequest::default().with_topics(None)),
    )
    .await
}

async fn send_metadata(conn: &mut TcpStream) {
    use bytes::BufMut as _;
    use kafka_protocol::protocol::Encodable as _;
    use tokio::io::AsyncWriteExt as _;
    let mut buf = bytes::BytesMut::new();
    buf.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(ApiKey::Metadata as i16)
        .with_request_api_version(1)
        .with_correlation_id(9)
        .encode(&mut buf, ApiKey::Metadata.request_header_version(1))
        .unwrap();
    MetadataRequest::default()
        .with_topics(None)
        .encode(&mut buf, 1)
        .unwrap();
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    conn.write_all(&buf).await.unwrap();
}

async fn assert_closed(conn: &mut TcpStream) {
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut byte))
        .await
        .expect("the broker closes the connection");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the connection must be closed, got {read:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_authenticates_its_subject_for_the_token_s_life() {
    let f = Fixture::start(&[]).await;
    let mut conn = f.handshaken().await;
    let r = authenticate(
        &mut conn,
        initial_response(&f.key.token(&claims("alice", 600, json!({})))),
    )
    .await;
    assert_eq!(r.error_code, 0);
    assert!(r.auth_bytes.is_empty());
    // No connections.max.reauth.ms: the token's expiry is the session's (KIP-368).
    assert!(
        (590_000..=600_000).contains(&r.session_lifetime_ms),
        "session lifetime {}",
        r.session_lifetime_ms
    );
    // The principal is User:<sub>: alice is a super user here.
    assert_eq!(create_topic(&mut conn, "alices").await, 0);

    // Bob's equally valid token authenticates him, and he is granted nothing.
    let mut conn = f.handshaken().await;
    let r = authenticate(
        &mut conn,
        initial_response(&f.key.token(&claims("bob", 600, json!({})))),
    )
    .await;
    assert_eq!(r.error_code, 0);
    assert_eq!(
        create_topic(&mut conn, "bobs").await,
        TOPIC_AUTHORIZATION_FAILED
    );
    f.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_get_the_invalid_token_challenge_then_error_58() {
    let f = Fixture::start(&[]).await;
    let stranger = SigningKey::generate("idp-key-1");
    let unknown = SigningKey::generate("not-in-the-jwks");
    let good = || claims("alice", 600, json!({}));
    let unsigned = {
        let header =
            B64URL.encode(json!({"alg": "none", "typ": "JWT", "kid": "idp-key-1"}).to_string());
        let body = B64URL.encode(good().to_string());
        format!("{header}.{body}.")
    };
    let cases = [
        (
            "wrong audience",
            f.key
                .token(&claims("alice", 600, json!({"aud": "not-kafka"}))),
        ),
        (
            "wrong issuer",
            f.key.token(&claims(
                "alice",
                600,
                json!({"iss": "https://evil.example"}),
            )),
        ),
        // Past the 30 s default clock skew.
        ("expired", f.key.token(&claims("alice", -120, json!({})))),
        ("alg none", unsigned),
        (
            "signed by a key with the JWKS key's kid",
            stranger.token(&good()),
        ),
        (
            "signed by a key the JWKS does not have",
            unknown.token(&good()),
        ),
    ];
    for (case, token) in cases {
        let mut conn = f.handshaken().await;
        let r = authenticate(&mut conn, initial_response(&token)).await;
        // RFC 7628 §3.2.2 as Kafka answers it: the challenge, not yet an error.
        assert_eq!(r.error_code, 0, "{case}");
        assert_eq!(r.auth_bytes, CHALLENGE.as_bytes(), "{case}");
        // The client acknowledges with %x01; the exchange then fails with the challenge.
        let r = authenticate(&mut conn, Bytes::from_static(b"\x01")).await;
        assert_eq!(r.error_code, SASL_AUTHENTICATION_FAILED, "{case}");
        assert_eq!(r.error_message.as_deref(), Some(CHALLENGE), "{case}");
        assert_closed(&mut conn).await;
    }
    f.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_initial_response_or_a_retry_instead_of_the_acknowledgement_fails() {
    let f = Fixture::start(&[]).await;
    // Not RFC 7628: Kafka's generic answer, the details stay in the log.
    let mut conn = f.handshaken().await;
    let r = authenticate(&mut conn, Bytes::from_static(b"Bearer abc")).await;
    assert_eq!(r.error_code, SASL_AUTHENTICATION_FAILED);
    assert_eq!(
        r.error_message.as_deref(),
        Some(
            "Authentication failed during authentication due to invalid credentials with SASL \
             mechanism OAUTHBEARER"
        )
    );
    assert_closed(&mut conn).await;

    // After the challenge only %x01 may follow: a second token is out of place.
    let mut conn = f.handshaken().await;
    let expired = f.key.token(&claims("alice", -120, json!({})));
    assert_eq!(
        authenticate(&mut conn, initial_response(&expired))
            .await
            .error_code,
        0
    );
    let fresh = f.key.token(&claims("alice", 600, json!({})));
    let r = authenticate(&mut conn, initial_response(&fresh)).await;
    assert_eq!(r.error_code, ILLEGAL_SASL_STATE);
    assert_closed(&mut conn).await;
    f.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_max_reauth_ms_caps_the_session_below_the_token_s_life() {
    let f = Fixture::start(&[("connections.max.reauth.ms", "60000")]).await;
    let mut conn = f.handshaken().await;
    let r = authenticate(
        &mut conn,
        initial_response(&f.key.token(&claims("alice", 600, json!({})))),
    )
    .await;
    assert_eq!((r.error_code, r.session_lifetime_ms), (0, 60_000));
    // A token that expires sooner bounds it instead.
    let mut conn = f.handshaken().await;
    let r = authenticate(
        &mut conn,
        initial_response(&f.key.token(&claims("alice", 20, json!({})))),
    )
    .await;
    assert_eq!(r.error_code, 0);
    assert!(
        (15_000..=20_000).contains(&r.session_lifetime_ms),
        "session lifetime {}",
        r.session_lifetime_ms
    );
    f.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_authentication_renews_the_session_as_the_same_subject_only() {
    let f = Fixture::start(&[]).await;
    let mut conn = f.handshaken().await;
    let token = |sub: &str| initial_response(&f.key.token(&claims(sub, 600, json!({}))));
    assert_eq!(authenticate(&mut conn, token("alice")).await.error_code, 0);
    // The token's expiry makes the session re-authenticable even without
    // connections.max.reauth.ms: a fresh token renews it.
    assert_eq!(handshake(&mut conn).await.0, 0);
    let r = authenticate(&mut conn, token("alice")).await;
    assert_eq!(r.error_code, 0);
    assert!(r.session_lifetime_ms > 590_000);
    assert!(matches!(
        metadata(&mut conn).await,
        ResponseKind::Metadata(_)
    ));
    // Another subject on the same connection is refused (KIP-368).
    assert_eq!(handshake(&mut conn).await.0, 0);
    let r = authenticate(&mut conn, token("bob")).await;
    assert_eq!(r.error_code, SASL_AUTHENTICATION_FAILED);
    assert!(
        r.error_message
            .as_deref()
            .is_some_and(|m| m.contains("re-authentication as User:bob")),
        "{:?}",
        r.error_message
    );
    assert_closed(&mut conn).await;
    f.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_with_its_token_even_without_connections_max_reauth_ms() {
    let f = Fixture::start(&[]).await;
    let mut conn = f.handshaken().await;
    // Valid for two more seconds (well within the clock skew, which only widens acceptance).
    let r = authenticate(
        &mut conn,
        initial_response(&f.key.token(&claims("alice", 2, json!({})))),
    )
    .await;
    assert_eq!(r.error_code, 0);
    assert!(
        (1..=2_000).contains(&r.session_lifetime_ms),
        "session lifetime {}",
        r.session_lifetime_ms
    );
    assert!(matches!(
        metadata(&mut conn).await,
        ResponseKind::Metadata(_)
    ));
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    // The first request after expiry closes the connection unanswered.
    send_metadata(&mut conn).await;
    assert_closed(&mut conn).await;
    f.broker.shutdown().await;
}
