//! Micro-benchmarks of the hot paths: the stream layer's object format (WAL object encoding,
//! index decode and range lookup, block decode), the append path and tailing reads from the
//! log cache.

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shale_stream::memory::MemoryCatalog;
use shale_stream::object;
use shale_stream::{StreamConfig, StreamRecord, StreamStore};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

const STREAMS: u64 = 8;
const ENTRIES: usize = 1000;
const ENTRY_BYTES: usize = 1024;

/// 1000 entries of 1 KiB spread over 8 streams, as one WAL flush would see them.
fn wal_batch() -> Vec<(u64, Vec<StreamRecord>)> {
    (0..STREAMS)
        .map(|s| {
            let per = ENTRIES / STREAMS as usize;
            let records = (0..per)
                .map(|i| StreamRecord {
                    base_offset: (i * 10) as u64,
                    count: 10,
                    max_timestamp: 1_700_000_000_000 + i as i64,
                    payload: Bytes::from(vec![(i % 251) as u8; ENTRY_BYTES]),
                })
                .collect();
            (s, records)
        })
        .collect()
}

fn object_format(c: &mut Criterion) {
    let batch = wal_batch();
    let input: Vec<(u64, &[StreamRecord])> =
        batch.iter().map(|(s, r)| (*s, r.as_slice())).collect();
    let (obj, ranges) = object::encode(&input);

    let mut g = c.benchmark_group("object");
    g.throughput(Throughput::Bytes(obj.len() as u64));
    g.bench_function("encode_1000x1KiB_8_streams", |b| {
        b.iter(|| object::encode(black_box(&input)))
    });
    g.finish();

    let mut g = c.benchmark_group("object");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_index_and_lookup", |b| {
        b.iter(|| {
            let index = object::decode_index(black_box(&obj)).expect("index");
            object::find_range(&index, 5, 600).map(|r| r.position)
        })
    });
    g.bench_function("find_range_in_decoded_index", |b| {
        b.iter(|| object::find_range(black_box(&ranges), black_box(5), black_box(600)).is_some())
    });
    g.finish();

    let r = &ranges[3];
    let block = obj.slice(r.position as usize..(r.position + u64::from(r.length)) as usize);
    let mut g = c.benchmark_group("object");
    g.throughput(Throughput::Bytes(u64::from(r.length)));
    g.bench_function("decode_block_125x1KiB", |b| {
        b.iter(|| object::decode_block(black_box(block.clone()), r).expect("block"))
    });
    g.finish();
}

fn stream_paths(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let bucket = Arc::new(object_store::memory::InMemory::new());
    let catalog = Arc::new(MemoryCatalog::new());
    let store = rt.block_on(async {
        StreamStore::start(
            bucket,
            catalog,
            StreamConfig {
                wal_batch_interval: Duration::from_millis(5),
                log_cache_bytes: 64 << 20,
                ..StreamConfig::default()
            },
        )
    });
    let stream = rt.block_on(store.open(1)).expect("open");
    let payload = Bytes::from(vec![7u8; ENTRY_BYTES]);

    let mut g = c.benchmark_group("stream");
    g.throughput(Throughput::Elements(1));
    // Offset assignment + WAL buffer + log cache; durability is awaited outside the loop.
    g.bench_function("append_1KiB", |b| {
        b.iter_custom(|iters| {
            let mut handles = Vec::with_capacity(iters as usize);
            let start = std::time::Instant::now();
            for _ in 0..iters {
                let p = payload.clone();
                handles.push(stream.append(1, 0, move |_| p).expect("append"));
            }
            let elapsed = start.elapsed();
            rt.block_on(async {
                for h in handles {
                    h.durable.await.expect("sender").expect("durable");
                }
            });
            elapsed
        })
    });
    g.finish();

    // Tailing read: the last 64 entries, served from the log cache.
    let end = stream.end_offset();
    let mut g = c.benchmark_group("stream");
    g.throughput(Throughput::Bytes((64 * ENTRY_BYTES) as u64));
    g.bench_function("tail_read_64x1KiB_log_cache", |b| {
        b.iter(|| {
            rt.block_on(stream.read(end - 64, 64 * ENTRY_BYTES))
                .expect("read")
                .len()
        })
    });
    g.finish();
    rt.block_on(store.shutdown());
}

// --- batch header patching (shale-protocol) ---

criterion_group!(benches, object_format, stream_paths);
criterion_main!(benches);
