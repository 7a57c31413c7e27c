//! Topic rules applied on produce, and the bounds of a fetch response, as Kafka applies them:
//! `compression.type` recompresses, `message.timestamp.*` refuses out-of-range records, a
//! partition's batches are all or nothing, `fetch.max.bytes` caps what any fetch returns.

mod common;

use bytes::{Bytes, BytesMut};
use common::{call, create_topic_with as create, name, now_ms};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use shale_broker::{Broker, BrokerConfig};
use std::sync::Arc;
use tokio::net::TcpStream;

async fn broker(dir: &std::path::Path, fetch_max_bytes: usize) -> (Arc<Broker>, TcpStream) {
    let (broker, addr) = common::start_broker(
        dir,
        BrokerConfig {
            offsets_topic_num_partitions: 1,
            fetch_max_bytes,
            ..BrokerConfig::default()
        },
    )
    .await;
    (broker, TcpStream::connect(addr).await.unwrap())
}

/// A batch of `n` records with `value_len`-byte values stamped `timestamp`.
fn batch(n: usize, value_len: usize, timestamp: i64, compression: Compression) -> Bytes {
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder splits batches where offset - sequence changes: keep it constant.
            sequence: i as i32 - 1,
            timestamp,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(vec![b'v'; value_len])),
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
    .unwrap();
    buf.freeze()
}

async fn produce_to(
    conn: &mut TcpStream,
    version: i16,
    topic: &str,
    partition: i32,
    records: Bytes,
) -> produce_response::PartitionProduceResponse {
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![
            produce_request::TopicProduceData::default()
                .with_name(TopicName(name(topic)))
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(records)),
                ]),
        ]);
    let ResponseKind::Produce(r) =
        call(conn, ApiKey::Produce, version, RequestKind::Produce(req)).await
    else {
        panic!("not a Produce response");
    };
    r.responses[0].partition_responses[0].clone()
}

/// One fetch of `partitions` (index, offset) with the given limits; per partition the
/// records bytes and the high watermark.
async fn fetch(
    conn: &mut TcpStream,
    topic: &str,
    partitions: &[(i32, i64)],
    max_bytes: i32,
    partition_max_bytes: i32,
) -> Vec<(Bytes, i64)> {
    let req = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(max_bytes)
        .with_topics(vec![
            fetch_request::FetchTopic::default()
                .with_topic(TopicName(name(topic)))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|&(p, o)| {
                            fetch_request::FetchPartition::default()
                                .with_partition(p)
                                .with_fetch_offset(o)
                                .with_partition_max_bytes(partition_max_bytes)
                        })
                        .collect(),
                ),
        ]);
    let ResponseKind::Fetch(r) = call(conn, ApiKey::Fetch, 11, RequestKind::Fetch(req)).await
    else {
        panic!("not a Fetch response");
    };
    r.responses[0]
        .partitions
        .iter()
        .map(|p| {
            assert_eq!(p.error_code, 0, "{p:?}");
            (p.records.clone().unwrap_or_default(), p.high_watermark)
        })
        .collect()
}

fn codec_of(records: &Bytes) -> u8 {
    (u16::from_be_bytes([records[21], records[22]]) & 0x07) as u8
}

#[tokio::test]
async fn a_topic_compression_type_recompresses_what_producers_send() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, mut c) = broker(dir.path(), 55 << 20).await;
    for (config, sent, stored) in [
        ("gzip", Compression::None, 1u8),
        ("uncompressed", Compression::Lz4, 0),
        ("zstd", Compression::Snappy, 4),
        ("producer", Compression::Lz4, 3),
    ] {
        let topic = format!("compressed-{config}");
        assert_eq!(
            create(&mut c, &topic, 1, &[("compression.type", config)]).await,
            0
        );
        let sent_batch = batch(5, 100, now_ms(), sent);
        assert_eq!(
            produce_to(&mut c, 9, &topic, 0, sent_batch)
                .await
                .error_code,
            0
        );
        let (records, hw) = fetch(&mut c, &topic, &[(0, 0)], 1 << 20, 1 << 20)
            .await
            .remove(0);
        assert_eq!(hw, 5);
        assert_eq!(codec_of(&records), stored, "compression.type={config}");
        let set = RecordBatchDecoder::decode(&mut records.clone()).unwrap();
        let keys: Vec<_> = set.records.iter().map(|r| r.key.clone().unwrap()).collect();
        assert_eq!(
            keys,
            (0..5)
                .map(|i| Bytes::from(format!("k{i}")))
                .collect::<Vec<_>>(),
            "compression.type={config}, {} bytes",
            records.len()
        );
        assert!(
            set.records
                .iter()
                .all(|r| r.value.as_ref().is_some_and(|v| v.len() == 100))
        );
    }
}

#[tokio::test]
async fn a_zstd_batch_needs_produce_version_seven() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, mut c) = broker(dir.path(), 55 << 20).await;
    assert_eq!(
        create(&mut c, "zstd-topic", 1, &[("compression.type", "zstd")]).await,
        0
    );
    let zstd = batch(1, 10, now_ms(), Compression::Zstd);
    let r = produce_to(&mut c, 6, "zstd-topic", 0, zstd.clone()).await;
    assert_eq!(
        r.error_code,
        ResponseError::UnsupportedCompressionType.code()
    );
    assert_eq!(
        produce_to(&mut c, 7, "zstd-topic", 0, zstd)
            .await
            .error_code,
        0
    );
    // An older client's gzip batch is fine: the topic recompresses it to zstd.
    let gzip = batch(1, 10, now_ms(), Compression::Gzip);
    assert_eq!(
        produce_to(&mut c, 6, "zstd-topic", 0, gzip)
            .await
            .error_code,
        0
    );
}

#[tokio::test]
async fn records_outside_the_topic_timestamp_bounds_are_invalid_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, mut c) = broker(dir.path(), 55 << 20).await;
    let configs = [
        ("message.timestamp.before.max.ms", "3600000"),
        ("message.timestamp.after.max.ms", "60000"),
    ];
    assert_eq!(create(&mut c, "bounded", 1, &configs).await, 0);
    let hour = 3_600_000;
    let too_old = produce_to(
        &mut c,
        9,
        "bounded",
        0,
        batch(2, 10, now_ms() - 2 * hour, Compression::Gzip),
    )
    .await;
    assert_eq!(too_old.error_code, ResponseError::InvalidTimestamp.code());
    let too_new = produce_to(
        &mut c,
        9,
        "bounded",
        0,
        batch(2, 10, now_ms() + hour, Compression::None),
    )
    .await;
    assert_eq!(too_new.error_code, ResponseError::InvalidTimestamp.code());
    let fine = produce_to(
        &mut c,
        9,
        "bounded",
        0,
        batch(2, 10, now_ms() - 1000, Compression::None),
    )
    .await;
    assert_eq!((fine.error_code, fine.base_offset), (0, 0));
}

#[tokio::test]
async fn a_refused_batch_refuses_every_batch_of_its_partition() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, mut c) = broker(dir.path(), 55 << 20).await;
    assert_eq!(
        create(
            &mut c,
            "atomic",
            1,
            &[("message.timestamp.before.max.ms", "60000")]
        )
        .await,
        0
    );
    let mut two = BytesMut::new();
    two.extend_from_slice(&batch(3, 10, now_ms(), Compression::None));
    two.extend_from_slice(&batch(3, 10, now_ms() - 3_600_000, Compression::None));
    let r = produce_to(&mut c, 9, "atomic", 0, two.freeze()).await;
    assert_eq!(r.error_code, ResponseError::InvalidTimestamp.code());
    let (records, hw) = fetch(&mut c, "atomic", &[(0, 0)], 1 << 20, 1 << 20)
        .await
        .remove(0);
    assert_eq!(
        (records.len(), hw),
        (0, 0),
        "the good first batch must not be appended"
    );
}

#[tokio::test]
async fn a_file_delete_delay_longer_than_the_node_grace_is_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, mut c) = broker(dir.path(), 55 << 20).await;
    // What librdkafka's compaction test sets: shorter than the node's 60 s grace, accepted.
    assert_eq!(
        create(
            &mut c,
            "short-delay",
            1,
            &[("file.delete.delay.ms", "10000")]
        )
        .await,
        0
    );
    let code = create(
        &mut c,
        "long-delay",
        1,
        &[("file.delete.delay.ms", "120000")],
    )
    .await;
    assert_eq!(code, ResponseError::InvalidConfig.code());
}

#[tokio::test]
async fn fetch_max_bytes_caps_a_fetch_that_asks_for_everything() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 16 * 1024;
    let (_b, mut c) = broker(dir.path(), cap).await;
    assert_eq!(create(&mut c, "big", 4, &[]).await, 0);
    for p in 0..4 {
        for _ in 0..20 {
            assert_eq!(
                produce_to(
                    &mut c,
                    9,
                    "big",
                    p,
                    batch(1, 1000, now_ms(), Compression::None)
                )
                .await
                .error_code,
                0
            );
        }
    }
    let parts: Vec<(i32, i64)> = (0..4).map(|p| (p, 0)).collect();
    let got = fetch(&mut c, "big", &parts, i32::MAX, i32::MAX).await;
    let total: usize = got.iter().map(|(r, _)| r.len()).sum();
    assert!(
        total > 0 && total <= cap,
        "returned {total} bytes with fetch.max.bytes {cap}"
    );
    assert!(got.iter().all(|(_, hw)| *hw == 20));
}

#[tokio::test]
async fn max_bytes_zero_returns_only_the_first_batch_and_never_wraps() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, mut c) = broker(dir.path(), 55 << 20).await;
    assert_eq!(create(&mut c, "small", 2, &[]).await, 0);
    for p in 0..2 {
        for _ in 0..3 {
            assert_eq!(
                produce_to(
                    &mut c,
                    9,
                    "small",
                    p,
                    batch(1, 5000, now_ms(), Compression::None)
                )
                .await
                .error_code,
                0
            );
        }
    }
    for (max_bytes, partition_max) in [(0, 1 << 20), (-1, -1), (1000, 1 << 20), (1 << 20, 0)] {
        let got = fetch(&mut c, "small", &[(0, 0), (1, 0)], max_bytes, partition_max).await;
        let one = batch(1, 5000, 0, Compression::None).len();
        assert_eq!(
            got[0].0.len(),
            one,
            "max_bytes {max_bytes}: the first batch, whatever its size"
        );
        assert_eq!(
            got[1].0.len(),
            0,
            "max_bytes {max_bytes}: nothing after the budget is spent"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_never_returns_offsets_at_or_above_the_high_watermark_it_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (b, mut c) = broker(dir.path(), 55 << 20).await;
    assert_eq!(create(&mut c, "racing", 1, &[]).await, 0);
    let addr = format!("127.0.0.1:{}", b.config.advertised_port);
    let writer = tokio::spawn(async move {
        let mut w = TcpStream::connect(addr).await.unwrap();
        for _ in 0..300 {
            produce_to(
                &mut w,
                9,
                "racing",
                0,
                batch(2, 50, now_ms(), Compression::None),
            )
            .await;
        }
    });
    let mut checked = 0;
    while !writer.is_finished() {
        let (records, hw) = fetch(&mut c, "racing", &[(0, 0)], 1 << 30, 1 << 30)
            .await
            .remove(0);
        let mut rest = records.clone();
        while rest.len() >= 61 {
            let base = i64::from_be_bytes(rest[0..8].try_into().unwrap());
            let len = i32::from_be_bytes(rest[8..12].try_into().unwrap()) as usize + 12;
            let last_delta = i32::from_be_bytes(rest[23..27].try_into().unwrap()) as i64;
            assert!(
                base + last_delta < hw,
                "offset {} returned with high watermark {hw}",
                base + last_delta
            );
            rest = rest.slice(len.min(rest.len())..);
            checked += 1;
        }
    }
    writer.await.unwrap();
    assert!(checked > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_batches_get_contiguous_offsets_whatever_other_producers_do() {
    let dir = tempfile::tempdir().unwrap();
    let (b, mut c) = broker(dir.path(), 55 << 20).await;
    assert_eq!(create(&mut c, "shared", 1, &[]).await, 0);
    let addr = format!("127.0.0.1:{}", b.config.advertised_port);
    // Four producers, each sending requests of 5 batches x 2 records to one partition.
    let producers: Vec<_> = (0..4)
        .map(|_| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let mut w = TcpStream::connect(addr).await.unwrap();
                let mut bases = Vec::new();
                for _ in 0..25 {
                    let mut five = BytesMut::new();
                    for _ in 0..5 {
                        five.extend_from_slice(&batch(2, 10, now_ms(), Compression::None));
                    }
                    let r = produce_to(&mut w, 9, "shared", 0, five.freeze()).await;
                    assert_eq!(r.error_code, 0);
                    bases.push(r.base_offset);
                }
                bases
            })
        })
        .collect();
    let mut bases = Vec::new();
    for p in producers {
        bases.extend(p.await.unwrap());
    }
    // Every request owns [base, base + 10): the blocks tile the partition without overlap,
    // so no other producer's batch landed inside a request's.
    bases.sort_unstable();
    let expected: Vec<i64> = (0..100).map(|i| i * 10).collect();
    assert_eq!(bases, expected);
}

#[tokio::test]
async fn a_decompression_bomb_is_refused_where_the_broker_reads_records() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, mut c) = broker(dir.path(), 55 << 20).await;
    // max.message.bytes 16 KiB: batches may inflate to 16 KiB x 64 = 1 MiB when read.
    let small = [("max.message.bytes", "16384")];
    assert_eq!(
        create(
            &mut c,
            "bomb-compacted",
            1,
            &[small[0], ("cleanup.policy", "compact")]
        )
        .await,
        0
    );
    assert_eq!(
        create(
            &mut c,
            "bomb-recompressed",
            1,
            &[small[0], ("compression.type", "gzip")]
        )
        .await,
        0
    );
    assert_eq!(create(&mut c, "bomb-plain", 1, &small).await, 0);
    // One record of 4 MiB of zeros: a few hundred bytes of zstd.
    let bomb = batch(1, 4 << 20, now_ms(), Compression::Zstd);
    assert!(bomb.len() < 16384);
    for topic in ["bomb-compacted", "bomb-recompressed"] {
        let r = produce_to(&mut c, 9, topic, 0, bomb.clone()).await;
        assert_eq!(
            r.error_code,
            ResponseError::InvalidRecord.code(),
            "{topic}: {r:?}"
        );
    }
    // Where the broker does not need the records, the batch is stored as sent (as Kafka
    // stores any batch within max.message.bytes).
    let r = produce_to(&mut c, 9, "bomb-plain", 0, bomb).await;
    assert_eq!(r.error_code, 0);
}

#[tokio::test]
async fn recompressed_records_are_bounded_by_the_request_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, addr) = common::start_broker(
        dir.path(),
        BrokerConfig {
            offsets_topic_num_partitions: 1,
            socket_request_max_bytes: 1 << 20,
            ..BrokerConfig::default()
        },
    )
    .await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let configs = [
        ("compression.type", "uncompressed"),
        ("max.message.bytes", "8388608"),
    ];
    assert_eq!(create(&mut c, "inflating", 1, &configs).await, 0);
    // 2 MiB of records in a few KiB of gzip: stored uncompressed they would be twice the
    // largest request the broker accepts.
    let r = produce_to(
        &mut c,
        9,
        "inflating",
        0,
        batch(2, 1 << 20, now_ms(), Compression::Gzip),
    )
    .await;
    assert_eq!(
        r.error_code,
        ResponseError::RecordListTooLarge.code(),
        "{r:?}"
    );
    let r = produce_to(
        &mut c,
        9,
        "inflating",
        0,
        batch(2, 1000, now_ms(), Compression::Gzip),
    )
    .await;
    assert_eq!(r.error_code, 0);
}
