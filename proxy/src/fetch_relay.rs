//! Large Fetch answers whose records no stage reads, passed on as they
//! arrive with only their closing tagged fields rewritten.
//!
//! From version 16 a Fetch answer may end with the leaders' addresses
//! (KIP-951 node endpoints), which the address stage must point at Custos.
//! They come after every record, so such answers were read whole before
//! their first byte went out: the consumer waited for the transfer in and
//! then the transfer out. Here the answer is walked as it arrives: the
//! small parts (headers, partition fields) are read, each partition's
//! records are moved on unread (socket to socket in the kernel when both
//! legs are plain TCP: `splice.rs`), and the closing tagged fields go
//! through the stages' tail hooks at their original length
//! (`fetch_stream::rewrite_tail`).

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::fetch_records::FetchError;
use crate::fetch_stream::{rewrite_tail, Step, StreamError, Walker};
use crate::pipeline::Pipeline;
use crate::splice::{Relay, RelayError};
use crate::stream::Side;
use crate::wire::WireError;

/// First read for the bytes between two partitions' records: a partition's
/// fields are a few dozen bytes, and whatever of the next records comes
/// with them is copied rather than moved.
const FIRST_READ_BYTES: usize = 1024;

/// Largest read for such bytes (long lists of aborted transactions).
const MAX_READ_BYTES: usize = 64 * 1024;

/// An answer passed on but for its last bytes.
#[derive(Debug)]
pub struct Relayed {
    /// When its first bytes went to the client.
    pub first_out: Option<Instant>,
    /// Its closing tagged fields, held back until the exchange's audit
    /// records are accepted.
    pub held: Bytes,
}

/// What [`relay`] needs besides the sockets.
pub struct RelayCtx<'a> {
    /// The stages (their tail hooks).
    pub pipeline: &'a Pipeline,
    /// The answer's version.
    pub version: i16,
    /// Whether records may move in the kernel.
    pub zero_copy: bool,
}

/// Passes the broker's Fetch answer of `total` bytes (length prefix
/// included; its first bytes already in `buf`) to the client, records
/// unread. `buf` is left empty.
pub async fn relay<R, W>(
    broker: &mut R,
    buf: &mut BytesMut,
    total: usize,
    client: &mut W,
    relay: &mut Relay,
    ctx: &RelayCtx<'_>,
) -> Result<Relayed, StreamError>
where
    R: AsyncRead + Side + Unpin,
    W: AsyncWrite + Side + Unpin,
{
    let mut walker = Walker::records_unread(ctx.version)?;
    let mut unread = total - buf.len();
    let mut pending: Vec<Bytes> = Vec::new();
    let mut first_out = None;
    let mut read_size = FIRST_READ_BYTES;
    let mut held = Bytes::new();
    loop {
        match walker.step(buf, unread == 0)? {
            Step::NeedMore => {
                let want = unread.min(read_size);
                read_size = (read_size * 2).min(MAX_READ_BYTES);
                buf.reserve(want);
                let n = (&mut *broker)
                    .take(want as u64)
                    .read_buf(buf)
                    .await
                    .map_err(StreamError::Broker)?;
                if n == 0 {
                    return Err(StreamError::BrokerClosed(total - unread, total));
                }
                unread -= n;
            }
            Step::Pass(b) => pending.push(b),
            Step::Head { head, len } => {
                read_size = FIRST_READ_BYTES;
                pending.push(head);
                let here = len.min(buf.len());
                pending.push(buf.split_to(here).freeze());
                let rest = len - here;
                if rest > unread {
                    return Err(StreamError::Malformed(FetchError::Wire(
                        WireError::Truncated {
                            what: "partition records",
                            at: total - unread,
                            need: rest,
                            have: unread,
                        },
                    )));
                }
                if rest > 0 {
                    write_pending(client, &mut pending).await?;
                    first_out.get_or_insert_with(Instant::now);
                    let span = (total - unread, total);
                    move_records(broker, buf, client, relay, rest, span, ctx.zero_copy).await?;
                    unread -= rest;
                }
            }
            Step::Tail(t) => held = rewrite_tail(ctx.pipeline, ctx.version, t)?,
            Step::Partition(_) => {
                // A `records_unread` walker gives heads, never partitions.
                return Err(StreamError::Malformed(FetchError::Wire(
                    WireError::Invalid {
                        what: "partition read with its records",
                        at: total - unread,
                        value: 0,
                    },
                )));
            }
            Step::Done => break,
        }
    }
    if !pending.is_empty() {
        write_pending(client, &mut pending).await?;
        first_out.get_or_insert_with(Instant::now);
    }
    Ok(Relayed { first_out, held })
}

/// Writes and clears `pending`.
async fn write_pending<W: AsyncWrite + Unpin>(
    client: &mut W,
    pending: &mut Vec<Bytes>,
) -> Result<(), StreamError> {
    pending.retain(|b| !b.is_empty());
    crate::frame::write_pieces(client, pending)
        .await
        .map_err(StreamError::Client)?;
    pending.clear();
    Ok(())
}

/// Moves the next `len` bytes from the broker to the client: in the kernel
/// when allowed and both legs are plain TCP, else through `scratch`.
/// `(read, total)`: bytes of the answer read before these, and its length,
/// for the error if the broker closes inside them.
async fn move_records<R, W>(
    broker: &mut R,
    scratch: &mut BytesMut,
    client: &mut W,
    relay: &mut Relay,
    len: usize,
    (read, total): (usize, usize),
    zero_copy: bool,
) -> Result<(), StreamError>
where
    R: AsyncRead + Side + Unpin,
    W: AsyncWrite + Side + Unpin,
{
    relay
        .pass_on(broker, client, len, scratch, zero_copy)
        .await
        .map_err(|e| match e {
            RelayError::Read(e) => StreamError::Broker(e),
            RelayError::ReadClosed(left) => StreamError::BrokerClosed(read + len - left, total),
            RelayError::Write(e) => StreamError::Client(e),
        })
}

/// Answers and a pipeline for tests of the relay and of the session.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::sync::Arc;

    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::fetch_response::{
        FetchableTopicResponse, NodeEndpoint, PartitionData,
    };
    use kafka_protocol::messages::{ApiKey, BrokerId, FetchResponse, ResponseHeader};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    use crate::broker_map::{BrokerMap, Routing};
    use crate::pipeline::Pipeline;
    use crate::stages::rewrite_addresses::RewriteAddresses;

    /// The Fetch version of the answers.
    pub const VERSION: i16 = 17;

    /// The address stage alone, mapping broker N to proxy.example:40000+N.
    pub fn pipeline() -> Pipeline {
        let (map, rx) = BrokerMap::new(
            "proxy.example",
            "127.0.0.1",
            Routing::PortPerBroker {
                base_port: 40000,
                max_broker_id: 10,
            },
        );
        drop(rx);
        Pipeline::new(vec![Arc::new(RewriteAddresses::new(Arc::new(map)))])
    }

    /// Records of partition `p`: bytes no stage parses, large enough to
    /// take many socket reads.
    pub fn records(p: u8, len: usize) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(p))
            .collect()
    }

    /// A version-17 answer with four partitions (one null, one empty) and
    /// the given leader endpoints.
    pub fn answer(endpoints: Vec<(i32, &'static str)>) -> (Bytes, FetchResponse) {
        let part = |i: i32, r: Option<Bytes>| {
            PartitionData::default()
                .with_partition_index(i)
                .with_high_watermark(99)
                .with_records(r)
        };
        let body = FetchResponse::default()
            .with_responses(vec![FetchableTopicResponse::default().with_partitions(
                vec![
                    part(0, Some(records(0, 700_000))),
                    part(1, None),
                    part(2, Some(Bytes::new())),
                    part(3, Some(records(3, 300_000))),
                ],
            )])
            .with_node_endpoints(
                endpoints
                    .into_iter()
                    .map(|(id, host)| {
                        NodeEndpoint::default()
                            .with_node_id(BrokerId(id))
                            .with_host(StrBytes::from_static_str(host))
                            .with_port(9092)
                    })
                    .collect(),
            );
        let mut out = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(5)
            .encode(&mut out, ApiKey::Fetch.response_header_version(VERSION))
            .expect("header");
        body.encode(&mut out, VERSION).expect("body");
        let mut f = BytesMut::new();
        f.extend_from_slice(&(out.len() as u32).to_be_bytes());
        f.extend_from_slice(&out);
        (f.freeze(), body)
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{answer, pipeline, VERSION};
    use super::*;
    use crate::stream::tcp_pair;
    use kafka_protocol::messages::{ApiKey, FetchResponse, ResponseHeader};
    use kafka_protocol::protocol::Decodable;
    use tokio::io::AsyncWriteExt;

    use crate::stream::{SplitSides, Stream};
    use tokio_util::either::Either;

    fn decode(frame: &[u8]) -> FetchResponse {
        let mut b = Bytes::copy_from_slice(&frame[4..]);
        ResponseHeader::decode(&mut b, ApiKey::Fetch.response_header_version(VERSION))
            .expect("header");
        FetchResponse::decode(&mut b, VERSION).expect("answer")
    }

    /// [`super::relay`] of an answer as long as `frame`, whose first 8 bytes
    /// were already read (as the session's peek leaves them) and whose rest
    /// comes from `broker_r`.
    async fn relay_after_peek(
        broker_r: &mut crate::stream::ReadSide,
        client_w: &mut crate::stream::WriteSide,
        frame: &[u8],
        relay: &mut Relay,
        zero_copy: bool,
    ) -> Result<Relayed, StreamError> {
        let p = pipeline();
        let ctx = RelayCtx {
            pipeline: &p,
            version: VERSION,
            zero_copy,
        };
        let mut buf = BytesMut::from(&frame[..8]);
        let relayed = super::relay(broker_r, &mut buf, frame.len(), client_w, relay, &ctx).await;
        if relayed.is_ok() {
            assert!(buf.is_empty(), "buf is left empty");
        }
        relayed
    }

    /// Relays `frame` from a broker socket to a client socket, the first
    /// 8 bytes already read (as the session's peek leaves them).
    async fn run(frame: Bytes, zero_copy: bool) -> (Vec<u8>, Relayed, Relay) {
        let (mut broker_w, broker_r) = tcp_pair().await;
        let (client_w, mut client_r) = tcp_pair().await;
        let (mut broker_r, _) = Stream::Plain(broker_r).split_sides();
        let (_, mut client_w) = Stream::Plain(client_w).split_sides();
        assert!(matches!(broker_r, Either::Left(_)));
        assert!(matches!(client_w, Either::Left(_)));
        let sent = frame.clone();
        let writer = tokio::spawn(async move {
            // In pieces, so heads and records arrive split every which way.
            for piece in sent[8..].chunks(50_001) {
                broker_w.write_all(piece).await.expect("write");
            }
            broker_w
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client_r.read_to_end(&mut got).await.expect("read");
            got
        });
        let mut relay = Relay::new();
        let relayed = relay_after_peek(&mut broker_r, &mut client_w, &frame, &mut relay, zero_copy)
            .await
            .expect("relay");
        client_w.write_all(&relayed.held).await.expect("held");
        drop(client_w);
        let _broker = writer.await.expect("writer");
        (reader.await.expect("reader"), relayed, relay)
    }

    #[tokio::test]
    async fn records_pass_unread_and_endpoints_point_at_custos_at_the_same_length() {
        for zero_copy in [true, false] {
            // A broker host longer than the proxy's: the rewrite fits.
            let (frame, sent) = answer(vec![(1, "broker-1.kafka.internal.example")]);
            let (got, relayed, relay) = run(frame.clone(), zero_copy).await;
            assert_eq!(got.len(), frame.len(), "zero_copy {zero_copy}: same length");
            assert_eq!(got[..4], frame[..4]);
            let out = decode(&got);
            assert_eq!(
                out.responses, sent.responses,
                "records and fields unchanged"
            );
            assert_eq!(out.node_endpoints.len(), 1);
            let e = &out.node_endpoints[0];
            assert_eq!(
                (e.node_id.0, e.host.as_str(), e.port),
                (1, "proxy.example", 40001)
            );
            assert!(!relayed.held.is_empty(), "the tail is held for the audit");
            // The kernel path was taken only when allowed.
            assert_eq!(relay.has_pipe(), zero_copy);
        }
    }

    #[tokio::test]
    async fn endpoints_that_cannot_fit_are_dropped_and_answers_without_them_are_untouched() {
        // "b1" is shorter than "proxy.example": the rewritten tail would not fit.
        let (frame, sent) = answer(vec![(1, "b1")]);
        let (got, _, _) = run(frame.clone(), true).await;
        assert_eq!(got.len(), frame.len());
        let out = decode(&got);
        assert_eq!(out.responses, sent.responses);
        assert!(
            out.node_endpoints.is_empty(),
            "dropped: the client asks Metadata"
        );
        // No endpoints: byte for byte what the broker sent.
        let (frame, _) = answer(vec![]);
        let (got, _, _) = run(frame.clone(), true).await;
        assert_eq!(got, frame.to_vec());
    }

    #[tokio::test]
    async fn a_broker_closing_inside_the_records_says_how_far_it_got() {
        let (frame, _) = answer(vec![]);
        for zero_copy in [true, false] {
            let (mut broker_w, broker_r) = tcp_pair().await;
            let (client_w, _client_r) = tcp_pair().await;
            let (mut broker_r, _) = Stream::Plain(broker_r).split_sides();
            let (_, mut client_w) = Stream::Plain(client_w).split_sides();
            broker_w.write_all(&frame[8..200_000]).await.expect("write");
            drop(broker_w);
            let err = relay_after_peek(
                &mut broker_r,
                &mut client_w,
                &frame,
                &mut Relay::new(),
                zero_copy,
            )
            .await
            .expect_err("cut short");
            assert!(
                matches!(err, StreamError::BrokerClosed(200_000, t) if t == frame.len()),
                "zero copy {zero_copy}: {err:?}"
            );
        }
    }
}
