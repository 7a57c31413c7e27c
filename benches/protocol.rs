//! Hot paths of the Kafka front end: validating a produce request's batches and patching
//! their headers (no decompression), per batch and per MiB.

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use shale_protocol::batch;
use std::hint::black_box;

/// One batch of `n` records of `size` bytes, as a producer would send it.
fn batch_of(n: usize, size: usize, compression: Compression) -> BytesMut {
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32,
            timestamp: 1_700_000_000_000 + i as i64,
            key: None,
            value: Some(bytes::Bytes::from(vec![(i % 251) as u8; size])),
            headers: Default::default(),
            delete_horizon: false,
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("encode");
    buf
}

fn produce_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("produce_batch");
    // 16 records of 1 KiB: a typical librdkafka batch at high load.
    for (name, compression) in [("none", Compression::None), ("lz4", Compression::Lz4)] {
        let b = batch_of(16, 1024, compression);
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_function(format!("validate_and_patch/{name}"), |bench| {
            let mut buf = b.clone();
            let mut offset = 0i64;
            bench.iter(|| {
                let batches = batch::validate_batches(black_box(&buf)).expect("valid");
                for (h, range) in batches {
                    batch::patch_offsets(&mut buf[range], offset, 3);
                    offset += i64::from(h.offset_count());
                }
            })
        });
    }
    let b = batch_of(16, 1024, Compression::None);
    g.throughput(Throughput::Bytes(b.len() as u64));
    g.bench_function("patch_only", |bench| {
        let mut buf = b.clone();
        let mut offset = 0i64;
        bench.iter(|| {
            batch::patch_offsets(black_box(&mut buf), offset, 3);
            offset += 16;
        })
    });
    g.bench_function("log_append_time", |bench| {
        let mut buf = b.clone();
        bench.iter(|| batch::set_log_append_time(black_box(&mut buf), 1_700_000_000_000))
    });
    g.finish();
}

criterion_group!(benches, produce_path);
criterion_main!(benches);
