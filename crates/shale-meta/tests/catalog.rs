mod common;

use common::*;
use shale_stream::{CatalogError, ObjectCatalog, StreamCommit};
use std::sync::Arc;

fn sc(stream_id: u64, epoch: u64) -> StreamCommit {
    StreamCommit { stream_id, epoch }
}

fn ids(locs: &[shale_stream::RangeLocation]) -> Vec<(u64, u64, u64)> {
    locs.iter()
        .map(|l| (l.object_id, l.range.start_offset, l.range.end_offset))
        .collect()
}

async fn commit(
    cat: &Arc<dyn ObjectCatalog>,
    ranges: Vec<shale_stream::ObjectRange>,
    streams: Vec<StreamCommit>,
) -> Result<u64, CatalogError> {
    let id = cat.prepare_object().await?;
    cat.commit_object(object(id, ranges), streams).await?;
    Ok(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_commit_fence_and_gap() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let cat = node.catalog();

    // open_stream creates missing streams and bumps the epoch on every open.
    assert!(cat.stream(100).is_none());
    let s = cat.open_stream(100).await.unwrap();
    assert_eq!(
        (s.id, s.epoch, s.start_offset, s.end_offset),
        (100, 1, 0, 0)
    );
    let s = cat.open_stream(100).await.unwrap();
    assert_eq!(s.epoch, 2);
    cat.open_stream(200).await.unwrap();

    // Object ids are fresh and increasing.
    let a = cat.prepare_object().await.unwrap();
    let b = cat.prepare_object().await.unwrap();
    assert!(b > a);
    // They come from blocks leased to the node: 300 more ids cost two Raft writes, not 300.
    let before = node.applied_index();
    let mut last = b;
    for _ in 0..300 {
        let id = cat.prepare_object().await.unwrap();
        assert!(id > last, "ids are unique and increasing");
        last = id;
    }
    assert!(
        node.applied_index() - before <= 2,
        "{} writes",
        node.applied_index() - before
    );

    cat.commit_object(object(a, vec![range(100, 0, 10)]), vec![sc(100, 2)])
        .await
        .unwrap();
    assert_eq!(cat.stream(100).unwrap().end_offset, 10);

    // Stale epoch: the zombie owner is fenced.
    let err = cat
        .commit_object(object(b, vec![range(100, 10, 20)]), vec![sc(100, 1)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CatalogError::Fenced {
                stream_id: 100,
                epoch: 1,
                current: 2
            }
        ),
        "{err}"
    );
    // A range without a StreamCommit carries no epoch either.
    let err = cat
        .commit_object(object(b, vec![range(100, 10, 20)]), vec![])
        .await
        .unwrap_err();
    assert!(matches!(err, CatalogError::Fenced { .. }), "{err}");

    // Gap and overlap both violate "starts at the end offset".
    for start in [11, 9] {
        let err = cat
            .commit_object(object(b, vec![range(100, start, 30)]), vec![sc(100, 2)])
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                CatalogError::OffsetGap {
                    stream_id: 100,
                    expected: 10,
                    ..
                }
            ),
            "{err}"
        );
    }

    // One bad stream rejects the whole object: stream 200 must not advance.
    let s200 = cat.stream(200).unwrap().epoch;
    let err = cat
        .commit_object(
            object(b, vec![range(100, 10, 20), range(200, 0, 5)]),
            vec![sc(100, 1), sc(200, s200)],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CatalogError::Fenced { .. }));
    assert_eq!(cat.stream(200).unwrap().end_offset, 0);
    assert_eq!(cat.live_objects().len(), 1);

    // Unknown streams are reported as such.
    let err = cat
        .commit_object(object(b, vec![range(999, 0, 5)]), vec![sc(999, 1)])
        .await
        .unwrap_err();
    assert!(matches!(err, CatalogError::UnknownStream(999)));

    // The same object id can be committed once the ranges are right; not twice.
    cat.commit_object(
        object(b, vec![range(100, 10, 20), range(200, 0, 5)]),
        vec![sc(100, 2), sc(200, s200)],
    )
    .await
    .unwrap();
    assert_eq!(cat.stream(100).unwrap().end_offset, 20);
    assert_eq!(cat.stream(200).unwrap().end_offset, 5);
    assert!(
        cat.commit_object(object(b, vec![range(100, 20, 25)]), vec![sc(100, 2)])
            .await
            .is_err()
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_trim_dead_and_forget() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let cat = node.catalog();
    let e = cat.open_stream(1).await.unwrap().epoch;
    let e2 = cat.open_stream(2).await.unwrap().epoch;

    let o1 = commit(&cat, vec![range(1, 0, 10)], vec![sc(1, e)])
        .await
        .unwrap();
    let o2 = commit(
        &cat,
        vec![range(1, 10, 20), range(2, 0, 3)],
        vec![sc(1, e), sc(2, e2)],
    )
    .await
    .unwrap();
    let o3 = commit(&cat, vec![range(1, 20, 30)], vec![sc(1, e)])
        .await
        .unwrap();

    assert_eq!(
        ids(&cat.all_ranges(1)),
        vec![(o1, 0, 10), (o2, 10, 20), (o3, 20, 30)]
    );
    assert_eq!(ids(&cat.ranges_from(1, 0, 10)), ids(&cat.all_ranges(1)));
    assert_eq!(
        ids(&cat.ranges_from(1, 15, 10)),
        vec![(o2, 10, 20), (o3, 20, 30)]
    );
    assert_eq!(ids(&cat.ranges_from(1, 10, 1)), vec![(o2, 10, 20)]);
    assert_eq!(ids(&cat.ranges_from(1, 29, 5)), vec![(o3, 20, 30)]);
    assert!(cat.ranges_from(1, 30, 5).is_empty());
    assert!(cat.ranges_from(1, 0, 0).is_empty());
    assert!(cat.ranges_from(77, 0, 5).is_empty());
    let loc = &cat.ranges_from(1, 12, 1)[0];
    assert_eq!(loc.object_key, format!("wal/{o2:016}"));
    assert_eq!(loc.range, range(1, 10, 20));

    // Trim inside o2: o1 dies, o2 stays (partially live).
    cat.trim_stream(1, None, 12).await.unwrap();
    assert_eq!(cat.stream(1).unwrap().start_offset, 12);
    assert_eq!(ids(&cat.all_ranges(1)), vec![(o2, 10, 20), (o3, 20, 30)]);
    assert_eq!(
        ids(&cat.ranges_from(1, 0, 10)),
        vec![(o2, 10, 20), (o3, 20, 30)]
    );
    let dead = cat.dead_objects();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0.id, o1);
    assert!(dead[0].1 > 1_600_000_000_000, "dead time is wall clock ms");

    // Only the holder of the current epoch may trim: a deposed owner's retention is fenced
    // and changes nothing.
    assert!(matches!(
        cat.trim_stream(1, Some(e + 1), 20).await,
        Err(CatalogError::Fenced { stream_id: 1, .. })
    ));
    assert_eq!(cat.stream(1).unwrap().start_offset, 12);
    cat.trim_stream(1, Some(e), 12).await.unwrap();

    // Never lowers the start.
    cat.trim_stream(1, None, 5).await.unwrap();
    assert_eq!(cat.stream(1).unwrap().start_offset, 12);

    // Trimming past o2's stream-1 range keeps o2 alive through stream 2.
    cat.trim_stream(1, None, 25).await.unwrap();
    assert_eq!(ids(&cat.all_ranges(1)), vec![(o3, 20, 30)]);
    assert_eq!(cat.dead_objects().len(), 1);
    assert!(cat.live_objects().iter().any(|o| o.id == o2));

    // Never passes the end offset.
    cat.trim_stream(1, None, 1_000).await.unwrap();
    let s = cat.stream(1).unwrap();
    assert_eq!((s.start_offset, s.end_offset), (30, 30));
    assert!(cat.all_ranges(1).is_empty());
    let mut dead: Vec<u64> = cat.dead_objects().iter().map(|(o, _)| o.id).collect();
    dead.sort();
    assert_eq!(dead, vec![o1, o3]);

    // Appends continue at the end after a full trim.
    let o4 = commit(&cat, vec![range(1, 30, 31)], vec![sc(1, e)])
        .await
        .unwrap();
    assert_eq!(ids(&cat.ranges_from(1, 0, 9)), vec![(o4, 30, 31)]);

    // Deleting stream 2 kills o2; unknown streams are errors.
    cat.delete_stream(2).await.unwrap();
    assert!(cat.stream(2).is_none());
    let mut dead: Vec<u64> = cat.dead_objects().iter().map(|(o, _)| o.id).collect();
    dead.sort();
    assert_eq!(dead, vec![o1, o2, o3]);
    assert!(matches!(
        cat.delete_stream(2).await,
        Err(CatalogError::UnknownStream(2))
    ));
    assert!(matches!(
        cat.trim_stream(2, None, 1).await,
        Err(CatalogError::UnknownStream(2))
    ));

    // forget_objects drops dead ones and ignores live ones.
    cat.forget_objects(vec![o1, o3, o4]).await.unwrap();
    let dead: Vec<u64> = cat.dead_objects().iter().map(|(o, _)| o.id).collect();
    assert_eq!(dead, vec![o2]);
    assert_eq!(
        cat.live_objects().iter().map(|o| o.id).collect::<Vec<_>>(),
        vec![o4]
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_swaps_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let cat = node.catalog();
    let e1 = cat.open_stream(1).await.unwrap().epoch;
    let e2 = cat.open_stream(2).await.unwrap().epoch;
    let a = commit(
        &cat,
        vec![range(1, 0, 10), range(2, 0, 4)],
        vec![sc(1, e1), sc(2, e2)],
    )
    .await
    .unwrap();
    let b = commit(
        &cat,
        vec![range(1, 10, 15), range(2, 4, 8)],
        vec![sc(1, e1), sc(2, e2)],
    )
    .await
    .unwrap();
    let c = commit(&cat, vec![range(1, 15, 20)], vec![sc(1, e1)])
        .await
        .unwrap();
    let n = cat.prepare_object().await.unwrap();
    let before = node.read(|s| s.clone());

    // Missing data for stream 2 [4, 8): rejected, nothing changes.
    let err = cat
        .compact_objects(
            Some(object(n, vec![range(1, 0, 15), range(2, 0, 4)])),
            vec![a, b],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, CatalogError::OffsetGap { stream_id: 2, .. }),
        "{err}"
    );
    // Extra data not in the replaced objects (stream 1 [15, 20) lives in c): rejected.
    let err = cat
        .compact_objects(
            Some(object(n, vec![range(1, 0, 20), range(2, 0, 8)])),
            vec![a, b],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, CatalogError::OffsetGap { stream_id: 1, .. }),
        "{err}"
    );
    // None only drops objects without live data.
    assert!(cat.compact_objects(None, vec![a]).await.is_err());
    assert_eq!(node.read(|s| s.clone()), before);

    // A correct merge: one stream-set object replaces a and b.
    cat.compact_objects(
        Some(object(n, vec![range(1, 0, 15), range(2, 0, 8)])),
        vec![a, b],
    )
    .await
    .unwrap();
    assert_eq!(ids(&cat.all_ranges(1)), vec![(n, 0, 15), (c, 15, 20)]);
    assert_eq!(ids(&cat.all_ranges(2)), vec![(n, 0, 8)]);
    assert_eq!(ids(&cat.ranges_from(1, 14, 1)), vec![(n, 0, 15)]);
    let mut dead: Vec<u64> = cat.dead_objects().iter().map(|(o, _)| o.id).collect();
    dead.sort();
    assert_eq!(dead, vec![a, b]);
    let mut live: Vec<u64> = cat.live_objects().iter().map(|o| o.id).collect();
    live.sort();
    assert_eq!(live, vec![c, n]);
    // Stream offsets are untouched by compaction.
    assert_eq!(cat.stream(1).unwrap().end_offset, 20);

    // Splitting into per-stream objects after a trim: the part below the start may be dropped.
    cat.trim_stream(1, None, 3).await.unwrap();
    let s1 = cat.prepare_object().await.unwrap();
    cat.compact_objects(Some(object(s1, vec![range(1, 3, 20)])), vec![n, c])
        .await
        .unwrap_err(); // stream 2's data in n would be lost
    let s2 = cat.prepare_object().await.unwrap();
    cat.compact_objects(Some(object(s1, vec![range(1, 3, 20)])), vec![c])
        .await
        .unwrap_err(); // covers more than c
    cat.compact_objects(Some(object(s2, vec![range(1, 15, 20)])), vec![c])
        .await
        .unwrap();
    assert_eq!(ids(&cat.all_ranges(1)), vec![(n, 0, 15), (s2, 15, 20)]);

    // Replaced objects that already died (retention raced the compaction) are skipped.
    cat.trim_stream(1, None, 20).await.unwrap();
    assert!(cat.all_ranges(1).is_empty());
    let s3 = cat.prepare_object().await.unwrap();
    cat.compact_objects(Some(object(s3, vec![range(2, 0, 8)])), vec![n, s2])
        .await
        .unwrap();
    assert_eq!(ids(&cat.all_ranges(2)), vec![(s3, 0, 8)]);
    assert!(cat.dead_objects().iter().any(|(o, _)| o.id == n));
    node.shutdown().await;
}

/// The rules of `replace_stream_ranges` (log compaction), run against a catalog; returns
/// what it observed so the Raft catalog and the in-memory reference can be compared.
async fn replace_rules(cat: Arc<dyn ObjectCatalog>) -> Vec<String> {
    let mut seen = Vec::new();
    let e1 = cat.open_stream(1).await.unwrap().epoch;
    let e2 = cat.open_stream(2).await.unwrap().epoch;
    let o1 = commit(
        &cat,
        vec![range(1, 0, 10), range(2, 0, 5)],
        vec![sc(1, e1), sc(2, e2)],
    )
    .await
    .unwrap();
    let o2 = commit(&cat, vec![range(1, 10, 20)], vec![sc(1, e1)])
        .await
        .unwrap();
    commit(&cat, vec![range(1, 20, 30)], vec![sc(1, e1)])
        .await
        .unwrap();
    fn outcome(seen: &mut Vec<String>, what: &str, r: Result<(), CatalogError>) {
        let s = match r {
            Ok(()) => "ok".to_string(),
            Err(CatalogError::Fenced { .. }) => "fenced".to_string(),
            Err(CatalogError::OffsetGap { .. }) => "gap".to_string(),
            Err(CatalogError::UnknownStream(s)) => format!("unknown {s}"),
            Err(CatalogError::Unavailable(_)) => "invalid".to_string(),
        };
        seen.push(format!("{what}: {s}"));
    }
    let new = |id: u64, ranges| object(id, ranges);
    let id = cat.prepare_object().await.unwrap();
    // Rejections, each leaving the state unchanged.
    let r = cat
        .replace_stream_ranges(1, e1 - 1, 0, 20, new(id, vec![range(1, 0, 20)]))
        .await;
    outcome(&mut seen, "stale epoch", r);
    let r = cat
        .replace_stream_ranges(1, e1, 5, 20, new(id, vec![range(1, 5, 20)]))
        .await;
    outcome(&mut seen, "start inside a range", r);
    let r = cat
        .replace_stream_ranges(1, e1, 0, 15, new(id, vec![range(1, 0, 15)]))
        .await;
    outcome(&mut seen, "end inside a range", r);
    let r = cat
        .replace_stream_ranges(1, e1, 0, 40, new(id, vec![range(1, 0, 40)]))
        .await;
    outcome(&mut seen, "past the end", r);
    let r = cat
        .replace_stream_ranges(1, e1, 0, 20, new(id, vec![range(1, 0, 19)]))
        .await;
    outcome(&mut seen, "new ranges short", r);
    let r = cat
        .replace_stream_ranges(1, e1, 0, 20, new(id, vec![range(2, 0, 20)]))
        .await;
    outcome(&mut seen, "other stream", r);
    let r = cat
        .replace_stream_ranges(9, 1, 0, 20, new(id, vec![range(9, 0, 20)]))
        .await;
    outcome(&mut seen, "unknown stream", r);
    let r = cat
        .replace_stream_ranges(1, e1, 0, 20, new(o2, vec![range(1, 0, 20)]))
        .await;
    outcome(&mut seen, "reused object id", r);
    seen.push(format!("ranges {:?}", ids(&cat.all_ranges(1))));
    // Accepted: two ranges become one (here as two contiguous new ranges).
    let r = cat
        .replace_stream_ranges(
            1,
            e1,
            0,
            20,
            new(id, vec![range(1, 0, 12), range(1, 12, 20)]),
        )
        .await;
    outcome(&mut seen, "replace [0, 20)", r);
    seen.push(format!("ranges {:?}", ids(&cat.all_ranges(1))));
    seen.push(format!(
        "ranges from 13 {:?}",
        ids(&cat.ranges_from(1, 13, 1))
    ));
    // Object 1 keeps stream 2's range; object 2 had nothing else and died.
    let live: Vec<(u64, usize)> = cat
        .live_objects()
        .iter()
        .map(|o| (o.id, o.ranges.len()))
        .collect();
    seen.push(format!("live {live:?}"));
    let dead: Vec<u64> = cat.dead_objects().iter().map(|(o, _)| o.id).collect();
    seen.push(format!("dead {dead:?}"));
    assert!(dead.contains(&o2) && !dead.contains(&o1));
    // Trimming stream 2 now retires object 1 as well.
    cat.trim_stream(2, None, 5).await.unwrap();
    let dead: Vec<u64> = cat.dead_objects().iter().map(|(o, _)| o.id).collect();
    assert!(dead.contains(&o1));
    // Object ids handed out later stay unique; the object can be compacted like any other.
    let id2 = cat.prepare_object().await.unwrap();
    assert!(id2 > id);
    let r = cat
        .compact_objects(Some(new(id2, vec![range(1, 0, 30)])), vec![id, 3])
        .await;
    outcome(&mut seen, "merge after replace", r);
    seen.push(format!("ranges {:?}", ids(&cat.all_ranges(1))));
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_stream_ranges_matches_memory_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let raft = replace_rules(node.catalog()).await;
    let memory = replace_rules(Arc::new(shale_stream::memory::MemoryCatalog::new())).await;
    assert_eq!(raft, memory);
    let expected_rejections = [
        "stale epoch: fenced",
        "start inside a range: gap",
        "end inside a range: gap",
        "past the end: gap",
        "new ranges short: gap",
        "other stream: unknown 2",
        "unknown stream: unknown 9",
        "reused object id: invalid",
    ];
    assert_eq!(raft[..8], expected_rejections);
    assert!(
        raft.contains(&"replace [0, 20): ok".to_string()),
        "{raft:?}"
    );
    assert!(
        raft.contains(&"merge after replace: ok".to_string()),
        "{raft:?}"
    );
    // Survives a restart (log replay) with the same index.
    let before = ids(&node.catalog().all_ranges(1));
    node.shutdown().await;
    let node = start(dir.path()).await;
    assert_eq!(ids(&node.catalog().all_ranges(1)), before);
    node.shutdown().await;
}

/// Commits objects of 1000, 5000 and 300 bytes, then asks for those under 1000 and 5001.
async fn small_objects(cat: Arc<dyn ObjectCatalog>) -> Vec<Vec<u64>> {
    let e = cat.open_stream(1).await.unwrap().epoch;
    let mut ids = Vec::new();
    for (start, end) in [(0, 10), (10, 60), (60, 63)] {
        ids.push(
            commit(&cat, vec![range(1, start, end)], vec![sc(1, e)])
                .await
                .unwrap(),
        );
    }
    let size_of = |id: u64| {
        cat.live_objects()
            .into_iter()
            .find(|o| o.id == id)
            .map(|o| o.size)
    };
    assert_eq!(
        ids.iter().map(|&id| size_of(id)).collect::<Vec<_>>(),
        vec![Some(1000), Some(5000), Some(300)]
    );
    [1000, 5001]
        .into_iter()
        .map(|bytes| {
            let mut got: Vec<u64> = cat
                .live_objects_smaller_than(bytes)
                .into_iter()
                .map(|o| o.id)
                .collect();
            got.sort_unstable();
            got.into_iter()
                .map(|id| ids.iter().position(|&x| x == id).unwrap() as u64)
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_candidates_are_the_live_objects_below_the_size_only() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let meta = small_objects(node.catalog()).await;
    // Positions in commit order: 0 = 1000 bytes, 1 = 5000 bytes, 2 = 300 bytes.
    assert_eq!(meta, vec![vec![2], vec![0, 1, 2]]);
    let memory = small_objects(Arc::new(shale_stream::memory::MemoryCatalog::new())).await;
    assert_eq!(memory, meta);
    node.shutdown().await;
}
