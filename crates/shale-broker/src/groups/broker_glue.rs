//! Wiring of the coordinator into the broker: the `__consumer_offsets` topic, loading the
//! partitions this node owns (and dropping those it loses), appends through the stream, and
//! the offset expiry task.

use super::{Durable, GroupCoordinator, PartitionLog, records};
use crate::Broker;
use crate::handlers::metadata::leader_epoch;
use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use shale_stream::{Stream, StreamError};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

pub(crate) const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Appends to a coordinator partition's stream, as produce does.
struct StreamLog {
    stream: Arc<Stream>,
    /// For healing: a failed WAL object fences this handle for good, so the partition is
    /// reloaded from its durable records on a fresh handle (a coordinator failover onto the
    /// same node) instead of answering NOT_COORDINATOR until a restart.
    broker: Weak<Broker>,
    partition: i32,
    healing: Arc<AtomicBool>,
}

impl StreamLog {
    /// Starts one reload of the partition once its handle is unusable.
    fn heal(&self) {
        if self.stream.is_writable() || self.healing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(broker) = self.broker.upgrade() else {
            return;
        };
        let p = self.partition;
        tokio::spawn(async move { reload(&broker, p).await });
    }
}

/// Drops a coordinator partition's state and loads it again from its stream.
async fn reload(broker: &Arc<Broker>, p: i32) {
    if broker.is_shutting_down() {
        return;
    }
    tracing::info!(
        partition = p,
        "reloading coordinator partition after a failed append"
    );
    broker.groups.begin_reload(p);
    load_one(broker, p).await;
}

fn coordinator_error(e: &StreamError) -> ResponseError {
    match e {
        // Another node owns the partition now: the client must find the new coordinator.
        StreamError::Fenced(_) | StreamError::ShuttingDown | StreamError::Catalog(_) => {
            ResponseError::NotCoordinator
        }
        _ => ResponseError::CoordinatorNotAvailable,
    }
}

impl StreamLog {
    /// The partition's producer state, for appends that must pass its epoch checks.
    fn owned(&self) -> Result<Arc<crate::partitions::Owned>, ResponseError> {
        self.broker
            .upgrade()
            .and_then(|b| b.owned_if_open(self.stream.id()))
            .filter(|o| Arc::ptr_eq(&o.stream, &self.stream))
            .ok_or_else(|| {
                self.heal();
                ResponseError::NotCoordinator
            })
    }

    /// The durability wait of an append, healing the partition when it fails.
    fn durable(&self, durable: crate::txn::append::Durable) -> Durable {
        let healer = StreamLog {
            stream: self.stream.clone(),
            broker: self.broker.clone(),
            partition: self.partition,
            healing: self.healing.clone(),
        };
        Box::pin(async move {
            match durable.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => {
                    healer.heal();
                    Err(coordinator_error(&e))
                }
                Err(_) => Err(ResponseError::NotCoordinator),
            }
        })
    }

    fn append_error(&self, e: crate::txn::append::AppendError) -> ResponseError {
        use crate::txn::append::AppendError;
        match e {
            AppendError::Producer(p) => crate::handlers::produce::producer_error(p).0,
            AppendError::Stream(e) => {
                tracing::warn!(stream = self.stream.id(), error = %e, "__consumer_offsets append failed");
                self.heal();
                coordinator_error(&e)
            }
            AppendError::Internal(e) => {
                tracing::error!(error = %e, "cannot build a __consumer_offsets batch");
                ResponseError::UnknownServerError
            }
        }
    }
}

impl PartitionLog for StreamLog {
    fn is_current(&self) -> bool {
        self.stream.is_current()
    }

    fn append_txn(
        &self,
        records: Vec<(Bytes, Option<Bytes>)>,
        producer_id: i64,
        epoch: i16,
    ) -> Result<(u64, Durable), ResponseError> {
        let owned = self.owned()?;
        let now = crate::now_ms();
        let buf = records::encode_batch_as(&records, now, Some((producer_id, epoch)))
            .map_err(|e| self.append_error(crate::txn::append::AppendError::Internal(e)))?;
        let (base, durable) =
            crate::txn::append::append_coordinator_batch(&owned, buf, records.len() as u32, now)
                .map_err(|e| self.append_error(e))?;
        Ok((base, self.durable(durable)))
    }

    fn append_marker(
        &self,
        producer_id: i64,
        epoch: i16,
        marker: shale_protocol::control::EndTxnMarker,
    ) -> Result<(u64, Durable), ResponseError> {
        let owned = self.owned()?;
        let (base, durable) =
            crate::txn::append::append_marker(&owned, producer_id, epoch, marker, crate::now_ms())
                .map_err(|e| self.append_error(e))?;
        Ok((base, self.durable(durable)))
    }

    fn append(
        &self,
        records: Vec<(Bytes, Option<Bytes>)>,
    ) -> Result<(u64, Durable), ResponseError> {
        let now = crate::now_ms();
        let mut buf = records::encode_batch(&records, now).map_err(|e| {
            tracing::error!(error = %e, "cannot encode a __consumer_offsets batch");
            ResponseError::UnknownServerError
        })?;
        let epoch = leader_epoch(self.stream.epoch());
        let handle = self
            .stream
            .append(records.len() as u32, now, move |base| {
                shale_protocol::batch::patch_offsets(&mut buf, base as i64, epoch);
                buf.freeze()
            })
            .map_err(|e| {
                tracing::warn!(stream = self.stream.id(), error = %e, "__consumer_offsets append failed");
                self.heal();
                coordinator_error(&e)
            })?;
        let durable = handle.durable;
        let healer = StreamLog {
            stream: self.stream.clone(),
            broker: self.broker.clone(),
            partition: self.partition,
            healing: self.healing.clone(),
        };
        Ok((
            handle.base_offset,
            Box::pin(async move {
                match durable.await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => {
                        healer.heal();
                        Err(coordinator_error(&e))
                    }
                    Err(_) => Err(ResponseError::NotCoordinator),
                }
            }),
        ))
    }
}

/// A coordinator partition's records as loading sees them: committed ones in log order (a
/// transaction's offsets at its commit marker, with their own offsets), and the offsets of
/// transactions still open, by producer id.
#[derive(Default)]
pub(crate) struct LoadedRecords {
    pub records: Vec<(u64, Bytes, Option<Bytes>)>,
    pub pending: std::collections::HashMap<i64, Vec<(u64, Bytes, Option<Bytes>)>>,
}

/// Every stored item of a coordinator partition's stream (records and transaction markers),
/// start to end; undecodable batches are skipped with a log line. Both coordinators load
/// their partitions through it.
pub(crate) async fn read_stored(stream: &Stream) -> Result<Vec<records::Stored>, StreamError> {
    let mut out = Vec::new();
    let end = stream.end_offset();
    let mut from = stream.start_offset();
    while from < end {
        let entries = stream.read(from, 4 << 20).await?;
        let Some(last) = entries.last() else { break };
        let next = last.end_offset();
        for e in entries {
            match records::decode_stored(e.payload) {
                Ok(items) => out.extend(items),
                Err(err) => {
                    tracing::warn!(stream = stream.id(), offset = e.base_offset, error = %err, "skipping undecodable batch")
                }
            }
        }
        if next <= from {
            break;
        }
        from = next;
    }
    Ok(out)
}

/// Reads every record of a stream, start to end.
async fn read_all(stream: &Stream) -> Result<LoadedRecords, StreamError> {
    let start = stream.start_offset();
    let mut out = LoadedRecords::default();
    fold(&mut out, read_stored(stream).await?, start);
    Ok(out)
}

/// Folds decoded records into `out`: transactional ones wait for their producer's marker
/// (Kafka's GroupMetadataManager does the same when it loads).
fn fold(out: &mut LoadedRecords, items: Vec<records::Stored>, start: u64) {
    for item in items {
        match item {
            records::Stored::Record {
                offset,
                key,
                value,
                txn_producer,
            } => {
                if offset < start as i64 {
                    continue;
                }
                let r = (offset as u64, key, value);
                match txn_producer {
                    Some(pid) => out.pending.entry(pid).or_default().push(r),
                    None => out.records.push(r),
                }
            }
            records::Stored::Marker {
                producer_id,
                commit,
            } => {
                if let Some(done) = out.pending.remove(&producer_id)
                    && commit
                {
                    out.records.extend(done);
                }
            }
        }
    }
}

/// Creates the topic if missing, then keeps the loaded partitions in line with ownership.
pub(crate) async fn start(broker: &Arc<Broker>) -> anyhow::Result<()> {
    let partitions = broker.groups.config().offsets_partitions;
    crate::internal_topics::ensure_compacted_topic(broker, OFFSETS_TOPIC, partitions).await?;
    sync_ownership(broker).await;
    let task =
        crate::internal_topics::follow_ownership(
            broker,
            |b| async move { sync_ownership(&b).await },
        );
    let expiry = {
        let broker = broker.clone();
        tokio::spawn(async move {
            let mut stop = broker.shutdown_signal();
            let mut tick = tokio::time::interval(broker.groups.config().retention_check_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                broker.groups.expire_offsets(crate::now_ms()).await;
            }
        })
    };
    broker.tasks.lock().extend([task, expiry]);
    Ok(())
}

/// Loads the coordinator partitions this node owns and unloads the others.
async fn sync_ownership(broker: &Arc<Broker>) {
    let coord: &Arc<GroupCoordinator> = &broker.groups;
    let me = broker.config.node_id as u64;
    let Some((count, owned)) = broker.meta.read(|s| {
        s.topics.get(OFFSETS_TOPIC).map(|t| {
            let owned: HashSet<i32> = t
                .partitions
                .iter()
                .enumerate()
                .filter(|(_, p)| p.owner == me)
                .map(|(i, _)| i as i32)
                .collect();
            (t.partitions.len() as i32, owned)
        })
    }) else {
        for p in coord.tracked_partitions() {
            coord.unload_partition(p);
        }
        return;
    };
    coord.set_partition_count(count);
    let stale = coord.stale_partitions();
    for p in coord.tracked_partitions() {
        // Stale: ownership went away and came back while this node's state stayed loaded.
        if !owned.contains(&p) || stale.contains(&p) {
            coord.unload_partition(p);
        }
    }
    if !broker.serving() {
        // Loaded again once the session is confirmed (the next change after it).
        return;
    }
    let mut to_load: Vec<i32> = owned
        .into_iter()
        .filter(|p| !coord.is_tracked(*p))
        .collect();
    to_load.sort_unstable();
    for &p in &to_load {
        coord.mark_loading(p);
    }
    // Each load waits on the store (an open, a read of the partition): a failover moving
    // dozens of them is a few rounds, not dozens in a row.
    use futures::StreamExt;
    futures::stream::iter(to_load)
        .for_each_concurrent(crate::membership::CONCURRENT_OPENS, |p| load_one(broker, p))
        .await;
}

async fn load_one(broker: &Arc<Broker>, p: i32) {
    let coord = &broker.groups;
    let stream_id = broker.meta.read(|s| {
        s.topics
            .get(OFFSETS_TOPIC)
            .and_then(|t| t.partitions.get(usize::try_from(p).ok()?))
            .map(|part| part.stream_id)
    });
    if stream_id.is_some_and(|id| broker.open_failed_recently(id)) {
        coord.unload_partition(p);
        return;
    }
    let failed = || {
        if let Some(id) = stream_id {
            broker.note_open_failed(id);
        }
    };
    let part = match broker.partition(OFFSETS_TOPIC, p).await {
        Ok(part) => part,
        Err(e) => {
            tracing::warn!(partition = p, error = ?e, "cannot open coordinator partition");
            coord.unload_partition(p);
            failed();
            return;
        }
    };
    let stream = part.stream;
    match read_all(&stream).await {
        Ok(recs) => {
            let log: Arc<dyn PartitionLog> = Arc::new(StreamLog {
                stream,
                broker: Arc::downgrade(broker),
                partition: p,
                healing: Arc::new(AtomicBool::new(false)),
            });
            coord.load_partition(p, log, recs);
        }
        Err(e) => {
            // Left untracked so a metadata change after the back-off retries.
            tracing::warn!(partition = p, error = %e, "cannot read coordinator partition");
            coord.unload_partition(p);
            failed();
        }
    }
}
