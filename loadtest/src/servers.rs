//! The server processes a run samples from /proc (the spawned nodes, any
//! --server-pid, the spawned Redis): RSS before, once connected, at its
//! peak and at the end, and CPU seconds while connecting and in the run.

use serde::Serialize;

use crate::procstat;

/// A sampled server process.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ServerStats {
    pub(crate) label: String,
    pub(crate) pid: u32,
    pub(crate) rss_before_kb: u64,
    pub(crate) rss_connected_kb: u64,
    pub(crate) rss_max_kb: u64,
    pub(crate) rss_end_kb: u64,
    pub(crate) cpu_s_connect: f64,
    pub(crate) cpu_s_run: f64,
    #[serde(skip)]
    cpu_before: f64,
    #[serde(skip)]
    cpu_start: f64,
    #[serde(skip)]
    end: Option<procstat::Sample>,
}

impl ServerStats {
    /// Starts sampling `pid`.
    pub(crate) fn new(label: String, pid: u32) -> Self {
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

    /// One sample (tracks the peak RSS).
    pub(crate) fn poll(&mut self) -> Option<procstat::Sample> {
        let s = procstat::sample(self.pid)?;
        self.rss_max_kb = self.rss_max_kb.max(s.rss_kb);
        Some(s)
    }

    /// The "connected" figures, after the settle time.
    pub(crate) fn connected(&mut self) {
        if let Some(x) = self.poll() {
            self.rss_connected_kb = x.rss_kb;
            self.cpu_s_connect = x.cpu_s - self.cpu_before;
        }
    }

    /// The measured phase starts.
    pub(crate) fn started(&mut self) {
        if let Some(x) = self.poll() {
            self.cpu_start = x.cpu_s;
        }
    }

    /// The measured phase (and drain) ended.
    pub(crate) fn ended(&mut self) {
        self.end = self.poll();
    }

    /// The run's figures, from the end sample (or one taken now).
    pub(crate) fn finish(&mut self) {
        if let Some(e) = self.end.or_else(|| procstat::sample(self.pid)) {
            self.cpu_s_run = e.cpu_s - self.cpu_start;
            self.rss_end_kb = e.rss_kb;
        }
    }
}
