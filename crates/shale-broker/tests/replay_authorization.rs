//! Replay authorization through a real broker: on a topic with `replay.window.ms`, fetching
//! from before the window and committing a group's offset backwards take READ on
//! `Topic:__replay.<topic>`; every refusal is audited. A plaintext connection is
//! `User:ANONYMOUS`, which the ACLs written here grant what each case needs.

mod common;

use bytes::{Bytes, BytesMut};
use common::{call, name, now_ms};
use kafka_protocol::messages::*;
use shale_broker::{Broker, BrokerConfig};
use shale_meta::AclEntryMeta;
use shale_security::acl::AuthorizerConfig;
use shale_security::audit::{AuditConfig, AuditSink, Auditor, Chain, FileSink, Source};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

const TOPIC: i8 = 2;
const GROUP: i8 = 3;
const CLUSTER: i8 = 4;
const LITERAL: i8 = 3;
const PREFIXED: i8 = 4;
const ALL: i8 = 2;
const READ: i8 = 3;
const CREATE: i8 = 5;

const DENIED: i16 = 29; // TOPIC_AUTHORIZATION_FAILED
const NOT_YET: i16 = 78; // OFFSET_NOT_AVAILABLE
const HOUR_MS: i64 = 3_600_000;
const OLD_VALUE: &str = "old-payload-7f3a";
const NEW_VALUE: &str = "new-payload-9c2b";

fn acl(resource_type: i8, resource: &str, pattern: i8, operation: i8) -> AclEntryMeta {
    AclEntryMeta {
        resource_type,
        resource_name: resource.into(),
        pattern_type: pattern,
        principal: "User:ANONYMOUS".into(),
        host: "*".into(),
        operation,
        permission: 3, // allow
    }
}

struct Node {
    broker: Arc<Broker>,
    conn: TcpStream,
    auditor: Auditor,
    audit_log: std::path::PathBuf,
}

/// A broker with ACLs and an audit file; "hist" has a one-minute replay window, "plain" none.
/// Each holds a record an hour old (offset 0) and a new one (offset 1). ANONYMOUS may do
/// anything on both topics and on group "g", and nothing on `__replay.*`.
async fn node(dir: &std::path::Path) -> Node {
    let audit_log = dir.join("audit.log");
    let sinks: Vec<Box<dyn AuditSink>> = vec![Box::new(FileSink::open(&audit_log).await.unwrap())];
    let auditor = Auditor::start(
        &AuditConfig {
            enabled: true,
            ..AuditConfig::default()
        },
        Chain::new(&Source::node("test", 1)),
        sinks,
    );
    let (broker, addr) = common::start_broker(
        dir,
        BrokerConfig {
            authorizer: Some(AuthorizerConfig::default()),
            auditor: auditor.clone(),
            ..BrokerConfig::default()
        },
    )
    .await;
    let mut acls = vec![acl(CLUSTER, "kafka-cluster", LITERAL, CREATE)];
    for t in ["hist", "plain"] {
        acls.push(acl(TOPIC, t, LITERAL, ALL));
    }
    acls.push(acl(GROUP, "g", LITERAL, ALL));
    broker.meta.create_acls(acls).await.unwrap();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    common::create_topic(&mut conn, "hist", &[("replay.window.ms", "60000")]).await;
    common::create_topic(&mut conn, "plain", &[]).await;
    for t in ["hist", "plain"] {
        for (value, ts) in [(OLD_VALUE, now_ms() - HOUR_MS), (NEW_VALUE, now_ms())] {
            let p = common::produce(&mut conn, t, record_at(value, ts)).await;
            assert_eq!(p.error_code, 0, "producing to {t}");
        }
    }
    Node {
        broker,
        conn,
        auditor,
        audit_log,
    }
}

fn record_at(value: &str, timestamp: i64) -> Bytes {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
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
        key: None,
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

/// Fetches partition 0 of `topic` from `offset`: (error code, whether records came back).
/// OFFSET_NOT_AVAILABLE (the boundary is being looked up) is retried, as clients do.
async fn fetch(conn: &mut TcpStream, topic: &str, offset: i64) -> (i16, bool) {
    let req = FetchRequest::default()
        .with_max_wait_ms(50)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            fetch_request::FetchTopic::default()
                .with_topic(TopicName(name(topic)))
                .with_partitions(vec![
                    fetch_request::FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(offset)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ResponseKind::Fetch(r) =
            call(conn, ApiKey::Fetch, 12, RequestKind::Fetch(req.clone())).await
        else {
            panic!("not a Fetch response");
        };
        let p = r
            .responses
            .iter()
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == 0)
            .expect("partition 0 answered");
        let got = p.records.as_ref().is_some_and(|r| !r.is_empty());
        if p.error_code != NOT_YET || tokio::time::Instant::now() > deadline {
            return (p.error_code, got);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn commit(conn: &mut TcpStream, topic: &str, offset: i64) -> i16 {
    let req = OffsetCommitRequest::default()
        .with_group_id(GroupId(name("g")))
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ResponseKind::OffsetCommit(r) = call(
            conn,
            ApiKey::OffsetCommit,
            8,
            RequestKind::OffsetCommit(req.clone()),
        )
        .await
        else {
            panic!("not an OffsetCommit response");
        };
        let code = r.topics[0].partitions[0].error_code;
        // The offsets partition may still be loading just after start-up.
        let retriable = code == 14 || code == 15 || code == 16;
        if !retriable || tokio::time::Instant::now() > deadline {
            return code;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn committed(conn: &mut TcpStream, topic: &str) -> i64 {
    let req = OffsetFetchRequest::default()
        .with_group_id(GroupId(name("g")))
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
    r.topics[0].partitions[0].committed_offset
}

async fn grant_replay(broker: &Broker, resource: &str, pattern: i8) {
    broker
        .meta
        .create_acls(vec![acl(TOPIC, resource, pattern, READ)])
        .await
        .unwrap();
}

/// The audit file's lines, once the auditor has written what it was given.
async fn audit_lines(n: &Node) -> Vec<String> {
    n.auditor.flush().await.unwrap();
    std::fs::read_to_string(&n.audit_log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetching_from_before_the_window_needs_read_on_the_replay_resource() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = node(dir.path()).await;
    assert_eq!(fetch(&mut n.conn, "hist", 0).await, (DENIED, false));
    assert_eq!(
        fetch(&mut n.conn, "hist", 1).await,
        (0, true),
        "in the window"
    );
    assert_eq!(
        fetch(&mut n.conn, "hist", 2).await,
        (0, false),
        "at the end"
    );
    assert_eq!(
        fetch(&mut n.conn, "plain", 0).await,
        (0, true),
        "a topic without a window is not restricted"
    );
    grant_replay(&n.broker, "__replay.hist", LITERAL).await;
    assert_eq!(fetch(&mut n.conn, "hist", 0).await, (0, true));
    n.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefixed_grant_on_the_replay_prefix_covers_every_topic() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = node(dir.path()).await;
    grant_replay(&n.broker, "__replay.", PREFIXED).await;
    assert_eq!(fetch(&mut n.conn, "hist", 0).await, (0, true));
    n.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committing_backwards_needs_the_replay_grant_and_leaves_the_offset_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = node(dir.path()).await;
    assert_eq!(commit(&mut n.conn, "hist", 2).await, 0, "a first commit");
    assert_eq!(commit(&mut n.conn, "hist", 0).await, DENIED);
    assert_eq!(committed(&mut n.conn, "hist").await, 2);
    assert_eq!(commit(&mut n.conn, "plain", 2).await, 0);
    assert_eq!(
        commit(&mut n.conn, "plain", 0).await,
        0,
        "a topic without a window is not restricted"
    );
    grant_replay(&n.broker, "__replay.hist", LITERAL).await;
    assert_eq!(commit(&mut n.conn, "hist", 0).await, 0);
    assert_eq!(committed(&mut n.conn, "hist").await, 0);
    n.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replay_denial_is_audited_on_the_replay_resource() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = node(dir.path()).await;
    assert_eq!(fetch(&mut n.conn, "hist", 0).await.0, DENIED);
    assert_eq!(commit(&mut n.conn, "hist", 2).await, 0);
    assert_eq!(commit(&mut n.conn, "hist", 1).await, DENIED);
    let lines = audit_lines(&n).await;
    let denials: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["type"] == "io.shale.audit.authorization")
        .map(|e| e["data"].clone())
        .collect();
    let on_replay = |api: &str| {
        denials
            .iter()
            .find(|d| d["api"]["name"] == api && d["resource"]["name"] == "__replay.hist")
            .unwrap_or_else(|| panic!("no {api} replay denial in {denials:#?}"))
            .clone()
    };
    let fetch = on_replay("Fetch");
    assert_eq!(fetch["resource"]["type"], "Topic");
    assert_eq!(fetch["operation"], "Read");
    assert_eq!(fetch["outcome"], "denied");
    assert_eq!(fetch["principal"], "User:ANONYMOUS");
    let reason = fetch["reason"].as_str().unwrap();
    assert!(
        reason.contains("replay of partition 0 from offset 0 (boundary 1)"),
        "{reason}"
    );
    let commit = on_replay("OffsetCommit");
    let reason = commit["reason"].as_str().unwrap();
    assert!(
        reason.contains("group g moves partition 0 back from 2 to 1"),
        "{reason}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(OLD_VALUE) || l.contains(NEW_VALUE)),
        "no record value is ever audited"
    );
    n.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_topic_can_take_the_name_of_a_replay_grant() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = node(dir.path()).await;
    let code = common::create_topic_with(&mut n.conn, "__replay.hist", 1, &[]).await;
    assert_eq!(code, 17, "INVALID_TOPIC_EXCEPTION");
    n.broker.shutdown().await;
}
