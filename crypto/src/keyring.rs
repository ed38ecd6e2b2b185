//! The embedded local keyring: the default KMS, a file of versioned KEKs.
//!
//! A deployment without a cloud KMS still needs key-encryption keys that never
//! sit on disk in plaintext, that rotate without downtime, and that a running
//! proxy picks up when an operator rotates them from the `custos keys` CLI in
//! another process. So the keyring is a small JSON file whose KEK versions are
//! each AES-256-GCM-encrypted under a master key kept elsewhere (a file or an
//! environment variable); every version's associated data names its key and
//! version, so entries cannot be swapped or renamed. Old versions stay in the
//! file (retired ones unwrap old DEKs but never wrap new ones), and the proxy
//! re-reads the file when it changes. A retired version can finally be
//! destroyed: its encrypted key bytes leave the file, so every DEK it wrapped,
//! and every record under those DEKs, is unrecoverable (copies of the file
//! made before, such as backups, still hold it).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::keys::KekVersionSource;
use crate::kms::{DataKey, EncryptionContext, Kms, KmsError, WrappedKey, DEK_LEN};

/// Length of a KEK and of the master key in bytes (AES-256).
pub const KEK_LEN: usize = 32;
/// Length of the AES-GCM tag appended to every ciphertext.
const TAG_LEN: usize = 16;
/// Length of a wrapped DEK blob: nonce ‖ encrypted DEK ‖ tag.
pub const WRAPPED_DEK_LEN: usize = NONCE_LEN + DEK_LEN + TAG_LEN;
/// The keyring file format this code writes and reads.
const FORMAT: u32 = 1;
/// A running keyring looks at the file's metadata at most this often.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// Longest KEK name accepted.
const MAX_NAME_LEN: usize = 128;
/// Domain separators, so the three uses of AES-GCM and the check value never
/// share an input format.
const KEK_AAD_LABEL: &[u8] = b"custos-keyring-kek-v1";
const DEK_AAD_LABEL: &[u8] = b"custos-keyring-dek-v1";
const CHECK_LABEL: &[u8] = b"custos-keyring master-key check v1";

/// Why a keyring operation failed. Messages name files, key names and
/// versions, never key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    /// Reading or writing a file failed.
    #[error("could not {op} {path}: {source}")]
    Io {
        /// What was being done ("read", "write", "rename", ...).
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The master key's environment variable is not set.
    #[error("master key not found: {origin} is not set")]
    MasterKeyMissing {
        /// Where the key was looked for.
        origin: String,
    },
    /// The master key source holds something that is not a 32-byte key.
    #[error("master key from {origin} is unusable: {why}")]
    MasterKeyFormat {
        /// Where the key came from.
        origin: String,
        /// What is wrong with it (never its content).
        why: String,
    },
    /// The master key does not match the one the keyring was created with.
    #[error("the master key from {origin} does not open keyring {path} (wrong master key)")]
    WrongMasterKey {
        /// Where the key came from.
        origin: String,
        /// The keyring file.
        path: PathBuf,
    },
    /// The file is not a keyring this code can read.
    #[error("keyring {path} is malformed: {why}")]
    Corrupt {
        /// The keyring file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A KEK entry did not authenticate under the (correct) master key.
    #[error("KEK {name} version {version} failed authentication: the keyring entry was tampered with or moved")]
    KekRejected {
        /// The key's name.
        name: String,
        /// The version whose entry is bad.
        version: u32,
    },
    /// `init` found a keyring file already there.
    #[error("keyring {path} already exists")]
    AlreadyExists {
        /// The keyring file.
        path: PathBuf,
    },
    /// `create` was asked for a name already in the keyring.
    #[error("KEK {name} already exists")]
    KeyExists {
        /// The key's name.
        name: String,
    },
    /// No KEK of that name.
    #[error("KEK {name} does not exist")]
    UnknownKek {
        /// The key's name.
        name: String,
    },
    /// The KEK has no such version.
    #[error("KEK {name} has no version {version}")]
    UnknownVersion {
        /// The key's name.
        name: String,
        /// The version asked for.
        version: u32,
    },
    /// Retiring this version would leave no active version to wrap new DEKs.
    #[error("KEK {name} version {version} is the current version; rotate before retiring it")]
    CannotRetireCurrent {
        /// The key's name.
        name: String,
        /// The current version.
        version: u32,
    },
    /// Only a retired version may be destroyed.
    #[error("KEK {name} version {version} is {state}; retire it before destroying it")]
    CannotDestroyUnretired {
        /// The key's name.
        name: String,
        /// The version asked for.
        version: u32,
        /// Its state.
        state: KekState,
    },
    /// A KEK name outside the accepted alphabet or length.
    #[error("invalid KEK name {name:?}: use 1-128 characters from A-Z a-z 0-9 . _ - / :")]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// The system random generator or the cipher failed.
    #[error("cryptographic failure: {0}")]
    Crypto(&'static str),
}

/// Where a master key came from, for error messages.
fn describe_file(path: &Path) -> String {
    format!("file {}", path.display())
}

/// The key that encrypts every KEK in the keyring file.
pub struct MasterKey {
    key: Zeroizing<[u8; KEK_LEN]>,
    source: String,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("MasterKey")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// A master key from bytes already in memory (tests, or a caller's own source).
    pub fn from_bytes(key: [u8; KEK_LEN]) -> Self {
        Self {
            key: Zeroizing::new(key),
            source: "in-memory key".to_owned(),
        }
    }

    /// Reads a master key file: exactly 32 raw bytes, or 64 hex characters
    /// (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<Self, KeyringError> {
        let source = describe_file(path);
        let mut raw = Zeroizing::new(Vec::new());
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut raw))
            .map_err(|e| KeyringError::Io {
                op: "read master key",
                path: path.to_owned(),
                source: e,
            })?;
        if raw.len() == KEK_LEN {
            let mut key = Zeroizing::new([0u8; KEK_LEN]);
            key.copy_from_slice(&raw);
            return Ok(Self { key, source });
        }
        let text = raw.trim_ascii();
        match decode_hex_key(text) {
            Some(key) => Ok(Self { key, source }),
            None => Err(KeyringError::MasterKeyFormat {
                origin: source,
                why: format!(
                    "expected 32 raw bytes or 64 hex characters, found {} bytes",
                    raw.len()
                ),
            }),
        }
    }

    /// Reads a master key from an environment variable holding 64 hex
    /// characters or the standard base64 of 32 bytes.
    pub fn from_env(var: &str) -> Result<Self, KeyringError> {
        let source = format!("environment variable {var}");
        let value = match std::env::var(var) {
            Ok(v) => Zeroizing::new(v),
            Err(std::env::VarError::NotPresent) => {
                return Err(KeyringError::MasterKeyMissing { origin: source })
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(KeyringError::MasterKeyFormat {
                    origin: source,
                    why: "not valid UTF-8".to_owned(),
                })
            }
        };
        Self::parse_text(value.trim().as_bytes(), source)
    }

    /// Parses hex or base64 text; `source` names where it came from.
    fn parse_text(text: &[u8], source: String) -> Result<Self, KeyringError> {
        if let Some(key) = decode_hex_key(text) {
            return Ok(Self { key, source });
        }
        // The decoder's own error would quote an offending byte of the key.
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| KeyringError::MasterKeyFormat {
                    origin: source.clone(),
                    why: "expected 64 hex characters or base64 of 32 bytes".to_owned(),
                })?,
        );
        if decoded.len() != KEK_LEN {
            return Err(KeyringError::MasterKeyFormat {
                origin: source,
                why: format!("base64 decodes to {} bytes, not 32", decoded.len()),
            });
        }
        let mut key = Zeroizing::new([0u8; KEK_LEN]);
        key.copy_from_slice(&decoded);
        Ok(Self { key, source })
    }

    /// Where this key came from ("file /etc/custos/master.key", ...).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The public check value stored in the file, so a wrong master key is
    /// told apart from a tampered entry.
    fn check_value(&self) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key[..])
            .expect("HMAC accepts any key length");
        mac.update(CHECK_LABEL);
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }

    fn aead(&self) -> Result<LessSafeKey, KeyringError> {
        aead_key(&self.key[..]).map_err(|()| KeyringError::Crypto("master key setup"))
    }
}

/// 64 hex characters to 32 bytes, or `None`.
fn decode_hex_key(text: &[u8]) -> Option<Zeroizing<[u8; KEK_LEN]>> {
    if text.len() != 2 * KEK_LEN {
        return None;
    }
    let mut key = Zeroizing::new([0u8; KEK_LEN]);
    for (i, pair) in text.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        key[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(key)
}

/// Whether a KEK version may wrap new DEKs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum KekState {
    /// Wraps new DEKs (if newest) and unwraps old ones.
    Active,
    /// Only unwraps DEKs wrapped before it was retired.
    Retired,
    /// Its key bytes are gone: it unwraps nothing, ever again.
    Destroyed,
}

impl std::fmt::Display for KekState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KekState::Active => "active",
            KekState::Retired => "retired",
            KekState::Destroyed => "destroyed",
        })
    }
}

/// One KEK version as `list` reports it (no key bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KekInfo {
    /// The key's name.
    pub name: String,
    /// The version number (from 1).
    pub version: u32,
    /// Active or retired.
    pub state: KekState,
    /// Creation time, Unix seconds.
    pub created: u64,
    /// Whether this version wraps new DEKs (the newest active version).
    pub current: bool,
}

/// The file as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    format: u32,
    master_check: String,
    keys: BTreeMap<String, Vec<StoredVersion>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredVersion {
    version: u32,
    state: KekState,
    created: u64,
    /// base64 of nonce ‖ encrypted KEK ‖ tag under the master key; empty
    /// once destroyed.
    wrapped: String,
}

/// What identifies one written state of the file, to notice another
/// process's rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
        }
    }
}

/// A decrypted KEK version, ready to wrap and unwrap.
struct Kek {
    key: LessSafeKey,
    state: KekState,
}

/// The keyring as last read from disk.
struct Loaded {
    file: KeyringFile,
    keks: BTreeMap<(String, u32), Kek>,
    stamp: FileStamp,
}

impl Loaded {
    /// The newest active version of `name`.
    fn current(&self, name: &str) -> Option<u32> {
        current_version(&self.file, name)
    }
}

fn current_version(file: &KeyringFile, name: &str) -> Option<u32> {
    file.keys.get(name).and_then(|versions| {
        versions
            .iter()
            .filter(|v| v.state == KekState::Active)
            .map(|v| v.version)
            .max()
    })
}

/// The embedded local keyring (see the module docs). Implements [`Kms`].
pub struct LocalKeyring {
    path: PathBuf,
    master: MasterKey,
    state: RwLock<Arc<Loaded>>,
    /// Milliseconds since `epoch` of the last metadata check.
    last_check_ms: AtomicU64,
    epoch: Instant,
    /// Serialises this process's writers (the CLI and tests).
    write_lock: Mutex<()>,
    last_reload_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for LocalKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("LocalKeyring")
            .field("path", &self.path)
            .field("master", &self.master)
            .finish_non_exhaustive()
    }
}

impl LocalKeyring {
    /// Creates a new, empty keyring file (mode 0600) and opens it.
    pub fn init(path: &Path, master: MasterKey) -> Result<Self, KeyringError> {
        if path.exists() {
            return Err(KeyringError::AlreadyExists {
                path: path.to_owned(),
            });
        }
        let file = KeyringFile {
            format: FORMAT,
            master_check: master.check_value(),
            keys: BTreeMap::new(),
        };
        write_atomically(path, &file)?;
        Self::open(path, master)
    }

    /// Opens an existing keyring file, decrypting every KEK version.
    pub fn open(path: &Path, master: MasterKey) -> Result<Self, KeyringError> {
        let loaded = load(path, &master)?;
        Ok(Self {
            path: path.to_owned(),
            master,
            state: RwLock::new(Arc::new(loaded)),
            last_check_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            write_lock: Mutex::new(()),
            last_reload_error: Mutex::new(None),
        })
    }

    /// Opens the keyring, creating an empty one if the file does not exist.
    pub fn open_or_init(path: &Path, master: MasterKey) -> Result<Self, KeyringError> {
        if path.exists() {
            Self::open(path, master)
        } else {
            Self::init(path, master)
        }
    }

    /// The keyring file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds a new KEK with version 1, active.
    pub fn create(&self, name: &str) -> Result<KekInfo, KeyringError> {
        validate_name(name)?;
        let version = 1;
        let created = now_secs();
        self.mutate(|file, master| {
            if file.keys.contains_key(name) {
                return Err(KeyringError::KeyExists {
                    name: name.to_owned(),
                });
            }
            let entry = new_version(master, name, version, created)?;
            file.keys.insert(name.to_owned(), vec![entry]);
            Ok(())
        })?;
        Ok(KekInfo {
            name: name.to_owned(),
            version,
            state: KekState::Active,
            created,
            current: true,
        })
    }

    /// Adds a new active version of `name`, which wraps all new DEKs from
    /// now on; returns its number. Older versions keep unwrapping.
    pub fn rotate(&self, name: &str) -> Result<u32, KeyringError> {
        self.mutate(|file, master| {
            let versions = file
                .keys
                .get_mut(name)
                .ok_or_else(|| KeyringError::UnknownKek {
                    name: name.to_owned(),
                })?;
            let version = versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
            versions.push(new_version(master, name, version, now_secs())?);
            Ok(version)
        })
    }

    /// Marks a version retired: it still unwraps, never wraps. The current
    /// version cannot be retired (rotate first). Retiring twice is a no-op.
    pub fn retire(&self, name: &str, version: u32) -> Result<(), KeyringError> {
        self.mutate(|file, _| {
            let current = current_version(file, name);
            let entry = stored_version(file, name, version)?;
            // Retired already, or destroyed (which must stay destroyed: a
            // "retired" entry without key bytes would not load).
            if entry.state != KekState::Active {
                return Ok(());
            }
            if current == Some(version) {
                return Err(KeyringError::CannotRetireCurrent {
                    name: name.to_owned(),
                    version,
                });
            }
            entry.state = KekState::Retired;
            Ok(())
        })
    }

    /// Destroys a retired version: its key bytes leave the file, so every DEK
    /// it wrapped (and all data under those DEKs) becomes unrecoverable.
    /// Irreversible. Destroying twice is a no-op.
    pub fn destroy(&self, name: &str, version: u32) -> Result<(), KeyringError> {
        self.mutate(|file, _| {
            let entry = stored_version(file, name, version)?;
            match entry.state {
                KekState::Destroyed => Ok(()),
                KekState::Active => Err(KeyringError::CannotDestroyUnretired {
                    name: name.to_owned(),
                    version,
                    state: entry.state,
                }),
                KekState::Retired => {
                    entry.state = KekState::Destroyed;
                    entry.wrapped.clear();
                    Ok(())
                }
            }
        })
    }

    /// Every KEK version in the file, by name then version (no key bytes).
    pub fn list(&self) -> Result<Vec<KekInfo>, KeyringError> {
        self.reload_now()?;
        let loaded = self.snapshot_no_check();
        let mut out = Vec::new();
        for (name, versions) in &loaded.file.keys {
            let current = loaded.current(name);
            let mut versions: Vec<_> = versions.iter().collect();
            versions.sort_by_key(|v| v.version);
            for v in versions {
                out.push(KekInfo {
                    name: name.clone(),
                    version: v.version,
                    state: v.state,
                    created: v.created,
                    current: current == Some(v.version),
                });
            }
        }
        Ok(out)
    }

    /// The newest active version of `name`, after picking up any change on disk.
    pub fn current_version(&self, name: &str) -> Option<u32> {
        self.snapshot().current(name)
    }

    /// The last failed reload, if the file on disk is currently unreadable
    /// (the keyring keeps serving the last good state meanwhile).
    pub fn last_reload_error(&self) -> Option<String> {
        self.last_reload_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Re-reads the file now, whatever its stamp.
    pub fn reload_now(&self) -> Result<(), KeyringError> {
        let loaded = load(&self.path, &self.master)?;
        self.install(loaded);
        Ok(())
    }

    fn install(&self, loaded: Loaded) {
        let mut guard = self.state.write().unwrap_or_else(|p| p.into_inner());
        *guard = Arc::new(loaded);
        drop(guard);
        let mut err = self
            .last_reload_error
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *err = None;
    }

    fn snapshot_no_check(&self) -> Arc<Loaded> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The current state, re-read first if the file changed (checked at most
    /// once per [`RELOAD_INTERVAL`]).
    fn snapshot(&self) -> Arc<Loaded> {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_check_ms.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= RELOAD_INTERVAL.as_millis() as u64 || last == 0;
        if due
            && self
                .last_check_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let _ = self.reload_if_changed();
        }
        self.snapshot_no_check()
    }

    /// Reloads when the file's length, mtime or inode moved. A file that
    /// fails to load leaves the last good state in place (its KEKs were
    /// authenticated) and is remembered in [`Self::last_reload_error`].
    fn reload_if_changed(&self) -> Result<(), KeyringError> {
        let stamp = match std::fs::metadata(&self.path) {
            Ok(meta) => FileStamp::of(&meta),
            Err(e) => {
                let err = KeyringError::Io {
                    op: "stat",
                    path: self.path.clone(),
                    source: e,
                };
                self.remember(&err);
                return Err(err);
            }
        };
        if stamp == self.snapshot_no_check().stamp {
            return Ok(());
        }
        match load(&self.path, &self.master) {
            Ok(loaded) => {
                self.install(loaded);
                Ok(())
            }
            Err(e) => {
                self.remember(&e);
                Err(e)
            }
        }
    }

    fn remember(&self, e: &KeyringError) {
        let mut err = self
            .last_reload_error
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *err = Some(e.to_string());
    }

    /// Applies `f` to the newest file content and writes the result
    /// atomically; this process then serves what it wrote.
    fn mutate<T>(
        &self,
        f: impl FnOnce(&mut KeyringFile, &MasterKey) -> Result<T, KeyringError>,
    ) -> Result<T, KeyringError> {
        let _writer = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = load(&self.path, &self.master)?;
        let mut file = fresh.file.clone();
        let out = f(&mut file, &self.master)?;
        write_atomically(&self.path, &file)?;
        self.reload_now()?;
        Ok(out)
    }

    /// The KEK for (name, version), re-reading the file once if it is unknown
    /// (another process may have rotated since the last check).
    fn kek(&self, name: &str, version: u32) -> Result<Arc<Loaded>, KmsError> {
        let snap = self.snapshot();
        if snap.keks.contains_key(&(name.to_owned(), version)) {
            return Ok(snap);
        }
        let _ = self.reload_if_changed();
        let snap = self.snapshot_no_check();
        if snap.keks.contains_key(&(name.to_owned(), version)) {
            return Ok(snap);
        }
        let destroyed = snap.file.keys.get(name).is_some_and(|vs| {
            vs.iter()
                .any(|v| v.version == version && v.state == KekState::Destroyed)
        });
        if destroyed {
            return Err(KmsError::Destroyed {
                kek_id: name.to_owned(),
                version,
            });
        }
        Err(KmsError::UnknownKey {
            kek_id: name.to_owned(),
            version,
            why: format!("not in keyring {}", self.path.display()),
        })
    }

    /// Wraps `dek` under the current version of `name`.
    fn wrap_current(
        &self,
        name: &str,
        context: &EncryptionContext,
        dek: &[u8; DEK_LEN],
    ) -> Result<WrappedKey, KmsError> {
        let mut snap = self.snapshot();
        if snap.current(name).is_none() {
            // Maybe created by the CLI less than a second ago.
            let _ = self.reload_if_changed();
            snap = self.snapshot_no_check();
        }
        let (version, kek) = snap
            .current(name)
            .and_then(|v| snap.keks.get(&(name.to_owned(), v)).map(|k| (v, k)))
            .ok_or_else(|| KmsError::UnknownKey {
                kek_id: name.to_owned(),
                version: 0,
                why: if snap.file.keys.contains_key(name) {
                    "it has no active version".to_owned()
                } else {
                    format!("no such key in keyring {}", self.path.display())
                },
            })?;
        debug_assert_eq!(kek.state, KekState::Active);
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce)
            .map_err(|_| KmsError::Other("system random generator failed".to_owned()))?;
        let blob = seal_dek(&kek.key, name, version, context, dek, nonce).map_err(|()| {
            KmsError::Other(format!(
                "wrapping under KEK {name} version {version} failed"
            ))
        })?;
        Ok(WrappedKey {
            kek_id: name.to_owned(),
            kek_version: version,
            blob,
        })
    }
}

impl KekVersionSource for LocalKeyring {
    fn current_version(&self, kek_id: &str) -> Option<u32> {
        LocalKeyring::current_version(self, kek_id)
    }
}

#[async_trait]
impl Kms for LocalKeyring {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn generate_data_key(
        &self,
        kek_id: &str,
        context: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        let mut plaintext = Zeroizing::new([0u8; DEK_LEN]);
        aws_lc_rs::rand::fill(&mut plaintext[..])
            .map_err(|_| KmsError::Other("system random generator failed".to_owned()))?;
        let wrapped = self.wrap_current(kek_id, context, &plaintext)?;
        Ok(DataKey { plaintext, wrapped })
    }

    async fn decrypt_data_key(
        &self,
        wrapped: &WrappedKey,
        context: &EncryptionContext,
    ) -> Result<Zeroizing<[u8; DEK_LEN]>, KmsError> {
        let snap = self.kek(&wrapped.kek_id, wrapped.kek_version)?;
        let kek = snap
            .keks
            .get(&(wrapped.kek_id.clone(), wrapped.kek_version))
            .ok_or_else(|| KmsError::Other("KEK vanished during unwrap".to_owned()))?;
        open_dek(
            &kek.key,
            &wrapped.kek_id,
            wrapped.kek_version,
            context,
            &wrapped.blob,
        )
        .map_err(|()| {
            KmsError::Rejected(format!(
                "DEK under KEK {} version {} did not authenticate (wrong encryption context, or tampered)",
                wrapped.kek_id, wrapped.kek_version
            ))
        })
    }

    async fn rewrap(
        &self,
        wrapped: &WrappedKey,
        to_kek_id: Option<&str>,
        context: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        let dek = self.decrypt_data_key(wrapped, context).await?;
        self.wrap_current(to_kek_id.unwrap_or(&wrapped.kek_id), context, &dek)
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn validate_name(name: &str) -> Result<(), KeyringError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(KeyringError::InvalidName {
            name: name.to_owned(),
        })
    }
}

fn aead_key(bytes: &[u8]) -> Result<LessSafeKey, ()> {
    UnboundKey::new(&AES_256_GCM, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| ())
}

/// Appends a length-prefixed field: unambiguous for any content.
fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Associated data of a KEK entry under the master key: label, name, version.
fn kek_aad(name: &str, version: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(KEK_AAD_LABEL.len() + name.len() + 8);
    aad.extend_from_slice(KEK_AAD_LABEL);
    put(&mut aad, name.as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

/// Associated data of a wrapped DEK: label, KEK name, version, then the
/// encryption context as a count and length-prefixed key/value pairs in key
/// order (the `BTreeMap` order), so both sides serialise it identically.
pub fn dek_aad(kek_id: &str, version: u32, context: &EncryptionContext) -> Vec<u8> {
    let mut aad = Vec::with_capacity(64);
    aad.extend_from_slice(DEK_AAD_LABEL);
    put(&mut aad, kek_id.as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    let count = u32::try_from(context.len()).unwrap_or(u32::MAX);
    aad.extend_from_slice(&count.to_be_bytes());
    for (k, v) in context {
        put(&mut aad, k.as_bytes());
        put(&mut aad, v.as_bytes());
    }
    aad
}

/// nonce ‖ ciphertext ‖ tag of `dek` under `kek`.
fn seal_dek(
    kek: &LessSafeKey,
    name: &str,
    version: u32,
    context: &EncryptionContext,
    dek: &[u8; DEK_LEN],
    nonce: [u8; NONCE_LEN],
) -> Result<Vec<u8>, ()> {
    let aad = dek_aad(name, version, context);
    seal(kek, &aad, dek, nonce)
}

fn open_dek(
    kek: &LessSafeKey,
    name: &str,
    version: u32,
    context: &EncryptionContext,
    blob: &[u8],
) -> Result<Zeroizing<[u8; DEK_LEN]>, ()> {
    let aad = dek_aad(name, version, context);
    open(kek, &aad, blob)
}

fn seal(
    key: &LessSafeKey,
    aad: &[u8],
    plaintext: &[u8; DEK_LEN],
    nonce: [u8; NONCE_LEN],
) -> Result<Vec<u8>, ()> {
    let mut out = Vec::with_capacity(WRAPPED_DEK_LEN);
    out.extend_from_slice(&nonce);
    let mut body = Zeroizing::new(plaintext.to_vec());
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut *body,
    )
    .map_err(|_| ())?;
    // `body` is now ciphertext ‖ tag; the Zeroizing wrapper still wipes it.
    out.extend_from_slice(&body);
    Ok(out)
}

fn open(key: &LessSafeKey, aad: &[u8], blob: &[u8]) -> Result<Zeroizing<[u8; DEK_LEN]>, ()> {
    if blob.len() != WRAPPED_DEK_LEN {
        return Err(());
    }
    let (nonce, body) = blob.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| ())?;
    let mut body = Zeroizing::new(body.to_vec());
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut body,
        )
        .map_err(|_| ())?;
    let mut out = Zeroizing::new([0u8; DEK_LEN]);
    if plain.len() != DEK_LEN {
        return Err(());
    }
    out.copy_from_slice(plain);
    Ok(out)
}

/// The stored entry of `name` version `version`, for a mutation.
fn stored_version<'f>(
    file: &'f mut KeyringFile,
    name: &str,
    version: u32,
) -> Result<&'f mut StoredVersion, KeyringError> {
    file.keys
        .get_mut(name)
        .ok_or_else(|| KeyringError::UnknownKek {
            name: name.to_owned(),
        })?
        .iter_mut()
        .find(|v| v.version == version)
        .ok_or_else(|| KeyringError::UnknownVersion {
            name: name.to_owned(),
            version,
        })
}

/// A new random KEK version, encrypted under the master key.
fn new_version(
    master: &MasterKey,
    name: &str,
    version: u32,
    created: u64,
) -> Result<StoredVersion, KeyringError> {
    let mut kek = Zeroizing::new([0u8; KEK_LEN]);
    aws_lc_rs::rand::fill(&mut kek[..]).map_err(|_| KeyringError::Crypto("random KEK"))?;
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| KeyringError::Crypto("random nonce"))?;
    let blob = seal(&master.aead()?, &kek_aad(name, version), &kek, nonce)
        .map_err(|()| KeyringError::Crypto("KEK encryption"))?;
    Ok(StoredVersion {
        version,
        state: KekState::Active,
        created,
        wrapped: base64::engine::general_purpose::STANDARD.encode(blob),
    })
}

/// Reads, authenticates and decrypts the whole keyring file.
fn load(path: &Path, master: &MasterKey) -> Result<Loaded, KeyringError> {
    let io = |op| {
        move |e| KeyringError::Io {
            op,
            path: path.to_owned(),
            source: e,
        }
    };
    // Stamp and content come from one open handle: a concurrent rename
    // replaces the directory entry, not what this handle reads.
    let mut f = std::fs::File::open(path).map_err(io("read"))?;
    let stamp = FileStamp::of(&f.metadata().map_err(io("stat"))?);
    let mut text = Vec::new();
    f.read_to_end(&mut text).map_err(io("read"))?;
    let corrupt = |why: String| KeyringError::Corrupt {
        path: path.to_owned(),
        why,
    };
    let file: KeyringFile =
        serde_json::from_slice(&text).map_err(|e| corrupt(format!("not keyring JSON: {e}")))?;
    if file.format != FORMAT {
        return Err(corrupt(format!(
            "format {} (this build reads {FORMAT})",
            file.format
        )));
    }
    if file.master_check != master.check_value() {
        return Err(KeyringError::WrongMasterKey {
            origin: master.source.clone(),
            path: path.to_owned(),
        });
    }
    let aead = master.aead()?;
    let mut keks = BTreeMap::new();
    for (name, versions) in &file.keys {
        validate_name(name).map_err(|_| corrupt(format!("invalid KEK name {name:?}")))?;
        let mut seen = std::collections::BTreeSet::new();
        for v in versions {
            if !seen.insert(v.version) {
                return Err(corrupt(format!(
                    "KEK {name} version {} appears twice",
                    v.version
                )));
            }
            if v.state == KekState::Destroyed {
                if !v.wrapped.is_empty() {
                    return Err(corrupt(format!(
                        "KEK {name} version {} is destroyed but still holds key bytes",
                        v.version
                    )));
                }
                continue;
            }
            let rejected = || KeyringError::KekRejected {
                name: name.clone(),
                version: v.version,
            };
            let blob = base64::engine::general_purpose::STANDARD
                .decode(&v.wrapped)
                .map_err(|_| rejected())?;
            let kek = open(&aead, &kek_aad(name, v.version), &blob).map_err(|()| rejected())?;
            let key = aead_key(&kek[..]).map_err(|()| rejected())?;
            keks.insert(
                (name.clone(), v.version),
                Kek {
                    key,
                    state: v.state,
                },
            );
        }
    }
    Ok(Loaded { file, keks, stamp })
}

/// Temp file in the same directory, mode 0600, fsync, rename over, fsync the
/// directory: readers see the old file or the new one, never a torn one.
fn write_atomically(path: &Path, file: &KeyringFile) -> Result<(), KeyringError> {
    let io = |op, p: &Path| {
        let p = p.to_owned();
        move |e| KeyringError::Io {
            op,
            path: p,
            source: e,
        }
    };
    let json = serde_json::to_vec_pretty(file).map_err(|e| KeyringError::Corrupt {
        path: path.to_owned(),
        why: format!("could not serialise: {e}"),
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "keyring".to_owned());
    let mut suffix = [0u8; 8];
    aws_lc_rs::rand::fill(&mut suffix).map_err(|_| KeyringError::Crypto("random"))?;
    let tmp = dir.join(format!(
        ".{file_name}.tmp-{}-{}",
        std::process::id(),
        u64::from_be_bytes(suffix)
    ));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let result = (|| {
        let mut f = opts.open(&tmp).map_err(io("create", &tmp))?;
        f.write_all(&json).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io("rename into place", path))?;
        // Makes the rename itself durable.
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync directory", &dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn master() -> MasterKey {
        MasterKey::from_bytes([7; 32])
    }

    fn fresh() -> (tempfile::TempDir, PathBuf, LocalKeyring) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keyring.json");
        let kr = LocalKeyring::init(&path, master()).expect("init");
        (dir, path, kr)
    }

    #[test]
    fn create_rotate_list_retire() {
        let (_d, _p, kr) = fresh();
        let info = kr.create("orders").expect("create");
        assert_eq!((info.version, info.current), (1, true));
        assert!(matches!(
            kr.create("orders"),
            Err(KeyringError::KeyExists { .. })
        ));
        assert!(matches!(
            kr.create("bad name"),
            Err(KeyringError::InvalidName { .. })
        ));
        assert_eq!(kr.rotate("orders").expect("rotate"), 2);
        assert_eq!(kr.rotate("orders").expect("rotate"), 3);
        assert!(matches!(
            kr.rotate("nope"),
            Err(KeyringError::UnknownKek { .. })
        ));
        let err = kr.retire("orders", 3).expect_err("current");
        assert!(matches!(
            err,
            KeyringError::CannotRetireCurrent { version: 3, .. }
        ));
        assert_eq!(
            err.to_string(),
            "KEK orders version 3 is the current version; rotate before retiring it"
        );
        kr.retire("orders", 1).expect("retire v1");
        kr.retire("orders", 1).expect("retire twice is a no-op");
        assert!(matches!(
            kr.retire("orders", 9),
            Err(KeyringError::UnknownVersion { version: 9, .. })
        ));
        let list = kr.list().expect("list");
        let rows: Vec<_> = list
            .iter()
            .map(|k| (k.name.as_str(), k.version, k.state, k.current))
            .collect();
        assert_eq!(
            rows,
            vec![
                ("orders", 1, KekState::Retired, false),
                ("orders", 2, KekState::Active, false),
                ("orders", 3, KekState::Active, true),
            ]
        );
        assert!(list.iter().all(|k| k.created > 1_600_000_000));
    }

    #[test]
    fn file_holds_no_plaintext_kek_and_is_private() {
        let (_d, path, kr) = fresh();
        kr.create("orders").expect("create");
        let text = std::fs::read_to_string(&path).expect("read");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        let wrapped = v["keys"]["orders"][0]["wrapped"].as_str().expect("wrapped");
        let blob = base64::engine::general_purpose::STANDARD
            .decode(wrapped)
            .expect("b64");
        assert_eq!(blob.len(), NONCE_LEN + KEK_LEN + TAG_LEN);
        assert_eq!(v["keys"]["orders"][0]["state"], "active");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1);
    }

    #[tokio::test]
    async fn rotation_keeps_old_deks_readable_and_new_ones_use_v2() {
        let (_d, _p, kr) = fresh();
        kr.create("orders").expect("create");
        let c = ctx(&[("topic", "orders"), ("field", "card")]);
        let old = kr.generate_data_key("orders", &c).await.expect("gen");
        assert_eq!(old.wrapped.kek_version, 1);
        assert_eq!(old.wrapped.blob.len(), WRAPPED_DEK_LEN);
        kr.rotate("orders").expect("rotate");
        let new = kr.generate_data_key("orders", &c).await.expect("gen");
        assert_eq!(new.wrapped.kek_version, 2);
        assert_ne!(*old.plaintext, *new.plaintext);
        let back = kr.decrypt_data_key(&old.wrapped, &c).await.expect("old");
        assert_eq!(*back, *old.plaintext);
        // Retired v1 still unwraps, never wraps.
        kr.retire("orders", 1).expect("retire");
        let back = kr.decrypt_data_key(&old.wrapped, &c).await.expect("old");
        assert_eq!(*back, *old.plaintext);
        // Rewrap moves it to v2, same DEK.
        let moved = kr.rewrap(&old.wrapped, None, &c).await.expect("rewrap");
        assert_eq!(moved.kek_version, 2);
        let back = kr.decrypt_data_key(&moved, &c).await.expect("moved");
        assert_eq!(*back, *old.plaintext);
    }

    #[tokio::test]
    async fn a_destroyed_version_leaves_the_file_and_unwraps_nothing() {
        let (_d, path, kr) = fresh();
        kr.create("orders").expect("create");
        let c = ctx(&[("topic", "orders")]);
        let old = kr.generate_data_key("orders", &c).await.expect("gen");
        let err = kr.destroy("orders", 1).expect_err("active");
        assert_eq!(
            err.to_string(),
            "KEK orders version 1 is active; retire it before destroying it"
        );
        kr.rotate("orders").expect("rotate");
        let new = kr.generate_data_key("orders", &c).await.expect("gen");
        let before = std::fs::read_to_string(&path).expect("read");
        let v1_bytes = serde_json::from_str::<serde_json::Value>(&before).expect("json")["keys"]
            ["orders"][0]["wrapped"]
            .as_str()
            .expect("wrapped")
            .to_owned();
        assert!(matches!(
            kr.destroy("orders", 1),
            Err(KeyringError::CannotDestroyUnretired { .. })
        ));
        kr.retire("orders", 1).expect("retire");
        kr.destroy("orders", 1).expect("destroy");
        kr.destroy("orders", 1)
            .expect("destroying twice is a no-op");
        kr.retire("orders", 1)
            .expect("retiring a destroyed version is a no-op");
        assert!(matches!(
            kr.destroy("orders", 7),
            Err(KeyringError::UnknownVersion { version: 7, .. })
        ));
        let after = std::fs::read_to_string(&path).expect("read");
        assert!(!after.contains(&v1_bytes), "the key bytes left the file");
        let err = kr
            .decrypt_data_key(&old.wrapped, &c)
            .await
            .expect_err("destroyed");
        assert!(
            matches!(&err, KmsError::Destroyed { kek_id, version: 1 } if kek_id == "orders"),
            "{err:?}"
        );
        assert!(!err.retryable());
        // v2 is untouched, and a fresh process reads the file the same way.
        let back = kr.decrypt_data_key(&new.wrapped, &c).await.expect("v2");
        assert_eq!(*back, *new.plaintext);
        let reopened = LocalKeyring::open(&path, master()).expect("reopen");
        assert!(matches!(
            reopened.decrypt_data_key(&old.wrapped, &c).await,
            Err(KmsError::Destroyed { version: 1, .. })
        ));
        let states: Vec<_> = reopened
            .list()
            .expect("list")
            .into_iter()
            .map(|k| (k.version, k.state))
            .collect();
        assert_eq!(
            states,
            vec![(1, KekState::Destroyed), (2, KekState::Active)]
        );
        // A "destroyed" entry that still carries key bytes is refused.
        let mut doc: serde_json::Value = serde_json::from_str(&after).expect("json");
        doc["keys"]["orders"][0]["wrapped"] = serde_json::Value::String(v1_bytes);
        std::fs::write(&path, serde_json::to_vec(&doc).expect("json")).expect("write");
        let err = LocalKeyring::open(&path, master()).expect_err("corrupt");
        assert!(
            err.to_string()
                .contains("destroyed but still holds key bytes"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn wrong_context_and_tampered_blobs_are_rejected() {
        let (_d, _p, kr) = fresh();
        kr.create("orders").expect("create");
        kr.create("other").expect("create");
        let c = ctx(&[("topic", "orders")]);
        let dk = kr.generate_data_key("orders", &c).await.expect("gen");
        let err = kr
            .decrypt_data_key(&dk.wrapped, &ctx(&[("topic", "payments")]))
            .await
            .expect_err("wrong context");
        assert!(matches!(err, KmsError::Rejected(_)), "{err:?}");
        assert!(err.to_string().contains("KEK orders version 1"), "{err}");
        assert!(kr
            .decrypt_data_key(&dk.wrapped, &EncryptionContext::new())
            .await
            .is_err());
        let mut bad = dk.wrapped.clone();
        bad.blob[20] ^= 1;
        assert!(matches!(
            kr.decrypt_data_key(&bad, &c).await,
            Err(KmsError::Rejected(_))
        ));
        // The blob is bound to its KEK name too.
        let mut moved = dk.wrapped.clone();
        moved.kek_id = "other".to_owned();
        assert!(matches!(
            kr.decrypt_data_key(&moved, &c).await,
            Err(KmsError::Rejected(_))
        ));
        let mut unknown = dk.wrapped.clone();
        unknown.kek_version = 5;
        let err = kr.decrypt_data_key(&unknown, &c).await.expect_err("v5");
        assert!(
            matches!(&err, KmsError::UnknownKey { kek_id, version: 5, .. } if kek_id == "orders"),
            "{err:?}"
        );
        assert!(matches!(
            kr.generate_data_key("missing", &c).await,
            Err(KmsError::UnknownKey { .. })
        ));
    }

    #[test]
    fn wrong_master_key_gives_a_clear_error() {
        let (_d, path, kr) = fresh();
        kr.create("orders").expect("create");
        let err = LocalKeyring::open(&path, MasterKey::from_bytes([8; 32])).expect_err("wrong");
        assert!(
            matches!(err, KeyringError::WrongMasterKey { .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "the master key from in-memory key does not open keyring {} (wrong master key)",
                path.display()
            )
        );
    }

    #[test]
    fn tampered_or_swapped_entries_are_rejected() {
        let (_d, path, kr) = fresh();
        kr.create("a").expect("create");
        kr.create("b").expect("create");
        let original = std::fs::read_to_string(&path).expect("read");

        // Swap a's and b's encrypted KEKs: each is bound to its own name.
        let mut v: serde_json::Value = serde_json::from_str(&original).expect("json");
        let wa = v["keys"]["a"][0]["wrapped"].clone();
        v["keys"]["a"][0]["wrapped"] = v["keys"]["b"][0]["wrapped"].clone();
        v["keys"]["b"][0]["wrapped"] = wa;
        std::fs::write(&path, serde_json::to_vec(&v).expect("ser")).expect("write");
        let err = LocalKeyring::open(&path, master()).expect_err("swapped");
        assert!(
            matches!(&err, KeyringError::KekRejected { name, version: 1 } if name == "a"),
            "{err:?}"
        );

        // Flip one bit of b's ciphertext.
        let mut v: serde_json::Value = serde_json::from_str(&original).expect("json");
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut blob = b64
            .decode(v["keys"]["b"][0]["wrapped"].as_str().expect("s"))
            .expect("b64");
        blob[NONCE_LEN] ^= 0x80;
        v["keys"]["b"][0]["wrapped"] = serde_json::Value::String(b64.encode(blob));
        std::fs::write(&path, serde_json::to_vec(&v).expect("ser")).expect("write");
        let err = LocalKeyring::open(&path, master()).expect_err("flipped");
        assert_eq!(
            err.to_string(),
            "KEK b version 1 failed authentication: the keyring entry was tampered with or moved"
        );

        // Renumbering a version is caught the same way.
        let mut v: serde_json::Value = serde_json::from_str(&original).expect("json");
        v["keys"]["b"][0]["version"] = serde_json::json!(2);
        std::fs::write(&path, serde_json::to_vec(&v).expect("ser")).expect("write");
        assert!(matches!(
            LocalKeyring::open(&path, master()),
            Err(KeyringError::KekRejected { version: 2, .. })
        ));
    }

    #[tokio::test]
    async fn another_handle_sees_rotation() {
        let (_d, path, cli) = fresh();
        cli.create("orders").expect("create");
        let proxy = LocalKeyring::open(&path, master()).expect("open");
        let c = ctx(&[("topic", "t")]);
        assert_eq!(
            proxy
                .generate_data_key("orders", &c)
                .await
                .expect("gen")
                .wrapped
                .kek_version,
            1
        );
        // The CLI (another handle, as another process would be) rotates.
        cli.rotate("orders").expect("rotate");
        let v2 = cli.generate_data_key("orders", &c).await.expect("gen");
        assert_eq!(v2.wrapped.kek_version, 2);
        // An unknown version forces a reload at once.
        let back = proxy
            .decrypt_data_key(&v2.wrapped, &c)
            .await
            .expect("reload on unknown version");
        assert_eq!(*back, *v2.plaintext);
        assert_eq!(proxy.current_version("orders"), Some(2));

        // A plain rotation is picked up within the reload interval.
        cli.rotate("orders").expect("rotate");
        tokio::time::sleep(RELOAD_INTERVAL + Duration::from_millis(50)).await;
        let dk = proxy.generate_data_key("orders", &c).await.expect("gen");
        assert_eq!(dk.wrapped.kek_version, 3);
    }

    #[test]
    fn a_bad_rewrite_keeps_the_last_good_state() {
        let (_d, path, kr) = fresh();
        kr.create("orders").expect("create");
        std::fs::write(&path, b"{ not json").expect("write");
        assert!(kr.reload_if_changed().is_err());
        assert!(kr.last_reload_error().is_some());
        assert_eq!(kr.snapshot_no_check().current("orders"), Some(1));
    }

    #[test]
    fn master_key_sources() {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = dir.path().join("raw");
        std::fs::write(&raw, [9u8; 32]).expect("write");
        assert_eq!(*MasterKey::from_file(&raw).expect("raw").key, [9u8; 32]);
        let hex = dir.path().join("hex");
        std::fs::write(&hex, format!("{}\n", "0a".repeat(32))).expect("write");
        assert_eq!(*MasterKey::from_file(&hex).expect("hex").key, [10u8; 32]);
        let bad = dir.path().join("bad");
        std::fs::write(&bad, b"short").expect("write");
        let err = MasterKey::from_file(&bad).expect_err("bad");
        assert_eq!(
            err.to_string(),
            format!(
                "master key from file {} is unusable: expected 32 raw bytes or 64 hex characters, found 5 bytes",
                bad.display()
            )
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode([3u8; 32]);
        let k = MasterKey::parse_text(b64.as_bytes(), "test".to_owned()).expect("b64");
        assert_eq!(*k.key, [3u8; 32]);
        assert!(MasterKey::parse_text(b"zz", "test".to_owned()).is_err());
        let err = MasterKey::from_env("CUSTOS_TEST_SURELY_UNSET_MASTER_KEY").expect_err("unset");
        assert_eq!(
            err.to_string(),
            "master key not found: environment variable CUSTOS_TEST_SURELY_UNSET_MASTER_KEY is not set"
        );
        assert!(!format!("{k:?}").contains("3, 3"));
    }

    #[test]
    fn dek_aad_is_pinned() {
        let aad = dek_aad("k", 2, &ctx(&[("b", "2"), ("a", "1")]));
        let mut want = b"custos-keyring-dek-v1".to_vec();
        want.extend_from_slice(&[0, 0, 0, 1, b'k', 0, 0, 0, 2, 0, 0, 0, 2]);
        want.extend_from_slice(&[0, 0, 0, 1, b'a', 0, 0, 0, 1, b'1']);
        want.extend_from_slice(&[0, 0, 0, 1, b'b', 0, 0, 0, 1, b'2']);
        assert_eq!(aad, want);
    }

    #[test]
    fn wrapped_dek_golden_bytes() {
        // AES-256-GCM, key 0x01*32, nonce 0x02*12, AAD = dek_aad("k", 1, {}),
        // plaintext 0x03*32; cross-checked with Python's `cryptography`.
        let kek = aead_key(&[1; 32]).expect("key");
        let blob =
            seal_dek(&kek, "k", 1, &EncryptionContext::new(), &[3; 32], [2; 12]).expect("seal");
        assert_eq!(hex(&blob), GOLDEN_WRAPPED);
        let back = open_dek(&kek, "k", 1, &EncryptionContext::new(), &blob).expect("open");
        assert_eq!(*back, [3; 32]);
    }

    const GOLDEN_WRAPPED: &str = "02020202020202020202020204d5ca4a4954c2fed0cfbfcb5fa4c1b1a1b6d2ece8b28e72de84e3f87bf8777cb54f595dedf79004dc5369c83ec12540";

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
