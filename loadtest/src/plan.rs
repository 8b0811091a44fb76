//! The plan of a run, made before anything starts: the flags resolved for
//! the scenario (with warnings), the machine it runs on, how many worker
//! processes with how many threads, and each worker's share of the clients.

use anyhow::bail;
use serde_json::json;

use crate::args::{Affinity, RunArgs, Scenario};
use crate::common::WorkerSpec;

/// The CPUs this process may use.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The machine, for the report.
pub(crate) fn machine() -> serde_json::Value {
    let nproc = cores();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({
        "nproc": nproc,
        "mem_total_gib": (mem_kb as f64 / 1048576.0 * 10.0).round() / 10.0,
        "cpu": cpu,
        "loadavg_at_start": load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    })
}

/// Resolves the per-scenario defaults into `args`; returns the warnings.
pub(crate) fn resolve(args: &mut RunArgs) -> anyhow::Result<Vec<String>> {
    let mut warnings = Vec::new();
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if !(args.duration >= 0.0 && args.drain >= 0.0 && args.settle >= 0.0) {
        bail!("--duration, --drain and --settle must be >= 0");
    }
    if args.duration > 3600.0 {
        bail!("--duration is capped at 3600 s");
    }
    if !(0.0..=1.0).contains(&args.max_loss) {
        bail!("--max-loss is a share of the expected deliveries: 0..1");
    }
    if args.max_p99_ms.is_some_and(|m| m.is_nan() || m <= 0.0) {
        bail!("--max-p99-ms must be above 0");
    }
    let probe = format!("{}abcdef0u{}g99", args.name_prefix, args.clients);
    if !relay::protocol::is_valid_name(&probe) {
        bail!(
            "--name-prefix {:?} makes invalid names (like {probe:?})",
            args.name_prefix
        );
    }
    args.room_size = Some(args.room_size());
    args.rate = Some(args.rate());
    if args.scenario == Scenario::Fanout {
        args.publishers = Some(args.publishers());
        let per = args.msg_rate / args.publishers() as f64;
        if per > 15.0 {
            warnings.push(format!(
                "each publisher sends {per:.1} msg/s: near or above the server's default \
                 per-connection limit (20 commands/s); raise --publishers"
            ));
        }
    }
    if args.rate() > 15.0 {
        warnings.push(
            "--rate above 15/s per client is near the server's default limit of 20 commands/s"
                .into(),
        );
    }
    args.storm_at = Some(args.storm_at());
    if args.affinity.is_none() {
        let independent = args.embedded && args.spawn_cluster.unwrap_or(1) > 1;
        args.affinity = Some(if independent {
            Affinity::Room
        } else {
            Affinity::Client
        });
        if independent {
            warnings.push("--embedded with several nodes: independent in-memory nodes, clients spread by room".into());
            if matches!(args.scenario, Scenario::Mixed) {
                warnings.push("mixed sends DMs and joins rooms across nodes: independent nodes will lose those".into());
            }
        }
    }
    if args.seed.is_none() {
        args.seed = Some(rand::random());
    }
    if matches!(args.scenario, Scenario::Dm) && !args.tokens.is_empty() {
        warnings.push("dm needs guest names: with --token no direct messages are sent".into());
    }
    Ok(warnings)
}

/// The `--worker-threads` given to each spawned node: `--node-threads`, else
/// the cores divided among the nodes (at least 1). `None`: the node's own
/// default (asked for with 0, or set through `--server-arg`).
pub(crate) fn node_threads(args: &RunArgs) -> Option<usize> {
    let n = args.spawn_cluster?;
    if args
        .server_args
        .iter()
        .any(|a| a.starts_with("--worker-threads"))
    {
        return None;
    }
    let cores = cores();
    match args.node_threads {
        Some(0) => None,
        Some(t) => Some(t),
        None => Some((cores / n.max(1)).max(1)),
    }
}

/// Worker processes and their shares.
pub(crate) struct Plan {
    pub(crate) workers: usize,
    pub(crate) threads: usize,
    pub(crate) run_id: String,
    pub(crate) specs: Vec<WorkerSpec>,
}

impl Plan {
    /// Spreads `args.clients` over worker processes under RLIMIT_NOFILE
    /// `nofile`.
    pub(crate) fn new(args: &RunArgs, nofile: u64) -> anyhow::Result<Plan> {
        let clients = args.clients;
        let per_worker = args
            .per_worker
            .unwrap_or_else(|| nofile.saturating_sub(1000).max(100))
            .max(1);
        let cores = cores();
        // One single-threaded worker per core by default: a worker process per
        // core costs less per delivery than one process whose runtime threads
        // wake and steal from each other (BENCHMARKS.md, "Load generator cost").
        let workers = args
            .workers
            .unwrap_or_else(|| (clients.div_ceil(per_worker) as usize).max(cores))
            .clamp(1, clients.max(1) as usize);
        if clients.div_ceil(workers as u64) > nofile.saturating_sub(200) {
            bail!(
                "{} clients per worker exceed RLIMIT_NOFILE {nofile}: use more --workers",
                clients.div_ceil(workers as u64)
            );
        }
        let threads = args.threads.unwrap_or((cores / workers).max(1));
        let run_id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let per = clients / workers as u64;
        let extra = clients % workers as u64;
        let mut lo = 0;
        let mut specs = Vec::new();
        for w in 0..workers {
            let n = per + u64::from((w as u64) < extra);
            specs.push(WorkerSpec {
                args: args.clone(),
                worker: w,
                workers,
                lo,
                hi: lo + n,
                run_id: run_id.clone(),
                seed: args.seed.unwrap_or(0),
                threads,
                connect_rate: args.connect_rate / workers as f64,
                connect_concurrency: (args.connect_concurrency / workers).max(1),
            });
            lo += n;
        }
        Ok(Plan {
            workers,
            threads,
            run_id,
            specs,
        })
    }
}
