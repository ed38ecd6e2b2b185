//! Per-subject data keys, stored so that one person's key can be destroyed.
//!
//! Kafka topics are immutable logs: a person's records cannot be deleted from
//! every replica, backup and downstream copy. Encrypting each data subject's
//! protected fields under their own DEK makes erasure possible anyway: destroy
//! the key ("crypto-shredding") and every copy becomes unreadable. This store
//! holds each subject's DEKs wrapped by a KMS KEK, keyed by the subject's
//! keyed-hash token (the raw subject id is never stored), and keeps a
//! tombstone after shredding so readers can tell "erased" from "never
//! existed".
//!
//! Two backends implement [`SubjectKeys`]: [`SubjectKeyStore`], a sled
//! database local to one gateway (the default), and a compacted Kafka topic
//! that every gateway in front of a cluster shares (`proxy/src/subject_topic.rs`,
//! whose log semantics live in [`crate::subject_log`]).
//!
//! Caveat: sled is log-structured, so a shredded wrapped DEK may linger in an
//! old on-disk segment until sled rewrites it. Against someone holding both a
//! disk image and the KEK, complete destruction also needs the KEK version
//! that wrapped it to go: rotate, [`SubjectKeyStore::rewrap_all`], then retire
//! and destroy the old KEK version.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::key_ref::{DekId, SUBJECT_TOKEN_LEN};
use crate::kms::{EncryptionContext, Kms, WrappedKey};
use crate::SubjectTokenizer;

/// A subject's keyed-hash token.
pub type SubjectToken = [u8; SUBJECT_TOKEN_LEN];

/// The encryption-context key binding a subject DEK to its subject.
pub const SUBJECT_CONTEXT_KEY: &str = "custos.subject";

/// The encryption context every subject DEK is wrapped with: the token in
/// hex, so a wrapped key copied to another subject's entry does not unwrap.
pub fn subject_context(token: &SubjectToken) -> EncryptionContext {
    let mut c = EncryptionContext::new();
    c.insert(SUBJECT_CONTEXT_KEY.to_owned(), hex(token));
    c
}

/// Why a store operation failed. Messages name tokens and versions only.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The embedded database failed.
    #[error("subject key store: could not {op}: {source}")]
    Db {
        /// What was being done.
        op: &'static str,
        /// sled's error.
        source: sled::Error,
    },
    /// A stored entry does not parse.
    #[error("subject key store entry for token {token_hex} is malformed: {why}")]
    Corrupt {
        /// The subject's token, hex.
        token_hex: String,
        /// What is wrong.
        why: String,
    },
    /// The token key is unusable.
    #[error("subject key store: {0}")]
    TokenKey(#[from] crate::CryptoError),
    /// A shared store could not be reached in time (worth retrying).
    #[error("subject key store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Whether the same call may succeed if tried again later.
    pub fn retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// A topic DEK stored once in the key store (`KeyRef::Stored`): wrapped by
/// its KEK under `context`, which unwrapping and rewrapping need again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDek {
    /// The DEK wrapped by its KEK.
    pub wrapped: WrappedKey,
    /// The encryption context it was wrapped with (`custos:topic`).
    pub context: EncryptionContext,
    /// When the DEK was made (seconds since the epoch); a rewrap keeps it.
    pub created: u64,
}

/// How both backends serialise a stored DEK.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct StoredDekValue {
    kek_id: String,
    kek_version: u32,
    /// base64 of the KMS's wrapped bytes.
    blob: String,
    context: EncryptionContext,
    created: u64,
}

/// A stored DEK as the key store's JSON value.
pub fn encode_stored_dek(dek: &StoredDek) -> Vec<u8> {
    let v = StoredDekValue {
        kek_id: dek.wrapped.kek_id.clone(),
        kek_version: dek.wrapped.kek_version,
        blob: base64::engine::general_purpose::STANDARD.encode(&dek.wrapped.blob),
        context: dek.context.clone(),
        created: dek.created,
    };
    // A struct of strings and integers always serialises.
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Reads [`encode_stored_dek`]'s output.
pub fn decode_stored_dek(raw: &[u8]) -> Result<StoredDek, String> {
    let v: StoredDekValue = serde_json::from_slice(raw).map_err(|e| e.to_string())?;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(&v.blob)
        .map_err(|_| "wrapped key is not base64".to_owned())?;
    Ok(StoredDek {
        wrapped: WrappedKey {
            kek_id: v.kek_id,
            kek_version: v.kek_version,
            blob,
        },
        context: v.context,
        created: v.created,
    })
}

/// How messages and rewrap reports name a stored DEK: `dek:` and its id in hex.
pub fn dek_label(id: &DekId) -> String {
    format!("dek:{}", hex(id))
}

/// Called with a subject's token after its keys were shredded.
pub type ShredListener = Box<dyn Fn(&SubjectToken) + Send + Sync>;

/// Where per-subject data keys live: what the key manager, the admin API and
/// `custos keys` need of a store, whichever backend holds it.
#[async_trait::async_trait]
pub trait SubjectKeys: Send + Sync + 'static {
    /// Which backend this is, for messages ("sled", "kafka").
    fn kind(&self) -> &'static str;

    /// The token under which `subject_id`'s keys are stored.
    fn token(&self, subject_id: &[u8]) -> SubjectToken;

    /// Registers a function called with the token whenever a subject's keys
    /// are shredded (here, or by another gateway sharing the store).
    fn on_shred(&self, listener: ShredListener);

    /// The subject's newest unshredded key, if any.
    async fn current(&self, token: &SubjectToken) -> Result<Option<(u32, WrappedKey)>, StoreError>;

    /// One version of the subject's key: wrapped, erased, or unknown.
    async fn lookup(&self, token: &SubjectToken, version: u32) -> Result<SubjectKey, StoreError>;

    /// Stores `wrapped` as the subject's next key version, durably, and
    /// returns the subject's current key afterwards: `wrapped` itself, or
    /// the key another gateway sharing the store created first, which the
    /// caller must use instead. `replaces` is the current version the caller
    /// saw (and could not use), `None` when it saw none: a key created by
    /// someone else since then is returned instead of adding another.
    async fn create(
        &self,
        token: &SubjectToken,
        wrapped: &WrappedKey,
        replaces: Option<u32>,
    ) -> Result<(u32, WrappedKey), StoreError>;

    /// Destroys every key of the subject; later reads give
    /// [`SubjectKey::Erased`].
    async fn shred_token(&self, token: &SubjectToken) -> Result<ShredReceipt, StoreError>;

    /// Re-wraps every stored key under its KEK's current version.
    async fn rewrap_all(&self, kms: &dyn Kms) -> Result<RewrapReport, StoreError>;

    /// Stored (unshredded) keys per KEK version: `(kek_id, version, count)`.
    async fn report(&self) -> Result<Vec<(String, u32, u64)>, StoreError>;

    /// Stores a topic DEK under `id`, durably: nothing may be sealed under
    /// it before every gateway sharing the store can find it.
    async fn store_dek(&self, id: &DekId, dek: &StoredDek) -> Result<(), StoreError>;

    /// The DEK stored under `id`; `None` if this store never had it.
    async fn stored_dek(&self, id: &DekId) -> Result<Option<StoredDek>, StoreError>;

    /// Stored DEKs per KEK version: `(kek_id, version, count)`.
    async fn dek_report(&self) -> Result<Vec<(String, u32, u64)>, StoreError>;

    /// Destroys every key of `subject_id`; see [`SubjectKeys::shred_token`].
    async fn shred(&self, subject_id: &[u8]) -> Result<ShredReceipt, StoreError> {
        self.shred_token(&self.token(subject_id)).await
    }
}

/// What the store knows about one version of a subject's key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubjectKey {
    /// The key exists, wrapped by a KMS KEK.
    Wrapped(WrappedKey),
    /// The key existed and was shredded.
    Erased,
    /// No such subject or version.
    Unknown,
}

/// Proof of a shredding, for the DSR receipt and the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShredReceipt {
    /// The subject's token, hex (never the raw id).
    pub token_hex: String,
    /// The key versions destroyed by this call (empty if none were left).
    pub versions_destroyed: Vec<u32>,
    /// When, Unix seconds.
    pub shredded_at: u64,
}

/// One stored key that `rewrap_all` could not re-wrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrapFailure {
    /// The subject's token, hex; for a stored DEK, [`dek_label`] of its id.
    pub token_hex: String,
    /// The key version (0 for a stored DEK).
    pub version: u32,
    /// The KMS's error message.
    pub error: String,
}

/// What `rewrap_all` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewrapReport {
    /// Subject keys now wrapped under their KEK's current version.
    pub rewrapped: u64,
    /// Stored DEKs now wrapped under their KEK's current version.
    pub deks_rewrapped: u64,
    /// Keys shredded or replaced while the rewrap ran (left alone).
    pub skipped: u64,
    /// Keys the KMS could not re-wrap (still wrapped as before).
    pub failed: Vec<RewrapFailure>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Record {
    versions: Vec<StoredVersion>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct StoredVersion {
    version: u32,
    created: u64,
    #[serde(flatten)]
    key: StoredKey,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "lowercase")]
enum StoredKey {
    Active {
        kek_id: String,
        kek_version: u32,
        /// base64 of the KMS's wrapped bytes.
        blob: String,
    },
    Shredded {
        at: u64,
    },
}

impl StoredKey {
    fn from_wrapped(w: &WrappedKey) -> Self {
        StoredKey::Active {
            kek_id: w.kek_id.clone(),
            kek_version: w.kek_version,
            blob: base64::engine::general_purpose::STANDARD.encode(&w.blob),
        }
    }

    fn wrapped(&self, token: &SubjectToken) -> Result<Option<WrappedKey>, StoreError> {
        match self {
            StoredKey::Shredded { .. } => Ok(None),
            StoredKey::Active {
                kek_id,
                kek_version,
                blob,
            } => Ok(Some(WrappedKey {
                kek_id: kek_id.clone(),
                kek_version: *kek_version,
                blob: base64::engine::general_purpose::STANDARD
                    .decode(blob)
                    .map_err(|e| StoreError::Corrupt {
                        token_hex: hex(token),
                        why: format!("wrapped key is not base64: {e}"),
                    })?,
            })),
        }
    }
}

/// The sled-backed store of per-subject DEKs (see the module docs).
pub struct SubjectKeyStore {
    db: sled::Db,
    tree: sled::Tree,
    /// Stored topic DEKs, by id.
    deks: sled::Tree,
    tokenizer: SubjectTokenizer,
    listeners: Mutex<Vec<ShredListener>>,
}

impl std::fmt::Debug for SubjectKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectKeyStore").finish_non_exhaustive()
    }
}

/// sled's default page cache is 1 GiB; key entries are tiny.
const CACHE_BYTES: u64 = 32 * 1024 * 1024;
const TREE: &[u8] = b"subject_keys";
const DEK_TREE: &[u8] = b"stored_deks";

fn db_err(op: &'static str) -> impl Fn(sled::Error) -> StoreError {
    move |source| StoreError::Db { op, source }
}

impl SubjectKeyStore {
    /// Opens (or creates) the store in directory `path`; `token_key` is the
    /// secret key of the subject tokens (at least 32 bytes).
    pub fn open(path: &Path, token_key: &[u8]) -> Result<Self, StoreError> {
        let tokenizer = SubjectTokenizer::new(token_key)?;
        let db = open_db(path)?;
        let tree = db.open_tree(TREE).map_err(db_err("open tree"))?;
        let deks = db.open_tree(DEK_TREE).map_err(db_err("open tree"))?;
        Ok(Self {
            db,
            tree,
            deks,
            tokenizer,
            listeners: Mutex::new(Vec::new()),
        })
    }

    /// The token under which `subject_id`'s keys are stored.
    pub fn token(&self, subject_id: &[u8]) -> SubjectToken {
        self.tokenizer.token_bytes(subject_id)
    }

    /// Registers a function called with the token after each shredding is
    /// durable (the key cache drops that subject's keys).
    pub fn on_shred(&self, listener: impl Fn(&SubjectToken) + Send + Sync + 'static) {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(listener));
    }

    fn read(&self, token: &SubjectToken) -> Result<Option<Record>, StoreError> {
        let raw = self.tree.get(token).map_err(db_err("read"))?;
        raw.map(|r| parse(token, &r)).transpose()
    }

    /// The subject's newest unshredded key, if any.
    pub fn current(&self, token: &SubjectToken) -> Result<Option<(u32, WrappedKey)>, StoreError> {
        let Some(rec) = self.read(token)? else {
            return Ok(None);
        };
        let newest = rec
            .versions
            .iter()
            .filter(|v| matches!(v.key, StoredKey::Active { .. }))
            .max_by_key(|v| v.version);
        match newest {
            Some(v) => Ok(v.key.wrapped(token)?.map(|w| (v.version, w))),
            None => Ok(None),
        }
    }

    /// One version of the subject's key: wrapped, erased, or unknown.
    pub fn lookup(&self, token: &SubjectToken, version: u32) -> Result<SubjectKey, StoreError> {
        let Some(rec) = self.read(token)? else {
            return Ok(SubjectKey::Unknown);
        };
        match rec.versions.iter().find(|v| v.version == version) {
            None => Ok(SubjectKey::Unknown),
            Some(v) => Ok(match v.key.wrapped(token)? {
                Some(w) => SubjectKey::Wrapped(w),
                None => SubjectKey::Erased,
            }),
        }
    }

    /// Stores a new key version for the subject (numbered after every version
    /// it ever had, shredded ones included) and makes it durable before
    /// returning, since data will be encrypted under it.
    pub fn add_version(
        &self,
        token: &SubjectToken,
        wrapped: &WrappedKey,
    ) -> Result<u32, StoreError> {
        add_version(&self.db, &self.tree, token, wrapped)
    }

    /// Destroys every key of `subject_id`; see [`Self::shred_token`].
    pub fn shred(&self, subject_id: &[u8]) -> Result<ShredReceipt, StoreError> {
        self.shred_token(&self.token(subject_id))
    }

    /// Destroys every key of the subject, keeping tombstones so reads give
    /// [`SubjectKey::Erased`]; durable on disk before it returns. A later
    /// produce for the subject gets a fresh key version.
    pub fn shred_token(&self, token: &SubjectToken) -> Result<ShredReceipt, StoreError> {
        let at = now_secs();
        let destroyed = self.update(token, |rec| {
            let mut destroyed = Vec::new();
            for v in &mut rec.versions {
                if matches!(v.key, StoredKey::Active { .. }) {
                    v.key = StoredKey::Shredded { at };
                    destroyed.push(v.version);
                }
            }
            Ok(destroyed)
        })?;
        self.db.flush().map_err(db_err("flush"))?;
        for l in self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            l(token);
        }
        Ok(ShredReceipt {
            token_hex: hex(token),
            versions_destroyed: destroyed,
            shredded_at: at,
        })
    }

    /// Re-wraps every stored key under its KEK's current version (through
    /// the KMS's rewrap), leaving keys shredded meanwhile alone.
    pub async fn rewrap_all(&self, kms: &dyn Kms) -> Result<RewrapReport, StoreError> {
        let mut report = RewrapReport::default();
        for (token, version, old) in self.all_wrapped()? {
            let Some(new) = rewrap_key(kms, &token, version, &old, &mut report).await else {
                continue;
            };
            let replaced = self.update(&token, |rec| {
                let Some(v) = rec.versions.iter_mut().find(|v| v.version == version) else {
                    return Ok(false);
                };
                if v.key != StoredKey::from_wrapped(&old) {
                    return Ok(false);
                }
                v.key = StoredKey::from_wrapped(&new);
                Ok(true)
            })?;
            if replaced {
                report.rewrapped += 1;
            } else {
                report.skipped += 1;
            }
        }
        for (id, old) in self.all_deks()? {
            let Some(new) = rewrap_dek(kms, &id, &old, &mut report).await else {
                continue;
            };
            let before = self.deks.get(id).map_err(db_err("read"))?;
            // Only if nobody rewrote it meanwhile.
            let unchanged = before
                .as_deref()
                .is_some_and(|raw| decode_stored_dek(raw).is_ok_and(|d| d == old));
            let swapped = unchanged
                && self
                    .deks
                    .compare_and_swap(id, before, Some(encode_stored_dek(&new)))
                    .map_err(db_err("write"))?
                    .is_ok();
            if swapped {
                report.deks_rewrapped += 1;
            } else {
                report.skipped += 1;
            }
        }
        self.db.flush().map_err(db_err("flush"))?;
        Ok(report)
    }

    /// Every stored DEK with its id.
    fn all_deks(&self) -> Result<Vec<(DekId, StoredDek)>, StoreError> {
        let mut out = Vec::new();
        for item in self.deks.iter() {
            let (k, v) = item.map_err(db_err("scan"))?;
            let corrupt = |why: String| StoreError::Corrupt {
                token_hex: format!("dek:{}", hex(&k)),
                why,
            };
            let id: DekId = k
                .as_ref()
                .try_into()
                .map_err(|_| corrupt("key is not a 16-byte DEK id".to_owned()))?;
            out.push((id, decode_stored_dek(&v).map_err(corrupt)?));
        }
        Ok(out)
    }

    /// How many stored (unshredded) keys sit under each KEK version:
    /// `(kek_id, kek_version, count)`, sorted.
    pub fn report(&self) -> Result<Vec<(String, u32, u64)>, StoreError> {
        Ok(count_by_kek(self.all_wrapped()?))
    }

    fn all_wrapped(&self) -> Result<Vec<(SubjectToken, u32, WrappedKey)>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.iter() {
            let (k, v) = item.map_err(db_err("scan"))?;
            let token: SubjectToken = k.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                token_hex: hex(&k),
                why: "key is not a 32-byte token".to_owned(),
            })?;
            for ver in parse(&token, &v)?.versions {
                if let Some(w) = ver.key.wrapped(&token)? {
                    out.push((token, ver.version, w));
                }
            }
        }
        Ok(out)
    }

    fn update<T>(
        &self,
        token: &SubjectToken,
        f: impl FnMut(&mut Record) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        update(&self.tree, token, f)
    }
}

#[async_trait::async_trait]
impl SubjectKeys for SubjectKeyStore {
    fn kind(&self) -> &'static str {
        "sled"
    }

    fn token(&self, subject_id: &[u8]) -> SubjectToken {
        SubjectKeyStore::token(self, subject_id)
    }

    fn on_shred(&self, listener: ShredListener) {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(listener);
    }

    async fn current(&self, token: &SubjectToken) -> Result<Option<(u32, WrappedKey)>, StoreError> {
        SubjectKeyStore::current(self, token)
    }

    async fn lookup(&self, token: &SubjectToken, version: u32) -> Result<SubjectKey, StoreError> {
        SubjectKeyStore::lookup(self, token, version)
    }

    async fn create(
        &self,
        token: &SubjectToken,
        wrapped: &WrappedKey,
        _replaces: Option<u32>,
    ) -> Result<(u32, WrappedKey), StoreError> {
        // One gateway owns a sled store, and `KeyManager` lets one task at a
        // time create a subject's key, so nobody can have created one since
        // the caller looked.
        // sled's flush waits for the disk: keep it off the executor.
        let (db, tree, token, w) = (self.db.clone(), self.tree.clone(), *token, wrapped.clone());
        let version =
            match tokio::task::spawn_blocking(move || add_version(&db, &tree, &token, &w)).await {
                Ok(r) => r?,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => {
                    return Err(StoreError::Db {
                        op: "store a new subject key (task cancelled)",
                        source: sled::Error::Io(std::io::Error::other("cancelled")),
                    })
                }
            };
        Ok((version, wrapped.clone()))
    }

    async fn shred_token(&self, token: &SubjectToken) -> Result<ShredReceipt, StoreError> {
        SubjectKeyStore::shred_token(self, token)
    }

    async fn rewrap_all(&self, kms: &dyn Kms) -> Result<RewrapReport, StoreError> {
        SubjectKeyStore::rewrap_all(self, kms).await
    }

    async fn report(&self) -> Result<Vec<(String, u32, u64)>, StoreError> {
        SubjectKeyStore::report(self)
    }

    async fn store_dek(&self, id: &DekId, dek: &StoredDek) -> Result<(), StoreError> {
        let (db, deks, id, value) = (
            self.db.clone(),
            self.deks.clone(),
            *id,
            encode_stored_dek(dek),
        );
        // sled's flush waits for the disk: keep it off the executor.
        let stored = tokio::task::spawn_blocking(move || {
            deks.insert(id, value).map_err(db_err("store a DEK"))?;
            db.flush().map_err(db_err("flush")).map(|_| ())
        })
        .await;
        match stored {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(StoreError::Db {
                op: "store a DEK (task cancelled)",
                source: sled::Error::Io(std::io::Error::other("cancelled")),
            }),
        }
    }

    async fn stored_dek(&self, id: &DekId) -> Result<Option<StoredDek>, StoreError> {
        let Some(raw) = self.deks.get(id).map_err(db_err("read"))? else {
            return Ok(None);
        };
        decode_stored_dek(&raw)
            .map(Some)
            .map_err(|why| StoreError::Corrupt {
                token_hex: dek_label(id),
                why,
            })
    }

    async fn dek_report(&self) -> Result<Vec<(String, u32, u64)>, StoreError> {
        Ok(count_deks_by_kek(self.all_deks()?.iter().map(|(_, d)| d)))
    }
}

/// Read-modify-write of one subject's record by compare-and-swap, so
/// concurrent writers never lose each other's versions. A missing record
/// starts empty; an unchanged record is not written.
fn update<T>(
    tree: &sled::Tree,
    token: &SubjectToken,
    mut f: impl FnMut(&mut Record) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    loop {
        let old = tree.get(token).map_err(db_err("read"))?;
        let before = match &old {
            Some(raw) => parse(token, raw)?,
            None => Record {
                versions: Vec::new(),
            },
        };
        let mut rec = before.clone();
        let out = f(&mut rec)?;
        if rec == before {
            return Ok(out);
        }
        let bytes = serde_json::to_vec(&rec).map_err(|e| StoreError::Corrupt {
            token_hex: hex(token),
            why: format!("could not serialise: {e}"),
        })?;
        match tree
            .compare_and_swap(token, old, Some(bytes))
            .map_err(db_err("write"))?
        {
            Ok(()) => return Ok(out),
            Err(_) => continue,
        }
    }
}

/// Stores a new key version (see [`SubjectKeyStore::add_version`]).
fn add_version(
    db: &sled::Db,
    tree: &sled::Tree,
    token: &SubjectToken,
    wrapped: &WrappedKey,
) -> Result<u32, StoreError> {
    let created = now_secs();
    let version = update(tree, token, |rec| {
        let version = rec
            .versions
            .iter()
            .map(|v| v.version)
            .max()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt {
                token_hex: hex(token),
                why: "key version overflow".to_owned(),
            })?;
        rec.versions.push(StoredVersion {
            version,
            created,
            key: StoredKey::from_wrapped(wrapped),
        });
        Ok(version)
    })?;
    db.flush().map_err(db_err("flush"))?;
    Ok(version)
}

fn parse(token: &SubjectToken, raw: &[u8]) -> Result<Record, StoreError> {
    serde_json::from_slice(raw).map_err(|e| StoreError::Corrupt {
        token_hex: hex(token),
        why: e.to_string(),
    })
}

/// Opens sled, waiting briefly if a just-dropped handle in this process still
/// holds the file lock (sled releases it only when its epoch garbage is
/// collected). Another process holding the store still fails, after the wait.
fn open_db(path: &Path) -> Result<sled::Db, StoreError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            .open()
        {
            // sled 0.34 reports a held lock as `Other` with the lock error in
            // the message, not as `WouldBlock`.
            Err(sled::Error::Io(e))
                if (e.kind() == std::io::ErrorKind::WouldBlock
                    || e.to_string().starts_with("could not acquire lock"))
                    && Instant::now() < deadline =>
            {
                sled::pin().flush();
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other.map_err(db_err("open")),
        }
    }
}

/// Seconds since the epoch (0 if the clock is before it).
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One stored key re-wrapped under its KEK's current version by the KMS;
/// `None` (and the failure noted in `report`) when the KMS refused.
pub async fn rewrap_key(
    kms: &dyn Kms,
    token: &SubjectToken,
    version: u32,
    old: &WrappedKey,
    report: &mut RewrapReport,
) -> Option<WrappedKey> {
    match kms.rewrap(old, None, &subject_context(token)).await {
        Ok(w) => Some(w),
        Err(e) => {
            report.failed.push(RewrapFailure {
                token_hex: hex(token),
                version,
                error: e.to_string(),
            });
            None
        }
    }
}

/// One stored DEK re-wrapped under its KEK's current version by the KMS
/// (with the context it was wrapped under); `None` (and the failure noted
/// in `report`) when the KMS refused.
pub async fn rewrap_dek(
    kms: &dyn Kms,
    id: &DekId,
    old: &StoredDek,
    report: &mut RewrapReport,
) -> Option<StoredDek> {
    match kms.rewrap(&old.wrapped, None, &old.context).await {
        Ok(wrapped) => Some(StoredDek {
            wrapped,
            context: old.context.clone(),
            created: old.created,
        }),
        Err(e) => {
            report.failed.push(RewrapFailure {
                token_hex: dek_label(id),
                version: 0,
                error: e.to_string(),
            });
            None
        }
    }
}

/// Stored DEKs per KEK version, `(kek_id, version, count)` sorted.
pub fn count_deks_by_kek<'a>(deks: impl Iterator<Item = &'a StoredDek>) -> Vec<(String, u32, u64)> {
    count_wrapped(deks.map(|d| &d.wrapped))
}

/// Stored keys per KEK version, `(kek_id, version, count)` sorted, from
/// `(token, version, wrapped)` rows.
pub fn count_by_kek(keys: Vec<(SubjectToken, u32, WrappedKey)>) -> Vec<(String, u32, u64)> {
    count_wrapped(keys.iter().map(|(_, _, w)| w))
}

fn count_wrapped<'a>(keys: impl Iterator<Item = &'a WrappedKey>) -> Vec<(String, u32, u64)> {
    let mut counts: BTreeMap<(&str, u32), u64> = BTreeMap::new();
    for w in keys {
        *counts.entry((&w.kek_id, w.kek_version)).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|((k, v), n)| (k.to_owned(), v, n))
        .collect()
}

/// Lower-case hex of `bytes` (how tokens appear in messages and receipts).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn wrapped(tag: u8) -> WrappedKey {
        WrappedKey {
            kek_id: "k".to_owned(),
            kek_version: 1,
            blob: vec![tag; 60],
        }
    }

    #[test]
    fn versions_tombstones_and_unknowns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SubjectKeyStore::open(dir.path(), &[4; 32]).expect("open");
        let t = store.token(b"alice");
        assert_eq!(store.current(&t).expect("current"), None);
        assert_eq!(store.lookup(&t, 1).expect("lookup"), SubjectKey::Unknown);
        assert_eq!(store.add_version(&t, &wrapped(1)).expect("add"), 1);
        assert_eq!(store.add_version(&t, &wrapped(2)).expect("add"), 2);
        assert_eq!(store.current(&t).expect("current"), Some((2, wrapped(2))));
        assert_eq!(
            store.lookup(&t, 1).expect("lookup"),
            SubjectKey::Wrapped(wrapped(1))
        );

        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        store.on_shred(move |tok| seen2.lock().expect("lock").push(*tok));
        let receipt = store.shred(b"alice").expect("shred");
        assert_eq!(receipt.versions_destroyed, vec![1, 2]);
        assert_eq!(receipt.token_hex, hex(&t));
        assert_eq!(*seen.lock().expect("lock"), vec![t]);
        assert_eq!(store.lookup(&t, 2).expect("lookup"), SubjectKey::Erased);
        assert_eq!(store.lookup(&t, 3).expect("lookup"), SubjectKey::Unknown);
        assert_eq!(store.current(&t).expect("current"), None);
        assert!(store.report().expect("report").is_empty());
        // Numbering continues past shredded versions.
        assert_eq!(store.add_version(&t, &wrapped(3)).expect("add"), 3);
        // Shredding again destroys only what is left.
        assert_eq!(
            store.shred(b"alice").expect("shred").versions_destroyed,
            vec![3]
        );
        assert!(store
            .shred(b"nobody")
            .expect("shred")
            .versions_destroyed
            .is_empty());

        // Nothing of the wrapped bytes or the raw id is left in the entry.
        let raw = store.tree.get(t).expect("get").expect("entry");
        let text = String::from_utf8(raw.to_vec()).expect("utf8");
        assert!(!text.contains("blob"), "{text}");
        assert!(!text.contains("alice"), "{text}");
    }

    #[test]
    fn concurrent_writers_get_distinct_versions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SubjectKeyStore::open(dir.path(), &[4; 32]).expect("open"));
        let t = store.token(b"bob");
        let handles: Vec<_> = (0..8u8)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || store.add_version(&t, &wrapped(i)).expect("add"))
            })
            .collect();
        let mut versions: Vec<u32> = handles
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect();
        versions.sort_unstable();
        assert_eq!(versions, (1..=8).collect::<Vec<_>>());
        assert_eq!(
            store.report().expect("report"),
            vec![("k".to_owned(), 1, 8)]
        );
    }

    #[test]
    fn context_binds_the_token() {
        let c = subject_context(&[0xab; 32]);
        assert_eq!(c.len(), 1);
        assert_eq!(c[SUBJECT_CONTEXT_KEY], "ab".repeat(32));
    }

    #[test]
    fn short_token_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            SubjectKeyStore::open(dir.path(), &[1; 8]),
            Err(StoreError::TokenKey(_))
        ));
    }
}
