//! The stage pipeline: what Custos does to requests and responses.
//!
//! A stage is one file under `stages/`. It declares which api keys it wants to
//! see on the way in and on the way out; a frame whose api key no stage wants
//! is forwarded as the bytes it arrived in. Request stages run in registration
//! order, response stages in reverse, so the stage closest to the client sees
//! the request first and the response last (authorize → … → encrypt on the way
//! in; … → decrypt → rewrite on the way out).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use custos_policy::DecisionCache;
use kafka_protocol::messages::{ApiKey, ResponseKind};

use crate::message::{CodecError, Request, Response};

/// Whose fault a failure was; logs and metrics carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The client sent something wrong.
    Client,
    /// The broker failed or sent something wrong.
    Upstream,
    /// Custos failed.
    Internal,
}

impl Blame {
    /// Lower-case name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Blame::Client => "client",
            Blame::Upstream => "upstream",
            Blame::Internal => "internal",
        }
    }
}

/// What a connection is, as stages see it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Process-unique connection number.
    pub id: u64,
    /// Client socket address.
    pub client_addr: SocketAddr,
    /// Upstream broker this connection represents; `None` on the bootstrap listener.
    pub broker_id: Option<i32>,
    /// Whether the client connection is TLS.
    pub tls: bool,
    /// Who the client authenticated as (anonymous without authentication).
    pub identity: crate::auth::Identity,
    /// The identity as Cedar policies see it.
    pub principal: Arc<custos_policy::Principal>,
    /// `Type:name` of the principal, for audit records.
    pub principal_label: Arc<str>,
    /// The client address as text, for audit records.
    pub client_label: Arc<str>,
    /// This connection's authorization decisions (one principal, one context).
    pub decisions: Arc<Mutex<DecisionCache>>,
}

/// Resources whose decisions one connection keeps.
const DECISION_CACHE_RESOURCES: usize = 1024;
/// How long a cached decision is trusted: policies may test `context.time`.
const DECISION_CACHE_AGE: std::time::Duration = std::time::Duration::from_secs(10);

impl SessionInfo {
    /// A connection's facts, with an empty decision cache.
    pub fn new(
        id: u64,
        client_addr: SocketAddr,
        broker_id: Option<i32>,
        tls: bool,
        identity: crate::auth::Identity,
    ) -> Self {
        let principal = Arc::new(identity.to_principal());
        Self {
            id,
            client_addr,
            broker_id,
            tls,
            principal_label: format!("{}:{}", identity.principal_type, identity.name).into(),
            client_label: client_addr.to_string().into(),
            identity,
            principal,
            decisions: Arc::new(Mutex::new(DecisionCache::new(
                DECISION_CACHE_RESOURCES,
                DECISION_CACHE_AGE,
            ))),
        }
    }
}

/// A stage's decision about a request.
#[derive(Debug)]
pub enum Verdict {
    /// Send it on (possibly changed) to the broker.
    Forward,
    /// Do not forward; answer the client with this body instead.
    Respond(Box<ResponseKind>),
}

/// A stage failure; the connection is closed and the blame logged.
#[derive(Debug, thiserror::Error)]
#[error("stage {stage}: {message}")]
pub struct StageError {
    /// Failing stage.
    pub stage: &'static str,
    /// Whose fault.
    pub blame: Blame,
    /// What went wrong (never payload bytes).
    pub message: String,
}

impl StageError {
    /// A failure to decode or encode a body, blamed on whoever sent it.
    pub fn codec(stage: &'static str, blame: Blame, e: CodecError) -> Self {
        Self {
            stage,
            blame,
            message: e.to_string(),
        }
    }
}

/// A Fetch answer being streamed through the stages partition by partition
/// (`fetch_stream.rs`): what its partitions' hooks share.
#[derive(Debug, Clone)]
pub struct FetchAnswer {
    /// Fetch version of the exchange.
    pub api_version: i16,
    /// Correlation id of the exchange.
    pub correlation_id: i32,
    /// Audit records of the exchange so far.
    pub audit: crate::audit_trail::AuditNotes,
}

/// One partition of a streamed Fetch answer, as the broker sent it.
#[derive(Debug, Clone)]
pub struct FetchPartition {
    /// Topic name; `None` from v13 on, where topics are named by id.
    pub topic: Option<Arc<str>>,
    /// Topic id as text, from v13 on.
    pub topic_id: Option<Arc<str>>,
    /// Partition index.
    pub partition: i32,
    /// The partition's error code.
    pub error_code: i16,
    /// Its whole record batches (a truncated trailing batch is left out: a
    /// streamed partition keeps its length, and what replaces the records
    /// is padded to it with a truncated batch of Custos's own).
    pub records: Bytes,
}

/// What a stage changes in a streamed partition.
#[derive(Debug, Default)]
pub struct PartitionEdit {
    /// New records, whole batches in pieces laid end to end, no longer than
    /// the broker's (longer ones lose batches from the end).
    pub records: Option<Vec<Bytes>>,
    /// A new error code; the partition's records are then withheld.
    pub error_code: Option<i16>,
}

/// One step of the pipeline. Hooks default to doing nothing.
#[async_trait]
pub trait Stage: Send + Sync + 'static {
    /// Short name for logs.
    fn name(&self) -> &'static str;

    /// Api keys whose requests this stage must see.
    fn request_api_keys(&self) -> &[ApiKey] {
        &[]
    }

    /// Api keys whose responses this stage must see.
    fn response_api_keys(&self) -> &[ApiKey] {
        &[]
    }

    /// Whether, of the keys in [`response_api_keys`](Self::response_api_keys),
    /// the response at this version needs this stage. A response no stage
    /// needs is forwarded undecoded, and a large one as it arrives.
    fn wants_response_version(&self, _key: ApiKey, _version: i16) -> bool {
        true
    }

    /// Whether this stage can take a large Fetch answer at `version` one
    /// partition at a time through
    /// [`on_fetch_partition`](Self::on_fetch_partition) instead of whole
    /// through [`on_response`](Self::on_response). An answer streams only
    /// when every stage that wants it can.
    fn streams_fetch(&self, _version: i16) -> bool {
        false
    }

    /// Whether this stage may change the records of Fetch answers at
    /// `version` (decryption), not only read them: such answers stream only
    /// from a larger size on (`limits.fetch_reveal_stream_min_bytes`).
    fn rewrites_fetch(&self, _version: i16) -> bool {
        false
    }

    /// Whether this stage, streaming Fetch answers at `version`, needs each
    /// partition's records ([`on_fetch_partition`](Self::on_fetch_partition)).
    /// When no stage does, the records are passed on unread (socket to
    /// socket where both legs are plain TCP: `fetch_relay.rs`).
    fn reads_fetch_partitions(&self, _version: i16) -> bool {
        true
    }

    /// Rewrites the closing tagged fields of a streamed Fetch answer (the
    /// bytes after its last topic: the field count and the fields). `None`
    /// leaves them as they are. The streamer keeps the answer's length: a
    /// shorter result is padded with an unknown tagged field that clients
    /// skip, and one that cannot fit is refused with [`TailTooLong`].
    fn on_fetch_tail(&self, _version: i16, _tail: &[u8]) -> Result<Option<Vec<u8>>, StageError> {
        Ok(None)
    }

    /// Inspects or changes one partition of a streamed Fetch answer.
    /// Partitions of one answer may be handled concurrently.
    async fn on_fetch_partition(
        &self,
        _session: &SessionInfo,
        _answer: &FetchAnswer,
        _partition: &FetchPartition,
    ) -> Result<Option<PartitionEdit>, StageError> {
        Ok(None)
    }

    /// Inspects or changes a request before it is forwarded.
    async fn on_request(
        &self,
        _session: &SessionInfo,
        _request: &mut Request,
    ) -> Result<Verdict, StageError> {
        Ok(Verdict::Forward)
    }

    /// Inspects or changes a response before the client gets it.
    async fn on_response(
        &self,
        _session: &SessionInfo,
        _response: &mut Response,
    ) -> Result<(), StageError> {
        Ok(())
    }
}

/// Registered stages, indexed by api key for a constant-time "does anyone care?".
pub struct Pipeline {
    stages: Vec<Arc<dyn Stage>>,
    by_request_key: Vec<Vec<usize>>,
    by_response_key: Vec<Vec<usize>>,
}

const KEY_SLOTS: usize = 128;

fn slot(key: ApiKey) -> usize {
    (key as i16 as usize) % KEY_SLOTS
}

impl Pipeline {
    /// Builds the index over `stages`, kept in registration order.
    pub fn new(stages: Vec<Arc<dyn Stage>>) -> Self {
        let mut by_request_key = vec![Vec::new(); KEY_SLOTS];
        let mut by_response_key = vec![Vec::new(); KEY_SLOTS];
        for (i, s) in stages.iter().enumerate() {
            for k in s.request_api_keys() {
                by_request_key[slot(*k)].push(i);
            }
            for k in s.response_api_keys() {
                // Reverse order on the way back.
                by_response_key[slot(*k)].insert(0, i);
            }
        }
        Self {
            stages,
            by_request_key,
            by_response_key,
        }
    }

    /// Names of the registered stages, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name()).collect()
    }

    /// Whether any stage wants requests of `key`.
    pub fn wants_request(&self, key: ApiKey) -> bool {
        !self.by_request_key[slot(key)].is_empty()
    }

    /// Whether any stage wants responses of `key`.
    pub fn wants_response(&self, key: ApiKey) -> bool {
        !self.by_response_key[slot(key)].is_empty()
    }

    /// Whether any stage wants the response of `key` at `version`.
    pub fn wants_response_at(&self, key: ApiKey, version: i16) -> bool {
        self.by_response_key[slot(key)]
            .iter()
            .any(|&i| self.stages[i].wants_response_version(key, version))
    }

    /// Whether a large Fetch answer at `version` can be streamed: some stage
    /// wants it, and every stage that does can take it partition by
    /// partition.
    pub fn streams_fetch(&self, version: i16) -> bool {
        let mut wanted = self.by_response_key[slot(ApiKey::Fetch)]
            .iter()
            .map(|&i| &self.stages[i])
            .filter(|s| s.wants_response_version(ApiKey::Fetch, version))
            .peekable();
        wanted.peek().is_some() && wanted.all(|s| s.streams_fetch(version))
    }

    /// Whether a stage that wants Fetch answers at `version` may change
    /// their records.
    pub fn rewrites_fetch(&self, version: i16) -> bool {
        self.by_response_key[slot(ApiKey::Fetch)]
            .iter()
            .map(|&i| &self.stages[i])
            .any(|s| s.wants_response_version(ApiKey::Fetch, version) && s.rewrites_fetch(version))
    }

    /// Whether a stage that wants Fetch answers at `version` reads their
    /// partitions' records.
    pub fn reads_fetch_partitions(&self, version: i16) -> bool {
        self.by_response_key[slot(ApiKey::Fetch)]
            .iter()
            .map(|&i| &self.stages[i])
            .any(|s| {
                s.wants_response_version(ApiKey::Fetch, version)
                    && s.reads_fetch_partitions(version)
            })
    }

    /// Runs the tail hooks of a streamed Fetch answer in order, each seeing
    /// the last one's result; `None` when no stage changed the tail.
    pub fn on_fetch_tail(&self, version: i16, tail: &[u8]) -> Result<Option<Vec<u8>>, StageError> {
        let mut out: Option<Vec<u8>> = None;
        for &i in &self.by_response_key[slot(ApiKey::Fetch)] {
            let stage = &self.stages[i];
            if !stage.wants_response_version(ApiKey::Fetch, version) {
                continue;
            }
            if let Some(t) = stage.on_fetch_tail(version, out.as_deref().unwrap_or(tail))? {
                out = Some(t);
            }
        }
        Ok(out)
    }

    /// Runs the partition hooks of a streamed Fetch answer, in response
    /// order. Each stage sees the broker's partition; of their edits, the
    /// last one's records and the first one's error code are kept.
    pub async fn on_fetch_partition(
        &self,
        session: &SessionInfo,
        answer: &FetchAnswer,
        partition: &FetchPartition,
    ) -> Result<Option<PartitionEdit>, StageError> {
        let mut edit: Option<PartitionEdit> = None;
        for &i in &self.by_response_key[slot(ApiKey::Fetch)] {
            let stage = &self.stages[i];
            if !stage.wants_response_version(ApiKey::Fetch, answer.api_version) {
                continue;
            }
            if let Some(e) = stage.on_fetch_partition(session, answer, partition).await? {
                let merged = edit.get_or_insert_with(PartitionEdit::default);
                if e.records.is_some() {
                    merged.records = e.records;
                }
                merged.error_code = merged.error_code.or(e.error_code);
            }
        }
        Ok(edit)
    }

    /// Runs the request stages for this request's api key.
    pub async fn on_request(
        &self,
        session: &SessionInfo,
        request: &mut Request,
    ) -> Result<Verdict, StageError> {
        for &i in &self.by_request_key[slot(request.api_key)] {
            match self.stages[i].on_request(session, request).await? {
                Verdict::Forward => {}
                respond => return Ok(respond),
            }
        }
        Ok(Verdict::Forward)
    }

    /// Runs the response stages for this response's api key, in reverse order.
    pub async fn on_response(
        &self,
        session: &SessionInfo,
        response: &mut Response,
    ) -> Result<(), StageError> {
        for &i in &self.by_response_key[slot(response.api_key)] {
            self.stages[i].on_response(session, response).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Probe {
        name: &'static str,
        seen: Arc<Mutex<Vec<String>>>,
    }

    #[async_trait]
    impl Stage for Probe {
        fn name(&self) -> &'static str {
            self.name
        }
        fn response_api_keys(&self) -> &[ApiKey] {
            &[ApiKey::Metadata]
        }
        async fn on_response(&self, _s: &SessionInfo, _r: &mut Response) -> Result<(), StageError> {
            self.seen.lock().expect("lock").push(self.name.to_string());
            Ok(())
        }
    }

    #[tokio::test]
    async fn responses_run_through_stages_in_reverse() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let p = Pipeline::new(vec![
            Arc::new(Probe {
                name: "a",
                seen: seen.clone(),
            }),
            Arc::new(Probe {
                name: "b",
                seen: seen.clone(),
            }),
        ]);
        assert!(p.wants_response(ApiKey::Metadata));
        assert!(!p.wants_response(ApiKey::Fetch));
        let session = SessionInfo::new(
            1,
            "127.0.0.1:1".parse().expect("addr"),
            None,
            false,
            crate::auth::Identity::anonymous(),
        );
        // Metadata v0 response: header (corr id 9), no brokers, no topics.
        let raw = bytes::Bytes::from_static(&[0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0]);
        let mut r = Response::parse(raw, ApiKey::Metadata, 0).expect("parse");
        p.on_response(&session, &mut r).await.expect("run");
        assert_eq!(*seen.lock().expect("lock"), vec!["b", "a"]);
    }

    /// A Fetch stage that streams, and rewrites records from `from` on.
    struct FetchReader {
        rewrites_from: i16,
    }

    #[async_trait]
    impl Stage for FetchReader {
        fn name(&self) -> &'static str {
            "fetch-reader"
        }
        fn response_api_keys(&self) -> &[ApiKey] {
            &[ApiKey::Fetch]
        }
        fn streams_fetch(&self, _version: i16) -> bool {
            true
        }
        fn rewrites_fetch(&self, version: i16) -> bool {
            version >= self.rewrites_from
        }
    }

    #[test]
    fn fetch_answers_count_as_rewritten_when_a_stage_that_wants_them_may_rewrite() {
        let reader = || -> Arc<dyn Stage> {
            Arc::new(FetchReader {
                rewrites_from: i16::MAX,
            })
        };
        let rewriter = || -> Arc<dyn Stage> { Arc::new(FetchReader { rewrites_from: 4 }) };
        let only_reads = Pipeline::new(vec![reader()]);
        assert!(only_reads.streams_fetch(12));
        assert!(!only_reads.rewrites_fetch(12));
        let both = Pipeline::new(vec![reader(), rewriter()]);
        assert!(both.streams_fetch(12));
        assert!(both.rewrites_fetch(12));
        assert!(!both.rewrites_fetch(3), "per version");
        assert!(!Pipeline::new(vec![]).rewrites_fetch(12));
    }
}
