//! Configuration: every flag of `relay serve`, each with its `RELAY_*`
//! environment variable. Built once in `main` and handed down as one value.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// How clients prove who they are (PROTOCOL §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// `?user=NAME`, names claimed cluster-wide while connected.
    Guest,
    /// A login token from `POST /api/login` (needs `--secret`).
    Token,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags of `relay serve`.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// HTTP and WebSocket address to listen on.
    #[arg(long, env = "RELAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Redis backplane URL (`redis://`, `rediss://`), or a Redis Cluster
    /// (Redis ≥ 7, sharded pub/sub) by its seed nodes:
    /// `redis+cluster://HOST:PORT,HOST:PORT,...` (docs/redis-cluster.md);
    /// absent: in-memory, single node. Nodes sharing one Redis form one
    /// cluster.
    #[arg(long, env = "RELAY_REDIS", hide_env_values = true)]
    pub redis: Option<String>,

    /// Prefix of every Redis key and channel (several clusters can share one
    /// Redis under different prefixes).
    #[arg(long, env = "RELAY_REDIS_PREFIX", default_value = "relay")]
    pub redis_prefix: String,

    /// Upper bound of every Redis call, in ms; a call that times out answers
    /// `unavailable`.
    #[arg(long, env = "RELAY_REDIS_TIMEOUT_MS", default_value_t = 2000)]
    pub redis_timeout_ms: u64,

    /// Redis: a room with no one present is forgotten (epoch, ids,
    /// history) after this many idle seconds without a message, join or
    /// leave; it then starts a new epoch. 0: never.
    #[arg(long, env = "RELAY_ROOM_IDLE_TTL_SECS", default_value_t = 604_800)]
    pub room_idle_ttl_secs: u64,

    /// This node's name in `welcome.node`, logs and presence [default: host
    /// name + random suffix].
    #[arg(long, env = "RELAY_NODE_ID")]
    pub node_id: Option<String>,

    /// How clients prove who they are.
    #[arg(long, env = "RELAY_AUTH", value_enum, default_value = "guest")]
    pub auth: AuthMode,

    /// Signing key(s) of login tokens, the same on every node. Comma-separated
    /// for rotation: the first signs, all verify.
    #[arg(
        long,
        env = "RELAY_SECRET",
        value_delimiter = ',',
        required_if_eq("auth", "token"),
        hide_env_values = true
    )]
    pub secret: Option<Vec<String>>,

    /// Lifetime of login tokens, in seconds; a socket closes with 4001 when
    /// its token expires.
    #[arg(long, env = "RELAY_TOKEN_TTL_SECS", default_value_t = 86_400)]
    pub token_ttl_secs: u64,

    /// Bearer key(s) of `/api/publish`, `/api/rooms/*` and `/api/nodes`
    /// (comma-separated for rotation); absent: those endpoints are off.
    #[arg(
        long,
        env = "RELAY_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_key: Option<Vec<String>>,

    /// PEM certificate chain: serve `https://` and `wss://` directly
    /// (reloaded on SIGHUP and when the file changes).
    #[arg(long, env = "RELAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "RELAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Most WebSocket connections this node holds (503 when full)
    /// [default: the open-file limit minus a reserve].
    #[arg(long, env = "RELAY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Most concurrent WebSocket connections per client IP on this node (429 over it).
    #[arg(long, env = "RELAY_MAX_CONNS_PER_IP", default_value_t = 1000)]
    pub max_conns_per_ip: usize,

    /// Most concurrent WebSocket connections per user on this node (429 over it).
    #[arg(long, env = "RELAY_MAX_CONNS_PER_USER", default_value_t = 100)]
    pub max_conns_per_user: usize,

    /// Comma-separated proxy addresses or CIDRs whose `X-Forwarded-For` is
    /// trusted for the client IP (e.g. `10.0.0.0/8,127.0.0.1`).
    #[arg(long, env = "RELAY_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_net)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Time allowed for the TLS handshake and the HTTP request head, in ms.
    #[arg(long, env = "RELAY_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,

    /// Register/login attempts per minute per client IP (429 with Retry-After over it).
    #[arg(long, env = "RELAY_LOGIN_RATE", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub login_rate: u32,

    /// Comma-separated allowed `Origin`s (e.g. `https://chat.example.com`);
    /// absent: any origin. Handshakes without an Origin header (non-browser
    /// clients) are always allowed.
    #[arg(long, env = "RELAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,

    /// Runtime worker threads (the cores this node uses) [default: the
    /// CPUs available to the process, cgroup quota included]. Nodes that
    /// share a machine run best with their share of its cores each: one
    /// thread per node avoids cross-thread wake-ups and work stealing
    /// between nodes competing for the same cores (BENCHMARKS.md).
    #[arg(long, env = "RELAY_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,

    /// Server ping interval and presence heartbeat, in milliseconds. A
    /// connection silent for twice this long is closed.
    #[arg(long, env = "RELAY_HEARTBEAT_MS", default_value_t = 25_000,
          value_parser = clap::value_parser!(u64).range(50..))]
    pub heartbeat_ms: u64,

    /// How long a node's presence survives without its heartbeat, in
    /// milliseconds [default: 3 × heartbeat].
    #[arg(long, env = "RELAY_PRESENCE_TTL_MS")]
    pub presence_ttl_ms: Option<u64>,

    /// Largest accepted WebSocket frame/message in bytes; larger closes with 1009.
    #[arg(long, env = "RELAY_MAX_FRAME_BYTES", default_value_t = 65_536,
          value_parser = clap::value_parser!(u64).range(256..=16_777_216))]
    pub max_frame_bytes: u64,

    /// Largest message text, in characters after trimming.
    #[arg(long, env = "RELAY_MAX_TEXT_CHARS", default_value_t = 4000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_text_chars: u64,

    /// Commands per second per connection (token bucket, burst 2N).
    #[arg(long, env = "RELAY_RATE", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,

    /// Outbound queue length per connection (frames); overflow closes with 4000.
    #[arg(long, env = "RELAY_MAX_QUEUE", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queue: u64,

    /// Most rooms one connection may join; a `join` beyond answers
    /// `too_many_rooms` (PROTOCOL §9).
    #[arg(long, env = "RELAY_MAX_ROOMS_PER_CONN", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_rooms_per_conn: u64,

    /// Outbound queue bound per connection in bytes; overflow closes with
    /// 4000 (a connection that does not read cannot pin more than this).
    #[arg(long, env = "RELAY_MAX_QUEUE_BYTES", default_value_t = 4 << 20,
          value_parser = clap::value_parser!(u64).range(1024..=1 << 30))]
    pub max_queue_bytes: u64,

    /// On SIGTERM: stop accepting, close sockets with 1001 over N seconds, exit.
    #[arg(long, env = "RELAY_DRAIN_SECS", default_value_t = 10)]
    pub drain_secs: u64,

    /// Log format.
    #[arg(long, env = "RELAY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter (overridden by `RUST_LOG`), e.g. `info` or `relay=debug`.
    #[arg(long, env = "RELAY_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("`{s}` is not an IP address or CIDR"))
}

impl Config {
    /// A configuration with every default (for tests and embedding).
    pub fn default_for(listen: SocketAddr) -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        let mut c = Wrapper::parse_from(["relay"]).config;
        c.listen = listen;
        c
    }

    /// The node id, generated when not configured.
    pub fn resolved_node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            let host = hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "relay".into());
            format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
        })
    }

    /// Heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// Presence TTL.
    pub fn presence_ttl(&self) -> Duration {
        Duration::from_millis(self.presence_ttl_ms.unwrap_or(self.heartbeat_ms * 3))
    }

    /// Time allowed for TLS and HTTP request heads.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// Drain window.
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_secs)
    }
}
