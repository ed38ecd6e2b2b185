//! The shipped example policies load, and their test cases all pass.

use custos_policy::{policy_test, PolicyEngine, TopicCatalog};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");

#[test]
fn example_policies_pass_their_test_cases() {
    let catalog: TopicCatalog = serde_yaml_ng::from_str(
        &std::fs::read_to_string(format!("{DIR}/example.catalog.yaml")).unwrap(),
    )
    .unwrap();
    let engine = PolicyEngine::load_files(&[format!("{DIR}/example.cedar")], catalog)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(engine.warnings().is_empty(), "{:?}", engine.warnings());
    let cases = std::fs::read_to_string(format!("{DIR}/example.tests.yaml")).unwrap();
    let report = policy_test::run_cases(&engine, &cases).unwrap();
    assert!(report.all_passed(), "{report}");
    assert_eq!(report.summary(), "21 passed, 0 failed");
}
