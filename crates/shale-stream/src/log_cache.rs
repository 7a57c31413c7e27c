//! The log cache: each open stream keeps its recent entries (a contiguous tail, in offset
//! order) in memory so tailing consumers never touch object storage.
//!
//! Entries that are not durable yet cost nothing extra (the WAL buffer holds the same `Bytes`)
//! and are never evicted. Durable entries are evicted oldest-commit-first, node-wide, once the
//! cache holds more than `log_cache_bytes`: every commit appends (stream, end offset) to a FIFO,
//! and eviction pops it, dropping that stream's cached entries up to that offset.

use crate::{StreamRecord, StreamShared, StreamState};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

pub(crate) struct LogCache {
    limit: usize,
    bytes: AtomicUsize,
    /// Committed (stream, end offset) in commit order: the eviction order.
    durable: Mutex<VecDeque<(Weak<StreamShared>, u64)>>,
}

/// Outcome of a cache lookup for a read at some offset.
pub(crate) enum CacheRead {
    /// The offset is in the cache: entries were appended (up to the end or the byte budget);
    /// the new position.
    Served { pos: u64 },
    /// The offset is below the cached tail, which starts at this offset (None: cache empty).
    Below(Option<u64>),
}

impl LogCache {
    pub fn new(limit: usize) -> Self {
        LogCache {
            limit,
            bytes: AtomicUsize::new(0),
            durable: Mutex::new(VecDeque::new()),
        }
    }

    /// Bytes held (payloads of cached entries).
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Adds an appended entry (caller holds the stream's lock).
    pub fn insert(&self, st: &mut StreamState, record: StreamRecord) {
        let n = record.payload.len();
        st.cache.push_back(record);
        st.cache_bytes += n;
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Records that `stream`'s entries below `end` are durable (evictable).
    pub fn mark_durable(&self, stream: &Arc<StreamShared>, end: u64) {
        self.durable.lock().push_back((Arc::downgrade(stream), end));
    }

    /// Evicts the oldest durable entries until the cache is within its limit.
    pub fn evict(&self) {
        loop {
            let next = {
                let mut q = self.durable.lock();
                // Entries of closed streams were already dropped; their marks are just garbage.
                while q.front().is_some_and(|(w, _)| w.strong_count() == 0) {
                    q.pop_front();
                }
                if self.bytes.load(Ordering::Relaxed) <= self.limit {
                    return;
                }
                match q.pop_front() {
                    Some(x) => x,
                    None => return,
                }
            };
            let (weak, end) = next;
            if let Some(s) = weak.upgrade() {
                let mut st = s.state.lock();
                while st.cache.front().is_some_and(|e| e.end_offset() <= end) {
                    if let Some(e) = st.cache.pop_front() {
                        self.release(&mut st, e.payload.len());
                    }
                }
            }
        }
    }

    /// Drops a stream's whole cache (stream closed).
    pub fn drop_stream(&self, st: &mut StreamState) {
        let n = st.cache_bytes;
        st.cache.clear();
        st.cache_bytes = 0;
        self.bytes.fetch_sub(n, Ordering::Relaxed);
    }

    /// Drops a stream's cached entries below `end` (their offsets were rewritten by log
    /// compaction, so the cache must not keep serving the old versions). Only durable entries
    /// can be below a rewritten span, and the remaining cache is still a contiguous tail.
    pub fn drop_below(&self, st: &mut StreamState, end: u64) {
        while st.cache.front().is_some_and(|e| e.end_offset() <= end) {
            if let Some(e) = st.cache.pop_front() {
                self.release(st, e.payload.len());
            }
        }
    }

    fn release(&self, st: &mut StreamState, n: usize) {
        st.cache_bytes -= n;
        self.bytes.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Serves a read at `pos` from a stream's cached tail: entries starting with the one holding
/// `pos`, below `end` (durable only), until adding one would exceed `max_bytes` (the first
/// entry of the whole read is always taken: `out` empty).
pub(crate) fn read(
    st: &StreamState,
    pos: u64,
    end: u64,
    max_bytes: usize,
    out: &mut Vec<StreamRecord>,
    bytes: &mut usize,
) -> CacheRead {
    let Some(front) = st.cache.front() else {
        return CacheRead::Below(None);
    };
    if front.base_offset > pos {
        return CacheRead::Below(Some(front.base_offset));
    }
    let mut i = st.cache.partition_point(|e| e.end_offset() <= pos);
    let mut pos = pos;
    while let Some(e) = st.cache.get(i) {
        if e.base_offset >= end {
            break;
        }
        let n = e.payload.len();
        if !out.is_empty() && *bytes + n > max_bytes {
            return CacheRead::Served { pos };
        }
        *bytes += n;
        pos = e.end_offset();
        out.push(e.clone());
        i += 1;
    }
    CacheRead::Served { pos }
}

/// Cached entries whose offsets fall in `[from, to)`, if the cache covers all of `from`.
pub(crate) fn entries_in(st: &StreamState, from: u64, to: u64) -> Option<Vec<StreamRecord>> {
    let front = st.cache.front()?;
    if front.base_offset > from {
        return None;
    }
    let i = st.cache.partition_point(|e| e.end_offset() <= from);
    Some(
        st.cache
            .range(i..)
            .take_while(|e| e.base_offset < to)
            .cloned()
            .collect(),
    )
}
