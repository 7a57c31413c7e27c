//! Shale's security layer, shared by the Kafka front end and the metadata quorum's node RPC:
//! TLS configurations, principals (from certificates and SASL), the SASL mechanisms, the
//! authorizer, client quotas and the audit log.
//!
//! Nothing here does I/O on a socket: the broker drives the exchanges and applies the
//! results, so every piece can be tested on its own with bytes in and bytes out.

pub mod acl;
pub mod audit;
pub mod jaas;
pub mod listener;
pub mod node;
pub mod oauth;
pub mod plain;
pub mod principal;
pub mod quota;
pub mod scram;
pub mod tls;
