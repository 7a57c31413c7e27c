//! An in-memory [`ObjectCatalog`]: the reference implementation of the catalog contract, used
//! by tests, the broker's unit tests and `shale dev --ephemeral`.
//!
//! Rules (the Raft-backed catalog in `shale-meta` applies the same ones):
//! - A range is *live* when its stream exists, it is non-empty and it ends above the stream's
//!   start offset. Live ranges of one stream never overlap.
//! - `objects` holds only objects with at least one live range; the others are *dead* (with the
//!   time they died) until `forget_objects`.
//! - `commit_object` validates everything before changing anything: every range must carry its
//!   stream's current epoch and continue the stream exactly at its end offset (several ranges
//!   of one stream in one object must be consecutive); every `StreamCommit` must carry the
//!   current epoch. An object without live ranges is accepted and goes straight to the dead list.
//! - `compact_objects` must preserve the live offsets of the replaced objects exactly (compared
//!   per stream after clipping at the stream start); replaced ids that are no longer live are
//!   ignored.
//! - `trim_stream` clamps to `[start, end]` and never lowers the start.
//! - `replace_stream_ranges` follows [`validate_replace`]; replaced ranges are removed from
//!   their objects' range lists, and objects left without live ranges die.

use crate::catalog::*;
use async_trait::async_trait;
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

/// In-memory catalog. Cheap to create; share it as `Arc<MemoryCatalog>` between stores to
/// simulate several nodes on one metadata quorum.
#[derive(Default)]
pub struct MemoryCatalog {
    state: Mutex<State>,
    faults: Mutex<Faults>,
}

#[derive(Default)]
struct Faults {
    /// Commits rejected with `Unavailable` without being applied.
    fail_commits: usize,
    /// Commits applied but answered with `Unavailable` (a lost response).
    lose_commit_acks: usize,
    /// `prepare_object` calls failing with `Unavailable`.
    fail_prepares: usize,
}

#[derive(Default)]
struct State {
    next_object_id: u64,
    streams: BTreeMap<StreamId, StreamMeta>,
    objects: BTreeMap<ObjectId, ObjectMeta>,
    dead: BTreeMap<ObjectId, (ObjectMeta, i64)>,
    /// Live ranges per stream keyed by start offset: (object id, slot in `ranges`).
    index: HashMap<StreamId, BTreeMap<u64, (ObjectId, usize)>>,
}

fn now_ms() -> i64 {
    crate::util::now_ms()
}

fn range_live(streams: &BTreeMap<StreamId, StreamMeta>, r: &ObjectRange) -> bool {
    streams
        .get(&r.stream_id)
        .is_some_and(|s| r.end_offset > r.start_offset && r.end_offset > s.start_offset)
}

fn object_live(streams: &BTreeMap<StreamId, StreamMeta>, o: &ObjectMeta) -> bool {
    o.ranges.iter().any(|r| range_live(streams, r))
}

fn merge_intervals(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

impl MemoryCatalog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `n` `commit_object` calls fail with `Unavailable` (nothing applied).
    pub fn inject_commit_failures(&self, n: usize) {
        self.faults.lock().fail_commits = n;
    }

    /// Makes the next `n` `commit_object` calls apply but report `Unavailable`, as when the
    /// quorum commits and the response is lost.
    pub fn inject_lost_commit_acks(&self, n: usize) {
        self.faults.lock().lose_commit_acks = n;
    }

    /// Makes the next `n` `prepare_object` calls fail with `Unavailable`.
    pub fn inject_prepare_failures(&self, n: usize) {
        self.faults.lock().fail_prepares = n;
    }

    /// A committed (live or dead, not yet forgotten) object.
    pub fn object(&self, id: ObjectId) -> Option<ObjectMeta> {
        let st = self.state.lock();
        st.objects
            .get(&id)
            .cloned()
            .or_else(|| st.dead.get(&id).map(|(o, _)| o.clone()))
    }
}

impl State {
    fn index_insert(&mut self, o: &ObjectMeta) {
        for (slot, r) in o.ranges.iter().enumerate() {
            if range_live(&self.streams, r) {
                self.index
                    .entry(r.stream_id)
                    .or_default()
                    .insert(r.start_offset, (o.id, slot));
            }
        }
    }

    fn index_remove(&mut self, o: &ObjectMeta) {
        for r in &o.ranges {
            if let Some(m) = self.index.get_mut(&r.stream_id) {
                if m.get(&r.start_offset).map(|x| x.0) == Some(o.id) {
                    m.remove(&r.start_offset);
                }
                if m.is_empty() {
                    self.index.remove(&r.stream_id);
                }
            }
        }
    }

    fn location(&self, (id, slot): (ObjectId, usize)) -> Option<RangeLocation> {
        let o = self.objects.get(&id)?;
        Some(RangeLocation {
            object_id: id,
            object_key: o.key.clone(),
            range: o.ranges.get(slot)?.clone(),
        })
    }

    fn taken(&self, id: ObjectId) -> bool {
        self.objects.contains_key(&id) || self.dead.contains_key(&id)
    }

    fn note_object_id(&mut self, id: ObjectId) {
        if id >= self.next_object_id {
            self.next_object_id = id + 1;
        }
    }

    fn insert_object(&mut self, o: ObjectMeta, dead_since: i64) {
        if object_live(&self.streams, &o) {
            self.index_insert(&o);
            self.objects.insert(o.id, o);
        } else {
            self.dead.insert(o.id, (o, dead_since));
        }
    }

    fn retire_if_dead(&mut self, id: ObjectId, now: i64) {
        let dead = self
            .objects
            .get(&id)
            .is_some_and(|o| !object_live(&self.streams, o));
        if dead && let Some(o) = self.objects.remove(&id) {
            self.index_remove(&o);
            self.dead.insert(id, (o, now));
        }
    }

    fn live_coverage<'a>(
        &self,
        ranges: impl Iterator<Item = &'a ObjectRange>,
    ) -> BTreeMap<StreamId, Vec<(u64, u64)>> {
        let mut cov: BTreeMap<StreamId, Vec<(u64, u64)>> = BTreeMap::new();
        for r in ranges {
            if !range_live(&self.streams, r) {
                continue;
            }
            let start = self
                .streams
                .get(&r.stream_id)
                .map_or(r.start_offset, |s| r.start_offset.max(s.start_offset));
            cov.entry(r.stream_id)
                .or_default()
                .push((start, r.end_offset));
        }
        cov.into_iter()
            .map(|(k, v)| (k, merge_intervals(v)))
            .collect()
    }

    fn commit_object(
        &mut self,
        object: ObjectMeta,
        commits: &[StreamCommit],
    ) -> Result<(), CatalogError> {
        if self.taken(object.id) {
            return Err(CatalogError::Unavailable(format!(
                "invalid request: object {} is already committed",
                object.id
            )));
        }
        let epoch_of = |sid| commits.iter().find(|c| c.stream_id == sid).map(|c| c.epoch);
        let mut ends: BTreeMap<StreamId, u64> = BTreeMap::new();
        for r in &object.ranges {
            let s = self
                .streams
                .get(&r.stream_id)
                .ok_or(CatalogError::UnknownStream(r.stream_id))?;
            match epoch_of(r.stream_id) {
                Some(e) if e == s.epoch => {}
                e => {
                    return Err(CatalogError::Fenced {
                        stream_id: r.stream_id,
                        epoch: e.unwrap_or(0),
                        current: s.epoch,
                    });
                }
            }
            let expected = ends.get(&r.stream_id).copied().unwrap_or(s.end_offset);
            if r.start_offset != expected || r.end_offset < r.start_offset {
                return Err(CatalogError::OffsetGap {
                    stream_id: r.stream_id,
                    start: r.start_offset,
                    expected,
                });
            }
            ends.insert(r.stream_id, r.end_offset);
        }
        for c in commits {
            let s = self
                .streams
                .get(&c.stream_id)
                .ok_or(CatalogError::UnknownStream(c.stream_id))?;
            if c.epoch != s.epoch {
                return Err(CatalogError::Fenced {
                    stream_id: c.stream_id,
                    epoch: c.epoch,
                    current: s.epoch,
                });
            }
        }
        for (sid, end) in ends {
            if let Some(s) = self.streams.get_mut(&sid) {
                s.end_offset = end;
            }
        }
        self.note_object_id(object.id);
        let dead_since = object.committed_at_ms;
        self.insert_object(object, dead_since);
        Ok(())
    }

    fn compact_objects(
        &mut self,
        new_object: Option<ObjectMeta>,
        replaced: Vec<ObjectId>,
        now: i64,
    ) -> Result<(), CatalogError> {
        if let Some(n) = new_object.as_ref().filter(|n| self.taken(n.id)) {
            return Err(CatalogError::Unavailable(format!(
                "invalid request: object {} is already committed",
                n.id
            )));
        }
        // Replaced objects that already died (retention raced the compaction) hold no live data.
        let replaced: BTreeSet<ObjectId> = replaced
            .into_iter()
            .filter(|id| self.objects.contains_key(id))
            .collect();
        if let Some(n) = &new_object {
            let mut by_stream: BTreeMap<StreamId, Vec<&ObjectRange>> = BTreeMap::new();
            for r in n.ranges.iter().filter(|r| range_live(&self.streams, r)) {
                by_stream.entry(r.stream_id).or_default().push(r);
            }
            for (sid, mut rs) in by_stream {
                rs.sort_by_key(|r| r.start_offset);
                for w in rs.windows(2) {
                    if w[1].start_offset < w[0].end_offset {
                        return Err(CatalogError::OffsetGap {
                            stream_id: sid,
                            start: w[1].start_offset,
                            expected: w[0].end_offset,
                        });
                    }
                }
            }
        }
        let old = self.live_coverage(
            replaced
                .iter()
                .filter_map(|id| self.objects.get(id))
                .flat_map(|o| o.ranges.iter()),
        );
        let new = self.live_coverage(new_object.iter().flat_map(|o| o.ranges.iter()));
        let streams: BTreeSet<StreamId> = old.keys().chain(new.keys()).copied().collect();
        for sid in streams {
            let empty = Vec::new();
            let o = old.get(&sid).unwrap_or(&empty);
            let n = new.get(&sid).unwrap_or(&empty);
            if o != n {
                let i = o.iter().zip(n.iter()).take_while(|(a, b)| a == b).count();
                let (start, expected) = match (n.get(i), o.get(i)) {
                    (Some(n), Some(o)) if n.0 == o.0 => (n.1, o.1),
                    (Some(n), Some(o)) => (n.0, o.0),
                    (Some(n), None) => (n.0, o.last().map_or(n.0, |o| o.1)),
                    (None, Some(o)) => (n.last().map_or(o.0, |n| n.1), o.0),
                    (None, None) => (0, 0),
                };
                return Err(CatalogError::OffsetGap {
                    stream_id: sid,
                    start,
                    expected,
                });
            }
        }
        for id in &replaced {
            if let Some(o) = self.objects.remove(id) {
                self.index_remove(&o);
                self.dead.insert(*id, (o, now));
            }
        }
        if let Some(n) = new_object {
            self.note_object_id(n.id);
            self.insert_object(n, now);
        }
        Ok(())
    }

    fn trim_stream(
        &mut self,
        stream_id: StreamId,
        epoch: Option<u64>,
        new_start: u64,
        now: i64,
    ) -> Result<(), CatalogError> {
        let s = self
            .streams
            .get_mut(&stream_id)
            .ok_or(CatalogError::UnknownStream(stream_id))?;
        if let Some(epoch) = epoch
            && epoch != s.epoch
        {
            return Err(CatalogError::Fenced {
                stream_id,
                epoch,
                current: s.epoch,
            });
        }
        let target = new_start.min(s.end_offset);
        if target <= s.start_offset {
            return Ok(());
        }
        s.start_offset = target;
        let mut affected = BTreeSet::new();
        let mut drop_keys = Vec::new();
        if let Some(m) = self.index.get(&stream_id) {
            // Live ranges are disjoint and sorted, so their ends increase too.
            for (start, &(id, slot)) in m {
                let end = self
                    .objects
                    .get(&id)
                    .and_then(|o| o.ranges.get(slot))
                    .map(|r| r.end_offset);
                match end {
                    Some(e) if e > target => break,
                    _ => {
                        drop_keys.push(*start);
                        affected.insert(id);
                    }
                }
            }
        }
        if let Some(m) = self.index.get_mut(&stream_id) {
            for k in drop_keys {
                m.remove(&k);
            }
            if m.is_empty() {
                self.index.remove(&stream_id);
            }
        }
        for id in affected {
            self.retire_if_dead(id, now);
        }
        Ok(())
    }

    fn replace_stream_ranges(
        &mut self,
        stream_id: StreamId,
        epoch: u64,
        start: u64,
        end: u64,
        new_object: ObjectMeta,
        now: i64,
    ) -> Result<(), CatalogError> {
        if self.taken(new_object.id) {
            return Err(CatalogError::Unavailable(format!(
                "invalid request: object {} is already committed",
                new_object.id
            )));
        }
        let s = self
            .streams
            .get(&stream_id)
            .ok_or(CatalogError::UnknownStream(stream_id))?;
        // Live ranges overlapping [start, end): the one holding `start` and those after it.
        let mut replaced: Vec<(u64, u64, ObjectId)> = Vec::new();
        if let Some(m) = self.index.get(&stream_id).filter(|_| start < end) {
            let first = m.range(..=start).next_back().map_or(start, |(k, _)| *k);
            for (&k, &(id, slot)) in m.range(first..end) {
                if let Some(r) = self.objects.get(&id).and_then(|o| o.ranges.get(slot)) {
                    replaced.push((k, r.end_offset, id));
                }
            }
        }
        let live: Vec<(u64, u64)> = replaced.iter().map(|&(s, e, _)| (s, e)).collect();
        validate_replace(s, epoch, start, end, &live, &new_object.ranges)?;
        let mut by_object: BTreeMap<ObjectId, BTreeSet<u64>> = BTreeMap::new();
        for (s, _, id) in replaced {
            by_object.entry(id).or_default().insert(s);
        }
        for (id, starts) in by_object {
            let Some(mut o) = self.objects.remove(&id) else {
                continue;
            };
            // Slots shift when ranges are removed: re-index the object as a whole.
            self.index_remove(&o);
            o.ranges
                .retain(|r| !(r.stream_id == stream_id && starts.contains(&r.start_offset)));
            self.insert_object(o, now);
        }
        self.note_object_id(new_object.id);
        self.insert_object(new_object, now);
        Ok(())
    }

    fn delete_stream(&mut self, stream_id: StreamId, now: i64) -> Result<(), CatalogError> {
        if self.streams.remove(&stream_id).is_none() {
            return Err(CatalogError::UnknownStream(stream_id));
        }
        let affected: BTreeSet<ObjectId> = self
            .index
            .remove(&stream_id)
            .map(|m| m.values().map(|(id, _)| *id).collect())
            .unwrap_or_default();
        for id in affected {
            self.retire_if_dead(id, now);
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectCatalog for MemoryCatalog {
    async fn prepare_object(&self) -> Result<ObjectId, CatalogError> {
        {
            let mut f = self.faults.lock();
            if f.fail_prepares > 0 {
                f.fail_prepares -= 1;
                return Err(CatalogError::Unavailable("injected prepare failure".into()));
            }
        }
        let mut st = self.state.lock();
        let id = st.next_object_id.max(1);
        st.next_object_id = id + 1;
        Ok(id)
    }

    async fn open_stream(&self, stream_id: StreamId) -> Result<StreamMeta, CatalogError> {
        let mut st = self.state.lock();
        let s = st.streams.entry(stream_id).or_insert(StreamMeta {
            id: stream_id,
            epoch: 0,
            start_offset: 0,
            end_offset: 0,
        });
        s.epoch += 1;
        Ok(s.clone())
    }

    async fn commit_object(
        &self,
        object: ObjectMeta,
        streams: Vec<StreamCommit>,
    ) -> Result<(), CatalogError> {
        let lose_ack = {
            let mut f = self.faults.lock();
            if f.fail_commits > 0 {
                f.fail_commits -= 1;
                return Err(CatalogError::Unavailable("injected commit failure".into()));
            }
            let lose = f.lose_commit_acks > 0;
            if lose {
                f.lose_commit_acks -= 1;
            }
            lose
        };
        self.state.lock().commit_object(object, &streams)?;
        if lose_ack {
            return Err(CatalogError::Unavailable(
                "injected lost commit response".into(),
            ));
        }
        Ok(())
    }

    async fn compact_objects(
        &self,
        new_object: Option<ObjectMeta>,
        replaced: Vec<ObjectId>,
    ) -> Result<(), CatalogError> {
        self.state
            .lock()
            .compact_objects(new_object, replaced, now_ms())
    }

    async fn replace_stream_ranges(
        &self,
        stream_id: StreamId,
        epoch: u64,
        start: u64,
        end: u64,
        new_object: ObjectMeta,
    ) -> Result<(), CatalogError> {
        self.state
            .lock()
            .replace_stream_ranges(stream_id, epoch, start, end, new_object, now_ms())
    }

    async fn trim_stream(
        &self,
        stream_id: StreamId,
        epoch: Option<u64>,
        new_start: u64,
    ) -> Result<(), CatalogError> {
        self.state
            .lock()
            .trim_stream(stream_id, epoch, new_start, now_ms())
    }

    async fn delete_stream(&self, stream_id: StreamId) -> Result<(), CatalogError> {
        self.state.lock().delete_stream(stream_id, now_ms())
    }

    fn dead_objects(&self) -> Vec<(ObjectMeta, i64)> {
        self.state.lock().dead.values().cloned().collect()
    }

    async fn forget_objects(&self, ids: Vec<ObjectId>) -> Result<(), CatalogError> {
        let mut st = self.state.lock();
        // Only dead objects can be forgotten; a live id here is a caller bug and is ignored.
        for id in ids {
            st.dead.remove(&id);
        }
        Ok(())
    }

    fn stream(&self, stream_id: StreamId) -> Option<StreamMeta> {
        self.state.lock().streams.get(&stream_id).cloned()
    }

    fn ranges_from(
        &self,
        stream_id: StreamId,
        from_offset: u64,
        limit: usize,
    ) -> Vec<RangeLocation> {
        let st = self.state.lock();
        let mut out = Vec::new();
        let Some(m) = st.index.get(&stream_id) else {
            return out;
        };
        if limit == 0 {
            return out;
        }
        // The range holding `from_offset` starts at or before it (live ranges do not overlap).
        if let Some(loc) = m
            .range(..=from_offset)
            .next_back()
            .and_then(|(_, rr)| st.location(*rr))
            && loc.range.end_offset > from_offset
        {
            out.push(loc);
        }
        for (_, rr) in m.range((Bound::Excluded(from_offset), Bound::Unbounded)) {
            if out.len() >= limit {
                break;
            }
            if let Some(loc) = st.location(*rr) {
                out.push(loc);
            }
        }
        out
    }

    fn all_ranges(&self, stream_id: StreamId) -> Vec<RangeLocation> {
        let st = self.state.lock();
        st.index
            .get(&stream_id)
            .map(|m| m.values().filter_map(|rr| st.location(*rr)).collect())
            .unwrap_or_default()
    }

    fn live_objects(&self) -> Vec<ObjectMeta> {
        self.state.lock().objects.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(sid: StreamId, start: u64, end: u64) -> ObjectRange {
        ObjectRange {
            stream_id: sid,
            start_offset: start,
            end_offset: end,
            position: 0,
            length: 10,
            max_timestamp: -1,
            crc: 0,
        }
    }

    fn object(id: ObjectId, ranges: Vec<ObjectRange>) -> ObjectMeta {
        ObjectMeta {
            id,
            key: format!("k{id}"),
            size: 100,
            ranges,
            committed_at_ms: 1,
        }
    }

    fn commit(sid: StreamId, epoch: u64) -> StreamCommit {
        StreamCommit {
            stream_id: sid,
            epoch,
        }
    }

    #[tokio::test]
    async fn commit_rules() {
        let c = MemoryCatalog::new();
        assert_eq!(c.prepare_object().await.unwrap(), 1);
        assert_eq!(c.prepare_object().await.unwrap(), 2);
        let s = c.open_stream(7).await.unwrap();
        assert_eq!((s.epoch, s.start_offset, s.end_offset), (1, 0, 0));
        // Unknown stream, wrong epoch, gap: all rejected without changes.
        assert!(matches!(
            c.commit_object(object(1, vec![range(8, 0, 1)]), vec![commit(8, 1)])
                .await,
            Err(CatalogError::UnknownStream(8))
        ));
        assert!(matches!(
            c.commit_object(object(1, vec![range(7, 0, 1)]), vec![commit(7, 0)])
                .await,
            Err(CatalogError::Fenced { .. })
        ));
        assert!(matches!(
            c.commit_object(object(1, vec![range(7, 1, 2)]), vec![commit(7, 1)])
                .await,
            Err(CatalogError::OffsetGap { expected: 0, .. })
        ));
        // Two consecutive ranges of one stream in one object are fine.
        c.commit_object(
            object(1, vec![range(7, 0, 5), range(7, 5, 9)]),
            vec![commit(7, 1)],
        )
        .await
        .unwrap();
        assert_eq!(c.stream(7).unwrap().end_offset, 9);
        assert!(c.commit_object(object(1, vec![]), vec![]).await.is_err());
        assert_eq!(c.ranges_from(7, 6, 10).len(), 1);
        assert_eq!(c.ranges_from(7, 0, 10).len(), 2);
        assert_eq!(c.ranges_from(7, 0, 1).len(), 1);
        assert!(c.ranges_from(7, 9, 10).is_empty());
        // Reopen fences the old epoch.
        assert_eq!(c.open_stream(7).await.unwrap().epoch, 2);
        assert!(matches!(
            c.commit_object(object(2, vec![range(7, 9, 10)]), vec![commit(7, 1)])
                .await,
            Err(CatalogError::Fenced { current: 2, .. })
        ));
        // Empty object: accepted, straight to dead.
        c.commit_object(object(3, vec![]), vec![]).await.unwrap();
        assert_eq!(c.dead_objects().len(), 1);
        c.forget_objects(vec![3, 1]).await.unwrap();
        assert!(c.dead_objects().is_empty());
        assert_eq!(c.live_objects().len(), 1);
    }

    #[tokio::test]
    async fn trim_and_compact() {
        let c = MemoryCatalog::new();
        c.open_stream(1).await.unwrap();
        c.open_stream(2).await.unwrap();
        c.commit_object(
            object(1, vec![range(1, 0, 10), range(2, 0, 5)]),
            vec![commit(1, 1), commit(2, 1)],
        )
        .await
        .unwrap();
        c.commit_object(object(2, vec![range(1, 10, 20)]), vec![commit(1, 1)])
            .await
            .unwrap();
        c.commit_object(object(3, vec![range(1, 20, 30)]), vec![commit(1, 1)])
            .await
            .unwrap();
        // Trim clamps and never lowers.
        c.trim_stream(1, None, 15).await.unwrap();
        c.trim_stream(1, None, 3).await.unwrap();
        assert_eq!(c.stream(1).unwrap().start_offset, 15);
        assert_eq!(c.all_ranges(1).len(), 2);
        // Object 1 still has stream 2 live.
        assert_eq!(c.live_objects().len(), 3);
        c.trim_stream(2, None, 100).await.unwrap();
        assert_eq!(c.stream(2).unwrap().start_offset, 5);
        assert_eq!(c.live_objects().len(), 2);
        assert_eq!(c.dead_objects().len(), 1);
        // Compaction must cover exactly the live data.
        let bad = object(4, vec![range(1, 10, 25)]);
        assert!(c.compact_objects(Some(bad), vec![2, 3]).await.is_err());
        let good = object(4, vec![range(1, 12, 30)]);
        c.compact_objects(Some(good), vec![2, 3]).await.unwrap();
        assert_eq!(c.all_ranges(1).len(), 1);
        assert_eq!(c.ranges_from(1, 15, 5)[0].object_id, 4);
        assert_eq!(c.dead_objects().len(), 3);
        // Compacting already-dead objects again finds no live data to replace.
        assert!(
            c.compact_objects(Some(object(5, vec![range(1, 15, 30)])), vec![2, 3])
                .await
                .is_err()
        );
        c.delete_stream(1).await.unwrap();
        assert!(c.delete_stream(1).await.is_err());
        assert!(c.live_objects().is_empty());
        assert!(c.trim_stream(1, None, 1).await.is_err());
    }

    #[tokio::test]
    async fn faults() {
        let c = MemoryCatalog::new();
        c.open_stream(1).await.unwrap();
        c.inject_prepare_failures(1);
        assert!(c.prepare_object().await.is_err());
        assert!(c.prepare_object().await.is_ok());
        c.inject_commit_failures(1);
        assert!(
            c.commit_object(object(1, vec![range(1, 0, 1)]), vec![commit(1, 1)])
                .await
                .is_err()
        );
        assert_eq!(c.stream(1).unwrap().end_offset, 0);
        c.inject_lost_commit_acks(1);
        assert!(
            c.commit_object(object(1, vec![range(1, 0, 1)]), vec![commit(1, 1)])
                .await
                .is_err()
        );
        assert_eq!(c.stream(1).unwrap().end_offset, 1);
        assert!(c.object(1).is_some());
    }
}
