//! Replay authorization: reading a topic's history from before its replay window, and
//! moving a group's committed offset on it backwards, take a grant beyond plain READ.
//!
//! The grant is a standard ACL, so `kafka-acls.sh`, AdminClient and every ACL tool manage
//! it: READ on the Topic resource `__replay.<topic>` (literal for one topic; prefixed
//! `__replay.` for every topic, `__replay.pay` for the topics whose names start with `pay`).
//! Deny ACLs on it win as usual and super users need none. No real topic can be named so:
//! topic creation refuses the prefix (`handlers::topics`).
//!
//! A topic's window is `replay.window.ms` (the broker setting of that name is its default;
//! -1, the default, or 0: no window). Without a window, or without an authorizer, nothing
//! here applies and the topic behaves exactly as in Kafka. With one, the partition's *replay
//! boundary* is the first batch whose timestamp is within the window, the batch ListOffsets
//! finds for the timestamp `now - window`:
//! - a fetch from below the boundary needs the grant; without it the partition answers
//!   TOPIC_AUTHORIZATION_FAILED with no records (the other partitions are served);
//! - an OffsetCommit or TxnOffsetCommit lower than the group's committed offset needs it too
//!   (a first commit is not backwards); without it the partition answers
//!   TOPIC_AUTHORIZATION_FAILED and keeps its offset.
//!
//! Every denial is audited as an authorization event on `Topic:__replay.<topic>`, operation
//! Read, whose reason names the partitions and offsets (never a record).
//!
//! **Why in the gate, with a cache.** Like every other permission this is decided in the gate,
//! before the handler and without it knowing: the fetch handler stays a reader, and the
//! decision and its audit stay in one place. The gate decides synchronously, though, and a
//! boundary takes a timestamp look-up that may read object storage. So each partition's
//! boundary is cached ([`Boundaries`]) and looked up again in the background, at most once a
//! second while it is used. Boundaries only move forward (time passes, retention trims), so
//! a cached boundary never exceeds the current one: a fetch below it is a replay however old
//! it is, and a fetch at or above one looked up within [`SERVE_WITHIN`] is served (records
//! at most that much older than the window may then be read). A fetch at the end of the log
//! never needs the boundary. When nothing recent is known the partition answers
//! OFFSET_NOT_AVAILABLE, which clients retry after a short back-off, while the look-up runs;
//! ListOffsets and OffsetForLeaderEpoch, which consumers send before fetching from a new
//! position, start it early so that answer is rare.

use super::Gate;
use crate::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    TopicName, fetch_request, fetch_response, offset_commit_request, txn_offset_commit_request,
};
use parking_lot::Mutex;
use shale_security::acl::{AclOperation, Decision, ResourceType};
use shale_security::audit::{self, AuditEvent};
use shale_stream::StreamId;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The prefix of replay resources: READ on `Topic:__replay.<topic>` is the replay grant.
pub(crate) const REPLAY_PREFIX: &str = "__replay.";

/// The topic config (and broker default) holding a topic's replay window.
pub(crate) const WINDOW_CONFIG: &str = "replay.window.ms";

/// The Topic resource whose READ grants replaying `topic`.
pub(crate) fn replay_resource(topic: &str) -> String {
    format!("{REPLAY_PREFIX}{topic}")
}

/// Whether `name` is a replay resource's (no topic may be created with such a name).
pub(crate) fn is_replay_resource(name: &str) -> bool {
    name.starts_with(REPLAY_PREFIX)
}

const TOPIC_DENIED: ResponseError = ResponseError::TopicAuthorizationFailed;
/// Retriable: the client fetches again after its back-off, by when the boundary is known.
const NOT_YET: ResponseError = ResponseError::OffsetNotAvailable;

/// A cached boundary older than this is looked up again when a fetch uses it.
const REFRESH_AFTER: Duration = Duration::from_secs(1);
/// The oldest cached boundary that still lets a fetch at or above it through.
pub(super) const SERVE_WITHIN: Duration = Duration::from_secs(2);
/// Partitions whose boundaries a node keeps: beyond it the least recently looked up go.
const MAX_CACHED: usize = 65_536;

/// A topic's replay window in milliseconds, `None` when it has none.
pub(crate) fn window_of(
    overrides: &std::collections::BTreeMap<String, String>,
    broker: &std::collections::BTreeMap<String, String>,
) -> Option<i64> {
    let w = crate::topic_config::effective_i64(WINDOW_CONFIG, overrides, broker);
    (w > 0).then_some(w)
}

// ---------------------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------------------

/// A boundary from the cache and how long ago it was looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Known {
    pub offset: i64,
    pub age: Duration,
}

/// What the gate knows of a partition, without I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Served {
    /// The handler answers it without reading records: no such partition, another node's,
    /// or this node is not serving.
    Elsewhere,
    /// This node's. `offsets` (start, end) when it is open; the cached boundary if any.
    Here {
        offsets: Option<(i64, i64)>,
        boundary: Option<Known>,
    },
}

/// The verdict on fetching one partition from an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FetchCheck {
    Serve,
    /// Below the boundary: needs the grant.
    Replay {
        boundary: i64,
    },
    /// No recent boundary to decide with.
    Unknown,
}

/// Whether fetching from `fetch_offset` reads history before the replay boundary.
pub(super) fn fetch_check(fetch_offset: i64, served: Served) -> FetchCheck {
    let Served::Here { offsets, boundary } = served else {
        return FetchCheck::Serve;
    };
    // Below the start the handler answers OFFSET_OUT_OF_RANGE (the client resets as its
    // policy says); from the end on everything read is appended from now, in the window.
    if let Some((start, end)) = offsets
        && (fetch_offset < start || fetch_offset >= end)
    {
        return FetchCheck::Serve;
    }
    match boundary {
        // However old: a boundary only moves forward.
        Some(b) if fetch_offset < b.offset => FetchCheck::Replay { boundary: b.offset },
        Some(b) if b.age <= SERVE_WITHIN => FetchCheck::Serve,
        _ => FetchCheck::Unknown,
    }
}

/// Whether committing `offset` moves the group's committed offset backwards.
pub(super) fn moves_back(committed: Option<i64>, offset: i64) -> bool {
    committed.is_some_and(|c| offset < c)
}

// ---------------------------------------------------------------------------------------
// What the checks read of the cluster
// ---------------------------------------------------------------------------------------

/// What the replay checks read of the cluster: a seam, so the gate's decisions are tested
/// without a broker.
pub(super) trait Cluster {
    /// The topic's replay window, `None` when it has none or authorization is off.
    fn window_ms(&self, topic: &str) -> Option<i64>;
    /// The partition as this node serves it now; starts a boundary look-up when the cached
    /// one is missing or old.
    fn partition(&self, topic: &str, partition: i32, window_ms: i64) -> Served;
    /// The group's committed offset of the partition, `None` when it has none (or this
    /// node is not its coordinator: the commit then fails there).
    fn committed(&self, group: &str, topic: &str, partition: i32) -> Option<i64>;
    /// Whether the coordinator would take this member's commit (`txn`: a TxnOffsetCommit's
    /// checks). One it refuses gets the coordinator's error, never the replay check's.
    fn accepts_commit(&self, group: &str, member: &Member<'_>, txn: bool) -> bool;
}

/// Who commits: the member id, static instance id and generation of a commit request.
pub(super) struct Member<'a> {
    pub id: &'a str,
    pub instance: Option<&'a str>,
    pub generation: i32,
}

/// The broker as the replay checks see it. The `Arc` lets a look-up outlive the request.
pub(super) struct BrokerCluster<'a>(pub &'a Arc<Broker>);

impl Cluster for BrokerCluster<'_> {
    fn window_ms(&self, topic: &str) -> Option<i64> {
        let broker = self.0;
        if !broker.acls_enabled() {
            return None;
        }
        let defaults = &broker.config.topic_defaults;
        broker
            .meta
            .read(|s| s.topics.get(topic).map(|t| window_of(&t.configs, defaults)))
            .flatten()
    }

    fn partition(&self, topic: &str, partition: i32, window_ms: i64) -> Served {
        let broker = self.0;
        let me = broker.config.node_id as u64;
        let found = broker.meta.read(|s| {
            let t = s.topics.get(topic)?;
            let p = t.partitions.get(usize::try_from(partition).ok()?)?;
            Some((p.stream_id, p.owner))
        });
        let Some((id, owner)) = found else {
            return Served::Elsewhere;
        };
        if owner != me || !broker.serving() {
            return Served::Elsewhere;
        }
        let cache = &broker.acls.replay;
        let (boundary, refresh) = cache.lookup(id, window_ms, Instant::now());
        if refresh {
            spawn_lookup(broker, topic, partition, id, window_ms);
        }
        Served::Here {
            offsets: broker
                .owned_if_open(id)
                .map(|o| (o.stream.start_offset() as i64, o.stream.end_offset() as i64)),
            boundary,
        }
    }

    fn accepts_commit(&self, group: &str, member: &Member<'_>, txn: bool) -> bool {
        self.0
            .groups
            .would_accept_commit(group, member.id, member.instance, member.generation, txn)
    }

    fn committed(&self, group: &str, topic: &str, partition: i32) -> Option<i64> {
        let found = self
            .0
            .groups
            .fetch_offsets(group, Some(vec![(topic.to_string(), vec![partition])]))
            .ok()?;
        let (_, partitions) = found.into_iter().next()?;
        let (_, value) = partitions.into_iter().next()?;
        value.map(|v| v.offset)
    }
}

/// Looks the boundary up in the background, through the partition as the handlers resolve it
/// (which opens, or reopens, a handle this node owns).
fn spawn_lookup(broker: &Arc<Broker>, topic: &str, partition: i32, id: StreamId, window_ms: i64) {
    let cache = broker.acls.replay.clone();
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        cache.failed(id, window_ms);
        return;
    };
    let (broker, topic) = (broker.clone(), topic.to_string());
    runtime.spawn(async move {
        // Should the look-up not finish (a panic, the runtime shutting down), the next use
        // starts another rather than waiting for this one forever.
        let mut pending = Pending {
            cache: &cache,
            id,
            window_ms,
            done: false,
        };
        let now_ms = crate::now_ms();
        let part = match broker.partition(&topic, partition).await {
            Ok(part) => part,
            Err(_) => {
                // No longer this node's to serve: its boundary goes with it.
                pending.done = true;
                cache.forget(id);
                return;
            }
        };
        let found = boundary(&part.stream, window_ms, now_ms).await;
        pending.done = true;
        match found {
            // Its age counts from now: a slow look-up (a throttled store) must not leave
            // every fetch waiting for one younger than SERVE_WITHIN. What was appended
            // during the look-up is within the window anyway.
            Ok(offset) => cache.put(id, window_ms, offset, Instant::now()),
            Err(e) => {
                tracing::debug!(topic, partition, error = %e, "replay boundary look-up failed");
                cache.failed(id, window_ms);
            }
        }
    });
}

/// A running look-up: ends it as failed unless it finished.
struct Pending<'a> {
    cache: &'a Boundaries,
    id: StreamId,
    window_ms: i64,
    done: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.cache.failed(self.id, self.window_ms);
        }
    }
}

/// The first offset of the first batch whose timestamp is within the window (ListOffsets'
/// look-up by timestamp, at batch granularity: a fetch returns whole batches), or the end of
/// the log when every batch is older.
async fn boundary(
    stream: &shale_stream::Stream,
    window_ms: i64,
    now_ms: i64,
) -> Result<i64, shale_stream::StreamError> {
    // Read before the look-up: batches appended meanwhile are not taken for old ones.
    let end = stream.end_offset() as i64;
    Ok(
        match stream
            .find_by_timestamp(now_ms.saturating_sub(window_ms))
            .await?
        {
            Some(base) => base as i64,
            None => end,
        },
    )
}

// ---------------------------------------------------------------------------------------
// The boundary cache
// ---------------------------------------------------------------------------------------

/// Replay boundaries of the partitions this node served fetches of, by stream (a deleted and
/// re-created topic has new streams), for the window they were looked up for. At most
/// [`MAX_CACHED`]; a partition that moved away is forgotten at its next look-up.
#[derive(Clone, Default)]
pub(crate) struct Boundaries {
    entries: Arc<Mutex<HashMap<StreamId, Entry>>>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_ms: i64,
    /// `None` until the first look-up finishes.
    offset: Option<i64>,
    /// When the look-up that found `offset` finished (or, before one did, when it was asked).
    at: Instant,
    /// A look-up is running: no other starts.
    looking_up: bool,
}

impl Boundaries {
    /// The cached boundary of `id` for `window_ms`, and whether the caller should start a
    /// look-up (it is missing or older than [`REFRESH_AFTER`], and none is running). A
    /// `true` marks one as running: the caller must end it with `put` or `failed`.
    fn lookup(&self, id: StreamId, window_ms: i64, now: Instant) -> (Option<Known>, bool) {
        let mut entries = self.entries.lock();
        match entries.get_mut(&id) {
            Some(e) if e.window_ms == window_ms => {
                let known = e.offset.map(|offset| Known {
                    offset,
                    age: now.saturating_duration_since(e.at),
                });
                let stale = known.is_none_or(|k| k.age > REFRESH_AFTER);
                let start = stale && !e.looking_up;
                e.looking_up |= start;
                (known, start)
            }
            _ => {
                // Missing, or for another window (the topic's changed): a longer window has
                // an earlier boundary, so the old one decides nothing.
                make_room(&mut entries, now);
                entries.insert(
                    id,
                    Entry {
                        window_ms,
                        offset: None,
                        at: now,
                        looking_up: true,
                    },
                );
                (None, true)
            }
        }
    }

    /// Records a look-up that finished at `at`, unless the window changed meanwhile.
    fn put(&self, id: StreamId, window_ms: i64, offset: i64, at: Instant) {
        if let Some(e) = self.entries.lock().get_mut(&id)
            && e.window_ms == window_ms
        {
            *e = Entry {
                window_ms,
                // Never backwards: an earlier look-up may finish after a later one.
                offset: Some(e.offset.map_or(offset, |o| o.max(offset))),
                at,
                looking_up: false,
            };
        }
    }

    /// A look-up failed: the next use tries again.
    fn failed(&self, id: StreamId, window_ms: i64) {
        let mut entries = self.entries.lock();
        if let Some(e) = entries.get_mut(&id)
            && e.window_ms == window_ms
        {
            if e.offset.is_none() {
                entries.remove(&id);
            } else {
                e.looking_up = false;
            }
        }
    }

    fn forget(&self, id: StreamId) {
        self.entries.lock().remove(&id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().len()
    }
}

/// Makes room for one more entry: drops those too old to serve with (and not being looked up),
/// then, if the cache is still full, the least recently looked up.
fn make_room(entries: &mut HashMap<StreamId, Entry>, now: Instant) {
    if entries.len() < MAX_CACHED {
        return;
    }
    entries.retain(|_, e| e.looking_up || now.saturating_duration_since(e.at) <= SERVE_WITHIN);
    while entries.len() >= MAX_CACHED {
        let Some(oldest) = entries.iter().min_by_key(|(_, e)| e.at).map(|(id, _)| *id) else {
            break;
        };
        entries.remove(&oldest);
    }
}

// ---------------------------------------------------------------------------------------
// The gate's checks
// ---------------------------------------------------------------------------------------

/// The replay part of Fetch, after READ on each topic: takes out of `topics` the partitions
/// the principal may not fetch from where they ask, and returns their answers (to append to
/// the response: fetch records follow the handler's partition order). A topic left with no
/// partition is taken out too. `name_of` resolves a topic's name (by id from v13).
///
/// Every fetch that reaches the gate is a client's: other nodes' requests skip it.
pub(super) fn check_fetch(
    gate: &Gate<'_>,
    cluster: &dyn Cluster,
    topics: &mut Vec<fetch_request::FetchTopic>,
    name_of: impl Fn(&fetch_request::FetchTopic) -> Option<String>,
) -> Vec<fetch_response::FetchableTopicResponse> {
    let mut answers = Vec::new();
    topics.retain_mut(|t| {
        let Some(name) = name_of(t) else { return true };
        let Some(window) = cluster.window_ms(&name) else {
            return true;
        };
        let checks: Vec<FetchCheck> = t
            .partitions
            .iter()
            .map(|p| {
                fetch_check(
                    p.fetch_offset,
                    cluster.partition(&name, p.partition, window),
                )
            })
            .collect();
        let replays: Vec<(i32, i64, i64)> = t
            .partitions
            .iter()
            .zip(&checks)
            .filter_map(|(p, c)| match c {
                FetchCheck::Replay { boundary } => Some((p.partition, p.fetch_offset, *boundary)),
                _ => None,
            })
            .collect();
        let replay_allowed =
            replays.is_empty() || allows(gate, &name, &fetch_reason(&replays, window));
        let unknown_allowed = !checks.contains(&FetchCheck::Unknown) || holds(gate, &name);
        let mut refused = Vec::new();
        let mut checks = checks.into_iter();
        t.partitions.retain(|p| {
            let code = match checks.next() {
                Some(FetchCheck::Replay { .. }) if !replay_allowed => TOPIC_DENIED,
                Some(FetchCheck::Unknown) if !unknown_allowed => {
                    tracing::debug!(
                        topic = name,
                        partition = p.partition,
                        "replay boundary not known yet: OFFSET_NOT_AVAILABLE"
                    );
                    NOT_YET
                }
                _ => return true,
            };
            refused.push(
                fetch_response::PartitionData::default()
                    .with_partition_index(p.partition)
                    .with_error_code(code.code())
                    .with_high_watermark(-1)
                    .with_last_stable_offset(-1)
                    .with_log_start_offset(-1),
            );
            false
        });
        if !refused.is_empty() {
            answers.push(
                fetch_response::FetchableTopicResponse::default()
                    .with_topic(t.topic.clone())
                    .with_topic_id(t.topic_id)
                    .with_partitions(refused),
            );
        }
        !t.partitions.is_empty()
    });
    answers
}

/// Starts boundary look-ups for the partitions of a windowed topic (ListOffsets and
/// OffsetForLeaderEpoch come before a consumer fetches from a new position).
pub(super) fn prepare(cluster: &dyn Cluster, topic: &str, partitions: impl Iterator<Item = i32>) {
    if let Some(window) = cluster.window_ms(topic) {
        for p in partitions {
            cluster.partition(topic, p, window);
        }
    }
}

/// A commit request topic (OffsetCommit's or TxnOffsetCommit's).
pub(super) trait CommitTopic {
    fn topic(&self) -> &TopicName;
    /// (partition, offset) of each partition committed.
    fn offsets(&self) -> Vec<(i32, i64)>;
    fn retain_partitions(&mut self, keep: impl FnMut(i32) -> bool);
    fn is_empty(&self) -> bool;
}

impl CommitTopic for offset_commit_request::OffsetCommitRequestTopic {
    fn topic(&self) -> &TopicName {
        &self.name
    }
    fn offsets(&self) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .map(|p| (p.partition_index, p.committed_offset))
            .collect()
    }
    fn retain_partitions(&mut self, mut keep: impl FnMut(i32) -> bool) {
        self.partitions.retain(|p| keep(p.partition_index));
    }
    fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }
}

impl CommitTopic for txn_offset_commit_request::TxnOffsetCommitRequestTopic {
    fn topic(&self) -> &TopicName {
        &self.name
    }
    fn offsets(&self) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .map(|p| (p.partition_index, p.committed_offset))
            .collect()
    }
    fn retain_partitions(&mut self, mut keep: impl FnMut(i32) -> bool) {
        self.partitions.retain(|p| keep(p.partition_index));
    }
    fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }
}

/// The replay part of OffsetCommit and TxnOffsetCommit, after READ on the group and each
/// topic: takes out of `topics` the partitions of windowed topics whose commit would move the
/// group's committed offset backwards without the grant, and returns them by topic (each to
/// be answered TOPIC_AUTHORIZATION_FAILED). A topic left with no partition is taken out.
///
/// The committed offset is read here, before the commit is appended: two commits of one
/// group racing each other (a member's and an admin's) are compared with what was committed
/// before either.
pub(super) fn check_commits<T: CommitTopic>(
    gate: &Gate<'_>,
    cluster: &dyn Cluster,
    group: &str,
    member: &Member<'_>,
    txn: bool,
    topics: &mut Vec<T>,
) -> Vec<(TopicName, Vec<i32>)> {
    let mut refused = Vec::new();
    if !topics
        .iter()
        .any(|t| cluster.window_ms(&t.topic().to_string()).is_some())
        || !cluster.accepts_commit(group, member, txn)
    {
        // A commit the coordinator refuses (a stale member) changes nothing: it gets the
        // coordinator's error, and the client rejoins, as against Kafka.
        return refused;
    }
    topics.retain_mut(|t| {
        let name = t.topic().to_string();
        let Some(window) = cluster.window_ms(&name) else {
            return true;
        };
        let rewinds: Vec<(i32, i64, i64)> = t
            .offsets()
            .into_iter()
            .filter_map(|(p, offset)| {
                let committed = cluster.committed(group, &name, p)?;
                moves_back(Some(committed), offset).then_some((p, committed, offset))
            })
            .collect();
        if rewinds.is_empty() || allows(gate, &name, &commit_reason(group, &rewinds, window)) {
            return true;
        }
        let partitions: Vec<i32> = rewinds.iter().map(|(p, _, _)| *p).collect();
        t.retain_partitions(|p| !partitions.contains(&p));
        refused.push((t.topic().clone(), partitions));
        !t.is_empty()
    });
    refused
}

/// Whether the principal holds the replay grant on `topic`, unrecorded: for a fetch the
/// gate cannot yet tell is a replay.
fn holds(gate: &Gate<'_>, topic: &str) -> bool {
    gate.may_see(
        AclOperation::Read,
        ResourceType::Topic,
        &replay_resource(topic),
    )
}

/// Whether the principal may replay `topic`; the decision is recorded as [`Gate::allows`]
/// records its own (denials always, allows with `audit.log.allowed`, fail-closed), with
/// `what` (the partitions and offsets) in the event's reason.
fn allows(gate: &Gate<'_>, topic: &str, what: &str) -> bool {
    let resource = replay_resource(topic);
    let d = gate.authorizer.authorize(
        &gate.ctx.principal,
        &gate.ctx.host,
        AclOperation::Read,
        ResourceType::Topic,
        &resource,
    );
    if (!d.allowed() || gate.auditor.logs_allowed())
        && gate
            .auditor
            .record(event(gate, &resource, d, what))
            .is_err()
        && d.allowed()
    {
        // Fail-closed: an allow that cannot be recorded is not granted.
        tracing::error!("audit log unavailable: refusing an allowed replay");
        return false;
    }
    if let Decision::Deny(reason) = d {
        tracing::info!(
            principal = %gate.ctx.principal,
            host = %gate.ctx.host,
            listener = %gate.ctx.listener,
            api = gate.api,
            operation = %AclOperation::Read,
            resource_type = %ResourceType::Topic,
            resource = resource,
            ?reason,
            replay = what,
            "authorization denied"
        );
        metrics::counter!("shale_authorization_denials_total", "api" => gate.api).increment(1);
    }
    d.allowed()
}

/// The audit event of a replay decision: `Topic:__replay.<topic>`, Read, the authorizer's
/// reason followed by `what`.
fn event(gate: &Gate<'_>, resource: &str, d: Decision, what: &str) -> AuditEvent {
    let request = audit::Request::new(
        gate.ctx.principal.to_string(),
        audit::Client::new(gate.ctx.listener.to_string(), gate.ctx.host.clone()),
        audit::Api::new(gate.api, gate.version),
    );
    let event = AuditEvent::authorization(
        &request,
        audit::Resource::new(ResourceType::Topic.to_string(), resource),
        AclOperation::Read.to_string(),
        d.allowed(),
    );
    match d {
        // Named as the admin-change events name theirs (`crate::audit`).
        Decision::Deny(reason) => event
            .with_error(format!("{TOPIC_DENIED:?}"))
            .with_reason(format!("{reason:?}: {what}")),
        Decision::Allow(reason) => event.with_reason(format!("{reason:?}: {what}")),
    }
}

/// "replay of partition 0 from offset 3 (boundary 10), ...; replay.window.ms=2000".
fn fetch_reason(replays: &[(i32, i64, i64)], window_ms: i64) -> String {
    let mut s = String::from("replay of");
    for (i, (p, offset, boundary)) in replays.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(
            s,
            "{sep} partition {p} from offset {offset} (boundary {boundary})"
        );
    }
    let _ = write!(s, "; {WINDOW_CONFIG}={window_ms}");
    s
}

/// "offset commit of group g moves partition 0 back from 120 to 3, ...; replay.window.ms=2000".
fn commit_reason(group: &str, rewinds: &[(i32, i64, i64)], window_ms: i64) -> String {
    let mut s = format!("offset commit of group {group} moves");
    for (i, (p, committed, offset)) in rewinds.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(s, "{sep} partition {p} back from {committed} to {offset}");
    }
    let _ = write!(s, "; {WINDOW_CONFIG}={window_ms}");
    s
}

/// A cluster the tests describe: windows by topic, partitions by (topic, partition),
/// committed offsets by (group, topic, partition). Partitions not listed are `Elsewhere`.
#[cfg(test)]
pub(super) mod test_support {
    use super::{Cluster, Member, Served};
    use std::collections::HashMap;

    #[derive(Default)]
    pub struct FakeCluster {
        pub windows: HashMap<String, i64>,
        pub partitions: HashMap<(String, i32), Served>,
        pub committed: HashMap<(String, String, i32), i64>,
        /// (topic, partition) of every `partition` call: the look-ups a broker would start.
        pub asked: std::sync::Mutex<Vec<(String, i32)>>,
    }

    impl Cluster for FakeCluster {
        fn window_ms(&self, topic: &str) -> Option<i64> {
            self.windows.get(topic).copied()
        }
        fn partition(&self, topic: &str, partition: i32, _window_ms: i64) -> Served {
            self.asked
                .lock()
                .unwrap()
                .push((topic.to_string(), partition));
            self.partitions
                .get(&(topic.to_string(), partition))
                .copied()
                .unwrap_or(Served::Elsewhere)
        }
        fn committed(&self, group: &str, topic: &str, partition: i32) -> Option<i64> {
            self.committed
                .get(&(group.to_string(), topic.to_string(), partition))
                .copied()
        }
        fn accepts_commit(&self, _group: &str, member: &Member<'_>, _txn: bool) -> bool {
            member.id != "stale"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::RequestContext;
    use super::test_support::FakeCluster;
    use super::*;
    use kafka_protocol::protocol::StrBytes;
    use shale_security::acl::{
        AclBinding, AclPermissionType, Authorizer, AuthorizerConfig, PatternType, Reason,
    };
    use shale_security::principal::KafkaPrincipal;

    const WINDOW: i64 = 60_000;

    fn fresh(offset: i64) -> Option<Known> {
        Some(Known {
            offset,
            age: Duration::from_millis(100),
        })
    }

    fn open(start: i64, end: i64, boundary: Option<Known>) -> Served {
        Served::Here {
            offsets: Some((start, end)),
            boundary,
        }
    }

    // Decisions

    #[test]
    fn a_fetch_below_the_boundary_is_a_replay() {
        assert_eq!(
            fetch_check(3, open(0, 100, fresh(10))),
            FetchCheck::Replay { boundary: 10 }
        );
    }

    #[test]
    fn a_fetch_at_or_above_a_recent_boundary_is_served() {
        assert_eq!(fetch_check(10, open(0, 100, fresh(10))), FetchCheck::Serve);
        assert_eq!(fetch_check(50, open(0, 100, fresh(10))), FetchCheck::Serve);
    }

    #[test]
    fn a_fetch_below_an_old_boundary_is_still_a_replay_as_boundaries_only_move_forward() {
        let old = Some(Known {
            offset: 10,
            age: Duration::from_secs(3600),
        });
        assert_eq!(
            fetch_check(3, open(0, 100, old)),
            FetchCheck::Replay { boundary: 10 }
        );
        assert_eq!(fetch_check(10, open(0, 100, old)), FetchCheck::Unknown);
    }

    #[test]
    fn a_fetch_at_the_end_of_the_log_needs_no_boundary() {
        assert_eq!(fetch_check(100, open(0, 100, None)), FetchCheck::Serve);
    }

    #[test]
    fn a_fetch_below_the_log_start_is_left_to_the_handler_to_refuse() {
        assert_eq!(fetch_check(2, open(5, 100, fresh(50))), FetchCheck::Serve);
    }

    #[test]
    fn without_a_boundary_a_fetch_inside_the_log_is_undecided() {
        assert_eq!(fetch_check(3, open(0, 100, None)), FetchCheck::Unknown);
        let closed = Served::Here {
            offsets: None,
            boundary: None,
        };
        assert_eq!(fetch_check(3, closed), FetchCheck::Unknown);
    }

    #[test]
    fn a_partition_this_node_does_not_serve_is_the_handlers_to_refuse() {
        assert_eq!(fetch_check(0, Served::Elsewhere), FetchCheck::Serve);
    }

    #[test]
    fn only_a_commit_below_the_committed_offset_moves_back() {
        assert!(moves_back(Some(10), 9));
        assert!(!moves_back(Some(10), 10));
        assert!(!moves_back(Some(10), 11));
        assert!(!moves_back(None, 0), "a first commit is not backwards");
    }

    #[test]
    fn a_window_is_positive_and_the_topic_overrides_the_broker() {
        let map = |v: &str| [(WINDOW_CONFIG.to_string(), v.to_string())].into();
        let none = Default::default();
        assert_eq!(window_of(&none, &none), None, "default -1");
        assert_eq!(window_of(&map("0"), &none), None);
        assert_eq!(window_of(&none, &map("5000")), Some(5000));
        assert_eq!(window_of(&map("7"), &map("5000")), Some(7));
        assert_eq!(window_of(&map("-1"), &map("5000")), None);
    }

    #[test]
    fn replay_resources_are_the_prefixed_topic_names() {
        assert_eq!(replay_resource("payments"), "__replay.payments");
        assert!(is_replay_resource("__replay.payments"));
        assert!(!is_replay_resource("payments"));
        assert!(!is_replay_resource("__replay"));
    }

    // The cache

    #[test]
    fn a_missing_boundary_starts_one_look_up_at_a_time() {
        let c = Boundaries::default();
        let t0 = Instant::now();
        assert_eq!(c.lookup(1, WINDOW, t0), (None, true));
        assert_eq!(c.lookup(1, WINDOW, t0), (None, false), "already running");
        c.put(1, WINDOW, 42, t0);
        let (known, start) = c.lookup(1, WINDOW, t0 + Duration::from_millis(500));
        assert_eq!(known.map(|k| k.offset), Some(42));
        assert!(!start, "fresh");
    }

    #[test]
    fn a_boundary_is_looked_up_again_after_a_second_of_use() {
        let c = Boundaries::default();
        let t0 = Instant::now();
        c.lookup(1, WINDOW, t0);
        c.put(1, WINDOW, 42, t0);
        let (known, start) = c.lookup(1, WINDOW, t0 + Duration::from_millis(1500));
        assert_eq!(known.map(|k| k.offset), Some(42), "still used meanwhile");
        assert!(start);
    }

    #[test]
    fn a_changed_window_discards_the_boundary_and_the_look_up_for_the_old_one() {
        let c = Boundaries::default();
        let t0 = Instant::now();
        c.lookup(1, WINDOW, t0);
        c.put(1, WINDOW, 42, t0);
        assert_eq!(c.lookup(1, 2 * WINDOW, t0), (None, true));
        c.put(1, WINDOW, 50, t0);
        assert_eq!(c.lookup(1, 2 * WINDOW, t0), (None, false));
    }

    #[test]
    fn a_look_up_finishing_late_never_moves_the_boundary_back() {
        let c = Boundaries::default();
        let t0 = Instant::now();
        c.lookup(1, WINDOW, t0);
        c.put(1, WINDOW, 42, t0);
        c.put(1, WINDOW, 30, t0);
        assert_eq!(c.lookup(1, WINDOW, t0).0.map(|k| k.offset), Some(42));
    }

    #[test]
    fn a_failed_first_look_up_is_tried_again_on_next_use() {
        let c = Boundaries::default();
        let t0 = Instant::now();
        c.lookup(1, WINDOW, t0);
        c.failed(1, WINDOW);
        assert_eq!(c.lookup(1, WINDOW, t0), (None, true));
    }

    #[test]
    fn the_cache_is_bounded_and_drops_old_boundaries_first() {
        let c = Boundaries::default();
        let t0 = Instant::now();
        for id in 0..MAX_CACHED as u64 {
            c.lookup(id, WINDOW, t0);
            c.put(id, WINDOW, 1, t0);
        }
        // The newest one must stay when room is made.
        c.lookup(0, WINDOW, t0 + Duration::from_secs(1));
        c.put(0, WINDOW, 1, t0 + Duration::from_secs(1));
        c.lookup(
            u64::MAX,
            WINDOW,
            t0 + SERVE_WITHIN + Duration::from_millis(500),
        );
        assert_eq!(c.len(), 2, "only the recent boundary and the new entry");
        assert!(c.lookup(0, WINDOW, t0 + Duration::from_secs(1)).0.is_some());
    }

    // The gate

    struct Fixture {
        authorizer: Arc<Authorizer>,
        ctx: RequestContext,
    }

    fn acl(name: &str, pattern: PatternType, permission: AclPermissionType) -> AclBinding {
        AclBinding {
            resource_type: ResourceType::Topic,
            resource_name: name.into(),
            pattern_type: pattern,
            principal: "User:alice".into(),
            host: "*".into(),
            operation: AclOperation::Read,
            permission,
        }
    }

    fn allow(name: &str) -> AclBinding {
        acl(name, PatternType::Literal, AclPermissionType::Allow)
    }

    impl Fixture {
        fn new(acls: impl IntoIterator<Item = AclBinding>) -> Fixture {
            Fixture::with_config(AuthorizerConfig::default(), acls)
        }

        fn with_config(
            config: AuthorizerConfig,
            acls: impl IntoIterator<Item = AclBinding>,
        ) -> Fixture {
            Fixture {
                authorizer: Arc::new(Authorizer::new(config, acls)),
                ctx: RequestContext {
                    principal: KafkaPrincipal::user("alice"),
                    host: "10.0.0.1".into(),
                    listener: Arc::from("CLIENT"),
                    inter_broker: false,
                },
            }
        }

        fn gate(&self) -> Gate<'_> {
            Gate {
                authorizer: self.authorizer.clone(),
                ctx: &self.ctx,
                api: "Fetch",
                version: 12,
                auditor: shale_security::audit::Auditor::disabled(),
            }
        }
    }

    /// "pay" has a window; partition 0 is open at [0, 100) with boundary 10.
    fn cluster(p0: Served) -> FakeCluster {
        let mut c = FakeCluster::default();
        c.windows.insert("pay".into(), WINDOW);
        c.partitions.insert(("pay".into(), 0), p0);
        c.partitions
            .insert(("plain".into(), 0), open(0, 100, fresh(10)));
        c
    }

    fn fetch_topic(name: &str, offsets: &[(i32, i64)]) -> fetch_request::FetchTopic {
        fetch_request::FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(name.into())))
            .with_partitions(
                offsets
                    .iter()
                    .map(|&(p, o)| {
                        fetch_request::FetchPartition::default()
                            .with_partition(p)
                            .with_fetch_offset(o)
                    })
                    .collect(),
            )
    }

    /// Partitions by topic.
    type ByTopic = Vec<(String, Vec<i32>)>;

    /// (topic, partitions still asked for) and (topic, partition, code) of the answers.
    type Outcome = (ByTopic, Vec<(String, i32, i16)>);

    fn fetch(f: &Fixture, c: &FakeCluster, topics: Vec<fetch_request::FetchTopic>) -> Outcome {
        let mut topics = topics;
        let answers = check_fetch(&f.gate(), c, &mut topics, |t| Some(t.topic.to_string()));
        let kept = topics
            .iter()
            .map(|t| {
                (
                    t.topic.to_string(),
                    t.partitions.iter().map(|p| p.partition).collect(),
                )
            })
            .collect();
        let refused = answers
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.topic.to_string(), p.partition_index, p.error_code))
            })
            .collect();
        (kept, refused)
    }

    const DENIED: i16 = ResponseError::TopicAuthorizationFailed.code();

    #[test]
    fn fetching_history_without_the_grant_fails_that_partition_only() {
        let f = Fixture::new([]);
        let c = cluster(open(0, 100, fresh(10)));
        let (kept, refused) = fetch(
            &f,
            &c,
            vec![
                fetch_topic("pay", &[(0, 3), (1, 0)]),
                fetch_topic("plain", &[(0, 0)]),
            ],
        );
        assert_eq!(
            kept,
            [("pay".into(), vec![1]), ("plain".into(), vec![0])],
            "the other partitions are served (pay-1 is not this node's)"
        );
        assert_eq!(refused, [("pay".into(), 0, DENIED)]);
    }

    #[test]
    fn a_topic_whose_every_partition_is_refused_leaves_the_request() {
        let f = Fixture::new([]);
        let c = cluster(open(0, 100, fresh(10)));
        let (kept, refused) = fetch(&f, &c, vec![fetch_topic("pay", &[(0, 3)])]);
        assert!(kept.is_empty());
        assert_eq!(refused, [("pay".into(), 0, DENIED)]);
    }

    #[test]
    fn fetching_inside_the_window_needs_no_grant() {
        let f = Fixture::new([]);
        let c = cluster(open(0, 100, fresh(10)));
        let (kept, refused) = fetch(&f, &c, vec![fetch_topic("pay", &[(0, 10)])]);
        assert_eq!(kept, [("pay".into(), vec![0])]);
        assert!(refused.is_empty());
    }

    #[test]
    fn read_on_the_replay_resource_grants_history() {
        for grant in [
            allow("__replay.pay"),
            acl("__replay.", PatternType::Prefixed, AclPermissionType::Allow),
            acl(
                "__replay.pa",
                PatternType::Prefixed,
                AclPermissionType::Allow,
            ),
        ] {
            let f = Fixture::new([grant.clone()]);
            let c = cluster(open(0, 100, fresh(10)));
            let (kept, refused) = fetch(&f, &c, vec![fetch_topic("pay", &[(0, 0)])]);
            assert_eq!(kept, [("pay".into(), vec![0])], "{grant:?}");
            assert!(refused.is_empty());
        }
    }

    #[test]
    fn read_on_the_topic_itself_grants_no_history() {
        let f = Fixture::new([
            allow("pay"),
            acl("pa", PatternType::Prefixed, AclPermissionType::Allow),
        ]);
        let c = cluster(open(0, 100, fresh(10)));
        let (_, refused) = fetch(&f, &c, vec![fetch_topic("pay", &[(0, 0)])]);
        assert_eq!(refused, [("pay".into(), 0, DENIED)]);
    }

    #[test]
    fn a_deny_on_the_replay_resource_wins_over_a_grant() {
        let f = Fixture::new([
            acl("__replay.", PatternType::Prefixed, AclPermissionType::Allow),
            acl(
                "__replay.pay",
                PatternType::Literal,
                AclPermissionType::Deny,
            ),
        ]);
        let c = cluster(open(0, 100, fresh(10)));
        let (_, refused) = fetch(&f, &c, vec![fetch_topic("pay", &[(0, 0)])]);
        assert_eq!(refused, [("pay".into(), 0, DENIED)]);
    }

    #[test]
    fn super_users_replay_without_a_grant() {
        let config = AuthorizerConfig {
            super_users: [KafkaPrincipal::user("alice")].into(),
            allow_if_no_acl: false,
        };
        let f = Fixture::with_config(config, []);
        let c = cluster(open(0, 100, fresh(10)));
        let (kept, refused) = fetch(&f, &c, vec![fetch_topic("pay", &[(0, 0)])]);
        assert_eq!(kept, [("pay".into(), vec![0])]);
        assert!(refused.is_empty());
    }

    #[test]
    fn a_topic_without_a_window_is_never_checked() {
        let f = Fixture::new([]);
        let c = cluster(open(0, 100, fresh(10)));
        let (kept, refused) = fetch(&f, &c, vec![fetch_topic("plain", &[(0, 0)])]);
        assert_eq!(kept, [("plain".into(), vec![0])]);
        assert!(refused.is_empty());
        assert!(c.asked.lock().unwrap().is_empty(), "no look-up started");
    }

    #[test]
    fn an_undecided_fetch_is_retriable_without_the_grant_and_served_with_it() {
        let c = cluster(open(0, 100, None));
        let (_, refused) = fetch(&Fixture::new([]), &c, vec![fetch_topic("pay", &[(0, 3)])]);
        assert_eq!(
            refused,
            [("pay".into(), 0, ResponseError::OffsetNotAvailable.code())]
        );
        let granted = Fixture::new([allow("__replay.pay")]);
        let (kept, refused) = fetch(&granted, &c, vec![fetch_topic("pay", &[(0, 3)])]);
        assert_eq!(kept, [("pay".into(), vec![0])]);
        assert!(refused.is_empty());
    }

    #[test]
    fn offset_look_ups_of_a_windowed_topic_start_boundary_look_ups() {
        let c = cluster(open(0, 100, None));
        prepare(&c, "pay", [0, 1].into_iter());
        prepare(&c, "plain", [0].into_iter());
        assert_eq!(
            *c.asked.lock().unwrap(),
            [("pay".to_string(), 0), ("pay".to_string(), 1)]
        );
    }

    fn commit_topic(
        name: &str,
        offsets: &[(i32, i64)],
    ) -> offset_commit_request::OffsetCommitRequestTopic {
        offset_commit_request::OffsetCommitRequestTopic::default()
            .with_name(TopicName(StrBytes::from_string(name.into())))
            .with_partitions(
                offsets
                    .iter()
                    .map(|&(p, o)| {
                        offset_commit_request::OffsetCommitRequestPartition::default()
                            .with_partition_index(p)
                            .with_committed_offset(o)
                    })
                    .collect(),
            )
    }

    /// "pay" and "plain" both have group g at offset 50 on partitions 0 and 1; only "pay"
    /// has a window.
    fn committed_cluster() -> FakeCluster {
        let mut c = FakeCluster::default();
        c.windows.insert("pay".into(), WINDOW);
        for t in ["pay", "plain"] {
            for p in [0, 1] {
                c.committed.insert(("g".into(), t.into(), p), 50);
            }
        }
        c
    }

    fn commit(
        f: &Fixture,
        c: &FakeCluster,
        mut topics: Vec<offset_commit_request::OffsetCommitRequestTopic>,
    ) -> (ByTopic, ByTopic) {
        let member = Member {
            id: "m",
            instance: None,
            generation: 1,
        };
        let refused = check_commits(&f.gate(), c, "g", &member, false, &mut topics);
        let kept = topics
            .iter()
            .map(|t| {
                (
                    t.name.to_string(),
                    t.partitions.iter().map(|p| p.partition_index).collect(),
                )
            })
            .collect();
        let refused = refused
            .into_iter()
            .map(|(t, p)| (t.to_string(), p))
            .collect();
        (kept, refused)
    }

    #[test]
    fn committing_backwards_without_the_grant_fails_that_partition_only() {
        let (kept, refused) = commit(
            &Fixture::new([]),
            &committed_cluster(),
            vec![commit_topic("pay", &[(0, 3), (1, 60)])],
        );
        assert_eq!(kept, [("pay".into(), vec![1])]);
        assert_eq!(refused, [("pay".into(), vec![0])]);
    }

    #[test]
    fn a_stale_members_commit_is_left_to_the_coordinator() {
        // Its generation is gone: the coordinator answers ILLEGAL_GENERATION (the client
        // rejoins), not an authorization error.
        let mut topics = vec![commit_topic("pay", &[(0, 3)])];
        let stale = Member {
            id: "stale",
            instance: None,
            generation: 1,
        };
        let f = Fixture::new([]);
        let refused = check_commits(
            &f.gate(),
            &committed_cluster(),
            "g",
            &stale,
            false,
            &mut topics,
        );
        assert!(refused.is_empty());
        assert_eq!(topics.len(), 1);
    }

    #[test]
    fn committing_backwards_with_the_grant_commits() {
        let (kept, refused) = commit(
            &Fixture::new([allow("__replay.pay")]),
            &committed_cluster(),
            vec![commit_topic("pay", &[(0, 3)])],
        );
        assert_eq!(kept, [("pay".into(), vec![0])]);
        assert!(refused.is_empty());
    }

    #[test]
    fn a_first_commit_or_a_topic_without_a_window_needs_no_grant() {
        let (kept, refused) = commit(
            &Fixture::new([]),
            &committed_cluster(),
            vec![
                commit_topic("pay", &[(7, 0)]),
                commit_topic("plain", &[(0, 0)]),
            ],
        );
        assert_eq!(kept, [("pay".into(), vec![7]), ("plain".into(), vec![0])]);
        assert!(refused.is_empty());
    }

    #[test]
    fn a_topic_whose_every_commit_is_refused_leaves_the_request() {
        let (kept, refused) = commit(
            &Fixture::new([]),
            &committed_cluster(),
            vec![commit_topic("pay", &[(0, 0), (1, 0)])],
        );
        assert!(kept.is_empty());
        assert_eq!(refused, [("pay".into(), vec![0, 1])]);
    }

    // What is recorded

    #[test]
    fn a_denial_is_recorded_on_the_replay_resource_with_the_partitions_and_offsets() {
        let f = Fixture::new([]);
        let e = event(
            &f.gate(),
            "__replay.pay",
            Decision::Deny(Reason::NoAclForResource),
            &fetch_reason(&[(0, 3, 10), (2, 0, 7)], WINDOW),
        );
        let audit::AuditKind::Authorization(a) = &e.kind else {
            panic!("not an authorization event: {e:?}")
        };
        assert_eq!(
            (a.resource.resource_type.as_str(), a.resource.name.as_str()),
            ("Topic", "__replay.pay")
        );
        assert_eq!(a.operation, "Read");
        assert_eq!(a.outcome, audit::Outcome::Denied);
        assert_eq!(a.error.as_deref(), Some("TopicAuthorizationFailed"));
        assert_eq!(
            a.reason.as_deref(),
            Some(
                "NoAclForResource: replay of partition 0 from offset 3 (boundary 10), \
                 partition 2 from offset 0 (boundary 7); replay.window.ms=60000"
            )
        );
        assert_eq!(a.request.principal, "User:alice");
    }

    #[test]
    fn a_refused_commit_names_the_group_and_both_offsets() {
        assert_eq!(
            commit_reason("g", &[(0, 120, 3)], 2000),
            "offset commit of group g moves partition 0 back from 120 to 3; replay.window.ms=2000"
        );
    }
}
