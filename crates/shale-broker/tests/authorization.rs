//! The authorization gate through a real broker: a plaintext connection is `User:ANONYMOUS`,
//! which the ACLs written here grant (or do not grant) what each case needs.

mod common;

use common::{call, name};
use kafka_protocol::messages::*;
use shale_broker::BrokerConfig;
use shale_meta::AclEntryMeta;
use shale_security::acl::AuthorizerConfig;
use tokio::net::TcpStream;

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

const TOPIC: i8 = 2;
const CLUSTER: i8 = 4;
const LITERAL: i8 = 3;
const PREFIXED: i8 = 4;
const CREATE: i8 = 5;
const DESCRIBE: i8 = 8;
const WRITE: i8 = 4;

async fn broker(
    dir: &std::path::Path,
    acls: Vec<AclEntryMeta>,
) -> (std::sync::Arc<shale_broker::Broker>, TcpStream) {
    let (broker, addr) = common::start_broker(
        dir,
        BrokerConfig {
            authorizer: Some(AuthorizerConfig::default()),
            ..BrokerConfig::default()
        },
    )
    .await;
    // The grants that let the test create its topics, then the case's own.
    broker
        .meta
        .create_acls(vec![acl(CLUSTER, "kafka-cluster", LITERAL, CREATE)])
        .await
        .unwrap();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    common::create_topic(&mut conn, "visible", &[]).await;
    common::create_topic(&mut conn, "hidden", &[]).await;
    // Only the case's grants from here on.
    let ids: Vec<u64> = broker.meta.read(|s| s.acls.keys().copied().collect());
    broker.meta.delete_acls(ids).await.unwrap();
    if !acls.is_empty() {
        broker.meta.create_acls(acls).await.unwrap();
    }
    (broker, conn)
}

fn metadata(topics: Option<&[&str]>, auto_create: bool) -> RequestKind {
    RequestKind::Metadata(
        MetadataRequest::default()
            .with_topics(topics.map(|t| {
                t.iter()
                    .map(|n| {
                        metadata_request::MetadataRequestTopic::default()
                            .with_name(Some(TopicName(name(n))))
                    })
                    .collect()
            }))
            .with_allow_auto_topic_creation(auto_create),
    )
}

fn topics_of(r: ResponseKind) -> Vec<(String, i16)> {
    let ResponseKind::Metadata(m) = r else {
        panic!("not a Metadata response: {r:?}")
    };
    let mut t: Vec<(String, i16)> = m
        .topics
        .into_iter()
        .map(|t| {
            (
                t.name.map(|n| n.to_string()).unwrap_or_default(),
                t.error_code,
            )
        })
        .collect();
    t.sort();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_of_all_topics_lists_only_describable_ones_at_every_version() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut conn) =
        broker(dir.path(), vec![acl(TOPIC, "visible", LITERAL, DESCRIBE)]).await;
    // v0 has no null: an empty list is "all topics".
    // Below v4 the request's auto-creation flag must keep its default (true).
    for (version, req) in [
        (0, metadata(Some(&[]), true)),
        (1, metadata(None, true)),
        (12, metadata(None, false)),
    ] {
        let got = topics_of(call(&mut conn, ApiKey::Metadata, version, req).await);
        assert_eq!(got, vec![("visible".to_string(), 0)], "v{version}");
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_topic_the_principal_may_not_describe_is_topic_authorization_failed() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut conn) =
        broker(dir.path(), vec![acl(TOPIC, "visible", LITERAL, DESCRIBE)]).await;
    for version in [0, 4, 12] {
        let got = topics_of(
            call(
                &mut conn,
                ApiKey::Metadata,
                version,
                metadata(Some(&["hidden"]), version < 4),
            )
            .await,
        );
        // A v0 request whose only topic is denied must not turn into "all topics".
        assert_eq!(got, vec![("hidden".to_string(), 29)], "v{version}");
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_creates_a_missing_topic_only_with_create() {
    let dir = tempfile::tempdir().unwrap();
    // DESCRIBE on every name, CREATE only on new-*.
    let (broker, mut conn) = broker(
        dir.path(),
        vec![
            acl(TOPIC, "*", LITERAL, DESCRIBE),
            acl(TOPIC, "new-", PREFIXED, CREATE),
        ],
    )
    .await;
    // Below v4 a request cannot switch auto-creation off: the gate must still refuse.
    for version in [1, 4] {
        let got = topics_of(
            call(
                &mut conn,
                ApiKey::Metadata,
                version,
                metadata(Some(&["other"]), true),
            )
            .await,
        );
        assert_eq!(got, vec![("other".to_string(), 29)], "v{version}");
    }
    assert!(!broker.meta.read(|s| s.topics.contains_key("other")));
    let got = topics_of(
        call(
            &mut conn,
            ApiKey::Metadata,
            4,
            metadata(Some(&["new-a"]), true),
        )
        .await,
    );
    assert_eq!(got[0].0, "new-a");
    assert!(broker.meta.read(|s| s.topics.contains_key("new-a")));
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_is_refused_per_topic_without_write() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut conn) = broker(dir.path(), vec![acl(TOPIC, "visible", LITERAL, WRITE)]).await;
    let batch = common::plain_record("v");
    let req = |topic: &str| {
        produce_request::TopicProduceData::default()
            .with_name(TopicName(name(topic)))
            .with_partition_data(vec![
                produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(batch.clone())),
            ])
    };
    let resp = call(
        &mut conn,
        ApiKey::Produce,
        9,
        RequestKind::Produce(
            ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(5000)
                .with_topic_data(vec![req("visible"), req("hidden")]),
        ),
    )
    .await;
    let ResponseKind::Produce(p) = resp else {
        panic!("{resp:?}")
    };
    let mut codes: Vec<(String, i16)> = p
        .responses
        .iter()
        .map(|t| (t.name.to_string(), t.partition_responses[0].error_code))
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        vec![("hidden".to_string(), 29), ("visible".to_string(), 0)]
    );
    broker.shutdown().await;
}
