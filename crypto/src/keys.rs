//! The DEK cache and rotation policy on the proxy's hot path.
//!
//! Calling the KMS for every record would make throughput the KMS's latency,
//! and using one DEK forever would run AES-GCM with random nonces past its
//! safe limit (2^32 messages per key). So the [`KeyManager`] keeps one current
//! DEK per (KEK, encryption context), hands it out with a reserved count of
//! encryptions, and replaces it when the count or age limit would be crossed
//! or the KEK was rotated. Unwrapped DEKs for decryption are cached by their
//! wrapped form, and per-subject keys come from the [`SubjectKeyStore`], whose
//! shredding drops them from this cache at once.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::key_ref::KeyRef;
use crate::kms::{EncryptionContext, Kms, KmsError, DEK_LEN};
use crate::subject_store::{
    subject_context, StoreError, StoredDek, SubjectKey, SubjectKeys, SubjectToken,
};

/// Encryptions per DEK must stay below this: AES-GCM with random 96-bit
/// nonces keeps collision odds negligible only up to about 2^32 messages.
pub const MAX_ENCRYPTIONS_LIMIT: u64 = 1 << 32;

/// Default bound on cached unwrapped DEKs (decryption and subject caches each).
pub const DEFAULT_CACHE_ENTRIES: usize = 10_000;

/// Subject-key creations are serialised per shard of tokens, so concurrent
/// first uses of one subject make one KMS call without a global lock.
const SUBJECT_LOCK_SHARDS: usize = 64;

/// When a DEK is replaced by a fresh one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Encryptions per DEK (1 ..< 2^32).
    pub max_encryptions: u64,
    /// Longest a DEK is used for new encryptions.
    pub max_age: Duration,
}

impl Default for Rotation {
    fn default() -> Self {
        Self {
            max_encryptions: 1 << 24,
            max_age: Duration::from_secs(3600),
        }
    }
}

impl Rotation {
    /// Checks the limits are within AES-GCM's safe range and non-zero.
    pub fn validate(&self) -> Result<(), KeyError> {
        if self.max_encryptions == 0 || self.max_encryptions >= MAX_ENCRYPTIONS_LIMIT {
            return Err(KeyError::InvalidRotation(format!(
                "max_encryptions must be between 1 and 2^32 - 1 (random 96-bit GCM nonces), got {}",
                self.max_encryptions
            )));
        }
        if self.max_age.is_zero() {
            return Err(KeyError::InvalidRotation(
                "max_age must be greater than zero".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Tells the [`KeyManager`] a KEK's current version, so a rotation replaces
/// cached DEKs at once (the local keyring implements it; for KMSs that
/// version keys internally, the age limit does the job).
pub trait KekVersionSource: Send + Sync {
    /// The version new DEKs of `kek_id` are wrapped under, if known.
    fn current_version(&self, kek_id: &str) -> Option<u32>;
}

/// A plaintext data key with the reference a ciphertext records for it.
pub struct Dek {
    key: Zeroizing<[u8; DEK_LEN]>,
    key_ref: KeyRef,
    // Expanded on first use and kept with the cached key: expanding costs
    // more than sealing a small field.
    prepared: std::sync::OnceLock<Option<crate::envelope::PreparedKey>>,
}

impl std::fmt::Debug for Dek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Dek")
            .field("key_ref", &self.key_ref)
            .finish_non_exhaustive()
    }
}

impl Dek {
    /// Pairs key bytes with their reference.
    pub fn new(key: Zeroizing<[u8; DEK_LEN]>, key_ref: KeyRef) -> Self {
        Self {
            key,
            key_ref,
            prepared: std::sync::OnceLock::new(),
        }
    }

    /// The key expanded for sealing and opening, built once per key
    /// (`None` only if the AEAD library refused the key).
    pub fn prepared(&self) -> Option<&crate::envelope::PreparedKey> {
        self.prepared
            .get_or_init(|| crate::envelope::PreparedKey::new(&self.key).ok())
            .as_ref()
    }

    /// The key bytes (AES-256).
    pub fn key(&self) -> &[u8; DEK_LEN] {
        &self.key
    }

    /// How a ciphertext names this key.
    pub fn key_ref(&self) -> &KeyRef {
        &self.key_ref
    }
}

/// Why no key could be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The KMS failed or refused.
    #[error(transparent)]
    Kms(#[from] KmsError),
    /// The data subject's key was shredded: show the "erased" placeholder.
    #[error("the data subject's key (version {version}) was erased")]
    Erased {
        /// The key version the ciphertext names.
        version: u32,
    },
    /// No such subject key (never created, or a different store).
    #[error("unknown data-subject key")]
    UnknownSubjectKey,
    /// An envelope names a stored DEK the key store does not have (a
    /// different store, or one that lost it): the data cannot be opened.
    #[error("unknown stored data key")]
    UnknownStoredDek,
    /// The random source failed; no DEK id could be drawn.
    #[error("random source unavailable")]
    Random,
    /// The subject key store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A subject key was asked for but no subject key store is configured.
    #[error("per-subject keys need a subject key store, and none is configured")]
    NoSubjectStore,
    /// The rotation limits are unsafe or meaningless.
    #[error("invalid key rotation: {0}")]
    InvalidRotation(String),
    /// One batch asked for more encryptions than a DEK may ever do.
    #[error("a batch of {uses} encryptions exceeds the per-key limit of {max}")]
    BatchTooLarge {
        /// Encryptions asked for.
        uses: u64,
        /// The rotation limit.
        max: u64,
    },
}

impl KeyError {
    /// Whether the same call may succeed if tried again later.
    pub fn retryable(&self) -> bool {
        match self {
            KeyError::Kms(e) => e.retryable(),
            KeyError::Store(e) => e.retryable(),
            _ => false,
        }
    }
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyStats {
    /// Keys served from a cache.
    pub cache_hits: u64,
    /// Keys that needed the KMS or the subject store.
    pub cache_misses: u64,
    /// DEKs generated by the KMS (topic and subject keys).
    pub deks_generated: u64,
    /// Of those, new per-subject keys.
    pub subject_keys_created: u64,
    /// DEKs unwrapped by the KMS.
    pub kms_decrypts: u64,
}

#[derive(Default)]
struct Stats {
    hits: AtomicU64,
    misses: AtomicU64,
    generated: AtomicU64,
    subject_created: AtomicU64,
    decrypts: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A bounded map with "recently used" eviction in O(1): entries live in a
/// young generation; when it fills, it becomes the old one and the previous
/// old one is dropped. A hit in the old generation moves back to the young.
struct TwoGen<K, V> {
    cap: usize,
    young: HashMap<K, V>,
    old: HashMap<K, V>,
}

impl<K: Hash + Eq, V: Clone> TwoGen<K, V> {
    fn new(total: usize) -> Self {
        Self {
            cap: (total / 2).max(1),
            young: HashMap::new(),
            old: HashMap::new(),
        }
    }

    fn get<Q>(&mut self, k: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(v) = self.young.get(k) {
            return Some(v.clone());
        }
        let (k, v) = self.old.remove_entry(k)?;
        self.insert(k, v.clone());
        Some(v)
    }

    fn insert(&mut self, k: K, v: V) {
        if self.young.len() >= self.cap && !self.young.contains_key(&k) {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(k, v);
    }

    fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.young.retain(|k, _| keep(k));
        self.old.retain(|k, _| keep(k));
    }

    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

/// The DEK currently used for new encryptions in one (KEK, context) slot.
struct Current {
    dek: Arc<Dek>,
    used: u64,
    created: Instant,
    kek_version: u32,
}

type Slot = Arc<tokio::sync::Mutex<Option<Current>>>;

#[derive(Clone)]
enum CachedSubject {
    Key(Arc<Dek>),
    Erased,
}

/// Subject keys in memory. Shredding bumps `generation` and drops the
/// subject's entries under the same lock, and an insert only lands if no
/// shredding happened since its store read, so a key read just before a
/// shredding cannot be cached after it.
struct SubjectCache {
    inner: Mutex<SubjectCacheInner>,
}

struct SubjectCacheInner {
    generation: u64,
    current: TwoGen<SubjectToken, Arc<Dek>>,
    by_version: TwoGen<(SubjectToken, u32), CachedSubject>,
}

impl SubjectCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, SubjectCacheInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn generation(&self) -> u64 {
        self.lock().generation
    }

    fn forget(&self, token: &SubjectToken) {
        let mut c = self.lock();
        c.generation += 1;
        c.current.retain(|t| t != token);
        c.by_version.retain(|(t, _)| t != token);
    }

    /// Drops every unwrapped key (which KEK version wrapped each is not
    /// kept), so the next use asks the store and the KMS again.
    fn forget_all(&self) {
        let mut c = self.lock();
        c.generation += 1;
        c.current.retain(|_| false);
        c.by_version.retain(|_| false);
    }
}

/// The DEK cache and rotation policy (see the module docs).
pub struct KeyManager {
    kms: Arc<dyn Kms>,
    rotation: Rotation,
    subjects: Option<Arc<dyn SubjectKeys>>,
    /// New DEKs are stored in the subject key store and named by id.
    stored_deks: bool,
    kek_versions: Option<Arc<dyn KekVersionSource>>,
    slots: Mutex<HashMap<String, HashMap<EncryptionContext, Slot>>>,
    /// Unwrapped DEKs by the reference envelopes carry (wrapped or stored),
    /// with the context they were unwrapped under.
    decrypt_cache: Mutex<TwoGen<KeyRef, (EncryptionContext, Arc<Dek>)>>,
    subject_cache: Arc<SubjectCache>,
    subject_locks: Vec<tokio::sync::Mutex<()>>,
    stats: Stats,
}

impl std::fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyManager")
            .field("kms", &self.kms.name())
            .field("rotation", &self.rotation)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl KeyManager {
    /// A key manager over `kms`; `subjects` enables per-subject keys. Fails
    /// if `rotation` is outside AES-GCM's safe range.
    pub fn new(
        kms: Arc<dyn Kms>,
        rotation: Rotation,
        subjects: Option<Arc<dyn SubjectKeys>>,
    ) -> Result<Self, KeyError> {
        rotation.validate()?;
        let subject_cache = Arc::new(SubjectCache {
            inner: Mutex::new(SubjectCacheInner {
                generation: 0,
                current: TwoGen::new(DEFAULT_CACHE_ENTRIES),
                by_version: TwoGen::new(DEFAULT_CACHE_ENTRIES),
            }),
        });
        if let Some(store) = &subjects {
            let weak: Weak<SubjectCache> = Arc::downgrade(&subject_cache);
            store.on_shred(Box::new(move |token| {
                if let Some(cache) = weak.upgrade() {
                    cache.forget(token);
                }
            }));
        }
        Ok(Self {
            kms,
            rotation,
            subjects,
            stored_deks: false,
            kek_versions: None,
            slots: Mutex::new(HashMap::new()),
            decrypt_cache: Mutex::new(TwoGen::new(DEFAULT_CACHE_ENTRIES)),
            subject_cache,
            subject_locks: (0..SUBJECT_LOCK_SHARDS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            stats: Stats::default(),
        })
    }

    /// Replaces cached encryption DEKs as soon as `source` reports a newer
    /// KEK version (e.g. the local keyring after `custos keys rotate`).
    pub fn with_kek_versions(mut self, source: Arc<dyn KekVersionSource>) -> Self {
        self.kek_versions = Some(source);
        self
    }

    /// Stores each new DEK once, wrapped, in the subject key store, so
    /// envelopes name it by a 16-byte id instead of carrying it (about 60
    /// bytes less per protected part). Needs a subject key store.
    pub fn with_stored_deks(mut self) -> Result<Self, KeyError> {
        if self.subjects.is_none() {
            return Err(KeyError::NoSubjectStore);
        }
        self.stored_deks = true;
        Ok(self)
    }

    /// The counters so far.
    pub fn stats(&self) -> KeyStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        KeyStats {
            cache_hits: get(&self.stats.hits),
            cache_misses: get(&self.stats.misses),
            deks_generated: get(&self.stats.generated),
            subject_keys_created: get(&self.stats.subject_created),
            kms_decrypts: get(&self.stats.decrypts),
        }
    }

    fn slot(&self, kek_id: &str, context: &EncryptionContext) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.get(kek_id).and_then(|m| m.get(context)) {
            return slot.clone();
        }
        slots
            .entry(kek_id.to_owned())
            .or_default()
            .entry(context.clone())
            .or_default()
            .clone()
    }

    /// The current DEK for (`kek_id`, `context`), with `uses` encryptions
    /// reserved on it (a batch reserves all its records at once). A new DEK
    /// is generated when there is none, when the count or age limit would be
    /// crossed, or when the KEK was rotated. One generate per slot at a time:
    /// concurrent callers wait for it rather than each calling the KMS.
    pub async fn encryption_key(
        &self,
        kek_id: &str,
        context: &EncryptionContext,
        uses: u64,
    ) -> Result<Arc<Dek>, KeyError> {
        let max = self.rotation.max_encryptions;
        if uses > max {
            return Err(KeyError::BatchTooLarge { uses, max });
        }
        let slot = self.slot(kek_id, context);
        let mut current = slot.lock().await;
        let kek_now = self
            .kek_versions
            .as_ref()
            .and_then(|s| s.current_version(kek_id));
        if let Some(c) = current.as_mut() {
            let usable = c.used + uses <= max
                && c.created.elapsed() < self.rotation.max_age
                && kek_now.is_none_or(|v| v == c.kek_version);
            if usable {
                c.used += uses;
                bump(&self.stats.hits);
                return Ok(c.dek.clone());
            }
        }
        bump(&self.stats.misses);
        let data_key = self.kms.generate_data_key(kek_id, context).await?;
        bump(&self.stats.generated);
        let wrapped = data_key.wrapped;
        let kek_version = wrapped.kek_version;
        let key_ref = if self.stored_deks {
            let mut id = [0u8; crate::key_ref::DEK_ID_LEN];
            getrandom::fill(&mut id).map_err(|_| KeyError::Random)?;
            // Durable before anything is sealed under it: every gateway
            // sharing the store must be able to open what this one seals.
            let stored = StoredDek {
                wrapped,
                context: context.clone(),
                created: crate::subject_store::now_secs(),
            };
            self.store()?.store_dek(&id, &stored).await?;
            KeyRef::Stored(id)
        } else {
            KeyRef::Wrapped(wrapped)
        };
        let dek = Arc::new(Dek::new(data_key.plaintext, key_ref.clone()));
        // This process's own consumers will ask for it next.
        self.decrypt_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key_ref, (context.clone(), dek.clone()));
        *current = Some(Current {
            dek: dek.clone(),
            used: uses,
            created: Instant::now(),
            kek_version,
        });
        Ok(dek)
    }

    /// The DEK a ciphertext names. Wrapped keys are unwrapped by the KMS
    /// with `context` (and cached); subject keys come from the subject store
    /// (their context is the subject's, so `context` is not used).
    pub async fn decryption_key(
        &self,
        key_ref: &KeyRef,
        context: &EncryptionContext,
    ) -> Result<Arc<Dek>, KeyError> {
        if let Some(found) = self.cached_decryption_key(key_ref, context) {
            return found;
        }
        let stored;
        let wrapped = match key_ref {
            KeyRef::Wrapped(w) => w,
            KeyRef::Subject { token, version } => {
                return self.subject_version(token, *version).await
            }
            KeyRef::Stored(id) => {
                stored = self
                    .store()?
                    .stored_dek(id)
                    .await?
                    .ok_or(KeyError::UnknownStoredDek)?;
                // Unwrapped under the reader's context, not the stored one:
                // the KMS then refuses a key copied from another topic.
                &stored.wrapped
            }
        };
        // Subject keys count their own miss.
        bump(&self.stats.misses);
        let key = self.kms.decrypt_data_key(wrapped, context).await?;
        bump(&self.stats.decrypts);
        let dek = Arc::new(Dek::new(key, key_ref.clone()));
        self.decrypt_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key_ref.clone(), (context.clone(), dek.clone()));
        Ok(dek)
    }

    /// As [`Self::decryption_key`] when the answer is in memory already
    /// (a cached DEK, or a subject known to be shredded); `None` when it
    /// needs the KMS or the subject store. Never waits, so a reveal can ask
    /// it for every new key it meets without leaving its thread.
    pub fn cached_decryption_key(
        &self,
        key_ref: &KeyRef,
        context: &EncryptionContext,
    ) -> Option<Result<Arc<Dek>, KeyError>> {
        match key_ref {
            KeyRef::Wrapped(_) | KeyRef::Stored(_) => {
                let (ctx, dek) = self
                    .decrypt_cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(key_ref)?;
                // As in `decryption_key`: under another context the KMS decides.
                (ctx == *context).then(|| {
                    bump(&self.stats.hits);
                    Ok(dek)
                })
            }
            KeyRef::Subject { token, version } => {
                self.subjects.as_ref()?;
                let cached = self
                    .subject_cache
                    .lock()
                    .by_version
                    .get(&(*token, *version))?;
                bump(&self.stats.hits);
                Some(match cached {
                    CachedSubject::Key(dek) => Ok(dek),
                    CachedSubject::Erased => Err(KeyError::Erased { version: *version }),
                })
            }
        }
    }

    fn store(&self) -> Result<&Arc<dyn SubjectKeys>, KeyError> {
        self.subjects.as_ref().ok_or(KeyError::NoSubjectStore)
    }

    async fn subject_version(
        &self,
        token: &SubjectToken,
        version: u32,
    ) -> Result<Arc<Dek>, KeyError> {
        // Not in memory (`decryption_key` asked that first).
        let store = self.store()?;
        bump(&self.stats.misses);
        let generation = self.subject_cache.generation();
        let wrapped = match store.lookup(token, version).await? {
            SubjectKey::Wrapped(w) => w,
            SubjectKey::Erased => {
                // Shredding is permanent, so this may be cached whatever happens.
                self.subject_cache
                    .lock()
                    .by_version
                    .insert((*token, version), CachedSubject::Erased);
                return Err(KeyError::Erased { version });
            }
            _ => return Err(KeyError::UnknownSubjectKey),
        };
        let key = match self
            .kms
            .decrypt_data_key(&wrapped, &subject_context(token))
            .await
        {
            Ok(key) => key,
            // Its KEK version is gone for good: as final as a shredding.
            Err(KmsError::Destroyed { .. }) => {
                self.subject_cache
                    .lock()
                    .by_version
                    .insert((*token, version), CachedSubject::Erased);
                return Err(KeyError::Erased { version });
            }
            Err(e) => return Err(e.into()),
        };
        bump(&self.stats.decrypts);
        let dek = Arc::new(Dek::new(
            key,
            KeyRef::Subject {
                token: *token,
                version,
            },
        ));
        let mut cache = self.subject_cache.lock();
        if cache.generation == generation {
            cache
                .by_version
                .insert((*token, version), CachedSubject::Key(dek.clone()));
        }
        Ok(dek)
    }

    /// The data subject's current key, created on first use (a random DEK
    /// from the KMS under `kek_id`, stored durably before it is returned).
    /// After a shredding the subject gets a fresh key version.
    pub async fn subject_key(&self, subject_id: &[u8], kek_id: &str) -> Result<Arc<Dek>, KeyError> {
        let store = self.store()?.clone();
        let token = store.token(subject_id);
        if let Some(dek) = self.subject_cache.lock().current.get(&token) {
            bump(&self.stats.hits);
            return Ok(dek);
        }
        let _creating = self.subject_locks[usize::from(token[0]) % SUBJECT_LOCK_SHARDS]
            .lock()
            .await;
        if let Some(dek) = self.subject_cache.lock().current.get(&token) {
            bump(&self.stats.hits);
            return Ok(dek);
        }
        bump(&self.stats.misses);
        let generation = self.subject_cache.generation();
        let context = subject_context(&token);
        let seen = store.current(&token).await?;
        let current = match &seen {
            Some((version, wrapped)) => {
                match self.kms.decrypt_data_key(wrapped, &context).await {
                    Ok(key) => {
                        bump(&self.stats.decrypts);
                        Some((*version, key))
                    }
                    // The KEK version that wrapped it was destroyed: that key
                    // is lost, so the subject gets a new version, as after a
                    // shredding.
                    Err(KmsError::Destroyed { .. }) => None,
                    Err(e) => return Err(e.into()),
                }
            }
            None => None,
        };
        let (version, key) = match current {
            Some(found) => found,
            None => {
                let data_key = self.kms.generate_data_key(kek_id, &context).await?;
                bump(&self.stats.generated);
                let wrapped = data_key.wrapped;
                let (version, kept) = store.create(&token, &wrapped, seen.map(|(v, _)| v)).await?;
                if kept == wrapped {
                    bump(&self.stats.subject_created);
                    (version, data_key.plaintext)
                } else {
                    // Another gateway sharing the store created the subject's
                    // key first: everyone must use that one.
                    let key = self.kms.decrypt_data_key(&kept, &context).await?;
                    bump(&self.stats.decrypts);
                    (version, key)
                }
            }
        };
        let dek = Arc::new(Dek::new(key, KeyRef::Subject { token, version }));
        let mut cache = self.subject_cache.lock();
        if cache.generation == generation {
            cache.current.insert(token, dek.clone());
            cache
                .by_version
                .insert((token, version), CachedSubject::Key(dek.clone()));
        }
        Ok(dek)
    }

    /// Drops every cached key that `kek_id` version `version` may have
    /// unwrapped: called when that version is destroyed, so this process
    /// stops revealing what it protected instead of serving cached copies.
    pub fn forget_kek_version(&self, kek_id: &str, version: u32) {
        self.decrypt_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            // Which KEK wrapped a stored DEK is not kept: all go, and the
            // next use asks the store and the KMS again.
            .retain(|r| match r {
                KeyRef::Wrapped(w) => !(w.kek_id == kek_id && w.kek_version == version),
                _ => false,
            });
        self.subject_cache.forget_all();
    }

    /// How many unwrapped keys the decryption and subject caches hold.
    pub fn cached_keys(&self) -> usize {
        let dec = self
            .decrypt_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        let subj = self.subject_cache.lock();
        dec + subj.current.len() + subj.by_version.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::{LocalKeyring, MasterKey};
    use crate::kms::{DataKey, WrappedKey};
    use async_trait::async_trait;
    use std::sync::atomic::AtomicU32;

    /// Counts calls into a real keyring, optionally slowly.
    struct Counting {
        inner: Arc<LocalKeyring>,
        generates: AtomicU32,
        decrypts: AtomicU32,
        delay: Duration,
    }

    #[async_trait]
    impl Kms for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }
        async fn generate_data_key(
            &self,
            kek_id: &str,
            context: &EncryptionContext,
        ) -> Result<DataKey, KmsError> {
            self.generates.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.inner.generate_data_key(kek_id, context).await
        }
        async fn decrypt_data_key(
            &self,
            wrapped: &WrappedKey,
            context: &EncryptionContext,
        ) -> Result<Zeroizing<[u8; DEK_LEN]>, KmsError> {
            self.decrypts.fetch_add(1, Ordering::SeqCst);
            self.inner.decrypt_data_key(wrapped, context).await
        }
        async fn rewrap(
            &self,
            wrapped: &WrappedKey,
            to: Option<&str>,
            context: &EncryptionContext,
        ) -> Result<WrappedKey, KmsError> {
            self.inner.rewrap(wrapped, to, context).await
        }
    }

    struct Fixture {
        dir: tempfile::TempDir,
        keyring: Arc<LocalKeyring>,
        kms: Arc<Counting>,
    }

    fn fixture(delay: Duration) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let keyring = Arc::new(
            LocalKeyring::init(
                &dir.path().join("keyring.json"),
                MasterKey::from_bytes([5; 32]),
            )
            .expect("init"),
        );
        keyring.create("k").expect("create");
        let kms = Arc::new(Counting {
            inner: keyring.clone(),
            generates: AtomicU32::new(0),
            decrypts: AtomicU32::new(0),
            delay,
        });
        Fixture { dir, keyring, kms }
    }

    fn ctx(topic: &str) -> EncryptionContext {
        [("topic".to_owned(), topic.to_owned())]
            .into_iter()
            .collect()
    }

    fn rotation(max_encryptions: u64, max_age: Duration) -> Rotation {
        Rotation {
            max_encryptions,
            max_age,
        }
    }

    #[test]
    fn rotation_limits_are_validated() {
        assert!(Rotation::default().validate().is_ok());
        assert!(rotation(1 << 32, Duration::from_secs(1))
            .validate()
            .is_err());
        assert!(rotation((1 << 32) - 1, Duration::from_secs(1))
            .validate()
            .is_ok());
        assert!(rotation(0, Duration::from_secs(1)).validate().is_err());
        assert!(rotation(5, Duration::ZERO).validate().is_err());
        let f = fixture(Duration::ZERO);
        assert!(matches!(
            KeyManager::new(f.kms, rotation(1 << 40, Duration::from_secs(1)), None),
            Err(KeyError::InvalidRotation(_))
        ));
    }

    #[tokio::test]
    async fn rotates_after_max_encryptions() {
        let f = fixture(Duration::ZERO);
        let km = KeyManager::new(f.kms.clone(), rotation(10, Duration::from_secs(3600)), None)
            .expect("km");
        let c = ctx("orders");
        let a = km.encryption_key("k", &c, 4).await.expect("a");
        let b = km.encryption_key("k", &c, 6).await.expect("b");
        assert!(Arc::ptr_eq(&a, &b), "10 uses fit in one key");
        let d = km.encryption_key("k", &c, 1).await.expect("d");
        assert!(!Arc::ptr_eq(&a, &d), "the 11th use needs a new key");
        assert_ne!(a.key(), d.key());
        assert_ne!(a.key_ref(), d.key_ref());
        // Another context is another slot.
        let other = km.encryption_key("k", &ctx("pay"), 1).await.expect("o");
        assert!(!Arc::ptr_eq(&d, &other));
        assert!(matches!(
            km.encryption_key("k", &c, 11).await,
            Err(KeyError::BatchTooLarge { uses: 11, max: 10 })
        ));
        assert_eq!(
            km.stats(),
            KeyStats {
                cache_hits: 1,
                cache_misses: 3,
                deks_generated: 3,
                subject_keys_created: 0,
                kms_decrypts: 0,
            }
        );
        assert_eq!(f.kms.generates.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn rotates_after_max_age() {
        let f = fixture(Duration::ZERO);
        let km = KeyManager::new(f.kms.clone(), rotation(1000, Duration::from_secs(60)), None)
            .expect("km");
        let c = ctx("orders");
        let a = km.encryption_key("k", &c, 1).await.expect("a");
        tokio::time::sleep(Duration::from_secs(59)).await;
        let b = km.encryption_key("k", &c, 1).await.expect("b");
        assert!(Arc::ptr_eq(&a, &b));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let d = km.encryption_key("k", &c, 1).await.expect("d");
        assert!(!Arc::ptr_eq(&a, &d));
        assert_eq!(km.stats().deks_generated, 2);
    }

    #[tokio::test]
    async fn kek_rotation_replaces_the_cached_dek_and_old_data_still_decrypts() {
        let f = fixture(Duration::ZERO);
        let km = KeyManager::new(f.kms.clone(), Rotation::default(), None)
            .expect("km")
            .with_kek_versions(f.keyring.clone());
        let c = ctx("orders");
        let a = km.encryption_key("k", &c, 1).await.expect("a");
        f.keyring.rotate("k").expect("rotate");
        let b = km.encryption_key("k", &c, 1).await.expect("b");
        let version = |d: &Dek| match d.key_ref() {
            KeyRef::Wrapped(w) => w.kek_version,
            _ => 0,
        };
        assert_eq!((version(&a), version(&b)), (1, 2));
        // A fresh manager (another instance) decrypts both from the refs alone.
        let other = KeyManager::new(f.kms.clone(), Rotation::default(), None).expect("km");
        for d in [&a, &b] {
            let back = other.decryption_key(d.key_ref(), &c).await.expect("dec");
            assert_eq!(back.key(), d.key());
        }
    }

    #[tokio::test]
    async fn decryption_cache_hits_and_context_is_still_checked() {
        let f = fixture(Duration::ZERO);
        let producer = KeyManager::new(f.kms.clone(), Rotation::default(), None).expect("km");
        let c = ctx("orders");
        let dek = producer.encryption_key("k", &c, 1).await.expect("enc");
        let consumer = KeyManager::new(f.kms.clone(), Rotation::default(), None).expect("km");
        for _ in 0..5 {
            let d = consumer
                .decryption_key(dek.key_ref(), &c)
                .await
                .expect("dec");
            assert_eq!(d.key(), dek.key());
        }
        assert_eq!(f.kms.decrypts.load(Ordering::SeqCst), 1);
        let s = consumer.stats();
        assert_eq!((s.cache_hits, s.cache_misses, s.kms_decrypts), (4, 1, 1));
        // Cached under "orders": asking with another context goes to the KMS,
        // which refuses.
        let err = consumer
            .decryption_key(dek.key_ref(), &ctx("payments"))
            .await
            .expect_err("wrong context");
        assert!(
            matches!(err, KeyError::Kms(KmsError::Rejected(_))),
            "{err:?}"
        );
        assert!(!err.retryable());
        // The producer's own fresh key is already in its decryption cache.
        producer
            .decryption_key(dek.key_ref(), &c)
            .await
            .expect("own key");
        assert_eq!(f.kms.decrypts.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_generate() {
        let f = fixture(Duration::from_millis(50));
        let km = Arc::new(KeyManager::new(f.kms.clone(), Rotation::default(), None).expect("km"));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let km = km.clone();
                tokio::spawn(async move { km.encryption_key("k", &ctx("t"), 1).await })
            })
            .collect();
        let mut keys = Vec::new();
        for t in tasks {
            keys.push(t.await.expect("join").expect("key"));
        }
        assert!(keys.iter().all(|k| Arc::ptr_eq(k, &keys[0])));
        assert_eq!(f.kms.generates.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn two_generation_cache_is_bounded_and_keeps_recent_entries() {
        let mut c: TwoGen<u32, u32> = TwoGen::new(10);
        for i in 0..5 {
            c.insert(i, i);
        }
        assert_eq!(c.get(&0), Some(0));
        for i in 5..100 {
            c.insert(i, i);
            // Keep 0 hot.
            assert_eq!(c.get(&0), Some(0));
            assert!(c.len() <= 10);
        }
        assert_eq!(c.get(&1), None);
        assert_eq!(c.get(&99), Some(99));
    }

    #[test]
    fn dek_debug_redacts() {
        let d = Dek::new(
            Zeroizing::new([0xab; DEK_LEN]),
            KeyRef::Subject {
                token: [1; 32],
                version: 3,
            },
        );
        let s = format!("{d:?}");
        assert!(!s.contains("171"), "{s}");
        assert!(s.contains("version: 3"), "{s}");
    }

    fn store(f: &Fixture) -> Arc<crate::subject_store::SubjectKeyStore> {
        Arc::new(
            crate::subject_store::SubjectKeyStore::open(&f.dir.path().join("subjects"), &[9; 32])
                .expect("store"),
        )
    }

    #[tokio::test]
    async fn subject_keys_shred_and_survive_reopening() {
        let f = fixture(Duration::ZERO);
        let subjects = store(&f);
        let km = KeyManager::new(f.kms.clone(), Rotation::default(), Some(subjects.clone()))
            .expect("km");
        let alice = km.subject_key(b"alice", "k").await.expect("alice");
        let again = km.subject_key(b"alice", "k").await.expect("alice");
        assert!(Arc::ptr_eq(&alice, &again));
        let bob = km.subject_key(b"bob", "k").await.expect("bob");
        assert_ne!(alice.key(), bob.key());
        let token = subjects.token(b"alice");
        assert_eq!(alice.key_ref(), &KeyRef::Subject { token, version: 1 });
        let s = km.stats();
        assert_eq!((s.subject_keys_created, s.deks_generated), (2, 2));
        let back = km
            .decryption_key(alice.key_ref(), &EncryptionContext::new())
            .await
            .expect("dec");
        assert_eq!(back.key(), alice.key());

        let receipt = subjects.shred(b"alice").expect("shred");
        assert_eq!(receipt.versions_destroyed, vec![1]);
        assert_eq!(receipt.token_hex, crate::subject_store::hex(&token));
        // Effective at once in this process, though the key was cached.
        let err = km
            .decryption_key(alice.key_ref(), &EncryptionContext::new())
            .await
            .expect_err("erased");
        assert!(matches!(err, KeyError::Erased { version: 1 }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "the data subject's key (version 1) was erased"
        );
        // Bob is untouched.
        let b = km
            .decryption_key(bob.key_ref(), &EncryptionContext::new())
            .await
            .expect("bob");
        assert_eq!(b.key(), bob.key());
        // Alice's next record gets a fresh key version.
        let fresh = km.subject_key(b"alice", "k").await.expect("fresh");
        assert_eq!(fresh.key_ref(), &KeyRef::Subject { token, version: 2 });
        assert_ne!(fresh.key(), alice.key());
        let unknown = KeyRef::Subject { token, version: 7 };
        assert!(matches!(
            km.decryption_key(&unknown, &EncryptionContext::new()).await,
            Err(KeyError::UnknownSubjectKey)
        ));

        // Reopen everything: the shredding was durable.
        drop(km);
        drop(subjects);
        let subjects = store(&f);
        let km = KeyManager::new(f.kms.clone(), Rotation::default(), Some(subjects.clone()))
            .expect("km");
        assert!(matches!(
            km.decryption_key(alice.key_ref(), &EncryptionContext::new())
                .await,
            Err(KeyError::Erased { version: 1 })
        ));
        let again = km
            .decryption_key(fresh.key_ref(), &EncryptionContext::new())
            .await
            .expect("v2");
        assert_eq!(again.key(), fresh.key());
        let current = km.subject_key(b"alice", "k").await.expect("current");
        assert_eq!(current.key(), fresh.key());
    }

    #[tokio::test]
    async fn rewrap_moves_subject_keys_to_the_current_kek_version() {
        let f = fixture(Duration::ZERO);
        let subjects = store(&f);
        let km = KeyManager::new(f.kms.clone(), Rotation::default(), Some(subjects.clone()))
            .expect("km");
        let mut keys = Vec::new();
        for s in [&b"a"[..], b"b", b"c"] {
            keys.push(km.subject_key(s, "k").await.expect("key"));
        }
        subjects.shred(b"c").expect("shred");
        assert_eq!(
            subjects.report().expect("report"),
            vec![("k".to_owned(), 1, 2)]
        );
        f.keyring.rotate("k").expect("rotate");
        let report = subjects.rewrap_all(f.kms.as_ref()).await.expect("rewrap");
        assert_eq!((report.rewrapped, report.skipped), (2, 0));
        assert!(report.failed.is_empty());
        assert_eq!(
            subjects.report().expect("report"),
            vec![("k".to_owned(), 2, 2)]
        );
        // v1 can now be retired; the keys still unwrap (fresh cache).
        f.keyring.retire("k", 1).expect("retire");
        let other = KeyManager::new(f.kms.clone(), Rotation::default(), Some(subjects.clone()))
            .expect("km");
        for k in &keys[..2] {
            let back = other
                .decryption_key(k.key_ref(), &EncryptionContext::new())
                .await
                .expect("unwrap");
            assert_eq!(back.key(), k.key());
        }
    }

    #[tokio::test]
    async fn a_destroyed_kek_version_erases_its_keys_even_when_cached() {
        let f = fixture(Duration::ZERO);
        let subjects = store(&f);
        let km = KeyManager::new(f.kms.clone(), Rotation::default(), Some(subjects.clone()))
            .expect("km")
            .with_kek_versions(f.keyring.clone());
        let topic_key = km.encryption_key("k", &ctx("t"), 1).await.expect("topic");
        let alice = km.subject_key(b"alice", "k").await.expect("alice");
        f.keyring.rotate("k").expect("rotate");
        f.keyring.retire("k", 1).expect("retire");
        f.keyring.destroy("k", 1).expect("destroy");
        // Until told, the cache still serves v1's keys ...
        assert!(km
            .decryption_key(topic_key.key_ref(), &ctx("t"))
            .await
            .is_ok());
        km.forget_kek_version("k", 1);
        // ... after that, nothing under v1 opens.
        let err = km
            .decryption_key(topic_key.key_ref(), &ctx("t"))
            .await
            .expect_err("destroyed");
        assert!(
            matches!(err, KeyError::Kms(KmsError::Destroyed { version: 1, .. })),
            "{err:?}"
        );
        assert!(matches!(
            km.decryption_key(alice.key_ref(), &EncryptionContext::new())
                .await,
            Err(KeyError::Erased { version: 1 })
        ));
        // Alice's next record gets a new key version under v2.
        let next = km.subject_key(b"alice", "k").await.expect("new key");
        assert_ne!(next.key(), alice.key());
        let token = subjects.token(b"alice");
        assert_eq!(next.key_ref(), &KeyRef::Subject { token, version: 2 });
        assert_eq!(
            subjects.report().expect("report"),
            vec![("k".to_owned(), 1, 1), ("k".to_owned(), 2, 1)]
        );
    }

    #[tokio::test]
    async fn subject_keys_need_a_store() {
        let f = fixture(Duration::ZERO);
        let km = KeyManager::new(f.kms.clone(), Rotation::default(), None).expect("km");
        assert!(matches!(
            km.subject_key(b"alice", "k").await,
            Err(KeyError::NoSubjectStore)
        ));
    }

    #[tokio::test]
    async fn stored_deks_are_named_by_id_and_open_from_the_store_alone() {
        let f = fixture(Duration::ZERO);
        assert!(matches!(
            KeyManager::new(f.kms.clone(), Rotation::default(), None)
                .expect("km")
                .with_stored_deks(),
            Err(KeyError::NoSubjectStore)
        ));
        let subjects = store(&f);
        let km = KeyManager::new(f.kms.clone(), Rotation::default(), Some(subjects.clone()))
            .expect("km")
            .with_stored_deks()
            .expect("stored");
        let c = ctx("orders");
        let a = km.encryption_key("k", &c, 1).await.expect("a");
        let KeyRef::Stored(id) = a.key_ref().clone() else {
            panic!("not a stored reference: {:?}", a.key_ref());
        };
        // Durable before it was handed out, with the context it needs.
        let kept = subjects
            .stored_dek(&id)
            .await
            .expect("read")
            .expect("stored");
        assert_eq!(kept.context, c);
        assert_eq!(kept.wrapped.kek_version, 1);
        let born = kept.created;
        assert!(born > 1_700_000_000, "created is a real time: {born}");
        assert_eq!(
            subjects.dek_report().await.expect("report"),
            vec![("k".into(), 1, 1)]
        );
        // Another gateway over the same store opens it from the id alone;
        // under another topic's context the KMS refuses.
        let other = KeyManager::new(f.kms.clone(), Rotation::default(), Some(subjects.clone()))
            .expect("km");
        let back = other.decryption_key(a.key_ref(), &c).await.expect("dec");
        assert_eq!(back.key(), a.key());
        assert_eq!(
            (other.stats().cache_misses, other.stats().kms_decrypts),
            (1, 1)
        );
        let again = other.decryption_key(a.key_ref(), &c).await.expect("cached");
        assert!(Arc::ptr_eq(&again, &back));
        assert_eq!(other.stats().cache_hits, 1);
        assert!(matches!(
            other.decryption_key(a.key_ref(), &ctx("people")).await,
            Err(KeyError::Kms(KmsError::Rejected(_)))
        ));
        let unknown = KeyRef::Stored([0xEE; crate::key_ref::DEK_ID_LEN]);
        assert!(matches!(
            other.decryption_key(&unknown, &c).await,
            Err(KeyError::UnknownStoredDek)
        ));
        // A KEK rotation and a rewrap move the stored DEK to the new version;
        // what was sealed under it still opens, in a fresh manager too.
        f.keyring.rotate("k").expect("rotate");
        let report = subjects.rewrap_all(f.kms.as_ref()).await.expect("rewrap");
        assert_eq!(
            (report.rewrapped, report.deks_rewrapped, report.failed.len()),
            (0, 1, 0)
        );
        let kept = subjects
            .stored_dek(&id)
            .await
            .expect("read")
            .expect("stored");
        assert_eq!(kept.wrapped.kek_version, 2);
        // Re-wrapped, not re-made: the key's birth time stays.
        assert_eq!(kept.created, born);
        f.keyring.retire("k", 1).expect("retire");
        f.keyring.destroy("k", 1).expect("destroy");
        let fresh = KeyManager::new(f.kms.clone(), Rotation::default(), Some(subjects.clone()))
            .expect("km");
        let back = fresh.decryption_key(a.key_ref(), &c).await.expect("dec");
        assert_eq!(back.key(), a.key());
    }
}
