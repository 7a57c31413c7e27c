//! Node-to-node RPC of the metadata quorum: one prost message per frame over TCP.
//!
//! Frame: `u32` big-endian length, then a [`PbRequest`] or [`PbReply`]. A request names its
//! kind and carries openraft's own request value as JSON (the form the Raft log already
//! stores entries in) plus, for snapshots, the snapshot bytes as they are. A connection
//! carries one request at a time; each side keeps a connection per peer and reconnects after
//! any error. Everything read from the network is bounded by [`MAX_FRAME`] and allocated only
//! as bytes arrive, and a malformed frame closes the connection; it never panics.
//!
//! Transport: plain TCP, or mutual TLS when the CONTROLLER listener maps to SSL
//! ([`shale_security::node`]): each side presents a certificate from the cluster CA naming
//! its node id, and the server holds a peer to that id.

use crate::types::{Command, Response, Snapshot, SnapshotMeta, Vote};
use prost::Message;
use serde::{Deserialize, Serialize};
use shale_security::node::NodeTls;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Largest frame either side accepts (a metadata snapshot travels in one frame).
pub(crate) const MAX_FRAME: usize = 256 << 20;

/// How long a connection attempt may take before the peer counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Kind {
    AppendEntries = 1,
    Vote = 2,
    /// A full snapshot: `body` is `(vote, meta)`, `data` the snapshot bytes.
    InstallSnapshot = 3,
    /// A command proposed on another node, for the leader to commit.
    ClientWrite = 4,
    /// The leader's read index, for a linearizable read on another node.
    ReadIndex = 5,
    /// A broker's heartbeat to the leader (not a Raft write).
    Heartbeat = 6,
    /// A change of the quorum's voters or learners, for the leader to make.
    ChangeMembership = 7,
    /// openraft's TransferLeader: a stopping leader names its successor.
    TransferLeader = 8,
    /// Wait until every live broker has applied a log index (admin changes in force).
    AwaitApplied = 9,
    /// An opaque request for the node's owner (the broker's inter-broker requests): `data`
    /// carries it, the reply's `data` the answer.
    NodeCall = 10,
}

impl Kind {
    fn from_u32(v: u32) -> Option<Kind> {
        Some(match v {
            1 => Kind::AppendEntries,
            2 => Kind::Vote,
            3 => Kind::InstallSnapshot,
            4 => Kind::ClientWrite,
            5 => Kind::ReadIndex,
            6 => Kind::Heartbeat,
            7 => Kind::ChangeMembership,
            8 => Kind::TransferLeader,
            9 => Kind::AwaitApplied,
            10 => Kind::NodeCall,
            _ => return None,
        })
    }
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct PbRequest {
    #[prost(uint32, tag = "1")]
    pub kind: u32,
    /// The request value, JSON.
    #[prost(bytes = "vec", tag = "2")]
    pub body: Vec<u8>,
    /// Bulk bytes that are not JSON-encoded (snapshot data).
    #[prost(bytes = "vec", tag = "3")]
    pub data: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct PbReply {
    /// The reply value, JSON: a `Result` of the request kind's answer.
    #[prost(bytes = "vec", tag = "1")]
    pub body: Vec<u8>,
    /// Bulk bytes that are not JSON-encoded (a node call's answer).
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
}

impl PbRequest {
    pub(crate) fn new(kind: Kind, body: &impl Serialize) -> io::Result<PbRequest> {
        Ok(PbRequest {
            kind: kind as u32,
            body: serde_json::to_vec(body).map_err(io::Error::other)?,
            data: Vec::new(),
        })
    }

    pub(crate) fn kind(&self) -> Option<Kind> {
        Kind::from_u32(self.kind)
    }

    pub(crate) fn decode_body<T: for<'de> Deserialize<'de>>(&self) -> io::Result<T> {
        serde_json::from_slice(&self.body)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

impl PbReply {
    pub(crate) fn new(body: &impl Serialize) -> io::Result<PbReply> {
        Ok(PbReply {
            body: serde_json::to_vec(body).map_err(io::Error::other)?,
            data: Vec::new(),
        })
    }

    pub(crate) fn decode_body<T: for<'de> Deserialize<'de>>(&self) -> io::Result<T> {
        serde_json::from_slice(&self.body)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// Writes one frame.
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &impl Message,
) -> io::Result<()> {
    let len = msg.encoded_len();
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {len} bytes exceeds {MAX_FRAME}"),
        ));
    }
    let mut buf = Vec::with_capacity(4 + len);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    msg.encode(&mut buf).map_err(io::Error::other)?;
    w.write_all(&buf).await?;
    w.flush().await
}

/// Reads one frame. The buffer grows with the bytes actually received, so a length prefix
/// alone cannot make it allocate.
pub(crate) async fn read_frame<R: AsyncRead + Unpin, M: Message + Default>(
    r: &mut R,
) -> io::Result<M> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {MAX_FRAME}"),
        ));
    }
    let mut buf = Vec::with_capacity(len.min(64 << 10));
    let got = r.take(len as u64).read_to_end(&mut buf).await?;
    if got != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    M::decode(buf.as_slice()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Decodes `data` as the server does a request frame's body, and every request and reply
/// value inside it: the fuzz target `rpc_decode`. None of it may panic or allocate more than
/// the input backs.
#[doc(hidden)]
pub fn fuzz_decode(data: &[u8]) {
    use crate::types::TypeConfig;
    use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest};
    let Ok(req) = PbRequest::decode(data) else {
        let _ = PbReply::decode(data);
        return;
    };
    let _ = req.decode_body::<AppendEntriesRequest<TypeConfig>>();
    let _ = req.decode_body::<VoteRequest<TypeConfig>>();
    let _ = req.decode_body::<SnapshotHead>();
    let _ = req.decode_body::<WriteRequest>();
    let reply = PbReply {
        body: req.body.clone(),
        data: Vec::new(),
    };
    let _ = reply.decode_body::<WriteReply>();
    let _ = reply.decode_body::<ReadIndexReply>();
    let _ = req.decode_body::<HeartbeatRequest>();
    let _ = reply.decode_body::<HeartbeatReply>();
    let _ = reply.decode_body::<Result<AppendEntriesResponse<TypeConfig>, openraft::errors::RaftError<TypeConfig>>>();
}

/// A broker's heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HeartbeatRequest {
    pub id: u64,
    pub epoch: u64,
    /// The last metadata log index the broker's replica has applied (0 from brokers that
    /// predate the field).
    #[serde(default)]
    pub applied: u64,
}

/// The leader's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum HeartbeatReply {
    /// Session extended.
    Live,
    /// This registration was fenced: register again.
    Fenced,
    /// The leader knows no such registration (an older epoch, or none): register again.
    Reregister,
    NotLeader {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
}

/// Why a call got no answer; openraft backs off differently for each.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// No connection could be made: back off.
    #[error("unreachable: {0}")]
    Unreachable(io::Error),
    /// The connection failed during the call: the request may or may not have arrived.
    #[error("network: {0}")]
    Network(io::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// One connection to a peer: plain TCP, or TLS over it.
pub(crate) enum RpcStream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Pooled for RpcStream {
    fn tcp(&self) -> &TcpStream {
        match self {
            RpcStream::Tcp(s) => s,
            RpcStream::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for RpcStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RpcStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            RpcStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for RpcStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            RpcStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            RpcStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RpcStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            RpcStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RpcStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            RpcStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One peer: its idle connections, each used by one call at a time. Calls never wait for
/// each other: one without an idle connection opens its own, so a heartbeat is not queued
/// behind a forwarded write to a node that stopped answering (that head-of-line wait once
/// let a new leader fence its own broker).
pub(crate) struct Peer {
    addr: String,
    /// The node TLS config and the name the peer's certificate must carry, under mTLS.
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    idle: parking_lot::Mutex<Vec<RpcStream>>,
}

/// A pooled connection whose TCP socket can be probed.
pub trait Pooled {
    fn tcp(&self) -> &TcpStream;
}

impl Pooled for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

/// The newest of `idle` (a pool of connections to one peer) that the peer has not closed;
/// closed ones are dropped. A restarted or killed peer's old connections end with it (its
/// kernel closes them): a request sent on one would be lost with its outcome unknown (a
/// forwarded write "may have been applied") for nothing. The socket is peeked, not read, so
/// a TLS stream above it is left intact.
pub fn take_open<S: Pooled>(idle: &mut Vec<S>) -> Option<S> {
    while let Some(s) = idle.pop() {
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match s.tcp().poll_peek(&mut cx, &mut buf) {
            // Nothing to read and not closed: usable.
            Poll::Pending => return Some(s),
            // Closed (0), an unsolicited byte (a TLS alert), or an error: drop it.
            Poll::Ready(_) => continue,
        }
    }
    None
}

/// Idle connections kept per peer; more concurrent calls open (and then drop) their own.
const MAX_IDLE: usize = 4;

impl Peer {
    /// A peer at `addr`; under mTLS, `node` is the id its certificate must name (`None`:
    /// any node of the cluster, for a leader known only by its address).
    pub(crate) fn new(addr: impl Into<String>, tls: Option<&NodeTls>, node: Option<u64>) -> Peer {
        Peer {
            addr: addr.into(),
            tls: tls.map(|t| {
                let name = match node {
                    Some(id) => NodeTls::server_name(id),
                    None => NodeTls::any_node(),
                };
                (Arc::clone(&t.client), name)
            }),
            idle: parking_lot::Mutex::new(Vec::new()),
        }
    }

    fn pop_open(&self) -> Option<RpcStream> {
        take_open(&mut self.idle.lock())
    }

    /// A new connection, TLS handshake included.
    async fn connect(&self) -> io::Result<RpcStream> {
        let tcp = TcpStream::connect(&self.addr).await?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(RpcStream::Tcp(tcp)),
            Some((config, name)) => {
                let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
                    .connect(name.clone(), tcp)
                    .await?;
                Ok(RpcStream::Tls(Box::new(tls)))
            }
        }
    }

    /// Sends `req` and waits for its reply, for at most `timeout` in all (connecting
    /// included).
    pub(crate) async fn call(
        &self,
        req: &PbRequest,
        timeout: Duration,
    ) -> Result<PbReply, CallError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let cached = self.pop_open();
        let mut stream = match cached {
            Some(s) => s,
            None => {
                match tokio::time::timeout(CONNECT_TIMEOUT.min(timeout), self.connect()).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return Err(CallError::Unreachable(e)),
                    Err(_) => {
                        return Err(CallError::Unreachable(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("connecting to {}", self.addr),
                        )));
                    }
                }
            }
        };
        let exchange = async {
            write_frame(&mut stream, req).await?;
            read_frame::<_, PbReply>(&mut stream).await
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(Ok(reply)) => {
                // Only a connection that completed its exchange is reused.
                let mut idle = self.idle.lock();
                if idle.len() < MAX_IDLE {
                    idle.push(stream);
                }
                Ok(reply)
            }
            Ok(Err(e)) => Err(CallError::Network(e)),
            Err(_) => Err(CallError::Timeout(timeout)),
        }
    }
}

/// The `InstallSnapshot` request body.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotHead {
    pub vote: Vote,
    pub meta: SnapshotMeta,
}

impl SnapshotHead {
    pub(crate) fn request(vote: Vote, snapshot: Snapshot) -> io::Result<PbRequest> {
        let mut req = PbRequest::new(
            Kind::InstallSnapshot,
            &SnapshotHead {
                vote,
                meta: snapshot.meta,
            },
        )?;
        req.data = snapshot.snapshot;
        Ok(req)
    }
}

/// A forwarded write's answer: the leader's apply response, or why it did not commit it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum WriteReply {
    Applied(Response),
    /// The receiver is not the leader; the hint says who is, when known.
    NotLeader {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    /// The leader accepted the entry but lost leadership before it committed: it may or may
    /// not be applied (openraft's `LogEntryDiscarded`).
    MayHaveApplied(String),
    Failed(String),
}

/// A forwarded write.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WriteRequest {
    pub command: Command,
}

/// The leader's answer to a read-index request: the log index a linearizable read must see
/// applied.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ReadIndexReply {
    Index(u64),
    NotLeader {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_call_never_waits_behind_another_to_a_peer_that_stopped_answering() {
        // A peer whose kernel accepts connections but whose process never answers (SIGSTOP).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let peer = Arc::new(Peer::new(addr, None, None));
        let req = PbRequest::new(Kind::Heartbeat, &()).unwrap();
        let slow = {
            let (peer, req) = (peer.clone(), req.clone());
            tokio::spawn(async move { peer.call(&req, Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A heartbeat with its own short timeout gets its own answer (a timeout) while the
        // forwarded write before it still waits.
        let quick = peer.call(&req, Duration::from_millis(100)).await;
        assert!(matches!(quick, Err(CallError::Timeout(_))), "{quick:?}");
        assert!(!slow.is_finished());
        slow.abort();
        accepted.abort();
    }

    #[tokio::test]
    async fn a_connection_the_peer_closed_while_idle_is_not_used_again() {
        // A peer that answers one request per connection and then closes it, as a restarted
        // process's old connections are closed by the kernel.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let _: PbRequest = read_frame(&mut s).await.unwrap();
                write_frame(&mut s, &PbReply::new(&"ok").unwrap())
                    .await
                    .unwrap();
            }
        });
        let peer = Peer::new(addr, None, None);
        let req = PbRequest::new(Kind::Heartbeat, &()).unwrap();
        peer.call(&req, Duration::from_secs(5)).await.unwrap();
        // The answered connection went back to the pool; the peer has closed it since.
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The next call opens a new one instead of losing its request's outcome on it.
        let reply = peer.call(&req, Duration::from_secs(5)).await.unwrap();
        assert_eq!(reply.decode_body::<String>().unwrap(), "ok");
        server.abort();
    }

    #[tokio::test]
    async fn a_frame_round_trips() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let req = PbRequest {
            kind: Kind::ReadIndex as u32,
            body: b"{}".to_vec(),
            data: vec![7; 1000],
        };
        write_frame(&mut a, &req).await.unwrap();
        let got: PbRequest = read_frame(&mut b).await.unwrap();
        assert_eq!(got, req);
        assert_eq!(got.kind(), Some(Kind::ReadIndex));
    }

    #[tokio::test]
    async fn an_oversized_or_truncated_frame_is_an_error_not_a_panic_or_an_allocation() {
        // A length prefix above the limit is refused before anything is read.
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let e = read_frame::<_, PbRequest>(&mut b).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // A frame cut short is an EOF, with only the received bytes buffered.
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&1000u32.to_be_bytes()).await.unwrap();
        a.write_all(&[1, 2, 3]).await.unwrap();
        drop(a);
        let e = read_frame::<_, PbRequest>(&mut b).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        // Garbage inside a well-formed frame is invalid data.
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&3u32.to_be_bytes()).await.unwrap();
        a.write_all(&[0xff, 0xff, 0xff]).await.unwrap();
        let e = read_frame::<_, PbRequest>(&mut b).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // An unknown kind decodes, and is recognised as unknown.
        let req = PbRequest {
            kind: 99,
            ..Default::default()
        };
        assert_eq!(req.kind(), None);
    }
}
