//! State machine and persistence tests of the group coordinator, on an in-memory log and
//! tokio's paused clock.

use super::group::{JoinOutcome, JoinRequest};
use super::*;
use kafka_protocol::messages::ConsumerProtocolSubscription;
use kafka_protocol::protocol::{Encodable, StrBytes};
use tokio::sync::watch;

/// An in-memory partition: records get consecutive offsets; durability can be held back.
struct MemLog {
    records: Mutex<Vec<(u64, Bytes, Option<Bytes>)>>,
    gate: watch::Receiver<bool>,
}

impl MemLog {
    fn new() -> (Arc<Self>, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(true);
        (
            Arc::new(Self {
                records: Mutex::new(Vec::new()),
                gate: rx,
            }),
            tx,
        )
    }
    fn all(&self) -> Vec<(u64, Bytes, Option<Bytes>)> {
        self.records.lock().clone()
    }
}

impl PartitionLog for MemLog {
    fn append(
        &self,
        records: Vec<(Bytes, Option<Bytes>)>,
    ) -> Result<(u64, Durable), ResponseError> {
        let mut all = self.records.lock();
        let base = all.len() as u64;
        for (i, (k, v)) in records.into_iter().enumerate() {
            all.push((base + i as u64, k, v));
        }
        let mut gate = self.gate.clone();
        Ok((
            base,
            Box::pin(async move {
                gate.wait_for(|open| *open)
                    .await
                    .map_err(|_| ResponseError::NotCoordinator)?;
                Ok(())
            }),
        ))
    }

    fn append_txn(
        &self,
        records: Vec<(Bytes, Option<Bytes>)>,
        _producer_id: i64,
        _epoch: i16,
    ) -> Result<(u64, Durable), ResponseError> {
        self.append(records)
    }

    fn append_marker(
        &self,
        _producer_id: i64,
        _epoch: i16,
        _marker: shale_protocol::control::EndTxnMarker,
    ) -> Result<(u64, Durable), ResponseError> {
        self.append(Vec::new())
    }
}

fn loaded(records: Vec<(u64, Bytes, Option<Bytes>)>) -> super::broker_glue::LoadedRecords {
    super::broker_glue::LoadedRecords {
        records,
        pending: Default::default(),
    }
}

fn config(delay_ms: u64) -> GroupConfig {
    GroupConfig {
        offsets_partitions: 1,
        initial_rebalance_delay: Duration::from_millis(delay_ms),
        min_session_timeout_ms: 10,
        max_session_timeout_ms: 1_800_000,
        offset_metadata_max_bytes: 4096,
        offsets_retention_ms: 7 * 24 * 3600 * 1000,
        retention_check_interval: Duration::from_secs(600),
    }
}

fn coordinator(delay_ms: u64) -> (Arc<GroupCoordinator>, Arc<MemLog>, watch::Sender<bool>) {
    let c = GroupCoordinator::new(config(delay_ms));
    let (log, gate) = MemLog::new();
    c.load_partition(0, log.clone(), loaded(Vec::new()));
    (c, log, gate)
}

fn subscription(topics: &[&str]) -> Bytes {
    let sub = ConsumerProtocolSubscription::default().with_topics(
        topics
            .iter()
            .map(|t| StrBytes::from_string(t.to_string()))
            .collect(),
    );
    let mut buf = bytes::BytesMut::new();
    buf.extend_from_slice(&0i16.to_be_bytes());
    let _ = sub.encode(&mut buf, 0);
    buf.freeze()
}

fn req(group: &str, member: &str, instance: Option<&str>) -> JoinRequest {
    JoinRequest {
        group_id: group.into(),
        member_id: member.into(),
        instance_id: instance.map(str::to_string),
        client_id: "client".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 30_000,
        protocol_type: "consumer".into(),
        protocols: vec![("range".into(), subscription(&["t"]))],
        require_known_member_id: false,
        supports_skip_assignment: false,
    }
}

fn spawn_join(c: &Arc<GroupCoordinator>, r: JoinRequest) -> tokio::task::JoinHandle<JoinOutcome> {
    let c = c.clone();
    tokio::spawn(async move { c.join(r).await })
}

async fn settle() {
    // Lets spawned tasks and timers that are due run (paused clock: no real waiting).
    tokio::time::sleep(Duration::from_millis(1)).await;
}

fn state(c: &GroupCoordinator, g: &str) -> &'static str {
    c.describe(g).map(|d| d.state).unwrap_or("?")
}

fn gen_of(c: &GroupCoordinator, g: &str) -> i32 {
    c.lookup(g)
        .ok()
        .flatten()
        .map(|h| h.group.lock().generation)
        .unwrap_or(-1)
}

/// Joins one member alone and makes the group stable; returns (member id, generation).
async fn stable_single(
    c: &Arc<GroupCoordinator>,
    g: &str,
    instance: Option<&str>,
) -> (String, i32) {
    let j = spawn_join(c, req(g, "", instance))
        .await
        .expect("join task");
    assert_eq!(j.error, 0);
    let s = c
        .sync(
            g,
            &j.member_id,
            instance,
            j.generation,
            None,
            None,
            vec![(j.member_id.clone(), Bytes::from_static(b"a"))],
        )
        .await;
    assert_eq!(s.error, 0);
    (j.member_id, j.generation)
}

#[test]
fn groups_java_hash_matches_kafka() {
    assert_eq!(java_hash(""), 0);
    assert_eq!(java_hash("hello"), 99162322);
    // Non-ASCII hashes UTF-16 code units, as Java does ("é" is U+00E9, "😀" a surrogate pair).
    assert_eq!(java_hash("é"), 0xE9);
    assert_eq!(java_hash("😀"), 0xD83D * 31 + 0xDE00);
    // The one string whose hash is i32::MIN: Kafka's Utils.abs maps it to 0.
    assert_eq!(java_hash("polygenelubricants"), i32::MIN);
    assert_eq!(partition_for("polygenelubricants", 50), 0);
    assert_eq!(partition_for("hello", 50), 99162322 % 50);
    assert!((0..50).contains(&partition_for("some-negative-hash-group-zzzz", 50)));
}

#[tokio::test(start_paused = true)]
async fn groups_member_id_required_then_join_and_sync() {
    let (c, _, _) = coordinator(0);
    let mut r = req("g", "", None);
    r.require_known_member_id = true;
    let first = c.join(r.clone()).await;
    assert_eq!(first.error, ResponseError::MemberIdRequired.code());
    assert!(first.member_id.starts_with("client-"));
    r.member_id = first.member_id.clone();
    let j = c.join(r).await;
    assert_eq!(j.error, 0);
    assert_eq!(j.generation, 1);
    assert_eq!(j.leader, first.member_id);
    assert_eq!(j.members.len(), 1);
    assert_eq!(j.protocol_name.as_deref(), Some("range"));
    let s = c
        .sync(
            "g",
            &j.member_id,
            None,
            1,
            Some("consumer"),
            Some("range"),
            vec![(j.member_id.clone(), Bytes::from_static(b"x"))],
        )
        .await;
    assert_eq!((s.error, &s.assignment[..]), (0, &b"x"[..]));
    assert_eq!(state(&c, "g"), "Stable");
    assert_eq!(c.heartbeat("g", &j.member_id, None, 1), 0);
    assert_eq!(
        c.heartbeat("g", &j.member_id, None, 0),
        ResponseError::IllegalGeneration.code()
    );
    assert_eq!(
        c.heartbeat("g", "nobody", None, 1),
        ResponseError::UnknownMemberId.code()
    );
    // Wrong protocol type for a non-empty group.
    let mut other = req("g", "", None);
    other.protocol_type = "connect".into();
    assert_eq!(
        c.join(other).await.error,
        ResponseError::InconsistentGroupProtocol.code()
    );
    // Session timeout bounds.
    let mut bad = req("g2", "", None);
    bad.session_timeout_ms = 1;
    assert_eq!(
        c.join(bad).await.error,
        ResponseError::InvalidSessionTimeout.code()
    );
}

#[tokio::test(start_paused = true)]
async fn groups_second_member_triggers_rebalance() {
    let (c, _, _) = coordinator(0);
    let (a, g1) = stable_single(&c, "g", None).await;
    let b = spawn_join(&c, req("g", "", None));
    settle().await;
    assert_eq!(state(&c, "g"), "PreparingRebalance");
    assert_eq!(
        c.heartbeat("g", &a, None, g1),
        ResponseError::RebalanceInProgress.code()
    );
    let ja = c.join(req("g", &a, None)).await;
    let jb = b.await.expect("join task");
    assert_eq!((ja.error, jb.error), (0, 0));
    assert_eq!(ja.generation, g1 + 1);
    assert_eq!(jb.generation, g1 + 1);
    assert_eq!(ja.leader, a, "the first member stays leader");
    assert_eq!(ja.members.len(), 2);
    assert!(jb.members.is_empty(), "followers get no member list");
    // The follower syncs first and waits for the leader's assignment.
    let follower = {
        let c = c.clone();
        let b = jb.member_id.clone();
        tokio::spawn(async move { c.sync("g", &b, None, g1 + 1, None, None, Vec::new()).await })
    };
    settle().await;
    let sa = c
        .sync(
            "g",
            &a,
            None,
            g1 + 1,
            None,
            None,
            vec![
                (a.clone(), Bytes::from_static(b"A")),
                (jb.member_id.clone(), Bytes::from_static(b"B")),
            ],
        )
        .await;
    let sb = follower.await.expect("sync task");
    assert_eq!(&sa.assignment[..], b"A");
    assert_eq!(&sb.assignment[..], b"B");
    assert_eq!(state(&c, "g"), "Stable");
    // A follower rejoining with unchanged metadata while stable: no rebalance.
    let again = c.join(req("g", &jb.member_id, None)).await;
    assert_eq!((again.error, again.generation), (0, g1 + 1));
    assert_eq!(state(&c, "g"), "Stable");
    // LeaveGroup of the follower triggers a rebalance; unknown members get UNKNOWN_MEMBER_ID.
    let codes = c
        .leave("g", &[(jb.member_id.clone(), None), ("ghost".into(), None)])
        .unwrap_or_default();
    assert_eq!(codes, vec![0, ResponseError::UnknownMemberId.code()]);
    assert_eq!(state(&c, "g"), "PreparingRebalance");
    let ja = c.join(req("g", &a, None)).await;
    assert_eq!((ja.error, ja.generation, ja.members.len()), (0, g1 + 2, 1));
}

#[tokio::test(start_paused = true)]
async fn groups_session_timeout_removes_member() {
    let (c, _, _) = coordinator(0);
    let (a, _) = stable_single(&c, "g", None).await;
    let b = spawn_join(&c, req("g", "", None));
    settle().await;
    let ja = c.join(req("g", &a, None)).await;
    let jb = b.await.expect("join task");
    let gen2 = ja.generation;
    let fb = {
        let c = c.clone();
        let id = jb.member_id.clone();
        tokio::spawn(async move { c.sync("g", &id, None, gen2, None, None, Vec::new()).await })
    };
    c.sync("g", &a, None, gen2, None, None, Vec::new()).await;
    assert_eq!(fb.await.expect("sync").error, 0);
    // A heartbeats every 3 s, B never again: after B's 10 s session it is removed.
    let mut saw_rebalance = false;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let code = c.heartbeat("g", &a, None, gen2);
        if code == ResponseError::RebalanceInProgress.code() {
            saw_rebalance = true;
            break;
        }
        assert_eq!(code, 0);
    }
    assert!(
        saw_rebalance,
        "B's session timeout must trigger a rebalance"
    );
    let ja = c.join(req("g", &a, None)).await;
    assert_eq!(
        (ja.error, ja.generation, ja.members.len()),
        (0, gen2 + 1, 1)
    );
    assert_eq!(
        c.heartbeat("g", &jb.member_id, None, gen2),
        ResponseError::UnknownMemberId.code()
    );
    // The last member times out too: the group becomes Empty.
    c.sync("g", &a, None, gen2 + 1, None, None, Vec::new())
        .await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(state(&c, "g"), "Empty");
}

#[tokio::test(start_paused = true)]
async fn groups_rebalance_timeout_exactly_one_rebalance() {
    // B keeps heartbeating but never rejoins (max.poll.interval.ms exceeded): the rebalance
    // completes at the rebalance timeout without it, once.
    let (c, _, _) = coordinator(0);
    let (a, _) = stable_single(&c, "g", None).await;
    let b = spawn_join(&c, req("g", "", None));
    settle().await;
    let ja = c.join(req("g", &a, None)).await;
    let jb = b.await.expect("join");
    let g2 = ja.generation;
    let fb = {
        let c = c.clone();
        let id = jb.member_id.clone();
        tokio::spawn(async move { c.sync("g", &id, None, g2, None, None, Vec::new()).await })
    };
    c.sync("g", &a, None, g2, None, None, Vec::new()).await;
    fb.await.expect("sync");
    // A third member arrives; A rejoins, B only heartbeats.
    let cj = spawn_join(&c, req("g", "", None));
    settle().await;
    let aj = spawn_join(&c, req("g", &a, None));
    let mut waited = 0;
    while !aj.is_finished() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        waited += 1;
        let code = c.heartbeat("g", &jb.member_id, None, g2);
        assert!(
            code == ResponseError::RebalanceInProgress.code()
                || code == ResponseError::UnknownMemberId.code()
        );
        assert!(
            waited < 40,
            "rebalance must complete at the 30 s rebalance timeout"
        );
    }
    let aj = aj.await.expect("join");
    let cj = cj.await.expect("join");
    assert_eq!((aj.error, cj.error), (0, 0));
    assert_eq!(aj.generation, g2 + 1, "exactly one rebalance");
    assert_eq!(aj.members.len(), 2);
    assert!(aj.members.iter().all(|(id, ..)| *id != jb.member_id));
    assert_eq!(
        c.heartbeat("g", &jb.member_id, None, g2),
        ResponseError::UnknownMemberId.code()
    );
    assert_eq!(gen_of(&c, "g"), g2 + 1);
}

#[tokio::test(start_paused = true)]
async fn groups_static_member_rejoins_without_rebalance() {
    let (c, log, _) = coordinator(0);
    let (a, g1) = stable_single(&c, "g", Some("inst-a")).await;
    assert!(a.starts_with("inst-a-"));
    let b = spawn_join(&c, req("g", "", Some("inst-b")));
    settle().await;
    let ja = c.join(req("g", &a, Some("inst-a"))).await;
    let jb = b.await.expect("join");
    let g2 = ja.generation;
    assert_eq!(g2, g1 + 1);
    let fb = {
        let c = c.clone();
        let id = jb.member_id.clone();
        tokio::spawn(async move {
            c.sync("g", &id, Some("inst-b"), g2, None, None, Vec::new())
                .await
        })
    };
    c.sync(
        "g",
        &a,
        Some("inst-a"),
        g2,
        None,
        None,
        vec![
            (a.clone(), Bytes::from_static(b"A")),
            (jb.member_id.clone(), Bytes::from_static(b"B")),
        ],
    )
    .await;
    assert_eq!(&fb.await.expect("sync").assignment[..], b"B");
    let records_before = log.all().len();
    // B restarts (new process, no member id) with the same instance id.
    let nb = c.join(req("g", "", Some("inst-b"))).await;
    assert_eq!(nb.error, 0);
    assert_ne!(nb.member_id, jb.member_id);
    assert_eq!(nb.generation, g2, "no rebalance for a known static member");
    assert_eq!(state(&c, "g"), "Stable");
    assert!(
        log.all().len() > records_before,
        "the new member id is stored"
    );
    let s = c
        .sync(
            "g",
            &nb.member_id,
            Some("inst-b"),
            g2,
            None,
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(
        (s.error, &s.assignment[..]),
        (0, &b"B"[..]),
        "keeps its assignment"
    );
    // The old member id is fenced.
    assert_eq!(
        c.heartbeat("g", &jb.member_id, Some("inst-b"), g2),
        ResponseError::FencedInstanceId.code()
    );
    assert_eq!(c.heartbeat("g", &nb.member_id, Some("inst-b"), g2), 0);
    assert_eq!(c.heartbeat("g", &a, Some("inst-a"), g2), 0);
    // The static leader restarting: v9 clients are told to skip the assignment.
    let mut r = req("g", "", Some("inst-a"));
    r.supports_skip_assignment = true;
    let na = c.join(r).await;
    assert_eq!((na.error, na.generation, na.skip_assignment), (0, g2, true));
    assert_eq!(na.leader, na.member_id);
    assert_eq!(na.members.len(), 2);
    // Leaving by instance id with a stale member id is fenced; with the right one it works.
    let codes = c
        .leave("g", &[(a.clone(), Some("inst-a".into()))])
        .unwrap_or_default();
    assert_eq!(codes, vec![ResponseError::FencedInstanceId.code()]);
    let codes = c
        .leave("g", &[(String::new(), Some("inst-b".into()))])
        .unwrap_or_default();
    assert_eq!(codes, vec![0]);
    assert_eq!(state(&c, "g"), "PreparingRebalance");
}

#[tokio::test(start_paused = true)]
async fn groups_initial_rebalance_delay_collects_members() {
    let (c, _, _) = coordinator(3000);
    let a = spawn_join(&c, req("g", "", None));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let b = spawn_join(&c, req("g", "", None));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        !a.is_finished(),
        "the first rebalance waits for the initial delay"
    );
    let (ja, jb) = (a.await.expect("join"), b.await.expect("join"));
    assert_eq!((ja.generation, jb.generation), (1, 1));
    assert_eq!(ja.members.len() + jb.members.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_concurrent_groups_rebalance_independently() {
    // Several groups, several members each, all joining at once (the pattern that produced
    // UNKNOWN_MEMBER_ID and empty assignments in another broker). Every member must end in
    // a stable generation holding every member, with its own non-empty assignment.
    let (c, _, _) = coordinator(0);
    const GROUPS: usize = 6;
    const MEMBERS: usize = 4;
    let mut tasks = Vec::new();
    for g in 0..GROUPS {
        for m in 0..MEMBERS {
            let c = c.clone();
            let group = format!("group-{g}");
            let instance = (m % 2 == 0).then(|| format!("{group}-static-{m}"));
            tasks.push(tokio::spawn(async move {
                let mut member = String::new();
                let mut errors = Vec::new();
                for _round in 0..200 {
                    let mut r = req(&group, &member, instance.as_deref());
                    r.require_known_member_id = true;
                    let j = c.join(r).await;
                    if j.error == ResponseError::MemberIdRequired.code() {
                        member = j.member_id;
                        continue;
                    }
                    if j.error != 0 {
                        errors.push(j.error);
                        if j.error == ResponseError::UnknownMemberId.code() {
                            member.clear();
                        }
                        continue;
                    }
                    member = j.member_id.clone();
                    let assignments = j
                        .members
                        .iter()
                        .map(|(id, ..)| (id.clone(), Bytes::from(id.clone().into_bytes())))
                        .collect();
                    let s = c
                        .sync(
                            &group,
                            &member,
                            instance.as_deref(),
                            j.generation,
                            None,
                            None,
                            assignments,
                        )
                        .await;
                    if s.error == ResponseError::RebalanceInProgress.code() {
                        continue;
                    }
                    if s.error != 0 {
                        errors.push(s.error);
                        continue;
                    }
                    assert_eq!(
                        &s.assignment[..],
                        member.as_bytes(),
                        "own, non-empty assignment"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let hb = c.heartbeat(&group, &member, instance.as_deref(), j.generation);
                    if hb == ResponseError::RebalanceInProgress.code() {
                        continue;
                    }
                    if hb != 0 {
                        errors.push(hb);
                        continue;
                    }
                    let d = c.describe(&group).expect("describe");
                    if d.state == "Stable" && d.members.len() == MEMBERS {
                        // Stay around until the others are done too.
                        for _ in 0..20 {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            if c.heartbeat(&group, &member, instance.as_deref(), j.generation) != 0
                            {
                                break;
                            }
                        }
                        return (errors, true);
                    }
                }
                (errors, false)
            }));
        }
    }
    let all = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(tasks))
        .await
        .expect("groups settle within 60 s");
    for r in all {
        let (errors, done) = r.expect("member task");
        assert!(done, "member never reached a full stable generation");
        assert!(errors.is_empty(), "unexpected errors: {errors:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn groups_offset_commit_rules() {
    let (c, _, _) = coordinator(0);
    let commit = |group: &str, member: &str, generation: i32, metadata: &str| CommitRequest {
        group_id: group.into(),
        member_id: member.into(),
        instance_id: None,
        generation,
        retention_ms: -1,
        partitions: vec![CommitPartition {
            topic: "t".into(),
            partition: 0,
            offset: 42,
            leader_epoch: 3,
            metadata: Some(metadata.into()),
        }],
        unknown_group_error: ResponseError::IllegalGeneration,
    };
    // Simple (generation -1) commits create an offsets-only group.
    assert_eq!(c.commit(commit("simple", "", -1, "m")).await, vec![0]);
    let f = c.fetch_offsets("simple", None).expect("fetch");
    assert_eq!(f.len(), 1);
    let v = f[0].1[0].1.clone().expect("committed");
    assert_eq!(
        (v.offset, v.leader_epoch, v.metadata.as_str()),
        (42, 3, "m")
    );
    // Unknown partitions answer -1; unknown groups too.
    let f = c
        .fetch_offsets("nope", Some(vec![("t".into(), vec![0, 1])]))
        .expect("fetch");
    assert!(f[0].1.iter().all(|(_, v)| v.is_none()));
    // A generation for a group that does not exist.
    assert_eq!(
        c.commit(commit("ghost", "m", 5, "")).await,
        vec![ResponseError::IllegalGeneration.code()]
    );
    // Metadata limit.
    let big = "x".repeat(4097);
    assert_eq!(
        c.commit(commit("simple", "", -1, &big)).await,
        vec![ResponseError::OffsetMetadataTooLarge.code()]
    );
    // A managed group: member and generation are checked.
    let (a, g1) = stable_single(&c, "g", None).await;
    assert_eq!(c.commit(commit("g", &a, g1, "")).await, vec![0]);
    assert_eq!(
        c.commit(commit("g", &a, g1 + 7, "")).await,
        vec![ResponseError::IllegalGeneration.code()]
    );
    assert_eq!(
        c.commit(commit("g", "stranger", g1, "")).await,
        vec![ResponseError::UnknownMemberId.code()]
    );
    assert_eq!(
        c.commit(commit("g", "", -1, "")).await,
        vec![ResponseError::UnknownMemberId.code()]
    );
    // During CompletingRebalance: REBALANCE_IN_PROGRESS.
    let b = spawn_join(&c, req("g", "", None));
    settle().await;
    let ja = c.join(req("g", &a, None)).await;
    let jb = b.await.expect("join");
    assert_eq!(state(&c, "g"), "CompletingRebalance");
    assert_eq!(
        c.commit(commit("g", &a, ja.generation, "")).await,
        vec![ResponseError::RebalanceInProgress.code()]
    );
    // OffsetDelete while subscribed; deleting the group while members exist.
    let r = c.delete_offsets("g", vec![("t".into(), vec![0])]).await;
    assert!(matches!(r, Ok(ref v) if v[0].1[0].1 == ResponseError::GroupSubscribedToTopic.code()));
    let r = c.delete_offsets("g", vec![("other".into(), vec![0])]).await;
    assert!(matches!(r, Ok(ref v) if v[0].1[0].1 == 0));
    assert_eq!(
        c.delete_group("g").await,
        ResponseError::NonEmptyGroup.code()
    );
    assert_eq!(
        c.delete_group("missing").await,
        ResponseError::GroupIdNotFound.code()
    );
    drop(jb);
    // Offsets-only group: deletable, and its offsets go with it.
    assert_eq!(c.delete_group("simple").await, 0);
    let f = c.fetch_offsets("simple", None).expect("fetch");
    assert!(f.is_empty());
    assert_eq!(
        c.delete_group("simple").await,
        ResponseError::GroupIdNotFound.code()
    );
}

#[tokio::test]
async fn groups_commit_is_answered_only_when_durable() {
    let (c, _, gate) = coordinator(0);
    gate.send_replace(false);
    let commit = CommitRequest {
        group_id: "g".into(),
        member_id: String::new(),
        instance_id: None,
        generation: -1,
        retention_ms: -1,
        partitions: vec![CommitPartition {
            topic: "t".into(),
            partition: 0,
            offset: 7,
            leader_epoch: -1,
            metadata: None,
        }],
        unknown_group_error: ResponseError::IllegalGeneration,
    };
    let pending = {
        let c = c.clone();
        tokio::spawn(async move { c.commit(commit).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !pending.is_finished(),
        "answered before the append was durable"
    );
    let f = c
        .fetch_offsets("g", Some(vec![("t".into(), vec![0])]))
        .expect("fetch");
    assert!(f[0].1[0].1.is_none(), "not visible before durable");
    gate.send_replace(true);
    assert_eq!(pending.await.expect("commit"), vec![0]);
    let f = c
        .fetch_offsets("g", Some(vec![("t".into(), vec![0])]))
        .expect("fetch");
    assert_eq!(f[0].1[0].1.as_ref().map(|v| v.offset), Some(7));
}

#[tokio::test(start_paused = true)]
async fn groups_state_survives_reload_from_the_log() {
    let (c, log, _) = coordinator(0);
    let (a, g1) = stable_single(&c, "consumers", Some("inst-1")).await;
    let commit =
        |group: &str, member: &str, generation: i32, topic: &str, offset: i64| CommitRequest {
            group_id: group.into(),
            member_id: member.into(),
            instance_id: None,
            generation,
            retention_ms: -1,
            partitions: vec![CommitPartition {
                topic: topic.into(),
                partition: 2,
                offset,
                leader_epoch: 1,
                metadata: Some(format!("meta-{offset}")),
            }],
            unknown_group_error: ResponseError::IllegalGeneration,
        };
    assert_eq!(
        c.commit(commit("consumers", &a, g1, "t", 10)).await,
        vec![0]
    );
    assert_eq!(
        c.commit(commit("consumers", &a, g1, "t", 20)).await,
        vec![0]
    );
    assert_eq!(c.commit(commit("simple", "", -1, "t", 5)).await, vec![0]);
    assert_eq!(c.commit(commit("simple", "", -1, "u", 6)).await, vec![0]);
    let r = c
        .delete_offsets("simple", vec![("u".into(), vec![2])])
        .await;
    assert!(r.is_ok());
    assert_eq!(c.commit(commit("gone", "", -1, "t", 1)).await, vec![0]);
    assert_eq!(c.delete_group("gone").await, 0);

    // A new coordinator (another node taking the partition) reads the same records.
    let c2 = GroupCoordinator::new(config(0));
    let (log2, _gate2) = MemLog::new();
    log2.records.lock().extend(log.all());
    c2.load_partition(0, log2, loaded(log.all()));
    let f = c2.fetch_offsets("consumers", None).expect("fetch");
    let v = f[0].1[0].1.clone().expect("offset");
    assert_eq!(
        (f[0].0.as_str(), f[0].1[0].0, v.offset, v.metadata.as_str()),
        ("t", 2, 20, "meta-20")
    );
    let f = c2.fetch_offsets("simple", None).expect("fetch");
    assert_eq!(f.len(), 1, "the deleted offset stays deleted");
    assert_eq!(f[0].1[0].1.as_ref().map(|v| v.offset), Some(5));
    assert!(
        c2.lookup("gone").ok().flatten().is_none(),
        "deleted group stays deleted"
    );
    let d = c2.describe("consumers").expect("describe");
    assert_eq!(
        (d.state, d.protocol.as_str(), d.members.len()),
        ("Stable", "range", 1)
    );
    assert_eq!(&d.members[0].5[..], b"a", "assignment restored");
    assert_eq!(gen_of(&c2, "consumers"), g1);
    // The restored static member goes on heartbeating, and keeps its place on restart.
    assert_eq!(c2.heartbeat("consumers", &a, Some("inst-1"), g1), 0);
    let j = c2.join(req("consumers", "", Some("inst-1"))).await;
    assert_eq!((j.error, j.generation), (0, g1));
    // Loading marks: requests wait, other partitions are not ours.
    c2.mark_loading(0);
    assert_eq!(
        c2.heartbeat("consumers", &a, None, g1),
        ResponseError::CoordinatorLoadInProgress.code()
    );
    c2.unload_partition(0);
    assert_eq!(
        c2.heartbeat("consumers", &a, None, g1),
        ResponseError::NotCoordinator.code()
    );
}

#[tokio::test(start_paused = true)]
async fn groups_offsets_expire_once_group_is_empty() {
    let (c, _, _) = coordinator(0);
    let (a, g1) = stable_single(&c, "g", None).await;
    let commit = CommitRequest {
        group_id: "g".into(),
        member_id: a.clone(),
        instance_id: None,
        generation: g1,
        retention_ms: -1,
        partitions: vec![CommitPartition {
            topic: "t".into(),
            partition: 0,
            offset: 1,
            leader_epoch: -1,
            metadata: None,
        }],
        unknown_group_error: ResponseError::IllegalGeneration,
    };
    assert_eq!(c.commit(commit).await, vec![0]);
    let retention = c.config().offsets_retention_ms;
    let now = crate::now_ms();
    // Stable and subscribed to "t": never expires.
    c.expire_offsets(now + retention * 2).await;
    assert_eq!(c.fetch_offsets("g", None).expect("fetch").len(), 1);
    // Empty: expires `retention` after the group emptied, and the group goes with it.
    assert_eq!(c.leave("g", &[(a, None)]).unwrap_or_default(), vec![0]);
    settle().await;
    assert_eq!(state(&c, "g"), "Empty");
    let emptied = crate::now_ms();
    c.expire_offsets(emptied + retention - 1000).await;
    assert_eq!(c.fetch_offsets("g", None).expect("fetch").len(), 1);
    c.expire_offsets(emptied + retention + 1000).await;
    assert!(c.fetch_offsets("g", None).expect("fetch").is_empty());
    assert!(c.lookup("g").ok().flatten().is_none());
}

#[tokio::test(start_paused = true)]
async fn groups_list_and_describe() {
    let (c, _, _) = coordinator(0);
    let (a, _) = stable_single(&c, "g1", None).await;
    let list = c.list_groups().expect("list");
    assert_eq!(
        list,
        vec![("g1".to_string(), "consumer".to_string(), "Stable")]
    );
    let d = c.describe("g1").expect("describe");
    assert_eq!(d.members[0].0, a);
    assert_eq!(d.members[0].2, "client");
    assert_eq!(d.members[0].4, subscription(&["t"]));
    assert_eq!(c.describe("none").map(|d| d.state).ok(), Some("Dead"));
    assert_eq!(
        subscription_topics(&subscription(&["a", "b"])),
        Some(vec!["a".to_string(), "b".to_string()])
    );
    assert_eq!(subscription_topics(b"\x00"), None);
    assert_eq!(subscription_topics(b"\x00\x00\xff\xff\xff"), None);
}

/// Kafka: when the last member of a stable group leaves, the rebalance it starts completes at
/// once (nobody left to wait for) and the group is Empty, so it can be deleted right away.
#[tokio::test(start_paused = true)]
async fn groups_last_member_leaving_empties_the_group_at_once() {
    let (c, _, _) = coordinator(0);
    let (a, _) = stable_single(&c, "g", None).await;
    assert_eq!(state(&c, "g"), "Stable");
    let codes = c.leave("g", &[(a.clone(), None)]).expect("leave");
    assert_eq!(codes, vec![0]);
    assert_eq!(state(&c, "g"), "Empty");
    assert_eq!(c.delete_group("g").await, 0);
}
