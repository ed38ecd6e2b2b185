//! Lossless reading and rewriting of Kafka record batches (message format v2).
//!
//! Field encryption changes the keys, values and headers of records on their
//! way to and from the brokers, and must change nothing else. The
//! `kafka-protocol` crate's record codec is not lossless (duplicate header keys
//! collapse, a compacted batch's offset range and an empty batch cannot be
//! re-encoded), so this module keeps every header field of the original batch,
//! rewrites only the records section, recompresses it with the batch's own
//! codec and recomputes the length and CRC-32C. Anything it does not need to
//! open (magic 0/1 message sets, control batches, the truncated batch a fetch
//! response may end with) is kept as raw bytes and written back untouched.
//!
//! Everything read here comes from clients or brokers, so every length is
//! checked against the bytes present, no count sizes an allocation beyond what
//! the bytes can hold, and decompression is capped (a small batch can expand
//! to gigabytes).

use std::fmt;
use std::io::{Read, Write};

use bytes::{BufMut, Bytes, BytesMut};

/// Decompressed bytes one [`decode`] call may produce across all its batches.
pub const DEFAULT_MAX_DECOMPRESSED: usize = 64 << 20;

/// Offset of the batch length field: the base offset precedes it.
const LENGTH_AT: usize = 8;
/// Bytes before the part `batch_length` counts (base offset and the length).
const LOG_OVERHEAD: usize = 12;
/// Offset of the magic byte, the same in every message format.
const MAGIC_AT: usize = 16;
/// Offset of the CRC; it covers everything after it.
const CRC_AT: usize = 17;
/// Offset of the attributes, where the CRC's coverage starts.
const ATTRIBUTES_AT: usize = 21;
/// Size of a v2 batch header, up to and including the record count.
const HEADER_LEN: usize = 61;
/// Where a v2 batch header's record count sits.
const RECORD_COUNT_AT: usize = 57;
/// Smallest record: length, attributes, timestamp and offset deltas, key and
/// value lengths and a header count, one byte each.
const MIN_RECORD_LEN: usize = 7;
/// Smallest header: key length and value length, one byte each.
const MIN_HEADER_LEN: usize = 2;

const CODEC_MASK: i16 = 0x07;
const TRANSACTIONAL_FLAG: i16 = 0x10;
const CONTROL_FLAG: i16 = 0x20;

/// Snappy block size Java's xerial `SnappyOutputStream` writes.
const SNAPPY_BLOCK: usize = 32 * 1024;
/// xerial's stream magic; a version and a compatible version (INT32 each) follow.
const SNAPPY_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
/// The 16-byte header Java writes: magic, version 1, compatible version 1.
const SNAPPY_HEADER: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";

/// LZ4 frame magic number (little-endian on the wire).
const LZ4_MAGIC: u32 = 0x184D_2204;
/// The frame descriptor Java's `Lz4BlockOutputStream` writes: FLG (version 1,
/// independent blocks, no checksums, no content size), BD (64 KiB blocks),
/// and the descriptor checksum byte.
const LZ4_DESCRIPTOR: [u8; 3] = [0x60, 0x40, 0x82];
/// Block size that descriptor announces.
const LZ4_BLOCK: usize = 64 * 1024;
/// High bit of an LZ4 block size: the block is stored uncompressed.
const LZ4_UNCOMPRESSED: u32 = 0x8000_0000;

/// zstd level Kafka's Java client uses by default.
const ZSTD_LEVEL: i32 = 3;
/// Largest zstd window accepted (32 MiB): a frame's declared window is memory
/// the decoder reserves up front. Clients write 2–8 MiB windows at the levels
/// they use; only the "ultra" levels need more.
const ZSTD_WINDOW_LOG_MAX: u32 = 25;

/// Why a records blob could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// A field runs past the end of a complete batch or of its records.
    #[error("truncated: {what} at offset {at} runs past the end")]
    Truncated {
        /// Field being read.
        what: &'static str,
        /// Offset in the batch (or in its decompressed records).
        at: usize,
    },
    /// A length or count that cannot be right.
    #[error("invalid {what} {value} at offset {at}")]
    Invalid {
        /// Field being read.
        what: &'static str,
        /// Offset in the batch (or in its decompressed records).
        at: usize,
        /// The value read.
        value: i64,
    },
    /// A magic byte (message format version) Kafka never defined.
    #[error("unknown message format (magic {0})")]
    UnknownMagic(i8),
    /// A compression codec id Kafka never defined.
    #[error("unknown compression codec {0}")]
    UnknownCodec(u8),
    /// The batch's CRC-32C does not match its contents.
    #[error("CRC mismatch in the batch at base offset {base_offset}")]
    CrcMismatch {
        /// Base offset of the corrupt batch.
        base_offset: i64,
    },
    /// Compressed data the codec could not read, or could not write.
    #[error("{codec} data could not be processed: {source}")]
    Codec {
        /// The codec.
        codec: Compression,
        /// The codec's error.
        #[source]
        source: std::io::Error,
    },
    /// Decompression would exceed the cap.
    #[error("records decompress to more than {limit} bytes")]
    TooLarge {
        /// The cap in bytes.
        limit: usize,
    },
    /// Bytes left over after the records a batch declares.
    #[error("{left} bytes after the last declared record")]
    TrailingBytes {
        /// Bytes left over.
        left: usize,
    },
    /// A field too long for Kafka's 32-bit lengths.
    #[error("{what} is too long to encode")]
    TooLong {
        /// The field.
        what: &'static str,
    },
}

/// A batch's compression codec (attributes bits 0–2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Compression {
    /// Uncompressed.
    None,
    /// gzip.
    Gzip,
    /// Snappy, in xerial's framing as the Java client writes it.
    Snappy,
    /// LZ4 frame format.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// The codec named by a batch's attributes.
    pub fn from_attributes(attributes: i16) -> Result<Self, BatchError> {
        match attributes & CODEC_MASK {
            0 => Ok(Self::None),
            1 => Ok(Self::Gzip),
            2 => Ok(Self::Snappy),
            3 => Ok(Self::Lz4),
            4 => Ok(Self::Zstd),
            other => Err(BatchError::UnknownCodec(other as u8)),
        }
    }

    /// Kafka's id for the codec, as attributes bits 0–2 hold it.
    pub fn id(self) -> i16 {
        match self {
            Self::None => 0,
            Self::Gzip => 1,
            Self::Snappy => 2,
            Self::Lz4 => 3,
            Self::Zstd => 4,
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "uncompressed",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        })
    }
}

/// Every field of a v2 batch header, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record (or of the first before compaction).
    pub base_offset: i64,
    /// Bytes after this field (recomputed when the batch is rebuilt).
    pub batch_length: i32,
    /// Leader epoch the broker stamped.
    pub partition_leader_epoch: i32,
    /// Message format version (always 2 here).
    pub magic: i8,
    /// CRC-32C over attributes..end as read (recomputed when rebuilt).
    pub crc: u32,
    /// Codec, timestamp type, transactional, control and delete-horizon bits.
    pub attributes: i16,
    /// Offset of the last record relative to the base; may lie beyond the last
    /// surviving record of a compacted batch.
    pub last_offset_delta: i32,
    /// Timestamp of the first record (or the delete horizon).
    pub base_timestamp: i64,
    /// Largest timestamp in the batch.
    pub max_timestamp: i64,
    /// Idempotent/transactional producer id (-1 when none).
    pub producer_id: i64,
    /// Producer epoch (-1 when none).
    pub producer_epoch: i16,
    /// Sequence number of the first record (-1 when none).
    pub base_sequence: i32,
    /// Records the batch declared (a rebuilt batch declares its records' count).
    pub record_count: i32,
}

/// One record header; Kafka allows duplicate keys, kept here in order.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    /// Header key (UTF-8 by convention; kept as raw bytes).
    pub key: Bytes,
    /// Header value; `None` is null.
    pub value: Option<Bytes>,
}

impl fmt::Debug for Header {
    // Header contents may be personal data: only their sizes are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Header")
            .field("key", &Redacted(Some(&self.key)))
            .field("value", &Redacted(self.value.as_ref()))
            .finish()
    }
}

/// One record of a v2 batch.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// Record attributes (unused by Kafka so far, kept as read).
    pub attributes: i8,
    /// Timestamp relative to the batch's base timestamp.
    pub timestamp_delta: i64,
    /// Offset relative to the batch's base offset.
    pub offset_delta: i32,
    /// Record key; `None` is null.
    pub key: Option<Bytes>,
    /// Record value; `None` is null (a tombstone).
    pub value: Option<Bytes>,
    /// Headers in wire order, duplicates included.
    pub headers: Vec<Header>,
}

impl Record {
    /// At least the bytes this record takes in a batch (varints at their widest).
    fn size_hint(&self) -> usize {
        let part = |b: Option<&[u8]>| 5 + b.map_or(0, <[u8]>::len);
        let headers: usize = self
            .headers
            .iter()
            .map(|h| part(Some(&h.key)) + part(h.value.as_deref()))
            .sum();
        // Length, attributes, timestamp and offset deltas, header count.
        5 + 1 + 10 + 5 + 5 + part(self.key.as_deref()) + part(self.value.as_deref()) + headers
    }
}

impl fmt::Debug for Record {
    // Keys and values are payload: only their sizes are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("attributes", &self.attributes)
            .field("timestamp_delta", &self.timestamp_delta)
            .field("offset_delta", &self.offset_delta)
            .field("key", &Redacted(self.key.as_ref()))
            .field("value", &Redacted(self.value.as_ref()))
            .field("headers", &self.headers)
            .finish()
    }
}

/// Shows a byte field as its size only.
struct Redacted<'a>(Option<&'a Bytes>);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("null"),
            Some(b) => write!(f, "<{} bytes>", b.len()),
        }
    }
}

/// A field of a record being rewritten ([`RecordView`]): null, the batch's
/// own bytes, or bytes an edit wrote to the rewrite's scratch buffer.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Field<'a> {
    /// Null.
    #[default]
    Null,
    /// The bytes as read.
    Read(&'a [u8]),
    /// New bytes, at this range of the scratch buffer.
    New(std::ops::Range<usize>),
}

impl<'a> Field<'a> {
    /// A nullable field as read.
    pub fn read(b: Option<&'a [u8]>) -> Self {
        b.map_or(Field::Null, Field::Read)
    }

    /// The field's bytes (`None` for null); `scratch` holds the new ones.
    pub fn get<'s>(&'s self, scratch: &'s [u8]) -> Option<&'s [u8]> {
        match self {
            Field::Null => None,
            Field::Read(b) => Some(b),
            Field::New(r) => Some(&scratch[r.clone()]),
        }
    }
}

impl fmt::Debug for Field<'_> {
    // Payload: only the size is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Null => f.write_str("null"),
            Field::Read(b) => write!(f, "<{} bytes as read>", b.len()),
            Field::New(r) => write!(f, "<{} new bytes>", r.len()),
        }
    }
}

/// A record of a batch being rewritten ([`rewrite`]), read in place: its
/// fields borrow the batch, and what an edit puts in their place goes to a
/// scratch buffer, so a rewrite allocates nothing and counts no references
/// per record.
#[derive(Debug, Default)]
pub struct RecordView<'a> {
    /// The record's position in its batch (what a Produce answer's record
    /// errors name); not written.
    pub index: i32,
    /// Record attributes (unused by Kafka so far, kept as read).
    pub attributes: i8,
    /// Timestamp relative to the batch's base timestamp.
    pub timestamp_delta: i64,
    /// Offset relative to the batch's base offset.
    pub offset_delta: i32,
    /// Record key.
    pub key: Field<'a>,
    /// Record value.
    pub value: Field<'a>,
    /// Headers in wire order, duplicates included: name and value.
    pub headers: Vec<(&'a [u8], Field<'a>)>,
}

impl Record {
    /// This record as a [`RecordView`] of its own bytes.
    pub fn view(&self) -> RecordView<'_> {
        RecordView {
            index: 0,
            attributes: self.attributes,
            timestamp_delta: self.timestamp_delta,
            offset_delta: self.offset_delta,
            key: Field::read(self.key.as_deref()),
            value: Field::read(self.value.as_deref()),
            headers: self
                .headers
                .iter()
                .map(|h| (&h.key[..], Field::read(h.value.as_deref())))
                .collect(),
        }
    }
}

impl RecordView<'_> {
    /// The record the view now describes, copied out.
    pub fn to_record(&self, scratch: &[u8]) -> Record {
        self.record_with(scratch, Bytes::copy_from_slice)
    }

    /// The record the view describes, each field's bytes made into `Bytes`
    /// by `own`; `scratch` holds the new ones.
    fn record_with(&self, scratch: &[u8], own: impl Fn(&[u8]) -> Bytes) -> Record {
        let field = |f: &Field<'_>| f.get(scratch).map(&own);
        Record {
            attributes: self.attributes,
            timestamp_delta: self.timestamp_delta,
            offset_delta: self.offset_delta,
            key: field(&self.key),
            value: field(&self.value),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| Header {
                    key: own(k),
                    value: field(v),
                })
                .collect(),
        }
    }
}

/// A decoded v2 batch, with its original bytes for an untouched write-back.
#[derive(Clone)]
pub struct Batch {
    /// The header as read.
    pub header: BatchHeader,
    /// The records, decompressed.
    pub records: Vec<Record>,
    /// The batch exactly as it arrived.
    pub original: Bytes,
    /// Records changed: [`encode`] rebuilds the batch instead of copying `original`.
    pub dirty: bool,
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("header", &self.header)
            .field("records", &self.records)
            .field("original", &format_args!("<{} bytes>", self.original.len()))
            .field("dirty", &self.dirty)
            .finish()
    }
}

impl Batch {
    /// The batch's codec.
    pub fn compression(&self) -> Result<Compression, BatchError> {
        Compression::from_attributes(self.header.attributes)
    }

    /// Whether a transactional producer wrote the batch.
    pub fn is_transactional(&self) -> bool {
        self.header.attributes & TRANSACTIONAL_FLAG != 0
    }

    /// Whether the batch holds transaction markers rather than data.
    pub fn is_control(&self) -> bool {
        self.header.attributes & CONTROL_FLAG != 0
    }

    /// The records, for changing; marks the batch dirty.
    pub fn records_mut(&mut self) -> &mut Vec<Record> {
        self.dirty = true;
        &mut self.records
    }

    /// The batch's bytes: the original when clean, else rebuilt.
    pub fn to_bytes(&self) -> Result<Bytes, BatchError> {
        if !self.dirty {
            return Ok(self.original.clone());
        }
        let mut out = BytesMut::new();
        self.rebuild_into(&mut out)?;
        Ok(out.freeze())
    }

    /// At least the bytes the rebuilt batch takes before compression.
    fn size_hint(&self) -> usize {
        HEADER_LEN + self.records.iter().map(Record::size_hint).sum::<usize>()
    }

    /// Writes the batch with its original header fields around re-encoded,
    /// recompressed records, then fixes the length and CRC.
    fn rebuild_into(&self, out: &mut BytesMut) -> Result<(), BatchError> {
        let codec = self.compression()?;
        let h = &self.header;
        let count =
            i32::try_from(self.records.len()).map_err(|_| BatchError::TooLong { what: "batch" })?;
        let start = out.len();
        // Room for every record up front: growing a batch-sized buffer copies
        // it and touches fresh pages each time.
        out.reserve(self.size_hint());
        out.put_i64(h.base_offset);
        out.put_i32(0); // length, fixed below
        out.put_i32(h.partition_leader_epoch);
        out.put_i8(2);
        out.put_u32(0); // CRC, fixed below
        out.put_i16(h.attributes);
        out.put_i32(h.last_offset_delta);
        out.put_i64(h.base_timestamp);
        out.put_i64(h.max_timestamp);
        out.put_i64(h.producer_id);
        out.put_i16(h.producer_epoch);
        out.put_i32(h.base_sequence);
        out.put_i32(count);
        if codec == Compression::None {
            // Written in place: no intermediate buffer on the common path.
            for r in &self.records {
                write_record(out, r)?;
            }
        } else {
            let mut plain = Vec::with_capacity(self.size_hint() - HEADER_LEN);
            for r in &self.records {
                write_record(&mut plain, r)?;
            }
            out.put_slice(&compress(codec, &plain)?);
        }
        seal_batch(out, start)
    }
}

/// One piece of a records blob.
#[derive(Clone)]
pub enum Segment {
    /// Bytes passed through untouched: magic 0/1 message sets, control
    /// batches, and a truncated trailing batch.
    Raw(Bytes),
    /// A decoded v2 data batch.
    Batch(Batch),
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Raw(b) => write!(f, "Raw(<{} bytes>)", b.len()),
            Self::Batch(b) => b.fmt(f),
        }
    }
}

/// The offset after a whole batch passed through as [`Segment::Raw`]
/// (control batches, old message sets); `None` for a partial trailing one.
pub fn raw_batch_end(raw: &[u8]) -> Option<i64> {
    if raw.len() < 17 {
        return None;
    }
    let be_i32 = |b: &[u8]| i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let len = usize::try_from(be_i32(&raw[8..12])).ok()?;
    if raw.len() < 12 + len {
        return None;
    }
    let base = i64::from_be_bytes(raw[0..8].try_into().ok()?);
    // v2 batches carry the last offset delta; a v0/v1 entry is one message.
    let last_delta = if raw[16] == 2 && raw.len() >= 27 {
        i64::from(be_i32(&raw[23..27]))
    } else {
        0
    };
    Some(base + last_delta + 1)
}

/// The longest run of whole batches at the start of `records` that fits in
/// `room` bytes: its length, and the offset after its last batch (`None`
/// when the run is empty). A truncated trailing batch, or anything whose
/// length does not parse, ends the run.
pub fn whole_batches_within(records: &[u8], room: usize) -> (usize, Option<i64>) {
    let mut pos = 0;
    let mut next = None;
    while records.len() - pos > MAGIC_AT {
        let Ok(size) = usize::try_from(be_i32(&records[pos + LENGTH_AT..])) else {
            break;
        };
        let end = pos + LOG_OVERHEAD + size;
        if end > records.len() || end > room {
            break;
        }
        match raw_batch_end(&records[pos..end]) {
            Some(n) => next = Some(n),
            None => break,
        }
        pos = end;
    }
    (pos, next)
}

/// Splits a records blob (a Produce or Fetch partition's records) into
/// segments, decoding v2 data batches; decompression is capped at
/// [`DEFAULT_MAX_DECOMPRESSED`] for the whole blob.
pub fn decode(records: &Bytes) -> Result<Vec<Segment>, BatchError> {
    decode_with_limit(records, DEFAULT_MAX_DECOMPRESSED)
}

/// [`decode`] with a cap on the decompressed bytes of the whole blob.
pub fn decode_with_limit(
    records: &Bytes,
    max_decompressed: usize,
) -> Result<Vec<Segment>, BatchError> {
    let mut out = Vec::new();
    let mut budget = max_decompressed;
    for entry in Entries::new(records) {
        out.push(match entry? {
            Entry::Raw(b) => Segment::Raw(b),
            Entry::Data(b) => Segment::Batch(decode_batch(b, &mut budget)?),
        });
    }
    Ok(out)
}

/// One piece of a records blob, as [`Entries`] finds it.
enum Entry {
    /// Passed on untouched: a magic 0/1 message set, a control batch, or a
    /// truncated tail.
    Raw(Bytes),
    /// A whole v2 data batch (at least a header long).
    Data(Bytes),
}

/// Walks a records blob batch by batch, by the length fields alone.
struct Entries<'a> {
    records: &'a Bytes,
    pos: usize,
}

impl<'a> Entries<'a> {
    fn new(records: &'a Bytes) -> Self {
        Self { records, pos: 0 }
    }
}

impl Iterator for Entries<'_> {
    type Item = Result<Entry, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (records, pos) = (self.records, self.pos);
        if pos >= records.len() {
            return None;
        }
        let rest = records.len() - pos;
        let tail = |s: &mut Self| {
            s.pos = records.len();
            Some(Ok(Entry::Raw(records.slice(pos..))))
        };
        if rest <= MAGIC_AT {
            // Too short even to say what it is: the tail of a fetch response.
            return tail(self);
        }
        let size = be_i32(&records[pos + LENGTH_AT..]);
        let invalid = |s: &mut Self| {
            s.pos = records.len();
            Some(Err(BatchError::Invalid {
                what: "batch length",
                at: pos + LENGTH_AT,
                value: i64::from(size),
            }))
        };
        let Ok(size) = usize::try_from(size) else {
            return invalid(self);
        };
        let total = LOG_OVERHEAD + size;
        if total > rest {
            return tail(self);
        }
        let entry = records.slice(pos..pos + total);
        let item = match records[pos + MAGIC_AT] as i8 {
            0 | 1 => Entry::Raw(entry),
            2 if total < HEADER_LEN => return invalid(self),
            2 if be_i16(&entry[ATTRIBUTES_AT..]) & CONTROL_FLAG != 0 => Entry::Raw(entry),
            2 => Entry::Data(entry),
            m => {
                self.pos = records.len();
                return Some(Err(BatchError::UnknownMagic(m)));
            }
        };
        self.pos += total;
        Some(Ok(item))
    }
}

/// Writes segments back: raw segments and clean batches byte for byte, dirty
/// batches rebuilt around their original header fields.
pub fn encode(segments: &[Segment]) -> Result<Bytes, BatchError> {
    if let [only] = segments {
        return match only {
            Segment::Raw(b) => Ok(b.clone()),
            Segment::Batch(b) => b.to_bytes(),
        };
    }
    let size: usize = segments
        .iter()
        .map(|s| match s {
            Segment::Raw(b) => b.len(),
            Segment::Batch(b) if !b.dirty => b.original.len(),
            Segment::Batch(b) => b.size_hint(),
        })
        .sum();
    let mut out = BytesMut::with_capacity(size);
    for s in segments {
        match s {
            Segment::Raw(b) => out.put_slice(b),
            Segment::Batch(b) if !b.dirty => out.put_slice(&b.original),
            Segment::Batch(b) => b.rebuild_into(&mut out)?,
        }
    }
    Ok(out.freeze())
}

fn be_i16(b: &[u8]) -> i16 {
    i16::from_be_bytes([b[0], b[1]])
}

fn be_i32(b: &[u8]) -> i32 {
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_i64(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    i64::from_be_bytes(a)
}

/// Decodes one complete v2 batch (`entry.len() >= HEADER_LEN`).
fn decode_batch(entry: Bytes, budget: &mut usize) -> Result<Batch, BatchError> {
    let (header, data) = open_batch(&entry, budget)?;
    let records = read_records(&data, header.record_count as usize)?;
    Ok(Batch {
        header,
        records,
        original: entry,
        dirty: false,
    })
}

/// Reads a v2 batch's header, checks its CRC and record count, and returns
/// its records section, decompressed (within `budget`, which it reduces).
fn open_batch(entry: &Bytes, budget: &mut usize) -> Result<(BatchHeader, Bytes), BatchError> {
    let header = BatchHeader {
        base_offset: be_i64(&entry[0..]),
        batch_length: be_i32(&entry[LENGTH_AT..]),
        partition_leader_epoch: be_i32(&entry[12..]),
        magic: entry[MAGIC_AT] as i8,
        crc: u32::from_be_bytes([entry[17], entry[18], entry[19], entry[20]]),
        attributes: be_i16(&entry[ATTRIBUTES_AT..]),
        last_offset_delta: be_i32(&entry[23..]),
        base_timestamp: be_i64(&entry[27..]),
        max_timestamp: be_i64(&entry[35..]),
        producer_id: be_i64(&entry[43..]),
        producer_epoch: be_i16(&entry[51..]),
        base_sequence: be_i32(&entry[53..]),
        record_count: be_i32(&entry[RECORD_COUNT_AT..]),
    };
    // A rebuilt batch gets a fresh CRC, so a corrupt one must not pass here.
    if crc32c(&entry[ATTRIBUTES_AT..]) != header.crc {
        return Err(BatchError::CrcMismatch {
            base_offset: header.base_offset,
        });
    }
    let codec = Compression::from_attributes(header.attributes)?;
    if header.record_count < 0 {
        return Err(BatchError::Invalid {
            what: "record count",
            at: 57,
            value: i64::from(header.record_count),
        });
    }
    let body = entry.slice(HEADER_LEN..);
    let data = match codec {
        Compression::None => body,
        // Nothing to inflate: how an emptied batch may look whatever its codec.
        _ if body.is_empty() => body,
        c => {
            let d = decompress(c, &body, *budget)?;
            *budget -= d.len();
            d
        }
    };
    Ok((header, data))
}

/// How many records the v2 data batches of a records blob hold, by their
/// headers alone (nothing is checked or decompressed; [`rewrite`] does
/// that). A count no batch of its size could hold is refused, so a client
/// cannot make the caller reserve for records it did not send.
pub fn data_record_count(records: &Bytes, max_decompressed: usize) -> Result<u64, BatchError> {
    let mut total = 0u64;
    for entry in Entries::new(records) {
        let Entry::Data(b) = entry? else { continue };
        let count = be_i32(&b[RECORD_COUNT_AT..]);
        let compressed = be_i16(&b[ATTRIBUTES_AT..]) & CODEC_MASK != 0;
        let room = if compressed {
            max_decompressed
        } else {
            b.len() - HEADER_LEN
        };
        match usize::try_from(count) {
            Ok(n) if n <= room / MIN_RECORD_LEN => total += n as u64,
            _ => {
                return Err(BatchError::Invalid {
                    what: "record count",
                    at: RECORD_COUNT_AT,
                    value: i64::from(count),
                })
            }
        }
    }
    Ok(total)
}

/// Cuts a records blob at batch boundaries into at most `pieces` parts of
/// roughly equal size, for revealing them in parallel: [`rewrite`] of each
/// part, laid end to end, is [`rewrite`] of the whole. A blob whose batch
/// lengths do not parse is returned whole (its rewrite reports the error).
pub fn split_batches(records: &Bytes, pieces: usize) -> Vec<Bytes> {
    let mut bounds = Vec::new();
    let mut pos = 0;
    for entry in Entries::new(records) {
        match entry {
            // A truncated tail may end up a part of its own: rewriting it
            // copies it, as it would at the end of a larger part.
            Ok(Entry::Raw(b) | Entry::Data(b)) => {
                pos += b.len();
                bounds.push(pos);
            }
            Err(_) => return vec![records.clone()],
        }
    }
    let target = records.len().div_ceil(pieces.max(1));
    let mut out = Vec::with_capacity(pieces);
    let mut start = 0;
    for b in bounds {
        if b - start >= target && out.len() + 1 < pieces {
            out.push(records.slice(start..b));
            start = b;
        }
    }
    if start < records.len() || out.is_empty() {
        out.push(records.slice(start..));
    }
    out
}

/// What [`rewrite`] does to each record: it may replace fields of the view
/// with bytes it writes to the scratch buffer, and says whether it did.
pub type RecordEdit<'e, E> = dyn FnMut(&mut RecordView<'_>, &mut Vec<u8>) -> Result<bool, E> + 'e;

/// Why [`rewrite`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError<E> {
    /// The records blob could not be read or written.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// The edit refused a record.
    #[error("record edit failed")]
    Edit(E),
}

/// Rewrites a records blob into `out` one record at a time: each record of
/// each v2 data batch is handed to `edit` (which says whether it changed
/// it) and written back; a batch whose records all come back unchanged is
/// copied as it arrived, a changed one is rebuilt around its original header
/// fields with a fresh length and CRC and its own codec. Raw segments (magic
/// 0/1, control batches, a truncated tail) are copied untouched. Returns the
/// number of records handed to `edit`.
///
/// Unlike [`decode`] and [`encode`], no record list is built: each record is
/// a [`RecordView`] borrowing the batch, an edit writes new fields to a
/// scratch buffer (passed with the view, emptied per record) and rebuilt
/// batches are written straight into `out`, which is what keeps the fetch
/// path cheap. On an error `out` holds a partial result the caller must
/// discard.
pub fn rewrite<E>(
    records: &Bytes,
    max_decompressed: usize,
    out: &mut BytesMut,
    edit: &mut RecordEdit<'_, E>,
) -> Result<u64, RewriteError<E>> {
    let mut budget = max_decompressed;
    let mut rw = Rewriter::default();
    for entry in Entries::new(records) {
        match entry? {
            Entry::Raw(b) => out.put_slice(&b),
            Entry::Data(entry) => {
                let (header, data) = open_batch(&entry, &mut budget)?;
                rw.batch(&entry, &header, &data, out, edit)?;
            }
        }
    }
    Ok(rw.count)
}

/// A records blob whose v2 data batches were checked and decompressed once,
/// for a caller that reads every record before rewriting them (a rule keyed
/// by subject looks up each record's key first) and would otherwise
/// decompress each batch twice.
pub struct OpenedBlob {
    entries: Vec<Opened>,
}

/// One entry of an [`OpenedBlob`].
enum Opened {
    /// Bytes copied as they are (see [`rewrite`]).
    Raw(Bytes),
    /// A v2 data batch: as it arrived, its header, its records decompressed.
    Data(Bytes, BatchHeader, Bytes),
}

impl OpenedBlob {
    /// Checks and decompresses the data batches of `records` (at most
    /// `max_decompressed` bytes in all).
    pub fn open(records: &Bytes, max_decompressed: usize) -> Result<Self, BatchError> {
        let mut budget = max_decompressed;
        let entries = Entries::new(records)
            .map(|entry| match entry? {
                Entry::Raw(b) => Ok(Opened::Raw(b)),
                Entry::Data(entry) => {
                    let (header, data) = open_batch(&entry, &mut budget)?;
                    Ok(Opened::Data(entry, header, data))
                }
            })
            .collect::<Result<_, BatchError>>()?;
        Ok(OpenedBlob { entries })
    }

    /// Hands each record of each data batch to `visit`, as [`rewrite`] would
    /// to its edit, writing nothing. Returns the number of records visited.
    pub fn visit<E>(
        &self,
        visit: &mut dyn FnMut(&RecordView<'_>) -> Result<(), E>,
    ) -> Result<u64, RewriteError<E>> {
        let mut count = 0;
        for e in &self.entries {
            if let Opened::Data(_, header, data) = e {
                count += visit_batch(header, data, visit)?;
            }
        }
        Ok(count)
    }

    /// [`rewrite`] of the opened batches.
    pub fn rewrite<E>(
        &self,
        out: &mut BytesMut,
        edit: &mut RecordEdit<'_, E>,
    ) -> Result<u64, RewriteError<E>> {
        let mut rw = Rewriter::default();
        for e in &self.entries {
            match e {
                Opened::Raw(b) => out.put_slice(b),
                Opened::Data(entry, header, data) => rw.batch(entry, header, data, out, edit)?,
            }
        }
        Ok(rw.count)
    }
}

/// Hands each record of one opened batch to `visit`; returns how many.
fn visit_batch<E>(
    header: &BatchHeader,
    data: &Bytes,
    visit: &mut dyn FnMut(&RecordView<'_>) -> Result<(), E>,
) -> Result<u64, RewriteError<E>> {
    each_view(header, data, |rec: &mut RecordView<'_>| {
        visit(rec).map_err(RewriteError::Edit)
    })?;
    Ok(u64::try_from(header.record_count).unwrap_or(0))
}

/// Reads the records of one opened batch in turn into one view (indexed
/// within the batch) and hands it to `f`; the records must fill `data`.
// Generic, not `dyn`: it is the per-record loop of every rewrite.
fn each_view<E, F>(header: &BatchHeader, data: &Bytes, mut f: F) -> Result<(), RewriteError<E>>
where
    F: FnMut(&mut RecordView<'_>) -> Result<(), RewriteError<E>>,
{
    let mut c = Cursor { buf: data, pos: 0 };
    let mut rec = RecordView::default();
    for index in 0..header.record_count {
        read_view(&mut c, &mut rec)?;
        rec.index = index;
        f(&mut rec)?;
    }
    if c.remaining() != 0 {
        return Err(BatchError::TrailingBytes {
            left: c.remaining(),
        }
        .into());
    }
    Ok(())
}

/// The state [`rewrite`] keeps across batches: buffers reused, and the
/// records handed to the edit so far.
#[derive(Default)]
struct Rewriter {
    count: u64,
    scratch: Vec<u8>,
    plain: Vec<u8>,
}

impl Rewriter {
    /// Rewrites one opened batch (`entry` as it arrived) into `out`.
    fn batch<E>(
        &mut self,
        entry: &Bytes,
        header: &BatchHeader,
        data: &Bytes,
        out: &mut BytesMut,
        edit: &mut RecordEdit<'_, E>,
    ) -> Result<(), RewriteError<E>> {
        let codec = Compression::from_attributes(header.attributes)?;
        let start = out.len();
        out.put_slice(&entry[..HEADER_LEN]);
        let mut changed = false;
        self.plain.clear();
        let Rewriter {
            count,
            scratch,
            plain,
        } = self;
        each_view(header, data, |rec| {
            *count += 1;
            scratch.clear();
            changed |= edit(rec, scratch).map_err(RewriteError::Edit)?;
            if codec == Compression::None {
                write_view(out, rec, scratch)?;
            } else {
                write_view(plain, rec, scratch)?;
            }
            Ok(())
        })?;
        if !changed {
            out.truncate(start);
            out.put_slice(entry);
            return Ok(());
        }
        if codec != Compression::None {
            out.put_slice(&compress(codec, &self.plain)?);
        }
        seal_batch(out, start)?;
        Ok(())
    }
}

/// CRC-32C (Castagnoli, Kafka's batch checksum) of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    // CRC-32/ISCSI is CRC-32C; the 64-bit result holds the 32-bit CRC.
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32
}

/// Writes the length and CRC-32C of the batch written to `out` from `start`.
fn seal_batch(out: &mut BytesMut, start: usize) -> Result<(), BatchError> {
    let length = i32::try_from(out.len() - start - LOG_OVERHEAD)
        .map_err(|_| BatchError::TooLong { what: "batch" })?;
    out[start + LENGTH_AT..start + LENGTH_AT + 4].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c(&out[start + ATTRIBUTES_AT..]);
    out[start + CRC_AT..start + CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

/// A cursor over decompressed records that hands out borrowed slices.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn byte(&mut self, what: &'static str) -> Result<u8, BatchError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(BatchError::Truncated { what, at: self.pos })?;
        self.pos += 1;
        Ok(b)
    }

    /// A zig-zag varint of at most 5 bytes, as Java's `ByteUtils.readVarint`.
    fn varint(&mut self, what: &'static str) -> Result<i32, BatchError> {
        let at = self.pos;
        let mut raw: u32 = 0;
        for i in 0..5 {
            let b = self.byte(what)?;
            raw |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32));
            }
        }
        Err(BatchError::Invalid {
            what,
            at,
            value: i64::from(raw),
        })
    }

    /// A zig-zag varlong of at most 10 bytes.
    fn varlong(&mut self, what: &'static str) -> Result<i64, BatchError> {
        let at = self.pos;
        let mut raw: u64 = 0;
        for i in 0..10 {
            let b = self.byte(what)?;
            raw |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64));
            }
        }
        Err(BatchError::Invalid {
            what,
            at,
            value: raw as i64,
        })
    }

    fn slice(&mut self, what: &'static str, n: usize) -> Result<&'a [u8], BatchError> {
        if n > self.remaining() {
            return Err(BatchError::Truncated { what, at: self.pos });
        }
        let buf: &'a [u8] = self.buf;
        let s = &buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// A varint length then that many bytes; -1 is null, below that invalid.
    fn nullable(&mut self, what: &'static str) -> Result<Option<&'a [u8]>, BatchError> {
        let at = self.pos;
        match self.varint(what)? {
            -1 => Ok(None),
            n if n < -1 => Err(BatchError::Invalid {
                what,
                at,
                value: i64::from(n),
            }),
            n => self.slice(what, n as usize).map(Some),
        }
    }
}

fn read_records(data: &Bytes, count: usize) -> Result<Vec<Record>, BatchError> {
    let mut c = Cursor { buf: data, pos: 0 };
    let mut records = Vec::with_capacity(count.min(data.len() / MIN_RECORD_LEN));
    let mut view = RecordView::default();
    for _ in 0..count {
        read_view(&mut c, &mut view)?;
        // Fields become zero-copy slices of `data`.
        records.push(view.record_with(&[], |b| data.slice_ref(b)));
    }
    if c.remaining() != 0 {
        return Err(BatchError::TrailingBytes {
            left: c.remaining(),
        });
    }
    Ok(records)
}

/// Reads the record at the cursor into `rec`, reusing its header list.
fn read_view<'a>(c: &mut Cursor<'a>, rec: &mut RecordView<'a>) -> Result<(), BatchError> {
    let at = c.pos;
    let len = c.varint("record length")?;
    if len < 0 || len as usize > c.remaining() {
        return Err(BatchError::Invalid {
            what: "record length",
            at,
            value: i64::from(len),
        });
    }
    let end = c.pos + len as usize;
    rec.attributes = c.byte("record attributes")? as i8;
    rec.timestamp_delta = c.varlong("timestamp delta")?;
    rec.offset_delta = c.varint("offset delta")?;
    rec.key = Field::read(c.nullable("record key")?);
    rec.value = Field::read(c.nullable("record value")?);
    let hat = c.pos;
    let n = c.varint("header count")?;
    if n < 0 {
        return Err(BatchError::Invalid {
            what: "header count",
            at: hat,
            value: i64::from(n),
        });
    }
    let n = n as usize;
    rec.headers.clear();
    rec.headers.reserve(n.min(c.remaining() / MIN_HEADER_LEN));
    for _ in 0..n {
        let kat = c.pos;
        let key = c.nullable("header key")?.ok_or(BatchError::Invalid {
            what: "header key length",
            at: kat,
            value: -1,
        })?;
        let value = c.nullable("header value")?;
        rec.headers.push((key, Field::read(value)));
    }
    // Java refuses a record whose fields do not fill its declared length.
    if c.pos != end {
        return Err(BatchError::Invalid {
            what: "record length",
            at,
            value: i64::from(len),
        });
    }
    Ok(())
}

fn zigzag32(n: i32) -> u64 {
    u64::from(((n << 1) ^ (n >> 31)) as u32)
}

fn zigzag64(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn uvarint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_uvarint(out: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn len32(what: &'static str, n: usize) -> Result<i32, BatchError> {
    i32::try_from(n).map_err(|_| BatchError::TooLong { what })
}

/// Wire size of a nullable varint-length-prefixed field.
fn nullable_size(what: &'static str, b: Option<&[u8]>) -> Result<usize, BatchError> {
    Ok(match b {
        None => 1,
        Some(b) => uvarint_len(zigzag32(len32(what, b.len())?)) + b.len(),
    })
}

fn put_nullable(out: &mut impl BufMut, b: Option<&[u8]>) {
    match b {
        None => put_uvarint(out, zigzag32(-1)),
        Some(b) => {
            // Sizes were checked by `nullable_size` before anything was written.
            put_uvarint(out, zigzag32(b.len() as i32));
            out.put_slice(b);
        }
    }
}

/// A record's fields, however they are held, for [`write_fields`].
struct Fields<'r, H> {
    attributes: i8,
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&'r [u8]>,
    value: Option<&'r [u8]>,
    headers: H,
}

fn write_fields<'r, H>(out: &mut impl BufMut, r: Fields<'r, H>) -> Result<(), BatchError>
where
    H: ExactSizeIterator<Item = (&'r [u8], Option<&'r [u8]>)> + Clone,
{
    let mut size = 1
        + uvarint_len(zigzag64(r.timestamp_delta))
        + uvarint_len(zigzag32(r.offset_delta))
        + nullable_size("record key", r.key)?
        + nullable_size("record value", r.value)?
        + uvarint_len(zigzag32(len32("headers", r.headers.len())?));
    for (k, v) in r.headers.clone() {
        size += nullable_size("header key", Some(k))?;
        size += nullable_size("header value", v)?;
    }
    put_uvarint(out, zigzag32(len32("record", size)?));
    out.put_i8(r.attributes);
    put_uvarint(out, zigzag64(r.timestamp_delta));
    put_uvarint(out, zigzag32(r.offset_delta));
    put_nullable(out, r.key);
    put_nullable(out, r.value);
    put_uvarint(out, zigzag32(r.headers.len() as i32));
    for (k, v) in r.headers {
        put_nullable(out, Some(k));
        put_nullable(out, v);
    }
    Ok(())
}

fn write_record(out: &mut impl BufMut, r: &Record) -> Result<(), BatchError> {
    write_fields(
        out,
        Fields {
            attributes: r.attributes,
            timestamp_delta: r.timestamp_delta,
            offset_delta: r.offset_delta,
            key: r.key.as_deref(),
            value: r.value.as_deref(),
            headers: r.headers.iter().map(|h| (&h.key[..], h.value.as_deref())),
        },
    )
}

/// Writes a rewritten record; `scratch` holds its new fields.
fn write_view(out: &mut impl BufMut, r: &RecordView<'_>, scratch: &[u8]) -> Result<(), BatchError> {
    write_fields(
        out,
        Fields {
            attributes: r.attributes,
            timestamp_delta: r.timestamp_delta,
            offset_delta: r.offset_delta,
            key: r.key.get(scratch),
            value: r.value.get(scratch),
            headers: r.headers.iter().map(|(k, v)| (*k, v.get(scratch))),
        },
    )
}

fn codec_err(codec: Compression) -> impl Fn(std::io::Error) -> BatchError {
    move |source| BatchError::Codec { codec, source }
}

fn snap_err(e: snap::Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

/// Reads a decompressing stream to its end, refusing more than `limit` bytes.
fn read_capped(codec: Compression, r: &mut impl Read, limit: usize) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::new();
    r.take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(codec_err(codec))?;
    if out.len() > limit {
        return Err(BatchError::TooLarge { limit });
    }
    Ok(out)
}

fn decompress(codec: Compression, input: &[u8], limit: usize) -> Result<Bytes, BatchError> {
    let out = match codec {
        Compression::None => input.to_vec(),
        // Java's GZIPInputStream reads concatenated members; so does this.
        Compression::Gzip => {
            read_capped(codec, &mut flate2::read::MultiGzDecoder::new(input), limit)?
        }
        Compression::Snappy => snappy_decompress(input, limit)?,
        Compression::Lz4 => {
            let mut d = lz4::Decoder::new(input).map_err(codec_err(codec))?;
            let out = read_capped(codec, &mut d, limit)?;
            // The decoder reports a frame cut short as a clean end; finish does not.
            d.finish().1.map_err(codec_err(codec))?;
            out
        }
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(input).map_err(codec_err(codec))?;
            d.window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(codec_err(codec))?;
            read_capped(codec, &mut d, limit)?
        }
    };
    Ok(Bytes::from(out))
}

/// Snappy as Java's xerial `SnappyInputStream` reads it: a 16-byte header,
/// then blocks of (INT32 compressed size, raw snappy block); a stream without
/// the header is one raw snappy block. Concatenated streams repeat the header.
fn snappy_decompress(input: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    let codec = Compression::Snappy;
    let err = codec_err(codec);
    let mut out = Vec::new();
    let block = |b: &[u8], out: &mut Vec<u8>| -> Result<(), BatchError> {
        let n = snap::raw::decompress_len(b).map_err(|e| err(snap_err(e)))?;
        if n > limit - out.len() {
            return Err(BatchError::TooLarge { limit });
        }
        let start = out.len();
        out.resize(start + n, 0);
        let written = snap::raw::Decoder::new()
            .decompress(b, &mut out[start..])
            .map_err(|e| err(snap_err(e)))?;
        out.truncate(start + written);
        Ok(())
    };
    if !input.starts_with(SNAPPY_MAGIC) {
        block(input, &mut out)?;
        return Ok(out);
    }
    let mut pos = 0;
    while pos < input.len() {
        let rest = &input[pos..];
        if rest.starts_with(SNAPPY_MAGIC) {
            if rest.len() < SNAPPY_HEADER.len() {
                return Err(BatchError::Truncated {
                    what: "snappy header",
                    at: pos,
                });
            }
            pos += SNAPPY_HEADER.len();
            continue;
        }
        if rest.len() < 4 {
            return Err(BatchError::Truncated {
                what: "snappy block size",
                at: pos,
            });
        }
        let n = be_i32(rest);
        if n < 0 || n as usize > rest.len() - 4 {
            return Err(BatchError::Invalid {
                what: "snappy block size",
                at: pos,
                value: i64::from(n),
            });
        }
        block(&rest[4..4 + n as usize], &mut out)?;
        pos += 4 + n as usize;
    }
    Ok(out)
}

fn compress(codec: Compression, plain: &[u8]) -> Result<Vec<u8>, BatchError> {
    let err = codec_err(codec);
    match codec {
        Compression::None => Ok(plain.to_vec()),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(
                Vec::with_capacity(plain.len() / 2 + 64),
                flate2::Compression::default(),
            );
            e.write_all(plain).map_err(&err)?;
            e.finish().map_err(err)
        }
        Compression::Snappy => {
            let mut out = Vec::with_capacity(plain.len() / 2 + 64);
            out.extend_from_slice(SNAPPY_HEADER);
            let mut enc = snap::raw::Encoder::new();
            for chunk in plain.chunks(SNAPPY_BLOCK) {
                let c = enc.compress_vec(chunk).map_err(|e| err(snap_err(e)))?;
                out.extend_from_slice(&(c.len() as u32).to_be_bytes());
                out.extend_from_slice(&c);
            }
            Ok(out)
        }
        Compression::Lz4 => lz4_frame(plain).map_err(err),
        Compression::Zstd => zstd::bulk::compress(plain, ZSTD_LEVEL).map_err(err),
    }
}

/// An LZ4 frame laid out as Java's `Lz4BlockOutputStream` writes it (Java's
/// reader refuses linked blocks and blocks above the announced size).
fn lz4_frame(plain: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(plain.len() / 2 + 16);
    out.extend_from_slice(&LZ4_MAGIC.to_le_bytes());
    out.extend_from_slice(&LZ4_DESCRIPTOR);
    for chunk in plain.chunks(LZ4_BLOCK) {
        let c = lz4::block::compress(chunk, None, false)?;
        if c.len() < chunk.len() {
            out.extend_from_slice(&(c.len() as u32).to_le_bytes());
            out.extend_from_slice(&c);
        } else {
            out.extend_from_slice(&(chunk.len() as u32 | LZ4_UNCOMPRESSED).to_le_bytes());
            out.extend_from_slice(chunk);
        }
    }
    out.extend_from_slice(&0u32.to_le_bytes());
    Ok(out)
}

#[cfg(test)]
#[path = "record_batch_tests.rs"]
mod tests;
