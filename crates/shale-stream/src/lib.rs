//! S3Stream-style stream storage for Shale.
//!
//! A stream is an append-only sequence of opaque entries addressed by offset; each entry covers
//! `count` offsets. The layer knows nothing of Kafka: the broker hands it record batches whose
//! headers it has already patched.
//!
//! Write path: `Stream::append` assigns offsets, puts the entry in the log cache and in the
//! node's object WAL; the WAL writes one stream-set object per `wal.batch.interval` (or
//! `wal.batch.bytes`), commits it in the catalog, and only then resolves the append.
//! Read path: log cache -> block cache (with read-ahead) -> ranged GET.

pub mod catalog;

pub use catalog::*;

use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// Settings of the stream layer (documented in docs/configuration.md).
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Node id, part of WAL object keys.
    pub node_id: u64,
    /// Key prefix in the bucket (may be empty).
    pub key_prefix: String,
    /// `wal.batch.interval.ms`: longest time an append waits before its WAL object is written.
    pub wal_batch_interval: Duration,
    /// `wal.batch.bytes`: a WAL object is written as soon as this many bytes are buffered.
    pub wal_batch_bytes: usize,
    /// `wal.max.inflight.uploads`: WAL objects being uploaded at once.
    pub wal_max_inflight: usize,
    /// `log.cache.bytes`: memory for recently appended entries (tailing reads).
    pub log_cache_bytes: usize,
    /// `block.cache.bytes`: memory for data blocks read from objects (catch-up reads).
    pub block_cache_bytes: usize,
    /// `block.readahead.ranges`: ranges prefetched after a sequential read.
    pub readahead_ranges: usize,
    /// `compaction.interval.ms`: how often small objects are merged.
    pub compaction_interval: Duration,
    /// `compaction.small.object.bytes`: objects below this size are merge candidates.
    pub compaction_small_object_bytes: u64,
    /// `compaction.max.object.bytes`: upper bound for a merged object.
    pub compaction_max_object_bytes: u64,
    /// `object.delete.grace.ms`: dead objects stay this long so in-flight reads finish.
    pub object_delete_grace: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            key_prefix: String::new(),
            wal_batch_interval: Duration::from_millis(50),
            wal_batch_bytes: 8 * 1024 * 1024,
            wal_max_inflight: 4,
            log_cache_bytes: 256 * 1024 * 1024,
            block_cache_bytes: 256 * 1024 * 1024,
            readahead_ranges: 4,
            compaction_interval: Duration::from_secs(60),
            compaction_small_object_bytes: 8 * 1024 * 1024,
            compaction_max_object_bytes: 256 * 1024 * 1024,
            object_delete_grace: Duration::from_secs(60),
        }
    }
}

/// Errors of the stream layer.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Another owner opened the stream; this handle can no longer append.
    #[error("stream {0} is fenced")]
    Fenced(StreamId),
    /// Requested offset is below the start or above the end of the stream.
    #[error("offset {offset} out of range [{start}, {end}]")]
    OffsetOutOfRange { offset: u64, start: u64, end: u64 },
    #[error("object store: {0}")]
    ObjectStore(String),
    /// An object failed its checksum or could not be parsed.
    #[error("corrupt object {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("stream layer is shutting down")]
    ShuttingDown,
}

/// One entry of a stream: for the broker, one Kafka record batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRecord {
    pub base_offset: u64,
    /// Offsets covered: [base_offset, base_offset + count).
    pub count: u32,
    /// Largest timestamp in the entry (ms), -1 if unknown.
    pub max_timestamp: i64,
    pub payload: Bytes,
}

impl StreamRecord {
    pub fn end_offset(&self) -> u64 {
        self.base_offset + u64::from(self.count)
    }
}

/// The node's stream storage: WAL, caches, compaction, retention and object deletion.
pub struct StreamStore {
    _private: (),
}

/// Outcome of an append: the offset is known at once, durability later.
pub struct AppendHandle {
    /// Offset assigned to the entry.
    pub base_offset: u64,
    /// Resolves when the entry is in a committed object (or the append failed).
    pub durable: tokio::sync::oneshot::Receiver<Result<(), StreamError>>,
}

/// An open stream owned by this node.
pub struct Stream {
    _private: (),
}

impl StreamStore {
    /// Starts the stream layer and its background tasks (WAL flusher, compaction, deleter).
    pub fn start(
        store: Arc<dyn object_store::ObjectStore>,
        catalog: Arc<dyn ObjectCatalog>,
        config: StreamConfig,
    ) -> Arc<StreamStore> {
        let _ = (store, catalog, config);
        todo!("stream store")
    }

    /// Opens a stream for appending and reading; bumps its epoch (fencing older owners).
    /// Opening an already open stream returns the same handle.
    pub async fn open(&self, stream_id: StreamId) -> Result<Arc<Stream>, StreamError> {
        let _ = stream_id;
        todo!()
    }

    /// Closes a stream (topic deleted or ownership moved) and forgets its caches.
    pub async fn close(&self, stream_id: StreamId) {
        let _ = stream_id;
        todo!()
    }

    /// A counter bumped after every WAL commit and trim: fetch long-polls wait on it.
    pub fn commit_notifications(&self) -> tokio::sync::watch::Receiver<u64> {
        todo!()
    }

    /// Applies time and size retention to a stream: raises its start offset past whole
    /// ranges that are older than `retention_ms` or beyond `retention_bytes` from the end.
    /// Returns the new start offset when it moved.
    pub async fn apply_retention(
        &self,
        stream_id: StreamId,
        now_ms: i64,
        retention_ms: Option<i64>,
        retention_bytes: Option<u64>,
    ) -> Result<Option<u64>, StreamError> {
        let _ = (stream_id, now_ms, retention_ms, retention_bytes);
        todo!()
    }

    /// Flushes the WAL, waits for every pending commit and stops background tasks.
    pub async fn shutdown(&self) {
        todo!()
    }
}

impl Stream {
    pub fn id(&self) -> StreamId {
        todo!()
    }
    /// Epoch under which this node owns the stream.
    pub fn epoch(&self) -> u64 {
        todo!()
    }
    /// First readable offset.
    pub fn start_offset(&self) -> u64 {
        todo!()
    }
    /// One past the last durable offset (Kafka's high watermark).
    pub fn end_offset(&self) -> u64 {
        todo!()
    }
    /// Next offset to assign (>= end_offset; includes appends not yet durable).
    pub fn next_offset(&self) -> u64 {
        todo!()
    }

    /// Appends an entry covering `count` offsets. `build` receives the base offset and returns
    /// the payload (the broker patches the batch header there). Entries of one stream become
    /// durable, and visible to readers, in offset order.
    pub fn append(
        &self,
        count: u32,
        max_timestamp: i64,
        build: impl FnOnce(u64) -> Bytes,
    ) -> Result<AppendHandle, StreamError> {
        let _ = (count, max_timestamp, build);
        todo!()
    }

    /// Reads durable entries from `from_offset`: the first returned entry is the one holding
    /// `from_offset`; entries follow in order until `max_bytes` would be exceeded, but at least
    /// one entry is returned when any exists. Empty when `from_offset == end_offset`.
    /// `OffsetOutOfRange` when `from_offset` is below start or above end.
    pub async fn read(
        &self,
        from_offset: u64,
        max_bytes: usize,
    ) -> Result<Vec<StreamRecord>, StreamError> {
        let _ = (from_offset, max_bytes);
        todo!()
    }

    /// Offset of the first entry whose max_timestamp >= `timestamp` (None when none).
    /// The broker then reads that entry to find the exact record.
    pub async fn find_by_timestamp(&self, timestamp: i64) -> Result<Option<u64>, StreamError> {
        let _ = timestamp;
        todo!()
    }

    /// Largest timestamp in the stream and the base offset of the entry holding it.
    pub async fn max_timestamp(&self) -> Result<Option<(i64, u64)>, StreamError> {
        todo!()
    }

    /// Raises the start offset (DeleteRecords). Never past `end_offset`.
    pub async fn trim(&self, new_start: u64) -> Result<(), StreamError> {
        let _ = new_start;
        todo!()
    }
}
