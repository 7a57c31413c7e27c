//! An object store outage, then recovery, with no restart: produce, consumer-group offsets,
//! retention and the log cleaner all work again once the store is back. The store is a real
//! in-memory `ObjectStore` behind `FaultyStore`, which fails every call while the outage is on.

mod common;

use bytes::{Bytes, BytesMut};
use common::{call, create_topic as create, name, now_ms};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use shale_broker::{Broker, BrokerConfig};
use shale_stream::StreamConfig;
use shale_testkit::faulty::{Fault, FaultyStore, Op, Rule};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

async fn broker(dir: &std::path::Path) -> (Arc<Broker>, Arc<FaultyStore>, TcpStream) {
    let store = FaultyStore::in_memory(7);
    let (broker, addr) = common::start_broker_on(
        dir,
        BrokerConfig {
            offsets_topic_num_partitions: 1,
            log_cleaner_backoff: Duration::ZERO,
            ..BrokerConfig::default()
        },
        store.clone(),
        StreamConfig {
            wal_batch_interval: Duration::from_millis(5),
            // The outage outlasts the WAL's retries, so appends really fail.
            wal_retry_timeout: Duration::from_millis(300),
            object_delete_grace: Duration::ZERO,
            ..StreamConfig::default()
        },
    )
    .await;
    (broker, store, TcpStream::connect(addr).await.unwrap())
}

fn batch(key: &str, value: &str, timestamp: i64) -> Bytes {
    let record = Record {
        transactional: false,
        control: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp,
        key: Some(Bytes::from(key.to_string())),
        value: Some(Bytes::from(value.to_string())),
        headers: Default::default(),
        delete_horizon: false,
    };
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &[record],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    buf.freeze()
}

async fn produce(conn: &mut TcpStream, topic: &str, acks: i16, records: Bytes) -> (i16, i64) {
    produce_within(conn, topic, acks, 30_000, records).await
}

async fn produce_within(
    conn: &mut TcpStream,
    topic: &str,
    acks: i16,
    timeout_ms: i32,
    records: Bytes,
) -> (i16, i64) {
    let req = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(vec![
            produce_request::TopicProduceData::default()
                .with_name(TopicName(name(topic)))
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(records)),
                ]),
        ]);
    let ResponseKind::Produce(r) = call(conn, ApiKey::Produce, 9, RequestKind::Produce(req)).await
    else {
        panic!("not a Produce response");
    };
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

async fn commit_offset(conn: &mut TcpStream, group: &str, topic: &str, offset: i64) -> i16 {
    let req = OffsetCommitRequest::default()
        .with_group_id(GroupId(name(group)))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![
            offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(TopicName(name(topic)))
                .with_partitions(vec![
                    offset_commit_request::OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(offset),
                ]),
        ]);
    let ResponseKind::OffsetCommit(r) = call(
        conn,
        ApiKey::OffsetCommit,
        8,
        RequestKind::OffsetCommit(req),
    )
    .await
    else {
        panic!("not an OffsetCommit response");
    };
    r.topics[0].partitions[0].error_code
}

async fn fetch_offset(conn: &mut TcpStream, group: &str, topic: &str) -> (i16, i64) {
    let req = OffsetFetchRequest::default()
        .with_group_id(GroupId(name(group)))
        .with_topics(Some(vec![
            offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(TopicName(name(topic)))
                .with_partition_indexes(vec![0]),
        ]));
    let ResponseKind::OffsetFetch(r) =
        call(conn, ApiKey::OffsetFetch, 7, RequestKind::OffsetFetch(req)).await
    else {
        panic!("not an OffsetFetch response");
    };
    let p = &r.topics[0].partitions[0];
    (r.error_code.max(p.error_code), p.committed_offset)
}

#[tokio::test]
async fn produce_fails_during_an_outage_and_succeeds_at_once_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, store, mut c) = broker(dir.path()).await;
    create(&mut c, "orders", &[]).await;
    assert_eq!(
        produce(&mut c, "orders", 1, batch("k", "before", now_ms())).await,
        (0, 0)
    );

    store.set_outage(true);
    let (code, _) = produce(&mut c, "orders", 1, batch("k", "during", now_ms())).await;
    assert_eq!(code, ResponseError::KafkaStorageError.code());
    store.set_outage(false);

    // The failed WAL object fenced the partition's handle; the next produce reopens it at
    // the committed end instead of failing: the retry lands right after the last ack.
    assert_eq!(
        produce(&mut c, "orders", 1, batch("k", "after", now_ms())).await,
        (0, 1)
    );
}

#[tokio::test]
async fn offset_commits_work_again_after_an_outage_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, store, mut c) = broker(dir.path()).await;
    create(&mut c, "events", &[]).await;
    assert_eq!(commit_offset(&mut c, "g", "events", 5).await, 0);

    store.set_outage(true);
    assert_ne!(commit_offset(&mut c, "g", "events", 6).await, 0);
    store.set_outage(false);

    // The coordinator partition is reloaded from its durable records on a fresh handle;
    // clients see retriable errors (NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS) briefly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut code = commit_offset(&mut c, "g", "events", 7).await;
    while code != 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        code = commit_offset(&mut c, "g", "events", 7).await;
    }
    assert_eq!(
        code, 0,
        "still failing with {code} after the store came back"
    );
    assert_eq!(fetch_offset(&mut c, "g", "events").await, (0, 7));
}

#[tokio::test]
async fn retention_deletes_expired_objects_once_the_store_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let (b, store, mut c) = broker(dir.path()).await;
    create(&mut c, "short", &[("retention.ms", "1000")]).await;
    for i in 0..3 {
        let old = now_ms() - 60_000 + i;
        assert_eq!(
            produce(&mut c, "short", 1, batch("k", "old", old)).await.0,
            0
        );
    }
    assert_eq!(
        produce(&mut c, "short", 1, batch("k", "new", now_ms()))
            .await
            .0,
        0
    );
    let wal_objects = || async { store.keys("").await.unwrap().len() };
    let before = wal_objects().await;

    store.set_outage(true);
    // Retention is a metadata change; deleting the objects waits for the store.
    b.apply_retention_now().await;
    assert_eq!(b.streams.delete_dead_objects_now().await, 0);
    store.set_outage(false);

    assert!(
        b.streams.delete_dead_objects_now().await > 0,
        "expired objects deleted after the outage"
    );
    assert!(wal_objects().await < before);
    assert_eq!(
        produce(&mut c, "short", 1, batch("k", "later", now_ms())).await,
        (0, 4)
    );
}

#[tokio::test]
async fn the_log_cleaner_changes_nothing_during_an_outage_and_cleans_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (b, store, mut c) = broker(dir.path()).await;
    create(&mut c, "compacted", &[("cleanup.policy", "compact")]).await;
    for v in ["a", "b", "c", "d"] {
        assert_eq!(
            produce(&mut c, "compacted", 1, batch("same", v, now_ms() - 5000))
                .await
                .0,
            0
        );
    }
    store.set_outage(true);
    let stats = b.compact_now().await;
    assert_eq!(stats.records_removed, 0);
    store.set_outage(false);

    let stats = b.compact_now().await;
    assert!(stats.records_removed > 0, "{stats:?}");
    // And the partition still takes writes at the next offset.
    assert_eq!(
        produce(&mut c, "compacted", 1, batch("same", "e", now_ms())).await,
        (0, 4)
    );
}

#[tokio::test]
async fn only_acks_all_answers_request_timed_out_and_acks_one_waits_for_durability() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, store, mut c) = broker(dir.path()).await;
    create(&mut c, "slow", &[]).await;
    // A slow store: every PUT takes 1.5 s, longer than the requests' 200 ms timeout.
    store.inject(Rule::new(Fault::Latency(Duration::from_millis(1500))).op(Op::Put));

    // acks=all: Kafka times out when "replication" misses timeout_ms.
    let (code, _) = produce_within(&mut c, "slow", -1, 200, batch("k", "all", now_ms())).await;
    assert_eq!(code, ResponseError::RequestTimedOut.code());
    // acks=1: Kafka never answers REQUEST_TIMED_OUT; Shale waits until the batch is durable.
    let (code, offset) = produce_within(&mut c, "slow", 1, 200, batch("k", "one", now_ms())).await;
    assert_eq!(code, 0);
    // The timed-out acks=all batch became durable after all: it is offset 0 (a client retry
    // would be a duplicate, which is why the timeout path must stay rare).
    assert_eq!(offset, 1);
}
