//! Every answer the authorization stage gives must reach the client.
//!
//! kafka-protocol 0.18 refuses to encode a field whose value is not the
//! default in a version that lacks it, and silently drops "ignorable" ones;
//! either way a denial built for one version can fail (or lie) at another.
//! For every api the stage handles, at every version Custos accepts, under
//! several policy sets, these tests:
//!
//! 1. build a realistic request naming several resources with the crate's
//!    own structs (or by hand where the crate cannot encode the version);
//! 2. run [`Authorize::on_request`];
//! 3. encode a local answer with [`Response::encode_local`], or apply the
//!    amends to a plausible broker answer to what was forwarded and encode
//!    that, then decode the bytes back with the crate;
//! 4. compare what the client reads with what `docs/authorization.md`
//!    promises (error codes per resource; allowed entries untouched), and,
//!    for split requests, what reached the broker with the allowed resources.
//!
//! Authorized-operations fields (computed by the broker for Custos) must
//! come back as the policies' answer for the principal, and a forwarded
//! Metadata request must not let the broker auto-create a topic the
//! principal may not create.
//!
//! The table (`table()`) has one row per api: request builders, a broker
//! model, a flattener of answers into `(resource, error code)` entries, and
//! the expected outcome under a [`Model`] of the policies.
//!
//! Known defects of the stage are listed in [`known_bug`] (each with a
//! `BUG:` comment); those cases are skipped, and the suite fails when one of
//! them starts passing, so that the entry is removed with the fix.

use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use custos_audit::{DiscardSink, MemorySink};
use custos_policy::{Authorizer, Operation, PolicyEngine, TopicCatalog};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::code::*;
use super::Authorize;
use crate::message::{Request, Response};
use crate::metrics::Metrics;
use crate::pipeline::{SessionInfo, Stage, Verdict};
use crate::resources::name_based_max_version;
use crate::topic_ids::TopicIds;
use crate::versions::FORWARDED;

/// LEADER_NOT_AVAILABLE: a broker's answer for a topic it just auto-created.
const LEADER_NOT_AVAILABLE: i16 = 5;
const CORRELATION_ID: i32 = 4242;

// ---------------------------------------------------------------------------
// Policies and their model
// ---------------------------------------------------------------------------

/// Policy sets for `User:alice`. Names starting with "ok" are the ones the
/// partial sets permit; every request names some "ok" and some "no" ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// Only another user has permits.
    DenyAll,
    /// Everything on topics, groups and transactional ids named "ok*".
    Partial,
    /// Everything on topics and transactional ids named "ok*"; no groups.
    PartialNoGroups,
    /// `Partial` plus everything on the cluster.
    PartialCluster,
    /// Read (hence Describe) on every resource, nothing else.
    ReadOnly,
    /// Every operation but DescribeConfigs, AlterConfigs and ClusterAction.
    NoConfigs,
    /// Everything on everything.
    AllowAll,
}

const SCENARIOS: [Scenario; 7] = [
    Scenario::DenyAll,
    Scenario::Partial,
    Scenario::PartialNoGroups,
    Scenario::PartialCluster,
    Scenario::ReadOnly,
    Scenario::NoConfigs,
    Scenario::AllowAll,
];

impl Scenario {
    fn policies(self) -> String {
        let on = |ty: &str| {
            format!(
                "permit (principal == User::\"alice\", action in Action::\"All\", resource is {ty}) \
                 when {{ resource.name like \"ok*\" }};\n"
            )
        };
        let cluster = "permit (principal == User::\"alice\", action in Action::\"All\", \
                       resource is Cluster);\n";
        match self {
            Scenario::DenyAll => {
                "permit (principal == User::\"bob\", action in Action::\"All\", resource);".into()
            }
            Scenario::Partial => on("Topic") + &on("ConsumerGroup") + &on("TransactionalId"),
            Scenario::PartialNoGroups => on("Topic") + &on("TransactionalId"),
            Scenario::PartialCluster => {
                on("Topic") + &on("ConsumerGroup") + &on("TransactionalId") + cluster
            }
            Scenario::ReadOnly => {
                "permit (principal == User::\"alice\", action in Action::\"Read\", resource);"
                    .into()
            }
            Scenario::NoConfigs => "permit (principal == User::\"alice\", action in [\
                 Action::\"Read\", Action::\"Write\", Action::\"Create\", Action::\"Delete\", \
                 Action::\"Alter\", Action::\"IdempotentWrite\"], resource);"
                .into(),
            Scenario::AllowAll => {
                "permit (principal == User::\"alice\", action in Action::\"All\", resource);".into()
            }
        }
    }
}

/// A resource as the model sees it.
#[derive(Clone, Copy)]
enum R<'a> {
    Topic(&'a str),
    Group(&'a str),
    Txn(&'a str),
    Cluster,
}

/// What the policies of a [`Scenario`] allow, with Kafka's implications.
struct Model(Scenario);

impl Model {
    fn allows(&self, op: Operation, r: R<'_>) -> bool {
        use Operation::*;
        let ok = |n: &str| n.starts_with("ok");
        match self.0 {
            Scenario::DenyAll => false,
            Scenario::AllowAll => true,
            Scenario::Partial => match r {
                R::Topic(n) | R::Group(n) | R::Txn(n) => ok(n),
                R::Cluster => false,
            },
            Scenario::PartialNoGroups => match r {
                R::Topic(n) | R::Txn(n) => ok(n),
                R::Group(_) | R::Cluster => false,
            },
            Scenario::PartialCluster => match r {
                R::Topic(n) | R::Group(n) | R::Txn(n) => ok(n),
                R::Cluster => true,
            },
            Scenario::ReadOnly => matches!(op, Read | Describe),
            Scenario::NoConfigs => !matches!(op, DescribeConfigs | AlterConfigs | ClusterAction),
        }
    }
    fn topic(&self, op: Operation, n: &str) -> bool {
        self.allows(op, R::Topic(n))
    }
    fn group(&self, op: Operation, n: &str) -> bool {
        self.allows(op, R::Group(n))
    }
    fn txn(&self, op: Operation, n: &str) -> bool {
        self.allows(op, R::Txn(n))
    }
    fn cluster(&self, op: Operation) -> bool {
        self.allows(op, R::Cluster)
    }
    /// Kafka's "may write some topic" for idempotent producers.
    fn writes_some_topic(&self) -> bool {
        self.topic(Operation::Write, "ok-anything")
    }
    /// Kafka's authorized-operations bit field of a resource: the bits
    /// (`AclOperation` codes) of the operations Kafka reports for its type
    /// that the policies allow.
    fn ops_bits(&self, r: R<'_>) -> i32 {
        use Operation::*;
        let ops: &[(Operation, u32)] = match r {
            R::Topic(_) => &[
                (Read, 3),
                (Write, 4),
                (Create, 5),
                (Delete, 6),
                (Alter, 7),
                (Describe, 8),
                (DescribeConfigs, 10),
                (AlterConfigs, 11),
            ],
            R::Group(_) => &[
                (Read, 3),
                (Delete, 6),
                (Describe, 8),
                (DescribeConfigs, 10),
                (AlterConfigs, 11),
            ],
            R::Txn(_) => &[(Write, 4), (Describe, 8)],
            R::Cluster => &[
                (Create, 5),
                (Alter, 7),
                (Describe, 8),
                (ClusterAction, 9),
                (DescribeConfigs, 10),
                (AlterConfigs, 11),
                (IdempotentWrite, 12),
            ],
        };
        ops.iter()
            .filter(|(op, _)| self.allows(*op, r))
            .fold(0, |bits, (_, code)| bits | (1 << code))
    }
    /// The error a config resource's denial carries, or 0.
    fn config(&self, op: Operation, ty: i8, name: &str) -> i16 {
        let (allowed, e) = match ty {
            2 => (self.topic(op, name), TOPIC_AUTHORIZATION_FAILED),
            32 => (self.group(op, name), GROUP_AUTHORIZATION_FAILED),
            _ => (self.cluster(op), CLUSTER_AUTHORIZATION_FAILED),
        };
        if allowed {
            0
        } else {
            e
        }
    }
}

// ---------------------------------------------------------------------------
// What requests name
// ---------------------------------------------------------------------------

/// A topic and partitions of it.
type TopicParts = (&'static str, &'static [i32]);

/// Topics and their partitions named by topic-partition requests.
const TOPICS: [TopicParts; 3] = [("ok-1", &[0, 1]), ("no-1", &[0]), ("ok-2", &[3])];
/// Groups named by multi-group requests.
const GROUPS: [&str; 3] = ["ok-g1", "no-g1", "ok-g2"];
/// Transactional ids named by multi-id requests.
const TXNS: [&str; 3] = ["ok-x1", "no-x1", "ok-x2"];
/// Config resources: topics (2), brokers (4), broker loggers (8), groups (32).
const CONFIGS: [(i8, &str); 6] = [
    (2, "ok-1"),
    (4, "0"),
    (2, "no-1"),
    (32, "ok-g1"),
    (8, "0"),
    (32, "no-g1"),
];
/// Topics that exist in the modelled cluster (the others named are missing).
const EXISTING: [&str; 4] = ["ok-1", "no-1", "ok-3", "no-3"];
/// Topic names and the number their id is made from.
const TOPIC_IDS: [(&str, u8); 6] = [
    ("ok-1", 1),
    ("no-1", 2),
    ("ok-2", 3),
    ("no-2", 4),
    ("ok-3", 5),
    ("no-3", 6),
];

fn s(x: &str) -> StrBytes {
    StrBytes::from_string(x.to_string())
}
fn tn(x: &str) -> TopicName {
    TopicName(s(x))
}
fn gid(x: &str) -> GroupId {
    GroupId(s(x))
}
fn xid(x: &str) -> TransactionalId {
    TransactionalId(s(x))
}
fn dbg<T: Debug>(x: &T) -> String {
    format!("{x:?}")
}
fn tp(n: &str, p: i32) -> String {
    format!("t:{n}:{p}")
}
fn tl(n: &str) -> String {
    format!("t:{n}")
}
fn gl(n: &str) -> String {
    format!("g:{n}")
}
fn xl(n: &str) -> String {
    format!("x:{n}")
}
fn cl(ty: i8, n: &str) -> String {
    format!("c:{ty}:{n}")
}

/// The 16 bytes of topic id number `k` (random-looking, never nil).
fn id_bytes(k: u8) -> [u8; 16] {
    let mut b = [
        0x3f, 0x9c, 0x51, 0x7e, 0xd2, 0x44, 0x4b, 0x0a, 0x93, 0x17, 0xe5, 0x6c, 0x28, 0xb1, 0x7d,
        0x00,
    ];
    b[15] = k;
    b
}

/// A topic id whose bytes the name-based reader takes for the compact string
/// "ok-1" followed by an empty partition array and no tagged fields: what a
/// v10 OffsetCommit or OffsetFetch naming this id looks like to Custos.
const CRAFTED_ID: [u8; 16] = [
    0x05, b'o', b'k', b'-', b'1', 0x01, 0x00, 0x00, 0x8e, 0x41, 0x9d, 0x27, 0x6a, 0xc3, 0x10, 0x5b,
];

/// A Metadata request topic named by id number `k` only, built by decoding:
/// id bytes, null compact name, no tagged fields.
fn topic_by_id(k: u8) -> metadata_request::MetadataRequestTopic {
    let mut raw = id_bytes(k).to_vec();
    raw.extend([0, 0]);
    metadata_request::MetadataRequestTopic::decode(&mut Bytes::from(raw), 12).expect("by id")
}

/// Topic id number `k` as the crate's uuid type.
macro_rules! uuid {
    ($k:expr) => {
        topic_by_id($k).topic_id
    };
}

fn topic_number(name: &str) -> u8 {
    TOPIC_IDS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, k)| *k)
        .expect("known topic")
}

fn topic_name(k: u8) -> &'static str {
    TOPIC_IDS
        .iter()
        .find(|(_, x)| *x == k)
        .map(|(n, _)| *n)
        .expect("known id")
}

/// The number of a topic id, by its debug text (the type is not nameable).
fn id_number(id_debug: &str) -> Option<u8> {
    (1..=6).find(|k| dbg(&uuid!(*k)) == id_debug)
}

/// A minimal writer for the versions the crate cannot encode.
#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn i8(self, x: i8) -> Self {
        self.raw(&x.to_be_bytes())
    }
    fn i16(self, x: i16) -> Self {
        self.raw(&x.to_be_bytes())
    }
    fn i32(self, x: i32) -> Self {
        self.raw(&x.to_be_bytes())
    }
    fn i64(self, x: i64) -> Self {
        self.raw(&x.to_be_bytes())
    }
    fn uvarint(mut self, mut n: u32) -> Self {
        while n >= 0x80 {
            self.0.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        self.0.push(n as u8);
        self
    }
    /// Compact array length.
    fn len(self, n: usize) -> Self {
        self.uvarint(n as u32 + 1)
    }
    /// Compact string.
    fn str(self, x: &str) -> Self {
        self.len(x.len()).raw(x.as_bytes())
    }
    /// Compact null string or array.
    fn null(self) -> Self {
        self.uvarint(0)
    }
    /// No tagged fields.
    fn tags(self) -> Self {
        self.uvarint(0)
    }
}

// ---------------------------------------------------------------------------
// Encoding and decoding with the crate
// ---------------------------------------------------------------------------

fn enc(v: i16, r: RequestKind) -> Vec<u8> {
    let mut b = BytesMut::new();
    r.encode(&mut b, v).expect("request body encodes");
    b.to_vec()
}

/// Header and body of a request frame, as a client sends it.
fn frame(api: ApiKey, v: i16, body: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(v)
        .with_correlation_id(CORRELATION_ID)
        .with_client_id(Some(s("answers-test")))
        .encode(&mut b, api.request_header_version(v))
        .expect("header");
    b.extend_from_slice(body);
    b.freeze()
}

/// The highest version whose request the crate's structs can decode.
fn request_struct_max(api: ApiKey) -> i16 {
    match api {
        ApiKey::InitProducerId => 5,
        ApiKey::OffsetCommit | ApiKey::OffsetFetch => 9,
        _ => i16::MAX,
    }
}

fn decode_request(api: ApiKey, v: i16, body: &[u8]) -> Result<RequestKind, String> {
    let mut b = Bytes::copy_from_slice(body);
    RequestKind::decode(api, &mut b, v.min(request_struct_max(api)))
        .map_err(|e| format!("the request does not decode: {e}"))
}

fn decode_body(api: ApiKey, v: i16, mut b: Bytes) -> Result<ResponseKind, String> {
    let r = ResponseKind::decode(api, &mut b, v)
        .map_err(|e| format!("the answer does not decode: {e}"))?;
    if b.has_remaining() {
        return Err(format!("{} bytes left after the answer", b.remaining()));
    }
    Ok(r)
}

/// Decodes a whole local answer (header and body).
fn decode_local(api: ApiKey, v: i16, mut b: Bytes) -> Result<ResponseKind, String> {
    let h = ResponseHeader::decode(&mut b, api.response_header_version(v))
        .map_err(|e| format!("the answer's header does not decode: {e}"))?;
    if h.correlation_id != CORRELATION_ID {
        return Err(format!("correlation id {}", h.correlation_id));
    }
    decode_body(api, v, b)
}

fn encode_body(v: i16, r: &ResponseKind) -> Result<Bytes, String> {
    let mut b = BytesMut::new();
    r.encode(&mut b, v).map_err(|e| e.to_string())?;
    Ok(b.freeze())
}

/// An answer as the client would read it: encoded, then decoded.
fn roundtrip(api: ApiKey, v: i16, r: &ResponseKind) -> Result<ResponseKind, String> {
    let b = encode_body(v, r).map_err(|e| format!("the broker's answer does not encode: {e}"))?;
    decode_body(api, v, b)
}

// ---------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------

/// One entry of an answer: resource label, error code, the entry's content.
type Entry = (String, i16, String);

/// What must reach the broker.
enum Fwd {
    /// Nothing: Custos answers alone.
    Nothing,
    /// The request as the client sent it, byte for byte.
    Unchanged,
    /// A request naming exactly these resources (entries unchanged).
    Exactly(Vec<String>),
}

/// What the client must get.
enum Outcome {
    /// An answer with exactly these (resource, error code) entries.
    Answer { codes: Vec<(String, i16)>, fwd: Fwd },
    /// The connection closed, as the stage documents for this api.
    Close,
}

/// Request bodies, each with a tag the other functions of its row read.
type Requests = Vec<(&'static str, Vec<u8>)>;
/// An extra check of the request that reached the broker.
type ForwardCheck = fn(i16, &Model, &RequestKind) -> Result<(), String>;

/// One api: how to ask, how the broker answers, what the client must read.
struct Api {
    key: ApiKey,
    /// Request bodies at a version, each with a tag the other functions read.
    requests: fn(i16) -> Requests,
    /// The resources a (decoded) request names: label and entry content.
    named: fn(i16, &RequestKind) -> Vec<(String, String)>,
    /// The broker's answer to a forwarded request.
    answer: fn(i16, &str, &RequestKind) -> ResponseKind,
    /// The entries of an answer the client reads.
    entries: fn(i16, &str, &ResponseKind) -> Vec<Entry>,
    /// What the docs promise under the model.
    expect: fn(i16, &str, &Model) -> Outcome,
    /// Extra checks of the forwarded request.
    check_forwarded: Option<ForwardCheck>,
}

fn stage(sc: Scenario) -> Authorize {
    let engine = PolicyEngine::load(&sc.policies(), TopicCatalog::empty()).expect("policies");
    Authorize::new(
        Arc::new(Authorizer::new(engine)),
        Arc::new(DiscardSink),
        Arc::new(Metrics::new()),
    )
    .with_topic_ids(learned_ids())
}

/// The ids the stage has learned from broker answers (share-group apis
/// name topics by id): every topic of [`TOPIC_IDS`], by [`id_bytes`].
fn learned_ids() -> Arc<TopicIds> {
    let ids = TopicIds::new();
    for (name, k) in TOPIC_IDS {
        ids.learn(id_bytes(k), name);
    }
    Arc::new(ids)
}

fn alice() -> SessionInfo {
    let mut id = crate::auth::Identity::anonymous();
    id.name = "alice".into();
    id.method = crate::auth::AuthMethod::ScramSha512;
    SessionInfo::new(
        11,
        "10.0.0.9:5000".parse().expect("addr"),
        Some(1),
        false,
        id,
    )
}

/// Versions Custos accepts for `api` and can authorize by name.
fn versions(api: ApiKey) -> std::ops::RangeInclusive<i16> {
    let r = api.valid_versions();
    r.min..=r.max.min(name_based_max_version(api).unwrap_or(i16::MAX))
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// How a case was answered, for the per-api summary.
#[derive(Clone, Copy)]
enum Path {
    Closed,
    Local,
    Forwarded,
    Amended,
}

/// Runs one request through the stage and checks what the client gets.
async fn run_case(
    api: &Api,
    stage: &Authorize,
    sc: Scenario,
    v: i16,
    tag: &str,
    body: &[u8],
) -> Result<Path, String> {
    let key = api.key;
    let m = Model(sc);
    let mut req =
        Request::parse(frame(key, v, body)).map_err(|e| format!("Request::parse: {e}"))?;
    let verdict = stage.on_request(&alice(), &mut req).await;
    let (codes, fwd) = match ((api.expect)(v, tag, &m), verdict) {
        (Outcome::Close, Err(_)) => return Ok(Path::Closed),
        (Outcome::Close, Ok(Verdict::Forward)) => {
            return Err("forwarded where the connection must close".into())
        }
        (Outcome::Close, Ok(Verdict::Respond(r))) => {
            return Err(format!("answered {r:?} where the connection must close"))
        }
        (Outcome::Answer { .. }, Err(e)) => return Err(format!("closed the connection: {e}")),
        (Outcome::Answer { codes, fwd }, Ok(verdict)) => match verdict {
            Verdict::Respond(r) => {
                if !matches!(fwd, Fwd::Nothing) {
                    return Err(format!("answered locally ({r:?}) where it must forward"));
                }
                if !req.amends.0.is_empty() {
                    return Err("a local answer with amends".into());
                }
                let bytes = Response::encode_local(key, v, CORRELATION_ID, &r)
                    .map_err(|e| format!("the local answer does not encode: {e}"))?;
                let got = (api.entries)(v, tag, &decode_local(key, v, bytes)?);
                return compare(got, codes).map(|()| Path::Local);
            }
            Verdict::Forward => (codes, fwd),
        },
    };

    // Forwarded: check what reached the broker.
    let sent = req.body_bytes().to_vec();
    match &fwd {
        Fwd::Nothing => return Err("forwarded where Custos must answer alone".into()),
        Fwd::Unchanged if sent != body => {
            return Err("the forwarded request was changed".into());
        }
        _ => {}
    }
    let original = (api.named)(v, &decode_request(key, v, body)?);
    let forwarded_request = decode_request(key, v, &sent)?;
    let forwarded = (api.named)(v, &forwarded_request);
    if let Fwd::Exactly(want) = &fwd {
        let got = sorted(forwarded.iter().map(|(l, _)| l.clone()).collect());
        if got != sorted(want.clone()) {
            return Err(format!("forwarded {got:?}, expected {want:?}"));
        }
    }
    for entry in &forwarded {
        if !original.contains(entry) {
            return Err(format!(
                "forwarded entry {} differs from the client's",
                entry.0
            ));
        }
    }
    if let Some(check) = api.check_forwarded {
        check(v, &m, &forwarded_request)?;
    }

    // The broker answers; the amends edit the answer; the client reads it.
    let mut answer = (api.answer)(v, tag, &forwarded_request);
    let before = (api.entries)(v, tag, &roundtrip(key, v, &answer)?);
    let path = if req.amends.0.is_empty() {
        Path::Forwarded
    } else {
        Path::Amended
    };
    for amend in std::mem::take(&mut req.amends.0) {
        match catch_unwind(AssertUnwindSafe(|| amend(&mut answer))) {
            Err(_) => return Err("an amend panicked".into()),
            Ok(Err(e)) => return Err(format!("an amend failed: {e}")),
            Ok(Ok(())) => {}
        }
    }
    let bytes =
        encode_body(v, &answer).map_err(|e| format!("the amended answer does not encode: {e}"))?;
    let after = (api.entries)(v, tag, &decode_body(key, v, bytes)?);
    for (label, code, content) in &after {
        if *code != 0 {
            continue;
        }
        if let Some((_, _, was)) = before.iter().find(|(l, _, _)| l == label) {
            if was != content {
                return Err(format!("allowed entry {label} changed: {was} -> {content}"));
            }
        }
    }
    compare(after, codes).map(|()| path)
}

fn compare(got: Vec<Entry>, want: Vec<(String, i16)>) -> Result<(), String> {
    let got = sorted(got.into_iter().map(|(l, c, _)| (l, c)).collect::<Vec<_>>());
    let want = sorted(want);
    if got == want {
        Ok(())
    } else {
        Err(format!("client reads {got:?}, docs promise {want:?}"))
    }
}

/// Runs every version, request and scenario of one api.
async fn run(key: ApiKey) {
    let api = table()
        .into_iter()
        .find(|a| a.key == key)
        .expect("api in the table");
    let stages: Vec<(Scenario, Authorize)> = SCENARIOS.iter().map(|s| (*s, stage(*s))).collect();
    let mut failures = Vec::new();
    let (mut cases, mut skipped) = (0, 0);
    // Closed, answered locally, forwarded as is, forwarded and amended.
    let mut paths = [0; 4];
    for v in versions(key) {
        for (tag, body) in (api.requests)(v) {
            for (sc, stage) in &stages {
                cases += 1;
                let what = format!("{key:?} v{v} [{tag}] {sc:?}");
                let result = run_case(&api, stage, *sc, v, tag, &body).await;
                match (result, known_bug(key, v, tag, *sc)) {
                    (Ok(path), None) => paths[path as usize] += 1,
                    (Err(e), None) => failures.push(format!("{what}: {e}")),
                    (Err(_), Some(_)) => skipped += 1,
                    (Ok(_), Some(bug)) => failures.push(format!(
                        "{what}: passes now; remove it from known_bug ({bug})"
                    )),
                }
            }
        }
    }
    eprintln!(
        "{key:?}: {cases} cases ({} closed, {} answered locally, {} forwarded, {} amended), \
         {skipped} skipped as known bugs",
        paths[0], paths[1], paths[2], paths[3]
    );
    assert!(
        failures.is_empty(),
        "{} of {cases} cases fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Cases that fail because of a known defect in the stage; skipped until it
/// is fixed (the suite fails once one of them passes).
fn known_bug(_api: ApiKey, _v: i16, _tag: &str, _sc: Scenario) -> Option<&'static str> {
    // Every bug this table once listed is fixed; a new one goes here with a
    // `// BUG:` comment until it is.
    None
}

// ---------------------------------------------------------------------------
// Shared pieces of the table
// ---------------------------------------------------------------------------

/// Codes for every partition of [`TOPICS`]: 0 when `allowed`, else `denied`.
fn tp_codes(allowed: impl Fn(&str) -> bool, denied: i16) -> Vec<(String, i16)> {
    TOPICS
        .iter()
        .flat_map(|(n, ps)| {
            let code = if allowed(n) { 0 } else { denied };
            ps.iter().map(move |p| (tp(n, *p), code))
        })
        .collect()
}

/// Every partition of [`TOPICS`] whose topic passes `keep`.
fn tp_labels(keep: impl Fn(&str) -> bool) -> Vec<String> {
    TOPICS
        .iter()
        .filter(|(n, _)| keep(n))
        .flat_map(|(n, ps)| ps.iter().map(move |p| tp(n, *p)))
        .collect()
}

/// A split: the allowed part is forwarded (untouched when all are allowed),
/// nothing is forwarded when none is.
fn split(codes: Vec<(String, i16)>, forwarded: Vec<String>, all: usize) -> Outcome {
    let fwd = if forwarded.is_empty() {
        Fwd::Nothing
    } else if forwarded.len() == all {
        Fwd::Unchanged
    } else {
        Fwd::Exactly(forwarded)
    };
    Outcome::Answer { codes, fwd }
}

/// A mask: the request goes through untouched and the answer is edited.
fn mask(codes: Vec<(String, i16)>) -> Outcome {
    Outcome::Answer {
        codes,
        fwd: Fwd::Unchanged,
    }
}

/// A whole answer for one resource: forwarded untouched, or answered alone.
fn whole(label: &str, code: i16) -> Outcome {
    Outcome::Answer {
        codes: vec![(label.to_string(), code)],
        fwd: if code == 0 {
            Fwd::Unchanged
        } else {
            Fwd::Nothing
        },
    }
}

/// Requests for one single resource named "ok-…" and one named "no-…".
fn one_each(v: i16, names: [&'static str; 2], build: fn(i16, &str) -> RequestKind) -> Requests {
    names.iter().map(|n| (*n, enc(v, build(v, n)))).collect()
}

/// The tag's two parts, `txn/group`.
fn pair(tag: &str) -> (&str, &str) {
    tag.split_once('/').expect("txn/group tag")
}

/// One entry for a whole answer whose top-level code is the answer.
fn single(label: String, code: i16, r: &impl Debug) -> Vec<Entry> {
    vec![(label, code, dbg(r))]
}

/// The entry of a cluster answer: "*" with its code (0 when none).
fn cluster_entry(code: i16, r: &impl Debug) -> Vec<Entry> {
    single("*".into(), code, r)
}

/// A cluster-only api whose denial is an answer with CLUSTER_AUTHORIZATION_FAILED.
fn cluster_expect(op: Operation, m: &Model) -> Outcome {
    whole(
        "*",
        if m.cluster(op) {
            0
        } else {
            CLUSTER_AUTHORIZATION_FAILED
        },
    )
}

/// A cluster api answered per entry of the request: forwarded untouched with
/// the grant, else every entry CLUSTER_AUTHORIZATION_FAILED, answered alone.
fn per_entry(op: Operation, m: &Model, labels: &[&str]) -> Outcome {
    let allowed = m.cluster(op);
    let code = if allowed {
        0
    } else {
        CLUSTER_AUTHORIZATION_FAILED
    };
    Outcome::Answer {
        codes: labels.iter().map(|l| (l.to_string(), code)).collect(),
        fwd: if allowed {
            Fwd::Unchanged
        } else {
            Fwd::Nothing
        },
    }
}

/// Authorized operations the broker computed (for Custos, not the client).
const BROKER_OPS: i32 = 0x1ff8;
/// Authorized operations when the client did not ask for them.
const NOT_REQUESTED: i32 = i32::MIN;

/// The entry of an authorized-operations field, when the answer has one.
fn ops_entry(label: &str, bits: i32) -> Option<Entry> {
    (bits != NOT_REQUESTED).then(|| (ops_label(label, bits), 0, String::new()))
}

/// The label carrying an authorized-operations value: a wrong value shows
/// as a wrong label.
fn ops_label(label: &str, bits: i32) -> String {
    format!("{label}/ops={bits:#x}")
}

fn no_names(_: i16, _: &RequestKind) -> Vec<(String, String)> {
    Vec::new()
}

// ---------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------

#[allow(clippy::too_many_lines)]
fn table() -> Vec<Api> {
    vec![
        produce(),
        fetch(),
        list_offsets(),
        metadata(),
        offset_commit(),
        offset_fetch(),
        find_coordinator(),
        group_member(ApiKey::JoinGroup),
        group_member(ApiKey::Heartbeat),
        group_member(ApiKey::LeaveGroup),
        group_member(ApiKey::SyncGroup),
        group_member(ApiKey::ConsumerGroupHeartbeat),
        describe_groups(),
        consumer_group_describe(),
        list_groups(),
        create_topics(),
        delete_topics(),
        delete_records(),
        init_producer_id(),
        offset_for_leader_epoch(),
        add_partitions_to_txn(),
        add_offsets_to_txn(),
        end_txn(),
        txn_offset_commit(),
        describe_acls(),
        create_acls(),
        delete_acls(),
        describe_configs(),
        alter_configs(),
        incremental_alter_configs(),
        alter_replica_log_dirs(),
        describe_log_dirs(),
        create_partitions(),
        delete_groups(),
        elect_leaders(),
        alter_partition_reassignments(),
        list_partition_reassignments(),
        offset_delete(),
        describe_client_quotas(),
        alter_client_quotas(),
        describe_user_scram_credentials(),
        alter_user_scram_credentials(),
        update_features(),
        describe_producers(),
        describe_transactions(),
        list_transactions(),
        list_config_resources(),
        describe_topic_partitions(),
        describe_cluster(),
        share_group_heartbeat(),
        share_group_describe(),
        share_fetch(),
        share_acknowledge(),
        describe_share_group_offsets(),
        alter_share_group_offsets(),
        delete_share_group_offsets(),
    ]
}

// ---- Produce ----

/// A Produce naming every partition of [`TOPICS`] (same layout at v3-12).
fn produce_request(txn: Option<&str>, acks: i16) -> RequestKind {
    RequestKind::Produce(
        ProduceRequest::default()
            .with_transactional_id(txn.map(xid))
            .with_acks(acks)
            .with_timeout_ms(30_000)
            .with_topic_data(
                TOPICS
                    .iter()
                    .map(|(n, ps)| {
                        produce_request::TopicProduceData::default()
                            .with_name(tn(n))
                            .with_partition_data(
                                ps.iter()
                                    .map(|p| {
                                        produce_request::PartitionProduceData::default()
                                            .with_index(*p)
                                            .with_records(Some(Bytes::from(format!(
                                                "batch-{n}-{p}"
                                            ))))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
    )
}

fn produce() -> Api {
    Api {
        key: ApiKey::Produce,
        requests: |v| {
            vec![
                ("plain", enc(v, produce_request(None, -1))),
                ("ok-x1", enc(v, produce_request(Some("ok-x1"), -1))),
                ("no-x1", enc(v, produce_request(Some("no-x1"), 1))),
            ]
        },
        named: |_, r| {
            let RequestKind::Produce(p) = r else {
                panic!("not produce")
            };
            p.topic_data
                .iter()
                .flat_map(|t| {
                    t.partition_data
                        .iter()
                        .map(|x| (tp(&t.name.0, x.index), dbg(x)))
                })
                .collect()
        },
        answer: |v, _, r| {
            let RequestKind::Produce(p) = r else {
                panic!("not produce")
            };
            ResponseKind::Produce(
                ProduceResponse::default().with_responses(
                    p.topic_data
                        .iter()
                        .map(|t| {
                            produce_response::TopicProduceResponse::default()
                                .with_name(t.name.clone())
                                .with_partition_responses(
                                    t.partition_data
                                        .iter()
                                        .map(|x| {
                                            let mut r =
                                                produce_response::PartitionProduceResponse::default()
                                                    .with_index(x.index)
                                                    .with_base_offset(1000 + i64::from(x.index))
                                                    .with_log_append_time_ms(-1);
                                            if v >= 5 {
                                                r = r.with_log_start_offset(0);
                                            }
                                            r
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::Produce(p) = r else {
                panic!("not produce")
            };
            p.responses
                .iter()
                .flat_map(|t| {
                    t.partition_responses
                        .iter()
                        .map(|x| (tp(&t.name.0, x.index), x.error_code, dbg(x)))
                })
                .collect()
        },
        expect: |_, tag, m| {
            use Operation::*;
            if tag != "plain" && !m.txn(Write, tag) {
                return Outcome::Answer {
                    codes: tp_codes(|_| false, TRANSACTIONAL_ID_AUTHORIZATION_FAILED),
                    fwd: Fwd::Nothing,
                };
            }
            split(
                tp_codes(|n| m.topic(Write, n), TOPIC_AUTHORIZATION_FAILED),
                tp_labels(|n| m.topic(Write, n)),
                tp_labels(|_| true).len(),
            )
        },
        check_forwarded: None,
    }
}

// ---- Fetch ----

fn fetch() -> Api {
    Api {
        key: ApiKey::Fetch,
        requests: |v| {
            let mut f = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(500)
                .with_min_bytes(1)
                .with_max_bytes(1 << 20)
                .with_isolation_level(1)
                .with_topics(
                    TOPICS
                        .iter()
                        .map(|(n, ps)| {
                            fetch_request::FetchTopic::default()
                                .with_topic(tn(n))
                                .with_partitions(
                                    ps.iter()
                                        .map(|p| {
                                            fetch_request::FetchPartition::default()
                                                .with_partition(*p)
                                                .with_fetch_offset(10)
                                                .with_partition_max_bytes(1 << 20)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                );
            if v >= 7 {
                // A full fetch request that opens a session.
                f = f.with_session_id(0).with_session_epoch(0);
            }
            vec![("consumer", enc(v, RequestKind::Fetch(f)))]
        },
        named: |_, r| {
            let RequestKind::Fetch(f) = r else {
                panic!("not fetch")
            };
            f.topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|x| (tp(&t.topic.0, x.partition), dbg(x)))
                })
                .collect()
        },
        answer: |v, _, r| {
            let RequestKind::Fetch(f) = r else {
                panic!("not fetch")
            };
            let mut out = FetchResponse::default().with_responses(
                f.topics
                    .iter()
                    .map(|t| {
                        fetch_response::FetchableTopicResponse::default()
                            .with_topic(t.topic.clone())
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|x| {
                                        let mut p = fetch_response::PartitionData::default()
                                            .with_partition_index(x.partition)
                                            .with_high_watermark(120)
                                            .with_last_stable_offset(120)
                                            .with_aborted_transactions(Some(vec![]))
                                            .with_records(Some(Bytes::from(format!(
                                                "records-{}-{}",
                                                t.topic.0, x.partition
                                            ))));
                                        if v >= 5 {
                                            p = p.with_log_start_offset(0);
                                        }
                                        p
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
            if v >= 7 {
                out = out.with_session_id(77);
            }
            ResponseKind::Fetch(out)
        },
        entries: |_, _, r| {
            let ResponseKind::Fetch(f) = r else {
                panic!("not fetch")
            };
            let mut out: Vec<Entry> = f
                .responses
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|x| (tp(&t.topic.0, x.partition_index), x.error_code, dbg(x)))
                })
                .collect();
            if f.error_code != 0 {
                out.push(("*".into(), f.error_code, String::new()));
            }
            out
        },
        expect: |_, _, m| {
            mask(tp_codes(
                |n| m.topic(Operation::Read, n),
                TOPIC_AUTHORIZATION_FAILED,
            ))
        },
        check_forwarded: None,
    }
}

// ---- ListOffsets ----

fn list_offsets() -> Api {
    Api {
        key: ApiKey::ListOffsets,
        requests: |v| {
            let r = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(
                    TOPICS
                        .iter()
                        .map(|(n, ps)| {
                            list_offsets_request::ListOffsetsTopic::default()
                                .with_name(tn(n))
                                .with_partitions(
                                    ps.iter()
                                        .map(|p| {
                                            list_offsets_request::ListOffsetsPartition::default()
                                                .with_partition_index(*p)
                                                .with_timestamp(-1)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                );
            vec![("latest", enc(v, RequestKind::ListOffsets(r)))]
        },
        named: |_, r| {
            let RequestKind::ListOffsets(l) = r else {
                panic!("not list offsets")
            };
            l.topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|x| (tp(&t.name.0, x.partition_index), dbg(x)))
                })
                .collect()
        },
        answer: |v, _, r| {
            let RequestKind::ListOffsets(l) = r else {
                panic!("not list offsets")
            };
            ResponseKind::ListOffsets(
                ListOffsetsResponse::default().with_topics(
                    l.topics
                        .iter()
                        .map(|t| {
                            list_offsets_response::ListOffsetsTopicResponse::default()
                                .with_name(t.name.clone())
                                .with_partitions(
                                    t.partitions
                                        .iter()
                                        .map(|x| {
                                            let mut p =
                                                list_offsets_response::ListOffsetsPartitionResponse::default()
                                                    .with_partition_index(x.partition_index)
                                                    .with_timestamp(-1)
                                                    .with_offset(500 + i64::from(x.partition_index));
                                            if v >= 4 {
                                                p = p.with_leader_epoch(7);
                                            }
                                            p
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::ListOffsets(l) = r else {
                panic!("not list offsets")
            };
            l.topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|x| (tp(&t.name.0, x.partition_index), x.error_code, dbg(x)))
                })
                .collect()
        },
        expect: |_, _, m| {
            mask(tp_codes(
                |n| m.topic(Operation::Describe, n),
                TOPIC_AUTHORIZATION_FAILED,
            ))
        },
        check_forwarded: None,
    }
}

// ---- Metadata ----

/// Topics a named Metadata request asks for: two exist, two are missing.
const METADATA_NAMED: [&str; 4] = ["ok-1", "no-1", "ok-2", "no-2"];

fn metadata_request(v: i16, tag: &str) -> RequestKind {
    let named = |n: &str| metadata_request::MetadataRequestTopic::default().with_name(Some(tn(n)));
    let topics = match tag {
        "named" | "noauto" => Some(METADATA_NAMED.iter().map(|n| named(n)).collect()),
        "all" if v == 0 => Some(vec![]),
        "all" => None,
        "ids" => Some(vec![
            named("ok-1"),
            topic_by_id(topic_number("ok-3")),
            topic_by_id(topic_number("no-3")),
            named("no-1"),
        ]),
        other => panic!("metadata tag {other}"),
    };
    let mut r = MetadataRequest::default().with_topics(topics);
    if v >= 4 {
        r = r.with_allow_auto_topic_creation(tag == "named");
    }
    if v >= 8 {
        r = r.with_include_topic_authorized_operations(true);
    }
    if (8..=10).contains(&v) {
        r = r.with_include_cluster_authorized_operations(true);
    }
    RequestKind::Metadata(r)
}

/// Whether the broker would auto-create missing topics for this request.
fn metadata_auto_create(v: i16, r: &MetadataRequest) -> bool {
    v < 4 || r.allow_auto_topic_creation
}

fn metadata_existing_topic(v: i16, name: &str) -> metadata_response::MetadataResponseTopic {
    let mut t = metadata_response::MetadataResponseTopic::default()
        .with_name(Some(tn(name)))
        .with_partitions(
            [0, 1]
                .iter()
                .map(|p| {
                    let mut x = metadata_response::MetadataResponsePartition::default()
                        .with_partition_index(*p)
                        .with_leader_id(BrokerId(1))
                        .with_replica_nodes(vec![BrokerId(1), BrokerId(2)])
                        .with_isr_nodes(vec![BrokerId(1), BrokerId(2)]);
                    if v >= 7 {
                        x = x.with_leader_epoch(3);
                    }
                    x
                })
                .collect(),
        );
    if v >= 10 {
        t = t.with_topic_id(uuid!(topic_number(name)));
    }
    if v >= 8 {
        t = t.with_topic_authorized_operations(BROKER_OPS);
    }
    t
}

/// A Metadata answer topic's label: its name, or its id number without one.
fn metadata_label(t: &metadata_response::MetadataResponseTopic) -> String {
    match &t.name {
        Some(n) => tl(&n.0),
        None => format!("id:{}", id_number(&dbg(&t.topic_id)).unwrap_or(0)),
    }
}

fn metadata() -> Api {
    Api {
        key: ApiKey::Metadata,
        requests: |v| {
            let mut tags = vec!["named", "all"];
            if v >= 4 {
                tags.push("noauto");
            }
            if v >= 12 {
                // Kafka's clients name topics by id from v12 (null names).
                tags.push("ids");
            }
            tags.into_iter()
                .map(|t| (t, enc(v, metadata_request(v, t))))
                .collect()
        },
        named: |_, r| {
            let RequestKind::Metadata(m) = r else {
                panic!("not metadata")
            };
            m.topics
                .iter()
                .flatten()
                .map(|t| match &t.name {
                    Some(n) => (tl(&n.0), dbg(t)),
                    None => (
                        format!("id:{}", id_number(&dbg(&t.topic_id)).unwrap_or(0)),
                        dbg(t),
                    ),
                })
                .collect()
        },
        answer: |v, _, r| {
            let RequestKind::Metadata(m) = r else {
                panic!("not metadata")
            };
            let topics = match &m.topics {
                None => EXISTING
                    .iter()
                    .map(|n| metadata_existing_topic(v, n))
                    .collect(),
                Some(ts) if ts.is_empty() && v == 0 => EXISTING
                    .iter()
                    .map(|n| metadata_existing_topic(v, n))
                    .collect(),
                Some(ts) => ts
                    .iter()
                    .map(|t| {
                        let name = match &t.name {
                            Some(n) => n.0.to_string(),
                            None => topic_name(id_number(&dbg(&t.topic_id)).expect("known id"))
                                .to_string(),
                        };
                        if EXISTING.contains(&name.as_str()) {
                            metadata_existing_topic(v, &name)
                        } else {
                            let code = if metadata_auto_create(v, m) {
                                LEADER_NOT_AVAILABLE
                            } else {
                                UNKNOWN_TOPIC_OR_PARTITION
                            };
                            metadata_response::MetadataResponseTopic::default()
                                .with_name(Some(tn(&name)))
                                .with_error_code(code)
                        }
                    })
                    .collect(),
            };
            let mut out = MetadataResponse::default()
                .with_brokers(vec![metadata_response::MetadataResponseBroker::default()
                    .with_node_id(BrokerId(1))
                    .with_host(s("broker-1"))
                    .with_port(9092)])
                .with_topics(topics);
            if v >= 1 {
                out = out.with_controller_id(BrokerId(1));
            }
            if v >= 2 {
                out = out.with_cluster_id(Some(s("cluster-1")));
            }
            if (8..=10).contains(&v) {
                out = out.with_cluster_authorized_operations(BROKER_OPS);
            }
            ResponseKind::Metadata(out)
        },
        entries: |_, _, r| {
            let ResponseKind::Metadata(m) = r else {
                panic!("not metadata")
            };
            let mut out: Vec<Entry> = Vec::new();
            for t in &m.topics {
                let label = metadata_label(t);
                out.extend(ops_entry(&label, t.topic_authorized_operations));
                let content = t.clone().with_topic_authorized_operations(0);
                out.push((label, t.error_code, dbg(&content)));
            }
            out.extend(ops_entry("cluster", m.cluster_authorized_operations));
            if m.error_code != 0 {
                out.push(("*".into(), m.error_code, String::new()));
            }
            out
        },
        expect: |v, tag, m| {
            use Operation::*;
            let create = |n: &str| m.cluster(Create) || m.topic(Create, n);
            let mut codes: Vec<(String, i16)> = Vec::new();
            // A topic the client may describe, as the broker has it.
            let described = |n: &str, codes: &mut Vec<(String, i16)>| {
                codes.push((tl(n), 0));
                if v >= 8 {
                    codes.push((ops_label(&tl(n), m.ops_bits(R::Topic(n))), 0));
                }
            };
            if (8..=10).contains(&v) {
                codes.push((ops_label("cluster", m.ops_bits(R::Cluster)), 0));
            }
            match tag {
                "named" | "noauto" => {
                    let auto = v < 4 || tag == "named";
                    // v0-3 always auto-create and have no flag to clear:
                    // Custos refuses them when any named topic may not be
                    // described or created by the principal.
                    let describable: Vec<&str> = METADATA_NAMED
                        .iter()
                        .copied()
                        .filter(|n| m.topic(Describe, n))
                        .collect();
                    if v < 4 && (describable.is_empty() || describable.iter().any(|n| !create(n))) {
                        return Outcome::Close;
                    }
                    // Topics the principal may not describe are cut out of an
                    // auto-creating request (unless all are), so the broker
                    // cannot create them.
                    let forwarded: Vec<String> = if auto && !describable.is_empty() {
                        describable.iter().map(|n| tl(n)).collect()
                    } else {
                        METADATA_NAMED.iter().map(|n| tl(n)).collect()
                    };
                    for n in METADATA_NAMED {
                        let code = if !m.topic(Describe, n) {
                            TOPIC_AUTHORIZATION_FAILED
                        } else if EXISTING.contains(&n) {
                            described(n, &mut codes);
                            continue;
                        } else if !auto {
                            UNKNOWN_TOPIC_OR_PARTITION
                        } else if create(n) {
                            LEADER_NOT_AVAILABLE
                        } else {
                            TOPIC_AUTHORIZATION_FAILED
                        };
                        codes.push((tl(n), code));
                    }
                    Outcome::Answer {
                        codes,
                        fwd: Fwd::Exactly(forwarded),
                    }
                }
                "all" => {
                    for n in EXISTING {
                        if m.topic(Describe, n) {
                            described(n, &mut codes);
                        }
                    }
                    mask(codes)
                }
                "ids" => {
                    for n in ["ok-1", "no-1"] {
                        if m.topic(Describe, n) {
                            described(n, &mut codes);
                        } else {
                            codes.push((tl(n), TOPIC_AUTHORIZATION_FAILED));
                        }
                    }
                    for n in ["ok-3", "no-3"] {
                        if m.topic(Describe, n) {
                            described(n, &mut codes);
                        } else {
                            // Named by id, denied: Kafka answers with the id
                            // and a null name.
                            codes.push((
                                format!("id:{}", topic_number(n)),
                                TOPIC_AUTHORIZATION_FAILED,
                            ));
                        }
                    }
                    mask(codes)
                }
                other => panic!("metadata tag {other}"),
            }
        },
        check_forwarded: Some(|v, m, r| {
            // The broker creates a missing topic on Custos's authority only
            // if Kafka would for this principal: Describe and Create on it.
            use Operation::*;
            let RequestKind::Metadata(req) = r else {
                panic!("not metadata")
            };
            if !metadata_auto_create(v, req) {
                return Ok(());
            }
            for t in req.topics.iter().flatten() {
                let Some(n) = &t.name else { continue };
                let n = n.0.as_str();
                let may = m.topic(Describe, n) && (m.cluster(Create) || m.topic(Create, n));
                if !EXISTING.contains(&n) && !may {
                    return Err(format!(
                        "the forwarded request lets the broker auto-create {n}, which the \
                         principal may not create"
                    ));
                }
            }
            Ok(())
        }),
    }
}

// ---- OffsetCommit ----

/// OffsetCommit v10 names topics by id (KIP-848); the crate's request
/// stops at v9. `crafted`: one topic, whose id is [`CRAFTED_ID`].
fn offset_commit_v10(group: &str, crafted: bool) -> Vec<u8> {
    let mut w = W::default().str(group).i32(3).str("m-1").null();
    if crafted {
        w = w
            .len(1)
            .raw(&CRAFTED_ID)
            .len(1)
            .i32(0)
            .i64(40)
            .i32(2)
            .str("meta");
        return w.tags().tags().tags().0;
    }
    w = w.len(TOPICS.len());
    for (n, ps) in TOPICS {
        w = w.raw(&id_bytes(topic_number(n))).len(ps.len());
        for p in ps {
            w = w.i32(*p).i64(40).i32(2).str("meta").tags();
        }
        w = w.tags();
    }
    w.tags().0
}

fn offset_commit_request(v: i16, group: &str) -> Vec<u8> {
    if v >= 10 {
        return offset_commit_v10(group, false);
    }
    let mut r = OffsetCommitRequest::default()
        .with_group_id(gid(group))
        .with_generation_id_or_member_epoch(3)
        .with_member_id(s("m-1"))
        .with_topics(
            TOPICS
                .iter()
                .map(|(n, ps)| {
                    offset_commit_request::OffsetCommitRequestTopic::default()
                        .with_name(tn(n))
                        .with_partitions(
                            ps.iter()
                                .map(|p| {
                                    let mut x =
                                        offset_commit_request::OffsetCommitRequestPartition::default()
                                            .with_partition_index(*p)
                                            .with_committed_offset(40 + i64::from(*p))
                                            .with_committed_metadata(Some(s("meta")));
                                    if v >= 6 {
                                        x = x.with_committed_leader_epoch(2);
                                    }
                                    x
                                })
                                .collect(),
                        )
                })
                .collect(),
        );
    if v <= 4 {
        r = r.with_retention_time_ms(-1);
    }
    enc(v, RequestKind::OffsetCommit(r))
}

fn offset_commit() -> Api {
    Api {
        key: ApiKey::OffsetCommit,
        requests: |v| {
            let mut out = vec![
                ("ok-g1", offset_commit_request(v, "ok-g1")),
                ("no-g1", offset_commit_request(v, "no-g1")),
            ];
            if v >= 10 {
                out.push(("ok-g1/crafted-id", offset_commit_v10("ok-g1", true)));
            }
            out
        },
        named: |_, r| {
            let RequestKind::OffsetCommit(o) = r else {
                panic!("not offset commit")
            };
            o.topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|x| (tp(&t.name.0, x.partition_index), dbg(x)))
                })
                .collect()
        },
        answer: |_, _, r| {
            let RequestKind::OffsetCommit(o) = r else {
                panic!("not offset commit")
            };
            ResponseKind::OffsetCommit(
                OffsetCommitResponse::default().with_topics(
                    o.topics
                        .iter()
                        .map(|t| {
                            offset_commit_response::OffsetCommitResponseTopic::default()
                                .with_name(t.name.clone())
                                .with_partitions(
                                    t.partitions
                                        .iter()
                                        .map(|x| {
                                            offset_commit_response::OffsetCommitResponsePartition::default()
                                                .with_partition_index(x.partition_index)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::OffsetCommit(o) = r else {
                panic!("not offset commit")
            };
            o.topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|x| (tp(&t.name.0, x.partition_index), x.error_code, dbg(x)))
                })
                .collect()
        },
        expect: |v, tag, m| {
            use Operation::*;
            if v >= 10 {
                // Topic ids: Custos cannot authorize them by name.
                return Outcome::Close;
            }
            if !m.group(Read, tag) {
                return Outcome::Answer {
                    codes: tp_codes(|_| false, GROUP_AUTHORIZATION_FAILED),
                    fwd: Fwd::Nothing,
                };
            }
            split(
                tp_codes(|n| m.topic(Read, n), TOPIC_AUTHORIZATION_FAILED),
                tp_labels(|n| m.topic(Read, n)),
                tp_labels(|_| true).len(),
            )
        },
        check_forwarded: None,
    }
}

// ---- OffsetFetch ----

/// The topics a group has committed offsets for (the broker's "all topics").
const COMMITTED: [TopicParts; 3] = [("ok-1", &[0, 1]), ("no-1", &[0]), ("ok-3", &[2])];

/// OffsetFetch v8+ groups: (group, asks for named topics?).
const FETCH_GROUPS: [(&str, bool); 3] = [("ok-g1", true), ("no-g1", true), ("ok-g2", false)];

fn offset_fetch_request(v: i16, tag: &str) -> Vec<u8> {
    if tag == "crafted-id" {
        // One group, one topic, whose id is [`CRAFTED_ID`].
        return W::default()
            .len(1)
            .str("ok-g1")
            .null()
            .i32(-1)
            .len(1)
            .raw(&CRAFTED_ID)
            .len(1)
            .i32(0)
            .tags()
            .tags()
            .i8(0)
            .tags()
            .0;
    }
    if v >= 10 {
        // v10 names topics by id (KIP-848); the crate's request stops at v9.
        let mut w = W::default().len(FETCH_GROUPS.len());
        for (g, named) in FETCH_GROUPS {
            w = w.str(g).null().i32(-1);
            if named {
                w = w.len(TOPICS.len());
                for (n, ps) in TOPICS {
                    w = w.raw(&id_bytes(topic_number(n))).len(ps.len());
                    for p in ps {
                        w = w.i32(*p);
                    }
                    w = w.tags();
                }
            } else {
                w = w.null();
            }
            w = w.tags();
        }
        return w.i8(0).tags().0;
    }
    if v >= 8 {
        let groups = FETCH_GROUPS
            .iter()
            .map(|(g, named)| {
                offset_fetch_request::OffsetFetchRequestGroup::default()
                    .with_group_id(gid(g))
                    .with_topics(named.then(|| {
                        TOPICS
                            .iter()
                            .map(|(n, ps)| {
                                offset_fetch_request::OffsetFetchRequestTopics::default()
                                    .with_name(tn(n))
                                    .with_partition_indexes(ps.to_vec())
                            })
                            .collect()
                    }))
            })
            .collect();
        return enc(
            v,
            RequestKind::OffsetFetch(OffsetFetchRequest::default().with_groups(groups)),
        );
    }
    let (group, what) = tag.split_once('/').expect("group/what");
    let topics = (what == "named").then(|| {
        TOPICS
            .iter()
            .map(|(n, ps)| {
                offset_fetch_request::OffsetFetchRequestTopic::default()
                    .with_name(tn(n))
                    .with_partition_indexes(ps.to_vec())
            })
            .collect()
    });
    enc(
        v,
        RequestKind::OffsetFetch(
            OffsetFetchRequest::default()
                .with_group_id(gid(group))
                .with_topics(topics),
        ),
    )
}

/// The broker's committed offsets for the named topics or for all.
fn committed(named: Option<Vec<(String, Vec<i32>)>>) -> Vec<(String, Vec<i32>)> {
    named.unwrap_or_else(|| {
        COMMITTED
            .iter()
            .map(|(n, ps)| (n.to_string(), ps.to_vec()))
            .collect()
    })
}

fn offset_fetch() -> Api {
    Api {
        key: ApiKey::OffsetFetch,
        requests: |v| {
            let tags: &[&'static str] = if v >= 10 {
                &["groups", "crafted-id"]
            } else if v >= 8 {
                &["groups"]
            } else if v == 1 {
                // v1 cannot ask for all topics (null arrives in v2).
                &["ok-g1/named", "no-g1/named"]
            } else {
                &["ok-g1/named", "no-g1/named", "ok-g1/all", "no-g1/all"]
            };
            tags.iter()
                .map(|t| (*t, offset_fetch_request(v, t)))
                .collect()
        },
        named: |_, r| {
            let RequestKind::OffsetFetch(o) = r else {
                panic!("not offset fetch")
            };
            let mut out: Vec<(String, String)> = o
                .topics
                .iter()
                .flatten()
                .flat_map(|t| {
                    t.partition_indexes
                        .iter()
                        .map(|p| (tp(&t.name.0, *p), dbg(t)))
                })
                .collect();
            for g in &o.groups {
                out.push((gl(&g.group_id.0), dbg(g)));
            }
            out
        },
        answer: |v, _, r| {
            let RequestKind::OffsetFetch(o) = r else {
                panic!("not offset fetch")
            };
            if v >= 8 {
                return ResponseKind::OffsetFetch(
                    OffsetFetchResponse::default().with_groups(
                        o.groups
                            .iter()
                            .map(|g| {
                                let named = g.topics.as_ref().map(|ts| {
                                    ts.iter()
                                        .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                                        .collect()
                                });
                                offset_fetch_response::OffsetFetchResponseGroup::default()
                                    .with_group_id(g.group_id.clone())
                                    .with_topics(
                                        committed(named)
                                            .iter()
                                            .map(|(n, ps)| {
                                                offset_fetch_response::OffsetFetchResponseTopics::default()
                                                    .with_name(tn(n))
                                                    .with_partitions(
                                                        ps.iter()
                                                            .map(|p| {
                                                                offset_fetch_response::OffsetFetchResponsePartitions::default()
                                                                    .with_partition_index(*p)
                                                                    .with_committed_offset(100 + i64::from(*p))
                                                                    .with_committed_leader_epoch(3)
                                                                    .with_metadata(Some(s("m")))
                                                            })
                                                            .collect(),
                                                    )
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    ),
                );
            }
            let named = o.topics.as_ref().map(|ts| {
                ts.iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                    .collect()
            });
            ResponseKind::OffsetFetch(
                OffsetFetchResponse::default().with_topics(
                    committed(named)
                        .iter()
                        .map(|(n, ps)| {
                            offset_fetch_response::OffsetFetchResponseTopic::default()
                                .with_name(tn(n))
                                .with_partitions(
                                    ps.iter()
                                        .map(|p| {
                                            let mut x =
                                                offset_fetch_response::OffsetFetchResponsePartition::default()
                                                    .with_partition_index(*p)
                                                    .with_committed_offset(100 + i64::from(*p))
                                                    .with_metadata(Some(s("m")));
                                            if v >= 5 {
                                                x = x.with_committed_leader_epoch(3);
                                            }
                                            x
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::OffsetFetch(o) = r else {
                panic!("not offset fetch")
            };
            let mut out: Vec<Entry> = o
                .topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|x| (tp(&t.name.0, x.partition_index), x.error_code, dbg(x)))
                })
                .collect();
            for g in &o.groups {
                let gname = g.group_id.0.to_string();
                out.push((gl(&gname), g.error_code, String::new()));
                for t in &g.topics {
                    for x in &t.partitions {
                        out.push((
                            format!("{gname}/{}", tp(&t.name.0, x.partition_index)),
                            x.error_code,
                            dbg(x),
                        ));
                    }
                }
            }
            if o.error_code != 0 {
                out.push(("*".into(), o.error_code, String::new()));
            }
            out
        },
        expect: |v, tag, m| {
            use Operation::*;
            if v >= 10 {
                // Topic ids: Custos cannot authorize them by name.
                return Outcome::Close;
            }
            // One group's topics: named ones get an error entry, the
            // broker's "all topics" list is filtered.
            let topics = |named: bool, prefix: &str| -> Vec<(String, i16)> {
                if named {
                    tp_codes(|n| m.topic(Describe, n), TOPIC_AUTHORIZATION_FAILED)
                        .into_iter()
                        .map(|(l, c)| (format!("{prefix}{l}"), c))
                        .collect()
                } else {
                    COMMITTED
                        .iter()
                        .filter(|(n, _)| m.topic(Describe, n))
                        .flat_map(|(n, ps)| {
                            ps.iter()
                                .map(move |p| (format!("{prefix}{}", tp(n, *p)), 0))
                        })
                        .collect()
                }
            };
            if v >= 8 {
                let mut codes = Vec::new();
                for (g, named) in FETCH_GROUPS {
                    if m.group(Describe, g) {
                        codes.push((gl(g), 0));
                        codes.extend(topics(named, &format!("{g}/")));
                    } else {
                        codes.push((gl(g), GROUP_AUTHORIZATION_FAILED));
                    }
                }
                return mask(codes);
            }
            let (group, what) = tag.split_once('/').expect("group/what");
            if !m.group(Describe, group) {
                let codes = if v < 2 {
                    // No top-level error before v2: Kafka puts the group's
                    // error on every partition asked for.
                    tp_codes(|_| false, GROUP_AUTHORIZATION_FAILED)
                } else {
                    vec![("*".to_string(), GROUP_AUTHORIZATION_FAILED)]
                };
                return Outcome::Answer {
                    codes,
                    fwd: Fwd::Nothing,
                };
            }
            mask(topics(what == "named", ""))
        },
        check_forwarded: None,
    }
}

// ---- FindCoordinator ----

fn find_coordinator() -> Api {
    Api {
        key: ApiKey::FindCoordinator,
        requests: |v| {
            let single = |key: &str, ty: i8| {
                let mut r = FindCoordinatorRequest::default().with_key(s(key));
                if v >= 1 {
                    r = r.with_key_type(ty);
                }
                enc(v, RequestKind::FindCoordinator(r))
            };
            let batch = |keys: &[&str], ty: i8| {
                enc(
                    v,
                    RequestKind::FindCoordinator(
                        FindCoordinatorRequest::default()
                            .with_key_type(ty)
                            .with_coordinator_keys(keys.iter().map(|k| s(k)).collect()),
                    ),
                )
            };
            match v {
                0 => vec![
                    ("g:ok-g1", single("ok-g1", 0)),
                    ("g:no-g1", single("no-g1", 0)),
                ],
                1..=3 => vec![
                    ("g:ok-g1", single("ok-g1", 0)),
                    ("g:no-g1", single("no-g1", 0)),
                    ("x:ok-x1", single("ok-x1", 1)),
                    ("x:no-x1", single("no-x1", 1)),
                ],
                _ => vec![("g", batch(&GROUPS, 0)), ("x", batch(&TXNS, 1))],
            }
        },
        named: |_, r| {
            let RequestKind::FindCoordinator(f) = r else {
                panic!("not find coordinator")
            };
            let prefix = if f.key_type == 1 { "x" } else { "g" };
            let mut keys: Vec<&StrBytes> = f.coordinator_keys.iter().collect();
            if keys.is_empty() {
                keys.push(&f.key);
            }
            keys.iter()
                .map(|k| (format!("{prefix}:{}", k.as_str()), String::new()))
                .collect()
        },
        answer: |v, _, r| {
            let RequestKind::FindCoordinator(f) = r else {
                panic!("not find coordinator")
            };
            if v <= 3 {
                return ResponseKind::FindCoordinator(
                    FindCoordinatorResponse::default()
                        .with_node_id(BrokerId(1))
                        .with_host(s("broker-1"))
                        .with_port(9092)
                        .with_error_message(None),
                );
            }
            ResponseKind::FindCoordinator(
                FindCoordinatorResponse::default().with_coordinators(
                    f.coordinator_keys
                        .iter()
                        .map(|k| {
                            find_coordinator_response::Coordinator::default()
                                .with_key(k.clone())
                                .with_node_id(BrokerId(1))
                                .with_host(s("broker-1"))
                                .with_port(9092)
                                .with_error_message(None)
                        })
                        .collect(),
                ),
            )
        },
        entries: |v, tag, r| {
            let ResponseKind::FindCoordinator(f) = r else {
                panic!("not find coordinator")
            };
            if v <= 3 {
                return single(tag.to_string(), f.error_code, f);
            }
            f.coordinators
                .iter()
                .map(|c| (format!("{tag}:{}", c.key.as_str()), c.error_code, dbg(c)))
                .collect()
        },
        expect: |v, tag, m| {
            let code = |label: &str| {
                let (kind, key) = label.split_once(':').expect("kind:key");
                if kind == "x" {
                    if m.txn(Operation::Describe, key) {
                        0
                    } else {
                        TRANSACTIONAL_ID_AUTHORIZATION_FAILED
                    }
                } else if m.group(Operation::Describe, key) {
                    0
                } else {
                    GROUP_AUTHORIZATION_FAILED
                }
            };
            if v <= 3 {
                return whole(tag, code(tag));
            }
            let keys: &[&str] = if tag == "x" { &TXNS } else { &GROUPS };
            mask(
                keys.iter()
                    .map(|k| {
                        let label = format!("{tag}:{k}");
                        let c = code(&label);
                        (label, c)
                    })
                    .collect(),
            )
        },
        check_forwarded: None,
    }
}

// ---- JoinGroup, Heartbeat, LeaveGroup, SyncGroup, ConsumerGroupHeartbeat ----

fn group_member_request(api: ApiKey, v: i16, group: &str) -> RequestKind {
    let assignment = Bytes::from_static(b"\x00\x03assignment");
    match api {
        ApiKey::JoinGroup => {
            let mut r = JoinGroupRequest::default()
                .with_group_id(gid(group))
                .with_session_timeout_ms(45_000)
                .with_member_id(s("m-1"))
                .with_protocol_type(s("consumer"))
                .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
                )
                .with_name(s("range"))
                .with_metadata(Bytes::from_static(b"\x00\x03subscription"))]);
            if v >= 1 {
                r = r.with_rebalance_timeout_ms(300_000);
            }
            RequestKind::JoinGroup(r)
        }
        ApiKey::Heartbeat => RequestKind::Heartbeat(
            HeartbeatRequest::default()
                .with_group_id(gid(group))
                .with_generation_id(5)
                .with_member_id(s("m-1")),
        ),
        ApiKey::LeaveGroup => {
            let r = LeaveGroupRequest::default().with_group_id(gid(group));
            RequestKind::LeaveGroup(if v >= 3 {
                r.with_members(vec![
                    leave_group_request::MemberIdentity::default().with_member_id(s("m-1"))
                ])
            } else {
                r.with_member_id(s("m-1"))
            })
        }
        ApiKey::SyncGroup => {
            let mut r = SyncGroupRequest::default()
                .with_group_id(gid(group))
                .with_generation_id(5)
                .with_member_id(s("m-1"))
                .with_assignments(vec![
                    sync_group_request::SyncGroupRequestAssignment::default()
                        .with_member_id(s("m-1"))
                        .with_assignment(assignment),
                ]);
            if v >= 5 {
                r = r
                    .with_protocol_type(Some(s("consumer")))
                    .with_protocol_name(Some(s("range")));
            }
            RequestKind::SyncGroup(r)
        }
        ApiKey::ConsumerGroupHeartbeat => RequestKind::ConsumerGroupHeartbeat(
            ConsumerGroupHeartbeatRequest::default()
                .with_group_id(gid(group))
                .with_member_id(s("m-1"))
                .with_member_epoch(0)
                .with_rebalance_timeout_ms(300_000)
                .with_subscribed_topic_names(Some(vec![tn("ok-1"), tn("no-1")]))
                .with_topic_partitions(Some(vec![])),
        ),
        other => panic!("not a group member api: {other:?}"),
    }
}

fn group_member_answer(api: ApiKey, v: i16) -> ResponseKind {
    match api {
        ApiKey::JoinGroup => {
            let mut r = JoinGroupResponse::default()
                .with_generation_id(5)
                .with_protocol_name(Some(s("range")))
                .with_leader(s("m-1"))
                .with_member_id(s("m-1"))
                .with_members(vec![join_group_response::JoinGroupResponseMember::default(
                )
                .with_member_id(s("m-1"))
                .with_metadata(Bytes::from_static(b"\x00\x03subscription"))]);
            if v >= 7 {
                r = r.with_protocol_type(Some(s("consumer")));
            }
            ResponseKind::JoinGroup(r)
        }
        ApiKey::Heartbeat => ResponseKind::Heartbeat(HeartbeatResponse::default()),
        ApiKey::LeaveGroup => {
            let mut r = LeaveGroupResponse::default();
            if v >= 3 {
                r = r.with_members(vec![
                    leave_group_response::MemberResponse::default().with_member_id(s("m-1"))
                ]);
            }
            ResponseKind::LeaveGroup(r)
        }
        ApiKey::SyncGroup => {
            let mut r = SyncGroupResponse::default()
                .with_assignment(Bytes::from_static(b"\x00\x03assignment"));
            if v >= 5 {
                r = r
                    .with_protocol_type(Some(s("consumer")))
                    .with_protocol_name(Some(s("range")));
            }
            ResponseKind::SyncGroup(r)
        }
        ApiKey::ConsumerGroupHeartbeat => ResponseKind::ConsumerGroupHeartbeat(
            ConsumerGroupHeartbeatResponse::default()
                .with_member_id(Some(s("m-1")))
                .with_member_epoch(1)
                .with_heartbeat_interval_ms(5000),
        ),
        other => panic!("not a group member api: {other:?}"),
    }
}

fn group_member_code(r: &ResponseKind) -> i16 {
    match r {
        ResponseKind::JoinGroup(x) => x.error_code,
        ResponseKind::Heartbeat(x) => x.error_code,
        ResponseKind::LeaveGroup(x) => x.error_code,
        ResponseKind::SyncGroup(x) => x.error_code,
        ResponseKind::ConsumerGroupHeartbeat(x) => x.error_code,
        other => panic!("not a group member answer: {other:?}"),
    }
}

fn group_member(key: ApiKey) -> Api {
    // The function pointers cannot capture `key`; each api gets its own.
    macro_rules! member {
        ($k:expr) => {
            Api {
                key: $k,
                requests: |v| {
                    one_each(v, ["ok-g1", "no-g1"], |v, g| group_member_request($k, v, g))
                },
                named: |_, _| Vec::new(),
                answer: |v, _, _| group_member_answer($k, v),
                entries: |_, tag, r| single(gl(tag), group_member_code(r), r),
                expect: |_, tag, m| {
                    whole(
                        &gl(tag),
                        if m.group(Operation::Read, tag) {
                            0
                        } else {
                            GROUP_AUTHORIZATION_FAILED
                        },
                    )
                },
                check_forwarded: None,
            }
        };
    }
    match key {
        ApiKey::JoinGroup => member!(ApiKey::JoinGroup),
        ApiKey::Heartbeat => member!(ApiKey::Heartbeat),
        ApiKey::LeaveGroup => member!(ApiKey::LeaveGroup),
        ApiKey::SyncGroup => member!(ApiKey::SyncGroup),
        ApiKey::ConsumerGroupHeartbeat => member!(ApiKey::ConsumerGroupHeartbeat),
        other => panic!("not a group member api: {other:?}"),
    }
}

// ---- DescribeGroups, ConsumerGroupDescribe ----

fn describe_groups() -> Api {
    Api {
        key: ApiKey::DescribeGroups,
        requests: |v| {
            let mut r = DescribeGroupsRequest::default()
                .with_groups(GROUPS.iter().map(|g| gid(g)).collect());
            if v >= 3 {
                r = r.with_include_authorized_operations(true);
            }
            vec![("groups", enc(v, RequestKind::DescribeGroups(r)))]
        },
        named: |_, r| {
            let RequestKind::DescribeGroups(d) = r else {
                panic!("not describe groups")
            };
            d.groups.iter().map(|g| (gl(&g.0), String::new())).collect()
        },
        answer: |v, _, r| {
            let RequestKind::DescribeGroups(d) = r else {
                panic!("not describe groups")
            };
            ResponseKind::DescribeGroups(
                DescribeGroupsResponse::default().with_groups(
                    d.groups
                        .iter()
                        .map(|g| {
                            let mut x = describe_groups_response::DescribedGroup::default()
                                .with_group_id(g.clone())
                                .with_group_state(s("Stable"))
                                .with_protocol_type(s("consumer"))
                                .with_protocol_data(s("range"))
                                .with_members(vec![
                                    describe_groups_response::DescribedGroupMember::default()
                                        .with_member_id(s("m-1"))
                                        .with_client_id(s("client-1"))
                                        .with_client_host(s("/10.0.0.9"))
                                        .with_member_metadata(Bytes::from_static(b"meta"))
                                        .with_member_assignment(Bytes::from_static(b"assign")),
                                ]);
                            if v >= 3 {
                                x = x.with_authorized_operations(BROKER_OPS);
                            }
                            x
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::DescribeGroups(d) = r else {
                panic!("not describe groups")
            };
            let mut out = Vec::new();
            for g in &d.groups {
                let label = gl(&g.group_id.0);
                out.extend(ops_entry(&label, g.authorized_operations));
                let content = g.clone().with_authorized_operations(0);
                out.push((label, g.error_code, dbg(&content)));
            }
            out
        },
        expect: |v, _, m| groups_masked(m, v >= 3),
        check_forwarded: None,
    }
}

/// [`GROUPS`], each 0 or GROUP_AUTHORIZATION_FAILED, request untouched;
/// described groups carry the principal's authorized operations if asked.
fn groups_masked(m: &Model, with_ops: bool) -> Outcome {
    let mut codes = Vec::new();
    for g in GROUPS {
        if !m.group(Operation::Describe, g) {
            codes.push((gl(g), GROUP_AUTHORIZATION_FAILED));
            continue;
        }
        codes.push((gl(g), 0));
        if with_ops {
            codes.push((ops_label(&gl(g), m.ops_bits(R::Group(g))), 0));
        }
    }
    mask(codes)
}

fn consumer_group_describe() -> Api {
    Api {
        key: ApiKey::ConsumerGroupDescribe,
        requests: |v| {
            let r = ConsumerGroupDescribeRequest::default()
                .with_group_ids(GROUPS.iter().map(|g| gid(g)).collect())
                .with_include_authorized_operations(true);
            vec![("groups", enc(v, RequestKind::ConsumerGroupDescribe(r)))]
        },
        named: |_, r| {
            let RequestKind::ConsumerGroupDescribe(d) = r else {
                panic!("not consumer group describe")
            };
            d.group_ids
                .iter()
                .map(|g| (gl(&g.0), String::new()))
                .collect()
        },
        answer: |_, _, r| {
            let RequestKind::ConsumerGroupDescribe(d) = r else {
                panic!("not consumer group describe")
            };
            ResponseKind::ConsumerGroupDescribe(
                ConsumerGroupDescribeResponse::default().with_groups(
                    d.group_ids
                        .iter()
                        .map(|g| {
                            consumer_group_describe_response::DescribedGroup::default()
                                .with_group_id(g.clone())
                                .with_group_state(s("Stable"))
                                .with_group_epoch(3)
                                .with_assignment_epoch(3)
                                .with_assignor_name(s("uniform"))
                                .with_members(vec![
                                    consumer_group_describe_response::Member::default()
                                        .with_member_id(s("m-1"))
                                        .with_member_epoch(3)
                                        .with_client_id(s("client-1"))
                                        .with_client_host(s("/10.0.0.9"))
                                        .with_subscribed_topic_names(vec![tn("ok-1")]),
                                ])
                                .with_authorized_operations(BROKER_OPS)
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::ConsumerGroupDescribe(d) = r else {
                panic!("not consumer group describe")
            };
            let mut out = Vec::new();
            for g in &d.groups {
                let label = gl(&g.group_id.0);
                out.extend(ops_entry(&label, g.authorized_operations));
                let content = g.clone().with_authorized_operations(0);
                out.push((label, g.error_code, dbg(&content)));
            }
            out
        },
        expect: |_, _, m| groups_masked(m, true),
        check_forwarded: None,
    }
}

// ---- ListGroups ----

fn list_groups() -> Api {
    Api {
        key: ApiKey::ListGroups,
        requests: |v| {
            let mut r = ListGroupsRequest::default();
            if v >= 4 {
                r = r.with_states_filter(vec![s("Stable")]);
            }
            vec![("list", enc(v, RequestKind::ListGroups(r)))]
        },
        named: no_names,
        answer: |v, _, _| {
            ResponseKind::ListGroups(
                ListGroupsResponse::default().with_groups(
                    GROUPS
                        .iter()
                        .map(|g| {
                            let mut x = list_groups_response::ListedGroup::default()
                                .with_group_id(gid(g))
                                .with_protocol_type(s("consumer"));
                            if v >= 4 {
                                x = x.with_group_state(s("Stable"));
                            }
                            if v >= 5 {
                                x = x.with_group_type(s("classic"));
                            }
                            x
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::ListGroups(l) = r else {
                panic!("not list groups")
            };
            let mut out: Vec<Entry> = l
                .groups
                .iter()
                .map(|g| (gl(&g.group_id.0), 0, dbg(g)))
                .collect();
            if l.error_code != 0 {
                out.push(("*".into(), l.error_code, String::new()));
            }
            out
        },
        expect: |_, _, m| {
            use Operation::*;
            mask(
                GROUPS
                    .iter()
                    .filter(|g| m.cluster(Describe) || m.group(Describe, g))
                    .map(|g| (gl(g), 0))
                    .collect(),
            )
        },
        check_forwarded: None,
    }
}

// ---- CreateTopics ----

fn create_topics() -> Api {
    Api {
        key: ApiKey::CreateTopics,
        requests: |v| {
            let r = CreateTopicsRequest::default()
                .with_timeout_ms(30_000)
                .with_topics(
                    TOPICS
                        .iter()
                        .map(|(n, _)| {
                            create_topics_request::CreatableTopic::default()
                                .with_name(tn(n))
                                .with_num_partitions(3)
                                .with_replication_factor(1)
                                .with_configs(vec![
                                    create_topics_request::CreatableTopicConfig::default()
                                        .with_name(s("retention.ms"))
                                        .with_value(Some(s("1000"))),
                                ])
                        })
                        .collect(),
                );
            vec![("create", enc(v, RequestKind::CreateTopics(r)))]
        },
        named: |_, r| {
            let RequestKind::CreateTopics(c) = r else {
                panic!("not create topics")
            };
            c.topics.iter().map(|t| (tl(&t.name.0), dbg(t))).collect()
        },
        answer: |v, _, r| {
            let RequestKind::CreateTopics(c) = r else {
                panic!("not create topics")
            };
            ResponseKind::CreateTopics(
                CreateTopicsResponse::default().with_topics(
                    c.topics
                        .iter()
                        .map(|t| {
                            let mut x = create_topics_response::CreatableTopicResult::default()
                                .with_name(t.name.clone())
                                .with_error_message(None);
                            if v >= 5 {
                                x = x
                                    .with_num_partitions(3)
                                    .with_replication_factor(1)
                                    .with_configs(Some(vec![
                                        create_topics_response::CreatableTopicConfigs::default()
                                            .with_name(s("retention.ms"))
                                            .with_value(Some(s("1000")))
                                            .with_config_source(1),
                                    ]));
                            }
                            if v >= 7 {
                                x = x.with_topic_id(uuid!(topic_number(&t.name.0)));
                            }
                            x
                        })
                        .collect(),
                ),
            )
        },
        entries: |v, _, r| {
            let ResponseKind::CreateTopics(c) = r else {
                panic!("not create topics")
            };
            let mut out = Vec::new();
            for t in &c.topics {
                let main = format!("{:?} {:?}", t.topic_id, t.error_message);
                out.push((tl(&t.name.0), t.error_code, main));
                if v >= 5 && t.error_code == 0 {
                    let configs = format!(
                        "{:?} {} {}",
                        t.configs, t.num_partitions, t.replication_factor
                    );
                    out.push((
                        format!("{}/configs", tl(&t.name.0)),
                        t.topic_config_error_code,
                        configs,
                    ));
                }
            }
            out
        },
        expect: |v, _, m| {
            use Operation::*;
            let create = |n: &str| m.cluster(Create) || m.topic(Create, n);
            let mut codes = Vec::new();
            for (n, _) in TOPICS {
                if !create(n) {
                    codes.push((tl(n), TOPIC_AUTHORIZATION_FAILED));
                    continue;
                }
                codes.push((tl(n), 0));
                if v >= 5 {
                    let code = if m.topic(DescribeConfigs, n) {
                        0
                    } else {
                        TOPIC_AUTHORIZATION_FAILED
                    };
                    codes.push((format!("{}/configs", tl(n)), code));
                }
            }
            let allowed: Vec<String> = TOPICS
                .iter()
                .filter(|(n, _)| create(n))
                .map(|(n, _)| tl(n))
                .collect();
            split(codes, allowed, TOPICS.len())
        },
        check_forwarded: None,
    }
}

// ---- DeleteTopics ----

fn delete_topics() -> Api {
    Api {
        key: ApiKey::DeleteTopics,
        requests: |v| {
            let r = DeleteTopicsRequest::default()
                .with_timeout_ms(30_000)
                .with_topic_names(TOPICS.iter().map(|(n, _)| tn(n)).collect());
            vec![("delete", enc(v, RequestKind::DeleteTopics(r)))]
        },
        named: |_, r| {
            let RequestKind::DeleteTopics(d) = r else {
                panic!("not delete topics")
            };
            d.topic_names
                .iter()
                .map(|t| (tl(&t.0), String::new()))
                .collect()
        },
        answer: |v, _, r| {
            let RequestKind::DeleteTopics(d) = r else {
                panic!("not delete topics")
            };
            ResponseKind::DeleteTopics(
                DeleteTopicsResponse::default().with_responses(
                    d.topic_names
                        .iter()
                        .map(|t| {
                            let x = delete_topics_response::DeletableTopicResult::default()
                                .with_name(Some(t.clone()));
                            if v >= 5 {
                                x.with_error_message(None)
                            } else {
                                x
                            }
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::DeleteTopics(d) = r else {
                panic!("not delete topics")
            };
            d.responses
                .iter()
                .map(|t| {
                    let name = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
                    (tl(&name), t.error_code, dbg(t))
                })
                .collect()
        },
        expect: |_, _, m| {
            use Operation::*;
            let codes = TOPICS
                .iter()
                .map(|(n, _)| {
                    // Describe and Delete both needed (docs: either denied).
                    let code = if m.topic(Delete, n) && m.topic(Describe, n) {
                        0
                    } else {
                        TOPIC_AUTHORIZATION_FAILED
                    };
                    (tl(n), code)
                })
                .collect();
            let allowed: Vec<String> = TOPICS
                .iter()
                .filter(|(n, _)| m.topic(Delete, n) && m.topic(Describe, n))
                .map(|(n, _)| tl(n))
                .collect();
            split(codes, allowed, TOPICS.len())
        },
        check_forwarded: None,
    }
}

// ---- DeleteRecords ----

fn delete_records() -> Api {
    Api {
        key: ApiKey::DeleteRecords,
        requests: |v| {
            let r = DeleteRecordsRequest::default()
                .with_timeout_ms(30_000)
                .with_topics(
                    TOPICS
                        .iter()
                        .map(|(n, ps)| {
                            delete_records_request::DeleteRecordsTopic::default()
                                .with_name(tn(n))
                                .with_partitions(
                                    ps.iter()
                                        .map(|p| {
                                            delete_records_request::DeleteRecordsPartition::default(
                                            )
                                            .with_partition_index(*p)
                                            .with_offset(50)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                );
            vec![("delete", enc(v, RequestKind::DeleteRecords(r)))]
        },
        named: |_, r| {
            let RequestKind::DeleteRecords(d) = r else {
                panic!("not delete records")
            };
            d.topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|x| (tp(&t.name.0, x.partition_index), dbg(x)))
                })
                .collect()
        },
        answer: |_, _, r| {
            let RequestKind::DeleteRecords(d) = r else {
                panic!("not delete records")
            };
            ResponseKind::DeleteRecords(
                DeleteRecordsResponse::default().with_topics(
                    d.topics
                        .iter()
                        .map(|t| {
                            delete_records_response::DeleteRecordsTopicResult::default()
                                .with_name(t.name.clone())
                                .with_partitions(
                                    t.partitions
                                        .iter()
                                        .map(|x| {
                                            delete_records_response::DeleteRecordsPartitionResult::default()
                                                .with_partition_index(x.partition_index)
                                                .with_low_watermark(50)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::DeleteRecords(d) = r else {
                panic!("not delete records")
            };
            d.topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|x| (tp(&t.name.0, x.partition_index), x.error_code, dbg(x)))
                })
                .collect()
        },
        expect: |_, _, m| {
            use Operation::*;
            split(
                tp_codes(|n| m.topic(Delete, n), TOPIC_AUTHORIZATION_FAILED),
                tp_labels(|n| m.topic(Delete, n)),
                tp_labels(|_| true).len(),
            )
        },
        check_forwarded: None,
    }
}

// ---- CreatePartitions ----

fn create_partitions() -> Api {
    Api {
        key: ApiKey::CreatePartitions,
        requests: |v| {
            let r = CreatePartitionsRequest::default()
                .with_timeout_ms(30_000)
                .with_topics(
                    TOPICS
                        .iter()
                        .map(|(n, _)| {
                            create_partitions_request::CreatePartitionsTopic::default()
                                .with_name(tn(n))
                                .with_count(6)
                                .with_assignments(Some(vec![
                                    create_partitions_request::CreatePartitionsAssignment::default(
                                    )
                                    .with_broker_ids(vec![BrokerId(1), BrokerId(2)]),
                                ]))
                        })
                        .collect(),
                );
            vec![("create", enc(v, RequestKind::CreatePartitions(r)))]
        },
        named: |_, r| {
            let RequestKind::CreatePartitions(c) = r else {
                panic!("not create partitions")
            };
            c.topics.iter().map(|t| (tl(&t.name.0), dbg(t))).collect()
        },
        answer: |_, _, r| {
            let RequestKind::CreatePartitions(c) = r else {
                panic!("not create partitions")
            };
            ResponseKind::CreatePartitions(
                CreatePartitionsResponse::default().with_results(
                    c.topics
                        .iter()
                        .map(|t| {
                            create_partitions_response::CreatePartitionsTopicResult::default()
                                .with_name(t.name.clone())
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::CreatePartitions(c) = r else {
                panic!("not create partitions")
            };
            c.results
                .iter()
                .map(|t| (tl(&t.name.0), t.error_code, dbg(t)))
                .collect()
        },
        expect: |_, _, m| {
            use Operation::*;
            let codes = TOPICS
                .iter()
                .map(|(n, _)| {
                    let code = if m.topic(Alter, n) {
                        0
                    } else {
                        TOPIC_AUTHORIZATION_FAILED
                    };
                    (tl(n), code)
                })
                .collect();
            let allowed: Vec<String> = TOPICS
                .iter()
                .filter(|(n, _)| m.topic(Alter, n))
                .map(|(n, _)| tl(n))
                .collect();
            split(codes, allowed, TOPICS.len())
        },
        check_forwarded: None,
    }
}

// ---- InitProducerId ----

fn init_producer_id_request(v: i16, txn: Option<&str>) -> Vec<u8> {
    if v >= 6 {
        // v6 adds Enable2Pc and KeepPreparedTxn (KIP-939); the crate's
        // request stops at v5.
        let w = match txn {
            Some(x) => W::default().str(x),
            None => W::default().null(),
        };
        return w.i32(60_000).i64(-1).i16(-1).i8(0).i8(0).tags().0;
    }
    let mut r = InitProducerIdRequest::default()
        .with_transactional_id(txn.map(xid))
        .with_transaction_timeout_ms(60_000);
    if v >= 3 {
        r = r.with_producer_id(ProducerId(-1)).with_producer_epoch(-1);
    }
    enc(v, RequestKind::InitProducerId(r))
}

fn init_producer_id() -> Api {
    Api {
        key: ApiKey::InitProducerId,
        requests: |v| {
            vec![
                ("ok-x1", init_producer_id_request(v, Some("ok-x1"))),
                ("no-x1", init_producer_id_request(v, Some("no-x1"))),
                ("idempotent", init_producer_id_request(v, None)),
            ]
        },
        named: |_, r| {
            let RequestKind::InitProducerId(i) = r else {
                panic!("not init producer id")
            };
            vec![("txn".into(), dbg(&i.transactional_id))]
        },
        answer: |_, _, _| {
            ResponseKind::InitProducerId(
                InitProducerIdResponse::default()
                    .with_producer_id(ProducerId(4000))
                    .with_producer_epoch(0),
            )
        },
        entries: |_, tag, r| {
            let ResponseKind::InitProducerId(i) = r else {
                panic!("not init producer id")
            };
            single(tag.to_string(), i.error_code, i)
        },
        expect: |_, tag, m| {
            use Operation::*;
            let code = if tag == "idempotent" {
                if m.cluster(IdempotentWrite) || m.writes_some_topic() {
                    0
                } else {
                    CLUSTER_AUTHORIZATION_FAILED
                }
            } else if m.txn(Write, tag) {
                0
            } else {
                TRANSACTIONAL_ID_AUTHORIZATION_FAILED
            };
            whole(tag, code)
        },
        check_forwarded: None,
    }
}

// ---- OffsetForLeaderEpoch ----

fn offset_for_leader_epoch() -> Api {
    Api {
        key: ApiKey::OffsetForLeaderEpoch,
        requests: |v| {
            let mut r = OffsetForLeaderEpochRequest::default().with_topics(
                TOPICS
                    .iter()
                    .map(|(n, ps)| {
                        offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                            .with_topic(tn(n))
                            .with_partitions(
                                ps.iter()
                                    .map(|p| {
                                        offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                                            .with_partition(*p)
                                            .with_current_leader_epoch(5)
                                            .with_leader_epoch(4)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
            if v >= 3 {
                r = r.with_replica_id(BrokerId(-1));
            }
            vec![("epochs", enc(v, RequestKind::OffsetForLeaderEpoch(r)))]
        },
        named: |_, r| {
            let RequestKind::OffsetForLeaderEpoch(o) = r else {
                panic!("not offset for leader epoch")
            };
            o.topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|x| (tp(&t.topic.0, x.partition), dbg(x)))
                })
                .collect()
        },
        answer: |_, _, r| {
            let RequestKind::OffsetForLeaderEpoch(o) = r else {
                panic!("not offset for leader epoch")
            };
            ResponseKind::OffsetForLeaderEpoch(
                OffsetForLeaderEpochResponse::default().with_topics(
                    o.topics
                        .iter()
                        .map(|t| {
                            offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default()
                                .with_topic(t.topic.clone())
                                .with_partitions(
                                    t.partitions
                                        .iter()
                                        .map(|x| {
                                            offset_for_leader_epoch_response::EpochEndOffset::default()
                                                .with_partition(x.partition)
                                                .with_leader_epoch(4)
                                                .with_end_offset(900)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::OffsetForLeaderEpoch(o) = r else {
                panic!("not offset for leader epoch")
            };
            o.topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|x| (tp(&t.topic.0, x.partition), x.error_code, dbg(x)))
                })
                .collect()
        },
        expect: |_, _, m| {
            mask(tp_codes(
                |n| m.topic(Operation::Describe, n),
                TOPIC_AUTHORIZATION_FAILED,
            ))
        },
        check_forwarded: None,
    }
}

// ---- AddPartitionsToTxn ----

fn add_partitions_to_txn() -> Api {
    Api {
        key: ApiKey::AddPartitionsToTxn,
        requests: |v| {
            one_each(v, ["ok-x1", "no-x1"], |_, x| {
                RequestKind::AddPartitionsToTxn(
                    AddPartitionsToTxnRequest::default()
                        .with_v3_and_below_transactional_id(xid(x))
                        .with_v3_and_below_producer_id(ProducerId(7))
                        .with_v3_and_below_producer_epoch(1)
                        .with_v3_and_below_topics(
                            TOPICS
                                .iter()
                                .map(|(n, ps)| {
                                    add_partitions_to_txn_request::AddPartitionsToTxnTopic::default(
                                    )
                                    .with_name(tn(n))
                                    .with_partitions(ps.to_vec())
                                })
                                .collect(),
                        ),
                )
            })
        },
        named: |_, r| {
            let RequestKind::AddPartitionsToTxn(a) = r else {
                panic!("not add partitions to txn")
            };
            a.v3_and_below_topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|p| (tp(&t.name.0, *p), String::new()))
                })
                .collect()
        },
        answer: |_, _, r| {
            let RequestKind::AddPartitionsToTxn(a) = r else {
                panic!("not add partitions to txn")
            };
            ResponseKind::AddPartitionsToTxn(
                AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(
                    a.v3_and_below_topics
                        .iter()
                        .map(|t| {
                            add_partitions_to_txn_response::AddPartitionsToTxnTopicResult::default()
                                .with_name(t.name.clone())
                                .with_results_by_partition(
                                    t.partitions
                                        .iter()
                                        .map(|p| {
                                            add_partitions_to_txn_response::AddPartitionsToTxnPartitionResult::default()
                                                .with_partition_index(*p)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::AddPartitionsToTxn(a) = r else {
                panic!("not add partitions to txn")
            };
            a.results_by_topic_v3_and_below
                .iter()
                .flat_map(|t| {
                    t.results_by_partition.iter().map(|x| {
                        (
                            tp(&t.name.0, x.partition_index),
                            x.partition_error_code,
                            dbg(x),
                        )
                    })
                })
                .collect()
        },
        expect: |_, tag, m| {
            use Operation::*;
            let codes = if !m.txn(Write, tag) {
                tp_codes(|_| false, TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
            } else if TOPICS.iter().all(|(n, _)| m.topic(Write, n)) {
                return mask(tp_codes(|_| true, 0));
            } else {
                // Kafka adds none of the partitions when one is refused.
                TOPICS
                    .iter()
                    .flat_map(|(n, ps)| {
                        let code = if m.topic(Write, n) {
                            OPERATION_NOT_ATTEMPTED
                        } else {
                            TOPIC_AUTHORIZATION_FAILED
                        };
                        ps.iter().map(move |p| (tp(n, *p), code))
                    })
                    .collect()
            };
            Outcome::Answer {
                codes,
                fwd: Fwd::Nothing,
            }
        },
        check_forwarded: None,
    }
}

// ---- AddOffsetsToTxn, EndTxn, TxnOffsetCommit ----

/// txn/group pairs: both allowed, the txn denied, the group denied.
const TXN_GROUP_TAGS: [&str; 3] = ["ok-x1/ok-g1", "no-x1/ok-g1", "ok-x1/no-g1"];

fn add_offsets_to_txn() -> Api {
    Api {
        key: ApiKey::AddOffsetsToTxn,
        requests: |v| {
            TXN_GROUP_TAGS
                .iter()
                .map(|tag| {
                    let (x, g) = pair(tag);
                    let r = AddOffsetsToTxnRequest::default()
                        .with_transactional_id(xid(x))
                        .with_producer_id(ProducerId(7))
                        .with_producer_epoch(1)
                        .with_group_id(gid(g));
                    (*tag, enc(v, RequestKind::AddOffsetsToTxn(r)))
                })
                .collect()
        },
        named: |_, _| Vec::new(),
        answer: |_, _, _| ResponseKind::AddOffsetsToTxn(AddOffsetsToTxnResponse::default()),
        entries: |_, tag, r| {
            let ResponseKind::AddOffsetsToTxn(a) = r else {
                panic!("not add offsets to txn")
            };
            single(tag.to_string(), a.error_code, a)
        },
        expect: |_, tag, m| {
            use Operation::*;
            let (x, g) = pair(tag);
            let code = if !m.txn(Write, x) {
                TRANSACTIONAL_ID_AUTHORIZATION_FAILED
            } else if !m.group(Read, g) {
                GROUP_AUTHORIZATION_FAILED
            } else {
                0
            };
            whole(tag, code)
        },
        check_forwarded: None,
    }
}

fn end_txn() -> Api {
    Api {
        key: ApiKey::EndTxn,
        requests: |v| {
            one_each(v, ["ok-x1", "no-x1"], |_, x| {
                RequestKind::EndTxn(
                    EndTxnRequest::default()
                        .with_transactional_id(xid(x))
                        .with_producer_id(ProducerId(7))
                        .with_producer_epoch(1)
                        .with_committed(true),
                )
            })
        },
        named: |_, _| Vec::new(),
        answer: |v, _, _| {
            let mut r = EndTxnResponse::default();
            if v >= 5 {
                r = r.with_producer_id(ProducerId(7)).with_producer_epoch(2);
            }
            ResponseKind::EndTxn(r)
        },
        entries: |_, tag, r| {
            let ResponseKind::EndTxn(e) = r else {
                panic!("not end txn")
            };
            single(xl(tag), e.error_code, e)
        },
        expect: |_, tag, m| {
            whole(
                &xl(tag),
                if m.txn(Operation::Write, tag) {
                    0
                } else {
                    TRANSACTIONAL_ID_AUTHORIZATION_FAILED
                },
            )
        },
        check_forwarded: None,
    }
}

fn txn_offset_commit() -> Api {
    Api {
        key: ApiKey::TxnOffsetCommit,
        requests: |v| {
            TXN_GROUP_TAGS
                .iter()
                .map(|tag| {
                    let (x, g) = pair(tag);
                    let mut r = TxnOffsetCommitRequest::default()
                        .with_transactional_id(xid(x))
                        .with_group_id(gid(g))
                        .with_producer_id(ProducerId(7))
                        .with_producer_epoch(1)
                        .with_topics(
                            TOPICS
                                .iter()
                                .map(|(n, ps)| {
                                    txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                                        .with_name(tn(n))
                                        .with_partitions(
                                            ps.iter()
                                                .map(|p| {
                                                    let mut x = txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                                                        .with_partition_index(*p)
                                                        .with_committed_offset(60)
                                                        .with_committed_metadata(Some(s("meta")));
                                                    if v >= 2 {
                                                        x = x.with_committed_leader_epoch(2);
                                                    }
                                                    x
                                                })
                                                .collect(),
                                        )
                                })
                                .collect(),
                        );
                    if v >= 3 {
                        r = r.with_generation_id(3).with_member_id(s("m-1"));
                    }
                    (*tag, enc(v, RequestKind::TxnOffsetCommit(r)))
                })
                .collect()
        },
        named: |_, r| {
            let RequestKind::TxnOffsetCommit(t) = r else {
                panic!("not txn offset commit")
            };
            t.topics
                .iter()
                .flat_map(|x| {
                    x.partitions
                        .iter()
                        .map(|p| (tp(&x.name.0, p.partition_index), dbg(p)))
                })
                .collect()
        },
        answer: |_, _, r| {
            let RequestKind::TxnOffsetCommit(t) = r else {
                panic!("not txn offset commit")
            };
            ResponseKind::TxnOffsetCommit(
                TxnOffsetCommitResponse::default().with_topics(
                    t.topics
                        .iter()
                        .map(|x| {
                            txn_offset_commit_response::TxnOffsetCommitResponseTopic::default()
                                .with_name(x.name.clone())
                                .with_partitions(
                                    x.partitions
                                        .iter()
                                        .map(|p| {
                                            txn_offset_commit_response::TxnOffsetCommitResponsePartition::default()
                                                .with_partition_index(p.partition_index)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::TxnOffsetCommit(t) = r else {
                panic!("not txn offset commit")
            };
            t.topics
                .iter()
                .flat_map(|x| {
                    x.partitions
                        .iter()
                        .map(|p| (tp(&x.name.0, p.partition_index), p.error_code, dbg(p)))
                })
                .collect()
        },
        expect: |_, tag, m| {
            use Operation::*;
            let (x, g) = pair(tag);
            if !m.txn(Write, x) {
                return Outcome::Answer {
                    codes: tp_codes(|_| false, TRANSACTIONAL_ID_AUTHORIZATION_FAILED),
                    fwd: Fwd::Nothing,
                };
            }
            if !m.group(Read, g) {
                return Outcome::Answer {
                    codes: tp_codes(|_| false, GROUP_AUTHORIZATION_FAILED),
                    fwd: Fwd::Nothing,
                };
            }
            split(
                tp_codes(|n| m.topic(Read, n), TOPIC_AUTHORIZATION_FAILED),
                tp_labels(|n| m.topic(Read, n)),
                tp_labels(|_| true).len(),
            )
        },
        check_forwarded: None,
    }
}

// ---- ACLs ----

fn describe_acls() -> Api {
    Api {
        key: ApiKey::DescribeAcls,
        requests: |v| {
            let r = DescribeAclsRequest::default()
                .with_resource_type_filter(1)
                .with_pattern_type_filter(1)
                .with_operation(1)
                .with_permission_type(1);
            vec![("any", enc(v, RequestKind::DescribeAcls(r)))]
        },
        named: no_names,
        answer: |_, _, _| {
            ResponseKind::DescribeAcls(
                DescribeAclsResponse::default()
                    .with_error_message(None)
                    .with_resources(vec![describe_acls_response::DescribeAclsResource::default(
                    )
                    .with_resource_type(2)
                    .with_resource_name(s("ok-1"))
                    .with_pattern_type(3)
                    .with_acls(vec![
                        describe_acls_response::AclDescription::default()
                            .with_principal(s("User:alice"))
                            .with_host(s("*"))
                            .with_operation(3)
                            .with_permission_type(3),
                    ])]),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::DescribeAcls(d) = r else {
                panic!("not describe acls")
            };
            cluster_entry(d.error_code, d)
        },
        expect: |_, _, m| cluster_expect(Operation::Describe, m),
        check_forwarded: None,
    }
}

fn create_acls() -> Api {
    Api {
        key: ApiKey::CreateAcls,
        requests: |v| {
            let acl = |ty: i8, name: &str| {
                create_acls_request::AclCreation::default()
                    .with_resource_type(ty)
                    .with_resource_name(s(name))
                    .with_resource_pattern_type(3)
                    .with_principal(s("User:bob"))
                    .with_host(s("*"))
                    .with_operation(3)
                    .with_permission_type(3)
            };
            let r =
                CreateAclsRequest::default().with_creations(vec![acl(2, "ok-1"), acl(3, "ok-g1")]);
            vec![("create", enc(v, RequestKind::CreateAcls(r)))]
        },
        named: no_names,
        answer: |_, _, r| {
            let RequestKind::CreateAcls(c) = r else {
                panic!("not create acls")
            };
            ResponseKind::CreateAcls(
                CreateAclsResponse::default().with_results(
                    c.creations
                        .iter()
                        .map(|_| {
                            create_acls_response::AclCreationResult::default()
                                .with_error_message(None)
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::CreateAcls(c) = r else {
                panic!("not create acls")
            };
            c.results
                .iter()
                .enumerate()
                .map(|(i, x)| (format!("acl:{i}"), x.error_code, dbg(x)))
                .collect()
        },
        expect: |_, _, m| per_entry(Operation::Alter, m, &["acl:0", "acl:1"]),
        check_forwarded: None,
    }
}

fn delete_acls() -> Api {
    Api {
        key: ApiKey::DeleteAcls,
        requests: |v| {
            let filter = |ty: i8, name: Option<&str>| {
                delete_acls_request::DeleteAclsFilter::default()
                    .with_resource_type_filter(ty)
                    .with_resource_name_filter(name.map(s))
                    .with_pattern_type_filter(if name.is_some() { 3 } else { 1 })
                    .with_principal_filter(Some(s("User:bob")))
                    .with_operation(1)
                    .with_permission_type(1)
            };
            let r = DeleteAclsRequest::default()
                .with_filters(vec![filter(2, Some("ok-1")), filter(1, None)]);
            vec![("delete", enc(v, RequestKind::DeleteAcls(r)))]
        },
        named: no_names,
        answer: |_, _, r| {
            let RequestKind::DeleteAcls(d) = r else {
                panic!("not delete acls")
            };
            ResponseKind::DeleteAcls(
                DeleteAclsResponse::default().with_filter_results(
                    d.filters
                        .iter()
                        .map(|_| {
                            delete_acls_response::DeleteAclsFilterResult::default()
                                .with_error_message(None)
                                .with_matching_acls(vec![
                                    delete_acls_response::DeleteAclsMatchingAcl::default()
                                        .with_error_message(None)
                                        .with_resource_type(2)
                                        .with_resource_name(s("ok-1"))
                                        .with_pattern_type(3)
                                        .with_principal(s("User:bob"))
                                        .with_host(s("*"))
                                        .with_operation(3)
                                        .with_permission_type(3),
                                ])
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::DeleteAcls(d) = r else {
                panic!("not delete acls")
            };
            d.filter_results
                .iter()
                .enumerate()
                .map(|(i, x)| (format!("filter:{i}"), x.error_code, dbg(x)))
                .collect()
        },
        expect: |_, _, m| per_entry(Operation::Alter, m, &["filter:0", "filter:1"]),
        check_forwarded: None,
    }
}

// ---- Configs ----

fn config_codes(m: &Model, op: Operation) -> Vec<(String, i16)> {
    CONFIGS
        .iter()
        .map(|(ty, n)| (cl(*ty, n), m.config(op, *ty, n)))
        .collect()
}

fn describe_configs() -> Api {
    Api {
        key: ApiKey::DescribeConfigs,
        requests: |v| {
            let r = DescribeConfigsRequest::default().with_resources(
                CONFIGS
                    .iter()
                    .map(|(ty, n)| {
                        describe_configs_request::DescribeConfigsResource::default()
                            .with_resource_type(*ty)
                            .with_resource_name(s(n))
                            .with_configuration_keys(None)
                    })
                    .collect(),
            );
            vec![("configs", enc(v, RequestKind::DescribeConfigs(r)))]
        },
        named: |_, r| {
            let RequestKind::DescribeConfigs(d) = r else {
                panic!("not describe configs")
            };
            d.resources
                .iter()
                .map(|c| (cl(c.resource_type, &c.resource_name), dbg(c)))
                .collect()
        },
        answer: |v, _, r| {
            let RequestKind::DescribeConfigs(d) = r else {
                panic!("not describe configs")
            };
            ResponseKind::DescribeConfigs(
                DescribeConfigsResponse::default().with_results(
                    d.resources
                        .iter()
                        .map(|c| {
                            let mut entry =
                                describe_configs_response::DescribeConfigsResourceResult::default()
                                    .with_name(s("retention.ms"))
                                    .with_value(Some(s("1000")))
                                    .with_config_source(1);
                            if v >= 3 {
                                entry = entry.with_config_type(5).with_documentation(None);
                            }
                            describe_configs_response::DescribeConfigsResult::default()
                                .with_error_message(None)
                                .with_resource_type(c.resource_type)
                                .with_resource_name(c.resource_name.clone())
                                .with_configs(vec![entry])
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::DescribeConfigs(d) = r else {
                panic!("not describe configs")
            };
            d.results
                .iter()
                .map(|c| (cl(c.resource_type, &c.resource_name), c.error_code, dbg(c)))
                .collect()
        },
        expect: |_, _, m| mask(config_codes(m, Operation::DescribeConfigs)),
        check_forwarded: None,
    }
}

/// AlterConfigs and IncrementalAlterConfigs split the same way.
fn alter_configs_expect(m: &Model) -> Outcome {
    let codes = config_codes(m, Operation::AlterConfigs);
    let allowed: Vec<String> = codes
        .iter()
        .filter(|(_, c)| *c == 0)
        .map(|(l, _)| l.clone())
        .collect();
    split(codes, allowed, CONFIGS.len())
}

fn alter_configs() -> Api {
    Api {
        key: ApiKey::AlterConfigs,
        requests: |v| {
            let r = AlterConfigsRequest::default().with_resources(
                CONFIGS
                    .iter()
                    .map(|(ty, n)| {
                        alter_configs_request::AlterConfigsResource::default()
                            .with_resource_type(*ty)
                            .with_resource_name(s(n))
                            .with_configs(vec![alter_configs_request::AlterableConfig::default()
                                .with_name(s("retention.ms"))
                                .with_value(Some(s("2000")))])
                    })
                    .collect(),
            );
            vec![("alter", enc(v, RequestKind::AlterConfigs(r)))]
        },
        named: |_, r| {
            let RequestKind::AlterConfigs(a) = r else {
                panic!("not alter configs")
            };
            a.resources
                .iter()
                .map(|c| (cl(c.resource_type, &c.resource_name), dbg(c)))
                .collect()
        },
        answer: |_, _, r| {
            let RequestKind::AlterConfigs(a) = r else {
                panic!("not alter configs")
            };
            ResponseKind::AlterConfigs(
                AlterConfigsResponse::default().with_responses(
                    a.resources
                        .iter()
                        .map(|c| {
                            alter_configs_response::AlterConfigsResourceResponse::default()
                                .with_error_message(None)
                                .with_resource_type(c.resource_type)
                                .with_resource_name(c.resource_name.clone())
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::AlterConfigs(a) = r else {
                panic!("not alter configs")
            };
            a.responses
                .iter()
                .map(|c| (cl(c.resource_type, &c.resource_name), c.error_code, dbg(c)))
                .collect()
        },
        expect: |_, _, m| alter_configs_expect(m),
        check_forwarded: None,
    }
}

fn incremental_alter_configs() -> Api {
    Api {
        key: ApiKey::IncrementalAlterConfigs,
        requests: |v| {
            let r = IncrementalAlterConfigsRequest::default().with_resources(
                CONFIGS
                    .iter()
                    .map(|(ty, n)| {
                        incremental_alter_configs_request::AlterConfigsResource::default()
                            .with_resource_type(*ty)
                            .with_resource_name(s(n))
                            .with_configs(vec![
                                incremental_alter_configs_request::AlterableConfig::default()
                                    .with_name(s("retention.ms"))
                                    .with_config_operation(0)
                                    .with_value(Some(s("2000"))),
                            ])
                    })
                    .collect(),
            );
            vec![("alter", enc(v, RequestKind::IncrementalAlterConfigs(r)))]
        },
        named: |_, r| {
            let RequestKind::IncrementalAlterConfigs(a) = r else {
                panic!("not incremental alter configs")
            };
            a.resources
                .iter()
                .map(|c| (cl(c.resource_type, &c.resource_name), dbg(c)))
                .collect()
        },
        answer: |_, _, r| {
            let RequestKind::IncrementalAlterConfigs(a) = r else {
                panic!("not incremental alter configs")
            };
            ResponseKind::IncrementalAlterConfigs(
                IncrementalAlterConfigsResponse::default().with_responses(
                    a.resources
                        .iter()
                        .map(|c| {
                            incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                                .with_error_message(None)
                                .with_resource_type(c.resource_type)
                                .with_resource_name(c.resource_name.clone())
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::IncrementalAlterConfigs(a) = r else {
                panic!("not incremental alter configs")
            };
            a.responses
                .iter()
                .map(|c| (cl(c.resource_type, &c.resource_name), c.error_code, dbg(c)))
                .collect()
        },
        expect: |_, _, m| alter_configs_expect(m),
        check_forwarded: None,
    }
}

// ---- Log dirs ----

/// AlterReplicaLogDirs moves: (log dir, topics with partitions).
const LOG_DIR_MOVES: [(&str, &[TopicParts]); 2] = [
    ("/data/2", &[("ok-1", &[0, 1]), ("no-1", &[0])]),
    ("/data/3", &[("ok-2", &[3])]),
];

fn alter_replica_log_dirs() -> Api {
    Api {
        key: ApiKey::AlterReplicaLogDirs,
        requests: |v| {
            let r = AlterReplicaLogDirsRequest::default().with_dirs(
                LOG_DIR_MOVES
                    .iter()
                    .map(|(path, topics)| {
                        alter_replica_log_dirs_request::AlterReplicaLogDir::default()
                            .with_path(s(path))
                            .with_topics(
                                topics
                                    .iter()
                                    .map(|(n, ps)| {
                                        alter_replica_log_dirs_request::AlterReplicaLogDirTopic::default()
                                            .with_name(tn(n))
                                            .with_partitions(ps.to_vec())
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
            vec![("alter", enc(v, RequestKind::AlterReplicaLogDirs(r)))]
        },
        named: no_names,
        answer: |_, _, r| {
            let RequestKind::AlterReplicaLogDirs(a) = r else {
                panic!("not alter replica log dirs")
            };
            ResponseKind::AlterReplicaLogDirs(
                AlterReplicaLogDirsResponse::default().with_results(
                    a.dirs
                        .iter()
                        .flat_map(|d| d.topics.iter())
                        .map(|t| {
                            alter_replica_log_dirs_response::AlterReplicaLogDirTopicResult::default()
                                .with_topic_name(t.name.clone())
                                .with_partitions(
                                    t.partitions
                                        .iter()
                                        .map(|p| {
                                            alter_replica_log_dirs_response::AlterReplicaLogDirPartitionResult::default()
                                                .with_partition_index(*p)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::AlterReplicaLogDirs(a) = r else {
                panic!("not alter replica log dirs")
            };
            a.results
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|p| (tp(&t.topic_name.0, p.partition_index), p.error_code, dbg(p)))
                })
                .collect()
        },
        expect: |_, _, m| {
            let labels: Vec<String> = LOG_DIR_MOVES
                .iter()
                .flat_map(|(_, ts)| ts.iter())
                .flat_map(|(n, ps)| ps.iter().map(move |p| tp(n, *p)))
                .collect();
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            per_entry(Operation::Alter, m, &labels)
        },
        check_forwarded: None,
    }
}

fn describe_log_dirs() -> Api {
    Api {
        key: ApiKey::DescribeLogDirs,
        requests: |v| {
            let r = DescribeLogDirsRequest::default().with_topics(Some(vec![
                describe_log_dirs_request::DescribableLogDirTopic::default()
                    .with_topic(tn("ok-1"))
                    .with_partitions(vec![0, 1]),
                describe_log_dirs_request::DescribableLogDirTopic::default()
                    .with_topic(tn("no-1"))
                    .with_partitions(vec![0]),
            ]));
            vec![("describe", enc(v, RequestKind::DescribeLogDirs(r)))]
        },
        named: no_names,
        answer: |v, _, _| {
            let mut dir = describe_log_dirs_response::DescribeLogDirsResult::default()
                .with_log_dir(s("/data/1"))
                .with_topics(vec![
                    describe_log_dirs_response::DescribeLogDirsTopic::default()
                        .with_name(tn("ok-1"))
                        .with_partitions(vec![
                            describe_log_dirs_response::DescribeLogDirsPartition::default()
                                .with_partition_index(0)
                                .with_partition_size(4096),
                        ]),
                ]);
            if v >= 4 {
                dir = dir.with_total_bytes(1 << 30).with_usable_bytes(1 << 29);
            }
            ResponseKind::DescribeLogDirs(
                DescribeLogDirsResponse::default().with_results(vec![dir]),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::DescribeLogDirs(d) = r else {
                panic!("not describe log dirs")
            };
            cluster_entry(d.error_code, d)
        },
        expect: |v, _, m| {
            if v < 3 && !m.cluster(Operation::Describe) {
                // No top-level error code before v3: documented to close.
                return Outcome::Close;
            }
            cluster_expect(Operation::Describe, m)
        },
        check_forwarded: None,
    }
}

// ---- DeleteGroups ----

fn delete_groups() -> Api {
    Api {
        key: ApiKey::DeleteGroups,
        requests: |v| {
            let r = DeleteGroupsRequest::default()
                .with_groups_names(GROUPS.iter().map(|g| gid(g)).collect());
            vec![("delete", enc(v, RequestKind::DeleteGroups(r)))]
        },
        named: |_, r| {
            let RequestKind::DeleteGroups(d) = r else {
                panic!("not delete groups")
            };
            d.groups_names
                .iter()
                .map(|g| (gl(&g.0), String::new()))
                .collect()
        },
        answer: |_, _, r| {
            let RequestKind::DeleteGroups(d) = r else {
                panic!("not delete groups")
            };
            ResponseKind::DeleteGroups(
                DeleteGroupsResponse::default().with_results(
                    d.groups_names
                        .iter()
                        .map(|g| {
                            delete_groups_response::DeletableGroupResult::default()
                                .with_group_id(g.clone())
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::DeleteGroups(d) = r else {
                panic!("not delete groups")
            };
            d.results
                .iter()
                .map(|g| (gl(&g.group_id.0), g.error_code, dbg(g)))
                .collect()
        },
        expect: |_, _, m| {
            use Operation::*;
            let codes = GROUPS
                .iter()
                .map(|g| {
                    let code = if m.group(Delete, g) {
                        0
                    } else {
                        GROUP_AUTHORIZATION_FAILED
                    };
                    (gl(g), code)
                })
                .collect();
            let allowed: Vec<String> = GROUPS
                .iter()
                .filter(|g| m.group(Delete, g))
                .map(|g| gl(g))
                .collect();
            split(codes, allowed, GROUPS.len())
        },
        check_forwarded: None,
    }
}

// ---- Partition reassignment and leaders ----

fn elect_leaders() -> Api {
    Api {
        key: ApiKey::ElectLeaders,
        requests: |v| {
            let mut r = ElectLeadersRequest::default()
                .with_timeout_ms(60_000)
                .with_topic_partitions(Some(vec![
                    elect_leaders_request::TopicPartitions::default()
                        .with_topic(tn("ok-1"))
                        .with_partitions(vec![0, 1]),
                ]));
            if v >= 1 {
                r = r.with_election_type(0);
            }
            vec![("elect", enc(v, RequestKind::ElectLeaders(r)))]
        },
        named: no_names,
        answer: |_, _, _| {
            ResponseKind::ElectLeaders(
                ElectLeadersResponse::default().with_replica_election_results(vec![
                    elect_leaders_response::ReplicaElectionResult::default()
                        .with_topic(tn("ok-1"))
                        .with_partition_result(
                            [0, 1]
                                .iter()
                                .map(|p| {
                                    elect_leaders_response::PartitionResult::default()
                                        .with_partition_id(*p)
                                        .with_error_message(None)
                                })
                                .collect(),
                        ),
                ]),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::ElectLeaders(e) = r else {
                panic!("not elect leaders")
            };
            let mut out: Vec<Entry> = e
                .replica_election_results
                .iter()
                .flat_map(|t| {
                    t.partition_result
                        .iter()
                        .map(|p| (tp(&t.topic.0, p.partition_id), p.error_code, dbg(p)))
                })
                .collect();
            if e.error_code != 0 {
                out.push(("*".into(), e.error_code, String::new()));
            }
            out
        },
        expect: |v, _, m| {
            if m.cluster(Operation::Alter) {
                return mask(vec![(tp("ok-1", 0), 0), (tp("ok-1", 1), 0)]);
            }
            if v == 0 {
                // No top-level error code in v0: documented to close.
                return Outcome::Close;
            }
            let codes = if v == 0 {
                vec![
                    (tp("ok-1", 0), CLUSTER_AUTHORIZATION_FAILED),
                    (tp("ok-1", 1), CLUSTER_AUTHORIZATION_FAILED),
                ]
            } else {
                vec![("*".into(), CLUSTER_AUTHORIZATION_FAILED)]
            };
            Outcome::Answer {
                codes,
                fwd: Fwd::Nothing,
            }
        },
        check_forwarded: None,
    }
}

fn alter_partition_reassignments() -> Api {
    Api {
        key: ApiKey::AlterPartitionReassignments,
        requests: |v| {
            let r = AlterPartitionReassignmentsRequest::default()
                .with_timeout_ms(60_000)
                .with_topics(vec![
                    alter_partition_reassignments_request::ReassignableTopic::default()
                        .with_name(tn("ok-1"))
                        .with_partitions(vec![
                            alter_partition_reassignments_request::ReassignablePartition::default()
                                .with_partition_index(0)
                                .with_replicas(Some(vec![BrokerId(1), BrokerId(2)])),
                        ]),
                ]);
            vec![("alter", enc(v, RequestKind::AlterPartitionReassignments(r)))]
        },
        named: no_names,
        answer: |_, _, _| {
            ResponseKind::AlterPartitionReassignments(
                AlterPartitionReassignmentsResponse::default()
                    .with_error_message(None)
                    .with_responses(vec![
                        alter_partition_reassignments_response::ReassignableTopicResponse::default()
                            .with_name(tn("ok-1"))
                            .with_partitions(vec![
                                alter_partition_reassignments_response::ReassignablePartitionResponse::default()
                                    .with_partition_index(0)
                                    .with_error_message(None),
                            ]),
                    ]),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::AlterPartitionReassignments(a) = r else {
                panic!("not alter partition reassignments")
            };
            cluster_entry(a.error_code, a)
        },
        expect: |_, _, m| cluster_expect(Operation::Alter, m),
        check_forwarded: None,
    }
}

fn list_partition_reassignments() -> Api {
    Api {
        key: ApiKey::ListPartitionReassignments,
        requests: |v| {
            let r = ListPartitionReassignmentsRequest::default()
                .with_timeout_ms(60_000)
                .with_topics(None);
            vec![("list", enc(v, RequestKind::ListPartitionReassignments(r)))]
        },
        named: no_names,
        answer: |_, _, _| {
            ResponseKind::ListPartitionReassignments(
                ListPartitionReassignmentsResponse::default()
                    .with_error_message(None)
                    .with_topics(vec![
                        list_partition_reassignments_response::OngoingTopicReassignment::default()
                            .with_name(tn("ok-1"))
                            .with_partitions(vec![
                                list_partition_reassignments_response::OngoingPartitionReassignment::default()
                                    .with_partition_index(0)
                                    .with_replicas(vec![BrokerId(1), BrokerId(2)])
                                    .with_adding_replicas(vec![BrokerId(2)]),
                            ]),
                    ]),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::ListPartitionReassignments(l) = r else {
                panic!("not list partition reassignments")
            };
            cluster_entry(l.error_code, l)
        },
        expect: |_, _, m| cluster_expect(Operation::Describe, m),
        check_forwarded: None,
    }
}

// ---- OffsetDelete ----

fn offset_delete() -> Api {
    Api {
        key: ApiKey::OffsetDelete,
        requests: |v| {
            one_each(v, ["ok-g1", "no-g1"], |_, g| {
                RequestKind::OffsetDelete(
                    OffsetDeleteRequest::default()
                        .with_group_id(gid(g))
                        .with_topics(
                            TOPICS
                                .iter()
                                .map(|(n, ps)| {
                                    offset_delete_request::OffsetDeleteRequestTopic::default()
                                        .with_name(tn(n))
                                        .with_partitions(
                                            ps.iter()
                                                .map(|p| {
                                                    offset_delete_request::OffsetDeleteRequestPartition::default()
                                                        .with_partition_index(*p)
                                                })
                                                .collect(),
                                        )
                                })
                                .collect(),
                        ),
                )
            })
        },
        named: |_, r| {
            let RequestKind::OffsetDelete(o) = r else {
                panic!("not offset delete")
            };
            o.topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|x| (tp(&t.name.0, x.partition_index), dbg(x)))
                })
                .collect()
        },
        answer: |_, _, r| {
            let RequestKind::OffsetDelete(o) = r else {
                panic!("not offset delete")
            };
            ResponseKind::OffsetDelete(
                OffsetDeleteResponse::default().with_topics(
                    o.topics
                        .iter()
                        .map(|t| {
                            offset_delete_response::OffsetDeleteResponseTopic::default()
                                .with_name(t.name.clone())
                                .with_partitions(
                                    t.partitions
                                        .iter()
                                        .map(|x| {
                                            offset_delete_response::OffsetDeleteResponsePartition::default()
                                                .with_partition_index(x.partition_index)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::OffsetDelete(o) = r else {
                panic!("not offset delete")
            };
            let mut out: Vec<Entry> = o
                .topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|x| (tp(&t.name.0, x.partition_index), x.error_code, dbg(x)))
                })
                .collect();
            if o.error_code != 0 {
                out.push(("*".into(), o.error_code, String::new()));
            }
            out
        },
        expect: |_, tag, m| {
            use Operation::*;
            if !m.group(Delete, tag) {
                return Outcome::Answer {
                    codes: vec![("*".into(), GROUP_AUTHORIZATION_FAILED)],
                    fwd: Fwd::Nothing,
                };
            }
            split(
                tp_codes(|n| m.topic(Read, n), TOPIC_AUTHORIZATION_FAILED),
                tp_labels(|n| m.topic(Read, n)),
                tp_labels(|_| true).len(),
            )
        },
        check_forwarded: None,
    }
}

// ---- Quotas, SCRAM credentials, features ----

fn describe_client_quotas() -> Api {
    Api {
        key: ApiKey::DescribeClientQuotas,
        requests: |v| {
            let r = DescribeClientQuotasRequest::default().with_components(vec![
                describe_client_quotas_request::ComponentData::default()
                    .with_entity_type(s("user"))
                    .with_match_type(0)
                    .with_match(Some(s("alice"))),
            ]);
            vec![("describe", enc(v, RequestKind::DescribeClientQuotas(r)))]
        },
        named: no_names,
        answer: |_, _, _| {
            ResponseKind::DescribeClientQuotas(
                DescribeClientQuotasResponse::default()
                    .with_error_message(None)
                    .with_entries(Some(vec![
                        describe_client_quotas_response::EntryData::default()
                            .with_entity(vec![
                                describe_client_quotas_response::EntityData::default()
                                    .with_entity_type(s("user"))
                                    .with_entity_name(Some(s("alice"))),
                            ])
                            .with_values(vec![
                                describe_client_quotas_response::ValueData::default()
                                    .with_key(s("producer_byte_rate"))
                                    .with_value(1024.0),
                            ]),
                    ])),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::DescribeClientQuotas(d) = r else {
                panic!("not describe client quotas")
            };
            cluster_entry(d.error_code, d)
        },
        expect: |_, _, m| cluster_expect(Operation::DescribeConfigs, m),
        check_forwarded: None,
    }
}

/// AlterClientQuotas entities: (entity type, name).
const QUOTA_ENTITIES: [(&str, &str); 2] = [("user", "bob"), ("client-id", "app-1")];

fn alter_client_quotas() -> Api {
    Api {
        key: ApiKey::AlterClientQuotas,
        requests: |v| {
            let r = AlterClientQuotasRequest::default().with_entries(
                QUOTA_ENTITIES
                    .iter()
                    .map(|(ty, n)| {
                        alter_client_quotas_request::EntryData::default()
                            .with_entity(vec![alter_client_quotas_request::EntityData::default()
                                .with_entity_type(s(ty))
                                .with_entity_name(Some(s(n)))])
                            .with_ops(vec![alter_client_quotas_request::OpData::default()
                                .with_key(s("producer_byte_rate"))
                                .with_value(1024.0)])
                    })
                    .collect(),
            );
            vec![("alter", enc(v, RequestKind::AlterClientQuotas(r)))]
        },
        named: no_names,
        answer: |_, _, _| {
            ResponseKind::AlterClientQuotas(
                AlterClientQuotasResponse::default().with_entries(
                    QUOTA_ENTITIES
                        .iter()
                        .map(|(ty, n)| {
                            alter_client_quotas_response::EntryData::default()
                                .with_error_message(None)
                                .with_entity(vec![
                                    alter_client_quotas_response::EntityData::default()
                                        .with_entity_type(s(ty))
                                        .with_entity_name(Some(s(n))),
                                ])
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::AlterClientQuotas(a) = r else {
                panic!("not alter client quotas")
            };
            a.entries
                .iter()
                .map(|e| {
                    let entity: Vec<String> = e
                        .entity
                        .iter()
                        .map(|x| {
                            format!(
                                "{}={}",
                                x.entity_type.as_str(),
                                x.entity_name.as_ref().map(|n| n.as_str()).unwrap_or("")
                            )
                        })
                        .collect();
                    (format!("q:{}", entity.join(",")), e.error_code, dbg(e))
                })
                .collect()
        },
        expect: |_, _, m| {
            per_entry(
                Operation::AlterConfigs,
                m,
                &["q:user=bob", "q:client-id=app-1"],
            )
        },
        check_forwarded: None,
    }
}

// ---- DescribeCluster ----

fn describe_cluster() -> Api {
    Api {
        key: ApiKey::DescribeCluster,
        requests: |v| {
            let mut r =
                DescribeClusterRequest::default().with_include_cluster_authorized_operations(true);
            if v >= 1 {
                r = r.with_endpoint_type(1);
            }
            vec![("describe", enc(v, RequestKind::DescribeCluster(r)))]
        },
        named: no_names,
        answer: |v, _, _| {
            let mut r = DescribeClusterResponse::default()
                .with_error_message(None)
                .with_cluster_id(s("cluster-1"))
                .with_controller_id(BrokerId(1))
                .with_brokers(vec![
                    describe_cluster_response::DescribeClusterBroker::default()
                        .with_broker_id(BrokerId(1))
                        .with_host(s("broker-1"))
                        .with_port(9092),
                ])
                .with_cluster_authorized_operations(BROKER_OPS);
            if v >= 1 {
                r = r.with_endpoint_type(1);
            }
            ResponseKind::DescribeCluster(r)
        },
        entries: |_, _, r| {
            let ResponseKind::DescribeCluster(c) = r else {
                panic!("not describe cluster")
            };
            let content = c.clone().with_cluster_authorized_operations(0);
            let mut out = cluster_entry(c.error_code, &content);
            out.extend(ops_entry("cluster", c.cluster_authorized_operations));
            out
        },
        expect: |_, _, m| {
            // Not authorized (as public as Metadata's broker list); the
            // authorized operations are the principal's.
            mask(vec![
                ("*".into(), 0),
                (ops_label("cluster", m.ops_bits(R::Cluster)), 0),
            ])
        },
        check_forwarded: None,
    }
}

fn describe_user_scram_credentials() -> Api {
    Api {
        key: ApiKey::DescribeUserScramCredentials,
        requests: |v| {
            let r = DescribeUserScramCredentialsRequest::default().with_users(Some(vec![
                describe_user_scram_credentials_request::UserName::default().with_name(s("alice")),
            ]));
            vec![(
                "describe",
                enc(v, RequestKind::DescribeUserScramCredentials(r)),
            )]
        },
        named: no_names,
        answer: |_, _, _| {
            ResponseKind::DescribeUserScramCredentials(
                DescribeUserScramCredentialsResponse::default()
                    .with_error_message(None)
                    .with_results(vec![
                        describe_user_scram_credentials_response::DescribeUserScramCredentialsResult::default()
                            .with_user(s("alice"))
                            .with_error_message(None)
                            .with_credential_infos(vec![
                                describe_user_scram_credentials_response::CredentialInfo::default()
                                    .with_mechanism(2)
                                    .with_iterations(4096),
                            ]),
                    ]),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::DescribeUserScramCredentials(d) = r else {
                panic!("not describe user scram credentials")
            };
            cluster_entry(d.error_code, d)
        },
        expect: |_, _, m| cluster_expect(Operation::Describe, m),
        check_forwarded: None,
    }
}

fn alter_user_scram_credentials() -> Api {
    Api {
        key: ApiKey::AlterUserScramCredentials,
        requests: |v| {
            let r = AlterUserScramCredentialsRequest::default()
                .with_deletions(vec![
                    alter_user_scram_credentials_request::ScramCredentialDeletion::default()
                        .with_name(s("bob"))
                        .with_mechanism(1),
                ])
                .with_upsertions(vec![
                    alter_user_scram_credentials_request::ScramCredentialUpsertion::default()
                        .with_name(s("carol"))
                        .with_mechanism(2)
                        .with_iterations(8192)
                        .with_salt(Bytes::from_static(b"0123456789abcdef"))
                        .with_salted_password(Bytes::from_static(&[7; 64])),
                ]);
            vec![("alter", enc(v, RequestKind::AlterUserScramCredentials(r)))]
        },
        named: no_names,
        answer: |_, _, _| {
            ResponseKind::AlterUserScramCredentials(
                AlterUserScramCredentialsResponse::default().with_results(
                    ["bob", "carol"]
                        .iter()
                        .map(|u| {
                            alter_user_scram_credentials_response::AlterUserScramCredentialsResult::default()
                                .with_user(s(u))
                                .with_error_message(None)
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::AlterUserScramCredentials(a) = r else {
                panic!("not alter user scram credentials")
            };
            a.results
                .iter()
                .map(|x| (format!("u:{}", x.user.as_str()), x.error_code, dbg(x)))
                .collect()
        },
        expect: |_, _, m| per_entry(Operation::Alter, m, &["u:bob", "u:carol"]),
        check_forwarded: None,
    }
}

fn update_features() -> Api {
    Api {
        key: ApiKey::UpdateFeatures,
        requests: |v| {
            let mut key = update_features_request::FeatureUpdateKey::default()
                .with_feature(s("transaction.version"))
                .with_max_version_level(2);
            if v >= 1 {
                key = key.with_upgrade_type(1);
            }
            let r = UpdateFeaturesRequest::default()
                .with_timeout_ms(60_000)
                .with_feature_updates(vec![key]);
            vec![("update", enc(v, RequestKind::UpdateFeatures(r)))]
        },
        named: no_names,
        answer: |v, _, _| {
            let mut r = UpdateFeaturesResponse::default().with_error_message(None);
            if v <= 1 {
                r = r.with_results(vec![
                    update_features_response::UpdatableFeatureResult::default()
                        .with_feature(s("transaction.version"))
                        .with_error_message(None),
                ]);
            }
            ResponseKind::UpdateFeatures(r)
        },
        entries: |_, _, r| {
            let ResponseKind::UpdateFeatures(u) = r else {
                panic!("not update features")
            };
            cluster_entry(u.error_code, u)
        },
        expect: |_, _, m| cluster_expect(Operation::Alter, m),
        check_forwarded: None,
    }
}

fn list_config_resources() -> Api {
    Api {
        key: ApiKey::ListConfigResources,
        requests: |v| {
            let mut r = ListConfigResourcesRequest::default();
            if v >= 1 {
                r = r.with_resource_types(vec![2, 32]);
            }
            vec![("list", enc(v, RequestKind::ListConfigResources(r)))]
        },
        named: no_names,
        answer: |v, _, _| {
            let resource = |n: &str, ty: i8| {
                let x = list_config_resources_response::ConfigResource::default()
                    .with_resource_name(s(n));
                if v >= 1 {
                    x.with_resource_type(ty)
                } else {
                    x
                }
            };
            ResponseKind::ListConfigResources(
                ListConfigResourcesResponse::default()
                    .with_config_resources(vec![resource("ok-1", 2), resource("no-g1", 32)]),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::ListConfigResources(l) = r else {
                panic!("not list config resources")
            };
            cluster_entry(l.error_code, l)
        },
        expect: |_, _, m| cluster_expect(Operation::DescribeConfigs, m),
        check_forwarded: None,
    }
}

// ---- Producers and transactions ----

fn describe_producers() -> Api {
    Api {
        key: ApiKey::DescribeProducers,
        requests: |v| {
            let r = DescribeProducersRequest::default().with_topics(
                TOPICS
                    .iter()
                    .map(|(n, ps)| {
                        describe_producers_request::TopicRequest::default()
                            .with_name(tn(n))
                            .with_partition_indexes(ps.to_vec())
                    })
                    .collect(),
            );
            vec![("describe", enc(v, RequestKind::DescribeProducers(r)))]
        },
        named: |_, r| {
            let RequestKind::DescribeProducers(d) = r else {
                panic!("not describe producers")
            };
            d.topics
                .iter()
                .flat_map(|t| {
                    t.partition_indexes
                        .iter()
                        .map(|p| (tp(&t.name.0, *p), String::new()))
                })
                .collect()
        },
        answer: |_, _, r| {
            let RequestKind::DescribeProducers(d) = r else {
                panic!("not describe producers")
            };
            ResponseKind::DescribeProducers(
                DescribeProducersResponse::default().with_topics(
                    d.topics
                        .iter()
                        .map(|t| {
                            describe_producers_response::TopicResponse::default()
                                .with_name(t.name.clone())
                                .with_partitions(
                                    t.partition_indexes
                                        .iter()
                                        .map(|p| {
                                            describe_producers_response::PartitionResponse::default()
                                                .with_partition_index(*p)
                                                .with_error_message(None)
                                                .with_active_producers(vec![
                                                    describe_producers_response::ProducerState::default()
                                                        .with_producer_id(ProducerId(5))
                                                        .with_producer_epoch(1)
                                                        .with_last_sequence(10)
                                                        .with_last_timestamp(1_700_000_000_000),
                                                ])
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::DescribeProducers(d) = r else {
                panic!("not describe producers")
            };
            d.topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|x| (tp(&t.name.0, x.partition_index), x.error_code, dbg(x)))
                })
                .collect()
        },
        expect: |_, _, m| {
            mask(tp_codes(
                |n| m.topic(Operation::Read, n),
                TOPIC_AUTHORIZATION_FAILED,
            ))
        },
        check_forwarded: None,
    }
}

fn describe_transactions() -> Api {
    Api {
        key: ApiKey::DescribeTransactions,
        requests: |v| {
            let r = DescribeTransactionsRequest::default()
                .with_transactional_ids(TXNS.iter().map(|x| xid(x)).collect());
            vec![("describe", enc(v, RequestKind::DescribeTransactions(r)))]
        },
        named: |_, r| {
            let RequestKind::DescribeTransactions(d) = r else {
                panic!("not describe transactions")
            };
            d.transactional_ids
                .iter()
                .map(|x| (xl(&x.0), String::new()))
                .collect()
        },
        answer: |_, _, r| {
            let RequestKind::DescribeTransactions(d) = r else {
                panic!("not describe transactions")
            };
            ResponseKind::DescribeTransactions(
                DescribeTransactionsResponse::default().with_transaction_states(
                    d.transactional_ids
                        .iter()
                        .map(|x| {
                            describe_transactions_response::TransactionState::default()
                                .with_transactional_id(x.clone())
                                .with_transaction_state(s("Ongoing"))
                                .with_transaction_timeout_ms(60_000)
                                .with_transaction_start_time_ms(1_700_000_000_000)
                                .with_producer_id(ProducerId(7))
                                .with_producer_epoch(1)
                                .with_topics(vec![
                                    describe_transactions_response::TopicData::default()
                                        .with_topic(tn("ok-1"))
                                        .with_partitions(vec![0]),
                                ])
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::DescribeTransactions(d) = r else {
                panic!("not describe transactions")
            };
            d.transaction_states
                .iter()
                .map(|x| (xl(&x.transactional_id.0), x.error_code, dbg(x)))
                .collect()
        },
        expect: |_, _, m| {
            mask(
                TXNS.iter()
                    .map(|x| {
                        let code = if m.txn(Operation::Describe, x) {
                            0
                        } else {
                            TRANSACTIONAL_ID_AUTHORIZATION_FAILED
                        };
                        (xl(x), code)
                    })
                    .collect(),
            )
        },
        check_forwarded: None,
    }
}

fn list_transactions() -> Api {
    Api {
        key: ApiKey::ListTransactions,
        requests: |v| {
            let mut r = ListTransactionsRequest::default().with_state_filters(vec![s("Ongoing")]);
            if v >= 1 {
                r = r.with_duration_filter(60_000);
            }
            vec![("list", enc(v, RequestKind::ListTransactions(r)))]
        },
        named: no_names,
        answer: |_, _, _| {
            ResponseKind::ListTransactions(
                ListTransactionsResponse::default().with_transaction_states(
                    TXNS.iter()
                        .map(|x| {
                            list_transactions_response::TransactionState::default()
                                .with_transactional_id(xid(x))
                                .with_producer_id(ProducerId(7))
                                .with_transaction_state(s("Ongoing"))
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::ListTransactions(l) = r else {
                panic!("not list transactions")
            };
            let mut out: Vec<Entry> = l
                .transaction_states
                .iter()
                .map(|x| (xl(&x.transactional_id.0), 0, dbg(x)))
                .collect();
            if l.error_code != 0 {
                out.push(("*".into(), l.error_code, String::new()));
            }
            out
        },
        expect: |_, _, m| {
            mask(
                TXNS.iter()
                    .filter(|x| m.txn(Operation::Describe, x))
                    .map(|x| (xl(x), 0))
                    .collect(),
            )
        },
        check_forwarded: None,
    }
}

// ---- DescribeTopicPartitions ----

fn describe_topic_partitions() -> Api {
    Api {
        key: ApiKey::DescribeTopicPartitions,
        requests: |v| {
            let request = |names: &[&str]| {
                enc(
                    v,
                    RequestKind::DescribeTopicPartitions(
                        DescribeTopicPartitionsRequest::default()
                            .with_response_partition_limit(2000)
                            .with_topics(
                                names
                                    .iter()
                                    .map(|n| {
                                        describe_topic_partitions_request::TopicRequest::default()
                                            .with_name(tn(n))
                                    })
                                    .collect(),
                            ),
                    ),
                )
            };
            let named: Vec<&str> = TOPICS.iter().map(|(n, _)| *n).collect();
            vec![("named", request(&named)), ("all", request(&[]))]
        },
        named: |_, r| {
            let RequestKind::DescribeTopicPartitions(d) = r else {
                panic!("not describe topic partitions")
            };
            d.topics
                .iter()
                .map(|t| (tl(&t.name.0), String::new()))
                .collect()
        },
        answer: |_, _, r| {
            let RequestKind::DescribeTopicPartitions(d) = r else {
                panic!("not describe topic partitions")
            };
            let names: Vec<String> = if d.topics.is_empty() {
                EXISTING.iter().map(|n| n.to_string()).collect()
            } else {
                d.topics.iter().map(|t| t.name.0.to_string()).collect()
            };
            ResponseKind::DescribeTopicPartitions(
                DescribeTopicPartitionsResponse::default().with_topics(
                    names
                        .iter()
                        .map(|n| {
                            describe_topic_partitions_response::DescribeTopicPartitionsResponseTopic::default()
                                .with_name(Some(tn(n)))
                                .with_topic_id(uuid!(topic_number(n)))
                                .with_topic_authorized_operations(BROKER_OPS)
                                .with_partitions(vec![
                                    describe_topic_partitions_response::DescribeTopicPartitionsResponsePartition::default()
                                        .with_partition_index(0)
                                        .with_leader_id(BrokerId(1))
                                        .with_leader_epoch(3)
                                        .with_replica_nodes(vec![BrokerId(1)])
                                        .with_isr_nodes(vec![BrokerId(1)]),
                                ])
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::DescribeTopicPartitions(d) = r else {
                panic!("not describe topic partitions")
            };
            let mut out = Vec::new();
            for t in &d.topics {
                let name = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
                out.extend(ops_entry(&tl(&name), t.topic_authorized_operations));
                let content = t.clone().with_topic_authorized_operations(0);
                out.push((tl(&name), t.error_code, dbg(&content)));
            }
            out
        },
        expect: |_, tag, m| {
            use Operation::*;
            let names: Vec<&str> = if tag == "all" {
                EXISTING.to_vec()
            } else {
                TOPICS.iter().map(|(n, _)| *n).collect()
            };
            let mut codes = Vec::new();
            for n in names {
                if m.topic(Describe, n) {
                    codes.push((tl(n), 0));
                    codes.push((ops_label(&tl(n), m.ops_bits(R::Topic(n))), 0));
                } else if tag != "all" {
                    codes.push((tl(n), TOPIC_AUTHORIZATION_FAILED));
                }
            }
            mask(codes)
        },
        check_forwarded: None,
    }
}

// ---- ShareGroupHeartbeat, ShareGroupDescribe, ShareFetch, ShareAcknowledge ----

/// A topic id's number (see [`id_bytes`]) and partitions of it.
type IdParts = (u8, &'static [i32]);

/// Topics (by id number, see [`TOPIC_IDS`]) and partitions a share request
/// names: learned "ok" and "no" topics, and id 9, which the stage's map
/// never learned (UNKNOWN_TOPIC_ID).
const SHARE_TOPICS: [IdParts; 4] = [(1, &[0, 1]), (2, &[0]), (3, &[3]), (9, &[2])];
/// Share request topics none of which the partial policies let through: a
/// "no" topic and the unlearned id.
const REFUSABLE_TOPICS: [IdParts; 2] = [(2, &[0]), (9, &[2])];
/// Topics a share session adds to a ShareFetch answer although the request
/// does not name them (earlier requests did): "ok-3", "no-3", and id 10,
/// never learned.
const SESSION_TOPICS: [IdParts; 3] = [(5, &[0]), (6, &[1, 2]), (10, &[0])];

/// The subscription of a ShareGroupHeartbeat, by the second part of its tag:
/// `None` for a null array (unchanged since the last heartbeat).
fn share_subscription(names: &str) -> Option<&'static [&'static str]> {
    match names {
        "ok" => Some(&["ok-1", "ok-2"]),
        "mixed" => Some(&["ok-1", "no-1", "ok-2"]),
        "null" => None,
        other => panic!("unknown subscription {other}"),
    }
}

fn share_group_heartbeat() -> Api {
    Api {
        key: ApiKey::ShareGroupHeartbeat,
        requests: |v| {
            let mut out = Vec::new();
            for tag in [
                "ok-g1/ok",
                "ok-g1/mixed",
                "ok-g1/null",
                "no-g1/ok",
                "no-g1/mixed",
                "no-g1/null",
            ] {
                let (group, names) = tag.split_once('/').expect("group/names tag");
                let names = share_subscription(names);
                let r = ShareGroupHeartbeatRequest::default()
                    .with_group_id(gid(group))
                    .with_member_id(s("m-1"))
                    // A joining member subscribes; a later heartbeat sends null.
                    .with_member_epoch(if names.is_some() { 0 } else { 4 })
                    .with_rack_id(Some(s("rack-a")))
                    .with_subscribed_topic_names(
                        names.map(|ns| ns.iter().map(|n| tn(n)).collect()),
                    );
                out.push((tag, enc(v, RequestKind::ShareGroupHeartbeat(r))));
            }
            out
        },
        named: |_, r| {
            let RequestKind::ShareGroupHeartbeat(h) = r else {
                panic!("not share group heartbeat")
            };
            h.subscribed_topic_names
                .iter()
                .flatten()
                .map(|n| (tl(&n.0), String::new()))
                .collect()
        },
        answer: |_, _, _| {
            ResponseKind::ShareGroupHeartbeat(
                ShareGroupHeartbeatResponse::default()
                    .with_member_id(Some(s("m-1")))
                    .with_member_epoch(5)
                    .with_heartbeat_interval_ms(5000)
                    .with_assignment(Some(
                        share_group_heartbeat_response::Assignment::default()
                            .with_topic_partitions(vec![
                                share_group_heartbeat_response::TopicPartitions::default()
                                    .with_topic_id(uuid!(1))
                                    .with_partitions(vec![0, 1]),
                            ]),
                    )),
            )
        },
        entries: |_, tag, r| {
            let ResponseKind::ShareGroupHeartbeat(h) = r else {
                panic!("not share group heartbeat")
            };
            let (group, _) = tag.split_once('/').expect("group/names tag");
            single(gl(group), h.error_code, h)
        },
        expect: |_, tag, m| {
            use Operation::*;
            let (group, names) = tag.split_once('/').expect("group/names tag");
            let names = share_subscription(names).unwrap_or_default();
            let code = if !m.group(Read, group) {
                GROUP_AUTHORIZATION_FAILED
            } else if names.iter().any(|n| !m.topic(Describe, n)) {
                TOPIC_AUTHORIZATION_FAILED
            } else {
                0
            };
            whole(&gl(group), code)
        },
        check_forwarded: None,
    }
}

fn share_group_describe() -> Api {
    Api {
        key: ApiKey::ShareGroupDescribe,
        requests: |v| {
            let request = |ops: bool| {
                enc(
                    v,
                    RequestKind::ShareGroupDescribe(
                        ShareGroupDescribeRequest::default()
                            .with_group_ids(GROUPS.iter().map(|g| gid(g)).collect())
                            .with_include_authorized_operations(ops),
                    ),
                )
            };
            vec![("ops", request(true)), ("no-ops", request(false))]
        },
        named: |_, r| {
            let RequestKind::ShareGroupDescribe(d) = r else {
                panic!("not share group describe")
            };
            d.group_ids
                .iter()
                .map(|g| (gl(&g.0), String::new()))
                .collect()
        },
        answer: |_, _, r| {
            use share_group_describe_response as sgd;
            let RequestKind::ShareGroupDescribe(d) = r else {
                panic!("not share group describe")
            };
            let ops = if d.include_authorized_operations {
                BROKER_OPS
            } else {
                NOT_REQUESTED
            };
            ResponseKind::ShareGroupDescribe(
                ShareGroupDescribeResponse::default().with_groups(
                    d.group_ids
                        .iter()
                        .map(|g| {
                            sgd::DescribedGroup::default()
                                .with_group_id(g.clone())
                                .with_group_state(s("Stable"))
                                .with_group_epoch(3)
                                .with_assignment_epoch(3)
                                .with_assignor_name(s("simple"))
                                .with_members(vec![sgd::Member::default()
                                    .with_member_id(s("m-1"))
                                    .with_member_epoch(3)
                                    .with_client_id(s("client-1"))
                                    .with_client_host(s("/10.0.0.9"))
                                    .with_subscribed_topic_names(vec![tn("ok-1")])
                                    .with_assignment(
                                        sgd::Assignment::default().with_topic_partitions(vec![
                                            sgd::TopicPartitions::default()
                                                .with_topic_id(uuid!(1))
                                                .with_topic_name(tn("ok-1"))
                                                .with_partitions(vec![0, 1]),
                                        ]),
                                    )])
                                .with_authorized_operations(ops)
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::ShareGroupDescribe(d) = r else {
                panic!("not share group describe")
            };
            let mut out = Vec::new();
            for g in &d.groups {
                let label = gl(&g.group_id.0);
                out.extend(ops_entry(&label, g.authorized_operations));
                let content = g.clone().with_authorized_operations(0);
                out.push((label, g.error_code, dbg(&content)));
            }
            out
        },
        expect: |_, tag, m| groups_masked(m, tag == "ops"),
        check_forwarded: None,
    }
}

/// A topic id's number: the last byte of an [`id_bytes`] id.
fn share_id_number(id: &uuid::Uuid) -> u8 {
    let b = id.as_bytes();
    assert_eq!(b[..15], id_bytes(0)[..15], "not a table id: {id}");
    b[15]
}

/// The label of partition `p` of topic id number `k`: its name when the
/// table names it, else the id's number.
fn share_label(k: u8, p: i32) -> String {
    match TOPIC_IDS.iter().find(|(_, x)| *x == k) {
        Some((n, _)) => tp(n, p),
        None => tp(&format!("id{k}"), p),
    }
}

/// What a topic id named in a share request gets under the model: 0, or
/// the error entries of its partitions carry.
fn share_topic_code(m: &Model, k: u8) -> i16 {
    match TOPIC_IDS.iter().find(|(_, x)| *x == k) {
        None => UNKNOWN_TOPIC_ID,
        Some((n, _)) if !m.topic(Operation::Read, n) => TOPIC_AUTHORIZATION_FAILED,
        Some(_) => 0,
    }
}

/// A share request's tag, `group/topics`: the group ("null" for none), the
/// topics it names, and whether the share session adds [`SESSION_TOPICS`]
/// to the answer.
fn share_case(tag: &str) -> (Option<&str>, &'static [IdParts], bool) {
    let (group, topics) = tag.split_once('/').expect("group/topics tag");
    let group = (group != "null").then_some(group);
    let (topics, session): (&'static [IdParts], bool) = match topics {
        // Learned "ok" and "no" topics and an id never learned.
        "all" => (&SHARE_TOPICS, false),
        // Learned topics only: forwarded untouched when all are allowed.
        "known" => (&SHARE_TOPICS[..3], false),
        // No "ok" topic: cut down to nothing under the partial policies.
        "refusable" => (&REFUSABLE_TOPICS, false),
        // As "all", and the session's earlier topics come back too.
        "session" => (&SHARE_TOPICS, true),
        // A request naming nothing: only the session's topics come back.
        "idle" => (&[], true),
        other => panic!("unknown share topics {other}"),
    };
    (group, topics, session)
}

/// Share requests for `api` (the session's topics only for ShareFetch).
fn share_tags(api: ApiKey) -> Vec<&'static str> {
    let mut tags = vec![
        "ok-g1/all",
        "ok-g1/known",
        "ok-g1/refusable",
        "no-g1/all",
        "no-g1/known",
        "null/all",
    ];
    if api == ApiKey::ShareFetch {
        tags.extend(["ok-g1/session", "ok-g1/idle", "no-g1/idle"]);
    }
    tags
}

/// What the client of a ShareFetch or ShareAcknowledge must read.
fn share_expect(api: ApiKey, tag: &str, m: &Model) -> Outcome {
    let (group, topics, session) = share_case(tag);
    let Some(group) = group else {
        return whole("*", INVALID_REQUEST);
    };
    if !m.group(Operation::Read, group) {
        return whole("*", GROUP_AUTHORIZATION_FAILED);
    }
    let (mut codes, mut kept, mut all) = (Vec::new(), Vec::new(), 0);
    for (k, ps) in topics {
        let code = share_topic_code(m, *k);
        for p in *ps {
            all += 1;
            let label = share_label(*k, *p);
            if code == 0 {
                kept.push(label.clone());
            } else if api == ApiKey::ShareFetch {
                // The acknowledgements the request carried were not applied.
                codes.push((format!("{label}/ack"), code));
            }
            codes.push((label, code));
        }
    }
    if session {
        for (k, ps) in SESSION_TOPICS {
            let code = share_topic_code(m, k);
            codes.extend(ps.iter().map(|p| (share_label(k, *p), code)));
        }
    }
    // Even with every topic cut, the request goes on: the share session's
    // epoch must advance.
    let fwd = if kept.len() == all {
        Fwd::Unchanged
    } else {
        Fwd::Exactly(kept)
    };
    Outcome::Answer { codes, fwd }
}

/// The acknowledgements a share request carries for each partition.
fn share_acks() -> Vec<(i64, i64, Vec<i8>)> {
    vec![(10, 14, vec![1]), (15, 19, vec![1, 2, 1, 3, 1])]
}

/// A ShareFetch naming `topics` for `group` (no topics: the session's).
fn share_fetch_request(group: Option<&str>, topics: &[IdParts]) -> ShareFetchRequest {
    use share_fetch_request as sf;
    ShareFetchRequest::default()
        .with_group_id(group.map(gid))
        .with_member_id(Some(s("m-1")))
        .with_share_session_epoch(3)
        .with_max_wait_ms(500)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_max_records(500)
        .with_batch_size(100)
        .with_topics(
            topics
                .iter()
                .map(|(k, ps)| {
                    sf::FetchTopic::default()
                        .with_topic_id(uuid!(*k))
                        .with_partitions(
                            ps.iter()
                                .map(|p| {
                                    sf::FetchPartition::default()
                                        .with_partition_index(*p)
                                        .with_acknowledgement_batches(
                                            share_acks()
                                                .into_iter()
                                                .map(|(first, last, types)| {
                                                    sf::AcknowledgementBatch::default()
                                                        .with_first_offset(first)
                                                        .with_last_offset(last)
                                                        .with_acknowledge_types(types)
                                                })
                                                .collect(),
                                        )
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
        // Forgotten topics only leave the session: not authorized.
        .with_forgotten_topics_data(vec![sf::ForgottenTopic::default()
            .with_topic_id(uuid!(6))
            .with_partitions(vec![4, 5])])
}

/// A ShareAcknowledge naming `topics` for `group`.
fn share_acknowledge_request(group: Option<&str>, topics: &[IdParts]) -> ShareAcknowledgeRequest {
    use share_acknowledge_request as sa;
    ShareAcknowledgeRequest::default()
        .with_group_id(group.map(gid))
        .with_member_id(Some(s("m-1")))
        .with_share_session_epoch(4)
        .with_topics(
            topics
                .iter()
                .map(|(k, ps)| {
                    sa::AcknowledgeTopic::default()
                        .with_topic_id(uuid!(*k))
                        .with_partitions(
                            ps.iter()
                                .map(|p| {
                                    sa::AcknowledgePartition::default()
                                        .with_partition_index(*p)
                                        .with_acknowledgement_batches(
                                            share_acks()
                                                .into_iter()
                                                .map(|(first, last, types)| {
                                                    sa::AcknowledgementBatch::default()
                                                        .with_first_offset(first)
                                                        .with_last_offset(last)
                                                        .with_acknowledge_types(types)
                                                })
                                                .collect(),
                                        )
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
}

/// An extra entry when an error entry's leader is not "none" (-1/-1).
fn share_leader_entry(label: &str, code: i16, leader: (i32, i32)) -> Option<Entry> {
    (code != 0 && leader != (-1, -1)).then(|| {
        (
            format!("{label}/leader={}/{}", leader.0, leader.1),
            code,
            String::new(),
        )
    })
}

fn share_fetch() -> Api {
    Api {
        key: ApiKey::ShareFetch,
        requests: |v| {
            share_tags(ApiKey::ShareFetch)
                .into_iter()
                .map(|tag| {
                    let (group, topics, _) = share_case(tag);
                    let r = share_fetch_request(group, topics);
                    (tag, enc(v, RequestKind::ShareFetch(r)))
                })
                .collect()
        },
        named: |_, r| {
            let RequestKind::ShareFetch(f) = r else {
                panic!("not share fetch")
            };
            f.topics
                .iter()
                .flat_map(|t| {
                    let k = share_id_number(&t.topic_id);
                    t.partitions
                        .iter()
                        .map(move |x| (share_label(k, x.partition_index), dbg(x)))
                })
                .collect()
        },
        answer: |_, tag, r| {
            use share_fetch_response as sf;
            let RequestKind::ShareFetch(f) = r else {
                panic!("not share fetch")
            };
            let mut topics: Vec<(u8, Vec<i32>)> = f
                .topics
                .iter()
                .map(|t| {
                    let ps = t.partitions.iter().map(|p| p.partition_index).collect();
                    (share_id_number(&t.topic_id), ps)
                })
                .collect();
            if share_case(tag).2 {
                topics.extend(SESSION_TOPICS.iter().map(|(k, ps)| (*k, ps.to_vec())));
            }
            ResponseKind::ShareFetch(
                ShareFetchResponse::default()
                    .with_acquisition_lock_timeout_ms(30_000)
                    .with_responses(
                        topics
                            .into_iter()
                            .map(|(k, ps)| {
                                sf::ShareFetchableTopicResponse::default()
                                    .with_topic_id(uuid!(k))
                                    .with_partitions(
                                        ps.into_iter()
                                            .map(|p| {
                                                sf::PartitionData::default()
                                                    .with_partition_index(p)
                                                    .with_current_leader(
                                                        sf::LeaderIdAndEpoch::default()
                                                            .with_leader_id(1)
                                                            .with_leader_epoch(3),
                                                    )
                                                    .with_records(Some(Bytes::from(format!(
                                                        "records-{k}-{p}"
                                                    ))))
                                                    .with_acquired_records(vec![
                                                        sf::AcquiredRecords::default()
                                                            .with_first_offset(20)
                                                            .with_last_offset(29)
                                                            .with_delivery_count(1),
                                                    ])
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    )
                    .with_node_endpoints(vec![sf::NodeEndpoint::default()
                        .with_node_id(BrokerId(1))
                        .with_host(s("broker-1"))
                        .with_port(9092)]),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::ShareFetch(f) = r else {
                panic!("not share fetch")
            };
            let mut out = Vec::new();
            for t in &f.responses {
                let k = share_id_number(&t.topic_id);
                for p in &t.partitions {
                    let label = share_label(k, p.partition_index);
                    if p.acknowledge_error_code != 0 {
                        out.push((
                            format!("{label}/ack"),
                            p.acknowledge_error_code,
                            String::new(),
                        ));
                    }
                    let leader = (p.current_leader.leader_id, p.current_leader.leader_epoch);
                    out.extend(share_leader_entry(&label, p.error_code, leader));
                    out.push((label, p.error_code, dbg(p)));
                }
            }
            if f.error_code != 0 {
                out.push(("*".into(), f.error_code, String::new()));
            }
            out
        },
        expect: |_, tag, m| share_expect(ApiKey::ShareFetch, tag, m),
        check_forwarded: Some(|_, _, r| {
            let RequestKind::ShareFetch(f) = r else {
                panic!("not share fetch")
            };
            // All but the topic array as the client sent it.
            let group = f.group_id.as_ref().map(|g| &*g.0);
            let want = share_fetch_request(group, &[]);
            let got = f.clone().with_topics(vec![]);
            (got == want)
                .then_some(())
                .ok_or_else(|| format!("forwarded {got:?}, expected {want:?}"))
        }),
    }
}

fn share_acknowledge() -> Api {
    Api {
        key: ApiKey::ShareAcknowledge,
        requests: |v| {
            share_tags(ApiKey::ShareAcknowledge)
                .into_iter()
                .map(|tag| {
                    let (group, topics, _) = share_case(tag);
                    let r = share_acknowledge_request(group, topics);
                    (tag, enc(v, RequestKind::ShareAcknowledge(r)))
                })
                .collect()
        },
        named: |_, r| {
            let RequestKind::ShareAcknowledge(a) = r else {
                panic!("not share acknowledge")
            };
            a.topics
                .iter()
                .flat_map(|t| {
                    let k = share_id_number(&t.topic_id);
                    t.partitions
                        .iter()
                        .map(move |x| (share_label(k, x.partition_index), dbg(x)))
                })
                .collect()
        },
        answer: |_, _, r| {
            use share_acknowledge_response as sa;
            let RequestKind::ShareAcknowledge(a) = r else {
                panic!("not share acknowledge")
            };
            ResponseKind::ShareAcknowledge(
                ShareAcknowledgeResponse::default()
                    .with_responses(
                        a.topics
                            .iter()
                            .map(|t| {
                                sa::ShareAcknowledgeTopicResponse::default()
                                    .with_topic_id(t.topic_id)
                                    .with_partitions(
                                        t.partitions
                                            .iter()
                                            .map(|p| {
                                                sa::PartitionData::default()
                                                    .with_partition_index(p.partition_index)
                                                    .with_current_leader(
                                                        sa::LeaderIdAndEpoch::default()
                                                            .with_leader_id(1)
                                                            .with_leader_epoch(3),
                                                    )
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    )
                    .with_node_endpoints(vec![sa::NodeEndpoint::default()
                        .with_node_id(BrokerId(1))
                        .with_host(s("broker-1"))
                        .with_port(9092)]),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::ShareAcknowledge(a) = r else {
                panic!("not share acknowledge")
            };
            let mut out = Vec::new();
            for t in &a.responses {
                let k = share_id_number(&t.topic_id);
                for p in &t.partitions {
                    let label = share_label(k, p.partition_index);
                    let leader = (p.current_leader.leader_id, p.current_leader.leader_epoch);
                    out.extend(share_leader_entry(&label, p.error_code, leader));
                    out.push((label, p.error_code, dbg(p)));
                }
            }
            if a.error_code != 0 {
                out.push(("*".into(), a.error_code, String::new()));
            }
            out
        },
        expect: |_, tag, m| share_expect(ApiKey::ShareAcknowledge, tag, m),
        check_forwarded: Some(|_, _, r| {
            let RequestKind::ShareAcknowledge(a) = r else {
                panic!("not share acknowledge")
            };
            let group = a.group_id.as_ref().map(|g| &*g.0);
            let want = share_acknowledge_request(group, &[]);
            let got = a.clone().with_topics(vec![]);
            (got == want)
                .then_some(())
                .ok_or_else(|| format!("forwarded {got:?}, expected {want:?}"))
        }),
    }
}

// ---- DescribeShareGroupOffsets, AlterShareGroupOffsets, DeleteShareGroupOffsets ----

/// DescribeShareGroupOffsets groups of the "groups" request: (group, names
/// [`TOPICS`]?); the others ask for all topics (null, answered from
/// [`COMMITTED`]).
const SHARE_OFFSET_GROUPS: [(&str, bool); 4] = [
    ("ok-g1", true),
    ("no-g1", true),
    ("ok-g2", false),
    ("no-g2", false),
];

/// The groups of a DescribeShareGroupOffsets request, by its tag: "groups"
/// for [`SHARE_OFFSET_GROUPS`], else one `group/named` or `group/all`.
fn share_offset_groups(tag: &str) -> Vec<(&str, bool)> {
    if tag == "groups" {
        return SHARE_OFFSET_GROUPS.to_vec();
    }
    let (group, what) = tag.split_once('/').expect("group/what tag");
    vec![(group, what == "named")]
}

fn describe_share_group_offsets() -> Api {
    Api {
        key: ApiKey::DescribeShareGroupOffsets,
        requests: |v| {
            use describe_share_group_offsets_request as dq;
            [
                "groups",
                "ok-g1/named",
                "no-g1/named",
                "ok-g2/all",
                "no-g2/all",
            ]
            .into_iter()
            .map(|tag| {
                let groups = share_offset_groups(tag)
                    .into_iter()
                    .map(|(g, named)| {
                        dq::DescribeShareGroupOffsetsRequestGroup::default()
                            .with_group_id(gid(g))
                            .with_topics(named.then(|| {
                                TOPICS
                                    .iter()
                                    .map(|(n, ps)| {
                                        dq::DescribeShareGroupOffsetsRequestTopic::default()
                                            .with_topic_name(tn(n))
                                            .with_partitions(ps.to_vec())
                                    })
                                    .collect()
                            }))
                    })
                    .collect();
                let r = DescribeShareGroupOffsetsRequest::default().with_groups(groups);
                (tag, enc(v, RequestKind::DescribeShareGroupOffsets(r)))
            })
            .collect()
        },
        named: |_, r| {
            let RequestKind::DescribeShareGroupOffsets(d) = r else {
                panic!("not describe share group offsets")
            };
            let mut out = Vec::new();
            for g in &d.groups {
                let gname = g.group_id.0.to_string();
                out.push((gl(&gname), dbg(g)));
                for t in g.topics.iter().flatten() {
                    for p in &t.partitions {
                        out.push((format!("{gname}/{}", tp(&t.topic_name.0, *p)), dbg(t)));
                    }
                }
            }
            out
        },
        answer: |_, _, r| {
            use describe_share_group_offsets_response as dr;
            let RequestKind::DescribeShareGroupOffsets(d) = r else {
                panic!("not describe share group offsets")
            };
            ResponseKind::DescribeShareGroupOffsets(
                DescribeShareGroupOffsetsResponse::default().with_groups(
                    d.groups
                        .iter()
                        .map(|g| {
                            let named = g.topics.as_ref().map(|ts| {
                                ts.iter()
                                    .map(|t| (t.topic_name.0.to_string(), t.partitions.clone()))
                                    .collect()
                            });
                            dr::DescribeShareGroupOffsetsResponseGroup::default()
                                .with_group_id(g.group_id.clone())
                                .with_topics(
                                    committed(named)
                                        .iter()
                                        .map(|(n, ps)| {
                                            dr::DescribeShareGroupOffsetsResponseTopic::default()
                                                .with_topic_name(tn(n))
                                                .with_topic_id(uuid!(topic_number(n)))
                                                .with_partitions(
                                                    ps.iter()
                                                        .map(|p| {
                                                            dr::DescribeShareGroupOffsetsResponsePartition::default()
                                                                .with_partition_index(*p)
                                                                .with_start_offset(100 + i64::from(*p))
                                                                .with_leader_epoch(3)
                                                        })
                                                        .collect(),
                                                )
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::DescribeShareGroupOffsets(d) = r else {
                panic!("not describe share group offsets")
            };
            let mut out = Vec::new();
            for g in &d.groups {
                let gname = g.group_id.0.to_string();
                out.push((gl(&gname), g.error_code, String::new()));
                for t in &g.topics {
                    for x in &t.partitions {
                        let mut label =
                            format!("{gname}/{}", tp(&t.topic_name.0, x.partition_index));
                        // An error entry carries no offset: a wrong one
                        // shows as a wrong label.
                        if x.error_code != 0 && (x.start_offset, x.leader_epoch) != (-1, -1) {
                            label += &format!("/start={}/epoch={}", x.start_offset, x.leader_epoch);
                        }
                        out.push((label, x.error_code, dbg(x)));
                    }
                }
            }
            out
        },
        expect: |_, tag, m| {
            use Operation::*;
            let mut codes = Vec::new();
            for (g, named) in share_offset_groups(tag) {
                if !m.group(Describe, g) {
                    codes.push((gl(g), GROUP_AUTHORIZATION_FAILED));
                    continue;
                }
                codes.push((gl(g), 0));
                if named {
                    // Named topics: error entries for the refused ones.
                    codes.extend(
                        tp_codes(|n| m.topic(Describe, n), TOPIC_AUTHORIZATION_FAILED)
                            .into_iter()
                            .map(|(l, c)| (format!("{g}/{l}"), c)),
                    );
                } else {
                    // All topics: the refused ones are left out.
                    codes.extend(
                        COMMITTED
                            .iter()
                            .filter(|(n, _)| m.topic(Describe, n))
                            .flat_map(|(n, ps)| {
                                ps.iter().map(move |p| (format!("{g}/{}", tp(n, *p)), 0))
                            }),
                    );
                }
            }
            mask(codes)
        },
        check_forwarded: None,
    }
}

/// Topics of an Alter or DeleteShareGroupOffsets none of which the partial
/// policies allow.
const NO_TOPICS: [TopicParts; 2] = [("no-1", &[0]), ("no-2", &[1, 2])];

/// Alter and DeleteShareGroupOffsets requests: `group/topics`, the topics
/// being [`TOPICS`] ("mixed") or [`NO_TOPICS`] ("no").
const SHARE_OFFSET_TAGS: [&str; 4] = ["ok-g1/mixed", "no-g1/mixed", "ok-g1/no", "no-g1/no"];

fn share_offsets_case(tag: &str) -> (&str, &'static [TopicParts]) {
    let (group, topics) = tag.split_once('/').expect("group/topics tag");
    match topics {
        "mixed" => (group, &TOPICS),
        "no" => (group, &NO_TOPICS),
        other => panic!("unknown topics {other}"),
    }
}

/// The top-level entry of an Alter or DeleteShareGroupOffsets answer, when
/// it carries an error: "*", or "*/no message" without its error message.
fn share_offsets_top(code: i16, message: &Option<StrBytes>) -> Option<Entry> {
    (code != 0).then(|| {
        let label = if message.is_some() {
            "*"
        } else {
            "*/no message"
        };
        (label.to_string(), code, String::new())
    })
}

/// Alter (Read on the group, entries per partition) and
/// DeleteShareGroupOffsets (Delete on the group, entries per topic): a
/// refused group is answered alone, with its error on top and on every
/// entry; then topics without Read are cut out and answered
/// TOPIC_AUTHORIZATION_FAILED, alone when none is left.
fn share_offsets_expect(api: ApiKey, tag: &str, m: &Model) -> Outcome {
    use Operation::*;
    let (group, topics) = share_offsets_case(tag);
    let alter = api == ApiKey::AlterShareGroupOffsets;
    let labels = |n: &str, ps: &[i32]| -> Vec<String> {
        if alter {
            ps.iter().map(|p| tp(n, *p)).collect()
        } else {
            vec![tl(n)]
        }
    };
    if !m.group(if alter { Read } else { Delete }, group) {
        let mut codes = vec![("*".to_string(), GROUP_AUTHORIZATION_FAILED)];
        for (n, ps) in topics {
            codes.extend(
                labels(n, ps)
                    .into_iter()
                    .map(|l| (l, GROUP_AUTHORIZATION_FAILED)),
            );
        }
        return Outcome::Answer {
            codes,
            fwd: Fwd::Nothing,
        };
    }
    let mut codes = Vec::new();
    let mut forwarded = Vec::new();
    for (n, ps) in topics {
        let allowed = m.topic(Read, n);
        for l in labels(n, ps) {
            if allowed {
                forwarded.push(l.clone());
            }
            let code = if allowed {
                0
            } else {
                TOPIC_AUTHORIZATION_FAILED
            };
            codes.push((l, code));
        }
    }
    let fwd = if forwarded.is_empty() {
        Fwd::Nothing
    } else if forwarded.len() == codes.len() {
        Fwd::Unchanged
    } else {
        forwarded.push(gl(group));
        Fwd::Exactly(forwarded)
    };
    Outcome::Answer { codes, fwd }
}

fn alter_share_group_offsets() -> Api {
    Api {
        key: ApiKey::AlterShareGroupOffsets,
        requests: |v| {
            use alter_share_group_offsets_request as aq;
            SHARE_OFFSET_TAGS
                .into_iter()
                .map(|tag| {
                    let (group, topics) = share_offsets_case(tag);
                    let r = AlterShareGroupOffsetsRequest::default()
                        .with_group_id(gid(group))
                        .with_topics(
                            topics
                                .iter()
                                .map(|(n, ps)| {
                                    aq::AlterShareGroupOffsetsRequestTopic::default()
                                        .with_topic_name(tn(n))
                                        .with_partitions(
                                            ps.iter()
                                                .map(|p| {
                                                    aq::AlterShareGroupOffsetsRequestPartition::default()
                                                        .with_partition_index(*p)
                                                        .with_start_offset(50 + i64::from(*p))
                                                })
                                                .collect(),
                                        )
                                })
                                .collect(),
                        );
                    (tag, enc(v, RequestKind::AlterShareGroupOffsets(r)))
                })
                .collect()
        },
        named: |_, r| {
            let RequestKind::AlterShareGroupOffsets(a) = r else {
                panic!("not alter share group offsets")
            };
            let mut out = vec![(gl(&a.group_id.0), dbg(&a.group_id))];
            for t in &a.topics {
                for x in &t.partitions {
                    out.push((tp(&t.topic_name.0, x.partition_index), dbg(x)));
                }
            }
            out
        },
        answer: |_, _, r| {
            use alter_share_group_offsets_response as ar;
            let RequestKind::AlterShareGroupOffsets(a) = r else {
                panic!("not alter share group offsets")
            };
            ResponseKind::AlterShareGroupOffsets(
                AlterShareGroupOffsetsResponse::default().with_responses(
                    a.topics
                        .iter()
                        .map(|t| {
                            ar::AlterShareGroupOffsetsResponseTopic::default()
                                .with_topic_name(t.topic_name.clone())
                                .with_topic_id(uuid!(topic_number(&t.topic_name.0)))
                                .with_partitions(
                                    t.partitions
                                        .iter()
                                        .map(|x| {
                                            ar::AlterShareGroupOffsetsResponsePartition::default()
                                                .with_partition_index(x.partition_index)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::AlterShareGroupOffsets(a) = r else {
                panic!("not alter share group offsets")
            };
            let mut out: Vec<Entry> = a
                .responses
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|x| (tp(&t.topic_name.0, x.partition_index), x.error_code, dbg(x)))
                })
                .collect();
            out.extend(share_offsets_top(a.error_code, &a.error_message));
            out
        },
        expect: |_, tag, m| share_offsets_expect(ApiKey::AlterShareGroupOffsets, tag, m),
        check_forwarded: None,
    }
}

fn delete_share_group_offsets() -> Api {
    Api {
        key: ApiKey::DeleteShareGroupOffsets,
        requests: |v| {
            use delete_share_group_offsets_request as dq;
            SHARE_OFFSET_TAGS
                .into_iter()
                .map(|tag| {
                    let (group, topics) = share_offsets_case(tag);
                    let r = DeleteShareGroupOffsetsRequest::default()
                        .with_group_id(gid(group))
                        .with_topics(
                            topics
                                .iter()
                                .map(|(n, _)| {
                                    dq::DeleteShareGroupOffsetsRequestTopic::default()
                                        .with_topic_name(tn(n))
                                })
                                .collect(),
                        );
                    (tag, enc(v, RequestKind::DeleteShareGroupOffsets(r)))
                })
                .collect()
        },
        named: |_, r| {
            let RequestKind::DeleteShareGroupOffsets(d) = r else {
                panic!("not delete share group offsets")
            };
            let mut out = vec![(gl(&d.group_id.0), dbg(&d.group_id))];
            out.extend(d.topics.iter().map(|t| (tl(&t.topic_name.0), dbg(t))));
            out
        },
        answer: |_, _, r| {
            use delete_share_group_offsets_response as dr;
            let RequestKind::DeleteShareGroupOffsets(d) = r else {
                panic!("not delete share group offsets")
            };
            ResponseKind::DeleteShareGroupOffsets(
                DeleteShareGroupOffsetsResponse::default().with_responses(
                    d.topics
                        .iter()
                        .map(|t| {
                            dr::DeleteShareGroupOffsetsResponseTopic::default()
                                .with_topic_name(t.topic_name.clone())
                                .with_topic_id(uuid!(topic_number(&t.topic_name.0)))
                        })
                        .collect(),
                ),
            )
        },
        entries: |_, _, r| {
            let ResponseKind::DeleteShareGroupOffsets(d) = r else {
                panic!("not delete share group offsets")
            };
            let mut out: Vec<Entry> = d
                .responses
                .iter()
                .map(|t| (tl(&t.topic_name.0), t.error_code, dbg(t)))
                .collect();
            out.extend(share_offsets_top(d.error_code, &d.error_message));
            out
        },
        expect: |_, tag, m| share_offsets_expect(ApiKey::DeleteShareGroupOffsets, tag, m),
        check_forwarded: None,
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Every api the stage asks to see has a row; so does every forwarded api
/// but the handshake and client telemetry (which touch no resource).
#[test]
fn the_table_covers_every_api_the_stage_handles() {
    let unchecked = [
        ApiKey::ApiVersions,
        ApiKey::GetTelemetrySubscriptions,
        ApiKey::PushTelemetry,
    ];
    let mut forwarded: Vec<i16> = FORWARDED
        .iter()
        .filter(|k| !unchecked.contains(k))
        .map(|k| *k as i16)
        .collect();
    let mut have: Vec<i16> = table().iter().map(|a| a.key as i16).collect();
    let mut handled: Vec<i16> = stage(Scenario::DenyAll)
        .request_api_keys()
        .iter()
        .map(|k| *k as i16)
        .collect();
    forwarded.sort_unstable();
    have.sort_unstable();
    handled.sort_unstable();
    assert_eq!(have, forwarded, "the table against the forwarded apis");
    assert_eq!(have, handled, "the table against the stage's keys");
    let pairs: usize = table().iter().map(|a| versions(a.key).count()).sum();
    eprintln!("{} apis, {pairs} (api, version) pairs", have.len());
}

macro_rules! api_tests {
    ($($name:ident => $key:expr,)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                run($key).await;
            }
        )*
    };
}

api_tests! {
    produce_answers => ApiKey::Produce,
    fetch_answers => ApiKey::Fetch,
    list_offsets_answers => ApiKey::ListOffsets,
    metadata_answers => ApiKey::Metadata,
    offset_commit_answers => ApiKey::OffsetCommit,
    offset_fetch_answers => ApiKey::OffsetFetch,
    find_coordinator_answers => ApiKey::FindCoordinator,
    join_group_answers => ApiKey::JoinGroup,
    heartbeat_answers => ApiKey::Heartbeat,
    leave_group_answers => ApiKey::LeaveGroup,
    sync_group_answers => ApiKey::SyncGroup,
    describe_groups_answers => ApiKey::DescribeGroups,
    list_groups_answers => ApiKey::ListGroups,
    create_topics_answers => ApiKey::CreateTopics,
    delete_topics_answers => ApiKey::DeleteTopics,
    delete_records_answers => ApiKey::DeleteRecords,
    init_producer_id_answers => ApiKey::InitProducerId,
    offset_for_leader_epoch_answers => ApiKey::OffsetForLeaderEpoch,
    add_partitions_to_txn_answers => ApiKey::AddPartitionsToTxn,
    add_offsets_to_txn_answers => ApiKey::AddOffsetsToTxn,
    end_txn_answers => ApiKey::EndTxn,
    txn_offset_commit_answers => ApiKey::TxnOffsetCommit,
    describe_acls_answers => ApiKey::DescribeAcls,
    create_acls_answers => ApiKey::CreateAcls,
    delete_acls_answers => ApiKey::DeleteAcls,
    describe_configs_answers => ApiKey::DescribeConfigs,
    alter_configs_answers => ApiKey::AlterConfigs,
    alter_replica_log_dirs_answers => ApiKey::AlterReplicaLogDirs,
    describe_log_dirs_answers => ApiKey::DescribeLogDirs,
    create_partitions_answers => ApiKey::CreatePartitions,
    delete_groups_answers => ApiKey::DeleteGroups,
    elect_leaders_answers => ApiKey::ElectLeaders,
    incremental_alter_configs_answers => ApiKey::IncrementalAlterConfigs,
    alter_partition_reassignments_answers => ApiKey::AlterPartitionReassignments,
    list_partition_reassignments_answers => ApiKey::ListPartitionReassignments,
    offset_delete_answers => ApiKey::OffsetDelete,
    describe_client_quotas_answers => ApiKey::DescribeClientQuotas,
    alter_client_quotas_answers => ApiKey::AlterClientQuotas,
    describe_user_scram_credentials_answers => ApiKey::DescribeUserScramCredentials,
    alter_user_scram_credentials_answers => ApiKey::AlterUserScramCredentials,
    update_features_answers => ApiKey::UpdateFeatures,
    describe_producers_answers => ApiKey::DescribeProducers,
    describe_transactions_answers => ApiKey::DescribeTransactions,
    list_transactions_answers => ApiKey::ListTransactions,
    consumer_group_heartbeat_answers => ApiKey::ConsumerGroupHeartbeat,
    consumer_group_describe_answers => ApiKey::ConsumerGroupDescribe,
    list_config_resources_answers => ApiKey::ListConfigResources,
    describe_topic_partitions_answers => ApiKey::DescribeTopicPartitions,
    describe_cluster_answers => ApiKey::DescribeCluster,
    share_group_heartbeat_answers => ApiKey::ShareGroupHeartbeat,
    share_group_describe_answers => ApiKey::ShareGroupDescribe,
    share_fetch_answers => ApiKey::ShareFetch,
    share_acknowledge_answers => ApiKey::ShareAcknowledge,
    describe_share_group_offsets_answers => ApiKey::DescribeShareGroupOffsets,
    alter_share_group_offsets_answers => ApiKey::AlterShareGroupOffsets,
    delete_share_group_offsets_answers => ApiKey::DeleteShareGroupOffsets,
}

/// acks=0: the broker sends no answer, so a refusal closes the connection
/// (Kafka's behaviour); an allowed one is forwarded untouched.
#[tokio::test]
async fn acks_zero_produce_closes_when_anything_is_refused() {
    for v in versions(ApiKey::Produce) {
        for sc in SCENARIOS {
            let m = Model(sc);
            let stage = stage(sc);
            for txn in [None, Some("ok-x1"), Some("no-x1")] {
                let body = enc(v, produce_request(txn, 0));
                let mut req = Request::parse(frame(ApiKey::Produce, v, &body)).expect("parse");
                let allowed = TOPICS.iter().all(|(n, _)| m.topic(Operation::Write, n))
                    && txn.is_none_or(|x| m.txn(Operation::Write, x));
                let what = format!("v{v} {sc:?} {txn:?}");
                match stage.on_request(&alice(), &mut req).await {
                    Err(_) => assert!(!allowed, "{what}: closed an allowed produce"),
                    Ok(Verdict::Forward) => {
                        assert!(allowed, "{what}: forwarded a refused acks=0 produce");
                        assert!(req.amends.0.is_empty(), "{what}");
                        assert_eq!(req.body_bytes(), &body[..], "{what}");
                    }
                    Ok(Verdict::Respond(r)) => {
                        panic!("{what}: answered an acks=0 produce: {r:?}")
                    }
                }
            }
        }
    }
}

/// The docs: Fetch needs Read on each topic, "forgotten topics included".
// Forgotten topics only leave the fetch session; Kafka does not authorize
// them and neither does Custos (docs/authorization.md).
#[tokio::test]
async fn fetch_forgotten_topics_pass_undecided() {
    let engine =
        PolicyEngine::load(&Scenario::Partial.policies(), TopicCatalog::empty()).expect("policies");
    let sink = Arc::new(MemorySink::with_capacity(100));
    let stage = Authorize::new(
        Arc::new(Authorizer::new(engine)),
        sink.clone(),
        Arc::new(Metrics::new()),
    );
    for v in 7..=12 {
        let f = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(500)
            .with_topics(vec![fetch_request::FetchTopic::default()
                .with_topic(tn("ok-1"))
                .with_partitions(vec![
                    fetch_request::FetchPartition::default().with_partition(0)
                ])])
            .with_forgotten_topics_data(vec![fetch_request::ForgottenTopic::default()
                .with_topic(tn("no-9"))
                .with_partitions(vec![4])]);
        let body = enc(v, RequestKind::Fetch(f));
        let mut req = Request::parse(frame(ApiKey::Fetch, v, &body)).expect("parse");
        stage.on_request(&alice(), &mut req).await.expect("stage");
        let decided = sink.decisions().iter().any(|d| d.resource == "no-9");
        assert!(!decided, "v{v}: a forgotten topic was decided");
        assert_eq!(
            req.body_bytes(),
            &body[..],
            "v{v}: the fetch must pass untouched"
        );
    }
}

/// Kafka answers a described group whose members are assigned (now or as
/// a target) a topic the caller may not describe with
/// TOPIC_AUTHORIZATION_FAILED, its message and no members, so no topic name
/// or ownership shows; groups whose assignments are all describable come
/// back untouched. Consumer groups (KIP-848) and share groups (KIP-932).
#[tokio::test]
async fn groups_assigned_undescribable_topics_are_withheld_whole() {
    use consumer_group_describe_response as cg;
    use share_group_describe_response as sg;
    let stage = stage(Scenario::Partial);
    let withheld =
        "The group has described topic(s) that the client is not authorized to describe.";
    let amended = |req: &mut Request, mut answer: ResponseKind| {
        for amend in std::mem::take(&mut req.amends.0) {
            amend(&mut answer).expect("amend");
        }
        answer
    };

    // Current and target assignment of each group's one member.
    let groups = [
        ("ok-a", "ok-1", "ok-2"),
        ("ok-b", "ok-1", "no-1"),
        ("ok-c", "no-2", "ok-1"),
    ];
    let v = ApiKey::ConsumerGroupDescribe.valid_versions().max;
    let body = enc(
        v,
        RequestKind::ConsumerGroupDescribe(
            ConsumerGroupDescribeRequest::default()
                .with_group_ids(groups.iter().map(|g| gid(g.0)).collect()),
        ),
    );
    let mut req = Request::parse(frame(ApiKey::ConsumerGroupDescribe, v, &body)).expect("parse");
    assert!(matches!(
        stage.on_request(&alice(), &mut req).await,
        Ok(Verdict::Forward)
    ));
    let assignment = |topic: &str| {
        cg::Assignment::default().with_topic_partitions(vec![cg::TopicPartitions::default()
            .with_topic_name(tn(topic))
            .with_partitions(vec![0, 1])])
    };
    let described: Vec<_> = groups
        .iter()
        .map(|(g, current, target)| {
            cg::DescribedGroup::default()
                .with_group_id(gid(g))
                .with_group_state(s("Stable"))
                .with_members(vec![cg::Member::default()
                    .with_member_id(s("m-1"))
                    .with_assignment(assignment(current))
                    .with_target_assignment(assignment(target))])
        })
        .collect();
    let answer = ResponseKind::ConsumerGroupDescribe(
        ConsumerGroupDescribeResponse::default().with_groups(described.clone()),
    );
    let ResponseKind::ConsumerGroupDescribe(got) = amended(&mut req, answer) else {
        panic!("not a consumer group answer")
    };
    assert_eq!(
        got.groups[0], described[0],
        "all assigned topics describable"
    );
    for (i, g) in [(1, "ok-b"), (2, "ok-c")] {
        assert_eq!(
            got.groups[i],
            cg::DescribedGroup::default()
                .with_group_id(gid(g))
                .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                .with_error_message(Some(s(withheld))),
            "{g}"
        );
    }

    let v = ApiKey::ShareGroupDescribe.valid_versions().max;
    let body = enc(
        v,
        RequestKind::ShareGroupDescribe(
            ShareGroupDescribeRequest::default().with_group_ids(vec![gid("ok-a"), gid("ok-b")]),
        ),
    );
    let mut req = Request::parse(frame(ApiKey::ShareGroupDescribe, v, &body)).expect("parse");
    assert!(matches!(
        stage.on_request(&alice(), &mut req).await,
        Ok(Verdict::Forward)
    ));
    let described: Vec<_> = [("ok-a", "ok-1"), ("ok-b", "no-1")]
        .iter()
        .map(|(g, topic)| {
            sg::DescribedGroup::default()
                .with_group_id(gid(g))
                .with_group_state(s("Stable"))
                .with_members(vec![sg::Member::default()
                    .with_member_id(s("m-1"))
                    .with_assignment(sg::Assignment::default().with_topic_partitions(
                        vec![
                        sg::TopicPartitions::default()
                            .with_topic_name(tn(topic))
                            .with_partitions(vec![0]),
                    ],
                    ))])
        })
        .collect();
    let answer = ResponseKind::ShareGroupDescribe(
        ShareGroupDescribeResponse::default().with_groups(described.clone()),
    );
    let ResponseKind::ShareGroupDescribe(got) = amended(&mut req, answer) else {
        panic!("not a share group answer")
    };
    assert_eq!(got.groups[0], described[0]);
    assert_eq!(
        got.groups[1],
        sg::DescribedGroup::default()
            .with_group_id(gid("ok-b"))
            .with_error_code(TOPIC_AUTHORIZATION_FAILED)
            .with_error_message(Some(s(withheld)))
    );
}
