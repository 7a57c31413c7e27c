//! Consumer group APIs of the classic protocol: FindCoordinator, JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup, ListGroups, DescribeGroups, DeleteGroups. The state machine is in
//! `crate::groups`; this module translates requests and responses per version.

use crate::Broker;
use crate::groups::OFFSETS_TOPIC;
use crate::groups::group::JoinRequest;
use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;
use std::sync::Arc;

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

/// The client id of a request, read from its header in the frame (api key, version,
/// correlation id, then a nullable int16-length string in every header version).
pub(crate) fn client_id(frame: &[u8]) -> String {
    let Some(len) = frame.get(8..10).map(|b| i16::from_be_bytes([b[0], b[1]])) else {
        return String::new();
    };
    if len <= 0 {
        return String::new();
    }
    frame
        .get(10..10 + len as usize)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

/// (node id, host, port) of a coordinator.
type Node = (i32, String, i32);

/// The coordinator of a group, or why there is none.
fn coordinator_of(broker: &Broker, group_id: &str) -> Result<Node, ResponseError> {
    owner_of(broker, OFFSETS_TOPIC, broker.groups.partition_of(group_id))
}

/// The node owning partition `p` of an internal topic: the coordinator of its keys.
fn owner_of(broker: &Broker, topic: &str, p: i32) -> Result<Node, ResponseError> {
    broker.meta.read(|s| {
        let t = s
            .topics
            .get(topic)
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        let part = usize::try_from(p)
            .ok()
            .and_then(|i| t.partitions.get(i))
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        let node = s
            .nodes
            .get(&part.owner)
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        let id = i32::try_from(node.id).map_err(|_| ResponseError::CoordinatorNotAvailable)?;
        Ok((id, node.host.clone(), i32::from(node.port)))
    })
}

fn find_one(
    broker: &Broker,
    key: &str,
    key_type: i8,
) -> (Result<Node, ResponseError>, Option<String>) {
    match key_type {
        0 => (coordinator_of(broker, key), None),
        1 => (
            owner_of(
                broker,
                crate::txn::glue::TXN_TOPIC,
                broker.txn.partition_of(key),
            ),
            None,
        ),
        _ => (
            Err(ResponseError::InvalidRequest),
            Some(format!("unknown key type {key_type}")),
        ),
    }
}

pub async fn find_coordinator(
    broker: &Arc<Broker>,
    version: i16,
    req: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    if version >= 4 {
        let coordinators = req
            .coordinator_keys
            .iter()
            .map(|key| {
                let (r, msg) = find_one(broker, key, req.key_type);
                let c = Coordinator::default().with_key(key.clone());
                match r {
                    Ok((id, host, port)) => c
                        .with_node_id(BrokerId(id))
                        .with_host(s(host))
                        .with_port(port),
                    Err(e) => c
                        .with_node_id(BrokerId(-1))
                        .with_host(s(""))
                        .with_port(-1)
                        .with_error_code(e.code())
                        .with_error_message(Some(s(msg.unwrap_or_else(|| e.to_string())))),
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let (r, msg) = find_one(broker, &req.key, req.key_type);
    let resp = FindCoordinatorResponse::default();
    match r {
        Ok((id, host, port)) => resp
            .with_node_id(BrokerId(id))
            .with_host(s(host))
            .with_port(port)
            .with_error_message(None),
        Err(e) => resp
            .with_node_id(BrokerId(-1))
            .with_host(s(""))
            .with_port(-1)
            .with_error_code(e.code())
            .with_error_message((version >= 1).then(|| s(msg.unwrap_or_else(|| e.to_string())))),
    }
}

pub async fn join_group(
    broker: &Arc<Broker>,
    version: i16,
    req: JoinGroupRequest,
    client_id: String,
) -> JoinGroupResponse {
    let join = JoinRequest {
        group_id: req.group_id.0.to_string(),
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.as_ref().map(|i| i.to_string()),
        client_id,
        // The connection's peer address is not passed to handlers; Kafka shows "/<ip>".
        client_host: String::new(),
        session_timeout_ms: req.session_timeout_ms,
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        rebalance_timeout_ms: if version == 0 {
            req.session_timeout_ms
        } else {
            req.rebalance_timeout_ms
        },
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        require_known_member_id: version >= 4,
        supports_skip_assignment: version >= 9,
    };
    tracing::debug!(group = %join.group_id, member = %join.member_id, instance = ?join.instance_id, version, "JoinGroup");
    let out = broker.groups.join(join).await;
    let members = out
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            JoinGroupResponseMember::default()
                .with_member_id(s(id))
                .with_group_instance_id(if version >= 5 { instance.map(s) } else { None })
                .with_metadata(metadata)
        })
        .collect();
    // Before v7 the protocol name is a non-nullable string.
    let protocol_name = match out.protocol_name {
        Some(n) => Some(s(n)),
        None if version < 7 => Some(s("")),
        None => None,
    };
    JoinGroupResponse::default()
        .with_error_code(out.error)
        .with_generation_id(out.generation)
        .with_protocol_type(out.protocol_type.map(s))
        .with_protocol_name(protocol_name)
        .with_leader(s(out.leader))
        .with_skip_assignment(version >= 9 && out.skip_assignment)
        .with_member_id(s(out.member_id))
        .with_members(members)
}

pub async fn sync_group(
    broker: &Arc<Broker>,
    version: i16,
    req: SyncGroupRequest,
) -> SyncGroupResponse {
    let assignments: Vec<(String, Bytes)> = req
        .assignments
        .iter()
        .map(|a| (a.member_id.to_string(), a.assignment.clone()))
        .collect();
    let instance = req.group_instance_id.as_ref().map(|i| i.to_string());
    let pt = req.protocol_type.as_ref().map(|p| p.to_string());
    let pn = req.protocol_name.as_ref().map(|p| p.to_string());
    let out = broker
        .groups
        .sync(
            &req.group_id.0,
            &req.member_id,
            instance.as_deref(),
            req.generation_id,
            pt.as_deref(),
            pn.as_deref(),
            assignments,
        )
        .await;
    let resp = SyncGroupResponse::default()
        .with_error_code(out.error)
        .with_assignment(out.assignment);
    if version >= 5 {
        resp.with_protocol_type(out.protocol_type.map(s))
            .with_protocol_name(out.protocol_name.map(s))
    } else {
        resp
    }
}

pub async fn heartbeat(
    broker: &Arc<Broker>,
    _version: i16,
    req: HeartbeatRequest,
) -> HeartbeatResponse {
    let instance = req.group_instance_id.as_ref().map(|i| i.to_string());
    let code = broker.groups.heartbeat(
        &req.group_id.0,
        &req.member_id,
        instance.as_deref(),
        req.generation_id,
    );
    HeartbeatResponse::default().with_error_code(code)
}

pub async fn leave_group(
    broker: &Arc<Broker>,
    version: i16,
    req: LeaveGroupRequest,
) -> LeaveGroupResponse {
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        req.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|i| i.to_string()),
                )
            })
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    match broker.groups.leave(&req.group_id.0, &members) {
        Err(e) => LeaveGroupResponse::default().with_error_code(e.code()),
        Ok(codes) if version < 3 => {
            LeaveGroupResponse::default().with_error_code(codes.first().copied().unwrap_or(0))
        }
        Ok(codes) => LeaveGroupResponse::default().with_members(
            members
                .into_iter()
                .zip(codes)
                .map(|((m, i), c)| {
                    MemberResponse::default()
                        .with_member_id(s(m))
                        .with_group_instance_id(i.map(s))
                        .with_error_code(c)
                })
                .collect(),
        ),
    }
}

pub async fn list_groups(
    broker: &Arc<Broker>,
    version: i16,
    req: ListGroupsRequest,
) -> ListGroupsResponse {
    let groups = match broker.groups.list_groups() {
        Ok(g) => g,
        Err(e) => return ListGroupsResponse::default().with_error_code(e.code()),
    };
    let states: Vec<String> = req.states_filter.iter().map(|s| s.to_lowercase()).collect();
    // Every Shale group is a classic group.
    let type_ok = req.types_filter.is_empty()
        || req
            .types_filter
            .iter()
            .any(|t| t.eq_ignore_ascii_case("classic"));
    let listed = groups
        .into_iter()
        .filter(|_| type_ok)
        .filter(|(_, _, state)| states.is_empty() || states.contains(&state.to_lowercase()))
        .map(|(id, pt, state)| {
            let g = ListedGroup::default()
                .with_group_id(GroupId(s(id)))
                .with_protocol_type(s(pt));
            let g = if version >= 4 {
                g.with_group_state(s(state))
            } else {
                g
            };
            if version >= 5 {
                g.with_group_type(s("classic"))
            } else {
                g
            }
        })
        .collect();
    ListGroupsResponse::default().with_groups(listed)
}

pub async fn describe_groups(
    broker: &Arc<Broker>,
    version: i16,
    req: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let groups = req
        .groups
        .iter()
        .map(|id| {
            let g = DescribedGroup::default()
                .with_group_id(id.clone())
                .with_authorized_operations(i32::MIN);
            let g = if version >= 3 && req.include_authorized_operations {
                // No ACLs yet: every group operation is allowed (READ, DESCRIBE, DELETE).
                g.with_authorized_operations((1 << 3) | (1 << 8) | (1 << 6))
            } else {
                g
            };
            match broker.groups.describe(&id.0) {
                Err(e) => g
                    .with_error_code(e.code())
                    .with_group_state(s(""))
                    .with_protocol_type(s(""))
                    .with_protocol_data(s("")),
                Ok(d) => g
                    .with_group_state(s(d.state))
                    .with_protocol_type(s(d.protocol_type))
                    .with_protocol_data(s(d.protocol))
                    .with_members(
                        d.members
                            .into_iter()
                            .map(|(m, i, c, h, meta, asg)| {
                                DescribedGroupMember::default()
                                    .with_member_id(s(m))
                                    .with_group_instance_id(if version >= 4 {
                                        i.map(s)
                                    } else {
                                        None
                                    })
                                    .with_client_id(s(c))
                                    .with_client_host(s(h))
                                    .with_member_metadata(meta)
                                    .with_member_assignment(asg)
                            })
                            .collect(),
                    ),
            }
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

pub async fn delete_groups(
    broker: &Arc<Broker>,
    _version: i16,
    req: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(req.groups_names.len());
    for id in &req.groups_names {
        let code = broker.groups.delete_group(&id.0).await;
        results.push(
            DeletableGroupResult::default()
                .with_group_id(id.clone())
                .with_error_code(code),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}
