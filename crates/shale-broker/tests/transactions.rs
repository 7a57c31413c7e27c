//! Transactions as Kafka's brokers run them: a transactional producer's records are
//! invisible to read_committed consumers until its commit, aborted ones never appear (the
//! fetch lists them so the consumer drops them), a second producer with the same
//! transactional id fences the first, and an open transaction survives a restart.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use shale_broker::BrokerConfig;
use shale_stream::StreamConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

const TOPIC: &str = "txn-data";

fn txn_batch(pid: i64, epoch: i16, seq: i32, values: &[&str]) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: true,
            control: false,
            partition_leader_epoch: 0,
            producer_id: pid,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: seq + i as i32,
            timestamp: now_ms(),
            key: None,
            value: Some(Bytes::from(v.to_string())),
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

struct Client {
    conn: TcpStream,
    txn_id: String,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr, txn_id: &str) -> Client {
        Client {
            conn: TcpStream::connect(addr).await.unwrap(),
            txn_id: txn_id.into(),
        }
    }

    async fn init(&mut self, timeout_ms: i32) -> InitProducerIdResponse {
        let req = InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(name(&self.txn_id))))
            .with_transaction_timeout_ms(timeout_ms);
        // The coordinator may still be loading right after start: retry as clients do.
        for _ in 0..50 {
            let ResponseKind::InitProducerId(r) = call(
                &mut self.conn,
                ApiKey::InitProducerId,
                4,
                RequestKind::InitProducerId(req.clone()),
            )
            .await
            else {
                panic!("not an InitProducerId response");
            };
            if r.error_code != ResponseError::CoordinatorLoadInProgress.code()
                && r.error_code != ResponseError::ConcurrentTransactions.code()
            {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("InitProducerId kept being retriable");
    }

    async fn add_partition(&mut self, pid: i64, epoch: i16) -> i16 {
        let req = AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(TransactionalId(name(&self.txn_id)))
            .with_v3_and_below_producer_id(ProducerId(pid))
            .with_v3_and_below_producer_epoch(epoch)
            .with_v3_and_below_topics(vec![
                add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                    .with_name(TopicName(name(TOPIC)))
                    .with_partitions(vec![0]),
            ]);
        let ResponseKind::AddPartitionsToTxn(r) = call(
            &mut self.conn,
            ApiKey::AddPartitionsToTxn,
            3,
            RequestKind::AddPartitionsToTxn(req),
        )
        .await
        else {
            panic!("not an AddPartitionsToTxn response");
        };
        r.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code
    }

    async fn produce(&mut self, records: Bytes) -> produce_response::PartitionProduceResponse {
        let req = ProduceRequest::default()
            .with_transactional_id(Some(TransactionalId(name(&self.txn_id))))
            .with_acks(-1)
            .with_timeout_ms(5000)
            .with_topic_data(vec![
                produce_request::TopicProduceData::default()
                    .with_name(TopicName(name(TOPIC)))
                    .with_partition_data(vec![
                        produce_request::PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(records)),
                    ]),
            ]);
        let ResponseKind::Produce(r) = call(
            &mut self.conn,
            ApiKey::Produce,
            9,
            RequestKind::Produce(req),
        )
        .await
        else {
            panic!("not a Produce response");
        };
        r.responses[0].partition_responses[0].clone()
    }

    async fn end(&mut self, pid: i64, epoch: i16, commit: bool) -> i16 {
        let req = EndTxnRequest::default()
            .with_transactional_id(TransactionalId(name(&self.txn_id)))
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(epoch)
            .with_committed(commit);
        let ResponseKind::EndTxn(r) =
            call(&mut self.conn, ApiKey::EndTxn, 3, RequestKind::EndTxn(req)).await
        else {
            panic!("not an EndTxn response");
        };
        r.error_code
    }
}

/// A fetch of the whole partition: (records' values seen as data, aborted transactions,
/// last stable offset).
async fn fetch(conn: &mut TcpStream, isolation: i8) -> (Vec<(i64, String)>, Vec<i64>, i64) {
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_isolation_level(isolation)
        .with_topics(vec![
            fetch_request::FetchTopic::default()
                .with_topic(TopicName(name(TOPIC)))
                .with_partitions(vec![
                    fetch_request::FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    let ResponseKind::Fetch(r) = call(conn, ApiKey::Fetch, 11, RequestKind::Fetch(req)).await
    else {
        panic!("not a Fetch response");
    };
    let p = &r.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    let aborted: Vec<i64> = p
        .aborted_transactions
        .iter()
        .flatten()
        .map(|a| a.first_offset)
        .collect();
    let mut values = Vec::new();
    if let Some(mut records) = p.records.clone() {
        while !records.is_empty() {
            let set = RecordBatchDecoder::decode(&mut records).unwrap();
            for r in set.records {
                if r.control {
                    continue;
                }
                let v = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
                values.push((r.offset, v));
            }
        }
    }
    (values, aborted, p.last_stable_offset)
}

fn config() -> BrokerConfig {
    BrokerConfig {
        transaction_state_num_partitions: 3,
        offsets_topic_num_partitions: 3,
        ..BrokerConfig::default()
    }
}

async fn broker_with_topic(
    dir: &std::path::Path,
    store: Arc<dyn object_store::ObjectStore>,
    config: BrokerConfig,
) -> (Arc<shale_broker::Broker>, std::net::SocketAddr) {
    let (b, addr) = start_broker_on(
        dir,
        config,
        store,
        StreamConfig {
            wal_batch_interval: Duration::from_millis(5),
            ..StreamConfig::default()
        },
    )
    .await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let _ = create_topic_with(&mut c, TOPIC, 1, &[]).await;
    (b, addr)
}

fn memory() -> Arc<dyn object_store::ObjectStore> {
    Arc::new(object_store::memory::InMemory::new())
}

#[tokio::test]
async fn committed_records_become_visible_to_read_committed_only_at_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, addr) = broker_with_topic(dir.path(), memory(), config()).await;
    let mut p = Client::connect(addr, "tx-commit").await;
    let init = p.init(60_000).await;
    assert_eq!(init.error_code, 0);
    let (pid, epoch) = (init.producer_id.0, init.producer_epoch);
    assert_eq!(p.add_partition(pid, epoch).await, 0);
    let r = p.produce(txn_batch(pid, epoch, 0, &["a", "b"])).await;
    assert_eq!((r.error_code, r.base_offset), (0, 0));

    let mut reader = TcpStream::connect(addr).await.unwrap();
    let (committed, _, lso) = fetch(&mut reader, 1).await;
    assert!(committed.is_empty());
    assert_eq!(lso, 0, "the open transaction holds the last stable offset");
    let (uncommitted, _, _) = fetch(&mut reader, 0).await;
    assert_eq!(uncommitted.len(), 2);

    assert_eq!(p.end(pid, epoch, true).await, 0);
    // Markers are written after EndTxn is answered: wait for the LSO to pass them.
    let mut seen = Vec::new();
    for _ in 0..100 {
        let (values, aborted, lso) = fetch(&mut reader, 1).await;
        if lso == 3 {
            assert!(aborted.is_empty());
            seen = values;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, vec![(0, "a".to_string()), (1, "b".to_string())]);
}

#[tokio::test]
async fn an_aborted_transaction_is_listed_so_read_committed_drops_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, addr) = broker_with_topic(dir.path(), memory(), config()).await;
    let mut p = Client::connect(addr, "tx-abort").await;
    let init = p.init(60_000).await;
    let (pid, epoch) = (init.producer_id.0, init.producer_epoch);
    assert_eq!(p.add_partition(pid, epoch).await, 0);
    assert_eq!(
        p.produce(txn_batch(pid, epoch, 0, &["x"])).await.error_code,
        0
    );
    assert_eq!(p.end(pid, epoch, false).await, 0);
    let mut reader = TcpStream::connect(addr).await.unwrap();
    for _ in 0..100 {
        let (values, aborted, lso) = fetch(&mut reader, 1).await;
        if lso == 2 {
            // The records come back (they are in the batch range) with the transaction
            // listed as aborted: the consumer drops them.
            assert_eq!(values, vec![(0, "x".to_string())]);
            assert_eq!(aborted, vec![0]);
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the abort marker never became stable");
}

#[tokio::test]
async fn a_second_producer_with_the_same_transactional_id_fences_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, addr) = broker_with_topic(dir.path(), memory(), config()).await;
    let mut first = Client::connect(addr, "tx-fence").await;
    let a = first.init(60_000).await;
    assert_eq!(
        first.add_partition(a.producer_id.0, a.producer_epoch).await,
        0
    );
    assert_eq!(
        first
            .produce(txn_batch(a.producer_id.0, a.producer_epoch, 0, &["zombie"]))
            .await
            .error_code,
        0
    );
    let mut second = Client::connect(addr, "tx-fence").await;
    // The first producer's open transaction is aborted; the second gets a newer epoch.
    let b = second.init(60_000).await;
    assert_eq!(b.error_code, 0);
    assert_eq!(b.producer_id, a.producer_id);
    assert!(b.producer_epoch > a.producer_epoch);
    assert_eq!(
        first.end(a.producer_id.0, a.producer_epoch, true).await,
        ResponseError::ProducerFenced.code()
    );
    let late = first
        .produce(txn_batch(a.producer_id.0, a.producer_epoch, 1, &["late"]))
        .await;
    assert_ne!(late.error_code, 0, "a fenced producer cannot append");
    let mut reader = TcpStream::connect(addr).await.unwrap();
    let (values, _, _) = fetch(&mut reader, 1).await;
    assert!(values.iter().all(|(_, v)| v != "late"));
}

#[tokio::test]
async fn batches_for_a_partition_not_in_the_transaction_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, addr) = broker_with_topic(dir.path(), memory(), config()).await;
    let mut p = Client::connect(addr, "tx-verify").await;
    let init = p.init(60_000).await;
    let r = p
        .produce(txn_batch(
            init.producer_id.0,
            init.producer_epoch,
            0,
            &["stray"],
        ))
        .await;
    assert_eq!(r.error_code, ResponseError::InvalidTxnState.code());
}

#[tokio::test]
async fn an_open_transaction_survives_a_restart_and_commits_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = memory();
    let (b, addr) = broker_with_topic(dir.path(), store.clone(), config()).await;
    let mut p = Client::connect(addr, "tx-restart").await;
    let init = p.init(60_000).await;
    let (pid, epoch) = (init.producer_id.0, init.producer_epoch);
    assert_eq!(p.add_partition(pid, epoch).await, 0);
    assert_eq!(
        p.produce(txn_batch(pid, epoch, 0, &["kept"]))
            .await
            .error_code,
        0
    );
    drop(p);
    b.shutdown().await;

    let (_b, addr) = broker_with_topic(dir.path(), store, config()).await;
    let mut reader = TcpStream::connect(addr).await.unwrap();
    let (values, _, lso) = fetch(&mut reader, 1).await;
    assert!(values.is_empty());
    assert_eq!(lso, 0, "the reloaded producer state still holds the LSO");
    let mut p = Client::connect(addr, "tx-restart").await;
    let mut code = -1;
    for _ in 0..50 {
        code = p.end(pid, epoch, true).await;
        if code != ResponseError::CoordinatorLoadInProgress.code() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(code, 0);
    for _ in 0..100 {
        let (values, _, lso) = fetch(&mut reader, 1).await;
        if lso == 2 {
            assert_eq!(values, vec![(0, "kept".to_string())]);
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the commit never became stable");
}

#[tokio::test]
async fn a_transaction_past_its_timeout_is_aborted_and_its_producer_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = BrokerConfig {
        transaction_timeout_check_interval: Duration::from_millis(100),
        ..config()
    };
    let (_b, addr) = broker_with_topic(dir.path(), memory(), cfg).await;
    let mut p = Client::connect(addr, "tx-timeout").await;
    let init = p.init(200).await;
    let (pid, epoch) = (init.producer_id.0, init.producer_epoch);
    assert_eq!(p.add_partition(pid, epoch).await, 0);
    assert_eq!(
        p.produce(txn_batch(pid, epoch, 0, &["slow"]))
            .await
            .error_code,
        0
    );
    let mut reader = TcpStream::connect(addr).await.unwrap();
    for _ in 0..100 {
        let (_, aborted, lso) = fetch(&mut reader, 1).await;
        if lso == 2 {
            assert_eq!(aborted, vec![0]);
            assert_eq!(
                p.end(pid, epoch, true).await,
                ResponseError::ProducerFenced.code()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the timed-out transaction was never aborted");
}

#[tokio::test]
async fn a_transaction_timeout_above_the_broker_maximum_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, addr) = broker_with_topic(dir.path(), memory(), config()).await;
    let mut p = Client::connect(addr, "tx-too-long").await;
    assert_eq!(
        p.init(900_001).await.error_code,
        ResponseError::InvalidTransactionTimeout.code()
    );
}

#[tokio::test]
async fn describe_and_list_transactions_show_an_ongoing_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, addr) = broker_with_topic(dir.path(), memory(), config()).await;
    let mut p = Client::connect(addr, "tx-describe").await;
    let init = p.init(60_000).await;
    let (pid, epoch) = (init.producer_id.0, init.producer_epoch);
    assert_eq!(p.add_partition(pid, epoch).await, 0);
    assert_eq!(
        p.produce(txn_batch(pid, epoch, 0, &["d"])).await.error_code,
        0
    );

    let req = DescribeTransactionsRequest::default()
        .with_transactional_ids(vec![TransactionalId(name("tx-describe"))]);
    let ResponseKind::DescribeTransactions(d) = call(
        &mut p.conn,
        ApiKey::DescribeTransactions,
        0,
        RequestKind::DescribeTransactions(req),
    )
    .await
    else {
        panic!("not a DescribeTransactions response");
    };
    let t = &d.transaction_states[0];
    assert_eq!((t.error_code, t.transaction_state.as_str()), (0, "Ongoing"));
    assert_eq!((t.producer_id.0, t.producer_epoch), (pid, epoch));
    assert_eq!(t.topics[0].topic.0.as_str(), TOPIC);

    let req = ListTransactionsRequest::default()
        .with_state_filters(vec![name("Ongoing"), name("Nonsense")])
        .with_duration_filter(-1);
    let ResponseKind::ListTransactions(l) = call(
        &mut p.conn,
        ApiKey::ListTransactions,
        1,
        RequestKind::ListTransactions(req),
    )
    .await
    else {
        panic!("not a ListTransactions response");
    };
    assert_eq!(l.error_code, 0);
    assert!(
        l.transaction_states
            .iter()
            .any(|t| t.transactional_id.0.as_str() == "tx-describe")
    );
    assert_eq!(l.unknown_state_filters, vec![name("Nonsense")]);

    let req = DescribeProducersRequest::default().with_topics(vec![
        describe_producers_request::TopicRequest::default()
            .with_name(TopicName(name(TOPIC)))
            .with_partition_indexes(vec![0]),
    ]);
    let ResponseKind::DescribeProducers(dp) = call(
        &mut p.conn,
        ApiKey::DescribeProducers,
        0,
        RequestKind::DescribeProducers(req),
    )
    .await
    else {
        panic!("not a DescribeProducers response");
    };
    let producers = &dp.topics[0].partitions[0].active_producers;
    assert_eq!(producers.len(), 1);
    assert_eq!(producers[0].producer_id.0, pid);
    assert_eq!(producers[0].last_sequence, 0);
    assert_eq!(producers[0].current_txn_start_offset, 0);
}

/// Commits `offset` for the group inside the producer's transaction.
async fn txn_offset_commit(c: &mut Client, pid: i64, epoch: i16, group: &str, offset: i64) -> i16 {
    let req = AddOffsetsToTxnRequest::default()
        .with_transactional_id(TransactionalId(name(&c.txn_id)))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
        .with_group_id(GroupId(name(group)));
    let ResponseKind::AddOffsetsToTxn(r) = call(
        &mut c.conn,
        ApiKey::AddOffsetsToTxn,
        3,
        RequestKind::AddOffsetsToTxn(req),
    )
    .await
    else {
        panic!("not an AddOffsetsToTxn response");
    };
    assert_eq!(r.error_code, 0);
    let req = TxnOffsetCommitRequest::default()
        .with_transactional_id(TransactionalId(name(&c.txn_id)))
        .with_group_id(GroupId(name(group)))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
        .with_generation_id(-1)
        .with_topics(vec![
            txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                .with_name(TopicName(name(TOPIC)))
                .with_partitions(vec![
                    txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(offset),
                ]),
        ]);
    let ResponseKind::TxnOffsetCommit(r) = call(
        &mut c.conn,
        ApiKey::TxnOffsetCommit,
        3,
        RequestKind::TxnOffsetCommit(req),
    )
    .await
    else {
        panic!("not a TxnOffsetCommit response");
    };
    r.topics[0].partitions[0].error_code
}

/// The group's committed offset of partition 0 (OffsetFetch v7, `require_stable`).
async fn stable_offset(conn: &mut TcpStream, group: &str) -> (i16, i64) {
    let req = OffsetFetchRequest::default()
        .with_group_id(GroupId(name(group)))
        .with_require_stable(true)
        .with_topics(Some(vec![
            offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(TopicName(name(TOPIC)))
                .with_partition_indexes(vec![0]),
        ]));
    let ResponseKind::OffsetFetch(r) =
        call(conn, ApiKey::OffsetFetch, 7, RequestKind::OffsetFetch(req)).await
    else {
        panic!("not an OffsetFetch response");
    };
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.committed_offset)
}

#[tokio::test]
async fn transactional_offsets_count_at_the_commit_and_are_unstable_until_then() {
    let dir = tempfile::tempdir().unwrap();
    let store = memory();
    let (b, addr) = broker_with_topic(dir.path(), store.clone(), config()).await;
    let mut p = Client::connect(addr, "tx-offsets").await;
    let init = p.init(60_000).await;
    let (pid, epoch) = (init.producer_id.0, init.producer_epoch);
    assert_eq!(
        txn_offset_commit(&mut p, pid, epoch, "eos-group", 42).await,
        0
    );
    let mut reader = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        stable_offset(&mut reader, "eos-group").await.0,
        ResponseError::UnstableOffsetCommit.code()
    );
    assert_eq!(p.end(pid, epoch, true).await, 0);
    let mut got = (-1, -1);
    for _ in 0..100 {
        got = stable_offset(&mut reader, "eos-group").await;
        if got.0 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(got, (0, 42));

    // An aborted transaction's offsets never count, and the committed one survives a restart.
    assert_eq!(
        txn_offset_commit(&mut p, pid, epoch, "eos-group", 99).await,
        0
    );
    assert_eq!(p.end(pid, epoch, false).await, 0);
    drop((p, reader));
    b.shutdown().await;
    let (_b, addr) = broker_with_topic(dir.path(), store, config()).await;
    let mut reader = TcpStream::connect(addr).await.unwrap();
    let mut got = (-1, -1);
    for _ in 0..100 {
        got = stable_offset(&mut reader, "eos-group").await;
        if got.0 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got, (0, 42));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cleaner_never_removes_a_tombstone_that_supersedes_a_transactional_value() {
    let dir = tempfile::tempdir().unwrap();
    let (b, addr) = start_broker_on(
        dir.path(),
        BrokerConfig {
            log_cleaner_backoff: Duration::ZERO,
            ..config()
        },
        memory(),
        StreamConfig {
            wal_batch_interval: Duration::from_millis(5),
            ..StreamConfig::default()
        },
    )
    .await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let configs = [("cleanup.policy", "compact"), ("delete.retention.ms", "0")];
    assert_eq!(create_topic_with(&mut c, TOPIC, 1, &configs).await, 0);
    // k=v1 written in a committed transaction, then a plain tombstone for k.
    let mut p = Client::connect(addr, "tx-clean").await;
    let init = p.init(60_000).await;
    let (pid, epoch) = (init.producer_id.0, init.producer_epoch);
    assert_eq!(p.add_partition(pid, epoch).await, 0);
    let v1 = txn_batch_keyed(pid, epoch, 0, "k", Some("v1"));
    assert_eq!(p.produce(v1).await.error_code, 0);
    assert_eq!(p.end(pid, epoch, true).await, 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (k, v) in [("k", None), ("other", Some("x")), ("tail", Some("y"))] {
        let r = produce(&mut c, TOPIC, plain_keyed(k, v)).await;
        assert_eq!(r.error_code, 0);
    }
    b.compact_now().await;
    // Read everything (read_uncommitted): the tombstone must still be there after v1, or
    // a reader of the compacted log would see k=v1 come back.
    let keys = fetch_keys(&mut c).await;
    let v1_at = keys
        .iter()
        .position(|(k, v)| k == "k" && v.as_deref() == Some("v1"));
    let tomb_at = keys.iter().position(|(k, v)| k == "k" && v.is_none());
    assert!(
        v1_at.is_none() || tomb_at.is_some_and(|t| Some(t) > v1_at),
        "{keys:?}"
    );
}

fn txn_batch_keyed(pid: i64, epoch: i16, seq: i32, key: &str, value: Option<&str>) -> Bytes {
    keyed(pid, epoch, seq, true, key, value)
}

fn plain_keyed(key: &str, value: Option<&str>) -> Bytes {
    keyed(-1, -1, -1, false, key, value)
}

fn keyed(
    pid: i64,
    epoch: i16,
    seq: i32,
    transactional: bool,
    key: &str,
    value: Option<&str>,
) -> Bytes {
    let records = [Record {
        transactional,
        control: false,
        partition_leader_epoch: 0,
        producer_id: pid,
        producer_epoch: epoch,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: seq,
        timestamp: now_ms() - 10_000,
        key: Some(Bytes::from(key.to_string())),
        value: value.map(|v| Bytes::from(v.to_string())),
        headers: Default::default(),
        delete_horizon: false,
    }];
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

/// (key, value) of every data record of the partition, read_uncommitted.
async fn fetch_keys(conn: &mut TcpStream) -> Vec<(String, Option<String>)> {
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            fetch_request::FetchTopic::default()
                .with_topic(TopicName(name(TOPIC)))
                .with_partitions(vec![
                    fetch_request::FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    let ResponseKind::Fetch(r) = call(conn, ApiKey::Fetch, 11, RequestKind::Fetch(req)).await
    else {
        panic!("not a Fetch response");
    };
    let mut out = Vec::new();
    if let Some(mut records) = r.responses[0].partitions[0].records.clone() {
        for set in RecordBatchDecoder::decode_all(&mut records).unwrap() {
            for rec in set.records.into_iter().filter(|r| !r.control) {
                let k = String::from_utf8(rec.key.unwrap_or_default().to_vec()).unwrap();
                let v = rec.value.map(|v| String::from_utf8(v.to_vec()).unwrap());
                out.push((k, v));
            }
        }
    }
    out
}

#[tokio::test]
async fn a_commit_prepared_but_not_marked_before_a_stop_is_completed_by_the_next_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let store = memory();
    let (b, addr) = broker_with_topic(dir.path(), store.clone(), config()).await;
    let mut p = Client::connect(addr, "tx-recover").await;
    let init = p.init(60_000).await;
    let (pid, epoch) = (init.producer_id.0, init.producer_epoch);
    assert_eq!(p.add_partition(pid, epoch).await, 0);
    assert_eq!(
        p.produce(txn_batch(pid, epoch, 0, &["r1", "r2"]))
            .await
            .error_code,
        0
    );
    // The PrepareCommit record becomes durable (EndTxn is answered); the node stops
    // before any marker is written, as a crash there would leave it.
    b.hold_transaction_markers(true);
    assert_eq!(p.end(pid, epoch, true).await, 0);
    let mut reader = TcpStream::connect(addr).await.unwrap();
    let (values, _, lso) = fetch(&mut reader, 1).await;
    assert!(values.is_empty() && lso == 0, "nothing is committed yet");
    drop((p, reader));
    b.shutdown().await;

    // The next coordinator finds PrepareCommit on load and writes the markers.
    let (_b, addr) = broker_with_topic(dir.path(), store, config()).await;
    let mut reader = TcpStream::connect(addr).await.unwrap();
    for _ in 0..200 {
        let (values, aborted, lso) = fetch(&mut reader, 1).await;
        if lso == 3 {
            assert!(aborted.is_empty());
            assert_eq!(values, vec![(0, "r1".to_string()), (1, "r2".to_string())]);
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the prepared commit was never completed after the restart");
}
