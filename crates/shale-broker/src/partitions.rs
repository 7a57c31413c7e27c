//! The partitions this node owns: topic-partition → open stream.

use crate::Broker;
use crate::txn::producers::ProducerStates;
use kafka_protocol::error::ResponseError;
use parking_lot::{Mutex, RwLock};
use shale_stream::{Stream, StreamError, StreamId};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Default)]
pub(crate) struct Partitions {
    open: RwLock<HashMap<StreamId, Arc<Owned>>>,
    /// One lock per stream being opened, so a stream is never opened twice concurrently
    /// while other streams open beside it (an open scans the stream's producer state).
    opening: Mutex<HashMap<StreamId, Arc<tokio::sync::Mutex<()>>>>,
}

/// An open stream and the producer state rebuilt for that handle. Both are replaced
/// together: a reopened handle restarts at the committed end, so state built from appends
/// that were lost with the old handle must go with it.
pub(crate) struct Owned {
    pub stream: Arc<Stream>,
    /// Also the partition's append lock: checking a batch against the producer state and
    /// appending it happen under it, so two appends never pass the same check.
    pub producers: Mutex<ProducerStates>,
    /// Offset of the last producer-state snapshot written (or loaded): no new one until the
    /// stream moves past it.
    pub snapshot_offset: std::sync::atomic::AtomicU64,
    /// Where the load scan started (the snapshot's offset, or the stream's start).
    pub loaded_from: u64,
}

/// How long a request to a partition being handed off waits for its new owner.
const HAND_OFF_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What a handler needs to know about a partition it reads or writes.
pub(crate) struct PartitionRef {
    pub stream: Arc<Stream>,
    pub owned: Arc<Owned>,
    pub topic_configs: std::collections::BTreeMap<String, String>,
}

impl Broker {
    pub(crate) async fn open_owned_partitions(&self) -> anyhow::Result<()> {
        let me = self.config.node_id as u64;
        let ids: Vec<StreamId> = self.meta.read(|s| {
            s.topics
                .values()
                .flat_map(|t| t.partitions.iter())
                .filter(|p| p.owner == me)
                .map(|p| p.stream_id)
                .collect()
        });
        for id in ids {
            // A partition that cannot be opened now (its producer-state scan reads the
            // object store) opens on first use instead of stopping the node.
            if let Err(e) = self.open_stream(id).await {
                tracing::warn!(stream = id, error = %e, "cannot open partition at start; will retry on use");
            }
        }
        Ok(())
    }

    /// The open handle of a stream this node owns, (re)opened when there is none or when the
    /// one held is no longer writable: a failed WAL object or commit fences the handles it
    /// carried (their offsets now have a hole), and the next use must heal by reopening at
    /// the committed end, not keep answering errors until a restart.
    pub(crate) async fn open_stream(&self, id: StreamId) -> Result<Arc<Stream>, StreamError> {
        Ok(self.open_owned(id).await?.stream.clone())
    }

    /// [`Self::open_stream`] with the partition's producer state, rebuilt from the stream
    /// when the handle is (re)opened.
    pub(crate) async fn open_owned(&self, id: StreamId) -> Result<Arc<Owned>, StreamError> {
        if let Some(o) = self.partitions.open.read().get(&id)
            && o.stream.is_current()
        {
            return Ok(o.clone());
        }
        let lock = self
            .partitions
            .opening
            .lock()
            .entry(id)
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        let opened = self.open_locked(id).await;
        // The last opener forgets the stream's lock (the map holds one Arc, this one the other).
        {
            let mut opening = self.partitions.opening.lock();
            if opening.get(&id).is_some_and(|l| Arc::strong_count(l) <= 2) {
                opening.remove(&id);
            }
        }
        opened
    }

    async fn open_locked(&self, id: StreamId) -> Result<Arc<Owned>, StreamError> {
        if let Some(o) = self.partitions.open.read().get(&id)
            && o.stream.is_current()
        {
            return Ok(o.clone());
        }
        let started = std::time::Instant::now();
        let stream = self.streams.open(id).await?;
        let opened = started.elapsed();
        let loaded = crate::txn::load::producer_states(self, &stream).await?;
        tracing::debug!(
            stream = id,
            open_ms = opened.as_millis() as u64,
            state_ms = (started.elapsed() - opened).as_millis() as u64,
            "stream opened and its producer state loaded"
        );
        let owned = Arc::new(Owned {
            stream,
            producers: Mutex::new(loaded.states),
            snapshot_offset: std::sync::atomic::AtomicU64::new(loaded.snapshot_offset),
            loaded_from: loaded.scanned_from,
        });
        self.partitions.open.write().insert(id, owned.clone());
        Ok(owned)
    }

    /// The open handle of `id` if it is open and writable now (no I/O).
    pub(crate) fn owned_if_open(&self, id: StreamId) -> Option<Arc<Owned>> {
        self.partitions
            .open
            .read()
            .get(&id)
            .filter(|o| o.stream.is_current())
            .cloned()
    }

    /// Where the producer state of a partition this node has open was loaded from: the
    /// offset its scan started at (tests check a snapshot spared the scan).
    #[doc(hidden)]
    pub fn producer_state_loaded_from(&self, topic: &str, partition: i32) -> Option<u64> {
        let id = self.meta.read(|s| {
            s.topics
                .get(topic)
                .and_then(|t| t.partitions.get(usize::try_from(partition).ok()?))
                .map(|p| p.stream_id)
        })?;
        self.partitions.open.read().get(&id).map(|o| o.loaded_from)
    }

    /// The streams this node has open (any state).
    pub(crate) fn open_stream_ids(&self) -> Vec<StreamId> {
        self.partitions.open.read().keys().copied().collect()
    }

    /// Every open partition (for the producer-state expiry sweep).
    pub(crate) fn open_partitions(&self) -> Vec<Arc<Owned>> {
        self.partitions.open.read().values().cloned().collect()
    }

    /// Forgets a stream (topic deleted) or a fenced handle so the next use reopens it.
    pub(crate) async fn close_stream(&self, id: StreamId) {
        self.partitions.open.write().remove(&id);
        self.streams.close(id).await;
    }

    /// Resolves a partition of a topic owned by this node.
    pub(crate) async fn partition(
        &self,
        topic: &str,
        index: i32,
    ) -> Result<PartitionRef, ResponseError> {
        let me = self.config.node_id as u64;
        let found = self.meta.read(|s| {
            let t = s.topics.get(topic)?;
            let p = usize::try_from(index)
                .ok()
                .and_then(|i| t.partitions.get(i))?;
            Some((p.stream_id, p.owner, t.configs.clone()))
        });
        let Some((stream_id, owner, topic_configs)) = found else {
            return Err(ResponseError::UnknownTopicOrPartition);
        };
        if owner != me || !self.serving() {
            return Err(ResponseError::NotLeaderOrFollower);
        }
        match self.open_owned(stream_id).await {
            Ok(owned) => Ok(PartitionRef {
                stream: owned.stream.clone(),
                owned,
                topic_configs,
            }),
            Err(_) if self.is_shutting_down() => {
                // A controlled shutdown closed the stream and is handing it off: answer once
                // the new owner is known, so the refusal names it (KIP-951) and the client's
                // retry goes straight there instead of through a metadata refresh (librdkafka
                // waits for its next one-second scan).
                self.wait_owner_change(topic, index, me).await;
                Err(ResponseError::NotLeaderOrFollower)
            }
            Err(e) => {
                tracing::warn!(topic, index, error = %e, "cannot open partition");
                Err(ResponseError::NotLeaderOrFollower)
            }
        }
    }

    /// Until `topic`-`index` is owned by a node other than `me` (at most [`HAND_OFF_WAIT`]).
    async fn wait_owner_change(&self, topic: &str, index: i32, me: u64) {
        let owned_by_me = |s: &shale_meta::ClusterState| {
            s.topics
                .get(topic)
                .and_then(|t| t.partitions.get(usize::try_from(index).ok()?))
                .is_some_and(|p| p.owner == me)
        };
        let mut changes = self.meta.changes();
        let _ = tokio::time::timeout(HAND_OFF_WAIT, async {
            while self.meta.read(owned_by_me) {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// Name of the topic with this id.
    pub(crate) fn topic_name_by_id(&self, id: &uuid::Uuid) -> Option<String> {
        let id = *id.as_bytes();
        self.meta.read(|s| {
            s.topics
                .values()
                .find(|t| t.id == id)
                .map(|t| t.name.clone())
        })
    }
}

/// Maps a stream-layer error to the Kafka error a client should see.
pub(crate) fn stream_error_code(e: &StreamError) -> ResponseError {
    match e {
        StreamError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        StreamError::Fenced(_) => ResponseError::NotLeaderOrFollower,
        StreamError::ShuttingDown => ResponseError::NotLeaderOrFollower,
        StreamError::Corrupt { .. } => ResponseError::KafkaStorageError,
        StreamError::ObjectStore(_) => ResponseError::KafkaStorageError,
        StreamError::Catalog(_) => ResponseError::NotLeaderOrFollower,
    }
}
