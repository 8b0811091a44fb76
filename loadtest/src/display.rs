//! The live display of a run: a spinner line on a terminal (indicatif), a
//! plain line every 2 s otherwise, nothing with --no-progress.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;

use crate::common::Progress;

/// `1234567` as `1,234,567`.
pub(crate) fn fmt_n(n: u64) -> String {
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

/// Where the live figures go.
pub(crate) struct Display {
    bar: ProgressBar,
    tty: bool,
    quiet: bool,
    clients: u64,
    last_plain: Instant,
}

impl Display {
    /// A spinner on a terminal stderr unless `no_progress`.
    pub(crate) fn new(no_progress: bool, clients: u64) -> Display {
        let tty = std::io::stderr().is_terminal() && !no_progress;
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
        Display {
            bar,
            tty,
            quiet: no_progress,
            clients,
            last_plain: Instant::now(),
        }
    }

    /// Shows the workers' figures in `phase`.
    pub(crate) fn show(&mut self, phase: &str, progress: &[Progress], rate_now: f64) {
        let sum = |f: fn(&Progress) -> u64| progress.iter().map(f).sum::<u64>();
        let p99 = progress.iter().map(|p| p.p99_us).max().unwrap_or(0);
        let msg = format!(
            "{phase:<10} open {}/{} (failed {}) | sent {} | recv {} | {:.0} msg/s | p99 {:.1} ms",
            fmt_n(sum(|p| p.open)),
            fmt_n(self.clients),
            fmt_n(sum(|p| p.failed)),
            fmt_n(sum(|p| p.sent)),
            fmt_n(sum(|p| p.received)),
            rate_now,
            p99 as f64 / 1000.0
        );
        if self.tty {
            self.bar.set_message(msg);
        } else if !self.quiet && self.last_plain.elapsed() >= Duration::from_secs(2) {
            self.last_plain = Instant::now();
            eprintln!("{msg}");
        }
    }

    /// Clears the spinner.
    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
