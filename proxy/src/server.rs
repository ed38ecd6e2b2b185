//! Listeners, connection set-up and graceful shutdown.
//!
//! One bootstrap listener, one listener per upstream broker (opened as the
//! broker map learns brokers), the admin server, and a discovery task that
//! keeps the broker map fresh. Each accepted connection gets its own upstream
//! connection to the broker its listener stands for. On shutdown the listeners
//! close first, then sessions finish the requests they hold, up to a deadline.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use kafka_protocol::messages::api_versions_response::ApiVersion;

use crate::admin;
use crate::audit_trail::Auditor;
use crate::auth::ListenerAuth;
use crate::broker_map::{BrokerMap, NewListener, Routing};
use crate::config::{parse_host_port, Config};
use crate::handshake;
use crate::metrics::{ListenerKind, ListenerLabel, Metrics};
use crate::pipeline::{Blame, Pipeline, SessionInfo};
use crate::policy_store::PolicyStore;
use crate::session::{self, SessionCtx};
use crate::stages::{self, StageDeps};
use crate::stream::Stream;
use crate::tls::{self, UpstreamTls};
use crate::upstream;
use custos_audit::EventKind;

/// Why Custos could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A TLS file or setting is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Client authentication could not be set up.
    #[error("`listen.auth`: {0}")]
    Auth(#[from] crate::auth::AuthSetupError),
    /// Custos's own broker credentials are unusable.
    #[error("`upstream.sasl`: {0}")]
    UpstreamAuth(crate::auth::AuthSetupError),
    /// The policies or topic catalog could not be loaded.
    #[error(transparent)]
    Policies(#[from] crate::policy_store::PolicyLoadError),
    /// The audit log could not be opened.
    #[error(transparent)]
    Audit(#[from] crate::audit_trail::AuditOpenError),
    /// The encryption keys could not be set up.
    #[error("`encryption`: {0}")]
    Encryption(#[from] crate::protection::ProtectionError),
    /// A listener could not be bound.
    #[error("`{key}`: cannot listen on {addr}: {cause}")]
    Bind {
        /// Config key of the address.
        key: &'static str,
        /// Address.
        addr: String,
        /// Cause.
        cause: std::io::Error,
    },
}

/// Where a listener's connections go.
#[derive(Debug, Clone, Copy)]
enum Route {
    /// Any bootstrap server.
    Bootstrap,
    /// One broker.
    Broker(i32),
}

struct Shared {
    config: Config,
    /// Field encryption, when configured (the admin API shreds through it).
    protection: Option<Arc<crate::field_rules::Protection>>,
    /// How clients authenticate on the listeners.
    auth: Option<ListenerAuth>,
    /// The api versions the cluster last advertised to Custos itself.
    broker_versions: std::sync::RwLock<Arc<Vec<ApiVersion>>>,
    brokers: Arc<BrokerMap>,
    session: Arc<SessionCtx>,
    metrics: Arc<Metrics>,
    acceptor: Option<TlsAcceptor>,
    upstream: upstream::UpstreamSecurity,
    connections: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    tls_warnings: LogLimiter,
    auth_warnings: LogLimiter,
}

/// Lets through a few log lines per window and counts the rest, so a client
/// stuck in a retry loop cannot flood the log.
struct LogLimiter {
    per_window: u64,
    window: Duration,
    state: std::sync::Mutex<(std::time::Instant, u64, u64)>,
}

impl LogLimiter {
    fn new(per_window: u64, window: Duration) -> Self {
        Self {
            per_window,
            window,
            state: std::sync::Mutex::new((std::time::Instant::now(), 0, 0)),
        }
    }

    /// `Some(lines suppressed since the last one logged)` when this one may be logged.
    fn allow(&self) -> Option<u64> {
        let Ok(mut st) = self.state.lock() else {
            return Some(0);
        };
        let (start, logged, suppressed) = &mut *st;
        if start.elapsed() >= self.window {
            *start = std::time::Instant::now();
            *logged = 0;
        }
        if *logged < self.per_window {
            *logged += 1;
            Some(std::mem::take(suppressed))
        } else {
            *suppressed += 1;
            None
        }
    }
}

/// A configured, not yet running, Custos.
pub struct Proxy {
    shared: Arc<Shared>,
    new_listeners: tokio::sync::mpsc::UnboundedReceiver<NewListener>,
    ready: Arc<AtomicBool>,
}

impl Proxy {
    /// Prepares everything that can fail before serving (JWKS URLs are fetched here).
    pub async fn new(config: Config, shutdown: CancellationToken) -> Result<Self, StartError> {
        let (brokers, new_listeners) = BrokerMap::new(
            &config.listen.advertised_host,
            &config.listen.host,
            Routing::PortPerBroker {
                base_port: config.listen.broker_port_base,
                max_broker_id: config.listen.max_broker_id,
            },
        );
        let brokers = Arc::new(brokers);
        let metrics = Arc::new(Metrics::new());
        let auditor = match &config.audit {
            Some(a) if a.signing_key_kms.is_some() => {
                let key = crate::protection::audit_signing_key(&config).await?;
                Auditor::open_with_key(a, key, metrics.clone())?
            }
            Some(a) => Auditor::open(a, metrics.clone())?,
            None => {
                tracing::warn!("no `audit` configured: nothing is recorded");
                Auditor::disabled()
            }
        };
        let policies = match &config.authorization {
            Some(a) => Some(Arc::new(PolicyStore::load(
                a,
                metrics.clone(),
                auditor.clone(),
            )?)),
            None => {
                tracing::warn!(
                    "no `authorization` configured: every authenticated client acts with the rights of Custos itself"
                );
                None
            }
        };
        if let Some(p) = &policies {
            tokio::spawn(p.clone().watch(shutdown.clone()));
        }
        let protection = match &config.encryption {
            Some(e) => Some(
                crate::protection::open(
                    e,
                    metrics.clone(),
                    &crate::protection::Upstream::from_config(&config)?,
                    &shutdown,
                )
                .await?,
            ),
            None => None,
        };
        if let Some(p) = &protection {
            if let Some(store) = p.subjects.as_ref().filter(|s| s.kind() == "kafka") {
                // A shredding made through another gateway (or the CLI) is
                // recorded here when this gateway applies it: every gateway's
                // log shows when it stopped revealing that subject.
                let auditor = auditor.clone();
                store.on_shred(Box::new(move |token| {
                    auditor.event(
                        auditor
                            .record(custos_audit::EventKind::KeyShredding)
                            .with_detail("subject_token", custos_crypto::subject_store::hex(token))
                            .with_detail("applied_from", "subject key topic"),
                    );
                }));
            }
            if let Some(k) = p.keyring.clone() {
                tokio::spawn(crate::protection::watch_keyring(
                    k,
                    p.keys.clone(),
                    auditor.clone(),
                    Duration::from_secs(2),
                    shutdown.clone(),
                ));
            }
        }
        if protection.is_some() && policies.is_none() {
            tracing::warn!(
                "`encryption` without `authorization`: nobody may decrypt, every reader sees masks"
            );
        }
        let pipeline = Arc::new(Pipeline::new(stages::registry(&StageDeps {
            protection: protection.clone(),
            brokers: brokers.clone(),
            authorizer: policies.as_ref().map(|p| p.authorizer.clone()),
            auditor: auditor.clone(),
            audit: Arc::new(custos_audit::DiscardSink),
            metrics: metrics.clone(),
            topic_ids: Arc::new(crate::topic_ids::TopicIds::new()),
        })));
        tracing::info!(stages = ?pipeline.names(), "pipeline ready");
        let acceptor = config.listen.tls.as_ref().map(tls::acceptor).transpose()?;
        let upstream_tls = config
            .upstream
            .tls
            .as_ref()
            .map(UpstreamTls::new)
            .transpose()?;
        if let Some(sasl) = &config.upstream.sasl {
            // Read the password now: a missing secret is a start-up error, not
            // a failure on the first client connection.
            sasl.client().map_err(StartError::UpstreamAuth)?;
        }
        let upstream_security = upstream::UpstreamSecurity {
            tls: upstream_tls,
            sasl: config.upstream.sasl.clone(),
        };
        let session = Arc::new(SessionCtx {
            pipeline,
            metrics: metrics.clone(),
            max_frame_bytes: config.limits.max_frame_bytes,
            max_in_flight: config.limits.max_in_flight,
            auditor: auditor.clone(),
            fetch_stream_min_bytes: config.limits.fetch_stream_min_bytes,
            fetch_reveal_stream_min_bytes: config.limits.fetch_reveal_stream_min_bytes,
            zero_copy: config.limits.zero_copy,
            fetch_lanes: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        });
        let connections = Arc::new(Semaphore::new(config.limits.max_connections));
        let auth = match &config.listen.auth {
            Some(a) => Some(ListenerAuth::from_config(a).await?),
            None => None,
        };
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                protection,
                auth,
                broker_versions: std::sync::RwLock::new(Arc::new(Vec::new())),
                brokers,
                session,
                metrics,
                acceptor,
                upstream: upstream_security,
                connections,
                tracker: TaskTracker::new(),
                shutdown,
                tls_warnings: LogLimiter::new(5, Duration::from_secs(10)),
                auth_warnings: LogLimiter::new(5, Duration::from_secs(10)),
            }),
            new_listeners,
            ready: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Serves until the shutdown token fires, then drains.
    pub async fn run(mut self) -> Result<(), StartError> {
        let s = self.shared.clone();
        let cfg = &s.config;
        let bootstrap_addr = format!("{}:{}", cfg.listen.host, cfg.listen.bootstrap_port);
        let bootstrap =
            TcpListener::bind(&bootstrap_addr)
                .await
                .map_err(|cause| StartError::Bind {
                    key: "listen.bootstrap_port",
                    addr: bootstrap_addr.clone(),
                    cause,
                })?;
        let admin_listener =
            TcpListener::bind(cfg.admin.listen)
                .await
                .map_err(|cause| StartError::Bind {
                    key: "admin.listen",
                    addr: cfg.admin.listen.to_string(),
                    cause,
                })?;
        tracing::info!(bootstrap = %bootstrap_addr, admin = %cfg.admin.listen, "listening");
        s.session.auditor.event(
            s.session
                .auditor
                .record(EventKind::Start)
                .with_detail("version", env!("CARGO_PKG_VERSION"))
                .with_detail("bootstrap", bootstrap_addr.clone())
                .with_detail("authorization", cfg.authorization.is_some().to_string()),
        );

        let mut admin_state = admin::AdminState::new(
            s.metrics.clone(),
            self.ready.clone(),
            s.session.auditor.clone(),
            &cfg.admin,
        );
        admin_state.protection = s.protection.clone();
        let admin_state = Arc::new(admin_state);
        let admin_task = tokio::spawn(admin::serve(
            admin_listener,
            admin_state,
            s.shutdown.clone(),
        ));
        let discovery = tokio::spawn(discover(s.clone(), self.ready.clone()));
        if let (Some(a), Some(topic)) = (
            &cfg.audit,
            cfg.audit.as_ref().and_then(|a| a.kafka_topic.clone()),
        ) {
            let shipper = crate::audit_ship::Shipper {
                auditor: s.session.auditor.clone(),
                topic,
                servers: cfg
                    .upstream
                    .bootstrap_servers
                    .iter()
                    .filter_map(|b| parse_host_port(b).ok())
                    .collect(),
                security: s.upstream.clone(),
                timeout: Duration::from_millis(cfg.upstream.connect_timeout_ms),
                position_file: std::path::PathBuf::from(format!(
                    "{}.kafka-position",
                    a.dir.display()
                )),
            };
            tokio::spawn(shipper.run(s.shutdown.clone()));
        }
        tokio::spawn(accept_loop(
            s.clone(),
            bootstrap,
            Route::Bootstrap,
            ListenerKind::Bootstrap,
        ));

        loop {
            tokio::select! {
                _ = s.shutdown.cancelled() => break,
                Some(n) = self.new_listeners.recv() => {
                    match TcpListener::from_std(n.listener) {
                        Ok(l) => {
                            tracing::info!(broker_id = n.broker_id, addr = ?l.local_addr().ok(), "broker listener open");
                            tokio::spawn(accept_loop(s.clone(), l, Route::Broker(n.broker_id), ListenerKind::Broker));
                        }
                        Err(e) => tracing::error!(broker_id = n.broker_id, error = %e, "cannot serve broker listener"),
                    }
                }
            }
        }

        self.ready.store(false, Ordering::SeqCst);
        discovery.abort();
        s.tracker.close();
        let open = s.tracker.len();
        let drain = Duration::from_millis(cfg.shutdown.drain_timeout_ms);
        tracing::info!(
            connections = open,
            drain_timeout_ms = cfg.shutdown.drain_timeout_ms,
            "shutting down: draining in-flight requests"
        );
        if tokio::time::timeout(drain, s.tracker.wait()).await.is_err() {
            tracing::warn!(
                connections = s.tracker.len(),
                "drain timeout reached; closing remaining connections"
            );
        }
        admin_task.abort();
        let auditor = &s.session.auditor;
        auditor.event(
            auditor
                .record(EventKind::Stop)
                .with_detail("connections_left", s.tracker.len().to_string()),
        );
        auditor.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Keeps the broker map fresh; the proxy is ready once a broker answered.
async fn discover(s: Arc<Shared>, ready: Arc<AtomicBool>) {
    let timeout = Duration::from_millis(s.config.upstream.connect_timeout_ms);
    let refresh = Duration::from_millis(s.config.upstream.metadata_refresh_ms);
    let servers: Vec<(String, u16)> = s
        .config
        .upstream
        .bootstrap_servers
        .iter()
        .filter_map(|b| parse_host_port(b).ok())
        .collect();
    let mut warned = false;
    loop {
        let mut ok = false;
        let mut last_error = String::new();
        // Prefer brokers already known (the bootstrap list may be a subset).
        let mut candidates: Vec<(String, u16)> = s
            .brokers
            .brokers()
            .into_iter()
            .map(|(_, a)| (a.host, a.port))
            .collect();
        candidates.extend(servers.iter().cloned());
        for (host, port) in &candidates {
            match upstream::fetch_cluster(host, *port, &s.upstream, timeout).await {
                Ok(info) => {
                    for b in &info.brokers {
                        s.brokers.learn(b.id, &b.host, b.port);
                    }
                    if let Ok(mut v) = s.broker_versions.write() {
                        *v = Arc::new(info.api_versions);
                    }
                    ok = true;
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "broker list refresh failed");
                    last_error = e.to_string();
                }
            }
        }
        if ok {
            if !ready.swap(true, Ordering::SeqCst) {
                tracing::info!(
                    brokers = s.brokers.brokers().len(),
                    "upstream cluster reachable; ready"
                );
            }
            warned = false;
        } else if !warned {
            tracing::warn!(servers = ?s.config.upstream.bootstrap_servers, error = %last_error, "no upstream broker reachable; retrying");
            warned = true;
        }
        let wait = if ok { refresh } else { Duration::from_secs(1) };
        tokio::select! {
            _ = s.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn accept_loop(s: Arc<Shared>, listener: TcpListener, route: Route, kind: ListenerKind) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = s.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (tcp, addr) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(10);
                a
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = s.connections.clone().try_acquire_owned() else {
            s.metrics.connections_refused.inc();
            tracing::warn!(client = %addr, limit = s.config.limits.max_connections, "connection limit reached; closing new connection");
            drop(tcp);
            continue;
        };
        let s2 = s.clone();
        s.tracker.spawn(async move {
            let label = ListenerLabel { listener: kind };
            s2.metrics.connections_total.get_or_create(&label).inc();
            s2.metrics.connections_active.get_or_create(&label).inc();
            serve_connection(&s2, tcp, addr, route).await;
            s2.metrics.connections_active.get_or_create(&label).dec();
            drop(permit);
        });
    }
}

/// Socket options of an accepted client connection: no Nagle delay, and a
/// send buffer of `send_buffer` bytes (0 leaves it to the kernel's autotuning).
fn tune_client_socket(tcp: &TcpStream, send_buffer: usize, addr: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    // Measured, not derived: with 1 MiB, pass-through consume used about
    // 40 % less of Custos's CPU than with the kernel's autotuning (which on
    // loopback starts at tcp_wmem's maximum, 4 MiB) or 4 MiB set
    // (BENCHMARKS.md, run AD).
    if send_buffer > 0 {
        if let Err(e) = rustix::net::sockopt::set_socket_send_buffer_size(tcp, send_buffer) {
            tracing::debug!(client = %addr, error = %e, "cannot set the client socket's send buffer");
        }
    }
}

async fn serve_connection(s: &Shared, tcp: TcpStream, addr: SocketAddr, route: Route) {
    tune_client_socket(&tcp, s.config.limits.client_send_buffer_bytes, addr);
    let id = s.metrics.next_connection_id();
    let broker_id = match route {
        Route::Bootstrap => None,
        Route::Broker(b) => Some(b),
    };
    let timeout = Duration::from_millis(s.config.upstream.connect_timeout_ms);

    let client = match &s.acceptor {
        None => Stream::Plain(tcp),
        Some(acceptor) => match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
            Ok(Ok(t)) => Stream::ServerTls(Box::new(t)),
            Ok(Err(e)) => {
                s.metrics.connection_error(Blame::Client);
                // A misconfigured client retries every few milliseconds: warn
                // a few times a minute, count the rest.
                if let Some(suppressed) = s.tls_warnings.allow() {
                    tracing::warn!(conn = id, client = %addr, error = %e, suppressed, "client TLS handshake failed");
                }
                return;
            }
            Err(_) => {
                s.metrics.connection_error(Blame::Client);
                if let Some(suppressed) = s.tls_warnings.allow() {
                    tracing::warn!(conn = id, client = %addr, suppressed, "client TLS handshake timed out");
                }
                return;
            }
        },
    };
    let tls = matches!(client, Stream::ServerTls(_));
    let mut client = client;
    let identity = match authenticate_client(s, &mut client).await {
        Ok(identity) => {
            if s.auth.is_some() {
                s.metrics.authentication(&identity.method.to_string(), true);
                tracing::debug!(conn = id, client = %addr, method = %identity.method, "client authenticated");
            }
            identity
        }
        Err(e) => {
            if e.routine {
                tracing::debug!(conn = id, client = %addr, error = %e, "client left during authentication");
            } else {
                s.metrics.authentication("unknown", false);
                s.metrics.connection_error(e.blame);
                let auditor = &s.session.auditor;
                auditor.event(
                    auditor
                        .record(EventKind::Authorization)
                        .with_action("Authenticate")
                        .with_client(addr.to_string(), None)
                        .with_error(None, custos_audit::Blame::Client, e.message.clone()),
                );
                // Clients retry failed logins quickly: a few lines per window.
                if let Some(suppressed) = s.auth_warnings.allow() {
                    tracing::warn!(conn = id, client = %addr, blame = e.blame.as_str(), error = %e, suppressed, "authentication failed; connection closed");
                }
            }
            return;
        }
    };

    let upstream = match connect_upstream(s, route, id, timeout).await {
        Ok(u) => u,
        Err(e) => {
            s.metrics.connection_error(Blame::Upstream);
            tracing::warn!(conn = id, client = %addr, broker = ?broker_id, error = %e, "cannot reach upstream broker; closing client connection");
            return;
        }
    };
    let info = SessionInfo::new(id, addr, broker_id, tls, identity);
    tracing::debug!(conn = id, client = %addr, broker = ?broker_id, tls, "session open");
    match session::run(
        client,
        upstream,
        info,
        s.session.clone(),
        s.shutdown.clone(),
    )
    .await
    {
        Ok(()) => tracing::debug!(conn = id, client = %addr, "session closed"),
        Err(e) if e.routine => {
            tracing::debug!(conn = id, client = %addr, broker = ?broker_id, error = %e, "connection closed")
        }
        Err(e) => {
            s.metrics.connection_error(e.blame);
            tracing::warn!(conn = id, client = %addr, broker = ?broker_id, blame = e.blame.as_str(), error = %e, "connection closed");
        }
    }
}

/// Establishes who the client is before anything is forwarded: its mapped
/// certificate (mTLS), then, where SASL is on, the SASL exchange.
async fn authenticate_client(
    s: &Shared,
    client: &mut Stream,
) -> Result<crate::auth::Identity, session::SessionError> {
    let Some(auth) = &s.auth else {
        return Ok(crate::auth::Identity::anonymous());
    };
    let mut identity = crate::auth::Identity::anonymous();
    if let (Some(mapper), Stream::ServerTls(t)) = (&auth.mtls, &*client) {
        if let Some(cert) = t.get_ref().1.peer_certificates().and_then(|c| c.first()) {
            identity = mapper.map(cert).map_err(|e| session::SessionError {
                blame: Blame::Client,
                message: format!("client certificate maps to no principal: {e}"),
                routine: false,
            })?;
        }
    }
    if let Some(sasl) = &auth.sasl {
        let mut versions = s
            .broker_versions
            .read()
            .map(|v| v.clone())
            .unwrap_or_default();
        if s.config.name_based() {
            let mut capped = versions.to_vec();
            crate::stages::api_versions::cap_name_based(&mut capped);
            versions = Arc::new(capped);
        }
        let run = handshake::authenticate(client, sasl, &versions, s.config.limits.max_frame_bytes);
        identity = tokio::time::timeout(handshake::AUTH_TIMEOUT, run)
            .await
            .map_err(|_| session::SessionError {
                blame: Blame::Client,
                message: "authentication did not finish in time".into(),
                routine: false,
            })??;
    }
    Ok(identity)
}

async fn connect_upstream(
    s: &Shared,
    route: Route,
    conn_id: u64,
    timeout: Duration,
) -> Result<Stream, String> {
    match route {
        Route::Broker(id) => {
            let a = s
                .brokers
                .upstream(id)
                .ok_or_else(|| format!("broker {id} is not known"))?;
            upstream::connect(&a.host, a.port, &s.upstream, timeout)
                .await
                .map_err(|e| e.to_string())
        }
        Route::Bootstrap => {
            // Spread bootstrap connections over the configured servers and
            // fall through to the next when one is down.
            let servers = &s.config.upstream.bootstrap_servers;
            let start = conn_id as usize % servers.len().max(1);
            let mut last = String::from("no bootstrap servers configured");
            for i in 0..servers.len() {
                let Ok((host, port)) = parse_host_port(&servers[(start + i) % servers.len()])
                else {
                    continue;
                };
                match upstream::connect(&host, port, &s.upstream, timeout).await {
                    Ok(st) => return Ok(st),
                    Err(e) => last = e.to_string(),
                }
            }
            Err(last)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn client_sockets_get_the_send_buffer_asked_for_or_the_kernels() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let mut sizes = Vec::new();
        for asked in [1usize << 20, 0] {
            let _client = TcpStream::connect(addr).await.expect("connect");
            let (tcp, peer) = l.accept().await.expect("accept");
            let before = rustix::net::sockopt::socket_send_buffer_size(&tcp).expect("get");
            tune_client_socket(&tcp, asked, peer);
            assert!(tcp.nodelay().expect("nodelay"));
            let after = rustix::net::sockopt::socket_send_buffer_size(&tcp).expect("get");
            sizes.push((before, after));
        }
        // Linux reports twice what was set (room for its bookkeeping); an
        // autotuned loopback socket starts at tcp_wmem's maximum (4 MiB here).
        assert_eq!(sizes[0].1, 2 << 20, "1 MiB asked: {:?}", sizes[0]);
        assert_eq!(sizes[1].0, sizes[1].1, "0 leaves the kernel's size");
    }

    #[test]
    fn log_limiter_lets_a_few_through_and_counts_the_rest() {
        let l = LogLimiter::new(2, Duration::from_millis(50));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        // A new window reports what was suppressed.
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(l.allow(), Some(2));
    }
}
