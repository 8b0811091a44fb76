//! Prometheus metrics of a node (`GET /metrics`), built on `prometheus-client`.
//! One [`Metrics`] value is created per node and handed to every layer.
//!
//! Besides the `relay_*` metrics, the standard process metrics
//! (`process_resident_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_cpu_seconds_total`, `process_start_time_seconds`), read from
//! `/proc/self` at each scrape (Linux; absent elsewhere).

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label: the connection's encoding.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EncodingLabel {
    /// `json` or `msgpack`.
    pub encoding: &'static str,
}

/// Labels of a closed connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    /// WebSocket close code.
    pub code: u16,
    /// Disconnect reason.
    pub reason: &'static str,
}

/// Labels of a processed command.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    /// Command type (`send`, `join`, ... or `unknown`).
    pub r#type: &'static str,
    /// `ok` or the error code.
    pub result: &'static str,
}

/// A single `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Reason.
    pub reason: &'static str,
}

/// A single `op` label (backplane operation).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    /// Operation.
    pub op: &'static str,
}

/// Build information labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// Crate version.
    pub version: &'static str,
    /// Git commit.
    pub git_sha: &'static str,
}

/// Every metric of a node.
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections by encoding.
    pub connections: Family<EncodingLabel, Gauge>,
    /// Connections accepted (upgraded).
    pub connections_opened: Counter,
    /// Connections closed by close code and reason.
    pub connections_closed: Family<CloseLabels, Counter>,
    /// Commands by type and result.
    pub commands: Family<CommandLabels, Counter>,
    /// Room messages published by this node's clients (acked).
    pub messages_published: Counter,
    /// Frames of room messages and direct messages pushed to local sockets.
    pub messages_delivered: Counter,
    /// Local recipients per fanned-out room message.
    pub fanout_size: Histogram,
    /// Time from the server timestamp of a message to its local fan-out.
    pub delivery_latency: Histogram,
    /// Commands refused by the rate limiter.
    pub rate_limited: Counter,
    /// Handshakes refused, by reason.
    pub handshake_refusals: Family<ReasonLabel, Counter>,
    /// Backplane call failures by operation.
    pub backplane_errors: Family<OpLabel, Counter>,
    /// Backplane reconnections.
    pub backplane_reconnects: Counter,
    /// Backplane call latency by operation.
    pub backplane_latency: Family<OpLabel, Histogram>,
    /// Rooms with at least one local member.
    pub rooms: Gauge,
    /// Distinct users with a local connection.
    pub users: Gauge,
    /// Events received from the backplane.
    pub backplane_events: Counter,
    /// Backplane events waiting for dispatch (bounded by `node::EVENT_QUEUE`).
    pub event_queue_depth: Gauge,
    /// Frames lost because an outbound queue overflowed (slow consumers).
    pub queue_dropped_frames: Counter,
    /// Local (room, user) presence entries held by this node.
    pub presence_entries: Gauge,
    /// Live nodes of the cluster, as last seen by this node.
    pub cluster_nodes: Gauge,
    /// Most WebSocket connections this node accepts (`--max-connections`).
    pub connections_max: Gauge,
    /// Open connections / `connections_max` (refreshed at each scrape).
    connection_capacity: Gauge<f64, AtomicU64>,
    /// The `process_*` metrics (unprefixed, refreshed at each scrape).
    process: Process,
}

/// The standard `process_*` metrics, from `/proc/self`.
struct Process {
    registry: Registry,
    resident_memory: Gauge,
    virtual_memory: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    cpu_seconds: Counter<f64, AtomicU64>,
    /// CPU seconds already added to the counter.
    cpu_counted: Mutex<f64>,
    threads: Gauge,
}

impl Process {
    fn new() -> Self {
        let mut registry = Registry::default();
        let p = Process {
            resident_memory: Gauge::default(),
            virtual_memory: Gauge::default(),
            open_fds: Gauge::default(),
            max_fds: Gauge::default(),
            cpu_seconds: Counter::default(),
            cpu_counted: Mutex::new(0.0),
            threads: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            p.resident_memory.clone(),
        );
        registry.register(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            p.virtual_memory.clone(),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors",
            p.open_fds.clone(),
        );
        registry.register(
            "process_max_fds",
            "Limit of open file descriptors (soft RLIMIT_NOFILE)",
            p.max_fds.clone(),
        );
        registry.register(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            p.cpu_seconds.clone(),
        );
        registry.register("process_threads", "OS threads", p.threads.clone());
        let start: Gauge<f64, AtomicU64> = Gauge::default();
        start.set(process_start_time().unwrap_or(0.0));
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
            start,
        );
        Process { registry, ..p }
    }

    /// Reads `/proc/self` into the gauges (left as they are where it
    /// cannot be read).
    fn refresh(&self) {
        if let Some((vsize, rss, threads, cpu)) = proc_stat() {
            self.virtual_memory.set(vsize as i64);
            self.resident_memory.set(rss as i64);
            self.threads.set(threads as i64);
            let mut counted = self.cpu_counted.lock().unwrap_or_else(|e| e.into_inner());
            if cpu > *counted {
                self.cpu_seconds.inc_by(cpu - *counted);
                *counted = cpu;
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // Minus the descriptor of the directory being read.
            self.open_fds.set(dir.count().saturating_sub(1) as i64);
        }
        if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
            self.max_fds.set(soft.min(i64::MAX as u64) as i64);
        }
    }
}

/// Clock ticks per second of `/proc/*/stat` times (`USER_HZ`, 100 on every
/// Linux architecture relay runs on).
const USER_HZ: f64 = 100.0;

/// Bytes per page of `/proc/self/stat`'s `rss`.
fn page_size() -> u64 {
    // The auxiliary vector has AT_PAGESZ (6); fall back to 4 KiB.
    std::fs::read("/proc/self/auxv")
        .ok()
        .and_then(|auxv| {
            auxv.chunks_exact(16).find_map(|kv| {
                let key = u64::from_ne_bytes(kv[..8].try_into().ok()?);
                let value = u64::from_ne_bytes(kv[8..].try_into().ok()?);
                (key == 6).then_some(value)
            })
        })
        .unwrap_or(4096)
}

/// Fields of `/proc/self/stat` after the command name: (virtual bytes,
/// resident bytes, threads, CPU seconds).
fn proc_stat() -> Option<(u64, u64, u64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): utime 14, stime 15, threads 20, vsize 23, rss 24.
    let num = |i: usize| f.get(i - 3)?.parse::<u64>().ok();
    let cpu = (num(14)? + num(15)?) as f64 / USER_HZ;
    Some((num(23)?, num(24)? * page_size(), num(20)?, cpu))
}

/// The process's start time since the epoch: boot time + `starttime` ticks.
fn process_start_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let start_ticks: u64 = rest.split_whitespace().nth(22 - 3)?.parse().ok()?;
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
    Some(boot as f64 + start_ticks as f64 / USER_HZ)
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("relay");
        let m = Metrics {
            connections: Family::default(),
            connections_opened: Counter::default(),
            connections_closed: Family::default(),
            commands: Family::default(),
            messages_published: Counter::default(),
            messages_delivered: Counter::default(),
            fanout_size: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            delivery_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            rate_limited: Counter::default(),
            handshake_refusals: Family::default(),
            backplane_errors: Family::default(),
            backplane_reconnects: Counter::default(),
            backplane_latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.0, 16))
            }),
            rooms: Gauge::default(),
            users: Gauge::default(),
            backplane_events: Counter::default(),
            event_queue_depth: Gauge::default(),
            queue_dropped_frames: Counter::default(),
            presence_entries: Gauge::default(),
            cluster_nodes: Gauge::default(),
            connections_max: Gauge::default(),
            connection_capacity: Gauge::default(),
            process: Process::new(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Open WebSocket connections",
            m.connections.clone(),
        );
        registry.register(
            "connections_opened",
            "WebSocket connections accepted",
            m.connections_opened.clone(),
        );
        registry.register(
            "connections_closed",
            "WebSocket connections closed, by close code and reason",
            m.connections_closed.clone(),
        );
        registry.register(
            "commands",
            "Client commands by type and result",
            m.commands.clone(),
        );
        registry.register(
            "messages_published",
            "Room messages stored and published for this node's clients",
            m.messages_published.clone(),
        );
        registry.register(
            "messages_delivered",
            "Room and direct message frames queued to local sockets",
            m.messages_delivered.clone(),
        );
        registry.register(
            "fanout_size",
            "Local recipients per room message",
            m.fanout_size.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "Time from a message's server timestamp to its local fan-out (crosses the backplane)",
            m.delivery_latency.clone(),
        );
        registry.register(
            "rate_limited",
            "Commands refused by the per-connection rate limit",
            m.rate_limited.clone(),
        );
        registry.register(
            "handshake_refusals",
            "WebSocket handshakes refused, by reason",
            m.handshake_refusals.clone(),
        );
        registry.register(
            "backplane_errors",
            "Failed backplane calls, by operation",
            m.backplane_errors.clone(),
        );
        registry.register(
            "backplane_reconnects",
            "Backplane reconnections",
            m.backplane_reconnects.clone(),
        );
        registry.register(
            "backplane_latency_seconds",
            "Backplane call latency, by operation",
            m.backplane_latency.clone(),
        );
        registry.register("rooms", "Rooms with local members", m.rooms.clone());
        registry.register(
            "users",
            "Distinct users with a local connection",
            m.users.clone(),
        );
        registry.register(
            "backplane_events",
            "Events received from the backplane",
            m.backplane_events.clone(),
        );
        registry.register(
            "event_queue_depth",
            "Backplane events waiting for dispatch on this node (when full, the backplane reader waits)",
            m.event_queue_depth.clone(),
        );
        registry.register(
            "queue_dropped_frames",
            "Outbound frames lost because a connection's queue overflowed (slow consumers)",
            m.queue_dropped_frames.clone(),
        );
        registry.register(
            "presence_entries",
            "Local (room, user) presence entries held by this node",
            m.presence_entries.clone(),
        );
        registry.register(
            "cluster_nodes",
            "Live nodes of the cluster, as last seen by this node",
            m.cluster_nodes.clone(),
        );
        registry.register(
            "connections_max",
            "Most WebSocket connections this node accepts (--max-connections)",
            m.connections_max.clone(),
        );
        registry.register(
            "connection_capacity_ratio",
            "Open WebSocket connections divided by relay_connections_max (1 = full: new sockets get 503)",
            m.connection_capacity.clone(),
        );
        // Set once: the runtime's size does not change (0 outside a runtime).
        let workers: Gauge = Gauge::default();
        workers.set(
            tokio::runtime::Handle::try_current()
                .map(|h| h.metrics().num_workers() as i64)
                .unwrap_or(0),
        );
        registry.register(
            "runtime_worker_threads",
            "Runtime worker threads of this node (--worker-threads)",
            workers,
        );
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                git_sha: option_env!("RELAY_GIT_SHA").unwrap_or("unknown"),
            })
            .set(1);
        registry.register("build_info", "Build information", build);
        Metrics { registry, ..m }
    }

    /// Open WebSocket connections (every encoding).
    pub fn open_connections(&self) -> i64 {
        ["json", "msgpack"]
            .into_iter()
            .map(|encoding| {
                self.connections
                    .get_or_create(&EncodingLabel { encoding })
                    .get()
            })
            .sum()
    }

    /// Every metric in the OpenMetrics text format, the process metrics
    /// and the capacity ratio refreshed first.
    pub fn encode(&self) -> String {
        self.process.refresh();
        let max = self.connections_max.get();
        if max > 0 {
            self.connection_capacity
                .set(self.open_connections() as f64 / max as f64);
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        let _ =
            prometheus_client::encoding::text::encode_registry(&mut out, &self.process.registry);
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        out
    }

    /// Counts a command result.
    pub fn command(&self, kind: &'static str, result: &'static str) {
        self.commands
            .get_or_create(&CommandLabels {
                r#type: kind,
                result,
            })
            .inc();
    }

    /// Counts a refused handshake.
    pub fn refused(&self, reason: &'static str) {
        self.handshake_refusals
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_metrics_come_from_proc_self() {
        let m = Metrics::new();
        m.connections_max.set(4);
        m.connections
            .get_or_create(&EncodingLabel { encoding: "json" })
            .set(1);
        let text = m.encode();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
        };
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_cpu_seconds_total") >= 0.0);
        assert!(value("process_start_time_seconds") > 1.6e9);
        assert_eq!(value("relay_connection_capacity_ratio"), 0.25);
        assert!(text.trim_end().ends_with("# EOF"));
        assert_eq!(text.matches("# EOF").count(), 1);
    }
}
