//! The per-second time series of the measured phase (and drain): each
//! worker reports every second of it (cumulative counters and that second's
//! latency histogram); here they are summed per second, turned into rates,
//! and joined with the servers' RSS sampled by the parent in that second.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::common::{hist_from_b64, new_hist, Pcts, Second};

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Point {
    /// Seconds since the start of the measured phase, at the second's end.
    pub(crate) t_s: u64,
    /// Open client sockets at the second's end.
    pub(crate) open: u64,
    pub(crate) sent_per_s: u64,
    pub(crate) acked_per_s: u64,
    pub(crate) received_per_s: u64,
    /// Delivery latency of the messages received in that second.
    pub(crate) latency_ms: Pcts,
    /// The sampled servers' RSS summed (their peak in that second), KiB.
    pub(crate) server_rss_kb: u64,
    /// How many workers reported the second (fewer: a worker ended early).
    pub(crate) workers: usize,
}

/// The servers' summed RSS per second, as the parent sampled it.
#[derive(Debug, Default)]
pub(crate) struct RssBySecond(BTreeMap<u64, u64>);

impl RssBySecond {
    /// Records a sample taken `t` seconds into the run.
    pub(crate) fn record(&mut self, t: f64, rss_kb: u64) {
        if t >= 0.0 {
            let v = self.0.entry(t as u64).or_default();
            *v = (*v).max(rss_kb);
        }
    }
}

/// Sums the workers' seconds into the series.
pub(crate) fn build(seconds: &[Second], rss: &RssBySecond) -> anyhow::Result<Vec<Point>> {
    struct Acc {
        open: u64,
        sent: u64,
        acked: u64,
        received: u64,
        workers: usize,
        h: hdrhistogram::Histogram<u64>,
    }
    let mut by_k: BTreeMap<u64, Acc> = BTreeMap::new();
    for s in seconds {
        let a = by_k.entry(s.k).or_insert_with(|| Acc {
            open: 0,
            sent: 0,
            acked: 0,
            received: 0,
            workers: 0,
            h: new_hist(),
        });
        a.open += s.open;
        a.sent += s.sent;
        a.acked += s.acked;
        a.received += s.received;
        a.workers += 1;
        a.h.add(hist_from_b64(&s.h_latency)?)
            .map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
    }
    let mut out = Vec::new();
    let mut last = (0, 0, 0);
    for (k, a) in by_k {
        out.push(Point {
            t_s: k + 1,
            open: a.open,
            sent_per_s: a.sent.saturating_sub(last.0),
            acked_per_s: a.acked.saturating_sub(last.1),
            received_per_s: a.received.saturating_sub(last.2),
            latency_ms: Pcts::of(&a.h),
            server_rss_kb: rss.0.get(&k).copied().unwrap_or(0),
            workers: a.workers,
        });
        last = (a.sent, a.acked, a.received);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::hist_to_b64;

    #[test]
    fn seconds_of_all_workers_add_up() {
        let hist = |vals: &[u64]| {
            let mut h = new_hist();
            for v in vals {
                h.record(*v).unwrap();
            }
            hist_to_b64(&h)
        };
        let s = |worker, k, sent, received, h: &[u64]| Second {
            worker,
            k,
            open: 10,
            sent,
            acked: sent,
            received,
            h_latency: hist(h),
        };
        let seconds = vec![
            s(0, 0, 5, 50, &[1000, 2000]),
            s(1, 0, 5, 40, &[3000]),
            s(0, 1, 12, 110, &[4000]),
            s(1, 1, 9, 90, &[]),
        ];
        let mut rss = RssBySecond::default();
        rss.record(0.2, 100);
        rss.record(0.7, 120);
        rss.record(1.5, 90);
        let series = build(&seconds, &rss).unwrap();
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].t_s, 1);
        assert_eq!(
            (
                series[0].sent_per_s,
                series[0].received_per_s,
                series[0].open
            ),
            (10, 90, 20)
        );
        assert_eq!((series[1].sent_per_s, series[1].received_per_s), (11, 110));
        assert_eq!(series[0].latency_ms.count, 3);
        assert_eq!(series[1].latency_ms.count, 1);
        assert_eq!(
            (series[0].server_rss_kb, series[1].server_rss_kb),
            (120, 90)
        );
        assert_eq!(series[1].workers, 2);
    }
}
