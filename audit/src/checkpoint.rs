//! Signed checkpoints and the keys that sign them.
//!
//! A checkpoint is the only thing in the log an outsider has to trust, and it
//! needs only the public key: it commits to how far the log went (`seq`), the
//! chain head there, the RFC 6962 Merkle root over every record up to there,
//! the time, and which key signed. The signature is Ed25519 over a domain tag
//! and the fixed-size encoding below, so a checkpoint signature can never be
//! confused with anything else the same key might sign.
//!
//! ```text
//! checkpoint (v1, 89 bytes) =
//!   u8  version = 0x01 || u64 seq || [32] chain_head || [32] merkle_root
//!   || u64 time_ms || [8] key_id
//! signed message = "custos-audit-checkpoint-v1\0" || checkpoint
//! stored         = checkpoint || [64] signature
//! key_id         = first 8 bytes of SHA-256(32-byte Ed25519 public key)
//! ```
//!
//! Key files: the signing key is the raw 32-byte Ed25519 seed, nothing else
//! (created 0600 by [`SignerKey::generate_file`]); the public key file is the
//! 32-byte key as 64 hex digits and a newline (raw 32 bytes are accepted too).

use std::fmt;
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::AuditError;
use crate::hex;
use crate::merkle::Hash;

/// Version byte of the checkpoint encoding.
pub const CHECKPOINT_VERSION: u8 = 1;
/// Length of an encoded (unsigned) checkpoint.
pub const CHECKPOINT_LEN: usize = 1 + 8 + 32 + 32 + 8 + 8;
/// Length of a stored signed checkpoint.
pub const SIGNED_CHECKPOINT_LEN: usize = CHECKPOINT_LEN + 64;
const DOMAIN: &[u8] = b"custos-audit-checkpoint-v1\0";

/// Short identifier of a public key: the first 8 bytes of its SHA-256.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// The id of a 32-byte Ed25519 public key.
    pub fn of(public: &[u8; 32]) -> Self {
        let d = Sha256::digest(public);
        let mut id = [0u8; 8];
        id.copy_from_slice(&d[..8]);
        Self(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// The key that signs checkpoints. Its bytes are wiped on drop.
pub struct SignerKey {
    key: SigningKey,
}

impl fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(f, "SignerKey({})", self.key_id())
    }
}

impl SignerKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, AuditError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut())
            .map_err(|e| AuditError::Key(format!("no randomness for a new key: {e}")))?;
        Ok(Self::from_seed(&seed))
    }

    /// The key with this 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// Reads a key file (exactly 32 raw bytes).
    pub fn load(path: &Path) -> Result<Self, AuditError> {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| AuditError::io(path, e))?);
        let seed: Zeroizing<[u8; 32]> =
            Zeroizing::new(bytes.as_slice().try_into().map_err(|_| {
                AuditError::Key(format!(
                    "{}: a signing key file holds exactly 32 bytes, found {}",
                    path.display(),
                    bytes.len()
                ))
            })?);
        Ok(Self::from_seed(&seed))
    }

    /// Generates a key, writes its seed to `path` (created new, mode 0600 on
    /// Unix; an existing file is never overwritten) and returns it.
    pub fn generate_file(path: &Path) -> Result<Self, AuditError> {
        use std::io::Write;
        let key = Self::generate()?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = opts.open(path).map_err(|e| AuditError::io(path, e))?;
        file.write_all(key.key.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| AuditError::io(path, e))?;
        Ok(key)
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
        }
    }

    /// The id of the public half.
    pub fn key_id(&self) -> KeyId {
        self.public().key_id()
    }

    /// Signs a checkpoint.
    pub fn sign(&self, checkpoint: Checkpoint) -> SignedCheckpoint {
        let sig = self.key.sign(&signed_message(&checkpoint.encode()));
        SignedCheckpoint {
            checkpoint,
            signature: sig.to_bytes(),
        }
    }
}

/// The public key that verifies checkpoints: all a verifier needs.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl PublicKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, AuditError> {
        VerifyingKey::from_bytes(bytes)
            .map(|key| Self { key })
            .map_err(|e| AuditError::Key(format!("not an Ed25519 public key: {e}")))
    }

    /// A key from 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, AuditError> {
        let bytes = hex::decode_array::<32>(s.trim())
            .ok_or_else(|| AuditError::Key("a public key is 64 hex digits".into()))?;
        Self::from_bytes(&bytes)
    }

    /// Reads a public key file (64 hex digits, or 32 raw bytes).
    pub fn load(path: &Path) -> Result<Self, AuditError> {
        let bytes = std::fs::read(path).map_err(|e| AuditError::io(path, e))?;
        if let Ok(raw) = <[u8; 32]>::try_from(bytes.as_slice()) {
            return Self::from_bytes(&raw);
        }
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| AuditError::Key(format!("{}: not a public key file", path.display())))?;
        Self::from_hex(text)
    }

    /// Writes the key as hex and a newline.
    pub fn save(&self, path: &Path) -> Result<(), AuditError> {
        std::fs::write(path, format!("{}\n", self.to_hex())).map_err(|e| AuditError::io(path, e))
    }

    /// The 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// 64 hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.key.as_bytes())
    }

    /// The key id.
    pub fn key_id(&self) -> KeyId {
        KeyId::of(self.key.as_bytes())
    }
}

/// What a checkpoint commits to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Sequence number of the last record covered (the tree has `seq + 1` leaves).
    pub seq: u64,
    /// Chain hash of record `seq`.
    pub chain_head: Hash,
    /// RFC 6962 root over records `0..=seq`.
    pub merkle_root: Hash,
    /// When it was made, unix milliseconds.
    pub time_ms: u64,
    /// Id of the signing key.
    pub key_id: KeyId,
}

impl Checkpoint {
    /// Number of records covered.
    pub fn tree_size(&self) -> u64 {
        self.seq + 1
    }

    /// The fixed-size encoding that is signed.
    pub fn encode(&self) -> [u8; CHECKPOINT_LEN] {
        let mut out = [0u8; CHECKPOINT_LEN];
        out[0] = CHECKPOINT_VERSION;
        out[1..9].copy_from_slice(&self.seq.to_be_bytes());
        out[9..41].copy_from_slice(&self.chain_head);
        out[41..73].copy_from_slice(&self.merkle_root);
        out[73..81].copy_from_slice(&self.time_ms.to_be_bytes());
        out[81..89].copy_from_slice(&self.key_id.0);
        out
    }

    /// Parses [`Checkpoint::encode`].
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != CHECKPOINT_LEN || bytes[0] != CHECKPOINT_VERSION {
            return None;
        }
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&bytes[81..89]);
        Some(Self {
            seq: u64::from_be_bytes(bytes[1..9].try_into().ok()?),
            chain_head: bytes[9..41].try_into().ok()?,
            merkle_root: bytes[41..73].try_into().ok()?,
            time_ms: u64::from_be_bytes(bytes[73..81].try_into().ok()?),
            key_id: KeyId(key_id),
        })
    }
}

fn signed_message(encoded: &[u8; CHECKPOINT_LEN]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(DOMAIN.len() + CHECKPOINT_LEN);
    msg.extend_from_slice(DOMAIN);
    msg.extend_from_slice(encoded);
    msg
}

/// A checkpoint and its Ed25519 signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// What is committed to.
    pub checkpoint: Checkpoint,
    /// Ed25519 signature over the domain tag and the encoding.
    pub signature: [u8; 64],
}

impl SignedCheckpoint {
    /// The stored form: encoding then signature.
    pub fn to_bytes(&self) -> [u8; SIGNED_CHECKPOINT_LEN] {
        let mut out = [0u8; SIGNED_CHECKPOINT_LEN];
        out[..CHECKPOINT_LEN].copy_from_slice(&self.checkpoint.encode());
        out[CHECKPOINT_LEN..].copy_from_slice(&self.signature);
        out
    }

    /// Parses [`SignedCheckpoint::to_bytes`] (the signature is not checked here).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != SIGNED_CHECKPOINT_LEN {
            return None;
        }
        Some(Self {
            checkpoint: Checkpoint::decode(&bytes[..CHECKPOINT_LEN])?,
            signature: bytes[CHECKPOINT_LEN..].try_into().ok()?,
        })
    }

    /// Checks the key id and the signature against `key`.
    pub fn verify(&self, key: &PublicKey) -> Result<(), String> {
        let expected = key.key_id();
        if self.checkpoint.key_id != expected {
            return Err(format!(
                "checkpoint at seq {} names signing key {}, expected {}",
                self.checkpoint.seq, self.checkpoint.key_id, expected
            ));
        }
        let sig = Signature::from_bytes(&self.signature);
        key.key
            .verify_strict(&signed_message(&self.checkpoint.encode()), &sig)
            .map_err(|_| {
                format!(
                    "checkpoint at seq {}: signature invalid",
                    self.checkpoint.seq
                )
            })
    }
}
