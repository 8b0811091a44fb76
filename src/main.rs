//! The `relay` command line: `relay serve` runs a node.

use clap::{Parser, Subcommand};
use relay::config::Config;

/// Horizontally scalable WebSocket pub/sub relay for real-time chat.
#[derive(Parser)]
#[command(name = "relay", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a relay node (in memory without --redis).
    Serve(Box<Config>),
    /// Terminal chat client: join a room, send stdin lines, print events on stdout.
    Chat(relay::client::ChatArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Serve(mut config) => {
            // Fixed once: logs, traces (`service.instance.id`) and the node
            // itself must agree on the generated id.
            let node_id = config.resolved_node_id();
            config.node_id = Some(node_id.clone());
            let telemetry =
                relay::telemetry::init_node(config.log_format, &config.log_level, &node_id);
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            runtime.enable_all();
            if let Some(n) = config.worker_threads {
                runtime.worker_threads(n.into());
            }
            let runtime = runtime.build()?;
            let result = runtime.block_on(async move {
                let listener = relay::server::bind_listener(config.listen)?;
                // One machine-readable line on stdout: scripts and tests read
                // the bound address from it (useful with `--listen 127.0.0.1:0`).
                println!("relay listening on http://{}", listener.local_addr()?);
                relay::server::run(*config, listener, shutdown_signal()).await?;
                anyhow::Ok(())
            });
            drop(runtime);
            // Export the spans still buffered (no-op without OpenTelemetry).
            telemetry.shutdown();
            result
        }
        Cmd::Chat(args) => {
            // stdout is the chat transcript: logs go to stderr, warnings only.
            relay::telemetry::init(relay::config::LogFormat::Text, "warn");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let code = runtime.block_on(relay::client::run(args));
            // Exit at once: the stdin reader thread may be blocked in a read.
            std::process::exit(code)
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
