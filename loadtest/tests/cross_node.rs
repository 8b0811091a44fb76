//! End to end: the harness against 2 nodes + Redis that it spawns itself
//! reports the latency of deliveries on the sender's node and of those
//! that crossed nodes apart, and the two add up to the whole. Needs
//! `redis-server` on PATH (or `--redis-bin`) and the relay binary beside
//! the loadtest binary (`cargo build --workspace` builds both; CI does).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn fanout_over_two_nodes_reports_same_and_cross_node_latency() {
    let loadtest = PathBuf::from(env!("CARGO_BIN_EXE_loadtest"));
    let relay = loadtest.with_file_name("relay");
    assert!(
        relay.exists(),
        "{} is missing: build it first (cargo build -p relay)",
        relay.display()
    );
    let json =
        std::env::temp_dir().join(format!("loadtest-cross-node-{}.json", std::process::id()));
    let out = Command::new(&loadtest)
        .env("RELAY_BIN", &relay)
        .args([
            "--spawn-cluster",
            "2",
            "--scenario",
            "fanout",
            "--clients",
            "40",
            "--msg-rate",
            "20",
            "--duration",
            "3",
            "--drain",
            "2",
            "--settle",
            "1",
            "--no-progress",
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("loadtest runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loadtest failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("across nodes"),
        "the table shows the split: {stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON report")).unwrap();
    let _ = std::fs::remove_file(&json);
    let count = |key: &str| {
        report["delivery"][key]["count"]
            .as_u64()
            .unwrap_or_default()
    };
    let all = count("latency_ms");
    let same = count("latency_same_node_ms");
    let cross = count("latency_cross_node_ms");
    assert!(all > 0, "deliveries were measured");
    assert!(
        same > 0 && cross > 0,
        "both kinds seen: same {same}, cross {cross}"
    );
    assert_eq!(same + cross, all, "every delivery is one or the other");
    assert_eq!(report["delivery"]["lost"].as_u64(), Some(0));
}
