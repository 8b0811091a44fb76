//! The parent process: plans the run, starts the cluster (`--spawn-cluster`)
//! and the workers, then drives the phases (connect and join, settle, the
//! measured run and its drain) while showing live progress and sampling the
//! servers, and hands everything to the report.

use std::time::Duration;

use anyhow::bail;
use tokio::time::Instant;

use crate::args::{RunArgs, Scenario};
use crate::cluster::{self, Cluster};
use crate::common::now_ns;
use crate::connect::{resolve_targets, Target};
use crate::display::{fmt_n, Display};
use crate::fleet::Fleet;
use crate::hostile::{self, Attack};
use crate::plan::{self, Plan};
use crate::report::{self, Run};
use crate::series::{self, RssBySecond};
use crate::servers::ServerStats;
use crate::worker::raise_nofile;

pub(crate) fn main(args: RunArgs) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(mut args: RunArgs) -> anyhow::Result<i32> {
    let warnings = plan::resolve(&mut args)?;
    let nofile = raise_nofile();
    let machine = plan::machine();

    let node_threads = plan::node_threads(&args);
    let mut cluster = match args.spawn_cluster {
        Some(n) => Some(spawn_cluster(&mut args, n, node_threads)?),
        None => None,
    };
    let targets = resolve_targets(&args.urls)?;
    if !args.no_bind && targets.iter().any(|t| !t.addr.ip().is_loopback()) {
        // Loopback source addresses cannot reach another host.
        args.no_bind = true;
    }
    let result = drive(
        &args,
        &warnings,
        nofile,
        machine,
        cluster.as_ref(),
        node_threads,
        &targets,
    )
    .await;
    if let Some(c) = cluster.as_mut() {
        c.stop();
    }
    result
}

/// Starts the private cluster and adds its nodes to the targets.
fn spawn_cluster(
    args: &mut RunArgs,
    n: usize,
    node_threads: Option<usize>,
) -> anyhow::Result<Cluster> {
    let mut server_args = args.server_args.clone();
    if let Some(t) = node_threads {
        server_args.push(format!("--worker-threads={t}"));
    }
    let c = Cluster::start(
        n,
        args.embedded,
        args.nginx,
        args.relay_bin.as_deref(),
        &cluster::RedisSpec {
            server_bin: &args.redis_bin,
            cli_bin: &args.redis_cli_bin,
            masters: args.redis_cluster,
        },
        &server_args,
    )?;
    eprintln!(
        "spawned {} node(s){}{} from {} (logs in {})",
        c.node_pids.len(),
        c.redis_url
            .as_deref()
            .map(|u| format!(" + redis {u}"))
            .unwrap_or_default(),
        match args.nginx {
            true => format!(" behind nginx {}", c.urls[0]),
            false => String::new(),
        },
        c.relay_bin.display(),
        c.dir.display()
    );
    args.urls.extend(c.urls.iter().cloned());
    Ok(c)
}

/// The processes sampled from /proc.
struct Sampled {
    servers: Vec<ServerStats>,
    redis: Option<ServerStats>,
}

impl Sampled {
    fn new(args: &RunArgs, cluster: Option<&Cluster>) -> anyhow::Result<Sampled> {
        let mut servers = Vec::new();
        if let Some(c) = cluster {
            for (k, pid) in c.node_pids.iter().enumerate() {
                servers.push(ServerStats::new(format!("node{}", k + 1), *pid));
            }
        }
        for pid in &args.server_pids {
            if crate::procstat::sample(*pid).is_none() {
                bail!("--server-pid {pid}: no such process");
            }
            servers.push(ServerStats::new(format!("pid{pid}"), *pid));
        }
        let redis = cluster
            .and_then(|c| c.redis_pid)
            .map(|pid| ServerStats::new("redis".into(), pid));
        Ok(Sampled { servers, redis })
    }

    fn all(&mut self) -> impl Iterator<Item = &mut ServerStats> {
        self.servers.iter_mut().chain(self.redis.iter_mut())
    }

    /// Polls the relay servers; returns their summed RSS.
    fn poll(&mut self) -> u64 {
        self.servers
            .iter_mut()
            .filter_map(|s| s.poll())
            .map(|s| s.rss_kb)
            .sum()
    }
}

async fn drive(
    args: &RunArgs,
    warnings: &[String],
    nofile: u64,
    machine: serde_json::Value,
    cluster: Option<&Cluster>,
    node_threads: Option<usize>,
    targets: &[Target],
) -> anyhow::Result<i32> {
    for w in warnings {
        eprintln!("warning: {w}");
    }
    let plan = Plan::new(args, nofile)?;
    let mut sampled = Sampled::new(args, cluster)?;
    let mut fleet = Fleet::spawn(&plan).await?;
    let mut display = Display::new(args.no_progress, args.clients);
    eprintln!(
        "loadtest {}: {} clients over {} worker(s) × {} thread(s), {} target(s), run {}",
        args.scenario.name(),
        fmt_n(args.clients),
        plan.workers,
        plan.threads,
        args.urls.len(),
        plan.run_id
    );

    let connect_wall = connect_phase(args, &mut fleet, &mut sampled, &mut display).await?;
    let open_connected: u64 = fleet.progress.iter().map(|p| p.open).sum();
    settle_phase(args, &mut fleet, &mut display).await?;
    for s in sampled.all() {
        s.connected();
    }
    let attack = match args.scenario {
        Scenario::Hostile => Some(Hostile::Planned(&targets[0], &plan.run_id)),
        _ => None,
    };
    let (rss, hostile) = run_phase(args, &mut fleet, &mut sampled, &mut display, attack).await?;
    display.finish();
    fleet.wait().await;
    for s in sampled.all() {
        s.finish();
    }

    let series = series::build(&fleet.seconds, &rss)?;
    let reports = std::mem::take(&mut fleet.reports);
    let run = Run {
        args,
        plan: &plan,
        machine,
        node_threads,
        connect_wall,
        open_connected,
        servers: &sampled.servers,
        redis: sampled.redis.as_ref(),
        series,
        hostile,
    };
    report::finish(&run, reports.into_iter().flatten().collect())
}

/// Phase 1: every worker connects its clients and joins their rooms (or the
/// connect budget runs out). Returns the phase's wall time, seconds.
async fn connect_phase(
    args: &RunArgs,
    fleet: &mut Fleet,
    sampled: &mut Sampled,
    display: &mut Display,
) -> anyhow::Result<f64> {
    let clients = args.clients;
    let connect_budget = if args.connect_rate > 0.0 {
        clients as f64 / args.connect_rate
    } else {
        clients as f64 / 1000.0
    } + 3.0 * args.connect_timeout
        + 30.0;
    let connect_deadline = Instant::now() + Duration::from_secs_f64(connect_budget);
    let connect_started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    while !fleet.all_ready() {
        tokio::select! {
            r = fleet.next() => r?,
            _ = tick.tick() => {
                sampled.poll();
                if Instant::now() > connect_deadline {
                    eprintln!("warning: connect phase did not finish in {connect_budget:.0} s; starting anyway");
                    break;
                }
            }
        }
        display.show("connecting", &fleet.progress, 0.0);
    }
    Ok(connect_started.elapsed().as_secs_f64())
}

/// Waits --settle seconds before the "connected" figures are sampled.
async fn settle_phase(
    args: &RunArgs,
    fleet: &mut Fleet,
    display: &mut Display,
) -> anyhow::Result<()> {
    let settle_until = Instant::now() + Duration::from_secs_f64(args.settle);
    while Instant::now() < settle_until {
        tokio::select! {
            r = fleet.next() => r?,
            _ = tokio::time::sleep_until(settle_until) => {}
        }
        display.show("settling", &fleet.progress, 0.0);
    }
    Ok(())
}

/// The attackers of `--scenario hostile`: started with the measured phase,
/// stopped at its end.
enum Hostile<'a> {
    Planned(&'a Target, &'a str),
    Running(Attack),
    Done(hostile::Stats),
}

/// Phase 2: the measured run and its drain, until every worker reported.
/// Returns the servers' RSS per second (and what the attackers got).
async fn run_phase(
    args: &RunArgs,
    fleet: &mut Fleet,
    sampled: &mut Sampled,
    display: &mut Display,
    mut attack: Option<Hostile<'_>>,
) -> anyhow::Result<(RssBySecond, Option<hostile::Stats>)> {
    let start_ns = now_ns() + 300_000_000;
    fleet.start(start_ns).await?;
    let start_at = Instant::now() + Duration::from_nanos(start_ns.saturating_sub(now_ns()));
    let end_at = start_at + Duration::from_secs_f64(args.duration + args.drain);
    let run_end = start_at + Duration::from_secs_f64(args.duration);
    let watchdog = end_at + Duration::from_secs_f64(30.0 + 3.0 * args.connect_timeout);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut rss = RssBySecond::default();
    let (mut started, mut ended) = (false, false);
    let mut phase = "settling";
    let mut last_rate = (Instant::now(), 0u64);
    let mut rate_now = 0.0;
    while !fleet.all_reported() {
        tokio::select! {
            r = fleet.next() => r?,
            _ = tokio::time::sleep_until(start_at), if !started => {
                started = true;
                phase = "running";
                for s in sampled.all() {
                    s.started();
                }
                last_rate = (Instant::now(), fleet.progress.iter().map(|p| p.received).sum());
                if let Some(Hostile::Planned(target, run_id)) = attack {
                    attack = Some(Hostile::Running(Attack::start(args, target, run_id)?));
                }
            }
            _ = tokio::time::sleep_until(run_end), if matches!(attack, Some(Hostile::Running(_))) => {
                if let Some(Hostile::Running(a)) = attack.take() {
                    attack = Some(Hostile::Done(a.stop().await));
                }
            }
            _ = tokio::time::sleep_until(end_at), if started && !ended => {
                ended = true;
                phase = "collecting";
                for s in sampled.all() {
                    s.ended();
                }
            }
            _ = tick.tick() => {
                let rss_kb = sampled.poll();
                if started && !ended {
                    rss.record((Instant::now() - start_at).as_secs_f64(), rss_kb);
                }
                if started && !ended && Instant::now() > start_at + Duration::from_secs_f64(args.duration) {
                    phase = "draining";
                }
                let received: u64 = fleet.progress.iter().map(|p| p.received).sum();
                let dt = last_rate.0.elapsed().as_secs_f64();
                if dt >= 1.0 {
                    rate_now = received.saturating_sub(last_rate.1) as f64 / dt;
                    last_rate = (Instant::now(), received);
                }
                if Instant::now() > watchdog {
                    fleet.kill();
                    bail!("workers did not report within 30 s after the end of the run; killed them");
                }
            }
        }
        display.show(phase, &fleet.progress, rate_now);
    }
    let hostile = match attack {
        Some(Hostile::Done(stats)) => Some(stats),
        Some(Hostile::Running(a)) => Some(a.stop().await),
        _ => None,
    };
    Ok((rss, hostile))
}
