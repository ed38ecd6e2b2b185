//! Topic ids to topic names, learned from the broker's own answers.
//!
//! Share-group apis (KIP-932) name topics only by id, while policies, field
//! rules and audit records name them. Every Metadata, DescribeTopicPartitions
//! and CreateTopics answer that passes through Custos teaches this map (see
//! `stages/learn_topic_ids.rs`). A request naming an id not learned yet is
//! answered UNKNOWN_TOPIC_ID, a retriable error on which clients refresh their
//! metadata, through Custos, which teaches the id. Only broker answers feed
//! the map, so a client cannot bind an id to a name of its choosing.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// A topic id as it travels on the wire.
pub type TopicId = [u8; 16];

/// The all-zero id Kafka uses for "no id".
const NONE: TopicId = [0; 16];

/// Ids kept before the map starts over: far above any real cluster's topic
/// count, so it only bounds memory if something goes wrong.
const MAX_IDS: usize = 1 << 20;

/// The learned id-to-name map, shared by every connection.
#[derive(Debug, Default)]
pub struct TopicIds {
    names: RwLock<HashMap<TopicId, Arc<str>>>,
}

impl TopicIds {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that the broker named topic `id` `name`.
    pub fn learn(&self, id: TopicId, name: &str) {
        if id == NONE || name.is_empty() {
            return;
        }
        if self.name(&id).as_deref() == Some(name) {
            return;
        }
        let mut names = self.names.write().unwrap_or_else(|e| e.into_inner());
        if names.len() >= MAX_IDS {
            names.clear();
        }
        names.insert(id, Arc::from(name));
    }

    /// The name of topic `id`, if some broker answer has named it.
    pub fn name(&self, id: &TopicId) -> Option<Arc<str>> {
        self.names
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// How many ids are known.
    pub fn len(&self) -> usize {
        self.names.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no id is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_relearns_and_ignores_the_null_id() {
        let ids = TopicIds::new();
        let a = [7u8; 16];
        assert!(ids.name(&a).is_none());
        ids.learn(a, "orders");
        assert_eq!(ids.name(&a).as_deref(), Some("orders"));
        // A deleted and re-created topic gets a new id; the old one may linger.
        let b = [8u8; 16];
        ids.learn(b, "orders");
        assert_eq!(ids.name(&b).as_deref(), Some("orders"));
        ids.learn(NONE, "nothing");
        ids.learn([9u8; 16], "");
        assert_eq!(ids.len(), 2);
        assert!(ids.name(&NONE).is_none());
    }
}
