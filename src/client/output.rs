//! The client's UI: the one place that writes to stdout (event lines) and
//! stderr (status notices). Every line is written through a locked handle
//! and flushed at once, so a pipe reader sees each line as it happens.

use std::cell::Cell;
use std::io::Write;

use chrono::TimeZone;

/// Writes the transcript and notices.
#[derive(Debug)]
pub(crate) struct Ui {
    timestamps: bool,
    /// Set when stdout is gone (e.g. `relay chat … | head -1`).
    broken: Cell<bool>,
}

impl Ui {
    /// A UI; with `timestamps`, event lines start with `[HH:MM:SS] `.
    pub(crate) fn new(timestamps: bool) -> Self {
        Ui {
            timestamps,
            broken: Cell::new(false),
        }
    }

    /// Whether stdout can no longer be written.
    pub(crate) fn broken(&self) -> bool {
        self.broken.get()
    }

    /// An event line on stdout: server time (when `--timestamps` and the
    /// event has one), then the `[#room] ` marker for a room that is not the
    /// current one, then the text.
    pub(crate) fn event(&self, ts: Option<u64>, other_room: Option<&str>, text: &str) {
        let line = self.format_event(ts, other_room, text);
        self.write_stdout(&line);
    }

    fn format_event(&self, ts: Option<u64>, other_room: Option<&str>, text: &str) -> String {
        let mut line = String::with_capacity(text.len() + 24);
        if let (true, Some(ts)) = (self.timestamps, ts) {
            line.push('[');
            line.push_str(&clock(ts));
            line.push_str("] ");
        }
        if let Some(room) = other_room {
            line.push_str("[#");
            line.push_str(room);
            line.push_str("] ");
        }
        line.push_str(text);
        line
    }

    /// A line on stdout without a timestamp (replies such as `/who`, errors,
    /// help).
    pub(crate) fn say(&self, text: &str) {
        self.write_stdout(text);
    }

    /// A status notice on stderr (`* reconnecting…`).
    pub(crate) fn notice(&self, text: &str) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{text}");
        let _ = err.flush();
    }

    /// A fatal message on stderr, before a non-zero exit.
    pub(crate) fn fatal(&self, text: &str) {
        self.notice(&format!("relay chat: {text}"));
    }

    fn write_stdout(&self, line: &str) {
        if self.broken.get() {
            return;
        }
        // Control characters from other users must not drive the terminal.
        let clean: String = line
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{clean}").and_then(|()| out.flush()).is_err() {
            self.broken.set(true);
        }
    }
}

/// `HH:MM:SS` of a Unix-milliseconds server time, in local time.
pub(crate) fn clock(ts_ms: u64) -> String {
    let ms = i64::try_from(ts_ms).unwrap_or(i64::MAX);
    match chrono::Local.timestamp_millis_opt(ms).single() {
        Some(t) => t.format("%H:%M:%S").to_string(),
        None => "--:--:--".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_prefixes() {
        let plain = Ui::new(false);
        assert_eq!(plain.format_event(Some(0), None, "bob: hi"), "bob: hi");
        assert_eq!(
            plain.format_event(Some(0), Some("dev"), "bob: hi"),
            "[#dev] bob: hi"
        );
        let ts = Ui::new(true);
        let line = ts.format_event(Some(1_700_000_000_000), Some("dev"), "bob: hi");
        assert_eq!(line.len(), "[HH:MM:SS] [#dev] bob: hi".len());
        assert!(line.starts_with('[') && line[9..].starts_with("] [#dev] bob: hi"));
        assert_eq!(ts.format_event(None, None, "x"), "x");
    }

    #[test]
    fn clock_is_local_time() {
        let now = chrono::Local::now();
        let s = clock(now.timestamp_millis() as u64);
        assert_eq!(s, now.format("%H:%M:%S").to_string());
    }
}
