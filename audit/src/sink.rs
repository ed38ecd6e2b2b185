//! The audit log as an [`AuditSink`], for asynchronous audit.
//!
//! The sink trait is synchronous and sits on the request path, so this sink
//! never waits: it queues records without tickets and reports a full queue or
//! an unhealthy log as a [`SinkError`]. Strict audit (answer the client only
//! once its record is durable) awaits [`crate::AuditHandle::append`]'s ticket
//! instead of going through this trait.

use crate::error::TryAppendError;
use crate::record::AuditRecord;
use crate::store::AuditHandle;
use crate::{AuditEvent, AuditSink, DecisionEvent, SinkError};

/// An [`AuditSink`] that queues every event into an audit log.
#[derive(Debug, Clone)]
pub struct LogSink {
    handle: AuditHandle,
    instance: String,
}

impl LogSink {
    /// A sink writing to `handle`, stamping records with `instance`.
    pub fn new(handle: AuditHandle, instance: impl Into<String>) -> Self {
        Self {
            handle,
            instance: instance.into(),
        }
    }

    fn queue(&self, record: &AuditRecord) -> Result<(), SinkError> {
        self.handle
            .try_append_detached(record)
            .map_err(|e: TryAppendError| SinkError(e.to_string()))
    }
}

impl AuditSink for LogSink {
    fn record(&self, event: AuditEvent) -> Result<(), SinkError> {
        self.queue(&AuditRecord::from_event(&event, self.instance.as_str()))
    }

    fn record_decision(&self, event: DecisionEvent) -> Result<(), SinkError> {
        self.queue(&AuditRecord::from_decision(&event, self.instance.as_str()))
    }
}
