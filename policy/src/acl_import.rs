//! Kafka ACLs → Cedar policies, with exactly Kafka's semantics.
//!
//! # Input
//!
//! Either the text `kafka-acls.sh --list` prints (Kafka 4.x):
//!
//! ```text
//! Current ACLs for resource `ResourcePattern(resourceType=TOPIC, name=orders, patternType=LITERAL)`:
//!     (principal=User:alice, host=*, operation=READ, permissionType=ALLOW)
//!     (principal=User:bob, host=10.0.0.5, operation=WRITE, permissionType=DENY)
//! ```
//!
//! or JSON (recognised by a leading `[`): an array of objects with exactly
//! these string fields, spelled as `kafka-acls` prints them:
//!
//! ```json
//! [{"resource_type": "TOPIC", "resource_name": "orders", "pattern_type": "LITERAL",
//!   "principal": "User:alice", "host": "*", "operation": "READ", "permission_type": "ALLOW"}]
//! ```
//!
//! `resource_type`: TOPIC, GROUP, TRANSACTIONAL_ID or CLUSTER (DELEGATION_TOKEN
//! and USER are refused); `pattern_type`: LITERAL or PREFIXED; `operation`: a
//! Kafka operation or ALL; `permission_type`: ALLOW or DENY. Errors name the
//! line (text) or the entry, from 1 (JSON).
//!
//! # Translation
//!
//! | Kafka | Cedar |
//! |---|---|
//! | ALLOW op | `permit`, `action in Action::"Op"` (the action hierarchy adds Kafka's implied Describe / DescribeConfigs) |
//! | DENY op | `forbid`, `action == Action::"Op"` (a DENY implies nothing) |
//! | operation ALL | `action in Action::"All"` (exactly the ten Kafka operations) |
//! | DENY beats ALLOW | Cedar: any matching forbid overrides every permit |
//! | LITERAL `name` | `resource == Topic::"name"` |
//! | LITERAL `*` | `resource is Topic` (any resource of that type) |
//! | PREFIXED `p` | `resource is Topic` when `resource.name like "p*"` (`*` in `p` escaped) |
//! | `User:alice` | `principal == User::"alice"` (a Custos `ServiceAccount` named alice does not match) |
//! | `ServiceAccount:x` / `Group:g` | `principal == ServiceAccount::"x"` / `principal in Group::"g"` |
//! | `User:*` | any principal |
//! | host `*` / an IP | no condition / `context.client_address == "IP"` |
//! | `super.users` | a permit of `All` per super user, and `unless { principal in [...] }` on every forbid |
//!
//! Kafka's default (`allow.everyone.if.no.acl.found=false`) is deny; so is
//! Cedar's. Super users get every Kafka operation but not `Decrypt`: seeing
//! plaintext of protected fields is granted by explicit Custos policy only.
//!
//! An IP host is written in canonical form (`::1`, not `0:0:0:0:0:0:0:1`):
//! Kafka compares the ACL's host string to Java's spelling of the peer
//! address, so a compressed IPv6 host in a Kafka ACL never matches there; here
//! it matches the address it names. A host that is not an IP address is kept
//! verbatim and, as in Kafka, never matches.

use std::collections::HashSet;
use std::fmt::{self, Write as _};
use std::net::IpAddr;

use serde::Deserialize;

use crate::{Operation, PolicyEngine, TopicCatalog};

/// Options for [`import_acls`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Kafka `super.users` principals (`User:admin`, `Group:ops`), who may do
    /// everything and whom no DENY applies to.
    pub super_users: Vec<String>,
}

/// Why ACLs could not be imported.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AclImportError {
    /// A line or entry is not in the expected form.
    #[error("{origin}: {reason}")]
    Syntax {
        /// `line N` or `entry N`, from 1.
        origin: String,
        /// What was expected.
        reason: String,
    },
    /// The JSON form is not an array of ACL objects.
    #[error("ACL JSON: {0}")]
    Json(String),
    /// A resource type Custos does not authorize.
    #[error("{origin}: resource type {resource_type} is not supported (Custos imports TOPIC, GROUP, TRANSACTIONAL_ID and CLUSTER ACLs)")]
    UnsupportedResourceType {
        /// `line N` or `entry N`.
        origin: String,
        /// As written, e.g. `DELEGATION_TOKEN`.
        resource_type: String,
    },
    /// A pattern type other than LITERAL or PREFIXED.
    #[error(
        "{origin}: pattern type {pattern_type} is not supported (expected LITERAL or PREFIXED)"
    )]
    UnsupportedPatternType {
        /// `line N` or `entry N`.
        origin: String,
        /// As written.
        pattern_type: String,
    },
    /// An operation name Kafka does not have.
    #[error("{origin}: unknown operation {operation}")]
    UnknownOperation {
        /// `line N` or `entry N`.
        origin: String,
        /// As written.
        operation: String,
    },
    /// A permission type other than ALLOW or DENY.
    #[error("{origin}: unknown permission type {permission} (expected ALLOW or DENY)")]
    UnknownPermission {
        /// `line N` or `entry N`.
        origin: String,
        /// As written.
        permission: String,
    },
    /// A principal not of the form `User:NAME`, `ServiceAccount:NAME` or `Group:NAME`.
    #[error("{origin}: principal {principal:?} is not supported (expected User:NAME, ServiceAccount:NAME, Group:NAME or User:*)")]
    UnsupportedPrincipal {
        /// `line N`, `entry N` or `super user N`.
        origin: String,
        /// As written.
        principal: String,
    },
    /// The generated policies fail validation: a bug in the importer.
    #[error("generated policies do not validate (a Custos bug): {0}")]
    InvalidOutput(String),
}

/// Kafka ACL resource types Custos imports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AclResourceType {
    /// TOPIC.
    Topic,
    /// GROUP (Cedar `ConsumerGroup`).
    Group,
    /// TRANSACTIONAL_ID.
    TransactionalId,
    /// CLUSTER.
    Cluster,
}

impl AclResourceType {
    fn parse(s: &str, origin: &str) -> Result<Self, AclImportError> {
        match s.trim().to_ascii_uppercase().as_str() {
            "TOPIC" => Ok(AclResourceType::Topic),
            "GROUP" => Ok(AclResourceType::Group),
            "TRANSACTIONAL_ID" | "TRANSACTIONALID" => Ok(AclResourceType::TransactionalId),
            "CLUSTER" => Ok(AclResourceType::Cluster),
            _ => Err(AclImportError::UnsupportedResourceType {
                origin: origin.to_string(),
                resource_type: s.trim().to_string(),
            }),
        }
    }

    /// Kafka's name.
    pub fn kafka_name(self) -> &'static str {
        match self {
            AclResourceType::Topic => "TOPIC",
            AclResourceType::Group => "GROUP",
            AclResourceType::TransactionalId => "TRANSACTIONAL_ID",
            AclResourceType::Cluster => "CLUSTER",
        }
    }

    /// The Cedar entity type.
    pub fn cedar_type(self) -> &'static str {
        match self {
            AclResourceType::Topic => "Topic",
            AclResourceType::Group => "ConsumerGroup",
            AclResourceType::TransactionalId => "TransactionalId",
            AclResourceType::Cluster => "Cluster",
        }
    }
}

/// How an ACL's resource name matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PatternType {
    /// The exact name, or every resource of the type for `*`.
    Literal,
    /// Every resource whose name starts with the name.
    Prefixed,
}

impl PatternType {
    fn parse(s: &str, origin: &str) -> Result<Self, AclImportError> {
        match s.trim().to_ascii_uppercase().as_str() {
            "LITERAL" => Ok(PatternType::Literal),
            "PREFIXED" => Ok(PatternType::Prefixed),
            _ => Err(AclImportError::UnsupportedPatternType {
                origin: origin.to_string(),
                pattern_type: s.trim().to_string(),
            }),
        }
    }

    fn kafka_name(self) -> &'static str {
        match self {
            PatternType::Literal => "LITERAL",
            PatternType::Prefixed => "PREFIXED",
        }
    }
}

/// ALLOW or DENY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AclPermission {
    /// A grant (with Kafka's implications).
    Allow,
    /// A denial (of exactly the named operation).
    Deny,
}

impl AclPermission {
    fn parse(s: &str, origin: &str) -> Result<Self, AclImportError> {
        match s.trim().to_ascii_uppercase().as_str() {
            "ALLOW" => Ok(AclPermission::Allow),
            "DENY" => Ok(AclPermission::Deny),
            _ => Err(AclImportError::UnknownPermission {
                origin: origin.to_string(),
                permission: s.trim().to_string(),
            }),
        }
    }

    fn kafka_name(self) -> &'static str {
        match self {
            AclPermission::Allow => "ALLOW",
            AclPermission::Deny => "DENY",
        }
    }
}

/// A Kafka operation, or ALL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AclOperation {
    /// Every operation.
    All,
    /// One operation.
    Op(Operation),
}

impl AclOperation {
    fn parse(s: &str, origin: &str) -> Result<Self, AclImportError> {
        if s.trim().eq_ignore_ascii_case("ALL") {
            return Ok(AclOperation::All);
        }
        s.trim()
            .parse()
            .map(AclOperation::Op)
            .map_err(|_| AclImportError::UnknownOperation {
                origin: origin.to_string(),
                operation: s.trim().to_string(),
            })
    }
}

impl fmt::Display for AclOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AclOperation::All => f.write_str("All"),
            AclOperation::Op(op) => f.write_str(op.as_str()),
        }
    }
}

/// An ACL principal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KafkaPrincipal {
    /// `User:*`: every principal.
    Any,
    /// `User:NAME`.
    User(String),
    /// `ServiceAccount:NAME`.
    ServiceAccount(String),
    /// `Group:NAME`: every member of the group.
    Group(String),
}

impl KafkaPrincipal {
    /// Parses Kafka's `TYPE:NAME` form (type case-insensitive).
    pub fn parse(s: &str, origin: &str) -> Result<Self, AclImportError> {
        let bad = || AclImportError::UnsupportedPrincipal {
            origin: origin.to_string(),
            principal: s.to_string(),
        };
        let (ty, name) = s.trim().split_once(':').ok_or_else(bad)?;
        if name.is_empty() {
            return Err(bad());
        }
        match ty.to_ascii_lowercase().as_str() {
            "user" if name == "*" => Ok(KafkaPrincipal::Any),
            "user" => Ok(KafkaPrincipal::User(name.to_string())),
            "serviceaccount" => Ok(KafkaPrincipal::ServiceAccount(name.to_string())),
            "group" => Ok(KafkaPrincipal::Group(name.to_string())),
            _ => Err(bad()),
        }
    }

    fn kafka_name(&self) -> String {
        match self {
            KafkaPrincipal::Any => "User:*".to_string(),
            KafkaPrincipal::User(n) => format!("User:{n}"),
            KafkaPrincipal::ServiceAccount(n) => format!("ServiceAccount:{n}"),
            KafkaPrincipal::Group(n) => format!("Group:{n}"),
        }
    }

    /// The policy-scope clause for this principal.
    fn scope(&self) -> String {
        match self {
            KafkaPrincipal::Any => "principal".to_string(),
            KafkaPrincipal::User(n) => format!("principal == User::{}", cedar_string(n)),
            KafkaPrincipal::ServiceAccount(n) => {
                format!("principal == ServiceAccount::{}", cedar_string(n))
            }
            KafkaPrincipal::Group(n) => format!("principal in Group::{}", cedar_string(n)),
        }
    }
}

/// One Kafka ACL binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaAcl {
    /// The resource type.
    pub resource_type: AclResourceType,
    /// The resource name or prefix (`*` with LITERAL: every resource).
    pub resource_name: String,
    /// LITERAL or PREFIXED.
    pub pattern_type: PatternType,
    /// Who.
    pub principal: KafkaPrincipal,
    /// `*` or a client IP address.
    pub host: String,
    /// What.
    pub operation: AclOperation,
    /// ALLOW or DENY.
    pub permission: AclPermission,
    /// Where the ACL came from: `line N` or `entry N`, from 1.
    pub origin: String,
}

impl KafkaAcl {
    /// A policy id that names every field of the ACL, so it traces back to it.
    pub fn policy_id(&self) -> String {
        let op = match self.operation {
            AclOperation::All => "ALL".to_string(),
            AclOperation::Op(op) => kafka_op_name(op),
        };
        format!(
            "kafka-acl:{}:{}:{op}:{}:{}:{}:host={}",
            self.permission.kafka_name(),
            self.principal.kafka_name(),
            self.resource_type.kafka_name(),
            self.pattern_type.kafka_name(),
            self.resource_name,
            self.host
        )
    }
}

/// Kafka's upper-snake spelling (`DESCRIBE_CONFIGS`).
fn kafka_op_name(op: Operation) -> String {
    let mut out = String::new();
    for (i, c) in op.as_str().chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Converts ACLs (`kafka-acls --list` text, or the JSON form) to Cedar
/// policies that validate against the Custos schema.
pub fn import_acls(input: &str, options: &ImportOptions) -> Result<String, AclImportError> {
    let acls = if input.trim_start().starts_with('[') {
        parse_acl_json(input)?
    } else {
        parse_acl_listing(input)?
    };
    let text = acls_to_cedar(&acls, options)?;
    // The importer's promise is policies that load; check it rather than
    // hand an operator a file that fails at reload time.
    PolicyEngine::load(&text, TopicCatalog::empty())
        .map_err(|e| AclImportError::InvalidOutput(e.to_string()))?;
    Ok(text)
}

/// Parses the text printed by `kafka-acls.sh --list`.
pub fn parse_acl_listing(text: &str) -> Result<Vec<KafkaAcl>, AclImportError> {
    const HEADER: &str = "Current ACLs for resource `";
    let mut acls = Vec::new();
    let mut current: Option<(AclResourceType, String, PatternType)> = None;
    for (i, raw) in text.lines().enumerate() {
        let origin = format!("line {}", i + 1);
        let line = raw.trim();
        if line.is_empty() || line.starts_with("ACLs for principal `") {
            continue;
        }
        if let Some(rest) = line.strip_prefix(HEADER) {
            let pattern = rest
                .strip_suffix("`:")
                .and_then(|r| r.strip_prefix("ResourcePattern("))
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| AclImportError::Syntax {
                    origin: origin.clone(),
                    reason:
                        "expected `ResourcePattern(resourceType=..., name=..., patternType=...)`:"
                            .to_string(),
                })?;
            current = Some(parse_resource_pattern(pattern, &origin)?);
            continue;
        }
        if line.starts_with('(') {
            let (resource_type, resource_name, pattern_type) =
                current.clone().ok_or_else(|| AclImportError::Syntax {
                    origin: origin.clone(),
                    reason: "ACL entry before any `Current ACLs for resource` line".to_string(),
                })?;
            let entry = parse_entry(line, &origin)?;
            acls.push(KafkaAcl {
                resource_type,
                resource_name,
                pattern_type,
                principal: entry.0,
                host: entry.1,
                operation: entry.2,
                permission: entry.3,
                origin,
            });
            continue;
        }
        return Err(AclImportError::Syntax {
            origin,
            reason: "expected `Current ACLs for resource ...` or `(principal=..., host=..., operation=..., permissionType=...)`".to_string(),
        });
    }
    Ok(acls)
}

/// `resourceType=TOPIC, name=orders, patternType=LITERAL`; the name may hold
/// `, ` itself, so the outer fields are split off from the ends.
fn parse_resource_pattern(
    s: &str,
    origin: &str,
) -> Result<(AclResourceType, String, PatternType), AclImportError> {
    let syntax = |what: &str| AclImportError::Syntax {
        origin: origin.to_string(),
        reason: format!("resource pattern lacks {what}"),
    };
    let rest = s
        .strip_prefix("resourceType=")
        .ok_or_else(|| syntax("resourceType="))?;
    let (ty, rest) = rest.split_once(", name=").ok_or_else(|| syntax("name="))?;
    let (name, pattern) = rest
        .rsplit_once(", patternType=")
        .ok_or_else(|| syntax("patternType="))?;
    let ty = AclResourceType::parse(ty, origin)?;
    let pattern = PatternType::parse(pattern, origin)?;
    Ok((ty, name.to_string(), pattern))
}

/// `(principal=User:alice, host=*, operation=READ, permissionType=ALLOW)`.
/// Principals may hold commas (TLS distinguished names), so fields are split
/// off from the right.
fn parse_entry(
    line: &str,
    origin: &str,
) -> Result<(KafkaPrincipal, String, AclOperation, AclPermission), AclImportError> {
    let syntax = |what: &str| AclImportError::Syntax {
        origin: origin.to_string(),
        reason: format!("ACL entry lacks {what}"),
    };
    let inner = line
        .strip_prefix('(')
        .and_then(|l| l.strip_suffix(')'))
        .ok_or_else(|| syntax("its parentheses"))?;
    let (rest, permission) = inner
        .rsplit_once(", permissionType=")
        .ok_or_else(|| syntax("permissionType="))?;
    let (rest, operation) = rest
        .rsplit_once(", operation=")
        .ok_or_else(|| syntax("operation="))?;
    let (rest, host) = rest.rsplit_once(", host=").ok_or_else(|| syntax("host="))?;
    let principal = rest
        .strip_prefix("principal=")
        .ok_or_else(|| syntax("principal="))?;
    Ok((
        KafkaPrincipal::parse(principal, origin)?,
        host.trim().to_string(),
        AclOperation::parse(operation, origin)?,
        AclPermission::parse(permission, origin)?,
    ))
}

/// One ACL in the JSON form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonAcl {
    resource_type: String,
    resource_name: String,
    pattern_type: String,
    principal: String,
    host: String,
    operation: String,
    permission_type: String,
}

/// Parses the JSON form (see the module documentation).
pub fn parse_acl_json(text: &str) -> Result<Vec<KafkaAcl>, AclImportError> {
    let entries: Vec<JsonAcl> =
        serde_json::from_str(text).map_err(|e| AclImportError::Json(e.to_string()))?;
    entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let origin = format!("entry {}", i + 1);
            Ok(KafkaAcl {
                resource_type: AclResourceType::parse(&e.resource_type, &origin)?,
                resource_name: e.resource_name,
                pattern_type: PatternType::parse(&e.pattern_type, &origin)?,
                principal: KafkaPrincipal::parse(&e.principal, &origin)?,
                host: e.host.trim().to_string(),
                operation: AclOperation::parse(&e.operation, &origin)?,
                permission: AclPermission::parse(&e.permission_type, &origin)?,
                origin,
            })
        })
        .collect()
}

/// Cedar policies for `acls` (see the module documentation for the mapping).
pub fn acls_to_cedar(acls: &[KafkaAcl], options: &ImportOptions) -> Result<String, AclImportError> {
    let supers = options
        .super_users
        .iter()
        .enumerate()
        .map(|(i, s)| KafkaPrincipal::parse(s, &format!("super user {}", i + 1)))
        .collect::<Result<Vec<_>, _>>()?;
    let everyone_super = supers.contains(&KafkaPrincipal::Any);
    let exemption = super_user_exemption(&supers);

    let mut out = String::new();
    let _ = writeln!(
        out,
        "// Generated by custos-policy from {} Kafka ACL(s). Kafka semantics:\n\
         // permits use `action in` (ALLOW implies Describe / DescribeConfigs),\n\
         // forbids use `action ==` (DENY implies nothing), forbid beats permit.",
        acls.len()
    );
    let mut seen = HashSet::new();
    for su in &supers {
        let id = format!("kafka-super-user:{}", su.kafka_name());
        if !seen.insert(id.clone()) {
            continue;
        }
        let _ = writeln!(
            out,
            "\n// super.users: every Kafka operation, exempt from every DENY.\n@id({})\npermit (\n  {},\n  action in Action::\"All\",\n  resource\n);",
            cedar_string(&id),
            su.scope()
        );
    }
    for acl in acls {
        let id = acl.policy_id();
        if !seen.insert(id.clone()) {
            // Kafka stores ACLs as a set; a repeated binding adds nothing.
            continue;
        }
        if acl.permission == AclPermission::Deny && everyone_super {
            let _ = writeln!(
                out,
                "\n// {}: DENY omitted: super.users holds User:*, whom no DENY applies to.",
                acl.origin
            );
            continue;
        }
        out.push_str(&policy_text(acl, &id, &exemption));
    }
    Ok(out)
}

/// `unless { ... }` clause exempting super users, or empty.
fn super_user_exemption(supers: &[KafkaPrincipal]) -> String {
    // One `in [...]` per entity type: strict validation wants sets of one type.
    let mut terms = Vec::new();
    for (ty, pick) in [("User", 0usize), ("ServiceAccount", 1), ("Group", 2)] {
        let names: Vec<String> = supers
            .iter()
            .filter_map(|p| match (p, pick) {
                (KafkaPrincipal::User(n), 0)
                | (KafkaPrincipal::ServiceAccount(n), 1)
                | (KafkaPrincipal::Group(n), 2) => Some(format!("{ty}::{}", cedar_string(n))),
                _ => None,
            })
            .collect();
        if !names.is_empty() {
            terms.push(format!("principal in [{}]", names.join(", ")));
        }
    }
    if terms.is_empty() {
        String::new()
    } else {
        format!("\nunless {{ {} }}", terms.join(" || "))
    }
}

fn policy_text(acl: &KafkaAcl, id: &str, exemption: &str) -> String {
    let ty = acl.resource_type.cedar_type();
    let (effect, action) = match (acl.permission, acl.operation) {
        (_, AclOperation::All) => (
            effect_name(acl.permission),
            "action in Action::\"All\"".to_string(),
        ),
        (AclPermission::Allow, AclOperation::Op(op)) => {
            ("permit", format!("action in Action::\"{}\"", op.as_str()))
        }
        (AclPermission::Deny, AclOperation::Op(op)) => {
            ("forbid", format!("action == Action::\"{}\"", op.as_str()))
        }
    };
    let mut conditions = Vec::new();
    let resource = match acl.pattern_type {
        PatternType::Literal if acl.resource_name == "*" => format!("resource is {ty}"),
        PatternType::Literal => format!("resource == {ty}::{}", cedar_string(&acl.resource_name)),
        PatternType::Prefixed => {
            conditions.push(format!(
                "resource.name like {}",
                cedar_like_prefix(&acl.resource_name)
            ));
            format!("resource is {ty}")
        }
    };
    if acl.host != "*" {
        let host = acl
            .host
            .parse::<IpAddr>()
            .map_or_else(|_| acl.host.clone(), |ip| ip.to_canonical().to_string());
        conditions.push(format!("context.client_address == {}", cedar_string(&host)));
    }
    let mut text = format!(
        "\n// {}\n@id({})\n{effect} (\n  {},\n  {action},\n  {resource}\n)",
        acl.origin,
        cedar_string(id),
        acl.principal.scope()
    );
    if !conditions.is_empty() {
        let _ = write!(text, "\nwhen {{ {} }}", conditions.join(" && "));
    }
    if acl.permission == AclPermission::Deny {
        text.push_str(exemption);
    }
    text.push_str(";\n");
    text
}

fn effect_name(p: AclPermission) -> &'static str {
    match p {
        AclPermission::Allow => "permit",
        AclPermission::Deny => "forbid",
    }
}

/// A Cedar string literal for `s`.
pub fn cedar_string(s: &str) -> String {
    escape(s, false)
}

/// A Cedar `like` pattern matching every string that starts with `prefix`.
pub fn cedar_like_prefix(prefix: &str) -> String {
    let mut quoted = escape(prefix, true);
    quoted.insert(quoted.len() - 1, '*');
    quoted
}

fn escape(s: &str, pattern: bool) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '*' if pattern => out.push_str("\\*"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
