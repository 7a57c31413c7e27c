mod common;

use common::*;
use shale_meta::{ClusterState, MetaNode, MetaOptions, TopicCommand};
use shale_stream::{RangeLocation, StreamCommit};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Drives a mix of every command kind; `round` makes names and ids unique per call.
async fn workload(node: &Arc<MetaNode>, round: u32) {
    let cat = node.catalog();
    let topic = format!("t{round}");
    node.write(create_topic(&topic, 2)).await.unwrap();
    node.write(TopicCommand::SetTopicConfigs {
        name: topic.clone(),
        configs: BTreeMap::from([("round".to_string(), round.to_string())]),
    })
    .await
    .unwrap();
    let streams: Vec<u64> = node.read(|s| {
        s.topics[&topic]
            .partitions
            .iter()
            .map(|p| p.stream_id)
            .collect()
    });
    let mut epochs = Vec::new();
    for s in &streams {
        epochs.push(cat.open_stream(*s).await.unwrap().epoch);
    }
    for i in 0..10u64 {
        let id = cat.prepare_object().await.unwrap();
        let ranges = streams
            .iter()
            .map(|s| range(*s, i * 10, i * 10 + 10))
            .collect();
        let commits = streams
            .iter()
            .zip(&epochs)
            .map(|(s, e)| StreamCommit {
                stream_id: *s,
                epoch: *e,
            })
            .collect();
        cat.commit_object(object(id, ranges), commits)
            .await
            .unwrap();
    }
    // Log compaction of the second partition's first two ranges into one object.
    let id = cat.prepare_object().await.unwrap();
    cat.replace_stream_ranges(
        streams[1],
        epochs[1],
        0,
        20,
        object(id, vec![range(streams[1], 0, 20)]),
    )
    .await
    .unwrap();
    cat.trim_stream(streams[0], None, 35).await.unwrap();
    let dead: Vec<u64> = cat.dead_objects().iter().map(|(o, _)| o.id).collect();
    cat.forget_objects(dead.into_iter().take(1).collect())
        .await
        .unwrap();
    node.write(TopicCommand::CreatePartitions {
        name: topic,
        total: 3,
        owner: 1,
        placement: shale_meta::Placement::Owner,
    })
    .await
    .unwrap();
    node.allocate_producer_ids(1000).await.unwrap();
}

/// The full applied state plus every stream's index, to compare replicas.
fn observe(node: &Arc<MetaNode>) -> (ClusterState, Vec<Vec<RangeLocation>>) {
    let cat = node.catalog();
    let state = node.read(|s| s.clone());
    let ranges = state
        .streams
        .keys()
        .map(|id| cat.ranges_from(*id, 0, usize::MAX))
        .collect();
    (state, ranges)
}

fn small_log_options() -> MetaOptions {
    MetaOptions {
        snapshot_logs: 1_000_000,
        keep_logs: 0,
        segment_bytes: 4096,
        ..MetaOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_log_only() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    workload(&node, 1).await;
    workload(&node, 2).await;
    let before = observe(&node);
    node.shutdown().await;
    assert!(!dir.path().join("snapshot/snapshot.bin").exists());

    let node = start(dir.path()).await;
    assert_eq!(observe(&node), before);
    // And it keeps working where it left off.
    workload(&node, 3).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_snapshot_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_with(dir.path(), small_log_options()).await;
    workload(&node, 1).await;
    workload(&node, 2).await;
    let segments_before = segment_files(dir.path());
    node.trigger_snapshot().await.unwrap();
    assert!(dir.path().join("snapshot/snapshot.bin").exists());
    // Entries after the snapshot live only in the log.
    workload(&node, 3).await;
    let before = observe(&node);

    // keep_logs = 0: the log up to the snapshot is purged, old segments deleted.
    let purged = dir.path().join("log/purged.json");
    for _ in 0..100 {
        if purged.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(purged.exists(), "log purged after snapshot");
    let segments_after = segment_files(dir.path());
    assert!(
        !segments_after.contains(&segments_before[0]),
        "first segment deleted: {segments_before:?} -> {segments_after:?}"
    );
    node.shutdown().await;

    let node = start_with(dir.path(), small_log_options()).await;
    assert_eq!(observe(&node), before);
    workload(&node, 4).await;
    let before = observe(&node);
    node.shutdown().await;
    let node = start_with(dir.path(), small_log_options()).await;
    assert_eq!(observe(&node), before);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_snapshots_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let options = MetaOptions {
        snapshot_logs: 40,
        keep_logs: 5,
        segment_bytes: 8192,
        ..MetaOptions::default()
    };
    let node = start_with(dir.path(), options.clone()).await;
    for round in 0..6 {
        workload(&node, round).await;
    }
    let before = observe(&node);
    node.shutdown().await;
    assert!(dir.path().join("snapshot/snapshot.bin").exists());

    let node = start_with(dir.path(), options).await;
    assert_eq!(observe(&node), before);
    node.shutdown().await;
}

fn append_garbage(seg: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().append(true).open(seg).unwrap();
    f.write_all(bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_log_tail_is_tolerated() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    workload(&node, 1).await;
    let before = observe(&node);
    node.shutdown().await;

    // A write torn by a crash: a frame header promising more bytes than were written.
    let seg = segment_files(dir.path()).pop().unwrap();
    let mut torn = Vec::new();
    torn.extend_from_slice(&1000u32.to_le_bytes());
    torn.extend_from_slice(&[0xab; 4]);
    torn.extend_from_slice(b"{\"log_id\":");
    append_garbage(&seg, &torn);

    let node = start(dir.path()).await;
    assert_eq!(observe(&node), before);
    workload(&node, 2).await;
    let before = observe(&node);
    node.shutdown().await;

    let node = start(dir.path()).await;
    assert_eq!(observe(&node), before);
    node.shutdown().await;
}

/// No graceful shutdown at all: the runtime is torn down right after writes return, as if the
/// process were killed. Every acknowledged write must be there after restart.
#[test]
fn acknowledged_writes_survive_abrupt_stop() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    let rt = runtime();
    let before = rt.block_on(async {
        let node = start(dir.path()).await;
        workload(&node, 1).await;
        let cat = node.catalog();
        let e = cat.open_stream(500).await.unwrap().epoch;
        let id = cat.prepare_object().await.unwrap();
        cat.commit_object(
            object(id, vec![range(500, 0, 1)]),
            vec![StreamCommit {
                stream_id: 500,
                epoch: e,
            }],
        )
        .await
        .unwrap();
        observe(&node)
    });
    rt.shutdown_background();
    // Let the dropped tasks' threads wind down before the directory is reused.
    std::thread::sleep(Duration::from_millis(200));

    let rt = runtime();
    rt.block_on(async {
        let node = start(dir.path()).await;
        assert_eq!(observe(&node), before);
        assert_eq!(node.catalog().stream(500).unwrap().end_offset, 1);
        node.shutdown().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_is_exclusive_and_bound_to_node_id() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let Err(err) = MetaNode::start(config(dir.path())).await else {
        panic!("a second node on the same dir must not start");
    };
    assert!(format!("{err:#}").contains("in use"), "{err:#}");
    node.shutdown().await;
    // After shutdown writes fail cleanly instead of hanging.
    assert!(matches!(
        node.write(create_topic("late", 1)).await,
        Err(shale_meta::MetaError::Unavailable(_))
    ));
    assert!(node.catalog().prepare_object().await.is_err());

    let mut other = config(dir.path());
    other.node_id = 2;
    let started = std::time::Instant::now();
    let Err(err) = MetaNode::start(other).await else {
        panic!("another node id must not adopt this dir");
    };
    assert!(format!("{err:#}").contains("not a member"), "{err:#}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let node = start(dir.path()).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_id_blocks_never_overlap_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let a = node.allocate_producer_ids(1000).await.unwrap();
    let b = node.allocate_producer_ids(10).await.unwrap();
    assert_eq!(a, (0, 1000));
    assert_eq!(b, (1000, 10));
    node.trigger_snapshot().await.unwrap();
    let c = node.allocate_producer_ids(5).await.unwrap();
    node.shutdown().await;

    let node = start(dir.path()).await;
    let d = node.allocate_producer_ids(1000).await.unwrap();
    assert_eq!(c, (1010, 5));
    assert_eq!(d, (1015, 1000));
    assert!(node.allocate_producer_ids(0).await.is_err());
}
