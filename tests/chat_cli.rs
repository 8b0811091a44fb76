//! `relay chat`, the terminal client, driven as a person or a script would:
//! the real binary with piped stdin/stdout/stderr against real `relay serve`
//! processes. Covers the transcript format, commands, exit paths (EOF,
//! `/quit`, refused), reconnect after a node restart, timestamps, MessagePack
//! and `wss://` with a self-signed certificate.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use testkit::{Node, WAIT};

/// How long a reconnect may take (backoff with jitter plus a node start).
const RECONNECT_WAIT: Duration = Duration::from_secs(20);

/// A running `relay chat` process.
struct Chat {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    out_rx: Receiver<String>,
    err_rx: Receiver<String>,
    /// Every stdout / stderr line read so far.
    out: Vec<String>,
    err: Vec<String>,
    /// Lines before these indexes were already matched or skipped.
    out_pos: usize,
    err_pos: usize,
}

fn pipe_lines(reader: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Chat {
    fn start(url: &str, user: &str, args: &[&str]) -> Chat {
        let mut all = vec![url, "--user", user];
        all.extend_from_slice(args);
        Chat::spawn(user, &all)
    }

    /// Runs `relay chat ARGS…`; `name` labels failure messages.
    fn spawn(name: &str, args: &[&str]) -> Chat {
        let mut child = Command::new(env!("CARGO_BIN_EXE_relay"))
            .arg("chat")
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("RELAY_CHAT_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn relay chat");
        let stdin = child.stdin.take();
        let out_rx = pipe_lines(child.stdout.take().expect("stdout"));
        let err_rx = pipe_lines(child.stderr.take().expect("stderr"));
        Chat {
            name: name.to_owned(),
            child,
            stdin,
            out_rx,
            err_rx,
            out: vec![],
            err: vec![],
            out_pos: 0,
            err_pos: 0,
        }
    }

    /// Starts a client and waits until it has joined its room.
    fn joined(url: &str, user: &str, args: &[&str]) -> Chat {
        let mut c = Chat::start(url, user, args);
        c.expect_err(|l| l.starts_with("* joined "), "* joined");
        c
    }

    /// Types a line.
    fn line(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{text}").expect("write stdin");
        stdin.flush().expect("flush stdin");
    }

    /// Closes stdin (EOF).
    fn eof(&mut self) {
        self.stdin.take();
    }

    /// Waits for the first line matching `pred` after the last one matched
    /// on this stream (lines already read are looked at first).
    #[allow(clippy::too_many_arguments)]
    fn wait_line(
        name: &str,
        rx: &Receiver<String>,
        seen: &mut Vec<String>,
        pos: &mut usize,
        other: &[String],
        stream: &str,
        within: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            while *pos < seen.len() {
                let line = seen[*pos].clone();
                *pos += 1;
                if pred(&line) {
                    return line;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => seen.push(line),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => panic!(
                    "{name}: no {stream} line {what:?} within {within:?}\n{stream} so far: {seen:#?}\nother stream: {other:#?}"
                ),
            }
        }
    }

    /// Waits for a stdout line matching `pred`.
    fn expect_out_where(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.drain_err();
        Self::wait_line(
            &self.name,
            &self.out_rx,
            &mut self.out,
            &mut self.out_pos,
            &self.err,
            "stdout",
            WAIT,
            what,
            pred,
        )
    }

    /// Waits for this exact stdout line.
    fn expect_out(&mut self, exact: &str) -> String {
        self.expect_out_where(exact, |l| l == exact)
    }

    /// Waits for a stderr line matching `pred`.
    fn expect_err_within(
        &mut self,
        within: Duration,
        pred: impl Fn(&str) -> bool,
        what: &str,
    ) -> String {
        self.drain_out();
        Self::wait_line(
            &self.name,
            &self.err_rx,
            &mut self.err,
            &mut self.err_pos,
            &self.out,
            "stderr",
            within,
            what,
            pred,
        )
    }

    fn expect_err(&mut self, pred: impl Fn(&str) -> bool, what: &str) -> String {
        self.expect_err_within(WAIT, pred, what)
    }

    fn drain_out(&mut self) {
        while let Ok(l) = self.out_rx.try_recv() {
            self.out.push(l);
        }
    }

    fn drain_err(&mut self) {
        while let Ok(l) = self.err_rx.try_recv() {
            self.err.push(l);
        }
    }

    /// Waits for the process to exit (bounded) and collects its output.
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the reader threads deliver the last lines.
                std::thread::sleep(Duration::from_millis(50));
                self.drain_out();
                self.drain_err();
                return status;
            }
            if Instant::now() > deadline {
                self.drain_out();
                self.drain_err();
                panic!(
                    "{}: did not exit within {within:?}\nstdout: {:#?}\nstderr: {:#?}",
                    self.name, self.out, self.err
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn count_out(&mut self, exact: &str) -> usize {
        self.drain_out();
        self.out.iter().filter(|l| *l == exact).count()
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback address with a port that was free a moment ago.
fn free_addr() -> String {
    format!("127.0.0.1:{}", testkit::free_port())
}

#[test]
fn two_users_chat_in_the_lobby() {
    let node = Node::start(&[]);
    let url = node.url();
    let mut alice = Chat::joined(&url, "alice", &[]);
    let mut bob = Chat::joined(&url, "bob", &[]);
    alice.expect_out("User 'bob' joined the chat");

    alice.line("Hello everyone!");
    bob.expect_out("alice: Hello everyone!");
    bob.line("  Hi alice  ");
    alice.expect_out("bob: Hi alice");

    alice.line("/dm bob psst, just you");
    bob.expect_out("[dm] alice -> bob: psst, just you");
    alice.line("/dm nobody hello?");
    alice.expect_out_where("user_offline error", |l| {
        l.starts_with("! error user_offline: ")
    });

    bob.line("/who");
    bob.expect_out("Online in lobby: alice, bob");

    alice.line("/frobnicate");
    alice.expect_out_where("help for an unknown command", |l| {
        l.starts_with("! unknown command /frobnicate") && l.contains("/dm")
    });

    // EOF: a clean exit, seen by the others as a leave.
    bob.eof();
    assert_eq!(bob.wait_exit(WAIT).code(), Some(0), "bob: {:?}", bob.err);
    alice.expect_out("User 'bob' left the chat");

    // `/quit` likewise.
    let mut carol = Chat::joined(&url, "carol", &[]);
    alice.expect_out("User 'carol' joined the chat");
    carol.line("/quit");
    assert_eq!(
        carol.wait_exit(WAIT).code(),
        Some(0),
        "carol: {:?}",
        carol.err
    );
    alice.expect_out("User 'carol' left the chat");

    // Own lines are not echoed; the typed text is already on the screen.
    assert_eq!(
        alice.count_out("alice: Hello everyone!"),
        0,
        "{:?}",
        alice.out
    );
    assert_eq!(bob.count_out("bob: Hi alice"), 0, "{:?}", bob.out);
    // Typing indicators are never printed, nor anything unexpected.
    for line in &alice.out {
        assert!(
            [
                "User 'bob' joined the chat",
                "bob: Hi alice",
                "User 'bob' left the chat",
                "User 'carol' joined the chat",
                "User 'carol' left the chat",
            ]
            .contains(&line.as_str())
                || line.starts_with("! "),
            "unexpected line {line:?}"
        );
    }
}

#[test]
fn piped_lines_are_delivered_before_exit() {
    let node = Node::start(&[]);
    let url = node.url();
    let mut script = Chat::start(&url, "script", &[]);
    script.line("first line");
    script.line("");
    script.line("second line");
    script.line("/dm nobody x");
    script.eof();
    let status = script.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "script: {:?}", script.err);
    assert!(
        script
            .out
            .iter()
            .any(|l| l.starts_with("! error user_offline: ")),
        "{:?}",
        script.out
    );

    // A later joiner gets them from history, once each, in order.
    let mut reader = Chat::joined(&url, "reader", &[]);
    reader.expect_out("script: first line");
    reader.expect_out("script: second line");
    assert_eq!(reader.out, ["script: first line", "script: second line"]);
}

#[test]
fn reconnects_after_the_node_restarts() {
    let addr = free_addr();
    let mut node = Node::start_on(&addr, &[]);
    let url = node.url();
    let mut alice = Chat::joined(&url, "alice", &[]);
    let mut bob = Chat::joined(&url, "bob", &[]);
    alice.expect_out("User 'bob' joined the chat");
    bob.line("before the crash");
    alice.expect_out("bob: before the crash");
    // The ack precedes the presence reply on bob's socket: once bob sees the
    // reply, the line is confirmed and will not be resent after the crash
    // (an unconfirmed line would be, correctly: at-least-once delivery).
    bob.line("/who");
    bob.expect_out("Online in lobby: alice, bob");

    node.kill9();
    alice.expect_err(|l| l.starts_with("* reconnecting…"), "* reconnecting…");
    bob.expect_err(|l| l.starts_with("* reconnecting…"), "* reconnecting…");
    // Typed while disconnected: queued and sent after the rejoin.
    alice.line("typed while down");

    let _node2 = Node::start_on(&addr, &[]);
    alice.expect_err_within(RECONNECT_WAIT, |l| l == "* reconnected", "* reconnected");
    bob.expect_err_within(RECONNECT_WAIT, |l| l == "* reconnected", "* reconnected");
    // The new node's history starts empty (embedded mode): not recoverable.
    alice.expect_out("* some messages may have been missed");
    bob.expect_out("* some messages may have been missed");

    bob.expect_out("alice: typed while down");
    bob.line("after the restart");
    alice.expect_out("bob: after the restart");
    alice.line("still here");
    bob.expect_out("alice: still here");
    assert_eq!(bob.count_out("alice: typed while down"), 1, "{:?}", bob.out);
    assert_eq!(
        alice.count_out("bob: before the crash"),
        1,
        "{:?}",
        alice.out
    );

    alice.eof();
    assert_eq!(
        alice.wait_exit(WAIT).code(),
        Some(0),
        "alice: {:?}",
        alice.err
    );
}

#[test]
fn timestamps_prefix_the_server_time() {
    let node = Node::start(&[]);
    let url = node.url();
    let mut alice = Chat::joined(&url, "alice", &["--timestamps"]);
    let mut bob = Chat::joined(&url, "bob", &[]);
    let joined = alice.expect_out_where("timestamped join", |l| {
        l.ends_with("] User 'bob' joined the chat")
    });
    bob.line("tick");
    let line = alice.expect_out_where("timestamped message", |l| l.ends_with("] bob: tick"));
    alice.line("tock");
    bob.expect_out("alice: tock");
    for l in [&joined, &line] {
        let b = l.as_bytes();
        assert!(
            l.len() > 11
                && b[0] == b'['
                && b[3] == b':'
                && b[6] == b':'
                && b[9] == b']'
                && b[10] == b' '
                && [1, 2, 4, 5, 7, 8].iter().all(|&i| b[i].is_ascii_digit()),
            "not [HH:MM:SS] : {l:?}"
        );
        // Local time, within a few seconds of now.
        let secs = |s: &str| -> i64 {
            let p: Vec<i64> = s.split(':').map(|x| x.parse().unwrap()).collect();
            p[0] * 3600 + p[1] * 60 + p[2]
        };
        let now = chrono::Local::now().format("%H:%M:%S").to_string();
        let diff = (secs(&l[1..9]) - secs(&now)).rem_euclid(86_400);
        assert!(diff.min(86_400 - diff) <= 5, "{l:?} vs now {now}");
    }
    // Without the flag: no prefix.
    assert!(bob.out.iter().all(|l| !l.starts_with('[')), "{:?}", bob.out);
}

#[test]
fn a_taken_name_is_refused_with_a_non_zero_exit() {
    let node = Node::start(&[]);
    let url = node.url();
    let _alice = Chat::joined(&url, "alice", &[]);
    let mut impostor = Chat::start(&url, "alice", &[]);
    let status = impostor.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1));
    assert!(
        impostor
            .err
            .iter()
            .any(|l| l.contains("409") && l.contains("name_taken")),
        "{:?}",
        impostor.err
    );
    // And a bad URL or name is a usage error.
    let mut bad = Chat::start("ftp://127.0.0.1:1/ws", "x", &[]);
    assert_eq!(bad.wait_exit(WAIT).code(), Some(2));
    let mut bad = Chat::start(&url, "no spaces", &[]);
    assert_eq!(bad.wait_exit(WAIT).code(), Some(2));
    // Nothing listening: the first connection failing is fatal.
    let mut nobody = Chat::start(&format!("ws://{}/ws", free_addr()), "x", &[]);
    assert_eq!(nobody.wait_exit(WAIT).code(), Some(1));
}

#[test]
fn rooms_history_and_msgpack() {
    let node = Node::start(&[]);
    let url = node.url();
    let mut alice = Chat::joined(&url, "alice", &["--encoding", "msgpack", "--room", "dev"]);
    let mut bob = Chat::joined(&url, "bob", &[]);
    let mut carol = Chat::joined(&url, "carol", &[]);
    bob.expect_out("User 'carol' joined the chat");

    bob.line("/join dev");
    bob.expect_err(|l| l.starts_with("* joined dev"), "* joined dev");
    alice.expect_out("User 'bob' joined the chat");
    bob.line("in dev");
    alice.expect_out("bob: in dev");
    alice.line("hello from msgpack");
    bob.expect_out("alice: hello from msgpack");

    // An event of a joined room that is not the current one is marked.
    carol.line("hey lobby");
    bob.expect_out("[#lobby] carol: hey lobby");

    bob.line("/history 5");
    bob.expect_out("bob: in dev");
    bob.expect_out("alice: hello from msgpack");
    bob.line("/who");
    bob.expect_out("Online in dev: alice, bob");

    // Leaving the current room falls back to the previous one.
    bob.line("/leave");
    alice.expect_out("User 'bob' left the chat");
    bob.expect_err(|l| l == "* now in lobby", "* now in lobby");
    bob.line("back in lobby");
    carol.expect_out("bob: back in lobby");
    // A literal slash.
    carol.line("//shrug");
    bob.expect_out("carol: /shrug");
}

/// Writes a self-signed certificate for 127.0.0.1 and its key.
fn self_signed(dir: &std::path::Path) -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("rcgen");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
    (
        cert_path.to_string_lossy().into_owned(),
        key_path.to_string_lossy().into_owned(),
    )
}

#[test]
fn wss_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = self_signed(dir.path());
    let node = Node::start(&["--tls-cert", &cert, "--tls-key", &key]);
    let url = format!("wss://{}/ws", node.addr);

    let mut alice = Chat::joined(&url, "alice", &["--ca-file", &cert]);
    let mut bob = Chat::joined(&url, "bob", &["--insecure"]);
    alice.expect_out("User 'bob' joined the chat");
    bob.line("over TLS");
    alice.expect_out("bob: over TLS");

    // The web roots do not know this certificate: refused, non-zero.
    let mut strict = Chat::start(&url, "carol", &[]);
    assert_eq!(strict.wait_exit(WAIT).code(), Some(1));
    assert!(
        strict.err.iter().any(|l| l.contains("cannot connect")),
        "{:?}",
        strict.err
    );
}

#[test]
fn reconnects_when_the_node_drains() {
    let addr = free_addr();
    let mut node = Node::start_on(&addr, &["--drain-secs", "1"]);
    let url = node.url();
    let mut alice = Chat::joined(&url, "alice", &[]);
    node.signal("TERM");
    alice.expect_err(
        |l| l.starts_with("* reconnecting…"),
        "* reconnecting… (1001)",
    );
    node.wait_exit(Duration::from_secs(15));
    let _node2 = Node::start_on(&addr, &[]);
    alice.expect_err_within(RECONNECT_WAIT, |l| l == "* reconnected", "* reconnected");
    let mut bob = Chat::joined(&url, "bob", &[]);
    bob.line("welcome back");
    alice.expect_out("bob: welcome back");
}

/// A TCP forwarder that can cut its connections and refuse new ones, to
/// drop a client's connection while the node (and its history) lives on.
struct Proxy {
    addr: std::net::SocketAddr,
    state: std::sync::Arc<std::sync::Mutex<ProxyState>>,
}

#[derive(Default)]
struct ProxyState {
    refusing: bool,
    conns: Vec<std::net::TcpStream>,
}

impl Proxy {
    fn start(upstream: std::net::SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let state = std::sync::Arc::new(std::sync::Mutex::new(ProxyState::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let mut st = shared.lock().expect("lock");
                if st.refusing {
                    continue; // dropped: closed at once
                }
                let Ok(server) = std::net::TcpStream::connect(upstream) else {
                    continue;
                };
                for s in [&client, &server] {
                    if let Ok(c) = s.try_clone() {
                        st.conns.push(c);
                    }
                }
                for (mut from, mut to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ]
                .into_iter()
                .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { addr, state }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Cuts every open connection and refuses new ones until `resume`.
    fn cut(&self) {
        let mut st = self.state.lock().expect("lock");
        st.refusing = true;
        for c in st.conns.drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn resume(&self) {
        self.state.lock().expect("lock").refusing = false;
    }
}

#[test]
fn a_dropped_connection_recovers_exactly_the_missed_messages() {
    let node = Node::start(&[]);
    let proxy = Proxy::start(node.addr);
    let mut alice = Chat::joined(&proxy.url(), "alice", &[]);
    let mut bob = Chat::joined(&node.url(), "bob", &[]);
    let mut carol = Chat::joined(&node.url(), "carol", &[]);
    bob.line("before");
    alice.expect_out("bob: before");
    carol.expect_out("bob: before");

    proxy.cut();
    alice.expect_err(|l| l.starts_with("* reconnecting…"), "* reconnecting…");
    alice.line("from alice while away");
    bob.line("missed one");
    bob.line("missed two");
    // Carol saw them: they are stored (acked only after store and publish).
    carol.expect_out("bob: missed one");
    carol.expect_out("bob: missed two");

    proxy.resume();
    alice.expect_err_within(RECONNECT_WAIT, |l| l == "* reconnected", "* reconnected");
    alice.expect_out("bob: missed two");
    carol.expect_out("alice: from alice while away");
    bob.line("after");
    alice.expect_out("bob: after");
    // Exactly the missed ones, once, in order; no gap notice.
    let from_bob: Vec<&str> = alice
        .out
        .iter()
        .map(String::as_str)
        .filter(|l| l.starts_with("bob: "))
        .collect();
    assert_eq!(
        from_bob,
        [
            "bob: before",
            "bob: missed one",
            "bob: missed two",
            "bob: after"
        ]
    );
    assert_eq!(alice.count_out("* some messages may have been missed"), 0);
    assert_eq!(carol.count_out("alice: from alice while away"), 1);
}

#[test]
fn ctrl_c_exits_cleanly() {
    let node = Node::start(&[]);
    let url = node.url();
    let mut alice = Chat::joined(&url, "alice", &[]);
    let mut bob = Chat::joined(&url, "bob", &[]);
    alice.expect_out("User 'bob' joined the chat");
    let status = Command::new("kill")
        .args(["-INT", &bob.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert_eq!(bob.wait_exit(WAIT).code(), Some(0), "bob: {:?}", bob.err);
    alice.expect_out("User 'bob' left the chat");
}

#[test]
fn a_fast_pipe_is_paced_under_the_rate_limit() {
    let node = Node::start(&["--rate", "5"]);
    let url = node.url();
    let mut script = Chat::start(&url, "script", &[]);
    let lines: Vec<String> = (1..=25).map(|i| format!("line {i}")).collect();
    for l in &lines {
        script.line(l);
    }
    script.eof();
    assert_eq!(
        script.wait_exit(Duration::from_secs(20)).code(),
        Some(0),
        "script: {:?} {:?}",
        script.out,
        script.err
    );
    assert!(script.out.is_empty(), "no errors: {:?}", script.out);
    let mut reader = Chat::joined(&url, "reader", &[]);
    reader.expect_out("script: line 25");
    let expected: Vec<String> = lines.iter().map(|l| format!("script: {l}")).collect();
    assert_eq!(reader.out, expected, "every line once, in order");
}

/// Registers `user` and returns a login token (token auth mode).
fn login(node: &Node, user: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let body = format!(r#"{{"username":"{user}","password":"correct horse"}}"#);
        let (status, text) = testkit::http(node.addr, "POST", "/api/register", &[], &body).await;
        assert_eq!(status, 201, "register {user}: {text}");
        let (status, text) = testkit::http(node.addr, "POST", "/api/login", &[], &body).await;
        assert_eq!(status, 200, "login {user}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        v["token"].as_str().expect("token").to_owned()
    })
}

#[test]
fn token_mode_uses_the_bearer_token() {
    let node = Node::start(&[
        "--auth",
        "token",
        "--secret",
        "chat-cli-test-secret-0123456789abcdef",
    ]);
    let url = node.url();
    let spawn = |token: &str, name: &str| Chat::spawn(name, &[&url, "--token", token]);
    let mut alice = spawn(&login(&node, "alice"), "alice");
    alice.expect_err(|l| l.starts_with("* joined lobby"), "* joined");
    let mut bob = spawn(&login(&node, "bob"), "bob");
    bob.expect_err(|l| l.starts_with("* joined lobby"), "* joined");
    // The names come from the tokens.
    alice.expect_out("User 'bob' joined the chat");
    bob.line("signed in");
    alice.expect_out("bob: signed in");

    // A bad token is refused at the handshake: no retry, non-zero exit.
    let mut forged = spawn("not-a-token", "forged");
    assert_eq!(forged.wait_exit(WAIT).code(), Some(1));
    assert!(
        forged.err.iter().any(|l| l.contains("401")),
        "{:?}",
        forged.err
    );
}

#[test]
fn an_expired_session_is_not_resumed() {
    let node = Node::start(&[
        "--auth",
        "token",
        "--secret",
        "chat-cli-test-secret-0123456789abcdef",
        "--token-ttl-secs",
        "5",
    ]);
    let token = login(&node, "alice");
    let mut alice = Chat::spawn("alice", &[&node.url(), "--token", &token]);
    alice.expect_err(|l| l.starts_with("* joined lobby"), "* joined");
    // The token expires: close 4001, no reconnect, non-zero exit.
    let status = alice.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(1), "{:?}", alice.err);
    assert!(
        alice.err.iter().any(|l| l.contains("session expired")),
        "{:?}",
        alice.err
    );
    assert!(!alice.err.iter().any(|l| l.starts_with("* reconnecting")));
}
