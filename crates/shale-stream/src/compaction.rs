//! Compaction: merges small objects into one, dropping data below stream start offsets and
//! joining adjacent ranges of the same stream, so object count (and GETs per read) stay
//! bounded. The swap is one atomic catalog command; replaced objects become dead and are
//! deleted after the grace period, so reads in flight on them still finish.
//!
//! Each object is compacted by at most one node: the owner (opener) of the stream of its first
//! live range. Nodes thus never race for the same objects, and objects written by a node that
//! is gone are still picked up by the new owners of their streams.

use crate::object;
use crate::util::{Backoff, now_ms, put_new};
use crate::{
    CatalogError, Inner, ObjectId, ObjectMeta, StreamError, StreamId, StreamMeta, StreamRecord,
};
use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use std::collections::{BTreeMap, HashMap};
use std::sync::Weak;
use tokio::sync::watch;

/// Merges per pass, so a backlog of small objects drains without waiting many intervals.
const MAX_MERGES_PER_PASS: usize = 16;

/// Key of a compacted object.
pub(crate) fn object_key(prefix: &str, id: ObjectId) -> String {
    format!("{prefix}obj/{id:020}")
}

pub(crate) async fn run(inner: Weak<Inner>, mut stop: watch::Receiver<bool>) {
    let period = match inner.upgrade() {
        Some(i) => i.config.compaction_interval,
        None => return,
    };
    if period.is_zero() {
        // Disabled; compact_now still works.
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = crate::wal::stopped(&mut stop) => return,
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if let Err(e) = compact_once(&inner).await {
            tracing::warn!(error = %e, "compaction pass failed");
        }
    }
}

/// One pass: drops objects without live data, then merges batches of small objects.
/// Returns the number of objects replaced.
pub(crate) async fn compact_once(inner: &Inner) -> Result<usize, StreamError> {
    let _pass = inner.compaction_lock.lock().await;
    let mut replaced = drop_dead_objects(inner).await;
    for _ in 0..MAX_MERGES_PER_PASS {
        let picked = pick(inner);
        if picked.len() < 2 {
            break;
        }
        replaced += merge(inner, picked).await?;
    }
    Ok(replaced)
}

fn range_live(streams: &HashMap<StreamId, Option<StreamMeta>>, r: &crate::ObjectRange) -> bool {
    match streams.get(&r.stream_id) {
        Some(Some(s)) => r.end_offset > r.start_offset && r.end_offset > s.start_offset,
        _ => false,
    }
}

fn stream_metas<'a>(
    inner: &Inner,
    objects: impl Iterator<Item = &'a ObjectMeta>,
) -> HashMap<StreamId, Option<StreamMeta>> {
    let mut m = HashMap::new();
    for o in objects {
        for r in &o.ranges {
            m.entry(r.stream_id)
                .or_insert_with(|| inner.catalog.stream(r.stream_id));
        }
    }
    m
}

/// Live objects whose ranges are all below their streams' start (the catalog normally retires
/// those itself; this covers catalogs that leave it to the stream layer).
async fn drop_dead_objects(inner: &Inner) -> usize {
    let live = inner.catalog.live_objects();
    let streams = stream_metas(inner, live.iter());
    let dead: Vec<ObjectId> = live
        .iter()
        .filter(|o| !o.ranges.iter().any(|r| range_live(&streams, r)))
        .map(|o| o.id)
        .collect();
    if dead.is_empty() {
        return 0;
    }
    let n = dead.len();
    match inner.catalog.compact_objects(None, dead).await {
        Ok(()) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot drop objects without live data");
            0
        }
    }
}

/// Oldest small objects this node is responsible for, up to the merged size limit.
fn pick(inner: &Inner) -> Vec<ObjectMeta> {
    let cfg = &inner.config;
    // Runs up to MAX_MERGES_PER_PASS times a pass: copy only the candidates, not every object.
    let live = inner
        .catalog
        .live_objects_smaller_than(cfg.compaction_small_object_bytes);
    let streams = stream_metas(inner, live.iter());
    let open = inner.streams.read();
    let quarantined = inner.quarantined.lock().clone();
    let mut candidates: Vec<ObjectMeta> = live
        .into_iter()
        .filter(|o| o.size < cfg.compaction_small_object_bytes)
        .filter(|o| !quarantined.contains(&o.id))
        .filter(|o| {
            o.ranges
                .iter()
                .find(|r| range_live(&streams, r))
                .is_some_and(|r| open.get(&r.stream_id).is_some_and(|s| s.is_writable()))
        })
        .collect();
    drop(open);
    candidates.sort_by_key(|o| (o.committed_at_ms, o.id));
    let mut total = 0u64;
    let mut picked = Vec::new();
    for o in candidates {
        if !picked.is_empty() && total + o.size > cfg.compaction_max_object_bytes {
            break;
        }
        total += o.size;
        picked.push(o);
    }
    picked
}

/// A live range being merged: start, end and its entries.
type Run = (u64, u64, Vec<StreamRecord>);

/// Reads `picked`, writes one merged object and swaps it in. Returns objects replaced.
async fn merge(inner: &Inner, picked: Vec<ObjectMeta>) -> Result<usize, StreamError> {
    let store = &inner.store;
    let fetched: Vec<(ObjectMeta, bytes::Bytes)> = futures::stream::iter(picked)
        .map(|o| async move {
            let path = Path::from(o.key.as_str());
            match async { store.get(&path).await?.bytes().await }.await {
                Ok(data) => Ok((o, data)),
                Err(e) => Err((o, e)),
            }
        })
        .buffered(4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .or_else(|(o, e)| match e {
            // A committed object missing from the bucket is lost data, not a passing fault:
            // quarantined like a corrupt one so the other objects still get merged.
            object_store::Error::NotFound { .. } => {
                tracing::error!(
                    object = o.id,
                    key = o.key,
                    "committed object missing from the bucket; quarantined"
                );
                inner.quarantined.lock().insert(o.id);
                Ok(Vec::new())
            }
            e => Err(StreamError::ObjectStore(format!("GET {}: {e}", o.key))),
        })?;
    if fetched.is_empty() {
        return Ok(0);
    }

    let streams = stream_metas(inner, fetched.iter().map(|(o, _)| o));
    // Live ranges per stream as (start, end, entries): bounds are kept explicitly because
    // ranges rewritten by log compaction may have gaps or no entries at all.
    let mut runs: BTreeMap<StreamId, Vec<Run>> = BTreeMap::new();
    for (o, data) in &fetched {
        for r in &o.ranges {
            if !range_live(&streams, r) {
                continue;
            }
            let start = match streams.get(&r.stream_id) {
                Some(Some(s)) => s.start_offset,
                _ => continue,
            };
            let decoded = match object::decode_range(data, r) {
                Ok(d) => d,
                Err(e) => {
                    // One bad object must not stall compaction for everything else: set it
                    // aside (reads of it keep failing loudly) and let the pass merge the rest.
                    let e = e.at(&o.key);
                    tracing::error!(object = o.id, key = o.key, error = %e, "corrupt object quarantined; compaction skips it");
                    inner.quarantined.lock().insert(o.id);
                    return Ok(0);
                }
            };
            let entries: Vec<StreamRecord> = decoded
                .into_iter()
                .filter(|e| e.end_offset() > start)
                .collect();
            // Clipped at the stream start, but never inside the first kept entry.
            let lo = r
                .start_offset
                .max(start)
                .min(entries.first().map_or(u64::MAX, |e| e.base_offset));
            runs.entry(r.stream_id)
                .or_default()
                .push((lo, r.end_offset, entries));
        }
    }
    let mut merged: Vec<(StreamId, Run)> = Vec::new();
    for (sid, mut rs) in runs {
        rs.sort_by_key(|run| run.0);
        let mut cur: Option<Run> = None;
        for run in rs {
            let Some(prev) = cur.as_mut() else {
                cur = Some(run);
                continue;
            };
            if run.0 < prev.1 {
                return Err(StreamError::Corrupt {
                    key: String::new(),
                    reason: format!(
                        "stream {sid}: ranges overlap at offset {} during compaction",
                        run.0
                    ),
                });
            }
            if run.0 == prev.1 {
                prev.1 = run.1;
                prev.2.extend(run.2);
            } else if let Some(done) = cur.replace(run) {
                merged.push((sid, done));
            }
        }
        if let Some(done) = cur {
            merged.push((sid, done));
        }
    }
    let replaced: Vec<ObjectId> = fetched.iter().map(|(o, _)| o.id).collect();
    let n = replaced.len();
    drop(fetched);

    if merged.is_empty() {
        // Nothing live any more (trimmed meanwhile): just retire them.
        inner.catalog.compact_objects(None, replaced).await?;
        return Ok(n);
    }
    let input: Vec<object::BoundedRange<'_>> = merged
        .iter()
        .map(|(sid, (start, end, entries))| object::BoundedRange {
            stream_id: *sid,
            start: *start,
            end: *end,
            records: entries.as_slice(),
        })
        .collect();
    let (data, ranges) = object::encode_bounded(&input);
    drop(input);
    drop(merged);

    let (id, key, path) = put_object(inner, data.clone()).await?;
    let size = data.len() as u64;
    drop(data);
    let meta = ObjectMeta {
        id,
        key: key.clone(),
        size,
        ranges,
        committed_at_ms: now_ms(),
    };
    match inner
        .catalog
        .compact_objects(Some(meta), replaced.clone())
        .await
    {
        Ok(()) => {
            tracing::debug!(object = id, replaced = n, bytes = size, "compacted objects");
            Ok(n)
        }
        Err(e) => {
            // A deterministic rejection means the object is not referenced: remove it. After
            // `Unavailable` it may or may not be committed, so it must stay.
            if !matches!(e, CatalogError::Unavailable(_))
                && let Err(de) = store.delete(&path).await
            {
                tracing::warn!(key, error = %de, "cannot delete rejected compacted object");
            }
            Err(e.into())
        }
    }
}

/// Writes a new stream object under a fresh id (retrying with back-off).
async fn put_object(
    inner: &Inner,
    data: bytes::Bytes,
) -> Result<(ObjectId, String, Path), StreamError> {
    let id = inner.catalog.prepare_object().await?;
    let key = object_key(&inner.config.object_prefix(), id);
    let path = Path::from(key.as_str());
    // Retried as long as a WAL object's PUT: past that the store is out, and the pass gives
    // up (its inputs stay live) instead of holding the compaction lock through the outage.
    let mut backoff = Backoff::new(&inner.tuning, inner.tuning.wal_retry_timeout);
    put_new(inner.store.as_ref(), &key, &data, &mut backoff).await?;
    Ok((id, key, path))
}

/// Log compaction's rewrite of `[start, end)` of an open stream (see
/// [`crate::StreamStore::rewrite_range`]).
pub(crate) async fn rewrite_range(
    inner: &Inner,
    stream_id: StreamId,
    start: u64,
    end: u64,
    entries: Vec<StreamRecord>,
) -> Result<(), StreamError> {
    let stream = inner
        .streams
        .read()
        .get(&stream_id)
        .filter(|s| s.is_writable())
        .cloned()
        .ok_or(StreamError::Fenced(stream_id))?;
    let bad = |reason: String| StreamError::Corrupt {
        key: String::new(),
        reason: format!("stream {stream_id}: rewrite of [{start}, {end}): {reason}"),
    };
    if start >= end || end > stream.end_offset() {
        return Err(StreamError::OffsetOutOfRange {
            offset: end,
            start,
            end: stream.end_offset(),
        });
    }
    let mut pos = start;
    for e in &entries {
        if e.base_offset < pos || e.end_offset() > end {
            return Err(bad(format!(
                "entry [{}, {}) out of order or bounds (previous ends at {pos})",
                e.base_offset,
                e.end_offset()
            )));
        }
        if e.payload.len() > object::MAX_ENTRY_PAYLOAD {
            return Err(bad(format!("entry at {} too large", e.base_offset)));
        }
        pos = e.end_offset();
    }
    // Serialized with small-object merges on this node, which read the same ranges.
    let _pass = inner.compaction_lock.lock().await;
    let old_ranges: Vec<crate::RangeLocation> = inner
        .catalog
        .all_ranges(stream_id)
        .into_iter()
        .filter(|l| l.range.end_offset > start && l.range.start_offset < end)
        .collect();
    let (data, mut ranges) = object::encode_bounded(&[object::BoundedRange {
        stream_id,
        start,
        end,
        records: &entries,
    }]);
    // A range without entries keeps the largest timestamp of the data it replaced, so time
    // retention still expires it (an unknown -1 would block retention forever).
    let old_max = old_ranges
        .iter()
        .map(|l| l.range.max_timestamp)
        .max()
        .unwrap_or(-1);
    for r in ranges.iter_mut().filter(|r| r.length == 0) {
        r.max_timestamp = old_max;
    }
    let size = data.len() as u64;
    let (id, key, path) = put_object(inner, data).await?;
    let meta = ObjectMeta {
        id,
        key: key.clone(),
        size,
        ranges,
        committed_at_ms: now_ms(),
    };
    match inner
        .catalog
        .replace_stream_ranges(stream_id, stream.epoch(), start, end, meta)
        .await
    {
        Ok(()) => {
            {
                let mut st = stream.shared.state.lock();
                inner.log_cache.drop_below(&mut st, end);
            }
            tracing::debug!(
                stream_id,
                start,
                end,
                object = id,
                entries = entries.len(),
                replaced_ranges = old_ranges.len(),
                bytes = size,
                "rewrote stream range"
            );
            Ok(())
        }
        Err(e) => {
            // As in `merge`: only a deterministic rejection proves the object unreferenced.
            if !matches!(e, CatalogError::Unavailable(_))
                && let Err(de) = inner.store.delete(&path).await
            {
                tracing::warn!(key, error = %de, "cannot delete rejected rewritten object");
            }
            if let CatalogError::Fenced { .. } = e {
                return Err(StreamError::Fenced(stream_id));
            }
            Err(e.into())
        }
    }
}
