//! Node-to-node identity: mutual TLS with the cluster's CA, where each side's certificate
//! names the node it belongs to.
//!
//! A node's certificate carries the DNS subject alternative name `node-<id>` (it may carry
//! other names too, such as its host name, for its client listener). Both ends of a metadata
//! RPC connection present one, and both check two things: the chain ends at the cluster CA
//! (the CONTROLLER listener's truststore), and the certificate names exactly one node id. A
//! client certificate from the same CA (`CN=alice`) names no node, so a stolen one cannot
//! join the quorum; the RPC server then also checks that what a peer claims in its requests
//! (the Raft vote it sends under, the broker it heartbeats for) is its own id.
//!
//! Matching the name `node-<id>` rather than the certificate's subject keeps the check to
//! what webpki verifies already (a DNS name, with the chain), and leaves the subject free
//! for an operator's own conventions.

use crate::tls::{self, TlsError};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;

/// The DNS name a node's certificate carries.
pub fn node_name(id: u64) -> String {
    format!("node-{id}")
}

/// The node id a certificate names: its one DNS subject alternative name `node-<id>`.
/// Errors say why not (no such name, two different ones, not a certificate).
pub fn node_id_of(cert_der: &[u8]) -> Result<u64, String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| format!("not a certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subject alternative names: {e}"))?;
    let mut ids = san
        .into_iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => parse_node_name(dns),
            _ => None,
        });
    let Some(id) = ids.next() else {
        return Err(format!(
            "certificate {} names no node (no DNS name node-<id>)",
            cert.subject()
        ));
    };
    if ids.any(|other| other != id) {
        return Err(format!(
            "certificate {} names more than one node",
            cert.subject()
        ));
    }
    Ok(id)
}

/// `node-<id>` to the id: decimal digits only, no sign or leading zero (one spelling per id).
fn parse_node_name(dns: &str) -> Option<u64> {
    let digits = dns.strip_prefix("node-")?;
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    digits.parse().ok()
}

/// The TLS configurations of one node's metadata RPC: the server side of its CONTROLLER
/// listener and the client side of its calls to other nodes.
#[derive(Clone)]
pub struct NodeTls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls").finish_non_exhaustive()
    }
}

impl NodeTls {
    /// Builds node `node_id`'s RPC TLS from the CONTROLLER listener's `ssl.*` settings (`get`
    /// applies the `listener.name.controller.` prefix). The truststore is the cluster CA and
    /// is required; client certificates are always required (`ssl.client.auth` does not
    /// apply: a node without one is not a node). The node's own certificate must name
    /// `node-<node_id>`, so a misconfigured node stops at start-up rather than being
    /// refused by every peer.
    pub fn from_settings(
        get: &dyn Fn(&str) -> Option<String>,
        node_id: u64,
    ) -> Result<NodeTls, TlsError> {
        let (chain, key, origin) = tls::identity(get)?;
        let Some(leaf) = chain.first() else {
            return Err(TlsError::Config(format!("{origin}: no certificate")));
        };
        match node_id_of(leaf) {
            Ok(id) if id == node_id => {}
            Ok(id) => {
                return Err(TlsError::Config(format!(
                    "{origin}: the certificate names node {id}, but this is node.id {node_id}"
                )));
            }
            Err(e) => {
                return Err(TlsError::Config(format!(
                    "{origin}: a node certificate needs the DNS name {} ({e})",
                    node_name(node_id)
                )));
            }
        }
        let roots = Arc::new(tls::truststore(get)?.ok_or_else(|| {
            TlsError::Config(
                "node-to-node TLS needs the cluster CA: set ssl.truststore.location (or \
                 ssl.truststore.certificates) for the CONTROLLER listener"
                    .into(),
            )
        })?);
        let versions = tls::protocol_versions(get)?;
        let provider = tls::provider();

        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider.clone())
                .build()
                .map_err(|e| TlsError::Config(format!("client certificate verifier: {e}")))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|source| TlsError::Rustls {
                what: "ssl.enabled.protocols".into(),
                source,
            })?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|source| TlsError::Rustls {
                what: format!("{origin}: the certificate and key do not form a usable identity"),
                source,
            })?;
        // No session tickets: after the handshake the server sends nothing unasked, so a
        // pooled idle connection with bytes to read is one the peer closed.
        server.send_tls13_tickets = 0;

        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| TlsError::Config(format!("server certificate verifier: {e}")))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .map_err(|source| TlsError::Rustls {
                what: "ssl.enabled.protocols".into(),
                source,
            })?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NodeServerVerifier { inner }))
            .with_client_auth_cert(chain, key)
            .map_err(|source| TlsError::Rustls {
                what: format!("{origin}: the certificate and key do not form a usable identity"),
                source,
            })?;
        Ok(NodeTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// The name to connect to node `id` under: its certificate must name that node.
    pub fn server_name(id: u64) -> ServerName<'static> {
        // `node-<digits>` is always a valid DNS name.
        ServerName::try_from(node_name(id)).unwrap_or_else(|_| Self::any_node())
    }

    /// The name to connect under when the peer's id is not known (a leader reached by its
    /// address): any node of the cluster is accepted.
    pub fn any_node() -> ServerName<'static> {
        ServerName::DnsName(
            rustls::pki_types::DnsName::try_from("shale-node").unwrap_or_else(
                // A constant valid DNS name; this branch is unreachable.
                |_| rustls::pki_types::DnsName::try_from("localhost").expect("valid DNS name"),
            ),
        )
    }
}

/// Checks a server's certificate against the cluster CA and the node it must be: the one the
/// connection was made for (`node-<id>`), or under [`NodeTls::any_node`] the one the
/// certificate itself names. The signature checks are webpki's.
#[derive(Debug)]
struct NodeServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let expected = match server_name {
            ServerName::DnsName(d) if parse_node_name(d.as_ref()).is_some() => {
                server_name.to_owned()
            }
            _ => {
                let id = node_id_of(end_entity).map_err(|_| {
                    rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
                })?;
                Self::name(id)?
            }
        };
        self.inner
            .verify_server_cert(end_entity, intermediates, &expected, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

impl NodeServerVerifier {
    fn name(id: u64) -> Result<ServerName<'static>, rustls::Error> {
        ServerName::try_from(node_name(id)).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ca {
        cert: rcgen::Certificate,
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    fn ca() -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cluster CA");
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    fn leaf(ca: &Ca, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn der(pem: &str) -> Vec<u8> {
        use rustls_pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn a_certificate_names_the_node_in_its_dns_name() {
        let ca = ca();
        let (cert, _) = leaf(&ca, &["broker1.internal", "node-7"]);
        assert_eq!(node_id_of(&der(&cert)), Ok(7));
    }

    #[test]
    fn a_client_certificate_names_no_node() {
        let ca = ca();
        for names in [
            &["alice"][..],
            &["node-"],
            &["node-07"],
            &["node-x"],
            &["xnode-1"],
        ] {
            let (cert, _) = leaf(&ca, names);
            assert!(node_id_of(&der(&cert)).is_err(), "{names:?}");
        }
        assert!(node_id_of(b"garbage").is_err());
    }

    #[test]
    fn a_certificate_naming_two_nodes_is_refused() {
        let ca = ca();
        let (cert, _) = leaf(&ca, &["node-1", "node-2"]);
        assert!(
            node_id_of(&der(&cert))
                .unwrap_err()
                .contains("more than one")
        );
    }

    /// A CONTROLLER listener's settings: inline PEM identity and the cluster CA.
    fn settings(ca: &Ca, names: &[&str]) -> impl Fn(&str) -> Option<String> + use<> {
        let (cert, key) = leaf(ca, names);
        let ca_pem = ca.cert.pem();
        move |k: &str| match k {
            "ssl.keystore.certificate.chain" => Some(cert.clone()),
            "ssl.keystore.key" => Some(key.clone()),
            "ssl.truststore.certificates" => Some(ca_pem.clone()),
            _ => None,
        }
    }

    #[test]
    fn a_node_certificate_must_name_this_node() {
        let ca = ca();
        let err = NodeTls::from_settings(&settings(&ca, &["node-2"]), 1).unwrap_err();
        assert!(err.to_string().contains("names node 2"), "{err}");
        let err = NodeTls::from_settings(&settings(&ca, &["localhost"]), 1).unwrap_err();
        assert!(
            err.to_string().contains("needs the DNS name node-1"),
            "{err}"
        );
        NodeTls::from_settings(&settings(&ca, &["localhost", "node-1"]), 1).unwrap();
    }

    #[test]
    fn node_tls_needs_the_cluster_ca() {
        let ca = ca();
        let get = settings(&ca, &["node-1"]);
        let without_ca = |k: &str| match k {
            "ssl.truststore.certificates" => None,
            k => get(k),
        };
        let err = NodeTls::from_settings(&without_ca, 1).unwrap_err();
        assert!(err.to_string().contains("cluster CA"), "{err}");
    }
}
