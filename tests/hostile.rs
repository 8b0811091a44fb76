//! Hostile clients against a real node (PROTOCOL §11): a client that stops
//! reading cannot pin the node's memory or keep its socket after the
//! session ends, and one connection cannot join rooms without bound. Each
//! test measures the node from outside: RSS and descriptors from `/proc`,
//! the connection gauge from `/metrics`.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{eventually, get, guest, js, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Open descriptors of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .count()
}

/// The value of `relay_connections` (all encodings) in a node's metrics.
async fn connections(node: &Node) -> u64 {
    let (_, metrics) = get(node.addr, "/metrics").await;
    metrics
        .lines()
        .filter(|l| l.starts_with("relay_connections{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A WebSocket client that never reads: a 4 KiB receive buffer, a hand-made
/// handshake and masked text frames written straight to the socket.
struct NonReader {
    stream: TcpStream,
}

impl NonReader {
    async fn connect(node: &Node, user: &str) -> NonReader {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(node.addr).await.unwrap();
        let request = format!(
            "GET /ws?user={user} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            node.addr
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        // Read the 101 head only (byte by byte: nothing after it).
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            stream.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{:?}",
            String::from_utf8_lossy(&head)
        );
        NonReader { stream }
    }

    /// Writes one masked frame (opcode, payload).
    async fn frame(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&out).await
    }

    async fn text(&mut self, text: &str) -> std::io::Result<()> {
        self.frame(0x1, text.as_bytes()).await
    }

    async fn close(&mut self) -> std::io::Result<()> {
        self.frame(0x8, &1000u16.to_be_bytes()).await
    }
}

/// Fills room `big` with 50 messages of 3,900 characters: every `history`
/// reply for it is about 200 KB.
async fn fill_room(node: &Node) -> support::Client {
    let mut writer = guest(node, "writer").await;
    writer.join("big").await;
    let text = "z".repeat(3900);
    for i in 0..50 {
        writer.say("big", &format!("{i}{text}")).await;
    }
    writer
}

/// Sends `n` history requests for `big`, as far as the socket takes them.
async fn ask_history(client: &mut NonReader, n: usize) {
    let cmd = json!({"type": "history", "room": "big"}).to_string();
    for _ in 0..n {
        let sent = tokio::time::timeout(Duration::from_millis(500), client.text(&cmd)).await;
        if !matches!(sent, Ok(Ok(()))) {
            break; // the node stopped reading us, or closed
        }
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_is_bounded_in_bytes_and_cut_off() {
    // Heartbeat 1 s: a write without progress for 2 s closes the connection.
    let node = Node::start(&["--rate", "100000", "--heartbeat-ms", "1000"]);
    let pid = node.pid();
    let _writer = fill_room(&node).await;
    let rss_before = rss_kib(pid);
    let mut hostile = NonReader::connect(&node, "hostile").await;
    // 300 replies of ~200 KB: 60 MB if the queue counted only frames.
    let ask = tokio::spawn(async move {
        ask_history(&mut hostile, 300).await;
        hostile
    });
    let mut peak = rss_before;
    // Generous: a debug build on shared cores encodes the replies slowly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        peak = peak.max(rss_kib(pid));
        if connections(&node).await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _hostile = ask.await.unwrap();
    assert_eq!(
        connections(&node).await,
        1,
        "the non-reader was closed (only the writer is left)"
    );
    let grown_mib = peak.saturating_sub(rss_before) / 1024;
    assert!(
        grown_mib < 40,
        "one non-reading socket grew the node by {grown_mib} MiB (bounded by --max-queue-bytes)"
    );
    let (_, metrics) = get(node.addr, "/metrics").await;
    assert!(
        metrics.contains(r#"relay_connections_closed_total{code="4000",reason="slow_consumer"} 1"#)
            || metrics.contains(r#"reason="write_error"} 1"#),
        "closed as a slow consumer or a stalled write:\n{metrics}"
    );
}

#[tokio::test]
async fn a_session_that_ends_frees_its_socket_even_if_its_writer_is_stuck() {
    // Default heartbeat (25 s): only the end of the session can free the
    // stuck writer here, not the stall deadline.
    let node = Node::start(&["--rate", "100000"]);
    let pid = node.pid();
    let _writer = fill_room(&node).await;
    let baseline = fds(pid);
    let mut hostile = NonReader::connect(&node, "hostile").await;
    // Enough to fill the socket buffers (the writer then waits in a write)
    // but not the 4 MiB queue.
    ask_history(&mut hostile, 12).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(connections(&node).await, 2);
    assert!(fds(pid) > baseline, "the hostile socket is open");
    // The client sends a Close frame (it can still write) and never reads.
    hostile.close().await.unwrap();
    eventually(
        "the session ended and its socket is gone",
        Duration::from_secs(9),
        || async { connections(&node).await == 1 && fds(pid) <= baseline },
    )
    .await;
    drop(hostile);
}

#[tokio::test]
async fn joins_beyond_max_rooms_per_conn_answer_too_many_rooms() {
    let node = Node::start(&["--max-rooms-per-conn", "3"]);
    let mut c = guest(&node, "roamer").await;
    for room in ["r1", "r2", "r3"] {
        c.join(room).await;
    }
    // A repeated join of a room already joined is no new room.
    c.join("r2").await;
    let refused = js(&c.request(json!({"type": "join", "room": "r4"})).await);
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "too_many_rooms");
    // The refused join had no effect: `r4` has no member.
    let mut other = guest(&node, "other").await;
    let joined = js(&other.join("r4").await);
    assert_eq!(joined["presence"], json!(["other"]));
    // After a leave there is room for one more.
    let left = js(&c.request(json!({"type": "leave", "room": "r1"})).await);
    assert_eq!(left["type"], "left");
    c.join("r4").await;
}
