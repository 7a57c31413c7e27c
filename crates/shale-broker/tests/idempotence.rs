//! Idempotent producers, as Kafka's brokers treat them: producer ids from InitProducerId,
//! retries answered with the original offsets instead of a second copy, and sequence and
//! epoch checks that survive a restart.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use shale_broker::BrokerConfig;
use shale_stream::StreamConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// A batch of `n` records from producer `pid`/`epoch` starting at sequence `seq`.
fn batch(pid: i64, epoch: i16, seq: i32, n: usize) -> Bytes {
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: pid,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: seq + i as i32,
            timestamp: now_ms(),
            key: None,
            value: Some(Bytes::from(format!("v{seq}-{i}"))),
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
            compression: Compression::None,
        },
    )
    .unwrap();
    buf.freeze()
}

async fn init_producer_id(conn: &mut TcpStream, version: i16) -> InitProducerIdResponse {
    let req = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let ResponseKind::InitProducerId(r) = call(
        conn,
        ApiKey::InitProducerId,
        version,
        RequestKind::InitProducerId(req),
    )
    .await
    else {
        panic!("not an InitProducerId response");
    };
    r
}

async fn log_end(conn: &mut TcpStream, topic: &str) -> i64 {
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![
            list_offsets_request::ListOffsetsTopic::default()
                .with_name(TopicName(name(topic)))
                .with_partitions(vec![
                    list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_timestamp(-1),
                ]),
        ]);
    let ResponseKind::ListOffsets(r) =
        call(conn, ApiKey::ListOffsets, 5, RequestKind::ListOffsets(req)).await
    else {
        panic!("not a ListOffsets response");
    };
    r.topics[0].partitions[0].offset
}

fn stream_config() -> StreamConfig {
    StreamConfig {
        wal_batch_interval: Duration::from_millis(5),
        ..StreamConfig::default()
    }
}

#[tokio::test]
async fn every_init_producer_id_without_a_transactional_id_gets_a_new_id_at_epoch_0() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, addr) = start_broker(dir.path(), BrokerConfig::default()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut ids = Vec::new();
    for version in 0..=5 {
        let r = init_producer_id(&mut c, version).await;
        assert_eq!(r.error_code, 0, "v{version}");
        assert_eq!(r.producer_epoch, 0);
        ids.push(r.producer_id.0);
    }
    let mut distinct = ids.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), ids.len(), "{ids:?}");
    assert!(ids.iter().all(|&id| id >= 0));
}

#[tokio::test]
async fn a_retried_batch_gets_its_original_offset_and_is_not_stored_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, addr) = start_broker(dir.path(), BrokerConfig::default()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    create_topic(&mut c, "idem", &[]).await;
    let pid = init_producer_id(&mut c, 4).await.producer_id.0;
    let first = produce(&mut c, "idem", batch(pid, 0, 0, 3)).await;
    let second = produce(&mut c, "idem", batch(pid, 0, 3, 2)).await;
    assert_eq!((first.error_code, first.base_offset), (0, 0));
    assert_eq!((second.error_code, second.base_offset), (0, 3));
    let retry = produce(&mut c, "idem", batch(pid, 0, 0, 3)).await;
    assert_eq!((retry.error_code, retry.base_offset), (0, 0));
    assert_eq!(log_end(&mut c, "idem").await, 5);
}

#[tokio::test]
async fn a_gap_in_sequence_numbers_is_out_of_order() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, addr) = start_broker(dir.path(), BrokerConfig::default()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    create_topic(&mut c, "gap", &[]).await;
    let pid = init_producer_id(&mut c, 4).await.producer_id.0;
    assert_eq!(
        produce(&mut c, "gap", batch(pid, 0, 0, 2)).await.error_code,
        0
    );
    let gap = produce(&mut c, "gap", batch(pid, 0, 5, 1)).await;
    assert_eq!(
        gap.error_code,
        ResponseError::OutOfOrderSequenceNumber.code()
    );
    assert_eq!(log_end(&mut c, "gap").await, 2);
}

#[tokio::test]
async fn a_batch_from_an_older_epoch_is_invalid_producer_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, addr) = start_broker(dir.path(), BrokerConfig::default()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    create_topic(&mut c, "epochs", &[]).await;
    let pid = init_producer_id(&mut c, 4).await.producer_id.0;
    assert_eq!(
        produce(&mut c, "epochs", batch(pid, 1, 0, 1))
            .await
            .error_code,
        0
    );
    let zombie = produce(&mut c, "epochs", batch(pid, 0, 1, 1)).await;
    assert_eq!(
        zombie.error_code,
        ResponseError::InvalidProducerEpoch.code()
    );
    // A new epoch starts again at sequence 0.
    let bumped = produce(&mut c, "epochs", batch(pid, 2, 0, 1)).await;
    assert_eq!((bumped.error_code, bumped.base_offset), (0, 1));
}

#[tokio::test]
async fn duplicates_are_still_recognised_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let (b, addr) = start_broker_on(
        dir.path(),
        BrokerConfig::default(),
        store.clone(),
        stream_config(),
    )
    .await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    create_topic(&mut c, "restart", &[]).await;
    let pid = init_producer_id(&mut c, 4).await.producer_id.0;
    for seq in [0, 2, 4] {
        assert_eq!(
            produce(&mut c, "restart", batch(pid, 0, seq, 2))
                .await
                .error_code,
            0
        );
    }
    drop(c);
    b.shutdown().await;

    let (_b, addr) =
        start_broker_on(dir.path(), BrokerConfig::default(), store, stream_config()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let retry = produce(&mut c, "restart", batch(pid, 0, 2, 2)).await;
    assert_eq!((retry.error_code, retry.base_offset), (0, 2));
    let next = produce(&mut c, "restart", batch(pid, 0, 6, 1)).await;
    assert_eq!((next.error_code, next.base_offset), (0, 6));
    assert_eq!(
        produce(&mut c, "restart", batch(pid, 0, 9, 1))
            .await
            .error_code,
        ResponseError::OutOfOrderSequenceNumber.code()
    );
    // And a new node lease never hands out an id given before the restart.
    let fresh = init_producer_id(&mut c, 4).await.producer_id.0;
    assert!(fresh > pid);
}

#[tokio::test]
async fn a_restart_after_a_producer_state_snapshot_scans_only_what_came_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    // No periodic or shutdown snapshots, no checkpoints: only the snapshot taken below.
    let config = || BrokerConfig {
        producer_state_snapshot_interval: Duration::ZERO,
        producer_state_checkpoint_interval: Duration::ZERO,
        ..BrokerConfig::default()
    };
    let (b, addr) = start_broker_on(dir.path(), config(), store.clone(), stream_config()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    create_topic(&mut c, "snap", &[]).await;
    let pid = init_producer_id(&mut c, 4).await.producer_id.0;
    for seq in [0, 2] {
        assert_eq!(
            produce(&mut c, "snap", batch(pid, 0, seq, 2))
                .await
                .error_code,
            0
        );
    }
    assert!(b.snapshot_producer_states_now().await >= 1);
    assert_eq!(
        produce(&mut c, "snap", batch(pid, 0, 4, 2))
            .await
            .error_code,
        0
    );
    drop(c);
    b.shutdown().await;

    let (b, addr) = start_broker_on(dir.path(), config(), store, stream_config()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    // Batches from before and after the snapshot are both still recognised.
    let before = produce(&mut c, "snap", batch(pid, 0, 0, 2)).await;
    assert_eq!((before.error_code, before.base_offset), (0, 0));
    let after = produce(&mut c, "snap", batch(pid, 0, 4, 2)).await;
    assert_eq!((after.error_code, after.base_offset), (0, 4));
    assert_eq!(b.producer_state_loaded_from("snap", 0), Some(4));
}

#[tokio::test]
async fn a_node_checkpoint_spares_the_scan_after_a_crash_and_a_controlled_shutdown_leaves_none() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    // No partition snapshots at all (a crash leaves none behind). The first node takes one
    // checkpoint by hand and none otherwise (with the interval at 0 its shutdown writes none
    // either, so it leaves what a kill -9 would).
    let config = |checkpoints| BrokerConfig {
        producer_state_snapshot_interval: Duration::ZERO,
        producer_state_checkpoint_interval: checkpoints,
        ..BrokerConfig::default()
    };
    let hourly = Duration::from_secs(3600);
    let (b, addr) = start_broker_on(
        dir.path(),
        config(Duration::ZERO),
        store.clone(),
        stream_config(),
    )
    .await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    create_topic(&mut c, "ckpt", &[]).await;
    let pid = init_producer_id(&mut c, 4).await.producer_id.0;
    for seq in [0, 2] {
        let r = produce(&mut c, "ckpt", batch(pid, 0, seq, 2)).await;
        assert_eq!(r.error_code, 0);
    }
    assert!(b.checkpoint_producer_states_now().await);
    let r = produce(&mut c, "ckpt", batch(pid, 0, 4, 2)).await;
    assert_eq!(r.error_code, 0);
    drop(c);
    b.shutdown().await;

    let (b, addr) =
        start_broker_on(dir.path(), config(hourly), store.clone(), stream_config()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    // The state is whole: batches on both sides of the checkpoint are recognised as
    // duplicates, the next one is in order, a gap is not; and the scan started at it.
    let before = produce(&mut c, "ckpt", batch(pid, 0, 2, 2)).await;
    assert_eq!((before.error_code, before.base_offset), (0, 2));
    let after = produce(&mut c, "ckpt", batch(pid, 0, 4, 2)).await;
    assert_eq!((after.error_code, after.base_offset), (0, 4));
    let next = produce(&mut c, "ckpt", batch(pid, 0, 6, 1)).await;
    assert_eq!((next.error_code, next.base_offset), (0, 6));
    let gap = produce(&mut c, "ckpt", batch(pid, 0, 9, 1)).await;
    assert_eq!(
        gap.error_code,
        ResponseError::OutOfOrderSequenceNumber.code()
    );
    assert_eq!(b.producer_state_loaded_from("ckpt", 0), Some(4));
    drop(c);
    // A controlled shutdown checkpoints once its WAL is drained: the next open scans nothing.
    b.shutdown().await;
    let (b, addr) =
        start_broker_on(dir.path(), config(hourly), store.clone(), stream_config()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let again = produce(&mut c, "ckpt", batch(pid, 0, 6, 1)).await;
    assert_eq!((again.error_code, again.base_offset), (0, 6));
    assert_eq!(b.producer_state_loaded_from("ckpt", 0), Some(7));
    drop(c);
    b.shutdown().await;

    // With checkpoints off, nothing is read from them: the whole stream is scanned.
    let (b, addr) =
        start_broker_on(dir.path(), config(Duration::ZERO), store, stream_config()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let again = produce(&mut c, "ckpt", batch(pid, 0, 6, 1)).await;
    assert_eq!((again.error_code, again.base_offset), (0, 6));
    assert_eq!(b.producer_state_loaded_from("ckpt", 0), Some(0));
}
