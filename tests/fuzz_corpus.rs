//! Writes the fuzz corpus seeds (real encodings from kafka-protocol and shale-stream) into
//! `fuzz/corpus/<target>/seed-*`. Not a check: run it by hand when the targets' input
//! formats change, with `cargo test --test fuzz_corpus -- --ignored`.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use shale_protocol::schema;
use std::path::PathBuf;

fn dir(target: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The index the request_decode target maps its first two bytes to.
fn selector(api: ApiKey, version: i16) -> [u8; 2] {
    let all: Vec<(ApiKey, i16)> = schema::ADVERTISED
        .iter()
        .flat_map(|&(api, min, max)| {
            let codec = api.valid_versions();
            (min.max(codec.min)..=max.min(codec.max)).map(move |v| (api, v))
        })
        .collect();
    let i = all.iter().position(|&x| x == (api, version)).unwrap();
    (i as u16).to_be_bytes()
}

fn batch(compression: Compression) -> BytesMut {
    let records: Vec<Record> = (0..3)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: i as i32,
            timestamp: 1_700_000_000_000 + i,
            key: Some(Bytes::from(format!("key-{i}"))),
            value: Some(Bytes::from(vec![b'v'; 20])),
            headers: [(
                StrBytes::from_static_str("h"),
                Some(Bytes::from_static(b"x")),
            )]
            .into_iter()
            .collect(),
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
    buf
}

/// A request decoded from a hand-written body, re-encoded by kafka-protocol with a header.
fn request(api: ApiKey, version: i16, body: RequestKind) -> Vec<u8> {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("fuzz")))
        .encode(&mut buf, api.request_header_version(version))
        .unwrap();
    body.encode(&mut buf, version).unwrap();
    let mut out = selector(api, version).to_vec();
    out.extend_from_slice(&buf);
    out
}

#[test]
#[ignore = "writes fuzz/corpus; run by hand"]
fn write_fuzz_corpus_seeds() {
    use kafka_protocol::messages::*;
    let topic = || TopicName(StrBytes::from_static_str("orders"));
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();
    for v in [1, 4, 9, 12] {
        let body = MetadataRequest::default()
            .with_topics(Some(vec![
                metadata_request::MetadataRequestTopic::default().with_name(Some(topic())),
            ]))
            .with_allow_auto_topic_creation(true);
        seeds.push((
            "metadata",
            request(ApiKey::Metadata, v, RequestKind::Metadata(body)),
        ));
    }
    for v in [3, 7, 9, 11] {
        let partition = produce_request::PartitionProduceData::default()
            .with_index(0)
            .with_records(Some(batch(Compression::None).freeze()));
        let body = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(1000)
            .with_topic_data(vec![
                produce_request::TopicProduceData::default()
                    .with_name(topic())
                    .with_partition_data(vec![partition]),
            ]);
        seeds.push((
            "produce",
            request(ApiKey::Produce, v, RequestKind::Produce(body)),
        ));
    }
    for v in [4, 11, 12, 16] {
        let partition = fetch_request::FetchPartition::default().with_partition_max_bytes(1 << 20);
        let t = fetch_request::FetchTopic::default()
            .with_topic(topic())
            .with_partitions(vec![partition]);
        let body = FetchRequest::default()
            .with_max_bytes(1 << 20)
            .with_topics(vec![t]);
        let body = if v >= 12 {
            body.with_cluster_id(Some(StrBytes::from_static_str("c")))
        } else {
            body
        };
        seeds.push(("fetch", request(ApiKey::Fetch, v, RequestKind::Fetch(body))));
    }
    for v in [2, 5, 7] {
        let t = create_topics_request::CreatableTopic::default()
            .with_name(topic())
            .with_num_partitions(3)
            .with_replication_factor(1)
            .with_configs(vec![
                create_topics_request::CreatableTopicConfig::default()
                    .with_name(StrBytes::from_static_str("cleanup.policy"))
                    .with_value(Some(StrBytes::from_static_str("compact"))),
            ]);
        let body = CreateTopicsRequest::default().with_topics(vec![t]);
        seeds.push((
            "create_topics",
            request(ApiKey::CreateTopics, v, RequestKind::CreateTopics(body)),
        ));
    }
    for v in [0, 3, 4] {
        let body = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("fuzz"))
            .with_client_software_version(StrBytes::from_static_str("1"));
        seeds.push((
            "api_versions",
            request(ApiKey::ApiVersions, v, RequestKind::ApiVersions(body)),
        ));
    }
    for v in [5, 9] {
        let body = JoinGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("g")))
            .with_session_timeout_ms(10_000)
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![
                join_group_request::JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str("range"))
                    .with_metadata(Bytes::from_static(&[0, 1, 0, 0, 0, 0])),
            ]);
        seeds.push((
            "join_group",
            request(ApiKey::JoinGroup, v, RequestKind::JoinGroup(body)),
        ));
    }
    for v in [2, 8] {
        let p = offset_commit_request::OffsetCommitRequestPartition::default()
            .with_committed_offset(42)
            .with_committed_metadata(Some(StrBytes::from_static_str("")));
        let body = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("g")))
            .with_topics(vec![
                offset_commit_request::OffsetCommitRequestTopic::default()
                    .with_name(topic())
                    .with_partitions(vec![p]),
            ]);
        seeds.push((
            "offset_commit",
            request(ApiKey::OffsetCommit, v, RequestKind::OffsetCommit(body)),
        ));
    }
    // Sanity: every seed decodes, so the fuzzer starts from valid inputs.
    let d = dir("request_decode");
    for (i, (name, seed)) in seeds.iter().enumerate() {
        let api = ApiKey::try_from(i16::from_be_bytes([seed[2], seed[3]])).unwrap();
        let version = i16::from_be_bytes([seed[4], seed[5]]);
        let mut frame = Bytes::copy_from_slice(&seed[2..]);
        RequestHeader::decode(&mut frame, api.request_header_version(version)).unwrap();
        RequestKind::decode(api, &mut frame, version).unwrap();
        std::fs::write(d.join(format!("seed-{name}-{i}")), seed).unwrap();
    }

    let d = dir("batch_decode");
    let mut two = batch(Compression::None);
    two.extend_from_slice(&batch(Compression::Snappy));
    for (name, b) in [
        ("none", batch(Compression::None)),
        ("gzip", batch(Compression::Gzip)),
        ("snappy", batch(Compression::Snappy)),
        ("lz4", batch(Compression::Lz4)),
        ("zstd", batch(Compression::Zstd)),
        ("two", two),
    ] {
        std::fs::write(d.join(format!("seed-{name}")), &b).unwrap();
    }

    let d = dir("object_decode");
    use shale_stream::StreamRecord;
    use shale_stream::object;
    let entries = |base: u64| -> Vec<StreamRecord> {
        (0..3)
            .map(|i| StreamRecord {
                base_offset: base + i * 2,
                count: 2,
                max_timestamp: 1000 + i as i64,
                payload: Bytes::from(vec![i as u8; 16]),
            })
            .collect()
    };
    let (a, b) = (entries(0), entries(100));
    let (obj, _) = object::encode(&[(1, &a[..]), (2, &b[..])]);
    std::fs::write(d.join("seed-object"), &obj).unwrap();
    // The target's second form: object without footer, then the index length.
    let footer = object::decode_footer(&obj).unwrap();
    let mut body = obj[..obj.len() - object::FOOTER_LEN].to_vec();
    body.extend_from_slice(&(footer.index_length as u16).to_be_bytes());
    std::fs::write(d.join("seed-object-body"), &body).unwrap();
}
