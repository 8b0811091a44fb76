//! The machine's floor: a bare-minimum fan-out server that speaks just
//! enough of relay's wire protocol for `loadtest --scenario fanout` (the
//! handshake, `welcome`, `join` → `joined`, `send` → `ack` + `message` to
//! every other member of the room). No Redis, no history, no limits, no
//! queues: each message is encoded once (with relay's own encoder, so the
//! bytes match relay's) and written to every member right from the
//! publisher's task with one `send()` each; whatever a socket does not take
//! is kept and written by that connection's flusher task (up to 8 MiB; a
//! connection that falls further behind, or whose socket fails, is
//! dropped). Client frames are read through a 1 KiB buffer. JSON only.
//!
//! It is a yardstick, not a product: BENCHMARKS.md compares relay with it
//! to tell what the machine costs from what relay adds.
//!
//! ```text
//! cargo run --release --example floor -- 127.0.0.1:9100 [THREADS]
//! target/release/loadtest --url ws://127.0.0.1:9100/ws --scenario fanout -c 1000 \
//!     --msg-rate 100 -d 15 --server-pid $(pgrep -f 'examples/floor')
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use relay::outbound::Frame;
use relay::protocol::{encode_into, ChatMessage, Encoding, Ref, ServerFrame};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Most bytes a connection may have waiting before it is dropped.
const MAX_PENDING: usize = 8 << 20;
/// Largest client frame payload accepted.
const MAX_FRAME: usize = 1 << 20;

/// One connection's write side: the socket, and the bytes it did not take.
struct Conn {
    id: u64,
    user: String,
    out: OwnedWriteHalf,
    pending: Mutex<Vec<u8>>,
    wake: Notify,
    /// Set when the socket failed, fell too far behind, or was closed:
    /// nothing more is written, and the flusher ends.
    dead: AtomicBool,
    /// The hub's count of connections not yet dropped.
    live: Arc<AtomicUsize>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Conn {
    /// Writes now what the socket takes; the rest waits for the flusher.
    fn send(&self, bytes: &[u8]) {
        if self.dead.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        let n = if pending.is_empty() {
            match self.out.try_write(bytes) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                Err(_) => {
                    drop(pending);
                    self.kill();
                    return;
                }
            }
        } else {
            0
        };
        if n == bytes.len() {
            return;
        }
        pending.extend_from_slice(&bytes[n..]);
        let too_far = pending.len() > MAX_PENDING;
        drop(pending);
        if too_far {
            self.kill();
        } else {
            self.wake.notify_one();
        }
    }

    /// Stops writing to this connection and ends its flusher.
    fn kill(&self) {
        self.dead.store(true, Ordering::Relaxed);
        if let Ok(mut p) = self.pending.lock() {
            *p = Vec::new();
        }
        self.wake.notify_one();
    }

    /// Writes what `send` could not, whenever the socket is writable again.
    /// Ends when the connection is dead.
    async fn flush(self: Arc<Self>) {
        while !self.dead.load(Ordering::Relaxed) {
            self.wake.notified().await;
            while !self.dead.load(Ordering::Relaxed) {
                if self.out.writable().await.is_err() {
                    self.kill();
                    return;
                }
                // `try_write` does not block: the lock keeps `send` from
                // writing between these bytes.
                let Ok(mut pending) = self.pending.lock() else {
                    return;
                };
                if pending.is_empty() {
                    break;
                }
                match self.out.try_write(&pending) {
                    Ok(n) => {
                        pending.drain(..n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        drop(pending);
                        self.kill();
                        return;
                    }
                }
            }
        }
    }
}

/// Rooms and their members; message ids.
#[derive(Default)]
struct Hub {
    rooms: Mutex<HashMap<String, Vec<Arc<Conn>>>>,
    next_id: AtomicU64,
    next_conn: AtomicU64,
    /// Connections whose state (and so write half) still exists: the
    /// read half goes when `serve` returns, the write half with the last
    /// reference to the `Conn`.
    live: Arc<AtomicUsize>,
}

fn json_frame(frame: &ServerFrame) -> Frame {
    Frame::encoded(true, |out| encode_into(frame, Encoding::Json, out))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn reference(v: &Value) -> Option<Ref> {
    v.get("ref")
        .and_then(|r| serde_json::from_value(r.clone()).ok())
}

/// Reads the upgrade request and answers it; returns the `user` query
/// parameter (if any).
async fn handshake(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let header = |name: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let key = header("sec-websocket-key").unwrap_or_default();
    // JSON only: a client that does not offer it is refused.
    let offered = header("sec-websocket-protocol").unwrap_or_else(|| JSON_PROTOCOL.into());
    if !offered.split(',').any(|p| p.trim() == JSON_PROTOCOL) {
        let refusal = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        stream.write_all(refusal.as_bytes()).await?;
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the floor speaks relay.v1.json only",
        ));
    }
    let user = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|path| path.split_once("user="))
        .map(|(_, rest)| rest.split('&').next().unwrap_or("").to_owned());
    let reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {JSON_PROTOCOL}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(reply.as_bytes()).await?;
    Ok(user)
}

/// The only subprotocol the floor speaks.
const JSON_PROTOCOL: &str = "relay.v1.json";

/// What `parse` found at the front of the read buffer.
enum Parsed {
    /// A whole frame: its opcode, unmasked payload, and its length on the
    /// wire.
    Frame(u8, Vec<u8>, usize),
    /// Not whole yet.
    Partial,
    /// A payload over `MAX_FRAME`: the connection is closed.
    TooLarge,
}

/// Parses one masked client frame from the front of `buf`.
fn parse(buf: &[u8]) -> Parsed {
    let Some((at, len)) = declared_len(buf) else {
        return Parsed::Partial;
    };
    if len > MAX_FRAME {
        return Parsed::TooLarge;
    }
    let Some(mask) = buf.get(at..at + 4) else {
        return Parsed::Partial;
    };
    let start = at + 4;
    let Some(payload) = buf.get(start..start + len) else {
        return Parsed::Partial;
    };
    let data = payload
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    Parsed::Frame(buf[0] & 0x0f, data, start + len)
}

/// Where a frame's mask starts and its declared payload length, once the
/// header is in `buf`.
fn declared_len(buf: &[u8]) -> Option<(usize, usize)> {
    Some(match *buf.get(1)? & 0x7f {
        126 => (4, u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize),
        127 => (
            10,
            usize::try_from(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?))
                .unwrap_or(usize::MAX),
        ),
        n => (2, n as usize),
    })
}

/// One connection: handshake, welcome, then commands until the client
/// closes, the socket fails or a frame is too large. It leaves its rooms
/// and stops its flusher however it ends.
async fn serve(hub: Arc<Hub>, mut stream: TcpStream) {
    let id = hub.next_conn.fetch_add(1, Ordering::Relaxed);
    let _ = stream.set_nodelay(true);
    let user = match handshake(&mut stream).await {
        Ok(user) => user.unwrap_or_else(|| format!("floor{id}")),
        Err(_) => return,
    };
    let (mut input, out) = stream.into_split();
    hub.live.fetch_add(1, Ordering::Relaxed);
    let conn = Arc::new(Conn {
        id,
        user: user.clone(),
        out,
        pending: Mutex::new(Vec::new()),
        wake: Notify::new(),
        dead: AtomicBool::new(false),
        live: hub.live.clone(),
    });
    tokio::spawn(conn.clone().flush());
    conn.send(
        json_frame(&ServerFrame::Welcome {
            user,
            node: "floor".into(),
            session: format!("floor/{id}"),
            protocol: relay::protocol::PROTOCOL_VERSION,
            resume: None,
            heartbeat_ms: 25_000,
        })
        .as_bytes(),
    );
    let mut joined: Vec<String> = Vec::new();
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    'read: loop {
        // A read error ends the connection like EOF does.
        let n = input.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        loop {
            match parse(&buf) {
                Parsed::Partial => break,
                Parsed::TooLarge => break 'read,
                Parsed::Frame(opcode, data, used) => {
                    buf.drain(..used);
                    match opcode {
                        0x8 => break 'read,
                        0x9 => conn.send(Frame::pong(&data).as_bytes()),
                        0x1 => on_command(&hub, &conn, &mut joined, &data),
                        _ => {}
                    }
                }
            }
        }
    }
    if let Ok(mut rooms) = hub.rooms.lock() {
        for room in joined {
            if let Some(members) = rooms.get_mut(&room) {
                members.retain(|c| c.id != conn.id);
            }
        }
    }
    // Ends the flusher; the socket closes when the last reference goes.
    conn.kill();
}

fn on_command(hub: &Hub, conn: &Arc<Conn>, joined: &mut Vec<String>, data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let room = v
        .get("room")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    match v.get("type").and_then(Value::as_str) {
        Some("join") => {
            let frame = json_frame(&ServerFrame::Joined {
                room: room.clone(),
                epoch: "floor".into(),
                presence: Vec::new(),
                history: Vec::new(),
                recovered: false,
                reference: reference(&v),
            });
            // `joined` goes out under the rooms' lock, so no message of the
            // room can overtake it.
            if let Ok(mut rooms) = hub.rooms.lock() {
                rooms.entry(room.clone()).or_default().push(conn.clone());
                conn.send(frame.as_bytes());
            }
            joined.push(room);
        }
        Some("send") => {
            // The id is taken and the message written under the rooms' lock,
            // so every member sees a room's ids in order.
            let Ok(rooms) = hub.rooms.lock() else {
                return;
            };
            let id = hub.next_id.fetch_add(1, Ordering::Relaxed) + 1;
            let ts = now_ms();
            let text = v.get("text").and_then(Value::as_str).unwrap_or("");
            let message = json_frame(&ServerFrame::Message(ChatMessage {
                room: room.clone(),
                id,
                from: conn.user.clone(),
                text: text.to_owned(),
                ts,
            }));
            for member in rooms.get(&room).into_iter().flatten() {
                if member.id != conn.id {
                    member.send(message.as_bytes());
                }
            }
            drop(rooms);
            let ack = json_frame(&ServerFrame::Ack {
                id,
                ts,
                room: Some(room),
                reference: reference(&v),
            });
            conn.send(ack.as_bytes());
        }
        _ => {}
    }
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:9100".into());
    let threads: usize = args.next().and_then(|t| t.parse().ok()).unwrap_or(1);
    // A yardstick for this machine only: loopback addresses, never a network.
    let addr: std::net::SocketAddr = listen.parse().map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{listen}: {e}"))
    })?;
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{listen}: the floor listens on loopback addresses only"),
        ));
    }
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        eprintln!("floor listening on {listen} ({threads} thread(s))");
        run(listener).await
    })
}

/// Accepts connections. A failed accept (out of file descriptors, say) is
/// reported and retried after a pause rather than ending the server.
async fn run(listener: TcpListener) -> std::io::Result<()> {
    serve_all(listener, Arc::new(Hub::default())).await
}

async fn serve_all(listener: TcpListener, hub: Arc<Hub>) -> std::io::Result<()> {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(hub.clone(), stream));
            }
            Err(e) => {
                eprintln!("floor: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use relay::protocol::{decode_server_frame, Encoding};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    type Client = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    async fn next(ws: &mut Client) -> ServerFrame {
        loop {
            let m = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
                .await
                .expect("a frame in time")
                .expect("open")
                .expect("no error");
            if let Message::Text(t) = m {
                return decode_server_frame(t.as_bytes(), Encoding::Json).expect("a server frame");
            }
        }
    }

    async fn client(addr: std::net::SocketAddr, user: &str) -> Client {
        let mut req = format!("ws://{addr}/ws?user={user}")
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("sec-websocket-protocol", "relay.v1.json".parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        match next(&mut ws).await {
            ServerFrame::Welcome { user: u, .. } => assert_eq!(u, user),
            other => panic!("expected welcome, got {other:?}"),
        }
        let join = r#"{"type":"join","room":"r","ref":1}"#;
        ws.send(Message::text(join)).await.unwrap();
        assert!(matches!(next(&mut ws).await, ServerFrame::Joined { .. }));
        ws
    }

    /// The floor speaks enough of the protocol for the fan-out scenario:
    /// the sender gets an ack, everyone else the message, ids in order.
    #[tokio::test]
    async fn fans_out_to_everyone_but_the_sender() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(run(listener));
        let mut a = client(addr, "a").await;
        let mut b = client(addr, "b").await;
        let mut c = client(addr, "c").await;
        for n in 1..=3u64 {
            let send = format!(r#"{{"type":"send","room":"r","text":"hi {n}","ref":{n}}}"#);
            a.send(Message::text(send)).await.unwrap();
            match next(&mut a).await {
                ServerFrame::Ack { id, .. } => assert_eq!(id, n),
                other => panic!("expected an ack, got {other:?}"),
            }
        }
        for ws in [&mut b, &mut c] {
            for n in 1..=3u64 {
                match next(ws).await {
                    ServerFrame::Message(m) => {
                        assert_eq!((m.id, m.from.as_str(), m.room.as_str()), (n, "a", "r"));
                        assert_eq!(m.text, format!("hi {n}"));
                    }
                    other => panic!("expected a message, got {other:?}"),
                }
            }
        }
    }

    /// Clients that leave, cleanly or by dropping the socket, leave their
    /// rooms, and their server-side sockets and flushers go away.
    #[tokio::test]
    async fn departed_clients_leave_rooms_and_release_their_sockets() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hub = Arc::new(Hub::default());
        tokio::spawn(serve_all(listener, hub.clone()));
        let mut a = client(addr, "a").await;
        let members = |hub: &Hub| hub.rooms.lock().unwrap().get("r").map_or(0, Vec::len);
        let live = |hub: &Hub| hub.live.load(Ordering::Relaxed);
        for round in 0..2 {
            let mut gone = Vec::new();
            for k in 0..20 {
                gone.push(client(addr, &format!("g{round}x{k}")).await);
            }
            assert_eq!(members(&hub), 21);
            assert_eq!(live(&hub), 21);
            for (k, mut ws) in gone.into_iter().enumerate() {
                if k % 2 == 0 {
                    ws.close(None).await.unwrap();
                }
                drop(ws); // the others just drop the socket
            }
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            while (members(&hub) > 1 || live(&hub) > 1) && tokio::time::Instant::now() < deadline {
                // Fan-out to departed members meets their dead sockets.
                let send = r#"{"type":"send","room":"r","text":"x","ref":1}"#;
                a.send(Message::text(send)).await.unwrap();
                let _ = next(&mut a).await;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            assert_eq!(members(&hub), 1, "only `a` is left in the room");
            assert_eq!(live(&hub), 1, "the others' sockets and flushers are gone");
        }
    }

    /// A frame declaring more than `MAX_FRAME` bytes ends the connection;
    /// a client that does not offer the JSON subprotocol is refused.
    #[tokio::test]
    async fn refuses_huge_frames_and_other_encodings() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(run(listener));
        let ws = client(addr, "big").await;
        let mut tcp = ws.into_inner();
        let tcp = match &mut tcp {
            tokio_tungstenite::MaybeTlsStream::Plain(s) => s,
            _ => unreachable!("plain TCP"),
        };
        // A masked text frame header declaring 2 MiB, and a mask.
        let mut header = vec![0x81, 0x80 | 127];
        header.extend_from_slice(&(2u64 << 20).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        tcp.write_all(&header).await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tcp.read_to_end(&mut rest),
        )
        .await
        .expect("the server closes the connection");
        // EOF or a reset, in time (the `expect` above), with nothing sent.
        if read.is_ok() {
            assert!(rest.is_empty(), "no frame after the oversized one");
        }

        let mut req = format!("ws://{addr}/ws?user=m")
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            "relay.v1.msgpack".parse().unwrap(),
        );
        match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 400)
            }
            other => panic!("expected a 400 refusal, got {other:?}"),
        }
    }
}
