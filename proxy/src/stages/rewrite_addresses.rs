//! Every broker address a client sees is a Custos address.
//!
//! Metadata, FindCoordinator (single and batched), DescribeCluster, and the
//! leader hints that Produce (v10+) and Fetch (v16+) responses carry after a
//! leadership change (KIP-951) all name brokers by host and port. If one real
//! address slipped through, the client would connect to the broker directly
//! and bypass every control, so each is replaced with the proxy address of the
//! same node id, and the broker map learns the real one. A broker whose id
//! cannot be mapped is left out of the answer rather than leaked.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use kafka_protocol::messages::fetch_response::NodeEndpoint;
use kafka_protocol::messages::{ApiKey, BrokerId, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::broker_map::BrokerMap;
use crate::message::Response;
use crate::metrics::Metrics;
use crate::pipeline::{Blame, SessionInfo, Stage, StageError};
use crate::wire::{put_uvarint, Reader};

const NAME: &str = "rewrite_addresses";

/// Kafka's COORDINATOR_NOT_AVAILABLE error code.
const COORDINATOR_NOT_AVAILABLE: i16 = 15;

/// Rewrites broker addresses in responses to proxy addresses.
pub struct RewriteAddresses {
    brokers: Arc<BrokerMap>,
    metrics: Option<Arc<Metrics>>,
}

impl RewriteAddresses {
    /// A stage rewriting to the addresses of `brokers`.
    pub fn new(brokers: Arc<BrokerMap>) -> Self {
        Self {
            brokers,
            metrics: None,
        }
    }

    /// Counts the leader hints it rewrites in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Counts `n` leader hints of a `key` answer pointed at Custos.
    fn count_hints(&self, key: ApiKey, n: usize) {
        if let (Some(m), true) = (&self.metrics, n > 0) {
            m.leader_hints(key, n);
        }
    }

    /// Points one broker entry at its proxy address, learning the real one;
    /// `false` when the broker cannot be mapped (the caller drops the entry).
    fn rewrite(&self, id: BrokerId, host: &mut StrBytes, port: &mut i32) -> bool {
        match self.brokers.learn(id.0, host.as_str(), *port) {
            Some(proxy_port) => {
                *host = self.brokers.advertised_host().clone();
                *port = i32::from(proxy_port);
                true
            }
            None => false,
        }
    }

    /// Rewrites a FindCoordinator answer; an unmappable coordinator becomes
    /// COORDINATOR_NOT_AVAILABLE rather than a leaked address.
    fn rewrite_coordinator(
        &self,
        error_code: &mut i16,
        node_id: &mut BrokerId,
        host: &mut StrBytes,
        port: &mut i32,
    ) {
        if *error_code != 0 || node_id.0 < 0 || self.rewrite(*node_id, host, port) {
            return;
        }
        *error_code = COORDINATOR_NOT_AVAILABLE;
        *host = StrBytes::default();
        *port = -1;
        *node_id = BrokerId(-1);
    }
}

/// Whether a response of `key` at this version can carry node endpoints.
fn may_carry_endpoints(key: ApiKey, version: i16) -> bool {
    match key {
        ApiKey::Produce => version >= 10,
        ApiKey::Fetch => version >= 16,
        _ => true,
    }
}

#[async_trait]
impl Stage for RewriteAddresses {
    fn name(&self) -> &'static str {
        NAME
    }

    fn response_api_keys(&self) -> &[ApiKey] {
        &[
            ApiKey::Metadata,
            ApiKey::FindCoordinator,
            ApiKey::DescribeCluster,
            ApiKey::Produce,
            ApiKey::Fetch,
            ApiKey::ShareFetch,
            ApiKey::ShareAcknowledge,
        ]
    }

    fn wants_response_version(&self, key: ApiKey, version: i16) -> bool {
        may_carry_endpoints(key, version)
    }

    // A large Fetch answer's endpoints sit in its closing tagged fields, after
    // all the records: it streams, records unread, and only the tail comes here.
    fn streams_fetch(&self, version: i16) -> bool {
        may_carry_endpoints(ApiKey::Fetch, version)
    }

    fn reads_fetch_partitions(&self, _version: i16) -> bool {
        false
    }

    fn on_fetch_tail(&self, version: i16, tail: &[u8]) -> Result<Option<Vec<u8>>, StageError> {
        if !may_carry_endpoints(ApiKey::Fetch, version) {
            return Ok(None);
        }
        let bad = |e: String| StageError {
            stage: NAME,
            blame: Blame::Upstream,
            message: format!("Fetch answer's closing tagged fields: {e}"),
        };
        let mut r = Reader::new(tail, true);
        let count = r
            .uvarint("tagged field count")
            .map_err(|e| bad(e.to_string()))?;
        let mut out = Vec::with_capacity(tail.len());
        put_uvarint(&mut out, count);
        let mut changed = false;
        let mut hints = 0;
        for _ in 0..count {
            let tag = r.uvarint("tag").map_err(|e| bad(e.to_string()))?;
            let size = r.uvarint("tag size").map_err(|e| bad(e.to_string()))? as usize;
            let at = r.position();
            r.skip("tagged field", size)
                .map_err(|e| bad(e.to_string()))?;
            let data = &tail[at..at + size];
            put_uvarint(&mut out, tag);
            // Tag 0 is NodeEndpoints (KIP-951); any other goes on untouched.
            if tag != 0 {
                put_uvarint(&mut out, size as u32);
                out.extend_from_slice(data);
                continue;
            }
            let mut d = Reader::new(data, true);
            let n = d
                .array_len("node endpoints")
                .map_err(|e| bad(e.to_string()))?
                .ok_or_else(|| bad("null node endpoints".into()))?;
            let mut buf = Bytes::copy_from_slice(&data[d.position()..]);
            let mut endpoints = Vec::new();
            for _ in 0..n {
                endpoints
                    .push(NodeEndpoint::decode(&mut buf, version).map_err(|e| bad(e.to_string()))?);
            }
            endpoints.retain_mut(|n| self.rewrite(n.node_id, &mut n.host, &mut n.port));
            hints += endpoints.len();
            let mut count = Vec::with_capacity(5);
            put_uvarint(&mut count, endpoints.len() as u32 + 1);
            let mut field = bytes::BytesMut::from(&count[..]);
            for e in &endpoints {
                e.encode(&mut field, version)
                    .map_err(|e| bad(e.to_string()))?;
            }
            put_uvarint(&mut out, field.len() as u32);
            out.extend_from_slice(&field);
            changed = true;
        }
        out.extend_from_slice(&tail[r.position()..]);
        // Counted only if they will reach the client: a rewritten tail that
        // no longer fits the answer's length is dropped for padding.
        if hints > 0 && crate::wire::pad_tagged_fields(&out, tail.len()).is_some() {
            self.count_hints(ApiKey::Fetch, hints);
        }
        Ok(changed.then_some(out))
    }

    async fn on_response(
        &self,
        _session: &SessionInfo,
        response: &mut Response,
    ) -> Result<(), StageError> {
        if !may_carry_endpoints(response.api_key, response.api_version) {
            return Ok(());
        }
        let codec = |e| StageError::codec(NAME, Blame::Upstream, e);
        // Produce and Fetch answers carry endpoints only after a leader change:
        // look first, and re-encode (copying records) only when there are some.
        let has_endpoints = match response.body().map_err(codec)? {
            ResponseKind::Produce(p) => !p.node_endpoints.is_empty(),
            ResponseKind::Fetch(f) => !f.node_endpoints.is_empty(),
            ResponseKind::ShareFetch(f) => !f.node_endpoints.is_empty(),
            ResponseKind::ShareAcknowledge(a) => !a.node_endpoints.is_empty(),
            _ => true,
        };
        if !has_endpoints {
            return Ok(());
        }
        let (key, version) = (response.api_key, response.api_version);
        // Leader hints (KIP-951) pointed at Custos: the ones kept are counted.
        macro_rules! point_hints {
            ($endpoints:expr) => {{
                $endpoints.retain_mut(|n| self.rewrite(n.node_id, &mut n.host, &mut n.port));
                self.count_hints(key, $endpoints.len());
            }};
        }
        match response.body_mut().map_err(codec)? {
            ResponseKind::Metadata(m) => m
                .brokers
                .retain_mut(|b| self.rewrite(b.node_id, &mut b.host, &mut b.port)),
            ResponseKind::DescribeCluster(d) => d
                .brokers
                .retain_mut(|b| self.rewrite(b.broker_id, &mut b.host, &mut b.port)),
            ResponseKind::FindCoordinator(f) => {
                // Versions 0-3 carry one coordinator at the top level (fields of
                // other versions must stay at their defaults, or the encoder
                // refuses the body); version 4+ batches them (KIP-699).
                if version < 4 {
                    self.rewrite_coordinator(
                        &mut f.error_code,
                        &mut f.node_id,
                        &mut f.host,
                        &mut f.port,
                    );
                }
                for c in &mut f.coordinators {
                    self.rewrite_coordinator(
                        &mut c.error_code,
                        &mut c.node_id,
                        &mut c.host,
                        &mut c.port,
                    );
                }
            }
            ResponseKind::Produce(p) => point_hints!(p.node_endpoints),
            ResponseKind::Fetch(f) => point_hints!(f.node_endpoints),
            ResponseKind::ShareFetch(f) => point_hints!(f.node_endpoints),
            ResponseKind::ShareAcknowledge(a) => point_hints!(a.node_endpoints),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker_map::Routing;
    use bytes::Bytes;
    use kafka_protocol::messages::find_coordinator_response::Coordinator;
    use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
    use kafka_protocol::messages::produce_response::NodeEndpoint;
    use kafka_protocol::messages::{FindCoordinatorResponse, MetadataResponse, ProduceResponse};

    fn stage(max_broker_id: u16) -> RewriteAddresses {
        let (map, rx) = BrokerMap::new(
            "proxy.example",
            "127.0.0.1",
            Routing::PortPerBroker {
                base_port: 0,
                max_broker_id,
            },
        );
        // Listeners bound by the map are dropped with the receiver.
        drop(rx);
        RewriteAddresses::new(Arc::new(map))
    }

    fn session() -> SessionInfo {
        SessionInfo::new(
            1,
            "127.0.0.1:1".parse().expect("addr"),
            None,
            false,
            crate::auth::Identity::anonymous(),
        )
    }

    async fn run(
        s: &RewriteAddresses,
        key: ApiKey,
        version: i16,
        body: ResponseKind,
    ) -> ResponseKind {
        let raw = Response::encode_local(key, version, 42, &body).expect("encode");
        let mut r = Response::parse(raw, key, version).expect("parse");
        s.on_response(&session(), &mut r).await.expect("stage");
        let out: Bytes = r.into_bytes().expect("bytes");
        let mut back = Response::parse(out, key, version).expect("reparse");
        assert_eq!(back.correlation_id, 42);
        back.body().expect("body").clone()
    }

    fn broker(id: i32, port: i32) -> MetadataResponseBroker {
        MetadataResponseBroker::default()
            .with_node_id(BrokerId(id))
            .with_host(StrBytes::from_static_str("kafka.internal"))
            .with_port(port)
    }

    #[tokio::test]
    async fn metadata_brokers_point_at_custos_and_unmappable_ones_are_dropped() {
        let s = stage(0);
        let body = MetadataResponse::default().with_brokers(vec![broker(0, 9092), broker(7, 9093)]);
        let ResponseKind::Metadata(m) =
            run(&s, ApiKey::Metadata, 12, ResponseKind::Metadata(body)).await
        else {
            panic!("not metadata");
        };
        assert_eq!(m.brokers.len(), 1);
        assert_eq!(m.brokers[0].host.as_str(), "proxy.example");
        assert_eq!(m.brokers[0].port, 0);
        assert_eq!(s.brokers.upstream(0).map(|a| a.port), Some(9092));
    }

    #[tokio::test]
    async fn find_coordinator_old_and_batched_forms() {
        let s = stage(0);
        let old = FindCoordinatorResponse::default()
            .with_node_id(BrokerId(0))
            .with_host(StrBytes::from_static_str("kafka.internal"))
            .with_port(9092);
        let ResponseKind::FindCoordinator(f) = run(
            &s,
            ApiKey::FindCoordinator,
            3,
            ResponseKind::FindCoordinator(old),
        )
        .await
        else {
            panic!("not fc");
        };
        assert_eq!((f.host.as_str(), f.port), ("proxy.example", 0));

        let batched = FindCoordinatorResponse::default().with_coordinators(vec![
            Coordinator::default()
                .with_key(StrBytes::from_static_str("g1"))
                .with_node_id(BrokerId(0))
                .with_host(StrBytes::from_static_str("kafka.internal"))
                .with_port(9092),
            Coordinator::default()
                .with_key(StrBytes::from_static_str("g2"))
                .with_node_id(BrokerId(9))
                .with_host(StrBytes::from_static_str("kafka.internal"))
                .with_port(9099),
        ]);
        let ResponseKind::FindCoordinator(f) = run(
            &s,
            ApiKey::FindCoordinator,
            4,
            ResponseKind::FindCoordinator(batched),
        )
        .await
        else {
            panic!("not fc");
        };
        assert_eq!(f.coordinators[0].host.as_str(), "proxy.example");
        assert_eq!(f.coordinators[1].error_code, COORDINATOR_NOT_AVAILABLE);
        assert_eq!(f.coordinators[1].port, -1);
    }

    #[tokio::test]
    async fn produce_leader_hints_are_rewritten_and_plain_answers_untouched() {
        let metrics = Arc::new(Metrics::new());
        let s = stage(0).with_metrics(metrics.clone());
        let hint = ProduceResponse::default().with_node_endpoints(vec![NodeEndpoint::default()
            .with_node_id(BrokerId(0))
            .with_host(StrBytes::from_static_str("kafka.internal"))
            .with_port(9092)]);
        let ResponseKind::Produce(p) =
            run(&s, ApiKey::Produce, 11, ResponseKind::Produce(hint)).await
        else {
            panic!("not produce");
        };
        assert_eq!(p.node_endpoints[0].host.as_str(), "proxy.example");
        let text = metrics.encode();
        assert!(
            text.contains("custos_leader_hints_rewritten_total{api=\"Produce\"} 1"),
            "{text}"
        );

        let plain = Response::encode_local(
            ApiKey::Produce,
            11,
            1,
            &ResponseKind::Produce(ProduceResponse::default()),
        )
        .expect("encode");
        let mut r = Response::parse(plain.clone(), ApiKey::Produce, 11).expect("parse");
        s.on_response(&session(), &mut r).await.expect("stage");
        assert_eq!(r.into_bytes().expect("bytes").as_ptr(), plain.as_ptr());
    }

    /// A Fetch answer's closing tagged fields holding one leader endpoint.
    fn fetch_tail(host: &'static str) -> Vec<u8> {
        let endpoint = kafka_protocol::messages::fetch_response::NodeEndpoint::default()
            .with_node_id(BrokerId(0))
            .with_host(StrBytes::from_static_str(host))
            .with_port(9092);
        let mut field = bytes::BytesMut::new();
        field.extend_from_slice(&[2]); // compact array of one
        endpoint.encode(&mut field, 17).expect("encode");
        let mut tail = vec![1, 0]; // one tagged field, tag 0
        put_uvarint(&mut tail, field.len() as u32);
        tail.extend_from_slice(&field);
        tail
    }

    #[test]
    fn streamed_fetch_hints_are_counted_only_when_they_fit() {
        let metrics = Arc::new(Metrics::new());
        let s = stage(0).with_metrics(metrics.clone());
        let fetch_hints = |m: &Metrics| {
            let text = m.encode();
            text.lines()
                .find_map(|l| l.strip_prefix("custos_leader_hints_rewritten_total{api=\"Fetch\"} "))
                .map_or(0, |v| v.parse::<u64>().expect("count"))
        };
        // "proxy.example" fits where "kafka.internal.example" was.
        let long = fetch_tail("kafka.internal.example");
        let out = s
            .on_fetch_tail(17, &long)
            .expect("tail")
            .expect("rewritten");
        assert!(crate::wire::pad_tagged_fields(&out, long.len()).is_some());
        assert_eq!(fetch_hints(&metrics), 1);
        // It does not fit where "k" was: the stream drops it, so it is not counted.
        let short = fetch_tail("k");
        let out = s
            .on_fetch_tail(17, &short)
            .expect("tail")
            .expect("rewritten");
        assert!(crate::wire::pad_tagged_fields(&out, short.len()).is_none());
        assert_eq!(fetch_hints(&metrics), 1);
    }

    #[tokio::test]
    async fn share_fetch_and_acknowledge_endpoints_point_at_custos() {
        use kafka_protocol::messages::{
            share_acknowledge_response, share_fetch_response, ShareAcknowledgeResponse,
            ShareFetchResponse,
        };
        let s = stage(10);
        let f = ShareFetchResponse::default().with_node_endpoints(vec![
            share_fetch_response::NodeEndpoint::default()
                .with_node_id(BrokerId(1))
                .with_host(StrBytes::from_static_str("kafka.internal"))
                .with_port(9092),
            share_fetch_response::NodeEndpoint::default()
                .with_node_id(BrokerId(99))
                .with_host(StrBytes::from_static_str("kafka.internal"))
                .with_port(9093),
        ]);
        let ResponseKind::ShareFetch(f) =
            run(&s, ApiKey::ShareFetch, 1, ResponseKind::ShareFetch(f)).await
        else {
            panic!("not share fetch");
        };
        assert_eq!(f.node_endpoints.len(), 1, "an unmappable broker is dropped");
        assert_eq!(f.node_endpoints[0].host.as_str(), "proxy.example");
        let a = ShareAcknowledgeResponse::default().with_node_endpoints(vec![
            share_acknowledge_response::NodeEndpoint::default()
                .with_node_id(BrokerId(2))
                .with_host(StrBytes::from_static_str("kafka.internal"))
                .with_port(9092),
        ]);
        let ResponseKind::ShareAcknowledge(a) = run(
            &s,
            ApiKey::ShareAcknowledge,
            1,
            ResponseKind::ShareAcknowledge(a),
        )
        .await
        else {
            panic!("not share acknowledge");
        };
        assert_eq!(a.node_endpoints[0].host.as_str(), "proxy.example");
        assert_ne!(a.node_endpoints[0].port, 9092);
    }
}
