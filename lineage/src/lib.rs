//! Lineage: which principal wrote which topic, and which group read it.
//!
//! The proxy sees every produce and fetch, so it can build the data-flow graph
//! that compliance officers otherwise reconstruct by hand. This crate holds
//! the graph; the proxy feeds it. Persistence and OpenLineage export come with
//! the lineage issue.

use std::collections::{BTreeMap, BTreeSet};

/// Direction of a data flow between an application and a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Flow {
    /// The application produced to the topic.
    Produces,
    /// The application consumed from the topic.
    Consumes,
}

/// An in-memory lineage graph of (application, flow, topic) edges with counts.
#[derive(Debug, Default, Clone)]
pub struct LineageGraph {
    edges: BTreeMap<(String, Flow, String), u64>,
}

impl LineageGraph {
    /// Records that `app` moved `records` records in direction `flow` on `topic`.
    pub fn record(&mut self, app: &str, flow: Flow, topic: &str, records: u64) {
        *self
            .edges
            .entry((app.to_string(), flow, topic.to_string()))
            .or_default() += records;
    }

    /// Topics that `app` reads and then writes: the hops of a pipeline.
    pub fn downstream_of(&self, topic: &str) -> BTreeSet<String> {
        let readers: BTreeSet<&str> = self
            .edges
            .keys()
            .filter(|(_, f, t)| *f == Flow::Consumes && t == topic)
            .map(|(a, _, _)| a.as_str())
            .collect();
        self.edges
            .keys()
            .filter(|(a, f, _)| *f == Flow::Produces && readers.contains(a.as_str()))
            .map(|(_, _, t)| t.clone())
            .collect()
    }

    /// Records moved on one edge.
    pub fn count(&self, app: &str, flow: Flow, topic: &str) -> u64 {
        self.edges
            .get(&(app.to_string(), flow, topic.to_string()))
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_an_application_from_input_to_output() {
        let mut g = LineageGraph::default();
        g.record("enricher", Flow::Consumes, "orders", 10);
        g.record("enricher", Flow::Produces, "orders-enriched", 10);
        g.record("billing", Flow::Produces, "invoices", 3);
        g.record("enricher", Flow::Consumes, "orders", 5);
        assert_eq!(g.count("enricher", Flow::Consumes, "orders"), 15);
        let down: Vec<_> = g.downstream_of("orders").into_iter().collect();
        assert_eq!(down, vec!["orders-enriched".to_string()]);
        assert!(g.downstream_of("invoices").is_empty());
    }
}
