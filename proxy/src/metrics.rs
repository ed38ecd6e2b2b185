//! Prometheus metrics, served at `/metrics` on the admin port.
//!
//! Latency is split in two: time the broker took (upstream) and time Custos
//! itself added, so an operator can tell which side is slow.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kafka_protocol::messages::ApiKey;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ListenerKind {
    /// The bootstrap port.
    Bootstrap,
    /// A per-broker port.
    Broker,
}

/// Label: listener kind.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// Listener kind.
    pub listener: ListenerKind,
}

/// Label: Kafka api name.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabel {
    /// Api name, e.g. `Produce`.
    pub api: String,
}

/// Label: whose fault a closed connection was.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BlameLabel {
    /// `client`, `upstream` or `internal`.
    pub blame: String,
}

/// Labels: how a client authenticated and whether it succeeded.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabel {
    /// Mechanism (`SCRAM-SHA-512`, `mtls`, …) or `unknown` for failures.
    pub method: String,
    /// `ok` or `failed`.
    pub result: String,
}

type HistogramFamily = Family<ApiLabel, Histogram, fn() -> Histogram>;

fn upstream_histogram() -> Histogram {
    // 100 µs .. ~1.6 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 15,
    ))
}

fn added_histogram() -> Histogram {
    // 5 µs .. ~80 ms: Custos's own share should sit at the bottom.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000005, 2.0, 15,
    ))
}

/// Labels: one KMS call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KmsLabel {
    /// `local` or `aws`.
    pub kms: String,
    /// `generate_data_key`, `decrypt_data_key` or `rewrap`.
    pub op: String,
    /// `ok`, `error`, `timeout` or `circuit_open`.
    pub outcome: String,
}

/// Label: why something failed.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Short reason.
    pub reason: String,
}

/// All of Custos's metrics.
pub struct Metrics {
    registry: Registry,
    /// Open client connections.
    pub connections_active: Family<ListenerLabel, Gauge>,
    /// Client connections accepted.
    pub connections_total: Family<ListenerLabel, Counter>,
    /// Client connections refused at the connection limit.
    pub connections_refused: Counter,
    /// Connections closed because of an error, by blame.
    pub connection_errors: Family<BlameLabel, Counter>,
    /// Requests received, by api.
    pub requests: Family<ApiLabel, Counter>,
    /// Client authentications, by method and result.
    pub authentications: Family<AuthLabel, Counter>,
    /// Authorization decisions: allowed.
    pub authz_allowed: Counter,
    /// Authorization decisions: denied.
    pub authz_denied: Counter,
    /// Audit records handed to the log.
    pub audit_records_total: Counter,
    /// Audit appends or flushes that failed.
    pub audit_failures: Counter,
    /// Time a response waited for its audit records (strict mode).
    pub audit_wait: Histogram,
    /// Policy reloads that took effect.
    pub policy_reloads_ok: Counter,
    /// Policy reloads refused (the previous policies stayed in force).
    pub policy_reloads_failed: Counter,
    /// Bytes received from clients.
    pub bytes_in: Counter,
    /// Bytes sent to clients.
    pub bytes_out: Counter,
    /// Time from forwarding a request to its response arriving.
    pub upstream_latency: HistogramFamily,
    /// Time Custos spent on a request and its response.
    pub added_latency: HistogramFamily,
    /// Records whose protected parts were encrypted on produce.
    pub encrypted_records_total: Counter,
    /// Fetched records revealed: plaintext.
    pub decrypted_plain_total: Counter,
    /// Fetched records revealed: masked.
    pub decrypted_masked_total: Counter,
    /// Produce partitions refused because they could not be protected.
    pub encrypt_failures: Family<ReasonLabel, Counter>,
    /// Fetch partitions withheld because their keys could not be had.
    pub decrypt_failures: Counter,
    /// Fetch answers streamed through the stages partition by partition.
    pub fetch_streamed: Counter,
    /// Partitions of streamed answers withheld because their new records
    /// were longer than the broker's.
    pub fetch_stream_no_room: Counter,
    /// Bytes moved socket to socket in the kernel (`splice.rs`).
    pub zero_copy_bytes: Counter,
    /// Leader endpoints in answers (KIP-951 hints) pointed at Custos, by api.
    pub leader_hints: Family<ApiLabel, Counter>,
    /// KMS calls, by KMS, operation and outcome.
    pub kms_calls: Family<KmsLabel, Counter>,
    /// KMS call latency.
    pub kms_latency: Histogram,
    /// Data-key cache hits (copied from the key manager at scrape time).
    pub dek_cache_hits: Gauge,
    /// Data-key cache misses (copied from the key manager at scrape time).
    pub dek_cache_misses: Gauge,
    /// The offset after the last record of the shared subject key topic
    /// applied (`encryption.subject_keys.topic`).
    pub subject_keys_offset: Gauge,
    /// Failed reads and writes of the shared subject key topic.
    pub subject_keys_failures: Counter,
    /// Catch-ups with the shared key topic's end for keys not known yet.
    pub subject_keys_catch_ups: Counter,
    /// The key manager whose cache counters are exported, once set.
    pub key_stats: std::sync::OnceLock<std::sync::Arc<custos_crypto::keys::KeyManager>>,
    next_conn_id: AtomicU64,
    /// Labels of every api, built once: the request path must not format strings.
    labels: Vec<ApiLabel>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("custos");
        let connections_active = Family::<ListenerLabel, Gauge>::default();
        let connections_total = Family::<ListenerLabel, Counter>::default();
        let connections_refused = Counter::default();
        let connection_errors = Family::<BlameLabel, Counter>::default();
        let requests = Family::<ApiLabel, Counter>::default();
        let authentications = Family::<AuthLabel, Counter>::default();
        let bytes_in = Counter::default();
        let bytes_out = Counter::default();
        let authz_allowed = Counter::default();
        let authz_denied = Counter::default();
        let policy_reloads_ok = Counter::default();
        let audit_records_total = Counter::default();
        let audit_failures = Counter::default();
        let audit_wait = added_histogram();
        registry.register(
            "audit_records",
            "Audit records handed to the audit log",
            audit_records_total.clone(),
        );
        registry.register(
            "audit_failures",
            "Audit appends or flushes that failed (data access is refused meanwhile)",
            audit_failures.clone(),
        );
        registry.register(
            "audit_wait_seconds",
            "Time a response waited for its audit records to be durable (strict mode)",
            audit_wait.clone(),
        );
        let policy_reloads_failed = Counter::default();
        registry.register(
            "authz_allowed",
            "Authorization decisions that allowed an action",
            authz_allowed.clone(),
        );
        registry.register(
            "authz_denied",
            "Authorization decisions that denied an action",
            authz_denied.clone(),
        );
        registry.register(
            "policy_reloads",
            "Policy reloads that took effect",
            policy_reloads_ok.clone(),
        );
        registry.register(
            "policy_reload_failures",
            "Policy reloads refused; the previous policies stayed in force",
            policy_reloads_failed.clone(),
        );
        let encrypted_records_total = Counter::default();
        let decrypted_plain_total = Counter::default();
        let decrypted_masked_total = Counter::default();
        let encrypt_failures = Family::<ReasonLabel, Counter>::default();
        let decrypt_failures = Counter::default();
        let fetch_streamed = Counter::default();
        let fetch_stream_no_room = Counter::default();
        let zero_copy_bytes = Counter::default();
        let leader_hints = Family::<ApiLabel, Counter>::default();
        let kms_calls = Family::<KmsLabel, Counter>::default();
        let kms_latency = upstream_histogram();
        let dek_cache_hits = Gauge::default();
        let dek_cache_misses = Gauge::default();
        let subject_keys_offset = Gauge::default();
        let subject_keys_failures = Counter::default();
        let subject_keys_catch_ups = Counter::default();
        registry.register(
            "subject_keys_topic_offset",
            "Offset after the last record of the shared subject key topic applied",
            subject_keys_offset.clone(),
        );
        registry.register(
            "subject_keys_topic_failures",
            "Failed reads and writes of the shared subject key topic",
            subject_keys_failures.clone(),
        );
        registry.register(
            "subject_keys_topic_catch_ups",
            "Catch-ups with the shared key topic's end for keys not known yet",
            subject_keys_catch_ups.clone(),
        );
        registry.register(
            "encrypted_records",
            "Produced records whose protected parts were encrypted",
            encrypted_records_total.clone(),
        );
        registry.register(
            "revealed_plaintext_records",
            "Fetched records of protected topics shown in plaintext (Decrypt allowed)",
            decrypted_plain_total.clone(),
        );
        registry.register(
            "revealed_masked_records",
            "Fetched records of protected topics shown masked",
            decrypted_masked_total.clone(),
        );
        registry.register(
            "encrypt_failures",
            "Produce partitions refused because they could not be protected, by reason",
            encrypt_failures.clone(),
        );
        registry.register(
            "decrypt_failures",
            "Fetch partitions withheld because a key could not be had",
            decrypt_failures.clone(),
        );
        registry.register(
            "fetch_streamed",
            "Fetch answers streamed through the stages partition by partition",
            fetch_streamed.clone(),
        );
        registry.register(
            "leader_hints_rewritten",
            "Leader endpoints in Produce, Fetch and share answers (KIP-951 hints) pointed at Custos, by api",
            leader_hints.clone(),
        );
        registry.register(
            "fetch_stream_no_room",
            "Partitions of streamed Fetch answers withheld because their new records did not fit",
            fetch_stream_no_room.clone(),
        );
        registry.register(
            "zero_copy_bytes",
            "Bytes of Fetch answers and large Produce requests moved socket to socket inside the kernel (splice)",
            zero_copy_bytes.clone(),
        );
        registry.register(
            "kms_calls",
            "KMS calls by KMS, operation and outcome",
            kms_calls.clone(),
        );
        registry.register(
            "kms_latency_seconds",
            "KMS call latency",
            kms_latency.clone(),
        );
        registry.register(
            "dek_cache_hits",
            "Data-key cache hits",
            dek_cache_hits.clone(),
        );
        registry.register(
            "dek_cache_misses",
            "Data-key cache misses",
            dek_cache_misses.clone(),
        );
        let upstream_latency: HistogramFamily = Family::new_with_constructor(upstream_histogram);
        let added_latency: HistogramFamily = Family::new_with_constructor(added_histogram);
        registry.register(
            "connections_active",
            "Open client connections",
            connections_active.clone(),
        );
        registry.register(
            "connections",
            "Client connections accepted",
            connections_total.clone(),
        );
        registry.register(
            "connections_refused",
            "Client connections refused at limits.max_connections",
            connections_refused.clone(),
        );
        registry.register(
            "connection_errors",
            "Connections closed by an error, by whose fault it was",
            connection_errors.clone(),
        );
        registry.register(
            "requests",
            "Kafka requests received, by api",
            requests.clone(),
        );
        registry.register(
            "authentications",
            "Client authentications, by method and result",
            authentications.clone(),
        );
        registry.register(
            "client_received_bytes",
            "Bytes received from clients",
            bytes_in.clone(),
        );
        registry.register(
            "client_sent_bytes",
            "Bytes sent to clients",
            bytes_out.clone(),
        );
        registry.register(
            "upstream_latency_seconds",
            "Time from forwarding a request to the broker's response, by api",
            upstream_latency.clone(),
        );
        registry.register(
            "proxy_added_latency_seconds",
            "Time Custos spent on a request and its response, by api",
            added_latency.clone(),
        );
        Self {
            registry,
            connections_active,
            connections_total,
            connections_refused,
            connection_errors,
            requests,
            authentications,
            authz_allowed,
            authz_denied,
            policy_reloads_ok,
            policy_reloads_failed,
            audit_records_total,
            audit_failures,
            audit_wait,
            bytes_in,
            bytes_out,
            upstream_latency,
            added_latency,
            encrypted_records_total,
            decrypted_plain_total,
            decrypted_masked_total,
            encrypt_failures,
            decrypt_failures,
            fetch_streamed,
            fetch_stream_no_room,
            zero_copy_bytes,
            leader_hints,
            kms_calls,
            kms_latency,
            dek_cache_hits,
            dek_cache_misses,
            subject_keys_offset,
            subject_keys_failures,
            subject_keys_catch_ups,
            key_stats: std::sync::OnceLock::new(),
            next_conn_id: AtomicU64::new(1),
            labels: (0..LABEL_SLOTS)
                .map(|k| ApiLabel {
                    api: ApiKey::try_from(k as i16)
                        .map(|key| format!("{key:?}"))
                        .unwrap_or_else(|_| format!("api{k}")),
                })
                .collect(),
        }
    }

    /// A fresh connection id.
    pub fn next_connection_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    fn label(&self, key: ApiKey) -> &ApiLabel {
        &self.labels[(key as i16 as usize) % LABEL_SLOTS]
    }

    /// Counts one request of `key`.
    pub fn request(&self, key: ApiKey) {
        self.requests.get_or_create(self.label(key)).inc();
    }

    /// Counts `n` leader endpoints of a `key` answer pointed at Custos.
    pub fn leader_hints(&self, key: ApiKey, n: usize) {
        self.leader_hints
            .get_or_create(self.label(key))
            .inc_by(n as u64);
    }

    /// Records the latencies of one request/response exchange.
    pub fn exchange(&self, key: ApiKey, upstream: Duration, added: Duration) {
        let label = self.label(key);
        self.upstream_latency
            .get_or_create(label)
            .observe(upstream.as_secs_f64());
        self.added_latency
            .get_or_create(label)
            .observe(added.as_secs_f64());
    }

    /// Counts one authentication attempt.
    pub fn authentication(&self, method: &str, ok: bool) {
        self.authentications
            .get_or_create(&AuthLabel {
                method: method.to_string(),
                result: if ok { "ok" } else { "failed" }.to_string(),
            })
            .inc();
    }

    /// Counts records handed to the audit log.
    pub fn audit_records(&self, n: u64) {
        self.audit_records_total.inc_by(n);
    }

    /// Counts a failed audit append.
    pub fn audit_failure(&self) {
        self.audit_failures.inc();
    }

    /// Records how long a response waited for durability.
    pub fn audit_wait(&self, d: Duration) {
        self.audit_wait.observe(d.as_secs_f64());
    }

    /// Counts one policy reload attempt.
    pub fn policy_reload(&self, ok: bool) {
        if ok {
            self.policy_reloads_ok.inc();
        } else {
            self.policy_reloads_failed.inc();
        }
    }

    /// Counts a connection closed by an error.
    pub fn connection_error(&self, blame: crate::pipeline::Blame) {
        self.connection_errors
            .get_or_create(&BlameLabel {
                blame: blame.as_str().to_string(),
            })
            .inc();
    }

    /// Counts records encrypted on produce.
    pub fn encrypted_records(&self, n: u64) {
        self.encrypted_records_total.inc_by(n);
    }

    /// Counts a produce partition refused for `reason`.
    pub fn encrypt_failure(&self, reason: &str) {
        self.encrypt_failures
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts fetched records revealed, in plaintext or masked.
    pub fn decrypted_records(&self, n: u64, plaintext: bool) {
        if plaintext {
            self.decrypted_plain_total.inc_by(n);
        } else {
            self.decrypted_masked_total.inc_by(n);
        }
    }

    /// Counts a fetch partition withheld.
    pub fn decrypt_failure(&self) {
        self.decrypt_failures.inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        if let Some(k) = self.key_stats.get() {
            let s = k.stats();
            self.dek_cache_hits.set(s.cache_hits as i64);
            self.dek_cache_misses.set(s.cache_misses as i64);
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

const LABEL_SLOTS: usize = 128;

impl custos_crypto::guarded::KmsObserver for Metrics {
    fn call(&self, kms: &str, op: &'static str, outcome: &'static str, elapsed: Duration) {
        self.kms_calls
            .get_or_create(&KmsLabel {
                kms: kms.to_string(),
                op: op.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        self.kms_latency.observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_requests_and_latencies_by_api() {
        let m = Metrics::new();
        m.request(ApiKey::Produce);
        m.request(ApiKey::Produce);
        m.exchange(
            ApiKey::Produce,
            Duration::from_millis(2),
            Duration::from_micros(30),
        );
        m.bytes_in.inc_by(100);
        m.authentication("SCRAM-SHA-512", true);
        let text = m.encode();
        assert!(
            text.contains("custos_requests_total{api=\"Produce\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("custos_upstream_latency_seconds_count{api=\"Produce\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("custos_proxy_added_latency_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains("custos_client_received_bytes_total 100"),
            "{text}"
        );
    }
}
