//! Offsets committed inside transactions (TxnOffsetCommit, KIP-98 and KIP-447): written to
//! the group's partition as a transactional batch of the producer, held apart until the
//! transaction ends, then applied (commit marker) or dropped (abort marker). Until then an
//! OffsetFetch that asks for stable offsets gets UNSTABLE_OFFSET_COMMIT for them.

use super::records::{OffsetValue, RecordKey};
use super::{CommitPartition, GroupCoordinator};
use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use std::collections::HashMap;
use std::sync::Arc;

/// One offset of an open transaction.
#[derive(Debug, Clone)]
pub(crate) struct PendingOffset {
    group: String,
    topic: String,
    partition: i32,
    value: OffsetValue,
    /// Offset of its record in the coordinator partition: decides against other commits
    /// of the same partition once the transaction commits (the record written last wins).
    record_offset: u64,
}

/// A TxnOffsetCommit as the coordinator sees it.
#[derive(Debug, Clone)]
pub(crate) struct TxnCommitRequest {
    pub group_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// KIP-447's group metadata: empty / -1 from producers that do not send it.
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation: i32,
    pub partitions: Vec<CommitPartition>,
}

impl GroupCoordinator {
    /// TxnOffsetCommit: per-partition codes once the records are durable, or one code for
    /// the whole request.
    pub(crate) async fn txn_commit(
        self: &Arc<Self>,
        req: TxnCommitRequest,
    ) -> Result<Vec<i16>, ResponseError> {
        // As Kafka: a TxnOffsetCommit may be the first thing a group ever sees.
        let handle = self.get_or_create(&req.group_id)?;
        let (codes, values) = self.commit_values(&req.partitions, crate::now_ms(), -1);
        let mut records = Vec::with_capacity(values.len());
        let mut written = Vec::with_capacity(values.len());
        for (i, value) in values {
            let p = &req.partitions[i];
            let key = RecordKey::Offset {
                group: req.group_id.clone(),
                topic: p.topic.clone(),
                partition: p.partition,
            };
            records.push((key.encode(), Some(value.encode())));
            written.push((p.topic.clone(), p.partition, value));
        }
        if records.is_empty() {
            return Ok(codes);
        }
        let (base, durable) = {
            let g = handle.group.lock();
            g.validate_txn_commit(&req.member_id, req.instance_id.as_deref(), req.generation)?;
            self.partition_log(handle.partition)?.append_txn(
                records,
                req.producer_id,
                req.producer_epoch,
            )?
        };
        durable.await?;
        let pending: Vec<PendingOffset> = written
            .into_iter()
            .enumerate()
            .map(|(i, (topic, partition, value))| PendingOffset {
                group: req.group_id.clone(),
                topic,
                partition,
                value,
                record_offset: base + i as u64,
            })
            .collect();
        self.txn_offsets
            .lock()
            .entry(handle.partition)
            .or_default()
            .entry(req.producer_id)
            .or_default()
            .extend(pending);
        Ok(codes)
    }

    /// Writes `producer_id`'s marker to coordinator partition `p` and, once it is durable,
    /// applies (commit) or drops (abort) the offsets its transaction committed there.
    pub(crate) async fn end_txn(
        self: &Arc<Self>,
        p: i32,
        producer_id: i64,
        epoch: i16,
        marker: shale_protocol::control::EndTxnMarker,
    ) -> Result<(), ResponseError> {
        let (_, durable) = self
            .partition_log(p)?
            .append_marker(producer_id, epoch, marker)?;
        durable.await?;
        self.complete_txn(p, producer_id, marker.commit);
        Ok(())
    }

    /// The transaction of `producer_id` ended in partition `p`.
    fn complete_txn(&self, p: i32, producer_id: i64, commit: bool) {
        let done = self
            .txn_offsets
            .lock()
            .get_mut(&p)
            .and_then(|m| m.remove(&producer_id));
        let Some(done) = done.filter(|_| commit) else {
            return;
        };
        for o in done {
            let Some(handle) = self.groups.read().get(&o.group).cloned() else {
                continue;
            };
            handle
                .group
                .lock()
                .apply_offset(o.topic, o.partition, Some(o.value), o.record_offset);
        }
    }

    /// Whether an open transaction has committed an offset for this partition of the group
    /// (OffsetFetch with `require_stable` then answers UNSTABLE_OFFSET_COMMIT).
    pub(crate) fn has_pending_txn_offset(&self, group: &str, topic: &str, partition: i32) -> bool {
        let p = self.partition_of(group);
        self.txn_offsets.lock().get(&p).is_some_and(|by_producer| {
            by_producer
                .values()
                .flatten()
                .any(|o| o.group == group && o.topic == topic && o.partition == partition)
        })
    }

    /// Loading: offsets of transactions still open in the partition's log.
    pub(crate) fn restore_pending_txn_offsets(
        &self,
        p: i32,
        pending: HashMap<i64, Vec<(u64, Bytes, Option<Bytes>)>>,
    ) {
        let mut restored: HashMap<i64, Vec<PendingOffset>> = HashMap::new();
        for (pid, records) in pending {
            for (record_offset, key, value) in records {
                let Ok(Some(RecordKey::Offset {
                    group,
                    topic,
                    partition,
                })) = RecordKey::decode(key)
                else {
                    continue;
                };
                let Some(Ok(value)) = value.map(OffsetValue::decode) else {
                    continue;
                };
                restored.entry(pid).or_default().push(PendingOffset {
                    group,
                    topic,
                    partition,
                    value,
                    record_offset,
                });
            }
        }
        if restored.is_empty() {
            self.txn_offsets.lock().remove(&p);
        } else {
            self.txn_offsets.lock().insert(p, restored);
        }
    }
}
