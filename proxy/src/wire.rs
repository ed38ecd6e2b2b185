//! A bounded reader for Kafka's wire primitives.
//!
//! Custos must read fields of client requests (topic names, group ids) that a
//! hostile client controls. The `kafka-protocol` crate's decoders reserve
//! memory for an array from its declared length before reading it, so a tiny
//! frame can demand gigabytes; this reader never allocates, checks every
//! length against the bytes actually present, and returns slices of the frame.

use std::ops::Range;

use bytes::{BufMut, BytesMut};

/// Why a field could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The frame ended before the field did.
    #[error("truncated: {what} needs {need} bytes at offset {at}, {have} left")]
    Truncated {
        /// Field being read.
        what: &'static str,
        /// Offset in the body.
        at: usize,
        /// Bytes needed.
        need: usize,
        /// Bytes left.
        have: usize,
    },
    /// A length or count that cannot be right.
    #[error("invalid {what} {value} at offset {at}")]
    Invalid {
        /// Field being read.
        what: &'static str,
        /// Offset in the body.
        at: usize,
        /// The value read.
        value: i64,
    },
    /// A string that is not UTF-8.
    #[error("{what} at offset {at} is not UTF-8")]
    NotUtf8 {
        /// Field being read.
        what: &'static str,
        /// Offset in the body.
        at: usize,
    },
}

/// Reads Kafka primitives from a body, in classic or flexible (compact) encoding.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    flexible: bool,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`; `flexible` selects compact strings/arrays and tagged fields.
    pub fn new(buf: &'a [u8], flexible: bool) -> Self {
        Self {
            buf,
            pos: 0,
            flexible,
        }
    }

    /// Current offset in the body.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether the message uses flexible encoding.
    pub fn is_flexible(&self) -> bool {
        self.flexible
    }

    fn take(&mut self, what: &'static str, n: usize) -> Result<&'a [u8], WireError> {
        if self.remaining() < n {
            return Err(WireError::Truncated {
                what,
                at: self.pos,
                need: n,
                have: self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, what: &'static str, n: usize) -> Result<(), WireError> {
        self.take(what, n).map(|_| ())
    }

    /// An INT8.
    pub fn i8(&mut self, what: &'static str) -> Result<i8, WireError> {
        Ok(self.take(what, 1)?[0] as i8)
    }

    /// An INT16.
    pub fn i16(&mut self, what: &'static str) -> Result<i16, WireError> {
        let b = self.take(what, 2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    /// An INT32.
    pub fn i32(&mut self, what: &'static str) -> Result<i32, WireError> {
        let b = self.take(what, 4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An INT64.
    pub fn i64(&mut self, what: &'static str) -> Result<i64, WireError> {
        let b = self.take(what, 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    /// An UNSIGNED_VARINT (at most 5 bytes, as Kafka writes them).
    pub fn uvarint(&mut self, what: &'static str) -> Result<u32, WireError> {
        let at = self.pos;
        let mut value: u32 = 0;
        for i in 0..5 {
            let byte = self.take(what, 1)?[0];
            value |= u32::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::Invalid {
            what,
            at,
            value: i64::from(value),
        })
    }

    /// A nullable length prefix: a varint (length + 1) when flexible, else an
    /// INT32 (`wide`, for bytes) or INT16 (for strings); `None` is null.
    fn nullable_len(&mut self, what: &'static str, wide: bool) -> Result<Option<usize>, WireError> {
        let at = self.pos;
        let len: i64 = if self.flexible {
            i64::from(self.uvarint(what)?) - 1
        } else if wide {
            i64::from(self.i32(what)?)
        } else {
            i64::from(self.i16(what)?)
        };
        match len {
            -1 => Ok(None),
            n if n < -1 => Err(WireError::Invalid { what, at, value: n }),
            n => Ok(Some(n as usize)),
        }
    }

    /// A nullable string's bytes (`None` for null), compact when flexible.
    pub fn nullable_bytes_str(
        &mut self,
        what: &'static str,
    ) -> Result<Option<&'a [u8]>, WireError> {
        match self.nullable_len(what, false)? {
            None => Ok(None),
            Some(n) => self.take(what, n).map(Some),
        }
    }

    /// A nullable UTF-8 string.
    pub fn nullable_str(&mut self, what: &'static str) -> Result<Option<&'a str>, WireError> {
        let at = self.pos;
        match self.nullable_bytes_str(what)? {
            None => Ok(None),
            Some(b) => std::str::from_utf8(b)
                .map(Some)
                .map_err(|_| WireError::NotUtf8 { what, at }),
        }
    }

    /// A non-null UTF-8 string.
    pub fn str(&mut self, what: &'static str) -> Result<&'a str, WireError> {
        let at = self.pos;
        self.nullable_str(what)?.ok_or(WireError::Invalid {
            what,
            at,
            value: -1,
        })
    }

    /// BYTES or RECORDS (nullable), compact when flexible; the slice is not copied.
    pub fn nullable_bytes(&mut self, what: &'static str) -> Result<Option<&'a [u8]>, WireError> {
        match self.nullable_len(what, true)? {
            None => Ok(None),
            Some(n) => self.take(what, n).map(Some),
        }
    }

    /// The length prefix of a BYTES or RECORDS field alone (0 for null), for
    /// a reader whose buffer need not hold the bytes that follow.
    pub fn bytes_len(&mut self, what: &'static str) -> Result<usize, WireError> {
        Ok(self.nullable_len(what, true)?.unwrap_or(0))
    }

    /// A RECORDS field where it sits: the records' bytes (`None` when null)
    /// and the whole field, its length prefix included, as ranges of the
    /// buffer, for splicing new records in.
    pub fn records_field(
        &mut self,
        what: &'static str,
    ) -> Result<(Option<Range<usize>>, Range<usize>), WireError> {
        let start = self.pos;
        let records = self.nullable_bytes(what)?;
        let end = self.pos;
        Ok((records.map(|b| end - b.len()..end), start..end))
    }

    /// An array's element count (`None` for a null array), compact when flexible.
    ///
    /// Every element takes at least one byte, so a count above the bytes left
    /// is refused here, before anyone sizes anything by it.
    pub fn array_len(&mut self, what: &'static str) -> Result<Option<usize>, WireError> {
        let at = self.pos;
        let n: i64 = if self.flexible {
            i64::from(self.uvarint(what)?) - 1
        } else {
            i64::from(self.i32(what)?)
        };
        if n == -1 {
            return Ok(None);
        }
        if n < -1 || n as u64 > self.remaining() as u64 {
            return Err(WireError::Invalid { what, at, value: n });
        }
        Ok(Some(n as usize))
    }

    /// A UUID.
    pub fn uuid(&mut self, what: &'static str) -> Result<[u8; 16], WireError> {
        let b = self.take(what, 16)?;
        let mut a = [0u8; 16];
        a.copy_from_slice(b);
        Ok(a)
    }

    /// Skips a tagged-field section (flexible versions only; a no-op otherwise).
    pub fn tagged_fields(&mut self) -> Result<(), WireError> {
        if !self.flexible {
            return Ok(());
        }
        let n = self.uvarint("tagged field count")?;
        for _ in 0..n {
            self.uvarint("tag")?;
            let size = self.uvarint("tagged field size")?;
            self.skip("tagged field", size as usize)?;
        }
        Ok(())
    }
}

/// Writes the length prefix of a non-null BYTES or RECORDS field of `n`
/// bytes: a compact unsigned varint of `n + 1` when flexible, else an INT32.
/// Fails (with `n`) when the length does not fit.
pub fn put_bytes_len(out: &mut BytesMut, n: usize, flexible: bool) -> Result<(), usize> {
    if flexible {
        let mut v = u32::try_from(n)
            .ok()
            .and_then(|v| v.checked_add(1))
            .ok_or(n)?;
        while v >= 0x80 {
            out.put_u8((v as u8) | 0x80);
            v >>= 7;
        }
        out.put_u8(v as u8);
    } else {
        out.put_i32(i32::try_from(n).map_err(|_| n)?);
    }
    Ok(())
}

/// Writes an unsigned varint.
pub fn put_uvarint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn uvarint_len(v: u32) -> usize {
    match v {
        0..0x80 => 1,
        0x80..0x4000 => 2,
        0x4000..0x20_0000 => 3,
        0x20_0000..0x1000_0000 => 4,
        _ => 5,
    }
}

/// Tag numbers of the tagged field that pads a section: far above any tag
/// Kafka defines, so every client skips it as unknown. Two, because their
/// varints differ in length, so one of them always fits a gap exactly.
const PAD_TAGS: [u32; 2] = [10_000, 1_000_000];

/// `fields` (a tagged-fields section: count, then the fields in tag order)
/// grown to exactly `len` bytes by one more field of zeros with an unknown
/// tag; `fields` itself when it is `len` long. `None` when it is longer, is
/// not a tagged-fields section, or no padding field fits the gap.
pub fn pad_tagged_fields(fields: &[u8], len: usize) -> Option<Vec<u8>> {
    if fields.len() == len {
        return Some(fields.to_vec());
    }
    let mut r = Reader::new(fields, true);
    let count = r.uvarint("tagged field count").ok()?;
    let rest = &fields[r.position()..];
    let head = uvarint_len(count.checked_add(1)?) + rest.len();
    for tag in PAD_TAGS {
        let gap = len.checked_sub(head + uvarint_len(tag))?;
        // The size's own varint is part of the gap.
        for size_len in 1..=3 {
            let Some(size) = gap.checked_sub(size_len) else {
                continue;
            };
            let size = u32::try_from(size).ok()?;
            if uvarint_len(size) != size_len {
                continue;
            }
            let mut out = Vec::with_capacity(len);
            put_uvarint(&mut out, count + 1);
            out.extend_from_slice(rest);
            put_uvarint(&mut out, tag);
            put_uvarint(&mut out, size);
            out.resize(len, 0);
            return Some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_tagged_fields_have_the_length_asked_and_keep_the_fields() {
        // One field: tag 0, 3 bytes.
        let fields = [1u8, 0, 3, 0xaa, 0xbb, 0xcc];
        for len in 6..400 {
            let Some(out) = pad_tagged_fields(&fields, len) else {
                // Only gaps too small for any padding field may fail.
                assert!(len < 6 + 3, "no padding fits {len}");
                continue;
            };
            assert_eq!(out.len(), len);
            let mut r = Reader::new(&out, true);
            let count = r.uvarint("count").unwrap();
            let mut tags = vec![];
            for _ in 0..count {
                let tag = r.uvarint("tag").unwrap();
                let size = r.uvarint("size").unwrap() as usize;
                let data = &out[r.position()..r.position() + size];
                if tag == 0 {
                    assert_eq!(data, &[0xaa, 0xbb, 0xcc]);
                }
                r.skip("data", size).unwrap();
                tags.push(tag);
            }
            assert_eq!(r.remaining(), 0, "len {len}");
            assert_eq!(tags[0], 0);
            assert!(
                len == 6 || (tags.len() == 2 && tags[1] >= 10_000),
                "len {len}"
            );
        }
        // Longer than asked: no.
        assert_eq!(pad_tagged_fields(&fields, 5), None);
        // An empty section pads too.
        assert_eq!(pad_tagged_fields(&[0], 5).map(|v| v.len()), Some(5));
    }

    #[test]
    fn bytes_lengths_round_trip_through_the_reader() {
        for flexible in [false, true] {
            for n in [0usize, 1, 127, 128, 300, 70_000] {
                let mut out = BytesMut::new();
                put_bytes_len(&mut out, n, flexible).expect("fits");
                out.extend(std::iter::repeat_n(7u8, n));
                let mut r = Reader::new(&out, flexible);
                let (records, field) = r.records_field("records").expect("read");
                assert_eq!(records.map(|r| r.len()), Some(n));
                assert_eq!(field, 0..out.len());
            }
        }
        let mut out = BytesMut::new();
        assert_eq!(put_bytes_len(&mut out, usize::MAX, true), Err(usize::MAX));
    }

    #[test]
    fn classic_and_compact_strings() {
        let mut r = Reader::new(&[0, 3, b'a', b'b', b'c', 0xff, 0xff], false);
        assert_eq!(r.str("s").expect("s"), "abc");
        assert_eq!(r.nullable_str("n").expect("n"), None);
        assert_eq!(r.remaining(), 0);
        let mut r = Reader::new(&[4, b'x', b'y', b'z', 0], true);
        assert_eq!(r.str("s").expect("s"), "xyz");
        assert_eq!(r.nullable_str("n").expect("n"), None);
    }

    #[test]
    fn array_counts_beyond_the_frame_are_refused_without_allocating() {
        let mut r = Reader::new(&[0x7f, 0xff, 0xff, 0xff, 1, 2], false);
        assert!(matches!(
            r.array_len("topics"),
            Err(WireError::Invalid {
                value: 2147483647,
                ..
            })
        ));
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0x0f], true);
        assert!(r.array_len("topics").is_err());
        let mut r = Reader::new(&[0, 0, 0, 2, 9, 9], false);
        assert_eq!(r.array_len("topics").expect("ok"), Some(2));
    }

    #[test]
    fn truncation_and_bad_varints_are_errors() {
        let mut r = Reader::new(&[0, 5, b'a'], false);
        assert!(matches!(
            r.str("s"),
            Err(WireError::Truncated { need: 5, .. })
        ));
        let mut r = Reader::new(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01], true);
        assert!(r.uvarint("v").is_err());
        let mut r = Reader::new(&[1, 0, 2, 0xaa, 0xbb], true);
        r.tagged_fields().expect("tagged");
        assert_eq!(r.remaining(), 0);
    }
}
