//! Who a connection speaks for: its listener, peer and principal, and the SASL exchange
//! that establishes the principal on SASL listeners (Kafka's SaslServerAuthenticator).
//!
//! On a SASL listener only ApiVersions, SaslHandshake and SaslAuthenticate are answered
//! until the exchange succeeds; anything else closes the connection, as Kafka does. A
//! failed exchange is answered (SASL_AUTHENTICATION_FAILED with the reason) and then the
//! connection closes. With `connections.max.reauth.ms` set, the session lasts that long
//! (KIP-368): the client re-authenticates on the same connection, or the first request it
//! sends after expiry closes it. An OAUTHBEARER session also ends when its token expires,
//! whether or not `connections.max.reauth.ms` is set (as in Kafka: the credential's expiry is
//! the session's).

use crate::Broker;
use crate::authz::RequestContext;
use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use shale_security::audit::{self, AuditEvent, Auditor, Outcome};
use shale_security::listener::{ListenerSecurity, SaslMechanism};
use shale_security::oauth::{JwtValidator, OAuthBearerServer, OAuthError, OAuthStep};
use shale_security::principal::KafkaPrincipal;
use shale_security::scram::{ScramServer, ScramStep};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Kafka's `sasl.server.max.receive.size` default.
const SASL_MAX_RECEIVE_SIZE: usize = 512 * 1024;

/// The identity and SASL state of one connection.
pub(crate) struct Session {
    pub listener: Arc<ListenerSecurity>,
    pub peer: SocketAddr,
    /// `User:ANONYMOUS` until established (by the TLS certificate or SASL).
    pub principal: KafkaPrincipal,
    /// What the authorization gate sees of this connection, kept in step with `principal`.
    pub ctx: RequestContext,
    state: State,
    /// When the current SASL session ends (KIP-368); `None`: it does not.
    expires: Option<Instant>,
    /// The mechanism of the last successful exchange (`None` before one): a
    /// re-authentication must use it again and prove the same principal.
    authenticated_with: Option<SaslMechanism>,
    /// The mechanism the exchange in progress uses.
    authenticating_with: Option<SaslMechanism>,
    /// Where authentications are recorded (the listener sets it).
    pub auditor: Auditor,
    /// Until when nothing more is read from the connection: a client over its quota is
    /// muted for its throttle time (KIP-219).
    pub muted_until: Arc<parking_lot::Mutex<Option<Instant>>>,
}

enum State {
    /// Requests may flow: no SASL on this listener, or an exchange has succeeded.
    Established,
    /// A SASL listener before (or, re-authenticating, between) exchanges: waiting for
    /// SaslHandshake.
    Handshake,
    /// After SaslHandshake: SaslAuthenticate carries the mechanism's messages.
    Authenticating(Exchange),
}

enum Exchange {
    Plain,
    Scram(Box<ScramServer>),
    /// With the listener's validator (and so its JWKS cache), taken at the handshake.
    OAuth(Box<OAuthBearerServer>, Arc<JwtValidator>),
}

/// A successful exchange: who the connection is now, and for how long (`None`: no limit).
struct Authenticated {
    principal: KafkaPrincipal,
    lifetime: Option<Duration>,
}

/// A failed exchange: the error code and message the client gets, and the reason logged
/// (which may say more than the client is told).
struct Refusal {
    code: ResponseError,
    message: String,
    reason: String,
}

impl Refusal {
    /// A refusal whose message is its reason.
    fn told(message: String) -> Refusal {
        Refusal {
            code: ResponseError::SaslAuthenticationFailed,
            reason: message.clone(),
            message,
        }
    }

    /// As Kafka's `SaslServerAuthenticator` answers the failures it does not explain.
    fn generic(mechanism: &str, reason: String) -> Refusal {
        Refusal {
            code: ResponseError::SaslAuthenticationFailed,
            message: format!(
                "Authentication failed during authentication due to invalid credentials with \
                 SASL mechanism {mechanism}"
            ),
            reason,
        }
    }

    fn oauth(e: &OAuthError) -> Refusal {
        if e.is_illegal_state() {
            // Names only the exchange's state: nothing the client sent.
            Refusal {
                code: ResponseError::IllegalSaslState,
                message: e.to_string(),
                reason: e.reason(),
            }
        } else if e.is_client_visible() {
            // A refused token: the client is told `{"status":"invalid_token"}` (Kafka's
            // text), the log says why.
            Refusal {
                code: ResponseError::SaslAuthenticationFailed,
                message: e.to_string(),
                reason: e.reason(),
            }
        } else {
            Refusal::generic(SaslMechanism::OAuthBearer.name(), e.reason())
        }
    }
}

/// What the connection does with a request, given the session.
pub(crate) enum Admit {
    /// Dispatch it.
    Serve,
    /// Send this response (a SASL step) and keep reading.
    Answer(kafka_protocol::messages::ResponseKind),
    /// Send this response, then close (a refused exchange).
    AnswerAndClose(kafka_protocol::messages::ResponseKind),
    /// Close without answering.
    Close,
}

impl Session {
    pub(crate) fn new(
        listener: Arc<ListenerSecurity>,
        peer: SocketAddr,
        principal: KafkaPrincipal,
    ) -> Session {
        let state = if listener.protocol.uses_sasl() {
            State::Handshake
        } else {
            State::Established
        };
        let ctx = RequestContext {
            principal: principal.clone(),
            host: acl_host(peer.ip()),
            listener: Arc::from(listener.name.as_str()),
            inter_broker: false,
        };
        Session {
            listener,
            peer,
            principal,
            ctx,
            state,
            expires: None,
            authenticated_with: None,
            authenticating_with: None,
            auditor: Auditor::disabled(),
            muted_until: Default::default(),
        }
    }

    /// A session on a plaintext listener (tests and the fuzz target drive the broker so).
    pub(crate) fn anonymous(peer: SocketAddr) -> Session {
        Session::new(
            Arc::new(ListenerSecurity::plaintext("PLAINTEXT")),
            peer,
            KafkaPrincipal::anonymous(),
        )
    }

    /// The session of a request another node relays over the node-to-node transport:
    /// `from` is the node its certificate names (`None` without mTLS).
    pub(crate) fn node(from: Option<u64>) -> Session {
        let principal = match from {
            Some(id) => KafkaPrincipal::user(shale_security::node::node_name(id)),
            None => KafkaPrincipal::anonymous(),
        };
        let mut session = Session::new(
            Arc::new(ListenerSecurity::plaintext("CONTROLLER")),
            SocketAddr::from(([127, 0, 0, 1], 0)),
            principal,
        );
        session.ctx.inter_broker = true;
        session
    }

    /// Whether a request of `api` may be dispatched now.
    pub(crate) fn admit(&self, api: ApiKey) -> Admit {
        match (&self.state, api) {
            (_, ApiKey::ApiVersions) => Admit::Serve,
            (State::Established, _) if self.expired() => {
                tracing::info!(
                    peer = %self.peer, principal = %self.principal, ?api,
                    "SASL session expired (connections.max.reauth.ms, or the OAUTHBEARER token's expiry); closing"
                );
                // KIP-368: a session not renewed in time is refused like a failed
                // authentication, and audited as one (it names who it was).
                let mechanism = self.authenticated_with.map_or("", SaslMechanism::name);
                let _ = self.auditor.record(
                    AuditEvent::authentication(
                        self.audit_client(),
                        mechanism,
                        Some(self.principal.to_string()),
                        Outcome::Failed,
                    )
                    .with_reason(
                        "SASL session expired before re-authentication: connection closed"
                            .to_string(),
                    ),
                );
                Admit::Close
            }
            (State::Established, _) => Admit::Serve,
            // Re-authenticating: the old session serves until it expires.
            (State::Handshake | State::Authenticating(_), _)
                if self.expires.is_some() && !self.expired() =>
            {
                Admit::Serve
            }
            _ => {
                tracing::info!(
                    peer = %self.peer, ?api, listener = %self.listener.name,
                    "request before SASL authentication; closing"
                );
                Admit::Close
            }
        }
    }

    /// The largest frame the connection reads now: before a SASL listener's client has
    /// authenticated, Kafka's `sasl.server.max.receive.size` (512 KiB), so that an
    /// unauthenticated peer cannot make the node buffer and decode large requests.
    pub(crate) fn frame_limit(&self, configured: usize) -> usize {
        if self.sasl_enabled() && self.authenticated_with.is_none() {
            configured.min(SASL_MAX_RECEIVE_SIZE)
        } else {
            configured
        }
    }

    fn expired(&self) -> bool {
        self.expires.is_some_and(|t| Instant::now() >= t)
    }

    fn sasl_enabled(&self) -> bool {
        self.listener.protocol.uses_sasl()
    }

    pub(crate) fn handshake(&mut self, version: i16, req: SaslHandshakeRequest) -> Admit {
        use kafka_protocol::messages::ResponseKind::SaslHandshake;
        let mechanisms: Vec<StrBytes> = self
            .listener
            .sasl_mechanisms
            .iter()
            .map(|m| StrBytes::from_static_str(m.name()))
            .collect();
        let response = |code: Option<ResponseError>| {
            SaslHandshake(
                SaslHandshakeResponse::default()
                    .with_error_code(code.map_or(0, |c| c.code()))
                    .with_mechanisms(mechanisms.clone()),
            )
        };
        // A handshake is the start of an exchange: on a plaintext listener, or in the middle
        // of one, it is out of place.
        if !self.sasl_enabled()
            || (matches!(self.state, State::Established) && self.expires.is_none())
        {
            // No SASL on this listener, or an authenticated session that does not expire
            // (re-authentication is off): Kafka answers and keeps the connection.
            return Admit::Answer(response(Some(ResponseError::IllegalSaslState)));
        }
        let in_place = match self.state {
            State::Handshake | State::Established => true,
            State::Authenticating(_) => false,
        };
        // Every refusal from here on ends the exchange: each is an authentication failure
        // (logged, counted and audited), as a failed SaslAuthenticate is.
        let requested = req.mechanism.as_str();
        if !in_place {
            self.refuse_handshake(requested, "SaslHandshake out of place");
            return Admit::AnswerAndClose(response(Some(ResponseError::IllegalSaslState)));
        }
        if version == 0 {
            self.refuse_handshake(
                requested,
                "SaslHandshake v0 (unframed SASL tokens) is not supported",
            );
            return Admit::AnswerAndClose(response(Some(ResponseError::UnsupportedVersion)));
        }
        let Some(mech) = self
            .listener
            .sasl_mechanisms
            .iter()
            .copied()
            .find(|m| m.name() == requested)
        else {
            self.refuse_handshake(requested, "SASL mechanism not enabled");
            return Admit::AnswerAndClose(response(Some(ResponseError::UnsupportedSaslMechanism)));
        };
        if self.authenticated_with.is_some_and(|m| m != mech) {
            self.refuse_handshake(requested, "re-authentication with another SASL mechanism");
            return Admit::AnswerAndClose(response(Some(ResponseError::IllegalSaslState)));
        }
        let exchange = match mech {
            SaslMechanism::Plain => Exchange::Plain,
            SaslMechanism::Scram(m) => Exchange::Scram(Box::new(ScramServer::new(m))),
            SaslMechanism::OAuthBearer => {
                let Some(validator) = self.listener.oauth_validator.clone() else {
                    // The listener was served without `connect_oauth`: a bug in start-up,
                    // not the client's doing; it is refused as if OAUTHBEARER were off.
                    tracing::error!(
                        peer = %self.peer, listener = %self.listener.name,
                        "OAUTHBEARER is enabled but the listener has no token validator; refusing"
                    );
                    return Admit::AnswerAndClose(response(Some(
                        ResponseError::UnsupportedSaslMechanism,
                    )));
                };
                Exchange::OAuth(Box::new(OAuthBearerServer::new()), validator)
            }
        };
        self.authenticating_with = Some(mech);
        self.state = State::Authenticating(exchange);
        Admit::Answer(response(None))
    }

    pub(crate) async fn authenticate(
        &mut self,
        broker: &Broker,
        version: i16,
        req: SaslAuthenticateRequest,
    ) -> Admit {
        use kafka_protocol::messages::ResponseKind::SaslAuthenticate;
        if matches!(self.state, State::Established) {
            // Nothing to authenticate: Kafka answers and keeps the connection.
            return Admit::Answer(SaslAuthenticate(
                SaslAuthenticateResponse::default()
                    .with_error_code(ResponseError::IllegalSaslState.code())
                    .with_error_message(Some(StrBytes::from_static_str(
                        "SaslAuthenticate request received after successful authentication",
                    ))),
            ));
        }
        let State::Authenticating(exchange) = &mut self.state else {
            tracing::info!(peer = %self.peer, "SaslAuthenticate before SaslHandshake; closing");
            return Admit::AnswerAndClose(SaslAuthenticate(
                SaslAuthenticateResponse::default()
                    .with_error_code(ResponseError::IllegalSaslState.code())
                    .with_error_message(Some(StrBytes::from_static_str(
                        "Unexpected SaslAuthenticate request before SaslHandshake",
                    ))),
            ));
        };
        let max_reauth = self.listener.max_reauth;
        let step: Result<(Bytes, Option<Authenticated>), Refusal> = match exchange {
            Exchange::Plain => self
                .listener
                .plain_users
                .authenticate(&req.auth_bytes)
                .map(|user| {
                    let principal = KafkaPrincipal::user(user);
                    let lifetime = max_reauth;
                    (
                        Bytes::new(),
                        Some(Authenticated {
                            principal,
                            lifetime,
                        }),
                    )
                })
                .map_err(|e| Refusal::told(e.to_string())),
            Exchange::Scram(server) => {
                let mechanism = server.mechanism();
                let lookup = |user: &str| broker.scram_credential(user, mechanism);
                match server.step(&req.auth_bytes, lookup) {
                    Ok(ScramStep::Continue(first)) => Ok((Bytes::from(first), None)),
                    Ok(ScramStep::Done {
                        server_final,
                        username,
                        token_auth,
                    }) => {
                        if token_auth {
                            // Delegation tokens are not issued by Shale, so none can be valid.
                            Err(Refusal::told(
                                "Authentication failed: delegation tokens are not supported"
                                    .to_string(),
                            ))
                        } else {
                            let principal = KafkaPrincipal::user(username);
                            let lifetime = max_reauth;
                            let done = Authenticated {
                                principal,
                                lifetime,
                            };
                            Ok((Bytes::from(server_final), Some(done)))
                        }
                    }
                    // Kafka tells the client only the authorization-id mismatch; every
                    // other reason is logged and the client gets the generic text.
                    Err(e) if e.is_client_visible() => Err(Refusal::told(e.to_string())),
                    Err(e) => Err(Refusal::generic(mechanism.name(), e.to_string())),
                }
            }
            Exchange::OAuth(server, validator) => {
                let now = SystemTime::now();
                match server.step(&req.auth_bytes, validator, now).await {
                    // The `invalid_token` challenge, sent as Kafka does (error code 0): the
                    // client answers %x01 and the next step fails the exchange.
                    Ok(OAuthStep::Continue(challenge)) => Ok((Bytes::from(challenge), None)),
                    // The token bounds the session even without connections.max.reauth.ms:
                    // a connection must not outlive the credential that opened it.
                    Ok(OAuthStep::Done(token)) => {
                        let lifetime = Some(token.session_lifetime(now, max_reauth));
                        let principal = token.principal;
                        Ok((
                            Bytes::new(),
                            Some(Authenticated {
                                principal,
                                lifetime,
                            }),
                        ))
                    }
                    Err(e) => Err(Refusal::oauth(&e)),
                }
            }
        };
        match step {
            Ok((bytes, None)) => Admit::Answer(SaslAuthenticate(
                SaslAuthenticateResponse::default().with_auth_bytes(bytes),
            )),
            Ok((
                bytes,
                Some(Authenticated {
                    principal,
                    lifetime,
                }),
            )) => {
                // KIP-368: re-authentication may not change who the connection is.
                if self.authenticated_with.is_some() && principal != self.principal {
                    return self.refuse(Refusal::told(format!(
                        "Authentication failed: re-authentication as {principal} on a \
                             connection of {}",
                        self.principal
                    )));
                }
                let mechanism = self.authenticating_with.map_or("", SaslMechanism::name);
                let event = AuditEvent::authentication(
                    self.audit_client(),
                    mechanism,
                    Some(principal.to_string()),
                    Outcome::Succeeded,
                );
                if self.auditor.record(event).is_err() {
                    // Fail-closed: an authentication that cannot be recorded does not happen.
                    return Admit::Close;
                }
                self.expires = lifetime.map(|d| Instant::now() + d);
                self.authenticated_with = self.authenticating_with.take();
                tracing::debug!(
                    peer = %self.peer, %principal, listener = %self.listener.name,
                    ?lifetime, "authenticated"
                );
                self.ctx.principal = principal.clone();
                self.principal = principal;
                self.state = State::Established;
                let lifetime_ms = match (version, lifetime) {
                    (1.., Some(d)) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
                    _ => 0,
                };
                Admit::Answer(SaslAuthenticate(
                    SaslAuthenticateResponse::default()
                        .with_auth_bytes(bytes)
                        .with_session_lifetime_ms(lifetime_ms),
                ))
            }
            Err(refusal) => self.refuse(refusal),
        }
    }

    fn refuse(&mut self, refusal: Refusal) -> Admit {
        use kafka_protocol::messages::ResponseKind::SaslAuthenticate;
        self.log_failure(&refusal.reason);
        self.state = State::Handshake;
        Admit::AnswerAndClose(SaslAuthenticate(
            SaslAuthenticateResponse::default()
                .with_error_code(refusal.code.code())
                .with_error_message(Some(StrBytes::from_string(refusal.message))),
        ))
    }

    /// The log line and the counter of a failed exchange. `reason` never holds a secret (a
    /// password, a token): the mechanisms' errors are written so.
    fn log_failure(&self, reason: &str) {
        let mechanism = self.authenticating_with.map_or("", SaslMechanism::name);
        tracing::info!(
            peer = %self.peer, listener = %self.listener.name, mechanism, %reason,
            "authentication failed"
        );
        metrics::counter!("shale_authentication_failures_total", "listener" => self.listener.name.clone())
            .increment(1);
        let _ = self.auditor.record(
            AuditEvent::authentication(self.audit_client(), mechanism, None, Outcome::Failed)
                .with_reason(reason.to_string()),
        );
    }

    /// A SaslHandshake refused: the log line, the counter and the audit event of a failed
    /// authentication. `requested` is the client's mechanism name, cut short (it is only
    /// bounded by the frame).
    fn refuse_handshake(&self, requested: &str, reason: &str) {
        let mechanism: String = requested.chars().take(64).collect();
        tracing::info!(
            peer = %self.peer, listener = %self.listener.name, %mechanism, principal = %self.principal,
            "authentication failed: {reason}"
        );
        metrics::counter!("shale_authentication_failures_total", "listener" => self.listener.name.clone())
            .increment(1);
        let _ = self.auditor.record(
            AuditEvent::authentication(self.audit_client(), mechanism, None, Outcome::Failed)
                .with_reason(reason.to_string()),
        );
    }

    fn audit_client(&self) -> audit::Client {
        audit::Client::new(self.listener.name.clone(), self.ctx.host.clone())
    }
}

impl Drop for Session {
    /// A client that goes away after the `invalid_token` challenge, instead of answering it,
    /// failed to authenticate all the same: it gets the log line and the count.
    fn drop(&mut self) {
        if let State::Authenticating(Exchange::OAuth(server, _)) = &self.state
            && let Some(refusal) = server.refusal()
        {
            let reason = format!("invalid token: {refusal} (the client left after the challenge)");
            self.log_failure(&reason);
        }
    }
}

/// A client's address as ACL hosts name it: Java's `InetAddress.getHostAddress()`, which
/// Kafka matches against. An IPv4 client of a dual-stack listener is its IPv4 address, and
/// IPv6 is written out in full (`0:0:0:0:0:0:0:1`, not `::1`).
fn acl_host(ip: std::net::IpAddr) -> String {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => v6
            .segments()
            .iter()
            .map(|s| format!("{s:x}"))
            .collect::<Vec<_>>()
            .join(":"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn acl_hosts_are_written_as_java_writes_them() {
        let host = |s: &str| super::acl_host(s.parse().unwrap());
        assert_eq!(host("10.0.0.1"), "10.0.0.1");
        assert_eq!(host("::ffff:10.0.0.1"), "10.0.0.1");
        assert_eq!(host("::1"), "0:0:0:0:0:0:0:1");
        assert_eq!(host("fe80::1:abcd"), "fe80:0:0:0:0:0:1:abcd");
    }
}
