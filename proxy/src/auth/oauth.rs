//! SASL OAUTHBEARER (RFC 7628) with JWT access tokens checked against a JWKS.
//!
//! The client's initial response is `n,,\x01auth=Bearer <token>\x01\x01`
//! (optionally with an authorization id and more `key=value` pairs, which
//! Kafka uses for SASL extensions). The token must be a JWT signed with an
//! allowed asymmetric algorithm by a key in the configured key set, from the
//! configured issuer, for the configured audience, within its `exp`/`nbf`
//! window (with a small leeway for clock skew). The principal name comes
//! from one claim (`sub` by default) and groups from another (`groups`).
//!
//! On failure the server answers with RFC 7628's error JSON
//! (`{"status":"invalid_token"}`), the client acknowledges with `\x01`, and
//! the exchange fails; the error value says why, never quoting the token.
//! Symmetric (`HS*`) algorithms are refused: with a published key set they
//! would let anyone holding the "key" mint tokens.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use zeroize::Zeroizing;

use super::jwks::{self, JwksError, JwksUrl};
use super::principal::{AuthMethod, Identity, PrincipalType};

/// The RFC 7628 §3.2.2 error answer for a rejected token.
pub const INVALID_TOKEN_RESPONSE: &[u8] = br#"{"status":"invalid_token"}"#;
/// Largest OAUTHBEARER initial response accepted, in bytes.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;

/// OAUTHBEARER settings of a listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthBearerConfig {
    /// JWKS file (exactly one of `jwks_file`, `jwks_url`).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// JWKS URL, fetched at start and then every `jwks_refresh_secs`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// PEM CA bundle for an https `jwks_url`; the system's trust store when absent.
    #[serde(default)]
    pub jwks_ca: Option<PathBuf>,
    /// How often the key set is reloaded.
    #[serde(default = "default_refresh_secs")]
    pub jwks_refresh_secs: u64,
    /// Required `iss` claim.
    pub issuer: String,
    /// Required `aud` claim (the token must list it).
    pub audience: String,
    /// Claim holding the principal name.
    #[serde(default = "default_principal_claim")]
    pub principal_claim: String,
    /// Claim holding the groups (array of strings, or one space-separated string).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Allowed signature algorithms.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// Principal type given to token holders.
    #[serde(default)]
    pub principal_type: PrincipalType,
}

fn default_refresh_secs() -> u64 {
    300
}
fn default_principal_claim() -> String {
    "sub".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}
fn default_leeway_secs() -> u64 {
    30
}

/// The longest leeway accepted: more would make `exp` meaningless.
pub const MAX_LEEWAY_SECS: u64 = 300;

impl OAuthBearerConfig {
    /// Checks the settings; each problem names its key (relative to this block).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut errs = Vec::new();
        match (&self.jwks_file, &self.jwks_url) {
            (None, None) => errs.push((
                "jwks_file".into(),
                "one of `jwks_file` or `jwks_url` is required".into(),
            )),
            (Some(_), Some(_)) => errs.push((
                "jwks_url".into(),
                "give either `jwks_file` or `jwks_url`, not both".into(),
            )),
            (None, Some(u)) => {
                if let Err(e) = JwksUrl::parse(u) {
                    errs.push(("jwks_url".into(), e.to_string()));
                }
            }
            (Some(_), None) => {}
        }
        if self.jwks_ca.is_some() && self.jwks_url.is_none() {
            errs.push(("jwks_ca".into(), "only used with `jwks_url`".into()));
        }
        if self.jwks_refresh_secs < 10 {
            errs.push(("jwks_refresh_secs".into(), "must be at least 10".into()));
        }
        if self.issuer.is_empty() {
            errs.push(("issuer".into(), "must not be empty".into()));
        }
        if self.audience.is_empty() {
            errs.push(("audience".into(), "must not be empty".into()));
        }
        if self.principal_claim.is_empty() {
            errs.push(("principal_claim".into(), "must not be empty".into()));
        }
        if self.groups_claim.is_empty() {
            errs.push(("groups_claim".into(), "must not be empty".into()));
        }
        if self.algorithms.is_empty() {
            errs.push(("algorithms".into(), "list at least one algorithm".into()));
        }
        for (i, a) in self.algorithms.iter().enumerate() {
            if let Err(reason) = parse_algorithm(a) {
                errs.push((format!("algorithms[{i}]"), reason));
            }
        }
        if self.leeway_secs > MAX_LEEWAY_SECS {
            errs.push(("leeway_secs".into(), format!("at most {MAX_LEEWAY_SECS}")));
        }
        errs
    }
}

fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    let alg = Algorithm::from_str(name).map_err(|_| format!("unknown algorithm `{name}`"))?;
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Err(format!(
            "`{name}` is symmetric; only public-key algorithms (RS*, PS*, ES*, EdDSA) are allowed"
        )),
        a => Ok(a),
    }
}

/// Why an OAUTHBEARER login failed. No variant carries the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OAuthError {
    /// The initial client response is not RFC 7628's format.
    #[error("malformed OAUTHBEARER message: {0}")]
    Malformed(&'static str),
    /// Channel binding was requested.
    #[error("OAUTHBEARER channel binding is not supported")]
    ChannelBindingUnsupported,
    /// The token is not a JWT.
    #[error("token is not a well-formed JWT: {0}")]
    MalformedToken(String),
    /// The token's algorithm is not in the allowed list.
    #[error("token algorithm {0} is not allowed")]
    AlgorithmNotAllowed(String),
    /// No key in the key set fits the token (`kid` unknown, or wrong type).
    #[error("no key in the JWKS matches the token (kid {0:?})")]
    UnknownKey(Option<String>),
    /// The signature does not verify.
    #[error("token signature is invalid")]
    InvalidSignature,
    /// `exp` is in the past.
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("token issuer is not the expected one")]
    WrongIssuer,
    /// `aud` does not list the configured audience.
    #[error("token audience does not include the expected one")]
    WrongAudience,
    /// A required claim is absent.
    #[error("token has no `{0}` claim")]
    MissingClaim(String),
    /// A claim has the wrong type.
    #[error("token claim `{0}` has the wrong type")]
    InvalidClaim(String),
    /// The authorization id differs from the token's principal.
    #[error("OAUTHBEARER authorization id differs from the token's principal")]
    AuthzidMismatch,
    /// The client did not acknowledge the error answer with `\x01`.
    #[error("client did not acknowledge the OAUTHBEARER error")]
    BadErrorAck,
    /// Any other JWT validation failure.
    #[error("token rejected: {0}")]
    Rejected(String),
}

/// A parsed OAUTHBEARER initial client response.
pub struct BearerMessage {
    /// The authorization id (`a=`), if sent.
    pub authzid: Option<String>,
    /// The bearer token, wiped on drop.
    pub token: Zeroizing<String>,
    /// Other key/value pairs (Kafka SASL extensions).
    pub extensions: BTreeMap<String, String>,
}

// By hand: the token is a credential.
impl std::fmt::Debug for BearerMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerMessage")
            .field("authzid", &self.authzid)
            .field("extensions", &self.extensions.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Parses `gs2-header %x01 *(key=value %x01) %x01`.
pub fn parse_initial_response(message: &[u8]) -> Result<BearerMessage, OAuthError> {
    if message.len() > MAX_MESSAGE_LEN {
        return Err(OAuthError::Malformed("too long"));
    }
    let text = std::str::from_utf8(message).map_err(|_| OAuthError::Malformed("not UTF-8"))?;
    let (gs2, rest) = text
        .split_once('\x01')
        .ok_or(OAuthError::Malformed("no %x01 after the GS2 header"))?;
    let mut gs2_parts = gs2.splitn(3, ',');
    match gs2_parts.next() {
        Some("n") | Some("y") => {}
        Some(f) if f.starts_with("p=") => return Err(OAuthError::ChannelBindingUnsupported),
        _ => return Err(OAuthError::Malformed("GS2 flag must be `n` or `y`")),
    }
    let authzid = match gs2_parts.next() {
        Some("") => None,
        Some(a) => Some(
            a.strip_prefix("a=")
                .and_then(super::scram::decode_saslname)
                .ok_or(OAuthError::Malformed("bad authorization id"))?,
        ),
        None => return Err(OAuthError::Malformed("GS2 header is not closed by `,`")),
    };
    if gs2_parts.next() != Some("") {
        return Err(OAuthError::Malformed("GS2 header is not `n,[a=id],`"));
    }
    let body = rest
        .strip_suffix("\x01\x01")
        .or_else(|| (rest == "\x01").then_some(""))
        .ok_or(OAuthError::Malformed("message must end with %x01%x01"))?;
    let mut token = None;
    let mut extensions = BTreeMap::new();
    for pair in body.split('\x01').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or(OAuthError::Malformed("key/value pair without `=`"))?;
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(OAuthError::Malformed("keys must be letters"));
        }
        if key == "auth" {
            let (scheme, t) = value
                .split_once(' ')
                .ok_or(OAuthError::Malformed("auth value must be `Bearer <token>`"))?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(OAuthError::Malformed("only the Bearer scheme is supported"));
            }
            let t = t.trim_start_matches(' ');
            if t.is_empty() {
                return Err(OAuthError::Malformed("empty bearer token"));
            }
            token = Some(Zeroizing::new(t.to_string()));
        } else if extensions
            .insert(key.to_string(), value.to_string())
            .is_some()
        {
            return Err(OAuthError::Malformed("repeated key"));
        }
    }
    let token = token.ok_or(OAuthError::Malformed("no `auth=Bearer <token>`"))?;
    Ok(BearerMessage {
        authzid,
        token,
        extensions,
    })
}

/// Validates JWTs against a key set that can be refreshed.
pub struct OAuthValidator {
    cfg: OAuthBearerConfig,
    algorithms: Vec<Algorithm>,
    keys: RwLock<Arc<JwkSet>>,
    url: Option<JwksUrl>,
    tls: Option<Arc<rustls::ClientConfig>>,
    // Wakes the refresh task early when a token names an unknown key (the
    // issuer rotated keys).
    kid_miss: tokio::sync::Notify,
}

impl std::fmt::Debug for OAuthValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthValidator")
            .field("issuer", &self.cfg.issuer)
            .field("audience", &self.cfg.audience)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// Why an OAUTHBEARER validator could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OAuthSetupError {
    /// A setting is invalid: key (relative to `oauthbearer`) and reason.
    #[error("`{0}`: {1}")]
    Config(String, String),
    /// The key set could not be loaded.
    #[error(transparent)]
    Jwks(#[from] JwksError),
}

impl OAuthValidator {
    /// Builds a validator; a `jwks_file` is read now, a `jwks_url` is not
    /// fetched until [`OAuthValidator::refresh`] (see [`OAuthValidator::start`]).
    pub fn new(cfg: &OAuthBearerConfig) -> Result<Self, OAuthSetupError> {
        if let Some((k, r)) = cfg.validate().into_iter().next() {
            return Err(OAuthSetupError::Config(k, r));
        }
        let algorithms = cfg
            .algorithms
            .iter()
            .filter_map(|a| parse_algorithm(a).ok())
            .collect();
        let (keys, url, tls) = match (&cfg.jwks_file, &cfg.jwks_url) {
            (Some(path), _) => (jwks::load_file(path)?, None, None),
            (None, Some(u)) => {
                let url = JwksUrl::parse(u)?;
                let tls = jwks::tls_config(cfg.jwks_ca.as_deref())?;
                (JwkSet { keys: Vec::new() }, Some(url), Some(tls))
            }
            (None, None) => {
                return Err(OAuthSetupError::Config(
                    "jwks_file".into(),
                    "one of `jwks_file` or `jwks_url` is required".into(),
                ))
            }
        };
        Ok(Self {
            cfg: cfg.clone(),
            algorithms,
            keys: RwLock::new(Arc::new(keys)),
            url,
            tls,
            kid_miss: tokio::sync::Notify::new(),
        })
    }

    /// A validator with a given key set (tests, embedding).
    pub fn with_keys(cfg: &OAuthBearerConfig, keys: JwkSet) -> Result<Self, OAuthSetupError> {
        let mut cfg = cfg.clone();
        if cfg.jwks_file.is_none() && cfg.jwks_url.is_none() {
            // Satisfies validation; never read.
            cfg.jwks_file = Some(PathBuf::from("-"));
        }
        let algorithms = cfg
            .algorithms
            .iter()
            .filter_map(|a| parse_algorithm(a).ok())
            .collect();
        if let Some((k, r)) = cfg.validate().into_iter().next() {
            return Err(OAuthSetupError::Config(k, r));
        }
        Ok(Self {
            cfg,
            algorithms,
            keys: RwLock::new(Arc::new(keys)),
            url: None,
            tls: None,
            kid_miss: tokio::sync::Notify::new(),
        })
    }

    /// Builds the validator, fetches a `jwks_url` once (failing if it
    /// cannot), and starts the background refresh.
    pub async fn start(cfg: &OAuthBearerConfig) -> Result<Arc<Self>, OAuthSetupError> {
        let v = Arc::new(Self::new(cfg)?);
        v.refresh().await?;
        v.spawn_refresh();
        Ok(v)
    }

    /// Reloads the key set from its file or URL; the number of keys.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let set = match (&self.url, &self.tls, &self.cfg.jwks_file) {
            (Some(url), Some(tls), _) => jwks::fetch(url, tls, Duration::from_secs(10)).await?,
            (_, _, Some(path)) if path.as_os_str() != "-" => jwks::load_file(path)?,
            _ => return Ok(self.current_keys().keys.len()),
        };
        let n = set.keys.len();
        // A poisoned lock only means a panicking writer; the value is whole.
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        Ok(n)
    }

    /// Starts a task that refreshes the key set periodically, and soon after
    /// a token names an unknown key (at most every 30 s). It ends when the
    /// validator is dropped.
    pub fn spawn_refresh(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        let period = Duration::from_secs(self.cfg.jwks_refresh_secs);
        tokio::spawn(async move {
            let mut last = Instant::now();
            loop {
                let Some(v) = weak.upgrade() else { return };
                let early = tokio::select! {
                    _ = tokio::time::sleep(period) => false,
                    _ = v.kid_miss.notified() => true,
                };
                if early && last.elapsed() < Duration::from_secs(30) {
                    continue;
                }
                match v.refresh().await {
                    Ok(n) => tracing::debug!(keys = n, "JWKS refreshed"),
                    // Keep the old keys: an IdP outage must not lock everyone out.
                    Err(e) => {
                        tracing::warn!(error = %e, "JWKS refresh failed; keeping the previous key set")
                    }
                }
                last = Instant::now();
            }
        })
    }

    fn current_keys(&self) -> Arc<JwkSet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Validates a JWT and maps its claims to an identity.
    pub fn validate(&self, token: &str) -> Result<Identity, OAuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| OAuthError::MalformedToken(e.to_string()))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(OAuthError::AlgorithmNotAllowed(format!("{:?}", header.alg)));
        }
        let keys = self.current_keys();
        let jwk = select_key(&keys, header.alg, header.kid.as_deref()).ok_or_else(|| {
            self.kid_miss.notify_one();
            OAuthError::UnknownKey(header.kid.clone())
        })?;
        let key =
            DecodingKey::from_jwk(jwk).map_err(|_| OAuthError::UnknownKey(header.kid.clone()))?;
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.leeway = self.cfg.leeway_secs;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_issuer(&[&self.cfg.issuer]);
        v.set_audience(&[&self.cfg.audience]);
        v.required_spec_claims = ["exp", "iss", "aud"]
            .iter()
            .map(|s| s.to_string())
            .collect::<HashSet<_>>();
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key, &v)
            .map_err(map_jwt_error)?;
        self.identity(&data.claims)
    }

    fn identity(&self, claims: &serde_json::Map<String, Value>) -> Result<Identity, OAuthError> {
        let pc = &self.cfg.principal_claim;
        let name = match claims.get(pc) {
            None | Some(Value::Null) => return Err(OAuthError::MissingClaim(pc.clone())),
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(_) => return Err(OAuthError::InvalidClaim(pc.clone())),
        };
        let gc = &self.cfg.groups_claim;
        let groups = match claims.get(gc) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| OAuthError::InvalidClaim(gc.clone()))?,
            Some(_) => return Err(OAuthError::InvalidClaim(gc.clone())),
        };
        Ok(Identity {
            principal_type: self.cfg.principal_type,
            name,
            groups,
            method: AuthMethod::OAuthBearer,
        })
    }

    /// Handles a whole initial response: parse, validate, check the authzid.
    pub fn authenticate(&self, message: &[u8]) -> Result<Identity, OAuthError> {
        let msg = parse_initial_response(message)?;
        let id = self.validate(&msg.token)?;
        if let Some(a) = &msg.authzid {
            if *a != id.name {
                return Err(OAuthError::AuthzidMismatch);
            }
        }
        Ok(id)
    }
}

/// Picks the key for a token: by `kid` when given, else the only fitting key.
fn select_key<'a>(keys: &'a JwkSet, alg: Algorithm, kid: Option<&str>) -> Option<&'a Jwk> {
    let fits = |k: &&Jwk| key_fits(k, alg);
    match kid {
        Some(kid) => keys
            .keys
            .iter()
            .filter(|k| k.common.key_id.as_deref() == Some(kid))
            .find(fits),
        None => {
            let mut it = keys.keys.iter().filter(fits);
            let first = it.next()?;
            // Ambiguous without a kid: refuse rather than try keys in turn.
            it.next().is_none().then_some(first)
        }
    }
}

fn key_fits(k: &Jwk, alg: Algorithm) -> bool {
    if matches!(k.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return false;
    }
    // A key published for one algorithm is not used with another.
    if let Some(ka) = k.common.key_algorithm {
        if ka != jsonwebtoken::jwk::KeyAlgorithm::from(alg) {
            return false;
        }
    }
    match (&k.algorithm, alg) {
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => true,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => p.curve == EllipticCurve::P256,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES384) => p.curve == EllipticCurve::P384,
        (AlgorithmParameters::OctetKeyPair(p), Algorithm::EdDSA) => {
            p.curve == EllipticCurve::Ed25519
        }
        // Octet (symmetric) keys are never used.
        _ => false,
    }
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> OAuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => OAuthError::InvalidSignature,
        K::ExpiredSignature => OAuthError::Expired,
        K::ImmatureSignature => OAuthError::NotYetValid,
        K::InvalidIssuer => OAuthError::WrongIssuer,
        K::InvalidAudience => OAuthError::WrongAudience,
        K::MissingRequiredClaim(c) => OAuthError::MissingClaim(c.clone()),
        K::InvalidClaimFormat(c) => OAuthError::InvalidClaim(c.clone()),
        K::InvalidAlgorithm => OAuthError::AlgorithmNotAllowed("mismatch with key".into()),
        K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => {
            OAuthError::MalformedToken(e.to_string())
        }
        _ => OAuthError::Rejected(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    const RSA1: &[u8] = include_bytes!("testdata/rsa1.pkcs1.der");
    const RSA2: &[u8] = include_bytes!("testdata/rsa2.pkcs1.der");
    const EC1: &[u8] = include_bytes!("testdata/ec1.pkcs8.der");

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn cfg() -> OAuthBearerConfig {
        serde_yaml_ng::from_str(
            "jwks_file: unused.json\nissuer: https://idp.example\naudience: custos\n",
        )
        .expect("cfg")
    }

    fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Jwk {
        let mut j = Jwk::from_encoding_key(key, alg).expect("jwk");
        j.common.key_id = Some(kid.into());
        j
    }

    fn keyset() -> JwkSet {
        JwkSet {
            keys: vec![
                jwk(&EncodingKey::from_rsa_der(RSA1), Algorithm::RS256, "rsa1"),
                jwk(&EncodingKey::from_ec_der(EC1), Algorithm::ES256, "ec1"),
            ],
        }
    }

    fn validator() -> OAuthValidator {
        OAuthValidator::with_keys(&cfg(), keyset()).expect("validator")
    }

    fn claims(extra: Value) -> Value {
        let mut c = serde_json::json!({
            "sub": "alice",
            "iss": "https://idp.example",
            "aud": ["other", "custos"],
            "exp": now() + 600,
            "iat": now(),
            "groups": ["analysts", "pii-readers"],
        });
        if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                c.insert(k.clone(), v.clone());
            }
        }
        c
    }

    fn sign(alg: Algorithm, kid: Option<&str>, der: &[u8], claims: &Value) -> String {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_string);
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_der(der),
            _ => EncodingKey::from_rsa_der(der),
        };
        jsonwebtoken::encode(&h, claims, &key).expect("sign")
    }

    fn rs(extra: Value) -> String {
        sign(Algorithm::RS256, Some("rsa1"), RSA1, &claims(extra))
    }

    fn message(token: &str) -> Vec<u8> {
        format!("n,,\x01auth=Bearer {token}\x01\x01").into_bytes()
    }

    #[test]
    fn valid_rs256_and_es256_tokens() {
        let v = validator();
        let id = v.authenticate(&message(&rs(Value::Null))).expect("rs256");
        assert_eq!(id.name, "alice");
        assert_eq!(id.groups, ["analysts", "pii-readers"]);
        assert_eq!(id.method, AuthMethod::OAuthBearer);
        let es = sign(Algorithm::ES256, Some("ec1"), EC1, &claims(Value::Null));
        assert_eq!(v.validate(&es).expect("es256").name, "alice");
    }

    #[test]
    fn expired_and_not_yet_valid() {
        let v = validator();
        let t = rs(serde_json::json!({"exp": now() - 120}));
        assert_eq!(v.validate(&t), Err(OAuthError::Expired));
        // Within the 30 s leeway still passes.
        let t = rs(serde_json::json!({"exp": now() - 5}));
        assert!(v.validate(&t).is_ok());
        let t = rs(serde_json::json!({"nbf": now() + 600}));
        assert_eq!(v.validate(&t), Err(OAuthError::NotYetValid));
        let mut c = claims(Value::Null);
        c.as_object_mut().expect("obj").remove("exp");
        let t = sign(Algorithm::RS256, Some("rsa1"), RSA1, &c);
        assert_eq!(v.validate(&t), Err(OAuthError::MissingClaim("exp".into())));
    }

    #[test]
    fn wrong_audience_and_issuer() {
        let v = validator();
        let t = rs(serde_json::json!({"aud": "someone-else"}));
        assert_eq!(v.validate(&t), Err(OAuthError::WrongAudience));
        let t = rs(serde_json::json!({"iss": "https://evil.example"}));
        assert_eq!(v.validate(&t), Err(OAuthError::WrongIssuer));
    }

    #[test]
    fn bad_signature_unknown_key_and_disallowed_algorithm() {
        let v = validator();
        // Signed by a different key under the trusted kid.
        let t = sign(Algorithm::RS256, Some("rsa1"), RSA2, &claims(Value::Null));
        assert_eq!(v.validate(&t), Err(OAuthError::InvalidSignature));
        // Tampered payload.
        let good = rs(Value::Null);
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged_claims = claims(serde_json::json!({"sub": "admin"})).to_string();
        let forged = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            forged_claims,
        );
        parts[1] = &forged;
        assert_eq!(
            v.validate(&parts.join(".")),
            Err(OAuthError::InvalidSignature)
        );
        let t = sign(Algorithm::RS256, Some("nope"), RSA1, &claims(Value::Null));
        assert_eq!(
            v.validate(&t),
            Err(OAuthError::UnknownKey(Some("nope".into())))
        );
        // An RSA key may not verify an ES256 token even with its kid.
        let t = sign(Algorithm::ES256, Some("rsa1"), EC1, &claims(Value::Null));
        assert!(matches!(v.validate(&t), Err(OAuthError::UnknownKey(_))));
        let t = sign(Algorithm::RS384, Some("rsa1"), RSA1, &claims(Value::Null));
        assert_eq!(
            v.validate(&t),
            Err(OAuthError::AlgorithmNotAllowed("RS384".into()))
        );
        // HS256 with the public key as secret: refused before any key use.
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(Value::Null),
            &EncodingKey::from_secret(b"public"),
        )
        .expect("hs");
        assert!(matches!(
            v.validate(&hs),
            Err(OAuthError::AlgorithmNotAllowed(_))
        ));
        assert!(matches!(
            v.validate("not.a.jwt"),
            Err(OAuthError::MalformedToken(_))
        ));
    }

    #[test]
    fn token_without_kid_uses_the_only_fitting_key() {
        let v = validator();
        let t = sign(Algorithm::RS256, None, RSA1, &claims(Value::Null));
        assert!(v.validate(&t).is_ok());
    }

    #[test]
    fn claim_mapping() {
        let mut c = cfg();
        c.principal_claim = "preferred_username".into();
        c.groups_claim = "scope".into();
        c.principal_type = PrincipalType::ServiceAccount;
        let v = OAuthValidator::with_keys(&c, keyset()).expect("v");
        let t = rs(serde_json::json!({"preferred_username": "svc-etl", "scope": "read write"}));
        let id = v.validate(&t).expect("ok");
        assert_eq!(id.name, "svc-etl");
        assert_eq!(id.groups, ["read", "write"]);
        assert_eq!(id.principal_type, PrincipalType::ServiceAccount);
        let t = rs(Value::Null);
        assert_eq!(
            v.validate(&t),
            Err(OAuthError::MissingClaim("preferred_username".into()))
        );
        let v = validator();
        let t = rs(serde_json::json!({"groups": [1, 2]}));
        assert_eq!(
            v.validate(&t),
            Err(OAuthError::InvalidClaim("groups".into()))
        );
        let t = rs(serde_json::json!({"sub": 42}));
        assert_eq!(v.validate(&t), Err(OAuthError::InvalidClaim("sub".into())));
    }

    #[test]
    fn initial_response_parsing() {
        let m = parse_initial_response(
            b"n,a=alice,\x01host=kafka\x01auth=bearer  abc.def.ghi\x01traceId=7\x01\x01",
        )
        .expect("parse");
        assert_eq!(m.authzid.as_deref(), Some("alice"));
        assert_eq!(m.token.as_str(), "abc.def.ghi");
        assert_eq!(m.extensions.get("traceId").map(String::as_str), Some("7"));
        assert!(!format!("{m:?}").contains("abc.def"));
        for bad in [
            &b"n,,auth=Bearer x\x01\x01"[..],
            b"n,,\x01auth=Bearer x\x01",
            b"n,,\x01auth=Basic x\x01\x01",
            b"n,,\x01auth=Bearer \x01\x01",
            b"n,,\x01host=x\x01\x01",
            b"n,\x01auth=Bearer x\x01\x01",
            b"q,,\x01auth=Bearer x\x01\x01",
        ] {
            assert!(
                matches!(parse_initial_response(bad), Err(OAuthError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_initial_response(b"p=tls-unique,,\x01auth=Bearer x\x01\x01").map(|_| ()),
            Err(OAuthError::ChannelBindingUnsupported)
        );
        let v = validator();
        let token = rs(Value::Null);
        let msg = format!("n,a=bob,\x01auth=Bearer {token}\x01\x01");
        assert_eq!(
            v.authenticate(msg.as_bytes()),
            Err(OAuthError::AuthzidMismatch)
        );
    }

    #[test]
    fn errors_never_echo_the_token() {
        let v = validator();
        for t in [
            rs(serde_json::json!({"exp": now() - 999})),
            "garbage-token-123".to_string(),
        ] {
            let e = v.authenticate(&message(&t)).expect_err("fails").to_string();
            assert!(!e.contains(&t), "{e}");
        }
    }

    #[test]
    fn config_validation() {
        let parse = |y: &str| serde_yaml_ng::from_str::<OAuthBearerConfig>(y).expect("yaml");
        let keys =
            |c: &OAuthBearerConfig| c.validate().into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert!(keys(&cfg()).is_empty());
        let c = parse("issuer: i\naudience: a\nalgorithms: [HS256, XX1, RS256]\n");
        assert_eq!(keys(&c), ["jwks_file", "algorithms[0]", "algorithms[1]"]);
        let c = parse("jwks_url: http://idp.example/jwks\nissuer: i\naudience: a\n");
        assert_eq!(keys(&c), ["jwks_url"]);
        assert!(serde_yaml_ng::from_str::<OAuthBearerConfig>(
            "issuer: i\naudience: a\nsecret: x\n"
        )
        .is_err());
    }

    #[tokio::test]
    async fn jwks_file_load_and_refresh() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, r#"{"keys":[]}"#).expect("write");
        let mut c = cfg();
        c.jwks_file = Some(path.clone());
        let v = OAuthValidator::start(&c).await.expect("start");
        let t = rs(Value::Null);
        assert!(matches!(v.validate(&t), Err(OAuthError::UnknownKey(_))));
        std::fs::write(&path, serde_json::to_string(&keyset()).expect("json")).expect("write");
        assert_eq!(v.refresh().await.expect("refresh"), 2);
        assert!(v.validate(&t).is_ok());
        std::fs::write(&path, "{").expect("write");
        assert!(v.refresh().await.is_err());
        // A failed refresh keeps the previous keys.
        assert!(v.validate(&t).is_ok());
    }

    #[tokio::test]
    async fn jwks_url_fetched_at_start() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let body = serde_json::to_string(&keyset()).expect("json");
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let resp = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{body}");
            let _ = s.write_all(resp.as_bytes()).await;
        });
        let c: OAuthBearerConfig = serde_yaml_ng::from_str(&format!(
            "jwks_url: http://127.0.0.1:{port}/jwks\nissuer: https://idp.example\naudience: custos\n"
        ))
        .expect("cfg");
        let v = OAuthValidator::start(&c).await.expect("start");
        assert_eq!(v.validate(&rs(Value::Null)).expect("valid").name, "alice");
    }
}
