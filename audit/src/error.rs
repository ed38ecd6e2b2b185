//! Errors at the crate's edge.
//!
//! [`AuditError`] is what opening, reading, verifying and exporting return.
//! [`AppendError`] is what a ticket resolves to when a record did not become
//! durable; it is `Clone` because one store failure fails every waiting ticket.

use std::path::{Path, PathBuf};

use crate::codec::{DecodeError, EncodeError};

/// Why an audit store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The embedded store failed (I/O, corruption sled itself noticed).
    #[error("audit store: {0}")]
    Store(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// No audit store at that path.
    #[error("no audit store at {0}")]
    NoStore(PathBuf),
    /// A key could not be made, read or parsed.
    #[error("audit signing key: {0}")]
    Key(String),
    /// The store was written by a different signing key than the one given.
    #[error("audit store is signed by key {found}, but the configured key is {configured}")]
    KeyMismatch {
        /// Key id of the store's last checkpoint.
        found: String,
        /// Key id of the configured key.
        configured: String,
    },
    /// The end of the store does not check out; appending would extend a broken
    /// chain, so the store is refused until someone looks at it.
    #[error("audit store tail is corrupt at seq {seq}: {reason}")]
    CorruptTail {
        /// First sequence number that does not check out.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// Stored bytes at this seq do not parse (run verification for the full picture).
    #[error("audit record {seq} is damaged: {reason}")]
    Damaged {
        /// Sequence number of the damaged entry.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// A record could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A stored or exported record could not be decoded.
    #[error("audit record {seq}: {source}")]
    Decode {
        /// Its sequence number.
        seq: u64,
        /// Why.
        source: DecodeError,
    },
    /// No record with that sequence number, or no checkpoint covers it yet.
    #[error("audit record {0} is not covered by any checkpoint")]
    NotCovered(u64),
    /// An export request or export directory is not usable.
    #[error("audit export: {0}")]
    Export(String),
    /// Appending failed.
    #[error(transparent)]
    Append(#[from] AppendError),
}

impl AuditError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        AuditError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<sled::Error> for AuditError {
    fn from(e: sled::Error) -> Self {
        AuditError::Store(e.to_string())
    }
}

/// Why a record was not (or may not have been) made durable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// The log was closed.
    #[error("audit log is closed")]
    Closed,
    /// An earlier store failure stopped the log; it takes no records until reopened.
    #[error("audit log is unhealthy after a store failure: {0}")]
    Unhealthy(String),
    /// Writing or flushing this record's batch failed.
    #[error("audit store write failed: {0}")]
    Store(String),
    /// The encoded record is larger than the configured limit.
    #[error("audit record of {size} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// Configured limit.
        max: usize,
    },
    /// The record could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The writer thread is gone (it panicked or was never started).
    #[error("audit writer stopped")]
    WriterGone,
}

/// Why [`crate::AuditHandle::try_append`] did not queue a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TryAppendError {
    /// The queue is full: the writer is behind. Nothing was queued.
    #[error("audit queue is full")]
    Full,
    /// Any other reason.
    #[error(transparent)]
    Failed(#[from] AppendError),
}
