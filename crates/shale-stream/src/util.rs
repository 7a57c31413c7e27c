//! Small helpers: clocks, error duplication, retry back-off, tuning knobs.

use crate::{CatalogError, StreamError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `CatalogError` is not `Clone` (it is a public contract type); one failed object fails many
/// appends, each of which needs its own error value.
pub(crate) fn dup_catalog_error(e: &CatalogError) -> CatalogError {
    match e {
        CatalogError::Fenced {
            stream_id,
            epoch,
            current,
        } => CatalogError::Fenced {
            stream_id: *stream_id,
            epoch: *epoch,
            current: *current,
        },
        CatalogError::UnknownStream(id) => CatalogError::UnknownStream(*id),
        CatalogError::OffsetGap {
            stream_id,
            start,
            expected,
        } => CatalogError::OffsetGap {
            stream_id: *stream_id,
            start: *start,
            expected: *expected,
        },
        CatalogError::Unavailable(s) => CatalogError::Unavailable(s.clone()),
    }
}

pub(crate) fn dup_error(e: &StreamError) -> StreamError {
    match e {
        StreamError::Catalog(c) => StreamError::Catalog(dup_catalog_error(c)),
        StreamError::Fenced(id) => StreamError::Fenced(*id),
        StreamError::OffsetOutOfRange { offset, start, end } => StreamError::OffsetOutOfRange {
            offset: *offset,
            start: *start,
            end: *end,
        },
        StreamError::ObjectStore(s) => StreamError::ObjectStore(s.clone()),
        StreamError::Corrupt { key, reason } => StreamError::Corrupt {
            key: key.clone(),
            reason: reason.clone(),
        },
        StreamError::ShuttingDown => StreamError::ShuttingDown,
    }
}

/// Knobs that are not part of the public configuration (tests shorten them).
#[derive(Debug, Clone)]
pub(crate) struct Tuning {
    /// First retry delay of WAL uploads/commits; doubles up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// How long a WAL object keeps retrying its PUT or commit before its appends fail.
    pub wal_retry_timeout: Duration,
    /// Longest a single catalog write of the WAL may take before it counts as `Unavailable`
    /// (a hung metadata quorum must not stall the ordered commit pipeline forever).
    pub catalog_timeout: Duration,
    /// How long `close` waits for a stream's pending appends to resolve.
    pub close_wait: Duration,
    /// Block fetches in flight node-wide above which read-ahead is skipped.
    pub readahead_max_inflight: usize,
    /// Ranges looked up per catalog call on the read path.
    pub read_window: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_secs(5),
            wal_retry_timeout: Duration::from_secs(60),
            catalog_timeout: Duration::from_secs(15),
            close_wait: Duration::from_secs(10),
            readahead_max_inflight: 32,
            read_window: 16,
        }
    }
}

/// Runs a catalog call with a time limit; expiry is reported as `Unavailable`.
pub(crate) async fn with_timeout<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, CatalogError>>,
) -> Result<T, CatalogError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(CatalogError::Unavailable(format!(
            "{what} timed out after {limit:?}"
        ))),
    }
}

/// Exponential back-off with jitter and an overall deadline.
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
    deadline: Instant,
}

impl Backoff {
    pub fn new(tuning: &Tuning, total: Duration) -> Self {
        Backoff {
            next: tuning.retry_initial,
            max: tuning.retry_max,
            deadline: Instant::now() + total,
        }
    }

    /// Sleeps before the next attempt; false (without sleeping) once the deadline has passed.
    pub async fn wait(&mut self) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        // Up to 25% jitter so many failing uploads do not retry in lock step.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let jitter = self.next / 4 * (nanos % 1000) / 1000;
        let delay = (self.next + jitter).min(self.deadline - now);
        tokio::time::sleep(delay).await;
        self.next = (self.next * 2).min(self.max);
        true
    }
}

/// PUTs a new object exclusively (`PutMode::Create`, S3 `If-None-Match: *`), retrying with
/// `backoff`. Object ids are reserved through the catalog and keys carry the cluster id, so
/// no one else ever writes this key: `AlreadyExists` after a failed attempt means that
/// attempt landed with its response lost, which is success. On the first attempt it is
/// checked against the bytes (the S3 client retries internally, so even a "first" attempt
/// may be our second); anything else under the key is never overwritten.
pub(crate) async fn put_new(
    store: &dyn object_store::ObjectStore,
    key: &str,
    data: &bytes::Bytes,
    backoff: &mut Backoff,
) -> Result<(), StreamError> {
    use object_store::{ObjectStoreExt, PutMode};
    let path = object_store::path::Path::from(key);
    let mut retried = false;
    loop {
        let err = match store
            .put_opts(&path, data.clone().into(), PutMode::Create.into())
            .await
        {
            Ok(_) => return Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) if retried => {
                tracing::info!(key, "object already written by an earlier attempt");
                return Ok(());
            }
            Err(object_store::Error::AlreadyExists { .. }) => {
                let existing = async { store.get(&path).await?.bytes().await }.await;
                match existing {
                    Ok(b) if b == *data => return Ok(()),
                    Ok(_) => {
                        return Err(StreamError::ObjectStore(format!(
                            "PUT {key}: another object exists under this key; not overwriting it"
                        )));
                    }
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        retried = true;
        tracing::warn!(key, error = %err, "object upload failed; retrying");
        if !backoff.wait().await {
            return Err(StreamError::ObjectStore(format!("PUT {key}: {err}")));
        }
    }
}
