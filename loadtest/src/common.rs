//! What the parent and the workers share: the worker spec, the JSON lines a
//! worker prints, counters, id ranges and HDR histogram (de)serialization.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::args::RunArgs;

/// Unix time in nanoseconds.
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A histogram of microseconds, 1 µs .. 1 h, 3 significant digits.
pub(crate) fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// V2-serialized, base64-encoded histogram.
pub(crate) fn hist_to_b64(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    if V2Serializer::new().serialize(h, &mut buf).is_err() {
        buf.clear();
    }
    base64::engine::general_purpose::STANDARD.encode(buf)
}

/// Inverse of [`hist_to_b64`].
pub(crate) fn hist_from_b64(s: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .context("histogram base64")?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| anyhow::anyhow!("histogram: {e:?}"))?;
    Ok(h)
}

/// Percentiles of a microsecond histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Pcts {
    pub(crate) count: u64,
    pub(crate) mean_ms: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
}

impl Pcts {
    pub(crate) fn of(h: &Histogram<u64>) -> Pcts {
        if h.is_empty() {
            return Pcts::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Pcts {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// What the parent sends a worker, first line on its stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerSpec {
    pub(crate) args: RunArgs,
    pub(crate) worker: usize,
    pub(crate) workers: usize,
    /// Global client indices `lo..hi` belong to this worker.
    pub(crate) lo: u64,
    pub(crate) hi: u64,
    pub(crate) run_id: String,
    pub(crate) seed: u64,
    pub(crate) threads: usize,
    /// This worker's share of the connect rate and concurrency.
    pub(crate) connect_rate: f64,
    pub(crate) connect_concurrency: usize,
}

/// Second line on a worker's stdin: when the measured phase starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StartCmd {
    pub(crate) start_ns: u64,
}

/// One JSON line printed by a worker on stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub(crate) enum WorkerMsg {
    Progress(Progress),
    /// Every client connected and joined (or failed).
    Ready(Progress),
    Report(Box<WorkerReport>),
    /// One second of the measured phase (for the report's time series).
    Second(Second),
}

/// One second of the measured phase as one worker saw it: second `k` covers
/// [start + k s, start + (k + 1) s). Counters are cumulative; the histogram
/// holds only the deliveries recorded in that second.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Second {
    pub(crate) worker: usize,
    pub(crate) k: u64,
    pub(crate) open: u64,
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    pub(crate) received: u64,
    /// Delivery latency (µs) recorded in the second, [`hist_to_b64`].
    pub(crate) h_latency: String,
}

/// Cumulative live figures of one worker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Progress {
    pub(crate) worker: usize,
    pub(crate) open: u64,
    pub(crate) connected: u64,
    pub(crate) failed: u64,
    pub(crate) ready: u64,
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    pub(crate) received: u64,
    pub(crate) p99_us: u64,
}

/// Counters of one client, summed per worker and then overall.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Counters {
    /// Initial connections attempted / succeeded.
    pub(crate) connect_attempts: u64,
    pub(crate) connect_ok: u64,
    /// Reconnections (churn, storm) attempted / succeeded.
    pub(crate) reconnect_attempts: u64,
    pub(crate) reconnect_ok: u64,
    /// Failures of initial connections, by cause.
    pub(crate) connect_fail: BTreeMap<String, u64>,
    /// Failures of reconnections, by cause.
    pub(crate) reconnect_fail: BTreeMap<String, u64>,
    /// Commands that carry a message (send, dm).
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    /// Sends without an ack or error when the socket closed or the run ended.
    pub(crate) unacked: u64,
    /// Error replies by code (including join errors).
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) joins: u64,
    pub(crate) leaves: u64,
    pub(crate) typing_sent: u64,
    /// Live `message`/`direct` frames received.
    pub(crate) live_received: u64,
    /// Messages received through `joined.history` on a recovery join.
    pub(crate) history_received: u64,
    /// A live id already received.
    pub(crate) duplicates: u64,
    /// A live id at or below the join point (it was in `joined.history`).
    pub(crate) duplicates_of_history: u64,
    /// A live room id below one already received (room order violation).
    pub(crate) out_of_order: u64,
    /// A direct message id below one already received from the same sender.
    pub(crate) dm_out_of_order: u64,
    /// The sender's own connection received its own message.
    pub(crate) self_echo: u64,
    /// A message for a room this connection is not in.
    pub(crate) stray: u64,
    pub(crate) typing_received: u64,
    pub(crate) user_joined: u64,
    pub(crate) user_left: u64,
    pub(crate) other_frames: u64,
    pub(crate) undecodable: u64,
    /// Server-initiated closes (close code, or "eof"/"reset") during the run.
    pub(crate) server_closes: BTreeMap<String, u64>,
    /// Reconnect storm.
    pub(crate) storm_dropped: u64,
    pub(crate) storm_rejoined: u64,
    pub(crate) recovered_true: u64,
    pub(crate) recovered_false: u64,
    /// Churn: connections retired by the client.
    pub(crate) churned: u64,
    /// Sends skipped because the client fell more than 1 s behind schedule.
    pub(crate) sends_skipped: u64,
}

fn add_map(a: &mut BTreeMap<String, u64>, b: &BTreeMap<String, u64>) {
    for (k, v) in b {
        *a.entry(k.clone()).or_default() += v;
    }
}

impl Counters {
    pub(crate) fn add(&mut self, o: &Counters) {
        self.connect_attempts += o.connect_attempts;
        self.connect_ok += o.connect_ok;
        self.reconnect_attempts += o.reconnect_attempts;
        self.reconnect_ok += o.reconnect_ok;
        add_map(&mut self.connect_fail, &o.connect_fail);
        add_map(&mut self.reconnect_fail, &o.reconnect_fail);
        self.sent += o.sent;
        self.acked += o.acked;
        self.unacked += o.unacked;
        add_map(&mut self.errors, &o.errors);
        self.joins += o.joins;
        self.leaves += o.leaves;
        self.typing_sent += o.typing_sent;
        self.live_received += o.live_received;
        self.history_received += o.history_received;
        self.duplicates += o.duplicates;
        self.duplicates_of_history += o.duplicates_of_history;
        self.out_of_order += o.out_of_order;
        self.dm_out_of_order += o.dm_out_of_order;
        self.self_echo += o.self_echo;
        self.stray += o.stray;
        self.typing_received += o.typing_received;
        self.user_joined += o.user_joined;
        self.user_left += o.user_left;
        self.other_frames += o.other_frames;
        self.undecodable += o.undecodable;
        add_map(&mut self.server_closes, &o.server_closes);
        self.storm_dropped += o.storm_dropped;
        self.storm_rejoined += o.storm_rejoined;
        self.recovered_true += o.recovered_true;
        self.recovered_false += o.recovered_false;
        self.churned += o.churned;
        self.sends_skipped += o.sends_skipped;
    }

    pub(crate) fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
        *map.entry(key.to_owned()).or_default() += 1;
    }
}

/// A set of message ids as sorted, disjoint, non-adjacent inclusive ranges.
/// Ids arrive mostly in order, so this stays a handful of ranges.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Ranges(pub(crate) Vec<(u64, u64)>);

impl Ranges {
    pub(crate) fn contains(&self, id: u64) -> bool {
        let i = self.0.partition_point(|r| r.1 < id);
        i < self.0.len() && self.0[i].0 <= id
    }

    /// Adds `id`; false when it was already there.
    pub(crate) fn insert(&mut self, id: u64) -> bool {
        let v = &mut self.0;
        match v.last_mut() {
            None => {
                v.push((id, id));
                return true;
            }
            Some(last) if id > last.1 => {
                if id == last.1 + 1 {
                    last.1 = id;
                } else {
                    v.push((id, id));
                }
                return true;
            }
            Some(_) => {}
        }
        let i = v.partition_point(|r| r.1 < id);
        if i < v.len() && v[i].0 <= id {
            return false;
        }
        let join_prev = i > 0 && v[i - 1].1 + 1 == id;
        let join_next = i < v.len() && v[i].0 == id + 1;
        match (join_prev, join_next) {
            (true, true) => {
                v[i - 1].1 = v[i].1;
                v.remove(i);
            }
            (true, false) => v[i - 1].1 = id,
            (false, true) => v[i].0 = id,
            (false, false) => v.insert(i, (id, id)),
        }
        true
    }
}

/// One membership of one connection in one stream: a room (`r:ROOM`) from its
/// `joined` to its `left`/close, or a user's direct-message inbox (`d:USER`)
/// for the life of the connection. A reconnect with recovery continues it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MemberOut {
    /// Stream key.
    pub(crate) s: String,
    /// Sender identity of this connection (acks carry the same).
    pub(crate) sid: u64,
    /// Messages with id <= `after` were before the join.
    pub(crate) after: u64,
    /// Unix ns when the client asked to leave / closed; None: to the end.
    pub(crate) end: Option<u64>,
    /// Ids received (and the connection's own acked ids).
    pub(crate) ids: Ranges,
}

/// Acked messages of one stream: (id, ack unix ns, sender identity).
pub(crate) type AckList = Vec<(u64, u64, u64)>;

/// The final report of one worker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct WorkerReport {
    pub(crate) worker: usize,
    pub(crate) clients: u64,
    pub(crate) counters: Counters,
    /// Base64 V2 histograms (µs): delivery latency, connect time, send→ack,
    /// storm recovery, publisher lag behind schedule.
    pub(crate) h_latency: String,
    /// Delivery latency split by the delivering node: the sender's own
    /// node, and any other (this one is empty with one node).
    pub(crate) h_latency_same_node: String,
    pub(crate) h_latency_cross_node: String,
    pub(crate) h_connect: String,
    pub(crate) h_ack: String,
    pub(crate) h_recovery: String,
    /// Storm: from the start of the reconnect to the last `joined`.
    pub(crate) h_rejoin: String,
    pub(crate) h_lag: String,
    /// Initial connect phase: first attempt and last success (unix ns).
    pub(crate) connect_first_ns: u64,
    pub(crate) connect_last_ns: u64,
    pub(crate) acks: BTreeMap<String, AckList>,
    pub(crate) members: Vec<MemberOut>,
    /// CPU seconds this worker used during the measured phase + drain.
    pub(crate) cpu_s: f64,
    pub(crate) rss_kb: u64,
}
