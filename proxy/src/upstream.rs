//! Connections to the brokers, and the broker list Custos learns on its own.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use kafka_protocol::messages::{
    ApiKey, MetadataRequest, MetadataResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;

use crate::frame::{write_frame, FrameCodec};
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
    /// The broker's answer was not what Kafka sends.
    #[error("broker {addr} answered badly: {why}")]
    Protocol {
        /// Broker address.
        addr: String,
        /// Cause.
        why: String,
    },
}

/// Opens a connection (and TLS session, if configured) to `host:port`.
pub async fn connect(
    host: &str,
    port: u16,
    tls: Option<&UpstreamTls>,
    timeout: Duration,
) -> Result<Stream, UpstreamError> {
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

/// Asks the broker at `host:port` for the cluster's broker list.
pub async fn fetch_brokers(
    host: &str,
    port: u16,
    tls: Option<&UpstreamTls>,
    timeout: Duration,
) -> Result<Vec<BrokerInfo>, UpstreamError> {
    let addr = format!("{host}:{port}");
    let proto = |why: String| UpstreamError::Protocol {
        addr: addr.clone(),
        why,
    };
    let stream = connect(host, port, tls, timeout).await?;
    let (r, mut w) = tokio::io::split(stream);
    let mut frame = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(ApiKey::Metadata as i16)
        .with_request_api_version(METADATA_VERSION)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("custos")))
        .encode(
            &mut frame,
            ApiKey::Metadata.request_header_version(METADATA_VERSION),
        )
        .map_err(|e| proto(e.to_string()))?;
    // An empty topic list asks for brokers only.
    MetadataRequest::default()
        .with_topics(Some(vec![]))
        .encode(&mut frame, METADATA_VERSION)
        .map_err(|e| proto(e.to_string()))?;
    let exchange = async {
        write_frame(&mut w, &frame.freeze())
            .await
            .map_err(|e| proto(e.to_string()))?;
        let mut frames = FramedRead::new(r, FrameCodec::new(64 * 1024 * 1024));
        let mut body: Bytes = match frames.next().await {
            Some(Ok(b)) => b,
            Some(Err(e)) => return Err(proto(e.to_string())),
            None => return Err(proto("closed the connection".into())),
        };
        let header = ResponseHeader::decode(
            &mut body,
            ApiKey::Metadata.response_header_version(METADATA_VERSION),
        )
        .map_err(|e| proto(e.to_string()))?;
        if header.correlation_id != 1 {
            return Err(proto(format!(
                "unexpected correlation id {}",
                header.correlation_id
            )));
        }
        let resp = MetadataResponse::decode(&mut body, METADATA_VERSION)
            .map_err(|e| proto(e.to_string()))?;
        Ok(resp
            .brokers
            .into_iter()
            .map(|b| BrokerInfo {
                id: b.node_id.0,
                host: b.host.to_string(),
                port: b.port,
            })
            .collect())
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| UpstreamError::Timeout(addr.clone()))?
}
