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
//!
//! Bucket hygiene: objects live under `{key_prefix}{cluster_id}/`, are created exclusively
//! (`PutMode::Create`), and a garbage collector removes old objects nothing references
//! (`gc`). `local::DurableLocalStore` makes a local-directory bucket fsync what it writes.

pub mod catalog;
pub mod encrypted;
pub mod local;
pub mod memory;
pub mod metered;
pub mod object;

mod attachments;
mod block_cache;
mod compaction;
mod gc;
mod log_cache;
mod reader;
mod retention;
mod util;
mod wal;

#[cfg(test)]
mod tests;

pub use catalog::*;
pub use gc::GcReport;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use util::Tuning;

/// Settings of the stream layer (documented in docs/configuration.md).
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Node id, part of WAL object keys.
    pub node_id: u64,
    /// Key prefix in the bucket (may be empty).
    pub key_prefix: String,
    /// The metadata quorum's cluster id: objects go under `{key_prefix}{cluster_id}/`, so a
    /// re-initialised quorum on the same bucket and prefix (new cluster id, object ids
    /// starting over) never writes over, or collects, another cluster's objects. Empty: the
    /// keys go straight under `key_prefix` (tests, and layouts from before cluster ids).
    pub cluster_id: String,
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
    /// `compaction.interval.ms`: how often small objects are merged (0 disables the
    /// background pass; `StreamStore::compact_now` still works).
    pub compaction_interval: Duration,
    /// `compaction.small.object.bytes`: objects below this size are merge candidates.
    pub compaction_small_object_bytes: u64,
    /// `compaction.max.object.bytes`: upper bound for a merged object.
    pub compaction_max_object_bytes: u64,
    /// `object.delete.grace.ms`: dead objects stay this long so in-flight reads finish.
    pub object_delete_grace: Duration,
    /// `wal.max.pending.bytes`: appends not yet durable (buffered or uploading) may hold at
    /// most this much memory; producers wait in [`StreamStore::reserve`] beyond it.
    pub wal_max_pending_bytes: usize,
    /// `wal.retry.timeout.ms`: how long a WAL object keeps retrying its PUT and commit
    /// through an object store or metadata outage before its appends fail (the producers
    /// then get KAFKA_STORAGE_ERROR and the handles reopen).
    pub wal_retry_timeout: Duration,
    /// `object.gc.interval.ms`: how often the bucket is scanned for unreferenced objects
    /// (0 disables the background pass; `StreamStore::collect_garbage_now` still works).
    pub gc_interval: Duration,
    /// `object.gc.min.age.ms`: unreferenced objects younger than this are kept. Must stay
    /// well above the WAL retry deadline and metadata replication lag.
    pub gc_min_age: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            key_prefix: String::new(),
            cluster_id: String::new(),
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
            wal_max_pending_bytes: 256 * 1024 * 1024,
            wal_retry_timeout: Duration::from_secs(60),
            gc_interval: Duration::from_secs(600),
            gc_min_age: Duration::from_secs(3600),
        }
    }
}

impl StreamConfig {
    /// Where this cluster's objects live in the bucket: `{key_prefix}{cluster_id}/`.
    pub fn object_prefix(&self) -> String {
        if self.cluster_id.is_empty() {
            self.key_prefix.clone()
        } else {
            format!("{}{}/", self.key_prefix, self.cluster_id)
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
    inner: Arc<Inner>,
    tasks: tokio::sync::Mutex<Option<Tasks>>,
}

struct Tasks {
    flusher: JoinHandle<()>,
    committer: JoinHandle<()>,
    compactor: JoinHandle<()>,
    deleter: JoinHandle<()>,
    collector: JoinHandle<()>,
}

/// State shared by the store, its streams and its background tasks.
pub(crate) struct Inner {
    pub(crate) store: Arc<dyn object_store::ObjectStore>,
    pub(crate) catalog: Arc<dyn ObjectCatalog>,
    pub(crate) config: StreamConfig,
    pub(crate) tuning: Tuning,
    pub(crate) streams: RwLock<HashMap<StreamId, Arc<Stream>>>,
    /// Serializes opens so two concurrent opens of one stream do not fence each other.
    open_lock: tokio::sync::Mutex<()>,
    /// Who this store opens streams as (see [`StreamStore::set_open_claim`]).
    open_claim: Mutex<Option<OpenClaim>>,
    /// Serializes compaction passes (background task and `compact_now`).
    pub(crate) compaction_lock: tokio::sync::Mutex<()>,
    pub(crate) wal: wal::Wal,
    pub(crate) log_cache: log_cache::LogCache,
    pub(crate) blocks: Arc<block_cache::BlockCache>,
    pub(crate) commits: watch::Sender<u64>,
    /// Bytes of appends not yet durable: the WAL's memory bound (back-pressure on producers).
    pending: Arc<tokio::sync::Semaphore>,
    /// Set when the store is dropped or after a graceful shutdown: background tasks exit.
    pub(crate) stop: watch::Sender<bool>,
    next_handle_id: AtomicU64,
    /// Orphans the garbage collector deleted (since start).
    pub(crate) orphans_deleted: AtomicU64,
    /// Objects found corrupt by compaction; they are left out of further merges.
    pub(crate) quarantined: Mutex<std::collections::HashSet<ObjectId>>,
}

/// Per-handle state of an open stream, shared with the WAL and the log cache.
pub(crate) struct StreamShared {
    pub(crate) id: StreamId,
    pub(crate) epoch: u64,
    /// Unique per handle: a reopened stream gets a new one.
    pub(crate) handle_id: u64,
    pub(crate) start: AtomicU64,
    /// Committed end offset (high watermark).
    pub(crate) end: AtomicU64,
    /// No further appends: fenced by a newer owner or an append of it failed.
    pub(crate) fenced: AtomicBool,
    /// Closed by the owner: no further appends, pending ones still commit.
    pub(crate) closed: AtomicBool,
    pub(crate) state: Mutex<StreamState>,
    /// Notified whenever pending appends of this handle resolve.
    pub(crate) resolved: Notify,
    /// Where the last read ended: a read starting there is sequential (read-ahead).
    pub(crate) last_read_end: AtomicU64,
}

/// Guarded by the stream's lock: offset assignment and the cached tail.
pub(crate) struct StreamState {
    pub(crate) next_offset: u64,
    pub(crate) cache: VecDeque<StreamRecord>,
    /// Payload bytes of `cache`.
    pub(crate) cache_payload_bytes: usize,
    /// Memory charged to the log cache for `cache` (payloads and per-entry overhead).
    pub(crate) cache_bytes: usize,
}

/// Outcome of an append: the offset is known at once, durability later.
pub struct AppendHandle {
    /// Offset assigned to the entry.
    pub base_offset: u64,
    /// Resolves when the entry is in a committed object (or the append failed).
    pub durable: tokio::sync::oneshot::Receiver<Result<(), StreamError>>,
}

/// One entry of [`Stream::append_many`].
pub struct AppendEntry<F: FnOnce(u64) -> Bytes> {
    /// Offsets the entry covers.
    pub count: u32,
    /// Largest timestamp in the entry (ms), -1 if unknown.
    pub max_timestamp: i64,
    /// Receives the entry's base offset, returns its payload.
    pub build: F,
}

/// Outcome of [`Stream::append_many`]: offsets at once, durability of all entries later.
#[derive(Debug)]
pub struct AppendBatchHandle {
    /// Base offset of the first entry.
    pub base_offset: u64,
    /// One past the last offset of the last entry.
    pub next_offset: u64,
    /// Resolves once every entry is in a committed object, or with the error that failed
    /// them all.
    pub durable: tokio::sync::oneshot::Receiver<Result<(), StreamError>>,
}

/// An open stream owned by this node.
pub struct Stream {
    pub(crate) shared: Arc<StreamShared>,
    pub(crate) inner: Arc<Inner>,
}

/// Counters for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Memory held by the log cache: payloads plus per-entry overhead.
    pub log_cache_bytes: usize,
    /// Bytes and number of blocks in the block cache.
    pub block_cache_bytes: usize,
    pub block_cache_blocks: usize,
    /// Block fetches in flight (reads and read-ahead).
    pub block_fetches_inflight: usize,
    /// Open stream handles.
    pub open_streams: usize,
    /// Unreferenced objects deleted by the garbage collector since start.
    pub orphans_deleted: u64,
    /// Objects compaction found corrupt and no longer merges (each is logged).
    pub quarantined_objects: u64,
}

/// Memory reserved for appends until they are durable; dropping it releases the memory.
/// Hand it to [`Stream::append_many`], which keeps it with the entries in the WAL.
#[derive(Debug)]
pub struct AppendPermit {
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl AppendPermit {
    /// Splits off the memory for `bytes` (in whole KiB, rounded up) into a permit of its own,
    /// e.g. one partition's share of a produce request's reservation, so that each share
    /// travels with its own [`Stream::append_many`] and is released when those entries
    /// resolve. Asking for more than is left takes all of it; the remainder may end up empty.
    pub fn split(&mut self, bytes: usize) -> AppendPermit {
        let want = bytes.div_ceil(1024).max(1);
        let part = match self._permit.as_mut() {
            Some(p) if p.num_permits() > want => p.split(want),
            _ => self._permit.take(),
        };
        AppendPermit { _permit: part }
    }

    /// Memory this permit holds, in bytes (KiB granularity).
    pub fn bytes(&self) -> usize {
        self._permit.as_ref().map_or(0, |p| p.num_permits() * 1024)
    }

    /// Adds `other`'s memory to this permit (both are released together).
    pub fn merge(&mut self, other: AppendPermit) {
        match (self._permit.as_mut(), other._permit) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (None, theirs) => self._permit = theirs,
            (Some(_), None) => {}
        }
    }
}

/// Permits count KiB so that large limits fit the semaphore's u32 acquire size.
fn pending_permits(bytes: usize) -> usize {
    (bytes / 1024).clamp(1, u32::MAX as usize)
}

impl StreamStore {
    /// Waits until `bytes` more of not-yet-durable appends fit in `wal.max.pending.bytes`.
    /// The broker holds the permit until its appends are durable, so a slow object store
    /// slows producers down instead of growing memory without bound. A request larger than
    /// the whole limit waits for all of it and then proceeds alone.
    pub async fn reserve(&self, bytes: usize) -> AppendPermit {
        let total = pending_permits(self.inner.config.wal_max_pending_bytes);
        let want = bytes.div_ceil(1024).clamp(1, total) as u32;
        // The semaphore is never closed; if it were, appends would go on unbounded.
        let permit = self
            .inner
            .pending
            .clone()
            .acquire_many_owned(want)
            .await
            .ok();
        AppendPermit { _permit: permit }
    }

    /// Like [`StreamStore::reserve`] without waiting: `None` when `bytes` more do not fit
    /// now. For memory discovered after a reservation (a batch that grows when the broker
    /// rebuilds it): waiting for it while holding a share could deadlock with other
    /// requests doing the same.
    pub fn try_reserve(&self, bytes: usize) -> Option<AppendPermit> {
        let want = u32::try_from(bytes.div_ceil(1024)).ok()?;
        if want == 0 {
            return Some(AppendPermit { _permit: None });
        }
        self.inner
            .pending
            .clone()
            .try_acquire_many_owned(want)
            .ok()
            .map(|p| AppendPermit { _permit: Some(p) })
    }

    /// Starts the stream layer and its background tasks (WAL flusher, compaction, deleter).
    /// Must be called within a Tokio runtime.
    pub fn start(
        store: Arc<dyn object_store::ObjectStore>,
        catalog: Arc<dyn ObjectCatalog>,
        config: StreamConfig,
    ) -> Arc<StreamStore> {
        let tuning = Tuning {
            wal_retry_timeout: config.wal_retry_timeout,
            ..Tuning::default()
        };
        Self::start_tuned(store, catalog, config, tuning)
    }

    pub(crate) fn start_tuned(
        store: Arc<dyn object_store::ObjectStore>,
        catalog: Arc<dyn ObjectCatalog>,
        config: StreamConfig,
        tuning: Tuning,
    ) -> Arc<StreamStore> {
        let (commits, _) = watch::channel(0);
        let (stop, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            store,
            catalog,
            tuning,
            streams: RwLock::new(HashMap::new()),
            open_lock: tokio::sync::Mutex::new(()),
            open_claim: Mutex::new(None),
            compaction_lock: tokio::sync::Mutex::new(()),
            wal: wal::Wal::new(config.wal_batch_bytes, config.wal_max_inflight),
            log_cache: log_cache::LogCache::new(config.log_cache_bytes),
            blocks: Arc::new(block_cache::BlockCache::new(config.block_cache_bytes)),
            commits,
            pending: Arc::new(tokio::sync::Semaphore::new(pending_permits(
                config.wal_max_pending_bytes,
            ))),
            stop,
            next_handle_id: AtomicU64::new(1),
            orphans_deleted: AtomicU64::new(0),
            quarantined: Mutex::new(std::collections::HashSet::new()),
            config,
        });
        let (flusher, committer) = wal::spawn(&inner);
        let compactor = tokio::spawn(compaction::run(
            Arc::downgrade(&inner),
            inner.stop.subscribe(),
        ));
        let deleter = tokio::spawn(retention::run_deleter(
            Arc::downgrade(&inner),
            inner.stop.subscribe(),
        ));
        let collector = tokio::spawn(gc::run(Arc::downgrade(&inner), inner.stop.subscribe()));
        tracing::info!(node_id = inner.config.node_id, "stream layer started");
        Arc::new(StreamStore {
            inner,
            tasks: tokio::sync::Mutex::new(Some(Tasks {
                flusher,
                committer,
                compactor,
                deleter,
                collector,
            })),
        })
    }

    fn is_stopping(&self) -> bool {
        *self.inner.stop.borrow() || self.inner.wal.is_closed()
    }

    /// Opens a stream for appending and reading; bumps its epoch (fencing older owners).
    /// Opening an already open stream returns the same handle (a fenced or closed handle is
    /// replaced by a newly opened one).
    /// Every later open is made on behalf of `claim` (the node and its registration epoch).
    pub fn set_open_claim(&self, claim: Option<OpenClaim>) {
        *self.inner.open_claim.lock() = claim;
    }

    pub async fn open(&self, stream_id: StreamId) -> Result<Arc<Stream>, StreamError> {
        if self.is_stopping() {
            return Err(StreamError::ShuttingDown);
        }
        let _guard = self.inner.open_lock.lock().await;
        if let Some(s) = self.inner.streams.read().get(&stream_id)
            && s.shared.usable()
        {
            return Ok(s.clone());
        }
        let claim = *self.inner.open_claim.lock();
        let meta = self.inner.catalog.open_stream_as(stream_id, claim).await?;
        if self.is_stopping() {
            return Err(StreamError::ShuttingDown);
        }
        let handle_id = self.inner.next_handle_id.fetch_add(1, Ordering::Relaxed);
        let stream = Arc::new(Stream {
            shared: Arc::new(StreamShared {
                id: stream_id,
                epoch: meta.epoch,
                handle_id,
                start: AtomicU64::new(meta.start_offset),
                end: AtomicU64::new(meta.end_offset),
                fenced: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                state: Mutex::new(StreamState {
                    next_offset: meta.end_offset,
                    cache: VecDeque::new(),
                    cache_payload_bytes: 0,
                    cache_bytes: 0,
                }),
                resolved: Notify::new(),
                last_read_end: AtomicU64::new(u64::MAX),
            }),
            inner: self.inner.clone(),
        });
        let old = self.inner.streams.write().insert(stream_id, stream.clone());
        if let Some(old) = old {
            // The catalog fenced it already; make it local knowledge so its buffered entries
            // are left out of the next commit instead of failing it.
            old.shared.fenced.store(true, Ordering::Release);
            self.inner
                .log_cache
                .drop_stream(&mut old.shared.state.lock());
        }
        tracing::debug!(
            stream_id,
            epoch = meta.epoch,
            start = meta.start_offset,
            end = meta.end_offset,
            "stream opened"
        );
        Ok(stream)
    }

    /// Closes a stream (topic deleted or ownership moved) and forgets its caches. Appends
    /// already accepted still commit (waited for, bounded) unless the handle is fenced.
    pub async fn close(&self, stream_id: StreamId) {
        let Some(s) = self.inner.streams.write().remove(&stream_id) else {
            return;
        };
        let shared = &s.shared;
        shared.closed.store(true, Ordering::Release);
        let settled = async {
            loop {
                // Registered before the check so a resolution in between is not missed.
                let notified = shared.resolved.notified();
                if shared.fenced.load(Ordering::Acquire)
                    || shared.end.load(Ordering::Acquire) >= shared.state.lock().next_offset
                {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(self.inner.tuning.close_wait, settled)
            .await
            .is_err()
        {
            tracing::warn!(stream_id, "closing stream with appends still pending");
        }
        self.inner.log_cache.drop_stream(&mut shared.state.lock());
        tracing::debug!(stream_id, "stream closed");
    }

    /// A counter bumped after every WAL commit and trim: fetch long-polls wait on it.
    pub fn commit_notifications(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.commits.subscribe()
    }

    /// Applies time and size retention to a stream: raises its start offset past whole
    /// ranges that are older than `retention_ms` or beyond `retention_bytes` from the end.
    /// Returns the new start offset when it moved.
    ///
    /// Size follows Kafka: the oldest range is dropped while the ranges after it still hold
    /// at least `retention_bytes`. Ranges without timestamps (-1) are never expired by time.
    /// Negative limits mean unlimited.
    pub async fn apply_retention(
        &self,
        stream_id: StreamId,
        now_ms: i64,
        retention_ms: Option<i64>,
        retention_bytes: Option<u64>,
    ) -> Result<Option<u64>, StreamError> {
        retention::apply(
            &self.inner,
            stream_id,
            now_ms,
            retention_ms,
            retention_bytes,
        )
        .await
    }

    /// Runs one compaction pass now (tests, admin tools). Returns the number of objects
    /// replaced.
    pub async fn compact_now(&self) -> Result<usize, StreamError> {
        compaction::compact_once(&self.inner).await
    }

    /// Rewrites offsets `[start, end)` of an open stream with `entries` (log compaction): the
    /// entries go into one new stream object which atomically replaces, in the catalog, the
    /// stream's live ranges covering exactly `[start, end)`. `start`/`end` must be boundaries
    /// of live ranges (see [`ObjectCatalog::replace_stream_ranges`]) and `end` must not pass
    /// the committed end offset. Entries must be in offset order, disjoint and inside
    /// `[start, end)`; offsets they no longer cover become gaps (a read there returns the next
    /// entry), and an empty `entries` leaves the whole span as one empty range so the stream's
    /// ranges still tile its offsets. Old objects keep their other streams' ranges and die
    /// once no live range remains in them. The stream must be open on this node (its epoch
    /// fences a zombie owner).
    pub async fn rewrite_range(
        &self,
        stream_id: StreamId,
        start: u64,
        end: u64,
        entries: Vec<StreamRecord>,
    ) -> Result<(), StreamError> {
        compaction::rewrite_range(&self.inner, stream_id, start, end, entries).await
    }

    /// A stream's live ranges in offset order, as the local catalog replica knows them (log
    /// compaction plans its rewrites on range boundaries).
    pub fn live_ranges(&self, stream_id: StreamId) -> Vec<RangeLocation> {
        self.inner.catalog.all_ranges(stream_id)
    }

    /// Deletes dead objects whose grace period has passed, now (tests, admin tools). Returns
    /// the number of objects deleted from the bucket.
    pub async fn delete_dead_objects_now(&self) -> usize {
        retention::delete_dead(&self.inner).await
    }

    /// Runs one garbage-collection pass now (tests, admin tools): deletes objects under the
    /// cluster's prefix that the catalog does not reference and that are older than
    /// `gc_min_age`.
    pub async fn collect_garbage_now(&self) -> Result<GcReport, StreamError> {
        gc::collect(&self.inner).await
    }

    /// Current cache usage.
    pub fn stats(&self) -> StoreStats {
        let (block_cache_bytes, block_cache_blocks) = self.inner.blocks.usage();
        StoreStats {
            log_cache_bytes: self.inner.log_cache.bytes(),
            block_cache_bytes,
            block_cache_blocks,
            block_fetches_inflight: self.inner.blocks.inflight(),
            open_streams: self.inner.streams.read().len(),
            orphans_deleted: self.inner.orphans_deleted.load(Ordering::Relaxed),
            quarantined_objects: self.inner.quarantined.lock().len() as u64,
        }
    }

    /// Flushes the WAL, waits for every pending commit and stops background tasks.
    pub async fn shutdown(&self) {
        let mut tasks = self.tasks.lock().await;
        let Some(t) = tasks.take() else {
            return;
        };
        tracing::info!("stream layer shutting down");
        self.inner.wal.close();
        let _ = t.flusher.await;
        let _ = t.committer.await;
        self.inner.stop.send_replace(true);
        let _ = t.compactor.await;
        let _ = t.deleter.await;
        let _ = t.collector.await;
        // Handles reference the store; dropping them here breaks the cycle.
        let streams: Vec<_> = self.inner.streams.write().drain().map(|(_, s)| s).collect();
        for s in streams {
            s.shared.closed.store(true, Ordering::Release);
            self.inner.log_cache.drop_stream(&mut s.shared.state.lock());
        }
        tracing::info!("stream layer stopped");
    }
}

impl Drop for StreamStore {
    fn drop(&mut self) {
        // Without a graceful shutdown: stop the tasks (buffered appends fail) and break the
        // store <-> stream reference cycle.
        self.inner.stop.send_replace(true);
        self.inner.wal.close();
        self.inner.streams.write().clear();
    }
}

impl StreamShared {
    fn usable(&self) -> bool {
        !self.fenced.load(Ordering::Acquire) && !self.closed.load(Ordering::Acquire)
    }
}

impl Stream {
    pub fn id(&self) -> StreamId {
        self.shared.id
    }
    /// Epoch under which this node owns the stream.
    pub fn epoch(&self) -> u64 {
        self.shared.epoch
    }
    /// First readable offset.
    pub fn start_offset(&self) -> u64 {
        self.shared.start.load(Ordering::Acquire)
    }
    /// One past the last durable offset (Kafka's high watermark).
    pub fn end_offset(&self) -> u64 {
        self.shared.end.load(Ordering::Acquire)
    }
    /// Next offset to assign (>= end_offset; includes appends not yet durable).
    pub fn next_offset(&self) -> u64 {
        self.shared.state.lock().next_offset
    }
    /// False once the handle is fenced or closed: appends fail and the owner must reopen.
    pub fn is_writable(&self) -> bool {
        self.shared.usable()
    }

    /// An append now would be taken: writable, and the WAL not shut down. Callers that
    /// check something against the stream's state before appending (a producer's sequence)
    /// ask this first, so that a request the append would refuse is refused for that reason
    /// and not judged against a state the refused appends before it never reached.
    pub fn accepts_appends(&self) -> bool {
        self.shared.usable() && !self.inner.wal.is_closed()
    }

    /// Fenced: a newer open took the stream over, or an append of this handle failed (its
    /// offsets may have a hole). A handle closed by its owner (or by the store's shutdown) is
    /// not fenced: its committed end is the stream's.
    pub fn is_fenced(&self) -> bool {
        self.shared.fenced.load(Ordering::Acquire)
    }

    /// Writable, and no newer open of the stream is known to the local catalog replica. A
    /// handle whose open finished after another node opened the stream at a newer epoch is
    /// writable until its first commit is refused, yet its view (the end offset, and what the
    /// caller loaded with it) is stale: callers that cache handles reopen when this is false.
    pub fn is_current(&self) -> bool {
        self.is_writable()
            && self
                .inner
                .catalog
                .stream(self.id())
                .is_none_or(|m| m.epoch <= self.epoch())
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
        let s = &self.shared;
        let mut st = s.state.lock();
        if !s.usable() {
            return Err(StreamError::Fenced(s.id));
        }
        let base_offset = st.next_offset;
        let payload = build(base_offset);
        if payload.len() > object::MAX_ENTRY_PAYLOAD {
            return Err(StreamError::ObjectStore(format!(
                "entry of {} bytes exceeds the {} byte limit",
                payload.len(),
                object::MAX_ENTRY_PAYLOAD
            )));
        }
        let record = StreamRecord {
            base_offset,
            count,
            max_timestamp,
            payload,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Pushed under the stream lock: the WAL sees each stream's entries in offset order.
        self.inner.wal.push(s, vec![record.clone()], tx, None)?;
        st.next_offset = record.end_offset();
        self.inner.log_cache.insert(&mut st, record);
        Ok(AppendHandle {
            base_offset,
            durable: rx,
        })
    }

    /// Appends several entries atomically (one produce request's batches for this stream):
    /// they get contiguous offsets with no other append in between, and either all are
    /// appended or none (fenced or closed handle, shutting down, or an entry over the size
    /// limit). `entries[i].build` receives the entry's base offset and returns its payload.
    /// The entries become durable together (they go into one WAL object), and `permit`
    /// travels with them in the WAL: it is released when they are durable or have failed,
    /// not when the caller stops waiting. Nothing appended (empty `entries` or an error):
    /// the permit is released at once.
    pub fn append_many<F>(
        &self,
        entries: Vec<AppendEntry<F>>,
        permit: AppendPermit,
    ) -> Result<AppendBatchHandle, StreamError>
    where
        F: FnOnce(u64) -> Bytes,
    {
        let s = &self.shared;
        let mut st = s.state.lock();
        if !s.usable() {
            return Err(StreamError::Fenced(s.id));
        }
        let base_offset = st.next_offset;
        let (tx, rx) = tokio::sync::oneshot::channel();
        if entries.is_empty() {
            let _ = tx.send(Ok(()));
            return Ok(AppendBatchHandle {
                base_offset,
                next_offset: base_offset,
                durable: rx,
            });
        }
        let mut next = base_offset;
        let mut records = Vec::with_capacity(entries.len());
        for e in entries {
            let payload = (e.build)(next);
            if payload.len() > object::MAX_ENTRY_PAYLOAD {
                return Err(StreamError::ObjectStore(format!(
                    "entry of {} bytes exceeds the {} byte limit",
                    payload.len(),
                    object::MAX_ENTRY_PAYLOAD
                )));
            }
            let record = StreamRecord {
                base_offset: next,
                count: e.count,
                max_timestamp: e.max_timestamp,
                payload,
            };
            next = record.end_offset();
            records.push(record);
        }
        // Cheap clones (`Bytes`): the log cache and the WAL buffer share the payloads.
        self.inner.wal.push(s, records.clone(), tx, Some(permit))?;
        st.next_offset = next;
        for r in records {
            self.inner.log_cache.insert(&mut st, r);
        }
        Ok(AppendBatchHandle {
            base_offset,
            next_offset: next,
            durable: rx,
        })
    }

    /// Reads durable entries from `from_offset`: the first returned entry is the one holding
    /// `from_offset` (or, when `from_offset` falls in a gap left by
    /// [`StreamStore::rewrite_range`], the first entry after it, as Kafka returns the next
    /// batch for a compacted-away offset); entries follow in order until `max_bytes` would be exceeded, but at least
    /// one entry is returned when any exists. Empty when `from_offset == end_offset`.
    /// `OffsetOutOfRange` when `from_offset` is below start or above end.
    pub async fn read(
        &self,
        from_offset: u64,
        max_bytes: usize,
    ) -> Result<Vec<StreamRecord>, StreamError> {
        reader::read(self, from_offset, max_bytes).await
    }

    /// Offset of the first entry whose max_timestamp >= `timestamp` (None when none).
    /// The broker then reads that entry to find the exact record.
    pub async fn find_by_timestamp(&self, timestamp: i64) -> Result<Option<u64>, StreamError> {
        reader::find_by_timestamp(self, timestamp).await
    }

    /// Largest timestamp in the stream and the base offset of the entry holding it.
    pub async fn max_timestamp(&self) -> Result<Option<(i64, u64)>, StreamError> {
        reader::max_timestamp(self).await
    }

    /// Raises the start offset (DeleteRecords). Never past `end_offset`.
    pub async fn trim(&self, new_start: u64) -> Result<(), StreamError> {
        let target = new_start.min(self.end_offset());
        if target <= self.start_offset() {
            return Ok(());
        }
        self.inner
            .catalog
            .trim_stream(self.id(), Some(self.epoch()), target)
            .await?;
        self.shared.start.fetch_max(target, Ordering::AcqRel);
        self.inner.commits.send_modify(|v| *v = v.wrapping_add(1));
        Ok(())
    }

    /// Start offset as the catalog knows it, folded into the handle's own.
    pub(crate) fn current_start(&self) -> u64 {
        let local = self.start_offset();
        match self.inner.catalog.stream(self.id()) {
            Some(m) if m.start_offset > local => {
                self.shared
                    .start
                    .fetch_max(m.start_offset, Ordering::AcqRel);
                m.start_offset
            }
            _ => local,
        }
    }
}
