//! Client quotas: DescribeClientQuotas and AlterClientQuotas (KIP-546), what
//! `kafka-client-quotas.sh` and `kafka-configs.sh --entity-type users|clients` use.
//!
//! Quotas live in the metadata quorum, so every node enforces the same ones and they
//! survive any node's loss. Validation is Kafka's (`ClientQuotaControlManager`): entity
//! types `user` and `client-id` (alone or together, each at most once), known keys only,
//! byte rates whole numbers. Shale refuses what it would store without enforcing: `ip`
//! entities (`connection_creation_rate`) and `controller_mutation_rate`.

use crate::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_client_quotas_response::{
    EntityData as AlterEntity, EntryData as AlterEntry,
};
use kafka_protocol::messages::describe_client_quotas_response::{
    EntityData as DescribeEntity, EntryData as DescribeEntry, ValueData,
};
use kafka_protocol::messages::{
    AlterClientQuotasRequest, AlterClientQuotasResponse, DescribeClientQuotasRequest,
    DescribeClientQuotasResponse,
};
use kafka_protocol::protocol::StrBytes;
use shale_meta::{QuotaEntityMeta, QuotaValue};
use shale_security::quota::{CLIENT_ID, QuotaType, USER};

/// DescribeClientQuotas match types.
const MATCH_EXACT: i8 = 0;
const MATCH_DEFAULT: i8 = 1;
const MATCH_SPECIFIED: i8 = 2;

type Refusal = (ResponseError, String);

fn invalid(message: impl Into<String>) -> Refusal {
    (ResponseError::InvalidRequest, message.into())
}

pub async fn describe_client_quotas(
    broker: &Broker,
    _version: i16,
    req: DescribeClientQuotasRequest,
) -> DescribeClientQuotasResponse {
    let filter = match describe_filter(&req) {
        Ok(f) => f,
        Err((e, message)) => {
            return DescribeClientQuotasResponse::default()
                .with_error_code(e.code())
                .with_error_message(Some(StrBytes::from_string(message)))
                .with_entries(None);
        }
    };
    let stored = broker.meta.read(|s| s.client_quotas.clone());
    let entries = stored
        .values()
        .filter(|q| matches(&filter, req.strict, &q.entity))
        .map(|q| {
            DescribeEntry::default()
                .with_entity(
                    q.entity
                        .iter()
                        .map(|(t, name)| {
                            DescribeEntity::default()
                                .with_entity_type(StrBytes::from_string(t.clone()))
                                .with_entity_name(name.clone().map(StrBytes::from_string))
                        })
                        .collect(),
                )
                .with_values(
                    q.values
                        .iter()
                        .map(|(k, v)| {
                            ValueData::default()
                                .with_key(StrBytes::from_string(k.clone()))
                                .with_value(v.0)
                        })
                        .collect(),
                )
        })
        .collect();
    DescribeClientQuotasResponse::default().with_entries(Some(entries))
}

/// One filter component: the entity type and what its name must be (`None`: any name,
/// the default included; `Some(None)`: the default; `Some(Some(n))`: exactly `n`).
type Component = (String, Option<Option<String>>);

fn describe_filter(req: &DescribeClientQuotasRequest) -> Result<Vec<Component>, Refusal> {
    let mut out: Vec<Component> = Vec::new();
    for c in &req.components {
        let t = c.entity_type.to_string();
        // As Kafka's controller: an empty type is a bad request, another type one it does
        // not know.
        if t.is_empty() {
            return Err(invalid("Invalid empty entity type."));
        }
        if t != USER && t != CLIENT_ID && t != "ip" {
            return Err((
                ResponseError::UnsupportedVersion,
                format!("Custom entity type {t} is not supported"),
            ));
        }
        if out.iter().any(|(seen, _)| *seen == t) {
            return Err(invalid(format!(
                "Duplicate {t} filter component entity type"
            )));
        }
        let name = match c.match_type {
            MATCH_EXACT => match &c._match {
                Some(m) => Some(Some(m.to_string())),
                None => return Err(invalid("Exact match requires a name")),
            },
            MATCH_DEFAULT => {
                if c._match.is_some() {
                    return Err(invalid("A default match takes no name"));
                }
                Some(None)
            }
            MATCH_SPECIFIED => {
                if c._match.is_some() {
                    return Err(invalid("A specified match takes no name"));
                }
                None
            }
            other => return Err(invalid(format!("Unknown match type {other}"))),
        };
        out.push((t, name));
    }
    Ok(out)
}

/// Whether an entity passes the filter: every component names one of its parts (and, if
/// `strict`, it has no other part).
fn matches(filter: &[Component], strict: bool, entity: &QuotaEntityMeta) -> bool {
    let each = filter.iter().all(|(t, want)| {
        entity
            .iter()
            .find(|(et, _)| et == t)
            .is_some_and(|(_, name)| want.as_ref().is_none_or(|w| w == name))
    });
    each && (!strict || entity.len() == filter.len())
}

pub async fn alter_client_quotas(
    broker: &Broker,
    _version: i16,
    req: AlterClientQuotasRequest,
) -> AlterClientQuotasResponse {
    let mut results: Vec<(Vec<AlterEntity>, Result<(), Refusal>)> = Vec::new();
    let mut changes: Vec<shale_meta::QuotaChange> = Vec::new();
    let mut changed: Vec<usize> = Vec::new();
    let mut seen: Vec<QuotaEntityMeta> = Vec::new();
    for entry in &req.entries {
        let echo = echo_entity(&entry.entity);
        let checked = check_entity(entry).and_then(|entity| {
            // As Kafka's controller: an entity once per request, a key once per entity.
            if seen.contains(&entity) {
                return Err(invalid("The same entity appears twice in the request"));
            }
            seen.push(entity.clone());
            let mut ops: Vec<(String, Option<QuotaValue>)> = Vec::new();
            for op in &entry.ops {
                let checked = check_op(&op.key, op.value, op.remove)?;
                if ops.iter().any(|(k, _)| *k == checked.0) {
                    return Err(invalid(format!("Duplicate quota key {}", checked.0)));
                }
                ops.push(checked);
            }
            Ok((entity, ops))
        });
        match checked {
            Ok(change) => {
                changed.push(results.len());
                changes.push(change);
                results.push((echo, Ok(())));
            }
            Err(e) => results.push((echo, Err(e))),
        }
    }
    if !changes.is_empty() && !req.validate_only {
        let outcome = match broker.meta.alter_client_quotas(changes).await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot store client quotas");
                Err((
                    ResponseError::NotController,
                    format!("the metadata quorum did not take the change: {e}"),
                ))
            }
        };
        for i in changed {
            results[i].1 = outcome.clone();
        }
    }
    AlterClientQuotasResponse::default().with_entries(
        results
            .into_iter()
            .map(|(entity, outcome)| {
                let (code, message) = match outcome {
                    Ok(()) => (0, None),
                    Err((e, m)) => (e.code(), Some(StrBytes::from_string(m))),
                };
                AlterEntry::default()
                    .with_entity(entity)
                    .with_error_code(code)
                    .with_error_message(message)
            })
            .collect(),
    )
}

/// The request's entity, as the response echoes it.
pub(crate) fn echo_entity(
    entity: &[kafka_protocol::messages::alter_client_quotas_request::EntityData],
) -> Vec<AlterEntity> {
    entity
        .iter()
        .map(|p| {
            AlterEntity::default()
                .with_entity_type(p.entity_type.clone())
                .with_entity_name(p.entity_name.clone())
        })
        .collect()
}

fn check_entity(
    entry: &kafka_protocol::messages::alter_client_quotas_request::EntryData,
) -> Result<QuotaEntityMeta, Refusal> {
    let mut entity: QuotaEntityMeta = Vec::new();
    for part in &entry.entity {
        let t = part.entity_type.to_string();
        match t.as_str() {
            USER | CLIENT_ID => {}
            "ip" => {
                return Err(invalid(
                    "ip quotas (connection_creation_rate) are not supported by Shale",
                ));
            }
            other => {
                return Err(invalid(format!(
                    "Unhandled client quota entity type: {other}"
                )));
            }
        }
        if entity.iter().any(|(seen, _)| *seen == t) {
            return Err(invalid(format!("Duplicate {t} entity in the request")));
        }
        let name = part.entity_name.as_ref().map(|n| n.to_string());
        if name.as_deref() == Some("") {
            return Err(invalid(format!("An empty {t} name is not valid")));
        }
        entity.push((t, name));
    }
    if entity.is_empty() {
        return Err(invalid("Invalid empty client quota entity"));
    }
    entity.sort();
    Ok(entity)
}

fn check_op(key: &str, value: f64, remove: bool) -> Result<(String, Option<QuotaValue>), Refusal> {
    let Some(kind) = QuotaType::from_key(key) else {
        if key == "controller_mutation_rate" {
            return Err(invalid(
                "controller_mutation_rate is not supported by Shale",
            ));
        }
        return Err(invalid(format!("Invalid configuration key {key}")));
    };
    if remove {
        return Ok((key.to_string(), None));
    }
    if !value.is_finite() || value <= 0.0 {
        return Err(invalid(format!(
            "Proposed value for {key} must be a positive number, not {value}"
        )));
    }
    if kind != QuotaType::Request {
        // Kafka's check and wording: a byte rate is a long, within 1e-6 of a whole number.
        if (value - value.round()).abs() > 1e-6 {
            return Err(invalid(format!("{key} cannot be a fractional value.")));
        }
        if value > i64::MAX as f64 {
            return Err(invalid(format!(
                "Proposed value for {key} is too large for a LONG."
            )));
        }
        return Ok((key.to_string(), Some(QuotaValue(value.round()))));
    }
    Ok((key.to_string(), Some(QuotaValue(value))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(parts: &[(&str, Option<&str>)]) -> QuotaEntityMeta {
        parts
            .iter()
            .map(|(t, n)| (t.to_string(), n.map(str::to_string)))
            .collect()
    }

    #[test]
    fn describe_filters_match_as_kafkas() {
        let alice = entity(&[("user", Some("alice"))]);
        let default_user = entity(&[("user", None)]);
        let alice_app = entity(&[("client-id", Some("app")), ("user", Some("alice"))]);
        let users = vec![("user".to_string(), None)];
        // `kafka-configs.sh --describe --entity-type users`: every user entity, the
        // default too, but (strict) none with a client id.
        assert!(matches(&users, true, &alice));
        assert!(matches(&users, true, &default_user));
        assert!(!matches(&users, true, &alice_app));
        assert!(matches(&users, false, &alice_app));
        let exact = vec![("user".to_string(), Some(Some("alice".to_string())))];
        assert!(matches(&exact, false, &alice));
        assert!(!matches(&exact, false, &default_user));
        let default = vec![("user".to_string(), Some(None))];
        assert!(matches(&default, true, &default_user));
        assert!(!matches(&default, true, &alice));
        // No component: everything (not strict), nothing (strict).
        assert!(matches(&[], false, &alice));
        assert!(!matches(&[], true, &alice));
    }

    #[test]
    fn quota_values_are_checked_as_kafka_checks_them() {
        assert!(check_op("producer_byte_rate", 1024.0, false).is_ok());
        assert!(check_op("request_percentage", 12.5, false).is_ok());
        assert!(check_op("producer_byte_rate", 10.5, false).is_err());
        assert!(check_op("producer_byte_rate", 1e300, false).is_err());
        assert_eq!(
            check_op("producer_byte_rate", 1_024.000_000_1, false)
                .unwrap()
                .1,
            Some(QuotaValue(1024.0))
        );
        assert!(check_op("consumer_byte_rate", -1.0, false).is_err());
        assert!(check_op("consumer_byte_rate", f64::NAN, false).is_err());
        assert!(check_op("no_such_key", 1.0, false).is_err());
        assert!(check_op("controller_mutation_rate", 1.0, false).is_err());
        assert_eq!(
            check_op("producer_byte_rate", 0.0, true).unwrap(),
            ("producer_byte_rate".to_string(), None)
        );
    }
}
