//! The `relay` command line: `relay serve` runs a node, `relay config`
//! prints or checks its configuration, `relay chat` is a terminal client.
//!
//! Configuration mistakes (a bad flag, variable or `--config` file, or
//! settings that do not fit together) end the process before anything
//! connects, with status 2 and one line on stderr naming the flag.

use std::ffi::OsString;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use relay::config::{Config, LogFormat, ServeArgs};

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
    Serve(Box<ServeArgs>),
    /// Print a configuration file with every default, or check one.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Terminal chat client: join a room, send stdin lines, print events on stdout.
    Chat(relay::client::ChatArgs),
    /// Sign a token, or check whether a node would accept one.
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Sign an HS256 token with --jwt-secret (or --secret) and print it.
    Issue(relay::token_cli::IssueArgs),
    /// Say whether a node with these flags would accept TOKEN, and why not.
    Check(Box<relay::token_cli::CheckArgs>),
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print a TOML file of every setting with its default, commented.
    Defaults,
    /// Validate the configuration `relay serve` would run with (the same
    /// flags, variables and --config file) and print it, secrets redacted.
    Check(Box<ServeArgs>),
}

/// Status of a configuration error (clap's usage-error status).
const CONFIG_ERROR: i32 = 2;

/// Prints a configuration error as one line and exits with status 2.
fn config_error(e: impl std::fmt::Display) -> ! {
    eprintln!("error: {e}");
    std::process::exit(CONFIG_ERROR)
}

/// A clap error as one line (help and version are printed as they are).
fn clap_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit()
    }
    let text = e.render().to_string();
    let line = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    config_error(line)
}

/// Parses the command line, the `RELAY_*_FILE` secrets and the `--config`
/// file into the final matches, and the flag names taken from the file.
fn parse() -> (ArgMatches, Vec<String>) {
    // `RELAY_X_FILE` → `RELAY_X`, before clap reads the environment (still
    // single-threaded here).
    match relay::config::secret_files_from_env(|k| std::env::var_os(k)) {
        Ok(vars) => {
            for (k, v) in vars {
                std::env::set_var(k, v);
            }
        }
        Err(e) => config_error(e),
    }
    let argv: Vec<OsString> = std::env::args_os().collect();
    let matches = Cli::command()
        .try_get_matches_from(&argv)
        .unwrap_or_else(|e| clap_error(e));
    let Some((_, sub_matches, command)) = settings_matches(&matches) else {
        return (matches, Vec::new());
    };
    let Some(path) = sub_matches.get_one::<std::path::PathBuf>("config") else {
        return (matches, Vec::new());
    };
    let file =
        relay::config::file_args(path, &command, sub_matches).unwrap_or_else(|e| config_error(e));
    if file.args.is_empty() {
        return (matches, file.keys);
    }
    // The subcommand has no positional arguments: the file's `--key=value`
    // can follow whatever was typed.
    let mut full = argv;
    full.extend(file.args);
    let matches = Cli::command()
        .try_get_matches_from(full)
        .unwrap_or_else(|e| clap_error(e));
    (matches, file.keys)
}

/// The matches and definition of the subcommand that takes [`ServeArgs`].
fn settings_matches(matches: &ArgMatches) -> Option<(&'static str, &ArgMatches, clap::Command)> {
    let root = Cli::command();
    match matches.subcommand() {
        Some(("serve", m)) => Some(("serve", m, root.find_subcommand("serve")?.clone())),
        Some(("config", m)) => match m.subcommand() {
            Some(("check", c)) => Some((
                "check",
                c,
                root.find_subcommand("config")?
                    .find_subcommand("check")?
                    .clone(),
            )),
            _ => None,
        },
        Some(("token", m)) => match m.subcommand() {
            Some(("check", c)) => Some((
                "check",
                c,
                root.find_subcommand("token")?
                    .find_subcommand("check")?
                    .clone(),
            )),
            _ => None,
        },
        _ => None,
    }
}

fn main() {
    let (matches, from_file) = parse();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| clap_error(e));
    match cli.command {
        Cmd::Serve(args) => {
            let config = args.settings;
            if let Err(e) = config.validate() {
                config_error(e);
            }
            std::process::exit(serve(config));
        }
        Cmd::Config(ConfigCmd::Defaults) => {
            let root = Cli::command();
            let serve = root.find_subcommand("serve").expect("serve subcommand");
            print!("{}", relay::config::defaults_file(serve));
        }
        Cmd::Config(ConfigCmd::Check(args)) => {
            if let Err(e) = args.settings.validate() {
                config_error(e);
            }
            let (_, sub, command) = settings_matches(&matches).expect("config check matches");
            print!(
                "{}",
                relay::config::effective_file(&command, sub, &from_file)
            );
            eprintln!("configuration ok");
        }
        Cmd::Token(TokenCmd::Issue(args)) => std::process::exit(relay::token_cli::issue(args)),
        Cmd::Token(TokenCmd::Check(args)) => std::process::exit(relay::token_cli::check(*args)),
        Cmd::Chat(args) => {
            // stdout is the chat transcript: logs go to stderr, warnings only.
            relay::telemetry::init(LogFormat::Text, "warn");
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(1)
                }
            };
            let code = runtime.block_on(relay::client::run(args));
            // Exit at once: the stdin reader thread may be blocked in a read.
            std::process::exit(code)
        }
    }
}

/// Runs a node; returns the exit status (0 after a clean drain).
fn serve(mut config: Config) -> i32 {
    // Fixed once: logs, traces (`service.instance.id`) and the node itself
    // must agree on the generated id.
    let node_id = config.resolved_node_id();
    config.node_id = Some(node_id.clone());
    let format = config.log_format;
    let telemetry = relay::telemetry::init_node(format, &config.log_level, &node_id);
    let result = (|| {
        let mut runtime = tokio::runtime::Builder::new_multi_thread();
        runtime.enable_all();
        if let Some(n) = config.worker_threads {
            runtime.worker_threads(n.into());
        }
        let runtime = runtime.build()?;
        let result = runtime.block_on(async move {
            let listener = relay::server::bind_listener(config.listen)?;
            let admin = match config.admin_listen {
                Some(addr) => Some(relay::server::bind_listener(addr)?),
                None => None,
            };
            let addr = listener.local_addr()?;
            let admin_addr = admin.as_ref().map(|l| l.local_addr()).transpose()?;
            // One machine-readable line on stdout: scripts and tests read
            // the bound address from it (useful with `--listen 127.0.0.1:0`).
            // One write: readers may close the pipe after this line.
            println!("{}", listening_line(format, addr, admin_addr));
            relay::server::run_with_admin(config, listener, admin, shutdown_signal()).await?;
            anyhow::Ok(())
        });
        drop(runtime);
        result
    })();
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %format_args!("{e:#}"), "relay stopped");
            if format == LogFormat::Text {
                eprintln!("Error: {e:#}");
            }
            1
        }
    };
    // Export the spans still buffered (no-op without OpenTelemetry).
    telemetry.shutdown();
    code
}

/// The start-up line: `relay listening on http://ADDR` in text mode (the
/// admin address is in the `admin listening` log event on stderr); under
/// `--log-format json` a JSON object with `message`, `url`, `addr` (and
/// `admin_addr` with `--admin-listen`).
fn listening_line(
    format: LogFormat,
    addr: std::net::SocketAddr,
    admin: Option<std::net::SocketAddr>,
) -> String {
    match format {
        LogFormat::Text => format!("relay listening on http://{addr}"),
        LogFormat::Json => {
            let mut line = serde_json::json!({
                "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "level": "INFO",
                "target": "relay",
                "message": "relay listening",
                "url": format!("http://{addr}"),
                "addr": addr.to_string(),
            });
            if let Some(a) = admin {
                line["admin_addr"] = a.to_string().into();
            }
            line.to_string()
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
