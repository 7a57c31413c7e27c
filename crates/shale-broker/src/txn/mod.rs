//! Idempotent producers and transactions: producer ids, per-partition producer state, and
//! (with the coordinator) Kafka's transaction protocol.

pub(crate) mod glue;
pub(crate) mod load;
pub(crate) mod producer_ids;
// Transaction-side state (markers, LSO, aborted index) is used once the coordinator lands.
#[allow(dead_code)]
pub(crate) mod producers;
pub(crate) mod append;
