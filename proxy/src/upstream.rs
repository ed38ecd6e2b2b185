//! Connections to the brokers, and the broker list Custos learns on its own.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
    RequestHeader, RequestKind, ResponseHeader, ResponseKind, SaslAuthenticateRequest,
    SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::net::TcpStream;

use crate::auth::client::ClientStep;
use crate::auth::UpstreamSaslConfig;
use crate::frame::{read_one, write_frame};
use crate::stream::Stream;
use crate::tls::UpstreamTls;

/// Why a broker could not be reached or understood.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// TCP connect or TLS handshake did not finish in time.
    #[error("connecting to {0} timed out")]
    Timeout(String),
    /// TCP connect failed.
    #[error("cannot connect to {addr}: {cause}")]
    Connect {
        /// Broker address.
        addr: String,
        /// Cause.
        cause: std::io::Error,
    },
    /// TLS handshake failed.
    #[error("TLS to {addr} failed: {why}")]
    Tls {
        /// Broker address.
        addr: String,
        /// Cause.
        why: String,
    },
    /// Custos could not log in to the broker.
    #[error("SASL login to {addr} failed: {why}")]
    Auth {
        /// Broker address.
        addr: String,
        /// Cause (never the password).
        why: String,
    },
    /// The broker's answer was not what Kafka sends.
    #[error("broker {addr} answered badly: {why}")]
    Protocol {
        /// Broker address.
        addr: String,
        /// Cause.
        why: String,
    },
}

/// How Custos secures and authenticates its own connections to brokers.
#[derive(Clone, Default)]
pub struct UpstreamSecurity {
    /// TLS towards brokers.
    pub tls: Option<UpstreamTls>,
    /// Custos's own SASL login.
    pub sasl: Option<UpstreamSaslConfig>,
}

/// Logs Custos in to a broker with its own credentials (SaslHandshake v1,
/// then SaslAuthenticate v2 until the client side is done).
async fn sasl_login(
    stream: &mut Stream,
    cfg: &UpstreamSaslConfig,
    addr: &str,
) -> Result<(), UpstreamError> {
    let auth = |why: String| UpstreamError::Auth {
        addr: addr.to_string(),
        why,
    };
    let io = |e: std::io::Error| auth(e.to_string());
    /// SASL answers are small; anything larger is not a broker talking SASL.
    const SASL_MAX_FRAME: usize = 1 << 20;
    let mut client = cfg.client().map_err(|e| auth(e.to_string()))?;
    let hs = request_frame(
        ApiKey::SaslHandshake,
        1,
        1,
        &RequestKind::SaslHandshake(
            SaslHandshakeRequest::default()
                .with_mechanism(StrBytes::from_static_str(client.mechanism())),
        ),
    )
    .map_err(&auth)?;
    write_frame(stream, &hs).await.map_err(io)?;
    let mut body = read_one(stream, SASL_MAX_FRAME)
        .await
        .map_err(|e| auth(e.to_string()))?;
    ResponseHeader::decode(&mut body, ApiKey::SaslHandshake.response_header_version(1))
        .map_err(|e| auth(e.to_string()))?;
    let hs = SaslHandshakeResponse::decode(&mut body, 1).map_err(|e| auth(e.to_string()))?;
    if hs.error_code != 0 {
        let offered: Vec<&str> = hs.mechanisms.iter().map(|m| m.as_str()).collect();
        return Err(auth(format!(
            "broker refused mechanism {} (error {}; it offers {offered:?})",
            client.mechanism(),
            hs.error_code
        )));
    }
    let mut out = client.initial().map_err(|e| auth(e.to_string()))?;
    for corr in 2..10 {
        let req = request_frame(
            ApiKey::SaslAuthenticate,
            2,
            corr,
            &RequestKind::SaslAuthenticate(
                SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(out)),
            ),
        )
        .map_err(&auth)?;
        write_frame(stream, &req).await.map_err(io)?;
        let mut body = read_one(stream, SASL_MAX_FRAME)
            .await
            .map_err(|e| auth(e.to_string()))?;
        ResponseHeader::decode(
            &mut body,
            ApiKey::SaslAuthenticate.response_header_version(2),
        )
        .map_err(|e| auth(e.to_string()))?;
        let r = SaslAuthenticateResponse::decode(&mut body, 2).map_err(|e| auth(e.to_string()))?;
        if r.error_code != 0 {
            return Err(auth(format!(
                "broker refused Custos's credentials (error {}): {}",
                r.error_code,
                r.error_message.as_ref().map(|m| m.as_str()).unwrap_or("")
            )));
        }
        match client
            .step(&r.auth_bytes)
            .map_err(|e| auth(e.to_string()))?
        {
            ClientStep::Send(next) => out = next,
            ClientStep::Done => return Ok(()),
        }
    }
    Err(auth("SASL exchange did not finish".into()))
}

/// Opens a connection (TLS and SASL login, if configured) to `host:port`.
pub async fn connect(
    host: &str,
    port: u16,
    security: &UpstreamSecurity,
    timeout: Duration,
) -> Result<Stream, UpstreamError> {
    let tls = security.tls.as_ref();
    let addr = format!("{host}:{port}");
    let fut = async {
        let tcp =
            TcpStream::connect((host, port))
                .await
                .map_err(|cause| UpstreamError::Connect {
                    addr: addr.clone(),
                    cause,
                })?;
        // Kafka traffic is request/response: never wait to fill a segment.
        let _ = tcp.set_nodelay(true);
        match tls {
            None => Ok(Stream::Plain(tcp)),
            Some(t) => {
                let name = t.server_name(host).map_err(|e| UpstreamError::Tls {
                    addr: addr.clone(),
                    why: e.to_string(),
                })?;
                let s = t
                    .connector()
                    .connect(name, tcp)
                    .await
                    .map_err(|e| UpstreamError::Tls {
                        addr: addr.clone(),
                        why: e.to_string(),
                    })?;
                Ok(Stream::ClientTls(Box::new(s)))
            }
        }
    };
    let fut = async {
        let mut stream = fut.await?;
        if let Some(sasl) = &security.sasl {
            sasl_login(&mut stream, sasl, &addr).await?;
        }
        Ok(stream)
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| UpstreamError::Timeout(addr.clone()))?
}

/// A broker as the cluster describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    /// Node id.
    pub id: i32,
    /// Advertised host.
    pub host: String,
    /// Advertised port.
    pub port: i32,
}

const METADATA_VERSION: i16 = 12;
const API_VERSIONS_VERSION: i16 = 3;
/// Cap on the discovery answers (a broker list, api versions).
const METADATA_MAX_FRAME: usize = 64 * 1024 * 1024;

/// What one broker told Custos about the cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterInfo {
    /// Every broker.
    pub brokers: Vec<BrokerInfo>,
    /// The apis and versions the answering broker supports.
    pub api_versions: Vec<ApiVersion>,
}

fn request_frame(
    key: ApiKey,
    version: i16,
    corr: i32,
    body: &RequestKind,
) -> Result<Bytes, String> {
    let mut frame = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(corr)
        .with_client_id(Some(StrBytes::from_static_str("custos")))
        .encode(&mut frame, key.request_header_version(version))
        .map_err(|e| e.to_string())?;
    body.encode(&mut frame, version)
        .map_err(|e| e.to_string())?;
    Ok(frame.freeze())
}

/// Asks the broker at `host:port` for its api versions and the cluster's brokers.
pub async fn fetch_cluster(
    host: &str,
    port: u16,
    security: &UpstreamSecurity,
    timeout: Duration,
) -> Result<ClusterInfo, UpstreamError> {
    let addr = format!("{host}:{port}");
    let proto = |why: String| UpstreamError::Protocol {
        addr: addr.clone(),
        why,
    };
    let stream = connect(host, port, security, timeout).await?;
    let (r, mut w) = tokio::io::split(stream);
    let api_versions = request_frame(
        ApiKey::ApiVersions,
        API_VERSIONS_VERSION,
        1,
        &RequestKind::ApiVersions(
            ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str("custos"))
                .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION"))),
        ),
    )
    .map_err(&proto)?;
    // An empty topic list asks for brokers only.
    let metadata = request_frame(
        ApiKey::Metadata,
        METADATA_VERSION,
        2,
        &RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![]))),
    )
    .map_err(&proto)?;
    let exchange = async {
        write_frame(&mut w, &api_versions)
            .await
            .map_err(|e| proto(e.to_string()))?;
        write_frame(&mut w, &metadata)
            .await
            .map_err(|e| proto(e.to_string()))?;
        let mut r = r;
        let mut body = read_one(&mut r, METADATA_MAX_FRAME)
            .await
            .map_err(|e| proto(e.to_string()))?;
        ResponseHeader::decode(
            &mut body,
            ApiKey::ApiVersions.response_header_version(API_VERSIONS_VERSION),
        )
        .map_err(|e| proto(e.to_string()))?;
        let av = ApiVersionsResponse::decode(&mut body, API_VERSIONS_VERSION)
            .map_err(|e| proto(e.to_string()))?;
        if av.error_code != 0 {
            return Err(proto(format!("ApiVersions error code {}", av.error_code)));
        }
        let mut body = read_one(&mut r, METADATA_MAX_FRAME)
            .await
            .map_err(|e| proto(e.to_string()))?;
        let header = ResponseHeader::decode(
            &mut body,
            ApiKey::Metadata.response_header_version(METADATA_VERSION),
        )
        .map_err(|e| proto(e.to_string()))?;
        if header.correlation_id != 2 {
            return Err(proto(format!(
                "unexpected correlation id {}",
                header.correlation_id
            )));
        }
        let resp = MetadataResponse::decode(&mut body, METADATA_VERSION)
            .map_err(|e| proto(e.to_string()))?;
        Ok(ClusterInfo {
            brokers: resp
                .brokers
                .into_iter()
                .map(|b| BrokerInfo {
                    id: b.node_id.0,
                    host: b.host.to_string(),
                    port: b.port,
                })
                .collect(),
            api_versions: av.api_keys,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| UpstreamError::Timeout(addr.clone()))?
}

/// A connection of Custos's own to a broker (not a client's): one request
/// at a time, for the audit shipper and the key report.
pub struct Conn {
    stream: Stream,
    corr: i32,
    client_id: &'static str,
}

/// Largest answer a [`Conn`] reads from the broker.
const CONN_MAX_FRAME: usize = 64 * 1024 * 1024;

impl Conn {
    /// Connects (TLS and SASL login as configured) to `host:port`.
    pub async fn open(
        host: &str,
        port: u16,
        security: &UpstreamSecurity,
        timeout: Duration,
        client_id: &'static str,
    ) -> Result<Conn, String> {
        let stream = connect(host, port, security, timeout)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Conn {
            stream,
            corr: 0,
            client_id,
        })
    }

    /// Sends one request and reads its answer.
    pub async fn call(
        &mut self,
        key: ApiKey,
        version: i16,
        body: RequestKind,
    ) -> Result<ResponseKind, String> {
        self.corr += 1;
        let mut frame = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.corr)
            .with_client_id(Some(StrBytes::from_static_str(self.client_id)))
            .encode(&mut frame, key.request_header_version(version))
            .map_err(|e| e.to_string())?;
        body.encode(&mut frame, version)
            .map_err(|e| e.to_string())?;
        write_frame(&mut self.stream, &frame.freeze())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = read_one(&mut self.stream, CONN_MAX_FRAME)
            .await
            .map_err(|e| e.to_string())?;
        let header = ResponseHeader::decode(&mut answer, key.response_header_version(version))
            .map_err(|e| e.to_string())?;
        if header.correlation_id != self.corr {
            return Err(format!(
                "answer to correlation id {}",
                header.correlation_id
            ));
        }
        ResponseKind::decode(key, &mut answer, version).map_err(|e| e.to_string())
    }
}

/// A topic Custos keeps for itself (the audit copy, the shared subject key
/// store): where to find it, and how to create it when it is missing.
#[derive(Clone)]
pub struct OwnTopic {
    /// Bootstrap brokers.
    pub servers: Vec<(String, u16)>,
    /// Custos's own TLS/SASL towards the brokers.
    pub security: UpstreamSecurity,
    /// Connect timeout.
    pub timeout: Duration,
    /// The topic (one partition).
    pub topic: String,
    /// Replication factor when creating it (-1: the broker's default).
    pub replication_factor: i16,
    /// Topic configs when creating it.
    pub configs: Vec<(String, String)>,
    /// Client id on Custos's connections for it.
    pub client_id: &'static str,
}

impl OwnTopic {
    /// Connects to `host:port`.
    pub async fn connect(&self, host: &str, port: u16) -> Result<Conn, String> {
        Conn::open(host, port, &self.security, self.timeout, self.client_id).await
    }

    /// The leader of partition 0, creating the topic if it is missing.
    pub async fn leader(&self) -> Result<(String, u16), String> {
        use kafka_protocol::messages::{create_topics_request, metadata_request};
        use kafka_protocol::messages::{CreateTopicsRequest, TopicName};
        let name = || TopicName(StrBytes::from_string(self.topic.clone()));
        let mut last = String::from("no bootstrap server");
        for (host, port) in &self.servers {
            let mut conn = match self.connect(host, *port).await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            for _ in 0..20 {
                let md = conn
                    .call(
                        ApiKey::Metadata,
                        12,
                        RequestKind::Metadata(
                            MetadataRequest::default()
                                .with_topics(Some(vec![
                                    metadata_request::MetadataRequestTopic::default()
                                        .with_name(Some(name())),
                                ]))
                                .with_allow_auto_topic_creation(false),
                        ),
                    )
                    .await?;
                let ResponseKind::Metadata(md) = md else {
                    return Err("not a Metadata answer".into());
                };
                let topic = md.topics.first().ok_or("empty Metadata answer")?;
                match topic.error_code {
                    0 => {
                        if let Some(p) = topic.partitions.iter().find(|p| p.partition_index == 0) {
                            if let Some(b) = md.brokers.iter().find(|b| b.node_id == p.leader_id) {
                                let port = u16::try_from(b.port).map_err(|e| e.to_string())?;
                                return Ok((b.host.to_string(), port));
                            }
                        }
                    }
                    // UNKNOWN_TOPIC_OR_PARTITION
                    3 => {
                        let configs = self
                            .configs
                            .iter()
                            .map(|(k, v)| {
                                create_topics_request::CreatableTopicConfig::default()
                                    .with_name(StrBytes::from_string(k.clone()))
                                    .with_value(Some(StrBytes::from_string(v.clone())))
                            })
                            .collect();
                        let created = conn
                            .call(
                                ApiKey::CreateTopics,
                                7,
                                RequestKind::CreateTopics(
                                    CreateTopicsRequest::default().with_topics(vec![
                                        create_topics_request::CreatableTopic::default()
                                            .with_name(name())
                                            .with_num_partitions(1)
                                            .with_replication_factor(self.replication_factor)
                                            .with_configs(configs),
                                    ]),
                                ),
                            )
                            .await?;
                        if let ResponseKind::CreateTopics(c) = created {
                            if let Some(t) = c.topics.first() {
                                // 36: TOPIC_ALREADY_EXISTS (another instance won).
                                if t.error_code != 0 && t.error_code != 36 {
                                    return Err(format!(
                                        "creating {}: error code {} ({})",
                                        self.topic,
                                        t.error_code,
                                        t.error_message.as_deref().unwrap_or("no message")
                                    ));
                                }
                            }
                        }
                        tracing::info!(topic = %self.topic, "topic created");
                    }
                    e => return Err(format!("Metadata for {}: error code {e}", self.topic)),
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            last = format!("no leader for {} yet", self.topic);
        }
        Err(last)
    }
}

/// One uncompressed, non-idempotent record batch of `(key, value)` pairs (a
/// `None` value is a tombstone), timestamped now: what Custos writes to its
/// own topics.
pub fn plain_batch(records: Vec<(Bytes, Option<Bytes>)>) -> Result<Bytes, String> {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let now = crate::audit_trail::unix_ms_now();
    let batch: Vec<Record> = records
        .into_iter()
        .enumerate()
        .map(|(i, (key, value))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder keeps records in one batch only while offset -
            // sequence stays constant; Kafka takes exactly one batch per
            // partition. The batch's base sequence is then the first
            // record's, -1: "no idempotence", as it must be.
            sequence: i32::try_from(i).unwrap_or(i32::MAX) - 1,
            timestamp: now,
            key: Some(key),
            value,
            headers: Default::default(),
        })
        .collect();
    let mut out = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut out,
        &batch,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(out.freeze())
}
