//! The transaction coordinator (Kafka's KIP-98 design, with KIP-360 and KIP-890): its pure
//! core. A transactional id belongs to partition `abs(javaHashCode(id)) % N` of
//! `__transaction_state` (`groups::partition_for` computes it); the node owning that partition
//! coordinates the id, and the partition's records (Kafka's own format, see `records`) are the
//! coordinator's durable state, rebuilt on load (`coordinator::TxnCoordinator::load`).
//!
//! `coordinator` is a state machine: requests and reports in, with `now_ms`; replies and
//! effects (appends, markers) out. The glue that performs the effects, dispatches the
//! requests and loads the partitions lives beside it and is written separately.

// Until the glue lands nothing outside the tests calls this module.
#![allow(dead_code)]

pub(crate) mod coordinator;
pub(crate) mod metadata;
pub(crate) mod records;
#[cfg(test)]
mod tests;
