//! Audit events and the tamper-evident audit log.
//!
//! Every request Custos forwards, every authorization decision, key event and
//! DSR action becomes an audit record. The proxy hands events to an
//! [`AuditSink`]; the durable sink is an [`AuditLog`]: records in a canonical
//! binary form ([`codec`], `audit/FORMAT.md`), each hash-chained to the one
//! before, with Ed25519-signed checkpoints over the chain head and an RFC 6962
//! Merkle root, stored in sled with group commit. Anyone with the public key
//! can verify a store or an export offline ([`verify_store`],
//! [`verify_export`]) and check that one record is in the signed log
//! ([`verify_proof`]). Records never hold payload bytes, secrets or raw
//! personal data: only who, what, where, counts, and keyed-hash tokens.
//!
//! Wiring, in short: [`AuditLog::open`] once at start-up gives an
//! [`AuditHandle`] (cheap to clone) and the [`AuditWriter`] thread.
//! Asynchronous audit hands events to a [`LogSink`], which never waits (a
//! full queue or an unhealthy log is a `SinkError`). Strict audit awaits the
//! ticket, `handle.append(&record).await?.await?`, before answering the
//! client. Queries go through `handle.reader()`; its methods block, so call
//! them off the async runtime. At shutdown, `handle.close().await` writes the
//! final checkpoint, then `writer.join()`.

pub mod checkpoint;
pub mod codec;
mod error;
mod export;
pub mod hex;
pub mod merkle;
mod query;
mod reader;
pub mod record;
mod sink;
pub mod store;
mod verify;

pub use checkpoint::{Checkpoint, KeyId, PublicKey, SignedCheckpoint, SignerKey};
pub use error::{AppendError, AuditError, TryAppendError};
pub use export::{export, verify_export, ExportRange, ExportSummary};
pub use query::{Cursor, ScanFilter, ScanPage, SCAN_BUDGET};
pub use reader::{AuditReader, StoredRecord};
pub use record::{
    AuditRecord, Client, Decision, ErrorInfo, EventKind, KafkaRequest, PartitionEntry, Principal,
    Resource, ResourceType, SubjectToken,
};
pub use sink::LogSink;
pub use store::{AuditHandle, AuditLog, AuditOptions, AuditWriter, Health, Receipt, Ticket};
pub use verify::{
    prove, verify_proof, verify_store, CheckpointJson, InclusionProof, Problem, ProofError, Reason,
    Report, VerifyOptions,
};

use std::sync::Mutex;
use std::time::SystemTime;

/// Whose fault an error was, so that operators know where to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Blame {
    /// The client sent something wrong.
    Client,
    /// The upstream broker failed or went away.
    Upstream,
    /// Custos itself failed.
    Internal,
}

/// What happened to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded to the broker and answered.
    Forwarded,
    /// Refused by Custos, with the reason and whose fault it was.
    Refused {
        /// Short, payload-free reason.
        reason: String,
        /// Whose fault.
        blame: Blame,
    },
}

/// One audited request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// When Custos saw the request.
    pub time: SystemTime,
    /// Client socket address.
    pub client_addr: String,
    /// Client id from the request header, if any.
    pub client_id: Option<String>,
    /// Kafka api key.
    pub api_key: i16,
    /// Kafka api version.
    pub api_version: i16,
    /// Correlation id of the request.
    pub correlation_id: i32,
    /// Upstream broker id the connection represents (`None` for bootstrap).
    pub broker_id: Option<i32>,
    /// Result.
    pub outcome: Outcome,
}

/// One authorization decision: who asked to do what to which resource, the
/// answer, and the policies that gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionEvent {
    /// When the decision was made.
    pub time: SystemTime,
    /// Principal as `Type:name` (e.g. `User:alice`).
    pub principal: String,
    /// How the principal authenticated (`SCRAM-SHA-512`, `mtls`, ...).
    pub auth_method: String,
    /// Client socket address.
    pub client_addr: String,
    /// Client id from the request header, if any.
    pub client_id: Option<String>,
    /// Kafka api key of the request.
    pub api_key: i16,
    /// Kafka api version of the request.
    pub api_version: i16,
    /// Correlation id of the request.
    pub correlation_id: i32,
    /// Cedar action (`Write`, `Describe`, ...).
    pub action: &'static str,
    /// Cedar resource type (`Topic`, `ConsumerGroup`, `TransactionalId`, `Cluster`).
    pub resource_type: &'static str,
    /// Resource name.
    pub resource: String,
    /// Whether the action was allowed.
    pub allowed: bool,
    /// Ids of the determining policies (empty for a default deny).
    pub policy_ids: Vec<String>,
    /// SHA-256 of the policy set in force.
    pub policy_hash: String,
}

/// An error of a sink that could not record an event.
#[derive(Debug, thiserror::Error)]
#[error("audit sink failed: {0}")]
pub struct SinkError(pub String);

/// Receives audit events. Implementations must not block for long: the proxy
/// calls this on the request path.
pub trait AuditSink: Send + Sync {
    /// Records one event.
    fn record(&self, event: AuditEvent) -> Result<(), SinkError>;

    /// Records one authorization decision.
    fn record_decision(&self, event: DecisionEvent) -> Result<(), SinkError>;

    /// Whether this sink keeps decisions at all (so callers can skip building them).
    fn wants_decisions(&self) -> bool {
        true
    }
}

/// A sink that keeps nothing: the proxy's sink until a durable store is
/// configured.
#[derive(Debug, Default, Clone, Copy)]
pub struct DiscardSink;

impl AuditSink for DiscardSink {
    fn record(&self, _event: AuditEvent) -> Result<(), SinkError> {
        Ok(())
    }

    fn record_decision(&self, _event: DecisionEvent) -> Result<(), SinkError> {
        Ok(())
    }

    fn wants_decisions(&self) -> bool {
        false
    }
}

/// A sink that keeps events in memory, for tests and the admin API's recent view.
#[derive(Debug, Default)]
pub struct MemorySink {
    events: Mutex<Vec<AuditEvent>>,
    decisions: Mutex<Vec<DecisionEvent>>,
    capacity: usize,
}

impl MemorySink {
    /// A sink that keeps at most `capacity` most recent events.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            events: Mutex::new(Vec::new()),
            decisions: Mutex::new(Vec::new()),
            capacity,
        }
    }

    /// A copy of the decisions held, oldest first.
    pub fn decisions(&self) -> Vec<DecisionEvent> {
        self.decisions.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// A copy of the events held, oldest first.
    pub fn events(&self) -> Vec<AuditEvent> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl AuditSink for MemorySink {
    fn record(&self, event: AuditEvent) -> Result<(), SinkError> {
        let mut events = self
            .events
            .lock()
            .map_err(|_| SinkError("memory sink lock poisoned".into()))?;
        if self.capacity > 0 && events.len() == self.capacity {
            events.remove(0);
        }
        events.push(event);
        Ok(())
    }

    fn record_decision(&self, event: DecisionEvent) -> Result<(), SinkError> {
        let mut decisions = self
            .decisions
            .lock()
            .map_err(|_| SinkError("memory sink lock poisoned".into()))?;
        if self.capacity > 0 && decisions.len() == self.capacity {
            decisions.remove(0);
        }
        decisions.push(event);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(corr: i32) -> AuditEvent {
        AuditEvent {
            time: SystemTime::UNIX_EPOCH,
            client_addr: "127.0.0.1:1".into(),
            client_id: None,
            api_key: 3,
            api_version: 12,
            correlation_id: corr,
            broker_id: Some(1),
            outcome: Outcome::Forwarded,
        }
    }

    #[test]
    fn memory_sink_keeps_the_most_recent() {
        let sink = MemorySink::with_capacity(2);
        for i in 0..3 {
            sink.record(ev(i)).expect("record");
        }
        let got: Vec<_> = sink.events().iter().map(|e| e.correlation_id).collect();
        assert_eq!(got, vec![1, 2]);
    }
}
