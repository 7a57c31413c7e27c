//! Kafka requests this broker sends to the other brokers, as Kafka's brokers do: transaction
//! markers for partitions another node owns (WriteTxnMarkers, the coordinator's marker
//! channel) and KIP-890's calls from a partition's owner to a transaction coordinator on
//! another node (AddPartitionsToTxn v5).
//!
//! They travel over the node-to-node transport ([`MetaNode::call_node`]), not a client
//! listener: that transport is mutual TLS with the cluster CA when configured, so a peer
//! broker is identified by its node certificate, and the client listeners stay free to
//! require SASL, client certificates and ACLs without the brokers holding client
//! credentials. On the receiving side only the inter-broker APIs are served on that path
//! ([`INTER_BROKER_APIS`]), without the ACL gate (a node is trusted with cluster actions,
//! as Kafka's broker principal is a super user). Answers are network input like any
//! other: one that does not decode is an error.
//!
//! [`MetaNode::call_node`]: shale_meta::MetaNode::call_node

use crate::Broker;
use crate::connection::Frame;
use crate::session::Session;
use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use std::sync::Weak;
use std::time::Duration;

/// Longest wait for one answer (a marker waits for a WAL flush, normally milliseconds).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The APIs a node serves to other nodes on the node-to-node transport.
/// Produce only for the audit topic (the other nodes' audit sinks; see `authz::check`).
pub(crate) const INTER_BROKER_APIS: &[ApiKey] = &[
    ApiKey::WriteTxnMarkers,
    ApiKey::AddPartitionsToTxn,
    ApiKey::Produce,
];

#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerError {
    #[error("node {0} is not a live broker")]
    UnknownNode(u64),
    #[error("calling node {node}: {reason}")]
    Failed { node: u64, reason: String },
}

impl Broker {
    /// Sends `body` to broker `node` and returns its answer.
    pub(crate) async fn call_peer(
        &self,
        node: u64,
        api: ApiKey,
        version: i16,
        body: RequestKind,
    ) -> Result<ResponseKind, PeerError> {
        let live = self
            .meta
            .read(|s| s.brokers.get(&node).is_some_and(|b| !b.fenced));
        if !live {
            return Err(PeerError::UnknownNode(node));
        }
        let failed = |reason: String| PeerError::Failed { node, reason };
        let request = encode(self.config.node_id, api, version, &body).map_err(failed)?;
        let answer = self
            .meta
            .call_node(node, request, CALL_TIMEOUT)
            .await
            .map_err(failed)?;
        decode(api, version, answer).map_err(failed)
    }
}

/// Serves other nodes' inter-broker requests (registered with the metadata node).
pub(crate) struct NodeCalls(pub Weak<Broker>);

#[async_trait::async_trait]
impl shale_meta::NodeCallHandler for NodeCalls {
    async fn handle(&self, from: Option<u64>, request: Bytes) -> Result<Bytes, String> {
        let broker = self.0.upgrade().ok_or("the broker is stopping")?;
        let head = shale_protocol::envelope::peek(&request).map_err(|e| e.to_string())?;
        if !ApiKey::try_from(head.api_key).is_ok_and(|k| INTER_BROKER_APIS.contains(&k)) {
            tracing::warn!(
                ?from,
                api_key = head.api_key,
                "refused a node call that is not an inter-broker request"
            );
            return Err(format!("api key {} is not served to nodes", head.api_key));
        }
        let mut session = Session::node(from);
        let frame = broker
            .serve_one(&mut session, request, CALL_TIMEOUT)
            .await
            .ok_or("no answer")?;
        // The answer as a connection would write it, less the size prefix.
        match frame {
            Frame::One(b) if b.len() >= 4 => Ok(b.slice(4..)),
            _ => Err("no answer".into()),
        }
    }
}

fn encode(me: i32, api: ApiKey, version: i16, body: &RequestKind) -> Result<Bytes, String> {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_string(format!("shale-broker-{me}"))))
        .encode(&mut buf, api.request_header_version(version))
        .map_err(|e| format!("encoding the request header: {e}"))?;
    body.encode(&mut buf, version)
        .map_err(|e| format!("encoding the request: {e}"))?;
    Ok(buf.freeze())
}

fn decode(api: ApiKey, version: i16, mut frame: Bytes) -> Result<ResponseKind, String> {
    let header = ResponseHeader::decode(&mut frame, api.response_header_version(version))
        .map_err(|e| format!("decoding the answer's header: {e}"))?;
    if header.correlation_id != 1 {
        return Err(format!(
            "answer to correlation id {}",
            header.correlation_id
        ));
    }
    let response = ResponseKind::decode(api, &mut frame, version)
        .map_err(|e| format!("decoding the answer: {e}"))?;
    if frame.has_remaining() {
        return Err(format!("{} bytes after the answer", frame.remaining()));
    }
    Ok(response)
}
