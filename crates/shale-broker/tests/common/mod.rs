//! An in-process broker for integration tests: a one-voter metadata quorum on a temporary
//! directory, an in-memory object store and a listener on a free loopback port.

#![allow(dead_code)] // each test binary uses its own subset

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use shale_broker::{Broker, BrokerConfig};
use shale_meta::{MetaConfig, MetaNode};
use shale_stream::{StreamConfig, StreamStore};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Starts a broker with `config` (its advertised port is set to the listener's).
pub async fn start_broker(
    dir: &std::path::Path,
    config: BrokerConfig,
) -> (Arc<Broker>, std::net::SocketAddr) {
    start_broker_on(
        dir,
        config,
        Arc::new(object_store::memory::InMemory::new()),
        StreamConfig {
            wal_batch_interval: Duration::from_millis(5),
            ..StreamConfig::default()
        },
    )
    .await
}

/// Starts a broker on `store` with the given stream settings.
pub async fn start_broker_on(
    dir: &std::path::Path,
    config: BrokerConfig,
    store: Arc<dyn object_store::ObjectStore>,
    stream_config: StreamConfig,
) -> (Arc<Broker>, std::net::SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let meta = MetaNode::start(MetaConfig {
        node_id: 1,
        data_dir: dir.join("meta"),
        rpc_addr: addr.to_string(),
        voters: Default::default(),
    })
    .await
    .unwrap();
    let streams = StreamStore::start(store, meta.catalog(), stream_config);
    let broker = Broker::start(
        BrokerConfig {
            advertised_port: addr.port(),
            ..config
        },
        meta,
        streams,
    )
    .await
    .unwrap();
    let b = broker.clone();
    tokio::spawn(async move { b.serve(listener).await });
    (broker, addr)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn name(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

pub async fn call(
    conn: &mut TcpStream,
    api: ApiKey,
    version: i16,
    body: RequestKind,
) -> ResponseKind {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(name("broker-test")))
        .encode(&mut buf, api.request_header_version(version))
        .unwrap();
    body.encode(&mut buf, version).unwrap();
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    conn.write_all(&buf).await.unwrap();
    let size = tokio::time::timeout(Duration::from_secs(10), conn.read_i32())
        .await
        .unwrap()
        .unwrap();
    let mut frame = vec![0u8; size as usize];
    conn.read_exact(&mut frame).await.unwrap();
    let mut frame = Bytes::from(frame);
    ResponseHeader::decode(&mut frame, api.response_header_version(version)).unwrap();
    ResponseKind::decode(api, &mut frame, version).unwrap()
}

/// Creates a one-partition topic with `configs`; fails the test on any error.
pub async fn create_topic(conn: &mut TcpStream, topic: &str, configs: &[(&str, &str)]) {
    assert_eq!(
        create_topic_with(conn, topic, 1, configs).await,
        0,
        "creating {topic}"
    );
}

/// Creates a topic; returns the CreateTopics error code (0 on success).
pub async fn create_topic_with(
    conn: &mut TcpStream,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> i16 {
    let t = create_topics_request::CreatableTopic::default()
        .with_name(TopicName(name(topic)))
        .with_num_partitions(partitions)
        .with_replication_factor(1)
        .with_configs(
            configs
                .iter()
                .map(|(k, v)| {
                    create_topics_request::CreatableTopicConfig::default()
                        .with_name(name(k))
                        .with_value(Some(name(v)))
                })
                .collect(),
        );
    create_one(conn, t).await
}

/// Sends a CreateTopics v5 of `t` alone; its error code.
async fn create_one(conn: &mut TcpStream, t: create_topics_request::CreatableTopic) -> i16 {
    let req = CreateTopicsRequest::default()
        .with_topics(vec![t])
        .with_timeout_ms(5000);
    let ResponseKind::CreateTopics(r) = call(
        conn,
        ApiKey::CreateTopics,
        5,
        RequestKind::CreateTopics(req),
    )
    .await
    else {
        panic!("not a CreateTopics response");
    };
    r.topics[0].error_code
}

/// Creates `topic` with one partition assigned to broker `owner` (a manual assignment: the
/// first replica owns it); without one, partitions spread over the live brokers.
pub async fn create_topic_on(conn: &mut TcpStream, topic: &str, owner: i32) -> i16 {
    let t = create_topics_request::CreatableTopic::default()
        .with_name(TopicName(name(topic)))
        .with_num_partitions(-1)
        .with_replication_factor(-1)
        .with_assignments(vec![
            create_topics_request::CreatableReplicaAssignment::default()
                .with_partition_index(0)
                .with_broker_ids(vec![kafka_protocol::messages::BrokerId(owner)]),
        ]);
    create_one(conn, t).await
}

pub async fn produce(
    conn: &mut TcpStream,
    topic: &str,
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
                        .with_index(0)
                        .with_records(Some(records)),
                ]),
        ]);
    let ResponseKind::Produce(r) = call(conn, ApiKey::Produce, 9, RequestKind::Produce(req)).await
    else {
        panic!("not a Produce response");
    };
    r.responses[0].partition_responses[0].clone()
}

/// One plain (no producer id) record batch holding `value`, no key.
pub fn plain_record(value: &str) -> Bytes {
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
        timestamp: now_ms(),
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

/// Broker `node_id` of a cluster in one process: it shares `meta` (one metadata quorum) and
/// `store` (one bucket) with the other members, one `__consumer_offsets` and one
/// `__transaction_state` partition, which the first member to start owns.
pub async fn start_member(
    meta: &Arc<shale_meta::MetaNode>,
    store: &Arc<dyn object_store::ObjectStore>,
    node_id: i32,
) -> (Arc<shale_broker::Broker>, std::net::SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let streams = shale_stream::StreamStore::start(
        store.clone(),
        meta.catalog(),
        shale_stream::StreamConfig {
            node_id: node_id as u64,
            wal_batch_interval: Duration::from_millis(5),
            ..shale_stream::StreamConfig::default()
        },
    );
    let broker = shale_broker::Broker::start(
        shale_broker::BrokerConfig {
            node_id,
            advertised_port: addr.port(),
            offsets_topic_num_partitions: 1,
            transaction_state_num_partitions: 1,
            ..shale_broker::BrokerConfig::default()
        },
        meta.clone(),
        streams,
    )
    .await
    .unwrap();
    let b = broker.clone();
    tokio::spawn(async move { b.serve(listener).await });
    (broker, addr)
}
