//! Producer ids for idempotent producers: handed out from blocks the metadata quorum leases
//! to this node (as Kafka's ProducerIdManager), so a new producer costs no Raft write.

use shale_meta::{MetaError, MetaNode};

/// Ids leased per Raft write (Kafka's block size).
pub(crate) const BLOCK_SIZE: u64 = 1000;

#[derive(Default)]
pub(crate) struct ProducerIds {
    /// Unused ids of the current block: `[next, end)`.
    block: parking_lot::Mutex<(i64, i64)>,
    /// Held while leasing, so concurrent callers wait for one lease rather than each
    /// leasing a block.
    leasing: tokio::sync::Mutex<()>,
}

impl ProducerIds {
    pub(crate) async fn next(&self, meta: &MetaNode) -> Result<i64, MetaError> {
        loop {
            if let Some(id) = self.try_next() {
                return Ok(id);
            }
            self.ensure(meta).await?;
        }
    }

    /// An id from the current block, without waiting (None when it is used up).
    pub(crate) fn try_next(&self) -> Option<i64> {
        let mut block = self.block.lock();
        (block.0 < block.1).then(|| {
            block.0 += 1;
            block.0 - 1
        })
    }

    /// Leases a new block when the current one is used up.
    pub(crate) async fn ensure(&self, meta: &MetaNode) -> Result<(), MetaError> {
        let _leasing = self.leasing.lock().await;
        let available = {
            let b = self.block.lock();
            b.0 < b.1
        };
        if available {
            return Ok(());
        }
        let (start, count) = meta.allocate_producer_ids(BLOCK_SIZE).await?;
        *self.block.lock() = (start, start + count as i64);
        Ok(())
    }
}

/// Forgets idle producers on every open partition every
/// `producer.id.expiration.check.interval.ms` (Kafka's `removeExpiredProducers`).
pub(crate) async fn expire_producers(broker: std::sync::Arc<crate::Broker>) {
    let mut stop = broker.shutdown_signal();
    let mut tick = tokio::time::interval(broker.config.producer_id_expiration_check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let now = crate::now_ms();
        for owned in broker.open_partitions() {
            let start = owned.stream.start_offset() as i64;
            let gone =
                owned
                    .producers
                    .lock()
                    .expire(now, broker.config.producer_id_expiration_ms, start);
            if gone > 0 {
                tracing::debug!(stream = owned.stream.id(), gone, "idle producers forgotten");
            }
        }
    }
}
