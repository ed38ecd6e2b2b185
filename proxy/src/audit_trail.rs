//! The proxy's side of the audit log: what it records, and when a response
//! may be released.
//!
//! Stages add records to a request's [`AuditNotes`] (authorization decisions,
//! the data a Produce wrote or a Fetch returned, admin operations); the
//! session hands them to the [`Auditor`] before the client gets the answer.
//! In strict mode that hand-over waits until the records are durable, so no
//! access is answered unrecorded; in async mode it waits only for room in the
//! bounded queue (never drops). When the store cannot write, data access is
//! refused (`stages/audit_access.rs`) and the failure shows in logs, metrics
//! and `/readyz`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use custos_audit::{
    AuditHandle, AuditLog, AuditOptions, AuditReader, AuditRecord, AuditWriter, EventKind,
    SignerKey,
};

use crate::config::{AuditConfig, AuditMode};
use crate::metrics::Metrics;

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Why the audit log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AuditOpenError {
    /// The signing key file is unreadable or malformed.
    #[error("`audit.signing_key` {path}: {cause}")]
    Key {
        /// The file.
        path: String,
        /// Why.
        cause: custos_audit::AuditError,
    },
    /// The KMS-held signing key could not be unwrapped.
    #[error("`audit.signing_key` (with `audit.signing_key_kms`): {0}")]
    KmsKey(String),
    /// The store could not be opened (or its tail does not verify).
    #[error("`audit.dir` {path}: {cause}")]
    Store {
        /// The directory.
        path: String,
        /// Why.
        cause: custos_audit::AuditError,
    },
}

/// Audit records one request's handling produced, handed to the log with its
/// response. Empty (no allocation) when auditing is off.
#[derive(Clone, Default)]
pub struct AuditNotes(Option<Arc<NotesInner>>);

struct NotesInner {
    instance: Arc<str>,
    records: Mutex<Vec<AuditRecord>>,
}

impl std::fmt::Debug for AuditNotes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("AuditNotes(off)"),
            Some(n) => write!(f, "AuditNotes({})", lock(&n.records).len()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere mid-push; the records
    // already pushed are still records.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl AuditNotes {
    /// Notes for a request on an instance named `instance`.
    pub fn new(instance: Arc<str>) -> Self {
        Self(Some(Arc::new(NotesInner {
            instance,
            records: Mutex::new(Vec::new()),
        })))
    }

    /// Whether anything is recorded at all.
    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }

    /// The instance name records carry (empty when off).
    pub fn instance(&self) -> &str {
        self.0.as_ref().map_or("", |n| &n.instance)
    }

    /// Adds a record (no-op when off).
    pub fn push(&self, record: AuditRecord) {
        if let Some(n) = &self.0 {
            lock(&n.records).push(record);
        }
    }

    /// Changes the records already noted (e.g. completing a Produce record
    /// with the offsets from the answer).
    pub fn update(&self, f: impl FnOnce(&mut Vec<AuditRecord>)) {
        if let Some(n) = &self.0 {
            f(&mut lock(&n.records));
        }
    }

    /// Takes every record noted so far.
    pub fn take(&self) -> Vec<AuditRecord> {
        self.0
            .as_ref()
            .map(|n| std::mem::take(&mut *lock(&n.records)))
            .unwrap_or_default()
    }
}

/// The audit log as the proxy uses it (or nothing, when not configured).
#[derive(Clone, Default)]
pub struct Auditor(Option<Arc<Inner>>);

struct Inner {
    handle: AuditHandle,
    writer: Mutex<Option<AuditWriter>>,
    mode: AuditMode,
    instance: Arc<str>,
    dir: std::path::PathBuf,
    public_key: custos_audit::PublicKey,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("Auditor(off)"),
            Some(i) => write!(f, "Auditor({:?}, {})", i.mode, i.instance),
        }
    }
}

/// This host's name, for records of an instance that was not given one.
fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "custos".to_string())
}

impl Auditor {
    /// No audit log: records are not even built.
    pub fn disabled() -> Self {
        Self(None)
    }

    /// Opens the store (continuing its chain) and starts the writer, with
    /// the signing key read from `audit.signing_key`.
    pub fn open(cfg: &AuditConfig, metrics: Arc<Metrics>) -> Result<Self, AuditOpenError> {
        let key = SignerKey::load(&cfg.signing_key).map_err(|cause| AuditOpenError::Key {
            path: cfg.signing_key.display().to_string(),
            cause,
        })?;
        Self::open_with_key(cfg, key, metrics)
    }

    /// As [`open`](Self::open), with a signing key obtained elsewhere (the
    /// KMS, for `audit.signing_key_kms`).
    pub fn open_with_key(
        cfg: &AuditConfig,
        key: SignerKey,
        metrics: Arc<Metrics>,
    ) -> Result<Self, AuditOpenError> {
        let public_key = key.public();
        let options = AuditOptions {
            checkpoint_interval: Duration::from_millis(cfg.checkpoint_interval_ms),
            checkpoint_every: cfg.checkpoint_every,
            queue_capacity: cfg.queue_capacity,
            ..AuditOptions::default()
        };
        let (handle, writer) =
            AuditLog::open(&cfg.dir, key, options).map_err(|cause| AuditOpenError::Store {
                path: cfg.dir.display().to_string(),
                cause,
            })?;
        let instance: Arc<str> = cfg.instance_id.clone().unwrap_or_else(host_name).into();
        tracing::info!(
            dir = %cfg.dir.display(),
            mode = ?cfg.mode,
            instance = %instance,
            public_key = %public_key.to_hex(),
            next_seq = handle.health().durable_records,
            "audit log open"
        );
        Ok(Self(Some(Arc::new(Inner {
            handle,
            writer: Mutex::new(Some(writer)),
            mode: cfg.mode,
            instance,
            dir: cfg.dir.clone(),
            public_key,
            metrics,
        }))))
    }

    /// Whether an audit log is configured.
    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }

    /// Fresh notes for one request (empty when auditing is off).
    pub fn notes(&self) -> AuditNotes {
        match &self.0 {
            Some(i) => AuditNotes::new(i.instance.clone()),
            None => AuditNotes::default(),
        }
    }

    /// The instance name records carry.
    pub fn instance(&self) -> &str {
        self.0.as_ref().map_or("", |i| &i.instance)
    }

    /// Whether the log takes records (true when auditing is off).
    pub fn healthy(&self) -> bool {
        self.0.as_ref().is_none_or(|i| i.handle.healthy())
    }

    /// Why the log stopped taking records, if it did.
    pub fn failure(&self) -> Option<String> {
        self.0.as_ref().and_then(|i| i.handle.health().failure)
    }

    /// The handle, for the admin API.
    pub fn handle(&self) -> Option<&AuditHandle> {
        self.0.as_ref().map(|i| &i.handle)
    }

    /// A reader of the store, for queries and proofs.
    pub fn reader(&self) -> Option<AuditReader> {
        self.0.as_ref().map(|i| i.handle.reader())
    }

    /// The store directory and the public key verifiers need.
    pub fn store(&self) -> Option<(&std::path::Path, &custos_audit::PublicKey)> {
        self.0.as_ref().map(|i| (i.dir.as_path(), &i.public_key))
    }

    /// Hands one request's records to the log. Strict mode returns once they
    /// are durable; async mode once they are queued. An error means they are
    /// not recorded: the caller must not release the response.
    pub async fn submit(&self, records: Vec<AuditRecord>) -> Result<(), String> {
        let Some(i) = &self.0 else { return Ok(()) };
        if records.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut last = None;
        for r in &records {
            match i.handle.append(r).await {
                Ok(t) => last = Some(t),
                Err(e) => {
                    i.metrics.audit_failure();
                    return Err(e.to_string());
                }
            }
        }
        i.metrics.audit_records(records.len() as u64);
        // The writer makes records durable in order: the last one's ticket
        // covers them all.
        if let (AuditMode::Strict, Some(t)) = (i.mode, last) {
            if let Err(e) = t.await {
                i.metrics.audit_failure();
                return Err(e.to_string());
            }
            i.metrics.audit_wait(started.elapsed());
        }
        Ok(())
    }

    /// Records an event of Custos itself (start, stop, policy reload, a
    /// failed authentication) without waiting; a failure is logged.
    pub fn event(&self, record: AuditRecord) {
        let Some(i) = &self.0 else { return };
        if let Err(e) = i.handle.try_append_detached(&record) {
            i.metrics.audit_failure();
            tracing::error!(error = %e, kind = %record.kind, "audit event not recorded");
        }
    }

    /// A record of `kind` stamped with this instance and now.
    pub fn record(&self, kind: EventKind) -> AuditRecord {
        AuditRecord::new(kind, self.instance()).at(SystemTime::now())
    }

    /// Writes a final checkpoint and stops the writer.
    pub async fn close(&self) {
        let Some(i) = &self.0 else { return };
        match i.handle.close().await {
            Ok(Some(c)) => tracing::info!(
                tree_size = c.checkpoint.tree_size(),
                "audit log closed with a final checkpoint"
            ),
            Ok(None) => tracing::info!("audit log closed (empty)"),
            Err(e) => tracing::error!(error = %e, "audit log did not close cleanly"),
        }
        let writer = lock(&i.writer).take();
        if let Some(w) = writer {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
    }
}
