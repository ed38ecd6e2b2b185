//! Finding and replacing the records of each partition in a Fetch response.
//!
//! Decryption rewrites the record batches of protected partitions and must
//! hand everything else of the broker's answer to the client as it came. The
//! body is walked with the bounded [`Reader`] instead of being decoded and
//! re-encoded whole with `kafka-protocol` (which copies every partition's
//! records, protected or not), and the new body is assembled from untouched
//! slices of the old one with only the replaced records fields, their length
//! prefixes and error codes written anew.
//!
//! Fetch v4–v12 name topics; v12 is flexible (compact lengths, tagged
//! fields). v13+ name topics by id: their partitions are listed without a
//! topic name.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use crate::record_batch;
use crate::wire::{put_bytes_len, Reader, WireError};

/// Fetch versions this module reads.
pub const VERSIONS: std::ops::RangeInclusive<i16> = 4..=18;

/// Kafka's KAFKA_STORAGE_ERROR: retriable; the consumer fetches again.
pub const KAFKA_STORAGE_ERROR: i16 = 56;

/// First flexible Fetch version.
const FIRST_FLEXIBLE: i16 = 12;

/// First Fetch version naming topics by id.
const FIRST_TOPIC_ID: i16 = 13;

/// Where one partition's records sit in a Fetch response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRecords<'a> {
    /// Topic name; `None` from v13 on, where topics are named by id.
    pub topic: Option<&'a str>,
    /// Partition index.
    pub partition: i32,
    /// The partition's error code as the broker sent it.
    pub error_code: i16,
    /// Where that error code sits in the body.
    pub error_at: usize,
    /// The records bytes in the body; `None` when the field is null.
    pub records: Option<Range<usize>>,
    /// The whole records field, its length prefix included.
    pub field: Range<usize>,
}

/// One partition's new content, by index into [`fetch_partitions`]' result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    /// Which partition.
    pub index: usize,
    /// Its new records, in pieces laid end to end (revealed in parallel).
    pub records: Vec<Bytes>,
    /// Its new error code, when it changes.
    pub error_code: Option<i16>,
}

/// Why a Fetch body could not be read or rewritten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The body is malformed.
    #[error("malformed fetch response: {0}")]
    Wire(#[from] WireError),
    /// A version this module does not read.
    #[error("fetch v{0} is not supported here (v4 to v18 are)")]
    UnsupportedVersion(i16),
    /// A replacement names a partition the body does not have.
    #[error("replacement {index} is out of range ({count} partitions)")]
    NoSuchPartition {
        /// The index given.
        index: usize,
        /// Partitions in the body.
        count: usize,
    },
    /// Replacements are not in strictly increasing partition order.
    #[error("replacements must name partitions in increasing order")]
    Unordered,
    /// Records too long for the length prefix.
    #[error("replacement records of {0} bytes are too long")]
    TooLong(usize),
}

/// Every partition of a Fetch response body, in response order, with where
/// its records sit.
pub fn fetch_partitions(
    body: &[u8],
    version: i16,
) -> Result<Vec<PartitionRecords<'_>>, FetchError> {
    if !VERSIONS.contains(&version) {
        return Err(FetchError::UnsupportedVersion(version));
    }
    let mut r = Reader::new(body, version >= FIRST_FLEXIBLE);
    let mut out = Vec::new();
    let topics = read_top(&mut r, version)?;
    for _ in 0..topics {
        let (topic, partitions) = read_topic(&mut r, version)?;
        for _ in 0..partitions {
            out.push(read_partition(&mut r, version, topic)?);
            r.tagged_fields()?;
        }
        r.tagged_fields()?;
    }
    r.tagged_fields()?;
    Ok(out)
}

/// Whether Fetch `version` is flexible (compact lengths, tagged fields).
pub fn is_flexible(version: i16) -> bool {
    version >= FIRST_FLEXIBLE
}

/// Whether Fetch `version` names topics by id instead of by name.
pub fn names_topics_by_id(version: i16) -> bool {
    version >= FIRST_TOPIC_ID
}

/// Reads the fields of a Fetch response before its topics; returns how
/// many topics follow.
pub fn read_top(r: &mut Reader<'_>, version: i16) -> Result<usize, WireError> {
    r.i32("throttle time")?;
    if version >= 7 {
        r.i16("error code")?;
        r.i32("session id")?;
    }
    Ok(r.array_len("responses")?.unwrap_or(0))
}

/// Reads a topic's name (`None` where topics are named by id) and how many
/// partitions follow.
pub fn read_topic<'a>(
    r: &mut Reader<'a>,
    version: i16,
) -> Result<(Option<&'a str>, usize), WireError> {
    let topic = if version >= FIRST_TOPIC_ID {
        r.uuid("topic id")?;
        None
    } else {
        Some(r.str("topic name")?)
    };
    Ok((topic, r.array_len("partitions")?.unwrap_or(0)))
}

/// Reads one partition of a Fetch response, from its index through its
/// records field (its tagged fields follow), with `r` at its start.
pub fn read_partition<'a>(
    r: &mut Reader<'a>,
    version: i16,
    topic: Option<&'a str>,
) -> Result<PartitionRecords<'a>, WireError> {
    let (partition, error_code, error_at) = read_partition_fields(r, version)?;
    let (records, field) = r.records_field("records")?;
    Ok(PartitionRecords {
        topic,
        partition,
        error_code,
        error_at,
        records,
        field,
    })
}

/// A partition's fields through its records' length prefix: the records'
/// length (0 when null). The records themselves need not be in `r`.
pub fn read_partition_head(r: &mut Reader<'_>, version: i16) -> Result<usize, WireError> {
    read_partition_fields(r, version)?;
    r.bytes_len("records")
}

/// A partition's fields before its records: index, error code and where
/// the error code sits.
fn read_partition_fields(r: &mut Reader<'_>, version: i16) -> Result<(i32, i16, usize), WireError> {
    let partition = r.i32("partition index")?;
    let error_at = r.position();
    let error_code = r.i16("partition error code")?;
    r.i64("high watermark")?;
    r.i64("last stable offset")?;
    if version >= 5 {
        r.i64("log start offset")?;
    }
    let aborted = r.array_len("aborted transactions")?.unwrap_or(0);
    for _ in 0..aborted {
        r.i64("producer id")?;
        r.i64("first offset")?;
        r.tagged_fields()?;
    }
    if version >= 11 {
        r.i32("preferred read replica")?;
    }
    Ok((partition, error_code, error_at))
}

/// A Fetch response frame (`frame`, whose body starts at `body_at`) with
/// the partitions named (by index into `parts`, which [`fetch_partitions`]
/// read from that body) given new records and error codes, as pieces to lay
/// end to end: untouched stretches are slices of `frame` (no copy), the
/// rewritten length prefixes and error codes small new buffers, the records
/// the replacement's own pieces. `replacements` must be in increasing index
/// order.
pub fn splice_records(
    frame: &Bytes,
    body_at: usize,
    version: i16,
    parts: &[PartitionRecords<'_>],
    replacements: &[Replacement],
) -> Result<Vec<Bytes>, FetchError> {
    let flexible = version >= FIRST_FLEXIBLE;
    let mut last = None;
    for rep in replacements {
        if rep.index >= parts.len() {
            return Err(FetchError::NoSuchPartition {
                index: rep.index,
                count: parts.len(),
            });
        }
        if last.is_some_and(|l| l >= rep.index) {
            return Err(FetchError::Unordered);
        }
        last = Some(rep.index);
    }
    let at = |offset: usize| body_at + offset;
    let mut out = Vec::with_capacity(replacements.len() * 4 + 1);
    let mut copied = 0;
    for rep in replacements {
        let part = &parts[rep.index];
        match rep.error_code {
            Some(code) => {
                out.push(frame.slice(copied..at(part.error_at)));
                out.push(Bytes::copy_from_slice(&code.to_be_bytes()));
                out.push(frame.slice(at(part.error_at + 2)..at(part.field.start)));
            }
            None => out.push(frame.slice(copied..at(part.field.start))),
        }
        let n: usize = rep.records.iter().map(Bytes::len).sum();
        let mut prefix = BytesMut::with_capacity(5);
        put_bytes_len(&mut prefix, n, flexible).map_err(FetchError::TooLong)?;
        out.push(prefix.freeze());
        out.extend(rep.records.iter().cloned());
        copied = at(part.field.end);
    }
    out.push(frame.slice(copied..));
    out.retain(|b| !b.is_empty());
    Ok(out)
}

/// `len` bytes that every client reads as a truncated trailing batch, the
/// kind brokers end fetched records with when a batch does not fit, and
/// skips: a base offset (`next`, where the next batch would start), a batch
/// length claiming more bytes than are there, then magic 2 and zeros. Under
/// 12 bytes it is zeros (too short to name a length); from 12 the length is
/// at least 49, a v2 header's, which readers check before anything else.
pub fn filler(len: usize, next: i64) -> Vec<Bytes> {
    let mut head = [0u8; 17];
    head[..8].copy_from_slice(&next.to_be_bytes());
    let claimed = i32::try_from(len.saturating_sub(11).max(49)).unwrap_or(i32::MAX);
    head[8..12].copy_from_slice(&claimed.to_be_bytes());
    head[16] = 2;
    if len < 12 {
        head = [0; 17];
    }
    let head_len = if len > 16 { 17 } else { len.min(16) };
    let mut out = vec![Bytes::copy_from_slice(&head[..head_len])];
    // The zeros after the head are cut from one static block: a streamed
    // answer's fillers add up to a fifth of its bytes, and zeroing fresh
    // memory for them cost more than the rest of laying it out.
    let mut rest = len - head_len;
    while rest > 0 {
        let n = rest.min(ZEROS.len());
        out.push(Bytes::from_static(&ZEROS[..n]));
        rest -= n;
    }
    out
}

/// What fillers' zeros are cut from.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Why new records cannot take the place of a partition's records in a
/// streamed answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "not even the first of {have} bytes of new records fits in the {room} bytes the broker sent"
)]
pub struct NoRoom {
    /// Bytes of new records.
    pub have: usize,
    /// Bytes to fill.
    pub room: usize,
}

/// New records (whole batches, in pieces laid end to end) fitted to exactly
/// `room` bytes, the length of the records they replace: shorter ones are
/// followed by a [`filler`]; longer ones lose whole batches from the end
/// (the client fetches those again from the next offset). Fails when not
/// even the first batch fits.
pub fn fit_records(pieces: Vec<Bytes>, room: usize) -> Result<Vec<Bytes>, NoRoom> {
    let have: usize = pieces.iter().map(Bytes::len).sum();
    let mut out = Vec::with_capacity(pieces.len() + 1);
    let mut used = 0;
    let mut next = None;
    for p in pieces {
        let (whole, end) = record_batch::whole_batches_within(&p, room - used);
        if whole == p.len() {
            next = end.or(next);
            used += whole;
            out.push(p);
            continue;
        }
        if whole > 0 {
            next = end;
            used += whole;
            out.push(p.slice(..whole));
        }
        break;
    }
    if used == 0 && have > 0 {
        return Err(NoRoom { have, room });
    }
    if used < room {
        out.extend(filler(room - used, next.unwrap_or(0)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{
        AbortedTransaction, FetchableTopicResponse, LeaderIdAndEpoch, PartitionData,
    };
    use kafka_protocol::messages::{FetchResponse, TopicName};
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

    fn response(v: i16) -> FetchResponse {
        let part = |i: i32, records: Option<&'static [u8]>| {
            let mut p = PartitionData::default()
                .with_partition_index(i)
                .with_high_watermark(100 + i64::from(i))
                .with_last_stable_offset(90)
                .with_log_start_offset(if v >= 5 { 3 } else { -1 })
                .with_aborted_transactions(Some(vec![AbortedTransaction::default()
                    .with_producer_id(kafka_protocol::messages::ProducerId(77))
                    .with_first_offset(12)]))
                .with_preferred_read_replica(kafka_protocol::messages::BrokerId(-1))
                .with_records(records.map(Bytes::from_static));
            if v >= FIRST_FLEXIBLE {
                p = p.with_current_leader(
                    LeaderIdAndEpoch::default()
                        .with_leader_id(kafka_protocol::messages::BrokerId(2)),
                );
            }
            p
        };
        let topic = |name: &'static str, parts| {
            let mut t = FetchableTopicResponse::default().with_partitions(parts);
            if v >= FIRST_TOPIC_ID {
                t = t.with_topic_id(Default::default());
            } else {
                t = t.with_topic(TopicName(StrBytes::from_static_str(name)));
            }
            t
        };
        FetchResponse::default()
            .with_throttle_time_ms(5)
            .with_session_id(if v >= 7 { 99 } else { 0 })
            .with_responses(vec![
                topic(
                    "orders",
                    vec![part(0, Some(b"batch-0")), part(1, None), part(2, Some(b""))],
                ),
                topic("payments", vec![part(7, Some(b"batch-7-long"))]),
            ])
    }

    fn enc(m: &FetchResponse, v: i16) -> Vec<u8> {
        let mut b = BytesMut::new();
        m.encode(&mut b, v).expect("encode");
        b.to_vec()
    }

    #[test]
    fn partitions_are_found_in_every_version() {
        for v in VERSIONS {
            let body = enc(&response(v), v);
            let parts = fetch_partitions(&body, v).expect("walk");
            assert_eq!(parts.len(), 4, "v{v}");
            let names: Vec<_> = parts.iter().map(|p| (p.topic, p.partition)).collect();
            if v < FIRST_TOPIC_ID {
                assert_eq!(
                    names,
                    [
                        (Some("orders"), 0),
                        (Some("orders"), 1),
                        (Some("orders"), 2),
                        (Some("payments"), 7)
                    ]
                );
            } else {
                assert!(names.iter().all(|(t, _)| t.is_none()), "v{v}");
            }
            let rec = |i: usize| parts[i].records.clone().map(|r| &body[r]);
            assert_eq!(rec(0), Some(&b"batch-0"[..]), "v{v}");
            assert_eq!(rec(1), None, "v{v}");
            assert_eq!(rec(2), Some(&b""[..]), "v{v}");
            assert_eq!(rec(3), Some(&b"batch-7-long"[..]), "v{v}");
        }
    }

    #[test]
    fn splicing_changes_only_the_records_and_error_codes_named() {
        for v in VERSIONS {
            let body = enc(&response(v), v);
            let parts = fetch_partitions(&body, v).expect("walk");
            let reps = [
                Replacement {
                    index: 0,
                    records: vec![Bytes::from(vec![b'x'; 100]), Bytes::from(vec![b'x'; 200])],
                    error_code: None,
                },
                Replacement {
                    index: 3,
                    records: Vec::new(),
                    error_code: Some(56),
                },
            ];
            let mut frame = b"head".to_vec();
            frame.extend_from_slice(&body);
            let frame = Bytes::from(frame);
            let pieces = splice_records(&frame, 4, v, &parts, &reps).expect("splice");
            // Untouched stretches are slices of the frame, not copies.
            assert!(pieces.iter().any(|p| p.as_ptr() == frame.as_ptr()), "v{v}");
            let out = Bytes::from(pieces.concat());
            let mut expected = response(v);
            expected.responses[0].partitions[0].records = Some(Bytes::from(vec![b'x'; 300]));
            expected.responses[1].partitions[0].records = Some(Bytes::new());
            expected.responses[1].partitions[0].error_code = 56;
            assert_eq!(&out[..4], b"head");
            assert_eq!(out[4..].to_vec(), enc(&expected, v), "v{v}");
            let back = FetchResponse::decode(&mut out.slice(4..), v).expect("decode");
            assert_eq!(back, expected, "v{v}");
        }
    }

    #[test]
    fn bad_replacements_and_bodies_are_refused() {
        let v = 12;
        let body = enc(&response(v), v);
        let parts = fetch_partitions(&body, v).expect("walk");
        let rep = |index| Replacement {
            index,
            records: Vec::new(),
            error_code: None,
        };
        assert!(matches!(
            splice_records(&Bytes::from(body.clone()), 0, v, &parts, &[rep(9)]),
            Err(FetchError::NoSuchPartition { index: 9, count: 4 })
        ));
        assert_eq!(
            splice_records(&Bytes::from(body.clone()), 0, v, &parts, &[rep(2), rep(1)]),
            Err(FetchError::Unordered)
        );
        assert_eq!(
            fetch_partitions(&body, 3),
            Err(FetchError::UnsupportedVersion(3))
        );
        for cut in [1, 10, body.len() / 2, body.len() - 1] {
            assert!(fetch_partitions(&body[..cut], v).is_err(), "cut at {cut}");
        }
    }
}
