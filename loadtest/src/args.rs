//! Command-line flags of a run. The parent resolves the per-scenario defaults
//! and hands the resolved flags to every worker as JSON.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

/// What the clients do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Scenario {
    /// Hold C sockets for D seconds (joined to rooms of --room-size if > 0).
    Idle,
    /// C clients in one room; P publishers send --msg-rate messages/s in total.
    Fanout,
    /// C clients in rooms of --room-size; each sends --rate messages/s.
    Rooms,
    /// Pairs (2i, 2i+1); each sends --rate direct messages/s to its partner.
    Dm,
    /// Like rooms, but every client disconnects after ~--lifetime seconds and
    /// comes back as a new user (connect, join, chat, disconnect, continuously).
    Churn,
    /// Like rooms; at --storm-at every client drops its socket and reconnects
    /// (resume token, `join since/epoch`): recovery time, missed, duplicated.
    ReconnectStorm,
    /// A chat service: most clients idle, a few busy rooms, casual chatters
    /// with typing, direct messages, clients joining and leaving extra rooms.
    Mixed,
    /// Rooms chat (the measured clients) on the first target while the
    /// parent attacks it: non-readers, slow HTTP bodies, a room flood and
    /// login bursts (--hostile-* flags); the report adds what each attack
    /// got and the node's peak RSS.
    Hostile,
}

impl Scenario {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::Fanout => "fanout",
            Scenario::Rooms => "rooms",
            Scenario::Dm => "dm",
            Scenario::Churn => "churn",
            Scenario::ReconnectStorm => "reconnect-storm",
            Scenario::Mixed => "mixed",
            Scenario::Hostile => "hostile",
        }
    }
}

/// How clients are spread over the --url targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Affinity {
    /// Client i goes to target i mod n (round robin).
    Client,
    /// Every member of a room (a DM pair) goes to the same target: for
    /// independent in-memory nodes, which share nothing.
    Room,
}

/// Wire encoding of the clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum EncodingArg {
    /// `relay.v1.json` text frames.
    Json,
    /// `relay.v1.msgpack` binary frames.
    Msgpack,
}

impl EncodingArg {
    pub(crate) fn encoding(self) -> relay::protocol::Encoding {
        match self {
            EncodingArg::Json => relay::protocol::Encoding::Json,
            EncodingArg::Msgpack => relay::protocol::Encoding::MsgPack,
        }
    }
}

/// Flags of a run (see `loadtest --help`).
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub(crate) struct RunArgs {
    /// Relay WebSocket URL, ws:// or wss://, e.g. ws://127.0.0.1:8080/ws or
    /// wss://chat.example.com/ws (repeatable; clients are spread
    /// round-robin). Any host given here is used as it is; client sockets
    /// are bound to loopback source addresses only for loopback targets.
    #[arg(long = "url")]
    pub(crate) urls: Vec<String>,

    /// PEM file of extra CA certificates trusted for wss:// targets (a
    /// private CA), besides the webpki roots.
    #[arg(long)]
    pub(crate) ca: Option<PathBuf>,

    /// Fail (exit 2) when the end-to-end delivery latency's p99 is above
    /// this many milliseconds.
    #[arg(long)]
    pub(crate) max_p99_ms: Option<f64>,

    /// Fail (exit 2) when more than this share (0..1) of the expected
    /// deliveries was lost [default: 0, any loss fails].
    #[arg(long, default_value_t = 0.0)]
    pub(crate) max_loss: f64,

    /// How clients are spread over the targets [default: client; room with
    /// --embedded and several nodes].
    #[arg(long, value_enum)]
    pub(crate) affinity: Option<Affinity>,

    /// Token auth: `?token=T` (repeatable; client i uses token i mod n).
    /// Without it, guest auth with a unique `?user=NAME` per client.
    #[arg(long = "token")]
    pub(crate) tokens: Vec<String>,

    /// Client encoding (subprotocol).
    #[arg(long, value_enum, default_value = "json")]
    pub(crate) encoding: EncodingArg,

    /// Scenario.
    #[arg(long, value_enum, default_value = "rooms")]
    pub(crate) scenario: Scenario,

    /// Number of concurrent clients (sockets).
    #[arg(long, short = 'c', default_value_t = 1000)]
    pub(crate) clients: u64,

    /// Length of the measured phase, seconds (publishing stops at its end).
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub(crate) duration: f64,

    /// Seconds to keep reading after the measured phase before counting.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) drain: f64,

    /// Seconds to wait after every client connected (and joined) before the
    /// measured phase starts; the "connected" server RSS is sampled at its end.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) settle: f64,

    /// New connections per second, overall (0: as fast as --connect-concurrency allows).
    #[arg(long, default_value_t = 2000.0)]
    pub(crate) connect_rate: f64,

    /// Handshakes in flight at most, overall.
    #[arg(long, default_value_t = 1000)]
    pub(crate) connect_concurrency: usize,

    /// Timeout of each of TCP connect, WebSocket handshake and `welcome`, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) connect_timeout: f64,

    /// Clients per room (rooms, churn, reconnect-storm, mixed's normal rooms;
    /// idle joins rooms of this size when > 0) [default: 10; idle 0; mixed 20].
    #[arg(long)]
    pub(crate) room_size: Option<u64>,

    /// Messages per second per sending client (rooms, dm, churn,
    /// reconnect-storm; mixed: casual chatters) [default: 1; mixed 0.05].
    #[arg(long)]
    pub(crate) rate: Option<f64>,

    /// Fanout: total messages per second into the room.
    #[arg(long, default_value_t = 100.0)]
    pub(crate) msg_rate: f64,

    /// Fanout: number of publishers (clients 0..P of the room) [default:
    /// msg-rate / 10, so each stays well under the server's per-connection
    /// command rate limit of 20/s].
    #[arg(long)]
    pub(crate) publishers: Option<u64>,

    /// Extra bytes of text appended to every message.
    #[arg(long, default_value_t = 0)]
    pub(crate) payload: usize,

    /// Churn: mean lifetime of a connection, seconds (uniform in [0.5, 1.5] × it).
    #[arg(long, default_value_t = 5.0)]
    pub(crate) lifetime: f64,

    /// Reconnect-storm: when every client drops, seconds after the start
    /// [default: duration / 3].
    #[arg(long)]
    pub(crate) storm_at: Option<f64>,

    /// Reconnect-storm: reconnects are spread uniformly over this many ms.
    #[arg(long, default_value_t = 1000)]
    pub(crate) storm_spread_ms: u64,

    /// A message acked less than this many ms before its receiver left the
    /// room (or closed) was in flight: it is reported apart, not counted as
    /// expected (across nodes an ack does not wait for the other nodes'
    /// deliveries).
    #[arg(long, default_value_t = 1000)]
    pub(crate) leave_grace_ms: u64,

    /// Worker processes [default: one per core, more when the client count
    /// needs them under RLIMIT_NOFILE; never more than the clients].
    #[arg(long)]
    pub(crate) workers: Option<usize>,

    /// Most clients per worker process [default: hard RLIMIT_NOFILE - 1000].
    #[arg(long)]
    pub(crate) per_worker: Option<u64>,

    /// Tokio threads per worker [default: cores / workers, at least 1]. A
    /// worker with one thread runs a single-threaded runtime: no wake-ups
    /// or work stealing across threads.
    #[arg(long)]
    pub(crate) threads: Option<usize>,

    /// Client sockets per loopback source address (127.0.0.2, 127.0.0.3, ...;
    /// at most 50,000: each client binds an explicit port in 10000..60000).
    /// The default stays within relay's default --max-conns-per-ip (1000).
    #[arg(long, default_value_t = 1000)]
    pub(crate) per_source: u64,

    /// Do not bind client sockets to loopback source addresses.
    #[arg(long)]
    pub(crate) no_bind: bool,

    /// First read size of each client, bytes; reads that come back full
    /// double it, up to 64 KiB (a backlog then leaves the socket in fewer
    /// system calls), and a short read resets it.
    #[arg(long, default_value_t = 4096)]
    pub(crate) read_buffer: usize,

    /// Prefix of guest user names and room names.
    #[arg(long, default_value = "lt")]
    pub(crate) name_prefix: String,

    /// Random seed (room/DM choices, phases) [default: random].
    #[arg(long)]
    pub(crate) seed: Option<u64>,

    /// Server process to sample (RSS, CPU) from /proc (repeatable).
    #[arg(long = "server-pid")]
    pub(crate) server_pids: Vec<u32>,

    /// Write every figure as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,

    /// Start a private cluster: redis-server and N relay nodes on loopback,
    /// run against it, stop it.
    #[arg(long)]
    pub(crate) spawn_cluster: Option<usize>,

    /// Start the spawned nodes without Redis (in-memory). With more than one
    /// node they are independent (they share nothing): clients then go to
    /// nodes by room (--affinity room), which suits idle, rooms, churn,
    /// reconnect-storm and dm; fanout puts everyone on the first node.
    #[arg(long, alias = "no-redis")]
    pub(crate) embedded: bool,

    /// Relay binary for --spawn-cluster [default: the relay beside this
    /// loadtest binary, else target/release/relay, then target/debug/relay].
    #[arg(long, env = "RELAY_BIN")]
    pub(crate) relay_bin: Option<PathBuf>,

    /// redis-server binary for --spawn-cluster.
    #[arg(long, default_value = "redis-server")]
    pub(crate) redis_bin: String,

    /// With --spawn-cluster: back the nodes with a private Redis Cluster of
    /// N masters (N ≥ 3, no replicas, joined with `redis-cli --cluster
    /// create`) instead of one redis-server; the nodes get
    /// `--redis redis+cluster://...` (sharded pub/sub).
    #[arg(
        long,
        value_name = "N",
        requires = "spawn_cluster",
        conflicts_with = "embedded"
    )]
    pub(crate) redis_cluster: Option<usize>,

    /// With --spawn-cluster: put a private nginx (docker/nginx.conf) in front
    /// of the nodes and connect every client through it.
    #[arg(long, requires = "spawn_cluster")]
    pub(crate) nginx: bool,

    /// redis-cli binary for --redis-cluster.
    #[arg(long, default_value = "redis-cli")]
    pub(crate) redis_cli_bin: String,

    /// With --spawn-cluster: runtime threads of each spawned node
    /// (`relay serve --worker-threads`) [default: cores / nodes, at least
    /// 1]; 0 leaves the node's own default (every core).
    #[arg(long, requires = "spawn_cluster")]
    pub(crate) node_threads: Option<usize>,

    /// Extra argument for every spawned `relay serve` (repeatable), e.g.
    /// --server-arg=--rate=100.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub(crate) server_args: Vec<String>,

    /// Hostile: sockets that send `history` of a room full of long messages
    /// over and over and never read (4 KiB receive buffer).
    #[arg(long, default_value_t = 4)]
    pub(crate) hostile_nonreaders: usize,

    /// Hostile: `history` commands each non-reader sends.
    #[arg(long, default_value_t = 300)]
    pub(crate) hostile_history: usize,

    /// Hostile: `POST /api/login` requests whose body never finishes, held
    /// open through the run.
    #[arg(long, default_value_t = 50)]
    pub(crate) hostile_slow_bodies: usize,

    /// Hostile: rooms one connection tries to join (the room flood).
    #[arg(long, default_value_t = 300)]
    pub(crate) hostile_rooms: usize,

    /// Hostile: concurrent bogus logins, once a second.
    #[arg(long, default_value_t = 20)]
    pub(crate) hostile_logins: usize,

    /// Connect failures tolerated before the run counts as failed.
    #[arg(long, default_value_t = 0)]
    pub(crate) allow_connect_failures: u64,

    /// No live progress display.
    #[arg(long)]
    pub(crate) no_progress: bool,
}

impl RunArgs {
    /// Clients per room as resolved for the scenario.
    pub(crate) fn room_size(&self) -> u64 {
        self.room_size.unwrap_or(match self.scenario {
            Scenario::Idle => 0,
            Scenario::Mixed => 20,
            _ => 10,
        })
    }

    /// Per-client message rate as resolved for the scenario.
    pub(crate) fn rate(&self) -> f64 {
        self.rate.unwrap_or(match self.scenario {
            Scenario::Mixed => 0.05,
            _ => 1.0,
        })
    }

    /// Fan-out publishers as resolved.
    pub(crate) fn publishers(&self) -> u64 {
        self.publishers
            .unwrap_or_else(|| (self.msg_rate / 10.0).ceil().max(1.0) as u64)
            .clamp(1, self.clients.max(1))
    }

    /// When the storm happens, seconds after the start.
    pub(crate) fn storm_at(&self) -> f64 {
        self.storm_at.unwrap_or(self.duration / 3.0)
    }
}
