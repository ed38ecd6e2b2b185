//! The stages Custos runs, one file each. Registering a stage is one line in
//! [`registry`]; its position there is its place in the request order.

use std::sync::Arc;

use crate::broker_map::BrokerMap;
use crate::pipeline::Stage;

pub mod api_versions;
pub mod rewrite_addresses;

/// Everything a stage may need at construction.
pub struct StageDeps {
    /// The learned broker map.
    pub brokers: Arc<BrokerMap>,
}

/// The stages of the pipeline, in request order.
pub fn registry(deps: &StageDeps) -> Vec<Arc<dyn Stage>> {
    vec![
        Arc::new(api_versions::ApiVersionsFilter),
        Arc::new(rewrite_addresses::RewriteAddresses::new(
            deps.brokers.clone(),
        )),
    ]
}
