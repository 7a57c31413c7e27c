//! Log compaction end to end in one process: a compacted topic, several values per key and
//! tombstones, one cleaner pass, then Fetch shows the latest value per key at its original
//! offset; keyless records are rejected on compacted topics.

mod common;

use common::{call, create_topic, name, now_ms, produce};

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use shale_broker::{Broker, BrokerConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

async fn start_broker(dir: &std::path::Path) -> (Arc<Broker>, std::net::SocketAddr) {
    common::start_broker(
        dir,
        BrokerConfig {
            offsets_topic_num_partitions: 1,
            // Driven by compact_now.
            log_cleaner_backoff: Duration::ZERO,
            ..BrokerConfig::default()
        },
    )
    .await
}

/// One batch of (key, value) records; `None` key or value = null.
fn batch(records: &[(Option<&str>, Option<&str>)], producer_id: i64, base_sequence: i32) -> Bytes {
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (k, v))| {
            let mut r = Record {
                transactional: false,
                control: false,
                partition_leader_epoch: 0,
                producer_id,
                producer_epoch: if producer_id < 0 { -1 } else { 0 },
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                // The encoder groups records whose offset - sequence is constant; a batch
                // without sequences starts at -1 (base sequence "none").
                sequence: if base_sequence < 0 {
                    i as i32 - 1
                } else {
                    base_sequence + i as i32
                },
                // Recent enough that delete.retention.ms (1 day) keeps tombstones.
                timestamp: now_ms() - 1000 + i as i64,
                key: k.map(|k| Bytes::from(k.to_string())),
                value: v.map(|v| Bytes::from(v.to_string())),
                headers: Default::default(),
                delete_horizon: false,
            };
            r.headers
                .insert(name("h"), Some(Bytes::from(format!("{i}"))));
            r
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    buf.freeze()
}

/// Every record of the partition via Fetch: (offset, key, value, header h).
async fn fetch_all(
    conn: &mut TcpStream,
    topic: &str,
) -> (
    Vec<(i64, Option<String>, Option<String>, String)>,
    Vec<i64>,
    i64,
) {
    let s = |b: &Option<Bytes>| b.as_ref().map(|b| String::from_utf8_lossy(b).to_string());
    let mut out = Vec::new();
    let mut batch_bases = Vec::new();
    let mut pos = 0i64;
    let mut hw;
    loop {
        let req = FetchRequest::default()
            .with_max_wait_ms(0)
            .with_max_bytes(1 << 20)
            .with_topics(vec![
                fetch_request::FetchTopic::default()
                    .with_topic(TopicName(name(topic)))
                    .with_partitions(vec![
                        fetch_request::FetchPartition::default()
                            .with_partition(0)
                            .with_fetch_offset(pos)
                            .with_partition_max_bytes(1 << 20),
                    ]),
            ]);
        let ResponseKind::Fetch(r) = call(conn, ApiKey::Fetch, 11, RequestKind::Fetch(req)).await
        else {
            panic!("not a Fetch response");
        };
        let p = &r.responses[0].partitions[0];
        assert_eq!(p.error_code, 0);
        hw = p.high_watermark;
        let mut records = p.records.clone().unwrap_or_default();
        if records.is_empty() {
            break;
        }
        for set in RecordBatchDecoder::decode_all(&mut records).unwrap() {
            // A producer's last batch may be left empty by the cleaner (as Kafka's):
            // consumers skip it.
            let Some(first) = set.records.first() else {
                continue;
            };
            batch_bases.push(first.offset);
            for rec in set.records {
                let h = rec
                    .headers
                    .get(b"h".as_slice())
                    .and_then(|v| v.as_ref())
                    .map(|v| String::from_utf8_lossy(v).to_string())
                    .unwrap_or_default();
                out.push((rec.offset, s(&rec.key), s(&rec.value), h));
                pos = rec.offset + 1;
            }
        }
        if pos >= hw {
            break;
        }
    }
    (out, batch_bases, hw)
}

type Rec = (i64, Option<String>, Option<String>, String);

fn rec(offset: i64, k: &str, v: Option<&str>, h: &str) -> Rec {
    (offset, Some(k.into()), v.map(String::from), h.into())
}

async fn fill(conn: &mut TcpStream, topic: &str) {
    let batches = [
        batch(
            &[
                (Some("k1"), Some("a")),
                (Some("k2"), Some("a")),
                (Some("k3"), Some("a")),
            ],
            -1,
            -1,
        ),
        batch(&[(Some("k1"), Some("b"))], -1, -1),
        // An idempotent producer's batch: its sequence numbering must survive the rewrite.
        batch(&[(Some("k2"), None), (Some("k4"), Some("a"))], 1000, 0),
        batch(
            &[
                (Some("k3"), Some("b")),
                (Some("k4"), Some("b")),
                (Some("k6"), Some("a")),
            ],
            -1,
            -1,
        ),
        // The last range (active tail) is never cleaned.
        batch(&[(Some("k5"), Some("a")), (Some("k1"), Some("c"))], -1, -1),
    ];
    for b in batches {
        let r = produce(conn, topic, b).await;
        assert_eq!(r.error_code, 0, "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleaner_keeps_latest_value_per_key_at_original_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, addr) = start_broker(dir.path()).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    create_topic(&mut conn, "keep", &[("cleanup.policy", "compact")]).await;
    create_topic(
        &mut conn,
        "drop",
        &[
            ("cleanup.policy", "compact,delete"),
            ("delete.retention.ms", "0"),
        ],
    )
    .await;
    fill(&mut conn, "keep").await;
    fill(&mut conn, "drop").await;
    let (before, _, hw) = fetch_all(&mut conn, "keep").await;
    assert_eq!(before.len(), 11);
    assert_eq!(hw, 11);

    let stats = broker.compact_now().await;
    assert_eq!(stats.partitions_cleaned, 2, "{stats:?}");

    // Tombstone kept (delete.retention.ms not elapsed). k1=b at 3 is superseded by k1=c in
    // the tail, but the tail is not part of the cleaned window, so k1=b stays for now.
    let (after, bases, hw) = fetch_all(&mut conn, "keep").await;
    assert_eq!(hw, 11, "high watermark unchanged");
    assert_eq!(
        after,
        vec![
            rec(3, "k1", Some("b"), "0"),
            rec(4, "k2", None, "0"),
            rec(6, "k3", Some("b"), "0"),
            rec(7, "k4", Some("b"), "1"),
            rec(8, "k6", Some("a"), "2"),
            rec(9, "k5", Some("a"), "0"),
            rec(10, "k1", Some("c"), "1"),
        ]
    );
    assert_eq!(bases, vec![3, 4, 6, 9]);
    // Every kept record is byte-for-byte the one produced at that offset.
    for r in &after {
        assert!(before.contains(r), "{r:?} not produced as such");
    }
    // Fetch at a compacted-away offset returns the next batch.
    let req = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            fetch_request::FetchTopic::default()
                .with_topic(TopicName(name("keep")))
                .with_partitions(vec![
                    fetch_request::FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(1)
                        .with_partition_max_bytes(1),
                ]),
        ]);
    let ResponseKind::Fetch(r) = call(&mut conn, ApiKey::Fetch, 11, RequestKind::Fetch(req)).await
    else {
        panic!("not a Fetch response");
    };
    let mut records = r.responses[0].partitions[0].records.clone().unwrap();
    let sets = RecordBatchDecoder::decode_all(&mut records).unwrap();
    assert_eq!(sets[0].records[0].offset, 3);

    // delete.retention.ms=0: the tombstone goes too; batch [4, 6) keeps only k4... which is
    // superseded at 7, so it disappears entirely.
    let (after, bases, hw) = fetch_all(&mut conn, "drop").await;
    assert_eq!(hw, 11);
    assert_eq!(
        after,
        vec![
            rec(3, "k1", Some("b"), "0"),
            rec(6, "k3", Some("b"), "0"),
            rec(7, "k4", Some("b"), "1"),
            rec(8, "k6", Some("a"), "2"),
            rec(9, "k5", Some("a"), "0"),
            rec(10, "k1", Some("c"), "1"),
        ]
    );
    assert_eq!(bases, vec![3, 6, 9]);

    // A second pass finds nothing more to do in the window; appends continue after it.
    let r = produce(&mut conn, "keep", batch(&[(Some("k9"), Some("z"))], -1, -1)).await;
    assert_eq!((r.error_code, r.base_offset), (0, 11));
    let stats = broker.compact_now().await;
    // k1=b at 3 is now superseded inside the window ([0, 11) without the new tail).
    assert_eq!(stats.records_removed, 1, "{stats:?}");
    let (after, _, _) = fetch_all(&mut conn, "keep").await;
    assert_eq!(after.first(), Some(&rec(4, "k2", None, "0")));
    assert_eq!(after.last(), Some(&rec(11, "k9", Some("z"), "0")));
    broker.shutdown().await;
}

/// Kafka never cleans the active segment but rolls it after `segment.ms`. Here the stream
/// layer joins a partition's adjacent ranges into one, so the last range can hold
/// everything: once its newest data is older than `segment.ms` it is cleaned too, or a topic
/// whose writes stopped would never be compacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_range_older_than_segment_ms_is_cleaned_even_when_it_holds_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, addr) = start_broker(dir.path()).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    create_topic(
        &mut conn,
        "idle",
        &[("cleanup.policy", "compact"), ("segment.ms", "100")],
    )
    .await;
    for v in ["a", "b", "c"] {
        let r = produce(&mut conn, "idle", batch(&[(Some("k1"), Some(v))], -1, -1)).await;
        assert_eq!(r.error_code, 0, "{r:?}");
    }
    // Small objects merge: the partition's three ranges become one.
    broker.streams.compact_now().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = broker.compact_now().await;
    assert_eq!(stats.records_removed, 2, "{stats:?}");
    let (after, _, hw) = fetch_all(&mut conn, "idle").await;
    assert_eq!(hw, 3);
    assert_eq!(after, vec![rec(2, "k1", Some("c"), "0")]);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_batches_keep_producer_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, addr) = start_broker(dir.path()).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    create_topic(&mut conn, "idem", &[("cleanup.policy", "compact")]).await;
    let b = batch(
        &[
            (Some("a"), Some("1")),
            (Some("b"), Some("1")),
            (Some("c"), Some("1")),
        ],
        42,
        10,
    );
    assert_eq!(produce(&mut conn, "idem", b).await.error_code, 0);
    let b = batch(&[(Some("a"), Some("2"))], -1, -1);
    assert_eq!(produce(&mut conn, "idem", b).await.error_code, 0);
    let b = batch(&[(Some("z"), Some("2"))], -1, -1);
    assert_eq!(produce(&mut conn, "idem", b).await.error_code, 0);
    broker.compact_now().await;
    let req = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            fetch_request::FetchTopic::default()
                .with_topic(TopicName(name("idem")))
                .with_partitions(vec![
                    fetch_request::FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    let ResponseKind::Fetch(r) = call(&mut conn, ApiKey::Fetch, 11, RequestKind::Fetch(req)).await
    else {
        panic!("not a Fetch response");
    };
    let mut records = r.responses[0].partitions[0].records.clone().unwrap();
    let sets = RecordBatchDecoder::decode_all(&mut records).unwrap();
    let first = &sets[0].records;
    assert_eq!(first.len(), 2);
    assert_eq!((first[0].offset, first[1].offset), (1, 2));
    assert_eq!((first[0].producer_id, first[0].producer_epoch), (42, 0));
    assert_eq!((first[0].sequence, first[1].sequence), (11, 12));
    assert_eq!(first[1].timestamp - first[0].timestamp, 1);
    assert_eq!(
        first[0].headers.get(b"h".as_slice()),
        Some(&Some(Bytes::from("1")))
    );
    // The non-idempotent batch stays without sequence numbers.
    assert_eq!(sets[1].records[0].sequence, -1);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_records_rejected_on_compacted_topics_only() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, addr) = start_broker(dir.path()).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    create_topic(&mut conn, "c", &[("cleanup.policy", "compact,delete")]).await;
    create_topic(&mut conn, "d", &[]).await;
    let mixed = batch(
        &[(Some("k"), Some("v")), (None, Some("v")), (None, None)],
        -1,
        -1,
    );
    let r = produce(&mut conn, "c", mixed.clone()).await;
    assert_eq!(r.error_code, ResponseError::InvalidRecord.code());
    let bad: Vec<i32> = r.record_errors.iter().map(|e| e.batch_index).collect();
    assert_eq!(bad, vec![1, 2]);
    assert!(r.error_message.is_some());
    // Nothing was appended.
    assert_eq!(fetch_all(&mut conn, "c").await.2, 0);
    let keyed = batch(&[(Some("k"), Some("v"))], -1, -1);
    assert_eq!(produce(&mut conn, "c", keyed).await.error_code, 0);
    // Other topics take keyless records as before.
    let r = produce(&mut conn, "d", mixed).await;
    assert_eq!(r.error_code, 0);
    broker.shutdown().await;
}
