//! The self-describing ciphertext that replaces a protected field on the broker.
//!
//! Any Custos instance must be able to decrypt what any other sealed, with no
//! state of its own, so the ciphertext carries everything but the key: a magic
//! prefix (to tell a sealed field from plaintext), the format version, the
//! algorithm, the key reference (a KMS-wrapped DEK or a data subject's key),
//! the nonce and the AEAD output. The header and the field's place (topic and
//! field name) are the associated data, so a ciphertext copied to another
//! topic or field, or given a different key reference, does not open. The
//! byte layout is documented in `crypto/FORMAT.md` and pinned by golden tests.

use crate::aead::{
    self, AeadError, Backend, GcmKey, SivKey, GCM_TAG_LEN, KEY_LEN, NONCE_LEN, SIV_IV_LEN,
};
use crate::key_ref::{KeyRef, DEK_ID_LEN, SUBJECT_TOKEN_LEN};
use crate::kms::WrappedKey;

/// First two bytes of every envelope: not valid UTF-8 (0xC5 needs a
/// continuation byte, 0x7D is not one), so no text, JSON or string header
/// starts with them, and an unlikely opening for Avro or Protobuf data.
pub const MAGIC: [u8; 2] = [0xC5, 0x7D];
/// The format version this code writes and reads.
pub const VERSION: u8 = 1;

const ALG_AES256_GCM: u8 = 1;
const ALG_AES256_SIV: u8 = 2;
const KEY_REF_WRAPPED: u8 = 1;
const KEY_REF_SUBJECT: u8 = 2;
const KEY_REF_STORED: u8 = 3;

/// Longest KEK id the format carries (one length byte).
pub const MAX_KEK_ID_LEN: usize = u8::MAX as usize;
/// Longest wrapped-key blob the format carries (two length bytes).
pub const MAX_BLOB_LEN: usize = u16::MAX as usize;
/// Longest topic or field name a binding may have (two length bytes in the AAD).
pub const MAX_BINDING_LEN: usize = u16::MAX as usize;

/// The AEAD algorithm of an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// AES-256-GCM with a random 96-bit nonce: equal plaintexts look different.
    Aes256Gcm,
    /// AES-256-SIV (RFC 5297), deterministic: equal plaintexts in the same
    /// topic and field under the same key give equal ciphertexts (joinable).
    Aes256Siv,
}

impl Algorithm {
    /// The algorithm byte in the envelope header.
    pub fn id(self) -> u8 {
        match self {
            Algorithm::Aes256Gcm => ALG_AES256_GCM,
            Algorithm::Aes256Siv => ALG_AES256_SIV,
        }
    }

    /// The algorithm with that header byte, if this version knows it.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            ALG_AES256_GCM => Some(Algorithm::Aes256Gcm),
            ALG_AES256_SIV => Some(Algorithm::Aes256Siv),
            _ => None,
        }
    }

    /// Name for logs and configuration ("aes-256-gcm", "aes-256-siv").
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Aes256Gcm => "aes-256-gcm",
            Algorithm::Aes256Siv => "aes-256-siv",
        }
    }
}

/// Where a ciphertext lives; bound in as associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Binding<'a> {
    /// The Kafka topic.
    pub topic: &'a str,
    /// The field within a record: "value", "key", "header:NAME", "json:PATH".
    pub field: &'a str,
}

/// Why an envelope could not be sealed, parsed or opened.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The bytes end before the envelope does.
    #[error("envelope truncated")]
    Truncated,
    /// The bytes do not start with the envelope magic: not a Custos ciphertext.
    #[error("not a Custos envelope (bad magic)")]
    BadMagic,
    /// A format version this build does not read.
    #[error("unknown envelope format version {0}")]
    UnknownVersion(u8),
    /// An algorithm byte this version does not know.
    #[error("unknown envelope algorithm {0}")]
    UnknownAlgorithm(u8),
    /// The key reference is malformed.
    #[error("malformed key reference: {0}")]
    BadKeyRef(&'static str),
    /// Wrong key, wrong topic or field, or altered bytes; deliberately no more.
    #[error("ciphertext does not authenticate")]
    Authentication,
    /// A key reference too large for the format (KEK id over 255 bytes, blob over 65535).
    #[error("key reference too long to encode: {0}")]
    KeyRefTooLong(&'static str),
    /// A topic or field name over 65535 bytes.
    #[error("topic or field name too long to bind")]
    BindingTooLong,
    /// A plaintext over the AEAD limit.
    #[error("plaintext too long to seal")]
    PlaintextTooLong,
    /// The operating system's random source failed; nothing was sealed.
    #[error("random source unavailable")]
    Random,
    /// The cryptographic library failed where it cannot on valid input.
    #[error("cryptographic library failure")]
    Internal,
}

impl From<AeadError> for EnvelopeError {
    fn from(e: AeadError) -> Self {
        match e {
            AeadError::Authentication => EnvelopeError::Authentication,
            AeadError::TooLong => EnvelopeError::PlaintextTooLong,
            AeadError::Random => EnvelopeError::Random,
            _ => EnvelopeError::Internal,
        }
    }
}

/// A 32-byte key expanded once for both algorithms, for callers that seal or
/// open many fields under one DEK (a DEK cache holds these, not raw bytes).
pub struct PreparedKey {
    gcm: GcmKey,
    siv: SivKey,
}

impl std::fmt::Debug for PreparedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("PreparedKey")
            .field("backend", &self.gcm.backend())
            .finish_non_exhaustive()
    }
}

impl PreparedKey {
    /// Expands `key` for GCM on the default backend and derives its SIV key.
    pub fn new(key: &[u8; KEY_LEN]) -> Result<Self, EnvelopeError> {
        Self::with_backend(aead::default_backend(), key)
    }

    /// As [`PreparedKey::new`], on a chosen GCM backend.
    pub fn with_backend(backend: Backend, key: &[u8; KEY_LEN]) -> Result<Self, EnvelopeError> {
        Ok(Self {
            gcm: GcmKey::new(backend, key)?,
            siv: SivKey::derive(key)?,
        })
    }
}

/// The one key an operation needs, borrowed from a [`PreparedKey`] or built for one call.
enum AlgKey<'k> {
    Gcm(&'k GcmKey),
    Siv(&'k SivKey),
}

/// Seals `plaintext` for `binding` and appends the envelope to `out`.
///
/// GCM draws a fresh random nonce; SIV is deterministic. On error `out` is
/// left as it was.
pub fn seal(
    alg: Algorithm,
    key: &[u8; KEY_LEN],
    key_ref: &KeyRef,
    binding: &Binding,
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), EnvelopeError> {
    match alg {
        Algorithm::Aes256Gcm => {
            let gcm = GcmKey::new(aead::default_backend(), key)?;
            seal_inner(AlgKey::Gcm(&gcm), None, key_ref, binding, plaintext, out)
        }
        Algorithm::Aes256Siv => {
            let siv = SivKey::derive(key)?;
            seal_inner(AlgKey::Siv(&siv), None, key_ref, binding, plaintext, out)
        }
    }
}

/// [`seal`] with a key expanded ahead of time.
pub fn seal_prepared(
    alg: Algorithm,
    key: &PreparedKey,
    key_ref: &KeyRef,
    binding: &Binding,
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), EnvelopeError> {
    seal_inner(alg_key(alg, key), None, key_ref, binding, plaintext, out)
}

/// [`seal_prepared`] with a caller-chosen GCM nonce, for golden tests and
/// benchmarks only: a repeated nonce under one key breaks GCM.
#[doc(hidden)]
pub fn seal_with_nonce(
    alg: Algorithm,
    key: &PreparedKey,
    nonce: &[u8; NONCE_LEN],
    key_ref: &KeyRef,
    binding: &Binding,
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), EnvelopeError> {
    seal_inner(
        alg_key(alg, key),
        Some(nonce),
        key_ref,
        binding,
        plaintext,
        out,
    )
}

fn alg_key(alg: Algorithm, key: &PreparedKey) -> AlgKey<'_> {
    match alg {
        Algorithm::Aes256Gcm => AlgKey::Gcm(&key.gcm),
        Algorithm::Aes256Siv => AlgKey::Siv(&key.siv),
    }
}

fn seal_inner(
    key: AlgKey<'_>,
    nonce: Option<&[u8; NONCE_LEN]>,
    key_ref: &KeyRef,
    binding: &Binding,
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), EnvelopeError> {
    let start = out.len();
    let result = (|| {
        let alg = match key {
            AlgKey::Gcm(_) => Algorithm::Aes256Gcm,
            AlgKey::Siv(_) => Algorithm::Aes256Siv,
        };
        write_header(alg, key_ref, out)?;
        with_aad_buffer(|aad| {
            build_associated_data(&out[start..], binding, aad)?;
            match key {
                AlgKey::Gcm(gcm) => {
                    let nonce = match nonce {
                        Some(n) => *n,
                        None => aead::random_nonce()?,
                    };
                    out.extend_from_slice(&nonce);
                    gcm.seal_append(&nonce, aad, plaintext, out)?;
                }
                AlgKey::Siv(siv) => siv.seal_append(aad, plaintext, out)?,
            }
            Ok::<(), EnvelopeError>(())
        })?;
        Ok(())
    })();
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn write_header(alg: Algorithm, key_ref: &KeyRef, out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(alg.id());
    write_key_ref(key_ref, out)
}

/// A key reference as envelopes carry it (what
/// [`Envelope::key_ref_bytes`] returns for an envelope sealed with it).
pub fn key_ref_bytes(key_ref: &KeyRef) -> Result<Vec<u8>, EnvelopeError> {
    let mut out = Vec::new();
    write_key_ref(key_ref, &mut out)?;
    Ok(out)
}

fn write_key_ref(key_ref: &KeyRef, out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
    match key_ref {
        KeyRef::Wrapped(w) => {
            let id_len = u8::try_from(w.kek_id.len())
                .map_err(|_| EnvelopeError::KeyRefTooLong("KEK id over 255 bytes"))?;
            let blob_len = u16::try_from(w.blob.len())
                .map_err(|_| EnvelopeError::KeyRefTooLong("wrapped key over 65535 bytes"))?;
            out.push(KEY_REF_WRAPPED);
            out.push(id_len);
            out.extend_from_slice(w.kek_id.as_bytes());
            out.extend_from_slice(&w.kek_version.to_be_bytes());
            out.extend_from_slice(&blob_len.to_be_bytes());
            out.extend_from_slice(&w.blob);
        }
        KeyRef::Subject { token, version } => {
            out.push(KEY_REF_SUBJECT);
            out.extend_from_slice(token);
            out.extend_from_slice(&version.to_be_bytes());
        }
        KeyRef::Stored(id) => {
            out.push(KEY_REF_STORED);
            out.extend_from_slice(id);
        }
    }
    Ok(())
}

thread_local! {
    /// Each thread's associated-data buffer, reused by every seal and open:
    /// a field's AAD is rebuilt per call, and a fresh stack array for it
    /// (zeroed, then moved out of the builder) cost about a twentieth of
    /// opening a short JSON field.
    static AAD: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's AAD buffer (`build_associated_data` fills it).
fn with_aad_buffer<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    AAD.with_borrow_mut(f)
}

/// Writes header ‖ u16 BE len ‖ topic ‖ u16 BE len ‖ field into `aad`
/// (cleared first). Length prefixes keep ("ab", "c") and ("a", "bc") apart.
fn build_associated_data(
    header: &[u8],
    binding: &Binding,
    aad: &mut Vec<u8>,
) -> Result<(), EnvelopeError> {
    let topic_len =
        u16::try_from(binding.topic.len()).map_err(|_| EnvelopeError::BindingTooLong)?;
    let field_len =
        u16::try_from(binding.field.len()).map_err(|_| EnvelopeError::BindingTooLong)?;
    aad.clear();
    aad.extend_from_slice(header);
    aad.extend_from_slice(&topic_len.to_be_bytes());
    aad.extend_from_slice(binding.topic.as_bytes());
    aad.extend_from_slice(&field_len.to_be_bytes());
    aad.extend_from_slice(binding.field.as_bytes());
    Ok(())
}

/// Whether `bytes` start like an envelope of a version this build reads (magic
/// and version only: cheap enough for every field on the fetch path).
pub fn is_envelope(bytes: &[u8]) -> bool {
    bytes.len() >= 3 && bytes[..2] == MAGIC && bytes[2] == VERSION
}

/// A parsed envelope: its header fields, borrowing the key reference, nonce
/// and ciphertext. The key reference is checked when parsed but only built
/// into a [`KeyRef`] on demand: the fetch path looks keys up by its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    algorithm: Algorithm,
    key_ref: &'a [u8],
    header: &'a [u8],
    nonce: Option<[u8; NONCE_LEN]>,
    sealed: &'a [u8],
}

/// Reads an envelope's header. Bounded: every length is checked against the
/// input before use, so arbitrary bytes give an error, never a panic.
pub fn parse(bytes: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    if bytes.iter().zip(MAGIC.iter()).any(|(a, b)| a != b) || bytes.is_empty() {
        return Err(EnvelopeError::BadMagic);
    }
    let mut r = Reader { bytes, pos: 0 };
    r.take(MAGIC.len())?;
    let version = r.u8()?;
    if version != VERSION {
        return Err(EnvelopeError::UnknownVersion(version));
    }
    let alg_id = r.u8()?;
    let algorithm = Algorithm::from_id(alg_id).ok_or(EnvelopeError::UnknownAlgorithm(alg_id))?;
    let ref_start = r.pos;
    match r.u8()? {
        KEY_REF_WRAPPED => {
            let id_len = usize::from(r.u8()?);
            std::str::from_utf8(r.take(id_len)?)
                .map_err(|_| EnvelopeError::BadKeyRef("KEK id is not UTF-8"))?;
            r.u32()?;
            let blob_len = usize::from(r.u16()?);
            r.take(blob_len)?;
        }
        KEY_REF_SUBJECT => {
            r.take(SUBJECT_TOKEN_LEN)?;
            r.u32()?;
        }
        KEY_REF_STORED => {
            r.take(DEK_ID_LEN)?;
        }
        _ => return Err(EnvelopeError::BadKeyRef("unknown key reference kind")),
    }
    let key_ref = &bytes[ref_start..r.pos];
    let header = &bytes[..r.pos];
    let (nonce, min_sealed) = match algorithm {
        Algorithm::Aes256Gcm => {
            let mut nonce = [0u8; NONCE_LEN];
            nonce.copy_from_slice(r.take(NONCE_LEN)?);
            (Some(nonce), GCM_TAG_LEN)
        }
        Algorithm::Aes256Siv => (None, SIV_IV_LEN),
    };
    let sealed = r.rest();
    if sealed.len() < min_sealed {
        return Err(EnvelopeError::Truncated);
    }
    Ok(Envelope {
        algorithm,
        key_ref,
        header,
        nonce,
        sealed,
    })
}

/// Builds the [`KeyRef`] that `parse` checked (kind byte first).
fn read_key_ref(bytes: &[u8]) -> Result<KeyRef, EnvelopeError> {
    let mut r = Reader { bytes, pos: 0 };
    Ok(match r.u8()? {
        KEY_REF_WRAPPED => {
            let id_len = usize::from(r.u8()?);
            let kek_id = std::str::from_utf8(r.take(id_len)?)
                .map_err(|_| EnvelopeError::BadKeyRef("KEK id is not UTF-8"))?
                .to_owned();
            let kek_version = r.u32()?;
            let blob_len = usize::from(r.u16()?);
            let blob = r.take(blob_len)?.to_vec();
            KeyRef::Wrapped(WrappedKey {
                kek_id,
                kek_version,
                blob,
            })
        }
        KEY_REF_SUBJECT => {
            let mut token = [0u8; SUBJECT_TOKEN_LEN];
            token.copy_from_slice(r.take(SUBJECT_TOKEN_LEN)?);
            let version = r.u32()?;
            KeyRef::Subject { token, version }
        }
        KEY_REF_STORED => {
            let mut id = [0u8; DEK_ID_LEN];
            id.copy_from_slice(r.take(DEK_ID_LEN)?);
            KeyRef::Stored(id)
        }
        _ => return Err(EnvelopeError::BadKeyRef("unknown key reference kind")),
    })
}

impl Envelope<'_> {
    /// The key this envelope was sealed with (built from its bytes).
    pub fn key_ref(&self) -> KeyRef {
        // `parse` checked these bytes, so this cannot fail; should it ever,
        // an empty wrapped reference names no key and opens nothing.
        read_key_ref(self.key_ref).unwrap_or_else(|_| {
            KeyRef::Wrapped(WrappedKey {
                kek_id: String::new(),
                kek_version: 0,
                blob: Vec::new(),
            })
        })
    }

    /// The key reference as it sits in the envelope (kind byte first): equal
    /// bytes name the same key, so lookups need not build a [`KeyRef`].
    pub fn key_ref_bytes(&self) -> &[u8] {
        self.key_ref
    }

    /// Length of the header (everything up to the end of the key reference).
    pub fn header_len(&self) -> usize {
        self.header.len()
    }

    /// The AEAD algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Length of the plaintext inside, without decrypting.
    pub fn plaintext_len(&self) -> usize {
        self.sealed.len().saturating_sub(match self.algorithm {
            Algorithm::Aes256Gcm => GCM_TAG_LEN,
            Algorithm::Aes256Siv => SIV_IV_LEN,
        })
    }

    /// Checks and decrypts the envelope for `binding`, appending the plaintext
    /// to `out`. On failure `out` is left as it was.
    pub fn open(
        &self,
        key: &[u8; KEY_LEN],
        binding: &Binding,
        out: &mut Vec<u8>,
    ) -> Result<(), EnvelopeError> {
        match self.algorithm {
            Algorithm::Aes256Gcm => {
                let gcm = GcmKey::new(aead::default_backend(), key)?;
                self.open_inner(AlgKey::Gcm(&gcm), binding, out)
            }
            Algorithm::Aes256Siv => {
                let siv = SivKey::derive(key)?;
                self.open_inner(AlgKey::Siv(&siv), binding, out)
            }
        }
    }

    /// [`Envelope::open`] with a key expanded ahead of time.
    pub fn open_prepared(
        &self,
        key: &PreparedKey,
        binding: &Binding,
        out: &mut Vec<u8>,
    ) -> Result<(), EnvelopeError> {
        self.open_inner(alg_key(self.algorithm, key), binding, out)
    }

    fn open_inner(
        &self,
        key: AlgKey<'_>,
        binding: &Binding,
        out: &mut Vec<u8>,
    ) -> Result<(), EnvelopeError> {
        with_aad_buffer(|aad| {
            build_associated_data(self.header, binding, aad)?;
            match (key, &self.nonce) {
                (AlgKey::Gcm(gcm), Some(nonce)) => gcm.open_append(nonce, aad, self.sealed, out)?,
                (AlgKey::Siv(siv), None) => siv.open_append(aad, self.sealed, out)?,
                // `alg_key` follows `self.algorithm`, and the nonce is present
                // exactly for GCM; a mismatch cannot authenticate anyway.
                _ => return Err(EnvelopeError::Authentication),
            }
            Ok(())
        })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EnvelopeError> {
        let end = self.pos.checked_add(n).ok_or(EnvelopeError::Truncated)?;
        let s = self
            .bytes
            .get(self.pos..end)
            .ok_or(EnvelopeError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, EnvelopeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, EnvelopeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, EnvelopeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn rest(&mut self) -> &'a [u8] {
        let s = self.bytes.get(self.pos..).unwrap_or_default();
        self.pos = self.bytes.len();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn key() -> [u8; KEY_LEN] {
        std::array::from_fn(|i| i as u8)
    }

    fn nonce() -> [u8; NONCE_LEN] {
        std::array::from_fn(|i| 0xa0 + i as u8)
    }

    fn wrapped() -> KeyRef {
        KeyRef::Wrapped(WrappedKey {
            kek_id: "orders-kek".into(),
            kek_version: 3,
            blob: (0xb0..0xb8).collect(),
        })
    }

    fn subject() -> KeyRef {
        KeyRef::Subject {
            token: std::array::from_fn(|i| 0x20 + i as u8),
            version: 7,
        }
    }

    const ORDERS: Binding<'static> = Binding {
        topic: "orders",
        field: "json:$.customer.email",
    };
    const PEOPLE: Binding<'static> = Binding {
        topic: "people",
        field: "value",
    };

    // Header: magic c57d, version 01, alg 01 (GCM), kind 01 (wrapped),
    // id len 0a "orders-kek", kek_version 00000003, blob len 0008, blob b0..b7.
    const GOLDEN_GCM_HEADER: &str = "c57d0101010a6f72646572732d6b656b000000030008b0b1b2b3b4b5b6b7";
    // Then nonce a0..ab, then AES-256-GCM(key 00..1f, nonce, "alice@example.com",
    // AAD = header ‖ 0006 "orders" ‖ 0015 "json:$.customer.email"), computed
    // independently with Python `cryptography` 48 (AESGCM).
    const GOLDEN_GCM: &str = concat!(
        "c57d0101010a6f72646572732d6b656b000000030008b0b1b2b3b4b5b6b7",
        "a0a1a2a3a4a5a6a7a8a9aaab",
        "8774154e208b67c70308f7bf6254a3b11d2aed5ebeaa87f1731c994a3d097e92fd"
    );

    // Header: magic c57d, version 01, alg 02 (SIV), kind 02 (subject),
    // token 20..3f, version 00000007.
    // Then AES-SIV(HKDF-SHA-256(key 00..1f, info "custos/v1/aes-256-siv", 64),
    // AD = [header ‖ 0006 "people" ‖ 0005 "value"], "alice"): IV ‖ C, from
    // Python `cryptography` 48 (HKDF, AESSIV).
    const GOLDEN_SIV: &str = concat!(
        "c57d010202",
        "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f",
        "00000007",
        "c77817d51a73501256b1433b0c76dd422829ca2357"
    );

    fn stored() -> KeyRef {
        KeyRef::Stored(std::array::from_fn(|i| 0x40 + i as u8))
    }

    // Header: magic c57d, version 01, alg 01 (GCM), kind 03 (stored DEK),
    // id 40..4f. Then nonce a0..ab, then AES-256-GCM(key 00..1f, nonce,
    // "alice@example.com", AAD = header ‖ 0006 "orders" ‖ 0015
    // "json:$.customer.email"), from Python `cryptography` 48 (AESGCM).
    const GOLDEN_STORED: &str = concat!(
        "c57d010103404142434445464748494a4b4c4d4e4f",
        "a0a1a2a3a4a5a6a7a8a9aaab",
        "8774154e208b67c70308f7bf6254a3b11db314de5007870aa3f22224e5408b9251"
    );

    #[test]
    fn golden_stored_dek_bytes_seal_and_open() {
        let pk = PreparedKey::new(&key()).expect("key");
        let mut out = Vec::new();
        seal_with_nonce(
            Algorithm::Aes256Gcm,
            &pk,
            &nonce(),
            &stored(),
            &ORDERS,
            b"alice@example.com",
            &mut out,
        )
        .expect("seal");
        assert_eq!(hex(&out), GOLDEN_STORED);
        let env = parse(&out).expect("parse");
        assert_eq!(env.key_ref(), stored());
        assert_eq!(env.key_ref_bytes(), &unhex(GOLDEN_STORED)[4..21]);
        let mut pt = Vec::new();
        env.open(&key(), &ORDERS, &mut pt).expect("open");
        assert_eq!(pt, b"alice@example.com");
        // 61 bytes shorter than with the keyring's wrapped DEK (60 bytes)
        // and a 10-byte KEK name inline (1 + 1 + 10 + 4 + 2 + 60 = 78).
        assert_eq!(out.len(), 5 + 16 + 12 + 17 + 16);
        // A truncated id is not read as a shorter one.
        assert!(parse(&out[..20]).is_err());
    }

    fn sealed_gcm() -> Vec<u8> {
        let mut out = Vec::new();
        seal(
            Algorithm::Aes256Gcm,
            &key(),
            &wrapped(),
            &ORDERS,
            b"alice@example.com",
            &mut out,
        )
        .expect("seal");
        out
    }

    #[test]
    fn golden_gcm_bytes_on_both_backends() {
        for backend in Backend::ALL {
            let mut out = Vec::new();
            let pk = PreparedKey::with_backend(backend, &key()).expect("key");
            seal_with_nonce(
                Algorithm::Aes256Gcm,
                &pk,
                &nonce(),
                &wrapped(),
                &ORDERS,
                b"alice@example.com",
                &mut out,
            )
            .expect("seal");
            assert!(hex(&out).starts_with(GOLDEN_GCM_HEADER));
            assert_eq!(hex(&out), GOLDEN_GCM, "{}", backend.name());
        }
    }

    #[test]
    fn golden_gcm_bytes_open() {
        let bytes = unhex(GOLDEN_GCM);
        assert!(is_envelope(&bytes));
        let env = parse(&bytes).expect("parse");
        assert_eq!(env.algorithm(), Algorithm::Aes256Gcm);
        assert_eq!(env.key_ref(), wrapped());
        assert_eq!(env.plaintext_len(), 17);
        let mut out = b"prefix:".to_vec();
        env.open(&key(), &ORDERS, &mut out).expect("open");
        assert_eq!(out, b"prefix:alice@example.com");
        for backend in Backend::ALL {
            let pk = PreparedKey::with_backend(backend, &key()).expect("key");
            let mut out = Vec::new();
            env.open_prepared(&pk, &ORDERS, &mut out).expect("open");
            assert_eq!(out, b"alice@example.com");
        }
    }

    #[test]
    fn golden_siv_bytes_seal_and_open() {
        let mut out = Vec::new();
        seal(
            Algorithm::Aes256Siv,
            &key(),
            &subject(),
            &PEOPLE,
            b"alice",
            &mut out,
        )
        .expect("seal");
        assert_eq!(hex(&out), GOLDEN_SIV);
        let env = parse(&out).expect("parse");
        assert_eq!(env.algorithm(), Algorithm::Aes256Siv);
        assert_eq!(env.key_ref(), subject());
        let mut pt = Vec::new();
        env.open(&key(), &PEOPLE, &mut pt).expect("open");
        assert_eq!(pt, b"alice");
        let pk = PreparedKey::new(&key()).expect("key");
        let mut again = Vec::new();
        seal_prepared(
            Algorithm::Aes256Siv,
            &pk,
            &subject(),
            &PEOPLE,
            b"alice",
            &mut again,
        )
        .expect("seal");
        assert_eq!(again, out);
    }

    #[test]
    fn siv_is_deterministic_and_gcm_is_not() {
        let seal_one = |alg| {
            let mut out = Vec::new();
            seal(alg, &key(), &wrapped(), &ORDERS, b"same", &mut out).expect("seal");
            out
        };
        assert_eq!(
            seal_one(Algorithm::Aes256Siv),
            seal_one(Algorithm::Aes256Siv)
        );
        assert_ne!(
            seal_one(Algorithm::Aes256Gcm),
            seal_one(Algorithm::Aes256Gcm)
        );
        // Deterministic only within one place: another field differs.
        let mut other = Vec::new();
        let binding = Binding {
            topic: "orders",
            field: "json:$.customer.phone",
        };
        seal(
            Algorithm::Aes256Siv,
            &key(),
            &wrapped(),
            &binding,
            b"same",
            &mut other,
        )
        .expect("seal");
        assert_ne!(other, seal_one(Algorithm::Aes256Siv));
    }

    #[test]
    fn another_topic_or_field_or_key_does_not_open() {
        for alg in [Algorithm::Aes256Gcm, Algorithm::Aes256Siv] {
            let mut bytes = Vec::new();
            seal(alg, &key(), &wrapped(), &ORDERS, b"x", &mut bytes).expect("seal");
            let env = parse(&bytes).expect("parse");
            let mut out = Vec::new();
            for binding in [
                Binding {
                    topic: "orders-copy",
                    field: ORDERS.field,
                },
                Binding {
                    topic: ORDERS.topic,
                    field: "json:$.customer.name",
                },
                // Length prefixes: moving a byte between topic and field changes the AAD.
                Binding {
                    topic: "ordersj",
                    field: "son:$.customer.email",
                },
            ] {
                assert_eq!(
                    env.open(&key(), &binding, &mut out),
                    Err(EnvelopeError::Authentication)
                );
            }
            assert_eq!(
                env.open(&[9; KEY_LEN], &ORDERS, &mut out),
                Err(EnvelopeError::Authentication)
            );
            assert!(out.is_empty());
            env.open(&key(), &ORDERS, &mut out).expect("open");
            assert_eq!(out, b"x");
        }
    }

    #[test]
    fn changed_key_ref_does_not_open() {
        let bytes = sealed_gcm();
        let mut out = Vec::new();
        // Offsets in the golden header: kek_version is bytes 16..20, blob 22..30.
        let mut bumped = bytes.clone();
        bumped[19] = 4;
        let env = parse(&bumped).expect("still parses");
        assert!(matches!(env.key_ref(), KeyRef::Wrapped(w) if w.kek_version == 4));
        assert_eq!(
            env.open(&key(), &ORDERS, &mut out),
            Err(EnvelopeError::Authentication)
        );
        // Re-encode the same body under another key reference.
        let body = &bytes[GOLDEN_GCM_HEADER.len() / 2..];
        let mut moved = Vec::new();
        write_header(Algorithm::Aes256Gcm, &subject(), &mut moved).expect("header");
        moved.extend_from_slice(body);
        let env = parse(&moved).expect("parse");
        assert_eq!(
            env.open(&key(), &ORDERS, &mut out),
            Err(EnvelopeError::Authentication)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn any_flipped_byte_fails() {
        for alg in [Algorithm::Aes256Gcm, Algorithm::Aes256Siv] {
            let mut bytes = Vec::new();
            seal(alg, &key(), &wrapped(), &ORDERS, b"card 4111", &mut bytes).expect("seal");
            for i in 0..bytes.len() {
                for bit in [0x01u8, 0x80] {
                    let mut bad = bytes.clone();
                    bad[i] ^= bit;
                    let mut out = Vec::new();
                    let opened = parse(&bad).and_then(|e| e.open(&key(), &ORDERS, &mut out));
                    assert!(opened.is_err(), "{alg:?} byte {i} bit {bit:#x} opened");
                    assert!(out.is_empty());
                }
            }
        }
    }

    #[test]
    fn parse_errors_are_precise() {
        let good = sealed_gcm();
        assert_eq!(parse(b""), Err(EnvelopeError::BadMagic));
        assert_eq!(parse(b"{\"a\":1}"), Err(EnvelopeError::BadMagic));
        assert_eq!(parse(&[0xC5]), Err(EnvelopeError::Truncated));
        assert_eq!(parse(&[0xC5, 0x7D]), Err(EnvelopeError::Truncated));
        assert_eq!(
            parse(&[0xC5, 0x7D, 2, 1]),
            Err(EnvelopeError::UnknownVersion(2))
        );
        assert_eq!(
            parse(&[0xC5, 0x7D, 1, 9, 1]),
            Err(EnvelopeError::UnknownAlgorithm(9))
        );
        assert!(matches!(
            parse(&[0xC5, 0x7D, 1, 1, 4]),
            Err(EnvelopeError::BadKeyRef(_))
        ));
        let mut bad_utf8 = good.clone();
        bad_utf8[6] = 0xff;
        assert!(matches!(parse(&bad_utf8), Err(EnvelopeError::BadKeyRef(_))));
        // Tag cut short.
        assert_eq!(
            parse(&good[..good.len() - 17 - 1]),
            Err(EnvelopeError::Truncated)
        );
    }

    #[test]
    fn every_truncation_is_refused() {
        for alg in [Algorithm::Aes256Gcm, Algorithm::Aes256Siv] {
            for key_ref in [wrapped(), subject()] {
                let mut bytes = Vec::new();
                seal(alg, &key(), &key_ref, &ORDERS, b"hello", &mut bytes).expect("seal");
                for n in 0..bytes.len() {
                    let mut out = Vec::new();
                    let opened = parse(&bytes[..n]).and_then(|e| e.open(&key(), &ORDERS, &mut out));
                    assert!(opened.is_err(), "{alg:?} prefix {n} opened");
                }
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // xorshift64: reproducible without a dependency.
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut out = Vec::new();
        for round in 0..20_000 {
            let len = (next() % 160) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Most inputs get a valid prefix so the deeper fields are exercised.
            let prefix: &[u8] = match round % 4 {
                0 => &[],
                1 => &[0xC5, 0x7D, 1],
                2 => &[0xC5, 0x7D, 1, 1, 1],
                _ => &[0xC5, 0x7D, 1, 2, 2],
            };
            bytes.splice(0..0, prefix.iter().copied());
            if let Ok(env) = parse(&bytes) {
                let _ = env.key_ref();
                let _ = env.plaintext_len();
                assert!(env.open(&key(), &ORDERS, &mut out).is_err());
            }
        }
        assert!(out.is_empty());
    }

    #[test]
    fn is_envelope_checks_magic_and_version() {
        assert!(is_envelope(&sealed_gcm()));
        assert!(is_envelope(&[0xC5, 0x7D, 1]));
        assert!(!is_envelope(&[0xC5, 0x7D]));
        assert!(!is_envelope(&[0xC5, 0x7D, 2]));
        assert!(!is_envelope(b"{\"email\":\"a@b\"}"));
        assert!(!is_envelope("Ŝ".as_bytes()));
        assert!(!is_envelope(b""));
    }

    #[test]
    fn oversized_inputs_are_refused_and_leave_out_alone() {
        let mut out = vec![1, 2];
        let long_id = KeyRef::Wrapped(WrappedKey {
            kek_id: "k".repeat(256),
            kek_version: 1,
            blob: vec![],
        });
        let long_blob = KeyRef::Wrapped(WrappedKey {
            kek_id: "k".into(),
            kek_version: 1,
            blob: vec![0; 65_536],
        });
        let field = "f".repeat(65_536);
        let long_field = Binding {
            topic: "t",
            field: &field,
        };
        for alg in [Algorithm::Aes256Gcm, Algorithm::Aes256Siv] {
            assert!(matches!(
                seal(alg, &key(), &long_id, &ORDERS, b"x", &mut out),
                Err(EnvelopeError::KeyRefTooLong(_))
            ));
            assert!(matches!(
                seal(alg, &key(), &long_blob, &ORDERS, b"x", &mut out),
                Err(EnvelopeError::KeyRefTooLong(_))
            ));
            assert_eq!(
                seal(alg, &key(), &wrapped(), &long_field, b"x", &mut out),
                Err(EnvelopeError::BindingTooLong)
            );
        }
        assert_eq!(out, [1, 2]);
        // The limits themselves are accepted and round-trip.
        let edge = KeyRef::Wrapped(WrappedKey {
            kek_id: "k".repeat(255),
            kek_version: u32::MAX,
            blob: vec![7; 65_535],
        });
        seal(Algorithm::Aes256Gcm, &key(), &edge, &ORDERS, b"", &mut out).expect("seal");
        let env = parse(&out[2..]).expect("parse");
        assert_eq!(env.key_ref(), edge);
        let mut pt = vec![];
        env.open(&key(), &ORDERS, &mut pt).expect("open");
        assert!(pt.is_empty());
    }

    #[test]
    fn errors_and_debug_reveal_nothing() {
        assert_eq!(
            EnvelopeError::Authentication.to_string(),
            "ciphertext does not authenticate"
        );
        let pk = PreparedKey::new(&[0x41; KEY_LEN]).expect("key");
        let text = format!("{pk:?}");
        assert!(!text.contains("41"), "{text}");
    }
}
