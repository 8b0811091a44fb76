//! A worker process: reads its spec (one JSON line) on stdin, runs its share
//! of the clients, prints progress lines, a `ready` line once every client
//! connected and joined, waits for the start line on stdin, and finally
//! prints its report as one JSON line.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::watch;

use crate::client::{run_client, Ctx, HistSet};
use crate::common::{
    hist_to_b64, now_ns, Counters, Progress, Second, StartCmd, WorkerMsg, WorkerReport, WorkerSpec,
};
use crate::connect::resolve_targets;
use crate::procstat;

fn emit(msg: &WorkerMsg) {
    use std::io::Write as _;
    let line = serde_json::to_string(msg).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    // The parent is gone when this fails: nothing left to report to.
    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
        std::process::exit(3);
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub(crate) fn raise_nofile() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024)
}

/// The latency histogram of all of a worker's shards.
fn merged_latency(ctx: &Ctx) -> hdrhistogram::Histogram<u64> {
    let mut h = crate::common::new_hist();
    for s in &ctx.hists {
        if let Ok(s) = s.lock() {
            let _ = h.add(&s.latency);
        }
    }
    h
}

/// The cumulative live figures of the worker.
fn progress(ctx: &Ctx, worker: usize) -> Progress {
    let l = &ctx.live;
    let h = merged_latency(ctx);
    Progress {
        worker,
        open: l.open.load(Ordering::Relaxed),
        connected: l.connected.load(Ordering::Relaxed),
        failed: l.failed.load(Ordering::Relaxed),
        ready: l.ready.load(Ordering::Relaxed),
        sent: l.sent.load(Ordering::Relaxed),
        acked: l.acked.load(Ordering::Relaxed),
        received: l.received.load(Ordering::Relaxed),
        p99_us: if h.is_empty() {
            0
        } else {
            h.value_at_quantile(0.99)
        },
    }
}

/// The per-second figures of the measured phase: the latency histogram at
/// the end of the last second, to subtract from the next.
#[derive(Default)]
struct Seconds {
    next: u64,
    last: Option<hdrhistogram::Histogram<u64>>,
}

impl Seconds {
    /// Second `next`'s figures once it is over (or, `at_end`, once it has
    /// begun), for the seconds of the run and its drain.
    fn due(&mut self, ctx: &Ctx, worker: usize, at_end: bool) -> Option<Second> {
        let start = (*ctx.start.borrow())?;
        let a = &ctx.spec.args;
        let total = (a.duration + a.drain).ceil() as u64;
        let end_ns = start + (self.next + u64::from(!at_end)) * 1_000_000_000;
        // The last second is taken once the clients are done (their final
        // figures are flushed then).
        let last = self.next + 1 >= total;
        if self.next >= total || now_ns() < end_ns || (last && !at_end) {
            return None;
        }
        let cur = merged_latency(ctx);
        let mut delta = cur.clone();
        if let Some(last) = &self.last {
            let _ = delta.subtract(last);
        }
        self.last = Some(cur);
        let p = progress(ctx, worker);
        let s = Second {
            worker,
            k: self.next,
            open: p.open,
            sent: p.sent,
            acked: p.acked,
            received: p.received,
            h_latency: hist_to_b64(&delta),
        };
        self.next += 1;
        Some(s)
    }
}

pub(crate) fn main() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the worker spec")?;
    let spec: WorkerSpec = serde_json::from_str(&line).context("parsing the worker spec")?;
    raise_nofile();
    let rt = if spec.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(spec.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(run(spec))
}

async fn run(spec: WorkerSpec) -> anyhow::Result<()> {
    let targets = resolve_targets(&spec.args.urls)?;
    let (start_tx, start_rx) = watch::channel::<Option<u64>>(None);
    let n = spec.hi - spec.lo;
    let worker = spec.worker;
    let lo = spec.lo;
    let hi = spec.hi;
    let tls = match targets.iter().any(|t| t.tls.is_some()) {
        true => Some(crate::wire::tls_connector(spec.args.ca.as_deref())?),
        false => None,
    };
    let ctx = Arc::new(Ctx::new(spec, targets, tls, start_rx));

    let mut handles = Vec::with_capacity(n as usize);
    for (local, i) in (lo..hi).enumerate() {
        handles.push(tokio::spawn(run_client(ctx.clone(), i, local as u64)));
    }

    // Progress lines, `ready` once every client connected and joined, and
    // one `second` line per second of the measured phase.
    let pctx = ctx.clone();
    let seconds = Arc::new(std::sync::Mutex::new(Seconds::default()));
    let rseconds = seconds.clone();
    let reporter = tokio::spawn(async move {
        let mut announced = false;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut k = 0u64;
        loop {
            tick.tick().await;
            k += 1;
            let ready = pctx.live.ready.load(Ordering::Relaxed);
            if !announced && ready >= n {
                announced = true;
                emit(&WorkerMsg::Ready(progress(&pctx, worker)));
            } else if k.is_multiple_of(5) {
                emit(&WorkerMsg::Progress(progress(&pctx, worker)));
            }
            let due = rseconds
                .lock()
                .ok()
                .and_then(|mut s| s.due(&pctx, worker, false));
            if let Some(s) = due {
                emit(&WorkerMsg::Second(s));
            }
        }
    });

    // The start line; the parent closing stdin first means it is gone.
    let cpu_at_start = Arc::new(std::sync::Mutex::new(None::<f64>));
    let cpu_start = cpu_at_start.clone();
    let stdin_task = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        match lines.next_line().await {
            Ok(Some(l)) => match serde_json::from_str::<StartCmd>(&l) {
                Ok(cmd) => {
                    let wait = cmd.start_ns.saturating_sub(now_ns());
                    tokio::time::sleep(Duration::from_nanos(wait)).await;
                    if let Ok(mut c) = cpu_start.lock() {
                        *c = Some(procstat::own().cpu_s);
                    }
                    let _ = start_tx.send(Some(cmd.start_ns));
                    // Keep the sender alive until the clients are done.
                    std::future::pending::<()>().await;
                }
                Err(e) => {
                    eprintln!("loadtest worker {worker}: bad start line: {e}");
                    std::process::exit(3);
                }
            },
            _ => {
                eprintln!("loadtest worker {worker}: parent went away before the start");
                std::process::exit(3);
            }
        }
    });

    let mut counters = Counters::default();
    let mut members = Vec::new();
    let mut acks: BTreeMap<String, Vec<(u64, u64, u64)>> = BTreeMap::new();
    for h in handles {
        let out = h.await.context("client task panicked")?;
        counters.add(&out.counters);
        members.extend(out.members);
        for (stream, id, ns, sid) in out.acks {
            acks.entry(stream).or_default().push((id, ns, sid));
        }
    }
    let own = procstat::own();
    let cpu_s = cpu_at_start
        .lock()
        .ok()
        .and_then(|c| *c)
        .map(|c| own.cpu_s - c)
        .unwrap_or(0.0);
    reporter.abort();
    stdin_task.abort();
    // The clients are done: the last second(s) of the run are over too.
    if let Ok(mut s) = seconds.lock() {
        while let Some(s) = s.due(&ctx, worker, true) {
            emit(&WorkerMsg::Second(s));
        }
    }
    let mut hs = HistSet::new();
    for s in &ctx.hists {
        if let Ok(s) = s.lock() {
            hs.add(&s);
        }
    }
    let first = ctx.connect_first_ns.load(Ordering::Relaxed);
    let report = WorkerReport {
        worker,
        clients: n,
        counters,
        h_latency: hist_to_b64(&hs.latency),
        h_latency_same_node: hist_to_b64(&hs.latency_same_node),
        h_latency_cross_node: hist_to_b64(&hs.latency_cross_node),
        h_connect: hist_to_b64(&hs.connect),
        h_ack: hist_to_b64(&hs.ack),
        h_recovery: hist_to_b64(&hs.recovery),
        h_rejoin: hist_to_b64(&hs.rejoin),
        h_lag: hist_to_b64(&hs.lag),
        connect_first_ns: if first == u64::MAX { 0 } else { first },
        connect_last_ns: ctx.connect_last_ns.load(Ordering::Relaxed),
        acks,
        members,
        cpu_s,
        rss_kb: own.rss_kb,
    };
    emit(&WorkerMsg::Report(Box::new(report)));
    Ok(())
}
