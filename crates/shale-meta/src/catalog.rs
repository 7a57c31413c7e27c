//! [`ObjectCatalog`] on top of the metadata quorum: writes are Raft commands validated by the
//! state machine, reads come from the local applied state and its range index.

use crate::MetaNode;
use crate::types::{Command, Response};
use async_trait::async_trait;
use shale_stream::{
    CatalogError, ObjectCatalog, ObjectId, ObjectMeta, RangeLocation, StreamCommit, StreamId,
    StreamMeta,
};
use std::sync::Arc;

pub(crate) struct MetaCatalog {
    pub(crate) node: Arc<MetaNode>,
}

/// Object ids leased at once: one Raft write per this many WAL and compaction objects.
/// Unused ids of a block are simply never used (a restart leases a new one).
const OBJECT_ID_BLOCK: u64 = 256;

fn unexpected(r: Response) -> CatalogError {
    CatalogError::Unavailable(format!("unexpected state machine response {r:?}"))
}

impl MetaCatalog {
    async fn submit(&self, cmd: Command) -> Result<Response, CatalogError> {
        match self.node.submit(cmd).await {
            Ok(Response::Rejected(e)) => Err(e.into()),
            Ok(r) => Ok(r),
            Err(e) => Err(CatalogError::Unavailable(e.to_string())),
        }
    }

    async fn submit_unit(&self, cmd: Command) -> Result<(), CatalogError> {
        match self.submit(cmd).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

#[async_trait]
impl ObjectCatalog for MetaCatalog {
    async fn prepare_object(&self) -> Result<ObjectId, CatalogError> {
        if let Some(id) = self.node.object_ids.lock().next() {
            return Ok(id);
        }
        match self
            .submit(Command::LeaseObjectIds {
                count: OBJECT_ID_BLOCK,
            })
            .await?
        {
            Response::ObjectIds { start, count } => {
                let mut block = self.node.object_ids.lock();
                // Two leases racing: keep the newer block, lose nothing but ids.
                *block = start..start.saturating_add(count);
                block.next().ok_or_else(|| unexpected(Response::Ok))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn open_stream(&self, stream_id: StreamId) -> Result<StreamMeta, CatalogError> {
        self.open_stream_as(stream_id, None).await
    }

    async fn open_stream_as(
        &self,
        stream_id: StreamId,
        claim: Option<shale_stream::OpenClaim>,
    ) -> Result<StreamMeta, CatalogError> {
        match self
            .submit(Command::OpenStream { stream_id, claim })
            .await?
        {
            Response::Stream(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    async fn commit_object(
        &self,
        object: ObjectMeta,
        streams: Vec<StreamCommit>,
    ) -> Result<(), CatalogError> {
        self.submit_unit(Command::CommitObject { object, streams })
            .await
    }

    async fn compact_objects(
        &self,
        new_object: Option<ObjectMeta>,
        replaced: Vec<ObjectId>,
    ) -> Result<(), CatalogError> {
        self.submit_unit(Command::CompactObjects {
            new_object,
            replaced,
            now_ms: crate::now_ms(),
        })
        .await
    }

    async fn replace_stream_ranges(
        &self,
        stream_id: StreamId,
        epoch: u64,
        start: u64,
        end: u64,
        new_object: ObjectMeta,
    ) -> Result<(), CatalogError> {
        self.submit_unit(Command::ReplaceStreamRanges {
            stream_id,
            epoch,
            start,
            end,
            new_object,
            now_ms: crate::now_ms(),
        })
        .await
    }

    async fn trim_stream(
        &self,
        stream_id: StreamId,
        epoch: Option<u64>,
        new_start: u64,
    ) -> Result<(), CatalogError> {
        self.submit_unit(Command::TrimStream {
            stream_id,
            epoch,
            new_start,
            now_ms: crate::now_ms(),
        })
        .await
    }

    async fn delete_stream(&self, stream_id: StreamId) -> Result<(), CatalogError> {
        self.submit_unit(Command::DeleteStream {
            stream_id,
            now_ms: crate::now_ms(),
        })
        .await
    }

    fn dead_objects(&self) -> Vec<(ObjectMeta, i64)> {
        // O(1) copy under the state lock; the deep copy happens after it is released.
        let dead = self.node.read(|s| s.dead_objects.clone());
        dead.values()
            .map(|d| (d.object.clone(), d.dead_since_ms))
            .collect()
    }

    async fn forget_objects(&self, ids: Vec<ObjectId>) -> Result<(), CatalogError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.submit_unit(Command::ForgetObjects { ids }).await
    }

    fn stream(&self, stream_id: StreamId) -> Option<StreamMeta> {
        self.node.read(|s| s.streams.get(&stream_id).cloned())
    }

    fn ranges_from(
        &self,
        stream_id: StreamId,
        from_offset: u64,
        limit: usize,
    ) -> Vec<RangeLocation> {
        self.node
            .read_meta(|m| m.ranges_from(stream_id, from_offset, limit))
    }

    fn all_ranges(&self, stream_id: StreamId) -> Vec<RangeLocation> {
        self.node.read_meta(|m| m.all_ranges(stream_id))
    }

    fn live_objects_smaller_than(&self, bytes: u64) -> Vec<ObjectMeta> {
        let objects = self.node.read(|s| s.objects.clone());
        objects
            .values()
            .filter(|o| o.size < bytes)
            .cloned()
            .collect()
    }

    fn live_objects(&self) -> Vec<ObjectMeta> {
        // Compaction calls this on every pass: copying every object under the state lock
        // stalled applies (WAL commits) for as long. Now the lock covers an O(1) copy.
        let objects = self.node.read(|s| s.objects.clone());
        objects.values().cloned().collect()
    }
}
