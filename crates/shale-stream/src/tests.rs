//! End-to-end tests of the stream layer against an in-memory bucket and [`MemoryCatalog`].

use crate::memory::MemoryCatalog;
use crate::util::Tuning;
use crate::*;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, PutOptions};
use shale_testkit::faulty::{Fault, FaultyStore, Op, Rule};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::timeout;

/// Whole, ranged and HEAD GETs the bucket has seen.
fn get_count(b: &FaultyStore) -> u64 {
    b.calls(Op::Get) + b.calls(Op::GetRange) + b.calls(Op::Head)
}

fn config() -> StreamConfig {
    StreamConfig {
        node_id: 1,
        key_prefix: "t/".into(),
        cluster_id: String::new(),
        wal_batch_interval: Duration::from_millis(20),
        wal_batch_bytes: 1 << 20,
        wal_max_inflight: 4,
        log_cache_bytes: 1 << 20,
        block_cache_bytes: 1 << 20,
        readahead_ranges: 2,
        // Driven by compact_now in tests.
        compaction_interval: Duration::ZERO,
        compaction_small_object_bytes: 1 << 20,
        compaction_max_object_bytes: 16 << 20,
        object_delete_grace: Duration::from_millis(50),
        wal_max_pending_bytes: 64 << 20,
        // Driven by collect_garbage_now in tests.
        gc_interval: Duration::ZERO,
        gc_min_age: Duration::ZERO,
        ..StreamConfig::default()
    }
}

fn tuning() -> Tuning {
    Tuning {
        retry_initial: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
        wal_retry_timeout: Duration::from_millis(400),
        close_wait: Duration::from_secs(2),
        ..Tuning::default()
    }
}

struct Env {
    bucket: Arc<FaultyStore>,
    catalog: Arc<MemoryCatalog>,
    store: Arc<StreamStore>,
}

impl Env {
    fn new(cfg: StreamConfig) -> Env {
        let bucket = FaultyStore::in_memory(1);
        let catalog = Arc::new(MemoryCatalog::new());
        let store = StreamStore::start_tuned(bucket.clone(), catalog.clone(), cfg, tuning());
        Env {
            bucket,
            catalog,
            store,
        }
    }

    /// Another node on the same bucket and catalog.
    fn peer(&self, cfg: StreamConfig) -> Arc<StreamStore> {
        StreamStore::start_tuned(self.bucket.clone(), self.catalog.clone(), cfg, tuning())
    }
}

fn payload(stream: u64, offset: u64, len: usize) -> Bytes {
    let mut v = format!("s{stream}-o{offset}-").into_bytes();
    v.resize(len.max(v.len()), b'x');
    Bytes::from(v)
}

async fn durable(h: AppendHandle) -> Result<(), StreamError> {
    timeout(Duration::from_secs(10), h.durable)
        .await
        .expect("append never resolved")
        .expect("durable sender dropped")
}

/// Appends `n` entries of `count` offsets each and waits until all are durable.
async fn append_n(s: &Stream, n: usize, count: u32, len: usize) -> Vec<u64> {
    let mut handles = Vec::new();
    for _ in 0..n {
        let id = s.id();
        let h = s
            .append(count, crate::util::now_ms(), |base| payload(id, base, len))
            .unwrap();
        handles.push(h);
    }
    let mut bases = Vec::new();
    for h in handles {
        bases.push(h.base_offset);
        durable(h).await.unwrap();
    }
    bases
}

async fn read_all(s: &Stream, from: u64) -> Vec<StreamRecord> {
    let mut out = Vec::new();
    let mut pos = from;
    while pos < s.end_offset() {
        let got = s.read(pos, 64 * 1024).await.unwrap();
        assert!(!got.is_empty(), "no progress at {pos}");
        pos = got.last().unwrap().end_offset();
        out.extend(got);
    }
    out
}

fn check_entries(entries: &[StreamRecord], stream: u64, from: u64, to: u64, count: u32) {
    let mut expected = from;
    for e in entries {
        assert_eq!(e.base_offset, expected);
        assert_eq!(e.count, count);
        assert!(
            e.payload
                .starts_with(format!("s{stream}-o{expected}-").as_bytes())
        );
        expected = e.end_offset();
    }
    assert_eq!(expected, to);
}

#[tokio::test]
async fn wal_batches_many_streams_into_one_object() {
    let mut cfg = config();
    cfg.wal_batch_interval = Duration::from_millis(300);
    let env = Env::new(cfg);
    let mut streams = Vec::new();
    for id in 1..=8 {
        streams.push(env.store.open(id).await.unwrap());
    }
    let mut handles = Vec::new();
    for round in 0..25 {
        for s in &streams {
            let id = s.id();
            let h = s.append(2, round, |base| payload(id, base, 100)).unwrap();
            assert_eq!(h.base_offset, round as u64 * 2);
            handles.push(h);
        }
    }
    for h in handles {
        durable(h).await.unwrap();
    }
    assert_eq!(env.bucket.keys("t/wal").await.unwrap().len(), 1);
    assert_eq!(env.bucket.calls(Op::Put), 1);
    let objects = env.catalog.live_objects();
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0].ranges.len(), 8);
    assert_eq!(objects[0].key, "t/wal/1/00000000000000000001");
    for s in &streams {
        assert_eq!(s.end_offset(), 50);
        assert_eq!(s.next_offset(), 50);
        check_entries(&s.read(0, usize::MAX).await.unwrap(), s.id(), 0, 50, 2);
    }
}

#[tokio::test]
async fn wal_flushes_when_batch_bytes_reached() {
    let mut cfg = config();
    cfg.wal_batch_interval = Duration::from_secs(3600);
    cfg.wal_batch_bytes = 10_000;
    let env = Env::new(cfg);
    let s = env.store.open(1).await.unwrap();
    // ~20 KB: at least one size-triggered flush without waiting for the (huge) interval.
    let handles: Vec<_> = (0..20)
        .map(|_| s.append(1, 0, |b| payload(1, b, 1000)).unwrap())
        .collect();
    let first = handles.into_iter().next().unwrap();
    durable(first).await.unwrap();
    assert!(s.end_offset() >= 9);
    // Nothing buffered means no object: the count stays put.
    let objects = env.bucket.keys("t/wal").await.unwrap().len();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(env.bucket.keys("t/wal").await.unwrap().len() <= objects + 1);
    env.store.shutdown().await;
    assert_eq!(s.end_offset(), 20);
}

#[tokio::test]
async fn appends_resolve_only_after_commit() {
    let env = Env::new(config());
    let s = env.store.open(1).await.unwrap();
    env.catalog.inject_commit_failures(5);
    let mut h = s.append(3, 7, |b| payload(1, b, 10)).unwrap();
    assert_eq!(h.base_offset, 0);
    assert_eq!(s.next_offset(), 3);
    tokio::time::sleep(Duration::from_millis(40)).await;
    // Uploaded but not committed: neither acknowledged nor visible.
    assert!(h.durable.try_recv().is_err());
    assert_eq!(s.end_offset(), 0);
    assert!(s.read(0, 100).await.unwrap().is_empty());
    assert!(matches!(
        s.read(1, 100).await,
        Err(StreamError::OffsetOutOfRange { .. })
    ));
    durable(h).await.unwrap();
    assert_eq!(s.end_offset(), 3);
    assert_eq!(s.read(0, 100).await.unwrap().len(), 1);
}

#[tokio::test]
async fn lost_commit_response_is_still_acknowledged() {
    let env = Env::new(config());
    let s = env.store.open(1).await.unwrap();
    env.catalog.inject_lost_commit_acks(1);
    append_n(&s, 3, 1, 10).await;
    assert_eq!(s.end_offset(), 3);
    append_n(&s, 3, 1, 10).await;
    assert_eq!(env.catalog.stream(1).unwrap().end_offset, 6);
}

#[tokio::test]
async fn put_failures_are_retried() {
    let env = Env::new(config());
    env.bucket
        .inject(Rule::new(Fault::Error).op(Op::Put).times(3));
    env.catalog.inject_prepare_failures(2);
    let s = env.store.open(1).await.unwrap();
    append_n(&s, 5, 1, 10).await;
    assert_eq!(s.end_offset(), 5);
    assert!(s.is_writable());
}

#[tokio::test]
async fn permanent_put_failure_fails_appends_and_fences() {
    let env = Env::new(config());
    let s = env.store.open(1).await.unwrap();
    append_n(&s, 2, 1, 10).await;
    let outage = env.bucket.inject(Rule::new(Fault::Error).op(Op::Put));
    let h = s.append(1, 0, |b| payload(1, b, 10)).unwrap();
    assert!(matches!(durable(h).await, Err(StreamError::ObjectStore(_))));
    assert!(!s.is_writable());
    assert!(matches!(
        s.append(1, 0, |b| payload(1, b, 10)),
        Err(StreamError::Fenced(1))
    ));
    // Never acknowledged, never visible.
    assert_eq!(s.end_offset(), 2);
    env.bucket.remove(outage);
    let s2 = env.store.open(1).await.unwrap();
    assert_eq!(s2.epoch(), s.epoch() + 1);
    assert_eq!(s2.next_offset(), 2);
    append_n(&s2, 2, 1, 10).await;
    check_entries(&read_all(&s2, 0).await, 1, 0, 4, 1);
}

#[tokio::test]
async fn a_handle_is_not_current_once_another_node_opened_the_stream() {
    // A node whose open finished after another node's must not keep serving from it: the
    // handle is still writable (nothing told it yet) but not current.
    let env = Env::new(config());
    let a1 = env.store.open(1).await.unwrap();
    append_n(&a1, 3, 1, 10).await;
    assert!(a1.is_current());
    let mut cfg = config();
    cfg.node_id = 2;
    let peer = env.peer(cfg);
    let b1 = peer.open(1).await.unwrap();
    assert!(a1.is_writable(), "no commit has been refused yet");
    assert!(!a1.is_current());
    assert!(b1.is_current());
    peer.shutdown().await;
}

#[tokio::test]
async fn fenced_by_another_node() {
    let env = Env::new(config());
    let a1 = env.store.open(1).await.unwrap();
    let a2 = env.store.open(2).await.unwrap();
    append_n(&a1, 3, 1, 10).await;
    let mut cfg = config();
    cfg.node_id = 2;
    let peer = env.peer(cfg);
    let b1 = peer.open(1).await.unwrap();
    assert_eq!(b1.epoch(), a1.epoch() + 1);
    assert_eq!(b1.next_offset(), 3);
    // The zombie's append fails; the other stream in the same WAL object still commits.
    let h1 = a1.append(1, 0, |b| payload(1, b, 10)).unwrap();
    let h2 = a2.append(1, 0, |b| payload(2, b, 10)).unwrap();
    assert!(matches!(durable(h1).await, Err(StreamError::Fenced(1))));
    durable(h2).await.unwrap();
    assert!(matches!(
        a1.append(1, 0, |b| payload(1, b, 10)),
        Err(StreamError::Fenced(1))
    ));
    assert_eq!(a1.end_offset(), 3);
    append_n(&b1, 2, 1, 10).await;
    check_entries(&read_all(&b1, 0).await, 1, 0, 5, 1);
    // Reopening on the first node fences the peer in turn.
    let a1b = env.store.open(1).await.unwrap();
    assert_eq!(a1b.next_offset(), 5);
    let h = b1.append(1, 0, |b| payload(1, b, 10)).unwrap();
    assert!(matches!(durable(h).await, Err(StreamError::Fenced(1))));
    peer.shutdown().await;
}

#[tokio::test]
async fn open_returns_same_handle_until_fenced() {
    let env = Env::new(config());
    let a = env.store.open(5).await.unwrap();
    let b = env.store.open(5).await.unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(env.catalog.stream(5).unwrap().epoch, 1);
    // A buffered entry of a replaced handle is left out; the new handle's commit succeeds.
    let mut cfg = config();
    cfg.wal_batch_interval = Duration::from_millis(100);
    let env = Env::new(cfg);
    let old = env.store.open(5).await.unwrap();
    let h_old = old.append(1, 0, |b| payload(5, b, 10)).unwrap();
    old.shared.fenced.store(true, Ordering::SeqCst);
    let new = env.store.open(5).await.unwrap();
    assert!(!Arc::ptr_eq(&old, &new));
    let h_new = new.append(1, 0, |b| payload(5, b, 10)).unwrap();
    assert_eq!(h_new.base_offset, 0);
    assert!(matches!(durable(h_old).await, Err(StreamError::Fenced(5))));
    durable(h_new).await.unwrap();
    assert_eq!(new.end_offset(), 1);
}

#[tokio::test]
async fn read_across_log_cache_and_objects() {
    let mut cfg = config();
    // About 20 entries of 100 bytes with their overhead: the head must come from objects.
    cfg.log_cache_bytes = 4_000;
    let env = Env::new(cfg);
    let s = env.store.open(1).await.unwrap();
    for _ in 0..10 {
        append_n(&s, 10, 2, 100).await;
    }
    assert_eq!(s.end_offset(), 200);
    assert!(env.store.stats().log_cache_bytes <= 4_000);
    assert!(env.bucket.keys("t/wal").await.unwrap().len() >= 10);
    let gets = get_count(&env.bucket);
    // The tail comes from memory.
    let tail = s.read(198, 10_000).await.unwrap();
    assert_eq!(tail.len(), 1);
    assert_eq!(get_count(&env.bucket), gets);
    // The head from objects, continuing into the cache.
    check_entries(&read_all(&s, 0).await, 1, 0, 200, 2);
    assert!(get_count(&env.bucket) > gets);
    // The entry holding an offset comes first.
    let got = s.read(51, 1).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].base_offset, 50);
    // max_bytes: stop before exceeding, always at least one entry.
    let len = got[0].payload.len();
    assert_eq!(s.read(0, 3 * len).await.unwrap().len(), 3);
    assert_eq!(s.read(0, 3 * len + 1).await.unwrap().len(), 3);
    assert_eq!(s.read(0, 0).await.unwrap().len(), 1);
    let big = s.read(0, usize::MAX).await.unwrap();
    check_entries(&big, 1, 0, 200, 2);
    assert!(s.read(200, 10).await.unwrap().is_empty());
    assert!(matches!(
        s.read(201, 10).await,
        Err(StreamError::OffsetOutOfRange {
            offset: 201,
            start: 0,
            end: 200
        })
    ));
}

#[tokio::test]
async fn a_read_over_many_slow_objects_returns_what_it_has_after_its_time_budget() {
    let mut cfg = config();
    cfg.log_cache_bytes = 0;
    cfg.readahead_ranges = 0;
    let env = Env::new(cfg.clone());
    let s = env.store.open(1).await.unwrap();
    // One WAL object per append: 40 ranges to fetch one by one.
    for _ in 0..40 {
        append_n(&s, 1, 1, 50).await;
    }
    env.store.shutdown().await;
    env.bucket
        .inject(Rule::new(Fault::Latency(Duration::from_millis(300))).op(Op::GetRange));
    let reader = env.peer(cfg);
    let s = reader.open(1).await.unwrap();
    let started = std::time::Instant::now();
    let first = s.read(0, 1 << 20).await.unwrap();
    // Everything takes three rounds of up to 16 ranges, 300 ms each; the read stops once past
    // its 500 ms budget with what two rounds brought, and reading on gets the rest.
    assert!(
        !first.is_empty() && first.len() < 40,
        "{} entries",
        first.len()
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let rest = read_all(&s, first.last().unwrap().end_offset()).await;
    let mut all = first;
    all.extend(rest);
    check_entries(&all, 1, 0, 40, 1);
}

#[tokio::test]
async fn log_cache_disabled_still_reads() {
    let mut cfg = config();
    cfg.log_cache_bytes = 0;
    let env = Env::new(cfg);
    let s = env.store.open(1).await.unwrap();
    append_n(&s, 5, 1, 50).await;
    assert_eq!(env.store.stats().log_cache_bytes, 0);
    check_entries(&read_all(&s, 0).await, 1, 0, 5, 1);
}

#[tokio::test]
async fn restart_reads_all_acknowledged_data() {
    let env = Env::new(config());
    for id in 1..=3 {
        let s = env.store.open(id).await.unwrap();
        for _ in 0..4 {
            append_n(&s, 5, 3, 64).await;
        }
    }
    env.store.shutdown().await;
    assert!(matches!(
        env.store.open(1).await,
        Err(StreamError::ShuttingDown)
    ));
    let again = env.peer(config());
    for id in 1..=3 {
        let s = again.open(id).await.unwrap();
        assert_eq!(
            (s.start_offset(), s.end_offset(), s.next_offset()),
            (0, 60, 60)
        );
        check_entries(&read_all(&s, 0).await, id, 0, 60, 3);
        append_n(&s, 1, 3, 64).await;
        check_entries(&read_all(&s, 57).await, id, 57, 63, 3);
    }
    again.shutdown().await;
}

#[tokio::test]
async fn shutdown_flushes_buffered_appends() {
    let mut cfg = config();
    cfg.wal_batch_interval = Duration::from_secs(3600);
    let env = Env::new(cfg);
    let s = env.store.open(1).await.unwrap();
    let h = s.append(1, 0, |b| payload(1, b, 10)).unwrap();
    timeout(Duration::from_secs(5), env.store.shutdown())
        .await
        .unwrap();
    durable(h).await.unwrap();
    assert!(matches!(
        s.append(1, 0, |b| payload(1, b, 10)),
        Err(StreamError::Fenced(_) | StreamError::ShuttingDown)
    ));
    assert_eq!(env.catalog.stream(1).unwrap().end_offset, 1);
    // Idempotent.
    env.store.shutdown().await;
}

#[tokio::test]
async fn dropping_the_store_fails_buffered_appends() {
    let mut cfg = config();
    cfg.wal_batch_interval = Duration::from_secs(3600);
    let env = Env::new(cfg);
    let s = env.store.open(1).await.unwrap();
    let h = s.append(1, 0, |b| payload(1, b, 10)).unwrap();
    drop(env.store);
    let r = timeout(Duration::from_secs(5), h.durable).await.unwrap();
    assert!(matches!(r, Ok(Err(StreamError::ShuttingDown)) | Err(_)));
}

#[tokio::test]
async fn close_waits_for_pending_appends() {
    let mut cfg = config();
    cfg.wal_batch_interval = Duration::from_millis(100);
    let env = Env::new(cfg);
    let s = env.store.open(1).await.unwrap();
    let mut h = s.append(1, 0, |b| payload(1, b, 10)).unwrap();
    env.store.close(1).await;
    assert!(matches!(h.durable.try_recv(), Ok(Ok(()))));
    assert!(matches!(
        s.append(1, 0, |b| payload(1, b, 10)),
        Err(StreamError::Fenced(1))
    ));
    assert_eq!(env.store.stats().open_streams, 0);
    let s2 = env.store.open(1).await.unwrap();
    assert_eq!(s2.next_offset(), 1);
}

#[tokio::test]
async fn deleted_stream_fails_pending_appends() {
    let mut cfg = config();
    cfg.wal_batch_interval = Duration::from_millis(50);
    let env = Env::new(cfg);
    let s = env.store.open(1).await.unwrap();
    let other = env.store.open(2).await.unwrap();
    append_n(&s, 1, 1, 10).await;
    let h = s.append(1, 0, |b| payload(1, b, 10)).unwrap();
    let h2 = other.append(1, 0, |b| payload(2, b, 10)).unwrap();
    env.catalog.delete_stream(1).await.unwrap();
    assert!(matches!(
        durable(h).await,
        Err(StreamError::Catalog(CatalogError::UnknownStream(1)))
    ));
    durable(h2).await.unwrap();
    // The first object is dead now and goes away after the grace period.
    tokio::time::sleep(Duration::from_millis(60)).await;
    env.store.delete_dead_objects_now().await;
    assert!(env.catalog.dead_objects().is_empty());
}

#[tokio::test]
async fn commits_stay_in_flush_order() {
    let mut cfg = config();
    cfg.wal_batch_interval = Duration::from_millis(10);
    let env = Env::new(cfg);
    let s = env.store.open(1).await.unwrap();
    // The first object's upload is slow; later ones finish first but must wait.
    env.bucket.inject(
        Rule::new(Fault::Latency(Duration::from_millis(300)))
            .op(Op::Put)
            .times(1),
    );
    let first = s.append(1, 0, |b| payload(1, b, 10)).unwrap();
    tokio::time::sleep(Duration::from_millis(40)).await;
    let second = s.append(1, 0, |b| payload(1, b, 10)).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(s.end_offset(), 0);
    // Only the second object is in the bucket yet.
    assert_eq!(env.bucket.keys("t/wal").await.unwrap().len(), 1);
    durable(second).await.unwrap();
    durable(first).await.unwrap();
    assert_eq!(s.end_offset(), 2);
    check_entries(&read_all(&s, 0).await, 1, 0, 2, 1);
}

#[tokio::test]
async fn timestamps() {
    let mut cfg = config();
    cfg.log_cache_bytes = 0;
    let env = Env::new(cfg);
    let s = env.store.open(1).await.unwrap();
    assert_eq!(s.max_timestamp().await.unwrap(), None);
    assert_eq!(s.find_by_timestamp(0).await.unwrap(), None);
    // Non-monotonic timestamps across three objects.
    for (i, ts) in [100, 300, 200, 250, 150, 300].iter().enumerate() {
        let h = s.append(2, *ts, |b| payload(1, b, 10)).unwrap();
        assert_eq!(h.base_offset, i as u64 * 2);
        if i % 2 == 1 {
            durable(h).await.unwrap();
        }
    }
    assert_eq!(s.find_by_timestamp(50).await.unwrap(), Some(0));
    assert_eq!(s.find_by_timestamp(101).await.unwrap(), Some(2));
    assert_eq!(s.find_by_timestamp(260).await.unwrap(), Some(2));
    assert_eq!(s.find_by_timestamp(301).await.unwrap(), None);
    assert_eq!(s.max_timestamp().await.unwrap(), Some((300, 2)));
    // Below the start: the first live entry counts.
    s.trim(3).await.unwrap();
    assert_eq!(s.find_by_timestamp(0).await.unwrap(), Some(3));
    assert_eq!(s.max_timestamp().await.unwrap(), Some((300, 3)));
    s.trim(4).await.unwrap();
    assert_eq!(s.max_timestamp().await.unwrap(), Some((300, 10)));
    assert_eq!(s.find_by_timestamp(210).await.unwrap(), Some(6));
}

#[tokio::test]
async fn trim_moves_start() {
    let env = Env::new(config());
    let s = env.store.open(1).await.unwrap();
    append_n(&s, 10, 1, 10).await;
    let mut notes = env.store.commit_notifications();
    let before = *notes.borrow_and_update();
    s.trim(4).await.unwrap();
    assert!(*notes.borrow() > before);
    assert_eq!(s.start_offset(), 4);
    assert_eq!(env.catalog.stream(1).unwrap().start_offset, 4);
    s.trim(2).await.unwrap();
    assert_eq!(s.start_offset(), 4);
    assert!(matches!(
        s.read(3, 10).await,
        Err(StreamError::OffsetOutOfRange { start: 4, .. })
    ));
    assert_eq!(s.read(4, 1).await.unwrap()[0].base_offset, 4);
    s.trim(100).await.unwrap();
    assert_eq!(s.start_offset(), 10);
    assert!(s.read(10, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn retention_by_time_deletes_objects_after_grace() {
    let env = Env::new(config());
    let s = env.store.open(1).await.unwrap();
    for ts in [1_000, 2_000, 3_000] {
        let hs: Vec<_> = (0..5)
            .map(|_| s.append(1, ts, |b| payload(1, b, 100)).unwrap())
            .collect();
        for h in hs {
            durable(h).await.unwrap();
        }
    }
    assert_eq!(env.bucket.keys("t/wal").await.unwrap().len(), 3);
    assert_eq!(
        env.store
            .apply_retention(1, 3_500, Some(5_000), None)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        env.store
            .apply_retention(1, 3_500, None, None)
            .await
            .unwrap(),
        None
    );
    let moved = env
        .store
        .apply_retention(1, 3_500, Some(1_000), None)
        .await
        .unwrap();
    assert_eq!(moved, Some(10));
    assert_eq!(s.start_offset(), 10);
    assert_eq!(env.catalog.dead_objects().len(), 2);
    // Still in the bucket during the grace period, gone after it.
    assert_eq!(env.bucket.keys("t/wal").await.unwrap().len(), 3);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while env.bucket.keys("t/wal").await.unwrap().len() > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "dead objects not deleted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(env.catalog.dead_objects().is_empty());
    check_entries(&read_all(&s, 10).await, 1, 10, 15, 1);
}

#[tokio::test]
async fn retention_by_bytes() {
    let mut cfg = config();
    cfg.object_delete_grace = Duration::from_millis(300);
    let env = Env::new(cfg);
    let s = env.store.open(1).await.unwrap();
    for _ in 0..4 {
        append_n(&s, 4, 1, 100).await;
    }
    let ranges = env.catalog.all_ranges(1);
    assert_eq!(ranges.len(), 4);
    let len = u64::from(ranges[0].range.length);
    // Keep at least two ranges' worth.
    let moved = env
        .store
        .apply_retention(1, 0, None, Some(2 * len))
        .await
        .unwrap();
    assert_eq!(moved, Some(8));
    assert_eq!(
        env.store
            .apply_retention(1, 0, None, Some(2 * len))
            .await
            .unwrap(),
        None
    );
    // Within the grace period nothing is deleted; after it the two dead objects go.
    assert_eq!(env.store.delete_dead_objects_now().await, 0);
    assert_eq!(env.bucket.keys("t/wal").await.unwrap().len(), 4);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while env.bucket.keys("t/wal").await.unwrap().len() > 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "dead objects not deleted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check_entries(&read_all(&s, 8).await, 1, 8, 16, 1);
    // A stream that is not open here can have retention applied too.
    let other = env.store.open(2).await.unwrap();
    append_n(&other, 2, 1, 100).await;
    env.store.close(2).await;
    assert_eq!(
        env.store
            .apply_retention(2, 0, None, Some(0))
            .await
            .unwrap(),
        Some(2)
    );
    assert!(matches!(
        env.store.apply_retention(99, 0, None, Some(0)).await,
        Err(StreamError::Catalog(CatalogError::UnknownStream(99)))
    ));
}

#[tokio::test]
async fn compaction_merges_small_objects() {
    let mut cfg = config();
    cfg.log_cache_bytes = 0;
    let env = Env::new(cfg);
    let a = env.store.open(1).await.unwrap();
    let b = env.store.open(2).await.unwrap();
    for round in 0..6 {
        let mut hs = Vec::new();
        for _ in 0..3 {
            hs.push(a.append(2, round, |o| payload(1, o, 50)).unwrap());
            if round % 2 == 0 {
                hs.push(b.append(1, round, |o| payload(2, o, 70)).unwrap());
            }
        }
        for h in hs {
            durable(h).await.unwrap();
        }
    }
    assert_eq!(env.catalog.live_objects().len(), 6);
    a.trim(7).await.unwrap();
    let replaced = env.store.compact_now().await.unwrap();
    assert_eq!(replaced, 6);
    let live = env.catalog.live_objects();
    assert_eq!(live.len(), 1);
    assert!(live[0].key.starts_with("t/obj/"));
    // Adjacent ranges merged: one per stream; entries below the start dropped.
    assert_eq!(live[0].ranges.len(), 2);
    assert_eq!(
        (live[0].ranges[0].start_offset, live[0].ranges[0].end_offset),
        (6, 36)
    );
    assert_eq!(
        (live[0].ranges[1].start_offset, live[0].ranges[1].end_offset),
        (0, 9)
    );
    assert_eq!(live[0].ranges[0].max_timestamp, 5);
    check_entries(&read_all(&a, 7).await, 1, 6, 36, 2);
    check_entries(&read_all(&b, 0).await, 2, 0, 9, 1);
    assert_eq!(a.max_timestamp().await.unwrap(), Some((5, 30)));
    // Replaced objects leave the bucket after the grace period.
    tokio::time::sleep(Duration::from_millis(60)).await;
    env.store.delete_dead_objects_now().await;
    assert!(env.bucket.keys("t/wal").await.unwrap().is_empty());
    assert_eq!(env.bucket.keys("t/obj").await.unwrap().len(), 1);
    // Nothing left to merge.
    assert_eq!(env.store.compact_now().await.unwrap(), 0);
    // New appends continue after the compacted data.
    append_n(&a, 2, 2, 50).await;
    check_entries(&read_all(&a, 7).await, 1, 6, 40, 2);
}

#[tokio::test]
async fn compaction_respects_size_limits_and_ownership() {
    let mut cfg = config();
    cfg.compaction_max_object_bytes = 1_000;
    let env = Env::new(cfg);
    let a = env.store.open(1).await.unwrap();
    for _ in 0..6 {
        append_n(&a, 1, 1, 300).await;
    }
    assert_eq!(env.catalog.live_objects().len(), 6);
    // Streams not open here are left to their owner.
    let mut peer_cfg = config();
    peer_cfg.node_id = 2;
    let peer = env.peer(peer_cfg);
    assert_eq!(peer.compact_now().await.unwrap(), 0);
    env.store.compact_now().await.unwrap();
    let live = env.catalog.live_objects();
    assert!(live.len() < 6);
    assert!(live.iter().all(|o| o.size <= 2_000));
    check_entries(&read_all(&a, 0).await, 1, 0, 6, 1);
}

#[tokio::test]
async fn readahead_and_bounded_block_cache() {
    let mut cfg = config();
    cfg.log_cache_bytes = 0;
    cfg.readahead_ranges = 3;
    cfg.block_cache_bytes = 5 * 1_100;
    let env = Env::new(cfg);
    let s = env.store.open(1).await.unwrap();
    for _ in 0..12 {
        append_n(&s, 1, 1, 1_000).await;
    }
    let ranges = env.catalog.all_ranges(1);
    assert_eq!(ranges.len(), 12);
    // First read: not sequential yet, fetches one block.
    let got = s.read(0, 1).await.unwrap();
    assert_eq!(got.len(), 1);
    // Second read continues where the first ended: sequential, so read-ahead kicks in.
    s.read(1, 1).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !(2..=4).all(|i| {
        env.store
            .inner
            .blocks
            .contains(ranges[i].object_id, ranges[i].range.position)
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "read-ahead did not happen"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 2..12 {
        let got = s.read(i, 1).await.unwrap();
        assert_eq!(got[0].base_offset, i);
        let st = env.store.stats();
        assert!(st.block_cache_bytes <= 5 * 1_100, "{st:?}");
    }
    // Random reads do not trigger read-ahead and stay bounded.
    for i in [7, 1, 10, 0] {
        assert_eq!(s.read(i, 1).await.unwrap()[0].base_offset, i);
    }
    assert!(env.store.stats().block_cache_blocks <= 5);
}

#[tokio::test]
async fn block_cache_serves_repeated_reads() {
    let mut cfg = config();
    cfg.log_cache_bytes = 0;
    cfg.readahead_ranges = 0;
    let env = Env::new(cfg);
    let s = env.store.open(1).await.unwrap();
    append_n(&s, 10, 1, 100).await;
    s.read(0, usize::MAX).await.unwrap();
    let gets = get_count(&env.bucket);
    for _ in 0..5 {
        check_entries(&s.read(0, usize::MAX).await.unwrap(), 1, 0, 10, 1);
    }
    assert_eq!(get_count(&env.bucket), gets);
}

#[tokio::test]
async fn corrupted_object_is_reported() {
    let mut cfg = config();
    cfg.log_cache_bytes = 0;
    let env = Env::new(cfg);
    let s = env.store.open(1).await.unwrap();
    append_n(&s, 3, 1, 100).await;
    let key = env.catalog.live_objects()[0].key.clone();
    let path = Path::from(key.as_str());
    let data = env
        .bucket
        .inner()
        .get_opts(&path, GetOptions::default())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut bad = data.to_vec();
    bad[30] ^= 0xff;
    env.bucket
        .inner()
        .put_opts(&path, Bytes::from(bad).into(), PutOptions::default())
        .await
        .unwrap();
    assert!(matches!(
        s.read(0, 100).await,
        Err(StreamError::Corrupt { key: k, .. }) if k == key
    ));
}

#[tokio::test]
async fn commit_notifications_follow_commits() {
    let env = Env::new(config());
    let mut rx = env.store.commit_notifications();
    let s = env.store.open(1).await.unwrap();
    let h = s.append(1, 0, |b| payload(1, b, 10)).unwrap();
    timeout(Duration::from_secs(5), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.end_offset(), 1);
    durable(h).await.unwrap();
}

#[tokio::test]
async fn many_concurrent_appenders() {
    let mut cfg = config();
    cfg.wal_batch_bytes = 20_000;
    cfg.wal_max_inflight = 2;
    cfg.log_cache_bytes = 50_000;
    let env = Env::new(cfg);
    let mut tasks = Vec::new();
    for id in 1..=6u64 {
        let s = env.store.open(id).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut hs = Vec::new();
            for i in 0..200u64 {
                hs.push(s.append(1, i as i64, |b| payload(id, b, 200)).unwrap());
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            for h in hs {
                durable(h).await.unwrap();
            }
            check_entries(&read_all(&s, 0).await, id, 0, 200, 1);
            s
        }));
    }
    for t in tasks {
        let s = t.await.unwrap();
        assert_eq!(s.end_offset(), 200);
    }
    assert!(env.store.stats().log_cache_bytes <= 50_000);
    env.store.shutdown().await;
}

/// The broker spawns these futures: they must be `Send`.
#[allow(dead_code)]
fn public_futures_are_send(store: Arc<StreamStore>, s: Arc<Stream>) {
    fn send<T: Send>(_: T) {}
    send(store.open(1));
    send(store.close(1));
    send(store.apply_retention(1, 0, None, None));
    send(store.compact_now());
    send(store.delete_dead_objects_now());
    send(store.shutdown());
    send(s.read(0, 1));
    send(s.find_by_timestamp(0));
    send(s.max_timestamp());
    send(s.trim(0));
}

#[tokio::test]
async fn local_filesystem_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let bucket: Arc<dyn ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let catalog = Arc::new(MemoryCatalog::new());
    let mut cfg = config();
    cfg.log_cache_bytes = 0;
    cfg.key_prefix = String::new();
    let store = StreamStore::start_tuned(bucket.clone(), catalog.clone(), cfg.clone(), tuning());
    let s = store.open(1).await.unwrap();
    for _ in 0..3 {
        append_n(&s, 4, 1, 500).await;
    }
    assert!(dir.path().join("wal/1/00000000000000000001").exists());
    check_entries(&read_all(&s, 0).await, 1, 0, 12, 1);
    store.compact_now().await.unwrap();
    s.trim(2).await.unwrap();
    store.shutdown().await;
    drop(s);
    drop(store);

    let store = StreamStore::start_tuned(bucket, catalog.clone(), cfg, tuning());
    let s = store.open(1).await.unwrap();
    check_entries(&read_all(&s, 2).await, 1, 2, 12, 1);
    tokio::time::sleep(Duration::from_millis(60)).await;
    store.delete_dead_objects_now().await;
    assert!(catalog.dead_objects().is_empty());
    assert!(!dir.path().join("wal/1/00000000000000000001").exists());
    assert_eq!(
        std::fs::read_dir(dir.path().join("obj")).unwrap().count(),
        1
    );
    store.shutdown().await;
}

/// Appends one entry per offset to stream 1 (and one to stream 2) per round, each round its
/// own WAL object, with timestamps 1000, 2000, ... per round.
async fn rounds(a: &Stream, b: &Stream, rounds: i64, per_round: usize) {
    for round in 0..rounds {
        let ts = 1000 * (round + 1);
        let mut hs: Vec<_> = (0..per_round)
            .map(|_| a.append(1, ts, |o| payload(1, o, 40)).unwrap())
            .collect();
        hs.push(b.append(1, ts, |o| payload(2, o, 40)).unwrap());
        for h in hs {
            durable(h).await.unwrap();
        }
    }
}

fn bases(entries: &[StreamRecord]) -> Vec<u64> {
    entries.iter().map(|e| e.base_offset).collect()
}

#[tokio::test]
async fn rewrite_range_keeps_offsets_and_reads_across_gaps() {
    let env = Env::new(config());
    let a = env.store.open(1).await.unwrap();
    let b = env.store.open(2).await.unwrap();
    rounds(&a, &b, 3, 4).await;
    assert_eq!(env.catalog.all_ranges(1).len(), 3);
    let old = read_all(&a, 0).await;
    let keep: Vec<StreamRecord> = old
        .iter()
        .filter(|e| [1, 6].contains(&e.base_offset))
        .cloned()
        .collect();
    // The log cache holds [0, 12): after the rewrite it must not serve the old entries.
    env.store
        .rewrite_range(1, 0, 8, keep.clone())
        .await
        .unwrap();
    let ranges = env.catalog.all_ranges(1);
    assert_eq!(
        ranges
            .iter()
            .map(|l| (l.range.start_offset, l.range.end_offset))
            .collect::<Vec<_>>(),
        vec![(0, 8), (8, 12)]
    );
    assert!(ranges[0].object_key.starts_with("t/obj/"));
    assert_eq!(ranges[0].range.max_timestamp, 2000);
    // Old objects keep stream 2's ranges: nothing died yet.
    assert_eq!(env.catalog.live_objects().len(), 4);
    assert!(env.catalog.dead_objects().is_empty());
    let all = read_all(&a, 0).await;
    assert_eq!(bases(&all), vec![1, 6, 8, 9, 10, 11]);
    assert_eq!(all[0].payload, keep[0].payload);
    // A read inside a gap returns the next entry (Kafka: next batch after a compacted offset).
    assert_eq!(bases(&a.read(2, 1).await.unwrap()), vec![6]);
    assert_eq!(bases(&a.read(7, 1).await.unwrap()), vec![8]);
    assert_eq!(
        bases(&a.read(0, 1 << 20).await.unwrap()),
        vec![1, 6, 8, 9, 10, 11]
    );
    check_entries(&read_all(&b, 0).await, 2, 0, 3, 1);
    assert_eq!(a.find_by_timestamp(1500).await.unwrap(), Some(6));

    // Rejections: misaligned spans, spans past the end, entries outside the span.
    assert!(matches!(
        env.store.rewrite_range(1, 1, 8, vec![]).await,
        Err(StreamError::Catalog(CatalogError::OffsetGap { .. }))
    ));
    assert!(matches!(
        env.store.rewrite_range(1, 0, 9, vec![]).await,
        Err(StreamError::Catalog(CatalogError::OffsetGap { .. }))
    ));
    assert!(matches!(
        env.store.rewrite_range(1, 0, 13, vec![]).await,
        Err(StreamError::OffsetOutOfRange { .. })
    ));
    assert!(
        env.store
            .rewrite_range(1, 8, 12, keep.clone())
            .await
            .is_err()
    );
    assert_eq!(bases(&read_all(&a, 0).await), vec![1, 6, 8, 9, 10, 11]);

    // Small-object compaction keeps the gaps and the range bounds.
    env.store.compact_now().await.unwrap();
    let ranges = env.catalog.all_ranges(1);
    assert_eq!(ranges.len(), 1);
    assert_eq!(
        (ranges[0].range.start_offset, ranges[0].range.end_offset),
        (0, 12)
    );
    assert_eq!(bases(&read_all(&a, 0).await), vec![1, 6, 8, 9, 10, 11]);
    assert_eq!(bases(&a.read(2, 1).await.unwrap()), vec![6]);
    assert_eq!(a.max_timestamp().await.unwrap(), Some((3000, 8)));

    // A span can lose all its entries before later data: reads skip the empty prefix.
    let tail: Vec<StreamRecord> = read_all(&a, 8).await;
    env.store.rewrite_range(1, 0, 12, tail).await.unwrap();
    assert_eq!(bases(&a.read(0, 1).await.unwrap()), vec![8]);
    assert_eq!(bases(&read_all(&a, 3).await), vec![8, 9, 10, 11]);
    // Appends continue after the rewritten data.
    append_n(&a, 2, 1, 40).await;
    assert_eq!(bases(&read_all(&a, 0).await), vec![8, 9, 10, 11, 12, 13]);

    // Fencing: another owner opened the stream; the old handle can no longer rewrite.
    let peer = env.peer(config());
    let a2 = peer.open(1).await.unwrap();
    assert!(matches!(
        env.store.rewrite_range(1, 12, 13, vec![]).await,
        Err(StreamError::Fenced(1))
    ));
    let stale = env.catalog.stream(1).unwrap().epoch - 1;
    let obj = ObjectMeta {
        id: 999,
        key: "x".into(),
        size: 0,
        ranges: vec![],
        committed_at_ms: 0,
    };
    assert!(matches!(
        env.catalog
            .replace_stream_ranges(1, stale, 12, 13, obj)
            .await,
        Err(CatalogError::Fenced { .. })
    ));
    // The new owner can (the two appends above went into one WAL range [12, 14)).
    let last: Vec<StreamRecord> = read_all(&a2, 13).await;
    peer.rewrite_range(1, 12, 14, last).await.unwrap();
    assert_eq!(bases(&read_all(&a2, 12).await), vec![13]);
    peer.shutdown().await;
}

#[tokio::test]
async fn retention_and_dead_objects_after_rewrite() {
    let env = Env::new(config());
    let a = env.store.open(1).await.unwrap();
    let b = env.store.open(2).await.unwrap();
    rounds(&a, &b, 3, 4).await;
    // Everything in [0, 8) compacted away: one empty range keeps the offsets tiled.
    env.store.rewrite_range(1, 0, 8, vec![]).await.unwrap();
    let first = env.catalog.all_ranges(1)[0].clone();
    assert_eq!((first.range.start_offset, first.range.end_offset), (0, 8));
    assert_eq!(first.range.length, 0);
    // It keeps the replaced data's timestamp so time retention can expire it.
    assert_eq!(first.range.max_timestamp, 2000);
    assert_eq!(bases(&a.read(0, 1).await.unwrap()), vec![8]);
    assert_eq!(a.max_timestamp().await.unwrap(), Some((3000, 8)));
    assert_eq!(a.find_by_timestamp(0).await.unwrap(), Some(8));
    // Stream 2 trimmed: the first two WAL objects have no live range left.
    b.trim(3).await.unwrap();
    assert_eq!(env.catalog.dead_objects().len(), 2);
    let moved = env
        .store
        .apply_retention(1, 3500, Some(1000), None)
        .await
        .unwrap();
    assert_eq!(moved, Some(8));
    // The rewritten object died with retention too.
    assert_eq!(env.catalog.dead_objects().len(), 3);
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(env.store.delete_dead_objects_now().await, 3);
    assert!(env.bucket.keys("t/obj").await.unwrap().is_empty());
    assert_eq!(env.bucket.keys("t/wal").await.unwrap().len(), 1);
    check_entries(&read_all(&a, 8).await, 1, 8, 12, 1);
}

#[tokio::test]
async fn rewrite_survives_restart() {
    let env = Env::new(config());
    let a = env.store.open(1).await.unwrap();
    let b = env.store.open(2).await.unwrap();
    rounds(&a, &b, 2, 3).await;
    let keep: Vec<StreamRecord> = read_all(&a, 0)
        .await
        .into_iter()
        .filter(|e| e.base_offset == 2)
        .collect();
    env.store.rewrite_range(1, 0, 3, keep).await.unwrap();
    env.store.shutdown().await;
    let store =
        StreamStore::start_tuned(env.bucket.clone(), env.catalog.clone(), config(), tuning());
    let a = store.open(1).await.unwrap();
    assert_eq!(bases(&read_all(&a, 0).await), vec![2, 3, 4, 5]);
    store.shutdown().await;
}

mod power_loss {
    //! A power cut, modelled: the filesystem keeps only what was fsynced. A recording
    //! [`Syncer`] snapshots a file's bytes when it is synced and a directory's entries when
    //! the directory is synced; the cut then rewrites the tree to exactly those snapshots
    //! (entries never synced in their directory vanish, files never synced lose their data).
    //! Plain `LocalFileSystem` leaves everything unsynced, so only a store that really syncs
    //! what it acknowledges passes.

    use super::*;
    use crate::local::{DurableLocalStore, Syncer};
    use std::collections::{BTreeSet, HashMap};
    use std::ffi::OsString;
    use std::path::{Path as FsPath, PathBuf};

    #[derive(Debug)]
    struct RecordingSyncer {
        /// False: syncs are no-ops (a store that never fsyncs).
        effective: bool,
        files: parking_lot::Mutex<HashMap<PathBuf, Vec<u8>>>,
        dirs: parking_lot::Mutex<HashMap<PathBuf, BTreeSet<OsString>>>,
    }

    impl RecordingSyncer {
        fn new(effective: bool) -> Arc<Self> {
            Arc::new(RecordingSyncer {
                effective,
                files: Default::default(),
                dirs: Default::default(),
            })
        }

        /// Rewrites `dir` to what survives a power cut.
        fn cut(&self, dir: &FsPath) {
            let keep = self.dirs.lock().get(dir).cloned().unwrap_or_default();
            for entry in std::fs::read_dir(dir).unwrap() {
                let entry = entry.unwrap();
                let path = entry.path();
                let is_dir = entry.file_type().unwrap().is_dir();
                if !keep.contains(&entry.file_name()) {
                    if is_dir {
                        std::fs::remove_dir_all(&path).unwrap();
                    } else {
                        std::fs::remove_file(&path).unwrap();
                    }
                } else if is_dir {
                    self.cut(&path);
                } else {
                    let data = self.files.lock().get(&path).cloned().unwrap_or_default();
                    std::fs::write(&path, data).unwrap();
                }
            }
        }
    }

    impl Syncer for RecordingSyncer {
        fn sync_file(&self, path: &FsPath) -> std::io::Result<()> {
            if self.effective {
                let data = std::fs::read(path)?;
                self.files.lock().insert(path.to_path_buf(), data);
            }
            Ok(())
        }
        fn sync_dir(&self, path: &FsPath) -> std::io::Result<()> {
            if self.effective {
                let names = std::fs::read_dir(path)?
                    .map(|e| e.map(|e| e.file_name()))
                    .collect::<Result<_, _>>()?;
                self.dirs.lock().insert(path.to_path_buf(), names);
            }
            Ok(())
        }
    }

    /// Appends (acknowledged) to three streams, compacts, appends more, cuts the power and
    /// restarts on what is left. Returns what each stream reads back.
    async fn acked_appends_then_power_cut(
        syncer: Arc<RecordingSyncer>,
    ) -> Vec<Result<Vec<StreamRecord>, StreamError>> {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("objects");
        std::fs::create_dir(&root).unwrap();
        let catalog = Arc::new(MemoryCatalog::new());
        let mut cfg = config();
        // Reads after the restart must come from the directory, not a cache.
        cfg.log_cache_bytes = 0;
        let bucket = Arc::new(DurableLocalStore::with_syncer(&root, syncer.clone()).unwrap());
        let store = StreamStore::start_tuned(bucket, catalog.clone(), cfg.clone(), tuning());
        let mut streams = Vec::new();
        for id in 1..=3 {
            streams.push(store.open(id).await.unwrap());
        }
        for s in &streams {
            append_n(s, 5, 2, 300).await;
        }
        store.compact_now().await.unwrap();
        for s in &streams {
            append_n(s, 5, 2, 300).await;
        }
        // The catalog (Raft, fsynced) survives; the process and the page cache do not.
        drop(streams);
        drop(store);
        syncer.cut(&root);

        let bucket: Arc<dyn ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&root).unwrap());
        let store = StreamStore::start_tuned(bucket, catalog, cfg, tuning());
        let mut out = Vec::new();
        for id in 1..=3 {
            let s = store.open(id).await.unwrap();
            assert_eq!(s.end_offset(), 20);
            let mut got = Vec::new();
            let mut pos = 0;
            let res = loop {
                if pos >= s.end_offset() {
                    break Ok(got);
                }
                match s.read(pos, 1 << 20).await {
                    Ok(v) if v.is_empty() => break Ok(got),
                    Ok(v) => {
                        pos = v.last().map_or(pos, |e| e.end_offset());
                        got.extend(v);
                    }
                    Err(e) => break Err(e),
                }
            };
            out.push(res);
        }
        store.shutdown().await;
        out
    }

    #[tokio::test]
    async fn every_acknowledged_append_survives_a_power_cut_on_the_durable_local_store() {
        let read = acked_appends_then_power_cut(RecordingSyncer::new(true)).await;
        for (i, r) in read.into_iter().enumerate() {
            let entries = r.unwrap_or_else(|e| panic!("stream {}: {e}", i + 1));
            check_entries(&entries, i as u64 + 1, 0, 20, 2);
        }
    }

    #[tokio::test]
    async fn without_fsync_a_power_cut_loses_acknowledged_appends() {
        // The control: the same run with syncs that do nothing must fail, or the model would
        // not be able to tell durable from non-durable stores apart.
        let read = acked_appends_then_power_cut(RecordingSyncer::new(false)).await;
        assert!(read.iter().all(|r| r.is_err()), "{read:?}");
    }
}

/// Produce-path throughput on this machine's disk, plain `LocalFileSystem` against
/// [`crate::local::DurableLocalStore`]. Run with
/// `cargo test -p shale-stream --release throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints figures"]
async fn produce_throughput_with_and_without_fsync() {
    // BENCH_MIB sets the volume per run (default 256).
    let total: usize = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
        << 20;
    const ENTRY: usize = 64 << 10;
    // (batch interval, batch bytes): the defaults, and small objects (many more fsyncs).
    let shapes = [(50, 8 << 20), (5, 1 << 20)];
    for (interval_ms, batch_bytes, durable) in shapes
        .iter()
        .flat_map(|&(i, b)| [(i, b, false), (i, b, true), (i, b, false), (i, b, true)])
    {
        let dir = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or(".".into())).unwrap();
        let bucket: Arc<dyn ObjectStore> = if durable {
            Arc::new(crate::local::DurableLocalStore::new(dir.path()).unwrap())
        } else {
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap())
        };
        let mut cfg = StreamConfig {
            wal_batch_interval: Duration::from_millis(interval_ms),
            wal_batch_bytes: batch_bytes,
            ..StreamConfig::default()
        };
        cfg.compaction_interval = Duration::ZERO;
        let store = StreamStore::start(bucket, Arc::new(MemoryCatalog::new()), cfg);
        let streams: Vec<_> = futures::future::join_all((0..8).map(|i| store.open(i)))
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        let body = Bytes::from(vec![7u8; ENTRY]);
        let started = std::time::Instant::now();
        let mut pending = std::collections::VecDeque::new();
        for i in 0..total / ENTRY {
            let s = &streams[i % streams.len()];
            let permit = store.reserve(ENTRY).await;
            let h = s.append(1, 0, |_| body.clone()).unwrap();
            pending.push_back(tokio::spawn(async move {
                let r = h.durable.await;
                drop(permit);
                r
            }));
            // Bounded in-flight, like producers with max.in.flight requests.
            if pending.len() >= 512
                && let Some(p) = pending.pop_front()
            {
                p.await.unwrap().unwrap().unwrap();
            }
        }
        for p in pending {
            p.await.unwrap().unwrap().unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        // One producer waiting for each ack: the latency the syncs add to a lone append.
        let mut lat = Vec::new();
        for _ in 0..40 {
            let t = std::time::Instant::now();
            let h = streams[0].append(1, 0, |_| body.slice(..1024)).unwrap();
            h.durable.await.unwrap().unwrap();
            lat.push(t.elapsed());
        }
        lat.sort();
        println!(
            "batch {interval_ms} ms / {} MiB, {}: {} MiB in {secs:.2} s = {:.1} MiB/s; lone 1 KiB append ack p50 {:?} max {:?}",
            batch_bytes >> 20,
            if durable {
                "DurableLocalStore (fsync)"
            } else {
                "LocalFileSystem (no fsync)"
            },
            total >> 20,
            (total >> 20) as f64 / secs,
            lat[lat.len() / 2],
            lat[lat.len() - 1]
        );
        store.shutdown().await;
    }
}

mod append_many {
    use super::*;

    fn entries(
        stream: u64,
        n: usize,
        count: u32,
        len: usize,
    ) -> Vec<AppendEntry<impl FnOnce(u64) -> Bytes>> {
        (0..n)
            .map(|_| AppendEntry {
                count,
                max_timestamp: 5,
                build: move |base| payload(stream, base, len),
            })
            .collect()
    }

    async fn settle(h: AppendBatchHandle) -> Result<(), StreamError> {
        timeout(Duration::from_secs(10), h.durable)
            .await
            .expect("append_many never resolved")
            .expect("durable sender dropped")
    }

    #[tokio::test]
    async fn entries_get_contiguous_offsets_and_become_durable_together() {
        let env = Env::new(config());
        let s = env.store.open(1).await.unwrap();
        append_n(&s, 1, 1, 10).await;
        let permit = env.store.reserve(1000).await;
        let h = s.append_many(entries(1, 4, 3, 50), permit).unwrap();
        assert_eq!((h.base_offset, h.next_offset), (1, 13));
        settle(h).await.unwrap();
        assert_eq!(s.end_offset(), 13);
        let got = read_all(&s, 1).await;
        check_entries(&got, 1, 1, 13, 3);
    }

    #[tokio::test]
    async fn concurrent_calls_never_interleave_their_entries() {
        let env = Env::new(config());
        let s = env.store.open(1).await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let s = s.clone();
            let store = env.store.clone();
            tasks.push(tokio::spawn(async move {
                let mut spans = Vec::new();
                for _ in 0..10 {
                    let permit = store.reserve(100).await;
                    let h = s.append_many(entries(1, 5, 1, 20), permit).unwrap();
                    spans.push((h.base_offset, h.next_offset));
                    settle(h).await.unwrap();
                }
                spans
            }));
        }
        let mut spans = Vec::new();
        for t in tasks {
            spans.extend(t.await.unwrap());
        }
        spans.sort();
        // Every call owns a block of exactly its 5 offsets, and the blocks tile the stream.
        let mut expected = 0;
        for (base, next) in spans {
            assert_eq!((base, next), (expected, expected + 5));
            expected = next;
        }
        assert_eq!(s.end_offset(), 400);
    }

    #[tokio::test]
    async fn a_fenced_handle_appends_none_of_the_entries() {
        let env = Env::new(config());
        let s = env.store.open(1).await.unwrap();
        let peer = env.peer(config());
        let _s2 = peer.open(1).await.unwrap();
        // The catalog fenced us; the failed commit makes it local knowledge.
        let h = s.append(1, 0, |b| payload(1, b, 10)).unwrap();
        assert!(durable(h).await.is_err());
        let permit = env.store.reserve(100).await;
        let r = s.append_many(entries(1, 3, 1, 10), permit);
        assert!(matches!(r, Err(StreamError::Fenced(1))));
        assert_eq!(s.next_offset(), 1);
    }

    #[tokio::test]
    async fn an_oversized_entry_fails_the_whole_call_and_appends_nothing() {
        let env = Env::new(config());
        let s = env.store.open(1).await.unwrap();
        let big = object::MAX_ENTRY_PAYLOAD + 1;
        let list = vec![
            AppendEntry {
                count: 1,
                max_timestamp: 0,
                build: Box::new(|b| payload(1, b, 10)) as Box<dyn FnOnce(u64) -> Bytes>,
            },
            AppendEntry {
                count: 1,
                max_timestamp: 0,
                build: Box::new(move |b| payload(1, b, big)),
            },
        ];
        let permit = env.store.reserve(100).await;
        assert!(s.append_many(list, permit).is_err());
        assert_eq!(s.next_offset(), 0);
        assert!(s.is_writable());
    }

    /// A store whose whole pending budget is 64 KiB, so one held permit blocks the next.
    fn small_budget() -> StreamConfig {
        StreamConfig {
            wal_max_pending_bytes: 64 << 10,
            ..config()
        }
    }

    #[tokio::test]
    async fn the_permit_is_held_by_the_wal_until_the_entries_are_durable() {
        let env = Env::new(small_budget());
        let s = env.store.open(1).await.unwrap();
        env.bucket.inject(
            Rule::new(Fault::Latency(Duration::from_millis(400)))
                .op(Op::Put)
                .times(1),
        );
        let permit = env.store.reserve(64 << 10).await;
        let h = s.append_many(entries(1, 2, 1, 100), permit).unwrap();
        // The caller gives up waiting; the WAL still holds the memory.
        drop(h);
        let next = env.store.reserve(1024);
        tokio::pin!(next);
        assert!(
            timeout(Duration::from_millis(200), &mut next)
                .await
                .is_err()
        );
        timeout(Duration::from_secs(5), next).await.unwrap();
        assert_eq!(s.end_offset(), 2);
    }

    #[tokio::test]
    async fn a_split_permit_releases_each_share_with_its_own_entries() {
        let env = Env::new(small_budget());
        let a = env.store.open(1).await.unwrap();
        let b = env.store.open(2).await.unwrap();
        let mut whole = env.store.reserve(64 << 10).await;
        let share = whole.split(32 << 10);
        assert_eq!((share.bytes(), whole.bytes()), (32 << 10, 32 << 10));
        settle(a.append_many(entries(1, 1, 1, 10), share).unwrap())
            .await
            .unwrap();
        // Stream 1's share is back while the rest is still held.
        let half = timeout(Duration::from_millis(300), env.store.reserve(32 << 10))
            .await
            .expect("stream 1's share was not released");
        drop(half);
        let all = env.store.reserve(64 << 10);
        tokio::pin!(all);
        assert!(timeout(Duration::from_millis(100), &mut all).await.is_err());
        settle(b.append_many(entries(2, 1, 1, 10), whole).unwrap())
            .await
            .unwrap();
        timeout(Duration::from_secs(1), all).await.unwrap();
    }

    #[tokio::test]
    async fn the_permit_is_released_when_the_entries_fail() {
        let env = Env::new(small_budget());
        let s = env.store.open(1).await.unwrap();
        let outage = env.bucket.inject(Rule::new(Fault::SlowDown).op(Op::Put));
        let permit = env.store.reserve(64 << 10).await;
        let h = s.append_many(entries(1, 2, 1, 100), permit).unwrap();
        assert!(matches!(settle(h).await, Err(StreamError::ObjectStore(_))));
        timeout(Duration::from_secs(1), env.store.reserve(1024))
            .await
            .unwrap();
        env.bucket.remove(outage);
    }
}

mod log_cache_bounds {
    use super::*;

    #[tokio::test]
    async fn the_log_cache_charges_per_entry_overhead_not_only_payload_bytes() {
        let env = Env::new(config());
        let s = env.store.open(1).await.unwrap();
        append_n(&s, 100, 1, 1).await;
        let per_entry = std::mem::size_of::<StreamRecord>();
        // Payloads are tiny ("s1-o0-" and so on): the overhead dominates.
        assert!(env.store.stats().log_cache_bytes >= 100 * per_entry);
    }

    #[tokio::test]
    async fn a_flood_of_tiny_entries_stays_within_the_log_cache_budget() {
        let mut cfg = config();
        cfg.log_cache_bytes = 10_000;
        let env = Env::new(cfg);
        let s = env.store.open(1).await.unwrap();
        for _ in 0..10 {
            append_n(&s, 200, 1, 1).await;
        }
        assert!(
            env.store.stats().log_cache_bytes <= 10_000,
            "{}",
            env.store.stats().log_cache_bytes
        );
        // Still served: the evicted head comes from objects.
        assert_eq!(read_all(&s, 0).await.len(), 2000);
    }

    #[tokio::test]
    async fn a_handle_fenced_by_a_failed_wal_object_frees_its_cached_entries() {
        let env = Env::new(config());
        let s = env.store.open(1).await.unwrap();
        append_n(&s, 5, 1, 100).await;
        env.bucket.inject(Rule::new(Fault::Error).op(Op::Put));
        let h = s.append(1, 0, |b| payload(1, b, 100)).unwrap();
        assert!(durable(h).await.is_err());
        assert!(!s.is_writable());
        assert_eq!(env.store.stats().log_cache_bytes, 0);
    }

    #[tokio::test]
    async fn a_handle_fenced_by_a_newer_owner_frees_its_cached_entries() {
        let env = Env::new(config());
        let s = env.store.open(1).await.unwrap();
        append_n(&s, 5, 1, 100).await;
        let peer = env.peer(config());
        let _theirs = peer.open(1).await.unwrap();
        let h = s.append(1, 0, |b| payload(1, b, 100)).unwrap();
        assert!(matches!(durable(h).await, Err(StreamError::Fenced(1))));
        assert_eq!(env.store.stats().log_cache_bytes, 0);
    }
}

mod hygiene {
    use super::*;
    use object_store::ObjectStoreExt;

    fn clustered() -> StreamConfig {
        StreamConfig {
            cluster_id: "c1".into(),
            ..config()
        }
    }

    async fn corrupt(bucket: &FaultyStore, key: &str) {
        let path = Path::from(key);
        let data = bucket
            .inner()
            .get(&path)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let mut bad = data.to_vec();
        bad[30] ^= 0xff;
        bucket
            .inner()
            .put(&path, Bytes::from(bad).into())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn object_keys_carry_the_cluster_id() {
        let env = Env::new(clustered());
        let s = env.store.open(1).await.unwrap();
        append_n(&s, 2, 1, 10).await;
        append_n(&s, 2, 1, 10).await;
        env.store.compact_now().await.unwrap();
        for o in env.catalog.live_objects() {
            assert!(o.key.starts_with("t/c1/"), "{}", o.key);
        }
        assert_eq!(env.bucket.keys("t/c1/obj").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn every_new_object_is_put_exclusively() {
        let env = Env::new(clustered());
        let s = env.store.open(1).await.unwrap();
        // The WAL's next object id is 1: someone else's object already sits there.
        let foreign = Path::from("t/c1/wal/1/00000000000000000001");
        env.bucket
            .inner()
            .put(&foreign, Bytes::from_static(b"not ours").into())
            .await
            .unwrap();
        let h = s.append(1, 0, |b| payload(1, b, 10)).unwrap();
        assert!(matches!(durable(h).await, Err(StreamError::ObjectStore(_))));
        let kept = env.bucket.inner().get(&foreign).await.unwrap();
        assert_eq!(kept.bytes().await.unwrap(), Bytes::from_static(b"not ours"));
    }

    #[tokio::test]
    async fn an_ambiguous_wal_put_is_acknowledged_once_its_retry_finds_it_landed() {
        let env = Env::new(clustered());
        let s = env.store.open(1).await.unwrap();
        env.bucket
            .inject(Rule::new(Fault::Ambiguous).op(Op::Put).times(1));
        append_n(&s, 3, 1, 10).await;
        assert_eq!(s.end_offset(), 3);
        assert_eq!(env.bucket.keys("t/c1/wal").await.unwrap().len(), 1);
        check_entries(&read_all(&s, 0).await, 1, 0, 3, 1);
    }

    /// Appends whose every PUT attempt lands but reports failure: the appends fail and
    /// leave one orphan object behind.
    async fn leave_an_orphan(env: &Env) {
        let s = env.store.open(1).await.unwrap();
        append_n(&s, 2, 1, 10).await;
        let rule = env
            .bucket
            .inject(Rule::new(Fault::Ambiguous).op(Op::Put).prefix("t/c1/wal/"));
        let h = s.append(1, 0, |b| payload(1, b, 10)).unwrap();
        assert!(durable(h).await.is_err());
        env.bucket.remove(rule);
        assert_eq!(env.bucket.keys("t/c1/wal").await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn garbage_collection_deletes_orphans_of_ambiguous_puts_and_keeps_committed_objects() {
        let env = Env::new(clustered());
        leave_an_orphan(&env).await;
        let r = env.store.collect_garbage_now().await.unwrap();
        assert_eq!((r.listed, r.referenced, r.deleted), (2, 1, 1));
        assert_eq!(env.bucket.keys("t/c1/wal").await.unwrap().len(), 1);
        assert_eq!(env.store.stats().orphans_deleted, 1);
        let s = env.store.open(1).await.unwrap();
        check_entries(&read_all(&s, 0).await, 1, 0, 2, 1);
    }

    #[tokio::test]
    async fn garbage_collection_deletes_the_object_of_a_compaction_that_never_swapped_in() {
        let env = Env::new(clustered());
        let s = env.store.open(1).await.unwrap();
        append_n(&s, 2, 1, 10).await;
        // As left by a node that crashed between the merged object's PUT and the swap.
        let merged = Path::from("t/c1/obj/00000000000000000099");
        env.bucket
            .inner()
            .put(&merged, Bytes::from_static(b"merged").into())
            .await
            .unwrap();
        let r = env.store.collect_garbage_now().await.unwrap();
        assert_eq!(r.deleted, 1);
        assert!(env.bucket.inner().head(&merged).await.is_err());
    }

    #[tokio::test]
    async fn an_attachment_is_replaced_kept_by_gc_while_its_stream_lives_then_collected() {
        let env = Env::new(clustered());
        let s = env.store.open(1).await.unwrap();
        append_n(&s, 1, 1, 10).await;
        assert_eq!(s.get_attachment("state").await.unwrap(), None);
        s.put_attachment("state", Bytes::from_static(b"one"))
            .await
            .unwrap();
        s.put_attachment("state", Bytes::from_static(b"two"))
            .await
            .unwrap();
        assert_eq!(
            s.get_attachment("state").await.unwrap().as_deref(),
            Some(&b"two"[..])
        );
        let r = env.store.collect_garbage_now().await.unwrap();
        assert_eq!(r.deleted, 0, "{r:?}");
        env.catalog.delete_stream(1).await.unwrap();
        let _ = env.store.collect_garbage_now().await.unwrap();
        assert!(env.bucket.keys("t/c1/attach").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn garbage_collection_keeps_orphans_younger_than_the_horizon() {
        let env = Env::new(StreamConfig {
            gc_min_age: Duration::from_secs(3600),
            ..clustered()
        });
        leave_an_orphan(&env).await;
        let r = env.store.collect_garbage_now().await.unwrap();
        assert_eq!((r.too_young, r.deleted), (1, 0));
    }

    #[tokio::test]
    async fn garbage_collection_keeps_dead_objects_awaiting_their_grace() {
        let env = Env::new(StreamConfig {
            object_delete_grace: Duration::from_secs(3600),
            ..clustered()
        });
        let s = env.store.open(1).await.unwrap();
        append_n(&s, 2, 1, 10).await;
        append_n(&s, 2, 1, 10).await;
        env.store.compact_now().await.unwrap();
        assert_eq!(env.catalog.dead_objects().len(), 2);
        let r = env.store.collect_garbage_now().await.unwrap();
        assert_eq!((r.referenced, r.deleted), (3, 0));
    }

    #[tokio::test]
    async fn garbage_collection_never_touches_another_clusters_objects() {
        let env = Env::new(clustered());
        let other = Path::from("t/c0/wal/1/00000000000000000001");
        env.bucket
            .inner()
            .put(&other, Bytes::from_static(b"x").into())
            .await
            .unwrap();
        let r = env.store.collect_garbage_now().await.unwrap();
        assert_eq!(r.deleted, 0);
        assert!(env.bucket.inner().head(&other).await.is_ok());
    }

    #[tokio::test]
    async fn garbage_collection_without_a_cluster_id_deletes_nothing() {
        let env = Env::new(config());
        env.bucket
            .inner()
            .put(&Path::from("t/stray"), Bytes::from_static(b"x").into())
            .await
            .unwrap();
        let r = env.store.collect_garbage_now().await.unwrap();
        assert_eq!(r, GcReport::default());
        assert!(
            env.bucket
                .inner()
                .head(&Path::from("t/stray"))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn garbage_collection_fails_cleanly_during_an_outage() {
        let env = Env::new(clustered());
        leave_an_orphan(&env).await;
        env.bucket.set_outage(true);
        assert!(env.store.collect_garbage_now().await.is_err());
        env.bucket.set_outage(false);
        assert_eq!(env.store.collect_garbage_now().await.unwrap().deleted, 1);
    }

    #[tokio::test]
    async fn a_corrupt_object_is_quarantined_and_compaction_merges_the_others() {
        let env = Env::new(clustered());
        let s = env.store.open(1).await.unwrap();
        for _ in 0..4 {
            append_n(&s, 2, 1, 100).await;
        }
        let mut objects = env.catalog.live_objects();
        objects.sort_by_key(|o| o.id);
        assert_eq!(objects.len(), 4);
        corrupt(&env.bucket, &objects[1].key).await;
        env.store.compact_now().await.unwrap();
        assert_eq!(env.store.stats().quarantined_objects, 1);
        let live: Vec<ObjectId> = env.catalog.live_objects().iter().map(|o| o.id).collect();
        // The corrupt object stays as it is; the three others became one.
        assert_eq!(live.len(), 2);
        assert!(live.contains(&objects[1].id));
        // Later passes do not trip over it again.
        env.store.compact_now().await.unwrap();
        assert_eq!(env.catalog.live_objects().len(), 2);
    }

    #[tokio::test]
    async fn a_committed_object_missing_from_the_bucket_is_quarantined_too() {
        let env = Env::new(clustered());
        let s = env.store.open(1).await.unwrap();
        for _ in 0..3 {
            append_n(&s, 2, 1, 100).await;
        }
        let mut objects = env.catalog.live_objects();
        objects.sort_by_key(|o| o.id);
        env.bucket
            .inner()
            .delete(&Path::from(objects[0].key.as_str()))
            .await
            .unwrap();
        env.store.compact_now().await.unwrap();
        assert_eq!(env.store.stats().quarantined_objects, 1);
        assert_eq!(env.catalog.live_objects().len(), 2);
    }

    /// moto (a real S3 implementation) honours `If-None-Match: *` the way the WAL relies on.
    #[test]
    fn a_second_exclusive_put_on_the_same_key_fails_with_already_exists_on_s3() {
        if !shale_testkit::s3_server_available() {
            eprintln!("skipped: moto_server not installed (scripts/install-test-deps.sh)");
            return;
        }
        let s3 = shale_testkit::S3Server::start().unwrap();
        let bucket = s3.create_bucket("hygiene").unwrap();
        let store = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&bucket)
            .with_region("us-east-1")
            .with_endpoint(s3.endpoint())
            .with_allow_http(true)
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let path = Path::from("c1/wal/1/00000000000000000001");
            let create = || PutOptions::from(object_store::PutMode::Create);
            store
                .put_opts(&path, Bytes::from_static(b"first").into(), create())
                .await
                .unwrap();
            let second = store
                .put_opts(&path, Bytes::from_static(b"second").into(), create())
                .await;
            assert!(
                matches!(second, Err(object_store::Error::AlreadyExists { .. })),
                "{second:?}"
            );
            let kept = store.get(&path).await.unwrap().bytes().await.unwrap();
            assert_eq!(kept, Bytes::from_static(b"first"));
        });
    }
}

mod crash_snapshot {
    //! Durability against the real kernel: a fresh ext4 on a loop device (journal commits
    //! only on fsync: `commit=600`), the workload, then a copy of the device image taken
    //! while the filesystem is still mounted. The copy holds exactly what reached the device
    //! (fsynced data, and whatever writeback happened, which within seconds is nothing), like
    //! a disk after a power cut. The copy is mounted (the journal replays) and read back.
    //! Needs root and loop devices; skipped otherwise.

    use super::*;
    use std::path::{Path as FsPath, PathBuf};
    use std::process::Command;

    fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
        let out = Command::new(cmd)
            .args(args)
            .output()
            .map_err(|e| format!("{cmd}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{cmd} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// A mounted loop filesystem, unmounted on drop (also on a failing assertion).
    struct Mount(PathBuf);

    impl Mount {
        fn new(image: &FsPath, dir: &FsPath, fresh: bool) -> Result<Mount, String> {
            let img = image.to_str().ok_or("path")?;
            if fresh {
                run("truncate", &["-s", "128M", img])?;
                run("mkfs.ext4", &["-q", "-F", img])?;
            }
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            let d = dir.to_str().ok_or("path")?;
            run("mount", &["-o", "loop,commit=600", img, d])?;
            Ok(Mount(dir.to_path_buf()))
        }
    }

    impl Drop for Mount {
        fn drop(&mut self) {
            if let Some(d) = self.0.to_str() {
                let _ = run("umount", &[d]);
            }
        }
    }

    /// Runs the workload on `mnt/objects`; returns what each stream reads back from the
    /// crash image. None when loop mounts are not possible here.
    async fn acked_appends_then_crash_image(
        durable: bool,
    ) -> Option<Vec<Result<Vec<StreamRecord>, StreamError>>> {
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("disk.img");
        let mount = match Mount::new(&image, &tmp.path().join("mnt"), true) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("skipped: cannot loop-mount an ext4 image ({e})");
                return None;
            }
        };
        let root = mount.0.join("objects");
        std::fs::create_dir(&root).unwrap();
        // The directory itself is durable for both stores: only object syncs differ.
        run("sync", &["-f", root.to_str().unwrap()]).unwrap();

        let catalog = Arc::new(MemoryCatalog::new());
        let mut cfg = config();
        cfg.log_cache_bytes = 0;
        let bucket: Arc<dyn ObjectStore> = if durable {
            Arc::new(crate::local::DurableLocalStore::new(&root).unwrap())
        } else {
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&root).unwrap())
        };
        let store = StreamStore::start_tuned(bucket, catalog.clone(), cfg.clone(), tuning());
        let mut streams = Vec::new();
        for id in 1..=3 {
            streams.push(store.open(id).await.unwrap());
        }
        for s in &streams {
            append_n(s, 5, 2, 3000).await;
        }
        store.compact_now().await.unwrap();
        for s in &streams {
            append_n(s, 5, 2, 3000).await;
        }
        drop(streams);
        drop(store);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The power cut: what the device holds right now.
        let crashed = tmp.path().join("crashed.img");
        std::fs::copy(&image, &crashed).unwrap();
        drop(mount);

        let after = Mount::new(&crashed, &tmp.path().join("after"), false).unwrap();
        let root = after.0.join("objects");
        let bucket: Arc<dyn ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&root).unwrap());
        let store = StreamStore::start_tuned(bucket, catalog, cfg, tuning());
        let mut out = Vec::new();
        for id in 1..=3 {
            let s = store.open(id).await.unwrap();
            let mut got = Vec::new();
            let mut pos = 0;
            let res = loop {
                if pos >= s.end_offset() {
                    break Ok(got);
                }
                match s.read(pos, 1 << 20).await {
                    Ok(v) if v.is_empty() => break Ok(got),
                    Ok(v) => {
                        pos = v.last().map_or(pos, |e| e.end_offset());
                        got.extend(v);
                    }
                    Err(e) => break Err(e),
                }
            };
            out.push(res);
        }
        store.shutdown().await;
        drop(after);
        Some(out)
    }

    #[tokio::test]
    async fn every_acknowledged_append_is_in_the_crash_image_of_a_durable_local_store() {
        let Some(read) = acked_appends_then_crash_image(true).await else {
            return;
        };
        for (i, r) in read.into_iter().enumerate() {
            let entries = r.unwrap_or_else(|e| panic!("stream {}: {e}", i + 1));
            check_entries(&entries, i as u64 + 1, 0, 20, 2);
        }
    }

    #[tokio::test]
    async fn the_crash_image_of_a_plain_local_filesystem_misses_acknowledged_appends() {
        // The control: without fsync the image must lose data, or the harness proves nothing.
        let Some(read) = acked_appends_then_crash_image(false).await else {
            return;
        };
        assert!(read.iter().any(|r| r.is_err()), "{read:?}");
    }
}

mod outages {
    use super::*;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn a_bucket_outage_shorter_than_the_wal_deadline_delays_appends_but_loses_none() {
        let env = Env::new(config());
        let s = env.store.open(1).await.unwrap();
        env.bucket.set_outage(true);
        let handles: Vec<_> = (0..5)
            .map(|_| s.append(1, 0, |b| payload(1, b, 50)).unwrap())
            .collect();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(s.end_offset(), 0);
        env.bucket.set_outage(false);
        for h in handles {
            durable(h).await.unwrap();
        }
        check_entries(&read_all(&s, 0).await, 1, 0, 5, 1);
        assert!(
            env.bucket
                .injected(shale_testkit::faulty::FaultKind::SlowDown)
                > 0
        );
    }

    /// Seeded chaos on every bucket operation: whatever was acknowledged reads back, every
    /// object the catalog references exists, and garbage collection removes exactly the
    /// objects nothing references.
    async fn chaos(seed: u64) {
        let bucket = FaultyStore::in_memory(seed);
        let catalog = Arc::new(MemoryCatalog::new());
        let cfg = StreamConfig {
            cluster_id: "c1".into(),
            log_cache_bytes: 0,
            ..config()
        };
        let store = StreamStore::start_tuned(bucket.clone(), catalog.clone(), cfg, tuning());
        bucket.inject(Rule::new(Fault::Ambiguous).op(Op::Put).probability(0.15));
        bucket.inject(Rule::new(Fault::SlowDown).op(Op::Put).probability(0.15));
        bucket.inject(
            Rule::new(Fault::Latency(Duration::from_millis(15)))
                .op(Op::Put)
                .probability(0.3),
        );
        let mut acked: Vec<(u64, u64)> = Vec::new();
        for round in 0..12 {
            // Now and then a PUT lands unacknowledged and the bucket then stays down past
            // the WAL deadline: the appends fail and leave an orphan.
            let down = (round % 5 == 2).then(|| {
                bucket.inject(Rule::new(Fault::Ambiguous).op(Op::Put).times(1));
                bucket.inject(Rule::new(Fault::Error).op(Op::Put))
            });
            for id in 1..=3u64 {
                let s = store.open(id).await.unwrap();
                let h = s.append(1, round, |b| payload(id, b, 40)).unwrap();
                let base = h.base_offset;
                if durable(h).await.is_ok() {
                    acked.push((id, base));
                }
            }
            if let Some(rule) = down {
                bucket.remove(rule);
            }
            if round % 4 == 3 {
                let _ = store.compact_now().await;
            }
        }
        bucket.clear();
        store.delete_dead_objects_now().await;
        for (id, base) in &acked {
            let s = store.open(*id).await.unwrap();
            let got = s.read(*base, 1).await.unwrap();
            assert!(
                got.first()
                    .is_some_and(|e| e.payload.starts_with(format!("s{id}-o{base}-").as_bytes())),
                "seed {seed}: acknowledged entry {id}@{base} lost"
            );
        }
        let referenced: std::collections::HashSet<String> = catalog
            .live_objects()
            .into_iter()
            .map(|o| o.key)
            .chain(catalog.dead_objects().into_iter().map(|(o, _)| o.key))
            .collect();
        for key in &referenced {
            assert!(
                bucket.inner().head(&Path::from(key.as_str())).await.is_ok(),
                "seed {seed}: referenced object {key} missing"
            );
        }
        let gc = store.collect_garbage_now().await.unwrap();
        eprintln!("seed {seed}: {} acked, {gc:?}", acked.len());
        // The run must have exercised the faults it is about.
        assert!(gc.deleted > 0, "seed {seed}: no orphan was left");
        let left: std::collections::HashSet<String> =
            bucket.keys("t/c1").await.unwrap().into_iter().collect();
        assert_eq!(left, referenced, "seed {seed}");
        store.shutdown().await;
    }

    #[tokio::test]
    async fn under_seeded_put_chaos_acknowledged_data_survives_and_gc_leaves_only_referenced_objects()
     {
        for seed in [1, 2, 3] {
            chaos(seed).await;
        }
    }
}

mod exclusive_put {
    use super::*;
    use crate::util::{Backoff, put_new};
    use object_store::ObjectStoreExt;

    fn backoff() -> Backoff {
        Backoff::new(&tuning(), Duration::from_millis(200))
    }

    #[tokio::test]
    async fn already_exists_on_a_retry_counts_as_the_earlier_attempt_having_landed() {
        let bucket = FaultyStore::in_memory(1);
        bucket.inject(Rule::new(Fault::Ambiguous).op(Op::Put).times(1));
        let data = Bytes::from_static(b"wal object");
        put_new(bucket.as_ref(), "k", &data, &mut backoff())
            .await
            .unwrap();
        assert_eq!(bucket.calls(Op::Put), 2);
        // Trusted without reading it back.
        assert_eq!(bucket.calls(Op::Get), 0);
    }

    #[tokio::test]
    async fn already_exists_on_the_first_attempt_is_ours_only_if_the_bytes_match() {
        let bucket = FaultyStore::in_memory(1);
        let data = Bytes::from_static(b"wal object");
        let path = Path::from("k");
        // As after an internal retry of the S3 client whose first try landed.
        bucket
            .inner()
            .put(&path, data.clone().into())
            .await
            .unwrap();
        put_new(bucket.as_ref(), "k", &data, &mut backoff())
            .await
            .unwrap();
        let other = Bytes::from_static(b"another object");
        let r = put_new(bucket.as_ref(), "k", &other, &mut backoff()).await;
        assert!(matches!(r, Err(StreamError::ObjectStore(_))));
        let kept = bucket
            .inner()
            .get(&path)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(kept, data);
    }
}

#[tokio::test]
async fn a_handle_takes_no_appends_once_the_wal_is_shut_down_though_it_is_still_writable() {
    let env = Env::new(config());
    let s = env.store.open(1).await.unwrap();
    assert!(s.accepts_appends());
    // What a shutdown does first; it closes the handles only after the WAL has drained.
    env.store.inner.wal.close();
    assert!(s.is_writable());
    assert!(!s.accepts_appends(), "an append would be refused now");
    assert!(matches!(
        s.append(1, 0, |b| payload(1, b, 10)),
        Err(StreamError::ShuttingDown)
    ));
    env.store.shutdown().await;
}
