//! Protocol v1 on one node (embedded mode), over real sockets against a real
//! `relay serve` process: every command and event, errors, close codes,
//! presence per user, recovery, encodings, limits, junk and drain. The
//! behaviours every topology shares (join, history, presence, DMs, typing,
//! recovery, names, client_id, validation) are in `tests/node_contract.rs`.

use std::time::Duration;

use relay::protocol::{Encoding, Ref, ServerFrame};
use serde_json::json;
use testkit::*;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn welcome_describes_the_session() {
    let node = Node::start(&["--node-id", "n1", "--heartbeat-ms", "1500"]);
    let mut c = Connect::new(format!("{}?user=alice", node.url()))
        .open()
        .await
        .unwrap();
    assert_eq!(c.user, "alice");
    assert!(c.resume.as_deref().is_some_and(|r| !r.is_empty()));
    assert!(c.session.starts_with("n1/"));
    // The full frame, as JSON.
    let mut raw = Connect::new(format!("{}?user=bob", node.url()))
        .open()
        .await
        .unwrap();
    raw.request(cmd::ping()).await;
    let _ = c.request(cmd::ping()).await;
    drop(raw);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}?user=carol", node.url()))
        .await
        .unwrap();
    use futures_util::StreamExt;
    let Some(Ok(Message::Text(t))) = ws.next().await else {
        panic!()
    };
    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
    assert_eq!(v["type"], "welcome");
    assert_eq!(v["user"], "carol");
    assert_eq!(v["node"], "n1");
    assert_eq!(v["protocol"], 1);
    assert_eq!(v["heartbeat_ms"], 1500);
    assert!(v["session"].is_string() && v["resume"].is_string());
}

#[tokio::test]
async fn leave_and_disconnect_notify_with_reasons() {
    let node = Node::start(&[]);
    let mut a = guest(&node, "alice").await;
    let mut b = guest(&node, "bob").await;
    let mut c = guest(&node, "carol").await;
    for x in [&mut a, &mut b, &mut c] {
        x.join("r1").await;
    }
    let left = js(&b.request(cmd::leave("r1")).await);
    assert_eq!(left["type"], "left");
    assert_eq!(left["room"], "r1");
    for x in [&mut a, &mut c] {
        let ul = js(&x
            .recv_where(
                "bob left",
                |f| matches!(f, ServerFrame::UserLeft { user, .. } if user == "bob"),
            )
            .await);
        assert_eq!(ul["reason"], "leave");
    }
    // After leaving, bob is no member any more.
    let e = js(&b.request(cmd::send("r1", "x")).await);
    assert_eq!(e["code"], "not_member");
    c.close().await;
    let ul = js(&a
        .recv_where(
            "carol left",
            |f| matches!(f, ServerFrame::UserLeft { user, .. } if user == "carol"),
        )
        .await);
    assert_eq!(ul["reason"], "disconnect");
    let p = js(&a.request(cmd::who("r1")).await);
    assert_eq!(p["type"], "presence");
    assert_eq!(p["users"], json!(["alice"]));
}

#[tokio::test]
async fn origin_allow_list() {
    let node = Node::start(&[
        "--allowed-origins",
        "https://chat.example.com,http://localhost:3000",
    ]);
    let url = format!("{}?user=o1", node.url());
    let r = Connect::new(&url)
        .header("Origin", "https://evil.example.com")
        .open()
        .await
        .err()
        .expect("refused");
    assert_eq!(r.status, 403);
    assert_eq!(r.body["error"], "forbidden_origin");
    let c = Connect::new(&url)
        .header("Origin", "https://chat.example.com")
        .open()
        .await
        .expect("allowed");
    c.close().await;
    // No Origin header: a non-browser client.
    let c = Connect::new(format!("{}?user=o2", node.url()))
        .open()
        .await
        .expect("allowed");
    c.close().await;
}

#[tokio::test]
async fn msgpack_and_json_clients_share_a_room() {
    let node = Node::start(&[]);
    let mut j = guest_enc(&node, "jay", Encoding::Json).await;
    let mut m = Connect::new(format!("{}?user=max", node.url()))
        .encoding(Encoding::MsgPack)
        .paused()
        .open()
        .await
        .unwrap();
    m.join("mix").await;
    j.join("mix").await;
    m.recv_type("user_joined").await;
    j.say("mix", "from json").await;
    let f = js(&m.recv_type("message").await);
    assert_eq!(f["text"], "from json");
    let ack = m.request(cmd::send("mix", "from msgpack")).await;
    assert!(matches!(ack, ServerFrame::Ack { id: 2, .. }));
    assert_eq!(js(&j.recv_type("message").await)["text"], "from msgpack");
    // The server really speaks binary MessagePack frames to `max`.
    m.send(Outgoing::from(cmd::ping()).with_ref(Ref::Str("p".into())))
        .await;
    let raw = match m.recv_raw().await {
        Message::Binary(b) => b,
        other => panic!("not a binary frame to a msgpack client: {other:?}"),
    };
    let v: rmpv::Value = rmpv::decode::read_value(&mut &raw[..]).unwrap();
    assert!(v.is_map());
}

#[tokio::test]
async fn unknown_subprotocol_is_refused() {
    let node = Node::start(&[]);
    let r = Connect::new(format!("{}?user=x", node.url()))
        .header("Sec-WebSocket-Protocol", "chat.v9")
        .open()
        .await
        .err()
        .expect("refused");
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"], "invalid");
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_the_connection_stays_usable() {
    let node = Node::start(&["--max-text-chars", "10"]);
    let mut a = guest(&node, "alice").await;
    a.join("e").await;
    a.send_raw(Message::Text("this is not json".into())).await;
    let e = js(&a.recv_type("error").await);
    assert_eq!(e["code"], "bad_frame");
    assert!(e["message"].as_str().unwrap().len() > 5);
    a.send_raw(Message::Text("[1,2,3]".into())).await;
    assert_eq!(js(&a.recv_type("error").await)["code"], "bad_frame");
    let e = js(&a.request(json!({"type":"fly","room":"e"})).await);
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_i64()),
        (Some("bad_frame"), Some(2))
    );
    a.send_raw(Message::Binary(vec![0xc1, 0x00, 0xff].into()))
        .await;
    assert_eq!(js(&a.recv_type("error").await)["code"], "bad_frame");
    let e = js(&a.request(json!({"type":"send","room":"e"})).await);
    assert_eq!(e["code"], "invalid");
    let e = js(&a.request(json!({"type":"join","room":"bad room"})).await);
    assert_eq!(e["code"], "invalid");
    let e = js(&a
        .request(json!({"type":"send","room":"e","text":"   "}))
        .await);
    assert_eq!(e["code"], "invalid");
    let e = js(&a.request(cmd::send("e", "01234567890")).await);
    assert_eq!(e["code"], "too_large");
    let e = js(&a.request(cmd::send("other", "hi")).await);
    assert_eq!(e["code"], "not_member");
    // Nothing of it had an effect, and the connection still works.
    let h = js(&a.request(cmd::history("e")).await);
    assert_eq!(h["messages"], json!([]));
    assert_eq!(a.say("e", "0123456789").await, 1);
    assert_eq!(frame_type(&a.request(cmd::ping()).await), "pong");
}

#[tokio::test]
async fn rate_limit_then_policy_close() {
    let node = Node::start(&["--rate", "5"]);
    let mut a = guest(&node, "alice").await;
    a.join("r").await; // one token used
    for _ in 0..9 {
        a.send(cmd::ping()).await;
    }
    for _ in 0..9 {
        a.recv_type("pong").await;
    }
    a.send(Outgoing::from(cmd::send("r", "over the limit")).with_ref(Ref::Str("x1".into())))
        .await;
    let e = js(&a.recv_type("error").await);
    assert_eq!(e["code"], "rate_limited");
    assert_eq!(e["ref"], "x1", "the refused command's ref is echoed");
    assert!(e["retry_ms"]
        .as_u64()
        .is_some_and(|ms| ms > 0 && ms <= 1000));
    // The refused send had no effect.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let h = js(&a.request(cmd::history("r")).await);
    assert_eq!(h["messages"], json!([]));
    // Sustained abuse: closed with 1008.
    for _ in 0..200 {
        a.send_raw(Message::Text(r#"{"type":"ping"}"#.into())).await;
    }
    assert_eq!(a.recv_close().await, Some(1008));
}

#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let node = Node::start(&["--max-frame-bytes", "1024"]);
    let mut a = guest(&node, "alice").await;
    let text = "x".repeat(2000);
    a.send_raw(Message::Text(
        format!(r#"{{"type":"ping","pad":"{text}"}}"#).into(),
    ))
    .await;
    assert_eq!(a.recv_close().await, Some(1009));
    // The node is fine.
    let mut b = guest(&node, "bob").await;
    assert_eq!(frame_type(&b.request(cmd::ping()).await), "pong");
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    use tokio_tungstenite::tungstenite::protocol::frame::{
        coding::{Data, OpCode},
        Frame,
    };
    let node = Node::start(&[]);
    let mut a = guest(&node, "alice").await;
    let frame = Frame::message(vec![0xff, 0xfe, 0x80], OpCode::Data(Data::Text), true);
    a.send_raw(Message::Frame(frame)).await;
    assert_eq!(a.recv_close().await, Some(1007));
}

#[tokio::test]
async fn silent_connection_is_closed_after_two_heartbeats() {
    let node = Node::start(&["--heartbeat-ms", "200"]);
    let mut a = guest(&node, "alice").await;
    let mut b = Connect::new(format!("{}?user=bob", node.url()))
        .paused()
        .open()
        .await
        .unwrap();
    a.join("hb").await;
    b.join("hb").await;
    a.recv_type("user_joined").await;
    // bob stops reading (so it answers no pings); alice keeps reading.
    let started = std::time::Instant::now();
    let ul = js(&a
        .recv_where("bob timed out", |f| {
            matches!(f, ServerFrame::UserLeft { .. })
        })
        .await);
    assert_eq!(ul["user"], "bob");
    assert_eq!(ul["reason"], "disconnect");
    assert!(started.elapsed() < Duration::from_secs(3));
    // alice, who reads (and so pongs), is still connected.
    assert_eq!(frame_type(&a.request(cmd::ping()).await), "pong");
    drop(b);
}

#[tokio::test]
async fn slow_consumer_is_cut_off_while_fast_ones_keep_receiving() {
    let node = Node::start(&["--max-queue", "256", "--rate", "100000"]);
    let mut slow = Connect::new(format!("{}?user=slow", node.url()))
        .paused()
        .open()
        .await
        .unwrap();
    let mut fast = guest(&node, "fast").await;
    let mut publisher = guest(&node, "pub").await;
    slow.join("big").await;
    fast.join("big").await;
    publisher.join("big").await;
    let text = "y".repeat(3900);
    // `slow` never reads. Publish until the socket buffers and its queue overflow,
    // while `fast` reads everything.
    let n = 3000;
    let fast_reader = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            if let ServerFrame::Message { .. } = fast.recv().await {
                got += 1;
            }
        }
        (fast, got)
    });
    for batch in 0..n / 50 {
        for i in 0..50 {
            publisher
                .send(cmd::send("big", &format!("{}{text}", batch * 50 + i)))
                .await;
        }
        for _ in 0..50 {
            publisher.recv_type("ack").await;
        }
    }
    let (mut fast, got) = tokio::time::timeout(Duration::from_secs(30), fast_reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, n);
    assert_eq!(slow.recv_close().await, Some(4000));
    let ul = js(&fast
        .recv_where(
            "slow left",
            |f| matches!(f, ServerFrame::UserLeft { user, .. } if user == "slow"),
        )
        .await);
    assert_eq!(ul["reason"], "disconnect");
    eventually(
        "slow-consumer close counted",
        Duration::from_secs(10),
        || async {
            let (_, metrics) = get(node.addr, "/metrics").await;
            metrics
                .contains(r#"relay_connections_closed_total{code="4000",reason="slow_consumer"} 1"#)
        },
    )
    .await;
}

#[tokio::test]
async fn junk_connections_do_not_hurt_the_node() {
    use tokio::io::AsyncWriteExt;
    let node = Node::start(&[]);
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let addr = node.addr;
        let url = node.url();
        tasks.push(tokio::spawn(async move {
            match i % 4 {
                // Half-open: a partial HTTP request, then silence.
                0 => {
                    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                    let _ = s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                // Garbage bytes.
                1 => {
                    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                    let _ = s
                        .write_all(&[0x16, 0x03, 0x01, 0xff, 0x00, 0x13, 0x37])
                        .await;
                    let _ = s.write_all(b"\r\n\r\n\x00\x01garbage").await;
                }
                // Instant disconnect.
                2 => {
                    let _ = tokio::net::TcpStream::connect(addr).await;
                }
                // Upgrade then drop without a close frame, or garbage frames.
                _ => {
                    if let Ok((mut ws, _)) =
                        tokio_tungstenite::connect_async(format!("{url}?user=junk{i}")).await
                    {
                        use futures_util::SinkExt;
                        let _ = ws.send(Message::Text("{{{{".into())).await;
                        let _ = ws.send(Message::Binary(vec![0xde, 0xad].into())).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut a = guest(&node, "alice").await;
    let mut b = guest(&node, "bob").await;
    a.join("ok").await;
    b.join("ok").await;
    a.say("ok", "still alive").await;
    assert_eq!(js(&b.recv_type("message").await)["text"], "still alive");
    assert_eq!(get(node.addr, "/healthz").await.0, 200);
    // Every junk guest was released.
    eventually("junk sessions closed", Duration::from_secs(5), || async {
        let (_, m) = get(node.addr, "/metrics").await;
        m.lines()
            .any(|l| l.starts_with("relay_users ") && l.ends_with(" 2"))
    })
    .await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let node = Node::start(&[]);
    let (s, _) = get(node.addr, "/healthz").await;
    assert_eq!(s, 200);
    let (s, _) = get(node.addr, "/readyz").await;
    assert_eq!(s, 200);
    let mut a = guest(&node, "alice").await;
    let mut b = guest(&node, "bob").await;
    a.join("m").await;
    b.join("m").await;
    a.say("m", "hi").await;
    b.recv_type("message").await;
    let (s, m) = get(node.addr, "/metrics").await;
    assert_eq!(s, 200);
    for needle in [
        r#"relay_connections{encoding="json"} 2"#,
        "relay_connections_opened_total 2",
        r#"relay_commands_total{type="send",result="ok"} 1"#,
        r#"relay_commands_total{type="join",result="ok"} 2"#,
        "relay_messages_published_total 1",
        "relay_messages_delivered_total 1",
        "relay_build_info{",
    ] {
        assert!(m.contains(needle), "missing {needle} in\n{m}");
    }
    let (s, body) = get(node.addr, "/").await;
    assert_eq!(s, 200);
    assert!(body.contains("<html") || body.contains("<!doctype") || body.contains("<!DOCTYPE"));
    let (s, body) = get(node.addr, "/api/config").await;
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["auth"], "guest");
    let (s, _) = get(node.addr, "/ws").await;
    assert!(s >= 400, "plain GET /ws is not an upgrade");
}

#[tokio::test]
async fn a_plain_get_of_ws_tells_why_a_handshake_would_fail() {
    // What a browser page does to learn why its WebSocket was refused (the
    // WebSocket API hides the HTTP status): the verdicts come first, the
    // "not an upgrade" answer last, and nothing is claimed.
    let node = Node::start(&["--allowed-origins", "http://good.example"]);
    let (s, body) = get(node.addr, "/ws?user=b@d").await;
    assert_eq!(s, 400);
    assert!(body.contains("`user` must match"), "{body}");
    let (s, body) = get(node.addr, "/ws?user=carol").await;
    assert_eq!(s, 400, "{body}");
    assert!(!body.contains("`user` must match"), "{body}");
    let (status, raw) = http(
        node.addr,
        "GET",
        "/ws?user=carol",
        &[("Origin", "http://evil.example")],
        "",
    )
    .await;
    assert_eq!(status, 403);
    assert!(raw.contains("forbidden_origin"), "{raw}");
    // The GETs claimed nothing: carol can connect.
    let mut carol = guest(&node, "carol").await;
    carol.join("lobby").await;
}

#[tokio::test]
async fn drain_closes_with_1001_and_exits_zero() {
    let mut node = Node::start(&["--drain-secs", "1"]);
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = guest(&node, &format!("u{i}")).await;
        c.join("d").await;
        clients.push(c);
    }
    node.signal("TERM");
    eventually("readyz 503", Duration::from_secs(2), || async {
        get(node.addr, "/readyz").await.0 == 503
    })
    .await;
    let r = Connect::new(format!("{}?user=late", node.url()))
        .open()
        .await
        .err()
        .expect("refused while draining");
    assert_eq!(r.status, 503);
    let started = std::time::Instant::now();
    for c in clients.iter_mut() {
        assert_eq!(c.recv_close().await, Some(1001));
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    let status = node.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn pings_are_answered_and_sent_on_the_raw_wire() {
    // The writer frames everything itself (no WebSocket library on the
    // write path): a client ping gets a pong with the same payload, the
    // server pings every heartbeat, and a reply larger than 64 KiB (the
    // 8-byte length form) arrives whole.
    use futures_util::{SinkExt, StreamExt};
    let node = Node::start(&["--heartbeat-ms", "300", "--max-text-chars", "4000"]);
    let (mut ws, response) =
        tokio_tungstenite::connect_async(format!("{}?user=pinger", node.url()))
            .await
            .expect("handshake");
    assert_eq!(response.status(), 101);
    let next = |m: Option<Result<Message, _>>| m.expect("open").expect("frame");
    let welcome = next(ws.next().await);
    assert!(
        welcome.to_text().unwrap().contains("\"welcome\""),
        "{welcome:?}"
    );
    ws.send(Message::Ping("are you there".into()))
        .await
        .unwrap();
    let mut pong = None;
    let mut server_pings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while pong.is_none() || server_pings == 0 {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(m) => match next(m) {
                Message::Pong(p) => pong = Some(p),
                Message::Ping(_) => server_pings += 1,
                other => panic!("unexpected {other:?}"),
            },
            Err(_) => panic!("pong {pong:?}, {server_pings} server pings"),
        }
    }
    assert_eq!(&pong.unwrap()[..], b"are you there");

    let text = "x".repeat(4000);
    let join = Outgoing::from(cmd::join("big"));
    ws.send(join.message(Encoding::Json)).await.unwrap();
    for i in 0..20 {
        let send = Outgoing::from(cmd::send("big", &text)).with_ref(Ref::Int(i));
        ws.send(send.message(Encoding::Json)).await.unwrap();
    }
    let history = Outgoing::from(cmd::history("big")).with_ref(Ref::Str("h".into()));
    ws.send(history.message(Encoding::Json)).await.unwrap();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
        let Message::Text(t) = next(m.expect("history in time")) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        if v["type"] == "history" {
            assert!(t.len() > 65_535, "{} bytes", t.len());
            assert_eq!(v["messages"].as_array().unwrap().len(), 20);
            break;
        }
    }
}

#[tokio::test]
async fn a_node_runs_on_the_worker_threads_it_is_given() {
    // `--worker-threads 1`: a node sharing a machine with other nodes runs
    // on its share of the cores (BENCHMARKS.md); everything still works.
    let node = Node::start(&["--worker-threads", "1"]);
    let mut a = guest(&node, "alice").await;
    let mut b = guest(&node, "bob").await;
    a.join("one").await;
    b.join("one").await;
    let id = a.say("one", "hi").await;
    let m = js(&b.recv_type("message").await);
    assert_eq!(
        (m["id"].as_u64(), m["text"].as_str()),
        (Some(id), Some("hi"))
    );
    let (_, metrics) = get(node.addr, "/metrics").await;
    assert!(
        metrics.contains("relay_runtime_worker_threads 1\n"),
        "{metrics}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["serve", "--worker-threads", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--worker-threads"));
}

#[tokio::test]
async fn a_frame_sent_with_the_upgrade_request_is_not_lost() {
    // A client may send its first frame right behind the upgrade request,
    // before the 101 arrives: those bytes are read by the HTTP layer and must
    // reach the WebSocket reader (the upgraded socket is ours, not hyper's).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = Node::start(&[]);
    let mut s = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let mut bytes = format!(
        "GET /ws?user=eager HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        node.addr
    )
    .into_bytes();
    // A masked text frame: {"type":"join","room":"early","ref":1}.
    let payload = br#"{"type":"join","room":"early","ref":1}"#;
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    bytes.extend_from_slice(&[0x81, 0x80 | payload.len() as u8]);
    bytes.extend_from_slice(&mask);
    bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&bytes).await.unwrap();

    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let text = loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("answer in time")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if text.contains("\"joined\"") {
            break text;
        }
    };
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    // RFC 6455's sample key and its accept value.
    assert!(
        text.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{text}"
    );
    assert!(text.contains("\"welcome\""), "{text}");
    assert!(text.contains("\"room\":\"early\""), "{text}");
}
