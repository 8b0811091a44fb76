//! `loadtest`: the load-test harness of relay.
//!
//! One command runs a scenario (`idle`, `fanout`, `rooms`, `dm`, `churn`,
//! `reconnect-storm`, `mixed`, `hostile`) with up to hundreds of thousands of WebSocket
//! clients against one or more relay nodes on loopback, or against a private
//! cluster it starts itself (`--spawn-cluster N`). The clients are spread over
//! worker processes (this same binary re-executed with the hidden `worker`
//! subcommand) because one process may hold at most RLIMIT_NOFILE sockets; the
//! parent merges the workers' JSON reports, accounts for every acked message
//! (expected vs delivered, duplicates, order, loss), prints a table and writes
//! `--json`. It exits with status 2 when it saw loss, duplicates, order
//! violations, self-echo, unexpected server closes or connect failures.
//!
//! The project's own runs stay on loopback (`--spawn-cluster` starts
//! everything on 127.0.0.1); any other `ws://` or `wss://` target is used
//! only when given explicitly with `--url`, e.g. to measure a deployment,
//! with `--max-p99-ms` / `--max-loss` as pass/fail thresholds.

mod accounting;
mod args;
mod client;
mod cluster;
mod common;
mod connect;
mod display;
mod fleet;
mod hostile;
mod parent;
mod plan;
mod procstat;
mod report;
mod scan;
mod scenario;
mod series;
mod servers;
mod wire;
mod worker;

use clap::{Parser, Subcommand};

/// Load-test harness for relay (WebSocket pub/sub chat).
#[derive(Parser)]
#[command(
    name = "loadtest",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    run: args::RunArgs,
}

#[derive(Subcommand)]
enum Sub {
    /// Internal: one worker process (reads its spec on stdin, reports JSON on stdout).
    #[command(hide = true)]
    Worker,
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Some(Sub::Worker) => match worker::main() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("loadtest worker: error: {e:#}");
                1
            }
        },
        None => match parent::main(cli.run) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("loadtest: error: {e:#}");
                1
            }
        },
    };
    std::process::exit(code);
}
