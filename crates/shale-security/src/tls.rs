//! TLS for Kafka listeners (and later the node RPC): rustls with the aws-lc-rs provider,
//! configured from PEM files under Kafka's names.
//!
//! Kafka's brokers take keystores and truststores. Shale takes their PEM forms only:
//! `ssl.keystore.type=PEM` with `ssl.keystore.location` (one file holding the private key and
//! the certificate chain) or inline `ssl.keystore.key` / `ssl.keystore.certificate.chain`, and
//! `ssl.truststore.location` or inline `ssl.truststore.certificates`. librdkafka's names
//! (`ssl.certificate.location`, `ssl.key.location`, `ssl.ca.location`) are accepted too.
//! Anything that fails to load stops start-up: a listener never falls back to plaintext.

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Config(String),
    #[error("{what}: {source}")]
    Pem {
        what: String,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{what}: {source}")]
    Rustls { what: String, source: rustls::Error },
}

/// Kafka's `ssl.client.auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    #[default]
    None,
    /// A certificate is asked for; a client without one connects as `User:ANONYMOUS` (over
    /// SSL) or authenticates by SASL alone.
    Requested,
    Required,
}

impl std::str::FromStr for ClientAuth {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self, TlsError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "" => Ok(ClientAuth::None),
            "requested" => Ok(ClientAuth::Requested),
            "required" => Ok(ClientAuth::Required),
            other => Err(TlsError::Config(format!(
                "ssl.client.auth must be none, requested or required, not {other:?}"
            ))),
        }
    }
}

/// The crypto provider every Shale TLS config uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A listener's TLS configuration.
#[derive(Clone)]
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub client_auth: ClientAuth,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Builds a listener's TLS from its `ssl.*` settings; `get` looks a name up (the caller
    /// applies Kafka's `listener.name.<listener>.` prefix before the plain name).
    pub fn from_settings(get: &dyn Fn(&str) -> Option<String>) -> Result<ServerTls, TlsError> {
        let (chain, key, origin) = identity(get)?;
        let client_auth: ClientAuth = get("ssl.client.auth").unwrap_or_default().parse()?;
        let roots = truststore(get)?;
        let versions = protocol_versions(get)?;
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|source| TlsError::Rustls {
                what: "ssl.enabled.protocols".into(),
                source,
            })?;
        let builder = match (client_auth, roots) {
            (ClientAuth::None, _) => builder.with_no_client_auth(),
            (_, None) => {
                return Err(TlsError::Config(
                    "ssl.client.auth=requested or required needs a truststore \
                     (ssl.truststore.location or ssl.truststore.certificates) to check \
                     client certificates against"
                        .into(),
                ));
            }
            (auth, Some(roots)) => {
                let mut verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                if auth == ClientAuth::Requested {
                    verifier = verifier.allow_unauthenticated();
                }
                let verifier = verifier
                    .build()
                    .map_err(|e| TlsError::Config(format!("client certificate verifier: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|source| TlsError::Rustls {
                what: format!("{origin}: the certificate and key do not form a usable identity"),
                source,
            })?;
        Ok(ServerTls {
            config: Arc::new(config),
            client_auth,
        })
    }
}

/// A client configuration trusting `roots`, presenting `identity` when given (node RPC and
/// tests).
pub fn client_config(
    roots: &[CertificateDer<'static>],
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in roots {
        store.add(cert.clone()).map_err(|source| TlsError::Rustls {
            what: "trusted certificate".into(),
            source,
        })?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "protocol versions".into(),
            source,
        })?
        .with_root_certificates(store);
    let config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|source| TlsError::Rustls {
                what: "client certificate".into(),
                source,
            })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The listener's certificate chain and key, and where they came from (for errors).
pub(crate) type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, String);

pub(crate) fn identity(get: &dyn Fn(&str) -> Option<String>) -> Result<Identity, TlsError> {
    check_store_type(get, "ssl.keystore.type")?;
    if get("ssl.key.password").is_some() || get("ssl.keystore.password").is_some() {
        return Err(TlsError::Config(
            "encrypted private keys are not supported: give ssl.keystore.location (or \
             ssl.key.location) an unencrypted PKCS#8, PKCS#1 or SEC1 PEM key, protected by \
             file permissions, and unset ssl.key.password / ssl.keystore.password"
                .into(),
        ));
    }
    let identity = if let Some(path) = get("ssl.keystore.location") {
        let pem = read(&path, "ssl.keystore.location")?;
        let what = format!("ssl.keystore.location {path}");
        (certs(&pem, &what)?, key(&pem, &what)?, what)
    } else if let Some(path) = get("ssl.certificate.location") {
        let key_path = get("ssl.key.location").ok_or_else(|| {
            TlsError::Config("ssl.certificate.location needs ssl.key.location".into())
        })?;
        (
            certs(
                &read(&path, "ssl.certificate.location")?,
                &format!("ssl.certificate.location {path}"),
            )?,
            key(
                &read(&key_path, "ssl.key.location")?,
                &format!("ssl.key.location {key_path}"),
            )?,
            format!("ssl.certificate.location {path} with ssl.key.location {key_path}"),
        )
    } else if let Some(chain) = get("ssl.keystore.certificate.chain") {
        let k = get("ssl.keystore.key").ok_or_else(|| {
            TlsError::Config("ssl.keystore.certificate.chain needs ssl.keystore.key".into())
        })?;
        (
            certs(chain.as_bytes(), "ssl.keystore.certificate.chain")?,
            key(k.as_bytes(), "ssl.keystore.key")?,
            "ssl.keystore.certificate.chain with ssl.keystore.key".to_string(),
        )
    } else {
        return Err(TlsError::Config(
            "a TLS listener needs a certificate and key: ssl.keystore.location (a PEM file \
             with both), ssl.certificate.location with ssl.key.location, or \
             ssl.keystore.certificate.chain with ssl.keystore.key"
                .into(),
        ));
    };
    Ok(identity)
}

pub(crate) fn truststore(
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<RootCertStore>, TlsError> {
    check_store_type(get, "ssl.truststore.type")?;
    let pem = match (
        get("ssl.truststore.location").or_else(|| get("ssl.ca.location")),
        get("ssl.truststore.certificates"),
    ) {
        (Some(path), _) => read(&path, "ssl.truststore.location")?,
        (None, Some(inline)) => inline.into_bytes(),
        (None, None) => return Ok(None),
    };
    let mut store = RootCertStore::empty();
    for cert in certs(&pem, "ssl.truststore")? {
        store.add(cert).map_err(|source| TlsError::Rustls {
            what: "a truststore certificate is not a usable trust anchor".into(),
            source,
        })?;
    }
    Ok(Some(store))
}

pub(crate) fn protocol_versions(
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, TlsError> {
    let Some(list) = get("ssl.enabled.protocols") else {
        return Ok(vec![&rustls::version::TLS13, &rustls::version::TLS12]);
    };
    let mut versions = Vec::new();
    for v in list.split(',').map(str::trim).filter(|v| !v.is_empty()) {
        versions.push(match v {
            "TLSv1.3" => &rustls::version::TLS13,
            "TLSv1.2" => &rustls::version::TLS12,
            other => {
                return Err(TlsError::Config(format!(
                    "ssl.enabled.protocols: {other} is not supported (TLSv1.2 and TLSv1.3 are)"
                )));
            }
        });
    }
    if versions.is_empty() {
        return Err(TlsError::Config("ssl.enabled.protocols is empty".into()));
    }
    Ok(versions)
}

fn check_store_type(get: &dyn Fn(&str) -> Option<String>, name: &str) -> Result<(), TlsError> {
    match get(name) {
        None => Ok(()),
        Some(t) if t.eq_ignore_ascii_case("PEM") => Ok(()),
        Some(t) => Err(TlsError::Config(format!(
            "{name}={t}: Shale reads PEM only (convert with `openssl pkcs12 -in store.p12 \
             -nodes` or `keytool -importkeystore -deststoretype PKCS12` first)"
        ))),
    }
}

fn read(path: &str, what: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(Path::new(path))
        .map_err(|e| TlsError::Config(format!("{what}: cannot read {path}: {e}")))
}

fn certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what: what.to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Config(format!(
            "{what}: no PEM certificate (-----BEGIN CERTIFICATE-----) found"
        )));
    }
    Ok(certs)
}

fn key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    if pem
        .windows(b"ENCRYPTED PRIVATE KEY".len())
        .any(|w| w == b"ENCRYPTED PRIVATE KEY")
    {
        return Err(TlsError::Config(format!(
            "{what}: the private key is encrypted; Shale needs an unencrypted PEM key \
             (openssl pkcs8 -in key.pem -out plain.pem)"
        )));
    }
    PrivateKeyDer::from_pem_slice(pem).map_err(|source| TlsError::Pem {
        what: format!("{what}: no usable private key"),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cert(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn settings(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn err(get: &dyn Fn(&str) -> Option<String>) -> String {
        ServerTls::from_settings(get).unwrap_err().to_string()
    }

    #[test]
    fn an_inline_pem_identity_makes_a_listener() {
        let (c, k) = cert("localhost");
        let tls = ServerTls::from_settings(&settings(&[
            ("ssl.keystore.certificate.chain", c),
            ("ssl.keystore.key", k),
        ]))
        .unwrap();
        assert_eq!(tls.client_auth, ClientAuth::None);
    }

    #[test]
    fn files_under_kafka_and_librdkafka_names_load() {
        let dir = tempfile_dir();
        let (c, k) = cert("localhost");
        std::fs::write(dir.join("both.pem"), format!("{k}{c}")).unwrap();
        std::fs::write(dir.join("cert.pem"), &c).unwrap();
        std::fs::write(dir.join("key.pem"), &k).unwrap();
        let p = |f: &str| dir.join(f).display().to_string();
        ServerTls::from_settings(&settings(&[
            ("ssl.keystore.type", "PEM".into()),
            ("ssl.keystore.location", p("both.pem")),
        ]))
        .unwrap();
        let tls = ServerTls::from_settings(&settings(&[
            ("ssl.certificate.location", p("cert.pem")),
            ("ssl.key.location", p("key.pem")),
            ("ssl.ca.location", p("cert.pem")),
            ("ssl.client.auth", "required".into()),
        ]))
        .unwrap();
        assert_eq!(tls.client_auth, ClientAuth::Required);
    }

    #[test]
    fn anything_that_does_not_load_stops_start_up_with_its_reason() {
        let (c, k) = cert("localhost");
        assert!(err(&settings(&[])).contains("needs a certificate and key"));
        assert!(
            err(&settings(&[(
                "ssl.keystore.location",
                "/nonexistent.pem".into()
            )]))
            .contains("cannot read /nonexistent.pem")
        );
        assert!(
            err(&settings(&[
                ("ssl.keystore.certificate.chain", "garbage".into()),
                ("ssl.keystore.key", k.clone()),
            ]))
            .contains("no PEM certificate")
        );
        assert!(
            err(&settings(&[
                ("ssl.keystore.certificate.chain", c.clone()),
                ("ssl.keystore.key", c.clone()),
            ]))
            .contains("no usable private key")
        );
        assert!(
            err(&settings(&[
                ("ssl.keystore.type", "JKS".into()),
                ("ssl.keystore.location", "/x.jks".into()),
            ]))
            .contains("PEM only")
        );
        assert!(
            err(&settings(&[
                ("ssl.keystore.certificate.chain", c.clone()),
                ("ssl.keystore.key", k.clone()),
                ("ssl.client.auth", "required".into()),
            ]))
            .contains("needs a truststore")
        );
        assert!(
            err(&settings(&[
                ("ssl.keystore.certificate.chain", c.clone()),
                ("ssl.keystore.key", k.clone()),
                ("ssl.client.auth", "maybe".into()),
            ]))
            .contains("none, requested or required")
        );
        assert!(
            err(&settings(&[
                ("ssl.keystore.certificate.chain", c.clone()),
                ("ssl.keystore.key", k.clone()),
                ("ssl.enabled.protocols", "TLSv1.1".into()),
            ]))
            .contains("TLSv1.1 is not supported")
        );
        assert!(
            err(&settings(&[
                ("ssl.keystore.certificate.chain", c.clone()),
                ("ssl.keystore.key", k.clone()),
                ("ssl.key.password", "pw".into()),
            ]))
            .contains("encrypted private keys are not supported")
        );
        // A key that is not the certificate's.
        let (_, other) = cert("other");
        assert!(
            err(&settings(&[
                ("ssl.keystore.certificate.chain", c),
                ("ssl.keystore.key", other),
            ]))
            .contains("usable identity")
        );
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "shale-tls-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
