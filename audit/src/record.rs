//! The audit record: what one audited event says, and nothing more.
//!
//! A record names who did what to which resources, with what result and which
//! keys and data subjects were involved. It never holds payload bytes, secrets
//! or raw personal data: data subjects appear only as keyed-hash tokens, which
//! [`SubjectToken`] enforces by accepting nothing but lowercase hex of hash length.
//! The canonical byte form lives in [`crate::codec`]; these types are the
//! readable side of it (and what the JSON export shows).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{AuditEvent, Blame, DecisionEvent, Outcome};

/// What kind of event a record audits. Each kind has a stable one-byte code
/// in the canonical encoding; codes are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// An authorization decision (allowed or denied).
    Authorization,
    /// Data written: a Produce request.
    Produce,
    /// Data read: a Fetch request.
    Fetch,
    /// An administrative operation (create/delete topics, alter configs, ACLs, ...).
    Admin,
    /// A Custos instance started.
    Start,
    /// A Custos instance stopped.
    Stop,
    /// The configuration was reloaded.
    ConfigReload,
    /// The policy set was reloaded.
    PolicyReload,
    /// A key was rotated.
    KeyRotation,
    /// A key was destroyed (crypto-shredding).
    KeyShredding,
    /// A data-subject request step (find, export, erase).
    Dsr,
    /// Someone queried or exported the audit log itself.
    AuditQuery,
    /// Any other forwarded Kafka request (Metadata, ApiVersions, ...).
    Request,
}

impl EventKind {
    /// Every kind, in code order.
    pub const ALL: [EventKind; 13] = [
        EventKind::Authorization,
        EventKind::Produce,
        EventKind::Fetch,
        EventKind::Admin,
        EventKind::Start,
        EventKind::Stop,
        EventKind::ConfigReload,
        EventKind::PolicyReload,
        EventKind::KeyRotation,
        EventKind::KeyShredding,
        EventKind::Dsr,
        EventKind::AuditQuery,
        EventKind::Request,
    ];

    /// The stable code of this kind in the canonical encoding.
    pub fn code(self) -> u8 {
        match self {
            EventKind::Authorization => 1,
            EventKind::Produce => 2,
            EventKind::Fetch => 3,
            EventKind::Admin => 4,
            EventKind::Start => 5,
            EventKind::Stop => 6,
            EventKind::ConfigReload => 7,
            EventKind::PolicyReload => 8,
            EventKind::KeyRotation => 9,
            EventKind::KeyShredding => 10,
            EventKind::Dsr => 11,
            EventKind::AuditQuery => 12,
            EventKind::Request => 13,
        }
    }

    /// The kind with this code, if any.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }

    /// The snake_case name used in JSON and in query filters.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Authorization => "authorization",
            EventKind::Produce => "produce",
            EventKind::Fetch => "fetch",
            EventKind::Admin => "admin",
            EventKind::Start => "start",
            EventKind::Stop => "stop",
            EventKind::ConfigReload => "config_reload",
            EventKind::PolicyReload => "policy_reload",
            EventKind::KeyRotation => "key_rotation",
            EventKind::KeyShredding => "key_shredding",
            EventKind::Dsr => "dsr",
            EventKind::AuditQuery => "audit_query",
            EventKind::Request => "request",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for EventKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown audit event kind `{s}`"))
    }
}

/// Who acted, and how they proved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// Principal as `Type:name` (e.g. `User:alice`).
    pub name: String,
    /// How the principal authenticated (`SCRAM-SHA-512`, `mtls`, `internal`, ...).
    pub auth_method: String,
}

/// Where a request came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    /// Client socket address (`ip:port`).
    pub addr: String,
    /// Kafka client id from the request header, if any.
    pub id: Option<String>,
}

/// The Kafka request an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaRequest {
    /// Kafka api key.
    pub api_key: i16,
    /// Kafka api version.
    pub api_version: i16,
    /// Correlation id from the request header.
    pub correlation_id: i32,
}

/// The type of a resource. Known types have one-byte codes; anything else is
/// carried by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ResourceType {
    /// A Kafka topic.
    Topic,
    /// A consumer group.
    Group,
    /// A transactional id.
    TransactionalId,
    /// The Kafka cluster itself.
    Cluster,
    /// A delegation token.
    DelegationToken,
    /// An encryption key (by key id).
    Key,
    /// Any other resource type, by name.
    Other(String),
}

impl ResourceType {
    /// The type for a Cedar or Kafka resource-type name; known names map to
    /// their variant so that equal types always encode the same.
    pub fn from_name(name: &str) -> Self {
        match name {
            "Topic" => ResourceType::Topic,
            "ConsumerGroup" | "Group" => ResourceType::Group,
            "TransactionalId" => ResourceType::TransactionalId,
            "Cluster" => ResourceType::Cluster,
            "DelegationToken" => ResourceType::DelegationToken,
            "Key" => ResourceType::Key,
            other => ResourceType::Other(other.to_string()),
        }
    }

    /// The name shown in JSON (Cedar's names for the Kafka types).
    pub fn name(&self) -> &str {
        match self {
            ResourceType::Topic => "Topic",
            ResourceType::Group => "ConsumerGroup",
            ResourceType::TransactionalId => "TransactionalId",
            ResourceType::Cluster => "Cluster",
            ResourceType::DelegationToken => "DelegationToken",
            ResourceType::Key => "Key",
            ResourceType::Other(name) => name,
        }
    }
}

impl Serialize for ResourceType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for ResourceType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Ok(ResourceType::from_name(&name))
    }
}

/// What happened on one partition of a resource: counts only, never data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionEntry {
    /// Partition index.
    pub partition: i32,
    /// Offset involved (base offset written, fetch offset read) where known.
    pub offset: Option<i64>,
    /// Number of Kafka records.
    pub records: u64,
    /// Number of bytes (record batch size on the wire).
    pub bytes: u64,
}

/// A resource an event touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// Resource type.
    #[serde(rename = "type")]
    pub kind: ResourceType,
    /// Resource name.
    pub name: String,
    /// Per-partition entries, in the order the request named them.
    #[serde(default)]
    pub partitions: Vec<PartitionEntry>,
}

impl Resource {
    /// A resource of any type.
    pub fn new(kind: ResourceType, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
            partitions: Vec::new(),
        }
    }

    /// A topic.
    pub fn topic(name: impl Into<String>) -> Self {
        Self::new(ResourceType::Topic, name)
    }

    /// A consumer group.
    pub fn group(name: impl Into<String>) -> Self {
        Self::new(ResourceType::Group, name)
    }

    /// Adds a per-partition entry.
    pub fn with_partition(
        mut self,
        partition: i32,
        offset: Option<i64>,
        records: u64,
        bytes: u64,
    ) -> Self {
        self.partitions.push(PartitionEntry {
            partition,
            offset,
            records,
            bytes,
        });
        self
    }
}

/// An authorization answer and what determined it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Whether the action was allowed.
    pub allowed: bool,
    /// Ids of the determining policies (empty for a default deny).
    pub policy_ids: Vec<String>,
    /// Hash of the policy set in force (hex).
    pub policy_hash: String,
}

/// An error an event ended with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Kafka error code returned to the client, if one was.
    pub code: Option<i16>,
    /// Whose fault it was.
    pub blame: Blame,
    /// Short, payload-free message.
    pub message: String,
}

/// A keyed-hash token standing for a data subject. Only lowercase hex of 16 to
/// 64 bytes is accepted, so an email address or name cannot slip in by mistake.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SubjectToken(String);

impl SubjectToken {
    /// A token from its hex form; refuses anything that is not 32..=128
    /// lowercase hex digits.
    pub fn from_hex(hex: &str) -> Result<Self, String> {
        let ok_len = (32..=128).contains(&hex.len()) && hex.len().is_multiple_of(2);
        let ok_chars = hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if ok_len && ok_chars {
            Ok(Self(hex.to_string()))
        } else {
            Err("a subject token is 32 to 128 lowercase hex digits (a keyed hash)".into())
        }
    }

    /// A token from the keyed-hash bytes (16 to 64 of them).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        Self::from_hex(&crate::hex::encode(bytes))
    }

    /// The hex form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SubjectToken {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::from_hex(&s)
    }
}

impl From<SubjectToken> for String {
    fn from(t: SubjectToken) -> String {
        t.0
    }
}

/// One audit record. Build it with [`AuditRecord::new`] and the `with_*`
/// methods, or from a proxy event with [`AuditRecord::from_decision`] and
/// [`AuditRecord::from_event`]; the store assigns `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the log, from 0; assigned by the writer (ignored on append).
    pub seq: u64,
    /// When the event happened, unix milliseconds.
    pub time_ms: u64,
    /// Which Custos instance saw it.
    pub instance: String,
    /// What kind of event.
    pub kind: EventKind,
    /// What was attempted or done, in the kind's vocabulary: the Cedar action
    /// of a decision (`Write`), the admin api (`CreateTopics`), the DSR step
    /// (`erase`), the reload source (`sighup`).
    pub action: Option<String>,
    /// Who acted.
    pub principal: Option<Principal>,
    /// Where from.
    pub client: Option<Client>,
    /// Which Kafka request.
    pub request: Option<KafkaRequest>,
    /// Resources touched.
    pub resources: Vec<Resource>,
    /// Authorization answer, for decisions.
    pub decision: Option<Decision>,
    /// Error the event ended with.
    pub error: Option<ErrorInfo>,
    /// Ids of keys used, rotated or destroyed.
    pub key_ids: Vec<String>,
    /// Data subjects involved, as keyed-hash tokens.
    pub subject_tokens: Vec<SubjectToken>,
    /// A few extra string details, ordered by key.
    pub details: BTreeMap<String, String>,
}

/// Unix milliseconds of a time; times before 1970 count as 0.
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl AuditRecord {
    /// An empty record of `kind` from `instance`, timed now.
    pub fn new(kind: EventKind, instance: impl Into<String>) -> Self {
        Self {
            seq: 0,
            time_ms: unix_ms(SystemTime::now()),
            instance: instance.into(),
            kind,
            action: None,
            principal: None,
            client: None,
            request: None,
            resources: Vec::new(),
            decision: None,
            error: None,
            key_ids: Vec::new(),
            subject_tokens: Vec::new(),
            details: BTreeMap::new(),
        }
    }

    /// Sets the time.
    pub fn at(mut self, time: SystemTime) -> Self {
        self.time_ms = unix_ms(time);
        self
    }

    /// Sets the time in unix milliseconds.
    pub fn at_ms(mut self, time_ms: u64) -> Self {
        self.time_ms = time_ms;
        self
    }

    /// Sets the action.
    pub fn with_action(mut self, action: impl Into<String>) -> Self {
        self.action = Some(action.into());
        self
    }

    /// Sets the principal and how it authenticated.
    pub fn with_principal(
        mut self,
        name: impl Into<String>,
        auth_method: impl Into<String>,
    ) -> Self {
        self.principal = Some(Principal {
            name: name.into(),
            auth_method: auth_method.into(),
        });
        self
    }

    /// Sets the client address and client id.
    pub fn with_client(mut self, addr: impl Into<String>, id: Option<String>) -> Self {
        self.client = Some(Client {
            addr: addr.into(),
            id,
        });
        self
    }

    /// Sets the Kafka request header fields.
    pub fn with_request(mut self, api_key: i16, api_version: i16, correlation_id: i32) -> Self {
        self.request = Some(KafkaRequest {
            api_key,
            api_version,
            correlation_id,
        });
        self
    }

    /// Adds a resource.
    pub fn with_resource(mut self, resource: Resource) -> Self {
        self.resources.push(resource);
        self
    }

    /// Sets the authorization answer.
    pub fn with_decision(
        mut self,
        allowed: bool,
        policy_ids: Vec<String>,
        policy_hash: impl Into<String>,
    ) -> Self {
        self.decision = Some(Decision {
            allowed,
            policy_ids,
            policy_hash: policy_hash.into(),
        });
        self
    }

    /// Sets the error.
    pub fn with_error(
        mut self,
        code: Option<i16>,
        blame: Blame,
        message: impl Into<String>,
    ) -> Self {
        self.error = Some(ErrorInfo {
            code,
            blame,
            message: message.into(),
        });
        self
    }

    /// Adds a key id.
    pub fn with_key_id(mut self, key_id: impl Into<String>) -> Self {
        self.key_ids.push(key_id.into());
        self
    }

    /// Adds a data-subject token.
    pub fn with_subject(mut self, token: SubjectToken) -> Self {
        self.subject_tokens.push(token);
        self
    }

    /// Sets one detail (a later value for the same key replaces the earlier).
    pub fn with_detail(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.details.insert(key.into(), value.into());
        self
    }

    /// The record of an authorization decision.
    pub fn from_decision(event: &DecisionEvent, instance: impl Into<String>) -> Self {
        Self::new(EventKind::Authorization, instance)
            .at(event.time)
            .with_action(event.action)
            .with_principal(event.principal.clone(), event.auth_method.clone())
            .with_client(event.client_addr.clone(), event.client_id.clone())
            .with_request(event.api_key, event.api_version, event.correlation_id)
            .with_resource(Resource::new(
                ResourceType::from_name(event.resource_type),
                event.resource.clone(),
            ))
            .with_decision(
                event.allowed,
                event.policy_ids.clone(),
                event.policy_hash.clone(),
            )
    }

    /// The record of a forwarded or refused request: Produce and Fetch become
    /// data-access records, everything else [`EventKind::Request`].
    pub fn from_event(event: &AuditEvent, instance: impl Into<String>) -> Self {
        let kind = match event.api_key {
            0 => EventKind::Produce,
            1 => EventKind::Fetch,
            _ => EventKind::Request,
        };
        let mut record = Self::new(kind, instance)
            .at(event.time)
            .with_client(event.client_addr.clone(), event.client_id.clone())
            .with_request(event.api_key, event.api_version, event.correlation_id);
        if let Some(broker) = event.broker_id {
            record = record.with_detail("broker_id", broker.to_string());
        }
        if let Outcome::Refused { reason, blame } = &event.outcome {
            record = record.with_error(None, *blame, reason.clone());
        }
        record
    }

    /// Whether any resource of type `kind` is named `name`.
    pub fn touches(&self, kind: &ResourceType, name: &str) -> bool {
        self.resources
            .iter()
            .any(|r| &r.kind == kind && r.name == name)
    }
}
