//! Policy tests: expected decisions written as YAML, run against an engine.
//!
//! A test file is a YAML list of cases:
//!
//! ```yaml
//! - name: analysts read non-pii topics
//!   principal: { type: User, name: alice, groups: [analysts], auth_method: mtls }
//!   action: Read                     # a Kafka operation (any kafka-acls spelling) or Decrypt
//!   resource: { type: Topic, name: orders }   # Topic | Group | TransactionalId | Cluster
//!   context:                         # optional, every key optional
//!     client_address: 10.0.0.7       # default 127.0.0.1
//!     tls: true                      # default false
//!     client_id: orders-app          # default none ("" in policies)
//!     auth_method: mtls              # default: the principal's auth_method, else none
//!     time: 1700000000               # unix seconds; default now
//!   expect: allow                    # allow | deny
//! ```
//!
//! `principal.type` is `User` or `ServiceAccount`; `groups` and `auth_method`
//! may be left out. `resource.name` is not needed for `Cluster`. Unknown keys
//! are errors, so a typo cannot silently turn into a default.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::{Action, AuthMethod, PolicyEngine, Principal, PrincipalKind, RequestContext, Resource};

/// Why a test file could not be run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyTestError {
    /// The file is not a YAML list of cases in the documented shape.
    #[error("policy test file: {0}")]
    Yaml(String),
    /// A case is well-formed YAML but names something that does not exist.
    #[error("policy test case {index} ({name:?}): {reason}")]
    InvalidCase {
        /// Position of the case, from 1.
        index: usize,
        /// The case's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// The decision a case expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// The request must be allowed.
    Allow,
    /// The request must be denied.
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    principal: CasePrincipal,
    action: String,
    resource: CaseResource,
    #[serde(default)]
    context: CaseContext,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CasePrincipal {
    #[serde(rename = "type")]
    kind: PrincipalKind,
    name: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    auth_method: Option<AuthMethod>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
enum ResourceKind {
    Topic,
    #[serde(alias = "ConsumerGroup")]
    Group,
    TransactionalId,
    Cluster,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseResource {
    #[serde(rename = "type")]
    kind: ResourceKind,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseContext {
    client_address: Option<IpAddr>,
    tls: Option<bool>,
    client_id: Option<String>,
    auth_method: Option<AuthMethod>,
    time: Option<u64>,
    /// For `Decrypt` cases: the classification of the protected data.
    classification: Option<String>,
}

/// The outcome of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// What the case expected.
    pub expected: Expect,
    /// What the engine decided.
    pub allowed: bool,
    /// Policies that determined the decision.
    pub determining_policies: Vec<String>,
    /// Evaluation errors.
    pub errors: Vec<String>,
}

impl CaseResult {
    /// Whether the decision is the expected one.
    pub fn passed(&self) -> bool {
        self.allowed == (self.expected == Expect::Allow)
    }
}

impl fmt::Display for CaseResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = |allow: bool| if allow { "allow" } else { "deny" };
        write!(
            f,
            "{} {}: expected {}, got {}",
            if self.passed() { "PASS" } else { "FAIL" },
            self.name,
            word(self.expected == Expect::Allow),
            word(self.allowed)
        )?;
        if !self.determining_policies.is_empty() {
            write!(f, " (by {})", self.determining_policies.join(", "))?;
        }
        for e in &self.errors {
            write!(f, "; error: {e}")?;
        }
        Ok(())
    }
}

/// Per-case results of a test file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TestReport {
    /// One result per case, in file order.
    pub results: Vec<CaseResult>,
}

impl TestReport {
    /// Number of cases that got the expected decision.
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.passed()).count()
    }

    /// Number of cases that did not.
    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// Whether every case passed.
    pub fn all_passed(&self) -> bool {
        self.failed() == 0
    }

    /// Exactly `N passed, M failed`.
    pub fn summary(&self) -> String {
        format!("{} passed, {} failed", self.passed(), self.failed())
    }
}

impl fmt::Display for TestReport {
    /// One line per case, then the summary line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.results {
            writeln!(f, "{r}")?;
        }
        write!(f, "{}", self.summary())
    }
}

/// Runs the YAML test cases in `text` against `engine`.
pub fn run_cases(engine: &PolicyEngine, text: &str) -> Result<TestReport, PolicyTestError> {
    let cases: Vec<Case> =
        serde_yaml_ng::from_str(text).map_err(|e| PolicyTestError::Yaml(e.to_string()))?;
    let now = SystemTime::now();
    let mut results = Vec::with_capacity(cases.len());
    for (i, case) in cases.into_iter().enumerate() {
        let invalid = |reason: String| PolicyTestError::InvalidCase {
            index: i + 1,
            name: case.name.clone(),
            reason,
        };
        let action: Action = case
            .action
            .parse()
            .map_err(|e: crate::UnknownOperation| invalid(e.to_string()))?;
        let name = || {
            case.resource
                .name
                .clone()
                .ok_or_else(|| invalid("resource.name is required for this type".to_string()))
        };
        let resource = match case.resource.kind {
            ResourceKind::Topic => Resource::Topic(name()?),
            ResourceKind::Group => Resource::Group(name()?),
            ResourceKind::TransactionalId => Resource::TransactionalId(name()?),
            ResourceKind::Cluster => Resource::Cluster,
        };
        let p = &case.principal;
        let principal = Principal {
            kind: p.kind,
            name: p.name.clone(),
            groups: p.groups.clone(),
            auth_method: p.auth_method.unwrap_or_default(),
        };
        let c = &case.context;
        let ctx = RequestContext {
            client_address: c.client_address.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            tls: c.tls.unwrap_or(false),
            client_id: c.client_id.clone(),
            auth_method: c.auth_method.unwrap_or(principal.auth_method),
            time: c.time.map_or(now, |s| UNIX_EPOCH + Duration::from_secs(s)),
            classification: c.classification.clone(),
        };
        let d = engine.authorize(&principal, action, &resource, &ctx);
        results.push(CaseResult {
            name: case.name,
            expected: case.expect,
            allowed: d.allowed,
            determining_policies: d.determining_policies,
            errors: d.errors,
        });
    }
    Ok(TestReport { results })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TopicCatalog;

    fn engine() -> PolicyEngine {
        PolicyEngine::load(
            r#"
            @id("readers") permit(principal in Group::"readers", action in Action::"Read", resource is Topic);
            @id("tls-only") forbid(principal, action, resource) unless { context.tls };
            "#,
            TopicCatalog::empty(),
        )
        .unwrap()
    }

    const CASES: &str = r#"
- name: reader reads over TLS
  principal: { type: User, name: alice, groups: [readers] }
  action: Read
  resource: { type: Topic, name: orders }
  context: { tls: true }
  expect: allow
- name: describe implied
  principal: { type: ServiceAccount, name: svc, groups: [readers], auth_method: scram_sha_256 }
  action: DESCRIBE
  resource: { type: Topic, name: orders }
  context: { tls: true, client_address: "::1", client_id: x, auth_method: mtls, time: 1700000000 }
  expect: allow
- name: plaintext denied
  principal: { type: User, name: alice, groups: [readers] }
  action: Read
  resource: { type: Topic, name: orders }
  expect: deny
- name: wrong expectation
  principal: { type: User, name: bob }
  action: Write
  resource: { type: Cluster }
  expect: allow
"#;

    #[test]
    fn runs_cases_and_summarises() {
        let report = run_cases(&engine(), CASES).unwrap();
        assert_eq!(report.summary(), "3 passed, 1 failed");
        assert!(!report.all_passed());
        assert_eq!(report.results[0].determining_policies, vec!["readers"]);
        assert_eq!(report.results[2].determining_policies, vec!["tls-only"]);
        let text = report.to_string();
        assert!(
            text.contains("FAIL wrong expectation: expected allow, got deny"),
            "{text}"
        );
        assert!(text.ends_with("\n3 passed, 1 failed"), "{text}");
    }

    #[test]
    fn rejects_bad_files_with_reasons() {
        let e = engine();
        let unknown_key = "- name: x\n  principal: {type: User, name: a}\n  action: Read\n  resource: {type: Topic, name: t}\n  expect: allow\n  expct: deny\n";
        assert!(matches!(
            run_cases(&e, unknown_key),
            Err(PolicyTestError::Yaml(_))
        ));
        let bad_action = "- name: x\n  principal: {type: User, name: a}\n  action: Fly\n  resource: {type: Topic, name: t}\n  expect: allow\n";
        let err = run_cases(&e, bad_action).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("policy test case 1 (\"x\"): unknown Kafka operation"),
            "{err}"
        );
        let no_name = "- name: x\n  principal: {type: User, name: a}\n  action: Read\n  resource: {type: Topic}\n  expect: allow\n";
        assert!(matches!(
            run_cases(&e, no_name),
            Err(PolicyTestError::InvalidCase { .. })
        ));
        let bad_type = "- name: x\n  principal: {type: Robot, name: a}\n  action: Read\n  resource: {type: Topic, name: t}\n  expect: allow\n";
        assert!(matches!(
            run_cases(&e, bad_type),
            Err(PolicyTestError::Yaml(_))
        ));
        assert_eq!(run_cases(&e, "[]").unwrap().summary(), "0 passed, 0 failed");
    }
}
