//! SCRAM credentials (KIP-554): DescribeUserScramCredentials and AlterUserScramCredentials,
//! as Kafka's controller validates them (`ScramControlManager`, `ScramImage`). Credentials
//! live in the metadata quorum, so every node checks SCRAM logins against the same set.

use crate::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
};
use kafka_protocol::protocol::StrBytes;
use shale_meta::ScramCredentialMeta;
use shale_security::scram::{ScramCredential, ScramMechanism};
use std::collections::{BTreeMap, BTreeSet};

impl Broker {
    /// The stored credential a SCRAM login as `user` is checked against.
    pub(crate) fn scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Option<ScramCredential> {
        self.meta.read(|s| {
            let c = s
                .scram_credentials
                .get(user)?
                .get(&mechanism.kafka_type())?;
            Some(ScramCredential {
                salt: c.salt.clone(),
                stored_key: c.stored_key.clone(),
                server_key: c.server_key.clone(),
                iterations: c.iterations,
            })
        })
    }
}

fn describe_result(
    user: &str,
    error: Option<(ResponseError, String)>,
) -> DescribeUserScramCredentialsResult {
    let (code, message) = match error {
        Some((e, m)) => (e.code(), Some(StrBytes::from_string(m))),
        None => (0, None),
    };
    DescribeUserScramCredentialsResult::default()
        .with_user(StrBytes::from_string(user.to_string()))
        .with_error_code(code)
        .with_error_message(message)
}

pub async fn describe_user_scram_credentials(
    broker: &Broker,
    _version: i16,
    req: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let stored = broker.meta.read(|s| s.scram_credentials.clone());
    // Null or empty: every user that has a credential.
    let wanted: Vec<String> = match req.users.as_deref() {
        None | Some([]) => stored.keys().cloned().collect(),
        Some(users) => users.iter().map(|u| u.name.to_string()).collect(),
    };
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for u in &wanted {
        *seen.entry(u.as_str()).or_default() += 1;
    }
    let results = seen
        .into_iter()
        .map(|(user, count)| {
            if count > 1 {
                return describe_result(
                    user,
                    Some((
                        ResponseError::DuplicateResource,
                        format!(
                            "Cannot describe SCRAM credentials for the same user twice in a \
                             single request: {user}"
                        ),
                    )),
                );
            }
            match stored.get(user) {
                None => describe_result(
                    user,
                    Some((
                        ResponseError::ResourceNotFound,
                        format!(
                            "Attempt to describe a user credential that does not exist: {user}"
                        ),
                    )),
                ),
                Some(by_mech) => describe_result(user, None).with_credential_infos(
                    by_mech
                        .iter()
                        .map(|(m, c)| {
                            CredentialInfo::default()
                                .with_mechanism(*m)
                                .with_iterations(i32::try_from(c.iterations).unwrap_or(i32::MAX))
                        })
                        .collect(),
                ),
            }
        })
        .collect();
    DescribeUserScramCredentialsResponse::default().with_results(results)
}

/// Kafka's upper bound on iterations (`ScramControlManager.MAX_ITERATIONS`).
const MAX_ITERATIONS: i32 = 16384;

fn check_name_and_mechanism(name: &str, mechanism: i8) -> Result<ScramMechanism, ApiError> {
    if name.is_empty() {
        return Err((
            ResponseError::UnacceptableCredential,
            "Username must not be empty",
        ));
    }
    ScramMechanism::from_kafka_type(mechanism).ok_or((
        ResponseError::UnsupportedSaslMechanism,
        "Unknown SCRAM mechanism",
    ))
}

type ApiError = (ResponseError, &'static str);

const ALTERED_TWICE: ApiError = (
    ResponseError::DuplicateResource,
    "A user credential cannot be altered twice in the same request",
);

pub async fn alter_user_scram_credentials(
    broker: &Broker,
    _version: i16,
    req: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    let stored = broker.meta.read(|s| s.scram_credentials.clone());
    // As Kafka: one change per user per request; a second one fails the user's changes.
    let mut errors: BTreeMap<String, ApiError> = BTreeMap::new();
    let mut deletions: BTreeMap<String, i8> = BTreeMap::new();
    let mut upsertions: BTreeMap<String, (i8, ScramCredentialMeta)> = BTreeMap::new();
    for d in &req.deletions {
        let name = d.name.to_string();
        if errors.contains_key(&name) {
            continue;
        }
        if deletions.remove(&name).is_some() {
            errors.insert(name, ALTERED_TWICE);
            continue;
        }
        let checked = check_name_and_mechanism(&name, d.mechanism).and_then(|_| {
            let exists = stored
                .get(&name)
                .is_some_and(|m| m.contains_key(&d.mechanism));
            if exists {
                Ok(())
            } else {
                Err((
                    ResponseError::ResourceNotFound,
                    "Attempt to delete a user credential that does not exist",
                ))
            }
        });
        match checked {
            Ok(()) => {
                deletions.insert(name, d.mechanism);
            }
            Err(e) => {
                errors.insert(name, e);
            }
        }
    }
    for u in &req.upsertions {
        let name = u.name.to_string();
        if errors.contains_key(&name) {
            continue;
        }
        if deletions.remove(&name).is_some() || upsertions.remove(&name).is_some() {
            errors.insert(name, ALTERED_TWICE);
            continue;
        }
        let checked = check_name_and_mechanism(&name, u.mechanism).and_then(|mech| {
            if u.iterations < mech.min_iterations() as i32 {
                Err((ResponseError::UnacceptableCredential, "Too few iterations"))
            } else if u.iterations > MAX_ITERATIONS {
                Err((ResponseError::UnacceptableCredential, "Too many iterations"))
            } else {
                Ok(mech)
            }
        });
        match checked {
            Ok(mech) => {
                let iterations = u.iterations as u32;
                let c = ScramCredential::from_salted_password(
                    mech,
                    &u.salted_password,
                    &u.salt,
                    iterations,
                );
                upsertions.insert(
                    name,
                    (
                        u.mechanism,
                        ScramCredentialMeta {
                            salt: c.salt,
                            stored_key: c.stored_key,
                            server_key: c.server_key,
                            iterations,
                        },
                    ),
                );
            }
            Err(e) => {
                errors.insert(name, e);
            }
        }
    }
    let changed: BTreeSet<String> = deletions.keys().chain(upsertions.keys()).cloned().collect();
    let mut results = Vec::new();
    if !changed.is_empty() {
        let applied = broker
            .meta
            .alter_scram_credentials(
                deletions.into_iter().collect(),
                upsertions
                    .into_iter()
                    .map(|(name, (m, c))| (name, m, c))
                    .collect(),
            )
            .await;
        let outcome = match applied {
            // A removed or rotated credential stops working on every broker before the
            // call returns, as ACL changes do.
            Ok(()) => crate::handlers::acls::in_force_outcome(broker.acls_in_force().await),
            Err(e) => {
                tracing::warn!(error = %e, "cannot store SCRAM credentials");
                (
                    ResponseError::NotController.code(),
                    Some(StrBytes::from_string(format!(
                        "the metadata quorum did not take the change: {e}"
                    ))),
                )
            }
        };
        for user in changed {
            results.push(
                AlterUserScramCredentialsResult::default()
                    .with_user(StrBytes::from_string(user))
                    .with_error_code(outcome.0)
                    .with_error_message(outcome.1.clone()),
            );
        }
    }
    for (user, (e, message)) in errors {
        results.push(
            AlterUserScramCredentialsResult::default()
                .with_user(StrBytes::from_string(user))
                .with_error_code(e.code())
                .with_error_message(Some(StrBytes::from_static_str(message))),
        );
    }
    AlterUserScramCredentialsResponse::default().with_results(results)
}
