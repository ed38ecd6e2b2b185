//! The admin HTTP server: liveness, readiness, Prometheus metrics, and the
//! audit API under `/v1/` ([`audit_api`], `docs/audit-api.yaml`).
//!
//! Kept apart from the Kafka listeners so that orchestrators and scrapers
//! never share a port with client traffic. `/healthz`, `/readyz` and
//! `/metrics` are open; every `/v1/` path needs the bearer token of
//! `admin.token_file`.

pub mod audit_api;
pub mod keys_api;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::audit_trail::Auditor;
use crate::config::AdminConfig;
use crate::metrics::Metrics;

/// What the admin endpoints report on and serve.
pub struct AdminState {
    /// Metrics to expose.
    pub metrics: Arc<Metrics>,
    /// Whether an upstream broker has answered (and shutdown has not begun).
    pub ready: Arc<AtomicBool>,
    /// The audit log (queried by `/v1/audit*`, its health in `/readyz`).
    pub auditor: Auditor,
    /// The bearer token of `/v1/`.
    pub token: audit_api::Token,
    /// One whole-log walk (verify, proof) at a time.
    heavy: tokio::sync::Semaphore,
    /// Field encryption (its subject keys serve `/v1/keys/*`), when configured.
    pub protection: Option<Arc<crate::field_rules::Protection>>,
}

impl AdminState {
    /// The admin state; reads `admin.token_file` (an unusable file is
    /// logged and keeps `/v1/` closed).
    pub fn new(
        metrics: Arc<Metrics>,
        ready: Arc<AtomicBool>,
        auditor: Auditor,
        config: &AdminConfig,
    ) -> Self {
        let token = audit_api::Token::from_config(config);
        if auditor.enabled() && matches!(token, audit_api::Token::NotConfigured) {
            tracing::warn!(
                "`audit` is configured but `admin.token_file` is not: the audit API answers 503"
            );
        }
        Self::with_token(metrics, ready, auditor, token)
    }

    /// The admin state with a given token (tests).
    pub fn with_token(
        metrics: Arc<Metrics>,
        ready: Arc<AtomicBool>,
        auditor: Auditor,
        token: audit_api::Token,
    ) -> Self {
        Self {
            metrics,
            ready,
            auditor,
            token,
            heavy: tokio::sync::Semaphore::new(1),
            protection: None,
        }
    }
}

/// Serves admin requests until `shutdown` fires.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, shutdown: CancellationToken) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&req, &state, peer).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await
            {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

/// Answers one admin request.
pub async fn handle<B>(
    req: &Request<B>,
    state: &AdminState,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == "/v1" || path.starts_with("/v1/") {
        return audit_api::handle(req, state, peer).await;
    }
    if !matches!(path, "/healthz" | "/readyz" | "/metrics") {
        return text(StatusCode::NOT_FOUND, "text/plain", "not found\n");
    }
    if req.method() != Method::GET {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET is served\n",
        );
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET"),
        );
        return r;
    }
    match path {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => readyz(state),
        _ => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.encode(),
        ),
    }
}

fn readyz(state: &AdminState) -> Response<Full<Bytes>> {
    let mut reasons = Vec::new();
    if !state.ready.load(Ordering::SeqCst) {
        reasons.push("no upstream broker has answered yet, or shutting down".to_string());
    }
    if !state.auditor.healthy() {
        reasons.push(format!(
            "audit log unhealthy: {}",
            state
                .auditor
                .failure()
                .unwrap_or_else(|| "it takes no records (closed)".into())
        ));
    }
    if reasons.is_empty() {
        text(StatusCode::OK, "text/plain", "ready\n")
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("not ready: {}\n", reasons.join("; ")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::audit_api::Token;
    use super::*;
    use crate::config::{AuditConfig, AuditMode};
    use http_body_util::BodyExt;
    use std::net::SocketAddr;
    use std::path::Path;

    const SECRET: &str = "test-token-0123456789";

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 40000))
    }

    fn state(auditor: Auditor, token: Token, ready: bool) -> AdminState {
        AdminState::with_token(
            Arc::new(Metrics::new()),
            Arc::new(AtomicBool::new(ready)),
            auditor,
            token,
        )
    }

    fn get(path: &str, token: Option<&str>) -> Request<()> {
        let mut b = Request::builder().method(Method::GET).uri(path);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(()).expect("request")
    }

    async fn body(r: Response<Full<Bytes>>) -> (StatusCode, String) {
        let status = r.status();
        let bytes = r.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    fn open_auditor(dir: &Path) -> Auditor {
        let key = dir.join("audit.key");
        custos_audit::SignerKey::generate_file(&key).expect("key");
        let cfg = AuditConfig {
            dir: dir.join("store"),
            signing_key: key,
            signing_key_kms: None,
            mode: AuditMode::Strict,
            queue_capacity: 1024,
            checkpoint_interval_ms: 50,
            checkpoint_every: 10_000,
            instance_id: Some("unit".into()),
            kafka_topic: None,
        };
        Auditor::open(&cfg, Arc::new(Metrics::new())).expect("auditor")
    }

    #[tokio::test]
    async fn open_endpoints_and_errors() {
        let s = state(Auditor::disabled(), Token::NotConfigured, true);
        let (st, b) = body(handle(&get("/healthz", None), &s, peer()).await).await;
        assert_eq!((st, b.as_str()), (StatusCode::OK, "ok\n"));
        let (st, _) = body(handle(&get("/readyz", None), &s, peer()).await).await;
        assert_eq!(st, StatusCode::OK);
        let (st, _) = body(handle(&get("/metrics", None), &s, peer()).await).await;
        assert_eq!(st, StatusCode::OK);
        let (st, _) = body(handle(&get("/nope", None), &s, peer()).await).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        let post = Request::builder()
            .method(Method::POST)
            .uri("/healthz")
            .body(())
            .expect("request");
        let r = handle(&post, &s, peer()).await;
        assert_eq!(
            r.headers().get("allow").map(|v| v.as_bytes()),
            Some(&b"GET"[..])
        );
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        let s = state(Auditor::disabled(), Token::NotConfigured, false);
        let (st, b) = body(handle(&get("/readyz", None), &s, peer()).await).await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
        assert!(b.contains("upstream"), "{b}");
    }

    #[tokio::test]
    async fn v1_without_a_configured_token_is_closed() {
        let s = state(Auditor::disabled(), Token::NotConfigured, true);
        for path in ["/v1/audit", "/v1/audit/verify", "/v1/other"] {
            let (st, b) = body(handle(&get(path, Some(SECRET)), &s, peer()).await).await;
            assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{path}");
            assert!(b.contains("admin.token_file"), "{b}");
        }
    }

    #[tokio::test]
    async fn v1_needs_the_token() {
        let s = state(Auditor::disabled(), Token::from_secret(SECRET), true);
        let r = handle(&get("/v1/audit", None), &s, peer()).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let challenge = r.headers().get("www-authenticate").expect("challenge");
        assert!(challenge.to_str().expect("ascii").starts_with("Bearer"));
        let r = handle(&get("/v1/audit", Some("wrong-token-000000000")), &s, peer()).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers().get("www-authenticate").is_some());
        // Authenticated, but no audit log configured.
        let (st, b) = body(handle(&get("/v1/audit", Some(SECRET)), &s, peer()).await).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        assert!(b.contains("audit"), "{b}");
        let (st, _) = body(handle(&get("/v1/nothing", Some(SECRET)), &s, peer()).await).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        let post = Request::builder()
            .method(Method::POST)
            .uri("/v1/audit")
            .header("authorization", format!("Bearer {SECRET}"))
            .body(())
            .expect("request");
        assert_eq!(
            handle(&post, &s, peer()).await.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn audit_api_against_a_live_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let auditor = open_auditor(dir.path());
        let record = auditor
            .record(custos_audit::EventKind::Produce)
            .with_resource(custos_audit::Resource::topic("orders").with_partition(
                0,
                Some(5),
                3,
                99,
            ));
        auditor.submit(vec![record]).await.expect("submit");
        let s = state(auditor.clone(), Token::from_secret(SECRET), true);

        let (st, b) =
            body(handle(&get("/v1/audit?topic=orders", Some(SECRET)), &s, peer()).await).await;
        assert_eq!(st, StatusCode::OK, "{b}");
        let v: serde_json::Value = serde_json::from_str(&b).expect("json");
        let recs = v["records"].as_array().expect("records");
        assert_eq!(recs.len(), 1, "{b}");
        assert_eq!(recs[0]["kind"], "produce");
        assert_eq!(recs[0]["resources"][0]["partitions"][0]["offset"], 5);
        let produce_seq = recs[0]["seq"].as_u64().expect("seq");

        // The query was recorded, with its filter and the caller.
        let (_, b) =
            body(handle(&get("/v1/audit?kind=audit_query", Some(SECRET)), &s, peer()).await).await;
        let v: serde_json::Value = serde_json::from_str(&b).expect("json");
        let q = &v["records"][0];
        assert_eq!(q["details"]["path"], "/v1/audit");
        assert_eq!(q["details"]["param.topic"], "orders");
        assert_eq!(q["client"]["addr"], "127.0.0.1:40000");
        assert!(!b.contains(SECRET));

        // A failed authentication is recorded too (without waiting).
        let r = handle(&get("/v1/audit?topic=secret-topic", None), &s, peer()).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

        let (st, b) = body(handle(&get("/v1/audit?limit=0", Some(SECRET)), &s, peer()).await).await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        assert!(b.contains("limit"), "{b}");
        let (st, _) =
            body(handle(&get("/v1/audit/verify?x=1", Some(SECRET)), &s, peer()).await).await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        let (st, _) =
            body(handle(&get("/v1/audit/proof/abc", Some(SECRET)), &s, peer()).await).await;
        assert_eq!(st, StatusCode::BAD_REQUEST);

        // Wait for a checkpoint covering the produce record, then prove it.
        let handle_ = auditor.handle().expect("handle").clone();
        handle_.checkpoint().await.expect("checkpoint");
        let (st, b) = body(
            handle(
                &get(&format!("/v1/audit/proof/{produce_seq}"), Some(SECRET)),
                &s,
                peer(),
            )
            .await,
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{b}");
        let proof = custos_audit::InclusionProof::from_json(&b).expect("proof json");
        let (_, key) = auditor.store().expect("store");
        let rec = custos_audit::verify_proof(&proof, key).expect("proof verifies");
        assert_eq!(rec.kind, custos_audit::EventKind::Produce);
        let (st, _) =
            body(handle(&get("/v1/audit/proof/999999", Some(SECRET)), &s, peer()).await).await;
        assert_eq!(st, StatusCode::NOT_FOUND);

        let (st, b) = body(
            handle(
                &get("/v1/audit/checkpoints/latest", Some(SECRET)),
                &s,
                peer(),
            )
            .await,
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{b}");
        let v: serde_json::Value = serde_json::from_str(&b).expect("json");
        assert!(v["tree_size"].as_u64().expect("tree size") > produce_seq);
        assert_eq!(v["public_key"], key.to_hex());

        let (st, b) = body(handle(&get("/v1/audit/verify", Some(SECRET)), &s, peer()).await).await;
        assert_eq!(st, StatusCode::OK, "{b}");
        let v: serde_json::Value = serde_json::from_str(&b).expect("json");
        assert_eq!(v["ok"], true, "{b}");
        assert!(v["records"].as_u64().expect("records") >= 3);

        auditor.close().await;
        let (st, b) = body(handle(&get("/readyz", None), &s, peer()).await).await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
        assert!(b.contains("audit log"), "{b}");
        // A closed log records nothing, so it answers no query either.
        let (st, _) = body(handle(&get("/v1/audit", Some(SECRET)), &s, peer()).await).await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    }
}
