//! Kafka requests this broker sends to the other brokers, as Kafka's brokers do: transaction
//! markers for partitions another node owns (WriteTxnMarkers, the coordinator's marker
//! channel) and KIP-890's calls from a partition's owner to a transaction coordinator on
//! another node (AddPartitionsToTxn v5).
//!
//! Peers are reached at the listener they advertise in the metadata. Connections are pooled
//! per peer (a few idle ones kept), one request at a time each, so concurrent transactions do
//! not queue behind one another. Answers are network input like any other: a frame over
//! [`MAX_RESPONSE`] or one that does not decode drops the connection and is an error.

use crate::Broker;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for one answer (a marker waits for a WAL flush, normally milliseconds).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer accepted: the answers asked for here are small.
const MAX_RESPONSE: usize = 1 << 20;
/// Idle connections kept per peer.
const IDLE_PER_PEER: usize = 4;

#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerError {
    #[error("node {0} is not a live broker")]
    UnknownNode(u64),
    #[error("calling node {node}: {reason}")]
    Failed { node: u64, reason: String },
}

/// Idle connections by peer address.
#[derive(Default)]
pub(crate) struct Peers {
    idle: Mutex<HashMap<(String, u16), Vec<TcpStream>>>,
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
        let addr = self
            .meta
            .read(|s| {
                let live = s.brokers.get(&node).is_some_and(|b| !b.fenced);
                live.then(|| s.nodes.get(&node).map(|n| (n.host.clone(), n.port)))
                    .flatten()
            })
            .ok_or(PeerError::UnknownNode(node))?;
        let failed = |reason: String| PeerError::Failed { node, reason };
        let request = encode(self.config.node_id, api, version, &body).map_err(failed)?;
        let pooled = self
            .peers
            .idle
            .lock()
            .get_mut(&addr)
            .and_then(shale_meta::take_open_connection);
        let mut conn = match pooled {
            Some(c) => c,
            None => {
                tokio::time::timeout(CALL_TIMEOUT, TcpStream::connect((addr.0.as_str(), addr.1)))
                    .await
                    .map_err(|_| failed("connect timed out".into()))?
                    .map_err(|e| failed(format!("connect: {e}")))?
            }
        };
        let _ = conn.set_nodelay(true);
        let answer = tokio::time::timeout(CALL_TIMEOUT, exchange(&mut conn, &request))
            .await
            .map_err(|_| failed("no answer in time".into()))?
            .map_err(|e| failed(e.to_string()))?;
        let response = decode(api, version, answer).map_err(failed)?;
        let mut idle = self.peers.idle.lock();
        let pool = idle.entry(addr).or_default();
        if pool.len() < IDLE_PER_PEER {
            pool.push(conn);
        }
        Ok(response)
    }
}

fn encode(me: i32, api: ApiKey, version: i16, body: &RequestKind) -> Result<Bytes, String> {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_string(format!("shale-broker-{me}"))))
        .encode(&mut buf, api.request_header_version(version))
        .map_err(|e| format!("encoding the request header: {e}"))?;
    body.encode(&mut buf, version)
        .map_err(|e| format!("encoding the request: {e}"))?;
    let len = i32::try_from(buf.len() - 4).map_err(|_| "request too large".to_string())?;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// Writes one request and reads its answer's frame.
async fn exchange(conn: &mut TcpStream, request: &[u8]) -> std::io::Result<Bytes> {
    conn.write_all(request).await?;
    let size = conn.read_i32().await?;
    let size = usize::try_from(size)
        .ok()
        .filter(|s| *s <= MAX_RESPONSE)
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("answer of {size} bytes"),
            )
        })?;
    let mut frame = vec![0u8; size];
    conn.read_exact(&mut frame).await?;
    Ok(Bytes::from(frame))
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
