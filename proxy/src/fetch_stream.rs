//! Large Fetch answers streamed through the stages one partition at a time.
//!
//! A consumer keeps one Fetch in flight and waits for each answer whole. An
//! answer the decrypt stage rewrites used to be read whole from the broker
//! and revealed whole before its first byte went out, so the consumer
//! waited for the transfer in, the reveal and the transfer out one after
//! the other. Streamed, each partition goes through the stages as soon as
//! its records have arrived (on the blocking pool, a few at a time) while
//! the next ones arrive and the ones before go out to the client.
//!
//! The frame's length goes out before anything is revealed, so every
//! partition keeps the exact length of the broker's records: new records
//! (revealed ones are never longer than their ciphertext: an envelope's
//! header, nonce and tag are gone, and masks are short) are followed by a
//! filler that clients read as a truncated trailing batch, which brokers
//! send routinely and every client skips. New records that would not fit at
//! all withhold their partition with a retriable error, and the session
//! reads its next answers whole ([`Streamed::no_room`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::fetch_records::{self, FetchError, KAFKA_STORAGE_ERROR};
use crate::pipeline::{
    FetchAnswer, FetchPartition, PartitionEdit, Pipeline, SessionInfo, StageError,
};
use crate::record_batch;
use crate::wire::{Reader, WireError};

/// Bytes read ahead of the partitions being handled, at most (a partition's
/// records are always read whole, however large).
const READ_AHEAD_BYTES: usize = 4 << 20;

/// Bytes asked of the broker's socket per read.
const READ_CHUNK_BYTES: usize = 256 << 10;

/// Room made at once when the read buffer is full.
const GROW_BYTES: usize = 2 * READ_AHEAD_BYTES;

/// Why a streamed answer stopped; the connection then closes, since the
/// client has part of a frame.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Reading from the broker failed.
    #[error("reading from broker: {0}")]
    Broker(std::io::Error),
    /// The broker closed the connection inside the answer.
    #[error("broker closed the connection inside an answer ({0} of {1} bytes read)")]
    BrokerClosed(usize, usize),
    /// Writing to the client failed.
    #[error("writing to client: {0}")]
    Client(std::io::Error),
    /// The answer is malformed.
    #[error(transparent)]
    Malformed(#[from] FetchError),
    /// A stage failed.
    #[error(transparent)]
    Stage(#[from] StageError),
}

/// One step through a Fetch answer, as [`Walker::step`] finds it.
#[derive(Debug)]
pub enum Step {
    /// The next bytes are not here yet.
    NeedMore,
    /// Bytes that go to the client as they are.
    Pass(Bytes),
    /// A partition, through its records.
    Partition(Part),
    /// A partition's bytes through its records' length prefix; its records
    /// (`len` bytes) come next, for the caller to move on unread before the
    /// next step ([`Walker::records_unread`] walkers only).
    Head {
        /// The partition's fields through the records' length prefix.
        head: Bytes,
        /// Length of its records.
        len: usize,
    },
    /// The answer's closing tagged fields (and anything after them).
    Tail(Bytes),
    /// The answer has been walked to its end.
    Done,
}

/// A partition of the answer: its bytes up to its records, and its records.
#[derive(Debug)]
pub struct Part {
    /// The partition's fields through the records' length prefix.
    pub head: Bytes,
    /// Where the error code sits in `head`.
    pub error_at: usize,
    /// Topic name (`None` where topics are named by id).
    pub topic: Option<Arc<str>>,
    /// Topic id as text, where topics are named by id.
    pub topic_id: Option<Arc<str>>,
    /// Partition index.
    pub partition: i32,
    /// The broker's error code.
    pub error_code: i16,
    /// The records; `None` when the field is null.
    pub records: Option<Bytes>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Topic,
    Partition,
    PartitionEnd,
    TopicEnd,
    Tail,
    Done,
}

/// Walks a Fetch answer frame (length prefix included) as its bytes
/// arrive, cutting it into bytes to pass on and partitions to handle.
#[derive(Debug)]
pub struct Walker {
    version: i16,
    flexible: bool,
    header_tags: bool,
    state: State,
    topics_left: usize,
    parts_left: usize,
    topic: Option<Arc<str>>,
    topic_id: Option<Arc<str>>,
    /// Partitions come as [`Step::Head`], their records left unread.
    records_unread: bool,
}

/// Reads with `f` from the start of `buf`: what it read and how many bytes,
/// `None` if `buf` ends first and more is coming (`complete` says whether
/// `buf` holds the rest of the frame).
fn parse<T>(
    buf: &[u8],
    complete: bool,
    flexible: bool,
    f: impl FnOnce(&mut Reader<'_>) -> Result<T, WireError>,
) -> Result<Option<(T, usize)>, FetchError> {
    let mut r = Reader::new(buf, flexible);
    match f(&mut r) {
        Ok(v) => Ok(Some((v, r.position()))),
        Err(e) if complete => Err(e.into()),
        // A short buffer reads as truncated, or as a count beyond the bytes
        // present: either way, wait for more.
        Err(_) => Ok(None),
    }
}

/// A topic id in the usual hyphenated form.
fn uuid_text(id: &[u8; 16]) -> String {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

impl Walker {
    /// A walker for a Fetch answer at `version`.
    pub fn new(version: i16) -> Result<Self, FetchError> {
        if !fetch_records::VERSIONS.contains(&version) {
            return Err(FetchError::UnsupportedVersion(version));
        }
        Ok(Self {
            version,
            flexible: fetch_records::is_flexible(version),
            header_tags: ApiKey::Fetch.response_header_version(version) >= 1,
            state: State::Head,
            topics_left: 0,
            parts_left: 0,
            topic: None,
            topic_id: None,
            records_unread: false,
        })
    }

    /// A walker for a Fetch answer at `version` whose records the caller
    /// moves on unread: partitions come as [`Step::Head`].
    pub fn records_unread(version: i16) -> Result<Self, FetchError> {
        Ok(Self {
            records_unread: true,
            ..Self::new(version)?
        })
    }

    /// Whether the next step would be a partition.
    pub fn at_partition(&self) -> bool {
        self.state == State::Partition && self.parts_left > 0
    }

    /// Whether the whole answer has been walked.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The next step, taking its bytes from the front of `buf`. `complete`
    /// says that `buf` holds everything left of the frame.
    pub fn step(&mut self, buf: &mut BytesMut, complete: bool) -> Result<Step, FetchError> {
        let (version, flexible) = (self.version, self.flexible);
        loop {
            let pass = |buf: &mut BytesMut, n: usize| Step::Pass(buf.split_to(n).freeze());
            match self.state {
                State::Head => {
                    let header_tags = self.header_tags;
                    let Some((topics, n)) = parse(buf, complete, flexible, |r| {
                        r.skip("frame length", 4)?;
                        r.i32("correlation id")?;
                        if header_tags {
                            r.tagged_fields()?;
                        }
                        fetch_records::read_top(r, version)
                    })?
                    else {
                        return Ok(Step::NeedMore);
                    };
                    self.topics_left = topics;
                    self.state = State::Topic;
                    return Ok(pass(buf, n));
                }
                State::Topic if self.topics_left == 0 => self.state = State::Tail,
                State::Topic => {
                    let by_id = fetch_records::names_topics_by_id(version);
                    let Some(((name, id, parts), n)) = parse(buf, complete, flexible, |r| {
                        let id = if by_id {
                            let mut peek = r.clone();
                            Some(uuid_text(&peek.uuid("topic id")?))
                        } else {
                            None
                        };
                        let (name, parts) = fetch_records::read_topic(r, version)?;
                        Ok((name.map(Arc::<str>::from), id.map(Arc::<str>::from), parts))
                    })?
                    else {
                        return Ok(Step::NeedMore);
                    };
                    self.topic = name;
                    self.topic_id = id;
                    self.parts_left = parts;
                    self.state = State::Partition;
                    return Ok(pass(buf, n));
                }
                State::Partition if self.parts_left == 0 => self.state = State::TopicEnd,
                State::Partition if self.records_unread => {
                    let Some((len, n)) = parse(buf, complete, flexible, |r| {
                        fetch_records::read_partition_head(r, version)
                    })?
                    else {
                        return Ok(Step::NeedMore);
                    };
                    self.state = State::PartitionEnd;
                    return Ok(Step::Head {
                        head: buf.split_to(n).freeze(),
                        len,
                    });
                }
                State::Partition => {
                    let Some((p, _)) = parse(buf, complete, flexible, |r| {
                        let p = fetch_records::read_partition(r, version, None)?;
                        Ok((p.partition, p.error_code, p.error_at, p.records, p.field))
                    })?
                    else {
                        return Ok(Step::NeedMore);
                    };
                    let (partition, error_code, error_at, records, field) = p;
                    let head_len = records.as_ref().map_or(field.end, |r| r.start);
                    let head = buf.split_to(head_len).freeze();
                    let records = records.map(|r| buf.split_to(r.len()).freeze());
                    self.state = State::PartitionEnd;
                    return Ok(Step::Partition(Part {
                        head,
                        error_at,
                        topic: self.topic.clone(),
                        topic_id: self.topic_id.clone(),
                        partition,
                        error_code,
                        records,
                    }));
                }
                State::PartitionEnd | State::TopicEnd => {
                    let Some(((), n)) = parse(buf, complete, flexible, |r| r.tagged_fields())?
                    else {
                        return Ok(Step::NeedMore);
                    };
                    if self.state == State::PartitionEnd {
                        self.parts_left -= 1;
                        self.state = State::Partition;
                    } else {
                        self.topics_left -= 1;
                        self.state = State::Topic;
                    }
                    return Ok(pass(buf, n));
                }
                State::Tail => {
                    // The answer's own tagged fields, and anything after
                    // them, go as they are once all of it is here.
                    if !complete {
                        return Ok(Step::NeedMore);
                    }
                    parse(buf, true, flexible, |r| r.tagged_fields())?;
                    self.state = State::Done;
                    let n = buf.len();
                    return Ok(Step::Tail(buf.split_to(n).freeze()));
                }
                State::Done => return Ok(Step::Done),
            }
        }
    }
}

/// What handling one step gave: bytes for the client, in order.
struct Out {
    pieces: Vec<Bytes>,
    /// It was a partition handed to the stages.
    partition: bool,
    /// Its new records did not fit.
    no_room: bool,
}

type OutFuture<'a> = Pin<Box<dyn Future<Output = Result<Out, StreamError>> + Send + 'a>>;

/// A streamed answer, written but for its last bytes.
#[derive(Debug)]
pub struct Streamed {
    /// When its first bytes went to the client.
    pub first_out: Option<Instant>,
    /// Its last bytes, held back until the exchange's audit records are
    /// accepted: a client cannot use a frame it does not have whole.
    pub held: Bytes,
    /// Partitions withheld because their new records did not fit their
    /// length; if any, answers should be read whole for a while.
    pub no_room: u64,
}

/// What [`stream`] needs from the session.
pub struct StreamCtx<'a> {
    /// The stages.
    pub pipeline: &'a Pipeline,
    /// The connection.
    pub session: &'a SessionInfo,
    /// The exchange.
    pub answer: &'a FetchAnswer,
    /// Partitions handled at once.
    pub lanes: usize,
}

/// Streams the broker's Fetch answer to the client through the stages'
/// partition hooks. `buf` holds the frame's first bytes (its length prefix
/// first); the other `total - buf.len()` are read from `broker` into it. It
/// is left empty, its allocation kept for the session's next answer (see
/// [`reuse`]).
pub async fn stream<R, W>(
    broker: &mut R,
    buf: &mut BytesMut,
    total: usize,
    client: &mut W,
    ctx: &StreamCtx<'_>,
) -> Result<Streamed, StreamError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut walker = Walker::new(ctx.answer.api_version)?;
    let mut unread = total - buf.len();
    let mut queue: FuturesOrdered<OutFuture<'_>> = FuturesOrdered::new();
    let mut in_flight = 0usize;
    let mut writer = Writer::default();
    let mut no_room = 0u64;
    loop {
        let mut blocked = false;
        // Steps until the frame is walked or every lane is busy.
        while !(walker.is_done() || walker.at_partition() && in_flight >= ctx.lanes) {
            match walker.step(buf, unread == 0)? {
                Step::NeedMore => {
                    blocked = true;
                    break;
                }
                Step::Pass(b) => queue.push_back(Box::pin(std::future::ready(Ok(Out {
                    pieces: vec![b],
                    partition: false,
                    no_room: false,
                })))),
                Step::Tail(t) => {
                    let t = rewrite_tail(ctx.pipeline, ctx.answer.api_version, t)?;
                    queue.push_back(Box::pin(std::future::ready(Ok(Out {
                        pieces: vec![t],
                        partition: false,
                        no_room: false,
                    }))));
                }
                // Not from a walker made by `Walker::new`.
                Step::Head { .. } => {
                    return Err(StreamError::Malformed(FetchError::Wire(
                        WireError::Invalid {
                            what: "partition walked without its records",
                            at: total - unread - buf.len(),
                            value: 0,
                        },
                    )))
                }
                Step::Partition(p) => match p.records.clone().filter(|r| !r.is_empty()) {
                    None => queue.push_back(Box::pin(std::future::ready(Ok(Out {
                        pieces: [Some(p.head), p.records].into_iter().flatten().collect(),
                        partition: false,
                        no_room: false,
                    })))),
                    Some(records) => {
                        in_flight += 1;
                        queue.push_back(Box::pin(handle_partition(ctx, p, records)));
                    }
                },
                Step::Done => break,
            }
        }
        // Everything ready goes out in one write.
        let mut ready = Vec::new();
        while let Some(Some(out)) = queue.next().now_or_never() {
            let out = out?;
            in_flight -= usize::from(out.partition);
            no_room += u64::from(out.no_room);
            ready.extend(out.pieces);
        }
        if !ready.is_empty() {
            writer.write(client, ready).await?;
            continue;
        }
        if walker.is_done() && queue.is_empty() {
            break;
        }
        let can_read = unread > 0 && (blocked || buf.len() < READ_AHEAD_BYTES);
        if !can_read && queue.is_empty() {
            // Unreachable for a frame the walker reads: it either steps,
            // needs bytes that are coming, or fails on a complete buffer.
            return Err(StreamError::Malformed(FetchError::Wire(
                WireError::Truncated {
                    what: "fetch answer",
                    at: total - unread - buf.len(),
                    need: 1,
                    have: 0,
                },
            )));
        }
        tokio::select! {
            out = queue.next(), if !queue.is_empty() => {
                if let Some(out) = out {
                    let out = out?;
                    in_flight -= usize::from(out.partition);
                    no_room += u64::from(out.no_room);
                    writer.write(client, out.pieces).await?;
                }
            }
            n = read_some(broker, buf, unread), if can_read => {
                let n = n?;
                if n == 0 {
                    return Err(StreamError::BrokerClosed(total - unread, total));
                }
                unread -= n;
            }
        }
    }
    Ok(Streamed {
        first_out: writer.first_out,
        held: writer.held.unwrap_or_default(),
        no_room,
    })
}

/// The answer's closing tagged fields after the stages' tail hooks, at
/// their original length (the frame's length went out first): a shorter
/// result is padded with a tagged field clients skip as unknown; one too
/// long to fit is dropped for padding alone (for node endpoints, the
/// client then asks Metadata where the leaders are).
pub fn rewrite_tail(pipeline: &Pipeline, version: i16, tail: Bytes) -> Result<Bytes, StreamError> {
    let Some(new) = pipeline.on_fetch_tail(version, &tail)? else {
        return Ok(tail);
    };
    crate::wire::pad_tagged_fields(&new, tail.len())
        .or_else(|| {
            tracing::debug!(
                was = tail.len(),
                rewritten = new.len(),
                "rewritten Fetch tagged fields do not fit the answer; dropped"
            );
            crate::wire::pad_tagged_fields(&[0], tail.len())
        })
        .map(Bytes::from)
        .ok_or(StreamError::Malformed(FetchError::Wire(
            WireError::Invalid {
                what: "closing tagged fields too short to rewrite",
                at: 0,
                value: tail.len() as i64,
            },
        )))
}

/// Makes `spare` (the buffer the session's last answer was streamed through)
/// ready for an answer of `total` bytes whose first bytes are `head`.
///
/// A fresh buffer of several MiB comes from the operating system as pages
/// that fault in and are zeroed as the socket fills them: 10 % of Custos's
/// CPU when consuming encrypted records. Once every piece of the last answer
/// has gone out, `reserve` takes its allocation back instead; while some are
/// still held, it allocates anew. A session keeps at most one such buffer
/// (about [`GROW_BYTES`]), and only after it has streamed an answer.
pub fn reuse(spare: &mut BytesMut, head: &[u8], total: usize) {
    spare.clear();
    spare.reserve(total.min(GROW_BYTES).max(head.len()));
    spare.extend_from_slice(head);
}

/// Reads up to a chunk of the frame's `unread` bytes into `buf`.
async fn read_some<R: AsyncRead + Unpin>(
    broker: &mut R,
    buf: &mut BytesMut,
    unread: usize,
) -> Result<usize, StreamError> {
    let want = unread.min(READ_CHUNK_BYTES);
    if buf.capacity() - buf.len() < want {
        // Growing a buffer whose front went out as pieces copies whatever
        // it still holds (a partition's records arrive over many reads), so
        // room is made for several chunks at once: growing by one chunk
        // copied each partition about twice over.
        buf.reserve(unread.min(GROW_BYTES).max(want));
    }
    (&mut *broker)
        .take(want as u64)
        .read_buf(buf)
        .await
        .map_err(StreamError::Broker)
}

/// Hands one partition to the stages and lays out what goes to the client.
async fn handle_partition(
    ctx: &StreamCtx<'_>,
    p: Part,
    records: Bytes,
) -> Result<Out, StreamError> {
    // A truncated trailing batch is not the stages' business; if they
    // replace the records it goes, replaced by the filler.
    let (whole, _) = record_batch::whole_batches_within(&records, usize::MAX);
    let partition = FetchPartition {
        topic: p.topic.clone(),
        topic_id: p.topic_id.clone(),
        partition: p.partition,
        error_code: p.error_code,
        records: records.slice(..whole),
    };
    let edit = ctx
        .pipeline
        .on_fetch_partition(ctx.session, ctx.answer, &partition)
        .await?;
    Ok(lay_out(p, records, edit))
}

/// A partition's bytes for the client: its head (with a new error code if
/// any) and records of exactly the broker's length.
fn lay_out(p: Part, records: Bytes, edit: Option<PartitionEdit>) -> Out {
    let room = records.len();
    let Some(edit) = edit else {
        return Out {
            pieces: vec![p.head, records],
            partition: true,
            no_room: false,
        };
    };
    let mut no_room = false;
    let (error_code, body) = match (edit.error_code, edit.records) {
        (Some(code), _) => (Some(code), fetch_records::filler(room, 0)),
        (None, None) => (None, vec![records]),
        (None, Some(new)) => match fetch_records::fit_records(new, room) {
            Ok(body) => (None, body),
            Err(e) => {
                tracing::warn!(
                    topic = p.topic.as_deref().unwrap_or("<by id>"),
                    partition = p.partition,
                    error = %e,
                    "partition withheld from a streamed answer; the next answers are read whole"
                );
                no_room = true;
                (Some(KAFKA_STORAGE_ERROR), fetch_records::filler(room, 0))
            }
        },
    };
    let head = match error_code {
        Some(code) => {
            let mut h = BytesMut::from(&p.head[..]);
            h[p.error_at..p.error_at + 2].copy_from_slice(&code.to_be_bytes());
            h.freeze()
        }
        None => p.head,
    };
    let mut pieces = Vec::with_capacity(body.len() + 1);
    pieces.push(head);
    pieces.extend(body);
    Out {
        pieces,
        partition: true,
        no_room,
    }
}

/// Writes an answer's pieces as they come, holding back its last byte.
#[derive(Default)]
struct Writer {
    held: Option<Bytes>,
    first_out: Option<Instant>,
}

impl Writer {
    async fn write<W: AsyncWrite + Unpin>(
        &mut self,
        client: &mut W,
        pieces: Vec<Bytes>,
    ) -> Result<(), StreamError> {
        let pieces: Vec<Bytes> = pieces.into_iter().filter(|p| !p.is_empty()).collect();
        let Some(last) = pieces.last().map(Bytes::len) else {
            return Ok(());
        };
        let mut out: Vec<Bytes> = self.held.take().into_iter().collect();
        out.extend(pieces);
        if let Some(tail) = out.last_mut() {
            self.held = Some(tail.split_off(last - 1));
        }
        crate::frame::write_pieces(client, &out)
            .await
            .map_err(StreamError::Client)?;
        self.first_out.get_or_insert_with(Instant::now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::{FetchResponse, ResponseHeader, TopicName};
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };

    use crate::pipeline::Stage;

    /// A batch of `n` records from `offset`, each value `len` bytes of `fill`.
    fn batch(offset: i64, n: i64, len: usize, fill: u8) -> Bytes {
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: offset + i,
                sequence: -1,
                timestamp: 1_000,
                key: None,
                value: Some(Bytes::from(vec![fill; len])),
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            records.iter(),
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .expect("encode");
        buf.freeze()
    }

    /// Records of two batches and, when `tail`, the start of a third that
    /// the broker cut off.
    fn records(base: i64, tail: bool) -> Bytes {
        let mut r = BytesMut::new();
        r.extend_from_slice(&batch(base, 3, 200, b'c'));
        r.extend_from_slice(&batch(base + 3, 2, 200, b'c'));
        if tail {
            r.extend_from_slice(&batch(base + 5, 2, 200, b'c')[..80]);
        }
        r.freeze()
    }

    fn response(v: i16) -> FetchResponse {
        let part = |i: i32, records: Option<Bytes>| {
            PartitionData::default()
                .with_partition_index(i)
                .with_high_watermark(1000)
                .with_records(records)
        };
        let topic = |name: &'static str, parts| {
            let mut t = FetchableTopicResponse::default().with_partitions(parts);
            if fetch_records::names_topics_by_id(v) {
                t = t.with_topic_id(Default::default());
            } else {
                t = t.with_topic(TopicName(StrBytes::from_static_str(name)));
            }
            t
        };
        FetchResponse::default().with_responses(vec![
            topic(
                "orders",
                vec![
                    part(0, Some(records(0, true))),
                    part(1, None),
                    part(2, Some(Bytes::new())),
                    part(3, Some(records(40, false))),
                ],
            ),
            topic("plain", vec![part(0, Some(records(7, true)))]),
        ])
    }

    fn frame(v: i16) -> Bytes {
        let mut body = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(7)
            .encode(&mut body, ApiKey::Fetch.response_header_version(v))
            .expect("header");
        response(v).encode(&mut body, v).expect("body");
        let mut f = BytesMut::new();
        f.extend_from_slice(&(body.len() as u32).to_be_bytes());
        f.extend_from_slice(&body);
        f.freeze()
    }

    #[test]
    fn the_walker_cuts_every_version_however_the_bytes_arrive() {
        for v in fetch_records::VERSIONS {
            let f = frame(v);
            for chunk in [1usize, 7, 100, f.len()] {
                let mut w = Walker::new(v).expect("version");
                let mut buf = BytesMut::new();
                let mut fed = 0;
                let mut out = Vec::new();
                let mut parts = Vec::new();
                while !w.is_done() {
                    match w.step(&mut buf, fed == f.len()).expect("walk") {
                        Step::NeedMore => {
                            let n = chunk.min(f.len() - fed);
                            assert!(n > 0, "v{v}: needs bytes past the end");
                            buf.extend_from_slice(&f[fed..fed + n]);
                            fed += n;
                        }
                        Step::Pass(b) => out.extend_from_slice(&b),
                        Step::Partition(p) => {
                            out.extend_from_slice(&p.head);
                            assert_eq!(
                                i16::from_be_bytes([p.head[p.error_at], p.head[p.error_at + 1]]),
                                p.error_code
                            );
                            if let Some(r) = &p.records {
                                out.extend_from_slice(r);
                            }
                            parts.push((p.topic, p.topic_id.is_some(), p.partition, p.records));
                        }
                        Step::Tail(b) => out.extend_from_slice(&b),
                        Step::Head { .. } => panic!("v{v}: a head from a walker reading records"),
                        Step::Done => break,
                    }
                }
                assert_eq!(
                    out, f,
                    "v{v} in chunks of {chunk}: the pieces are the frame"
                );
                assert!(buf.is_empty());
                let by_id = fetch_records::names_topics_by_id(v);
                let name = |n: &str| (!by_id).then(|| Arc::<str>::from(n));
                let expected = vec![
                    (name("orders"), by_id, 0, Some(records(0, true))),
                    (name("orders"), by_id, 1, None),
                    (name("orders"), by_id, 2, Some(Bytes::new())),
                    (name("orders"), by_id, 3, Some(records(40, false))),
                    (name("plain"), by_id, 0, Some(records(7, true))),
                ];
                assert_eq!(parts, expected, "v{v} in chunks of {chunk}");
            }
        }
    }

    #[test]
    fn a_truncated_or_corrupt_answer_is_refused_once_whole() {
        let f = frame(12);
        let mut w = Walker::new(12).expect("version");
        let mut buf = BytesMut::from(&f[..f.len() / 2]);
        let mut failed = false;
        for _ in 0..20 {
            match w.step(&mut buf, true) {
                Err(_) => {
                    failed = true;
                    break;
                }
                Ok(Step::Done) => break,
                Ok(_) => {}
            }
        }
        assert!(failed, "half a frame, said to be complete, is malformed");
        assert!(matches!(
            Walker::new(3),
            Err(FetchError::UnsupportedVersion(3))
        ));
    }

    /// What the test stage does to partitions of "orders".
    #[derive(Clone, Copy)]
    enum Change {
        /// Values cut to 50 bytes.
        Shrink,
        /// The records twice over: only the first copy fits.
        Double,
        /// One batch longer than the whole partition.
        Grow,
        /// A retriable error.
        Fail,
    }

    struct Editor(Change);

    #[async_trait]
    impl Stage for Editor {
        fn name(&self) -> &'static str {
            "editor"
        }
        fn response_api_keys(&self) -> &[ApiKey] {
            &[ApiKey::Fetch]
        }
        fn streams_fetch(&self, _version: i16) -> bool {
            true
        }
        async fn on_fetch_partition(
            &self,
            _session: &SessionInfo,
            _answer: &FetchAnswer,
            part: &FetchPartition,
        ) -> Result<Option<PartitionEdit>, StageError> {
            if part.topic.as_deref() != Some("orders") {
                return Ok(None);
            }
            let records = match self.0 {
                Change::Shrink => {
                    let mut b = part.records.clone();
                    let mut out = Vec::new();
                    for batch in RecordBatchDecoder::decode_all(&mut b).expect("decode") {
                        let first = batch.records[0].offset;
                        out.push(self::batch(first, batch.records.len() as i64, 50, b'p'));
                    }
                    out
                }
                Change::Double => vec![part.records.clone(), part.records.clone()],
                Change::Grow => vec![batch(0, 1, part.records.len() + 200, b'g')],
                Change::Fail => {
                    return Ok(Some(PartitionEdit {
                        records: None,
                        error_code: Some(KAFKA_STORAGE_ERROR),
                    }))
                }
            };
            Ok(Some(PartitionEdit {
                records: Some(records),
                error_code: None,
            }))
        }
    }

    /// Streams the frame of `v` through an [`Editor`]; returns what the
    /// client got before the held bytes, the held bytes, and the result.
    async fn run(v: i16, change: Change) -> (Vec<u8>, Streamed) {
        let f = frame(v);
        run_with(v, change, &mut BytesMut::from(&f[..10])).await
    }

    /// [`run`] reading into `buf`, which holds the frame's first 10 bytes.
    async fn run_with(v: i16, change: Change, buf: &mut BytesMut) -> (Vec<u8>, Streamed) {
        let pipeline = Pipeline::new(vec![Arc::new(Editor(change))]);
        let session = SessionInfo::new(
            1,
            "127.0.0.1:1".parse().expect("addr"),
            Some(1),
            false,
            crate::auth::Identity::anonymous(),
        );
        let answer = FetchAnswer {
            api_version: v,
            correlation_id: 7,
            audit: crate::audit_trail::Auditor::disabled().notes(),
        };
        let ctx = StreamCtx {
            pipeline: &pipeline,
            session: &session,
            answer: &answer,
            lanes: 2,
        };
        let f = frame(v);
        let mut broker = &f[10..];
        let mut client = Vec::new();
        let s = stream(&mut broker, buf, f.len(), &mut client, &ctx)
            .await
            .expect("stream");
        assert!(broker.is_empty(), "the whole frame was read");
        (client, s)
    }

    /// The partitions of a streamed frame, decoded.
    fn decoded(v: i16, client: &[u8], held: &Bytes) -> FetchResponse {
        let mut all = client.to_vec();
        all.extend_from_slice(held);
        let mut b = Bytes::from(all).slice(4..);
        ResponseHeader::decode(&mut b, ApiKey::Fetch.response_header_version(v)).expect("header");
        FetchResponse::decode(&mut b, v).expect("body")
    }

    /// The whole batches of `records` decoded, and the bytes after them.
    fn batches_and_rest(records: &Bytes) -> (Vec<kafka_protocol::records::Record>, Bytes) {
        let (whole, _) = record_batch::whole_batches_within(records, usize::MAX);
        let mut b = records.slice(..whole);
        let batches = RecordBatchDecoder::decode_all(&mut b).expect("decode");
        (
            batches.into_iter().flat_map(|b| b.records).collect(),
            records.slice(whole..),
        )
    }

    #[tokio::test]
    async fn the_next_answer_reuses_the_buffer_once_the_last_has_gone_out() {
        let v = 12;
        let f = frame(v);
        let mut spare = BytesMut::new();
        reuse(&mut spare, &f[..10], f.len());
        let first = spare.as_ptr();
        let (client, s) = run_with(v, Change::Shrink, &mut spare).await;
        assert!(spare.is_empty(), "the answer was read whole");
        // The held byte still points into the buffer: the next answer gets
        // another, and the first is freed when the byte has gone out.
        reuse(&mut spare, &f[..10], f.len());
        assert_ne!(spare.as_ptr(), first);
        assert_eq!(&spare[..], &f[..10]);
        let second = spare.as_ptr();
        drop((client, s));
        let (client, s) = run_with(v, Change::Shrink, &mut spare).await;
        assert_eq!(client.len() + s.held.len(), f.len());
        drop(s);
        // Nothing of the answer is held any more: its allocation is taken back.
        reuse(&mut spare, &f[..10], f.len());
        assert_eq!(spare.as_ptr(), second);
        assert_eq!(&spare[..], &f[..10]);
    }

    #[tokio::test]
    async fn shorter_records_are_padded_to_the_brokers_length() {
        for v in [4, 11, 12] {
            let (client, s) = run(v, Change::Shrink).await;
            assert_eq!(s.held.len(), 1, "the last byte waits for the audit");
            assert_eq!(client.len() + 1, frame(v).len(), "v{v}: same length");
            assert_eq!(s.no_room, 0);
            let got = decoded(v, &client, &s.held);
            let want = response(v);
            for (t, (gt, wt)) in got.responses.iter().zip(&want.responses).enumerate() {
                for (gp, wp) in gt.partitions.iter().zip(&wt.partitions) {
                    let (g, w) = (gp.records.clone(), wp.records.clone());
                    assert_eq!(
                        g.as_ref().map(Bytes::len),
                        w.as_ref().map(Bytes::len),
                        "v{v}"
                    );
                    if t == 1 || g.as_ref().is_none_or(Bytes::is_empty) {
                        assert_eq!(g, w, "v{v}: untouched partitions pass as they were");
                        continue;
                    }
                    let (records, rest) = batches_and_rest(&g.expect("records"));
                    let (original, _) = batches_and_rest(&w.expect("records"));
                    assert_eq!(records.len(), original.len(), "v{v}");
                    for (r, o) in records.iter().zip(&original) {
                        assert_eq!(r.offset, o.offset);
                        assert_eq!(r.value.as_deref(), Some(&[b'p'; 50][..]));
                    }
                    // The filler: a batch claiming more than is left.
                    assert!(rest.len() > 17, "v{v}");
                    let claimed = i32::from_be_bytes(rest[8..12].try_into().expect("4"));
                    assert!(claimed as usize + 12 > rest.len());
                    assert!(claimed >= 49);
                    assert_eq!(rest[16], 2);
                    assert_eq!(
                        i64::from_be_bytes(rest[..8].try_into().expect("8")),
                        records.last().expect("one").offset + 1
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn records_that_do_not_fit_lose_batches_or_withhold_the_partition() {
        let v = 12;
        let (client, s) = run(v, Change::Double).await;
        assert_eq!(s.no_room, 0);
        let got = decoded(v, &client, &s.held);
        let p0 = got.responses[0].partitions[0]
            .records
            .clone()
            .expect("records");
        let (records, rest) = batches_and_rest(&p0);
        assert_eq!(records.len(), 5, "the first copy's whole batches fit");
        assert_eq!(rest.len(), 80, "in the place of the broker's cut-off batch");

        let (client, s) = run(v, Change::Grow).await;
        assert_eq!(s.no_room, 2, "both partitions of orders with records");
        let got = decoded(v, &client, &s.held);
        for p in [0, 3] {
            let part = &got.responses[0].partitions[p];
            assert_eq!(part.error_code, KAFKA_STORAGE_ERROR);
            let r = part.records.clone().expect("records");
            assert_eq!(
                r.len(),
                response(v).responses[0].partitions[p]
                    .records
                    .as_ref()
                    .expect("r")
                    .len()
            );
            assert_eq!(batches_and_rest(&r).0.len(), 0, "nothing readable");
        }
        assert_eq!(got.responses[1], response(v).responses[1]);

        let (client, s) = run(v, Change::Fail).await;
        assert_eq!(s.no_room, 0);
        let got = decoded(v, &client, &s.held);
        assert_eq!(
            got.responses[0].partitions[0].error_code,
            KAFKA_STORAGE_ERROR
        );
        assert_eq!(
            got.responses[0].partitions[1].error_code, 0,
            "no records, not handled"
        );
    }

    #[test]
    fn fillers_read_as_a_truncated_batch_at_every_length() {
        for len in 0..200 {
            let f: Vec<u8> = fetch_records::filler(len, 77).concat();
            assert_eq!(f.len(), len);
            assert_eq!(
                record_batch::whole_batches_within(&f, usize::MAX),
                (0, None)
            );
            if len >= 12 {
                let claimed = i32::from_be_bytes(f[8..12].try_into().expect("4"));
                // Java's reader refuses a claimed size under 14.
                assert!(claimed >= 49 && claimed as usize + 12 > len, "{len}");
            }
            if len > 16 {
                assert_eq!(f[16], 2, "magic 2: no reader calls it corrupt");
            }
        }
    }
}
