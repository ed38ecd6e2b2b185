//! The request vocabulary: who asks ([`Principal`]), what for ([`Action`]), on
//! what ([`Resource`]) and over which connection ([`RequestContext`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::Operation;

/// The Cedar entity type of a principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PrincipalKind {
    /// A person or client identity (`User::"name"`).
    User,
    /// A non-human workload identity (`ServiceAccount::"name"`).
    ServiceAccount,
}

impl PrincipalKind {
    /// The Cedar entity type name.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "User",
            PrincipalKind::ServiceAccount => "ServiceAccount",
        }
    }
}

/// How a client proved its identity to Custos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// TLS client certificate.
    Mtls,
    /// SASL/PLAIN.
    SaslPlain,
    /// SASL/SCRAM-SHA-256.
    #[serde(rename = "scram_sha_256")]
    ScramSha256,
    /// SASL/SCRAM-SHA-512.
    #[serde(rename = "scram_sha_512")]
    ScramSha512,
    /// SASL/OAUTHBEARER (JWT).
    #[serde(rename = "oauthbearer")]
    OAuthBearer,
    /// Not authenticated (anonymous listener).
    #[default]
    None,
}

impl AuthMethod {
    /// The value of `context.auth_method` in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Mtls => "mtls",
            AuthMethod::SaslPlain => "sasl_plain",
            AuthMethod::ScramSha256 => "scram_sha_256",
            AuthMethod::ScramSha512 => "scram_sha_512",
            AuthMethod::OAuthBearer => "oauthbearer",
            AuthMethod::None => "none",
        }
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// User or service account.
    pub kind: PrincipalKind,
    /// The identity's name, which is also its Cedar entity id.
    pub name: String,
    /// Groups the principal belongs to (`Group::"name"` parents).
    pub groups: Vec<String>,
    /// How the identity was established; kept here for audit records, while
    /// the policies see the connection's method as `context.auth_method`.
    pub auth_method: AuthMethod,
}

impl Principal {
    /// A user with no groups.
    pub fn user(name: impl Into<String>, auth_method: AuthMethod) -> Self {
        Principal {
            kind: PrincipalKind::User,
            name: name.into(),
            groups: Vec::new(),
            auth_method,
        }
    }

    /// A service account with no groups.
    pub fn service_account(name: impl Into<String>, auth_method: AuthMethod) -> Self {
        Principal {
            kind: PrincipalKind::ServiceAccount,
            name: name.into(),
            groups: Vec::new(),
            auth_method,
        }
    }

    /// The same principal as a member of `groups`.
    pub fn with_groups<I, S>(mut self, groups: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.groups = groups.into_iter().map(Into::into).collect();
        self
    }
}

/// The name Kafka gives the single cluster resource; Custos's `Cluster` entity id.
pub const CLUSTER_NAME: &str = "kafka-cluster";

/// A Kafka ACL resource a request acts on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// A topic, by name.
    Topic(String),
    /// A consumer group (Kafka resource type GROUP), by group id.
    Group(String),
    /// A transactional id.
    TransactionalId(String),
    /// The cluster (`Cluster::"kafka-cluster"`).
    Cluster,
}

impl Resource {
    /// The Cedar entity type name.
    pub fn type_name(&self) -> &'static str {
        match self {
            Resource::Topic(_) => "Topic",
            Resource::Group(_) => "ConsumerGroup",
            Resource::TransactionalId(_) => "TransactionalId",
            Resource::Cluster => "Cluster",
        }
    }

    /// The resource's name, which is also its Cedar entity id.
    pub fn name(&self) -> &str {
        match self {
            Resource::Topic(n) | Resource::Group(n) | Resource::TransactionalId(n) => n,
            Resource::Cluster => CLUSTER_NAME,
        }
    }
}

/// A Cedar action: a Kafka operation, or Custos's own `Decrypt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// A Kafka ACL operation.
    Kafka(Operation),
    /// See the plaintext of a topic's protected fields.
    Decrypt,
}

impl Action {
    /// Number of distinct actions; [`Action::index`] is below it.
    pub const COUNT: usize = Operation::ALL.len() + 1;

    /// Every action, Kafka's operations first.
    pub fn all() -> impl Iterator<Item = Action> {
        Operation::ALL
            .into_iter()
            .map(Action::Kafka)
            .chain(std::iter::once(Action::Decrypt))
    }

    /// The Cedar action id (`Action::"Read"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Kafka(op) => op.as_str(),
            Action::Decrypt => "Decrypt",
        }
    }

    /// A dense index in `0..COUNT`, for per-action tables.
    pub fn index(self) -> usize {
        match self {
            Action::Kafka(op) => Operation::ALL
                .iter()
                .position(|o| *o == op)
                .unwrap_or_default(),
            Action::Decrypt => Operation::ALL.len(),
        }
    }
}

impl From<Operation> for Action {
    fn from(op: Operation) -> Self {
        Action::Kafka(op)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = crate::UnknownOperation;

    /// Kafka's operation names (any spelling [`Operation`] accepts), or `Decrypt`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("decrypt") {
            return Ok(Action::Decrypt);
        }
        s.parse().map(Action::Kafka)
    }
}

/// Facts about the connection and moment of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    /// The client's IP address.
    pub client_address: IpAddr,
    /// Whether the client connection uses TLS.
    pub tls: bool,
    /// The Kafka `client.id` from the request header.
    pub client_id: Option<String>,
    /// How this connection authenticated.
    pub auth_method: AuthMethod,
    /// When the decision is made.
    pub time: SystemTime,
    /// For `Decrypt`: the data classification of the protected parts (the
    /// encryption rule's tag), `context.classification` in policies.
    pub classification: Option<String>,
}

impl RequestContext {
    /// A context for `principal`'s connection from `client_address`, at the current time.
    pub fn new(client_address: IpAddr, tls: bool, auth_method: AuthMethod) -> Self {
        RequestContext {
            client_address,
            tls,
            client_id: None,
            auth_method,
            time: SystemTime::now(),
            classification: None,
        }
    }
}

impl Default for RequestContext {
    /// Loopback, no TLS, no client id, unauthenticated, now.
    fn default() -> Self {
        RequestContext::new(IpAddr::V4(Ipv4Addr::LOCALHOST), false, AuthMethod::None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_indexes_are_dense_and_distinct() {
        let idx: Vec<_> = Action::all().map(Action::index).collect();
        assert_eq!(idx, (0..Action::COUNT).collect::<Vec<_>>());
    }

    #[test]
    fn actions_parse_kafka_names_and_decrypt() {
        assert_eq!("decrypt".parse(), Ok(Action::Decrypt));
        assert_eq!(
            "DESCRIBE_CONFIGS".parse(),
            Ok(Action::Kafka(Operation::DescribeConfigs))
        );
        assert!("Fly".parse::<Action>().is_err());
    }

    #[test]
    fn auth_method_serde_names_match_policy_strings() {
        for m in [
            AuthMethod::Mtls,
            AuthMethod::SaslPlain,
            AuthMethod::ScramSha256,
            AuthMethod::ScramSha512,
            AuthMethod::OAuthBearer,
            AuthMethod::None,
        ] {
            let yaml = serde_yaml_ng::to_string(&m).unwrap();
            assert_eq!(yaml.trim(), m.as_str());
        }
    }
}
