//! Idempotent producers and transactions (Kafka's KIP-98 design, with KIP-360 and KIP-890).
//!
//! - `producer_ids`: producer ids from blocks the metadata quorum leases to the node.
//! - `producers`: per-partition producer state (sequences, epochs, open and aborted
//!   transactions), rebuilt from the stream by `load` when a partition is opened.
//! - `append`: the appends coordinators make under a partition's producer state (markers,
//!   transactional offset commits).
//! - The coordinator's pure core: a transactional id belongs to partition
//!   `abs(javaHashCode(id)) % N` of `__transaction_state` (`groups::partition_for` computes
//!   it); the node owning that partition coordinates the id, and the partition's records
//!   (Kafka's own format, see `records`) are its durable state, rebuilt on load
//!   (`coordinator::TxnCoordinator::load`). `coordinator` is a state machine: requests and
//!   reports in, with `now_ms`; replies and effects (appends, markers) out.
//! - `glue`: the coordinator's I/O: dispatch, placement, loading, appends and markers.

pub(crate) mod append;
pub(crate) mod checkpoint;
pub(crate) mod coordinator;
pub(crate) mod glue;
pub(crate) mod load;
pub(crate) mod metadata;
pub(crate) mod producer_ids;
pub(crate) mod producers;
pub(crate) mod records;
pub(crate) mod snapshot;
#[cfg(test)]
mod tests;

/// The cluster's finalized `transaction.version` (KIP-890 part 2), advertised in ApiVersions
/// and used for the coordinator's own aborts (fencing, timeouts), as Kafka uses the server's
/// level for them. Clients of version 0/1 (librdkafka, kafka-python, Java before 4.0) keep
/// their protocol: the coordinator records each transaction's client version.
pub(crate) const TRANSACTION_VERSION: metadata::TransactionVersion =
    metadata::TransactionVersion::V2;

/// The feature's name in ApiVersions.
pub(crate) const TRANSACTION_VERSION_FEATURE: &str = "transaction.version";

/// Runs every decoder of data the broker reads back from storage for transactions (the
/// `__transaction_state` records, producer-state snapshots, transaction markers, the
/// `__consumer_offsets` transactional view) on `data`: the fuzz target `stored_decode`.
/// None of them may panic or allocate more than the input backs.
#[doc(hidden)]
pub fn fuzz_stored_decoders(data: &[u8]) {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (key, value) = data.split_at(split);
    let _ = records::TxnLogRecord::decode(key, Some(value));
    let _ = records::TxnLogRecord::decode(data, None);
    let _ = snapshot::decode(data);
    let _ = shale_protocol::control::parse_marker(data);
    let _ = crate::groups::records::decode_stored(bytes::Bytes::copy_from_slice(data));
}
