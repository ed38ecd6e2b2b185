//! The stages Custos runs, one file each. Registering a stage is one line in
//! [`registry`]; its position there is its place in the request order.

use std::sync::Arc;

use crate::broker_map::BrokerMap;
use crate::pipeline::Stage;

pub mod api_versions;
pub mod audit_access;
pub mod authorize;
pub mod decrypt;
pub mod encrypt;
pub mod learn_topic_ids;
pub mod rewrite_addresses;

/// Everything a stage may need at construction.
pub struct StageDeps {
    /// The learned broker map.
    pub brokers: Arc<BrokerMap>,
    /// The policies, when authorization is configured.
    pub authorizer: Option<Arc<custos_policy::Authorizer>>,
    /// Where decisions and accesses are recorded.
    pub audit: Arc<dyn custos_audit::AuditSink>,
    /// The audit log (records travel with each request's notes).
    pub auditor: crate::audit_trail::Auditor,
    /// Metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Field encryption rules and keys, when configured.
    pub protection: Option<Arc<crate::field_rules::Protection>>,
    /// Topic names of the ids the broker has answered with.
    pub topic_ids: Arc<crate::topic_ids::TopicIds>,
}

/// The stages of the pipeline, in request order.
pub fn registry(deps: &StageDeps) -> Vec<Arc<dyn Stage>> {
    let mut stages: Vec<Arc<dyn Stage>> = Vec::new();
    // First, so it sees answers last: as the client sees them.
    stages.push(Arc::new(learn_topic_ids::LearnTopicIds::new(
        deps.topic_ids.clone(),
    )));
    if let Some(a) = &deps.authorizer {
        stages.push(Arc::new(
            authorize::Authorize::new(a.clone(), deps.audit.clone(), deps.metrics.clone())
                .with_topic_ids(deps.topic_ids.clone()),
        ));
    }
    if deps.auditor.enabled() {
        stages.push(Arc::new(
            audit_access::AuditAccess::new(deps.auditor.clone())
                .with_topic_ids(deps.topic_ids.clone()),
        ));
    }
    if let Some(p) = &deps.protection {
        stages.push(Arc::new(encrypt::Encrypt::new(
            p.clone(),
            deps.metrics.clone(),
        )));
        stages.push(Arc::new(
            decrypt::Decrypt::new(p.clone(), deps.authorizer.clone(), deps.metrics.clone())
                .with_topic_ids(deps.topic_ids.clone()),
        ));
    }
    stages.push(Arc::new(api_versions::ApiVersionsFilter {
        // Authorization, audit and encryption need topic names, not ids.
        name_based: deps.authorizer.is_some()
            || deps.auditor.enabled()
            || deps.protection.is_some(),
    }));
    stages.push(Arc::new(
        rewrite_addresses::RewriteAddresses::new(deps.brokers.clone())
            .with_metrics(deps.metrics.clone()),
    ));
    stages
}
