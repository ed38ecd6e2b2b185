//! Finding and replacing the records of each partition in a Produce request.
//!
//! Field encryption rewrites the record batches of some partitions and must
//! forward everything else of the request exactly as the client sent it. The
//! body is walked with the bounded [`Reader`] (never decoded with
//! `kafka-protocol`, whose decoders size vectors from hostile counts), and a
//! new body is assembled from untouched slices of the old one with only the
//! replaced records fields, and their length prefixes, written anew.
//!
//! Produce v3–v12 name topics; v9+ are flexible (compact lengths, tagged
//! fields). v13+ name topics by id and are not read here.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use crate::wire::{put_bytes_len, Reader, WireError};

/// Produce versions whose bodies this module reads.
pub const VERSIONS: std::ops::RangeInclusive<i16> = 3..=12;

/// First flexible Produce version.
const FIRST_FLEXIBLE: i16 = 9;

/// Where one partition's records sit in a Produce body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRecords<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Partition index.
    pub partition: i32,
    /// The records bytes in the body; `None` when the field is null.
    pub records: Option<Range<usize>>,
    /// The whole records field, its length prefix included.
    pub field: Range<usize>,
}

/// Why a Produce body could not be read or rewritten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProduceError {
    /// The body is malformed.
    #[error("malformed produce request: {0}")]
    Wire(#[from] WireError),
    /// A version this module does not read.
    #[error("produce v{0} is not supported here (v3 to v12 are)")]
    UnsupportedVersion(i16),
    /// A replacement names a partition the body does not have.
    #[error("replacement {index} is out of range ({count} partitions)")]
    NoSuchPartition {
        /// The index given.
        index: usize,
        /// Partitions in the body.
        count: usize,
    },
    /// Two replacements name the same partition.
    #[error("partition {0} is replaced twice")]
    DuplicateReplacement(usize),
    /// Records too long for the length prefix.
    #[error("replacement records of {0} bytes are too long")]
    TooLong(usize),
}

fn check_version(version: i16) -> Result<bool, ProduceError> {
    if !VERSIONS.contains(&version) {
        return Err(ProduceError::UnsupportedVersion(version));
    }
    Ok(version >= FIRST_FLEXIBLE)
}

/// Every partition of a Produce body, in request order, with where its
/// records sit.
pub fn produce_partitions(
    body: &[u8],
    version: i16,
) -> Result<Vec<PartitionRecords<'_>>, ProduceError> {
    let flexible = check_version(version)?;
    let mut r = Reader::new(body, flexible);
    r.nullable_str("transactional id")?;
    r.i16("acks")?;
    r.i32("timeout")?;
    let mut out = Vec::new();
    let topics = r.array_len("topics")?.unwrap_or(0);
    for _ in 0..topics {
        let topic = r.str("topic name")?;
        let partitions = r.array_len("partitions")?.unwrap_or(0);
        for _ in 0..partitions {
            let partition = r.i32("partition")?;
            let (records, field) = r.records_field("records")?;
            out.push(PartitionRecords {
                topic,
                partition,
                records,
                field,
            });
            r.tagged_fields()?;
        }
        r.tagged_fields()?;
    }
    r.tagged_fields()?;
    Ok(out)
}

/// `head` followed by a copy of a Produce body with the records of the
/// partitions named (by index into [`produce_partitions`]' result) replaced
/// and their length prefixes rewritten; every other byte is kept. The head
/// (a request header) is written here so a request is copied once, not twice.
pub fn splice_records(
    head: &[u8],
    body: &[u8],
    version: i16,
    replacements: &[(usize, Bytes)],
) -> Result<Bytes, ProduceError> {
    let flexible = version >= FIRST_FLEXIBLE;
    let parts = produce_partitions(body, version)?;
    let mut order: Vec<&(usize, Bytes)> = replacements.iter().collect();
    order.sort_by_key(|(i, _)| *i);
    for pair in order.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(ProduceError::DuplicateReplacement(pair[0].0));
        }
    }
    let mut size = head.len() + body.len();
    for (i, records) in &order {
        let part = parts.get(*i).ok_or(ProduceError::NoSuchPartition {
            index: *i,
            count: parts.len(),
        })?;
        size = size - part.field.len() + records.len() + 5;
    }
    let mut out = BytesMut::with_capacity(size);
    out.put_slice(head);
    let mut copied = 0;
    for (i, records) in order {
        let field = &parts[*i].field;
        out.put_slice(&body[copied..field.start]);
        put_bytes_len(&mut out, records.len(), flexible).map_err(ProduceError::TooLong)?;
        out.put_slice(records);
        copied = field.end;
    }
    out.put_slice(&body[copied..]);
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, TopicName, TransactionalId};
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

    fn s(x: &'static str) -> StrBytes {
        StrBytes::from_static_str(x)
    }

    fn enc(m: &ProduceRequest, v: i16) -> Vec<u8> {
        let mut b = BytesMut::new();
        m.encode(&mut b, v).expect("encode");
        b.to_vec()
    }

    fn request(v: i16) -> ProduceRequest {
        let part = |i: i32, records: Option<&'static [u8]>| {
            let mut p = PartitionProduceData::default()
                .with_index(i)
                .with_records(records.map(Bytes::from_static));
            if v >= FIRST_FLEXIBLE {
                p.unknown_tagged_fields
                    .insert(9, Bytes::from_static(b"tag"));
            }
            p
        };
        ProduceRequest::default()
            .with_transactional_id(Some(TransactionalId(s("txn-1"))))
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(s("orders")))
                    .with_partition_data(vec![
                        part(0, Some(b"batch-0")),
                        part(3, None),
                        part(4, Some(b"")),
                    ]),
                TopicProduceData::default()
                    .with_name(TopicName(s("payments")))
                    .with_partition_data(vec![part(1, Some(b"batch-1"))]),
            ])
    }

    #[test]
    fn partitions_are_found_at_every_version() {
        for v in VERSIONS {
            let body = enc(&request(v), v);
            let parts = produce_partitions(&body, v).expect("parts");
            let seen: Vec<_> = parts
                .iter()
                .map(|p| (p.topic, p.partition, p.records.clone().map(|r| &body[r])))
                .collect();
            assert_eq!(
                seen,
                vec![
                    ("orders", 0, Some(&b"batch-0"[..])),
                    ("orders", 3, None),
                    ("orders", 4, Some(&b""[..])),
                    ("payments", 1, Some(&b"batch-1"[..])),
                ],
                "v{v}"
            );
            // The field is the prefix plus the records.
            let prefix = if v >= FIRST_FLEXIBLE { 1 } else { 4 };
            assert_eq!(parts[0].field.len(), prefix + 7);
            assert_eq!(parts[1].field.len(), prefix);
            assert_eq!(
                parts[0].records.as_ref().map(|r| r.end),
                Some(parts[0].field.end)
            );
        }
    }

    /// (topic index, partition index, new records) expected after a splice.
    type Changes = Vec<(usize, usize, Option<Bytes>)>;

    #[test]
    fn splicing_changes_exactly_the_partitions_named() {
        let long = Bytes::from(vec![7u8; 300]);
        for v in VERSIONS {
            let req = request(v);
            let body = enc(&req, v);
            // Longer (a two-byte compact length at v9+), shorter, and into a null field.
            let cases: Vec<(Vec<(usize, Bytes)>, Changes)> = vec![
                (vec![(0, long.clone())], vec![(0, 0, Some(long.clone()))]),
                (
                    vec![
                        (3, Bytes::from_static(b"b")),
                        (1, Bytes::from_static(b"new")),
                    ],
                    vec![
                        (1, 0, Some(Bytes::from_static(b"b"))),
                        (0, 1, Some(Bytes::from_static(b"new"))),
                    ],
                ),
            ];
            for (replacements, changes) in cases {
                let head = b"HEAD";
                let out = splice_records(head, &body, v, &replacements).expect("splice");
                assert_eq!(&out[..head.len()], head, "the head comes first, unchanged");
                let out = out.slice(head.len()..);
                let got = ProduceRequest::decode(&mut out.clone(), v).expect("decode");
                let mut want = req.clone();
                for (t, p, records) in changes {
                    want.topic_data[t].partition_data[p].records = records;
                }
                assert_eq!(got, want, "v{v}");
                // Nothing else moved: the bytes after the last change are the original tail.
                let tail = body.len() - produce_partitions(&body, v).expect("p")[3].field.end;
                assert_eq!(out[out.len() - tail..], body[body.len() - tail..]);
            }
            assert_eq!(
                splice_records(&[], &body, v, &[]).expect("no-op"),
                Bytes::from(body.clone())
            );
        }
    }

    #[test]
    fn bad_replacements_and_hostile_bodies_are_refused() {
        let body = enc(&request(9), 9);
        assert_eq!(
            splice_records(&[], &body, 9, &[(4, Bytes::new())]),
            Err(ProduceError::NoSuchPartition { index: 4, count: 4 })
        );
        assert_eq!(
            splice_records(&[], &body, 9, &[(1, Bytes::new()), (1, Bytes::new())]),
            Err(ProduceError::DuplicateReplacement(1))
        );
        assert_eq!(
            produce_partitions(&body, 13),
            Err(ProduceError::UnsupportedVersion(13))
        );
        for v in [3, 9] {
            let body = enc(&request(v), v);
            for cut in 0..body.len() {
                assert!(
                    produce_partitions(&body[..cut], v).is_err(),
                    "v{v} cut {cut}"
                );
            }
        }
        // A records length far beyond the body.
        let mut body = enc(&request(3), 3);
        let at = produce_partitions(&body, 3).expect("p")[0].field.start;
        body[at..at + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(
            produce_partitions(&body, 3),
            Err(ProduceError::Wire(WireError::Truncated { .. }))
        ));
    }
}
