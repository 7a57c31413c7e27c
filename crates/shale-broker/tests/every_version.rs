//! Every advertised API answers at every advertised version: a request of that version gets a
//! response that decodes at that version with the same correlation id. The `kafka-protocol`
//! codecs refuse to encode fields a version does not have, so this catches handlers that set
//! a field an older client cannot receive.

mod common;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use shale_broker::{Broker, BrokerConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOPIC: &str = "t";

async fn start_broker(dir: &std::path::Path) -> (Arc<Broker>, std::net::SocketAddr) {
    common::start_broker(
        dir,
        BrokerConfig {
            offsets_topic_num_partitions: 2,
            group_initial_rebalance_delay: Duration::ZERO,
            ..BrokerConfig::default()
        },
    )
    .await
}

fn name(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn batch() -> Bytes {
    let records = [Record {
        transactional: false,
        control: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: 1_700_000_000_000,
        key: Some(Bytes::from_static(b"k")),
        value: Some(Bytes::from_static(b"v")),
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

/// A typical request of each API, touching topic `t` partition 0 or group `g`.
fn sample(api: ApiKey, version: i16, topic_id: uuid::Uuid) -> RequestKind {
    let t = TopicName(name(TOPIC));
    let g = GroupId(name("g"));
    match api {
        ApiKey::Produce => RequestKind::Produce(
            ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(5000)
                .with_topic_data(vec![
                    produce_request::TopicProduceData::default()
                        .with_name(t)
                        .with_topic_id(topic_id)
                        .with_partition_data(vec![
                            produce_request::PartitionProduceData::default()
                                .with_index(0)
                                .with_records(Some(batch())),
                        ]),
                ]),
        ),
        ApiKey::Fetch => RequestKind::Fetch(
            FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(10)
                .with_max_bytes(1 << 20)
                .with_session_epoch(-1)
                .with_topics(vec![
                    fetch_request::FetchTopic::default()
                        .with_topic(if version < 13 {
                            t
                        } else {
                            TopicName::default()
                        })
                        .with_topic_id(if version >= 13 {
                            topic_id
                        } else {
                            uuid::Uuid::nil()
                        })
                        .with_partitions(vec![
                            fetch_request::FetchPartition::default()
                                .with_partition(0)
                                .with_partition_max_bytes(1 << 20),
                        ]),
                ]),
        ),
        ApiKey::ListOffsets => RequestKind::ListOffsets(
            ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![
                    list_offsets_request::ListOffsetsTopic::default()
                        .with_name(t)
                        .with_partitions(vec![
                            list_offsets_request::ListOffsetsPartition::default()
                                .with_partition_index(0)
                                .with_timestamp(0),
                        ]),
                ]),
        ),
        ApiKey::Metadata => {
            RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
                metadata_request::MetadataRequestTopic::default().with_name(Some(t)),
            ])))
        }
        ApiKey::ApiVersions => RequestKind::ApiVersions(
            ApiVersionsRequest::default()
                .with_client_software_name(name("test"))
                .with_client_software_version(name("1")),
        ),
        ApiKey::CreateTopics => RequestKind::CreateTopics(
            CreateTopicsRequest::default()
                .with_timeout_ms(5000)
                .with_topics(vec![
                    create_topics_request::CreatableTopic::default()
                        .with_name(TopicName(name(&format!("created-v{version}"))))
                        .with_num_partitions(1)
                        .with_replication_factor(1),
                ]),
        ),
        ApiKey::DeleteTopics => RequestKind::DeleteTopics(if version < 6 {
            DeleteTopicsRequest::default().with_topic_names(vec![TopicName(name("missing"))])
        } else {
            DeleteTopicsRequest::default().with_topics(vec![
                delete_topics_request::DeleteTopicState::default()
                    .with_name(Some(TopicName(name("missing")))),
            ])
        }),
        ApiKey::DeleteRecords => {
            RequestKind::DeleteRecords(DeleteRecordsRequest::default().with_topics(vec![
                delete_records_request::DeleteRecordsTopic::default()
                    .with_name(t)
                    .with_partitions(vec![
                        delete_records_request::DeleteRecordsPartition::default()
                            .with_partition_index(0)
                            .with_offset(0),
                    ]),
            ]))
        }
        ApiKey::OffsetForLeaderEpoch => RequestKind::OffsetForLeaderEpoch(
            OffsetForLeaderEpochRequest::default().with_topics(vec![
                offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                    .with_topic(t)
                    .with_partitions(vec![
                        offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                            .with_partition(0)
                            .with_leader_epoch(0),
                    ]),
            ]),
        ),
        ApiKey::DescribeConfigs => {
            RequestKind::DescribeConfigs(DescribeConfigsRequest::default().with_resources(vec![
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(name(TOPIC)),
            ]))
        }
        ApiKey::AlterConfigs => {
            RequestKind::AlterConfigs(AlterConfigsRequest::default().with_resources(vec![
                alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(name(TOPIC)),
            ]))
        }
        ApiKey::IncrementalAlterConfigs => RequestKind::IncrementalAlterConfigs(
            IncrementalAlterConfigsRequest::default().with_resources(vec![
                incremental_alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(name(TOPIC)),
            ]),
        ),
        ApiKey::CreatePartitions => {
            RequestKind::CreatePartitions(CreatePartitionsRequest::default().with_topics(vec![
                create_partitions_request::CreatePartitionsTopic::default()
                    .with_name(t)
                    .with_count(1),
            ]))
        }
        ApiKey::DescribeCluster => {
            RequestKind::DescribeCluster(DescribeClusterRequest::default().with_endpoint_type(1))
        }
        ApiKey::FindCoordinator => RequestKind::FindCoordinator(if version < 4 {
            FindCoordinatorRequest::default().with_key(name("g"))
        } else {
            FindCoordinatorRequest::default().with_coordinator_keys(vec![name("g")])
        }),
        ApiKey::JoinGroup => RequestKind::JoinGroup(
            // A group of its own per version: a second member joining a stable group waits
            // (correctly) for the first one to rejoin.
            JoinGroupRequest::default()
                .with_group_id(GroupId(name(&format!("join-v{version}"))))
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(10_000)
                .with_protocol_type(name("consumer"))
                .with_protocols(vec![
                    join_group_request::JoinGroupRequestProtocol::default()
                        .with_name(name("range")),
                ]),
        ),
        ApiKey::SyncGroup => RequestKind::SyncGroup(
            SyncGroupRequest::default()
                .with_group_id(g)
                .with_member_id(name("nobody"))
                .with_protocol_type(Some(name("consumer")))
                .with_protocol_name(Some(name("range"))),
        ),
        ApiKey::Heartbeat => RequestKind::Heartbeat(
            HeartbeatRequest::default()
                .with_group_id(g)
                .with_member_id(name("nobody")),
        ),
        ApiKey::LeaveGroup => RequestKind::LeaveGroup(if version < 3 {
            LeaveGroupRequest::default()
                .with_group_id(g)
                .with_member_id(name("nobody"))
        } else {
            LeaveGroupRequest::default()
                .with_group_id(g)
                .with_members(vec![
                    leave_group_request::MemberIdentity::default().with_member_id(name("nobody")),
                ])
        }),
        ApiKey::OffsetCommit => RequestKind::OffsetCommit(
            OffsetCommitRequest::default()
                .with_group_id(g)
                .with_generation_id_or_member_epoch(-1)
                .with_topics(vec![
                    offset_commit_request::OffsetCommitRequestTopic::default()
                        .with_name(t)
                        .with_partitions(vec![
                            offset_commit_request::OffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(0)
                                .with_committed_metadata(Some(name("m"))),
                        ]),
                ]),
        ),
        ApiKey::OffsetFetch => RequestKind::OffsetFetch(if version < 8 {
            // v1 cannot ask for all partitions: name the one committed above.
            OffsetFetchRequest::default()
                .with_group_id(g)
                .with_topics(Some(vec![
                    offset_fetch_request::OffsetFetchRequestTopic::default()
                        .with_name(t)
                        .with_partition_indexes(vec![0]),
                ]))
        } else {
            OffsetFetchRequest::default().with_groups(vec![
                offset_fetch_request::OffsetFetchRequestGroup::default()
                    .with_group_id(g)
                    .with_topics(None),
            ])
        }),
        ApiKey::ListGroups => RequestKind::ListGroups(ListGroupsRequest::default()),
        ApiKey::DescribeGroups => {
            RequestKind::DescribeGroups(DescribeGroupsRequest::default().with_groups(vec![g]))
        }
        ApiKey::DeleteGroups => {
            RequestKind::DeleteGroups(DeleteGroupsRequest::default().with_groups_names(vec![g]))
        }
        ApiKey::OffsetDelete => {
            RequestKind::OffsetDelete(OffsetDeleteRequest::default().with_group_id(g).with_topics(
                vec![
                offset_delete_request::OffsetDeleteRequestTopic::default()
                    .with_name(t)
                    .with_partitions(vec![
                        offset_delete_request::OffsetDeleteRequestPartition::default()
                            .with_partition_index(0),
                    ]),
            ],
            ))
        }
        ApiKey::InitProducerId => RequestKind::InitProducerId(
            InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(60_000),
        ),
        ApiKey::AddPartitionsToTxn => RequestKind::AddPartitionsToTxn(
            AddPartitionsToTxnRequest::default()
                .with_v3_and_below_transactional_id(TransactionalId(name("tx")))
                .with_v3_and_below_producer_id(ProducerId(1))
                .with_v3_and_below_topics(vec![
                    add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                        .with_name(t.clone())
                        .with_partitions(vec![0]),
                ])
                .with_transactions(vec![
                    add_partitions_to_txn_request::AddPartitionsToTxnTransaction::default()
                        .with_transactional_id(TransactionalId(name("tx")))
                        .with_producer_id(ProducerId(1))
                        .with_verify_only(true)
                        .with_topics(vec![
                            add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                                .with_name(t.clone())
                                .with_partitions(vec![0]),
                        ]),
                ]),
        ),
        ApiKey::AddOffsetsToTxn => RequestKind::AddOffsetsToTxn(
            AddOffsetsToTxnRequest::default()
                .with_transactional_id(TransactionalId(name("tx")))
                .with_producer_id(ProducerId(1))
                .with_group_id(g),
        ),
        ApiKey::EndTxn => RequestKind::EndTxn(
            EndTxnRequest::default()
                .with_transactional_id(TransactionalId(name("tx")))
                .with_producer_id(ProducerId(1))
                .with_committed(true),
        ),
        ApiKey::TxnOffsetCommit => RequestKind::TxnOffsetCommit(
            TxnOffsetCommitRequest::default()
                .with_transactional_id(TransactionalId(name("tx")))
                .with_group_id(g)
                .with_producer_id(ProducerId(1))
                .with_generation_id(-1)
                .with_topics(vec![
                    txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                        .with_name(t)
                        .with_partitions(vec![
                            txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(1),
                        ]),
                ]),
        ),
        ApiKey::DescribeProducers => {
            RequestKind::DescribeProducers(DescribeProducersRequest::default().with_topics(vec![
                describe_producers_request::TopicRequest::default()
                    .with_name(t)
                    .with_partition_indexes(vec![0]),
            ]))
        }
        ApiKey::DescribeTransactions => RequestKind::DescribeTransactions(
            DescribeTransactionsRequest::default()
                .with_transactional_ids(vec![TransactionalId(name("tx"))]),
        ),
        ApiKey::ListTransactions => RequestKind::ListTransactions(
            ListTransactionsRequest::default().with_duration_filter(-1),
        ),
        ApiKey::WriteTxnMarkers => {
            RequestKind::WriteTxnMarkers(WriteTxnMarkersRequest::default().with_markers(vec![
                write_txn_markers_request::WritableTxnMarker::default()
                    .with_producer_id(ProducerId(1))
                    .with_producer_epoch(0)
                    .with_transaction_result(false)
                    .with_topics(vec![
                        write_txn_markers_request::WritableTxnMarkerTopic::default()
                            .with_name(t)
                            .with_partition_indexes(vec![0]),
                    ]),
            ]))
        }
        // On this plaintext listener both are answered ILLEGAL_SASL_STATE (and the connection
        // stays), as Kafka does.
        ApiKey::SaslHandshake => RequestKind::SaslHandshake(
            SaslHandshakeRequest::default().with_mechanism(name("PLAIN")),
        ),
        ApiKey::SaslAuthenticate => RequestKind::SaslAuthenticate(
            SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"\0u\0p")),
        ),
        ApiKey::DescribeUserScramCredentials => RequestKind::DescribeUserScramCredentials(
            DescribeUserScramCredentialsRequest::default().with_users(None),
        ),
        ApiKey::AlterUserScramCredentials => RequestKind::AlterUserScramCredentials(
            AlterUserScramCredentialsRequest::default().with_upsertions(vec![
                alter_user_scram_credentials_request::ScramCredentialUpsertion::default()
                    .with_name(name("u"))
                    .with_mechanism(1)
                    .with_iterations(4096)
                    .with_salt(Bytes::from_static(b"salt"))
                    .with_salted_password(Bytes::from_static(&[7; 32])),
            ]),
        ),
        ApiKey::CreateAcls => {
            RequestKind::CreateAcls(CreateAclsRequest::default().with_creations(vec![
                create_acls_request::AclCreation::default()
                    .with_resource_type(2)
                    .with_resource_name(name(TOPIC))
                    .with_resource_pattern_type(3)
                    .with_principal(name("User:u"))
                    .with_host(name("*"))
                    .with_operation(3)
                    .with_permission_type(3),
            ]))
        }
        ApiKey::DescribeAcls => RequestKind::DescribeAcls(
            DescribeAclsRequest::default()
                .with_resource_type_filter(1)
                .with_pattern_type_filter(1)
                .with_operation(1)
                .with_permission_type(1),
        ),
        ApiKey::DeleteAcls => {
            RequestKind::DeleteAcls(DeleteAclsRequest::default().with_filters(vec![
                delete_acls_request::DeleteAclsFilter::default()
                    .with_resource_type_filter(2)
                    .with_resource_name_filter(Some(name("nothing")))
                    .with_pattern_type_filter(3)
                    .with_operation(1)
                    .with_permission_type(1),
            ]))
        }
        ApiKey::DescribeClientQuotas => RequestKind::DescribeClientQuotas(
            DescribeClientQuotasRequest::default().with_components(vec![
                describe_client_quotas_request::ComponentData::default()
                    .with_entity_type(name("user"))
                    .with_match_type(2),
            ]),
        ),
        ApiKey::AlterClientQuotas => {
            RequestKind::AlterClientQuotas(AlterClientQuotasRequest::default().with_entries(vec![
                alter_client_quotas_request::EntryData::default()
                    .with_entity(vec![
                        alter_client_quotas_request::EntityData::default()
                            .with_entity_type(name("client-id"))
                            .with_entity_name(Some(name("every-version"))),
                    ])
                    .with_ops(vec![
                        alter_client_quotas_request::OpData::default()
                            .with_key(name("producer_byte_rate"))
                            .with_value(1e9),
                    ]),
            ]))
        }
        other => panic!("no sample request for {other:?}: add one when advertising it"),
    }
}

async fn roundtrip(
    conn: &mut TcpStream,
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &RequestKind,
) -> Result<ResponseKind, String> {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(name("every-version")))
        .encode(&mut buf, api.request_header_version(version))
        .map_err(|e| format!("encoding request header: {e}"))?;
    body.encode(&mut buf, version)
        .map_err(|e| format!("client-side encode: {e}"))?;
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    conn.write_all(&buf).await.map_err(|e| e.to_string())?;
    let size = tokio::time::timeout(Duration::from_secs(10), conn.read_i32())
        .await
        .map_err(|_| "no response within 10 s".to_string())?
        .map_err(|e| format!("connection closed: {e}"))?;
    let mut frame = vec![0u8; size as usize];
    conn.read_exact(&mut frame)
        .await
        .map_err(|e| e.to_string())?;
    let mut frame = Bytes::from(frame);
    let header = ResponseHeader::decode(&mut frame, api.response_header_version(version))
        .map_err(|e| format!("response header: {e}"))?;
    assert_eq!(header.correlation_id, correlation_id);
    let resp = ResponseKind::decode(api, &mut frame, version)
        .map_err(|e| format!("response body: {e}"))?;
    assert!(!frame.has_remaining(), "{api:?} v{version}: trailing bytes");
    Ok(resp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_advertised_api_answers_at_every_advertised_version() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, addr) = start_broker(dir.path()).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();

    let versions = match roundtrip(
        &mut conn,
        ApiKey::ApiVersions,
        3,
        1,
        &sample(ApiKey::ApiVersions, 3, uuid::Uuid::nil()),
    )
    .await
    {
        Ok(ResponseKind::ApiVersions(v)) => v,
        other => panic!("ApiVersions: {other:?}"),
    };
    // Create the topic (through Metadata auto-creation) and learn its id.
    let topic_id = match roundtrip(
        &mut conn,
        ApiKey::Metadata,
        12,
        2,
        &sample(ApiKey::Metadata, 12, uuid::Uuid::nil()),
    )
    .await
    {
        Ok(ResponseKind::Metadata(m)) => m.topics[0].topic_id,
        other => panic!("Metadata: {other:?}"),
    };
    assert!(!topic_id.is_nil());

    let mut correlation = 10;
    let mut failures = Vec::new();
    let mut answered = 0;
    for key in &versions.api_keys {
        let api = ApiKey::try_from(key.api_key).unwrap();
        for version in key.min_version..=key.max_version {
            correlation += 1;
            let body = sample(api, version, topic_id);
            match roundtrip(&mut conn, api, version, correlation, &body).await {
                Ok(_) => answered += 1,
                Err(e) if e.starts_with("client-side encode") => {
                    // The sample uses a field this version cannot carry: not a broker issue.
                    eprintln!("skipped {api:?} v{version}: {e}");
                }
                Err(e) => {
                    failures.push(format!("{api:?} v{version}: {e}"));
                    conn = TcpStream::connect(addr).await.unwrap();
                }
            }
        }
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
    assert!(answered > 100, "only {answered} API versions answered");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_api_versions_version_gets_v0_error_with_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, addr) = start_broker(dir.path()).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    // ApiVersions v99: header v2 as a flexible client would send it; the answer is v0.
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    buf.put_i16(ApiKey::ApiVersions as i16);
    buf.put_i16(99);
    buf.put_i32(7);
    buf.put_i16(-1); // null client id
    buf.put_u8(0); // no tagged fields
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    conn.write_all(&buf).await.unwrap();
    let size = conn.read_i32().await.unwrap();
    let mut frame = vec![0u8; size as usize];
    conn.read_exact(&mut frame).await.unwrap();
    let mut frame = Bytes::from(frame);
    assert_eq!(frame.get_i32(), 7);
    let resp = ApiVersionsResponse::decode(&mut frame, 0).unwrap();
    assert_eq!(resp.error_code, 35, "UNSUPPORTED_VERSION");
    assert!(
        resp.api_keys
            .iter()
            .any(|k| k.api_key == ApiKey::Produce as i16)
    );
    broker.shutdown().await;
}

/// acks=0 produces get no response; when one is refused, Kafka closes the connection, the
/// only signal the producer can get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_zero_gets_no_response_and_a_refusal_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, addr) = start_broker(dir.path()).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    // Create the topic, then an accepted acks=0 produce: nothing comes back for it, and the
    // next request's response is the next thing on the wire.
    let topic_id = match roundtrip(
        &mut conn,
        ApiKey::Metadata,
        12,
        1,
        &sample(ApiKey::Metadata, 12, uuid::Uuid::nil()),
    )
    .await
    {
        Ok(ResponseKind::Metadata(m)) => m.topics[0].topic_id,
        other => panic!("Metadata: {other:?}"),
    };
    let RequestKind::Produce(accepted) = sample(ApiKey::Produce, 9, topic_id) else {
        unreachable!()
    };
    let accepted = RequestKind::Produce(accepted.with_acks(0));
    send(&mut conn, ApiKey::Produce, 9, 2, &accepted).await;
    let versions = sample(ApiKey::ApiVersions, 3, topic_id);
    assert!(
        roundtrip(&mut conn, ApiKey::ApiVersions, 3, 3, &versions)
            .await
            .is_ok()
    );

    // A refused acks=0 produce (unknown partition): the broker closes the connection.
    let RequestKind::Produce(refused) = sample(ApiKey::Produce, 9, topic_id) else {
        unreachable!()
    };
    let mut refused = refused.with_acks(0);
    refused.topic_data[0].partition_data[0].index = 99;
    send(
        &mut conn,
        ApiKey::Produce,
        9,
        4,
        &RequestKind::Produce(refused),
    )
    .await;
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut byte))
        .await
        .expect("the broker closes the connection");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "connection must be closed, got {read:?}"
    );
    broker.shutdown().await;
}

async fn send(
    conn: &mut TcpStream,
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &RequestKind,
) {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .encode(&mut buf, api.request_header_version(version))
        .unwrap();
    body.encode(&mut buf, version).unwrap();
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    conn.write_all(&buf).await.unwrap();
}
