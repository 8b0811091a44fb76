//! Accounts, tokens, API keys, TLS and abuse limits, over real sockets and
//! HTTP against real `relay serve` processes, including the bad cases.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

const SECRET: &str = "test-secret-0123456789-0123456789abcdef";

fn token_node(extra: &[&str]) -> Node {
    let mut args = vec!["--auth", "token", "--secret", SECRET];
    args.extend_from_slice(extra);
    Node::start(&args)
}

async fn post(node: &Node, path: &str, body: Value, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    let (status, body) = http(node.addr, "POST", path, &h, &body.to_string()).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// `POST` of `{"username", "password"}` to `/api/register` or `/api/login`.
async fn account(node: &Node, path: &str, username: &str, password: &str) -> (u16, Value) {
    post(
        node,
        path,
        json!({"username": username, "password": password}),
        &[],
    )
    .await
}

async fn register_and_login(node: &Node, user: &str) -> String {
    let (s, _) = account(node, "/api/register", user, "hunter2hunter2").await;
    assert_eq!(s, 201);
    let (s, body) = account(node, "/api/login", user, "hunter2hunter2").await;
    assert_eq!(s, 200, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn register_and_login_rules() {
    let node = token_node(&["--login-rate", "100"]);
    let (s, b) = account(&node, "/api/register", "alice", "correct horse").await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = account(&node, "/api/register", "alice", "another one").await;
    assert_eq!((s, b["error"].as_str()), (409, Some("name_taken")));
    let (s, b) = account(&node, "/api/register", "-bad", "correct horse").await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid")));
    let (s, _) = account(&node, "/api/register", "bob", "short").await;
    assert_eq!(s, 400);
    let (s, _) = account(&node, "/api/register", "bob", &"x".repeat(129)).await;
    assert_eq!(s, 400);
    let (s, _) = post(&node, "/api/register", json!("nonsense"), &[]).await;
    assert_eq!(s, 400);

    let (s, b) = account(&node, "/api/login", "alice", "correct horse").await;
    assert_eq!(s, 200);
    assert!(
        b["token"].as_str().unwrap().split('.').count() == 3,
        "a JWT"
    );
    let exp = b["expires_at"].as_u64().unwrap();
    let now = relay::backplane::now_ms();
    assert!(
        exp > now + 86_000_000 && exp < now + 87_000_000,
        "24 h by default, in ms"
    );
    let (s, wrong_pw) = account(&node, "/api/login", "alice", "wrong horse").await;
    assert_eq!(s, 401);
    let (s, unknown) = account(&node, "/api/login", "nobody", "correct horse").await;
    assert_eq!(s, 401);
    assert_eq!(wrong_pw, unknown, "no hint which part was wrong");
}

#[tokio::test]
async fn token_handshake_by_header_query_and_cookie() {
    let node = token_node(&[]);
    let token = register_and_login(&node, "alice").await;
    let c = Connect::new(node.url())
        .header("Authorization", format!("Bearer {token}"))
        .open()
        .await
        .unwrap();
    assert_eq!(c.user, "alice");
    assert_eq!(c.resume, None, "no resume token in token mode");
    let c2 = Connect::new(format!("{}?token={token}", node.url()))
        .open()
        .await
        .unwrap();
    assert_eq!(c2.user, "alice");
    let mut c3 = Connect::new(node.url())
        .header("Cookie", format!("theme=dark; relay_token={token}"))
        .open()
        .await
        .unwrap();
    assert_eq!(c3.user, "alice");
    // Tabs share the user: no name claim in token mode.
    c3.join("lobby").await;
    // `?user=` means nothing here.
    let r = Connect::new(format!("{}?user=alice", node.url()))
        .open()
        .await
        .err()
        .unwrap();
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let (s, cfg) = get(node.addr, "/api/config").await;
    assert_eq!(s, 200);
    assert!(cfg.contains(r#""auth":"token""#));
}

#[tokio::test]
async fn bad_tokens_are_refused_before_the_upgrade() {
    let node = token_node(&[]);
    register_and_login(&node, "alice").await;
    let forged = relay::auth::TokenKeys::new(&["not-the-secret".into()], 3600)
        .unwrap()
        .issue("alice")
        .unwrap()
        .0;
    let unknown_user = relay::auth::TokenKeys::new(&[SECRET.into()], 3600)
        .unwrap()
        .issue("mallory")
        .unwrap()
        .0;
    let expired = relay::auth::TokenKeys::new(&[SECRET.into()], 0)
        .unwrap()
        .issue("alice")
        .unwrap()
        .0;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for (what, t) in [
        ("forged", forged),
        ("unknown user", unknown_user),
        ("expired", expired),
        ("garbage", "a.b.c".into()),
    ] {
        let r = Connect::new(format!("{}?token={t}", node.url()))
            .open()
            .await
            .err()
            .unwrap_or_else(|| panic!("{what} accepted"));
        assert_eq!(r.status, 401, "{what}");
        assert_eq!(r.body["error"], "unauthorized", "{what}");
    }
    let r = Connect::new(node.url()).open().await.err().unwrap();
    assert_eq!(r.status, 401, "no token at all");
    // A page learns the same with a plain GET (browsers hide the status of
    // a refused WebSocket).
    let (status, body) = get(node.addr, "/ws?token=a.b.c").await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("unauthorized"), "{body}");
}

#[tokio::test]
async fn token_expiry_closes_the_socket_with_4001() {
    let node = token_node(&["--token-ttl-secs", "2"]);
    let token = register_and_login(&node, "alice").await;
    let mut c = Connect::new(format!("{}?token={token}", node.url()))
        .open()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    assert_eq!(c.recv_close().await, Some(4001));
    assert!(started.elapsed() <= Duration::from_secs(3));
}

#[tokio::test]
async fn secret_rotation_keeps_old_tokens_valid() {
    let old = token_node(&[]);
    let token = register_and_login(&old, "alice").await;
    drop(old);
    // The new node signs with a new key and still verifies the old one. Its
    // accounts live in its own memory, so register alice there too.
    let node = Node::start(&[
        "--auth",
        "token",
        "--secret",
        &format!("brand-new-secret-0123456789abcdef,{SECRET}"),
    ]);
    let (s, _) = account(&node, "/api/register", "alice", "hunter2hunter2").await;
    assert_eq!(s, 201);
    let c = Connect::new(format!("{}?token={token}", node.url()))
        .open()
        .await
        .unwrap();
    assert_eq!(c.user, "alice");
    let (_, b) = account(&node, "/api/login", "alice", "hunter2hunter2").await;
    let new_token = b["token"].as_str().unwrap();
    let old_keys = relay::auth::TokenKeys::new(&[SECRET.into()], 60).unwrap();
    assert!(
        old_keys.verify(new_token).is_err(),
        "new tokens are signed with the first secret"
    );
}

#[tokio::test]
async fn login_attempts_are_rate_limited_per_ip() {
    let node = token_node(&["--login-rate", "3"]);
    for _ in 0..3 {
        let (s, _) = account(&node, "/api/login", "x", "whatever1").await;
        assert_eq!(s, 401);
    }
    let (status, raw) = http(
        node.addr,
        "POST",
        "/api/login",
        &[("Content-Type", "application/json")],
        r#"{"username":"x","password":"whatever1"}"#,
    )
    .await;
    assert_eq!(status, 429);
    assert!(raw.contains("rate_limited"));
    // Retry-After is set: read the raw head.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let body = r#"{"username":"x","password":"whatever1"}"#;
    s.write_all(format!("POST /api/register HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 429"), "{out}");
    let retry: u64 = out
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("Retry-After");
    assert!((1..=20).contains(&retry), "{retry}");
}

#[tokio::test]
async fn api_key_endpoints() {
    let node = Node::start(&["--api-key", "k-123,k-old"]);
    let mut a = guest(&node, "alice").await;
    a.join("news").await;
    let (s, b) = post(
        &node,
        "/api/publish",
        json!({"room":"news","text":"hello from the server"}),
        &[],
    )
    .await;
    assert_eq!((s, b["error"].as_str()), (401, Some("unauthorized")));
    let (s, _) = post(
        &node,
        "/api/publish",
        json!({"room":"news","text":"x"}),
        &[("Authorization", "Bearer wrong")],
    )
    .await;
    assert_eq!(s, 401);
    let (s, b) = post(
        &node,
        "/api/publish",
        json!({"room":"news","text":"hello from the server","from":"bot"}),
        &[("Authorization", "Bearer k-123")],
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["id"], 1);
    assert!(b["ts"].as_u64().is_some());
    let m = js(&a.recv_type("message").await);
    assert_eq!(
        (m["from"].as_str(), m["text"].as_str(), m["id"].as_u64()),
        (Some("bot"), Some("hello from the server"), Some(1))
    );
    let (s, _) = post(
        &node,
        "/api/publish",
        json!({"room":"news","text":"again"}),
        &[("Authorization", "Bearer k-old")],
    )
    .await;
    assert_eq!(s, 200, "rotated keys both work");
    assert_eq!(js(&a.recv_type("message").await)["from"], "server");
    let (s, _) = post(
        &node,
        "/api/publish",
        json!({"room":"bad room","text":"x"}),
        &[("Authorization", "Bearer k-123")],
    )
    .await;
    assert_eq!(s, 400);
    let (s, body) = http(
        node.addr,
        "GET",
        "/api/rooms/news/history",
        &[("Authorization", "Bearer k-123")],
        "",
    )
    .await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["messages"].as_array().unwrap().len(), 2);
    let (s, body) = http(
        node.addr,
        "GET",
        "/api/rooms/news/presence",
        &[("Authorization", "Bearer k-123")],
        "",
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["users"],
        json!(["alice"])
    );
    let (s, _) = get(node.addr, "/api/rooms/news/history").await;
    assert_eq!(s, 401);
    let (s, body) = http(
        node.addr,
        "GET",
        "/api/nodes",
        &[("Authorization", "Bearer k-123")],
        "",
    )
    .await;
    assert_eq!(s, 200, "{body}");
    // Without --api-key the endpoints do not exist.
    let plain = Node::start(&[]);
    let (s, _) = post(
        &plain,
        "/api/publish",
        json!({"room":"news","text":"x"}),
        &[("Authorization", "Bearer k-123")],
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = post(
        &plain,
        "/api/login",
        json!({"username":"a","password":"b"}),
        &[],
    )
    .await;
    assert_eq!(s, 404, "no accounts in guest mode");
}

#[tokio::test]
async fn per_ip_limit_and_trusted_proxies() {
    let node = Node::start(&["--max-conns-per-ip", "2"]);
    let a = guest(&node, "a").await;
    let _b = guest(&node, "b").await;
    let r = Connect::new(format!("{}?user=c", node.url()))
        .open()
        .await
        .err()
        .expect("over the limit");
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (429, Some("too_many_connections"))
    );
    // X-Forwarded-For from an untrusted peer changes nothing.
    let r = Connect::new(format!("{}?user=c", node.url()))
        .header("X-Forwarded-For", "203.0.113.7")
        .open()
        .await
        .err()
        .expect("still limited");
    assert_eq!(r.status, 429);
    a.close().await;
    eventually("slot freed", Duration::from_secs(3), || async {
        match Connect::new(format!("{}?user=c", node.url())).open().await {
            Ok(c) => {
                c.close().await;
                true
            }
            Err(_) => false,
        }
    })
    .await;

    // Behind a trusted proxy, each forwarded client has its own budget.
    let lb = Node::start(&[
        "--max-conns-per-ip",
        "1",
        "--trusted-proxies",
        "127.0.0.1/32",
    ]);
    let mut held = Vec::new();
    for (i, ip) in ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
        .iter()
        .enumerate()
    {
        held.push(
            Connect::new(format!("{}?user=x{i}", lb.url()))
                .header("X-Forwarded-For", *ip)
                .open()
                .await
                .expect("own budget"),
        );
    }
    let r = Connect::new(format!("{}?user=y", lb.url()))
        .header("X-Forwarded-For", "203.0.113.1")
        .open()
        .await
        .err()
        .expect("same client again");
    assert_eq!(r.status, 429);
}

#[tokio::test]
async fn per_user_and_node_capacity_limits() {
    let node = Node::start(&["--max-conns-per-user", "2", "--max-connections", "3"]);
    let a1 = guest(&node, "alice").await;
    let resume = a1.resume.clone().unwrap();
    let _a2 = Connect::new(format!("{}?user=alice&resume={resume}", node.url()))
        .open()
        .await
        .unwrap();
    let r = Connect::new(format!("{}?user=alice&resume={resume}", node.url()))
        .open()
        .await
        .err()
        .unwrap();
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (429, Some("too_many_connections"))
    );
    let _b = guest(&node, "bob").await;
    let r = Connect::new(format!("{}?user=carol", node.url()))
        .open()
        .await
        .err()
        .unwrap();
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (503, Some("over_capacity"))
    );
}

#[tokio::test]
async fn slowloris_is_dropped_but_listeners_stay() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = Node::start(&["--handshake-timeout-ms", "300", "--heartbeat-ms", "200"]);
    let mut s = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .expect("dropped in time")
        .unwrap_or(0);
    let _ = n; // a 408 response or a plain close, either way the socket is gone
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut rest))
        .await
        .expect("closed");
    assert!(started.elapsed() < Duration::from_secs(2));
    // A client that only listens (and so only answers pings) stays connected.
    let mut listener = guest(&node, "quiet").await;
    let mut talker = guest(&node, "talker").await;
    listener.join("q").await;
    talker.join("q").await;
    listener.recv_type("user_joined").await;
    // Five heartbeats of silence: both only read (and so answer pings).
    tokio::join!(listener.expect_silence(1000), talker.expect_silence(1000));
    talker.say("q", "still there?").await;
    let m = js(&listener.recv_type("message").await);
    assert_eq!(m["text"], "still there?");
}

fn self_signed(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    (cert_path, key_path, cert.cert.der().to_vec())
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    trusted_der: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(trusted_der.to_vec()))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.expect("tls handshake")
}

#[tokio::test]
async fn wss_with_a_self_signed_certificate_and_reload_on_sighup() {
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = self_signed(dir.path(), "one");
    let node = Node::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    // https
    let mut tls = tls_connect(node.addr, &der).await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tls.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // wss
    let tls = tls_connect(node.addr, &der).await;
    let (mut ws, _) = tokio_tungstenite::client_async(
        format!("wss://localhost:{}/ws?user=alice", node.addr.port()),
        tls,
    )
    .await
    .unwrap();
    let first = ws.next().await.unwrap().unwrap();
    assert!(first.to_text().unwrap().contains(r#""type":"welcome""#));
    // Plain HTTP on a TLS port does not work.
    let (s, _) = {
        let mut s = tokio::net::TcpStream::connect(node.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
        (
            String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"),
            (),
        )
    };
    assert!(!s);
    // Rotate the certificate files and send SIGHUP: new handshakes use the new one.
    let (cert2, key2, der2) = self_signed(dir.path(), "two");
    std::fs::copy(&cert2, &cert).unwrap();
    std::fs::copy(&key2, &key).unwrap();
    node.signal("HUP");
    eventually("new certificate served", Duration::from_secs(5), || {
        let der2 = der2.clone();
        let addr = node.addr;
        async move {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(rustls_pki_types::CertificateDer::from(der2))
                .unwrap();
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            connector
                .connect(
                    rustls_pki_types::ServerName::try_from("localhost").unwrap(),
                    tcp,
                )
                .await
                .is_ok()
        }
    })
    .await;
    // The already open socket survived the reload.
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        r#"{"type":"ping","ref":1}"#.into(),
    ))
    .await
    .unwrap();
    let pong = ws.next().await.unwrap().unwrap();
    assert!(pong.to_text().unwrap().contains("pong"));
}
