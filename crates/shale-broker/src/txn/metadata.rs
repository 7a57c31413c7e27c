//! What the coordinator knows about one transactional id (Kafka's `TransactionMetadata`), and
//! its conversion to and from the stored record.

use super::records::{TopicPartitions, TxnLogValue, TxnState};
use std::collections::BTreeSet;

/// `RecordBatch.NO_PRODUCER_ID`.
pub(crate) const NO_PRODUCER_ID: i64 = -1;
/// `RecordBatch.NO_PRODUCER_EPOCH`.
pub(crate) const NO_PRODUCER_EPOCH: i16 = -1;

/// Kafka keeps `Short.MaxValue` out of clients' hands so the coordinator can always fence one
/// more time (`TransactionMetadata.isEpochExhausted`).
pub(crate) fn is_epoch_exhausted(epoch: i16) -> bool {
    epoch >= i16::MAX - 1
}

/// A partition written by a transaction. Ordered, so markers and records list partitions in
/// one deterministic order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub(crate) fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

/// The `transaction.version` feature level (KIP-890): of the cluster (which record version
/// the coordinator writes) or of one client (EndTxn v5+ means 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) enum TransactionVersion {
    /// The original protocol.
    #[default]
    V0,
    /// Flexible `__transaction_state` records (value version 1).
    V1,
    /// An epoch bump at the end of every transaction.
    V2,
}

impl TransactionVersion {
    /// Levels above 2 are treated as 2, the highest Shale implements.
    pub(crate) fn from_level(level: i16) -> Self {
        match level {
            i16::MIN..=0 => TransactionVersion::V0,
            1 => TransactionVersion::V1,
            _ => TransactionVersion::V2,
        }
    }

    pub(crate) fn level(self) -> i16 {
        match self {
            TransactionVersion::V0 => 0,
            TransactionVersion::V1 => 1,
            TransactionVersion::V2 => 2,
        }
    }

    /// Kafka's `KafkaApis`: AddPartitionsToTxn v4+ comes from a partition leader acting for
    /// a client of transaction version 2 (Produce v12+, TxnOffsetCommit v5+).
    pub(crate) fn of_add_partitions_request(version: i16) -> Self {
        if version > 3 {
            TransactionVersion::V2
        } else {
            TransactionVersion::V0
        }
    }

    /// Kafka's `KafkaApis`: EndTxn v5+ comes from a client using transaction version 2.
    pub(crate) fn of_end_txn_request(version: i16) -> Self {
        if version > 4 {
            TransactionVersion::V2
        } else {
            TransactionVersion::V0
        }
    }

    /// `TransactionVersion.supportsEpochBump`.
    pub(crate) fn supports_epoch_bump(self) -> bool {
        self >= TransactionVersion::V2
    }

    /// `TransactionVersion.transactionLogValueVersion`.
    pub(crate) fn log_value_version(self) -> i16 {
        if self >= TransactionVersion::V1 { 1 } else { 0 }
    }
}

/// The durable state of one transactional id: exactly what its last record says (plus
/// `last_producer_epoch`, which Kafka keeps in memory only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TxnMetadata {
    pub transactional_id: String,
    pub producer_id: i64,
    /// The producer id before the last transition (differs from `producer_id` only right after
    /// a rotation); lets a KIP-360 retry with the old id and an exhausted epoch succeed.
    pub previous_producer_id: i64,
    /// Set while a KIP-890 commit/abort that exhausted the epoch is in flight: the producer id
    /// the transaction's completion moves to.
    pub next_producer_id: i64,
    pub producer_epoch: i16,
    /// The epoch before the last bump, so a retried InitProducerId (KIP-360) is recognised.
    /// Not stored: -1 after a load, as in Kafka.
    pub last_producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    pub partitions: BTreeSet<TopicPartition>,
    /// When the first partition was added; -1 when no transaction has started.
    pub txn_start_timestamp_ms: i64,
    /// Every transition sets it; transactional.id.expiration.ms counts from it.
    pub txn_last_update_timestamp_ms: i64,
    pub client_transaction_version: TransactionVersion,
}

impl TxnMetadata {
    /// A transactional id seen for the first time: a fresh producer id, no epoch yet.
    pub(crate) fn new(
        transactional_id: &str,
        producer_id: i64,
        timeout_ms: i32,
        now_ms: i64,
    ) -> Self {
        Self {
            transactional_id: transactional_id.to_string(),
            producer_id,
            previous_producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            last_producer_epoch: NO_PRODUCER_EPOCH,
            next_producer_id: NO_PRODUCER_ID,
            timeout_ms,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            txn_start_timestamp_ms: -1,
            txn_last_update_timestamp_ms: now_ms,
            client_transaction_version: TransactionVersion::V0,
        }
    }

    pub(crate) fn is_producer_epoch_exhausted(&self) -> bool {
        is_epoch_exhausted(self.producer_epoch)
    }

    /// Partitions grouped by topic, topics and partitions in order.
    pub(crate) fn topics(&self) -> Vec<TopicPartitions> {
        let mut out: Vec<TopicPartitions> = Vec::new();
        for tp in &self.partitions {
            match out.last_mut() {
                Some(last) if last.topic == tp.topic => last.partitions.push(tp.partition),
                _ => out.push(TopicPartitions {
                    topic: tp.topic.clone(),
                    partitions: vec![tp.partition],
                }),
            }
        }
        out
    }

    /// The record Kafka's `TransactionLog.valueToBytes` writes for this state.
    pub(crate) fn to_log_value(&self) -> TxnLogValue {
        TxnLogValue {
            producer_id: self.producer_id,
            previous_producer_id: self.previous_producer_id,
            next_producer_id: self.next_producer_id,
            producer_epoch: self.producer_epoch,
            timeout_ms: self.timeout_ms,
            state: self.state,
            // Kafka writes null partitions for Empty, a (possibly empty) list otherwise.
            partitions: (self.state != TxnState::Empty).then(|| self.topics()),
            last_update_timestamp_ms: self.txn_last_update_timestamp_ms,
            start_timestamp_ms: self.txn_start_timestamp_ms,
            client_transaction_version: self.client_transaction_version.level(),
        }
    }

    /// Kafka's `TransactionLog.readTxnRecordValue`: partitions of an Empty record are ignored
    /// and the last epoch is unknown.
    pub(crate) fn from_log_value(transactional_id: &str, v: &TxnLogValue) -> Self {
        let partitions = match (&v.partitions, v.state) {
            (Some(topics), state) if state != TxnState::Empty => topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|p| TopicPartition::new(t.topic.clone(), *p))
                })
                .collect(),
            _ => BTreeSet::new(),
        };
        Self {
            transactional_id: transactional_id.to_string(),
            producer_id: v.producer_id,
            previous_producer_id: v.previous_producer_id,
            producer_epoch: v.producer_epoch,
            last_producer_epoch: NO_PRODUCER_EPOCH,
            next_producer_id: v.next_producer_id,
            timeout_ms: v.timeout_ms,
            state: v.state,
            partitions,
            txn_start_timestamp_ms: v.start_timestamp_ms,
            txn_last_update_timestamp_ms: v.last_update_timestamp_ms,
            client_transaction_version: TransactionVersion::from_level(
                v.client_transaction_version,
            ),
        }
    }
}
