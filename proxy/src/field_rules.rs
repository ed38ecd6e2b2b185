//! What to protect in which topic: the `encryption` section of the config,
//! compiled into rules the encrypt and decrypt stages apply record by record.
//!
//! A rule names topics (exact, prefix or regex), the parts of a record it
//! protects (whole value, key, named headers, JSON fields), the KEK that wraps
//! its data keys, an optional data-subject source (per-person keys that can be
//! shredded), and the mask shown to principals that may not decrypt. The
//! Kafka mechanics (batches, Produce and Fetch bodies) live in the stages; this
//! file only knows records.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use custos_crypto::envelope::{self, Binding};
use custos_crypto::json_fields::{self, FieldPath};
use custos_crypto::key_ref::KeyRef;
use custos_crypto::keys::{Dek, KeyError, KeyManager};
use custos_crypto::kms::KmsError;
use custos_crypto::mask::{self, Mask};
use custos_crypto::SubjectTokenizer;
use serde::Deserialize;

use crate::auth::ConfigIssue;
use crate::record_batch::{Field, RecordView};

/// Field encryption: where keys come from and what to protect.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// The KMS holding the key-encryption keys.
    pub kms: KmsConfig,
    /// When data keys are replaced.
    #[serde(default)]
    pub dek: DekConfig,
    /// KMS call limits (timeout, retries, circuit breaker).
    #[serde(default)]
    pub kms_calls: KmsCallConfig,
    /// The per-subject key store; needed by rules with a `subject`.
    #[serde(default)]
    pub subject_keys: Option<SubjectKeysConfig>,
    /// Secret for keyed-hash (`token`) masks: a file of at least 32 bytes.
    #[serde(default)]
    pub token_key_file: Option<PathBuf>,
    /// The protection rules; the first rule whose topics match a topic applies.
    pub rules: Vec<RuleConfig>,
}

impl EncryptionConfig {
    /// Every problem with this section, each naming its key.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut out = Vec::new();
        let mut bad = |key: &str, message: String| {
            out.push(ConfigIssue {
                key: format!("encryption.{key}"),
                message,
            })
        };
        match &self.kms {
            KmsConfig::Local(l) => {
                match (&l.master_key_file, &l.master_key_env) {
                    (None, None) => bad(
                        "kms.local.master_key_file",
                        "set master_key_file or master_key_env: the keyring is encrypted under a master key".into(),
                    ),
                    (Some(_), Some(_)) => bad(
                        "kms.local.master_key_env",
                        "set only one of master_key_file and master_key_env".into(),
                    ),
                    (Some(f), None) if !f.is_file() => bad(
                        "kms.local.master_key_file",
                        format!("{} is not a readable file", f.display()),
                    ),
                    (None, Some(v)) if std::env::var_os(v).is_none() => bad(
                        "kms.local.master_key_env",
                        format!("environment variable {v} is not set"),
                    ),
                    _ => {}
                }
                if !l.keyring.is_file() {
                    bad(
                        "kms.local.keyring",
                        format!(
                            "{} does not exist; create it with `custos keys --config FILE create NAME`",
                            l.keyring.display()
                        ),
                    );
                }
            }
            KmsConfig::Aws(a) => {
                if a.region.trim().is_empty() {
                    bad("kms.aws.region", "must not be empty".into());
                }
                match (&a.access_key_id_env, &a.secret_access_key_env) {
                    (Some(_), None) | (None, Some(_)) => bad(
                        "kms.aws.secret_access_key_env",
                        "set both access_key_id_env and secret_access_key_env, or neither".into(),
                    ),
                    (Some(i), Some(k)) => {
                        for v in [i, k] {
                            if std::env::var_os(v).is_none() {
                                bad(
                                    "kms.aws.access_key_id_env",
                                    format!("environment variable {v} is not set"),
                                );
                            }
                        }
                    }
                    (None, None) => {}
                }
            }
        }
        if self.dek.max_encryptions == 0 || self.dek.max_encryptions >= 1 << 32 {
            bad(
                "dek.max_encryptions",
                "must be between 1 and 2^32 - 1 (AES-GCM with random nonces must stay far below 2^32 uses of a key)".into(),
            );
        }
        if self.dek.max_age_s == 0 {
            bad("dek.max_age_s", "must be at least 1".into());
        }
        if self.kms_calls.timeout_ms == 0 {
            bad("kms_calls.timeout_ms", "must be at least 1".into());
        }
        if let Some(t) = &self.token_key_file {
            if !t.is_file() {
                bad(
                    "token_key_file",
                    format!("{} is not a readable file", t.display()),
                );
            }
        }
        if let Some(s) = &self.subject_keys {
            match (&s.dir, &s.topic) {
                (Some(_), Some(_)) => bad(
                    "subject_keys",
                    "give `dir` (a store local to this gateway) or `topic` (a Kafka topic every gateway shares), not both".into(),
                ),
                (None, None) => bad(
                    "subject_keys",
                    "give `dir` (a store local to this gateway) or `topic` (a Kafka topic every gateway shares)".into(),
                ),
                (None, Some(t)) if t.is_empty() || t.len() > 249 || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) => bad(
                    "subject_keys.topic",
                    format!("{t:?} is not a valid Kafka topic name (1-249 of A-Z a-z 0-9 . _ -)"),
                ),
                (Some(_), None) if s.replication_factor.is_some() => bad(
                    "subject_keys.replication_factor",
                    "only applies to `topic`".into(),
                ),
                _ => {}
            }
            if s.replication_factor.is_some_and(|r| r < 1) {
                bad(
                    "subject_keys.replication_factor",
                    "must be at least 1".into(),
                );
            }
            if !s.token_key_file.is_file() {
                bad(
                    "subject_keys.token_key_file",
                    format!("{} is not a readable file", s.token_key_file.display()),
                );
            }
        }
        match RuleSet::compile(&self.rules) {
            Ok(set) => {
                if self.dek.reference == DekReference::Stored && self.subject_keys.is_none() {
                    bad(
                        "dek.reference",
                        "`stored` keeps data keys in the key store, so encryption.subject_keys {dir or topic, token_key_file} is required".into(),
                    );
                }
                if set.needs_subject_keys() && self.subject_keys.is_none() {
                    bad(
                        "subject_keys",
                        "a rule names a subject or is deterministic (its stable key is stored), so encryption.subject_keys {dir or topic, token_key_file} is required".into(),
                    );
                }
                if self.token_key_file.is_none()
                    && self.rules.iter().any(|r| matches!(r.mask, Mask::Token))
                {
                    bad(
                        "token_key_file",
                        "a rule masks with `token`, which needs a secret key file".into(),
                    );
                }
            }
            Err(issues) => out.extend(issues),
        }
        out
    }
}

/// Which KMS wraps data keys: `{local: {...}}` or `{aws: {...}}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "KmsSpec")]
pub enum KmsConfig {
    /// The embedded keyring file (`custos keys create|rotate|list|retire`).
    Local(LocalKmsConfig),
    /// AWS KMS.
    Aws(AwsKmsSettings),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KmsSpec {
    #[serde(default)]
    local: Option<LocalKmsConfig>,
    #[serde(default)]
    aws: Option<AwsKmsSettings>,
}

impl TryFrom<KmsSpec> for KmsConfig {
    type Error = &'static str;

    fn try_from(s: KmsSpec) -> Result<Self, Self::Error> {
        match (s.local, s.aws) {
            (Some(l), None) => Ok(KmsConfig::Local(l)),
            (None, Some(a)) => Ok(KmsConfig::Aws(a)),
            _ => Err("`kms` needs exactly one of `local` or `aws`"),
        }
    }
}

/// The embedded keyring.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalKmsConfig {
    /// The keyring file.
    pub keyring: PathBuf,
    /// File holding the 32-byte master key (raw or hex).
    #[serde(default)]
    pub master_key_file: Option<PathBuf>,
    /// Environment variable holding the master key (hex or base64).
    #[serde(default)]
    pub master_key_env: Option<String>,
}

/// AWS KMS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsKmsSettings {
    /// Region, e.g. `eu-west-1`.
    pub region: String,
    /// Endpoint override (a local KMS-compatible server); default: AWS's.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Environment variable holding the access key id; without it, the
    /// SDK's default credential chain (environment, profile, instance role).
    #[serde(default)]
    pub access_key_id_env: Option<String>,
    /// Environment variable holding the secret access key.
    #[serde(default)]
    pub secret_access_key_env: Option<String>,
}

/// When a data key stops being used for new encryptions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DekConfig {
    /// Encryptions per data key (far below GCM's 2^32 random-nonce limit).
    #[serde(default = "default_max_encryptions")]
    pub max_encryptions: u64,
    /// Age of a data key, in seconds.
    #[serde(default = "default_max_age_s")]
    pub max_age_s: u64,
    /// How envelopes name their data key.
    #[serde(default)]
    pub reference: DekReference,
}

impl Default for DekConfig {
    fn default() -> Self {
        Self {
            max_encryptions: default_max_encryptions(),
            max_age_s: default_max_age_s(),
            reference: DekReference::default(),
        }
    }
}

/// How envelopes name their data key (`encryption.dek.reference`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DekReference {
    /// Each envelope carries its DEK wrapped by the KEK: nothing but the
    /// KMS is needed to open it.
    #[default]
    Inline,
    /// Each new DEK is stored once, wrapped, in `subject_keys`, and
    /// envelopes name it by a 16-byte id: about 60 bytes less per
    /// protected part (80 characters in a JSON field), and `custos keys
    /// rewrap` can move those DEKs to a new KEK version. The store then
    /// holds keys to all data sealed this way: losing it loses the data.
    Stored,
}

fn default_max_encryptions() -> u64 {
    1 << 24
}

fn default_max_age_s() -> u64 {
    3600
}

/// Limits on every KMS call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsCallConfig {
    /// Per-call timeout.
    #[serde(default = "default_kms_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries of a call that failed for a retryable reason.
    #[serde(default = "default_kms_retries")]
    pub max_retries: u32,
    /// Consecutive failures that open the circuit breaker.
    #[serde(default = "default_breaker_threshold")]
    pub breaker_threshold: u32,
    /// How long an open breaker waits before a trial call.
    #[serde(default = "default_breaker_cooldown_ms")]
    pub breaker_cooldown_ms: u64,
}

impl Default for KmsCallConfig {
    fn default() -> Self {
        Self {
            timeout_ms: default_kms_timeout_ms(),
            max_retries: default_kms_retries(),
            breaker_threshold: default_breaker_threshold(),
            breaker_cooldown_ms: default_breaker_cooldown_ms(),
        }
    }
}

fn default_kms_timeout_ms() -> u64 {
    2000
}
fn default_kms_retries() -> u32 {
    2
}
fn default_breaker_threshold() -> u32 {
    5
}
fn default_breaker_cooldown_ms() -> u64 {
    5000
}

/// The per-subject key store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectKeysConfig {
    /// Directory of a store local to this gateway (sled; created if missing).
    pub dir: Option<PathBuf>,
    /// Or a compacted Kafka topic on the upstream cluster that every gateway
    /// shares (created if missing, one partition).
    pub topic: Option<String>,
    /// Replication factor when Custos creates `topic` (default: the broker's).
    pub replication_factor: Option<i16>,
    /// Secret (at least 32 bytes) that turns subject ids into tokens, so the
    /// store never holds a raw subject id.
    pub token_key_file: PathBuf,
}

/// Which topics a rule covers: `{exact: NAME}`, `{prefix: P}` or
/// `{regex: R}` (whole name), the same form as the topic catalog's `match`.
pub use custos_policy::TopicMatch;

/// Where a record's data-subject id comes from: `{json_field: PATH}`,
/// `{record_key: true}` or `{header: NAME}`, exactly one key.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(try_from = "SubjectSpec")]
pub enum SubjectSource {
    /// A JSON field of the value, e.g. `$.customer.id`.
    JsonField(String),
    /// The record key.
    RecordKey(bool),
    /// A header, by name.
    Header(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubjectSpec {
    #[serde(default)]
    json_field: Option<String>,
    #[serde(default)]
    record_key: Option<bool>,
    #[serde(default)]
    header: Option<String>,
}

impl TryFrom<SubjectSpec> for SubjectSource {
    type Error = &'static str;

    fn try_from(s: SubjectSpec) -> Result<Self, Self::Error> {
        match (s.json_field, s.record_key, s.header) {
            (Some(p), None, None) => Ok(SubjectSource::JsonField(p)),
            (None, Some(k), None) => Ok(SubjectSource::RecordKey(k)),
            (None, None, Some(h)) => Ok(SubjectSource::Header(h)),
            _ => Err("`subject` needs exactly one of `json_field`, `record_key` or `header`"),
        }
    }
}

/// One protection rule as written in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique name, used in logs, metrics and audit records.
    pub name: String,
    /// The topics it covers.
    pub topics: TopicMatch,
    /// The KEK (keyring name, or AWS key id/ARN/alias) that wraps its data keys.
    pub kek: String,
    /// Data classification tag of what it protects (e.g. `pii`, `pci`), for audit.
    #[serde(default)]
    pub classification: Option<String>,
    /// Encrypt the whole value.
    #[serde(default)]
    pub value: bool,
    /// Encrypt the record key.
    #[serde(default)]
    pub key: bool,
    /// Encrypt these headers' values.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Encrypt these fields of JSON values.
    #[serde(default)]
    pub json_fields: Vec<String>,
    /// AES-SIV instead of AES-GCM: equal plaintexts give equal ciphertexts
    /// (joinable, but equality is visible to whoever reads the topic).
    #[serde(default)]
    pub deterministic: bool,
    /// What principals without `Decrypt` see.
    #[serde(default)]
    pub mask: Mask,
    /// Per-subject keys: where the subject id is found.
    #[serde(default)]
    pub subject: Option<SubjectSource>,
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    /// The rule as configured.
    pub config: RuleConfig,
    matcher: Matcher,
    /// Parsed JSON paths, in `config.json_fields` order.
    pub paths: Vec<FieldPath>,
    /// Binding names of the JSON fields ("json:<path>").
    pub path_bindings: Vec<String>,
    /// Parsed subject path, when the subject is a JSON field.
    pub subject_path: Option<FieldPath>,
}

#[derive(Debug)]
enum Matcher {
    Exact(String),
    Prefix(String),
    Regex(regex::Regex),
}

impl Rule {
    /// Whether this rule covers `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        match &self.matcher {
            Matcher::Exact(t) => t == topic,
            Matcher::Prefix(p) => topic.starts_with(p.as_str()),
            Matcher::Regex(r) => r.is_match(topic),
        }
    }

    /// Seals per record this rule makes at most, counting each JSON path
    /// once (a `[*]` path may seal more; the DEK limit's margin below
    /// GCM's 2^32 covers that).
    pub fn parts_per_record(&self) -> u64 {
        let c = &self.config;
        (u64::from(c.value)
            + u64::from(c.key)
            + c.headers.len() as u64
            + c.json_fields.len() as u64)
            .max(1)
    }

    /// Whether records are sealed with keys from the subject key store (a
    /// subject's own, or a deterministic rule's stable per-topic key) rather
    /// than rotating topic data keys.
    pub fn uses_stored_keys(&self) -> bool {
        self.config.subject.is_some() || self.config.deterministic
    }

    /// The AEAD this rule seals with.
    pub fn algorithm(&self) -> custos_crypto::envelope::Algorithm {
        if self.config.deterministic {
            custos_crypto::envelope::Algorithm::Aes256Siv
        } else {
            custos_crypto::envelope::Algorithm::Aes256Gcm
        }
    }
}

/// The rules of one configuration, in order.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
}

impl RuleSet {
    /// Compiles the configured rules; every problem is reported with its key.
    pub fn compile(rules: &[RuleConfig]) -> Result<RuleSet, Vec<ConfigIssue>> {
        let mut out = Vec::new();
        let mut issues = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let at = format!("encryption.rules[{i}]");
            let before = issues.len();
            let bad = |issues: &mut Vec<ConfigIssue>, key: &str, why: String| {
                issues.push(ConfigIssue {
                    key: format!("{at}.{key}"),
                    message: why,
                });
            };
            if r.name.trim().is_empty() {
                bad(&mut issues, "name", "must not be empty".into());
            } else if rules[..i].iter().any(|o| o.name == r.name) {
                bad(
                    &mut issues,
                    "name",
                    format!("{:?} is used by an earlier rule", r.name),
                );
            }
            if r.kek.trim().is_empty() {
                bad(&mut issues, "kek", "must name a key-encryption key".into());
            }
            if !r.value && !r.key && r.headers.is_empty() && r.json_fields.is_empty() {
                bad(
                    &mut issues,
                    "value",
                    "the rule protects nothing: set value, key, headers or json_fields".into(),
                );
            }
            if r.value && !r.json_fields.is_empty() {
                bad(
                    &mut issues,
                    "json_fields",
                    "cannot be combined with value: true (the whole value is already encrypted)"
                        .into(),
                );
            }
            let matcher = match &r.topics {
                TopicMatch::Exact(t) if t.is_empty() => {
                    bad(&mut issues, "topics.exact", "must not be empty".into());
                    None
                }
                TopicMatch::Exact(t) => Some(Matcher::Exact(t.clone())),
                TopicMatch::Prefix(p) => Some(Matcher::Prefix(p.clone())),
                TopicMatch::Regex(re) => match regex::Regex::new(&format!("^(?:{re})$")) {
                    Ok(r) => Some(Matcher::Regex(r)),
                    Err(e) => {
                        bad(
                            &mut issues,
                            "topics.regex",
                            format!("is not a valid regex: {e}"),
                        );
                        None
                    }
                },
            };
            let mut paths = Vec::new();
            for (j, p) in r.json_fields.iter().enumerate() {
                match FieldPath::parse(p) {
                    Ok(fp) => paths.push(fp),
                    Err(e) => bad(&mut issues, &format!("json_fields[{j}]"), e.to_string()),
                }
            }
            let subject_path = match &r.subject {
                Some(SubjectSource::JsonField(p)) => match FieldPath::parse(p) {
                    Ok(fp) => Some(fp),
                    Err(e) => {
                        bad(&mut issues, "subject.json_field", e.to_string());
                        None
                    }
                },
                Some(SubjectSource::RecordKey(false)) => {
                    bad(
                        &mut issues,
                        "subject.record_key",
                        "must be true (or leave subject out)".into(),
                    );
                    None
                }
                Some(SubjectSource::RecordKey(true)) if r.key => {
                    bad(
                        &mut issues,
                        "subject.record_key",
                        "the subject cannot be the record key while key: true encrypts it".into(),
                    );
                    None
                }
                _ => None,
            };
            if matches!(r.subject, Some(SubjectSource::JsonField(_))) && r.value {
                bad(
                    &mut issues,
                    "subject.json_field",
                    "cannot be read from a value that value: true encrypts whole".into(),
                );
            }
            if let Some(SubjectSource::Header(h)) = &r.subject {
                if r.headers.contains(h) {
                    bad(
                        &mut issues,
                        "subject.header",
                        format!("header {h:?} is also encrypted by this rule"),
                    );
                }
            }
            if issues.len() == before {
                if let Some(matcher) = matcher {
                    out.push(Rule {
                        path_bindings: r.json_fields.iter().map(|p| format!("json:{p}")).collect(),
                        config: r.clone(),
                        matcher,
                        paths,
                        subject_path,
                    });
                }
            }
        }
        if issues.is_empty() {
            Ok(RuleSet { rules: out })
        } else {
            Err(issues)
        }
    }

    /// The first rule covering `topic`.
    pub fn for_topic(&self, topic: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(topic))
    }

    /// Whether any rule needs the subject key store.
    pub fn needs_subject_keys(&self) -> bool {
        self.rules.iter().any(Rule::uses_stored_keys)
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// Why one record could not be protected.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The value is not valid JSON (the rule needs JSON fields or the subject from it).
    #[error("value is not valid JSON: {0}")]
    Json(String),
    /// The record has no subject id where the rule says to find it.
    #[error("no data-subject id in the record ({0})")]
    NoSubject(&'static str),
    /// Sealing failed.
    #[error("encryption failed: {0}")]
    Seal(String),
}

/// The stored-key id of a deterministic rule without a subject: one key per
/// topic, kept in the subject key store so it never rotates. (Rotating data
/// keys would break what deterministic mode is for: equal plaintexts giving
/// equal ciphertexts, so that they stay joinable.) Shredding this id erases
/// the topic's deterministic fields.
pub fn deterministic_key_id(rule: &Rule, topic: &str) -> Option<Vec<u8>> {
    (rule.config.deterministic && rule.config.subject.is_none())
        .then(|| format!("custos:deterministic:{topic}").into_bytes())
}

/// The subject id of a record as read, as the rule says to find it
/// (`Ok(None)` when the rule has no subject).
pub fn subject_of(rule: &Rule, rec: &RecordView<'_>) -> Result<Option<Vec<u8>>, RecordError> {
    // A record is read before anything in it is replaced, so every field
    // is in the batch's own bytes and no scratch buffer is needed.
    let (key, value) = (rec.key.get(&[]), rec.value.get(&[]));
    let mut headers = rec.headers.iter().map(|(k, v)| (*k, v.get(&[])));
    match &rule.config.subject {
        None => Ok(None),
        Some(SubjectSource::RecordKey(_)) => match key {
            Some(k) if !k.is_empty() => Ok(Some(k.to_vec())),
            _ => Err(RecordError::NoSubject("record key is null or empty")),
        },
        Some(SubjectSource::Header(h)) => headers
            .find(|(name, _)| *name == h.as_bytes())
            .and_then(|(_, v)| v)
            .filter(|v| !v.is_empty())
            .map(|v| Some(v.to_vec()))
            .ok_or(RecordError::NoSubject("subject header missing or empty")),
        Some(SubjectSource::JsonField(_)) => {
            let Some(path) = &rule.subject_path else {
                return Err(RecordError::NoSubject("subject path not compiled"));
            };
            let Some(v) = value else {
                // A tombstone has no fields to seal and must reach the
                // broker for compaction; other protected parts need the id.
                if !rule.config.key && rule.config.headers.is_empty() {
                    return Ok(None);
                }
                return Err(RecordError::NoSubject("value is null"));
            };
            let found = json_fields::locate(v, std::slice::from_ref(path))
                .map_err(|e| RecordError::Json(e.to_string()))?;
            let Some(l) = found.first() else {
                return Err(RecordError::NoSubject("subject field missing"));
            };
            let raw = &v[l.span.clone()];
            // A JSON string's id is its text without quotes; other values by
            // their JSON text.
            let id = if raw.len() >= 2 && raw[0] == b'"' {
                serde_json::from_slice::<String>(raw)
                    .map(String::into_bytes)
                    .unwrap_or_else(|_| raw.to_vec())
            } else {
                raw.to_vec()
            };
            if id.is_empty() {
                return Err(RecordError::NoSubject("subject field is empty"));
            }
            Ok(Some(id))
        }
    }
}

/// Binding name of the whole value.
pub const FIELD_VALUE: &str = "value";
/// Binding name of the record key.
pub const FIELD_KEY: &str = "key";

/// Binding name of a header.
pub fn header_field(name: &str) -> String {
    format!("header:{name}")
}

/// Shown in place of a protected part whose ciphertext does not authenticate
/// (tampered, or bound to another topic or field): never the ciphertext itself.
pub const UNDECRYPTABLE: &[u8] = b"custos:undecryptable";

/// Seals every part of `rec` that `rule` protects, in place, with `dek`.
pub fn seal_record(
    rule: &Rule,
    topic: &str,
    rec: &mut crate::record_batch::Record,
    dek: &Dek,
) -> Result<(), RecordError> {
    let mut scratch = Vec::new();
    let mut view = rec.view();
    seal_view(
        rule,
        topic,
        &mut view,
        &mut scratch,
        dek,
        &mut SealBuffers::default(),
    )?;
    let sealed = view.to_record(&scratch);
    *rec = sealed;
    Ok(())
}

/// Scratch space [`seal_view`] reuses from one record to the next.
#[derive(Default)]
pub struct SealBuffers {
    found: Vec<json_fields::Located>,
    encoder: json_fields::CiphertextEncoder,
    envelope: Vec<u8>,
}

/// The headers of a record being rewritten that `rule` protects and that
/// are still as read: each one's binding name, its bytes, and the slot its
/// replacement goes in.
fn protected_headers<'v, 'a>(
    rule: &'v Rule,
    headers: &'v mut [(&'a [u8], Field<'a>)],
) -> impl Iterator<Item = (String, &'a [u8], &'v mut Field<'a>)> + 'v {
    // Most rules protect no header: then not even a name is read.
    let headers = if rule.config.headers.is_empty() {
        &mut [][..]
    } else {
        headers
    };
    headers.iter_mut().filter_map(move |(name, value)| {
        let name = std::str::from_utf8(name).ok()?;
        let Field::Read(v) = *value else {
            return None;
        };
        rule.config
            .headers
            .iter()
            .any(|x| x == name)
            .then(|| (header_field(name), v, value))
    })
}

/// Seals every part of a record being rewritten that `rule` protects with
/// `dek`: the sealed parts are written to `scratch` and the view points at
/// them. Says whether anything was sealed (a tombstone, or a value without
/// the selected fields, stays as it is).
pub fn seal_view(
    rule: &Rule,
    topic: &str,
    rec: &mut RecordView<'_>,
    scratch: &mut Vec<u8>,
    dek: &Dek,
    bufs: &mut SealBuffers,
) -> Result<bool, RecordError> {
    let alg = rule.algorithm();
    // Seals `plain` onto the end of `out`.
    let seal = |field: &str, plain: &[u8], out: &mut Vec<u8>| -> Result<(), RecordError> {
        // Asked for only when a part is sealed: a tombstone needs no key.
        let key = dek
            .prepared()
            .ok_or_else(|| RecordError::Seal("the data key was refused by the AEAD".into()))?;
        envelope::seal_prepared(
            alg,
            key,
            dek.key_ref(),
            &Binding { topic, field },
            plain,
            out,
        )
        .map_err(|e| RecordError::Seal(e.to_string()))
    };
    // A whole part sealed into the scratch buffer.
    let sealed = |field: &str, plain: &[u8], scratch: &mut Vec<u8>| {
        let start = scratch.len();
        seal(field, plain, scratch).map(|()| Field::New(start..scratch.len()))
    };
    let mut changed = false;
    if rule.config.key {
        if let Field::Read(k) = rec.key {
            rec.key = sealed(FIELD_KEY, k, scratch)?;
            changed = true;
        }
    }
    for (field, v, slot) in protected_headers(rule, &mut rec.headers) {
        *slot = sealed(&field, v, scratch)?;
        changed = true;
    }
    // A tombstone stays a tombstone: compaction depends on it.
    let Field::Read(value) = rec.value else {
        return Ok(changed);
    };
    if rule.config.value {
        rec.value = sealed(FIELD_VALUE, value, scratch)?;
        return Ok(true);
    }
    if rule.paths.is_empty() {
        return Ok(changed);
    }
    json_fields::locate_into(value, &rule.paths, &mut bufs.found)
        .map_err(|e| RecordError::Json(e.to_string()))?;
    if bufs.found.is_empty() {
        return Ok(changed);
    }
    // Each field's literal is written straight into the new value.
    let start = scratch.len();
    let mut pos = 0;
    for l in &bufs.found {
        scratch.extend_from_slice(&value[pos..l.span.start]);
        bufs.envelope.clear();
        seal(
            &rule.path_bindings[l.path],
            &value[l.span.clone()],
            &mut bufs.envelope,
        )?;
        bufs.encoder.encode_into(&bufs.envelope, scratch);
        pos = l.span.end;
    }
    scratch.extend_from_slice(&value[pos..]);
    rec.value = Field::New(start..scratch.len());
    Ok(true)
}

/// What a principal sees of a protected part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The original bytes.
    Plaintext,
    /// The rule's mask of them.
    Masked,
}

/// A key lookup's outcome, as the reveal step needs it.
#[derive(Clone)]
pub enum KeyLookup {
    /// The data key.
    Key(Arc<Dek>),
    /// The subject's key was shredded.
    Erased,
    /// The KMS refused to unwrap the key under this topic's context (the
    /// ciphertext was copied from another topic, or tampered): retrying
    /// cannot help, so its parts read as [`UNDECRYPTABLE`].
    Undecryptable,
    /// The key could not be had (KMS down): the caller must not answer.
    Unavailable(String),
}

impl KeyLookup {
    /// What a key manager's answer means for the reveal step.
    pub fn from_key(found: Result<Arc<Dek>, KeyError>) -> Self {
        match found {
            Ok(k) => Self::Key(k),
            // A destroyed KEK version erased everything under it, as a
            // shredding erases one subject.
            Err(KeyError::Erased { .. } | KeyError::Kms(KmsError::Destroyed { .. })) => {
                Self::Erased
            }
            // Bound to another topic or tampered: a retriable error would
            // stall the partition for good.
            // A stored DEK the store does not have: the data cannot be opened.
            Err(KeyError::Kms(KmsError::Rejected(_)) | KeyError::UnknownStoredDek) => {
                Self::Undecryptable
            }
            Err(e) => Self::Unavailable(e.to_string()),
        }
    }
}

/// Adds the key references of every envelope in the parts `rule` protects.
pub fn key_refs(rule: &Rule, rec: &crate::record_batch::Record, out: &mut HashSet<KeyRef>) {
    let mut add = |b: &[u8]| {
        if envelope::is_envelope(b) {
            if let Ok(e) = envelope::parse(b) {
                out.insert(e.key_ref());
            }
        }
    };
    if rule.config.key {
        if let Some(k) = &rec.key {
            add(k);
        }
    }
    for h in &rec.headers {
        if let (Ok(name), Some(v)) = (std::str::from_utf8(&h.key), &h.value) {
            if rule.config.headers.iter().any(|x| x == name) {
                add(v);
            }
        }
    }
    let Some(value) = &rec.value else { return };
    if rule.config.value {
        add(value);
    } else if !rule.paths.is_empty() {
        if let Ok(found) = json_fields::locate(value, &rule.paths) {
            for l in found {
                if let Some(env) = json_fields::decode_ciphertext(&value[l.span]) {
                    add(&env);
                }
            }
        }
    }
}

/// Why a record could not be revealed at all.
#[derive(Debug, thiserror::Error)]
pub enum RevealError {
    /// The key could not be had (KMS down): the partition must not be answered.
    #[error("key unavailable: {0}")]
    Unavailable(String),
    /// A key the caller has not looked up yet: look it up, add it to the
    /// [`KeyTable`] with [`KeyTable::insert`] and try again.
    #[error("key reference not resolved yet")]
    Unresolved(Box<Unresolved>),
}

/// A key reference that was not in the [`KeyTable`].
#[derive(Debug)]
pub struct Unresolved {
    /// The reference.
    pub key_ref: KeyRef,
    /// Its bytes as envelopes carry them.
    pub bytes: Vec<u8>,
}

/// The keys looked up while revealing one response, found by the
/// key-reference bytes of an envelope (no [`KeyRef`] is built and nothing is
/// hashed when a record names the same key as the one before, the usual
/// case).
#[derive(Default)]
pub struct KeyTable {
    index: HashMap<Box<[u8]>, usize>,
    entries: Vec<(Box<[u8]>, KeyRef, KeyLookup)>,
    // Atomic only so the table may be held across an await; one task uses it.
    last: std::sync::atomic::AtomicUsize,
}

impl KeyTable {
    /// The lookup recorded for these key-reference bytes.
    pub fn get(&self, bytes: &[u8]) -> Option<&KeyLookup> {
        let last = self.last.load(std::sync::atomic::Ordering::Relaxed);
        if let Some((b, _, found)) = self.entries.get(last) {
            if **b == *bytes {
                return Some(found);
            }
        }
        let i = *self.index.get(bytes)?;
        self.last.store(i, std::sync::atomic::Ordering::Relaxed);
        Some(&self.entries[i].2)
    }

    /// Records the outcome of looking a key up.
    pub fn insert(&mut self, key: Unresolved, found: KeyLookup) {
        let bytes: Box<[u8]> = key.bytes.into();
        if let Some(&i) = self.index.get(&bytes) {
            self.entries[i].2 = found;
            return;
        }
        self.index.insert(bytes.clone(), self.entries.len());
        self.entries.push((bytes, key.key_ref, found));
    }

    /// Records the outcome of looking `key_ref` up (for callers that
    /// collected references with [`key_refs`] rather than from errors).
    pub fn insert_ref(&mut self, key_ref: KeyRef, found: KeyLookup) {
        // A reference too long to write cannot be in any envelope either.
        if let Ok(bytes) = envelope::key_ref_bytes(&key_ref) {
            self.insert(Unresolved { key_ref, bytes }, found);
        }
    }

    /// Whether nothing was looked up.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds `other`'s lookups of references this table does not have.
    pub fn absorb(&mut self, other: KeyTable) {
        for (bytes, key_ref, found) in other.entries {
            if !self.index.contains_key(&bytes) {
                let bytes = bytes.into_vec();
                self.insert(Unresolved { key_ref, bytes }, found);
            }
        }
    }

    /// Every key reference looked up.
    pub fn key_refs(&self) -> impl Iterator<Item = &KeyRef> {
        self.entries.iter().map(|(_, k, _)| k)
    }
}

impl Clone for KeyTable {
    fn clone(&self) -> Self {
        Self {
            index: self.index.clone(),
            entries: self.entries.clone(),
            last: std::sync::atomic::AtomicUsize::new(
                self.last.load(std::sync::atomic::Ordering::Relaxed),
            ),
        }
    }
}

/// Who reads records being revealed, and with which keys.
pub struct Reader<'k> {
    /// What the reader may see.
    pub access: Access,
    /// The data keys found so far.
    pub keys: &'k KeyTable,
    /// Key of `token` masks, when configured.
    pub tokenizer: Option<&'k SubjectTokenizer>,
    /// Asked for a key `keys` lacks: one it holds in memory is used at once
    /// (and handed back by [`RevealBuffers::take_found`]), so a pass only stops for keys
    /// that need the KMS. Without it, every missing key is
    /// [`RevealError::Unresolved`].
    pub in_memory: Option<&'k KeyManager>,
}

/// Buffers [`reveal_record`] reuses from one record to the next.
#[derive(Default)]
pub struct RevealBuffers {
    located: Vec<json_fields::Located>,
    envelope: Vec<u8>,
    reps: Vec<(Range<usize>, Range<usize>)>,
    found: KeyTable,
    decoder: json_fields::CiphertextDecoder,
}

impl RevealBuffers {
    /// Takes the keys taken from [`Reader::in_memory`], for the caller's table.
    pub fn take_found(&mut self) -> KeyTable {
        std::mem::take(&mut self.found)
    }
}

/// Replaces every protected part of `rec` by its plaintext or its mask,
/// written to `scratch`. Parts that are not ciphertext (written before the
/// rule, or around Custos) are left alone for `Plaintext` and masked for
/// `Masked`.
pub fn reveal_record(
    rule: &Rule,
    topic: &str,
    rec: &mut RecordView<'_>,
    scratch: &mut Vec<u8>,
    bufs: &mut RevealBuffers,
    reader: &Reader<'_>,
) -> Result<bool, RevealError> {
    let Reader {
        access,
        keys,
        tokenizer,
        in_memory,
    } = *reader;
    let RevealBuffers {
        located,
        envelope,
        reps,
        found,
        decoder,
    } = bufs;
    let mut keys = Keys {
        table: keys,
        found,
        in_memory,
        topic,
    };
    let mut changed = false;
    // One opaque part: the plaintext, its mask, or a placeholder, written
    // to the scratch buffer; `None` when it stays as it is.
    let mut reveal_bytes = |field: &str,
                            b: &[u8],
                            scratch: &mut Vec<u8>|
     -> Result<Option<Field<'static>>, RevealError> {
        let start = scratch.len();
        let new = |scratch: &Vec<u8>| Some(Field::New(start..scratch.len()));
        if envelope::is_envelope(b) {
            match open(topic, field, b, &mut keys, scratch)? {
                Opened::Plain => {}
                Opened::Erased => {
                    scratch.extend_from_slice(mask::ERASED_BYTES);
                    return Ok(new(scratch));
                }
                Opened::Bad => {
                    scratch.extend_from_slice(UNDECRYPTABLE);
                    return Ok(new(scratch));
                }
            }
        } else if access == Access::Plaintext {
            return Ok(None);
        } else {
            scratch.extend_from_slice(b);
        }
        if access == Access::Plaintext {
            return Ok(new(scratch));
        }
        let masked = rule.config.mask.mask_bytes(&scratch[start..], tokenizer);
        scratch.truncate(start);
        Ok(match masked {
            None => Some(Field::Null),
            Some(m) => {
                scratch.extend_from_slice(&m);
                new(scratch)
            }
        })
    };
    if rule.config.key {
        if let Field::Read(k) = rec.key {
            if let Some(new) = reveal_bytes(FIELD_KEY, k, scratch)? {
                rec.key = new;
                changed = true;
            }
        }
    }
    for (field, v, slot) in protected_headers(rule, &mut rec.headers) {
        if let Some(new) = reveal_bytes(&field, v, scratch)? {
            *slot = new;
            changed = true;
        }
    }
    let Field::Read(value) = rec.value else {
        return Ok(changed);
    };
    if rule.config.value {
        if let Some(new) = reveal_bytes(FIELD_VALUE, value, scratch)? {
            rec.value = new;
            changed = true;
        }
        return Ok(changed);
    }
    if rule.paths.is_empty() {
        return Ok(changed);
    }
    // A reader who sees plaintext only needs the ciphertext: the walk ends
    // at the last one (most often early in the document), and a value with
    // none is not walked at all. A masked reader needs every selected value.
    let walked = match access {
        Access::Plaintext => json_fields::locate_ciphertexts_into(
            value,
            &rule.paths,
            located,
            json_fields::count_ciphertexts(value),
        ),
        Access::Masked => json_fields::locate_into(value, &rule.paths, located),
    };
    match walked {
        Ok(()) => {}
        Err(_) if access == Access::Plaintext => return Ok(changed),
        Err(_) => {
            // Not JSON, so the fields cannot be found: mask it all rather
            // than let an unprotected value through.
            rec.value = match rule.config.mask.mask_bytes(value, tokenizer) {
                None => Field::Null,
                Some(m) => {
                    let start = scratch.len();
                    scratch.extend_from_slice(&m);
                    Field::New(start..scratch.len())
                }
            };
            return Ok(true);
        }
    }
    // Each field's new text goes to the scratch buffer, then the document
    // with those texts spliced in.
    reps.clear();
    for l in located.iter() {
        let raw = &value[l.span.clone()];
        let field = &rule.path_bindings[l.path];
        let start = scratch.len();
        match decoder.decode_into(raw, envelope) {
            true => match open(topic, field, envelope, &mut keys, scratch)? {
                Opened::Plain => {
                    if access == Access::Masked {
                        let m = rule
                            .config
                            .mask
                            .mask_json_value(&scratch[start..], tokenizer);
                        scratch.truncate(start);
                        scratch.extend_from_slice(&m);
                    }
                }
                Opened::Erased => scratch.extend_from_slice(mask::ERASED_JSON),
                Opened::Bad => {
                    scratch.push(b'"');
                    scratch.extend_from_slice(UNDECRYPTABLE);
                    scratch.push(b'"');
                }
            },
            false if access == Access::Plaintext => continue,
            false => scratch.extend_from_slice(&rule.config.mask.mask_json_value(raw, tokenizer)),
        }
        reps.push((l.span.clone(), start..scratch.len()));
    }
    if reps.is_empty() {
        return Ok(changed);
    }
    let start = scratch.len();
    let mut pos = 0;
    for (span, new) in reps.drain(..) {
        scratch.extend_from_slice(&value[pos..span.start]);
        scratch.extend_from_within(new);
        pos = span.end;
    }
    scratch.extend_from_slice(&value[pos..]);
    rec.value = Field::New(start..scratch.len());
    Ok(true)
}

/// What [`open`] found.
enum Opened {
    /// The plaintext, appended to the output.
    Plain,
    /// The subject's key was shredded.
    Erased,
    /// The envelope does not open.
    Bad,
}

/// Where [`open`] finds data keys: the caller's table, then the ones this
/// pass took from memory, then the key manager's memory.
struct Keys<'a> {
    table: &'a KeyTable,
    found: &'a mut KeyTable,
    in_memory: Option<&'a KeyManager>,
    topic: &'a str,
}

impl Keys<'_> {
    /// The lookup for `env`'s key, or [`RevealError::Unresolved`] when it
    /// needs the KMS.
    fn get(&mut self, env: &envelope::Envelope<'_>) -> Result<&KeyLookup, RevealError> {
        let bytes = env.key_ref_bytes();
        if let Some(found) = self.table.get(bytes) {
            return Ok(found);
        }
        if self.found.get(bytes).is_none() {
            let key_ref = env.key_ref();
            let cached = self.in_memory.and_then(|m| {
                m.cached_decryption_key(&key_ref, &dek_context(self.topic))
                    .map(KeyLookup::from_key)
            });
            let unresolved = Unresolved {
                key_ref,
                bytes: bytes.to_vec(),
            };
            match cached {
                Some(found) => self.found.insert(unresolved, found),
                // The caller resolves it and runs the batch again.
                None => return Err(RevealError::Unresolved(Box::new(unresolved))),
            }
        }
        let found: &KeyTable = self.found;
        found.get(bytes).ok_or_else(|| {
            RevealError::Unresolved(Box::new(Unresolved {
                key_ref: env.key_ref(),
                bytes: bytes.to_vec(),
            }))
        })
    }
}

/// Opens an envelope, appending its plaintext to `out` (nothing else is
/// left there).
fn open(
    topic: &str,
    field: &str,
    b: &[u8],
    keys: &mut Keys<'_>,
    out: &mut Vec<u8>,
) -> Result<Opened, RevealError> {
    let Ok(env) = envelope::parse(b) else {
        return Ok(Opened::Bad);
    };
    match keys.get(&env)? {
        KeyLookup::Key(dek) => {
            let Some(key) = dek.prepared() else {
                return Ok(Opened::Bad);
            };
            let start = out.len();
            match env.open_prepared(key, &Binding { topic, field }, out) {
                Ok(()) => Ok(Opened::Plain),
                Err(_) => {
                    out.truncate(start);
                    Ok(Opened::Bad)
                }
            }
        }
        KeyLookup::Erased => Ok(Opened::Erased),
        KeyLookup::Undecryptable => Ok(Opened::Bad),
        KeyLookup::Unavailable(why) => Err(RevealError::Unavailable(why.clone())),
    }
}

/// Everything the encrypt and decrypt stages share.
pub struct Protection {
    /// The compiled rules.
    pub rules: RuleSet,
    /// Data keys (cache, rotation, subject keys).
    pub keys: Arc<custos_crypto::keys::KeyManager>,
    /// The per-subject key store (shredding goes through it), when configured.
    pub subjects: Option<Arc<dyn custos_crypto::subject_store::SubjectKeys>>,
    /// Key for `token` masks, when configured.
    pub tokenizer: Option<SubjectTokenizer>,
    /// Seals one data key may make (`encryption.dek.max_encryptions`).
    pub max_encryptions: u64,
    /// The embedded keyring, when it is the KMS (its rotations are audited).
    pub keyring: Option<Arc<custos_crypto::keyring::LocalKeyring>>,
}

impl std::fmt::Debug for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protection")
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

/// The encryption context a topic's data keys are wrapped with: unwrapping
/// one under another topic's context fails, even with the KMS's help.
pub fn dek_context(topic: &str) -> custos_crypto::kms::EncryptionContext {
    let mut c = custos_crypto::kms::EncryptionContext::new();
    c.insert("custos:topic".to_string(), topic.to_string());
    c
}

#[cfg(test)]
#[path = "field_rules_tests.rs"]
mod tests;
