//! Which key protects a ciphertext, as the envelope names it.
//!
//! A ciphertext must say how to find its key again without any state local to
//! one Custos instance: the DEK itself, wrapped by a KMS key; a DEK stored
//! once, wrapped, in the shared key store and named by its id (so each
//! ciphertext is about 60 bytes shorter); or the data subject whose key (in
//! the subject key store) was used.

use crate::kms::WrappedKey;

/// Length of a data-subject token (HMAC-SHA-256 output).
pub const SUBJECT_TOKEN_LEN: usize = 32;

/// Length of a stored DEK's id: random, so ids drawn by any number of
/// gateways never collide in practice (128 bits).
pub const DEK_ID_LEN: usize = 16;

/// A stored DEK's id.
pub type DekId = [u8; DEK_ID_LEN];

/// The key a ciphertext was sealed with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyRef {
    /// A DEK carried in the envelope, wrapped by a KMS KEK.
    Wrapped(WrappedKey),
    /// A DEK wrapped by a KMS KEK and stored once in the key store, named by
    /// its id.
    Stored(DekId),
    /// A data subject's own key, found by the subject's keyed-hash token.
    Subject {
        /// Keyed-hash token of the subject id (never the raw id).
        token: [u8; SUBJECT_TOKEN_LEN],
        /// Which of that subject's keys.
        version: u32,
    },
}
