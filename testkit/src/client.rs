//! A typed WebSocket test client (tokio-tungstenite): sends
//! `relay::protocol` commands (or raw JSON, for malformed frames) in either
//! encoding and receives decoded `ServerFrame`s, with bounded waits.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use relay::protocol::{decode_server_frame, Command, CommandFrame, Encoding, Ref, ServerFrame};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{cmd, Node, WAIT};

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
    /// The encoding of this connection.
    pub encoding: Encoding,
    pending: VecDeque<ServerFrame>,
    next_ref: i64,
    /// `welcome.user`.
    pub user: String,
    /// `welcome.resume`.
    pub resume: Option<String>,
    /// `welcome.session`.
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
    /// HTTP status.
    pub status: u16,
    /// The JSON body (null when not JSON).
    pub body: Value,
}

/// How to connect a [`Client`].
pub struct Connect<'a> {
    /// The WebSocket URL (with the query string).
    pub url: String,
    /// The subprotocol to ask for (none: the default, JSON).
    pub encoding: Option<Encoding>,
    /// Extra handshake headers.
    pub headers: Vec<(&'a str, String)>,
    /// Read only when the test asks.
    pub paused: bool,
}

impl<'a> Connect<'a> {
    /// Connects to `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Connect {
            url: url.into(),
            encoding: None,
            headers: vec![],
            paused: false,
        }
    }
    /// Asks for the subprotocol of `e`.
    pub fn encoding(mut self, e: Encoding) -> Self {
        self.encoding = Some(e);
        self
    }
    /// Reads only when the test asks (no automatic pongs, no draining).
    pub fn paused(mut self) -> Self {
        self.paused = true;
        self
    }
    /// Adds a handshake header.
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

/// What a client sends: a typed command, or a raw JSON object (for frames
/// that are deliberately malformed or invalid).
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A typed command, encoded by [`CommandFrame::encode`].
    Command(Command, Option<Ref>),
    /// Any JSON value, sent as it is.
    Raw(Value),
}

impl From<Command> for Outgoing {
    fn from(c: Command) -> Self {
        Outgoing::Command(c, None)
    }
}

impl From<Value> for Outgoing {
    fn from(v: Value) -> Self {
        Outgoing::Raw(v)
    }
}

impl Outgoing {
    /// The same frame with `ref` set.
    pub fn with_ref(self, r: Ref) -> Self {
        match self {
            Outgoing::Command(c, _) => Outgoing::Command(c, Some(r)),
            Outgoing::Raw(mut v) => {
                v["ref"] = serde_json::to_value(&r).expect("ref");
                Outgoing::Raw(v)
            }
        }
    }

    /// The WebSocket message in `encoding`.
    pub fn message(&self, encoding: Encoding) -> Message {
        let bytes = match self {
            Outgoing::Command(command, reference) => CommandFrame {
                command,
                reference: reference.as_ref(),
            }
            .encode(encoding),
            Outgoing::Raw(v) => match encoding {
                Encoding::Json => v.to_string().into_bytes(),
                Encoding::MsgPack => rmp_serde::to_vec_named(v).expect("msgpack"),
            },
        };
        match encoding {
            Encoding::Json => Message::Text(String::from_utf8(bytes).expect("utf-8").into()),
            Encoding::MsgPack => Message::Binary(bytes.into()),
        }
    }
}

impl Client {
    /// Sends a command (typed, or a JSON object) in this client's encoding.
    pub async fn send(&mut self, cmd: impl Into<Outgoing>) {
        let msg = cmd.into().message(self.encoding);
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
    pub async fn request(&mut self, cmd: impl Into<Outgoing>) -> ServerFrame {
        let r = self.next_ref;
        self.next_ref += 1;
        self.send(cmd.into().with_ref(Ref::Int(r))).await;
        self.recv_where("reply", move |f| frame_ref(f) == Some(r))
            .await
    }

    /// Joins a room and returns the `joined` frame.
    pub async fn join(&mut self, room: &str) -> ServerFrame {
        let f = self.request(cmd::join(room)).await;
        assert_eq!(frame_type(&f), "joined", "join {room}: {f:?}");
        f
    }

    /// Sends a message and returns the ack's id.
    pub async fn say(&mut self, room: &str, text: &str) -> u64 {
        match self.request(cmd::send(room, text)).await {
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

    /// Sends a Close frame and reads until the server closes (bounded).
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
