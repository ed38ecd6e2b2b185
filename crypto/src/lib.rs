//! Cryptography for Custos.
//!
//! Audit records, lineage and the subject index must name a data subject
//! without holding their raw identifier. They use a keyed-hash token: HMAC-SHA-256
//! under a secret key, so equal ids give equal tokens (joinable) while a token
//! cannot be reversed or recomputed by anyone without the key. Envelope
//! encryption of protected fields (KMS, DEKs, rotation) is built on this crate
//! by the field-encryption issue.

pub mod aead;
pub mod aws_kms;
pub mod envelope;
pub mod guarded;
pub mod json_fields;
pub mod key_ref;
pub mod keyring;
pub mod keys;
pub mod kms;
pub mod mask;
pub mod subject_log;
pub mod subject_store;

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The smallest token key Custos accepts, in bytes.
pub const MIN_TOKEN_KEY_LEN: usize = 32;

/// Errors of this crate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// A key shorter than its algorithm needs.
    #[error("token key is {got} bytes; at least {min} are required")]
    KeyTooShort {
        /// Length given.
        got: usize,
        /// Length required.
        min: usize,
    },
}

/// Computes keyed-hash tokens for data-subject identifiers.
#[derive(Clone)]
pub struct SubjectTokenizer {
    mac: HmacSha256,
}

impl std::fmt::Debug for SubjectTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("SubjectTokenizer { .. }")
    }
}

impl SubjectTokenizer {
    /// Builds a tokenizer from a secret key of at least [`MIN_TOKEN_KEY_LEN`] bytes.
    pub fn new(key: &[u8]) -> Result<Self, CryptoError> {
        if key.len() < MIN_TOKEN_KEY_LEN {
            return Err(CryptoError::KeyTooShort {
                got: key.len(),
                min: MIN_TOKEN_KEY_LEN,
            });
        }
        let mac = HmacSha256::new_from_slice(key).map_err(|_| CryptoError::KeyTooShort {
            got: key.len(),
            min: MIN_TOKEN_KEY_LEN,
        })?;
        Ok(Self { mac })
    }

    /// The token of one subject id, as lowercase hex of the HMAC-SHA-256 tag.
    pub fn token(&self, subject_id: &[u8]) -> String {
        self.token_bytes(subject_id)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The token of one subject id as the raw 32-byte HMAC-SHA-256 tag.
    pub fn token_bytes(&self, subject_id: &[u8]) -> [u8; key_ref::SUBJECT_TOKEN_LEN] {
        let mut mac = self.mac.clone();
        mac.update(subject_id);
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_known_vector() {
        // HMAC-SHA-256 of "subject-42" under 32 bytes of 0x0b, computed with
        // Python's hmac module: pins the algorithm and the hex encoding.
        let t = SubjectTokenizer::new(&[0x0b; 32]).expect("key");
        assert_eq!(
            t.token(b"subject-42"),
            "1fcf1aeb994af3c80acf20342079e270214b6d3d92caa8add29dcf712a79de2d"
        );
    }

    #[test]
    fn short_keys_are_refused() {
        assert_eq!(
            SubjectTokenizer::new(&[1; 16]).unwrap_err(),
            CryptoError::KeyTooShort { got: 16, min: 32 }
        );
    }

    #[test]
    fn tokens_depend_on_key_and_id() {
        let a = SubjectTokenizer::new(&[1; 32]).expect("key");
        let b = SubjectTokenizer::new(&[2; 32]).expect("key");
        assert_eq!(a.token(b"alice"), a.token(b"alice"));
        assert_ne!(a.token(b"alice"), a.token(b"bob"));
        assert_ne!(a.token(b"alice"), b.token(b"alice"));
    }
}
