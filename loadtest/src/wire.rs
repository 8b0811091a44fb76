//! The load client's WebSocket wire (RFC 6455, client side), written for the
//! generator's hot path: frames are parsed in place from one read buffer
//! (no per-frame allocation, no UTF-8 pass: the scanner reads what it
//! needs), and reads are not zero-filled first. At 2M deliveries/s the
//! generator shares the cores with the servers it measures, so every
//! microsecond it spends per frame is taken from them.
//!
//! It speaks what relay needs and no more: `ws://` or `wss://` (TLS by
//! tokio-rustls, see [`tls_connector`]), the opening handshake with a
//! subprotocol, masked client frames, unfragmented server frames (relay
//! never fragments), pings answered with pongs, close frames.

use std::io;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};
use tokio_util::either::Either;

/// The client's TLS settings for `wss://`: the webpki roots, plus the
/// certificates of `ca` (a PEM file, for a private CA) when given.
pub(crate) fn tls_connector(ca: Option<&Path>) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca {
        let mut n = 0;
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading --ca {}", path.display()))?
        {
            let cert = cert.with_context(|| format!("parsing --ca {}", path.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("--ca {}: not a CA certificate", path.display()))?;
            n += 1;
        }
        if n == 0 {
            anyhow::bail!("--ca {}: no certificate in the file", path.display());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A client socket: plain TCP (`ws://`) or TLS over TCP (`wss://`).
pub(crate) type Stream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// Largest server frame accepted.
const MAX_FRAME: usize = 16 << 20;
/// Largest HTTP response head accepted in the handshake.
const MAX_HEAD: usize = 16 << 10;

/// A frame from the server.
#[derive(Debug)]
pub(crate) enum In {
    /// Text payload (UTF-8 as sent by relay; not re-validated here).
    Text(Bytes),
    /// Binary payload.
    Binary(Bytes),
    /// Close, with its status code when it carried one.
    Close(Option<u16>),
}

/// Why the connection failed.
#[derive(Debug)]
pub(crate) enum WsError {
    /// A socket error.
    Io(io::Error),
    /// The peer closed the TCP connection.
    Eof,
    /// A refused handshake: HTTP status and the JSON body's `error` code.
    Http(u16, Option<String>),
    /// A frame or handshake that breaks the protocol.
    Protocol(&'static str),
}

impl From<io::Error> for WsError {
    fn from(e: io::Error) -> Self {
        WsError::Io(e)
    }
}

/// One client connection.
pub(crate) struct Ws {
    stream: Stream,
    buf: BytesMut,
    /// Bytes asked of each read (grown while reads fill it).
    read_size: usize,
    min_read: usize,
    /// Control replies not yet written (pongs).
    pending: Vec<u8>,
    mask_state: u32,
}

impl Ws {
    /// Runs the opening handshake on a connected stream: `GET path` with
    /// `subprotocol`. `read_size`: the first read's size (reads grow to
    /// 64 KiB while they come back full).
    pub(crate) async fn handshake(
        mut stream: Stream,
        host: &str,
        path: &str,
        subprotocol: &str,
        read_size: usize,
    ) -> Result<Ws, WsError> {
        let key = generate_key();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Protocol: {subprotocol}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        stream.flush().await?;
        let mut buf = BytesMut::with_capacity(1024);
        let head_len = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                return Err(WsError::Protocol("response head too large"));
            }
            buf.reserve(1024);
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(WsError::Eof);
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_len]).to_string();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or(WsError::Protocol("bad status line"))?;
        if status != 101 {
            let code = refusal_code(&mut stream, &head, buf.split_off(head_len)).await;
            return Err(WsError::Http(status, code));
        }
        let accept = derive_accept_key(key.as_bytes());
        let accepted = head.lines().any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == accept
            })
        });
        if !accepted {
            return Err(WsError::Protocol("wrong Sec-WebSocket-Accept"));
        }
        buf.advance(head_len);
        Ok(Ws {
            stream,
            buf,
            read_size: read_size.max(1024),
            min_read: read_size.max(1024),
            pending: Vec::new(),
            // Any non-zero start works for xorshift.
            mask_state: rand::random::<u32>() | 1,
        })
    }

    /// The next data or close frame; pings are answered on the way. `None`
    /// once the connection ended cleanly after a close. Cancel-safe: bytes
    /// read stay in the buffer.
    pub(crate) async fn next(&mut self) -> Option<Result<In, WsError>> {
        loop {
            match self.parse() {
                Ok(Some(frame)) => return Some(Ok(frame)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            // Over TLS pongs cannot be written without waiting: write
            // them here (each returned write is drained, so this stays
            // cancel-safe).
            while !self.pending.is_empty() {
                match self.stream.write(&self.pending).await {
                    Ok(0) => return Some(Err(WsError::Eof)),
                    Ok(n) => {
                        self.pending.drain(..n);
                    }
                    Err(e) => return Some(Err(e.into())),
                }
                if let Err(e) = self.stream.flush().await {
                    return Some(Err(e.into()));
                }
            }
            if self.buf.capacity() - self.buf.len() < self.read_size {
                self.buf.reserve(self.read_size);
            }
            let asked = self.buf.capacity() - self.buf.len();
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) => return Some(Err(WsError::Eof)),
                Ok(n) => {
                    // Reads that fill what they were given mean a backlog:
                    // ask for more next time (fewer system calls).
                    self.read_size = if n == asked {
                        (self.read_size * 2).min(64 << 10)
                    } else {
                        self.min_read
                    };
                }
                Err(e) => return Some(Err(e.into())),
            }
        }
    }

    /// Parses one frame from the buffer, answering pings.
    fn parse(&mut self) -> Result<Option<In>, WsError> {
        loop {
            let b = &self.buf[..];
            if b.len() < 2 {
                return Ok(None);
            }
            if b[1] & 0x80 != 0 {
                return Err(WsError::Protocol("masked server frame"));
            }
            if b[0] & 0x80 == 0 || b[0] & 0x0f == 0 {
                return Err(WsError::Protocol("fragmented frame"));
            }
            let (len, header) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => {
                    let mut l = [0u8; 8];
                    l.copy_from_slice(&b[2..10]);
                    (u64::from_be_bytes(l) as usize, 10)
                }
                126 | 127 => return Ok(None),
                n => (n as usize, 2),
            };
            if len > MAX_FRAME {
                return Err(WsError::Protocol("frame too large"));
            }
            if b.len() < header + len {
                self.buf.reserve(header + len - b.len());
                return Ok(None);
            }
            let opcode = b[0] & 0x0f;
            self.buf.advance(header);
            let payload = self.buf.split_to(len).freeze();
            match opcode {
                0x1 => return Ok(Some(In::Text(payload))),
                0x2 => return Ok(Some(In::Binary(payload))),
                0x8 => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return Ok(Some(In::Close(code)));
                }
                0x9 => {
                    let pong = self.frame(0xA, &payload);
                    self.pending.extend_from_slice(&pong);
                    self.try_flush_pending();
                }
                0xA => {}
                _ => return Err(WsError::Protocol("unknown opcode")),
            }
        }
    }

    /// Writes pending control replies if the socket takes them now.
    fn try_flush_pending(&mut self) {
        let Either::Left(stream) = &self.stream else {
            return;
        };
        while !self.pending.is_empty() {
            match stream.try_write(&self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(_) => return,
            }
        }
    }

    /// A masked client frame.
    fn frame(&mut self, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        out.push(0x80 | opcode);
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= u16::MAX as usize {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        // xorshift32: masks need not be secret in a load generator.
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_state = x;
        let mask = x.to_be_bytes();
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    /// Sends a text frame.
    pub(crate) async fn send_text(&mut self, payload: &[u8]) -> Result<(), WsError> {
        self.send(0x1, payload).await
    }

    /// Sends a binary frame.
    pub(crate) async fn send_binary(&mut self, payload: &[u8]) -> Result<(), WsError> {
        self.send(0x2, payload).await
    }

    /// Sends a close frame (1000) and stops writing.
    pub(crate) async fn close(&mut self) -> Result<(), WsError> {
        self.send(0x8, &1000u16.to_be_bytes()).await?;
        self.stream.shutdown().await?;
        Ok(())
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<(), WsError> {
        let frame = self.frame(opcode, payload);
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            self.stream.write_all(&pending).await?;
        }
        self.stream.write_all(&frame).await?;
        if matches!(self.stream, Either::Right(_)) {
            self.stream.flush().await?;
        }
        Ok(())
    }
}

/// The `error` code of a refusal's JSON body (PROTOCOL §1), if it has one.
async fn refusal_code(stream: &mut Stream, head: &str, mut body: BytesMut) -> Option<String> {
    let length: usize = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })?;
    let length = length.min(MAX_HEAD);
    while body.len() < length {
        body.reserve(length - body.len());
        match stream.read_buf(&mut body).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let v: serde_json::Value = serde_json::from_slice(&body[..body.len().min(length)]).ok()?;
    v.get("error").and_then(|e| e.as_str()).map(str::to_owned)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relay-like peer: answers the handshake, then writes `frames` and
    /// returns what the client sent (unmasked).
    async fn peer(
        frames: Vec<Vec<u8>>,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                s.read_exact(&mut b).await.unwrap();
                head.push(b[0]);
            }
            let head = String::from_utf8(head).unwrap();
            let key = head
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap();
            let accept = derive_accept_key(key.as_bytes());
            let mut out = format!(
                "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\
                 Upgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .into_bytes();
            for f in frames {
                out.extend(f);
            }
            // Byte by byte: every frame arrives split over reads.
            for byte in out {
                s.write_all(&[byte]).await.unwrap();
            }
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got).await;
            got
        });
        (addr, task)
    }

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        if payload.len() < 126 {
            f.push(payload.len() as u8);
        } else {
            f.push(126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(payload);
        f
    }

    /// Unmasks the client frames in `bytes`: (opcode, payload) each.
    fn client_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while bytes.len() >= 6 {
            assert_ne!(bytes[1] & 0x80, 0, "client frames are masked");
            let (len, mut at) = match bytes[1] & 0x7f {
                126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
                n => (n as usize, 2),
            };
            let mask = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
            at += 4;
            let payload = bytes[at..at + len]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            out.push((bytes[0] & 0x0f, payload));
            bytes = &bytes[at + len..];
        }
        out
    }

    #[tokio::test]
    async fn frames_split_over_reads_are_parsed_and_pings_answered() {
        let big = vec![b'x'; 300];
        let (addr, peer) = peer(vec![
            server_frame(0x1, b"{\"type\":\"welcome\"}"),
            server_frame(0x9, b"hb"),
            server_frame(0x2, &big),
            server_frame(0x8, &4000u16.to_be_bytes()),
        ])
        .await;
        let s = TcpStream::connect(addr).await.unwrap();
        let mut ws = Ws::handshake(Either::Left(s), "h", "/ws", "relay.v1.json", 1024)
            .await
            .unwrap();
        match ws.next().await {
            Some(Ok(In::Text(t))) => assert_eq!(&t[..], b"{\"type\":\"welcome\"}"),
            other => panic!("{other:?}"),
        }
        match ws.next().await {
            Some(Ok(In::Binary(b))) => assert_eq!(b.len(), 300),
            other => panic!("{other:?}"),
        }
        ws.send_text(&[b'y'; 200]).await.unwrap();
        match ws.next().await {
            Some(Ok(In::Close(code))) => assert_eq!(code, Some(4000)),
            other => panic!("{other:?}"),
        }
        ws.close().await.unwrap();
        let sent = client_frames(&peer.await.unwrap());
        assert_eq!(sent[0], (0xA, b"hb".to_vec()), "the ping's pong first");
        assert_eq!(sent[1], (0x1, vec![b'y'; 200]));
        assert_eq!(sent[2], (0x8, 1000u16.to_be_bytes().to_vec()));
    }

    #[tokio::test]
    async fn a_refusal_reports_its_status_and_code() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b).await;
            let body = r#"{"error":"name_taken","message":"in use"}"#;
            let resp = format!(
                "HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).await.unwrap();
        });
        let s = TcpStream::connect(addr).await.unwrap();
        match Ws::handshake(Either::Left(s), "h", "/ws?user=a", "relay.v1.json", 1024).await {
            Err(WsError::Http(409, Some(code))) => assert_eq!(code, "name_taken"),
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("accepted"),
        }
    }
}
