//! What every guard does with its child process: wait until it is ready
//! (failing early when it exits), and stop it by its own PID (SIGTERM with a
//! grace period, or SIGKILL), always reaping it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Polls `ready` every 20 ms until it holds; `Err` when the child exits
/// first or `within` passes (the message says which).
pub(crate) fn wait_ready(
    child: &mut Child,
    what: &str,
    within: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        if ready() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited during start-up ({status})"));
        }
        if Instant::now() > deadline {
            return Err(format!("{what} not ready within {within:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` (a name such as `TERM`) to `pid`.
pub(crate) fn signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Whether a started child has exited (it is reaped and forgotten then).
pub(crate) fn exited(child: &mut Option<Child>) -> bool {
    let gone = child
        .as_mut()
        .is_some_and(|c| !matches!(c.try_wait(), Ok(None)));
    if gone {
        *child = None;
    }
    gone
}

/// SIGKILL and reap.
pub(crate) fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// SIGTERM, then SIGKILL if the child has not exited within `grace`; reaped
/// either way.
pub(crate) fn terminate(child: &mut Option<Child>, grace: Duration) {
    let Some(c) = child.as_mut() else {
        return;
    };
    if let Ok(None) = c.try_wait() {
        signal(c.id(), "TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    kill(child);
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether `bin` runs with `--version`.
pub(crate) fn runs(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
