//! Custos's Cedar authorization library.
//!
//! Custos decides access with Cedar policies whose actions mirror Kafka's own
//! ACL operations, so that an operator's existing ACLs translate one to one
//! ([`acl_import`]). The pieces:
//!
//! - [`SCHEMA_TEXT`]: the Cedar schema (`schema/custos.cedarschema`).
//! - [`PolicyEngine`]: one validated, immutable snapshot of policies plus the
//!   [`TopicCatalog`], and [`PolicyEngine::authorize`].
//! - [`Authorizer`]: hot reload with a generation counter; [`DecisionCache`]:
//!   a connection's decisions, dropped when the generation changes.
//! - [`policy_test`]: YAML test cases for policies (`N passed, M failed`).
//!
//! # How Kafka's semantics are encoded
//!
//! Kafka's authorizer treats an ALLOW of Read, Write, Delete or Alter as an
//! ALLOW of Describe, and an ALLOW of AlterConfigs as an ALLOW of
//! DescribeConfigs; a DENY implies nothing. The schema makes `Describe` a
//! member of the action groups `Read`, `Write`, `Delete` and `Alter`, and
//! `DescribeConfigs` a member of `AlterConfigs`, so:
//!
//! - `permit(principal, action in Action::"Read", resource)` permits Read
//!   *and* Describe (Kafka's ALLOW READ);
//! - `forbid(principal, action == Action::"Read", resource)` forbids Read only
//!   (Kafka's DENY READ). **Forbid policies must use `action ==`** (or one
//!   forbid per operation): `forbid(... action in Action::"Read" ...)` would
//!   also forbid Describe, which Kafka's DENY READ does not.
//! - `Action::"All"` is the group of all ten Kafka operations (Kafka's ALL),
//!   exact for permit and forbid alike; it does not include `Decrypt`.
//!
//! Forbid beats permit and the default is deny, as in Kafka (with
//! `allow.everyone.if.no.acl.found=false`).

use std::fmt;
use std::str::FromStr;

pub mod acl_import;
mod authorizer;
mod catalog;
mod engine;
mod error;
mod index;
pub mod policy_test;
mod types;

#[cfg(test)]
mod acl_import_tests;
#[cfg(test)]
mod engine_tests;

pub use authorizer::{Authorizer, DecisionCache};
pub use catalog::{CatalogEntry, CatalogError, TopicCatalog, TopicInfo, TopicMatch};
pub use engine::{custos_schema, Decision, PolicyEngine, INLINE_SOURCE, SCHEMA_TEXT};
pub use error::{PolicyError, PolicyProblem, SourceLocation};
pub use types::{
    Action, AuthMethod, Principal, PrincipalKind, RequestContext, Resource, CLUSTER_NAME,
};

/// A Kafka ACL operation, as the broker's authorizer names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// Read records or offsets.
    Read,
    /// Write records.
    Write,
    /// Create topics.
    Create,
    /// Delete topics, records or groups.
    Delete,
    /// Alter partitions or ACLs.
    Alter,
    /// Describe a resource.
    Describe,
    /// Inter-broker and controller actions.
    ClusterAction,
    /// Read configuration.
    DescribeConfigs,
    /// Change configuration.
    AlterConfigs,
    /// Produce idempotently.
    IdempotentWrite,
}

/// The error for an operation name that Kafka does not know.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown Kafka operation {0:?}")]
pub struct UnknownOperation(pub String);

impl Operation {
    /// Every operation, in Kafka's order.
    pub const ALL: [Operation; 10] = [
        Operation::Read,
        Operation::Write,
        Operation::Create,
        Operation::Delete,
        Operation::Alter,
        Operation::Describe,
        Operation::ClusterAction,
        Operation::DescribeConfigs,
        Operation::AlterConfigs,
        Operation::IdempotentWrite,
    ];

    /// Kafka's name for the operation, as `kafka-acls` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "Read",
            Operation::Write => "Write",
            Operation::Create => "Create",
            Operation::Delete => "Delete",
            Operation::Alter => "Alter",
            Operation::Describe => "Describe",
            Operation::ClusterAction => "ClusterAction",
            Operation::DescribeConfigs => "DescribeConfigs",
            Operation::AlterConfigs => "AlterConfigs",
            Operation::IdempotentWrite => "IdempotentWrite",
        }
    }

    /// Operations whose ALLOW grant also allows `self`.
    ///
    /// Kafka's authorizer treats an ALLOW of Read, Write, Delete or Alter as an
    /// ALLOW of Describe, and AlterConfigs as DescribeConfigs. A DENY implies
    /// nothing: that asymmetry is why this returns grants, not denials.
    pub fn implied_by(self) -> &'static [Operation] {
        match self {
            Operation::Describe => &[
                Operation::Describe,
                Operation::Read,
                Operation::Write,
                Operation::Delete,
                Operation::Alter,
            ],
            Operation::DescribeConfigs => &[Operation::DescribeConfigs, Operation::AlterConfigs],
            Operation::Read => &[Operation::Read],
            Operation::Write => &[Operation::Write],
            Operation::Create => &[Operation::Create],
            Operation::Delete => &[Operation::Delete],
            Operation::Alter => &[Operation::Alter],
            Operation::ClusterAction => &[Operation::ClusterAction],
            Operation::AlterConfigs => &[Operation::AlterConfigs],
            Operation::IdempotentWrite => &[Operation::IdempotentWrite],
        }
    }

    /// Whether an ALLOW grant of `granted` allows `self`.
    pub fn is_allowed_by(self, granted: Operation) -> bool {
        self.implied_by().contains(&granted)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Operation {
    type Err = UnknownOperation;

    /// Parses Kafka's names case-insensitively, with or without underscores
    /// (`kafka-acls` prints `DESCRIBE_CONFIGS` in some versions).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm: String = s
            .chars()
            .filter(|c| *c != '_')
            .flat_map(char::to_lowercase)
            .collect();
        Operation::ALL
            .into_iter()
            .find(|op| op.as_str().to_lowercase() == norm)
            .ok_or_else(|| UnknownOperation(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_is_implied_by_read_write_delete_alter_only() {
        let implying: Vec<_> = Operation::ALL
            .into_iter()
            .filter(|g| Operation::Describe.is_allowed_by(*g))
            .collect();
        assert_eq!(
            implying,
            vec![
                Operation::Read,
                Operation::Write,
                Operation::Delete,
                Operation::Alter,
                Operation::Describe
            ]
        );
        assert!(!Operation::Describe.is_allowed_by(Operation::Create));
        assert!(!Operation::Read.is_allowed_by(Operation::Describe));
    }

    #[test]
    fn alter_configs_implies_describe_configs() {
        assert!(Operation::DescribeConfigs.is_allowed_by(Operation::AlterConfigs));
        assert!(!Operation::AlterConfigs.is_allowed_by(Operation::DescribeConfigs));
    }

    #[test]
    fn parses_kafka_spellings() {
        assert_eq!("DESCRIBE_CONFIGS".parse(), Ok(Operation::DescribeConfigs));
        assert_eq!("IdempotentWrite".parse(), Ok(Operation::IdempotentWrite));
        assert!("All".parse::<Operation>().is_err());
    }
}
