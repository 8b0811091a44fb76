//! The WebSocket wire as the server writes it: a connection's writer sends
//! the pre-built frames of `outbound` (everything queued) in as few writes
//! as the socket takes ([`write_frames`]), without a WebSocket library on
//! the write path.
//!
//! The read side stays with tungstenite (masking, fragmentation, UTF-8,
//! size limits, close codes): [`ReadSide`] gives it the socket's read half and
//! a write half that discards, since every reply it would write (pongs, the
//! close echo) is sent by the session's writer instead. Plain TCP is split
//! into owned halves (no lock between reader and writer); any other stream
//! (TLS) is split with `tokio::io::split`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;

pub use crate::outbound::Frame;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// An upgraded connection, before it is split into its two halves.
pub enum Transport {
    /// Plain TCP, with any bytes the HTTP layer read past the request.
    Tcp(TcpStream, Bytes),
    /// Anything else (TLS), through hyper's upgraded stream.
    Other(TokioIo<Upgraded>),
}

impl Transport {
    /// Recovers the plain TCP stream from a hyper upgrade when there is one.
    pub fn from_upgraded(upgraded: Upgraded) -> Self {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => Transport::Tcp(parts.io.into_inner(), parts.read_buf),
            Err(other) => Transport::Other(TokioIo::new(other)),
        }
    }

    /// Splits into the reader's half, the bytes already read past the
    /// handshake, and the writer's half.
    pub fn split(self) -> (ReadSide, Vec<u8>, WriteSide) {
        match self {
            Transport::Tcp(tcp, prefix) => {
                let (r, w) = tcp.into_split();
                (ReadSide::Tcp(r), prefix.to_vec(), WriteSide::Tcp(w))
            }
            Transport::Other(io) => {
                let (r, w) = tokio::io::split(io);
                (ReadSide::Other(r), Vec::new(), WriteSide::Other(w))
            }
        }
    }
}

/// The read half, as tungstenite's stream: reads come from the socket,
/// writes are discarded (see the module comment).
pub enum ReadSide {
    /// Owned read half of a TCP stream.
    Tcp(OwnedReadHalf),
    /// Read half of another stream.
    Other(ReadHalf<TokioIo<Upgraded>>),
}

impl AsyncRead for ReadSide {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadSide::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ReadSide::Other(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ReadSide {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The write half, owned by the connection's writer task.
pub enum WriteSide {
    /// Owned write half of a TCP stream (dropping it sends FIN).
    Tcp(OwnedWriteHalf),
    /// Write half of another stream.
    Other(WriteHalf<TokioIo<Upgraded>>),
}

impl WriteSide {
    fn poll_write(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            WriteSide::Tcp(w) => Pin::new(w).poll_write(cx, bytes),
            WriteSide::Other(w) => Pin::new(w).poll_write(cx, bytes),
        }
    }

    /// Flushes buffered bytes (TLS); a no-op on plain TCP. Fails with
    /// `TimedOut` when the flush makes no progress within `stall`.
    pub async fn flush(&mut self, stall: Duration) -> io::Result<()> {
        match self {
            WriteSide::Tcp(_) => Ok(()),
            WriteSide::Other(w) => match tokio::time::timeout(stall, w.flush()).await {
                Ok(r) => r,
                Err(_) => Err(io::ErrorKind::TimedOut.into()),
            },
        }
    }
}

/// Most bytes copied into one write of a batch.
const MAX_WRITE: usize = 64 * 1024;

thread_local! {
    /// Scratch space of the writers on this thread: a batch is copied here
    /// and leaves in one `write`. The copy is rebuilt on every poll, so no
    /// bytes live in it across an await and a writer holds no buffer of its
    /// own while idle.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes `frames` in order, resuming after partial writes. A single frame
/// is written from its shared bytes; several are first copied together (up
/// to 64 KiB per write). A plain `write` of one buffer costs the kernel far
/// less than a vectored write of many small ones: each iovec is imported
/// and checked apart (`copy_from_iter`, `check_object_size` in profiles).
///
/// `stall` bounds each write call: a socket that accepts no byte for that
/// long (a peer that stopped reading with full buffers) fails the write
/// with `TimedOut`, so a writer can never hang on a dead reader.
pub async fn write_frames(
    out: &mut WriteSide,
    frames: &[Frame],
    stall: Duration,
) -> io::Result<()> {
    let mut next = 0; // first frame not fully written
    let mut offset = 0; // bytes of `frames[next]` already written
    while next < frames.len() {
        let write = std::future::poll_fn(|cx| {
            let first = &frames[next].as_bytes()[offset..];
            if next + 1 == frames.len() || first.len() >= MAX_WRITE {
                return out.poll_write(cx, first);
            }
            SCRATCH.with_borrow_mut(|buf| {
                buf.clear();
                buf.extend_from_slice(first);
                for frame in &frames[next + 1..] {
                    if buf.len() + frame.as_bytes().len() > MAX_WRITE {
                        break;
                    }
                    buf.extend_from_slice(frame.as_bytes());
                }
                let polled = out.poll_write(cx, buf);
                if buf.capacity() > 4 * MAX_WRITE {
                    // A huge frame went through: give the memory back.
                    *buf = Vec::new();
                }
                polled
            })
        });
        // The timer is armed only when the write does not complete at once.
        let n = match tokio::time::timeout(stall, write).await {
            Ok(n) => n?,
            Err(_) => return Err(io::ErrorKind::TimedOut.into()),
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        (next, offset) = advance(frames, next, offset, n);
    }
    Ok(())
}

/// Moves the write position (`next` frame, `offset` into it) past `n` bytes.
fn advance(frames: &[Frame], mut next: usize, mut offset: usize, mut n: usize) -> (usize, usize) {
    while n > 0 && next < frames.len() {
        let left = frames[next].as_bytes().len() - offset;
        if n >= left {
            n -= left;
            next += 1;
            offset = 0;
        } else {
            offset += n;
            n = 0;
        }
    }
    (next, offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn advance_crosses_frame_boundaries() {
        let frames = [Frame::text(b"abc"), Frame::text(b"de"), Frame::text(b"f")];
        // 5, 4 and 3 bytes on the wire.
        assert_eq!(advance(&frames, 0, 0, 2), (0, 2));
        assert_eq!(advance(&frames, 0, 2, 3), (1, 0));
        assert_eq!(advance(&frames, 1, 0, 7), (3, 0));
        assert_eq!(advance(&frames, 0, 4, 2), (1, 1));
    }

    #[tokio::test]
    async fn frames_arrive_whole_and_in_order_across_partial_writes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).await.unwrap();
            all
        });
        let (server, _) = listener.accept().await.unwrap();
        let (_r, _prefix, mut w) = Transport::Tcp(server, Bytes::new()).split();
        // About 6 MB in 200 frames of 1..=60,000 bytes: more than the socket
        // buffers hold, so writes end part-way through frames and batches.
        let frames: Vec<Frame> = (0..200)
            .map(|i| Frame::binary(&vec![i as u8; 1 + (i * 7919) % 60_000]))
            .collect();
        write_frames(&mut w, &frames, Duration::from_secs(10))
            .await
            .unwrap();
        drop(w); // FIN
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.as_bytes().to_vec()).collect();
        assert_eq!(client.await.unwrap(), expected);
    }
}
