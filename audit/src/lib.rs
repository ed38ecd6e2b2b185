//! Audit events.
//!
//! Every request Custos forwards, and later every authorization decision, key
//! event and DSR action, becomes an [`AuditEvent`] handed to an [`AuditSink`].
//! The proxy depends only on this interface, so the hash-chained, signed store
//! of the audit issue can replace the sinks here without touching the proxy.
//! Events never hold payload bytes or secrets: only who, what, where, and counts.

use std::sync::Mutex;
use std::time::SystemTime;

/// Whose fault an error was, so that operators know where to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// An error of a sink that could not record an event.
#[derive(Debug, thiserror::Error)]
#[error("audit sink failed: {0}")]
pub struct SinkError(pub String);

/// Receives audit events. Implementations must not block for long: the proxy
/// calls this on the request path.
pub trait AuditSink: Send + Sync {
    /// Records one event.
    fn record(&self, event: AuditEvent) -> Result<(), SinkError>;
}

/// A sink that keeps events in memory, for tests and the admin API's recent view.
#[derive(Debug, Default)]
pub struct MemorySink {
    events: Mutex<Vec<AuditEvent>>,
    capacity: usize,
}

impl MemorySink {
    /// A sink that keeps at most `capacity` most recent events.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            events: Mutex::new(Vec::new()),
            capacity,
        }
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
