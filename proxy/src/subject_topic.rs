//! Per-subject keys in a compacted Kafka topic that every gateway in front of
//! the cluster shares (`encryption.subject_keys.topic`).
//!
//! With sled, each gateway has its own store: behind a load balancer, one
//! gateway could not open another's per-subject envelopes, and a shredding on
//! one left the others revealing. Here the store is a one-partition topic on
//! the cluster itself, written and read with Custos's own upstream
//! credentials (so broker ACLs can close it to everyone else). Each gateway
//! reads it whole at start, then tails it; what the records mean, and how
//! two gateways creating a subject's key at once agree on one, is in
//! `custos_crypto::subject_log`. A shredding on any gateway reaches the key
//! caches of all of them as they apply it, within a fetch round trip.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use custos_crypto::key_ref::DekId;
use custos_crypto::kms::{Kms, WrappedKey};
use custos_crypto::subject_log::{self, Applied, LogRecord, SubjectLog, NONCE_LEN};
use custos_crypto::subject_store::{
    count_by_kek, count_deks_by_kek, hex, rewrap_dek, rewrap_key, RewrapReport, ShredListener,
    ShredReceipt, StoreError, StoredDek, SubjectKey, SubjectKeys, SubjectToken,
};
use custos_crypto::SubjectTokenizer;
use kafka_protocol::messages::{
    fetch_request, list_offsets_request, produce_request, ApiKey, BrokerId, FetchRequest,
    ListOffsetsRequest, ProduceRequest, RequestKind, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::record_batch::{self, Segment};
use crate::upstream::{Conn, OwnTopic};

/// Bytes asked for per fetch.
const FETCH_BYTES: i32 = 4 * 1024 * 1024;
/// How long a fetch waits at the broker for new records.
const FETCH_WAIT_MS: i32 = 500;
/// Least time between two catch-ups for keys not known yet.
const MIN_SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// How long a stored DEK id that a catch-up did not find is answered
/// "unknown" without another catch-up.
const UNKNOWN_DEK_TTL: Duration = Duration::from_secs(600);
/// Unknown stored DEK ids remembered at most (all are forgotten beyond).
const UNKNOWN_DEKS_MAX: usize = 4096;
/// How long a write waits to see itself in the log.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);
/// Topic configs on creation: compacted (the newest record per key stays),
/// cleaned eagerly so a shredded key leaves the broker within a day.
pub const TOPIC_CONFIGS: &[(&str, &str)] = &[
    ("cleanup.policy", "compact"),
    ("min.cleanable.dirty.ratio", "0.01"),
    ("segment.ms", "3600000"),
    ("max.compaction.lag.ms", "86400000"),
    ("delete.retention.ms", "86400000"),
    ("min.insync.replicas", "1"),
];

/// The store (see the module docs).
pub struct TopicSubjectStore {
    own: OwnTopic,
    tokenizer: SubjectTokenizer,
    state: Mutex<SubjectLog>,
    /// The offset after the last record applied.
    applied: watch::Sender<i64>,
    listeners: Arc<Mutex<Vec<ShredListener>>>,
    /// Custos's producing connection to the partition leader.
    writer: tokio::sync::Mutex<Option<Conn>>,
    /// Why the tail last failed, while it is failing.
    tail_error: Mutex<Option<String>>,
    /// When a lookup of an unknown key last caught up with the log's end.
    last_sync: Mutex<Option<std::time::Instant>>,
    /// Stored DEK ids a catch-up with the log's end did not find, and when.
    unknown_deks: Mutex<HashMap<DekId, Instant>>,
    metrics: Option<Arc<Metrics>>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn topic_name(t: &str) -> TopicName {
    TopicName(StrBytes::from_string(t.to_owned()))
}

impl TopicSubjectStore {
    /// Opens the store on `own` (creating the topic if missing), reads it to
    /// its end, and keeps tailing it until `shutdown`; progress and failures
    /// go to `metrics` when given.
    pub async fn open(
        own: OwnTopic,
        token_key: &[u8],
        metrics: Option<Arc<Metrics>>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, StoreError> {
        let tokenizer = SubjectTokenizer::new(token_key)?;
        let (applied, _) = watch::channel(0);
        let store = Arc::new(Self {
            own,
            tokenizer,
            state: Mutex::new(SubjectLog::new()),
            applied,
            listeners: Arc::new(Mutex::new(Vec::new())),
            writer: tokio::sync::Mutex::new(None),
            tail_error: Mutex::new(None),
            last_sync: Mutex::new(None),
            unknown_deks: Mutex::new(HashMap::new()),
            metrics,
        });
        let (host, port) = store.own.leader().await.map_err(unavailable)?;
        let mut conn = store.own.connect(&host, port).await.map_err(unavailable)?;
        let end = store.high_watermark(&mut conn).await?;
        while store.next_offset() < end {
            let before = store.next_offset();
            store.fetch_once(&mut conn, 0).await?;
            if store.next_offset() == before {
                // Held back by a quota: wait rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        tracing::info!(topic = %store.own.topic, records = end, "subject key topic read");
        tokio::spawn(store.clone().tail(conn, shutdown));
        Ok(store)
    }

    fn next_offset(&self) -> i64 {
        self.lock().next_offset()
    }

    /// Whether a catch-up found no stored DEK `id` less than
    /// [`UNKNOWN_DEK_TTL`] ago.
    fn known_unknown(&self, id: &DekId) -> bool {
        let mut unknown = self.unknown_deks.lock().unwrap_or_else(|p| p.into_inner());
        match unknown.get(id) {
            Some(at) if at.elapsed() < UNKNOWN_DEK_TTL => true,
            Some(_) => {
                unknown.remove(id);
                false
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SubjectLog> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows the topic until `shutdown`, reconnecting after failures.
    async fn tail(self: Arc<Self>, mut conn: Conn, shutdown: CancellationToken) {
        loop {
            let r = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.fetch_once(&mut conn, FETCH_WAIT_MS) => r,
            };
            let Err(e) = r else {
                *self.tail_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                continue;
            };
            tracing::warn!(topic = %self.own.topic, error = %e, "reading the subject key topic failed; reconnecting");
            self.failed();
            *self.tail_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                let reconnect = async {
                    let (host, port) = self.own.leader().await?;
                    self.own.connect(&host, port).await
                };
                match reconnect.await {
                    Ok(c) => {
                        conn = c;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(topic = %self.own.topic, error = %e, "subject key topic still unreachable");
                    }
                }
            }
        }
    }

    /// The partition's high watermark.
    async fn high_watermark(&self, conn: &mut Conn) -> Result<i64, StoreError> {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            // read_committed would wait for transactions; there are none here.
            .with_isolation_level(0)
            .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                .with_name(topic_name(&self.own.topic))
                .with_partitions(vec![
                    list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_timestamp(-1),
                ])]);
        let ResponseKind::ListOffsets(r) = conn
            .call(ApiKey::ListOffsets, 7, RequestKind::ListOffsets(request))
            .await
            .map_err(unavailable)?
        else {
            return Err(unavailable("not a ListOffsets answer"));
        };
        let p = r
            .topics
            .first()
            .and_then(|t| t.partitions.first())
            .ok_or_else(|| unavailable("empty ListOffsets answer"))?;
        if p.error_code != 0 {
            return Err(unavailable(format!(
                "{}: ListOffsets error code {}",
                self.own.topic, p.error_code
            )));
        }
        Ok(p.offset)
    }

    /// One Fetch from the next offset; applies what came.
    async fn fetch_once(&self, conn: &mut Conn, max_wait_ms: i32) -> Result<(), StoreError> {
        let offset = self.next_offset();
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(FETCH_BYTES)
            .with_topics(vec![fetch_request::FetchTopic::default()
                .with_topic(topic_name(&self.own.topic))
                .with_partitions(vec![fetch_request::FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(FETCH_BYTES)])]);
        let ResponseKind::Fetch(f) = conn
            .call(ApiKey::Fetch, 12, RequestKind::Fetch(request))
            .await
            .map_err(unavailable)?
        else {
            return Err(unavailable("not a Fetch answer"));
        };
        let p = f
            .responses
            .first()
            .and_then(|t| t.partitions.first())
            .ok_or_else(|| unavailable("empty Fetch answer"))?;
        match p.error_code {
            0 => {}
            // OFFSET_OUT_OF_RANGE: the log start moved past us (the topic
            // was recreated or truncated); what is left is read from there.
            1 => {
                self.lock().skip_to(p.log_start_offset.max(0));
                return Ok(());
            }
            e => {
                return Err(unavailable(format!(
                    "{}: Fetch error code {e}",
                    self.own.topic
                )))
            }
        }
        let segments = match &p.records {
            Some(records) => record_batch::decode(records).map_err(|e| StoreError::Corrupt {
                token_hex: String::new(),
                why: format!("subject key topic batch: {e}"),
            })?,
            None => Vec::new(),
        };
        if segments.is_empty() {
            // Nothing at or after our offset below the high watermark: the
            // rest of the log was compacted away (or there is nothing new),
            // unless a quota held the answer back.
            if f.throttle_time_ms == 0 {
                self.lock().skip_to(p.high_watermark);
            }
            self.applied.send_replace(self.next_offset());
            return Ok(());
        }
        let mut shredded = Vec::new();
        {
            let mut state = self.lock();
            for seg in segments {
                match seg {
                    Segment::Batch(b) => {
                        for r in &b.records {
                            let at = b.header.base_offset + i64::from(r.offset_delta);
                            let Some(key) = &r.key else { continue };
                            match state.apply(at, key, r.value.as_deref()) {
                                Ok(Applied::Shredded(t)) => shredded.push(t),
                                Ok(Applied::Quiet) => {}
                                Err(e) => {
                                    tracing::error!(topic = %self.own.topic, error = %e, "skipped")
                                }
                            }
                        }
                        state.skip_to(
                            b.header.base_offset + i64::from(b.header.last_offset_delta) + 1,
                        );
                    }
                    // Control batches: only their offsets matter. A partial
                    // trailing batch is fetched again.
                    Segment::Raw(raw) => {
                        if let Some(next) = record_batch::raw_batch_end(&raw) {
                            state.skip_to(next);
                        }
                    }
                }
            }
        }
        let listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        for t in &shredded {
            for l in listeners.iter() {
                l(t);
            }
        }
        drop(listeners);
        let next = self.next_offset();
        if let Some(m) = &self.metrics {
            m.subject_keys_offset.set(next);
        }
        self.applied.send_replace(next);
        Ok(())
    }

    /// Appends `records` as one batch (all or nothing), acknowledged by every
    /// in-sync replica; returns the offset of the first.
    async fn append(&self, records: &[LogRecord]) -> Result<i64, StoreError> {
        let bytes = crate::upstream::plain_batch(
            records
                .iter()
                .map(|r| (Bytes::from(r.key.clone()), r.value.clone().map(Bytes::from)))
                .collect(),
        )
        .map_err(unavailable)?;
        let mut writer = self.writer.lock().await;
        let mut last = String::new();
        for _ in 0..3 {
            if writer.is_none() {
                let conn = async {
                    let (host, port) = self.own.leader().await?;
                    self.own.connect(&host, port).await
                };
                match tokio::time::timeout(SETTLE_TIMEOUT, conn).await {
                    Ok(Ok(c)) => *writer = Some(c),
                    Ok(Err(e)) => {
                        last = e;
                        continue;
                    }
                    Err(_) => {
                        return Err(unavailable("connecting to the partition leader timed out"))
                    }
                }
            }
            let Some(conn) = writer.as_mut() else {
                continue;
            };
            let request = ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(10_000)
                .with_topic_data(vec![produce_request::TopicProduceData::default()
                    .with_name(topic_name(&self.own.topic))
                    .with_partition_data(vec![
                        produce_request::PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(bytes.clone())),
                    ])]);
            let answer = tokio::time::timeout(
                SETTLE_TIMEOUT,
                conn.call(ApiKey::Produce, 9, RequestKind::Produce(request)),
            )
            .await;
            let part = match answer {
                Ok(Ok(ResponseKind::Produce(p))) => p
                    .responses
                    .first()
                    .and_then(|t| t.partition_responses.first())
                    .map(|p| (p.error_code, p.base_offset)),
                Ok(Ok(_)) => None,
                Ok(Err(e)) => {
                    last = e;
                    *writer = None;
                    continue;
                }
                Err(_) => {
                    last = "Produce timed out".into();
                    *writer = None;
                    continue;
                }
            };
            match part {
                Some((0, base)) => return Ok(base),
                Some((code, _)) => {
                    // A leader change or a replica shortage: reconnect, retry.
                    last = format!("Produce error code {code}");
                    *writer = None;
                }
                None => {
                    last = "empty Produce answer".into();
                    *writer = None;
                }
            }
        }
        self.failed();
        Err(unavailable(format!(
            "writing to {} failed: {last}",
            self.own.topic
        )))
    }

    fn failed(&self) {
        if let Some(m) = &self.metrics {
            m.subject_keys_failures.inc();
        }
    }

    /// Waits until the tail has applied every record before `offset`.
    async fn settle(&self, offset: i64) -> Result<(), StoreError> {
        let mut rx = self.applied.subscribe();
        let reached = tokio::time::timeout(SETTLE_TIMEOUT, async {
            rx.wait_for(|applied| *applied >= offset).await.is_ok()
        })
        .await;
        match reached {
            Ok(true) => Ok(()),
            _ => {
                let why = self
                    .tail_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .unwrap_or_else(|| "the log did not reach the write in time".into());
                Err(unavailable(why))
            }
        }
    }

    /// Waits until the tail has caught up with the log's end as of now.
    async fn sync(&self) -> Result<(), StoreError> {
        if let Some(m) = &self.metrics {
            m.subject_keys_catch_ups.inc();
        }
        let end = {
            let mut writer = self.writer.lock().await;
            if writer.is_none() {
                let (host, port) = self.own.leader().await.map_err(unavailable)?;
                *writer = Some(self.own.connect(&host, port).await.map_err(unavailable)?);
            }
            let conn = writer
                .as_mut()
                .ok_or_else(|| unavailable("no connection"))?;
            match self.high_watermark(conn).await {
                Ok(end) => end,
                Err(e) => {
                    *writer = None;
                    return Err(e);
                }
            }
        };
        self.settle(end).await
    }
}

#[async_trait]
impl SubjectKeys for TopicSubjectStore {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn token(&self, subject_id: &[u8]) -> SubjectToken {
        self.tokenizer.token_bytes(subject_id)
    }

    fn on_shred(&self, listener: ShredListener) {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(listener);
    }

    async fn current(&self, token: &SubjectToken) -> Result<Option<(u32, WrappedKey)>, StoreError> {
        Ok(self.lock().current(token))
    }

    async fn lookup(&self, token: &SubjectToken, version: u32) -> Result<SubjectKey, StoreError> {
        match self.lock().lookup(token, version) {
            SubjectKey::Unknown => {}
            known => return Ok(known),
        }
        // Written by another gateway a moment ago, perhaps: catch up once.
        // At most one catch-up per interval, so records naming keys that
        // never existed cannot turn every fetch into a round trip.
        let due = {
            let mut last = self.last_sync.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.is_none_or(|t| t.elapsed() >= MIN_SYNC_INTERVAL);
            if due {
                *last = Some(std::time::Instant::now());
            }
            due
        };
        if due {
            self.sync().await?;
        }
        Ok(self.lock().lookup(token, version))
    }

    async fn create(
        &self,
        token: &SubjectToken,
        wrapped: &WrappedKey,
        replaces: Option<u32>,
    ) -> Result<(u32, WrappedKey), StoreError> {
        for _ in 0..5 {
            // Another gateway's key may have been applied since the caller
            // looked: adding a version after it would leave the two gateways
            // on different keys for good.
            let version = {
                let state = self.lock();
                if let Some(found) = state.created_since(token, replaces) {
                    return Ok(found);
                }
                state.next_version(token)
            };
            let mut nonce = [0u8; NONCE_LEN];
            getrandom::fill(&mut nonce).map_err(unavailable)?;
            let record = subject_log::key_record(token, version, &nonce, wrapped, now_secs());
            let at = self.append(std::slice::from_ref(&record)).await?;
            self.settle(at + 1).await?;
            let (won, current) = {
                let state = self.lock();
                (
                    state.won(token, version, &nonce)
                        && matches!(state.lookup(token, version), SubjectKey::Wrapped(_)),
                    state.current(token),
                )
            };
            if won {
                return Ok((version, wrapped.clone()));
            }
            // Another gateway's key came first (or a shredding did): ours is
            // withdrawn, theirs is used.
            let withdraw = LogRecord {
                key: record.key,
                value: None,
            };
            if let Err(e) = self.append(&[withdraw]).await {
                tracing::warn!(error = %e, "could not withdraw a losing subject key record; readers ignore it");
            }
            if let Some(found) = current {
                return Ok(found);
            }
        }
        Err(unavailable(
            "no subject key could be settled after five attempts",
        ))
    }

    async fn shred_token(&self, token: &SubjectToken) -> Result<ShredReceipt, StoreError> {
        // Every version written anywhere so far must be in the marker.
        self.sync().await?;
        let at = now_secs();
        let (records, destroyed) = self.lock().shred_records(token, at);
        let first = self.append(&records).await?;
        let end = first + i64::try_from(records.len()).unwrap_or(i64::MAX);
        // Applying the marker tells this gateway's key cache too.
        self.settle(end).await?;
        Ok(ShredReceipt {
            token_hex: hex(token),
            versions_destroyed: destroyed,
            shredded_at: at,
        })
    }

    async fn rewrap_all(&self, kms: &dyn Kms) -> Result<RewrapReport, StoreError> {
        self.sync().await?;
        let mut report = RewrapReport::default();
        let all = self.lock().all_wrapped();
        for (token, version, old) in all {
            let Some(new) = rewrap_key(kms, &token, version, &old, &mut report).await else {
                continue;
            };
            let records = self
                .lock()
                .rewrap_records(&token, version, &old, &new, now_secs());
            match records {
                Some(records) => {
                    let first = self.append(&records).await?;
                    self.settle(first + i64::try_from(records.len()).unwrap_or(i64::MAX))
                        .await?;
                    report.rewrapped += 1;
                }
                None => report.skipped += 1,
            }
        }
        let deks = self.lock().all_deks();
        for (id, old) in deks {
            let Some(new) = rewrap_dek(kms, &id, &old, &mut report).await else {
                continue;
            };
            let record = subject_log::dek_record(&id, &new);
            let at = self.append(std::slice::from_ref(&record)).await?;
            self.settle(at + 1).await?;
            report.deks_rewrapped += 1;
        }
        Ok(report)
    }

    async fn report(&self) -> Result<Vec<(String, u32, u64)>, StoreError> {
        Ok(count_by_kek(self.lock().all_wrapped()))
    }

    async fn store_dek(&self, id: &DekId, dek: &StoredDek) -> Result<(), StoreError> {
        let at = self.append(&[subject_log::dek_record(id, dek)]).await?;
        self.settle(at + 1).await
    }

    async fn stored_dek(&self, id: &DekId) -> Result<Option<StoredDek>, StoreError> {
        if let Some(found) = self.lock().stored_dek(id) {
            return Ok(Some(found));
        }
        // Stored by another gateway a moment ago, perhaps. Unlike a subject
        // key, a miss catches up at once: "not found" reads as
        // undecryptable, so it must be true of the log's end, not of a
        // stale copy. Once it is, it stays true: a DEK is in the log before
        // anything is sealed under it, so an id the log's end lacks after
        // its record was read names no key (a forged or foreign envelope),
        // and asking again would only cost every fetch a round trip.
        if self.known_unknown(id) {
            return Ok(None);
        }
        self.sync().await?;
        let found = self.lock().stored_dek(id);
        if found.is_none() {
            let mut unknown = self.unknown_deks.lock().unwrap_or_else(|p| p.into_inner());
            if unknown.len() >= UNKNOWN_DEKS_MAX {
                unknown.clear();
            }
            unknown.insert(*id, Instant::now());
        }
        Ok(found)
    }

    async fn dek_report(&self) -> Result<Vec<(String, u32, u64)>, StoreError> {
        let all = self.lock().all_deks();
        Ok(count_deks_by_kek(all.iter().map(|(_, d)| d)))
    }
}
