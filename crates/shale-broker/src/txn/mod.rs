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
