//! One client connection: read frames, check the version range before decoding, dispatch,
//! and write responses in request order.
//!
//! Requests are *started* in arrival order (so pipelined produces to one partition append in
//! order); what remains of a request after that (waiting for WAL durability, fetch long-polls)
//! runs concurrently, and the writer sends responses strictly in request order.

use crate::Broker;
use crate::dispatch::{self, Started};
use crate::handlers;
use crate::session::{Admit, Session};
use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use shale_protocol::envelope;
use shale_protocol::fetch_frame::{self, FrameChunks};
use shale_protocol::frame::{FrameError, read_frame};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Pipelined requests per connection before the reader waits for responses to go out.
const MAX_IN_FLIGHT: usize = 128;

/// A response frame to send, nothing (acks=0), or `Err` when no response can be produced
/// and the connection must close rather than leave the client waiting.
type Pending = JoinHandle<Result<Option<Frame>, ()>>;

/// An encoded response: one buffer, or chunks (a fetch's records as they were read).
pub(crate) enum Frame {
    One(Bytes),
    Chunks(FrameChunks),
}

/// How long a connection of a closing node waits for the next request before it closes.
pub(crate) const CLOSING_IDLE: std::time::Duration = std::time::Duration::from_millis(100);

/// Bytes a connection's writer gathers before a write; larger chunks go out directly.
const WRITE_BUFFER: usize = 64 * 1024;

async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut BufWriter<W>,
    frame: Frame,
) -> std::io::Result<()> {
    match frame {
        Frame::One(b) => w.write_all(&b).await?,
        Frame::Chunks(c) => {
            for chunk in c.chunks {
                w.write_all(&chunk).await?;
            }
        }
    }
    w.flush().await
}

/// Serves one connection (plain TCP or TLS) whose identity so far is `session`.
pub(crate) async fn serve<S>(broker: Arc<Broker>, socket: S, mut session: Session)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let peer = session.peer;
    let (mut reader, writer) = tokio::io::split(socket);
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER, writer);
    let (tx, mut rx) = mpsc::channel::<Pending>(MAX_IN_FLIGHT);

    let write_loop = tokio::spawn(async move {
        while let Some(pending) = rx.recv().await {
            match pending.await {
                Ok(Ok(Some(frame))) => {
                    if let Err(e) = write_frame(&mut writer, frame).await {
                        tracing::debug!(%peer, error = %e, "write failed; closing");
                        return;
                    }
                }
                Ok(Ok(None)) => {}
                Ok(Err(())) => return,
                Err(e) => {
                    // A handler task failed; the client cannot be answered in order any more.
                    tracing::error!(%peer, error = %e, "request handler failed; closing");
                    return;
                }
            }
        }
        let _ = writer.shutdown().await;
    });

    let mut stop = broker.closing_signal();
    // A connection accepted as the node started closing would never see the change.
    let mut closing = *stop.borrow_and_update();
    let limit = broker.config.socket_request_max_bytes;
    loop {
        // Once the node is closing (a controlled shutdown handed its partitions off), the
        // connection is still read until it goes idle: a request sent meanwhile is answered
        // (NOT_LEADER_OR_FOLLOWER naming the new owner) rather than lost with the socket,
        // which a librdkafka idempotent producer pays for with a second of waiting.
        let frame = {
            let read = read_frame(&mut reader, session.frame_limit(limit));
            tokio::pin!(read);
            loop {
                tokio::select! {
                    f = &mut read => break Some(f),
                    _ = stop.changed(), if !closing => closing = true,
                    _ = tokio::time::sleep(CLOSING_IDLE), if closing => break None,
                }
            }
        };
        let Some(frame) = frame else { break };
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(FrameError::TooLarge { size, limit }) => {
                tracing::warn!(%peer, size, limit, "request larger than the frame limit (socket.request.max.bytes; 512 KiB before SASL authentication); closing");
                break;
            }
            Err(e) => {
                tracing::info!(%peer, error = %e, "connection ended");
                break;
            }
        };
        // A client over its quota: no request of its is started until its throttle time is
        // over (Kafka mutes the channel; here the next frame waits, read or not).
        let muted = session.muted_until.lock().take();
        if let Some(until) = muted.filter(|t| *t > std::time::Instant::now()) {
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => {}
                _ = stop.changed(), if !closing => closing = true,
            }
        }
        let Some((pending, then_close)) = start_request(&broker, &mut session, frame).await else {
            break;
        };
        if tx.send(pending).await.is_err() || then_close {
            break;
        }
    }
    drop(tx);
    let _ = write_loop.await;
}

/// Starts one request; `None` closes the connection (what Kafka does on requests it cannot
/// parse or answer), `Some((_, true))` closes it once the answer is sent.
async fn start_request(
    broker: &Arc<Broker>,
    session: &mut Session,
    frame: Bytes,
) -> Option<(Pending, bool)> {
    let peer = session.peer;
    let head = match envelope::peek(&frame) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "malformed request; closing");
            return None;
        }
    };
    let Some(api) = ApiKey::try_from(head.api_key)
        .ok()
        .filter(|k| dispatch::supported(*k).is_some())
    else {
        tracing::warn!(%peer, api_key = head.api_key, "unknown or unsupported api key; closing");
        return None;
    };
    // Before anything is decoded: on a SASL listener, only the SASL requests (and
    // ApiVersions) of an unauthenticated client are read further.
    if !matches!(api, ApiKey::SaslHandshake | ApiKey::SaslAuthenticate)
        && !matches!(session.admit(api), Admit::Serve)
    {
        return None;
    }
    let range = dispatch::supported(api)?;
    if head.api_version < range.min || head.api_version > range.max {
        if api == ApiKey::ApiVersions {
            // KIP-511: answer in v0 with the ranges so the client can downgrade.
            let resp = envelope::unsupported_api_versions(
                head.correlation_id,
                &dispatch::api_versions_response(0),
            );
            return Some((
                tokio::spawn(async move { resp.map(|b| Some(Frame::One(b))).map_err(|_| ()) }),
                false,
            ));
        }
        tracing::warn!(%peer, ?api, version = head.api_version, "unsupported api version; closing");
        return None;
    }
    let (header, body) = match envelope::decode_request(frame.clone(), api, head.api_version) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot decode request; closing");
            return None;
        }
    };
    let version = head.api_version;
    let correlation_id = header.correlation_id;
    let timer = RequestTimer::start(api, version, correlation_id, peer);
    // The header's strings are slices of the frame; dropping them lets Produce reclaim the
    // frame for in-place patching.
    drop(header);
    let encode = move |resp: Option<kafka_protocol::messages::ResponseKind>| {
        let Some(resp) = resp else { return Ok(None) };
        match envelope::encode_response(api, version, correlation_id, &resp) {
            Ok(b) => Ok(Some(Frame::One(b))),
            Err(e) => {
                tracing::error!(?api, version, error = %e, "cannot encode response; closing");
                Err(())
            }
        }
    };
    // Authentication happens here, on the connection, before anything reaches dispatch.
    use kafka_protocol::messages::RequestKind;
    let admit = match body {
        RequestKind::SaslHandshake(req) => session.handshake(version, req),
        RequestKind::SaslAuthenticate(req) => session.authenticate(broker, version, req).await,
        // Admitted before decoding (above).
        mut body => {
            let mut quota = crate::quotas::RequestQuota::start(broker, &session.ctx, api, &frame);
            match (&mut quota, &mut body) {
                (Some(q), RequestKind::Fetch(f)) => {
                    if let Some(max) = q.fetch_max_bytes(broker) {
                        // Kafka's bound: one fetch may not take more than the quota's window
                        // allows, nor wait for more than that.
                        f.max_bytes = f.max_bytes.min(max);
                        f.min_bytes = f.min_bytes.min(f.max_bytes);
                    }
                }
                // Kafka does not count acks=0 produces for request time: nothing answers.
                (Some(q), RequestKind::Produce(p)) if p.acks == 0 => q.count_time = false,
                _ => {}
            }
            let start = dispatch::start(broker, &session.ctx, api, version, body, frame);
            let (started, spent) = match quota {
                None => (start.await, std::time::Duration::ZERO),
                Some(_) => crate::quotas::Timed::new(start, std::time::Duration::ZERO).await,
            };
            let throttling = quota.map(|quota| Throttling {
                broker: broker.clone(),
                quota,
                spent,
                muted_until: session.muted_until.clone(),
            });
            return Some((
                run(started, timer, encode, correlation_id, version, throttling)?,
                false,
            ));
        }
    };
    let (resp, then_close) = match admit {
        Admit::Answer(resp) => (resp, false),
        Admit::AnswerAndClose(resp) => (resp, true),
        Admit::Close | Admit::Serve => return None,
    };
    let frame = encode(Some(resp));
    timer.finish();
    Some((tokio::spawn(async move { frame }), then_close))
}

/// A request subject to client quotas: what `run` needs to throttle it once it is answered.
struct Throttling {
    broker: Arc<Broker>,
    quota: crate::quotas::RequestQuota,
    /// Time spent on the request so far (starting it).
    spent: std::time::Duration,
    muted_until: Arc<parking_lot::Mutex<Option<std::time::Instant>>>,
}

impl Throttling {
    /// Records the finished request; returns its throttle (ms), after muting the connection
    /// for it. As Kafka, the response itself is never held back.
    fn finish(&self, spent: std::time::Duration, fetched: Option<u64>) -> u64 {
        let throttle = self.quota.finish(&self.broker, spent, fetched);
        if throttle > 0 {
            // The later of this and a mute already in force: a pipelined request answered
            // after a costlier one must not shorten its mute.
            let until = std::time::Instant::now() + std::time::Duration::from_millis(throttle);
            let mut muted = self.muted_until.lock();
            *muted = Some(muted.map_or(until, |m| m.max(until)));
        }
        throttle
    }
}

/// A throttle as the responses' `throttle_time_ms` carries it (throttles are bounded by
/// `Quotas::record`, far below `i32::MAX` ms).
fn ms_field(ms: u64) -> i32 {
    i32::try_from(ms).unwrap_or(i32::MAX)
}

/// Runs the rest of a dispatched request in a task of its own; `None` closes the connection.
fn run(
    started: Started,
    timer: RequestTimer,
    encode: impl FnOnce(Option<kafka_protocol::messages::ResponseKind>) -> Result<Option<Frame>, ()>
    + Send
    + 'static,
    correlation_id: i32,
    version: i16,
    throttling: Option<Throttling>,
) -> Option<Pending> {
    use crate::quotas::{Timed, set_throttle_time};
    let throttled = |t: &Option<Throttling>,
                     resp: &mut Option<kafka_protocol::messages::ResponseKind>,
                     spent| {
        let ms = t.as_ref().map_or(0, |t| t.finish(spent, None));
        if ms > 0
            && let Some(r) = resp.as_mut()
        {
            set_throttle_time(r, ms_field(ms));
        }
    };
    Some(match started {
        Started::Close => return None,
        Started::Done(mut resp) => {
            let spent = throttling.as_ref().map(|t| t.spent).unwrap_or_default();
            throttled(&throttling, &mut resp, spent);
            let frame = encode(resp);
            timer.finish();
            tokio::spawn(async move { frame })
        }
        Started::Later(fut) => tokio::spawn(async move {
            let spent = throttling.as_ref().map(|t| t.spent).unwrap_or_default();
            let (mut resp, spent) = Timed::new(fut, spent).await;
            throttled(&throttling, &mut resp, spent);
            timer.finish();
            encode(resp)
        }),
        Started::Fetch(fut) => tokio::spawn(async move {
            let spent = throttling.as_ref().map(|t| t.spent).unwrap_or_default();
            let (mut reply, spent) = Timed::new(fut, spent).await;
            if let Some(t) = &throttling {
                let bytes: u64 = reply.records.iter().flatten().map(|b| b.len() as u64).sum();
                let ms = t.finish(spent, Some(bytes));
                if ms > 0 {
                    // Kafka answers a throttled fetch with no data: the records would only
                    // add to the overshoot, and the client fetches them again later.
                    let session_id = reply.response.session_id;
                    reply = handlers::fetch::FetchReply {
                        response: kafka_protocol::messages::FetchResponse::default()
                            .with_throttle_time_ms(ms_field(ms))
                            .with_session_id(session_id),
                        records: Vec::new(),
                    };
                }
            }
            timer.finish();
            fetch_frame::encode_fetch_response(
                correlation_id,
                version,
                &reply.response,
                reply.records,
            )
            .map(|c| Some(Frame::Chunks(c)))
            .map_err(|e| {
                tracing::error!(version, error = %e, "cannot encode fetch response; closing");
            })
        }),
    })
}

impl Broker {
    /// Handles one request frame as a connection does (version check, guard, decode,
    /// dispatch, encode) and returns the response frame, or `None` when there is none (acks=0)
    /// or the connection would be closed. A request still running after `within` (a fetch
    /// long-poll, a join waiting for its group) is cancelled. For the request-path fuzz target
    /// and tests that drive the broker without a socket.
    pub async fn handle_frame(
        self: &Arc<Self>,
        frame: Bytes,
        within: std::time::Duration,
    ) -> Option<Bytes> {
        let mut session = Session::anonymous(SocketAddr::from(([127, 0, 0, 1], 0)));
        match self.serve_one(&mut session, frame, within).await? {
            Frame::One(b) => Some(b),
            Frame::Chunks(c) => Some(c.concat()),
        }
    }

    /// One request of `session` start to finish: its response frame (size prefix
    /// included), or `None` as in [`Broker::handle_frame`].
    pub(crate) async fn serve_one(
        self: &Arc<Self>,
        session: &mut Session,
        frame: Bytes,
        within: std::time::Duration,
    ) -> Option<Frame> {
        let (mut pending, _) = start_request(self, session, frame).await?;
        match tokio::time::timeout(within, &mut pending).await {
            Ok(Ok(Ok(frame))) => frame,
            Ok(_) => None,
            Err(_) => {
                pending.abort();
                None
            }
        }
    }
}

/// Request count and latency per API (`shale_requests_total`, `shale_request_seconds`),
/// from the decoded request to the response being ready (a fetch's long poll included).
/// At debug level it also logs each request as it is answered, so a request that hangs (or
/// a client that never got its answer) can be told apart from one that was never sent.
struct RequestTimer {
    api: &'static str,
    version: i16,
    correlation_id: i32,
    peer: SocketAddr,
    started: std::time::Instant,
}

impl RequestTimer {
    fn start(api: ApiKey, version: i16, correlation_id: i32, peer: SocketAddr) -> RequestTimer {
        RequestTimer {
            api: dispatch::api_name(api),
            version,
            correlation_id,
            peer,
            started: std::time::Instant::now(),
        }
    }

    fn finish(self) {
        let elapsed = self.started.elapsed();
        metrics::counter!("shale_requests_total", "api" => self.api).increment(1);
        metrics::histogram!("shale_request_seconds", "api" => self.api)
            .record(elapsed.as_secs_f64());
        tracing::debug!(
            api = self.api,
            version = self.version,
            correlation_id = self.correlation_id,
            peer = %self.peer,
            ms = elapsed.as_millis() as u64,
            "request answered"
        );
    }
}
