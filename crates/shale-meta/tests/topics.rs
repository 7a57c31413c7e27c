mod common;

use common::*;
use shale_meta::{MetaError, NodeMeta, TopicCommand};
use std::collections::BTreeMap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_start_sets_cluster_id_and_leads() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let id = node.read(|s| s.cluster_id.clone());
    assert_eq!(id.len(), 22, "cluster id {id}");
    assert!(node.is_leader());
    node.shutdown().await;

    // The id survives restarts and is not regenerated.
    let node = start(dir.path()).await;
    assert_eq!(node.read(|s| s.cluster_id.clone()), id);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_create_delete_partitions_configs() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let mut changes = node.changes();
    let before = *changes.borrow_and_update();

    node.write(create_topic("orders", 3)).await.unwrap();
    assert!(
        *changes.borrow_and_update() > before,
        "changes() bumps on apply"
    );
    let topic = node.read(|s| s.topics.get("orders").cloned()).unwrap();
    assert_eq!(topic.partitions.len(), 3);
    assert_eq!(topic.id, [7; 16]);
    assert_eq!(topic.created_at_ms, 42);
    let ids: Vec<u64> = topic.partitions.iter().map(|p| p.stream_id).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    for id in &ids {
        let s = node.read(|s| s.streams.get(id).cloned()).unwrap();
        assert_eq!((s.epoch, s.start_offset, s.end_offset), (0, 0, 0));
    }
    assert!(topic.partitions.iter().all(|p| p.owner == 1));

    assert!(matches!(
        node.write(create_topic("orders", 1)).await,
        Err(MetaError::TopicExists(n)) if n == "orders"
    ));

    // Grow to 5; new streams get fresh ids.
    node.write(TopicCommand::CreatePartitions {
        name: "orders".into(),
        total: 5,
        owner: 2,
        placement: shale_meta::Placement::Owner,
    })
    .await
    .unwrap();
    let parts = node.read(|s| s.topics["orders"].partitions.clone());
    assert_eq!(parts.len(), 5);
    assert_eq!((parts[3].stream_id, parts[3].owner), (4, 2));
    assert_eq!((parts[4].stream_id, parts[4].owner), (5, 2));
    for total in [5, 4] {
        assert!(matches!(
            node.write(TopicCommand::CreatePartitions {
                name: "orders".into(),
                total,
                owner: 1,
                placement: shale_meta::Placement::Owner,
            })
            .await,
            Err(MetaError::InvalidPartitions { current: 5, requested, .. }) if requested == total
        ));
    }
    assert!(matches!(
        node.write(TopicCommand::CreatePartitions {
            name: "nope".into(),
            total: 5,
            owner: 1,
            placement: shale_meta::Placement::Owner,
        })
        .await,
        Err(MetaError::UnknownTopic(_))
    ));

    // Configs are replaced, not merged.
    let configs = BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]);
    node.write(TopicCommand::SetTopicConfigs {
        name: "orders".into(),
        configs: configs.clone(),
    })
    .await
    .unwrap();
    assert_eq!(node.read(|s| s.topics["orders"].configs.clone()), configs);
    assert!(matches!(
        node.write(TopicCommand::SetTopicConfigs {
            name: "nope".into(),
            configs,
        })
        .await,
        Err(MetaError::UnknownTopic(_))
    ));

    // A second topic continues the stream id sequence.
    node.write(create_topic("payments", 2)).await.unwrap();
    let ids: Vec<u64> = node.read(|s| {
        s.topics["payments"]
            .partitions
            .iter()
            .map(|p| p.stream_id)
            .collect()
    });
    assert_eq!(ids, vec![6, 7]);

    // Delete removes the topic and all its streams.
    node.write(TopicCommand::DeleteTopic {
        name: "orders".into(),
    })
    .await
    .unwrap();
    node.read(|s| {
        assert!(!s.topics.contains_key("orders"));
        assert!((1..=5).all(|id| !s.streams.contains_key(&id)));
        assert!(s.streams.contains_key(&6) && s.streams.contains_key(&7));
    });
    assert!(matches!(
        node.write(TopicCommand::DeleteTopic {
            name: "orders".into()
        })
        .await,
        Err(MetaError::UnknownTopic(_))
    ));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_topic_kills_its_objects() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let cat = node.catalog();
    node.write(create_topic("a", 1)).await.unwrap();
    node.write(create_topic("b", 1)).await.unwrap();
    let (sa, sb) = node.read(|s| {
        (
            s.topics["a"].partitions[0].stream_id,
            s.topics["b"].partitions[0].stream_id,
        )
    });
    let ea = cat.open_stream(sa).await.unwrap().epoch;
    let eb = cat.open_stream(sb).await.unwrap().epoch;
    let shared = cat.prepare_object().await.unwrap();
    cat.commit_object(
        object(shared, vec![range(sa, 0, 10), range(sb, 0, 5)]),
        vec![
            shale_stream::StreamCommit {
                stream_id: sa,
                epoch: ea,
            },
            shale_stream::StreamCommit {
                stream_id: sb,
                epoch: eb,
            },
        ],
    )
    .await
    .unwrap();
    let only_a = cat.prepare_object().await.unwrap();
    cat.commit_object(
        object(only_a, vec![range(sa, 10, 20)]),
        vec![shale_stream::StreamCommit {
            stream_id: sa,
            epoch: ea,
        }],
    )
    .await
    .unwrap();

    node.write(TopicCommand::DeleteTopic { name: "a".into() })
        .await
        .unwrap();
    // The object only holding `a` is dead; the shared one still serves `b`.
    let dead: Vec<u64> = cat.dead_objects().iter().map(|(o, _)| o.id).collect();
    assert_eq!(dead, vec![only_a]);
    assert!(cat.all_ranges(sa).is_empty());
    assert_eq!(cat.all_ranges(sb).len(), 1);

    node.write(TopicCommand::DeleteTopic { name: "b".into() })
        .await
        .unwrap();
    let mut dead: Vec<u64> = cat.dead_objects().iter().map(|(o, _)| o.id).collect();
    dead.sort();
    assert_eq!(dead, vec![shared, only_a]);
    assert!(cat.live_objects().is_empty());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_node_upserts() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let mut n = NodeMeta {
        id: 3,
        host: "a.example".into(),
        port: 9092,
        rack: None,
    };
    node.write(TopicCommand::RegisterNode(n.clone()))
        .await
        .unwrap();
    n.host = "b.example".into();
    n.rack = Some("r1".into());
    node.write(TopicCommand::RegisterNode(n.clone()))
        .await
        .unwrap();
    node.read(|s| {
        assert_eq!(s.nodes.len(), 1);
        assert_eq!(s.nodes[&3], n);
    });
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_deleted_with_its_topic_cannot_be_reopened() {
    // The log cleaner (or any late open) may open a stream just after its topic is deleted:
    // the open must fail rather than bring the stream back empty.
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    node.write(create_topic("gone", 1)).await.unwrap();
    let stream = node.read(|s| s.topics["gone"].partitions[0].stream_id);
    let catalog = node.catalog();
    catalog.open_stream(stream).await.unwrap();
    node.write(TopicCommand::DeleteTopic {
        name: "gone".into(),
    })
    .await
    .unwrap();
    assert!(matches!(
        catalog.open_stream(stream).await,
        Err(shale_stream::CatalogError::UnknownStream(id)) if id == stream
    ));
    assert!(node.read(|s| !s.streams.contains_key(&stream)));
    node.shutdown().await;
}
