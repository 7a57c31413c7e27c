//! The transaction coordinator against Kafka's behaviour, one claim per test, stepping
//! `now_ms` by hand. Appends and markers complete only when a test says so.

use super::coordinator::*;
use super::metadata::{TopicPartition, TransactionVersion, TxnMetadata};
use super::records::{TopicPartitions, TxnLogRecord, TxnState};
use kafka_protocol::error::ResponseError;

const TIMEOUT_MS: i32 = 60_000;
const T0: i64 = 1_000_000;

fn config() -> TxnConfig {
    TxnConfig {
        max_timeout_ms: 900_000,
        transactional_id_expiration_ms: 604_800_000,
        transaction_version: TransactionVersion::V1,
    }
}

/// Producer ids from 1000 up, or none at all.
struct Pids {
    next: i64,
    exhausted: bool,
}

impl ProducerIds for Pids {
    fn next_producer_id(&mut self) -> Result<i64, TxnError> {
        if self.exhausted {
            return Err(TxnError::CoordinatorLoadInProgress);
        }
        self.next += 1;
        Ok(self.next - 1)
    }
}

fn pe(producer_id: i64, epoch: i16) -> ProducerIdAndEpoch {
    ProducerIdAndEpoch { producer_id, epoch }
}

fn tp(topic: &str, partition: i32) -> TopicPartition {
    TopicPartition::new(topic, partition)
}

fn appends(effects: &[Effect]) -> Vec<(AppendId, TxnLogRecord)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Append { id, record, .. } => Some((*id, record.clone())),
            _ => None,
        })
        .collect()
}

fn markers(effects: &[Effect]) -> Vec<Markers> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::WriteMarkers(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn replies(effects: &[Effect]) -> Vec<Reply> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Reply { reply, .. } => Some(reply.clone()),
            _ => None,
        })
        .collect()
}

/// The state an append would make durable.
fn appended_state(effects: &[Effect]) -> Option<TxnState> {
    appends(effects)
        .first()
        .and_then(|(_, r)| r.value.as_ref().map(|v| v.state))
}

struct Harness {
    c: TxnCoordinator,
    pids: Pids,
    now: i64,
    next_token: u64,
    /// Every record made durable, in order: what a new owner would load.
    log: Vec<TxnLogRecord>,
}

impl Harness {
    fn new() -> Self {
        Self::with(TxnCoordinator::new(7, config()))
    }

    fn with(c: TxnCoordinator) -> Self {
        Self {
            c,
            pids: Pids {
                next: 1000,
                exhausted: false,
            },
            now: T0,
            next_token: 0,
            log: Vec::new(),
        }
    }

    /// A coordinator loaded from `records`, and the effects of the load.
    fn loaded(records: Vec<TxnLogRecord>) -> (Self, Vec<Effect>) {
        let (c, effects) = TxnCoordinator::load(7, config(), records.clone(), T0);
        let mut h = Self::with(c);
        h.log = records;
        (h, effects)
    }

    fn token(&mut self) -> Token {
        self.next_token += 1;
        Token(self.next_token)
    }

    fn init_with(
        &mut self,
        id: &str,
        timeout_ms: i32,
        expected: Option<ProducerIdAndEpoch>,
    ) -> Step<Result<ProducerIdAndEpoch, TxnError>> {
        let token = self.token();
        let req = InitProducerIdRequest {
            transactional_id: id.into(),
            transaction_timeout_ms: timeout_ms,
            expected,
        };
        self.c
            .init_producer_id(token, req, &mut self.pids, self.now)
    }

    fn init(&mut self, id: &str) -> Step<Result<ProducerIdAndEpoch, TxnError>> {
        self.init_with(id, TIMEOUT_MS, None)
    }

    fn add(
        &mut self,
        id: &str,
        p: ProducerIdAndEpoch,
        partitions: &[TopicPartition],
    ) -> Step<Result<(), TxnError>> {
        let token = self.token();
        let req = AddPartitionsRequest {
            transactional_id: id.into(),
            producer_id: p.producer_id,
            producer_epoch: p.epoch,
            partitions: partitions.to_vec(),
            client_version: TransactionVersion::V0,
        };
        self.c.add_partitions(token, req, self.now)
    }

    fn end_with(
        &mut self,
        id: &str,
        p: ProducerIdAndEpoch,
        commit: bool,
        client_version: TransactionVersion,
    ) -> Step<Result<ProducerIdAndEpoch, TxnError>> {
        let token = self.token();
        let req = EndTxnRequest {
            transactional_id: id.into(),
            producer_id: p.producer_id,
            producer_epoch: p.epoch,
            commit,
            client_version,
        };
        self.c.end_txn(token, req, &mut self.pids, self.now)
    }

    fn end(
        &mut self,
        id: &str,
        p: ProducerIdAndEpoch,
        commit: bool,
    ) -> Step<Result<ProducerIdAndEpoch, TxnError>> {
        self.end_with(id, p, commit, TransactionVersion::V0)
    }

    /// Makes the appends among `effects` durable; returns what that caused.
    fn durable(&mut self, effects: &[Effect]) -> Vec<Effect> {
        let mut out = Vec::new();
        for (id, record) in appends(effects) {
            self.log.push(record);
            out.extend(self.c.append_completed(id, Ok(()), self.now));
        }
        out
    }

    /// Fails the appends among `effects`.
    fn fail(&mut self, effects: &[Effect], error: AppendError) -> Vec<Effect> {
        let mut out = Vec::new();
        for (id, _) in appends(effects) {
            out.extend(self.c.append_completed(id, Err(error), self.now));
        }
        out
    }

    /// Reports the markers among `effects` written.
    fn marked(&mut self, effects: &[Effect]) -> Vec<Effect> {
        let mut out = Vec::new();
        for m in markers(effects) {
            out.extend(self.c.markers_written(&m.transactional_id));
        }
        out
    }

    /// Completes every append and marker write until nothing is left; returns the replies
    /// and markers seen on the way.
    fn settle(&mut self, mut effects: Vec<Effect>) -> Vec<Effect> {
        let mut seen = Vec::new();
        while !effects.is_empty() {
            let mut next = self.durable(&effects);
            next.extend(self.marked(&effects));
            seen.extend(
                effects
                    .into_iter()
                    .filter(|e| !matches!(e, Effect::Append { .. })),
            );
            effects = next;
        }
        seen
    }

    /// InitProducerId, made durable; the producer id and epoch handed out.
    fn ready(&mut self, id: &str) -> ProducerIdAndEpoch {
        let step = self.init(id);
        let seen = self.settle(step.effects);
        match replies(&seen).as_slice() {
            [Reply::InitProducerId(Ok(p))] => *p,
            other => panic!("init of {id} answered {other:?}"),
        }
    }

    /// A producer with an Ongoing transaction over `partitions`.
    fn begun(&mut self, id: &str, partitions: &[TopicPartition]) -> ProducerIdAndEpoch {
        let p = self.ready(id);
        let step = self.add(id, p, partitions);
        self.settle(step.effects);
        p
    }

    fn state(&self, id: &str) -> Option<TxnState> {
        self.c.metadata(id).map(|m| m.state)
    }

    fn meta(&self, id: &str) -> TxnMetadata {
        self.c
            .metadata(id)
            .cloned()
            .expect("known transactional id")
    }
}

/// A stored record of `id` as Kafka would have written it.
fn stored(
    id: &str,
    producer_id: i64,
    epoch: i16,
    state: TxnState,
    partitions: &[TopicPartition],
) -> TxnLogRecord {
    let mut meta = TxnMetadata::new(id, producer_id, TIMEOUT_MS, T0 - 10);
    meta.producer_epoch = epoch;
    meta.state = state;
    meta.partitions = partitions.iter().cloned().collect();
    if state != TxnState::Empty {
        meta.txn_start_timestamp_ms = T0 - 20;
    }
    TxnLogRecord {
        transactional_id: id.into(),
        value: Some(meta.to_log_value()),
    }
}

// ---- InitProducerId ----

#[test]
fn a_new_transactional_id_gets_a_fresh_producer_id_at_epoch_0() {
    let mut h = Harness::new();
    assert_eq!(h.ready("t"), pe(1000, 0));
}

#[test]
fn init_producer_id_is_answered_only_once_its_record_is_durable() {
    let mut h = Harness::new();
    let step = h.init("t");
    assert_eq!(step.reply, None);
    assert_eq!(appended_state(&step.effects), Some(TxnState::Empty));
    let after = h.durable(&step.effects);
    assert_eq!(
        replies(&after),
        vec![Reply::InitProducerId(Ok(pe(1000, 0)))]
    );
}

#[test]
fn a_second_init_with_the_same_transactional_id_bumps_the_epoch() {
    let mut h = Harness::new();
    h.ready("t");
    assert_eq!(h.ready("t"), pe(1000, 1));
}

#[test]
fn a_second_init_with_the_same_transactional_id_fences_the_first_producer() {
    let mut h = Harness::new();
    let first = h.ready("t");
    h.ready("t");
    let step = h.add("t", first, &[tp("a", 0)]);
    assert_eq!(step.reply, Some(Err(TxnError::ProducerFenced)));
}

#[test]
fn init_while_a_transaction_is_ongoing_aborts_it_with_a_bumped_epoch() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    let step = h.init("t");
    let records = appends(&step.effects);
    let value = records[0].1.value.clone().expect("a value");
    assert_eq!(
        (value.state, value.producer_epoch),
        (TxnState::PrepareAbort, p.epoch + 1)
    );
}

#[test]
fn init_while_a_transaction_is_ongoing_answers_concurrent_transactions_once_the_abort_is_durable() {
    let mut h = Harness::new();
    h.begun("t", &[tp("a", 0)]);
    let step = h.init("t");
    assert_eq!(step.reply, None);
    let after = h.durable(&step.effects);
    assert_eq!(
        replies(&after),
        vec![Reply::InitProducerId(Err(TxnError::ConcurrentTransactions))]
    );
}

#[test]
fn the_abort_of_a_fenced_transaction_writes_abort_markers_with_the_bumped_epoch() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0), tp("b", 1)]);
    let step = h.init("t");
    let after = h.durable(&step.effects);
    assert_eq!(
        markers(&after),
        vec![Markers {
            transactional_id: "t".into(),
            producer_id: p.producer_id,
            producer_epoch: p.epoch + 1,
            commit: false,
            coordinator_epoch: 7,
            partitions: vec![tp("a", 0), tp("b", 1)],
        }]
    );
}

#[test]
fn the_retried_init_after_a_fence_gets_the_epoch_after_the_fencing_one() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    let step = h.init("t");
    h.settle(step.effects);
    assert_eq!(h.ready("t"), pe(p.producer_id, p.epoch + 2));
}

#[test]
fn init_while_the_abort_of_a_fence_completes_answers_concurrent_transactions() {
    let mut h = Harness::new();
    h.begun("t", &[tp("a", 0)]);
    let step = h.init("t");
    h.durable(&step.effects); // PrepareAbort durable, markers not yet written
    let retry = h.init("t");
    assert_eq!(retry.reply, Some(Err(TxnError::ConcurrentTransactions)));
}

#[test]
fn init_in_prepare_commit_answers_concurrent_transactions() {
    let (mut h, _) = Harness::loaded(vec![stored(
        "t",
        5,
        3,
        TxnState::PrepareCommit,
        &[tp("a", 0)],
    )]);
    let step = h.init("t");
    assert_eq!(step.reply, Some(Err(TxnError::ConcurrentTransactions)));
}

#[test]
fn init_while_a_transition_is_pending_answers_concurrent_transactions() {
    let mut h = Harness::new();
    let _pending = h.init("t");
    let step = h.init("t");
    assert_eq!(step.reply, Some(Err(TxnError::ConcurrentTransactions)));
}

#[test]
fn a_transaction_timeout_above_transaction_max_timeout_ms_is_invalid() {
    let mut h = Harness::new();
    let step = h.init_with("t", 900_001, None);
    assert_eq!(step.reply, Some(Err(TxnError::InvalidTransactionTimeout)));
}

#[test]
fn a_transaction_timeout_of_zero_is_invalid() {
    let mut h = Harness::new();
    let step = h.init_with("t", 0, None);
    assert_eq!(step.reply, Some(Err(TxnError::InvalidTransactionTimeout)));
}

#[test]
fn an_empty_transactional_id_is_an_invalid_request() {
    let mut h = Harness::new();
    assert_eq!(h.init("").reply, Some(Err(TxnError::InvalidRequest)));
}

#[test]
fn without_producer_ids_available_init_answers_coordinator_load_in_progress() {
    let mut h = Harness::new();
    h.pids.exhausted = true;
    let step = h.init("t");
    assert_eq!(step.reply, Some(Err(TxnError::CoordinatorLoadInProgress)));
}

#[test]
fn an_exhausted_epoch_rotates_to_a_new_producer_id_at_epoch_0() {
    let (mut h, _) = Harness::loaded(vec![stored(
        "t",
        5,
        i16::MAX - 1,
        TxnState::CompleteCommit,
        &[],
    )]);
    assert_eq!(h.ready("t"), pe(1000, 0));
}

#[test]
fn a_failed_init_write_answers_the_append_error() {
    let mut h = Harness::new();
    let step = h.init("t");
    let after = h.fail(&step.effects, AppendError::Unavailable);
    assert_eq!(
        replies(&after),
        vec![Reply::InitProducerId(Err(
            TxnError::CoordinatorNotAvailable
        ))]
    );
}

// ---- KIP-360 ----

#[test]
fn kip360_init_with_the_current_producer_id_and_epoch_bumps_the_epoch() {
    let mut h = Harness::new();
    let p = h.ready("t");
    let step = h.init_with("t", TIMEOUT_MS, Some(p));
    let after = h.durable(&step.effects);
    assert_eq!(
        replies(&after),
        vec![Reply::InitProducerId(Ok(pe(1000, 1)))]
    );
}

#[test]
fn kip360_a_retried_init_with_the_previous_epoch_gets_the_same_epoch_again() {
    let mut h = Harness::new();
    let p = h.ready("t");
    let first = h.init_with("t", TIMEOUT_MS, Some(p));
    h.settle(first.effects); // answered 1000/1, but the answer was lost
    let retry = h.init_with("t", TIMEOUT_MS, Some(p));
    let after = h.durable(&retry.effects);
    assert_eq!(
        replies(&after),
        vec![Reply::InitProducerId(Ok(pe(1000, 1)))]
    );
}

#[test]
fn kip360_init_with_a_stale_epoch_is_fenced() {
    let mut h = Harness::new();
    let old = h.ready("t");
    h.ready("t");
    h.ready("t");
    let step = h.init_with("t", TIMEOUT_MS, Some(old));
    assert_eq!(step.reply, Some(Err(TxnError::ProducerFenced)));
}

#[test]
fn kip360_init_with_another_producer_id_is_fenced() {
    let mut h = Harness::new();
    h.ready("t");
    let step = h.init_with("t", TIMEOUT_MS, Some(pe(42, 0)));
    assert_eq!(step.reply, Some(Err(TxnError::ProducerFenced)));
}

#[test]
fn kip360_init_of_an_unknown_transactional_id_with_a_producer_id_recovers_with_a_fresh_one() {
    let mut h = Harness::new();
    let step = h.init_with("t", TIMEOUT_MS, Some(pe(42, 3)));
    let after = h.durable(&step.effects);
    assert_eq!(
        replies(&after),
        vec![Reply::InitProducerId(Ok(pe(1000, 0)))]
    );
}

#[test]
fn kip360_a_retried_rotation_with_the_old_producer_id_gets_the_new_one() {
    let exhausted = i16::MAX - 1;
    let (mut h, _) = Harness::loaded(vec![stored(
        "t",
        5,
        exhausted,
        TxnState::CompleteCommit,
        &[],
    )]);
    let first = h.init_with("t", TIMEOUT_MS, Some(pe(5, exhausted)));
    h.settle(first.effects); // rotated to 1000/0, answer lost
    let retry = h.init_with("t", TIMEOUT_MS, Some(pe(5, exhausted)));
    let after = h.durable(&retry.effects);
    assert_eq!(
        replies(&after),
        vec![Reply::InitProducerId(Ok(pe(1000, 0)))]
    );
}

#[test]
fn a_producer_id_without_an_epoch_is_an_invalid_request() {
    assert_eq!(
        ProducerIdAndEpoch::from_request(5, -1),
        Err(TxnError::InvalidRequest)
    );
}

#[test]
fn producer_fenced_is_invalid_producer_epoch_for_clients_that_predate_it() {
    let e = TxnError::ProducerFenced;
    assert_eq!(
        e.for_api(TxnApi::InitProducerId, 3),
        ResponseError::InvalidProducerEpoch
    );
    assert_eq!(
        e.for_api(TxnApi::InitProducerId, 4),
        ResponseError::ProducerFenced
    );
    assert_eq!(
        e.for_api(TxnApi::EndTxn, 1),
        ResponseError::InvalidProducerEpoch
    );
    assert_eq!(
        e.for_api(TxnApi::AddPartitionsToTxn, 2),
        ResponseError::ProducerFenced
    );
}

// ---- AddPartitionsToTxn / AddOffsetsToTxn ----

#[test]
fn adding_the_first_partition_starts_the_transaction_now() {
    let mut h = Harness::new();
    h.ready("t");
    h.now += 5;
    h.begun("u", &[tp("a", 0)]);
    let m = h.meta("u");
    assert_eq!(
        (m.state, m.txn_start_timestamp_ms),
        (TxnState::Ongoing, T0 + 5)
    );
}

#[test]
fn add_partitions_is_answered_once_its_record_is_durable() {
    let mut h = Harness::new();
    let p = h.ready("t");
    let step = h.add("t", p, &[tp("a", 0)]);
    assert_eq!(step.reply, None);
    let after = h.durable(&step.effects);
    assert_eq!(replies(&after), vec![Reply::AddPartitions(Ok(()))]);
}

#[test]
fn add_partitions_for_an_unknown_transactional_id_is_invalid_producer_id_mapping() {
    let mut h = Harness::new();
    let step = h.add("t", pe(1, 0), &[tp("a", 0)]);
    assert_eq!(step.reply, Some(Err(TxnError::InvalidProducerIdMapping)));
}

#[test]
fn add_partitions_with_another_producer_id_is_invalid_producer_id_mapping() {
    let mut h = Harness::new();
    h.ready("t");
    let step = h.add("t", pe(1, 0), &[tp("a", 0)]);
    assert_eq!(step.reply, Some(Err(TxnError::InvalidProducerIdMapping)));
}

#[test]
fn adding_partitions_already_in_the_transaction_is_answered_without_a_write() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0), tp("a", 1)]);
    let step = h.add("t", p, &[tp("a", 1)]);
    assert_eq!((step.reply, step.effects.len()), (Some(Ok(())), 0));
}

#[test]
fn adding_partitions_accumulates_them() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    let step = h.add("t", p, &[tp("b", 0)]);
    h.settle(step.effects);
    let parts: Vec<_> = h.meta("t").partitions.into_iter().collect();
    assert_eq!(parts, vec![tp("a", 0), tp("b", 0)]);
}

#[test]
fn add_partitions_while_an_add_is_pending_answers_concurrent_transactions() {
    let mut h = Harness::new();
    let p = h.ready("t");
    let _pending = h.add("t", p, &[tp("a", 0)]);
    let step = h.add("t", p, &[tp("b", 0)]);
    assert_eq!(step.reply, Some(Err(TxnError::ConcurrentTransactions)));
}

#[test]
fn add_partitions_while_committing_answers_concurrent_transactions() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    let end = h.end("t", p, true);
    h.durable(&end.effects); // PrepareCommit durable, markers in flight
    let step = h.add("t", p, &[tp("b", 0)]);
    assert_eq!(step.reply, Some(Err(TxnError::ConcurrentTransactions)));
}

#[test]
fn add_offsets_adds_the_groups_consumer_offsets_partition() {
    let mut h = Harness::new();
    let p = h.ready("t");
    let token = h.token();
    let req = AddOffsetsRequest {
        transactional_id: "t".into(),
        producer_id: p.producer_id,
        producer_epoch: p.epoch,
        offsets_partition: 17,
    };
    let step = h.c.add_offsets(token, req, h.now);
    h.settle(step.effects);
    let parts: Vec<_> = h.meta("t").partitions.into_iter().collect();
    assert_eq!(parts, vec![tp("__consumer_offsets", 17)]);
}

#[test]
fn verify_only_answers_per_partition_whether_it_is_in_the_transaction() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    let req = AddPartitionsRequest {
        transactional_id: "t".into(),
        producer_id: p.producer_id,
        producer_epoch: p.epoch,
        partitions: vec![tp("a", 0), tp("b", 0)],
        client_version: TransactionVersion::V0,
    };
    let verdicts: Vec<_> = h.c.verify_partitions(&req).into_iter().collect();
    assert_eq!(
        verdicts,
        vec![
            (tp("a", 0), Ok(())),
            (tp("b", 0), Err(TxnError::TransactionAbortable))
        ]
    );
}

#[test]
fn verify_only_with_a_stale_epoch_answers_producer_fenced_for_every_partition() {
    let mut h = Harness::new();
    let old = h.begun("t", &[tp("a", 0)]);
    let fence = h.init("t");
    h.settle(fence.effects);
    let req = AddPartitionsRequest {
        transactional_id: "t".into(),
        producer_id: old.producer_id,
        producer_epoch: old.epoch,
        partitions: vec![tp("a", 0), tp("b", 0)],
        client_version: TransactionVersion::V0,
    };
    let verdicts: Vec<_> = h.c.verify_partitions(&req).into_values().collect();
    assert_eq!(verdicts, vec![Err(TxnError::ProducerFenced); 2]);
}

// ---- EndTxn ----

#[test]
fn end_txn_commit_writes_prepare_commit_first() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    let step = h.end("t", p, true);
    assert_eq!(
        (step.reply, appended_state(&step.effects)),
        (None, Some(TxnState::PrepareCommit))
    );
}

#[test]
fn end_txn_is_answered_once_the_prepare_is_durable_and_the_markers_follow() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    let step = h.end("t", p, true);
    let after = h.durable(&step.effects);
    assert_eq!(replies(&after), vec![Reply::EndTxn(Ok(p))]);
    assert_eq!(markers(&after).len(), 1);
}

#[test]
fn commit_markers_go_to_every_partition_of_the_transaction() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("b", 2), tp("a", 0), tp("a", 1)]);
    let step = h.end("t", p, true);
    let after = h.durable(&step.effects);
    let m = &markers(&after)[0];
    assert_eq!(
        (
            m.commit,
            m.producer_id,
            m.producer_epoch,
            m.coordinator_epoch
        ),
        (true, p.producer_id, p.epoch, 7)
    );
    assert_eq!(m.partitions, vec![tp("a", 0), tp("a", 1), tp("b", 2)]);
}

#[test]
fn once_the_markers_are_written_the_transaction_completes_with_a_complete_commit_record() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    let step = h.end("t", p, true);
    let after = h.durable(&step.effects);
    let complete = h.marked(&after);
    assert_eq!(appended_state(&complete), Some(TxnState::CompleteCommit));
    h.durable(&complete);
    let m = h.meta("t");
    assert_eq!((m.state, m.partitions.len()), (TxnState::CompleteCommit, 0));
}

#[test]
fn the_transaction_stays_prepare_commit_until_the_markers_are_written() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    let step = h.end("t", p, true);
    h.durable(&step.effects);
    assert_eq!(h.state("t"), Some(TxnState::PrepareCommit));
}

#[test]
fn end_txn_abort_writes_abort_markers_and_completes_abort() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    let step = h.end("t", p, false);
    let seen = h.settle(step.effects);
    assert!(!markers(&seen)[0].commit);
    assert_eq!(h.state("t"), Some(TxnState::CompleteAbort));
}

#[test]
fn end_txn_while_prepare_commit_is_pending_answers_concurrent_transactions() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    let _pending = h.end("t", p, true);
    let step = h.end("t", p, true);
    assert_eq!(step.reply, Some(Err(TxnError::ConcurrentTransactions)));
}

#[test]
fn end_txn_while_the_markers_are_written_answers_concurrent_transactions() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    let step = h.end("t", p, true);
    h.durable(&step.effects);
    let retry = h.end("t", p, true);
    assert_eq!(retry.reply, Some(Err(TxnError::ConcurrentTransactions)));
}

#[test]
fn a_retried_commit_of_a_completed_commit_succeeds() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    let step = h.end("t", p, true);
    h.settle(step.effects);
    let retry = h.end("t", p, true);
    assert_eq!((retry.reply, retry.effects.len()), (Some(Ok(p)), 0));
}

#[test]
fn an_abort_of_a_completed_commit_is_invalid_txn_state() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    let step = h.end("t", p, true);
    h.settle(step.effects);
    let abort = h.end("t", p, false);
    assert_eq!(abort.reply, Some(Err(TxnError::InvalidTxnState)));
}

/// A PrepareCommit whose completion is not pending here (its complete record was refused
/// because the partition is moving) still refuses an abort.
#[test]
fn an_abort_of_a_prepared_commit_is_invalid_txn_state() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    let step = h.end("t", p, true);
    let after = h.durable(&step.effects);
    let complete = h.marked(&after);
    h.fail(&complete, AppendError::NotCoordinator);
    let abort = h.end("t", p, false);
    assert_eq!(abort.reply, Some(Err(TxnError::InvalidTxnState)));
}

#[test]
fn end_txn_without_a_transaction_is_invalid_txn_state() {
    let mut h = Harness::new();
    let p = h.ready("t");
    let step = h.end("t", p, true);
    assert_eq!(step.reply, Some(Err(TxnError::InvalidTxnState)));
}

#[test]
fn end_txn_with_a_stale_epoch_is_fenced() {
    let mut h = Harness::new();
    let old = h.begun("t", &[tp("a", 0)]);
    let fence = h.init("t");
    h.settle(fence.effects);
    let step = h.end("t", old, true);
    assert_eq!(step.reply, Some(Err(TxnError::ProducerFenced)));
}

#[test]
fn end_txn_of_an_unknown_transactional_id_is_invalid_producer_id_mapping() {
    let mut h = Harness::new();
    let step = h.end("t", pe(1, 0), true);
    assert_eq!(step.reply, Some(Err(TxnError::InvalidProducerIdMapping)));
}

#[test]
fn a_failed_prepare_write_answers_the_error_and_leaves_the_transaction_ongoing() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    let step = h.end("t", p, true);
    let after = h.fail(&step.effects, AppendError::NotCoordinator);
    assert_eq!(
        replies(&after),
        vec![Reply::EndTxn(Err(TxnError::NotCoordinator))]
    );
    assert_eq!(
        (h.state("t"), h.c.is_pending("t")),
        (Some(TxnState::Ongoing), false)
    );
}

#[test]
fn a_failed_complete_write_is_retried() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    let step = h.end("t", p, true);
    let after = h.durable(&step.effects);
    let complete = h.marked(&after);
    let retried = h.fail(&complete, AppendError::Unavailable);
    assert_eq!(appended_state(&retried), Some(TxnState::CompleteCommit));
}

#[test]
fn a_report_for_an_append_no_longer_awaited_is_ignored() {
    let mut h = Harness::new();
    let step = h.init("t");
    h.durable(&step.effects);
    let again = h.durable(&step.effects);
    assert!(again.is_empty());
}

// ---- KIP-890 part 2: transaction version 2 ----

#[test]
fn with_transaction_version_2_every_end_txn_bumps_the_epoch() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    let step = h.end_with("t", p, true, TransactionVersion::V2);
    let after = h.durable(&step.effects);
    assert_eq!(
        replies(&after),
        vec![Reply::EndTxn(Ok(pe(p.producer_id, p.epoch + 1)))]
    );
}

#[test]
fn with_transaction_version_2_the_markers_carry_the_bumped_epoch() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    let step = h.end_with("t", p, true, TransactionVersion::V2);
    let after = h.durable(&step.effects);
    assert_eq!(markers(&after)[0].producer_epoch, p.epoch + 1);
}

#[test]
fn with_transaction_version_2_a_retried_end_txn_with_the_old_epoch_succeeds() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    let step = h.end_with("t", p, true, TransactionVersion::V2);
    h.settle(step.effects);
    let retry = h.end_with("t", p, true, TransactionVersion::V2);
    assert_eq!(retry.reply, Some(Ok(pe(p.producer_id, p.epoch + 1))));
}

#[test]
fn with_transaction_version_2_the_next_transaction_uses_the_bumped_epoch() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    let step = h.end_with("t", p, true, TransactionVersion::V2);
    h.settle(step.effects);
    let next = pe(p.producer_id, p.epoch + 1);
    let add = h.add("t", next, &[tp("a", 0)]);
    let after = h.durable(&add.effects);
    assert_eq!(replies(&after), vec![Reply::AddPartitions(Ok(()))]);
}

#[test]
fn with_transaction_version_2_an_exhausted_epoch_moves_to_the_next_producer_id_at_epoch_0() {
    let exhausted = i16::MAX - 1;
    let (mut h, _) = Harness::loaded(vec![stored(
        "t",
        5,
        exhausted,
        TxnState::Ongoing,
        &[tp("a", 0)],
    )]);
    let step = h.end_with("t", pe(5, exhausted), true, TransactionVersion::V2);
    let seen = h.settle(step.effects);
    assert_eq!(replies(&seen), vec![Reply::EndTxn(Ok(pe(1000, 0)))]);
    let m = h.meta("t");
    assert_eq!(
        (m.producer_id, m.producer_epoch, m.previous_producer_id),
        (1000, 0, 5)
    );
}

#[test]
fn with_transaction_version_2_an_abort_without_partitions_bumps_the_epoch() {
    let mut h = Harness::new();
    let p = h.ready("t");
    let step = h.end_with("t", p, false, TransactionVersion::V2);
    let seen = h.settle(step.effects);
    assert_eq!(
        replies(&seen),
        vec![Reply::EndTxn(Ok(pe(p.producer_id, p.epoch + 1)))]
    );
    assert_eq!(
        (h.state("t"), markers(&seen).len()),
        (Some(TxnState::CompleteAbort), 0)
    );
}

#[test]
fn with_transaction_version_2_a_commit_without_partitions_is_invalid_txn_state() {
    let mut h = Harness::new();
    let p = h.ready("t");
    let step = h.end_with("t", p, true, TransactionVersion::V2);
    assert_eq!(step.reply, Some(Err(TxnError::InvalidTxnState)));
}

#[test]
fn with_transaction_version_2_a_retried_abort_of_a_completed_commit_is_invalid_txn_state() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    let step = h.end_with("t", p, true, TransactionVersion::V2);
    h.settle(step.effects);
    let abort = h.end_with("t", p, false, TransactionVersion::V2);
    assert_eq!(abort.reply, Some(Err(TxnError::InvalidTxnState)));
}

#[test]
fn with_transaction_version_2_the_next_transaction_under_the_new_producer_id_waits_for_the_last_one()
 {
    let exhausted = i16::MAX - 1;
    let (mut h, _) = Harness::loaded(vec![stored(
        "t",
        5,
        exhausted,
        TxnState::Ongoing,
        &[tp("a", 0)],
    )]);
    let step = h.end_with("t", pe(5, exhausted), true, TransactionVersion::V2);
    h.durable(&step.effects); // answered 1000/0; markers still in flight under 5
    let add = h.add("t", pe(1000, 0), &[tp("a", 0)]);
    assert_eq!(add.reply, Some(Err(TxnError::ConcurrentTransactions)));
}

fn config_v2() -> TxnConfig {
    TxnConfig {
        transaction_version: TransactionVersion::V2,
        ..config()
    }
}

#[test]
fn with_transaction_version_2_a_fencing_abort_bumps_the_epoch_once() {
    let mut h = Harness::with(TxnCoordinator::new(7, config_v2()));
    let p = h.begun("t", &[tp("a", 0)]);
    let step = h.init("t");
    let after = h.durable(&step.effects);
    assert_eq!(markers(&after)[0].producer_epoch, p.epoch + 1);
}

#[test]
fn with_transaction_version_2_a_timed_out_transaction_at_an_exhausted_epoch_moves_to_a_new_producer_id()
 {
    let exhausted = i16::MAX - 1;
    let records = vec![stored("t", 5, exhausted, TxnState::Ongoing, &[tp("a", 0)])];
    let (c, _) = TxnCoordinator::load(7, config_v2(), records, T0);
    let mut h = Harness::with(c);
    h.now += i64::from(TIMEOUT_MS);
    let effects = h.c.abort_timed_out(&mut h.pids, h.now);
    h.settle(effects);
    let m = h.meta("t");
    assert_eq!(
        (m.state, m.producer_id, m.producer_epoch),
        (TxnState::CompleteAbort, 1000, 0)
    );
}

// ---- Timeouts ----

#[test]
fn an_expired_transaction_is_aborted_with_a_bumped_epoch() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    h.now += i64::from(TIMEOUT_MS) + 1;
    let effects = h.c.abort_timed_out(&mut h.pids, h.now);
    let value = appends(&effects)[0].1.value.clone().expect("a value");
    assert_eq!(
        (value.state, value.producer_epoch),
        (TxnState::PrepareAbort, p.epoch + 1)
    );
}

#[test]
fn a_transaction_within_its_timeout_is_not_aborted() {
    let mut h = Harness::new();
    h.begun("t", &[tp("a", 0)]);
    h.now += i64::from(TIMEOUT_MS);
    assert!(h.c.abort_timed_out(&mut h.pids, h.now).is_empty());
}

#[test]
fn the_abort_of_an_expired_transaction_completes_with_abort_markers() {
    let mut h = Harness::new();
    h.begun("t", &[tp("a", 0)]);
    h.now += i64::from(TIMEOUT_MS) + 1;
    let effects = h.c.abort_timed_out(&mut h.pids, h.now);
    let seen = h.settle(effects);
    assert_eq!(
        (markers(&seen)[0].commit, h.state("t")),
        (false, Some(TxnState::CompleteAbort))
    );
}

#[test]
fn the_producer_of_an_expired_transaction_is_fenced() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    h.now += i64::from(TIMEOUT_MS) + 1;
    let effects = h.c.abort_timed_out(&mut h.pids, h.now);
    h.settle(effects);
    let step = h.end("t", p, true);
    assert_eq!(step.reply, Some(Err(TxnError::ProducerFenced)));
}

/// Partition leaders verify before a transactional produce; they see the fence at once.
#[test]
fn the_producer_of_an_expired_transaction_is_fenced_even_before_the_abort_is_durable() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    h.now += i64::from(TIMEOUT_MS) + 1;
    let _in_flight = h.c.abort_timed_out(&mut h.pids, h.now);
    let req = AddPartitionsRequest {
        transactional_id: "t".into(),
        producer_id: p.producer_id,
        producer_epoch: p.epoch,
        partitions: vec![tp("a", 0)],
        client_version: TransactionVersion::V0,
    };
    let verdicts: Vec<_> = h.c.verify_partitions(&req).into_values().collect();
    assert_eq!(verdicts, vec![Err(TxnError::ProducerFenced)]);
}

#[test]
fn end_txn_of_a_stale_producer_while_its_abort_is_pending_answers_concurrent_transactions() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    h.now += i64::from(TIMEOUT_MS) + 1;
    let _in_flight = h.c.abort_timed_out(&mut h.pids, h.now);
    let step = h.end("t", p, true);
    assert_eq!(step.reply, Some(Err(TxnError::ConcurrentTransactions)));
}

#[test]
fn a_failed_fence_does_not_bump_the_epoch_twice() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    h.now += i64::from(TIMEOUT_MS) + 1;
    let first = h.c.abort_timed_out(&mut h.pids, h.now);
    h.fail(&first, AppendError::Unavailable);
    let second = h.c.abort_timed_out(&mut h.pids, h.now);
    let value = appends(&second)[0].1.value.clone().expect("a value");
    assert_eq!(value.producer_epoch, p.epoch + 1);
}

// ---- transactional.id.expiration.ms ----

#[test]
fn an_idle_transactional_id_expires_with_a_tombstone() {
    let mut h = Harness::new();
    h.ready("t");
    h.now += config().transactional_id_expiration_ms;
    let effects = h.c.expire_transactional_ids(h.now);
    let records = appends(&effects);
    assert_eq!((records.len(), records[0].1.value.is_none()), (1, true));
}

#[test]
fn an_expired_transactional_id_is_forgotten_once_its_tombstone_is_durable() {
    let mut h = Harness::new();
    h.ready("t");
    h.now += config().transactional_id_expiration_ms;
    let effects = h.c.expire_transactional_ids(h.now);
    assert!(h.c.metadata("t").is_some());
    h.durable(&effects);
    assert!(h.c.metadata("t").is_none());
}

#[test]
fn a_transactional_id_used_recently_does_not_expire() {
    let mut h = Harness::new();
    h.ready("t");
    h.now += config().transactional_id_expiration_ms - 1;
    assert!(h.c.expire_transactional_ids(h.now).is_empty());
}

#[test]
fn a_transactional_id_with_an_ongoing_transaction_does_not_expire() {
    let mut h = Harness::new();
    h.begun("t", &[tp("a", 0)]);
    h.now += config().transactional_id_expiration_ms * 2;
    assert!(h.c.expire_transactional_ids(h.now).is_empty());
}

// ---- Loading ----

#[test]
fn a_coordinator_that_loads_a_prepare_commit_completes_it() {
    let records = vec![stored("t", 5, 3, TxnState::PrepareCommit, &[tp("a", 0)])];
    let (mut h, effects) = Harness::loaded(records);
    assert_eq!(
        markers(&effects),
        vec![Markers {
            transactional_id: "t".into(),
            producer_id: 5,
            producer_epoch: 3,
            commit: true,
            coordinator_epoch: 7,
            partitions: vec![tp("a", 0)],
        }]
    );
    h.settle(effects);
    assert_eq!(h.state("t"), Some(TxnState::CompleteCommit));
}

#[test]
fn a_coordinator_that_loads_a_prepare_abort_writes_abort_markers() {
    let records = vec![stored("t", 5, 3, TxnState::PrepareAbort, &[tp("a", 0)])];
    let (_, effects) = Harness::loaded(records);
    assert!(!markers(&effects)[0].commit);
}

#[test]
fn loading_applies_tombstones() {
    let mut records = vec![stored("t", 5, 3, TxnState::CompleteCommit, &[])];
    records.push(TxnLogRecord {
        transactional_id: "t".into(),
        value: None,
    });
    let (h, _) = Harness::loaded(records);
    assert!(h.c.metadata("t").is_none());
}

#[test]
fn a_new_owner_rebuilds_what_the_old_one_wrote() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0), tp("b", 3)]);
    h.ready("u");
    let (loaded, effects) = Harness::loaded(h.log.clone());
    assert!(effects.is_empty());
    let mut expected = h.meta("t");
    expected.last_producer_epoch = -1; // not stored, as in Kafka
    assert_eq!(loaded.meta("t"), expected);
    assert_eq!(loaded.meta("t").producer_epoch, p.epoch);
}

#[test]
fn a_new_owner_continues_a_transaction_the_old_one_started() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    let (mut loaded, _) = Harness::loaded(h.log.clone());
    let step = loaded.end("t", p, true);
    let seen = loaded.settle(step.effects);
    assert_eq!(replies(&seen), vec![Reply::EndTxn(Ok(p))]);
}

#[test]
fn unloading_answers_waiting_requests_not_coordinator() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    let _pending = h.end("t", p, true);
    let effects = h.c.unload();
    assert_eq!(
        replies(&effects),
        vec![Reply::EndTxn(Err(TxnError::NotCoordinator))]
    );
}

// ---- DescribeTransactions / ListTransactions ----

#[test]
fn describe_shows_the_state_as_kafka_names_it_with_partitions_and_start_time() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 1), tp("a", 0)]);
    let d = h.c.describe("t");
    assert_eq!(
        d,
        Ok(TxnDescription {
            transactional_id: "t".into(),
            state: TxnState::Ongoing,
            producer_id: p.producer_id,
            producer_epoch: p.epoch,
            timeout_ms: TIMEOUT_MS,
            start_timestamp_ms: T0,
            topics: vec![TopicPartitions {
                topic: "a".into(),
                partitions: vec![0, 1]
            }],
        })
    );
    assert_eq!(TxnState::Ongoing.name(), "Ongoing");
}

#[test]
fn describe_of_an_unknown_transactional_id_is_transactional_id_not_found() {
    let h = Harness::new();
    assert_eq!(h.c.describe("t"), Err(TxnError::TransactionalIdNotFound));
}

fn listed(h: &Harness, filter: ListFilter) -> Vec<String> {
    h.c.list(&filter, h.now)
        .transactions
        .into_iter()
        .map(|t| t.transactional_id)
        .collect()
}

#[test]
fn list_transactions_filters_by_state_name() {
    let mut h = Harness::new();
    h.ready("idle");
    h.begun("busy", &[tp("a", 0)]);
    let filter = ListFilter {
        states: vec!["Ongoing".into()],
        ..Default::default()
    };
    assert_eq!(listed(&h, filter), vec!["busy".to_string()]);
}

#[test]
fn list_transactions_filters_by_producer_id() {
    let mut h = Harness::new();
    h.ready("a");
    let b = h.ready("b");
    let filter = ListFilter {
        producer_ids: vec![b.producer_id],
        ..Default::default()
    };
    assert_eq!(listed(&h, filter), vec!["b".to_string()]);
}

#[test]
fn list_transactions_filters_by_how_long_they_run() {
    let mut h = Harness::new();
    h.begun("old", &[tp("a", 0)]);
    h.now += 10_000;
    h.begun("new", &[tp("a", 0)]);
    h.now += 1_000;
    let filter = ListFilter {
        states: vec!["Ongoing".into()],
        duration_ms: 5_000,
        ..Default::default()
    };
    assert_eq!(listed(&h, filter), vec!["old".to_string()]);
}

#[test]
fn list_transactions_echoes_unknown_state_filters() {
    let h = Harness::new();
    let filter = ListFilter {
        states: vec!["Ongoing".into(), "Bogus".into()],
        ..Default::default()
    };
    assert_eq!(
        h.c.list(&filter, h.now).unknown_state_filters,
        vec!["Bogus".to_string()]
    );
}

#[test]
fn loading_a_dead_record_forgets_the_transactional_id() {
    let (h, _) = Harness::loaded(vec![
        stored("t", 5, 3, TxnState::CompleteCommit, &[]),
        stored("t", 5, 3, TxnState::Dead, &[]),
    ]);
    assert!(h.c.metadata("t").is_none());
}

#[test]
fn a_failed_tombstone_keeps_the_transactional_id() {
    let mut h = Harness::new();
    h.ready("t");
    h.now += config().transactional_id_expiration_ms;
    let effects = h.c.expire_transactional_ids(h.now);
    h.fail(&effects, AppendError::Unavailable);
    assert_eq!(
        (h.state("t"), h.c.is_pending("t")),
        (Some(TxnState::Empty), false)
    );
}

#[test]
fn markers_reported_twice_write_the_complete_record_once() {
    let mut h = Harness::new();
    let p = h.begun("t", &[tp("a", 0)]);
    let step = h.end("t", p, true);
    let after = h.durable(&step.effects);
    h.marked(&after);
    assert!(h.marked(&after).is_empty());
}

#[test]
fn init_records_the_requested_transaction_timeout() {
    let mut h = Harness::new();
    let step = h.init_with("t", 5_000, None);
    h.settle(step.effects);
    assert_eq!(h.meta("t").timeout_ms, 5_000);
}

#[test]
fn records_are_written_at_the_clusters_transaction_log_version() {
    let mut h = Harness::new();
    let step = h.init("t");
    let value = step.effects.iter().find_map(|e| match e {
        Effect::Append { value, .. } => value.clone(),
        _ => None,
    });
    // transaction.version 1: flexible value version 1.
    assert_eq!(value.map(|v| v[..2].to_vec()), Some(vec![0, 1]));
}

#[test]
fn list_transactions_without_filters_lists_every_transactional_id() {
    let mut h = Harness::new();
    h.ready("a");
    h.begun("b", &[tp("a", 0)]);
    assert_eq!(
        listed(&h, ListFilter::default()),
        vec!["a".to_string(), "b".to_string()]
    );
}
