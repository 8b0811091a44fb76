//! Prometheus metrics of a node (`GET /metrics`), built on `prometheus-client`.
//! One [`Metrics`] value is created per node and handed to every layer.

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

    /// The registry, for encoding.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
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
