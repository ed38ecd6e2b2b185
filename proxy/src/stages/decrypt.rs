//! Decrypts or masks protected parts of fetched records (Fetch responses).
//!
//! For a topic with a rule, each record's protected parts are opened; a
//! principal whom Cedar allows `Decrypt` on the topic gets the original
//! bytes, everyone else the rule's mask. A shredded subject's parts read as
//! an explicit "erased" placeholder, so consumers keep working. Without an
//! authorizer nobody may decrypt (fail closed). When a key cannot be had (KMS
//! down) the partition answers KAFKA_STORAGE_ERROR without records, which
//! clients retry; ciphertext is never handed out in place of plaintext.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use custos_crypto::key_ref::KeyRef;
use custos_crypto::keys::KeyError;
use custos_crypto::kms::KmsError;
use custos_policy::{Action, Authorizer, RequestContext, Resource};
use kafka_protocol::messages::{ApiKey, ResponseKind};

use crate::field_rules::{self, Access, KeyLookup, Protection, RevealError};
use crate::message::Response;
use crate::metrics::Metrics;
use crate::pipeline::{Blame, SessionInfo, Stage, StageError};
use crate::record_batch::{self, Segment};

const NAME: &str = "decrypt";

/// Kafka's KAFKA_STORAGE_ERROR: retriable; the consumer fetches again.
const KAFKA_STORAGE_ERROR: i16 = 56;

/// The decrypt stage.
pub struct Decrypt {
    protection: Arc<Protection>,
    authorizer: Option<Arc<Authorizer>>,
    metrics: Arc<Metrics>,
}

impl Decrypt {
    /// A stage revealing or masking records under `protection`'s rules.
    pub fn new(
        protection: Arc<Protection>,
        authorizer: Option<Arc<Authorizer>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            protection,
            authorizer,
            metrics,
        }
    }

    fn access(&self, session: &SessionInfo, topic: &str) -> Access {
        let Some(a) = &self.authorizer else {
            return Access::Masked;
        };
        let ctx = RequestContext::new(
            session.client_addr.ip(),
            session.tls,
            session.principal.auth_method,
        );
        let decision = session
            .decisions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .authorize(
                a,
                &session.principal,
                Action::Decrypt,
                &Resource::Topic(topic.to_string()),
                &ctx,
            );
        if decision.allowed {
            Access::Plaintext
        } else {
            Access::Masked
        }
    }

    /// Reveals one partition's records; `Ok(None)` when nothing changed.
    async fn reveal(
        &self,
        rule: &field_rules::Rule,
        topic: &str,
        access: Access,
        records: &Bytes,
        keys: &mut HashMap<KeyRef, KeyLookup>,
    ) -> Result<Option<Bytes>, String> {
        let Ok(mut segments) = record_batch::decode(records) else {
            // Bytes Custos cannot read may hold anything: nothing leaves.
            return Err("record batch cannot be read".into());
        };
        let tokenizer = self.protection.tokenizer.as_ref();
        let mut count = 0u64;
        for seg in segments.iter_mut() {
            let Segment::Batch(b) = seg else { continue };
            // One pass per batch with the keys known so far; a key not
            // looked up yet is fetched and the batch revealed again from
            // its original records (clones share the bytes). In steady
            // state every key is known and the records are read once.
            loop {
                let mut attempt = b.records.clone();
                let mut changed = false;
                let mut missing = None;
                for r in attempt.iter_mut() {
                    match field_rules::reveal_record(rule, topic, r, access, keys, tokenizer) {
                        Ok(c) => changed |= c,
                        Err(RevealError::Unresolved(k)) => {
                            missing = Some(k);
                            break;
                        }
                        Err(e @ RevealError::Unavailable(_)) => return Err(e.to_string()),
                    }
                }
                if let Some(k) = missing {
                    let found = self.resolve(&k, topic).await;
                    keys.insert(k, found);
                    continue;
                }
                count += attempt.len() as u64;
                if changed {
                    b.records = attempt;
                    b.dirty = true;
                }
                break;
            }
        }
        self.metrics
            .decrypted_records(count, access == Access::Plaintext);
        record_batch::encode(&segments)
            .map(Some)
            .map_err(|e| format!("re-encoding the batch failed: {e}"))
    }

    async fn resolve(&self, r: &KeyRef, topic: &str) -> KeyLookup {
        let ctx = field_rules::dek_context(topic);
        match self.protection.keys.decryption_key(r, &ctx).await {
            Ok(k) => KeyLookup::Key(k),
            Err(KeyError::Erased { .. }) => KeyLookup::Erased,
            // Bound to another topic or tampered: a retriable error
            // would stall the partition for good.
            Err(KeyError::Kms(KmsError::Rejected(_))) => KeyLookup::Undecryptable,
            Err(e) => {
                tracing::warn!(topic, error = %e, "data key unavailable; partition answered with a retriable error");
                KeyLookup::Unavailable(e.to_string())
            }
        }
    }
}

#[async_trait]
impl Stage for Decrypt {
    fn name(&self) -> &'static str {
        NAME
    }

    fn response_api_keys(&self) -> &[ApiKey] {
        &[ApiKey::Fetch]
    }

    async fn on_response(
        &self,
        session: &SessionInfo,
        response: &mut Response,
    ) -> Result<(), StageError> {
        // Decoded either way (the audit stage reads it too), but re-encoded
        // only when a topic here has a rule.
        let protected = match response
            .body()
            .map_err(|e| StageError::codec(NAME, Blame::Upstream, e))?
        {
            ResponseKind::Fetch(f) => f.responses.iter().any(|t| {
                self.protection
                    .rules
                    .for_topic(t.topic.0.as_str())
                    .is_some()
            }),
            _ => false,
        };
        if !protected {
            return Ok(());
        }
        let body = response
            .body_mut()
            .map_err(|e| StageError::codec(NAME, Blame::Upstream, e))?;
        let ResponseKind::Fetch(f) = body else {
            return Ok(());
        };
        let mut keys = HashMap::new();
        let mut details = Vec::new();
        for t in f.responses.iter_mut() {
            let topic = t.topic.0.as_str().to_string();
            let Some(rule) = self.protection.rules.for_topic(&topic) else {
                continue;
            };
            let access = self.access(session, &topic);
            details.push((
                format!("revealed.{topic}"),
                match access {
                    Access::Plaintext => "plaintext",
                    Access::Masked => "masked",
                }
                .to_string(),
            ));
            for p in t.partitions.iter_mut() {
                let Some(records) = &p.records else { continue };
                if records.is_empty() {
                    continue;
                }
                match self.reveal(rule, &topic, access, records, &mut keys).await {
                    Ok(Some(new)) => p.records = Some(new),
                    Ok(None) => {}
                    Err(why) => {
                        self.metrics.decrypt_failure();
                        tracing::warn!(topic = %topic, partition = p.partition_index, why = %why, "fetched records withheld");
                        p.error_code = KAFKA_STORAGE_ERROR;
                        p.records = Some(Bytes::new());
                    }
                }
            }
        }
        if !details.is_empty() {
            crate::protection::note_keys(
                &response.audit,
                custos_audit::EventKind::Fetch,
                keys.keys(),
                &details,
            );
        }
        Ok(())
    }
}
