//! The AEAD primitives under the envelope: AES-256-GCM and AES-256-SIV.
//!
//! AES-256-GCM has two interchangeable backends, aws-lc-rs (already linked for
//! rustls) and RustCrypto's `aes-gcm`, so the benchmark in `benches/aead.rs`
//! can compare them on the same calls and [`default_backend`] can name the
//! faster. They are the same algorithm: for one key, nonce and associated
//! data they produce the same bytes, so data sealed by either opens with the
//! other and the default can change without touching stored data.
//!
//! AES-256-SIV (RFC 5297) is the deterministic mode for fields that must stay
//! joinable: equal plaintexts under one key and associated data give equal
//! ciphertexts. It needs a 64-byte key (a CMAC key and a CTR key), while DEKs
//! and subject keys are 32 bytes; [`SivKey::derive`] expands the 32-byte key
//! with HKDF-SHA-256 under a fixed label, so one stored key serves both modes
//! and the SIV key is cryptographically independent of the GCM use of the same
//! bytes (no key is ever used by two algorithms directly).

use aes_gcm::aead::AeadInPlace;
use aes_gcm::KeyInit;
use zeroize::{Zeroize, Zeroizing};

/// Key length of both algorithms' input keys (AES-256), in bytes.
pub const KEY_LEN: usize = 32;
/// AES-GCM nonce length (96 bits), in bytes.
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag length, in bytes.
pub const GCM_TAG_LEN: usize = 16;
/// AES-SIV synthetic IV length (it is also the tag), in bytes.
pub const SIV_IV_LEN: usize = 16;

/// HKDF `info` for the AES-256-SIV key. Changing it changes every SIV
/// ciphertext, so it is part of the format (FORMAT.md).
const SIV_HKDF_INFO: &[u8] = b"custos/v1/aes-256-siv";

/// Largest plaintext either mode accepts. Far below GCM's 2^36-32 bytes per
/// message; a Kafka record field is never near it, and a bound keeps lengths
/// well inside `u32` arithmetic everywhere.
pub const MAX_PLAINTEXT_LEN: usize = 1 << 31;

/// Why an AEAD operation failed.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AeadError {
    /// Wrong key, wrong associated data or altered bytes; deliberately no more.
    #[error("ciphertext does not authenticate")]
    Authentication,
    /// The plaintext is longer than [`MAX_PLAINTEXT_LEN`].
    #[error("plaintext too long to seal")]
    TooLong,
    /// The operating system's random source failed (no nonce, so no seal).
    #[error("random source unavailable")]
    Random,
    /// The cryptographic library refused an operation that cannot fail on valid input.
    #[error("cryptographic library failure")]
    Internal,
}

/// An AES-256-GCM implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// aws-lc-rs (AWS-LC, assembly AES-NI/PCLMUL/AVX code paths).
    AwsLc,
    /// RustCrypto `aes-gcm` (runtime-detected AES-NI and CLMUL).
    RustCrypto,
}

impl Backend {
    /// Both backends, for benchmarks and cross-checks.
    pub const ALL: [Backend; 2] = [Backend::AwsLc, Backend::RustCrypto];

    /// Short name for logs and benchmark labels.
    pub fn name(self) -> &'static str {
        match self {
            Backend::AwsLc => "aws-lc-rs",
            Backend::RustCrypto => "aes-gcm",
        }
    }
}

/// The backend used when the caller does not choose: the faster in
/// `benches/aead.rs`. aws-lc-rs led at every size measured (AMD EPYC, VAES):
/// on a par at 32 B, about 4x at 1 KiB and 12x at 16 KiB when sealing.
pub fn default_backend() -> Backend {
    Backend::AwsLc
}

/// A fresh random 96-bit GCM nonce.
///
/// Random nonces are safe for up to 2^32 messages per key; DEK rotation keeps
/// each key far below that. They come from a per-thread ChaCha20 generator
/// seeded from the operating system and reseeded every [`NONCES_PER_SEED`]
/// nonces: aws-lc's DRBG mixes CPU randomness (RDRAND) into every call, which
/// cost about 0.75 µs per nonce on a virtual machine, more than sealing a
/// small field. A nonce is public, so only its unpredictability and
/// uniqueness matter, and a CSPRNG keyed from the OS gives both.
pub fn random_nonce() -> Result<[u8; NONCE_LEN], AeadError> {
    let mut nonce = [0u8; NONCE_LEN];
    NONCE_SOURCE.with(|cell| {
        let mut source = cell.borrow_mut();
        if source.left == 0 {
            let mut seed = Zeroizing::new([0u8; 32]);
            getrandom::fill(seed.as_mut_slice()).map_err(|_| AeadError::Random)?;
            source.rng =
                Some(<rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::from_seed(*seed));
            source.left = NONCES_PER_SEED;
        }
        let rng = source.rng.as_mut().ok_or(AeadError::Random)?;
        rand_core::RngCore::fill_bytes(rng, &mut nonce);
        source.left -= 1;
        Ok(())
    })?;
    Ok(nonce)
}

/// How many nonces one seed of the per-thread generator yields before the
/// operating system is asked for a fresh one.
pub const NONCES_PER_SEED: u32 = 1 << 20;

/// A thread's nonce generator and how many nonces it may still give.
struct NonceSource {
    rng: Option<rand_chacha::ChaCha20Rng>,
    left: u32,
}

thread_local! {
    static NONCE_SOURCE: std::cell::RefCell<NonceSource> =
        const { std::cell::RefCell::new(NonceSource { rng: None, left: 0 }) };
}

enum GcmInner {
    AwsLc(aws_lc_rs::aead::LessSafeKey),
    // Boxed: the expanded key schedule and GHASH tables are large.
    RustCrypto(Box<aes_gcm::Aes256Gcm>),
}

/// An AES-256-GCM key with its key schedule expanded, ready for many messages.
pub struct GcmKey {
    inner: GcmInner,
}

impl std::fmt::Debug for GcmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("GcmKey")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

impl GcmKey {
    /// Expands `key` for `backend`.
    pub fn new(backend: Backend, key: &[u8; KEY_LEN]) -> Result<Self, AeadError> {
        let inner = match backend {
            Backend::AwsLc => {
                let unbound = aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, key)
                    .map_err(|_| AeadError::Internal)?;
                GcmInner::AwsLc(aws_lc_rs::aead::LessSafeKey::new(unbound))
            }
            Backend::RustCrypto => {
                GcmInner::RustCrypto(Box::new(aes_gcm::Aes256Gcm::new(key.into())))
            }
        };
        Ok(Self { inner })
    }

    /// The backend this key runs on.
    pub fn backend(&self) -> Backend {
        match self.inner {
            GcmInner::AwsLc(_) => Backend::AwsLc,
            GcmInner::RustCrypto(_) => Backend::RustCrypto,
        }
    }

    /// Appends `ciphertext ‖ tag` (plaintext length + 16 bytes) to `out`.
    ///
    /// The nonce must never repeat under one key; use [`random_nonce`].
    pub fn seal_append(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), AeadError> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(AeadError::TooLong);
        }
        let start = out.len();
        out.reserve(plaintext.len() + GCM_TAG_LEN);
        out.extend_from_slice(plaintext);
        let sealed = match &self.inner {
            GcmInner::AwsLc(key) => key
                .seal_in_place_separate_tag(
                    aws_lc_rs::aead::Nonce::assume_unique_for_key(*nonce),
                    aws_lc_rs::aead::Aad::from(aad),
                    &mut out[start..],
                )
                .map(|tag| out.extend_from_slice(tag.as_ref())),
            GcmInner::RustCrypto(key) => key
                .encrypt_in_place_detached(nonce.into(), aad, &mut out[start..])
                .map(|tag| out.extend_from_slice(&tag))
                .map_err(|_| aws_lc_rs::error::Unspecified),
        };
        if sealed.is_err() {
            // Do not leave plaintext behind in the caller's buffer.
            out[start..].zeroize();
            out.truncate(start);
            return Err(AeadError::Internal);
        }
        Ok(())
    }

    /// Checks and decrypts `ciphertext ‖ tag`, appending the plaintext to `out`.
    ///
    /// On failure `out` is left as it was: nothing unauthenticated escapes.
    pub fn open_append(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), AeadError> {
        let Some(ct_len) = ciphertext_and_tag.len().checked_sub(GCM_TAG_LEN) else {
            return Err(AeadError::Authentication);
        };
        let (ciphertext, tag) = ciphertext_and_tag.split_at(ct_len);
        let start = out.len();
        out.extend_from_slice(ciphertext);
        let opened = match &self.inner {
            GcmInner::AwsLc(key) => key
                .open_in_place_separate_tag(
                    aws_lc_rs::aead::Nonce::assume_unique_for_key(*nonce),
                    aws_lc_rs::aead::Aad::from(aad),
                    tag,
                    &mut out[start..],
                )
                .map(|_| ())
                .map_err(|_| ()),
            GcmInner::RustCrypto(key) => key
                .decrypt_in_place_detached(nonce.into(), aad, &mut out[start..], tag.into())
                .map_err(|_| ()),
        };
        if opened.is_err() {
            // The buffer may hold unauthenticated plaintext: wipe it.
            out[start..].zeroize();
            out.truncate(start);
            return Err(AeadError::Authentication);
        }
        Ok(())
    }
}

/// An AES-256-SIV key (64 bytes) derived from a 32-byte DEK or subject key.
pub struct SivKey {
    key: Zeroizing<[u8; 64]>,
}

impl std::fmt::Debug for SivKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("SivKey { .. }")
    }
}

impl SivKey {
    /// HKDF-SHA-256 (no salt, info `custos/v1/aes-256-siv`) of `key` to 64 bytes.
    ///
    /// HKDF rather than, say, the key twice: the CMAC and CTR halves must be
    /// independent, and the SIV key must not be the bytes GCM uses.
    pub fn derive(key: &[u8; KEY_LEN]) -> Result<Self, AeadError> {
        let mut okm = Zeroizing::new([0u8; 64]);
        hkdf::Hkdf::<sha2::Sha256>::new(None, key)
            .expand(SIV_HKDF_INFO, okm.as_mut())
            .map_err(|_| AeadError::Internal)?;
        Ok(Self { key: okm })
    }

    // The RustCrypto `Siv` needs `&mut self` and is not `Clone`, so each call
    // builds its own from the stored key: no lock between threads.
    fn cipher(&self) -> aes_siv::siv::Aes256Siv {
        aes_siv::siv::Aes256Siv::new(self.key.as_ref().into())
    }

    /// Appends `synthetic IV ‖ ciphertext` (plaintext length + 16 bytes) to `out`.
    ///
    /// `aad` is the single associated-data component of RFC 5297's S2V.
    pub fn seal_append(
        &self,
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), AeadError> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(AeadError::TooLong);
        }
        let start = out.len();
        out.reserve(SIV_IV_LEN + plaintext.len());
        out.extend_from_slice(&[0u8; SIV_IV_LEN]);
        out.extend_from_slice(plaintext);
        match self
            .cipher()
            .encrypt_in_place_detached([aad], &mut out[start + SIV_IV_LEN..])
        {
            Ok(iv) => {
                out[start..start + SIV_IV_LEN].copy_from_slice(&iv);
                Ok(())
            }
            Err(_) => {
                out[start..].zeroize();
                out.truncate(start);
                Err(AeadError::Internal)
            }
        }
    }

    /// Checks and decrypts `synthetic IV ‖ ciphertext`, appending the plaintext to `out`.
    ///
    /// On failure `out` is left as it was.
    pub fn open_append(
        &self,
        aad: &[u8],
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), AeadError> {
        if sealed.len() < SIV_IV_LEN {
            return Err(AeadError::Authentication);
        }
        let (iv, ciphertext) = sealed.split_at(SIV_IV_LEN);
        let start = out.len();
        out.extend_from_slice(ciphertext);
        if self
            .cipher()
            .decrypt_in_place_detached([aad], &mut out[start..], iv.into())
            .is_err()
        {
            out[start..].zeroize();
            out.truncate(start);
            return Err(AeadError::Authentication);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn key() -> [u8; KEY_LEN] {
        std::array::from_fn(|i| i as u8)
    }

    #[test]
    fn gcm_backends_agree_and_open_each_other() {
        let nonce: [u8; NONCE_LEN] = std::array::from_fn(|i| 0xa0 + i as u8);
        for len in [0usize, 1, 15, 16, 17, 255, 1024, 4099] {
            let pt: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut sealed = Vec::new();
            for backend in Backend::ALL {
                let k = GcmKey::new(backend, &key()).expect("key");
                let mut out = vec![0xee]; // appends after existing bytes
                k.seal_append(&nonce, b"aad", &pt, &mut out).expect("seal");
                assert_eq!(out[0], 0xee);
                assert_eq!(out.len(), 1 + len + GCM_TAG_LEN);
                sealed.push(out[1..].to_vec());
            }
            assert_eq!(sealed[0], sealed[1], "backends differ at {len} bytes");
            for backend in Backend::ALL {
                let k = GcmKey::new(backend, &key()).expect("key");
                let mut out = Vec::new();
                k.open_append(&nonce, b"aad", &sealed[0], &mut out)
                    .expect("open");
                assert_eq!(out, pt);
            }
        }
    }

    #[test]
    fn gcm_matches_an_independent_implementation() {
        // Python `cryptography` 48: AESGCM(bytes(range(32))).encrypt(
        //   bytes(range(0xa0, 0xac)), b"custos", b"aad")
        let nonce: [u8; NONCE_LEN] = std::array::from_fn(|i| 0xa0 + i as u8);
        for backend in Backend::ALL {
            let mut out = Vec::new();
            GcmKey::new(backend, &key())
                .expect("key")
                .seal_append(&nonce, b"aad", b"custos", &mut out)
                .expect("seal");
            assert_eq!(hex(&out), GCM_VECTOR, "{}", backend.name());
        }
    }
    const GCM_VECTOR: &str = "856d0f592ab8699531ad77e0ff9d817881b3b96d900b";

    #[test]
    fn gcm_rejects_tampering_and_leaves_out_untouched() {
        let nonce = [7u8; NONCE_LEN];
        for backend in Backend::ALL {
            let k = GcmKey::new(backend, &key()).expect("key");
            let mut sealed = Vec::new();
            k.seal_append(&nonce, b"a", b"secret", &mut sealed)
                .expect("seal");
            let mut out = vec![1, 2, 3];
            for i in 0..sealed.len() {
                let mut bad = sealed.clone();
                bad[i] ^= 0x01;
                assert_eq!(
                    k.open_append(&nonce, b"a", &bad, &mut out),
                    Err(AeadError::Authentication)
                );
            }
            assert_eq!(
                k.open_append(&nonce, b"b", &sealed, &mut out),
                Err(AeadError::Authentication)
            );
            assert_eq!(
                k.open_append(&[8; NONCE_LEN], b"a", &sealed, &mut out),
                Err(AeadError::Authentication)
            );
            assert_eq!(
                k.open_append(&nonce, b"a", &sealed[..15], &mut out),
                Err(AeadError::Authentication)
            );
            assert_eq!(out, [1, 2, 3]);
        }
    }

    #[test]
    fn siv_matches_an_independent_implementation() {
        // Python `cryptography` 48: okm = HKDF(SHA256(), 64, salt=None,
        //   info=b"custos/v1/aes-256-siv").derive(bytes(range(32)));
        //   AESSIV(okm).encrypt(b"custos", [b"aad"])
        let k = SivKey::derive(&key()).expect("derive");
        let mut out = Vec::new();
        k.seal_append(b"aad", b"custos", &mut out).expect("seal");
        assert_eq!(hex(&out), SIV_VECTOR);
        let mut again = Vec::new();
        k.seal_append(b"aad", b"custos", &mut again).expect("seal");
        assert_eq!(out, again, "SIV is deterministic");
        let mut pt = Vec::new();
        k.open_append(b"aad", &out, &mut pt).expect("open");
        assert_eq!(pt, b"custos");
    }
    const SIV_VECTOR: &str = "56454d8d71e87d858e484b5d6051e142e29a48d7f20b";

    #[test]
    fn siv_rejects_tampering_and_other_aad() {
        let k = SivKey::derive(&key()).expect("derive");
        let mut sealed = Vec::new();
        k.seal_append(b"a", b"", &mut sealed).expect("seal empty");
        assert_eq!(sealed.len(), SIV_IV_LEN);
        k.seal_append(b"a", b"joinable", &mut sealed).expect("seal");
        let sealed = sealed[SIV_IV_LEN..].to_vec();
        let mut out = vec![9];
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x80;
            assert_eq!(
                k.open_append(b"a", &bad, &mut out),
                Err(AeadError::Authentication)
            );
        }
        assert_eq!(
            k.open_append(b"b", &sealed, &mut out),
            Err(AeadError::Authentication)
        );
        assert_eq!(
            k.open_append(b"a", &sealed[..SIV_IV_LEN - 1], &mut out),
            Err(AeadError::Authentication)
        );
        let other = SivKey::derive(&[1; KEY_LEN]).expect("derive");
        assert_eq!(
            other.open_append(b"a", &sealed, &mut out),
            Err(AeadError::Authentication)
        );
        assert_eq!(out, [9]);
    }

    #[test]
    fn nonces_never_repeat_across_reseeds_and_threads() {
        // Past one reseed on this thread, plus another thread's generator:
        // a generator that restarted from a fixed or shared seed repeats.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..NONCES_PER_SEED + 1000 {
            assert!(
                seen.insert(random_nonce().expect("nonce")),
                "nonce repeated"
            );
        }
        let other = std::thread::spawn(|| {
            (0..1000)
                .map(|_| random_nonce().expect("nonce"))
                .collect::<Vec<_>>()
        })
        .join()
        .expect("thread");
        for n in other {
            assert!(seen.insert(n), "two threads drew the same nonce");
        }
        // Not constant bytes: each of the 12 positions takes many values.
        for i in 0..NONCE_LEN {
            let values: std::collections::HashSet<u8> =
                seen.iter().take(4096).map(|n| n[i]).collect();
            assert!(values.len() > 200, "byte {i} takes {} values", values.len());
        }
    }

    #[test]
    fn debug_redacts_keys() {
        let g = GcmKey::new(Backend::AwsLc, &[0x41; KEY_LEN]).expect("key");
        let s = SivKey::derive(&[0x41; KEY_LEN]).expect("derive");
        let text = format!("{g:?} {s:?}");
        assert!(!text.contains("41") && !text.contains("65"), "{text}");
    }
}
