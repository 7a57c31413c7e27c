//! The read path: log cache -> block cache (with read-ahead) -> ranged GET; and timestamp
//! look-ups over the catalog's per-range max timestamps.

use crate::log_cache::{self, CacheRead};
use crate::{RangeLocation, Stream, StreamError, StreamRecord};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often a read retries a catalog look-up that found no range for a committed offset
/// (the local metadata replica may lag the commit that advanced the end offset).
const CATALOG_LAG_RETRIES: u32 = 5;
const CATALOG_LAG_DELAY: Duration = Duration::from_millis(20);

/// A read that has entries to return stops fetching blocks after this long: a catch-up read
/// of a byte budget spread over thousands of small WAL objects would otherwise take longer
/// than a client waits for its Fetch (librdkafka gives up after `socket.timeout.ms`, 60 s,
/// and reads nothing). Every caller reads again from where the read ended.
const READ_TIME_BUDGET: Duration = Duration::from_millis(500);

pub(crate) async fn read(
    stream: &Stream,
    from: u64,
    max_bytes: usize,
) -> Result<Vec<StreamRecord>, StreamError> {
    let s = &stream.shared;
    let end = s.end.load(Ordering::Acquire);
    let start = stream.current_start();
    if from < start || from > end {
        return Err(StreamError::OffsetOutOfRange {
            offset: from,
            start,
            end,
        });
    }
    let sequential = s.last_read_end.load(Ordering::Relaxed) == from;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut pos = from;
    let started = std::time::Instant::now();
    while pos < end {
        if !out.is_empty() && started.elapsed() >= READ_TIME_BUDGET {
            break;
        }
        let cached = {
            let st = s.state.lock();
            log_cache::read(&st, pos, end, max_bytes, &mut out, &mut bytes)
        };
        match cached {
            CacheRead::Served { pos: p } => {
                metrics::counter!("shale_log_cache_reads_total", "result" => "hit").increment(1);
                pos = p;
                break;
            }
            CacheRead::Below(cache_start) => {
                metrics::counter!("shale_log_cache_reads_total", "result" => "miss").increment(1);
                let limit = cache_start.map_or(end, |c| c.min(end));
                let (p, full) = read_objects(
                    stream, pos, limit, end, max_bytes, sequential, &mut out, &mut bytes,
                )
                .await?;
                if full || p <= pos {
                    pos = p;
                    break;
                }
                pos = p;
            }
        }
    }
    s.last_read_end.store(pos, Ordering::Relaxed);
    Ok(out)
}

/// Reads entries from objects from `pos` up to `limit` (where the log cache takes over).
/// Returns the new position and whether the byte budget is exhausted.
#[allow(clippy::too_many_arguments)]
async fn read_objects(
    stream: &Stream,
    pos: u64,
    limit: u64,
    end: u64,
    max_bytes: usize,
    sequential: bool,
    out: &mut Vec<StreamRecord>,
    bytes: &mut usize,
) -> Result<(u64, bool), StreamError> {
    let inner = &stream.inner;
    let readahead = if sequential {
        inner.config.readahead_ranges
    } else {
        0
    };
    let window = inner.tuning.read_window.max(1) + readahead;
    let mut locs = inner.catalog.ranges_from(stream.id(), pos, window);
    let mut tries = 0;
    while locs.first().is_none_or(|l| l.range.start_offset > pos) {
        let start = stream.current_start();
        if pos < start {
            // Trimmed while we were reading.
            if out.is_empty() {
                return Err(StreamError::OffsetOutOfRange {
                    offset: pos,
                    start,
                    end,
                });
            }
            return Ok((pos, true));
        }
        if tries >= CATALOG_LAG_RETRIES {
            if locs.is_empty() {
                tracing::warn!(
                    stream_id = stream.id(),
                    pos,
                    end,
                    "no object range holds a committed offset"
                );
                return Ok((pos, false));
            }
            // A hole in the stream (should not happen): continue after it.
            break;
        }
        tries += 1;
        tokio::time::sleep(CATALOG_LAG_DELAY).await;
        locs = inner.catalog.ranges_from(stream.id(), pos, window);
    }
    // Fetch, concurrently, the ranges this read needs: enough block bytes for the budget.
    let budget = max_bytes.saturating_sub(*bytes);
    let mut take = 0usize;
    let mut planned = 0usize;
    for l in &locs {
        if l.range.start_offset >= limit || (take > 0 && planned >= budget) {
            break;
        }
        planned += l.range.length as usize;
        take += 1;
    }
    let needed = &locs[..take];
    let blocks =
        futures::future::try_join_all(needed.iter().map(|l| inner.blocks.get(&inner.store, l)))
            .await?;
    if readahead > 0 {
        for l in locs.iter().skip(take).take(readahead) {
            if l.range.start_offset >= limit {
                break;
            }
            if inner.blocks.inflight() >= inner.tuning.readahead_max_inflight {
                break;
            }
            inner.blocks.prefetch(&inner.store, l);
        }
    }
    let mut pos = pos;
    for (loc, block) in needed.iter().zip(&blocks) {
        for e in &block.records {
            if e.end_offset() <= pos {
                continue;
            }
            if e.base_offset >= limit {
                // Offsets between here and `limit` are a compaction gap.
                return Ok((pos.max(limit), false));
            }
            let n = e.payload.len();
            if !out.is_empty() && *bytes + n > max_bytes {
                return Ok((pos, true));
            }
            *bytes += n;
            pos = e.end_offset();
            out.push(e.clone());
        }
        // A compacted range may end in a gap (or hold no entry at all): move past it so the
        // read continues with the next range instead of stalling inside the gap.
        pos = pos.max(loc.range.end_offset.min(limit));
    }
    Ok((pos, false))
}

/// Entries of one range: from the log cache when it covers the range, else the block.
async fn range_entries(
    stream: &Stream,
    loc: &RangeLocation,
) -> Result<Vec<StreamRecord>, StreamError> {
    let cached = {
        let st = stream.shared.state.lock();
        log_cache::entries_in(&st, loc.range.start_offset, loc.range.end_offset)
    };
    if let Some(entries) = cached {
        return Ok(entries);
    }
    let inner = &stream.inner;
    Ok(inner.blocks.get(&inner.store, loc).await?.records.clone())
}

pub(crate) async fn find_by_timestamp(
    stream: &Stream,
    ts: i64,
) -> Result<Option<u64>, StreamError> {
    let start = stream.current_start();
    let end = stream.end_offset();
    // Kafka timestamps are not monotonic: scan ranges by their max timestamp, oldest first.
    for loc in stream.inner.catalog.all_ranges(stream.id()) {
        let r = &loc.range;
        if r.end_offset <= start || r.max_timestamp < ts {
            continue;
        }
        if r.start_offset >= end {
            break;
        }
        for e in range_entries(stream, &loc).await? {
            if e.end_offset() > start && e.base_offset < end && e.max_timestamp >= ts {
                return Ok(Some(e.base_offset.max(start)));
            }
        }
    }
    Ok(None)
}

pub(crate) async fn max_timestamp(stream: &Stream) -> Result<Option<(i64, u64)>, StreamError> {
    let start = stream.current_start();
    let end = stream.end_offset();
    let live = |e: &StreamRecord| e.end_offset() > start && e.base_offset < end;
    let ranges: Vec<RangeLocation> = stream
        .inner
        .catalog
        .all_ranges(stream.id())
        .into_iter()
        .filter(|l| l.range.end_offset > start && l.range.start_offset < end)
        .collect();
    // Only a range straddling the start (or the end) can hold entries that no longer count;
    // its live maximum comes from its entries, every other range's from the catalog.
    let mut best: Option<(i64, usize)> = None;
    for (i, loc) in ranges.iter().enumerate() {
        let r = &loc.range;
        if r.length == 0 {
            // Fully compacted away: its catalog timestamp is that of data no longer there.
            continue;
        }
        let m = if r.start_offset < start || r.end_offset > end {
            range_entries(stream, loc)
                .await?
                .iter()
                .filter(|e| live(e))
                .map(|e| e.max_timestamp)
                .max()
                .unwrap_or(-1)
        } else {
            r.max_timestamp
        };
        // Strictly greater: the first entry holding the maximum wins.
        if best.is_none_or(|(b, _)| m > b) {
            best = Some((m, i));
        }
    }
    let Some((ts, i)) = best else {
        return Ok(None);
    };
    if ts < 0 {
        return Ok(None);
    }
    let Some(loc) = ranges.get(i) else {
        return Ok(None);
    };
    let entries = range_entries(stream, loc).await?;
    Ok(entries
        .iter()
        .find(|e| live(e) && e.max_timestamp == ts)
        .map(|e| (ts, e.base_offset.max(start))))
}
