//! The encoding of [`ClusterState`] inside a snapshot (the `data` part of `snapshot.bin`, and
//! what a leader would send a lagging follower).
//!
//! `data = version byte | body | crc32c(version byte and body), LE u32`. Version
//! [`FORMAT_PROTO`] is a protobuf message ([`PbState`], hand-written prost structs: the schema
//! lives here, not in a `.proto` file). The checksum is the data's own (the snapshot file has
//! another one) because snapshot data also travels without the file, to a follower, and a
//! protobuf cut at a field boundary would otherwise decode "successfully" with entries missing. Protobuf rather
//! than a positional encoding so that adding a field later keeps old snapshots readable in
//! both directions, as `#[serde(default)]` did for JSON. Snapshots written before this format
//! are JSON objects, so their first byte is `{`: they are still read.
//!
//! Encoding streams entry by entry straight from the state's maps instead of first building a
//! `PbState` copy of the whole state, so a snapshot never needs twice the state in memory.

use crate::fsutil::invalid_data;
use crate::{ClusterState, DeadObject, NodeMeta, PartitionMeta, TopicMeta};
use prost::Message;
use prost::encoding::{message, string, uint64};
use shale_stream::{ObjectMeta, ObjectRange, StreamMeta};
use std::collections::BTreeMap;
use std::io;

/// First byte of a protobuf-encoded snapshot body.
pub(crate) const FORMAT_PROTO: u8 = 2;
/// First byte of a legacy JSON body (`{`).
const FORMAT_JSON: u8 = b'{';

#[derive(Clone, PartialEq, Message)]
pub(crate) struct PbState {
    #[prost(string, tag = "1")]
    pub cluster_id: String,
    #[prost(message, repeated, tag = "2")]
    pub nodes: Vec<PbNode>,
    #[prost(message, repeated, tag = "3")]
    pub topics: Vec<PbTopic>,
    #[prost(message, repeated, tag = "4")]
    pub streams: Vec<PbStream>,
    #[prost(message, repeated, tag = "5")]
    pub objects: Vec<PbObject>,
    #[prost(message, repeated, tag = "6")]
    pub dead_objects: Vec<PbDeadObject>,
    #[prost(uint64, tag = "7")]
    pub next_stream_id: u64,
    #[prost(uint64, tag = "8")]
    pub next_object_id: u64,
    #[prost(uint64, tag = "9")]
    pub next_producer_id: u64,
    #[prost(message, repeated, tag = "10")]
    pub brokers: Vec<PbBroker>,
    #[prost(uint64, tag = "11")]
    pub last_broker_epoch: u64,
    #[prost(message, repeated, tag = "12")]
    pub scram_credentials: Vec<PbScramCredential>,
    #[prost(message, repeated, tag = "13")]
    pub acls: Vec<PbAcl>,
    #[prost(uint64, tag = "14")]
    pub next_acl_id: u64,
    #[prost(message, repeated, tag = "15")]
    pub client_quotas: Vec<PbClientQuota>,
}

/// One entity's client quotas.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct PbClientQuota {
    #[prost(message, repeated, tag = "1")]
    pub entity: Vec<PbQuotaEntityPart>,
    #[prost(message, repeated, tag = "2")]
    pub values: Vec<PbQuotaValue>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct PbQuotaEntityPart {
    #[prost(string, tag = "1")]
    pub entity_type: String,
    /// Absent: the type's default entity.
    #[prost(string, optional, tag = "2")]
    pub name: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct PbQuotaValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(double, tag = "2")]
    pub value: f64,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct PbAcl {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int32, tag = "2")]
    pub resource_type: i32,
    #[prost(string, tag = "3")]
    pub resource_name: String,
    #[prost(int32, tag = "4")]
    pub pattern_type: i32,
    #[prost(string, tag = "5")]
    pub principal: String,
    #[prost(string, tag = "6")]
    pub host: String,
    #[prost(int32, tag = "7")]
    pub operation: i32,
    #[prost(int32, tag = "8")]
    pub permission: i32,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct PbScramCredential {
    #[prost(string, tag = "1")]
    pub user: String,
    #[prost(int32, tag = "2")]
    pub mechanism: i32,
    #[prost(bytes = "vec", tag = "3")]
    pub salt: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub stored_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    pub server_key: Vec<u8>,
    #[prost(uint32, tag = "6")]
    pub iterations: u32,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct PbBroker {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub epoch: u64,
    #[prost(bytes = "vec", tag = "3")]
    pub incarnation: Vec<u8>,
    #[prost(bool, tag = "4")]
    pub fenced: bool,
    #[prost(int64, tag = "5")]
    pub fenced_at_ms: i64,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct PbNode {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub host: String,
    #[prost(uint32, tag = "3")]
    pub port: u32,
    #[prost(string, optional, tag = "4")]
    pub rack: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct PbTopic {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(bytes = "vec", tag = "2")]
    pub id: Vec<u8>,
    #[prost(btree_map = "string, string", tag = "3")]
    pub configs: BTreeMap<String, String>,
    #[prost(message, repeated, tag = "4")]
    pub partitions: Vec<PbPartition>,
    #[prost(int64, tag = "5")]
    pub created_at_ms: i64,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct PbPartition {
    #[prost(uint64, tag = "1")]
    pub stream_id: u64,
    #[prost(uint64, tag = "2")]
    pub owner: u64,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct PbStream {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub epoch: u64,
    #[prost(uint64, tag = "3")]
    pub start_offset: u64,
    #[prost(uint64, tag = "4")]
    pub end_offset: u64,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct PbObject {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub key: String,
    #[prost(uint64, tag = "3")]
    pub size: u64,
    #[prost(message, repeated, tag = "4")]
    pub ranges: Vec<PbRange>,
    #[prost(int64, tag = "5")]
    pub committed_at_ms: i64,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct PbRange {
    #[prost(uint64, tag = "1")]
    pub stream_id: u64,
    #[prost(uint64, tag = "2")]
    pub start_offset: u64,
    #[prost(uint64, tag = "3")]
    pub end_offset: u64,
    #[prost(uint64, tag = "4")]
    pub position: u64,
    #[prost(uint32, tag = "5")]
    pub length: u32,
    #[prost(int64, tag = "6")]
    pub max_timestamp: i64,
    // fixed32: a checksum is uniformly distributed, a varint would average 5 bytes.
    #[prost(fixed32, tag = "7")]
    pub crc: u32,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct PbDeadObject {
    #[prost(message, optional, tag = "1")]
    pub object: Option<PbObject>,
    #[prost(int64, tag = "2")]
    pub dead_since_ms: i64,
}

fn pb_object(o: &ObjectMeta) -> PbObject {
    PbObject {
        id: o.id,
        key: o.key.clone(),
        size: o.size,
        ranges: o
            .ranges
            .iter()
            .map(|r| PbRange {
                stream_id: r.stream_id,
                start_offset: r.start_offset,
                end_offset: r.end_offset,
                position: r.position,
                length: r.length,
                max_timestamp: r.max_timestamp,
                crc: r.crc,
            })
            .collect(),
        committed_at_ms: o.committed_at_ms,
    }
}

fn object_meta(o: PbObject) -> ObjectMeta {
    ObjectMeta {
        id: o.id,
        key: o.key,
        size: o.size,
        ranges: o
            .ranges
            .into_iter()
            .map(|r| ObjectRange {
                stream_id: r.stream_id,
                start_offset: r.start_offset,
                end_offset: r.end_offset,
                position: r.position,
                length: r.length,
                max_timestamp: r.max_timestamp,
                crc: r.crc,
            })
            .collect(),
        committed_at_ms: o.committed_at_ms,
    }
}

/// Encodes the state as `FORMAT_PROTO | PbState`.
pub(crate) fn encode(state: &ClusterState) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1 + 64 * (state.objects.len() + state.streams.len()));
    buf.push(FORMAT_PROTO);
    // Field by field in PbState's tag order, so the bytes are exactly PbState's encoding.
    if !state.cluster_id.is_empty() {
        string::encode(1, &state.cluster_id, &mut buf);
    }
    for n in state.nodes.values() {
        let pb = PbNode {
            id: n.id,
            host: n.host.clone(),
            port: u32::from(n.port),
            rack: n.rack.clone(),
        };
        message::encode(2, &pb, &mut buf);
    }
    for t in state.topics.values() {
        let pb = PbTopic {
            name: t.name.clone(),
            id: t.id.to_vec(),
            configs: t.configs.clone(),
            partitions: t
                .partitions
                .iter()
                .map(|p| PbPartition {
                    stream_id: p.stream_id,
                    owner: p.owner,
                })
                .collect(),
            created_at_ms: t.created_at_ms,
        };
        message::encode(3, &pb, &mut buf);
    }
    for s in state.streams.values() {
        let pb = PbStream {
            id: s.id,
            epoch: s.epoch,
            start_offset: s.start_offset,
            end_offset: s.end_offset,
        };
        message::encode(4, &pb, &mut buf);
    }
    for o in state.objects.values() {
        message::encode(5, &pb_object(o), &mut buf);
    }
    for d in state.dead_objects.values() {
        let pb = PbDeadObject {
            object: Some(pb_object(&d.object)),
            dead_since_ms: d.dead_since_ms,
        };
        message::encode(6, &pb, &mut buf);
    }
    if state.next_stream_id != 0 {
        uint64::encode(7, &state.next_stream_id, &mut buf);
    }
    if state.next_object_id != 0 {
        uint64::encode(8, &state.next_object_id, &mut buf);
    }
    if state.next_producer_id != 0 {
        uint64::encode(9, &state.next_producer_id, &mut buf);
    }
    for (id, b) in state.brokers.iter() {
        let pb = PbBroker {
            id: *id,
            epoch: b.epoch,
            incarnation: b.incarnation.to_vec(),
            fenced: b.fenced,
            fenced_at_ms: b.fenced_at_ms,
        };
        message::encode(10, &pb, &mut buf);
    }
    if state.last_broker_epoch != 0 {
        uint64::encode(11, &state.last_broker_epoch, &mut buf);
    }
    for (user, by_mech) in state.scram_credentials.iter() {
        for (mechanism, c) in by_mech {
            let pb = PbScramCredential {
                user: user.clone(),
                mechanism: i32::from(*mechanism),
                salt: c.salt.clone(),
                stored_key: c.stored_key.clone(),
                server_key: c.server_key.clone(),
                iterations: c.iterations,
            };
            message::encode(12, &pb, &mut buf);
        }
    }
    for (id, a) in state.acls.iter() {
        let pb = PbAcl {
            id: *id,
            resource_type: i32::from(a.resource_type),
            resource_name: a.resource_name.clone(),
            pattern_type: i32::from(a.pattern_type),
            principal: a.principal.clone(),
            host: a.host.clone(),
            operation: i32::from(a.operation),
            permission: i32::from(a.permission),
        };
        message::encode(13, &pb, &mut buf);
    }
    if state.next_acl_id != 0 {
        uint64::encode(14, &state.next_acl_id, &mut buf);
    }
    for q in state.client_quotas.values() {
        let pb = PbClientQuota {
            entity: q
                .entity
                .iter()
                .map(|(entity_type, name)| PbQuotaEntityPart {
                    entity_type: entity_type.clone(),
                    name: name.clone(),
                })
                .collect(),
            values: q
                .values
                .iter()
                .map(|(key, v)| PbQuotaValue {
                    key: key.clone(),
                    value: v.0,
                })
                .collect(),
        };
        message::encode(15, &pb, &mut buf);
    }
    let crc = crc32c::crc32c(&buf).to_le_bytes();
    buf.extend_from_slice(&crc);
    buf
}

/// Decodes snapshot data of any known version.
pub(crate) fn decode(data: &[u8]) -> io::Result<ClusterState> {
    match data.first() {
        Some(&FORMAT_PROTO) => {
            if data.len() < 1 + 4 {
                return Err(invalid_data("snapshot data: truncated"));
            }
            let (covered, crc) = data.split_at(data.len() - 4);
            if crc32c::crc32c(covered).to_le_bytes() != crc {
                return Err(invalid_data("snapshot data: checksum mismatch"));
            }
            let pb = PbState::decode(&covered[1..])
                .map_err(|e| invalid_data(format!("snapshot data: {e}")))?;
            from_pb(pb)
        }
        Some(&FORMAT_JSON) => serde_json::from_slice(data)
            .map_err(|e| invalid_data(format!("snapshot data (json): {e}"))),
        Some(v) => Err(invalid_data(format!(
            "snapshot data: unknown format version {v}"
        ))),
        None => Err(invalid_data("snapshot data: empty")),
    }
}

fn from_pb(pb: PbState) -> io::Result<ClusterState> {
    let mut s = ClusterState {
        cluster_id: pb.cluster_id,
        next_stream_id: pb.next_stream_id,
        next_object_id: pb.next_object_id,
        next_producer_id: pb.next_producer_id,
        last_broker_epoch: pb.last_broker_epoch,
        next_acl_id: pb.next_acl_id,
        ..ClusterState::default()
    };
    for a in pb.acls {
        let code = |v: i32, what: &str| {
            i8::try_from(v)
                .map_err(|_| invalid_data(format!("snapshot data: ACL {} {what} {v}", a.id)))
        };
        let acl = crate::AclEntryMeta {
            resource_type: code(a.resource_type, "resource type")?,
            pattern_type: code(a.pattern_type, "pattern type")?,
            operation: code(a.operation, "operation")?,
            permission: code(a.permission, "permission")?,
            resource_name: a.resource_name,
            principal: a.principal,
            host: a.host,
        };
        s.acls.insert(a.id, acl);
    }
    for q in pb.client_quotas {
        let entity: crate::QuotaEntityMeta = q
            .entity
            .into_iter()
            .map(|p| (p.entity_type, p.name))
            .collect();
        let values = q
            .values
            .into_iter()
            .map(|v| (v.key, crate::QuotaValue(v.value)))
            .collect();
        s.client_quotas.insert(
            crate::quota_entity_key(&entity),
            crate::ClientQuotaMeta { entity, values },
        );
    }
    for c in pb.scram_credentials {
        let mechanism = i8::try_from(c.mechanism).map_err(|_| {
            invalid_data(format!(
                "snapshot data: SCRAM mechanism {} of user {:?}",
                c.mechanism, c.user
            ))
        })?;
        let mut by_mech = s
            .scram_credentials
            .get(&c.user)
            .cloned()
            .unwrap_or_default();
        by_mech.insert(
            mechanism,
            crate::ScramCredentialMeta {
                salt: c.salt,
                stored_key: c.stored_key,
                server_key: c.server_key,
                iterations: c.iterations,
            },
        );
        s.scram_credentials.insert(c.user, by_mech);
    }
    for b in pb.brokers {
        let incarnation: [u8; 16] = b.incarnation.as_slice().try_into().map_err(|_| {
            invalid_data(format!(
                "snapshot data: broker {} incarnation of {} bytes",
                b.id,
                b.incarnation.len()
            ))
        })?;
        s.brokers.insert(
            b.id,
            crate::BrokerRegistration {
                epoch: b.epoch,
                incarnation,
                fenced: b.fenced,
                fenced_at_ms: b.fenced_at_ms,
            },
        );
    }
    for n in pb.nodes {
        let port = u16::try_from(n.port)
            .map_err(|_| invalid_data(format!("snapshot data: node {} port {}", n.id, n.port)))?;
        s.nodes.insert(
            n.id,
            NodeMeta {
                id: n.id,
                host: n.host,
                port,
                rack: n.rack,
            },
        );
    }
    for t in pb.topics {
        let id: [u8; 16] = t.id.as_slice().try_into().map_err(|_| {
            invalid_data(format!(
                "snapshot data: topic {} id of {} bytes",
                t.name,
                t.id.len()
            ))
        })?;
        s.topics.insert(
            t.name.clone(),
            TopicMeta {
                name: t.name,
                id,
                configs: t.configs,
                partitions: t
                    .partitions
                    .into_iter()
                    .map(|p| PartitionMeta {
                        stream_id: p.stream_id,
                        owner: p.owner,
                    })
                    .collect(),
                created_at_ms: t.created_at_ms,
            },
        );
    }
    for st in pb.streams {
        s.streams.insert(
            st.id,
            StreamMeta {
                id: st.id,
                epoch: st.epoch,
                start_offset: st.start_offset,
                end_offset: st.end_offset,
            },
        );
    }
    for o in pb.objects {
        s.objects.insert(o.id, object_meta(o));
    }
    for d in pb.dead_objects {
        let object = d
            .object
            .ok_or_else(|| invalid_data("snapshot data: dead object without its object"))?;
        s.dead_objects.insert(
            object.id,
            DeadObject {
                object: object_meta(object),
                dead_since_ms: d.dead_since_ms,
            },
        );
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(id: u64, ranges: Vec<ObjectRange>) -> ObjectMeta {
        ObjectMeta {
            id,
            key: format!("c1/wal/{id:016}"),
            size: 1 << 20,
            ranges,
            committed_at_ms: 1_700_000_000_000 + id as i64,
        }
    }

    fn range(stream_id: u64, start: u64, end: u64) -> ObjectRange {
        ObjectRange {
            stream_id,
            start_offset: start,
            end_offset: end,
            position: start * 7,
            length: u32::MAX,
            // -1 is "unknown": a signed field must survive, not wrap.
            max_timestamp: if start == 0 { -1 } else { i64::MAX },
            crc: 0xdead_beef,
        }
    }

    /// Every field set, including the edge values (empty, none, max, negative).
    fn rich_state() -> ClusterState {
        let mut s = ClusterState {
            cluster_id: "AbCdEfGhIjKlMnOpQrStUv".into(),
            next_stream_id: 4,
            next_object_id: u64::MAX,
            next_producer_id: u64::MAX,
            last_broker_epoch: 7,
            ..ClusterState::default()
        };
        s.next_acl_id = 3;
        for entity in [
            vec![("user".to_string(), Some("alice".to_string()))],
            vec![
                ("client-id".to_string(), None),
                ("user".to_string(), Some(String::new())),
            ],
        ] {
            s.client_quotas.insert(
                crate::quota_entity_key(&entity),
                crate::ClientQuotaMeta {
                    entity,
                    values: BTreeMap::from([
                        ("producer_byte_rate".to_string(), crate::QuotaValue(1024.0)),
                        ("request_percentage".to_string(), crate::QuotaValue(12.5)),
                    ]),
                },
            );
        }
        s.acls.insert(
            2,
            crate::AclEntryMeta {
                resource_type: 2,
                resource_name: "payments".into(),
                pattern_type: 4,
                principal: "User:alice".into(),
                host: "*".into(),
                operation: 3,
                permission: -1,
            },
        );
        s.scram_credentials.insert(
            "alice".into(),
            BTreeMap::from([
                (
                    1,
                    crate::ScramCredentialMeta {
                        salt: vec![1, 2, 3],
                        stored_key: vec![0xff; 32],
                        server_key: vec![0; 32],
                        iterations: 4096,
                    },
                ),
                (
                    2,
                    crate::ScramCredentialMeta {
                        salt: Vec::new(),
                        stored_key: vec![7; 64],
                        server_key: vec![8; 64],
                        iterations: u32::MAX,
                    },
                ),
            ]),
        );
        s.brokers.insert(
            1,
            crate::BrokerRegistration {
                epoch: 7,
                incarnation: [0xfe; 16],
                fenced: true,
                fenced_at_ms: 1_700_000_000_456,
            },
        );
        s.nodes.insert(
            1,
            NodeMeta {
                id: 1,
                host: "10.0.0.1".into(),
                port: 9092,
                rack: Some("rack-a".into()),
            },
        );
        s.nodes.insert(
            2,
            NodeMeta {
                id: 2,
                host: "node-2.example".into(),
                port: u16::MAX,
                rack: None,
            },
        );
        s.topics.insert(
            "orders".into(),
            TopicMeta {
                name: "orders".into(),
                id: [0xab; 16],
                configs: BTreeMap::from([
                    ("cleanup.policy".into(), "compact".into()),
                    ("retention.ms".into(), "-1".into()),
                ]),
                partitions: vec![
                    PartitionMeta {
                        stream_id: 1,
                        owner: 1,
                    },
                    PartitionMeta {
                        stream_id: 2,
                        owner: 2,
                    },
                ],
                created_at_ms: -5,
            },
        );
        s.topics.insert(
            "empty".into(),
            TopicMeta {
                name: "empty".into(),
                id: [0; 16],
                configs: BTreeMap::new(),
                partitions: vec![],
                created_at_ms: 0,
            },
        );
        for (id, epoch, start, end) in [(1, 3, 0, 20), (2, 1, 5, 10), (3, 0, 0, 0)] {
            s.streams.insert(
                id,
                StreamMeta {
                    id,
                    epoch,
                    start_offset: start,
                    end_offset: end,
                },
            );
        }
        s.objects
            .insert(10, object(10, vec![range(1, 0, 10), range(2, 5, 10)]));
        s.objects.insert(11, object(11, vec![range(1, 10, 20)]));
        s.dead_objects.insert(
            9,
            DeadObject {
                object: object(9, vec![]),
                dead_since_ms: 1_700_000_000_123,
            },
        );
        s
    }

    #[test]
    fn a_rich_state_survives_encoding_and_decoding() {
        let s = rich_state();
        let data = encode(&s);
        assert_eq!(data[0], FORMAT_PROTO);
        assert_eq!(decode(&data).unwrap(), s);
        assert_eq!(
            decode(&encode(&ClusterState::default())).unwrap(),
            ClusterState::default()
        );
    }

    #[test]
    fn the_streamed_encoding_is_exactly_a_protobuf_message() {
        // Other tools (and a later version of this one) may decode the body as PbState.
        let data = encode(&rich_state());
        let body = &data[1..data.len() - 4];
        let pb = PbState::decode(body).unwrap();
        assert_eq!(pb.objects.len(), 2);
        assert_eq!(pb.encode_to_vec(), body.to_vec());
    }

    #[test]
    fn json_snapshot_data_from_before_the_binary_format_still_loads() {
        let s = rich_state();
        let json = serde_json::to_vec(&s).unwrap();
        assert_eq!(decode(&json).unwrap(), s);
    }

    #[test]
    fn damaged_or_unknown_snapshot_data_is_rejected_not_half_loaded() {
        let mut state = rich_state();
        state.client_quotas.clear();
        let data = encode(&state);
        assert!(decode(&[]).is_err());
        assert!(decode(&[FORMAT_PROTO]).is_err());
        // Cut before the last field (next_acl_id = 3: a tag byte and a 1-byte varint):
        // still valid protobuf, so only the checksum can tell.
        let cut = &data[..data.len() - 4 - 2];
        assert!(PbState::decode(&cut[1..]).is_ok());
        for bad in [
            data[..data.len() - 1].to_vec(),
            [cut, &data[data.len() - 4..]].concat(),
            {
                let mut flipped = data.clone();
                flipped[data.len() / 2] ^= 0x40;
                flipped
            },
        ] {
            let e = decode(&bad).unwrap_err();
            assert!(e.to_string().contains("checksum mismatch"), "{e}");
        }
        let mut future = data.clone();
        future[0] = 3;
        let e = decode(&future).unwrap_err();
        assert!(e.to_string().contains("unknown format version 3"), "{e}");
        assert!(decode(b"{\"cluster_id\": 1").is_err());
    }
}
