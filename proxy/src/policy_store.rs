//! The policies in force, and their reloading.
//!
//! Policies and the topic catalog are loaded at start-up (a bad file stops
//! Custos with the reason) and reloaded on SIGHUP or when a file changes. A
//! reload builds and validates a whole new engine before swapping it in, so a
//! file that fails to parse or validate leaves the last good policies in
//! force; the failure is logged and counted, never half-applied.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use custos_policy::{Authorizer, CatalogEntry, PolicyEngine, TopicCatalog};
use tokio_util::sync::CancellationToken;

use crate::config::AuthorizationConfig;
use crate::metrics::Metrics;

/// Why the policies or catalog could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyLoadError {
    /// The catalog file is unreadable or invalid.
    #[error("`authorization.catalog` {path}: {message}")]
    Catalog {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The policies do not parse or validate against the schema.
    #[error("`authorization.policies`: {0}")]
    Policies(#[from] custos_policy::PolicyError),
}

/// Reads a topic catalog file (a YAML list of entries).
pub fn load_catalog(path: Option<&Path>) -> Result<TopicCatalog, PolicyLoadError> {
    let Some(path) = path else {
        return Ok(TopicCatalog::empty());
    };
    let bad = |message: String| PolicyLoadError::Catalog {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let entries: Vec<CatalogEntry> =
        serde_yaml_ng::from_str(&text).map_err(|e| bad(e.to_string()))?;
    TopicCatalog::new(entries).map_err(|e| bad(e.to_string()))
}

/// Loads the engine the configuration describes.
pub fn load_engine(cfg: &AuthorizationConfig) -> Result<PolicyEngine, PolicyLoadError> {
    let catalog = load_catalog(cfg.catalog.as_deref())?;
    Ok(PolicyEngine::load_files(&cfg.policies, catalog)?)
}

/// The authorizer and what it was loaded from.
pub struct PolicyStore {
    /// The policies in force.
    pub authorizer: Arc<Authorizer>,
    config: AuthorizationConfig,
    metrics: Arc<Metrics>,
    auditor: crate::audit_trail::Auditor,
}

impl PolicyStore {
    /// Loads the policies; any error is a start-up error.
    pub fn load(
        cfg: &AuthorizationConfig,
        metrics: Arc<Metrics>,
        auditor: crate::audit_trail::Auditor,
    ) -> Result<Self, PolicyLoadError> {
        let engine = load_engine(cfg)?;
        tracing::info!(
            policies = engine.policy_ids().len(),
            hash = engine.hash(),
            "authorization policies loaded"
        );
        for w in engine.warnings() {
            tracing::warn!(warning = %w, "policy validation warning");
        }
        Ok(Self {
            authorizer: Arc::new(Authorizer::new(engine)),
            config: cfg.clone(),
            metrics,
            auditor,
        })
    }

    /// Reloads from the files; on failure the previous policies stay in force.
    pub fn reload(&self, why: &str) -> Result<u64, PolicyLoadError> {
        match load_engine(&self.config) {
            Ok(engine) => {
                let hash = engine.hash().to_string();
                let count = engine.policy_ids().len();
                let generation = self.authorizer.install(engine);
                self.metrics.policy_reload(true);
                self.auditor.event(
                    self.auditor
                        .record(custos_audit::EventKind::PolicyReload)
                        .with_detail("why", why)
                        .with_detail("generation", generation.to_string())
                        .with_detail("policy_hash", hash.clone()),
                );
                tracing::info!(why, generation, policies = count, hash, "policies reloaded");
                Ok(generation)
            }
            Err(e) => {
                self.metrics.policy_reload(false);
                self.auditor.event(
                    self.auditor
                        .record(custos_audit::EventKind::PolicyReload)
                        .with_detail("why", why)
                        .with_error(None, custos_audit::Blame::Internal, e.to_string()),
                );
                tracing::error!(
                    why,
                    error = %e,
                    generation = self.authorizer.generation(),
                    "policy reload failed; the previous policies stay in force"
                );
                Err(e)
            }
        }
    }

    /// Reloads on SIGHUP and, every `reload_interval_ms`, when a file's size
    /// or modification time changed; until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload by file change only");
                None
            }
        };
        let interval = Duration::from_millis(self.config.reload_interval_ms);
        let mut seen = self.fingerprint();
        loop {
            let poll = async {
                if interval.is_zero() {
                    std::future::pending::<()>().await
                } else {
                    tokio::time::sleep(interval).await
                }
            };
            let sighup = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = sighup => {
                    seen = self.fingerprint();
                    let _ = self.reload("SIGHUP");
                }
                _ = poll => {
                    let now = self.fingerprint();
                    if now != seen {
                        seen = now;
                        let _ = self.reload("file changed");
                    }
                }
            }
        }
    }

    /// Size and modification time of every policy and catalog file.
    fn fingerprint(&self) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
        let mut out = Vec::new();
        let mut visit = |p: &Path| {
            let meta = std::fs::metadata(p).ok();
            out.push((
                p.to_path_buf(),
                meta.as_ref().map_or(0, |m| m.len()),
                meta.and_then(|m| m.modified().ok()),
            ));
        };
        for p in self
            .config
            .policies
            .iter()
            .chain(self.config.catalog.iter())
        {
            if p.is_dir() {
                let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                    .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
                    .unwrap_or_default();
                files.sort();
                visit(p);
                for f in files {
                    visit(&f);
                }
            } else {
                visit(p);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path) -> AuthorizationConfig {
        AuthorizationConfig {
            policies: vec![dir.join("p.cedar")],
            catalog: None,
            reload_interval_ms: 0,
        }
    }

    const GOOD: &str = r#"@id("alice-reads") permit(principal == User::"alice", action in Action::"Read", resource);"#;

    #[test]
    fn a_broken_reload_keeps_the_last_good_policies() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("p.cedar"), GOOD).expect("write");
        let store = PolicyStore::load(
            &cfg(dir.path()),
            Arc::new(Metrics::new()),
            Default::default(),
        )
        .expect("load");
        let hash = store.authorizer.current().hash().to_string();
        std::fs::write(
            dir.path().join("p.cedar"),
            r#"permit(principal, action == Action::"Reed", resource);"#,
        )
        .expect("write");
        assert!(store.reload("test").is_err());
        assert_eq!(store.authorizer.current().hash(), hash);
        assert_eq!(store.authorizer.generation(), 1);
        std::fs::write(
            dir.path().join("p.cedar"),
            format!("{GOOD}\n@id(\"bob\") permit(principal == User::\"bob\", action, resource);"),
        )
        .expect("write");
        assert_eq!(store.reload("test").expect("reload"), 2);
        assert_ne!(store.authorizer.current().hash(), hash);
    }

    #[test]
    fn a_bad_catalog_names_the_file() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("p.cedar"), GOOD).expect("write");
        std::fs::write(dir.path().join("c.yaml"), "- nonsense: [").expect("write");
        let mut c = cfg(dir.path());
        c.catalog = Some(dir.path().join("c.yaml"));
        let e = PolicyStore::load(&c, Arc::new(Metrics::new()), Default::default())
            .err()
            .expect("must fail");
        assert!(e.to_string().contains("c.yaml"), "{e}");
    }
}
