//! Moves bytes that no stage reads from one socket to the other inside the
//! kernel, through a pipe (`splice(2)`), when both legs are plain TCP:
//! Fetch answers from the broker to the client, large Produce requests from
//! the client to the broker.
//!
//! Bytes passed through otherwise cross user space twice (read from one
//! socket, written to the other): on a small machine that shares its cores
//! with the broker and the clients, those copies are most of what Custos
//! costs them. Spliced, the pages the sender handed over (for a broker,
//! often its page cache, sent with sendfile) are passed on by reference.

use std::io;
use std::os::fd::OwnedFd;

use bytes::BytesMut;
use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use crate::stream::Side;

/// Bytes moved per splice call: the pipe is asked to hold this much.
const PIPE_BYTES: usize = 1024 * 1024;

/// Bytes read and written at a time where the bytes go through user space.
const COPY_CHUNK_BYTES: usize = 256 * 1024;

/// A pipe granted less than this is not used: splicing a page at a time
/// costs more calls than the copies it saves.
const MIN_PIPE_BYTES: usize = 64 * 1024;

/// A pipe for the relay and what it holds, or `None` if the system will not
/// give a useful one. An unprivileged user's pipes share a budget
/// (`fs.pipe-user-pages-soft`, 64 MiB by default) past which new pipes get
/// one page, so a smaller size is asked for before giving up.
fn make_pipe() -> Option<(OwnedFd, OwnedFd, usize)> {
    let (r, w) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).ok()?;
    let granted = [PIPE_BYTES, PIPE_BYTES / 4]
        .into_iter()
        .find_map(|n| rustix::pipe::fcntl_setpipe_size(&w, n).ok())
        .or_else(|| rustix::pipe::fcntl_getpipe_size(&w).ok())?;
    (granted >= MIN_PIPE_BYTES).then_some((r, w, granted))
}

/// A session's pipe, made on first use and kept for its later answers.
pub struct Relay {
    pipe: Option<(OwnedFd, OwnedFd)>,
    /// What the pipe holds at most (the kernel may grant less than asked).
    capacity: usize,
    /// Bytes moved since [`take_moved`](Self::take_moved) was last called.
    moved: u64,
    /// No useful pipe could be had: this session copies.
    refused: bool,
}

/// Why a relay stopped.
#[derive(Debug)]
pub enum RelayError {
    /// Reading from the sending side failed.
    Read(io::Error),
    /// The sending side closed the connection with this many bytes still to come.
    ReadClosed(usize),
    /// Writing to the receiving side failed.
    Write(io::Error),
}

impl Relay {
    /// A relay with no pipe yet.
    pub fn new() -> Self {
        Relay {
            pipe: None,
            capacity: 0,
            moved: 0,
            refused: false,
        }
    }

    /// Moves exactly `len` bytes from `from` to `to`. Returns `Ok(false)`
    /// without moving anything when the system gives no useful pipe (the caller
    /// then copies through user space as before).
    pub async fn relay(
        &mut self,
        from: &TcpStream,
        to: &TcpStream,
        mut len: usize,
    ) -> Result<bool, RelayError> {
        if self.pipe.is_none() {
            if self.refused {
                return Ok(false);
            }
            let Some((r, w, capacity)) = make_pipe() else {
                self.refused = true;
                return Ok(false);
            };
            self.capacity = capacity;
            self.pipe = Some((r, w));
        }
        let capacity = self.capacity;
        let Some((pipe_r, pipe_w)) = self.pipe.as_ref() else {
            return Ok(false);
        };
        let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
        while len > 0 {
            // Fill the pipe from the sender (it is empty here: each fill is
            // drained before the next, so EAGAIN means the socket is dry).
            let want = len.min(capacity);
            let filled = loop {
                from.readable().await.map_err(RelayError::Read)?;
                match from.try_io(Interest::READABLE, || {
                    splice(from, None, pipe_w, None, want, flags).map_err(io::Error::from)
                }) {
                    Ok(0) => return Err(RelayError::ReadClosed(len)),
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(RelayError::Read(e)),
                }
            };
            len -= filled;
            // Drain it to the receiver.
            let mut held = filled;
            while held > 0 {
                to.writable().await.map_err(RelayError::Write)?;
                match to.try_io(Interest::WRITABLE, || {
                    splice(pipe_r, None, to, None, held, flags).map_err(io::Error::from)
                }) {
                    Ok(0) => {
                        return Err(RelayError::Write(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "receiving socket took no bytes",
                        )))
                    }
                    Ok(n) => {
                        held -= n;
                        self.moved += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(RelayError::Write(e)),
                }
            }
        }
        Ok(true)
    }
}

impl Relay {
    /// Moves the next `len` bytes from `from` to `to`: in the kernel when
    /// `zero_copy` allows it, both sides are plain TCP and a pipe can be had;
    /// else through `scratch`, a chunk at a time. `to` is not flushed.
    pub async fn pass_on<R, W>(
        &mut self,
        from: &mut R,
        to: &mut W,
        len: usize,
        scratch: &mut BytesMut,
        zero_copy: bool,
    ) -> Result<(), RelayError>
    where
        R: AsyncRead + Side + Unpin,
        W: AsyncWrite + Side + Unpin,
    {
        if let (true, Some(f), Some(t)) = (zero_copy, from.plain_tcp(), to.plain_tcp()) {
            if self.relay(f, t, len).await? {
                return Ok(());
            }
        }
        let mut left = len;
        while left > 0 {
            scratch.clear();
            scratch.reserve(left.min(COPY_CHUNK_BYTES));
            let n = (&mut *from)
                .take(left.min(COPY_CHUNK_BYTES) as u64)
                .read_buf(scratch)
                .await
                .map_err(RelayError::Read)?;
            if n == 0 {
                return Err(RelayError::ReadClosed(left));
            }
            to.write_all(scratch).await.map_err(RelayError::Write)?;
            left -= n;
        }
        scratch.clear();
        Ok(())
    }

    /// Whether a pipe was made (some answer moved in the kernel).
    pub fn has_pipe(&self) -> bool {
        self.pipe.is_some()
    }

    /// Bytes moved since the last call (for the metric).
    pub fn take_moved(&mut self) -> u64 {
        std::mem::take(&mut self.moved)
    }
}

impl Default for Relay {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::tcp_pair;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn moves_exactly_the_bytes_asked_and_leaves_the_rest() {
        // broker_w -> broker_r (relay) -> client_w -> client_r
        let (mut broker_w, broker_r) = tcp_pair().await;
        let (client_w, mut client_r) = tcp_pair().await;
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            broker_w.write_all(&sent).await.unwrap();
            broker_w.write_all(b"NEXT").await.unwrap();
            broker_w
        });
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 3_000_000];
            client_r.read_exact(&mut got).await.unwrap();
            got
        });
        let mut relay = Relay::new();
        assert!(relay
            .relay(&broker_r, &client_w, payload.len())
            .await
            .unwrap());
        assert_eq!(reader.await.unwrap(), payload);
        let _keep = writer.await.unwrap();
        // The bytes after the answer stay in the broker's socket.
        let mut next = [0u8; 4];
        let mut broker_r = broker_r;
        broker_r.read_exact(&mut next).await.unwrap();
        assert_eq!(&next, b"NEXT");
    }

    #[tokio::test]
    async fn a_broker_closing_early_says_how_much_was_missing() {
        let (mut broker_w, broker_r) = tcp_pair().await;
        let (client_w, _client_r) = tcp_pair().await;
        broker_w.write_all(&[7u8; 1000]).await.unwrap();
        drop(broker_w);
        let mut relay = Relay::new();
        match relay.relay(&broker_r, &client_w, 5000).await {
            Err(RelayError::ReadClosed(left)) => assert_eq!(left, 4000),
            other => panic!("expected ReadClosed, got {other:?}"),
        }
    }
}
