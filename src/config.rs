//! Configuration: every flag of `relay serve`, each with its `RELAY_*`
//! environment variable and its key in a `--config` TOML file (the flag's
//! name), checked by [`Config::validate`] before anything connects. Built
//! once in `main` and handed down as one value.
//!
//! Precedence: flags > environment > file > defaults. The file's values are
//! handed to clap as extra `--key=value` arguments for exactly the keys that
//! neither a flag nor an environment variable set (clap's `value_source`), so
//! they go through the same parsers and checks as flags. Secrets can also
//! come from files: `RELAY_SECRET_FILE`, `RELAY_API_KEY_FILE`,
//! `RELAY_REDIS_FILE` (and `secret-file` ... keys in the TOML file).
//!
//! Why one long file: it is the declaration of the whole command line (every
//! flag's doc, variable, default and parser in one struct) plus the checks
//! that relate flags to each other; split, a reader would have to join the
//! pieces to answer "what does this flag do and what may it be".

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, ValueEnum};

/// How clients prove who they are (PROTOCOL §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// `?user=NAME`, names claimed cluster-wide while connected.
    Guest,
    /// A login token from `POST /api/login` (needs `--secret`).
    Token,
    /// A JWT signed by the application's own backend (PROTOCOL §8): needs
    /// `--jwt-key`, `--jwt-secret` or `--jwks-url`; no relay account.
    Jwt,
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

    /// Private address of `/metrics`, `/healthz` and `/readyz` (e.g.
    /// `0.0.0.0:9090`, not exposed by the Ingress); when set, `/metrics` is
    /// no longer served on `--listen` (health and readiness stay there too).
    #[arg(long, env = "RELAY_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

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
    /// for rotation: the first signs, all verify. Required by `--auth token`.
    #[arg(
        long,
        env = "RELAY_SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub secret: Option<Vec<String>>,

    /// `--auth jwt`: PEM file of the application's public key(s) (RSA, EC
    /// P-256/P-384, Ed25519; several PEM blocks in one file are all
    /// accepted).
    #[arg(long, env = "RELAY_JWT_KEY")]
    pub jwt_key: Option<PathBuf>,

    /// `--auth jwt`: HS256 secret(s) of the application's tokens,
    /// comma-separated for rotation (every entry verifies), each at least
    /// 32 bytes. Also signs `relay token issue`.
    #[arg(
        long,
        env = "RELAY_JWT_SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub jwt_secret: Option<Vec<String>>,

    /// `--auth jwt`: URL of the application's JWKS document (RSA, EC and
    /// OKP keys by `kid`): fetched at start, cached, re-fetched when a token
    /// names an unknown `kid` (at most once every 10 s) and every 5 minutes;
    /// while it is unreachable the cached keys stay.
    #[arg(long, env = "RELAY_JWKS_URL")]
    pub jwks_url: Option<String>,

    /// `--auth jwt`: the required `iss` claim (absent: not checked).
    #[arg(long, env = "RELAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// `--auth jwt`: the required `aud` claim (absent: not checked).
    #[arg(long, env = "RELAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// `--auth jwt`: clock skew allowed on `exp`, `nbf` and `iat`, in
    /// seconds.
    #[arg(long, env = "RELAY_JWT_LEEWAY_SECS", default_value_t = 5)]
    pub jwt_leeway_secs: u64,

    /// How long `POST /api/revoke` keeps refusing a user's earlier tokens, in
    /// seconds: at least as long as such tokens can be valid
    /// [default: --token-ttl-secs in token mode, 30 days with --auth jwt].
    #[arg(long, env = "RELAY_REVOCATION_TTL_SECS")]
    pub revocation_ttl_secs: Option<u64>,

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
    #[arg(long, env = "RELAY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "RELAY_TLS_KEY")]
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

/// The arguments of `relay serve` and `relay config check`: an optional
/// configuration file, then every setting.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// TOML file of settings, keys named like the flags (`listen = "..."`,
    /// `heartbeat-ms = 25000`); flags and `RELAY_*` variables override it.
    /// `relay config defaults` prints one with every key.
    #[arg(long, env = "RELAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The settings.
    #[command(flatten)]
    pub settings: Config,
}

/// A configuration mistake: the flag (or file key) and what is wrong with
/// it. Printed as one line; the process exits with status 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {problem}")]
pub struct ConfigError {
    /// `--flag`, `RELAY_*_FILE` or the configuration file's path.
    pub flag: String,
    /// What is wrong.
    pub problem: String,
}

impl ConfigError {
    fn new(flag: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            flag: flag.into(),
            problem: problem.into(),
        }
    }
}

/// The settings that are secrets: flag name and environment variable. Each
/// also reads `<VARIABLE>_FILE` and the file key `<flag>-file`; their values
/// are redacted by `relay config check`.
pub const SECRETS: &[(&str, &str)] = &[
    ("secret", "RELAY_SECRET"),
    ("jwt-secret", "RELAY_JWT_SECRET"),
    ("api-key", "RELAY_API_KEY"),
    ("redis", "RELAY_REDIS"),
];

/// The flag names never read from a configuration file.
const NOT_IN_FILE: &[&str] = &["config", "help"];

/// A secret's value read from a file: the content without its trailing
/// newline (files written by `echo` or by editors end with one).
fn read_secret(path: &Path, what: &str) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(what, format!("cannot read {}: {e}", path.display())))?;
    let value = text.trim_end_matches(['\n', '\r']).to_owned();
    if value.trim().is_empty() {
        return Err(ConfigError::new(
            what,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(value)
}

/// Resolves the `RELAY_*_FILE` variables: for each secret whose `_FILE`
/// variable is set, the variable and the file's content to set it to.
/// Setting both `RELAY_X` and `RELAY_X_FILE` is an error.
pub fn secret_files_from_env(
    var: impl Fn(&str) -> Option<OsString>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (_, env) in SECRETS {
        let file_var = format!("{env}_FILE");
        let Some(path) = var(&file_var).filter(|p| !p.is_empty()) else {
            continue;
        };
        if var(env).is_some_and(|v| !v.is_empty()) {
            return Err(ConfigError::new(
                file_var,
                format!("{env} is set too; set only one of them"),
            ));
        }
        out.push((env.to_string(), read_secret(Path::new(&path), &file_var)?));
    }
    Ok(out)
}

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag.
    Flag,
    /// A `RELAY_*` environment variable (or its `_FILE` variant).
    Env,
    /// The `--config` file.
    File,
    /// The built-in default.
    Default,
}

/// A configuration file turned into arguments: `--key=value` for every key
/// that neither a flag nor a variable set, and the keys they came from.
#[derive(Debug, Default)]
pub struct FileArgs {
    /// Extra arguments for clap.
    pub args: Vec<OsString>,
    /// The flag names taken from the file.
    pub keys: Vec<String>,
}

/// Reads a configuration file (TOML, keys are the flag names, `_` allowed
/// for `-`) against the first parse of the command line (`matches` of the
/// subcommand, `command` its definition).
pub fn file_args(
    path: &Path,
    command: &clap::Command,
    matches: &ArgMatches,
) -> Result<FileArgs, ConfigError> {
    let where_ = format!("--config {}", path.display());
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(&where_, format!("cannot read the file: {e}")))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let msg = e.message().to_owned();
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        match line {
            Some(l) => ConfigError::new(&where_, format!("line {l}: {msg}")),
            None => ConfigError::new(&where_, msg),
        }
    })?;
    let mut out = FileArgs::default();
    let mut seen: Vec<String> = Vec::new();
    for (raw_key, value) in &table {
        let key = raw_key.replace('_', "-");
        let (flag, value) = match key.strip_suffix("-file") {
            Some(secret) if SECRETS.iter().any(|(f, _)| *f == secret) => {
                let Some(p) = value.as_str() else {
                    return Err(ConfigError::new(
                        &where_,
                        format!("`{raw_key}` must be a file path (a string)"),
                    ));
                };
                let v = read_secret(Path::new(p), &format!("{where_}: {raw_key}"))?;
                (secret.to_owned(), toml::Value::String(v))
            }
            _ => (key, value.clone()),
        };
        if seen.contains(&flag) {
            return Err(ConfigError::new(
                &where_,
                format!("`{flag}` is set twice (check its `-file` and `_` spellings)"),
            ));
        }
        seen.push(flag.clone());
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(flag.as_str()))
            .filter(|_| !NOT_IN_FILE.contains(&flag.as_str()))
            .ok_or_else(|| ConfigError::new(&where_, format!("unknown key `{raw_key}`")))?;
        let text = match &value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => {
                let mut parts = Vec::new();
                for item in items {
                    match item {
                        toml::Value::String(s) => parts.push(s.clone()),
                        toml::Value::Integer(i) => parts.push(i.to_string()),
                        _ => {
                            return Err(ConfigError::new(
                                &where_,
                                format!("`{raw_key}`: list items must be strings"),
                            ))
                        }
                    }
                }
                parts.join(",")
            }
            _ => {
                return Err(ConfigError::new(
                    &where_,
                    format!("`{raw_key}` must be a string, number, boolean or list"),
                ))
            }
        };
        let id = arg.get_id().as_str();
        let set_elsewhere = matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if !set_elsewhere {
            out.args.push(format!("--{flag}={text}").into());
            out.keys.push(flag);
        }
    }
    Ok(out)
}

/// Where each setting came from, by flag name.
pub fn origin(matches: &ArgMatches, id: &str, from_file: &[String], flag: &str) -> Origin {
    if from_file.iter().any(|k| k == flag) {
        return Origin::File;
    }
    match matches.value_source(id) {
        Some(ValueSource::CommandLine) => Origin::Flag,
        Some(ValueSource::EnvVariable) => Origin::Env,
        _ => Origin::Default,
    }
}

/// A TOML value for a setting's text: numbers bare, everything else quoted.
fn toml_literal(text: &str) -> String {
    if text.parse::<i64>().is_ok() {
        text.to_owned()
    } else {
        toml::Value::String(text.to_owned()).to_string()
    }
}

/// Help text of an argument as `# ` comment lines.
fn help_comment(arg: &clap::Arg) -> String {
    let help = arg
        .get_long_help()
        .or(arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default();
    let mut out = String::new();
    for paragraph in help.lines() {
        let mut line = String::from("#");
        for word in paragraph.split_whitespace() {
            if line.len() + 1 + word.len() > 78 && line.len() > 1 {
                out.push_str(&line);
                out.push('\n');
                line = String::from("#");
            }
            line.push(' ');
            line.push_str(word);
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The settings of `command` (the `relay serve` subcommand), each flag with
/// its long name.
fn settings(command: &clap::Command) -> impl Iterator<Item = &clap::Arg> {
    command.get_arguments().filter(|a| {
        a.get_long()
            .is_some_and(|l| !NOT_IN_FILE.contains(&l) && l != "version")
    })
}

/// `relay config defaults`: a TOML file with every key, its help as a
/// comment, and its default value (keys without a default are commented
/// out). Valid as `--config` as it is.
pub fn defaults_file(command: &clap::Command) -> String {
    let mut out = String::from(
        "# relay configuration (relay serve --config FILE). Keys are the flag names;\n\
         # flags and RELAY_* environment variables override this file.\n\
         # Secrets (secret, api-key, redis) can be read from files instead:\n\
         # secret-file = \"/run/secrets/relay-secret\", or RELAY_SECRET_FILE.\n",
    );
    for arg in settings(command) {
        let long = arg.get_long().unwrap_or_default();
        out.push('\n');
        out.push_str(&help_comment(arg));
        if let Some(env) = arg.get_env() {
            out.push_str(&format!("# Environment: {}\n", env.to_string_lossy()));
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        match defaults.as_slice() {
            [] => out.push_str(&format!("# {long} = \n")),
            [one] => out.push_str(&format!("{long} = {}\n", toml_literal(one))),
            many => out.push_str(&format!(
                "{long} = [{}]\n",
                many.iter()
                    .map(|v| toml_literal(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
    out
}

/// `relay config check`: the effective settings as TOML, each with where it
/// came from; secrets redacted, unset settings commented out.
pub fn effective_file(
    command: &clap::Command,
    matches: &ArgMatches,
    from_file: &[String],
) -> String {
    let mut out = String::from("# effective relay configuration (secrets redacted)\n");
    for arg in settings(command) {
        let long = arg.get_long().unwrap_or_default();
        let id = arg.get_id().as_str();
        let source = origin(matches, id, from_file, long);
        let values: Vec<String> = matches
            .get_raw(id)
            .map(|vs| vs.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let from = match source {
            Origin::Flag => "flag",
            Origin::Env => "environment",
            Origin::File => "file",
            Origin::Default => "default",
        };
        // A Redis URL is a secret only when it carries credentials.
        let secret = SECRETS.iter().any(|(f, _)| *f == long)
            && (long != "redis" || values.iter().any(|v| v.contains('@')));
        let value = if values.is_empty() {
            None
        } else if secret {
            Some("\"<redacted>\"".to_owned())
        } else if values.len() == 1 && arg.get_value_delimiter().is_none() {
            Some(toml_literal(&values[0]))
        } else {
            Some(format!(
                "[{}]",
                values
                    .iter()
                    .map(|v| toml_literal(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        };
        match value {
            Some(v) => out.push_str(&format!("{long} = {v}  # {from}\n")),
            None => out.push_str(&format!("# {long} = (unset)\n")),
        }
    }
    out
}

/// Checks a Redis URL without connecting: `redis://`, `rediss://`,
/// `unix://`/`redis+unix://` as the redis crate parses them, and
/// `redis+cluster://HOST:PORT,...` seed lists. Other `redis+*` schemes are
/// left to the backplane.
fn check_redis_url(url: &str) -> Result<(), String> {
    let url = url.trim();
    if let Some(rest) = url.strip_prefix("redis+cluster://") {
        let rest = rest.split(['/', '?']).next().unwrap_or("");
        let hosts = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        let mut any = false;
        for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            let ok = host
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(format!("cluster seed `{host}` is not HOST:PORT"));
            }
            any = true;
        }
        return if any {
            Ok(())
        } else {
            Err("redis+cluster:// names no seed node".into())
        };
    }
    let scheme = url.split_once("://").map(|(s, _)| s);
    match scheme {
        Some("redis" | "rediss" | "unix" | "redis+unix") => {
            redis::Client::open(url)
                .map(|_| ())
                .map_err(|e| format!("invalid URL: {e}"))?;
            let host_part = url.split_once("://").map_or("", |(_, r)| r);
            if matches!(scheme, Some("redis" | "rediss")) {
                let host = host_part.rsplit_once('@').map_or(host_part, |(_, h)| h);
                if host.split(['/', '?', ':']).next().unwrap_or("").is_empty() {
                    return Err("invalid URL: no host".into());
                }
            }
            Ok(())
        }
        Some(s) if s.starts_with("redis+") => Ok(()),
        Some(s) => Err(format!(
            "unsupported scheme `{s}://` (expected redis://, rediss://, unix:// or redis+cluster://)"
        )),
        None => Err(format!(
            "`{url}` is not a URL (expected e.g. redis://127.0.0.1:6379)"
        )),
    }
}

/// A file that must exist and be readable.
fn check_readable(flag: &str, path: &Path) -> Result<(), ConfigError> {
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|e| ConfigError::new(flag, format!("cannot read {}: {e}", path.display())))
}

impl Config {
    /// How long a user's revocation is kept (`--revocation-ttl-secs`, or its
    /// default for the auth mode).
    pub fn revocation_ttl(&self) -> Duration {
        let secs = self.revocation_ttl_secs.unwrap_or(match self.auth {
            AuthMode::Jwt => 30 * 86_400,
            _ => self.token_ttl_secs,
        });
        Duration::from_secs(secs.max(1))
    }

    /// Checks the settings against each other and against the machine
    /// (files readable), without connecting to anything. The first problem
    /// found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.redis {
            check_redis_url(url).map_err(|p| ConfigError::new("--redis", p))?;
        }
        if self.redis_prefix.trim().is_empty() {
            return Err(ConfigError::new("--redis-prefix", "must not be empty"));
        }
        if self.redis_timeout_ms < 10 {
            return Err(ConfigError::new(
                "--redis-timeout-ms",
                format!("{} is below 10", self.redis_timeout_ms),
            ));
        }
        if let Some(id) = &self.node_id {
            if id.trim().is_empty() || id.chars().any(char::is_whitespace) {
                return Err(ConfigError::new(
                    "--node-id",
                    format!("`{id}` must be non-empty without spaces"),
                ));
            }
        }
        if let Some(ttl) = self.presence_ttl_ms {
            if ttl <= self.heartbeat_ms {
                return Err(ConfigError::new(
                    "--presence-ttl-ms",
                    format!("{ttl} must be above --heartbeat-ms ({})", self.heartbeat_ms),
                ));
            }
        }
        let secrets = self.secret.as_deref().unwrap_or_default();
        if secrets.iter().any(|s| s.trim().is_empty()) {
            return Err(ConfigError::new("--secret", "has an empty key"));
        }
        if self.auth == AuthMode::Token && secrets.is_empty() {
            return Err(ConfigError::new(
                "--secret",
                "required by --auth token (or RELAY_SECRET / RELAY_SECRET_FILE)",
            ));
        }
        if let Some(secrets) = &self.secret {
            crate::auth::check_secrets("--secret", secrets).map_err(|m| {
                let problem = m.strip_prefix("--secret ").unwrap_or(&m).to_owned();
                ConfigError::new("--secret", problem)
            })?;
        }
        if let Some(secrets) = &self.jwt_secret {
            crate::auth::check_secrets("--jwt-secret", secrets).map_err(|m| {
                let problem = m.strip_prefix("--jwt-secret ").unwrap_or(&m).to_owned();
                ConfigError::new("--jwt-secret", problem)
            })?;
        }
        if let Some(path) = &self.jwt_key {
            check_readable("--jwt-key", path)?;
            crate::auth::jwt::load_pem_keys(path).map_err(|m| ConfigError::new("--jwt-key", m))?;
        }
        if let Some(url) = &self.jwks_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(ConfigError::new(
                    "--jwks-url",
                    format!("`{url}` must be an http:// or https:// URL"),
                ));
            }
        }
        if self.auth == AuthMode::Jwt
            && self.jwt_key.is_none()
            && self.jwt_secret.is_none()
            && self.jwks_url.is_none()
        {
            return Err(ConfigError::new(
                "--auth",
                "jwt needs --jwt-key, --jwt-secret or --jwks-url",
            ));
        }
        if self.revocation_ttl_secs == Some(0) {
            return Err(ConfigError::new("--revocation-ttl-secs", "must be above 0"));
        }
        if let Some(keys) = &self.api_key {
            if keys.iter().any(|k| k.trim().is_empty()) {
                return Err(ConfigError::new("--api-key", "has an empty key"));
            }
        }
        if self.token_ttl_secs == 0 {
            return Err(ConfigError::new("--token-ttl-secs", "must be above 0"));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                check_readable("--tls-cert", cert)?;
                check_readable("--tls-key", key)?;
            }
            (Some(_), None) => return Err(ConfigError::new("--tls-key", "required by --tls-cert")),
            (None, Some(_)) => return Err(ConfigError::new("--tls-cert", "required by --tls-key")),
            (None, None) => {}
        }
        if self.max_connections == Some(0) {
            return Err(ConfigError::new("--max-connections", "must be above 0"));
        }
        if self.max_conns_per_ip == 0 {
            return Err(ConfigError::new("--max-conns-per-ip", "must be above 0"));
        }
        if self.max_conns_per_user == 0 {
            return Err(ConfigError::new("--max-conns-per-user", "must be above 0"));
        }
        if self.handshake_timeout_ms == 0 {
            return Err(ConfigError::new(
                "--handshake-timeout-ms",
                "must be above 0",
            ));
        }
        if let Some(origins) = &self.allowed_origins {
            for o in origins {
                let o = o.trim();
                let ok = o.split_once("://").is_some_and(|(scheme, host)| {
                    !scheme.is_empty() && !host.is_empty() && !host.contains('/')
                });
                if !ok && o != "null" {
                    return Err(ConfigError::new(
                        "--allowed-origins",
                        format!("`{o}` is not an origin like https://chat.example.com"),
                    ));
                }
            }
        }
        if let Some(admin) = self.admin_listen {
            if admin == self.listen && admin.port() != 0 {
                return Err(ConfigError::new(
                    "--admin-listen",
                    format!("{admin} is --listen too; give it another port"),
                ));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return Err(ConfigError::new(
                "--log-level",
                format!("`{}` is not a log filter: {e}", self.log_level),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_are_checked_without_connecting() {
        for ok in [
            "redis://127.0.0.1:6379",
            "redis://u:p@redis.example:6380/0",
            "redis://localhost",
            "redis+cluster://10.0.0.1:7000,10.0.0.2:7001/",
            // TLS (the redis crate's rustls support).
            "rediss://redis.example:6380",
        ] {
            assert_eq!(check_redis_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "localhost:6379",
            "http://127.0.0.1:6379",
            "redis://",
            "redis://:6379",
            "redis+cluster://",
            "redis+cluster://h1",
            "redis+cluster://h1:notaport",
        ] {
            assert!(check_redis_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secret_files_fill_the_variables_and_refuse_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "k1,k2\n").unwrap();
        let p = path.clone();
        let got = secret_files_from_env(|k| (k == "RELAY_SECRET_FILE").then(|| p.clone().into()))
            .unwrap();
        assert_eq!(got, vec![("RELAY_SECRET".into(), "k1,k2".into())]);
        let p = path.clone();
        let both = secret_files_from_env(|k| match k {
            "RELAY_SECRET_FILE" => Some(p.clone().into()),
            "RELAY_SECRET" => Some("x".into()),
            _ => None,
        });
        assert_eq!(both.unwrap_err().flag, "RELAY_SECRET_FILE");
    }
}
