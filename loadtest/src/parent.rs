//! The parent process: plans and starts the workers, shows live progress,
//! samples the servers, starts the measured phase on every worker at once,
//! merges the reports and accounts for every acked message.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::args::{Affinity, RunArgs, Scenario};
use crate::cluster::{self, Cluster};
use crate::common::{
    hist_from_b64, new_hist, now_ns, AckList, Counters, MemberOut, Pcts, Progress, StartCmd,
    WorkerMsg, WorkerReport, WorkerSpec,
};
use crate::procstat;
use crate::worker::{raise_nofile, resolve_targets};

/// A sampled server process.
#[derive(Debug, Clone, Default, Serialize)]
struct ServerStats {
    label: String,
    pid: u32,
    rss_before_kb: u64,
    rss_connected_kb: u64,
    rss_max_kb: u64,
    rss_end_kb: u64,
    cpu_s_connect: f64,
    cpu_s_run: f64,
    #[serde(skip)]
    cpu_before: f64,
    #[serde(skip)]
    cpu_connected: f64,
    #[serde(skip)]
    cpu_start: f64,
}

impl ServerStats {
    fn new(label: String, pid: u32) -> Self {
        let s = procstat::sample(pid).unwrap_or_default();
        ServerStats {
            label,
            pid,
            rss_before_kb: s.rss_kb,
            rss_max_kb: s.rss_kb,
            cpu_before: s.cpu_s,
            ..Default::default()
        }
    }

    fn poll(&mut self) -> Option<procstat::Sample> {
        let s = procstat::sample(self.pid)?;
        self.rss_max_kb = self.rss_max_kb.max(s.rss_kb);
        Some(s)
    }
}

/// Loss accounting over all acks and memberships.
#[derive(Debug, Default, Serialize)]
struct Accounting {
    /// Deliveries that had to happen: for each membership, the messages acked
    /// by other connections in its stream with id > its join point, acked
    /// before it left.
    expected: u64,
    delivered: u64,
    lost: u64,
    /// Acked messages per stream kind.
    acked_room_messages: u64,
    acked_direct_messages: u64,
    /// Two acks with the same id in one room.
    duplicate_ids: u64,
    memberships: u64,
    /// Messages acked within --leave-grace-ms before their receiver left
    /// (or closed): in flight when it left, so they may or may not arrive.
    /// Not in `expected`.
    in_flight_at_leave_delivered: u64,
    in_flight_at_leave_undelivered: u64,
    /// Up to 20 lost deliveries: "stream id=N to sid=S".
    lost_examples: Vec<String>,
}

fn account(
    acks: &mut BTreeMap<String, AckList>,
    members: &[MemberOut],
    grace_ns: u64,
) -> Accounting {
    let mut a = Accounting::default();
    for (stream, list) in acks.iter_mut() {
        list.sort_unstable();
        if stream.starts_with("r:") {
            a.acked_room_messages += list.len() as u64;
            a.duplicate_ids += list.windows(2).filter(|w| w[0].0 == w[1].0).count() as u64;
        } else {
            a.acked_direct_messages += list.len() as u64;
        }
    }
    a.memberships = members.len() as u64;
    for m in members {
        let Some(list) = acks.get(&m.s) else { continue };
        let start = list.partition_point(|x| x.0 <= m.after);
        let ranges = &m.ids.0;
        let mut ri = 0;
        for &(id, ns, sid) in &list[start..] {
            if sid == m.sid {
                continue;
            }
            if m.end.is_some_and(|end| ns >= end) {
                continue;
            }
            while ri < ranges.len() && ranges[ri].1 < id {
                ri += 1;
            }
            let got = ri < ranges.len() && ranges[ri].0 <= id;
            if m.end.is_some_and(|end| ns.saturating_add(grace_ns) >= end) {
                if got {
                    a.in_flight_at_leave_delivered += 1;
                } else {
                    a.in_flight_at_leave_undelivered += 1;
                }
                continue;
            }
            a.expected += 1;
            if got {
                a.delivered += 1;
            } else {
                a.lost += 1;
                if a.lost_examples.len() < 20 {
                    a.lost_examples.push(format!(
                        "{} id={id} to sid={}:{}",
                        m.s,
                        m.sid >> 16,
                        m.sid & 0xffff
                    ));
                }
            }
        }
    }
    a
}

struct WorkerProc {
    child: Child,
    stdin: Option<ChildStdin>,
}

enum Line {
    Msg(usize, WorkerMsg),
    Eof(usize),
    Bad(usize, String),
}

fn fmt_n(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (k, c) in s.chars().enumerate() {
        if k > 0 && (s.len() - k).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn machine() -> serde_json::Value {
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

pub(crate) fn main(args: RunArgs) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

fn resolve(args: &mut RunArgs) -> anyhow::Result<Vec<String>> {
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

async fn run(mut args: RunArgs) -> anyhow::Result<i32> {
    let warnings = resolve(&mut args)?;
    let nofile = raise_nofile();
    let machine = machine();

    let node_threads = node_threads(&args);
    let mut cluster = match args.spawn_cluster {
        Some(n) => {
            let mut server_args = args.server_args.clone();
            if let Some(t) = node_threads {
                server_args.push(format!("--worker-threads={t}"));
            }
            let c = Cluster::start(
                n,
                args.embedded,
                args.relay_bin.as_deref(),
                &cluster::RedisSpec {
                    server_bin: &args.redis_bin,
                    cli_bin: &args.redis_cli_bin,
                    masters: args.redis_cluster,
                },
                &server_args,
            )?;
            eprintln!(
                "spawned {} node(s){} from {} (logs in {})",
                c.urls.len(),
                c.redis_url
                    .as_deref()
                    .map(|u| format!(" + redis {u}"))
                    .unwrap_or_default(),
                c.relay_bin.display(),
                c.dir.display()
            );
            args.urls.extend(c.urls.iter().cloned());
            Some(c)
        }
        None => None,
    };
    resolve_targets(&args.urls)?;
    let result = drive(
        &args,
        &warnings,
        nofile,
        machine,
        cluster.as_ref(),
        node_threads,
    )
    .await;
    if let Some(c) = cluster.as_mut() {
        c.stop();
    }
    result
}

#[allow(clippy::too_many_lines)]
async fn drive(
    args: &RunArgs,
    warnings: &[String],
    nofile: u64,
    machine: serde_json::Value,
    cluster: Option<&Cluster>,
    node_threads: Option<usize>,
) -> anyhow::Result<i32> {
    for w in warnings {
        eprintln!("warning: {w}");
    }
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

    let mut servers: Vec<ServerStats> = Vec::new();
    if let Some(c) = cluster {
        for (k, pid) in c.node_pids.iter().enumerate() {
            servers.push(ServerStats::new(format!("node{}", k + 1), *pid));
        }
    }
    for pid in &args.server_pids {
        if procstat::sample(*pid).is_none() {
            bail!("--server-pid {pid}: no such process");
        }
        servers.push(ServerStats::new(format!("pid{pid}"), *pid));
    }
    let mut redis = cluster
        .and_then(|c| c.redis_pid)
        .map(|pid| ServerStats::new("redis".into(), pid));

    // Start the workers.
    let run_id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let exe = std::env::current_exe().context("own executable")?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Line>();
    let mut procs = Vec::new();
    let per = clients / workers as u64;
    let extra = clients % workers as u64;
    let mut lo = 0;
    for w in 0..workers {
        let n = per + u64::from((w as u64) < extra);
        let spec = WorkerSpec {
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
        };
        lo += n;
        let mut child = Command::new(&exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker")?;
        let mut stdin = child.stdin.take().context("worker stdin")?;
        let line = serde_json::to_string(&spec)? + "\n";
        stdin.write_all(line.as_bytes()).await?;
        stdin.flush().await?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            loop {
                match lines.next_line().await {
                    Ok(Some(l)) => {
                        let msg = match serde_json::from_str::<WorkerMsg>(&l) {
                            Ok(m) => Line::Msg(w, m),
                            Err(e) => Line::Bad(
                                w,
                                format!("{e}: {}", l.chars().take(200).collect::<String>()),
                            ),
                        };
                        if tx.send(msg).is_err() {
                            break;
                        }
                    }
                    _ => {
                        let _ = tx.send(Line::Eof(w));
                        break;
                    }
                }
            }
        });
        procs.push(WorkerProc {
            child,
            stdin: Some(stdin),
        });
    }
    drop(tx);

    // Live display.
    let tty = std::io::stderr().is_terminal() && !args.no_progress;
    let bar = if tty {
        let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        b.enable_steady_tick(Duration::from_millis(200));
        b
    } else {
        ProgressBar::hidden()
    };
    eprintln!(
        "loadtest {}: {} clients over {} worker(s) × {} thread(s), {} target(s), run {run_id}",
        args.scenario.name(),
        fmt_n(clients),
        workers,
        threads,
        args.urls.len()
    );

    let mut progress: Vec<Progress> = vec![Progress::default(); workers];
    let mut ready = vec![false; workers];
    let mut reports: Vec<Option<WorkerReport>> = (0..workers).map(|_| None).collect();
    let mut last_rate = (Instant::now(), 0u64);
    let mut rate_now = 0.0;
    let mut last_plain = Instant::now();
    let mut phase = "connecting";
    let show = |phase: &str, progress: &[Progress], rate_now: f64, last_plain: &mut Instant| {
        let sum = |f: fn(&Progress) -> u64| progress.iter().map(f).sum::<u64>();
        let p99 = progress.iter().map(|p| p.p99_us).max().unwrap_or(0);
        let msg = format!(
            "{phase:<10} open {}/{} (failed {}) | sent {} | recv {} | {:.0} msg/s | p99 {:.1} ms",
            fmt_n(sum(|p| p.open)),
            fmt_n(clients),
            fmt_n(sum(|p| p.failed)),
            fmt_n(sum(|p| p.sent)),
            fmt_n(sum(|p| p.received)),
            rate_now,
            p99 as f64 / 1000.0
        );
        if tty {
            bar.set_message(msg);
        } else if !args.no_progress && last_plain.elapsed() >= Duration::from_secs(2) {
            *last_plain = Instant::now();
            eprintln!("{msg}");
        }
    };

    let connect_budget = if args.connect_rate > 0.0 {
        clients as f64 / args.connect_rate
    } else {
        clients as f64 / 1000.0
    } + 3.0 * args.connect_timeout
        + 30.0;
    let connect_deadline = Instant::now() + Duration::from_secs_f64(connect_budget);
    let connect_started = Instant::now();
    let handle_line = |line: Line,
                       progress: &mut Vec<Progress>,
                       ready: &mut Vec<bool>,
                       reports: &mut Vec<Option<WorkerReport>>|
     -> anyhow::Result<()> {
        match line {
            Line::Msg(w, WorkerMsg::Progress(p)) => progress[w] = p,
            Line::Msg(w, WorkerMsg::Ready(p)) => {
                progress[w] = p;
                ready[w] = true;
            }
            Line::Msg(w, WorkerMsg::Report(r)) => reports[w] = Some(*r),
            Line::Bad(w, e) => bail!("worker {w} printed garbage: {e}"),
            Line::Eof(w) => {
                if reports[w].is_none() {
                    bail!("worker {w} exited without a report (see its stderr above)");
                }
            }
        }
        Ok(())
    };

    // Phase 1: connect and join.
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    while !ready.iter().all(|r| *r) {
        tokio::select! {
            line = rx.recv() => {
                let Some(line) = line else { bail!("workers went away") };
                handle_line(line, &mut progress, &mut ready, &mut reports)?;
            }
            _ = tick.tick() => {
                for s in servers.iter_mut() { s.poll(); }
                if Instant::now() > connect_deadline {
                    eprintln!("warning: connect phase did not finish in {connect_budget:.0} s; starting anyway");
                    break;
                }
            }
        }
        show(phase, &progress, 0.0, &mut last_plain);
    }
    let connect_wall = connect_started.elapsed().as_secs_f64();
    let open_connected: u64 = progress.iter().map(|p| p.open).sum();

    // Settle, then sample the "connected" figures.
    phase = "settling";
    let settle_until = Instant::now() + Duration::from_secs_f64(args.settle);
    while Instant::now() < settle_until {
        tokio::select! {
            line = rx.recv() => {
                let Some(line) = line else { bail!("workers went away") };
                handle_line(line, &mut progress, &mut ready, &mut reports)?;
            }
            _ = tokio::time::sleep_until(settle_until) => {}
        }
        show(phase, &progress, 0.0, &mut last_plain);
    }
    for s in servers.iter_mut().chain(redis.iter_mut()) {
        if let Some(x) = s.poll() {
            s.rss_connected_kb = x.rss_kb;
            s.cpu_connected = x.cpu_s;
            s.cpu_s_connect = x.cpu_s - s.cpu_before;
        }
    }

    // Phase 2: the measured run.
    let start_ns = now_ns() + 300_000_000;
    let line = serde_json::to_string(&StartCmd { start_ns })? + "\n";
    for p in procs.iter_mut() {
        if let Some(stdin) = p.stdin.as_mut() {
            stdin.write_all(line.as_bytes()).await?;
            stdin.flush().await?;
        }
    }
    let start_at = Instant::now() + Duration::from_nanos(start_ns.saturating_sub(now_ns()));
    let end_at = start_at + Duration::from_secs_f64(args.duration + args.drain);
    let watchdog = end_at + Duration::from_secs_f64(30.0 + 3.0 * args.connect_timeout);
    let mut started = false;
    let mut ended = false;
    let mut server_end: Vec<Option<procstat::Sample>> = vec![None; servers.len()];
    let mut redis_end: Option<procstat::Sample> = None;
    while reports.iter().any(Option::is_none) {
        tokio::select! {
            line = rx.recv() => {
                let Some(line) = line else { bail!("workers went away") };
                handle_line(line, &mut progress, &mut ready, &mut reports)?;
            }
            _ = tokio::time::sleep_until(start_at), if !started => {
                started = true;
                phase = "running";
                for s in servers.iter_mut().chain(redis.iter_mut()) {
                    if let Some(x) = s.poll() { s.cpu_start = x.cpu_s; }
                }
                last_rate = (Instant::now(), progress.iter().map(|p| p.received).sum());
            }
            _ = tokio::time::sleep_until(end_at), if started && !ended => {
                ended = true;
                phase = "collecting";
                for (k, s) in servers.iter_mut().enumerate() { server_end[k] = s.poll(); }
                if let Some(r) = redis.as_mut() { redis_end = r.poll(); }
            }
            _ = tick.tick() => {
                for s in servers.iter_mut() { s.poll(); }
                if started && !ended && Instant::now() > start_at + Duration::from_secs_f64(args.duration) {
                    phase = "draining";
                }
                let received: u64 = progress.iter().map(|p| p.received).sum();
                let dt = last_rate.0.elapsed().as_secs_f64();
                if dt >= 1.0 {
                    rate_now = received.saturating_sub(last_rate.1) as f64 / dt;
                    last_rate = (Instant::now(), received);
                }
                if Instant::now() > watchdog {
                    for p in procs.iter_mut() { let _ = p.child.start_kill(); }
                    bail!("workers did not report within 30 s after the end of the run; killed them");
                }
            }
        }
        show(phase, &progress, rate_now, &mut last_plain);
    }
    bar.finish_and_clear();
    for p in procs.iter_mut() {
        p.stdin.take();
        let _ = tokio::time::timeout(Duration::from_secs(5), p.child.wait()).await;
    }
    for (k, s) in servers.iter_mut().enumerate() {
        let end = server_end[k].or_else(|| procstat::sample(s.pid));
        if let Some(e) = end {
            s.cpu_s_run = e.cpu_s - s.cpu_start;
            s.rss_end_kb = e.rss_kb;
        }
    }
    if let Some(r) = redis.as_mut() {
        if let Some(e) = redis_end.or_else(|| procstat::sample(r.pid)) {
            r.cpu_s_run = e.cpu_s - r.cpu_start;
            r.rss_end_kb = e.rss_kb;
        }
    }

    // Merge.
    let mut counters = Counters::default();
    let mut h: BTreeMap<&str, Histogram<u64>> = BTreeMap::new();
    for name in [
        "latency",
        "latency_same_node",
        "latency_cross_node",
        "connect",
        "ack",
        "recovery",
        "rejoin",
        "lag",
    ] {
        h.insert(name, new_hist());
    }
    let mut acks: BTreeMap<String, AckList> = BTreeMap::new();
    let mut members = Vec::new();
    let mut loadgen_cpu = 0.0;
    let mut loadgen_rss_kb = 0;
    let mut first_ns = u64::MAX;
    let mut last_ns = 0;
    for r in reports.into_iter().flatten() {
        counters.add(&r.counters);
        for (name, b64) in [
            ("latency", &r.h_latency),
            ("latency_same_node", &r.h_latency_same_node),
            ("latency_cross_node", &r.h_latency_cross_node),
            ("connect", &r.h_connect),
            ("ack", &r.h_ack),
            ("recovery", &r.h_recovery),
            ("rejoin", &r.h_rejoin),
            ("lag", &r.h_lag),
        ] {
            let x = hist_from_b64(b64)?;
            if let Some(t) = h.get_mut(name) {
                t.add(&x)
                    .map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
            }
        }
        for (stream, mut list) in r.acks {
            acks.entry(stream).or_default().append(&mut list);
        }
        members.extend(r.members);
        loadgen_cpu += r.cpu_s;
        loadgen_rss_kb += r.rss_kb;
        if r.connect_first_ns > 0 {
            first_ns = first_ns.min(r.connect_first_ns);
        }
        last_ns = last_ns.max(r.connect_last_ns);
    }
    let acc = account(&mut acks, &members, args.leave_grace_ms * 1_000_000);
    let pct = |name: &str| h.get(name).map(Pcts::of).unwrap_or_default();
    let latency = pct("latency");
    let latency_same_node = pct("latency_same_node");
    let latency_cross_node = pct("latency_cross_node");
    let connect = pct("connect");
    let ack = pct("ack");
    let recovery = pct("recovery");
    let rejoin = pct("rejoin");
    let lag = pct("lag");

    let duration = args.duration.max(1e-9);
    let deliveries = counters.live_received;
    let deliveries_per_s = deliveries as f64 / duration;
    let connect_span_s = if last_ns > first_ns {
        (last_ns - first_ns) as f64 / 1e9
    } else {
        0.0
    };
    let connect_rate_achieved = if connect_span_s > 0.0 {
        counters.connect_ok as f64 / connect_span_s
    } else {
        0.0
    };
    let server_cpu: f64 = servers.iter().map(|s| s.cpu_s_run).sum();
    let server_cpu_per_m = if deliveries > 0 {
        server_cpu / (deliveries as f64 / 1e6)
    } else {
        0.0
    };
    let rss_delta_kb: i64 = servers
        .iter()
        .map(|s| s.rss_connected_kb as i64 - s.rss_before_kb as i64)
        .sum();
    let rss_per_socket = if open_connected > 0 && !servers.is_empty() {
        rss_delta_kb as f64 * 1024.0 / open_connected as f64
    } else {
        0.0
    };
    let connect_failures: u64 = counters.connect_fail.values().sum();
    let server_closes: u64 = counters.server_closes.values().sum();

    let duplicates = counters.duplicates + counters.duplicates_of_history;
    let mut failures: Vec<String> = [
        (acc.lost, "deliveries lost"),
        (counters.out_of_order, "out-of-order room messages"),
        (duplicates, "duplicate deliveries"),
        (acc.duplicate_ids, "message ids assigned twice"),
        (counters.self_echo, "messages echoed to their sender"),
        (counters.stray, "messages for rooms not joined"),
        (server_closes, "connections closed by the server"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    if connect_failures > args.allow_connect_failures {
        failures.push(format!("{connect_failures} connect failures"));
    }
    let pass = failures.is_empty();

    let report = json!({
        "tool": "relay loadtest",
        "run_id": run_id,
        "machine": machine,
        "config": {
            "scenario": args.scenario.name(),
            "clients": clients,
            "workers": workers,
            "threads_per_worker": threads,
            "urls": args.urls,
            "encoding": args.encoding,
            "affinity": args.affinity,
            "duration_s": args.duration,
            "drain_s": args.drain,
            "settle_s": args.settle,
            "connect_rate": args.connect_rate,
            "connect_concurrency": args.connect_concurrency,
            "room_size": args.room_size(),
            "rate_per_client": args.rate(),
            "msg_rate": args.msg_rate,
            "publishers": args.publishers,
            "payload": args.payload,
            "lifetime_s": args.lifetime,
            "storm_at_s": args.storm_at,
            "storm_spread_ms": args.storm_spread_ms,
            "seed": args.seed,
            "spawn_cluster": args.spawn_cluster,
            "node_threads": node_threads,
            "redis_cluster_masters": args.redis_cluster,
            "embedded": args.embedded,
            "command": std::env::args().collect::<Vec<_>>().join(" "),
        },
        "connect": {
            "attempted": counters.connect_attempts,
            "ok": counters.connect_ok,
            "failed": connect_failures,
            "failed_by_cause": counters.connect_fail,
            "open_at_start": open_connected,
            "phase_wall_s": connect_wall,
            "rate_achieved_per_s": connect_rate_achieved,
            "time_ms": connect,
            "reconnect_attempts": counters.reconnect_attempts,
            "reconnect_ok": counters.reconnect_ok,
            "reconnect_failed_by_cause": counters.reconnect_fail,
        },
        "messages": {
            "sent": counters.sent,
            "acked": counters.acked,
            "unacked": counters.unacked,
            "errors": counters.errors,
            "sends_skipped": counters.sends_skipped,
            "ack_ms": ack,
            "publisher_lag_ms": lag,
            "typing_sent": counters.typing_sent,
            "joins": counters.joins,
            "leaves": counters.leaves,
        },
        "delivery": {
            "expected": acc.expected,
            "delivered": acc.delivered,
            "lost": acc.lost,
            "lost_examples": acc.lost_examples,
            "leave_grace_ms": args.leave_grace_ms,
            "in_flight_at_leave_delivered": acc.in_flight_at_leave_delivered,
            "in_flight_at_leave_undelivered": acc.in_flight_at_leave_undelivered,
            "live_received": counters.live_received,
            "history_received": counters.history_received,
            "deliveries_per_s": deliveries_per_s,
            "duplicates": counters.duplicates,
            "duplicates_of_history": counters.duplicates_of_history,
            "duplicate_ids": acc.duplicate_ids,
            "out_of_order": counters.out_of_order,
            "dm_out_of_order": counters.dm_out_of_order,
            "self_echo": counters.self_echo,
            "stray": counters.stray,
            "acked_room_messages": acc.acked_room_messages,
            "acked_direct_messages": acc.acked_direct_messages,
            "memberships": acc.memberships,
            "latency_ms": latency,
            "latency_same_node_ms": latency_same_node,
            "latency_cross_node_ms": latency_cross_node,
            "typing_received": counters.typing_received,
            "user_joined": counters.user_joined,
            "user_left": counters.user_left,
            "other_frames": counters.other_frames,
            "undecodable": counters.undecodable,
        },
        "closes": {
            "by_server": counters.server_closes,
            "churned": counters.churned,
        },
        "storm": {
            "dropped": counters.storm_dropped,
            "rejoined": counters.storm_rejoined,
            "recovered_true": counters.recovered_true,
            "recovered_false": counters.recovered_false,
            "recovery_ms": recovery,
            "rejoin_ms": rejoin,
        },
        "servers": servers,
        "redis": redis,
        "server_totals": {
            "rss_delta_kb_at_connected": rss_delta_kb,
            "rss_per_socket_bytes": rss_per_socket,
            "cpu_s_run": server_cpu,
            "cpu_s_per_1m_deliveries": server_cpu_per_m,
        },
        "loadgen": {
            "cpu_s_run": loadgen_cpu,
            "rss_kb_end": loadgen_rss_kb,
        },
        "pass": pass,
        "failures": failures,
    });
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }

    // Human table.
    let ms = |p: &Pcts| {
        format!(
            "p50 {:.2} | p90 {:.2} | p99 {:.2} | p99.9 {:.2} | max {:.2} ms (n={})",
            p.p50_ms,
            p.p90_ms,
            p.p99_ms,
            p.p999_ms,
            p.max_ms,
            fmt_n(p.count)
        )
    };
    let mut out = String::new();
    let mut row = |k: &str, v: String| out.push_str(&format!("  {k:<26} {v}\n"));
    println!(
        "\nrelay loadtest: {} | {} clients | {} s + {} s drain | {} | {} target(s)",
        args.scenario.name(),
        fmt_n(clients),
        args.duration,
        args.drain,
        match args.encoding {
            crate::args::EncodingArg::Json => "json",
            crate::args::EncodingArg::Msgpack => "msgpack",
        },
        args.urls.len()
    );
    row(
        "connect",
        format!(
            "{} ok / {} attempted, {} failed {:?}, {:.0}/s achieved, phase {:.1} s",
            fmt_n(counters.connect_ok),
            fmt_n(counters.connect_attempts),
            fmt_n(connect_failures),
            counters.connect_fail,
            connect_rate_achieved,
            connect_wall
        ),
    );
    row("connect time", ms(&connect));
    if counters.reconnect_attempts > 0 {
        row(
            "reconnects",
            format!(
                "{} ok / {} attempted, failures {:?}",
                fmt_n(counters.reconnect_ok),
                fmt_n(counters.reconnect_attempts),
                counters.reconnect_fail
            ),
        );
    }
    row(
        "sent / acked / unacked",
        format!(
            "{} / {} / {}   errors {:?}  skipped {}",
            fmt_n(counters.sent),
            fmt_n(counters.acked),
            fmt_n(counters.unacked),
            counters.errors,
            fmt_n(counters.sends_skipped)
        ),
    );
    if ack.count > 0 {
        row("send→ack", ms(&ack));
    }
    row(
        "expected / delivered",
        format!(
            "{} / {}  (lost {}, live received {}, via history {})",
            fmt_n(acc.expected),
            fmt_n(acc.delivered),
            fmt_n(acc.lost),
            fmt_n(counters.live_received),
            fmt_n(counters.history_received)
        ),
    );
    if acc.in_flight_at_leave_delivered + acc.in_flight_at_leave_undelivered > 0 {
        row(
            "in flight at leave",
            format!(
                "{} delivered, {} not (acked < {} ms before the receiver left; not counted)",
                fmt_n(acc.in_flight_at_leave_delivered),
                fmt_n(acc.in_flight_at_leave_undelivered),
                args.leave_grace_ms
            ),
        );
    }
    row("deliveries/s", format!("{deliveries_per_s:.0}"));
    row("latency (end to end)", ms(&latency));
    if latency_cross_node.count > 0 {
        row("  same node", ms(&latency_same_node));
        row("  across nodes", ms(&latency_cross_node));
    }
    row(
        "violations",
        format!(
            "dup {} | dup-of-history {} | out-of-order {} | self-echo {} | stray {} | dup ids {}",
            counters.duplicates,
            counters.duplicates_of_history,
            counters.out_of_order,
            counters.self_echo,
            counters.stray,
            acc.duplicate_ids
        ),
    );
    if counters.dm_out_of_order > 0 {
        row("dm reordered", fmt_n(counters.dm_out_of_order));
    }
    if !counters.server_closes.is_empty() {
        row("closed by server", format!("{:?}", counters.server_closes));
    }
    if args.scenario == Scenario::ReconnectStorm {
        row(
            "storm",
            format!(
                "dropped {} rejoined {} recovered {} not-recovered {}",
                fmt_n(counters.storm_dropped),
                fmt_n(counters.storm_rejoined),
                fmt_n(counters.recovered_true),
                fmt_n(counters.recovered_false)
            ),
        );
        row("recovery (from drop)", ms(&recovery));
        row("rejoin (from reconnect)", ms(&rejoin));
    }
    if args.scenario == Scenario::Churn {
        row("churned", fmt_n(counters.churned));
    }
    if lag.count > 0 {
        row("publisher lag", ms(&lag));
    }
    for s in &servers {
        row(
            &format!("server {} (pid {})", s.label, s.pid),
            format!(
                "RSS {} → {} KiB connected (max {}), CPU {:.2} s connecting, {:.2} s run",
                fmt_n(s.rss_before_kb),
                fmt_n(s.rss_connected_kb),
                fmt_n(s.rss_max_kb),
                s.cpu_s_connect,
                s.cpu_s_run
            ),
        );
    }
    if let Some(r) = &redis {
        row(
            "redis",
            format!(
                "RSS {} KiB, CPU {:.2} s run",
                fmt_n(r.rss_end_kb),
                r.cpu_s_run
            ),
        );
    }
    if !servers.is_empty() {
        row(
            "server per socket",
            format!(
                "{:.0} B RSS ({:.2} KiB) over {} open sockets",
                rss_per_socket,
                rss_per_socket / 1024.0,
                fmt_n(open_connected)
            ),
        );
        row(
            "server CPU per 1M deliv.",
            format!(
                "{server_cpu_per_m:.2} s ({server_cpu:.2} CPU-s for {} deliveries)",
                fmt_n(deliveries)
            ),
        );
    }
    row(
        "load generator",
        format!(
            "{loadgen_cpu:.2} CPU-s in the run, RSS {} KiB",
            fmt_n(loadgen_rss_kb)
        ),
    );
    row(
        "result",
        if pass {
            "PASS".to_string()
        } else {
            format!("FAIL: {}", failures.join("; "))
        },
    );
    print!("{out}");
    if !acc.lost_examples.is_empty() {
        println!(
            "  lost, e.g.: {}",
            acc.lost_examples
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // A closing line CI runners recognise.
    println!(
        "loadtest: {} passed, {} failed",
        u8::from(pass),
        u8::from(!pass)
    );
    Ok(if pass { 0 } else { 2 })
}

/// The `--worker-threads` given to each spawned node: `--node-threads`, else
/// the cores divided among the nodes (at least 1). `None`: the node's own
/// default (asked for with 0, or set through `--server-arg`).
fn node_threads(args: &crate::args::RunArgs) -> Option<usize> {
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

/// The CPUs this process may use.
fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
