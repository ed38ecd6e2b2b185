//! The audit API on the admin server, described in `docs/audit-api.yaml`:
//!
//! - `GET /v1/audit?principal=&topic=&group=&api=&decision=&kind=&since=&until=&cursor=&limit=`
//!   — matching records, a page at a time (`{records, next_cursor}`);
//! - `GET /v1/audit/verify` — the verification report of the live store;
//! - `GET /v1/audit/proof/{seq}` — an inclusion proof of one record, in the
//!   JSON that `custos audit verify-proof` checks offline;
//! - `GET /v1/audit/checkpoints/latest` — the newest signed checkpoint and the
//!   public key that verifies it.
//!
//! Every `/v1/` path needs the bearer token of `admin.token_file`, compared in
//! constant time; without a configured token the API answers 503 and serves
//! nothing. Every authorized audit request is itself recorded (an
//! `audit_query` record with the path, the filters and the caller's address,
//! never the token) before it is answered, in the log's own mode: a request
//! whose record cannot be taken is refused with 503. Failed authentications
//! are recorded too, without waiting and without the parameters.
//!
//! The filter parsing here is shared with `custos audit list`.

use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use custos_audit::{
    AuditError, AuditRecord, CheckpointJson, Cursor, EventKind, PublicKey, Report, ScanFilter,
    SignedCheckpoint, StoredRecord, VerifyOptions,
};
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AdminState;
use crate::config::AdminConfig;

/// Records per page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest `limit` accepted.
pub const MAX_LIMIT: usize = 1000;
/// Longest parameter value accepted, in bytes.
pub const MAX_PARAM_LEN: usize = 1024;
/// Principal name audit-API requests are recorded under.
pub const API_PRINCIPAL: &str = "Admin:api-token";

const REALM: &str = "Bearer realm=\"custos-admin\"";
const REALM_INVALID: &str = "Bearer realm=\"custos-admin\", error=\"invalid_token\"";
const QUERY_PARAMS: &str =
    "principal, topic, group, api, decision, kind, since, until, cursor, limit";

// ------------------------------------------------------------------ authentication

/// The admin token as the server holds it: only its SHA-256, so that
/// comparing digests in constant time does not leak the token's length.
pub enum Token {
    /// `admin.token_file` is not set: the `/v1/` API is closed.
    NotConfigured,
    /// The file could not be used (it was fine when the configuration was
    /// checked); the `/v1/` API is closed.
    Unusable(String),
    /// SHA-256 of the token.
    Digest([u8; 32]),
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Token::NotConfigured => "Token(not configured)",
            Token::Unusable(_) => "Token(unusable)",
            Token::Digest(_) => "Token(set)",
        })
    }
}

/// What the `Authorization` header of a `/v1/` request amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// The right token.
    Granted,
    /// No token is configured, so nothing under `/v1/` is served (the reason).
    Closed(String),
    /// No bearer token presented.
    Missing,
    /// A bearer token that is not the configured one, or a malformed header.
    Invalid,
}

impl Token {
    /// The token of `admin.token_file`; a file that cannot be used is logged
    /// and closes the API (the configuration check reads it first, so this
    /// happens only if the file changed since).
    pub fn from_config(cfg: &AdminConfig) -> Self {
        match cfg.read_token() {
            Ok(None) => Token::NotConfigured,
            Ok(Some(t)) => {
                warn_if_readable_by_others(cfg.token_file.as_deref());
                Self::from_secret(&t)
            }
            Err(why) => {
                tracing::error!(error = %why, "`admin.token_file` unusable: the /v1/ admin API is closed");
                Token::Unusable(why)
            }
        }
    }

    /// The token `secret`.
    pub fn from_secret(secret: &str) -> Self {
        Token::Digest(Sha256::digest(secret.as_bytes()).into())
    }

    /// Checks a request's headers.
    pub fn check(&self, headers: &HeaderMap) -> Auth {
        let digest = match self {
            Token::NotConfigured => {
                return Auth::Closed(
                    "the admin API needs a bearer token: set `admin.token_file` to a file holding one \
                     (e.g. `openssl rand -hex 32 > admin.token`); the audit log is never served unauthenticated"
                        .into(),
                )
            }
            Token::Unusable(why) => {
                return Auth::Closed(format!(
                    "`admin.token_file` is unusable ({why}); the audit log is never served unauthenticated"
                ))
            }
            Token::Digest(d) => d,
        };
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            // None, or several Authorization headers (ambiguous: refused).
            return if headers.contains_key(AUTHORIZATION) {
                Auth::Invalid
            } else {
                Auth::Missing
            };
        };
        let Some(presented) = bearer(value) else {
            return Auth::Invalid;
        };
        let got: [u8; 32] = Sha256::digest(presented).into();
        if bool::from(got.ct_eq(digest)) {
            Auth::Granted
        } else {
            Auth::Invalid
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
fn bearer(value: &HeaderValue) -> Option<&[u8]> {
    let v = value.as_bytes();
    let (scheme, rest) = v.split_at(v.iter().position(|b| *b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: Option<&Path>) {
    use std::os::unix::fs::PermissionsExt;
    if let Some(p) = path {
        if let Ok(m) = std::fs::metadata(p) {
            if m.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    file = %p.display(),
                    "`admin.token_file` is readable by group or others; chmod 600 it"
                );
            }
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: Option<&Path>) {}

// ------------------------------------------------------------------ parameters

/// Record filters as text, from query parameters or the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterArgs {
    /// Principal, exactly (`User:alice`).
    pub principal: Option<String>,
    /// A topic the record touches.
    pub topic: Option<String>,
    /// A consumer group the record touches.
    pub group: Option<String>,
    /// Kafka api: a key number or a name (`Produce`, case-insensitive).
    pub api: Option<String>,
    /// `allowed` or `denied`.
    pub decision: Option<String>,
    /// Event kinds; each entry may hold several, comma-separated.
    pub kinds: Vec<String>,
    /// Earliest time (inclusive): RFC 3339 or unix milliseconds.
    pub since: Option<String>,
    /// Latest time (exclusive): RFC 3339 or unix milliseconds.
    pub until: Option<String>,
}

impl FilterArgs {
    /// The scan filter, or why a value is wrong (naming the parameter).
    pub fn to_filter(&self) -> Result<ScanFilter, String> {
        fn named<T>(name: &str, r: Result<T, String>) -> Result<T, String> {
            r.map_err(|e| format!("`{name}`: {e}"))
        }
        let mut kinds = Vec::new();
        for k in self.kinds.iter().flat_map(|k| k.split(',')) {
            let k = k.trim();
            if !k.is_empty() {
                kinds.push(named("kind", parse_kind(k))?);
            }
        }
        let since_ms = named("since", self.since.as_deref().map(parse_time).transpose())?;
        let until_ms = named("until", self.until.as_deref().map(parse_time).transpose())?;
        if let (Some(s), Some(u)) = (since_ms, until_ms) {
            if s >= u {
                return Err(format!("`since` ({s} ms) must be before `until` ({u} ms)"));
            }
        }
        Ok(ScanFilter {
            principal: self.principal.clone(),
            topic: self.topic.clone(),
            group: self.group.clone(),
            api_key: named("api", self.api.as_deref().map(parse_api).transpose())?,
            allowed: named(
                "decision",
                self.decision.as_deref().map(parse_decision).transpose(),
            )?,
            kinds,
            since_ms,
            until_ms,
            newest_first: false,
        })
    }
}

/// A parsed `GET /v1/audit` query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryParams {
    /// Which records.
    pub filter: ScanFilter,
    /// Where to go on from.
    pub cursor: Option<Cursor>,
    /// Most records in the page.
    pub limit: usize,
    /// The parameters as given (decoded), for the query's own audit record.
    pub given: Vec<(String, String)>,
}

/// Parses the query string of `GET /v1/audit`. Unknown or repeated
/// parameters are errors (a typo must not silently widen the query); an
/// empty value means the parameter is not set; `kind` may repeat.
pub fn parse_query(query: Option<&str>) -> Result<QueryParams, String> {
    let mut args = FilterArgs::default();
    let (mut cursor, mut limit) = (None, None);
    let mut given = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(k).map_err(|e| format!("parameter name: {e}"))?;
        let value = percent_decode(v).map_err(|e| format!("`{key}`: {e}"))?;
        if value.len() > MAX_PARAM_LEN {
            return Err(format!("`{key}` is longer than {MAX_PARAM_LEN} bytes"));
        }
        let slot = match key.as_str() {
            "principal" => &mut args.principal,
            "topic" => &mut args.topic,
            "group" => &mut args.group,
            "api" => &mut args.api,
            "decision" => &mut args.decision,
            "since" => &mut args.since,
            "until" => &mut args.until,
            "cursor" => &mut cursor,
            "limit" => &mut limit,
            "kind" => {
                if !value.is_empty() {
                    args.kinds.push(value.clone());
                    given.push((key, value));
                }
                continue;
            }
            other => {
                return Err(format!(
                    "unknown parameter `{other}` (known: {QUERY_PARAMS})"
                ))
            }
        };
        if value.is_empty() {
            continue;
        }
        if slot.is_some() {
            return Err(format!("`{key}` is given more than once"));
        }
        *slot = Some(value.clone());
        given.push((key, value));
    }
    let filter = args.to_filter()?;
    let cursor = cursor
        .map(|c| {
            c.parse::<Cursor>()
                .map_err(|_| format!("`cursor`: `{c}` is not a cursor from a previous page"))
        })
        .transpose()?;
    let limit = match limit {
        None => DEFAULT_LIMIT,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(format!(
                    "`limit`: `{l}` is not a number from 1 to {MAX_LIMIT}"
                ))
            }
        },
    };
    Ok(QueryParams {
        filter,
        cursor,
        limit,
        given,
    })
}

/// Decodes `%XX` escapes and `+` (a space) of a query-string component.
pub fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent escape at byte {i}"))?;
                out.push(hex);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 after percent-decoding".to_string())
}

/// An event kind by its snake_case name.
pub fn parse_kind(s: &str) -> Result<EventKind, String> {
    s.parse::<EventKind>().map_err(|e| {
        let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
        format!("{e} (known: {})", known.join(", "))
    })
}

/// A Kafka api key by number or by name (`Produce`, `fetch`, `CreateTopics`).
pub fn parse_api(s: &str) -> Result<i16, String> {
    use kafka_protocol::messages::ApiKey;
    if let Ok(n) = s.parse::<i16>() {
        return ApiKey::try_from(n)
            .map(|k| k as i16)
            .map_err(|()| format!("{n} is not a Kafka api key"));
    }
    ApiKey::iter()
        .find(|k| format!("{k:?}").eq_ignore_ascii_case(s))
        .map(|k| k as i16)
        .ok_or_else(|| {
            format!("`{s}` is not a Kafka api key number or name (e.g. 0 or Produce, Fetch, CreateTopics)")
        })
}

/// `allowed` → true, `denied` → false.
pub fn parse_decision(s: &str) -> Result<bool, String> {
    match s {
        "allowed" | "allow" => Ok(true),
        "denied" | "deny" => Ok(false),
        _ => Err(format!("`{s}` is neither `allowed` nor `denied`")),
    }
}

/// A time as unix milliseconds (all digits) or RFC 3339
/// (`2025-05-01T12:00:00Z`, `2025-05-01T14:00:00.250+02:00`).
pub fn parse_time(s: &str) -> Result<u64, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map_err(|_| format!("`{s}` is too large for unix milliseconds"));
    }
    parse_rfc3339(s).ok_or_else(|| {
        format!("`{s}` is neither an RFC 3339 time (2025-05-01T12:00:00Z) nor unix milliseconds")
    })
}

fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |from: usize, to: usize| -> Option<i64> {
        let t = b.get(from..to)?;
        if !t.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(t).ok()?.parse().ok()
    };
    let at = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
    if !(at(4, b"-") && at(7, b"-") && at(10, b"Tt ") && at(13, b":") && at(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, min, sec) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let mut i = 19;
    let mut ms = 0i64;
    if at(i, b".") {
        let start = i + 1;
        i = start;
        while at(i, b"0123456789") {
            i += 1;
        }
        if i == start {
            return None;
        }
        let frac = &s[start..i.min(start + 3)];
        ms = frac.parse::<i64>().ok()? * 10i64.pow(3 - frac.len() as u32);
    }
    let offset_min = match &s[i..] {
        "Z" | "z" => 0,
        rest if rest.len() == 6 && (at(i, b"+-")) && at(i + 3, b":") => {
            let (h, m) = (num(i + 1, i + 3)?, num(i + 4, i + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (h * 60 + m)
        }
        _ => return None,
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let dim = *month_days.get(usize::try_from(month).ok()?.checked_sub(1)?)?;
    if day < 1 || day > dim || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let secs =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec - offset_min * 60;
    u64::try_from(secs * 1000 + ms).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// ------------------------------------------------------------------ JSON

/// A stored record as JSON: the record's fields plus its chain `hash`.
pub fn record_json(r: &StoredRecord) -> Value {
    let mut v = serde_json::to_value(&r.record).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("seq".into(), json!(r.seq));
        m.insert("hash".into(), json!(custos_audit::hex::encode(&r.hash)));
    }
    v
}

/// A verification report as JSON (`ok`, counts, the first problem).
pub fn report_json(report: &Report, key: &PublicKey) -> Value {
    json!({
        "ok": report.ok(),
        "summary": report.to_string(),
        "start": report.start,
        "records": report.records,
        "checkpoints": report.checkpoints,
        "last_checkpoint": report.last_checkpoint.map(|c| json!({
            "seq": c.seq,
            "tree_size": c.tree_size(),
            "chain_head": custos_audit::hex::encode(&c.chain_head),
            "merkle_root": custos_audit::hex::encode(&c.merkle_root),
            "time_ms": c.time_ms,
            "key_id": c.key_id.to_string(),
        })),
        "unsigned_tail": report.unsigned_tail,
        "chain_head": custos_audit::hex::encode(&report.chain_head),
        "problem": report.problem.as_ref().map(|p| json!({
            "seq": p.seq,
            "last": p.last,
            "reason": p.reason.to_string(),
        })),
        "public_key": key.to_hex(),
        "key_id": key.key_id().to_string(),
    })
}

/// A signed checkpoint as JSON ([`CheckpointJson`] plus `tree_size` and the
/// public key); usable as `custos audit verify --anchor`.
pub fn checkpoint_json(cp: &SignedCheckpoint, key: &PublicKey) -> Value {
    let mut v = serde_json::to_value(CheckpointJson::from(cp)).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("tree_size".into(), json!(cp.checkpoint.tree_size()));
        m.insert("public_key".into(), json!(key.to_hex()));
    }
    v
}

// ------------------------------------------------------------------ handler

/// An API path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v1/audit`
    Query,
    /// `/v1/audit/verify`
    Verify,
    /// `/v1/audit/proof/{seq}` (the raw segment)
    Proof(String),
    /// `/v1/audit/checkpoints/latest`
    LatestCheckpoint,
}

impl Route {
    /// The route of a path, if it is one.
    pub fn of(path: &str) -> Option<Self> {
        match path {
            "/v1/audit" => Some(Route::Query),
            "/v1/audit/verify" => Some(Route::Verify),
            "/v1/audit/checkpoints/latest" => Some(Route::LatestCheckpoint),
            p => p
                .strip_prefix("/v1/audit/proof/")
                .filter(|s| !s.is_empty() && !s.contains('/'))
                .map(|s| Route::Proof(s.to_string())),
        }
    }

    fn action(&self) -> &'static str {
        match self {
            Route::Query => "query",
            Route::Verify => "verify",
            Route::Proof(_) => "proof",
            Route::LatestCheckpoint => "checkpoint",
        }
    }
}

/// An admin API answer.
pub type Resp = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    // Audit data is never cached by intermediaries or browsers.
    h.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    r
}

/// `v` as a JSON answer with `status`.
pub fn json_response(status: StatusCode, v: &Value) -> Resp {
    let mut body = serde_json::to_vec(v).unwrap_or_default();
    body.push(b'\n');
    respond(status, "application/json", body)
}

/// `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Resp {
    json_response(status, &json!({ "error": message.into() }))
}

fn unauthorized(auth: &Auth) -> Resp {
    let (challenge, msg) = match auth {
        Auth::Missing => (
            REALM,
            "a bearer token is required (Authorization: Bearer <token>)",
        ),
        _ => (REALM_INVALID, "the bearer token is not valid"),
    };
    let mut r = error(StatusCode::UNAUTHORIZED, msg);
    r.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    r
}

fn audit_error(e: &AuditError) -> Resp {
    match e {
        AuditError::NotCovered(seq) => error(
            StatusCode::NOT_FOUND,
            format!(
                "record {seq} is not covered by a signed checkpoint: it does not exist, \
                 or it is newer than the latest checkpoint (retry after the next one)"
            ),
        ),
        other => error(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

/// Runs blocking store work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AuditError> + Send + 'static,
) -> Result<T, Resp> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(audit_error(&e)),
        Err(e) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("audit store task failed: {e}"),
        )),
    }
}

/// Serves one `/v1/` request.
pub async fn handle<B>(req: &Request<B>, state: &AdminState, peer: SocketAddr) -> Resp {
    let path = req.uri().path();
    match state.token.check(req.headers()) {
        Auth::Granted => {}
        Auth::Closed(why) => return error(StatusCode::SERVICE_UNAVAILABLE, why),
        denied => {
            // Recorded without waiting (an unauthenticated caller must not be
            // able to stall anything) and without its parameters.
            let what = if denied == Auth::Missing {
                "missing bearer token"
            } else {
                "invalid bearer token"
            };
            let path_shown: String = path.chars().take(256).collect();
            state.auditor.event(
                state
                    .auditor
                    .record(EventKind::AuditQuery)
                    .with_client(peer.to_string(), None)
                    .with_detail("path", path_shown)
                    .with_detail("status", "401")
                    .with_error(None, custos_audit::Blame::Client, what),
            );
            return unauthorized(&denied);
        }
    }
    if path.starts_with("/v1/keys/") {
        return super::keys_api::handle(req, state, peer).await;
    }
    let Some(route) = Route::of(path) else {
        return error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}"));
    };
    if req.method() != Method::GET {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not served here; only GET", req.method()),
        );
        r.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    let (Some(reader), Some((_, key))) = (state.auditor.reader(), state.auditor.store()) else {
        return error(
            StatusCode::NOT_FOUND,
            "no audit log is configured (the `audit` section of the configuration)",
        );
    };
    let key = key.clone();

    // Parameters first: a bad request is refused before it is recorded.
    let query = req.uri().query();
    let mut params = None;
    let mut proof_seq = None;
    match &route {
        Route::Query => match parse_query(query) {
            Ok(p) => params = Some(p),
            Err(why) => return error(StatusCode::BAD_REQUEST, why),
        },
        other => {
            if query.is_some_and(|q| !q.is_empty()) {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("{path} takes no query parameters"),
                );
            }
            if let Route::Proof(s) = other {
                match s.parse::<u64>() {
                    Ok(n) => proof_seq = Some(n),
                    Err(_) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            format!("`{s}` is not a record sequence number"),
                        )
                    }
                }
            }
        }
    }

    // The request is recorded before it is answered.
    let mut record: AuditRecord = state
        .auditor
        .record(EventKind::AuditQuery)
        .with_action(route.action())
        .with_principal(API_PRINCIPAL, "bearer")
        .with_client(peer.to_string(), None)
        .with_detail("path", path);
    if let Some(p) = &params {
        for (k, v) in &p.given {
            let key = format!("param.{k}");
            let value = match record.details.get(&key) {
                Some(prev) => format!("{prev},{v}"),
                None => v.clone(),
            };
            record = record.with_detail(key, value);
        }
    }
    if let Some(seq) = proof_seq {
        record = record.with_detail("seq", seq.to_string());
    }
    if let Err(e) = state.auditor.submit(vec![record]).await {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the audit log could not record this query ({e}); audit queries are answered only once recorded"
            ),
        );
    }

    match route {
        Route::Query => {
            let Some(p) = params else {
                return error(StatusCode::INTERNAL_SERVER_ERROR, "parameters lost");
            };
            let page = match blocking(move || reader.scan(&p.filter, p.cursor, p.limit)).await {
                Ok(page) => page,
                Err(r) => return r,
            };
            let records: Vec<Value> = page.records.iter().map(record_json).collect();
            json_response(
                StatusCode::OK,
                &json!({
                    "records": records,
                    "next_cursor": page.next.map(|c| c.to_string()),
                }),
            )
        }
        Route::Verify => {
            let _permit = state.heavy.acquire().await;
            let k = key.clone();
            match blocking(move || reader.verify(&k, &VerifyOptions::default())).await {
                Ok(report) => json_response(StatusCode::OK, &report_json(&report, &key)),
                Err(r) => r,
            }
        }
        Route::Proof(_) => {
            let Some(seq) = proof_seq else {
                return error(StatusCode::INTERNAL_SERVER_ERROR, "sequence number lost");
            };
            let _permit = state.heavy.acquire().await;
            match blocking(move || reader.prove(seq)).await {
                Ok(proof) => {
                    let mut body = proof.to_json().into_bytes();
                    body.push(b'\n');
                    respond(StatusCode::OK, "application/json", body)
                }
                Err(r) => r,
            }
        }
        Route::LatestCheckpoint => match state.auditor.handle().and_then(|h| h.latest_checkpoint())
        {
            Some(cp) => json_response(StatusCode::OK, &checkpoint_json(&cp, &key)),
            None => error(
                StatusCode::NOT_FOUND,
                "no checkpoint yet: the log has not signed anything",
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for a in auth {
            h.append(AUTHORIZATION, HeaderValue::from_str(a).expect("header"));
        }
        h
    }

    const SECRET: &str = "0123456789abcdef0123";

    #[test]
    fn bearer_token_is_checked() {
        let t = Token::from_secret(SECRET);
        assert_eq!(t.check(&headers(&[])), Auth::Missing);
        assert_eq!(
            t.check(&headers(&[&format!("Bearer {SECRET}")])),
            Auth::Granted
        );
        assert_eq!(
            t.check(&headers(&[&format!("bearer  {SECRET} ")])),
            Auth::Granted
        );
        assert_eq!(t.check(&headers(&["Bearer wrong"])), Auth::Invalid);
        assert_eq!(
            t.check(&headers(&[&format!("Bearer {SECRET}x")])),
            Auth::Invalid
        );
        assert_eq!(
            t.check(&headers(&[&format!("Basic {SECRET}")])),
            Auth::Invalid
        );
        assert_eq!(t.check(&headers(&["Bearer"])), Auth::Invalid);
        assert_eq!(t.check(&headers(&["Bearer "])), Auth::Invalid);
        // Two Authorization headers are ambiguous, even if one is right.
        assert_eq!(
            t.check(&headers(&[&format!("Bearer {SECRET}"), "Bearer x"])),
            Auth::Invalid
        );
    }

    #[test]
    fn no_token_closes_the_api() {
        let h = headers(&[&format!("Bearer {SECRET}")]);
        match Token::NotConfigured.check(&h) {
            Auth::Closed(why) => assert!(why.contains("admin.token_file"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Token::Unusable("gone".into()).check(&h),
            Auth::Closed(_)
        ));
    }

    #[test]
    fn token_is_read_from_the_configured_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, format!("{SECRET}\n")).expect("write");
        let cfg = AdminConfig {
            token_file: Some(path.clone()),
            ..AdminConfig::default()
        };
        let t = Token::from_config(&cfg);
        assert_eq!(
            t.check(&headers(&[&format!("Bearer {SECRET}")])),
            Auth::Granted
        );
        std::fs::write(&path, "short\n").expect("write");
        assert!(matches!(Token::from_config(&cfg), Token::Unusable(_)));
        assert!(matches!(
            Token::from_config(&AdminConfig::default()),
            Token::NotConfigured
        ));
    }

    #[test]
    fn query_defaults() {
        let q = parse_query(None).expect("empty");
        assert_eq!(q.limit, DEFAULT_LIMIT);
        assert_eq!(q.cursor, None);
        assert_eq!(q.filter, ScanFilter::default());
        // Blank form fields mean "not set".
        let q = parse_query(Some("principal=&topic=&limit=")).expect("blank");
        assert_eq!(q.filter, ScanFilter::default());
        assert!(q.given.is_empty());
    }

    #[test]
    fn query_filters_parse() {
        let q = parse_query(Some(
            "principal=User%3Aalice&topic=orders+eu&group=g1&api=produce&decision=denied\
             &kind=produce,fetch&kind=audit_query&since=2025-01-01T00:00:00Z&until=1735693200000\
             &cursor=42&limit=1000",
        ))
        .expect("valid");
        let f = &q.filter;
        assert_eq!(f.principal.as_deref(), Some("User:alice"));
        assert_eq!(f.topic.as_deref(), Some("orders eu"));
        assert_eq!(f.group.as_deref(), Some("g1"));
        assert_eq!(f.api_key, Some(0));
        assert_eq!(f.allowed, Some(false));
        assert_eq!(
            f.kinds,
            vec![EventKind::Produce, EventKind::Fetch, EventKind::AuditQuery]
        );
        assert_eq!(f.since_ms, Some(1_735_689_600_000));
        assert_eq!(f.until_ms, Some(1_735_693_200_000));
        assert_eq!(q.cursor, Some(Cursor(42)));
        assert_eq!(q.limit, 1000);
        assert!(q
            .given
            .contains(&("principal".to_string(), "User:alice".to_string())));
        assert_eq!(
            parse_query(Some("api=1")).expect("api").filter.api_key,
            Some(1)
        );
        assert_eq!(
            parse_query(Some("api=CreateTopics"))
                .expect("api")
                .filter
                .api_key,
            Some(19)
        );
        assert_eq!(
            parse_query(Some("decision=allowed"))
                .expect("decision")
                .filter
                .allowed,
            Some(true)
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        for (q, needle) in [
            ("topc=x", "unknown parameter `topc`"),
            ("limit=0", "`limit`"),
            ("limit=1001", "`limit`"),
            ("limit=ten", "`limit`"),
            ("cursor=-1", "`cursor`"),
            ("decision=maybe", "`decision`"),
            ("kind=produce,bogus", "`kind`"),
            ("api=99999", "`api`"),
            ("api=Nope", "`api`"),
            ("since=yesterday", "`since`"),
            ("until=2025-13-01T00:00:00Z", "`until`"),
            ("since=2000&until=1000", "`since`"),
            ("topic=a&topic=b", "more than once"),
            ("topic=%zz", "`topic`"),
            ("topic=%ff", "UTF-8"),
        ] {
            let e = parse_query(Some(q)).expect_err(q);
            assert!(e.contains(needle), "{q}: {e}");
        }
        let long = format!("topic={}", "x".repeat(MAX_PARAM_LEN + 1));
        assert!(parse_query(Some(&long)).is_err());
    }

    #[test]
    fn times_parse() {
        assert_eq!(parse_time("0"), Ok(0));
        assert_eq!(parse_time("1700000000123"), Ok(1_700_000_000_123));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time("2000-02-29T12:34:56.789Z"), Ok(951_827_696_789));
        assert_eq!(parse_time("2000-02-29t12:34:56.7z"), Ok(951_827_696_700));
        assert_eq!(
            parse_time("2025-05-01T14:00:00.250123+02:00"),
            parse_time("2025-05-01T12:00:00.250Z")
        );
        assert_eq!(
            parse_time("2025-05-01T00:30:00-01:00"),
            parse_time("2025-05-01T01:30:00Z")
        );
        for bad in [
            "",
            "2025-05-01",
            "2025-05-01T12:00:00",
            "2025-02-29T00:00:00Z",
            "2025-04-31T00:00:00Z",
            "2025-05-01T24:00:00Z",
            "2025-05-01T12:00:00.Z",
            "2025-05-01T12:00:00+2:00",
            "1969-12-31T23:59:59Z",
            "99999999999999999999999",
            "-5",
        ] {
            assert!(parse_time(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn routes() {
        assert_eq!(Route::of("/v1/audit"), Some(Route::Query));
        assert_eq!(Route::of("/v1/audit/verify"), Some(Route::Verify));
        assert_eq!(
            Route::of("/v1/audit/checkpoints/latest"),
            Some(Route::LatestCheckpoint)
        );
        assert_eq!(
            Route::of("/v1/audit/proof/17"),
            Some(Route::Proof("17".into()))
        );
        for none in [
            "/v1/audit/",
            "/v1/audit/proof/",
            "/v1/audit/proof/1/2",
            "/v1/x",
            "/v1",
        ] {
            assert_eq!(Route::of(none), None, "{none}");
        }
    }

    #[test]
    fn records_show_seq_and_hash() {
        let r = StoredRecord {
            seq: 7,
            hash: [0xab; 32],
            record: AuditRecord::new(EventKind::Produce, "i").at_ms(5),
        };
        let v = record_json(&r);
        assert_eq!(v["seq"], 7);
        assert_eq!(v["kind"], "produce");
        assert_eq!(v["hash"], "ab".repeat(32));
    }
}
