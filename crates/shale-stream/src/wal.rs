//! The object WAL: appends of every stream of the node go into one buffer; a flusher turns the
//! buffer into one stream-set object every `wal_batch_interval` (or once `wal_batch_bytes` are
//! buffered), uploads run concurrently (up to `wal_max_inflight`), and a single committer
//! commits them in flush order so every stream's ranges reach the catalog in offset order.
//! Appends resolve only after their object is PUT *and* committed.

use crate::log_cache::LogCache;
use crate::object::{self, ENTRY_HEADER_LEN};
use crate::util::{Backoff, Tuning, dup_error, now_ms, put_new, with_timeout};
use crate::{
    AppendPermit, CatalogError, Inner, ObjectCatalog, ObjectId, ObjectMeta, ObjectRange,
    StreamCommit, StreamError, StreamRecord, StreamShared,
};
use bytes::Bytes;
use object_store::ObjectStore;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub(crate) type Waiter = oneshot::Sender<Result<(), StreamError>>;

/// The entries of one stream handle waiting in the buffer: they become one range.
pub(crate) struct PendingBatch {
    pub stream: Arc<StreamShared>,
    pub records: Vec<StreamRecord>,
    pub waiters: Vec<Waiter>,
    /// Back-pressure memory of these appends: held until they are durable or failed, then
    /// dropped with the batch.
    pub permits: Vec<AppendPermit>,
}

#[derive(Default)]
struct Buffer {
    /// Set by shutdown: no more appends; the flusher writes what is left and exits.
    closed: bool,
    bytes: usize,
    /// When the oldest buffered entry arrived (the batch interval runs from there).
    first_at: Option<Instant>,
    /// Keyed by handle id, not stream id: a reopened stream's old (fenced) handle may still
    /// have entries here and they must not merge with the new handle's.
    batches: HashMap<u64, PendingBatch>,
}

pub(crate) struct Wal {
    buffer: Mutex<Buffer>,
    /// `Buffer::closed`, readable without the buffer's lock (every produce asks it first,
    /// `Stream::accepts_appends`).
    closed: std::sync::atomic::AtomicBool,
    /// Wakes the flusher: first entry buffered, batch bytes reached, or closed.
    wake: Notify,
    batch_bytes: usize,
    inflight: Arc<Semaphore>,
}

/// One flushed object on its way to the catalog.
struct Job {
    upload: JoinHandle<Result<(ObjectId, String), StreamError>>,
    size: u64,
    /// When the buffer was taken: the flush's latency runs from here to the acks.
    taken_at: Instant,
    batches: Vec<(PendingBatch, ObjectRange)>,
    _permit: OwnedSemaphorePermit,
}

impl Wal {
    pub fn new(batch_bytes: usize, max_inflight: usize) -> Self {
        Wal {
            buffer: Mutex::new(Buffer::default()),
            closed: std::sync::atomic::AtomicBool::new(false),
            wake: Notify::new(),
            batch_bytes: batch_bytes.max(1),
            inflight: Arc::new(Semaphore::new(max_inflight.max(1))),
        }
    }

    /// Adds entries of one stream, all or none. Called with the stream's lock held, so each
    /// stream's entries enter the buffer in offset order; taken under one buffer lock, they
    /// land in the same object (the same range), resolve together through `waiter`, and the
    /// memory `permit` is released only then.
    pub fn push(
        &self,
        stream: &Arc<StreamShared>,
        records: Vec<StreamRecord>,
        waiter: Waiter,
        permit: Option<AppendPermit>,
    ) -> Result<(), StreamError> {
        let mut buf = self.buffer.lock();
        if buf.closed {
            return Err(StreamError::ShuttingDown);
        }
        let first = buf.first_at.is_none();
        if first {
            buf.first_at = Some(Instant::now());
        }
        let before = buf.bytes;
        buf.bytes += records
            .iter()
            .map(|r| ENTRY_HEADER_LEN + r.payload.len())
            .sum::<usize>();
        let crossed = before < self.batch_bytes && buf.bytes >= self.batch_bytes;
        let batch = buf
            .batches
            .entry(stream.handle_id)
            .or_insert_with(|| PendingBatch {
                stream: stream.clone(),
                records: Vec::new(),
                waiters: Vec::new(),
                permits: Vec::new(),
            });
        batch.records.extend(records);
        batch.waiters.push(waiter);
        batch.permits.extend(permit);
        drop(buf);
        if first || crossed {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Stops accepting appends and makes the flusher write what is buffered, then exit.
    pub fn close(&self) {
        // First: whoever then finds the buffer closed also finds `is_closed`.
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.buffer.lock().closed = true;
        self.wake.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Starts the flusher and the committer.
pub(crate) fn spawn(inner: &Arc<Inner>) -> (JoinHandle<()>, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let flusher = tokio::spawn(flusher(inner.clone(), tx, inner.stop.subscribe()));
    let committer = tokio::spawn(committer(inner.clone(), rx, inner.stop.subscribe()));
    (flusher, committer)
}

async fn flusher(
    inner: Arc<Inner>,
    jobs: mpsc::UnboundedSender<Job>,
    mut stop: watch::Receiver<bool>,
) {
    let wal = &inner.wal;
    let interval = inner.config.wal_batch_interval;
    // The id of the next object is reserved while its batch fills, so the reservation is
    // off the produce latency path (the metadata catalog hands ids from a leased block and
    // writes to Raft once per block). An unused reservation is harmless.
    let mut next_id: Option<JoinHandle<Result<ObjectId, CatalogError>>> = None;
    loop {
        if *stop.borrow() {
            fail_buffered(wal, &inner.log_cache);
            return;
        }
        let (first_at, closed, bytes) = {
            let b = wal.buffer.lock();
            (b.first_at, b.closed, b.bytes)
        };
        match first_at {
            None if closed => return,
            None => {
                tokio::select! {
                    _ = wal.wake.notified() => {}
                    _ = stopped(&mut stop) => {}
                }
                continue;
            }
            Some(t) => {
                if next_id.is_none() {
                    let catalog = inner.catalog.clone();
                    next_id = Some(tokio::spawn(async move { catalog.prepare_object().await }));
                }
                let deadline = t + interval;
                if !closed && bytes < wal.batch_bytes && Instant::now() < deadline {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline.into()) => {}
                        // Re-evaluate: the batch may be full or the WAL closing.
                        _ = wal.wake.notified() => continue,
                        _ = stopped(&mut stop) => continue,
                    }
                }
            }
        }
        // Take the buffer only once an upload slot is free, so the object includes everything
        // that arrived while waiting (bigger objects under back-pressure, not more of them).
        let permit = tokio::select! {
            p = wal.inflight.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stopped(&mut stop) => continue,
        };
        let taken = {
            let mut b = wal.buffer.lock();
            b.first_at = None;
            b.bytes = 0;
            std::mem::take(&mut b.batches)
        };
        if taken.is_empty() {
            continue;
        }
        let job = build_job(&inner, taken, permit, next_id.take());
        if jobs.send(job).is_err() {
            return;
        }
    }
}

fn build_job(
    inner: &Arc<Inner>,
    taken: HashMap<u64, PendingBatch>,
    permit: OwnedSemaphorePermit,
    reserved: Option<JoinHandle<Result<ObjectId, CatalogError>>>,
) -> Job {
    let mut batches: Vec<PendingBatch> = taken.into_values().collect();
    batches.sort_by_key(|b| (b.stream.id, b.records.first().map(|r| r.base_offset)));
    let input: Vec<_> = batches
        .iter()
        .map(|b| (b.stream.id, b.records.as_slice()))
        .collect();
    let (data, ranges) = object::encode(&input);
    drop(input);
    let size = data.len() as u64;
    // Each batch is non-empty and far below 4 GiB, so it maps to exactly one range.
    debug_assert_eq!(ranges.len(), batches.len());
    let entries: usize = batches.iter().map(|b| b.records.len()).sum();
    tracing::debug!(
        ranges = ranges.len(),
        entries,
        bytes = size,
        "flushing WAL object"
    );
    let upload = tokio::spawn(upload(
        inner.store.clone(),
        inner.catalog.clone(),
        inner.config.object_prefix(),
        inner.config.node_id,
        data,
        inner.tuning.clone(),
        reserved,
    ));
    metrics::histogram!("shale_wal_flush_bytes").record(size as f64);
    Job {
        upload,
        size,
        taken_at: Instant::now(),
        batches: batches.into_iter().zip(ranges).collect(),
        _permit: permit,
    }
}

/// Resolves once the store is stopped without a graceful shutdown.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stopping.
    let _ = stop.wait_for(|&v| v).await;
}

/// Abandoned store: fail what is still buffered instead of leaving producers waiting.
fn fail_buffered(wal: &Wal, log_cache: &LogCache) {
    let taken = {
        let mut b = wal.buffer.lock();
        b.closed = true;
        b.first_at = None;
        b.bytes = 0;
        std::mem::take(&mut b.batches)
    };
    for (_, b) in taken {
        fail_batch(log_cache, b, &StreamError::ShuttingDown);
    }
}

/// Key of a WAL object; `prefix` is the cluster's ([`crate::StreamConfig::object_prefix`]).
pub(crate) fn wal_key(prefix: &str, node_id: u64, id: ObjectId) -> String {
    format!("{prefix}wal/{node_id}/{id:020}")
}

/// Reserves an id and PUTs the object, retrying both with back-off until the WAL deadline.
async fn upload(
    store: Arc<dyn ObjectStore>,
    catalog: Arc<dyn ObjectCatalog>,
    prefix: String,
    node_id: u64,
    data: Bytes,
    tuning: Tuning,
    reserved: Option<JoinHandle<Result<ObjectId, CatalogError>>>,
) -> Result<(ObjectId, String), StreamError> {
    let mut backoff = Backoff::new(&tuning, tuning.wal_retry_timeout);
    let reserved = match reserved {
        Some(h) => match h.await {
            Ok(Ok(id)) => Some(id),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "early object id reservation failed; retrying now");
                None
            }
            Err(_) => None,
        },
        None => None,
    };
    let id = if let Some(id) = reserved {
        id
    } else {
        loop {
            match with_timeout(
                tuning.catalog_timeout,
                "prepare_object",
                catalog.prepare_object(),
            )
            .await
            {
                Ok(id) => break id,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reserve a WAL object id; retrying");
                    if !backoff.wait().await {
                        return Err(e.into());
                    }
                }
            }
        }
    };
    let key = wal_key(&prefix, node_id, id);
    put_new(store.as_ref(), &key, &data, &mut backoff).await?;
    Ok((id, key))
}

async fn committer(
    inner: Arc<Inner>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    stop: watch::Receiver<bool>,
) {
    // Jobs arrive in flush order; awaiting each upload before the next commit keeps every
    // stream's commits in offset order while later uploads are already running.
    while let Some(job) = jobs.recv().await {
        process(&inner, job, stop.clone()).await;
    }
}

async fn process(inner: &Inner, job: Job, mut stop: watch::Receiver<bool>) {
    let uploaded = match job.upload.await {
        Ok(r) => r,
        Err(e) => Err(StreamError::ObjectStore(format!(
            "WAL upload task failed: {e}"
        ))),
    };
    let mut live = job.batches;
    let (id, key) = match uploaded {
        Ok(v) => v,
        Err(e) => {
            metrics::counter!("shale_wal_flush_failures_total").increment(1);
            tracing::error!(error = %e, "WAL object could not be written; failing its appends");
            for (b, _) in live {
                fail_batch(&inner.log_cache, b, &e);
            }
            return;
        }
    };
    let committed_at_ms = now_ms();
    let mut backoff = Backoff::new(&inner.tuning, inner.tuning.wal_retry_timeout);
    loop {
        // Handles fenced meanwhile (reopened, or an earlier object of theirs failed) would make
        // the whole commit fail: leave their ranges out; their bytes stay unreferenced.
        let (keep, fenced): (Vec<_>, Vec<_>) = live
            .into_iter()
            .partition(|(b, _)| !b.stream.fenced.load(Ordering::Acquire));
        live = keep;
        for (b, _) in fenced {
            let id = b.stream.id;
            fail_batch(&inner.log_cache, b, &StreamError::Fenced(id));
        }
        let meta = ObjectMeta {
            id,
            key: key.clone(),
            size: job.size,
            ranges: live.iter().map(|(_, r)| r.clone()).collect(),
            committed_at_ms,
        };
        let mut commits: Vec<StreamCommit> = Vec::with_capacity(live.len());
        for (b, _) in &live {
            if !commits.iter().any(|c| c.stream_id == b.stream.id) {
                commits.push(StreamCommit {
                    stream_id: b.stream.id,
                    epoch: b.stream.epoch,
                });
            }
        }
        let attempt = inner.catalog.commit_object(meta.clone(), commits);
        let commit_started = Instant::now();
        let err = match with_timeout(inner.tuning.catalog_timeout, "commit_object", attempt).await {
            Ok(()) => {
                metrics::histogram!("shale_wal_commit_seconds")
                    .record(commit_started.elapsed().as_secs_f64());
                metrics::histogram!("shale_wal_flush_seconds")
                    .record(job.taken_at.elapsed().as_secs_f64());
                complete(inner, live);
                return;
            }
            Err(e) => e,
        };
        // The commit may have been applied with the response lost; then retrying would be
        // rejected and the appends wrongly failed.
        if is_committed(inner.catalog.as_ref(), &meta) {
            tracing::info!(object = id, error = %err, "WAL commit reported an error but was applied");
            complete(inner, live);
            return;
        }
        // Drop what can never commit and try again at once; otherwise back off.
        let before = live.len();
        let retry = match &err {
            CatalogError::Fenced {
                stream_id, current, ..
            } => {
                tracing::info!(stream_id, epoch = current, "stream fenced by a newer owner");
                fence_stream(&live, *stream_id, *current)
            }
            CatalogError::UnknownStream(sid) => {
                tracing::info!(stream_id = sid, "stream deleted; failing its appends");
                live = fail_stream(&inner.log_cache, live, *sid, &err);
                live.len() == before
            }
            CatalogError::OffsetGap {
                stream_id,
                start,
                expected,
            } if expected < start => {
                // An earlier object of this stream failed: this range can never commit.
                tracing::warn!(
                    stream_id,
                    start,
                    expected,
                    "stream has a gap; failing its appends"
                );
                live = fail_stream(&inner.log_cache, live, *stream_id, &err);
                live.len() == before
            }
            // The stream moved past our range: most likely our own commit was applied and the
            // local replica has not caught up yet. Wait for it (bounded by the deadline).
            CatalogError::OffsetGap { .. } | CatalogError::Unavailable(_) => true,
        };
        if !retry {
            continue;
        }
        tracing::warn!(object = id, error = %err, "WAL commit failed; retrying");
        let (waited, stopping) = tokio::select! {
            w = backoff.wait() => (w, false),
            _ = stopped(&mut stop) => (false, true),
        };
        if !waited {
            if is_committed(inner.catalog.as_ref(), &meta) {
                complete(inner, live);
                return;
            }
            tracing::error!(object = id, key, error = %err, "giving up on WAL commit; failing its appends");
            let e = if stopping {
                StreamError::ShuttingDown
            } else {
                StreamError::Catalog(err)
            };
            for (b, _) in live {
                fail_batch(&inner.log_cache, b, &e);
            }
            return;
        }
    }
}

/// Marks the handles of `sid` older than `current` fenced (the next round leaves them out).
/// Returns true when none matched, i.e. nothing changed and the commit must be retried later.
fn fence_stream(live: &[(PendingBatch, ObjectRange)], sid: u64, current: u64) -> bool {
    let mut hit = false;
    for (b, _) in live {
        if b.stream.id == sid && b.stream.epoch < current {
            b.stream.fenced.store(true, Ordering::Release);
            hit = true;
        }
    }
    !hit
}

fn fail_stream(
    log_cache: &LogCache,
    live: Vec<(PendingBatch, ObjectRange)>,
    sid: u64,
    err: &CatalogError,
) -> Vec<(PendingBatch, ObjectRange)> {
    let (gone, keep): (Vec<_>, Vec<_>) = live.into_iter().partition(|(b, _)| b.stream.id == sid);
    let e = StreamError::Catalog(crate::util::dup_catalog_error(err));
    for (b, _) in gone {
        fail_batch(log_cache, b, &e);
    }
    keep
}

/// Whether `meta` is in the catalog (checked through one of its live ranges).
fn is_committed(catalog: &dyn ObjectCatalog, meta: &ObjectMeta) -> bool {
    match meta.ranges.iter().find(|r| r.end_offset > r.start_offset) {
        Some(r) => catalog
            .ranges_from(r.stream_id, r.start_offset, 1)
            .first()
            .is_some_and(|l| l.object_id == meta.id),
        None => catalog.dead_objects().iter().any(|(o, _)| o.id == meta.id),
    }
}

/// Fails a batch's appends and fences its handle: its offsets now have a hole, so the owner
/// must reopen the stream (which restarts at the committed end offset).
fn fail_batch(log_cache: &LogCache, b: PendingBatch, e: &StreamError) {
    b.stream.fenced.store(true, Ordering::Release);
    // Its pending entries can never become durable, hence never evictable: free them now.
    log_cache.drop_stream(&mut b.stream.state.lock());
    for w in b.waiters {
        let _ = w.send(Err(dup_error(e)));
    }
    b.stream.resolved.notify_waiters();
}

/// The object is committed: publish the new end offsets, then resolve the appends.
fn complete(inner: &Inner, live: Vec<(PendingBatch, ObjectRange)>) {
    for (b, r) in live {
        b.stream.end.fetch_max(r.end_offset, Ordering::AcqRel);
        inner.log_cache.mark_durable(&b.stream, r.end_offset);
        for w in b.waiters {
            let _ = w.send(Ok(()));
        }
        b.stream.resolved.notify_waiters();
    }
    inner.log_cache.evict();
    inner.commits.send_modify(|v| *v = v.wrapping_add(1));
}
