//! Encrypts protected parts of records on their way to the broker (Produce).
//!
//! Only the batches of topics that a rule covers are opened; everything else
//! in the request is forwarded as it came. A batch is rewritten record by
//! record and keeps its header (offsets, timestamps, producer fields, codec),
//! so idempotence and transactions work as before. A topic with a rule never
//! receives plaintext: when no data key can be had (KMS down, no cached key)
//! its partitions fail with a retriable error, and a record the rule cannot
//! parse fails its partition with INVALID_RECORD; neither is forwarded.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ApiKey, ProduceResponse, RequestKind, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::field_rules::{self, Protection, RecordError};
use crate::message::Request;
use crate::metrics::Metrics;
use crate::pipeline::{Blame, SessionInfo, Stage, StageError, Verdict};
use crate::produce_records;
use crate::record_batch::{self, Field, RewriteError};

const NAME: &str = "encrypt";

/// Kafka's KAFKA_STORAGE_ERROR: retriable, so the client tries again once
/// the KMS answers; nothing was written.
const KAFKA_STORAGE_ERROR: i16 = 56;
/// Kafka's INVALID_RECORD: the batch is refused for one of its records.
const INVALID_RECORD: i16 = 87;

/// The encrypt stage.
pub struct Encrypt {
    protection: Arc<Protection>,
    metrics: Arc<Metrics>,
}

impl Encrypt {
    /// A stage applying `protection`'s rules to produced records.
    pub fn new(protection: Arc<Protection>, metrics: Arc<Metrics>) -> Self {
        Self {
            protection,
            metrics,
        }
    }
}

/// A partition that could not be protected, and how the client is told.
struct Failed {
    topic: String,
    partition: i32,
    error: i16,
    message: String,
    record_errors: Vec<(i32, String)>,
}

impl Failed {
    fn answer(&self) -> PartitionProduceResponse {
        PartitionProduceResponse::default()
            .with_index(self.partition)
            .with_error_code(self.error)
            .with_base_offset(-1)
            .with_error_message(Some(StrBytes::from_string(self.message.clone())))
            .with_record_errors(
                self.record_errors
                    .iter()
                    .map(|(i, m)| {
                        BatchIndexAndErrorMessage::default()
                            .with_batch_index(*i)
                            .with_batch_index_error_message(Some(StrBytes::from_string(m.clone())))
                    })
                    .collect(),
            )
    }
}

/// Adds the failed partitions' answers to a Produce response.
fn merge_failures(p: &mut ProduceResponse, failed: &[Failed]) {
    for f in failed {
        let entry = match p
            .responses
            .iter_mut()
            .find(|t| t.name.0.as_str() == f.topic)
        {
            Some(t) => t,
            None => {
                p.responses.push(
                    TopicProduceResponse::default()
                        .with_name(TopicName(StrBytes::from_string(f.topic.clone()))),
                );
                let last = p.responses.len() - 1;
                &mut p.responses[last]
            }
        };
        entry.partition_responses.push(f.answer());
    }
}

/// Room a batch is given to grow per sealed part: an envelope's header
/// (most of it the wrapped data key), nonce and tag, in base64 for a JSON
/// field. Only a first guess; the buffer grows if a KMS wraps keys longer.
const GROWTH_PER_PART: usize = 512;

impl Encrypt {
    /// Protects one partition's records; `Ok(None)` when nothing changed.
    async fn protect(
        &self,
        rule: &field_rules::Rule,
        topic: &str,
        records: &Bytes,
        used: &mut Vec<custos_crypto::key_ref::KeyRef>,
    ) -> Result<Option<Bytes>, (i16, String, Vec<(i32, String)>)> {
        let unreadable = |e: record_batch::BatchError| {
            (
                INVALID_RECORD,
                format!("custos: record batch cannot be read: {e}"),
                Vec::new(),
            )
        };
        let refused = |record_errors| {
            (
                INVALID_RECORD,
                "custos: a record cannot be protected by its topic's rule".to_string(),
                record_errors,
            )
        };
        let max = record_batch::DEFAULT_MAX_DECOMPRESSED;
        let count = record_batch::data_record_count(records, max).map_err(unreadable)?;
        if count == 0 {
            return Ok(None);
        }
        // Checked and decompressed once, for the subject pass and the sealing.
        let opened = record_batch::OpenedBlob::open(records, max).map_err(unreadable)?;
        // First the keys, which may need the KMS (async), then the sealing.
        // A rule keyed by subject reads every record's subject first; the
        // others know their keys from the record count alone.
        let keys = &self.protection.keys;
        let mut subjects: HashSet<Vec<u8>> = HashSet::new();
        let mut per_record_subject: Vec<Option<Vec<u8>>> = Vec::new();
        let fixed_subject = field_rules::deterministic_key_id(rule, topic);
        if rule.config.subject.is_some() {
            let mut record_errors = Vec::new();
            opened
                .visit(&mut |rec| {
                    match field_rules::subject_of(rule, rec) {
                        Ok(s) => {
                            if let Some(s) = &s {
                                subjects.insert(s.clone());
                            }
                            per_record_subject.push(s);
                        }
                        Err(e) => {
                            record_errors.push((rec.index, e.to_string()));
                            per_record_subject.push(None);
                        }
                    }
                    Ok::<(), std::convert::Infallible>(())
                })
                .map_err(|e| match e {
                    RewriteError::Batch(e) => unreadable(e),
                    RewriteError::Edit(never) => match never {},
                })?;
            if !record_errors.is_empty() {
                return Err(refused(record_errors));
            }
        } else if let Some(s) = &fixed_subject {
            subjects.insert(s.clone());
        }
        let unavailable = |e: custos_crypto::keys::KeyError| {
            self.metrics.encrypt_failure("key");
            tracing::warn!(topic, rule = %rule.config.name, error = %e, "no data key: produce to a protected topic refused");
            (
                KAFKA_STORAGE_ERROR,
                format!("custos: encryption key unavailable ({e}); retry later"),
                Vec::new(),
            )
        };
        let kek = rule.config.kek.as_str();
        let mut subject_keys = HashMap::new();
        for s in subjects {
            let k = keys.subject_key(&s, kek).await.map_err(unavailable)?;
            subject_keys.insert(s, k);
        }
        // Each data key serves at most `max_encryptions` seals, so a large
        // batch takes several keys, each reserved for a run of records.
        let parts = rule.parts_per_record();
        let per_key = (self.protection.max_encryptions / parts).max(1);
        let mut topic_keys = Vec::new();
        if !rule.uses_stored_keys() {
            let ctx = field_rules::dek_context(topic);
            let mut left = count;
            while left > 0 {
                let n = left.min(per_key);
                topic_keys.push(
                    keys.encryption_key(kek, &ctx, n * parts)
                        .await
                        .map_err(unavailable)?,
                );
                left -= n;
            }
        }
        // Sealed record by record into the new blob: each record is read in
        // place and its sealed parts are written once; no record list is
        // built.
        // Never more than three times what arrived: a compressed batch may
        // claim millions of tiny records, and its output is compressed too.
        let grown = usize::try_from(count.saturating_mul(parts))
            .unwrap_or(usize::MAX)
            .saturating_mul(GROWTH_PER_PART)
            .min(records.len().saturating_mul(2));
        let mut out = BytesMut::with_capacity(records.len().saturating_add(grown));
        let mut n = 0usize;
        let mut record_errors = Vec::new();
        let mut bufs = field_rules::SealBuffers::default();
        let sealed = opened.rewrite(&mut out, &mut |rec, scratch| {
            let at = n;
            n += 1;
            let subject = match per_record_subject.get(at) {
                Some(s) => s.as_ref(),
                None => fixed_subject.as_ref(),
            };
            let dek = match (topic_keys.get(at / per_key as usize), subject) {
                (Some(k), _) => k,
                (None, Some(s)) => match subject_keys.get(s) {
                    Some(k) => k,
                    None => {
                        record_errors.push((rec.index, "no subject key".to_string()));
                        return Ok(false);
                    }
                },
                // A tombstone with nothing to seal (see `subject_of`).
                (None, None) if rec.value == Field::Null => return Ok(false),
                (None, None) => {
                    record_errors.push((rec.index, "no subject id".to_string()));
                    return Ok(false);
                }
            };
            match field_rules::seal_view(rule, topic, rec, scratch, dek, &mut bufs) {
                Ok(changed) => Ok(changed),
                // Sealing itself failed: the partition, not the record.
                Err(RecordError::Seal(m)) => Err(m),
                Err(e) => {
                    record_errors.push((rec.index, e.to_string()));
                    Ok(false)
                }
            }
        });
        match sealed {
            Ok(_) => {}
            Err(RewriteError::Batch(e)) => return Err(unreadable(e)),
            Err(RewriteError::Edit(m)) => {
                return Err((
                    KAFKA_STORAGE_ERROR,
                    format!("custos: encryption failed: {m}"),
                    Vec::new(),
                ))
            }
        }
        if !record_errors.is_empty() {
            return Err(refused(record_errors));
        }
        for k in topic_keys.iter().chain(subject_keys.values()) {
            if !used.contains(k.key_ref()) {
                used.push(k.key_ref().clone());
            }
        }
        self.metrics.encrypted_records(count);
        Ok(Some(out.freeze()))
    }
}

#[async_trait]
impl Stage for Encrypt {
    fn name(&self) -> &'static str {
        NAME
    }

    fn request_api_keys(&self) -> &[ApiKey] {
        &[ApiKey::Produce]
    }

    async fn on_request(
        &self,
        _session: &SessionInfo,
        request: &mut Request,
    ) -> Result<Verdict, StageError> {
        let version = request.version();
        // The bounded walk (no allocation sized by the client) finds each
        // partition's records; only those of topics with a rule are opened,
        // and the rest of the body is forwarded as it came.
        let raw = request.raw().clone();
        let offset = raw.len() - request.body_bytes().len();
        let mut work = Vec::new();
        for (i, p) in produce_records::produce_partitions(request.body_bytes(), version)
            .map_err(|e| StageError {
                stage: NAME,
                blame: Blame::Client,
                message: e.to_string(),
            })?
            .iter()
            .enumerate()
        {
            if self.protection.rules.for_topic(p.topic).is_none() {
                continue;
            }
            if let Some(r) = &p.records {
                let records = raw.slice(offset + r.start..offset + r.end);
                work.push((i, p.topic.to_string(), p.partition, records));
            }
        }
        if work.is_empty() {
            return Ok(Verdict::Forward);
        }
        let acks0 = crate::message::produce_acks(request.body_bytes(), version) == Some(0);
        let mut replaced = Vec::new();
        let mut failed = Vec::new();
        let mut used = Vec::new();
        let mut rules_applied: Vec<(String, String)> = Vec::new();
        for (i, topic, partition, records) in work {
            let Some(rule) = self.protection.rules.for_topic(&topic) else {
                continue;
            };
            let detail = (format!("encrypted.{topic}"), rule.config.name.clone());
            if !rules_applied.contains(&detail) {
                rules_applied.push(detail);
            }
            match self.protect(rule, &topic, &records, &mut used).await {
                Ok(Some(new)) => replaced.push((i, new)),
                Ok(None) => {}
                Err((error, message, record_errors)) => {
                    if error == INVALID_RECORD {
                        self.metrics.encrypt_failure("invalid_record");
                    }
                    failed.push(Failed {
                        topic,
                        partition,
                        error,
                        message,
                        record_errors,
                    });
                }
            }
        }
        crate::protection::note_keys(
            &request.audit,
            custos_audit::EventKind::Produce,
            &used,
            &rules_applied,
        );
        if !failed.is_empty() && acks0 {
            // An acks=0 client cannot be told; the broker's answer to a
            // failed acks=0 produce is closing the connection.
            return Err(StageError {
                stage: NAME,
                blame: Blame::Internal,
                message: "acks=0 produce to a protected topic could not be encrypted".into(),
            });
        }
        let splice_failed = |e: String| StageError {
            stage: NAME,
            blame: Blame::Internal,
            message: format!("splicing encrypted records into the request: {e}"),
        };
        let spliced = produce_records::splice_records(
            request.head(),
            request.body_bytes(),
            version,
            &replaced,
        )
        .map_err(|e| splice_failed(e.to_string()))?;
        request
            .replace_frame(spliced)
            .map_err(|e| splice_failed(e.to_string()))?;
        if failed.is_empty() {
            return Ok(Verdict::Forward);
        }
        // Cut out the partitions that could not be protected. Decoding is
        // safe: the bounded reader walked this body.
        let body = request
            .body_mut()
            .map_err(|e| StageError::codec(NAME, Blame::Client, e))?;
        let RequestKind::Produce(p) = body else {
            return Ok(Verdict::Forward);
        };
        for t in p.topic_data.iter_mut() {
            let name = t.name.0.as_str().to_string();
            t.partition_data.retain(|x| {
                !failed
                    .iter()
                    .any(|f| f.topic == name && f.partition == x.index)
            });
        }
        p.topic_data.retain(|t| !t.partition_data.is_empty());
        if p.topic_data.is_empty() {
            let mut answer = ProduceResponse::default();
            merge_failures(&mut answer, &failed);
            return Ok(Verdict::Respond(Box::new(ResponseKind::Produce(answer))));
        }
        request.amends.0.push(Box::new(move |r| match r {
            ResponseKind::Produce(p) => {
                merge_failures(p, &failed);
                Ok(())
            }
            _ => Err("the broker's answer is not a Produce response".into()),
        }));
        Ok(Verdict::Forward)
    }
}

#[cfg(test)]
#[path = "encrypt_decrypt_tests.rs"]
mod tests;
