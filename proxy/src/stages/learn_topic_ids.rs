//! Learns topic ids from the broker's answers, for apis that name topics only
//! by id (share groups). The map itself and why it is safe: `topic_ids.rs`.

use std::sync::Arc;

use async_trait::async_trait;
use kafka_protocol::messages::{ApiKey, ResponseKind};

use crate::message::Response;
use crate::pipeline::{Blame, SessionInfo, Stage, StageError};
use crate::topic_ids::TopicIds;

const NAME: &str = "learn_topic_ids";

/// Feeds [`TopicIds`] from Metadata, DescribeTopicPartitions and CreateTopics
/// answers.
pub struct LearnTopicIds {
    ids: Arc<TopicIds>,
}

impl LearnTopicIds {
    /// A stage teaching `ids`.
    pub fn new(ids: Arc<TopicIds>) -> Self {
        Self { ids }
    }
}

/// Whether answers of `key` at `version` carry topic ids.
fn carries_ids(key: ApiKey, version: i16) -> bool {
    match key {
        ApiKey::Metadata => version >= 10,
        ApiKey::CreateTopics => version >= 7,
        _ => true,
    }
}

#[async_trait]
impl Stage for LearnTopicIds {
    fn name(&self) -> &'static str {
        NAME
    }

    fn response_api_keys(&self) -> &[ApiKey] {
        &[
            ApiKey::Metadata,
            ApiKey::DescribeTopicPartitions,
            ApiKey::CreateTopics,
        ]
    }

    fn wants_response_version(&self, key: ApiKey, version: i16) -> bool {
        carries_ids(key, version)
    }

    async fn on_response(
        &self,
        _session: &SessionInfo,
        response: &mut Response,
    ) -> Result<(), StageError> {
        if !carries_ids(response.api_key, response.api_version) {
            return Ok(());
        }
        let body = response
            .body()
            .map_err(|e| StageError::codec(NAME, Blame::Upstream, e))?;
        match body {
            ResponseKind::Metadata(m) => {
                for t in &m.topics {
                    if let (Some(name), 0) = (&t.name, t.error_code) {
                        self.ids.learn(*t.topic_id.as_bytes(), name.0.as_str());
                    }
                }
            }
            ResponseKind::DescribeTopicPartitions(d) => {
                for t in &d.topics {
                    if let (Some(name), 0) = (&t.name, t.error_code) {
                        self.ids.learn(*t.topic_id.as_bytes(), name.0.as_str());
                    }
                }
            }
            ResponseKind::CreateTopics(c) => {
                for t in &c.topics {
                    if t.error_code == 0 {
                        self.ids.learn(*t.topic_id.as_bytes(), t.name.0.as_str());
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
    use kafka_protocol::messages::{MetadataResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;

    #[tokio::test]
    async fn metadata_answers_teach_ids_of_topics_without_errors() {
        let ids = Arc::new(TopicIds::new());
        let stage = LearnTopicIds::new(ids.clone());
        let topic = |name: &str, id: u8, error_code: i16| {
            MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(name.into()))))
                .with_topic_id(uuid::Uuid::from_bytes([id; 16]))
                .with_error_code(error_code)
        };
        let body = MetadataResponse::default()
            .with_topics(vec![topic("orders", 1, 0), topic("denied", 2, 29)]);
        for (version, learned) in [(9, 0), (12, 1)] {
            let raw = Response::encode_local(
                ApiKey::Metadata,
                version,
                1,
                &ResponseKind::Metadata(body.clone()),
            )
            .expect("encode");
            let mut r = Response::parse(raw, ApiKey::Metadata, version).expect("parse");
            let session = SessionInfo::new(
                1,
                "127.0.0.1:1".parse().expect("addr"),
                None,
                false,
                crate::auth::Identity::anonymous(),
            );
            stage.on_response(&session, &mut r).await.expect("learn");
            assert_eq!(ids.len(), learned, "v{version}");
        }
        assert_eq!(ids.name(&[1; 16]).as_deref(), Some("orders"));
        assert!(ids.name(&[2; 16]).is_none());
    }
}
