//! Decrypts or masks protected parts of fetched records (Fetch responses).
//!
//! For a topic with a rule, each record's protected parts are opened; a
//! principal whom Cedar allows `Decrypt` on the topic gets the original
//! bytes, everyone else the rule's mask. A shredded subject's parts, and
//! parts under a destroyed KEK version, read as an explicit "erased"
//! placeholder, so consumers keep working. Without an
//! authorizer nobody may decrypt (fail closed). When a key cannot be had (KMS
//! down) the partition answers KAFKA_STORAGE_ERROR without records, which
//! clients retry; ciphertext is never handed out in place of plaintext.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use custos_crypto::key_ref::KeyRef;
use custos_policy::{Action, Authorizer, RequestContext, Resource};
use kafka_protocol::messages::{ApiKey, ResponseKind};

use crate::fetch_records::{self, KAFKA_STORAGE_ERROR};
use crate::field_rules::{self, Access, KeyLookup, KeyTable, Protection, RevealError};
use crate::message::Response;
use crate::metrics::Metrics;
use crate::pipeline::{
    Blame, FetchAnswer, FetchPartition, PartitionEdit, SessionInfo, Stage, StageError,
};
use crate::record_batch::{self, RewriteError};
use crate::topic_ids::TopicIds;

const NAME: &str = "decrypt";

/// Kafka's UNSUPPORTED_VERSION.
const UNSUPPORTED_VERSION: i16 = 35;

/// The decrypt stage.
pub struct Decrypt {
    protection: Arc<Protection>,
    authorizer: Option<Arc<Authorizer>>,
    metrics: Arc<Metrics>,
    /// Pieces a large answer is cut into: the cores available.
    lanes: usize,
    /// Names of the topics ShareFetch answers name by id.
    ids: Arc<TopicIds>,
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
            lanes: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            ids: Arc::new(TopicIds::new()),
        }
    }

    /// Resolves the topic ids of ShareFetch answers with `ids`.
    pub fn with_topic_ids(mut self, ids: Arc<TopicIds>) -> Self {
        self.ids = ids;
        self
    }

    /// Cuts large answers into `lanes` pieces revealed in parallel (default:
    /// the cores available; 1 reveals everything on the session's task).
    pub fn with_lanes(mut self, lanes: usize) -> Self {
        self.lanes = lanes.max(1);
        self
    }

    /// Whether `session`'s principal may see `topic`'s protected parts,
    /// which `rule` classifies: Cedar's `Decrypt` on the topic, with the
    /// rule's classification as `context.classification`. The decision is
    /// cached per connection by (action, topic); one topic has one rule, so
    /// one classification.
    fn access(&self, session: &SessionInfo, topic: &str, rule: &field_rules::Rule) -> Access {
        let Some(a) = &self.authorizer else {
            return Access::Masked;
        };
        let mut ctx = RequestContext::new(
            session.client_addr.ip(),
            session.tls,
            session.principal.auth_method,
        );
        ctx.classification = Some(rule.config.classification.clone().unwrap_or_default());
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

    /// [`access`](Self::access), decided once per topic of an answer.
    fn access_once(
        &self,
        session: &SessionInfo,
        topic: &str,
        rule: &field_rules::Rule,
        decided: &mut Vec<(String, Access)>,
    ) -> Access {
        if let Some((_, a)) = decided.iter().find(|(t, _)| t == topic) {
            return *a;
        }
        let a = self.access(session, topic, rule);
        decided.push((topic.to_string(), a));
        a
    }

    /// Counts an answer's revealed records (`count`: masked, plaintext) and
    /// notes for its audit record the keys used and each topic's access.
    fn report(
        &self,
        audit: &crate::audit_trail::AuditNotes,
        count: [u64; 2],
        accesses: &[(String, Access)],
        keys: &KeyTable,
    ) {
        self.metrics.decrypted_records(count[1], true);
        self.metrics.decrypted_records(count[0], false);
        let details: Vec<(String, String)> = accesses
            .iter()
            .map(|(topic, access)| {
                (
                    format!("revealed.{topic}"),
                    access_label(*access).to_string(),
                )
            })
            .collect();
        if !details.is_empty() {
            crate::protection::note_keys(
                audit,
                custos_audit::EventKind::Fetch,
                keys.key_refs(),
                &details,
            );
        }
    }

    async fn resolve(&self, r: &KeyRef, topic: &str) -> KeyLookup {
        let ctx = field_rules::dek_context(topic);
        let found = KeyLookup::from_key(self.protection.keys.decryption_key(r, &ctx).await);
        if let KeyLookup::Unavailable(why) = &found {
            tracing::warn!(topic, error = %why, "data key unavailable; partition answered with a retriable error");
        }
        found
    }
}

#[async_trait]
impl Stage for Decrypt {
    fn name(&self) -> &'static str {
        NAME
    }

    fn response_api_keys(&self) -> &[ApiKey] {
        &[ApiKey::Fetch, ApiKey::ShareFetch]
    }

    fn streams_fetch(&self, version: i16) -> bool {
        fetch_records::VERSIONS.contains(&version)
    }

    fn rewrites_fetch(&self, _version: i16) -> bool {
        !self.protection.rules.is_empty()
    }

    async fn on_fetch_partition(
        &self,
        session: &SessionInfo,
        answer: &FetchAnswer,
        part: &FetchPartition,
    ) -> Result<Option<PartitionEdit>, StageError> {
        if part.records.is_empty() {
            return Ok(None);
        }
        let Some(topic) = part.topic.as_deref() else {
            // As in whole answers: topics named by id cannot be matched.
            return Ok(Some(PartitionEdit {
                records: None,
                error_code: Some(UNSUPPORTED_VERSION),
            }));
        };
        let Some(rule) = self.protection.rules.for_topic(topic) else {
            return Ok(None);
        };
        let access = self.access(session, topic, rule);
        // A large partition is cut at batch boundaries, one piece per core:
        // a consumer that has drained one partition often fetches it alone,
        // and waits for this answer.
        let lanes = if part.records.len() >= PARALLEL_MIN {
            self.lanes
        } else {
            1
        };
        let pieces: Vec<Piece> = record_batch::split_batches(&part.records, lanes)
            .into_iter()
            .enumerate()
            .map(|(seq, records)| Piece {
                seq,
                replacement: 0,
                topic: topic.to_string(),
                access,
                records,
            })
            .collect();
        // The session's task keeps reading and writing the answer meanwhile.
        let (outcomes, keys) = self.reveal_all(pieces, Placement::Away).await;
        let outcome = outcomes.into_iter().try_fold(
            (Vec::new(), 0u64),
            |(mut records, total), (_, outcome)| {
                let (r, n) = outcome?;
                records.push(r);
                Ok::<_, String>((records, total + n))
            },
        );
        crate::protection::note_keys(
            &answer.audit,
            custos_audit::EventKind::Fetch,
            keys.key_refs(),
            &[(
                format!("revealed.{topic}"),
                access_label(access).to_string(),
            )],
        );
        Ok(Some(match outcome {
            Ok((records, n)) => {
                self.metrics
                    .decrypted_records(n, access == Access::Plaintext);
                PartitionEdit {
                    records: Some(records),
                    error_code: None,
                }
            }
            Err(why) => {
                self.metrics.decrypt_failure();
                tracing::warn!(topic, partition = part.partition, why = %why, "fetched records withheld");
                PartitionEdit {
                    records: None,
                    error_code: Some(KAFKA_STORAGE_ERROR),
                }
            }
        }))
    }

    async fn on_response(
        &self,
        session: &SessionInfo,
        response: &mut Response,
    ) -> Result<(), StageError> {
        if response.api_key == ApiKey::ShareFetch {
            return self.reveal_share_fetch(session, response).await;
        }
        // The body is walked, not decoded: only protected partitions'
        // records are rebuilt and spliced in; everything else is copied as
        // the broker sent it.
        let version = response.api_version;
        let raw_body = response.raw_body();
        let body = &raw_body[..];
        let parts = fetch_records::fetch_partitions(body, version).map_err(|e| StageError {
            stage: NAME,
            blame: Blame::Upstream,
            message: e.to_string(),
        })?;
        let mut replacements = Vec::new();
        let mut accesses: Vec<(String, Access)> = Vec::new();
        let mut pieces = Vec::new();
        let mut total = 0;
        for (index, p) in parts.iter().enumerate() {
            let Some(range) = p.records.clone().filter(|r| !r.is_empty()) else {
                continue;
            };
            let Some(topic) = p.topic else {
                // Topics named by id cannot be matched to rules: a client
                // that ignored the ApiVersions cap gets no records.
                replacements.push(fetch_records::Replacement {
                    index,
                    records: Vec::new(),
                    error_code: Some(UNSUPPORTED_VERSION),
                });
                continue;
            };
            let Some(rule) = self.protection.rules.for_topic(topic) else {
                continue;
            };
            let access = self.access_once(session, topic, rule, &mut accesses);
            total += range.len();
            pieces.push(Piece {
                seq: 0,
                replacement: replacements.len(),
                topic: topic.to_string(),
                access,
                records: raw_body.slice(range),
            });
            replacements.push(fetch_records::Replacement {
                index,
                records: Vec::new(),
                error_code: None,
            });
        }
        if pieces.is_empty() && replacements.is_empty() {
            return Ok(());
        }
        // Large answers are cut at batch boundaries and revealed on the
        // blocking pool, one piece per core: the consumer waits for this
        // answer, so its core is free to share the work.
        let lanes = if total >= PARALLEL_MIN { self.lanes } else { 1 };
        if lanes > 1 {
            pieces = pieces
                .into_iter()
                .flat_map(|p| {
                    let share = (p.records.len() * lanes).div_ceil(total).max(1);
                    record_batch::split_batches(&p.records, share)
                        .into_iter()
                        .map(move |records| Piece {
                            records,
                            topic: p.topic.clone(),
                            ..p
                        })
                })
                .collect();
        }
        for (seq, p) in pieces.iter_mut().enumerate() {
            p.seq = seq;
        }
        let placement = if lanes > 1 {
            Placement::Spread
        } else {
            Placement::Here
        };
        let (outcomes, keys) = self.reveal_all(pieces, placement).await;
        // Records revealed per replacement, and whether in plaintext.
        let mut revealed = vec![(0u64, false); replacements.len()];
        for (piece, outcome) in outcomes {
            let rep = &mut replacements[piece.replacement];
            if rep.error_code.is_some() {
                continue;
            }
            match outcome {
                Ok((records, n)) => {
                    rep.records.push(records);
                    revealed[piece.replacement].0 += n;
                    revealed[piece.replacement].1 = piece.access == Access::Plaintext;
                }
                Err(why) => {
                    self.metrics.decrypt_failure();
                    tracing::warn!(topic = %piece.topic, partition = parts[rep.index].partition, why = %why, "fetched records withheld");
                    rep.records.clear();
                    rep.error_code = Some(KAFKA_STORAGE_ERROR);
                }
            }
        }
        // Only partitions answered whole count as revealed.
        let mut count = [0u64; 2];
        for (rep, (n, plaintext)) in replacements.iter().zip(&revealed) {
            if rep.error_code.is_none() {
                count[usize::from(*plaintext)] += n;
            }
        }
        self.report(&response.audit, count, &accesses, &keys);
        let frame = response.raw_frame();
        let pieces = fetch_records::splice_records(
            &frame,
            frame.len() - body.len(),
            version,
            &parts,
            &replacements,
        )
        .map_err(|e| StageError {
            stage: NAME,
            blame: Blame::Internal,
            message: e.to_string(),
        })?;
        response
            .replace_frame_parts(pieces)
            .map_err(|e| StageError::codec(NAME, Blame::Internal, e))?;
        Ok(())
    }
}

impl Decrypt {
    /// ShareFetch answers (KIP-932) are decoded whole, their protected
    /// partitions' records revealed like a Fetch's, and re-encoded. Topics
    /// come by id: one whose name is not known cannot be matched to its
    /// rules, so its records are withheld (the broker redelivers them once
    /// their acquisition lock expires).
    async fn reveal_share_fetch(
        &self,
        session: &SessionInfo,
        response: &mut Response,
    ) -> Result<(), StageError> {
        let codec = |e| StageError::codec(NAME, Blame::Upstream, e);
        let mut slots: Vec<(usize, usize)> = Vec::new();
        let mut withheld: Vec<(usize, usize)> = Vec::new();
        let mut accesses: Vec<(String, Access)> = Vec::new();
        let mut pieces = Vec::new();
        let mut total = 0;
        {
            let ResponseKind::ShareFetch(f) = response.body().map_err(codec)? else {
                return Err(StageError {
                    stage: NAME,
                    blame: Blame::Internal,
                    message: "a ShareFetch exchange without a ShareFetch answer".into(),
                });
            };
            for (ti, topic) in f.responses.iter().enumerate() {
                let name = self.ids.name(topic.topic_id.as_bytes());
                for (pi, p) in topic.partitions.iter().enumerate() {
                    let Some(records) = p.records.as_ref().filter(|r| !r.is_empty()) else {
                        continue;
                    };
                    let Some(name) = name.as_deref() else {
                        withheld.push((ti, pi));
                        continue;
                    };
                    let Some(rule) = self.protection.rules.for_topic(name) else {
                        continue;
                    };
                    let access = self.access_once(session, name, rule, &mut accesses);
                    total += records.len();
                    pieces.push(Piece {
                        seq: pieces.len(),
                        replacement: slots.len(),
                        topic: name.to_string(),
                        access,
                        records: records.clone(),
                    });
                    slots.push((ti, pi));
                }
            }
        }
        if pieces.is_empty() && withheld.is_empty() {
            return Ok(());
        }
        let placement = if total >= PARALLEL_MIN && pieces.len() > 1 {
            Placement::Spread
        } else {
            Placement::Here
        };
        let (outcomes, keys) = self.reveal_all(pieces, placement).await;
        let ResponseKind::ShareFetch(f) = response.body_mut().map_err(codec)? else {
            return Ok(());
        };
        let withhold = |p: &mut kafka_protocol::messages::share_fetch_response::PartitionData| {
            p.records = None;
            p.acquired_records.clear();
            p.error_code = KAFKA_STORAGE_ERROR;
        };
        for &(ti, pi) in &withheld {
            self.metrics.decrypt_failure();
            tracing::warn!(
                partition = f.responses[ti].partitions[pi].partition_index,
                "share-fetched records of a topic whose id is not known withheld"
            );
            withhold(&mut f.responses[ti].partitions[pi]);
        }
        let mut count = [0u64; 2];
        for (piece, outcome) in outcomes {
            let (ti, pi) = slots[piece.replacement];
            let p = &mut f.responses[ti].partitions[pi];
            match outcome {
                Ok((records, n)) => {
                    p.records = Some(records);
                    count[usize::from(piece.access == Access::Plaintext)] += n;
                }
                Err(why) => {
                    self.metrics.decrypt_failure();
                    tracing::warn!(topic = %piece.topic, partition = p.partition_index, why = %why, "share-fetched records withheld");
                    withhold(p);
                }
            }
        }
        self.report(&response.audit, count, &accesses, &keys);
        Ok(())
    }
}

/// How an access reads in audit details.
fn access_label(access: Access) -> &'static str {
    match access {
        Access::Plaintext => "plaintext",
        Access::Masked => "masked",
    }
}

/// Where the passes over an answer's pieces run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// All on the session's task.
    Here,
    /// One group per lane, one of them on the session's task.
    Spread,
    /// All on the blocking pool: the session's task has other work.
    Away,
}

/// Protected records at least this large in one answer are revealed in
/// parallel; below it, spawning costs more than it saves.
const PARALLEL_MIN: usize = 256 << 10;

/// A run of whole batches of one partition to reveal.
struct Piece {
    /// Its place among all pieces: pieces of one partition are laid end to
    /// end in this order.
    seq: usize,
    /// Which replacement its output belongs to.
    replacement: usize,
    topic: String,
    access: Access,
    records: Bytes,
}

/// What revealing one piece gave: its records and how many, or why the
/// partition must be withheld.
type Outcome = Result<(Bytes, u64), String>;

/// Why one pass over a piece did not finish.
enum PassError {
    /// Keys not looked up yet (every one the piece names, deduplicated).
    Missing(Vec<field_rules::Unresolved>),
    /// The partition must be withheld.
    Withhold(String),
}

/// A pass's outcome, and the keys it took from the key manager's memory.
type Pass = (Result<(Bytes, u64), PassError>, KeyTable);

/// One pass over a piece with the keys known so far, plus those the key
/// manager holds in memory (taken without waiting, so a pass only stops
/// for keys the KMS must unwrap). Keys that need the KMS are collected (the
/// pass goes on, its output discarded), so one lookup round and one more
/// pass suffice however many keys a piece names.
fn reveal_piece(protection: &Protection, piece: &Piece, keys: &KeyTable) -> Pass {
    let Some(rule) = protection.rules.for_topic(&piece.topic) else {
        return (
            Err(PassError::Withhold("no rule".into())),
            KeyTable::default(),
        );
    };
    let reader = field_rules::Reader {
        access: piece.access,
        keys,
        tokenizer: protection.tokenizer.as_ref(),
        in_memory: Some(&protection.keys),
    };
    let mut bufs = field_rules::RevealBuffers::default();
    let mut out = BytesMut::with_capacity(piece.records.len());
    let mut missing: Vec<field_rules::Unresolved> = Vec::new();
    let mut edit = |r: &mut record_batch::RecordView<'_>, scratch: &mut Vec<u8>| {
        match field_rules::reveal_record(rule, &piece.topic, r, scratch, &mut bufs, &reader) {
            Err(RevealError::Unresolved(k)) => {
                if !missing.iter().any(|m| m.bytes == k.bytes) {
                    missing.push(*k);
                }
                Ok(false)
            }
            other => other,
        }
    };
    let result = record_batch::rewrite(
        &piece.records,
        record_batch::DEFAULT_MAX_DECOMPRESSED,
        &mut out,
        &mut edit,
    );
    let found = bufs.take_found();
    let outcome = match result {
        _ if !missing.is_empty() => Err(PassError::Missing(missing)),
        Ok(n) => Ok((out.freeze(), n)),
        Err(RewriteError::Edit(e)) => Err(PassError::Withhold(e.to_string())),
        // Bytes Custos cannot read may hold anything: nothing leaves.
        Err(RewriteError::Batch(e)) => Err(PassError::Withhold(format!(
            "record batch cannot be read: {e}"
        ))),
    };
    (outcome, found)
}

impl Decrypt {
    /// Reveals every piece, on the threads `placement` says:
    /// passes with the keys known, then one lookup round for the keys the
    /// passes found missing, then passes again over the pieces that missed
    /// some. Returns each piece with its outcome, and the keys used.
    async fn reveal_all(
        &self,
        pieces: Vec<Piece>,
        placement: Placement,
    ) -> (Vec<(Piece, Outcome)>, KeyTable) {
        let mut keys = Arc::new(KeyTable::default());
        let mut pending = pieces;
        let mut done = Vec::with_capacity(pending.len());
        // A pass that misses keys is followed by one that has them all (or
        // their failure); the bound only guards against a key that the
        // table somehow never answers.
        for round in 0..3 {
            let passes = self.run_passes(pending, &keys, placement).await;
            let mut retry = Vec::new();
            let mut lookups = Vec::new();
            for (piece, (pass, found)) in passes {
                if !found.is_empty() {
                    Arc::make_mut(&mut keys).absorb(found);
                }
                match pass {
                    Ok(v) => done.push((piece, Ok(v))),
                    Err(PassError::Withhold(why)) => done.push((piece, Err(why))),
                    Err(PassError::Missing(_)) if round == 2 => {
                        done.push((piece, Err("data keys could not be resolved".into())));
                    }
                    Err(PassError::Missing(m)) => {
                        lookups.extend(m.into_iter().map(|k| (k, piece.topic.clone())));
                        retry.push(piece);
                    }
                }
            }
            if retry.is_empty() {
                break;
            }
            let table = Arc::make_mut(&mut keys);
            for (k, topic) in lookups {
                if table.get(&k.bytes).is_none() {
                    let found = self.resolve(&k.key_ref, &topic).await;
                    table.insert(k, found);
                }
            }
            pending = retry;
        }
        // Pieces of one partition must stay in order.
        done.sort_by_key(|(p, _)| p.seq);
        let keys = Arc::try_unwrap(keys).unwrap_or_else(|shared| (*shared).clone());
        (done, keys)
    }

    /// One pass over each piece.
    async fn run_passes(
        &self,
        pieces: Vec<Piece>,
        keys: &Arc<KeyTable>,
        placement: Placement,
    ) -> Vec<(Piece, Pass)> {
        if placement == Placement::Here || (placement == Placement::Spread && pieces.len() < 2) {
            return pieces
                .into_iter()
                .map(|p| {
                    let r = reveal_piece(&self.protection, &p, keys);
                    (p, r)
                })
                .collect();
        }
        // One group of pieces per lane, balanced by size; every group but
        // one goes to the blocking pool and the last is revealed here, so an
        // answer costs `lanes - 1` thread hand-offs, not one per piece.
        let lanes = self.lanes.min(pieces.len());
        let mut groups: Vec<(usize, Vec<Piece>)> = (0..lanes).map(|_| (0, Vec::new())).collect();
        let mut by_size = pieces;
        by_size.sort_by_key(|p| std::cmp::Reverse(p.records.len()));
        for p in by_size {
            if let Some(g) = groups.iter_mut().min_by_key(|(bytes, _)| *bytes) {
                g.0 += p.records.len();
                g.1.push(p);
            }
        }
        let here = match placement {
            Placement::Away => Vec::new(),
            _ => groups.pop().map(|(_, g)| g).unwrap_or_default(),
        };
        let tasks: Vec<_> = groups
            .into_iter()
            .map(|(_, group)| {
                let shells: Vec<Piece> = group
                    .iter()
                    .map(|p| Piece {
                        records: Bytes::new(),
                        topic: p.topic.clone(),
                        ..*p
                    })
                    .collect();
                let protection = self.protection.clone();
                let keys = keys.clone();
                let task = tokio::task::spawn_blocking(move || {
                    group
                        .into_iter()
                        .map(|p| {
                            let r = reveal_piece(&protection, &p, &keys);
                            (p, r)
                        })
                        .collect::<Vec<_>>()
                });
                (shells, task)
            })
            .collect();
        let mut out: Vec<_> = here
            .into_iter()
            .map(|p| {
                let r = reveal_piece(&self.protection, &p, keys);
                (p, r)
            })
            .collect();
        for (shells, task) in tasks {
            match task.await {
                Ok(v) => out.extend(v),
                // Those pieces are lost, so their partitions are withheld.
                Err(e) => {
                    tracing::error!(error = %e, "a decrypt task failed");
                    out.extend(shells.into_iter().map(|shell| {
                        (
                            shell,
                            (
                                Err(PassError::Withhold("decrypt task failed".into())),
                                KeyTable::default(),
                            ),
                        )
                    }));
                }
            }
        }
        out
    }
}
