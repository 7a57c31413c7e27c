//! The object catalog: the one seam between the stream layer and the metadata layer.
//!
//! The stream layer never stores durable state of its own besides objects in the bucket. Which
//! objects exist, which offset ranges of which streams they hold, and each stream's epoch and
//! start/end offsets live in the catalog (implemented by `shale-meta` on top of Raft). Reads of
//! the catalog are local (a replica of the metadata); writes are committed through the quorum.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Identifies a stream (a Kafka partition's data log, for the broker).
pub type StreamId = u64;
/// Identifies an object in the bucket; unique for the cluster's lifetime.
pub type ObjectId = u64;

/// One contiguous range of one stream inside one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRange {
    pub stream_id: StreamId,
    /// First offset in the range (inclusive).
    pub start_offset: u64,
    /// One past the last offset in the range.
    pub end_offset: u64,
    /// Byte position of the range's data block inside the object.
    pub position: u64,
    /// Byte length of the range's data block.
    pub length: u32,
    /// Largest record timestamp in the range (ms), as given by the appender; -1 if unknown.
    pub max_timestamp: i64,
    /// CRC-32C of the data block.
    pub crc: u32,
}

/// A committed object as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub id: ObjectId,
    /// Key of the object in the bucket.
    pub key: String,
    /// Total object size in bytes.
    pub size: u64,
    /// Ranges in the object still referenced, ordered by (stream_id, start_offset). A range
    /// superseded by [`ObjectCatalog::replace_stream_ranges`] is removed from this list (its
    /// bytes stay in the object until the object dies as a whole).
    pub ranges: Vec<ObjectRange>,
    /// Wall-clock ms when the object was committed.
    pub committed_at_ms: i64,
}

/// Who opens a stream: the catalog may refuse an open by anyone but the stream's assigned
/// holder at its current registration (the metadata quorum checks partition ownership), so a
/// deposed holder cannot take a stream back by reopening it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenClaim {
    pub holder: u64,
    pub holder_epoch: u64,
}

/// A stream's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamMeta {
    pub id: StreamId,
    /// Bumped by every open; commits carrying an older epoch are rejected (fencing).
    pub epoch: u64,
    /// Offsets below this are logically deleted (retention, DeleteRecords).
    pub start_offset: u64,
    /// One past the last committed offset (the high watermark).
    pub end_offset: u64,
}

/// Where to read a stream's data: one range located in one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeLocation {
    pub object_id: ObjectId,
    pub object_key: String,
    pub range: ObjectRange,
}

/// A stream's part of a WAL commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamCommit {
    pub stream_id: StreamId,
    /// The epoch under which the appender owns the stream.
    pub epoch: u64,
}

/// Errors the catalog reports.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The stream was opened again under a newer epoch (another owner): the caller is a zombie.
    #[error(
        "stream {stream_id} fenced: asked at epoch {epoch} by a handle or owner that is not current (stream epoch {current})"
    )]
    Fenced {
        stream_id: StreamId,
        epoch: u64,
        current: u64,
    },
    #[error("unknown stream {0}")]
    UnknownStream(StreamId),
    /// A range does not continue the stream at its committed end offset.
    #[error(
        "stream {stream_id}: offsets do not line up (a range at {start} where {expected} was expected, or live offsets not covered)"
    )]
    OffsetGap {
        stream_id: StreamId,
        start: u64,
        expected: u64,
    },
    /// The metadata quorum could not commit (no leader, shutting down, I/O).
    #[error("metadata unavailable: {0}")]
    Unavailable(String),
}

/// The metadata operations the stream layer needs.
#[async_trait]
pub trait ObjectCatalog: Send + Sync + 'static {
    /// Reserves a fresh object id; the object is written to the bucket under a key derived from it.
    async fn prepare_object(&self) -> Result<ObjectId, CatalogError>;

    /// Opens a stream for appending: bumps and returns its epoch (fencing any older owner).
    /// Creates the stream metadata if it does not exist.
    async fn open_stream(&self, stream_id: StreamId) -> Result<StreamMeta, CatalogError>;

    /// [`ObjectCatalog::open_stream`] on behalf of `claim`; catalogs that know no holders
    /// ignore it.
    async fn open_stream_as(
        &self,
        stream_id: StreamId,
        claim: Option<OpenClaim>,
    ) -> Result<StreamMeta, CatalogError> {
        let _ = claim;
        self.open_stream(stream_id).await
    }

    /// Atomically commits a WAL object. Every range must start exactly at its stream's
    /// committed end offset and carry the stream's current epoch; the whole commit is
    /// rejected otherwise. On success each stream's end offset advances to its range end.
    async fn commit_object(
        &self,
        object: ObjectMeta,
        streams: Vec<StreamCommit>,
    ) -> Result<(), CatalogError>;

    /// Atomically replaces `replaced` objects by `new_object` (compaction). Ranges of the new
    /// object must cover exactly the still-live ranges of the replaced objects.
    /// `new_object = None` just drops objects whose ranges are all below stream start offsets.
    async fn compact_objects(
        &self,
        new_object: Option<ObjectMeta>,
        replaced: Vec<ObjectId>,
    ) -> Result<(), CatalogError>;

    /// Atomically replaces a stream's live ranges covering exactly `[start, end)` by the ranges
    /// of `new_object` (log compaction rewriting a stream's older data). Rules:
    /// - `epoch` must be the stream's current epoch (only the owner rewrites; `Fenced`);
    /// - `start < end <= end_offset`, `start` must be the start of a live range and `end` the
    ///   end of one, with the live ranges in between contiguous (`OffsetGap` otherwise);
    /// - `new_object`'s ranges all belong to `stream_id`, are non-empty, contiguous, and span
    ///   exactly `[start, end)` (`OffsetGap` otherwise). They may hold fewer entries than the
    ///   offsets they span (gaps), or none.
    ///
    /// The replaced ranges are removed from their objects' `ranges`; an object left with no
    /// live range becomes dead. Other streams' ranges in those objects are untouched.
    async fn replace_stream_ranges(
        &self,
        stream_id: StreamId,
        epoch: u64,
        start: u64,
        end: u64,
        new_object: ObjectMeta,
    ) -> Result<(), CatalogError>;

    /// Raises a stream's start offset (retention, DeleteRecords). Never lowers it and never
    /// moves it past the end offset. Objects left without live ranges become deletable.
    /// With an `epoch`, only the holder of the stream's current epoch may trim (a deposed
    /// owner's retention is `Fenced`).
    async fn trim_stream(
        &self,
        stream_id: StreamId,
        epoch: Option<u64>,
        new_start: u64,
    ) -> Result<(), CatalogError>;

    /// Removes a stream entirely (topic deletion); its objects' ranges become dead.
    async fn delete_stream(&self, stream_id: StreamId) -> Result<(), CatalogError>;

    /// Objects no live range points into any more, with the time they became dead (ms).
    /// The stream layer deletes them from the bucket after a grace period, then calls
    /// `forget_objects`.
    fn dead_objects(&self) -> Vec<(ObjectMeta, i64)>;

    /// Forgets objects that were deleted from the bucket.
    async fn forget_objects(&self, ids: Vec<ObjectId>) -> Result<(), CatalogError>;

    /// Local read: a stream's metadata.
    fn stream(&self, stream_id: StreamId) -> Option<StreamMeta>;

    /// Local read: the ranges of a stream holding offsets >= `from_offset`, in offset order,
    /// at most `limit` of them.
    fn ranges_from(
        &self,
        stream_id: StreamId,
        from_offset: u64,
        limit: usize,
    ) -> Vec<RangeLocation>;

    /// Local read: every live range of a stream in offset order (retention, compaction).
    fn all_ranges(&self, stream_id: StreamId) -> Vec<RangeLocation>;

    /// Local read: all committed live objects (compaction picks from these).
    fn live_objects(&self) -> Vec<ObjectMeta>;

    /// Local read: the live objects smaller than `bytes` (compaction's merge candidates, a
    /// small share of all objects once compaction keeps up). The default filters
    /// [`ObjectCatalog::live_objects`]; a catalog holding many objects should answer it
    /// without copying the others.
    fn live_objects_smaller_than(&self, bytes: u64) -> Vec<ObjectMeta> {
        let mut objects = self.live_objects();
        objects.retain(|o| o.size < bytes);
        objects
    }
}

/// The validation rules of [`ObjectCatalog::replace_stream_ranges`], shared by every catalog
/// implementation so they accept and reject exactly the same requests. `live` holds the
/// stream's live ranges as `(start, end)` in offset order (at least those overlapping
/// `[start, end)`).
pub fn validate_replace(
    stream: &StreamMeta,
    epoch: u64,
    start: u64,
    end: u64,
    live: &[(u64, u64)],
    new_ranges: &[ObjectRange],
) -> Result<(), CatalogError> {
    let sid = stream.id;
    if epoch != stream.epoch {
        return Err(CatalogError::Fenced {
            stream_id: sid,
            epoch,
            current: stream.epoch,
        });
    }
    let gap = |start, expected| CatalogError::OffsetGap {
        stream_id: sid,
        start,
        expected,
    };
    if start >= end {
        return Err(gap(start, end));
    }
    if end > stream.end_offset {
        return Err(gap(end, stream.end_offset));
    }
    // The replaced span must be made of whole, contiguous live ranges.
    let mut expected = start;
    for &(s, e) in live.iter().filter(|(s, e)| *e > start && *s < end) {
        if s != expected {
            return Err(gap(s, expected));
        }
        expected = e;
    }
    if expected != end {
        return Err(gap(expected, end));
    }
    // The new ranges must tile exactly the same span.
    let mut expected = start;
    for r in new_ranges {
        if r.stream_id != sid {
            return Err(CatalogError::UnknownStream(r.stream_id));
        }
        if r.start_offset != expected || r.end_offset <= r.start_offset {
            return Err(gap(r.start_offset, expected));
        }
        expected = r.end_offset;
    }
    if expected != end {
        return Err(gap(expected, end));
    }
    Ok(())
}
