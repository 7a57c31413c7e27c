//! A Kafka listener's security, as Kafka configures it: the protocol from
//! `listener.security.protocol.map`, TLS from `ssl.*`, SASL from `sasl.enabled.mechanisms` and
//! the mechanisms' JAAS entries and OAUTHBEARER's `sasl.oauthbearer.*`, each name looked up
//! with the `listener.name.<name>.` prefix first, then bare.

use crate::oauth::{JwtValidator, OAuthConfig};
use crate::plain::PlainUsers;
use crate::principal::{KafkaPrincipal, SslPrincipalMapper};
use crate::scram::ScramMechanism;
use crate::tls::ServerTls;
use std::sync::Arc;
use std::time::Duration;

/// Kafka's security protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

impl std::str::FromStr for SecurityProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.trim().to_ascii_uppercase().as_str() {
            "PLAINTEXT" => SecurityProtocol::Plaintext,
            "SSL" => SecurityProtocol::Ssl,
            "SASL_PLAINTEXT" => SecurityProtocol::SaslPlaintext,
            "SASL_SSL" => SecurityProtocol::SaslSsl,
            other => {
                return Err(format!(
                    "unknown security protocol {other:?} (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)"
                ));
            }
        })
    }
}

/// A SASL mechanism a listener can enable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    Scram(ScramMechanism),
    /// RFC 7628 with JWT access tokens checked against the provider's JWKS ([`crate::oauth`]).
    OAuthBearer,
}

impl SaslMechanism {
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::Scram(m) => m.name(),
            SaslMechanism::OAuthBearer => crate::oauth::MECHANISM,
        }
    }

    pub fn from_name(name: &str) -> Option<SaslMechanism> {
        match name {
            "PLAIN" => Some(SaslMechanism::Plain),
            crate::oauth::MECHANISM => Some(SaslMechanism::OAuthBearer),
            other => ScramMechanism::from_name(other).map(SaslMechanism::Scram),
        }
    }
}

/// Mechanisms enabled when `sasl.enabled.mechanisms` is not set. Kafka's default is GSSAPI,
/// which Shale does not offer; SCRAM needs no secret in the configuration.
pub const DEFAULT_SASL_MECHANISMS: &str = "SCRAM-SHA-256,SCRAM-SHA-512";

/// Everything a connection accepted on one listener needs to establish who is talking.
#[derive(Debug)]
pub struct ListenerSecurity {
    pub name: String,
    pub protocol: SecurityProtocol,
    pub tls: Option<ServerTls>,
    /// In the order configured (SaslHandshake lists them so).
    pub sasl_mechanisms: Vec<SaslMechanism>,
    pub plain_users: PlainUsers,
    /// Maps a client certificate's subject to the principal name (SSL listeners).
    pub principal_mapper: SslPrincipalMapper,
    /// `connections.max.reauth.ms` (KIP-368): a SASL session lasts this long; a client must
    /// re-authenticate on the connection before then or it is closed. `None`: no limit.
    pub max_reauth: Option<Duration>,
    /// OAUTHBEARER's settings, when the listener enables it. Read with the rest (start-up stops
    /// on a bad one before anything runs); the JWKS is fetched by [`Self::connect_oauth`].
    pub oauth: Option<OAuthConfig>,
    /// The token validator built from `oauth` by [`Self::connect_oauth`]: one per listener,
    /// shared by its connections, so that they share one JWKS cache and one refresh task.
    pub oauth_validator: Option<Arc<JwtValidator>>,
}

impl ListenerSecurity {
    /// A listener without TLS or SASL: every connection is `User:ANONYMOUS`.
    pub fn plaintext(name: &str) -> ListenerSecurity {
        ListenerSecurity {
            name: name.to_string(),
            protocol: SecurityProtocol::Plaintext,
            tls: None,
            sasl_mechanisms: Vec::new(),
            plain_users: PlainUsers::default(),
            principal_mapper: default_mapper(),
            max_reauth: None,
            oauth: None,
            oauth_validator: None,
        }
    }

    /// Reads the listener's settings. `get(key)` returns a setting by its bare name; this
    /// tries `listener.name.<lowercase name>.<key>` first, as Kafka does.
    pub fn from_settings(
        name: &str,
        protocol: SecurityProtocol,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ListenerSecurity, String> {
        let prefix = format!("listener.name.{}.", name.to_ascii_lowercase());
        let lookup = |key: &str| get(&format!("{prefix}{key}")).or_else(|| get(key));
        // KIP-684: on SASL_SSL, `ssl.client.auth` counts only with the listener prefix (a
        // bare one is meant for SSL listeners), as in Kafka.
        let tls_lookup = |key: &str| {
            if key == "ssl.client.auth" && protocol == SecurityProtocol::SaslSsl {
                get(&format!("{prefix}{key}"))
            } else {
                lookup(key)
            }
        };
        let tls = if protocol.uses_tls() {
            Some(
                ServerTls::from_settings(&tls_lookup)
                    .map_err(|e| format!("listener {name} ({}): {e}", protocol.name()))?,
            )
        } else {
            None
        };
        let principal_mapper = match lookup("ssl.principal.mapping.rules") {
            Some(rules) => SslPrincipalMapper::parse(&rules)
                .map_err(|e| format!("listener {name}: ssl.principal.mapping.rules: {e}"))?,
            None => default_mapper(),
        };
        let mut sasl_mechanisms = Vec::new();
        let mut plain_users = PlainUsers::default();
        let mut oauth = None;
        if protocol.uses_sasl() {
            let enabled = lookup("sasl.enabled.mechanisms")
                .unwrap_or_else(|| DEFAULT_SASL_MECHANISMS.to_string());
            for m in enabled.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                let mech = SaslMechanism::from_name(m).ok_or_else(|| {
                    format!(
                        "listener {name}: sasl.enabled.mechanisms: {m} is not supported \
                         (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER)"
                    )
                })?;
                if !sasl_mechanisms.contains(&mech) {
                    sasl_mechanisms.push(mech);
                }
            }
            if sasl_mechanisms.is_empty() {
                return Err(format!(
                    "listener {name} ({}) enables no SASL mechanism",
                    protocol.name()
                ));
            }
            if sasl_mechanisms.contains(&SaslMechanism::Plain) {
                // Kafka reads only the listener-and-mechanism-prefixed JAAS entry on brokers.
                let key = format!("{prefix}plain.sasl.jaas.config");
                let jaas = get(&key).ok_or_else(|| {
                    format!(
                        "listener {name} enables PLAIN: {key} must list its users \
                         (PlainLoginModule required user_NAME=\"PASSWORD\" ...;)"
                    )
                })?;
                plain_users = PlainUsers::from_jaas(&jaas).map_err(|e| format!("{key}: {e}"))?;
            }
            if sasl_mechanisms.contains(&SaslMechanism::OAuthBearer) {
                // Kafka's broker cannot validate a token without a key set either; Shale has
                // no other validator to fall back on (Kafka's default one accepts unsecured
                // tokens, which is for development only).
                oauth = Some(
                    OAuthConfig::from_settings(lookup)
                        .map_err(|e| format!("listener {name}: {e}"))?
                        .ok_or_else(|| {
                            format!(
                                "listener {name} enables OAUTHBEARER: {} must name the identity \
                                 provider's JWKS (https://... or file:...)",
                                crate::oauth::JWKS_ENDPOINT_URL
                            )
                        })?,
                );
            }
        }
        let max_reauth = match lookup("connections.max.reauth.ms") {
            None => None,
            Some(v) => match v.trim().parse::<u64>() {
                Ok(0) => None,
                Ok(ms) => Some(Duration::from_millis(ms)),
                Err(e) => return Err(format!("connections.max.reauth.ms={v:?}: {e}")),
            },
        };
        Ok(ListenerSecurity {
            name: name.to_string(),
            protocol,
            tls,
            sasl_mechanisms,
            plain_users,
            principal_mapper,
            max_reauth,
            oauth,
            oauth_validator: None,
        })
    }

    /// Builds the OAUTHBEARER validator when the listener enables the mechanism: fetches the
    /// JWKS (with the configured retries) and starts its refresh. Fails, as Kafka's broker
    /// does at start-up, when no key set can be had. Call once, before serving.
    pub async fn connect_oauth(&mut self) -> Result<(), String> {
        let Some(config) = &self.oauth else {
            return Ok(());
        };
        let validator = JwtValidator::connect(config.clone())
            .await
            .map_err(|e| format!("listener {} (OAUTHBEARER): {e}", self.name))?;
        self.oauth_validator = Some(Arc::new(validator));
        Ok(())
    }

    /// The principal of a connection on an SSL listener, from the client's certificate
    /// (its subject in RFC 2253 form, mapped by `ssl.principal.mapping.rules`), or
    /// `User:ANONYMOUS` when it sent none (`ssl.client.auth` none or requested).
    pub fn tls_principal(&self, client_cert: Option<&[u8]>) -> Result<KafkaPrincipal, String> {
        let Some(der) = client_cert else {
            return Ok(KafkaPrincipal::anonymous());
        };
        let dn = crate::principal::rfc2253_subject(der).map_err(|e| e.to_string())?;
        let name = self
            .principal_mapper
            .principal_name(&dn)
            .map_err(|e| e.to_string())?;
        Ok(KafkaPrincipal::user(name))
    }
}

fn default_mapper() -> SslPrincipalMapper {
    SslPrincipalMapper::parse("DEFAULT").expect("DEFAULT is a valid rule list")
}
