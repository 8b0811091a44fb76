//! In-process tests of `relay::server::run` on tokio's paused clock: the
//! node runs embedded (in-memory backplane) as a task of the test's own
//! runtime, on a real listener on 127.0.0.1, and its clients are real
//! sockets. Every test starts with the clock paused, so heartbeats,
//! deadlines and the drain window cost no wall time: whenever every task
//! waits (on a socket or a timer) and no socket has anything to read,
//! tokio jumps the clock to the next timer. The tests are built on that:
//! they wait for what the node does next (a close frame, a response, EOF)
//! under a generous virtual `timeout`, then check *when* it happened on the
//! virtual clock.
//!
//! - heartbeats: a silent peer is closed after two unanswered pings
//!   (PROTOCOL §4), a peer that answers stays connected indefinitely;
//! - expiry: the request-head deadline of a pre-upgrade connection
//!   (`--handshake-timeout-ms`), the request-body deadline of the JSON API
//!   (same setting, `http::limits::read_body`), and a token session closed
//!   with 4001 when its token expires (`--token-ttl-secs`);
//! - drain: resolving `shutdown` closes every socket with 1001 within
//!   `--drain-secs`, refuses new WebSockets meanwhile, and `run` returns.
//!
//! Every client socket here has Nagle's algorithm off (the node's sockets
//! have it off already). With it on, a small write that follows another
//! one not yet acknowledged (a command after an automatic pong) waits in
//! the kernel for the peer's delayed ACK, some 40 ms of *real* time; the
//! runtime sees nothing to do meanwhile and jumps the clock, so the node
//! would see the command a heartbeat late. (testkit's `Connect` leaves
//! Nagle on, which is why these tests bring their own small client.)

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use relay::config::Config;
use relay::protocol::{decode_server_frame, Command, Encoding, LeaveReason, Ref, ServerFrame};
use relay::server::ServeError;
use testkit::{cmd, frame_ref, frame_type, Outgoing};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The flags of `relay serve`, parsed by clap exactly as `main` does.
#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    config: Config,
}

/// A signing key long enough for `--secret`.
const SECRET: &str = "in-process-test-secret-0123456789abcdef";

/// The heartbeat of the heartbeat tests (`--heartbeat-ms 1000`).
const HEARTBEAT: Duration = Duration::from_secs(1);

/// A node served by `relay::server::run` inside the test's runtime.
struct InProc {
    /// The bound loopback address.
    addr: SocketAddr,
    /// Resolves the `shutdown` future handed to `run`.
    shutdown: Option<oneshot::Sender<()>>,
    /// The task running `run`.
    task: JoinHandle<Result<(), ServeError>>,
}

impl InProc {
    /// Parses `flags` (as `relay serve` would, defaults for the rest), forces
    /// the embedded mode (no Redis, no admin port), binds 127.0.0.1:0 and
    /// spawns `run` on the current runtime.
    async fn start(flags: &[&str]) -> Self {
        let args = ["relay", "--node-id", "inproc"].iter().chain(flags);
        let mut config = Flags::try_parse_from(args).expect("flags").config;
        config.redis = None;
        config.admin_listen = None;
        config.validate().expect("valid configuration");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        config.listen = addr;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(relay::server::run(config, listener, async move {
            let _ = rx.await;
        }));
        // `run` is serving once its health check answers.
        let (status, _) = testkit::get(addr, "/healthz").await;
        assert_eq!(status, 200, "the node serves /healthz");
        InProc {
            addr,
            shutdown: Some(tx),
            task,
        }
    }

    /// The WebSocket URL with `query` (e.g. `user=alice`).
    fn ws(&self, query: &str) -> String {
        format!("ws://{}/ws?{query}", self.addr)
    }

    /// Resolves the node's `shutdown` future.
    fn shut_down(&mut self) {
        let tx = self.shutdown.take().expect("shut down once");
        tx.send(()).expect("run is still waiting for shutdown");
    }
}

/// What a [`Ws`] client read next.
#[derive(Debug)]
enum Event {
    /// A protocol frame.
    Frame(ServerFrame),
    /// A ping of the node (tungstenite answers it on the next read).
    Ping,
    /// The close frame (code, reason), or `None` when the socket ended
    /// without one.
    Closed(Option<(u16, String)>),
}

/// A JSON WebSocket client over tokio-tungstenite with Nagle off. It reads
/// only when a test calls it, and answers pings only then: a test decides
/// whether it is a live client or a silent one.
struct Ws {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_ref: i64,
}

impl Ws {
    /// Connects to `url` and reads `welcome`; a refused handshake gives its
    /// HTTP status and JSON body.
    async fn connect(url: &str) -> Result<Ws, (u16, serde_json::Value)> {
        let connecting = tokio_tungstenite::connect_async_with_config(url, None, true);
        match tokio::time::timeout(Duration::from_secs(10), connecting)
            .await
            .expect("handshake in time")
        {
            Ok((ws, _)) => {
                let mut c = Ws { ws, next_ref: 1 };
                match c.next(Duration::from_secs(10)).await {
                    Some(Event::Frame(ServerFrame::Welcome { .. })) => Ok(c),
                    other => panic!("expected welcome, got {other:?}"),
                }
            }
            Err(tungstenite::Error::Http(resp)) => {
                let body = resp
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or_default();
                Err((resp.status().as_u16(), body))
            }
            Err(e) => panic!("handshake failed: {e}"),
        }
    }

    /// The next event within `within` (None: nothing came).
    async fn next(&mut self, within: Duration) -> Option<Event> {
        let msg = tokio::time::timeout(within, self.ws.next()).await.ok()?;
        Some(match msg {
            Some(Ok(Message::Text(t))) => Event::Frame(
                decode_server_frame(t.as_bytes(), Encoding::Json).expect("a server frame"),
            ),
            Some(Ok(Message::Ping(_))) => Event::Ping,
            Some(Ok(Message::Close(frame))) => {
                Event::Closed(frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())))
            }
            // The node sends no binary frames to a JSON client, and pongs
            // only to pings, which these clients never send.
            Some(Ok(other)) => panic!("unexpected message {other:?}"),
            Some(Err(_)) | None => Event::Closed(None),
        })
    }

    /// Sends `command` with a fresh integer ref; returns the ref.
    async fn send(&mut self, command: Command) -> i64 {
        let r = self.next_ref;
        self.next_ref += 1;
        let msg = Outgoing::from(command)
            .with_ref(Ref::Int(r))
            .message(Encoding::Json);
        self.ws.send(msg).await.expect("send");
        r
    }

    /// Reads (answering pings) until a frame matches `pred`; panics on a
    /// close or after a virtual minute.
    async fn until(&mut self, what: &str, pred: impl Fn(&ServerFrame) -> bool) -> ServerFrame {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(Event::Frame(f)) if pred(&f) => return f,
                Some(Event::Frame(_) | Event::Ping) => continue,
                Some(Event::Closed(c)) => panic!("closed ({c:?}) waiting for {what}"),
                None => panic!("no {what} within a minute"),
            }
        }
    }

    /// Sends `command` and waits for the reply with its ref.
    async fn request(&mut self, command: Command) -> ServerFrame {
        let r = self.send(command).await;
        self.until("a reply", |f| frame_ref(f) == Some(r)).await
    }

    /// Reads (answering pings) until the node closes; returns the close
    /// code and reason (None: no close frame) and when it came.
    async fn closed(&mut self, within: Duration) -> (Option<(u16, String)>, Instant) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(Event::Closed(c)) => return (c, Instant::now()),
                Some(_) => continue,
                None => panic!("not closed within {within:?}"),
            }
        }
    }
}

/// Starts an HTTP request on a fresh connection (Nagle off) by sending
/// `bytes`: a head, maybe incomplete, and maybe part of a body.
async fn start_request(addr: SocketAddr, bytes: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    tcp.write_all(bytes.as_bytes()).await.expect("write");
    tcp
}

/// Reads until the node closes the connection (at most a virtual minute);
/// returns the HTTP status it answered (None: closed without a response),
/// the whole text, and when the connection ended.
async fn read_until_closed(tcp: &mut TcpStream) -> (Option<u16>, String, Instant) {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), tcp.read_to_end(&mut buf))
        .await
        .expect("the node closes the connection");
    let ended = Instant::now();
    // A reset instead of a FIN ends the connection too; what was read counts.
    drop(read);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse().ok());
    (status, text, ended)
}

/// Registers `user` and logs in; returns the login token.
async fn login(addr: SocketAddr, user: &str) -> String {
    let creds = format!(r#"{{"username":"{user}","password":"correct horse"}}"#);
    let json = [("Content-Type", "application/json")];
    let (status, body) = testkit::http(addr, "POST", "/api/register", &json, &creds).await;
    assert_eq!(status, 201, "register: {body}");
    let (status, body) = testkit::http(addr, "POST", "/api/login", &json, &creds).await;
    assert_eq!(status, 200, "login: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("login JSON");
    v["token"].as_str().expect("token").to_owned()
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_closed_after_two_missed_heartbeats() {
    let node = InProc::start(&["--heartbeat-ms", "1000"]).await;
    let mut observer = Ws::connect(&node.ws("user=observer")).await.unwrap();
    observer.request(cmd::join("hb")).await;
    let mut silent = Ws::connect(&node.ws("user=silent")).await.unwrap();
    let joined = silent.request(cmd::join("hb")).await;
    assert_eq!(frame_type(&joined), "joined");
    // From here on `silent` is not read: its pings stay unread and
    // unanswered, as with a peer that hung. The observer reads all the
    // time, so it answers every ping, and sees the silent user leave.
    let quiet_since = Instant::now();
    observer
        .until("silent's user_left", |f| {
            matches!(f, ServerFrame::UserLeft { user, reason: LeaveReason::Disconnect, .. } if user == "silent")
        })
        .await;
    let silent_for = quiet_since.elapsed();
    // PROTOCOL §4: closed after 2 × heartbeat without a sign of life, which
    // the node notices at its next ping tick.
    assert!(
        silent_for > 2 * HEARTBEAT && silent_for <= 3 * HEARTBEAT,
        "closed after {silent_for:?} of silence"
    );

    let mut pings = 0;
    let close = loop {
        match silent.next(Duration::from_secs(10)).await {
            Some(Event::Ping) => pings += 1,
            Some(Event::Closed(close)) => break close,
            other => panic!("expected pings, then the close frame; got {other:?}"),
        }
    };
    assert_eq!(pings, 2, "two heartbeats went unanswered");
    assert_eq!(close, Some((1000, "heartbeat timeout".to_owned())));

    // The observer, who answered, is still served.
    assert_eq!(frame_type(&observer.request(cmd::ping()).await), "pong");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_answers_pings_stays_connected() {
    let node = InProc::start(&["--heartbeat-ms", "1000"]).await;
    let mut steady = Ws::connect(&node.ws("user=steady")).await.unwrap();
    let periods = 60;
    let until = Instant::now() + HEARTBEAT * periods + HEARTBEAT / 2;
    let mut pings = 0;
    // Reading is what answers: tungstenite queues a pong for every ping and
    // sends it on the next read.
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match steady.next(left).await {
            None => break,
            Some(Event::Ping) => pings += 1,
            Some(other) => panic!("after {pings} pings: unexpected {other:?}"),
        }
    }
    assert_eq!(pings, periods, "one ping per heartbeat, none missed");
    assert_eq!(frame_type(&steady.request(cmd::ping()).await), "pong");
}

#[tokio::test(start_paused = true)]
async fn a_request_head_must_arrive_within_the_handshake_timeout() {
    let node = InProc::start(&["--handshake-timeout-ms", "2000"]).await;
    let deadline = Duration::from_secs(2);

    // A slow head that completes before the deadline is served.
    let mut slow = start_request(node.addr, "GET /healthz HTTP/1.1\r\n").await;
    tokio::time::sleep(deadline - Duration::from_millis(100)).await;
    slow.write_all(b"Host: relay\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (status, text, _) = read_until_closed(&mut slow).await;
    assert_eq!(status, Some(200), "served: {text}");

    // A head that stalls, and a connection that never sends a byte, are
    // closed at the deadline without reaching the router.
    for sent in ["GET /healthz HTTP/1.1\r\nHost: relay\r\n", ""] {
        let opened = Instant::now();
        let mut stalled = start_request(node.addr, sent).await;
        let (status, text, ended) = read_until_closed(&mut stalled).await;
        let after = ended - opened;
        assert!(
            after >= deadline && after < deadline + Duration::from_millis(100),
            "{sent:?}: closed after {after:?}"
        );
        // hyper gives up on the head without an answer.
        assert_eq!((status, text.as_str()), (None, ""), "{sent:?}: not served");
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_body_must_arrive_within_the_deadline() {
    let node = InProc::start(&[
        "--auth",
        "token",
        "--secret",
        SECRET,
        "--handshake-timeout-ms",
        "2000",
    ])
    .await;
    let deadline = Duration::from_secs(2);
    let body = r#"{"username":"slowpoke","password":"correct horse"}"#;
    let head = format!(
        "POST /api/register HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (first, rest) = body.split_at(10);

    // Part of the body, the rest just before the deadline: registered.
    let mut slow = start_request(node.addr, &format!("{head}{first}")).await;
    tokio::time::sleep(deadline - Duration::from_millis(100)).await;
    slow.write_all(rest.as_bytes()).await.unwrap();
    let (status, text, _) = read_until_closed(&mut slow).await;
    assert_eq!(status, Some(201), "registered: {text}");

    // Part of the body and nothing more: 408 `timeout` at the deadline.
    let opened = Instant::now();
    let mut stalled = start_request(node.addr, &format!("{head}{first}")).await;
    let (status, text, ended) = read_until_closed(&mut stalled).await;
    let after = ended - opened;
    assert_eq!(status, Some(408), "{text}");
    assert!(text.contains(r#""error":"timeout""#), "{text}");
    assert!(
        after >= deadline && after < deadline + Duration::from_millis(100),
        "answered after {after:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_token_session_closes_with_4001_when_its_token_expires() {
    let node = InProc::start(&[
        "--auth",
        "token",
        "--secret",
        SECRET,
        "--token-ttl-secs",
        "60",
    ])
    .await;
    let token = login(node.addr, "tokyo").await;
    let connected = Instant::now();
    let mut c = Ws::connect(&node.ws(&format!("token={token}")))
        .await
        .unwrap();
    // The expiry is in whole Unix seconds (and measured on the real clock
    // at the handshake): the session has between 59 and 60 s. Well before
    // that it only gets pings (default heartbeat, 25 s), and is served.
    let mut pings = 0;
    while let Some(event) = c.next(Duration::from_secs(55) - connected.elapsed()).await {
        assert!(matches!(event, Event::Ping), "{event:?}");
        pings += 1;
    }
    assert_eq!(pings, 2);
    assert_eq!(frame_type(&c.request(cmd::ping()).await), "pong");
    let (close, at) = c.closed(Duration::from_secs(30)).await;
    assert_eq!(close, Some((4001, "session expired".to_owned())));
    let lived = at - connected;
    assert!(
        lived > Duration::from_secs(58) && lived <= Duration::from_secs(60),
        "closed after {lived:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_sockets_with_1001_within_the_drain_window_and_run_returns() {
    let drain = Duration::from_secs(10);
    let mut node = InProc::start(&["--drain-secs", "10"]).await;
    let mut closes = Vec::new();
    for i in 0..5 {
        let mut c = Ws::connect(&node.ws(&format!("user=u{i}"))).await.unwrap();
        // Each client reads (and answers pings) until the node closes it.
        closes.push(tokio::spawn(async move {
            c.closed(Duration::from_secs(60)).await
        }));
    }
    let started = Instant::now();
    node.shut_down();
    // Five sessions are closed in five batches spread over 80% of the
    // window: a moment later the drain is still going on.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body) = Ws::connect(&node.ws("user=late"))
        .await
        .err()
        .expect("a WebSocket is refused while draining");
    assert_eq!((status, &body["error"]), (503, &"draining".into()));
    let (status, _) = testkit::get(node.addr, "/readyz").await;
    assert_eq!(status, 503, "not ready while draining");

    let mut last = started;
    for close in closes {
        let (close, at) = close.await.unwrap();
        assert_eq!(
            close.map(|(code, _)| code),
            Some(1001),
            "closed as draining"
        );
        assert!(at - started <= drain, "closed after {:?}", at - started);
        last = last.max(at);
    }
    assert!(
        last - started > Duration::from_secs(1),
        "the closes are spread over the window, not all at once"
    );
    let ran = tokio::time::timeout(Duration::from_secs(60), node.task)
        .await
        .expect("run returns")
        .expect("run did not panic");
    assert!(ran.is_ok(), "run: {ran:?}");
    // It returns once the sockets are gone and its HTTP server stopped.
    let took = started.elapsed();
    assert!(took <= drain, "run took {took:?}");
    // Nothing listens any more.
    assert!(
        TcpStream::connect(node.addr).await.is_err(),
        "the listener is closed"
    );
}
