//! PROTOCOL §11 and §8's cookie rule against real `relay serve` processes:
//! slow and oversized request bodies, the per-address share of pre-upgrade
//! connections, checks before bodies, the password-hashing bound, short
//! secrets, the cookie/Origin rule, the page's security headers, control
//! characters in text, and the 426 answer to other WebSocket versions.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const SECRET: &str = "hardening-test-secret-0123456789abcdef";
const KEY: &str = "hardening-api-key";

/// A node whose open-file limit is `nofile` (hard and soft), so that its
/// pre-upgrade HTTP slots are few (`nofile / 10`, at least 64).
struct LimitedNode {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl LimitedNode {
    fn start(nofile: u32, args: &[&str]) -> LimitedNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("relay.log");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" serve \"$@\""))
            .arg(env!("CARGO_BIN_EXE_relay"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "relay=debug,info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
            .spawn()
            .expect("spawn relay");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("first line");
        let addr = line
            .trim()
            .rsplit("http://")
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "relay did not start ({line:?}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        LimitedNode {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LimitedNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP connection to `addr` from the local address `from`.
async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().expect("from"))
        .expect("bind");
    socket.connect(addr).await.expect("connect")
}

/// Reads until the peer closes or `within` passes; the text read.
async fn read_for(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&buf).into(), true),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return (String::from_utf8_lossy(&buf).into(), false),
        }
    }
}

/// The status of an HTTP answer, 0 for none.
fn status_of(text: &str) -> u16 {
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The JSON body of an HTTP answer.
fn body_of(text: &str) -> Value {
    text.split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null)
}

/// One `GET path` from `from`; the whole answer ("" when the connection was
/// dropped or nothing came within 5 s).
async fn raw_get(from: &str, addr: SocketAddr, path: &str, extra: &str) -> String {
    let mut s = connect_from(from, addr).await;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return String::new();
    }
    read_for(&mut s, WAIT).await.0
}

/// Starts a request with a body of `declared` bytes and sends only `sent`.
async fn partial_post(
    from: &str,
    addr: SocketAddr,
    path: &str,
    headers: &str,
    declared: usize,
    sent: &str,
) -> TcpStream {
    let mut s = connect_from(from, addr).await;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {declared}\r\n{headers}\r\n{sent}"
    );
    let _ = s.write_all(req.as_bytes()).await;
    s
}

/// Without a per-address share, 100 slow publish bodies from 127.0.0.2
/// take all 64 pre-upgrade slots and `/healthz` from 127.0.0.1 is dropped.
#[tokio::test]
async fn slow_bodies_from_one_address_leave_healthz_alive() {
    // 640 descriptors: 64 HTTP slots, a share of 8 per address; bodies may
    // take 30 s, so only the share protects the slots here.
    let node = LimitedNode::start(640, &["--api-key", KEY, "--handshake-timeout-ms", "30000"]);
    let auth = format!("Authorization: Bearer {KEY}\r\n");
    let mut holders = Vec::new();
    for _ in 0..100 {
        holders.push(
            partial_post(
                "127.0.0.2",
                node.addr,
                "/api/publish",
                &auth,
                1000,
                "{\"room\":",
            )
            .await,
        );
    }
    // Let the node accept them all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..5 {
        let answer = raw_get("127.0.0.1", node.addr, "/healthz", "").await;
        assert_eq!(
            status_of(&answer),
            200,
            "healthz #{i} from another address: {answer:?}\n{}",
            node.logs()
        );
    }
    // The holders beyond the share were dropped at once.
    let mut dropped = 0;
    for h in &mut holders {
        if read_for(h, Duration::from_millis(20)).await.1 {
            dropped += 1;
        }
    }
    assert!(
        (100 - 8..=100).contains(&dropped),
        "{dropped} of 100 connections from one address dropped; the share is 8"
    );
    let (_, metrics) = get(node.addr, "/metrics").await;
    assert!(metrics.contains("tcp_ip_limit"), "{metrics}");
}

/// A body that does not finish within the deadline is answered 408 and its
/// connection closed, which frees the address's share for new requests.
#[tokio::test]
async fn body_deadline_frees_the_slot() {
    let node = LimitedNode::start(
        640,
        &[
            "--api-key",
            KEY,
            "--auth",
            "token",
            "--secret",
            SECRET,
            "--handshake-timeout-ms",
            "1000",
        ],
    );
    let auth = format!("Authorization: Bearer {KEY}\r\n");
    let mut holders = Vec::new();
    for i in 0..8 {
        let (path, headers) = if i % 2 == 0 {
            ("/api/publish", auth.as_str())
        } else {
            ("/api/login", "")
        };
        holders.push(partial_post("127.0.0.2", node.addr, path, headers, 500, "{").await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The share of 127.0.0.2 is full: one more is dropped.
    let refused = raw_get("127.0.0.2", node.addr, "/healthz", "").await;
    assert_eq!(status_of(&refused), 0, "share full: {refused:?}");
    for (i, h) in holders.iter_mut().enumerate() {
        let (answer, closed) = read_for(h, WAIT).await;
        assert_eq!(status_of(&answer), 408, "holder {i}: {answer:?}");
        assert_eq!(body_of(&answer)["error"], "timeout", "{answer}");
        assert!(closed, "holder {i}: connection closed after the 408");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = raw_get("127.0.0.2", node.addr, "/healthz", "").await;
    assert_eq!(status_of(&again), 200, "slots freed: {again:?}");
}

/// Keys, rate limits and size limits answer before the client sends any of
/// its body.
#[tokio::test]
async fn checks_come_before_the_body() {
    let node = Node::start(&[
        "--api-key",
        KEY,
        "--auth",
        "token",
        "--secret",
        SECRET,
        "--login-rate",
        "1",
        "--handshake-timeout-ms",
        "30000",
    ]);
    let addr = node.addr;
    // A wrong key: 401 while the 1000-byte body is still unsent.
    let mut s = partial_post(
        "127.0.0.1",
        addr,
        "/api/publish",
        "Authorization: Bearer wrong\r\n",
        1000,
        "",
    )
    .await;
    let (answer, _) = read_for(&mut s, WAIT).await;
    assert_eq!(status_of(&answer), 401, "{answer:?}");
    assert_eq!(body_of(&answer)["error"], "unauthorized");
    // No key at all: the same.
    let mut s = partial_post("127.0.0.1", addr, "/api/publish", "", 1000, "").await;
    assert_eq!(status_of(&read_for(&mut s, WAIT).await.0), 401);
    // The login limiter: the first attempt is spent, the second is 429
    // before its body.
    let mut first = partial_post("127.0.0.1", addr, "/api/login", "", 1000, "").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut second = partial_post("127.0.0.1", addr, "/api/login", "", 1000, "").await;
    let (answer, _) = read_for(&mut second, WAIT).await;
    assert_eq!(status_of(&answer), 429, "{answer:?}");
    assert!(answer.to_ascii_lowercase().contains("retry-after:"));
    drop(first.shutdown().await);
    // Declared sizes over a route's limit: 413 JSON at once.
    let mut s = partial_post("127.0.0.2", addr, "/api/register", "", 1_000_000, "").await;
    let (answer, _) = read_for(&mut s, WAIT).await;
    assert_eq!(status_of(&answer), 413, "{answer:?}");
    assert_eq!(body_of(&answer)["error"], "too_large");
    let mut s = partial_post(
        "127.0.0.1",
        addr,
        "/api/publish",
        &format!("Authorization: Bearer {KEY}\r\n"),
        10_000_000,
        "",
    )
    .await;
    let (answer, _) = read_for(&mut s, WAIT).await;
    assert_eq!(status_of(&answer), 413, "{answer:?}");
    assert_eq!(body_of(&answer)["error"], "too_large");
    // A chunked body growing past the limit: 413 too.
    let mut s = connect_from("127.0.0.3", addr).await;
    let chunk = "x".repeat(8192);
    let req = format!(
        "POST /api/register HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{chunk}\r\n",
        chunk.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let (answer, _) = read_for(&mut s, WAIT).await;
    assert_eq!(status_of(&answer), 413, "{answer:?}");
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A burst of 48 concurrent logins from 48 addresses: a few hash at once,
/// the rest answer 503 `busy` with `Retry-After`; peak RSS stays far below
/// 48 × 19 MiB.
#[tokio::test]
async fn login_bursts_are_bounded() {
    let node = Node::start(&[
        "--auth",
        "token",
        "--secret",
        SECRET,
        "--login-rate",
        "100000",
        "--trusted-proxies",
        "127.0.0.1",
    ]);
    let before = vm_hwm_kib(node.pid());
    let addr = node.addr;
    let burst = (0..48).map(|i| async move {
        let xff = format!("198.51.100.{}", i + 1);
        let mut s = TcpStream::connect(addr).await.unwrap();
        let body =
            json!({"username": format!("nobody{i}"), "password": "wrong password"}).to_string();
        let req = format!(
            "POST /api/login HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             X-Forwarded-For: {xff}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        read_for(&mut s, Duration::from_secs(60)).await.0
    });
    let answers = futures_util::future::join_all(burst).await;
    let busy: Vec<&String> = answers.iter().filter(|a| status_of(a) == 503).collect();
    let denied = answers.iter().filter(|a| status_of(a) == 401).count();
    assert_eq!(busy.len() + denied, 48, "{answers:?}");
    assert!(!busy.is_empty(), "some logins answered busy");
    assert!(denied >= 2, "some logins were verified");
    for a in &busy {
        assert_eq!(body_of(a)["error"], "busy", "{a}");
        assert!(a.to_ascii_lowercase().contains("retry-after: 1"), "{a}");
    }
    let peak = vm_hwm_kib(node.pid());
    // Twice the cores hash at once (19 MiB each); 48 at once would be
    // about 900 MiB.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let allowed = before + (2 * cores.max(1) + 4) * 20 * 1024;
    assert!(
        peak <= allowed,
        "peak RSS {peak} KiB (started at {before} KiB, allowed {allowed} KiB)"
    );
}

fn start_and_wait_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_relay"))
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn relay");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut err = String::new();
            let _ =
                std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err);
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (None, "still running after 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Empty entries and secrets under 32 bytes refuse to start.
#[test]
fn short_or_empty_secrets_refuse_to_start() {
    let long = "y".repeat(32);
    for secret in [
        String::new(),
        format!("{long},"),
        format!(",{long}"),
        "short-secret".to_owned(),
        format!("{long},{}", "z".repeat(31)),
    ] {
        let (code, err) = start_and_wait_exit(&["--auth", "token", "--secret", &secret]);
        assert!(code == Some(2), "--secret {secret:?}: exit {code:?}: {err}");
        assert!(err.contains("--secret"), "--secret {secret:?}: {err}");
    }
}

/// §8: a cookie-authenticated handshake from a foreign Origin is 403
/// `forbidden_origin`, without any allow-list; the node's own origin, no
/// Origin, and Bearer/`?token=` tokens are unaffected.
#[tokio::test]
async fn cookie_handshakes_need_the_own_origin() {
    let node = Node::start(&["--auth", "token", "--secret", SECRET, "--login-rate", "100"]);
    let (s, _) = http(
        node.addr,
        "POST",
        "/api/register",
        &[("Content-Type", "application/json")],
        &json!({"username":"carol","password":"hunter2hunter2"}).to_string(),
    )
    .await;
    assert_eq!(s, 201);
    let (s, body) = http(
        node.addr,
        "POST",
        "/api/login",
        &[("Content-Type", "application/json")],
        &json!({"username":"carol","password":"hunter2hunter2"}).to_string(),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let token = serde_json::from_str::<Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let cookie = format!("relay_token={token}");
    let own = format!("http://{}", node.addr);
    for foreign in [
        "http://evil.example",
        "null",
        &format!("https://{}", node.addr),
        &format!("http://127.0.0.1:{}", node.addr.port() + 1),
    ] {
        let r = Connect::new(node.url())
            .header("Cookie", cookie.clone())
            .header("Origin", foreign)
            .open()
            .await
            .err()
            .unwrap_or_else(|| panic!("cookie from {foreign} accepted"));
        assert_eq!(r.status, 403, "{foreign}");
        assert_eq!(r.body["error"], "forbidden_origin", "{foreign}");
    }
    let c = Connect::new(node.url())
        .header("Cookie", cookie.clone())
        .header("Origin", own.clone())
        .open()
        .await
        .expect("own origin");
    assert_eq!(c.user, "carol");
    c.close().await;
    Connect::new(node.url())
        .header("Cookie", cookie.clone())
        .open()
        .await
        .expect("no Origin")
        .close()
        .await;
    Connect::new(node.url())
        .header("Authorization", format!("Bearer {token}"))
        .header("Origin", "http://evil.example")
        .open()
        .await
        .expect("bearer from anywhere")
        .close()
        .await;
    Connect::new(format!("{}?token={token}", node.url()))
        .header("Origin", "http://evil.example")
        .open()
        .await
        .expect("?token= from anywhere")
        .close()
        .await;
    // Behind a trusted proxy that says https, the own origin is https.
    let proxied = Node::start(&[
        "--auth",
        "token",
        "--secret",
        SECRET,
        "--trusted-proxies",
        "127.0.0.1",
    ]);
    let https_own = format!("https://{}", proxied.addr);
    let c = Connect::new(proxied.url())
        .header("Cookie", cookie.clone())
        .header("Origin", https_own)
        .header("X-Forwarded-Proto", "https")
        .open()
        .await;
    // carol is unknown to this node's memory backplane: 401, not 403.
    assert_eq!(c.err().map(|r| r.status), Some(401));
    let r = Connect::new(proxied.url())
        .header("Cookie", cookie.clone())
        .header("Origin", format!("http://{}", proxied.addr))
        .header("X-Forwarded-Proto", "https")
        .open()
        .await
        .err()
        .expect("http origin under https");
    assert_eq!(r.status, 403);
    // The public host a trusted proxy names.
    let c = Connect::new(proxied.url())
        .header("Cookie", cookie.clone())
        .header("Origin", "https://chat.example.com")
        .header("X-Forwarded-Proto", "https")
        .header("X-Forwarded-Host", "chat.example.com")
        .open()
        .await;
    assert_eq!(c.err().map(|r| r.status), Some(401), "own origin by proxy");
    // ...but only from a trusted proxy.
    let r = Connect::new(node.url())
        .header("Cookie", cookie)
        .header("Origin", "http://chat.example.com")
        .header("X-Forwarded-Host", "chat.example.com")
        .open()
        .await
        .err()
        .expect("X-Forwarded-Host from an untrusted peer");
    assert_eq!(r.status, 403);
}

/// The page and its static files carry CSP (no framing), Referrer-Policy,
/// nosniff and X-Frame-Options.
#[tokio::test]
async fn page_security_headers() {
    let node = Node::start(&[]);
    for path in ["/", "/index.html", "/app/main.js", "/style.css"] {
        let answer = raw_get("127.0.0.1", node.addr, path, "").await;
        assert_eq!(status_of(&answer), 200, "{path}");
        let head = answer
            .split_once("\r\n\r\n")
            .map(|(h, _)| h.to_ascii_lowercase())
            .unwrap_or_default();
        let csp = head
            .lines()
            .find_map(|l| l.strip_prefix("content-security-policy:"))
            .unwrap_or_else(|| panic!("{path}: no CSP in {head}"));
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
        assert!(head.contains("referrer-policy: no-referrer"), "{path}");
        assert!(head.contains("x-content-type-options: nosniff"), "{path}");
        assert!(head.contains("x-frame-options: deny"), "{path}");
    }
}

/// NUL, ESC, CR, DEL, C1 controls in text are `invalid` on the socket and
/// over HTTP; newline and tab pass.
#[tokio::test]
async fn control_characters_are_invalid() {
    let node = Node::start(&["--api-key", KEY, "--rate", "1000"]);
    let mut a = guest(&node, "alice").await;
    a.join("ctl").await;
    for bad in [
        "a\u{0}b",
        "\u{1b}[2J",
        "a\rb",
        "x\u{7f}",
        "x\u{9b}y",
        "\u{7}",
    ] {
        let e = js(&a
            .request(json!({"type":"send","room":"ctl","text": bad}))
            .await);
        assert_eq!(e["type"], "error", "{bad:?}: {e}");
        assert_eq!(e["code"], "invalid", "{bad:?}: {e}");
        let (s, body) = http(
            node.addr,
            "POST",
            "/api/publish",
            &[
                ("Authorization", &format!("Bearer {KEY}")),
                ("Content-Type", "application/json"),
            ],
            &json!({"room":"ctl","text": bad}).to_string(),
        )
        .await;
        assert_eq!(s, 400, "{bad:?}: {body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["error"],
            "invalid"
        );
    }
    let ok = js(&a
        .request(json!({"type":"send","room":"ctl","text":"two\nlines\tand a tab"}))
        .await);
    assert_eq!(ok["type"], "ack", "{ok}");
    let (s, body) = http(
        node.addr,
        "POST",
        "/api/publish",
        &[
            ("Authorization", &format!("Bearer {KEY}")),
            ("Content-Type", "application/json"),
        ],
        &json!({"room":"ctl","text":"fine\ttext"}).to_string(),
    )
    .await;
    assert_eq!(s, 200, "{body}");
}

/// RFC 6455 §4.2.2: another `Sec-WebSocket-Version` is 426 naming 13.
#[tokio::test]
async fn other_websocket_versions_get_426() {
    let node = Node::start(&[]);
    let extra = "Connection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n";
    let answer = raw_get("127.0.0.1", node.addr, "/ws?user=old", extra).await;
    assert_eq!(status_of(&answer), 426, "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{answer}"
    );
    assert_eq!(body_of(&answer)["error"], "invalid");
}
