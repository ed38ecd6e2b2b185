//! Encrypt and decrypt stage tests: Produce requests and Fetch responses
//! encoded with `kafka-protocol`, record batches built with `record_batch`,
//! real keys (a local keyring and a subject store in a temporary directory)
//! and a KMS that is down.

use std::path::Path;

use crate::record_batch::Segment;
use bytes::BytesMut;
use custos_crypto::envelope;
use custos_crypto::keyring::{LocalKeyring, MasterKey};
use custos_crypto::keys::{KeyManager, Rotation};
use custos_crypto::kms::{DataKey, EncryptionContext, Kms, KmsError, WrappedKey, DEK_LEN};
use custos_crypto::subject_store::SubjectKeyStore;
use custos_policy::{Authorizer, PolicyEngine, TopicCatalog};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{FetchResponse, ProduceRequest, RequestHeader};
use kafka_protocol::protocol::Encodable;
use zeroize::Zeroizing;

use super::*;
use crate::field_rules::{RuleConfig, RuleSet, UNDECRYPTABLE};
use crate::message::Response;
use crate::pipeline::SessionInfo;
use crate::record_batch::{Batch, BatchHeader, Compression, Header, Record};
use crate::stages::decrypt::Decrypt;

const RULES: &str = "
- {name: values, topics: {prefix: \"enc.\"}, kek: kek, value: true, headers: [pii]}
- {name: customers, topics: {prefix: \"cust.\"}, kek: kek, json_fields: [\"$.email\"], mask: {keep_last: 4}}
- {name: profiles, topics: {prefix: \"prof.\"}, kek: kek, json_fields: [\"$.name\"], subject: {json_field: \"$.id\"}}
- {name: cards, topics: {prefix: \"card.\"}, kek: kek, classification: pci, value: true}
";

const POLICIES: &str = r#"
    @id("alice-decrypts")
    permit (principal == User::"alice", action == Action::"Decrypt", resource is Topic);
    @id("carol-sees-cards")
    permit (principal == User::"carol", action == Action::"Decrypt", resource is Topic)
    when { context.classification == "pci" };
"#;

// ---------------------------------------------------------------- fixtures

/// A KMS that is unreachable.
struct DownKms;

#[async_trait]
impl Kms for DownKms {
    fn name(&self) -> &'static str {
        "down"
    }
    async fn generate_data_key(
        &self,
        _kek_id: &str,
        _context: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        Err(KmsError::Unavailable("connection refused".into()))
    }
    async fn decrypt_data_key(
        &self,
        _wrapped: &WrappedKey,
        _context: &EncryptionContext,
    ) -> Result<Zeroizing<[u8; DEK_LEN]>, KmsError> {
        Err(KmsError::Unavailable("connection refused".into()))
    }
    async fn rewrap(
        &self,
        _wrapped: &WrappedKey,
        _to_kek_id: Option<&str>,
        _context: &EncryptionContext,
    ) -> Result<WrappedKey, KmsError> {
        Err(KmsError::Unavailable("connection refused".into()))
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    protection: Arc<Protection>,
    down: Arc<Protection>,
    metrics: Arc<Metrics>,
}

fn protection(kms: Arc<dyn Kms>, store: Arc<SubjectKeyStore>) -> Arc<Protection> {
    let rules: Vec<RuleConfig> = serde_yaml_ng::from_str(RULES).expect("rules yaml");
    Arc::new(Protection {
        rules: RuleSet::compile(&rules).expect("rules"),
        keys: Arc::new(
            KeyManager::new(kms, Rotation::default(), Some(store.clone())).expect("manager"),
        ),
        subjects: Some(store),
        tokenizer: None,
        max_encryptions: Rotation::default().max_encryptions,
        keyring: None,
    })
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let keyring = Arc::new(
        LocalKeyring::init(
            &dir.path().join("keyring.json"),
            MasterKey::from_bytes([6; 32]),
        )
        .expect("keyring"),
    );
    keyring.create("kek").expect("kek");
    let store = Arc::new(open_store(dir.path()));
    Fixture {
        protection: protection(keyring, store.clone()),
        down: protection(Arc::new(DownKms), store),
        _dir: dir,
        metrics: Arc::new(Metrics::new()),
    }
}

fn open_store(dir: &Path) -> SubjectKeyStore {
    SubjectKeyStore::open(&dir.join("subjects"), &[8; 32]).expect("store")
}

impl Fixture {
    fn encrypt(&self) -> Encrypt {
        Encrypt::new(self.protection.clone(), self.metrics.clone())
    }

    fn decrypt(&self, authorizer: bool) -> Decrypt {
        let a = authorizer.then(|| {
            Arc::new(Authorizer::new(
                PolicyEngine::load(POLICIES, TopicCatalog::empty()).expect("policies"),
            ))
        });
        Decrypt::new(self.protection.clone(), a, self.metrics.clone())
    }
}

fn session(user: &str) -> SessionInfo {
    let mut id = crate::auth::Identity::anonymous();
    id.name = user.into();
    id.method = crate::auth::AuthMethod::ScramSha512;
    SessionInfo::new(
        7,
        "10.0.0.9:5000".parse().expect("addr"),
        Some(1),
        false,
        id,
    )
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn by(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn record(i: i32, key: Option<&str>, value: Option<&str>, headers: &[(&str, &str)]) -> Record {
    Record {
        attributes: 0,
        timestamp_delta: i64::from(i) * 3,
        offset_delta: i,
        key: key.map(by),
        value: value.map(by),
        headers: headers
            .iter()
            .map(|(k, v)| Header {
                key: by(k),
                value: Some(by(v)),
            })
            .collect(),
    }
}

/// A batch header as an idempotent, transactional producer writes it.
fn batch_header(codec: Compression, n: i32) -> BatchHeader {
    BatchHeader {
        base_offset: 0,
        batch_length: 0,
        partition_leader_epoch: -1,
        magic: 2,
        crc: 0,
        attributes: codec.id() | 0x10,
        last_offset_delta: n - 1,
        base_timestamp: 1_700_000_000_000,
        max_timestamp: 1_700_000_000_000 + i64::from(n - 1) * 3,
        producer_id: 4242,
        producer_epoch: 3,
        base_sequence: 17,
        record_count: n,
    }
}

fn batch_bytes(codec: Compression, records: Vec<Record>) -> Bytes {
    let n = i32::try_from(records.len()).expect("count");
    Batch {
        header: batch_header(codec, n),
        records,
        original: Bytes::new(),
        dirty: true,
    }
    .to_bytes()
    .expect("encode batch")
}

fn only_batch(records: &Bytes) -> Batch {
    let segs = record_batch::decode(records).expect("decode");
    assert_eq!(segs.len(), 1, "one batch expected");
    match segs.into_iter().next() {
        Some(Segment::Batch(b)) => b,
        other => panic!("not a data batch: {other:?}"),
    }
}

fn value_of(r: &Record) -> &[u8] {
    r.value.as_deref().expect("value")
}

/// A Produce request carrying one partition (index 0) per (topic, records).
fn produce(version: i16, acks: i16, parts: &[(&str, &Bytes)]) -> Request {
    let body = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5000)
        .with_topic_data(
            parts
                .iter()
                .map(|(t, records)| {
                    TopicProduceData::default()
                        .with_name(TopicName(sb(t)))
                        .with_partition_data(vec![PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some((*records).clone()))])
                })
                .collect(),
        );
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(version)
        .with_correlation_id(42)
        .with_client_id(Some(sb("unit")));
    let mut b = BytesMut::new();
    header
        .encode(&mut b, ApiKey::Produce.request_header_version(version))
        .expect("header");
    body.encode(&mut b, version).expect("body");
    Request::parse(b.freeze()).expect("parse")
}

/// The (topic, records) a forwarded Produce request carries, as the broker
/// would decode them from the bytes on the wire.
fn forwarded(req: Request) -> Vec<(String, Bytes)> {
    let raw = req.into_bytes().expect("encode");
    let mut again = Request::parse(raw).expect("reparse");
    let RequestKind::Produce(p) = again.body().expect("body") else {
        panic!("not a produce request")
    };
    p.topic_data
        .iter()
        .flat_map(|t| {
            t.partition_data.iter().map(|pd| {
                (
                    t.name.0.as_str().to_string(),
                    pd.records.clone().expect("records"),
                )
            })
        })
        .collect()
}

async fn encrypt_one(f: &Fixture, topic: &str, batch: &Bytes) -> Bytes {
    let mut req = produce(12, -1, &[(topic, batch)]);
    let v = f
        .encrypt()
        .on_request(&session("alice"), &mut req)
        .await
        .expect("encrypt");
    assert!(matches!(v, Verdict::Forward));
    forwarded(req).remove(0).1
}

/// A Fetch response (v12) with partition 0 of each (topic, records).
fn fetch_response(parts: &[(&str, &Bytes)]) -> Response {
    let body = FetchResponse::default().with_responses(
        parts
            .iter()
            .map(|(t, records)| {
                FetchableTopicResponse::default()
                    .with_topic(TopicName(sb(t)))
                    .with_partitions(vec![PartitionData::default()
                        .with_partition_index(0)
                        .with_high_watermark(100)
                        .with_records(Some((*records).clone()))])
            })
            .collect(),
    );
    let raw = Response::encode_local(ApiKey::Fetch, 12, 9, &ResponseKind::Fetch(body))
        .expect("encode fetch");
    Response::parse(raw, ApiKey::Fetch, 12).expect("parse fetch")
}

/// Runs `stage` over a Fetch response and returns (topic, error, records)
/// as the client would decode them.
async fn fetched(
    stage: &Decrypt,
    user: &str,
    parts: &[(&str, &Bytes)],
) -> Vec<(String, i16, Bytes)> {
    let mut resp = fetch_response(parts);
    stage
        .on_response(&session(user), &mut resp)
        .await
        .expect("decrypt");
    let raw = resp.into_bytes().expect("encode");
    let mut again = Response::parse(raw, ApiKey::Fetch, 12).expect("reparse");
    let ResponseKind::Fetch(f) = again.body().expect("body") else {
        panic!("not a fetch response")
    };
    f.responses
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    t.topic.0.as_str().to_string(),
                    p.error_code,
                    p.records.clone().unwrap_or_default(),
                )
            })
        })
        .collect()
}

fn value_records() -> Vec<Record> {
    (0..3)
        .map(|i| {
            record(
                i,
                Some(&format!("key-{i}")),
                Some(&format!("secret value {i}")),
                &[("pii", "555-0100"), ("trace", "t"), ("pii", "second")],
            )
        })
        .collect()
}

const CODECS: [Compression; 5] = [
    Compression::None,
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];

// -------------------------------------------------------------------- produce

#[tokio::test]
async fn produce_forwards_envelopes_and_keeps_the_batch_header() {
    let f = fixture();
    for codec in CODECS {
        for version in [3, 9, 12] {
            let original = value_records();
            let batch = batch_bytes(codec, original.clone());
            let mut req = produce(version, -1, &[("enc.orders", &batch)]);
            let v = f
                .encrypt()
                .on_request(&session("alice"), &mut req)
                .await
                .expect("encrypt");
            assert!(matches!(v, Verdict::Forward), "{codec} v{version}");
            let out = forwarded(req);
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].0, "enc.orders");
            let sent = only_batch(&out[0].1);
            let before = only_batch(&batch);
            // Every header field a broker checks for idempotence and
            // transactions is as the producer wrote it; only length and CRC
            // follow the new contents.
            let (mut a, mut b) = (sent.header.clone(), before.header.clone());
            assert_ne!(a.crc, b.crc);
            (a.crc, a.batch_length, b.crc, b.batch_length) = (0, 0, 0, 0);
            assert_eq!(a, b, "{codec} v{version}");
            assert_eq!(sent.compression().expect("codec"), codec);
            assert!(sent.is_transactional());
            assert_eq!(sent.records.len(), original.len());
            for (s, o) in sent.records.iter().zip(&original) {
                assert!(envelope::is_envelope(value_of(s)), "value sealed");
                assert!(!String::from_utf8_lossy(value_of(s)).contains("secret"));
                assert_eq!(s.key, o.key, "key not in the rule");
                assert_eq!(
                    (s.timestamp_delta, s.offset_delta, s.attributes),
                    (o.timestamp_delta, o.offset_delta, o.attributes)
                );
                assert_eq!(s.headers.len(), 3, "duplicate header keys kept");
                assert!(envelope::is_envelope(
                    s.headers[0].value.as_deref().expect("h")
                ));
                assert_eq!(s.headers[1], o.headers[1], "unnamed header untouched");
                assert!(envelope::is_envelope(
                    s.headers[2].value.as_deref().expect("h")
                ));
            }
        }
    }
}

#[tokio::test]
async fn invalid_json_fails_the_partition_with_invalid_record_and_nothing_is_forwarded() {
    let f = fixture();
    let batch = batch_bytes(
        Compression::None,
        vec![
            record(0, None, Some("{\"email\":\"a@b.c\"}"), &[]),
            record(1, None, Some("{\"email\": oops}"), &[]),
            record(2, None, Some("{\"email\":\"d@e.f\"}"), &[]),
        ],
    );
    // Alone in its request: Custos answers, the broker sees nothing.
    let mut req = produce(12, -1, &[("cust.a", &batch)]);
    let v = f
        .encrypt()
        .on_request(&session("alice"), &mut req)
        .await
        .expect("encrypt");
    let Verdict::Respond(answer) = v else {
        panic!("an unparsable record must not be forwarded")
    };
    let ResponseKind::Produce(p) = *answer else {
        panic!("not a produce response")
    };
    assert_eq!(p.responses.len(), 1);
    assert_eq!(p.responses[0].name.0.as_str(), "cust.a");
    let part = &p.responses[0].partition_responses[0];
    assert_eq!(part.error_code, INVALID_RECORD);
    assert_eq!(part.error_code, 87);
    assert_eq!(part.base_offset, -1);
    assert_eq!(part.record_errors.len(), 1);
    assert_eq!(part.record_errors[0].batch_index, 1);
    let msg = part.record_errors[0]
        .batch_index_error_message
        .as_ref()
        .expect("message");
    assert!(msg.as_str().starts_with("value is not valid JSON"), "{msg}");
    assert!(
        !msg.as_str().contains("oops"),
        "no payload in errors: {msg}"
    );
    assert!(f
        .metrics
        .encode()
        .contains("custos_encrypt_failures_total{reason=\"invalid_record\"} 1"));

    // Beside an unprotected topic: that one is forwarded, the failed
    // partition is cut out and its answer merged into the broker's.
    let logs = batch_bytes(Compression::None, vec![record(0, None, Some("log"), &[])]);
    let mut req = produce(12, -1, &[("cust.a", &batch), ("logs", &logs)]);
    let v = f
        .encrypt()
        .on_request(&session("alice"), &mut req)
        .await
        .expect("encrypt");
    assert!(matches!(v, Verdict::Forward));
    let amends = std::mem::take(&mut req.amends.0);
    let out = forwarded(req);
    assert_eq!(out, vec![("logs".to_string(), logs.clone())]);
    let mut broker = ResponseKind::Produce(ProduceResponse::default().with_responses(vec![
        TopicProduceResponse::default()
            .with_name(TopicName(sb("logs")))
            .with_partition_responses(vec![PartitionProduceResponse::default().with_index(0)]),
    ]));
    for a in amends {
        a(&mut broker).expect("amend");
    }
    let ResponseKind::Produce(p) = broker else {
        panic!("produce")
    };
    let codes: Vec<_> = p
        .responses
        .iter()
        .map(|t| {
            (
                t.name.0.as_str().to_string(),
                t.partition_responses[0].error_code,
            )
        })
        .collect();
    assert_eq!(
        codes,
        vec![("logs".to_string(), 0), ("cust.a".to_string(), 87)]
    );
}

/// A batch that claims more records than its bytes could hold is refused
/// before any data key is reserved for them (so even with the KMS down the
/// answer is INVALID_RECORD, not a retriable key error), and a corrupt one
/// (CRC) is refused too; nothing is forwarded.
#[tokio::test]
async fn a_batch_claiming_records_it_cannot_hold_is_refused_before_keys_are_reserved() {
    let f = fixture();
    let batch = batch_bytes(
        Compression::None,
        vec![record(0, None, Some("{\"email\":\"a@b.c\"}"), &[])],
    );
    let mut claims = BytesMut::from(&batch[..]);
    claims[57..61].copy_from_slice(&1_000_000i32.to_be_bytes());
    let mut corrupt = BytesMut::from(&batch[..]);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    let up = f.encrypt();
    let down = Encrypt::new(f.down.clone(), f.metrics.clone());
    for (what, stage, bad, reason) in [
        ("claims", &down, claims.freeze(), "record count"),
        ("corrupt", &up, corrupt.freeze(), "CRC"),
    ] {
        let mut req = produce(12, -1, &[("cust.a", &bad)]);
        let v = stage
            .on_request(&session("alice"), &mut req)
            .await
            .expect("encrypt");
        let Verdict::Respond(answer) = v else {
            panic!("{what}: must not be forwarded")
        };
        let ResponseKind::Produce(p) = *answer else {
            panic!("not a produce response")
        };
        let part = &p.responses[0].partition_responses[0];
        assert_eq!(part.error_code, INVALID_RECORD, "{what}");
        let msg = part.error_message.as_ref().expect("message");
        assert!(
            msg.as_str()
                .starts_with("custos: record batch cannot be read")
                && msg.as_str().to_lowercase().contains(&reason.to_lowercase()),
            "{what}: {msg}"
        );
    }
}

#[tokio::test]
async fn a_topic_without_a_rule_is_forwarded_byte_identical() {
    let f = fixture();
    let logs = batch_bytes(Compression::Gzip, value_records());
    let mut req = produce(12, -1, &[("logs", &logs)]);
    let raw = req.raw().clone();
    let v = f
        .encrypt()
        .on_request(&session("alice"), &mut req)
        .await
        .expect("encrypt");
    assert!(matches!(v, Verdict::Forward));
    let out = req.into_bytes().expect("bytes");
    // Not even re-encoded: the very buffer that arrived goes on.
    assert_eq!(out.as_ptr(), raw.as_ptr());
    assert_eq!(out, raw);

    // Beside a protected topic, its records still pass byte for byte.
    let enc = batch_bytes(Compression::None, value_records());
    let mut req = produce(12, -1, &[("enc.a", &enc), ("logs", &logs)]);
    f.encrypt()
        .on_request(&session("alice"), &mut req)
        .await
        .expect("encrypt");
    let out = forwarded(req);
    assert_eq!(out[1], ("logs".to_string(), logs));
    assert_ne!(out[0].1, enc);
}

#[tokio::test]
async fn a_kms_outage_fails_produce_with_a_retriable_error_and_forwards_nothing() {
    let f = fixture();
    let stage = Encrypt::new(f.down.clone(), f.metrics.clone());
    let batch = batch_bytes(Compression::None, value_records());
    let mut req = produce(12, -1, &[("enc.a", &batch)]);
    let v = stage
        .on_request(&session("alice"), &mut req)
        .await
        .expect("encrypt");
    let Verdict::Respond(answer) = v else {
        panic!("nothing may be forwarded without a key")
    };
    let ResponseKind::Produce(p) = *answer else {
        panic!("produce")
    };
    let part = &p.responses[0].partition_responses[0];
    assert_eq!(part.error_code, KAFKA_STORAGE_ERROR);
    assert_eq!(part.error_code, 56);
    let msg = part.error_message.as_ref().expect("message");
    assert!(msg.as_str().contains("retry later"), "{msg}");
    assert!(part.record_errors.is_empty());
    // Per-subject keys need the KMS too.
    let prof = batch_bytes(
        Compression::None,
        vec![record(
            0,
            None,
            Some("{\"id\":\"u1\",\"name\":\"Ann\"}"),
            &[],
        )],
    );
    let mut req = produce(12, -1, &[("prof.a", &prof)]);
    let v = stage
        .on_request(&session("alice"), &mut req)
        .await
        .expect("encrypt");
    let Verdict::Respond(answer) = v else {
        panic!("nothing may be forwarded without a key")
    };
    let ResponseKind::Produce(p) = *answer else {
        panic!("produce")
    };
    assert_eq!(p.responses[0].partition_responses[0].error_code, 56);
    assert!(f
        .metrics
        .encode()
        .contains("custos_encrypt_failures_total{reason=\"key\"} 2"));
}

#[tokio::test]
async fn an_acks_zero_produce_that_cannot_be_protected_closes_the_connection() {
    let f = fixture();
    let stage = Encrypt::new(f.down.clone(), f.metrics.clone());
    let batch = batch_bytes(Compression::None, value_records());
    let mut req = produce(12, 0, &[("enc.a", &batch)]);
    let err = stage
        .on_request(&session("alice"), &mut req)
        .await
        .expect_err("acks=0 cannot be answered");
    assert_eq!(err.stage, "encrypt");
}

// ---------------------------------------------------------------------- fetch

#[tokio::test]
async fn fetch_shows_plaintext_to_decrypt_holders_and_masks_to_others() {
    let f = fixture();
    let values = batch_bytes(Compression::None, value_records());
    let customers = batch_bytes(
        Compression::Zstd,
        vec![
            record(
                0,
                None,
                Some("{\"email\":\"ann@example.com\",\"n\":1}"),
                &[],
            ),
            record(1, None, None, &[]),
        ],
    );
    let logs = batch_bytes(Compression::None, vec![record(0, None, Some("log"), &[])]);
    let stored_values = encrypt_one(&f, "enc.a", &values).await;
    let stored_customers = encrypt_one(&f, "cust.a", &customers).await;
    let parts = [
        ("enc.a", &stored_values),
        ("cust.a", &stored_customers),
        ("logs", &logs),
    ];

    // alice may Decrypt: byte-identical batches come back.
    let got = fetched(&f.decrypt(true), "alice", &parts).await;
    assert_eq!(got[0], ("enc.a".to_string(), 0, values.clone()));
    assert_eq!(got[2], ("logs".to_string(), 0, logs.clone()));
    let c = only_batch(&got[1].2);
    assert_eq!(
        value_of(&c.records[0]),
        b"{\"email\":\"ann@example.com\",\"n\":1}"
    );
    assert_eq!(c.records[1].value, None, "a tombstone stays a tombstone");
    assert_eq!(c.compression().expect("codec"), Compression::Zstd);

    // bob may read but not Decrypt: masks.
    for (user, authorizer) in [("bob", true), ("alice", false)] {
        let got = fetched(&f.decrypt(authorizer), user, &parts).await;
        let v = only_batch(&got[0].2);
        for r in &v.records {
            assert_eq!(value_of(r), b"***");
            assert_eq!(r.headers[0].value.as_deref(), Some(&b"***"[..]));
            assert_eq!(r.headers[1].value.as_deref(), Some(&b"t"[..]));
            assert_eq!(r.headers[2].value.as_deref(), Some(&b"***"[..]));
        }
        let (mut a, mut b) = (v.header.clone(), only_batch(&values).header);
        (a.crc, a.batch_length, b.crc, b.batch_length) = (0, 0, 0, 0);
        assert_eq!(a, b);
        let c = only_batch(&got[1].2);
        assert_eq!(
            value_of(&c.records[0]),
            b"{\"email\":\"***********.com\",\"n\":1}"
        );
        assert_eq!(got[2].2, logs);
    }
    let text = f.metrics.encode();
    assert!(
        text.contains("custos_revealed_plaintext_records_total 5"),
        "{text}"
    );
    assert!(
        text.contains("custos_revealed_masked_records_total 10"),
        "{text}"
    );
}

#[tokio::test]
async fn a_partial_trailing_batch_is_passed_on_after_the_revealed_ones() {
    let f = fixture();
    let values = batch_bytes(Compression::Lz4, value_records());
    let stored = encrypt_one(&f, "enc.a", &values).await;
    // The broker cut the response inside the next batch.
    let mut blob = BytesMut::new();
    blob.extend_from_slice(&stored);
    blob.extend_from_slice(&stored[..40]);
    let blob = blob.freeze();
    let got = fetched(&f.decrypt(true), "alice", &[("enc.a", &blob)]).await;
    assert_eq!(got[0].1, 0);
    let mut want = BytesMut::new();
    want.extend_from_slice(&values);
    want.extend_from_slice(&stored[..40]);
    assert_eq!(got[0].2, want.freeze());
}

#[tokio::test]
async fn a_kms_outage_fails_the_fetch_partition_with_a_retriable_error() {
    let f = fixture();
    let values = batch_bytes(Compression::None, value_records());
    let stored = encrypt_one(&f, "enc.a", &values).await;
    let logs = batch_bytes(Compression::None, vec![record(0, None, Some("log"), &[])]);
    for authorizer in [true, false] {
        let stage = Decrypt::new(
            f.down.clone(),
            authorizer.then(|| {
                Arc::new(Authorizer::new(
                    PolicyEngine::load(POLICIES, TopicCatalog::empty()).expect("policies"),
                ))
            }),
            f.metrics.clone(),
        );
        let got = fetched(&stage, "alice", &[("enc.a", &stored), ("logs", &logs)]).await;
        // Neither plaintext nor ciphertext nor a mask: no records, retriable.
        assert_eq!(
            got[0],
            ("enc.a".to_string(), KAFKA_STORAGE_ERROR, Bytes::new())
        );
        assert_eq!(got[0].1, 56);
        assert_eq!(got[1], ("logs".to_string(), 0, logs.clone()));
    }
    assert!(f
        .metrics
        .encode()
        .contains("custos_decrypt_failures_total 2"));
}

#[tokio::test]
async fn a_batch_copied_to_another_protected_topic_reads_as_undecryptable() {
    let f = fixture();
    let values = batch_bytes(Compression::None, value_records());
    let stored = encrypt_one(&f, "enc.a", &values).await;
    // The same bytes under another topic of the same rule (a mirror, or a
    // producer writing to the broker directly): bound to enc.a, they do not
    // open, and the consumer gets a placeholder rather than a stuck partition.
    let got = fetched(&f.decrypt(true), "alice", &[("enc.b", &stored)]).await;
    assert_eq!(got[0].1, 0, "not a retriable error: retrying cannot help");
    for r in &only_batch(&got[0].2).records {
        assert_eq!(value_of(r), UNDECRYPTABLE);
        assert_eq!(r.headers[0].value.as_deref(), Some(UNDECRYPTABLE));
    }
}

#[tokio::test]
async fn per_subject_records_decrypt_until_the_subject_is_shredded() {
    let f = fixture();
    let batch = batch_bytes(
        Compression::Snappy,
        vec![
            record(0, None, Some("{\"id\":\"u1\",\"name\":\"Ann\"}"), &[]),
            record(1, None, Some("{\"id\":\"u2\",\"name\":\"Bob\"}"), &[]),
        ],
    );
    let stored = encrypt_one(&f, "prof.a", &batch).await;
    let sent = only_batch(&stored);
    assert!(!String::from_utf8_lossy(value_of(&sent.records[0])).contains("Ann"));
    let got = fetched(&f.decrypt(true), "alice", &[("prof.a", &stored)]).await;
    assert_eq!(got[0].2, batch);
    let receipt = f
        .protection
        .subjects
        .as_ref()
        .expect("store")
        .shred(b"u1")
        .await
        .expect("shred");
    assert_eq!(receipt.versions_destroyed, vec![1]);
    let got = fetched(&f.decrypt(true), "alice", &[("prof.a", &stored)]).await;
    let b = only_batch(&got[0].2);
    assert_eq!(
        value_of(&b.records[0]),
        b"{\"id\":\"u1\",\"name\":\"custos:erased\"}"
    );
    assert_eq!(value_of(&b.records[1]), b"{\"id\":\"u2\",\"name\":\"Bob\"}");
    // A record without its subject id cannot be protected.
    let nosub = batch_bytes(
        Compression::None,
        vec![record(0, None, Some("{\"name\":\"Eve\"}"), &[])],
    );
    let mut req = produce(12, -1, &[("prof.a", &nosub)]);
    let v = f
        .encrypt()
        .on_request(&session("alice"), &mut req)
        .await
        .expect("encrypt");
    let Verdict::Respond(answer) = v else {
        panic!("no subject: not forwarded")
    };
    let ResponseKind::Produce(p) = *answer else {
        panic!("produce")
    };
    assert_eq!(p.responses[0].partition_responses[0].error_code, 87);
}

#[tokio::test]
async fn a_tombstone_in_a_per_subject_topic_reaches_the_broker_as_a_tombstone() {
    let f = fixture();
    let batch = batch_bytes(
        Compression::None,
        vec![
            record(0, Some("u1"), None, &[]),
            record(1, Some("u2"), Some("{\"id\":\"u2\",\"name\":\"Bob\"}"), &[]),
        ],
    );
    let stored = encrypt_one(&f, "prof.a", &batch).await;
    let sent = only_batch(&stored);
    assert_eq!(sent.records[0].value, None);
    assert_eq!(sent.records[0].key.as_deref(), Some(&b"u1"[..]));
    assert!(!String::from_utf8_lossy(value_of(&sent.records[1])).contains("Bob"));
    let got = fetched(&f.decrypt(true), "alice", &[("prof.a", &stored)]).await;
    assert_eq!(got[0].2, batch);
}

/// Many batches of 1 KiB values under one topic: (plaintext blob, blob as
/// the broker holds it).
async fn large_partition(f: &Fixture, topic: &str, batches: usize) -> (Bytes, Bytes) {
    let mut plain = BytesMut::new();
    let mut stored = BytesMut::new();
    for b in 0..batches {
        let records: Vec<Record> = (0..8)
            .map(|i| {
                let v = format!("{topic}-{b}-{i}-{}", "x".repeat(1000));
                record(i, Some("k"), Some(&v), &[("pii", "secret"), ("t", "t")])
            })
            .collect();
        let batch = batch_bytes(Compression::None, records);
        plain.extend_from_slice(&batch);
        stored.extend_from_slice(&encrypt_one(f, topic, &batch).await);
    }
    (plain.freeze(), stored.freeze())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_answer_is_revealed_in_pieces_laid_back_in_order() {
    let f = fixture();
    // 2 x 40 batches of 8 KiB: above the size revealed in parallel.
    let (plain_a, stored_a) = large_partition(&f, "enc.a", 40).await;
    let (plain_b, stored_b) = large_partition(&f, "enc.b", 40).await;
    let logs = batch_bytes(Compression::None, vec![record(0, None, Some("log"), &[])]);
    assert!(stored_a.len() + stored_b.len() >= 2 * (256 << 10) / 2);
    assert!(record_batch::split_batches(&stored_a, 2).len() == 2);
    let parts = [("enc.a", &stored_a), ("logs", &logs), ("enc.b", &stored_b)];
    let got = fetched(&f.decrypt(true), "alice", &parts).await;
    assert_eq!(got[0], ("enc.a".to_string(), 0, plain_a));
    assert_eq!(got[1], ("logs".to_string(), 0, logs.clone()));
    assert_eq!(got[2], ("enc.b".to_string(), 0, plain_b));
    // Masked, every record of every piece is masked.
    let got = fetched(&f.decrypt(true), "bob", &parts).await;
    let mut n = 0;
    for seg in record_batch::decode(&got[0].2).expect("decode") {
        let record_batch::Segment::Batch(b) = seg else {
            panic!("raw segment")
        };
        for r in &b.records {
            assert_eq!(value_of(r), b"***");
            n += 1;
        }
    }
    assert_eq!(n, 320);
    // No key: both partitions withheld whole, none answered in part.
    let stage = Decrypt::new(f.down.clone(), None, f.metrics.clone());
    let got = fetched(&stage, "alice", &parts).await;
    assert_eq!(
        got[0],
        ("enc.a".to_string(), KAFKA_STORAGE_ERROR, Bytes::new())
    );
    assert_eq!(got[1], ("logs".to_string(), 0, logs));
    assert_eq!(
        got[2],
        ("enc.b".to_string(), KAFKA_STORAGE_ERROR, Bytes::new())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_subjects_in_one_answer_are_looked_up_in_one_round() {
    let f = fixture();
    let mut plain = BytesMut::new();
    let mut stored = BytesMut::new();
    for b in 0..40 {
        let records: Vec<Record> = (0..8)
            .map(|i| {
                let v = format!(
                    "{{\"id\":\"user-{b}-{i}\",\"name\":\"Name {b} {i}\",\"pad\":\"{}\"}}",
                    "p".repeat(1000)
                );
                record(i, None, Some(&v), &[])
            })
            .collect();
        let batch = batch_bytes(Compression::None, records);
        plain.extend_from_slice(&batch);
        stored.extend_from_slice(&encrypt_one(&f, "prof.a", &batch).await);
    }
    let (plain, stored) = (plain.freeze(), stored.freeze());
    let got = fetched(&f.decrypt(true), "alice", &[("prof.a", &stored)]).await;
    assert_eq!(got[0], ("prof.a".to_string(), 0, plain));
}

#[tokio::test]
async fn decrypt_policies_see_the_rule_classification() {
    let f = fixture();
    let values = batch_bytes(Compression::None, value_records());
    let cards = batch_bytes(
        Compression::None,
        vec![record(0, None, Some("4111-1111-1111-1111"), &[])],
    );
    let stored_values = encrypt_one(&f, "enc.a", &values).await;
    let stored_cards = encrypt_one(&f, "card.a", &cards).await;
    let parts = [("enc.a", &stored_values), ("card.a", &stored_cards)];
    // carol may Decrypt data classified pci only.
    let got = fetched(&f.decrypt(true), "carol", &parts).await;
    assert_eq!(got[1], ("card.a".to_string(), 0, cards.clone()));
    let v = only_batch(&got[0].2);
    assert!(v.records.iter().all(|r| value_of(r) == b"***"));
    // bob may not Decrypt at all.
    let got = fetched(&f.decrypt(true), "bob", &parts).await;
    assert_eq!(value_of(&only_batch(&got[1].2).records[0]), b"***");
}

/// ShareFetch answers name topics by id: a known id's records are revealed
/// as a Fetch's are (plaintext or masks), an unknown id's are withheld
/// (its rules cannot be found), and unprotected topics pass untouched.
#[tokio::test]
async fn share_fetch_answers_are_revealed_by_topic_id_and_unknown_ids_withheld() {
    use kafka_protocol::messages::share_fetch_response as sf;
    use kafka_protocol::messages::ShareFetchResponse;
    use kafka_protocol::protocol::Decodable;
    let f = fixture();
    let values = batch_bytes(Compression::Lz4, value_records());
    let stored = encrypt_one(&f, "enc.a", &values).await;
    let logs = batch_bytes(Compression::None, vec![record(0, None, Some("log"), &[])]);
    let ids = Arc::new(crate::topic_ids::TopicIds::new());
    ids.learn([1; 16], "enc.a");
    ids.learn([2; 16], "logs");
    let topic = |id: u8, records: &Bytes| {
        sf::ShareFetchableTopicResponse::default()
            .with_topic_id(uuid::Uuid::from_bytes([id; 16]))
            .with_partitions(vec![sf::PartitionData::default()
                .with_partition_index(0)
                .with_records(Some(records.clone()))
                .with_acquired_records(vec![sf::AcquiredRecords::default()
                    .with_first_offset(0)
                    .with_last_offset(9)
                    .with_delivery_count(1)])])
    };
    // Id 3 holds the same ciphertext, but no answer has named it yet.
    let body = ShareFetchResponse::default().with_responses(vec![
        topic(1, &stored),
        topic(2, &logs),
        topic(3, &stored),
    ]);
    for (user, plaintext) in [("alice", true), ("bob", false)] {
        let raw = Response::encode_local(
            ApiKey::ShareFetch,
            1,
            9,
            &ResponseKind::ShareFetch(body.clone()),
        )
        .expect("encode");
        let mut r = Response::parse(raw, ApiKey::ShareFetch, 1).expect("parse");
        f.decrypt(true)
            .with_topic_ids(ids.clone())
            .on_response(&session(user), &mut r)
            .await
            .expect("stage");
        let mut back = r.into_bytes().expect("bytes");
        kafka_protocol::messages::ResponseHeader::decode(
            &mut back,
            ApiKey::ShareFetch.response_header_version(1),
        )
        .expect("header");
        let got = ShareFetchResponse::decode(&mut back, 1).expect("decode");
        let part = |i: usize| &got.responses[i].partitions[0];
        if plaintext {
            assert_eq!(part(0).records.as_ref(), Some(&values), "{user}");
        } else {
            let b = only_batch(part(0).records.as_ref().expect("records"));
            assert!(b.records.iter().all(|r| value_of(r) == b"***"), "{user}");
        }
        assert_eq!(part(0).acquired_records.len(), 1, "acquisitions stay");
        assert_eq!(part(1).records.as_ref(), Some(&logs), "{user}: unprotected");
        assert_eq!(part(2).error_code, KAFKA_STORAGE_ERROR, "{user}");
        assert!(
            part(2).records.as_ref().is_none_or(Bytes::is_empty),
            "{user}"
        );
        assert!(part(2).acquired_records.is_empty(), "{user}");
    }
}
