//! ACL administration: CreateAcls, DescribeAcls, DeleteAcls (`kafka-acls.sh`, every
//! AdminClient). ACLs live in the metadata quorum; each node's authorizer is rebuilt from
//! them when they change (see `crate::authz`).

use crate::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{
    CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DescribeAclsRequest, DescribeAclsResponse,
};
use kafka_protocol::protocol::StrBytes;
use shale_meta::AclEntryMeta;
use shale_security::acl::{
    AclBinding, AclFilter, AclOperation, AclPermissionType, PatternType, ResourceType,
};
use std::collections::BTreeMap;

/// A stored ACL in the security layer's terms; `None` for codes it does not know (never
/// written by Shale, but the state may come from a newer version).
pub(crate) fn binding(a: &AclEntryMeta) -> Option<AclBinding> {
    Some(AclBinding {
        resource_type: ResourceType::from_code(a.resource_type)?,
        resource_name: a.resource_name.clone(),
        pattern_type: PatternType::from_code(a.pattern_type)?,
        principal: a.principal.clone(),
        host: a.host.clone(),
        operation: AclOperation::from_code(a.operation)?,
        permission: AclPermissionType::from_code(a.permission)?,
    })
}

fn entry(b: &AclBinding) -> AclEntryMeta {
    AclEntryMeta {
        resource_type: b.resource_type.code(),
        resource_name: b.resource_name.clone(),
        pattern_type: b.pattern_type.code(),
        principal: b.principal.clone(),
        host: b.host.clone(),
        operation: b.operation.code(),
        permission: b.permission.code(),
    }
}

/// Unknown codes become `Unknown`, which validation then refuses with Kafka's message.
fn filter(
    resource_type: i8,
    name: Option<&StrBytes>,
    pattern_type: i8,
    principal: Option<&StrBytes>,
    host: Option<&StrBytes>,
    operation: i8,
    permission: i8,
) -> AclFilter {
    AclFilter {
        resource_type: ResourceType::from_code(resource_type).unwrap_or(ResourceType::Unknown),
        resource_name: name.map(|s| s.to_string()),
        pattern_type: PatternType::from_code(pattern_type).unwrap_or(PatternType::Unknown),
        principal: principal.map(|s| s.to_string()),
        host: host.map(|s| s.to_string()),
        operation: AclOperation::from_code(operation).unwrap_or(AclOperation::Unknown),
        permission: AclPermissionType::from_code(permission).unwrap_or(AclPermissionType::Unknown),
    }
}

/// The answer to a change the quorum committed, once the wait for every live broker to
/// apply it ended: success, or REQUEST_TIMED_OUT saying the change is committed but some
/// broker had not applied it yet (it is not undone: a retry is harmless).
pub(crate) fn in_force_outcome(
    waited: Result<(), shale_meta::MetaError>,
) -> (i16, Option<StrBytes>) {
    match waited {
        Ok(()) => (0, None),
        Err(e) => {
            tracing::warn!(error = %e, "a committed security change is not applied everywhere yet");
            (
                ResponseError::RequestTimedOut.code(),
                Some(StrBytes::from_string(format!(
                    "committed, but not yet applied on every broker: {e}"
                ))),
            )
        }
    }
}

fn quorum_error(e: &shale_meta::MetaError) -> (i16, Option<StrBytes>) {
    (
        ResponseError::NotController.code(),
        Some(StrBytes::from_string(format!(
            "the metadata quorum did not take the change: {e}"
        ))),
    )
}

pub async fn create_acls(
    broker: &Broker,
    _version: i16,
    req: CreateAclsRequest,
) -> CreateAclsResponse {
    let mut results = Vec::with_capacity(req.creations.len());
    let mut valid = Vec::new();
    for c in &req.creations {
        let b = AclBinding {
            resource_type: ResourceType::from_code(c.resource_type)
                .unwrap_or(ResourceType::Unknown),
            resource_name: c.resource_name.to_string(),
            pattern_type: PatternType::from_code(c.resource_pattern_type)
                .unwrap_or(PatternType::Unknown),
            principal: c.principal.to_string(),
            host: c.host.to_string(),
            operation: AclOperation::from_code(c.operation).unwrap_or(AclOperation::Unknown),
            permission: AclPermissionType::from_code(c.permission_type)
                .unwrap_or(AclPermissionType::Unknown),
        };
        match b.validate() {
            Ok(()) => {
                valid.push((results.len(), entry(&b)));
                results.push(AclCreationResult::default());
            }
            Err(message) => results.push(
                AclCreationResult::default()
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(StrBytes::from_string(message))),
            ),
        }
    }
    if !valid.is_empty() {
        let (slots, acls): (Vec<usize>, Vec<AclEntryMeta>) = valid.into_iter().unzip();
        let outcome = match broker.meta.create_acls(acls).await {
            Ok(()) => in_force_outcome(broker.acls_in_force().await),
            Err(e) => quorum_error(&e),
        };
        if outcome.0 != 0 {
            let (code, message) = outcome;
            for i in slots {
                results[i] = AclCreationResult::default()
                    .with_error_code(code)
                    .with_error_message(message.clone());
            }
        }
    }
    CreateAclsResponse::default().with_results(results)
}

pub async fn describe_acls(
    broker: &Broker,
    _version: i16,
    req: DescribeAclsRequest,
) -> DescribeAclsResponse {
    let f = filter(
        req.resource_type_filter,
        req.resource_name_filter.as_ref(),
        req.pattern_type_filter,
        req.principal_filter.as_ref(),
        req.host_filter.as_ref(),
        req.operation,
        req.permission_type,
    );
    if let Err(message) = f.validate() {
        return DescribeAclsResponse::default()
            .with_error_code(ResponseError::InvalidRequest.code())
            .with_error_message(Some(StrBytes::from_string(message)));
    }
    let acls = broker.meta.read(|s| s.acls.clone());
    // Grouped by resource pattern, as Kafka answers.
    let mut by_resource: BTreeMap<(i8, String, i8), Vec<AclDescription>> = BTreeMap::new();
    for b in acls.values().filter_map(binding).filter(|b| f.matches(b)) {
        by_resource
            .entry((
                b.resource_type.code(),
                b.resource_name.clone(),
                b.pattern_type.code(),
            ))
            .or_default()
            .push(
                AclDescription::default()
                    .with_principal(StrBytes::from_string(b.principal))
                    .with_host(StrBytes::from_string(b.host))
                    .with_operation(b.operation.code())
                    .with_permission_type(b.permission.code()),
            );
    }
    let resources = by_resource
        .into_iter()
        .map(|((rt, name, pt), acls)| {
            DescribeAclsResource::default()
                .with_resource_type(rt)
                .with_resource_name(StrBytes::from_string(name))
                .with_pattern_type(pt)
                .with_acls(acls)
        })
        .collect();
    DescribeAclsResponse::default().with_resources(resources)
}

pub async fn delete_acls(
    broker: &Broker,
    _version: i16,
    req: DeleteAclsRequest,
) -> DeleteAclsResponse {
    let acls = broker.meta.read(|s| s.acls.clone());
    let mut ids = std::collections::BTreeSet::new();
    let mut results: Vec<DeleteAclsFilterResult> = Vec::with_capacity(req.filters.len());
    for r in &req.filters {
        let f = filter(
            r.resource_type_filter,
            r.resource_name_filter.as_ref(),
            r.pattern_type_filter,
            r.principal_filter.as_ref(),
            r.host_filter.as_ref(),
            r.operation,
            r.permission_type,
        );
        if let Err(message) = f.validate() {
            results.push(
                DeleteAclsFilterResult::default()
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(StrBytes::from_string(message))),
            );
            continue;
        }
        let matching = acls
            .iter()
            .filter_map(|(id, a)| Some((*id, binding(a)?)))
            .filter(|(_, b)| f.matches(b))
            .map(|(id, b)| {
                ids.insert(id);
                DeleteAclsMatchingAcl::default()
                    .with_resource_type(b.resource_type.code())
                    .with_resource_name(StrBytes::from_string(b.resource_name))
                    .with_pattern_type(b.pattern_type.code())
                    .with_principal(StrBytes::from_string(b.principal))
                    .with_host(StrBytes::from_string(b.host))
                    .with_operation(b.operation.code())
                    .with_permission_type(b.permission.code())
            })
            .collect();
        results.push(DeleteAclsFilterResult::default().with_matching_acls(matching));
    }
    if !ids.is_empty() {
        let outcome = match broker.meta.delete_acls(ids.into_iter().collect()).await {
            Ok(()) => in_force_outcome(broker.acls_in_force().await),
            Err(e) => quorum_error(&e),
        };
        if outcome.0 != 0 {
            let (code, message) = outcome;
            for r in results.iter_mut().filter(|r| r.error_code == 0) {
                *r = DeleteAclsFilterResult::default()
                    .with_error_code(code)
                    .with_error_message(message.clone());
            }
        }
    }
    DeleteAclsResponse::default().with_filter_results(results)
}
