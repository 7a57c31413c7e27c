//! The transaction coordinator of one `__transaction_state` partition, as a state machine:
//! Kafka's `TransactionCoordinator` and `TransactionStateManager` without the I/O.
//!
//! Every call takes `now_ms` and returns a reply and/or [`Effect`]s; the glue performs the
//! effects and reports back with [`TxnCoordinator::append_completed`] and
//! [`TxnCoordinator::markers_written`]. A transition is *pending* from the moment its record is
//! handed out until that append is reported (Kafka's `pendingState`): the metadata changes only
//! then, and any other request for the same transactional id meanwhile answers
//! CONCURRENT_TRANSACTIONS. A commit or abort stays pending from its prepare record being
//! durable, through the markers, to its complete record being durable.
//!
//! One coordinator object per owned partition at one coordinator epoch: when ownership moves,
//! the glue drops the object ([`TxnCoordinator::unload`]) and loads a new one, so a late
//! report from an old epoch can never touch new state.

use super::metadata::{
    NO_PRODUCER_EPOCH, NO_PRODUCER_ID, TopicPartition, TransactionVersion, TxnMetadata,
    is_epoch_exhausted,
};
use super::records::{TopicPartitions, TxnLogRecord, TxnState};
use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use std::collections::{BTreeMap, HashMap};

/// Coordinator settings (Kafka's names).
#[derive(Debug, Clone)]
pub(crate) struct TxnConfig {
    /// transaction.max.timeout.ms (Kafka: 900000).
    pub max_timeout_ms: i32,
    /// transactional.id.expiration.ms (Kafka: 604800000, 7 days).
    pub transactional_id_expiration_ms: i64,
    /// The cluster's `transaction.version`: which record version is written (1+ = flexible)
    /// and the version the coordinator's own aborts (fencing, timeouts) run at.
    pub transaction_version: TransactionVersion,
}

/// What a request can be answered with, each a different client action. Mapped to Kafka
/// codes once, by [`TxnError::for_api`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TxnError {
    /// Empty transactional id; or a producer id without an epoch (or the reverse).
    #[error("invalid request")]
    InvalidRequest,
    /// Not in (0, transaction.max.timeout.ms].
    #[error("transaction timeout out of range")]
    InvalidTransactionTimeout,
    /// Another transition of this id is in flight, or a commit/abort is completing: retry.
    #[error("concurrent transactions")]
    ConcurrentTransactions,
    /// A newer producer owns the transactional id (or the request's epoch is stale).
    #[error("producer fenced")]
    ProducerFenced,
    /// Unknown transactional id, or a different producer id than the one assigned to it.
    #[error("invalid producer id mapping")]
    InvalidProducerIdMapping,
    /// E.g. an abort of a completed commit, an EndTxn without a transaction.
    #[error("invalid transaction state")]
    InvalidTxnState,
    #[error("transactional id not found")]
    TransactionalIdNotFound,
    /// Verify-only AddPartitionsToTxn: the partition is not in the transaction.
    #[error("transaction abortable")]
    TransactionAbortable,
    /// No producer id to hand out yet (the node waits for a block), as Kafka's
    /// ProducerIdManager answers: older clients retry it, where they would die on a timeout.
    #[error("coordinator load in progress")]
    CoordinatorLoadInProgress,
    /// The partition moved away (or the append says this node no longer owns it).
    #[error("not coordinator")]
    NotCoordinator,
    /// The log append failed transiently.
    #[error("coordinator not available")]
    CoordinatorNotAvailable,
    #[error("unknown server error")]
    UnknownServerError,
}

/// The request kinds whose old versions predate PRODUCER_FENCED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxnApi {
    InitProducerId,
    AddPartitionsToTxn,
    AddOffsetsToTxn,
    EndTxn,
}

impl TxnError {
    pub(crate) fn response_error(self) -> ResponseError {
        match self {
            TxnError::InvalidRequest => ResponseError::InvalidRequest,
            TxnError::InvalidTransactionTimeout => ResponseError::InvalidTransactionTimeout,
            TxnError::ConcurrentTransactions => ResponseError::ConcurrentTransactions,
            TxnError::ProducerFenced => ResponseError::ProducerFenced,
            TxnError::InvalidProducerIdMapping => ResponseError::InvalidProducerIdMapping,
            TxnError::InvalidTxnState => ResponseError::InvalidTxnState,
            TxnError::TransactionalIdNotFound => ResponseError::TransactionalIdNotFound,
            TxnError::TransactionAbortable => ResponseError::TransactionAbortable,
            TxnError::CoordinatorLoadInProgress => ResponseError::CoordinatorLoadInProgress,
            TxnError::NotCoordinator => ResponseError::NotCoordinator,
            TxnError::CoordinatorNotAvailable => ResponseError::CoordinatorNotAvailable,
            TxnError::UnknownServerError => ResponseError::UnknownServerError,
        }
    }

    /// The error a coordinator on another node answered with (`code` is not 0).
    pub(crate) fn from_code(code: i16) -> TxnError {
        match ResponseError::try_from_code(code) {
            Some(ResponseError::InvalidRequest) => TxnError::InvalidRequest,
            Some(ResponseError::ConcurrentTransactions) => TxnError::ConcurrentTransactions,
            Some(ResponseError::ProducerFenced | ResponseError::InvalidProducerEpoch) => {
                TxnError::ProducerFenced
            }
            Some(ResponseError::InvalidProducerIdMapping) => TxnError::InvalidProducerIdMapping,
            Some(ResponseError::InvalidTxnState) => TxnError::InvalidTxnState,
            Some(ResponseError::TransactionAbortable) => TxnError::TransactionAbortable,
            Some(ResponseError::CoordinatorLoadInProgress) => TxnError::CoordinatorLoadInProgress,
            Some(ResponseError::NotCoordinator) => TxnError::NotCoordinator,
            Some(ResponseError::CoordinatorNotAvailable) => TxnError::CoordinatorNotAvailable,
            _ => TxnError::UnknownServerError,
        }
    }

    /// The code for a response of `api` at `version`: clients older than PRODUCER_FENCED get
    /// INVALID_PRODUCER_EPOCH, which they handle the same way (Kafka's `KafkaApis`:
    /// InitProducerId < v4, AddPartitionsToTxn / AddOffsetsToTxn / EndTxn < v2).
    pub(crate) fn for_api(self, api: TxnApi, version: i16) -> ResponseError {
        let knows_fenced = match api {
            TxnApi::InitProducerId => version >= 4,
            TxnApi::AddPartitionsToTxn | TxnApi::AddOffsetsToTxn | TxnApi::EndTxn => version >= 2,
        };
        if self == TxnError::ProducerFenced && !knows_fenced {
            ResponseError::InvalidProducerEpoch
        } else {
            self.response_error()
        }
    }
}

/// How a `__transaction_state` append failed, as far as the coordinator cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppendError {
    /// Transient (Kafka: not enough replicas, timeout): the client retries.
    Unavailable,
    /// The partition is no longer this node's (fenced stream epoch, moved).
    NotCoordinator,
    /// Anything else (too large, storage error).
    Other,
}

impl AppendError {
    /// Kafka's `appendTransactionToLog` error translation.
    fn as_txn_error(self) -> TxnError {
        match self {
            AppendError::Unavailable => TxnError::CoordinatorNotAvailable,
            AppendError::NotCoordinator => TxnError::NotCoordinator,
            AppendError::Other => TxnError::UnknownServerError,
        }
    }
}

/// Producer ids come from blocks the node leases from the metadata quorum.
pub(crate) trait ProducerIds {
    /// A never-used producer id, or `CoordinatorLoadInProgress` while no block is available.
    fn next_producer_id(&mut self) -> Result<i64, TxnError>;
}

impl<F: FnMut() -> Result<i64, TxnError>> ProducerIds for F {
    fn next_producer_id(&mut self) -> Result<i64, TxnError> {
        self()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ProducerIdAndEpoch {
    pub producer_id: i64,
    pub epoch: i16,
}

impl ProducerIdAndEpoch {
    /// InitProducerId's KIP-360 fields: both -1 is "none", one of them -1 is INVALID_REQUEST.
    pub(crate) fn from_request(producer_id: i64, epoch: i16) -> Result<Option<Self>, TxnError> {
        match (producer_id == NO_PRODUCER_ID, epoch == NO_PRODUCER_EPOCH) {
            (true, true) => Ok(None),
            (false, false) => Ok(Some(Self { producer_id, epoch })),
            _ => Err(TxnError::InvalidRequest),
        }
    }
}

/// The glue's handle on a request whose reply comes later, in an [`Effect::Reply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Token(pub u64);

/// Names one append handed out in an [`Effect::Append`], to report its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct AppendId(u64);

pub(crate) struct InitProducerIdRequest {
    pub transactional_id: String,
    pub transaction_timeout_ms: i32,
    /// KIP-360: the producer id and epoch the client had (see `ProducerIdAndEpoch::from_request`).
    pub expected: Option<ProducerIdAndEpoch>,
}

pub(crate) struct AddPartitionsRequest {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub partitions: Vec<TopicPartition>,
    /// The client's transaction version, recorded with the transaction as Kafka's
    /// `prepareAddPartitions` does: 2 for AddPartitionsToTxn v4+ (sent by partition leaders
    /// for Produce v12+ and TxnOffsetCommit v5+), else 0.
    pub client_version: TransactionVersion,
}

pub(crate) struct AddOffsetsRequest {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// The group's `__consumer_offsets` partition (`groups::partition_for`).
    pub offsets_partition: i32,
}

pub(crate) struct EndTxnRequest {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
    /// `TransactionVersion::of_end_txn_request(version)`.
    pub client_version: TransactionVersion,
}

/// A reply that waited for an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    InitProducerId(Result<ProducerIdAndEpoch, TxnError>),
    AddPartitions(Result<(), TxnError>),
    /// With transaction version 2 the new producer id and epoch (EndTxn v5+).
    EndTxn(Result<ProducerIdAndEpoch, TxnError>),
}

/// COMMIT or ABORT markers for every partition of a transaction (WriteTxnMarkers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Markers {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
    pub coordinator_epoch: i32,
    pub partitions: Vec<TopicPartition>,
}

/// What the glue does for the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Append `key`/`value` (the encoding of `record`) as one record to this coordinator's
    /// `__transaction_state` partition, then call `append_completed(id, ..)`.
    Append {
        id: AppendId,
        record: TxnLogRecord,
        key: Bytes,
        value: Option<Bytes>,
    },
    /// Write the markers (retrying per partition until each is written or its topic is gone),
    /// then call `markers_written(transactional_id, ..)`. If a partition answers that this
    /// coordinator epoch is fenced, give up: the partition is moving and its next owner
    /// completes the transaction on load.
    WriteMarkers(Markers),
    /// Answer the request registered under `token`.
    Reply { token: Token, reply: Reply },
}

/// A step's immediate reply, or `None` when it comes later as an [`Effect::Reply`] for the
/// request's token.
#[derive(Debug)]
pub(crate) struct Step<R> {
    pub reply: Option<R>,
    pub effects: Vec<Effect>,
}

impl<R> Step<R> {
    fn now(reply: R) -> Self {
        Self {
            reply: Some(reply),
            effects: Vec::new(),
        }
    }
    fn later(effects: Vec<Effect>) -> Self {
        Self {
            reply: None,
            effects,
        }
    }
}

/// DescribeTransactions' view of one id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TxnDescription {
    pub transactional_id: String,
    pub state: TxnState,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub start_timestamp_ms: i64,
    pub topics: Vec<TopicPartitions>,
}

/// ListTransactions' filters; empty lists and a negative duration filter nothing (the
/// default filters nothing at all).
#[derive(Debug, Clone)]
pub(crate) struct ListFilter {
    pub producer_ids: Vec<i64>,
    /// State names as Kafka prints them ("Ongoing" ...).
    pub states: Vec<String>,
    /// Only transactions running longer than this (KIP-994); -1 for all.
    pub duration_ms: i64,
}

impl Default for ListFilter {
    fn default() -> Self {
        Self {
            producer_ids: Vec::new(),
            states: Vec::new(),
            duration_ms: -1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TxnListing {
    pub transactional_id: String,
    pub producer_id: i64,
    pub state: TxnState,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TxnList {
    pub transactions: Vec<TxnListing>,
    /// Filter names that are no state, echoed back as Kafka does.
    pub unknown_state_filters: Vec<String>,
}

/// Who waits for a prepare record.
#[derive(Debug)]
enum Waiter {
    EndTxn(Token),
    /// An InitProducerId that found a transaction Ongoing and aborts it first.
    FencingInit(Token),
    /// The timeout sweep.
    Nobody,
}

/// What to do once the pending record is durable.
#[derive(Debug)]
enum Then {
    Init(Token),
    AddPartitions(Token),
    Prepare { waiter: Waiter, fence: bool },
    Complete,
    Expire,
}

#[derive(Debug)]
struct Pending {
    /// The metadata once the record is durable.
    target: TxnMetadata,
    /// None while the markers of a commit/abort are being written.
    append: Option<AppendId>,
    then: Then,
}

#[derive(Debug)]
struct Entry {
    meta: TxnMetadata,
    pending: Option<Pending>,
    /// A fence's bumped epoch may not be durable (its write failed): the next fence reuses it
    /// instead of bumping again (Kafka's `hasFailedEpochFence`).
    has_failed_epoch_fence: bool,
}

/// Hands out appends and remembers which id each belongs to.
#[derive(Debug)]
struct Appender {
    next: u64,
    in_flight: HashMap<AppendId, String>,
    value_version: i16,
}

impl Appender {
    /// Makes `target` the pending transition of `entry` and hands out its record.
    fn start(&mut self, entry: &mut Entry, target: TxnMetadata, then: Then) -> Effect {
        let mut pending = Pending {
            target,
            append: None,
            then,
        };
        let append = self.append(&mut pending);
        entry.pending = Some(pending);
        append
    }

    /// (Re)sends the record of `pending` under a new id.
    fn append(&mut self, pending: &mut Pending) -> Effect {
        let id = AppendId(self.next);
        self.next += 1;
        pending.append = Some(id);
        let target = &pending.target;
        let value = match pending.then {
            Then::Expire => None,
            _ => Some(target.to_log_value()),
        };
        let record = TxnLogRecord {
            transactional_id: target.transactional_id.clone(),
            value,
        };
        self.in_flight.insert(id, record.transactional_id.clone());
        let (key, value) = record.encode(self.value_version);
        Effect::Append {
            id,
            record,
            key,
            value,
        }
    }
}

/// The coordinator for the transactional ids of one `__transaction_state` partition.
#[derive(Debug)]
pub(crate) struct TxnCoordinator {
    coordinator_epoch: i32,
    config: TxnConfig,
    txns: BTreeMap<String, Entry>,
    appender: Appender,
}

/// The metadata a transition starts from: same producer, `state`, stamped `now_ms`.
fn transit(meta: &TxnMetadata, state: TxnState, now_ms: i64) -> TxnMetadata {
    let mut t = meta.clone();
    t.state = state;
    // Kafka's prepareTransitionTo records the producer id before every transition.
    t.previous_producer_id = meta.producer_id;
    t.txn_last_update_timestamp_ms = now_ms;
    t
}

/// InitProducerId's Empty transition: `producer_id` at `epoch` (the same id bumped, or a new
/// id at 0 on rotation), no partitions, no transaction started.
fn init_target(
    meta: &TxnMetadata,
    producer_id: i64,
    epoch: i16,
    last_epoch: i16,
    timeout_ms: i32,
    now_ms: i64,
) -> TxnMetadata {
    let mut t = transit(meta, TxnState::Empty, now_ms);
    t.producer_id = producer_id;
    t.producer_epoch = epoch;
    t.last_producer_epoch = last_epoch;
    t.next_producer_id = NO_PRODUCER_ID;
    t.timeout_ms = timeout_ms;
    t.partitions.clear();
    t.txn_start_timestamp_ms = -1;
    t
}

/// Kafka's `prepareAbortOrCommit`: with transaction version 2 the epoch is bumped now.
fn prepare_target(
    meta: &TxnMetadata,
    commit: bool,
    version: TransactionVersion,
    next_producer_id: i64,
    now_ms: i64,
) -> TxnMetadata {
    let state = if commit {
        TxnState::PrepareCommit
    } else {
        TxnState::PrepareAbort
    };
    let mut t = transit(meta, state, now_ms);
    if version.supports_epoch_bump() {
        // An abort at Short.MaxValue goes through unbumped so the id can recover (Kafka logs
        // it as a bug); everything else was kept below it by the exhaustion checks.
        if meta.producer_epoch < i16::MAX {
            t.producer_epoch = meta.producer_epoch + 1;
        }
        t.last_producer_epoch = meta.producer_epoch;
    }
    t.next_producer_id = next_producer_id;
    t.client_transaction_version = version;
    t
}

/// Kafka's `prepareComplete`: a KIP-890 overflow moves to the next producer id now.
fn complete_target(meta: &TxnMetadata, now_ms: i64) -> TxnMetadata {
    let state = if meta.state == TxnState::PrepareCommit {
        TxnState::CompleteCommit
    } else {
        TxnState::CompleteAbort
    };
    let mut t = transit(meta, state, now_ms);
    if meta.client_transaction_version.supports_epoch_bump()
        && meta.next_producer_id != NO_PRODUCER_ID
    {
        t.producer_id = meta.next_producer_id;
        t.producer_epoch = 0;
    }
    t.next_producer_id = NO_PRODUCER_ID;
    t.partitions.clear();
    t
}

/// What the client uses after a commit/abort: the next producer id at epoch 0 when the
/// epoch overflowed (the client never sees Short.MaxValue), else the current one.
fn end_txn_reply(meta: &TxnMetadata) -> ProducerIdAndEpoch {
    if meta.client_transaction_version.supports_epoch_bump()
        && meta.next_producer_id != NO_PRODUCER_ID
    {
        ProducerIdAndEpoch {
            producer_id: meta.next_producer_id,
            epoch: 0,
        }
    } else {
        ProducerIdAndEpoch {
            producer_id: meta.producer_id,
            epoch: meta.producer_epoch,
        }
    }
}

fn markers_of(meta: &TxnMetadata, coordinator_epoch: i32) -> Markers {
    Markers {
        transactional_id: meta.transactional_id.clone(),
        producer_id: meta.producer_id,
        producer_epoch: meta.producer_epoch,
        commit: meta.state == TxnState::PrepareCommit,
        coordinator_epoch,
        partitions: meta.partitions.iter().cloned().collect(),
    }
}

/// What an EndTxn leads to, before any producer id is allocated.
#[derive(Debug, PartialEq, Eq)]
enum EndTxnOutcome {
    /// Write PrepareCommit/PrepareAbort.
    Prepare,
    /// A retry of a finished commit/abort whose answer was lost: the same answer again.
    Answer(ProducerIdAndEpoch),
}

/// Kafka's `endTransaction` checks, in its order: producer id, pending transition (before the
/// epoch, KAFKA-18464, so a client starting its next transaction does not fence itself while
/// the last one completes), then epoch and state. With version 2 the epoch moved on at the
/// prepare, so a retry carries the epoch before it (or, after an overflow, the old producer
/// id at Short.MaxValue - 1).
fn decide_end_txn(
    meta: &TxnMetadata,
    pending: bool,
    req: &EndTxnRequest,
) -> Result<EndTxnOutcome, TxnError> {
    // The request's version picks the rules, as Kafka's `endTransaction` picks between its
    // TV1 and TV2 paths: a version-1 client's transaction aborted by the coordinator under
    // version 2 (a timeout) is still fenced for it.
    let v2 = req.client_version.supports_epoch_bump();
    let retry_on_overflow = v2
        && meta.previous_producer_id == req.producer_id
        && req.producer_epoch == i16::MAX - 1
        && meta.producer_epoch == 0;
    let retry_on_epoch_bump =
        v2 && i32::from(meta.producer_epoch) == i32::from(req.producer_epoch) + 1;
    if meta.producer_id != req.producer_id && !retry_on_overflow {
        return Err(TxnError::InvalidProducerIdMapping);
    }
    if pending {
        return Err(TxnError::ConcurrentTransactions);
    }
    let current = req.producer_epoch == meta.producer_epoch;
    let retry = retry_on_epoch_bump || retry_on_overflow;
    // The epoch a request for a prepared or completed transaction carries.
    let settled_epoch = if v2 { retry } else { current };
    let same = match meta.state {
        TxnState::PrepareCommit | TxnState::CompleteCommit => req.commit,
        TxnState::PrepareAbort | TxnState::CompleteAbort => !req.commit,
        _ => false,
    };
    let answer = ProducerIdAndEpoch {
        producer_id: meta.producer_id,
        epoch: meta.producer_epoch,
    };
    use TxnState::*;
    match meta.state {
        Ongoing if current => Ok(EndTxnOutcome::Prepare),
        // Version 2 clients add partitions through the partition leaders, so they may abort
        // a transaction the coordinator never saw start: that abort still bumps the epoch
        // (KAFKA-14563's table: abort at the current epoch bumps; a retry answers as before).
        Empty | CompleteCommit | CompleteAbort
            if req.client_version.supports_epoch_bump() && (current || retry) =>
        {
            if current && !req.commit {
                Ok(EndTxnOutcome::Prepare)
            } else if retry && same {
                Ok(EndTxnOutcome::Answer(answer))
            } else if retry && meta.state == Empty && !req.commit {
                Err(TxnError::ProducerFenced)
            } else {
                Err(TxnError::InvalidTxnState)
            }
        }
        PrepareCommit | PrepareAbort if settled_epoch => Err(if same {
            TxnError::ConcurrentTransactions
        } else {
            TxnError::InvalidTxnState
        }),
        CompleteCommit | CompleteAbort if settled_epoch => {
            if same {
                Ok(EndTxnOutcome::Answer(answer))
            } else {
                Err(TxnError::InvalidTxnState)
            }
        }
        Empty if current => Err(TxnError::InvalidTxnState),
        Dead | PrepareEpochFence => Err(TxnError::UnknownServerError),
        _ => Err(TxnError::ProducerFenced),
    }
}

impl TxnCoordinator {
    pub(crate) fn new(coordinator_epoch: i32, config: TxnConfig) -> Self {
        let value_version = config.transaction_version.log_value_version();
        Self {
            coordinator_epoch,
            config,
            txns: BTreeMap::new(),
            appender: Appender {
                next: 0,
                in_flight: HashMap::new(),
                value_version,
            },
        }
    }

    /// Rebuilds the partition from its records, oldest first (last value per id wins, a
    /// tombstone deletes). Transactions found in PrepareCommit/PrepareAbort were decided but
    /// maybe not marked: the effects write their markers again and complete them, as Kafka's
    /// `loadTransactionsForTxnTopicPartition` does.
    pub(crate) fn load(
        coordinator_epoch: i32,
        config: TxnConfig,
        records: impl IntoIterator<Item = TxnLogRecord>,
        now_ms: i64,
    ) -> (Self, Vec<Effect>) {
        let mut c = Self::new(coordinator_epoch, config);
        for r in records {
            match r.value {
                // Kafka never writes Dead (an expiring id is written as a tombstone); one
                // found anyway names no usable state, so it deletes like a tombstone.
                None => {
                    c.txns.remove(&r.transactional_id);
                }
                Some(v) if v.state == TxnState::Dead => {
                    c.txns.remove(&r.transactional_id);
                }
                Some(v) => {
                    let meta = TxnMetadata::from_log_value(&r.transactional_id, &v);
                    c.txns.insert(
                        r.transactional_id,
                        Entry {
                            meta,
                            pending: None,
                            has_failed_epoch_fence: false,
                        },
                    );
                }
            }
        }
        let mut effects = Vec::new();
        for entry in c.txns.values_mut() {
            if matches!(
                entry.meta.state,
                TxnState::PrepareCommit | TxnState::PrepareAbort
            ) {
                effects.extend(Self::begin_completion(
                    &mut c.appender,
                    c.coordinator_epoch,
                    entry,
                    now_ms,
                ));
            }
        }
        (c, effects)
    }

    /// The durable metadata of an id (not a pending transition).
    pub(crate) fn metadata(&self, transactional_id: &str) -> Option<&TxnMetadata> {
        self.txns.get(transactional_id).map(|e| &e.meta)
    }

    #[cfg(test)]
    pub(crate) fn is_pending(&self, transactional_id: &str) -> bool {
        self.txns
            .get(transactional_id)
            .is_some_and(|e| e.pending.is_some())
    }

    /// InitProducerId with a transactional id (`handleInitProducerId`). Without one the glue
    /// just hands out a producer id at epoch 0: no coordinator state is involved.
    pub(crate) fn init_producer_id(
        &mut self,
        token: Token,
        req: InitProducerIdRequest,
        ids: &mut dyn ProducerIds,
        now_ms: i64,
    ) -> Step<Result<ProducerIdAndEpoch, TxnError>> {
        // The key stores the id as an int16-length string: a longer one could not be stored.
        if req.transactional_id.is_empty() || req.transactional_id.len() > i16::MAX as usize {
            return Step::now(Err(TxnError::InvalidRequest));
        }
        let timeout = req.transaction_timeout_ms;
        if timeout <= 0 || timeout > self.config.max_timeout_ms {
            return Step::now(Err(TxnError::InvalidTransactionTimeout));
        }
        if !self.txns.contains_key(&req.transactional_id) {
            // Kafka caches the new id before its first record is durable.
            let producer_id = match ids.next_producer_id() {
                Ok(id) => id,
                Err(e) => return Step::now(Err(e)),
            };
            let meta = TxnMetadata::new(&req.transactional_id, producer_id, timeout, now_ms);
            self.txns.insert(
                req.transactional_id.clone(),
                Entry {
                    meta,
                    pending: None,
                    has_failed_epoch_fence: false,
                },
            );
        }
        let Some(entry) = self.txns.get_mut(&req.transactional_id) else {
            return Step::now(Err(TxnError::UnknownServerError));
        };
        if entry.pending.is_some() {
            return Step::now(Err(TxnError::ConcurrentTransactions));
        }
        let meta = &entry.meta;
        if let Some(expected) = req.expected {
            // KIP-360: fence unless the metadata was just created (recovery from
            // UNKNOWN_PRODUCER_ID), the producer id is the current one (its epoch is checked
            // below), or it is the previous one at an exhausted epoch (a retry of a rotation).
            let valid = meta.producer_epoch == NO_PRODUCER_EPOCH
                || expected.producer_id == meta.producer_id
                || (expected.producer_id == meta.previous_producer_id
                    && is_epoch_exhausted(expected.epoch));
            if !valid {
                return Step::now(Err(TxnError::ProducerFenced));
            }
        }
        match meta.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                Step::now(Err(TxnError::ConcurrentTransactions))
            }
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                let target = if meta.is_producer_epoch_exhausted()
                    && req.expected.is_none_or(|e| e.epoch == meta.producer_epoch)
                {
                    // Rotation: a new producer id at epoch 0.
                    let producer_id = match ids.next_producer_id() {
                        Ok(id) => id,
                        Err(e) => return Step::now(Err(e)),
                    };
                    let last = if req.expected.is_some() {
                        meta.producer_epoch
                    } else {
                        NO_PRODUCER_EPOCH
                    };
                    init_target(meta, producer_id, 0, last, timeout, now_ms)
                } else {
                    let (epoch, last) = match req.expected.map(|e| e.epoch) {
                        // A new producer: bump and forget the last epoch.
                        None => (meta.producer_epoch + 1, NO_PRODUCER_EPOCH),
                        // The same producer recovering (or the id is brand new): bump.
                        Some(e)
                            if meta.producer_epoch == NO_PRODUCER_EPOCH
                                || e == meta.producer_epoch =>
                        {
                            (meta.producer_epoch + 1, meta.producer_epoch)
                        }
                        // A retry of a bump whose answer was lost: the same answer again.
                        Some(e) if e == meta.last_producer_epoch => {
                            (meta.producer_epoch, meta.last_producer_epoch)
                        }
                        Some(_) => return Step::now(Err(TxnError::ProducerFenced)),
                    };
                    init_target(meta, meta.producer_id, epoch, last, timeout, now_ms)
                };
                let append = self.appender.start(entry, target, Then::Init(token));
                Step::later(vec![append])
            }
            TxnState::Ongoing => {
                // Abort the running transaction with a bumped epoch first; the client gets
                // CONCURRENT_TRANSACTIONS and retries, bumping the epoch once more.
                let version = self.config.transaction_version;
                let waiter = Waiter::FencingInit(token);
                match Self::fence_and_abort(&mut self.appender, version, entry, ids, waiter, now_ms)
                {
                    Ok(append) => Step::later(vec![append]),
                    Err(e) => Step::now(Err(e)),
                }
            }
            TxnState::Dead | TxnState::PrepareEpochFence => {
                // Never a durable state of a cached id (Kafka treats it as fatal).
                Step::now(Err(TxnError::UnknownServerError))
            }
        }
    }

    /// AddPartitionsToTxn (`handleAddPartitionsToTransaction`).
    pub(crate) fn add_partitions(
        &mut self,
        token: Token,
        req: AddPartitionsRequest,
        now_ms: i64,
    ) -> Step<Result<(), TxnError>> {
        if req.transactional_id.is_empty() {
            return Step::now(Err(TxnError::InvalidRequest));
        }
        let Some(entry) = self.txns.get_mut(&req.transactional_id) else {
            return Step::now(Err(TxnError::InvalidProducerIdMapping));
        };
        // Pending first (KAFKA-18660): with transaction version 2 the client may start its
        // next transaction, under the producer id EndTxn answered, while the last one is
        // still completing under the old id; it must retry, not be told the id is wrong.
        if entry.pending.is_some() {
            return Step::now(Err(TxnError::ConcurrentTransactions));
        }
        let meta = &entry.meta;
        if meta.producer_id != req.producer_id {
            return Step::now(Err(TxnError::InvalidProducerIdMapping));
        }
        if meta.producer_epoch != req.producer_epoch {
            return Step::now(Err(TxnError::ProducerFenced));
        }
        if matches!(meta.state, TxnState::PrepareCommit | TxnState::PrepareAbort) {
            return Step::now(Err(TxnError::ConcurrentTransactions));
        }
        if meta.state == TxnState::Ongoing
            && req.partitions.iter().all(|p| meta.partitions.contains(p))
        {
            // Already recorded: nothing to write.
            return Step::now(Ok(()));
        }
        let mut target = transit(meta, TxnState::Ongoing, now_ms);
        if matches!(
            meta.state,
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
        ) {
            // The first partition starts the transaction (and its timeout).
            target.txn_start_timestamp_ms = now_ms;
        }
        target.partitions.extend(req.partitions);
        target.client_transaction_version = req.client_version;
        let append = self
            .appender
            .start(entry, target, Then::AddPartitions(token));
        Step::later(vec![append])
    }

    /// AddOffsetsToTxn: Kafka adds the group's `__consumer_offsets` partition like any other.
    pub(crate) fn add_offsets(
        &mut self,
        token: Token,
        req: AddOffsetsRequest,
        now_ms: i64,
    ) -> Step<Result<(), TxnError>> {
        let add = AddPartitionsRequest {
            transactional_id: req.transactional_id,
            producer_id: req.producer_id,
            producer_epoch: req.producer_epoch,
            partitions: vec![TopicPartition::new(
                crate::groups::OFFSETS_TOPIC,
                req.offsets_partition,
            )],
            // Only clients of transaction version 0/1 send AddOffsetsToTxn (Kafka's
            // `handleAddOffsetsToTxnRequest`).
            client_version: TransactionVersion::V0,
        };
        self.add_partitions(token, add, now_ms)
    }

    /// Verify-only AddPartitionsToTxn (v4+, sent by partition leaders before a transactional
    /// produce, KIP-890 part 1): per partition, NONE if it is in the transaction, else
    /// TRANSACTION_ABORTABLE; a request-level error applies to every partition. Pending
    /// transitions are not checked (`handleVerifyPartitionsInTransaction`).
    pub(crate) fn verify_partitions(
        &self,
        req: &AddPartitionsRequest,
    ) -> BTreeMap<TopicPartition, Result<(), TxnError>> {
        let all = |e: TxnError| req.partitions.iter().map(|p| (p.clone(), Err(e))).collect();
        if req.transactional_id.is_empty() {
            return all(TxnError::InvalidRequest);
        }
        let Some(entry) = self.txns.get(&req.transactional_id) else {
            return all(TxnError::InvalidProducerIdMapping);
        };
        let meta = &entry.meta;
        if meta.producer_id != req.producer_id {
            return all(TxnError::InvalidProducerIdMapping);
        }
        if meta.producer_epoch != req.producer_epoch {
            return all(TxnError::ProducerFenced);
        }
        if matches!(meta.state, TxnState::PrepareCommit | TxnState::PrepareAbort) {
            return all(TxnError::ConcurrentTransactions);
        }
        req.partitions
            .iter()
            .map(|p| {
                let verdict = if meta.partitions.contains(p) {
                    Ok(())
                } else {
                    Err(TxnError::TransactionAbortable)
                };
                (p.clone(), verdict)
            })
            .collect()
    }

    /// EndTxn (`handleEndTransaction`): Ongoing goes to PrepareCommit/PrepareAbort; once that
    /// is durable the client is answered and the markers are written; once they are, the
    /// transaction completes. Retries of a finished commit/abort succeed.
    pub(crate) fn end_txn(
        &mut self,
        token: Token,
        req: EndTxnRequest,
        ids: &mut dyn ProducerIds,
        now_ms: i64,
    ) -> Step<Result<ProducerIdAndEpoch, TxnError>> {
        if req.transactional_id.is_empty() {
            return Step::now(Err(TxnError::InvalidRequest));
        }
        let Some(entry) = self.txns.get_mut(&req.transactional_id) else {
            return Step::now(Err(TxnError::InvalidProducerIdMapping));
        };
        let meta = &entry.meta;
        match decide_end_txn(meta, entry.pending.is_some(), &req) {
            Err(e) => Step::now(Err(e)),
            Ok(EndTxnOutcome::Answer(ids)) => Step::now(Ok(ids)),
            Ok(EndTxnOutcome::Prepare) => {
                let next_producer_id = if req.client_version.supports_epoch_bump()
                    && meta.is_producer_epoch_exhausted()
                {
                    match ids.next_producer_id() {
                        Ok(id) => id,
                        Err(e) => return Step::now(Err(e)),
                    }
                } else {
                    NO_PRODUCER_ID
                };
                let mut target = prepare_target(
                    meta,
                    req.commit,
                    req.client_version,
                    next_producer_id,
                    now_ms,
                );
                if meta.state != TxnState::Ongoing {
                    // An abort without partitions (version 2) starts and ends now.
                    target.txn_start_timestamp_ms = now_ms;
                }
                let then = Then::Prepare {
                    waiter: Waiter::EndTxn(token),
                    fence: false,
                };
                let append = self.appender.start(entry, target, then);
                Step::later(vec![append])
            }
        }
    }

    /// Kafka's `prepareFenceProducerEpoch` followed by a coordinator-initiated abort (an
    /// InitProducerId over an Ongoing transaction, the timeout sweep). The bumped epoch is in
    /// memory at once, so the fenced producer's requests fail from now on even if the write
    /// fails (it is never handed to a client in that case).
    fn fence_and_abort(
        appender: &mut Appender,
        version: TransactionVersion,
        entry: &mut Entry,
        ids: &mut dyn ProducerIds,
        waiter: Waiter,
        now_ms: i64,
    ) -> Result<Effect, TxnError> {
        // With transaction version 2 an exhausted epoch moves on to a new producer id when
        // the abort completes, as a client's own commit or abort would (KAFKA-20090).
        let next_producer_id =
            if version.supports_epoch_bump() && entry.meta.is_producer_epoch_exhausted() {
                ids.next_producer_id()?
            } else {
                NO_PRODUCER_ID
            };
        if !entry.has_failed_epoch_fence && entry.meta.producer_epoch < i16::MAX {
            entry.meta.producer_epoch += 1;
        }
        entry.meta.last_producer_epoch = NO_PRODUCER_EPOCH;
        // The fence's bump is this abort's bump: version 2 does not bump a second time
        // (KAFKA-19367; twice would overflow at Short.MaxValue - 1).
        let mut target = transit(&entry.meta, TxnState::PrepareAbort, now_ms);
        target.next_producer_id = next_producer_id;
        target.client_transaction_version = version;
        let then = Then::Prepare {
            waiter,
            fence: true,
        };
        Ok(appender.start(entry, target, then))
    }

    /// After a prepare is durable (or found on load): markers, or straight to the complete
    /// record when the transaction has no partitions.
    fn begin_completion(
        appender: &mut Appender,
        coordinator_epoch: i32,
        entry: &mut Entry,
        now_ms: i64,
    ) -> Vec<Effect> {
        entry.has_failed_epoch_fence = false;
        let target = complete_target(&entry.meta, now_ms);
        if entry.meta.partitions.is_empty() {
            return vec![appender.start(entry, target, Then::Complete)];
        }
        entry.pending = Some(Pending {
            target,
            append: None,
            then: Then::Complete,
        });
        vec![Effect::WriteMarkers(markers_of(
            &entry.meta,
            coordinator_epoch,
        ))]
    }

    /// The outcome of an [`Effect::Append`]. Reports of appends this coordinator no longer
    /// waits for are ignored.
    pub(crate) fn append_completed(
        &mut self,
        id: AppendId,
        result: Result<(), AppendError>,
        now_ms: i64,
    ) -> Vec<Effect> {
        let Some(txn_id) = self.appender.in_flight.remove(&id) else {
            return Vec::new();
        };
        let Some(entry) = self.txns.get_mut(&txn_id) else {
            return Vec::new();
        };
        if entry.pending.as_ref().and_then(|p| p.append) != Some(id) {
            return Vec::new();
        }
        let Some(pending) = entry.pending.take() else {
            return Vec::new();
        };
        let reply = |token: Token, reply: Reply| vec![Effect::Reply { token, reply }];
        match (pending.then, result) {
            (Then::Init(token), Ok(())) => {
                entry.meta = pending.target;
                let ids = ProducerIdAndEpoch {
                    producer_id: entry.meta.producer_id,
                    epoch: entry.meta.producer_epoch,
                };
                reply(token, Reply::InitProducerId(Ok(ids)))
            }
            (Then::Init(token), Err(e)) => {
                reply(token, Reply::InitProducerId(Err(e.as_txn_error())))
            }
            (Then::AddPartitions(token), Ok(())) => {
                entry.meta = pending.target;
                reply(token, Reply::AddPartitions(Ok(())))
            }
            (Then::AddPartitions(token), Err(e)) => {
                reply(token, Reply::AddPartitions(Err(e.as_txn_error())))
            }
            (Then::Prepare { waiter, .. }, Ok(())) => {
                entry.meta = pending.target;
                let mut effects = match waiter {
                    Waiter::EndTxn(token) => {
                        reply(token, Reply::EndTxn(Ok(end_txn_reply(&entry.meta))))
                    }
                    Waiter::FencingInit(token) => reply(
                        token,
                        Reply::InitProducerId(Err(TxnError::ConcurrentTransactions)),
                    ),
                    Waiter::Nobody => Vec::new(),
                };
                effects.extend(Self::begin_completion(
                    &mut self.appender,
                    self.coordinator_epoch,
                    entry,
                    now_ms,
                ));
                effects
            }
            (Then::Prepare { waiter, fence }, Err(e)) => {
                if fence {
                    entry.has_failed_epoch_fence = true;
                }
                match waiter {
                    Waiter::EndTxn(token) => reply(token, Reply::EndTxn(Err(e.as_txn_error()))),
                    Waiter::FencingInit(token) => {
                        reply(token, Reply::InitProducerId(Err(e.as_txn_error())))
                    }
                    Waiter::Nobody => Vec::new(),
                }
            }
            (Then::Complete, Ok(())) => {
                entry.meta = pending.target;
                Vec::new()
            }
            (Then::Complete, Err(AppendError::NotCoordinator)) => {
                // The partition is moving: its next owner finds the prepare and completes it.
                Vec::new()
            }
            (then @ Then::Complete, Err(_)) => {
                // The decision is durable and the markers are written: only the record that
                // says so is missing, so keep trying (Kafka retries this append too).
                vec![self.appender.start(entry, pending.target, then)]
            }
            (Then::Expire, Ok(())) => {
                self.txns.remove(&txn_id);
                Vec::new()
            }
            (Then::Expire, Err(_)) => Vec::new(),
        }
    }

    /// Every marker of the transaction's [`Effect::WriteMarkers`] is written: append the
    /// complete record.
    pub(crate) fn markers_written(&mut self, transactional_id: &str) -> Vec<Effect> {
        let Some(entry) = self.txns.get_mut(transactional_id) else {
            return Vec::new();
        };
        match entry.pending.as_mut() {
            Some(pending) if matches!(pending.then, Then::Complete) && pending.append.is_none() => {
                vec![self.appender.append(pending)]
            }
            _ => Vec::new(),
        }
    }

    /// The timeout sweep (Kafka's `abortTimedOutTransactions`, every
    /// transaction.abort.timed.out.transaction.cleanup.interval.ms): every Ongoing transaction
    /// started more than its timeout ago is aborted with a bumped epoch, fencing its producer.
    /// One that needs a producer id while none is available waits for the next sweep.
    pub(crate) fn abort_timed_out(
        &mut self,
        ids: &mut dyn ProducerIds,
        now_ms: i64,
    ) -> Vec<Effect> {
        let version = self.config.transaction_version;
        let mut effects = Vec::new();
        for entry in self.txns.values_mut() {
            let meta = &entry.meta;
            let expired = entry.pending.is_none()
                && meta.state == TxnState::Ongoing
                && meta.txn_start_timestamp_ms + i64::from(meta.timeout_ms) < now_ms;
            if expired {
                let appender = &mut self.appender;
                if let Ok(append) =
                    Self::fence_and_abort(appender, version, entry, ids, Waiter::Nobody, now_ms)
                {
                    effects.push(append);
                }
            }
        }
        effects
    }

    /// transactional.id.expiration.ms (Kafka's `removeExpiredTransactionalIds`): ids without a
    /// running transaction, unchanged for that long, get a tombstone and are forgotten once it
    /// is durable.
    pub(crate) fn expire_transactional_ids(&mut self, now_ms: i64) -> Vec<Effect> {
        let cutoff = now_ms - self.config.transactional_id_expiration_ms;
        let mut effects = Vec::new();
        for entry in self.txns.values_mut() {
            let meta = &entry.meta;
            let expired = entry.pending.is_none()
                && matches!(
                    meta.state,
                    TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
                )
                && meta.txn_last_update_timestamp_ms <= cutoff;
            if expired {
                let mut target = meta.clone();
                target.state = TxnState::Dead;
                target.partitions.clear();
                effects.push(self.appender.start(entry, target, Then::Expire));
            }
        }
        effects
    }

    /// DescribeTransactions for one id (`handleDescribeTransactions`).
    pub(crate) fn describe(&self, transactional_id: &str) -> Result<TxnDescription, TxnError> {
        if transactional_id.is_empty() {
            return Err(TxnError::InvalidRequest);
        }
        let meta = &self
            .txns
            .get(transactional_id)
            .ok_or(TxnError::TransactionalIdNotFound)?
            .meta;
        Ok(TxnDescription {
            transactional_id: meta.transactional_id.clone(),
            state: meta.state,
            producer_id: meta.producer_id,
            producer_epoch: meta.producer_epoch,
            timeout_ms: meta.timeout_ms,
            start_timestamp_ms: meta.txn_start_timestamp_ms,
            topics: meta.topics(),
        })
    }

    /// ListTransactions over this partition (`listTransactionStates`).
    pub(crate) fn list(&self, filter: &ListFilter, now_ms: i64) -> TxnList {
        let mut states = Vec::new();
        let mut unknown_state_filters = Vec::new();
        for name in &filter.states {
            match TxnState::from_name(name) {
                Some(s) => states.push(s),
                None => unknown_state_filters.push(name.clone()),
            }
        }
        let transactions = self
            .txns
            .values()
            .map(|e| &e.meta)
            .filter(|m| m.state != TxnState::Dead)
            .filter(|m| {
                filter.producer_ids.is_empty() || filter.producer_ids.contains(&m.producer_id)
            })
            // A filter naming only unknown states matches nothing, as in Kafka.
            .filter(|m| filter.states.is_empty() || states.contains(&m.state))
            .filter(|m| {
                filter.duration_ms < 0 || now_ms - m.txn_start_timestamp_ms > filter.duration_ms
            })
            .map(|m| TxnListing {
                transactional_id: m.transactional_id.clone(),
                producer_id: m.producer_id,
                state: m.state,
            })
            .collect();
        TxnList {
            transactions,
            unknown_state_filters,
        }
    }

    /// The partition moved away: every request still waiting is answered NOT_COORDINATOR,
    /// and the client finds the new coordinator.
    pub(crate) fn unload(self) -> Vec<Effect> {
        let mut effects = Vec::new();
        for entry in self.txns.into_values() {
            let Some(pending) = entry.pending else {
                continue;
            };
            let err = TxnError::NotCoordinator;
            let (token, reply) = match pending.then {
                Then::Init(t) => (t, Reply::InitProducerId(Err(err))),
                Then::AddPartitions(t) => (t, Reply::AddPartitions(Err(err))),
                Then::Prepare {
                    waiter: Waiter::EndTxn(t),
                    ..
                } => (t, Reply::EndTxn(Err(err))),
                Then::Prepare {
                    waiter: Waiter::FencingInit(t),
                    ..
                } => (t, Reply::InitProducerId(Err(err))),
                _ => continue,
            };
            effects.push(Effect::Reply { token, reply });
        }
        effects
    }
}
