//! The transaction coordinator's I/O: the `__transaction_state` topic, loading the
//! partitions this node owns (and dropping those it loses), the requests' entry points, the
//! log appends, the markers, and the timeout and expiration sweeps. Decisions are the pure
//! core's (`coordinator`); this module only performs its effects and reports back.

use super::coordinator::{
    self as core, AddOffsetsRequest, AddPartitionsRequest, AppendError, Effect, EndTxnRequest,
    InitProducerIdRequest, ListFilter, Markers, ProducerIdAndEpoch, Reply, Token, TxnConfig,
    TxnCoordinator, TxnDescription, TxnError, TxnList,
};
use super::metadata::TopicPartition;
use crate::Broker;
use crate::groups::OFFSETS_TOPIC;
use crate::partitions::Owned;
use kafka_protocol::error::ResponseError;
use parking_lot::{Mutex, RwLock};
use shale_protocol::control::EndTxnMarker;
use shale_stream::StreamError;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;

pub(crate) const TXN_TOPIC: &str = "__transaction_state";

/// Back-off between attempts to write a marker to a partition that refused it.
const MARKER_RETRY: Duration = Duration::from_millis(100);
const MARKER_RETRY_MAX: Duration = Duration::from_secs(2);

/// One loaded `__transaction_state` partition.
struct Partition {
    /// The partition's stream handle: its epoch is the coordinator epoch, and a fenced
    /// handle means the partition must be loaded again.
    owned: Arc<Owned>,
    state: Mutex<State>,
}

struct State {
    core: TxnCoordinator,
    /// Requests whose reply waits for an append.
    waiters: HashMap<Token, oneshot::Sender<Reply>>,
}

/// The coordinators of every `__transaction_state` partition this node owns.
#[derive(Default)]
pub(crate) struct TxnCoordinators {
    loaded: RwLock<HashMap<i32, Arc<Partition>>>,
    loading: Mutex<HashSet<i32>>,
    partition_count: AtomicI32,
    next_token: AtomicU64,
    /// Test seam: markers wait while set, so a test can stop the node between a durable
    /// PrepareCommit/PrepareAbort and its markers (the window a crash recovery must cover).
    hold_markers: std::sync::atomic::AtomicBool,
    /// The broker's serving flag, set when the broker starts.
    pub(crate) serving: std::sync::OnceLock<Arc<std::sync::atomic::AtomicBool>>,
}

impl crate::Broker {
    /// Holds (or releases) every transaction marker write of this node: a test seam for
    /// crash recovery between a transaction's prepare record and its markers.
    #[doc(hidden)]
    pub fn hold_transaction_markers(&self, hold: bool) {
        self.txn.hold_markers.store(hold, Ordering::Release);
    }
}

impl TxnCoordinators {
    /// The `__transaction_state` partition of a transactional id.
    pub(crate) fn partition_of(&self, transactional_id: &str) -> i32 {
        crate::groups::partition_for(
            transactional_id,
            self.partition_count.load(Ordering::Relaxed),
        )
    }

    fn get(&self, transactional_id: &str) -> Result<Arc<Partition>, TxnError> {
        // Not while the broker's session is in doubt or fenced (see GroupCoordinator's
        // `serving`): another node may be taking the partition over.
        if self
            .serving
            .get()
            .is_some_and(|s| !s.load(Ordering::Acquire))
        {
            return Err(TxnError::NotCoordinator);
        }
        let p = self.partition_of(transactional_id);
        if let Some(part) = self.loaded.read().get(&p) {
            return Ok(part.clone());
        }
        if self.loading.lock().contains(&p) {
            Err(TxnError::CoordinatorLoadInProgress)
        } else {
            Err(TxnError::NotCoordinator)
        }
    }

    fn token(&self) -> Token {
        Token(self.next_token.fetch_add(1, Ordering::Relaxed))
    }
}

fn config(broker: &Broker) -> TxnConfig {
    TxnConfig {
        max_timeout_ms: broker.config.transaction_max_timeout_ms,
        transactional_id_expiration_ms: broker.config.transactional_id_expiration_ms,
        transaction_version: super::TRANSACTION_VERSION,
    }
}

/// A producer-id source for the core: ids from this node's leased block. The caller has
/// made sure one is there (`ensure`); when it ran out meanwhile, the client retries.
fn ids(broker: &Broker) -> impl FnMut() -> Result<i64, TxnError> + '_ {
    || {
        broker
            .producer_ids
            .try_next()
            .ok_or(TxnError::CoordinatorLoadInProgress)
    }
}

async fn ensure_ids(broker: &Broker) {
    if let Err(e) = broker.producer_ids.ensure(&broker.meta).await {
        tracing::warn!(error = %e, "cannot lease producer ids");
    }
}

/// Runs one step of a partition's core and waits for its reply.
async fn call<R>(
    broker: &Arc<Broker>,
    part: &Arc<Partition>,
    step: impl FnOnce(&mut TxnCoordinator, Token) -> core::Step<R>,
    from_reply: impl FnOnce(Reply) -> Option<R>,
) -> Result<R, TxnError> {
    let token = broker.txn.token();
    let (tx, rx) = oneshot::channel();
    let (immediate, effects) = {
        let mut st = part.state.lock();
        let s = step(&mut st.core, token);
        if s.reply.is_none() {
            st.waiters.insert(token, tx);
        }
        (s.reply, s.effects)
    };
    run_effects(broker, part, effects);
    match immediate {
        Some(r) => Ok(r),
        None => match rx.await {
            Ok(reply) => from_reply(reply).ok_or(TxnError::UnknownServerError),
            // The partition was unloaded while waiting.
            Err(_) => Err(TxnError::NotCoordinator),
        },
    }
}

// ---- requests ----

pub(crate) async fn init_producer_id(
    broker: &Arc<Broker>,
    transactional_id: String,
    transaction_timeout_ms: i32,
    expected: Option<ProducerIdAndEpoch>,
) -> Result<ProducerIdAndEpoch, TxnError> {
    let part = broker.txn.get(&transactional_id)?;
    ensure_ids(broker).await;
    let now = crate::now_ms();
    let req = InitProducerIdRequest {
        transactional_id,
        transaction_timeout_ms,
        expected,
    };
    call(
        broker,
        &part,
        |c, token| c.init_producer_id(token, req, &mut ids(broker), now),
        |r| match r {
            Reply::InitProducerId(r) => Some(r),
            _ => None,
        },
    )
    .await?
}

pub(crate) async fn add_partitions(
    broker: &Arc<Broker>,
    req: AddPartitionsRequest,
) -> Result<(), TxnError> {
    let part = broker.txn.get(&req.transactional_id)?;
    let now = crate::now_ms();
    call(
        broker,
        &part,
        |c, token| c.add_partitions(token, req, now),
        |r| match r {
            Reply::AddPartitions(r) => Some(r),
            _ => None,
        },
    )
    .await?
}

/// AddPartitionsToTxn's verify-only form (KIP-890): per partition, whether it is in the
/// transaction. No state changes.
pub(crate) fn verify_partitions(
    broker: &Broker,
    req: &AddPartitionsRequest,
) -> Result<BTreeMap<TopicPartition, Result<(), TxnError>>, TxnError> {
    let part = broker.txn.get(&req.transactional_id)?;
    Ok(part.state.lock().core.verify_partitions(req))
}

pub(crate) async fn add_offsets(
    broker: &Arc<Broker>,
    transactional_id: String,
    producer_id: i64,
    producer_epoch: i16,
    group_id: &str,
) -> Result<(), TxnError> {
    let part = broker.txn.get(&transactional_id)?;
    let now = crate::now_ms();
    let req = AddOffsetsRequest {
        transactional_id,
        producer_id,
        producer_epoch,
        offsets_partition: broker.groups.partition_of(group_id),
    };
    call(
        broker,
        &part,
        |c, token| c.add_offsets(token, req, now),
        |r| match r {
            Reply::AddPartitions(r) => Some(r),
            _ => None,
        },
    )
    .await?
}

pub(crate) async fn end_txn(
    broker: &Arc<Broker>,
    req: EndTxnRequest,
) -> Result<ProducerIdAndEpoch, TxnError> {
    let part = broker.txn.get(&req.transactional_id)?;
    ensure_ids(broker).await;
    let now = crate::now_ms();
    call(
        broker,
        &part,
        |c, token| c.end_txn(token, req, &mut ids(broker), now),
        |r| match r {
            Reply::EndTxn(r) => Some(r),
            _ => None,
        },
    )
    .await?
}

/// What the coordinator says of a producer's transaction and a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verified {
    /// The partition is in the producer's open transaction.
    InTransaction,
    NotInTransaction,
    /// The coordinator knows a newer epoch (or another producer id) for the id: a zombie.
    Fenced,
    /// The coordinator's partition is this node's but not loaded yet: retry.
    Loading,
    /// The coordinator is not on this node ([`verify_anywhere`] asks it over the network).
    Unknown,
    /// The coordinator on another node did not answer, or answered with an error that is
    /// not about this producer: retry.
    Unreachable,
}

/// KIP-890 part 1's check before a producer's first transactional batch in a partition
/// (and before a TxnOffsetCommit): the coordinator must have the partition in the
/// producer's open transaction, or a late batch could start a transaction nobody ends.
pub(crate) fn verify(
    broker: &Broker,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    tp: &TopicPartition,
) -> Verified {
    let part = match broker.txn.get(transactional_id) {
        Ok(part) => part,
        Err(TxnError::CoordinatorLoadInProgress) => return Verified::Loading,
        Err(_) => {
            // Owned here but not loaded (its open failed and is being retried): not an
            // answer either way, so the client retries rather than start a transaction
            // its coordinator may not know.
            let p = broker.txn.partition_of(transactional_id);
            let me = broker.config.node_id as u64;
            let here = broker.meta.read(|s| {
                s.topics
                    .get(TXN_TOPIC)
                    .and_then(|t| t.partitions.get(usize::try_from(p).ok()?))
                    .is_some_and(|part| part.owner == me)
            });
            return if here {
                Verified::Loading
            } else {
                Verified::Unknown
            };
        }
    };
    let st = part.state.lock();
    let Some(meta) = st.core.metadata(transactional_id) else {
        return Verified::NotInTransaction;
    };
    if meta.producer_id != producer_id || meta.producer_epoch > producer_epoch {
        Verified::Fenced
    } else if meta.producer_epoch == producer_epoch
        && meta.state == super::records::TxnState::Ongoing
        && meta.partitions.contains(tp)
    {
        Verified::InTransaction
    } else {
        Verified::NotInTransaction
    }
}

/// The node coordinating `transactional_id` when that is another node (its
/// `__transaction_state` partition's owner).
pub(crate) fn remote_coordinator(broker: &Broker, transactional_id: &str) -> Option<u64> {
    let tp = TopicPartition::new(TXN_TOPIC, broker.txn.partition_of(transactional_id));
    owner_of(broker, &tp).filter(|&o| o != broker.config.node_id as u64)
}

/// A partition owner's AddPartitionsToTxn (Produce v12's implicit add): to the coordinator
/// here, or over the network to the node that has it, as Kafka's AddPartitionsToTxnManager
/// sends it (v5, not verify-only).
pub(crate) async fn add_partitions_from_owner(
    broker: &Arc<Broker>,
    req: AddPartitionsRequest,
) -> Result<(), TxnError> {
    match remote_coordinator(broker, &req.transactional_id) {
        None => add_partitions(broker, req).await,
        Some(node) => {
            let codes = call_coordinator(broker, node, 5, false, &req).await?;
            match codes.into_iter().find(|&c| c != 0) {
                None => Ok(()),
                Some(c) => Err(TxnError::from_code(c)),
            }
        }
    }
}

/// KIP-890 part 1's check when the coordinator is on another node: AddPartitionsToTxn v4
/// with `verify_only`, as Kafka's partition leaders ask it.
async fn verify_remote(
    broker: &Arc<Broker>,
    node: u64,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    tp: &TopicPartition,
) -> Verified {
    let req = AddPartitionsRequest {
        transactional_id: transactional_id.to_owned(),
        producer_id,
        producer_epoch,
        partitions: vec![tp.clone()],
        client_version: super::metadata::TransactionVersion::V1,
    };
    let codes = match call_coordinator(broker, node, 4, true, &req).await {
        Ok(c) => c,
        Err(TxnError::CoordinatorLoadInProgress) => return Verified::Loading,
        Err(_) => return Verified::Unreachable,
    };
    match codes
        .first()
        .copied()
        .and_then(ResponseError::try_from_code)
    {
        None if !codes.is_empty() => Verified::InTransaction,
        None => Verified::Unreachable,
        Some(ResponseError::ProducerFenced | ResponseError::InvalidProducerEpoch) => {
            Verified::Fenced
        }
        Some(ResponseError::TransactionAbortable | ResponseError::InvalidTxnState) => {
            Verified::NotInTransaction
        }
        Some(ResponseError::CoordinatorLoadInProgress) => Verified::Loading,
        Some(_) => Verified::Unreachable,
    }
}

/// [`verify`] here, or at the coordinator's node when it is another one.
pub(crate) async fn verify_anywhere(
    broker: &Arc<Broker>,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    tp: &TopicPartition,
) -> Verified {
    match verify(broker, transactional_id, producer_id, producer_epoch, tp) {
        Verified::Unknown => match remote_coordinator(broker, transactional_id) {
            Some(node) => {
                verify_remote(
                    broker,
                    node,
                    transactional_id,
                    producer_id,
                    producer_epoch,
                    tp,
                )
                .await
            }
            None => Verified::Unreachable,
        },
        v => v,
    }
}

/// One transaction's AddPartitionsToTxn (v4+ form) to the coordinator on `node`: the
/// per-partition codes, or the error that kept it from answering.
async fn call_coordinator(
    broker: &Arc<Broker>,
    node: u64,
    version: i16,
    verify_only: bool,
    req: &AddPartitionsRequest,
) -> Result<Vec<i16>, TxnError> {
    use kafka_protocol::messages::add_partitions_to_txn_request::{
        AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
    };
    use kafka_protocol::messages::{
        AddPartitionsToTxnRequest, ApiKey, ProducerId, RequestKind, ResponseKind, TopicName,
        TransactionalId,
    };
    use kafka_protocol::protocol::StrBytes;
    let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in &req.partitions {
        topics.entry(&tp.topic).or_default().push(tp.partition);
    }
    let body = AddPartitionsToTxnRequest::default().with_transactions(vec![
        AddPartitionsToTxnTransaction::default()
            .with_transactional_id(TransactionalId(StrBytes::from_string(
                req.transactional_id.clone(),
            )))
            .with_producer_id(ProducerId(req.producer_id))
            .with_producer_epoch(req.producer_epoch)
            .with_verify_only(verify_only)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(t, parts)| {
                        AddPartitionsToTxnTopic::default()
                            .with_name(TopicName(StrBytes::from_string(t.to_owned())))
                            .with_partitions(parts)
                    })
                    .collect(),
            ),
    ]);
    let answer = broker
        .call_peer(
            node,
            ApiKey::AddPartitionsToTxn,
            version,
            RequestKind::AddPartitionsToTxn(body),
        )
        .await
        .map_err(|e| {
            tracing::debug!(error = %e, "transaction coordinator unreachable");
            TxnError::CoordinatorNotAvailable
        })?;
    let ResponseKind::AddPartitionsToTxn(r) = answer else {
        return Err(TxnError::CoordinatorNotAvailable);
    };
    if r.error_code != 0 {
        return Err(TxnError::from_code(r.error_code));
    }
    Ok(r.results_by_transaction
        .iter()
        .flat_map(|t| &t.topic_results)
        .flat_map(|t| &t.results_by_partition)
        .map(|p| p.partition_error_code)
        .collect())
}

pub(crate) fn describe(
    broker: &Broker,
    transactional_id: &str,
) -> Result<TxnDescription, TxnError> {
    broker
        .txn
        .get(transactional_id)?
        .state
        .lock()
        .core
        .describe(transactional_id)
}

/// ListTransactions over every partition this node coordinates.
pub(crate) fn list(broker: &Broker, filter: &ListFilter) -> Result<TxnList, TxnError> {
    if !broker.txn.loading.lock().is_empty() {
        return Err(TxnError::CoordinatorLoadInProgress);
    }
    let now = crate::now_ms();
    let mut out = TxnList::default();
    let parts: Vec<Arc<Partition>> = broker.txn.loaded.read().values().cloned().collect();
    for part in parts {
        let l = part.state.lock().core.list(filter, now);
        out.transactions.extend(l.transactions);
        out.unknown_state_filters = l.unknown_state_filters;
    }
    if out.unknown_state_filters.is_empty() {
        // The filter check does not depend on any partition: ask an empty core.
        out.unknown_state_filters = TxnCoordinator::new(0, config(broker))
            .list(filter, now)
            .unknown_state_filters;
    }
    Ok(out)
}

// ---- effects ----

fn append_error(e: &StreamError) -> AppendError {
    match e {
        StreamError::Fenced(_) | StreamError::ShuttingDown | StreamError::Catalog(_) => {
            AppendError::NotCoordinator
        }
        StreamError::ObjectStore(_) => AppendError::Unavailable,
        _ => AppendError::Other,
    }
}

/// Performs the effects of one step, in order: appends are handed to the stream at once (so
/// a partition's records keep the order the core produced them in); their durability, and
/// markers, are awaited in tasks that report back to the core.
fn run_effects(broker: &Arc<Broker>, part: &Arc<Partition>, effects: Vec<Effect>) {
    for effect in effects {
        match effect {
            Effect::Reply { token, reply } => {
                if let Some(tx) = part.state.lock().waiters.remove(&token) {
                    let _ = tx.send(reply);
                }
            }
            Effect::Append {
                id,
                key,
                value,
                record,
            } => {
                tracing::debug!(
                    ?id,
                    transactional_id = %record.transactional_id,
                    state = ?record.value.as_ref().map(|v| v.state),
                    "__transaction_state append"
                );
                let appended = append_record(part, key, value);
                let (broker, part) = (broker.clone(), part.clone());
                tokio::spawn(async move {
                    let result = match appended {
                        Ok(durable) => match durable.await {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(e)) => Err(append_error(&e)),
                            Err(_) => Err(AppendError::NotCoordinator),
                        },
                        Err(e) => Err(append_error(&e)),
                    };
                    if let Err(e) = &result {
                        tracing::warn!(error = ?e, "__transaction_state append failed");
                    } else {
                        tracing::debug!(?id, "__transaction_state append durable");
                    }
                    let more = part
                        .state
                        .lock()
                        .core
                        .append_completed(id, result, crate::now_ms());
                    run_effects(&broker, &part, more);
                });
            }
            Effect::WriteMarkers(markers) => {
                let (broker, part) = (broker.clone(), part.clone());
                tokio::spawn(async move {
                    let written = write_markers(&broker, &markers).await;
                    tracing::debug!(transactional_id = %markers.transactional_id, written, "markers done");
                    if written {
                        let more = part
                            .state
                            .lock()
                            .core
                            .markers_written(&markers.transactional_id);
                        run_effects(&broker, &part, more);
                    }
                });
            }
        }
    }
}

fn append_record(
    part: &Partition,
    key: bytes::Bytes,
    value: Option<bytes::Bytes>,
) -> Result<super::append::Durable, StreamError> {
    let now = crate::now_ms();
    let mut buf = crate::groups::records::encode_batch(&[(key, value)], now)
        .map_err(|e| StreamError::ObjectStore(format!("cannot encode a record: {e}")))?;
    let epoch = crate::handlers::metadata::leader_epoch(part.owned.stream.epoch());
    let handle = part.owned.stream.append(1, now, move |base| {
        shale_protocol::batch::patch_offsets(&mut buf, base as i64, epoch);
        buf.freeze()
    })?;
    Ok(handle.durable)
}

/// What writing one marker came to.
pub(crate) enum MarkerOutcome {
    Written,
    /// The partition has seen a newer epoch of the producer than the marker's: the
    /// transaction there was already ended (a retried marker), so nothing is left to write.
    Stale,
    /// The partition is gone (topic deleted): nothing to end there.
    Gone,
    /// A newer coordinator wrote to the partition: this one must stop.
    Fenced,
    /// Not written now; worth another try. The code is what WriteTxnMarkers answers.
    Retry(ResponseError, String),
}

/// Writes the markers of a transaction to every partition, retrying each until it is written
/// (Kafka's TransactionMarkerChannelManager). False when this coordinator was fenced and
/// must not complete the transaction.
async fn write_markers(broker: &Arc<Broker>, m: &Markers) -> bool {
    while broker.txn.hold_markers.load(Ordering::Acquire) {
        if broker.is_shutting_down() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let marker = EndTxnMarker {
        commit: m.commit,
        coordinator_epoch: m.coordinator_epoch,
    };
    let writes = m.partitions.iter().map(|tp| async move {
        let mut backoff = MARKER_RETRY;
        loop {
            match write_marker(broker, tp, m, marker).await {
                MarkerOutcome::Written | MarkerOutcome::Gone => return true,
                MarkerOutcome::Stale => {
                    tracing::info!(topic = %tp.topic, partition = tp.partition, producer = m.producer_id, epoch = m.producer_epoch, "marker older than the partition's producer epoch: skipped");
                    return true;
                }
                MarkerOutcome::Fenced => return false,
                MarkerOutcome::Retry(_, why) => {
                    if broker.is_shutting_down() {
                        return false;
                    }
                    tracing::debug!(topic = %tp.topic, partition = tp.partition, why, "marker write retried");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MARKER_RETRY_MAX);
                }
            }
        }
    });
    futures::future::join_all(writes)
        .await
        .into_iter()
        .all(|ok| ok)
}

/// The node owning `tp` now, `None` when the partition does not exist.
fn owner_of(broker: &Broker, tp: &TopicPartition) -> Option<u64> {
    broker.meta.read(|s| {
        s.topics
            .get(&tp.topic)?
            .partitions
            .get(usize::try_from(tp.partition).ok()?)
            .map(|p| p.owner)
    })
}

/// One marker: appended here when this node owns the partition, else sent to its owner
/// (WriteTxnMarkers), as Kafka's coordinator sends markers to each partition's leader.
async fn write_marker(
    broker: &Arc<Broker>,
    tp: &TopicPartition,
    m: &Markers,
    marker: EndTxnMarker,
) -> MarkerOutcome {
    match owner_of(broker, tp) {
        None => MarkerOutcome::Gone,
        Some(owner) if owner == broker.config.node_id as u64 => {
            write_local_marker(broker, tp, m.producer_id, m.producer_epoch, marker).await
        }
        Some(owner) => write_remote_marker(broker, owner, tp, m, marker).await,
    }
}

async fn write_remote_marker(
    broker: &Arc<Broker>,
    owner: u64,
    tp: &TopicPartition,
    m: &Markers,
    marker: EndTxnMarker,
) -> MarkerOutcome {
    use kafka_protocol::messages::write_txn_markers_request::{
        WritableTxnMarker, WritableTxnMarkerTopic,
    };
    use kafka_protocol::messages::{
        ApiKey, ProducerId, RequestKind, ResponseKind, TopicName, WriteTxnMarkersRequest,
    };
    let req = WriteTxnMarkersRequest::default().with_markers(vec![
        WritableTxnMarker::default()
            .with_producer_id(ProducerId(m.producer_id))
            .with_producer_epoch(m.producer_epoch)
            .with_transaction_result(marker.commit)
            .with_coordinator_epoch(marker.coordinator_epoch)
            .with_topics(vec![
                WritableTxnMarkerTopic::default()
                    .with_name(TopicName(kafka_protocol::protocol::StrBytes::from_string(
                        tp.topic.clone(),
                    )))
                    .with_partition_indexes(vec![tp.partition]),
            ]),
    ]);
    let answer = broker
        .call_peer(
            owner,
            ApiKey::WriteTxnMarkers,
            1,
            RequestKind::WriteTxnMarkers(req),
        )
        .await;
    let code = match answer {
        Ok(ResponseKind::WriteTxnMarkers(r)) => r
            .markers
            .iter()
            .flat_map(|m| &m.topics)
            .flat_map(|t| &t.partitions)
            .find(|p| p.partition_index == tp.partition)
            .map(|p| p.error_code),
        Ok(_) => None,
        Err(e) => {
            return MarkerOutcome::Retry(ResponseError::NotLeaderOrFollower, e.to_string());
        }
    };
    match code.map(ResponseError::try_from_code) {
        Some(None) => MarkerOutcome::Written,
        Some(Some(ResponseError::TransactionCoordinatorFenced)) => MarkerOutcome::Fenced,
        Some(Some(ResponseError::InvalidProducerEpoch)) => MarkerOutcome::Stale,
        Some(Some(e)) => MarkerOutcome::Retry(e, format!("node {owner} answered {e:?}")),
        None => MarkerOutcome::Retry(
            ResponseError::UnknownServerError,
            format!("node {owner} answered without the partition"),
        ),
    }
}

/// Appends a marker to a partition this node owns (`__consumer_offsets` ends the group's
/// pending offsets instead): the coordinator's own writes, and WriteTxnMarkers.
pub(crate) async fn write_local_marker(
    broker: &Arc<Broker>,
    tp: &TopicPartition,
    producer_id: i64,
    producer_epoch: i16,
    marker: EndTxnMarker,
) -> MarkerOutcome {
    if tp.topic == OFFSETS_TOPIC {
        return match broker
            .groups
            .end_txn(tp.partition, producer_id, producer_epoch, marker)
            .await
        {
            Ok(()) => MarkerOutcome::Written,
            Err(ResponseError::TransactionCoordinatorFenced) => MarkerOutcome::Fenced,
            Err(ResponseError::InvalidProducerEpoch) => MarkerOutcome::Stale,
            Err(e) => MarkerOutcome::Retry(e, format!("{e:?}")),
        };
    }
    let part = match broker.partition(&tp.topic, tp.partition).await {
        Ok(p) => p,
        Err(ResponseError::UnknownTopicOrPartition) => return MarkerOutcome::Gone,
        Err(e) => return MarkerOutcome::Retry(e, format!("{e:?}")),
    };
    let appended = super::append::append_marker(
        &part.owned,
        producer_id,
        producer_epoch,
        marker,
        crate::now_ms(),
    );
    match appended {
        Ok((_, durable)) => match durable.await {
            Ok(Ok(())) => MarkerOutcome::Written,
            Ok(Err(e)) => {
                MarkerOutcome::Retry(crate::partitions::stream_error_code(&e), e.to_string())
            }
            Err(_) => {
                MarkerOutcome::Retry(ResponseError::NotLeaderOrFollower, "append dropped".into())
            }
        },
        Err(super::append::AppendError::Producer(e)) => match e {
            super::producers::ProducerError::CoordinatorFenced(_) => MarkerOutcome::Fenced,
            _ => MarkerOutcome::Stale,
        },
        Err(e) => MarkerOutcome::Retry(ResponseError::NotLeaderOrFollower, e.to_string()),
    }
}

// ---- loading and ownership ----

/// Creates `__transaction_state` if missing, then keeps the loaded partitions in line with
/// ownership and runs the timeout and expiration sweeps.
pub(crate) async fn start(broker: &Arc<Broker>) -> anyhow::Result<()> {
    let partitions = broker.config.transaction_state_num_partitions.max(1);
    crate::internal_topics::ensure_compacted_topic(broker, TXN_TOPIC, partitions).await?;
    sync_ownership(broker).await;
    let sync =
        crate::internal_topics::follow_ownership(
            broker,
            |b| async move { sync_ownership(&b).await },
        );
    let sweeps = {
        let broker = broker.clone();
        tokio::spawn(async move {
            let mut stop = broker.shutdown_signal();
            let mut tick = tokio::time::interval(broker.config.transaction_timeout_check_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                sweep(&broker).await;
            }
        })
    };
    broker.tasks.lock().extend([sync, sweeps]);
    Ok(())
}

/// Aborts transactions past their timeout (fencing their producers) and forgets
/// transactional ids unused for `transactional.id.expiration.ms`.
pub(crate) async fn sweep(broker: &Arc<Broker>) {
    ensure_ids(broker).await;
    let now = crate::now_ms();
    let parts: Vec<Arc<Partition>> = broker.txn.loaded.read().values().cloned().collect();
    for part in parts {
        let effects = {
            let mut st = part.state.lock();
            let mut effects = st.core.abort_timed_out(&mut ids(broker), now);
            effects.extend(st.core.expire_transactional_ids(now));
            effects
        };
        run_effects(broker, &part, effects);
    }
}

async fn sync_ownership(broker: &Arc<Broker>) {
    let me = broker.config.node_id as u64;
    let Some((count, owned)) = broker.meta.read(|s| {
        s.topics.get(TXN_TOPIC).map(|t| {
            let owned: HashSet<i32> = t
                .partitions
                .iter()
                .enumerate()
                .filter(|(_, p)| p.owner == me)
                .map(|(i, _)| i as i32)
                .collect();
            (t.partitions.len() as i32, owned)
        })
    }) else {
        return;
    };
    broker.txn.partition_count.store(count, Ordering::Relaxed);
    // Partitions lost, or whose handle a failed append fenced (reloaded below).
    let gone: Vec<i32> = broker
        .txn
        .loaded
        .read()
        .iter()
        .filter(|(p, part)| !owned.contains(p) || !part.owned.stream.is_current())
        .map(|(p, _)| *p)
        .collect();
    for p in gone {
        unload(broker, p);
    }
    if !broker.serving() {
        // Loaded again once the session is confirmed (the next change after it).
        return;
    }
    let mut to_load: Vec<i32> = {
        let loaded = broker.txn.loaded.read();
        owned
            .into_iter()
            .filter(|p| !loaded.contains_key(p))
            .collect()
    };
    to_load.sort_unstable();
    broker.txn.loading.lock().extend(to_load.iter().copied());
    // Concurrently, as the group coordinator loads (a failover moves many at once).
    use futures::StreamExt;
    futures::stream::iter(to_load)
        .for_each_concurrent(crate::membership::CONCURRENT_OPENS, |p| async move {
            load_one(broker, p).await;
            broker.txn.loading.lock().remove(&p);
        })
        .await;
}

fn unload(broker: &Arc<Broker>, p: i32) {
    let Some(part) = broker.txn.loaded.write().remove(&p) else {
        return;
    };
    let effects = {
        let mut st = part.state.lock();
        let core = std::mem::replace(&mut st.core, TxnCoordinator::new(-1, config(broker)));
        core.unload()
    };
    // Only replies (NOT_COORDINATOR to every waiting request) come out of an unload.
    run_effects(broker, &part, effects);
    tracing::info!(partition = p, "transaction coordinator partition unloaded");
}

async fn load_one(broker: &Arc<Broker>, p: i32) {
    let stream_id = broker.meta.read(|s| {
        s.topics
            .get(TXN_TOPIC)
            .and_then(|t| t.partitions.get(p as usize))
            .map(|part| part.stream_id)
    });
    let Some(stream_id) = stream_id else { return };
    if broker.open_failed_recently(stream_id) {
        return;
    }
    let owned = match broker.open_owned(stream_id).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(partition = p, error = %e, "cannot open transaction coordinator partition");
            broker.note_open_failed(stream_id);
            return;
        }
    };
    let pairs = match read_all(&owned.stream).await {
        Ok(pairs) => pairs,
        Err(e) => {
            tracing::warn!(partition = p, error = %e, "cannot read transaction coordinator partition");
            broker.note_open_failed(stream_id);
            return;
        }
    };
    let (records, skipped) =
        super::records::decode_all(pairs.iter().map(|(k, v)| (&k[..], v.as_deref())));
    let epoch = crate::handlers::metadata::leader_epoch(owned.stream.epoch());
    let (core, effects) = TxnCoordinator::load(epoch, config(broker), records, crate::now_ms());
    let loaded = core_count(&core);
    let part = Arc::new(Partition {
        owned,
        state: Mutex::new(State {
            core,
            waiters: HashMap::new(),
        }),
    });
    broker.txn.loaded.write().insert(p, part.clone());
    // Transactions found prepared are completed: their markers are written again.
    let recovering = effects.len();
    run_effects(broker, &part, effects);
    if loaded > 0 || skipped > 0 {
        tracing::info!(
            partition = p,
            transactional_ids = loaded,
            skipped,
            recovering,
            "transaction coordinator partition loaded"
        );
    }
}

fn core_count(core: &TxnCoordinator) -> usize {
    core.list(&ListFilter::default(), crate::now_ms())
        .transactions
        .len()
}

/// Every record of a stream, start to end, as (key, value).
async fn read_all(
    stream: &shale_stream::Stream,
) -> Result<Vec<(bytes::Bytes, Option<bytes::Bytes>)>, StreamError> {
    Ok(crate::groups::read_stored(stream)
        .await?
        .into_iter()
        .filter_map(|i| match i {
            crate::groups::records::Stored::Record { key, value, .. } => Some((key, value)),
            crate::groups::records::Stored::Marker { .. } => None,
        })
        .collect())
}
