//! The metadata quorum across nodes, over real TCP on 127.0.0.1: three voters elect a
//! leader, a write made on any node is forwarded to it and applied everywhere, a read after
//! a read barrier sees every acknowledged write, the quorum survives its leader stopping,
//! and a voter that missed entries catches up from the log or from a snapshot.

mod common;

use common::create_topic;
use shale_meta::{MetaConfig, MetaNode, MetaOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    voters: BTreeMap<u64, String>,
    nodes: Vec<Option<Arc<MetaNode>>>,
    options: MetaOptions,
}

fn config(id: u64, dir: &Path, voters: &BTreeMap<u64, String>) -> MetaConfig {
    MetaConfig {
        node_id: id,
        data_dir: dir.to_path_buf(),
        rpc_addr: voters[&id].clone(),
        voters: voters.clone(),
    }
}

impl Cluster {
    async fn start(n: u64, options: MetaOptions) -> Cluster {
        let mut listeners = Vec::new();
        let mut voters = BTreeMap::new();
        for id in 1..=n {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            voters.insert(id, l.local_addr().unwrap().to_string());
            listeners.push(l);
        }
        let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        // All at once: the lowest id initializes, the others wait to hear from it.
        let starts = listeners.into_iter().enumerate().map(|(i, l)| {
            let cfg = config(i as u64 + 1, dirs[i].path(), &voters);
            let options = options.clone();
            tokio::spawn(async move { MetaNode::start_with_listener(cfg, options, Some(l)).await })
        });
        let mut nodes = Vec::new();
        for s in starts.collect::<Vec<_>>() {
            nodes.push(Some(s.await.unwrap().expect("start voter")));
        }
        Cluster {
            dirs,
            voters,
            nodes,
            options,
        }
    }

    fn node(&self, id: u64) -> &Arc<MetaNode> {
        self.nodes[id as usize - 1].as_ref().expect("node running")
    }

    fn running(&self) -> impl Iterator<Item = &Arc<MetaNode>> {
        self.nodes.iter().flatten()
    }

    /// The leader every running node agrees on, once they do.
    async fn leader(&self) -> u64 {
        for _ in 0..200 {
            let seen: Vec<_> = self.running().map(|n| n.leader()).collect();
            if let Some(Some(l)) = seen.first()
                && seen.iter().all(|s| *s == Some(*l))
                && self.nodes[*l as usize - 1].is_some()
            {
                return *l;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no agreed leader");
    }

    async fn stop(&mut self, id: u64) {
        let node = self.nodes[id as usize - 1].take().expect("running");
        node.shutdown().await;
    }

    async fn restart(&mut self, id: u64) {
        let dir: PathBuf = self.dirs[id as usize - 1].path().to_path_buf();
        let listener = TcpListener::bind(&self.voters[&id]).await.unwrap();
        let node = MetaNode::start_with_listener(
            config(id, &dir, &self.voters),
            self.options.clone(),
            Some(listener),
        )
        .await
        .expect("restart voter");
        self.nodes[id as usize - 1] = Some(node);
    }
}

fn has_topic(node: &MetaNode, name: &str) -> bool {
    node.read(|s| s.topics.contains_key(name))
}

fn quick() -> MetaOptions {
    MetaOptions {
        startup_timeout: Duration::from_secs(20),
        ..MetaOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_voters_elect_one_leader_and_a_write_on_a_follower_is_applied_everywhere() {
    let c = Cluster::start(3, quick()).await;
    let leader = c.leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    // Every node agrees on one cluster id (the first writer's).
    let ids: Vec<String> = c
        .running()
        .map(|n| n.read(|s| s.cluster_id.clone()))
        .collect();
    assert!(
        ids.iter().all(|id| !id.is_empty() && *id == ids[0]),
        "{ids:?}"
    );

    c.node(follower)
        .write(create_topic("orders", 3))
        .await
        .unwrap();
    for n in c.running() {
        n.read_barrier().await.unwrap();
        assert!(
            has_topic(n, "orders"),
            "node {} misses the topic",
            n.node_id()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_after_a_barrier_on_any_node_sees_every_acknowledged_write() {
    let c = Cluster::start(3, quick()).await;
    let leader = c.leader().await;
    for i in 0..20 {
        let name = format!("t{i}");
        // Acknowledged by the leader, then read at once on another node.
        c.node(leader).write(create_topic(&name, 1)).await.unwrap();
        let reader = c.node((leader + i as u64) % 3 + 1);
        reader.read_barrier().await.unwrap();
        assert!(
            has_topic(reader, &name),
            "node {} misses {name}",
            reader.node_id()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_leader_stops_another_is_elected_writes_resume_and_it_catches_up_on_return() {
    let mut c = Cluster::start(3, quick()).await;
    let old = c.leader().await;
    c.node(old).write(create_topic("before", 1)).await.unwrap();
    c.stop(old).await;
    let new = c.leader().await;
    assert_ne!(new, old);
    let other = (1..=3).find(|id| *id != old && *id != new).unwrap();
    // A write made on the remaining follower reaches the new leader.
    c.node(other).write(create_topic("after", 1)).await.unwrap();
    c.restart(old).await;
    let back = c.node(old);
    back.read_barrier().await.unwrap();
    assert!(has_topic(back, "before") && has_topic(back, "after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_voter_that_missed_entries_purged_from_the_log_catches_up_from_a_snapshot() {
    let mut c = Cluster::start(
        3,
        MetaOptions {
            snapshot_logs: 5,
            keep_logs: 0,
            ..quick()
        },
    )
    .await;
    let leader = c.leader().await;
    let lagging = (1..=3).find(|id| *id != leader).unwrap();
    c.stop(lagging).await;
    for i in 0..30 {
        c.node(leader)
            .write(create_topic(&format!("s{i}"), 1))
            .await
            .unwrap();
    }
    c.node(leader).trigger_snapshot().await.unwrap();
    c.restart(lagging).await;
    let n = c.node(lagging);
    n.read_barrier().await.unwrap();
    for i in 0..30 {
        assert!(
            has_topic(n, &format!("s{i}")),
            "s{i} missing after catch-up"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_quorum_a_write_fails_instead_of_hanging() {
    let mut c = Cluster::start(3, quick()).await;
    let leader = c.leader().await;
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    for id in others {
        c.stop(id).await;
    }
    let r = c.node(leader).write(create_topic("lonely", 1)).await;
    // Not acknowledged; the entry may still commit once a quorum is back, which is why the
    // error says the outcome is unknown rather than that nothing happened.
    let e = r.expect_err("a write without a quorum must not be acknowledged");
    assert!(e.to_string().contains("not committed"), "{e}");
}

/// A broker's registration, with a port that accepts connections as a live broker's Kafka
/// listener does: the leader's crash probe (a refused connect fences at once) must see a
/// live process here, so these tests exercise the session. The listeners live as long as
/// the test process.
fn broker(id: u64) -> shale_meta::NodeMeta {
    static LISTENERS: std::sync::Mutex<Vec<std::net::TcpListener>> =
        std::sync::Mutex::new(Vec::new());
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    LISTENERS.lock().unwrap().push(l);
    shale_meta::NodeMeta {
        id,
        host: "127.0.0.1".into(),
        port,
        rack: None,
    }
}

const HEARTBEAT: Duration = Duration::from_millis(250);
const SESSION: Duration = Duration::from_millis(1500);

/// Registers broker `id` on its own metadata node and starts its heartbeats.
async fn register(c: &Cluster, id: u64) -> (u64, shale_meta::Heartbeats) {
    let n = c.node(id);
    let epoch = n.register_broker(broker(id), [id as u8; 16]).await.unwrap();
    (epoch, n.start_heartbeats(id, epoch, HEARTBEAT, SESSION))
}

/// Polls `f` on `node` (after a read barrier) until it holds, for up to 10 s.
async fn eventually(node: &MetaNode, what: &str, f: impl Fn(&shale_meta::ClusterState) -> bool) {
    for _ in 0..200 {
        node.read_barrier().await.unwrap();
        if node.read(&f) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never: {what}");
}

fn owners(s: &shale_meta::ClusterState, topic: &str) -> Vec<u64> {
    s.topics[topic].partitions.iter().map(|p| p.owner).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_whose_heartbeats_stop_is_fenced_and_its_partitions_move_to_the_live_brokers() {
    let c = Cluster::start(3, quick()).await;
    let mut beats = BTreeMap::new();
    for id in 1..=3 {
        beats.insert(id, register(&c, id).await.1);
    }
    let mut topic = create_topic("moving", 6);
    if let shale_meta::TopicCommand::CreateTopic { owner, .. } = &mut topic {
        *owner = 3;
    }
    c.node(1).write(topic).await.unwrap();
    // Broker 3 stops heartbeating; its metadata voter keeps running.
    drop(beats.remove(&3));
    eventually(c.node(1), "broker 3 fenced and its partitions moved", |s| {
        s.brokers[&3].fenced && owners(s, "moving").iter().all(|o| *o != 3)
    })
    .await;
    let (owners, brokers) = c.node(1).read(|s| (owners(s, "moving"), s.brokers.clone()));
    // Spread evenly over the two live brokers, which were never fenced.
    assert_eq!(owners.iter().filter(|o| **o == 1).count(), 3, "{owners:?}");
    assert_eq!(owners.iter().filter(|o| **o == 2).count(), 3, "{owners:?}");
    assert!(!brokers[&1].fenced && !brokers[&2].fenced);
    for b in beats.values() {
        assert_eq!(*b.status().borrow(), shale_meta::BrokerStatus::Live);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_topic_and_its_added_partitions_spread_over_the_live_brokers() {
    let c = Cluster::start(3, quick()).await;
    let _beats: Vec<_> = futures::future::join_all((1..=3).map(|id| register(&c, id))).await;
    let mut topic = create_topic("spread", 6);
    if let shale_meta::TopicCommand::CreateTopic { placement, .. } = &mut topic {
        *placement = shale_meta::Placement::Spread;
    }
    // Written through a follower: the owners are decided where the write is applied.
    c.node(2).write(topic).await.unwrap();
    c.node(1).read_barrier().await.unwrap();
    let spread_over = |s: &shale_meta::ClusterState| {
        let o = owners(s, "spread");
        (1..=3)
            .map(|b| o.iter().filter(|x| **x == b).count())
            .collect::<Vec<_>>()
    };
    assert_eq!(c.node(1).read(spread_over), [2, 2, 2]);
    c.node(3)
        .write(shale_meta::TopicCommand::CreatePartitions {
            name: "spread".into(),
            total: 9,
            owner: 3,
            placement: shale_meta::Placement::Spread,
        })
        .await
        .unwrap();
    c.node(1).read_barrier().await.unwrap();
    assert_eq!(c.node(1).read(spread_over), [3, 3, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fenced_broker_is_told_so_and_registering_again_gives_it_a_new_live_epoch() {
    let c = Cluster::start(3, quick()).await;
    // Brokers 1 and 3 stay live (the last live broker is never fenced).
    let _live = (register(&c, 1).await, register(&c, 3).await);
    let (epoch, beats) = register(&c, 2).await;
    // A retried registration of the same process keeps its epoch.
    let again = c.node(2).register_broker(broker(2), [2; 16]).await.unwrap();
    assert_eq!(again, epoch);
    drop(beats);
    eventually(c.node(2), "broker 2 fenced", |s| s.brokers[&2].fenced).await;
    // Heartbeats at the fenced epoch report it; the broker registers again.
    let stale = c.node(2).start_heartbeats(2, epoch, HEARTBEAT, SESSION);
    let mut status = stale.status();
    tokio::time::timeout(
        Duration::from_secs(5),
        status.wait_for(|s| *s == shale_meta::BrokerStatus::Fenced),
    )
    .await
    .expect("a fenced registration hears it")
    .unwrap();
    let (new_epoch, _beats) = register(&c, 2).await;
    assert!(new_epoch > epoch);
    eventually(c.node(2), "broker 2 live again", |s| {
        !s.brokers[&2].fenced && s.brokers[&2].epoch == new_epoch
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_metadata_leader_stopping_fences_no_broker_that_keeps_heartbeating() {
    let mut c = Cluster::start(3, quick()).await;
    let mut beats = BTreeMap::new();
    for id in 1..=3 {
        beats.insert(id, register(&c, id).await.1);
    }
    let old = c.leader().await;
    // The leader's process goes: its voter and its broker's heartbeats with it.
    c.stop(old).await;
    drop(beats.remove(&old));
    let new = c.leader().await;
    eventually(c.node(new), "the stopped node's broker fenced", |s| {
        s.brokers[&old].fenced
    })
    .await;
    // Two more sessions: the healthy brokers were never fenced.
    tokio::time::sleep(SESSION * 2).await;
    let brokers = c.node(new).read(|s| s.brokers.clone());
    for id in (1..=3).filter(|id| *id != old) {
        assert!(!brokers[&id].fenced, "healthy broker {id} fenced");
    }
}

/// A node outside the voters (Kafka's `process.roles=broker`): it joins as a learner.
async fn start_learner(c: &Cluster, id: u64) -> (tempfile::TempDir, Arc<MetaNode>) {
    let dir = tempfile::tempdir().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = MetaConfig {
        node_id: id,
        data_dir: dir.path().to_path_buf(),
        rpc_addr: l.local_addr().unwrap().to_string(),
        voters: c.voters.clone(),
    };
    let node = MetaNode::start_with_listener(cfg, c.options.clone(), Some(l))
        .await
        .expect("start learner");
    (dir, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_outside_the_voters_joins_as_a_learner_with_a_full_replica_but_no_vote() {
    let mut c = Cluster::start(3, quick()).await;
    c.node(1).write(create_topic("early", 1)).await.unwrap();
    let (_dir, learner) = start_learner(&c, 4).await;
    assert_eq!(learner.learner_ids(), [4].into());
    assert_eq!(learner.voter_ids(), [1, 2, 3].into());
    // A full replica: what was written before it joined, and its own forwarded writes.
    assert!(has_topic(&learner, "early"));
    learner
        .write(create_topic("from-learner", 1))
        .await
        .unwrap();
    for n in c.running() {
        n.read_barrier().await.unwrap();
        assert!(has_topic(n, "from-learner"));
    }
    assert_eq!(
        learner.read(|s| s.cluster_id.clone()),
        c.node(1).read(|s| s.cluster_id.clone())
    );
    // No vote: with two of the three voters gone, the learner does not make a majority.
    let leader = c.leader().await;
    for id in (1..=3).filter(|id| *id != leader) {
        c.stop(id).await;
    }
    let e = c
        .node(leader)
        .write(create_topic("no-quorum", 1))
        .await
        .expect_err("a learner does not count towards the quorum");
    assert!(e.to_string().contains("not committed"), "{e}");
    learner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn voters_change_at_run_time_a_learner_is_promoted_and_a_voter_demoted() {
    let mut c = Cluster::start(3, quick()).await;
    let (_dir, learner) = start_learner(&c, 4).await;
    // Asked on any node: the change is forwarded to the leader.
    learner.add_voter(4).await.unwrap();
    c.node(2).remove_voter(3).await.unwrap();
    for n in c.running().chain([&learner]) {
        n.read_barrier().await.unwrap();
    }
    assert_eq!(c.node(1).voter_ids(), [1, 2, 4].into());
    assert_eq!(c.node(1).learner_ids(), [3].into());
    // The quorum is {1, 2, 4} now: node 3 can stop and writes still commit, on any node.
    c.stop(3).await;
    learner
        .write(create_topic("after-change", 1))
        .await
        .unwrap();
    c.node(1).read_barrier().await.unwrap();
    assert!(has_topic(c.node(1), "after-change"));
    // The demoted voter restarts as a member (a learner) and catches up.
    c.restart(3).await;
    c.node(3).read_barrier().await.unwrap();
    assert!(has_topic(c.node(3), "after-change"));
    learner.shutdown().await;
}
