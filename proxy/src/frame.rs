//! Kafka framing: a 4-byte big-endian length, then that many bytes.
//!
//! The length prefix decides everything: a frame is split off the read buffer
//! without copying once it is whole, and a length that is negative or above the
//! configured maximum ends the connection before any memory is reserved for it,
//! so a hostile peer cannot make Custos allocate what it claims.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::Decoder;

/// Why a stream of frames could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The peer announced a frame larger than allowed.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The length prefix was negative: not Kafka.
    #[error("negative frame length {0}")]
    NegativeLength(i32),
    /// The stream ended inside a frame.
    #[error("connection closed inside a frame ({have} of {want} bytes received)")]
    Truncated {
        /// Bytes received (prefix included).
        have: usize,
        /// Bytes the frame needed (prefix included).
        want: usize,
    },
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// A `tokio_util` decoder of Kafka frames; yields each frame body without its prefix.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max: usize,
}

impl FrameCodec {
    /// A codec refusing frames above `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { max }
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        if len < 0 {
            return Err(FrameError::NegativeLength(len));
        }
        let len = len as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if src.len() < 4 + len {
            // Reserve once for the whole frame so a large frame is not read
            // through a series of small reallocations.
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        Ok(Some(src.split_to(len).freeze()))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => {
                let want = if src.len() >= 4 {
                    4 + i32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize
                } else {
                    4
                };
                Err(FrameError::Truncated {
                    have: src.len(),
                    want,
                })
            }
        }
    }
}

/// Reads exactly one frame and nothing after it, for exchanges (SASL, broker
/// discovery) that must not leave bytes behind in a buffer.
pub async fn read_one<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Bytes, FrameError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = i32::from_be_bytes(len);
    if len < 0 {
        return Err(FrameError::NegativeLength(len));
    }
    let len = len as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut body = BytesMut::zeroed(len);
    r.read_exact(&mut body).await?;
    Ok(body.freeze())
}

/// Writes one frame (prefix and body) without copying the body.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &Bytes) -> std::io::Result<()> {
    let prefix = (body.len() as u32).to_be_bytes();
    let mut buf = Buf::chain(&prefix[..], body.clone());
    // write_all_buf uses vectored writes where the stream supports them, so
    // the prefix and the body go out in one system call without a copy.
    w.write_all_buf(&mut buf).await
}

/// Writes one frame whose body comes in pieces laid end to end (a response
/// with revealed records spliced between slices of the broker's bytes), with
/// vectored writes: the pieces are never copied into one buffer.
pub async fn write_frame_parts<W: AsyncWrite + Unpin>(
    w: &mut W,
    parts: &[Bytes],
) -> std::io::Result<()> {
    let len: usize = parts.iter().map(Bytes::len).sum();
    let len = u32::try_from(len)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
    let mut buf = Parts {
        prefix: len.to_be_bytes(),
        prefix_at: 0,
        parts: parts.iter().filter(|p| !p.is_empty()).cloned().collect(),
    };
    w.write_all_buf(&mut buf).await
}

/// Writes pieces of a frame laid end to end (no length prefix is added),
/// with vectored writes.
pub async fn write_pieces<W: AsyncWrite + Unpin>(
    w: &mut W,
    parts: &[Bytes],
) -> std::io::Result<()> {
    let mut buf = Parts {
        prefix: [0; 4],
        prefix_at: 4,
        parts: parts.iter().filter(|p| !p.is_empty()).cloned().collect(),
    };
    w.write_all_buf(&mut buf).await
}

/// A length prefix and pieces, as one [`Buf`].
struct Parts {
    prefix: [u8; 4],
    prefix_at: usize,
    parts: std::collections::VecDeque<Bytes>,
}

impl Buf for Parts {
    fn remaining(&self) -> usize {
        4 - self.prefix_at + self.parts.iter().map(Bytes::len).sum::<usize>()
    }

    fn chunk(&self) -> &[u8] {
        if self.prefix_at < 4 {
            return &self.prefix[self.prefix_at..];
        }
        self.parts.front().map_or(&[], |b| &b[..])
    }

    fn advance(&mut self, mut cnt: usize) {
        let p = cnt.min(4 - self.prefix_at);
        self.prefix_at += p;
        cnt -= p;
        while cnt > 0 {
            let Some(front) = self.parts.front_mut() else {
                return;
            };
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.parts.pop_front();
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>]) -> usize {
        let mut n = 0;
        if self.prefix_at < 4 && n < dst.len() {
            dst[n] = std::io::IoSlice::new(&self.prefix[self.prefix_at..]);
            n += 1;
        }
        for p in &self.parts {
            if n == dst.len() {
                break;
            }
            dst[n] = std::io::IoSlice::new(p);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn splits_pipelined_frames_and_waits_for_partial_ones() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&frame(b"one"));
        buf.extend_from_slice(&frame(b"second"));
        buf.extend_from_slice(&frame(b"third")[..5]);
        assert_eq!(
            codec.decode(&mut buf).expect("ok").as_deref(),
            Some(&b"one"[..])
        );
        assert_eq!(
            codec.decode(&mut buf).expect("ok").as_deref(),
            Some(&b"second"[..])
        );
        assert!(codec.decode(&mut buf).expect("ok").is_none());
        buf.extend_from_slice(&frame(b"third")[5..]);
        assert_eq!(
            codec.decode(&mut buf).expect("ok").as_deref(),
            Some(&b"third"[..])
        );
    }

    #[test]
    fn refuses_oversized_frames_before_buffering_them() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&2000u32.to_be_bytes()[..]);
        match codec.decode(&mut buf) {
            Err(FrameError::TooLarge {
                len: 2000,
                max: 1024,
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(buf.capacity() < 2000);
    }

    #[test]
    fn refuses_negative_lengths() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&(-5i32).to_be_bytes()[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::NegativeLength(-5))
        ));
    }

    #[test]
    fn eof_inside_a_frame_is_an_error() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&frame(b"truncated")[..6]);
        match codec.decode_eof(&mut buf) {
            Err(FrameError::Truncated { have: 6, want: 13 }) => {}
            other => panic!("unexpected {other:?}"),
        }
        let mut empty = BytesMut::new();
        assert!(codec.decode_eof(&mut empty).expect("clean eof").is_none());
    }

    #[tokio::test]
    async fn write_frame_prefixes_the_length() {
        let mut out = Vec::new();
        write_frame(&mut out, &Bytes::from_static(b"abc"))
            .await
            .expect("write");
        assert_eq!(out, frame(b"abc"));
    }

    #[tokio::test]
    async fn a_frame_in_parts_is_written_as_one_frame() {
        let parts = [
            Bytes::from_static(b"head"),
            Bytes::new(),
            Bytes::from(vec![7u8; 70_000]),
            Bytes::from_static(b"tail"),
        ];
        let mut out: Vec<u8> = Vec::new();
        write_frame_parts(&mut out, &parts).await.expect("write");
        assert_eq!(out, frame(&parts.concat()));
        let mut out: Vec<u8> = Vec::new();
        write_frame_parts(&mut out, &[]).await.expect("write");
        assert_eq!(out, frame(b""));
    }
}
