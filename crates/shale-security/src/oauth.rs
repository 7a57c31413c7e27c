//! SASL/OAUTHBEARER (RFC 7628) as Kafka's broker runs it with its OIDC validator
//! (`OAuthBearerSaslServer`, `OAuthBearerValidatorCallbackHandler`, `BrokerJwtValidator`): the
//! client presents a JWT access token from its identity provider, the broker checks the
//! signature against the provider's JWKS and the claims against its configuration, and the
//! token's subject becomes the principal, `User:<sub>`.
//!
//! Three pieces:
//! - [`OAuthBearerServer`], one exchange: the GS2 initial response, Kafka's `invalid_token`
//!   challenge and the client's `%x01` acknowledgement of it.
//! - [`JwtValidator`], the token checks. Signatures are verified by `jsonwebtoken` over aws-lc-rs
//!   (the provider rustls uses); claims are checked here, against the caller's clock.
//! - The JWKS cache inside the validator: fetched over HTTPS (or read from a `file:` URL) at
//!   start-up, refreshed every `sasl.oauthbearer.jwks.endpoint.refresh.ms`, and refreshed early
//!   — at a bounded rate — when a token names a key id it does not know (a key rotation).
//!
//! Validating a token whose key is cached does no I/O. Where Shale is stricter than Kafka (or
//! differs from it), the comment at the check says so.

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Map, Value};
use tokio::io::AsyncReadExt as _;
use tracing::{debug, info, warn};

use crate::principal::KafkaPrincipal;

/// The mechanism's name in SaslHandshake and `sasl.enabled.mechanisms`.
pub const MECHANISM: &str = "OAUTHBEARER";

/// Tokens longer than this are refused before they are parsed. Providers' access tokens are
/// 1-4 KiB; the bound keeps a hostile client from making the broker decode megabytes of JSON.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The whole initial response: the token, the GS2 header and the extensions.
const MAX_INITIAL_RESPONSE_BYTES: usize = MAX_TOKEN_BYTES + 4 * 1024;
/// A JWKS document larger than this is refused (a provider's is a few KiB).
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// One JWKS fetch (connect, TLS, request and body) that takes longer fails.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const JWKS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What Kafka's validator answers for any refused token (`OAuthBearerValidatorCallbackHandler`
/// sets status `invalid_token` and nothing else): the reason stays in the broker's log.
const INVALID_TOKEN_CHALLENGE: &str = r#"{"status":"invalid_token"}"#;
/// RFC 7628 §3.2.3: the client's answer to an error challenge, and the pair terminator.
const CONTROL_A: u8 = 0x01;
const SEPARATOR: char = '\u{1}';

// Configuration names: Kafka's `SaslConfigs`, except the two marked as Shale's.

/// Where the provider publishes its signing keys: `https://…`, or `file:` for a local JWKS.
pub const JWKS_ENDPOINT_URL: &str = "sasl.oauthbearer.jwks.endpoint.url";
/// Comma-separated; the token's `aud` must contain one of them.
pub const EXPECTED_AUDIENCE: &str = "sasl.oauthbearer.expected.audience";
/// The token's `iss` must be exactly this.
pub const EXPECTED_ISSUER: &str = "sasl.oauthbearer.expected.issuer";
pub const CLOCK_SKEW_SECONDS: &str = "sasl.oauthbearer.clock.skew.seconds";
pub const SUB_CLAIM_NAME: &str = "sasl.oauthbearer.sub.claim.name";
pub const SCOPE_CLAIM_NAME: &str = "sasl.oauthbearer.scope.claim.name";
pub const JWKS_REFRESH_MS: &str = "sasl.oauthbearer.jwks.endpoint.refresh.ms";
pub const JWKS_RETRY_BACKOFF_MS: &str = "sasl.oauthbearer.jwks.endpoint.retry.backoff.ms";
pub const JWKS_RETRY_BACKOFF_MAX_MS: &str = "sasl.oauthbearer.jwks.endpoint.retry.backoff.max.ms";
/// Shale's name for Kafka's `org.apache.kafka.sasl.oauthbearer.allowed.urls` system property.
pub const ALLOWED_URLS: &str = "sasl.oauthbearer.allowed.urls";
/// Shale's: a PEM file of CA certificates for the JWKS endpoint (else the platform's roots).
pub const JWKS_TRUSTSTORE_LOCATION: &str = "sasl.oauthbearer.jwks.endpoint.ssl.truststore.location";

const DEFAULT_CLOCK_SKEW_SECONDS: u64 = 30;
const DEFAULT_SUB_CLAIM_NAME: &str = "sub";
const DEFAULT_SCOPE_CLAIM_NAME: &str = "scope";
const DEFAULT_JWKS_REFRESH_MS: u64 = 3_600_000;
const DEFAULT_JWKS_RETRY_BACKOFF_MS: u64 = 100;
const DEFAULT_JWKS_RETRY_BACKOFF_MAX_MS: u64 = 10_000;

/// Why a token was refused. For the broker's log and the audit trail only: the client is told
/// `invalid_token` and nothing more, as in Kafka. No variant carries any part of the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("refused signature algorithm: {0}")]
    BadAlgorithm(&'static str),
    /// The key set has no key with the token's `kid`, even after the rate-limited refresh.
    #[error("no key in the JWKS has the token's key id")]
    UnknownKid,
    /// The token has no `kid` and the key set has no single key for its algorithm.
    #[error("the token has no key id and the JWKS has no single key for its algorithm")]
    NoKid,
    /// The key the `kid` names is of another type, curve or declared `alg` than the token's.
    #[error("the JWKS key named by the token's key id does not fit its algorithm")]
    KeyMismatch,
    #[error("bad signature")]
    BadSignature,
    #[error("expired")]
    Expired,
    /// The claim (`nbf` or `iat`) is later than now plus the clock skew.
    #[error("not yet valid: {0} is in the future")]
    NotYetValid(&'static str),
    #[error("wrong audience")]
    WrongAudience,
    #[error("wrong issuer")]
    WrongIssuer,
    /// Missing, or not of the claim's type. The name is a reserved claim or the configured one.
    #[error("missing or invalid claim {0:?}")]
    InvalidClaim(String),
}

impl TokenError {
    /// A short, stable keyword for metrics and the audit log.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::TooLarge | TokenError::Malformed(_) => "malformed",
            TokenError::BadAlgorithm(_) => "bad_alg",
            TokenError::UnknownKid | TokenError::NoKid => "unknown_kid",
            TokenError::KeyMismatch => "key_mismatch",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid(_) => "not_yet_valid",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::InvalidClaim(_) => "invalid_claim",
        }
    }
}

/// An exchange that failed. The `Display` text is what Kafka would tell the client for it;
/// [`OAuthError::is_client_visible`] says whether the client is told it at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    /// The initial response does not follow RFC 7628 as Kafka parses it (a `SaslException`).
    #[error("Invalid OAUTHBEARER client first message: {0}")]
    InvalidClientFirst(&'static str),
    /// The token was refused and the client acknowledged the challenge with `%x01`. Kafka fails
    /// the exchange with the challenge itself as the message, so that is the text here.
    #[error("{INVALID_TOKEN_CHALLENGE}")]
    InvalidToken(TokenError),
    /// The `a=` authorization id is not the token's principal. Kafka's message quotes both
    /// names; this one quotes neither, as they are client-supplied.
    #[error(
        "Authentication failed: Client requested an authorization id that is different from the token's principal name"
    )]
    AuthzIdMismatch,
    /// A message the exchange cannot take in its state (Kafka's `IllegalSaslStateException`).
    #[error("Unexpected message in OAUTHBEARER server state {0}")]
    IllegalState(&'static str),
}

impl OAuthError {
    /// Whether Kafka sends this error's message to the client. The refused token and the
    /// authorization id are `SaslAuthenticationException`s (their message goes out); for a
    /// malformed message `SaslServerAuthenticator` answers "Authentication failed during
    /// authentication due to invalid credentials with SASL mechanism OAUTHBEARER".
    pub fn is_client_visible(&self) -> bool {
        matches!(
            self,
            OAuthError::InvalidToken(_) | OAuthError::AuthzIdMismatch
        )
    }

    /// Kafka's `IllegalSaslStateException` (error code ILLEGAL_SASL_STATE).
    pub fn is_illegal_state(&self) -> bool {
        matches!(self, OAuthError::IllegalState(_))
    }

    /// What to log or audit: the token refusal's reason rather than the challenge text.
    pub fn reason(&self) -> String {
        match self {
            OAuthError::InvalidToken(e) => format!("invalid token: {e}"),
            other => other.to_string(),
        }
    }
}

/// A validated token: who it authenticates and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthBearerToken {
    /// `User:` and the subject claim (`sasl.oauthbearer.sub.claim.name`), trimmed as Kafka does.
    pub principal: KafkaPrincipal,
    /// The token's `exp`.
    pub expires_at: SystemTime,
    /// The token's `iat`.
    pub issued_at: SystemTime,
    /// The scope claim (`sasl.oauthbearer.scope.claim.name`); not used for authorization.
    pub scopes: BTreeSet<String>,
}

impl OAuthBearerToken {
    /// Kafka's `OAuthBearerToken.lifetimeMs()`: the expiry in milliseconds since the epoch.
    pub fn lifetime_ms(&self) -> u64 {
        let ms = self
            .expires_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    /// How long the session may last (KIP-368, `SaslServerAuthenticator`): until the token
    /// expires, and no longer than `connections.max.reauth.ms` when set. Zero for a token
    /// accepted within the clock skew after its `exp`: Kafka then expires the session at once,
    /// and so should the broker (the client must re-authenticate with a fresh token).
    pub fn session_lifetime(&self, now: SystemTime, max_reauth: Option<Duration>) -> Duration {
        let left = self.expires_at.duration_since(now).unwrap_or_default();
        max_reauth.map_or(left, |max| left.min(max))
    }
}

/// What [`OAuthBearerServer::step`] wants sent back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OAuthStep {
    /// Send these bytes as the SaslAuthenticate response and wait for the client's next
    /// message. Only the `invalid_token` challenge: the client must answer `%x01`.
    Continue(Vec<u8>),
    /// Authenticated: send an empty SaslAuthenticate response. The session lasts at most
    /// [`OAuthBearerToken::session_lifetime`].
    Done(OAuthBearerToken),
}

/// One server-side OAUTHBEARER exchange (one per SaslAuthenticate sequence, re-authentication
/// included).
///
/// Drive it with each client message: `Continue` means answer and wait, `Done` means the
/// client is authenticated, an error fails the exchange for good. A `step` whose future is
/// dropped (the connection went away) leaves the exchange failed.
#[derive(Debug)]
pub struct OAuthBearerServer {
    state: State,
}

#[derive(Debug)]
enum State {
    Initial,
    /// The `invalid_token` challenge went out; only `%x01` may follow.
    Challenged(TokenError),
    Complete,
    Failed,
}

impl Default for OAuthBearerServer {
    fn default() -> Self {
        Self::new()
    }
}

impl OAuthBearerServer {
    pub fn new() -> Self {
        OAuthBearerServer {
            state: State::Initial,
        }
    }

    /// True once the client is authenticated (and until a further `step`).
    pub fn is_complete(&self) -> bool {
        matches!(self.state, State::Complete)
    }

    /// Why the token was refused, while the challenge awaits the client's `%x01`: for the log
    /// line of a client that disconnects instead of answering.
    pub fn refusal(&self) -> Option<&TokenError> {
        match &self.state {
            State::Challenged(e) => Some(e),
            _ => None,
        }
    }

    /// Feeds one client message. `now` is the wall clock the token's times are checked
    /// against. The only await is a JWKS refresh for a token whose key id is not cached, and
    /// that is rate-limited (see [`JwtValidator::validate`]).
    pub async fn step(
        &mut self,
        message: &[u8],
        validator: &JwtValidator,
        now: SystemTime,
    ) -> Result<OAuthStep, OAuthError> {
        // Whatever happens below, a failure (or a dropped future) leaves the exchange failed.
        match std::mem::replace(&mut self.state, State::Failed) {
            State::Initial => {
                let first = InitialResponse::parse(message)?;
                let token = match validator.validate(first.token, now).await {
                    Ok(token) => token,
                    Err(refusal) => {
                        debug!(reason = %refusal, "OAUTHBEARER token refused");
                        self.state = State::Challenged(refusal);
                        return Ok(OAuthStep::Continue(INVALID_TOKEN_CHALLENGE.into()));
                    }
                };
                // The SASL authorization id is allowed but must be the token's principal.
                if first
                    .authzid
                    .is_some_and(|authzid| authzid != token.principal.name)
                {
                    return Err(OAuthError::AuthzIdMismatch);
                }
                self.state = State::Complete;
                Ok(OAuthStep::Done(token))
            }
            State::Challenged(refusal) if message == [CONTROL_A] => {
                Err(OAuthError::InvalidToken(refusal))
            }
            // Kafka would parse anything else as a fresh initial response; RFC 7628 §3.2.3
            // says the client MUST answer the error with %x01, and a retry belongs in a new
            // exchange, so this is refused.
            State::Challenged(_) => Err(OAuthError::IllegalState("CHALLENGED")),
            State::Complete => Err(OAuthError::IllegalState("COMPLETE")),
            State::Failed => Err(OAuthError::IllegalState("FAILED")),
        }
    }
}

/// The client's initial response, RFC 7628 §3.1 as Kafka's `OAuthBearerClientInitialResponse`
/// reads it: `n,[a=<saslname>],%x01auth=<scheme> <token>%x01[<key>=<value>%x01]*%x01`.
#[derive(Debug)]
struct InitialResponse<'a> {
    authzid: Option<String>,
    token: &'a str,
}

impl<'a> InitialResponse<'a> {
    fn parse(message: &'a [u8]) -> Result<Self, OAuthError> {
        let bad = OAuthError::InvalidClientFirst;
        if message.len() > MAX_INITIAL_RESPONSE_BYTES {
            return Err(bad("too large"));
        }
        // Every production of the grammar is ASCII.
        let message = std::str::from_utf8(message)
            .ok()
            .filter(|m| m.is_ascii())
            .ok_or(bad("not ASCII"))?;
        // Kafka takes only "n": no channel binding over SASL_SSL either.
        let rest = message
            .strip_prefix("n,")
            .ok_or(bad("the GS2 header must start with \"n,\""))?;
        let (authz, rest) = rest.split_once(',').ok_or(bad("incomplete GS2 header"))?;
        let authzid = match authz {
            "" => None,
            _ => Some(
                authz
                    .strip_prefix("a=")
                    .and_then(decode_saslname)
                    .ok_or(bad("invalid authorization id"))?,
            ),
        };
        let pairs = rest
            .strip_prefix(SEPARATOR)
            .ok_or(bad("no %x01 after the GS2 header"))?
            .strip_suffix(SEPARATOR)
            .ok_or(bad("not terminated by %x01"))?;
        if pairs.is_empty() {
            return Err(bad("'auth' not specified"));
        }
        // Each pair ends with its own %x01, before the final one.
        let pairs = pairs
            .strip_suffix(SEPARATOR)
            .ok_or(bad("not terminated by %x01"))?;

        let mut auth = None;
        let mut extensions = HashSet::new();
        for pair in pairs.split(SEPARATOR) {
            let (key, value) = pair.split_once('=').ok_or(bad("a pair without '='"))?;
            // RFC 7628 key = 1*ALPHA; Kafka's value = [\x21-\x7E \t\r\n]+.
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(bad("invalid extension name"));
            }
            let value_ok = |b: u8| matches!(b, 0x21..=0x7e | b' ' | b'\t' | b'\r' | b'\n');
            if value.is_empty() || !value.bytes().all(value_ok) {
                return Err(bad("invalid extension value"));
            }
            // A repeated key is refused (Kafka keeps the last): two `auth`s must not leave
            // the log and the validator looking at different tokens.
            if key == "auth" {
                if auth.replace(value).is_some() {
                    return Err(bad("'auth' given more than once"));
                }
            } else if !extensions.insert(key) {
                return Err(bad("an extension given more than once"));
            }
        }
        // Extensions are well-formed by now and otherwise ignored, as Kafka's validator
        // accepts any and nothing in Shale reads them.
        let auth = auth.ok_or(bad("'auth' not specified"))?;
        // Kafka's `(?<scheme>\w+) +(?<token>[-_.a-zA-Z0-9]+)`, the scheme case-insensitive.
        let (scheme, token) = auth.split_once(' ').ok_or(bad("invalid 'auth' format"))?;
        let token = token.trim_start_matches(' ');
        let scheme_ok = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let token_ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
        if scheme.is_empty()
            || !scheme.bytes().all(scheme_ok)
            || token.is_empty()
            || !token.bytes().all(token_ok)
        {
            return Err(bad("invalid 'auth' format"));
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(bad("invalid scheme (only Bearer)"));
        }
        Ok(InitialResponse { authzid, token })
    }
}

/// A GS2 saslname unescaped (RFC 5801: "=2C" is ',', "=3D" is '='; no other '=', no ',').
/// Kafka compares the escaped form with the principal; unescaping is the RFC's reading and
/// only matters for subjects holding ',' or '='.
fn decode_saslname(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        match c {
            '=' => match (chars.next(), chars.next()) {
                (Some('2'), Some('C')) => out.push(','),
                (Some('3'), Some('D')) => out.push('='),
                _ => return None,
            },
            ',' | '\0' => return None,
            c => out.push(c),
        }
    }
    (!out.is_empty()).then_some(out)
}

/// How claims are checked: Kafka's `BrokerJwtValidator` (jose4j underneath).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRules {
    /// `aud` must contain one of these. Empty: a token with any `aud` is refused (jose4j's
    /// rule, hence Kafka's; RFC 7519 §4.1.3: a recipient not named in `aud` must refuse).
    pub expected_audience: Vec<String>,
    /// `iss` must be exactly this; None: not checked.
    pub expected_issuer: Option<String>,
    /// Allowed difference between the provider's clock and ours, for `exp`, `nbf` and `iat`.
    pub clock_skew: Duration,
    /// The claim naming the principal.
    pub sub_claim_name: String,
    pub scope_claim_name: String,
}

impl Default for TokenRules {
    /// Kafka's defaults.
    fn default() -> Self {
        TokenRules {
            expected_audience: Vec::new(),
            expected_issuer: None,
            clock_skew: Duration::from_secs(DEFAULT_CLOCK_SKEW_SECONDS),
            sub_claim_name: DEFAULT_SUB_CLAIM_NAME.to_string(),
            scope_claim_name: DEFAULT_SCOPE_CLAIM_NAME.to_string(),
        }
    }
}

impl TokenRules {
    /// The claims of a token whose signature has been verified.
    fn check(
        &self,
        claims: &Map<String, Value>,
        now: SystemTime,
    ) -> Result<OAuthBearerToken, TokenError> {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let skew = i64::try_from(self.clock_skew.as_secs()).unwrap_or(i64::MAX);

        // jose4j: expired once now >= exp + skew; not yet valid while now + skew < nbf.
        let exp = numeric_date(claims, "exp")?.ok_or(claim("exp"))?;
        if now >= exp.saturating_add(skew) {
            return Err(TokenError::Expired);
        }
        if numeric_date(claims, "nbf")?.is_some_and(|nbf| now.saturating_add(skew) < nbf) {
            return Err(TokenError::NotYetValid("nbf"));
        }
        // Kafka requires iat; refusing one in the future (beyond the skew) is Shale's.
        let iat = numeric_date(claims, "iat")?.ok_or(claim("iat"))?;
        if now.saturating_add(skew) < iat {
            return Err(TokenError::NotYetValid("iat"));
        }

        if let Some(expected) = &self.expected_issuer {
            match claims.get("iss") {
                Some(Value::String(iss)) if iss == expected => {}
                _ => return Err(TokenError::WrongIssuer),
            }
        }

        let audience: Option<Vec<&str>> = match claims.get("aud") {
            None => None,
            Some(Value::String(aud)) => Some(vec![aud.as_str()]),
            Some(Value::Array(auds)) => Some(
                auds.iter()
                    .map(Value::as_str)
                    .collect::<Option<_>>()
                    .ok_or(claim("aud"))?,
            ),
            Some(_) => return Err(claim("aud")),
        };
        match audience {
            None if self.expected_audience.is_empty() => {}
            None => return Err(TokenError::WrongAudience),
            Some(auds) => {
                if !auds
                    .iter()
                    .any(|a| self.expected_audience.iter().any(|e| e == a))
                {
                    return Err(TokenError::WrongAudience);
                }
            }
        }

        let sub = match claims.get(&self.sub_claim_name) {
            Some(Value::String(sub)) if !sub.trim().is_empty() => sub.trim(),
            _ => return Err(claim(&self.sub_claim_name)),
        };
        let scopes = self.scopes(claims)?;

        Ok(OAuthBearerToken {
            principal: KafkaPrincipal::user(sub),
            expires_at: epoch_plus(exp).ok_or(claim("exp"))?,
            issued_at: epoch_plus(iat).ok_or(claim("iat"))?,
            scopes,
        })
    }

    /// Kafka's `validateClaimScopes`: each scope trimmed, none blank, no duplicates; no claim
    /// (or one of another type) is no scope. A string is split at spaces as RFC 6749 §3.3 and
    /// RFC 8693 §4.2 define it; Kafka takes the whole string as a single scope.
    fn scopes(&self, claims: &Map<String, Value>) -> Result<BTreeSet<String>, TokenError> {
        let items: Vec<&str> = match claims.get(&self.scope_claim_name) {
            Some(Value::String(s)) => s.split(' ').filter(|s| !s.is_empty()).collect(),
            Some(Value::Array(items)) => items
                .iter()
                .map(Value::as_str)
                .collect::<Option<_>>()
                .ok_or(claim(&self.scope_claim_name))?,
            _ => Vec::new(),
        };
        let mut scopes = BTreeSet::new();
        for scope in items {
            let scope = scope.trim();
            if scope.is_empty() || !scopes.insert(scope.to_string()) {
                return Err(claim(&self.scope_claim_name));
            }
        }
        Ok(scopes)
    }
}

fn claim(name: &str) -> TokenError {
    TokenError::InvalidClaim(name.to_string())
}

/// A NumericDate claim (RFC 7519 §2: seconds, possibly fractional), None when absent.
/// Negative values are refused, as Kafka refuses a negative `exp` or `iat`.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, TokenError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let seconds = value.as_i64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < i64::MAX as f64)
            .map(|f| f.floor() as i64)
    });
    match seconds {
        Some(s) if s >= 0 => Ok(Some(s)),
        _ => Err(claim(name)),
    }
}

fn epoch_plus(seconds: i64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_secs(u64::try_from(seconds).ok()?))
}

/// The signature algorithms a token may use: asymmetric ones only. `none` would let anyone
/// mint tokens; HMAC would make the *public* key set a shared secret (the classic confusion:
/// a token "signed" with the public key as HMAC key), so both are refused before any key is
/// looked at, whatever the key set holds.
fn allowed_algorithm(alg: &str) -> Result<Algorithm, TokenError> {
    Ok(match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "none" => return Err(TokenError::BadAlgorithm("none (an unsigned token)")),
        "HS256" | "HS384" | "HS512" => {
            return Err(TokenError::BadAlgorithm("HMAC (a symmetric algorithm)"));
        }
        _ => return Err(TokenError::BadAlgorithm("not supported")),
    })
}

/// A JWS in compact serialization, its header read and its signature not yet checked.
struct CompactJws<'a> {
    /// `header.payload` as sent: what the signature covers.
    signing_input: &'a str,
    payload: &'a str,
    signature: &'a str,
    alg: Algorithm,
    kid: Option<String>,
}

impl<'a> CompactJws<'a> {
    fn parse(token: &'a str) -> Result<Self, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed(
                "not a signed JWT (three dot-separated parts)",
            ));
        };
        let signing_input = token
            .get(..header.len() + 1 + payload.len())
            .ok_or(TokenError::Malformed("not a signed JWT"))?;
        let header = json_part(header, "the header is not base64url-encoded JSON")?;
        // The algorithm first: an unsigned `alg: none` token is refused as such.
        let alg = match header.get("alg") {
            Some(Value::String(alg)) => allowed_algorithm(alg)?,
            _ => return Err(TokenError::Malformed("no alg")),
        };
        // RFC 7515 §4.1.11: extensions marked critical must be understood; none are.
        if header.contains_key("crit") {
            return Err(TokenError::Malformed("critical header extensions"));
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => return Err(TokenError::Malformed("kid is not a string")),
        };
        if signature.is_empty() {
            return Err(TokenError::Malformed("no signature"));
        }
        Ok(CompactJws {
            signing_input,
            payload,
            signature,
            alg,
            kid,
        })
    }

    fn verify(&self, key: &VerificationKey) -> Result<(), TokenError> {
        let signature = B64URL
            .decode(self.signature)
            .map_err(|_| TokenError::Malformed("the signature is not base64url"))?;
        // aws-lc-rs's verifiers, named rather than through jsonwebtoken's process-wide default.
        let provider = &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER;
        let verifier = (provider.verifier_factory)(&self.alg, &key.key)
            .map_err(|_| TokenError::KeyMismatch)?;
        verifier
            .verify(self.signing_input.as_bytes(), &signature)
            .map_err(|_| TokenError::BadSignature)
    }

    fn claims(&self) -> Result<Map<String, Value>, TokenError> {
        json_part(self.payload, "the claims are not base64url-encoded JSON")
    }
}

/// A base64url (unpadded) JSON object. serde_json bounds nesting depth (128), and the token
/// bound caps the size.
fn json_part(part: &str, what: &'static str) -> Result<Map<String, Value>, TokenError> {
    let bytes = B64URL
        .decode(part)
        .map_err(|_| TokenError::Malformed(what))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(TokenError::Malformed(what)),
    }
}

/// The key types tokens can be checked with, each tied to its algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    fn for_algorithm(alg: Algorithm) -> Option<KeyKind> {
        match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => Some(KeyKind::Rsa),
            Algorithm::ES256 => Some(KeyKind::P256),
            Algorithm::ES384 => Some(KeyKind::P384),
            Algorithm::EdDSA => Some(KeyKind::Ed25519),
            _ => None,
        }
    }
}

/// One usable key of the JWKS.
struct VerificationKey {
    kid: Option<String>,
    /// The JWK's `alg`, when it declares one: then the token's must be the same.
    alg: Option<Algorithm>,
    kind: KeyKind,
    key: DecodingKey,
}

impl VerificationKey {
    /// The key if it can verify signatures, None for one to skip: symmetric (`oct`) keys,
    /// encryption keys, curves and algorithms without a verifier here, unparseable entries.
    /// RSA keys under 2048 bits load but never verify (aws-lc-rs's RSA_PKCS1_2048_8192_*).
    fn from_jwk(value: &Value) -> Option<VerificationKey> {
        let jwk: Jwk = serde_json::from_value(value.clone()).ok()?;
        let common = &jwk.common;
        if common
            .public_key_use
            .as_ref()
            .is_some_and(|u| *u != PublicKeyUse::Signature)
        {
            return None;
        }
        if common
            .key_operations
            .as_ref()
            .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
        {
            return None;
        }
        let alg = match common.key_algorithm {
            None => None,
            Some(alg) => Some(asymmetric_key_algorithm(alg)?),
        };
        let kind = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyKind::Rsa,
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => KeyKind::P256,
                EllipticCurve::P384 => KeyKind::P384,
                _ => return None,
            },
            AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
                EllipticCurve::Ed25519 => KeyKind::Ed25519,
                _ => return None,
            },
            // `oct` keys are HMAC secrets: they have no place in a public key set, and HS*
            // tokens are refused anyway.
            _ => return None,
        };
        if alg.is_some_and(|alg| KeyKind::for_algorithm(alg) != Some(kind)) {
            return None;
        }
        let key = DecodingKey::from_jwk(&jwk).ok()?;
        Some(VerificationKey {
            kid: common.key_id.clone(),
            alg,
            kind,
            key,
        })
    }

    fn fits(&self, alg: Algorithm) -> bool {
        self.alg.is_none_or(|own| own == alg) && KeyKind::for_algorithm(alg) == Some(self.kind)
    }
}

fn asymmetric_key_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The usable keys of one JWKS document.
#[derive(Default)]
struct KeySet {
    keys: Vec<VerificationKey>,
}

enum Selection<'a> {
    Found(&'a VerificationKey),
    /// No key has the token's `kid`: maybe a rotation we have not seen yet.
    Unknown,
    /// A key has the `kid` but not the token's algorithm. No refresh: the provider does not
    /// reuse key ids, and a refresh here would let anyone trigger them with a known kid.
    Mismatch,
    /// No `kid`, and not exactly one key for the algorithm.
    Ambiguous,
}

impl KeySet {
    fn parse(json: &[u8]) -> Result<KeySet, String> {
        let doc: Value =
            serde_json::from_slice(json).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
        let entries = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("the JWKS has no \"keys\" array")?;
        let keys: Vec<VerificationKey> = entries
            .iter()
            .filter_map(VerificationKey::from_jwk)
            .collect();
        if keys.len() < entries.len() {
            debug!(
                skipped = entries.len() - keys.len(),
                "JWKS entries that cannot verify signatures were skipped"
            );
        }
        Ok(KeySet { keys })
    }

    fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    fn select(&self, kid: Option<&str>, alg: Algorithm) -> Selection<'_> {
        match kid {
            Some(kid) => {
                let mut named = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .peekable();
                if named.peek().is_none() {
                    return Selection::Unknown;
                }
                named
                    .find(|k| k.fits(alg))
                    .map_or(Selection::Mismatch, Selection::Found)
            }
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => Selection::Found(key),
                    _ => Selection::Ambiguous,
                }
            }
        }
    }
}

/// How the JWKS is obtained and kept fresh.
#[derive(Debug, Clone)]
pub struct JwksConfig {
    pub source: JwksSource,
    /// `sasl.oauthbearer.jwks.endpoint.refresh.ms`.
    pub refresh_interval: Duration,
    /// `…retry.backoff.ms`: the first wait between failed fetches, and the window in which
    /// at most one unknown-kid refresh runs.
    pub retry_backoff: Duration,
    /// `…retry.backoff.max.ms`: the bound on the doubling of both.
    pub retry_backoff_max: Duration,
    /// CA certificates for the HTTPS endpoint; None: the platform's roots.
    pub trust_roots: Option<Vec<CertificateDer<'static>>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    Https(reqwest::Url),
    /// A local JWKS file (Kafka accepts `file:` URLs too); re-read at every refresh.
    File(PathBuf),
}

impl JwksSource {
    fn parse(url: &str) -> Result<JwksSource, String> {
        let key = JWKS_ENDPOINT_URL;
        let parsed =
            reqwest::Url::parse(url).map_err(|e| format!("{key}={url:?} is not a URL: {e}"))?;
        match parsed.scheme() {
            "https" => {
                if parsed.host_str().is_none_or(str::is_empty) {
                    return Err(format!("{key}={url:?} has no host"));
                }
                // They would end up in logs, and the endpoint is public anyway.
                if !parsed.username().is_empty() || parsed.password().is_some() {
                    return Err(format!("{key} must not carry credentials"));
                }
                Ok(JwksSource::Https(parsed))
            }
            "file" => parsed
                .to_file_path()
                .map(JwksSource::File)
                .map_err(|()| format!("{key}={url:?} is not a local file path")),
            // Kafka also takes http://; the key set decides who may authenticate, so Shale
            // takes it only over TLS.
            "http" => Err(format!(
                "{key}={url:?}: plain http is refused; the JWKS must come over https:// \
                 (or from a local file: URL)"
            )),
            other => Err(format!(
                "{key}={url:?}: scheme {other:?} is not supported (https:// or file:)"
            )),
        }
    }

    fn describe(&self) -> String {
        match self {
            JwksSource::Https(url) => url.to_string(),
            JwksSource::File(path) => path.display().to_string(),
        }
    }
}

/// A listener's OAUTHBEARER settings.
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    pub jwks: JwksConfig,
    pub rules: TokenRules,
}

impl OAuthConfig {
    /// Reads the settings under Kafka's names; None when `sasl.oauthbearer.jwks.endpoint.url`
    /// is not set. `get(key)` resolves a name (the caller applies `listener.name.<l>.`); each
    /// is looked up with Kafka's mechanism prefix `oauthbearer.` first, then bare. A CA file is
    /// read here, so a bad one stops start-up.
    pub fn from_settings(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<OAuthConfig>, String> {
        let get = |key: &str| {
            get(&format!("oauthbearer.{key}"))
                .or_else(|| get(key))
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let Some(url) = get(JWKS_ENDPOINT_URL) else {
            return Ok(None);
        };
        // Kafka's allow-list compares the URL exactly, as configured.
        if let Some(allowed) = get(ALLOWED_URLS)
            && !allowed.split(',').map(str::trim).any(|a| a == url)
        {
            return Err(format!(
                "{JWKS_ENDPOINT_URL}={url:?} is not in {ALLOWED_URLS} ({allowed:?})"
            ));
        }
        let source = JwksSource::parse(&url)?;
        let trust_roots = match get(JWKS_TRUSTSTORE_LOCATION) {
            None => None,
            Some(_) if matches!(source, JwksSource::File(_)) => {
                return Err(format!(
                    "{JWKS_TRUSTSTORE_LOCATION} is set but {JWKS_ENDPOINT_URL} is a file: URL"
                ));
            }
            Some(path) => Some(read_ca_file(&path)?),
        };
        let millis = |key: &str, default: u64| -> Result<Duration, String> {
            let ms = number(get(key), key, default)?;
            if ms == 0 {
                return Err(format!("{key} must be positive"));
            }
            Ok(Duration::from_millis(ms))
        };
        let refresh_interval = millis(JWKS_REFRESH_MS, DEFAULT_JWKS_REFRESH_MS)?;
        // Also the unknown-kid refresh window: zero would let every token trigger a fetch.
        let retry_backoff = millis(JWKS_RETRY_BACKOFF_MS, DEFAULT_JWKS_RETRY_BACKOFF_MS)?;
        let retry_backoff_max =
            millis(JWKS_RETRY_BACKOFF_MAX_MS, DEFAULT_JWKS_RETRY_BACKOFF_MAX_MS)?;
        if retry_backoff_max < retry_backoff {
            return Err(format!(
                "{JWKS_RETRY_BACKOFF_MAX_MS} must not be less than {JWKS_RETRY_BACKOFF_MS}"
            ));
        }
        let defaults = TokenRules::default();
        let rules = TokenRules {
            expected_audience: get(EXPECTED_AUDIENCE)
                .map(|list| {
                    list.split(',')
                        .map(str::trim)
                        .filter(|a| !a.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
            expected_issuer: get(EXPECTED_ISSUER),
            clock_skew: Duration::from_secs(number(
                get(CLOCK_SKEW_SECONDS),
                CLOCK_SKEW_SECONDS,
                DEFAULT_CLOCK_SKEW_SECONDS,
            )?),
            sub_claim_name: get(SUB_CLAIM_NAME).unwrap_or(defaults.sub_claim_name),
            scope_claim_name: get(SCOPE_CLAIM_NAME).unwrap_or(defaults.scope_claim_name),
        };
        Ok(Some(OAuthConfig {
            jwks: JwksConfig {
                source,
                refresh_interval,
                retry_backoff,
                retry_backoff_max,
                trust_roots,
            },
            rules,
        }))
    }
}

fn number(value: Option<String>, key: &str, default: u64) -> Result<u64, String> {
    match value {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|e| format!("{key}={v:?} is not a non-negative integer: {e}")),
    }
}

fn read_ca_file(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let key = JWKS_TRUSTSTORE_LOCATION;
    let pem = std::fs::read(path).map_err(|e| format!("{key}: cannot read {path}: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key}: {path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{key}: {path} holds no PEM certificate"));
    }
    Ok(certs)
}

/// Checks tokens against a key set and the [`TokenRules`]. Share one per listener (behind an
/// `Arc`): it owns the JWKS cache and, when built by [`JwtValidator::connect`], the task that
/// refreshes it, which stops when the validator is dropped.
pub struct JwtValidator {
    rules: TokenRules,
    keys: Arc<JwksCache>,
    refresher: Option<tokio::task::AbortHandle>,
}

impl std::fmt::Debug for JwtValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtValidator")
            .field("rules", &self.rules)
            .field(
                "jwks",
                &self.keys.fetcher.as_ref().map(|f| f.source.describe()),
            )
            .field("keys", &self.keys.current().keys.len())
            .finish()
    }
}

impl Drop for JwtValidator {
    fn drop(&mut self) {
        if let Some(task) = &self.refresher {
            task.abort();
        }
    }
}

impl JwtValidator {
    /// A validator over a fixed JWKS document, never refreshed: tests, and keys provisioned
    /// with the broker.
    pub fn with_static_jwks(rules: TokenRules, jwks_json: &str) -> Result<JwtValidator, String> {
        let keys = KeySet::parse(jwks_json.as_bytes())?;
        Ok(JwtValidator {
            rules,
            keys: Arc::new(JwksCache::new(keys, None, Duration::MAX, Duration::MAX)),
            refresher: None,
        })
    }

    /// Fetches the JWKS (retrying as a scheduled refresh does) and starts the task that
    /// refreshes it every `refresh_interval`. Fails, as Kafka's broker does at start-up, when
    /// no key set can be had. Must run inside a Tokio runtime.
    pub async fn connect(config: OAuthConfig) -> Result<JwtValidator, String> {
        let jwks = config.jwks;
        let fetcher = Fetcher::new(jwks.source, jwks.trust_roots)?;
        let cache = Arc::new(JwksCache::new(
            KeySet::default(),
            Some(fetcher),
            jwks.retry_backoff,
            jwks.retry_backoff_max,
        ));
        cache.refresh_with_retries().await?;
        let refresher = tokio::spawn(refresh_periodically(
            Arc::downgrade(&cache),
            jwks.refresh_interval,
        ))
        .abort_handle();
        Ok(JwtValidator {
            rules: config.rules,
            keys: cache,
            refresher: Some(refresher),
        })
    }

    pub fn rules(&self) -> &TokenRules {
        &self.rules
    }

    /// Validates one token at `now`, in Kafka's order of concerns: structure, algorithm, key,
    /// signature, then claims. A token whose `kid` is cached costs no I/O; an unknown `kid`
    /// awaits at most one JWKS refresh, and only when the rate limit allows one.
    pub async fn validate(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<OAuthBearerToken, TokenError> {
        let jws = CompactJws::parse(token)?;
        let mut keys = self.keys.current();
        if let (Selection::Unknown, Some(kid)) =
            (keys.select(jws.kid.as_deref(), jws.alg), &jws.kid)
        {
            keys = self.keys.refresh_for_unknown_kid(kid).await;
        }
        let key = match keys.select(jws.kid.as_deref(), jws.alg) {
            Selection::Found(key) => key,
            Selection::Unknown => return Err(TokenError::UnknownKid),
            Selection::Mismatch => return Err(TokenError::KeyMismatch),
            Selection::Ambiguous => return Err(TokenError::NoKid),
        };
        jws.verify(key)?;
        self.rules.check(&jws.claims()?, now)
    }
}

/// The current key set, and the means to replace it.
struct JwksCache {
    /// Readers clone the `Arc` and let go: validation never waits on a fetch.
    keys: RwLock<Arc<KeySet>>,
    /// None for a static key set.
    fetcher: Option<Fetcher>,
    /// Held across every fetch, so at most one is in flight; it also keeps the rate limit
    /// of the fetches that unknown key ids cause.
    limiter: tokio::sync::Mutex<RefreshLimiter>,
    retry_backoff: Duration,
    retry_backoff_max: Duration,
}

impl JwksCache {
    fn new(
        keys: KeySet,
        fetcher: Option<Fetcher>,
        retry_backoff: Duration,
        retry_backoff_max: Duration,
    ) -> JwksCache {
        JwksCache {
            keys: RwLock::new(Arc::new(keys)),
            fetcher,
            limiter: tokio::sync::Mutex::new(RefreshLimiter::new(retry_backoff, retry_backoff_max)),
            retry_backoff,
            retry_backoff_max,
        }
    }

    fn current(&self) -> Arc<KeySet> {
        // A writer cannot panic while holding the lock (it only swaps an Arc); if one ever
        // did, the set it left is still a whole set.
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn store(&self, keys: KeySet) {
        if keys.keys.is_empty() {
            warn!(
                "the JWKS has no key that can verify tokens: every OAUTHBEARER token will be refused"
            );
        }
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
    }

    /// A token named `kid` and no cached key has it. Kafka schedules a refresh per unknown kid
    /// (and refuses that token meanwhile); here the token waits for the refresh, so a client
    /// whose provider has just rotated keys gets in at the first try, but refreshes for unknown
    /// kids run at most once per window, the window doubling up to `retry.backoff.max.ms`, so
    /// that tokens with made-up kids cannot make the broker hammer the provider.
    async fn refresh_for_unknown_kid(&self, kid: &str) -> Arc<KeySet> {
        let Some(fetcher) = &self.fetcher else {
            return self.current();
        };
        let mut limiter = self.limiter.lock().await;
        // Another exchange's refresh may have brought the key while this one waited.
        let current = self.current();
        if current.has_kid(kid) {
            return current;
        }
        if !limiter.try_acquire(Instant::now()) {
            debug!("unknown key id: JWKS refresh skipped (rate-limited)");
            return current;
        }
        match fetcher.fetch().await {
            Ok(keys) => {
                if keys.has_kid(kid) {
                    // A real rotation: the next one need not wait a grown window.
                    limiter.reset();
                }
                info!(jwks = %fetcher.source.describe(), "JWKS refreshed for an unknown key id");
                self.store(keys);
            }
            Err(e) => warn!(jwks = %fetcher.source.describe(), "JWKS refresh failed: {e}"),
        }
        self.current()
    }

    /// A scheduled refresh, as Kafka's `RefreshingHttpsJwks` with its `Retry`: on failure,
    /// try again after `retry.backoff.ms`, doubling, until the waits would pass
    /// `retry.backoff.max.ms`; then keep the old key set until the next refresh.
    async fn refresh_with_retries(&self) -> Result<(), String> {
        let Some(fetcher) = &self.fetcher else {
            return Ok(());
        };
        let mut wait = self.retry_backoff;
        let mut waited = Duration::ZERO;
        loop {
            let result = {
                let _one_fetch_at_a_time = self.limiter.lock().await;
                fetcher.fetch().await
            };
            match result {
                Ok(keys) => {
                    debug!(jwks = %fetcher.source.describe(), keys = keys.keys.len(), "JWKS fetched");
                    self.store(keys);
                    return Ok(());
                }
                Err(e) if waited.saturating_add(wait) > self.retry_backoff_max => {
                    return Err(format!(
                        "cannot fetch the JWKS from {}: {e}",
                        fetcher.source.describe()
                    ));
                }
                Err(e) => {
                    warn!(jwks = %fetcher.source.describe(), retry_in = ?wait, "JWKS fetch failed: {e}");
                    tokio::time::sleep(wait).await;
                    waited = waited.saturating_add(wait);
                    wait = wait.saturating_mul(2);
                }
            }
        }
    }
}

async fn refresh_periodically(cache: std::sync::Weak<JwksCache>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(cache) = cache.upgrade() else {
            return;
        };
        if let Err(e) = cache.refresh_with_retries().await {
            warn!("{e}; keeping the previous key set");
        }
    }
}

/// At most one unknown-kid refresh per window. The window starts at `retry.backoff.ms` and
/// doubles with each refresh (up to `retry.backoff.max.ms`); it is back to the start after a
/// refresh that found its key, or after a quiet spell of a full window plus the maximum.
#[derive(Debug)]
struct RefreshLimiter {
    base: Duration,
    max: Duration,
    window: Duration,
    last: Option<Instant>,
}

impl RefreshLimiter {
    fn new(base: Duration, max: Duration) -> RefreshLimiter {
        RefreshLimiter {
            base,
            max,
            window: base,
            last: None,
        }
    }

    /// Whether a refresh may run at `now`; if it may, it counts as run.
    fn try_acquire(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let since = now.saturating_duration_since(last);
            if since < self.window {
                return false;
            }
            self.window = if since >= self.window.saturating_add(self.max) {
                self.base
            } else {
                self.window.saturating_mul(2).min(self.max)
            };
        }
        self.last = Some(now);
        true
    }

    fn reset(&mut self) {
        self.window = self.base;
    }
}

/// Where a key set comes from.
struct Fetcher {
    source: JwksSource,
    /// Set for an HTTPS source.
    client: Option<reqwest::Client>,
}

impl Fetcher {
    fn new(
        source: JwksSource,
        trust_roots: Option<Vec<CertificateDer<'static>>>,
    ) -> Result<Fetcher, String> {
        let client = match &source {
            JwksSource::File(_) => None,
            JwksSource::Https(_) => {
                let mut builder = reqwest::Client::builder()
                    .https_only(true)
                    // A redirect could leave the allow-list (or TLS); providers serve the
                    // JWKS where their discovery document says.
                    .redirect(reqwest::redirect::Policy::none())
                    // No proxy from the environment: the fetch that decides who may
                    // authenticate goes straight to the configured endpoint.
                    .no_proxy()
                    .connect_timeout(JWKS_CONNECT_TIMEOUT)
                    .timeout(JWKS_FETCH_TIMEOUT);
                if let Some(roots) = trust_roots {
                    let roots = roots
                        .iter()
                        .map(|der| reqwest::Certificate::from_der(der))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| format!("{JWKS_TRUSTSTORE_LOCATION}: {e}"))?;
                    builder = builder.tls_certs_only(roots);
                }
                Some(
                    builder
                        .build()
                        .map_err(|e| format!("the JWKS HTTPS client: {e}"))?,
                )
            }
        };
        Ok(Fetcher { source, client })
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let body = match (&self.source, &self.client) {
            (JwksSource::Https(url), Some(client)) => fetch_https(client, url).await?,
            (JwksSource::File(path), _) => read_file(path).await?,
            (JwksSource::Https(_), None) => return Err("no HTTPS client".to_string()),
        };
        KeySet::parse(&body)
    }
}

async fn fetch_https(client: &reqwest::Client, url: &reqwest::Url) -> Result<Vec<u8>, String> {
    let mut response = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("GET: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("GET: HTTP {status}"));
    }
    let too_large = || format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes");
    if response
        .content_length()
        .is_some_and(|len| len > MAX_JWKS_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("GET: {e}"))? {
        if body.len().saturating_add(chunk.len()) > MAX_JWKS_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn read_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut body = Vec::new();
    file.take(MAX_JWKS_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if body.len() > MAX_JWKS_BYTES {
        return Err(format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes"));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::hmac;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
        EcdsaSigningAlgorithm, Ed25519KeyPair, KeyPair as _, RSA_PKCS1_SHA256, RSA_PSS_SHA256,
        RsaKeyPair, RsaPublicKeyComponents,
    };
    use serde_json::json;
    use std::collections::HashMap;
    use std::sync::LazyLock;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt as _;

    const ISSUER: &str = "https://idp.example";
    const AUDIENCE: &str = "kafka";
    /// The tests' wall clock, in seconds: tokens are minted around it.
    const NOW: i64 = 1_700_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW as u64)
    }

    fn b64(bytes: impl AsRef<[u8]>) -> String {
        B64URL.encode(bytes)
    }

    /// RSA key generation is slow without optimizations: one key for every test.
    static RSA: LazyLock<RsaKeyPair> =
        LazyLock::new(|| RsaKeyPair::generate(KeySize::Rsa2048).unwrap());

    enum Signer {
        Ec(EcdsaKeyPair),
        Rsa(&'static RsaKeyPair),
        Ed(Ed25519KeyPair),
    }

    /// One of the provider's signing keys and its public JWK.
    struct TestKey {
        kid: &'static str,
        alg: &'static str,
        signer: Signer,
        jwk: Value,
    }

    impl TestKey {
        fn ec(kid: &'static str, curve: &'static EcdsaSigningAlgorithm) -> TestKey {
            let (crv, alg, half) = if std::ptr::eq(curve, &ECDSA_P256_SHA256_FIXED_SIGNING) {
                ("P-256", "ES256", 32)
            } else {
                ("P-384", "ES384", 48)
            };
            let pair = EcdsaKeyPair::generate(curve).unwrap();
            // An uncompressed point: 0x04, then x, then y.
            let point = pair.public_key().as_ref().to_vec();
            let jwk = json!({
                "kty": "EC", "crv": crv, "kid": kid, "use": "sig", "alg": alg,
                "x": b64(&point[1..1 + half]), "y": b64(&point[1 + half..]),
            });
            TestKey {
                kid,
                alg,
                signer: Signer::Ec(pair),
                jwk,
            }
        }

        fn p256(kid: &'static str) -> TestKey {
            TestKey::ec(kid, &ECDSA_P256_SHA256_FIXED_SIGNING)
        }

        /// An RSA key whose JWK declares no `alg`: it serves RS256 and PS256 alike.
        fn rsa(kid: &'static str) -> TestKey {
            let public = RsaPublicKeyComponents::<Vec<u8>>::from(RSA.public_key());
            TestKey {
                kid,
                alg: "RS256",
                signer: Signer::Rsa(&RSA),
                jwk: json!({"kty": "RSA", "kid": kid, "n": b64(&public.n), "e": b64(&public.e)}),
            }
        }

        fn ed25519(kid: &'static str) -> TestKey {
            let pair = Ed25519KeyPair::generate().unwrap();
            let jwk = json!({
                "kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(pair.public_key().as_ref()),
            });
            TestKey {
                kid,
                alg: "EdDSA",
                signer: Signer::Ed(pair),
                jwk,
            }
        }

        fn sign(&self, alg: &str, input: &[u8]) -> Vec<u8> {
            let rng = SystemRandom::new();
            match &self.signer {
                Signer::Ec(pair) => pair.sign(&rng, input).unwrap().as_ref().to_vec(),
                Signer::Rsa(pair) => {
                    let padding = if alg == "PS256" {
                        &RSA_PSS_SHA256
                    } else {
                        &RSA_PKCS1_SHA256
                    };
                    let mut signature = vec![0; pair.public_modulus_len()];
                    pair.sign(padding, &rng, input, &mut signature).unwrap();
                    signature
                }
                Signer::Ed(pair) => pair.sign(input).as_ref().to_vec(),
            }
        }

        /// A token with this key's kid and algorithm.
        fn token(&self, claims: &Value) -> String {
            self.token_with(
                &json!({"alg": self.alg, "kid": self.kid, "typ": "JWT"}),
                claims,
            )
        }

        /// A token with `header` as given, signed by this key with the header's algorithm.
        fn token_with(&self, header: &Value, claims: &Value) -> String {
            let alg = header["alg"].as_str().unwrap_or(self.alg);
            jwt(header, claims, |input| self.sign(alg, input))
        }
    }

    fn jwt(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
        let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
        let signature = sign(input.as_bytes());
        format!("{input}.{}", b64(signature))
    }

    /// The claims of a good token, with `changes` applied (a null removes the claim).
    fn claims(changes: Value) -> Value {
        let mut claims = json!({
            "sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "iat": NOW, "exp": NOW + 600,
        });
        for (name, value) in changes.as_object().unwrap() {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(name);
            } else {
                claims[name] = value.clone();
            }
        }
        claims
    }

    fn rules() -> TokenRules {
        TokenRules {
            expected_audience: vec![AUDIENCE.to_string()],
            expected_issuer: Some(ISSUER.to_string()),
            ..TokenRules::default()
        }
    }

    fn jwks(keys: &[&TestKey]) -> String {
        json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
    }

    fn validator_with(rules: TokenRules, keys: &[&TestKey]) -> JwtValidator {
        JwtValidator::with_static_jwks(rules, &jwks(keys)).unwrap()
    }

    fn validator(keys: &[&TestKey]) -> JwtValidator {
        validator_with(rules(), keys)
    }

    fn first(token: &str) -> Vec<u8> {
        format!("n,,\u{1}auth=Bearer {token}\u{1}\u{1}").into_bytes()
    }

    async fn refusal(v: &JwtValidator, token: &str) -> TokenError {
        v.validate(token, now()).await.unwrap_err()
    }

    async fn exchange(v: &JwtValidator, message: &[u8]) -> Result<OAuthStep, OAuthError> {
        OAuthBearerServer::new().step(message, v, now()).await
    }

    // --- The exchange (OAuthBearerSaslServer) ---

    #[tokio::test]
    async fn a_valid_token_authenticates_its_subject_until_its_expiry() {
        let key = TestKey::p256("k1");
        let v = validator(&[&key]);
        let mut server = OAuthBearerServer::new();
        let step = server
            .step(&first(&key.token(&claims(json!({})))), &v, now())
            .await
            .unwrap();
        let OAuthStep::Done(token) = step else {
            panic!("not authenticated: {step:?}");
        };
        assert!(server.is_complete());
        assert_eq!(token.principal, KafkaPrincipal::user("alice"));
        assert_eq!(token.principal.to_string(), "User:alice");
        assert_eq!(token.expires_at, now() + Duration::from_secs(600));
        assert_eq!(token.lifetime_ms(), (NOW as u64 + 600) * 1000);
        assert_eq!(token.issued_at, now());
    }

    #[tokio::test]
    async fn a_refused_token_gets_the_invalid_token_challenge_then_fails_on_control_a() {
        let key = TestKey::p256("k1");
        let v = validator(&[&key]);
        let token = key.token(&claims(json!({"exp": NOW - 3600})));
        let mut server = OAuthBearerServer::new();
        let step = server.step(&first(&token), &v, now()).await.unwrap();
        // Kafka's challenge: the status and nothing else, nothing of the token.
        assert_eq!(
            step,
            OAuthStep::Continue(br#"{"status":"invalid_token"}"#.to_vec())
        );
        assert_eq!(server.refusal(), Some(&TokenError::Expired));
        assert!(!server.is_complete());

        let err = server.step(b"\x01", &v, now()).await.unwrap_err();
        assert_eq!(err, OAuthError::InvalidToken(TokenError::Expired));
        // The client sees the challenge again as the failure message; the log sees why.
        assert!(err.is_client_visible());
        assert_eq!(err.to_string(), r#"{"status":"invalid_token"}"#);
        assert_eq!(err.reason(), "invalid token: expired");
        assert!(!err.reason().contains(&token));
        assert_eq!(
            server.step(b"\x01", &v, now()).await,
            Err(OAuthError::IllegalState("FAILED"))
        );
    }

    #[tokio::test]
    async fn after_the_challenge_anything_but_control_a_is_an_illegal_state() {
        let key = TestKey::p256("k1");
        let v = validator(&[&key]);
        let expired = key.token(&claims(json!({"exp": NOW - 3600})));
        let good = first(&key.token(&claims(json!({}))));
        for answer in [&b"\x01\x01"[..], b"", b"x", &good] {
            let mut server = OAuthBearerServer::new();
            let step = server.step(&first(&expired), &v, now()).await.unwrap();
            assert!(matches!(step, OAuthStep::Continue(_)));
            // Not even a fresh, valid initial response: a retry is a new exchange.
            let err = server.step(answer, &v, now()).await.unwrap_err();
            assert_eq!(err, OAuthError::IllegalState("CHALLENGED"));
            assert!(err.is_illegal_state());
            assert!(!server.is_complete());
        }
    }

    #[tokio::test]
    async fn a_message_after_completion_is_an_illegal_state() {
        let key = TestKey::p256("k1");
        let v = validator(&[&key]);
        let message = first(&key.token(&claims(json!({}))));
        let mut server = OAuthBearerServer::new();
        assert!(matches!(
            server.step(&message, &v, now()).await,
            Ok(OAuthStep::Done(_))
        ));
        assert_eq!(
            server.step(&message, &v, now()).await,
            Err(OAuthError::IllegalState("COMPLETE"))
        );
        assert!(!server.is_complete());
    }

    #[tokio::test]
    async fn malformed_initial_responses_are_refused_without_a_challenge() {
        let key = TestKey::p256("k1");
        let v = validator(&[&key]);
        let t = key.token(&claims(json!({})));
        let oversize = format!(
            "n,,\u{1}auth=Bearer {}\u{1}\u{1}",
            "a".repeat(MAX_INITIAL_RESPONSE_BYTES)
        );
        let cases: Vec<(&str, String)> = vec![
            ("empty", String::new()),
            ("no auth", "n,,\u{1}\u{1}".to_string()),
            ("only an extension", "n,,\u{1}k=v\u{1}\u{1}".to_string()),
            (
                "missing final terminator",
                format!("n,,\u{1}auth=Bearer {t}\u{1}"),
            ),
            ("no terminator", format!("n,,\u{1}auth=Bearer {t}")),
            (
                "no %x01 after the GS2 header",
                format!("n,,auth=Bearer {t}\u{1}\u{1}"),
            ),
            ("not Bearer", format!("n,,\u{1}auth=Basic {t}\u{1}\u{1}")),
            ("no scheme", format!("n,,\u{1}auth={t}\u{1}\u{1}")),
            ("empty token", "n,,\u{1}auth=Bearer \u{1}\u{1}".to_string()),
            (
                "token outside b64token",
                "n,,\u{1}auth=Bearer a+b/c=\u{1}\u{1}".to_string(),
            ),
            (
                "channel binding wanted",
                format!("y,,\u{1}auth=Bearer {t}\u{1}\u{1}"),
            ),
            (
                "channel binding",
                format!("p=tls-unique,,\u{1}auth=Bearer {t}\u{1}\u{1}"),
            ),
            ("no GS2 header", format!("\u{1}auth=Bearer {t}\u{1}\u{1}")),
            (
                "authzid without a=",
                format!("n,alice,\u{1}auth=Bearer {t}\u{1}\u{1}"),
            ),
            (
                "empty authzid",
                format!("n,a=,\u{1}auth=Bearer {t}\u{1}\u{1}"),
            ),
            (
                "bad saslname escape",
                format!("n,a=al=2Xice,\u{1}auth=Bearer {t}\u{1}\u{1}"),
            ),
            (
                "auth twice",
                format!("n,,\u{1}auth=Bearer {t}\u{1}auth=Bearer x\u{1}\u{1}"),
            ),
            (
                "extension twice",
                format!("n,,\u{1}auth=Bearer {t}\u{1}k=1\u{1}k=2\u{1}\u{1}"),
            ),
            (
                "digit in a key",
                format!("n,,\u{1}auth=Bearer {t}\u{1}k1=v\u{1}\u{1}"),
            ),
            (
                "empty key",
                format!("n,,\u{1}auth=Bearer {t}\u{1}=v\u{1}\u{1}"),
            ),
            (
                "empty value",
                format!("n,,\u{1}auth=Bearer {t}\u{1}k=\u{1}\u{1}"),
            ),
            (
                "control byte in a value",
                format!("n,,\u{1}auth=Bearer {t}\u{1}k=a\0b\u{1}\u{1}"),
            ),
            (
                "pair without =",
                format!("n,,\u{1}auth=Bearer {t}\u{1}kv\u{1}\u{1}"),
            ),
            (
                "empty pair",
                format!("n,,\u{1}auth=Bearer {t}\u{1}\u{1}\u{1}"),
            ),
            (
                "non-ASCII",
                format!("n,,\u{1}auth=Bearer {t}\u{1}k=é\u{1}\u{1}"),
            ),
            ("oversize", oversize),
        ];
        for (case, message) in cases {
            let mut server = OAuthBearerServer::new();
            let err = server
                .step(message.as_bytes(), &v, now())
                .await
                .unwrap_err();
            assert!(
                matches!(err, OAuthError::InvalidClientFirst(_)),
                "{case}: {err:?}"
            );
            assert!(!err.is_client_visible(), "{case}");
            assert!(!err.to_string().contains(&t), "{case}");
            assert_eq!(
                server.step(&first(&t), &v, now()).await,
                Err(OAuthError::IllegalState("FAILED")),
                "{case}"
            );
        }
        // Not UTF-8 at all.
        assert!(matches!(
            exchange(&v, b"n,,\x01auth=Bearer \xff\x01\x01").await,
            Err(OAuthError::InvalidClientFirst("not ASCII"))
        ));
    }

    #[tokio::test]
    async fn extensions_and_scheme_case_are_accepted_as_kafka_accepts_them() {
        let key = TestKey::p256("k1");
        let v = validator(&[&key]);
        let t = key.token(&claims(json!({})));
        for message in [
            format!("n,,\u{1}auth=bearer   {t}\u{1}\u{1}"),
            format!(
                "n,,\u{1}traceId=a b\tc=d\u{1}auth=Bearer {t}\u{1}logicalCluster=lkc-1\u{1}\u{1}"
            ),
        ] {
            assert!(
                matches!(
                    exchange(&v, message.as_bytes()).await,
                    Ok(OAuthStep::Done(_))
                ),
                "{message:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_authorization_id_must_be_the_tokens_principal() {
        let key = TestKey::p256("k1");
        let v = validator(&[&key]);
        let t = key.token(&claims(json!({})));
        let done = exchange(
            &v,
            format!("n,a=alice,\u{1}auth=Bearer {t}\u{1}\u{1}").as_bytes(),
        )
        .await;
        assert!(matches!(done, Ok(OAuthStep::Done(_))));

        let err = exchange(
            &v,
            format!("n,a=admin,\u{1}auth=Bearer {t}\u{1}\u{1}").as_bytes(),
        )
        .await
        .unwrap_err();
        assert_eq!(err, OAuthError::AuthzIdMismatch);
        assert!(err.is_client_visible());

        // A saslname is unescaped before the comparison.
        let t = key.token(&claims(json!({"sub": "a,b=c"})));
        let done = exchange(
            &v,
            format!("n,a=a=2Cb=3Dc,\u{1}auth=Bearer {t}\u{1}\u{1}").as_bytes(),
        )
        .await;
        assert!(matches!(done, Ok(OAuthStep::Done(t)) if t.principal.name == "a,b=c"));
    }

    // --- The token (BrokerJwtValidator) ---

    #[tokio::test]
    async fn a_token_for_another_audience_is_refused() {
        let key = TestKey::p256("k1");
        let v = validator(&[&key]);
        for aud in [json!("other"), json!(["other", "more"]), json!([])] {
            let t = key.token(&claims(json!({"aud": aud})));
            assert_eq!(refusal(&v, &t).await, TokenError::WrongAudience, "{aud}");
        }
        // With an expected audience, the token must have one.
        let t = key.token(&claims(json!({"aud": null})));
        assert_eq!(refusal(&v, &t).await, TokenError::WrongAudience);
        let t = key.token(&claims(json!({"aud": [1]})));
        assert_eq!(refusal(&v, &t).await, claim("aud"));
    }

    #[tokio::test]
    async fn the_audience_must_contain_one_of_the_expected_ones() {
        let key = TestKey::p256("k1");
        let v = validator_with(
            TokenRules {
                expected_audience: vec!["a".into(), AUDIENCE.into()],
                ..rules()
            },
            &[&key],
        );
        let t = key.token(&claims(json!({"aud": ["other", AUDIENCE]})));
        assert!(v.validate(&t, now()).await.is_ok());
        let t = key.token(&claims(json!({"aud": "a"})));
        assert!(v.validate(&t, now()).await.is_ok());
    }

    #[tokio::test]
    async fn without_an_expected_audience_a_token_naming_one_is_refused() {
        // jose4j's rule, so Kafka's: an aud the broker was not told to accept is not for it.
        let key = TestKey::p256("k1");
        let v = validator_with(
            TokenRules {
                expected_audience: Vec::new(),
                ..rules()
            },
            &[&key],
        );
        let t = key.token(&claims(json!({})));
        assert_eq!(refusal(&v, &t).await, TokenError::WrongAudience);
        let t = key.token(&claims(json!({"aud": null})));
        assert!(v.validate(&t, now()).await.is_ok());
    }

    #[tokio::test]
    async fn a_token_from_another_issuer_is_refused() {
        let key = TestKey::p256("k1");
        let v = validator(&[&key]);
        for iss in [
            json!("https://evil.example"),
            json!(null),
            json!(["https://idp.example"]),
        ] {
            let t = key.token(&claims(json!({"iss": iss})));
            assert_eq!(refusal(&v, &t).await, TokenError::WrongIssuer, "{iss}");
        }
        // Without an expected issuer, iss is not checked.
        let v = validator_with(
            TokenRules {
                expected_issuer: None,
                ..rules()
            },
            &[&key],
        );
        let t = key.token(&claims(json!({"iss": "https://anyone.example"})));
        assert!(v.validate(&t, now()).await.is_ok());
    }

    #[tokio::test]
    async fn an_expired_token_is_refused_beyond_the_clock_skew() {
        let key = TestKey::p256("k1");
        let v = validator(&[&key]);
        // The default skew is 30 s: expired once now >= exp + 30.
        let t = key.token(&claims(json!({"exp": NOW - 29, "iat": NOW - 600})));
        let token = v.validate(&t, now()).await.unwrap();
        // Accepted within the skew, the session has no time left.
        assert_eq!(token.session_lifetime(now(), None), Duration::ZERO);
        for exp in [NOW - 30, NOW - 3600] {
            let t = key.token(&claims(json!({"exp": exp, "iat": NOW - 7200})));
            assert_eq!(refusal(&v, &t).await, TokenError::Expired, "exp {exp}");
        }
        let strict = validator_with(
            TokenRules {
                clock_skew: Duration::ZERO,
                ..rules()
            },
            &[&key],
        );
        let t = key.token(&claims(json!({"exp": NOW})));
        assert_eq!(refusal(&strict, &t).await, TokenError::Expired);
        let t = key.token(&claims(json!({"exp": NOW + 1})));
        assert!(strict.validate(&t, now()).await.is_ok());
    }

    #[tokio::test]
    async fn a_token_not_yet_valid_is_refused_beyond_the_clock_skew() {
        let key = TestKey::p256("k1");
        let v = validator(&[&key]);
        let t = key.token(&claims(json!({"nbf": NOW + 30})));
        assert!(v.validate(&t, now()).await.is_ok());
        let t = key.token(&claims(json!({"nbf": NOW + 31})));
        assert_eq!(refusal(&v, &t).await, TokenError::NotYetValid("nbf"));
        let t = key.token(&claims(json!({"iat": NOW + 30})));
        assert!(v.validate(&t, now()).await.is_ok());
        let t = key.token(&claims(json!({"iat": NOW + 31})));
        assert_eq!(refusal(&v, &t).await, TokenError::NotYetValid("iat"));
    }

    #[tokio::test]
    async fn exp_iat_and_the_subject_are_required() {
        let key = TestKey::p256("k1");
        let v = validator(&[&key]);
        for (changes, missing) in [
            (json!({"exp": null}), "exp"),
            (json!({"iat": null}), "iat"),
            (json!({"sub": null}), "sub"),
            (json!({"sub": "   "}), "sub"),
            (json!({"sub": 42}), "sub"),
            (json!({"exp": "tomorrow"}), "exp"),
            (json!({"iat": -1}), "iat"),
            (json!({"nbf": true}), "nbf"),
        ] {
            let t = key.token(&claims(changes.clone()));
            assert_eq!(refusal(&v, &t).await, claim(missing), "{changes}");
        }
        // A NumericDate may be fractional; the subject is trimmed, as Kafka does.
        let t = key.token(&claims(
            json!({"exp": NOW as f64 + 600.5, "sub": " alice "}),
        ));
        let token = v.validate(&t, now()).await.unwrap();
        assert_eq!(token.principal.name, "alice");
        assert_eq!(token.expires_at, now() + Duration::from_secs(600));
    }

    #[tokio::test]
    async fn the_sub_claim_name_picks_the_principal_claim() {
        let key = TestKey::p256("k1");
        let v = validator_with(
            TokenRules {
                sub_claim_name: "email".into(),
                ..rules()
            },
            &[&key],
        );
        let t = key.token(&claims(
            json!({"sub": "0b1f", "email": "alice@example.com"}),
        ));
        let token = v.validate(&t, now()).await.unwrap();
        assert_eq!(token.principal, KafkaPrincipal::user("alice@example.com"));
        // `sub` does not stand in for a missing configured claim.
        let t = key.token(&claims(json!({})));
        assert_eq!(refusal(&v, &t).await, claim("email"));
    }

    #[tokio::test]
    async fn scopes_come_from_the_scope_claim() {
        let key = TestKey::p256("k1");
        let v = validator(&[&key]);
        let scopes = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let t = key.token(&claims(json!({"scope": "read  write"})));
        assert_eq!(
            v.validate(&t, now()).await.unwrap().scopes,
            scopes(&["read", "write"])
        );
        let t = key.token(&claims(json!({"scope": ["read", " write "]})));
        assert_eq!(
            v.validate(&t, now()).await.unwrap().scopes,
            scopes(&["read", "write"])
        );
        let t = key.token(&claims(json!({})));
        assert!(v.validate(&t, now()).await.unwrap().scopes.is_empty());
        // Kafka's validateClaimScopes: no duplicates, no blanks.
        for bad in [json!(["read", "read"]), json!(["read", " "]), json!([1])] {
            let t = key.token(&claims(json!({"scope": bad})));
            assert_eq!(refusal(&v, &t).await, claim("scope"), "{bad}");
        }
        let v = validator_with(
            TokenRules {
                scope_claim_name: "scp".into(),
                ..rules()
            },
            &[&key],
        );
        let t = key.token(&claims(json!({"scp": ["admin"], "scope": "ignored"})));
        assert_eq!(
            v.validate(&t, now()).await.unwrap().scopes,
            scopes(&["admin"])
        );
    }

    #[tokio::test]
    async fn alg_none_is_refused_whatever_the_key_set() {
        let key = TestKey::p256("k1");
        let v = validator(&[&key]);
        let body = b64(claims(json!({})).to_string());
        for header in [json!({"alg": "none"}), json!({"alg": "none", "kid": "k1"})] {
            let unsigned = format!("{}.{body}.", b64(header.to_string()));
            assert_eq!(
                refusal(&v, &unsigned).await,
                TokenError::BadAlgorithm("none (an unsigned token)")
            );
            let with_signature = format!("{unsigned}c2ln");
            assert!(matches!(
                refusal(&v, &with_signature).await,
                TokenError::BadAlgorithm(_)
            ));
        }
        // Only the exact names are algorithms.
        let t = key.token_with(&json!({"alg": "None", "kid": "k1"}), &claims(json!({})));
        assert_eq!(
            refusal(&v, &t).await,
            TokenError::BadAlgorithm("not supported")
        );
    }

    #[tokio::test]
    async fn hs256_signed_with_the_public_key_is_refused() {
        // The confusion attack: a verifier that takes the key set's bytes as an HMAC secret
        // would accept a token anyone can make from the public key.
        let key = TestKey::p256("k1");
        let point = {
            let x = B64URL.decode(key.jwk["x"].as_str().unwrap()).unwrap();
            let y = B64URL.decode(key.jwk["y"].as_str().unwrap()).unwrap();
            [&[4u8][..], &x, &y].concat()
        };
        // Even with the public key published as a symmetric (oct) key.
        let oct = json!({"kty": "oct", "kid": "k1-oct", "k": b64(&point), "alg": "HS256"});
        let set = json!({"keys": [key.jwk.clone(), oct]}).to_string();
        let v = JwtValidator::with_static_jwks(rules(), &set).unwrap();
        for secret in [
            point.clone(),
            key.jwk.to_string().into_bytes(),
            set.into_bytes(),
        ] {
            for (alg, kid) in [("HS256", "k1"), ("HS256", "k1-oct"), ("HS512", "k1")] {
                let hmac_alg = if alg == "HS256" {
                    hmac::HMAC_SHA256
                } else {
                    hmac::HMAC_SHA512
                };
                let t = jwt(
                    &json!({"alg": alg, "kid": kid}),
                    &claims(json!({})),
                    |input| {
                        hmac::sign(&hmac::Key::new(hmac_alg, &secret), input)
                            .as_ref()
                            .to_vec()
                    },
                );
                assert_eq!(
                    refusal(&v, &t).await,
                    TokenError::BadAlgorithm("HMAC (a symmetric algorithm)")
                );
            }
        }
        // The oct key was never loaded: under an asymmetric alg its kid is unknown.
        let t = key.token_with(
            &json!({"alg": "ES256", "kid": "k1-oct"}),
            &claims(json!({})),
        );
        assert_eq!(refusal(&v, &t).await, TokenError::UnknownKid);
    }

    #[tokio::test]
    async fn an_algorithm_that_does_not_fit_the_key_is_refused() {
        let p256 = TestKey::p256("k1");
        let p384 = TestKey::ec("k384", &ECDSA_P384_SHA384_FIXED_SIGNING);
        let rsa = TestKey::rsa("rsa");
        let mut pinned = TestKey::rsa("rsa-ps");
        pinned.jwk["alg"] = json!("PS256");
        let v = validator(&[&p256, &p384, &rsa, &pinned]);
        let c = claims(json!({}));
        for (alg, kid, signer) in [
            ("ES384", "k1", &p384),   // a P-384 signature named after a P-256 key
            ("ES256", "k384", &p256), // and the other way round
            ("RS256", "k1", &rsa),    // an RSA signature on an EC key's kid
            ("EdDSA", "k1", &p256),
            ("ES256", "rsa", &p256),   // an EC signature on an RSA key's kid
            ("RS256", "rsa-ps", &rsa), // the JWK pins PS256
        ] {
            let t = signer.token_with(&json!({"alg": alg, "kid": kid}), &c);
            assert_eq!(
                refusal(&v, &t).await,
                TokenError::KeyMismatch,
                "{alg} with {kid}"
            );
        }
        let t = pinned.token_with(&json!({"alg": "PS256", "kid": "rsa-ps"}), &c);
        assert!(v.validate(&t, now()).await.is_ok());
    }

    #[tokio::test]
    async fn rsa_ecdsa_and_ed25519_keys_verify_their_tokens() {
        let p256 = TestKey::p256("k1");
        let p384 = TestKey::ec("k384", &ECDSA_P384_SHA384_FIXED_SIGNING);
        let rsa = TestKey::rsa("rsa");
        let ed = TestKey::ed25519("ed");
        let v = validator(&[&p256, &p384, &rsa, &ed]);
        let c = claims(json!({}));
        for t in [
            p256.token(&c),
            p384.token(&c),
            rsa.token(&c),
            rsa.token_with(&json!({"alg": "PS256", "kid": "rsa"}), &c),
            ed.token(&c),
        ] {
            assert_eq!(v.validate(&t, now()).await.unwrap().principal.name, "alice");
        }
    }

    #[tokio::test]
    async fn a_bad_signature_is_refused() {
        let key = TestKey::p256("k1");
        let impostor = TestKey::p256("k1");
        let v = validator(&[&key]);
        // Signed by another key under the same kid.
        let t = impostor.token(&claims(json!({})));
        assert_eq!(refusal(&v, &t).await, TokenError::BadSignature);
        // Claims swapped after signing.
        let good = key.token(&claims(json!({})));
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged = b64(claims(json!({"sub": "admin"})).to_string());
        parts[1] = &forged;
        assert_eq!(
            refusal(&v, &parts.join(".")).await,
            TokenError::BadSignature
        );
        // A signature of the wrong length, and one that is not base64url.
        let (head, _) = good.rsplit_once('.').unwrap();
        assert_eq!(
            refusal(&v, &format!("{head}.AAAA")).await,
            TokenError::BadSignature
        );
        assert_eq!(
            refusal(&v, &format!("{head}.A")).await,
            TokenError::Malformed("the signature is not base64url")
        );
    }

    #[tokio::test]
    async fn malformed_tokens_are_refused_without_echoing_them() {
        let key = TestKey::p256("k1");
        let v = validator(&[&key]);
        let c = claims(json!({}));
        let good = key.token(&c);
        let header = |h: Value| b64(h.to_string());
        let body = b64(c.to_string());
        let cases = [
            "opaque-token".to_string(),
            "a.b".to_string(),
            format!("{good}.x.y"), // a JWE has five parts
            format!("{}.{body}.c2ln", b64("not json")),
            format!("{}.{body}.c2ln", b64("[1]")),
            format!("{}.{body}.c2ln", header(json!({"kid": "k1"}))),
            format!("{}.{body}.c2ln", header(json!({"alg": 256}))),
            format!("{}.{body}.c2ln", header(json!({"alg": "ES256", "kid": 1}))),
            format!(
                "{}.{body}.c2ln",
                header(json!({"alg": "ES256", "kid": "k1", "crit": ["exp"]}))
            ),
            format!("{}.{body}.", header(json!({"alg": "ES256", "kid": "k1"}))),
            format!(
                "{}.{body}.c2ln",
                b64("{\"alg\":\"ES256\"").replace('A', "*")
            ),
            key.token_with(&json!({"alg": "ES256", "kid": "k1"}), &json!([1, 2])),
        ];
        for t in cases {
            let err = refusal(&v, &t).await;
            assert!(matches!(err, TokenError::Malformed(_)), "{t}: {err:?}");
            assert!(!err.to_string().contains(&t));
        }
        let huge = key.token(&claims(json!({"pad": "x".repeat(MAX_TOKEN_BYTES)})));
        assert_eq!(refusal(&v, &huge).await, TokenError::TooLarge);
    }

    #[tokio::test]
    async fn a_token_without_kid_needs_a_single_key_for_its_algorithm() {
        let key = TestKey::p256("k1");
        let rsa = TestKey::rsa("rsa");
        let c = claims(json!({}));
        let t = key.token_with(&json!({"alg": "ES256"}), &c);
        // One EC key (the RSA one does not fit ES256): unambiguous.
        assert!(validator(&[&key, &rsa]).validate(&t, now()).await.is_ok());
        let other = TestKey::p256("k2");
        assert_eq!(
            refusal(&validator(&[&key, &other]), &t).await,
            TokenError::NoKid
        );
        assert_eq!(refusal(&validator(&[&rsa]), &t).await, TokenError::NoKid);
    }

    #[test]
    fn the_key_set_keeps_only_asymmetric_signature_keys() {
        let key = TestKey::p256("k1");
        let mut encryption = TestKey::p256("enc").jwk;
        encryption["use"] = json!("enc");
        let mut wrap_only = TestKey::p256("wrap").jwk;
        wrap_only["key_ops"] = json!(["wrapKey"]);
        let mut oaep = TestKey::rsa("oaep").jwk;
        oaep["alg"] = json!("RSA-OAEP");
        let mut liar = TestKey::rsa("liar").jwk;
        liar["alg"] = json!("ES256");
        let set = json!({"keys": [
            key.jwk.clone(), encryption, wrap_only, oaep, liar,
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"},
            {"kty": "OKP", "crv": "X25519", "kid": "x", "x": "AA"},
            {"kty": "PQ", "kid": "future"},
            "not an object",
        ]});
        let keys = KeySet::parse(set.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = keys.keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, [Some("k1")]);

        for bad in ["", "not json", "{}", r#"{"keys": {}}"#, "[]"] {
            assert!(
                JwtValidator::with_static_jwks(rules(), bad).is_err(),
                "{bad:?}"
            );
        }
        // An empty set is a set: every token is then refused.
        assert!(JwtValidator::with_static_jwks(rules(), r#"{"keys": []}"#).is_ok());
    }

    #[test]
    fn the_session_lasts_until_expiry_and_no_longer_than_max_reauth() {
        let token = OAuthBearerToken {
            principal: KafkaPrincipal::user("alice"),
            expires_at: now() + Duration::from_secs(600),
            issued_at: now(),
            scopes: BTreeSet::new(),
        };
        assert_eq!(
            token.session_lifetime(now(), None),
            Duration::from_secs(600)
        );
        let hour = Some(Duration::from_secs(3600));
        assert_eq!(
            token.session_lifetime(now(), hour),
            Duration::from_secs(600)
        );
        let minute = Some(Duration::from_secs(60));
        assert_eq!(
            token.session_lifetime(now(), minute),
            Duration::from_secs(60)
        );
        let later = now() + Duration::from_secs(700);
        assert_eq!(token.session_lifetime(later, minute), Duration::ZERO);
    }

    // --- The JWKS refresh ---

    #[test]
    fn unknown_kid_refreshes_wait_a_growing_window() {
        let base = Duration::from_millis(100);
        let mut limiter = RefreshLimiter::new(base, Duration::from_millis(1000));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!(limiter.try_acquire(at(0)));
        assert!(!limiter.try_acquire(at(0)));
        assert!(!limiter.try_acquire(at(99)));
        assert!(limiter.try_acquire(at(100))); // the window doubles: 200 ms
        assert!(!limiter.try_acquire(at(299)));
        assert!(limiter.try_acquire(at(300))); // 400 ms
        assert!(!limiter.try_acquire(at(699)));
        assert!(limiter.try_acquire(at(700))); // 800 ms
        assert!(limiter.try_acquire(at(1500))); // capped at 1000 ms
        assert!(!limiter.try_acquire(at(2499)));
        assert!(limiter.try_acquire(at(2500)));
        // Quiet for a window plus the maximum: back to the base window.
        assert!(limiter.try_acquire(at(4500)));
        assert!(!limiter.try_acquire(at(4599)));
        assert!(limiter.try_acquire(at(4600)));
        // A refresh that found its key resets the window too.
        limiter.reset();
        assert!(!limiter.try_acquire(at(4699)));
        assert!(limiter.try_acquire(at(4700)));
    }

    #[derive(Clone)]
    enum Reply {
        Jwks(String),
        Status(u16),
        Redirect,
        /// 2 MiB of body without a Content-Length.
        Huge,
    }

    /// A JWKS endpoint over TLS on localhost, counting the requests it answers.
    struct Endpoint {
        url: String,
        ca: CertificateDer<'static>,
        reply: Arc<std::sync::Mutex<Reply>>,
        hits: Arc<AtomicUsize>,
    }

    impl Endpoint {
        async fn start(reply: Reply) -> Endpoint {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let private = rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
            let config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.der().clone()], private.into())
                .unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let reply = Arc::new(std::sync::Mutex::new(reply));
            let hits = Arc::new(AtomicUsize::new(0));
            let (r, h) = (reply.clone(), hits.clone());
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let (acceptor, r, h) = (acceptor.clone(), r.clone(), h.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        serve(tls, &r, &h).await;
                    });
                }
            });
            Endpoint {
                url: format!("https://localhost:{port}/jwks"),
                ca: cert.der().clone(),
                reply,
                hits,
            }
        }

        fn set(&self, reply: Reply) {
            *self.reply.lock().unwrap() = reply;
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }

        fn config(&self, backoff_ms: u64, backoff_max_ms: u64, refresh_ms: u64) -> OAuthConfig {
            OAuthConfig {
                jwks: JwksConfig {
                    source: JwksSource::Https(self.url.parse().unwrap()),
                    refresh_interval: Duration::from_millis(refresh_ms),
                    retry_backoff: Duration::from_millis(backoff_ms),
                    retry_backoff_max: Duration::from_millis(backoff_max_ms),
                    trust_roots: Some(vec![self.ca.clone()]),
                },
                rules: rules(),
            }
        }
    }

    async fn serve(
        mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        reply: &std::sync::Mutex<Reply>,
        hits: &AtomicUsize,
    ) {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        hits.fetch_add(1, Ordering::SeqCst);
        let reply = reply.lock().unwrap().clone();
        let response = match &reply {
            Reply::Jwks(body) => format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            ),
            Reply::Status(code) => {
                format!("HTTP/1.1 {code} Nope\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            }
            Reply::Redirect => "HTTP/1.1 302 Found\r\nLocation: https://elsewhere.example/jwks\r\n\
                                Content-Length: 0\r\nConnection: close\r\n\r\n"
                .to_string(),
            Reply::Huge => "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_string(),
        };
        let _ = tls.write_all(response.as_bytes()).await;
        if matches!(reply, Reply::Huge) {
            let chunk = vec![b' '; 64 * 1024];
            for _ in 0..32 {
                if tls.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        }
        let _ = tls.shutdown().await;
    }

    #[tokio::test]
    async fn an_unknown_kid_triggers_at_most_one_refresh_within_the_backoff_window() {
        let k1 = TestKey::p256("k1");
        let k2 = TestKey::p256("k2");
        let endpoint = Endpoint::start(Reply::Jwks(jwks(&[&k1]))).await;
        let v = JwtValidator::connect(endpoint.config(60_000, 60_000, 3_600_000))
            .await
            .unwrap();
        assert_eq!(endpoint.hits(), 1);
        let c = claims(json!({}));

        // A cached kid: no request.
        assert!(v.validate(&k1.token(&c), now()).await.is_ok());
        assert_eq!(endpoint.hits(), 1);

        // The provider rotates: the first token with the new kid waits for one refresh.
        endpoint.set(Reply::Jwks(jwks(&[&k1, &k2])));
        assert!(v.validate(&k2.token(&c), now()).await.is_ok());
        assert_eq!(endpoint.hits(), 2);

        // Made-up kids, one after another and all at once, within the window: no request.
        for i in 0..10 {
            let t = k2.token_with(&json!({"alg": "ES256", "kid": format!("random-{i}")}), &c);
            assert_eq!(refusal(&v, &t).await, TokenError::UnknownKid);
        }
        let v = Arc::new(v);
        let flood: Vec<_> = (0..20)
            .map(|i| {
                let (v, t) = (
                    v.clone(),
                    k2.token_with(&json!({"alg": "ES256", "kid": format!("flood-{i}")}), &c),
                );
                tokio::spawn(async move { v.validate(&t, now()).await })
            })
            .collect();
        for task in flood {
            assert_eq!(task.await.unwrap().unwrap_err(), TokenError::UnknownKid);
        }
        assert_eq!(endpoint.hits(), 2);
        // The known keys still work, without a request.
        assert!(v.validate(&k1.token(&c), now()).await.is_ok());
        assert_eq!(endpoint.hits(), 2);
    }

    #[tokio::test]
    async fn concurrent_unknown_kids_share_one_refresh() {
        let k1 = TestKey::p256("k1");
        let k2 = TestKey::p256("k2");
        let endpoint = Endpoint::start(Reply::Jwks(jwks(&[&k1]))).await;
        let v = Arc::new(
            JwtValidator::connect(endpoint.config(60_000, 60_000, 3_600_000))
                .await
                .unwrap(),
        );
        endpoint.set(Reply::Jwks(jwks(&[&k1, &k2])));
        let t = k2.token(&claims(json!({})));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (v, t) = (v.clone(), t.clone());
                tokio::spawn(async move { v.validate(&t, now()).await })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap().is_ok());
        }
        assert_eq!(endpoint.hits(), 2);
    }

    #[tokio::test]
    async fn the_key_set_is_refreshed_every_refresh_interval_until_the_validator_is_dropped() {
        let k1 = TestKey::p256("k1");
        let k2 = TestKey::p256("k2");
        let endpoint = Endpoint::start(Reply::Jwks(jwks(&[&k1]))).await;
        let v = JwtValidator::connect(endpoint.config(10, 100, 50))
            .await
            .unwrap();
        endpoint.set(Reply::Jwks(jwks(&[&k2])));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !v.keys.current().has_kid("k2") {
            assert!(Instant::now() < deadline, "no scheduled refresh");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The rotated-out key is gone.
        assert_eq!(
            refusal(&v, &k1.token(&claims(json!({})))).await,
            TokenError::UnknownKid
        );

        drop(v);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after_drop = endpoint.hits();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(endpoint.hits(), after_drop);
    }

    #[tokio::test]
    async fn start_up_fails_when_no_key_set_can_be_fetched() {
        for (reply, expected) in [
            (Reply::Status(500), "HTTP 500"),
            (Reply::Redirect, "HTTP 302"),
            (Reply::Huge, "larger than"),
            (
                Reply::Jwks("{\"keys\": 1}".to_string()),
                "no \"keys\" array",
            ),
        ] {
            let endpoint = Endpoint::start(reply).await;
            // Waits of 10 and 20 ms fit in 30 ms, 40 more would not: three attempts.
            let err = JwtValidator::connect(endpoint.config(10, 30, 3_600_000))
                .await
                .unwrap_err();
            assert!(err.contains(expected), "{err}");
            assert_eq!(endpoint.hits(), 3, "{err}");
        }
    }

    #[tokio::test]
    async fn an_untrusted_endpoint_certificate_fails_start_up() {
        let key = TestKey::p256("k1");
        let endpoint = Endpoint::start(Reply::Jwks(jwks(&[&key]))).await;
        let mut config = endpoint.config(10, 10, 3_600_000);
        let other = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        config.jwks.trust_roots = Some(vec![other.der().clone()]);
        assert!(JwtValidator::connect(config).await.is_err());
        assert_eq!(endpoint.hits(), 0);
    }

    #[tokio::test]
    async fn a_jwks_file_url_is_read_at_start_up() {
        let key = TestKey::p256("k1");
        let path =
            std::env::temp_dir().join(format!("shale-oauth-jwks-{}.json", std::process::id()));
        std::fs::write(&path, jwks(&[&key])).unwrap();
        let url = format!("file://{}", path.display());
        let config = OAuthConfig::from_settings(settings(&[
            (JWKS_ENDPOINT_URL, &url),
            (EXPECTED_AUDIENCE, AUDIENCE),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(config.jwks.source, JwksSource::File(path.clone()));
        let v = JwtValidator::connect(config).await.unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(
            v.validate(&key.token(&claims(json!({}))), now())
                .await
                .is_ok()
        );
    }

    // --- The configuration ---

    fn settings(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn config_err(pairs: &[(&str, &str)]) -> String {
        OAuthConfig::from_settings(settings(pairs)).unwrap_err()
    }

    const URL: &str = "https://idp.example/oauth2/v1/keys";

    #[test]
    fn without_a_jwks_url_there_is_no_oauthbearer_config() {
        assert!(OAuthConfig::from_settings(settings(&[])).unwrap().is_none());
        assert!(
            OAuthConfig::from_settings(settings(&[(JWKS_ENDPOINT_URL, " ")]))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn the_defaults_are_kafkas() {
        let config = OAuthConfig::from_settings(settings(&[(JWKS_ENDPOINT_URL, URL)]))
            .unwrap()
            .unwrap();
        assert_eq!(config.rules, TokenRules::default());
        assert_eq!(config.rules.clock_skew, Duration::from_secs(30));
        assert_eq!(config.rules.sub_claim_name, "sub");
        assert_eq!(config.rules.scope_claim_name, "scope");
        assert_eq!(config.jwks.source, JwksSource::Https(URL.parse().unwrap()));
        assert_eq!(
            config.jwks.refresh_interval,
            Duration::from_millis(3_600_000)
        );
        assert_eq!(config.jwks.retry_backoff, Duration::from_millis(100));
        assert_eq!(config.jwks.retry_backoff_max, Duration::from_millis(10_000));
        assert!(config.jwks.trust_roots.is_none());
    }

    #[test]
    fn every_setting_is_read_and_the_mechanism_prefix_wins() {
        let dir = std::env::temp_dir().join(format!("shale-oauth-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        let cert = rcgen::CertificateParams::new(vec!["idp.example".to_string()])
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        std::fs::write(&ca, cert.pem()).unwrap();
        let ca = ca.display().to_string();
        let config = OAuthConfig::from_settings(settings(&[
            (JWKS_ENDPOINT_URL, "https://ignored.example/keys"),
            ("oauthbearer.sasl.oauthbearer.jwks.endpoint.url", URL),
            (ALLOWED_URLS, &format!("https://other.example/keys, {URL}")),
            (EXPECTED_AUDIENCE, " kafka, ,admin "),
            (EXPECTED_ISSUER, ISSUER),
            (CLOCK_SKEW_SECONDS, "5"),
            (SUB_CLAIM_NAME, " email "),
            (SCOPE_CLAIM_NAME, "scp"),
            (JWKS_REFRESH_MS, "60000"),
            (JWKS_RETRY_BACKOFF_MS, "250"),
            (JWKS_RETRY_BACKOFF_MAX_MS, "5000"),
            (JWKS_TRUSTSTORE_LOCATION, &ca),
        ]))
        .unwrap()
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(config.jwks.source, JwksSource::Https(URL.parse().unwrap()));
        assert_eq!(
            config.rules,
            TokenRules {
                expected_audience: vec!["kafka".into(), "admin".into()],
                expected_issuer: Some(ISSUER.into()),
                clock_skew: Duration::from_secs(5),
                sub_claim_name: "email".into(),
                scope_claim_name: "scp".into(),
            }
        );
        assert_eq!(config.jwks.refresh_interval, Duration::from_secs(60));
        assert_eq!(config.jwks.retry_backoff, Duration::from_millis(250));
        assert_eq!(config.jwks.retry_backoff_max, Duration::from_secs(5));
        assert_eq!(config.jwks.trust_roots.map(|r| r.len()), Some(1));
    }

    #[test]
    fn the_jwks_url_must_be_https_or_file_and_allowed() {
        for url in ["http://idp.example/keys", "HTTP://idp.example/keys"] {
            let err = config_err(&[(JWKS_ENDPOINT_URL, url)]);
            assert!(
                err.contains("plain http is refused") && err.contains("https://"),
                "{err}"
            );
        }
        for url in [
            "ftp://idp.example/keys",
            "idp.example/keys",
            "https://user:pw@idp.example/keys",
        ] {
            assert!(
                config_err(&[(JWKS_ENDPOINT_URL, url)]).contains(JWKS_ENDPOINT_URL),
                "{url}"
            );
        }
        let err = config_err(&[
            (JWKS_ENDPOINT_URL, URL),
            (ALLOWED_URLS, "https://idp.example/keys"),
        ]);
        assert!(err.contains(ALLOWED_URLS), "{err}");
        let file = OAuthConfig::from_settings(settings(&[(
            JWKS_ENDPOINT_URL,
            "file:///etc/shale/jwks.json",
        )]))
        .unwrap()
        .unwrap();
        assert_eq!(
            file.jwks.source,
            JwksSource::File("/etc/shale/jwks.json".into())
        );
        let err = config_err(&[
            (JWKS_ENDPOINT_URL, "file:///etc/shale/jwks.json"),
            (JWKS_TRUSTSTORE_LOCATION, "/etc/shale/ca.pem"),
        ]);
        assert!(err.contains(JWKS_TRUSTSTORE_LOCATION), "{err}");
        let err = config_err(&[
            (JWKS_ENDPOINT_URL, URL),
            (JWKS_TRUSTSTORE_LOCATION, "/nonexistent.pem"),
        ]);
        assert!(err.contains("cannot read /nonexistent.pem"), "{err}");
    }

    #[test]
    fn numbers_out_of_range_are_refused() {
        for (key, value) in [
            (CLOCK_SKEW_SECONDS, "-1"),
            (CLOCK_SKEW_SECONDS, "thirty"),
            (JWKS_REFRESH_MS, "0"),
            (JWKS_RETRY_BACKOFF_MS, "0"),
            (JWKS_RETRY_BACKOFF_MAX_MS, "0"),
            (JWKS_RETRY_BACKOFF_MAX_MS, "50"),
        ] {
            let err = config_err(&[(JWKS_ENDPOINT_URL, URL), (key, value)]);
            assert!(err.contains(key), "{key}={value}: {err}");
        }
    }
}
