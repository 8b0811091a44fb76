//! The worker processes of a run (this binary re-executed as `loadtest
//! worker`): started with their spec on stdin, their JSON lines (progress,
//! ready, one per second of the run, the report) gathered, the start line
//! sent to all at once, killed on drop.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::common::{Progress, Second, StartCmd, WorkerMsg, WorkerReport};
use crate::plan::Plan;

struct WorkerProc {
    child: Child,
    stdin: Option<ChildStdin>,
}

enum Line {
    Msg(usize, WorkerMsg),
    Eof(usize),
    Bad(usize, String),
}

/// The running workers and what they said so far.
pub(crate) struct Fleet {
    procs: Vec<WorkerProc>,
    rx: mpsc::UnboundedReceiver<Line>,
    /// The latest figures of each worker.
    pub(crate) progress: Vec<Progress>,
    ready: Vec<bool>,
    /// Each worker's final report.
    pub(crate) reports: Vec<Option<WorkerReport>>,
    /// Every worker's per-second figures, in arrival order.
    pub(crate) seconds: Vec<Second>,
}

impl Fleet {
    /// Starts one worker per spec of `plan`.
    pub(crate) async fn spawn(plan: &Plan) -> anyhow::Result<Fleet> {
        let exe = std::env::current_exe().context("own executable")?;
        let (tx, rx) = mpsc::unbounded_channel::<Line>();
        let mut procs = Vec::new();
        for spec in &plan.specs {
            let w = spec.worker;
            let mut child = Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("starting a worker")?;
            let mut stdin = child.stdin.take().context("worker stdin")?;
            let line = serde_json::to_string(spec)? + "\n";
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
        let workers = plan.workers;
        Ok(Fleet {
            procs,
            rx,
            progress: vec![Progress::default(); workers],
            ready: vec![false; workers],
            reports: (0..workers).map(|_| None).collect(),
            seconds: Vec::new(),
        })
    }

    /// Takes in the next line of any worker (cancel-safe: the only wait is
    /// the channel's).
    pub(crate) async fn next(&mut self) -> anyhow::Result<()> {
        let Some(line) = self.rx.recv().await else {
            bail!("workers went away")
        };
        match line {
            Line::Msg(w, WorkerMsg::Progress(p)) => self.progress[w] = p,
            Line::Msg(w, WorkerMsg::Ready(p)) => {
                self.progress[w] = p;
                self.ready[w] = true;
            }
            Line::Msg(w, WorkerMsg::Report(r)) => {
                // A worker that reports is past connecting (all its clients
                // may have failed before its first `ready` line).
                self.ready[w] = true;
                self.reports[w] = Some(*r);
            }
            Line::Msg(_, WorkerMsg::Second(s)) => self.seconds.push(s),
            Line::Bad(w, e) => bail!("worker {w} printed garbage: {e}"),
            Line::Eof(w) => {
                if self.reports[w].is_none() {
                    bail!("worker {w} exited without a report (see its stderr above)");
                }
            }
        }
        Ok(())
    }

    /// Every worker connected its clients.
    pub(crate) fn all_ready(&self) -> bool {
        self.ready.iter().all(|r| *r)
    }

    /// Every worker reported.
    pub(crate) fn all_reported(&self) -> bool {
        self.reports.iter().all(Option::is_some)
    }

    /// Tells every worker when the measured phase starts.
    pub(crate) async fn start(&mut self, start_ns: u64) -> anyhow::Result<()> {
        let line = serde_json::to_string(&StartCmd { start_ns })? + "\n";
        for p in self.procs.iter_mut() {
            if let Some(stdin) = p.stdin.as_mut() {
                stdin.write_all(line.as_bytes()).await?;
                stdin.flush().await?;
            }
        }
        Ok(())
    }

    /// Kills every worker (a watchdog).
    pub(crate) fn kill(&mut self) {
        for p in self.procs.iter_mut() {
            let _ = p.child.start_kill();
        }
    }

    /// Closes their stdin and waits (at most 5 s each) for them to exit.
    pub(crate) async fn wait(&mut self) {
        for p in self.procs.iter_mut() {
            p.stdin.take();
            let _ = tokio::time::timeout(Duration::from_secs(5), p.child.wait()).await;
        }
    }
}
