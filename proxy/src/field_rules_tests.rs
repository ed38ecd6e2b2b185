//! Field-rule tests: configuration errors name their key, topic matching,
//! and seal/reveal of every protected part with real keys (a local keyring
//! and a sled subject store in a temporary directory, behind `KeyManager`).

use std::path::Path;

use super::*;
use crate::record_batch::{Header, Record};
use bytes::Bytes;
use custos_crypto::keyring::{LocalKeyring, MasterKey};
use custos_crypto::keys::{KeyError, KeyManager, Rotation};
use custos_crypto::subject_store::SubjectKeyStore;

// ---------------------------------------------------------------- fixtures

/// [`reveal_record`] on a whole [`Record`], the way `record_batch::rewrite`
/// runs it on a view of the batch.
fn reveal_whole(
    rule: &Rule,
    topic: &str,
    rec: &mut Record,
    access: Access,
    keys: &KeyTable,
    tokenizer: Option<&SubjectTokenizer>,
) -> Result<bool, RevealError> {
    reveal_whole_with(rule, topic, rec, access, keys, tokenizer, None).0
}

/// [`reveal_whole`] with the key manager's memory at hand; also returns the
/// keys taken from it.
fn reveal_whole_with(
    rule: &Rule,
    topic: &str,
    rec: &mut Record,
    access: Access,
    keys: &KeyTable,
    tokenizer: Option<&SubjectTokenizer>,
    in_memory: Option<&KeyManager>,
) -> (Result<bool, RevealError>, KeyTable) {
    let before = rec.clone();
    let mut view = before.view();
    let mut scratch = Vec::new();
    let reader = Reader {
        access,
        keys,
        tokenizer,
        in_memory,
    };
    let mut bufs = RevealBuffers::default();
    let changed = reveal_record(rule, topic, &mut view, &mut scratch, &mut bufs, &reader);
    if changed.is_ok() {
        *rec = view.to_record(&scratch);
    }
    (changed, bufs.take_found())
}

/// Real keys: a keyring with KEKs `kek` and `other`, a subject store.
struct Keys {
    dir: tempfile::TempDir,
    manager: KeyManager,
    store: Arc<SubjectKeyStore>,
}

fn keys() -> Keys {
    let dir = tempfile::tempdir().expect("tempdir");
    let keyring = Arc::new(
        LocalKeyring::init(
            &dir.path().join("keyring.json"),
            MasterKey::from_bytes([3; 32]),
        )
        .expect("keyring"),
    );
    keyring.create("kek").expect("kek");
    keyring.create("other").expect("other");
    let store =
        Arc::new(SubjectKeyStore::open(&dir.path().join("subjects"), &[9; 32]).expect("store"));
    let manager = KeyManager::new(keyring.clone(), Rotation::default(), Some(store.clone()))
        .expect("manager")
        .with_kek_versions(keyring);
    Keys {
        dir,
        manager,
        store,
    }
}

fn compile(yaml: &str) -> RuleSet {
    let rules: Vec<RuleConfig> = serde_yaml_ng::from_str(yaml).expect("rules yaml");
    RuleSet::compile(&rules).expect("rules compile")
}

fn b(s: &[u8]) -> Bytes {
    Bytes::copy_from_slice(s)
}

fn record(key: Option<&[u8]>, value: Option<&[u8]>, headers: &[(&str, Option<&[u8]>)]) -> Record {
    Record {
        attributes: 0,
        timestamp_delta: 3,
        offset_delta: 1,
        key: key.map(b),
        value: value.map(b),
        headers: headers
            .iter()
            .map(|(k, v)| Header {
                key: b(k.as_bytes()),
                value: v.map(b),
            })
            .collect(),
    }
}

/// Seals as the encrypt stage does: the subject's key when the rule names
/// one, else the topic's current data key.
async fn seal(k: &Keys, rule: &Rule, topic: &str, rec: &mut Record) -> Result<(), RecordError> {
    let dek = match subject_of(rule, &rec.view())? {
        Some(s) => k
            .manager
            .subject_key(&s, &rule.config.kek)
            .await
            .expect("subject key"),
        None => k
            .manager
            .encryption_key(
                &rule.config.kek,
                &dek_context(topic),
                rule.parts_per_record(),
            )
            .await
            .expect("topic key"),
    };
    seal_record(rule, topic, rec, &dek)
}

/// Resolves a record's key references as the decrypt stage does.
async fn lookups(k: &Keys, rule: &Rule, topic: &str, rec: &Record) -> KeyTable {
    let mut refs = HashSet::new();
    key_refs(rule, rec, &mut refs);
    let mut out = KeyTable::default();
    for r in refs {
        let found = KeyLookup::from_key(k.manager.decryption_key(&r, &dek_context(topic)).await);
        out.insert_ref(r, found);
    }
    out
}

async fn reveal(
    k: &Keys,
    rule: &Rule,
    topic: &str,
    rec: &Record,
    access: Access,
    tokenizer: Option<&SubjectTokenizer>,
) -> (Record, bool) {
    let keys = lookups(k, rule, topic, rec).await;
    let mut out = rec.clone();
    let changed = reveal_whole(rule, topic, &mut out, access, &keys, tokenizer).expect("reveal");
    (out, changed)
}

fn value_str(r: &Record) -> String {
    String::from_utf8(r.value.as_ref().expect("value").to_vec()).expect("utf-8 value")
}

/// The envelopes (decoded `custos:v1:` strings) in a JSON value.
fn json_envelopes(value: &[u8]) -> Vec<Vec<u8>> {
    let v: serde_json::Value = serde_json::from_slice(value).expect("sealed value is JSON");
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<Vec<u8>>) {
        match v {
            serde_json::Value::String(s) => {
                let raw = serde_json::to_vec(s).expect("re-encode");
                if let Some(env) = json_fields::decode_ciphertext(&raw) {
                    out.push(env);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&v, &mut out);
    out
}

// ------------------------------------------------------------ configuration

/// A directory with a keyring, a master key and a token key, so only the
/// error a test provokes is reported.
fn config_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("master.key"), [1u8; 32]).expect("master key");
    std::fs::write(dir.path().join("token.key"), [2u8; 32]).expect("token key");
    let kr = LocalKeyring::init(
        &dir.path().join("keyring.json"),
        MasterKey::from_file(&dir.path().join("master.key")).expect("master"),
    )
    .expect("keyring");
    kr.create("kek").expect("kek");
    dir
}

const KMS: &str =
    "  kms:\n    local:\n      keyring: keyring.json\n      master_key_file: master.key\n";

const RULE: &str = "    - name: r0\n      topics: {prefix: orders}\n      kek: kek\n";

fn config_text(encryption_body: &str) -> String {
    format!(
        "listen:\n  advertised_host: proxy.local\n  bootstrap_port: 9092\n  broker_port_base: 9100\n\
         upstream:\n  bootstrap_servers: [\"kafka-1:9092\"]\nadmin:\n  listen: 127.0.0.1:8400\n\
         encryption:\n{encryption_body}"
    )
}

fn parse_in(dir: &Path, encryption_body: &str) -> Result<crate::config::Config, Vec<String>> {
    crate::config::Config::parse(&config_text(encryption_body), dir)
        .map_err(|es| es.into_iter().map(|e| e.to_string()).collect())
}

/// The config errors of an `encryption` body, as "`key`: message" lines.
fn errors(encryption_body: &str) -> Vec<String> {
    let dir = config_dir();
    parse_in(dir.path(), encryption_body).expect_err("config must be refused")
}

fn assert_names(errors: &[String], key: &str, words: &str) {
    assert!(
        errors.iter().all(|e| e.starts_with("`encryption.")),
        "only the provoked error is expected: {errors:#?}"
    );
    let want = format!("`{key}`: ");
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&want) && e.contains(words)),
        "expected an error for {key} mentioning {words:?}, got {errors:#?}"
    );
}

#[test]
fn a_good_section_parses_with_documented_defaults() {
    let dir = config_dir();
    let cfg = parse_in(
        dir.path(),
        &format!("{KMS}  rules:\n{RULE}      value: true\n"),
    )
    .expect("valid");
    let e = cfg.encryption.expect("encryption section");
    assert_eq!(e.dek.max_encryptions, 1 << 24);
    assert_eq!(e.dek.max_age_s, 3600);
    assert_eq!(e.kms_calls.timeout_ms, 2000);
    assert_eq!(e.kms_calls.max_retries, 2);
    assert_eq!(e.kms_calls.breaker_threshold, 5);
    assert_eq!(e.kms_calls.breaker_cooldown_ms, 5000);
    let KmsConfig::Local(l) = &e.kms else {
        panic!("local kms expected")
    };
    // Relative paths resolve against the config file's directory.
    assert_eq!(l.keyring, dir.path().join("keyring.json"));
    let r = &e.rules[0];
    assert_eq!(r.mask, Mask::Redact("***".into()));
    assert!(!r.deterministic && !r.key && r.headers.is_empty() && r.subject.is_none());
}

#[test]
fn rule_errors_name_the_rule_and_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "    - name: r0\n      topics: {regex: \"orders(\"}\n      kek: kek\n      value: true\n",
            "encryption.rules[0].topics.regex",
            "not a valid regex",
        ),
        (
            "    - name: r0\n      topics: {exact: orders}\n      kek: kek\n",
            "encryption.rules[0].value",
            "protects nothing",
        ),
        (
            &format!("{RULE}      value: true\n      json_fields: [\"$.a\"]\n"),
            "encryption.rules[0].json_fields",
            "value: true",
        ),
        (
            &format!("{RULE}      json_fields: [\"$.a\", \"$.b[\"]\n"),
            "encryption.rules[0].json_fields[1]",
            "",
        ),
        (
            "    - name: r0\n      topics: {prefix: orders}\n      kek: \" \"\n      value: true\n",
            "encryption.rules[0].kek",
            "key-encryption key",
        ),
        (
            &format!("{RULE}      value: true\n{RULE}      key: true\n"),
            "encryption.rules[1].name",
            "earlier rule",
        ),
        (
            "    - name: r0\n      topics: {exact: \"\"}\n      kek: kek\n      value: true\n",
            "encryption.rules[0].topics.exact",
            "empty",
        ),
        (
            &format!("{RULE}      key: true\n      subject: {{record_key: true}}\n"),
            "encryption.rules[0].subject.record_key",
            "key: true",
        ),
        (
            &format!("{RULE}      value: true\n      subject: {{json_field: \"$.id\"}}\n"),
            "encryption.rules[0].subject.json_field",
            "value: true",
        ),
        (
            &format!("{RULE}      headers: [pii]\n      subject: {{header: pii}}\n"),
            "encryption.rules[0].subject.header",
            "also encrypted",
        ),
    ];
    for (rules, key, words) in cases {
        let e = errors(&format!(
            "{KMS}  subject_keys: {{dir: subjects, token_key_file: token.key}}\n  rules:\n{rules}"
        ));
        assert_names(&e, key, words);
    }
}

#[test]
fn section_errors_name_the_key() {
    // A subject without a subject key store.
    let e = errors(&format!(
        "{KMS}  rules:\n{RULE}      json_fields: [\"$.name\"]\n      subject: {{json_field: \"$.id\"}}\n"
    ));
    assert_names(&e, "encryption.subject_keys", "subject");
    // A deterministic rule keeps its stable key in the subject key store.
    let e = errors(&format!(
        "{KMS}  rules:\n{RULE}      json_fields: [\"$.name\"]\n      deterministic: true\n"
    ));
    assert_names(&e, "encryption.subject_keys", "deterministic");
    // The subject key store is a directory or a topic: exactly one.
    for (store, key, words) in [
        (
            "{dir: subjects, topic: keys, token_key_file: token.key}",
            "encryption.subject_keys",
            "not both",
        ),
        (
            "{token_key_file: token.key}",
            "encryption.subject_keys",
            "`topic`",
        ),
        (
            "{topic: \"bad topic!\", token_key_file: token.key}",
            "encryption.subject_keys.topic",
            "not a valid Kafka topic name",
        ),
        (
            "{dir: subjects, replication_factor: 3, token_key_file: token.key}",
            "encryption.subject_keys.replication_factor",
            "only applies to `topic`",
        ),
        (
            "{topic: keys, replication_factor: 0, token_key_file: token.key}",
            "encryption.subject_keys.replication_factor",
            "at least 1",
        ),
    ] {
        let e = errors(&format!(
            "{KMS}  subject_keys: {store}\n  rules:\n{RULE}      value: true\n"
        ));
        assert_names(&e, key, words);
    }
    // A token mask without its key.
    let e = errors(&format!(
        "{KMS}  rules:\n{RULE}      value: true\n      mask: token\n"
    ));
    assert_names(&e, "encryption.token_key_file", "token");
    // A token key file that does not exist.
    let e = errors(&format!(
        "{KMS}  token_key_file: missing.key\n  rules:\n{RULE}      value: true\n"
    ));
    assert_names(&e, "encryption.token_key_file", "not a readable file");
    // No rules at all.
    let e = errors(&format!("{KMS}  rules: []\n"));
    assert_names(&e, "encryption.rules", "at least one rule");
    // DEK limits beyond GCM's safe range, or zero.
    for n in ["0", "4294967296"] {
        let e = errors(&format!(
            "{KMS}  dek: {{max_encryptions: {n}}}\n  rules:\n{RULE}      value: true\n"
        ));
        assert_names(&e, "encryption.dek.max_encryptions", "2^32");
    }
    let e = errors(&format!(
        "{KMS}  dek: {{max_age_s: 0}}\n  rules:\n{RULE}      value: true\n"
    ));
    assert_names(&e, "encryption.dek.max_age_s", "at least 1");
    // A keyring that was never created says how to create it.
    let e = errors(&format!(
        "  kms:\n    local:\n      keyring: nope.json\n      master_key_file: master.key\n  rules:\n{RULE}      value: true\n"
    ));
    assert_names(
        &e,
        "encryption.kms.local.keyring",
        "custos keys --config FILE create",
    );
    // Both or neither master key source.
    let e = errors(&format!(
        "  kms:\n    local:\n      keyring: keyring.json\n      master_key_file: master.key\n      master_key_env: X\n  rules:\n{RULE}      value: true\n"
    ));
    assert_names(&e, "encryption.kms.local.master_key_env", "only one");
    let e = errors(&format!(
        "  kms:\n    local:\n      keyring: keyring.json\n  rules:\n{RULE}      value: true\n"
    ));
    assert_names(&e, "encryption.kms.local.master_key_file", "master key");
    // An unknown key anywhere in the section.
    let e = errors(&format!(
        "{KMS}  rules:\n{RULE}      value: true\n      maks: redact\n"
    ));
    assert!(
        e[0].contains("encryption.rules[0]") && e[0].contains("maks"),
        "{e:?}"
    );
}

#[test]
fn kms_needs_exactly_one_of_local_and_aws() {
    let both = "  kms:\n    local:\n      keyring: keyring.json\n      master_key_file: master.key\n    aws: {region: eu-west-1}\n";
    let neither = "  kms: {}\n";
    for kms in [both, neither] {
        let e = errors(&format!("{kms}  rules:\n{RULE}      value: true\n"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("`encryption.kms`: ")
                && e[0].contains("exactly one of `local` or `aws`"),
            "{e:?}"
        );
    }
    // A half-configured AWS credential pair is named.
    let e = errors(&format!(
        "  kms:\n    aws: {{region: eu-west-1, access_key_id_env: AK}}\n  rules:\n{RULE}      value: true\n"
    ));
    assert_names(&e, "encryption.kms.aws.secret_access_key_env", "both");
    let e = errors(&format!(
        "  kms:\n    aws: {{region: \" \"}}\n  rules:\n{RULE}      value: true\n"
    ));
    assert_names(&e, "encryption.kms.aws.region", "empty");
}

#[test]
fn subject_needs_exactly_one_source_and_masks_parse() {
    let e = errors(&format!(
        "{KMS}  rules:\n{RULE}      json_fields: [\"$.a\"]\n      subject: {{header: h, record_key: true}}\n"
    ));
    assert!(
        e[0].starts_with("`encryption.rules[0].subject`: ") && e[0].contains("exactly one"),
        "{e:?}"
    );
    let e = errors(&format!(
        "{KMS}  rules:\n{RULE}      value: true\n      mask: blur\n"
    ));
    assert!(
        e[0].starts_with("`encryption.rules[0].mask`: ") && e[0].contains("unknown mask"),
        "{e:?}"
    );
    let set = compile(
        "- {name: a, topics: {exact: a}, kek: k, value: true, mask: {keep_last: 4}}\n\
         - {name: b, topics: {exact: b}, kek: k, value: true, mask: null}\n\
         - {name: c, topics: {exact: c}, kek: k, value: true, mask: {redact: \"[x]\"}}\n",
    );
    let mask = |t: &str| set.for_topic(t).expect("rule").config.mask.clone();
    assert_eq!(mask("a"), Mask::KeepLast(4));
    assert_eq!(mask("b"), Mask::Null);
    assert_eq!(mask("c"), Mask::Redact("[x]".into()));
}

// ------------------------------------------------------------------ matching

#[test]
fn topics_match_exactly_by_prefix_or_by_whole_name_regex() {
    let set = compile(
        "- {name: exact, topics: {exact: payments}, kek: k, value: true}\n\
         - {name: prefix, topics: {prefix: \"orders.\"}, kek: k, value: true}\n\
         - {name: regex, topics: {regex: \"cust-[0-9]+\"}, kek: k, value: true}\n\
         - {name: late, topics: {prefix: \"orders.eu\"}, kek: k, key: true}\n",
    );
    let name = |t: &str| set.for_topic(t).map(|r| r.config.name.clone());
    assert_eq!(name("payments").as_deref(), Some("exact"));
    assert_eq!(name("payments2"), None);
    assert_eq!(name("xpayments"), None);
    assert_eq!(name("orders.us").as_deref(), Some("prefix"));
    // The first matching rule applies, even when a later one is narrower.
    assert_eq!(name("orders.eu").as_deref(), Some("prefix"));
    assert_eq!(name("orders"), None);
    assert_eq!(name("cust-42").as_deref(), Some("regex"));
    // The regex must match the whole name, not a part of it.
    assert_eq!(name("cust-42-dlq"), None);
    assert_eq!(name("old-cust-42"), None);
    assert_eq!(name("cust-"), None);
    assert!(!set.needs_subject_keys());
    assert!(!set.is_empty());
}

#[test]
fn parts_per_record_and_algorithm_follow_the_rule() {
    let set = compile(
        "- {name: a, topics: {exact: a}, kek: k, key: true, headers: [x, y], json_fields: [\"$.p\", \"$.q[*]\"]}\n\
         - {name: b, topics: {exact: b}, kek: k, value: true, deterministic: true}\n",
    );
    let a = set.for_topic("a").expect("a");
    let b_ = set.for_topic("b").expect("b");
    assert_eq!(a.parts_per_record(), 5);
    assert_eq!(b_.parts_per_record(), 1);
    assert_eq!(a.algorithm(), envelope::Algorithm::Aes256Gcm);
    assert_eq!(b_.algorithm(), envelope::Algorithm::Aes256Siv);
    assert_eq!(a.path_bindings, vec!["json:$.p", "json:$.q[*]"]);
}

// ------------------------------------------------------ seal and reveal

const WHOLE: &str = "- name: whole\n  topics: {prefix: \"t.\"}\n  kek: kek\n  value: true\n  key: true\n  headers: [pii]\n";

#[tokio::test]
async fn value_key_and_named_header_round_trip_byte_identical() {
    let k = keys();
    let set = compile(WHOLE);
    let rule = set.for_topic("t.a").expect("rule");
    let original = record(
        Some(b"customer-7"),
        Some(&[0, 159, 146, 150, 0xC5, 0x7D]),
        &[
            ("pii", Some(b"555-0100")),
            ("trace", Some(b"abc")),
            ("pii", Some(b"second")),
            ("pii", None),
            ("trace", Some(b"abc")),
        ],
    );
    let mut sealed = original.clone();
    seal(&k, rule, "t.a", &mut sealed).await.expect("seal");
    // Key, value and every `pii` header with a value are envelopes.
    assert!(envelope::is_envelope(sealed.key.as_ref().expect("key")));
    assert!(envelope::is_envelope(sealed.value.as_ref().expect("value")));
    assert_eq!(
        sealed.headers.len(),
        5,
        "duplicate headers are kept, in order"
    );
    for (i, h) in sealed.headers.iter().enumerate() {
        assert_eq!(h.key, original.headers[i].key);
        match (h.key.as_ref(), i) {
            (b"pii", 3) => assert_eq!(h.value, None, "a null header stays null"),
            (b"pii", _) => assert!(envelope::is_envelope(h.value.as_ref().expect("v"))),
            _ => assert_eq!(
                h.value, original.headers[i].value,
                "unnamed header untouched"
            ),
        }
    }
    // The two `pii` headers get different ciphertexts (random nonces).
    assert_ne!(sealed.headers[0].value, sealed.headers[2].value);
    assert_eq!(
        (
            sealed.timestamp_delta,
            sealed.offset_delta,
            sealed.attributes
        ),
        (3, 1, 0)
    );
    // Every part names the same data key, bound to this topic.
    let mut refs = HashSet::new();
    key_refs(rule, &sealed, &mut refs);
    assert_eq!(refs.len(), 1);

    let (plain, changed) = reveal(&k, rule, "t.a", &sealed, Access::Plaintext, None).await;
    assert!(changed);
    assert_eq!(plain, original, "byte-identical originals");
}

#[tokio::test]
async fn masked_access_shows_the_rule_mask_of_each_part() {
    let k = keys();
    let tokenizer = SubjectTokenizer::new(&[4; 32]).expect("tokenizer");
    let rules = "- {name: r, topics: {exact: red}, kek: kek, value: true, key: true, headers: [pii]}\n\
                 - {name: n, topics: {exact: nul}, kek: kek, value: true, headers: [pii], mask: null}\n\
                 - {name: l, topics: {exact: last}, kek: kek, value: true, mask: {keep_last: 4}}\n\
                 - {name: t, topics: {exact: tok}, kek: kek, value: true, mask: token}\n";
    let set = compile(rules);
    let original = record(
        Some(b"k-1"),
        Some(b"4111-1111-1111-1234"),
        &[("pii", Some(b"x")), ("other", Some(b"y"))],
    );
    let mut got = HashMap::new();
    for topic in ["red", "nul", "last", "tok"] {
        let rule = set.for_topic(topic).expect("rule");
        let mut sealed = original.clone();
        seal(&k, rule, topic, &mut sealed).await.expect("seal");
        let (masked, changed) =
            reveal(&k, rule, topic, &sealed, Access::Masked, Some(&tokenizer)).await;
        assert!(changed);
        assert_eq!(masked.headers[1].value.as_deref(), Some(&b"y"[..]));
        got.insert(topic, masked);
    }
    let red = &got["red"];
    assert_eq!(red.value.as_deref(), Some(&b"***"[..]));
    assert_eq!(red.key.as_deref(), Some(&b"***"[..]));
    assert_eq!(red.headers[0].value.as_deref(), Some(&b"***"[..]));
    assert_eq!(got["nul"].value, None, "null mask: a Kafka null");
    assert_eq!(got["nul"].headers[0].value, None);
    assert_eq!(value_str(&got["last"]), format!("{}1234", "*".repeat(15)));
    assert_eq!(
        value_str(&got["tok"]),
        tokenizer.token(b"4111-1111-1111-1234")
    );
}

const CUSTOMERS: &str = "- name: customers\n  topics: {exact: customers}\n  kek: kek\n  json_fields: [\"$.email\", \"$.card.number\", \"$.addresses[*].street\"]\n  mask: {keep_last: 4}\n";

/// Whitespace, escapes, key order and number forms a re-serialiser would change.
const DOC: &str = "{ \"id\": 7, \"email\" : \"ann\\u0040example.com\",\n  \"card\": {\"number\": 4111111111111234, \"exp\": \"12/29\"},\n  \"addresses\": [ {\"street\": \"1 Main St\", \"city\": \"X\"}, {\"city\": \"Y\"}, {\"street\": {\"line\": [1, 2.50]}} ],\n  \"note\": \"custos:v1:not-really\" }";

#[tokio::test]
async fn json_fields_nested_and_in_arrays_round_trip_byte_identical() {
    let k = keys();
    let set = compile(CUSTOMERS);
    let rule = set.for_topic("customers").expect("rule");
    let original = record(Some(b"7"), Some(DOC.as_bytes()), &[]);
    let mut sealed = original.clone();
    seal(&k, rule, "customers", &mut sealed)
        .await
        .expect("seal");
    let text = value_str(&sealed);
    for secret in [
        "ann",
        "example.com",
        "4111111111111234",
        "1 Main St",
        "2.50",
    ] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    // The rest of the document is untouched, the sealed fields are strings.
    assert!(
        text.starts_with("{ \"id\": 7, \"email\" : \"custos:v1:"),
        "{text}"
    );
    assert!(text.contains("\"exp\": \"12/29\""));
    assert!(text.contains("{\"city\": \"Y\"}"));
    assert!(text.contains("\"note\": \"custos:v1:not-really\""));
    let envs = json_envelopes(sealed.value.as_ref().expect("value"));
    // email, card.number, and the two addresses that have a street.
    assert_eq!(envs.len(), 4, "{text}");
    assert!(envs.iter().all(|e| envelope::is_envelope(e)));
    assert_eq!(sealed.key, original.key, "key not in the rule");

    let (plain, changed) = reveal(&k, rule, "customers", &sealed, Access::Plaintext, None).await;
    assert!(changed);
    assert_eq!(value_str(&plain), DOC, "byte-identical original");
    assert_eq!(plain, original);

    let (masked, _) = reveal(&k, rule, "customers", &sealed, Access::Masked, None).await;
    let m: serde_json::Value =
        serde_json::from_slice(masked.value.as_ref().expect("v")).expect("masked is JSON");
    assert_eq!(m["email"], "***********.com");
    assert_eq!(m["card"]["number"], "************1234");
    assert_eq!(m["card"]["exp"], "12/29");
    assert_eq!(m["addresses"][0]["street"], "*****n St");
    assert_eq!(
        m["addresses"][2]["street"],
        format!("{}50]}}", "*".repeat(15))
    );
    assert_eq!(m["id"], 7);
}

#[tokio::test]
async fn a_plaintext_reader_gets_every_field_back_however_ciphertext_is_placed() {
    // A plaintext reader's walk ends at the last ciphertext it counted:
    // duplicate keys after the first, a protected field at the very end,
    // and ciphertext-looking text outside any path must not end it early
    // or late.
    let k = keys();
    let set = compile(CUSTOMERS);
    let rule = set.for_topic("customers").expect("rule");
    for doc in [
        r#"{"email":"ann@example.org","n":[1,2,{"deep":"custos:v1:zz"}],"email":"bob@example.org"}"#,
        r#"{"n":"\"custos:v1:AAAA\"","card":{"number":"4111111111111111"},"tail":{"email":"cat@example.org"},"email":"dan@example.org"}"#,
        r#"{"custos:v1:k":1,"addresses":[{"street":"1 Main Street"},{"street":"2 High Street"}],"z":"custos:v1:"}"#,
    ] {
        let original = record(None, Some(doc.as_bytes()), &[]);
        let mut sealed = original.clone();
        seal(&k, rule, "customers", &mut sealed)
            .await
            .expect("seal");
        assert_ne!(sealed, original);
        let (plain, _) = reveal(&k, rule, "customers", &sealed, Access::Plaintext, None).await;
        assert_eq!(value_str(&plain), doc, "byte-identical original");
        let (masked, _) = reveal(&k, rule, "customers", &sealed, Access::Masked, None).await;
        let masked = value_str(&masked);
        for secret in ["ann@", "bob@", "dan@", "41111111", "Main", "High"] {
            assert!(!masked.contains(secret), "{secret} shown: {masked}");
        }
    }
}

#[tokio::test]
async fn invalid_json_is_a_record_error_and_a_value_without_the_fields_is_unchanged() {
    let k = keys();
    let set = compile(CUSTOMERS);
    let rule = set.for_topic("customers").expect("rule");
    let mut bad = record(None, Some(b"{\"email\": \"a@b\""), &[]);
    let err = seal(&k, rule, "customers", &mut bad)
        .await
        .expect_err("invalid");
    assert!(matches!(err, RecordError::Json(_)), "{err:?}");
    assert!(err.to_string().starts_with("value is not valid JSON"));
    let mut none = record(None, Some(b"{\"other\": [1, 2]}"), &[]);
    seal(&k, rule, "customers", &mut none).await.expect("seal");
    assert_eq!(none.value.as_deref(), Some(&b"{\"other\": [1, 2]}"[..]));
}

#[tokio::test]
async fn data_written_around_custos_is_masked_for_masked_and_left_alone_for_plaintext() {
    let k = keys();
    let set = compile(&format!("{WHOLE}{CUSTOMERS}"));
    // Whole value, key and header in plaintext on the broker.
    let whole = set.for_topic("t.x").expect("rule");
    let raw = record(Some(b"k"), Some(b"secret"), &[("pii", Some(b"p"))]);
    let (plain, changed) = reveal(&k, whole, "t.x", &raw, Access::Plaintext, None).await;
    assert!(!changed);
    assert_eq!(plain, raw);
    let (masked, changed) = reveal(&k, whole, "t.x", &raw, Access::Masked, None).await;
    assert!(changed);
    assert_eq!(masked.value.as_deref(), Some(&b"***"[..]));
    assert_eq!(masked.key.as_deref(), Some(&b"***"[..]));
    assert_eq!(masked.headers[0].value.as_deref(), Some(&b"***"[..]));
    // JSON fields in plaintext on the broker.
    let json = set.for_topic("customers").expect("rule");
    let raw = record(None, Some(b"{\"email\":\"ann@example.com\",\"x\":1}"), &[]);
    let (plain, changed) = reveal(&k, json, "customers", &raw, Access::Plaintext, None).await;
    assert!(!changed);
    assert_eq!(plain, raw);
    let (masked, _) = reveal(&k, json, "customers", &raw, Access::Masked, None).await;
    assert_eq!(
        value_str(&masked),
        "{\"email\":\"***********.com\",\"x\":1}"
    );
    // A value that is not JSON cannot have its fields found: masked whole.
    let raw = record(None, Some(b"ann@example.com"), &[]);
    let (plain, changed) = reveal(&k, json, "customers", &raw, Access::Plaintext, None).await;
    assert!(!changed);
    assert_eq!(plain, raw);
    let (masked, changed) = reveal(&k, json, "customers", &raw, Access::Masked, None).await;
    assert!(changed);
    assert_eq!(value_str(&masked), "***********.com");
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_field_or_topic_reads_as_undecryptable() {
    let k = keys();
    let set = compile(&format!(
        "{WHOLE}- name: json\n  topics: {{prefix: \"j.\"}}\n  kek: kek\n  json_fields: [\"$.a\", \"$.b\"]\n"
    ));
    let whole = set.for_topic("t.a").expect("rule");
    let mut sealed = record(Some(b"key"), Some(b"value"), &[("pii", Some(b"hdr"))]);
    seal(&k, whole, "t.a", &mut sealed).await.expect("seal");
    let placeholder = Some(Bytes::from_static(UNDECRYPTABLE));
    // Value and key swapped: both bound to their own field.
    let mut swapped = sealed.clone();
    std::mem::swap(&mut swapped.key, &mut swapped.value);
    swapped.headers[0].value = sealed.key.clone();
    for access in [Access::Plaintext, Access::Masked] {
        let (r, _) = reveal(&k, whole, "t.a", &swapped, access, None).await;
        assert_eq!(r.key, placeholder);
        assert_eq!(r.value, placeholder);
        assert_eq!(r.headers[0].value, placeholder);
    }
    // The same bytes on another topic: the data key is resolved (as the
    // original topic's), but the ciphertext is bound to its topic.
    let keys_of_source = lookups(&k, whole, "t.a", &sealed).await;
    let mut moved = sealed.clone();
    reveal_whole(
        whole,
        "t.b",
        &mut moved,
        Access::Plaintext,
        &keys_of_source,
        None,
    )
    .expect("reveal");
    assert_eq!(moved.value, placeholder);
    assert_eq!(moved.key, placeholder);
    // Resolved as the other topic, the KMS itself refuses the data key
    // (its context names the topic); that too reads as the placeholder.
    let mut refs = HashSet::new();
    key_refs(whole, &sealed, &mut refs);
    let mut refused = KeyTable::default();
    for r in refs {
        let e = k
            .manager
            .decryption_key(&r, &dek_context("t.b"))
            .await
            .expect_err("bound to t.a");
        assert!(
            matches!(e, KeyError::Kms(custos_crypto::kms::KmsError::Rejected(_))),
            "{e:?}"
        );
        refused.insert_ref(r, KeyLookup::Undecryptable);
    }
    let mut moved = sealed.clone();
    let changed =
        reveal_whole(whole, "t.b", &mut moved, Access::Masked, &refused, None).expect("reveal");
    assert!(changed);
    assert_eq!(moved.value, placeholder);
    assert_eq!(moved.headers[0].value, placeholder);

    // JSON: a field's ciphertext copied into another field.
    let json = set.for_topic("j.a").expect("rule");
    let mut doc = record(None, Some(b"{\"a\":\"alpha\",\"b\":\"beta\"}"), &[]);
    seal(&k, json, "j.a", &mut doc).await.expect("seal");
    let v: serde_json::Value = serde_json::from_slice(doc.value.as_ref().expect("v")).expect("j");
    let a = v["a"].as_str().expect("a");
    let copied = format!("{{\"a\":\"{a}\",\"b\":\"{a}\"}}");
    let copied = record(None, Some(copied.as_bytes()), &[]);
    let (r, _) = reveal(&k, json, "j.a", &copied, Access::Plaintext, None).await;
    assert_eq!(
        value_str(&r),
        "{\"a\":\"alpha\",\"b\":\"custos:undecryptable\"}"
    );
    // A tampered ciphertext does not authenticate either.
    let mut tampered = sealed.clone();
    let mut v = tampered.value.as_ref().expect("v").to_vec();
    let last = v.len() - 1;
    v[last] ^= 1;
    tampered.value = Some(Bytes::from(v));
    let (r, _) = reveal(&k, whole, "t.a", &tampered, Access::Plaintext, None).await;
    assert_eq!(r.value, placeholder);
    assert_eq!(r.key.as_deref(), Some(&b"key"[..]));
}

#[tokio::test]
async fn a_key_that_cannot_be_had_fails_the_reveal_rather_than_showing_ciphertext() {
    let k = keys();
    let set = compile(WHOLE);
    let rule = set.for_topic("t.a").expect("rule");
    let mut sealed = record(None, Some(b"v"), &[]);
    seal(&k, rule, "t.a", &mut sealed).await.expect("seal");
    let mut refs = HashSet::new();
    key_refs(rule, &sealed, &mut refs);
    let mut down = KeyTable::default();
    for r in refs {
        down.insert_ref(r, KeyLookup::Unavailable("KMS unavailable".into()));
    }
    let mut r = sealed.clone();
    let err = reveal_whole(rule, "t.a", &mut r, Access::Masked, &down, None).expect_err("no key");
    assert_eq!(err.to_string(), "key unavailable: KMS unavailable");
    // An unresolved reference is an error too, never a pass-through.
    let mut r = sealed.clone();
    assert!(reveal_whole(
        rule,
        "t.a",
        &mut r,
        Access::Plaintext,
        &KeyTable::default(),
        None
    )
    .is_err());
}

#[tokio::test]
async fn keys_in_memory_are_used_at_once_and_handed_back_others_wait_for_the_kms() {
    let k = keys();
    let set = compile(&format!("{WHOLE}{PROFILES}"));
    let whole = set.for_topic("t.a").expect("rule");
    let original = record(Some(b"key"), Some(b"secret"), &[("pii", Some(b"hv"))]);
    let mut sealed = original.clone();
    seal(&k, whole, "t.a", &mut sealed).await.expect("seal");
    // One plaintext pass, with no keys known and `memory` at hand.
    let one_pass = |rule: &Rule, topic: &str, rec: &Record, memory: &KeyManager| {
        let mut r = rec.clone();
        let (changed, found) = reveal_whole_with(
            rule,
            topic,
            &mut r,
            Access::Plaintext,
            &KeyTable::default(),
            None,
            Some(memory),
        );
        (changed.map(|c| (c, r)), found)
    };
    // Sealing left the data key in memory: one pass reveals it, and the
    // key comes back for the caller's table (audit names it).
    let (changed, found) = one_pass(whole, "t.a", &sealed, &k.manager);
    let (changed, r) = changed.expect("revealed");
    assert!(changed);
    assert_eq!(r, original);
    assert_eq!(found.key_refs().count(), 1);
    let mut refs = HashSet::new();
    key_refs(whole, &sealed, &mut refs);
    assert!(found.key_refs().all(|r| refs.contains(r)));
    // Under another topic the memory does not answer: the KMS decides.
    let (changed, found) = one_pass(whole, "t.b", &sealed, &k.manager);
    assert!(matches!(changed, Err(RevealError::Unresolved(_))));
    assert!(found.is_empty());
    // A key manager that has not unwrapped the key yet does not answer.
    let fresh = KeyManager::new(
        Arc::new(
            LocalKeyring::open(
                &k.dir.path().join("keyring.json"),
                MasterKey::from_bytes([3; 32]),
            )
            .expect("keyring"),
        ),
        Rotation::default(),
        None,
    )
    .expect("manager");
    let (changed, _) = one_pass(whole, "t.a", &sealed, &fresh);
    assert!(matches!(changed, Err(RevealError::Unresolved(_))));

    // A subject's key: in memory until shredded, then not; once the store
    // has said "erased", memory answers that too.
    let profiles = set.for_topic("p.a").expect("rule");
    let ann = "{\"user\":{\"id\":\"u-1\"},\"name\":\"Ann\",\"phone\":\"555\"}";
    let mut sa = record(None, Some(ann.as_bytes()), &[]);
    seal(&k, profiles, "p.a", &mut sa).await.expect("seal");
    let mut refs = HashSet::new();
    key_refs(profiles, &sa, &mut refs);
    for r in &refs {
        k.manager
            .decryption_key(r, &dek_context("p.a"))
            .await
            .expect("subject key");
    }
    let reveal_ann = || {
        one_pass(profiles, "p.a", &sa, &k.manager)
            .0
            .map(|(_, r)| value_str(&r))
    };
    assert_eq!(reveal_ann().expect("in memory"), ann);
    k.store.shred(b"u-1").expect("shred");
    assert!(matches!(reveal_ann(), Err(RevealError::Unresolved(_))));
    for r in &refs {
        let e = k
            .manager
            .decryption_key(r, &dek_context("p.a"))
            .await
            .expect_err("shredded");
        assert!(matches!(e, KeyError::Erased { .. }), "{e:?}");
    }
    assert_eq!(
        reveal_ann().expect("erased, from memory"),
        "{\"user\":{\"id\":\"u-1\"},\"name\":\"custos:erased\",\"phone\":\"custos:erased\"}"
    );
}

const PROFILES: &str = "- name: profiles\n  topics: {prefix: \"p.\"}\n  kek: kek\n  json_fields: [\"$.name\", \"$.phone\"]\n  subject: {json_field: \"$.user.id\"}\n  mask: token\n";

#[tokio::test]
async fn a_shredded_subject_reads_as_erased_while_others_still_decrypt() {
    let k = keys();
    let set = compile(PROFILES);
    let rule = set.for_topic("p.a").expect("rule");
    assert!(set.needs_subject_keys());
    let ann = "{\"user\":{\"id\":\"u-1\"},\"name\":\"Ann\",\"phone\":\"555\"}";
    let bob = "{\"user\":{\"id\":\"u-2\"},\"name\":\"Bob\",\"phone\":\"556\"}";
    let mut sa = record(None, Some(ann.as_bytes()), &[]);
    let mut sb = record(None, Some(bob.as_bytes()), &[]);
    seal(&k, rule, "p.a", &mut sa).await.expect("seal");
    seal(&k, rule, "p.a", &mut sb).await.expect("seal");
    // Per-subject keys: each record names its subject's key, not a topic DEK.
    let mut refs = HashSet::new();
    key_refs(rule, &sa, &mut refs);
    key_refs(rule, &sb, &mut refs);
    assert_eq!(refs.len(), 2);
    assert!(refs
        .iter()
        .all(|r| matches!(r, KeyRef::Subject { version: 1, .. })));
    let (r, _) = reveal(&k, rule, "p.a", &sa, Access::Plaintext, None).await;
    assert_eq!(value_str(&r), ann);

    let receipt = k.store.shred(b"u-1").expect("shred");
    assert_eq!(receipt.versions_destroyed, vec![1]);
    for access in [Access::Plaintext, Access::Masked] {
        let (r, _) = reveal(&k, rule, "p.a", &sa, access, None).await;
        assert_eq!(
            value_str(&r),
            "{\"user\":{\"id\":\"u-1\"},\"name\":\"custos:erased\",\"phone\":\"custos:erased\"}"
        );
    }
    let (r, _) = reveal(&k, rule, "p.a", &sb, Access::Plaintext, None).await;
    assert_eq!(value_str(&r), bob);
    // A subject's ciphertext is bound to its topic too.
    let (r, _) = reveal(&k, rule, "p.b", &sb, Access::Plaintext, None).await;
    assert_eq!(
        value_str(&r),
        "{\"user\":{\"id\":\"u-2\"},\"name\":\"custos:undecryptable\",\"phone\":\"custos:undecryptable\"}"
    );
    // After shredding, the subject's new records get a fresh key version.
    let mut again = record(None, Some(ann.as_bytes()), &[]);
    seal(&k, rule, "p.a", &mut again).await.expect("seal");
    let mut refs = HashSet::new();
    key_refs(rule, &again, &mut refs);
    assert!(refs
        .iter()
        .all(|r| matches!(r, KeyRef::Subject { version: 2, .. })));
    let (r, _) = reveal(&k, rule, "p.a", &again, Access::Plaintext, None).await;
    assert_eq!(value_str(&r), ann);
}

#[tokio::test]
async fn an_erased_whole_value_or_header_shows_the_erased_placeholder() {
    let k = keys();
    let set = compile(
        "- {name: s, topics: {exact: s}, kek: kek, value: true, headers: [h], subject: {record_key: true}}\n",
    );
    let rule = set.for_topic("s").expect("rule");
    let mut r = record(Some(b"subject-9"), Some(b"payload"), &[("h", Some(b"x"))]);
    seal(&k, rule, "s", &mut r).await.expect("seal");
    assert_eq!(r.key.as_deref(), Some(&b"subject-9"[..]));
    k.store.shred(b"subject-9").expect("shred");
    for access in [Access::Plaintext, Access::Masked] {
        let (out, _) = reveal(&k, rule, "s", &r, access, None).await;
        assert_eq!(out.value.as_deref(), Some(mask::ERASED_BYTES));
        assert_eq!(out.headers[0].value.as_deref(), Some(mask::ERASED_BYTES));
        assert_eq!(out.key.as_deref(), Some(&b"subject-9"[..]));
    }
}

#[tokio::test]
async fn tombstones_stay_null() {
    let k = keys();
    let set = compile(&format!("{WHOLE}{CUSTOMERS}"));
    for topic in ["t.a", "customers"] {
        let rule = set.for_topic(topic).expect("rule");
        let original = record(Some(b"k"), None, &[]);
        let mut sealed = original.clone();
        seal(&k, rule, topic, &mut sealed).await.expect("seal");
        assert_eq!(sealed.value, None);
        for access in [Access::Plaintext, Access::Masked] {
            let (r, _) = reveal(&k, rule, topic, &sealed, access, None).await;
            assert_eq!(r.value, None, "{topic} {access:?}");
        }
    }
}

#[tokio::test]
async fn deterministic_rules_give_equal_ciphertexts_only_within_a_topic_and_field() {
    let k = keys();
    let set = compile(
        "- {name: d, topics: {prefix: \"d.\"}, kek: kek, json_fields: [\"$.a\", \"$.b\"], deterministic: true}\n\
         - {name: g, topics: {prefix: \"g.\"}, kek: kek, json_fields: [\"$.a\", \"$.b\"]}\n",
    );
    let doc = b"{\"a\":\"same\",\"b\":\"same\"}";
    let sealed = |topic: &'static str| {
        let rule = set.for_topic(topic).expect("rule");
        let k = &k;
        async move {
            let mut r = record(None, Some(doc), &[]);
            seal(k, rule, topic, &mut r).await.expect("seal");
            let v: serde_json::Value =
                serde_json::from_slice(r.value.as_ref().expect("v")).expect("json");
            (
                v["a"].as_str().expect("a").to_string(),
                v["b"].as_str().expect("b").to_string(),
                r,
            )
        }
    };
    let (a1, b1, r1) = sealed("d.x").await;
    let (a2, _, _) = sealed("d.x").await;
    let (a3, _, _) = sealed("d.y").await;
    assert_eq!(a1, a2, "same topic, field and key: equal ciphertexts");
    assert_ne!(a1, b1, "another field: different");
    assert_ne!(a1, a3, "another topic: different");
    let env = json_fields::decode_ciphertext(format!("\"{a1}\"").as_bytes()).expect("env");
    assert_eq!(
        envelope::parse(&env).expect("parse").algorithm(),
        envelope::Algorithm::Aes256Siv
    );
    let rule = set.for_topic("d.x").expect("rule");
    let (plain, _) = reveal(&k, rule, "d.x", &r1, Access::Plaintext, None).await;
    assert_eq!(plain.value.as_deref(), Some(&doc[..]));
    let (g1, _, _) = sealed("g.x").await;
    let (g2, _, _) = sealed("g.x").await;
    assert_ne!(g1, g2, "GCM: every ciphertext differs");
}

#[test]
fn subject_ids_come_from_where_the_rule_says() {
    let set = compile(
        "- {name: j, topics: {exact: j}, kek: k, json_fields: [\"$.n\"], subject: {json_field: \"$.id\"}}\n\
         - {name: jh, topics: {exact: jh}, kek: k, json_fields: [\"$.n\"], headers: [x], subject: {json_field: \"$.id\"}}\n\
         - {name: k, topics: {exact: k}, kek: k, value: true, subject: {record_key: true}}\n\
         - {name: h, topics: {exact: h}, kek: k, value: true, subject: {header: sub}}\n\
         - {name: none, topics: {exact: x}, kek: k, value: true}\n",
    );
    let of = |t: &str, r: &Record| subject_of(set.for_topic(t).expect("rule"), &r.view());
    let r = record(None, Some(b"{\"id\": \"a\\u0062c\", \"n\": 1}"), &[]);
    assert_eq!(of("j", &r).expect("id"), Some(b"abc".to_vec()));
    let r = record(None, Some(b"{\"id\": 42}"), &[]);
    assert_eq!(of("j", &r).expect("id"), Some(b"42".to_vec()));
    for missing in [&b"{\"n\": 1}"[..], b"{\"id\": \"\"}"] {
        let r = record(None, Some(missing), &[]);
        assert!(matches!(of("j", &r), Err(RecordError::NoSubject(_))));
    }
    let r = record(None, Some(b"not json"), &[]);
    assert!(matches!(of("j", &r), Err(RecordError::Json(_))));
    // A tombstone has no fields to seal: no subject needed (compaction).
    let r = record(Some(b"k"), None, &[]);
    assert_eq!(of("j", &r).expect("tombstone"), None);
    assert!(matches!(of("jh", &r), Err(RecordError::NoSubject(_))));
    let r = record(
        Some(b"kk"),
        Some(b"v"),
        &[("sub", Some(b"hh")), ("sub", Some(b"2nd"))],
    );
    assert_eq!(of("k", &r).expect("id"), Some(b"kk".to_vec()));
    assert_eq!(
        of("h", &r).expect("id"),
        Some(b"hh".to_vec()),
        "first header wins"
    );
    assert_eq!(of("x", &r).expect("none"), None);
    let r = record(None, Some(b"v"), &[("sub", None)]);
    assert!(matches!(of("k", &r), Err(RecordError::NoSubject(_))));
    assert!(matches!(of("h", &r), Err(RecordError::NoSubject(_))));
}

#[test]
fn dek_context_binds_the_topic() {
    let c = dek_context("orders");
    assert_eq!(c.len(), 1);
    assert_eq!(c.get("custos:topic").map(String::as_str), Some("orders"));
    // The fixture directory keeps the keyring alive for the tests above.
    let k = keys();
    assert!(k.dir.path().join("keyring.json").is_file());
}

/// The `yaml` code blocks of a markdown text that hold an `encryption:` section.
fn encryption_blocks(md: &str) -> Vec<String> {
    md.split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .filter(|b| b.starts_with("encryption:"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_documented_configurations_parse_and_compile() {
    #[derive(Deserialize)]
    struct Doc {
        encryption: EncryptionConfig,
    }
    let guide = encryption_blocks(include_str!("../../docs/encryption.md"));
    let readme = encryption_blocks(include_str!("../../README.md"));
    assert_eq!((guide.len(), readme.len()), (1, 1));
    for block in guide.iter().chain(&readme) {
        let doc: Doc = serde_yaml_ng::from_str(block).expect("documented YAML parses");
        RuleSet::compile(&doc.encryption.rules).expect("documented rules compile");
    }
    let doc: Doc = serde_yaml_ng::from_str(&guide[0]).expect("guide");
    let e = doc.encryption;
    assert_eq!(e.dek.max_encryptions, 1 << 24);
    assert_eq!(e.kms_calls.breaker_cooldown_ms, 5000);
    assert_eq!(e.rules[0].mask, Mask::KeepLast(4));
}
