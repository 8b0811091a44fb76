//! Test support: real relay nodes as child processes, a typed WebSocket test
//! client (tokio-tungstenite) and a tiny HTTP client. No mocks.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod nginx;
pub mod redis;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use relay::protocol::{decode_server_frame, Encoding, ServerFrame};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for an expected frame.
pub const WAIT: Duration = Duration::from_secs(5);

/// A relay node running as a child process.
pub struct Node {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Starts `relay serve` on a free loopback port with extra flags.
    pub fn start(args: &[&str]) -> Node {
        Self::start_on("127.0.0.1:0", args)
    }

    /// Starts `relay serve --listen LISTEN` with extra flags.
    pub fn start_on(listen: &str, args: &[&str]) -> Node {
        Self::start_on_with_env(listen, args, &[])
    }

    /// Starts `relay serve` on a free loopback port with extra flags and
    /// extra environment variables (which may override `RUST_LOG`).
    pub fn start_with_env(args: &[&str], envs: &[(&str, &str)]) -> Node {
        Self::start_on_with_env("127.0.0.1:0", args, envs)
    }

    /// Starts a cluster member: `--redis URL --node-id ID` with a 200 ms
    /// heartbeat (fast presence expiry and reaping), extra flags and
    /// environment.
    pub fn in_cluster(url: &str, id: &str, extra: &[&str], envs: &[(&str, &str)]) -> Node {
        let mut args = vec!["--redis", url, "--node-id", id, "--heartbeat-ms", "200"];
        args.extend_from_slice(extra);
        Self::start_with_env(&args, envs)
    }

    /// Starts `relay serve --listen LISTEN` with extra flags and environment.
    pub fn start_on_with_env(listen: &str, args: &[&str], envs: &[(&str, &str)]) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("relay.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_relay"))
            .arg("serve")
            .args(["--listen", listen])
            .args(args)
            .env("RUST_LOG", "relay=debug,info")
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("spawn relay");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line).unwrap_or(0);
        if read == 0 {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "relay did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        // `relay listening on http://ADDR`, or a JSON object with `addr`
        // under `--log-format json`.
        let addr = match serde_json::from_str::<Value>(line.trim()) {
            Ok(v) => v["addr"].as_str().and_then(|a| a.parse().ok()),
            Err(_) => line
                .trim()
                .rsplit("http://")
                .next()
                .and_then(|a| a.parse().ok()),
        }
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Node {
            child: Some(child),
            addr,
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal to the node.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit (bounded).
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = std::time::Instant::now() + within;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if std::time::Instant::now() > deadline {
                panic!("node did not exit within {within:?}:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A minimal HTTP/1.1 request; returns status and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut buf))
        .await
        .expect("http timeout")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    (status, body)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n..];
        rest = rest.strip_prefix("\r\n").unwrap_or(rest);
    }
    out
}

pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, &[], "").await
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the background reader saw.
enum Incoming {
    Frame(ServerFrame),
    Closed(Option<u16>),
}

/// Where a client's frames come from: a background task that reads all the
/// time (and so answers the server's pings, like a real client), or the raw
/// stream for tests that must not read (slow consumers, silent peers).
enum Source {
    Live(tokio::sync::mpsc::UnboundedReceiver<Incoming>),
    Paused(futures_util::stream::SplitStream<Ws>),
}

/// A typed protocol client.
pub struct Client {
    sink: futures_util::stream::SplitSink<Ws, Message>,
    source: Source,
    pub encoding: Encoding,
    pending: VecDeque<ServerFrame>,
    next_ref: i64,
    pub user: String,
    pub resume: Option<String>,
    pub session: String,
}

fn decode(msg: Message) -> Option<Result<ServerFrame, Option<u16>>> {
    match msg {
        Message::Text(t) => Some(Ok(decode_server_frame(t.as_bytes(), Encoding::Json)
            .unwrap_or_else(|e| panic!("bad frame {t}: {e}")))),
        Message::Binary(b) => Some(Ok(
            decode_server_frame(&b, Encoding::MsgPack).expect("msgpack frame")
        )),
        Message::Close(c) => Some(Err(c.map(|c| u16::from(c.code)))),
        _ => None,
    }
}

fn spawn_reader(
    mut stream: futures_util::stream::SplitStream<Ws>,
) -> tokio::sync::mpsc::UnboundedReceiver<Incoming> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match stream.next().await {
                Some(Ok(msg)) => match decode(msg) {
                    Some(Ok(f)) => {
                        let gone = tx.send(Incoming::Frame(f)).is_err();
                        if gone {
                            return;
                        }
                    }
                    Some(Err(code)) => {
                        let _ = tx.send(Incoming::Closed(code));
                        return;
                    }
                    None => {}
                },
                Some(Err(_)) | None => {
                    let _ = tx.send(Incoming::Closed(None));
                    return;
                }
            }
        }
    });
    rx
}

/// A refused handshake: HTTP status and JSON body.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: Value,
}

pub struct Connect<'a> {
    pub url: String,
    pub encoding: Option<Encoding>,
    pub headers: Vec<(&'a str, String)>,
    pub paused: bool,
}

impl<'a> Connect<'a> {
    pub fn new(url: impl Into<String>) -> Self {
        Connect {
            url: url.into(),
            encoding: None,
            headers: vec![],
            paused: false,
        }
    }
    pub fn encoding(mut self, e: Encoding) -> Self {
        self.encoding = Some(e);
        self
    }
    /// Reads only when the test asks (no automatic pongs, no draining).
    pub fn paused(mut self) -> Self {
        self.paused = true;
        self
    }
    pub fn header(mut self, k: &'a str, v: impl Into<String>) -> Self {
        self.headers.push((k, v.into()));
        self
    }

    /// Connects; returns the client after reading `welcome`.
    pub async fn open(self) -> Result<Client, Refused> {
        let mut req = self.url.as_str().into_client_request().expect("request");
        if let Some(e) = self.encoding {
            req.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static(e.subprotocol()),
            );
        }
        for (k, v) in &self.headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                    .expect("name"),
                HeaderValue::from_str(v).expect("header"),
            );
        }
        match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect timeout")
        {
            Ok((ws, _)) => {
                let (sink, stream) = ws.split();
                let mut c = Client {
                    sink,
                    source: Source::Paused(stream),
                    encoding: self.encoding.unwrap_or(Encoding::Json),
                    pending: VecDeque::new(),
                    next_ref: 1,
                    user: String::new(),
                    resume: None,
                    session: String::new(),
                };
                match c.recv().await {
                    ServerFrame::Welcome {
                        user,
                        resume,
                        session,
                        ..
                    } => {
                        c.user = user;
                        c.resume = resume;
                        c.session = session;
                    }
                    other => panic!("expected welcome, got {other:?}"),
                }
                if !self.paused {
                    c.resume_reading();
                }
                Ok(c)
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                Err(Refused { status, body })
            }
            Err(e) => panic!("handshake failed: {e}"),
        }
    }
}

/// Connects a guest (JSON) and reads the welcome.
pub async fn guest(node: &Node, user: &str) -> Client {
    Connect::new(format!("{}?user={user}", node.url()))
        .open()
        .await
        .expect("guest connect")
}

/// Connects a guest with a chosen encoding.
pub async fn guest_enc(node: &Node, user: &str, enc: Encoding) -> Client {
    Connect::new(format!("{}?user={user}", node.url()))
        .encoding(enc)
        .open()
        .await
        .expect("guest connect")
}

impl Client {
    /// Sends a command (a JSON object) in this client's encoding.
    pub async fn send(&mut self, cmd: Value) {
        let msg = match self.encoding {
            Encoding::Json => Message::Text(cmd.to_string().into()),
            Encoding::MsgPack => {
                Message::Binary(rmp_serde::to_vec_named(&cmd).expect("msgpack").into())
            }
        };
        self.sink.send(msg).await.expect("send");
    }

    /// Sends raw bytes as a text or binary frame.
    pub async fn send_raw(&mut self, msg: Message) {
        let _ = self.sink.send(msg).await;
    }

    /// Starts the background reader of a paused client.
    pub fn resume_reading(&mut self) {
        let placeholder = Source::Live(tokio::sync::mpsc::unbounded_channel().1);
        if let Source::Paused(stream) = std::mem::replace(&mut self.source, placeholder) {
            self.source = Source::Live(spawn_reader(stream));
        }
    }

    /// The next raw WebSocket message of a paused client.
    pub async fn recv_raw(&mut self) -> Message {
        let Source::Paused(stream) = &mut self.source else {
            panic!("recv_raw needs a paused client")
        };
        loop {
            match tokio::time::timeout(WAIT, stream.next())
                .await
                .expect("raw frame in time")
            {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(m)) => return m,
                other => panic!("connection ended: {other:?}"),
            }
        }
    }

    async fn read_frame(&mut self, within: Duration) -> Option<Result<ServerFrame, Option<u16>>> {
        // One deadline for the whole call: pings must not extend it.
        let deadline = tokio::time::Instant::now() + within;
        match &mut self.source {
            Source::Live(rx) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => None,
                Ok(Some(Incoming::Frame(f))) => Some(Ok(f)),
                Ok(Some(Incoming::Closed(code))) => Some(Err(code)),
                Ok(None) => Some(Err(None)),
            },
            Source::Paused(stream) => loop {
                let next = match tokio::time::timeout_at(deadline, stream.next()).await {
                    Err(_) => return None,
                    Ok(n) => n,
                };
                match next {
                    Some(Ok(msg)) => match decode(msg) {
                        Some(r) => return Some(r),
                        None => continue,
                    },
                    Some(Err(_)) | None => return Some(Err(None)),
                }
            },
        }
    }

    /// The next frame (buffered ones first); panics after WAIT.
    pub async fn recv(&mut self) -> ServerFrame {
        if let Some(f) = self.pending.pop_front() {
            return f;
        }
        match self.read_frame(WAIT).await {
            Some(Ok(f)) => f,
            Some(Err(code)) => panic!(
                "{}: connection closed ({code:?}) while waiting for a frame",
                self.user
            ),
            None => panic!("{}: no frame within {WAIT:?}", self.user),
        }
    }

    /// Waits for the first frame matching `pred`, keeping the others buffered.
    pub async fn recv_where(
        &mut self,
        what: &str,
        pred: impl Fn(&ServerFrame) -> bool,
    ) -> ServerFrame {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i).unwrap();
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_frame(left).await {
                Some(Ok(f)) if pred(&f) => return f,
                Some(Ok(f)) => self.pending.push_back(f),
                Some(Err(code)) => panic!(
                    "{}: closed ({code:?}) waiting for {what}; got {:?}",
                    self.user, self.pending
                ),
                None => panic!(
                    "{}: no {what} within {WAIT:?}; got {:?}",
                    self.user, self.pending
                ),
            }
        }
    }

    /// Waits for a frame of the given `type` (by JSON tag).
    pub async fn recv_type(&mut self, ty: &str) -> ServerFrame {
        let ty = ty.to_owned();
        self.recv_where(&ty.clone(), move |f| frame_type(f) == ty)
            .await
    }

    /// Asserts nothing but the listed types arrives for `ms` milliseconds.
    pub async fn expect_silence(&mut self, ms: u64) {
        assert!(
            self.pending.is_empty(),
            "{}: unexpected buffered frames {:?}",
            self.user,
            self.pending
        );
        if let Some(Ok(f)) = self.read_frame(Duration::from_millis(ms)).await {
            panic!("{}: expected silence, got {f:?}", self.user);
        }
    }

    /// Sends a command with a fresh integer ref and waits for the reply with that ref.
    pub async fn request(&mut self, mut cmd: Value) -> ServerFrame {
        let r = self.next_ref;
        self.next_ref += 1;
        cmd["ref"] = json!(r);
        self.send(cmd).await;
        self.recv_where("reply", move |f| frame_ref(f) == Some(r))
            .await
    }

    /// Joins a room and returns the `joined` frame.
    pub async fn join(&mut self, room: &str) -> ServerFrame {
        let f = self.request(json!({"type": "join", "room": room})).await;
        assert_eq!(frame_type(&f), "joined", "join {room}: {f:?}");
        f
    }

    /// Sends a message and returns the ack's id.
    pub async fn say(&mut self, room: &str, text: &str) -> u64 {
        match self
            .request(json!({"type": "send", "room": room, "text": text}))
            .await
        {
            ServerFrame::Ack { id, .. } => id,
            other => panic!("expected ack, got {other:?}"),
        }
    }

    /// Waits for the close frame and returns its code (None: closed without one).
    pub async fn recv_close(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_frame(left).await {
                Some(Ok(_)) => continue,
                Some(Err(code)) => return code,
                None => panic!("{}: not closed within 10 s", self.user),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.sink.send(Message::Close(None)).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.read_frame(Duration::from_secs(2)).await {}
        })
        .await;
    }
}

/// The wire `type` of a frame.
pub fn frame_type(f: &ServerFrame) -> String {
    let v = serde_json::to_value(f).expect("json");
    v["type"].as_str().unwrap_or("").to_owned()
}

/// The `ref` of a frame, when an integer.
pub fn frame_ref(f: &ServerFrame) -> Option<i64> {
    let v = serde_json::to_value(f).expect("json");
    v["ref"].as_i64()
}

/// The frame as JSON, for field assertions.
pub fn js(f: &ServerFrame) -> Value {
    serde_json::to_value(f).expect("json")
}

/// Polls `cond` until it holds (bounded).
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what}: not within {within:?}");
}
