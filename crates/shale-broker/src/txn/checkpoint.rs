//! Producer-state checkpoints: every `producer.state.checkpoint.interval.ms` a node writes
//! one object (a node blob of the stream layer) holding the producer-state snapshot of every
//! partition it has open, each valid for the batches below its offset.
//!
//! Why: a partition's own snapshot (`snapshot`) is a PUT per partition, so it is taken once a
//! minute; a new owner after a crash then scans everything appended since, one GET per WAL
//! object, and a failover that moves dozens of young partitions spent seconds in those scans
//! (kill -9 of an owner: 1.3–6.8 s per open in the failover drill). One PUT per node per
//! interval covers all its partitions, so the scan after a crash is about one interval long.
//!
//! Safety is the snapshot's: each entry is taken under the partition's append lock and put
//! in the object only once the batches below its offset are durable (committed), so an
//! entry never describes an append that could still be lost. Any entry whose offset is at
//! most the stream's committed end describes that committed history, whichever node wrote
//! it and whenever: the loader takes the newest such entry among the partition's snapshot
//! and every registered node's checkpoint (a deposed owner's older one included).
//!
//! Format: the snapshot's framing (`snapshot::frame`: a version byte, a protobuf body, a
//! CRC-32C of both); anything that does not decode is ignored (the partition's snapshot and a longer scan take over).

use super::producers::ProducerStates;
use super::snapshot;
use crate::Broker;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use parking_lot::Mutex;
use prost::Message;
use shale_stream::{StreamId, StreamStore};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The node blob's name.
/// An owned partition and its fresh checkpoint (the offset it covers, its bytes), if any.
type Taken = (Arc<crate::partitions::Owned>, Option<(u64, Bytes)>);

const NAME: &str = "producer-state";
/// An unchanged checkpoint is still rewritten this often: the garbage collector deletes a
/// blob not rewritten for `gc_min_age` (an hour by default).
const REFRESH: Duration = Duration::from_secs(30);
/// How long a pass waits for the batches it covers to become durable (a WAL flush or two);
/// an entry still waiting keeps its previous durable version.
const DURABLE_WAIT: Duration = Duration::from_secs(2);
/// How long an open waits for a node's checkpoint before it does without (the partition's
/// snapshot and a longer scan then take over).
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a fetched checkpoint serves further opens: a failover opens many partitions at
/// once, and one GET per node serves them all.
const FETCHED_TTL: Duration = Duration::from_secs(1);

#[derive(Clone, PartialEq, Message)]
struct PbCheckpoint {
    #[prost(uint64, tag = "1")]
    node: u64,
    #[prost(message, repeated, tag = "2")]
    entries: Vec<PbEntry>,
}

#[derive(Clone, PartialEq, Message)]
struct PbEntry {
    #[prost(uint64, tag = "1")]
    stream_id: u64,
    /// A `snapshot::encode` of the partition's state.
    #[prost(bytes = "bytes", tag = "2")]
    snapshot: Bytes,
}

fn encode(node: u64, entries: &HashMap<StreamId, (u64, Bytes)>) -> Bytes {
    let pb = PbCheckpoint {
        node,
        entries: entries
            .iter()
            .map(|(id, (_, snapshot))| PbEntry {
                stream_id: *id,
                snapshot: snapshot.clone(),
            })
            .collect(),
    };
    snapshot::frame(&pb)
}

/// Stream id -> its encoded snapshot; `None` for anything that is not a checkpoint.
fn decode(data: &Bytes) -> Option<HashMap<StreamId, Bytes>> {
    let body = snapshot::unframe(data)?;
    // Entries keep slices of the fetched buffer rather than copies.
    let pb = PbCheckpoint::decode(data.slice_ref(body)).ok()?;
    Some(
        pb.entries
            .into_iter()
            .map(|e| (e.stream_id, e.snapshot))
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// Writing

pub(crate) async fn run(broker: Arc<Broker>) {
    let period = broker.config.producer_state_checkpoint_interval;
    if period.is_zero() {
        return;
    }
    let mut stop = broker.shutdown_signal();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut writer = Writer::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        writer.pass(&broker, false).await;
    }
}

/// The checkpoint task's memory of what it wrote.
#[derive(Default)]
pub(crate) struct Writer {
    /// Per open stream, the durable entry in the checkpoint: (offset, encoded snapshot).
    entries: HashMap<StreamId, (u64, Bytes)>,
    /// When the checkpoint was last stored; `None` before, or after a failed PUT.
    stored_at: Option<Instant>,
}

impl Writer {
    /// Takes every open partition's state, waits for it to be durable and stores the
    /// checkpoint if anything changed (or it is due for a refresh). Returns whether it
    /// stored one. `drained`: the stream layer has shut down, its handles are closed and
    /// everything appended through them is committed (a controlled shutdown's last pass).
    pub(crate) async fn pass(&mut self, broker: &Broker, drained: bool) -> bool {
        let taken: Vec<_> = broker
            .open_partitions()
            .into_iter()
            .filter(|o| {
                if drained {
                    !o.stream.is_fenced()
                } else {
                    o.stream.is_current()
                }
            })
            .map(|o| {
                let id = o.stream.id();
                let fresh = {
                    let producers = o.producers.lock();
                    let next = o.stream.next_offset();
                    let unchanged = self.entries.get(&id).is_some_and(|(at, _)| *at == next);
                    (!unchanged).then(|| (next, snapshot::encode(&producers, next)))
                };
                (o, fresh)
            })
            .collect();
        let deadline = tokio::time::Instant::now() + DURABLE_WAIT;
        let waiting = |taken: &[Taken]| {
            taken.iter().any(|(o, fresh)| {
                fresh
                    .as_ref()
                    .is_some_and(|(at, _)| o.stream.end_offset() < *at && o.stream.is_writable())
            })
        };
        while waiting(&taken) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut entries = HashMap::with_capacity(taken.len());
        let mut changed = false;
        for (o, fresh) in taken {
            let id = o.stream.id();
            let previous = self.entries.remove(&id);
            match fresh {
                Some((at, snap)) if o.stream.end_offset() >= at => {
                    entries.insert(id, (at, snap));
                    changed = true;
                }
                _ => {
                    if let Some(previous) = previous {
                        entries.insert(id, previous);
                    }
                }
            }
        }
        // What is left was closed: it leaves the checkpoint too.
        changed |= !self.entries.is_empty();
        let due = self.stored_at.is_none_or(|at| at.elapsed() >= REFRESH);
        let never_needed = entries.is_empty() && self.stored_at.is_none();
        if never_needed || (!changed && !due) {
            self.entries = entries;
            return false;
        }
        let data = encode(broker.config.node_id as u64, &entries);
        self.entries = entries;
        match broker.streams.put_node_blob(NAME, data).await {
            Ok(()) => {
                self.stored_at = Some(Instant::now());
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "producer-state checkpoint not stored");
                self.stored_at = None;
                false
            }
        }
    }
}

impl Broker {
    /// Stores this node's producer-state checkpoint now (tests).
    #[doc(hidden)]
    pub async fn checkpoint_producer_states_now(&self) -> bool {
        Writer::default().pass(self, false).await
    }

    /// A controlled shutdown's last checkpoint, once the WAL is drained: the new owners then
    /// load every partition's state as it ends, with no scan and no snapshot GET.
    pub(crate) async fn checkpoint_drained(&self) {
        if self.config.producer_state_checkpoint_interval.is_zero() {
            return;
        }
        let mut writer = Writer::default();
        let pass = writer.pass(self, true);
        if tokio::time::timeout(Duration::from_secs(2), pass)
            .await
            .is_err()
        {
            tracing::warn!(
                "controlled shutdown: last producer-state checkpoint not stored in time"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loading

type NodeFetch = Shared<BoxFuture<'static, Option<Arc<HashMap<StreamId, Bytes>>>>>;

/// Checkpoints fetched for recent opens, per node.
#[derive(Default)]
pub(crate) struct Fetched {
    nodes: Mutex<HashMap<u64, (Instant, NodeFetch)>>,
}

impl Fetched {
    fn node(&self, streams: &Arc<StreamStore>, node: u64) -> NodeFetch {
        let mut nodes = self.nodes.lock();
        if let Some((at, f)) = nodes.get(&node)
            && at.elapsed() < FETCHED_TTL
        {
            return f.clone();
        }
        let streams = streams.clone();
        let f = async move {
            // Shared by every open of the next second: a GET stuck on a bad connection must
            // not hold them all (the object store's own timeout and retries run to minutes).
            let fetched =
                tokio::time::timeout(FETCH_TIMEOUT, streams.get_node_blob(node, NAME)).await;
            let Ok(fetched) = fetched else {
                tracing::debug!(node, "producer-state checkpoint fetch timed out");
                return None;
            };
            match fetched {
                Ok(Some(data)) => {
                    let decoded = decode(&data);
                    if decoded.is_none() {
                        tracing::warn!(node, "unreadable producer-state checkpoint ignored");
                    }
                    decoded.map(Arc::new)
                }
                Ok(None) => None,
                Err(e) => {
                    tracing::debug!(node, error = %e, "producer-state checkpoint not fetched");
                    None
                }
            }
        }
        .boxed()
        .shared();
        nodes.insert(node, (Instant::now(), f.clone()));
        f
    }
}

/// The newest state of `stream` that a registered node's checkpoint holds and that covers
/// no more than the committed `end`, with its offset.
pub(crate) async fn newest(
    broker: &Broker,
    stream: StreamId,
    end: u64,
) -> Option<(ProducerStates, u64)> {
    if broker.config.producer_state_checkpoint_interval.is_zero() {
        return None;
    }
    let nodes: Vec<u64> = broker.meta.read(|s| s.nodes.keys().copied().collect());
    let fetched = futures::future::join_all(
        nodes
            .into_iter()
            .map(|n| broker.checkpoints.node(&broker.streams, n)),
    )
    .await;
    fetched
        .into_iter()
        .flatten()
        .filter_map(|m| snapshot::decode(m.get(&stream)?))
        .filter(|(_, offset)| *offset <= end)
        .max_by_key(|(_, offset)| *offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_round_trips_and_anything_damaged_is_ignored() {
        let states = ProducerStates::default();
        let entries = HashMap::from([
            (7, (10, snapshot::encode(&states, 10))),
            (9, (0, snapshot::encode(&states, 0))),
        ]);
        let data = encode(3, &entries);
        let decoded = decode(&data).unwrap();
        assert_eq!(decoded.len(), 2);
        assert_eq!(snapshot::decode(&decoded[&7]).map(|(_, o)| o), Some(10));
        for damaged in [
            data.slice(..data.len() - 1),
            Bytes::new(),
            Bytes::from_static(b"\x01\x00\x00\x00"),
            {
                let mut d = data.to_vec();
                d[2] ^= 1;
                Bytes::from(d)
            },
        ] {
            assert!(decode(&damaged).is_none());
        }
    }
}
