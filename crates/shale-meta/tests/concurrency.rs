mod common;

use common::*;
use shale_stream::{ObjectCatalog, StreamCommit};
use std::sync::Arc;
use std::time::Instant;

async fn commit_next(cat: &Arc<dyn ObjectCatalog>, stream_id: u64, epoch: u64, i: u64) {
    let id = cat.prepare_object().await.unwrap();
    cat.commit_object(
        object(id, vec![range(stream_id, i * 5, i * 5 + 5)]),
        vec![StreamCommit { stream_id, epoch }],
    )
    .await
    .unwrap();
}

/// Many tasks committing concurrently (each owning one stream, as WAL uploads of different
/// nodes would). Also reports the sustained Raft write rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_commit_objects() {
    const TASKS: u64 = 32;
    const PER_TASK: u64 = 50;
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let cat = node.catalog();

    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let cat = Arc::clone(&cat);
        handles.push(tokio::spawn(async move {
            let stream_id = 1000 + t;
            let epoch = cat.open_stream(stream_id).await.unwrap().epoch;
            for i in 0..PER_TASK {
                commit_next(&cat, stream_id, epoch, i).await;
                // Local reads interleave with writes.
                assert_eq!(cat.stream(stream_id).unwrap().end_offset, (i + 1) * 5);
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let elapsed = started.elapsed();
    // open + (prepare + commit) per object.
    let writes = TASKS + 2 * TASKS * PER_TASK;
    println!(
        "parallel: {writes} raft writes from {TASKS} tasks in {elapsed:?} = {:.0} writes/s ({:.0} commit_object/s)",
        writes as f64 / elapsed.as_secs_f64(),
        (TASKS * PER_TASK) as f64 / elapsed.as_secs_f64()
    );

    for t in 0..TASKS {
        let stream_id = 1000 + t;
        assert_eq!(cat.stream(stream_id).unwrap().end_offset, PER_TASK * 5);
        let ranges = cat.all_ranges(stream_id);
        assert_eq!(ranges.len() as u64, PER_TASK);
        assert!(
            ranges
                .windows(2)
                .all(|w| w[0].range.end_offset == w[1].range.start_offset)
        );
    }
    let mut ids: Vec<u64> = cat.live_objects().iter().map(|o| o.id).collect();
    ids.dedup();
    assert_eq!(ids.len() as u64, TASKS * PER_TASK);

    // Competing owners of one stream: exactly one epoch wins each commit.
    let e_old = cat.open_stream(1).await.unwrap().epoch;
    let e_new = cat.open_stream(1).await.unwrap().epoch;
    let (a, b) = tokio::join!(
        {
            let cat = Arc::clone(&cat);
            async move {
                let id = cat.prepare_object().await.unwrap();
                cat.commit_object(
                    object(id, vec![range(1, 0, 1)]),
                    vec![StreamCommit {
                        stream_id: 1,
                        epoch: e_old,
                    }],
                )
                .await
            }
        },
        {
            let cat = Arc::clone(&cat);
            async move {
                let id = cat.prepare_object().await.unwrap();
                cat.commit_object(
                    object(id, vec![range(1, 0, 1)]),
                    vec![StreamCommit {
                        stream_id: 1,
                        epoch: e_new,
                    }],
                )
                .await
            }
        }
    );
    assert!(a.is_err() && b.is_ok());
    node.shutdown().await;
}

/// One writer waiting for each commit before the next: the latency-bound rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_write_rate() {
    const N: u64 = 500;
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let cat = node.catalog();
    let epoch = cat.open_stream(7).await.unwrap().epoch;
    let started = Instant::now();
    for i in 0..N {
        commit_next(&cat, 7, epoch, i).await;
    }
    let elapsed = started.elapsed();
    println!(
        "sequential: {} raft writes in {elapsed:?} = {:.0} writes/s ({:.0} commit_object/s)",
        2 * N,
        (2 * N) as f64 / elapsed.as_secs_f64(),
        N as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(cat.stream(7).unwrap().end_offset, N * 5);
    node.shutdown().await;
}
