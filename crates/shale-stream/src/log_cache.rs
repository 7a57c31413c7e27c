//! The log cache: each open stream keeps its recent entries (a contiguous tail, in offset
//! order) in memory so tailing consumers never touch object storage.
//!
//! Entries that are not durable yet cost nothing extra (the WAL buffer holds the same `Bytes`)
//! and are never evicted. Durable entries are evicted oldest-commit-first, node-wide, once the
//! cache holds more than `log_cache_bytes`: every commit appends (stream, end offset) to a FIFO,
//! and eviction pops it, dropping that stream's cached entries up to that offset.
//!
//! The budget counts what an entry really costs, not only its payload: its slot in the
//! stream's `VecDeque` (allocated capacity included, so slack after a burst counts until it is
//! released) and the header of the payload's shared allocation. Without that, a flood of tiny
//! entries would hold many times the configured memory.
//!
//! A fenced handle can never make its pending entries durable, so they would never become
//! evictable: its whole cache is dropped as soon as it is fenced (by a newer owner or by a
//! failed WAL object).

use crate::{StreamRecord, StreamShared, StreamState};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

/// Bytes of one `VecDeque` slot: the entry struct itself.
pub(crate) const SLOT_BYTES: usize = std::mem::size_of::<StreamRecord>();
/// Heap header of a payload's shared allocation (`Bytes` built from a `Vec`/`BytesMut`:
/// buffer pointer, capacity, reference count), charged once per entry.
pub(crate) const PAYLOAD_HEADER_BYTES: usize = 32;

/// What a stream's cache costs in memory.
fn footprint(st: &StreamState) -> usize {
    st.cache_payload_bytes
        + st.cache.capacity() * SLOT_BYTES
        + st.cache.len() * PAYLOAD_HEADER_BYTES
}

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

    /// Bytes held: payloads plus per-entry overhead of every cached entry.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Brings the node-wide total in line with the stream's current footprint.
    fn recharge(&self, st: &mut StreamState) {
        let now = footprint(st);
        if now >= st.cache_bytes {
            self.bytes
                .fetch_add(now - st.cache_bytes, Ordering::Relaxed);
        } else {
            self.bytes
                .fetch_sub(st.cache_bytes - now, Ordering::Relaxed);
        }
        st.cache_bytes = now;
    }

    /// Gives back slot capacity once the cache uses a quarter of it or less.
    fn release_slack(&self, st: &mut StreamState) {
        if st.cache.capacity() > 0 && st.cache.len() * 4 <= st.cache.capacity() {
            st.cache.shrink_to_fit();
            self.recharge(st);
        }
    }

    /// Adds an appended entry (caller holds the stream's lock).
    pub fn insert(&self, st: &mut StreamState, record: StreamRecord) {
        st.cache_payload_bytes += record.payload.len();
        st.cache.push_back(record);
        self.recharge(st);
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
                self.drop_below(&mut s.state.lock(), end);
            }
        }
    }

    /// Drops a stream's whole cache (stream closed or handle fenced).
    pub fn drop_stream(&self, st: &mut StreamState) {
        st.cache = std::collections::VecDeque::new();
        st.cache_payload_bytes = 0;
        self.recharge(st);
    }

    /// Drops a stream's cached entries below `end` (their offsets were rewritten by log
    /// compaction, so the cache must not keep serving the old versions). Only durable entries
    /// can be below a rewritten span, and the remaining cache is still a contiguous tail.
    pub fn drop_below(&self, st: &mut StreamState, end: u64) {
        let mut dropped = false;
        while st.cache.front().is_some_and(|e| e.end_offset() <= end) {
            if let Some(e) = st.cache.pop_front() {
                st.cache_payload_bytes -= e.payload.len();
                dropped = true;
            }
        }
        if dropped {
            self.recharge(st);
            self.release_slack(st);
        }
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
