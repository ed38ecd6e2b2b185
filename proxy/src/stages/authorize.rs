//! Authorization: every forwarded request is decided by the Cedar policies
//! before the broker sees it, and answered the way a broker's own authorizer
//! would answer it. `docs/authorization.md` is the contract this file keeps.
//!
//! Resource names come from the bounded reader (`resources.rs`), never from a
//! decoder that sizes memory from client-controlled counts. Three kinds of
//! answer:
//!
//! - **whole**: the request is not forwarded; Custos answers with the error.
//! - **split**: for requests with side effects (Produce, OffsetCommit,
//!   CreateTopics, ...), the denied entries are cut out of the frame (their
//!   bytes, not a re-encoding of the rest), the remainder is forwarded, and
//!   error entries for the denied ones are merged into the broker's answer.
//! - **mask**: for reads (Fetch, ListOffsets, Describe*), the request goes
//!   through whole and the denied entries of the answer are replaced by the
//!   error (or left out, where Kafka filters).
//!
//! Every decision, allowed or not, goes to the audit sink with the
//! determining policies and the hash of the policy set.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use custos_audit::{AuditRecord, AuditSink, DecisionEvent};
use custos_policy::{
    Action, Authorizer, DecisionCache, Operation, PolicyEngine, Principal, RequestContext, Resource,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::audit_trail::AuditNotes;
use crate::message::{Amend, Request};
use crate::metrics::Metrics;
use crate::pipeline::{Blame, SessionInfo, Stage, StageError, Verdict};
use crate::resources::{self, ConfigRef, TopicRef, Touches};
use crate::topic_ids::{TopicId, TopicIds};
use crate::versions::FORWARDED;

const NAME: &str = "authorize";

/// Kafka error codes Custos answers with.
pub mod code {
    /// UNKNOWN_TOPIC_OR_PARTITION.
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    /// TOPIC_AUTHORIZATION_FAILED.
    pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
    /// GROUP_AUTHORIZATION_FAILED.
    pub const GROUP_AUTHORIZATION_FAILED: i16 = 30;
    /// CLUSTER_AUTHORIZATION_FAILED.
    pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
    /// TRANSACTIONAL_ID_AUTHORIZATION_FAILED.
    pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
    /// OPERATION_NOT_ATTEMPTED.
    pub const OPERATION_NOT_ATTEMPTED: i16 = 55;
    /// INVALID_REQUEST.
    pub const INVALID_REQUEST: i16 = 42;
    /// UNKNOWN_TOPIC_ID.
    pub const UNKNOWN_TOPIC_ID: i16 = 100;
}
use code::*;

/// Kafka config resource types (DescribeConfigs and friends).
const CONFIG_TOPIC: i8 = 2;
const CONFIG_GROUP: i8 = 32;

/// Apis that touch no resource: the handshake and client telemetry.
const UNCHECKED: &[ApiKey] = &[
    ApiKey::ApiVersions,
    ApiKey::GetTelemetrySubscriptions,
    ApiKey::PushTelemetry,
];

/// The authorization stage.
pub struct Authorize {
    authorizer: Arc<Authorizer>,
    sink: Arc<dyn AuditSink>,
    metrics: Arc<Metrics>,
    keys: Vec<ApiKey>,
    ids: Arc<TopicIds>,
}

impl Authorize {
    /// A stage deciding with `authorizer`, reporting decisions to `sink`.
    pub fn new(
        authorizer: Arc<Authorizer>,
        sink: Arc<dyn AuditSink>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let keys = FORWARDED
            .iter()
            .copied()
            .filter(|k| !UNCHECKED.contains(k))
            .collect();
        Self {
            authorizer,
            sink,
            metrics,
            keys,
            ids: Arc::new(TopicIds::new()),
        }
    }

    /// Resolves topic ids (share-group apis) with `ids`.
    pub fn with_topic_ids(mut self, ids: Arc<TopicIds>) -> Self {
        self.ids = ids;
        self
    }
}

/// One request's decisions: one engine snapshot, the connection's cache.
#[derive(Clone)]
struct Decider {
    engine: Arc<PolicyEngine>,
    cache: Arc<Mutex<DecisionCache>>,
    principal: Arc<Principal>,
    ctx: Arc<RequestContext>,
    sink: Arc<dyn AuditSink>,
    metrics: Arc<Metrics>,
    principal_label: Arc<str>,
    client_addr: Arc<str>,
    api_key: i16,
    api_version: i16,
    correlation_id: i32,
    notes: AuditNotes,
    ids: Arc<TopicIds>,
}

impl Decider {
    fn allow(&self, op: Operation, resource: Resource) -> bool {
        let decision = {
            // A poisoned lock only means a panic elsewhere mid-lookup; the
            // cache is still a valid cache (worst case, one entry is missing).
            let mut cache = self
                .cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            cache.decide(
                &self.engine,
                &self.principal,
                Action::Kafka(op),
                &resource,
                &self.ctx,
            )
        };
        if decision.allowed {
            self.metrics.authz_allowed.inc();
        } else {
            self.metrics.authz_denied.inc();
        }
        let to_sink = self.sink.wants_decisions();
        if to_sink || self.notes.enabled() {
            let event = DecisionEvent {
                time: self.ctx.time,
                principal: self.principal_label.to_string(),
                auth_method: self.principal.auth_method.as_str().to_string(),
                client_addr: self.client_addr.to_string(),
                client_id: self.ctx.client_id.clone(),
                api_key: self.api_key,
                api_version: self.api_version,
                correlation_id: self.correlation_id,
                action: op.as_str(),
                resource_type: resource.type_name(),
                resource: resource.name().to_string(),
                allowed: decision.allowed,
                policy_ids: decision.determining_policies.clone(),
                policy_hash: self.engine.hash().to_string(),
            };
            if self.notes.enabled() {
                self.notes
                    .push(AuditRecord::from_decision(&event, self.notes.instance()));
            }
            if to_sink {
                if let Err(e) = self.sink.record_decision(event) {
                    tracing::error!(error = %e, "audit sink refused an authorization decision");
                }
            }
        }
        decision.allowed
    }

    fn topic(&self, op: Operation, name: &str) -> bool {
        self.allow(op, Resource::Topic(name.to_string()))
    }

    fn group(&self, op: Operation, name: &str) -> bool {
        self.allow(op, Resource::Group(name.to_string()))
    }

    fn txn(&self, op: Operation, name: &str) -> bool {
        self.allow(op, Resource::TransactionalId(name.to_string()))
    }

    fn cluster(&self, op: Operation) -> bool {
        self.allow(op, Resource::Cluster)
    }
}

/// What to do with one request.
enum Plan {
    /// Forward as is (or as cut), merging `amends` into the answer.
    Forward {
        body: Option<Vec<u8>>,
        amends: Vec<Amend>,
    },
    /// Answer locally.
    Respond(Box<ResponseKind>),
    /// Close the connection (Kafka's answer to a refused acks=0 produce).
    Close(String),
}

impl Plan {
    fn forward() -> Self {
        Plan::Forward {
            body: None,
            amends: Vec::new(),
        }
    }

    fn amend(f: impl FnOnce(&mut ResponseKind) -> Result<(), String> + Send + 'static) -> Self {
        Plan::Forward {
            body: None,
            amends: vec![Box::new(f)],
        }
    }

    fn cut(
        body: Vec<u8>,
        f: impl FnOnce(&mut ResponseKind) -> Result<(), String> + Send + 'static,
    ) -> Self {
        Plan::Forward {
            body: Some(body),
            amends: vec![Box::new(f)],
        }
    }
}

fn respond(r: ResponseKind) -> Plan {
    Plan::Respond(Box::new(r))
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn wrong(api: ApiKey) -> String {
    format!("the broker's answer is not a {api:?} response")
}

/// The body with the array at `array` holding only the entries at `keep`.
fn cut(
    body: &[u8],
    array: &std::ops::Range<usize>,
    keep: &[std::ops::Range<usize>],
    flexible: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    out.extend_from_slice(&body[..array.start]);
    if flexible {
        let mut n = keep.len() as u64 + 1;
        while n >= 0x80 {
            out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    } else {
        out.extend_from_slice(&(keep.len() as i32).to_be_bytes());
    }
    for r in keep {
        out.extend_from_slice(&body[r.clone()]);
    }
    out.extend_from_slice(&body[array.end..]);
    out
}

/// Names and partitions of denied topic entries, owned for an amend.
fn owned(topics: &[&TopicRef<'_>]) -> Vec<(String, Vec<i32>)> {
    topics
        .iter()
        .map(|t| (t.name.to_string(), t.partitions.clone()))
        .collect()
}

#[async_trait]
impl Stage for Authorize {
    fn name(&self) -> &'static str {
        NAME
    }

    fn request_api_keys(&self) -> &[ApiKey] {
        &self.keys
    }

    async fn on_request(
        &self,
        session: &SessionInfo,
        request: &mut Request,
    ) -> Result<Verdict, StageError> {
        let api = request.api_key;
        let version = request.version();
        let mut ctx = RequestContext::new(
            session.client_addr.ip(),
            session.tls,
            session.principal.auth_method,
        );
        ctx.client_id = request.header.client_id.as_ref().map(|c| c.to_string());
        let d = Decider {
            engine: self.authorizer.current(),
            cache: session.decisions.clone(),
            principal: session.principal.clone(),
            ctx: Arc::new(ctx),
            sink: self.sink.clone(),
            metrics: self.metrics.clone(),
            principal_label: session.principal_label.clone(),
            client_addr: session.client_label.clone(),
            api_key: api as i16,
            api_version: version,
            correlation_id: request.correlation_id(),
            notes: request.audit.clone(),
            ids: self.ids.clone(),
        };
        let raw = request.raw().clone();
        let body = &raw[raw.len() - request.body_bytes().len()..];
        let flexible = api.request_header_version(version) >= 2;
        let plan = if let Some(plan) = cluster_only(&d, api, version, body) {
            plan
        } else {
            let t = resources::touches(api, version, body).map_err(|e| StageError {
                stage: NAME,
                blame: Blame::Client,
                message: e.to_string(),
            })?;
            plan(&d, api, version, body, &t, flexible)
        };
        match plan {
            Plan::Forward { body, amends } => {
                if let Some(b) = body {
                    request.replace_body(&b);
                }
                request.amends.0.extend(amends);
                Ok(Verdict::Forward)
            }
            Plan::Respond(r) => Ok(Verdict::Respond(r)),
            Plan::Close(message) => Err(StageError {
                stage: NAME,
                blame: Blame::Client,
                message,
            }),
        }
    }
}

/// Apis that act on the cluster alone: one decision, a whole answer.
fn cluster_only(d: &Decider, api: ApiKey, version: i16, body: &[u8]) -> Option<Plan> {
    use Operation::*;
    let (op, answer): (Operation, fn(i16) -> Option<ResponseKind>) = match api {
        ApiKey::DescribeAcls => (Describe, |e| {
            Some(ResponseKind::DescribeAcls(
                DescribeAclsResponse::default()
                    .with_error_code(e)
                    .with_error_message(Some(sb("Cluster authorization failed."))),
            ))
        }),
        ApiKey::DescribeLogDirs => (Describe, |e| {
            Some(ResponseKind::DescribeLogDirs(
                DescribeLogDirsResponse::default().with_error_code(e),
            ))
        }),
        ApiKey::DescribeUserScramCredentials => (Describe, |e| {
            Some(ResponseKind::DescribeUserScramCredentials(
                DescribeUserScramCredentialsResponse::default().with_error_code(e),
            ))
        }),
        ApiKey::ListPartitionReassignments => (Describe, |e| {
            Some(ResponseKind::ListPartitionReassignments(
                ListPartitionReassignmentsResponse::default().with_error_code(e),
            ))
        }),
        ApiKey::ElectLeaders => (Alter, |e| {
            Some(ResponseKind::ElectLeaders(
                ElectLeadersResponse::default().with_error_code(e),
            ))
        }),
        ApiKey::AlterPartitionReassignments => (Alter, |e| {
            Some(ResponseKind::AlterPartitionReassignments(
                AlterPartitionReassignmentsResponse::default().with_error_code(e),
            ))
        }),
        ApiKey::UpdateFeatures => (Alter, |e| {
            Some(ResponseKind::UpdateFeatures(
                UpdateFeaturesResponse::default().with_error_code(e),
            ))
        }),
        ApiKey::DescribeClientQuotas => (DescribeConfigs, |e| {
            Some(ResponseKind::DescribeClientQuotas(
                DescribeClientQuotasResponse::default().with_error_code(e),
            ))
        }),
        ApiKey::ListConfigResources => (DescribeConfigs, |e| {
            Some(ResponseKind::ListConfigResources(
                ListConfigResourcesResponse::default().with_error_code(e),
            ))
        }),
        // Per-entry answers: one error entry for each entry of the request.
        ApiKey::CreateAcls
        | ApiKey::DeleteAcls
        | ApiKey::AlterReplicaLogDirs
        | ApiKey::AlterUserScramCredentials => (Alter, |_| None),
        ApiKey::AlterClientQuotas => (AlterConfigs, |_| None),
        _ => return None,
    };
    if d.cluster(op) {
        return Some(Plan::forward());
    }
    let flexible = api.request_header_version(version) >= 2;
    if let Some(entries) = per_entry_denial(api, body, flexible) {
        return Some(match entries {
            Ok(r) => respond(r),
            Err(e) => Plan::Close(format!("{api:?} v{version}: {e}")),
        });
    }
    Some(match answer(CLUSTER_AUTHORIZATION_FAILED) {
        Some(r) if version_fits(&r, version) => respond(r),
        _ => Plan::Close(format!(
            "{api:?} needs {op} on the cluster, which the policies do not grant"
        )),
    })
}

/// The CLUSTER_AUTHORIZATION_FAILED answer of a cluster api whose answer has
/// one entry per request entry, read with the bounded reader; `None` for
/// other apis.
fn per_entry_denial(
    api: ApiKey,
    body: &[u8],
    flexible: bool,
) -> Option<Result<ResponseKind, crate::wire::WireError>> {
    use crate::wire::Reader;
    if !matches!(
        api,
        ApiKey::CreateAcls
            | ApiKey::DeleteAcls
            | ApiKey::AlterReplicaLogDirs
            | ApiKey::AlterUserScramCredentials
            | ApiKey::AlterClientQuotas
    ) {
        return None;
    }
    let e = CLUSTER_AUTHORIZATION_FAILED;
    let mut reader = Reader::new(body, flexible);
    let r = &mut reader;
    let count = |r: &mut Reader<'_>, what| r.array_len(what).map(|n| n.unwrap_or(0));
    let out = (|| -> Result<ResponseKind, crate::wire::WireError> {
        Ok(match api {
            ApiKey::CreateAcls => {
                let n = count(r, "creations")?;
                let mut results = Vec::new();
                for _ in 0..n {
                    r.i8("resource type")?;
                    r.str("resource name")?;
                    r.i8("pattern type")?;
                    r.str("principal")?;
                    r.str("host")?;
                    r.i8("operation")?;
                    r.i8("permission type")?;
                    r.tagged_fields()?;
                    results.push(
                        create_acls_response::AclCreationResult::default().with_error_code(e),
                    );
                }
                ResponseKind::CreateAcls(CreateAclsResponse::default().with_results(results))
            }
            ApiKey::DeleteAcls => {
                let n = count(r, "filters")?;
                let mut results = Vec::new();
                for _ in 0..n {
                    r.i8("resource type")?;
                    r.nullable_str("resource name")?;
                    r.i8("pattern type")?;
                    r.nullable_str("principal")?;
                    r.nullable_str("host")?;
                    r.i8("operation")?;
                    r.i8("permission type")?;
                    r.tagged_fields()?;
                    results.push(
                        delete_acls_response::DeleteAclsFilterResult::default().with_error_code(e),
                    );
                }
                ResponseKind::DeleteAcls(DeleteAclsResponse::default().with_filter_results(results))
            }
            ApiKey::AlterReplicaLogDirs => {
                let mut results = Vec::new();
                for _ in 0..count(r, "dirs")? {
                    r.str("path")?;
                    for _ in 0..count(r, "topics")? {
                        let name = r.str("topic")?;
                        let mut partitions = Vec::new();
                        for _ in 0..count(r, "partitions")? {
                            partitions.push(
                                alter_replica_log_dirs_response::AlterReplicaLogDirPartitionResult::default()
                                    .with_partition_index(r.i32("partition")?)
                                    .with_error_code(e),
                            );
                        }
                        r.tagged_fields()?;
                        results.push(
                            alter_replica_log_dirs_response::AlterReplicaLogDirTopicResult::default()
                                .with_topic_name(TopicName(sb(name)))
                                .with_partitions(partitions),
                        );
                    }
                    r.tagged_fields()?;
                }
                ResponseKind::AlterReplicaLogDirs(
                    AlterReplicaLogDirsResponse::default().with_results(results),
                )
            }
            ApiKey::AlterUserScramCredentials => {
                let mut users: Vec<String> = Vec::new();
                for _ in 0..count(r, "deletions")? {
                    users.push(r.str("name")?.to_string());
                    r.i8("mechanism")?;
                    r.tagged_fields()?;
                }
                for _ in 0..count(r, "upsertions")? {
                    users.push(r.str("name")?.to_string());
                    r.i8("mechanism")?;
                    r.i32("iterations")?;
                    r.nullable_bytes("salt")?;
                    r.nullable_bytes("salted password")?;
                    r.tagged_fields()?;
                }
                users.sort();
                users.dedup();
                ResponseKind::AlterUserScramCredentials(
                    AlterUserScramCredentialsResponse::default().with_results(
                        users
                            .iter()
                            .map(|u| {
                                alter_user_scram_credentials_response::AlterUserScramCredentialsResult::default()
                                    .with_user(sb(u))
                                    .with_error_code(e)
                            })
                            .collect(),
                    ),
                )
            }
            _ => {
                let mut entries = Vec::new();
                for _ in 0..count(r, "entries")? {
                    let mut entity = Vec::new();
                    for _ in 0..count(r, "entity")? {
                        let ty = r.str("entity type")?;
                        let name = r.nullable_str("entity name")?;
                        r.tagged_fields()?;
                        entity.push(
                            alter_client_quotas_response::EntityData::default()
                                .with_entity_type(sb(ty))
                                .with_entity_name(name.map(sb)),
                        );
                    }
                    for _ in 0..count(r, "ops")? {
                        r.str("key")?;
                        r.skip("value", 8)?;
                        r.i8("remove")?;
                        r.tagged_fields()?;
                    }
                    r.tagged_fields()?;
                    entries.push(
                        alter_client_quotas_response::EntryData::default()
                            .with_error_code(e)
                            .with_entity(entity),
                    );
                }
                ResponseKind::AlterClientQuotas(
                    AlterClientQuotasResponse::default().with_entries(entries),
                )
            }
        })
    })();
    Some(out)
}

/// Authorized-operations fields hold this when the client did not ask for them.
const NOT_REQUESTED: i32 = i32::MIN;

/// The operations Kafka reports for each resource type, with their
/// `AclOperation` codes (the bit positions of authorized-operations fields).
const TOPIC_OPS: &[(Operation, u32)] = &[
    (Operation::Read, 3),
    (Operation::Write, 4),
    (Operation::Create, 5),
    (Operation::Delete, 6),
    (Operation::Alter, 7),
    (Operation::Describe, 8),
    (Operation::DescribeConfigs, 10),
    (Operation::AlterConfigs, 11),
];
const GROUP_OPS: &[(Operation, u32)] = &[
    (Operation::Read, 3),
    (Operation::Delete, 6),
    (Operation::Describe, 8),
    (Operation::DescribeConfigs, 10),
    (Operation::AlterConfigs, 11),
];
const CLUSTER_OPS: &[(Operation, u32)] = &[
    (Operation::Create, 5),
    (Operation::Alter, 7),
    (Operation::Describe, 8),
    (Operation::ClusterAction, 9),
    (Operation::DescribeConfigs, 10),
    (Operation::AlterConfigs, 11),
    (Operation::IdempotentWrite, 12),
];
const TXN_OPS: &[(Operation, u32)] = &[(Operation::Write, 4), (Operation::Describe, 8)];

/// The authorized-operations bit field of `resource` for this principal:
/// the broker computed it for Custos, so it is recomputed from the policies.
fn authorized_ops(d: &Decider, resource: Resource) -> i32 {
    let ops = match resource {
        Resource::Topic(_) => TOPIC_OPS,
        Resource::Group(_) => GROUP_OPS,
        Resource::TransactionalId(_) => TXN_OPS,
        Resource::Cluster => CLUSTER_OPS,
    };
    ops.iter()
        .filter(|(op, _)| d.allow(*op, resource.clone()))
        .fold(0i32, |bits, (_, code)| bits | (1 << code))
}

/// Kafka's message for a group described with a topic the caller may not
/// describe in some member's assignment.
const UNDESCRIBABLE_ASSIGNMENT: &str =
    "The group has described topic(s) that the client is not authorized to describe.";

/// DescribeLogDirs v0-2 and ElectLeaders v0 have no top-level error code to
/// carry the denial; those connections are closed.
fn version_fits(r: &ResponseKind, version: i16) -> bool {
    !matches!(r, ResponseKind::DescribeLogDirs(_) if version < 3)
        && !matches!(r, ResponseKind::ElectLeaders(_) if version < 1)
}

#[allow(clippy::too_many_lines)]
fn plan(
    d: &Decider,
    api: ApiKey,
    version: i16,
    body: &[u8],
    t: &Touches<'_>,
    flexible: bool,
) -> Plan {
    use Operation::*;
    match api {
        ApiKey::Produce => produce(d, version, body, t, flexible),
        ApiKey::Fetch => {
            if t.from_replica {
                return Plan::Close("a follower fetch (replica id >= 0) through Custos".into());
            }
            mask_topics(d, Read, t, |denied| {
                Box::new(move |r| match r {
                    ResponseKind::Fetch(f) => {
                        mask(
                            &mut f.responses,
                            &denied,
                            |x| x.topic.0.as_str(),
                            |x| &mut x.partitions,
                            |p| {
                                fetch_response::PartitionData::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                                    .with_high_watermark(-1)
                            },
                        );
                        Ok(())
                    }
                    _ => Err(wrong(ApiKey::Fetch)),
                })
            })
        }
        ApiKey::ListOffsets => mask_topics(d, Describe, t, |denied| {
            Box::new(move |r| match r {
                ResponseKind::ListOffsets(l) => {
                    mask(
                        &mut l.topics,
                        &denied,
                        |x| x.name.0.as_str(),
                        |x| &mut x.partitions,
                        |p| {
                            list_offsets_response::ListOffsetsPartitionResponse::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                        },
                    );
                    Ok(())
                }
                _ => Err(wrong(api)),
            })
        }),
        ApiKey::OffsetForLeaderEpoch => mask_topics(d, Describe, t, |denied| {
            Box::new(move |r| match r {
                ResponseKind::OffsetForLeaderEpoch(l) => {
                    mask(
                        &mut l.topics,
                        &denied,
                        |x| x.topic.0.as_str(),
                        |x| &mut x.partitions,
                        |p| {
                            offset_for_leader_epoch_response::EpochEndOffset::default()
                                .with_partition(p.partition)
                                .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                        },
                    );
                    Ok(())
                }
                _ => Err(wrong(api)),
            })
        }),
        ApiKey::DescribeProducers => mask_topics(d, Read, t, |denied| {
            Box::new(move |r| match r {
                ResponseKind::DescribeProducers(l) => {
                    mask(
                        &mut l.topics,
                        &denied,
                        |x| x.name.0.as_str(),
                        |x| &mut x.partitions,
                        |p| {
                            describe_producers_response::PartitionResponse::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                        },
                    );
                    Ok(())
                }
                _ => Err(wrong(api)),
            })
        }),
        ApiKey::Metadata => metadata(d, version, body, t),
        ApiKey::DescribeTopicPartitions => {
            let named: HashSet<String> = t.topics.iter().map(|x| x.name.to_string()).collect();
            let d = d.clone();
            Plan::amend(move |r| match r {
                ResponseKind::DescribeTopicPartitions(m) => {
                    m.topics.retain_mut(|topic| {
                        let Some(name) = topic.name.as_ref().map(|n| n.0.to_string()) else {
                            return true;
                        };
                        if d.topic(Describe, &name) {
                            if topic.topic_authorized_operations != NOT_REQUESTED {
                                topic.topic_authorized_operations =
                                    authorized_ops(&d, Resource::Topic(name));
                            }
                            return true;
                        }
                        if !named.contains(&name) {
                            return false;
                        }
                        *topic = describe_topic_partitions_response::DescribeTopicPartitionsResponseTopic::default()
                            .with_name(topic.name.clone())
                            .with_error_code(TOPIC_AUTHORIZATION_FAILED);
                        true
                    });
                    Ok(())
                }
                _ => Err(wrong(api)),
            })
        }
        ApiKey::OffsetCommit => {
            let group = t.groups.first().copied().unwrap_or_default();
            if !d.group(Read, group) {
                let topics = owned(&t.topics.iter().collect::<Vec<_>>());
                return respond(ResponseKind::OffsetCommit(offset_commit_answer(
                    &topics,
                    GROUP_AUTHORIZATION_FAILED,
                )));
            }
            split_topics(d, &[Read], body, t, flexible, |denied| {
                (
                    ResponseKind::OffsetCommit(offset_commit_answer(
                        &denied,
                        TOPIC_AUTHORIZATION_FAILED,
                    )),
                    Box::new(move |r| match r {
                        ResponseKind::OffsetCommit(o) => {
                            o.topics.extend(
                                offset_commit_answer(&denied, TOPIC_AUTHORIZATION_FAILED).topics,
                            );
                            Ok(())
                        }
                        _ => Err(wrong(ApiKey::OffsetCommit)),
                    }),
                )
            })
        }
        ApiKey::TxnOffsetCommit => {
            let answer = |topics: &[(String, Vec<i32>)], e| {
                TxnOffsetCommitResponse::default().with_topics(
                    topics
                        .iter()
                        .map(|(n, ps)| {
                            txn_offset_commit_response::TxnOffsetCommitResponseTopic::default()
                                .with_name(TopicName(sb(n)))
                                .with_partitions(
                                    ps.iter()
                                        .map(|p| {
                                            txn_offset_commit_response::TxnOffsetCommitResponsePartition::default()
                                                .with_partition_index(*p)
                                                .with_error_code(e)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                )
            };
            let all = owned(&t.topics.iter().collect::<Vec<_>>());
            let txn = t.transactional_ids.first().copied().unwrap_or_default();
            if !d.txn(Write, txn) {
                return respond(ResponseKind::TxnOffsetCommit(answer(
                    &all,
                    TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                )));
            }
            let group = t.groups.first().copied().unwrap_or_default();
            if !d.group(Read, group) {
                return respond(ResponseKind::TxnOffsetCommit(answer(
                    &all,
                    GROUP_AUTHORIZATION_FAILED,
                )));
            }
            split_topics(d, &[Read], body, t, flexible, |denied| {
                (
                    ResponseKind::TxnOffsetCommit(answer(&denied, TOPIC_AUTHORIZATION_FAILED)),
                    Box::new(move |r| match r {
                        ResponseKind::TxnOffsetCommit(o) => {
                            o.topics
                                .extend(answer(&denied, TOPIC_AUTHORIZATION_FAILED).topics);
                            Ok(())
                        }
                        _ => Err(wrong(ApiKey::TxnOffsetCommit)),
                    }),
                )
            })
        }
        ApiKey::OffsetDelete => {
            let answer = |topics: &[(String, Vec<i32>)], e| {
                offset_delete_response::OffsetDeleteResponse::default().with_topics(
                    topics
                        .iter()
                        .map(|(n, ps)| {
                            offset_delete_response::OffsetDeleteResponseTopic::default()
                                .with_name(TopicName(sb(n)))
                                .with_partitions(
                                    ps.iter()
                                        .map(|p| {
                                            offset_delete_response::OffsetDeleteResponsePartition::default()
                                                .with_partition_index(*p)
                                                .with_error_code(e)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                )
            };
            let group = t.groups.first().copied().unwrap_or_default();
            if !d.group(Delete, group) {
                return respond(ResponseKind::OffsetDelete(
                    OffsetDeleteResponse::default().with_error_code(GROUP_AUTHORIZATION_FAILED),
                ));
            }
            split_topics(d, &[Read], body, t, flexible, |denied| {
                (
                    ResponseKind::OffsetDelete(answer(&denied, TOPIC_AUTHORIZATION_FAILED)),
                    Box::new(move |r| match r {
                        ResponseKind::OffsetDelete(o) => {
                            o.topics
                                .extend(answer(&denied, TOPIC_AUTHORIZATION_FAILED).topics);
                            Ok(())
                        }
                        _ => Err(wrong(ApiKey::OffsetDelete)),
                    }),
                )
            })
        }
        ApiKey::OffsetFetch => offset_fetch(d, version, t),
        ApiKey::FindCoordinator => {
            let (keys, is_txn): (&[&str], bool) = if t.transactional_ids.is_empty() {
                (&t.groups, false)
            } else {
                (&t.transactional_ids, true)
            };
            let (denied_code, allowed) = if is_txn {
                (
                    TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                    keys.iter().map(|k| d.txn(Describe, k)).collect::<Vec<_>>(),
                )
            } else {
                (
                    GROUP_AUTHORIZATION_FAILED,
                    keys.iter()
                        .map(|k| d.group(Describe, k))
                        .collect::<Vec<_>>(),
                )
            };
            if allowed.iter().all(|a| *a) {
                return Plan::forward();
            }
            if version <= 3 {
                return respond(ResponseKind::FindCoordinator(
                    FindCoordinatorResponse::default()
                        .with_error_code(denied_code)
                        .with_node_id(BrokerId(-1))
                        .with_host(sb(""))
                        .with_port(-1),
                ));
            }
            let denied: HashSet<String> = keys
                .iter()
                .zip(&allowed)
                .filter(|(_, a)| !**a)
                .map(|(k, _)| k.to_string())
                .collect();
            Plan::amend(move |r| match r {
                ResponseKind::FindCoordinator(f) => {
                    for c in &mut f.coordinators {
                        if denied.contains(c.key.as_str()) {
                            *c = find_coordinator_response::Coordinator::default()
                                .with_key(c.key.clone())
                                .with_error_code(denied_code)
                                .with_node_id(BrokerId(-1))
                                .with_host(sb(""))
                                .with_port(-1);
                        }
                    }
                    Ok(())
                }
                _ => Err(wrong(api)),
            })
        }
        ApiKey::JoinGroup
        | ApiKey::SyncGroup
        | ApiKey::Heartbeat
        | ApiKey::LeaveGroup
        | ApiKey::ConsumerGroupHeartbeat => {
            let group = t.groups.first().copied().unwrap_or_default();
            if d.group(Read, group) {
                return Plan::forward();
            }
            let e = GROUP_AUTHORIZATION_FAILED;
            respond(match api {
                ApiKey::JoinGroup => ResponseKind::JoinGroup(
                    JoinGroupResponse::default()
                        .with_error_code(e)
                        .with_generation_id(-1),
                ),
                ApiKey::SyncGroup => {
                    ResponseKind::SyncGroup(SyncGroupResponse::default().with_error_code(e))
                }
                ApiKey::Heartbeat => {
                    ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(e))
                }
                ApiKey::LeaveGroup => {
                    ResponseKind::LeaveGroup(LeaveGroupResponse::default().with_error_code(e))
                }
                _ => ResponseKind::ConsumerGroupHeartbeat(
                    ConsumerGroupHeartbeatResponse::default()
                        .with_error_code(e)
                        .with_error_message(Some(sb("Group authorization failed."))),
                ),
            })
        }
        ApiKey::ShareGroupHeartbeat => {
            let group = t.groups.first().copied().unwrap_or_default();
            let refusal = if d.group(Read, group) {
                // Subscribing is describing: Kafka checks each named topic.
                let denied: Vec<&str> = t
                    .topics
                    .iter()
                    .filter(|x| !d.topic(Describe, x.name))
                    .map(|x| x.name)
                    .collect();
                (!denied.is_empty()).then(|| {
                    (
                        TOPIC_AUTHORIZATION_FAILED,
                        format!("Topic authorization failed for topics {denied:?}"),
                    )
                })
            } else {
                Some((
                    GROUP_AUTHORIZATION_FAILED,
                    "Group authorization failed.".to_string(),
                ))
            };
            match refusal {
                None => Plan::forward(),
                Some((code, message)) => respond(ResponseKind::ShareGroupHeartbeat(
                    ShareGroupHeartbeatResponse::default()
                        .with_error_code(code)
                        .with_error_message(Some(sb(&message))),
                )),
            }
        }
        ApiKey::ShareFetch | ApiKey::ShareAcknowledge => share(d, api, body, t, flexible),
        ApiKey::DescribeShareGroupOffsets => describe_share_group_offsets(d, t),
        ApiKey::AlterShareGroupOffsets | ApiKey::DeleteShareGroupOffsets => {
            share_group_offsets_change(d, api, body, t, flexible)
        }
        ApiKey::DescribeGroups | ApiKey::ConsumerGroupDescribe | ApiKey::ShareGroupDescribe => {
            let denied: HashSet<String> = t
                .groups
                .iter()
                .filter(|g| !d.group(Describe, g))
                .map(|g| g.to_string())
                .collect();
            // A group whose members are assigned a topic the caller may not
            // describe is answered as Kafka answers it: that error and no
            // members, so no topic name or ownership shows.
            let topics = d.clone();
            let d = d.clone();
            let ops = move |g: &str, current: i32| {
                if current == NOT_REQUESTED {
                    current
                } else {
                    authorized_ops(&d, Resource::Group(g.to_string()))
                }
            };
            Plan::amend(move |r| {
                match r {
                    ResponseKind::DescribeGroups(g) => {
                        for x in &mut g.groups {
                            if denied.contains(x.group_id.0.as_str()) {
                                *x = describe_groups_response::DescribedGroup::default()
                                    .with_group_id(x.group_id.clone())
                                    .with_error_code(GROUP_AUTHORIZATION_FAILED);
                            } else {
                                x.authorized_operations =
                                    ops(x.group_id.0.as_str(), x.authorized_operations);
                            }
                        }
                    }
                    ResponseKind::ConsumerGroupDescribe(g) => {
                        for x in &mut g.groups {
                            if denied.contains(x.group_id.0.as_str()) {
                                *x = consumer_group_describe_response::DescribedGroup::default()
                                    .with_group_id(x.group_id.clone())
                                    .with_error_code(GROUP_AUTHORIZATION_FAILED);
                            } else if x
                                .members
                                .iter()
                                .flat_map(|m| {
                                    m.assignment
                                        .topic_partitions
                                        .iter()
                                        .chain(&m.target_assignment.topic_partitions)
                                })
                                .any(|t| !topics.topic(Describe, t.topic_name.0.as_str()))
                            {
                                *x = consumer_group_describe_response::DescribedGroup::default()
                                    .with_group_id(x.group_id.clone())
                                    .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                                    .with_error_message(Some(sb(UNDESCRIBABLE_ASSIGNMENT)));
                            } else {
                                x.authorized_operations =
                                    ops(x.group_id.0.as_str(), x.authorized_operations);
                            }
                        }
                    }
                    ResponseKind::ShareGroupDescribe(g) => {
                        for x in &mut g.groups {
                            if denied.contains(x.group_id.0.as_str()) {
                                *x = share_group_describe_response::DescribedGroup::default()
                                    .with_group_id(x.group_id.clone())
                                    .with_error_code(GROUP_AUTHORIZATION_FAILED);
                            } else if x
                                .members
                                .iter()
                                .flat_map(|m| &m.assignment.topic_partitions)
                                .any(|t| !topics.topic(Describe, t.topic_name.0.as_str()))
                            {
                                *x = share_group_describe_response::DescribedGroup::default()
                                    .with_group_id(x.group_id.clone())
                                    .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                                    .with_error_message(Some(sb(UNDESCRIBABLE_ASSIGNMENT)));
                            } else {
                                x.authorized_operations =
                                    ops(x.group_id.0.as_str(), x.authorized_operations);
                            }
                        }
                    }
                    _ => return Err(wrong(api)),
                }
                Ok(())
            })
        }
        // As public as Metadata's broker list: Kafka checks the cluster grant
        // only to fill in the authorized operations.
        ApiKey::DescribeCluster => {
            let d = d.clone();
            Plan::amend(move |r| match r {
                ResponseKind::DescribeCluster(c) => {
                    if c.cluster_authorized_operations != NOT_REQUESTED {
                        c.cluster_authorized_operations = authorized_ops(&d, Resource::Cluster);
                    }
                    Ok(())
                }
                _ => Err(wrong(api)),
            })
        }
        ApiKey::ListGroups => {
            if d.cluster(Describe) {
                return Plan::forward();
            }
            let d = d.clone();
            Plan::amend(move |r| match r {
                ResponseKind::ListGroups(l) => {
                    l.groups
                        .retain(|g| d.group(Describe, g.group_id.0.as_str()));
                    Ok(())
                }
                _ => Err(wrong(api)),
            })
        }
        ApiKey::DeleteGroups => {
            let allowed: Vec<bool> = t.groups.iter().map(|g| d.group(Delete, g)).collect();
            if allowed.iter().all(|a| *a) {
                return Plan::forward();
            }
            let denied: Vec<String> = t
                .groups
                .iter()
                .zip(&allowed)
                .filter(|(_, a)| !**a)
                .map(|(g, _)| g.to_string())
                .collect();
            let answer = move |r: &mut DeleteGroupsResponse| {
                r.results.extend(denied.iter().map(|g| {
                    delete_groups_response::DeletableGroupResult::default()
                        .with_group_id(GroupId(sb(g)))
                        .with_error_code(GROUP_AUTHORIZATION_FAILED)
                }));
            };
            if allowed.iter().all(|a| !*a) {
                let mut r = DeleteGroupsResponse::default();
                answer(&mut r);
                return respond(ResponseKind::DeleteGroups(r));
            }
            let keep: Vec<_> = t
                .group_spans
                .iter()
                .zip(&allowed)
                .filter(|(_, a)| **a)
                .map(|(s, _)| s.clone())
                .collect();
            let Some(array) = &t.groups_span else {
                return Plan::Close("DeleteGroups without a group array".into());
            };
            Plan::cut(cut(body, array, &keep, flexible), move |r| match r {
                ResponseKind::DeleteGroups(g) => {
                    answer(g);
                    Ok(())
                }
                _ => Err(wrong(api)),
            })
        }
        ApiKey::CreateTopics => create_topics(d, body, t, flexible),
        ApiKey::DeleteTopics => {
            let answer = |names: &[(String, Vec<i32>)]| {
                names
                    .iter()
                    .map(|(n, _)| {
                        delete_topics_response::DeletableTopicResult::default()
                            .with_name(Some(TopicName(sb(n))))
                            .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                    })
                    .collect::<Vec<_>>()
            };
            split_topics(d, &[Describe, Delete], body, t, flexible, |denied| {
                (
                    ResponseKind::DeleteTopics(
                        DeleteTopicsResponse::default().with_responses(answer(&denied)),
                    ),
                    Box::new(move |r| match r {
                        ResponseKind::DeleteTopics(o) => {
                            o.responses.extend(answer(&denied));
                            Ok(())
                        }
                        _ => Err(wrong(ApiKey::DeleteTopics)),
                    }),
                )
            })
        }
        ApiKey::DeleteRecords => {
            let answer = |topics: &[(String, Vec<i32>)]| {
                topics
                    .iter()
                    .map(|(n, ps)| {
                        delete_records_response::DeleteRecordsTopicResult::default()
                            .with_name(TopicName(sb(n)))
                            .with_partitions(
                                ps.iter()
                                    .map(|p| {
                                        delete_records_response::DeleteRecordsPartitionResult::default()
                                            .with_partition_index(*p)
                                            .with_low_watermark(-1)
                                            .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                                    })
                                    .collect(),
                            )
                    })
                    .collect::<Vec<_>>()
            };
            split_topics(d, &[Delete], body, t, flexible, |denied| {
                (
                    ResponseKind::DeleteRecords(
                        DeleteRecordsResponse::default().with_topics(answer(&denied)),
                    ),
                    Box::new(move |r| match r {
                        ResponseKind::DeleteRecords(o) => {
                            o.topics.extend(answer(&denied));
                            Ok(())
                        }
                        _ => Err(wrong(ApiKey::DeleteRecords)),
                    }),
                )
            })
        }
        ApiKey::CreatePartitions => {
            let answer = |topics: &[(String, Vec<i32>)]| {
                topics
                    .iter()
                    .map(|(n, _)| {
                        create_partitions_response::CreatePartitionsTopicResult::default()
                            .with_name(TopicName(sb(n)))
                            .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                    })
                    .collect::<Vec<_>>()
            };
            split_topics(d, &[Alter], body, t, flexible, |denied| {
                (
                    ResponseKind::CreatePartitions(
                        CreatePartitionsResponse::default().with_results(answer(&denied)),
                    ),
                    Box::new(move |r| match r {
                        ResponseKind::CreatePartitions(o) => {
                            o.results.extend(answer(&denied));
                            Ok(())
                        }
                        _ => Err(wrong(ApiKey::CreatePartitions)),
                    }),
                )
            })
        }
        ApiKey::InitProducerId => {
            let allowed = match t.transactional_ids.first() {
                Some(x) => d.txn(Write, x),
                None => {
                    d.cluster(IdempotentWrite)
                        || d.engine
                            .may_permit_on_some_topic(&d.principal, Action::Kafka(Write))
                }
            };
            if allowed {
                return Plan::forward();
            }
            let e = if t.transactional_ids.is_empty() {
                CLUSTER_AUTHORIZATION_FAILED
            } else {
                TRANSACTIONAL_ID_AUTHORIZATION_FAILED
            };
            respond(ResponseKind::InitProducerId(
                InitProducerIdResponse::default()
                    .with_error_code(e)
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1),
            ))
        }
        ApiKey::AddPartitionsToTxn => {
            let txn = t.transactional_ids.first().copied().unwrap_or_default();
            let answer = |code_of: &dyn Fn(&str) -> i16| {
                AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(
                    t.topics
                        .iter()
                        .map(|x| {
                            add_partitions_to_txn_response::AddPartitionsToTxnTopicResult::default()
                                .with_name(TopicName(sb(x.name)))
                                .with_results_by_partition(
                                    x.partitions
                                        .iter()
                                        .map(|p| {
                                            add_partitions_to_txn_response::AddPartitionsToTxnPartitionResult::default()
                                                .with_partition_index(*p)
                                                .with_partition_error_code(code_of(x.name))
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                )
            };
            if !d.txn(Write, txn) {
                return respond(ResponseKind::AddPartitionsToTxn(answer(&|_| {
                    TRANSACTIONAL_ID_AUTHORIZATION_FAILED
                })));
            }
            let denied: HashSet<&str> = t
                .topics
                .iter()
                .filter(|x| !d.topic(Write, x.name))
                .map(|x| x.name)
                .collect();
            if denied.is_empty() {
                return Plan::forward();
            }
            // Kafka adds none of the partitions when any is refused.
            respond(ResponseKind::AddPartitionsToTxn(answer(&|n| {
                if denied.contains(n) {
                    TOPIC_AUTHORIZATION_FAILED
                } else {
                    OPERATION_NOT_ATTEMPTED
                }
            })))
        }
        ApiKey::AddOffsetsToTxn => {
            let txn = t.transactional_ids.first().copied().unwrap_or_default();
            let group = t.groups.first().copied().unwrap_or_default();
            let e = if !d.txn(Write, txn) {
                TRANSACTIONAL_ID_AUTHORIZATION_FAILED
            } else if !d.group(Read, group) {
                GROUP_AUTHORIZATION_FAILED
            } else {
                return Plan::forward();
            };
            respond(ResponseKind::AddOffsetsToTxn(
                AddOffsetsToTxnResponse::default().with_error_code(e),
            ))
        }
        ApiKey::EndTxn => {
            let txn = t.transactional_ids.first().copied().unwrap_or_default();
            if d.txn(Write, txn) {
                return Plan::forward();
            }
            respond(ResponseKind::EndTxn(
                EndTxnResponse::default().with_error_code(TRANSACTIONAL_ID_AUTHORIZATION_FAILED),
            ))
        }
        ApiKey::DescribeTransactions => {
            let denied: HashSet<String> = t
                .transactional_ids
                .iter()
                .filter(|x| !d.txn(Describe, x))
                .map(|x| x.to_string())
                .collect();
            if denied.is_empty() {
                return Plan::forward();
            }
            Plan::amend(move |r| match r {
                ResponseKind::DescribeTransactions(x) => {
                    for s in &mut x.transaction_states {
                        if denied.contains(s.transactional_id.0.as_str()) {
                            *s = describe_transactions_response::TransactionState::default()
                                .with_transactional_id(s.transactional_id.clone())
                                .with_error_code(TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
                        }
                    }
                    Ok(())
                }
                _ => Err(wrong(api)),
            })
        }
        ApiKey::ListTransactions => {
            let d = d.clone();
            Plan::amend(move |r| match r {
                ResponseKind::ListTransactions(x) => {
                    x.transaction_states
                        .retain(|s| d.txn(Describe, s.transactional_id.0.as_str()));
                    Ok(())
                }
                _ => Err(wrong(api)),
            })
        }
        ApiKey::DescribeConfigs => {
            let denied: Vec<(i8, String, i16)> = t
                .configs
                .iter()
                .filter_map(|c| {
                    config_denial(d, DescribeConfigs, c)
                        .map(|e| (c.resource_type, c.name.to_string(), e))
                })
                .collect();
            if denied.is_empty() {
                return Plan::forward();
            }
            Plan::amend(move |r| match r {
                ResponseKind::DescribeConfigs(x) => {
                    for res in &mut x.results {
                        if let Some((_, _, e)) = denied.iter().find(|(ty, n, _)| {
                            *ty == res.resource_type && n == res.resource_name.as_str()
                        }) {
                            *res = describe_configs_response::DescribeConfigsResult::default()
                                .with_resource_type(res.resource_type)
                                .with_resource_name(res.resource_name.clone())
                                .with_error_code(*e);
                        }
                    }
                    Ok(())
                }
                _ => Err(wrong(api)),
            })
        }
        ApiKey::AlterConfigs | ApiKey::IncrementalAlterConfigs => {
            alter_configs(d, api, body, t, flexible)
        }
        // Every forwarded api is mapped above or in `cluster_only`; a new one
        // must be mapped before it can pass (see the test below).
        other => Plan::Close(format!("{other:?} has no authorization mapping")),
    }
}

/// The error a config resource's denial gets, or `None` when allowed.
fn config_denial(d: &Decider, op: Operation, c: &ConfigRef<'_>) -> Option<i16> {
    let (allowed, e) = match c.resource_type {
        CONFIG_TOPIC => (d.topic(op, c.name), TOPIC_AUTHORIZATION_FAILED),
        CONFIG_GROUP => (d.group(op, c.name), GROUP_AUTHORIZATION_FAILED),
        // Brokers, broker loggers and client metrics are cluster resources.
        _ => (d.cluster(op), CLUSTER_AUTHORIZATION_FAILED),
    };
    (!allowed).then_some(e)
}

fn alter_configs(d: &Decider, api: ApiKey, body: &[u8], t: &Touches<'_>, flexible: bool) -> Plan {
    let verdicts: Vec<Option<i16>> = t
        .configs
        .iter()
        .map(|c| config_denial(d, Operation::AlterConfigs, c))
        .collect();
    if verdicts.iter().all(Option::is_none) {
        return Plan::forward();
    }
    let denied: Vec<(i8, String, i16)> = t
        .configs
        .iter()
        .zip(&verdicts)
        .filter_map(|(c, v)| v.map(|e| (c.resource_type, c.name.to_string(), e)))
        .collect();
    let entries = move || {
        denied
            .iter()
            .map(|(ty, n, e)| {
                alter_configs_response::AlterConfigsResourceResponse::default()
                    .with_resource_type(*ty)
                    .with_resource_name(sb(n))
                    .with_error_code(*e)
            })
            .collect::<Vec<_>>()
    };
    let incremental = |v: Vec<alter_configs_response::AlterConfigsResourceResponse>| {
        v.into_iter()
            .map(|x| {
                incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                    .with_resource_type(x.resource_type)
                    .with_resource_name(x.resource_name)
                    .with_error_code(x.error_code)
            })
            .collect::<Vec<_>>()
    };
    if verdicts.iter().all(Option::is_some) {
        return respond(if api == ApiKey::AlterConfigs {
            ResponseKind::AlterConfigs(AlterConfigsResponse::default().with_responses(entries()))
        } else {
            ResponseKind::IncrementalAlterConfigs(
                IncrementalAlterConfigsResponse::default().with_responses(incremental(entries())),
            )
        });
    }
    let Some(array) = &t.configs_span else {
        return Plan::Close(format!("{api:?} without a resource array"));
    };
    let keep: Vec<_> = t
        .configs
        .iter()
        .zip(&verdicts)
        .filter(|(_, v)| v.is_none())
        .map(|(c, _)| c.span.clone())
        .collect();
    Plan::cut(cut(body, array, &keep, flexible), move |r| {
        match r {
            ResponseKind::AlterConfigs(x) => x.responses.extend(entries()),
            ResponseKind::IncrementalAlterConfigs(x) => x.responses.extend(incremental(entries())),
            _ => return Err(wrong(api)),
        }
        Ok(())
    })
}

fn offset_commit_answer(topics: &[(String, Vec<i32>)], e: i16) -> OffsetCommitResponse {
    OffsetCommitResponse::default().with_topics(
        topics
            .iter()
            .map(|(n, ps)| {
                offset_commit_response::OffsetCommitResponseTopic::default()
                    .with_name(TopicName(sb(n)))
                    .with_partitions(
                        ps.iter()
                            .map(|p| {
                                offset_commit_response::OffsetCommitResponsePartition::default()
                                    .with_partition_index(*p)
                                    .with_error_code(e)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

/// Replaces every partition entry of the `denied` topics in a broker's
/// answer with `denied_entry` (the same partition, carrying the error).
fn mask<T, P>(
    topics: &mut [T],
    denied: &HashSet<String>,
    name: impl Fn(&T) -> &str,
    partitions: impl Fn(&mut T) -> &mut Vec<P>,
    denied_entry: impl Fn(&P) -> P,
) {
    for topic in topics {
        if denied.contains(name(topic)) {
            for p in partitions(topic).iter_mut() {
                *p = denied_entry(p);
            }
        }
    }
}

/// Reads: forward whole, then replace the denied topics' entries in the answer.
fn mask_topics(
    d: &Decider,
    op: Operation,
    t: &Touches<'_>,
    amend: impl FnOnce(HashSet<String>) -> Amend,
) -> Plan {
    let denied: HashSet<String> = t
        .topics
        .iter()
        .filter(|x| !d.topic(op, x.name))
        .map(|x| x.name.to_string())
        .collect();
    if denied.is_empty() {
        return Plan::forward();
    }
    Plan::Forward {
        body: None,
        amends: vec![amend(denied)],
    }
}

/// Writes: cut the topics denied any of `ops` out, answer them locally, merge.
/// `answers` gives, for the denied topics, the whole local answer (when all
/// are denied) and the amend that merges their entries into the broker's.
fn split_topics(
    d: &Decider,
    ops: &[Operation],
    body: &[u8],
    t: &Touches<'_>,
    flexible: bool,
    answers: impl FnOnce(Vec<(String, Vec<i32>)>) -> (ResponseKind, Amend),
) -> Plan {
    let allowed: Vec<bool> = t
        .topics
        .iter()
        .map(|x| ops.iter().all(|op| d.topic(*op, x.name)))
        .collect();
    if allowed.iter().all(|a| *a) {
        return Plan::forward();
    }
    let denied: Vec<&TopicRef<'_>> = t
        .topics
        .iter()
        .zip(&allowed)
        .filter(|(_, a)| !**a)
        .map(|(x, _)| x)
        .collect();
    let (whole, amend) = answers(owned(&denied));
    if allowed.iter().all(|a| !*a) {
        return respond(whole);
    }
    let Some(array) = &t.topics_span else {
        return Plan::Close("request without a topic array".into());
    };
    let keep: Vec<_> = t
        .topics
        .iter()
        .zip(&allowed)
        .filter(|(_, a)| **a)
        .map(|(x, _)| x.span.clone())
        .collect();
    Plan::Forward {
        body: Some(cut(body, array, &keep, flexible)),
        amends: vec![amend],
    }
}

/// ShareFetch and ShareAcknowledge: Read on the group, then Read on each
/// topic, named by id and resolved through the ids learned from the broker.
/// Topics refused (or not known yet, UNKNOWN_TOPIC_ID, on which the client
/// refreshes its metadata) are cut out, since forwarding a share fetch
/// acquires records and an acknowledgement settles them, and their error
/// entries are merged into the answer. A share session also fetches the
/// partitions earlier requests added without naming them again, so every
/// ShareFetch answer is checked topic by topic as well.
fn share(d: &Decider, api: ApiKey, body: &[u8], t: &Touches<'_>, flexible: bool) -> Plan {
    use Operation::*;
    let refusal = match t.groups.first() {
        _ if t.no_group => Some((INVALID_REQUEST, "A share request must name its group.")),
        Some(g) if d.group(Read, g) => None,
        _ => Some((GROUP_AUTHORIZATION_FAILED, "Group authorization failed.")),
    };
    if let Some((code, message)) = refusal {
        let message = Some(sb(message));
        return respond(match api {
            ApiKey::ShareFetch => ResponseKind::ShareFetch(
                ShareFetchResponse::default()
                    .with_error_code(code)
                    .with_error_message(message),
            ),
            _ => ResponseKind::ShareAcknowledge(
                ShareAcknowledgeResponse::default()
                    .with_error_code(code)
                    .with_error_message(message),
            ),
        });
    }
    let mut allowed: HashSet<TopicId> = HashSet::new();
    let mut refused: Vec<(TopicId, Vec<i32>, i16)> = Vec::new();
    let mut keep = Vec::new();
    for x in &t.topic_ids {
        let code = match d.ids.name(&x.id) {
            None => UNKNOWN_TOPIC_ID,
            Some(name) if !d.topic(Read, &name) => TOPIC_AUTHORIZATION_FAILED,
            Some(_) => {
                allowed.insert(x.id);
                keep.push(x.span.clone());
                continue;
            }
        };
        refused.push((x.id, x.partitions.clone(), code));
    }
    let body = match (&t.topics_span, refused.is_empty()) {
        (_, true) => None,
        (Some(array), false) => Some(cut(body, array, &keep, flexible)),
        (None, false) => return Plan::Close("a share request without a topic array".into()),
    };
    if api == ApiKey::ShareAcknowledge && refused.is_empty() {
        return Plan::Forward {
            body,
            amends: vec![],
        };
    }
    let d = d.clone();
    let amend: Amend = Box::new(move |r| {
        let topic_id = |id: &TopicId| uuid::Uuid::from_bytes(*id);
        let no_leader = |l: &mut i32, e: &mut i32| {
            *l = -1;
            *e = -1;
        };
        match r {
            ResponseKind::ShareFetch(f) => {
                // `acked`: the request carried this partition (and maybe
                // acknowledgements for it), which were not forwarded.
                let error = |partition: i32, code: i16, acked: bool| {
                    let mut e = share_fetch_response::PartitionData::default()
                        .with_partition_index(partition)
                        .with_error_code(code);
                    if acked {
                        e.acknowledge_error_code = code;
                    }
                    no_leader(
                        &mut e.current_leader.leader_id,
                        &mut e.current_leader.leader_epoch,
                    );
                    e
                };
                for topic in &mut f.responses {
                    let id = *topic.topic_id.as_bytes();
                    if allowed.contains(&id) {
                        continue;
                    }
                    // A topic cut from the request still comes back when the
                    // share session already held it: one entry, with the
                    // request's partitions added.
                    let cut = refused.iter().find(|(r, _, _)| *r == id);
                    let code = match (cut, d.ids.name(&id)) {
                        (Some((_, _, code)), _) => *code,
                        (None, None) => UNKNOWN_TOPIC_ID,
                        (None, Some(name)) if !d.topic(Read, &name) => TOPIC_AUTHORIZATION_FAILED,
                        (None, Some(_)) => continue,
                    };
                    let named: &[i32] = cut.map_or(&[], |(_, parts, _)| parts);
                    for p in &mut topic.partitions {
                        *p = error(p.partition_index, code, named.contains(&p.partition_index));
                    }
                    for &p in named {
                        if !topic.partitions.iter().any(|x| x.partition_index == p) {
                            topic.partitions.push(error(p, code, true));
                        }
                    }
                }
                let answered: HashSet<TopicId> =
                    f.responses.iter().map(|t| *t.topic_id.as_bytes()).collect();
                f.responses.extend(
                    refused
                        .iter()
                        .filter(|(id, _, _)| !answered.contains(id))
                        .map(|(id, parts, code)| {
                            share_fetch_response::ShareFetchableTopicResponse::default()
                                .with_topic_id(topic_id(id))
                                .with_partitions(
                                    parts.iter().map(|&p| error(p, *code, true)).collect(),
                                )
                        }),
                );
            }
            ResponseKind::ShareAcknowledge(a) => {
                a.responses.extend(refused.iter().map(|(id, parts, code)| {
                    share_acknowledge_response::ShareAcknowledgeTopicResponse::default()
                        .with_topic_id(topic_id(id))
                        .with_partitions(
                            parts
                                .iter()
                                .map(|&p| {
                                    let mut e =
                                        share_acknowledge_response::PartitionData::default()
                                            .with_partition_index(p)
                                            .with_error_code(*code);
                                    no_leader(
                                        &mut e.current_leader.leader_id,
                                        &mut e.current_leader.leader_epoch,
                                    );
                                    e
                                })
                                .collect(),
                        )
                }));
            }
            _ => return Err(wrong(api)),
        }
        Ok(())
    });
    Plan::Forward {
        body,
        amends: vec![amend],
    }
}

/// For answers listing each group's topics (OffsetFetch v8+,
/// DescribeShareGroupOffsets): `Some(true)` keeps a topic, `Some(false)`
/// replaces it with TOPIC_AUTHORIZATION_FAILED entries (the group named it),
/// `None` leaves it out (the group asked for all topics).
fn topic_visibility(
    d: &Decider,
    t: &Touches<'_>,
) -> impl Fn(&str, &str) -> Option<bool> + Send + 'static {
    // Per group: the topics it named, or `None` when it asked for all.
    let mut named: std::collections::HashMap<String, Option<HashSet<String>>> =
        std::collections::HashMap::new();
    for (g, (all, range)) in t.groups.iter().zip(&t.group_topics) {
        let entry = named
            .entry(g.to_string())
            .or_insert_with(|| Some(HashSet::new()));
        if *all {
            *entry = None;
        } else if let Some(set) = entry {
            set.extend(t.topics[range.clone()].iter().map(|x| x.name.to_string()));
        }
    }
    let d = d.clone();
    move |group: &str, name: &str| -> Option<bool> {
        if d.topic(Operation::Describe, name) {
            Some(true)
        } else if named
            .get(group)
            .is_some_and(|n| n.as_ref().is_some_and(|set| set.contains(name)))
        {
            Some(false)
        } else {
            None
        }
    }
}

/// DescribeShareGroupOffsets: Describe on each group, Describe on each topic
/// (named: error entries; all topics: filtered), as Kafka decides it.
fn describe_share_group_offsets(d: &Decider, t: &Touches<'_>) -> Plan {
    let denied_groups: HashSet<String> = t
        .groups
        .iter()
        .filter(|g| !d.group(Operation::Describe, g))
        .map(|g| g.to_string())
        .collect();
    let decide = topic_visibility(d, t);
    Plan::amend(move |r| match r {
        ResponseKind::DescribeShareGroupOffsets(o) => {
            for g in &mut o.groups {
                if denied_groups.contains(g.group_id.0.as_str()) {
                    *g = describe_share_group_offsets_response::DescribeShareGroupOffsetsResponseGroup::default()
                        .with_group_id(g.group_id.clone())
                        .with_error_code(GROUP_AUTHORIZATION_FAILED)
                        .with_error_message(Some(sb("Group authorization failed.")));
                    continue;
                }
                let group = g.group_id.0.to_string();
                g.topics
                    .retain_mut(|topic| match decide(&group, topic.topic_name.0.as_str()) {
                        Some(true) => true,
                        None => false,
                        Some(false) => {
                            for p in &mut topic.partitions {
                                *p = describe_share_group_offsets_response::DescribeShareGroupOffsetsResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                                    .with_start_offset(-1)
                                    .with_leader_epoch(-1)
                                    .with_error_code(TOPIC_AUTHORIZATION_FAILED);
                            }
                            true
                        }
                    });
            }
            Ok(())
        }
        _ => Err(wrong(ApiKey::DescribeShareGroupOffsets)),
    })
}

/// AlterShareGroupOffsets (Read on the group and on each topic) and
/// DeleteShareGroupOffsets (Delete on the group, Read on each topic): a
/// refused group refuses the whole request; refused topics are cut out
/// and answered TOPIC_AUTHORIZATION_FAILED.
fn share_group_offsets_change(
    d: &Decider,
    api: ApiKey,
    body: &[u8],
    t: &Touches<'_>,
    flexible: bool,
) -> Plan {
    use Operation::*;
    let group = t.groups.first().copied().unwrap_or_default();
    let group_op = if api == ApiKey::AlterShareGroupOffsets {
        Read
    } else {
        Delete
    };
    let all: Vec<(String, Vec<i32>)> = owned(&t.topics.iter().collect::<Vec<_>>());
    let answer = move |topics: &[(String, Vec<i32>)], code: i16| -> ResponseKind {
        if api == ApiKey::AlterShareGroupOffsets {
            ResponseKind::AlterShareGroupOffsets(
                AlterShareGroupOffsetsResponse::default().with_responses(
                    topics
                        .iter()
                        .map(|(n, ps)| {
                            alter_share_group_offsets_response::AlterShareGroupOffsetsResponseTopic::default()
                                .with_topic_name(TopicName(sb(n)))
                                .with_partitions(
                                    ps.iter()
                                        .map(|p| {
                                            alter_share_group_offsets_response::AlterShareGroupOffsetsResponsePartition::default()
                                                .with_partition_index(*p)
                                                .with_error_code(code)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
            )
        } else {
            ResponseKind::DeleteShareGroupOffsets(
                DeleteShareGroupOffsetsResponse::default().with_responses(
                    topics
                        .iter()
                        .map(|(n, _)| {
                            delete_share_group_offsets_response::DeleteShareGroupOffsetsResponseTopic::default()
                                .with_topic_name(TopicName(sb(n)))
                                .with_error_code(code)
                        })
                        .collect(),
                ),
            )
        }
    };
    if !d.group(group_op, group) {
        let message = Some(sb("Group authorization failed."));
        return respond(match answer(&all, GROUP_AUTHORIZATION_FAILED) {
            ResponseKind::AlterShareGroupOffsets(a) => ResponseKind::AlterShareGroupOffsets(
                a.with_error_code(GROUP_AUTHORIZATION_FAILED)
                    .with_error_message(message),
            ),
            ResponseKind::DeleteShareGroupOffsets(x) => ResponseKind::DeleteShareGroupOffsets(
                x.with_error_code(GROUP_AUTHORIZATION_FAILED)
                    .with_error_message(message),
            ),
            other => other,
        });
    }
    split_topics(d, &[Read], body, t, flexible, move |denied| {
        let whole = answer(&denied, TOPIC_AUTHORIZATION_FAILED);
        let amend: Amend = Box::new(move |r| {
            match (r, answer(&denied, TOPIC_AUTHORIZATION_FAILED)) {
                (
                    ResponseKind::AlterShareGroupOffsets(a),
                    ResponseKind::AlterShareGroupOffsets(e),
                ) => {
                    a.responses.extend(e.responses);
                }
                (
                    ResponseKind::DeleteShareGroupOffsets(a),
                    ResponseKind::DeleteShareGroupOffsets(e),
                ) => {
                    a.responses.extend(e.responses);
                }
                _ => return Err(wrong(api)),
            }
            Ok(())
        });
        (whole, amend)
    })
}

fn produce(d: &Decider, version: i16, body: &[u8], t: &Touches<'_>, flexible: bool) -> Plan {
    use Operation::*;
    let answer = |topics: &[(String, Vec<i32>)], e: i16| {
        topics
            .iter()
            .map(|(n, ps)| {
                produce_response::TopicProduceResponse::default()
                    .with_name(TopicName(sb(n)))
                    .with_partition_responses(
                        ps.iter()
                            .map(|p| {
                                produce_response::PartitionProduceResponse::default()
                                    .with_index(*p)
                                    .with_error_code(e)
                                    .with_base_offset(-1)
                            })
                            .collect(),
                    )
            })
            .collect::<Vec<_>>()
    };
    let acks0 = crate::message::produce_acks(body, version) == Some(0);
    if let Some(txn) = t.transactional_ids.first() {
        if !d.txn(Write, txn) {
            if acks0 {
                return Plan::Close(
                    "acks=0 produce with a transactional id the principal may not write".into(),
                );
            }
            let all = owned(&t.topics.iter().collect::<Vec<_>>());
            return respond(ResponseKind::Produce(
                ProduceResponse::default()
                    .with_responses(answer(&all, TRANSACTIONAL_ID_AUTHORIZATION_FAILED)),
            ));
        }
    }
    let allowed: Vec<bool> = t.topics.iter().map(|x| d.topic(Write, x.name)).collect();
    if allowed.iter().all(|a| *a) {
        return Plan::forward();
    }
    if acks0 {
        // The broker closes an acks=0 connection on any error: the client
        // has no other way to learn of it.
        return Plan::Close("acks=0 produce to a topic the principal may not write".into());
    }
    split_topics(d, &[Write], body, t, flexible, |denied| {
        (
            ResponseKind::Produce(
                ProduceResponse::default()
                    .with_responses(answer(&denied, TOPIC_AUTHORIZATION_FAILED)),
            ),
            Box::new(move |r| match r {
                ResponseKind::Produce(p) => {
                    p.responses
                        .extend(answer(&denied, TOPIC_AUTHORIZATION_FAILED));
                    Ok(())
                }
                _ => Err(wrong(ApiKey::Produce)),
            }),
        )
    })
}

fn metadata(d: &Decider, version: i16, body: &[u8], t: &Touches<'_>) -> Plan {
    use Operation::*;
    // Named topics the principal may not describe: an error entry each.
    let named_denied: HashSet<String> = t
        .topics
        .iter()
        .filter(|x| !d.topic(Describe, x.name))
        .map(|x| x.name.to_string())
        .collect();
    // Auto-creation of a missing topic needs Create on the cluster or topic;
    // without it the broker must not create anything on Custos's authority.
    let mut no_create: HashSet<String> = HashSet::new();
    let mut new_body = None;
    if t.allow_auto_topic_creation && !t.topics.is_empty() {
        if !d.cluster(Create) {
            no_create = t
                .topics
                .iter()
                .filter(|x| !named_denied.contains(x.name) && !d.topic(Create, x.name))
                .map(|x| x.name.to_string())
                .collect();
        }
        // Nor may it create a topic the principal may not even describe:
        // those are cut out of the request (their answer is Custos's), unless
        // every named topic is one of them, when clearing the flag suffices.
        let cut_denied = !named_denied.is_empty() && named_denied.len() < t.topics.len();
        if !no_create.is_empty() || (!named_denied.is_empty() && !cut_denied) {
            match t.auto_create_at {
                Some(at) => {
                    let mut b = body.to_vec();
                    b[at] = 0;
                    new_body = Some(b);
                }
                // Versions 0-3 always auto-create: there is no flag to clear.
                None => {
                    return Plan::Close(
                        "Metadata v0-3 would auto-create a topic the principal may not create"
                            .into(),
                    )
                }
            }
        }
        if cut_denied {
            let Some(array) = &t.topics_span else {
                return Plan::Close("Metadata without a topic array".into());
            };
            let keep: Vec<_> = t
                .topics
                .iter()
                .filter(|x| !named_denied.contains(x.name))
                .map(|x| x.span.clone())
                .collect();
            let flexible = ApiKey::Metadata.request_header_version(version) >= 2;
            let base = new_body.as_deref().unwrap_or(body);
            new_body = Some(cut(base, array, &keep, flexible));
        }
    }
    let all = t.all_topics;
    let by_id = t.topics_by_id;
    // Always amended: even a fully allowed answer may carry authorized
    // operations, which the broker computed for Custos, not for the client.
    let d = d.clone();
    let amend: Amend = Box::new(move |r| match r {
        ResponseKind::Metadata(m) => {
            m.topics.retain_mut(|topic| {
                let Some(name) = topic.name.as_ref().map(|n| n.0.to_string()) else {
                    return true;
                };
                if named_denied.contains(&name) {
                    *topic = metadata_response::MetadataResponseTopic::default()
                        .with_name(topic.name.clone())
                        .with_error_code(TOPIC_AUTHORIZATION_FAILED);
                    return true;
                }
                if no_create.contains(&name) && topic.error_code == UNKNOWN_TOPIC_OR_PARTITION {
                    topic.error_code = TOPIC_AUTHORIZATION_FAILED;
                    return true;
                }
                if (all || by_id) && !d.topic(Describe, &name) {
                    if all {
                        return false;
                    }
                    *topic = metadata_response::MetadataResponseTopic::default()
                        .with_name(None)
                        .with_topic_id(topic.topic_id)
                        .with_error_code(TOPIC_AUTHORIZATION_FAILED);
                    return true;
                }
                if topic.topic_authorized_operations != NOT_REQUESTED {
                    topic.topic_authorized_operations = authorized_ops(&d, Resource::Topic(name));
                }
                true
            });
            // Topics cut out of the request are answered here.
            let present: HashSet<String> = m
                .topics
                .iter()
                .filter_map(|x| x.name.as_ref().map(|n| n.0.to_string()))
                .collect();
            let mut missing: Vec<&String> = named_denied
                .iter()
                .filter(|n| !present.contains(*n))
                .collect();
            missing.sort();
            m.topics.extend(missing.into_iter().map(|n| {
                metadata_response::MetadataResponseTopic::default()
                    .with_name(Some(TopicName(sb(n))))
                    .with_error_code(TOPIC_AUTHORIZATION_FAILED)
            }));
            if m.cluster_authorized_operations != NOT_REQUESTED {
                m.cluster_authorized_operations = authorized_ops(&d, Resource::Cluster);
            }
            Ok(())
        }
        _ => Err(wrong(ApiKey::Metadata)),
    });
    Plan::Forward {
        body: new_body,
        amends: vec![amend],
    }
}

fn offset_fetch(d: &Decider, version: i16, t: &Touches<'_>) -> Plan {
    use Operation::*;
    let denied_groups: HashSet<String> = t
        .groups
        .iter()
        .filter(|g| !d.group(Describe, g))
        .map(|g| g.to_string())
        .collect();
    if version <= 7 && !denied_groups.is_empty() {
        // v1 has no top-level error code: every partition carries it.
        let topics = if version < 2 {
            t.topics
                .iter()
                .map(|x| {
                    offset_fetch_response::OffsetFetchResponseTopic::default()
                        .with_name(TopicName(sb(x.name)))
                        .with_partitions(
                            x.partitions
                                .iter()
                                .map(|p| {
                                    offset_fetch_response::OffsetFetchResponsePartition::default()
                                        .with_partition_index(*p)
                                        .with_committed_offset(-1)
                                        .with_error_code(GROUP_AUTHORIZATION_FAILED)
                                })
                                .collect(),
                        )
                })
                .collect()
        } else {
            Vec::new()
        };
        let error_code = if version < 2 {
            0
        } else {
            GROUP_AUTHORIZATION_FAILED
        };
        return respond(ResponseKind::OffsetFetch(
            OffsetFetchResponse::default()
                .with_error_code(error_code)
                .with_topics(topics),
        ));
    }
    let single = t.groups.first().map(|g| g.to_string()).unwrap_or_default();
    let decide = topic_visibility(d, t);
    Plan::amend(move |r| match r {
        ResponseKind::OffsetFetch(o) => {
            o.topics
                .retain_mut(|topic| match decide(&single, topic.name.0.as_str()) {
                    Some(true) => true,
                    None => false,
                    Some(false) => {
                        for p in &mut topic.partitions {
                            *p = offset_fetch_response::OffsetFetchResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_committed_offset(-1)
                                .with_error_code(TOPIC_AUTHORIZATION_FAILED);
                        }
                        true
                    }
                });
            for g in &mut o.groups {
                if denied_groups.contains(g.group_id.0.as_str()) {
                    *g = offset_fetch_response::OffsetFetchResponseGroup::default()
                        .with_group_id(g.group_id.clone())
                        .with_error_code(GROUP_AUTHORIZATION_FAILED);
                    continue;
                }
                let group = g.group_id.0.to_string();
                g.topics
                    .retain_mut(|topic| match decide(&group, topic.name.0.as_str()) {
                        Some(true) => true,
                        None => false,
                        Some(false) => {
                            for p in &mut topic.partitions {
                                *p =
                                    offset_fetch_response::OffsetFetchResponsePartitions::default()
                                        .with_partition_index(p.partition_index)
                                        .with_committed_offset(-1)
                                        .with_error_code(TOPIC_AUTHORIZATION_FAILED);
                            }
                            true
                        }
                    });
            }
            Ok(())
        }
        _ => Err(wrong(ApiKey::OffsetFetch)),
    })
}

fn create_topics(d: &Decider, body: &[u8], t: &Touches<'_>, flexible: bool) -> Plan {
    use Operation::*;
    let cluster_create = d.cluster(Create);
    let allowed: Vec<bool> = t
        .topics
        .iter()
        .map(|x| cluster_create || d.topic(Create, x.name))
        .collect();
    // Topics whose configs the principal may not see in the answer.
    let hide_configs: HashSet<String> = t
        .topics
        .iter()
        .zip(&allowed)
        .filter(|(x, a)| **a && !d.topic(DescribeConfigs, x.name))
        .map(|(x, _)| x.name.to_string())
        .collect();
    let denied: Vec<String> = t
        .topics
        .iter()
        .zip(&allowed)
        .filter(|(_, a)| !**a)
        .map(|(x, _)| x.name.to_string())
        .collect();
    if denied.is_empty() && hide_configs.is_empty() {
        return Plan::forward();
    }
    let entries = move || {
        denied
            .iter()
            .map(|n| {
                create_topics_response::CreatableTopicResult::default()
                    .with_name(TopicName(sb(n)))
                    .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                    .with_error_message(Some(sb("Authorization failed.")))
            })
            .collect::<Vec<_>>()
    };
    if allowed.iter().all(|a| !*a) {
        return respond(ResponseKind::CreateTopics(
            CreateTopicsResponse::default().with_topics(entries()),
        ));
    }
    let new_body = if allowed.iter().all(|a| *a) {
        None
    } else {
        let Some(array) = &t.topics_span else {
            return Plan::Close("CreateTopics without a topic array".into());
        };
        let keep: Vec<_> = t
            .topics
            .iter()
            .zip(&allowed)
            .filter(|(_, a)| **a)
            .map(|(x, _)| x.span.clone())
            .collect();
        Some(cut(body, array, &keep, flexible))
    };
    let amend: Amend = Box::new(move |r| match r {
        ResponseKind::CreateTopics(c) => {
            for topic in &mut c.topics {
                if hide_configs.contains(topic.name.0.as_str()) && topic.configs.is_some() {
                    topic.configs = Some(Vec::new());
                    topic.topic_config_error_code = TOPIC_AUTHORIZATION_FAILED;
                    topic.num_partitions = -1;
                    topic.replication_factor = -1;
                }
            }
            c.topics.extend(entries());
            Ok(())
        }
        _ => Err(wrong(ApiKey::CreateTopics)),
    });
    Plan::Forward {
        body: new_body,
        amends: vec![amend],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use custos_audit::MemorySink;
    use custos_policy::TopicCatalog;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::protocol::{Decodable, Encodable};

    const POLICIES: &str = r#"
        @id("alice-orders")
        permit (principal == User::"alice", action in Action::"Write", resource is Topic)
        when { resource.name like "orders*" };
    "#;

    fn stage() -> (Authorize, Arc<MemorySink>) {
        let engine = PolicyEngine::load(POLICIES, TopicCatalog::empty()).expect("policies");
        let sink = Arc::new(MemorySink::with_capacity(100));
        let a = Authorize::new(
            Arc::new(Authorizer::new(engine)),
            sink.clone(),
            Arc::new(Metrics::new()),
        );
        (a, sink)
    }

    fn alice() -> SessionInfo {
        let mut id = crate::auth::Identity::anonymous();
        id.name = "alice".into();
        id.method = crate::auth::AuthMethod::ScramSha512;
        SessionInfo::new(
            7,
            "10.0.0.9:5000".parse().expect("addr"),
            Some(1),
            false,
            id,
        )
    }

    fn produce_request(version: i16, topics: &[&str], acks: i16) -> Request {
        let body = ProduceRequest::default().with_acks(acks).with_topic_data(
            topics
                .iter()
                .map(|t| {
                    TopicProduceData::default()
                        .with_name(TopicName(sb(t)))
                        .with_partition_data(vec![PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(Bytes::from_static(b"not-really-a-batch")))])
                })
                .collect(),
        );
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Produce as i16)
            .with_request_api_version(version)
            .with_correlation_id(42)
            .with_client_id(Some(sb("unit")));
        let mut b = BytesMut::new();
        header
            .encode(&mut b, ApiKey::Produce.request_header_version(version))
            .expect("header");
        body.encode(&mut b, version).expect("body");
        Request::parse(b.freeze()).expect("parse")
    }

    /// A topic refused in a ShareFetch is cut from the request, but the
    /// share session may already hold it (the policy changed mid-session),
    /// so the broker answers for it too: the client gets one entry for it,
    /// with no records, covering the partitions of both.
    #[tokio::test]
    async fn a_refused_share_topic_the_session_still_holds_is_answered_once() {
        use kafka_protocol::messages::{share_fetch_request, share_fetch_response};
        let engine = PolicyEngine::load(
            r#"permit (principal == User::"alice", action in Action::"Read", resource is ConsumerGroup);"#,
            TopicCatalog::empty(),
        )
        .expect("policies");
        let ids = Arc::new(TopicIds::new());
        ids.learn([3; 16], "secret");
        let stage = Authorize::new(
            Arc::new(Authorizer::new(engine)),
            Arc::new(custos_audit::DiscardSink),
            Arc::new(Metrics::new()),
        )
        .with_topic_ids(ids);
        let topic = share_fetch_request::FetchTopic::default()
            .with_topic_id(uuid::Uuid::from_bytes([3; 16]))
            .with_partitions(
                [0, 1]
                    .map(|p| share_fetch_request::FetchPartition::default().with_partition_index(p))
                    .to_vec(),
            );
        let body = ShareFetchRequest::default()
            .with_group_id(Some(GroupId(sb("g"))))
            .with_member_id(Some(sb("m")))
            .with_topics(vec![topic]);
        let mut b = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(ApiKey::ShareFetch as i16)
            .with_request_api_version(1)
            .with_correlation_id(9)
            .encode(&mut b, ApiKey::ShareFetch.request_header_version(1))
            .expect("header");
        body.encode(&mut b, 1).expect("body");
        let mut req = Request::parse(b.freeze()).expect("parse");
        assert!(matches!(
            stage.on_request(&alice(), &mut req).await,
            Ok(Verdict::Forward)
        ));
        let RequestKind::ShareFetch(sent) = req.body().expect("decode") else {
            panic!("not a share fetch");
        };
        assert!(sent.topics.is_empty(), "the refused topic is cut");
        let mut answer = ResponseKind::ShareFetch(ShareFetchResponse::default().with_responses(
            vec![share_fetch_response::ShareFetchableTopicResponse::default()
                .with_topic_id(uuid::Uuid::from_bytes([3; 16]))
                .with_partitions(vec![
                    share_fetch_response::PartitionData::default()
                        .with_partition_index(0)
                        .with_records(Some(Bytes::from_static(b"records")))
                        .with_acquired_records(vec![Default::default()]),
                    share_fetch_response::PartitionData::default()
                        .with_partition_index(2)
                        .with_records(Some(Bytes::from_static(b"more"))),
                ])],
        ));
        for amend in std::mem::take(&mut req.amends.0) {
            amend(&mut answer).expect("amend");
        }
        let ResponseKind::ShareFetch(f) = answer else {
            panic!("not a share fetch answer");
        };
        assert_eq!(f.responses.len(), 1, "{f:?}");
        let mut parts: Vec<_> = f.responses[0]
            .partitions
            .iter()
            .map(|p| {
                let no_records = p.records.as_ref().is_none_or(Bytes::is_empty);
                assert!(no_records && p.acquired_records.is_empty(), "{p:?}");
                assert_eq!(p.error_code, TOPIC_AUTHORIZATION_FAILED);
                (p.partition_index, p.acknowledge_error_code)
            })
            .collect();
        parts.sort_unstable();
        // Partitions the request named carry the refusal of their
        // acknowledgements too; the session's own (2) only the error.
        assert_eq!(
            parts,
            vec![
                (0, TOPIC_AUTHORIZATION_FAILED),
                (1, TOPIC_AUTHORIZATION_FAILED),
                (2, 0)
            ]
        );
    }

    #[tokio::test]
    async fn a_produce_to_one_denied_topic_is_split_and_the_answers_merged() {
        let (stage, sink) = stage();
        for version in [3, 8, 9, 12] {
            let mut req = produce_request(version, &["orders", "secret", "orders-2"], -1);
            let v = stage.on_request(&alice(), &mut req).await.expect("stage");
            assert!(matches!(v, Verdict::Forward), "v{version}");
            // What reaches the broker names only the allowed topics.
            let body = Bytes::copy_from_slice(req.body_bytes());
            let fwd = ProduceRequest::decode(&mut body.clone(), version).expect("decodes");
            let names: Vec<_> = fwd
                .topic_data
                .iter()
                .map(|t| t.name.0.to_string())
                .collect();
            assert_eq!(names, vec!["orders", "orders-2"], "v{version}");
            assert_eq!(
                fwd.topic_data[0].partition_data[0].records.as_deref(),
                Some(&b"not-really-a-batch"[..])
            );
            // The broker's answer gains the denied topic's error.
            let mut answer = ResponseKind::Produce(ProduceResponse::default());
            assert_eq!(req.amends.0.len(), 1);
            for a in std::mem::take(&mut req.amends.0) {
                a(&mut answer).expect("amend");
            }
            let ResponseKind::Produce(p) = answer else {
                panic!("not produce")
            };
            assert_eq!(p.responses.len(), 1);
            assert_eq!(p.responses[0].name.0.as_str(), "secret");
            assert_eq!(
                p.responses[0].partition_responses[0].error_code,
                TOPIC_AUTHORIZATION_FAILED
            );
        }
        let d = sink.decisions();
        let secret = d.iter().find(|e| e.resource == "secret").expect("recorded");
        assert!(!secret.allowed);
        assert_eq!(secret.principal, "User:alice");
        assert_eq!(secret.client_id.as_deref(), Some("unit"));
        let orders = d.iter().find(|e| e.resource == "orders").expect("recorded");
        assert!(orders.allowed);
        assert_eq!(orders.policy_ids, vec!["alice-orders".to_string()]);
        assert_eq!(orders.policy_hash.len(), 64);
    }

    #[tokio::test]
    async fn all_denied_is_answered_locally_and_acks_zero_closes() {
        let (stage, _) = stage();
        let mut req = produce_request(9, &["secret"], 1);
        match stage.on_request(&alice(), &mut req).await.expect("stage") {
            Verdict::Respond(r) => match *r {
                ResponseKind::Produce(p) => assert_eq!(
                    p.responses[0].partition_responses[0].error_code,
                    TOPIC_AUTHORIZATION_FAILED
                ),
                other => panic!("{other:?}"),
            },
            Verdict::Forward => panic!("forwarded a denied produce"),
        }
        let mut req = produce_request(9, &["orders", "secret"], 0);
        let e = stage
            .on_request(&alice(), &mut req)
            .await
            .expect_err("closes");
        assert_eq!(e.blame, Blame::Client);
        let mut req = produce_request(9, &["orders"], -1);
        let raw = req.raw().clone();
        assert!(matches!(
            stage.on_request(&alice(), &mut req).await.expect("stage"),
            Verdict::Forward
        ));
        assert!(req.amends.0.is_empty());
        assert_eq!(
            req.raw().as_ptr(),
            raw.as_ptr(),
            "an allowed produce is not copied"
        );
    }

    #[tokio::test]
    async fn a_reload_changes_the_next_decision() {
        let (stage, _) = stage();
        let mut req = produce_request(9, &["secret"], -1);
        assert!(matches!(
            stage.on_request(&alice(), &mut req).await.expect("stage"),
            Verdict::Respond(_)
        ));
        stage
            .authorizer
            .reload(
                &format!("{POLICIES}\npermit (principal == User::\"alice\", action, resource);"),
                TopicCatalog::empty(),
            )
            .expect("reload");
        let mut req = produce_request(9, &["secret"], -1);
        assert!(matches!(
            stage.on_request(&alice(), &mut req).await.expect("stage"),
            Verdict::Forward
        ));
    }

    #[test]
    fn every_forwarded_api_has_a_mapping() {
        // `plan` refuses unmapped apis at run time; this pins that every api
        // in the allow-list is handled by `cluster_only`, `resources` or is
        // explicitly unchecked.
        for k in FORWARDED {
            if UNCHECKED.contains(k) {
                continue;
            }
            let cluster = matches!(
                k,
                ApiKey::DescribeAcls
                    | ApiKey::DescribeLogDirs
                    | ApiKey::DescribeUserScramCredentials
                    | ApiKey::ListPartitionReassignments
                    | ApiKey::ElectLeaders
                    | ApiKey::AlterPartitionReassignments
                    | ApiKey::UpdateFeatures
                    | ApiKey::DescribeClientQuotas
                    | ApiKey::ListConfigResources
                    | ApiKey::CreateAcls
                    | ApiKey::DeleteAcls
                    | ApiKey::AlterReplicaLogDirs
                    | ApiKey::AlterUserScramCredentials
                    | ApiKey::AlterClientQuotas
            );
            let named = !matches!(
                resources::touches(
                    *k,
                    k.valid_versions()
                        .max
                        .min(resources::name_based_max_version(*k).unwrap_or(i16::MAX)),
                    &[]
                ),
                Err(resources::ResourceError::Unmapped(_))
            );
            assert!(
                cluster || named || matches!(k, ApiKey::ListGroups | ApiKey::ListTransactions),
                "{k:?} has no mapping"
            );
        }
    }

    #[test]
    fn cut_rewrites_the_count_and_keeps_the_rest() {
        // [prefix][count=3][a][b][c][suffix], keep a and c.
        let body = [9, 0, 0, 0, 3, 1, 2, 3, 7];
        let out = cut(&body, &(1..8), &[5..6, 7..8], false);
        assert_eq!(out, vec![9, 0, 0, 0, 2, 1, 3, 7]);
        let body = [9, 4, 1, 2, 3, 7];
        let out = cut(&body, &(1..5), std::slice::from_ref(&(3..4)), true);
        assert_eq!(out, vec![9, 2, 2, 7]);
    }
}

#[cfg(test)]
#[path = "authorize_answers_test.rs"]
mod answers_test;
