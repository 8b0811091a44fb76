//! Observability of real `relay serve` processes: OpenTelemetry traces that
//! follow a message across two nodes and the backplane (received by a small
//! OTLP/HTTP JSON collector running inside the test), the exact movement of
//! the Prometheus counters over a scripted session, and the disconnect log.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use relay::protocol::Encoding;
use serde_json::Value;
use testkit::redis::RedisServer;
use testkit::*;
use tokio_tungstenite::tungstenite::Message;

/// One span as received by the test collector.
#[derive(Debug, Clone)]
struct Received {
    /// `service.instance.id` of the exporting process.
    instance: String,
    /// Every resource attribute, as strings.
    resource: BTreeMap<String, String>,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    /// Span attributes, as strings.
    attributes: BTreeMap<String, String>,
}

/// A minimal OTLP/HTTP receiver: `POST /v1/traces` with `http/json` bodies.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Received>>>,
    bodies: Arc<Mutex<Vec<String>>>,
    stop: tokio::sync::oneshot::Sender<()>,
}

#[derive(Clone)]
struct Sink {
    spans: Arc<Mutex<Vec<Received>>>,
    bodies: Arc<Mutex<Vec<String>>>,
}

/// An OTLP `AnyValue` as a string (`stringValue`, `intValue`, ...).
fn any_value(v: &Value) -> String {
    let Some(obj) = v.as_object() else {
        return v.to_string();
    };
    match obj.iter().next() {
        Some((_, Value::String(s))) => s.clone(),
        Some((_, other)) => other.to_string(),
        None => String::new(),
    }
}

fn attributes(v: &Value) -> BTreeMap<String, String> {
    v.as_array()
        .map(|list| {
            list.iter()
                .filter_map(|kv| Some((kv["key"].as_str()?.to_owned(), any_value(&kv["value"]))))
                .collect()
        })
        .unwrap_or_default()
}

async fn receive_traces(State(sink): State<Sink>, headers: HeaderMap, body: String) -> StatusCode {
    let json_body = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return StatusCode::UNSUPPORTED_MEDIA_TYPE;
    }
    let Ok(v) = serde_json::from_str::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    sink.bodies.lock().unwrap().push(body);
    let mut out = Vec::new();
    for rs in v["resourceSpans"].as_array().into_iter().flatten() {
        let resource = attributes(&rs["resource"]["attributes"]);
        let instance = resource
            .get("service.instance.id")
            .cloned()
            .unwrap_or_default();
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for span in ss["spans"].as_array().into_iter().flatten() {
                out.push(Received {
                    instance: instance.clone(),
                    resource: resource.clone(),
                    name: span["name"].as_str().unwrap_or("").to_owned(),
                    trace_id: span["traceId"].as_str().unwrap_or("").to_lowercase(),
                    span_id: span["spanId"].as_str().unwrap_or("").to_lowercase(),
                    parent_span_id: span["parentSpanId"].as_str().unwrap_or("").to_lowercase(),
                    attributes: attributes(&span["attributes"]),
                });
            }
        }
    }
    sink.spans.lock().unwrap().extend(out);
    StatusCode::OK
}

impl Collector {
    async fn start() -> Collector {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/v1/traces", post(receive_traces))
            .with_state(Sink {
                spans: spans.clone(),
                bodies: bodies.clone(),
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Collector {
            addr,
            spans,
            bodies,
            stop,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    fn dump(&self) -> String {
        let spans = self.spans();
        let mut out = String::new();
        for s in &spans {
            out.push_str(&format!(
                "{} {} trace={} span={} parent={} {:?}\n",
                s.instance, s.name, s.trace_id, s.span_id, s.parent_span_id, s.attributes
            ));
        }
        if spans.is_empty() {
            out.push_str(&format!("raw bodies: {:?}", self.bodies.lock().unwrap()));
        }
        out
    }
}

/// Env of a node exporting to `collector` as OTLP/HTTP JSON, quickly.
fn otel_env(collector: &Collector) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
    ]
}

fn traced_node(redis: &RedisServer, id: &str, collector: &Collector) -> Node {
    let env = otel_env(collector);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Node::in_cluster(&redis.url(), id, &[], &env)
}

/// One trace shows the `publish` on node A and the `deliver` on node B: the
/// W3C trace context travels with the message through Redis.
#[tokio::test]
async fn a_message_is_one_trace_across_nodes() {
    let collector = Collector::start().await;
    let redis = RedisServer::new();
    let a = traced_node(&redis, "trace-a", &collector);
    let b = traced_node(&redis, "trace-b", &collector);
    let mut alice = guest(&a, "alice").await;
    let mut bob = guest_enc(&b, "bob", Encoding::MsgPack).await;
    alice.join("traced").await;
    bob.join("traced").await;
    alice.recv_type("user_joined").await;
    let id = alice.say("traced", "follow me").await;
    let m = js(&bob.recv_type("message").await);
    assert_eq!(
        (m["id"].as_u64(), m["text"].as_str()),
        (Some(id), Some("follow me"))
    );

    // Wait for both sides of the message to be exported.
    let find = |spans: &[Received]| {
        let publish = spans.iter().find(|s| {
            s.instance == "trace-a"
                && s.name == "publish"
                && s.attributes.get("room").map(String::as_str) == Some("traced")
        })?;
        let deliver = spans.iter().find(|s| {
            s.instance == "trace-b"
                && s.name == "deliver"
                && s.trace_id == publish.trace_id
                && s.attributes.get("id") == Some(&id.to_string())
        })?;
        Some((publish.clone(), deliver.clone()))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let (publish, deliver) = loop {
        if let Some(found) = find(&collector.spans()) {
            break found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no publish/deliver pair with one trace id; received:\n{}\nlogs A:\n{}",
            collector.dump(),
            a.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let spans = collector.spans();
    assert_eq!(publish.trace_id.len(), 32, "{publish:?}");
    assert_ne!(publish.trace_id, "0".repeat(32));
    assert_eq!(
        deliver.parent_span_id, publish.span_id,
        "the deliver span's parent is the remote publish span"
    );
    assert_eq!(
        deliver.attributes.get("recipients").map(String::as_str),
        Some("1")
    );
    // Different processes, told apart by their resource.
    for (span, node) in [(&publish, "trace-a"), (&deliver, "trace-b")] {
        assert_eq!(
            span.resource.get("service.name").map(String::as_str),
            Some("relay")
        );
        assert_eq!(
            span.resource.get("service.instance.id").map(String::as_str),
            Some(node)
        );
        assert_eq!(
            span.resource.get("relay.node").map(String::as_str),
            Some(node)
        );
    }
    // The publish belongs to alice's `send` command (the trace's root) and
    // contains the Redis round trip of the publish script.
    let command = spans
        .iter()
        .find(|s| s.span_id == publish.parent_span_id)
        .unwrap_or_else(|| panic!("no parent of publish:\n{}", collector.dump()));
    assert_eq!(command.name, "command");
    assert_eq!(command.instance, "trace-a");
    assert_eq!(command.trace_id, publish.trace_id);
    assert_eq!(command.parent_span_id, "", "a command starts its own trace");
    assert_eq!(
        command.attributes.get("type").map(String::as_str),
        Some("send")
    );
    assert_eq!(
        command.attributes.get("room").map(String::as_str),
        Some("traced")
    );
    assert_eq!(
        command.attributes.get("result").map(String::as_str),
        Some("ok")
    );
    assert!(
        spans.iter().any(|s| s.name == "redis"
            && s.parent_span_id == publish.span_id
            && s.attributes.get("op").map(String::as_str) == Some("publish")),
        "redis publish span under publish:\n{}",
        collector.dump()
    );
    // The handshakes were traced on both nodes, with who and how.
    for (node, user, encoding) in [("trace-a", "alice", "json"), ("trace-b", "bob", "msgpack")] {
        assert!(
            spans.iter().any(|s| s.instance == node
                && s.name == "handshake"
                && s.attributes.get("user").map(String::as_str) == Some(user)
                && s.attributes.get("encoding").map(String::as_str) == Some(encoding)
                && s.attributes.get("outcome").map(String::as_str) == Some("accepted")
                && s.attributes
                    .get("remote")
                    .is_some_and(|r| r.starts_with("127.0.0.1:"))),
            "handshake of {user} on {node}:\n{}",
            collector.dump()
        );
    }
    // Background work (heartbeats, probes) starts no traces of its own.
    assert!(
        !spans
            .iter()
            .any(|s| s.name == "redis" && s.parent_span_id.is_empty()),
        "root redis spans:\n{}",
        collector.dump()
    );
    let _ = collector.stop.send(());
}

/// Parses the Prometheus text format into `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

async fn scrape(node: &Node) -> BTreeMap<String, f64> {
    let (status, text) = get(node.addr, "/metrics").await;
    assert_eq!(status, 200);
    samples(&text)
}

/// Every counter of a scripted session moves by exactly what happened.
#[tokio::test]
async fn metrics_count_exactly_what_happened() {
    // Rate 2/s (burst 4) keeps the rate-limit arithmetic exact: a burst
    // takes milliseconds, far from the 500 ms a token takes to refill. Each
    // client below stays within its burst of 4 commands.
    let node = Node::start(&["--node-id", "m1", "--rate", "2"]);
    let before = scrape(&node).await;
    assert_eq!(before.get("relay_connections_opened_total"), Some(&0.0));
    assert_eq!(before.get("relay_cluster_nodes"), Some(&1.0));

    let mut alice = guest(&node, "alice").await;
    let mut bob = guest_enc(&node, "bob", Encoding::MsgPack).await;
    let mut carol = guest(&node, "carol").await;
    alice.join("lobby").await;
    bob.join("lobby").await;
    alice.recv_type("user_joined").await;
    alice.say("lobby", "one").await;
    alice.say("lobby", "two").await;
    bob.recv_type("message").await;
    bob.recv_type("message").await;
    let ack = bob.request(cmd::dm("alice", "psst")).await;
    assert_eq!(frame_type(&ack), "ack");
    alice.recv_type("direct").await;
    // Errors: recipient offline, not a member, undecodable frame.
    let e = js(&bob.request(cmd::dm("zed", "x")).await);
    assert_eq!(e["code"], "user_offline");
    let e = js(&carol.request(cmd::send("elsewhere", "x")).await);
    assert_eq!(e["code"], "not_member");
    carol.send_raw(Message::Text("{{not json".into())).await;
    let e = js(&carol.recv_type("error").await);
    assert_eq!(e["code"], "bad_frame");
    // Refused handshakes: a bad name, a taken name.
    let r = Connect::new(format!("{}?user=-bad-", node.url()))
        .open()
        .await
        .err()
        .expect("refused");
    assert_eq!(r.status, 400);
    let r = Connect::new(format!("{}?user=alice", node.url()))
        .open()
        .await
        .err()
        .expect("refused");
    assert_eq!(r.status, 409);
    // A normal close.
    carol.close().await;
    // Abuse: a burst of pings. 4 pass (the burst), the next 10 are refused
    // with rate_limited, the 11th refusal closes the connection with 1008.
    let mut mallory = Connect::new(format!("{}?user=mallory", node.url()))
        .paused()
        .open()
        .await
        .unwrap();
    for _ in 0..15 {
        mallory
            .send_raw(Message::Text(r#"{"type":"ping"}"#.into()))
            .await;
    }
    assert_eq!(mallory.recv_close().await, Some(1008));
    // Gone for good (no closing handshake for the server to wait for).
    drop(mallory);

    let settled = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let m = scrape(&node).await;
            if m.get(r#"relay_connections_closed_total{code="1008",reason="policy"}"#) == Some(&1.0)
                && m.get(r#"relay_connections_closed_total{code="1000",reason="client_closed"}"#)
                    == Some(&1.0)
                && m.get("relay_users") == Some(&2.0)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await;
    let m = scrape(&node).await;
    assert!(settled.is_ok(), "closes not counted in time: {m:#?}");
    let expected: &[(&str, f64)] = &[
        ("relay_connections_opened_total", 4.0),
        (r#"relay_connections{encoding="json"}"#, 1.0),
        (r#"relay_connections{encoding="msgpack"}"#, 1.0),
        (
            r#"relay_connections_closed_total{code="1008",reason="policy"}"#,
            1.0,
        ),
        (
            r#"relay_connections_closed_total{code="1000",reason="client_closed"}"#,
            1.0,
        ),
        (r#"relay_commands_total{type="join",result="ok"}"#, 2.0),
        (r#"relay_commands_total{type="send",result="ok"}"#, 2.0),
        (
            r#"relay_commands_total{type="send",result="not_member"}"#,
            1.0,
        ),
        (r#"relay_commands_total{type="dm",result="ok"}"#, 1.0),
        (
            r#"relay_commands_total{type="dm",result="user_offline"}"#,
            1.0,
        ),
        (
            r#"relay_commands_total{type="unknown",result="bad_frame"}"#,
            1.0,
        ),
        (r#"relay_commands_total{type="ping",result="ok"}"#, 4.0),
        (
            r#"relay_commands_total{type="ping",result="rate_limited"}"#,
            10.0,
        ),
        ("relay_rate_limited_total", 11.0),
        ("relay_messages_published_total", 2.0),
        // Two room messages to bob, one direct message to alice.
        ("relay_messages_delivered_total", 3.0),
        ("relay_fanout_size_count", 2.0),
        ("relay_fanout_size_sum", 2.0),
        ("relay_delivery_latency_seconds_count", 2.0),
        (
            r#"relay_handshake_refusals_total{reason="invalid_user"}"#,
            1.0,
        ),
        (
            r#"relay_handshake_refusals_total{reason="name_taken"}"#,
            1.0,
        ),
        ("relay_queue_dropped_frames_total", 0.0),
        ("relay_rooms", 1.0),
        ("relay_presence_entries", 2.0),
        ("relay_users", 2.0),
        ("relay_cluster_nodes", 1.0),
        // user_joined × 2, message × 2, direct × 1.
        ("relay_backplane_events_total", 5.0),
    ];
    let mut wrong = Vec::new();
    for (name, value) in expected {
        if m.get(*name) != Some(value) {
            wrong.push(format!("{name}: expected {value}, got {:?}", m.get(*name)));
        }
    }
    assert!(
        wrong.is_empty(),
        "{}\n\nall samples: {m:#?}",
        wrong.join("\n")
    );
    // Nothing else was refused or closed.
    let refusals: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("relay_handshake_refusals_total"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(refusals, 2.0);
    let closed: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("relay_connections_closed_total"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(closed, 2.0);
    assert!(m.keys().any(|k| k.starts_with("relay_build_info{")));

    // Leaving gives the presence entry back.
    bob.request(cmd::leave("lobby")).await;
    let m = scrape(&node).await;
    assert_eq!(m.get("relay_presence_entries"), Some(&1.0));
    assert_eq!(m.get("relay_rooms"), Some(&1.0));
    alice.close().await;
    eventually("all gone", Duration::from_secs(5), || async {
        let m = scrape(&node).await;
        m.get("relay_presence_entries") == Some(&0.0) && m.get("relay_rooms") == Some(&0.0)
    })
    .await;

    // The abnormal disconnect is logged at info with its reason and code,
    // inside the connection's span (who, from where, how).
    let logs = node.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("session closed") && l.contains("policy"))
        .unwrap_or_else(|| panic!("no disconnect line:\n{logs}"));
    assert!(line.contains("INFO"), "{line}");
    assert!(line.contains("code=1008"), "{line}");
    assert!(line.contains(r#"user="mallory""#), "{line}");
    assert!(line.contains("remote=127.0.0.1:"), "{line}");
    assert!(line.contains(r#"encoding="json""#), "{line}");
    let normal = logs
        .lines()
        .find(|l| l.contains("session closed") && l.contains("client_closed"))
        .unwrap_or_else(|| panic!("no normal disconnect line:\n{logs}"));
    assert!(normal.contains("DEBUG"), "{normal}");
}

/// A slow consumer: its close is counted by code and reason, and the frames
/// its overflowing queue lost are counted too.
#[tokio::test]
async fn slow_consumer_drops_are_counted() {
    let max_queue = 16;
    let node = Node::start(&["--max-queue", &max_queue.to_string(), "--rate", "100000"]);
    let mut slow = Connect::new(format!("{}?user=slow", node.url()))
        .paused()
        .open()
        .await
        .unwrap();
    let mut publisher = guest(&node, "pub").await;
    slow.join("big").await;
    publisher.join("big").await;
    let text = "z".repeat(3900);
    // Publish until the socket buffers and the queue overflow (bounded).
    let mut sent = 0;
    let mut overflowed = false;
    // Batches smaller than the queue: the publisher's acks must not overflow
    // its own queue.
    while sent < 5000 && !overflowed {
        for _ in 0..8 {
            publisher.send(cmd::send("big", &text)).await;
        }
        for _ in 0..8 {
            publisher.recv_type("ack").await;
        }
        sent += 8;
        let m = scrape(&node).await;
        overflowed = m
            .get("relay_queue_dropped_frames_total")
            .is_some_and(|v| *v > 0.0);
    }
    assert!(overflowed, "no overflow after {sent} messages");
    assert_eq!(slow.recv_close().await, Some(4000));
    drop(slow);
    eventually(
        "slow consumer close counted",
        Duration::from_secs(10),
        || async {
            let m = scrape(&node).await;
            m.get(r#"relay_connections_closed_total{code="4000",reason="slow_consumer"}"#)
                == Some(&1.0)
        },
    )
    .await;
    let m = scrape(&node).await;
    let dropped = m
        .get("relay_queue_dropped_frames_total")
        .copied()
        .unwrap_or(0.0);
    assert!(
        dropped >= (max_queue + 1) as f64 && dropped <= sent as f64,
        "dropped {dropped} of {sent}"
    );
    let line = node
        .logs()
        .lines()
        .find(|l| l.contains("session closed") && l.contains("slow_consumer"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        line.contains("INFO") && line.contains("code=4000"),
        "{line}"
    );
    // The fast publisher still works.
    assert_eq!(frame_type(&publisher.request(cmd::ping()).await), "pong");
}
