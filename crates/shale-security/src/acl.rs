//! Kafka's ACL model and its authorizer (`StandardAuthorizer`): principal × host ×
//! operation × resource pattern, deny over allow, `super.users`, and
//! `allow.everyone.if.no.acl.found` for resources no ACL names.
//!
//! Codes are Kafka's wire values, so bindings go to and from CreateAcls / DescribeAcls /
//! DeleteAcls unchanged.

use crate::principal::KafkaPrincipal;
use std::collections::{BTreeSet, HashMap};

macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $code:expr, $text:expr;)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),* }
        impl $name {
            pub fn code(self) -> i8 { match self { $($name::$variant => $code),* } }
            /// `None` for a code Kafka does not define.
            pub fn from_code(code: i8) -> Option<$name> {
                match code { $($code => Some($name::$variant),)* _ => None }
            }
            /// The name Kafka's tools print (`Topic`, `Read`, `Allow` ...).
            pub fn name(self) -> &'static str { match self { $($name::$variant => $text),* } }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

wire_enum!(
    /// Kafka's `ResourceType`.
    ResourceType {
        Unknown = 0, "Unknown";
        Any = 1, "Any";
        Topic = 2, "Topic";
        Group = 3, "Group";
        Cluster = 4, "Cluster";
        TransactionalId = 5, "TransactionalId";
        DelegationToken = 6, "DelegationToken";
        User = 7, "User";
    }
);

wire_enum!(
    /// Kafka's `PatternType`.
    PatternType {
        Unknown = 0, "Unknown";
        Any = 1, "Any";
        Match = 2, "Match";
        Literal = 3, "Literal";
        Prefixed = 4, "Prefixed";
    }
);

wire_enum!(
    /// Kafka's `AclOperation`.
    AclOperation {
        Unknown = 0, "Unknown";
        Any = 1, "Any";
        All = 2, "All";
        Read = 3, "Read";
        Write = 4, "Write";
        Create = 5, "Create";
        Delete = 6, "Delete";
        Alter = 7, "Alter";
        Describe = 8, "Describe";
        ClusterAction = 9, "ClusterAction";
        DescribeConfigs = 10, "DescribeConfigs";
        AlterConfigs = 11, "AlterConfigs";
        IdempotentWrite = 12, "IdempotentWrite";
        CreateTokens = 13, "CreateTokens";
        DescribeTokens = 14, "DescribeTokens";
        TwoPhaseCommit = 15, "TwoPhaseCommit";
    }
);

wire_enum!(
    /// Kafka's `AclPermissionType`.
    AclPermissionType {
        Unknown = 0, "Unknown";
        Any = 1, "Any";
        Deny = 2, "Deny";
        Allow = 3, "Allow";
    }
);

/// The name of the one cluster resource (`kafka-cluster`).
pub const CLUSTER_NAME: &str = "kafka-cluster";
/// A literal resource name, principal or host matching every one.
pub const WILDCARD: &str = "*";
/// The resource name Kafka's `authorizeByResourceType` first checks.
const HARDCODE: &str = "hardcode";
/// The principal matching every principal.
pub const WILDCARD_PRINCIPAL: &str = "User:*";

/// One ACL: who (principal, host) may or may not do what (operation) to which resources.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AclBinding {
    pub resource_type: ResourceType,
    pub resource_name: String,
    pub pattern_type: PatternType,
    pub principal: String,
    pub host: String,
    pub operation: AclOperation,
    pub permission: AclPermissionType,
}

impl AclBinding {
    /// Kafka's checks of a binding to create (`AclControlManager.validateNewAcl`); the
    /// message goes back with INVALID_REQUEST.
    pub fn validate(&self) -> Result<(), String> {
        if matches!(
            self.resource_type,
            ResourceType::Unknown | ResourceType::Any
        ) {
            return Err(format!(
                "Invalid resourceType {}",
                upper(self.resource_type)
            ));
        }
        if !matches!(
            self.pattern_type,
            PatternType::Literal | PatternType::Prefixed
        ) {
            return Err(format!("Invalid patternType {}", upper(self.pattern_type)));
        }
        if matches!(self.operation, AclOperation::Unknown | AclOperation::Any) {
            return Err(format!("Invalid operation {}", upper(self.operation)));
        }
        if !matches!(
            self.permission,
            AclPermissionType::Deny | AclPermissionType::Allow
        ) {
            return Err(format!("Invalid permissionType {}", upper(self.permission)));
        }
        if self.resource_name.is_empty() {
            return Err("Resource name should not be empty".into());
        }
        if !self.principal.contains(':') {
            return Err(format!(
                "Could not parse principal from `{}` (no colon is present separating the \
                 principal type from the principal name)",
                self.principal
            ));
        }
        Ok(())
    }
}

fn upper(v: impl std::fmt::Display) -> String {
    // Kafka's enum constants: TRANSACTIONAL_ID, CLUSTER_ACTION ...
    let mut out = String::new();
    for (i, c) in v.to_string().chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// DescribeAcls / DeleteAcls filters (`AclBindingFilter`): `None` strings and `Any` match
/// everything; `PatternType::Match` matches the patterns that would apply to the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclFilter {
    pub resource_type: ResourceType,
    pub resource_name: Option<String>,
    pub pattern_type: PatternType,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: AclOperation,
    pub permission: AclPermissionType,
}

impl AclFilter {
    /// A filter with an UNKNOWN element matches nothing and is refused (INVALID_REQUEST).
    pub fn validate(&self) -> Result<(), String> {
        if self.resource_type == ResourceType::Unknown || self.pattern_type == PatternType::Unknown
        {
            return Err("Unknown patternFilter.".into());
        }
        if self.operation == AclOperation::Unknown || self.permission == AclPermissionType::Unknown
        {
            return Err("Unknown entryFilter.".into());
        }
        Ok(())
    }

    pub fn matches(&self, b: &AclBinding) -> bool {
        self.matches_pattern(b)
            && self.principal.as_ref().is_none_or(|p| *p == b.principal)
            && self.host.as_ref().is_none_or(|h| *h == b.host)
            && (self.operation == AclOperation::Any || self.operation == b.operation)
            && (self.permission == AclPermissionType::Any || self.permission == b.permission)
    }

    fn matches_pattern(&self, b: &AclBinding) -> bool {
        if self.resource_type != ResourceType::Any && self.resource_type != b.resource_type {
            return false;
        }
        if !matches!(self.pattern_type, PatternType::Any | PatternType::Match)
            && self.pattern_type != b.pattern_type
        {
            return false;
        }
        let Some(name) = &self.resource_name else {
            return true;
        };
        if self.pattern_type == PatternType::Any || self.pattern_type == b.pattern_type {
            return *name == b.resource_name;
        }
        // MATCH: the bindings that would apply to a resource called `name`.
        match b.pattern_type {
            PatternType::Literal => *name == b.resource_name || b.resource_name == WILDCARD,
            PatternType::Prefixed => name.starts_with(&b.resource_name),
            _ => false,
        }
    }
}

/// The authorizer's settings.
#[derive(Debug, Clone, Default)]
pub struct AuthorizerConfig {
    /// `super.users`: principals allowed everything.
    pub super_users: BTreeSet<KafkaPrincipal>,
    /// `allow.everyone.if.no.acl.found` (false by default, as in Kafka).
    pub allow_if_no_acl: bool,
}

impl AuthorizerConfig {
    /// `super.users` is a semicolon-separated list of principals (`User:admin;User:ops`).
    pub fn parse_super_users(list: &str) -> Result<BTreeSet<KafkaPrincipal>, String> {
        list.split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<KafkaPrincipal>()
                    .map_err(|e| format!("super.users: {p:?}: {e}"))
            })
            .collect()
    }
}

/// An authorization decision, with why (for the audit log and debugging).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow(Reason),
    Deny(Reason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    SuperUser,
    AllowAcl,
    DenyAcl,
    /// No ACL matched the principal, host and operation, though some name the resource.
    NoMatchingAllow,
    /// No ACL names the resource at all: `allow.everyone.if.no.acl.found` decided.
    NoAclForResource,
    /// Shale's own resource no principal may change (the audit topic).
    Protected,
}

impl Decision {
    pub fn allowed(self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

/// An index over a set of ACLs, built once per change and shared by every request.
#[derive(Debug, Default)]
pub struct Authorizer {
    config: AuthorizerConfig,
    /// Literal bindings by (type, name); the wildcard name `*` is an entry too.
    literal: HashMap<(ResourceType, String), Vec<Entry>>,
    /// Prefixed bindings by type.
    prefixed: HashMap<ResourceType, Vec<(String, Entry)>>,
    count: usize,
}

#[derive(Debug, Clone)]
struct Entry {
    principal: String,
    host: String,
    operation: AclOperation,
    permission: AclPermissionType,
}

impl Authorizer {
    pub fn new(config: AuthorizerConfig, acls: impl IntoIterator<Item = AclBinding>) -> Self {
        let mut a = Authorizer {
            config,
            ..Default::default()
        };
        for b in acls {
            let entry = Entry {
                principal: b.principal,
                host: b.host,
                operation: b.operation,
                permission: b.permission,
            };
            match b.pattern_type {
                PatternType::Literal => a
                    .literal
                    .entry((b.resource_type, b.resource_name))
                    .or_default()
                    .push(entry),
                PatternType::Prefixed => a
                    .prefixed
                    .entry(b.resource_type)
                    .or_default()
                    .push((b.resource_name, entry)),
                // Never stored: creation refuses other pattern types.
                _ => continue,
            }
            a.count += 1;
        }
        a
    }

    pub fn config(&self) -> &AuthorizerConfig {
        &self.config
    }

    pub fn acl_count(&self) -> usize {
        self.count
    }

    pub fn is_super_user(&self, principal: &KafkaPrincipal) -> bool {
        self.config.super_users.contains(principal)
    }

    /// May `principal`, connecting from `host` (its IP as text), do `operation` on the
    /// resource `(resource_type, name)`?
    pub fn authorize(
        &self,
        principal: &KafkaPrincipal,
        host: &str,
        operation: AclOperation,
        resource_type: ResourceType,
        name: &str,
    ) -> Decision {
        if self.is_super_user(principal) {
            return Decision::Allow(Reason::SuperUser);
        }
        let principal = principal.to_string();
        let mut found_resource = false;
        let mut allowed = false;
        let mut check = |e: &Entry| -> bool {
            found_resource = true;
            if !(e.principal == principal || e.principal == WILDCARD_PRINCIPAL) {
                return false;
            }
            if !(e.host == WILDCARD || e.host == host) {
                return false;
            }
            match e.permission {
                // A deny names the operation itself (or All); it implies nothing else.
                AclPermissionType::Deny => {
                    e.operation == operation || e.operation == AclOperation::All
                }
                AclPermissionType::Allow => {
                    if implies(e.operation, operation) {
                        allowed = true;
                    }
                    false
                }
                _ => false,
            }
        };
        let literal = [name, WILDCARD].into_iter().flat_map(|n| {
            self.literal
                .get(&(resource_type, n.to_string()))
                .into_iter()
                .flatten()
        });
        let prefixed = self
            .prefixed
            .get(&resource_type)
            .into_iter()
            .flatten()
            .filter(|(prefix, _)| name.starts_with(prefix.as_str()))
            .map(|(_, e)| e);
        for e in literal.chain(prefixed) {
            if check(e) {
                return Decision::Deny(Reason::DenyAcl);
            }
        }
        if allowed {
            Decision::Allow(Reason::AllowAcl)
        } else if !found_resource && self.config.allow_if_no_acl {
            Decision::Allow(Reason::NoAclForResource)
        } else if !found_resource {
            Decision::Deny(Reason::NoAclForResource)
        } else {
            Decision::Deny(Reason::NoMatchingAllow)
        }
    }
}

impl Authorizer {
    /// Whether the principal may do `operation` on at least one resource of `resource_type`
    /// (Kafka's `authorizeByResourceType`, which an idempotent producer's InitProducerId is
    /// checked with: WRITE on some topic). An allow counts unless a deny of the same
    /// operation covers every name it could match.
    pub fn authorize_any(
        &self,
        principal: &KafkaPrincipal,
        host: &str,
        operation: AclOperation,
        resource_type: ResourceType,
    ) -> bool {
        // Kafka's `authorizeByResourceType` first asks about a resource no ACL names (it
        // uses the topic "hardcode"): super users and `allow.everyone.if.no.acl.found` then
        // decide as for any such resource.
        if self
            .authorize(principal, host, operation, resource_type, HARDCODE)
            .allowed()
        {
            return true;
        }
        let principal = principal.to_string();
        let applies = |e: &Entry| {
            (e.principal == principal || e.principal == WILDCARD_PRINCIPAL)
                && (e.host == WILDCARD || e.host == host)
                && (e.operation == operation || e.operation == AclOperation::All)
        };
        let literal = self
            .literal
            .iter()
            .filter(|((rt, _), _)| *rt == resource_type);
        let prefixed = self.prefixed.get(&resource_type).into_iter().flatten();
        let mut deny_literal: Vec<&str> = Vec::new();
        let mut deny_prefix: Vec<&str> = Vec::new();
        let mut allow_literal: Vec<&str> = Vec::new();
        let mut allow_prefix: Vec<&str> = Vec::new();
        for ((_, name), entries) in literal {
            for e in entries {
                if applies(e) {
                    match e.permission {
                        AclPermissionType::Deny => deny_literal.push(name),
                        AclPermissionType::Allow => allow_literal.push(name),
                        _ => {}
                    }
                }
            }
        }
        for (name, e) in prefixed {
            if applies(e) {
                match e.permission {
                    AclPermissionType::Deny => deny_prefix.push(name),
                    AclPermissionType::Allow => allow_prefix.push(name),
                    _ => {}
                }
            }
        }
        if deny_literal.contains(&WILDCARD) || deny_prefix.contains(&"") {
            return false;
        }
        let denied_prefix = |name: &str| deny_prefix.iter().any(|p| name.starts_with(p));
        allow_literal
            .iter()
            .any(|n| *n == WILDCARD || (!deny_literal.contains(n) && !denied_prefix(n)))
            || allow_prefix.iter().any(|p| !denied_prefix(p))
    }
}

/// Whether an ALLOW of `granted` covers `wanted`: All covers everything; Describe is implied
/// by Read, Write, Delete and Alter; DescribeConfigs by AlterConfigs (Kafka's rules).
fn implies(granted: AclOperation, wanted: AclOperation) -> bool {
    use AclOperation::*;
    granted == wanted
        || granted == All
        || (wanted == Describe && matches!(granted, Read | Write | Delete | Alter))
        || (wanted == DescribeConfigs && granted == AlterConfigs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(
        rt: ResourceType,
        name: &str,
        pt: PatternType,
        principal: &str,
        op: AclOperation,
        perm: AclPermissionType,
    ) -> AclBinding {
        AclBinding {
            resource_type: rt,
            resource_name: name.into(),
            pattern_type: pt,
            principal: principal.into(),
            host: "*".into(),
            operation: op,
            permission: perm,
        }
    }

    fn alice() -> KafkaPrincipal {
        KafkaPrincipal::user("alice")
    }

    use AclOperation::*;
    use AclPermissionType::{Allow, Deny};
    use PatternType::{Literal, Prefixed};
    use ResourceType::{Group, Topic};

    fn topic_decision(a: &Authorizer, op: AclOperation, topic: &str) -> bool {
        a.authorize(&alice(), "10.0.0.1", op, Topic, topic)
            .allowed()
    }

    #[test]
    fn without_acls_everything_is_denied_by_default() {
        let a = Authorizer::new(AuthorizerConfig::default(), []);
        assert_eq!(
            a.authorize(&alice(), "10.0.0.1", Read, Topic, "t"),
            Decision::Deny(Reason::NoAclForResource)
        );
    }

    #[test]
    fn allow_everyone_if_no_acl_found_applies_only_to_resources_without_acls() {
        let config = AuthorizerConfig {
            allow_if_no_acl: true,
            ..Default::default()
        };
        let a = Authorizer::new(
            config,
            [acl(Topic, "secret", Literal, "User:bob", Read, Allow)],
        );
        assert!(topic_decision(&a, Read, "public"));
        assert!(!topic_decision(&a, Read, "secret"));
    }

    #[test]
    fn super_users_may_do_anything() {
        let config = AuthorizerConfig {
            super_users: [alice()].into(),
            ..Default::default()
        };
        let a = Authorizer::new(config, [acl(Topic, "t", Literal, "User:alice", All, Deny)]);
        assert!(topic_decision(&a, Write, "t"));
    }

    #[test]
    fn literal_wildcard_and_prefixed_patterns_match() {
        let a = Authorizer::new(
            AuthorizerConfig::default(),
            [
                acl(Topic, "orders", Literal, "User:alice", Read, Allow),
                acl(Topic, "*", Literal, "User:alice", Describe, Allow),
                acl(Topic, "pay-", Prefixed, "User:alice", Write, Allow),
            ],
        );
        assert!(topic_decision(&a, Read, "orders"));
        assert!(!topic_decision(&a, Read, "orders2"));
        assert!(topic_decision(&a, Describe, "anything"));
        assert!(topic_decision(&a, Write, "pay-eu"));
        assert!(!topic_decision(&a, Write, "pay"));
    }

    #[test]
    fn deny_wins_over_allow() {
        let a = Authorizer::new(
            AuthorizerConfig::default(),
            [
                acl(Topic, "*", Literal, "User:*", All, Allow),
                acl(Topic, "pay-", Prefixed, "User:alice", Read, Deny),
            ],
        );
        assert!(!topic_decision(&a, Read, "pay-eu"));
        assert!(topic_decision(&a, Write, "pay-eu"));
        assert!(topic_decision(&a, Read, "orders"));
    }

    #[test]
    fn read_write_delete_alter_imply_describe_and_alter_configs_implies_describe_configs() {
        for granted in [Read, Write, Delete, Alter] {
            let a = Authorizer::new(
                AuthorizerConfig::default(),
                [acl(Topic, "t", Literal, "User:alice", granted, Allow)],
            );
            assert!(
                topic_decision(&a, Describe, "t"),
                "{granted} implies Describe"
            );
            assert!(!topic_decision(&a, Create, "t"));
        }
        let a = Authorizer::new(
            AuthorizerConfig::default(),
            [acl(Topic, "t", Literal, "User:alice", AlterConfigs, Allow)],
        );
        assert!(topic_decision(&a, DescribeConfigs, "t"));
    }

    #[test]
    fn a_deny_of_read_does_not_deny_describe() {
        let a = Authorizer::new(
            AuthorizerConfig::default(),
            [
                acl(Topic, "t", Literal, "User:alice", Describe, Allow),
                acl(Topic, "t", Literal, "User:alice", Read, Deny),
            ],
        );
        assert!(topic_decision(&a, Describe, "t"));
        assert!(!topic_decision(&a, Read, "t"));
    }

    #[test]
    fn hosts_and_principals_must_match() {
        let mut b = acl(Group, "g", Literal, "User:alice", Read, Allow);
        b.host = "10.0.0.1".into();
        let a = Authorizer::new(AuthorizerConfig::default(), [b]);
        assert!(
            a.authorize(&alice(), "10.0.0.1", Read, Group, "g")
                .allowed()
        );
        assert!(
            !a.authorize(&alice(), "10.0.0.2", Read, Group, "g")
                .allowed()
        );
        assert_eq!(
            a.authorize(&KafkaPrincipal::user("bob"), "10.0.0.1", Read, Group, "g"),
            Decision::Deny(Reason::NoMatchingAllow)
        );
        // Same name, other resource type: not this ACL's resource.
        assert_eq!(
            a.authorize(&alice(), "10.0.0.1", Read, Topic, "g"),
            Decision::Deny(Reason::NoAclForResource)
        );
    }

    #[test]
    fn authorize_any_finds_one_permitted_resource_of_the_type() {
        let a = Authorizer::new(
            AuthorizerConfig::default(),
            [acl(Topic, "pay-", Prefixed, "User:alice", Write, Allow)],
        );
        assert!(a.authorize_any(&alice(), "h", Write, Topic));
        assert!(!a.authorize_any(&alice(), "h", Read, Topic));
        assert!(!a.authorize_any(&KafkaPrincipal::user("bob"), "h", Write, Topic));
        // A deny covering the allow's every name cancels it.
        let a = Authorizer::new(
            AuthorizerConfig::default(),
            [
                acl(Topic, "pay-", Prefixed, "User:alice", Write, Allow),
                acl(Topic, "pay", Prefixed, "User:alice", Write, Deny),
            ],
        );
        assert!(!a.authorize_any(&alice(), "h", Write, Topic));
        let a = Authorizer::new(
            AuthorizerConfig::default(),
            [
                acl(Topic, "orders", Literal, "User:alice", All, Allow),
                acl(Topic, "*", Literal, "User:alice", Write, Deny),
            ],
        );
        assert!(!a.authorize_any(&alice(), "h", Write, Topic));
    }

    #[test]
    fn bindings_are_validated_as_kafka_does() {
        let ok = acl(Topic, "t", Literal, "User:alice", Read, Allow);
        assert!(ok.validate().is_ok());
        let mut b = ok.clone();
        b.pattern_type = PatternType::Match;
        assert_eq!(b.validate().unwrap_err(), "Invalid patternType MATCH");
        let mut b = ok.clone();
        b.resource_type = ResourceType::Any;
        assert_eq!(b.validate().unwrap_err(), "Invalid resourceType ANY");
        let mut b = ok.clone();
        b.operation = AclOperation::Any;
        assert_eq!(b.validate().unwrap_err(), "Invalid operation ANY");
        let mut b = ok.clone();
        b.permission = AclPermissionType::Any;
        assert_eq!(b.validate().unwrap_err(), "Invalid permissionType ANY");
        let mut b = ok.clone();
        b.resource_name.clear();
        assert_eq!(
            b.validate().unwrap_err(),
            "Resource name should not be empty"
        );
        let mut b = ok;
        b.principal = "alice".into();
        assert!(b.validate().unwrap_err().contains("no colon"));
        assert_eq!(upper(ResourceType::TransactionalId), "TRANSACTIONAL_ID");
    }

    #[test]
    fn filters_match_as_kafkas_acl_binding_filter() {
        let lit = acl(Topic, "orders", Literal, "User:alice", Read, Allow);
        let wild = acl(Topic, "*", Literal, "User:alice", Read, Allow);
        let pre = acl(Topic, "ord", Prefixed, "User:alice", Read, Allow);
        let any = AclFilter {
            resource_type: ResourceType::Any,
            resource_name: None,
            pattern_type: PatternType::Any,
            principal: None,
            host: None,
            operation: AclOperation::Any,
            permission: AclPermissionType::Any,
        };
        assert!(any.matches(&lit) && any.matches(&wild) && any.matches(&pre));
        let exact = AclFilter {
            resource_name: Some("orders".into()),
            ..any.clone()
        };
        assert!(exact.matches(&lit) && !exact.matches(&wild) && !exact.matches(&pre));
        let matching = AclFilter {
            pattern_type: PatternType::Match,
            ..exact.clone()
        };
        assert!(matching.matches(&lit) && matching.matches(&wild) && matching.matches(&pre));
        let prefixed_only = AclFilter {
            pattern_type: PatternType::Prefixed,
            resource_name: None,
            ..any.clone()
        };
        assert!(!prefixed_only.matches(&lit) && prefixed_only.matches(&pre));
        let bob = AclFilter {
            principal: Some("User:bob".into()),
            ..any.clone()
        };
        assert!(!bob.matches(&lit));
        let deny = AclFilter {
            permission: AclPermissionType::Deny,
            ..any
        };
        assert!(!deny.matches(&lit));
    }
}
