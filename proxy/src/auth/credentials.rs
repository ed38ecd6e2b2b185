//! The SCRAM credential file: salted keys per user, never a password.
//!
//! Each user has, per SCRAM mechanism, the salt, the iteration count, and the
//! `StoredKey` and `ServerKey` of RFC 5802 §3. Those are enough to verify a
//! SCRAM exchange, and — because `StoredKey = H(HMAC(Hi(password, salt, i),
//! "Client Key"))` can be recomputed from a candidate password — also enough
//! to verify SASL PLAIN without storing the password: PLAIN derives the
//! SaltedPassword from the password the client sent and compares the
//! resulting StoredKey in constant time. A stolen file therefore gives an
//! attacker no password and no key that logs in directly (the StoredKey is a
//! hash of the ClientKey, which a client needs to build its proof).
//!
//! Format (YAML; JSON is accepted too since it is YAML), binary fields in
//! standard base64:
//!
//! ```yaml
//! users:
//!   alice:
//!     principal_type: user          # or service_account; default user
//!     groups: [analysts]
//!     SCRAM-SHA-256:
//!       salt: "…"
//!       iterations: 4096
//!       stored_key: "…"
//!       server_key: "…"
//!     SCRAM-SHA-512: { … }
//! ```
//!
//! Passwords are used as their UTF-8 bytes without SASLprep, as Kafka does, so
//! credentials made here and by Kafka's tools agree.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::principal::PrincipalType;

/// The fewest PBKDF2 iterations accepted (RFC 7677 §4 and Kafka's minimum).
pub const MIN_ITERATIONS: u32 = 4096;
/// The most PBKDF2 iterations accepted, so a bad file cannot stall logins.
pub const MAX_ITERATIONS: u32 = 10_000_000;
/// Length of salts made by [`CredentialStore::add_user`], in bytes.
pub const SALT_LEN: usize = 32;
/// The shortest salt accepted from a file, in bytes.
pub const MIN_SALT_LEN: usize = 16;

/// A SCRAM hash function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScramMechanism {
    /// SCRAM-SHA-256 (RFC 7677).
    Sha256,
    /// SCRAM-SHA-512.
    Sha512,
}

impl ScramMechanism {
    /// Both mechanisms, in preference order.
    pub const ALL: [ScramMechanism; 2] = [ScramMechanism::Sha256, ScramMechanism::Sha512];

    /// The SASL mechanism name (`SCRAM-SHA-256`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "SCRAM-SHA-256",
            Self::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// Parses a SASL mechanism name; `None` for anything but the two SCRAMs.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "SCRAM-SHA-256" => Some(Self::Sha256),
            "SCRAM-SHA-512" => Some(Self::Sha512),
            _ => None,
        }
    }

    /// Output length of the hash, which is also the length of every key.
    pub fn key_len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }

    /// `Hi(password, salt, i)` of RFC 5802, which is PBKDF2-HMAC with one block.
    pub(crate) fn salted_password(
        self,
        password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(vec![0u8; self.key_len()]);
        match self {
            Self::Sha256 => pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out),
            Self::Sha512 => pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out),
        }
        out
    }

    /// `HMAC(key, data)`.
    pub(crate) fn hmac(self, key: &[u8], data: &[u8]) -> Zeroizing<Vec<u8>> {
        // HMAC accepts keys of any length, so `new_from_slice` cannot fail;
        // an empty output would fail every later comparison anyway.
        let out = match self {
            Self::Sha256 => Hmac::<Sha256>::new_from_slice(key)
                .map(|mut m| {
                    m.update(data);
                    m.finalize().into_bytes().to_vec()
                })
                .unwrap_or_default(),
            Self::Sha512 => Hmac::<Sha512>::new_from_slice(key)
                .map(|mut m| {
                    m.update(data);
                    m.finalize().into_bytes().to_vec()
                })
                .unwrap_or_default(),
        };
        Zeroizing::new(out)
    }

    /// `H(data)`.
    pub(crate) fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256 => Sha256::digest(data).to_vec(),
            Self::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// Derives the stored credential for `password` with a given salt.
    pub fn derive(self, password: &[u8], salt: &[u8], iterations: u32) -> ScramCredential {
        let salted = self.salted_password(password, salt, iterations);
        let client_key = self.hmac(&salted, b"Client Key");
        let server_key = self.hmac(&salted, b"Server Key");
        ScramCredential {
            salt: salt.to_vec(),
            iterations,
            stored_key: self.hash(&client_key),
            server_key: server_key.to_vec(),
        }
    }
}

impl fmt::Display for ScramMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One user's verifier for one SCRAM mechanism (RFC 5802 §3).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredential {
    /// Per-user random salt.
    pub salt: Vec<u8>,
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// `H(ClientKey)`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
}

// By hand: salts and keys stay out of logs.
impl fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredential")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramCredential {
    /// Whether `password` derives this credential's StoredKey, in constant time.
    pub fn verify_password(&self, mechanism: ScramMechanism, password: &[u8]) -> bool {
        let candidate = mechanism.derive(password, &self.salt, self.iterations);
        bool::from(candidate.stored_key.ct_eq(&self.stored_key))
    }
}

/// Everything the store holds about one user.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct UserEntry {
    /// User or service account.
    pub principal_type: PrincipalType,
    /// Groups the user belongs to.
    pub groups: Vec<String>,
    /// Verifiers by mechanism.
    pub scram: BTreeMap<ScramMechanism, ScramCredential>,
}

impl fmt::Debug for UserEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserEntry")
            .field("principal_type", &self.principal_type)
            .field("groups", &self.groups)
            .field("mechanisms", &self.scram.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What [`CredentialStore::list`] tells about a user: no key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSummary {
    /// The user name.
    pub name: String,
    /// Mechanisms the user has credentials for.
    pub mechanisms: Vec<ScramMechanism>,
}

/// Options for a new user.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Mechanisms to make credentials for.
    pub mechanisms: Vec<ScramMechanism>,
    /// PBKDF2 iteration count, at least [`MIN_ITERATIONS`].
    pub iterations: u32,
    /// User or service account.
    pub principal_type: PrincipalType,
    /// Groups of the user.
    pub groups: Vec<String>,
}

impl Default for NewUser {
    fn default() -> Self {
        Self {
            mechanisms: ScramMechanism::ALL.to_vec(),
            iterations: MIN_ITERATIONS,
            principal_type: PrincipalType::User,
            groups: Vec::new(),
        }
    }
}

/// A credential file that could not be read, parsed, changed or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The file could not be read.
    #[error("cannot read credentials file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid YAML/JSON of the expected shape.
    #[error("credentials file: `{key}`: {message}")]
    Syntax {
        /// Where in the document.
        key: String,
        /// Why.
        message: String,
    },
    /// A field of one user is unusable.
    #[error("credentials file: user `{user}`, `{field}`: {reason}")]
    Field {
        /// The user.
        user: String,
        /// The field, e.g. `SCRAM-SHA-256.stored_key`.
        field: String,
        /// Why.
        reason: String,
    },
    /// A user name that cannot be used.
    #[error("invalid user name {name:?}: {reason}")]
    InvalidUserName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// The user is already in the store.
    #[error("user `{0}` already exists")]
    UserExists(String),
    /// An add request without a mechanism, or with too few iterations.
    #[error("invalid options for new user: {0}")]
    InvalidOptions(String),
    /// The system random source failed.
    #[error("cannot generate a salt: {0}")]
    Random(String),
    /// The file could not be written.
    #[error("cannot write credentials file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// All SCRAM users known to Custos.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialStore {
    users: BTreeMap<String, UserEntry>,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    users: BTreeMap<String, FileUser>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUser {
    #[serde(default, skip_serializing_if = "is_user")]
    principal_type: FilePrincipalType,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    groups: Vec<String>,
    #[serde(
        rename = "SCRAM-SHA-256",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    scram_sha_256: Option<FileCredential>,
    #[serde(
        rename = "SCRAM-SHA-512",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    scram_sha_512: Option<FileCredential>,
}

// A local mirror of PrincipalType so the file format can also serialize it.
#[derive(Serialize, Deserialize, Default, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum FilePrincipalType {
    #[default]
    User,
    ServiceAccount,
}

fn is_user(t: &FilePrincipalType) -> bool {
    *t == FilePrincipalType::User
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCredential {
    salt: String,
    iterations: u32,
    stored_key: String,
    server_key: String,
}

fn field_err(user: &str, field: String, reason: impl Into<String>) -> CredentialError {
    CredentialError::Field {
        user: user.to_string(),
        field,
        reason: reason.into(),
    }
}

fn check_user_name(name: &str) -> Result<(), CredentialError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.chars().any(char::is_control) {
        // NUL separates PLAIN's fields; other controls only confuse logs.
        "contains a control character"
    } else {
        return Ok(());
    };
    Err(CredentialError::InvalidUserName {
        name: name.to_string(),
        reason,
    })
}

fn decode_credential(
    user: &str,
    mech: ScramMechanism,
    c: &FileCredential,
) -> Result<ScramCredential, CredentialError> {
    let key = |field: &str| format!("{}.{field}", mech.name());
    let b64 = |field: &str, v: &str| {
        B64.decode(v.trim())
            .map_err(|e| field_err(user, key(field), format!("not base64: {e}")))
    };
    let salt = b64("salt", &c.salt)?;
    if salt.len() < MIN_SALT_LEN {
        return Err(field_err(
            user,
            key("salt"),
            format!("{} bytes; at least {MIN_SALT_LEN} are required", salt.len()),
        ));
    }
    if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&c.iterations) {
        return Err(field_err(
            user,
            key("iterations"),
            format!(
                "{} is outside {MIN_ITERATIONS}..={MAX_ITERATIONS}",
                c.iterations
            ),
        ));
    }
    let stored_key = b64("stored_key", &c.stored_key)?;
    let server_key = b64("server_key", &c.server_key)?;
    for (field, v) in [("stored_key", &stored_key), ("server_key", &server_key)] {
        if v.len() != mech.key_len() {
            return Err(field_err(
                user,
                key(field),
                format!(
                    "{} bytes; {} needs {}",
                    v.len(),
                    mech.name(),
                    mech.key_len()
                ),
            ));
        }
    }
    Ok(ScramCredential {
        salt,
        iterations: c.iterations,
        stored_key,
        server_key,
    })
}

fn encode_credential(c: &ScramCredential) -> FileCredential {
    FileCredential {
        salt: B64.encode(&c.salt),
        iterations: c.iterations,
        stored_key: B64.encode(&c.stored_key),
        server_key: B64.encode(&c.server_key),
    }
}

// A fixed credential that unknown users are checked against, so that a wrong
// user name costs as much time as a wrong password.
fn decoy(mechanism: ScramMechanism) -> ScramCredential {
    ScramCredential {
        salt: vec![0u8; SALT_LEN],
        iterations: MIN_ITERATIONS,
        stored_key: vec![0u8; mechanism.key_len()],
        server_key: vec![0u8; mechanism.key_len()],
    }
}

impl CredentialStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads and checks a credential file.
    pub fn load(path: &Path) -> Result<Self, CredentialError> {
        let text = std::fs::read_to_string(path).map_err(|source| CredentialError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_str_doc(&text)
    }

    /// Parses and checks the text of a credential file.
    pub fn from_str_doc(text: &str) -> Result<Self, CredentialError> {
        let doc: FileDoc = if text.trim().is_empty() {
            FileDoc::default()
        } else {
            let de = serde_yaml_ng::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let key = e.path().to_string();
                CredentialError::Syntax {
                    key: if key == "." {
                        "(top level)".into()
                    } else {
                        key
                    },
                    message: e.into_inner().to_string(),
                }
            })?
        };
        let mut users = BTreeMap::new();
        for (name, u) in doc.users {
            check_user_name(&name)?;
            let mut scram = BTreeMap::new();
            for (mech, c) in [
                (ScramMechanism::Sha256, &u.scram_sha_256),
                (ScramMechanism::Sha512, &u.scram_sha_512),
            ] {
                if let Some(c) = c {
                    scram.insert(mech, decode_credential(&name, mech, c)?);
                }
            }
            if scram.is_empty() {
                return Err(field_err(
                    &name,
                    "SCRAM-SHA-256".into(),
                    "the user has no credential (needs SCRAM-SHA-256 or SCRAM-SHA-512)",
                ));
            }
            let principal_type = match u.principal_type {
                FilePrincipalType::User => PrincipalType::User,
                FilePrincipalType::ServiceAccount => PrincipalType::ServiceAccount,
            };
            users.insert(
                name,
                UserEntry {
                    principal_type,
                    groups: u.groups,
                    scram,
                },
            );
        }
        Ok(Self { users })
    }

    /// The file text for this store.
    pub fn to_doc_string(&self) -> String {
        let doc = FileDoc {
            users: self
                .users
                .iter()
                .map(|(name, u)| {
                    let file_user = FileUser {
                        principal_type: match u.principal_type {
                            PrincipalType::User => FilePrincipalType::User,
                            PrincipalType::ServiceAccount => FilePrincipalType::ServiceAccount,
                        },
                        groups: u.groups.clone(),
                        scram_sha_256: u.scram.get(&ScramMechanism::Sha256).map(encode_credential),
                        scram_sha_512: u.scram.get(&ScramMechanism::Sha512).map(encode_credential),
                    };
                    (name.clone(), file_user)
                })
                .collect(),
        };
        // Serializing plain strings, numbers and maps cannot fail.
        let body = serde_yaml_ng::to_string(&doc).unwrap_or_default();
        format!("# Custos SCRAM credentials: salted keys only, no passwords.\n{body}")
    }

    /// Writes the store atomically (temporary file, fsync, rename), mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), CredentialError> {
        let werr = |source| CredentialError::Write {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = path.file_name().ok_or_else(|| {
            werr(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "path has no file name",
            ))
        })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(format!(".tmp{}", std::process::id()));
        let tmp = dir.join(tmp_name);
        let result = (|| {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp)?;
            // The mode above only applies when the file is created; a stale
            // temporary file from a crash may have other permissions.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            }
            f.write_all(self.to_doc_string().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            // Make the rename itself durable.
            if let Ok(d) = std::fs::File::open(&dir) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(werr)
    }

    /// Adds a user with fresh random salts; fails if the name is taken.
    pub fn add_user(
        &mut self,
        name: &str,
        password: &str,
        opts: &NewUser,
    ) -> Result<(), CredentialError> {
        if self.users.contains_key(name) {
            return Err(CredentialError::UserExists(name.to_string()));
        }
        self.set_user(name, password, opts)
    }

    /// Adds or replaces a user (a password change) with fresh random salts.
    pub fn set_user(
        &mut self,
        name: &str,
        password: &str,
        opts: &NewUser,
    ) -> Result<(), CredentialError> {
        check_user_name(name)?;
        if opts.mechanisms.is_empty() {
            return Err(CredentialError::InvalidOptions(
                "no SCRAM mechanism given".into(),
            ));
        }
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&opts.iterations) {
            return Err(CredentialError::InvalidOptions(format!(
                "iterations {} is outside {MIN_ITERATIONS}..={MAX_ITERATIONS}",
                opts.iterations
            )));
        }
        let mut scram = BTreeMap::new();
        for &mech in &opts.mechanisms {
            let mut salt = [0u8; SALT_LEN];
            getrandom::fill(&mut salt).map_err(|e| CredentialError::Random(e.to_string()))?;
            scram.insert(
                mech,
                mech.derive(password.as_bytes(), &salt, opts.iterations),
            );
        }
        self.users.insert(
            name.to_string(),
            UserEntry {
                principal_type: opts.principal_type,
                groups: opts.groups.clone(),
                scram,
            },
        );
        Ok(())
    }

    /// Removes a user; whether it was there.
    pub fn remove_user(&mut self, name: &str) -> bool {
        self.users.remove(name).is_some()
    }

    /// User names and their mechanisms, sorted by name.
    pub fn list(&self) -> Vec<UserSummary> {
        self.users
            .iter()
            .map(|(name, u)| UserSummary {
                name: name.clone(),
                mechanisms: u.scram.keys().copied().collect(),
            })
            .collect()
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the store has no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// One user's entry.
    pub fn user(&self, name: &str) -> Option<&UserEntry> {
        self.users.get(name)
    }

    /// One user's verifier for one mechanism.
    pub fn credential(&self, name: &str, mechanism: ScramMechanism) -> Option<&ScramCredential> {
        self.users.get(name)?.scram.get(&mechanism)
    }

    /// Checks a PLAIN password by re-deriving a SCRAM StoredKey (see the
    /// module docs); the user's entry when it matches.
    ///
    /// Unknown users are checked against a decoy so both failures take the
    /// same time and look the same to the caller.
    pub fn verify_plain(&self, name: &str, password: &str) -> Option<&UserEntry> {
        let entry = self.users.get(name);
        let found = entry.and_then(|u| {
            ScramMechanism::ALL
                .iter()
                .find_map(|m| u.scram.get(m).map(|c| (*m, c)))
        });
        match found {
            Some((mech, cred)) => {
                if cred.verify_password(mech, password.as_bytes()) {
                    entry
                } else {
                    None
                }
            }
            None => {
                let mech = ScramMechanism::Sha256;
                let _ = decoy(mech).verify_password(mech, password.as_bytes());
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(name: &str, password: &str) -> CredentialStore {
        let mut s = CredentialStore::new();
        s.add_user(name, password, &NewUser::default())
            .expect("add user");
        s
    }

    #[test]
    fn rfc7677_credential_derivation() {
        // RFC 7677 §3: user "user", password "pencil", this salt, 4096 rounds.
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("b64");
        let c = ScramMechanism::Sha256.derive(b"pencil", &salt, 4096);
        // The server signature in the RFC is HMAC(ServerKey, AuthMessage); we
        // check the keys through the full exchange in scram.rs, and here that
        // derivation is deterministic and the right length.
        assert_eq!(c.stored_key.len(), 32);
        assert_eq!(c, ScramMechanism::Sha256.derive(b"pencil", &salt, 4096));
        assert!(c.verify_password(ScramMechanism::Sha256, b"pencil"));
        assert!(!c.verify_password(ScramMechanism::Sha256, b"pencil2"));
    }

    #[test]
    fn plain_verification_against_scram_keys() {
        let s = store_with("alice", "s3cret");
        assert!(s.verify_plain("alice", "s3cret").is_some());
        assert!(s.verify_plain("alice", "s3cret ").is_none());
        assert!(s.verify_plain("bob", "s3cret").is_none());
    }

    #[test]
    fn salts_are_random_and_keys_differ() {
        let s = store_with("alice", "pw");
        let mut t = CredentialStore::new();
        t.add_user("alice", "pw", &NewUser::default()).expect("add");
        let a = s.credential("alice", ScramMechanism::Sha256).expect("cred");
        let b = t.credential("alice", ScramMechanism::Sha256).expect("cred");
        assert_ne!(a.salt, b.salt);
        assert_ne!(a.stored_key, b.stored_key);
        assert_eq!(a.salt.len(), SALT_LEN);
    }

    #[test]
    fn add_remove_list() {
        let mut s = store_with("alice", "pw");
        assert!(matches!(
            s.add_user("alice", "x", &NewUser::default()),
            Err(CredentialError::UserExists(_))
        ));
        s.add_user(
            "svc",
            "pw",
            &NewUser {
                mechanisms: vec![ScramMechanism::Sha512],
                principal_type: PrincipalType::ServiceAccount,
                groups: vec!["apps".into()],
                ..NewUser::default()
            },
        )
        .expect("add");
        assert_eq!(
            s.list(),
            vec![
                UserSummary {
                    name: "alice".into(),
                    mechanisms: vec![ScramMechanism::Sha256, ScramMechanism::Sha512]
                },
                UserSummary {
                    name: "svc".into(),
                    mechanisms: vec![ScramMechanism::Sha512]
                },
            ]
        );
        assert!(s.remove_user("alice"));
        assert!(!s.remove_user("alice"));
        assert_eq!(s.len(), 1);
        let bad = NewUser {
            iterations: 1000,
            ..NewUser::default()
        };
        assert!(matches!(
            s.add_user("x", "pw", &bad),
            Err(CredentialError::InvalidOptions(_))
        ));
        assert!(matches!(
            s.add_user("", "pw", &NewUser::default()),
            Err(CredentialError::InvalidUserName { .. })
        ));
    }

    #[test]
    fn save_and_load_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("creds.yaml");
        let mut s = store_with("alice", "pw");
        s.add_user(
            "svc",
            "pw2",
            &NewUser {
                principal_type: PrincipalType::ServiceAccount,
                groups: vec!["g1".into()],
                ..NewUser::default()
            },
        )
        .expect("add");
        s.save(&path).expect("save");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(!text.contains("pw2"));
        let loaded = CredentialStore::load(&path).expect("load");
        assert_eq!(loaded, s);
        assert!(loaded.verify_plain("svc", "pw2").is_some());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
    }

    #[test]
    fn json_is_accepted() {
        let s = store_with("alice", "pw");
        let c = s.credential("alice", ScramMechanism::Sha256).expect("c");
        let json = format!(
            r#"{{"users": {{"alice": {{"SCRAM-SHA-256": {{"salt": "{}", "iterations": 4096, "stored_key": "{}", "server_key": "{}"}}}}}}}}"#,
            B64.encode(&c.salt),
            B64.encode(&c.stored_key),
            B64.encode(&c.server_key)
        );
        let loaded = CredentialStore::from_str_doc(&json).expect("json");
        assert!(loaded.verify_plain("alice", "pw").is_some());
    }

    #[test]
    fn load_errors_name_user_and_field() {
        let good = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        let salt = "AAAAAAAAAAAAAAAAAAAAAA==";
        let doc = |salt: &str, iters: u32, stored: &str| {
            format!(
                "users:\n  bob:\n    SCRAM-SHA-256:\n      salt: \"{salt}\"\n      iterations: {iters}\n      stored_key: \"{stored}\"\n      server_key: \"{good}\"\n"
            )
        };
        CredentialStore::from_str_doc(&doc(salt, 4096, good)).expect("valid");
        let e = CredentialStore::from_str_doc(&doc(salt, 4095, good))
            .expect_err("iterations")
            .to_string();
        assert!(
            e.contains("`bob`") && e.contains("SCRAM-SHA-256.iterations"),
            "{e}"
        );
        let e = CredentialStore::from_str_doc(&doc(salt, 4096, "!!"))
            .expect_err("b64")
            .to_string();
        assert!(
            e.contains("SCRAM-SHA-256.stored_key") && e.contains("base64"),
            "{e}"
        );
        let e = CredentialStore::from_str_doc(&doc(salt, 4096, "AAAA"))
            .expect_err("len")
            .to_string();
        assert!(e.contains("needs 32"), "{e}");
        let e = CredentialStore::from_str_doc(&doc("AAAA", 4096, good))
            .expect_err("short salt")
            .to_string();
        assert!(e.contains("SCRAM-SHA-256.salt"), "{e}");
        let e = CredentialStore::from_str_doc("users:\n  bob:\n    password: x\n")
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("users.bob") && e.contains("password"), "{e}");
        let e = CredentialStore::from_str_doc("users:\n  bob: {}\n")
            .expect_err("no credential")
            .to_string();
        assert!(e.contains("no credential"), "{e}");
    }

    #[test]
    fn debug_output_has_no_key_material() {
        let s = store_with("alice", "pw");
        let c = s.credential("alice", ScramMechanism::Sha256).expect("c");
        let dbg = format!("{s:?}");
        assert!(!dbg.contains(&format!("{:?}", c.salt)));
        assert!(!dbg.contains(&B64.encode(&c.stored_key)));
        assert!(dbg.contains("alice"));
    }
}
