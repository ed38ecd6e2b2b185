//! Kafka ACL import: parsing, and the Kafka semantics of the generated policies.

use crate::acl_import::*;
use crate::*;

const FIXTURE: &str = include_str!("../tests/fixtures/kafka-acls-list.txt");

fn load(input: &str, supers: &[&str]) -> PolicyEngine {
    let options = ImportOptions {
        super_users: supers.iter().map(ToString::to_string).collect(),
    };
    let text = import_acls(input, &options).unwrap_or_else(|e| panic!("{e}"));
    PolicyEngine::load(&text, TopicCatalog::empty()).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn user(n: &str) -> Principal {
    Principal::user(n, AuthMethod::Mtls)
}

fn topic(n: &str) -> Resource {
    Resource::Topic(n.to_string())
}

fn ok(e: &PolicyEngine, p: &Principal, op: impl Into<Action>, r: &Resource, ip: &str) -> bool {
    let ctx = RequestContext::new(ip.parse().unwrap(), true, AuthMethod::Mtls);
    let d = e.authorize(p, op, r, &ctx);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    d.allowed
}

const IP: &str = "10.1.1.1";

fn json(entries: &[(&str, &str, &str, &str, &str, &str, &str)]) -> String {
    let v: Vec<serde_json::Value> = entries
        .iter()
        .map(|(rt, name, pt, principal, host, op, perm)| {
            serde_json::json!({
                "resource_type": rt, "resource_name": name, "pattern_type": pt,
                "principal": principal, "host": host, "operation": op, "permission_type": perm
            })
        })
        .collect();
    serde_json::to_string(&v).unwrap()
}

#[test]
fn fixture_parses_every_acl_with_its_line() {
    let acls = parse_acl_listing(FIXTURE).unwrap();
    assert_eq!(acls.len(), 17);
    assert_eq!(acls[0].origin, "line 2");
    assert_eq!(acls[0].principal, KafkaPrincipal::User("alice".into()));
    assert_eq!(acls[0].operation, AclOperation::Op(Operation::Read));
    let dn = acls
        .iter()
        .find(|a| a.operation == AclOperation::Op(Operation::Create))
        .unwrap();
    assert_eq!(
        dn.principal,
        KafkaPrincipal::User("CN=bob,OU=Eng,O=Acme".into())
    );
    assert_eq!(
        acls[0].policy_id(),
        "kafka-acl:ALLOW:User:alice:READ:TOPIC:LITERAL:orders:host=*"
    );
}

#[test]
fn fixture_import_validates_and_keeps_kafka_semantics() {
    let e = load(FIXTURE, &["User:admin"]);
    let alice = user("alice");
    // LITERAL grant, with Describe implied by Read, and nothing else.
    assert!(ok(&e, &alice, Operation::Read, &topic("orders"), IP));
    assert!(ok(&e, &alice, Operation::Describe, &topic("orders"), IP));
    assert!(!ok(&e, &alice, Operation::Write, &topic("orders"), IP));
    assert!(!ok(&e, &alice, Operation::Read, &topic("orders2"), IP));
    assert!(!ok(
        &e,
        &user("mallory"),
        Operation::Read,
        &topic("orders"),
        IP
    ));

    // PREFIXED: `payments.` matches payments.cards, not paymentsX.
    let svc = user("payments-svc");
    for op in Operation::ALL {
        assert!(ok(&e, &svc, op, &topic("payments.cards"), IP), "{op}");
    }
    assert!(!ok(&e, &svc, Operation::Read, &topic("paymentsXcards"), IP));
    assert!(ok(
        &e,
        &alice,
        Operation::Describe,
        &topic("payments.x"),
        IP
    ));
    assert!(!ok(&e, &alice, Operation::Read, &topic("payments.x"), IP));

    // Host-specific DENY of ALL, for User:*, beats the ALLOW.
    assert!(!ok(
        &e,
        &svc,
        Operation::Read,
        &topic("payments.cards"),
        "192.168.1.50"
    ));
    assert!(!ok(
        &e,
        &svc,
        Operation::Describe,
        &topic("payments.cards"),
        "192.168.1.50"
    ));
    assert!(ok(
        &e,
        &svc,
        Operation::Read,
        &topic("payments.cards"),
        "192.168.1.51"
    ));

    // LITERAL `*`: every topic, but no other resource type.
    let monitor = user("monitor");
    assert!(ok(
        &e,
        &monitor,
        Operation::Describe,
        &topic("anything"),
        IP
    ));
    assert!(ok(
        &e,
        &monitor,
        Operation::DescribeConfigs,
        &topic("anything"),
        IP
    ));
    assert!(!ok(&e, &monitor, Operation::Read, &topic("anything"), IP));
    assert!(!ok(
        &e,
        &monitor,
        Operation::Describe,
        &Resource::Group("anything".into()),
        IP
    ));

    // Groups: LITERAL for a user, PREFIXED for a Group principal.
    assert!(ok(
        &e,
        &alice,
        Operation::Read,
        &Resource::Group("orders-app".into()),
        IP
    ));
    assert!(ok(
        &e,
        &alice,
        Operation::Describe,
        &Resource::Group("orders-app".into()),
        IP
    ));
    let etl = Principal::service_account("loader", AuthMethod::Mtls).with_groups(["etl"]);
    assert!(ok(
        &e,
        &etl,
        Operation::Read,
        &Resource::Group("etl-nightly".into()),
        IP
    ));
    assert!(!ok(
        &e,
        &etl,
        Operation::Read,
        &Resource::Group("etl".into()),
        IP
    ));
    assert!(!ok(
        &e,
        &Principal::service_account("loader", AuthMethod::Mtls),
        Operation::Read,
        &Resource::Group("etl-nightly".into()),
        IP
    ));

    // Transactional ids and the cluster.
    let orders_svc = user("orders-svc");
    let tx = Resource::TransactionalId("orders-tx-7".into());
    assert!(ok(&e, &orders_svc, Operation::Write, &tx, IP));
    assert!(ok(&e, &orders_svc, Operation::Describe, &tx, IP));
    assert!(ok(
        &e,
        &orders_svc,
        Operation::IdempotentWrite,
        &Resource::Cluster,
        IP
    ));
    assert!(!ok(
        &e,
        &orders_svc,
        Operation::Create,
        &Resource::Cluster,
        IP
    ));
    let ops = user("ops");
    assert!(ok(
        &e,
        &ops,
        Operation::AlterConfigs,
        &Resource::Cluster,
        "10.0.0.9"
    ));
    assert!(ok(
        &e,
        &ops,
        Operation::DescribeConfigs,
        &Resource::Cluster,
        "10.0.0.9"
    ));
    assert!(!ok(
        &e,
        &ops,
        Operation::AlterConfigs,
        &Resource::Cluster,
        "10.0.0.8"
    ));
    assert!(ok(
        &e,
        &user("CN=bob,OU=Eng,O=Acme"),
        Operation::Create,
        &Resource::Cluster,
        IP
    ));

    // A DENY of Write from one host does not deny the Describe that the
    // ALLOW of Write implies (Kafka: DENY implies nothing).
    assert!(ok(&e, &alice, Operation::Write, &topic("audit"), IP));
    assert!(!ok(
        &e,
        &alice,
        Operation::Write,
        &topic("audit"),
        "10.9.9.9"
    ));
    assert!(ok(
        &e,
        &alice,
        Operation::Describe,
        &topic("audit"),
        "10.9.9.9"
    ));

    // The super user may do everything, and the DENY for User:* from
    // 192.168.1.50 does not apply to it; but plaintext is not implied.
    let admin = user("admin");
    for op in Operation::ALL {
        assert!(
            ok(&e, &admin, op, &topic("payments.cards"), "192.168.1.50"),
            "{op}"
        );
        assert!(ok(&e, &admin, op, &Resource::Cluster, IP), "{op}");
    }
    assert!(!ok(&e, &admin, Action::Decrypt, &topic("orders"), IP));
}

#[test]
fn deny_beats_allow_and_implies_nothing() {
    let input = json(&[
        ("TOPIC", "t", "LITERAL", "User:*", "*", "ALL", "ALLOW"),
        ("TOPIC", "t", "LITERAL", "User:eve", "*", "READ", "DENY"),
        (
            "TOPIC",
            "t",
            "LITERAL",
            "User:eve",
            "*",
            "ALTER_CONFIGS",
            "DENY",
        ),
    ]);
    let e = load(&input, &[]);
    let eve = user("eve");
    assert!(!ok(&e, &eve, Operation::Read, &topic("t"), IP));
    assert!(ok(&e, &eve, Operation::Describe, &topic("t"), IP));
    assert!(!ok(&e, &eve, Operation::AlterConfigs, &topic("t"), IP));
    assert!(ok(&e, &eve, Operation::DescribeConfigs, &topic("t"), IP));
    assert!(ok(&e, &eve, Operation::Write, &topic("t"), IP));
    assert!(ok(&e, &user("bob"), Operation::Read, &topic("t"), IP));
    // Deny of ALL denies Describe too.
    let all = load(
        &json(&[
            ("TOPIC", "t", "LITERAL", "User:*", "*", "ALL", "ALLOW"),
            ("TOPIC", "t", "LITERAL", "User:eve", "*", "ALL", "DENY"),
        ]),
        &[],
    );
    for op in Operation::ALL {
        assert!(!ok(&all, &eve, op, &topic("t"), IP), "{op}");
    }
}

#[test]
fn literal_prefixed_and_wildcard_resources() {
    let e = load(
        &json(&[
            ("TOPIC", "exact", "LITERAL", "User:a", "*", "READ", "ALLOW"),
            ("TOPIC", "pre", "PREFIXED", "User:b", "*", "READ", "ALLOW"),
            ("TOPIC", "*", "LITERAL", "User:c", "*", "READ", "ALLOW"),
            ("TOPIC", "*", "PREFIXED", "User:d", "*", "READ", "ALLOW"),
        ]),
        &[],
    );
    assert!(ok(&e, &user("a"), Operation::Read, &topic("exact"), IP));
    assert!(!ok(&e, &user("a"), Operation::Read, &topic("exact2"), IP));
    assert!(!ok(&e, &user("a"), Operation::Read, &topic("exac"), IP));
    assert!(ok(&e, &user("b"), Operation::Read, &topic("pre"), IP));
    assert!(ok(&e, &user("b"), Operation::Read, &topic("prefix"), IP));
    assert!(!ok(&e, &user("b"), Operation::Read, &topic("xpre"), IP));
    assert!(ok(&e, &user("c"), Operation::Read, &topic("anything"), IP));
    // PREFIXED `*` is a literal star prefix, not a wildcard.
    assert!(!ok(&e, &user("d"), Operation::Read, &topic("anything"), IP));
    assert!(ok(&e, &user("d"), Operation::Read, &topic("*star"), IP));
}

#[test]
fn odd_names_are_escaped() {
    let weird = "we*ird\"\\name";
    let e = load(
        &json(&[
            (
                "GROUP",
                weird,
                "PREFIXED",
                "User:a\"b",
                "*",
                "READ",
                "ALLOW",
            ),
            ("GROUP", weird, "LITERAL", "User:x", "*", "READ", "ALLOW"),
        ]),
        &[],
    );
    let g = |n: &str| Resource::Group(n.to_string());
    assert!(ok(
        &e,
        &user("a\"b"),
        Operation::Read,
        &g(&format!("{weird}-1")),
        IP
    ));
    assert!(!ok(
        &e,
        &user("a\"b"),
        Operation::Read,
        &g("weXird\"\\name-1"),
        IP
    ));
    assert!(ok(&e, &user("x"), Operation::Read, &g(weird), IP));
    assert_eq!(cedar_like_prefix("a*b"), r#""a\*b*""#);
    assert_eq!(cedar_string("a\nb"), r#""a\nb""#);
}

#[test]
fn host_acls_use_canonical_addresses() {
    let e = load(
        &json(&[
            (
                "TOPIC",
                "t",
                "LITERAL",
                "User:a",
                "0:0:0:0:0:0:0:1",
                "READ",
                "ALLOW",
            ),
            (
                "TOPIC", "t", "LITERAL", "User:b", "10.0.0.1", "READ", "ALLOW",
            ),
            (
                "TOPIC",
                "t",
                "LITERAL",
                "User:c",
                "db.example",
                "READ",
                "ALLOW",
            ),
        ]),
        &[],
    );
    assert!(ok(&e, &user("a"), Operation::Read, &topic("t"), "::1"));
    assert!(!ok(
        &e,
        &user("a"),
        Operation::Read,
        &topic("t"),
        "127.0.0.1"
    ));
    assert!(ok(&e, &user("b"), Operation::Read, &topic("t"), "10.0.0.1"));
    assert!(ok(
        &e,
        &user("b"),
        Operation::Read,
        &topic("t"),
        "::ffff:10.0.0.1"
    ));
    assert!(!ok(
        &e,
        &user("b"),
        Operation::Read,
        &topic("t"),
        "10.0.0.2"
    ));
    // A host name never matches, as in Kafka.
    assert!(!ok(
        &e,
        &user("c"),
        Operation::Read,
        &topic("t"),
        "10.0.0.1"
    ));
}

#[test]
fn super_users_by_group_and_service_account_bypass_denies() {
    let input = json(&[
        ("TOPIC", "*", "LITERAL", "User:*", "*", "ALL", "DENY"),
        (
            "CLUSTER",
            "kafka-cluster",
            "LITERAL",
            "User:*",
            "*",
            "ALTER",
            "DENY",
        ),
    ]);
    let e = load(&input, &["Group:ops", "ServiceAccount:custos", "User:root"]);
    let ops = user("anna").with_groups(["ops"]);
    let svc = Principal::service_account("custos", AuthMethod::Mtls);
    for p in [&ops, &svc, &user("root")] {
        assert!(ok(&e, p, Operation::Read, &topic("t"), IP));
        assert!(ok(&e, p, Operation::Alter, &Resource::Cluster, IP));
    }
    assert!(!ok(&e, &user("anna"), Operation::Read, &topic("t"), IP));
    assert!(!ok(&e, &user("custos"), Operation::Read, &topic("t"), IP));
    // Everyone a super user: DENYs are moot, as in Kafka.
    let all = load(&input, &["User:*"]);
    assert!(ok(&all, &user("anna"), Operation::Read, &topic("t"), IP));
}

#[test]
fn duplicates_collapse_and_ids_trace_back() {
    let input = json(&[
        ("TOPIC", "t", "LITERAL", "User:a", "*", "READ", "ALLOW"),
        ("TOPIC", "t", "LITERAL", "User:a", "*", "READ", "ALLOW"),
    ]);
    let e = load(&input, &["User:root"]);
    assert_eq!(
        e.policy_ids(),
        [
            "kafka-super-user:User:root",
            "kafka-acl:ALLOW:User:a:READ:TOPIC:LITERAL:t:host=*"
        ]
    );
}

#[test]
fn unsupported_and_malformed_input_names_the_line() {
    let token = "Current ACLs for resource `ResourcePattern(resourceType=TOPIC, name=t, patternType=LITERAL)`: \n \t(principal=User:a, host=*, operation=READ, permissionType=ALLOW) \n\nCurrent ACLs for resource `ResourcePattern(resourceType=DELEGATION_TOKEN, name=tok, patternType=LITERAL)`: \n \t(principal=User:a, host=*, operation=DESCRIBE, permissionType=ALLOW) \n";
    let err = import_acls(token, &ImportOptions::default()).unwrap_err();
    assert_eq!(
        err,
        AclImportError::UnsupportedResourceType {
            origin: "line 4".into(),
            resource_type: "DELEGATION_TOKEN".into()
        }
    );
    assert!(err
        .to_string()
        .starts_with("line 4: resource type DELEGATION_TOKEN is not supported"));

    let user_res = json(&[(
        "USER",
        "alice",
        "LITERAL",
        "User:a",
        "*",
        "CREATE_TOKENS",
        "ALLOW",
    )]);
    let err = import_acls(&user_res, &ImportOptions::default()).unwrap_err();
    assert!(
        err.to_string().starts_with("entry 1: resource type USER"),
        "{err}"
    );

    let bad_op = json(&[("TOPIC", "t", "LITERAL", "User:a", "*", "FLY", "ALLOW")]);
    assert!(matches!(
        import_acls(&bad_op, &ImportOptions::default()),
        Err(AclImportError::UnknownOperation { .. })
    ));
    let bad_perm = json(&[("TOPIC", "t", "LITERAL", "User:a", "*", "READ", "MAYBE")]);
    assert!(matches!(
        import_acls(&bad_perm, &ImportOptions::default()),
        Err(AclImportError::UnknownPermission { .. })
    ));
    let bad_pattern = json(&[("TOPIC", "t", "MATCH", "User:a", "*", "READ", "ALLOW")]);
    assert!(matches!(
        import_acls(&bad_pattern, &ImportOptions::default()),
        Err(AclImportError::UnsupportedPatternType { .. })
    ));
    let err = import_acls("garbage\n", &ImportOptions::default()).unwrap_err();
    assert!(err.to_string().starts_with("line 1:"), "{err}");
    let orphan = " \t(principal=User:a, host=*, operation=READ, permissionType=ALLOW)\n";
    assert!(import_acls(orphan, &ImportOptions::default()).is_err());
    let bad_principal = json(&[("TOPIC", "t", "LITERAL", "alice", "*", "READ", "ALLOW")]);
    assert!(matches!(
        import_acls(&bad_principal, &ImportOptions::default()),
        Err(AclImportError::UnsupportedPrincipal { .. })
    ));
    let err = import_acls(
        "[]",
        &ImportOptions {
            super_users: vec!["root".into()],
        },
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("super user 1:"), "{err}");
    assert!(matches!(
        import_acls(
            "[{\"resource_type\": \"TOPIC\"}]",
            &ImportOptions::default()
        ),
        Err(AclImportError::Json(_))
    ));
}

#[test]
fn listing_by_principal_header_is_accepted() {
    let text = "ACLs for principal `User:a`\nCurrent ACLs for resource `ResourcePattern(resourceType=GROUP, name=g, patternType=LITERAL)`: \n \t(principal=User:a, host=*, operation=READ, permissionType=ALLOW) \n\n";
    let e = load(text, &[]);
    assert!(ok(
        &e,
        &user("a"),
        Operation::Read,
        &Resource::Group("g".into()),
        IP
    ));
}

#[test]
fn fixture_output_matches_golden_file() {
    // The reviewed translation of the fixture; regenerate with
    // CUSTOS_BLESS=1 cargo test -p custos-policy fixture_output and review the diff.
    let golden_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/kafka-acls-list.cedar"
    );
    let options = ImportOptions {
        super_users: vec!["User:admin".into()],
    };
    let out = import_acls(FIXTURE, &options).unwrap();
    if std::env::var_os("CUSTOS_BLESS").is_some() {
        std::fs::write(golden_path, &out).unwrap();
    }
    let golden = std::fs::read_to_string(golden_path).unwrap();
    assert_eq!(out, golden);
}
