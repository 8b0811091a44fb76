//! The configuration through the binary: every validation error exits 2 with
//! one line naming the flag, before anything connects; the precedence flags >
//! environment > file > defaults (and the `*_FILE` secrets), read back from
//! `relay config check`; `relay config defaults` is a valid file; the admin
//! listener (`/metrics` leaves the public port); JSON-only logs.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Environment variables of a case.
type Env<'a> = Vec<(&'a str, &'a str)>;

fn relay() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_relay"));
    // Nothing of the caller's environment leaks into the table's cases.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RELAY_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd
}

/// Runs `relay ARGS` with `envs`, bounded in time.
fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut child = relay()
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn relay");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "relay {args:?} still running after 20 s (a config error must exit at once): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn every_config_error_exits_2_with_one_line_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pem = write(d, "x.pem", "not a certificate");
    let unknown = write(
        d,
        "unknown.toml",
        "listen = \"127.0.0.1:0\"\nhartbeat-ms = 1000\n",
    );
    let broken = write(
        d,
        "broken.toml",
        "listen = \"127.0.0.1:0\"\nheartbeat-ms = = 3\n",
    );
    let bad_value = write(d, "bad-value.toml", "heartbeat-ms = 10\n");
    let bad_ttl = write(
        d,
        "ttl.toml",
        "heartbeat-ms = 1000\npresence-ttl-ms = 900\n",
    );
    let secret = write(d, "secret", "k1\n");
    let empty = write(d, "empty", "\n");
    let missing = d.join("missing").to_string_lossy().into_owned();
    // (what, extra args, env, text the one line must contain)
    let cases: Vec<(&str, Vec<&str>, Env, &str)> = vec![
        (
            "redis URL without scheme",
            vec!["--redis", "localhost:6379"],
            vec![],
            "--redis",
        ),
        (
            "redis URL of another scheme",
            vec!["--redis", "http://127.0.0.1:6379"],
            vec![],
            "--redis",
        ),
        (
            "redis URL without host",
            vec!["--redis", "redis://"],
            vec![],
            "--redis",
        ),
        (
            "redis URL via env",
            vec![],
            vec![("RELAY_REDIS", "nonsense")],
            "--redis",
        ),
        (
            "redis cluster seed without port",
            vec!["--redis", "redis+cluster://h1"],
            vec![],
            "--redis",
        ),
        (
            "presence ttl not above heartbeat",
            vec!["--heartbeat-ms", "1000", "--presence-ttl-ms", "1000"],
            vec![],
            "--presence-ttl-ms",
        ),
        (
            "heartbeat below 50",
            vec!["--heartbeat-ms", "10"],
            vec![],
            "--heartbeat-ms",
        ),
        ("not a number", vec!["--rate", "fast"], vec![], "--rate"),
        (
            "token auth without secret",
            vec!["--auth", "token"],
            vec![],
            "--secret",
        ),
        (
            "empty secret key",
            vec!["--auth", "token", "--secret", "a,,b"],
            vec![],
            "--secret",
        ),
        (
            "tls cert file missing",
            vec!["--tls-cert", &missing, "--tls-key", &pem],
            vec![],
            "--tls-cert",
        ),
        (
            "tls key file missing",
            vec!["--tls-cert", &pem, "--tls-key", &missing],
            vec![],
            "--tls-key",
        ),
        (
            "tls cert without key",
            vec!["--tls-cert", &pem],
            vec![],
            "--tls-key",
        ),
        (
            "tls key without cert",
            vec!["--tls-key", &pem],
            vec![],
            "--tls-cert",
        ),
        (
            "admin port is the public one",
            vec![
                "--listen",
                "127.0.0.1:18080",
                "--admin-listen",
                "127.0.0.1:18080",
            ],
            vec![],
            "--admin-listen",
        ),
        (
            "admin address not an address",
            vec!["--admin-listen", "localhost"],
            vec![],
            "--admin-listen",
        ),
        (
            "bad log filter",
            vec!["--log-level", "relay=loud"],
            vec![],
            "--log-level",
        ),
        (
            "origin that is not an origin",
            vec!["--allowed-origins", "chat.example.com"],
            vec![],
            "--allowed-origins",
        ),
        (
            "zero max connections",
            vec!["--max-connections", "0"],
            vec![],
            "--max-connections",
        ),
        (
            "zero token ttl",
            vec!["--token-ttl-secs", "0"],
            vec![],
            "--token-ttl-secs",
        ),
        ("empty node id", vec!["--node-id", " "], vec![], "--node-id"),
        (
            "redis timeout below 10 ms",
            vec!["--redis-timeout-ms", "5"],
            vec![],
            "--redis-timeout-ms",
        ),
        (
            "unknown file key",
            vec!["--config", &unknown],
            vec![],
            "unknown key `hartbeat-ms`",
        ),
        ("broken TOML", vec!["--config", &broken], vec![], "line 2"),
        (
            "bad value in the file",
            vec!["--config", &bad_value],
            vec![],
            "--heartbeat-ms",
        ),
        (
            "inconsistent values in the file",
            vec!["--config", &bad_ttl],
            vec![],
            "--presence-ttl-ms",
        ),
        (
            "config file missing",
            vec!["--config", &missing],
            vec![],
            "--config",
        ),
        (
            "secret file missing",
            vec![],
            vec![("RELAY_SECRET_FILE", &missing)],
            "RELAY_SECRET_FILE",
        ),
        (
            "secret file empty",
            vec![],
            vec![("RELAY_API_KEY_FILE", &empty)],
            "RELAY_API_KEY_FILE",
        ),
        (
            "secret and secret file",
            vec![],
            vec![("RELAY_SECRET_FILE", &secret), ("RELAY_SECRET", "k2")],
            "RELAY_SECRET_FILE",
        ),
    ];
    let mut failures = Vec::new();
    for (what, extra, envs, needle) in &cases {
        for sub in [&["serve"][..], &["config", "check"][..]] {
            let mut args: Vec<&str> = sub.to_vec();
            if !extra.contains(&"--listen") {
                args.extend(["--listen", "127.0.0.1:0"]);
            }
            args.extend(extra.iter().copied());
            let out = run(&args, envs);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = stderr.lines().collect();
            let ok = out.status.code() == Some(2)
                && lines.len() == 1
                && lines[0].contains(needle)
                && out.stdout.is_empty();
            if !ok {
                failures.push(format!(
                    "{what} ({}): status {:?}, stderr {stderr:?}, wanted one line with {needle:?}",
                    sub[0],
                    out.status.code()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The effective value and origin of `key` in `relay config check`'s output.
fn effective(out: &str, key: &str) -> (String, String) {
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix(&format!("{key} = ")) {
            let (value, origin) = rest.rsplit_once("  # ").expect("origin comment");
            return (value.to_owned(), origin.to_owned());
        }
        if line == format!("# {key} = (unset)") {
            return ("(unset)".into(), "default".into());
        }
    }
    panic!("{key} not in\n{out}")
}

#[test]
fn precedence_is_flags_then_env_then_file_then_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let secret = write(d, "secret", "from-secret-file-0123456789abcdef\n");
    let file = write(
        d,
        "relay.toml",
        &format!(
            "rate = 30\nmax-queue = 300\ndrain-secs = 3\nallowed-origins = [\"https://a.example\", \"https://b.example\"]\n\
             redis_prefix = \"file-prefix\"\napi-key-file = \"{secret}\"\n"
        ),
    );
    let config = ["--config", file.as_str()];
    // (key, args, env, expected value, expected origin)
    let cases: Vec<(&str, Vec<&str>, Env, &str, &str)> = vec![
        ("rate", vec![], vec![], "20", "default"),
        ("rate", config.to_vec(), vec![], "30", "file"),
        (
            "rate",
            config.to_vec(),
            vec![("RELAY_RATE", "40")],
            "40",
            "environment",
        ),
        (
            "rate",
            [&config[..], &["--rate", "50"]].concat(),
            vec![("RELAY_RATE", "40")],
            "50",
            "flag",
        ),
        (
            "max-queue",
            [&config[..], &["--rate", "50"]].concat(),
            vec![("RELAY_RATE", "40")],
            "300",
            "file",
        ),
        ("drain-secs", vec!["--drain-secs", "7"], vec![], "7", "flag"),
        (
            "redis-prefix",
            config.to_vec(),
            vec![],
            "\"file-prefix\"",
            "file",
        ),
        (
            "allowed-origins",
            config.to_vec(),
            vec![],
            "[\"https://a.example\", \"https://b.example\"]",
            "file",
        ),
        ("api-key", config.to_vec(), vec![], "\"<redacted>\"", "file"),
        (
            "api-key",
            config.to_vec(),
            vec![("RELAY_API_KEY", "env-key")],
            "\"<redacted>\"",
            "environment",
        ),
        (
            "secret",
            vec![],
            vec![("RELAY_SECRET_FILE", &secret)],
            "\"<redacted>\"",
            "environment",
        ),
        ("rate", vec![], vec![("RELAY_CONFIG", &file)], "30", "file"),
        ("heartbeat-ms", config.to_vec(), vec![], "25000", "default"),
    ];
    let mut failures = Vec::new();
    for (key, args, envs, value, origin) in &cases {
        let mut full = vec!["config", "check"];
        full.extend(args.iter().copied());
        let out = run(&full, envs);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            failures.push(format!(
                "{key} {args:?} {envs:?}: status {:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
            continue;
        }
        assert!(
            !stdout.contains("from-secret-file") && !stdout.contains("env-key"),
            "a secret leaked:\n{stdout}"
        );
        let got = effective(&stdout, key);
        if got != (value.to_string(), origin.to_string()) {
            failures.push(format!(
                "{key} {args:?} {envs:?}: got {got:?}, wanted ({value}, {origin})"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn secrets_from_files_reach_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let key = write(dir.path(), "api-key", "file-key-1\n");
    let node = support::Node::start_with_env(&[], &[("RELAY_API_KEY_FILE", key.as_str())]);
    let auth = [("Authorization", "Bearer file-key-1")];
    let (status, body) = support::http(node.addr, "GET", "/api/nodes", &auth, "").await;
    assert_eq!(status, 200, "{body}");
    let wrong = [("Authorization", "Bearer another-key")];
    let (status, _) = support::http(node.addr, "GET", "/api/nodes", &wrong, "").await;
    assert_eq!(status, 401);
}

#[test]
fn the_defaults_file_lists_every_flag_and_checks_clean() {
    let out = run(&["config", "defaults"], &[]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let help = String::from_utf8(run(&["serve", "--help"], &[]).stdout).unwrap();
    for flag in help.split_whitespace().filter_map(|w| w.strip_prefix("--")) {
        let end = flag
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or(flag.len());
        let flag = &flag[..end];
        if ["help", "config", "version"].contains(&flag) || flag.is_empty() {
            continue;
        }
        assert!(
            text.contains(&format!("\n{flag} = ")) || text.contains(&format!("\n# {flag} = ")),
            "{flag} missing from relay config defaults:\n{text}"
        );
    }
    let table: toml::Table = text.parse().expect("valid TOML");
    assert_eq!(table["heartbeat-ms"].as_integer(), Some(25_000));
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "defaults.toml", &text);
    let check = run(&["config", "check", "--config", &path], &[]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let shown = String::from_utf8_lossy(&check.stdout);
    assert_eq!(
        effective(&shown, "heartbeat-ms"),
        ("25000".into(), "file".into())
    );
}

/// A node spawned with its stdout kept open: the first line, and the child.
fn spawn(args: &[&str]) -> (Child, String, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = relay()
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn relay");
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    assert!(
        !line.is_empty(),
        "no start-up line: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    // Keep reading stdout (nothing more may come) so the node never sees a closed pipe.
    std::thread::spawn(move || {
        let mut rest = String::new();
        while out.read_line(&mut rest).unwrap_or(0) > 0 {}
    });
    (child, line, log, dir)
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "node did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn the_admin_listener_takes_metrics_off_the_public_port() {
    let (mut child, line, _log, _dir) = spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--drain-secs",
        "1",
    ]);
    let v: Value = serde_json::from_str(line.trim()).expect("JSON start-up line");
    let public: SocketAddr = v["addr"].as_str().unwrap().parse().unwrap();
    let admin: SocketAddr = v["admin_addr"]
        .as_str()
        .expect("admin_addr")
        .parse()
        .unwrap();
    assert_ne!(public, admin);
    let (status, body) = support::get(admin, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "relay_connections_max",
        "relay_connection_capacity_ratio",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_cpu_seconds_total",
    ] {
        assert!(
            body.contains(&format!("\n{name} ")) || body.contains(&format!("\n{name}{{")),
            "{name} missing:\n{body}"
        );
    }
    assert_eq!(
        support::get(public, "/metrics").await.0,
        404,
        "metrics still public"
    );
    for addr in [public, admin] {
        assert_eq!(support::get(addr, "/healthz").await.0, 200);
        assert_eq!(support::get(addr, "/readyz").await.0, 200);
    }
    assert_eq!(
        support::get(admin, "/ws").await.0,
        404,
        "the admin port serves no WebSockets"
    );
    stop(&mut child);

    // Without --admin-listen, metrics stay on the public port.
    let (mut child, line, _log, _dir) = spawn(&["--listen", "127.0.0.1:0"]);
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("relay listening on http://")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(support::get(addr, "/metrics").await.0, 200);
    stop(&mut child);
}

#[tokio::test]
async fn json_logs_are_json_on_every_line() {
    let (mut child, line, log, _dir) = spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--log-level",
        "debug",
        "--drain-secs",
        "1",
    ]);
    let v: Value = serde_json::from_str(line.trim()).expect("JSON start-up line");
    let addr: SocketAddr = v["addr"].as_str().unwrap().parse().unwrap();
    assert_eq!(v["url"], format!("http://{addr}"));
    // Some traffic, so that more than start-up is logged.
    let Ok(mut c) = support::Connect::new(format!("ws://{addr}/ws?user=ann"))
        .open()
        .await
    else {
        panic!("connect refused")
    };
    c.join("lobby").await;
    c.say("lobby", "hello").await;
    c.close().await;
    let _ = support::get(addr, "/nope").await;
    stop(&mut child);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().count() >= 3, "too few log lines:\n{text}");
    for l in text.lines() {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v.get("level").is_some(), "no level: {l}");
    }
    assert!(text.contains("drained"), "{text}");
}
