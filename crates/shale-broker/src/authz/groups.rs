//! Consumer group APIs, authorized as Kafka's `KafkaApis` does: running a group (Join, Sync,
//! Heartbeat, Leave: READ on the group), committing offsets (READ on the group and on each
//! topic), reading them (DESCRIBE), deleting offsets and groups (DELETE), describing and
//! listing groups (DESCRIBE), and finding coordinators (DESCRIBE on the group or the
//! transactional id). Denied groups are GROUP_AUTHORIZATION_FAILED, denied topics
//! TOPIC_AUTHORIZATION_FAILED, in the response shape Kafka gives each version. Moving a
//! committed offset backwards on a topic with a replay window also takes READ on
//! `__replay.<topic>` (`replay`).
//!
//! Also the helpers the transaction APIs (`txn.rs`) share: splitting a request, fixups that
//! consult the authorizer after the handler ran.

use super::replay::{self, BrokerCluster, Cluster};
use super::topics::authorized_operations;
use super::{CLUSTER_NAME, Checked, Fixup, Gate, RequestContext};
use crate::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use shale_security::acl::{AclOperation, Authorizer, ResourceType};
use std::sync::Arc;

const GROUP_DENIED: i16 = ResponseError::GroupAuthorizationFailed.code();
const TOPIC_DENIED: i16 = ResponseError::TopicAuthorizationFailed.code();
const TXN_ID_DENIED: i16 = ResponseError::TransactionalIdAuthorizationFailed.code();

/// FindCoordinator key types (Kafka's `CoordinatorType`).
const KEY_GROUP: i8 = 0;
const KEY_TRANSACTION: i8 = 1;

/// Operations DescribeGroups reports per group (Kafka's `AclEntry.supportedOperations(GROUP)`).
const GROUP_OPERATIONS: &[AclOperation] = &[
    AclOperation::Read,
    AclOperation::Describe,
    AclOperation::Delete,
    AclOperation::DescribeConfigs,
    AclOperation::AlterConfigs,
];

pub(super) fn check(
    broker: &Arc<Broker>,
    gate: &Gate<'_>,
    version: i16,
    body: RequestKind,
) -> Checked {
    // The versions served name topics, never topic ids: the broker has nothing to resolve.
    check_request(gate, &BrokerCluster(broker), version, body)
}

fn check_request(
    gate: &Gate<'_>,
    cluster: &dyn Cluster,
    version: i16,
    body: RequestKind,
) -> Checked {
    use RequestKind as R;
    let group = |op: AclOperation, name: &str| gate.allows(op, ResourceType::Group, name);
    match body {
        R::FindCoordinator(req) => find_coordinator(gate, version, req),
        R::JoinGroup(req) => {
            if group(AclOperation::Read, &req.group_id) {
                return pass(R::JoinGroup(req));
            }
            // `JoinGroupRequest.getErrorResponse`: no member id (not even the one sent), no
            // leader, no generation; the protocol name is "" before v7 and null from v7.
            Checked::Refuse(ResponseKind::JoinGroup(
                JoinGroupResponse::default()
                    .with_error_code(GROUP_DENIED)
                    .with_generation_id(-1)
                    .with_protocol_type(None)
                    .with_protocol_name((version < 7).then(StrBytes::default))
                    .with_leader(StrBytes::default())
                    .with_member_id(StrBytes::default()),
            ))
        }
        R::SyncGroup(req) => {
            if group(AclOperation::Read, &req.group_id) {
                return pass(R::SyncGroup(req));
            }
            // Kafka checks v5's mandatory protocol type and name before authorizing.
            let code =
                if version >= 5 && (req.protocol_type.is_none() || req.protocol_name.is_none()) {
                    ResponseError::InconsistentGroupProtocol.code()
                } else {
                    GROUP_DENIED
                };
            Checked::Refuse(ResponseKind::SyncGroup(
                SyncGroupResponse::default().with_error_code(code),
            ))
        }
        R::Heartbeat(req) => {
            if group(AclOperation::Read, &req.group_id) {
                return pass(R::Heartbeat(req));
            }
            Checked::Refuse(ResponseKind::Heartbeat(
                HeartbeatResponse::default().with_error_code(GROUP_DENIED),
            ))
        }
        R::LeaveGroup(req) => {
            if group(AclOperation::Read, &req.group_id) {
                return pass(R::LeaveGroup(req));
            }
            Checked::Refuse(ResponseKind::LeaveGroup(
                LeaveGroupResponse::default().with_error_code(GROUP_DENIED),
            ))
        }
        R::OffsetCommit(req) => offset_commit(gate, cluster, req),
        R::OffsetFetch(req) if version >= 8 => offset_fetch_groups(gate, req),
        R::OffsetFetch(req) => offset_fetch_one(gate, req),
        R::OffsetDelete(req) => offset_delete(gate, req),
        R::DescribeGroups(req) => describe_groups(gate, version, req),
        R::ListGroups(req) => {
            // DESCRIBE on the cluster sees every group (Kafka keeps this for compatibility);
            // otherwise only the groups it may DESCRIBE, the others silently left out.
            if gate.may_see(AclOperation::Describe, ResourceType::Cluster, CLUSTER_NAME) {
                return pass(R::ListGroups(req));
            }
            let later = Later::of(gate);
            Checked::Dispatch(
                R::ListGroups(req),
                Fixup::response(move |r| {
                    if let ResponseKind::ListGroups(l) = r {
                        l.groups.retain(|g| {
                            later.may_see(AclOperation::Describe, ResourceType::Group, &g.group_id)
                        });
                    }
                }),
            )
        }
        R::DeleteGroups(mut req) => {
            let (ok, refused) = split(std::mem::take(&mut req.groups_names), |g| {
                group(AclOperation::Delete, g)
            });
            req.groups_names = ok;
            // Kafka answers each name once, however often it was sent.
            let mut denied: Vec<delete_groups_response::DeletableGroupResult> = Vec::new();
            for g in refused {
                if !denied.iter().any(|d| d.group_id == g) {
                    denied.push(
                        delete_groups_response::DeletableGroupResult::default()
                            .with_group_id(g)
                            .with_error_code(GROUP_DENIED),
                    );
                }
            }
            if req.groups_names.is_empty() && !denied.is_empty() {
                return Checked::Refuse(ResponseKind::DeleteGroups(
                    DeleteGroupsResponse::default().with_results(denied),
                ));
            }
            Checked::Dispatch(
                R::DeleteGroups(req),
                fixup_if(!denied.is_empty(), move |r| {
                    if let ResponseKind::DeleteGroups(d) = r {
                        d.results.extend(denied);
                    }
                }),
            )
        }
        other => pass(other),
    }
}

/// FindCoordinator: DESCRIBE on the group (key type 0) or the transactional id (key type 1).
/// Before v4 one key and a top-level error; from v4 one coordinator per key, each with its
/// own error, so the permitted keys are still looked up.
fn find_coordinator(gate: &Gate<'_>, version: i16, mut req: FindCoordinatorRequest) -> Checked {
    let (rt, code, message) = match req.key_type {
        KEY_GROUP => (
            ResourceType::Group,
            GROUP_DENIED,
            "Group authorization failed.",
        ),
        KEY_TRANSACTION => (
            ResourceType::TransactionalId,
            TXN_ID_DENIED,
            "Transactional Id authorization failed.",
        ),
        // Other key types name no resource this version can authorize: the handler refuses
        // them (INVALID_REQUEST, as Kafka before v6).
        _ => return pass(RequestKind::FindCoordinator(req)),
    };
    let allowed = |key: &str| gate.allows(AclOperation::Describe, rt, key);
    if version < 4 {
        if allowed(&req.key) {
            return pass(RequestKind::FindCoordinator(req));
        }
        // `FindCoordinatorResponse.prepareOldResponse(error, Node.noNode())`.
        return Checked::Refuse(ResponseKind::FindCoordinator(
            FindCoordinatorResponse::default()
                .with_error_code(code)
                .with_error_message(Some(StrBytes::from_static_str(message)))
                .with_node_id(BrokerId(-1))
                .with_host(StrBytes::default())
                .with_port(-1),
        ));
    }
    let (ok, refused) = split(std::mem::take(&mut req.coordinator_keys), |k| allowed(k));
    req.coordinator_keys = ok;
    // Kafka sets no message on a v4+ coordinator entry (it stays "").
    let denied: Vec<find_coordinator_response::Coordinator> = refused
        .into_iter()
        .map(|key| {
            find_coordinator_response::Coordinator::default()
                .with_key(key)
                .with_error_code(code)
                .with_node_id(BrokerId(-1))
                .with_host(StrBytes::default())
                .with_port(-1)
        })
        .collect();
    if req.coordinator_keys.is_empty() && !denied.is_empty() {
        return Checked::Refuse(ResponseKind::FindCoordinator(
            FindCoordinatorResponse::default().with_coordinators(denied),
        ));
    }
    Checked::Dispatch(
        RequestKind::FindCoordinator(req),
        fixup_if(!denied.is_empty(), move |r| {
            if let ResponseKind::FindCoordinator(f) = r {
                f.coordinators.extend(denied);
            }
        }),
    )
}

/// OffsetCommit: READ on the group (else every partition GROUP_AUTHORIZATION_FAILED), then
/// READ on each topic, then the replay grant for a partition committed backwards on a topic
/// with a replay window. When no topic is left Kafka answers without asking the coordinator.
fn offset_commit(gate: &Gate<'_>, cluster: &dyn Cluster, mut req: OffsetCommitRequest) -> Checked {
    use offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
    let answer = |t: &offset_commit_request::OffsetCommitRequestTopic, code: i16| {
        OffsetCommitResponseTopic::default()
            .with_name(t.name.clone())
            .with_partitions(
                t.partitions
                    .iter()
                    .map(|p| {
                        OffsetCommitResponsePartition::default()
                            .with_partition_index(p.partition_index)
                            .with_error_code(code)
                    })
                    .collect(),
            )
    };
    if !gate.allows(AclOperation::Read, ResourceType::Group, &req.group_id) {
        return Checked::Refuse(ResponseKind::OffsetCommit(
            OffsetCommitResponse::default()
                .with_topics(req.topics.iter().map(|t| answer(t, GROUP_DENIED)).collect()),
        ));
    }
    let (ok, refused) = split(std::mem::take(&mut req.topics), |t| {
        gate.allows(AclOperation::Read, ResourceType::Topic, &t.name)
    });
    req.topics = ok;
    let member = replay::Member {
        id: &req.member_id,
        instance: req.group_instance_id.as_deref(),
        generation: req.generation_id_or_member_epoch,
    };
    let rewound = replay::check_commits(
        gate,
        cluster,
        &req.group_id,
        &member,
        false,
        &mut req.topics,
    );
    let denied: Vec<_> = refused
        .iter()
        .map(|t| answer(t, TOPIC_DENIED))
        .chain(rewound.into_iter().map(|(name, partitions)| {
            OffsetCommitResponseTopic::default()
                .with_name(name)
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|p| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p)
                                .with_error_code(TOPIC_DENIED)
                        })
                        .collect(),
                )
        }))
        .collect();
    if req.topics.is_empty() && !denied.is_empty() {
        return Checked::Refuse(ResponseKind::OffsetCommit(
            OffsetCommitResponse::default().with_topics(denied),
        ));
    }
    Checked::Dispatch(
        RequestKind::OffsetCommit(req),
        fixup_if(!denied.is_empty(), move |r| {
            if let ResponseKind::OffsetCommit(c) = r {
                // Kafka's builder holds the refused topics first, then the coordinator's.
                c.topics.splice(0..0, denied);
            }
        }),
    )
}

/// OffsetFetch v1-7, one group. A denied group is a top-level GROUP_AUTHORIZATION_FAILED
/// and no topics, as Kafka answers (v1 has no top-level error field, so a v1 client sees
/// an empty answer: Kafka's behaviour too).
fn offset_fetch_one(gate: &Gate<'_>, mut req: OffsetFetchRequest) -> Checked {
    use offset_fetch_response::{OffsetFetchResponsePartition, OffsetFetchResponseTopic};
    if !gate.allows(AclOperation::Describe, ResourceType::Group, &req.group_id) {
        return Checked::Refuse(ResponseKind::OffsetFetch(
            OffsetFetchResponse::default().with_error_code(GROUP_DENIED),
        ));
    }
    let Some(topics) = req.topics.take() else {
        // All committed offsets: only those of topics the principal may DESCRIBE.
        let later = Later::of(gate);
        return Checked::Dispatch(
            RequestKind::OffsetFetch(req),
            Fixup::response(move |r| {
                if let ResponseKind::OffsetFetch(o) = r {
                    o.topics.retain(|t| {
                        later.may_see(AclOperation::Describe, ResourceType::Topic, &t.name)
                    });
                }
            }),
        );
    };
    let (ok, refused) = split(topics, |t| {
        gate.allows(AclOperation::Describe, ResourceType::Topic, &t.name)
    });
    req.topics = Some(ok);
    let denied: Vec<OffsetFetchResponseTopic> = refused
        .into_iter()
        .map(|t| {
            OffsetFetchResponseTopic::default()
                .with_name(t.name)
                .with_partitions(
                    t.partition_indexes
                        .iter()
                        .map(|p| {
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(*p)
                                .with_committed_offset(-1)
                                .with_committed_leader_epoch(-1)
                                .with_metadata(Some(StrBytes::default()))
                                .with_error_code(TOPIC_DENIED)
                        })
                        .collect(),
                )
        })
        .collect();
    // Even with every topic refused the group is asked: its own errors (coordinator moved,
    // loading) are still the answer, as in Kafka.
    Checked::Dispatch(
        RequestKind::OffsetFetch(req),
        fixup_if(!denied.is_empty(), move |r| {
            // A group-level error is the whole answer (Kafka adds the refused topics only to
            // a successful fetch).
            if let ResponseKind::OffsetFetch(o) = r
                && o.error_code == 0
            {
                o.topics.extend(denied);
            }
        }),
    )
}

/// What the OffsetFetch v8 fixup does to one permitted group's answer.
enum GroupFix {
    /// All committed offsets were asked for: leave out topics the principal may not see.
    Filter,
    /// These topics were refused: add them (to a successful answer).
    Add(Vec<offset_fetch_response::OffsetFetchResponseTopics>),
}

/// OffsetFetch v8: several groups, each checked as v1-7 checks its one.
fn offset_fetch_groups(gate: &Gate<'_>, mut req: OffsetFetchRequest) -> Checked {
    use offset_fetch_response::{
        OffsetFetchResponseGroup, OffsetFetchResponsePartitions, OffsetFetchResponseTopics,
    };
    let mut denied_groups: Vec<OffsetFetchResponseGroup> = Vec::new();
    let mut fixes: Vec<(GroupId, Option<GroupFix>)> = Vec::new();
    let mut kept = Vec::with_capacity(req.groups.len());
    for mut g in std::mem::take(&mut req.groups) {
        if !gate.allows(AclOperation::Describe, ResourceType::Group, &g.group_id) {
            denied_groups.push(
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id)
                    .with_error_code(GROUP_DENIED),
            );
            continue;
        }
        let fix = match g.topics.take() {
            None => GroupFix::Filter,
            Some(topics) => {
                let (ok, refused) = split(topics, |t| {
                    gate.allows(AclOperation::Describe, ResourceType::Topic, &t.name)
                });
                g.topics = Some(ok);
                GroupFix::Add(
                    refused
                        .into_iter()
                        .map(|t| {
                            OffsetFetchResponseTopics::default()
                                .with_name(t.name)
                                .with_partitions(
                                    t.partition_indexes
                                        .iter()
                                        .map(|p| {
                                            OffsetFetchResponsePartitions::default()
                                                .with_partition_index(*p)
                                                .with_committed_offset(-1)
                                                .with_committed_leader_epoch(-1)
                                                .with_metadata(Some(StrBytes::default()))
                                                .with_error_code(TOPIC_DENIED)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                )
            }
        };
        let needed = match &fix {
            GroupFix::Filter => true,
            GroupFix::Add(topics) => !topics.is_empty(),
        };
        fixes.push((g.group_id.clone(), needed.then_some(fix)));
        kept.push(g);
    }
    if kept.is_empty() && !denied_groups.is_empty() {
        return Checked::Refuse(ResponseKind::OffsetFetch(
            OffsetFetchResponse::default().with_groups(denied_groups),
        ));
    }
    req.groups = kept;
    let any_fix = fixes.iter().any(|(_, f)| f.is_some());
    let later = Later::of(gate);
    Checked::Dispatch(
        RequestKind::OffsetFetch(req),
        fixup_if(any_fix || !denied_groups.is_empty(), move |r| {
            let ResponseKind::OffsetFetch(o) = r else {
                return;
            };
            for g in o.groups.iter_mut() {
                // Each answer takes the fix of the first unclaimed request group of its id
                // (a request may name a group twice).
                let fix = fixes
                    .iter_mut()
                    .find(|(id, f)| *id == g.group_id && f.is_some())
                    .and_then(|(_, f)| f.take());
                match fix {
                    Some(GroupFix::Filter) => g.topics.retain(|t| {
                        later.may_see(AclOperation::Describe, ResourceType::Topic, &t.name)
                    }),
                    Some(GroupFix::Add(denied)) if g.error_code == 0 => g.topics.extend(denied),
                    _ => {}
                }
            }
            o.groups.extend(denied_groups);
        }),
    )
}

/// OffsetDelete: DELETE on the group (else a top-level GROUP_AUTHORIZATION_FAILED), READ on
/// each topic.
fn offset_delete(gate: &Gate<'_>, mut req: OffsetDeleteRequest) -> Checked {
    use offset_delete_response::{OffsetDeleteResponsePartition, OffsetDeleteResponseTopic};
    if !gate.allows(AclOperation::Delete, ResourceType::Group, &req.group_id) {
        return Checked::Refuse(ResponseKind::OffsetDelete(
            OffsetDeleteResponse::default().with_error_code(GROUP_DENIED),
        ));
    }
    let (ok, refused) = split(std::mem::take(&mut req.topics), |t| {
        gate.allows(AclOperation::Read, ResourceType::Topic, &t.name)
    });
    req.topics = ok;
    let denied: Vec<OffsetDeleteResponseTopic> = refused
        .into_iter()
        .map(|t| {
            OffsetDeleteResponseTopic::default()
                .with_name(t.name)
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            OffsetDeleteResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(TOPIC_DENIED)
                        })
                        .collect(),
                )
        })
        .collect();
    // Kafka asks the coordinator even with no topic left (the group's own state, e.g.
    // GROUP_ID_NOT_FOUND or NON_EMPTY_GROUP, is still the answer).
    Checked::Dispatch(
        RequestKind::OffsetDelete(req),
        fixup_if(!denied.is_empty(), move |r| {
            // A top-level error replaces the refused topics (Kafka's `Builder.merge`).
            if let ResponseKind::OffsetDelete(d) = r
                && d.error_code == 0
            {
                d.topics.splice(0..0, denied);
            }
        }),
    )
}

/// DescribeGroups: DESCRIBE per group; a denied group is in the answer with its error and
/// nothing else. Authorized operations (v3+, when asked) are the principal's own.
fn describe_groups(gate: &Gate<'_>, version: i16, mut req: DescribeGroupsRequest) -> Checked {
    use describe_groups_response::DescribedGroup;
    let (ok, refused) = split(std::mem::take(&mut req.groups), |g| {
        gate.allows(AclOperation::Describe, ResourceType::Group, g)
    });
    req.groups = ok;
    // `DescribeGroupsResponse.groupError`.
    let denied: Vec<DescribedGroup> = refused
        .into_iter()
        .map(|g| {
            DescribedGroup::default()
                .with_group_id(g)
                .with_error_code(GROUP_DENIED)
                .with_group_state(StrBytes::default())
                .with_protocol_type(StrBytes::default())
                .with_protocol_data(StrBytes::default())
                .with_authorized_operations(i32::MIN)
        })
        .collect();
    if req.groups.is_empty() && !denied.is_empty() {
        return Checked::Refuse(ResponseKind::DescribeGroups(
            DescribeGroupsResponse::default().with_groups(denied),
        ));
    }
    let want_ops = version >= 3 && req.include_authorized_operations;
    let later = Later::of(gate);
    Checked::Dispatch(
        RequestKind::DescribeGroups(req),
        fixup_if(want_ops || !denied.is_empty(), move |r| {
            let ResponseKind::DescribeGroups(d) = r else {
                return;
            };
            if want_ops {
                let gate = later.gate();
                for g in d.groups.iter_mut() {
                    // Kafka fills them in for groups described without error only.
                    g.authorized_operations = if g.error_code == 0 {
                        authorized_operations(
                            &gate,
                            GROUP_OPERATIONS,
                            ResourceType::Group,
                            &g.group_id,
                        )
                    } else {
                        i32::MIN
                    };
                }
            }
            // Kafka lists the refused groups first.
            d.groups.splice(0..0, denied);
        }),
    )
}

// Helpers shared with `txn.rs`.

pub(super) fn pass(body: RequestKind) -> Checked {
    Checked::Dispatch(body, Fixup::None)
}

/// Splits `items` into those `allowed` keeps and those it refuses.
pub(super) fn split<T>(items: Vec<T>, mut allowed: impl FnMut(&T) -> bool) -> (Vec<T>, Vec<T>) {
    items.into_iter().partition(|t| allowed(t))
}

pub(super) fn fixup_if(any: bool, f: impl FnOnce(&mut ResponseKind) + Send + 'static) -> Fixup {
    if any { Fixup::response(f) } else { Fixup::None }
}

/// What a fixup needs to consult the authorizer once the handler has answered: the
/// request's authorizer snapshot and principal (a fixup outlives the request's `Gate`).
pub(super) struct Later {
    authorizer: Arc<Authorizer>,
    ctx: RequestContext,
    api: &'static str,
    version: i16,
    auditor: shale_security::audit::Auditor,
}

impl Later {
    pub(super) fn of(gate: &Gate<'_>) -> Later {
        Later {
            authorizer: gate.authorizer.clone(),
            ctx: gate.ctx.clone(),
            api: gate.api,
            version: gate.version,
            auditor: gate.auditor.clone(),
        }
    }

    pub(super) fn gate(&self) -> Gate<'_> {
        Gate {
            authorizer: self.authorizer.clone(),
            ctx: &self.ctx,
            api: self.api,
            version: self.version,
            auditor: self.auditor.clone(),
        }
    }

    /// `Gate::may_see`: listings leave out what the principal may not see, unlogged.
    pub(super) fn may_see(&self, op: AclOperation, rt: ResourceType, name: &str) -> bool {
        self.authorizer
            .authorize(&self.ctx.principal, &self.ctx.host, op, rt, name)
            .allowed()
    }
}

/// Building gates over a few ACLs, for the tests of this module and `txn.rs`.
#[cfg(test)]
pub(super) mod test_support {
    use super::super::{Checked, Gate, RequestContext};
    use kafka_protocol::messages::ResponseKind;
    use kafka_protocol::protocol::StrBytes;
    use shale_security::acl::{
        AclBinding, AclOperation, AclPermissionType, Authorizer, AuthorizerConfig, PatternType,
        ResourceType,
    };
    use shale_security::principal::KafkaPrincipal;
    use std::sync::Arc;

    /// The principal every test request comes from.
    pub const ALICE: &str = "User:alice";

    pub fn allow(rt: ResourceType, name: &str, op: AclOperation) -> AclBinding {
        acl(rt, name, PatternType::Literal, op, AclPermissionType::Allow)
    }

    pub fn allow_prefix(rt: ResourceType, prefix: &str, op: AclOperation) -> AclBinding {
        acl(
            rt,
            prefix,
            PatternType::Prefixed,
            op,
            AclPermissionType::Allow,
        )
    }

    pub fn deny(rt: ResourceType, name: &str, op: AclOperation) -> AclBinding {
        acl(rt, name, PatternType::Literal, op, AclPermissionType::Deny)
    }

    fn acl(
        rt: ResourceType,
        name: &str,
        pattern: PatternType,
        op: AclOperation,
        permission: AclPermissionType,
    ) -> AclBinding {
        AclBinding {
            resource_type: rt,
            resource_name: name.into(),
            pattern_type: pattern,
            principal: ALICE.into(),
            host: "*".into(),
            operation: op,
            permission,
        }
    }

    pub fn s(v: &str) -> StrBytes {
        StrBytes::from_string(v.to_string())
    }

    /// Alice, connecting from 10.0.0.1, under these ACLs.
    pub struct Fixture {
        authorizer: Arc<Authorizer>,
        ctx: RequestContext,
    }

    impl Fixture {
        pub fn new(acls: impl IntoIterator<Item = AclBinding>) -> Fixture {
            Fixture {
                authorizer: Arc::new(Authorizer::new(AuthorizerConfig::default(), acls)),
                ctx: RequestContext {
                    principal: KafkaPrincipal::user("alice"),
                    host: "10.0.0.1".into(),
                    listener: Arc::from("CLIENT"),
                    inter_broker: false,
                },
            }
        }

        pub fn gate(&self) -> Gate<'_> {
            Gate {
                authorizer: self.authorizer.clone(),
                ctx: &self.ctx,
                api: "test",
                version: 0,
                auditor: shale_security::audit::Auditor::disabled(),
            }
        }
    }

    /// The refusal's response; panics if the request was dispatched.
    pub fn refused(c: Checked) -> ResponseKind {
        match c {
            Checked::Refuse(r) => r,
            Checked::Dispatch(..) => panic!("dispatched, expected a refusal"),
            Checked::Close => panic!("closed, expected a refusal"),
        }
    }

    /// What was dispatched, and the response after the fixup ran on `handler_answer`.
    pub fn dispatched(
        c: Checked,
        handler_answer: ResponseKind,
    ) -> (kafka_protocol::messages::RequestKind, ResponseKind) {
        match c {
            Checked::Dispatch(body, fixup) => {
                let mut resp = Some(handler_answer);
                fixup.apply(&mut resp);
                (body, resp.expect("response"))
            }
            Checked::Refuse(_) => panic!("refused, expected a dispatch"),
            Checked::Close => panic!("closed, expected a dispatch"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::replay::test_support::FakeCluster;
    use super::test_support::*;
    use super::*;
    use AclOperation::{Delete, Describe, Read};
    use ResourceType::{Cluster, Group, Topic, TransactionalId};

    fn check(f: &Fixture, version: i16, body: RequestKind) -> Checked {
        check_request(&f.gate(), &FakeCluster::default(), version, body)
    }

    fn gid(v: &str) -> GroupId {
        GroupId(s(v))
    }

    fn tname(v: &str) -> TopicName {
        TopicName(s(v))
    }

    // FindCoordinator

    #[test]
    fn find_coordinator_v3_for_a_group_without_describe_is_refused_with_a_top_level_error() {
        let f = Fixture::new([allow(Group, "other", Describe)]);
        let req = FindCoordinatorRequest::default()
            .with_key(s("g"))
            .with_key_type(KEY_GROUP);
        let ResponseKind::FindCoordinator(r) =
            refused(check(&f, 3, RequestKind::FindCoordinator(req)))
        else {
            panic!("wrong response type")
        };
        assert_eq!(r.error_code, GROUP_DENIED);
        assert_eq!(
            r.error_message.as_deref(),
            Some("Group authorization failed.")
        );
        assert_eq!((r.node_id, r.host.as_str(), r.port), (BrokerId(-1), "", -1));
    }

    #[test]
    fn find_coordinator_v0_without_a_key_type_is_a_group_lookup() {
        let f = Fixture::new([allow(Group, "g", Read)]);
        let req = FindCoordinatorRequest::default().with_key(s("g"));
        let (body, _) = dispatched(
            check(&f, 0, RequestKind::FindCoordinator(req.clone())),
            ResponseKind::FindCoordinator(FindCoordinatorResponse::default()),
        );
        assert_eq!(body, RequestKind::FindCoordinator(req));
    }

    #[test]
    fn find_coordinator_for_a_transaction_needs_describe_on_the_transactional_id() {
        let f = Fixture::new([allow(Group, "t", Describe)]);
        let req = FindCoordinatorRequest::default()
            .with_key(s("t"))
            .with_key_type(KEY_TRANSACTION);
        let ResponseKind::FindCoordinator(r) =
            refused(check(&f, 2, RequestKind::FindCoordinator(req)))
        else {
            panic!("wrong response type")
        };
        assert_eq!(r.error_code, TXN_ID_DENIED);
        assert_eq!(
            r.error_message.as_deref(),
            Some("Transactional Id authorization failed.")
        );
    }

    #[test]
    fn find_coordinator_v4_looks_up_the_permitted_keys_and_answers_the_others_denied() {
        let f = Fixture::new([allow(TransactionalId, "mine", Describe)]);
        let req = FindCoordinatorRequest::default()
            .with_key_type(KEY_TRANSACTION)
            .with_coordinator_keys(vec![s("mine"), s("theirs")]);
        let found = find_coordinator_response::Coordinator::default()
            .with_key(s("mine"))
            .with_node_id(BrokerId(1))
            .with_host(s("b1"))
            .with_port(9092);
        let (body, resp) = dispatched(
            check(&f, 4, RequestKind::FindCoordinator(req)),
            ResponseKind::FindCoordinator(
                FindCoordinatorResponse::default().with_coordinators(vec![found.clone()]),
            ),
        );
        let RequestKind::FindCoordinator(sent) = body else {
            panic!("wrong request type")
        };
        assert_eq!(sent.coordinator_keys, vec![s("mine")]);
        let ResponseKind::FindCoordinator(r) = resp else {
            panic!("wrong response type")
        };
        assert_eq!(r.coordinators.len(), 2);
        assert_eq!(r.coordinators[0], found);
        let denied = &r.coordinators[1];
        assert_eq!(denied.key.as_str(), "theirs");
        assert_eq!(denied.error_code, TXN_ID_DENIED);
        assert_eq!(
            (denied.node_id, denied.host.as_str(), denied.port),
            (BrokerId(-1), "", -1)
        );
    }

    #[test]
    fn find_coordinator_v4_with_every_key_denied_never_reaches_the_handler() {
        let f = Fixture::new([]);
        let req = FindCoordinatorRequest::default().with_coordinator_keys(vec![s("a"), s("b")]);
        let ResponseKind::FindCoordinator(r) =
            refused(check(&f, 5, RequestKind::FindCoordinator(req)))
        else {
            panic!("wrong response type")
        };
        let keys: Vec<_> = r.coordinators.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["a", "b"]);
        assert!(r.coordinators.iter().all(|c| c.error_code == GROUP_DENIED));
    }

    // Join, Sync, Heartbeat, Leave

    #[test]
    fn join_group_without_read_answers_kafkas_error_response_per_version() {
        let f = Fixture::new([allow(Group, "g", Describe)]);
        let req = JoinGroupRequest::default()
            .with_group_id(gid("g"))
            .with_member_id(s("member-1"));
        for (version, protocol_name) in [(6, Some(s(""))), (7, None), (9, None)] {
            let ResponseKind::JoinGroup(r) =
                refused(check(&f, version, RequestKind::JoinGroup(req.clone())))
            else {
                panic!("wrong response type")
            };
            assert_eq!(r.error_code, GROUP_DENIED);
            assert_eq!(r.generation_id, -1);
            // Kafka answers no member id, not the one sent.
            assert_eq!(r.member_id.as_str(), "");
            assert_eq!(r.leader.as_str(), "");
            assert_eq!(r.protocol_name, protocol_name, "v{version}");
            assert!(r.members.is_empty());
        }
    }

    #[test]
    fn join_sync_heartbeat_and_leave_with_read_on_the_group_are_dispatched_unchanged() {
        let f = Fixture::new([allow_prefix(Group, "app-", Read)]);
        let bodies = [
            RequestKind::JoinGroup(JoinGroupRequest::default().with_group_id(gid("app-1"))),
            RequestKind::SyncGroup(SyncGroupRequest::default().with_group_id(gid("app-1"))),
            RequestKind::Heartbeat(HeartbeatRequest::default().with_group_id(gid("app-1"))),
            RequestKind::LeaveGroup(LeaveGroupRequest::default().with_group_id(gid("app-1"))),
        ];
        for body in bodies {
            let c = check(&f, 4, body.clone());
            let Checked::Dispatch(sent, Fixup::None) = c else {
                panic!("expected a plain dispatch of {body:?}")
            };
            assert_eq!(sent, body);
        }
    }

    #[test]
    fn sync_heartbeat_and_leave_without_read_are_group_authorization_failed() {
        let f = Fixture::new([allow(Group, "g", Describe)]);
        let sync = SyncGroupRequest::default()
            .with_group_id(gid("g"))
            .with_protocol_type(Some(s("consumer")))
            .with_protocol_name(Some(s("range")));
        let ResponseKind::SyncGroup(r) = refused(check(&f, 5, RequestKind::SyncGroup(sync))) else {
            panic!("wrong response type")
        };
        assert_eq!(r.error_code, GROUP_DENIED);
        assert!(r.assignment.is_empty());
        let hb = HeartbeatRequest::default().with_group_id(gid("g"));
        let ResponseKind::Heartbeat(r) = refused(check(&f, 4, RequestKind::Heartbeat(hb))) else {
            panic!("wrong response type")
        };
        assert_eq!(r.error_code, GROUP_DENIED);
        let leave = LeaveGroupRequest::default().with_group_id(gid("g"));
        let ResponseKind::LeaveGroup(r) = refused(check(&f, 5, RequestKind::LeaveGroup(leave)))
        else {
            panic!("wrong response type")
        };
        assert_eq!(r.error_code, GROUP_DENIED);
        assert!(r.members.is_empty());
    }

    #[test]
    fn sync_group_v5_without_protocol_fields_is_inconsistent_before_it_is_unauthorized() {
        let f = Fixture::new([]);
        let sync = SyncGroupRequest::default().with_group_id(gid("g"));
        let ResponseKind::SyncGroup(r) = refused(check(&f, 5, RequestKind::SyncGroup(sync))) else {
            panic!("wrong response type")
        };
        assert_eq!(
            r.error_code,
            ResponseError::InconsistentGroupProtocol.code()
        );
    }

    // OffsetCommit

    fn commit_topic(
        name: &str,
        partitions: &[i32],
    ) -> offset_commit_request::OffsetCommitRequestTopic {
        offset_commit_request::OffsetCommitRequestTopic::default()
            .with_name(tname(name))
            .with_partitions(
                partitions
                    .iter()
                    .map(|p| {
                        offset_commit_request::OffsetCommitRequestPartition::default()
                            .with_partition_index(*p)
                            .with_committed_offset(10)
                    })
                    .collect(),
            )
    }

    fn commit_codes(r: &OffsetCommitResponse) -> Vec<(String, i32, i16)> {
        r.topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.name.to_string(), p.partition_index, p.error_code))
            })
            .collect()
    }

    #[test]
    fn offset_commit_without_read_on_the_group_fails_every_partition() {
        let f = Fixture::new([allow(Topic, "a", Read)]);
        let req = OffsetCommitRequest::default()
            .with_group_id(gid("g"))
            .with_topics(vec![commit_topic("a", &[0, 1]), commit_topic("b", &[0])]);
        let ResponseKind::OffsetCommit(r) = refused(check(&f, 8, RequestKind::OffsetCommit(req)))
        else {
            panic!("wrong response type")
        };
        assert_eq!(
            commit_codes(&r),
            [
                ("a".into(), 0, GROUP_DENIED),
                ("a".into(), 1, GROUP_DENIED),
                ("b".into(), 0, GROUP_DENIED)
            ]
        );
    }

    #[test]
    fn offset_commit_commits_the_readable_topics_and_fails_the_others() {
        let f = Fixture::new([allow(Group, "g", Read), allow(Topic, "a", Read)]);
        let req = OffsetCommitRequest::default()
            .with_group_id(gid("g"))
            .with_topics(vec![commit_topic("a", &[0]), commit_topic("b", &[0, 1])]);
        let committed = offset_commit_response::OffsetCommitResponseTopic::default()
            .with_name(tname("a"))
            .with_partitions(vec![
                offset_commit_response::OffsetCommitResponsePartition::default(),
            ]);
        let (body, resp) = dispatched(
            check(&f, 8, RequestKind::OffsetCommit(req)),
            ResponseKind::OffsetCommit(
                OffsetCommitResponse::default().with_topics(vec![committed]),
            ),
        );
        let RequestKind::OffsetCommit(sent) = body else {
            panic!("wrong request type")
        };
        assert_eq!(sent.topics, vec![commit_topic("a", &[0])]);
        let ResponseKind::OffsetCommit(r) = resp else {
            panic!("wrong response type")
        };
        assert_eq!(
            commit_codes(&r),
            [
                ("b".into(), 0, TOPIC_DENIED),
                ("b".into(), 1, TOPIC_DENIED),
                ("a".into(), 0, 0)
            ]
        );
    }

    #[test]
    fn offset_commit_with_every_topic_denied_is_answered_without_the_coordinator() {
        let f = Fixture::new([allow(Group, "g", Read)]);
        let req = OffsetCommitRequest::default()
            .with_group_id(gid("g"))
            .with_topics(vec![commit_topic("b", &[3])]);
        let ResponseKind::OffsetCommit(r) = refused(check(&f, 2, RequestKind::OffsetCommit(req)))
        else {
            panic!("wrong response type")
        };
        assert_eq!(commit_codes(&r), [("b".into(), 3, TOPIC_DENIED)]);
    }

    /// "a" has a replay window; group g has committed 50 on a-0 (nothing on a-1).
    fn windowed() -> FakeCluster {
        let mut c = FakeCluster::default();
        c.windows.insert("a".into(), 60_000);
        c.committed.insert(("g".into(), "a".into(), 0), 50);
        c
    }

    #[test]
    fn offset_commit_backwards_on_a_windowed_topic_fails_that_partition_without_the_replay_grant() {
        let f = Fixture::new([allow(Group, "g", Read), allow(Topic, "a", Read)]);
        // Both partitions commit offset 10: backwards on a-0, a first commit on a-1.
        let req = OffsetCommitRequest::default()
            .with_group_id(gid("g"))
            .with_topics(vec![commit_topic("a", &[0, 1])]);
        let committed = offset_commit_response::OffsetCommitResponseTopic::default()
            .with_name(tname("a"))
            .with_partitions(vec![
                offset_commit_response::OffsetCommitResponsePartition::default()
                    .with_partition_index(1),
            ]);
        let (body, resp) = dispatched(
            check_request(&f.gate(), &windowed(), 8, RequestKind::OffsetCommit(req)),
            ResponseKind::OffsetCommit(
                OffsetCommitResponse::default().with_topics(vec![committed]),
            ),
        );
        let RequestKind::OffsetCommit(sent) = body else {
            panic!("wrong request type")
        };
        assert_eq!(sent.topics, vec![commit_topic("a", &[1])]);
        let ResponseKind::OffsetCommit(r) = resp else {
            panic!("wrong response type")
        };
        assert_eq!(
            commit_codes(&r),
            [("a".into(), 0, TOPIC_DENIED), ("a".into(), 1, 0)]
        );
    }

    #[test]
    fn offset_commit_backwards_with_the_replay_grant_reaches_the_coordinator() {
        let f = Fixture::new([
            allow(Group, "g", Read),
            allow(Topic, "a", Read),
            allow(Topic, "__replay.a", Read),
        ]);
        let req = OffsetCommitRequest::default()
            .with_group_id(gid("g"))
            .with_topics(vec![commit_topic("a", &[0])]);
        let (body, _) = dispatched(
            check_request(
                &f.gate(),
                &windowed(),
                8,
                RequestKind::OffsetCommit(req.clone()),
            ),
            ResponseKind::OffsetCommit(OffsetCommitResponse::default()),
        );
        assert_eq!(body, RequestKind::OffsetCommit(req));
    }

    #[test]
    fn offset_commit_with_every_partition_rewound_is_answered_without_the_coordinator() {
        let f = Fixture::new([allow(Group, "g", Read), allow(Topic, "a", Read)]);
        let req = OffsetCommitRequest::default()
            .with_group_id(gid("g"))
            .with_topics(vec![commit_topic("a", &[0])]);
        let ResponseKind::OffsetCommit(r) = refused(check_request(
            &f.gate(),
            &windowed(),
            8,
            RequestKind::OffsetCommit(req),
        )) else {
            panic!("wrong response type")
        };
        assert_eq!(commit_codes(&r), [("a".into(), 0, TOPIC_DENIED)]);
    }

    // OffsetFetch

    fn fetch_topic(
        name: &str,
        partitions: &[i32],
    ) -> offset_fetch_request::OffsetFetchRequestTopic {
        offset_fetch_request::OffsetFetchRequestTopic::default()
            .with_name(tname(name))
            .with_partition_indexes(partitions.to_vec())
    }

    fn fetched(name: &str) -> offset_fetch_response::OffsetFetchResponseTopic {
        offset_fetch_response::OffsetFetchResponseTopic::default()
            .with_name(tname(name))
            .with_partitions(vec![
                offset_fetch_response::OffsetFetchResponsePartition::default()
                    .with_committed_offset(42),
            ])
    }

    #[test]
    fn offset_fetch_without_describe_on_the_group_is_a_top_level_error_with_no_topics() {
        let f = Fixture::new([allow(Topic, "a", Describe)]);
        let req = OffsetFetchRequest::default()
            .with_group_id(gid("g"))
            .with_topics(Some(vec![fetch_topic("a", &[0])]));
        for version in [1, 2, 7] {
            let ResponseKind::OffsetFetch(r) =
                refused(check(&f, version, RequestKind::OffsetFetch(req.clone())))
            else {
                panic!("wrong response type")
            };
            assert_eq!(r.error_code, GROUP_DENIED);
            assert!(r.topics.is_empty());
        }
    }

    #[test]
    fn offset_fetch_of_named_topics_fetches_the_visible_ones_and_denies_the_others() {
        let f = Fixture::new([allow(Group, "g", Describe), allow(Topic, "a", Read)]);
        let req = OffsetFetchRequest::default()
            .with_group_id(gid("g"))
            .with_topics(Some(vec![
                fetch_topic("a", &[0]),
                fetch_topic("b", &[0, 1]),
            ]));
        let (body, resp) = dispatched(
            check(&f, 7, RequestKind::OffsetFetch(req)),
            ResponseKind::OffsetFetch(
                OffsetFetchResponse::default().with_topics(vec![fetched("a")]),
            ),
        );
        let RequestKind::OffsetFetch(sent) = body else {
            panic!("wrong request type")
        };
        assert_eq!(sent.topics, Some(vec![fetch_topic("a", &[0])]));
        let ResponseKind::OffsetFetch(r) = resp else {
            panic!("wrong response type")
        };
        assert_eq!(r.topics.len(), 2);
        let b = &r.topics[1];
        assert_eq!(b.name.as_str(), "b");
        let parts: Vec<_> = b
            .partitions
            .iter()
            .map(|p| {
                (
                    p.partition_index,
                    p.committed_offset,
                    p.metadata.as_deref(),
                    p.error_code,
                )
            })
            .collect();
        assert_eq!(
            parts,
            [
                (0, -1, Some(""), TOPIC_DENIED),
                (1, -1, Some(""), TOPIC_DENIED)
            ]
        );
    }

    #[test]
    fn offset_fetch_adds_no_denied_topics_to_a_group_level_error() {
        let f = Fixture::new([allow(Group, "g", Describe)]);
        let req = OffsetFetchRequest::default()
            .with_group_id(gid("g"))
            .with_topics(Some(vec![fetch_topic("b", &[0])]));
        let not_coordinator = ResponseError::NotCoordinator.code();
        let (body, resp) = dispatched(
            check(&f, 6, RequestKind::OffsetFetch(req)),
            ResponseKind::OffsetFetch(
                OffsetFetchResponse::default().with_error_code(not_coordinator),
            ),
        );
        let RequestKind::OffsetFetch(sent) = body else {
            panic!("wrong request type")
        };
        // The group is still asked, for no topic.
        assert_eq!(sent.topics, Some(vec![]));
        let ResponseKind::OffsetFetch(r) = resp else {
            panic!("wrong response type")
        };
        assert_eq!(r.error_code, not_coordinator);
        assert!(r.topics.is_empty());
    }

    #[test]
    fn offset_fetch_of_all_topics_silently_leaves_out_those_not_describable() {
        let f = Fixture::new([allow(Group, "g", Describe), allow(Topic, "a", Describe)]);
        let req = OffsetFetchRequest::default()
            .with_group_id(gid("g"))
            .with_topics(None);
        let (body, resp) = dispatched(
            check(&f, 7, RequestKind::OffsetFetch(req.clone())),
            ResponseKind::OffsetFetch(
                OffsetFetchResponse::default().with_topics(vec![fetched("a"), fetched("b")]),
            ),
        );
        assert_eq!(body, RequestKind::OffsetFetch(req));
        let ResponseKind::OffsetFetch(r) = resp else {
            panic!("wrong response type")
        };
        let names: Vec<_> = r.topics.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a"]);
    }

    #[test]
    fn offset_fetch_v8_checks_each_group_and_its_topics() {
        use offset_fetch_request::{OffsetFetchRequestGroup, OffsetFetchRequestTopics};
        use offset_fetch_response::{OffsetFetchResponseGroup, OffsetFetchResponseTopics};
        let f = Fixture::new([
            allow(Group, "named", Describe),
            allow(Group, "all", Describe),
            allow(Topic, "a", Describe),
        ]);
        let topics = |names: &[&str]| {
            names
                .iter()
                .map(|n| {
                    OffsetFetchRequestTopics::default()
                        .with_name(tname(n))
                        .with_partition_indexes(vec![0])
                })
                .collect::<Vec<_>>()
        };
        let req = OffsetFetchRequest::default().with_groups(vec![
            OffsetFetchRequestGroup::default()
                .with_group_id(gid("named"))
                .with_topics(Some(topics(&["a", "b"]))),
            OffsetFetchRequestGroup::default()
                .with_group_id(gid("all"))
                .with_topics(None),
            OffsetFetchRequestGroup::default()
                .with_group_id(gid("secret"))
                .with_topics(None),
        ]);
        let answer = |name: &str| OffsetFetchResponseTopics::default().with_name(tname(name));
        let handler = OffsetFetchResponse::default().with_groups(vec![
            OffsetFetchResponseGroup::default()
                .with_group_id(gid("named"))
                .with_topics(vec![answer("a")]),
            OffsetFetchResponseGroup::default()
                .with_group_id(gid("all"))
                .with_topics(vec![answer("a"), answer("b")]),
        ]);
        let (body, resp) = dispatched(
            check(&f, 8, RequestKind::OffsetFetch(req)),
            ResponseKind::OffsetFetch(handler),
        );
        let RequestKind::OffsetFetch(sent) = body else {
            panic!("wrong request type")
        };
        let sent: Vec<_> = sent
            .groups
            .iter()
            .map(|g| {
                (
                    g.group_id.as_str(),
                    g.topics
                        .as_ref()
                        .map(|ts| ts.iter().map(|t| t.name.to_string()).collect::<Vec<_>>()),
                )
            })
            .collect();
        assert_eq!(
            sent,
            [("named", Some(vec!["a".to_string()])), ("all", None)]
        );
        let ResponseKind::OffsetFetch(r) = resp else {
            panic!("wrong response type")
        };
        let groups: Vec<_> = r
            .groups
            .iter()
            .map(|g| {
                (
                    g.group_id.as_str(),
                    g.error_code,
                    g.topics
                        .iter()
                        .map(|t| {
                            (
                                t.name.to_string(),
                                t.partitions.iter().map(|p| p.error_code).collect(),
                            )
                        })
                        .collect::<Vec<(String, Vec<i16>)>>(),
                )
            })
            .collect();
        assert_eq!(
            groups,
            [
                (
                    "named",
                    0,
                    vec![("a".into(), vec![]), ("b".into(), vec![TOPIC_DENIED])]
                ),
                ("all", 0, vec![("a".into(), vec![])]),
                ("secret", GROUP_DENIED, vec![]),
            ]
        );
    }

    #[test]
    fn offset_fetch_v8_with_every_group_denied_never_reaches_the_handler() {
        let f = Fixture::new([]);
        let req = OffsetFetchRequest::default().with_groups(vec![
            offset_fetch_request::OffsetFetchRequestGroup::default().with_group_id(gid("x")),
        ]);
        let ResponseKind::OffsetFetch(r) = refused(check(&f, 8, RequestKind::OffsetFetch(req)))
        else {
            panic!("wrong response type")
        };
        assert_eq!(r.groups.len(), 1);
        assert_eq!(
            (r.groups[0].group_id.as_str(), r.groups[0].error_code),
            ("x", GROUP_DENIED)
        );
    }

    // OffsetDelete

    fn delete_topic(name: &str) -> offset_delete_request::OffsetDeleteRequestTopic {
        offset_delete_request::OffsetDeleteRequestTopic::default()
            .with_name(tname(name))
            .with_partitions(vec![
                offset_delete_request::OffsetDeleteRequestPartition::default()
                    .with_partition_index(0),
            ])
    }

    #[test]
    fn offset_delete_needs_delete_on_the_group() {
        let f = Fixture::new([allow(Group, "g", Read), allow(Topic, "a", Read)]);
        let req = OffsetDeleteRequest::default()
            .with_group_id(gid("g"))
            .with_topics(vec![delete_topic("a")]);
        let ResponseKind::OffsetDelete(r) = refused(check(&f, 0, RequestKind::OffsetDelete(req)))
        else {
            panic!("wrong response type")
        };
        assert_eq!(r.error_code, GROUP_DENIED);
        assert!(r.topics.is_empty());
    }

    #[test]
    fn offset_delete_deletes_for_readable_topics_and_fails_the_others() {
        let f = Fixture::new([allow(Group, "g", Delete), allow(Topic, "a", Read)]);
        let req = OffsetDeleteRequest::default()
            .with_group_id(gid("g"))
            .with_topics(vec![delete_topic("a"), delete_topic("b")]);
        let (body, resp) = dispatched(
            check(&f, 0, RequestKind::OffsetDelete(req)),
            ResponseKind::OffsetDelete(OffsetDeleteResponse::default()),
        );
        let RequestKind::OffsetDelete(sent) = body else {
            panic!("wrong request type")
        };
        assert_eq!(sent.topics, vec![delete_topic("a")]);
        let ResponseKind::OffsetDelete(r) = resp else {
            panic!("wrong response type")
        };
        assert_eq!(r.topics.len(), 1);
        assert_eq!(r.topics[0].name.as_str(), "b");
        assert_eq!(r.topics[0].partitions[0].error_code, TOPIC_DENIED);
    }

    #[test]
    fn offset_delete_with_a_group_error_answers_only_that_error() {
        let f = Fixture::new([allow(Group, "g", Delete)]);
        let req = OffsetDeleteRequest::default()
            .with_group_id(gid("g"))
            .with_topics(vec![delete_topic("b")]);
        let not_found = ResponseError::GroupIdNotFound.code();
        let (_, resp) = dispatched(
            check(&f, 0, RequestKind::OffsetDelete(req)),
            ResponseKind::OffsetDelete(OffsetDeleteResponse::default().with_error_code(not_found)),
        );
        let ResponseKind::OffsetDelete(r) = resp else {
            panic!("wrong response type")
        };
        assert_eq!(r.error_code, not_found);
        assert!(r.topics.is_empty());
    }

    // DescribeGroups

    #[test]
    fn describe_groups_keeps_denied_groups_in_the_answer_with_their_error() {
        use describe_groups_response::DescribedGroup;
        let f = Fixture::new([allow(Group, "mine", Describe)]);
        let req = DescribeGroupsRequest::default().with_groups(vec![gid("secret"), gid("mine")]);
        let described = DescribedGroup::default()
            .with_group_id(gid("mine"))
            .with_group_state(s("Stable"));
        let (body, resp) = dispatched(
            check(&f, 2, RequestKind::DescribeGroups(req)),
            ResponseKind::DescribeGroups(
                DescribeGroupsResponse::default().with_groups(vec![described.clone()]),
            ),
        );
        let RequestKind::DescribeGroups(sent) = body else {
            panic!("wrong request type")
        };
        assert_eq!(sent.groups, vec![gid("mine")]);
        let ResponseKind::DescribeGroups(r) = resp else {
            panic!("wrong response type")
        };
        assert_eq!(r.groups.len(), 2);
        let denied = &r.groups[0];
        assert_eq!(denied.group_id, gid("secret"));
        assert_eq!(denied.error_code, GROUP_DENIED);
        assert_eq!(denied.group_state.as_str(), "");
        assert!(denied.members.is_empty());
        assert_eq!(denied.authorized_operations, i32::MIN);
        assert_eq!(r.groups[1], described);
    }

    #[test]
    fn describe_groups_reports_the_principals_own_group_operations_when_asked() {
        use describe_groups_response::DescribedGroup;
        let f = Fixture::new([allow(Group, "g", Read)]);
        let req = DescribeGroupsRequest::default()
            .with_groups(vec![gid("g")])
            .with_include_authorized_operations(true);
        let handler_ops = (1 << 3) | (1 << 8) | (1 << 6);
        let (_, resp) = dispatched(
            check(&f, 3, RequestKind::DescribeGroups(req)),
            ResponseKind::DescribeGroups(DescribeGroupsResponse::default().with_groups(vec![
                DescribedGroup::default()
                    .with_group_id(gid("g"))
                    .with_authorized_operations(handler_ops),
            ])),
        );
        let ResponseKind::DescribeGroups(r) = resp else {
            panic!("wrong response type")
        };
        // READ implies DESCRIBE; DELETE is not granted.
        let read_and_describe =
            (1 << AclOperation::Read.code()) | (1 << AclOperation::Describe.code());
        assert_eq!(r.groups[0].authorized_operations, read_and_describe);
    }

    #[test]
    fn describe_groups_with_every_group_denied_never_reaches_the_handler() {
        let f = Fixture::new([]);
        let req = DescribeGroupsRequest::default().with_groups(vec![gid("a"), gid("b")]);
        let ResponseKind::DescribeGroups(r) =
            refused(check(&f, 5, RequestKind::DescribeGroups(req)))
        else {
            panic!("wrong response type")
        };
        assert!(r.groups.iter().all(|g| g.error_code == GROUP_DENIED));
        assert_eq!(r.groups.len(), 2);
    }

    // ListGroups

    fn listed(names: &[&str]) -> ResponseKind {
        ResponseKind::ListGroups(
            ListGroupsResponse::default().with_groups(
                names
                    .iter()
                    .map(|n| list_groups_response::ListedGroup::default().with_group_id(gid(n)))
                    .collect(),
            ),
        )
    }

    fn listed_names(r: &ResponseKind) -> Vec<String> {
        let ResponseKind::ListGroups(l) = r else {
            panic!("wrong response type")
        };
        l.groups.iter().map(|g| g.group_id.to_string()).collect()
    }

    #[test]
    fn list_groups_with_describe_on_the_cluster_lists_every_group() {
        let f = Fixture::new([allow(Cluster, CLUSTER_NAME, Describe)]);
        let (_, resp) = dispatched(
            check(&f, 4, RequestKind::ListGroups(ListGroupsRequest::default())),
            listed(&["a", "b"]),
        );
        assert_eq!(listed_names(&resp), ["a", "b"]);
    }

    #[test]
    fn list_groups_otherwise_lists_only_the_describable_groups() {
        let f = Fixture::new([allow_prefix(Group, "team-", Describe)]);
        let (_, resp) = dispatched(
            check(&f, 4, RequestKind::ListGroups(ListGroupsRequest::default())),
            listed(&["team-a", "other", "team-b"]),
        );
        assert_eq!(listed_names(&resp), ["team-a", "team-b"]);
    }

    // DeleteGroups

    #[test]
    fn delete_groups_deletes_the_permitted_groups_and_fails_each_other_once() {
        use delete_groups_response::DeletableGroupResult;
        let f = Fixture::new([allow(Group, "old", Delete), deny(Group, "kept", Delete)]);
        let req = DeleteGroupsRequest::default().with_groups_names(vec![
            gid("old"),
            gid("kept"),
            gid("kept"),
        ]);
        let (body, resp) = dispatched(
            check(&f, 2, RequestKind::DeleteGroups(req)),
            ResponseKind::DeleteGroups(DeleteGroupsResponse::default().with_results(vec![
                DeletableGroupResult::default().with_group_id(gid("old")),
            ])),
        );
        let RequestKind::DeleteGroups(sent) = body else {
            panic!("wrong request type")
        };
        assert_eq!(sent.groups_names, vec![gid("old")]);
        let ResponseKind::DeleteGroups(r) = resp else {
            panic!("wrong response type")
        };
        let results: Vec<_> = r
            .results
            .iter()
            .map(|g| (g.group_id.as_str(), g.error_code))
            .collect();
        assert_eq!(results, [("old", 0), ("kept", GROUP_DENIED)]);
    }

    #[test]
    fn delete_groups_with_every_group_denied_never_reaches_the_handler() {
        let f = Fixture::new([allow(Group, "g", Read)]);
        let req = DeleteGroupsRequest::default().with_groups_names(vec![gid("g")]);
        let ResponseKind::DeleteGroups(r) = refused(check(&f, 0, RequestKind::DeleteGroups(req)))
        else {
            panic!("wrong response type")
        };
        assert_eq!(r.results.len(), 1);
        assert_eq!(r.results[0].error_code, GROUP_DENIED);
    }
}
