//! Metadata: brokers, cluster id, controller, and topics with their partitions. Unknown
//! topics are created when the client and the broker both allow it.

use crate::Broker;
use crate::handlers::topics;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use std::sync::Arc;
use std::time::Duration;

/// Reported when the client did not ask for authorized operations.
const OPERATIONS_OMITTED: i32 = i32::MIN;

pub async fn handle(broker: &Arc<Broker>, version: i16, req: MetadataRequest) -> MetadataResponse {
    // v0 has no null "all topics": an empty list means all. v4+ lets the client forbid
    // auto-creation; before v4 it is always allowed.
    let allow_create =
        broker.config.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
    let requested: Option<Vec<(Option<String>, uuid::Uuid)>> = match req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(
            t.into_iter()
                .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id))
                .collect(),
        ),
    };

    let mut topics = Vec::new();
    match requested {
        None => {
            let names: Vec<String> = broker.meta.read(|s| s.topics.keys().cloned().collect());
            for name in names {
                topics.push(describe_topic(broker, &name, version));
            }
        }
        Some(list) => {
            for (name, id) in list {
                let name = match name {
                    Some(n) => n,
                    None => match broker.topic_name_by_id(&id) {
                        Some(n) => n,
                        None => {
                            topics.push(
                                MetadataResponseTopic::default()
                                    .with_error_code(ResponseError::UnknownTopicId.code())
                                    .with_topic_id(id)
                                    .with_topic_authorized_operations(OPERATIONS_OMITTED),
                            );
                            continue;
                        }
                    },
                };
                let exists = broker.meta.read(|s| s.topics.contains_key(&name));
                if !exists {
                    if let Err(e) = topics::validate_name(&name) {
                        tracing::debug!(topic = name, reason = e, "invalid topic name in metadata");
                        topics.push(error_topic(&name, ResponseError::InvalidTopicException));
                        continue;
                    }
                    if !allow_create {
                        topics.push(error_topic(&name, ResponseError::UnknownTopicOrPartition));
                        continue;
                    }
                    let partitions = broker.config.num_partitions;
                    let spread = shale_meta::Placement::Spread;
                    match topics::create_topic(
                        broker,
                        &name,
                        partitions,
                        Default::default(),
                        spread,
                    )
                    .await
                    {
                        Ok(()) => tracing::info!(topic = name, partitions, "auto-created topic"),
                        Err((ResponseError::TopicAlreadyExists, _)) => {}
                        Err((code, msg)) => {
                            tracing::warn!(topic = name, error = msg, "auto-creation failed");
                            topics.push(error_topic(&name, code));
                            continue;
                        }
                    }
                }
                topics.push(describe_topic(broker, &name, version));
            }
        }
    }

    MetadataResponse::default()
        .with_brokers(brokers(broker))
        .with_cluster_id(Some(StrBytes::from_string(cluster_id(broker))))
        .with_controller_id(BrokerId(broker.config.node_id))
        .with_topics(topics)
        .with_cluster_authorized_operations(OPERATIONS_OMITTED)
}

pub(crate) fn cluster_id(broker: &Broker) -> String {
    broker.meta.read(|s| s.cluster_id.clone())
}

/// How long Metadata keeps listing a broker after it was fenced. Its partitions name their
/// new owners from the same moment, so clients move them first and drop the broker after:
/// librdkafka, seeing a broker leave the list in the response that moves its partitions,
/// decommissions it and parks those partitions on its internal broker until the next
/// one-second topic scan (a second of unavailability on every failover). Three seconds cover
/// a client's next metadata after the move. Not free: no partition or coordinator points at
/// the dead node, but admin calls sent to every listed broker (ListGroups, ListTransactions)
/// fail or wait on it meanwhile, as they do against Kafka until its session timeout.
pub(crate) const FENCED_BROKER_LISTED: Duration = Duration::from_secs(3);

/// The brokers Metadata lists: the live ones, and others fenced less than
/// [`FENCED_BROKER_LISTED`] ago. This node lists itself only while its registration is not
/// fenced: a restarted node whose old registration was fenced is not listed by itself until
/// it registered again (readiness probes rely on that).
pub(crate) fn brokers(broker: &Broker) -> Vec<MetadataResponseBroker> {
    let now_ms = crate::now_ms();
    let me = broker.config.node_id as u64;
    brokers_where(broker, |id, b| {
        if id == me {
            !b.fenced
        } else {
            listed(b, now_ms)
        }
    })
}

/// A fenced broker's stamp is the controller's clock: bounded both ways, so a clock far
/// behind or ahead of the controller's cannot list it for longer.
fn listed(b: &shale_meta::BrokerRegistration, now_ms: i64) -> bool {
    let grace = FENCED_BROKER_LISTED.as_millis() as i64;
    !b.fenced || (now_ms - b.fenced_at_ms).abs() < grace
}

/// The live brokers (DescribeCluster: an operator's view of who serves now).
pub(crate) fn live_brokers(broker: &Broker) -> Vec<MetadataResponseBroker> {
    brokers_where(broker, |_, b| !b.fenced)
}

fn brokers_where(
    broker: &Broker,
    keep: impl Fn(u64, &shale_meta::BrokerRegistration) -> bool,
) -> Vec<MetadataResponseBroker> {
    let mut nodes: Vec<MetadataResponseBroker> = broker.meta.read(|s| {
        s.nodes
            .values()
            .filter(|n| s.brokers.get(&n.id).is_none_or(|b| keep(n.id, b)))
            .map(|n| {
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(n.id as i32))
                    .with_host(StrBytes::from_string(n.host.clone()))
                    .with_port(i32::from(n.port))
                    .with_rack(n.rack.clone().map(StrBytes::from_string))
            })
            .collect()
    });
    if nodes.is_empty() {
        nodes.push(
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(broker.config.node_id))
                .with_host(StrBytes::from_string(broker.config.advertised_host.clone()))
                .with_port(i32::from(broker.config.advertised_port)),
        );
    }
    nodes
}

fn error_topic(name: &str, code: ResponseError) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(code.code())
        .with_name(Some(TopicName(StrBytes::from_string(name.to_string()))))
        .with_topic_authorized_operations(OPERATIONS_OMITTED)
}

fn describe_topic(broker: &Broker, name: &str, _version: i16) -> MetadataResponseTopic {
    let found = broker.meta.read(|s| {
        let t = s.topics.get(name)?;
        let parts: Vec<(u64, i32, bool)> = t
            .partitions
            .iter()
            .map(|p| {
                let epoch = s.streams.get(&p.stream_id).map(|m| m.epoch).unwrap_or(0);
                let fenced = s.brokers.get(&p.owner).is_some_and(|b| b.fenced);
                (p.owner, leader_epoch(epoch), fenced)
            })
            .collect();
        Some((t.id, parts))
    });
    let Some((id, parts)) = found else {
        return error_topic(name, ResponseError::UnknownTopicOrPartition);
    };
    let partitions = parts
        .into_iter()
        .enumerate()
        .map(|(i, (owner, epoch, fenced))| partition_entry(i as i32, owner, epoch, fenced))
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(name.to_string()))))
        .with_topic_id(uuid::Uuid::from_bytes(id))
        .with_is_internal(topics::is_internal(name))
        .with_partitions(partitions)
        .with_topic_authorized_operations(OPERATIONS_OMITTED)
}

/// One partition of a Metadata answer: its owner leads it, unless the owner is fenced and
/// the move is not applied yet (or no live broker can take it). Then, as Kafka for a
/// partition whose only replica is offline, it has no leader: clients re-ask at once
/// (librdkafka every 100 ms and up) instead of trying the dead node.
fn partition_entry(index: i32, owner: u64, epoch: i32, fenced: bool) -> MetadataResponsePartition {
    let replica = BrokerId(owner as i32);
    let p = MetadataResponsePartition::default()
        .with_partition_index(index)
        .with_leader_epoch(epoch)
        .with_replica_nodes(vec![replica]);
    if fenced {
        p.with_error_code(ResponseError::LeaderNotAvailable.code())
            .with_leader_id(BrokerId(-1))
            .with_offline_replicas(vec![replica])
    } else {
        p.with_leader_id(replica).with_isr_nodes(vec![replica])
    }
}

/// Checks a client's `current_leader_epoch` (-1: no check) against the partition's, as Kafka
/// does: a newer one is UNKNOWN_LEADER_EPOCH (this broker is behind), an older one
/// FENCED_LEADER_EPOCH (the client is behind and must refresh metadata).
pub(crate) fn check_leader_epoch(requested: i32, current: i32) -> Result<(), ResponseError> {
    if requested < 0 || requested == current {
        Ok(())
    } else if requested > current {
        Err(ResponseError::UnknownLeaderEpoch)
    } else {
        Err(ResponseError::FencedLeaderEpoch)
    }
}

/// Kafka's leader epoch for a stream epoch (bumped on every ownership change).
pub(crate) fn leader_epoch(stream_epoch: u64) -> i32 {
    i32::try_from(stream_epoch).unwrap_or(i32::MAX)
}

/// KIP-951: where a partition this node refused with NOT_LEADER_OR_FOLLOWER is served now,
/// so a client can go there without a metadata round trip.
pub(crate) struct LeaderHint {
    pub id: i32,
    pub epoch: i32,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
}

/// The owner of `topic`-`partition` with its leader epoch and endpoint, unless that is this
/// node (nothing better to say) or a broker not live now (a client should wait for metadata
/// rather than try it).
pub(crate) fn leader_hint(broker: &Broker, topic: &str, partition: i32) -> Option<LeaderHint> {
    let me = broker.config.node_id as u64;
    broker.meta.read(|s| {
        let p = s
            .topics
            .get(topic)?
            .partitions
            .get(usize::try_from(partition).ok()?)?;
        if p.owner == me || s.brokers.get(&p.owner).is_none_or(|b| b.fenced) {
            return None;
        }
        let node = s.nodes.get(&p.owner)?;
        let epoch = s.streams.get(&p.stream_id).map_or(0, |m| m.epoch);
        Some(LeaderHint {
            id: i32::try_from(p.owner).ok()?,
            epoch: leader_epoch(epoch),
            host: node.host.clone(),
            port: node.port,
            rack: node.rack.clone(),
        })
    })
}

/// The KIP-951 hints of one response: each refused partition's leader, and the endpoints of
/// those leaders, once each (Produce and Fetch carry the same fields in their own types).
#[derive(Default)]
pub(crate) struct LeaderHints {
    pub endpoints: Vec<LeaderHint>,
}

impl LeaderHints {
    /// (leader id, leader epoch) of a refused partition, noting the leader's endpoint.
    pub(crate) fn of(
        &mut self,
        broker: &Broker,
        topic: &str,
        partition: i32,
    ) -> Option<(i32, i32)> {
        let h = leader_hint(broker, topic, partition)?;
        let leader = (h.id, h.epoch);
        if !self.endpoints.iter().any(|e| e.id == h.id) {
            self.endpoints.push(h);
        }
        Some(leader)
    }
}

/// The leader epoch Metadata reports for `topic`-`partition` now.
pub(crate) fn leader_epoch_of(broker: &Broker, topic: &str, partition: i32) -> Option<i32> {
    broker.meta.read(|s| {
        let p = s
            .topics
            .get(topic)?
            .partitions
            .get(usize::try_from(partition).ok()?)?;
        Some(leader_epoch(
            s.streams.get(&p.stream_id).map_or(0, |m| m.epoch),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_whose_owner_is_fenced_has_no_leader_until_it_moves() {
        let moving = partition_entry(3, 2, 7, true);
        assert_eq!(moving.error_code, ResponseError::LeaderNotAvailable.code());
        assert_eq!(moving.leader_id, BrokerId(-1));
        assert_eq!(moving.offline_replicas, vec![BrokerId(2)]);
        assert!(moving.isr_nodes.is_empty());
        let led = partition_entry(3, 2, 7, false);
        assert_eq!(
            (led.error_code, led.leader_id, led.leader_epoch),
            (0, BrokerId(2), 7)
        );
        assert_eq!(led.isr_nodes, vec![BrokerId(2)]);
    }

    fn registration(fenced: bool, fenced_at_ms: i64) -> shale_meta::BrokerRegistration {
        shale_meta::BrokerRegistration {
            epoch: 1,
            incarnation: [1; 16],
            fenced,
            fenced_at_ms,
        }
    }

    #[test]
    fn a_fenced_broker_stays_listed_briefly_so_clients_move_its_partitions_first() {
        let now = 1_800_000_000_000;
        let grace = FENCED_BROKER_LISTED.as_millis() as i64;
        assert!(
            listed(&registration(false, 0), now),
            "live brokers are listed"
        );
        assert!(listed(&registration(true, now), now), "just fenced");
        assert!(listed(&registration(true, now - grace + 1), now));
        assert!(
            !listed(&registration(true, now - grace), now),
            "gone after the grace"
        );
        // Fenced by a log entry from before the stamp: as Kafka, left out.
        assert!(!listed(&registration(true, 0), now));
        // A stamp from a controller clock far ahead does not keep it listed either.
        assert!(!listed(&registration(true, now + grace), now));
    }
}
