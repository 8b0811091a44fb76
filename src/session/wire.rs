//! The WebSocket wire as the server writes it. Every outbound frame is built
//! once, header and payload in one shared buffer ([`Frame`]), so a message
//! fanned out to many connections is framed once, not once per recipient,
//! and a connection's writer sends everything queued in as few writes as
//! the socket takes ([`write_frames`]), without a WebSocket library on the
//! write path.
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

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Opcode of a text frame.
const OP_TEXT: u8 = 0x1;
/// Opcode of a binary frame.
const OP_BINARY: u8 = 0x2;
/// Opcode of a close frame.
const OP_CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
const OP_PING: u8 = 0x9;
/// Opcode of a pong frame.
const OP_PONG: u8 = 0xA;
/// The most payload a control frame may carry (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// One complete, unmasked server-to-client WebSocket frame (FIN set):
/// header and payload in one shared buffer. Cloning shares the bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    /// A text frame. `payload` must be UTF-8 (the caller's encoder ensures it).
    pub fn text(payload: &[u8]) -> Self {
        Self::written(OP_TEXT, |out| out.extend_from_slice(payload))
    }

    /// A binary frame.
    pub fn binary(payload: &[u8]) -> Self {
        Self::written(OP_BINARY, |out| out.extend_from_slice(payload))
    }

    /// A data frame whose payload `write` appends to the buffer it is given
    /// (no copy of an encoded payload). `text`: a text frame (the payload
    /// must be UTF-8), else binary.
    pub fn encoded(text: bool, write: impl FnOnce(&mut Vec<u8>)) -> Self {
        Self::written(if text { OP_TEXT } else { OP_BINARY }, write)
    }

    /// A ping frame without payload.
    pub fn ping() -> Self {
        Frame(Bytes::from_static(&[0x80 | OP_PING, 0]))
    }

    /// The pong answering a ping with `payload` (cut to 125 bytes).
    pub fn pong(payload: &[u8]) -> Self {
        let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
        Self::written(OP_PONG, |out| out.extend_from_slice(payload))
    }

    /// A close frame with a status code and a reason (cut to fit 125 bytes
    /// at a character boundary).
    pub fn close(code: u16, reason: &str) -> Self {
        let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Self::written(OP_CLOSE, |out| {
            out.extend_from_slice(&code.to_be_bytes());
            out.extend_from_slice(&reason.as_bytes()[..end]);
        })
    }

    /// Every frame is built here: the payload is written behind room for
    /// the longest header, and the header then goes right before it.
    fn written(opcode: u8, write: impl FnOnce(&mut Vec<u8>)) -> Self {
        let mut buf = Vec::with_capacity(MAX_HEADER + 150);
        buf.resize(MAX_HEADER, 0);
        write(&mut buf);
        let (header, n) = header(opcode, buf.len() - MAX_HEADER);
        let start = MAX_HEADER - n;
        buf[start..MAX_HEADER].copy_from_slice(&header[..n]);
        Frame(Bytes::from(buf).slice(start..))
    }

    /// The frame's bytes as they go on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The payload (the bytes after the header).
    #[cfg(test)]
    fn payload(&self) -> &[u8] {
        let b = &self.0;
        let start = match b[1] & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        &b[start..]
    }

    /// The opcode (0x1 text, 0x2 binary, 0x8 close, 0x9 ping, 0xA pong).
    #[cfg(test)]
    fn opcode(&self) -> u8 {
        self.0[0] & 0x0f
    }
}

/// The longest frame header of a server frame (no mask).
const MAX_HEADER: usize = 10;

/// The header of an unmasked final frame: its bytes and their count.
fn header(opcode: u8, len: usize) -> ([u8; MAX_HEADER], usize) {
    let mut h = [0u8; MAX_HEADER];
    h[0] = 0x80 | opcode;
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if len <= u16::MAX as usize {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

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

    /// Flushes buffered bytes (TLS); a no-op on plain TCP.
    pub async fn flush(&mut self) -> io::Result<()> {
        match self {
            WriteSide::Tcp(_) => Ok(()),
            WriteSide::Other(w) => w.flush().await,
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
pub async fn write_frames(out: &mut WriteSide, frames: &[Frame]) -> io::Result<()> {
    let mut next = 0; // first frame not fully written
    let mut offset = 0; // bytes of `frames[next]` already written
    while next < frames.len() {
        let n = std::future::poll_fn(|cx| {
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
        })
        .await?;
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
    fn headers_use_the_shortest_length_form() {
        let small = Frame::text(b"hi");
        assert_eq!(small.as_bytes(), &[0x81, 2, b'h', b'i']);
        assert_eq!(small.payload(), b"hi");
        assert_eq!(small.opcode(), OP_TEXT);

        let mid = Frame::binary(&[7u8; 300]);
        assert_eq!(&mid.as_bytes()[..4], &[0x82, 126, 1, 44]);
        assert_eq!(mid.payload().len(), 300);

        let big = Frame::text(&vec![b'a'; 70_000]);
        assert_eq!(&big.as_bytes()[..2], &[0x81, 127]);
        assert_eq!(&big.as_bytes()[2..10], &70_000u64.to_be_bytes());
        assert_eq!(big.payload().len(), 70_000);
    }

    #[test]
    fn frames_encoded_in_place_match_copied_ones() {
        for len in [0usize, 5, 125, 126, 300, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let in_place = Frame::encoded(true, |out| out.extend_from_slice(&payload));
            assert_eq!(in_place, Frame::text(&payload), "{len} bytes");
            let binary = Frame::encoded(false, |out| out.extend_from_slice(&payload));
            assert_eq!(binary, Frame::binary(&payload), "{len} bytes");
        }
    }

    #[test]
    fn control_frames_fit_125_bytes() {
        assert_eq!(Frame::ping().as_bytes(), &[0x89, 0]);
        assert_eq!(Frame::pong(&[1u8; 200]).payload().len(), 125);
        let close = Frame::close(4000, &"é".repeat(100));
        assert_eq!(close.opcode(), OP_CLOSE);
        assert_eq!(&close.payload()[..2], &4000u16.to_be_bytes());
        let reason = std::str::from_utf8(&close.payload()[2..]).expect("cut at a char boundary");
        assert!(reason.len() <= 123 && reason.chars().all(|c| c == 'é'));
    }

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
        write_frames(&mut w, &frames).await.unwrap();
        drop(w); // FIN
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.as_bytes().to_vec()).collect();
        assert_eq!(client.await.unwrap(), expected);
    }
}
