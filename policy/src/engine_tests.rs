//! Tests of the schema, the engine, reload and the cache.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cedar_policy::{Entities, Request};

use crate::*;

fn engine(policies: &str) -> PolicyEngine {
    PolicyEngine::load(policies, TopicCatalog::empty()).unwrap_or_else(|e| panic!("{e}"))
}

fn alice() -> Principal {
    Principal::user("alice", AuthMethod::Mtls)
}

fn topic(n: &str) -> Resource {
    Resource::Topic(n.to_string())
}

fn ctx() -> RequestContext {
    RequestContext::new("10.0.0.7".parse().unwrap(), true, AuthMethod::Mtls)
}

fn allowed(e: &PolicyEngine, p: &Principal, op: impl Into<Action>, r: &Resource) -> bool {
    let d = e.authorize(p, op, r, &ctx());
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    d.allowed
}

#[test]
fn schema_parses_and_all_actions_exist() {
    let schema = custos_schema().unwrap();
    let actions: Vec<String> = schema.actions().map(ToString::to_string).collect();
    for a in Action::all() {
        assert!(
            actions.contains(&format!("Action::\"{a}\"")),
            "{a} missing from {actions:?}"
        );
    }
}

#[test]
fn default_is_deny() {
    let e = engine("");
    let d = e.authorize(&alice(), Operation::Read, &topic("orders"), &ctx());
    assert!(!d.allowed);
    assert!(d.determining_policies.is_empty());
}

#[test]
fn permit_read_implies_describe_but_not_other_operations() {
    let e = engine(
        r#"permit(principal == User::"alice", action in Action::"Read", resource == Topic::"orders");"#,
    );
    assert!(allowed(&e, &alice(), Operation::Read, &topic("orders")));
    assert!(allowed(&e, &alice(), Operation::Describe, &topic("orders")));
    for op in [
        Operation::Write,
        Operation::DescribeConfigs,
        Operation::Create,
    ] {
        assert!(!allowed(&e, &alice(), op, &topic("orders")), "{op}");
    }
    assert!(!allowed(&e, &alice(), Operation::Read, &topic("other")));
}

#[test]
fn write_delete_alter_imply_describe_and_alter_configs_implies_describe_configs() {
    for (granted, implied) in [
        (Operation::Write, Operation::Describe),
        (Operation::Delete, Operation::Describe),
        (Operation::Alter, Operation::Describe),
        (Operation::AlterConfigs, Operation::DescribeConfigs),
    ] {
        let e = engine(&format!(
            r#"permit(principal, action in Action::"{granted}", resource);"#
        ));
        assert!(allowed(&e, &alice(), granted, &topic("t")));
        assert!(allowed(&e, &alice(), implied, &topic("t")), "{granted}");
        // Exactly Kafka's table: nothing else is implied.
        for op in Operation::ALL {
            let expect = op == granted || op == implied;
            assert_eq!(
                allowed(&e, &alice(), op, &topic("t")),
                expect,
                "{granted} vs {op}"
            );
            assert_eq!(op.is_allowed_by(granted), expect, "{granted} vs {op}");
        }
    }
}

#[test]
fn forbid_with_equality_denies_read_but_not_describe() {
    let e = engine(
        r#"
        permit(principal, action in Action::"All", resource);
        forbid(principal == User::"alice", action == Action::"Read", resource);
        "#,
    );
    assert!(!allowed(&e, &alice(), Operation::Read, &topic("t")));
    assert!(allowed(&e, &alice(), Operation::Describe, &topic("t")));
    let d = e.authorize(&alice(), Operation::Read, &topic("t"), &ctx());
    assert_eq!(d.determining_policies, vec!["policy:1"]);
}

#[test]
fn forbid_with_in_would_also_deny_describe() {
    // Documents why forbids must use `==`: `in` follows the hierarchy.
    let e = engine(
        r#"
        permit(principal, action in Action::"All", resource);
        forbid(principal, action in Action::"Read", resource);
        "#,
    );
    assert!(!allowed(&e, &alice(), Operation::Describe, &topic("t")));
}

#[test]
fn all_covers_every_kafka_operation_but_not_decrypt() {
    let e = engine(r#"permit(principal, action in Action::"All", resource);"#);
    for op in Operation::ALL {
        assert!(allowed(&e, &alice(), op, &topic("t")), "{op}");
        assert!(allowed(&e, &alice(), op, &Resource::Cluster), "{op}");
    }
    assert!(!allowed(&e, &alice(), Action::Decrypt, &topic("t")));
}

#[test]
fn decrypt_is_its_own_action_on_topics_only() {
    let e = engine(
        r#"permit(principal in Group::"pii-readers", action == Action::"Decrypt", resource);"#,
    );
    let reader = alice().with_groups(["pii-readers"]);
    assert!(allowed(&e, &reader, Action::Decrypt, &topic("t")));
    assert!(!allowed(&e, &alice(), Action::Decrypt, &topic("t")));
    let d = e.authorize(
        &reader,
        Action::Decrypt,
        &Resource::Group("g".into()),
        &ctx(),
    );
    assert!(!d.allowed);
    assert_eq!(d.errors.len(), 1);
    // Decrypt on a non-topic can never match: the validator warns.
    let never =
        engine(r#"permit(principal, action == Action::"Decrypt", resource is ConsumerGroup);"#);
    assert!(!never.warnings().is_empty());
    assert_eq!(never.warnings()[0].policy_id.as_deref(), Some("policy:0"));
    assert!(e.warnings().is_empty());
}

#[test]
fn decrypt_decides_on_the_data_classification_in_its_context() {
    let e = engine(
        r#"@id("billing-cards")
        permit(principal in Group::"billing", action == Action::"Decrypt", resource is Topic)
        when { context.classification == "pci" };
        @id("no-pii-from-outside")
        forbid(principal, action == Action::"Decrypt", resource)
        when { context.classification == "pii" && !context.tls };"#,
    );
    let billing = alice().with_groups(["billing"]);
    let decide = |p: &Principal, class: Option<&str>, tls: bool| {
        let mut c = ctx();
        c.tls = tls;
        c.classification = class.map(str::to_string);
        let d = e.authorize(p, Action::Decrypt, &topic("payments"), &c);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        d.allowed
    };
    assert!(decide(&billing, Some("pci"), true));
    assert!(!decide(&billing, Some("pii"), true));
    // No classification reads as "": neither policy's condition holds.
    assert!(!decide(&billing, None, true));
    assert!(!decide(&alice(), Some("pci"), true));
    // Consecutive decisions on one thread with different classifications
    // must not share a context.
    assert!(decide(&billing, Some("pci"), false));
    assert!(!decide(&billing, Some("pcx"), false));
    // `context.classification` exists for Decrypt only: using it for a Kafka
    // operation fails validation at load.
    let bad = PolicyEngine::load(
        r#"permit(principal, action == Action::"Read", resource) when { context.classification == "pci" };"#,
        TopicCatalog::empty(),
    );
    assert!(bad.is_err());
}

#[test]
fn group_membership_and_service_accounts() {
    let e = engine(
        r#"permit(principal in Group::"etl", action == Action::"Write", resource is Topic);"#,
    );
    let svc = Principal::service_account("loader", AuthMethod::ScramSha512).with_groups(["etl"]);
    assert!(allowed(&e, &svc, Operation::Write, &topic("raw")));
    let svc_no_group = Principal::service_account("loader", AuthMethod::ScramSha512);
    assert!(!allowed(&e, &svc_no_group, Operation::Write, &topic("raw")));
    assert!(!allowed(
        &e,
        &svc,
        Operation::Write,
        &Resource::Group("raw".into())
    ));
}

#[test]
fn catalog_tags_owner_and_classification_reach_policies() {
    let catalog: TopicCatalog = serde_yaml_ng::from_str(
        r#"
- match: { prefix: "customers." }
  tags: [pii]
- match: { exact: customers.eu }
  owner: crm
  classification: restricted
"#,
    )
    .unwrap();
    let e = PolicyEngine::load(
        r#"
        permit(principal in Group::"analysts", action == Action::"Read", resource)
          when { resource.tags.contains("pii") == false };
        permit(principal, action == Action::"Write", resource is Topic)
          when { resource has owner && resource.owner == principal.name };
        forbid(principal, action == Action::"Read", resource is Topic)
          when { resource has classification && resource.classification == "restricted" && !context.tls };
        "#,
        catalog,
    )
    .unwrap();
    let analyst = alice().with_groups(["analysts"]);
    assert!(allowed(&e, &analyst, Operation::Read, &topic("orders")));
    assert!(!allowed(
        &e,
        &analyst,
        Operation::Read,
        &topic("customers.us")
    ));
    let crm = Principal::service_account("crm", AuthMethod::Mtls);
    assert!(allowed(&e, &crm, Operation::Write, &topic("customers.eu")));
    assert!(!allowed(&e, &crm, Operation::Write, &topic("customers.us")));
}

#[test]
fn context_attributes_reach_policies() {
    let e = engine(
        r#"
        permit(principal, action == Action::"Read", resource)
          when { context.tls && context.auth_method == "mtls"
                 && context.client_ip.isInRange(ip("10.0.0.0/8"))
                 && context.client_address like "10.*"
                 && context.client_id like "billing-*"
                 && context.time >= 1700000000 };
        "#,
    );
    let mut c = ctx();
    c.client_id = Some("billing-7".into());
    let ok = |c: &RequestContext| e.authorize(&alice(), Operation::Read, &topic("t"), c);
    assert!(ok(&c).allowed);
    let mut no_tls = c.clone();
    no_tls.tls = false;
    assert!(!ok(&no_tls).allowed);
    let mut outside = c.clone();
    outside.client_address = "192.168.1.1".parse().unwrap();
    assert!(!ok(&outside).allowed);
    let mut old = c.clone();
    old.time = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    assert!(!ok(&old).allowed);
    let mut no_id = c.clone();
    no_id.client_id = None;
    assert!(!ok(&no_id).allowed);
    // IPv4-mapped IPv6 addresses are presented as the IPv4 address.
    let mut mapped = c;
    mapped.client_address = "::ffff:10.1.2.3".parse::<IpAddr>().unwrap();
    assert!(ok(&mapped).allowed);
}

#[test]
fn request_entities_and_context_conform_to_the_schema() {
    let catalog: TopicCatalog = serde_yaml_ng::from_str(
        "- match: {exact: t}\n  tags: [pii]\n  owner: o\n  classification: c\n",
    )
    .unwrap();
    let e = PolicyEngine::load("", catalog).unwrap();
    let schema = custos_schema().unwrap();
    let p = alice().with_groups(["g1", "g2"]);
    for (r, action) in [
        topic("t"),
        topic("untagged"),
        Resource::Group("g".into()),
        Resource::TransactionalId("tx".into()),
        Resource::Cluster,
    ]
    .into_iter()
    .flat_map(|r| Action::all().map(move |a| (r.clone(), a)))
    .filter(|(r, a)| *a != Action::Decrypt || matches!(r, Resource::Topic(_)))
    {
        let prepared = e.request(&p, action, &r, &ctx()).unwrap();
        let (req, entities) = (prepared.request, prepared.entities);
        // Re-check the engine's schema-free fast path against the schema,
        // and its assumed transitive closure against one Cedar computes.
        let checked = Entities::from_entities(entities.iter().cloned(), Some(&schema)).unwrap();
        for entity in entities.iter() {
            let ancestors = |store: &Entities| -> std::collections::BTreeSet<String> {
                store
                    .ancestors(&entity.uid())
                    .unwrap()
                    .map(ToString::to_string)
                    .collect()
            };
            assert_eq!(
                ancestors(&entities),
                ancestors(&checked),
                "{} for {action:?} on {r:?}",
                entity.uid()
            );
        }
        Request::new(
            req.principal().unwrap().clone(),
            req.action().unwrap().clone(),
            req.resource().unwrap().clone(),
            req.context().unwrap().clone(),
            Some(&schema),
        )
        .unwrap();
    }
}

#[test]
fn evaluation_error_denies_even_with_a_matching_permit() {
    // Overflow is one of the few errors strict validation cannot rule out;
    // the forbid errors, and an erroring forbid must not let the permit through.
    let e = engine(
        r#"
        permit(principal, action == Action::"Read", resource);
        forbid(principal, action == Action::"Read", resource)
          when { context.time * 9223372036854775807 > 0 };
        "#,
    );
    let d = e.authorize(&alice(), Operation::Read, &topic("t"), &ctx());
    assert!(!d.allowed);
    assert_eq!(d.errors.len(), 1);
    assert!(d.errors[0].contains("policy:1"), "{:?}", d.errors);
}

#[test]
fn ids_come_from_annotations_or_position() {
    let e = engine(
        r#"
        @id("readers") permit(principal, action == Action::"Read", resource);
        permit(principal, action == Action::"Write", resource);
        "#,
    );
    assert_eq!(e.policy_ids(), ["readers", "policy:1"]);
    let d = e.authorize(&alice(), Operation::Read, &topic("t"), &ctx());
    assert_eq!(d.determining_policies, vec!["readers"]);
}

#[test]
fn duplicate_ids_are_rejected() {
    let err = PolicyEngine::load(
        r#"
        @id("x") permit(principal, action == Action::"Read", resource);
        @id("x") permit(principal, action == Action::"Write", resource);
        "#,
        TopicCatalog::empty(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("policy id `x` is used by both policy:0 and policy:1"),
        "{err}"
    );
}

#[test]
fn parse_errors_name_the_position() {
    let err = PolicyEngine::load(
        "permit(principal, action, resource);\n\npermit(principal, action resource);\n",
        TopicCatalog::empty(),
    )
    .unwrap_err();
    let PolicyError::Parse(problems) = &err else {
        panic!("{err}")
    };
    let loc = problems[0].location.as_ref().unwrap();
    assert_eq!((loc.source.as_str(), loc.line), ("policy", 3), "{err}");
}

#[test]
fn validation_errors_name_policy_and_position() {
    let err = PolicyEngine::load(
        "@id(\"ok\") permit(principal, action, resource);\n\
         @id(\"typo\")\npermit(principal, action == Action::\"Read\", resource is Topic)\n  when { resource.tagz.contains(\"pii\") };\n",
        TopicCatalog::empty(),
    )
    .unwrap_err();
    let PolicyError::Validation(problems) = &err else {
        panic!("{err}")
    };
    assert_eq!(problems.len(), 1, "{err}");
    assert_eq!(problems[0].policy_id.as_deref(), Some("typo"));
    assert_eq!(problems[0].location.as_ref().unwrap().line, 4, "{err}");
    let text = err.to_string();
    assert!(text.contains("policy `typo` at policy:4:"), "{text}");
    // Unknown actions and entity types are schema errors too.
    for bad in [
        r#"permit(principal, action == Action::"Fly", resource);"#,
        r#"permit(principal == Admin::"x", action, resource);"#,
    ] {
        assert!(matches!(
            PolicyEngine::load(bad, TopicCatalog::empty()),
            Err(PolicyError::Validation(_))
        ));
    }
}

#[test]
fn templates_are_rejected() {
    let err = PolicyEngine::load(
        "permit(principal == ?principal, action, resource);",
        TopicCatalog::empty(),
    )
    .unwrap_err();
    assert!(matches!(err, PolicyError::Template { .. }), "{err}");
}

#[test]
fn hash_covers_policies_and_catalog() {
    let a = engine("permit(principal, action, resource);");
    let b = engine("permit(principal, action, resource);");
    let c = engine("forbid(principal, action, resource);");
    assert_eq!(a.hash(), b.hash());
    assert_eq!(a.hash().len(), 64);
    assert_ne!(a.hash(), c.hash());
    let tagged = PolicyEngine::load(
        "permit(principal, action, resource);",
        serde_yaml_ng::from_str("- match: {exact: t}\n  tags: [pii]\n").unwrap(),
    )
    .unwrap();
    assert_ne!(a.hash(), tagged.hash());
}

#[test]
fn load_files_reads_directories_in_name_order() {
    let dir = std::env::temp_dir().join(format!("custos-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("b.cedar"),
        r#"permit(principal, action == Action::"Write", resource);"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("a.cedar"),
        "permit(principal, action == Action::\"Read\", resource);\n@id(\"named\") permit(principal, action == Action::\"Create\", resource);",
    )
    .unwrap();
    std::fs::write(dir.join("notes.txt"), "not a policy").unwrap();
    let e = PolicyEngine::load_files(&[&dir], TopicCatalog::empty()).unwrap();
    assert_eq!(e.policy_ids(), ["a.cedar:0", "named", "b.cedar:0"]);
    std::fs::write(
        dir.join("c.cedar"),
        "permit(principal, action == Action::\"Nope\", resource);",
    )
    .unwrap();
    let err = PolicyEngine::load_files(&[&dir], TopicCatalog::empty()).unwrap_err();
    assert!(
        err.to_string().contains("policy `c.cedar:0` at c.cedar:1:"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let missing = PolicyEngine::load_files(&[dir.join("gone.cedar")], TopicCatalog::empty());
    assert!(matches!(missing, Err(PolicyError::Io { .. })));
}

#[test]
fn reload_swaps_and_keeps_old_engine_on_errors() {
    let auth = Authorizer::new(engine(
        r#"permit(principal, action == Action::"Read", resource);"#,
    ));
    assert_eq!(auth.generation(), 1);
    let read = |a: &Authorizer| {
        a.authorize(&alice(), Operation::Read, &topic("t"), &ctx())
            .allowed
    };
    assert!(read(&auth));
    let old_hash = auth.current().hash().to_string();

    // Syntax error: old engine stays.
    assert!(matches!(
        auth.reload("permit(principal, action", TopicCatalog::empty()),
        Err(PolicyError::Parse(_))
    ));
    assert_eq!(auth.generation(), 1);
    assert!(read(&auth));
    // Schema-invalid: old engine stays.
    assert!(matches!(
        auth.reload(
            r#"permit(principal, action == Action::"Read", resource) when { resource.nope };"#,
            TopicCatalog::empty()
        ),
        Err(PolicyError::Validation(_))
    ));
    assert_eq!(auth.generation(), 1);
    assert_eq!(auth.current().hash(), old_hash);

    // A good reload swaps and bumps the generation.
    assert_eq!(auth.reload("", TopicCatalog::empty()).unwrap(), 2);
    assert_eq!(auth.generation(), 2);
    assert!(!read(&auth));
}

#[test]
fn held_engine_survives_a_reload() {
    let auth = Authorizer::new(engine(
        r#"permit(principal, action == Action::"Read", resource);"#,
    ));
    let held = auth.current();
    auth.reload("", TopicCatalog::empty()).unwrap();
    assert!(
        held.authorize(&alice(), Operation::Read, &topic("t"), &ctx())
            .allowed
    );
    assert_eq!(held.generation(), 1);
}

#[test]
fn cache_hits_and_invalidates_on_generation_change() {
    let auth = Authorizer::new(engine(
        r#"permit(principal, action == Action::"Read", resource);"#,
    ));
    let mut cache = DecisionCache::new(16, Duration::from_secs(3600));
    let p = alice();
    let c = ctx();
    assert!(
        cache
            .authorize(&auth, &p, Operation::Read, &topic("t"), &c)
            .allowed
    );
    assert!(
        cache
            .authorize(&auth, &p, Operation::Read, &topic("t"), &c)
            .allowed
    );
    assert!(
        !cache
            .authorize(&auth, &p, Operation::Write, &topic("t"), &c)
            .allowed
    );
    assert_eq!(cache.stats(), (1, 2));
    assert_eq!(cache.len(), 1);

    auth.reload("", TopicCatalog::empty()).unwrap();
    assert!(
        !cache
            .authorize(&auth, &p, Operation::Read, &topic("t"), &c)
            .allowed
    );
    assert_eq!(cache.stats(), (1, 3));

    // A failed reload changes nothing, so the cache keeps its entries.
    auth.reload("nonsense", TopicCatalog::empty()).unwrap_err();
    assert!(
        !cache
            .authorize(&auth, &p, Operation::Read, &topic("t"), &c)
            .allowed
    );
    assert_eq!(cache.stats(), (2, 3));
}

#[test]
fn cache_is_bounded_and_expires() {
    let auth = Authorizer::new(engine(r#"permit(principal, action, resource);"#));
    let mut cache = DecisionCache::new(3, Duration::from_secs(3600));
    let (p, c) = (alice(), ctx());
    for i in 0..10 {
        cache.authorize(&auth, &p, Operation::Read, &topic(&format!("t{i}")), &c);
        assert!(cache.len() <= 3);
    }
    // The oldest were evicted first: t9 is cached, t0 is not.
    cache.authorize(&auth, &p, Operation::Read, &topic("t9"), &c);
    assert_eq!(cache.stats().0, 1);
    cache.authorize(&auth, &p, Operation::Read, &topic("t0"), &c);
    assert_eq!(cache.stats().0, 1);

    let mut expiring = DecisionCache::new(3, Duration::ZERO);
    expiring.authorize(&auth, &p, Operation::Read, &topic("t"), &c);
    std::thread::sleep(Duration::from_millis(2));
    expiring.authorize(&auth, &p, Operation::Read, &topic("t"), &c);
    assert_eq!(expiring.stats(), (0, 2));
}

#[test]
fn decision_time_before_epoch_does_not_panic() {
    let e = engine(r#"permit(principal, action, resource) when { context.time < 0 };"#);
    let mut c = ctx();
    c.time = SystemTime::UNIX_EPOCH - Duration::from_secs(5);
    assert!(
        e.authorize(&alice(), Operation::Read, &topic("t"), &c)
            .allowed
    );
}

#[test]
fn index_gives_the_same_decisions_as_the_whole_set() {
    let acls = crate::acl_import::import_acls(
        include_str!("../tests/fixtures/kafka-acls-list.txt"),
        &crate::acl_import::ImportOptions {
            super_users: vec!["User:admin".into(), "Group:ops".into()],
        },
    )
    .unwrap();
    let extra = r#"
        @id("x-eq-group") permit(principal == Group::"ops", action, resource);
        @id("x-in-user") permit(principal in User::"carl", action == Action::"Delete", resource is Topic);
        @id("x-is") permit(principal is ServiceAccount, action in [Action::"Read", Action::"AlterConfigs"], resource is ConsumerGroup);
        @id("x-is-in") forbid(principal is User in Group::"interns", action == Action::"Write", resource);
        @id("x-res-in") permit(principal, action == Action::"Create", resource in Topic::"new");
        @id("x-err") forbid(principal in Group::"flaky", action, resource) when { context.time * 9223372036854775807 > 0 };
    "#;
    let example = include_str!("../examples/example.cedar");
    let catalog: TopicCatalog =
        serde_yaml_ng::from_str(include_str!("../examples/example.catalog.yaml")).unwrap();
    let e = PolicyEngine::load_sources(
        &[("acls", &acls), ("extra", extra), ("example", example)],
        catalog,
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let principals = [
        Principal::user("alice", AuthMethod::Mtls),
        Principal::user("admin", AuthMethod::Mtls),
        Principal::user("carl", AuthMethod::ScramSha256).with_groups(["crm-team", "crm-team"]),
        Principal::user("ivy", AuthMethod::Mtls).with_groups(["interns", "analysts"]),
        Principal::user("otto", AuthMethod::Mtls).with_groups(["ops"]),
        Principal::user("fred", AuthMethod::Mtls).with_groups(["flaky", "platform-admins"]),
        Principal::service_account("orders-svc", AuthMethod::ScramSha512),
        Principal::service_account("loader", AuthMethod::Mtls).with_groups(["etl", "pii-readers"]),
        Principal::user("payments-svc", AuthMethod::None),
    ];
    let resources = [
        topic("orders"),
        topic("orders.created"),
        topic("payments.cards"),
        topic("customers.cards"),
        topic("customers.eu"),
        topic("audit"),
        topic("new"),
        Resource::Group("orders-app".into()),
        Resource::Group("etl-nightly".into()),
        Resource::Group("analytics-x".into()),
        Resource::TransactionalId("orders-tx-1".into()),
        Resource::TransactionalId("orders-svc-1".into()),
        Resource::Cluster,
    ];
    let mut contexts = vec![ctx()];
    let mut plain = ctx();
    plain.tls = false;
    plain.client_address = "192.168.1.50".parse().unwrap();
    contexts.push(plain);
    let mut local = ctx();
    local.tls = false;
    local.client_address = "127.0.0.1".parse().unwrap();
    local.auth_method = AuthMethod::ScramSha256;
    contexts.push(local);

    let (mut checked, mut allowed) = (0, 0);
    for p in &principals {
        for a in Action::all() {
            for r in &resources {
                for c in &contexts {
                    let mut fast = e.authorize(p, a, r, c);
                    let mut slow = e.authorize_unindexed(p, a, r, c);
                    if a == Action::Decrypt && !matches!(r, Resource::Topic(_)) {
                        assert!(!fast.allowed);
                        continue;
                    }
                    fast.errors.sort();
                    slow.errors.sort();
                    assert_eq!(fast, slow, "{p:?} {a} {r:?} {c:?}");
                    checked += 1;
                    allowed += usize::from(fast.allowed);
                }
            }
        }
    }
    // The matrix must exercise both outcomes broadly to mean anything.
    assert!(
        checked > 3000 && allowed > 300,
        "{checked} checked, {allowed} allowed"
    );
}

#[test]
fn determining_policies_are_the_ids_as_written() {
    // Cedar's `PolicyId` display escapes quotes and non-ASCII letters; the
    // audit log must cite the id the policy author wrote.
    let e = engine(
        r#"@id("équipe \"a\"") permit(principal == User::"alice", action == Action::"Read", resource);"#,
    );
    let d = e.authorize(&alice(), Operation::Read, &topic("orders"), &ctx());
    assert!(d.allowed);
    assert_eq!(d.determining_policies, vec!["équipe \"a\"".to_string()]);
    assert_eq!(e.policy_ids(), ["équipe \"a\"".to_string()]);
}

#[test]
fn decisions_hold_across_more_connections_than_the_thread_remembers() {
    // More principals and contexts than the per-thread memory, in turn and
    // twice over, so entries are evicted and rebuilt: each decision must
    // still be its own principal's.
    let e = engine(
        r#"permit(principal in Group::"even", action == Action::"Read", resource == Topic::"orders");"#,
    );
    for round in 0..2 {
        for i in 0..20 {
            let group = if i % 2 == 0 { "even" } else { "odd" };
            let p = Principal::user(format!("u{i}"), AuthMethod::Mtls).with_groups([group]);
            let mut c = ctx();
            c.client_address = format!("10.3.0.{i}").parse().unwrap();
            let d = e.authorize(&p, Operation::Read, &topic("orders"), &c);
            assert_eq!(d.allowed, i % 2 == 0, "u{i} round {round}");
        }
    }
}

#[test]
fn context_values_are_what_cedar_builds() {
    use cedar_policy::{Context, RestrictedExpression};
    // The reference: the same attributes through Cedar's public API.
    let reference = |c: &RequestContext, classification: Option<&str>| {
        let address = c.client_address.to_canonical().to_string();
        let mut pairs = vec![
            (
                "client_ip".to_string(),
                RestrictedExpression::new_ip(&address),
            ),
            (
                "client_address".to_string(),
                RestrictedExpression::new_string(address),
            ),
            ("tls".to_string(), RestrictedExpression::new_bool(c.tls)),
            (
                "client_id".to_string(),
                RestrictedExpression::new_string(c.client_id.clone().unwrap_or_default()),
            ),
            (
                "auth_method".to_string(),
                RestrictedExpression::new_string(c.auth_method.as_str().to_string()),
            ),
            (
                "time".to_string(),
                RestrictedExpression::new_long(
                    c.time.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64,
                ),
            ),
        ];
        if let Some(class) = classification {
            pairs.push((
                "classification".to_string(),
                RestrictedExpression::new_string(class.to_string()),
            ));
        }
        Context::from_pairs(pairs).unwrap()
    };
    let as_core = |c: &Context| AsRef::<cedar_policy_core::ast::Context>::as_ref(c).clone();
    let mut c = ctx();
    c.client_id = Some("orders-service".into());
    let mut mapped = ctx();
    mapped.client_address = "::ffff:10.1.2.3".parse().unwrap();
    mapped.tls = false;
    mapped.auth_method = AuthMethod::ScramSha256;
    let mut v6 = ctx();
    v6.client_address = "2001:db8::7".parse().unwrap();
    for c in [c, mapped, v6] {
        let secs = c.time.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let fast = crate::engine::context_values(&c, secs).unwrap();
        let fast = Context::from(cedar_policy_core::ast::Context::Value(std::sync::Arc::new(
            fast,
        )));
        assert_eq!(as_core(&fast), as_core(&reference(&c, None)), "{c:?}");
        let mut d = c.clone();
        d.classification = Some("pii".into());
        let decrypt = crate::engine::decrypt_context(&d).unwrap();
        assert_eq!(as_core(&decrypt), as_core(&reference(&d, Some("pii"))));
    }
}
