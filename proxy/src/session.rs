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

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, FramedRead};
use tokio_util::sync::CancellationToken;

use crate::frame::{write_frame, write_frame_parts, FrameCodec};
use crate::message::{Amends, Request, Response};
use crate::metrics::Metrics;
use crate::pipeline::{Blame, Pipeline, SessionInfo, Verdict};
use crate::splice::{Relay, RelayError};
use crate::stream::{Side, SplitSides};

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
    /// The client simply left (reset, broken pipe, TLS closed without notice):
    /// routine for Kafka clients, so not worth a warning.
    pub routine: bool,
}

fn fail(blame: Blame, message: impl Into<String>) -> SessionError {
    SessionError {
        blame,
        message: message.into(),
        routine: false,
    }
}

/// Whether an i/o error just means the peer hung up.
fn is_hangup(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof | NotConnected
    )
}

/// A failed write of a response to the client: a hang-up is routine.
fn client_write_error(e: std::io::Error) -> SessionError {
    if is_hangup(&e) {
        client_left(format!(
            "client disconnected before its response was written: {e}"
        ))
    } else {
        fail(Blame::Client, format!("writing to client: {e}"))
    }
}

fn client_left(message: String) -> SessionError {
    SessionError {
        blame: Blame::Client,
        message,
        routine: true,
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
    /// Where audit records go before a response is released.
    pub auditor: crate::audit_trail::Auditor,
    /// Fetch answers at least this large that stages only read are streamed
    /// partition by partition (`fetch_stream.rs`), not read whole first.
    pub fetch_stream_min_bytes: usize,
    /// The same for Fetch answers a stage may rewrite.
    pub fetch_reveal_stream_min_bytes: usize,
    /// Whether answers no stage reads move socket to socket in the kernel
    /// when both legs are plain TCP (`splice.rs`).
    pub zero_copy: bool,
    /// Partitions of a streamed Fetch answer handled at once.
    pub fetch_lanes: usize,
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
        /// Changes stages asked for in the answer.
        amends: Amends,
        /// Audit records of the exchange so far.
        audit: crate::audit_trail::AuditNotes,
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
    C: SplitSides,
    U: SplitSides,
{
    let (client_r, client_w) = client.split_sides();
    // The broker's write side lives until both loops end: dropping a plain
    // TCP write side sends FIN, and answers still in flight must arrive.
    let (upstream_r, mut upstream_w) = upstream.split_sides();
    let (tx, rx) = mpsc::channel(ctx.max_in_flight);
    // Either loop failing stops the other at once.
    let abort = CancellationToken::new();
    let requests = request_loop(
        client_r,
        &mut upstream_w,
        tx,
        &info,
        &ctx,
        &shutdown,
        &abort,
    );
    let responses = response_loop(upstream_r, client_w, rx, &info, &ctx, &abort);
    let (a, b) = tokio::join!(requests, responses);
    a.and(b)
}

async fn request_loop<R, W>(
    client_r: R,
    upstream_w: &mut W,
    tx: mpsc::Sender<Pending>,
    info: &SessionInfo,
    ctx: &SessionCtx,
    shutdown: &CancellationToken,
    abort: &CancellationToken,
) -> Result<(), SessionError>
where
    R: AsyncRead + Side + Unpin,
    W: AsyncWrite + Side + Unpin,
{
    let mut frames = FramedRead::new(client_r, FrameCodec::new(ctx.max_frame_bytes));
    // Large Produce requests skip user space when nothing reads them.
    let produce_relay = ctx.zero_copy
        && !ctx.pipeline.wants_request(ApiKey::Produce)
        && frames.get_ref().plain_tcp().is_some()
        && upstream_w.plain_tcp().is_some();
    let mut relay = Relay::new();
    let result = async {
        loop {
            if produce_relay {
                let head = tokio::select! {
                    biased;
                    _ = abort.cancelled() => return Ok(()),
                    _ = shutdown.cancelled() => return Ok(()),
                    h = produce_head(&mut frames, ctx.max_frame_bytes) => h?,
                };
                if let Some(head) = head {
                    // Once its first bytes are at the broker, a request is
                    // finished even during a shutdown: only an abort stops it.
                    let sent = tokio::select! {
                        biased;
                        _ = abort.cancelled() => return Ok(()),
                        s = forward_produce(&mut frames, upstream_w, &tx, ctx, &mut relay, head) => s?,
                    };
                    if !sent {
                        return Ok(());
                    }
                    continue;
                }
            }
            // A frame the Produce peek left whole in the buffer is taken
            // from there: the framer reads the socket before decoding what it
            // did not read itself, and the client may send nothing more.
            let buffered = if produce_relay {
                let mut codec = *frames.decoder();
                codec.decode(frames.read_buffer_mut()).transpose()
            } else {
                None
            };
            let next = match buffered {
                Some(frame) => Some(frame),
                None => tokio::select! {
                    biased;
                    _ = abort.cancelled() => return Ok(()),
                    // Stop reading new requests; those in flight are still answered.
                    _ = shutdown.cancelled() => return Ok(()),
                    next = frames.next() => next,
                },
            };
            let raw = match next {
                None => return Ok(()),
                Some(Err(crate::frame::FrameError::Io(e))) if is_hangup(&e) => {
                    return Err(client_left(format!("client disconnected: {e}")))
                }
                Some(Err(e)) => {
                    return Err(fail(Blame::Client, format!("bad frame from client: {e}")))
                }
                Some(Ok(raw)) => raw,
            };
            let received_at = Instant::now();
            ctx.metrics.bytes_in.inc_by(raw.len() as u64 + 4);
            let mut request = Request::parse(raw)
                .map_err(|e| fail(Blame::Client, format!("refused request: {e}")))?;
            request.audit = ctx.auditor.notes();
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
                    let amends = std::mem::take(&mut request.amends);
                    let audit = request.audit.clone();
                    // No answer will come to wait on: record before the write.
                    if !expects_response {
                        submit_audit(ctx, &audit, api_key).await?;
                    }
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
                            amends,
                            audit,
                        };
                        // Queued before writing so the response loop expects
                        // the answer before it can arrive.
                        if tx.send(pending).await.is_err() {
                            return Ok(());
                        }
                    }
                    write_frame(upstream_w, &bytes).await.map_err(|e| {
                        fail(
                            Blame::Upstream,
                            format!("writing {api_key:?} to broker: {e}"),
                        )
                    })?;
                }
                // A Produce with acks=0 gets no answer, not even a refusal.
                Verdict::Respond(_) if !expects_response => {
                    submit_audit(ctx, &request.audit, api_key).await?;
                }
                Verdict::Respond(body) => {
                    submit_audit(ctx, &request.audit, api_key).await?;
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
    R: AsyncRead + Side + Unpin,
    W: AsyncWrite + Side + Unpin,
{
    let mut frames = FramedRead::new(upstream_r, FrameCodec::new(MAX_RESPONSE_BYTES));
    let mut kept = Kept::default();
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
                    write_client(&mut client_w, std::slice::from_ref(&bytes), ctx).await?;
                }
                Pending::Forwarded {
                    api_key,
                    api_version,
                    correlation_id,
                    forwarded_at,
                    request_work,
                    amends,
                    audit,
                } => {
                    let wanted = ctx.pipeline.wants_response_at(api_key, api_version)
                        || !amends.0.is_empty();
                    let streams = wanted
                        && api_key == ApiKey::Fetch
                        && amends.0.is_empty()
                        && ctx.pipeline.streams_fetch(api_version);
                    let taken = if streams && kept.whole_fetches == 0 {
                        let answer = crate::pipeline::FetchAnswer {
                            api_version,
                            correlation_id,
                            audit: audit.clone(),
                        };
                        tokio::select! {
                            biased;
                            _ = abort.cancelled() => return Ok(()),
                            s = stream_fetch(&mut frames, &mut client_w, info, ctx, &answer, &mut kept) => s?,
                        }
                    } else if wanted {
                        kept.whole_fetches = kept.whole_fetches.saturating_sub(u32::from(streams));
                        CutThrough::NotTaken
                    } else {
                        // No stage reads it, so no stage adds audit records:
                        // the exchange's records are all here already.
                        submit_audit(ctx, &audit, api_key).await?;
                        tokio::select! {
                            biased;
                            _ = abort.cancelled() => return Ok(()),
                            s = cut_through(&mut frames, &mut client_w, correlation_id, &mut kept.relay, ctx.zero_copy) => s?,
                        }
                    };
                    let next = match taken {
                        CutThrough::Streamed(s) => {
                            ctx.metrics.bytes_out.inc_by(s.bytes);
                            ctx.metrics.zero_copy_bytes.inc_by(kept.relay.take_moved());
                            ctx.metrics.exchange(
                                api_key,
                                s.arrived_at.saturating_duration_since(forwarded_at),
                                request_work + s.first_out.saturating_duration_since(s.arrived_at),
                            );
                            continue;
                        }
                        CutThrough::Whole(raw) => Some(Ok(raw)),
                        CutThrough::NotTaken => tokio::select! {
                            biased;
                            _ = abort.cancelled() => return Ok(()),
                            f = frames.next() => f,
                        },
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
                    let out = if wanted {
                        let mut response = Response::parse(raw, api_key, api_version)
                            .map_err(|e| fail(Blame::Upstream, e.to_string()))?;
                        response.audit = audit.clone();
                        ctx.pipeline
                            .on_response(info, &mut response)
                            .await
                            .map_err(|e| fail(e.blame, e.to_string()))?;
                        if !amends.0.is_empty() {
                            let body = response
                                .body_mut()
                                .map_err(|e| fail(Blame::Upstream, e.to_string()))?;
                            for amend in amends.0 {
                                amend(body).map_err(|e| {
                                    fail(Blame::Internal, format!("amending {api_key:?} answer: {e}"))
                                })?;
                            }
                        }
                        response
                            .into_parts()
                            .map_err(|e| fail(Blame::Internal, e.to_string()))?
                    } else {
                        vec![raw]
                    };
                    // Strict audit: the answer waits until its records are durable.
                    submit_audit(ctx, &audit, api_key).await?;
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

/// What a session keeps from one Fetch answer to the next.
#[derive(Default)]
struct Kept {
    /// Fetch answers still to read whole before streaming again.
    whole_fetches: u32,
    /// The buffer streamed answers are read into.
    buf: BytesMut,
    /// Moves answer bytes socket to socket when both legs are plain TCP.
    relay: Relay,
}

/// Answers at least this large are forwarded as they arrive when no stage
/// reads them, not read whole first: a consumer that keeps one Fetch in
/// flight would otherwise wait for each answer twice (broker to Custos, then
/// Custos to client), and Custos would hold all of it in memory.
const CUT_THROUGH_MIN_BYTES: usize = 256 * 1024;

/// What [`cut_through`] did with the broker's next frame.
enum CutThrough {
    /// Forwarded it as it arrived.
    Streamed(Streamed),
    /// It was already whole in the buffer: here it is.
    Whole(Bytes),
    /// Left it, incomplete, for the framer to read whole.
    NotTaken,
}

/// An answer forwarded as it arrived.
struct Streamed {
    /// When its length and correlation id had arrived.
    arrived_at: Instant,
    /// When its first bytes were written to the client.
    first_out: Instant,
    /// Bytes written, length prefix included.
    bytes: u64,
}

/// What the first bytes of the broker's next frame say.
enum Peek {
    /// It answers the exchange and is at least as large as asked: its size,
    /// length prefix included.
    Large(usize),
    /// Small, or not the answer expected, or its length is bad: for the
    /// framer to read (and report).
    Other,
    /// The broker closed the connection.
    Closed,
}

/// Reads the length and correlation id of the broker's next frame into the
/// framer's own buffer (so the whole-frame path finds them if the frame is
/// not taken here) and says whether it is an answer to `correlation_id` of
/// at least `min` bytes.
async fn peek<R: AsyncRead + Unpin>(
    frames: &mut FramedRead<R, FrameCodec>,
    correlation_id: i32,
    min: usize,
) -> Result<Peek, SessionError> {
    while frames.read_buffer().len() < 8 {
        let mut head = [0u8; 8];
        let want = 8 - frames.read_buffer().len();
        let n = frames
            .get_mut()
            .read(&mut head[..want])
            .await
            .map_err(|e| fail(Blame::Upstream, format!("reading from broker: {e}")))?;
        if n == 0 {
            return Ok(Peek::Closed);
        }
        frames.read_buffer_mut().extend_from_slice(&head[..n]);
    }
    let buffered = frames.read_buffer();
    let len = i32::from_be_bytes([buffered[0], buffered[1], buffered[2], buffered[3]]);
    let corr = i32::from_be_bytes([buffered[4], buffered[5], buffered[6], buffered[7]]);
    let total = usize::try_from(len).map_or(0, |len| len + 4);
    if (min + 4..=MAX_RESPONSE_BYTES + 4).contains(&total) && corr == correlation_id {
        Ok(Peek::Large(total))
    } else {
        Ok(Peek::Other)
    }
}

/// The frame in the framer's buffer, if it is whole there.
fn decode_buffered<R>(frames: &mut FramedRead<R, FrameCodec>) -> Result<CutThrough, SessionError> {
    let mut codec = *frames.decoder();
    match codec.decode(frames.read_buffer_mut()) {
        Ok(Some(raw)) => Ok(CutThrough::Whole(raw)),
        Ok(None) => Ok(CutThrough::NotTaken),
        Err(e) => Err(fail(Blame::Upstream, format!("bad frame from broker: {e}"))),
    }
}

/// Streams the broker's next frame, a Fetch answer, to the client through
/// the stages' partition hooks (`fetch_stream.rs`) if it is at least
/// `ctx.fetch_stream_min_bytes` long (`ctx.fetch_reveal_stream_min_bytes`
/// when a stage may rewrite it); the exchange's audit records are
/// submitted before its last bytes go out. Any other frame is returned whole
/// if it is whole in the buffer, else left for the framer.
async fn stream_fetch<R, W>(
    frames: &mut FramedRead<R, FrameCodec>,
    client_w: &mut W,
    info: &SessionInfo,
    ctx: &SessionCtx,
    answer: &crate::pipeline::FetchAnswer,
    kept: &mut Kept,
) -> Result<CutThrough, SessionError>
where
    R: AsyncRead + Side + Unpin,
    W: AsyncWrite + Side + Unpin,
{
    let min = if ctx.pipeline.rewrites_fetch(answer.api_version) {
        ctx.fetch_reveal_stream_min_bytes
    } else {
        ctx.fetch_stream_min_bytes
    };
    let total = match peek(frames, answer.correlation_id, min).await? {
        Peek::Large(total) => total,
        Peek::Other => return decode_buffered(frames),
        Peek::Closed => return Ok(CutThrough::NotTaken),
    };
    let arrived_at = Instant::now();
    // Bytes after this frame in the buffer are the next frame's: they stay.
    let take = frames.read_buffer().len().min(total);
    use crate::fetch_stream::StreamError as E;
    let stream_error = |e: E| match e {
        E::Client(e) => client_write_error(e),
        E::Stage(e) => fail(e.blame, e.to_string()),
        e @ (E::Broker(_) | E::BrokerClosed(..) | E::Malformed(_)) => {
            fail(Blame::Upstream, e.to_string())
        }
    };
    if !ctx.pipeline.reads_fetch_partitions(answer.api_version) {
        // Only the closing tagged fields are wanted: records pass unread.
        let Kept {
            buf: stream_buf,
            relay,
            ..
        } = kept;
        stream_buf.clear();
        stream_buf.extend_from_slice(&frames.read_buffer()[..take]);
        frames.read_buffer_mut().advance(take);
        let rctx = crate::fetch_relay::RelayCtx {
            pipeline: &ctx.pipeline,
            version: answer.api_version,
            zero_copy: ctx.zero_copy,
        };
        let relayed =
            crate::fetch_relay::relay(frames.get_mut(), stream_buf, total, client_w, relay, &rctx)
                .await
                .map_err(stream_error)?;
        return finish_streamed(
            ctx,
            client_w,
            answer,
            StreamEnd {
                held: relayed.held,
                first_out: relayed.first_out,
                arrived_at,
                total,
            },
        )
        .await;
    }
    let stream_buf = &mut kept.buf;
    crate::fetch_stream::reuse(stream_buf, &frames.read_buffer()[..take], total);
    frames.read_buffer_mut().advance(take);
    let sctx = crate::fetch_stream::StreamCtx {
        pipeline: &ctx.pipeline,
        session: info,
        answer,
        lanes: ctx.fetch_lanes,
    };
    let streamed =
        crate::fetch_stream::stream(frames.get_mut(), stream_buf, total, client_w, &sctx)
            .await
            .map_err(stream_error)?;
    if streamed.no_room > 0 {
        ctx.metrics.fetch_stream_no_room.inc_by(streamed.no_room);
        kept.whole_fetches = WHOLE_FETCHES_AFTER_NO_ROOM;
    }
    finish_streamed(
        ctx,
        client_w,
        answer,
        StreamEnd {
            held: streamed.held,
            first_out: streamed.first_out,
            arrived_at,
            total,
        },
    )
    .await
}

/// The end of a streamed Fetch answer, as [`finish_streamed`] needs it.
struct StreamEnd {
    /// The answer's last bytes, held back until its audit records are in.
    held: Bytes,
    /// When its first bytes went to the client, if any have.
    first_out: Option<Instant>,
    /// When its length and correlation id had arrived.
    arrived_at: Instant,
    /// Its size, length prefix included.
    total: usize,
}

/// Ends a streamed Fetch answer: submits the exchange's audit records (strict
/// audit: the answer is not whole until they are durable), then writes the
/// bytes held back to the client.
async fn finish_streamed<W: AsyncWrite + Unpin>(
    ctx: &SessionCtx,
    client_w: &mut W,
    answer: &crate::pipeline::FetchAnswer,
    end: StreamEnd,
) -> Result<CutThrough, SessionError> {
    let StreamEnd {
        held,
        first_out,
        arrived_at,
        total,
    } = end;
    ctx.metrics.fetch_streamed.inc();
    submit_audit(ctx, &answer.audit, ApiKey::Fetch).await?;
    crate::frame::write_pieces(client_w, std::slice::from_ref(&held))
        .await
        .map_err(client_write_error)?;
    client_w.flush().await.map_err(client_write_error)?;
    Ok(CutThrough::Streamed(Streamed {
        arrived_at,
        first_out: first_out.unwrap_or_else(Instant::now),
        bytes: total as u64,
    }))
}

/// Fetch answers read whole after a streamed one had a partition whose new
/// records did not fit: whole, they fit, so the partition moves on.
const WHOLE_FETCHES_AFTER_NO_ROOM: u32 = 8;

/// Forwards the broker's next frame to the client as it arrives, if it is
/// large, not yet whole in the framer's buffer, and answers
/// `correlation_id`. A frame already whole in the buffer is returned; any
/// other is left for the framer to read whole (which also reports a wrong
/// correlation id or a closed connection).
async fn cut_through<R, W>(
    frames: &mut FramedRead<R, FrameCodec>,
    client_w: &mut W,
    correlation_id: i32,
    relay: &mut Relay,
    zero_copy: bool,
) -> Result<CutThrough, SessionError>
where
    R: AsyncRead + Side + Unpin,
    W: AsyncWrite + Side + Unpin,
{
    let from_broker =
        |e: std::io::Error| fail(Blame::Upstream, format!("reading from broker: {e}"));
    let total = match peek(frames, correlation_id, CUT_THROUGH_MIN_BYTES).await? {
        // A frame already whole here is dealt with now, not after the
        // broker's next bytes: the framer decodes only after reading more.
        Peek::Large(total) if frames.read_buffer().len() < total => total,
        Peek::Large(_) | Peek::Other => return decode_buffered(frames),
        Peek::Closed => return Ok(CutThrough::NotTaken),
    };
    let arrived_at = Instant::now();
    let buffered = frames.read_buffer();
    client_w
        .write_all(buffered)
        .await
        .map_err(client_write_error)?;
    let first_out = Instant::now();
    let remaining = total - buffered.len();
    frames.read_buffer_mut().clear();
    relay
        .pass_on(
            frames.get_mut(),
            client_w,
            remaining,
            &mut BytesMut::new(),
            zero_copy,
        )
        .await
        .map_err(|e| match e {
            RelayError::Read(e) => from_broker(e),
            RelayError::ReadClosed(left) => fail(
                Blame::Upstream,
                format!(
                    "broker closed the connection inside an answer ({} of {total} bytes forwarded)",
                    total - left
                ),
            ),
            RelayError::Write(e) => client_write_error(e),
        })?;
    client_w.flush().await.map_err(client_write_error)?;
    Ok(CutThrough::Streamed(Streamed {
        arrived_at,
        first_out,
        bytes: total as u64,
    }))
}

/// Produce requests at least this large are forwarded as they arrive when no
/// stage reads Produce requests and both legs are plain TCP: a producer
/// keeps several in flight, and each would otherwise be read whole into
/// Custos's memory and written out again.
const PRODUCE_RELAY_MIN_BYTES: usize = 64 * 1024;

/// Bytes at the start of a request read at most to find its header and
/// acks; a request whose head is not within them is read whole (and the
/// framer or the parser says what is wrong with it).
const REQUEST_HEAD_MAX_BYTES: usize = 16 * 1024;

/// The parsed head of a large Produce request about to be forwarded.
struct ProduceHead {
    /// Frame size, length prefix included.
    total: usize,
    version: i16,
    correlation_id: i32,
    /// False for acks=0: no answer will come.
    expects_response: bool,
    /// When the head had arrived.
    received_at: Instant,
}

/// Reads the start of the client's next frame into the framer's buffer and
/// returns its head if it is a Produce of at least [`PRODUCE_RELAY_MIN_BYTES`]
/// not yet whole there; `None` leaves the frame to the framer.
async fn produce_head<R: AsyncRead + Unpin>(
    frames: &mut FramedRead<R, FrameCodec>,
    max_frame: usize,
) -> Result<Option<ProduceHead>, SessionError> {
    // One read normally brings the whole head; what it brings of the body is
    // forwarded from the buffer before the rest moves in the kernel.
    let mut want = HEAD_FIRST_READ_BYTES;
    loop {
        let buf = frames.read_buffer();
        let total = match buf.get(..4) {
            Some(&[a, b, c, d]) => match usize::try_from(i32::from_be_bytes([a, b, c, d])) {
                // Small, bad or already whole frames are the framer's at
                // once (a zero-length frame must not wait for bytes never sent).
                Ok(len)
                    if len + 4 >= PRODUCE_RELAY_MIN_BYTES
                        && len <= max_frame
                        && buf.len() < len + 4 =>
                {
                    len + 4
                }
                _ => return Ok(None),
            },
            _ => 0,
        };
        if buf.len() >= 8 {
            if i16::from_be_bytes([buf[4], buf[5]]) != ApiKey::Produce as i16 {
                return Ok(None);
            }
            let head = &buf[4..buf.len().min(REQUEST_HEAD_MAX_BYTES)];
            let parsed = if crate::message::holds_client_id(head) {
                Request::parse(Bytes::copy_from_slice(head)).ok()
            } else {
                None
            };
            if let Some(request) = parsed {
                if let Ok(expects_response) = request.expects_response() {
                    return Ok(Some(ProduceHead {
                        total,
                        version: request.version(),
                        correlation_id: request.correlation_id(),
                        expects_response,
                        received_at: Instant::now(),
                    }));
                }
            }
            if buf.len() >= REQUEST_HEAD_MAX_BYTES {
                return Ok(None);
            }
            // The head goes on past what is here (a long client id).
            want = (buf.len() * 2).min(REQUEST_HEAD_MAX_BYTES);
        }
        let mut chunk = [0u8; 2048];
        let take = want
            .saturating_sub(frames.read_buffer().len())
            .clamp(1, chunk.len());
        let n = match frames.get_mut().read(&mut chunk[..take]).await {
            Ok(n) => n,
            Err(e) if is_hangup(&e) => {
                return Err(client_left(format!("client disconnected: {e}")))
            }
            Err(e) => return Err(fail(Blame::Client, format!("reading from client: {e}"))),
        };
        if n == 0 {
            // Closed: the framer reports it.
            return Ok(None);
        }
        frames.read_buffer_mut().extend_from_slice(&chunk[..n]);
    }
}

/// Bytes asked for by the first read of a request's head: a Produce head
/// (request header, transactional id, acks) fits with room to spare unless
/// its client id is unusually long.
const HEAD_FIRST_READ_BYTES: usize = 1024;

/// Forwards the Produce request `head` describes: what the framer holds of
/// it, then the rest socket to socket (`splice.rs`). Returns false when the
/// response loop has gone (the session is ending).
async fn forward_produce<R, W>(
    frames: &mut FramedRead<R, FrameCodec>,
    upstream_w: &mut W,
    tx: &mpsc::Sender<Pending>,
    ctx: &SessionCtx,
    relay: &mut Relay,
    head: ProduceHead,
) -> Result<bool, SessionError>
where
    R: AsyncRead + Side + Unpin,
    W: AsyncWrite + Side + Unpin,
{
    let ProduceHead {
        total,
        version,
        correlation_id,
        expects_response,
        received_at,
    } = head;
    let api_key = ApiKey::Produce;
    ctx.metrics.bytes_in.inc_by(total as u64);
    ctx.metrics.request(api_key);
    let audit = ctx.auditor.notes();
    if expects_response {
        let pending = Pending::Forwarded {
            api_key,
            api_version: version,
            correlation_id,
            forwarded_at: Instant::now(),
            request_work: received_at.elapsed(),
            amends: Amends::default(),
            audit,
        };
        // Queued before writing so the response loop expects the answer
        // before it can arrive.
        if tx.send(pending).await.is_err() {
            return Ok(false);
        }
    } else {
        submit_audit(ctx, &audit, api_key).await?;
    }
    let to_broker = |e: std::io::Error| {
        fail(
            Blame::Upstream,
            format!("writing {api_key:?} to broker: {e}"),
        )
    };
    let cut = |done: usize| {
        client_left(format!(
            "client disconnected inside a {api_key:?} request ({done} of {total} bytes forwarded)"
        ))
    };
    let held = frames.read_buffer().len().min(total);
    upstream_w
        .write_all(&frames.read_buffer()[..held])
        .await
        .map_err(to_broker)?;
    frames.read_buffer_mut().advance(held);
    let remaining = total - held;
    relay
        .pass_on(
            frames.get_mut(),
            upstream_w,
            remaining,
            &mut BytesMut::new(),
            ctx.zero_copy,
        )
        .await
        .map_err(|e| match e {
            RelayError::Read(e) if is_hangup(&e) => cut(total - remaining),
            RelayError::Read(e) => fail(Blame::Client, format!("reading from client: {e}")),
            RelayError::ReadClosed(left) => cut(total - left),
            RelayError::Write(e) => to_broker(e),
        })?;
    upstream_w.flush().await.map_err(to_broker)?;
    ctx.metrics.zero_copy_bytes.inc_by(relay.take_moved());
    Ok(true)
}

/// Hands an exchange's audit records to the log; if they cannot be recorded
/// the connection closes rather than answer unrecorded.
async fn submit_audit(
    ctx: &SessionCtx,
    audit: &crate::audit_trail::AuditNotes,
    api_key: ApiKey,
) -> Result<(), SessionError> {
    let records = audit.take();
    if records.is_empty() {
        return Ok(());
    }
    ctx.auditor.submit(records).await.map_err(|e| {
        fail(
            Blame::Internal,
            format!("audit log refused the records of a {api_key:?} exchange ({e}); closing rather than answering unrecorded"),
        )
    })
}

async fn write_client<W: AsyncWrite + Unpin>(
    w: &mut W,
    parts: &[Bytes],
    ctx: &SessionCtx,
) -> Result<(), SessionError> {
    let written = match parts {
        [one] => write_frame(w, one).await,
        _ => write_frame_parts(w, parts).await,
    };
    written.map_err(client_write_error)?;
    let len: usize = parts.iter().map(Bytes::len).sum();
    ctx.metrics.bytes_out.inc_by(len as u64 + 4);
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The session against in-memory pipes: a fake client and a fake broker
    //! that speak raw frames, so ordering and shutdown are checked exactly.

    use super::*;
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::{ProduceRequest, RequestHeader, RequestKind};
    use kafka_protocol::protocol::Encodable;
    use tokio::io::{AsyncReadExt, DuplexStream};

    fn ctx() -> Arc<SessionCtx> {
        Arc::new(SessionCtx {
            pipeline: Arc::new(Pipeline::new(vec![])),
            metrics: Arc::new(Metrics::new()),
            max_frame_bytes: 1 << 20,
            max_in_flight: 8,
            auditor: crate::audit_trail::Auditor::disabled(),
            fetch_stream_min_bytes: CUT_THROUGH_MIN_BYTES,
            fetch_reveal_stream_min_bytes: CUT_THROUGH_MIN_BYTES,
            zero_copy: true,
            fetch_lanes: 2,
        })
    }

    fn info() -> SessionInfo {
        SessionInfo::new(
            1,
            "127.0.0.1:1".parse().expect("addr"),
            Some(1),
            false,
            crate::auth::Identity::anonymous(),
        )
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    /// A request frame of `key` v`version` with an empty-ish body.
    fn request(key: ApiKey, version: i16, corr: i32, body: &RequestKind) -> Vec<u8> {
        let mut out = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(corr)
            .encode(&mut out, key.request_header_version(version))
            .expect("header");
        body.encode(&mut out, version).expect("body");
        frame(&out)
    }

    fn metadata(corr: i32) -> Vec<u8> {
        request(
            ApiKey::Metadata,
            12,
            corr,
            &RequestKind::Metadata(Default::default()),
        )
    }

    async fn read_frame(s: &mut DuplexStream) -> Option<Vec<u8>> {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).await.is_err() {
            return None;
        }
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).await.ok()?;
        Some(body)
    }

    fn corr_of_request(f: &[u8]) -> i32 {
        i32::from_be_bytes([f[4], f[5], f[6], f[7]])
    }

    /// A response frame: correlation id, then an opaque marker body.
    fn response(corr: i32, marker: u8) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_i32(corr);
        b.put_u8(0); // header v1 tagged fields
        b.put_u8(marker);
        frame(&b)
    }

    struct Rig {
        client: DuplexStream,
        broker: DuplexStream,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<Result<(), SessionError>>,
    }

    fn rig() -> Rig {
        let (client, proxy_client) = tokio::io::duplex(1 << 16);
        let (proxy_upstream, broker) = tokio::io::duplex(1 << 16);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(
            proxy_client,
            proxy_upstream,
            info(),
            ctx(),
            shutdown.clone(),
        ));
        Rig {
            client,
            broker,
            shutdown,
            task,
        }
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_and_acks0_expects_nothing() {
        let mut r = rig();
        let acks0 = request(
            ApiKey::Produce,
            9,
            2,
            &RequestKind::Produce(ProduceRequest::default().with_acks(0)),
        );
        let mut burst = metadata(1);
        burst.extend(acks0);
        burst.extend(metadata(3));
        r.client.write_all(&burst).await.expect("write");
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(corr_of_request(
                &read_frame(&mut r.broker).await.expect("forwarded"),
            ));
        }
        assert_eq!(seen, vec![1, 2, 3], "forwarded in order");
        // The broker answers 1 and 3 only (acks=0 gets no response).
        r.broker.write_all(&response(1, 0xaa)).await.expect("w");
        r.broker.write_all(&response(3, 0xbb)).await.expect("w");
        let a = read_frame(&mut r.client).await.expect("first");
        let b = read_frame(&mut r.client).await.expect("second");
        assert_eq!((corr_of_resp(&a), a[5]), (1, 0xaa));
        assert_eq!((corr_of_resp(&b), b[5]), (3, 0xbb));
        drop(r.client);
        assert!(r.task.await.expect("join").is_ok());
    }

    fn corr_of_resp(f: &[u8]) -> i32 {
        i32::from_be_bytes([f[0], f[1], f[2], f[3]])
    }

    #[tokio::test]
    async fn shutdown_answers_in_flight_requests_then_closes() {
        let mut r = rig();
        r.client.write_all(&metadata(7)).await.expect("write");
        let fwd = read_frame(&mut r.broker).await.expect("forwarded");
        assert_eq!(corr_of_request(&fwd), 7);
        r.shutdown.cancel();
        tokio::task::yield_now().await;
        r.broker.write_all(&response(7, 1)).await.expect("w");
        let got = read_frame(&mut r.client)
            .await
            .expect("answered after shutdown began");
        assert_eq!(corr_of_resp(&got), 7);
        assert!(read_frame(&mut r.client).await.is_none(), "then closed");
        assert!(r.task.await.expect("join").is_ok());
    }

    #[tokio::test]
    async fn unknown_api_key_closes_with_client_blame() {
        let mut r = rig();
        r.client
            .write_all(&frame(&[0x27, 0x0f, 0, 0, 0, 0, 0, 1, 0xff, 0xff]))
            .await
            .expect("write");
        let err = r.task.await.expect("join").expect_err("refused");
        assert_eq!(err.blame, Blame::Client);
        assert!(err.message.contains("9999"), "{}", err.message);
        assert!(read_frame(&mut r.client).await.is_none());
        assert!(
            read_frame(&mut r.broker).await.is_none(),
            "nothing forwarded"
        );
    }

    #[tokio::test]
    async fn mismatched_correlation_id_is_the_brokers_fault() {
        let mut r = rig();
        r.client.write_all(&metadata(1)).await.expect("write");
        read_frame(&mut r.broker).await.expect("forwarded");
        r.broker.write_all(&response(99, 0)).await.expect("w");
        let err = r.task.await.expect("join").expect_err("refused");
        assert_eq!(err.blame, Blame::Upstream);
    }

    /// A response frame of `len` body bytes: correlation id, header tagged
    /// fields, then a pattern that shows any byte out of place.
    fn big_response(corr: i32, len: usize) -> Vec<u8> {
        let mut b = BytesMut::with_capacity(len);
        b.put_i32(corr);
        b.put_u8(0);
        while b.len() < len {
            b.put_u8((b.len() % 251) as u8);
        }
        frame(&b)
    }

    #[tokio::test]
    async fn large_answers_are_forwarded_as_they_arrive_and_in_order() {
        let mut r = rig();
        let mut burst = metadata(1);
        burst.extend(metadata(2));
        burst.extend(metadata(3));
        r.client.write_all(&burst).await.expect("write");
        for _ in 0..3 {
            read_frame(&mut r.broker).await.expect("forwarded");
        }
        let first = big_response(1, 1 << 20);
        let second = response(2, 0xcc);
        let third = big_response(3, 300 * 1024);
        let (head, rest) = first.split_at(first.len() / 2);
        let (mut broker, head, rest) = (r.broker, head.to_vec(), rest.to_vec());
        let (second_c, third_c) = (second.clone(), third.clone());
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let writer = tokio::spawn(async move {
            broker.write_all(&head).await.expect("w");
            // The rest only once the client has seen the beginning: an
            // answer read whole before forwarding would never get there.
            go_rx.await.expect("go");
            broker.write_all(&rest).await.expect("w");
            // A small answer and the start of a large one in one write.
            let mut tail = second_c;
            tail.extend_from_slice(&third_c);
            broker.write_all(&tail).await.expect("w");
            broker
        });
        let mut start = vec![0u8; 64 * 1024];
        tokio::time::timeout(Duration::from_secs(5), r.client.read_exact(&mut start))
            .await
            .expect("the beginning of the answer arrives before its end")
            .expect("read");
        assert_eq!(start, first[..start.len()]);
        go_tx.send(()).expect("go");
        let mut rest_of_first = vec![0u8; first.len() - start.len()];
        r.client.read_exact(&mut rest_of_first).await.expect("read");
        assert_eq!(rest_of_first, first[start.len()..]);
        let got = read_frame(&mut r.client).await.expect("second");
        assert_eq!(got, second[4..]);
        let got = read_frame(&mut r.client).await.expect("third");
        assert_eq!(got, third[4..]);
        let _broker = writer.await.expect("join");
        drop(r.client);
        assert!(r.task.await.expect("join").is_ok());
    }

    #[tokio::test]
    async fn broker_closing_inside_a_large_answer_is_the_brokers_fault() {
        let mut r = rig();
        r.client.write_all(&metadata(1)).await.expect("write");
        read_frame(&mut r.broker).await.expect("forwarded");
        let answer = big_response(1, 1 << 20);
        let mut broker = r.broker;
        let half = answer[..answer.len() / 2].to_vec();
        tokio::spawn(async move {
            broker.write_all(&half).await.expect("w");
            drop(broker);
        });
        let mut got = Vec::new();
        r.client.read_to_end(&mut got).await.expect("read");
        assert!(
            got.len() < answer.len(),
            "the client never sees a whole answer"
        );
        let err = r.task.await.expect("join").expect_err("cut short");
        assert_eq!(err.blame, Blame::Upstream);
        assert!(err.message.contains("inside an answer"), "{}", err.message);
    }

    #[tokio::test]
    async fn a_last_answer_shorter_than_its_header_is_not_left_waiting() {
        // Eight bytes (length 4, correlation id) make the whole frame, and
        // the broker sends nothing after it: it must still be dealt with.
        let mut r = rig();
        r.client.write_all(&metadata(5)).await.expect("write");
        read_frame(&mut r.broker).await.expect("forwarded");
        r.broker
            .write_all(&frame(&5i32.to_be_bytes()))
            .await
            .expect("w");
        let got = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut r.client))
            .await
            .expect("answered without waiting for more bytes")
            .expect("frame");
        assert_eq!(got, 5i32.to_be_bytes());
    }

    #[tokio::test]
    async fn a_negative_answer_length_is_refused_at_once() {
        let mut r = rig();
        r.client.write_all(&metadata(1)).await.expect("write");
        read_frame(&mut r.broker).await.expect("forwarded");
        let mut bad = (-5i32).to_be_bytes().to_vec();
        bad.extend_from_slice(&1i32.to_be_bytes());
        r.broker.write_all(&bad).await.expect("w");
        let err = tokio::time::timeout(Duration::from_secs(5), r.task)
            .await
            .expect("no wait for more bytes")
            .expect("join")
            .expect_err("refused");
        assert_eq!(err.blame, Blame::Upstream);
        assert!(err.message.contains("negative"), "{}", err.message);
    }

    #[tokio::test]
    async fn broker_going_away_closes_the_client_promptly() {
        let mut r = rig();
        drop(r.broker);
        let err = r.task.await.expect("join").expect_err("upstream gone");
        assert_eq!(err.blame, Blame::Upstream);
        assert!(read_frame(&mut r.client).await.is_none());
    }

    /// Client and broker sockets of a session over loopback TCP (so its
    /// plain-TCP paths are the ones taken), and the app ends of both.
    async fn tcp_session(
        ctx: Arc<SessionCtx>,
    ) -> (
        tokio::net::TcpStream,
        tokio::net::TcpStream,
        tokio::task::JoinHandle<Result<(), SessionError>>,
    ) {
        let (client_app, client_proxy) = crate::stream::tcp_pair().await;
        let (broker_proxy, broker_app) = crate::stream::tcp_pair().await;
        let task = tokio::spawn(run(
            crate::stream::Stream::Plain(client_proxy),
            crate::stream::Stream::Plain(broker_proxy),
            info(),
            ctx,
            CancellationToken::new(),
        ));
        (client_app, broker_app, task)
    }

    #[tokio::test]
    async fn a_v17_fetch_answer_streams_with_records_moved_in_the_kernel_and_endpoints_rewritten() {
        use crate::fetch_relay::fixtures::{answer, pipeline, VERSION};
        use kafka_protocol::messages::{FetchRequest, FetchResponse, ResponseHeader};
        use kafka_protocol::protocol::Decodable;
        let ctx = Arc::new(SessionCtx {
            pipeline: Arc::new(pipeline()),
            ..Arc::into_inner(ctx()).expect("fresh")
        });
        let metrics = ctx.metrics.clone();
        let (mut client, mut broker, task) = tcp_session(ctx).await;
        let fetch = RequestKind::Fetch(FetchRequest::default());
        client
            .write_all(&request(ApiKey::Fetch, VERSION, 5, &fetch))
            .await
            .expect("write");
        let fwd = read_frame_tcp(&mut broker).await;
        assert_eq!(corr_of_request(&fwd), 5);
        let (frame, sent) = answer(vec![(2, "broker-2.kafka.internal.example")]);
        let mut reply = frame.to_vec();
        reply[4..8].copy_from_slice(&5i32.to_be_bytes());
        broker.write_all(&reply).await.expect("answer");
        let got = read_frame_tcp(&mut client).await;
        assert_eq!(got.len(), frame.len() - 4, "same length");
        let mut b = Bytes::from(got);
        let header = ResponseHeader::decode(&mut b, ApiKey::Fetch.response_header_version(VERSION))
            .expect("header");
        assert_eq!(header.correlation_id, 5);
        let out = FetchResponse::decode(&mut b, VERSION).expect("answer");
        assert_eq!(out.responses, sent.responses);
        let e = &out.node_endpoints[0];
        assert_eq!(
            (e.node_id.0, e.host.as_str(), e.port),
            (2, "proxy.example", 40002)
        );
        assert_eq!(metrics.fetch_streamed.get(), 1, "streamed, not read whole");
        assert!(
            metrics.zero_copy_bytes.get() >= 900_000,
            "records moved in the kernel: {}",
            metrics.zero_copy_bytes.get()
        );
        drop(client);
        let _ = task.await.expect("join");
    }

    fn produce(corr: i32, acks: i16, records: usize, client_id: &str) -> Vec<u8> {
        use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
        use kafka_protocol::messages::{ProduceRequest, TopicName};
        use kafka_protocol::protocol::StrBytes;
        let bytes: Vec<u8> = (0..records)
            .map(|i| (i * 7 + corr as usize) as u8)
            .collect();
        let body = RequestKind::Produce(
            ProduceRequest::default()
                .with_acks(acks)
                .with_timeout_ms(30_000)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("orders")))
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(Bytes::from(bytes)))])]),
        );
        let mut out = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(ApiKey::Produce as i16)
            .with_request_api_version(9)
            .with_correlation_id(corr)
            .with_client_id(Some(StrBytes::from_string(client_id.to_owned())))
            .encode(&mut out, ApiKey::Produce.request_header_version(9))
            .expect("header");
        body.encode(&mut out, 9).expect("body");
        frame(&out)
    }

    #[tokio::test]
    async fn large_produce_requests_move_socket_to_socket_in_order() {
        let ctx = ctx();
        let metrics = ctx.metrics.clone();
        let (mut client, mut broker, task) = tcp_session(ctx).await;
        // Large with acks=1, a small request, large with acks=0 (no answer)
        // and a long client id, a small one, and one just under the size
        // forwarded as it arrives: all pipelined.
        let sent = vec![
            produce(7, 1, 700_000, "perf"),
            metadata(8),
            produce(9, 0, 300_000, &"c".repeat(3000)),
            metadata(10),
            produce(11, -1, PRODUCE_RELAY_MIN_BYTES / 2, "perf"),
        ];
        let writer = tokio::spawn(async move {
            for f in &sent {
                client.write_all(f).await.expect("write");
            }
            (client, sent)
        });
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(frame(&read_frame_tcp(&mut broker).await));
        }
        let (mut client, sent) = writer.await.expect("writer");
        assert!(
            got == sent,
            "the broker got every request byte for byte, in order"
        );
        // Answers in request order; none for acks=0.
        for corr in [7, 8, 10, 11] {
            broker
                .write_all(&response(corr, corr as u8))
                .await
                .expect("answer");
        }
        for corr in [7, 8, 10, 11] {
            let answer = read_frame_tcp(&mut client).await;
            assert_eq!(
                i32::from_be_bytes([answer[0], answer[1], answer[2], answer[3]]),
                corr
            );
        }
        assert!(
            metrics.zero_copy_bytes.get() >= 900_000,
            "the two large requests moved in the kernel: {}",
            metrics.zero_copy_bytes.get()
        );
        let total: usize = got.iter().map(Vec::len).sum();
        assert_eq!(
            metrics.bytes_in.get(),
            total as u64,
            "every byte counted once"
        );
        drop(client);
        let _ = task.await.expect("join");
    }

    #[tokio::test]
    async fn a_produce_head_arriving_in_pieces_is_still_forwarded_as_it_arrives() {
        let ctx = ctx();
        let metrics = ctx.metrics.clone();
        let (mut client, mut broker, task) = tcp_session(ctx).await;
        let sent = produce(7, 1, 300_000, "perf-producer-client");
        // Cut inside the length, the header and the client id, then the rest.
        let cuts = [3, 9, 14, 40, sent.len()];
        let pieces = sent.clone();
        let writer = tokio::spawn(async move {
            let mut from = 0;
            for to in cuts {
                client.write_all(&pieces[from..to]).await.expect("write");
                client.flush().await.expect("flush");
                tokio::time::sleep(Duration::from_millis(20)).await;
                from = to;
            }
            client
        });
        let got = frame(&read_frame_tcp(&mut broker).await);
        let client = writer.await.expect("writer");
        assert!(got == sent, "the broker got the request byte for byte");
        assert!(
            metrics.zero_copy_bytes.get() >= 250_000,
            "the body moved in the kernel: {}",
            metrics.zero_copy_bytes.get()
        );
        // The request is still waiting for its answer: end both sides.
        drop(client);
        drop(broker);
        let _ = task.await.expect("join");
    }

    #[tokio::test]
    async fn a_frame_shorter_than_the_produce_peek_is_refused_at_once() {
        // Over plain TCP the request loop peeks at each frame's start for a
        // large Produce; a whole frame taken in by the peek must not wait
        // for bytes the client never sends.
        for bad in [vec![0u8, 0, 0, 0], vec![0, 0, 0, 3, 0, 18, 0]] {
            let (mut client, _broker, task) = tcp_session(ctx()).await;
            client.write_all(&bad).await.expect("write");
            let ended = tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("the session ends without waiting")
                .expect("join");
            assert_eq!(ended.expect_err("refused").blame, Blame::Client);
        }
    }

    /// The next frame's body from a TCP socket.
    async fn read_frame_tcp(s: &mut tokio::net::TcpStream) -> Vec<u8> {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.expect("length");
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).await.expect("body");
        body
    }
}
