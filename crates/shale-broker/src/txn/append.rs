//! Appends a coordinator makes to partitions under their producer state: transaction
//! markers (to data partitions and `__consumer_offsets`) and the group coordinator's
//! transactional offset commits. Both pass the same epoch checks as a producer's batches, so
//! a fenced producer's offsets and a stale coordinator's markers are refused.

use crate::partitions::Owned;
use crate::txn::producers::{Admit, Marker, Origin, ProducerError};
use bytes::BytesMut;
use shale_protocol::batch::{self, BatchHeader};
use shale_protocol::control::{self, EndTxnMarker};
use shale_stream::StreamError;
use tokio::sync::oneshot;

pub(crate) type Durable = oneshot::Receiver<Result<(), StreamError>>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum AppendError {
    #[error(transparent)]
    Producer(#[from] ProducerError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("batch built by the broker is invalid: {0}")]
    Internal(String),
}

/// Appends one transactional batch written by a coordinator (the records of a
/// TxnOffsetCommit); returns its base offset.
pub(crate) fn append_coordinator_batch(
    owned: &Owned,
    mut buf: BytesMut,
    count: u32,
    timestamp: i64,
) -> Result<(u64, Durable), AppendError> {
    let h = BatchHeader::parse(&buf).map_err(|e| AppendError::Internal(e.to_string()))?;
    let epoch = crate::handlers::metadata::leader_epoch(owned.stream.epoch());
    let mut producers = owned.producers.lock();
    let Admit::Append(update) =
        producers.check_from(std::slice::from_ref(&h), Origin::Coordinator)?
    else {
        return Err(AppendError::Internal(
            "coordinator batch seen as a duplicate".into(),
        ));
    };
    let handle = owned.stream.append(count, timestamp, move |base| {
        batch::patch_offsets(&mut buf, base as i64, epoch);
        buf.freeze()
    })?;
    producers.apply(update, handle.base_offset as i64);
    Ok((handle.base_offset, handle.durable))
}

/// Appends a transaction marker for `producer_id`/`epoch` and ends the producer's
/// transaction in the partition's state (the last stable offset moves once it is durable).
pub(crate) fn append_marker(
    owned: &Owned,
    producer_id: i64,
    epoch: i16,
    marker: EndTxnMarker,
    timestamp: i64,
) -> Result<(u64, Durable), AppendError> {
    let mut m = Marker {
        producer_id,
        epoch,
        commit: marker.commit,
        coordinator_epoch: marker.coordinator_epoch,
        offset: -1,
        timestamp,
    };
    let leader_epoch = crate::handlers::metadata::leader_epoch(owned.stream.epoch());
    let mut producers = owned.producers.lock();
    producers.check_marker(&m)?;
    let mut buf = control::marker_batch(producer_id, epoch, marker, timestamp);
    let handle = owned.stream.append(1, timestamp, move |base| {
        batch::patch_offsets(&mut buf, base as i64, leader_epoch);
        buf.freeze()
    })?;
    m.offset = handle.base_offset as i64;
    producers.apply_marker(&m, owned.stream.end_offset() as i64);
    Ok((handle.base_offset, handle.durable))
}
