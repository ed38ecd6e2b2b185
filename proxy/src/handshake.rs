//! Authenticating a client before any of its bytes reach a broker.
//!
//! On a listener with SASL, Custos itself answers the client's first
//! requests: ApiVersions (from the versions the cluster advertised to Custos,
//! narrowed to the allow-list, plus the SASL apis Custos serves), then
//! SaslHandshake and SaslAuthenticate, driving the exchange in
//! [`crate::auth`]. Only once that succeeds does the server open the upstream
//! connection. Anything else before authentication closes the connection, as
//! a broker does.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, ResponseKind, SaslAuthenticateRequest,
    SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::auth::{AuthError, Identity, SaslExchange, SaslServer, Step};
use crate::frame::{read_one, write_frame, FrameError};
use crate::message::{Response, UNSUPPORTED_VERSION};
use crate::pipeline::Blame;
use crate::session::SessionError;
use crate::stages::api_versions::narrow;

/// Kafka's UNSUPPORTED_SASL_MECHANISM error code.
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
/// Kafka's SASL_AUTHENTICATION_FAILED error code.
const SASL_AUTHENTICATION_FAILED: i16 = 58;

/// Time a client has to finish authenticating.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(30);

fn refused(blame: Blame, message: impl Into<String>) -> SessionError {
    SessionError {
        blame,
        message: message.into(),
        routine: false,
    }
}

/// Reads one frame; nothing the client sends after authenticating is left
/// behind in a buffer here.
async fn read_frame<S: AsyncRead + Unpin>(s: &mut S, max: usize) -> Result<Bytes, SessionError> {
    read_one(s, max).await.map_err(|e| match e {
        FrameError::Io(e) => SessionError {
            blame: Blame::Client,
            message: format!("client left during authentication: {e}"),
            routine: true,
        },
        other => refused(
            Blame::Client,
            format!("bad frame during authentication: {other}"),
        ),
    })
}

/// The ApiVersions answer Custos gives before authentication.
pub fn local_api_versions(broker: &[ApiVersion]) -> Vec<ApiVersion> {
    let mut list = broker.to_vec();
    narrow(&mut list);
    // The SASL apis are Custos's own, whatever the broker supports.
    for (key, min, max) in [
        (ApiKey::SaslHandshake, 1, 1),
        (
            ApiKey::SaslAuthenticate,
            0,
            ApiKey::SaslAuthenticate.valid_versions().max,
        ),
    ] {
        list.retain(|v| v.api_key != key as i16);
        list.push(
            ApiVersion::default()
                .with_api_key(key as i16)
                .with_min_version(min)
                .with_max_version(max),
        );
    }
    list.sort_by_key(|v| v.api_key);
    list
}

async fn reply<S: AsyncWrite + Unpin>(
    s: &mut S,
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: ResponseKind,
) -> Result<(), SessionError> {
    let bytes = Response::encode_local(key, version, correlation_id, &body)
        .map_err(|e| refused(Blame::Internal, e.to_string()))?;
    write_frame(s, &bytes).await.map_err(|e| SessionError {
        blame: Blame::Client,
        message: format!("client left during authentication: {e}"),
        routine: true,
    })
}

/// Runs the SASL exchange on `stream` and returns who the client is.
pub async fn authenticate<S>(
    stream: &mut S,
    sasl: &SaslServer,
    broker_versions: &[ApiVersion],
    max_frame: usize,
) -> Result<Identity, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut exchange: Option<SaslExchange> = None;
    loop {
        let raw = read_frame(stream, max_frame).await?;
        if raw.len() < 8 {
            return Err(refused(Blame::Client, "request too short"));
        }
        let key_raw = i16::from_be_bytes([raw[0], raw[1]]);
        let version = i16::from_be_bytes([raw[2], raw[3]]);
        let key = ApiKey::try_from(key_raw).map_err(|_| {
            refused(
                Blame::Client,
                format!("api key {key_raw} before authentication"),
            )
        })?;
        let range = key.valid_versions();
        let mut buf = raw.clone();
        let header_version = key.request_header_version(version.clamp(range.min, range.max));
        let header = RequestHeader::decode(&mut buf, header_version)
            .map_err(|e| refused(Blame::Client, format!("malformed request header: {e}")))?;
        let corr = header.correlation_id;
        // These three bodies hold no arrays, so the crate's decoders are safe here.
        match key {
            ApiKey::ApiVersions => {
                let mut body = ApiVersionsResponse::default()
                    .with_api_keys(local_api_versions(broker_versions));
                let answer_version = if version > range.max {
                    body.error_code = UNSUPPORTED_VERSION;
                    0
                } else {
                    version
                };
                reply(
                    stream,
                    key,
                    answer_version,
                    corr,
                    ResponseKind::ApiVersions(body),
                )
                .await?;
            }
            ApiKey::SaslHandshake => {
                if version != 1 {
                    return Err(refused(
                        Blame::Client,
                        format!(
                            "SaslHandshake v{version}: only v1 (framed SaslAuthenticate) is served"
                        ),
                    ));
                }
                let req = SaslHandshakeRequest::decode(&mut buf, version)
                    .map_err(|e| refused(Blame::Client, format!("malformed SaslHandshake: {e}")))?;
                let names: Vec<StrBytes> = sasl
                    .mechanism_names()
                    .into_iter()
                    .map(StrBytes::from_static_str)
                    .collect();
                let (code, next) = match sasl.start(req.mechanism.as_str()) {
                    Ok(x) => (0, Some(x)),
                    Err(e) if e.is_unsupported_mechanism() => (UNSUPPORTED_SASL_MECHANISM, None),
                    Err(e) => return Err(refused(Blame::Internal, e.to_string())),
                };
                reply(
                    stream,
                    key,
                    version,
                    corr,
                    ResponseKind::SaslHandshake(
                        SaslHandshakeResponse::default()
                            .with_error_code(code)
                            .with_mechanisms(names),
                    ),
                )
                .await?;
                if next.is_none() {
                    return Err(refused(
                        Blame::Client,
                        format!("unsupported SASL mechanism {:?}", req.mechanism.as_str()),
                    ));
                }
                exchange = next;
            }
            ApiKey::SaslAuthenticate if exchange.is_some() && version <= range.max => {
                let req = SaslAuthenticateRequest::decode(&mut buf, version).map_err(|e| {
                    refused(Blame::Client, format!("malformed SaslAuthenticate: {e}"))
                })?;
                let Some(ex) = exchange.as_mut() else {
                    return Err(refused(Blame::Internal, "no exchange"));
                };
                match ex.step(&req.auth_bytes) {
                    Ok(Step::Continue(bytes)) => {
                        let body =
                            SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(bytes));
                        reply(
                            stream,
                            key,
                            version,
                            corr,
                            ResponseKind::SaslAuthenticate(body),
                        )
                        .await?;
                    }
                    Ok(Step::Done {
                        identity,
                        final_bytes,
                    }) => {
                        let body = SaslAuthenticateResponse::default()
                            .with_auth_bytes(Bytes::from(final_bytes));
                        reply(
                            stream,
                            key,
                            version,
                            corr,
                            ResponseKind::SaslAuthenticate(body),
                        )
                        .await?;
                        return Ok(identity);
                    }
                    Err(e) => {
                        let body = SaslAuthenticateResponse::default()
                            .with_error_code(SASL_AUTHENTICATION_FAILED)
                            .with_error_message(Some(StrBytes::from_string(e.client_message())));
                        // The client should see why before the connection closes.
                        let _ = reply(
                            stream,
                            key,
                            version,
                            corr,
                            ResponseKind::SaslAuthenticate(body),
                        )
                        .await;
                        return Err(auth_failed(&e));
                    }
                }
            }
            other => {
                // A broker answers ILLEGAL_SASL_STATE where it can; Custos closes.
                return Err(refused(
                    Blame::Client,
                    format!("{other:?} v{version} sent before authentication completed"),
                ));
            }
        }
    }
}

fn auth_failed(e: &AuthError) -> SessionError {
    // The Display form names the reason for operators; it holds no secret.
    refused(Blame::Client, format!("authentication failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::client::{ClientStep, SaslClient};
    use crate::auth::credentials::NewUser;
    use crate::auth::{CredentialStore, SaslMechanism};
    use bytes::BytesMut;
    use kafka_protocol::messages::{ApiVersionsRequest, RequestKind};
    use kafka_protocol::protocol::Encodable;
    use std::sync::Arc;
    use tokio::io::{AsyncWriteExt, DuplexStream};

    fn server() -> SaslServer {
        let mut store = CredentialStore::new();
        store
            .add_user("alice", "wonderland", &NewUser::default())
            .expect("add user");
        SaslServer::new(
            vec![SaslMechanism::ScramSha512, SaslMechanism::Plain],
            Arc::new(store),
            None,
        )
    }

    async fn send(c: &mut DuplexStream, key: ApiKey, version: i16, corr: i32, body: RequestKind) {
        let mut out = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(corr)
            .encode(&mut out, key.request_header_version(version))
            .expect("header");
        body.encode(&mut out, version).expect("body");
        write_frame(c, &out.freeze()).await.expect("send");
    }

    async fn recv(c: &mut DuplexStream, key: ApiKey, version: i16) -> ResponseKind {
        let raw = read_frame(c, 1 << 20).await.expect("frame");
        let mut r = Response::parse(raw, key, version).expect("parse");
        r.body().expect("body").clone()
    }

    async fn login(password: &str) -> (Result<Identity, SessionError>, Vec<i16>) {
        let (mut client, mut proxy_side) = tokio::io::duplex(1 << 16);
        let broker = vec![ApiVersion::default()
            .with_api_key(ApiKey::Produce as i16)
            .with_min_version(3)
            .with_max_version(12)];
        let task = tokio::spawn(async move {
            authenticate(&mut proxy_side, &server(), &broker, 1 << 20).await
        });
        let mut codes = Vec::new();
        send(
            &mut client,
            ApiKey::ApiVersions,
            3,
            1,
            RequestKind::ApiVersions(ApiVersionsRequest::default()),
        )
        .await;
        if let ResponseKind::ApiVersions(v) = recv(&mut client, ApiKey::ApiVersions, 3).await {
            let keys: Vec<i16> = v.api_keys.iter().map(|k| k.api_key).collect();
            assert_eq!(keys, vec![0, 17, 36], "Produce plus the SASL apis");
        }
        send(
            &mut client,
            ApiKey::SaslHandshake,
            1,
            2,
            RequestKind::SaslHandshake(
                SaslHandshakeRequest::default()
                    .with_mechanism(StrBytes::from_static_str("SCRAM-SHA-512")),
            ),
        )
        .await;
        if let ResponseKind::SaslHandshake(h) = recv(&mut client, ApiKey::SaslHandshake, 1).await {
            codes.push(h.error_code);
        }
        let mut sc = SaslClient::new("SCRAM-SHA-512", "alice", password).expect("client");
        let mut out = sc.initial().expect("first");
        let mut corr = 3;
        loop {
            send(
                &mut client,
                ApiKey::SaslAuthenticate,
                2,
                corr,
                RequestKind::SaslAuthenticate(
                    SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(out)),
                ),
            )
            .await;
            corr += 1;
            let ResponseKind::SaslAuthenticate(a) =
                recv(&mut client, ApiKey::SaslAuthenticate, 2).await
            else {
                panic!("not SaslAuthenticate");
            };
            codes.push(a.error_code);
            if a.error_code != 0 {
                break;
            }
            match sc.step(&a.auth_bytes).expect("client step") {
                ClientStep::Send(b) => out = b,
                ClientStep::Done => break,
            }
        }
        client.shutdown().await.ok();
        (task.await.expect("join"), codes)
    }

    #[tokio::test]
    async fn scram_login_yields_the_identity() {
        let (res, codes) = login("wonderland").await;
        assert_eq!(res.expect("authenticated").name, "alice");
        assert_eq!(codes, vec![0, 0, 0]);
    }

    #[tokio::test]
    async fn wrong_password_gets_sasl_authentication_failed() {
        let (res, codes) = login("guess").await;
        assert!(res.is_err());
        assert_eq!(codes.last(), Some(&SASL_AUTHENTICATION_FAILED));
    }

    #[tokio::test]
    async fn data_requests_before_authentication_close_the_connection() {
        let (mut client, mut proxy_side) = tokio::io::duplex(1 << 16);
        let task =
            tokio::spawn(
                async move { authenticate(&mut proxy_side, &server(), &[], 1 << 20).await },
            );
        send(
            &mut client,
            ApiKey::Metadata,
            12,
            1,
            RequestKind::Metadata(Default::default()),
        )
        .await;
        let err = task.await.expect("join").expect_err("refused");
        assert!(
            err.message.contains("before authentication"),
            "{}",
            err.message
        );
    }
}
