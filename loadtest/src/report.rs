//! The end of a run: the workers' reports merged (counters, histograms,
//! acks, memberships), every figure derived from them, the pass/fail
//! verdict (violations, and the --max-p99-ms / --max-loss thresholds), the
//! JSON report (with the per-second series) and the human table.

use std::collections::BTreeMap;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::accounting::{account, Accounting};
use crate::args::{RunArgs, Scenario};
use crate::common::{hist_from_b64, new_hist, AckList, Counters, MemberOut, Pcts, WorkerReport};
use crate::display::fmt_n;
use crate::plan::Plan;
use crate::series::Point;
use crate::servers::ServerStats;

/// What the run knows besides the workers' reports.
pub(crate) struct Run<'a> {
    pub(crate) args: &'a RunArgs,
    pub(crate) plan: &'a Plan,
    pub(crate) machine: serde_json::Value,
    pub(crate) node_threads: Option<usize>,
    pub(crate) connect_wall: f64,
    pub(crate) open_connected: u64,
    pub(crate) servers: &'a [ServerStats],
    pub(crate) redis: Option<&'a ServerStats>,
    pub(crate) series: Vec<Point>,
    /// What the attackers of `--scenario hostile` got.
    pub(crate) hostile: Option<crate::hostile::Stats>,
}

/// The workers' reports, merged.
struct Merged {
    counters: Counters,
    h: BTreeMap<&'static str, Histogram<u64>>,
    acks: BTreeMap<String, AckList>,
    members: Vec<MemberOut>,
    loadgen_cpu: f64,
    loadgen_rss_kb: u64,
    first_ns: u64,
    last_ns: u64,
}

/// Every figure of the report.
struct Figures {
    acc: Accounting,
    latency: Pcts,
    latency_same_node: Pcts,
    latency_cross_node: Pcts,
    connect: Pcts,
    ack: Pcts,
    recovery: Pcts,
    rejoin: Pcts,
    lag: Pcts,
    deliveries: u64,
    deliveries_per_s: f64,
    connect_rate_achieved: f64,
    server_cpu: f64,
    server_cpu_per_m: f64,
    rss_delta_kb: i64,
    rss_per_socket: f64,
    connect_failures: u64,
    failures: Vec<String>,
    pass: bool,
}

/// Writes --json, prints the table; returns the exit status (0 pass, 2 fail).
pub(crate) fn finish(run: &Run<'_>, reports: Vec<WorkerReport>) -> anyhow::Result<i32> {
    let mut m = merge(reports)?;
    let f = figures(run, &mut m);
    if let Some(path) = &run.args.json {
        let report = to_json(run, &m, &f);
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    print_table(run, &m, &f);
    Ok(if f.pass { 0 } else { 2 })
}

fn merge(reports: Vec<WorkerReport>) -> anyhow::Result<Merged> {
    let mut counters = Counters::default();
    let mut h: BTreeMap<&'static str, Histogram<u64>> = BTreeMap::new();
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
    for r in reports {
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
    Ok(Merged {
        counters,
        h,
        acks,
        members,
        loadgen_cpu,
        loadgen_rss_kb,
        first_ns,
        last_ns,
    })
}

/// Lost deliveries when they count as a failure: any with --max-loss 0,
/// else only beyond that share of the expected ones (then reported by
/// [`thresholds`]).
fn lost_beyond_threshold(args: &RunArgs, acc: &Accounting) -> u64 {
    if args.max_loss > 0.0 {
        0
    } else {
        acc.lost
    }
}

/// The --max-p99-ms and --max-loss verdicts.
fn thresholds(args: &RunArgs, acc: &Accounting, latency: &Pcts) -> Vec<String> {
    let mut out = Vec::new();
    if args.max_loss > 0.0 && acc.lost > 0 {
        let share = acc.lost as f64 / acc.expected.max(1) as f64;
        if share > args.max_loss {
            out.push(format!(
                "{} deliveries lost ({:.3}% of {}, above --max-loss {:.3}%)",
                acc.lost,
                share * 100.0,
                acc.expected,
                args.max_loss * 100.0
            ));
        }
    }
    if let Some(max) = args.max_p99_ms {
        if latency.count == 0 {
            out.push("no delivery measured for --max-p99-ms".into());
        } else if latency.p99_ms > max {
            out.push(format!(
                "delivery p99 {:.2} ms above --max-p99-ms {max}",
                latency.p99_ms
            ));
        }
    }
    out
}

fn figures(run: &Run<'_>, m: &mut Merged) -> Figures {
    let args = run.args;
    let Merged {
        counters,
        h,
        acks,
        members,
        first_ns,
        last_ns,
        ..
    } = m;
    let (first_ns, last_ns) = (*first_ns, *last_ns);
    let servers = run.servers;
    let open_connected = run.open_connected;
    let acc = account(acks, members, args.leave_grace_ms * 1_000_000);
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
        (lost_beyond_threshold(args, &acc), "deliveries lost"),
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
    failures.extend(thresholds(args, &acc, &latency));
    let pass = failures.is_empty();
    Figures {
        acc,
        latency,
        latency_same_node,
        latency_cross_node,
        connect,
        ack,
        recovery,
        rejoin,
        lag,
        deliveries,
        deliveries_per_s,
        connect_rate_achieved,
        server_cpu,
        server_cpu_per_m,
        rss_delta_kb,
        rss_per_socket,
        connect_failures,
        failures,
        pass,
    }
}

fn to_json(run: &Run<'_>, m: &Merged, f: &Figures) -> serde_json::Value {
    let args = run.args;
    let counters = &m.counters;
    let acc = &f.acc;
    json!({
        "tool": "relay loadtest",
        "run_id": run.plan.run_id,
        "machine": run.machine,
        "config": {
            "scenario": args.scenario.name(),
            "clients": args.clients,
            "workers": run.plan.workers,
            "threads_per_worker": run.plan.threads,
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
            "node_threads": run.node_threads,
            "redis_cluster_masters": args.redis_cluster,
            "embedded": args.embedded,
            "command": std::env::args().collect::<Vec<_>>().join(" "),
        },
        "connect": {
            "attempted": counters.connect_attempts,
            "ok": counters.connect_ok,
            "failed": f.connect_failures,
            "failed_by_cause": counters.connect_fail,
            "open_at_start": run.open_connected,
            "phase_wall_s": run.connect_wall,
            "rate_achieved_per_s": f.connect_rate_achieved,
            "time_ms": f.connect,
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
            "ack_ms": f.ack,
            "publisher_lag_ms": f.lag,
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
            "deliveries_per_s": f.deliveries_per_s,
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
            "latency_ms": f.latency,
            "latency_same_node_ms": f.latency_same_node,
            "latency_cross_node_ms": f.latency_cross_node,
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
            "recovery_ms": f.recovery,
            "rejoin_ms": f.rejoin,
        },
        "servers": run.servers,
        "redis": run.redis,
        "server_totals": {
            "rss_delta_kb_at_connected": f.rss_delta_kb,
            "rss_per_socket_bytes": f.rss_per_socket,
            "cpu_s_run": f.server_cpu,
            "cpu_s_per_1m_deliveries": f.server_cpu_per_m,
        },
        "loadgen": {
            "cpu_s_run": m.loadgen_cpu,
            "rss_kb_end": m.loadgen_rss_kb,
        },
        "pass": f.pass,
        "failures": f.failures,
        "thresholds": {
            "max_p99_ms": args.max_p99_ms,
            "max_loss": args.max_loss,
        },
        "series": run.series,
        "hostile": run.hostile,
    })
}

#[allow(clippy::too_many_lines)]
fn print_table(run: &Run<'_>, m: &Merged, f: &Figures) {
    let args = run.args;
    let counters = &m.counters;
    let acc = &f.acc;
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
        fmt_n(args.clients),
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
            fmt_n(f.connect_failures),
            counters.connect_fail,
            f.connect_rate_achieved,
            run.connect_wall
        ),
    );
    row("connect time", ms(&f.connect));
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
    if f.ack.count > 0 {
        row("send→ack", ms(&f.ack));
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
    row("deliveries/s", format!("{:.0}", f.deliveries_per_s));
    row("latency (end to end)", ms(&f.latency));
    if f.latency_cross_node.count > 0 {
        row("  same node", ms(&f.latency_same_node));
        row("  across nodes", ms(&f.latency_cross_node));
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
        row("recovery (from drop)", ms(&f.recovery));
        row("rejoin (from reconnect)", ms(&f.rejoin));
    }
    if args.scenario == Scenario::Churn {
        row("churned", fmt_n(counters.churned));
    }
    if f.lag.count > 0 {
        row("publisher lag", ms(&f.lag));
    }
    for s in run.servers {
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
    if let Some(r) = &run.redis {
        row(
            "redis",
            format!(
                "RSS {} KiB, CPU {:.2} s run",
                fmt_n(r.rss_end_kb),
                r.cpu_s_run
            ),
        );
    }
    if !run.servers.is_empty() {
        row(
            "server per socket",
            format!(
                "{:.0} B RSS ({:.2} KiB) over {} open sockets",
                f.rss_per_socket,
                f.rss_per_socket / 1024.0,
                fmt_n(run.open_connected)
            ),
        );
        row(
            "server CPU per 1M deliv.",
            format!(
                "{:.2} s ({:.2} CPU-s for {} deliveries)",
                f.server_cpu_per_m,
                f.server_cpu,
                fmt_n(f.deliveries)
            ),
        );
    }
    if let Some(h) = &run.hostile {
        hostile_rows(&mut row, h, run.servers);
    }
    row(
        "load generator",
        format!(
            "{:.2} CPU-s in the run, RSS {} KiB",
            m.loadgen_cpu,
            fmt_n(m.loadgen_rss_kb)
        ),
    );
    row(
        "result",
        if f.pass {
            "PASS".to_string()
        } else {
            format!("FAIL: {}", f.failures.join("; "))
        },
    );
    print!("{out}");
    if !acc.lost_examples.is_empty() {
        println!(
            "  lost, e.g.: {}",
            f.acc
                .lost_examples
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
        u8::from(f.pass),
        u8::from(!f.pass)
    );
}

/// The `--scenario hostile` rows: what each attack got, and the peak RSS of
/// the sampled nodes while it ran.
fn hostile_rows(
    row: &mut impl FnMut(&str, String),
    h: &crate::hostile::Stats,
    servers: &[ServerStats],
) {
    row(
        "hostile non-readers",
        format!(
            "{} sockets, {} history sent, {} stalled, {} closed by the node",
            h.nonreaders,
            fmt_n(h.history_sent),
            h.nonreader_writes_stalled,
            h.nonreaders_closed
        ),
    );
    row(
        "hostile slow bodies",
        format!(
            "{} opened, answered {:?}",
            h.slow_bodies_opened, h.slow_bodies_answered
        ),
    );
    row(
        "hostile room flood",
        format!(
            "{} joins sent, {} joined, refused {:?}",
            h.flood_joins_sent, h.flood_joined, h.flood_refused
        ),
    );
    row(
        "hostile logins",
        format!("{} sent, answered {:?}", h.logins_sent, h.logins_answered),
    );
    let peak = servers.iter().map(|s| s.rss_max_kb).max().unwrap_or(0);
    row("node peak RSS", format!("{} KiB", fmt_n(peak)));
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn args(flags: &[&str]) -> RunArgs {
        Cli::parse_from(std::iter::once("loadtest").chain(flags.iter().copied())).run
    }

    fn lost(lost: u64, expected: u64) -> Accounting {
        Accounting {
            lost,
            expected,
            ..Default::default()
        }
    }

    fn p99(ms: f64) -> Pcts {
        Pcts {
            count: 100,
            p99_ms: ms,
            ..Default::default()
        }
    }

    #[test]
    fn any_loss_fails_by_default() {
        let a = args(&[]);
        assert_eq!(lost_beyond_threshold(&a, &lost(1, 1000)), 1);
        assert!(thresholds(&a, &lost(1, 1000), &p99(5.0)).is_empty());
    }

    #[test]
    fn max_loss_tolerates_a_share_of_the_expected_deliveries() {
        let a = args(&["--max-loss", "0.01"]);
        assert_eq!(lost_beyond_threshold(&a, &lost(10, 1000)), 0);
        assert!(thresholds(&a, &lost(10, 1000), &p99(5.0)).is_empty());
        let f = thresholds(&a, &lost(11, 1000), &p99(5.0));
        assert_eq!(f.len(), 1);
        assert!(f[0].contains("above --max-loss 1.000%"), "{f:?}");
    }

    #[test]
    fn max_p99_fails_above_it_and_without_measurements() {
        let a = args(&["--max-p99-ms", "50"]);
        assert!(thresholds(&a, &lost(0, 10), &p99(50.0)).is_empty());
        let f = thresholds(&a, &lost(0, 10), &p99(50.5));
        assert_eq!(
            f,
            vec!["delivery p99 50.50 ms above --max-p99-ms 50".to_string()]
        );
        let none = Pcts::default();
        assert_eq!(thresholds(&a, &lost(0, 0), &none).len(), 1);
    }
}
