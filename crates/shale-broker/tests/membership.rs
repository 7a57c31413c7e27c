//! A broker as a member of a cluster: two brokers on one metadata quorum and one bucket, in
//! one process. When the controller fences one, its partitions move to the other, which
//! opens them at once (no client has to ask) and continues their offsets; the fenced one
//! answers NOT_LEADER_OR_FOLLOWER for them and registers again with a new broker epoch.

mod common;

use common::{create_topic_on, plain_record, produce, start_member};
use kafka_protocol::error::ResponseError;
use shale_meta::{MetaConfig, MetaNode};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_brokers_partitions_are_opened_by_their_new_owner_which_continues_their_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let meta = MetaNode::start(MetaConfig {
        node_id: 1,
        data_dir: dir.path().join("meta"),
        rpc_addr: "127.0.0.1:0".into(),
        voters: Default::default(),
    })
    .await
    .unwrap();
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let (b1, a1) = start_member(&meta, &store, 1).await;
    let (b2, a2) = start_member(&meta, &store, 2).await;
    let mut c1 = TcpStream::connect(a1).await.unwrap();
    let mut c2 = TcpStream::connect(a2).await.unwrap();
    assert_eq!(create_topic_on(&mut c1, "moving", 1).await, 0);
    let r = produce(&mut c1, "moving", plain_record("before")).await;
    assert_eq!((r.error_code, r.base_offset), (0, 0));
    assert!(b2.producer_state_loaded_from("moving", 0).is_none());

    let epoch = meta.read(|s| s.brokers[&1].epoch);
    meta.fence_broker(1, epoch).await.unwrap();
    let owner = || meta.read(|s| s.topics["moving"].partitions[0].owner);
    eventually("the partition moves to broker 2", || owner() == 2).await;
    // Broker 2 opens it without any request for it.
    eventually("broker 2 opens the partition", || {
        b2.producer_state_loaded_from("moving", 0).is_some()
    })
    .await;
    let r = produce(&mut c2, "moving", plain_record("after")).await;
    assert_eq!((r.error_code, r.base_offset), (0, 1), "offsets continue");
    let r = produce(&mut c1, "moving", plain_record("zombie")).await;
    assert_eq!(r.error_code, ResponseError::NotLeaderOrFollower.code());
    // KIP-951: from Produce v10 and Fetch v12 (endpoints from v16) the refusal names the
    // new leader, at the epoch its open gave the partition, and where to reach it.
    let epoch_now = meta.read(|s| {
        let sid = s.topics["moving"].partitions[0].stream_id;
        s.streams[&sid].epoch as i32
    });
    let (leader, endpoints) = produce_v11(&mut c1, "moving").await;
    assert_eq!((leader.leader_id.0, leader.leader_epoch), (2, epoch_now));
    assert_eq!(
        endpoints,
        vec![(
            2,
            b2.config.advertised_host.clone(),
            i32::from(b2.config.advertised_port)
        )]
    );
    let (code, leader, endpoints) = fetch_v16(&mut c1, &meta, "moving").await;
    assert_eq!(code, ResponseError::NotLeaderOrFollower.code());
    assert_eq!((leader.leader_id.0, leader.leader_epoch), (2, epoch_now));
    assert_eq!(
        endpoints,
        vec![(
            2,
            b2.config.advertised_host.clone(),
            i32::from(b2.config.advertised_port)
        )]
    );
    // Broker 1 heard it was fenced and registered again, at a higher epoch.
    eventually("broker 1 registered again", || {
        meta.read(|s| !s.brokers[&1].fenced && s.brokers[&1].epoch > epoch)
    })
    .await;
    assert_eq!(owner(), 2, "its partitions stay where they moved");
    b1.shutdown().await;
    b2.shutdown().await;
}

/// A Produce v11 of one record to partition 0: the partition's current leader and the
/// response's node endpoints (id, host, port).
async fn produce_v11(
    conn: &mut TcpStream,
    topic: &str,
) -> (
    kafka_protocol::messages::produce_response::LeaderIdAndEpoch,
    Vec<(i32, String, i32)>,
) {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestKind, ResponseKind, TopicName};
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(common::name(topic)))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(plain_record("zombie"))),
                ]),
        ]);
    let ResponseKind::Produce(r) =
        common::call(conn, ApiKey::Produce, 11, RequestKind::Produce(req)).await
    else {
        panic!("not a Produce response");
    };
    let p = &r.responses[0].partition_responses[0];
    assert_eq!(p.error_code, ResponseError::NotLeaderOrFollower.code());
    let endpoints = r
        .node_endpoints
        .iter()
        .map(|e| (e.node_id.0, e.host.to_string(), e.port))
        .collect();
    (p.current_leader.clone(), endpoints)
}

/// A Fetch v16 (topics by id) of partition 0: its error, current leader and the response's
/// node endpoints.
async fn fetch_v16(
    conn: &mut TcpStream,
    meta: &MetaNode,
    topic: &str,
) -> (
    i16,
    kafka_protocol::messages::fetch_response::LeaderIdAndEpoch,
    Vec<(i32, String, i32)>,
) {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{ApiKey, FetchRequest, RequestKind, ResponseKind};
    let id = meta.read(|s| s.topics[topic].id);
    let req = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic_id(uuid::Uuid::from_bytes(id))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    let ResponseKind::Fetch(r) =
        common::call(conn, ApiKey::Fetch, 16, RequestKind::Fetch(req)).await
    else {
        panic!("not a Fetch response");
    };
    let p = &r.responses[0].partitions[0];
    let endpoints = r
        .node_endpoints
        .iter()
        .map(|e| (e.node_id.0, e.host.to_string(), e.port))
        .collect();
    (p.error_code, p.current_leader.clone(), endpoints)
}
