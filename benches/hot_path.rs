//! `cargo bench`: the per-message costs of the hot path, in process (no
//! sockets): decoding a command, encoding an event once per encoding,
//! queueing a shared frame, the rate limiter, and a whole fan-out of one
//! message to 1,000 local members through the node and the in-memory
//! backplane. The socket side is measured by `loadtest` (BENCHMARKS.md).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use relay::backplane::memory::MemoryBackplane;
use relay::backplane::SharedBackplane;
use relay::metrics::Metrics;
use relay::node::{Node, SessionHandle};
use relay::outbound::{Batch, OutQueue, SharedFrame};
use relay::protocol::{decode_command, ChatMessage, Encoding, Limits, ServerFrame};
use relay::session::limit::TokenBucket;

const TEXT: &str = "Hello everyone! This is a chat message of a typical length.";

fn message() -> ServerFrame {
    ServerFrame::Message(ChatMessage {
        room: "lobby".into(),
        id: 123_456,
        from: "alice".into(),
        text: TEXT.into(),
        ts: 1_764_000_000_000,
    })
}

fn codec(c: &mut Criterion) {
    let limits = Limits::default();
    let cmd = serde_json::json!({"type": "send", "room": "lobby", "text": TEXT, "ref": 7});
    let json = cmd.to_string().into_bytes();
    let msgpack = rmp_serde::to_vec_named(&cmd).expect("msgpack");
    let mut g = c.benchmark_group("decode_command");
    g.throughput(Throughput::Elements(1));
    g.bench_function("json", |b| {
        b.iter(|| decode_command(black_box(&json), Encoding::Json, &limits).expect("valid"))
    });
    g.bench_function("msgpack", |b| {
        b.iter(|| decode_command(black_box(&msgpack), Encoding::MsgPack, &limits).expect("valid"))
    });
    g.finish();

    let mut g = c.benchmark_group("encode_once");
    g.throughput(Throughput::Elements(1));
    g.bench_function("both encodings", |b| {
        b.iter_batched(
            message,
            |frame| {
                let shared = SharedFrame::new(frame);
                (shared.get(Encoding::Json), shared.get(Encoding::MsgPack))
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn queue_and_limit(c: &mut Criterion) {
    let frame = SharedFrame::new(message()).get(Encoding::Json);
    let queue = OutQueue::new(1024);
    let mut batch = Batch::default();
    let mut g = c.benchmark_group("out_queue");
    g.throughput(Throughput::Elements(64));
    g.bench_function("push 64 shared frames, take", |b| {
        b.iter(|| {
            for _ in 0..64 {
                queue.push(frame.clone());
            }
            queue.take(&mut batch);
            black_box(batch.frames.len())
        })
    });
    g.finish();

    let mut bucket = TokenBucket::new(1_000_000_000);
    c.bench_function("token_bucket/take", |b| b.iter(|| black_box(bucket.take())));
}

/// One node on the in-memory backplane with `members` sessions in "lobby".
fn node_with_members(
    rt: &tokio::runtime::Runtime,
    members: usize,
) -> (Arc<Node>, Vec<Arc<SessionHandle>>) {
    rt.block_on(async {
        let backplane: SharedBackplane = Arc::new(MemoryBackplane::standalone("bench"));
        let node = Node::new(backplane, true, Arc::new(Metrics::new()));
        node.start();
        let mut sessions = Vec::with_capacity(members);
        for i in 0..members {
            let encoding = if i % 2 == 0 {
                Encoding::Json
            } else {
                Encoding::MsgPack
            };
            let s = node.open_session(&format!("u{i}"), encoding, 4096, 4 << 20);
            node.join(&s, "lobby", None, None, None)
                .await
                .expect("join");
            sessions.push(s);
        }
        (node, sessions)
    })
}

fn fanout(c: &mut Criterion) {
    const MEMBERS: usize = 1000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (node, sessions) = node_with_members(&rt, MEMBERS);
    let mut batch = Batch::default();
    for s in &sessions {
        s.queue.take(&mut batch); // the `joined` frames
    }
    let mut g = c.benchmark_group("fanout");
    g.throughput(Throughput::Elements(MEMBERS as u64));
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("publish to 1000 local members", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let delivered = node.metrics.messages_delivered.get();
                let started = Instant::now();
                rt.block_on(async {
                    node.publish_as("lobby", "bench", TEXT.into())
                        .await
                        .expect("publish");
                    // Dispatch runs on the node's task and counts the
                    // deliveries once every member's queue has the frame.
                    while node.metrics.messages_delivered.get() < delivered + MEMBERS as u64 {
                        tokio::task::yield_now().await;
                    }
                });
                spent += started.elapsed();
                for s in &sessions {
                    s.queue.take(&mut batch);
                }
            }
            spent
        })
    });
    g.finish();
}

// The macro defines a public function without docs.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, codec, queue_and_limit, fanout);
}
use group::benches;
criterion_main!(benches);
