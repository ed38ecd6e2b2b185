//! The configuration file: one YAML document, checked completely at start-up.
//!
//! A gateway that starts with a typo in its config and silently ignores the key
//! is a security hole, so unknown keys are errors, and every error names the
//! key (`listen.broker_port_base`) and says why it is wrong.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole Custos configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where clients connect.
    pub listen: ListenConfig,
    /// The Kafka cluster Custos fronts.
    pub upstream: UpstreamConfig,
    /// Resource limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The admin HTTP server.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Shutdown behaviour.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Cedar authorization of every request; without it every authenticated
    /// client acts with the rights the broker gives Custos.
    #[serde(default)]
    pub authorization: Option<AuthorizationConfig>,
    /// The tamper-evident audit log; without it nothing is recorded.
    #[serde(default)]
    pub audit: Option<AuditConfig>,
    /// Field encryption; without it records pass as they are.
    #[serde(default)]
    pub encryption: Option<crate::field_rules::EncryptionConfig>,
}

/// When a response waits for its audit record.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuditMode {
    /// A response is released only once its records are durable.
    #[default]
    Strict,
    /// Records are queued (bounded); a response waits only for queue room.
    Async,
}

/// The audit log's store, signing key and behaviour.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Directory of the sled store (created if missing).
    pub dir: PathBuf,
    /// Ed25519 signing key: a 32-byte seed file made by `custos audit keygen`
    /// or, with `signing_key_kms`, that key wrapped by the KMS.
    pub signing_key: PathBuf,
    /// Keep the signing key under the KMS of `encryption.kms`: `signing_key`
    /// then holds it wrapped by this KEK (`custos audit keygen --config`)
    /// and the KMS unwraps it at start.
    #[serde(default)]
    pub signing_key_kms: Option<SigningKeyKms>,
    /// `strict` (default) or `async`.
    #[serde(default)]
    pub mode: AuditMode,
    /// Records queued before appends wait (both modes).
    #[serde(default = "default_audit_queue")]
    pub queue_capacity: usize,
    /// A signed checkpoint at least this often while records arrive.
    #[serde(default = "default_checkpoint_interval_ms")]
    pub checkpoint_interval_ms: u64,
    /// ... and after at most this many records.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// Name of this instance in every record (default: the host name).
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Also ship every durable record (JSON) to this Kafka topic, with
    /// Custos's own upstream credentials; created with one partition if
    /// missing. For collecting several instances' logs in one place.
    #[serde(default)]
    pub kafka_topic: Option<String>,
}

/// Where the KMS-held audit signing key is wrapped.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyKms {
    /// The KEK that wraps the key (keyring name, or AWS key id/ARN/alias).
    pub kek: String,
}

fn default_audit_queue() -> usize {
    65_536
}

fn default_checkpoint_interval_ms() -> u64 {
    1000
}

fn default_checkpoint_every() -> u64 {
    10_000
}

/// Where the Cedar policies and the topic catalog come from.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationConfig {
    /// Cedar policy files, or directories of `.cedar` files.
    pub policies: Vec<PathBuf>,
    /// Topic catalog: a YAML list of `{match, tags, owner, classification}`.
    #[serde(default)]
    pub catalog: Option<PathBuf>,
    /// How often the files are checked for changes; 0 reloads only on SIGHUP.
    #[serde(default = "default_reload_interval_ms")]
    pub reload_interval_ms: u64,
}

fn default_reload_interval_ms() -> u64 {
    2000
}

/// Client-facing listeners and the addresses advertised to clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Address the listeners bind to.
    #[serde(default = "default_listen_host")]
    pub host: String,
    /// Host name or address written into Metadata and FindCoordinator answers;
    /// clients must be able to reach Custos at it.
    pub advertised_host: String,
    /// Port of the bootstrap listener (what clients put in `bootstrap.servers`).
    pub bootstrap_port: u16,
    /// Upstream broker with node id N is exposed at `broker_port_base + N`.
    pub broker_port_base: u16,
    /// Largest broker node id Custos will expose; bounds the port range.
    #[serde(default = "default_max_broker_id")]
    pub max_broker_id: u16,
    /// TLS towards clients; plaintext when absent.
    #[serde(default)]
    pub tls: Option<ServerTlsConfig>,
    /// How clients authenticate (SASL, mTLS); anonymous when absent.
    #[serde(default)]
    pub auth: Option<crate::auth::AuthConfig>,
}

/// TLS settings of the client-facing listeners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate chain presented to clients.
    pub cert: PathBuf,
    /// PEM private key of that certificate.
    pub key: PathBuf,
    /// PEM CA bundle that client certificates must chain to.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Refuse clients without a valid certificate (needs `client_ca`).
    #[serde(default)]
    pub require_client_cert: bool,
}

/// The upstream Kafka cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `host:port` of one or more brokers, used to discover the rest.
    pub bootstrap_servers: Vec<String>,
    /// TLS towards brokers; plaintext when absent.
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
    /// Custos's own SASL login to the brokers.
    #[serde(default)]
    pub sasl: Option<crate::auth::UpstreamSaslConfig>,
    /// Time allowed to open (and secure) a connection to a broker.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How often Custos refreshes the broker list on its own.
    #[serde(default = "default_metadata_refresh_ms")]
    pub metadata_refresh_ms: u64,
}

/// TLS settings towards the brokers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// PEM CA bundle that broker certificates must chain to.
    pub ca: PathBuf,
    /// PEM client certificate chain, for brokers that require mTLS.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Name to verify broker certificates against, instead of each broker's host.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// Resource limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest Kafka frame accepted in either direction, in bytes.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: usize,
    /// Most client connections served at once; further ones are closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most requests in flight per connection before Custos stops reading.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Fetch answers at least this large that stages only read (the access
    /// audit) are streamed partition by partition instead of being read
    /// whole first; 0 streams every such answer.
    #[serde(default = "default_fetch_stream_min_bytes")]
    pub fetch_stream_min_bytes: usize,
    /// The same for Fetch answers a stage may rewrite (decryption). Smaller
    /// ones are read whole, revealed on every core and sent at their exact
    /// length, which measured cheaper and no slower; larger ones stream so
    /// that a connection never holds more than a few MiB of an answer.
    #[serde(default = "default_fetch_reveal_stream_min_bytes")]
    pub fetch_reveal_stream_min_bytes: usize,
    /// Pass answers that no stage reads from the broker's socket to the
    /// client's inside the kernel (splice), when both legs are plain TCP.
    #[serde(default = "default_zero_copy")]
    pub zero_copy: bool,
    /// Send buffer of each client socket, in bytes (`0`: the system's
    /// autotuning). 1 MiB was measured best for consumers (BENCHMARKS.md,
    /// run AD).
    #[serde(default = "default_client_send_buffer_bytes")]
    pub client_send_buffer_bytes: usize,
}

fn default_client_send_buffer_bytes() -> usize {
    1 << 20
}

fn default_zero_copy() -> bool {
    true
}

fn default_fetch_stream_min_bytes() -> usize {
    256 * 1024
}

fn default_fetch_reveal_stream_min_bytes() -> usize {
    8 << 20
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: default_max_frame_bytes(),
            max_connections: default_max_connections(),
            max_in_flight: default_max_in_flight(),
            fetch_stream_min_bytes: default_fetch_stream_min_bytes(),
            fetch_reveal_stream_min_bytes: default_fetch_reveal_stream_min_bytes(),
            zero_copy: default_zero_copy(),
            client_send_buffer_bytes: default_client_send_buffer_bytes(),
        }
    }
}

/// The admin HTTP server (`/healthz`, `/readyz`, `/metrics`, and the audit
/// API under `/v1/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to serve on.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// File holding the bearer token every `/v1/` request must present; the
    /// audit API answers 503 until one is configured.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            token_file: None,
        }
    }
}

/// Shortest admin token accepted, in characters.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

impl AdminConfig {
    /// The bearer token from `token_file` (`None` when not configured): the
    /// file's content without surrounding whitespace, at least
    /// [`MIN_ADMIN_TOKEN_LEN`] visible ASCII characters.
    pub fn read_token(&self) -> Result<Option<zeroize::Zeroizing<String>>, String> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let raw = zeroize::Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        );
        let token = raw.trim();
        if token.len() < MIN_ADMIN_TOKEN_LEN {
            return Err(format!(
                "{} holds a token of {} characters; use at least {MIN_ADMIN_TOKEN_LEN} (e.g. `openssl rand -hex 32`)",
                path.display(),
                token.len()
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{}: the token must be one line of visible ASCII characters (it travels in an HTTP header)",
                path.display()
            ));
        }
        Ok(Some(zeroize::Zeroizing::new(token.to_string())))
    }
}

/// Shutdown behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long in-flight requests may take to finish after SIGTERM.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout_ms: default_drain_timeout_ms(),
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for log pipelines.
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `custos=debug`; `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

fn default_listen_host() -> String {
    "0.0.0.0".into()
}
fn default_max_broker_id() -> u16 {
    1000
}
fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_metadata_refresh_ms() -> u64 {
    30_000
}
fn default_max_frame_bytes() -> usize {
    // Kafka's own `socket.request.max.bytes` default.
    100 * 1024 * 1024
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_in_flight() -> usize {
    128
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9400))
}
fn default_drain_timeout_ms() -> u64 {
    30_000
}
fn default_log_level() -> String {
    "info".into()
}

/// A configuration error, naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Dotted path of the offending key, empty for the whole file.
    pub key: String,
    /// Why it is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "`{}`: {}", self.key, self.message)
        }
    }
}

/// All errors found in one configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// File the errors are about.
    pub file: String,
    /// The errors, in file order.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration {}:", self.file)?;
        for e in &self.errors {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let cfg = Self::load_unvalidated(path)?;
        let errors = cfg.validate();
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors {
                file: path.display().to_string(),
                errors,
            })
        }
    }

    /// Reads a file that parses but may not validate yet (tools such as
    /// `custos keys create` make the files that validation looks for).
    pub fn load_unvalidated(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: file.clone(),
            errors: vec![err("", format!("cannot read file: {e}"))],
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse_unvalidated(&text, base).map_err(|errors| ConfigErrors { file, errors })
    }

    fn parse_unvalidated(text: &str, base: &Path) -> Result<Config, Vec<ConfigError>> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let mut cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            vec![err(&key, e.into_inner().to_string())]
        })?;
        cfg.resolve_paths(base);
        Ok(cfg)
    }

    /// Parses and validates YAML text; relative TLS paths resolve against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, Vec<ConfigError>> {
        let cfg = Self::parse_unvalidated(text, base)?;
        let errors = cfg.validate();
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(errors)
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(a) = &mut self.listen.auth {
            a.resolve_paths(base);
        }
        if let Some(t) = &mut self.listen.tls {
            fix(&mut t.cert);
            fix(&mut t.key);
            if let Some(ca) = &mut t.client_ca {
                fix(ca);
            }
        }
        if let Some(sasl) = &mut self.upstream.sasl {
            sasl.resolve_paths(base);
        }
        if let Some(t) = &mut self.admin.token_file {
            fix(t);
        }
        if let Some(a) = &mut self.audit {
            fix(&mut a.dir);
            fix(&mut a.signing_key);
        }
        if let Some(e) = &mut self.encryption {
            if let crate::field_rules::KmsConfig::Local(l) = &mut e.kms {
                fix(&mut l.keyring);
                if let Some(m) = &mut l.master_key_file {
                    fix(m);
                }
            }
            if let Some(s) = &mut e.subject_keys {
                if let Some(d) = &mut s.dir {
                    fix(d);
                }
                fix(&mut s.token_key_file);
            }
            if let Some(t) = &mut e.token_key_file {
                fix(t);
            }
        }
        if let Some(a) = &mut self.authorization {
            a.policies.iter_mut().for_each(fix);
            if let Some(c) = &mut a.catalog {
                fix(c);
            }
        }
        if let Some(t) = &mut self.upstream.tls {
            fix(&mut t.ca);
            if let Some(c) = &mut t.cert {
                fix(c);
            }
            if let Some(k) = &mut t.key {
                fix(k);
            }
        }
    }

    /// Whether requests must name topics (not ids): authorization, audit and
    /// encryption all decide by topic name.
    pub fn name_based(&self) -> bool {
        self.authorization.is_some() || self.audit.is_some() || self.encryption.is_some()
    }

    /// Checks every rule that types alone cannot express; returns all violations.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if let Some(a) = &self.audit {
            if let Some(k) = &a.signing_key_kms {
                if k.kek.trim().is_empty() {
                    errors.push(err("audit.signing_key_kms.kek", "must not be empty"));
                }
                if self.encryption.is_none() {
                    errors.push(err(
                        "audit.signing_key_kms",
                        "needs `encryption.kms`: the signing key is unwrapped by the KMS configured there (rules may be empty)",
                    ));
                }
            }
            if a.queue_capacity == 0 {
                errors.push(err("audit.queue_capacity", "must be at least 1"));
            }
            if a.checkpoint_interval_ms == 0 {
                errors.push(err("audit.checkpoint_interval_ms", "must be at least 1"));
            }
            if a.checkpoint_every == 0 {
                errors.push(err("audit.checkpoint_every", "must be at least 1"));
            }
        }
        if let Some(e) = &self.encryption {
            // Without rules the section only serves the audit signing key.
            let kms_for_audit = self
                .audit
                .as_ref()
                .is_some_and(|a| a.signing_key_kms.is_some());
            if e.rules.is_empty() && !kms_for_audit {
                errors.push(err("encryption.rules", "list at least one rule"));
            }
            for i in e.validate() {
                errors.push(err(&i.key, i.message));
            }
        }
        if let Some(a) = &self.authorization {
            if a.policies.is_empty() {
                errors.push(err(
                    "authorization.policies",
                    "must name at least one policy file or directory",
                ));
            }
        }
        let l = &self.listen;
        if l.advertised_host.trim().is_empty() {
            errors.push(err("listen.advertised_host", "must not be empty"));
        }
        if l.bootstrap_port == 0 {
            errors.push(err(
                "listen.bootstrap_port",
                "must be a port between 1 and 65535",
            ));
        }
        if l.broker_port_base == 0 {
            errors.push(err(
                "listen.broker_port_base",
                "must be a port between 1 and 65535",
            ));
        }
        let top = u32::from(l.broker_port_base) + u32::from(l.max_broker_id);
        if top > 65535 {
            errors.push(err(
                "listen.broker_port_base",
                format!(
                    "broker_port_base {} + max_broker_id {} = {top} exceeds the largest port 65535",
                    l.broker_port_base, l.max_broker_id
                ),
            ));
        }
        let range = u32::from(l.broker_port_base)..=top;
        if range.contains(&u32::from(l.bootstrap_port)) {
            errors.push(err(
                "listen.bootstrap_port",
                format!(
                    "{} falls inside the broker port range {}..={top}",
                    l.bootstrap_port, l.broker_port_base
                ),
            ));
        }
        if range.contains(&u32::from(self.admin.listen.port())) {
            errors.push(err(
                "admin.listen",
                format!(
                    "port {} falls inside the broker port range {}..={top}",
                    self.admin.listen.port(),
                    l.broker_port_base
                ),
            ));
        }
        if self.admin.listen.port() == l.bootstrap_port {
            errors.push(err(
                "admin.listen",
                "uses the same port as listen.bootstrap_port",
            ));
        }
        if let Err(why) = self.admin.read_token() {
            errors.push(err("admin.token_file", why));
        }
        if let Some(t) = &l.tls {
            check_file(&mut errors, "listen.tls.cert", &t.cert);
            check_file(&mut errors, "listen.tls.key", &t.key);
            if let Some(ca) = &t.client_ca {
                check_file(&mut errors, "listen.tls.client_ca", ca);
            } else if t.require_client_cert {
                errors.push(err(
                    "listen.tls.require_client_cert",
                    "is true but listen.tls.client_ca is not set, so no certificate could be verified",
                ));
            }
        }
        if let Some(a) = &l.auth {
            for i in a.validate("listen.auth", l.tls.is_some()) {
                errors.push(err(&i.key, i.message));
            }
        }
        let u = &self.upstream;
        if u.bootstrap_servers.is_empty() {
            errors.push(err(
                "upstream.bootstrap_servers",
                "must list at least one host:port",
            ));
        }
        for (i, s) in u.bootstrap_servers.iter().enumerate() {
            if let Err(why) = parse_host_port(s) {
                errors.push(err(&format!("upstream.bootstrap_servers[{i}]"), why));
            }
        }
        if let Some(sasl) = &u.sasl {
            for i in sasl.validate("upstream.sasl") {
                errors.push(err(&i.key, i.message));
            }
        }
        if u.connect_timeout_ms == 0 {
            errors.push(err("upstream.connect_timeout_ms", "must be greater than 0"));
        }
        if u.metadata_refresh_ms < 1000 {
            errors.push(err("upstream.metadata_refresh_ms", "must be at least 1000"));
        }
        if let Some(t) = &u.tls {
            check_file(&mut errors, "upstream.tls.ca", &t.ca);
            match (&t.cert, &t.key) {
                (Some(c), Some(k)) => {
                    check_file(&mut errors, "upstream.tls.cert", c);
                    check_file(&mut errors, "upstream.tls.key", k);
                }
                (None, None) => {}
                (Some(_), None) => errors.push(err(
                    "upstream.tls.key",
                    "is required when upstream.tls.cert is set",
                )),
                (None, Some(_)) => errors.push(err(
                    "upstream.tls.cert",
                    "is required when upstream.tls.key is set",
                )),
            }
        }
        let lim = &self.limits;
        if lim.max_frame_bytes < 1024 || lim.max_frame_bytes > i32::MAX as usize {
            errors.push(err(
                "limits.max_frame_bytes",
                format!("must be between 1024 and {}", i32::MAX),
            ));
        }
        if lim.max_connections == 0 {
            errors.push(err("limits.max_connections", "must be greater than 0"));
        }
        if lim.max_in_flight == 0 {
            errors.push(err("limits.max_in_flight", "must be greater than 0"));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            errors.push(err("log.level", format!("is not a valid filter: {e}")));
        }
        errors
    }
}

fn check_file(errors: &mut Vec<ConfigError>, key: &str, path: &Path) {
    if let Err(e) = std::fs::metadata(path) {
        errors.push(err(key, format!("cannot read {}: {e}", path.display())));
    }
}

/// Splits `host:port` (or `[v6]:port`), with a reason when it is malformed.
pub fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not host:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{s:?} has an empty host"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{s:?} has an invalid port {port:?}"))?;
    if port == 0 {
        return Err(format!("{s:?} has port 0"));
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "
listen:
  advertised_host: proxy.local
  bootstrap_port: 9092
  broker_port_base: 9100
upstream:
  bootstrap_servers: [\"kafka-1:9092\", \"[::1]:9093\"]
admin:
  listen: 127.0.0.1:8400
";

    fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
        Config::parse(text, Path::new("/nonexistent"))
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.listen.host, "0.0.0.0");
        assert_eq!(c.limits.max_frame_bytes, 100 * 1024 * 1024);
        assert_eq!(c.limits.fetch_stream_min_bytes, 256 << 10);
        assert_eq!(c.limits.fetch_reveal_stream_min_bytes, 8 << 20);
        assert!(c.limits.zero_copy);
        assert_eq!(c.limits.client_send_buffer_bytes, 1 << 20);
        assert_eq!(c.shutdown.drain_timeout_ms, 30_000);
        assert_eq!(
            parse_host_port(&c.upstream.bootstrap_servers[1]),
            Ok(("::1".to_string(), 9093))
        );
    }

    #[test]
    fn a_kms_held_audit_key_needs_the_encryption_kms_and_lets_rules_be_empty() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("master.key"), [1u8; 32]).expect("master");
        std::fs::write(dir.path().join("keyring.json"), "{}").expect("keyring");
        let audit =
            "audit:\n  dir: store\n  signing_key: audit.key.kms\n  signing_key_kms: {kek: audit}\n";
        let encryption = "encryption:\n  kms: {local: {keyring: keyring.json, master_key_file: master.key}}\n  rules: []\n";
        let load = |text: String| Config::parse(&text, dir.path());
        let keys = |r: Result<Config, Vec<ConfigError>>| -> Vec<String> {
            r.err()
                .unwrap_or_default()
                .into_iter()
                .map(|e| e.key)
                .collect()
        };
        assert_eq!(
            keys(load(format!("{GOOD}{audit}"))),
            ["audit.signing_key_kms"]
        );
        assert_eq!(
            keys(load(format!("{GOOD}{encryption}"))),
            ["encryption.rules"]
        );
        let c = load(format!("{GOOD}{audit}{encryption}")).expect("valid");
        assert_eq!(
            c.audit.and_then(|a| a.signing_key_kms).map(|k| k.kek),
            Some("audit".to_string())
        );
        assert_eq!(
            keys(load(format!(
                "{GOOD}{}{encryption}",
                audit.replace("{kek: audit}", "{kek: \" \"}")
            ))),
            ["audit.signing_key_kms.kek"]
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let text = GOOD.replace("bootstrap_port: 9092", "bootstrap_prot: 9092");
        let e = parse(&text).unwrap_err();
        assert_eq!(e[0].key, "listen.bootstrap_prot");
        assert!(e[0].message.contains("unknown field"), "{}", e[0].message);
    }

    #[test]
    fn wrong_type_is_named() {
        let text = GOOD.replace("broker_port_base: 9100", "broker_port_base: lots");
        let e = parse(&text).unwrap_err();
        assert_eq!(e[0].key, "listen.broker_port_base");
    }

    #[test]
    fn port_range_overflow_and_overlap_are_reported_together() {
        let text = GOOD
            .replace("broker_port_base: 9100", "broker_port_base: 65000")
            .replace("bootstrap_port: 9092", "bootstrap_port: 65001");
        let e = parse(&text).unwrap_err();
        let keys: Vec<_> = e.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"listen.broker_port_base"), "{keys:?}");
        assert!(keys.contains(&"listen.bootstrap_port"), "{keys:?}");
    }

    #[test]
    fn bad_bootstrap_server_is_indexed() {
        let text = GOOD.replace("\"[::1]:9093\"", "\"kafka-2\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(e[0].key, "upstream.bootstrap_servers[1]");
    }

    #[test]
    fn missing_tls_files_are_named() {
        let text = GOOD.replace(
            "upstream:\n  bootstrap_servers",
            "upstream:\n  tls:\n    ca: missing-ca.pem\n  bootstrap_servers",
        );
        let e = parse(&text).unwrap_err();
        assert!(
            e.iter()
                .any(|e| e.key == "upstream.tls.ca" && e.message.contains("missing-ca.pem")),
            "{e:?}"
        );
    }

    #[test]
    fn admin_token_file_is_resolved_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let with_token = GOOD.replace(
            "  listen: 127.0.0.1:8400\n",
            "  listen: 127.0.0.1:8400\n  token_file: admin.token\n",
        );
        // Missing file: named, with the resolved path.
        let e = Config::parse(&with_token, dir.path()).unwrap_err();
        assert_eq!(e[0].key, "admin.token_file");
        assert!(e[0].message.contains("admin.token"), "{}", e[0].message);
        // Too short.
        std::fs::write(dir.path().join("admin.token"), "short\n").expect("write");
        let e = Config::parse(&with_token, dir.path()).unwrap_err();
        assert!(e[0].message.contains("at least"), "{}", e[0].message);
        // Whitespace inside.
        std::fs::write(dir.path().join("admin.token"), "0123456789 abcdef0123\n").expect("write");
        let e = Config::parse(&with_token, dir.path()).unwrap_err();
        assert!(e[0].message.contains("visible ASCII"), "{}", e[0].message);
        // Good: trailing newline trimmed.
        std::fs::write(dir.path().join("admin.token"), "0123456789abcdef0123\n").expect("write");
        let c = Config::parse(&with_token, dir.path()).expect("valid");
        assert_eq!(
            c.admin
                .read_token()
                .expect("token")
                .as_deref()
                .map(String::as_str),
            Some("0123456789abcdef0123")
        );
        assert_eq!(parse(GOOD).expect("valid").admin.read_token(), Ok(None));
    }

    #[test]
    fn require_client_cert_needs_a_ca() {
        let text = GOOD.replace(
            "  broker_port_base: 9100\n",
            "  broker_port_base: 9100\n  tls:\n    cert: /etc/hostname\n    key: /etc/hostname\n    require_client_cert: true\n",
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e[0].key, "listen.tls.require_client_cert");
    }
}
