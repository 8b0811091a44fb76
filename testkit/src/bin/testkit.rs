//! `testkit cluster`: a local relay cluster without containers, for
//! development (`scripts/cluster` wraps it): a private redis-server (or a
//! Redis Cluster), N relay nodes and, with `--nginx`, nginx in front of them
//! (docker/nginx.conf), all on 127.0.0.1, started with the same guards the
//! tests use. Prints the URLs and runs until Ctrl-C (or SIGTERM); when one
//! of its processes dies on its own, it stops everything, prints the end of
//! that process's log and exits 1.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use clap::{Parser, Subcommand};
use testkit::nginx::Nginx;
use testkit::process::tail;
use testkit::redis::RedisServer;
use testkit::redis_cluster::RedisCluster;
use testkit::{free_port, Node};

/// Dev-only process kit of relay.
#[derive(Parser)]
#[command(name = "testkit")]
struct Cli {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Subcommand)]
enum Sub {
    /// Starts Redis, relay nodes and (optionally) nginx on loopback until Ctrl-C.
    Cluster(ClusterArgs),
}

#[derive(Parser)]
struct ClusterArgs {
    /// Relay nodes.
    #[arg(long, short = 'n', default_value_t = 3)]
    nodes: usize,
    /// Put nginx in front of the nodes.
    #[arg(long)]
    nginx: bool,
    /// nginx's port (the cluster's URL) [default: a free one].
    #[arg(long)]
    port: Option<u16>,
    /// Back the nodes with a Redis Cluster of N masters instead of one redis-server.
    #[arg(long, value_name = "N")]
    redis_cluster: Option<usize>,
    /// The relay binary [default: RELAY_BIN, else the one beside this binary].
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// Keep the directory with the node logs on exit.
    #[arg(long)]
    keep: bool,
    /// Flags for every `relay serve`, after `--`.
    #[arg(last = true, allow_hyphen_values = true)]
    serve: Vec<String>,
}

/// The status of `GET path` (0 when unreachable).
fn http_status(addr: SocketAddr, path: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return 0;
    }
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn wait_ready(what: &str, addr: SocketAddr, log: &Path, secs: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while http_status(addr, "/readyz") != 200 {
        if Instant::now() > deadline {
            bail!(
                "{what} not ready after {secs}s; its log ends with:\n{}",
                tail(log, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Why the cluster stops.
enum Stop {
    /// Ctrl-C or SIGTERM: the shell's status for it (130, 143).
    Signal(i32),
    /// One of the processes died on its own.
    Died(String),
}

enum Backplane {
    Single(RedisServer),
    Cluster(RedisCluster),
}

fn cluster(args: ClusterArgs) -> Result<i32> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let bin = testkit::relay_bin(args.relay_bin.as_deref()).map_err(|e| anyhow!(e))?;
    let dir = tempfile::Builder::new()
        .prefix("relay-cluster.")
        .tempdir()?;
    let mut redis = match args.redis_cluster {
        Some(m) => Backplane::Cluster(RedisCluster::try_start(m, 0, &[]).map_err(|e| anyhow!(e))?),
        None => Backplane::Single(RedisServer::try_with_args(&[]).map_err(|e| anyhow!(e))?),
    };
    let redis_url = match &redis {
        Backplane::Single(r) => r.url(),
        Backplane::Cluster(c) => c.url(),
    };
    let drain = std::env::var("RELAY_DRAIN_SECS").unwrap_or_else(|_| "2".into());
    let format = std::env::var("RELAY_LOG_FORMAT").unwrap_or_else(|_| "text".into());
    let mut nodes = Vec::new();
    for k in 1..=args.nodes {
        let name = format!("node{k}");
        let node = Node::builder()
            .bin(&bin)
            .listen(format!("127.0.0.1:{}", free_port()))
            .args(["--redis", &redis_url, "--node-id", &name])
            .args(&args.serve)
            .inherit_log_level()
            .env("RELAY_DRAIN_SECS", &drain)
            .env("RELAY_LOG_FORMAT", &format)
            .log_in(dir.path(), &name)
            .start()
            .map_err(|e| anyhow!("{name}: {e}"))?;
        nodes.push(node);
    }
    for (k, node) in nodes.iter().enumerate() {
        wait_ready(&format!("node{}", k + 1), node.addr, &node.log, 60)?;
    }
    let mut nginx = match args.nginx {
        true => {
            let ups: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
            let lb = Nginx::try_start(&ups, args.port).map_err(|e| anyhow!(e))?;
            wait_ready("nginx", lb.addr, &lb.log_path(), 10)?;
            Some(lb)
        }
        false => None,
    };
    println!();
    if let Some(lb) = &nginx {
        println!(
            "  relay cluster ready: {}/   (WebSocket: {})\n",
            lb.http(),
            lb.url()
        );
        let ups: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
        println!("  nginx   {} -> {}", lb.addr, ups.join(" "));
    } else {
        println!("  relay cluster ready: {}\n", nodes[0].url());
    }
    println!("  redis   {redis_url}");
    for (k, n) in nodes.iter().enumerate() {
        println!("  node{}   {}/   log: {}", k + 1, n.http(), n.log.display());
    }
    println!(
        "  logs    {}\n\n  Ctrl-C stops everything.",
        dir.path().display()
    );
    let _ = std::io::stdout().flush();

    let stop = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => return anyhow::Ok(Stop::Signal(130)),
                    _ = term.recv() => return Ok(Stop::Signal(143)),
                    _ = tick.tick() => {}
                }
                for (k, n) in nodes.iter_mut().enumerate() {
                    if let Some(status) = n.exited() {
                        return Ok(Stop::Died(format!(
                            "node{} exited with {status}; its log ends with:\n{}",
                            k + 1,
                            tail(&n.log, 30)
                        )));
                    }
                }
                if let Some(lb) = nginx.as_mut() {
                    if lb.exited() {
                        return Ok(Stop::Died(format!(
                            "nginx exited:\n{}",
                            tail(&lb.log_path(), 30)
                        )));
                    }
                }
                let redis_gone = match &mut redis {
                    Backplane::Single(r) => r.exited().then(|| tail(&r.log_path(), 30)),
                    Backplane::Cluster(c) => c.exited().map(|p| format!("member {p}")),
                };
                if let Some(log) = redis_gone {
                    return Ok(Stop::Died(format!("redis exited:\n{log}")));
                }
            }
        })?;
    eprintln!("testkit: stopping");
    // Newest first: nginx, then the nodes (they drain), then Redis.
    drop(nginx);
    let grace = Duration::from_secs(drain.parse::<u64>().unwrap_or(2) + 5);
    for n in nodes.iter_mut() {
        n.sigterm();
    }
    for n in nodes.iter_mut() {
        n.terminate(grace);
    }
    drop(redis);
    if args.keep || matches!(stop, Stop::Died(_)) {
        eprintln!("testkit: logs kept in {}", dir.keep().display());
    }
    match stop {
        Stop::Died(why) => {
            eprintln!("testkit: {why}");
            Ok(1)
        }
        Stop::Signal(code) => Ok(code),
    }
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Sub::Cluster(args) => cluster(args).unwrap_or_else(|e| {
            eprintln!("testkit: {e:#}");
            1
        }),
    };
    std::process::exit(code);
}
