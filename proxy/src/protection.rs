//! Opens what field encryption needs at start-up: the KMS (behind its
//! timeout, retry and circuit-breaker guard), the data-key manager, the
//! per-subject key store and the token key; the CLI's `custos keys` uses the
//! same constructors so both see the same keys.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use custos_crypto::guarded::{GuardConfig, GuardedKms};
use custos_crypto::keyring::{LocalKeyring, MasterKey};
use custos_crypto::keys::{KeyManager, Rotation};
use custos_crypto::kms::Kms;
use custos_crypto::subject_store::{SubjectKeyStore, SubjectKeys};
use custos_crypto::SubjectTokenizer;

use crate::field_rules::{EncryptionConfig, KmsConfig, LocalKmsConfig, Protection, RuleSet};
use crate::metrics::Metrics;

/// Why field encryption could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtectionError {
    /// The KMS could not be opened.
    #[error("kms: {0}")]
    Kms(String),
    /// The rules do not compile.
    #[error("rules: {0}")]
    Rules(String),
    /// The subject key store could not be opened.
    #[error("subject_keys: {0}")]
    SubjectKeys(String),
    /// A secret key file is unusable.
    #[error("{key}: {why}")]
    KeyFile {
        /// Config key naming the file.
        key: &'static str,
        /// What is wrong (never the key bytes).
        why: String,
    },
}

/// The master key of a local keyring, from its file or variable.
pub fn master_key(l: &LocalKmsConfig) -> Result<MasterKey, ProtectionError> {
    match (&l.master_key_file, &l.master_key_env) {
        (Some(f), _) => MasterKey::from_file(f).map_err(|e| ProtectionError::Kms(e.to_string())),
        (None, Some(v)) => MasterKey::from_env(v).map_err(|e| ProtectionError::Kms(e.to_string())),
        (None, None) => Err(ProtectionError::Kms(
            "local keyring needs master_key_file or master_key_env".into(),
        )),
    }
}

/// The local keyring of `l` (which must exist).
pub fn local_keyring(l: &LocalKmsConfig) -> Result<LocalKeyring, ProtectionError> {
    LocalKeyring::open(&l.keyring, master_key(l)?).map_err(|e| ProtectionError::Kms(e.to_string()))
}

/// The configured KMS, unguarded; for the local keyring also the keyring
/// itself, whose rotations the key manager follows.
pub async fn kms(
    cfg: &EncryptionConfig,
) -> Result<(Arc<dyn Kms>, Option<Arc<LocalKeyring>>), ProtectionError> {
    Ok(match &cfg.kms {
        KmsConfig::Local(l) => {
            let k = Arc::new(local_keyring(l)?);
            (k.clone(), Some(k))
        }
        KmsConfig::Aws(a) => {
            let mut c = custos_crypto::aws_kms::AwsKmsConfig::new(a.region.clone());
            c.endpoint = a.endpoint.clone();
            c.timeout = Duration::from_millis(cfg.kms_calls.timeout_ms);
            if let (Some(id), Some(secret)) = (&a.access_key_id_env, &a.secret_access_key_env) {
                c.credentials = custos_crypto::aws_kms::AwsCredentialSource::FromEnv {
                    access_key_id_var: id.clone(),
                    secret_access_key_var: secret.clone(),
                    session_token_var: None,
                };
            }
            let aws = custos_crypto::aws_kms::AwsKms::connect(c)
                .await
                .map_err(|e| ProtectionError::Kms(e.to_string()))?;
            (Arc::new(aws), None)
        }
    })
}

/// The audit signing key of `config`, unwrapped by the KMS of
/// `encryption.kms` (for `audit.signing_key_kms`).
pub async fn audit_signing_key(
    config: &crate::config::Config,
) -> Result<custos_audit::SignerKey, crate::audit_trail::AuditOpenError> {
    use crate::audit_trail::AuditOpenError;
    let (Some(audit), Some(enc)) = (&config.audit, &config.encryption) else {
        return Err(AuditOpenError::KmsKey(
            "`audit.signing_key_kms` needs `encryption.kms`".into(),
        ));
    };
    let (kms, _) = kms(enc)
        .await
        .map_err(|e| AuditOpenError::KmsKey(e.to_string()))?;
    let guarded = GuardedKms::new(
        kms,
        GuardConfig {
            timeout: Duration::from_millis(enc.kms_calls.timeout_ms),
            max_retries: enc.kms_calls.max_retries,
            ..GuardConfig::default()
        },
    );
    crate::audit_key::load(&guarded, &audit.signing_key)
        .await
        .map_err(|e| AuditOpenError::KmsKey(e.to_string()))
}

fn read_secret(
    key: &'static str,
    path: &Path,
) -> Result<zeroize::Zeroizing<Vec<u8>>, ProtectionError> {
    std::fs::read(path)
        .map(zeroize::Zeroizing::new)
        .map_err(|e| ProtectionError::KeyFile {
            key,
            why: format!("cannot read {}: {e}", path.display()),
        })
}

/// A secret of at least 32 bytes from a file, as a tokenizer.
pub fn tokenizer(key: &'static str, path: &Path) -> Result<SubjectTokenizer, ProtectionError> {
    let bytes = read_secret(key, path)?;
    SubjectTokenizer::new(&bytes).map_err(|e| ProtectionError::KeyFile {
        key,
        why: e.to_string(),
    })
}

/// The subject key store of `cfg`, if configured: the sled store in
/// `subject_keys.dir`, or the shared one in `subject_keys.topic` on the
/// cluster `upstream` reaches (read to its end before this returns, then
/// tailed until `shutdown`).
pub async fn subject_store(
    cfg: &EncryptionConfig,
    upstream: &Upstream,
    metrics: Option<Arc<Metrics>>,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<Option<Arc<dyn SubjectKeys>>, ProtectionError> {
    let Some(s) = &cfg.subject_keys else {
        return Ok(None);
    };
    let key = read_secret("encryption.subject_keys.token_key_file", &s.token_key_file)?;
    let err =
        |e: custos_crypto::subject_store::StoreError| ProtectionError::SubjectKeys(e.to_string());
    if let Some(dir) = &s.dir {
        return Ok(Some(Arc::new(
            SubjectKeyStore::open(dir, &key).map_err(err)?,
        )));
    }
    let Some(topic) = &s.topic else {
        return Err(ProtectionError::SubjectKeys(
            "neither `dir` nor `topic` is set".into(),
        ));
    };
    let own = crate::upstream::OwnTopic {
        servers: upstream.servers.clone(),
        security: upstream.security.clone(),
        timeout: upstream.timeout,
        topic: topic.clone(),
        replication_factor: s.replication_factor.unwrap_or(-1),
        configs: crate::subject_topic::TOPIC_CONFIGS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        client_id: "custos-subject-keys",
    };
    let opened = tokio::time::timeout(
        upstream.timeout.max(Duration::from_secs(30)),
        crate::subject_topic::TopicSubjectStore::open(own, &key, metrics, shutdown.clone()),
    )
    .await
    .map_err(|_| ProtectionError::SubjectKeys(format!("reading topic {topic} timed out")))?
    .map_err(err)?;
    Ok(Some(opened))
}

/// How Custos reaches the upstream cluster with its own credentials.
#[derive(Clone)]
pub struct Upstream {
    /// Bootstrap brokers.
    pub servers: Vec<(String, u16)>,
    /// TLS and SASL towards them.
    pub security: crate::upstream::UpstreamSecurity,
    /// Connect timeout.
    pub timeout: Duration,
}

impl Upstream {
    /// From the `upstream` section of a configuration.
    pub fn from_config(cfg: &crate::config::Config) -> Result<Self, ProtectionError> {
        Ok(Self {
            servers: cfg
                .upstream
                .bootstrap_servers
                .iter()
                .filter_map(|b| crate::config::parse_host_port(b).ok())
                .collect(),
            security: crate::upstream::UpstreamSecurity {
                tls: cfg
                    .upstream
                    .tls
                    .as_ref()
                    .map(crate::tls::UpstreamTls::new)
                    .transpose()
                    .map_err(|e| ProtectionError::SubjectKeys(format!("upstream.tls: {e}")))?,
                sasl: cfg.upstream.sasl.clone(),
            },
            timeout: Duration::from_millis(cfg.upstream.connect_timeout_ms),
        })
    }
}

/// Everything the encrypt and decrypt stages need.
pub async fn open(
    cfg: &EncryptionConfig,
    metrics: Arc<Metrics>,
    upstream: &Upstream,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<Arc<Protection>, ProtectionError> {
    let rules = RuleSet::compile(&cfg.rules).map_err(|issues| {
        ProtectionError::Rules(
            issues
                .iter()
                .map(|i| format!("{}: {}", i.key, i.message))
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    let (inner, keyring) = kms(cfg).await?;
    let guard = GuardConfig {
        timeout: Duration::from_millis(cfg.kms_calls.timeout_ms),
        max_retries: cfg.kms_calls.max_retries,
        breaker_threshold: cfg.kms_calls.breaker_threshold,
        breaker_cooldown: Duration::from_millis(cfg.kms_calls.breaker_cooldown_ms),
        ..GuardConfig::default()
    };
    let guarded: Arc<dyn Kms> =
        Arc::new(GuardedKms::new(inner, guard).with_observer(metrics.clone()));
    let subjects = subject_store(cfg, upstream, Some(metrics.clone()), shutdown).await?;
    let mut keys = KeyManager::new(
        guarded,
        Rotation {
            max_encryptions: cfg.dek.max_encryptions,
            max_age: Duration::from_secs(cfg.dek.max_age_s),
        },
        subjects.clone(),
    )
    .map_err(|e| ProtectionError::Kms(e.to_string()))?;
    if let Some(k) = &keyring {
        // New data keys under a rotated KEK at once, not after the DEK ages out.
        keys = keys.with_kek_versions(k.clone());
    }
    if cfg.dek.reference == crate::field_rules::DekReference::Stored {
        keys = keys
            .with_stored_deks()
            .map_err(|e| ProtectionError::Kms(format!("encryption.dek.reference: {e}")))?;
    }
    let keys = Arc::new(keys);
    let _ = metrics.key_stats.set(keys.clone());
    let tokenizer = cfg
        .token_key_file
        .as_deref()
        .map(|p| tokenizer("encryption.token_key_file", p))
        .transpose()?;
    Ok(Arc::new(Protection {
        rules,
        keys,
        subjects,
        tokenizer,
        max_encryptions: cfg.dek.max_encryptions,
        keyring,
    }))
}

/// How an audit record names a key: `KEK#vN` for a data key wrapped by
/// version N of a KEK (`#v0` where the KMS versions keys itself),
/// `dek:ID` (hex) for a data key stored in the key store, or `subject#vN`
/// for a data subject's key (whose token goes alongside).
pub fn key_label(r: &custos_crypto::key_ref::KeyRef) -> String {
    match r {
        custos_crypto::key_ref::KeyRef::Wrapped(w) => format!("{}#v{}", w.kek_id, w.kek_version),
        custos_crypto::key_ref::KeyRef::Stored(id) => custos_crypto::subject_store::dek_label(id),
        custos_crypto::key_ref::KeyRef::Subject { version, .. } => format!("subject#v{version}"),
    }
}

/// The audit token of a subject key reference (hex of its keyed hash).
pub fn subject_token(r: &custos_crypto::key_ref::KeyRef) -> Option<custos_audit::SubjectToken> {
    match r {
        custos_crypto::key_ref::KeyRef::Subject { token, .. } => {
            let hex: String = token.iter().map(|b| format!("{b:02x}")).collect();
            custos_audit::SubjectToken::from_hex(&hex).ok()
        }
        custos_crypto::key_ref::KeyRef::Wrapped(_) | custos_crypto::key_ref::KeyRef::Stored(_) => {
            None
        }
    }
}

/// Records `keys` (and subject tokens) on every noted record of `kind`.
pub fn note_keys<'a>(
    notes: &crate::audit_trail::AuditNotes,
    kind: custos_audit::EventKind,
    keys: impl IntoIterator<Item = &'a custos_crypto::key_ref::KeyRef>,
    details: &[(String, String)],
) {
    if !notes.enabled() {
        return;
    }
    let mut labels: Vec<String> = Vec::new();
    let mut tokens = Vec::new();
    for k in keys {
        let l = key_label(k);
        if !labels.contains(&l) {
            labels.push(l);
        }
        if let Some(t) = subject_token(k) {
            if !tokens.contains(&t) {
                tokens.push(t);
            }
        }
    }
    labels.sort();
    notes.update(|records| {
        let mut found = false;
        for r in records.iter_mut().filter(|r| r.kind == kind) {
            found = true;
            r.key_ids.extend(labels.iter().cloned());
            r.subject_tokens.extend(tokens.iter().cloned());
            r.details.extend(details.iter().cloned());
        }
        if !found {
            // The Fetch record is written after the decrypt stage ran (response
            // stages run in reverse): leave a partial one for it to complete.
            let mut r = custos_audit::AuditRecord::new(kind, "");
            r.key_ids = labels;
            r.subject_tokens = tokens;
            r.details.extend(details.iter().cloned());
            records.push(r);
        }
    });
}

/// Records a `key_rotation` audit event whenever a KEK version appears or
/// changes state in the embedded keyring (rotated, retired or destroyed by
/// `custos keys` in another process), checking every `every`. A destroyed
/// version's cached data keys are dropped from `keys`, so what it protected
/// stops being revealed by this process too.
pub async fn watch_keyring(
    keyring: Arc<LocalKeyring>,
    keys: Arc<custos_crypto::keys::KeyManager>,
    auditor: crate::audit_trail::Auditor,
    every: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let snapshot = |k: &LocalKeyring| -> Vec<(String, u32, String)> {
        k.list()
            .map(|l| {
                l.into_iter()
                    .map(|i| (i.name, i.version, i.state.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut known = snapshot(&keyring);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let _ = keyring.reload_now();
        let now = snapshot(&keyring);
        for (name, version, state) in &now {
            let before = known.iter().find(|(n, v, _)| n == name && v == version);
            let change = match before {
                None if *version > 1 => "rotated",
                None => "created",
                Some((_, _, s)) if s != state => "state_changed",
                Some(_) => continue,
            };
            if state == "destroyed" {
                keys.forget_kek_version(name, *version);
            }
            tracing::info!(kek = %name, version, state = %state, change, "keyring changed");
            auditor.event(
                auditor
                    .record(custos_audit::EventKind::KeyRotation)
                    .with_key_id(format!("{name}#v{version}"))
                    .with_detail("change", change)
                    .with_detail("state", state.clone()),
            );
        }
        known = now;
    }
}
