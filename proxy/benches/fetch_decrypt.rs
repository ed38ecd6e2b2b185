//! What the decrypt stage costs per fetched record: a Fetch answer of 1 KiB
//! records (64 batches of 16, about what a consumer's 1 MiB partition fetch
//! brings), encrypted whole or in two JSON fields, revealed in plaintext or
//! masked. The pass-through case (a topic without a rule) is the baseline.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use custos::field_rules::{self, Protection, RuleConfig, RuleSet};
use custos::message::Response;
use custos::metrics::Metrics;
use custos::pipeline::{SessionInfo, Stage};
use custos::record_batch::{Batch, BatchHeader, Record};
use custos::stages::decrypt::Decrypt;
use custos_crypto::keyring::{LocalKeyring, MasterKey};
use custos_crypto::keys::{KeyManager, Rotation};
use custos_policy::{Authorizer, PolicyEngine, TopicCatalog};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{ApiKey, FetchResponse, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Encodable, StrBytes};

const BATCHES: usize = 64;
const PER_BATCH: usize = 16;

const RULES: &str = "
- {name: values, topics: {exact: bench.value}, kek: kek, value: true}
- {name: fields, topics: {exact: bench.json}, kek: kek, json_fields: [\"$.email\", \"$.card.number\"]}
";

const POLICIES: &str = r#"
    @id("reader") permit (principal == User::"reader", action == Action::"Decrypt", resource is Topic);
"#;

fn json_value(i: usize) -> Vec<u8> {
    let mut v = format!(
        "{{\"id\":{i},\"email\":\"person{i}@example.com\",\"card\":{{\"number\":\"4111-1111-1111-{:04}\",\"exp\":\"12/29\"}},\"note\":\"",
        i % 10_000
    )
    .into_bytes();
    while v.len() < 1022 {
        v.push(b'x');
    }
    v.extend_from_slice(b"\"}");
    v
}

fn raw_value(i: usize) -> Vec<u8> {
    (0..1024).map(|j| (i * 31 + j * 7) as u8).collect()
}

struct Setup {
    _dir: tempfile::TempDir,
    protection: Arc<Protection>,
    rt: tokio::runtime::Runtime,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let keyring = Arc::new(
        LocalKeyring::init(
            &dir.path().join("keyring.json"),
            MasterKey::from_bytes([6; 32]),
        )
        .expect("keyring"),
    );
    keyring.create("kek").expect("kek");
    let rules: Vec<RuleConfig> = serde_yaml_ng::from_str(RULES).expect("rules yaml");
    let protection = Arc::new(Protection {
        rules: RuleSet::compile(&rules).expect("rules"),
        keys: Arc::new(KeyManager::new(keyring, Rotation::default(), None).expect("manager")),
        subjects: None,
        tokenizer: None,
        max_encryptions: Rotation::default().max_encryptions,
        keyring: None,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    Setup {
        _dir: dir,
        protection,
        rt,
    }
}

/// One partition's records: BATCHES batches of PER_BATCH records, sealed
/// under `topic`'s rule unless `seal` is false.
fn records(s: &Setup, topic: &str, value: fn(usize) -> Vec<u8>, seal: bool) -> Bytes {
    let ctx = field_rules::dek_context(topic);
    let dek =
        s.rt.block_on(s.protection.keys.encryption_key("kek", &ctx, 1 << 20))
            .expect("dek");
    let rule = s.protection.rules.for_topic(topic);
    let mut out = BytesMut::new();
    for b in 0..BATCHES {
        let mut recs = Vec::with_capacity(PER_BATCH);
        for r in 0..PER_BATCH {
            let i = b * PER_BATCH + r;
            let mut rec = Record {
                attributes: 0,
                timestamp_delta: r as i64,
                offset_delta: r as i32,
                key: None,
                value: Some(Bytes::from(value(i))),
                headers: Vec::new(),
            };
            if seal {
                field_rules::seal_record(rule.expect("rule"), topic, &mut rec, &dek).expect("seal");
            }
            recs.push(rec);
        }
        let batch = Batch {
            header: BatchHeader {
                base_offset: (b * PER_BATCH) as i64,
                batch_length: 0,
                partition_leader_epoch: 0,
                magic: 2,
                crc: 0,
                attributes: 0,
                last_offset_delta: PER_BATCH as i32 - 1,
                base_timestamp: 1_700_000_000_000,
                max_timestamp: 1_700_000_000_000 + PER_BATCH as i64,
                producer_id: -1,
                producer_epoch: -1,
                base_sequence: -1,
                record_count: PER_BATCH as i32,
            },
            records: recs,
            original: Bytes::new(),
            dirty: true,
        };
        out.extend_from_slice(&batch.to_bytes().expect("batch"));
    }
    out.freeze()
}

fn fetch_frame(topic: &str, records: Bytes) -> Bytes {
    let body = FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
        .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
        .with_partitions(vec![PartitionData::default()
            .with_partition_index(0)
            .with_high_watermark((BATCHES * PER_BATCH) as i64)
            .with_records(Some(records))])]);
    let mut out = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(9)
        .encode(&mut out, ApiKey::Fetch.response_header_version(12))
        .expect("header");
    body.encode(&mut out, 12).expect("body");
    out.freeze()
}

fn session(user: &str) -> SessionInfo {
    let mut id = custos::auth::Identity::anonymous();
    id.name = user.into();
    id.method = custos::auth::AuthMethod::ScramSha512;
    SessionInfo::new(
        1,
        "10.0.0.9:5000".parse().expect("addr"),
        Some(1),
        false,
        id,
    )
}

fn bench(c: &mut Criterion) {
    let s = setup();
    let authorizer = Arc::new(Authorizer::new(
        PolicyEngine::load(POLICIES, TopicCatalog::empty()).expect("policies"),
    ));
    let stage = |lanes| {
        Decrypt::new(
            s.protection.clone(),
            Some(authorizer.clone()),
            Arc::new(Metrics::new()),
        )
        .with_lanes(lanes)
    };
    let cases = [
        (
            "pass-through",
            fetch_frame("bench.plain", records(&s, "bench.plain", raw_value, false)),
            "reader",
        ),
        (
            "value/plaintext",
            fetch_frame("bench.value", records(&s, "bench.value", raw_value, true)),
            "reader",
        ),
        (
            "value/masked",
            fetch_frame("bench.value", records(&s, "bench.value", raw_value, true)),
            "other",
        ),
        (
            "json/plaintext",
            fetch_frame("bench.json", records(&s, "bench.json", json_value, true)),
            "reader",
        ),
        (
            "json/masked",
            fetch_frame("bench.json", records(&s, "bench.json", json_value, true)),
            "other",
        ),
    ];
    let mut g = c.benchmark_group("fetch_decrypt");
    g.throughput(Throughput::Elements((BATCHES * PER_BATCH) as u64));
    // One lane: the CPU the work costs. Two lanes: the wall time when the
    // answer is cut in two and revealed on two cores.
    let (one_lane, two_lanes) = (stage(1), stage(2));
    for (name, frame, user) in cases {
        let who = session(user);
        for (lanes, stage) in [(1, &one_lane), (2, &two_lanes)] {
            g.bench_function(format!("{name}/{lanes}-lane"), |b| {
                b.iter(|| {
                    let mut r = Response::parse(frame.clone(), ApiKey::Fetch, 12).expect("parse");
                    s.rt.block_on(stage.on_response(&who, &mut r))
                        .expect("stage");
                    r.into_parts().expect("bytes")
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
