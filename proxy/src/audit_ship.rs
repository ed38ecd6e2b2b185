//! Ships durable audit records to a Kafka topic, for deployments with several
//! Custos instances (one place to collect and watch every instance's log) and
//! for SIEMs that read Kafka.
//!
//! The shipper tails the local store and produces each durable record (JSON,
//! keyed by `instance/seq`) with Custos's own upstream credentials, so the
//! topic can be closed to everyone else by the broker's ACLs. Only durable
//! records are shipped, so a crash never leaves the topic ahead of the store;
//! the last shipped sequence number is kept in a file beside the store, and a
//! restart may ship a few records twice (at-least-once: the key tells them
//! apart). The local store stays the authority that `custos audit verify`
//! checks; the topic is a copy for collection.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use tokio_util::sync::CancellationToken;

use crate::audit_trail::Auditor;
use crate::upstream::{OwnTopic, UpstreamSecurity};

/// Records per Produce request.
const BATCH: usize = 500;

/// Where and how to ship.
pub struct Shipper {
    /// The log to tail.
    pub auditor: Auditor,
    /// Destination topic (created with one partition if missing).
    pub topic: String,
    /// Bootstrap brokers.
    pub servers: Vec<(String, u16)>,
    /// Custos's own TLS/SASL towards the brokers.
    pub security: UpstreamSecurity,
    /// Connect timeout.
    pub timeout: Duration,
    /// File holding the next sequence number to ship.
    pub position_file: PathBuf,
}

impl Shipper {
    /// Ships until `shutdown`; failures are logged and retried.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut next = self.load_position();
        loop {
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.session(&mut next, &shutdown) => r,
            };
            if let Err(e) = result {
                tracing::warn!(topic = %self.topic, error = %e, next_seq = next, "audit shipping to Kafka failed; retrying");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }

    fn load_position(&self) -> u64 {
        std::fs::read_to_string(&self.position_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn save_position(&self, next: u64) -> Result<(), String> {
        let tmp = self.position_file.with_extension("tmp");
        std::fs::write(&tmp, next.to_string())
            .and_then(|()| std::fs::rename(&tmp, &self.position_file))
            .map_err(|e| format!("{}: {e}", self.position_file.display()))
    }

    fn own_topic(&self) -> OwnTopic {
        OwnTopic {
            servers: self.servers.clone(),
            security: self.security.clone(),
            timeout: self.timeout,
            topic: self.topic.clone(),
            replication_factor: -1,
            configs: Vec::new(),
            client_id: "custos-audit-shipper",
        }
    }

    /// One connection's worth of shipping.
    async fn session(&self, next: &mut u64, shutdown: &CancellationToken) -> Result<(), String> {
        let own = self.own_topic();
        let (host, port) = own.leader().await?;
        let mut conn = own.connect(&host, port).await?;
        let reader = self.auditor.reader().ok_or("audit log not configured")?;
        let instance = self.auditor.instance().to_string();
        loop {
            let durable = self
                .auditor
                .handle()
                .map(|h| h.health().durable_records)
                .unwrap_or(0);
            if *next >= durable {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                }
            }
            let from = *next;
            let reader = reader.clone();
            let page = tokio::task::spawn_blocking(move || {
                reader.scan(
                    &custos_audit::ScanFilter::default(),
                    Some(custos_audit::Cursor(from)),
                    BATCH,
                )
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
            // Only what is durable: a crash must never leave Kafka ahead.
            let records: Vec<_> = page
                .records
                .into_iter()
                .filter(|r| r.seq < durable)
                .collect();
            let Some(last) = records.last().map(|r| r.seq) else {
                continue;
            };
            let mut batch = Vec::with_capacity(records.len());
            for r in &records {
                let mut json = serde_json::to_value(&r.record).map_err(|e| e.to_string())?;
                if let Some(o) = json.as_object_mut() {
                    o.insert("hash".into(), custos_audit::hex::encode(&r.hash).into());
                }
                batch.push((
                    Bytes::from(format!("{instance}/{}", r.seq)),
                    Some(Bytes::from(json.to_string())),
                ));
            }
            let records_bytes = crate::upstream::plain_batch(batch)?;
            let answer = conn
                .call(
                    ApiKey::Produce,
                    9,
                    RequestKind::Produce(
                        ProduceRequest::default()
                            .with_acks(-1)
                            .with_timeout_ms(30_000)
                            .with_topic_data(vec![produce_request::TopicProduceData::default()
                                .with_name(TopicName(StrBytes::from_string(self.topic.clone())))
                                .with_partition_data(vec![
                                    produce_request::PartitionProduceData::default()
                                        .with_index(0)
                                        .with_records(Some(records_bytes)),
                                ])]),
                    ),
                )
                .await?;
            let ResponseKind::Produce(p) = answer else {
                return Err("not a Produce answer".into());
            };
            let part = p
                .responses
                .first()
                .and_then(|t| t.partition_responses.first())
                .ok_or("empty Produce answer")?;
            if part.error_code != 0 {
                return Err(format!(
                    "produce to {}: error code {} ({})",
                    self.topic,
                    part.error_code,
                    part.error_message.as_deref().unwrap_or("no message")
                ));
            }
            *next = last + 1;
            self.save_position(*next)?;
        }
    }
}
