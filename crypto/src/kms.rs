//! The key-management interface: where key-encryption keys (KEKs) live.
//!
//! Custos never holds a KEK's bytes outside its KMS implementation. It asks the
//! KMS for a fresh data key (DEK), keeps the plaintext DEK only in memory, and
//! stores the DEK's wrapped form beside the data, so any Custos instance that
//! can reach the same KMS can unwrap it later. Two implementations: the
//! embedded local keyring (`keyring.rs`) and AWS KMS (`aws_kms.rs`).

use std::collections::BTreeMap;

use async_trait::async_trait;
use zeroize::Zeroizing;

/// Length of a data key in bytes (AES-256).
pub const DEK_LEN: usize = 32;

/// Key-value pairs bound to a wrapped key: unwrapping with different pairs fails.
///
/// AWS KMS calls this the encryption context; the local keyring feeds it to
/// its AEAD as associated data. Ordered, so both sides serialise it the same.
pub type EncryptionContext = BTreeMap<String, String>;

/// A DEK wrapped by a KEK, as stored beside the data it protects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WrappedKey {
    /// The KEK that wrapped it: a keyring key name, or an AWS key id/ARN.
    pub kek_id: String,
    /// The KEK version that wrapped it (the keyring's version; 0 where the KMS
    /// versions keys internally, as AWS KMS does).
    pub kek_version: u32,
    /// The KMS's wrapped bytes (opaque to Custos).
    pub blob: Vec<u8>,
}

/// A fresh data key: the plaintext for this process and the wrapped form to store.
pub struct DataKey {
    /// Plaintext key bytes; zeroed on drop, never logged.
    pub plaintext: Zeroizing<[u8; DEK_LEN]>,
    /// The same key wrapped by the KEK.
    pub wrapped: WrappedKey,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("DataKey")
            .field("wrapped", &self.wrapped)
            .finish_non_exhaustive()
    }
}

/// Why a KMS call failed; `retryable` tells the caller whether to try again.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KmsError {
    /// The KMS could not be reached or timed out (worth retrying).
    #[error("KMS unavailable: {0}")]
    Unavailable(String),
    /// The circuit breaker is open after repeated failures; no call was made.
    #[error("KMS circuit open after repeated failures; next attempt in {retry_in_ms} ms")]
    CircuitOpen {
        /// Milliseconds until the breaker lets a trial call through.
        retry_in_ms: u64,
    },
    /// The named KEK (or that version of it) does not exist, or may not be used.
    #[error("KEK {kek_id} (version {version}) is not available: {why}")]
    UnknownKey {
        /// The KEK asked for.
        kek_id: String,
        /// The version asked for (0 when not versioned).
        version: u32,
        /// What the KMS said.
        why: String,
    },
    /// The KEK version that wrapped the key was destroyed on purpose: what it
    /// protected is gone for good (crypto-shredding of a whole key version).
    #[error(
        "KEK {kek_id} version {version} was destroyed: data keys it wrapped cannot be recovered"
    )]
    Destroyed {
        /// The KEK.
        kek_id: String,
        /// The destroyed version.
        version: u32,
    },
    /// The wrapped key did not unwrap: tampered, wrong KEK or wrong context.
    #[error("wrapped key rejected: {0}")]
    Rejected(String),
    /// The KMS refused the caller (credentials, permissions).
    #[error("KMS access denied: {0}")]
    AccessDenied(String),
    /// Anything else the KMS reported.
    #[error("KMS error: {0}")]
    Other(String),
}

impl KmsError {
    /// Whether the same call may succeed if tried again later.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            KmsError::Unavailable(_) | KmsError::CircuitOpen { .. }
        )
    }
}

/// A key-management service holding KEKs.
#[async_trait]
pub trait Kms: Send + Sync + 'static {
    /// Short name for logs and metrics ("local", "aws").
    fn name(&self) -> &'static str;

    /// A fresh random DEK, wrapped under the current version of `kek_id`.
    async fn generate_data_key(
        &self,
        kek_id: &str,
        context: &EncryptionContext,
    ) -> Result<DataKey, KmsError>;

    /// Unwraps a DEK; fails unless `context` equals the one it was wrapped with.
    async fn decrypt_data_key(
        &self,
        wrapped: &WrappedKey,
        context: &EncryptionContext,
    ) -> Result<Zeroizing<[u8; DEK_LEN]>, KmsError>;

    /// Re-wraps a DEK under the current version of its KEK (or of `to_kek_id`),
    /// without the plaintext leaving the KMS where the KMS allows that.
    async fn rewrap(
        &self,
        wrapped: &WrappedKey,
        to_kek_id: Option<&str>,
        context: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError>;
}
