//! Client identity: who is on the other end of a connection.
//!
//! Clients authenticate **to Custos** — by TLS client certificate
//! ([`mtls`]) or by a SASL exchange terminated here ([`plain`], [`scram`],
//! [`oauth`]) — and Custos authenticates to the brokers with its own
//! credentials ([`client`]). The result is an [`Identity`] for authorization.
//!
//! The session drives SASL through [`SaslServer`]: on SaslHandshake it calls
//! [`SaslServer::start`] with the client's mechanism, then feeds each
//! SaslAuthenticate payload to [`SaslExchange::step`] until it yields
//! [`Step::Done`]. Any error ends the exchange; send Kafka's
//! SASL_AUTHENTICATION_FAILED with [`AuthError::client_message`], which says
//! the same thing for an unknown user and a wrong password.
//!
//! Passwords never appear in the configuration: the client side reads
//! Custos's own from a file or an environment variable, and client
//! credentials live, salted and hashed, in the SCRAM credential file
//! ([`credentials`]).

pub mod client;
pub mod credentials;
pub mod jwks;
pub mod mtls;
pub mod oauth;
pub mod plain;
pub mod principal;
pub mod scram;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::Deserialize;
use zeroize::Zeroizing;

pub use credentials::{CredentialError, CredentialStore, ScramMechanism};
pub use mtls::{MtlsConfig, MtlsMapper};
pub use oauth::{OAuthBearerConfig, OAuthValidator};
pub use principal::{AuthMethod, Identity, PrincipalType};

/// A SASL mechanism Custos knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum SaslMechanism {
    /// RFC 4616 PLAIN, checked against the SCRAM credential file.
    #[serde(rename = "PLAIN")]
    Plain,
    /// SCRAM-SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM-SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// RFC 7628 OAUTHBEARER with JWTs.
    #[serde(rename = "OAUTHBEARER")]
    OAuthBearer,
}

impl SaslMechanism {
    /// The name used in SaslHandshake.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::OAuthBearer => "OAUTHBEARER",
        }
    }

    /// Parses a SaslHandshake mechanism name (exact, as Kafka compares).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "PLAIN" => Self::Plain,
            "SCRAM-SHA-256" => Self::ScramSha256,
            "SCRAM-SHA-512" => Self::ScramSha512,
            "OAUTHBEARER" => Self::OAuthBearer,
            _ => return None,
        })
    }

    fn needs_credentials_file(self) -> bool {
        !matches!(self, Self::OAuthBearer)
    }

    fn method(self) -> AuthMethod {
        match self {
            Self::Plain => AuthMethod::SaslPlain,
            Self::ScramSha256 => AuthMethod::ScramSha256,
            Self::ScramSha512 => AuthMethod::ScramSha512,
            Self::OAuthBearer => AuthMethod::OAuthBearer,
        }
    }
}

impl fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How clients of one listener authenticate.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// SASL terminated by Custos; absent means no SASL on this listener.
    #[serde(default)]
    pub sasl: Option<SaslConfig>,
    /// Identity from TLS client certificates.
    #[serde(default)]
    pub mtls: Option<MtlsConfig>,
}

/// SASL settings of a listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslConfig {
    /// Mechanisms offered, in the order advertised.
    pub mechanisms: Vec<SaslMechanism>,
    /// SCRAM credential file, for PLAIN and SCRAM.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// OAUTHBEARER settings.
    #[serde(default)]
    pub oauthbearer: Option<OAuthBearerConfig>,
}

/// Custos's own SASL login to the brokers.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSaslConfig {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: SaslMechanism,
    /// Custos's user name at the brokers.
    pub username: String,
    /// File whose content (trailing newline removed) is the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
}

impl fmt::Debug for UpstreamSaslConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only where the password comes from, never the password.
        f.debug_struct("UpstreamSaslConfig")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password_file", &self.password_file)
            .field("password_env", &self.password_env)
            .finish()
    }
}

/// One problem in an authentication setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct ConfigIssue {
    /// Dotted key, prefixed as the caller asked (`listen.auth.sasl.mechanisms`).
    pub key: String,
    /// Why it is wrong.
    pub message: String,
}

fn issue(prefix: &str, key: &str, message: impl Into<String>) -> ConfigIssue {
    let key = match (prefix.is_empty(), key.is_empty()) {
        (true, _) => key.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) => format!("{prefix}.{key}"),
    };
    ConfigIssue {
        key,
        message: message.into(),
    }
}

fn resolve(base: &Path, p: &mut PathBuf) {
    if p.is_relative() {
        *p = base.join(&*p);
    }
}

impl AuthConfig {
    /// Makes relative file paths relative to `base` (the config file's folder).
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(s) = &mut self.sasl {
            if let Some(p) = &mut s.credentials_file {
                resolve(base, p);
            }
            if let Some(o) = &mut s.oauthbearer {
                for p in [&mut o.jwks_file, &mut o.jwks_ca].into_iter().flatten() {
                    resolve(base, p);
                }
            }
        }
    }

    /// Checks everything that needs no file access; keys are `prefix.…`.
    /// `listener_tls` says whether the listener has TLS, which PLAIN requires
    /// because it sends the password itself.
    pub fn validate(&self, prefix: &str, listener_tls: bool) -> Vec<ConfigIssue> {
        let mut out = Vec::new();
        if let Some(s) = &self.sasl {
            let p = if prefix.is_empty() {
                "sasl".to_string()
            } else {
                format!("{prefix}.sasl")
            };
            if s.mechanisms.is_empty() {
                out.push(issue(&p, "mechanisms", "list at least one mechanism"));
            }
            for (i, m) in s.mechanisms.iter().enumerate() {
                if s.mechanisms[..i].contains(m) {
                    out.push(issue(
                        &p,
                        &format!("mechanisms[{i}]"),
                        format!("{m} is listed twice"),
                    ));
                }
                if *m == SaslMechanism::Plain && !listener_tls {
                    out.push(issue(
                        &p,
                        &format!("mechanisms[{i}]"),
                        "PLAIN sends the password itself; it needs a TLS listener (`listen.tls`)",
                    ));
                }
            }
            let needs_file = s.mechanisms.iter().any(|m| m.needs_credentials_file());
            match (needs_file, &s.credentials_file) {
                (true, None) => out.push(issue(
                    &p,
                    "credentials_file",
                    "required for PLAIN and SCRAM mechanisms",
                )),
                (false, Some(_)) => out.push(issue(
                    &p,
                    "credentials_file",
                    "not used: no PLAIN or SCRAM mechanism is listed",
                )),
                _ => {}
            }
            let has_oauth = s.mechanisms.contains(&SaslMechanism::OAuthBearer);
            match (has_oauth, &s.oauthbearer) {
                (true, None) => out.push(issue(
                    &p,
                    "oauthbearer",
                    "required when OAUTHBEARER is listed",
                )),
                (false, Some(_)) => out.push(issue(
                    &p,
                    "oauthbearer",
                    "not used: OAUTHBEARER is not listed in `mechanisms`",
                )),
                (true, Some(o)) => {
                    let op = format!("{p}.oauthbearer");
                    for (k, m) in o.validate() {
                        out.push(issue(&op, &k, m));
                    }
                }
                (false, None) => {}
            }
        }
        if let Some(m) = &self.mtls {
            if !listener_tls {
                out.push(issue(
                    prefix,
                    "mtls",
                    "needs a TLS listener that asks for client certificates",
                ));
            }
            if let Err(e) = MtlsMapper::new(m) {
                let mp = if prefix.is_empty() {
                    "mtls".to_string()
                } else {
                    format!("{prefix}.mtls")
                };
                out.push(issue(&mp, &e.key, e.message));
            }
        }
        out
    }
}

impl UpstreamSaslConfig {
    /// Makes a relative `password_file` relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(p) = &mut self.password_file {
            resolve(base, p);
        }
    }

    /// Checks the settings without reading the password; keys are `prefix.…`.
    pub fn validate(&self, prefix: &str) -> Vec<ConfigIssue> {
        let mut out = Vec::new();
        if self.mechanism == SaslMechanism::OAuthBearer {
            out.push(issue(
                prefix,
                "mechanism",
                "Custos logs in to brokers with PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
            ));
        }
        if self.username.is_empty() {
            out.push(issue(prefix, "username", "must not be empty"));
        }
        match (&self.password_file, &self.password_env) {
            (None, None) => out.push(issue(
                prefix,
                "password_file",
                "give `password_file` or `password_env` (passwords are never written in the config)",
            )),
            (Some(_), Some(_)) => out.push(issue(
                prefix,
                "password_env",
                "give either `password_file` or `password_env`, not both",
            )),
            (None, Some(v)) if v.is_empty() => {
                out.push(issue(prefix, "password_env", "empty variable name"))
            }
            _ => {}
        }
        out
    }

    /// Reads the password from its file or environment variable.
    pub fn password(&self) -> Result<Zeroizing<String>, AuthSetupError> {
        let pw = match (&self.password_file, &self.password_env) {
            (Some(path), _) => {
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    AuthSetupError::Config(ConfigIssue {
                        key: "password_file".into(),
                        message: format!("cannot read {}: {e}", path.display()),
                    })
                })?);
                Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_string())
            }
            (None, Some(var)) => Zeroizing::new(std::env::var(var).map_err(|_| {
                AuthSetupError::Config(ConfigIssue {
                    key: "password_env".into(),
                    message: format!("environment variable `{var}` is not set (or not UTF-8)"),
                })
            })?),
            (None, None) => {
                return Err(AuthSetupError::Config(ConfigIssue {
                    key: "password_file".into(),
                    message: "no password source".into(),
                }))
            }
        };
        if pw.is_empty() {
            return Err(AuthSetupError::Config(ConfigIssue {
                key: if self.password_file.is_some() {
                    "password_file".into()
                } else {
                    "password_env".into()
                },
                message: "the password is empty".into(),
            }));
        }
        Ok(pw)
    }

    /// A fresh client for one login to one broker.
    pub fn client(&self) -> Result<client::SaslClient, AuthSetupError> {
        let pw = self.password()?;
        client::SaslClient::new(self.mechanism.name(), &self.username, &pw).map_err(|e| {
            AuthSetupError::Config(ConfigIssue {
                key: "mechanism".into(),
                message: e.to_string(),
            })
        })
    }
}

/// Why authentication could not be set up from its configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthSetupError {
    /// A setting is wrong.
    #[error(transparent)]
    Config(#[from] ConfigIssue),
    /// The SCRAM credential file could not be loaded.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// The OAUTHBEARER validator could not start.
    #[error("oauthbearer: {0}")]
    OAuth(#[from] oauth::OAuthSetupError),
}

/// Why one SASL exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The client asked for a mechanism Custos does not know.
    #[error("unsupported SASL mechanism `{0}`")]
    UnsupportedMechanism(String),
    /// The mechanism exists but this listener does not offer it.
    #[error("SASL mechanism {0} is not enabled on this listener")]
    MechanismNotEnabled(SaslMechanism),
    /// PLAIN failed.
    #[error(transparent)]
    Plain(#[from] plain::PlainError),
    /// SCRAM failed.
    #[error(transparent)]
    Scram(#[from] scram::ScramError),
    /// OAUTHBEARER failed.
    #[error("OAUTHBEARER: {0}")]
    OAuth(#[from] oauth::OAuthError),
    /// The user authenticated but is no longer in the credential store.
    #[error("user `{0}` is not in the credential store")]
    UserVanished(String),
    /// A message after the exchange had finished or failed.
    #[error("SASL exchange already finished")]
    Finished,
}

impl AuthError {
    /// Whether SaslHandshake should answer UNSUPPORTED_SASL_MECHANISM.
    pub fn is_unsupported_mechanism(&self) -> bool {
        matches!(
            self,
            Self::UnsupportedMechanism(_) | Self::MechanismNotEnabled(_)
        )
    }

    /// The text for the client's error message: never says whether the
    /// user exists or what exactly was wrong with the credentials (the
    /// `Display` form, for Custos's own log, does).
    pub fn client_message(&self) -> String {
        match self {
            Self::UnsupportedMechanism(m) => format!("Unsupported SASL mechanism {m}"),
            Self::MechanismNotEnabled(m) => format!("Unsupported SASL mechanism {m}"),
            Self::Plain(_) => invalid_credentials("PLAIN"),
            Self::Scram(_) => invalid_credentials("SCRAM"),
            Self::OAuth(_) => invalid_credentials("OAUTHBEARER"),
            Self::UserVanished(_) | Self::Finished => "Authentication failed".to_string(),
        }
    }
}

fn invalid_credentials(mechanism: &str) -> String {
    format!("Authentication failed during authentication due to invalid credentials with SASL mechanism {mechanism}")
}

/// What to send after one SaslAuthenticate payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes in SaslAuthenticateResponse and expect another request.
    Continue(Vec<u8>),
    /// Authenticated: send `final_bytes`; the connection is now `identity`.
    Done {
        /// Who the client is.
        identity: Identity,
        /// The last server message (SCRAM server-final; empty otherwise).
        final_bytes: Vec<u8>,
    },
}

/// The SASL side of a listener: which mechanisms, checked against what.
pub struct SaslServer {
    mechanisms: Vec<SaslMechanism>,
    credentials_file: Option<PathBuf>,
    credentials: RwLock<Arc<CredentialStore>>,
    oauth: Option<Arc<OAuthValidator>>,
}

impl fmt::Debug for SaslServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslServer")
            .field("mechanisms", &self.mechanisms)
            .field("credentials_file", &self.credentials_file)
            .field("oauth", &self.oauth)
            .finish_non_exhaustive()
    }
}

impl SaslServer {
    /// A server from parts (tests, embedding).
    pub fn new(
        mechanisms: Vec<SaslMechanism>,
        credentials: Arc<CredentialStore>,
        oauth: Option<Arc<OAuthValidator>>,
    ) -> Self {
        Self {
            mechanisms,
            credentials_file: None,
            credentials: RwLock::new(credentials),
            oauth,
        }
    }

    /// Loads the credential file and starts OAUTHBEARER (fetching a JWKS URL
    /// once, then refreshing it in the background). Needs a Tokio runtime.
    pub async fn from_config(cfg: &SaslConfig) -> Result<Self, AuthSetupError> {
        let store = match &cfg.credentials_file {
            Some(path) => CredentialStore::load(path)?,
            None => CredentialStore::new(),
        };
        let oauth = match (
            &cfg.oauthbearer,
            cfg.mechanisms.contains(&SaslMechanism::OAuthBearer),
        ) {
            (Some(o), true) => Some(OAuthValidator::start(o).await?),
            _ => None,
        };
        Ok(Self {
            mechanisms: cfg.mechanisms.clone(),
            credentials_file: cfg.credentials_file.clone(),
            credentials: RwLock::new(Arc::new(store)),
            oauth,
        })
    }

    /// Mechanism names for the SaslHandshake response, in configured order.
    pub fn mechanism_names(&self) -> Vec<&'static str> {
        self.mechanisms.iter().map(|m| m.name()).collect()
    }

    /// Re-reads the credential file (e.g. after `custos users add`); the
    /// number of users. Exchanges already running keep the store they began with.
    pub fn reload_credentials(&self) -> Result<usize, CredentialError> {
        let Some(path) = &self.credentials_file else {
            return Ok(self.store().len());
        };
        let store = CredentialStore::load(path)?;
        let n = store.len();
        *self.credentials.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(store);
        Ok(n)
    }

    fn store(&self) -> Arc<CredentialStore> {
        self.credentials
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Begins one exchange for the mechanism named in SaslHandshake.
    pub fn start(&self, mechanism: &str) -> Result<SaslExchange, AuthError> {
        let m = SaslMechanism::from_name(mechanism)
            .ok_or_else(|| AuthError::UnsupportedMechanism(mechanism.to_string()))?;
        if !self.mechanisms.contains(&m) {
            return Err(AuthError::MechanismNotEnabled(m));
        }
        let state = match m {
            SaslMechanism::Plain => Exchange::Plain(self.store()),
            SaslMechanism::ScramSha256 => Exchange::Scram(scram::ScramServer::new(
                ScramMechanism::Sha256,
                self.store(),
            )),
            SaslMechanism::ScramSha512 => Exchange::Scram(scram::ScramServer::new(
                ScramMechanism::Sha512,
                self.store(),
            )),
            SaslMechanism::OAuthBearer => match &self.oauth {
                Some(v) => Exchange::OAuth {
                    validator: v.clone(),
                    failed: None,
                },
                None => return Err(AuthError::MechanismNotEnabled(m)),
            },
        };
        Ok(SaslExchange {
            mechanism: m,
            state,
        })
    }
}

enum Exchange {
    Plain(Arc<CredentialStore>),
    Scram(scram::ScramServer<Arc<CredentialStore>>),
    OAuth {
        validator: Arc<OAuthValidator>,
        // RFC 7628: after the error JSON the client sends %x01, then fails.
        failed: Option<oauth::OAuthError>,
    },
    Finished,
}

/// One client's SASL exchange, from SaslHandshake to success or failure.
pub struct SaslExchange {
    mechanism: SaslMechanism,
    state: Exchange,
}

impl fmt::Debug for SaslExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslExchange")
            .field("mechanism", &self.mechanism)
            .finish_non_exhaustive()
    }
}

fn store_identity(
    store: &CredentialStore,
    username: String,
    method: AuthMethod,
) -> Result<Identity, AuthError> {
    let entry = store
        .user(&username)
        .ok_or_else(|| AuthError::UserVanished(username.clone()))?;
    Ok(Identity {
        principal_type: entry.principal_type,
        groups: entry.groups.clone(),
        name: username,
        method,
    })
}

impl SaslExchange {
    /// The mechanism of this exchange.
    pub fn mechanism(&self) -> SaslMechanism {
        self.mechanism
    }

    /// Handles one SaslAuthenticate payload. After an error or `Done`,
    /// further calls fail with [`AuthError::Finished`].
    pub fn step(&mut self, client_message: &[u8]) -> Result<Step, AuthError> {
        let method = self.mechanism.method();
        match std::mem::replace(&mut self.state, Exchange::Finished) {
            Exchange::Plain(store) => {
                let (name, _) = plain::authenticate(&store, client_message)?;
                Ok(Step::Done {
                    identity: store_identity(&store, name, method)?,
                    final_bytes: Vec::new(),
                })
            }
            Exchange::Scram(mut server) => match server.step(client_message)? {
                scram::ScramStep::Continue(bytes) => {
                    self.state = Exchange::Scram(server);
                    Ok(Step::Continue(bytes))
                }
                scram::ScramStep::Done {
                    username,
                    server_final,
                } => {
                    let store: &CredentialStore = server.store();
                    Ok(Step::Done {
                        identity: store_identity(store, username, method)?,
                        final_bytes: server_final,
                    })
                }
            },
            Exchange::OAuth {
                validator,
                failed: None,
            } => match validator.authenticate(client_message) {
                Ok(identity) => Ok(Step::Done {
                    identity,
                    final_bytes: Vec::new(),
                }),
                Err(e) => {
                    self.state = Exchange::OAuth {
                        validator,
                        failed: Some(e),
                    };
                    Ok(Step::Continue(oauth::INVALID_TOKEN_RESPONSE.to_vec()))
                }
            },
            Exchange::OAuth {
                failed: Some(e), ..
            } => {
                if client_message == b"\x01" {
                    Err(e.into())
                } else {
                    Err(oauth::OAuthError::BadErrorAck.into())
                }
            }
            Exchange::Finished => Err(AuthError::Finished),
        }
    }
}

/// Everything a listener needs to identify clients.
#[derive(Debug, Default)]
pub struct ListenerAuth {
    /// SASL, when configured.
    pub sasl: Option<SaslServer>,
    /// Certificate mapping, when configured.
    pub mtls: Option<MtlsMapper>,
}

impl ListenerAuth {
    /// Builds from a validated [`AuthConfig`]. Needs a Tokio runtime.
    pub async fn from_config(cfg: &AuthConfig) -> Result<Self, AuthSetupError> {
        let sasl = match &cfg.sasl {
            Some(s) => Some(SaslServer::from_config(s).await?),
            None => None,
        };
        let mtls = match &cfg.mtls {
            Some(m) => Some(MtlsMapper::new(m).map_err(|e| ConfigIssue {
                key: format!("mtls.{}", e.key),
                message: e.message,
            })?),
            None => None,
        };
        Ok(Self { sasl, mtls })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::client::{ClientStep, SaslClient};
    use credentials::NewUser;

    fn store() -> Arc<CredentialStore> {
        let mut s = CredentialStore::new();
        s.add_user(
            "alice",
            "wonderland",
            &NewUser {
                groups: vec!["analysts".into()],
                ..NewUser::default()
            },
        )
        .expect("add");
        Arc::new(s)
    }

    fn server(mechs: &[SaslMechanism]) -> SaslServer {
        SaslServer::new(mechs.to_vec(), store(), None)
    }

    /// Runs a whole exchange with Custos's own client against the server.
    fn login(server: &SaslServer, mech: &str, user: &str, pw: &str) -> Result<Identity, AuthError> {
        let mut ex = server.start(mech)?;
        let mut client = SaslClient::new(mech, user, pw).expect("client");
        let mut msg = client.initial().expect("initial");
        loop {
            match ex.step(&msg)? {
                Step::Continue(b) => match client.step(&b).expect("client step") {
                    ClientStep::Send(next) => msg = next,
                    ClientStep::Done => panic!("client done before server"),
                },
                Step::Done {
                    identity,
                    final_bytes,
                } => {
                    assert_eq!(client.step(&final_bytes).expect("verify"), ClientStep::Done);
                    return Ok(identity);
                }
            }
        }
    }

    #[test]
    fn every_password_mechanism_end_to_end() {
        let s = server(&[
            SaslMechanism::Plain,
            SaslMechanism::ScramSha256,
            SaslMechanism::ScramSha512,
        ]);
        for (mech, method) in [
            ("PLAIN", AuthMethod::SaslPlain),
            ("SCRAM-SHA-256", AuthMethod::ScramSha256),
            ("SCRAM-SHA-512", AuthMethod::ScramSha512),
        ] {
            let id = login(&s, mech, "alice", "wonderland").expect(mech);
            assert_eq!(id.name, "alice");
            assert_eq!(id.groups, ["analysts"]);
            assert_eq!(id.method, method);
            let e = login(&s, mech, "alice", "nope").expect_err("wrong password");
            let e2 = login(&s, mech, "mallory", "wonderland").expect_err("unknown user");
            // The client hears the same either way.
            assert_eq!(e.client_message(), e2.client_message());
            assert!(!e.client_message().contains("alice"));
        }
    }

    #[test]
    fn mechanism_selection() {
        let s = server(&[SaslMechanism::ScramSha512]);
        assert_eq!(s.mechanism_names(), ["SCRAM-SHA-512"]);
        let e = s.start("GSSAPI").expect_err("unknown");
        assert!(e.is_unsupported_mechanism());
        assert_eq!(
            s.start("PLAIN").expect_err("not enabled"),
            AuthError::MechanismNotEnabled(SaslMechanism::Plain)
        );
        assert!(s.start("scram-sha-512").is_err());
    }

    #[test]
    fn exchange_ends_after_failure_and_success() {
        let s = server(&[SaslMechanism::Plain]);
        let mut ex = s.start("PLAIN").expect("start");
        assert!(ex.step(b"\0alice\0bad").is_err());
        assert_eq!(ex.step(b"\0alice\0wonderland"), Err(AuthError::Finished));
        let mut ex = s.start("PLAIN").expect("start");
        assert!(matches!(
            ex.step(b"\0alice\0wonderland"),
            Ok(Step::Done { .. })
        ));
        assert_eq!(ex.step(b"\0alice\0wonderland"), Err(AuthError::Finished));
    }

    #[test]
    fn oauthbearer_failure_follows_rfc7628() {
        let cfg: OAuthBearerConfig =
            serde_yaml_ng::from_str("issuer: https://idp\naudience: custos\n").expect("cfg");
        let v = OAuthValidator::with_keys(&cfg, jsonwebtoken::jwk::JwkSet { keys: vec![] })
            .expect("validator");
        let s = SaslServer::new(vec![SaslMechanism::OAuthBearer], store(), Some(Arc::new(v)));
        let mut ex = s.start("OAUTHBEARER").expect("start");
        let first = ex
            .step(b"n,,\x01auth=Bearer not-a-jwt\x01\x01")
            .expect("error answer");
        assert_eq!(
            first,
            Step::Continue(oauth::INVALID_TOKEN_RESPONSE.to_vec())
        );
        let e = ex.step(b"\x01").expect_err("then fails");
        assert!(
            matches!(e, AuthError::OAuth(oauth::OAuthError::MalformedToken(_))),
            "{e}"
        );
        assert!(!e.to_string().contains("not-a-jwt"));
    }

    #[test]
    fn config_parses_and_validates_with_key_names() {
        let yaml = r#"
sasl:
  mechanisms: [PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER]
  credentials_file: users.yaml
  oauthbearer:
    jwks_url: https://idp.example/jwks
    issuer: https://idp.example
    audience: custos
    algorithms: [RS256, ES256]
mtls:
  rules:
    - { match: subject, pattern: 'CN=([^,]+),.*', name: '$1', case: lower }
    - { match: default }
"#;
        let mut cfg: AuthConfig = serde_yaml_ng::from_str(yaml).expect("yaml");
        cfg.resolve_paths(Path::new("/etc/custos"));
        assert_eq!(
            cfg.sasl.as_ref().and_then(|s| s.credentials_file.clone()),
            Some(PathBuf::from("/etc/custos/users.yaml"))
        );
        assert_eq!(cfg.validate("listen.auth", true), vec![]);
        let keys = |c: &AuthConfig, tls: bool| {
            c.validate("listen.auth", tls)
                .into_iter()
                .map(|i| i.key)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(&cfg, false),
            ["listen.auth.sasl.mechanisms[0]", "listen.auth.mtls"]
        );

        let bad: AuthConfig = serde_yaml_ng::from_str(
            "sasl:\n  mechanisms: [SCRAM-SHA-256, SCRAM-SHA-256, OAUTHBEARER]\n  oauthbearer: { issuer: '', audience: a, jwks_file: k.json }\nmtls:\n  rules: [{ match: subject, pattern: '(' }]\n",
        )
        .expect("yaml");
        assert_eq!(
            keys(&bad, true),
            [
                "listen.auth.sasl.mechanisms[1]",
                "listen.auth.sasl.credentials_file",
                "listen.auth.sasl.oauthbearer.issuer",
                "listen.auth.mtls.rules[0].pattern"
            ]
        );
        assert!(serde_yaml_ng::from_str::<AuthConfig>("sasl:\n  mechanisms: [GSSAPI]\n").is_err());
        assert!(serde_yaml_ng::from_str::<AuthConfig>(
            "sasl:\n  mechanisms: [PLAIN]\n  password: x\n"
        )
        .is_err());
    }

    #[test]
    fn upstream_sasl_reads_password_from_file_or_env_only() {
        assert!(serde_yaml_ng::from_str::<UpstreamSaslConfig>(
            "mechanism: SCRAM-SHA-512\nusername: custos\npassword: hunter2\n"
        )
        .is_err());
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("pw"), "hunter2\n").expect("write");
        let mut c: UpstreamSaslConfig = serde_yaml_ng::from_str(
            "mechanism: SCRAM-SHA-512\nusername: custos\npassword_file: pw\n",
        )
        .expect("yaml");
        c.resolve_paths(dir.path());
        assert!(c.validate("upstream.sasl").is_empty());
        assert_eq!(c.password().expect("pw").as_str(), "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
        let mut client = c.client().expect("client");
        assert_eq!(client.mechanism(), "SCRAM-SHA-512");
        assert!(client
            .initial()
            .expect("first")
            .starts_with(b"n,,n=custos,r="));

        let c: UpstreamSaslConfig = serde_yaml_ng::from_str(
            "mechanism: PLAIN\nusername: custos\npassword_env: CUSTOS_TEST_SURELY_UNSET_VAR\n",
        )
        .expect("yaml");
        let e = c.password().expect_err("unset").to_string();
        assert!(
            e.contains("password_env") && e.contains("CUSTOS_TEST_SURELY_UNSET_VAR"),
            "{e}"
        );
        let c: UpstreamSaslConfig =
            serde_yaml_ng::from_str("mechanism: OAUTHBEARER\nusername: ''\n").expect("yaml");
        let keys: Vec<_> = c
            .validate("upstream.sasl")
            .into_iter()
            .map(|i| i.key)
            .collect();
        assert_eq!(
            keys,
            [
                "upstream.sasl.mechanism",
                "upstream.sasl.username",
                "upstream.sasl.password_file"
            ]
        );
    }

    #[tokio::test]
    async fn listener_auth_from_config_loads_files() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("users.yaml");
        store().save(&path).expect("save");
        let mut cfg: AuthConfig = serde_yaml_ng::from_str(
            "sasl:\n  mechanisms: [SCRAM-SHA-256]\n  credentials_file: users.yaml\nmtls: { rules: [] }\n",
        )
        .expect("yaml");
        cfg.resolve_paths(dir.path());
        let la = ListenerAuth::from_config(&cfg).await.expect("build");
        let sasl = la.sasl.as_ref().expect("sasl");
        assert_eq!(
            login(sasl, "SCRAM-SHA-256", "alice", "wonderland")
                .expect("login")
                .name,
            "alice"
        );
        // A user added to the file is seen after a reload.
        let mut s = CredentialStore::load(&path).expect("load");
        s.add_user("bob", "builder", &NewUser::default())
            .expect("add");
        s.save(&path).expect("save");
        assert!(login(sasl, "SCRAM-SHA-256", "bob", "builder").is_err());
        assert_eq!(sasl.reload_credentials().expect("reload"), 2);
        assert!(login(sasl, "SCRAM-SHA-256", "bob", "builder").is_ok());
        assert!(la.mtls.is_some());

        std::fs::write(&path, "users:\n  bob: {}\n").expect("write");
        let e = ListenerAuth::from_config(&cfg)
            .await
            .expect_err("bad file")
            .to_string();
        assert!(e.contains("`bob`"), "{e}");
    }
}
