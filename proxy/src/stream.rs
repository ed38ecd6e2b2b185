//! One stream type for plaintext and TLS sockets on either leg, so the session
//! code is written once.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::either::Either;

/// A client or upstream connection, plaintext or TLS.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS accepted from a client.
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS opened to a broker.
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::ServerTls(s) => s.is_write_vectored(),
            Stream::ClientTls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The side of a connection a session reads from or writes to, and, when it
/// is plain TCP, the socket itself: plaintext bytes that no stage reads can
/// then move between sockets inside the kernel (`splice.rs`).
pub trait Side {
    /// The TCP socket under this side, if the bytes on it are plaintext.
    fn plain_tcp(&self) -> Option<&TcpStream> {
        None
    }
}

/// A connection a session can split into a read side and a write side.
pub trait SplitSides: AsyncRead + AsyncWrite + Send + 'static {
    /// The side read from.
    type Read: AsyncRead + Side + Unpin + Send;
    /// The side written to.
    type Write: AsyncWrite + Side + Unpin + Send;
    /// Splits the connection.
    fn split_sides(self) -> (Self::Read, Self::Write);
}

/// The read side of a [`Stream`]: plain TCP split without a lock (its
/// socket reachable for splice), or TLS, whose sides share the TLS state.
pub type ReadSide = Either<tokio::net::tcp::OwnedReadHalf, tokio::io::ReadHalf<Stream>>;

/// The write side of a [`Stream`].
pub type WriteSide = Either<tokio::net::tcp::OwnedWriteHalf, tokio::io::WriteHalf<Stream>>;

impl SplitSides for Stream {
    type Read = ReadSide;
    type Write = WriteSide;
    fn split_sides(self) -> (ReadSide, WriteSide) {
        match self {
            Stream::Plain(tcp) => {
                let (r, w) = tcp.into_split();
                (Either::Left(r), Either::Left(w))
            }
            tls => {
                let (r, w) = tokio::io::split(tls);
                (Either::Right(r), Either::Right(w))
            }
        }
    }
}

impl Side for ReadSide {
    fn plain_tcp(&self) -> Option<&TcpStream> {
        match self {
            Either::Left(r) => Some(r.as_ref()),
            Either::Right(_) => None,
        }
    }
}

impl Side for WriteSide {
    fn plain_tcp(&self) -> Option<&TcpStream> {
        match self {
            Either::Left(w) => Some(w.as_ref()),
            Either::Right(_) => None,
        }
    }
}

/// In-memory connections (the session's unit tests) have no socket.
impl SplitSides for tokio::io::DuplexStream {
    type Read = tokio::io::ReadHalf<tokio::io::DuplexStream>;
    type Write = tokio::io::WriteHalf<tokio::io::DuplexStream>;
    fn split_sides(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

impl<T> Side for tokio::io::ReadHalf<T> {}
impl<T> Side for tokio::io::WriteHalf<T> {}

/// The two ends of a loopback TCP connection, for tests of the plain-TCP
/// (splice) paths.
#[cfg(test)]
pub(crate) async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let a = TcpStream::connect(l.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (b, _) = l.accept().await.expect("accept");
    (a, b)
}
