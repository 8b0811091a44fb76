//! The machine's floor: a bare-minimum fan-out server that speaks just
//! enough of relay's wire protocol for `loadtest --scenario fanout` (the
//! handshake, `welcome`, `join` → `joined`, `send` → `ack` + `message` to
//! every other member of the room). No Redis, no history, no limits, no
//! queues: each message is encoded once (with relay's own encoder, so the
//! bytes match relay's) and written to every member right from the
//! publisher's task with one `send()` each; whatever a socket does not take
//! is kept and written by that connection's flusher task. Client frames
//! are read through a 1 KiB buffer.
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use relay::protocol::{encode_into, ChatMessage, Encoding, Ref, ServerFrame};
use relay::session::wire::Frame;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// One connection's write side: the socket, and the bytes it did not take.
struct Conn {
    id: u64,
    user: String,
    out: OwnedWriteHalf,
    pending: Mutex<Vec<u8>>,
    wake: Notify,
}

impl Conn {
    /// Writes now what the socket takes; the rest waits for the flusher.
    fn send(&self, bytes: &[u8]) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        if !pending.is_empty() {
            pending.extend_from_slice(bytes);
            return;
        }
        let n = self.out.try_write(bytes).unwrap_or(0);
        if n < bytes.len() {
            pending.extend_from_slice(&bytes[n..]);
            drop(pending);
            self.wake.notify_one();
        }
    }

    /// Writes what `send` could not, whenever the socket is writable again.
    async fn flush(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            loop {
                let chunk = match self.pending.lock() {
                    Ok(p) if p.is_empty() => break,
                    Ok(p) => p.clone(),
                    Err(_) => return,
                };
                if self.out.writable().await.is_err() {
                    return;
                }
                match self.out.try_write(&chunk) {
                    Ok(n) => {
                        if let Ok(mut p) = self.pending.lock() {
                            p.drain(..n);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
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
    let proto = header("sec-websocket-protocol")
        .and_then(|p| p.split(',').next().map(|s| s.trim().to_owned()))
        .unwrap_or_else(|| "relay.v1.json".into());
    let user = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|path| path.split_once("user="))
        .map(|(_, rest)| rest.split('&').next().unwrap_or("").to_owned());
    let reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {proto}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(reply.as_bytes()).await?;
    Ok(user)
}

/// Parses one masked client frame from the front of `buf`: its opcode and
/// unmasked payload, and how many bytes it took. `None` until it is whole.
fn parse(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let mask: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
    at += 4;
    let payload = buf.get(at..at + len)?;
    let data = payload
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    Some((opcode, data, at + len))
}

async fn serve(hub: Arc<Hub>, mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let id = hub.next_conn.fetch_add(1, Ordering::Relaxed);
    let user = handshake(&mut stream)
        .await?
        .unwrap_or_else(|| format!("floor{id}"));
    let (mut input, out) = stream.into_split();
    let conn = Arc::new(Conn {
        id,
        user: user.clone(),
        out,
        pending: Mutex::new(Vec::new()),
        wake: Notify::new(),
    });
    tokio::spawn(conn.clone().flush());
    conn.send(
        json_frame(&ServerFrame::Welcome {
            user: user.clone(),
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
        let n = input.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some((opcode, data, used)) = parse(&buf) {
            buf.drain(..used);
            match opcode {
                0x8 => break 'read,
                0x9 => conn.send(Frame::pong(&data).as_bytes()),
                0x1 => on_command(&hub, &conn, &mut joined, &data),
                _ => {}
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
    Ok(())
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
            if let Ok(mut rooms) = hub.rooms.lock() {
                rooms.entry(room.clone()).or_default().push(conn.clone());
            }
            joined.push(room.clone());
            let frame = json_frame(&ServerFrame::Joined {
                room,
                epoch: "floor".into(),
                presence: Vec::new(),
                history: Vec::new(),
                recovered: false,
                reference: reference(&v),
            });
            conn.send(frame.as_bytes());
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

/// Accepts connections until the listener fails.
async fn run(listener: TcpListener) -> std::io::Result<()> {
    let hub = Arc::new(Hub::default());
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(serve(hub.clone(), stream));
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
}
