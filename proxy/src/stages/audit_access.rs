//! Audit records of data access and admin operations.
//!
//! A Produce is recorded with what it carried (topic, partition, record count,
//! bytes), completed from the broker's answer with the offsets written; a
//! Fetch with what the broker returned (records, bytes, first offset); an
//! admin api with the resources it names. Never payload bytes: record counts
//! come from batch headers. The records travel in the exchange's
//! [`crate::audit_trail::AuditNotes`]; the session makes them durable before
//! the client gets the answer (strict mode).
//!
//! When the audit store cannot write, Produce and Fetch are refused here with
//! KAFKA_STORAGE_ERROR (retriable): no data access happens unrecorded.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use custos_audit::{AuditRecord, EventKind, Resource, ResourceType};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::audit_trail::Auditor;
use crate::message::{Request, Response};
use crate::pipeline::{
    Blame, FetchAnswer, FetchPartition, PartitionEdit, SessionInfo, Stage, StageError, Verdict,
};
use crate::resources;
use crate::topic_ids::TopicIds;
use crate::wire::{Reader, WireError};

const NAME: &str = "audit_access";

/// Kafka's KAFKA_STORAGE_ERROR: retriable, so clients try again later.
const KAFKA_STORAGE_ERROR: i16 = 56;

/// Admin apis: each call is recorded with the resources it names.
const ADMIN: &[ApiKey] = &[
    ApiKey::CreateTopics,
    ApiKey::DeleteTopics,
    ApiKey::DeleteRecords,
    ApiKey::CreatePartitions,
    ApiKey::AlterConfigs,
    ApiKey::IncrementalAlterConfigs,
    ApiKey::CreateAcls,
    ApiKey::DeleteAcls,
    ApiKey::DeleteGroups,
    ApiKey::OffsetDelete,
    ApiKey::AlterShareGroupOffsets,
    ApiKey::DeleteShareGroupOffsets,
    ApiKey::ElectLeaders,
    ApiKey::AlterPartitionReassignments,
    ApiKey::AlterReplicaLogDirs,
    ApiKey::AlterUserScramCredentials,
    ApiKey::AlterClientQuotas,
    ApiKey::UpdateFeatures,
];

/// The data-access and admin audit stage.
pub struct AuditAccess {
    auditor: Auditor,
    request_keys: Vec<ApiKey>,
    /// Names of the topics ShareFetch answers name by id.
    ids: Arc<TopicIds>,
}

impl AuditAccess {
    /// A stage recording into `auditor`'s log.
    pub fn new(auditor: Auditor) -> Self {
        let mut request_keys = vec![ApiKey::Produce, ApiKey::Fetch, ApiKey::ShareFetch];
        request_keys.extend_from_slice(ADMIN);
        Self {
            auditor,
            request_keys,
            ids: Arc::new(TopicIds::new()),
        }
    }

    /// Names the topics of ShareFetch answers with `ids`.
    pub fn with_topic_ids(mut self, ids: Arc<TopicIds>) -> Self {
        self.ids = ids;
        self
    }
}

fn base(session: &SessionInfo, request: &Request, kind: EventKind) -> AuditRecord {
    AuditRecord::new(kind, request.audit.instance())
        .at(SystemTime::now())
        .with_action(format!("{:?}", request.api_key))
        .with_principal(
            session.principal_label.to_string(),
            session.principal.auth_method.as_str(),
        )
        .with_client(
            session.client_label.to_string(),
            request.header.client_id.as_ref().map(|c| c.to_string()),
        )
        .with_request(
            request.api_key as i16,
            request.version(),
            request.correlation_id(),
        )
}

/// An exchange's Fetch record, with what the decrypt stage noted in a
/// `partial` one (keys used, plaintext or masked).
fn fetch_record(
    session: &SessionInfo,
    notes: &crate::audit_trail::AuditNotes,
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    partial: Option<AuditRecord>,
) -> AuditRecord {
    let mut record = AuditRecord::new(EventKind::Fetch, notes.instance())
        .at(SystemTime::now())
        .with_action(format!("{api:?}"))
        .with_principal(
            session.principal_label.to_string(),
            session.principal.auth_method.as_str(),
        )
        .with_client(session.client_label.to_string(), None)
        .with_request(api as i16, version, correlation_id);
    if let Some(p) = partial {
        record.key_ids = p.key_ids;
        record.subject_tokens = p.subject_tokens;
        record.details.extend(p.details);
    }
    record
}

/// (record count, first base offset) of the record batches in `records`.
/// Reads only batch headers; a partial trailing batch (fetch responses may
/// end with one) is not counted.
pub fn batch_stats(records: &[u8]) -> (u64, Option<i64>) {
    let mut count = 0u64;
    let mut first = None;
    let mut pos = 0usize;
    // baseOffset(8) batchLength(4) ... recordsCount at byte 57 of the batch.
    while records.len() >= pos + 61 {
        let len = i32::from_be_bytes([
            records[pos + 8],
            records[pos + 9],
            records[pos + 10],
            records[pos + 11],
        ]);
        let Ok(len) = usize::try_from(len) else { break };
        let end = pos + 12 + len;
        if end > records.len() {
            break;
        }
        if first.is_none() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&records[pos..pos + 8]);
            first = Some(i64::from_be_bytes(b));
        }
        let n = i32::from_be_bytes([
            records[pos + 57],
            records[pos + 58],
            records[pos + 59],
            records[pos + 60],
        ]);
        count += u64::try_from(n).unwrap_or(0);
        pos = end;
    }
    (count, first)
}

/// The resources of a Produce body: its transactional id, if any, then each
/// topic with each partition's record count and bytes (bounded reader, one
/// walk).
fn produce_contents(body: &[u8], version: i16) -> Result<Vec<Resource>, WireError> {
    let mut r = Reader::new(body, version >= 9);
    let txn = r.nullable_str("transactional id")?;
    r.i16("acks")?;
    r.i32("timeout")?;
    let n = r.array_len("topics")?.unwrap_or(0);
    let mut out = Vec::with_capacity(n.min(64) + 1);
    for _ in 0..n {
        let mut topic = Resource::topic(r.str("topic name")?);
        let np = r.array_len("partitions")?.unwrap_or(0);
        for _ in 0..np {
            let p = r.i32("partition")?;
            let records = r.nullable_bytes("records")?.unwrap_or_default();
            let (count, _) = batch_stats(records);
            topic = topic.with_partition(p, None, count, records.len() as u64);
            r.tagged_fields()?;
        }
        r.tagged_fields()?;
        out.push(topic);
    }
    // Listed after the topics, where the records always had it.
    if let Some(x) = txn {
        out.push(Resource::new(ResourceType::TransactionalId, x));
    }
    Ok(out)
}

fn storage_error(api: ApiKey, version: i16, body: &[u8]) -> Result<ResponseKind, String> {
    let t = resources::touches(api, version, body).map_err(|e| e.to_string())?;
    let name = |n: &str| TopicName(StrBytes::from_string(n.to_string()));
    Ok(match api {
        ApiKey::Produce => ResponseKind::Produce(
            ProduceResponse::default().with_responses(
                t.topics
                    .iter()
                    .map(|x| {
                        produce_response::TopicProduceResponse::default()
                            .with_name(name(x.name))
                            .with_partition_responses(
                                x.partitions
                                    .iter()
                                    .map(|p| {
                                        produce_response::PartitionProduceResponse::default()
                                            .with_index(*p)
                                            .with_error_code(KAFKA_STORAGE_ERROR)
                                            .with_base_offset(-1)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        // Named by id: one error for the whole request, nothing acquired.
        ApiKey::ShareFetch => ResponseKind::ShareFetch(
            ShareFetchResponse::default()
                .with_error_code(KAFKA_STORAGE_ERROR)
                .with_error_message(Some(StrBytes::from_static_str(
                    "the gateway's audit log is unavailable",
                ))),
        ),
        _ => ResponseKind::Fetch(
            FetchResponse::default().with_responses(
                t.topics
                    .iter()
                    .map(|x| {
                        fetch_response::FetchableTopicResponse::default()
                            .with_topic(name(x.name))
                            .with_partitions(
                                x.partitions
                                    .iter()
                                    .map(|p| {
                                        fetch_response::PartitionData::default()
                                            .with_partition_index(*p)
                                            .with_error_code(KAFKA_STORAGE_ERROR)
                                            .with_high_watermark(-1)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
    })
}

#[async_trait]
impl Stage for AuditAccess {
    fn name(&self) -> &'static str {
        NAME
    }

    fn request_api_keys(&self) -> &[ApiKey] {
        &self.request_keys
    }

    fn response_api_keys(&self) -> &[ApiKey] {
        &[ApiKey::Produce, ApiKey::Fetch, ApiKey::ShareFetch]
    }

    fn streams_fetch(&self, _version: i16) -> bool {
        true
    }

    async fn on_fetch_partition(
        &self,
        session: &SessionInfo,
        answer: &FetchAnswer,
        part: &FetchPartition,
    ) -> Result<Option<PartitionEdit>, StageError> {
        let notes = &answer.audit;
        if !notes.enabled() || part.records.is_empty() {
            return Ok(None);
        }
        let (count, first) = batch_stats(&part.records);
        let name = part
            .topic
            .as_deref()
            .or(part.topic_id.as_deref())
            .unwrap_or_default();
        notes.update(|records| {
            // The first partition makes the record (or completes the one the
            // decrypt stage left); partitions may come in any order.
            let at = match records.iter().position(|r| r.kind == EventKind::Fetch) {
                Some(i) if records[i].action.is_some() => i,
                found => {
                    let partial = found.map(|i| records.remove(i));
                    records.push(fetch_record(
                        session,
                        notes,
                        ApiKey::Fetch,
                        answer.api_version,
                        answer.correlation_id,
                        partial,
                    ));
                    records.len() - 1
                }
            };
            if count == 0 {
                return;
            }
            let rec = &mut records[at];
            let res = match rec
                .resources
                .iter()
                .position(|r| r.kind == ResourceType::Topic && r.name == name)
            {
                Some(i) => &mut rec.resources[i],
                None => {
                    rec.resources.push(Resource::topic(name));
                    let last = rec.resources.len() - 1;
                    &mut rec.resources[last]
                }
            };
            *res = std::mem::replace(res, Resource::topic("")).with_partition(
                part.partition,
                first,
                count,
                part.records.len() as u64,
            );
        });
        Ok(None)
    }

    async fn on_request(
        &self,
        session: &SessionInfo,
        request: &mut Request,
    ) -> Result<Verdict, StageError> {
        if !request.audit.enabled() {
            return Ok(Verdict::Forward);
        }
        let api = request.api_key;
        let version = request.version();
        let client = |message: String| StageError {
            stage: NAME,
            blame: Blame::Client,
            message,
        };
        if matches!(api, ApiKey::Produce | ApiKey::Fetch | ApiKey::ShareFetch)
            && !self.auditor.healthy()
        {
            // Fail closed: no access without its record.
            let why = self.auditor.failure().unwrap_or_default();
            tracing::error!(api = ?api, failure = %why, "audit log unhealthy: data access refused");
            let answer = storage_error(api, version, request.body_bytes()).map_err(client)?;
            return Ok(Verdict::Respond(Box::new(answer)));
        }
        match api {
            ApiKey::Produce => {
                let body = request.body_bytes();
                let mut record = base(session, request, EventKind::Produce);
                for r in produce_contents(body, version).map_err(|e| client(e.to_string()))? {
                    record = record.with_resource(r);
                }
                request.audit.push(record);
            }
            // Their records are made from the answers: what was read.
            ApiKey::Fetch | ApiKey::ShareFetch => {}
            _ => {
                let mut record = base(session, request, EventKind::Admin);
                // Resource names where the api names them; the decisions
                // recorded by the authorize stage carry the rest.
                if let Ok(t) = resources::touches(api, version, request.body_bytes()) {
                    for x in &t.topics {
                        record = record.with_resource(Resource::topic(x.name));
                    }
                    for g in &t.groups {
                        record = record.with_resource(Resource::group(*g));
                    }
                    for c in &t.configs {
                        record = record.with_resource(Resource::new(
                            ResourceType::from_name(&format!("config:{}", c.resource_type)),
                            c.name,
                        ));
                    }
                }
                request.audit.push(record);
            }
        }
        Ok(Verdict::Forward)
    }

    async fn on_response(
        &self,
        session: &SessionInfo,
        response: &mut Response,
    ) -> Result<(), StageError> {
        if !response.audit.enabled() {
            return Ok(());
        }
        let notes = response.audit.clone();
        let upstream = |e| StageError::codec(NAME, Blame::Upstream, e);
        match response.body().map_err(upstream)? {
            ResponseKind::Produce(p) => {
                notes.update(|records| {
                    let Some(rec) = records.iter_mut().find(|r| r.kind == EventKind::Produce)
                    else {
                        return;
                    };
                    let mut refused = 0usize;
                    let mut first_code = 0i16;
                    for topic in &p.responses {
                        let Some(res) = rec.resources.iter_mut().find(|r| {
                            r.kind == ResourceType::Topic && r.name == topic.name.0.as_str()
                        }) else {
                            continue;
                        };
                        for pr in &topic.partition_responses {
                            if let Some(e) =
                                res.partitions.iter_mut().find(|e| e.partition == pr.index)
                            {
                                if pr.error_code == 0 {
                                    e.offset = Some(pr.base_offset);
                                } else {
                                    refused += 1;
                                    if first_code == 0 {
                                        first_code = pr.error_code;
                                    }
                                    rec.details.insert(
                                        format!("error.{}.{}", res.name, pr.index),
                                        pr.error_code.to_string(),
                                    );
                                }
                            }
                        }
                    }
                    // A refused partition wrote nothing: say so, not just in
                    // the details, so the record never reads as a write.
                    if refused > 0 {
                        rec.error = Some(custos_audit::ErrorInfo {
                            code: Some(first_code),
                            blame: custos_audit::Blame::Upstream,
                            message: format!("the broker refused {refused} partition(s)"),
                        });
                    }
                });
            }
            ResponseKind::Fetch(f) => {
                let resources = f
                    .responses
                    .iter()
                    .filter_map(|topic| {
                        let name = if topic.topic.0.is_empty() {
                            topic.topic_id.to_string()
                        } else {
                            topic.topic.0.to_string()
                        };
                        let parts = topic.partitions.iter();
                        read_resource(name, parts.map(|p| (p.partition_index, p.records.as_ref())))
                    })
                    .collect();
                finish_fetch_record(session, &notes, response, resources);
            }
            ResponseKind::ShareFetch(f) => {
                // Named by id; the authorize stage refused unknown ids, so
                // the raw id only shows where that stage is off.
                let resources = f
                    .responses
                    .iter()
                    .filter_map(|topic| {
                        let name = self
                            .ids
                            .name(topic.topic_id.as_bytes())
                            .map_or_else(|| topic.topic_id.to_string(), |n| n.to_string());
                        let parts = topic.partitions.iter();
                        read_resource(name, parts.map(|p| (p.partition_index, p.records.as_ref())))
                    })
                    .collect();
                finish_fetch_record(session, &notes, response, resources);
            }
            _ => {}
        }
        Ok(())
    }
}

/// A topic's resource with each partition's record count, first offset and
/// bytes; `None` when no partition returned records.
fn read_resource<'a>(
    name: String,
    parts: impl Iterator<Item = (i32, Option<&'a Bytes>)>,
) -> Option<Resource> {
    let mut res = Resource::topic(name);
    for (partition, records) in parts {
        let Some(records) = records.filter(|r| !r.is_empty()) else {
            continue;
        };
        let (count, first) = batch_stats(records);
        if count > 0 {
            res = res.with_partition(partition, first, count, records.len() as u64);
        }
    }
    (!res.partitions.is_empty()).then_some(res)
}

/// Pushes the exchange's Fetch record (taking in what the decrypt stage
/// noted in a partial one: keys used, plaintext or masked).
fn finish_fetch_record(
    session: &SessionInfo,
    notes: &crate::audit_trail::AuditNotes,
    response: &Response,
    resources: Vec<Resource>,
) {
    let mut partial = None;
    notes.update(|records| {
        if let Some(i) = records.iter().position(|r| r.kind == EventKind::Fetch) {
            partial = Some(records.remove(i));
        }
    });
    // An empty fetch (a long poll that timed out) accessed nothing.
    if !resources.is_empty() {
        let mut record = fetch_record(
            session,
            notes,
            response.api_key,
            response.api_version,
            response.correlation_id,
            partial,
        );
        record.resources = resources;
        notes.push(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(base_offset: i64, records: i32, payload: usize) -> Vec<u8> {
        let len = 49 + payload; // bytes after the length field
        let mut b = Vec::new();
        b.extend_from_slice(&base_offset.to_be_bytes());
        b.extend_from_slice(&(len as i32).to_be_bytes());
        b.resize(57, 0);
        b.extend_from_slice(&records.to_be_bytes());
        b.resize(12 + len, 7);
        b
    }

    fn produce_request(topics: &[&str]) -> Request {
        use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
        use kafka_protocol::protocol::Encodable;
        let version = 9;
        let body = ProduceRequest::default().with_acks(-1).with_topic_data(
            topics
                .iter()
                .map(|t| {
                    TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_string(t.to_string())))
                        .with_partition_data(vec![PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(Bytes::from(batch(0, 2, 20))))])
                })
                .collect(),
        );
        let mut b = bytes::BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(ApiKey::Produce as i16)
            .with_request_api_version(version)
            .with_correlation_id(5)
            .encode(&mut b, ApiKey::Produce.request_header_version(version))
            .expect("header");
        body.encode(&mut b, version).expect("body");
        Request::parse(b.freeze()).expect("parse")
    }

    fn session() -> SessionInfo {
        SessionInfo::new(
            1,
            "127.0.0.1:9".parse().expect("addr"),
            Some(1),
            false,
            crate::auth::Identity::anonymous(),
        )
    }

    fn auditor(dir: &std::path::Path) -> Auditor {
        let key = dir.join("audit.key");
        custos_audit::SignerKey::generate_file(&key).expect("key");
        let cfg = crate::config::AuditConfig {
            dir: dir.join("store"),
            signing_key: key,
            signing_key_kms: None,
            mode: crate::config::AuditMode::Strict,
            queue_capacity: 16,
            checkpoint_interval_ms: 1000,
            checkpoint_every: 100,
            instance_id: Some("unit".into()),
            kafka_topic: None,
        };
        Auditor::open(&cfg, std::sync::Arc::new(crate::metrics::Metrics::new())).expect("open")
    }

    #[tokio::test]
    async fn a_produce_is_noted_with_counts_and_refused_once_the_log_cannot_write() {
        let dir = tempfile::tempdir().expect("tmp");
        let auditor = auditor(dir.path());
        let stage = AuditAccess::new(auditor.clone());
        let mut req = produce_request(&["orders"]);
        req.audit = auditor.notes();
        assert!(matches!(
            stage.on_request(&session(), &mut req).await.expect("stage"),
            Verdict::Forward
        ));
        let noted = req.audit.take();
        assert_eq!(noted.len(), 1);
        assert_eq!(noted[0].kind, EventKind::Produce);
        let p = &noted[0].resources[0].partitions[0];
        assert_eq!((p.partition, p.records, p.offset), (0, 2, None));
        // The store stops taking records: data access must not go on unrecorded.
        auditor.close().await;
        assert!(!auditor.healthy());
        let mut req = produce_request(&["orders"]);
        req.audit = auditor.notes();
        match stage.on_request(&session(), &mut req).await.expect("stage") {
            Verdict::Respond(r) => match *r {
                ResponseKind::Produce(p) => assert_eq!(
                    p.responses[0].partition_responses[0].error_code,
                    KAFKA_STORAGE_ERROR
                ),
                other => panic!("{other:?}"),
            },
            Verdict::Forward => panic!("forwarded a produce the audit log cannot record"),
        }
    }

    #[test]
    fn batch_headers_give_counts_and_the_first_offset() {
        let mut bytes = batch(100, 3, 40);
        bytes.extend(batch(103, 5, 10));
        assert_eq!(batch_stats(&bytes), (8, Some(100)));
        // A partial trailing batch (as fetch responses may end) is not counted.
        let mut partial = bytes.clone();
        partial.extend(&batch(108, 9, 30)[..50]);
        assert_eq!(batch_stats(&partial), (8, Some(100)));
        assert_eq!(batch_stats(&[]), (0, None));
    }
}
