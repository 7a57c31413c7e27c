//! SASL SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677), the server side, as Kafka's
//! broker runs it (`ScramSaslServer`): no channel binding, the `tokenauth` extension for
//! delegation tokens, credentials stored as salt, StoredKey, ServerKey and iteration count.
//!
//! The exchange is two round trips on the wire but only two `step`s here: client-first in,
//! server-first out; client-final in, server-final out. Everything cryptographic is aws-lc-rs,
//! the same provider rustls uses.

use std::num::NonZeroU32;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::{digest, hmac, pbkdf2};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// Kafka's only supported SCRAM extension (`ScramLoginModule.TOKEN_AUTH_CONFIG`).
const TOKEN_AUTH_EXTENSION: &str = "tokenauth";
/// Bytes of entropy in the server nonce: 192 bits (Kafka's `secureRandomString` has 130).
const SERVER_NONCE_BYTES: usize = 24;
/// Bytes of a random salt for [`ScramCredential::from_password`].
const SALT_BYTES: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScramMechanism {
    Sha256,
    Sha512,
}

impl ScramMechanism {
    pub fn name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// Exact, case-sensitive, like Kafka's `ScramMechanism.forMechanismName`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "SCRAM-SHA-256" => Some(ScramMechanism::Sha256),
            "SCRAM-SHA-512" => Some(ScramMechanism::Sha512),
            _ => None,
        }
    }

    /// The mechanism id of AlterUserScramCredentials / DescribeUserScramCredentials.
    pub fn kafka_type(self) -> i8 {
        match self {
            ScramMechanism::Sha256 => 1,
            ScramMechanism::Sha512 => 2,
        }
    }

    pub fn from_kafka_type(t: i8) -> Option<Self> {
        match t {
            1 => Some(ScramMechanism::Sha256),
            2 => Some(ScramMechanism::Sha512),
            _ => None,
        }
    }

    /// Kafka refuses fewer at authentication (and at AlterUserScramCredentials).
    pub fn min_iterations(self) -> u32 {
        4096
    }

    /// Kafka refuses more at AlterUserScramCredentials; authentication does not check it.
    pub fn max_iterations(self) -> u32 {
        16384
    }

    fn digest_algorithm(self) -> &'static digest::Algorithm {
        match self {
            ScramMechanism::Sha256 => &digest::SHA256,
            ScramMechanism::Sha512 => &digest::SHA512,
        }
    }

    fn hmac_algorithm(self) -> hmac::Algorithm {
        match self {
            ScramMechanism::Sha256 => hmac::HMAC_SHA256,
            ScramMechanism::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn pbkdf2_algorithm(self) -> pbkdf2::Algorithm {
        match self {
            ScramMechanism::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            ScramMechanism::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    fn output_len(self) -> usize {
        self.digest_algorithm().output_len()
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        let key = hmac::Key::new(self.hmac_algorithm(), key);
        hmac::sign(&key, data).as_ref().to_vec()
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        digest::digest(self.digest_algorithm(), data)
            .as_ref()
            .to_vec()
    }
}

/// What the broker stores per user and mechanism (never the password).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredential {
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
    pub iterations: u32,
}

// The keys stay out of logs: StoredKey allows an offline dictionary attack on the password,
// ServerKey lets its holder impersonate the broker.
impl std::fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramCredential")
            .field("salt", &B64.encode(&self.salt))
            .field("stored_key", &"<redacted>")
            .field("server_key", &"<redacted>")
            .field("iterations", &self.iterations)
            .finish()
    }
}

impl ScramCredential {
    /// From a password (tests, bootstrap users): PBKDF2 with a random salt if `salt` is None.
    /// An iteration count of 0 is taken as 1 (PBKDF2 has no 0); the result stores the count
    /// used. Kafka normalizes the password by nothing more than UTF-8 (no SASLprep), so this
    /// takes the bytes as they are.
    ///
    /// # Panics
    /// If the system random number generator fails (only when `salt` is None).
    pub fn from_password(
        mech: ScramMechanism,
        password: &[u8],
        salt: Option<&[u8]>,
        iterations: u32,
    ) -> Self {
        let salt = match salt {
            Some(salt) => salt.to_vec(),
            None => {
                let mut salt = vec![0u8; SALT_BYTES];
                SystemRandom::new()
                    .fill(&mut salt)
                    .expect("the system random number generator failed");
                salt
            }
        };
        let iterations = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
        let mut salted = vec![0u8; mech.output_len()];
        pbkdf2::derive(
            mech.pbkdf2_algorithm(),
            iterations,
            &salt,
            password,
            &mut salted,
        );
        Self::from_salted_password(mech, &salted, &salt, iterations.get())
    }

    /// From the salted password AlterUserScramCredentials carries (the client computes it).
    pub fn from_salted_password(
        mech: ScramMechanism,
        salted_password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Self {
        let client_key = mech.hmac(salted_password, b"Client Key");
        ScramCredential {
            salt: salt.to_vec(),
            stored_key: mech.hash(&client_key),
            server_key: mech.hmac(salted_password, b"Server Key"),
            iterations,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    /// The reason is ours; Kafka's message echoes the whole (untrusted) message instead.
    #[error("Invalid SCRAM client first message format: {0}")]
    InvalidClientFirst(&'static str),
    #[error("Invalid SCRAM client final message format: {0}")]
    InvalidClientFinal(&'static str),
    /// No credential for this user and mechanism.
    #[error("Authentication failed: Invalid user credentials")]
    InvalidUserCredentials,
    /// `tokenauth=true` and no such delegation token.
    #[error("Token Authentication failed: Invalid tokenId : {0}")]
    InvalidTokenId(String),
    #[error(
        "Authentication failed: Client requested an authorization id that is different from username"
    )]
    AuthzIdMismatch,
    #[error("Iterations {iterations} is less than the minimum {min} for {mechanism}")]
    IterationsTooLow {
        iterations: u32,
        min: u32,
        mechanism: &'static str,
    },
    /// `r=` of client-final is not this exchange's nonce: a replay, or a confused client.
    #[error("Invalid client nonce in the final client message.")]
    NonceMismatch,
    /// `c=` of client-final is not the GS2 header of client-first (RFC 5802 §5.1).
    #[error("Invalid channel binding in the final client message.")]
    ChannelBindingMismatch,
    /// The proof does not derive the stored key: a wrong password (or a forged proof).
    #[error("Invalid client credentials")]
    InvalidClientCredentials,
    #[error("Authentication failed: could not generate a server nonce")]
    Random,
    /// A message after the exchange completed or failed (Kafka's `IllegalSaslStateException`).
    #[error("Unexpected challenge in Sasl server state {0}")]
    IllegalState(&'static str),
}

impl ScramError {
    /// Whether Kafka sends this error's own message to the client. Only the authorization-id
    /// refusal is a `SaslAuthenticationException` in `ScramSaslServer`; for everything else
    /// `SaslServerAuthenticator` answers "Authentication failed during authentication due to
    /// invalid credentials with SASL mechanism …", so that an unauthenticated client learns
    /// nothing (in particular not whether the user exists) from the text.
    pub fn is_client_visible(&self) -> bool {
        matches!(self, ScramError::AuthzIdMismatch)
    }

    /// Kafka's `IllegalSaslStateException` (error code ILLEGAL_SASL_STATE) rather than a failed
    /// authentication.
    pub fn is_illegal_state(&self) -> bool {
        matches!(self, ScramError::IllegalState(_))
    }
}

/// What [`ScramServer::step_with`] asks the credential store for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScramLookup<'a> {
    /// The SCRAM name unescaped; with `token_auth` it is a delegation token's id.
    pub username: &'a str,
    /// The client sent `tokenauth=true`: look up the token's credential, not a user's.
    pub token_auth: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScramStep {
    /// Send this server-first message and wait for client-final.
    Continue(Vec<u8>),
    /// Authenticated: send server-final. `username` is the SCRAM name unescaped (=2C ',' and
    /// =3D '='); `token_auth` is true when the client sent the `tokenauth=true` extension
    /// (delegation tokens: `username` is then the token id; the caller decides what to do).
    Done {
        server_final: Vec<u8>,
        username: String,
        token_auth: bool,
    },
}

/// One server-side exchange (one per SaslAuthenticate sequence).
pub struct ScramServer {
    mech: ScramMechanism,
    state: State,
    /// Tests pin the server nonce to reproduce RFC 7677's vector; never set otherwise.
    fixed_nonce: Option<String>,
}

enum State {
    ClientFirst,
    ClientFinal(Box<Pending>),
    Complete,
    Failed,
}

/// What client-first established, for checking client-final.
struct Pending {
    credential: ScramCredential,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    /// Client nonce followed by server nonce.
    nonce: String,
    username: String,
    token_auth: bool,
}

impl std::fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::ClientFirst => "RECEIVE_CLIENT_FIRST_MESSAGE",
            State::ClientFinal(_) => "RECEIVE_CLIENT_FINAL_MESSAGE",
            State::Complete => "COMPLETE",
            State::Failed => "FAILED",
        };
        f.debug_struct("ScramServer")
            .field("mechanism", &self.mech.name())
            .field("state", &state)
            .finish()
    }
}

impl ScramServer {
    pub fn new(mech: ScramMechanism) -> Self {
        ScramServer {
            mech,
            state: State::ClientFirst,
            fixed_nonce: None,
        }
    }

    /// A server whose nonce is `server_nonce` instead of a random one.
    #[cfg(test)]
    fn with_nonce(mech: ScramMechanism, server_nonce: &str) -> Self {
        ScramServer {
            fixed_nonce: Some(server_nonce.to_string()),
            ..ScramServer::new(mech)
        }
    }

    pub fn mechanism(&self) -> ScramMechanism {
        self.mech
    }

    /// True once server-final has been produced (and until a further `step`).
    pub fn is_complete(&self) -> bool {
        matches!(self.state, State::Complete)
    }

    /// Feeds one client message. `lookup(username)` returns the stored credential for this
    /// mechanism, or None for an unknown user. It is called only for client-first. A broker
    /// that accepts delegation tokens wants [`ScramServer::step_with`], which says whether the
    /// name is a token id before the look-up.
    pub fn step(
        &mut self,
        client_message: &[u8],
        lookup: impl FnOnce(&str) -> Option<ScramCredential>,
    ) -> Result<ScramStep, ScramError> {
        self.step_with(client_message, |l| lookup(l.username))
    }

    /// [`ScramServer::step`] with the `tokenauth` flag given to the look-up, as Kafka picks
    /// the delegation-token store or the user store by it.
    pub fn step_with(
        &mut self,
        client_message: &[u8],
        lookup: impl FnOnce(ScramLookup<'_>) -> Option<ScramCredential>,
    ) -> Result<ScramStep, ScramError> {
        // Any error fails the exchange for good, as in Kafka (which also moves COMPLETE to
        // FAILED on a late message); the pending credential is dropped either way.
        let state = std::mem::replace(&mut self.state, State::Failed);
        match state {
            State::ClientFirst => {
                let pending = self.client_first(client_message, lookup)?;
                let reply = pending.server_first.clone().into_bytes();
                self.state = State::ClientFinal(Box::new(pending));
                Ok(ScramStep::Continue(reply))
            }
            State::ClientFinal(pending) => {
                let step = client_final(self.mech, &pending, client_message)?;
                self.state = State::Complete;
                Ok(step)
            }
            State::Complete => Err(ScramError::IllegalState("COMPLETE")),
            State::Failed => Err(ScramError::IllegalState("FAILED")),
        }
    }

    fn client_first(
        &self,
        message: &[u8],
        lookup: impl FnOnce(ScramLookup<'_>) -> Option<ScramCredential>,
    ) -> Result<Pending, ScramError> {
        let first = ClientFirst::parse(message)?;
        let server_nonce = match &self.fixed_nonce {
            Some(nonce) => nonce.clone(),
            None => random_nonce()?,
        };
        // Kafka's order: the credential, then the authorization id, then the iterations.
        let credential = lookup(ScramLookup {
            username: &first.username,
            token_auth: first.token_auth,
        });
        let Some(credential) = credential else {
            return Err(if first.token_auth {
                ScramError::InvalidTokenId(first.username)
            } else {
                ScramError::InvalidUserCredentials
            });
        };
        if first
            .authzid
            .as_ref()
            .is_some_and(|authzid| *authzid != first.username)
        {
            return Err(ScramError::AuthzIdMismatch);
        }
        if credential.iterations < self.mech.min_iterations() {
            return Err(ScramError::IterationsTooLow {
                iterations: credential.iterations,
                min: self.mech.min_iterations(),
                mechanism: self.mech.name(),
            });
        }
        let nonce = format!("{}{}", first.nonce, server_nonce);
        let server_first = format!(
            "r={},s={},i={}",
            nonce,
            B64.encode(&credential.salt),
            credential.iterations
        );
        Ok(Pending {
            credential,
            gs2_header: first.gs2_header,
            client_first_bare: first.bare,
            server_first,
            nonce,
            username: first.username,
            token_auth: first.token_auth,
        })
    }
}

fn client_final(
    mech: ScramMechanism,
    pending: &Pending,
    message: &[u8],
) -> Result<ScramStep, ScramError> {
    let bad = ScramError::InvalidClientFinal;
    let message = std::str::from_utf8(message).map_err(|_| bad("not UTF-8"))?;
    // The proof is the last attribute, and the auth message covers everything before it.
    let (without_proof, proof) = message
        .rsplit_once(",p=")
        .ok_or(bad("missing proof (p=)"))?;
    let mut attrs = without_proof.split(',');
    let channel_binding = attrs
        .next()
        .and_then(|a| a.strip_prefix("c="))
        .ok_or(bad("missing channel binding (c=)"))?;
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(bad("missing nonce (r=)"))?;
    // Kafka parses extensions here but leaves them out of the auth message it rebuilds, so a
    // client that sends any can never pass the proof check there; refusing them says so.
    if attrs.next().is_some() {
        return Err(bad("unexpected attribute before the proof"));
    }
    let channel_binding = B64
        .decode(channel_binding)
        .map_err(|_| bad("channel binding is not base64"))?;
    let proof = B64.decode(proof).map_err(|_| bad("proof is not base64"))?;

    // Kafka accepts a nonce that *ends with* the combined one (`endsWith` in
    // ScramSaslServer): librdkafka before 2.2 sends its own nonce twice (client nonce, then
    // the server's whole `r=`, which starts with it). The proof covers the message as sent
    // and the server part is fresh per exchange, so a replay still fails. Not secrets (the
    // nonce went out in clear), but compared in constant time all the same.
    let tail = nonce
        .len()
        .checked_sub(pending.nonce.len())
        .and_then(|start| nonce.as_bytes().get(start..))
        .unwrap_or_default();
    if tail.is_empty() || verify_slices_are_equal(tail, pending.nonce.as_bytes()).is_err() {
        return Err(ScramError::NonceMismatch);
    }
    // Without channel binding, `c=` must repeat the GS2 header byte for byte (RFC 5802 §5.1).
    if channel_binding != pending.gs2_header.as_bytes() {
        return Err(ScramError::ChannelBindingMismatch);
    }

    let auth_message = format!(
        "{},{},{}",
        pending.client_first_bare, pending.server_first, without_proof
    );
    let credential = &pending.credential;
    // ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage); the client knew the password
    // iff H(ClientKey) is the StoredKey.
    let client_signature = mech.hmac(&credential.stored_key, auth_message.as_bytes());
    if proof.len() != client_signature.len() {
        return Err(ScramError::InvalidClientCredentials);
    }
    let client_key: Vec<u8> = proof
        .iter()
        .zip(&client_signature)
        .map(|(p, s)| p ^ s)
        .collect();
    let computed_stored_key = mech.hash(&client_key);
    if verify_slices_are_equal(&computed_stored_key, &credential.stored_key).is_err() {
        return Err(ScramError::InvalidClientCredentials);
    }
    let server_signature = mech.hmac(&credential.server_key, auth_message.as_bytes());
    Ok(ScramStep::Done {
        server_final: format!("v={}", B64.encode(server_signature)).into_bytes(),
        username: pending.username.clone(),
        token_auth: pending.token_auth,
    })
}

/// A parsed client-first message.
#[derive(Debug)]
struct ClientFirst {
    /// As sent, both commas included: `c=` of client-final must carry exactly this.
    gs2_header: String,
    /// `a=` unescaped, if present.
    authzid: Option<String>,
    /// As sent: the auth message covers the client's bytes, not a rebuilt form.
    bare: String,
    username: String,
    nonce: String,
    token_auth: bool,
}

impl ClientFirst {
    fn parse(message: &[u8]) -> Result<ClientFirst, ScramError> {
        let bad = ScramError::InvalidClientFirst;
        let message = std::str::from_utf8(message).map_err(|_| bad("not UTF-8"))?;
        let (flag, rest) = message.split_once(',').ok_or(bad("missing GS2 header"))?;
        match flag {
            // "y": the client could bind but believes we cannot; we cannot, so that is fine.
            "n" | "y" => {}
            _ if flag.starts_with("p=") => return Err(bad("channel binding is not supported")),
            _ => return Err(bad("invalid channel binding flag")),
        }
        let (authz, bare) = rest.split_once(',').ok_or(bad("missing GS2 header"))?;
        let authzid = if authz.is_empty() {
            None
        } else {
            let name = authz
                .strip_prefix("a=")
                .ok_or(bad("invalid authorization id"))?;
            Some(decode_saslname(name).ok_or(bad("invalid authorization id"))?)
        };

        let mut attrs = bare.split(',');
        let first = attrs.next().unwrap_or_default();
        if first.starts_with("m=") {
            // RFC 5802: a mandatory extension must fail the exchange (Kafka ignores it).
            return Err(bad("mandatory extensions (m=) are not supported"));
        }
        let saslname = first
            .strip_prefix("n=")
            .ok_or(bad("missing username (n=)"))?;
        let username = decode_saslname(saslname).ok_or(bad("invalid username"))?;
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(bad("missing nonce (r=)"))?;
        if !is_printable(nonce) {
            return Err(bad("invalid nonce"));
        }
        let mut token_auth = false;
        for extension in attrs {
            let (key, value) = extension.split_once('=').ok_or(bad("invalid extension"))?;
            // Kafka's grammar: ALPHA+ "=" 1*(%x01-7F except ",").
            let key_ok = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphabetic());
            let value_ok = !value.is_empty() && value.bytes().all(|b| (0x01..=0x7f).contains(&b));
            if !key_ok || !value_ok {
                return Err(bad("invalid extension"));
            }
            // A repeated key: the last one counts (Kafka parses them into a map).
            if key == TOKEN_AUTH_EXTENSION {
                // Java's Boolean.parseBoolean.
                token_auth = value.eq_ignore_ascii_case("true");
            }
        }
        Ok(ClientFirst {
            gs2_header: format!("{flag},{authz},"),
            authzid,
            bare: bare.to_string(),
            username,
            nonce: nonce.to_string(),
            token_auth,
        })
    }
}

/// A saslname unescaped: "=2C" is ',', "=3D" is '=', any other '=' (and NUL, ',') invalid.
fn decode_saslname(name: &str) -> Option<String> {
    let plain_ok = |s: &str| !s.contains(['\0', ',']);
    let mut parts = name.split('=');
    let head = parts.next().unwrap_or_default();
    if name.is_empty() || !plain_ok(head) {
        return None;
    }
    let mut out = String::from(head);
    for part in parts {
        let (decoded, tail) = if let Some(tail) = part.strip_prefix("2C") {
            (',', tail)
        } else if let Some(tail) = part.strip_prefix("3D") {
            ('=', tail)
        } else {
            return None;
        };
        if !plain_ok(tail) {
            return None;
        }
        out.push(decoded);
        out.push_str(tail);
    }
    Some(out)
}

/// RFC 5802 `printable`: %x21-7E except ",", at least one.
fn is_printable(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// A fresh server nonce: base64 of random bytes, which is printable and has no ','.
fn random_nonce() -> Result<String, ScramError> {
    let mut bytes = [0u8; SERVER_NONCE_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ScramError::Random)?;
    Ok(B64.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ITERATIONS: u32 = 4096;

    /// A minimal SCRAM client after RFC 5802 §3, to drive the server.
    struct Client {
        mech: ScramMechanism,
        gs2_header: String,
        bare: String,
        nonce: String,
        password: Vec<u8>,
    }

    /// The client's half of the final exchange.
    struct ClientFinal {
        message: String,
        server_signature: Vec<u8>,
    }

    fn escape(name: &str) -> String {
        name.replace('=', "=3D").replace(',', "=2C")
    }

    impl Client {
        fn new(mech: ScramMechanism, user: &str, password: &str) -> Client {
            Client::with(mech, "n,,", user, "fyko+d2lbbFgONRv9qkxdawL", "", password)
        }

        /// `extensions` is appended to the bare message as is (e.g. ",tokenauth=true").
        fn with(
            mech: ScramMechanism,
            gs2_header: &str,
            user: &str,
            nonce: &str,
            extensions: &str,
            password: &str,
        ) -> Client {
            Client {
                mech,
                gs2_header: gs2_header.to_string(),
                bare: format!("n={},r={}{}", escape(user), nonce, extensions),
                nonce: nonce.to_string(),
                password: password.as_bytes().to_vec(),
            }
        }

        fn first(&self) -> Vec<u8> {
            format!("{}{}", self.gs2_header, self.bare).into_bytes()
        }

        fn finish(&self, server_first: &[u8]) -> ClientFinal {
            self.finish_with_binding(server_first, &self.gs2_header)
        }

        /// Client-final whose `r=` is `nonce` rather than the server's combined nonce.
        fn finish_with_nonce(&self, server_first: &[u8], nonce: &str) -> ClientFinal {
            self.finish_as(server_first, &self.gs2_header, Some(nonce))
        }

        /// Client-final with `c=` carrying `binding` (the GS2 header unless tampered with).
        fn finish_with_binding(&self, server_first: &[u8], binding: &str) -> ClientFinal {
            self.finish_as(server_first, binding, None)
        }

        fn finish_as(
            &self,
            server_first: &[u8],
            binding: &str,
            final_nonce: Option<&str>,
        ) -> ClientFinal {
            let server_first = std::str::from_utf8(server_first).unwrap();
            let mut attrs = server_first.split(',');
            let nonce = attrs.next().unwrap().strip_prefix("r=").unwrap();
            let salt = B64
                .decode(attrs.next().unwrap().strip_prefix("s=").unwrap())
                .unwrap();
            let iterations: u32 = attrs
                .next()
                .unwrap()
                .strip_prefix("i=")
                .unwrap()
                .parse()
                .unwrap();
            assert!(nonce.starts_with(&self.nonce), "the server kept our nonce");
            assert!(nonce.len() > self.nonce.len(), "and added its own");

            let mech = self.mech;
            let mut salted = vec![0u8; mech.output_len()];
            pbkdf2::derive(
                mech.pbkdf2_algorithm(),
                NonZeroU32::new(iterations).unwrap(),
                &salt,
                &self.password,
                &mut salted,
            );
            let client_key = mech.hmac(&salted, b"Client Key");
            let stored_key = mech.hash(&client_key);
            let without_proof = format!(
                "c={},r={}",
                B64.encode(binding),
                final_nonce.unwrap_or(nonce)
            );
            let auth_message = format!("{},{},{}", self.bare, server_first, without_proof);
            let signature = mech.hmac(&stored_key, auth_message.as_bytes());
            let proof: Vec<u8> = client_key
                .iter()
                .zip(&signature)
                .map(|(k, s)| k ^ s)
                .collect();
            let server_key = mech.hmac(&salted, b"Server Key");
            ClientFinal {
                message: format!("{without_proof},p={}", B64.encode(proof)),
                server_signature: mech.hmac(&server_key, auth_message.as_bytes()),
            }
        }
    }

    fn credential(mech: ScramMechanism, password: &str) -> ScramCredential {
        ScramCredential::from_password(mech, password.as_bytes(), None, ITERATIONS)
    }

    /// A store with one user.
    fn only<'a>(
        user: &'static str,
        cred: &'a ScramCredential,
    ) -> impl FnOnce(&str) -> Option<ScramCredential> + 'a {
        move |name| (name == user).then(|| cred.clone())
    }

    fn server_first(step: ScramStep) -> Vec<u8> {
        match step {
            ScramStep::Continue(message) => message,
            other => panic!("expected server-first, got {other:?}"),
        }
    }

    /// Runs client-first and returns the server waiting for client-final, and server-first.
    fn started(
        mech: ScramMechanism,
        client: &Client,
        cred: &ScramCredential,
    ) -> (ScramServer, Vec<u8>) {
        let mut server = ScramServer::new(mech);
        let first = server
            .step(&client.first(), |_| Some(cred.clone()))
            .unwrap();
        (server, server_first(first))
    }

    #[test]
    fn mechanism_names_types_and_iteration_bounds_are_kafkas() {
        for mech in [ScramMechanism::Sha256, ScramMechanism::Sha512] {
            assert_eq!(ScramMechanism::from_name(mech.name()), Some(mech));
            assert_eq!(
                ScramMechanism::from_kafka_type(mech.kafka_type()),
                Some(mech)
            );
            assert_eq!(
                (mech.min_iterations(), mech.max_iterations()),
                (4096, 16384)
            );
        }
        assert_eq!(ScramMechanism::Sha256.name(), "SCRAM-SHA-256");
        assert_eq!(ScramMechanism::Sha512.name(), "SCRAM-SHA-512");
        assert_eq!(ScramMechanism::Sha256.kafka_type(), 1);
        assert_eq!(ScramMechanism::Sha512.kafka_type(), 2);
        assert_eq!(ScramMechanism::from_name("scram-sha-256"), None);
        assert_eq!(ScramMechanism::from_name("SCRAM-SHA-1"), None);
        assert_eq!(ScramMechanism::from_kafka_type(0), None);
        assert_eq!(ScramMechanism::from_kafka_type(3), None);
    }

    #[test]
    fn a_full_exchange_succeeds_for_both_mechanisms() {
        for mech in [ScramMechanism::Sha256, ScramMechanism::Sha512] {
            let cred = credential(mech, "alice-secret");
            let client = Client::new(mech, "alice", "alice-secret");
            let mut server = ScramServer::new(mech);
            let first = server_first(server.step(&client.first(), only("alice", &cred)).unwrap());
            assert!(!server.is_complete());
            let fin = client.finish(&first);
            let step = server
                .step(fin.message.as_bytes(), |_| unreachable!())
                .unwrap();
            let expected = format!("v={}", B64.encode(&fin.server_signature)).into_bytes();
            assert_eq!(
                step,
                ScramStep::Done {
                    server_final: expected,
                    username: "alice".into(),
                    token_auth: false,
                },
                "{mech:?}: the client verifies the server's signature"
            );
            assert!(server.is_complete());
        }
    }

    #[test]
    fn rfc7677_test_vector() {
        let mech = ScramMechanism::Sha256;
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let cred = ScramCredential::from_password(mech, b"pencil", Some(&salt), 4096);
        let client = Client::with(mech, "n,,", "user", "rOprNGfwEbeRWgbNEkqO", "", "pencil");
        assert_eq!(client.first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");

        let mut server = ScramServer::with_nonce(mech, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
        let first = server_first(server.step(&client.first(), only("user", &cred)).unwrap());
        assert_eq!(
            std::str::from_utf8(&first).unwrap(),
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,\
             i=4096"
        );
        let fin = client.finish(&first);
        assert_eq!(
            fin.message,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        let ScramStep::Done { server_final, .. } =
            server.step(fin.message.as_bytes(), |_| None).unwrap()
        else {
            panic!("not done")
        };
        assert_eq!(
            std::str::from_utf8(&server_final).unwrap(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn a_credential_from_the_salted_password_equals_one_from_the_password() {
        for mech in [ScramMechanism::Sha256, ScramMechanism::Sha512] {
            let cred = credential(mech, "pw");
            let mut salted = vec![0u8; mech.output_len()];
            pbkdf2::derive(
                mech.pbkdf2_algorithm(),
                NonZeroU32::new(ITERATIONS).unwrap(),
                &cred.salt,
                b"pw",
                &mut salted,
            );
            let again =
                ScramCredential::from_salted_password(mech, &salted, &cred.salt, ITERATIONS);
            assert_eq!(again, cred);
            assert_eq!(cred.stored_key.len(), mech.output_len());
            // Random salts differ, and so do the keys.
            assert_ne!(credential(mech, "pw").salt, cred.salt);
            // Debug output keeps the keys out.
            let shown = format!("{cred:?}");
            assert!(!shown.contains(&format!("{:?}", cred.stored_key)));
            assert!(shown.contains("redacted"));
        }
    }

    #[test]
    fn a_wrong_password_fails() {
        let mech = ScramMechanism::Sha512;
        let cred = credential(mech, "right");
        let client = Client::new(mech, "alice", "wrong");
        let (mut server, first) = started(mech, &client, &cred);
        let fin = client.finish(&first);
        assert_eq!(
            server.step(fin.message.as_bytes(), |_| None),
            Err(ScramError::InvalidClientCredentials)
        );
        assert!(!server.is_complete());
    }

    #[test]
    fn a_tampered_proof_fails() {
        let mech = ScramMechanism::Sha256;
        let cred = credential(mech, "pw");
        let client = Client::new(mech, "alice", "pw");
        let tamperings: [fn(Vec<u8>) -> Vec<u8>; 5] = [
            |mut p| {
                p[0] ^= 1;
                p
            },
            |p| p[1..].to_vec(),               // too short
            |p| [p.as_slice(), &[0]].concat(), // too long
            |p| vec![0; p.len()],
            |_| Vec::new(),
        ];
        for tamper in tamperings {
            let (mut server, first) = started(mech, &client, &cred);
            let fin = client.finish(&first);
            let (without_proof, proof) = fin.message.rsplit_once(",p=").unwrap();
            let proof = tamper(B64.decode(proof).unwrap());
            let message = format!("{without_proof},p={}", B64.encode(proof));
            assert_eq!(
                server.step(message.as_bytes(), |_| None),
                Err(ScramError::InvalidClientCredentials),
                "{message}"
            );
        }
    }

    #[test]
    fn a_nonce_ending_with_the_combined_one_is_accepted_as_kafka_does() {
        // librdkafka 2.0 sends `r=<client nonce><server's r=>`.
        let mech = ScramMechanism::Sha512;
        let cred = credential(mech, "pw");
        let client = Client::new(mech, "alice", "pw");
        let (mut server, first) = started(mech, &client, &cred);
        let first_text = String::from_utf8(first.clone()).unwrap();
        let combined = first_text
            .split(',')
            .next()
            .unwrap()
            .strip_prefix("r=")
            .unwrap()
            .to_string();
        let doubled = format!("{}{combined}", client.nonce);
        let fin = client.finish_with_nonce(&first, &doubled);
        assert!(matches!(
            server.step(fin.message.as_bytes(), |_| None),
            Ok(ScramStep::Done { .. })
        ));
    }

    #[test]
    fn a_client_final_replayed_into_another_exchange_fails() {
        let mech = ScramMechanism::Sha256;
        let cred = credential(mech, "pw");
        let client = Client::new(mech, "alice", "pw");
        let (mut one, first_one) = started(mech, &client, &cred);
        let (mut two, first_two) = started(mech, &client, &cred);
        assert_ne!(
            first_one, first_two,
            "every exchange has a fresh server nonce"
        );
        let fin = client.finish(&first_one);
        assert_eq!(
            two.step(fin.message.as_bytes(), |_| None),
            Err(ScramError::NonceMismatch)
        );
        assert!(matches!(
            one.step(fin.message.as_bytes(), |_| None),
            Ok(ScramStep::Done { .. })
        ));
        // And not twice into the same one.
        assert_eq!(
            one.step(fin.message.as_bytes(), |_| None),
            Err(ScramError::IllegalState("COMPLETE"))
        );
    }

    #[test]
    fn a_tampered_channel_binding_fails() {
        let mech = ScramMechanism::Sha256;
        let cred = credential(mech, "pw");
        let client = Client::new(mech, "alice", "pw");
        // Even with a proof computed over the tampered binding (the client itself lies, or a
        // peer that knows the password): `c=` must repeat the GS2 header.
        for binding in ["y,,", "n,a=alice,", "p=tls-unique,,", ""] {
            let (mut server, first) = started(mech, &client, &cred);
            let fin = client.finish_with_binding(&first, binding);
            assert_eq!(
                server.step(fin.message.as_bytes(), |_| None),
                Err(ScramError::ChannelBindingMismatch),
                "{binding:?}"
            );
        }
        // A binding swapped in after the proof was computed.
        let (mut server, first) = started(mech, &client, &cred);
        let fin = client.finish(&first);
        let swapped = fin.message.replacen("c=biws", "c=eSws", 1);
        assert_ne!(swapped, fin.message);
        assert_eq!(
            server.step(swapped.as_bytes(), |_| None),
            Err(ScramError::ChannelBindingMismatch)
        );
    }

    #[test]
    fn the_y_flag_is_accepted_and_channel_binding_refused() {
        let mech = ScramMechanism::Sha256;
        let cred = credential(mech, "pw");
        let client = Client::with(mech, "y,,", "alice", "abc", "", "pw");
        let (mut server, first) = started(mech, &client, &cred);
        let fin = client.finish(&first);
        assert!(fin.message.starts_with("c=eSws,"));
        assert!(matches!(
            server.step(fin.message.as_bytes(), |_| None),
            Ok(ScramStep::Done { .. })
        ));

        let mut server = ScramServer::new(mech);
        assert_eq!(
            server.step(b"p=tls-server-end-point,,n=alice,r=abc", |_| Some(
                cred.clone()
            )),
            Err(ScramError::InvalidClientFirst(
                "channel binding is not supported"
            ))
        );
    }

    #[test]
    fn an_unknown_user_fails_at_client_first() {
        let mech = ScramMechanism::Sha256;
        let cred = credential(mech, "pw");
        let client = Client::new(mech, "mallory", "pw");
        let mut server = ScramServer::new(mech);
        let err = server
            .step(&client.first(), only("alice", &cred))
            .unwrap_err();
        assert_eq!(err, ScramError::InvalidUserCredentials);
        assert_eq!(
            err.to_string(),
            "Authentication failed: Invalid user credentials"
        );
        assert!(
            !err.is_client_visible(),
            "the client only sees Kafka's generic message"
        );
        assert_eq!(
            server.step(&client.first(), |_| Some(cred.clone())),
            Err(ScramError::IllegalState("FAILED")),
            "a failed exchange stays failed"
        );
    }

    #[test]
    fn the_authorization_id_must_be_the_username() {
        let mech = ScramMechanism::Sha256;
        let cred = credential(mech, "pw");
        for (authz, user) in [("n,a=alice,", "alice"), ("n,a=a=2Cb,", "a,b")] {
            let client = Client::with(mech, authz, user, "abc", "", "pw");
            let (mut server, first) = started(mech, &client, &cred);
            let fin = client.finish(&first);
            assert!(
                matches!(
                    server.step(fin.message.as_bytes(), |_| None),
                    Ok(ScramStep::Done { username, .. }) if username == user
                ),
                "{authz}"
            );
        }
        let client = Client::with(mech, "n,a=admin,", "alice", "abc", "", "pw");
        let err = ScramServer::new(mech)
            .step(&client.first(), |_| Some(cred.clone()))
            .unwrap_err();
        assert_eq!(err, ScramError::AuthzIdMismatch);
        assert!(err.is_client_visible());
        assert_eq!(
            err.to_string(),
            "Authentication failed: Client requested an authorization id that is different from \
             username"
        );
        // An unknown user is reported as such first, as in Kafka.
        assert_eq!(
            ScramServer::new(mech).step(&client.first(), |_| None),
            Err(ScramError::InvalidUserCredentials)
        );
    }

    #[test]
    fn saslname_escapes_round_trip_and_bad_escapes_fail() {
        let mech = ScramMechanism::Sha512;
        let cred = credential(mech, "pw");
        for user in ["a,b=c", "=,", "==2C", "ünïcode user", "x=3D"] {
            let client = Client::with(mech, "n,,", user, "abc", "", "pw");
            assert!(!escape(user).contains(','));
            let mut server = ScramServer::new(mech);
            let mut looked_up = String::new();
            let first = server_first(
                server
                    .step(&client.first(), |name| {
                        looked_up = name.to_string();
                        Some(cred.clone())
                    })
                    .unwrap(),
            );
            assert_eq!(looked_up, user);
            let fin = client.finish(&first);
            assert!(
                matches!(
                    server.step(fin.message.as_bytes(), |_| None),
                    Ok(ScramStep::Done { ref username, .. }) if username == user
                ),
                "{user}"
            );
        }
        for name in ["a=2c", "a=", "=", "a=41", "=3", "a=2Cb=", "a\0b"] {
            let message = format!("n,,n={name},r=abc");
            let result = ScramServer::new(mech).step(message.as_bytes(), |_| {
                panic!("no look-up for an invalid name")
            });
            assert_eq!(
                result,
                Err(ScramError::InvalidClientFirst("invalid username")),
                "{name:?}"
            );
            let message = format!("n,a={name},n=a,r=abc");
            let result = ScramServer::new(mech).step(message.as_bytes(), |_| {
                panic!("no look-up for an invalid authorization id")
            });
            assert_eq!(
                result,
                Err(ScramError::InvalidClientFirst("invalid authorization id")),
                "{name:?}"
            );
        }
    }

    #[test]
    fn malformed_client_first_messages_fail() {
        let cred = credential(ScramMechanism::Sha256, "pw");
        let cases: &[&[u8]] = &[
            b"",
            b"n",
            b"n,",
            b"n,,",
            b",,n=a,r=b",
            b"x,,n=a,r=b",
            b"nn,,n=a,r=b",
            b"n,a,n=a,r=b",
            b"n,a=,n=a,r=b",
            b"n,b=x,n=a,r=b",
            b"n,,n=a",
            b"n,,n=a,",
            b"n,,n=a,r=",
            b"n,,n=,r=b",
            b"n,,r=b,n=a",
            b"n,,n=a,r=b,",
            b"n,,n=a,r=b c",
            b"n,,n=a,r=\xc3\xa9",
            b"n,,n=a,r=b,tokenauth",
            b"n,,n=a,r=b,tokenauth=",
            b"n,,n=a,r=b,token1=x",
            b"n,,n=a,r=b,=x",
            b"n,,n=a,r=b,k=\xc3\xa9",
            b"n,,m=ext,n=a,r=b",
            b"n,,x=a,r=b",
            b"n,,n=a,x=b",
            b"n,,n=\xff,r=b",
            b"\xff,,n=a,r=b",
        ];
        for &message in cases {
            let mut server = ScramServer::new(ScramMechanism::Sha256);
            let result = server.step(message, |_| Some(cred.clone()));
            assert!(
                matches!(result, Err(ScramError::InvalidClientFirst(_))),
                "{:?}: {result:?}",
                String::from_utf8_lossy(message)
            );
        }
    }

    #[test]
    fn malformed_client_final_messages_fail() {
        let mech = ScramMechanism::Sha256;
        let cred = credential(mech, "pw");
        let client = Client::new(mech, "alice", "pw");
        let (_, first) = started(mech, &client, &cred);
        let good = client.finish(&first).message;
        let (without_proof, proof) = good.rsplit_once(",p=").unwrap();
        let nonce_attr = without_proof.split(',').nth(1).unwrap();
        let cases = [
            String::new(),
            "garbage".to_string(),
            without_proof.to_string(),
            format!("p={proof}"),
            format!("{nonce_attr},c=biws,p={proof}"),
            format!("c=biws,p={proof}"),
            format!("{nonce_attr},p={proof}"),
            format!("c=b!ws,{nonce_attr},p={proof}"),
            format!("c=biw,{nonce_attr},p={proof}"),
            format!("{without_proof},p=***"),
            format!("{without_proof},p={proof},x=1"),
            format!("{without_proof},ext=1,p={proof}"),
            format!("{without_proof},p={proof},p={proof}"),
            format!("x=1,{without_proof},p={proof}"),
            format!("{without_proof}\u{ff},p={proof}"),
        ];
        for message in cases {
            // The same client-first (same client nonce) with a fresh server each time.
            let (mut server, _) = started(mech, &client, &cred);
            let result = server.step(message.as_bytes(), |_| None);
            assert!(
                matches!(
                    result,
                    Err(ScramError::InvalidClientFinal(_) | ScramError::NonceMismatch)
                ),
                "{message}: {result:?}"
            );
        }
        let (mut server, _) = started(mech, &client, &cred);
        assert_eq!(
            server.step(b"c=biws,r=x\xff,p=", |_| None),
            Err(ScramError::InvalidClientFinal("not UTF-8"))
        );
    }

    #[test]
    fn the_exchange_is_one_shot() {
        let mech = ScramMechanism::Sha256;
        let cred = credential(mech, "pw");
        let client = Client::new(mech, "alice", "pw");
        let (mut server, first) = started(mech, &client, &cred);
        let fin = client.finish(&first);
        assert!(server.step(fin.message.as_bytes(), |_| None).is_ok());
        for message in [client.first(), fin.message.into_bytes(), Vec::new()] {
            let err = server.step(&message, |_| Some(cred.clone())).unwrap_err();
            assert!(err.is_illegal_state(), "{err}");
        }
        assert!(
            !server.is_complete(),
            "as Kafka's, a late message fails the exchange"
        );

        // A failure at client-final is final too.
        let (mut server, first) = started(mech, &client, &cred);
        let fin = client.finish(&first);
        assert!(server.step(b"garbage", |_| None).is_err());
        assert_eq!(
            server.step(fin.message.as_bytes(), |_| None),
            Err(ScramError::IllegalState("FAILED"))
        );
    }

    #[test]
    fn a_truncated_exchange_just_waits() {
        let mech = ScramMechanism::Sha256;
        let cred = credential(mech, "pw");
        let client = Client::new(mech, "alice", "pw");
        let (server, _) = started(mech, &client, &cred);
        assert!(!server.is_complete());
        assert!(format!("{server:?}").contains("RECEIVE_CLIENT_FINAL_MESSAGE"));
        assert!(!format!("{server:?}").contains(&B64.encode(&cred.stored_key)));
        drop(server);
    }

    #[test]
    fn the_server_nonce_is_fresh_and_printable() {
        let mech = ScramMechanism::Sha256;
        let cred = credential(mech, "pw");
        let client = Client::new(mech, "alice", "pw");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let (_, first) = started(mech, &client, &cred);
            let first = String::from_utf8(first).unwrap();
            let nonce = first.split(',').next().unwrap().strip_prefix("r=").unwrap();
            let ours = nonce.strip_prefix(&client.nonce).unwrap();
            assert!(ours.len() >= 32, "{ours}");
            assert!(is_printable(ours), "{ours}");
            assert!(seen.insert(ours.to_string()));
        }
    }

    #[test]
    fn the_tokenauth_extension_is_reported() {
        let mech = ScramMechanism::Sha256;
        let cred = credential(mech, "token-hmac");
        for (extensions, expected) in [
            (",tokenauth=true", true),
            (",tokenauth=TRUE", true),
            (",tokenauth=false", false),
            (",tokenauth=yes", false),
            (",other=1,tokenauth=true", true),
            (",tokenauth=true,tokenauth=false", false),
            (",unknown=ignored", false),
            ("", false),
        ] {
            let client = Client::with(mech, "n,,", "token-id", "abc", extensions, "token-hmac");
            let mut server = ScramServer::new(mech);
            let mut asked = None;
            let first = server_first(
                server
                    .step_with(&client.first(), |lookup| {
                        asked = Some((lookup.username.to_string(), lookup.token_auth));
                        Some(cred.clone())
                    })
                    .unwrap(),
            );
            assert_eq!(
                asked,
                Some(("token-id".to_string(), expected)),
                "{extensions}"
            );
            let fin = client.finish(&first);
            assert!(
                matches!(
                    server.step(fin.message.as_bytes(), |_| None),
                    Ok(ScramStep::Done { token_auth, .. }) if token_auth == expected
                ),
                "{extensions}"
            );
        }
        let client = Client::with(mech, "n,,", "nope", "abc", ",tokenauth=true", "x");
        let err = ScramServer::new(mech)
            .step(&client.first(), |_| None)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Token Authentication failed: Invalid tokenId : nope"
        );
    }

    #[test]
    fn too_few_iterations_are_refused_at_authentication() {
        // Kafka's ScramSaslServer checks the stored count against the minimum.
        let mech = ScramMechanism::Sha256;
        let cred = ScramCredential::from_password(mech, b"pw", None, 4095);
        let client = Client::new(mech, "alice", "pw");
        let err = ScramServer::new(mech)
            .step(&client.first(), |_| Some(cred.clone()))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Iterations 4095 is less than the minimum 4096 for SCRAM-SHA-256"
        );
        assert_eq!(
            ScramCredential::from_password(mech, b"pw", Some(b"s"), 0).iterations,
            1
        );
    }

    /// xorshift64: a deterministic stream without extra crates.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        /// Random bytes, biased towards SCRAM's own characters to get past the first check.
        fn message(&mut self, templates: &[&[u8]]) -> Vec<u8> {
            const ALPHABET: &[u8] = b"nyparmciv=,23CD+/biws\0\xff\xc3";
            match self.below(3) {
                0 => (0..self.below(64)).map(|_| self.next() as u8).collect(),
                1 => (0..self.below(64))
                    .map(|_| ALPHABET[self.below(ALPHABET.len())])
                    .collect(),
                _ => {
                    // A valid message truncated and mutated.
                    let mut m = templates[self.below(templates.len())].to_vec();
                    m.truncate(self.below(m.len() + 1));
                    for _ in 0..self.below(4) {
                        if m.is_empty() {
                            break;
                        }
                        let at = self.below(m.len());
                        m[at] = ALPHABET[self.below(ALPHABET.len())];
                    }
                    m
                }
            }
        }
    }

    #[test]
    fn random_inputs_never_panic_the_server() {
        let mech = ScramMechanism::Sha256;
        let cred = credential(mech, "pw");
        let client = Client::with(mech, "n,,", "a=,b", "abc", ",tokenauth=true", "pw");
        let (_, first) = started(mech, &client, &cred);
        let fin = client.finish(&first).message.into_bytes();
        let templates: &[&[u8]] = &[
            &client.first(),
            &fin,
            b"n,a=x,n=x,r=y",
            b"c=biws,r=x,p=AA==",
        ];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..4000 {
            let message = rng.message(templates);
            // At client-first, with and without a user.
            let known = rng.below(2) == 0;
            let _ = ScramServer::new(mech).step(&message, |_| known.then(|| cred.clone()));
            // At client-final.
            let (mut server, _) = started(mech, &client, &cred);
            let _ = server.step(&message, |_| None);
            // And after either, once more.
            let _ = server.step(&message, |_| None);
        }
    }
}
