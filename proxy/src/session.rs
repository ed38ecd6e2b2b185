//! One client connection and its one upstream connection.
//!
//! Two loops share the session. The request loop reads client frames, runs
//! the request stages and writes to the broker; the response loop reads the
//! broker's answers, runs the response stages and writes to the client. Kafka
//! responses carry no api key and must reach the client in request order, so
//! the request loop hands the response loop an ordered queue of what it is
//! waiting for: a forwarded request (api key, version, correlation id) or an
//! answer Custos made itself. The queue's bound caps requests in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::frame::{write_frame, FrameCodec};
use crate::message::{Request, Response};
use crate::metrics::Metrics;
use crate::pipeline::{Blame, Pipeline, SessionInfo, Verdict};

/// Largest broker response accepted. Brokers are trusted more than clients,
/// and fetch responses are legitimately large (`fetch.max.bytes`).
const MAX_RESPONSE_BYTES: usize = 1 << 30;

/// Why a session ended early, and whose fault it was.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SessionError {
    /// Whose fault.
    pub blame: Blame,
    /// What happened (api key, version and correlation id at most; never payload).
    pub message: String,
}

fn fail(blame: Blame, message: impl Into<String>) -> SessionError {
    SessionError {
        blame,
        message: message.into(),
    }
}

/// What the session needs from the server.
pub struct SessionCtx {
    /// The stages.
    pub pipeline: Arc<Pipeline>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Largest client frame accepted.
    pub max_frame_bytes: usize,
    /// Requests in flight before reading pauses.
    pub max_in_flight: usize,
}

/// An entry of the response queue.
enum Pending {
    /// A request sent to the broker; its response is the next frame to arrive.
    Forwarded {
        api_key: ApiKey,
        api_version: i16,
        correlation_id: i32,
        /// When the request was written to the broker.
        forwarded_at: Instant,
        /// Time Custos spent on the request before forwarding it.
        request_work: Duration,
    },
    /// An answer Custos made itself.
    Local(Bytes),
}

/// Runs a session until the client leaves, the broker leaves, an error, or
/// `shutdown` (after which in-flight requests are still answered).
pub async fn run<C, U>(
    client: C,
    upstream: U,
    info: SessionInfo,
    ctx: Arc<SessionCtx>,
    shutdown: CancellationToken,
) -> Result<(), SessionError>
where
    C: AsyncRead + AsyncWrite + Send + 'static,
    U: AsyncRead + AsyncWrite + Send + 'static,
{
    let (client_r, client_w) = tokio::io::split(client);
    let (upstream_r, upstream_w) = tokio::io::split(upstream);
    let (tx, rx) = mpsc::channel(ctx.max_in_flight);
    // Either loop failing stops the other at once.
    let abort = CancellationToken::new();
    let requests = request_loop(client_r, upstream_w, tx, &info, &ctx, &shutdown, &abort);
    let responses = response_loop(upstream_r, client_w, rx, &info, &ctx, &abort);
    let (a, b) = tokio::join!(requests, responses);
    a.and(b)
}

async fn request_loop<R, W>(
    client_r: R,
    mut upstream_w: W,
    tx: mpsc::Sender<Pending>,
    info: &SessionInfo,
    ctx: &SessionCtx,
    shutdown: &CancellationToken,
    abort: &CancellationToken,
) -> Result<(), SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut frames = FramedRead::new(client_r, FrameCodec::new(ctx.max_frame_bytes));
    let result = async {
        loop {
            let next = tokio::select! {
                biased;
                _ = abort.cancelled() => return Ok(()),
                // Stop reading new requests; those in flight are still answered.
                _ = shutdown.cancelled() => return Ok(()),
                next = frames.next() => next,
            };
            let raw = match next {
                None => return Ok(()),
                Some(Err(e)) => {
                    return Err(fail(Blame::Client, format!("bad frame from client: {e}")))
                }
                Some(Ok(raw)) => raw,
            };
            let received_at = Instant::now();
            ctx.metrics.bytes_in.inc_by(raw.len() as u64 + 4);
            let mut request = Request::parse(raw)
                .map_err(|e| fail(Blame::Client, format!("refused request: {e}")))?;
            ctx.metrics.request(request.api_key);
            let api_key = request.api_key;
            let api_version = request.version();
            let correlation_id = request.correlation_id();
            let expects_response = request
                .expects_response()
                .map_err(|e| fail(Blame::Client, e.to_string()))?;
            let verdict = ctx
                .pipeline
                .on_request(info, &mut request)
                .await
                .map_err(|e| fail(e.blame, e.to_string()))?;
            match verdict {
                Verdict::Forward => {
                    let bytes = request
                        .into_bytes()
                        .map_err(|e| fail(Blame::Internal, e.to_string()))?;
                    let request_work = received_at.elapsed();
                    if expects_response {
                        let pending = Pending::Forwarded {
                            api_key,
                            api_version,
                            correlation_id,
                            forwarded_at: Instant::now(),
                            request_work,
                        };
                        // Queued before writing so the response loop expects
                        // the answer before it can arrive.
                        if tx.send(pending).await.is_err() {
                            return Ok(());
                        }
                    }
                    write_frame(&mut upstream_w, &bytes).await.map_err(|e| {
                        fail(
                            Blame::Upstream,
                            format!("writing {api_key:?} to broker: {e}"),
                        )
                    })?;
                }
                Verdict::Respond(body) => {
                    let bytes = Response::encode_local(api_key, api_version, correlation_id, &body)
                        .map_err(|e| fail(Blame::Internal, e.to_string()))?;
                    if tx.send(Pending::Local(bytes)).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
    .await;
    if result.is_err() {
        abort.cancel();
    }
    result
}

async fn response_loop<R, W>(
    upstream_r: R,
    mut client_w: W,
    mut rx: mpsc::Receiver<Pending>,
    info: &SessionInfo,
    ctx: &SessionCtx,
    abort: &CancellationToken,
) -> Result<(), SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut frames = FramedRead::new(upstream_r, FrameCodec::new(MAX_RESPONSE_BYTES));
    let result = async {
        loop {
            let pending = tokio::select! {
                biased;
                _ = abort.cancelled() => return Ok(()),
                p = rx.recv() => match p {
                    Some(p) => p,
                    None => return Ok(()),
                },
                // Nothing is expected: the broker speaking now means it closed
                // the connection or broke the protocol. Notice at once rather
                // than at the next request.
                f = frames.next() => return Err(match f {
                    None => fail(Blame::Upstream, "broker closed the connection"),
                    Some(Err(e)) => fail(Blame::Upstream, format!("bad frame from broker: {e}")),
                    Some(Ok(_)) => fail(Blame::Upstream, "broker sent a response nobody asked for"),
                }),
            };
            match pending {
                Pending::Local(bytes) => {
                    write_client(&mut client_w, &bytes, ctx).await?;
                }
                Pending::Forwarded {
                    api_key,
                    api_version,
                    correlation_id,
                    forwarded_at,
                    request_work,
                } => {
                    let next = tokio::select! {
                        biased;
                        _ = abort.cancelled() => return Ok(()),
                        f = frames.next() => f,
                    };
                    let raw = match next {
                        None => {
                            return Err(fail(
                                Blame::Upstream,
                                format!("broker closed the connection before answering {api_key:?} (correlation id {correlation_id})"),
                            ))
                        }
                        Some(Err(e)) => return Err(fail(Blame::Upstream, format!("bad frame from broker: {e}"))),
                        Some(Ok(raw)) => raw,
                    };
                    let arrived_at = Instant::now();
                    if raw.len() < 4 {
                        return Err(fail(Blame::Upstream, "broker response too short"));
                    }
                    let got = i32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
                    if got != correlation_id {
                        return Err(fail(
                            Blame::Upstream,
                            format!("broker answered correlation id {got}, expected {correlation_id}"),
                        ));
                    }
                    let out = if ctx.pipeline.wants_response(api_key) {
                        let mut response = Response::parse(raw, api_key, api_version)
                            .map_err(|e| fail(Blame::Upstream, e.to_string()))?;
                        ctx.pipeline
                            .on_response(info, &mut response)
                            .await
                            .map_err(|e| fail(e.blame, e.to_string()))?;
                        response
                            .into_bytes()
                            .map_err(|e| fail(Blame::Internal, e.to_string()))?
                    } else {
                        raw
                    };
                    write_client(&mut client_w, &out, ctx).await?;
                    ctx.metrics.exchange(
                        api_key,
                        arrived_at.saturating_duration_since(forwarded_at),
                        request_work + arrived_at.elapsed(),
                    );
                }
            }
        }
    }
    .await;
    if result.is_err() {
        abort.cancel();
    }
    let _ = client_w.shutdown().await;
    result
}

async fn write_client<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &Bytes,
    ctx: &SessionCtx,
) -> Result<(), SessionError> {
    write_frame(w, bytes)
        .await
        .map_err(|e| fail(Blame::Client, format!("client went away: {e}")))?;
    ctx.metrics.bytes_out.inc_by(bytes.len() as u64 + 4);
    Ok(())
}
