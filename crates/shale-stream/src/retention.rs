//! Time/size retention (raising a stream's start offset past whole ranges) and the deletion
//! of dead objects from the bucket after their grace period.

use crate::util::now_ms;
use crate::{Inner, RangeLocation, StreamError, StreamId};
use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;

/// The start offset retention allows for a stream whose live ranges are `ranges` (in offset
/// order) and whose start is `start`. Only whole ranges are dropped.
pub(crate) fn retention_target(
    ranges: &[RangeLocation],
    start: u64,
    now_ms: i64,
    retention_ms: Option<i64>,
    retention_bytes: Option<u64>,
) -> u64 {
    let live: Vec<&RangeLocation> = ranges
        .iter()
        .filter(|l| l.range.end_offset > start)
        .collect();
    let mut target = start;
    if let Some(ms) = retention_ms.filter(|&ms| ms >= 0) {
        let cutoff = now_ms.saturating_sub(ms);
        for l in &live {
            // -1 means the appender did not know the time: never expire on a guess.
            if l.range.max_timestamp < 0 || l.range.max_timestamp >= cutoff {
                break;
            }
            target = target.max(l.range.end_offset);
        }
    }
    if let Some(limit) = retention_bytes {
        let mut total: u64 = live.iter().map(|l| u64::from(l.range.length)).sum();
        for l in &live {
            let len = u64::from(l.range.length);
            // Kafka: drop a segment only if what remains still holds retention.bytes.
            if total - len < limit {
                break;
            }
            total -= len;
            target = target.max(l.range.end_offset);
        }
    }
    target
}

pub(crate) async fn apply(
    inner: &Inner,
    stream_id: StreamId,
    now_ms: i64,
    retention_ms: Option<i64>,
    retention_bytes: Option<u64>,
) -> Result<Option<u64>, StreamError> {
    let meta = inner
        .catalog
        .stream(stream_id)
        .ok_or(crate::CatalogError::UnknownStream(stream_id))?;
    let open = inner.streams.read().get(&stream_id).cloned();
    let start = open.as_ref().map_or(meta.start_offset, |s| {
        s.start_offset().max(meta.start_offset)
    });
    let ranges = inner.catalog.all_ranges(stream_id);
    let target = retention_target(&ranges, start, now_ms, retention_ms, retention_bytes)
        .min(meta.end_offset);
    if target <= start {
        return Ok(None);
    }
    // An open handle trims at its epoch, so a deposed owner's stale view cannot.
    let epoch = open.as_ref().map(|s| s.epoch());
    inner.catalog.trim_stream(stream_id, epoch, target).await?;
    if let Some(s) = open {
        s.shared.start.fetch_max(target, Ordering::AcqRel);
    }
    inner.commits.send_modify(|v| *v = v.wrapping_add(1));
    tracing::debug!(stream_id, start = target, "retention raised start offset");
    Ok(Some(target))
}

/// Deletes dead objects older than the grace period from the bucket, then forgets them.
pub(crate) async fn delete_dead(inner: &Inner) -> usize {
    let grace = i64::try_from(inner.config.object_delete_grace.as_millis()).unwrap_or(i64::MAX);
    let cutoff = now_ms().saturating_sub(grace);
    let due: Vec<_> = inner
        .catalog
        .dead_objects()
        .into_iter()
        .filter(|(_, dead_since)| *dead_since <= cutoff)
        .map(|(o, _)| o)
        .collect();
    if due.is_empty() {
        return 0;
    }
    let store = &inner.store;
    let deleted: Vec<u64> = futures::stream::iter(due)
        .map(|o| async move {
            let path = Path::from(o.key.as_str());
            match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Some(o.id),
                Err(e) => {
                    tracing::warn!(key = o.key, error = %e, "cannot delete dead object; will retry");
                    None
                }
            }
        })
        .buffer_unordered(8)
        .filter_map(|x| async move { x })
        .collect()
        .await;
    let n = deleted.len();
    for chunk in deleted.chunks(1000) {
        if let Err(e) = inner.catalog.forget_objects(chunk.to_vec()).await {
            // Deleted but not forgotten: the next round deletes again (NotFound) and retries.
            tracing::warn!(error = %e, "cannot forget deleted objects");
        }
    }
    if n > 0 {
        tracing::debug!(objects = n, "deleted dead objects");
    }
    n
}

/// Background deleter: runs every half grace period (between 20 ms and 10 s).
pub(crate) async fn run_deleter(inner: Weak<Inner>, mut stop: watch::Receiver<bool>) {
    let period = match inner.upgrade() {
        Some(i) => (i.config.object_delete_grace / 2)
            .clamp(Duration::from_millis(20), Duration::from_secs(10)),
        None => return,
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = crate::wal::stopped(&mut stop) => return,
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        delete_dead(&inner).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ObjectRange;

    fn loc(start: u64, end: u64, len: u32, ts: i64) -> RangeLocation {
        RangeLocation {
            object_id: start,
            object_key: String::new(),
            range: ObjectRange {
                stream_id: 1,
                start_offset: start,
                end_offset: end,
                position: 0,
                length: len,
                max_timestamp: ts,
                crc: 0,
            },
        }
    }

    #[test]
    fn targets() {
        let r = vec![
            loc(0, 10, 100, 1000),
            loc(10, 20, 100, 2000),
            loc(20, 30, 100, 3000),
        ];
        assert_eq!(retention_target(&r, 0, 5000, None, None), 0);
        assert_eq!(retention_target(&r, 0, 5000, Some(-1), None), 0);
        assert_eq!(retention_target(&r, 0, 3500, Some(1000), None), 20);
        assert_eq!(retention_target(&r, 0, 3000, Some(1000), None), 10);
        assert_eq!(retention_target(&r, 0, 10_000, Some(1), None), 30);
        // Size: keep at least retention.bytes.
        assert_eq!(retention_target(&r, 0, 0, None, Some(300)), 0);
        assert_eq!(retention_target(&r, 0, 0, None, Some(250)), 0);
        assert_eq!(retention_target(&r, 0, 0, None, Some(200)), 10);
        assert_eq!(retention_target(&r, 0, 0, None, Some(150)), 10);
        assert_eq!(retention_target(&r, 0, 0, None, Some(100)), 20);
        assert_eq!(retention_target(&r, 0, 0, None, Some(0)), 30);
        // Both: whichever drops more.
        assert_eq!(retention_target(&r, 0, 2500, Some(1000), Some(100)), 20);
        // Ranges already below the start do not count.
        assert_eq!(retention_target(&r, 15, 0, None, Some(100)), 20);
        // Unknown timestamps stop time retention.
        let r2 = vec![loc(0, 10, 100, -1), loc(10, 20, 100, 1)];
        assert_eq!(retention_target(&r2, 0, 10_000, Some(1), None), 0);
    }
}
